package uring

import (
	"fmt"
	"runtime"
	"syscall"
	"time"
	"unsafe"

	gofuse "github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// The /dev/fuse transport with batched system calls, for kernels without
// FUSE over io_uring (doc.go, "Reading /dev/fuse through io_uring").

const (
	ioringOpPollAdd  = 6
	ioringOpWrite    = 23
	sqeOffFlags      = 1
	sqeOffPollEvents = 28 // poll32_events, in the union with rw_flags
	iosqeIOLink      = 1 << 2
	iosqeCQESkip     = 1 << 6 // IOSQE_CQE_SKIP_SUCCESS: no completion unless it fails

	// Setup flags tried first: the kernel runs a thread's completions
	// only when that thread enters it (Linux 6.1+). Older kernels get a
	// ring without flags.
	devSetupFlags = ioringSetupSingleIssuer | ioringSetupDeferTaskrun

	// fuseDevIocClone is FUSE_DEV_IOC_CLONE, _IOR(229, 0, uint32_t): a
	// new /dev/fuse descriptor becomes another device of the connection.
	fuseDevIocClone = 0x8004e500

	// Requests that get no reply (enum fuse_opcode).
	opForget      = 2
	opInterrupt   = 36
	opNotifyReply = 41
	opBatchForget = 42
)

// What a completion's user data says, above the slot index.
const (
	devRead      = 1 << 32 // a slot's read
	devReply     = 2 << 32 // a reply with the slot's next poll and read after it
	devPoll      = 3 << 32 // a slot's poll, the read linked after it
	devReplyOnly = 4 << 32 // a reply alone: the slot is spare once it is sent
	devKinds     = 7 << 32
)

// Threads and slots. One thread per CPU; each keeps devWaitBudget /
// threads slots waiting for requests (at least devMinWait, at most
// devMaxWait), and half as many spare: a request answered on a goroutine
// holds its slot meanwhile, and a spare slot then takes its place in the
// wait (see request). Every slot has a buffer for the largest request,
// resident only as far as requests have touched it. On 2 CPUs, 4 KiB
// random writes at QD32 (scripts/ceiling-ab.sh, --fuse-uring off), 3
// rounds: 2 threads of 8 waiting slots 104% of the ceiling, 2 × 16 125%,
// 4 × 8 119%, 1 × 16 104%.
const (
	devWaitBudget = 64
	devMinWait    = 4
	devMaxWait    = 16
	devMaxThreads = 16
)

// devThreads is the number of /dev/fuse threads for ncpu CPUs, the slots
// each keeps waiting for requests, and the spare slots of each.
func devThreads(ncpu int) (threads, wait, spare int) {
	threads = min(max(ncpu, 1), devMaxThreads)
	wait = min(max(devWaitBudget/threads, devMinWait), devMaxWait)
	return threads, wait, wait / 2
}

// devSlot is one request buffer of a /dev/fuse thread. It holds one
// request from its read to its reply; a reply and the next read go to the
// kernel together.
type devSlot struct {
	buf     []byte
	n       int        // bytes of the request read
	off     int        // where the reply's payload starts in buf
	outLen  int        // the reply's payload length
	scratch [40]uint64 // the request's header and op struct
}

// devThread serves the requests read through its own clone of the
// connection's /dev/fuse descriptor. A slot is waiting (its read is
// queued, with a poll, maybe a reply, before it), busy (its request is
// being answered, here or on a goroutine), sending (its reply alone is
// queued) or spare (nothing queued).
type devThread struct {
	s       *Server
	r       *ioRing
	fd      int
	slots   []devSlot
	mem     []byte
	wait    int   // how many slots should be waiting
	waiting int   // slots whose read is queued
	sending int   // slots whose reply alone is queued
	spare   []int // slots with nothing queued
	ended   bool  // a read failed with the connection's end: queue no more
	skip    uint8 // iosqeCQESkip where the kernel has it (5.17+), else 0
	off     offload
}

// startDev runs the /dev/fuse threads and waits until each is ready.
func startDev(cfg Config) (*Server, error) {
	threads, wait, spare := devThreads(runtime.NumCPU())
	s := &Server{fs: cfg.FS, devFd: cfg.DevFd, queues: threads, logger: cfg.Logger, payload: cfg.Payload, mayWait: cfg.MayWait}
	readies := make([]chan error, threads)
	for i := range readies {
		readies[i] = make(chan error, 1)
		s.wg.Add(1)
		go s.runDevThread(wait, spare, readies[i])
	}
	var errs []error
	for _, r := range readies {
		if err := <-r; err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		// The threads that did start go on serving until the connection
		// ends; Stop ends them now.
		s.Stop()
		if len(errs) > 1 {
			return nil, fmt.Errorf("%w (and %d more /dev/fuse threads failed)", errs[0], len(errs)-1)
		}
		return nil, errs[0]
	}
	return s, nil
}

// runDevThread sets up and serves one /dev/fuse thread, reporting on
// ready whether it could start. It stays on its OS thread, the only one
// that submits to its ring (never unlocked: the thread ends with the
// goroutine, and with it any work the kernel still had queued for it).
func (s *Server) runDevThread(wait, spare int, ready chan<- error) {
	defer s.wg.Done()
	runtime.LockOSThread()
	t, err := s.newDevThread(wait, spare)
	if err != nil {
		ready <- err
		return
	}
	defer t.release()
	if err := t.off.open(t.r, s.logger); err != nil {
		ready <- err
		return
	}
	// Requests still with goroutines finish before the buffers go.
	defer t.off.close()
	s.running.Add(1)
	defer s.running.Add(-1)
	ready <- nil
	t.serve()
}

// newDevThread clones the connection's descriptor, creates the ring and
// maps the slots' buffers.
func (s *Server) newDevThread(wait, spare int) (*devThread, error) {
	fd, err := cloneDev(s.devFd)
	if err != nil {
		return nil, err
	}
	slots := wait + spare
	// Per slot at most three commands are queued (reply, poll, read),
	// and one more is the eventfd's read.
	r, err := newDevRing(uint32(3*slots + 1))
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	size := s.payload + 4096 // MaxWrite and the request's header and op struct
	mem, err := unix.Mmap(-1, 0, slots*size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		r.close()
		unix.Close(fd)
		return nil, fmt.Errorf("allocating /dev/fuse request buffers: %w", err)
	}
	t := &devThread{s: s, r: r, fd: fd, mem: mem, slots: make([]devSlot, slots), wait: wait}
	if r.feat&ioringFeatCQESkip != 0 {
		// A reply that was sent and a poll that fired need no
		// completion: the read after them has one. Without them a
		// request at QD1 took two io_uring_enter calls, the second to
		// wait after the reply's completion woke the first.
		t.skip = iosqeCQESkip
	}
	for i := range t.slots {
		t.slots[i].buf = mem[i*size : (i+1)*size]
		t.spare = append(t.spare, slots-1-i)
	}
	return t, nil
}

// cloneDev opens a new /dev/fuse descriptor, non-blocking, attached to the
// connection of devFd.
func cloneDev(devFd int) (int, error) {
	fd, err := unix.Open("/dev/fuse", unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return -1, fmt.Errorf("opening /dev/fuse: %w", err)
	}
	src := uint32(devFd)
	if _, _, errno := syscall.Syscall(unix.SYS_IOCTL, uintptr(fd), fuseDevIocClone, uintptr(unsafe.Pointer(&src))); errno != 0 {
		unix.Close(fd)
		return -1, fmt.Errorf("cloning the /dev/fuse descriptor (FUSE_DEV_IOC_CLONE): %w", errno)
	}
	return fd, nil
}

// newDevRing creates a ring of 64-byte SQEs, with devSetupFlags where the
// kernel has them.
func newDevRing(entries uint32) (*ioRing, error) {
	r, err := newIoRingFlags(entries, devSetupFlags)
	if err != nil {
		r, err = newIoRingFlags(entries, 0)
	}
	return r, err
}

// release closes the ring and the descriptor, and unmaps the buffers
// unless commands the kernel may still run on them are queued (after
// Stop's grace period, or a ring failure): then they stay mapped rather
// than let it write into memory that may be reused.
func (t *devThread) release() {
	t.r.close()
	unix.Close(t.fd)
	if t.waiting > 0 || t.sending > 0 {
		t.s.logger.Warn("wbcache/fuse: /dev/fuse thread stopped with reads or replies queued; keeping their buffers",
			"waiting", t.waiting, "sending", t.sending)
		return
	}
	unix.Munmap(t.mem)
}

// serve answers requests until every slot's read has ended with the
// connection and the offloaded requests are answered, or until Stop's
// grace period runs out, or the ring fails.
func (t *devThread) serve() {
	t.refill()
	var stopAt time.Time
	for t.waiting > 0 || t.sending > 0 || t.off.n > 0 {
		if t.s.stop.Load() {
			if stopAt.IsZero() {
				stopAt = time.Now()
			} else if time.Since(stopAt) > stopGrace {
				t.s.logger.Warn("wbcache/fuse: /dev/fuse thread stopping with requests unanswered", "offloaded", t.off.n)
				return
			}
		}
		if err := t.r.enter(true, int64(waitTimeout)); err != nil {
			t.s.logger.Error("wbcache/fuse: io_uring failed; /dev/fuse thread stopping", "err", err)
			return
		}
		t.r.reap(t.completed)
	}
}

// refill makes spare slots wait until t.wait do.
func (t *devThread) refill() {
	for !t.ended && t.waiting < t.wait && len(t.spare) > 0 {
		i := t.spare[len(t.spare)-1]
		t.spare = t.spare[:len(t.spare)-1]
		t.queueRead(i)
		t.waiting++
	}
}

// queueRead queues, for slot i, a poll of the descriptor for a request
// and, linked to it, the read of the request. The poll waits in the
// connection's queue as an exclusive waiter: a request that comes wakes
// one waiter, not every slot of every thread. A poll that finds a request
// already queued completes at once.
func (t *devThread) queueRead(i int) {
	sl := &t.slots[i]
	sqe := t.r.sqe()
	putU8(sqe, sqeOffOpcode, ioringOpPollAdd)
	putU8(sqe, sqeOffFlags, iosqeIOLink|t.skip)
	putU32(sqe, sqeOffFd, uint32(t.fd))
	putU32(sqe, sqeOffPollEvents, unix.EPOLLIN|unix.EPOLLEXCLUSIVE)
	putU64(sqe, sqeOffUserData, devPoll|uint64(i))
	sqe = t.r.sqe()
	putU8(sqe, sqeOffOpcode, ioringOpRead)
	putU32(sqe, sqeOffFd, uint32(t.fd))
	putU64(sqe, sqeOffAddr, uint64(uintptr(unsafe.Pointer(&sl.buf[0]))))
	putU32(sqe, sqeOffLen, uint32(len(sl.buf)))
	putU64(sqe, sqeOffUserData, devRead|uint64(i))
}

// queueReply queues slot i's reply and, linked after it, its next poll
// and read if fewer than t.wait slots wait; else the reply alone, after
// which the slot is spare.
func (t *devThread) queueReply(i int) {
	sl := &t.slots[i]
	again := !t.ended && t.waiting < t.wait
	sqe := t.r.sqe()
	putU8(sqe, sqeOffOpcode, ioringOpWrite)
	putU32(sqe, sqeOffFd, uint32(t.fd))
	putU64(sqe, sqeOffAddr, uint64(uintptr(unsafe.Pointer(&sl.buf[sl.off-outHeaderSize]))))
	putU32(sqe, sqeOffLen, uint32(outHeaderSize+sl.outLen))
	t.s.served.Add(1)
	if !again {
		putU64(sqe, sqeOffUserData, devReplyOnly|uint64(i))
		t.sending++
		return
	}
	putU8(sqe, sqeOffFlags, iosqeIOLink|t.skip)
	putU64(sqe, sqeOffUserData, devReply|uint64(i))
	t.queueRead(i)
	t.waiting++
}

// completed handles one completion reaped by serve.
func (t *devThread) completed(c *ioCQE) {
	if c.UserData == wakeUserData {
		for _, i := range t.off.take() {
			t.queueReply(int(i))
		}
		return
	}
	i := int(c.UserData &^ devKinds)
	switch c.UserData & devKinds {
	case devPoll:
		// Its read follows (or is cancelled with it).
		return
	case devReply, devReplyOnly:
		t.replied(c.Res)
		if c.UserData&devKinds == devReplyOnly {
			t.sending--
			t.spare = append(t.spare, i)
			t.refill()
		}
		return
	}
	t.waiting--
	switch {
	case c.Res > 0:
		t.request(i, int(c.Res))
	case !t.ended && (c.Res == -int32(syscall.EAGAIN) || c.Res == -int32(syscall.EINTR) || c.Res == -int32(syscall.ECANCELED)):
		// Another reader took the request the poll saw, or the reply
		// before the read failed (which cancels the read).
		t.queueRead(i)
		t.waiting++
	default:
		// ENODEV: the connection has ended (ECONNABORTED: it was
		// aborted). The other slots' reads end the same way.
		if !t.ended && c.Res != -int32(syscall.ENODEV) && c.Res != -int32(syscall.ECONNABORTED) && !t.s.stop.Load() {
			t.s.logger.Error("wbcache/fuse: reading /dev/fuse; this thread stops serving", "err", syscall.Errno(-c.Res))
		}
		t.ended = true
		t.spare = append(t.spare, i)
	}
}

// replied logs a reply the kernel refused. ENOENT: the request was
// interrupted or the connection ended meanwhile, and the kernel no longer
// waits for this reply.
func (t *devThread) replied(res int32) {
	if res < 0 && res != -int32(syscall.ENOENT) && res != -int32(syscall.ENODEV) && res != -int32(syscall.ECONNABORTED) {
		t.s.logger.Error("wbcache/fuse: sending a reply through /dev/fuse", "err", syscall.Errno(-res))
	}
}

// request serves the n-byte request read into slot i.
func (t *devThread) request(i, n int) {
	sl := &t.slots[i]
	sl.n = n
	h := sl.load()
	switch h.Opcode {
	case opForget, opBatchForget, opInterrupt, opNotifyReply:
		// Nothing to forget (the tree is fixed), no reply expected. An
		// interrupted request is answered when it finishes.
		t.spare = append(t.spare, i)
		t.refill()
		return
	}
	if t.s.waits(h) {
		t.off.start(uint64(i), func() { t.s.answerDev(sl, sl.header()) })
		// A spare slot takes this one's place in the wait. Its poll also
		// sees requests that came while this slot's poll was woken but
		// not yet run: the kernel's wakeups stop at such a poll (they
		// pass no event mask, so io_uring cannot remove it from the
		// wait queue), and nobody else would look for them until the
		// next request or this one's answer.
		t.refill()
		return
	}
	t.s.answerDev(sl, h)
	t.queueReply(i)
}

// load copies the request's header and op struct into sl.scratch, where
// they stay while the reply is written over the buffer, and chooses where
// the reply's payload goes: over the write's data (which the write has
// consumed by then) or the name of a LOOKUP (copied before the reply is
// written), else just after the reply's header at the buffer's start. The
// reply's header goes just before its payload, so that one write sends
// both.
func (sl *devSlot) load() *gofuse.InHeader {
	sc := unsafe.Slice((*byte)(unsafe.Pointer(&sl.scratch[0])), len(sl.scratch)*8)
	clear(sc)
	copy(sc, sl.buf[:min(sl.n, len(sc))])
	h := sl.header()
	sl.off = outHeaderSize
	switch h.Opcode {
	case opWrite:
		// The data follows the op struct (go-fuse's WriteIn starts with
		// the header). A request cut short keeps sl.n-sl.off bytes of it,
		// which the handler sees as a short write.
		sl.off = min(writeInSize, sl.n)
	case opLookup:
		sl.off = inHeaderSize
	}
	return h
}

var writeInSize = int(unsafe.Sizeof(gofuse.WriteIn{}))

// header is the request loaded last.
func (sl *devSlot) header() *gofuse.InHeader {
	return (*gofuse.InHeader)(unsafe.Pointer(&sl.scratch[0]))
}

// answerDev runs the request in sl and writes the reply's header before
// its payload.
func (s *Server) answerDev(sl *devSlot, h *gofuse.InHeader) {
	unique := h.Unique
	st, outLen := s.dispatchSafe(h, sl.buf[sl.off:], sl.n-sl.off)
	if st != gofuse.OK {
		outLen = 0
	}
	sl.outLen = outLen
	*(*gofuse.OutHeader)(unsafe.Pointer(&sl.buf[sl.off-outHeaderSize])) = gofuse.OutHeader{
		Length: uint32(outHeaderSize + outLen),
		Status: -int32(st),
		Unique: unique,
	}
}

// probeDev checks that this process can serve /dev/fuse through io_uring:
// a ring can be created and waited on with a timeout (Linux 5.11+), and
// polled with EPOLLEXCLUSIVE, which it tries on an eventfd. (Kernels
// before 5.9 would ignore the flag, but they fail the timed wait.)
func probeDev() error {
	// SINGLE_ISSUER: the thread that creates the ring submits to it.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	r, err := newDevRing(4)
	if err != nil {
		return err
	}
	defer r.close()
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		return fmt.Errorf("eventfd: %w", err)
	}
	defer unix.Close(fd)
	sqe := r.sqe()
	putU8(sqe, sqeOffOpcode, ioringOpPollAdd)
	putU32(sqe, sqeOffFd, uint32(fd))
	putU32(sqe, sqeOffPollEvents, unix.EPOLLIN|unix.EPOLLEXCLUSIVE)
	putU64(sqe, sqeOffUserData, 1)
	if err := r.enter(true, int64(time.Millisecond)); err != nil {
		return err
	}
	if r.ready() != 0 {
		var res int32
		r.reap(func(c *ioCQE) { res = c.Res })
		return fmt.Errorf("io_uring poll of an idle eventfd completed at once (%d): exclusive polls unsupported", res)
	}
	var one [8]byte
	one[0] = 1
	if _, err := unix.Write(fd, one[:]); err != nil {
		return fmt.Errorf("eventfd: %w", err)
	}
	if err := r.enter(true, int64(time.Second)); err != nil {
		return err
	}
	var res int32 = -1
	if r.reap(func(c *ioCQE) { res = c.Res }) == 0 {
		return fmt.Errorf("io_uring poll of an eventfd did not complete")
	}
	if res < 0 || res&unix.EPOLLIN == 0 {
		return fmt.Errorf("io_uring exclusive poll of an eventfd: %d", res)
	}
	return nil
}
