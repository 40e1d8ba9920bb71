package blockcache

import (
	"sync/atomic"
	"time"
)

type counters struct {
	reads, writes, syncs, discards   atomic.Uint64
	readBytes, writeBytes            atomic.Uint64
	readHits, readMisses, promotions atomic.Uint64
	bypassed, evictions, allocWaits  atomic.Uint64
	inPlace, pinnedNewer             atomic.Uint64
	destagedBlocks, destageRuns      atomic.Uint64
	checkpoints, replayed            atomic.Uint64
	cacheErrors, backingErrors       atomic.Uint64
	healed                           atomic.Uint64
	recoveryNanos                    atomic.Int64
}

// Stats is a snapshot of the cache's state and counters.
type Stats struct {
	Mode      string `json:"mode"`
	SizeBytes int64  `json:"size_bytes"`
	Slots     int    `json:"slots"`
	Used      int    `json:"slots_used"`
	Dirty     int    `json:"slots_dirty"`
	Clean     int    `json:"slots_clean"`
	Free      int    `json:"slots_free"`
	// OldestDirtySeconds is the age of the oldest dirty block (0 if none).
	OldestDirtySeconds float64 `json:"oldest_dirty_seconds"`

	Reads          uint64 `json:"reads"`
	Writes         uint64 `json:"writes"`
	WritesInPlace  uint64 `json:"writes_in_place"`
	Syncs          uint64 `json:"syncs"`
	Discards       uint64 `json:"discards"`
	ReadBytes      uint64 `json:"read_bytes"`
	WriteBytes     uint64 `json:"write_bytes"`
	ReadHits       uint64 `json:"read_hits"`
	ReadMisses     uint64 `json:"read_misses"`
	Promotions     uint64 `json:"promotions"`
	Bypassed       uint64 `json:"bypassed"`
	Evictions      uint64 `json:"evictions"`
	AllocWaits     uint64 `json:"alloc_waits"`
	DestagedBlocks uint64 `json:"destaged_blocks"`
	DestageRuns    uint64 `json:"destage_runs"`
	// DestageNewer counts blocks pinned for destaging at a version newer
	// than their snapshot's (rewritten in between).
	DestageNewer   uint64 `json:"destage_newer_versions"`
	Checkpoints    uint64 `json:"checkpoints"`
	JournalRecords uint64 `json:"journal_records"`
	JournalSyncs   uint64 `json:"journal_syncs"`
	JournalBlocks  uint64 `json:"journal_blocks_written"`
	JournalUsed    uint64 `json:"journal_blocks_used"`
	JournalSize    uint64 `json:"journal_blocks"`
	CacheErrors    uint64 `json:"cache_errors"`
	// HealedBlocks counts clean blocks whose cache slot failed its
	// checksum and that were read from the backing device instead.
	HealedBlocks uint64 `json:"healed_blocks"`
	// LostBlocks is how many dirty blocks are known to be lost (their
	// slot fails its checksum): they read as errors until rewritten or
	// discarded. LostBlocks() lists them.
	LostBlocks    int     `json:"lost_blocks"`
	BackingErrors uint64  `json:"backing_errors"`
	Replayed      uint64  `json:"recovery_replayed_records"`
	RecoverySecs  float64 `json:"recovery_seconds"`
	Failed        string  `json:"failed,omitempty"`
}

// Stats returns a snapshot. It scans dirty slots for the oldest one, so it
// costs O(slots); call it at human rates.
func (c *Cache) Stats() Stats {
	s := Stats{Mode: c.Mode().String(), SizeBytes: c.size, Slots: int(c.g.SlotCount)}
	now := c.tick()
	c.mu.Lock()
	t := &c.mu.t
	s.Used, s.Dirty, s.Free, s.LostBlocks = t.valid, t.dirty, t.free.len(), t.lost
	oldest := now
	for i, f := range t.flags {
		if f&(fValid|fDirty) == fValid|fDirty && t.since[i] < oldest {
			oldest = t.since[i]
		}
	}
	c.mu.Unlock()
	s.Clean = s.Used - s.Dirty
	if s.Dirty > 0 {
		s.OldestDirtySeconds = float64(now - oldest)
	}
	st := &c.stats
	s.Reads, s.Writes, s.Syncs, s.Discards = st.reads.Load(), st.writes.Load(), st.syncs.Load(), st.discards.Load()
	s.ReadBytes, s.WriteBytes = st.readBytes.Load(), st.writeBytes.Load()
	s.ReadHits, s.ReadMisses, s.Promotions = st.readHits.Load(), st.readMisses.Load(), st.promotions.Load()
	s.Bypassed, s.Evictions, s.AllocWaits = st.bypassed.Load(), st.evictions.Load(), st.allocWaits.Load()
	s.WritesInPlace = st.inPlace.Load()
	s.DestagedBlocks, s.DestageRuns = st.destagedBlocks.Load(), st.destageRuns.Load()
	s.DestageNewer = st.pinnedNewer.Load()
	s.Checkpoints, s.Replayed = st.checkpoints.Load(), st.replayed.Load()
	s.CacheErrors, s.BackingErrors, s.HealedBlocks = st.cacheErrors.Load(), st.backingErrors.Load(), st.healed.Load()
	s.RecoverySecs = time.Duration(st.recoveryNanos.Load()).Seconds()
	s.JournalRecords, _, s.JournalSyncs, s.JournalBlocks, s.JournalUsed = c.j.stats()
	s.JournalSize = c.g.JournalBlocks
	if p := c.failed.Load(); p != nil {
		s.Failed = (*p).Error()
	}
	return s
}

// ForegroundOps counts reads and writes served so far; cheap enough to poll
// (the destager uses it to see whether foreground I/O is busy).
func (c *Cache) ForegroundOps() uint64 {
	return c.stats.reads.Load() + c.stats.writes.Load()
}
