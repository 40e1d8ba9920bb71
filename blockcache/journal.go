package blockcache

import (
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/wbcache/wbcache/device"
	"github.com/wbcache/wbcache/layout"
)

// journal owns the metadata journal ring. Producers append records
// under their change's lock (metaChange); each append encodes the record
// and copies it into the open block of the journal region (a shared
// memory mapping of the cache file, see device.Region), so once append
// returns the record is in the page cache and survives a process crash,
// without a system call or a wait. One goroutine (run) does every
// cache-device sync. Records get sequence numbers in the order they take
// their places, which is also their order on disk.
//
// On a mapped region a record takes its place with a compare-and-swap on
// pos, the open block and its next free position, and no lock: writers
// of different blocks copy their records side by side (appendFast). The
// records of a block are checked each on its own (layout.JournalHeader
// Alone), so a record copied before the one placed ahead of it counts
// in a crash image without it. Records of one block of the cache, and
// of one slot, keep their order: they are appended under that block's
// lock, each copied before the lock is released, and a slot moves to
// another block only once the record that unmapped it is durable
// (blockcache/doc.go, invariant 1). mu guards what changes once per
// journal block or per sync: opening a block (its header and first
// record), sealing it, room, and sync state.
//
// A journal block that has been covered by a sync is never written again
// (it is "sealed"): the records after a sync go to the next block, so a
// torn rewrite can never take synced records with it. A sync seals the
// open block and then waits for the records placed in it to be copied
// (waitCopied) before it syncs the device, so a completed sync covers
// every record placed before it began.
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
//
// On a region that is not mapped every append writes the whole block, so
// appends take mu one at a time.
type journal struct {
	dev  device.Device
	reg  device.Region
	g    layout.Geometry
	uuid [16]byte
	inc  uint64 // incarnation stamped on every block

	// kick asks for a checkpoint; called with mu held, must not block.
	kick func()

	// pos is where the next record goes, as block*posBlock + records
	// placed in it, and the newest record's sequence number: a record
	// placed at position i of block L is L*posBlock+i+1. Zero records
	// placed means the block is not opened (its header is not written
	// yet); RecordsPerBlock, that it is full. Either way the next append
	// takes mu (appendLocked) to open the next one. Sealing moves pos to
	// the next block, unopened. posStopped freezes it: the journal is
	// closed or dead. posChained marks an open block of chained records,
	// which every append places under mu.
	pos atomic.Uint64
	// blk tracks the last blockRing blocks opened: their header checksum
	// (what their records' checksums continue from) and how many of their
	// records are copied, against how many were placed once they are
	// left. A block reuses an entry only once the entry's block is copied
	// whole.
	blk [blockRing]blockCopies
	// copiedLow is the oldest block not yet seen copied whole (waitCopied).
	copiedLow atomic.Uint64
	// badFrom: records with this sequence number or a later one may have
	// missed the region (the journal stopped, or their copy failed).
	badFrom atomic.Uint64

	// Read without mu by appends: the syncs started (syncStart), the
	// syncs asked for (syncNeed), the last record durable, and whether a
	// record with no room reserved may be appended now (roomLocked).
	syncStartA atomic.Uint64
	syncNeedA  atomic.Uint64
	syncedA    atomic.Uint64
	roomOK     atomic.Bool

	mu   sync.Mutex
	cond *sync.Cond

	reserved    uint64 // blocks promised to reservations not appended yet
	roomWaiters int    // reservations waiting for room
	syncNeed    uint64 // a caller waits for this many completed syncs
	syncStart   uint64 // syncs started
	syncDone    uint64 // syncs completed (they run one at a time, in order)
	syncing     bool   // a sync is in flight
	// inPlace counts the in-place rewrites in flight (no sync may start).
	// appendInPlace raises it without mu before it looks whether a sync
	// is asked for; a sync, once asked for, waits for it to reach zero.
	// endInPlace lowers it without mu, and takes mu to wake the journal
	// goroutine only if that waits for it (inPlaceWait).
	inPlace     atomic.Int32
	inPlaceWait atomic.Bool
	prevCount   int    // records in the block before the unopened one at pos, for its header
	openBuf     []byte // the open block as written (whole-block writes)
	// chained: blocks opened from now on chain their records (ordered
	// write-back: see setChained); chain is the CRC the open chained
	// block's next record continues from.
	chained    bool
	chain      uint32
	openAlone  bool   // the block opened last checks its records alone
	sealedRecs uint64 // records in blocks left behind, for stats
	tail       uint64 // first LSN still needed (replay LSN of the current checkpoint)
	err        error  // sticky: the journal is dead
	closed     bool
	stopping   bool   // no new reservations (the cache is closing)
	blocks     uint64 // blocks started
	done       chan struct{}

	// Preparing the next block (prepareLocked), on a mapped region only.
	mapped    bool        // reg is a shared mapping: prepared blocks open with a copy, records are placed without mu
	zero      []byte      // a block of zeros, what Prepare writes
	prepWant  uint64      // the block to prepare next (0: none)
	prepAsk   atomic.Bool // prepWant was set: a writer done with its locks may prepare it (prepareAhead)
	preparing uint64      // the block being prepared, with mu released (0: none); no append may open it meanwhile
	prepEnd   uint64      // the newest block prepared (its page holds zeros, mapped writable), plus one; 0: none
	prepOpens uint64      // blocks opened into a prepared page
}

const (
	posBlock   = layout.RecordsPerBlock + 1 // pos units per journal block
	posStopped = uint64(1) << 63
	posChained = uint64(1) << 62
	posFlags   = posStopped | posChained
	blockRing  = 8
	refusedSeq = ^uint64(0) // the sequence number of a record the journal refused
)

// blockCopies is one entry of journal.blk.
type blockCopies struct {
	lsn1  atomic.Uint64 // the block's LSN plus one (0: unused)
	crc   atomic.Uint32 // its header's checksum
	done  atomic.Uint32 // records copied into it
	final atomic.Uint32 // records placed in it, once it is left (0: open)
}

func splitPos(p uint64) (lsn uint64, n int) {
	p &^= posFlags
	return p / posBlock, int(p % posBlock)
}

// tracePlaced, when set by a test, is called by appendFast once record
// seq has its place, before its copy; traceLocked by every append that
// takes mu.
var (
	tracePlaced atomic.Pointer[func(seq uint64)]
	traceLocked atomic.Pointer[func()]
)

// tracePrepare, when set by a test, is called as a block's preparation
// starts (in a writer or the journal goroutine), before it writes it.
var tracePrepare atomic.Pointer[func(lsn uint64)]

// newJournal continues the journal at block lsn; prevCount is how many
// records replay found in block lsn-1.
func newJournal(dev device.Device, g layout.Geometry, uuid [16]byte, inc, lsn uint64, prevCount int, chained bool, kick func()) (*journal, error) {
	reg, err := device.NewRegion(dev, g.JournalOffset(0), int64(g.JournalBlocks)*layout.BlockSize)
	if err != nil {
		return nil, fmt.Errorf("opening the journal: %w", err)
	}
	j := &journal{dev: dev, reg: reg, g: g, uuid: uuid, inc: inc, prevCount: prevCount, tail: lsn, chained: chained,
		kick: kick, openBuf: make([]byte, layout.BlockSize), done: make(chan struct{})}
	if j.mapped, _ = device.Mapped(reg); j.mapped {
		j.zero = make([]byte, layout.BlockSize)
	}
	j.pos.Store(lsn * posBlock)
	j.copiedLow.Store(lsn)
	j.badFrom.Store(refusedSeq)
	j.cond = sync.NewCond(&j.mu)
	j.setRoomLocked()
	go j.run()
	return j, nil
}

// openLSNLocked is the block that receives the next record (not opened
// yet when the one before was sealed), and records how many it holds.
func (j *journal) openLSNLocked() (uint64, int) { return splitPos(j.pos.Load()) }

// wantsCheckpoint reports whether the ring is at least half used or a
// reservation waits for room: what makes appends ask for a checkpoint.
func (j *journal) wantsCheckpoint() bool {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.halfUsedLocked() || j.roomWaiters > 0
}

// halfUsedLocked: the blocks from tail through the open one fill at least
// half the ring, which is when a checkpoint is asked for.
func (j *journal) halfUsedLocked() bool {
	open, _ := j.openLSNLocked()
	return 2*(open-j.tail) >= j.capacity()
}

// capacity is how many blocks may be between tail and the newest block.
func (j *journal) capacity() uint64 { return j.g.JournalBlocks }

// usedLocked counts the blocks held from tail through the open block,
// plus the most the reservations can take. A batch appended under one
// reservation can spill from the open block into the next ones, and a sync
// may seal the open block between two batches, so each batch can waste
// one block.
func (j *journal) usedLocked() uint64 {
	open, _ := j.openLSNLocked()
	return open - j.tail + 1 + j.reserved
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
	defer j.setRoomLocked()
	need := batchBlocks(n)
	if need+2 > j.capacity() {
		return fmt.Errorf("%w: a batch of %d records cannot fit a journal of %d blocks", ErrInvalid, n, j.capacity())
	}
	for j.err == nil && !j.closed && !j.stopping && j.usedLocked()+need > j.capacity() {
		j.kick()
		j.roomWaiters++
		j.setRoomLocked()
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
	j.setRoomLocked()
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
	if seq, gen, ok := j.appendFast(r, false); ok {
		return seq, gen
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	seq, _ := j.appendLocked(r, false)
	// Read after the append: appendLocked may wait with mu released,
	// and a sync that starts meanwhile seals the block before it.
	return seq, j.syncStart
}

// errNoRoom: the ring has no room for a record right now; the caller
// reserves room (which may wait for a checkpoint) and tries again.
var errNoRoom = errors.New("journal: no room without waiting")

// tryAppendGen is appendGen for a change that reserved no room: it
// appends r only if a reservation of one record would be granted now
// without waiting, and fails with errNoRoom otherwise. A dead or closed
// journal fails it with its error, as reserve would.
func (j *journal) tryAppendGen(r layout.Record) (uint64, uint64, error) {
	if seq, gen, ok := j.appendFast(r, true); ok {
		return seq, gen, nil
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	seq, err := j.appendLocked(r, true)
	if err != nil {
		return 0, 0, err
	}
	return seq, j.syncStart, nil
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

// setRoomLocked publishes roomLocked for appends without mu. It is
// called wherever what it depends on changes. An append that reads it
// just before such a change only takes a place in a block already open,
// which no reservation counts as room.
func (j *journal) setRoomLocked() { j.roomOK.Store(j.roomLocked() == nil) }

// appendFast places r in the open block without mu (see journal), if the
// region is mapped, the open block has a free position and, for a record
// with no room reserved (unreserved), the ring has room. ok false leaves
// the append to appendLocked. The sync generation is read before the
// place is taken: a sync that had started by then had sealed the block
// before, so it does not cover the record.
func (j *journal) appendFast(r layout.Record, unreserved bool) (seq, gen uint64, ok bool) {
	if !j.mapped {
		return 0, 0, false
	}
	for {
		if unreserved && !j.roomOK.Load() {
			return 0, 0, false
		}
		gen = j.syncStartA.Load()
		p := j.pos.Load()
		if n := p % posBlock; p&posFlags != 0 || n == 0 || n == layout.RecordsPerBlock {
			return 0, 0, false
		}
		if j.pos.CompareAndSwap(p, p+1) {
			seq = p + 1
			break
		}
	}
	if h := tracePlaced.Load(); h != nil {
		(*h)(seq)
	}
	lsn, n := splitPos(seq)
	e := &j.blk[lsn%blockRing]
	_, err := j.copyRecord(seq, e.crc.Load(), r)
	if err != nil || n == prepareAt {
		// Only once the copy counts as done: a sync or an open may wait
		// for it under mu.
		j.mu.Lock()
		if err != nil {
			j.failLocked(fmt.Errorf("%w: journal write failed: %w", ErrFailed, err))
		}
		if n == prepareAt {
			j.askPrepareLocked(lsn + 1)
		}
		j.mu.Unlock()
	}
	return seq, gen, true
}

// copyRecord writes record r, with sequence number seq (its block and
// place), its CRC continuing from seed, into the journal region and
// counts the copy done; it returns the record's CRC. On a mapped region
// only the record's bytes are copied; otherwise the open block, as
// openBuf holds it, is written (appends then take mu one at a time). A
// failure marks seq and every later record missed (badFrom), before the
// copy counts as done, so that no sync vouches for it; the caller makes
// the journal dead.
func (j *journal) copyRecord(seq uint64, seed uint32, r layout.Record) (uint32, error) {
	lsn, n := splitPos(seq)
	i := n - 1
	var c uint32
	var err error
	if j.mapped {
		var o [layout.RecordSize]byte
		c = layout.EncodeRecord(o[:], seed, r)
		err = j.reg.Update(o[:], j.g.JournalOffset(lsn)+int64(layout.RecordOffset(i)), 0, layout.RecordSize)
	} else {
		c = layout.EncodeJournalRecord(j.openBuf, i, seed, r)
		err = j.reg.Update(j.openBuf, j.g.JournalOffset(lsn), layout.RecordOffset(i), layout.RecordOffset(i+1))
	}
	if err != nil {
		j.lowerBadFrom(seq)
	}
	j.blk[lsn%blockRing].done.Add(1)
	return c, err
}

func (j *journal) lowerBadFrom(seq uint64) {
	for {
		b := j.badFrom.Load()
		if seq >= b || j.badFrom.CompareAndSwap(b, seq) {
			return
		}
	}
}

// askPrepareLocked asks for block lsn to be prepared: by the first
// writer to finish its write (prepareAhead), else by the journal
// goroutine.
func (j *journal) askPrepareLocked(lsn uint64) {
	j.prepWant = max(j.prepWant, lsn) // a copy that finished late must not undo a later ask
	j.prepAsk.Store(true)
	j.cond.Broadcast()
}

// appendLocked appends r with mu held: it opens the next block when the
// open one is full or sealed, and places r itself where it has room (a
// region that is not mapped, a chained block, or an appendFast that lost
// its place to a block being left). It may wait, with mu released, for
// the preparation of the block it would open; an append with no room
// reserved (unreserved) then looks at the room again, and fails with
// roomLocked's error if there is none.
func (j *journal) appendLocked(r layout.Record, unreserved bool) (uint64, error) {
	if h := traceLocked.Load(); h != nil {
		(*h)()
	}
	for {
		j.waitPreparedLocked()
		if unreserved {
			if err := j.roomLocked(); err != nil {
				return 0, err
			}
		}
		p := j.pos.Load()
		if j.err != nil || j.closed || p&posStopped != 0 {
			return refusedSeq, nil
		}
		lsn, n := splitPos(p)
		switch {
		case n == layout.RecordsPerBlock:
			j.sealLocked()
			continue // the next block may be under preparation
		case n == 0:
			return j.openLocked(lsn, r), nil
		}
		if !j.pos.CompareAndSwap(p, p+1) {
			continue // a writer without mu took the place
		}
		seq := (p &^ posFlags) + 1
		chained := p&posChained != 0
		seed := j.blk[lsn%blockRing].crc.Load()
		if chained {
			seed = j.chain
		}
		c, err := j.copyRecord(seq, seed, r)
		if chained {
			j.chain = c
		}
		if err != nil {
			j.failLocked(fmt.Errorf("%w: journal write failed: %w", ErrFailed, err))
		}
		if j.mapped && n+1 == prepareAt {
			j.askPrepareLocked(lsn + 1)
		}
		return seq, nil
	}
}

// openLocked opens block lsn with r as its first record: header and
// record are written (a copy into a prepared page, else the whole block),
// and only then is the block published in pos for other appends.
func (j *journal) openLocked(lsn uint64, r layout.Record) uint64 {
	seq := lsn*posBlock + 1
	if lsn-j.tail >= j.capacity() {
		j.lowerBadFrom(seq)
		j.failLocked(fmt.Errorf("%w: journal ring overflow at block %d (tail %d)", ErrFailed, lsn, j.tail))
		return refusedSeq
	}
	e := &j.blk[lsn%blockRing]
	for e.lsn1.Load() != 0 && e.done.Load() < e.final.Load() {
		// The entry's block, blockRing blocks back, still has a copy
		// under way (a writer that lost its processor): rare and short.
		runtime.Gosched()
	}
	if j.chained && j.openAlone {
		// The first chained block after ones of records checked alone:
		// replay does not go past a hole into a chained block, so no
		// record may take its place in this one (and be acknowledged)
		// while one placed before it is still being copied. Copiers
		// take no lock before they count their copy done.
		j.waitCopied(lsn)
	}
	clear(j.openBuf)
	hc := layout.EncodeJournalHeader(j.openBuf, j.uuid, layout.JournalHeader{LSN: lsn, Incarnation: j.inc, PrevCount: j.prevCount, Alone: !j.chained})
	j.chain = layout.EncodeJournalRecord(j.openBuf, 0, hc, r)
	from, to := 0, layout.BlockSize
	if j.prepEnd == lsn+1 {
		// A prepared block holds the zeros already, mapped: copy the
		// rest.
		to = layout.RecordOffset(1)
		j.prepOpens++
	}
	e.final.Store(0)
	e.done.Store(0)
	e.crc.Store(hc)
	e.lsn1.Store(lsn + 1)
	j.blocks++
	if err := j.reg.Update(j.openBuf, j.g.JournalOffset(lsn), from, to); err != nil {
		e.final.Store(1)
		e.done.Store(1)
		j.lowerBadFrom(seq)
		j.failLocked(fmt.Errorf("%w: journal write failed: %w", ErrFailed, err))
		return refusedSeq
	}
	e.done.Store(1)
	j.openAlone = !j.chained
	if j.chained {
		j.pos.Store(seq | posChained)
	} else {
		j.pos.Store(seq)
	}
	j.setRoomLocked()
	if j.halfUsedLocked() {
		j.kick()
	}
	return seq
}

// setChained chooses the kind of the blocks opened from now on: chained
// records (on) or records checked alone. Ordered write-back chains them:
// its writes take the whole slot table's lock (blockcache/doc.go), so
// nothing runs side by side anyway, and a chained log keeps the journal
// a prefix after a power cut, across flush epochs (a record of a later
// epoch never replays without every earlier one: docs/design.md §2.7).
// The open block keeps its kind.
func (j *journal) setChained(on bool) {
	j.mu.Lock()
	j.chained = on
	j.mu.Unlock()
}

// chainedNow reports whether every record appended from now on goes into
// a chained block: the setting is on and the open block is chained, or
// none is open (the next opens chained). If not, and the setting is on,
// it asks for a sync, which ends the open block of records checked
// alone, without waiting for it. Ordered write-back comes into force
// only once this holds (Cache.maybeResumeLocked): a block of records
// checked alone that took writes of two flush epochs could replay a
// later one's without an earlier one's after a power cut.
func (j *journal) chainedNow() bool {
	j.mu.Lock()
	defer j.mu.Unlock()
	p := j.pos.Load()
	_, n := splitPos(p)
	if !j.chained {
		return false
	}
	if p&posChained != 0 || n == 0 || p&posStopped != 0 {
		return true
	}
	if j.syncNeed <= j.syncStart {
		j.syncNeed = j.syncStart + 1
		j.syncNeedA.Store(j.syncNeed)
		j.cond.Broadcast()
	}
	return false
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
//
// The claim is raised before the look at the sync state, and a sync
// asks (syncNeedA) before it looks at the claims, so one of the two
// sees the other: either the rewrite declines or the sync waits for it.
func (j *journal) appendInPlace(gen uint64, r layout.Record) (seq uint64, claimed bool, err error) {
	j.inPlace.Add(1)
	if j.syncStartA.Load() != gen || j.syncNeedA.Load() > gen || !j.roomOK.Load() {
		j.endInPlace()
		return 0, false, nil
	}
	if seq, _, ok := j.appendFast(r, false); ok {
		return seq, true, j.appended(seq)
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	seq, err = j.appendLocked(r, true)
	if err != nil {
		j.inPlace.Add(-1) // mu is held: the journal goroutine is not waiting on it unawares
		j.cond.Broadcast()
		return 0, false, nil
	}
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
// it, lets the caller's checks (room, sync generation) see the state the
// append will.
func (j *journal) waitPreparedLocked() {
	for j.preparing != 0 && j.opensLocked(j.preparing) && j.err == nil && !j.closed {
		j.cond.Wait()
	}
}

// opensLocked reports whether the next append may open block lsn: the
// open block is lsn and has no record yet, or is full and lsn follows it.
func (j *journal) opensLocked(lsn uint64) bool {
	open, n := j.openLSNLocked()
	return (n == 0 && lsn == open) || (n == layout.RecordsPerBlock && lsn == open+1)
}

// openedLocked reports whether block lsn has records already (it is the
// open block, with some, or an earlier one).
func (j *journal) openedLocked(lsn uint64) bool {
	open, n := j.openLSNLocked()
	return lsn < open || (lsn == open && n > 0)
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

// sealLocked ends the open block, if it has records: later records go
// to the next one, which is not opened until one comes. It returns the
// block after the last one with records (end), and the sequence number
// after which records go to later blocks.
func (j *journal) sealLocked() (end, covered uint64) {
	for {
		p := j.pos.Load()
		lsn, n := splitPos(p)
		switch {
		case n == 0:
			return lsn, p &^ posFlags
		case p&posStopped != 0:
			// Frozen: the block was left when the journal stopped
			// (stopLocked).
			return lsn + 1, p &^ posFlags
		}
		next := (lsn + 1) * posBlock
		if j.pos.CompareAndSwap(p, next) {
			j.leftLocked(lsn, n)
			j.setRoomLocked()
			return lsn + 1, next
		}
	}
}

// leftLocked records that block lsn, with n records placed, takes no more.
func (j *journal) leftLocked(lsn uint64, n int) {
	j.blk[lsn%blockRing].final.Store(uint32(n))
	j.prevCount = n
	j.sealedRecs += uint64(n)
}

// stopLocked freezes pos: no record takes a place any more, and the
// records placed are the last (their copies may still be under way:
// waitCopied).
func (j *journal) stopLocked() {
	for {
		p := j.pos.Load()
		if p&posStopped != 0 {
			return
		}
		if j.pos.CompareAndSwap(p, p|posStopped) {
			if lsn, n := splitPos(p); n > 0 {
				j.leftLocked(lsn, n)
			}
			j.lowerBadFrom((p &^ posFlags) + 1)
			j.setRoomLocked()
			return
		}
	}
}

// waitCopied waits until every record placed in the blocks before end
// is copied into the region. Those blocks are left (sealed, full or
// stopped), so no record takes a place in them any more; a copy is a
// memory copy, so this waits at most for a writer to get a processor.
func (j *journal) waitCopied(end uint64) {
	for b := j.copiedLow.Load(); b < end; b++ {
		e := &j.blk[b%blockRing]
		for e.lsn1.Load() == b+1 && (e.final.Load() == 0 || e.done.Load() < e.final.Load()) {
			runtime.Gosched()
		}
	}
	for {
		low := j.copiedLow.Load()
		if low >= end || j.copiedLow.CompareAndSwap(low, end) {
			return
		}
	}
}

// appended reports whether record seq made it into the journal region
// (the cache device's page cache: it survives a process crash): nil if it
// did, else the error that kept it out. append writes the record itself,
// so there is nothing to wait for.
func (j *journal) appended(seq uint64) error {
	if seq < j.badFrom.Load() {
		return nil
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.appendedLocked(seq)
}

func (j *journal) appendedLocked(seq uint64) error {
	if seq < j.badFrom.Load() {
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
	j.syncNeedA.Store(j.syncNeed)
	if here && !j.syncing && j.inPlace.Load() == 0 && j.err == nil && !j.closed {
		end, covered := j.beginSyncLocked()
		j.mu.Unlock()
		j.waitCopied(end)
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
func (j *journal) syncGen() uint64 { return j.syncStartA.Load() }

// lastSeq is the sequence number of the newest record appended, or a
// number after it and before any later one.
func (j *journal) lastSeq() uint64 { return j.pos.Load() &^ posFlags }

// durable is a sequence number through which every record is durable.
func (j *journal) durable() uint64 { return j.syncedA.Load() }

// setTail records that a checkpoint made every block before lsn unneeded.
func (j *journal) setTail(lsn uint64) {
	j.mu.Lock()
	j.tail = lsn
	j.setRoomLocked()
	j.cond.Broadcast()
	j.mu.Unlock()
}

// checkpointLSN is the block from which replay must start for a checkpoint
// whose pages are copied after this call.
func (j *journal) checkpointLSN() uint64 {
	j.mu.Lock()
	defer j.mu.Unlock()
	open, _ := j.openLSNLocked()
	return open
}

// journalStats are the journal's counters, read together.
type journalStats struct {
	records  uint64 // records appended
	syncs    uint64 // syncs done
	blocks   uint64 // blocks started
	prepared uint64 // of those, opened into a page prepared ahead
	used     uint64 // blocks from the tail through the open one
}

func (j *journal) stats() journalStats {
	j.mu.Lock()
	defer j.mu.Unlock()
	open, n := j.openLSNLocked()
	if j.pos.Load()&posStopped != 0 {
		n = 0 // counted in sealedRecs when it stopped
	}
	return journalStats{records: j.sealedRecs + uint64(n), syncs: j.syncDone, blocks: j.blocks, prepared: j.prepOpens, used: open - j.tail + 1}
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
	j.setRoomLocked()
	j.cond.Broadcast()
	j.mu.Unlock()
	<-j.done
}

// failLocked makes the journal dead; every waiter gets err.
func (j *journal) failLocked(err error) {
	if j.err == nil {
		j.err = err
	}
	j.stopLocked()
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
			// No append may touch the region any more: freeze pos and
			// let the copies under way finish before it is unmapped.
			j.closed = true
			j.stopLocked()
			end, _ := j.sealLocked()
			j.waitCopied(end)
			for j.preparing != 0 {
				j.cond.Wait() // a writer's preparation still stores into the mapping
			}
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
// record placed before it started.
func (j *journal) startSyncLocked() {
	end, covered := j.beginSyncLocked()
	go func() {
		j.waitCopied(end)
		err := j.dev.Sync()
		j.mu.Lock()
		defer j.mu.Unlock()
		j.endSyncLocked(covered, err)
	}()
}

// beginSyncLocked marks a sync started, sealing the open block, and
// returns the block after the last one with records and the sequence
// number through which the sync covers records. The caller waits for their copies
// (waitCopied), syncs the device without holding mu, then calls
// endSyncLocked. No in-place rewrite may be in flight. The block is
// sealed before the generation moves on (see appendFast).
func (j *journal) beginSyncLocked() (end, covered uint64) {
	end, covered = j.sealLocked()
	j.syncStart++
	j.syncStartA.Store(j.syncStart)
	j.syncing = true
	return end, covered
}

// endSyncLocked ends the sync begun by beginSyncLocked, which the device's
// Sync answered with err.
func (j *journal) endSyncLocked(covered uint64, err error) {
	j.syncing = false
	if err == nil && j.badFrom.Load() <= covered && j.err == nil {
		// A record it would cover missed the region (its writer is
		// making the journal dead): the sync does not vouch for it.
		err = errors.New("a journal record it covers was not written")
	}
	if err != nil && j.err != nil {
		j.failLocked(j.err)
		return
	}
	if err != nil {
		// A failed sync of the cache device is fatal: the page cache may
		// have dropped the data it could not write (fsyncgate).
		j.failLocked(fmt.Errorf("%w: sync of the cache device failed: %w", ErrFailed, err))
		return
	}
	j.syncDone++
	if covered > j.syncedA.Load() {
		j.syncedA.Store(covered)
	}
	j.cond.Broadcast()
}
