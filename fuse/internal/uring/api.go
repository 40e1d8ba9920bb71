package uring

import (
	"log/slog"

	gofuse "github.com/hanwen/go-fuse/v2/fuse"
)

// Config is what a ring serves, and on which connection.
type Config struct {
	// FS answers the requests. It is called from the ring threads, and
	// from goroutines for requests MayWait reports.
	FS gofuse.RawFileSystem
	// DevFd is the connection's /dev/fuse descriptor, on which the ring
	// commands are submitted.
	DevFd int
	// Payload is the payload buffer size per ring entry: the kernel wants
	// room for a MaxWrite request.
	Payload int
	// Logger receives errors and warnings.
	Logger *slog.Logger
	// MayWait, if set, reports reads and writes (of inode ino, at off, n
	// bytes) that may wait for a slow device: they are answered from
	// their own goroutines, so that the ring thread goes on serving
	// others and the slow device sees the application's queue depth. It
	// must not block. A wrong answer costs speed, never correctness.
	MayWait func(ino uint64, write bool, off, n int64) bool
}

// Start registers ring entries for every queue of the connection (which
// must have agreed to io_uring at INIT) and serves them until Stop. If it
// fails, it has withdrawn the connection from io_uring first, so the
// kernel serves it through /dev/fuse.
func Start(cfg Config) (*Server, error) { return start(cfg) }

// StartDev serves the connection's requests through /dev/fuse, read and
// answered through io_uring by threads of its own (one per CPU), each on a
// clone of Config.DevFd. The connection must be initialised and must not
// use FUSE over io_uring. go-fuse's readers may keep reading DevFd: the
// requests they win are served by go-fuse as before. If StartDev fails,
// the threads that did start have stopped.
func StartDev(cfg Config) (*Server, error) { return startDev(cfg) }

// ProbeDev reports whether this process can serve /dev/fuse through
// io_uring (StartDev): nil, or why not.
func ProbeDev() error { return probeDev() }

// Stop asks the ring threads to exit and waits for them. Call it after
// the connection has ended.
func (s *Server) Stop() {
	s.stop.Store(true)
	s.wg.Wait()
}

// Running is how many /dev/fuse threads still serve: fewer than Queues
// once the connection has ended, or where a thread's ring failed.
func (s *Server) Running() int { return int(s.running.Load()) }

// Served is how many requests were answered through the ring.
func (s *Server) Served() uint64 { return s.served.Load() }

// Queues is the number of ring queues (the kernel's possible CPUs), or of
// /dev/fuse threads.
func (s *Server) Queues() int { return s.queues }

// Probe creates and closes an io_uring of the kind the ring threads use:
// an error means this process cannot use the transport (no io_uring, or
// kernel.io_uring_disabled).
func Probe() error {
	r, err := newIoRing(1)
	if err != nil {
		return err
	}
	r.close()
	return nil
}
