package blockcache

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/wbcache/wbcache/device"
	"github.com/wbcache/wbcache/layout"
)

// journal owns the metadata journal ring. Producers append records under
// Cache.mu; each append encodes the record into the open block and copies
// it into the journal region (a shared memory mapping of the cache file,
// see device.Region), so once append returns the record is in the page
// cache and survives a process crash, without a system call or a wait.
// One goroutine (run) does every cache-device sync. Records get sequence
// numbers (1, 2, ...) in append order, which is also their order on disk.
//
// A journal block that has been covered by a sync is never written again
// (it is "sealed"): the records after a sync go to the next block, so a
// torn rewrite can never take synced records with it.
//
// On a mapped region the block after the open one is prepared while
// records still go to the open one, once that is half full: written
// with zeros, its page faulted into the mapping (device.Region.Prepare),
// by a writer once it holds no lock or by the journal goroutine.
// Opening a prepared block is then a memory copy of its header and first
// record, like any other append, rather than a pwrite of the whole block
// and a page fault on the next record, both under mu. Every write holds
// its shard's lock while it appends, so a pwrite that sleeps on the cache
// file's inode lock (held by the data writes of other goroutines), or a
// fault after which the kernel runs another thread, kept every writer
// that reached mu waiting, and every writer of their shards behind them.
type journal struct {
	dev  device.Device
	reg  device.Region
	g    layout.Geometry
	uuid [16]byte
	inc  uint64 // incarnation stamped on every block

	// kick asks for a checkpoint; called with mu held, must not block.
	kick func()

	mu   sync.Mutex
	cond *sync.Cond

	reserved    uint64        // blocks promised to reservations not appended yet
	roomWaiters int           // reservations waiting for room
	appendSeq   uint64        // last record appended
	written     atomic.Uint64 // last record in the journal region (read without mu by appended)
	syncedSeq   uint64        // last record durable
	syncNeed    uint64        // a caller waits for this many completed syncs
	syncStart   uint64        // syncs started
	syncDone    uint64        // syncs completed (they run one at a time, in order)
	syncing     bool          // a sync is in flight
	// inPlace counts the in-place rewrites in flight (no sync may start).
	// It grows under mu (appendInPlace); endInPlace lowers it without mu,
	// and takes mu to wake the journal goroutine only if that waits for
	// it to reach zero (inPlaceWait).
	inPlace     atomic.Int32
	inPlaceWait atomic.Bool
	openLSN     uint64 // block that receives the next record
	openCount   int    // records in it (0: not started, nothing written)
	prevCount   int    // records in block openLSN-1, for openLSN's header
	chain       uint32 // chained checksum of the open block's last record
	openBuf     []byte // the open block as written
	tail        uint64 // first LSN still needed (replay LSN of the current checkpoint)
	err         error  // sticky: the journal is dead
	closed      bool
	stopping    bool   // no new reservations (the cache is closing)
	blocks      uint64 // blocks started
	done        chan struct{}

	// Preparing the next block (prepareLocked), on a mapped region only.
	mapped    bool        // reg is a shared mapping, so prepared blocks open with a copy
	zero      []byte      // a block of zeros, what Prepare writes
	prepWant  uint64      // the block to prepare next (0: none)
	prepAsk   atomic.Bool // prepWant was set: a writer done with its locks may prepare it (prepareAhead)
	preparing uint64      // the block being prepared, with mu released (0: none); no append may open it meanwhile
	prepEnd   uint64      // the newest block prepared (its page holds zeros, mapped writable), plus one; 0: none
	prepOpens uint64      // blocks opened into a prepared page
}

// tracePrepare, when set by a test, is called as a block's preparation
// starts (in a writer or the journal goroutine), before it writes it.
var tracePrepare atomic.Pointer[func(lsn uint64)]

// newJournal continues the journal at block lsn; prevCount is how many
// records replay found in block lsn-1.
func newJournal(dev device.Device, g layout.Geometry, uuid [16]byte, inc, lsn uint64, prevCount int, kick func()) (*journal, error) {
	reg, err := device.NewRegion(dev, g.JournalOffset(0), int64(g.JournalBlocks)*layout.BlockSize)
	if err != nil {
		return nil, fmt.Errorf("opening the journal: %w", err)
	}
	j := &journal{dev: dev, reg: reg, g: g, uuid: uuid, inc: inc, openLSN: lsn, prevCount: prevCount, tail: lsn,
		kick: kick, openBuf: make([]byte, layout.BlockSize), done: make(chan struct{})}
	if j.mapped, _ = device.Mapped(reg); j.mapped {
		j.zero = make([]byte, layout.BlockSize)
	}
	j.cond = sync.NewCond(&j.mu)
	go j.run()
	return j, nil
}

// wantsCheckpoint reports whether the ring is at least half used or a
// reservation waits for room: what makes appends ask for a checkpoint.
func (j *journal) wantsCheckpoint() bool {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.halfUsedLocked() || j.roomWaiters > 0
}

// halfUsedLocked: the blocks from tail through the open one fill at least
// half the ring, which is when a checkpoint is asked for.
func (j *journal) halfUsedLocked() bool { return 2*(j.openLSN-j.tail) >= j.capacity() }

// capacity is how many blocks may be between tail and the newest block.
func (j *journal) capacity() uint64 { return j.g.JournalBlocks }

// usedLocked counts the blocks held from tail through the open block,
// plus the most the reservations can take. A batch appended under one
// reservation can spill from the open block into the next ones, and a sync
// may seal the open block between two batches, so each batch can waste
// one block.
func (j *journal) usedLocked() uint64 {
	return j.openLSN - j.tail + 1 + j.reserved
}

// batchBlocks is the most blocks a batch of n records appended together
// can take.
func batchBlocks(n int) uint64 {
	return uint64(n+layout.RecordsPerBlock-1)/layout.RecordsPerBlock + 1
}

// reserve waits until a batch of n records is sure to fit in the ring and
// reserves room for it. Every reserve is followed by at most n records
// appended under a single Cache.mu critical section, then release(n)
// (metaChange is that sequence).
func (j *journal) reserve(n int) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	need := batchBlocks(n)
	if need+2 > j.capacity() {
		return fmt.Errorf("%w: a batch of %d records cannot fit a journal of %d blocks", ErrInvalid, n, j.capacity())
	}
	for j.err == nil && !j.closed && !j.stopping && j.usedLocked()+need > j.capacity() {
		j.kick()
		j.roomWaiters++
		j.cond.Wait()
		j.roomWaiters--
	}
	if j.err != nil {
		return j.err
	}
	if j.closed || (j.stopping && j.usedLocked()+need > j.capacity()) {
		return ErrClosed
	}
	j.reserved += need
	if j.halfUsedLocked() {
		j.kick()
	}
	return nil
}

func (j *journal) release(n int) {
	j.mu.Lock()
	if j.reserved < batchBlocks(n) {
		// An unmatched release would make the ring look full forever.
		have := j.reserved
		j.mu.Unlock()
		panic(fmt.Sprintf("journal: release of %d records with %d blocks reserved", n, have))
	}
	j.reserved -= batchBlocks(n)
	j.cond.Broadcast()
	j.mu.Unlock()
}

// appendGen writes a record into the journal region and returns its
// sequence number and the sync generation it was appended in: the number
// of syncs started before it, none of which covers it. It does no I/O of
// its own but the write of a new block that was not prepared ahead, and
// waits only for a preparation of the block it opens that is under way;
// the caller holds the lock of the records' blocks (metaChange) so that
// the order of records equals the order in which their effects were
// applied in memory. A failure makes the journal dead: appended reports
// it.
func (j *journal) appendGen(r layout.Record) (uint64, uint64) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.waitPreparedLocked()
	return j.appendLocked(r), j.syncStart
}

// errNoRoom: the ring has no room for a record right now; the caller
// reserves room (which may wait for a checkpoint) and tries again.
var errNoRoom = errors.New("journal: no room without waiting")

// tryAppendGen is appendGen for a change that reserved no room: it
// appends r only if a reservation of one record would be granted now
// without waiting, and fails with errNoRoom otherwise. A dead or closed
// journal fails it with its error, as reserve would.
func (j *journal) tryAppendGen(r layout.Record) (uint64, uint64, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.waitPreparedLocked()
	if err := j.roomLocked(); err != nil {
		return 0, 0, err
	}
	return j.appendLocked(r), j.syncStart, nil
}

// roomLocked reports whether one record may be appended without a
// reservation: what reserve(1) would grant now without waiting (and
// none waits for room before it).
func (j *journal) roomLocked() error {
	switch {
	case j.err != nil:
		return j.err
	case j.closed:
		return ErrClosed
	case j.roomWaiters > 0 || j.usedLocked()+batchBlocks(1) > j.capacity():
		return errNoRoom
	}
	return nil
}

func (j *journal) appendLocked(r layout.Record) uint64 {
	j.appendSeq++
	seq := j.appendSeq
	if j.err != nil || j.closed {
		return seq
	}
	if j.openCount == layout.RecordsPerBlock {
		j.sealLocked()
	}
	if j.openLSN-j.tail >= j.capacity() {
		j.failLocked(fmt.Errorf("%w: journal ring overflow at block %d (tail %d)", ErrFailed, j.openLSN, j.tail))
		return seq
	}
	from, to := layout.RecordOffset(j.openCount), layout.RecordOffset(j.openCount+1)
	if j.openCount == 0 {
		// A new block is written whole: header, first record, zeros. A
		// prepared one holds the zeros already, mapped: copy the rest.
		clear(j.openBuf)
		j.chain = layout.EncodeJournalHeader(j.openBuf, j.uuid, layout.JournalHeader{LSN: j.openLSN, Incarnation: j.inc, PrevCount: j.prevCount})
		from, to = 0, layout.BlockSize
		if j.prepEnd == j.openLSN+1 {
			to = layout.RecordOffset(1)
			j.prepOpens++
		}
		j.blocks++
	}
	j.chain = layout.EncodeJournalRecord(j.openBuf, j.openCount, j.chain, r)
	if err := j.reg.Update(j.openBuf, j.g.JournalOffset(j.openLSN), from, to); err != nil {
		j.failLocked(fmt.Errorf("%w: journal write failed: %w", ErrFailed, err))
		return seq
	}
	j.openCount++
	j.written.Store(seq)
	if j.mapped && j.openCount == prepareAt {
		// Prepared by the first writer to finish its write
		// (prepareAhead), else by the journal goroutine.
		j.prepWant = j.openLSN + 1
		j.prepAsk.Store(true)
		j.cond.Broadcast()
	}
	if j.halfUsedLocked() {
		j.kick()
	}
	return seq
}

// appendInPlace appends r, the record of an in-place rewrite of a slot
// mapped by a record of sync generation gen, if that slot may be rewritten
// in place: no sync has started since (so none covers that record) and
// none is waiting to start. If it may (claimed), the next sync is held off
// until endInPlace: the rewrite and its MAP record must both come before
// any sync that covers the old record, or a power cut could leave that
// durable record pointing at rewritten data. err is what kept a claimed
// record out of the journal region (as appended reports it). No room is
// reserved for it: it also declines when the ring has none right now
// (roomLocked; the caller then writes the block out of place, which
// waits for room).
func (j *journal) appendInPlace(gen uint64, r layout.Record) (seq uint64, claimed bool, err error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.waitPreparedLocked()
	if j.syncStart != gen || j.syncNeed > j.syncStart || j.roomLocked() != nil {
		return 0, false, nil
	}
	j.inPlace.Add(1)
	seq = j.appendLocked(r)
	return seq, true, j.appendedLocked(seq)
}

// endInPlace ends a claimed in-place rewrite.
func (j *journal) endInPlace() {
	if j.inPlace.Add(-1) == 0 && j.inPlaceWait.Load() {
		j.mu.Lock()
		j.cond.Broadcast()
		j.mu.Unlock()
	}
}

// prepareAt is how many records the open block holds when the next one
// is prepared. Not at once: where every write is followed by an fsync
// (which ends the open block), a block prepared at every open is one more
// page of zeros for each fsync to write back, and such writes do not
// contend for mu anyway (4 KiB write + fsync at QD1: 5% fewer IOPS, with
// requests of 4.8-5.1 KiB against 3.7). Half a block ahead leaves the
// preparation the time of RecordsPerBlock/2 appends.
const prepareAt = layout.RecordsPerBlock / 2

// waitPreparedLocked waits while the block the next append would open is
// being prepared: the preparation writes zeros over it with mu released,
// and must not land over a record. It returns at once almost always (a
// block takes RecordsPerBlock appends or a sync to fill, its successor's
// preparation a write of one block); waiting before an append, not in
// it, keeps sequence numbers in the order of the records on disk and
// lets the caller's checks (room, sync generation) see the state the
// append will.
func (j *journal) waitPreparedLocked() {
	for j.preparing != 0 && j.opensLocked(j.preparing) && j.err == nil && !j.closed {
		j.cond.Wait()
	}
}

// opensLocked reports whether the next append opens block lsn: the open
// block is lsn and has no record yet, or is full and lsn follows it.
func (j *journal) opensLocked(lsn uint64) bool {
	return (j.openCount == 0 && lsn == j.openLSN) || (j.openCount == layout.RecordsPerBlock && lsn == j.openLSN+1)
}

// openedLocked reports whether block lsn has records already (it is the
// open block, with some, or an earlier one).
func (j *journal) openedLocked(lsn uint64) bool {
	return lsn < j.openLSN || (lsn == j.openLSN && j.openCount > 0)
}

// prepWantedLocked: a block should be prepared now. It must not be open
// already, and its place in the ring must hold no block still needed
// (one before the tail, from an earlier pass of the ring).
func (j *journal) prepWantedLocked() bool {
	w := j.prepWant
	return w != 0 && w >= j.prepEnd && j.preparing == 0 && j.err == nil && !j.closed && !j.stopping &&
		!j.openedLocked(w) && w-j.tail < j.capacity()
}

// prepareAhead prepares the block after the open one if the journal
// wants that and no one is at it. Writers call it once they hold no lock,
// so that the block is ready before the open one fills: left to the
// journal goroutine alone, which must wait for a processor among the
// writers' goroutines, a third of the blocks were not prepared in time
// under 64 synchronous writers through /dev/fuse. Otherwise it costs an
// atomic load.
func (j *journal) prepareAhead() {
	if !j.prepAsk.Load() || !j.prepAsk.CompareAndSwap(true, false) {
		return
	}
	j.mu.Lock()
	if j.prepWantedLocked() {
		j.prepareLocked()
	}
	j.mu.Unlock()
}

// prepareLocked prepares block prepWant with mu released (appends that
// would open it wait for it: waitPreparedLocked). A failure only leaves
// the block to be opened with a write of its own, which reports it.
func (j *journal) prepareLocked() {
	lsn := j.prepWant
	j.preparing = lsn
	j.mu.Unlock()
	if h := tracePrepare.Load(); h != nil {
		(*h)(lsn)
	}
	ready, err := j.reg.Prepare(j.zero, j.g.JournalOffset(lsn))
	j.mu.Lock()
	j.preparing = 0
	if err == nil && ready {
		j.prepEnd = lsn + 1
	} else {
		j.prepWant = 0
	}
	j.cond.Broadcast()
}

// sealLocked ends the open block: later records go to the next one.
func (j *journal) sealLocked() {
	if j.openCount > 0 {
		j.prevCount = j.openCount
		j.openLSN++
		j.openCount = 0
	}
}

// appended reports whether record seq made it into the journal region
// (the cache device's page cache: it survives a process crash): nil if it
// did, else the error that kept it out. append writes the record itself,
// so there is nothing to wait for.
func (j *journal) appended(seq uint64) error {
	if j.written.Load() >= seq {
		return nil
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.appendedLocked(seq)
}

func (j *journal) appendedLocked(seq uint64) error {
	if j.written.Load() >= seq {
		return nil
	}
	if j.err != nil {
		return j.err
	}
	return ErrClosed
}

// sync makes every record appended so far, and every data write completed
// before the call, durable: it waits for a device sync that starts after
// the call.
func (j *journal) sync() error { return j.syncBy(false) }

// syncHere is sync for a client's fsync: when nothing holds the sync off
// (none in flight, no in-place rewrite claimed) the caller runs it
// itself, sparing the hand-off to the journal goroutine and back (two
// wake-ups, a good part of a sync per write).
func (j *journal) syncHere() error { return j.syncBy(true) }

func (j *journal) syncBy(here bool) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	need := j.syncStart + 1
	j.syncNeed = max(j.syncNeed, need)
	if here && !j.syncing && j.inPlace.Load() == 0 && j.err == nil && !j.closed {
		covered := j.beginSyncLocked()
		j.mu.Unlock()
		err := j.dev.Sync()
		j.mu.Lock()
		j.endSyncLocked(covered, err)
	} else {
		j.cond.Broadcast()
	}
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

// syncGen is the number of syncs started.
func (j *journal) syncGen() uint64 {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.syncStart
}

// lastSeq is the sequence number of the newest record appended.
func (j *journal) lastSeq() uint64 {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.appendSeq
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

// journalStats are the journal's counters, read together.
type journalStats struct {
	records  uint64 // records appended (the newest one's sequence number)
	syncs    uint64 // syncs done
	blocks   uint64 // blocks started
	prepared uint64 // of those, opened into a page prepared ahead
	used     uint64 // blocks from the tail through the open one
}

func (j *journal) stats() journalStats {
	j.mu.Lock()
	defer j.mu.Unlock()
	return journalStats{records: j.appendSeq, syncs: j.syncDone, blocks: j.blocks, prepared: j.prepOpens, used: j.openLSN - j.tail + 1}
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

// failLocked makes the journal dead; every waiter gets err.
func (j *journal) failLocked(err error) {
	if j.err == nil {
		j.err = err
	}
	j.cond.Broadcast()
}

func (j *journal) run() {
	defer close(j.done)
	j.mu.Lock()
	defer j.mu.Unlock()
	for {
		for (j.syncing || j.syncNeed <= j.syncStart) && !j.prepWantedLocked() && !j.closed && j.err == nil {
			j.cond.Wait()
		}
		if j.err != nil || (j.closed && j.syncNeed <= j.syncStart) {
			for j.syncing {
				j.cond.Wait()
			}
			j.closed = true // no append may touch the region any more
			if err := j.reg.Close(); err != nil && j.err == nil {
				j.err = err
			}
			return
		}
		if !j.syncing && j.syncNeed > j.syncStart {
			for j.inPlace.Load() > 0 && j.err == nil {
				// Set before looking again: an endInPlace that brings
				// it to zero after that look sees it and wakes us.
				j.inPlaceWait.Store(true)
				if j.inPlace.Load() == 0 {
					break
				}
				j.cond.Wait()
			}
			j.inPlaceWait.Store(false)
			if j.err == nil {
				j.startSyncLocked()
			}
			continue
		}
		if j.prepWantedLocked() {
			j.prepareLocked()
			continue
		}
		j.cond.Wait()
	}
}

// startSyncLocked seals the open block and syncs the device in the
// background, so records keep being appended (into later blocks) while the
// device flushes. Only one sync is in flight at a time; it covers every
// record appended before it started.
func (j *journal) startSyncLocked() {
	covered := j.beginSyncLocked()
	go func() {
		err := j.dev.Sync()
		j.mu.Lock()
		defer j.mu.Unlock()
		j.endSyncLocked(covered, err)
	}()
}

// beginSyncLocked marks a sync started, sealing the open block, and
// returns the last record it covers. The caller syncs the device without
// holding mu, then calls endSyncLocked. No in-place rewrite may be in
// flight.
func (j *journal) beginSyncLocked() (covered uint64) {
	j.sealLocked()
	covered = j.written.Load()
	j.syncStart++
	j.syncing = true
	return covered
}

// endSyncLocked ends the sync begun by beginSyncLocked, which the device's
// Sync answered with err.
func (j *journal) endSyncLocked(covered uint64, err error) {
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
}
