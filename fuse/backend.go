package fuse

// Backend is the block store served as MOUNTPOINT/disk.
//
// Its methods are called concurrently from many goroutines. Buffers passed
// to ReadAt and WriteAt belong to the caller and are only valid during the
// call. Requests are already clipped to [0, Size()).
type Backend interface {
	// ReadAt fills p from off: it returns len(p) or an error.
	ReadAt(p []byte, off int64) (int, error)
	// WriteAt writes p at off (any offset and length). When it returns
	// nil, the write is acknowledged to the application.
	WriteAt(p []byte, off int64) (int, error)
	// Sync is the durability point (fsync and fdatasync): every write
	// acknowledged before it was called must be durable when it returns nil.
	Sync() error
	// Discard makes [off, off+n) read as zeros afterwards.
	Discard(off, n int64) error
	// Size is the disk size in bytes; it must not change while mounted.
	Size() int64
}

// Waiter may be implemented by a Backend that can tell, cheaply and
// without blocking, whether a read or write may wait for a slow device
// (the backing HDD). Through FUSE over io_uring, such requests are answered
// from their own goroutine, so that the ring thread goes on serving others
// and the slow device sees the application's queue depth; the rest are
// answered on the ring thread. Without it, reads and writes are answered
// on the ring thread. It is a scheduling hint: a wrong answer costs speed,
// never correctness.
type Waiter interface {
	MayWait(write bool, off, n int64) bool
}
