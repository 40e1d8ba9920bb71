package fuse

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	gofuse "github.com/hanwen/go-fuse/v2/fuse"
	"github.com/wbcache/wbcache/fuse/internal/uring"
)

// The request transport: FUSE over io_uring, or /dev/fuse read through
// io_uring, or /dev/fuse read by go-fuse's readers (internal/uring serves
// the first two), chosen before the mount and started after INIT.

const uringEnablePath = "/sys/module/fuse/parameters/enable_uring"

// ringPayload is the payload buffer per ring entry; the kernel wants room
// for a MaxWrite request. (Tests shrink it to make registration fail.)
var ringPayload = maxWrite

// IOUringBuiltIn reports whether the kernel has FUSE over io_uring at all
// (on or off).
func IOUringBuiltIn() bool {
	_, err := os.Stat(uringEnablePath)
	return err == nil
}

// IOUringEnabled reports whether the kernel offers FUSE over io_uring now.
func IOUringEnabled() bool {
	b, err := os.ReadFile(uringEnablePath)
	return err == nil && strings.TrimSpace(string(b)) == "Y"
}

// EnableIOUring turns on the fuse module's enable_uring parameter (root
// only). It is a system-wide switch that lets FUSE daemons ask for the
// io_uring transport; daemons that do not ask are not affected.
func EnableIOUring() error {
	if IOUringEnabled() {
		return nil
	}
	if err := os.WriteFile(uringEnablePath, []byte("Y"), 0); err != nil {
		return fmt.Errorf("enabling FUSE over io_uring (%s): %w", uringEnablePath, err)
	}
	return nil
}

// chooseRing decides whether to ask the kernel for FUSE over io_uring at
// INIT. Once it has agreed, the kernel holds every request until all
// queues have ring entries, so it is asked only if a ring can be created
// at all. An error (wrapping ErrRingUnavailable) comes only with
// IOUringOn.
func chooseRing(opts Options, root bool) (bool, error) {
	switch opts.IOUring {
	case IOUringOff:
		return false, nil
	case IOUringOn:
		if !root {
			return false, fmt.Errorf("%w: it needs root", ErrRingUnavailable)
		}
		if err := EnableIOUring(); err != nil {
			return false, fmt.Errorf("%w: %w", ErrRingUnavailable, err)
		}
	default:
		// Debug traces requests in go-fuse, which only sees /dev/fuse.
		if !root || opts.Debug || !IOUringEnabled() {
			if root && !opts.Debug && IOUringBuiltIn() {
				opts.Logger.Info("wbcache/fuse: serving through /dev/fuse; this kernel can serve FUSE over io_uring, " +
					"which is faster for small I/O, but the fuse module's parameter " + uringEnablePath + " is off")
			}
			return false, nil
		}
	}
	if err := uring.Probe(); err != nil {
		if opts.IOUring == IOUringOn {
			return false, fmt.Errorf("%w: %w", ErrRingUnavailable, err)
		}
		opts.Logger.Info("wbcache/fuse: io_uring unavailable, serving through /dev/fuse", "err", err)
		return false, nil
	}
	return true, nil
}

// startRing waits for INIT and registers the io_uring entries. An error
// that does not wrap ErrRingStuck leaves the connection serving through
// /dev/fuse.
func (s *Server) startRing(fs *rawFS, devFd int, served <-chan struct{}) error {
	if err := waitInit(fs, served); err != nil {
		if errors.Is(err, errNoInit) {
			return fmt.Errorf("%w: %w", err, ErrRingStuck)
		}
		return err
	}
	if s.srv.KernelSettings().Flags64()&gofuse.CAP_OVER_IO_URING == 0 {
		return errors.New("the kernel did not offer it at INIT")
	}
	if devFd < 0 {
		return fmt.Errorf("cannot tell which /dev/fuse descriptor is this mount's: %w", ErrRingStuck)
	}
	r, err := uring.Start(s.uringConfig(fs, devFd, ringPayload))
	if err != nil {
		return err
	}
	s.ring = r
	s.logger.Debug("wbcache/fuse: serving through FUSE over io_uring", "queues", r.Queues())
	return nil
}

// chooseDev decides whether /dev/fuse requests are read and answered
// through io_uring: unless UnbatchedDev or Debug (go-fuse traces only the
// requests its readers serve) says otherwise, wherever this process can.
func chooseDev(opts Options) bool {
	if opts.UnbatchedDev || opts.Debug {
		return false
	}
	if err := uring.ProbeDev(); err != nil {
		opts.Logger.Info("wbcache/fuse: io_uring unavailable, reading /dev/fuse one request per system call", "err", err)
		return false
	}
	return true
}

// startDev waits for INIT and starts the /dev/fuse threads. Its errors
// wrap ErrDevBatch: go-fuse, left alone with one reader, would serve one
// request at a time.
func (s *Server) startDev(fs *rawFS, devFd int, served <-chan struct{}) error {
	if err := waitInit(fs, served); err != nil {
		return fmt.Errorf("%w: %w", ErrDevBatch, err)
	}
	if devFd < 0 {
		return fmt.Errorf("%w: cannot tell which /dev/fuse descriptor is this mount's", ErrDevBatch)
	}
	// The threads open /dev/fuse for their clones: keep newServer of a
	// concurrent Mount from taking one for its own descriptor.
	newServerMu.Lock()
	d, err := uring.StartDev(s.uringConfig(fs, devFd, maxWrite))
	newServerMu.Unlock()
	if err != nil {
		return fmt.Errorf("%w: %w", ErrDevBatch, err)
	}
	s.dev = d
	s.logger.Debug("wbcache/fuse: serving /dev/fuse through io_uring", "threads", d.Queues())
	return nil
}

// errNoInit: the kernel sent no INIT within initTimeout.
var errNoInit = errors.New("no INIT from the kernel within 30s")

const initTimeout = 30 * time.Second

// waitInit waits until go-fuse has answered INIT, the connection ends, or
// initTimeout passes: a transport takes requests off go-fuse's readers
// only once the connection is initialised.
func waitInit(fs *rawFS, served <-chan struct{}) error {
	select {
	case <-fs.initDone:
		return nil
	case <-served:
		return errors.New("the connection ended before INIT")
	case <-time.After(initTimeout):
		return errNoInit
	}
}

// uringConfig is what internal/uring serves for fs on descriptor devFd,
// with payload-byte request buffers.
func (s *Server) uringConfig(fs *rawFS, devFd, payload int) uring.Config {
	return uring.Config{FS: fs, DevFd: devFd, Payload: payload, Logger: s.logger, MayWait: fs.ringHint()}
}

// ringHint is the ring's MayWait: the disk's reads and writes that the
// Backend, if it is a Waiter, says may wait. nil without a Waiter.
func (r *rawFS) ringHint() func(ino uint64, write bool, off, n int64) bool {
	w, ok := r.b.(Waiter)
	if !ok {
		return nil
	}
	return func(ino uint64, write bool, off, n int64) bool {
		return ino == diskIno && w.MayWait(write, off, n)
	}
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

// devFuseFds lists this process's open /dev/fuse descriptors.
func devFuseFds() map[int]bool {
	out := map[int]bool{}
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return out
	}
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if l, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && l == "/dev/fuse" {
			out[fd] = true
		}
	}
	return out
}
