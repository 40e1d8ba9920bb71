package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/wbcache/wbcache/blockcache"
	"github.com/wbcache/wbcache/device"
	"github.com/wbcache/wbcache/flush"
	"github.com/wbcache/wbcache/fuse"
	"github.com/wbcache/wbcache/layout"
	"golang.org/x/sys/unix"
)

// daemonConfig is what `mount` (and `demo`, in-process) serves.
type daemonConfig struct {
	cachePath, backingPath, mountpoint string
	changes                            []kv // settings given explicitly
	allowOther                         bool
	nonempty                           bool   // mount over a directory that holds files
	metricsAddr                        string // "" = no metrics endpoint
	selfAccess                         bool   // this process does I/O on the mount (demo)
	ioUring                            fuse.IOUringMode
	unbatchedDev                       bool      // --fuse-batch off
	notify                             *notifier // systemd; nil outside a Type=notify unit
	log                                *slog.Logger
}

// daemon is a served cache: devices, engine, destager, FUSE mount, control
// socket and optional metrics endpoint. startDaemon builds it; stop tears it
// down in reverse order.
type daemon struct {
	cfg        daemonConfig
	log        *slog.Logger
	mountpoint string // absolute
	started    time.Time

	devs    *devices
	cache   *blockcache.Cache
	dest    *flush.Destager
	srv     *fuse.Server
	ctl     *controlServer
	metrics *metricsServer
	promote int // promote-after in force (fixed at open)

	ctx    context.Context // cancelled by stop: ends control requests in flight
	cancel context.CancelFunc

	setMu sync.Mutex // serialises settings changes
	drain drainState // a drain resumed at mount

	mountGone chan struct{} // closed when the FUSE connection has ended
	stopReq   chan struct{} // closed by requestStop: a client asked the daemon to stop
	reqOnce   sync.Once
	force     chan struct{} // closed by forceStop: stop even while the mount is in use
	forceOnce sync.Once
	phase     atomic.Pointer[string] // what stop is doing; nil while serving

	closed      chan struct{} // closed when stop has closed the cache and devices
	closedDirty int           // dirty blocks left in the cache, once closed
	stopOnce    sync.Once
	stopErr     error // once closed
}

// errMountpointBusy: a daemon already serves the mount point.
var errMountpointBusy = errors.New("a wbcache daemon already serves it")

// startDaemon opens and serves a cache. On error everything it started is
// undone.
func startDaemon(cfg daemonConfig) (_ *daemon, err error) {
	if cfg.log == nil {
		cfg.log = slog.New(slog.DiscardHandler)
	}
	mp, err := resolvePath(cfg.mountpoint)
	if err != nil {
		return nil, fmt.Errorf("mount point %s: %w", cfg.mountpoint, err)
	}
	d := &daemon{cfg: cfg, log: cfg.log, mountpoint: mp, started: time.Now(), mountGone: make(chan struct{}),
		stopReq: make(chan struct{}), force: make(chan struct{}), closed: make(chan struct{})}
	startPprof(cfg.log)
	setServingProcs()
	d.ctx, d.cancel = context.WithCancel(context.Background())
	defer func() {
		if err != nil {
			d.teardown()
		}
	}()
	// Everything about the mount point is checked before the cache is
	// opened: recovery is not undone by a refusal.
	if err := checkMountpoint(mp, cfg.nonempty); err != nil {
		return nil, err
	}
	d.devs, err = openDevices(cfg.cachePath, cfg.backingPath, openServe, "stop that daemon first")
	if err != nil {
		return nil, err
	}
	if err := d.openCache(); err != nil {
		return nil, err
	}
	setIOFlusher(d.log)
	d.dest = flush.New(d.cache, flush.PolicyFromSettings(d.cache.Settings()), d.log)
	setGapReads(d.dest, cfg.backingPath, d.log)
	d.dest.Start()
	if err := d.serve(); err != nil {
		return nil, err
	}
	return d, nil
}

// checkMountpoint removes a dead mount left at mp by a killed daemon, then
// refuses a mount point that is not a directory, that a live daemon serves
// (mounted, or lazily detached while it stops), or that holds files
// (unless nonempty).
func checkMountpoint(mp string, nonempty bool) error {
	if err := fuse.CleanupStale(mp); err != nil {
		return fmt.Errorf("%w: unmount it by hand (umount -l %s) and retry", err, mp)
	}
	st, err := os.Stat(mp)
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("mount point %s does not exist: create it with mkdir", mp)
	} else if err != nil {
		return fmt.Errorf("mount point %s: %w", mp, err)
	} else if !st.IsDir() {
		return fmt.Errorf("mount point %s is not a directory", mp)
	}
	if m, ok := wbcacheMountAt(mp); ok {
		return fmt.Errorf("mount point %s: %w (cache %s): stop it first (wbcache stop %s), or choose another directory",
			mp, errMountpointBusy, m.Source, mp)
	}
	if sock, ok := liveSocket(mp); ok {
		return fmt.Errorf("mount point %s: %w while it stops (control socket %s): wait for it to exit ('wbcache status %s' shows what it waits for), or choose another directory",
			mp, errMountpointBusy, sock, mp)
	}
	if nonempty {
		return nil
	}
	dir, err := os.Open(mp)
	if err != nil {
		return fmt.Errorf("mount point %s: %w", mp, err)
	}
	names, _ := dir.Readdirnames(3)
	dir.Close()
	if len(names) > 0 {
		return fmt.Errorf("mount point %s is not empty (it holds %s): mounting over it would hide its files.\n"+
			"  Give an empty directory, or --nonempty to mount over them anyway", mp, quoteNames(names))
	}
	return nil
}

// quoteNames renders a few directory entries ("a", "b", ...).
func quoteNames(names []string) string {
	q := make([]string, len(names))
	for i, n := range names {
		q[i] = strconv.Quote(n)
	}
	s := strings.Join(q, ", ")
	if len(names) == 3 {
		s += ", ..."
	}
	return s
}

// openCache opens the engine on the devices, with the settings given on
// the command line saved over the persisted ones.
func (d *daemon) openCache() error {
	// The promotion threshold is an open-time option: take it from the
	// persisted settings plus the flags before opening.
	settings := layout.Settings{}
	if sb, err := blockcache.ReadSuperblock(d.devs.ssd); err == nil {
		settings = sb.Settings
	}
	want, err := applySettings(settings, d.cfg.changes)
	if err != nil {
		return &usageError{cmd: "mount", err: err}
	}
	d.promote = blockcache.PromoteAfter(want)

	d.cache, err = blockcache.Open(d.devs.ssd, d.devs.hdd, blockcache.Options{Logger: d.log, PromoteAfter: d.promote})
	if err != nil {
		return openCacheError(d.cfg.cachePath, err)
	}
	// Reapply the flags on what Open found (the same superblock).
	want, err = applySettings(d.cache.Settings(), d.cfg.changes)
	if err != nil {
		return &usageError{cmd: "mount", err: err}
	}
	if want != d.cache.Settings() {
		if err := d.cache.SetSettings(want); err != nil {
			return fmt.Errorf("saving settings: %w", err)
		}
		d.log.Info("settings saved", "changed", changedKeys(d.cfg.changes))
	}
	if data := int64(d.cache.SlotCount()) * blockcache.BlockSize; data > d.cache.Size() {
		d.log.Warn(fmt.Sprintf("the cache data (%s) is larger than the backing device (%s): it never holds more than %s of distinct blocks; the rest only gives room to rewritten blocks",
			formatSize(data), formatSize(d.cache.Size()), formatSize(d.cache.Size())))
	}
	return nil
}

// serve starts the control socket, the metrics endpoint and the FUSE
// mount (with the cache path as its source in /proc/mounts).
func (d *daemon) serve() error {
	var err error
	// Both servers are listening but answer only once the daemon fields
	// they read are set.
	d.ctl, err = startControl(d)
	if err != nil {
		return err
	}
	if d.cfg.metricsAddr != "" {
		d.metrics, err = startMetrics(d, d.cfg.metricsAddr)
		if err != nil {
			return err
		}
	}
	enableRing(d.cfg.ioUring, d.log)
	backend := &spaceWatch{Cache: d.cache, log: d.log, cache: d.devs.ssd.Path(), backing: d.devs.hdd.Path()}
	d.srv, err = fuse.Mount(d.mountpoint, backend, fuse.Options{
		AllowOther:   d.cfg.allowOther,
		FsName:       absOr(d.cfg.cachePath),
		Stats:        d.statsFile,
		Logger:       d.log,
		SelfAccess:   d.cfg.selfAccess,
		IOUring:      d.cfg.ioUring,
		UnbatchedDev: d.cfg.unbatchedDev,
	})
	if err != nil {
		return mountError(d.mountpoint, err)
	}
	go func() {
		d.srv.Wait()
		close(d.mountGone)
	}()
	d.ctl.serve()
	if d.metrics != nil {
		d.metrics.serve()
	}
	return nil
}

// enableRing: in auto mode the daemon serves FUSE over io_uring wherever
// the kernel has it, so as root it turns on the fuse module's enable_uring
// parameter when it is off (a system-wide switch that only lets FUSE
// daemons ask for io_uring; those that do not ask are unaffected). 4 KiB
// random writes are 1.3-1.4x faster through it (README, Benchmarks).
func enableRing(mode fuse.IOUringMode, log *slog.Logger) {
	if mode != fuse.IOUringAuto || os.Geteuid() != 0 || !fuse.IOUringBuiltIn() || fuse.IOUringEnabled() {
		return
	}
	if err := fuse.EnableIOUring(); err != nil {
		log.Info("cannot turn on FUSE over io_uring; serving through /dev/fuse", "err", err)
		return
	}
	log.Info("turned on FUSE over io_uring (fuse module parameter enable_uring=Y); --fuse-uring off serves through /dev/fuse")
}

// spaceWatch is the cache as the FUSE server sees it. A request that fails
// because the filesystem holding the cache file (or the backing file) is
// full fails with ENOSPC; spaceWatch also says so in the log, at most once
// every 10 seconds, since the server logs only errors that become EIO.
type spaceWatch struct {
	*blockcache.Cache
	log            *slog.Logger
	cache, backing string       // the devices' paths
	last           atomic.Int64 // UnixNano of the last record
}

func (w *spaceWatch) ReadAt(p []byte, off int64) (int, error) {
	n, err := w.Cache.ReadAt(p, off)
	return n, w.note(err)
}

func (w *spaceWatch) WriteAt(p []byte, off int64) (int, error) {
	n, err := w.Cache.WriteAt(p, off)
	return n, w.note(err)
}

func (w *spaceWatch) Sync() error { return w.note(w.Cache.Sync()) }

func (w *spaceWatch) Discard(off, n int64) error { return w.note(w.Cache.Discard(off, n)) }

// note logs err if it says that a device's filesystem is full; it returns
// err.
func (w *spaceWatch) note(err error) error {
	var nse *device.NoSpaceError
	if err == nil || !errors.As(err, &nse) {
		return err
	}
	role := "cache"
	if nse.Path == w.backing && nse.Path != w.cache {
		role = "backing"
	}
	now, last := time.Now().UnixNano(), w.last.Load()
	if (last != 0 && now-last < int64(10*time.Second)) || !w.last.CompareAndSwap(last, now) {
		return err
	}
	w.log.Warn(fmt.Sprintf("no space left on the %s device: writes that need space on it fail with ENOSPC until space is freed on the filesystem holding %s", role, nse.Path),
		"err", err)
	return err
}

// transport names how FUSE requests reach the daemon.
func (d *daemon) transport() string {
	switch {
	case d.srv.IOUring():
		return "io_uring"
	case d.srv.DevBatched():
		return "/dev/fuse+io_uring"
	}
	return "/dev/fuse"
}

// diskPath is MOUNTPOINT/disk.
func (d *daemon) diskPath() string { return filepath.Join(d.mountpoint, "disk") }

// stop unmounts, waits for the kernel connection to end (or for
// forceStop), stops the destager, closes the cache (checkpoint + clean
// flag) and the devices. It is idempotent.
func (d *daemon) stop() error {
	d.stopOnce.Do(func() { d.teardown() })
	return d.stopErr
}

// requestStop asks the goroutine that runs the daemon to stop it (the
// control socket's POST /stop).
func (d *daemon) requestStop() { d.reqOnce.Do(func() { close(d.stopReq) }) }

// forceStop makes a stop waiting for the mount's last user go on without
// it (a second signal, or 'wbcache stop --force').
func (d *daemon) forceStop() { d.forceOnce.Do(func() { close(d.force) }) }

// stopping says what stop is doing, "" while the daemon serves.
func (d *daemon) stopping() string {
	if p := d.phase.Load(); p != nil {
		return *p
	}
	return ""
}

func (d *daemon) setPhase(p string) {
	d.phase.Store(&p)
	d.cfg.notify.send("STATUS=stopping: " + p)
}

// teardown stops everything startDaemon started, in reverse order. The
// control socket answers until the end, so 'status' and 'stop' can follow
// a stop that waits for the mount's last user.
func (d *daemon) teardown() {
	var errs []error
	d.cfg.notify.send("STOPPING=1")
	d.setPhase("unmounting")
	d.cancel()
	if d.metrics != nil {
		d.metrics.close()
	}
	if d.srv != nil {
		if err := d.srv.Unmount(); err != nil {
			// Still mounted: requests may keep coming; they fail with EIO
			// once the cache is closed below.
			d.log.Error("unmount failed; closing the cache anyway", "err", err)
			errs = append(errs, err)
		} else {
			d.waitUnmounted()
		}
	}
	d.setPhase("letting write-back runs in flight finish and closing the cache")
	if d.dest != nil {
		d.dest.Stop()
	}
	d.drain.wait()
	if d.cache != nil {
		d.closedDirty = d.cache.DirtyCount()
		if err := d.cache.Close(); err != nil && !errors.Is(err, blockcache.ErrClosed) {
			errs = append(errs, fmt.Errorf("closing cache: %w", err))
		} else {
			d.log.Info("cache closed cleanly", "cache", d.cfg.cachePath, "dirty_blocks", d.closedDirty)
		}
	}
	if d.devs != nil {
		if err := d.devs.close(); err != nil {
			errs = append(errs, err)
		}
	}
	d.stopErr = errors.Join(errs...)
	d.setPhase("stopped")
	close(d.closed)
	if d.ctl != nil {
		d.ctl.close()
	}
}

// waitUnmounted waits for the kernel connection to end; a busy mount ends
// only when its last user (a loop device) goes, or at forceStop.
func (d *daemon) waitUnmounted() {
	select {
	case <-d.mountGone:
		return
	case <-time.After(time.Second):
	}
	d.setPhase(fmt.Sprintf("waiting for the last user of %s to close it (a loop device? detach it with losetup -d)", d.diskPath()))
	d.log.Warn("the mount is busy: waiting for its last user to close MOUNTPOINT/disk (a loop device? detach it with losetup -d); signal again or run 'wbcache stop --force' to stop anyway",
		"mountpoint", d.mountpoint)
	select {
	case <-d.mountGone:
	case <-d.force:
		d.log.Warn("stopping with the mount still in use: further I/O on it fails with EIO")
	}
}

// setIOFlusher marks the process as an I/O flusher (PR_SET_IO_FLUSHER), so
// memory reclaim does not recurse into I/O that waits on this daemon, as it
// could with a loop device on the disk. It needs CAP_SYS_RESOURCE; old
// kernels answer EINVAL. Failures are logged at debug and ignored.
func setIOFlusher(log *slog.Logger) {
	if os.Geteuid() != 0 {
		return
	}
	// The flag is per thread and inherited by threads created later; set
	// it on every thread when the runtime allows (not under cgo).
	_, _, errno := syscall.AllThreadsSyscall(unix.SYS_PRCTL, unix.PR_SET_IO_FLUSHER, 1, 0)
	if errno == 0 {
		log.Debug("PR_SET_IO_FLUSHER set on all threads")
		return
	}
	if errno != syscall.ENOTSUP {
		log.Debug("PR_SET_IO_FLUSHER not set", "err", errno)
		return
	}
	if err := unix.Prctl(unix.PR_SET_IO_FLUSHER, 1, 0, 0, 0); err != nil {
		log.Debug("PR_SET_IO_FLUSHER not set", "err", err)
		return
	}
	log.Debug("PR_SET_IO_FLUSHER set on the calling thread only (cgo in use)")
}

// statsFile is the content of MOUNTPOINT/stats.
func (d *daemon) statsFile() []byte {
	b, err := json.MarshalIndent(d.status(), "", "  ")
	if err != nil {
		return []byte(fmt.Sprintf("{\"error\": %q}\n", err.Error()))
	}
	return append(b, '\n')
}

// resolvePath makes p absolute and resolves symlinks in its parent (not in
// p itself, which may be a dead mount), as fuse.CleanupStale does, so the
// daemon and its clients derive the same control socket name.
func resolvePath(p string) (string, error) {
	abs, err := filepath.Abs(p)
	if err != nil {
		return "", err
	}
	dir, base := filepath.Split(abs)
	if base == "" {
		return abs, nil
	}
	if r, err := filepath.EvalSymlinks(dir); err == nil {
		dir = r
	}
	return filepath.Join(dir, base), nil
}

// baseProcs is GOMAXPROCS as the runtime chose it (one per CPU the
// process may use) or as the environment set it.
var baseProcs = runtime.GOMAXPROCS(0)

// setServingProcs sets GOMAXPROCS for serving, unless the GOMAXPROCS
// environment variable chose it.
func setServingProcs() {
	runtime.GOMAXPROCS(servingProcs(os.Getenv("GOMAXPROCS"), baseProcs))
}

// servingProcs is the GOMAXPROCS to serve with, given the environment
// variable's value and the runtime's default: two per CPU, whatever the
// transport. A thread serving FUSE requests holds its processor while it
// sleeps in a system call until the runtime's monitor takes it back, tens
// of microseconds later; meanwhile goroutines that are ready to run wait
// while CPUs idle, and taking the processor back, then getting one again
// when the call returns, costs the thread a switch and the monitor a
// wakeup. Serving threads sleep often: through go-fuse's /dev/fuse
// readers, reading the next request and waiting for the cache file's
// inode lock in a pwrite; through io_uring, the ring threads (two per
// CPU) or the /dev/fuse threads (one per CPU), each locked to its OS
// thread and answering writes itself, waiting for the next requests and
// for the same inode lock. With one processor per CPU the
// ring threads alone outnumbered the processors, and the journal
// goroutine, the destager and requests answered from goroutines waited
// for one to come free.
//
// On a 2-CPU VM, 4 KiB random writes against the FUSE ceiling
// (scripts/ceiling-ab.sh): through /dev/fuse at QD32, 49% of the ceiling
// with 2 processors, 57% with 3, 61% with 4, 60% with 6, 56% with 8 and
// 54% with 16. Through io_uring, on a VM where system calls are dear
// (docs/bench/dear-syscalls-2026-12-05.md, "Processors through
// io_uring"): QD32 124-128% with 2 against 141-146% with 4, QD1 level,
// sixteen synchronous writers (scripts/lockwait-ab.sh) 38-46k IOPS with 2
// against 57-58k with 4. Earlier runs of the engine of 2026-11-26 on
// another VM had put 2 processors ahead through io_uring (100-104% of the
// ceiling against 94%). Through /dev/fuse read by the daemon's threads
// through io_uring, on the VM where system calls are dear, QD32 over 5
// rounds: 117% of the ceiling with 2, 116% with 3, 126% with 4
// (docs/bench/devfuse-2026-12-06.md).
func servingProcs(env string, base int) int {
	if env != "" {
		return base
	}
	return 2 * base
}

// setGapReads turns the destager's gap reads off over a backing device the
// kernel reports as not rotational: reading gaps to write long runs pays
// off on a disk that seeks (flush/gapread.go), not on an SSD.
func setGapReads(d *flush.Destager, backing string, log *slog.Logger) {
	if rot, known := device.Rotational(backing); known && !rot {
		d.SetGapReads(false)
		log.Info("the backing device does not seek (queue/rotational is 0): write-back does not read gaps from it")
	}
}
