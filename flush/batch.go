package flush

import (
	"errors"
	"fmt"

	"github.com/wbcache/wbcache/blockcache"
	"github.com/wbcache/wbcache/device"
)

// run is one backing write: pinned blocks with consecutive LBAs.
type run struct {
	blocks []blockcache.DirtyBlock
	prev   <-chan struct{} // closed when the previous run's write is over
	done   chan struct{}   // closed when this run's write is over (or skipped)
	// read: the batch read the run already (into buf, with readErr), as it
	// does when the batch reads gaps from the backing device.
	read    bool
	buf     []byte
	readErr error

	// Set by the worker before done is closed.
	written bool
	err     error
	backing bool // err came from the backing device (else the cache device)
	// claimed: blocks a write of the backing device in place took over
	// before the run's write began (Cache.BeginWriteBack): not written,
	// completed unwritten.
	claimed []int
}

// batchResult is what runBatch reports to the scheduler.
type batchResult struct {
	bytes int   // bytes written, synced and marked clean
	err   error // the first backing or cache read error (blocks left dirty)
	fatal error // the cache failed: the loop must stop
}

var closedChan = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// runBatch destages pinned blocks: it cuts them into runs, has the workers
// read each run from the cache device (in parallel) and write it to the
// backing device (one at a time, in elevator order), syncs the backing
// device once for the whole batch, and only then completes the written
// runs (CLEAN records). Runs that failed, were skipped because the loop is
// stopping, or whose sync failed are completed unwritten and stay dirty.
// Every pinned block is passed to Complete exactly once.
func (l *loop) runBatch(pinned []blockcache.DirtyBlock, pol Policy) batchResult {
	var res batchResult
	// A backing sync that fails after this, whoever makes it, may have
	// lost the batch's writes: the batch's own sync then fails too.
	since := l.c.BackingSyncFailures()
	l.setWorkers(pol.Workers)
	blocks := splitRuns(pinned, pol.maxRunBlocks())
	runs := make([]*run, len(blocks))
	prev := (<-chan struct{})(closedChan)
	for i, b := range blocks {
		runs[i] = &run{blocks: b, prev: prev, done: make(chan struct{})}
		prev = runs[i].done
	}
	l.readFirst(runs, len(pinned))
	for _, r := range runs {
		l.work <- r
	}
	<-prev // runs write in order: the last one done means all are

	anyWritten := false
	for _, r := range runs {
		if r.err != nil {
			l.d.stats.failed(r.err, r.backing)
			if res.err == nil {
				res.err = r.err
			}
		}
		anyWritten = anyWritten || r.written
	}
	synced := false
	if anyWritten {
		if err := l.c.SyncBacking(since); err != nil {
			err = fmt.Errorf("syncing the backing device: %w", err)
			l.d.stats.failed(err, true)
			if res.err == nil {
				res.err = err
			}
		} else {
			synced = true
			if h := l.d.o.afterSync; h != nil {
				h()
			}
		}
	}
	for _, r := range runs {
		written := synced && r.written && res.fatal == nil
		blocks := r.blocks
		if len(r.claimed) > 0 {
			var claimed []blockcache.DirtyBlock
			blocks, claimed = blockcache.SplitClaimed(r.blocks, r.claimed)
			if err := l.c.Complete(claimed, false); err != nil && res.fatal == nil {
				res.fatal = fmt.Errorf("completing a destage: %w", err)
			}
			if len(blocks) == 0 {
				continue
			}
		}
		if h := l.d.o.beforeComplete; h != nil {
			h(blocks, written)
		}
		err := l.c.Complete(blocks, written)
		if h := l.d.o.afterComplete; h != nil {
			h(blocks, written)
		}
		if err != nil {
			// Complete unpinned the blocks anyway; only a dead cache fails it.
			res.fatal = fmt.Errorf("completing a destage: %w", err)
			continue
		}
		if written {
			n := blockcache.CountDirty(blocks)
			res.bytes += n * blockSize
			l.d.stats.destaged(l.now(), n)
		}
	}
	return res
}

// readFirst reads every run of a batch that reads gaps from the backing
// device (gapread.go) before any run is written: the disk then reads the
// batch's stretches in one ascending pass and writes them in another,
// instead of turning round between a read and a write for every run.
// Other batches are read by the workers, while the runs before are being
// written.
func (l *loop) readFirst(runs []*run, blocks int) {
	backing := false
	for _, r := range runs {
		for _, b := range r.blocks {
			backing = backing || b.Backing
		}
	}
	if !backing {
		return
	}
	if len(l.batchBuf) < blocks*blockSize {
		l.batchBuf = device.AlignedBuffer(blocks * blockSize)
	}
	off := 0
	for _, r := range runs {
		n := len(r.blocks) * blockSize
		r.read, r.buf = true, l.batchBuf[off:off+n]
		off += n
		r.readErr = l.c.ReadSlots(r.blocks, r.buf)
	}
}

// setWorkers grows or shrinks the worker pool to n (between batches).
func (l *loop) setWorkers(n int) {
	for l.workers < n {
		l.workers++
		l.wg.Add(1)
		l.d.live.Add(1)
		go l.worker()
	}
	for l.workers > n {
		l.workers--
		l.work <- nil // the worker that takes it exits
	}
}

// worker reads runs from the cache device into its own aligned buffer and
// writes each to the backing device once the previous run's write is over.
// It exits when the work channel is closed or it receives nil.
func (l *loop) worker() {
	defer l.wg.Done()
	defer l.d.live.Add(-1)
	var buf []byte
	for r := range l.work {
		if r == nil {
			return
		}
		n := len(r.blocks) * blockSize
		first, last := r.blocks[0].LBA, r.blocks[len(r.blocks)-1].LBA
		var b []byte
		var err error
		if r.read {
			b, err = r.buf, r.readErr
		} else {
			if len(buf) < n {
				buf = device.AlignedBuffer(max(n, l.d.Policy().MaxRun))
			}
			b = buf[:n]
			err = l.c.ReadSlots(r.blocks, b)
		}
		var lost *blockcache.LostBlocksError
		if errors.As(err, &lost) {
			// The lost blocks stay dirty (Complete never cleans them);
			// their neighbours are written around them.
			err = nil
		} else if err != nil {
			err = fmt.Errorf("reading blocks %d-%d from the cache device: %w", first, last, err)
		}
		<-r.prev
		switch {
		case err != nil:
			r.err = err
		case l.quitting():
			// Stopping: runs not yet on the disk stay dirty.
		default:
			// Blocks that a write of the backing device in place
			// claimed since they were pinned are not written: the run
			// holds older content for them. The pieces between are.
			r.claimed = l.c.BeginWriteBack(r.blocks)
			r.err = l.writeRun(r.blocks, b, lost, r.claimed)
			l.c.EndWriteBack(r.blocks)
			r.backing = r.err != nil
			if r.err == nil {
				r.written = true
				if h := l.d.o.afterWrite; h != nil {
					h(r.blocks)
				}
			}
		}
		close(r.done)
	}
}

// writeRun writes a run read into b to the backing device: in one I/O, or,
// when some of its blocks are lost or claimed, as the pieces between them.
func (l *loop) writeRun(blocks []blockcache.DirtyBlock, b []byte, lost *blockcache.LostBlocksError, claimed []int) error {
	skip := make([]bool, len(blocks))
	if lost != nil {
		for _, i := range lost.Lost {
			skip[i] = true
		}
	}
	for _, i := range claimed {
		skip[i] = true
	}
	for i := 0; i < len(blocks); {
		if skip[i] {
			i++
			continue
		}
		j := i + 1
		for j < len(blocks) && !skip[j] {
			j++
		}
		if _, err := l.c.Backing().WriteAt(b[i*blockSize:j*blockSize], int64(blocks[i].LBA)*blockSize); err != nil {
			return fmt.Errorf("writing blocks %d-%d to the backing device: %w", blocks[i].LBA, blocks[j-1].LBA, err)
		}
		i = j
	}
	return nil
}
