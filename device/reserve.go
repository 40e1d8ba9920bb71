package device

import (
	"errors"
	"fmt"
	"math"
	"os"

	"golang.org/x/sys/unix"
)

// NoSpaceError reports that the filesystem holding a file has no room:
// for a write into one of its holes (or a store through a mapping into
// one), or for Reserve to allocate its holes. It wraps ENOSPC, or the
// error of the write or allocation that failed (ENOSPC or EDQUOT).
type NoSpaceError struct {
	Path string
	// Err is the error of the write or allocation that failed, or nil
	// when Reserve did not try, the free space being short.
	Err error
	// For Reserve: the file's size, the bytes of it allocated (st_blocks
	// × 512) and the bytes free on its filesystem. Zero for a write.
	Size, Allocated, Free int64
}

func (e *NoSpaceError) Error() string {
	if e.Size == 0 {
		if e.Err == unix.EDQUOT {
			return e.Err.Error() + " (the quota of the file's owner on its filesystem is used up)"
		}
		return unix.ENOSPC.Error() + " (the filesystem holding the file is full)"
	}
	s := fmt.Sprintf("device: %s has %s of its %s not allocated (holes) and its filesystem has only %s free",
		e.Path, sizeString(e.Size-e.Allocated), sizeString(e.Size), sizeString(e.Free))
	if e.Err != nil {
		return s + ": allocating them failed: " + e.Err.Error()
	}
	return s + ": " + unix.ENOSPC.Error()
}

func (e *NoSpaceError) Unwrap() error {
	if e.Err != nil {
		return e.Err
	}
	return unix.ENOSPC
}

// Reserve allocates the blocks of a regular file that are not allocated
// yet (its holes), without changing its size or content (fallocate with
// KEEP_SIZE), so that writes into the file, and stores through a shared
// mapping of it, cannot fail for want of space when its filesystem fills
// up. (That holds on filesystems that overwrite blocks in place, not on
// copy-on-write ones such as btrfs or ZFS.) A block device has nothing to
// reserve. A file whose allocated blocks (st_blocks) cover its size is
// taken as fully allocated.
//
// Reserve fails with a *NoSpaceError, having allocated nothing, when the
// free space the filesystem reports is short of the unallocated bytes:
// allocating part of them would only fill the filesystem. If the
// allocation runs out of space all the same, the error is a *NoSpaceError
// too. Where the filesystem cannot allocate ahead (no fallocate, or not
// with KEEP_SIZE), Reserve changes nothing and returns the bytes left
// unallocated, with no error.
func (f *File) Reserve() (unallocated int64, err error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if err := f.check("reserve", 0, 0, true); err != nil {
		return 0, err
	}
	if f.kind != kindRegular {
		return 0, nil
	}
	allocated, err := f.allocated()
	if err != nil {
		return 0, err
	}
	missing := f.size - allocated
	if missing <= 0 {
		return 0, nil
	}
	// A filesystem that does not tell its free space (some FUSE ones) is
	// left to fallocate to judge.
	free, known := freeBytes(f.fd)
	if known && free < missing {
		return 0, &NoSpaceError{Path: f.path, Size: f.size, Allocated: allocated, Free: free}
	}
	err = retryEINTR(func() error { return unix.Fallocate(f.fd, unix.FALLOC_FL_KEEP_SIZE, 0, f.size) })
	switch {
	case err == nil:
		return 0, nil
	case err == unix.EOPNOTSUPP || err == unix.ENOSYS || err == unix.EINVAL || err == unix.ENODEV:
		// The filesystem has no fallocate, or not this mode of it.
		return missing, nil
	case err == unix.ENOSPC || err == unix.EDQUOT:
		e := &NoSpaceError{Path: f.path, Size: f.size, Allocated: allocated, Free: free, Err: err}
		if a, aerr := f.allocated(); aerr == nil {
			e.Allocated = a
		}
		if fr, ok := freeBytes(f.fd); ok {
			e.Free = fr
		}
		return 0, e
	}
	return 0, fmt.Errorf("device: allocating the %s of %s that are not allocated: %w", sizeString(missing), f.path, &os.PathError{Op: "fallocate", Path: f.path, Err: err})
}

// allocated is the bytes allocated to the file; callers hold f.mu.
func (f *File) allocated() (int64, error) {
	var st unix.Stat_t
	if err := unix.Fstat(f.fd, &st); err != nil {
		return 0, &os.PathError{Op: "fstat", Path: f.path, Err: err}
	}
	return st.Blocks * 512, nil
}

// freeBytes is the space free on the filesystem of fd for this process
// (root may use the blocks reserved for it). known is false when the
// filesystem does not say (statfs fails, or reports no blocks at all).
func freeBytes(fd int) (free int64, known bool) {
	var st unix.Statfs_t
	if err := retryEINTR(func() error { return unix.Fstatfs(fd, &st) }); err != nil || st.Blocks == 0 {
		return 0, false
	}
	unit := st.Frsize
	if unit <= 0 {
		unit = st.Bsize
	}
	if unit <= 0 {
		return 0, false
	}
	blocks := st.Bavail
	if os.Geteuid() == 0 {
		blocks = st.Bfree
	}
	if blocks > uint64(math.MaxInt64/unit) {
		return math.MaxInt64, true
	}
	return int64(blocks) * unit, true
}

// explainNoSpace turns ENOSPC and EDQUOT from I/O on a regular file into
// a *NoSpaceError, which says that it is the file's filesystem that is
// full.
func (f *File) explainNoSpace(err error) error {
	var errno unix.Errno
	if f.kind == kindRegular && errors.As(err, &errno) && (errno == unix.ENOSPC || errno == unix.EDQUOT) {
		return &NoSpaceError{Path: f.path, Err: errno}
	}
	return err
}

// sizeString renders a byte count for messages ("12.0 MiB", "512 B").
func sizeString(n int64) string {
	const unit = 1024
	if n < unit && n > -unit {
		return fmt.Sprintf("%d B", n)
	}
	v := float64(n)
	for _, u := range []string{"KiB", "MiB", "GiB", "TiB"} {
		v /= unit
		if math.Abs(v) < unit || u == "TiB" {
			return fmt.Sprintf("%.1f %s", v, u)
		}
	}
	return fmt.Sprintf("%d B", n)
}
