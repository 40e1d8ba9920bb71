package device

import (
	"fmt"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// zeroChunk is the largest single write the zero-filling fallback issues.
const zeroChunk = 1 << 20

// zeroBuf is a shared, BlockSize-aligned buffer of zeros for the fallback.
// It is only ever read (pwrite copies out of it), so sharing is safe.
var zeroBuf = sync.OnceValue(func() []byte { return AlignedBuffer(zeroChunk) })

// Zero makes [off, off+n) read as zeros. A regular file gets a hole punched
// (fallocate PUNCH_HOLE|KEEP_SIZE), a block device gets BLKZEROOUT; where the
// filesystem or driver cannot do that, zeros are written in chunks of at
// most 1 MiB from an aligned buffer. With Options.Direct the fallback needs
// off and n to be multiples of BlockSize. Zero is not durable until Sync.
func (f *File) Zero(off, n int64) error {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if err := f.check("zero", off, n, true); err != nil {
		return err
	}
	if n == 0 {
		return nil
	}
	if f.kind == kindBlock {
		if blkZeroOut(f.fd, off, n) == nil {
			return nil
		}
		// BLKZEROOUT can fail for unaligned ranges or drivers without
		// support; writing zeros always works (or reports a real error).
	} else {
		err := retryEINTR(func() error {
			return unix.Fallocate(f.fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
		})
		if err == nil {
			return nil
		}
		if err != unix.EOPNOTSUPP && err != unix.ENOSYS {
			return fmt.Errorf("device: zero %s: punch hole of %d bytes at offset %d: %w", f.path, n, off, err)
		}
	}
	return f.writeZeros(f.fd, off, n)
}

// writeZeros writes zeros over [off, off+n) through descriptor fd (f's
// own, or an O_DIRECT one of the same file): the Zero fallback and
// WriteZerosAhead. Callers hold f.mu.
func (f *File) writeZeros(fd int, off, n int64) error {
	buf := zeroBuf()
	for n > 0 {
		chunk := min(n, int64(len(buf)))
		if _, err := f.pwriteAll(fd, buf[:chunk], off); err != nil {
			return err
		}
		off += chunk
		n -= chunk
	}
	return nil
}

// blkZeroOut issues the BLKZEROOUT ioctl for [off, off+n).
func blkZeroOut(fd int, off, n int64) error {
	r := [2]uint64{uint64(off), uint64(n)}
	return retryEINTR(func() error {
		_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.BLKZEROOUT, uintptr(unsafe.Pointer(&r)))
		if errno != 0 {
			return errno
		}
		return nil
	})
}
