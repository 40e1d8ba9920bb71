package device

import (
	"fmt"
	"strings"
	"sync/atomic"
)

// Op is a bitmask of the kinds of operation Faulty counts and fails.
type Op uint

// Operation kinds. Close, Size and Identity are never counted or failed.
const (
	OpRead Op = 1 << iota
	OpWrite
	OpSync
	OpZero

	OpAll = OpRead | OpWrite | OpSync | OpZero
)

// String names the kinds in o, e.g. "write|sync".
func (o Op) String() string {
	var parts []string
	for _, k := range []struct {
		op   Op
		name string
	}{{OpRead, "read"}, {OpWrite, "write"}, {OpSync, "sync"}, {OpZero, "zero"}} {
		if o&k.op != 0 {
			parts = append(parts, k.name)
		}
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, "|")
}

// Faulty wraps a Device and makes chosen operations fail with an error
// wrapping ErrInjected. A failed operation is not passed to the wrapped
// device at all: a failed write writes nothing.
//
// It counts the operations whose kind is in a mask (OpAll at first) so a
// test can run a workload once unharmed, read Count, and then rerun it
// failing each of those operations in turn:
//
//	f := NewFaulty(dev)
//	f.Track(OpWrite | OpSync)
//	run(f)
//	total := f.Count()
//	for n := range total {
//		f := NewFaulty(freshDev())
//		f.FailAt(n, OpWrite|OpSync, false)
//		run(f) // must cope with the fault
//	}
//
// Faulty is safe for concurrent use; with concurrent operations, which one
// is "the n-th" is whichever is counted n-th.
type Faulty struct {
	d        Device
	cfg      atomic.Pointer[faultConfig]
	pred     atomic.Pointer[func(op Op, off, n int64) bool]
	injected atomic.Int64
}

// faultConfig is swapped in whole so operations never see a half-updated
// mask, target and counter.
type faultConfig struct {
	mask   Op
	at     int64 // index of the counted op to fail; -1 when disarmed
	sticky bool
	count  *atomic.Int64
}

var _ Device = (*Faulty)(nil)

// NewFaulty wraps d. It injects nothing until FailAt or FailIf is called
// and counts every read, write, sync and zero.
func NewFaulty(d Device) *Faulty {
	f := &Faulty{d: d}
	f.cfg.Store(&faultConfig{mask: OpAll, at: -1, count: new(atomic.Int64)})
	return f
}

// FailAt makes the n-th (0-based) operation counted from now among the
// kinds in ops fail; with sticky, every counted operation after it fails
// too. It resets Count to zero and makes ops the counted kinds. A negative
// n counts without failing anything.
func (f *Faulty) FailAt(n int64, ops Op, sticky bool) {
	f.cfg.Store(&faultConfig{mask: ops, at: max(n, -1), sticky: sticky, count: new(atomic.Int64)})
}

// Track makes ops the counted kinds and resets Count to zero, without
// arming a fault. It is FailAt(-1, ops, false).
func (f *Faulty) Track(ops Op) { f.FailAt(-1, ops, false) }

// FailIf makes every operation for which pred returns true fail, whether
// or not its kind is counted. pred gets the kind, the offset and the length
// (0 and 0 for Sync) and must be safe for concurrent calls. FailIf(nil)
// removes the predicate.
func (f *Faulty) FailIf(pred func(op Op, off, n int64) bool) {
	if pred == nil {
		f.pred.Store(nil)
		return
	}
	f.pred.Store(&pred)
}

// Disarm removes every fault set by FailAt or FailIf. Counting goes on.
func (f *Faulty) Disarm() {
	f.FailIf(nil)
	c := f.cfg.Load()
	f.cfg.Store(&faultConfig{mask: c.mask, at: -1, count: c.count})
}

// Count returns how many operations of the counted kinds have been issued
// since NewFaulty, FailAt or Track, including those that were failed.
func (f *Faulty) Count() int64 { return f.cfg.Load().count.Load() }

// Injected returns how many operations have been failed on purpose.
func (f *Faulty) Injected() int64 { return f.injected.Load() }

// Device returns the wrapped device.
func (f *Faulty) Device() Device { return f.d }

// fault counts the operation and decides whether it fails.
func (f *Faulty) fault(op Op, off, n int64) error {
	c := f.cfg.Load()
	if c.mask&op != 0 {
		i := c.count.Add(1) - 1
		if c.at >= 0 && (i == c.at || (c.sticky && i > c.at)) {
			f.injected.Add(1)
			return fmt.Errorf("%w: %s #%d (%d bytes at offset %d)", ErrInjected, op, i, n, off)
		}
	}
	if p := f.pred.Load(); p != nil && (*p)(op, off, n) {
		f.injected.Add(1)
		return fmt.Errorf("%w: %s of %d bytes at offset %d", ErrInjected, op, n, off)
	}
	return nil
}

// ReadAt reads from the wrapped device unless the read is made to fail.
func (f *Faulty) ReadAt(p []byte, off int64) (int, error) {
	if err := f.fault(OpRead, off, int64(len(p))); err != nil {
		return 0, err
	}
	return f.d.ReadAt(p, off)
}

// WriteAt writes to the wrapped device unless the write is made to fail,
// in which case nothing is written.
func (f *Faulty) WriteAt(p []byte, off int64) (int, error) {
	if err := f.fault(OpWrite, off, int64(len(p))); err != nil {
		return 0, err
	}
	return f.d.WriteAt(p, off)
}

// Sync syncs the wrapped device unless the sync is made to fail.
func (f *Faulty) Sync() error {
	if err := f.fault(OpSync, 0, 0); err != nil {
		return err
	}
	return f.d.Sync()
}

// Zero zeroes on the wrapped device unless the call is made to fail.
func (f *Faulty) Zero(off, n int64) error {
	if err := f.fault(OpZero, off, n); err != nil {
		return err
	}
	return f.d.Zero(off, n)
}

// Size returns the wrapped device's size.
func (f *Faulty) Size() int64 { return f.d.Size() }

// Identity returns the wrapped device's identity.
func (f *Faulty) Identity() [16]byte { return f.d.Identity() }

// Close closes the wrapped device; it is never failed.
func (f *Faulty) Close() error { return f.d.Close() }
