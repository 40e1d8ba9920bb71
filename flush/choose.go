package flush

import (
	"time"

	"github.com/wbcache/wbcache/blockcache"
)

// pinnedBatch is a batch the scheduler chose and pinned, ready to be
// written back.
type pinnedBatch struct {
	st     state
	blocks []blockcache.DirtyBlock // pinned, in LBA order
	start  time.Time               // when pinning ended: the batch's own time starts
}

// choose decides the mode, takes the next eligible blocks of the sweep in
// elevator order and pins them. A batch without blocks means there is
// nothing to write now (the caller goes round again); stop means the loop
// must stop.
func (l *loop) choose() (b pinnedBatch, stop bool) {
	st := l.state()
	if st.mode == modeIdle {
		l.sw.reset()
		return b, l.wait(pollInterval, true)
	}
	tick := l.c.Tick()
	if l.sw.exhausted() {
		if skip, stop := l.refill(st, tick); skip || stop {
			return b, stop
		}
	}
	l.haveOldest = false
	if st.mode == modeNormal || st.mode == modeAged {
		st.busy = l.foregroundBusy(l.now())
	}
	fresh := l.sw.fresh
	cands := l.candidates(st, tick)
	if len(cands) == 0 {
		if fresh {
			// A whole new snapshot had nothing to offer.
			if st.mode == modeAged {
				l.oldestSince, l.haveOldest = l.sw.minSince, true
			} else {
				stop = l.wait(pollInterval, true)
			}
		}
		return b, stop
	}
	return l.pin(st, cands, fresh)
}

// refill starts a new rotation of the sweep once the last one is over.
// skip means that nothing can have come of age yet and the loop slept
// instead: the caller re-decides.
func (l *loop) refill(st state, tick uint32) (skip, stop bool) {
	if next := l.oldestSince + st.pol.ageTicks(); st.mode == modeAged && l.haveOldest && tick < next {
		// Nothing can have come of age since the last snapshot (blocks
		// dirtied later are younger): sleep until something does,
		// re-checking the dirty level every poll.
		wait := time.Duration(next-tick) * time.Second
		return true, l.wait(min(wait, pollInterval), true)
	}
	if l.sw.offered > 0 && l.sw.pinned == 0 {
		// The last rotation could pin nothing: its blocks are being
		// discarded or destaged by someone else.
		if l.wait(retryPause, true) {
			return false, true
		}
	}
	l.sw.refill(l.c, l.cursor)
	return false, false
}

// candidates takes the next eligible blocks of the rotation, within the
// batch limits of st. The slice reuses the loop's buffer.
func (l *loop) candidates(st state, tick uint32) []blockcache.DirtyBlock {
	eligible := func(blockcache.DirtyBlock) bool { return true }
	if st.mode == modeAged {
		age := st.pol.ageTicks()
		eligible = func(b blockcache.DirtyBlock) bool { return tick >= b.Since && tick-b.Since >= age }
	}
	lim := batchLimits{runs: l.d.o.syncRuns, bytes: l.d.o.syncBytes, maxRunBlocks: st.pol.maxRunBlocks()}
	if l.d.GapReads() {
		lim.joinGap = maxGapRead
	}
	if st.busy {
		lim.runs = min(lim.runs, busySyncRuns)
	}
	cands := l.sw.next(l.cands[:0], eligible, lim)
	l.cands = cands[:0]
	return cands
}

// pin pins cands (while the foreground is busy, waiting a while for a
// cache sync to cover them) and moves the elevator past them. fresh: they
// are the first taken from their snapshot.
func (l *loop) pin(st state, cands []blockcache.DirtyBlock, fresh bool) (pinnedBatch, bool) {
	l.cursor = cands[len(cands)-1].LBA + 1
	var wait func(func() bool)
	if st.busy {
		wait = l.awaitDurable
	}
	pinned, newer, err := l.c.PinWait(cands, wait)
	if err != nil {
		l.die(err)
		return pinnedBatch{}, true
	}
	// The pause after a busy batch matches the batch's own time; the
	// wait for a sync inside PinWait is not disk time of ours.
	start := l.now()
	if !fresh && 2*(len(pinned)-newer) < len(cands) {
		// Most of the snapshot's versions here were rewritten since it
		// was taken: it is stale, and blocks dirtied since are missing
		// from it, so its runs are short (one seek each) and pinning
		// the newer versions costs a sync per batch. Take a fresh
		// snapshot and sweep this region again after this batch. (A
		// snapshot that is stale from its first batch on is left to
		// the rotation's own retry pause: its blocks are being
		// discarded.)
		l.sw.reset()
		l.cursor = cands[0].LBA
	}
	l.sw.pinned += len(pinned)
	if len(pinned) > 1 {
		pinned = l.c.PinGaps(pinned, gapFillBlocks, make([]blockcache.DirtyBlock, 0, len(pinned)))
		if l.d.GapReads() {
			pinned = l.pinGapReads(pinned, st.pol.maxRunBlocks())
		}
	}
	return pinnedBatch{st: st, blocks: pinned, start: start}, false
}

// gapFillBlocks is the longest gap between two dirty blocks of a batch
// that is filled with clean cached copies (Cache.PinGaps) to make one run
// of them: 256 KiB, which an HDD writes in less time than the seek (or,
// throttled, the I/O) a second run costs.
const gapFillBlocks = 64
