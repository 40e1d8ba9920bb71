package device

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// Options controls how Open opens a file or block device.
type Options struct {
	// Direct opens with O_DIRECT, bypassing the page cache. Every buffer,
	// offset and length passed to ReadAt/WriteAt must then be a multiple of
	// BlockSize (use AlignedBuffer), or the kernel rejects the I/O.
	Direct bool
	// Exclusive takes a non-blocking flock(LOCK_EX) on the opened file, so a
	// second wbcache process opening the same path fails with ErrLocked.
	// The lock is released by Close (or by the process exiting).
	Exclusive bool
	// ReadOnly opens with O_RDONLY; WriteAt and Zero then fail.
	ReadOnly bool
}

// kind is what sort of file a File wraps.
type kind uint8

const (
	kindRegular kind = iota
	kindBlock
)

// File is a Device backed by a regular file or a block device. It is safe
// for concurrent use: I/O calls run in parallel, and Close waits for the
// ones in flight before releasing the descriptor, so a closed descriptor
// number is never reused by a late I/O.
type File struct {
	path     string
	kind     kind
	readOnly bool
	direct   bool
	size     int64
	identity [16]byte

	mu     sync.RWMutex // read-held by I/O, write-held by Close
	fd     int
	closed bool
}

var _ Device = (*File)(nil)

// Open opens path, which must be a regular file or a block device, as a
// Device. The size is fixed at open time: the stat size for a regular file,
// BLKGETSIZE64 for a block device.
//
// The Identity of the result is derived as follows:
//   - regular file: the first 16 bytes of SHA-256 over "file", st_dev and
//     st_ino (little-endian uint64s). Copying a backing image with cp
//     therefore gives a different identity; that is intended, since the
//     cache refuses a backing it was not formatted with.
//   - block device: SHA-256 over "blk", a hardware or volume identifier read
//     from sysfs (/sys/dev/block/MAJ:MIN/wwid, device/serial, device/wwid or
//     dm/uuid, whichever exists first; for a partition, the parent disk's
//     identifier plus the partition number and start sector), falling back
//     to what a stacked device stacks on (a loop device: the filesystem ID
//     and inode of its backing file, its offset and size limit; a
//     device-mapper device without a UUID: its name), then to "rdev" and
//     the device number, and finally the size (see identity.go). A disk
//     with a serial keeps its identity across reboots and re-enumeration;
//     a loop device keeps it as long as it is attached to the same file.
func Open(path string, opts Options) (*File, error) {
	// Stat first so a directory, FIFO, ... gets a clear error rather than
	// EISDIR from open or, for a FIFO opened read-only, a hang.
	var st unix.Stat_t
	if err := retryEINTR(func() error { return unix.Stat(path, &st) }); err != nil {
		return nil, &os.PathError{Op: "stat", Path: path, Err: err}
	}
	if err := checkKind(path, st.Mode); err != nil {
		return nil, err
	}

	flags := unix.O_CLOEXEC | unix.O_NONBLOCK
	if opts.ReadOnly {
		flags |= unix.O_RDONLY
	} else {
		flags |= unix.O_RDWR
	}
	if opts.Direct {
		flags |= unix.O_DIRECT
	}
	var fd int
	err := retryEINTR(func() (err error) {
		fd, err = unix.Open(path, flags, 0)
		return err
	})
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	f, err := setup(fd, path, opts)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	return f, nil
}

// setup checks and configures a freshly opened descriptor and builds the
// File around it. The caller closes fd if setup fails.
func setup(fd int, path string, opts Options) (*File, error) {
	// Re-check on the descriptor: the path may have changed since Stat.
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, &os.PathError{Op: "fstat", Path: path, Err: err}
	}
	if err := checkKind(path, st.Mode); err != nil {
		return nil, err
	}
	// O_NONBLOCK only guarded the open; it means nothing for disk I/O.
	if err := unix.SetNonblock(fd, false); err != nil {
		return nil, &os.PathError{Op: "fcntl", Path: path, Err: err}
	}
	if opts.Exclusive {
		err := retryEINTR(func() error { return unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB) })
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, &lockedError{path: path}
		}
		if err != nil {
			return nil, &os.PathError{Op: "flock", Path: path, Err: err}
		}
	}

	f := &File{path: path, fd: fd, readOnly: opts.ReadOnly, direct: opts.Direct}
	if st.Mode&unix.S_IFMT == unix.S_IFBLK {
		f.kind = kindBlock
		size, err := unix.IoctlGetUint64(fd, unix.BLKGETSIZE64)
		if err != nil {
			return nil, &os.PathError{Op: "ioctl BLKGETSIZE64", Path: path, Err: err}
		}
		f.size = int64(size)
		f.identity = blockIdentity(st.Rdev, f.size)
	} else {
		f.kind = kindRegular
		f.size = st.Size
		f.identity = fileIdentity(filesystemID(fd, st.Dev), st.Ino)
	}
	return f, nil
}

// checkKind refuses anything but a regular file or a block device.
func checkKind(path string, mode uint32) error {
	var what string
	switch mode & unix.S_IFMT {
	case unix.S_IFREG, unix.S_IFBLK:
		return nil
	case unix.S_IFDIR:
		what = "a directory"
	case unix.S_IFCHR:
		what = "a character device"
	case unix.S_IFIFO:
		what = "a FIFO"
	case unix.S_IFSOCK:
		what = "a socket"
	case unix.S_IFLNK:
		what = "a symbolic link"
	default:
		what = fmt.Sprintf("of unknown file type %#o", mode&unix.S_IFMT)
	}
	return fmt.Errorf("device: %s is %s, not a regular file or block device", path, what)
}

// lockedError reports that another process holds the exclusive lock.
type lockedError struct{ path string }

func (e *lockedError) Error() string {
	return "device: " + e.path + ": another wbcache process is using it (exclusive lock held)"
}

func (e *lockedError) Unwrap() error { return ErrLocked }

// Create creates a new regular file at path with mode 0600 and size bytes
// (sparse: no blocks are allocated). It fails if path already exists.
func Create(path string, size int64) error {
	if size < 0 {
		return fmt.Errorf("device: create %s: negative size %d", path, size)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	if err := f.Close(); err != nil {
		os.Remove(path)
		return err
	}
	return nil
}

// CreateAllocated is Create with the file's blocks reserved (see
// Reserve): a cache file must never hit ENOSPC in the middle of a
// write-back, and writes into reserved blocks are cheaper than into holes.
// Where the filesystem cannot reserve, it falls back to a sparse file. If
// the filesystem lacks the space, the file is removed and the error is a
// *NoSpaceError.
func CreateAllocated(path string, size int64) error {
	if err := Create(path, size); err != nil {
		return err
	}
	f, err := Open(path, Options{})
	if err == nil {
		_, err = f.Reserve()
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		os.Remove(path)
		return err
	}
	return nil
}

// Path returns the path the File was opened with.
func (f *File) Path() string { return f.path }

// Size returns the device size in bytes, fixed when it was opened.
func (f *File) Size() int64 { return f.size }

// Identity returns the stamp derived at Open (see Open for the recipe).
func (f *File) Identity() [16]byte { return f.identity }

// ReadAt reads len(p) bytes at off, retrying partial reads until the whole
// buffer is filled. A read that ends early (the file shrank underneath us)
// returns an error wrapping io.ErrUnexpectedEOF.
func (f *File) ReadAt(p []byte, off int64) (int, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if err := f.check("read", off, int64(len(p)), false); err != nil {
		return 0, err
	}
	done := 0
	for done < len(p) {
		n, err := unix.Pread(f.fd, p[done:], off+int64(done))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return done, f.ioError("read", off, len(p), err)
		}
		if n == 0 {
			return done, f.ioError("read", off, len(p), io.ErrUnexpectedEOF)
		}
		done += n
	}
	return done, nil
}

// WriteAt writes all of p at off, retrying partial writes. A write that
// makes no progress returns an error wrapping io.ErrUnexpectedEOF.
// Direct reports whether f was opened O_DIRECT (buffers, offsets and
// lengths must then be aligned to BlockSize).
func (f *File) Direct() bool { return f.direct }

func (f *File) WriteAt(p []byte, off int64) (int, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if err := f.check("write", off, int64(len(p)), true); err != nil {
		return 0, err
	}
	return f.pwriteAll(f.fd, p, off)
}

// pwriteAll is WriteAt to descriptor fd (f's own, or another one of the
// same file) without locking or checks; callers hold f.mu.
func (f *File) pwriteAll(fd int, p []byte, off int64) (int, error) {
	done := 0
	for done < len(p) {
		n, err := unix.Pwrite(fd, p[done:], off+int64(done))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return done, f.ioError("write", off, len(p), err)
		}
		if n == 0 {
			return done, f.ioError("write", off, len(p), io.ErrUnexpectedEOF)
		}
		done += n
	}
	return done, nil
}

// Sync makes completed writes durable with fdatasync.
func (f *File) Sync() error {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if f.closed {
		return ErrClosed
	}
	if err := retryEINTR(func() error { return unix.Fdatasync(f.fd) }); err != nil {
		return &os.PathError{Op: "fdatasync", Path: f.path, Err: err}
	}
	return nil
}

// Close releases the descriptor (and with it any Exclusive lock) after the
// I/O in flight finishes. Later calls, including Close, return ErrClosed.
func (f *File) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return ErrClosed
	}
	f.closed = true
	if err := unix.Close(f.fd); err != nil {
		return &os.PathError{Op: "close", Path: f.path, Err: err}
	}
	return nil
}

// check validates an operation on [off, off+n); callers hold f.mu.
func (f *File) check(op string, off, n int64, write bool) error {
	if f.closed {
		return ErrClosed
	}
	if write && f.readOnly {
		return fmt.Errorf("device: %s %s: opened read-only: %w", op, f.path, fs.ErrPermission)
	}
	return checkRange(op, off, n, f.size)
}

// checkRange returns an error wrapping ErrOutOfRange unless [off, off+n)
// lies within [0, size). It is written to avoid overflow for huge values.
func checkRange(op string, off, n, size int64) error {
	if off < 0 || n < 0 || off > size || n > size-off {
		return fmt.Errorf("%w: %s of %d bytes at offset %d on a device of %d bytes",
			ErrOutOfRange, op, n, off, size)
	}
	return nil
}

func (f *File) ioError(op string, off int64, n int, err error) error {
	return fmt.Errorf("device: %s %s: %d bytes at offset %d: %w", op, f.path, n, off, f.explainNoSpace(err))
}

// retryEINTR calls fn until it returns something other than EINTR.
func retryEINTR(fn func() error) error {
	for {
		if err := fn(); err != unix.EINTR {
			return err
		}
	}
}
