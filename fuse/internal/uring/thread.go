package uring

import (
	"fmt"
	"runtime"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

const (
	waitTimeout = 500 * time.Millisecond
	stopGrace   = 2 * time.Second

	// spin is how long a ring thread polls for the next request after
	// answering some, before it sleeps. Waking a sleeping thread costs
	// about 20µs per request here (an IPI and the Go runtime's return
	// from the system call), which is most of the latency at low queue
	// depth: 4 KiB random writes at QD1, 16,000-18,000 IOPS (p50
	// 45-52µs) without polling; 31,000-38,000 (p50 19-27µs) polling 10,
	// 20 or 30µs. At QD32 (scripts/ceiling-ab.sh) 10-30µs is as fast as
	// none or faster (113% of the ceiling without, 119-120% with), 100µs
	// slower (101%): the polling then takes CPU from the application.
	spin = 20 * time.Microsecond
)

// ringThread is one ring thread: its io_uring, and entriesPerThread
// entries of queue qid with their buffers.
type ringThread struct {
	s      *Server
	r      *ioRing
	qid    uint16
	ents   []entry
	hdrMem []byte // the entries' header buffers
	payMem []byte // the entries' payload buffers
	live   int    // entries the kernel may still hand requests to

	off offload // requests answered on goroutines
}

// runThread sets up, registers and serves one ring thread of queue qid,
// reporting on ready whether it could register its entries. It stays on
// its OS thread: with DEFER_TASKRUN, the kernel hands requests to the
// thread that submitted the commands.
func (s *Server) runThread(qid uint16, ready chan<- error) {
	defer s.wg.Done()
	// Never unlocked: the thread ends with the goroutine, and with it any
	// task work the kernel still had queued for it.
	runtime.LockOSThread()
	t, err := s.newThread(qid)
	if err != nil {
		ready <- err
		return
	}
	defer t.release()
	early, err := t.register()
	if err != nil {
		ready <- err
		return
	}
	if err := t.off.open(t.r, s.logger); err != nil {
		ready <- err
		return
	}
	// Requests still with goroutines finish before the buffers go.
	defer t.off.close()
	ready <- nil
	for i := range early {
		t.complete(&early[i])
	}
	t.serve()
}

// newThread creates the thread's io_uring and maps its entries' buffers.
func (s *Server) newThread(qid uint16) (*ringThread, error) {
	n := entriesPerThread(s.queues)
	r, err := newIoRing(uint32(n + 1)) // + the eventfd read
	if err != nil {
		return nil, err
	}
	hdrMem, err := unix.Mmap(-1, 0, n*hdrStride, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		r.close()
		return nil, fmt.Errorf("allocating ring headers: %w", err)
	}
	payMem, err := unix.Mmap(-1, 0, n*s.payload, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		r.close()
		unix.Munmap(hdrMem)
		return nil, fmt.Errorf("allocating ring buffers: %w", err)
	}
	t := &ringThread{s: s, r: r, qid: qid, ents: make([]entry, n), hdrMem: hdrMem, payMem: payMem}
	for i := range t.ents {
		t.ents[i].init(uint64(i), hdrMem[i*hdrStride:i*hdrStride+hdrSize], payMem[i*s.payload:(i+1)*s.payload])
	}
	return t, nil
}

// release closes the ring and unmaps the buffers, unless the kernel still
// knows their addresses: then they stay mapped rather than let it write
// into memory that may be reused.
func (t *ringThread) release() {
	t.r.close()
	if t.live > 0 {
		t.s.logger.Warn("wbcache/fuse: ring thread stopped with entries registered; keeping their buffers", "queue", t.qid, "entries", t.live)
		return
	}
	unix.Munmap(t.payMem)
	unix.Munmap(t.hdrMem)
}

// register hands every entry to the kernel. A REGISTER that fails
// completes at once; one that succeeds completes only when a request
// arrives: those early requests are returned, to be served.
func (t *ringThread) register() (early []ioCQE, err error) {
	for i := range t.ents {
		t.s.fillCmd(t.r.sqe(), cmdRegister, t.qid, 0, &t.ents[i].iov, uint64(i))
	}
	if err := t.r.enter(false, 0); err != nil {
		return nil, fmt.Errorf("registering ring entries: %w", err)
	}
	t.live = len(t.ents)
	t.r.reap(func(c *ioCQE) {
		if c.Res >= 0 {
			early = append(early, *c)
			return
		}
		// Entries that did register stay known to the kernel until the
		// connection ends: release keeps their buffers.
		t.live--
		if err == nil {
			err = fmt.Errorf("registering ring entries for queue %d: %w", t.qid, syscall.Errno(-c.Res))
		}
	})
	return early, err
}

// serve answers requests until the connection's teardown has completed
// every entry and the offloaded requests are committed, or until Stop's
// grace period runs out, or the ring fails.
func (t *ringThread) serve() {
	var stopAt time.Time
	for t.live > 0 || t.off.n > 0 {
		if t.s.stop.Load() {
			// The connection has ended: its teardown completes the
			// entries still registered. Wait for that a little.
			if stopAt.IsZero() {
				stopAt = time.Now()
			} else if time.Since(stopAt) > stopGrace {
				return
			}
		}
		if !t.turn() {
			return
		}
	}
}

// turn sends the answers queued, waits for completions (polling a little
// before sleeping) and handles them. It reports false if the ring failed.
func (t *ringThread) turn() bool {
	r := t.r
	if err := r.enter(false, 0); err != nil {
		t.s.logger.Error("wbcache/fuse: io_uring submit failed; ring thread stopping", "queue", t.qid, "err", err)
		return false
	}
	for deadline := time.Now().Add(spin); r.ready() == 0 && time.Now().Before(deadline); {
		r.poll()
	}
	if r.ready() == 0 {
		if err := r.enter(true, int64(waitTimeout)); err != nil {
			t.s.logger.Error("wbcache/fuse: io_uring wait failed; ring thread stopping", "queue", t.qid, "err", err)
			return false
		}
	}
	r.reap(t.completed)
	return true
}

// completed handles one completion reaped by turn.
func (t *ringThread) completed(c *ioCQE) {
	if c.UserData != wakeUserData && c.Res < 0 {
		// The connection is going away (ENOTCONN), or the command was
		// cancelled.
		t.live--
		return
	}
	t.complete(c)
}

// complete handles one completion: a request to serve, or the wakeup for
// offloaded requests that have finished.
func (t *ringThread) complete(c *ioCQE) {
	if c.UserData == wakeUserData {
		for _, i := range t.off.take() {
			t.commit(&t.ents[i])
		}
		return
	}
	e := &t.ents[c.UserData]
	h := e.load()
	if t.s.waits(h) {
		// A read miss or a write around the cache waits for the
		// backing device: answer it from a goroutine so that the
		// requests this thread is handed meanwhile are not held up
		// behind it, and the device sees the application's queue
		// depth.
		t.off.start(e.idx, func() { t.s.answer(e, e.header()) })
		return
	}
	t.s.answer(e, h)
	t.commit(e)
}

// commit queues the COMMIT_AND_FETCH that sends e's answer and asks for
// the next request.
func (t *ringThread) commit(e *entry) {
	// Every entry has at most one command queued: the ring has room.
	t.s.fillCmd(t.r.sqe(), cmdCommitFetch, t.qid, e.commitID, &e.iov, e.idx)
	t.s.served.Add(1)
}
