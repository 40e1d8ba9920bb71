package flush

import (
	"sync"
	"sync/atomic"
	"time"
)

// counters are the destager's statistics; they live as long as the
// Destager (across Start/Stop).
type counters struct {
	blocks, runs, errors atomic.Uint64
	backingErrors        atomic.Uint64 // the part of errors from the backing device

	mu      sync.Mutex
	lastErr error
	backoff time.Duration
	meter   rateMeter
}

func (s *counters) destaged(now time.Time, blocks int) {
	s.blocks.Add(uint64(blocks))
	s.runs.Add(1)
	s.mu.Lock()
	s.meter.add(now, uint64(blocks)*blockSize)
	s.mu.Unlock()
}

// failed counts a destage error; backing says whether the backing device
// failed (a write or sync) rather than the cache device (a read).
func (s *counters) failed(err error, backing bool) {
	s.errors.Add(1)
	if backing {
		s.backingErrors.Add(1)
	}
	s.mu.Lock()
	s.lastErr = err
	s.mu.Unlock()
}

func (s *counters) setLast(err error) {
	s.mu.Lock()
	s.lastErr = err
	s.mu.Unlock()
}

func (s *counters) setBackoff(d time.Duration) {
	s.mu.Lock()
	s.backoff = d
	s.mu.Unlock()
}

// rateMeter measures bytes per second over a sliding window of rateWindow,
// in buckets of rateBucket.
type rateMeter struct {
	start   time.Time
	buckets [rateWindow / rateBucket]struct {
		idx   int64
		bytes uint64
	}
}

func (m *rateMeter) add(now time.Time, n uint64) {
	idx := now.UnixNano() / int64(rateBucket)
	b := &m.buckets[uint64(idx)%uint64(len(m.buckets))]
	if b.idx != idx {
		b.idx, b.bytes = idx, 0
	}
	b.bytes += n
}

// rate is the bytes per second over the window (or since start, if that
// is shorter, but at least one bucket).
func (m *rateMeter) rate(now time.Time) float64 {
	idx := now.UnixNano() / int64(rateBucket)
	var sum uint64
	for _, b := range m.buckets {
		if b.idx <= idx && idx-b.idx < int64(len(m.buckets)) {
			sum += b.bytes
		}
	}
	span := min(rateWindow, now.Sub(m.start))
	span = max(span, rateBucket)
	return float64(sum) / span.Seconds()
}
