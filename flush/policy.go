package flush

import (
	"math"
	"time"

	"github.com/wbcache/wbcache/blockcache"
	"github.com/wbcache/wbcache/layout"
)

// Policy defaults (see DefaultPolicy).
const (
	DefaultLowWatermark  = 10               // percent of slots dirty
	DefaultHighWatermark = 50               // percent of slots dirty
	DefaultMaxDirtyAge   = 30 * time.Second // bound on how long a block stays dirty
	DefaultWorkers       = 2                // goroutines reading and writing runs
	DefaultIdleRate      = 8                // MiB/s while foreground is busy (see Policy.IdleRate)
	DefaultMaxRun        = 1 << 20          // bytes per backing write
)

// Limits applied by normalisation.
const (
	maxWorkers = 64
	minMaxRun  = blockcache.BlockSize
	maxMaxRun  = 64 << 20
)

// Policy says how eagerly dirty blocks are written back. Zero fields take
// the defaults listed with DefaultPolicy. Where zero is itself a sensible
// setting (LowWatermark, HighWatermark, MaxDirtyAge, IdleRate) any negative value
// stands for an explicit zero: LowWatermark -1 means "0 %", i.e. every
// dirty block is written back as soon as possible.
type Policy struct {
	// LowWatermark: percent of slots dirty at or below which the destager
	// only writes back blocks older than MaxDirtyAge. Default 10.
	LowWatermark int
	// HighWatermark: percent of slots dirty at or above which it writes
	// back flat out, ignoring foreground activity. Default 50; raised to
	// LowWatermark if below it.
	HighWatermark int
	// MaxDirtyAge bounds how long a block stays dirty (in whole seconds,
	// the resolution of the cache's age clock, rounded up). Default 30s.
	MaxDirtyAge time.Duration
	// Workers is the number of goroutines reading runs from the cache
	// device and writing them to the backing device. Backing writes are
	// issued one at a time in elevator order whatever the count (one
	// spindle), so more than 2 only helps a slow cache device. Default 2.
	Workers int
	// IdleRate caps destage MiB/s between the watermarks while foreground
	// I/O is busy (negative: no cap; the destager still backs off, see
	// doc.go). Default 8: between the watermarks nothing is urgent, and
	// write-back at full speed there made a client's fsync slower
	// (docs/bench/fsync-unwritten-2026-12-05.md).
	IdleRate int
	// MaxRun is the largest run written in one I/O, in bytes (rounded down
	// to a multiple of 4096, at least 4096, at most 64 MiB). Default 1 MiB.
	MaxRun int
}

// DefaultPolicy returns the defaults: low watermark 10 %, high watermark
// 50 %, max dirty age 30 s, 2 workers, 8 MiB/s while foreground I/O is
// busy between the watermarks, 1 MiB runs.
//
// Two workers: the backing disk is one spindle, so the destager submits
// one write at a time in LBA order; the second worker reads the next run
// from the cache device while the first one's write is on the disk, which
// is all the overlap a single disk can use.
func DefaultPolicy() Policy {
	return Policy{
		LowWatermark:  DefaultLowWatermark,
		HighWatermark: DefaultHighWatermark,
		MaxDirtyAge:   DefaultMaxDirtyAge,
		Workers:       DefaultWorkers,
		IdleRate:      DefaultIdleRate,
		MaxRun:        DefaultMaxRun,
	}
}

// WithDefaults returns the policy a Destager would run with: defaults
// filled in, explicit zeros (negative values) made zero, values clamped.
// Use it to show the effective policy of persisted settings:
// PolicyFromSettings(s).WithDefaults().
func (p Policy) WithDefaults() Policy { return p.normalize() }

// Watermarks returns the low and high watermarks p selects, defaults
// filled in, explicit zeros made zero and values clamped to 0-100, but
// before the high watermark is raised to the low one: what a caller checks
// an order against.
func (p Policy) Watermarks() (low, high int) {
	pct := func(v, def int) int { return min(orDefault(v, def), 100) }
	return pct(p.LowWatermark, DefaultLowWatermark), pct(p.HighWatermark, DefaultHighWatermark)
}

// orDefault is a field where zero is a sensible setting: 0 takes the
// default def, a negative value is an explicit zero.
func orDefault(v, def int) int {
	switch {
	case v == 0:
		return def
	case v < 0:
		return 0
	}
	return v
}

// normalize fills in defaults, turns explicit zeros (negative values) into
// zeros and clamps everything into range. The result has no zero-means-
// default fields left: IdleRate 0 there means no cap.
func (p Policy) normalize() Policy {
	p.LowWatermark, p.HighWatermark = p.Watermarks()
	if p.HighWatermark < p.LowWatermark {
		p.HighWatermark = p.LowWatermark
	}
	switch {
	case p.MaxDirtyAge == 0:
		p.MaxDirtyAge = DefaultMaxDirtyAge
	case p.MaxDirtyAge < 0:
		p.MaxDirtyAge = 0
	}
	if p.Workers <= 0 {
		p.Workers = DefaultWorkers
	}
	p.Workers = min(p.Workers, maxWorkers)
	p.IdleRate = orDefault(p.IdleRate, DefaultIdleRate)
	if p.MaxRun <= 0 {
		p.MaxRun = DefaultMaxRun
	}
	p.MaxRun = min(max(p.MaxRun, minMaxRun), maxMaxRun)
	p.MaxRun -= p.MaxRun % blockcache.BlockSize
	return p
}

// maxRunBlocks is MaxRun in blocks (policy normalised).
func (p Policy) maxRunBlocks() int { return p.MaxRun / blockcache.BlockSize }

// ageTicks is MaxDirtyAge in the cache's age ticks (seconds, rounded up).
func (p Policy) ageTicks() uint32 { return durationToSeconds(p.MaxDirtyAge) }

func durationToSeconds(d time.Duration) uint32 {
	if d <= 0 {
		return 0
	}
	s := (d + time.Second - 1) / time.Second
	return uint32(min(int64(s), math.MaxUint32))
}

// PolicyFromSettings is the one translation of persisted settings into a
// destage policy. A field whose SetMask bit is clear stays zero (the
// default); a field set explicitly to zero becomes negative (explicit
// zero) where zero would mean the default. Defaults are not filled in, so
// PolicyFromSettings(s).Settings(s) == s for the destager's fields; the
// policy a destager runs with is PolicyFromSettings(s).WithDefaults().
func PolicyFromSettings(s layout.Settings) Policy {
	explicit := func(bit uint32, v int) int {
		switch {
		case !s.Has(bit):
			return 0
		case v == 0:
			return -1
		}
		return v
	}
	p := Policy{
		LowWatermark:  explicit(layout.SetLowWatermark, int(s.LowWatermark)),
		HighWatermark: explicit(layout.SetHighWatermark, int(s.HighWatermark)),
	}
	if s.Has(layout.SetMaxDirtyAge) {
		p.MaxDirtyAge = -1
		if s.MaxDirtyAge > 0 {
			p.MaxDirtyAge = time.Duration(s.MaxDirtyAge) * time.Second
		}
	}
	if s.Has(layout.SetWorkers) {
		p.Workers = int(s.Workers)
	}
	p.IdleRate = explicit(layout.SetIdleRate, int(s.IdleRate))
	return p
}

// destagerBits are the settings PolicyFromSettings reads and
// Policy.Settings writes.
const destagerBits = layout.SetLowWatermark | layout.SetHighWatermark |
	layout.SetWorkers | layout.SetMaxDirtyAge | layout.SetIdleRate

// Settings returns base with the destager's fields (watermarks, workers,
// max dirty age, idle rate) replaced by p's and their SetMask bits set for
// the fields p sets (non-zero); the other fields of base (mode, promotion,
// sequential cutoff) are kept. MaxRun is not persisted. Values are clamped
// to the settings' ranges; MaxDirtyAge is rounded up to whole seconds.
func (p Policy) Settings(base layout.Settings) layout.Settings {
	s := base
	s.SetMask &^= destagerBits
	s.LowWatermark, s.HighWatermark, s.Workers, s.MaxDirtyAge, s.IdleRate = 0, 0, 0, 0, 0
	pct := func(v int) uint8 { return uint8(min(max(v, 0), 100)) }
	if p.LowWatermark != 0 {
		s.LowWatermark = pct(p.LowWatermark)
		s.SetMask |= layout.SetLowWatermark
	}
	if p.HighWatermark != 0 {
		s.HighWatermark = pct(p.HighWatermark)
		s.SetMask |= layout.SetHighWatermark
	}
	if p.Workers > 0 {
		s.Workers = uint16(min(p.Workers, math.MaxUint16))
		s.SetMask |= layout.SetWorkers
	}
	if p.MaxDirtyAge != 0 {
		s.MaxDirtyAge = durationToSeconds(p.MaxDirtyAge)
		s.SetMask |= layout.SetMaxDirtyAge
	}
	if p.IdleRate != 0 {
		s.IdleRate = uint32(min(int64(max(p.IdleRate, 0)), math.MaxUint32))
		s.SetMask |= layout.SetIdleRate
	}
	return s
}
