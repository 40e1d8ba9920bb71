package flush

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wbcache/wbcache/blockcache"
)

const blockSize = blockcache.BlockSize

// ErrStopped is returned by FlushAll when Stop stops the destager under it.
var ErrStopped = errors.New("flush: destager stopped")

// Progress is reported by FlushAll and Stats.
type Progress struct {
	Dirty          int     // dirty blocks now
	DestagedBlocks uint64  // blocks written back since New
	Runs           uint64  // runs written since New
	BytesPerSec    float64 // destage rate over the last 10 s (a current rate, not an average)
	Errors         uint64  // backing (and cache read) errors since New
	BackingErrors  uint64  // the part of Errors from the backing device (writes and syncs)
	LastError      string  // the last such error, "" if none yet
	// Backoff is the current error back-off delay: non-zero while the last
	// destage attempt failed and the destager waits to retry.
	Backoff time.Duration
}

// Destager writes dirty blocks of a cache back to its backing device.
//
// Its methods are safe for concurrent use. Stop it before closing the
// cache.
type Destager struct {
	c   *blockcache.Cache
	log *slog.Logger
	o   options

	mu  sync.Mutex
	pol Policy // normalised
	cur *loop  // the running destage loop, if any
	bg  bool   // Start was called (and Stop not since)

	flushers atomic.Int32 // FlushAll calls in progress: destage flat out
	live     atomic.Int32 // goroutines running (for leak checks)
	// noGapReads: gaps are not read from the backing device (SetGapReads).
	noGapReads atomic.Bool

	stats counters

	evMu sync.Mutex
	ev   chan struct{} // closed (and replaced) after every batch
}

// New makes a destager for c with policy p (zero fields take defaults);
// Start starts it. log may be nil.
func New(c *blockcache.Cache, p Policy, log *slog.Logger) *Destager {
	return newDestager(c, p, log, options{})
}

func newDestager(c *blockcache.Cache, p Policy, log *slog.Logger, o options) *Destager {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	o = o.withDefaults()
	d := &Destager{c: c, log: log, o: o, pol: p.normalize(), ev: make(chan struct{})}
	d.noGapReads.Store(o.noGapReads)
	d.stats.meter.start = o.now()
	return d
}

// SetGapReads turns reading gaps from the backing device (gapread.go) on
// or off; it is on by default. The cost model behind it assumes a disk
// that seeks: over one that does not (an SSD), the reads buy nothing.
func (d *Destager) SetGapReads(on bool) { d.noGapReads.Store(!on) }

// GapReads reports whether gaps are read from the backing device.
func (d *Destager) GapReads() bool { return !d.noGapReads.Load() }

// Start starts background destaging under the policy. It is a no-op if
// already started.
func (d *Destager) Start() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.bg {
		return
	}
	d.bg = true
	d.acquireLocked()
	pol := d.pol
	d.log.Info("destager started", "low_watermark_pct", pol.LowWatermark, "high_watermark_pct", pol.HighWatermark,
		"max_dirty_age", pol.MaxDirtyAge, "workers", pol.Workers, "idle_rate_mib_s", pol.IdleRate, "max_run_bytes", pol.MaxRun)
}

// acquireLocked returns the running loop, starting one if there is none
// (or the last one died of a cache failure). Caller holds d.mu.
func (d *Destager) acquireLocked() *loop {
	if d.cur != nil && d.cur.dead() {
		d.cur.stop() // already exited: returns at once
		d.cur = nil
	}
	if d.cur == nil {
		d.cur = newLoop(d)
	}
	return d.cur
}

// Stop lets the runs in flight finish (their blocks are synced and marked
// clean, or left dirty if they were not written), then stops every
// goroutine of the destager. A FlushAll in progress returns ErrStopped.
// Start may be called again afterwards.
func (d *Destager) Stop() {
	d.mu.Lock()
	l := d.cur
	wasBG := d.bg
	d.cur, d.bg = nil, false
	d.mu.Unlock()
	if l != nil {
		l.stop()
	}
	if wasBG {
		d.log.Info("destager stopped")
	}
}

// SetPolicy changes the policy while running (zero fields take defaults).
// A change of Workers takes effect at the next batch. It does not persist
// the policy: see Policy.Settings and Cache.SetSettings.
func (d *Destager) SetPolicy(p Policy) {
	d.mu.Lock()
	d.pol = p.normalize()
	l := d.cur
	d.mu.Unlock()
	if l != nil {
		l.wake()
	}
}

// Policy returns the policy in force (defaults filled in).
func (d *Destager) Policy() Policy {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.pol
}

// FlushAll writes back until nothing is dirty, whatever the watermarks,
// and returns nil once it has seen DirtyCount() == 0 (writes arriving
// meanwhile are fine: they are written back too, and FlushAll returns at
// the first instant nothing is dirty). It calls progress (if not nil) every
// 200 ms and once at the end. It works whether or not Start was called:
// without Start it runs the destage loop itself for its duration.
//
// Backing errors do not end it: it keeps retrying with back-off until ctx
// is done, then returns ctx's error wrapped with the last destage error.
// It returns the cache's error if the cache fails or is closed, and
// ErrStopped if Stop is called.
func (d *Destager) FlushAll(ctx context.Context, progress func(Progress)) error {
	d.flushers.Add(1)
	d.mu.Lock()
	l := d.acquireLocked()
	d.mu.Unlock()
	defer func() {
		d.flushers.Add(-1)
		d.mu.Lock()
		last := d.cur == l && !d.bg && d.flushers.Load() == 0
		if last {
			d.cur = nil
		}
		d.mu.Unlock()
		if last {
			l.stop() // the runs in flight finish first
		}
		if progress != nil {
			progress(d.Stats())
		}
	}()
	l.wake()
	errs0 := d.stats.errors.Load()
	tick := d.o.after(progressEvery)
	for {
		ev := d.changed()
		if d.c.Destageable() == 0 {
			return d.lostError()
		}
		select {
		case <-ctx.Done():
			err := ctx.Err()
			d.stats.mu.Lock()
			last, backoff := d.stats.lastErr, d.stats.backoff
			d.stats.mu.Unlock()
			if last != nil && (backoff > 0 || d.stats.errors.Load() != errs0) {
				return fmt.Errorf("%w (last destage error: %w)", err, last)
			}
			return err
		case <-l.done:
			if d.c.Destageable() == 0 {
				return d.lostError()
			}
			if l.fatal != nil {
				return l.fatal
			}
			return ErrStopped
		case <-ev:
		case <-tick:
			if progress != nil {
				progress(d.Stats())
			}
			tick = d.o.after(progressEvery)
		}
	}
}

// ErrLostBlocks: FlushAll wrote back every block it could, but some dirty
// blocks are lost (their cache slots fail their checksums); the backing
// device holds older versions of them.
var ErrLostBlocks = errors.New("dirty blocks lost")

// lostError reports the lost dirty blocks left once every other one is
// written back, or nil.
func (d *Destager) lostError() error {
	lost := d.c.LostBlocks()
	if len(lost) == 0 {
		return nil
	}
	return fmt.Errorf("%w: %d blocks could not be written back, their cache slots fail their checksums: %s; "+
		"they read as errors until rewritten or discarded", ErrLostBlocks, len(lost), blockcache.FormatLBAs(lost, 20))
}

// Stats returns the current progress counters.
func (d *Destager) Stats() Progress {
	p := Progress{
		Dirty:          d.c.DirtyCount(),
		DestagedBlocks: d.stats.blocks.Load(),
		Runs:           d.stats.runs.Load(),
		Errors:         d.stats.errors.Load(),
		BackingErrors:  d.stats.backingErrors.Load(),
	}
	now := d.o.now()
	d.stats.mu.Lock()
	p.BytesPerSec = d.stats.meter.rate(now)
	if d.stats.lastErr != nil {
		p.LastError = d.stats.lastErr.Error()
	}
	p.Backoff = d.stats.backoff
	d.stats.mu.Unlock()
	return p
}

// changed returns a channel closed after the next batch ends.
func (d *Destager) changed() <-chan struct{} {
	d.evMu.Lock()
	defer d.evMu.Unlock()
	return d.ev
}

func (d *Destager) signal() {
	d.evMu.Lock()
	close(d.ev)
	d.ev = make(chan struct{})
	d.evMu.Unlock()
}
