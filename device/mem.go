package device

import (
	"math/rand/v2"
	"sync"
	"sync/atomic"
)

// tornSectorSize is the granularity at which PowerCut tears a write: a
// disk persists whole 512-byte sectors or nothing of them.
const tornSectorSize = 512

// Mem is an in-memory Device for tests that simulates crashes. Reads see
// every write; alongside the current image it keeps an undo record of each
// write and Zero since the last successful Sync, from which CrashProcess
// and PowerCut build the image a restarted process would find.
//
// Mem is safe for concurrent use.
type Mem struct {
	mu      sync.Mutex
	id      [16]byte
	image   []byte     // what reads return: durable image plus pending
	pending []memWrite // unsynced writes, oldest first
	closed  bool
	stats   MemStats
	partial atomic.Bool // NewRegion gives a region that writes only what each Update changes
}

// SetPartialUpdates makes the regions opened on m from now on write only
// the bytes each Update changes, each Update one write (a region of a
// mapped file changes only those bytes too), and report themselves
// mapped (see Mapped): code over m then takes its mapped paths.
func (m *Mem) SetPartialUpdates(on bool) { m.partial.Store(on) }

// PartialUpdates reports what SetPartialUpdates set.
func (m *Mem) PartialUpdates() bool { return m.partial.Load() }

// memWrite is one unsynced WriteAt or Zero.
type memWrite struct {
	off  int64
	old  []byte // the image's bytes before the write, for undoing it
	data []byte // what was written; nil for Zero
}

// MemStats counts the operations a Mem has served.
type MemStats struct {
	Reads, Writes, Zeros, Syncs int64
	BytesRead, BytesWritten     int64 // BytesWritten excludes Zero
}

var _ Device = (*Mem)(nil)

// NewMem returns a zero-filled Mem of size bytes with the given identity.
// It panics if size is negative.
func NewMem(size int64, identity [16]byte) *Mem {
	if size < 0 {
		panic("device: NewMem: negative size")
	}
	return &Mem{id: identity, image: make([]byte, size)}
}

// Size returns the device size in bytes.
func (m *Mem) Size() int64 { return int64(len(m.image)) }

// Identity returns the identity given to NewMem.
func (m *Mem) Identity() [16]byte { return m.id }

// ReadAt copies len(p) bytes at off into p.
func (m *Mem) ReadAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.check("read", off, int64(len(p))); err != nil {
		return 0, err
	}
	m.stats.Reads++
	m.stats.BytesRead += int64(len(p))
	return copy(p, m.image[off:]), nil
}

// WriteAt writes p at off. It is visible to reads at once and durable at
// the next Sync.
func (m *Mem) WriteAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.check("write", off, int64(len(p))); err != nil {
		return 0, err
	}
	m.stats.Writes++
	m.stats.BytesWritten += int64(len(p))
	m.record(off, append([]byte(nil), p...), int64(len(p)))
	return len(p), nil
}

// Zero makes [off, off+n) read as zeros; like a write, it is durable at the
// next Sync and may be lost or torn by a PowerCut before it.
func (m *Mem) Zero(off, n int64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.check("zero", off, n); err != nil {
		return err
	}
	m.stats.Zeros++
	m.record(off, nil, n)
	return nil
}

// record applies a write of data (zeros if nil) of n bytes at off to the
// image and logs it as pending. Callers hold m.mu.
func (m *Mem) record(off int64, data []byte, n int64) {
	if n == 0 {
		return
	}
	dst := m.image[off : off+n]
	m.pending = append(m.pending, memWrite{off: off, old: append([]byte(nil), dst...), data: data})
	if data == nil {
		clear(dst)
	} else {
		copy(dst, data)
	}
}

// ReadDurable copies into p the len(p) bytes at off as they were at the
// last Sync: what the device holds whatever a power cut does now. It
// copies no more than p, whatever the device's size.
func (m *Mem) ReadDurable(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := checkRange("read durable", off, int64(len(p)), int64(len(m.image))); err != nil {
		return 0, err
	}
	end := off + int64(len(p))
	copy(p, m.image[off:end])
	for i := len(m.pending) - 1; i >= 0; i-- {
		w := m.pending[i]
		from, to := max(off, w.off), min(end, w.off+int64(len(w.old)))
		if from < to {
			copy(p[from-off:to-off], w.old[from-w.off:to-w.off])
		}
	}
	return len(p), nil
}

// Sync makes every write so far durable.
func (m *Mem) Sync() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return ErrClosed
	}
	m.stats.Syncs++
	m.pending = nil
	return nil
}

// Close makes later operations fail with ErrClosed. CrashProcess and
// PowerCut still work on a closed Mem: closing does not make data durable.
func (m *Mem) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return ErrClosed
	}
	m.closed = true
	return nil
}

// Unsynced returns how many writes and Zero calls happened since the last
// Sync.
func (m *Mem) Unsynced() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.pending)
}

// Stats returns the operation counts so far.
func (m *Mem) Stats() MemStats {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.stats
}

// CrashProcess returns a new Mem holding what a restarted process would
// find after this process died: everything written, synced or not, since
// the kernel's page cache survives a process crash. The receiver is left
// as it was.
func (m *Mem) CrashProcess() *Mem { return m.CrashProcessInto(nil) }

// CrashProcessInto is CrashProcess into dst's memory when dst (a Mem that
// nothing uses any more, or nil) is of the same size: tests that take an
// image per crash then reuse a buffer instead of allocating one.
func (m *Mem) CrashProcessInto(dst *Mem) *Mem {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.imageInto(dst)
}

// imageInto returns an open Mem with nothing pending whose image is a
// copy of m's: dst reset, if it can take it, else a new one. Callers
// hold m.mu; nothing else may use dst.
func (m *Mem) imageInto(dst *Mem) *Mem {
	if dst == nil || dst == m || len(dst.image) != len(m.image) {
		return &Mem{id: m.id, image: append([]byte(nil), m.image...)}
	}
	dst.mu.Lock()
	defer dst.mu.Unlock()
	copy(dst.image, m.image)
	dst.id, dst.pending, dst.closed, dst.stats = m.id, nil, false, MemStats{}
	return dst
}

// PowerCut returns a new Mem holding what the device might contain after
// losing power now: the durable image, then each unsynced write replayed
// in order and, chosen independently with probability 1/3 each, kept whole,
// dropped, or torn. A torn write keeps a random subset of its sectors: the
// 512-byte-aligned ranges of the device it touches, each kept with
// probability 1/2. The receiver is left as it was.
func (m *Mem) PowerCut(rng *rand.Rand) *Mem { return m.PowerCutInto(nil, rng) }

// PowerCutInto is PowerCut into dst's memory, as CrashProcessInto.
func (m *Mem) PowerCutInto(dst *Mem, rng *rand.Rand) *Mem {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := m.imageInto(dst)
	img := out.image
	for i := len(m.pending) - 1; i >= 0; i-- {
		w := m.pending[i]
		copy(img[w.off:], w.old)
	}
	for _, w := range m.pending {
		switch rng.IntN(3) {
		case 0: // kept whole
			w.apply(img, w.off, w.off+int64(len(w.old)))
		case 1: // dropped
		case 2: // torn
			end := w.off + int64(len(w.old))
			for s := w.off - w.off%tornSectorSize; s < end; s += tornSectorSize {
				if rng.IntN(2) == 0 {
					w.apply(img, max(s, w.off), min(s+tornSectorSize, end))
				}
			}
		}
	}
	return out
}

// apply copies the part of w covering device range [from, to) into img.
func (w memWrite) apply(img []byte, from, to int64) {
	dst := img[from:to]
	if w.data == nil {
		clear(dst)
		return
	}
	copy(dst, w.data[from-w.off:to-w.off])
}

// check validates an operation on [off, off+n); callers hold m.mu.
func (m *Mem) check(op string, off, n int64) error {
	if m.closed {
		return ErrClosed
	}
	return checkRange(op, off, n, int64(len(m.image)))
}
