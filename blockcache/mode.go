package blockcache

import (
	"fmt"
	"sync"

	"github.com/wbcache/wbcache/layout"
)

// Mode is how writes and reads use the cache.
type Mode uint32

// Cache modes. Their values are the superblock's (layout.Settings.Mode).
const (
	// ModeWriteback: writes go to the cache and are destaged later.
	ModeWriteback = Mode(layout.ModeWriteback)
	// ModeWritethrough: writes go to the backing device and a clean copy
	// to the cache; nothing is dirty.
	ModeWritethrough = Mode(layout.ModeWritethrough)
	// ModeWritearound: writes go to the backing device only (a cached copy
	// is dropped); reads are still cached.
	ModeWritearound = Mode(layout.ModeWritearound)
	// ModeNone: pass-through; cached copies are used and dropped as written,
	// nothing new enters the cache.
	ModeNone = Mode(layout.ModeNone)
)

var modeNames = []string{"writeback", "writethrough", "writearound", "none"}

func (m Mode) String() string {
	if int(m) < len(modeNames) {
		return modeNames[m]
	}
	return fmt.Sprintf("mode(%d)", uint32(m))
}

// ParseMode parses a mode name.
func ParseMode(s string) (Mode, error) {
	for i, n := range modeNames {
		if s == n {
			return Mode(i), nil
		}
	}
	return 0, fmt.Errorf("%w: unknown mode %q (want writeback, writethrough, writearound or none)", ErrInvalid, s)
}

// Mode is the current mode.
func (c *Cache) Mode() Mode { return Mode(c.mode.Load()) }

// SetMode switches mode at once. It is safe under concurrent I/O and at any
// crash point: a block that has a dirty cached version keeps being written
// back into the cache whatever the mode, so no mode can put an older
// version on the backing device. Leaving writeback, run the destager's
// FlushAll to drain. The mode is persisted in the superblock.
func (c *Cache) SetMode(m Mode) error {
	if m > ModeNone {
		return fmt.Errorf("%w: mode %d", ErrInvalid, m)
	}
	s := c.Settings()
	s.Mode = uint8(m)
	return c.SetSettings(s)
}

// DefaultSeqCutoff is the sequential stream length beyond which writes
// bypass the cache (as bcache's sequential_cutoff).
const DefaultSeqCutoff = 4 << 20

// Settings returns the persisted settings.
func (c *Cache) Settings() layout.Settings {
	c.ckptMu.Lock()
	defer c.ckptMu.Unlock()
	return c.sb.Settings
}

// SetSettings persists new settings in the superblock and applies the
// engine's (mode, sequential cutoff); the destager reads the rest.
func (c *Cache) SetSettings(s layout.Settings) error {
	if err := c.usable(); err != nil {
		return err
	}
	if err := checkSettings(s); err != nil {
		return err
	}
	c.ckptMu.Lock()
	defer c.ckptMu.Unlock()
	sb := c.sb
	sb.Generation++
	sb.Settings = s
	if !Ordered(s) || !Ordered(c.sb.Settings) {
		// Unordered write-back, or ordering turned on over a backing
		// device written out of order: it is not a consistent point in
		// time (ordered.go) until ordering resumes.
		sb.Flags |= layout.FlagOrderBroken
	}
	if err := writeSuperblock(c.ssd, &sb); err != nil {
		return c.fail(err)
	}
	c.sb = sb
	c.applySettings(s)
	return nil
}

// checkSettings refuses settings the superblock format cannot hold (an
// unknown mode, a reserved set-mask bit): written, they would make the
// superblock corrupt.
func checkSettings(s layout.Settings) error {
	if err := s.Validate(); err != nil {
		return fmt.Errorf("%w: mode %d, set mask %#x (defined bits %#x)", ErrInvalid, s.Mode, s.SetMask, layout.SetKnown)
	}
	return nil
}

func (c *Cache) applySettings(s layout.Settings) {
	c.mu.Lock()
	c.setOrderLocked(Ordered(s), c.sb.Flags&layout.FlagOrderBroken != 0)
	c.mu.Unlock()
	c.mode.Store(uint32(s.Mode))
	c.seqCutoff.Store(SeqCutoff(s))
	if s.Has(layout.SetPromoteAfter) {
		c.promoteAfter.Store(int32(s.PromoteAfter))
	}
}

// SeqCutoff is the sequential cutoff settings select: DefaultSeqCutoff
// unless set explicitly (0 then never bypasses the cache).
func SeqCutoff(s layout.Settings) int64 {
	if s.Has(layout.SetSeqCutoff) {
		return int64(s.SeqCutoff)
	}
	return DefaultSeqCutoff
}

// PromoteAfter is the promotion threshold settings select, as
// Options.PromoteAfter takes it: promotion on the first miss unless set
// explicitly.
func PromoteAfter(s layout.Settings) int {
	if s.Has(layout.SetPromoteAfter) {
		return int(s.PromoteAfter)
	}
	return 1
}

// seqTracker spots sequential streams: a request that starts where a recent
// one ended extends that stream.
type seqTracker struct {
	mu      sync.Mutex
	streams [8]struct{ end, length int64 }
	next    int
}

// seqDetect records a request and reports whether its stream is longer
// than the sequential cutoff.
func (c *Cache) seqDetect(t *seqTracker, off, n int64) bool {
	cut := c.seqCutoff.Load()
	if cut <= 0 {
		return false
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	for i := range t.streams {
		s := &t.streams[i]
		if s.end == off && s.length > 0 {
			s.end += n
			s.length += n
			return s.length > cut
		}
	}
	s := &t.streams[t.next]
	t.next = (t.next + 1) % len(t.streams)
	s.end, s.length = off+n, n
	return false
}

// promoteSketch counts read misses per block in a small fixed table
// (collisions only promote earlier).
type promoteSketch struct{ counts []uint8 }

func newPromoteSketch() promoteSketch { return promoteSketch{counts: make([]uint8, 1<<16)} }

// hit records a miss and reports whether the block has now missed at least
// after times.
func (p *promoteSketch) hit(lba uint64, after int) bool {
	if after <= 1 {
		return true
	}
	i := hashLBA(lba) % uint64(len(p.counts))
	if p.counts[i] < 255 {
		p.counts[i]++
	}
	if int(p.counts[i]) >= after {
		p.counts[i] = 0
		return true
	}
	return false
}
