package flush

import (
	"time"

	"github.com/wbcache/wbcache/blockcache"
)

// Internal tunables. Tests shrink some of them through options.
const (
	// A backing sync covers at most this many runs or bytes; CLEAN records
	// for them are journaled after it.
	defaultSyncRuns  = 64
	defaultSyncBytes = 16 << 20
	// While foreground I/O is busy a batch is at most this many runs.
	busySyncRuns = 4
	// After a busy batch the destager pauses at least this long (and at
	// least as long as the batch took: a 50 % duty cycle).
	minBusyPause = 10 * time.Millisecond
	// How often the scheduler re-checks the dirty level when idle, and how
	// often it samples foreground activity (Cache.Stats is O(slots)).
	pollInterval = 200 * time.Millisecond
	busyInterval = 500 * time.Millisecond
	// Pressure from a blocked writer keeps the destager at full speed
	// this long.
	pressureHold = time.Second
	// While foreground I/O is busy, a batch whose blocks' records are not
	// durable yet waits this long for a sync the cache makes anyway (a
	// checkpoint, a reclaim, a client's fsync) before Pin syncs for it, so
	// the destager adds at most about one cache sync per this interval.
	syncPatience = time.Second
	// A sweep that could pin nothing (blocks being discarded or destaged
	// by someone else) waits this long before the next one.
	retryPause = 10 * time.Millisecond
	// Error back-off: first delay, doubling up to the maximum.
	minBackoff = 100 * time.Millisecond
	maxBackoff = 10 * time.Second
	// FlushAll calls its progress callback this often.
	progressEvery = 200 * time.Millisecond
	// Rate meter window and bucket size.
	rateWindow = 10 * time.Second
	rateBucket = time.Second
)

// options are the destager's test seams: the clock, batch sizes and hooks
// between the steps of a destage. The zero value means production
// behaviour.
type options struct {
	now   func() time.Time
	after func(time.Duration) <-chan time.Time

	syncRuns  int // runs per backing sync (default defaultSyncRuns)
	syncBytes int // bytes per backing sync (default defaultSyncBytes)
	// noGapReads: start with gap reads off (Destager.SetGapReads), for
	// tests that count runs of sparse blocks.
	noGapReads bool

	// Hooks, called from destager goroutines with the run's pinned blocks.
	afterWrite     func(blocks []blockcache.DirtyBlock) // a run's backing write returned nil
	afterSync      func()                               // a batch's backing sync returned nil
	beforeComplete func(blocks []blockcache.DirtyBlock, written bool)
	afterComplete  func(blocks []blockcache.DirtyBlock, written bool)
}

func (o options) withDefaults() options {
	if o.now == nil {
		o.now = time.Now
	}
	if o.after == nil {
		o.after = time.After
	}
	if o.syncRuns <= 0 {
		o.syncRuns = defaultSyncRuns
	}
	if o.syncBytes <= 0 {
		o.syncBytes = defaultSyncBytes
	}
	return o
}
