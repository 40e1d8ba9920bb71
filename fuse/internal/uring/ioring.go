package uring

import (
	"errors"
	"fmt"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// A minimal io_uring, only what the FUSE transport needs: 128-byte SQEs for
// IORING_OP_URING_CMD, one issuing thread (SINGLE_ISSUER, DEFER_TASKRUN:
// completions are only reaped when that thread asks), and a wait with a
// timeout so the thread can notice a stop. Layouts are from
// include/uapi/linux/io_uring.h.

const (
	ioringSetupSQE128         = 1 << 10
	ioringSetupSingleIssuer   = 1 << 12
	ioringSetupDeferTaskrun   = 1 << 13
	ioringFeatSingleMmap      = 1 << 0
	ioringFeatCQESkip         = 1 << 11
	ioringEnterGetevents      = 1 << 0
	ioringEnterExtArg         = 1 << 3
	ioringOffSQRing           = 0
	ioringOffSQEs             = 0x10000000
	ioringOpURingCmd          = 46
	ioringOpRead              = 22
	sqe128Size                = 128
	sqe64Size                 = 64
	cqeSize                   = 16
	ioringSetupFlags          = ioringSetupSQE128 | ioringSetupSingleIssuer | ioringSetupDeferTaskrun
	sqeOffOpcode, sqeOffFd    = 0, 4
	sqeOffCmdOp, sqeOffAddr   = 8, 16
	sqeOffLen, sqeOffUserData = 24, 32
	sqeOffCmd                 = 48
)

type ioSqringOffsets struct {
	Head, Tail, RingMask, RingEntries, Flags, Dropped, Array, Resv1 uint32
	UserAddr                                                        uint64
}

type ioCqringOffsets struct {
	Head, Tail, RingMask, RingEntries, Overflow, Cqes, Flags, Resv1 uint32
	UserAddr                                                        uint64
}

type ioUringParams struct {
	SqEntries, CqEntries, Flags, SqThreadCPU, SqThreadIdle, Features, WqFd uint32
	Resv                                                                   [3]uint32
	SqOff                                                                  ioSqringOffsets
	CqOff                                                                  ioCqringOffsets
}

type ioUringGeteventsArg struct {
	Sigmask   uint64
	SigmaskSz uint32
	MinWait   uint32
	Ts        uint64
}

type ioCQE struct {
	UserData uint64
	Res      int32
	Flags    uint32
}

// ioRing is one io_uring instance. It is not safe for concurrent use: the
// thread that creates it is the only one that may submit to it.
type ioRing struct {
	fd      int
	ringMem []byte // SQ and CQ rings (one mapping)
	sqeMem  []byte

	sqHead, sqTail *uint32
	sqMask, sqN    uint32
	cqHead, cqTail *uint32
	cqMask         uint32
	cqes           unsafe.Pointer

	tail    uint32 // next SQE index (local copy of the SQ tail)
	pending uint32 // SQEs written but not yet submitted
	sqeSize int    // 64, or 128 with SQE128
	feat    uint32 // IORING_FEAT_* the kernel reported
}

// newIoRing sets up a ring with at least entries submission slots.
func newIoRing(entries uint32) (*ioRing, error) { return newIoRingFlags(entries, ioringSetupFlags) }

// newIoRingFlags sets up a ring with the given IORING_SETUP_* flags.
func newIoRingFlags(entries, flags uint32) (*ioRing, error) {
	var p ioUringParams
	p.Flags = flags
	fd, _, errno := syscall.Syscall(unix.SYS_IO_URING_SETUP, uintptr(entries), uintptr(unsafe.Pointer(&p)), 0)
	if errno != 0 {
		return nil, fmt.Errorf("io_uring_setup: %w", errno)
	}
	r := &ioRing{fd: int(fd), sqeSize: sqe64Size, feat: p.Features}
	if flags&ioringSetupSQE128 != 0 {
		r.sqeSize = sqe128Size
	}
	if p.Features&ioringFeatSingleMmap == 0 {
		r.close()
		return nil, errors.New("io_uring: kernel lacks IORING_FEAT_SINGLE_MMAP")
	}
	sqSize := int(p.SqOff.Array + p.SqEntries*4)
	cqSize := int(p.CqOff.Cqes + p.CqEntries*cqeSize)
	size := max(sqSize, cqSize)
	mem, err := unix.Mmap(r.fd, ioringOffSQRing, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		r.close()
		return nil, fmt.Errorf("io_uring: mapping the rings: %w", err)
	}
	r.ringMem = mem
	sqes, err := unix.Mmap(r.fd, ioringOffSQEs, int(p.SqEntries)*r.sqeSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		r.close()
		return nil, fmt.Errorf("io_uring: mapping the SQEs: %w", err)
	}
	r.sqeMem = sqes
	base := unsafe.Pointer(&mem[0])
	r.sqHead = (*uint32)(unsafe.Add(base, p.SqOff.Head))
	r.sqTail = (*uint32)(unsafe.Add(base, p.SqOff.Tail))
	r.sqMask = *(*uint32)(unsafe.Add(base, p.SqOff.RingMask))
	r.sqN = p.SqEntries
	r.cqHead = (*uint32)(unsafe.Add(base, p.CqOff.Head))
	r.cqTail = (*uint32)(unsafe.Add(base, p.CqOff.Tail))
	r.cqMask = *(*uint32)(unsafe.Add(base, p.CqOff.RingMask))
	r.cqes = unsafe.Add(base, p.CqOff.Cqes)
	// Identity SQ index array: slot i is SQE i.
	arr := unsafe.Slice((*uint32)(unsafe.Add(base, p.SqOff.Array)), p.SqEntries)
	for i := range arr {
		arr[i] = uint32(i)
	}
	r.tail = atomic.LoadUint32(r.sqTail)
	return r, nil
}

// sqe returns the next free submission entry, zeroed. Every user sizes its
// ring for all the commands it can have queued, so a full queue is a bug:
// it panics.
func (r *ioRing) sqe() []byte {
	if r.tail-atomic.LoadUint32(r.sqHead) >= r.sqN {
		panic("wbcache/fuse: io_uring submission queue full")
	}
	i := r.tail & r.sqMask
	s := r.sqeMem[int(i)*r.sqeSize : int(i+1)*r.sqeSize]
	clear(s)
	r.tail++
	r.pending++
	return s
}

// enter submits the pending SQEs and, if wait, waits up to timeoutNs for at
// least one completion. A timeout or a signal is not an error.
func (r *ioRing) enter(wait bool, timeoutNs int64) error {
	if !wait && r.pending == 0 {
		return nil
	}
	atomic.StoreUint32(r.sqTail, r.tail)
	var flags uintptr
	var minComplete uintptr
	var argp unsafe.Pointer
	var argSz uintptr
	var ts unix.Timespec
	var arg ioUringGeteventsArg
	if wait {
		flags = ioringEnterGetevents | ioringEnterExtArg
		minComplete = 1
		ts = unix.NsecToTimespec(timeoutNs)
		arg.Ts = uint64(uintptr(unsafe.Pointer(&ts)))
		argp = unsafe.Pointer(&arg)
		argSz = unsafe.Sizeof(arg)
	}
	n, _, errno := syscall.Syscall6(unix.SYS_IO_URING_ENTER, uintptr(r.fd), uintptr(r.pending), minComplete, flags, uintptr(argp), argSz)
	if errno == 0 {
		r.pending -= uint32(n)
	}
	switch errno {
	case 0, syscall.ETIME, syscall.EINTR, syscall.EAGAIN, syscall.EBUSY:
		return nil
	}
	return fmt.Errorf("io_uring_enter: %w", errno)
}

// reap calls f for every completion ready and consumes them.
func (r *ioRing) reap(f func(c *ioCQE)) int {
	head := atomic.LoadUint32(r.cqHead)
	tail := atomic.LoadUint32(r.cqTail)
	n := 0
	for ; head != tail; head++ {
		c := (*ioCQE)(unsafe.Add(r.cqes, uintptr(head&r.cqMask)*cqeSize))
		f(c)
		n++
	}
	atomic.StoreUint32(r.cqHead, head)
	return n
}

// ready is the number of completions waiting to be reaped.
func (r *ioRing) ready() uint32 { return atomic.LoadUint32(r.cqTail) - atomic.LoadUint32(r.cqHead) }

// poll runs the ring's pending task work without waiting: with
// DEFER_TASKRUN, completions are only posted when the issuing thread
// enters the kernel asking for them.
func (r *ioRing) poll() {
	syscall.Syscall6(unix.SYS_IO_URING_ENTER, uintptr(r.fd), 0, 0, ioringEnterGetevents, 0, 0)
}

func (r *ioRing) close() {
	if r.sqeMem != nil {
		unix.Munmap(r.sqeMem)
		r.sqeMem = nil
	}
	if r.ringMem != nil {
		unix.Munmap(r.ringMem)
		r.ringMem = nil
	}
	if r.fd >= 0 {
		syscall.Close(r.fd)
		r.fd = -1
	}
}

func putU8(b []byte, off int, v uint8)   { b[off] = v }
func putU16(b []byte, off int, v uint16) { *(*uint16)(unsafe.Pointer(&b[off])) = v }
func putU32(b []byte, off int, v uint32) { *(*uint32)(unsafe.Pointer(&b[off])) = v }
func putU64(b []byte, off int, v uint64) { *(*uint64)(unsafe.Pointer(&b[off])) = v }
func getU32(b []byte, off int) uint32    { return *(*uint32)(unsafe.Pointer(&b[off])) }
func getU64(b []byte, off int) uint64    { return *(*uint64)(unsafe.Pointer(&b[off])) }
