package blockcache

import (
	"math"
	"sync/atomic"
	"time"
)

type counters struct {
	reads, writes, syncs, discards   atomic.Uint64
	readBytes, writeBytes            atomic.Uint64
	readHits, readMisses, promotions atomic.Uint64
	bypassed, evictions, allocWaits  atomic.Uint64
	aroundOverDirty                  atomic.Uint64
	writeBackClaimed                 atomic.Uint64
	throughRuns                      atomic.Uint64 // writeThroughRun calls that wrote (tests)
	inPlace, pinnedNewer             atomic.Uint64
	gapReadBlocks                    atomic.Uint64
	destagedBlocks, destageRuns      atomic.Uint64
	checkpoints, replayed            atomic.Uint64
	checkpointPages                  atomic.Uint64
	cacheErrors, backingErrors       atomic.Uint64
	healed                           atomic.Uint64
	olderKept                        atomic.Uint64
	unwritten                        atomic.Int64 // bytes prefill has still to write
	recoveryNanos                    atomic.Int64
	replayHoles                      atomic.Uint64 // positions recovery skipped before a block's last record
	// backingSyncFailedAt is when Cache.backingSyncErr was set (UnixNano).
	backingSyncFailedAt atomic.Int64
	// ageCarried: Open found the time at which the blocks dirty before it
	// became dirty (see carryDirtyAge); carry is by how much it set the
	// age clock back.
	ageCarried atomic.Bool
	carry      atomic.Int64 // seconds
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
	// Blocks dirty since before the cache was opened count from when the
	// oldest of them became dirty, as the last checkpoint recorded it.
	OldestDirtySeconds float64 `json:"oldest_dirty_seconds"`
	// OldestDirtySinceOpen: the oldest dirty block was dirty before the
	// cache was opened, at a time no checkpoint recorded, so
	// OldestDirtySeconds counts only from the open (a lower bound).
	OldestDirtySinceOpen bool `json:"oldest_dirty_since_open,omitempty"`
	// Order is the write-back order and how far behind the backing
	// device is (ordered.go).
	Order OrderStatus `json:"writeback_order"`

	Reads         uint64 `json:"reads"`
	Writes        uint64 `json:"writes"`
	WritesInPlace uint64 `json:"writes_in_place"`
	// OlderKept counts writes that kept the version they superseded as an
	// older version for ordered write-back.
	OlderKept  uint64 `json:"older_versions_kept"`
	Syncs      uint64 `json:"syncs"`
	Discards   uint64 `json:"discards"`
	ReadBytes  uint64 `json:"read_bytes"`
	WriteBytes uint64 `json:"write_bytes"`
	ReadHits   uint64 `json:"read_hits"`
	ReadMisses uint64 `json:"read_misses"`
	Promotions uint64 `json:"promotions"`
	Bypassed   uint64 `json:"bypassed"`
	// BypassedOverDirty counts runs of whole blocks written around the
	// cache over dirty cached versions (modes writearound and none),
	// which they superseded after a backing sync.
	BypassedOverDirty uint64 `json:"bypassed_over_dirty"`
	Evictions         uint64 `json:"evictions"`
	AllocWaits        uint64 `json:"alloc_waits"`
	DestagedBlocks    uint64 `json:"destaged_blocks"`
	DestageRuns       uint64 `json:"destage_runs"`
	// DestageNewer counts blocks pinned for destaging at a version newer
	// than their snapshot's (rewritten in between).
	DestageNewer uint64 `json:"destage_newer_versions"`
	// DestageClaimed counts pinned blocks that write-back left unwritten
	// because a write of the backing device in place (around or through
	// the cache, a discard) claimed them first (BeginWriteBack).
	DestageClaimed uint64 `json:"destage_blocks_claimed"`
	// GapReadBlocks counts blocks read from the backing device to fill
	// gaps between dirty blocks, so that a destage writes one run
	// (PinBackingGaps).
	GapReadBlocks uint64 `json:"destage_gap_read_blocks"`
	Checkpoints   uint64 `json:"checkpoints"`
	// CheckpointPages counts the checkpoint pages written: only those
	// that changed since their copy was last written (checkpoint.go).
	CheckpointPages uint64 `json:"checkpoint_pages_written"`
	JournalRecords  uint64 `json:"journal_records"`
	JournalSyncs    uint64 `json:"journal_syncs"`
	JournalBlocks   uint64 `json:"journal_blocks_written"`
	// JournalPrepared counts the journal blocks opened into a page
	// prepared ahead, outside the journal's lock (journal.go); the
	// others were written whole under it.
	JournalPrepared uint64 `json:"journal_blocks_prepared"`
	JournalUsed     uint64 `json:"journal_blocks_used"`
	JournalSize     uint64 `json:"journal_blocks"`
	CacheErrors     uint64 `json:"cache_errors"`
	// HealedBlocks counts clean blocks whose cache slot failed its
	// checksum and that were read from the backing device instead.
	HealedBlocks uint64 `json:"healed_blocks"`
	// LostBlocks is how many dirty blocks are known to be lost (their
	// slot fails its checksum): they read as errors until rewritten or
	// discarded. LostBlocks() lists them.
	LostBlocks    int    `json:"lost_blocks"`
	BackingErrors uint64 `json:"backing_errors"`
	// UnwrittenBytes is how much of the free slot area the filesystem has
	// not written yet and a background pass is still to write zeros over
	// (prefill.go); until it is 0, a sync after a write there also commits
	// the filesystem's journal.
	UnwrittenBytes int64   `json:"cache_file_unwritten_bytes"`
	Replayed       uint64  `json:"recovery_replayed_records"`
	RecoverySecs   float64 `json:"recovery_seconds"`
	Failed         string  `json:"failed,omitempty"`
	// BackingSyncFailed is set once a sync of the backing device has
	// failed; BackingSyncFailedAt says when (RFC 3339). Every later Sync
	// fails with it until the cache is reopened: see BackingSyncFailure.
	BackingSyncFailed   string `json:"backing_sync_failed,omitempty"`
	BackingSyncFailedAt string `json:"backing_sync_failed_at,omitempty"`
}

// Stats returns a snapshot. It scans dirty slots for the oldest one, so it
// costs O(slots); call it at human rates.
func (c *Cache) Stats() Stats {
	s := Stats{Mode: c.Mode().String(), SizeBytes: c.size, Slots: int(c.g.SlotCount)}
	now := c.tick()
	c.mu.Lock()
	t := &c.mu.t
	// Slots the prefill pass holds for a moment are free all the same.
	s.Used, s.Dirty, s.Free, s.LostBlocks = t.validCount(), t.dirtyCount(), t.freeCount()+c.mu.zeroing, t.lostCount()
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
		if oldest == 0 && !c.stats.ageCarried.Load() {
			s.OldestDirtySeconds -= float64(c.stats.carry.Load())
			s.OldestDirtySinceOpen = true
		}
	}
	st := &c.stats
	s.Reads, s.Writes, s.Syncs, s.Discards = st.reads.Load(), st.writes.Load(), st.syncs.Load(), st.discards.Load()
	s.ReadBytes, s.WriteBytes = st.readBytes.Load(), st.writeBytes.Load()
	s.ReadHits, s.ReadMisses, s.Promotions = st.readHits.Load(), st.readMisses.Load(), st.promotions.Load()
	s.Bypassed, s.Evictions, s.AllocWaits = st.bypassed.Load(), st.evictions.Load(), st.allocWaits.Load()
	s.BypassedOverDirty = st.aroundOverDirty.Load()
	s.WritesInPlace = st.inPlace.Load()
	s.OlderKept = st.olderKept.Load()
	s.Order = c.Order()
	s.DestagedBlocks, s.DestageRuns = st.destagedBlocks.Load(), st.destageRuns.Load()
	s.DestageNewer = st.pinnedNewer.Load()
	s.GapReadBlocks = st.gapReadBlocks.Load()
	s.DestageClaimed = st.writeBackClaimed.Load()
	s.Checkpoints, s.Replayed = st.checkpoints.Load(), st.replayed.Load()
	s.CheckpointPages = st.checkpointPages.Load()
	s.CacheErrors, s.BackingErrors, s.HealedBlocks = st.cacheErrors.Load(), st.backingErrors.Load(), st.healed.Load()
	s.RecoverySecs = time.Duration(st.recoveryNanos.Load()).Seconds()
	s.UnwrittenBytes = st.unwritten.Load()
	js := c.j.stats()
	s.JournalRecords, s.JournalSyncs, s.JournalBlocks, s.JournalPrepared, s.JournalUsed = js.records, js.syncs, js.blocks, js.prepared, js.used
	s.JournalSize = c.g.JournalBlocks
	if p := c.failed.Load(); p != nil {
		s.Failed = (*p).Error()
	}
	if err, at := c.BackingSyncFailure(); err != nil {
		s.BackingSyncFailed, s.BackingSyncFailedAt = err.Error(), at.UTC().Format(time.RFC3339)
	}
	return s
}

// BackingSyncFailure returns the error of the first failed sync of the
// backing device and when it failed, or nil. It is sticky (fsyncgate):
// data written to the backing device before it may have been dropped by
// the device or the kernel while the sync reported the failure, and a
// later sync that succeeds would not bring it back, so every later Sync
// fails with it until the cache is reopened. Blocks still dirty in the
// cache (write-through copies included) are written back anyway; what may
// be lost is data written around the cache since the last good sync.
func (c *Cache) BackingSyncFailure() (error, time.Time) {
	p := c.backingSyncErr.Load()
	if p == nil {
		return nil, time.Time{}
	}
	return *p, time.Unix(0, c.stats.backingSyncFailedAt.Load())
}

// noteBackingSyncFailure records when the sticky backing sync error err
// was set and says once in the log what it means.
func (c *Cache) noteBackingSyncFailure(err error) {
	c.stats.backingSyncFailedAt.Store(c.opts.Now().UnixNano())
	c.log.Error("sync of the backing device failed: every later fsync fails until the daemon is restarted, "+
		"since data written to the backing device before it may be lost; check the backing device, then restart", "err", err)
}

// maxCarry bounds how far Open sets the age clock back: a clock that was
// far off when a checkpoint was written must not wrap the ticks.
const maxCarry = 10 * 365 * 24 * time.Hour

// carryDirtyAge sets the age clock (c.start) for an Open at now so that the
// blocks found dirty, whose ticks are 0, are as old as the oldest block
// dirty at the last checkpoint (c.sb.OldestDirty). It sets the clock back
// at least a second, so that tick 0 means "dirty since before the open".
// Without a recorded time (or one in the future) the age counts from the
// open and Stats says so.
func (c *Cache) carryDirtyAge(now time.Time) {
	carry := time.Second
	if t := int64(c.sb.OldestDirty); t > 0 && t <= now.Unix() {
		carry = max(carry, min(now.Sub(time.Unix(t, 0)), maxCarry))
		c.stats.ageCarried.Store(true)
	}
	carry = carry.Truncate(time.Second)
	c.stats.carry.Store(int64(carry / time.Second))
	c.start = now.Add(-carry)
}

// oldestDirtyUnix converts the smallest tick of the dirty blocks a
// checkpoint wrote (math.MaxUint32 when none) to the superblock's
// OldestDirty: Unix seconds, 0 for none or unknown.
func (c *Cache) oldestDirtyUnix(oldest uint32) uint32 {
	if oldest == math.MaxUint32 || (oldest == 0 && !c.stats.ageCarried.Load()) {
		return 0
	}
	t := c.start.Add(time.Duration(oldest) * time.Second).Unix()
	if t <= 0 || t > math.MaxUint32 {
		return 0
	}
	return uint32(t)
}

// ForegroundOps counts reads and writes served so far; cheap enough to poll
// (the destager uses it to see whether foreground I/O is busy).
func (c *Cache) ForegroundOps() uint64 {
	return c.stats.reads.Load() + c.stats.writes.Load()
}
