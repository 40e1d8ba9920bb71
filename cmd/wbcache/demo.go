package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/wbcache/wbcache/blockcache"
	"github.com/wbcache/wbcache/device"
	"github.com/wbcache/wbcache/flush"
)

const demoAbout = `
Runs a self-checking demonstration; needs only root and /dev/fuse. In a
temporary directory it creates a sparse 256 MiB backing file and a 64 MiB
cache file and formats the cache. It serves it with 'wbcache mount' in a
separate process and runs a mixed workload through MOUNTPOINT/disk:
random 4 KiB and 64 KiB writes, unaligned writes, rewrites, verified
reads, fsyncs and punched holes, keeping a model of every byte the
acknowledged writes left. Halfway through the workload it kills that
daemon with SIGKILL while the writers run, mounts the cache again (in
this process, as 'wbcache mount' does: the journal is replayed) and reads
the whole disk back: every acknowledged write must be there, and each
block under a write in flight at the kill must read as before or as after
it. Then it runs the rest of the workload, shows the status, writes every
dirty block back, unmounts, checks the cache offline, and verifies that
the backing file alone holds every byte of the model. It prints PASS and
exits 0, or names the first differing offset and exits 1. The directory
is removed unless --keep is given.`

// Demo geometry.
const (
	demoBackingSize = 256 << 20
	demoCacheSize   = 64 << 20
	demoWorkers     = 4
)

func runDemo(args []string, out io.Writer) error {
	f := newFlags("demo", "wbcache demo [--keep] [--duration DUR] [--seed N]", demoAbout, out)
	keep := f.Bool("keep", false, "keep the temporary directory (cache, backing file) afterwards")
	dur := f.Duration("duration", 4*time.Second, "how long the workload runs (`DUR`), half before the kill and half after")
	seed := f.Uint64("seed", 0, "workload random `SEED` (0 = pick one; the seed used is printed)")
	logLevel := f.String("log-level", "warn", "daemon log `LEVEL`: debug, info, warn or error")
	_, err := f.parseArgs(args)
	if err != nil {
		return err
	}
	level, err := parseLevel(*logLevel)
	if err != nil {
		return usagef("demo", "%v", err)
	}
	if *dur <= 0 || *dur > 10*time.Minute {
		return usagef("demo", "--duration %s: want more than 0 and at most 10m", *dur)
	}
	if os.Geteuid() != 0 {
		return errors.New("demo: needs root (it mounts a FUSE filesystem): run it with sudo")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		return fmt.Errorf("demo: /dev/fuse is missing (%v): load the fuse module (modprobe fuse) or run where FUSE is available", err)
	}
	if *seed == 0 {
		*seed = rand.Uint64()
	}

	dir, err := demoDir()
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "== wbcache demo in %s (seed %d)\n", dir, *seed)
	cleanup := func() {
		if *keep {
			fmt.Fprintf(out, "kept %s\n", dir)
			return
		}
		os.RemoveAll(dir)
	}
	defer cleanup()

	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer cancel()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	return demo(ctx, out, log, *logLevel, dir, *dur, *seed)
}

// demoDir makes the temporary directory in the first place that supports
// O_DIRECT (the backing file is opened with it; old tmpfs does not).
func demoDir() (string, error) {
	var errs []error
	for _, base := range []string{os.TempDir(), "/var/tmp"} {
		dir, err := os.MkdirTemp(base, "wbcache-demo-")
		if err != nil {
			errs = append(errs, err)
			continue
		}
		probe := filepath.Join(dir, "probe")
		if err := device.Create(probe, 4096); err == nil {
			if f, err := device.Open(probe, device.Options{Direct: true}); err == nil {
				f.Close()
				os.Remove(probe)
				return dir, nil
			} else {
				errs = append(errs, fmt.Errorf("%s does not support O_DIRECT: %w", base, err))
			}
		}
		os.RemoveAll(dir)
	}
	return "", fmt.Errorf("demo: no temporary directory usable: %w", errors.Join(errs...))
}

// demoRun is one run of the demo: its files and what it has written.
type demoRun struct {
	out                 io.Writer
	log                 *slog.Logger
	logLevel            string // for the daemon process
	backing, cache, mnt string
	seed                uint64
	model               []byte // every byte as the acknowledged writes left it
	crashDur, restDur   time.Duration
}

func demo(ctx context.Context, out io.Writer, log *slog.Logger, logLevel, dir string, dur time.Duration, seed uint64) error {
	r := &demoRun{out: out, log: log, logLevel: logLevel, seed: seed,
		backing: filepath.Join(dir, "backing.img"), cache: filepath.Join(dir, "cache.img"), mnt: filepath.Join(dir, "mnt"),
		model: make([]byte, demoBackingSize), crashDur: dur / 2, restDur: dur - dur/2}
	start := time.Now()
	if err := device.Create(r.backing, demoBackingSize); err != nil {
		return err
	}
	if err := os.Mkdir(r.mnt, 0o700); err != nil {
		return err
	}
	fmt.Fprintf(out, "\n== format: %s backing file, %s cache file\n", formatSize(demoBackingSize), formatSize(demoCacheSize))
	if err := runFormat([]string{"--cache", r.cache, "--cache-size", formatSizeExact(demoCacheSize), "--backing", r.backing}, out); err != nil {
		return err
	}
	inFlight, err := r.crashPhase(ctx)
	if err != nil {
		return err
	}
	d, err := startDaemon(daemonConfig{cachePath: r.cache, backingPath: r.backing, mountpoint: r.mnt, log: log, selfAccess: true})
	if err != nil {
		return err
	}
	defer d.stop() // on error paths; a no-op after the stop in finish
	if err := r.checkSurvived(d, inFlight); err != nil {
		return err
	}
	if err := r.finish(ctx, d); err != nil {
		return err
	}
	fmt.Fprintf(out, "all %s match the model\n\nPASS (%.1fs)\n", formatSize(demoBackingSize), time.Since(start).Seconds())
	return nil
}

// crashPhase serves the cache from a separate 'wbcache mount' process, runs
// the workload through it and kills it with SIGKILL in the middle. It
// returns the workload, whose in-flight writes are still to be settled.
func (r *demoRun) crashPhase(ctx context.Context) (*workload, error) {
	child, err := startDemoDaemon(r.cache, r.backing, r.mnt, r.logLevel)
	if err != nil {
		return nil, err
	}
	defer child.stop()
	fmt.Fprintf(r.out, "\n== mount: 'wbcache mount' in its own process (pid %d)\n", child.cmd.Process.Pid)
	fmt.Fprintf(r.out, "\n== workload: %d workers for %s (4 KiB / 64 KiB / unaligned writes, rewrites, verified reads, fsyncs, punch holes),\n"+
		"   then kill -9 of the daemon while they run\n", demoWorkers, r.crashDur)
	w := &workload{}
	err = runWorkload(ctx, r.out, w, filepath.Join(r.mnt, "disk"), child.dirty, r.model, r.crashDur, r.seed, child.kill)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(r.out, "killed pid %d with SIGKILL: %d writes (%s) acknowledged before, %d in flight\n",
		child.cmd.Process.Pid, w.writes.Load(), formatSize(w.writeBytes.Load()), len(w.inFlight))
	return w, nil
}

// checkSurvived checks, on the remounted cache, that every acknowledged
// write survived the kill.
func (r *demoRun) checkSurvived(d *daemon, w *workload) error {
	st := d.status()
	fmt.Fprintf(r.out, "\n== remount: recovered in %.3fs (%d journal records replayed), %s dirty\n",
		st.RecoverySecs, st.Replayed, formatSize(st.DirtyBytes))
	changed, err := w.settleInFlight(d.diskPath(), r.model)
	if err != nil {
		fmt.Fprintf(r.out, "FAIL\n")
		return &codeError{code: exitError, err: err}
	}
	if err := verifyFile(d.diskPath(), r.model); err != nil {
		fmt.Fprintf(r.out, "FAIL\n")
		return &codeError{code: exitError, err: err}
	}
	fmt.Fprintf(r.out, "every acknowledged write survived: all %s read through the mount match the model\n"+
		"(the %d writes in flight at the kill were not acknowledged: %d of their blocks read as after them, the others as before; none torn)\n",
		formatSize(demoBackingSize), len(w.inFlight), changed)
	return nil
}

// finish runs more workload on the in-process daemon, shows the status,
// flushes, unmounts, checks the cache offline and verifies the backing
// file.
func (r *demoRun) finish(ctx context.Context, d *daemon) error {
	out := r.out
	fmt.Fprintf(out, "\n== workload again for %s, on the recovered cache\n", r.restDur)
	w := &workload{}
	dirty := func() (int64, bool) { return int64(d.cache.DirtyCount()) * blockcache.BlockSize, true }
	if err := runWorkload(ctx, out, w, d.diskPath(), dirty, r.model, r.restDur, r.seed+1, nil); err != nil {
		return err
	}
	fmt.Fprintf(out, "done: %d writes (%s), %d reads verified, %d fsyncs, %d holes punched\n",
		w.writes.Load(), formatSize(w.writeBytes.Load()), w.reads.Load(), w.syncs.Load(), w.punches.Load())

	fmt.Fprintf(out, "\n== status\n")
	st := d.status()
	printStatus(out, &st)
	if err := demoFlush(ctx, out, d); err != nil {
		return err
	}
	fmt.Fprintf(out, "\n== unmount and close\n")
	if err := d.stop(); err != nil {
		return fmt.Errorf("stopping: %w", err)
	}
	fmt.Fprintf(out, "unmounted; cache closed cleanly\n")

	fmt.Fprintf(out, "\n== check the cache offline\n")
	if err := runCheck([]string{"--cache", r.cache, "--backing", r.backing}, out); err != nil {
		return err
	}
	fmt.Fprintf(out, "\n== verify: the backing file alone must hold every byte written\n")
	if err := verifyFile(r.backing, r.model); err != nil {
		fmt.Fprintf(out, "FAIL\n")
		return &codeError{code: exitError, err: err}
	}
	return nil
}

// demoFlush writes every dirty block back, showing progress.
func demoFlush(ctx context.Context, out io.Writer, d *daemon) error {
	fmt.Fprintf(out, "\n== flush: writing every dirty block back to the backing file\n")
	pp := newProgressPrinter(out)
	start := time.Now()
	base := d.dest.Stats().DestagedBlocks
	err := d.dest.FlushAll(ctx, func(p flush.Progress) {
		pp.show(progressLine{DirtyBlocks: p.Dirty, DirtyBytes: int64(p.Dirty) * blockcache.BlockSize,
			DestagedBytes: (p.DestagedBlocks - base) * blockcache.BlockSize, Rate: p.BytesPerSec})
	})
	pp.end()
	if err != nil {
		return fmt.Errorf("flush: %w", err)
	}
	fmt.Fprintf(out, "flushed in %.1fs: %d blocks dirty\n", time.Since(start).Seconds(), d.cache.DirtyCount())
	return nil
}

// verifyFile compares a file with the model and names the first difference.
func verifyFile(path string, model []byte) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	for off := 0; off < len(model); off += len(buf) {
		n := min(len(buf), len(model)-off)
		if _, err := io.ReadFull(f, buf[:n]); err != nil {
			return fmt.Errorf("reading %s at offset %d: %w", path, off, err)
		}
		if i := firstDiff(buf[:n], model[off:off+n]); i >= 0 {
			return fmt.Errorf("MISMATCH: %s differs from the model at offset %d (got %#02x, want %#02x)", path, off+i, buf[i], model[off+i])
		}
	}
	return nil
}

func firstDiff(a, b []byte) int {
	if bytes.Equal(a, b) {
		return -1
	}
	for i := range a {
		if a[i] != b[i] {
			return i
		}
	}
	return -1
}
