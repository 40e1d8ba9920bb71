package uring

import (
	"fmt"
	"log/slog"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// wakeUserData marks the completion of the read on a thread's eventfd:
// requests handed to goroutines have finished.
const wakeUserData = ^uint64(0)

// offload answers, on goroutines of their own, the requests of one thread
// that may wait for a slow device, so that the thread goes on serving the
// others and the device sees the application's queue depth. A goroutine
// that has answered wakes the thread through an eventfd whose read is
// queued on the thread's ring; the thread then sends the answers itself,
// since only it may submit to its ring.
type offload struct {
	r      *ioRing
	fd     int     // the eventfd
	buf    [8]byte // its read's buffer
	n      int     // requests with goroutines whose answers are not sent yet
	wg     sync.WaitGroup
	mu     sync.Mutex
	done   []uint64 // answered, not taken yet (the owner's request indexes)
	logger *slog.Logger
}

// open creates the eventfd and queues its first read on r.
func (o *offload) open(r *ioRing, logger *slog.Logger) error {
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		return fmt.Errorf("eventfd: %w", err)
	}
	o.r, o.fd, o.logger = r, fd, logger
	o.arm()
	return nil
}

// close waits for the goroutines still answering, then closes the eventfd
// (open succeeded).
func (o *offload) close() {
	o.wg.Wait()
	unix.Close(o.fd)
}

// arm queues a read of the eventfd: its completion wakes the thread.
func (o *offload) arm() {
	sqe := o.r.sqe()
	putU8(sqe, sqeOffOpcode, ioringOpRead)
	putU32(sqe, sqeOffFd, uint32(o.fd))
	putU64(sqe, sqeOffAddr, uint64(uintptr(unsafe.Pointer(&o.buf[0]))))
	putU32(sqe, sqeOffLen, uint32(len(o.buf)))
	putU64(sqe, sqeOffUserData, wakeUserData)
}

// start runs answer (for the request the owner calls idx) on a goroutine
// and wakes the thread when it has returned.
func (o *offload) start(idx uint64, answer func()) {
	o.n++
	o.wg.Add(1)
	go func() {
		defer o.wg.Done()
		answer()
		o.mu.Lock()
		o.done = append(o.done, idx)
		o.mu.Unlock()
		var one [8]byte
		one[0] = 1
		if _, err := unix.Write(o.fd, one[:]); err != nil {
			o.logger.Error("wbcache/fuse: waking a serving thread", "err", err)
		}
	}()
}

// take, called by the thread when the eventfd read completes, returns the
// requests answered since the last call (their answers are the thread's
// to send) and queues the next read.
func (o *offload) take() []uint64 {
	o.mu.Lock()
	done := o.done
	o.done = nil
	o.mu.Unlock()
	o.n -= len(done)
	o.arm()
	return done
}
