// Package device is the narrow I/O interface between wbcache and the storage
// it runs on: the SSD cache file and the HDD backing file or block device.
//
// Everything the cache engine and the destager do to storage goes through
// Device, so tests can substitute an in-memory device that simulates process
// crashes and power cuts (Mem), or a wrapper that fails the Nth operation
// (Faulty). Real devices are regular files or block devices (Open), read
// and written with AlignedBuffer buffers when opened for O_DIRECT.
// HDDModel wraps any Device to charge spinning-disk time for benchmarks.
//
// Semantics every implementation keeps:
//   - ReadAt/WriteAt transfer the whole buffer or return an error; a short
//     transfer is an error (io.ErrUnexpectedEOF wrapped), never silent.
//   - Sync is fdatasync: everything written before it started is durable
//     when it returns nil. A failed Sync is reported, never retried here.
//   - Zero makes a range read as zeros (punch hole, BLKZEROOUT, or written
//     zeros as a fallback). It is not durable until the next Sync.
package device

import "errors"

// Device is a fixed-size random-access store.
type Device interface {
	ReadAt(p []byte, off int64) (int, error)
	WriteAt(p []byte, off int64) (int, error)
	// Sync makes all completed writes durable (fdatasync).
	Sync() error
	// Size is the device size in bytes; it does not change while open.
	Size() int64
	// Zero makes [off, off+n) read as zeros.
	Zero(off, n int64) error
	// Identity is a stable 16-byte stamp that tells this device apart from
	// another of the same size (see Open for how files and block devices
	// derive it).
	Identity() [16]byte
	Close() error
}

// Sentinel errors.
var (
	// ErrClosed is returned by operations on a closed device.
	ErrClosed = errors.New("device: closed")
	// ErrLocked means another process holds the device open exclusively.
	ErrLocked = errors.New("device: in use by another process")
	// ErrOutOfRange is returned for I/O beyond the device size.
	ErrOutOfRange = errors.New("device: I/O out of range")
	// ErrInjected is the error the fault injector returns.
	ErrInjected = errors.New("device: injected fault")
)
