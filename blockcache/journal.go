package blockcache

import (
	"fmt"
	"sync"

	"github.com/wbcache/wbcache/device"
	"github.com/wbcache/wbcache/layout"
)

// journal owns the metadata journal ring. One goroutine (run) does every
// journal write and every cache-device sync; producers append records and
// wait. Records get sequence numbers (1, 2, ...) in append order, which is
// also their order on disk.
//
// A journal block that has been covered by a sync is never written again
// (it is "sealed"): the records after a sync go to the next block, so a torn
// rewrite can never take synced records with it.
type journal struct {
	dev  device.Device
	g    layout.Geometry
	uuid [16]byte
	inc  uint64 // incarnation stamped on every block

	// kick asks for a checkpoint; called with mu held, must not block.
	kick func()

	mu   sync.Mutex
	cond *sync.Cond

	pending    []layout.Record
	reserved   uint64 // blocks promised to reservations not appended yet
	appendSeq  uint64 // last record appended
	writtenSeq uint64 // last record pwritten
	syncedSeq  uint64 // last record durable
	syncNeed   uint64 // a caller waits for this many completed syncs
	syncStart  uint64 // syncs started
	syncDone   uint64 // syncs completed (they run one at a time, in order)
	syncing    bool   // a sync is in flight
	openLSN    uint64 // block that receives the next record
	openRecs   []layout.Record
	tail       uint64 // first LSN still needed (replay LSN of the current checkpoint)
	err        error  // sticky: the journal is dead
	closed     bool
	stopping   bool        // no new reservations (the cache is closing)
	blocks     uint64      // blocks written
	waiters    []seqWaiter // waitWritten callers, woken one by one
	scratch    []layout.Record
	done       chan struct{}
}

func newJournal(dev device.Device, g layout.Geometry, uuid [16]byte, inc, lsn uint64, kick func()) *journal {
	j := &journal{dev: dev, g: g, uuid: uuid, inc: inc, openLSN: lsn, tail: lsn, kick: kick, done: make(chan struct{})}
	j.cond = sync.NewCond(&j.mu)
	go j.run()
	return j
}

// capacity is how many blocks may be between tail and the newest block.
func (j *journal) capacity() uint64 { return j.g.JournalBlocks }

// usedLocked counts the blocks held from tail through the open block, plus
// the most the pending records and the reservations can take. Records
// appended together are written together, but a sync may seal the block
// between two batches, so each batch can waste one block.
func (j *journal) usedLocked() uint64 {
	return j.openLSN - j.tail + 1 + batchBlocks(len(j.pending)) + j.reserved
}

// batchBlocks is the most blocks a batch of n records appended together
// can take.
func batchBlocks(n int) uint64 {
	return uint64(n+layout.RecordsPerBlock-1)/layout.RecordsPerBlock + 1
}

// reserve waits until a batch of n records is sure to fit in the ring and
// reserves room for it. Every reserve is followed by one append of at most
// n records under a single Cache.mu critical section, then release(n).
func (j *journal) reserve(n int) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	need := batchBlocks(n)
	if need+2 > j.capacity() {
		return fmt.Errorf("%w: a batch of %d records cannot fit a journal of %d blocks", ErrInvalid, n, j.capacity())
	}
	for j.err == nil && !j.closed && !j.stopping && j.usedLocked()+need > j.capacity() {
		j.kick()
		j.cond.Wait()
	}
	if j.err != nil {
		return j.err
	}
	if j.closed || (j.stopping && j.usedLocked()+need > j.capacity()) {
		return ErrClosed
	}
	j.reserved += need
	if 2*(j.openLSN-j.tail) >= j.capacity() {
		j.kick()
	}
	return nil
}

func (j *journal) release(n int) {
	j.mu.Lock()
	j.reserved -= batchBlocks(n)
	j.cond.Broadcast()
	j.mu.Unlock()
}

// append queues a record and returns its sequence number. It never blocks
// on I/O; the caller holds Cache.mu so that the order of records equals the
// order in which their effects were applied in memory.
func (j *journal) append(r layout.Record) uint64 {
	j.mu.Lock()
	j.pending = append(j.pending, r)
	j.appendSeq++
	seq := j.appendSeq
	if len(j.pending) == 1 {
		j.cond.Broadcast()
	}
	j.mu.Unlock()
	return seq
}

type seqWaiter struct {
	seq uint64
	ch  chan struct{}
}

// waitWritten returns once record seq is in the cache device's page cache
// (it survives a process crash). Each waiter has its own channel, so a
// journal write wakes only the writers it completed.
func (j *journal) waitWritten(seq uint64) error {
	j.mu.Lock()
	if j.writtenSeq >= seq {
		j.mu.Unlock()
		return nil
	}
	if j.err != nil {
		err := j.err
		j.mu.Unlock()
		return err
	}
	ch := make(chan struct{})
	j.waiters = append(j.waiters, seqWaiter{seq, ch})
	j.mu.Unlock()
	<-ch
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.writtenSeq >= seq {
		return nil
	}
	return j.err
}

// wakeLocked releases the waiters whose records are written (all of them
// when the journal has failed).
func (j *journal) wakeLocked() {
	kept := j.waiters[:0]
	for _, w := range j.waiters {
		if w.seq <= j.writtenSeq || j.err != nil {
			close(w.ch)
		} else {
			kept = append(kept, w)
		}
	}
	clear(j.waiters[len(kept):])
	j.waiters = kept
}

// sync makes every record appended so far, and every data write completed
// before the call, durable: it waits for a device sync that starts after
// the call (the writer syncs only with no records pending, so every record
// appended before the call is written by then).
func (j *journal) sync() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	need := j.syncStart + 1
	j.syncNeed = max(j.syncNeed, need)
	j.cond.Broadcast()
	for j.syncDone < need && j.err == nil && !j.closed {
		j.cond.Wait()
	}
	if j.syncDone >= need {
		return nil
	}
	if j.err != nil {
		return j.err
	}
	return ErrClosed
}

func (j *journal) durable() uint64 {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.syncedSeq
}

// setTail records that a checkpoint made every block before lsn unneeded.
func (j *journal) setTail(lsn uint64) {
	j.mu.Lock()
	j.tail = lsn
	j.cond.Broadcast()
	j.mu.Unlock()
}

// checkpointLSN is the block from which replay must start for a checkpoint
// whose pages are copied after this call.
func (j *journal) checkpointLSN() uint64 {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.openLSN
}

func (j *journal) stats() (seq, synced, syncs, blocks, used uint64) {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.appendSeq, j.syncedSeq, j.syncDone, j.blocks, j.openLSN - j.tail + 1
}

// stop makes waiting and future reservations that do not fit fail, so
// background work can wind down while the final checkpoint is written.
func (j *journal) stop() {
	j.mu.Lock()
	j.stopping = true
	j.cond.Broadcast()
	j.mu.Unlock()
}

func (j *journal) close() {
	j.mu.Lock()
	j.closed = true
	j.cond.Broadcast()
	j.mu.Unlock()
	<-j.done
}

// fail makes the journal dead; every waiter gets err.
func (j *journal) failLocked(err error) {
	if j.err == nil {
		j.err = err
	}
	j.wakeLocked()
	j.cond.Broadcast()
}

const maxBlocksPerWrite = 64

func (j *journal) run() {
	defer close(j.done)
	buf := device.AlignedBuffer(maxBlocksPerWrite * layout.BlockSize)
	j.mu.Lock()
	defer j.mu.Unlock()
	for {
		for len(j.pending) == 0 && (j.syncing || j.syncNeed <= j.syncStart) && !j.closed && j.err == nil {
			j.cond.Wait()
		}
		if j.err != nil {
			for j.syncing {
				j.cond.Wait()
			}
			return
		}
		if len(j.pending) > 0 {
			j.writeLocked(buf)
			continue
		}
		if !j.syncing && j.syncNeed > j.syncStart {
			j.startSyncLocked()
			continue
		}
		if j.closed && !j.syncing {
			return
		}
		j.cond.Wait()
	}
}

// startSyncLocked seals the open block and syncs the device in the
// background, so records keep being written (into later blocks) while the
// device flushes. Only one sync is in flight at a time; it covers every
// record written before it started.
func (j *journal) startSyncLocked() {
	if len(j.openRecs) > 0 {
		j.openLSN++
		j.openRecs = j.openRecs[:0]
	}
	covered := j.writtenSeq
	j.syncStart++
	j.syncing = true
	go func() {
		err := j.dev.Sync()
		j.mu.Lock()
		defer j.mu.Unlock()
		j.syncing = false
		if err != nil {
			// A failed sync of the cache device is fatal: the page cache may
			// have dropped the data it could not write (fsyncgate).
			j.failLocked(fmt.Errorf("%w: sync of the cache device failed: %w", ErrFailed, err))
			return
		}
		j.syncDone++
		j.syncedSeq = max(j.syncedSeq, covered)
		j.cond.Broadcast()
	}()
}

// writeLocked writes pending records (at most maxBlocksPerWrite blocks'
// worth) into the open block and the blocks after it. Called with mu held;
// drops it around the I/O.
func (j *journal) writeLocked(buf []byte) {
	recs := j.pending
	room := layout.RecordsPerBlock - len(j.openRecs) + (maxBlocksPerWrite-1)*layout.RecordsPerBlock
	if len(recs) > room {
		recs = recs[:room]
	}
	lsn := j.openLSN
	// Only this goroutine writes, so one scratch slice serves every batch.
	open := append(j.scratch[:0], j.openRecs...)
	defer func() { j.scratch = open[:0] }()
	first := lsn
	nb := 0
	rest := recs
	for len(rest) > 0 {
		n := min(layout.RecordsPerBlock-len(open), len(rest))
		open = append(open, rest[:n]...)
		rest = rest[n:]
		if lsn-j.tail >= j.capacity() {
			j.failLocked(fmt.Errorf("%w: journal ring overflow at block %d (tail %d)", ErrFailed, lsn, j.tail))
			return
		}
		layout.EncodeJournalBlock(buf[nb*layout.BlockSize:(nb+1)*layout.BlockSize], j.uuid, lsn, j.inc, open)
		nb++
		if len(open) == layout.RecordsPerBlock {
			lsn++
			open = open[:0]
		}
	}
	j.mu.Unlock()
	err := j.writeBlocks(buf[:nb*layout.BlockSize], first)
	j.mu.Lock()
	if err != nil {
		j.failLocked(fmt.Errorf("%w: journal write failed: %w", ErrFailed, err))
		return
	}
	j.blocks += uint64(nb)
	j.pending = j.pending[len(recs):]
	if len(j.pending) == 0 {
		j.pending = nil
	}
	j.writtenSeq += uint64(len(recs))
	j.openLSN = lsn
	j.openRecs = append(j.openRecs[:0], open...)
	j.wakeLocked()
	j.cond.Broadcast()
	if 2*(j.openLSN-j.tail) >= j.capacity() {
		j.kick()
	}
}

// writeBlocks writes consecutive blocks starting at LSN first, splitting at
// the end of the ring.
func (j *journal) writeBlocks(b []byte, first uint64) error {
	for len(b) > 0 {
		pos := first % j.g.JournalBlocks
		n := min(uint64(len(b)/layout.BlockSize), j.g.JournalBlocks-pos)
		if _, err := j.dev.WriteAt(b[:n*layout.BlockSize], j.g.JournalOffset(first)); err != nil {
			return err
		}
		b = b[n*layout.BlockSize:]
		first += n
	}
	return nil
}
