package device

import (
	"sync"
	"time"
)

// Defaults for HDDModel, roughly a 7200 rpm SATA disk.
const (
	DefaultSeekTime       = 8 * time.Millisecond
	DefaultRotationalTime = 2 * time.Millisecond
	DefaultShortSkip      = 64 << 10
	DefaultBandwidth      = 170 << 20 // bytes per second
	DefaultSyncTime       = 500 * time.Microsecond
)

// HDDModel wraps a Device and charges each operation the time a spinning
// disk would take, in virtual time and without sleeping, so benchmarks can
// compare a drain rate with the disk's sequential bandwidth
// deterministically.
//
// The head sits at the end of the previous read, write or zero (offset 0
// at first). An operation starting there costs only its transfer time,
// bytes / Bandwidth. One starting less than ShortSkip bytes ahead also pays
// RotationalTime (the platter turns past the gap); any other start pays
// SeekTime. Zero is charged like a write of its length (BLKZEROOUT on a
// disk writes the zeros). Sync costs SyncTime and does not move the head.
// Operations that fail are not charged.
//
// Operations are passed to the wrapped device one at a time, as a single
// actuator serves them, so the charges follow the real order. Set the
// parameter fields before use; the methods are safe for concurrent use.
type HDDModel struct {
	SeekTime       time.Duration // full seek: backwards or far forwards
	RotationalTime time.Duration // short forward skip
	ShortSkip      int64         // forward gaps below this are short skips
	Bandwidth      float64       // sequential transfer rate, bytes/second
	SyncTime       time.Duration // cost of one Sync (cache flush)

	d     Device
	mu    sync.Mutex
	head  int64
	fixed time.Duration // seeks, skips and syncs
	bytes int64         // bytes transferred
	ops   HDDOps
}

// HDDOps counts what an HDDModel has charged for.
type HDDOps struct {
	Reads, Writes, Zeros, Syncs int64
	Seeks, ShortSkips           int64
	Bytes                       int64 // read, written and zeroed
}

var _ Device = (*HDDModel)(nil)

// NewHDDModel wraps d with the default parameters.
func NewHDDModel(d Device) *HDDModel {
	return &HDDModel{
		SeekTime:       DefaultSeekTime,
		RotationalTime: DefaultRotationalTime,
		ShortSkip:      DefaultShortSkip,
		Bandwidth:      DefaultBandwidth,
		SyncTime:       DefaultSyncTime,
		d:              d,
	}
}

// Elapsed returns the virtual time charged since creation or Reset.
func (h *HDDModel) Elapsed() time.Duration {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.fixed + time.Duration(float64(h.bytes)/h.Bandwidth*float64(time.Second))
}

// Reset zeroes the elapsed time and the counts and puts the head at 0.
func (h *HDDModel) Reset() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.head, h.fixed, h.bytes, h.ops = 0, 0, 0, HDDOps{}
}

// Ops returns the counts since creation or Reset.
func (h *HDDModel) Ops() HDDOps {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.ops
}

// SeqBandwidth returns the configured sequential bandwidth in bytes/second.
func (h *HDDModel) SeqBandwidth() float64 { return h.Bandwidth }

// Device returns the wrapped device.
func (h *HDDModel) Device() Device { return h.d }

// charge accounts a transfer of n bytes at off; callers hold h.mu.
func (h *HDDModel) charge(off, n int64) {
	switch gap := off - h.head; {
	case gap == 0:
	case gap > 0 && gap < h.ShortSkip:
		h.fixed += h.RotationalTime
		h.ops.ShortSkips++
	default:
		h.fixed += h.SeekTime
		h.ops.Seeks++
	}
	h.bytes += n
	h.ops.Bytes += n
	h.head = off + n
}

// ReadAt reads from the wrapped device and charges seek and transfer time.
func (h *HDDModel) ReadAt(p []byte, off int64) (int, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	n, err := h.d.ReadAt(p, off)
	if err == nil {
		h.ops.Reads++
		h.charge(off, int64(len(p)))
	}
	return n, err
}

// WriteAt writes to the wrapped device and charges seek and transfer time.
func (h *HDDModel) WriteAt(p []byte, off int64) (int, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	n, err := h.d.WriteAt(p, off)
	if err == nil {
		h.ops.Writes++
		h.charge(off, int64(len(p)))
	}
	return n, err
}

// Zero zeroes on the wrapped device, charged like a write of n bytes.
func (h *HDDModel) Zero(off, n int64) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	err := h.d.Zero(off, n)
	if err == nil {
		h.ops.Zeros++
		h.charge(off, n)
	}
	return err
}

// Sync syncs the wrapped device and charges SyncTime.
func (h *HDDModel) Sync() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	err := h.d.Sync()
	if err == nil {
		h.ops.Syncs++
		h.fixed += h.SyncTime
	}
	return err
}

// Size returns the wrapped device's size.
func (h *HDDModel) Size() int64 { return h.d.Size() }

// Identity returns the wrapped device's identity.
func (h *HDDModel) Identity() [16]byte { return h.d.Identity() }

// Close closes the wrapped device.
func (h *HDDModel) Close() error { return h.d.Close() }
