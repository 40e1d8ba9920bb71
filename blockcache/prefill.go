package blockcache

import (
	"errors"
	"time"

	"github.com/wbcache/wbcache/device"
	"github.com/wbcache/wbcache/layout"
)

// A cache file allocated ahead with fallocate holds unwritten extents:
// they read as zeros, and the first write to each block makes the
// filesystem mark it written, a change of its block map that the next
// fdatasync must commit to the filesystem's journal. On ext4 that about
// halves the rate of 4 KiB write+fdatasync pairs (measured in
// docs/bench/fsync-unwritten-2026-12-05.md), and every write into a new
// slot pays it until the slot area has been written once. So Format
// writes zeros over the metadata area, and Open starts a background pass
// that writes zeros over the free slots the filesystem has not written
// yet, a megabyte at a time, around the page cache.
//
// The pass takes the free slots of a range out of the free set while it
// writes them, so no writer can be handed one of them meanwhile, and puts
// them back after. A free slot's content is never needed (invariant 1:
// nothing durable maps it), so a crash at any point loses nothing. Slots
// in use are left alone: their own data writes mark them written.

// writeAhead is a cache device that reports the ranges its filesystem has
// not written yet and writes zeros there around the page cache
// (device.File).
type writeAhead interface {
	Unwritten(off, n int64) ([]device.Extent, error)
	WriteZerosAhead(ext []device.Extent) error
}

// prefillChunk is how many slots the pass takes out of the free set at a
// time (1 MiB).
const prefillChunk = 256

// blocksOf returns the blocks [first, end) that e touches, rounded out to
// whole blocks.
func blocksOf(e device.Extent) (first, end uint64) {
	return uint64(e.Off) / BlockSize, (uint64(e.Off+e.Len) + BlockSize - 1) / BlockSize
}

// writeAheadMeta writes zeros over the unwritten ranges of the metadata
// area [0, first slot), for Format. Errors only cost speed, so they are
// returned for the caller to log or drop, never to fail on.
func writeAheadMeta(ssd device.Device, g layout.Geometry) error {
	wa, ok := ssd.(writeAhead)
	if !ok {
		return nil
	}
	ext, err := wa.Unwritten(0, g.SlotOffset(0))
	if err != nil {
		return err
	}
	for i, e := range ext {
		first, end := blocksOf(e)
		end = min(end, g.DataStart)
		ext[i] = device.Extent{Off: int64(first) * BlockSize, Len: int64(end-first) * BlockSize}
	}
	return wa.WriteZerosAhead(ext)
}

// unwrittenSlots returns the slot ranges [lo, hi) of the cache device
// that its filesystem has not written yet.
func (c *Cache) unwrittenSlots(wa writeAhead) ([][2]uint32, error) {
	lo, hi := c.g.SlotOffset(0), c.g.SlotOffset(c.g.SlotCount)
	ext, err := wa.Unwritten(lo, hi-lo)
	if err != nil {
		return nil, err
	}
	var out [][2]uint32
	for _, e := range ext {
		first, end := blocksOf(e)
		out = append(out, [2]uint32{uint32(first - c.g.DataStart), uint32(min(end-c.g.DataStart, c.g.SlotCount))})
	}
	return out, nil
}

// startPrefill starts the background pass over the unwritten slots, if
// the cache device can tell which they are and there are any.
func (c *Cache) startPrefill() {
	wa, ok := c.ssd.(writeAhead)
	if !ok {
		return
	}
	ranges, err := c.unwrittenSlots(wa)
	if err != nil {
		if !errors.Is(err, device.ErrNoExtentMap) {
			c.log.Warn("cannot tell which slots of the cache file its filesystem has not written yet; leaving them", "err", err)
		}
		return
	}
	var n int64
	for _, r := range ranges {
		n += int64(r[1]-r[0]) * BlockSize
	}
	if n == 0 {
		return
	}
	c.stats.unwritten.Store(n)
	c.log.Info("writing zeros once, in the background, over the free cache slots that the filesystem has not written yet: "+
		"until then a sync after a write into such a slot also commits the filesystem's journal", "mib", n>>20)
	c.wg.Add(1)
	go c.prefill(wa, ranges)
}

// prefill writes zeros over the free slots of ranges (see the top of this
// file). While foreground I/O is arriving it spends at most half its time
// writing.
func (c *Cache) prefill(wa writeAhead, ranges [][2]uint32) {
	defer c.wg.Done()
	start := time.Now()
	ops := c.ForegroundOps()
	for _, r := range ranges {
		for lo := r[0]; lo < r[1]; lo += prefillChunk {
			if c.usable() != nil {
				return
			}
			select {
			case <-c.stop:
				return
			default:
			}
			hi := min(lo+prefillChunk, r[1])
			took, err := c.zeroFree(wa, lo, hi)
			if err != nil {
				c.stats.unwritten.Store(0)
				c.log.Warn("writing zeros over unwritten cache slots failed; leaving the rest as they are", "err", err)
				return
			}
			c.stats.unwritten.Add(-int64(hi-lo) * BlockSize)
			if now := c.ForegroundOps(); now != ops {
				ops = now
				select {
				case <-c.stop:
					return
				case <-time.After(took):
				}
			}
		}
	}
	c.stats.unwritten.Store(0)
	c.log.Info("free cache slots written once", "took", time.Since(start).Round(time.Millisecond))
}

// zeroFree writes zeros over the free slots of [lo, hi) (in the free set
// or the spare run), holding them out of the free set meanwhile, and
// returns how long the writing took.
func (c *Cache) zeroFree(wa writeAhead, lo, hi uint32) (time.Duration, error) {
	c.mu.Lock()
	c.mu.t.returnSpares()
	taken := c.mu.t.free.takeRange(lo, hi)
	c.mu.zeroing = len(taken)
	c.mu.Unlock()
	t0 := time.Now()
	err := c.zeroSlots(wa, taken)
	took := time.Since(t0)
	c.mu.Lock()
	for _, s := range taken {
		c.mu.t.free.add(s)
	}
	c.mu.zeroing = 0
	if len(taken) > 0 {
		c.mu.freed.Broadcast()
	}
	c.mu.Unlock()
	return took, err
}

// zeroSlots writes zeros over slots (ascending), one extent per run of
// consecutive slots, in one call.
func (c *Cache) zeroSlots(wa writeAhead, slots []uint32) error {
	var ext []device.Extent
	for i := 0; i < len(slots); {
		j := i + 1
		for j < len(slots) && slots[j] == slots[j-1]+1 {
			j++
		}
		ext = append(ext, device.Extent{Off: c.g.SlotOffset(uint64(slots[i])), Len: int64(j-i) * BlockSize})
		i = j
	}
	if len(ext) == 0 {
		return nil
	}
	return wa.WriteZerosAhead(ext)
}
