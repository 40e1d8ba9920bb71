package fuse

import (
	"errors"
	"io/fs"
	"log/slog"
	"sync/atomic"
	"syscall"
	"time"

	gofuse "github.com/hanwen/go-fuse/v2/fuse"
)

// passErrnos are the Backend errnos handed to the caller unchanged: they mean
// the same thing to an application doing I/O on a file. Any other errno
// (notably ENOSYS, which would make the kernel stop sending the operation,
// and ENOENT/ENOTCONN, which mean something else in a reply) becomes EIO.
var passErrnos = map[syscall.Errno]bool{
	syscall.EIO:        true,
	syscall.EINVAL:     true,
	syscall.ENOSPC:     true,
	syscall.EDQUOT:     true,
	syscall.EROFS:      true,
	syscall.EPERM:      true,
	syscall.EACCES:     true,
	syscall.EFBIG:      true,
	syscall.EOPNOTSUPP: true,
	syscall.ENOMEM:     true,
	syscall.EBUSY:      true,
	syscall.ENXIO:      true,
}

// statusOf maps a Backend error to the errno returned to the kernel. known
// is false when the error was not recognised and became EIO.
func statusOf(err error) (st gofuse.Status, known bool) {
	if err == nil {
		return gofuse.OK, true
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		if passErrnos[errno] {
			return gofuse.Status(errno), true
		}
		return gofuse.EIO, false
	}
	switch {
	case errors.Is(err, fs.ErrInvalid):
		return gofuse.EINVAL, true
	case errors.Is(err, fs.ErrPermission):
		return gofuse.EPERM, true
	}
	return gofuse.EIO, false
}

// rateLog emits at most one record per interval; records dropped in between
// are counted and reported with the next one that gets through.
type rateLog struct {
	logger     *slog.Logger
	interval   time.Duration
	now        func() time.Time
	last       atomic.Int64 // UnixNano of the last emitted record, 0 = never
	suppressed atomic.Int64
}

func newRateLog(l *slog.Logger, interval time.Duration) *rateLog {
	return &rateLog{logger: l, interval: interval, now: time.Now}
}

// Error logs msg at error level unless a record was emitted less than
// interval ago. It reports whether the record was emitted.
func (r *rateLog) Error(msg string, args ...any) bool {
	now := r.now().UnixNano()
	last := r.last.Load()
	if (last != 0 && now-last < int64(r.interval)) || !r.last.CompareAndSwap(last, now) {
		r.suppressed.Add(1)
		return false
	}
	if n := r.suppressed.Swap(0); n > 0 {
		args = append(args, "suppressed", n)
	}
	r.logger.Error(msg, args...)
	return true
}

// Errors Mount wraps: they say what broke; what to do about it is the
// caller's to say (the command knows its flags).
var (
	// ErrDeadMount: a FUSE mount whose daemon is gone sits on the mount
	// point; CleanupStale removes it.
	ErrDeadMount = errors.New("a dead FUSE mount is in the way")
	// ErrRingUnavailable: FUSE over io_uring was required (IOUringOn)
	// but cannot be used: not root, no kernel support, io_uring disabled,
	// or its ring entries were refused.
	ErrRingUnavailable = errors.New("FUSE over io_uring is unavailable")
	// ErrRingStuck: the kernel agreed to FUSE over io_uring at INIT, but
	// the ring can neither be set up nor withdrawn; the kernel would hold
	// every request, so the mount is given up even in IOUringAuto mode.
	ErrRingStuck = errors.New("FUSE over io_uring can neither be set up nor withdrawn, and the kernel holds every request until it is")
	// ErrDevBatch: reading /dev/fuse through io_uring passed its probe but
	// could not start on the mounted connection. go-fuse then serves one
	// request at a time, so the mount is given up.
	ErrDevBatch = errors.New("serving /dev/fuse through io_uring failed")
)
