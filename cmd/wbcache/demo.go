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
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/wbcache/wbcache/blockcache"
	"github.com/wbcache/wbcache/device"
	"github.com/wbcache/wbcache/flush"
	"golang.org/x/sys/unix"
)

const demoAbout = `
Runs a self-checking demonstration; needs only root and /dev/fuse. In a
temporary directory it creates a sparse 256 MiB backing file and a 64 MiB
cache file, formats the cache, mounts it (in this process, as 'wbcache
mount' does), and runs a mixed workload through MOUNTPOINT/disk: random
4 KiB and 64 KiB writes, unaligned writes, rewrites, verified reads, fsyncs
and punched holes, keeping a model of every byte written. Then it shows
the status, writes every dirty block back, unmounts, checks the cache
offline, and verifies that the backing file alone holds every byte of the
model. It prints PASS and exits 0, or names the first differing offset and
exits 1. The directory is removed unless --keep is given.`

// Demo geometry.
const (
	demoBackingSize = 256 << 20
	demoCacheSize   = 64 << 20
	demoWorkers     = 4
)

func runDemo(args []string, out io.Writer) error {
	f := newFlags("demo", "wbcache demo [--keep] [--duration DUR] [--seed N]", demoAbout, out)
	keep := f.Bool("keep", false, "keep the temporary directory (cache, backing file) afterwards")
	dur := f.Duration("duration", 4*time.Second, "how long the workload runs (`DUR`)")
	seed := f.Uint64("seed", 0, "workload random `SEED` (0 = pick one; the seed used is printed)")
	logLevel := f.String("log-level", "warn", "daemon log `LEVEL`: debug, info, warn or error")
	pos, err := f.parse(args)
	if err != nil {
		return err
	}
	if err := f.wantArgs(pos); err != nil {
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
	return demo(ctx, out, log, dir, *dur, *seed)
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

func demo(ctx context.Context, out io.Writer, log *slog.Logger, dir string, dur time.Duration, seed uint64) error {
	backing := filepath.Join(dir, "backing.img")
	cache := filepath.Join(dir, "cache.img")
	mnt := filepath.Join(dir, "mnt")
	if err := device.Create(backing, demoBackingSize); err != nil {
		return err
	}
	if err := os.Mkdir(mnt, 0o700); err != nil {
		return err
	}
	fmt.Fprintf(out, "\n== format: %s backing file, %s cache file\n", formatSize(demoBackingSize), formatSize(demoCacheSize))
	if err := runFormat([]string{"--cache", cache, "--cache-size", formatSizeExact(demoCacheSize), "--backing", backing}, out); err != nil {
		return err
	}

	d, err := startDaemon(daemonConfig{cachePath: cache, backingPath: backing, mountpoint: mnt, log: log, selfAccess: true})
	if err != nil {
		return err
	}
	defer d.stop() // on error paths; a no-op after the stop below
	fmt.Fprintf(out, "\n== mount: serving %s (%s, mode %s)\n", d.diskPath(), formatSize(d.cache.Size()), d.cache.Mode())

	model := make([]byte, demoBackingSize)
	fmt.Fprintf(out, "\n== workload: %d workers for %s (4 KiB / 64 KiB / unaligned writes, rewrites, verified reads, fsyncs, punch holes)\n", demoWorkers, dur)
	w, err := runWorkload(ctx, out, d, model, dur, seed)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "done: %d writes (%s), %d reads verified, %d fsyncs, %d holes punched\n",
		w.writes.Load(), formatSize(w.writeBytes.Load()), w.reads.Load(), w.syncs.Load(), w.punches.Load())

	fmt.Fprintf(out, "\n== status\n")
	st := d.status()
	printStatus(out, &st)

	fmt.Fprintf(out, "\n== flush: writing every dirty block back to the backing file\n")
	pp := newProgressPrinter(out)
	start := time.Now()
	base := d.dest.Stats().DestagedBlocks
	err = d.dest.FlushAll(ctx, func(p flush.Progress) {
		pp.show(progressLine{DirtyBlocks: p.Dirty, DirtyBytes: int64(p.Dirty) * blockcache.BlockSize,
			DestagedBytes: (p.DestagedBlocks - base) * blockcache.BlockSize, Rate: p.BytesPerSec})
	})
	pp.end()
	if err != nil {
		return fmt.Errorf("flush: %w", err)
	}
	fmt.Fprintf(out, "flushed in %.1fs: %d blocks dirty\n", time.Since(start).Seconds(), d.cache.DirtyCount())

	fmt.Fprintf(out, "\n== unmount and close\n")
	if err := d.stop(); err != nil {
		return fmt.Errorf("stopping: %w", err)
	}
	fmt.Fprintf(out, "unmounted; cache closed cleanly\n")

	fmt.Fprintf(out, "\n== check the cache offline\n")
	if err := runCheck([]string{"--cache", cache, "--backing", backing}, out); err != nil {
		return err
	}

	fmt.Fprintf(out, "\n== verify: the backing file alone must hold every byte written\n")
	if err := verifyFile(backing, model); err != nil {
		fmt.Fprintf(out, "FAIL\n")
		return &codeError{code: exitError, err: err}
	}
	fmt.Fprintf(out, "all %s match the model\n\nPASS\n", formatSize(demoBackingSize))
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

// workload counts what the demo workload did.
type workload struct {
	writes, writeBytes, reads, syncs, punches atomic.Int64
}

// runWorkload runs demoWorkers goroutines, each on its own slice of the
// disk (so the model needs no locking), until dur passes, showing progress.
func runWorkload(ctx context.Context, out io.Writer, d *daemon, model []byte, dur time.Duration, seed uint64) (*workload, error) {
	disk, err := os.OpenFile(d.diskPath(), os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	defer disk.Close()
	ctx, cancel := context.WithTimeout(ctx, dur)
	defer cancel()
	w := &workload{}
	var wg sync.WaitGroup
	errs := make([]error, demoWorkers)
	region := int64(len(model)) / demoWorkers
	for i := range demoWorkers {
		wg.Go(func() {
			errs[i] = w.worker(ctx, disk, model, int64(i)*region, int64(i+1)*region, seed, uint64(i))
			if errs[i] != nil {
				cancel()
			}
		})
	}
	tty := isTerminal(out)
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	start, lastLine := time.Now(), time.Now()
	finished := make(chan struct{})
	go func() { wg.Wait(); close(finished) }()
	for running := true; running; {
		select {
		case <-finished:
			running = false
		case <-tick.C:
		}
		s := d.cache.Stats()
		line := fmt.Sprintf("%4.1fs  writes %d (%s)  reads %d  fsyncs %d  holes %d  dirty %s  hits %.0f%%",
			time.Since(start).Seconds(), w.writes.Load(), formatSize(w.writeBytes.Load()), w.reads.Load(),
			w.syncs.Load(), w.punches.Load(), formatSize(int64(s.Dirty)*blockcache.BlockSize),
			100*ratio(s.ReadHits, s.ReadHits+s.ReadMisses))
		switch {
		case tty:
			fmt.Fprintf(out, "\r\033[K%s", line)
			if !running {
				fmt.Fprintln(out)
			}
		case !running || time.Since(lastLine) >= time.Second:
			fmt.Fprintln(out, line)
			lastLine = time.Now()
		}
	}
	if err := errors.Join(errs...); err != nil {
		return w, err
	}
	if err := context.Cause(ctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return w, fmt.Errorf("workload interrupted: %w", err)
	}
	return w, nil
}

func ratio(a, b uint64) float64 {
	if b == 0 {
		return 0
	}
	return float64(a) / float64(b)
}

// worker runs random operations on [lo, hi) of the disk until ctx ends.
func (w *workload) worker(ctx context.Context, disk *os.File, model []byte, lo, hi int64, seed, id uint64) error {
	rng := rand.New(rand.NewPCG(seed, id))
	var key [32]byte
	for i := range 4 {
		v := rng.Uint64()
		for j := range 8 {
			key[i*8+j] = byte(v >> (8 * j))
		}
	}
	data := rand.NewChaCha8(key)
	buf := make([]byte, 1<<20)
	const bs = blockcache.BlockSize
	blocks := (hi - lo) / bs
	var recent []int64 // recently written block offsets, for rewrites
	write := func(off int64, n int) error {
		p := buf[:n]
		_, _ = data.Read(p)
		if _, err := disk.WriteAt(p, off); err != nil {
			return fmt.Errorf("write of %d bytes at offset %d: %w", n, off, err)
		}
		copy(model[off:], p)
		w.writes.Add(1)
		w.writeBytes.Add(int64(n))
		if len(recent) < 256 {
			recent = append(recent, off&^(bs-1))
		} else {
			recent[rng.IntN(len(recent))] = off &^ (bs - 1)
		}
		return nil
	}
	for ctx.Err() == nil {
		var err error
		switch op := rng.IntN(100); {
		case op < 30: // random 4 KiB write
			err = write(lo+rng.Int64N(blocks)*bs, bs)
		case op < 42: // random 64 KiB write
			err = write(lo+rng.Int64N(blocks-16)*bs, 64<<10)
		case op < 50: // unaligned write
			n := 1 + rng.IntN(3*bs)
			err = write(lo+rng.Int64N(hi-lo-int64(n)), n)
		case op < 62: // rewrite a recent block
			if len(recent) > 0 {
				err = write(recent[rng.IntN(len(recent))], bs)
			}
		case op < 94: // verified read: recent, random, or 64 KiB
			var off int64
			n := bs
			switch {
			case len(recent) > 0 && rng.IntN(2) == 0:
				off = recent[rng.IntN(len(recent))]
			case rng.IntN(2) == 0:
				n = 64 << 10
				off = lo + rng.Int64N(blocks-16)*bs
			default:
				n = 1 + rng.IntN(2*bs)
				off = lo + rng.Int64N(hi-lo-int64(n))
			}
			if _, err := disk.ReadAt(buf[:n], off); err != nil {
				return fmt.Errorf("read of %d bytes at offset %d: %w", n, off, err)
			}
			if i := firstDiff(buf[:n], model[off:off+int64(n)]); i >= 0 {
				return fmt.Errorf("MISMATCH: read through the mount at offset %d: got %#02x, want %#02x", off+int64(i), buf[i], model[off+int64(i)])
			}
			w.reads.Add(1)
		case op < 99: // fsync
			if err := disk.Sync(); err != nil {
				return fmt.Errorf("fsync: %w", err)
			}
			w.syncs.Add(1)
		default: // punch a hole of 64 KiB to 1 MiB
			nb := 16 + rng.Int64N(240)
			off := lo + rng.Int64N(blocks-nb)*bs
			if err := unix.Fallocate(int(disk.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, nb*bs); err != nil {
				return fmt.Errorf("punch hole of %d bytes at offset %d: %w", nb*bs, off, err)
			}
			clear(model[off : off+nb*bs])
			w.punches.Add(1)
		}
		if err != nil {
			return err
		}
	}
	return nil
}
