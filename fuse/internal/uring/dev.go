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
	devRead  = 1 << 32
	devReply = 2 << 32
	devPoll  = 3 << 32
	devKinds = 3 << 32
)

// Threads and slots. One thread per CPU; each keeps devSlotBudget /
// threads requests in flight (at least devMinSlots, at most
// devMaxSlots). Every slot has a buffer for the largest request, resident
// only as far as requests have touched it. On 2 CPUs, 4 KiB random writes
// at QD32 (scripts/ceiling-ab.sh, --fuse-uring off), 3 rounds: 2 threads
// of 8 slots 104% of the ceiling, 2 × 16 125%, 4 × 8 119%, 1 × 16 104%.
const (
	devSlotBudget = 64
	devMinSlots   = 4
	devMaxSlots   = 16
	devMaxThreads = 16
)

// devThreads is the number of /dev/fuse threads for ncpu CPUs, and the
// slots of each.
func devThreads(ncpu int) (threads, slots int) {
	threads = min(max(ncpu, 1), devMaxThreads)
	return threads, min(max(devSlotBudget/threads, devMinSlots), devMaxSlots)
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
// connection's /dev/fuse descriptor.
type devThread struct {
	s     *Server
	r     *ioRing
	fd    int
	slots []devSlot
	mem   []byte
	live  int // slots whose reads have not ended with the connection
	off   offload
}

// startDev runs the /dev/fuse threads and waits until each is ready.
func startDev(cfg Config) (*Server, error) {
	threads, slots := devThreads(runtime.NumCPU())
	s := &Server{fs: cfg.FS, devFd: cfg.DevFd, queues: threads, logger: cfg.Logger, payload: cfg.Payload, mayWait: cfg.MayWait}
	readies := make([]chan error, threads)
	for i := range readies {
		readies[i] = make(chan error, 1)
		s.wg.Add(1)
		go s.runDevThread(slots, readies[i])
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
// that submits to its ring.
func (s *Server) runDevThread(slots int, ready chan<- error) {
	defer s.wg.Done()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	t, err := s.newDevThread(slots)
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
	ready <- nil
	t.serve()
}

// newDevThread clones the connection's descriptor, creates the ring and
// maps the slots' buffers.
func (s *Server) newDevThread(slots int) (*devThread, error) {
	fd, err := cloneDev(s.devFd)
	if err != nil {
		return nil, err
	}
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
	t := &devThread{s: s, r: r, fd: fd, mem: mem, slots: make([]devSlot, slots)}
	for i := range t.slots {
		t.slots[i].buf = mem[i*size : (i+1)*size]
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

// release closes the ring (which cancels the commands still queued) and
// the descriptor, then unmaps the buffers.
func (t *devThread) release() {
	t.r.close()
	unix.Close(t.fd)
	unix.Munmap(t.mem)
}

// serve answers requests until every slot's read has ended with the
// connection and the offloaded requests are answered, or until Stop's
// grace period runs out, or the ring fails.
func (t *devThread) serve() {
	for i := range t.slots {
		t.queueRead(i)
	}
	t.live = len(t.slots)
	var stopAt time.Time
	for t.live > 0 || t.off.n > 0 {
		if t.s.stop.Load() {
			if stopAt.IsZero() {
				stopAt = time.Now()
			} else if time.Since(stopAt) > stopGrace {
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

// queueRead queues, for slot i, a poll of the descriptor for a request
// and, linked to it, the read of the request. The poll waits in the
// connection's queue as an exclusive waiter: a request that comes wakes
// one waiter, not every slot of every thread.
func (t *devThread) queueRead(i int) {
	sl := &t.slots[i]
	sqe := t.r.sqe()
	putU8(sqe, sqeOffOpcode, ioringOpPollAdd)
	putU8(sqe, sqeOffFlags, iosqeIOLink)
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

// queueReply queues slot i's reply and, linked after it, its next read.
func (t *devThread) queueReply(i int) {
	sl := &t.slots[i]
	sqe := t.r.sqe()
	putU8(sqe, sqeOffOpcode, ioringOpWrite)
	putU8(sqe, sqeOffFlags, iosqeIOLink)
	putU32(sqe, sqeOffFd, uint32(t.fd))
	putU64(sqe, sqeOffAddr, uint64(uintptr(unsafe.Pointer(&sl.buf[sl.off-outHeaderSize]))))
	putU32(sqe, sqeOffLen, uint32(outHeaderSize+sl.outLen))
	putU64(sqe, sqeOffUserData, devReply|uint64(i))
	t.queueRead(i)
	t.s.served.Add(1)
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
	case devReply:
		// ENOENT: the request was interrupted or the connection aborted
		// meanwhile; the kernel no longer waits for this reply.
		if c.Res < 0 && c.Res != -int32(syscall.ENOENT) {
			t.s.logger.Error("wbcache/fuse: sending a reply through /dev/fuse", "err", syscall.Errno(-c.Res))
		}
		return
	}
	switch {
	case c.Res > 0:
		t.request(i, int(c.Res))
	case c.Res == -int32(syscall.EAGAIN) || c.Res == -int32(syscall.EINTR) || c.Res == -int32(syscall.ECANCELED):
		// Another reader took the request the poll saw, or the reply
		// before the read failed (which cancels the read).
		t.queueRead(i)
	default:
		// ENODEV: the connection has ended.
		if c.Res != -int32(syscall.ENODEV) && !t.s.stop.Load() {
			t.s.logger.Error("wbcache/fuse: reading /dev/fuse; this thread stops serving", "err", syscall.Errno(-c.Res))
		}
		t.live--
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
		t.queueRead(i)
		return
	}
	if t.s.waits(h) {
		t.off.start(uint64(i), func() { t.s.answerDev(sl, sl.header()) })
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
		wi := reqAs[gofuse.WriteIn](h)
		sl.off = max(inHeaderSize, sl.n-int(min(wi.Size, uint32(sl.n))))
	case opLookup:
		sl.off = inHeaderSize
	}
	return h
}

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
// a ring can be created and waited on with a timeout (Linux 5.11+), and a
// poll can wait as an exclusive waiter (Linux 5.9+), which it tries on an
// eventfd.
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
