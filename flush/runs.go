package flush

import (
	"github.com/wbcache/wbcache/blockcache"
)

// sweep is one rotation of the elevator over a snapshot of the dirty
// blocks. The snapshot (Cache.DirtyBlocks, sorted by LBA) is visited from
// the first block at or above the cursor upwards, then wraps to the lowest
// LBA and continues up to where it started; then a new snapshot is taken.
// Taking one snapshot per rotation keeps the O(slots) scan off the per-batch
// path. Blocks that changed since the snapshot are filtered by Cache.Pin;
// blocks dirtied after it wait for the next rotation.
type sweep struct {
	snap  []blockcache.DirtyBlock // sorted by LBA; the buffer is reused
	start int                     // index of the first block visited
	done  int                     // blocks visited so far
	fresh bool                    // nothing taken since the snapshot

	// Computed at the snapshot, for the age policy.
	minSince uint32 // smallest DirtyBlock.Since, or the tick if none

	offered int // blocks offered to Pin in this rotation
	pinned  int // of which pinned
}

// exhausted reports whether the rotation is over (or never started).
func (sw *sweep) exhausted() bool { return sw.done >= len(sw.snap) }

// refill takes a new snapshot and starts the rotation at cursor.
func (sw *sweep) refill(c *blockcache.Cache, cursor uint64) {
	// Do not keep a huge buffer around after a big drain.
	if cap(sw.snap) > 1<<16 && cap(sw.snap) > 4*c.DirtyCount() {
		sw.snap = nil
	}
	tick := c.Tick()
	sw.snap = c.DirtyBlocks(sw.snap[:0])
	sw.start = lowerBound(sw.snap, cursor)
	sw.done = 0
	sw.fresh = true
	sw.offered, sw.pinned = 0, 0
	sw.minSince = tick
	for _, b := range sw.snap {
		sw.minSince = min(sw.minSince, b.Since)
	}
}

// reset forgets the snapshot (the next use takes a new one).
func (sw *sweep) reset() {
	sw.snap = sw.snap[:0]
	sw.done = 0
	sw.offered, sw.pinned = 0, 0
}

// lowerBound is the index of the first block with LBA >= lba (len if none).
func lowerBound(s []blockcache.DirtyBlock, lba uint64) int {
	lo, hi := 0, len(s)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if s[m].LBA < lba {
			lo = m + 1
		} else {
			hi = m
		}
	}
	return lo
}

// batchLimits bound one batch: the runs written before one backing sync.
type batchLimits struct {
	runs         int // at most this many runs
	bytes        int // no new run once this many bytes are chosen
	maxRunBlocks int // blocks per run
	// joinGap: a block at most this many blocks past the previous one
	// counts as part of its run, the gap's bytes too (gaps the destager
	// may read from the backing device, gapread.go).
	joinGap int
}

// next appends to dst the next blocks of the rotation that eligible
// accepts, in elevator order, up to the limits, and returns it. Blocks it
// passes over (ineligible ones) are not offered again in this rotation. It
// returns an empty slice only when the rotation is exhausted.
func (sw *sweep) next(dst []blockcache.DirtyBlock, eligible func(blockcache.DirtyBlock) bool, lim batchLimits) []blockcache.DirtyBlock {
	n := len(sw.snap)
	runs, runLen, bytes := 0, 0, 0
	var prev uint64
	for sw.done < n {
		b := sw.snap[(sw.start+sw.done)%n]
		if !eligible(b) {
			sw.done++
			continue
		}
		gap := 0
		if len(dst) > 0 && b.LBA > prev+1 && b.LBA-prev-1 <= uint64(lim.joinGap) {
			gap = int(b.LBA - prev - 1)
		}
		newRun := len(dst) == 0 || b.LBA != prev+1+uint64(gap) || runLen+gap >= lim.maxRunBlocks
		if newRun {
			if runs >= lim.runs || (runs > 0 && bytes >= lim.bytes) {
				break
			}
			runs++
			runLen, gap = 0, 0
		}
		dst = append(dst, b)
		runLen += 1 + gap
		bytes += (1 + gap) * blockcache.BlockSize
		prev = b.LBA
		sw.done++
	}
	if len(dst) > 0 {
		sw.fresh = false
		sw.offered += len(dst)
	}
	return dst
}

// splitRuns cuts blocks (sorted by LBA within the batch, elevator order)
// into runs of consecutive LBAs of at most maxBlocks blocks. The runs are
// subslices of blocks.
func splitRuns(blocks []blockcache.DirtyBlock, maxBlocks int) [][]blockcache.DirtyBlock {
	var runs [][]blockcache.DirtyBlock
	start := 0
	for i := 1; i <= len(blocks); i++ {
		if i == len(blocks) || blocks[i].LBA != blocks[i-1].LBA+1 || i-start >= maxBlocks {
			runs = append(runs, blocks[start:i])
			start = i
		}
	}
	return runs
}
