package blockcache

import (
	"fmt"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/wbcache/wbcache/device"
	"github.com/wbcache/wbcache/layout"
)

// traceRecovery, when set by a test, sees the replayed records.
var traceRecovery atomic.Pointer[func(c *Cache, recs []layout.Record, n int)]

// traceJournalEnd, when set by a test, learns why replay stopped.
var traceJournalEnd atomic.Pointer[func(lsn uint64, h layout.JournalHeader, err error, inc uint64)]

type recoveryResult struct {
	incarnation uint64 // for the journal from now on
	endLSN      uint64 // first block after the replayed log
	endCount    int    // records in block endLSN-1
	records     int
	dropped     int
	valid       int
	dirty       int
	epoch       uint32 // the newest flush epoch seen (records, slots, superblock)
}

// recover rebuilds the slot table from the checkpoint and the journal.
//
// The journal is the longest prefix of valid blocks after the checkpoint's
// replay LSN, provided what ends it may be a torn tail: damage that later
// blocks prove a completed sync covered is refused instead, with an error
// wrapping layout.ErrCorrupt (see midLogDamage). The prefix is cut further
// at the first MAP record that is still live at the end (its slot still
// holds its block) but whose data does not match its CRC. Such a record was written without any sync after its data write, so
// neither it nor any later record was ever promised; dropping them leaves
// the previous versions, whose slots cannot have been reused (reuse waits
// for a sync). A MAP that later records supersede is not checked: its slot
// may legitimately hold newer data.
//
// An in-place MAP (RecordInPlace) that fails the check is voided alone, and
// the check moves on to the record before it for the same slot: it was
// journaled before its data write, so after a process crash its failure
// means that write never happened while later records (other blocks'
// acknowledged writes) are sound; after a power cut, no sync can have
// completed since it, so nothing after it was promised either way.
func (c *Cache) recover() (recoveryResult, error) {
	sb := &c.sb
	var res recoveryResult
	recs, endLSN, endCount, maxInc, err := c.loadState()
	if err != nil {
		return res, err
	}
	n, void, err := c.validPrefix(recs)
	if err != nil {
		return res, err
	}
	res.dropped = len(recs) - n + len(void)
	res.records = n - len(void)
	if f := traceRecovery.Load(); f != nil {
		(*f)(c, recs, n)
	}
	res.epoch = uint32(sb.FlushEpoch)
	c.applyReplay(recs[:n], void, &res)
	if res.dropped > 0 {
		c.log.Warn("recovery dropped journal records whose data never reached the cache device (they were never synced)", "dropped", res.dropped)
	}
	res.endLSN, res.endCount = endLSN, endCount
	res.incarnation = max(maxInc, sb.CheckpointIncarnation) + 1
	c.stats.replayed.Store(uint64(n))
	return res, nil
}

// loadState loads the checkpoint into a new slot table and reads the
// journal after it (see readJournal for the results).
func (c *Cache) loadState() ([]layout.Record, uint64, int, uint64, error) {
	c.mu.t.init(c.g.SlotCount, uint64(c.opts.shardSlots))
	if err := c.loadCheckpoint(); err != nil {
		return nil, 0, 0, 0, err
	}
	return c.readJournal()
}

// applyReplay applies recs, but for the void ones, to the slot table
// loaded from the checkpoint, and rebuilds the free set and counts.
func (c *Cache) applyReplay(recs []layout.Record, void map[int]bool, res *recoveryResult) {
	t := &c.mu.t
	for i, r := range recs {
		if !void[i] {
			applyRecord(t, r)
			if epochBefore(res.epoch, r.Epoch) {
				res.epoch = r.Epoch
			}
		}
	}
	// A fuzzy checkpoint can name two slots for one LBA; the journal decides
	// which one the index keeps. Free every slot the index does not point
	// to, but for older versions (a clean one is no version to write back).
	for s := range t.flags {
		if t.flags[s]&fValid == 0 {
			continue
		}
		if t.isOlder(uint32(s)) {
			if t.flags[s]&fDirty == 0 {
				delete(t.older, uint32(s))
				t.flags[s] = 0
			}
			continue
		}
		if got, ok := t.lookup(t.lba[s]); !ok || got != uint32(s) {
			t.flags[s] = 0
		}
	}
	for i := range t.shards {
		sh := &t.shards[i]
		sh.valid, sh.dirty = 0, 0
		clear(sh.epochs)
		sh.epochQ, sh.epochHead = sh.epochQ[:0], 0
	}
	clear(t.olderLBA)
	for s := len(t.flags) - 1; s >= 0; s-- {
		f := t.flags[s]
		switch {
		case f&fValid == 0:
			t.flags[s] = 0
			t.free.add(uint32(s))
		case f&fDirty != 0:
			sh := t.shardOfSlot(uint32(s))
			sh.valid++
			sh.dirty++
			t.countEpoch(sh, t.epoch[s], 1)
			if t.isOlder(uint32(s)) {
				t.countOlder(t.lba[s], 1)
			}
			if epochBefore(res.epoch, t.epoch[s]) {
				res.epoch = t.epoch[s]
			}
		default:
			t.shardOfSlot(uint32(s)).valid++
		}
	}
	res.valid, res.dirty = t.validCount(), t.dirtyCount()
}

// loadCheckpoint reads the slot map and dirty bitmap named by the
// superblock into the slot table (which must be empty). Pages were synced
// before the superblock named them, so any bad page is corruption. A page
// may be of an older generation: the checkpoints since found it unchanged
// and left it (checkpoint).
func (c *Cache) loadCheckpoint() error {
	sb := &c.sb
	t := &c.mu.t
	const chunk = 64
	buf := device.AlignedBuffer(chunk * BlockSize)
	cp := int(sb.CheckpointCopy)
	for first := uint64(0); first < c.g.CheckpointBlocks; first += chunk {
		nb := min(chunk, c.g.CheckpointBlocks-first)
		b := buf[:nb*BlockSize]
		if _, err := c.ssd.ReadAt(b, c.g.MapPageOffset(cp, first)); err != nil {
			return fmt.Errorf("reading checkpoint: %w", err)
		}
		for k := uint64(0); k < nb; k++ {
			i := first + k
			page := b[k*BlockSize : (k+1)*BlockSize]
			if i < c.g.MapPages {
				if err := layout.CheckPageUpTo(page, layout.MapPage, c.uuid, sb.CheckpointGeneration, uint32(i)); err != nil {
					return fmt.Errorf("checkpoint copy %d is damaged: %w", cp, err)
				}
				base := i * layout.EntriesPerMapPage
				for e := 0; e < layout.EntriesPerMapPage && base+uint64(e) < c.g.SlotCount; e++ {
					me := layout.GetMapEntry(page, e)
					if !me.Valid {
						continue
					}
					if me.LBA >= c.nblocks {
						return fmt.Errorf("checkpoint slot %d maps LBA %d beyond the backing device: %w", base+uint64(e), me.LBA, layout.ErrCorrupt)
					}
					s := uint32(base + uint64(e))
					t.lba[s], t.crc[s], t.flags[s] = me.LBA, me.CRC, fValid
					t.epoch[s] = layout.EpochFrom(me.Epoch, uint32(sb.FlushEpoch))
					if me.Older {
						t.older[s] = struct{}{}
					} else {
						t.shardOf(me.LBA).index.put(me.LBA, s, t.lba)
					}
				}
				continue
			}
			bi := i - c.g.MapPages
			if err := layout.CheckPageUpTo(page, layout.BitmapPage, c.uuid, sb.CheckpointGeneration, uint32(bi)); err != nil {
				return fmt.Errorf("checkpoint copy %d is damaged: %w", cp, err)
			}
			bits := layout.BitmapPayload(page)
			base := bi * layout.BitsPerBitmapPage
			for bit := uint64(0); bit < layout.BitsPerBitmapPage && base+bit < c.g.SlotCount; bit++ {
				if bits[bit/8]&(1<<(bit%8)) != 0 {
					s := base + bit
					if t.flags[s]&fValid != 0 {
						t.flags[s] |= fDirty
					}
				}
			}
		}
	}
	return nil
}

// readJournal reads valid blocks from the replay LSN on. It returns the
// records, the LSN after the last valid block, how many records that block
// held, and the highest incarnation seen. Where it stops at damage that a
// completed sync covered (see midLogDamage), it returns a
// *journalDamageError wrapping layout.ErrCorrupt instead.
func (c *Cache) readJournal() ([]layout.Record, uint64, int, uint64, error) {
	sb := &c.sb
	const chunk = 256
	buf := device.AlignedBuffer(chunk * BlockSize)
	var recs []layout.Record
	lsn := sb.ReplayLSN
	inc := sb.CheckpointIncarnation
	end := sb.ReplayLSN + c.g.JournalBlocks
	var prev *layout.JournalHeader // block lsn-1's; nil: not read (lsn is the replay LSN)
	quiet := ^uint64(0)            // no two syncs ended blocks from this one on (midLogDamage)
	for lsn < end {
		pos := lsn % c.g.JournalBlocks
		nb := min(chunk, c.g.JournalBlocks-pos, end-lsn)
		b := buf[:nb*BlockSize]
		if _, err := c.ssd.ReadAt(b, c.g.JournalOffset(lsn)); err != nil {
			return nil, 0, 0, 0, fmt.Errorf("reading journal: %w", err)
		}
		for k := uint64(0); k < nb; k++ {
			h, more, err := layout.DecodeJournalBlock(b[k*BlockSize:(k+1)*BlockSize], c.uuid, recs)
			stop := err != nil || h.LSN != lsn || h.Incarnation < inc
			switch {
			case stop || prev == nil || (h.PrevCount == prev.Count && prev.Reach == prev.Count):
			case prev.Alone && h.Alone:
				// Block lsn-1 has holes below what it held when lsn was
				// begun: records a crash cut short, or torn without a
				// sync. The records after a hole are independent of it
				// (journal.go), so replay goes on, unless a completed
				// sync had covered the hole. Once a look finds no such
				// sync from a block on, none can be found from a later
				// one.
				if lsn-1 < quiet {
					if derr := c.midLogDamage(lsn, h, nil, inc, prev, len(recs)); derr != nil {
						return nil, 0, 0, 0, derr
					}
					quiet = lsn - 1
				}
			default:
				// A chained block that lost records ends the log, and so
				// does a block with holes before a chained one: chained
				// blocks are ordered write-back's, which must not replay
				// a record without every one placed before it
				// (journal.setChained).
				stop = true
			}
			if stop {
				if f := traceJournalEnd.Load(); f != nil {
					(*f)(lsn, h, err, inc)
				}
				if derr := c.midLogDamage(lsn, h, err, inc, prev, len(recs)); derr != nil {
					return nil, 0, 0, 0, derr
				}
				return recs, lsn, prevCount(prev), inc, nil
			}
			for _, r := range more[len(recs):] {
				if uint64(r.Slot) >= c.g.SlotCount || r.LBA >= c.nblocks {
					return nil, 0, 0, 0, fmt.Errorf("journal block %d: %v record for slot %d LBA %d out of range: %w", lsn, r.Type, r.Slot, r.LBA, layout.ErrCorrupt)
				}
			}
			recs, inc, prev = more, h.Incarnation, &h
			c.stats.replayHoles.Add(uint64(h.Reach - h.Count))
			lsn++
		}
	}
	return recs, lsn, prevCount(prev), inc, nil
}

// prevCount is how many records block h holds (none if h is nil).
func prevCount(h *layout.JournalHeader) int {
	if h == nil {
		return 0
	}
	return h.Count
}

// A torn tail and damage in the middle of the log both stop replay, but
// only a torn tail may be replayed up to the tear: anything else serves
// blocks older than what a completed sync promised. The two are told
// apart by what the journal proves about syncs, from how it is written
// (journal.go):
//
//   - A block is ended (sealed) either when full, leaving its successor's
//     header with a previous count of RecordsPerBlock, or when a sync
//     starts, leaving fewer (a sync ends at most the one open block).
//     So a valid header of block X+1 whose previous count is below
//     RecordsPerBlock proves that a sync started after every record of
//     block X and of the blocks before it had been written.
//   - Syncs run one at a time, and none starts after one has failed. So
//     when blocks A < B were both ended by syncs, the sync that ended B
//     started after the one that ended A had completed: every block up to
//     A was then durable, and sealed, so never written again.
//
// Hence damage at block D (a bad header, a stale block where D should be,
// or fewer valid records than the next block's header says D held) is in
// the middle of the log when two blocks A < B at or after D were ended by
// syncs, as valid headers of blocks A+1 and B+1 of the checkpoint's
// incarnation show. A torn tail never shows that: if S is the last sync
// that completed, a torn or missing block was still open or not started
// when S started, and only the one sync after S (started, not completed)
// can have ended a block from it on. The evidence is sound only for
// blocks of one incarnation written in order from a start no later than
// D: the checkpoint's incarnation started writing at or before the
// replay LSN (its first checkpoint named the LSN it started at), every
// block of it was started once, in LSN order, and a later incarnation
// never writes a block before its own checkpoint is in the superblock.
// A block's LSN is absolute, so a block left from an earlier pass of the
// ring never counts. Nothing is promised about damage that fewer than
// two syncs have ended blocks after: it is treated as a torn tail.
//
// After a clean stop nothing was written after the replay LSN, so no
// evidence can exist and the ring is not scanned; otherwise midLogDamage
// reads the headers of the rest of the ring, until it has the evidence.

// journalDamageError is damage in the middle of the journal: replay
// cannot go past it, and stopping there would serve stale blocks.
type journalDamageError struct {
	lsn     uint64    // the damaged block
	pos     uint64    // its position in the ring
	off     int64     // its byte offset on the cache device
	reason  string    // what is wrong with it
	records int       // valid records before the damage, from the replay LSN on
	synced  [2]uint64 // blocks at or after it, each ended by a sync, the first sync completed before the second began
}

// describe says what is damaged and why it is not a torn tail.
func (e *journalDamageError) describe() string {
	return fmt.Sprintf("journal block %d (ring position %d, cache device byte offset %d) is damaged: %s; "+
		"a completed sync had covered it (journal blocks %d and %d were each ended by a sync, the second begun only after the first had completed), "+
		"so it is not a torn tail, and replaying only the %d records before the damage would serve stale blocks",
		e.lsn, e.pos, e.off, e.reason, e.synced[0], e.synced[1], e.records)
}

func (e *journalDamageError) Error() string {
	return e.describe() + "; the cache is not opened and none of its blocks are served: " + layout.ErrCorrupt.Error()
}

func (e *journalDamageError) Unwrap() error { return layout.ErrCorrupt }

// midLogDamage decides whether the reason replay stopped at block stop
// is damage in the middle of the log (see journalDamageError): h, err and
// inc are what stopped it (err nil and h valid: block stop-1 of records
// checked alone has holes, and replay goes on unless they are damage),
// prev block stop-1's header with the records found in it (nil if stop
// is the replay LSN), records how many valid records came before.
// It returns nil for what may be a torn tail, a *journalDamageError for
// damage, or a read error.
func (c *Cache) midLogDamage(stop uint64, h layout.JournalHeader, err error, inc uint64, prev *layout.JournalHeader, records int) error {
	sb := &c.sb
	if sb.Clean() {
		return nil
	}
	d := stop
	var reason string
	switch {
	case err != nil:
		reason = fmt.Sprintf("it does not decode (%s)", strings.TrimSuffix(err.Error(), ": "+layout.ErrCorrupt.Error()))
	case h.LSN != stop && h.LSN%c.g.JournalBlocks == stop%c.g.JournalBlocks:
		reason = fmt.Sprintf("it holds journal block %d instead, from another pass of the ring", h.LSN)
	case h.LSN != stop:
		reason = fmt.Sprintf("it holds journal block %d instead, which belongs at ring position %d", h.LSN, h.LSN%c.g.JournalBlocks)
	case h.Incarnation < inc:
		reason = fmt.Sprintf("it holds a block of incarnation %d, older than the log's %d", h.Incarnation, inc)
	default:
		d = stop - 1 // block stop-1 holds fewer records than stop's header says
		n := prevCount(prev)
		switch {
		case prev != nil && prev.Alone:
			reason = fmt.Sprintf("it holds %d valid records at positions below %d, but block %d was begun when it held %d", n, prev.Reach, stop, h.PrevCount)
		case n < h.PrevCount:
			reason = fmt.Sprintf("its record %d fails its checksum (block %d was begun when it held %d records)", n, stop, h.PrevCount)
		default:
			reason = fmt.Sprintf("it holds %d valid records, but block %d was begun when it held %d", n, stop, h.PrevCount)
		}
	}
	const chunk = 256
	buf := device.AlignedBuffer(chunk * BlockSize)
	end := sb.ReplayLSN + c.g.JournalBlocks
	var synced []uint64
	for lsn := d + 1; lsn < end && len(synced) < 2; {
		pos := lsn % c.g.JournalBlocks
		nb := min(chunk, c.g.JournalBlocks-pos, end-lsn)
		b := buf[:nb*BlockSize]
		if _, err := c.ssd.ReadAt(b, c.g.JournalOffset(lsn)); err != nil {
			return fmt.Errorf("reading journal: %w", err)
		}
		for k := uint64(0); k < nb && len(synced) < 2; k++ {
			h, err := layout.DecodeJournalHeader(b[k*BlockSize:], c.uuid)
			if err == nil && h.LSN == lsn+k && h.Incarnation == sb.CheckpointIncarnation && h.PrevCount < layout.RecordsPerBlock {
				synced = append(synced, lsn+k-1)
			}
		}
		lsn += nb
	}
	if len(synced) < 2 {
		return nil
	}
	return &journalDamageError{lsn: d, pos: d % c.g.JournalBlocks, off: c.g.JournalOffset(d), reason: reason,
		records: records, synced: [2]uint64{synced[0], synced[1]}}
}

// validPrefix returns how many records form the recoverable log, and the
// in-place MAP records in it that are void (see recover).
func (c *Cache) validPrefix(recs []layout.Record) (int, map[int]bool, error) {
	n := len(recs)
	void := make(map[int]bool)
	checked := make(map[int]bool) // record index -> data matches
	for {
		live := liveMaps(recs[:n], void)
		if err := c.checkSlots(recs, live, checked); err != nil {
			return 0, nil, err
		}
		bad := -1
		for _, i := range live {
			if !checked[i] && (bad < 0 || i < bad) {
				bad = i
			}
		}
		switch {
		case bad < 0:
			for i := range void {
				if i >= n {
					delete(void, i)
				}
			}
			return n, void, nil
		case recs[bad].Flags&layout.RecordInPlace != 0:
			// Its data write never happened (or was lost with power):
			// the record before it for this slot stands, to be checked
			// in turn.
			void[bad] = true
		default:
			n = bad
		}
	}
}

// checkSlots records in checked, for each MAP record of recs named by idx
// that is not there yet, whether its slot's data matches its CRC. The
// reads run in parallel: after a power cut the slots are not in the page
// cache, and one read at a time would leave a solid-state device idle.
func (c *Cache) checkSlots(recs []layout.Record, idx []int, checked map[int]bool) error {
	var todo []int
	for _, i := range idx {
		if _, seen := checked[i]; !seen {
			todo = append(todo, i)
		}
	}
	ok := make([]bool, len(todo))
	errs := make([]error, len(todo))
	workers := min(len(todo), 16)
	var next atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := device.AlignedBuffer(BlockSize)
			for k := int(next.Add(1) - 1); k < len(todo); k = int(next.Add(1) - 1) {
				r := recs[todo[k]]
				if _, err := c.ssd.ReadAt(buf, c.g.SlotOffset(uint64(r.Slot))); err != nil {
					errs[k] = fmt.Errorf("verifying replayed slot %d: %w", r.Slot, err)
					continue
				}
				ok[k] = layout.DataCRC(buf) == r.CRC
			}
		}()
	}
	wg.Wait()
	for k, i := range todo {
		if errs[k] != nil {
			return errs[k]
		}
		checked[i] = ok[k]
	}
	return nil
}

// liveMaps returns the indexes of MAP records, other than void ones, whose
// mapping no later record in recs undoes: the current versions, and the
// older versions kept by a later MAP (RecordKeepOld) and not freed since.
func liveMaps(recs []layout.Record, void map[int]bool) []int {
	type slotLBA struct {
		s   uint32
		lba uint64
	}
	slots := make(map[uint32]bool)
	lbas := make(map[uint64]bool)
	freed := make(map[slotLBA]bool)
	kept := make(map[slotLBA]bool) // older versions a later MAP keeps
	var live []int
	for i := len(recs) - 1; i >= 0; i-- {
		r := recs[i]
		if void[i] {
			continue
		}
		switch r.Type {
		case layout.RecMap:
			sl := slotLBA{r.Slot, r.LBA}
			if !slots[r.Slot] && (!lbas[r.LBA] || kept[sl]) && !freed[sl] {
				live = append(live, i)
			}
			slots[r.Slot], lbas[r.LBA] = true, true
			if r.Flags&layout.RecordKeepOld != 0 {
				kept[slotLBA{r.Old, r.LBA}] = true
			}
		case layout.RecFree:
			freed[slotLBA{r.Slot, r.LBA}] = true
		}
	}
	return live
}

// applyRecord applies one journal record to the slot table. Records are
// absolute, so applying a record whose effect the (fuzzy) checkpoint
// already holds is harmless.
func applyRecord(t *slotTable, r layout.Record) {
	s := r.Slot
	switch r.Type {
	case layout.RecMap:
		if t.flags[s]&fValid != 0 {
			dropSlot(t, s)
		}
		if o := r.Old; r.Flags&layout.RecordKeepOld != 0 && t.flags[o]&fValid != 0 && t.lba[o] == r.LBA && !t.isOlder(o) {
			// The version it supersedes stays, older (counters are
			// rebuilt afterwards).
			t.shardOf(r.LBA).index.del(r.LBA, o, t.lba)
			t.older[o] = struct{}{}
		}
		if old, ok := t.lookup(r.LBA); ok {
			dropSlot(t, old)
		}
		t.lba[s], t.crc[s] = r.LBA, r.CRC
		t.flags[s] = fValid
		t.epoch[s] = r.Epoch
		if r.Flags&layout.RecordDirty != 0 {
			t.flags[s] |= fDirty
		}
		t.shardOf(r.LBA).index.put(r.LBA, s, t.lba)
	case layout.RecClean:
		if t.flags[s]&fValid != 0 && t.lba[s] == r.LBA && t.crc[s] == r.CRC {
			t.flags[s] &^= fDirty
		}
	case layout.RecFree:
		if t.flags[s]&fValid != 0 && t.lba[s] == r.LBA {
			dropSlot(t, s)
		}
	}
}

// dropSlot unmaps s during recovery (counters are rebuilt afterwards).
func dropSlot(t *slotTable, s uint32) {
	if t.isOlder(s) {
		delete(t.older, s)
	} else {
		t.shardOfSlot(s).index.del(t.lba[s], s, t.lba)
	}
	t.flags[s] = 0
}
