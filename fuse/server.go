package fuse

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	gofuse "github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// Backend is the block store served as MOUNTPOINT/disk.
//
// Its methods are called concurrently from many goroutines. Buffers passed
// to ReadAt and WriteAt belong to the caller and are only valid during the
// call. Requests are already clipped to [0, Size()).
type Backend interface {
	// ReadAt fills p from off: it returns len(p) or an error.
	ReadAt(p []byte, off int64) (int, error)
	// WriteAt writes p at off (any offset and length). When it returns
	// nil, the write is acknowledged to the application.
	WriteAt(p []byte, off int64) (int, error)
	// Sync is the durability point (fsync and fdatasync): every write
	// acknowledged before it was called must be durable when it returns nil.
	Sync() error
	// Discard makes [off, off+n) read as zeros afterwards.
	Discard(off, n int64) error
	// Size is the disk size in bytes; it must not change while mounted.
	Size() int64
}

// Waiter may be implemented by a Backend that can tell, cheaply and
// without blocking, whether a read or write may wait for a slow device
// (the backing HDD). Through FUSE over io_uring, such requests are answered
// from their own goroutine, so that the ring thread goes on serving others
// and the slow device sees the application's queue depth; the rest are
// answered on the ring thread. Without it, reads and writes are answered
// on the ring thread. It is a scheduling hint: a wrong answer costs speed,
// never correctness.
type Waiter interface {
	MayWait(write bool, off, n int64) bool
}

// Options configure Mount.
type Options struct {
	// AllowOther lets other users access the mount (allow_other); the mode
	// bits (0644 for disk, 0444 for stats) still apply.
	AllowOther bool
	// Debug logs every FUSE request and reply (very verbose).
	Debug bool
	// FsName is the source shown in /proc/mounts; default "wbcache".
	FsName string
	// Stats, if non-nil, is served as the read-only file MOUNTPOINT/stats.
	// It is called when the file is opened; the bytes it returns are what
	// that open file reads. It may be called concurrently.
	Stats func() []byte
	// SelfAccess: the serving process itself opens files on the mount
	// (tests, the demo). Mount then runs go-fuse's poll hack, which tells
	// the kernel early that POLL is unsupported so the Go netpoller of this
	// process cannot deadlock on its own mount. A daemon that never touches
	// its mount leaves it off: killed during the hack's open, the process
	// could never exit (a thread would wait for its own dead server).
	SelfAccess bool
	// Logger receives errors and warnings; default slog.Default().
	Logger *slog.Logger
	// IOUring chooses the request transport: FUSE over io_uring or
	// read/write on /dev/fuse (see IOUringMode).
	IOUring IOUringMode
}

// IOUringMode chooses between FUSE over io_uring and /dev/fuse.
type IOUringMode int

const (
	// IOUringAuto uses io_uring when the kernel offers it (the fuse
	// module's enable_uring parameter is Y) and the daemon runs as root,
	// and /dev/fuse otherwise.
	IOUringAuto IOUringMode = iota
	// IOUringOff always uses /dev/fuse.
	IOUringOff
	// IOUringOn turns on enable_uring if needed and fails the mount if
	// the ring cannot be set up.
	IOUringOn
)

// ParseIOUringMode parses "auto", "on" or "off".
func ParseIOUringMode(s string) (IOUringMode, error) {
	switch s {
	case "auto":
		return IOUringAuto, nil
	case "on":
		return IOUringOn, nil
	case "off":
		return IOUringOff, nil
	}
	return 0, fmt.Errorf("unknown io_uring mode %q (want auto, on or off)", s)
}

func (m IOUringMode) String() string {
	switch m {
	case IOUringOn:
		return "on"
	case IOUringOff:
		return "off"
	}
	return "auto"
}

// Mount parameters; doc.go explains them.
const (
	maxWrite      = 1 << 20
	maxReadAhead  = 1 << 20
	maxBackground = 128
)

// Server is a mounted wbcache disk.
type Server struct {
	srv        *gofuse.Server
	mountpoint string
	logger     *slog.Logger
	done       chan struct{} // closed when the serve loop has ended
	ring       *uringServer  // nil when requests come through /dev/fuse

	mu       sync.Mutex // serialises Unmount
	detached bool       // lazily unmounted: nothing left to unmount
}

// Mount serves b as mountpoint/disk and returns once the kernel has
// initialised the connection. The mountpoint must be an existing directory.
// If a previous daemon died there, Mount refuses with an error saying so:
// call CleanupStale first.
func Mount(mountpoint string, b Backend, opts Options) (*Server, error) {
	if b == nil {
		return nil, errors.New("wbcache/fuse: mount: nil backend")
	}
	size := b.Size()
	if size < 0 {
		return nil, fmt.Errorf("wbcache/fuse: mount: backend size %d is negative", size)
	}
	mp, err := filepath.Abs(mountpoint)
	if err != nil {
		return nil, fmt.Errorf("wbcache/fuse: mount %s: %w", mountpoint, err)
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.Default()
	}
	fsName := opts.FsName
	if fsName == "" {
		fsName = "wbcache"
	}
	if err := deadErr(mp); err != nil {
		return nil, fmt.Errorf("wbcache/fuse: mount %s: a dead FUSE mount is in the way (%v; did its daemon die?): remove it with CleanupStale or `umount -l %s`", mp, err, mp)
	}
	root := os.Geteuid() == 0

	// go-fuse logs through a *log.Logger: route it into slog. Its debug
	// trace is wanted when Debug is set, so it must not be filtered out.
	goFuseLevel := slog.LevelWarn
	if opts.Debug {
		goFuseLevel = slog.LevelInfo
	}
	mo := &gofuse.MountOptions{
		AllowOther:    opts.AllowOther,
		Options:       []string{"default_permissions"},
		MaxBackground: maxBackground,
		MaxWrite:      maxWrite,
		MaxReadAhead:  maxReadAhead,
		FsName:        fsName,
		Name:          "wbcache",
		Debug:         opts.Debug,
		Logger:        slog.NewLogLogger(logger.With("component", "go-fuse").Handler(), goFuseLevel),
		// As root, mount(2) directly and report its error; otherwise try
		// it and fall back to the fusermount helper.
		DirectMount:          true,
		DirectMountStrict:    root,
		EnableLocks:          false,
		DisableXAttrs:        true,
		DisableReadDirPlus:   true,
		DisableSplice:        true,
		ExtraCapabilities:    gofuse.CAP_ASYNC_DIO,
		DisabledCapabilities: gofuse.CAP_WRITEBACK_CACHE,
	}
	useRing := false
	switch opts.IOUring {
	case IOUringOn:
		if !root {
			return nil, fmt.Errorf("wbcache/fuse: mount %s: FUSE over io_uring needs root", mp)
		}
		if err := EnableIOUring(); err != nil {
			return nil, fmt.Errorf("wbcache/fuse: mount %s: %w", mp, err)
		}
		useRing = true
	case IOUringAuto:
		// Debug traces requests in go-fuse, which only sees /dev/fuse.
		useRing = root && IOUringEnabled() && !opts.Debug
		if !useRing && root && !opts.Debug && IOUringBuiltIn() {
			logger.Info("wbcache/fuse: serving through /dev/fuse; this kernel can serve FUSE over io_uring, which is faster for small I/O: " +
				"mount with --fuse-uring on, or echo Y > " + uringEnablePath)
		}
	}
	if useRing {
		// The kernel holds every request until all queues have ring
		// entries once io_uring is agreed at INIT, so agree only if a
		// ring can be created at all.
		if r, err := newIoRing(1); err != nil {
			if opts.IOUring == IOUringOn {
				return nil, fmt.Errorf("wbcache/fuse: mount %s: FUSE over io_uring: %w", mp, err)
			}
			logger.Info("wbcache/fuse: io_uring unavailable, serving through /dev/fuse", "err", err)
			useRing = false
		} else {
			r.close()
			mo.ExtraCapabilities |= gofuse.CAP_OVER_IO_URING
		}
	}
	fs := newRawFS(b, size, opts, logger)
	srv, devFd, err := newServer(fs, mp, mo)
	if err != nil {
		// If mount(2) succeeded but the INIT handshake failed, go-fuse
		// leaves a dead mount behind; remove it (a no-op otherwise: the
		// mount point was checked to be alive above).
		if cerr := CleanupStale(mp); cerr != nil {
			logger.Warn("wbcache/fuse: removing the failed mount", "mountpoint", mp, "err", cerr)
		}
		return nil, fmt.Errorf("wbcache/fuse: mount %s: %w", mp, err)
	}
	s := &Server{srv: srv, mountpoint: mp, logger: logger, done: make(chan struct{})}
	ringReady, served := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(s.done)
		srv.Serve()
		close(served)
		<-ringReady
		if s.ring != nil {
			s.ring.Stop()
		}
	}()
	if useRing {
		err := s.startRing(fs, devFd, served)
		close(ringReady)
		if err != nil {
			if opts.IOUring == IOUringOn || errors.Is(err, errRingStuck) {
				_ = s.Unmount()
				s.Wait()
				return nil, fmt.Errorf("wbcache/fuse: mount %s: FUSE over io_uring: %w", mp, err)
			}
			logger.Warn("wbcache/fuse: FUSE over io_uring failed, serving through /dev/fuse", "err", err)
		}
	} else {
		close(ringReady)
	}
	// Without SelfAccess, no srv.WaitMount(): its poll hack opens a file on
	// the new mount from this process (see Options.SelfAccess). The mount
	// exists once NewServer returns; the kernel holds every request until
	// Serve has answered INIT.
	if opts.SelfAccess {
		if err := srv.WaitMount(); err != nil {
			_ = s.Unmount()
			s.Wait()
			return nil, fmt.Errorf("wbcache/fuse: mount %s: %w", mp, err)
		}
	}
	logger.Debug("wbcache/fuse: mounted", "mountpoint", mp, "size", size)
	return s, nil
}

// newServerMu keeps /dev/fuse descriptors opened by concurrent mounts apart.
var newServerMu sync.Mutex

// newServer mounts through go-fuse and also returns the /dev/fuse
// descriptor it opened (-1 if it cannot be told), which the io_uring
// transport submits its commands on.
func newServer(fs *rawFS, mp string, mo *gofuse.MountOptions) (*gofuse.Server, int, error) {
	newServerMu.Lock()
	defer newServerMu.Unlock()
	before := devFuseFds()
	srv, err := gofuse.NewServer(fs, mp, mo)
	if err != nil {
		return nil, -1, err
	}
	fd := -1
	for f := range devFuseFds() {
		if !before[f] {
			if fd >= 0 {
				return srv, -1, nil
			}
			fd = f
		}
	}
	return srv, fd, nil
}

// errRingStuck: the kernel agreed to io_uring at INIT but no ring entries
// can be registered, nor the agreement withdrawn (that takes a command on
// the /dev/fuse descriptor); the kernel would hold every request.
var errRingStuck = errors.New("the ring can neither be set up nor withdrawn, and the kernel holds requests until it is (mount with --fuse-uring off)")

// ringPayload is the payload buffer per ring entry; the kernel wants room
// for a MaxWrite request. (Tests shrink it to make registration fail.)
var ringPayload = maxWrite

// startRing waits for INIT and registers the io_uring entries. An error
// other than errRingStuck leaves the connection serving through /dev/fuse.
func (s *Server) startRing(fs *rawFS, devFd int, served <-chan struct{}) error {
	select {
	case <-fs.initDone:
	case <-served:
		return errors.New("the connection ended before INIT")
	case <-time.After(30 * time.Second):
		return fmt.Errorf("no INIT from the kernel within 30s: %w", errRingStuck)
	}
	if s.srv.KernelSettings().Flags64()&gofuse.CAP_OVER_IO_URING == 0 {
		return errors.New("the kernel did not offer it at INIT")
	}
	if devFd < 0 {
		return fmt.Errorf("cannot tell which /dev/fuse descriptor is this mount's: %w", errRingStuck)
	}
	r, err := startURing(fs, devFd, ringPayload, s.logger)
	if err != nil {
		return err
	}
	s.ring = r
	s.logger.Debug("wbcache/fuse: serving through FUSE over io_uring", "queues", r.queues)
	return nil
}

// IOUring reports whether requests are served through FUSE over io_uring.
func (s *Server) IOUring() bool { return s.ring != nil }

// RingRequests is how many requests were answered through io_uring.
func (s *Server) RingRequests() uint64 {
	if s.ring == nil {
		return 0
	}
	return s.ring.served.Load()
}

// Mountpoint returns the absolute mount point.
func (s *Server) Mountpoint() string { return s.mountpoint }

// Unmount unmounts the disk. If the mount is busy (open files, a loop
// device on the disk), it is detached lazily instead (umount -l): it leaves
// the namespace at once, and the kernel ends the connection when its last
// user goes away; Wait tells when. Unmount after the connection ended, or a
// second time, returns nil.
func (s *Server) Unmount() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.detached {
		return nil
	}
	select {
	case <-s.done:
		return nil
	default:
	}
	err := s.srv.Unmount()
	if err == nil {
		return nil
	}
	s.logger.Warn("wbcache/fuse: unmount failed, detaching lazily; the connection ends when the last user closes the disk",
		"mountpoint", s.mountpoint, "err", err)
	if lerr := lazyUnmount(s.mountpoint); lerr != nil {
		return fmt.Errorf("wbcache/fuse: unmount %s: %v; lazy unmount: %w", s.mountpoint, err, lerr)
	}
	s.detached = true
	return nil
}

// Wait returns when the kernel connection has ended: after Unmount, an
// unmount from outside (umount, fusermount -u), or an abort.
func (s *Server) Wait() { <-s.done }

// lazyUnmount detaches mp from the namespace even if it is busy.
func lazyUnmount(mp string) error {
	if os.Geteuid() == 0 {
		if err := unix.Unmount(mp, unix.MNT_DETACH); err != nil {
			return fmt.Errorf("umount2(%s, MNT_DETACH): %w", mp, err)
		}
		return nil
	}
	var lastErr error
	for _, bin := range []string{"fusermount3", "fusermount"} {
		path, err := exec.LookPath(bin)
		if err != nil {
			lastErr = err
			continue
		}
		out, err := exec.Command(path, "-u", "-z", mp).CombinedOutput()
		if err != nil {
			return fmt.Errorf("%s -u -z %s: %v: %s", bin, mp, err, strings.TrimSpace(string(out)))
		}
		return nil
	}
	return fmt.Errorf("no fusermount helper found: %w", lastErr)
}
