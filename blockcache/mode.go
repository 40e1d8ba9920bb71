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

// seqTracker spots sequential streams: a request that starts where a
// recent one ended extends that stream. The recent requests are kept by
// the hash of where they ended, in seqParts parts of seqWays entries, each
// part with its own lock, as bcache keeps its recent I/Os in a hash by end
// sector: a request looks for the stream it continues in the part of its
// start and records the extended stream in the part of its end, so
// requests to unrelated places take no lock in common, and a stream
// survives until seqWays newer requests have ended in its part (with one
// part of 8 entries, any 8 random writes in between broke a stream off).
type seqTracker struct {
	parts [seqParts]seqPart
}

const (
	seqParts = 64
	seqWays  = 8
)

type seqPart struct {
	mu      sync.Mutex
	streams [seqWays]struct{ end, length int64 }
	next    int
}

func (t *seqTracker) part(end int64) *seqPart {
	return &t.parts[hashLBA(uint64(end))%seqParts]
}

// take removes the stream that ends at off, if one is tracked, and
// returns its length (0 if none).
func (t *seqTracker) take(off int64) int64 {
	p := t.part(off)
	p.mu.Lock()
	defer p.mu.Unlock()
	for i := range p.streams {
		if s := &p.streams[i]; s.end == off && s.length > 0 {
			n := s.length
			s.length = 0
			return n
		}
	}
	return 0
}

// continues reports whether a stream ending at off is tracked.
func (t *seqTracker) continues(off int64) bool {
	p := t.part(off)
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, s := range p.streams {
		if s.end == off && s.length > 0 {
			return true
		}
	}
	return false
}

// put records a stream of length bytes ending at end, in a free entry of
// its part if there is one, else in place of the part's oldest.
func (t *seqTracker) put(end, length int64) {
	p := t.part(end)
	p.mu.Lock()
	defer p.mu.Unlock()
	i := p.next
	for k := range p.streams {
		if p.streams[k].length == 0 {
			i = k
			break
		}
	}
	if i == p.next {
		p.next = (p.next + 1) % seqWays
	}
	p.streams[i].end, p.streams[i].length = end, length
}

// seqDetect records a request and reports whether it continues a stream
// that is now longer than the sequential cutoff (a request that starts a
// stream never does, however long).
func (c *Cache) seqDetect(t *seqTracker, off, n int64) bool {
	cut := c.seqCutoff.Load()
	if cut <= 0 {
		return false
	}
	prev := t.take(off)
	t.put(off+n, prev+n)
	return prev > 0 && prev+n > cut
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
