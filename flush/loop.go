package flush

import (
	"errors"
	"sync"
	"time"

	"github.com/wbcache/wbcache/blockcache"
)

// mode is how hard the destager works, decided before every batch.
type mode int

const (
	modeIdle   mode = iota // nothing dirty
	modeAged               // at or below the low watermark: only blocks older than MaxDirtyAge
	modeNormal             // between the watermarks: everything, backing off while foreground is busy
	modeFull               // above the high watermark, writer pressure or FlushAll: everything, flat out
)

func (m mode) String() string {
	return [...]string{"idle", "aged", "normal", "full"}[m]
}

// state is what the scheduler decides a batch under.
type state struct {
	mode mode
	busy bool // foreground I/O seen recently (modeAged and modeNormal only)
	pol  Policy
}

// loop is one running instance of the destage loop: a scheduler goroutine
// (run) that owns the elevator and the policy decisions, and the workers it
// starts. Every goroutine is accounted in Destager.live and waited for by
// stop.
type loop struct {
	d *Destager
	c *blockcache.Cache

	quit     chan struct{} // closed by stop
	done     chan struct{} // closed when the scheduler and workers exited
	kick     chan struct{} // wakes the scheduler (FlushAll, SetPolicy)
	stopOnce sync.Once
	fatal    error // why the loop died; set before done is closed

	// Owned by the scheduler goroutine.
	work          chan *run
	workers       int
	wg            sync.WaitGroup // workers
	sw            sweep
	cands         []blockcache.DirtyBlock
	batchBuf      []byte // a batch read before it is written (readFirst)
	cursor        uint64 // the elevator's position: next LBA to consider
	oldestSince   uint32 // smallest Since of the last snapshot with nothing eligible
	haveOldest    bool
	pressureUntil time.Time
	busyAt        time.Time
	busyOps       uint64
	busySeen      bool
	busy          bool
	backoff       time.Duration
	outage        outage // failed attempts, for the log
}

func newLoop(d *Destager) *loop {
	l := &loop{
		d: d, c: d.c,
		quit: make(chan struct{}), done: make(chan struct{}), kick: make(chan struct{}, 1),
		work: make(chan *run),
	}
	d.live.Add(1)
	go l.run()
	return l
}

// stop asks the loop to finish and waits until all its goroutines exited.
func (l *loop) stop() {
	l.stopOnce.Do(func() { close(l.quit) })
	<-l.done
}

func (l *loop) dead() bool {
	select {
	case <-l.done:
		return true
	default:
		return false
	}
}

func (l *loop) quitting() bool {
	select {
	case <-l.quit:
		return true
	default:
		return false
	}
}

// wake makes the scheduler re-evaluate its state now.
func (l *loop) wake() {
	select {
	case l.kick <- struct{}{}:
	default:
	}
}

func (l *loop) now() time.Time { return l.d.o.now() }

// wait blocks for d, or until stop; with events also until a wake-up or
// writer pressure. It reports whether the loop must stop.
func (l *loop) wait(d time.Duration, events bool) bool {
	var kick, press <-chan struct{}
	if events {
		kick, press = l.kick, l.c.Pressure()
	}
	select {
	case <-l.quit:
		return true
	case <-kick:
	case <-press:
		l.pressureUntil = l.now().Add(pressureHold)
	case <-l.d.o.after(d):
	}
	return false
}

// run is the scheduler: choose a batch and pin it (choose.go), have the
// workers write it, sync, complete; pace; repeat.
func (l *loop) run() {
	defer l.exit()
	l.foregroundBusy(l.now()) // the baseline for foreground activity
	for !l.quitting() {
		b, stop := l.choose()
		if stop {
			return
		}
		if len(b.blocks) > 0 && l.destage(b) {
			return
		}
	}
}

// exit ends the scheduler: the workers finish and the loop is marked dead.
func (l *loop) exit() {
	close(l.work)
	l.wg.Wait()
	l.d.live.Add(-1)
	close(l.done)
	l.d.signal()
}

// destage has the workers write a pinned batch, handles its outcome and
// paces the next one. It reports whether the loop must stop.
func (l *loop) destage(b pinnedBatch) bool {
	res := l.runBatch(b.blocks, b.st.pol)
	l.d.signal()
	if res.fatal != nil {
		l.die(res.fatal)
		return true
	}
	if res.err != nil {
		return l.failed(res.err)
	}
	l.succeeded()
	if p := pace(b.st, res.bytes, l.now().Sub(b.start)); p > 0 {
		return l.wait(p, true)
	}
	return false
}

// state decides the mode for the next batch.
func (l *loop) state() state {
	pol := l.d.Policy()
	now := l.now()
	select {
	case <-l.c.Pressure():
		l.pressureUntil = now.Add(pressureHold)
	default:
	}
	dirty, slots := l.c.DirtyCount(), l.c.SlotCount()
	st := state{pol: pol}
	switch {
	case dirty == 0:
		st.mode = modeIdle
	case l.d.flushers.Load() > 0 || now.Before(l.pressureUntil) || dirty*100 >= pol.HighWatermark*slots:
		st.mode = modeFull
	case dirty*100 > pol.LowWatermark*slots:
		st.mode = modeNormal
	default:
		st.mode = modeAged
	}
	return st
}

// awaitDurable waits up to syncPatience until durable reports that a
// cache sync covers the pinned batch's records, so that Pin need not make
// one: under busy foreground writes the cache syncs for its own
// checkpoints and reclaims, and a sync forced per batch would write back
// the hot blocks' pages over and over and stop them being rewritten in
// place. The wait ends early when the destager must hurry (a FlushAll,
// writer pressure, the high watermark), the foreground goes quiet, or the
// loop is stopping (the batch is then finished first).
func (l *loop) awaitDurable(durable func() bool) {
	deadline := l.now().Add(syncPatience)
	for !durable() {
		left := deadline.Sub(l.now())
		if left <= 0 {
			return
		}
		if l.wait(min(left, retryPause), true) {
			return
		}
		if st := l.state(); st.mode != modeNormal && st.mode != modeAged {
			return
		}
		if !l.foregroundBusy(l.now()) {
			return
		}
	}
}

// foregroundBusy reports whether foreground reads or writes happened since
// the last sample; it samples Cache.Stats (O(slots)) at most every
// busyInterval.
func (l *loop) foregroundBusy(now time.Time) bool {
	if l.busySeen && now.Sub(l.busyAt) < busyInterval {
		return l.busy
	}
	ops := l.c.ForegroundOps()
	l.busy = l.busySeen && ops != l.busyOps
	l.busySeen, l.busyOps, l.busyAt = true, ops, now
	return l.busy
}

// pace is how long to pause after a batch of n bytes that took took.
// Flat out (modeFull) and with an idle foreground there is no pause. While
// foreground I/O is busy the destager leaves the disk to it at least half
// the time (pausing as long as the batch took, at least minBusyPause) and
// keeps under IdleRate MiB/s if that is set.
func pace(st state, n int, took time.Duration) time.Duration {
	if st.mode == modeFull || !st.busy {
		return 0
	}
	p := max(took, minBusyPause)
	if st.pol.IdleRate > 0 {
		need := time.Duration(float64(n) / float64(st.pol.IdleRate<<20) * float64(time.Second))
		p = max(p, need-took)
	}
	return p
}

// failed handles a batch that had backing or cache read errors: count,
// log (see outage), back off. It reports whether the loop must stop.
func (l *loop) failed(err error) bool {
	l.outage.failed(l.d.log, l.now(), err)
	if l.backoff == 0 {
		l.backoff = minBackoff
	} else {
		l.backoff = min(2*l.backoff, maxBackoff)
	}
	l.d.stats.setBackoff(l.backoff)
	return l.wait(l.backoff, false)
}

// succeeded ends an error burst after a clean batch.
func (l *loop) succeeded() {
	l.outage.succeeded(l.d.log, l.now())
	if l.backoff != 0 {
		l.backoff = 0
		l.d.stats.setBackoff(0)
	}
}

// die records a cache failure that ends the loop.
func (l *loop) die(err error) {
	l.fatal = err
	l.d.stats.setLast(err)
	if errors.Is(err, blockcache.ErrClosed) {
		l.d.log.Warn("destager stopped: the cache is closed", "err", err)
		return
	}
	l.d.log.Error("destager stopped: the cache failed", "err", err)
}
