package uring

import (
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	gofuse "github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

const (
	// Threads per queue, and ring entries. A second thread per queue
	// keeps the queue moving while one waits (a read from the backing
	// device); entries per thread bound how many requests one thread can
	// have been handed. On 2 CPUs, 4 KiB random writes at QD32
	// (scripts/ceiling-ab.sh, GOMAXPROCS 4): 1 thread × 16 entries 85% of
	// the ceiling, 1 × 32 81%, 2 × 16 90%, 4 × 8 91%, 4 × 16 88%. Pinning
	// each queue's threads to its CPU: 66%. Every entry has a MaxWrite
	// (1 MiB) payload buffer, so the entries are a budget shared by all
	// queues (64 in all, as 2 × 16 on 2 CPUs) with at least
	// minEntries per thread.
	threadsPerQueue = 2
	entryBudget     = 64
	minEntries      = 2
)

// Server serves one FUSE connection's ring.
type Server struct {
	fs      gofuse.RawFileSystem
	devFd   int
	queues  int
	logger  *slog.Logger
	payload int
	mayWait func(ino uint64, write bool, off, n int64) bool // nil: no hint

	stop    atomic.Bool
	wg      sync.WaitGroup
	served  atomic.Uint64 // requests answered through the ring
	running atomic.Int32  // /dev/fuse threads serving
}

// start runs the ring threads of every queue and waits until each has
// registered its entries. If any thread fails, the kernel would hold
// requests forever waiting for the queues left without entries, so
// abandon withdraws the connection from io_uring before the error is
// returned.
func start(cfg Config) (*Server, error) {
	nq, err := possibleCPUs()
	if err != nil {
		return nil, err
	}
	s := &Server{fs: cfg.FS, devFd: cfg.DevFd, queues: nq, logger: cfg.Logger, payload: cfg.Payload, mayWait: cfg.MayWait}
	var errs []error
	readies := make([]chan error, 0, nq*threadsPerQueue)
	for q := 0; q < nq; q++ {
		for range threadsPerQueue {
			ready := make(chan error, 1)
			readies = append(readies, ready)
			s.wg.Add(1)
			go s.runThread(uint16(q), ready)
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
func (s *Server) abandon() {
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
		s.fillCmd(sqe, cmdRegister, 0xffff, 0, &iov, 0)
		_ = r.enter(true, int64(time.Second))
		r.reap(func(*ioCQE) {})
	}()
	<-done
}

// fillCmd writes a FUSE ring command into sqe: iov is the entry's header
// and payload buffer, userData comes back in its completion.
func (s *Server) fillCmd(sqe []byte, cmd uint32, qid uint16, commitID uint64, iov *[2]unix.Iovec, userData uint64) {
	putU8(sqe, sqeOffOpcode, ioringOpURingCmd)
	putU32(sqe, sqeOffFd, uint32(s.devFd))
	putU32(sqe, sqeOffCmdOp, cmd)
	putU64(sqe, sqeOffAddr, uint64(uintptr(unsafe.Pointer(&iov[0]))))
	putU32(sqe, sqeOffLen, 2)
	putU64(sqe, sqeOffUserData, userData)
	putU64(sqe, sqeOffCmd+cmdReqOffCommitID, commitID)
	putU16(sqe, sqeOffCmd+cmdReqOffQid, qid)
}

// entriesPerThread shares the entry budget among nq queues.
func entriesPerThread(nq int) int {
	return max(minEntries, entryBudget/(nq*threadsPerQueue))
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
