package flush

import (
	"sort"
	"sync"
	"time"
)

// fakeClock is a manual clock: After channels fire only when Advance moves
// the time past their deadline. Tests inject it into both the destager and
// the cache (blockcache.Options.Now), so ages and back-off run instantly.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []fakeTimer
	afters int // After calls so far
}

type fakeTimer struct {
	at time.Time
	d  time.Duration
	ch chan time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)}
}

func (f *fakeClock) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

func (f *fakeClock) After(d time.Duration) <-chan time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.afters++
	ch := make(chan time.Time, 1)
	if d <= 0 {
		ch <- f.now
		return ch
	}
	f.timers = append(f.timers, fakeTimer{at: f.now.Add(d), d: d, ch: ch})
	return ch
}

// Advance moves the clock by d and fires the timers that are due.
func (f *fakeClock) Advance(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.now = f.now.Add(d)
	keep := f.timers[:0]
	for _, t := range f.timers {
		if !t.at.After(f.now) {
			t.ch <- f.now
		} else {
			keep = append(keep, t)
		}
	}
	f.timers = keep
}

// Pending returns the requested durations of the timers not yet fired
// (including abandoned ones), sorted.
func (f *fakeClock) Pending() []time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []time.Duration
	for _, t := range f.timers {
		out = append(out, t.d)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// hasPending reports whether a timer of duration d is pending.
func (f *fakeClock) hasPending(d time.Duration) bool { return f.pendingCount(d) > 0 }

// pendingCount is how many timers of duration d are pending.
func (f *fakeClock) pendingCount(d time.Duration) int {
	n := 0
	for _, p := range f.Pending() {
		if p == d {
			n++
		}
	}
	return n
}

func (f *fakeClock) options(o options) options {
	o.now, o.after = f.Now, f.After
	return o
}
