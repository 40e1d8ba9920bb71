package fuse

import (
	"bytes"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	gofuse "github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// FUSE over io_uring (Linux 6.14+, fs/fuse/dev_uring.c). After INIT, the
// daemon registers ring entries (a header buffer and a payload buffer each)
// for every queue — one queue per possible CPU — and the kernel then sends
// requests by completing those entries instead of through read(2) on
// /dev/fuse; the daemon answers and fetches the next request with one
// COMMIT_AND_FETCH command. Many requests are answered per system call and
// nobody sleeps in read(2), which is where the /dev/fuse transport spends
// most of its time. FORGET and INTERRUPT still come through /dev/fuse,
// which go-fuse keeps serving.

const (
	uringEnablePath = "/sys/module/fuse/parameters/enable_uring"

	// fuse_uring_req_header: in_out[128], op_in[128], fuse_uring_ent_in_out.
	uringHdrSize      = 288
	uringHdrStride    = 512
	uringOffOpIn      = 128
	uringOffCommitID  = 256 + 8
	uringOffPayloadSz = 256 + 16

	fuseURingCmdRegister    = 1
	fuseURingCmdCommitFetch = 2

	inHeaderSize  = int(unsafe.Sizeof(gofuse.InHeader{}))
	outHeaderSize = 16

	// Threads per queue, and ring entries. A second thread per queue
	// keeps the queue moving while one waits (a read from the backing
	// device); entries per thread bound how many requests one thread can
	// have been handed. On 2 CPUs, 4 KiB random writes at QD32
	// (scripts/ceiling-ab.sh, GOMAXPROCS 4): 1 thread × 16 entries 85% of
	// the ceiling, 1 × 32 81%, 2 × 16 90%, 4 × 8 91%, 4 × 16 88%. Pinning
	// each queue's threads to its CPU: 66%. Every entry has a MaxWrite
	// (1 MiB) payload buffer, so the entries are a budget shared by all
	// queues (64 in all, as 2 × 16 on 2 CPUs) with at least
	// uringMinEntries per thread.
	uringThreadsPerQueue = 2
	uringEntryBudget     = 64
	uringMinEntries      = 2

	// wakeUserData marks the completion of the read on a thread's
	// eventfd: requests handed to goroutines have finished.
	wakeUserData = ^uint64(0)
	ioringOpRead = 22

	uringWaitTimeout = 500 * time.Millisecond
	uringStopGrace   = 2 * time.Second

	// uringSpin is how long a ring thread polls for the next request
	// after answering some, before it sleeps. Waking a sleeping thread
	// costs about 20µs per request here (an IPI and the Go runtime's
	// return from the system call), which is most of the latency at low
	// queue depth: 4 KiB random writes at QD1, 16,000-18,000 IOPS (p50
	// 45-52µs) without polling; 31,000-38,000 (p50 19-27µs) polling 10,
	// 20 or 30µs. At QD32 (scripts/ceiling-ab.sh) 10-30µs is as fast as
	// none or faster (113% of the ceiling without, 119-120% with), 100µs
	// slower (101%): the polling then takes CPU from the application.
	uringSpin = 20 * time.Microsecond
)

// FUSE opcodes served over the ring (include/uapi/linux/fuse.h).
const (
	opLookup      = 1
	opGetattr     = 3
	opSetattr     = 4
	opSymlink     = 6
	opMknod       = 8
	opMkdir       = 9
	opUnlink      = 10
	opRmdir       = 11
	opRename      = 12
	opLink        = 13
	opOpen        = 14
	opRead        = 15
	opWrite       = 16
	opStatfs      = 17
	opRelease     = 18
	opFsync       = 20
	opFlush       = 25
	opOpendir     = 27
	opReaddir     = 28
	opReleasedir  = 29
	opFsyncdir    = 30
	opGetxattr    = 22
	opAccess      = 34
	opCreate      = 35
	opDestroy     = 38
	opPoll        = 40
	opFallocate   = 43
	opRename2     = 45
	opTmpfile     = 51
	fuseDirentHdr = 24
)

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

// possibleCPUs is the kernel's queue count: num_possible_cpus().
func possibleCPUs() (int, error) {
	b, err := os.ReadFile("/sys/devices/system/cpu/possible")
	if err != nil {
		return 0, err
	}
	return parseCPUList(string(b))
}

// parseCPUList counts the CPUs in a kernel CPU list such as "0-3,8".
func parseCPUList(list string) (int, error) {
	n := 0
	for _, part := range strings.Split(strings.TrimSpace(list), ",") {
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.Atoi(lo)
		if err != nil {
			return 0, fmt.Errorf("parsing CPU list %q: %w", list, err)
		}
		c := a
		if isRange {
			if c, err = strconv.Atoi(hi); err != nil {
				return 0, fmt.Errorf("parsing CPU list %q: %w", list, err)
			}
		}
		if c < a {
			return 0, fmt.Errorf("parsing CPU list %q: range %s goes down", list, part)
		}
		n += c - a + 1
	}
	return n, nil
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

// uringServer serves one FUSE connection's ring.
type uringServer struct {
	fs      *rawFS
	devFd   int
	queues  int
	logger  *slog.Logger
	payload int
	waiter  Waiter // nil if the Backend gives no hint

	stop   atomic.Bool
	wg     sync.WaitGroup
	served atomic.Uint64 // requests answered through the ring
}

type uringEnt struct {
	hdr      []byte
	payload  []byte
	iov      [2]unix.Iovec
	idx      uint64     // index in its thread's entries (the SQE user data)
	commitID uint64     // the request being answered
	scratch  [40]uint64 // the request header and op struct, contiguous
}

// startURing registers ring entries for every queue. If any thread
// fails, the kernel would hold requests forever waiting for the queues
// left without entries, so abandon withdraws the connection from io_uring
// (it then serves through /dev/fuse) before the error is returned.
func startURing(fs *rawFS, devFd int, payload int, logger *slog.Logger) (*uringServer, error) {
	nq, err := possibleCPUs()
	if err != nil {
		return nil, err
	}
	s := &uringServer{fs: fs, devFd: devFd, queues: nq, logger: logger, payload: payload}
	s.waiter, _ = fs.b.(Waiter)
	var errs []error
	readies := make([]chan error, 0, nq*uringThreadsPerQueue)
	for q := 0; q < nq; q++ {
		for t := 0; t < uringThreadsPerQueue; t++ {
			ready := make(chan error, 1)
			readies = append(readies, ready)
			s.wg.Add(1)
			go s.thread(uint16(q), ready)
		}
	}
	for _, r := range readies {
		if err := <-r; err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		s.abandon()
		s.Stop()
		if len(errs) > 1 {
			return nil, fmt.Errorf("%w (and %d more ring threads failed)", errs[0], len(errs)-1)
		}
		return nil, errs[0]
	}
	return s, nil
}

// abandon makes the kernel give up on the ring for this connection: a
// REGISTER for a queue that does not exist fails, which clears the
// connection's io_uring flag and releases requests waiting for the ring.
func (s *uringServer) abandon() {
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread()
		r, err := newIoRing(1)
		if err != nil {
			s.logger.Error("wbcache/fuse: cannot withdraw from FUSE over io_uring; requests may hang", "err", err)
			return
		}
		defer r.close()
		var iov [2]unix.Iovec
		sqe := r.sqe()
		s.fillCmd(sqe, fuseURingCmdRegister, 0xffff, 0, &iov, 0)
		_ = r.enter(true, int64(time.Second))
		r.reap(func(*ioCQE) {})
	}()
	<-done
}

// Stop asks the ring threads to exit and waits for them. Call it after
// the connection has ended.
func (s *uringServer) Stop() {
	s.stop.Store(true)
	s.wg.Wait()
}

func (s *uringServer) fillCmd(sqe []byte, cmd uint32, qid uint16, commitID uint64, iov *[2]unix.Iovec, userData uint64) {
	putU8(sqe, sqeOffOpcode, ioringOpURingCmd)
	putU32(sqe, sqeOffFd, uint32(s.devFd))
	putU32(sqe, sqeOffCmdOp, cmd)
	putU64(sqe, sqeOffAddr, uint64(uintptr(unsafe.Pointer(&iov[0]))))
	putU32(sqe, sqeOffLen, 2)
	putU64(sqe, sqeOffUserData, userData)
	// struct fuse_uring_cmd_req: flags, commit_id, qid.
	putU64(sqe, sqeOffCmd+8, commitID)
	putU16(sqe, sqeOffCmd+16, qid)
}

// entriesPerThread shares the entry budget among nq queues.
func entriesPerThread(nq int) int {
	return max(uringMinEntries, uringEntryBudget/(nq*uringThreadsPerQueue))
}

// thread owns one io_uring and entriesPerThread entries of queue qid. It
// stays on its OS thread: with DEFER_TASKRUN, the kernel hands requests to
// the thread that submitted the commands.
func (s *uringServer) thread(qid uint16, ready chan<- error) {
	defer s.wg.Done()
	// Never unlocked: the thread ends with the goroutine, and with it any
	// task work the kernel still had queued for it.
	runtime.LockOSThread()
	n := entriesPerThread(s.queues)
	r, err := newIoRing(uint32(n + 1)) // + the eventfd read
	if err != nil {
		ready <- err
		return
	}
	hdrMem, err := unix.Mmap(-1, 0, n*uringHdrStride, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		r.close()
		ready <- fmt.Errorf("allocating ring headers: %w", err)
		return
	}
	payMem, err := unix.Mmap(-1, 0, n*s.payload, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		r.close()
		unix.Munmap(hdrMem)
		ready <- fmt.Errorf("allocating ring buffers: %w", err)
		return
	}
	live := 0 // entries the kernel may still hand requests to
	defer func() {
		r.close()
		if live > 0 {
			// The kernel still knows these buffers' addresses: leave
			// them mapped rather than let it write into memory that
			// may be reused.
			s.logger.Warn("wbcache/fuse: ring thread stopped with entries registered; keeping their buffers", "queue", qid, "entries", live)
			return
		}
		unix.Munmap(payMem)
		unix.Munmap(hdrMem)
	}()
	ents := make([]uringEnt, n)
	for i := range ents {
		e := &ents[i]
		e.idx = uint64(i)
		e.hdr = hdrMem[i*uringHdrStride : i*uringHdrStride+uringHdrSize]
		e.payload = payMem[i*s.payload : (i+1)*s.payload]
		e.iov[0].Base = &e.hdr[0]
		e.iov[0].SetLen(len(e.hdr))
		e.iov[1].Base = &e.payload[0]
		e.iov[1].SetLen(len(e.payload))
		s.fillCmd(r.sqe(), fuseURingCmdRegister, qid, 0, &e.iov, uint64(i))
	}
	if err := r.enter(false, 0); err != nil {
		ready <- fmt.Errorf("registering ring entries: %w", err)
		return
	}
	// A REGISTER that fails completes at once; one that succeeds completes
	// only when a request arrives.
	var regErr error
	live = n
	var early []*ioCQE
	r.reap(func(c *ioCQE) {
		if c.Res < 0 {
			live--
			if regErr == nil {
				regErr = fmt.Errorf("registering ring entries for queue %d: %w", qid, syscall.Errno(-c.Res))
			}
			return
		}
		cp := *c
		early = append(early, &cp)
	})
	if regErr != nil {
		// Entries that did register stay known to the kernel until the
		// connection ends: the deferred cleanup keeps their buffers.
		ready <- regErr
		return
	}
	t := &uringThread{s: s, r: r, qid: qid, ents: ents}
	if err := t.openWake(); err != nil {
		ready <- err
		return
	}
	defer t.closeWake()
	ready <- nil
	for _, c := range early {
		t.complete(c)
	}
	var stopAt time.Time
	for live > 0 || t.offloaded > 0 {
		if s.stop.Load() {
			// The connection has ended: its teardown completes the
			// entries still registered. Wait for that a little.
			if stopAt.IsZero() {
				stopAt = time.Now()
			} else if time.Since(stopAt) > uringStopGrace {
				break
			}
		}
		// Send the answers, then poll a little before sleeping.
		if err := r.enter(false, 0); err != nil {
			s.logger.Error("wbcache/fuse: io_uring submit failed; ring thread stopping", "queue", qid, "err", err)
			break
		}
		for deadline := time.Now().Add(uringSpin); r.ready() == 0 && time.Now().Before(deadline); {
			r.poll()
		}
		if r.ready() == 0 {
			if err := r.enter(true, int64(uringWaitTimeout)); err != nil {
				s.logger.Error("wbcache/fuse: io_uring wait failed; ring thread stopping", "queue", qid, "err", err)
				break
			}
		}
		r.reap(func(c *ioCQE) {
			if c.UserData != wakeUserData && c.Res < 0 {
				// The connection is going away (ENOTCONN), or the
				// command was cancelled.
				live--
				return
			}
			t.complete(c)
		})
	}
	// Requests still with goroutines finish before the buffers go.
	t.wg.Wait()
}

// uringThread is the state of one ring thread.
type uringThread struct {
	s    *uringServer
	r    *ioRing
	qid  uint16
	ents []uringEnt

	wakeFd    int     // eventfd written when offloaded requests finish
	wakeBuf   [8]byte // the eventfd read's buffer
	offloaded int     // requests with goroutines, not yet committed

	wg     sync.WaitGroup
	doneMu sync.Mutex
	done   []*uringEnt // offloaded requests answered, to commit
}

func (t *uringThread) openWake() error {
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		return fmt.Errorf("eventfd: %w", err)
	}
	t.wakeFd = fd
	t.armWake()
	return nil
}

func (t *uringThread) closeWake() { unix.Close(t.wakeFd) }

// armWake queues a read of the eventfd: its completion wakes the thread.
func (t *uringThread) armWake() {
	sqe := t.r.sqe()
	putU8(sqe, sqeOffOpcode, ioringOpRead)
	putU32(sqe, sqeOffFd, uint32(t.wakeFd))
	putU64(sqe, sqeOffAddr, uint64(uintptr(unsafe.Pointer(&t.wakeBuf[0]))))
	putU32(sqe, sqeOffLen, uint32(len(t.wakeBuf)))
	putU64(sqe, sqeOffUserData, wakeUserData)
}

// complete handles one completion: a request to serve, or the wakeup for
// offloaded requests that have finished.
func (t *uringThread) complete(c *ioCQE) {
	if c.UserData == wakeUserData {
		t.doneMu.Lock()
		done := t.done
		t.done = nil
		t.doneMu.Unlock()
		for _, e := range done {
			t.commit(e)
			t.offloaded--
		}
		t.armWake()
		return
	}
	e := &t.ents[c.UserData]
	h := e.load()
	if t.s.mayWait(h) {
		// A read miss or a write around the cache waits for the
		// backing device: answer it from a goroutine so that the
		// requests this thread is handed meanwhile are not held up
		// behind it, and the device sees the application's queue
		// depth.
		t.offloaded++
		t.wg.Add(1)
		go func() {
			defer t.wg.Done()
			t.s.answer(e, h)
			t.doneMu.Lock()
			t.done = append(t.done, e)
			t.doneMu.Unlock()
			var one [8]byte
			one[0] = 1
			if _, err := unix.Write(t.wakeFd, one[:]); err != nil {
				t.s.logger.Error("wbcache/fuse: waking a ring thread", "err", err)
			}
		}()
		return
	}
	t.s.answer(e, h)
	t.commit(e)
}

// commit queues the COMMIT_AND_FETCH that sends e's answer and asks for
// the next request.
func (t *uringThread) commit(e *uringEnt) {
	sqe := t.r.sqe()
	if sqe == nil {
		// Cannot happen: every entry has at most one command queued.
		panic("wbcache/fuse: io_uring submission queue full")
	}
	t.s.fillCmd(sqe, fuseURingCmdCommitFetch, t.qid, e.commitID, &e.iov, e.idx)
	t.s.served.Add(1)
}

// mayWait reports reads and writes the Backend says may wait for the
// backing device. fsync and fallocate wait for the cache device only (a
// sync, 100-300µs) and are answered on the ring thread: handing them to a
// goroutine and waking the thread for the answer doubled an fsync's
// latency (4 KiB write + fsync at QD1: 3,380 IOPS, fsync p50 297µs, against
// 5,756 and 140µs through /dev/fuse). While one thread syncs, new requests
// go to the entries its queue's other thread has just committed (the
// kernel hands out the most recently committed entry first).
func (s *uringServer) mayWait(h *gofuse.InHeader) bool {
	if s.waiter == nil || h.NodeId != diskIno {
		return false
	}
	switch h.Opcode {
	case opRead:
		ri := reqAs[gofuse.ReadIn](h)
		return s.waiter.MayWait(false, int64(ri.Offset), int64(ri.Size))
	case opWrite:
		wi := reqAs[gofuse.WriteIn](h)
		return s.waiter.MayWait(true, int64(wi.Offset), int64(wi.Size))
	}
	return false
}

// load copies the request header and op struct into e.scratch, where
// they are contiguous as go-fuse's request types expect.
func (e *uringEnt) load() *gofuse.InHeader {
	sc := unsafe.Slice((*byte)(unsafe.Pointer(&e.scratch[0])), len(e.scratch)*8)
	copy(sc[:inHeaderSize], e.hdr[:inHeaderSize])
	copy(sc[inHeaderSize:], e.hdr[uringOffOpIn:uringOffOpIn+128])
	e.commitID = getU64(e.hdr, uringOffCommitID)
	return (*gofuse.InHeader)(unsafe.Pointer(&e.scratch[0]))
}

// answer runs the request loaded in e and writes the reply header and
// payload size into e's header buffer.
func (s *uringServer) answer(e *uringEnt, h *gofuse.InHeader) {
	unique := h.Unique
	inLen := int(getU32(e.hdr, uringOffPayloadSz))
	st, outLen := s.dispatchSafe(h, e.payload, inLen)
	if st != gofuse.OK {
		outLen = 0
	}
	putU32(e.hdr, 0, uint32(outHeaderSize+outLen))
	putU32(e.hdr, 4, uint32(-int32(st)))
	putU64(e.hdr, 8, unique)
	clear(e.hdr[256:uringHdrSize])
	putU32(e.hdr, uringOffPayloadSz, uint32(outLen))
}

// dispatchSafe is dispatch with a panic turned into EIO (as go-fuse does
// for its handlers): one bad request must not take the daemon down.
func (s *uringServer) dispatchSafe(h *gofuse.InHeader, p []byte, inLen int) (st gofuse.Status, n int) {
	defer func() {
		if r := recover(); r != nil {
			s.logger.Error("wbcache/fuse: panic answering a request", "opcode", h.Opcode, "panic", r, "stack", string(debug.Stack()))
			st, n = gofuse.EIO, 0
		}
	}()
	return s.dispatch(h, p, inLen)
}

func reqAs[T any](h *gofuse.InHeader) *T { return (*T)(unsafe.Pointer(h)) }

func replyAs[T any](p []byte) *T {
	var zero T
	clear(p[:unsafe.Sizeof(zero)])
	return (*T)(unsafe.Pointer(&p[0]))
}

func sizeOf[T any]() int {
	var zero T
	return int(unsafe.Sizeof(zero))
}

// dispatch runs one request against the file system. The request's fixed
// part is in h (header, then the op struct); variable input (names, write
// data) is p[:inLen]. The reply payload is written to p; its length is
// returned.
func (s *uringServer) dispatch(h *gofuse.InHeader, p []byte, inLen int) (gofuse.Status, int) {
	fs := s.fs
	if h.NodeId == pollHackInode {
		return pollHackReply(h, p)
	}
	switch h.Opcode {
	case opLookup:
		name := p[:inLen]
		if i := bytes.IndexByte(name, 0); i >= 0 {
			name = name[:i]
		}
		if h.NodeId == rootIno && string(name) == pollHackName {
			return pollHackReply(h, p)
		}
		var eo gofuse.EntryOut
		st := fs.Lookup(nil, h, string(name), &eo)
		*replyAs[gofuse.EntryOut](p) = eo
		return st, sizeOf[gofuse.EntryOut]()
	case opGetattr:
		return fs.GetAttr(nil, reqAs[gofuse.GetAttrIn](h), replyAs[gofuse.AttrOut](p)), sizeOf[gofuse.AttrOut]()
	case opSetattr:
		return fs.SetAttr(nil, reqAs[gofuse.SetAttrIn](h), replyAs[gofuse.AttrOut](p)), sizeOf[gofuse.AttrOut]()
	case opOpen:
		return fs.Open(nil, reqAs[gofuse.OpenIn](h), replyAs[gofuse.OpenOut](p)), sizeOf[gofuse.OpenOut]()
	case opOpendir:
		return fs.OpenDir(nil, reqAs[gofuse.OpenIn](h), replyAs[gofuse.OpenOut](p)), sizeOf[gofuse.OpenOut]()
	case opRead:
		ri := reqAs[gofuse.ReadIn](h)
		size := min(int(ri.Size), len(p))
		res, st := fs.Read(nil, ri, p[:size])
		if st != gofuse.OK {
			return st, 0
		}
		data, st := res.Bytes(p[:size])
		res.Done()
		if st != gofuse.OK {
			return st, 0
		}
		n := copy(p[:size], data)
		return gofuse.OK, n
	case opWrite:
		wi := reqAs[gofuse.WriteIn](h)
		n, st := fs.Write(nil, wi, p[:min(inLen, int(wi.Size))])
		*replyAs[gofuse.WriteOut](p) = gofuse.WriteOut{Size: n}
		return st, sizeOf[gofuse.WriteOut]()
	case opStatfs:
		return fs.StatFs(nil, h, replyAs[gofuse.StatfsOut](p)), sizeOf[gofuse.StatfsOut]()
	case opRelease:
		fs.Release(nil, reqAs[gofuse.ReleaseIn](h))
		return gofuse.OK, 0
	case opReleasedir:
		fs.ReleaseDir(reqAs[gofuse.ReleaseIn](h))
		return gofuse.OK, 0
	case opFsync:
		return fs.Fsync(nil, reqAs[gofuse.FsyncIn](h)), 0
	case opFsyncdir:
		return fs.FsyncDir(nil, reqAs[gofuse.FsyncIn](h)), 0
	case opFlush:
		return fs.Flush(nil, reqAs[gofuse.FlushIn](h)), 0
	case opReaddir:
		ri := reqAs[gofuse.ReadIn](h)
		size := min(int(ri.Size), len(p))
		clear(p[:size])
		st := fs.ReadDir(nil, ri, gofuse.NewDirEntryList(p[:size], ri.Offset))
		return st, direntsLen(p[:size])
	case opFallocate:
		return fs.Fallocate(nil, reqAs[gofuse.FallocateIn](h)), 0
	case opDestroy:
		return gofuse.OK, 0
	case opSymlink, opMknod, opMkdir, opUnlink, opRmdir, opRename, opLink, opCreate, opRename2, opTmpfile:
		// The tree is fixed (as rawFS answers through /dev/fuse).
		return gofuse.EPERM, 0
	}
	return gofuse.ENOSYS, 0
}

// go-fuse's poll hack (Server.WaitMount, used with Options.SelfAccess)
// opens this name so that the kernel learns early that POLL is not
// supported; through /dev/fuse go-fuse answers it, through the ring it is
// answered here the same way.
const (
	pollHackName  = ".go-fuse-epoll-hack"
	pollHackInode = ^uint64(0)
)

func pollHackReply(h *gofuse.InHeader, p []byte) (gofuse.Status, int) {
	attr := gofuse.Attr{Ino: pollHackInode, Mode: syscall.S_IFREG | 0o644, Nlink: 1}
	switch h.Opcode {
	case opLookup:
		*replyAs[gofuse.EntryOut](p) = gofuse.EntryOut{NodeId: pollHackInode, Attr: attr}
		return gofuse.OK, sizeOf[gofuse.EntryOut]()
	case opOpen:
		*replyAs[gofuse.OpenOut](p) = gofuse.OpenOut{Fh: pollHackInode}
		return gofuse.OK, sizeOf[gofuse.OpenOut]()
	case opGetattr, opSetattr:
		replyAs[gofuse.AttrOut](p).Attr = attr
		return gofuse.OK, sizeOf[gofuse.AttrOut]()
	case opGetxattr:
		return gofuse.ENODATA, 0
	case opPoll:
		return gofuse.ENOSYS, 0
	case opAccess, opFlush, opRelease:
		return gofuse.OK, 0
	}
	return gofuse.ERANGE, 0
}

// direntsLen is the length of the fuse_dirent list at the start of the
// zeroed buffer p.
func direntsLen(p []byte) int {
	off := 0
	for off+fuseDirentHdr <= len(p) {
		nameLen := int(getU32(p, off+16))
		if nameLen == 0 {
			break
		}
		off += (fuseDirentHdr + nameLen + 7) &^ 7
	}
	return min(off, len(p))
}
