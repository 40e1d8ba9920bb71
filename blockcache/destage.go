package blockcache

import (
	"errors"
	"fmt"
	"slices"

	"github.com/wbcache/wbcache/layout"
)

// DirtyBlock names one dirty version: block LBA held in Slot with data CRC.
// Since is the age tick (seconds since Open) at which it became dirty,
// Epoch the flush epoch of its write. Clean marks a clean cached copy that
// PinGaps pinned to fill a gap between dirty blocks; Backing (with Clean)
// a gap block PinBackingGaps took from the backing device, which has no
// slot.
type DirtyBlock struct {
	LBA     uint64
	Slot    uint32
	CRC     uint32
	Since   uint32
	Epoch   uint32
	Clean   bool
	Backing bool
}

// DirtyBlocks appends the dirty versions to write back now, not being
// destaged, to dst, sorted by LBA: while ordered write-back is in force,
// those of the oldest flush epoch with dirty versions (ordered.go), else
// all of them; either way at most one version per block, its oldest. It
// scans the slot table; the destager calls it once per sweep.
func (c *Cache) DirtyBlocks(dst []DirtyBlock) []DirtyBlock {
	c.mu.Lock()
	c.maybeResumeLocked()
	t := &c.mu.t
	oldest, ordered := t.oldestEpoch()
	ordered = ordered && c.orderingLocked()
	first := len(dst)
	for s, f := range t.flags {
		if f&(fValid|fDirty|fPinned|fLost) == fValid|fDirty && (!ordered || t.epoch[s] == oldest) {
			dst = append(dst, DirtyBlock{LBA: t.lba[s], Slot: uint32(s), CRC: t.crc[s], Since: t.since[s], Epoch: t.epoch[s]})
		}
	}
	// Records are appended under mu: none of these blocks was mapped by a
	// record newer than this. (Only this writes snapSeq, under mu.)
	if seq := c.j.lastSeq(); seq > c.snapSeq.Load() {
		c.snapSeq.Store(seq)
	}
	older := len(t.older) > 0
	c.mu.Unlock()
	slices.SortFunc(dst[first:], func(a, b DirtyBlock) int {
		switch {
		case a.LBA < b.LBA:
			return -1
		case a.LBA > b.LBA:
			return 1
		case epochBefore(a.Epoch, b.Epoch):
			return -1
		case epochBefore(b.Epoch, a.Epoch):
			return 1
		}
		return 0
	})
	if older {
		// A block's newer versions wait for its oldest: the backing
		// device only moves forward.
		dst = append(dst[:first], slices.CompactFunc(dst[first:], func(a, b DirtyBlock) bool { return a.LBA == b.LBA })...)
	}
	return dst
}

// Pin claims blocks for destaging and returns those it pinned. For each
// block it pins the current dirty version of its LBA, which is the
// snapshot's unless the block was rewritten since DirtyBlocks (then the
// returned DirtyBlock names the new slot and CRC): a block rewritten faster
// than a snapshot can be synced and pinned is still destaged. It skips an
// LBA with another destage in flight (so the backing device only ever
// moves forward), a Discard zeroing it, or an in-place rewrite in flight.
// Every pinned block must be passed to Complete; blocks must come from
// DirtyBlocks.
//
// Every pinned version's MAP record is durable when Pin returns (a
// destaged version can never be rolled back by recovery). Pinning comes
// first: a pinned slot is never rewritten in place, so the version synced
// is the version destaged. A batch of unchanged blocks needs the records
// up to its snapshot's, so one sync serves every batch of a snapshot; a
// batch with a rewritten block needs every record appended so far.
func (c *Cache) Pin(blocks []DirtyBlock) ([]DirtyBlock, error) {
	pinned, _, err := c.PinWait(blocks, nil)
	return pinned, err
}

// PinWait is Pin, except that when the pinned versions' records are not
// durable yet it first calls wait (if not nil) with a function reporting
// whether they have become so, letting the caller wait for a sync made
// for other reasons before Pin makes one. It also returns how many blocks
// it pinned at a version newer than the snapshot's: a snapshot mostly
// rewritten since is stale, and a fresh one (denser, with records an
// earlier sync covers) serves better.
func (c *Cache) PinWait(blocks []DirtyBlock, wait func(durable func() bool)) (pinned []DirtyBlock, newer int, err error) {
	if err := c.usable(); err != nil {
		return nil, 0, err
	}
	need := c.snapSeq.Load()
	c.mu.Lock()
	t := &c.mu.t
	out := blocks[:0]
	for _, b := range blocks {
		if c.mu.inflight[b.LBA] > 0 || c.overwritingLocked(b.LBA) {
			continue
		}
		if o := b.Slot; t.isOlder(o) {
			// An older version (ordered.go): pinned as it is, or not at
			// all once written back and freed.
			if t.flags[o]&(fValid|fDirty|fPinned|fLost) == fValid|fDirty && t.lba[o] == b.LBA && t.crc[o] == b.CRC {
				t.flags[o] |= fPinned
				c.mu.inflight[b.LBA]++
				out = append(out, b)
			}
			continue
		}
		s, ok := t.lookup(b.LBA)
		if !ok || t.flags[s]&(fValid|fDirty|fPinned|fWriting|fLost) != fValid|fDirty || t.olderLBA[b.LBA] > 0 {
			continue
		}
		if (s != b.Slot || t.crc[s] != b.CRC) && t.epoch[s] != b.Epoch && c.orderingLocked() {
			// Superseded since by a version of a later epoch, which
			// must wait for its epoch.
			continue
		}
		if s != b.Slot || t.crc[s] != b.CRC {
			// Rewritten since the snapshot: its record may be newer than
			// the snapshot's, but not than the last one appended (records
			// are appended under mu).
			b.Slot, b.CRC, b.Since, b.Epoch = s, t.crc[s], t.since[s], t.epoch[s]
			need = max(need, c.j.lastSeq())
			newer++
		}
		t.flags[s] |= fPinned
		c.mu.inflight[b.LBA]++
		out = append(out, b)
	}
	c.mu.Unlock()
	c.stats.pinnedNewer.Add(uint64(newer))
	durable := func() bool { return c.j.durable() >= need }
	if len(out) == 0 || durable() {
		return out, newer, nil
	}
	if wait != nil {
		wait(durable)
	}
	if !durable() {
		if err := c.syncJournal(); err != nil {
			// The cache has failed; unpin so nothing waits on these.
			c.Complete(out, false)
			return nil, 0, err
		}
	}
	return out, newer, nil
}

// LostBlocksError is what ReadSlots returns when some pinned blocks' slots
// fail their checksum: those blocks must not be written back; every other
// block of buf was read and verified. A dirty one is lost (see
// corrupt.go); a clean gap copy (PinGaps) is not, the backing device
// holds it, and its slot is dropped at its next read.
type LostBlocksError struct {
	Lost  []int // indexes into the blocks passed to ReadSlots
	Dirty int   // how many of them are dirty blocks, lost
}

func (e *LostBlocksError) Error() string {
	return fmt.Sprintf("%v: %d dirty blocks lost (their cache slots fail their checksums)", ErrCorruptData, e.Dirty)
}

func (e *LostBlocksError) Unwrap() error { return ErrCorruptData }

// ReadSlots reads the data of pinned blocks into buf (4 KiB each, in
// order), verifying each checksum. Blocks that fail it are reported in a
// *LostBlocksError, the dirty ones marked lost (Complete never marks them
// clean).
//
// Gap blocks from the backing device (PinBackingGaps) are read from it,
// one read per stretch of consecutive blocks from the first such block to
// the last (the cached blocks among them are then read over it): one
// request, as the run they fill is one write. When that read fails, they
// are reported lost too (not dirty: nothing is lost, the run is written
// around them).
func (c *Cache) ReadSlots(blocks []DirtyBlock, buf []byte) error {
	var lost []int
	dirty := 0
	for i := 0; i < len(blocks); i++ {
		if !blocks[i].Backing {
			continue
		}
		last := i
		for k := i + 1; k < len(blocks) && blocks[k].LBA == blocks[k-1].LBA+1; k++ {
			if blocks[k].Backing {
				last = k
			}
		}
		if _, err := c.hdd.ReadAt(buf[i*BlockSize:(last+1)*BlockSize], int64(blocks[i].LBA)*BlockSize); err != nil {
			c.stats.backingErrors.Add(1)
			for k := i; k <= last; k++ {
				if blocks[k].Backing {
					lost = append(lost, k)
				}
			}
		}
		i = last
	}
	for i, b := range blocks {
		if b.Backing {
			continue
		}
		p := buf[i*BlockSize : (i+1)*BlockSize]
		if _, err := c.ssd.ReadAt(p, c.g.SlotOffset(uint64(b.Slot))); err != nil {
			return c.ssdReadError(b.Slot, err)
		}
		if layout.DataCRC(p) != b.CRC {
			if !b.Clean {
				c.markLost(b)
				dirty++
			}
			lost = append(lost, i)
		}
	}
	if lost != nil {
		slices.Sort(lost)
		return &LostBlocksError{Lost: lost, Dirty: dirty}
	}
	return nil
}

// Complete ends the destage of pinned blocks. With written true the caller
// has written them to the backing device and synced it: each block that is
// still the current version is marked clean with a CLEAN record. With
// written false they stay dirty. Either way they are unpinned.
func (c *Cache) Complete(blocks []DirtyBlock, written bool) error {
	var err error
	// For release: read after the syncs that made the pinned slots' FREE
	// records durable (fFreeOK).
	gen := c.j.syncGen()
	for i := 0; i < len(blocks); {
		n := min(len(blocks)-i, layout.RecordsPerBlock)
		var m metaChange
		if written {
			if m, err = c.beginChange(n); err != nil {
				// Unpin the rest as still dirty: a lost CLEAN only means a
				// harmless second destage. A closing cache is not a failed one.
				written = false
				if !errors.Is(err, ErrClosed) {
					err = c.fail(err)
				}
			}
		}
		if !written {
			m = c.lockedChange()
		}
		c.completeBatch(&m, blocks[i:i+n], written, gen)
		m.end()
		i += n
	}
	if written {
		c.stats.destagedBlocks.Add(uint64(CountDirty(blocks)))
		c.stats.destageRuns.Add(1)
		c.kickReclaim()
	}
	return err
}

// completeBatch completes one batch of at most RecordsPerBlock blocks in
// change m (with written, m has room for their CLEAN records); gen is
// the journal's sync generation (slotTable.release).
func (c *Cache) completeBatch(m *metaChange, blocks []DirtyBlock, written bool, gen uint64) {
	t := &c.mu.t
	for _, b := range blocks {
		if b.Backing {
			c.uninflightLocked(b.LBA)
			continue
		}
		s := b.Slot
		f := t.flags[s]
		switch {
		case !written || b.Clean || f&fValid == 0 || t.lba[s] != b.LBA || t.crc[s] != b.CRC:
		case c.mu.claimed[b.LBA] && !t.isOlder(s):
			// A writer of the backing device in place claimed the block
			// after its write-back began (claimBackingLocked waits only
			// for the write itself): the backing device may hold that
			// writer's data by now, not this version. It stays dirty;
			// the writer drops it (a run over dirty blocks, a discard)
			// once its own data is durable, or, if it fails, a later
			// destage writes it again.
		case t.isOlder(s):
			// An older version written back: its slot is freed, once
			// the FREE record is durable (invariant 1).
			m.free(s, b.LBA, false)
		case f&fLost == 0:
			m.clean(b)
		}
		t.flags[s] &^= fPinned
		if t.flags[s]&fFreeOK != 0 {
			t.release(s, gen)
		}
		c.uninflightLocked(b.LBA)
	}
	c.mu.freed.Broadcast()
}

// uninflightLocked ends one destage's hold on lba.
func (c *Cache) uninflightLocked(lba uint64) {
	if c.mu.inflight[lba]--; c.mu.inflight[lba] <= 0 {
		delete(c.mu.inflight, lba)
		delete(c.mu.claimed, lba)
	}
}

// BeginWriteBack is called by a destager right before it writes pinned
// blocks (a run, or any set) to the backing device. It returns the
// indexes of those that a writer of the backing device in place has
// claimed since they were pinned (claimBackingLocked: a write around or
// through the cache, or a discard, whose data must not be overwritten by
// this older content). The caller must not write those: it writes the
// others (the pieces between) and completes the claimed ones unwritten
// (Complete with false: a dirty one that the writer did not supersede
// stays dirty, for a later destage). Until EndWriteBack, writers of any
// of the blocks wait.
//
// A destager writes a pinned block to the backing device only between a
// BeginWriteBack that did not claim it and its EndWriteBack: that is what
// lets writers of the backing device skip the pinned blocks not yet
// written instead of waiting for the whole batch.
func (c *Cache) BeginWriteBack(blocks []DirtyBlock) (claimed []int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, b := range blocks {
		if c.mu.claimed[b.LBA] {
			claimed = append(claimed, i)
		}
		c.mu.writing[b.LBA]++
	}
	c.stats.writeBackClaimed.Add(uint64(len(claimed)))
	return claimed
}

// SplitClaimed splits blocks into those to complete as written and those
// that BeginWriteBack reported claimed (indexes into blocks, ascending).
func SplitClaimed(blocks []DirtyBlock, claimed []int) (written, taken []DirtyBlock) {
	for i, b := range blocks {
		if len(taken) < len(claimed) && claimed[len(taken)] == i {
			taken = append(taken, b)
		} else {
			written = append(written, b)
		}
	}
	return written, taken
}

// EndWriteBack ends the backing write that BeginWriteBack began, whether
// it succeeded or not.
func (c *Cache) EndWriteBack(blocks []DirtyBlock) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, b := range blocks {
		if c.mu.writing[b.LBA]--; c.mu.writing[b.LBA] <= 0 {
			delete(c.mu.writing, b.LBA)
		}
	}
	c.mu.freed.Broadcast()
}

// DirtyCount is the number of dirty blocks.
func (c *Cache) DirtyCount() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.mu.t.dirtyCount()
}

// SlotCount is the number of cache slots.
func (c *Cache) SlotCount() int { return int(c.g.SlotCount) }

// Tick is the current age tick (seconds since Open), comparable with
// DirtyBlock.Since.
func (c *Cache) Tick() uint32 { return c.tick() }

// CountDirty is how many of blocks are dirty versions, not clean copies
// filling a gap (PinGaps).
func CountDirty(blocks []DirtyBlock) int {
	n := 0
	for _, b := range blocks {
		if !b.Clean {
			n++
		}
	}
	return n
}
