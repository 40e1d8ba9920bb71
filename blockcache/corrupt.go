package blockcache

import (
	"fmt"
	"slices"
	"strings"
)

// A cache slot whose data fails its checksum (the SSD returned bad data)
// is handled by what the backing device holds:
//
//   - A clean block heals: the backing device holds the same version
//     (invariant 3), so the slot is dropped with a FREE record and the
//     block is read from the backing device, as a miss. Counted in
//     Stats.HealedBlocks.
//   - A dirty block is lost: no other copy of that version exists. Its
//     slot is marked fLost and stays mapped, so the block reads as EIO
//     (never as zeros or an older version, even across restarts, where
//     the first read finds the bad checksum again); write-back skips it,
//     so its intact neighbours still reach the backing device and a flush
//     ends, reporting it. Writing the whole block, or discarding it,
//     replaces it and clears the loss.

// corruptSlot handles slot s of lba failing its checksum, found by a
// reader that holds no stripe lock now. It returns nil when the block was
// clean and is now dropped (read it from the backing device), or the error
// to report for a lost dirty block.
func (c *Cache) corruptSlot(lba uint64, s uint32, crc uint32) error {
	st := c.stripe(lba)
	st.Lock()
	defer st.Unlock()
	return c.corruptSlotLocked(lba, s, crc)
}

// corruptSlotLocked is corruptSlot for a caller holding lba's stripe lock.
func (c *Cache) corruptSlotLocked(lba uint64, s uint32, crc uint32) error {
	c.stats.cacheErrors.Add(1)
	m, err := c.beginChange(1)
	if err != nil {
		return c.fail(err)
	}
	t := &c.mu.t
	cur, ok := t.lookup(lba)
	if !ok || cur != s || t.crc[s] != crc {
		// Rewritten or dropped meanwhile: the caller looks again.
		m.end()
		return nil
	}
	f := t.flags[s]
	if f&fDirty == 0 { // a clean copy, perhaps pinned to fill a destage's gap
		m.free(s, lba, true)
		m.end()
		c.bumpGen(lba)
		c.stats.healed.Add(1)
		c.log.Warn("cache slot failed its checksum: dropped it and read the block from the backing device, which holds it",
			"slot", s, "block", lba)
		return nil
	}
	first := t.markLost(s)
	m.end()
	if first {
		c.logLost(lba, s)
	}
	return lostError(lba, s)
}

// markLost marks pinned dirty block b, whose slot failed its checksum
// while being destaged, lost. (Pinned blocks are dirty, and the pin keeps
// their slot from changing.)
func (c *Cache) markLost(b DirtyBlock) {
	c.stats.cacheErrors.Add(1)
	c.mu.Lock()
	t := &c.mu.t
	first := t.flags[b.Slot]&fValid != 0 && t.lba[b.Slot] == b.LBA && t.crc[b.Slot] == b.CRC && t.markLost(b.Slot)
	c.mu.Unlock()
	if first {
		c.logLost(b.LBA, b.Slot)
	}
}

func (c *Cache) logLost(lba uint64, s uint32) {
	c.log.Error("dirty block lost: its cache slot fails its checksum and the backing device holds an older version; "+
		"reads of it fail until it is rewritten or discarded", "block", lba, "bytes", fmt.Sprintf("%d-%d", lba*BlockSize, (lba+1)*BlockSize-1), "slot", s)
}

func lostError(lba uint64, s uint32) error {
	return fmt.Errorf("%w: block %d (bytes %d-%d) is lost: it was dirty in cache slot %d, whose data fails its checksum, and the backing device holds an older version; rewrite the block or discard it to clear the error",
		ErrCorruptData, lba, lba*BlockSize, (lba+1)*BlockSize-1, s)
}

// LostBlocks returns the LBAs of the dirty blocks known to be lost, sorted.
func (c *Cache) LostBlocks() []uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &c.mu.t
	if t.lostCount() == 0 {
		return nil
	}
	var out []uint64
	for s, f := range t.flags {
		if f&(fValid|fLost) == fValid|fLost {
			out = append(out, t.lba[s])
		}
	}
	slices.Sort(out)
	return out
}

// FormatLBAs lists LBAs as ranges ("7, 10-12"), at most max ranges and
// then how many more.
func FormatLBAs(lbas []uint64, max int) string {
	var b strings.Builder
	n := 0
	for i := 0; i < len(lbas); {
		j := i
		for j+1 < len(lbas) && lbas[j+1] == lbas[j]+1 {
			j++
		}
		if n == max {
			fmt.Fprintf(&b, ", and %d more blocks", len(lbas)-i)
			break
		}
		if n > 0 {
			b.WriteString(", ")
		}
		if i == j {
			fmt.Fprintf(&b, "%d", lbas[i])
		} else {
			fmt.Fprintf(&b, "%d-%d", lbas[i], lbas[j])
		}
		n++
		i = j + 1
	}
	return b.String()
}

// Destageable is the number of dirty blocks write-back can still write:
// the dirty ones less those known to be lost.
func (c *Cache) Destageable() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.mu.t.dirtyCount() - c.mu.t.lostCount()
}
