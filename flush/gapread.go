package flush

import (
	"github.com/wbcache/wbcache/blockcache"
)

// Reading gaps from the backing device (Cache.PinBackingGaps). A batch of
// sparse dirty blocks is many short writes, each paying a seek or a
// rotation on a spinning disk. When the gaps between them are short, one
// read of the whole stretch and one write of it cost less: two requests
// and twice the stretch's transfer instead of one request per dirty run.
// The destager weighs that with a spinning disk's costs (the HDD model's
// defaults, device.HDDModel), in blocks of transfer time at its
// sequential rate:
const (
	// gapSeekCost is a seek: 8 ms at 170 MiB/s is about 340 blocks.
	gapSeekCost = 340
	// gapSkipCost is a short forward skip (the platter turning past a gap
	// below gapShortSkip blocks): 2 ms, about 85 blocks.
	gapSkipCost  = 85
	gapShortSkip = 16
	// maxGapRead is the longest gap read from the backing device: a seek
	// costs less than twice its transfer beyond that.
	maxGapRead = gapSeekCost / 2
)

// gapReads chooses the gaps between consecutive blocks of pinned (sorted
// by LBA within stretches, as PinGaps returned them) worth reading from
// the backing device: it cuts pinned into stretches of at most maxRun
// blocks whose gaps are at most maxGapRead blocks, and takes a stretch's
// gaps when the skips and seeks they save cost more than the extra read
// (a seek back to the stretch's start, the stretch read, the gaps
// written). It returns the first blocks after the gaps to fill (the hi
// of each [lo, hi)).
func gapReads(pinned []blockcache.DirtyBlock, maxRun int) map[uint64]bool {
	fill := map[uint64]bool{}
	for i := 0; i < len(pinned); {
		// The stretch [i, j): consecutive blocks with short gaps.
		saved, gaps, j := 0, 0, i+1
		for ; j < len(pinned); j++ {
			prev, next := pinned[j-1].LBA, pinned[j].LBA
			if next <= prev {
				break // a new elevator pass
			}
			g := int(next - prev - 1)
			if g > maxGapRead || int(next-pinned[i].LBA) >= maxRun {
				break
			}
			if g > 0 {
				gaps += g
				if g < gapShortSkip {
					saved += gapSkipCost
				} else {
					saved += gapSeekCost
				}
			}
		}
		span := int(pinned[j-1].LBA-pinned[i].LBA) + 1
		if gaps > 0 && saved > gapSeekCost+span+gaps {
			for k := i + 1; k < j; k++ {
				if pinned[k].LBA > pinned[k-1].LBA+1 {
					fill[pinned[k].LBA] = true
				}
			}
		}
		i = j
	}
	return fill
}

// pinGapReads fills the gaps gapReads chooses (see Cache.PinBackingGaps).
func (l *loop) pinGapReads(pinned []blockcache.DirtyBlock, maxRun int) []blockcache.DirtyBlock {
	fill := gapReads(pinned, maxRun)
	if len(fill) == 0 {
		return pinned
	}
	want := func(lo, hi uint64) bool { return fill[hi] }
	return l.c.PinBackingGaps(pinned, want, make([]blockcache.DirtyBlock, 0, len(pinned)))
}
