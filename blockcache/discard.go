package blockcache

import (
	"fmt"
	"slices"
)

// discardChunk bounds how many blocks one step of Discard locks and zeroes.
const discardChunk = 16384 // 64 MiB

// Discard makes [off, off+n) read as zeros (TRIM, punch hole). Partial
// blocks at the edges are written with zeros; whole blocks are zeroed on
// the backing device (punch hole, BLKZEROOUT or written zeros), the backing
// device is synced, and only then are their cached copies dropped with FREE
// records. That order means a crash at any point leaves each block either
// as it was or zero, never an older version.
func (c *Cache) Discard(off, n int64) error {
	if err := c.usable(); err != nil {
		return err
	}
	if err := c.checkRange(off, n); err != nil {
		return err
	}
	c.stats.discards.Add(1)
	end := off + n
	first := uint64(off+BlockSize-1) / BlockSize
	last := uint64(end) / BlockSize // exclusive
	if first >= last {
		// Within one block, or two partial ones.
		_, err := c.WriteAt(make([]byte, n), off)
		return err
	}
	if head := int64(first)*BlockSize - off; head > 0 {
		if _, err := c.WriteAt(make([]byte, head), off); err != nil {
			return err
		}
	}
	if tail := end - int64(last)*BlockSize; tail > 0 {
		if _, err := c.WriteAt(make([]byte, tail), int64(last)*BlockSize); err != nil {
			return err
		}
	}
	for lo := first; lo < last; lo += discardChunk {
		if err := c.discardBlocks(lo, min(last, lo+discardChunk)); err != nil {
			return err
		}
	}
	return nil
}

// holdOverwriteLocked marks [lo, hi) as being written on the backing
// device in place under its cached copies (Discard, a run written around
// dirty copies): until the returned function is called, no destage pins
// a block of it and no backing sync marks a write-through block of it
// clean. It returns once no destage is writing a block of the range (its
// write must land before the overwrite), the destages holding blocks of
// it that have not begun to write them having been claimed
// (claimBackingLocked). The caller holds the range's stripe locks and the
// whole table's lock, which it still holds on return.
func (c *Cache) holdOverwriteLocked(lo, hi uint64) (release func()) {
	r := lbaRange{lo, hi}
	c.mu.overwriting = append(c.mu.overwriting, r)
	c.claimBackingLocked(lo, hi)
	return func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		c.unholdOverwriteLocked(r)
	}
}

// unholdOverwriteLocked ends a hold of holdOverwriteLocked.
func (c *Cache) unholdOverwriteLocked(r lbaRange) {
	for i, x := range c.mu.overwriting {
		if x == r {
			c.mu.overwriting = append(c.mu.overwriting[:i], c.mu.overwriting[i+1:]...)
			return
		}
	}
}

func (c *Cache) overwritingLocked(lba uint64) bool {
	for _, r := range c.mu.overwriting {
		if lba >= r.lo && lba < r.hi {
			return true
		}
	}
	return false
}

// discardBlocks discards whole blocks [lo, hi).
func (c *Cache) discardBlocks(lo, hi uint64) error {
	var locked []int
	for {
		// The zeroing is a write of the current epoch: with ordered
		// write-back, everything older goes to the backing device first
		// (ordered.go).
		if err := c.catchUp(c.epoch.Load()); err != nil {
			return err
		}
		locked = c.lockStripes(lo, hi)
		c.mu.Lock()
		if !c.behindLocked(c.epoch.Load()) {
			break
		}
		c.mu.Unlock()
		c.unlockStripes(locked)
	}
	defer c.unlockStripes(locked)
	defer c.holdOverwriteLocked(lo, hi)()
	c.mu.Unlock()
	if err := c.usable(); err != nil {
		return err
	}
	// Clean copies go first, durably: a clean copy must never differ from
	// the backing device, which is about to change.
	if err := c.freeMapped(lo, hi, false); err != nil {
		return err
	}
	if err := c.syncJournal(); err != nil {
		return err
	}
	// From here the backing device may change, even if the zeroing fails
	// (writeBacking).
	defer func() {
		for _, i := range locked {
			c.gens[i]++
		}
	}()
	since := c.BackingSyncFailures()
	c.hddStarted.Add(1) // a write in place, counted as in writeBackingAt
	err := c.hdd.Zero(int64(lo)*BlockSize, int64(hi-lo)*BlockSize)
	c.hddWritten.Add(1)
	if err != nil {
		c.stats.backingErrors.Add(1)
		return fmt.Errorf("zeroing backing device blocks %d-%d: %w", lo, hi-1, err)
	}
	if err := c.SyncBacking(since); err != nil {
		c.stats.backingErrors.Add(1)
		return fmt.Errorf("syncing backing device after discard: %w", err)
	}
	// Dirty copies go last: until their FREE records are written, a crash
	// leaves them to be destaged over the zeros, as if the discard had not
	// happened.
	return c.freeMapped(lo, hi, true)
}

// freeMapped unmaps the cached blocks in [lo, hi) (the dirty ones too with
// dirty) with FREE records, and waits until they are written.
func (c *Cache) freeMapped(lo, hi uint64, dirty bool) error {
	slots := c.mappedIn(lo, hi)
	var last uint64
	for len(slots) > 0 {
		n := min(len(slots), 64)
		m, err := c.beginChange(n)
		if err != nil {
			return c.fail(err)
		}
		t := &c.mu.t
		for _, s := range slots[:n] {
			f := t.flags[s]
			if f&fValid == 0 || t.lba[s] < lo || t.lba[s] >= hi || (f&fDirty != 0 && !dirty) {
				continue
			}
			last = m.free(s, t.lba[s], f&fDirty == 0)
		}
		m.end()
		slots = slots[n:]
	}
	if last > 0 {
		if err := c.j.appended(last); err != nil {
			return c.fail(err)
		}
	}
	return nil
}

// mappedIn lists slots holding blocks in [lo, hi), older versions too.
func (c *Cache) mappedIn(lo, hi uint64) []uint32 {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &c.mu.t
	var out []uint32
	if hi-lo < uint64(t.n()) {
		for l := lo; l < hi; l++ {
			if s, ok := t.lookup(l); ok {
				out = append(out, s)
			}
		}
		return append(out, t.olderIn(lo, hi)...)
	}
	for s, f := range t.flags {
		if f&fValid != 0 && t.lba[s] >= lo && t.lba[s] < hi {
			out = append(out, uint32(s))
		}
	}
	return out
}

// olderIn lists the slots holding older versions of blocks in [lo, hi).
func (t *slotTable) olderIn(lo, hi uint64) []uint32 {
	var out []uint32
	for s := range t.older {
		if t.lba[s] >= lo && t.lba[s] < hi {
			out = append(out, s)
		}
	}
	return out
}

// lockStripes write-locks the stripes of blocks [lo, hi), in stripe
// order: the only places that hold more than one stripe (Discard and
// runs written around or through the cache) all lock in that order, so
// they cannot deadlock. It returns the stripes locked.
func (c *Cache) lockStripes(lo, hi uint64) []int {
	locked := stripesOf(lo, hi)
	for _, i := range locked {
		c.stripes[i].Lock()
	}
	return locked
}

// stripesOf lists the stripes of blocks [lo, hi), each once, in
// ascending order.
func stripesOf(lo, hi uint64) []int {
	if hi-lo >= nStripes {
		out := make([]int, nStripes)
		for i := range out {
			out[i] = i
		}
		return out
	}
	out := make([]int, 0, hi-lo)
	for l := lo; l < hi; l++ {
		out = append(out, stripeOf(l))
	}
	slices.Sort(out)
	return slices.Compact(out)
}

func (c *Cache) unlockStripes(locked []int) {
	for _, i := range locked {
		c.stripes[i].Unlock()
	}
}
