package blockcache

// PinGaps fills the short gaps between pinned dirty blocks with clean
// cached copies, so that a destage writes one long run instead of one
// short run per dirty block: on a disk that pays a seek or an I/O per
// request, writing a few extra blocks costs far less than the request it
// saves. A gap of at most maxGap blocks between two consecutive blocks of
// pinned (in LBA order, as Pin returned them) is filled when every block
// in it has a clean cached copy that nothing else holds (no destage,
// discard or rewrite in flight); those copies are pinned like dirty
// blocks, marked Clean, and returned in place among the others, appended
// to dst.
//
// Writing a clean copy back writes what the backing device already holds
// durably (invariant 3), so it changes nothing there, even torn by a power
// cut. While it is pinned nothing else writes the block on the backing
// device unless it claims it first, so that the destage never writes it
// (claimBackingLocked: writes around or through the cache, Discard), or
// waits for the destage's write under way; a write into the cache maps
// a new slot. ReadSlots reads gap
// copies like the rest, and Complete only unpins them.
func (c *Cache) PinGaps(pinned []DirtyBlock, maxGap int, dst []DirtyBlock) []DirtyBlock {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, b := range pinned {
		if i > 0 {
			prev := pinned[i-1].LBA
			if b.LBA > prev+1 && b.LBA-prev-1 <= uint64(maxGap) && c.gapCleanLocked(prev+1, b.LBA) {
				dst = c.pinGapLocked(prev+1, b.LBA, dst)
			}
		}
		dst = append(dst, b)
	}
	return dst
}

// gapCleanLocked reports whether every block in [lo, hi) has a clean
// cached copy that may be pinned.
func (c *Cache) gapCleanLocked(lo, hi uint64) bool {
	t := &c.mu.t
	for l := lo; l < hi; l++ {
		s, ok := t.lookup(l)
		if !ok || t.flags[s]&(fValid|fDirty|fPinned|fWriting|fLost) != fValid ||
			c.mu.inflight[l] > 0 || c.overwritingLocked(l) {
			return false
		}
	}
	return true
}

// pinGapLocked pins the clean copies of [lo, hi) and appends them to dst.
func (c *Cache) pinGapLocked(lo, hi uint64, dst []DirtyBlock) []DirtyBlock {
	t := &c.mu.t
	for l := lo; l < hi; l++ {
		s, _ := t.lookup(l)
		t.flags[s] |= fPinned
		c.mu.inflight[l]++
		dst = append(dst, DirtyBlock{LBA: l, Slot: s, CRC: t.crc[s], Clean: true})
	}
	return dst
}

// PinBackingGaps fills gaps between consecutive pinned blocks (in LBA
// order, as Pin or PinGaps returned them) with blocks read from the
// backing device: a gap [lo, hi) that want accepts is taken whole, when
// nothing may write those blocks on the backing device until Complete.
// The gap blocks are returned in place among the others, marked Backing
// and Clean, appended to dst; ReadSlots reads each stretch of them in one
// backing read, and Complete only releases them. want decides what is
// worth it (a disk that pays a seek per request gains when one read and
// one write replace many short writes: package flush weighs it).
//
// Writing back what was just read from the backing device changes nothing
// there, even torn by a power cut, so it keeps every invariant as long as
// the blocks do not change on the backing device in between. Nothing
// writes a block there without either holding its stripe lock across the
// write (writes around or through the cache, streams, Discard) or being a
// destage of it (inflight): a gap is taken only when no destage or discard
// holds any of its blocks and no writer holds their stripes, and once
// taken (inflight, under Cache.mu all along) writers of the backing device
// claim it or wait for its write (claimBackingLocked) and Pin skips its
// blocks. A write into the
// cache meanwhile maps a new dirty version, written back after this one.
func (c *Cache) PinBackingGaps(pinned []DirtyBlock, want func(lo, hi uint64) bool, dst []DirtyBlock) []DirtyBlock {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, b := range pinned {
		if i > 0 {
			lo, hi := pinned[i-1].LBA+1, b.LBA
			if hi > lo && want(lo, hi) && c.gapFreeLocked(lo, hi) {
				for l := lo; l < hi; l++ {
					c.mu.inflight[l]++
					dst = append(dst, DirtyBlock{LBA: l, Clean: true, Backing: true})
				}
				c.stats.gapReadBlocks.Add(hi - lo)
			}
		}
		dst = append(dst, b)
	}
	return dst
}

// gapFreeLocked reports whether no destage or discard holds a block of
// [lo, hi) and no writer holds one of their stripes right now.
func (c *Cache) gapFreeLocked(lo, hi uint64) bool {
	for l := lo; l < hi; l++ {
		if c.mu.inflight[l] > 0 || c.overwritingLocked(l) {
			return false
		}
	}
	// Readers may hold the stripes; a writer may not. (Only a try: the
	// lock order is stripes before Cache.mu.)
	stripes := stripesOf(lo, hi)
	n := 0
	for n < len(stripes) && c.stripes[stripes[n]].TryRLock() {
		n++
	}
	for _, i := range stripes[:n] {
		c.stripes[i].RUnlock()
	}
	return n == len(stripes)
}

// claimBacking is claimBackingLocked for a caller that does not hold
// Cache.mu. It fails once the cache has failed or closed: claims are not
// made then (no destage would honour them), so the caller must not write.
func (c *Cache) claimBacking(lo, hi uint64) error {
	c.mu.Lock()
	c.claimBackingLocked(lo, hi)
	c.mu.Unlock()
	return c.usable()
}

// claimBackingLocked readies blocks [lo, hi) to be written on the backing
// device in place by the caller, which holds their stripe locks: a
// destage that holds one of them (pinned) must not write it afterwards,
// or it would put older content over the caller's. A destage whose
// backing write of such a block is under way is waited for; one that has
// not begun it never will (BeginWriteBack reports it claimed), so the
// caller does not wait for a whole batch to be written and synced. The
// blocks it claims are clean gap copies, gaps read from the backing
// device, or dirty versions the caller supersedes; and until their
// destage completes no new one pins them (Pin skips blocks in flight).
func (c *Cache) claimBackingLocked(lo, hi uint64) {
	for len(c.mu.inflight) > 0 && c.usable() == nil {
		busy := false
		each := func(l uint64) {
			if c.mu.inflight[l] == 0 {
				return
			}
			if c.mu.writing[l] > 0 {
				busy = true
			} else {
				c.mu.claimed[l] = true
			}
		}
		if hi-lo < uint64(len(c.mu.inflight)) {
			for l := lo; l < hi; l++ {
				each(l)
			}
		} else {
			for l := range c.mu.inflight {
				if l >= lo && l < hi {
					each(l)
				}
			}
		}
		if !busy {
			return
		}
		c.mu.freed.Wait()
	}
}
