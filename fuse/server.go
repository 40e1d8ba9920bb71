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

	gofuse "github.com/hanwen/go-fuse/v2/fuse"
	"github.com/wbcache/wbcache/fuse/internal/uring"
	"golang.org/x/sys/unix"
)

// Server is a mounted wbcache disk.
type Server struct {
	srv        *gofuse.Server
	mountpoint string
	logger     *slog.Logger
	done       chan struct{} // closed when the serve loop has ended
	ring       *uring.Server // nil when requests come through /dev/fuse
	dev        *uring.Server // /dev/fuse read through io_uring; nil otherwise

	mu       sync.Mutex // serialises Unmount
	detached bool       // lazily unmounted: nothing left to unmount
}

// Mount serves b as mountpoint/disk and returns once the kernel has
// initialised the connection. The mountpoint must be an existing directory.
// If a previous daemon died there, Mount refuses with an error wrapping
// ErrDeadMount: call CleanupStale first. Errors about FUSE over io_uring
// wrap ErrRingUnavailable or ErrRingStuck.
func Mount(mountpoint string, b Backend, opts Options) (*Server, error) {
	mp, size, err := checkMount(mountpoint, b)
	if err != nil {
		return nil, err
	}
	opts = opts.withDefaults()
	root := os.Geteuid() == 0
	mo := goFuseOptions(opts, root)
	useRing, err := chooseRing(opts, root)
	if err != nil {
		return nil, fmt.Errorf("wbcache/fuse: mount %s: %w", mp, err)
	}
	useDev := false
	if useRing {
		mo.ExtraCapabilities |= gofuse.CAP_OVER_IO_URING
	} else if useDev = chooseDev(opts); useDev {
		// go-fuse keeps one reader: it answers INIT, and after that only
		// the requests its reader wins from the io_uring threads' polls.
		mo.MaxInflightRequestBytes = 1
	}
	return serve(mp, newRawFS(b, size, opts, opts.Logger), mo, transport{ring: useRing, dev: useDev}, opts)
}

// transport is how serve moves requests off go-fuse's readers once the
// connection is initialised: to FUSE over io_uring, or to /dev/fuse
// threads reading through io_uring, or neither.
type transport struct{ ring, dev bool }

// checkMount checks the backend and the mount point, and returns the
// absolute mount point and the disk size.
func checkMount(mountpoint string, b Backend) (mp string, size int64, err error) {
	if b == nil {
		return "", 0, errors.New("wbcache/fuse: mount: nil backend")
	}
	size = b.Size()
	if size < 0 {
		return "", 0, fmt.Errorf("wbcache/fuse: mount: backend size %d is negative", size)
	}
	mp, err = filepath.Abs(mountpoint)
	if err != nil {
		return "", 0, fmt.Errorf("wbcache/fuse: mount %s: %w", mountpoint, err)
	}
	if err := deadErr(mp); err != nil {
		return "", 0, fmt.Errorf("wbcache/fuse: mount %s: %w (%v; did its daemon die?)", mp, ErrDeadMount, err)
	}
	return mp, size, nil
}

// serve mounts fs, runs go-fuse's serve loop and, with useRing, moves the
// requests to FUSE over io_uring; it returns once the connection is
// initialised.
func serve(mp string, fs *rawFS, mo *gofuse.MountOptions, tr transport, opts Options) (*Server, error) {
	srv, devFd, err := newServer(fs, mp, mo)
	if err != nil {
		// If mount(2) succeeded but the INIT handshake failed, go-fuse
		// leaves a dead mount behind; remove it (a no-op otherwise: the
		// mount point was checked to be alive).
		if cerr := CleanupStale(mp); cerr != nil {
			opts.Logger.Warn("wbcache/fuse: removing the failed mount", "mountpoint", mp, "err", cerr)
		}
		return nil, fmt.Errorf("wbcache/fuse: mount %s: %w", mp, err)
	}
	s := &Server{srv: srv, mountpoint: mp, logger: opts.Logger, done: make(chan struct{})}
	ringReady, served := make(chan struct{}), make(chan struct{})
	go s.serveLoop(ringReady, served)
	switch {
	case tr.ring:
		err = s.ringOrFallBack(fs, devFd, served, opts)
	case tr.dev:
		err = s.startDev(fs, devFd, served)
	}
	close(ringReady)
	// Without SelfAccess, no srv.WaitMount(): its poll hack opens a file on
	// the new mount from this process (see Options.SelfAccess). The mount
	// exists once NewServer returns; the kernel holds every request until
	// Serve has answered INIT.
	if err == nil && opts.SelfAccess {
		err = srv.WaitMount()
	}
	if err != nil {
		_ = s.Unmount()
		s.Wait()
		return nil, fmt.Errorf("wbcache/fuse: mount %s: %w", mp, err)
	}
	opts.Logger.Debug("wbcache/fuse: mounted", "mountpoint", mp, "size", fs.size)
	return s, nil
}

// serveLoop runs go-fuse's serve loop (every request through /dev/fuse;
// with io_uring, INIT, FORGET and INTERRUPT; with the /dev/fuse threads,
// INIT and the requests its reader wins) until the connection ends, then
// stops the ring or the threads once their setup is over (ringReady).
func (s *Server) serveLoop(ringReady, served chan struct{}) {
	defer close(s.done)
	s.srv.Serve()
	close(served)
	<-ringReady
	if s.ring != nil {
		s.ring.Stop()
	}
	if s.dev != nil {
		s.dev.Stop()
	}
}

// ringOrFallBack starts the ring. If that fails, the connection keeps
// serving through /dev/fuse (read through io_uring where chooseDev allows,
// beside go-fuse's readers, which were not limited to one), except with
// IOUringOn or when the ring is stuck: then the error is returned and the
// mount must go.
func (s *Server) ringOrFallBack(fs *rawFS, devFd int, served <-chan struct{}, opts Options) error {
	err := s.startRing(fs, devFd, served)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ErrRingStuck):
		return err
	case opts.IOUring == IOUringOn:
		return fmt.Errorf("%w: %w", ErrRingUnavailable, err)
	}
	s.logger.Warn("wbcache/fuse: FUSE over io_uring failed, serving through /dev/fuse", "err", err)
	if chooseDev(opts) {
		if derr := s.startDev(fs, devFd, served); derr != nil {
			s.logger.Warn("wbcache/fuse: go-fuse's readers serve /dev/fuse alone", "err", derr)
		}
	}
	return nil
}

// IOUring reports whether requests are served through FUSE over io_uring.
func (s *Server) IOUring() bool { return s.ring != nil }

// DevBatched reports whether /dev/fuse requests are read and answered
// through io_uring (UnbatchedDev unset, and the kernel allows it): false
// once every /dev/fuse thread has stopped.
func (s *Server) DevBatched() bool { return s.dev != nil && s.dev.Running() > 0 }

// RingRequests is how many requests were answered through io_uring: FUSE
// over io_uring, or /dev/fuse read through io_uring.
func (s *Server) RingRequests() uint64 {
	switch {
	case s.ring != nil:
		return s.ring.Served()
	case s.dev != nil:
		return s.dev.Served()
	}
	return 0
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
