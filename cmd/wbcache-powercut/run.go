package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/wbcache/wbcache/crashtest"
	"golang.org/x/sys/unix"
)

const runAbout = `Pulls power cuts under the real wbcache daemon.

Setup: in a work directory, DIR holds a sparse backing.img and cache.img;
the power-cut filesystem ("wbcache-powercut fs") serves DIR at FSMNT and
"wbcache format" formats the cache through it. Each round then:

 1. starts the power-cut filesystem on DIR (it serves what survived the
    last cut) and "wbcache mount --cache FSMNT/cache.img --backing
    FSMNT/backing.img MNT" (recovery), and waits for its ready line;
 2. reads every block of MNT/disk with O_DIRECT and checks it: each block
    must read as a version v with floor <= v <= highest issued, intact,
    where floor is the newest version a completed fsync covered; any
    read error, zeros or an older version where a durable one is due, a
    block of another LBA, a torn or corrupt block, a version never issued
    or one an earlier check found lost is a violation;
 3. runs --threads writers, each on its own contiguous range of the disk,
    writing runs of 1-16 self-describing 4 KiB blocks at random places
    with O_DIRECT and calling fsync or fdatasync after about one write in
    --sync-every;
 4. after a random time between --min-run and --max-run kills the daemon
    with SIGKILL and cuts the power of the filesystem: each unsynced
    512-byte sector is kept or dropped at random, and the kernel page
    cache above it is lost with the mount. --order says which comes first:
    the kill (a crash, then the power goes), the cut (the power goes under
    the running daemon; its I/O from then on is lost, then it is killed),
    or an armed cut that the filesystem pulls itself in a random one of
    its next --cut-window write or fsync requests (mid-I/O, like the
    engine's model test); by default one of the three at random per round.
    Fsyncs that return after the cut was asked for prove nothing. Then the
    writers stop and the filesystem is stopped.

After the last round: one more restart and check, a clean stop (SIGTERM,
exit 0, mount gone) and "wbcache check", which must pass.

Output: a line per round, every violation (LBA, what was read, floor,
newest acknowledged and highest issued version), and a summary line
"powercut-real: N rounds, W writes, F fsyncs, V violations". Exit status
1 on any violation or failure. Needs root and /dev/fuse.`

type config struct {
	wbcache       string
	rounds        int
	seed          uint64
	threads       int
	readers       int
	randReaders   int
	syncEvery     int
	minRun        time.Duration
	maxRun        time.Duration
	backingSize   int64
	cacheSize     int64
	workParent    string
	keep          bool
	stopOnFailure bool
	fuseUring     string
	mountArgs     []string
	keepProb      float64
	maxReport     int
	order         string
	cutWindow     int
	lying         bool
}

// sizeValue is a flag for sizes: 512M, 4G (KiB units) or bytes.
type sizeValue struct{ n *int64 }

func (s sizeValue) String() string {
	if s.n == nil {
		return ""
	}
	return fmtSize(*s.n)
}

func (s sizeValue) Set(v string) error {
	n, err := crashtest.ParseSize(v)
	if err != nil {
		return err
	}
	*s.n = n
	return nil
}

func parseRunFlags(args []string) (config, error) {
	cfg := config{backingSize: 512 << 20, cacheSize: 128 << 20}
	fl := flag.NewFlagSet("run", flag.ContinueOnError)
	fl.StringVar(&cfg.wbcache, "wbcache", "", "the wbcache binary to test (required)")
	fl.IntVar(&cfg.rounds, "n", 10, "rounds (power cuts)")
	seed := fl.Uint64("seed", 0, "seed of every random choice (0: time based; printed)")
	fl.IntVar(&cfg.threads, "threads", 8, "writer threads")
	fl.IntVar(&cfg.readers, "readers", 4, "reader threads of the check")
	fl.IntVar(&cfg.randReaders, "random-readers", 2, "threads reading random runs of blocks during the write phase (read misses copy clean blocks into the cache, which then evicts them); a read error before the cut is a violation")
	fl.IntVar(&cfg.syncEvery, "sync-every", 8, "a writer fsyncs after about one write in this many")
	fl.DurationVar(&cfg.minRun, "min-run", time.Second, "shortest write phase before the kill")
	fl.DurationVar(&cfg.maxRun, "max-run", 3*time.Second, "longest write phase before the kill")
	fl.Var(sizeValue{&cfg.backingSize}, "backing-size", "backing file `SIZE`, i.e. the disk")
	fl.Var(sizeValue{&cfg.cacheSize}, "cache-size", "cache file `SIZE` (the default is a quarter of the default disk, so the cache fills, evicts and reuses slots)")
	fl.StringVar(&cfg.workParent, "workdir", "/var/tmp", "parent of the work directory (a real disk, not a tmpfs)")
	fl.BoolVar(&cfg.keep, "keep", false, "keep the work directory (images, logs) when the run fails")
	fl.BoolVar(&cfg.stopOnFailure, "stop-on-failure", false, "stop after the first round with a violation or failure")
	fl.StringVar(&cfg.fuseUring, "fuse-uring", "", "pass --fuse-uring MODE to wbcache mount (default: the daemon's default)")
	mountArgs := fl.String("mount-args", "", "more arguments for wbcache mount, space separated (e.g. \"--max-dirty-age 1s\")")
	fl.Float64Var(&cfg.keepProb, "keep-prob", 0.5, "chance that the power cut keeps an unsynced sector")
	fl.IntVar(&cfg.maxReport, "max-report", 20, "violations printed in full per round (all are counted)")
	fl.BoolVar(&cfg.lying, "lying-fsync", false, "self-test: the filesystem acknowledges fsyncs without keeping anything, so the run must report violations")
	fl.StringVar(&cfg.order, "order", "mixed", "kill-first (kill -9, then the power cut), cut-first (the power cut under the running daemon, then kill -9), armed (the filesystem cuts its power in a random one of its next --cut-window write/fsync requests, then kill -9) or mixed (one of them at random per round)")
	fl.IntVar(&cfg.cutWindow, "cut-window", 2000, "for --order armed: the cut comes in one of this many write/fsync requests after the write phase")
	fl.Usage = func() {
		fmt.Fprintf(fl.Output(), "usage: wbcache-powercut run --wbcache PATH [options]\n\n%s\n\nOptions:\n", runAbout)
		fl.PrintDefaults()
	}
	if err := fl.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return cfg, exitCode(0)
		}
		return cfg, exitCode(2)
	}
	bad := func(format string, a ...any) (config, error) {
		fmt.Fprintf(os.Stderr, "wbcache-powercut run: "+format+"\n", a...)
		return cfg, exitCode(2)
	}
	switch {
	case fl.NArg() != 0:
		return bad("unexpected arguments %q", fl.Args())
	case cfg.wbcache == "":
		return bad("--wbcache PATH is required")
	case cfg.rounds < 1:
		return bad("-n must be at least 1")
	case cfg.threads < 1 || cfg.readers < 1 || cfg.syncEvery < 1 || cfg.randReaders < 0:
		return bad("--threads, --readers and --sync-every must be at least 1, --random-readers at least 0")
	case cfg.minRun <= 0 || cfg.maxRun < cfg.minRun:
		return bad("want 0 < --min-run <= --max-run")
	case cfg.backingSize%blockSize != 0 || cfg.cacheSize%blockSize != 0:
		return bad("--backing-size and --cache-size must be multiples of 4K")
	case cfg.backingSize/blockSize < int64(cfg.threads)*16:
		return bad("--backing-size too small for %d threads", cfg.threads)
	case cfg.keepProb < 0 || cfg.keepProb > 1:
		return bad("--keep-prob must be between 0 and 1")
	case cfg.order != "kill-first" && cfg.order != "cut-first" && cfg.order != "armed" && cfg.order != "mixed":
		return bad("--order: want kill-first, cut-first, armed or mixed")
	case cfg.cutWindow < 1:
		return bad("--cut-window must be at least 1")
	}
	cfg.seed = *seed
	if cfg.seed == 0 {
		cfg.seed = uint64(time.Now().UnixNano()) % 1_000_000_000
	}
	cfg.mountArgs = strings.Fields(*mountArgs)
	abs, err := filepath.Abs(cfg.wbcache)
	if err != nil {
		return cfg, err
	}
	cfg.wbcache = abs
	return cfg, nil
}

// runner runs the rounds.
type runner struct {
	cfg  config
	tr   *crashtest.Procs
	pin  *devPinner
	self string

	work, dir, fsmnt, mnt, logs string
	dev                         uint64 // st_dev of the filesystem the cache was formatted through

	rng *rand.Rand
	bk  *book
	fs  *crashtest.Child  // the power-cut filesystem, while it runs
	wbc *crashtest.Daemon // the daemon, while it runs

	failed     atomic.Bool
	violations int64
	kinds      map[string]int64
	badBlocks  map[int64]bool // blocks with a violation in any round
	failures   []string
	writes     int64
	blocksW    int64
	fsyncs     int64
	roundsDone int // power cuts survived and checked
}

func (r *runner) logf(format string, a ...any) {
	fmt.Printf("%s %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, a...))
}

func (r *runner) fail(format string, a ...any) {
	msg := fmt.Sprintf(format, a...)
	r.failures = append(r.failures, msg)
	r.failed.Store(true)
	r.logf("FAILURE: %s", msg)
}

func runMain(args []string) error {
	cfg, err := parseRunFlags(args)
	if err != nil {
		return err
	}
	if os.Geteuid() != 0 {
		return errors.New("run must run as root (FUSE mounts)")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		return fmt.Errorf("/dev/fuse: %w", err)
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	r := &runner{cfg: cfg, tr: crashtest.NewProcs(), self: self, kinds: map[string]int64{}, badBlocks: map[int64]bool{},
		rng: rand.New(rand.NewPCG(cfg.seed, 0x5eed))}
	if err := os.MkdirAll(cfg.workParent, 0o755); err != nil {
		return err
	}
	r.work, err = os.MkdirTemp(cfg.workParent, "wbc-powercut-real.")
	if err != nil {
		return err
	}
	r.dir, r.fsmnt, r.mnt, r.logs = filepath.Join(r.work, "dir"), filepath.Join(r.work, "fsmnt"), filepath.Join(r.work, "mnt"), filepath.Join(r.work, "logs")
	r.pin = &devPinner{tr: r.tr, dir: filepath.Join(r.work, "pin")}
	for _, d := range []string{r.dir, r.fsmnt, r.mnt, r.logs} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}

	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	go func() {
		sig := <-sigs
		r.logf("%v: stopping", sig)
		r.failed.Store(true)
		r.finish()
		os.Exit(130)
	}()

	r.logf("powercut-real: seed %d, %d rounds, disk %s, cache %s, %d writers, write phases %v-%v, work dir %s",
		cfg.seed, cfg.rounds, fmtSize(cfg.backingSize), fmtSize(cfg.cacheSize), cfg.threads, cfg.minRun, cfg.maxRun, r.work)
	start := time.Now()
	r.runAll()
	elapsed := time.Since(start)

	kinds := make([]string, 0, len(r.kinds))
	for k, n := range r.kinds {
		kinds = append(kinds, fmt.Sprintf("%s %d", k, n))
	}
	sort.Strings(kinds)
	r.finish()
	fmt.Println()
	rounds := fmt.Sprintf("%d rounds", cfg.rounds)
	if r.roundsDone < cfg.rounds {
		rounds = fmt.Sprintf("%d of %d rounds", r.roundsDone, cfg.rounds)
	}
	fmt.Printf("powercut-real: %s, %d writes (%d blocks), %d fsyncs, %d violations", rounds, r.writes, r.blocksW, r.fsyncs, r.violations)
	if len(kinds) > 0 {
		fmt.Printf(" (%s; %d distinct blocks)", strings.Join(kinds, ", "), len(r.badBlocks))
	}
	fmt.Printf(", %d failures; seed %d, disk %s, cache %s, %.1fs\n", len(r.failures), cfg.seed, fmtSize(cfg.backingSize), fmtSize(cfg.cacheSize), elapsed.Seconds())
	for _, f := range r.failures {
		fmt.Printf("  failure: %s\n", f)
	}
	if r.failed.Load() {
		return exitCode(1)
	}
	return nil
}

var finishOnce sync.Once

// finish stops everything the runner started and removes the work
// directory unless it is to be kept.
func (r *runner) finish() {
	finishOnce.Do(func() {
		r.tr.Cleanup(r.logf)
		if r.cfg.keep && r.failed.Load() {
			r.logf("kept %s (images in dir/, logs in logs/; the cache is bound to the filesystem's device number %s)", r.work, devString(r.dev))
			return
		}
		if err := os.RemoveAll(r.work); err != nil {
			r.logf("removing %s: %v", r.work, err)
		}
	})
}

func fmtSize(n int64) string {
	switch {
	case n%(1<<30) == 0:
		return fmt.Sprintf("%dG", n>>30)
	case n%(1<<20) == 0:
		return fmt.Sprintf("%dM", n>>20)
	default:
		return fmt.Sprint(n)
	}
}

func (r *runner) runAll() {
	if err := r.setup(); err != nil {
		r.fail("setup: %v", err)
		return
	}
	for round := 1; round <= r.cfg.rounds; round++ {
		if err := r.round(round); err != nil {
			r.fail("round %d: %v", round, err)
			return
		}
		r.roundsDone = round
		if r.cfg.stopOnFailure && r.failed.Load() {
			r.logf("stopping after round %d (--stop-on-failure)", round)
			return
		}
	}
	if err := r.final(r.cfg.rounds + 1); err != nil {
		r.fail("final check: %v", err)
	}
}

// setup creates the images and formats the cache through the filesystem.
func (r *runner) setup() error {
	for _, f := range []struct {
		name string
		size int64
	}{{"backing.img", r.cfg.backingSize}, {"cache.img", r.cfg.cacheSize}} {
		fh, err := os.OpenFile(filepath.Join(r.dir, f.name), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return err
		}
		err = fh.Truncate(f.size)
		if cerr := fh.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
	}
	r.bk = newBook(r.cfg.seed, r.cfg.threads, r.cfg.backingSize/blockSize)
	if err := r.startFS(0, r.rng.Uint64()); err != nil {
		return err
	}
	out, err := r.runWbcache(filepath.Join(r.logs, "format.log"), 2*time.Minute,
		"format", "--cache", r.fsCache(), "--backing", r.fsBacking())
	if err != nil {
		return fmt.Errorf("wbcache format: %v\n%s", err, out)
	}
	r.logf("formatted the cache through %s (device %s): %s", r.fsmnt, devString(r.dev), strings.Join(strings.Fields(firstLine(out)), " "))
	return r.stopFS()
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	return s
}

func (r *runner) fsCache() string   { return filepath.Join(r.fsmnt, "cache.img") }
func (r *runner) fsBacking() string { return filepath.Join(r.fsmnt, "backing.img") }
func (r *runner) disk() string      { return filepath.Join(r.mnt, "disk") }

// runWbcache runs a wbcache subcommand to completion; its combined output
// also goes to logPath.
func (r *runner) runWbcache(logPath string, timeout time.Duration, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, r.cfg.wbcache, args...)
	out, err := cmd.CombinedOutput()
	if lf, lerr := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644); lerr == nil {
		fmt.Fprintf(lf, "=== wbcache %s (%v)\n%s", strings.Join(args, " "), err, out)
		lf.Close()
	}
	return string(out), err
}

// startFS starts the power-cut filesystem on DIR at FSMNT, with the device
// number the cache was formatted through (see pin.go).
func (r *runner) startFS(round int, seed uint64) error {
	logPath := filepath.Join(r.logs, fmt.Sprintf("fs-%d.log", round))
	deadline := time.Now().Add(2 * time.Minute)
	for attempt := 1; ; attempt++ {
		var release func()
		if r.dev != 0 {
			rel, err := r.pin.pin(r.dev)
			if errors.Is(err, errDevTaken) && time.Now().Before(deadline) {
				if attempt%10 == 1 {
					r.logf("device number %s is taken by another mount; waiting for it", devString(r.dev))
				}
				time.Sleep(500 * time.Millisecond)
				continue
			}
			if err != nil {
				return fmt.Errorf("getting device number %s for the filesystem: %w", devString(r.dev), err)
			}
			release = rel
		}
		args := []string{r.self, "fs", "--seed", strconv.FormatUint(seed, 10),
			"--keep-prob", strconv.FormatFloat(r.cfg.keepProb, 'g', -1, 64), "--cut-window", strconv.Itoa(r.cfg.cutWindow)}
		if r.cfg.lying && round > 0 {
			args = append(args, "--lying-fsync")
		}
		c, err := r.tr.Start("fs", logPath, append(args, r.dir, r.fsmnt)...)
		if err != nil {
			if release != nil {
				release()
			}
			return err
		}
		r.tr.TrackMount(r.fsmnt)
		_, err = c.WaitLine(fsReadyPrefix, 30*time.Second)
		if release != nil {
			release()
		}
		if err != nil {
			c.Stop(10 * time.Second)
			return fmt.Errorf("%v (log %s)", err, logPath)
		}
		var st unix.Stat_t
		if err := unix.Stat(r.fsmnt, &st); err != nil {
			c.Stop(10 * time.Second)
			return fmt.Errorf("stat %s: %w", r.fsmnt, err)
		}
		if r.dev == 0 {
			r.dev = st.Dev
		}
		if st.Dev == r.dev {
			r.fs = c
			return nil
		}
		r.logf("the filesystem got device number %s instead of %s (another mount raced it); again", devString(st.Dev), devString(r.dev))
		c.Stop(30 * time.Second)
		if err := r.tr.UnmountFUSE(r.fsmnt); err != nil {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("could not mount the filesystem with device number %s for 2 minutes", devString(r.dev))
		}
	}
}

// stopFS stops the filesystem with SIGTERM (after a cut: nothing more is
// applied; without one: a clean shutdown) and makes sure FSMNT is gone.
func (r *runner) stopFS() error {
	c := r.fs
	r.fs = nil
	if c == nil {
		return nil
	}
	c.Signal(syscall.SIGTERM)
	var errs []string
	if !c.Wait(60 * time.Second) {
		errs = append(errs, fmt.Sprintf("the filesystem (pid %d) did not stop within 60s of SIGTERM; killed it", c.Pid))
		c.Signal(syscall.SIGKILL)
		c.Wait(10 * time.Second)
	} else if code := c.ExitCode(); code != 0 {
		errs = append(errs, fmt.Sprintf("the filesystem exited with status %d", code))
	}
	if crashtest.IsMounted(r.fsmnt) {
		errs = append(errs, fmt.Sprintf("%s still mounted after the filesystem stopped", r.fsmnt))
		if err := r.tr.UnmountFUSE(r.fsmnt); err != nil {
			errs = append(errs, err.Error())
		}
	}
	if len(errs) > 0 {
		return errors.New(strings.Join(errs, "; "))
	}
	return nil
}

// startWbcache runs wbcache mount on the filesystem's files and waits for
// its ready line.
func (r *runner) startWbcache(round int) (time.Duration, error) {
	args := append([]string(nil), r.cfg.mountArgs...)
	if r.cfg.fuseUring != "" {
		args = append([]string{"--fuse-uring", r.cfg.fuseUring}, args...)
	}
	d, err := r.tr.MountDaemon(crashtest.DaemonConfig{Bin: r.cfg.wbcache, Cache: r.fsCache(), Backing: r.fsBacking(),
		Mnt: r.mnt, Log: filepath.Join(r.logs, fmt.Sprintf("wbcache-%d.log", round)), Args: args}, 2*time.Minute)
	if err != nil {
		return 0, err
	}
	r.wbc = d
	return d.Ready, nil
}

// status is the daemon's `wbcache status --json` (nil if it fails).
func (r *runner) status() map[string]any {
	m, _ := r.wbc.Status()
	return m
}

func num(m map[string]any, key string) float64 {
	v, _ := m[key].(float64)
	return v
}

// round is one start, check, write phase, kill and power cut.
func (r *runner) round(round int) error {
	t0 := time.Now()
	fsSeed := r.rng.Uint64()
	runFor := r.cfg.minRun + time.Duration(r.rng.Int64N(int64(r.cfg.maxRun-r.cfg.minRun)+1))
	writerSeeds := make([]uint64, r.cfg.threads)
	for i := range writerSeeds {
		writerSeeds[i] = r.rng.Uint64()
	}
	order := cutOrders[r.rng.IntN(len(cutOrders))]
	if r.cfg.order != "mixed" {
		order = r.cfg.order
	}

	ready, st, vs, viols, vdur, err := r.restartAndVerify(round, fsSeed)
	if err != nil {
		return err
	}

	ws, cutLine, err := r.writePhase(round, runFor, writerSeeds, order)
	raised := r.bk.endRound()
	r.writes += ws.writes
	r.blocksW += ws.blocks
	r.fsyncs += ws.fsyncs
	if r.wbc != nil {
		if ec := r.wbc.ExitCode(); ec != -1 {
			r.fail("round %d: the daemon exited with status %d before the kill", round, ec)
		}
		r.wbc = nil
	}

	if err != nil {
		return err
	}
	// The filesystem goes, and the kernel's page cache above it with it.
	if err := r.stopFS(); err != nil {
		return err
	}
	if crashtest.Panicked(filepath.Join(r.logs, fmt.Sprintf("wbcache-%d.log", round))) {
		r.fail("round %d: the daemon panicked (logs/wbcache-%d.log)", round, round)
	}

	r.logf("round %d/%d: checked %d blocks in %.1fs: %d violations (%d written: %d newest acknowledged, %d older [unsynced, lost], %d newer [in flight], %d back to zeros)",
		round, r.cfg.rounds, vs.blocks, vdur.Seconds(), len(viols), vs.written, vs.newest, vs.lostUnsync, vs.inflight, vs.lostToZeros)
	r.logf("  ready in %.2fs (recovery %.3fs, %.0f records replayed); wrote %d times (%d blocks), %d fsyncs, %d random reads, %s after %.2fs (writers stopped by: %s); before the kill %.0f dirty / %.0f used slots, %.0f evictions, %.0f blocks written back, %.0f journal syncs, %.0f of %.0f journal blocks prepared; %s; %d floors raised; %.1fs",
		ready.Seconds(), num(st, "recovery_seconds"), num(st, "recovery_replayed_records"),
		ws.writes, ws.blocks, ws.fsyncs, ws.reads, orderNames[order], runFor.Seconds(), ws.stopReason(),
		num(ws.status, "slots_dirty"), num(ws.status, "slots_used"), num(ws.status, "evictions"), num(ws.status, "destaged_blocks"), num(ws.status, "journal_syncs"),
		num(ws.status, "journal_blocks_prepared"), num(ws.status, "journal_blocks_written"),
		strings.TrimPrefix(cutLine, "wbcache-powercut: "), raised, time.Since(t0).Seconds())
	return nil
}

// final restarts once more, checks, stops the daemon cleanly and runs
// wbcache check.
func (r *runner) final(round int) error {
	ready, st, vs, viols, vdur, err := r.restartAndVerify(round, r.rng.Uint64())
	if err != nil {
		return err
	}
	r.logf("final: checked %d blocks in %.1fs: %d violations (%d written); ready in %.2fs (recovery %.3fs, %.0f records replayed)",
		vs.blocks, vdur.Seconds(), len(viols), vs.written, ready.Seconds(), num(st, "recovery_seconds"), num(st, "recovery_replayed_records"))

	c := r.wbc
	r.wbc = nil
	if err := c.Stop(2 * time.Minute); err != nil {
		r.fail("final: clean stop: %v", err)
	}
	if crashtest.Panicked(filepath.Join(r.logs, fmt.Sprintf("wbcache-%d.log", round))) {
		r.fail("final: the daemon panicked (logs/wbcache-%d.log)", round)
	}
	out, err := r.runWbcache(filepath.Join(r.logs, "check.log"), 5*time.Minute, "check", "--cache", r.fsCache(), "--backing", r.fsBacking())
	if err != nil {
		r.fail("final: wbcache check: %v\n%s", err, out)
	} else {
		r.logf("final: clean stop, wbcache check: %s", strings.TrimSpace(lastLine(out)))
	}
	return r.stopFS()
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// ---------------------------------------------------------------- verify

// restartAndVerify starts the power-cut filesystem on what survived and
// the daemon on it (recovery), then checks every block.
func (r *runner) restartAndVerify(round int, fsSeed uint64) (ready time.Duration, st map[string]any, vs verifyStats, viols []violation, vdur time.Duration, err error) {
	if err = r.startFS(round, fsSeed); err != nil {
		return
	}
	if ready, err = r.startWbcache(round); err != nil {
		return
	}
	st = r.status()
	vs, viols, vdur, err = r.verify(round)
	return
}

// verify reads every block of the disk with O_DIRECT and checks it.
func (r *runner) verify(round int) (verifyStats, []violation, time.Duration, error) {
	t0 := time.Now()
	var (
		mu    sync.Mutex
		viols []violation
		total verifyStats
		wg    sync.WaitGroup
		errs  = make(chan error, r.cfg.readers)
	)
	n := r.bk.nblocks
	for i := range r.cfg.readers {
		lo, hi := int64(i)*n/int64(r.cfg.readers), int64(i+1)*n/int64(r.cfg.readers)
		wg.Go(func() {
			fd, err := unix.Open(r.disk(), unix.O_RDONLY|unix.O_DIRECT|unix.O_CLOEXEC, 0)
			if err != nil {
				errs <- fmt.Errorf("open %s: %w", r.disk(), err)
				return
			}
			defer unix.Close(fd)
			const chunk = 64
			buf := alignedBuffer(chunk * blockSize)
			scratch := make([]byte, blockSize)
			var st verifyStats
			var mine []violation
			for b := lo; b < hi; b += chunk {
				k := min(chunk, hi-b)
				p := buf[:k*blockSize]
				if err := preadFull(fd, p, b*blockSize); err != nil {
					// Find the blocks that fail.
					for j := range k {
						q := buf[j*blockSize : (j+1)*blockSize]
						if err := preadFull(fd, q, (b+j)*blockSize); err != nil {
							st.blocks++
							r.bk.obsOK[b+j] = false
							mine = append(mine, violation{lba: b + j, kind: "eio", got: "a read error: " + err.Error(),
								floor: r.bk.floor[b+j], acked: r.bk.acked[b+j], issued: r.bk.issued[b+j]})
							continue
						}
						if v := r.bk.check(b+j, q, scratch, &st); v != nil {
							mine = append(mine, *v)
						}
					}
					continue
				}
				for j := range k {
					if v := r.bk.check(b+j, p[j*blockSize:(j+1)*blockSize], scratch, &st); v != nil {
						mine = append(mine, *v)
					}
				}
			}
			mu.Lock()
			total.add(st)
			viols = append(viols, mine...)
			mu.Unlock()
		})
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return total, nil, 0, err
	}
	r.report(round, viols)
	return total, viols, time.Since(t0), nil
}

// report counts violations and prints examples of every kind: up to
// maxReport in all, shared out among the kinds.
func (r *runner) report(round int, viols []violation) {
	if len(viols) == 0 {
		return
	}
	sort.Slice(viols, func(i, j int) bool { return viols[i].lba < viols[j].lba })
	byKind := map[string][]violation{}
	for _, v := range viols {
		r.violations++
		r.kinds[v.kind]++
		r.badBlocks[v.lba] = true
		byKind[v.kind] = append(byKind[v.kind], v)
	}
	r.failed.Store(true)
	kinds := make([]string, 0, len(byKind))
	for k := range byKind {
		kinds = append(kinds, k)
	}
	sort.Strings(kinds)
	per := max(3, r.cfg.maxReport/len(kinds))
	for _, k := range kinds {
		for i, v := range byKind[k] {
			if i == per {
				r.logf("VIOLATION round %d: ... and %d more %s", round, len(byKind[k])-per, k)
				break
			}
			r.logf("VIOLATION round %d: %s", round, v)
		}
	}
}

// ---------------------------------------------------------------- writes

type writeStats struct {
	writes, blocks, fsyncs int64
	reads, readErrs        int64          // random reads during the phase; errors before the cut
	stops                  map[string]int // why writers stopped
	status                 map[string]any // daemon status just before the kill
}

func (w writeStats) stopReason() string {
	var parts []string
	for k, n := range w.stops {
		parts = append(parts, fmt.Sprintf("%d× %s", n, k))
	}
	sort.Strings(parts)
	return strings.Join(parts, ", ")
}

var (
	cutOrders  = []string{"kill-first", "cut-first", "armed"}
	orderNames = map[string]string{
		"kill-first": "kill -9 then power cut",
		"cut-first":  "power cut then kill -9",
		"armed":      "armed power cut then kill -9",
	}
)

// cut asks the filesystem for the power cut and returns its report.
func (r *runner) cut() (string, error) {
	r.bk.beginCut()
	r.fs.Signal(syscall.SIGUSR1)
	return r.fs.WaitLine(fsCutPrefix, time.Minute)
}

// armedCut arms the filesystem's power cut at one of its next write or
// fsync requests and waits for it (cutting by signal if the requests
// stop coming).
func (r *runner) armedCut() (string, error) {
	r.bk.beginCut()
	r.fs.Signal(syscall.SIGUSR2)
	if _, err := r.fs.WaitLine(fsArmedPrefix, time.Minute); err != nil {
		return "", err
	}
	if line, err := r.fs.WaitLine(fsCutPrefix, 5*time.Second); err == nil {
		return line, nil
	}
	r.logf("the armed power cut did not come within 5s; cutting now")
	r.fs.Signal(syscall.SIGUSR1)
	return r.fs.WaitLine(fsCutPrefix, time.Minute)
}

// writePhase runs the writers for runFor, then kills the daemon with
// SIGKILL while they write, and waits for them to stop. The power cut
// comes after the kill (kill-first) or while the daemon still runs (its
// writes and syncs from then on are lost; the kill follows): at once
// (cut-first) or in one of the next requests to the filesystem (armed).
func (r *runner) writePhase(round int, runFor time.Duration, seeds []uint64, order string) (writeStats, string, error) {
	var (
		stop  atomic.Bool
		wg    sync.WaitGroup
		mu    sync.Mutex
		total = writeStats{stops: map[string]int{}}
	)
	for t := range r.cfg.threads {
		wg.Go(func() {
			w, b, f, why := r.writer(t, round, rand.New(rand.NewPCG(seeds[t], uint64(t))), &stop)
			mu.Lock()
			total.writes += w
			total.blocks += b
			total.fsyncs += f
			total.stops[why]++
			mu.Unlock()
		})
	}
	var rwg sync.WaitGroup
	var rviols []violation
	for i := range r.cfg.randReaders {
		rwg.Go(func() {
			n, v := r.randomReader(rand.New(rand.NewPCG(seeds[i%len(seeds)], uint64(1000+i))), &stop)
			mu.Lock()
			total.reads += n
			total.readErrs += int64(len(v))
			rviols = append(rviols, v...)
			mu.Unlock()
		})
	}
	time.Sleep(runFor)
	total.status = r.status()
	var cutLine string
	var cutErr error
	switch order {
	case "cut-first":
		cutLine, cutErr = r.cut()
	case "armed":
		cutLine, cutErr = r.armedCut()
	}
	stop.Store(true)
	if err := r.wbc.Kill9(); err != nil {
		r.fail("round %d: %v", round, err)
	}
	done := make(chan struct{})
	go func() {
		wg.Wait()
		rwg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		r.fail("round %d: writers still blocked 30s after the kill; aborting the FUSE connection of %s", round, r.mnt)
		_ = r.tr.FUSEAbort(r.mnt)
		<-done
	}
	if order == "kill-first" {
		cutLine, cutErr = r.cut()
	}
	r.report(round, rviols)
	return total, cutLine, cutErr
}

// randomReader reads random runs of 1-16 blocks anywhere on the disk
// until stop is set or the daemon goes. A read error while the power is
// on is a violation (the blocks are then read one by one to name them).
func (r *runner) randomReader(rng *rand.Rand, stop *atomic.Bool) (int64, []violation) {
	fd, err := unix.Open(r.disk(), unix.O_RDONLY|unix.O_DIRECT|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, nil
	}
	defer unix.Close(fd)
	const maxRun = 16
	buf := alignedBuffer(maxRun * blockSize)
	var reads int64
	var viols []violation
	for !stop.Load() {
		n := int64(1 + rng.IntN(maxRun))
		start := rng.Int64N(r.bk.nblocks - n + 1)
		err := preadFull(fd, buf[:n*blockSize], start*blockSize)
		if err == nil {
			reads++
			continue
		}
		if stop.Load() || r.bk.isCutting() || !errors.Is(err, unix.EIO) {
			break // the daemon is going or gone
		}
		for j := range n {
			lba := start + j
			if err := preadFull(fd, buf[:blockSize], lba*blockSize); err != nil && errors.Is(err, unix.EIO) && !r.bk.isCutting() {
				viols = append(viols, violation{lba: lba, kind: "eio", got: "a read error while the daemon ran: " + err.Error(),
					floor: r.bk.floor[lba], online: true})
			}
		}
	}
	return reads, viols
}

// writer writes runs of blocks in its range until the daemon dies or stop
// is set. It returns writes, blocks, fsyncs and why it stopped.
func (r *runner) writer(t, round int, rng *rand.Rand, stop *atomic.Bool) (writes, blocks, fsyncs int64, why string) {
	fd, err := unix.Open(r.disk(), unix.O_RDWR|unix.O_DIRECT|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, 0, 0, "open: " + errName(err)
	}
	defer unix.Close(fd)
	const maxRun = 16
	buf := alignedBuffer(maxRun * blockSize)
	lo, hi := r.bk.span(t)
	versions := make([]uint32, 0, maxRun)
	for !stop.Load() {
		n := int64(1 + rng.IntN(maxRun))
		start := lo + rng.Int64N(hi-lo-n+1)
		versions = versions[:0]
		for i := range n {
			v := r.bk.issue(start+i, round)
			versions = append(versions, v)
			fillBlock(buf[i*blockSize:], r.cfg.seed, header{lba: start + i, version: v, round: uint32(round), thread: uint32(t)})
		}
		p := buf[:n*blockSize]
		var w int
		for {
			// An interrupted write is sent again: the same bytes.
			w, err = unix.Pwrite(fd, p, start*blockSize)
			if err != unix.EINTR {
				break
			}
		}
		if err != nil {
			return writes, blocks, fsyncs, "write: " + errName(err)
		}
		if w != len(p) {
			return writes, blocks, fsyncs, fmt.Sprintf("short write (%d of %d bytes)", w, len(p))
		}
		r.bk.ack(start, versions)
		writes++
		blocks += n
		if rng.IntN(r.cfg.syncEvery) == 0 {
			s := r.bk.fsyncStart()
			data := rng.IntN(2) == 0
			for {
				if data {
					err = unix.Fdatasync(fd)
				} else {
					err = unix.Fsync(fd)
				}
				if err != unix.EINTR {
					break
				}
			}
			if err != nil {
				return writes, blocks, fsyncs, "fsync: " + errName(err)
			}
			r.bk.fsyncDone(s)
			fsyncs++
		}
	}
	return writes, blocks, fsyncs, "stopped"
}

func errName(err error) string {
	var en syscall.Errno
	if errors.As(err, &en) {
		if name := unix.ErrnoName(en); name != "" {
			return name
		}
	}
	return err.Error()
}
