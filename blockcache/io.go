package blockcache

import (
	"errors"
	"fmt"
	"sync"

	"github.com/wbcache/wbcache/device"
	"github.com/wbcache/wbcache/layout"
)

var blockPool = sync.Pool{New: func() any { b := device.AlignedBuffer(BlockSize); return &b }}

func getBlock() *[]byte  { return blockPool.Get().(*[]byte) }
func putBlock(b *[]byte) { blockPool.Put(b) }

func (c *Cache) checkRange(off, n int64) error {
	if off < 0 || n < 0 || off > c.size || n > c.size-off {
		return fmt.Errorf("%w: I/O at offset %d length %d is outside the %d-byte disk", ErrInvalid, off, n, c.size)
	}
	return nil
}

// ReadAt reads len(p) bytes at off. Any offset and length inside the disk
// is allowed.
func (c *Cache) ReadAt(p []byte, off int64) (int, error) {
	if err := c.usable(); err != nil {
		return 0, err
	}
	if err := c.checkRange(off, int64(len(p))); err != nil {
		return 0, err
	}
	c.stats.reads.Add(1)
	c.stats.readBytes.Add(uint64(len(p)))
	seq := c.seqDetect(&c.seqReads, off, int64(len(p)))
	done := 0
	for done < len(p) {
		lba := uint64(off+int64(done)) / BlockSize
		inBlock := int((off + int64(done)) % BlockSize)
		// Blocks from lba on that this request still covers.
		want := (inBlock + len(p) - done + BlockSize - 1) / BlockSize
		n, err := c.readRun(lba, want, p[done:], inBlock, seq)
		if err != nil {
			return done, err
		}
		done += n
	}
	return done, nil
}

// readRun serves blocks starting at lba: either one cached block, or a run
// of up to want uncached blocks read from the backing device in one I/O.
// It copies into dst starting at byte inBlock of the first block and
// returns the bytes copied.
func (c *Cache) readRun(lba uint64, want int, dst []byte, inBlock int, seq bool) (int, error) {
	b := getBlock()
	defer putBlock(b)
	hit, gen, err := c.readCached(lba, *b)
	for bad, ok := err.(*badSlot); ok; bad, ok = err.(*badSlot) {
		// Heal a clean block (then look again: it reads as a miss), or
		// report a lost dirty one.
		if err := c.corruptSlot(lba, bad.slot, bad.crc); err != nil {
			return 0, err
		}
		hit, gen, err = c.readCached(lba, *b)
	}
	if err != nil {
		return 0, err
	}
	if hit {
		c.stats.readHits.Add(1)
		return copy(dst, (*b)[inBlock:]), nil
	}
	// Collect the run of misses (at most 256 blocks = 1 MiB).
	run := 1
	gens := []uint64{gen}
	for run < min(want, 256) {
		g, cached := c.probe(lba + uint64(run))
		if cached {
			break
		}
		gens = append(gens, g)
		run++
	}
	c.stats.readMisses.Add(uint64(run))
	// Only data the backing device holds durably may become a clean copy.
	durable := c.hddSynced.Load() == c.hddWritten.Load()
	var buf []byte
	if run == 1 {
		buf = *b
	} else {
		buf = device.AlignedBuffer(run * BlockSize)
	}
	if _, err := c.hdd.ReadAt(buf, int64(lba)*BlockSize); err != nil {
		c.stats.backingErrors.Add(1)
		return 0, fmt.Errorf("reading backing device at block %d: %w", lba, err)
	}
	n := copy(dst, buf[inBlock:])
	if !seq && durable {
		for i := 0; i < run; i++ {
			c.maybePromote(lba+uint64(i), buf[i*BlockSize:(i+1)*BlockSize], gens[i])
		}
	}
	return n, nil
}

// readCached reads lba from its cache slot if it has one. Otherwise it
// returns the stripe generation seen, for promotion.
func (c *Cache) readCached(lba uint64, dst []byte) (bool, uint64, error) {
	st := c.stripe(lba)
	st.RLock()
	defer st.RUnlock()
	sh := c.lockLBA(lba)
	s, ok := c.mu.t.lookup(lba)
	var crc uint32
	if ok {
		c.mu.t.flags[s] |= fRef
		crc = c.mu.t.crc[s]
	}
	c.unlockLBA(sh)
	if !ok {
		return false, c.stripeGen(lba), nil
	}
	// The slot cannot be unmapped (let alone reused) while we hold the
	// stripe lock: every unmapping holds it exclusively.
	if _, err := c.ssd.ReadAt(dst, c.g.SlotOffset(uint64(s))); err != nil {
		return false, 0, c.ssdReadError(s, err)
	}
	if layout.DataCRC(dst) != crc {
		return false, 0, &badSlot{slot: s, crc: crc}
	}
	return true, 0, nil
}

// badSlot: a cached block's slot fails its checksum (see corrupt.go).
type badSlot struct {
	slot, crc uint32
}

func (e *badSlot) Error() string {
	return fmt.Sprintf("%v: cache slot %d fails its checksum", ErrCorruptData, e.slot)
}

func (c *Cache) ssdReadError(s uint32, err error) error {
	c.stats.cacheErrors.Add(1)
	return fmt.Errorf("reading cache slot %d: %w", s, err)
}

// probe reports whether lba is cached, and the stripe generation.
func (c *Cache) probe(lba uint64) (uint64, bool) {
	st := c.stripe(lba)
	st.RLock()
	defer st.RUnlock()
	sh := c.lockLBA(lba)
	_, ok := c.mu.t.lookup(lba)
	c.unlockLBA(sh)
	return c.stripeGen(lba), ok
}

// gens counts mapping changes per stripe; written under the stripe's
// write lock, read under either lock.
func (c *Cache) stripeGen(lba uint64) uint64 { return c.gens[stripeOf(lba)] }
func (c *Cache) bumpGen(lba uint64)          { c.gens[stripeOf(lba)]++ }

// WriteAt writes p at off. It returns once every block is in the cache
// device's page cache and journaled (it survives a process crash); Sync
// makes it survive a power cut.
func (c *Cache) WriteAt(p []byte, off int64) (int, error) {
	if err := c.usable(); err != nil {
		return 0, err
	}
	if err := c.checkRange(off, int64(len(p))); err != nil {
		return 0, err
	}
	c.stats.writes.Add(1)
	c.stats.writeBytes.Add(uint64(len(p)))
	mode := c.Mode()
	bypass := mode != ModeWriteback && mode != ModeWritethrough
	stream := c.seqDetect(&c.seqWrites, off, int64(len(p))) && mode != ModeWritethrough
	bypass = bypass || stream
	var last uint64
	wentAround := false    // some of p went to the backing device alone
	done, perBlock := 0, 0 // [done, perBlock) is a run written block by block
	for done < len(p) {
		pos := off + int64(done)
		lba := uint64(pos) / BlockSize
		inBlock := int(pos % BlockSize)
		if mode == ModeWritethrough && done >= perBlock && inBlock == 0 && len(p)-done >= 2*BlockSize {
			// Whole blocks written through: one journal sync and one
			// backing I/O per run, not one of each per block.
			n := min((len(p)-done)/BlockSize, maxAroundRun) * BlockSize
			seq, ok, err := c.writeThroughRun(lba, p[done:done+n])
			if err != nil {
				return done, err
			}
			if ok {
				last = max(last, seq)
				done += n
				continue
			}
			perBlock = done + n // ordering is in force: writeBlock decides each
		}
		if bypass && done >= perBlock && inBlock == 0 && len(p)-done >= 2*BlockSize {
			// Whole blocks going around the cache: one backing I/O per run.
			n := min((len(p)-done)/BlockSize, maxAroundRun) * BlockSize
			ok, err := c.writeAroundRun(lba, p[done:done+n], mode != ModeWriteback)
			if err != nil {
				return done, err
			}
			if ok {
				done += n
				wentAround = true
				continue
			}
			// A block of the run has a dirty cached version the run may
			// not go around: in writeback mode the whole run goes into
			// the cache, not a scatter of short backing writes around
			// it. The other modes admit no new blocks, so there (with
			// ordered write-back holding the backing device back, the
			// one case left) it goes block by block.
			perBlock = done + n
		}
		around := bypass && (mode != ModeWriteback || done >= perBlock)
		n := min(BlockSize-inBlock, len(p)-done)
		seq, err := c.writeBlock(lba, inBlock, p[done:done+n], mode, around)
		if err != nil {
			return done, err
		}
		wentAround = wentAround || (around && seq == 0)
		last = max(last, seq)
		done += n
	}
	if wentAround && stream {
		c.stats.bypassed.Add(1)
	}
	if last > 0 {
		if err := c.j.appended(last); err != nil {
			return 0, c.fail(err)
		}
	}
	c.j.prepareAhead()
	return done, nil
}

// maxAroundRun is the most blocks writeAroundRun sends in one I/O.
const maxAroundRun = 256

// writeAroundRun writes whole blocks straight to the backing device in one
// I/O. Clean cached copies in the run are dropped first, together, with
// FREE records that are durable before the backing write (invariant 3:
// writeBackingAt waits for them). A block with a dirty cached version must
// not be written under it (invariant 4): with overDirty the run still goes
// around, superseding those versions as Discard does (writeOverDirty);
// without, or where the backing device may not be written in place (an
// older version kept for ordered write-back, or ordering in force), it
// returns false, having written nothing, and the run must go into the
// cache.
func (c *Cache) writeAroundRun(lba uint64, data []byte, overDirty bool) (bool, error) {
	n := uint64(len(data) / BlockSize)
	locked := c.lockStripes(lba, lba+n)
	defer c.unlockStripes(locked)
	clean, plan, release := c.cachedIn(lba, n, overDirty)
	if plan == aroundCache {
		return false, nil
	}
	buf := device.AlignedBuffer(len(data))
	copy(buf, data)
	// The generations change even when the write fails: it may have
	// changed some of the blocks, and a read that sampled them before
	// must not cache what it read (maybePromote).
	defer func() {
		for _, i := range locked {
			c.gens[i]++
		}
	}()
	if plan == aroundOver {
		err := c.writeOverDirty(lba, lba+n, buf)
		release()
		if err == nil {
			c.stats.aroundOverDirty.Add(1)
		}
		return err == nil, err
	}
	if len(clean) > 0 {
		if err := c.dropClean(clean); err != nil {
			return false, err
		}
	}
	if err := c.writeBackingAt(lba, buf); err != nil {
		return false, err
	}
	return true, nil
}

// Where a run written around the cache goes (cachedIn).
const (
	aroundClear = iota // to the backing device: no block has a dirty cached version
	aroundOver         // to the backing device, superseding dirty cached versions (writeOverDirty)
	aroundCache        // into the cache
)

// cachedIn lists the clean cached blocks among the n from lba and tells
// where a run written around the cache over them goes: into the cache if
// a block has a dirty cached version (unless overDirty; with it, if every
// block has one), if one has an older version kept for ordered
// write-back, or if ordered write-back is behind or in force over a
// dirty block. For aroundOver it has marked the run as overwritten
// (holdOverwriteLocked) until the caller calls release. The caller holds
// their stripe locks.
func (c *Cache) cachedIn(lba, n uint64, overDirty bool) (clean []DirtyBlock, plan int, release func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.behindLocked(c.epoch.Load()) {
		// Ordered write-back is behind: the run must go into the cache.
		return nil, aroundCache, nil
	}
	t := &c.mu.t
	dirty := uint64(0)
	for l := lba; l < lba+n; l++ {
		s, ok := t.lookup(l)
		if t.olderLBA[l] > 0 {
			return nil, aroundCache, nil
		}
		if !ok {
			continue
		}
		if t.flags[s]&fDirty != 0 {
			// With ordering in force the backing device must not get
			// a version ahead of a dirty one (as in writeBlock).
			// After a failed backing sync nothing written in place
			// can be promised durable: the cache keeps the blocks.
			if !overDirty || c.orderingLocked() || c.backingSyncErr.Load() != nil {
				return nil, aroundCache, nil
			}
			plan = aroundOver
			dirty++
			continue
		}
		clean = append(clean, DirtyBlock{LBA: l, Slot: s})
	}
	if dirty == n {
		// Every block has a dirty version to supersede in the cache:
		// it admits no new block there, and costs no backing I/O.
		return nil, aroundCache, nil
	}
	if plan == aroundOver {
		release = c.holdOverwriteLocked(lba, lba+n)
		// The hold may have waited for a destage's write with Cache.mu
		// released, and ordered write-back may have come into force
		// meanwhile (the stripes keep the blocks themselves as they
		// were): then the dirty versions are superseded in the cache.
		if c.orderingLocked() {
			c.unholdOverwriteLocked(lbaRange{lba, lba + n})
			return nil, aroundCache, nil
		}
	}
	return clean, plan, release
}

// writeOverDirty writes whole blocks [lo, hi) to the backing device in
// place over dirty cached versions, which it supersedes the way Discard
// does (invariant 5): clean copies are dropped durably first, the backing
// device is written and synced, and only then are the dirty copies
// dropped with FREE records. A crash before those records leaves the
// dirty versions to be written back over the new data, as if the write
// had not happened; after them, each block reads as written. The caller
// holds the stripe locks, and cachedIn has marked the range as
// overwritten.
func (c *Cache) writeOverDirty(lo, hi uint64, buf []byte) error {
	if err := c.usable(); err != nil {
		return err
	}
	if err := c.freeMapped(lo, hi, false); err != nil {
		return err
	}
	if err := c.writeBackingAt(lo, buf); err != nil {
		return err
	}
	if err := c.syncBacking(); err != nil {
		return err
	}
	return c.freeMapped(lo, hi, true)
}

// dropClean unmaps clean cached copies with FREE records, in batches of
// at most a journal block's worth. The caller holds their stripe locks,
// so they are still mapped and clean.
func (c *Cache) dropClean(blocks []DirtyBlock) error {
	for len(blocks) > 0 {
		k := min(len(blocks), layout.RecordsPerBlock)
		m, err := c.beginChange(k)
		if err != nil {
			return c.fail(err)
		}
		for _, b := range blocks[:k] {
			m.free(b.Slot, b.LBA, true)
		}
		m.end()
		blocks = blocks[k:]
	}
	return nil
}

// writeBlock writes data at byte inBlock of block lba and returns the
// sequence number of its journal record (0 if none).
func (c *Cache) writeBlock(lba uint64, inBlock int, data []byte, mode Mode, bypass bool) (uint64, error) {
	st := c.stripe(lba)
	st.Lock()
	defer st.Unlock()
	if len(data) == BlockSize && mode == ModeWriteback && !bypass {
		return c.writeFast(lba, data)
	}
	// Under the stripe lock nothing else maps or unmaps lba, so old stays
	// the slot holding it until this write changes that.
	sh := c.lockLBA(lba)
	old, cached := c.mu.t.lookup(lba)
	// An older version still to be written back counts as dirty: the
	// backing device must not get this version before it (invariant 4).
	older := c.mu.t.olderLBA[lba] > 0
	dirty := cached && c.mu.t.flags[old]&fDirty != 0 || older
	var oldCRC uint32
	if cached {
		oldCRC = c.mu.t.crc[old]
	}
	// Ordered write-back behind: nothing goes to the backing device in
	// place before the older epochs' versions (ordered.go).
	behind := c.behindLocked(c.epoch.Load())
	// With ordering on, a block with a dirty version is not written
	// through: a power cut could lose the new version's record while the
	// backing device keeps its data, and recovery would then bring back
	// the dirty version under a backing device that is ahead of it.
	overDirty := dirty && c.orderingLocked()
	c.unlockLBA(sh)
	through := mode == ModeWritethrough && !bypass && !behind && !older && !overDirty
	toCache := !through && (dirty || behind || (!bypass && mode == ModeWriteback))
	var blk []byte
	if len(data) == BlockSize && toCache && !c.ssdAligned {
		// A whole block for the cache alone: write the caller's buffer.
		blk = data
	} else {
		b := getBlock()
		defer putBlock(b)
		blk = *b
	}
	if len(data) < BlockSize {
		// Read-modify-write under the block's lock.
		var err error
		if cached, err = c.readForUpdate(lba, old, oldCRC, cached, blk); err != nil {
			return 0, err
		}
		copy(blk[inBlock:], data)
	} else if &blk[0] != &data[0] {
		copy(blk, data)
	}
	switch {
	case through:
		return c.writeThrough(lba, blk, cached)
	case toCache:
		// A block with a dirty cached version is written back into the
		// cache whatever the mode: writing the backing device under it
		// could let a later destage put the older version over the new.
		if dirty && cached {
			if seq, ok, err := c.rewriteInPlace(lba, old, blk); ok || err != nil {
				return seq, err
			}
		}
		return c.cacheBlock(lba, blk, true)
	}
	if cached {
		// Drop the clean cached copy before the backing write (which
		// waits for the FREE record to be durable): a clean copy must
		// never differ from the backing device.
		if err := c.dropClean([]DirtyBlock{{LBA: lba, Slot: old}}); err != nil {
			return 0, err
		}
	}
	if err := c.writeBacking(lba, blk); err != nil {
		return 0, err
	}
	return 0, nil
}

// readForUpdate reads the current version of lba into blk for a partial
// write: from slot s (crc) if cached, else from the backing device. A
// clean cached copy that fails its checksum is dropped and the backing
// device read instead; it reports whether lba is still cached. Caller
// holds the stripe lock.
func (c *Cache) readForUpdate(lba uint64, s, crc uint32, cached bool, blk []byte) (bool, error) {
	if cached {
		if _, err := c.ssd.ReadAt(blk, c.g.SlotOffset(uint64(s))); err != nil {
			return true, c.ssdReadError(s, err)
		}
		if layout.DataCRC(blk) == crc {
			return true, nil
		}
		if err := c.corruptSlotLocked(lba, s, crc); err != nil {
			return true, err
		}
	}
	if _, err := c.hdd.ReadAt(blk, int64(lba)*BlockSize); err != nil {
		c.stats.backingErrors.Add(1)
		return false, fmt.Errorf("reading backing device at block %d: %w", lba, err)
	}
	return false, nil
}

// writeBacking writes one block in place on the backing device. Caller
// holds the block's stripe lock.
func (c *Cache) writeBacking(lba uint64, blk []byte) error {
	err := c.writeBackingAt(lba, blk)
	c.bumpGen(lba) // even failed: it may have changed the block (maybePromote)
	return err
}

// writeBackingAt writes whole blocks from lba in place on the backing
// device; the caller holds their stripe locks and bumps their generations.
func (c *Cache) writeBackingAt(lba uint64, blk []byte) error {
	if err := c.claimBacking(lba, lba+uint64(len(blk)/BlockSize)); err != nil {
		return err
	}
	// A block that looks uncached may have lost its clean copy to an
	// eviction whose FREE record is not durable yet; the backing device
	// must not change under a copy that recovery could bring back.
	if c.j.durable() < c.cleanUnmapSeq.Load() {
		if err := c.syncJournal(); err != nil {
			return err
		}
	}
	// Counted as it begins (a sync that fails meanwhile may have lost
	// it: backingSyncFailed) and once it has ended (even failed: it may
	// have changed some sectors), not before: a backing sync counts the
	// writes it covers before it starts, and one still on its way is not
	// covered.
	c.hddStarted.Add(1)
	_, err := c.hdd.WriteAt(blk, int64(lba)*BlockSize)
	c.hddWritten.Add(1)
	if err != nil {
		c.stats.backingErrors.Add(1)
		return fmt.Errorf("writing backing device at block %d: %w", lba, err)
	}
	return nil
}

// writeThrough caches the whole blocks of buf, from lba on, as dirty
// blocks and writes them to the backing device too, with one journal sync
// (when one superseded a cached copy) and one backing write for them all.
// They stay dirty until a Sync has made the backing write durable (then
// Sync marks them clean), so a power cut can never leave a clean cached
// copy that the backing device lacks. buf is aligned for the backing
// device. Caller holds the blocks' stripe locks; cached says one of them
// had a cached copy.
func (c *Cache) writeThrough(lba uint64, buf []byte, cached bool) (uint64, error) {
	n := uint64(len(buf) / BlockSize)
	var last uint64
	for i := range n {
		seq, err := c.cacheBlock(lba+i, buf[i*BlockSize:(i+1)*BlockSize], true)
		if err != nil {
			return 0, err
		}
		last = max(last, seq)
	}
	if cached {
		// The records superseding old clean copies must be durable before
		// the backing device changes under them.
		if err := c.syncJournal(); err != nil {
			return 0, err
		}
	}
	// A destage of an older version still in flight must land before this
	// version's backing write, or it would put the older version over it
	// after the backing sync that marks this one clean; one that has not
	// begun is claimed, and never will (claimBackingLocked). Doing so only
	// after the new versions are mapped closes the window: from then on Pin
	// takes them, never an older one. A block whose superseded version is
	// kept for ordered write-back (a Sync began since the caller looked)
	// must not reach the backing device before it: it stays dirty, for the
	// destager.
	var one [1]bool // a single block (writeBlock) allocates nothing
	write := one[:]
	if n > 1 {
		write = make([]bool, n)
	}
	c.mu.Lock()
	for i := range n {
		write[i] = c.mu.t.olderLBA[lba+i] == 0
	}
	c.claimBackingLocked(lba, lba+n)
	c.mu.Unlock()
	if err := c.usable(); err != nil {
		return 0, err
	}
	for i := uint64(0); i < n; {
		if !write[i] {
			i++
			continue
		}
		j := i + 1
		for j < n && write[j] {
			j++
		}
		err := c.writeBackingAt(lba+i, buf[i*BlockSize:j*BlockSize])
		for l := lba + i; l < lba+j; l++ {
			c.bumpGen(l) // even failed (writeBacking)
		}
		if err != nil {
			return 0, err
		}
		i = j
	}
	c.mu.Lock()
	for i := range n {
		if s, ok := c.mu.t.lookup(lba + i); ok && write[i] {
			c.mu.through = append(c.mu.through, DirtyBlock{LBA: lba + i, Slot: s, CRC: c.mu.t.crc[s]})
		}
	}
	c.mu.Unlock()
	return last, nil
}

// writeThroughRun writes whole blocks in mode writethrough as one run
// (writeThrough), instead of block by block through writeBlock: one
// journal sync and one backing write for the run, not one of each per
// 4 KiB block (block by block, a 1 MiB stream on a disk of 200 IOPS made
// 0.8 MiB/s). It returns false, having done nothing, while ordered
// write-back is in force: writeBlock then decides each block.
func (c *Cache) writeThroughRun(lba uint64, data []byte) (uint64, bool, error) {
	n := uint64(len(data) / BlockSize)
	locked := c.lockStripes(lba, lba+n)
	defer c.unlockStripes(locked)
	c.mu.Lock()
	ordering, cached := c.orderingLocked(), false
	for l := lba; l < lba+n && !cached; l++ {
		_, cached = c.mu.t.lookup(l)
	}
	c.mu.Unlock()
	if ordering {
		return 0, false, nil
	}
	buf := device.AlignedBuffer(len(data))
	copy(buf, data)
	seq, err := c.writeThrough(lba, buf, cached)
	if err == nil {
		c.stats.throughRuns.Add(1)
	}
	return seq, true, err
}

// cacheBlock writes blk into a new slot and maps lba to it (out of place:
// the old slot is freed once the new record is durable). Caller holds the
// stripe lock.
func (c *Cache) cacheBlock(lba uint64, blk []byte, dirty bool) (uint64, error) {
	s, err := c.allocSlot(lba, true)
	if err != nil {
		return 0, err
	}
	return c.fillSlot(s, lba, blk, layout.DataCRC(blk), dirty)
}

// rewriteInPlace writes blk over slot s, which holds lba (the caller
// looked it up under the stripe lock it holds), when no sync
// has covered that slot's MAP record yet, so nothing durable can point at
// the slot's old content. It saves a slot, and the page cache absorbs
// repeated rewrites of a block between two syncs. The MAP record (flagged
// in place) is journaled before the data is written: if the process dies
// in between, the slot still holds the acknowledged version the previous
// record names, and recovery voids the in-place record alone; if power is
// lost, the slot may be torn, both records are void, and the version
// before them stands (its slot is not reused before a sync covers the
// first of them, and no sync starts while an in-place rewrite is in
// flight). It reports false, having done nothing, when the slot does not
// qualify. Caller holds the stripe lock.
func (c *Cache) rewriteInPlace(lba uint64, s uint32, blk []byte) (uint64, bool, error) {
	// No journal room is reserved: the record goes in only if the ring
	// has room right now (else the block is written out of place, which
	// waits for room). Waiting for room here could wait for a
	// checkpoint's sync, which waits for in-place rewrites to end.
	crc := layout.DataCRC(blk)
	m, err := c.beginChangeAt(lba, false)
	if err != nil {
		return 0, false, c.fail(err)
	}
	seq, claimed, err := c.inPlaceLocked(&m, lba, s, blk, crc)
	if !claimed {
		m.end()
	}
	return seq, claimed, err
}

// inPlaceLocked is rewriteInPlace within the change m, begun without
// room reserved, for blk of checksum crc. Unless it claims the slot it
// returns with m still held, for the caller to end; once it has claimed
// the slot it has ended m, and reports it claimed even if the rewrite
// then fails (with the error).
func (c *Cache) inPlaceLocked(m *metaChange, lba uint64, s uint32, blk []byte, crc uint32) (uint64, bool, error) {
	t := &c.mu.t
	if t.lba[s] != lba || t.flags[s]&(fValid|fDirty|fPinned|fFresh|fWriting|fLost) != fValid|fDirty|fFresh {
		return 0, false, nil
	}
	// The table takes the new CRC with the record, so a checkpoint that
	// copies this slot before its replay point has passed the record
	// names the new version (its sync waits for the data write).
	seq, claimed, err := m.inPlace(t.shardOf(lba).freshGen, layout.Record{Type: layout.RecMap, Flags: layout.RecordDirty | layout.RecordInPlace, Slot: s, LBA: lba, CRC: crc})
	if !claimed {
		return 0, false, nil
	}
	t.crc[s] = crc
	t.flags[s] |= fWriting
	m.handOff()
	if err == nil {
		if _, werr := c.ssd.WriteAt(blk, c.g.SlotOffset(uint64(s))); werr != nil {
			// The slot may hold a torn mix now: no version in it can be
			// trusted any more.
			c.stats.cacheErrors.Add(1)
			err = fmt.Errorf("rewriting cache slot %d in place: %w", s, werr)
		}
	}
	sh := c.lockLBA(lba)
	t.flags[s] &^= fWriting
	c.unlockLBA(sh)
	c.j.endInPlace()
	if err != nil {
		return 0, true, c.fail(err)
	}
	c.stats.inPlace.Add(1)
	c.bumpGen(lba)
	return seq, true, nil
}

// writeFast is writeBlock for a whole block written back into the cache
// (writeback mode, not going around it), the common write. Under one
// hold of the block's shard lock it looks the block up and either claims
// its slot for a rewrite in place or takes a spare slot for the new
// version, which it then fills and maps (fillSlot). Caller holds the
// stripe lock.
func (c *Cache) writeFast(lba uint64, data []byte) (uint64, error) {
	blk := data
	if c.ssdAligned {
		b := getBlock()
		defer putBlock(b)
		blk = *b
		copy(blk, data)
	}
	crc := layout.DataCRC(blk)
	m, err := c.beginChangeAt(lba, false)
	if err != nil {
		return 0, c.fail(err)
	}
	t := &c.mu.t
	if old, cached := t.lookup(lba); cached {
		if seq, claimed, err := c.inPlaceLocked(&m, lba, old, blk, crc); claimed || err != nil {
			return seq, err
		}
	}
	var s uint32
	spare := false
	if len(t.shards) > 1 {
		s, spare = c.takeSpare()
	}
	m.end()
	if !spare {
		if s, err = c.allocFree(true); err != nil {
			return 0, err
		}
	}
	return c.fillSlot(s, lba, blk, crc, true)
}

// cacheBlockIfFree caches a clean copy when a slot is free right now.
func (c *Cache) cacheBlockIfFree(lba uint64, blk []byte) (uint64, error) {
	s, err := c.allocSlot(lba, false)
	if err != nil {
		return 0, nil // no room: the block is simply not cached
	}
	return c.fillSlot(s, lba, blk, layout.DataCRC(blk), false)
}

// fillSlot writes blk (checksum crc) into free slot s and maps lba to it.
func (c *Cache) fillSlot(s uint32, lba uint64, blk []byte, crc uint32, dirty bool) (uint64, error) {
	if _, err := c.ssd.WriteAt(blk, c.g.SlotOffset(uint64(s))); err != nil {
		c.putFree(s)
		c.stats.cacheErrors.Add(1)
		return 0, fmt.Errorf("writing cache slot %d: %w", s, err)
	}
	// First without journal room reserved (the record goes in if the
	// ring has room right now), then, if it had none, waiting for room.
	for reserve := false; ; reserve = true {
		seq, err := c.mapFilled(s, lba, crc, dirty, reserve)
		if err == errNoRoom {
			continue
		}
		if err != nil {
			c.putFree(s)
			return 0, c.fail(err)
		}
		c.bumpGen(lba)
		return seq, nil
	}
}

// mapFilled maps lba to slot s, just written with data of checksum crc,
// under lba's shard lock, journaling the MAP record. Without reserve it
// reserves no journal room and fails with errNoRoom, having changed
// nothing, if the ring has none right now.
func (c *Cache) mapFilled(s uint32, lba uint64, crc uint32, dirty, reserve bool) (uint64, error) {
	m, err := c.beginChangeAt(lba, reserve)
	if err != nil {
		return 0, err
	}
	defer m.end()
	var fl uint8
	if dirty {
		fl = layout.RecordDirty
	}
	t := &c.mu.t
	rec := layout.Record{Type: layout.RecMap, Flags: fl, Slot: s, LBA: lba, CRC: crc}
	old, ok := t.lookup(lba)
	keep := ok && dirty && c.keepOlderLocked(old, m.epoch)
	if keep {
		rec.Flags |= layout.RecordKeepOld
		rec.Old = old
	}
	seq, err := m.tryRecord(rec)
	if err != nil {
		return 0, err
	}
	switch {
	case keep:
		t.makeOlder(old)
		c.stats.olderKept.Add(1)
	case ok:
		c.unmapLocked(old, seq, false)
	}
	t.mapSlot(s, lba, crc, dirty, c.tick(), m.epoch)
	if dirty {
		t.markFresh(s, m.gen)
	}
	return seq, nil
}

// maybePromote copies a block just read from the backing device into the
// cache as a clean block, if the policy wants it and nothing changed the
// block's stripe since it was looked up.
func (c *Cache) maybePromote(lba uint64, blk []byte, gen uint64) {
	after := int(c.promoteAfter.Load())
	if after < 0 || c.Mode() == ModeNone {
		return
	}
	if !c.sketch.hit(lba, after) {
		return
	}
	st := c.stripe(lba)
	if !st.TryLock() {
		return
	}
	defer st.Unlock()
	if c.stripeGen(lba) != gen {
		return
	}
	sh := c.lockLBA(lba)
	_, cached := c.mu.t.lookup(lba)
	c.unlockLBA(sh)
	if cached {
		return
	}
	if seq, err := c.cacheBlockIfFree(lba, blk); err == nil && seq > 0 {
		c.stats.promotions.Add(1)
	}
}

// allocSlot takes a free slot for block lba: from the spare run, which
// takes them from the free set a batch at a time (next-fit, so writes
// still land in neighbouring slots), else as allocFree does.
func (c *Cache) allocSlot(lba uint64, wait bool) (uint32, error) {
	t := &c.mu.t
	if len(t.shards) > 1 {
		sh := t.shardOf(lba)
		sh.mu.Lock()
		s, ok := c.takeSpare()
		sh.mu.Unlock()
		if ok {
			return s, nil
		}
	}
	return c.allocFree(wait)
}

// allocFree takes a free slot under the whole table's lock, the spare
// run returned to the free set first if the free set is empty. With wait
// it blocks until a slot is free (back-pressure: the reclaimer evicts
// clean blocks, the destager cleans dirty ones); without, it fails at
// once when none is free.
func (c *Cache) allocFree(wait bool) (uint32, error) {
	t := &c.mu.t
	c.mu.Lock()
	defer c.mu.Unlock()
	waited := false
	for t.free.len() == 0 {
		if t.returnSpares(); t.free.len() > 0 {
			break
		}
		if err := c.usable(); err != nil {
			return 0, err
		}
		c.kickReclaim()
		if !wait {
			return 0, errNoSlot
		}
		if !waited {
			waited = true
			c.stats.allocWaits.Add(1)
		}
		c.signalPressure()
		c.mu.freed.Wait()
	}
	s, _ := t.free.take()
	if t.free.len() < c.opts.ReserveFree {
		c.kickReclaim()
	}
	return s, nil
}

// takeSpare takes the next slot of the spare run, refilling the run from
// the free set first if it is used up. The caller holds a shard lock (or
// the whole table's), so returnSpares cannot run meanwhile.
func (c *Cache) takeSpare() (uint32, bool) {
	t := &c.mu.t
	for {
		r := t.run.Load()
		if r != nil {
			if i := r.next.Add(1) - 1; i < int64(len(r.slots)) {
				return r.slots[i], true
			}
		}
		t.freeMu.Lock()
		if t.run.Load() != r {
			t.freeMu.Unlock() // refilled meanwhile
			continue
		}
		nr := &spareRun{slots: make([]uint32, 0, t.spareBatch)}
		for len(nr.slots) < t.spareBatch {
			s, ok := t.free.take()
			if !ok {
				break
			}
			nr.slots = append(nr.slots, s)
		}
		low := t.free.len() < c.opts.ReserveFree
		if len(nr.slots) > 0 {
			t.run.Store(nr)
		}
		t.freeMu.Unlock()
		if low {
			c.kickReclaim()
		}
		if len(nr.slots) == 0 {
			return 0, false
		}
	}
}

func (c *Cache) putFree(s uint32) {
	c.mu.Lock()
	c.mu.t.flags[s] = 0
	c.mu.t.free.add(s)
	c.mu.freed.Broadcast()
	c.mu.Unlock()
}

// Sync makes every write completed before it durable (the FUSE FSYNC
// reply is sent after it returns).
func (c *Cache) Sync() error {
	if err := c.usable(); err != nil {
		return err
	}
	c.stats.syncs.Add(1)
	c.noteEpoch()
	if err := c.journalSynced(c.j.syncHere()); err != nil {
		return err
	}
	return c.syncBacking()
}

// syncBacking syncs the backing device if anything was written to it in
// place since its last sync, then marks the write-through blocks that the
// sync covered clean. Sync calls it, the reclaimer once a second, so
// write-through blocks do not wait for a client fsync to become clean and
// read promotion (which needs synced backing data) resumes, and a run
// written over dirty blocks before it drops them. One sync runs at a
// time: a caller whose writes the running one covers (it started after
// they ended) waits for it instead of starting another, so writers in
// flight together share a sync, as a group commit does.
func (c *Cache) syncBacking() error {
	if p := c.backingSyncErr.Load(); p != nil {
		return *p
	}
	w := c.hddWritten.Load()
	if w <= c.hddSynced.Load() {
		return nil
	}
	b := &c.bsync
	b.mu.Lock()
	for b.running {
		covered := b.from >= w
		b.done.Wait()
		if covered || c.hddSynced.Load() >= w || c.backingSyncErr.Load() != nil {
			b.mu.Unlock()
			if p := c.backingSyncErr.Load(); p != nil {
				return *p
			}
			return nil
		}
	}
	syncErr, err := c.syncBackingLocked()
	b.mu.Unlock()
	if syncErr != nil {
		c.stats.backingErrors.Add(1)
		// It covered writes not yet synced, so the failure is sticky.
		if p := c.backingSyncErr.Load(); p != nil {
			return *p
		}
		return syncErr
	}
	return err
}

// syncBackingLocked runs syncBackingDevice as the one backing sync under
// way, covering the writes in place that have ended. The caller holds
// bsync.mu with no sync running; it is released during the sync and held
// again on return.
func (c *Cache) syncBackingLocked() (syncErr, err error) {
	b := &c.bsync
	from := c.hddWritten.Load()
	b.running, b.from = true, from
	b.mu.Unlock()
	syncErr, err = c.syncBackingDevice(from)
	b.mu.Lock()
	b.running = false
	b.done.Broadcast()
	return syncErr, err
}

// syncBackingDevice syncs the backing device, which covers the first w
// writes to it, then marks the write-through blocks clean; syncErr is
// the sync's own failure (backingSyncFailed has seen it), err the
// cache's. The caller runs it as the one backing sync under way
// (Cache.bsync), so that no other sync is told of a failure meant for
// this one (a file reports a write-back error to one fsync), and so
// that hddSynced does not move meanwhile.
func (c *Cache) syncBackingDevice(w uint64) (syncErr, err error) {
	c.mu.Lock()
	through := c.mu.through
	c.mu.through = nil
	c.mu.Unlock()
	if err := c.hdd.Sync(); err != nil {
		// Write-through blocks stay dirty and are written again by the
		// destager.
		c.hddSyncFailures.Add(1)
		c.backingSyncFailed(err)
		return err, nil
	}
	for {
		old := c.hddSynced.Load()
		if old >= w || c.hddSynced.CompareAndSwap(old, w) {
			break
		}
	}
	return nil, c.cleanThrough(through)
}

// BackingSyncFailures counts the syncs of the backing device that have
// failed: what a caller of SyncBacking reads before its writes.
func (c *Cache) BackingSyncFailures() uint64 { return c.hddSyncFailures.Load() }

// SyncBacking syncs the backing device for a caller that wrote to it
// directly (the destager, which counts its errors), as the one backing
// sync under way (syncBackingDevice); a sticky failure does not stop it.
// since is BackingSyncFailures read before the caller's writes: if a
// sync has failed after that (whoever made it), the writes may be lost,
// and a sync that succeeds now would not bring them back, so it fails
// too. The caller can write its own writes again after a failure, but a
// failed sync may also have lost writes made in place for clients
// (around or through the cache): see backingSyncFailed. A sync that
// succeeds covers those that had ended when it began.
func (c *Cache) SyncBacking(since uint64) error {
	b := &c.bsync
	b.mu.Lock()
	for b.running {
		b.done.Wait()
	}
	syncErr, _ := c.syncBackingLocked() // the cache's own failure is reported where it is used
	b.mu.Unlock()
	if syncErr == nil && c.hddSyncFailures.Load() != since {
		syncErr = errEarlierSyncFailed
	}
	return syncErr
}

// errEarlierSyncFailed: SyncBacking succeeded, but a sync of the backing
// device failed after the caller's writes began.
var errEarlierSyncFailed = errors.New("a sync of the backing device failed after these writes began: they may be lost, and are written again")

// backingSyncFailed handles a failed sync of the backing device. If writes
// made in place for clients were not covered by a good sync yet, that
// data may be gone from the page cache (or the disk's cache): a later
// sync that succeeds would not bring it back, so every later Sync reports
// this failure (fsyncgate), until the cache is opened again.
func (c *Cache) backingSyncFailed(err error) {
	if c.hddStarted.Load() <= c.hddSynced.Load() {
		return
	}
	err = fmt.Errorf("syncing backing device failed; data written around the cache since the last good sync may be lost: %w", err)
	if c.backingSyncErr.CompareAndSwap(nil, &err) {
		c.noteBackingSyncFailure(err)
	}
}

// cleanThrough marks write-through blocks clean once the backing device
// holds them durably (those superseded or being destaged are skipped).
func (c *Cache) cleanThrough(blocks []DirtyBlock) error {
	for len(blocks) > 0 {
		n := min(len(blocks), 64)
		m, err := c.beginChange(n)
		if err != nil {
			if errors.Is(err, ErrClosed) {
				return err // closing: the blocks stay dirty, nothing failed
			}
			return c.fail(err)
		}
		t := &c.mu.t
		for _, b := range blocks[:n] {
			s := b.Slot
			// A Discard zeroing the block on the backing device has
			// overwritten the version the sync covered.
			if t.flags[s]&(fValid|fDirty|fPinned|fWriting) == fValid|fDirty && t.lba[s] == b.LBA && t.crc[s] == b.CRC && !c.overwritingLocked(b.LBA) {
				if t.isOlder(s) {
					// Superseded since, and kept for ordered write-back:
					// the backing device holds it, nothing to write back.
					m.free(s, b.LBA, false)
				} else {
					m.clean(b)
				}
			}
		}
		c.mu.freed.Broadcast()
		m.end()
		blocks = blocks[n:]
	}
	return nil
}

// unmapLocked unmaps slot s, right after the caller appended the record
// seq that unmaps it (a superseding MAP or a FREE), under Cache.mu. This is
// the one place a slot leaves its block: it goes back to the free set only
// once seq is durable and no destage has it pinned (releaseDurable,
// Complete), so no durable mapping can ever name a slot that holds other
// data (invariant 1). With clean (the slot held a clean copy), the
// backing device must not be written in place under that block until seq
// is durable, or recovery could bring back a copy that differs from it
// (invariant 3; writeBackingAt waits).
func (c *Cache) unmapLocked(s uint32, seq uint64, clean bool) {
	sh := c.mu.t.shardOfSlot(s)
	c.mu.t.unmap(s)
	sh.pending = append(sh.pending, pendingFree{s, seq})
	if clean {
		// Only changes under the whole table's lock drop clean copies
		// (the paths that hold one shard pass clean false), so the
		// sequence numbers stored here only grow.
		c.cleanUnmapSeq.Store(seq)
	}
}

// syncJournal makes all records and completed data writes durable and
// frees the slots whose unmapping records now are.
func (c *Cache) syncJournal() error { return c.journalSynced(c.j.sync()) }

// journalSynced follows a journal sync that returned err: a failure is
// fatal, a success frees the slots it made free.
func (c *Cache) journalSynced(err error) error {
	if err != nil {
		return c.fail(err)
	}
	c.releaseDurable()
	return nil
}

// releaseDurable moves unmapped slots whose records are durable to the
// free list (pinned ones go when unpinned).
func (c *Cache) releaseDurable() {
	d := c.j.durable()
	gen := c.j.syncGen()
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &c.mu.t
	freed := false
	for k := range t.shards {
		sh := &t.shards[k]
		i := 0
		for ; i < len(sh.pending) && sh.pending[i].seq <= d; i++ {
			s := sh.pending[i].slot
			if t.flags[s]&fPinned != 0 {
				t.flags[s] |= fFreeOK
				continue
			}
			t.release(s, gen)
		}
		if i > 0 {
			sh.pending = append(sh.pending[:0], sh.pending[i:]...)
			freed = true
		}
	}
	if freed {
		c.mu.freed.Broadcast()
	}
}

// mayWaitBytes is the request size from which MayWait says yes whatever
// the cache holds: such requests are rare, may go around the cache as
// sequential streams, and cost more than a goroutine.
const mayWaitBytes = 64 << 10

// MayWait tells, without blocking on I/O, whether a read or write of
// [off, off+n) may have to wait for the backing device: a read of a block
// that is not cached, a write in a mode that writes the backing device, a
// large request. It is a scheduling hint for the FUSE server (a wrong
// answer costs speed, not correctness).
func (c *Cache) MayWait(write bool, off, n int64) bool {
	if n >= mayWaitBytes || n <= 0 {
		return true
	}
	switch c.Mode() {
	case ModeNone:
		return true
	case ModeWriteback:
		if write {
			return false
		}
	default:
		if write {
			return true
		}
	}
	first, last := uint64(off)/BlockSize, uint64(off+n-1)/BlockSize
	for lba := first; lba <= last; lba++ {
		sh := c.lockLBA(lba)
		_, ok := c.mu.t.lookup(lba)
		c.unlockLBA(sh)
		if !ok {
			return true
		}
	}
	return false
}
