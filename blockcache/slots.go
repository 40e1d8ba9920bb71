package blockcache

import (
	"math/bits"
	"slices"
	"sync"
	"sync/atomic"
)

// Slot flags, one byte per slot.
const (
	fValid   uint8 = 1 << iota // slot holds block lba[s] and the index points here
	fDirty                     // the backing device does not hold this version
	fPinned                    // a destage of this slot is in flight
	fRef                       // CLOCK reference bit
	fLost                      // dirty, and its data fails its checksum: reads fail, write-back skips it (see corrupt.go)
	fFreeOK                    // its unmapping record is durable; free when unpinned
	fFresh                     // mapped since the last journal sync began (see slotTable.fresh)
	fWriting                   // being rewritten in place: neither destaged nor cleaned
)

// slotTable is the in-memory state of every cache slot plus the LBA index.
// It costs 8+4+1+4+4 bytes per slot, 8 bytes per slot of index (two
// uint32 buckets), 2 bytes per slot of fresh lists (half of each shard's
// share of the slots) and a little over 1 bit per slot of free set: 31.2
// bytes in all (TestMemoryPerSlot), plus a map entry per older version
// and per flush epoch with dirty blocks.
//
// The blocks are split into shards by LBA hash (shardOf), each with its
// own lock, index, counters, fresh list, epoch counts and pending slots,
// so writes to blocks of different shards change the table in parallel.
// A slot's entries belong to the shard of the block it holds; a free
// slot's to whoever took it from the free set or the spare run. Cache.mu
// locks every shard (the whole table); the write and read paths lock one
// (Cache.lockLBA). The free set and the fields outside the shards are
// changed only under the whole table's lock, but for the free set, which
// a write also refills the spare run from under freeMu.
type slotTable struct {
	lba    []uint64
	crc    []uint32
	flags  []uint8
	since  []uint32 // age tick at which the slot became dirty
	epoch  []uint32 // flush epoch of the slot's version (see epochs)
	shards []tableShard
	mask   uint64 // len(shards)-1
	freeMu sync.Mutex
	free   freeSet
	// run holds the spare slots: a batch of free slots taken from the free
	// set in next-fit order, which writes of every shard take one at a
	// time with an atomic add (Cache.takeSpare), so consecutive writes
	// land in neighbouring slots as they did from one free set. Its
	// untaken slots count as free. Refilled under freeMu, emptied back
	// into the free set under the whole table's lock.
	run        atomic.Pointer[spareRun]
	spareBatch int
	hand       int // CLOCK hand

	// older holds the slots that keep an older dirty version of their
	// block for ordered write-back (ordered.go): valid and dirty, but not
	// in the index, which points at the newest version. olderLBA counts
	// them per block, the lost ones excepted. Only written under the
	// whole table's lock (older versions are kept only while ordering
	// is in force, when writes take it).
	older    map[uint32]struct{}
	olderLBA map[uint64]int
	// startOf returns when an epoch began (unix ns, 0 if unknown).
	startOf func(uint32) int64
}

// tableShard is the part of the table for the blocks that hash to it.
type tableShard struct {
	mu    sync.Mutex
	index lbaIndex
	dirty int
	valid int
	lost  int // valid slots marked fLost

	// fresh lists the slots marked fFresh: dirty slots whose MAP record
	// was appended while the journal's sync generation was freshGen (no
	// sync covers it yet), so they may be rewritten in place until the
	// next sync starts. The marks of an older generation are cleared
	// lazily, when the first slot of a newer one is marked. At most
	// cap(fresh) slots are marked per generation.
	fresh    []uint32
	freshGen uint64

	// epochs counts the dirty versions, lost ones excepted, per flush
	// epoch; epochQ lists those epochs in ascending order from epochHead
	// (empty ones are dropped from the front lazily).
	epochs    map[uint32]int
	epochQ    []epochStart
	epochHead int

	// pending lists the slots this shard unmapped, in record order,
	// until their records are durable (unmapLocked, releaseDurable).
	pending []pendingFree

	_ [64]byte // keep shards' locks off each other's cache lines
}

// spareRun is a batch of free slots in the order the free set handed
// them out; next counts the takes (it runs past len(slots) once the
// batch is used up).
type spareRun struct {
	slots []uint32
	next  atomic.Int64
}

// left returns the slots of r not taken yet.
func (r *spareRun) left() []uint32 {
	if r == nil {
		return nil
	}
	return r.slots[min(r.next.Load(), int64(len(r.slots))):]
}

// maxShards bounds the table's shards, and shardSlots the slots per
// shard (Options.shardSlots sets it for tests): small caches have one
// shard, which behaves as one lock. The spare run holds at most maxSpare
// free slots, and at most 1/64 of them all.
const (
	maxShards  = 64
	shardSlots = 512
	maxSpare   = 64
)

// shardCount is the number of shards for n slots, at least per slots
// each: a power of two.
func shardCount(n, per uint64) int {
	s := 1
	for s < maxShards && uint64(2*s)*per <= n {
		s *= 2
	}
	return s
}

// init makes t an empty table of n slots, in shards of at least per
// slots (0: shardSlots).
func (t *slotTable) init(n, per uint64) {
	if per == 0 {
		per = shardSlots
	}
	ns := shardCount(n, per)
	t.lba = make([]uint64, n)
	t.crc = make([]uint32, n)
	t.flags = make([]uint8, n)
	t.since = make([]uint32, n)
	t.epoch = make([]uint32, n)
	t.shards = make([]tableShard, ns)
	t.mask = uint64(ns - 1)
	t.older, t.olderLBA = map[uint32]struct{}{}, map[uint64]int{}
	t.free = newFreeSet(n)
	t.hand = 0
	t.run.Store(nil)
	t.spareBatch = int(min(max(n/64, 1), maxSpare))
	per = n / uint64(ns)
	for i := range t.shards {
		sh := &t.shards[i]
		sh.index = newLBAIndex(per)
		sh.epochs = map[uint32]int{}
		sh.fresh = make([]uint32, 0, max(per/2, 1))
	}
}

// shardOf returns the shard of block lba. It uses the hash's low bits,
// and the index its high bits.
func (t *slotTable) shardOf(lba uint64) *tableShard {
	return &t.shards[hashLBA(lba)&t.mask]
}

// shardOfSlot returns the shard of the block slot s holds.
func (t *slotTable) shardOfSlot(s uint32) *tableShard { return t.shardOf(t.lba[s]) }

// markFresh marks s, just mapped by a record appended in sync generation
// gen, as rewritable in place.
func (t *slotTable) markFresh(s uint32, gen uint64) {
	sh := t.shardOfSlot(s)
	t.newFreshGen(sh, gen)
	if gen == sh.freshGen && len(sh.fresh) < cap(sh.fresh) {
		t.flags[s] |= fFresh
		sh.fresh = append(sh.fresh, s)
	}
}

// release returns s, unmapped by a record that is durable now, to the
// free set (whole table locked); gen is the journal's sync generation.
// The fresh list of the shard of the block s held may still name s
// (marks are cleared lazily), and must not clear its mark once another
// shard has mapped it: that list is stale (a sync has begun since s was
// marked, the one that made its unmapping durable), so it is cleared
// first.
func (t *slotTable) release(s uint32, gen uint64) {
	t.newFreshGen(t.shardOfSlot(s), gen)
	t.flags[s] = 0
	t.free.add(s)
}

// newFreshGen clears shard sh's fresh marks if they are of a sync
// generation before gen, and starts gen's list.
func (t *slotTable) newFreshGen(sh *tableShard, gen uint64) {
	if gen > sh.freshGen {
		for _, x := range sh.fresh {
			t.flags[x] &^= fFresh
		}
		sh.fresh, sh.freshGen = sh.fresh[:0], gen
	}
}

func (t *slotTable) n() int { return len(t.lba) }

// sum adds up f over the shards (whole table locked): dirtyCount,
// validCount, lostCount, pendingCount and freeCount are its uses.
func (t *slotTable) sum(f func(*tableShard) int) (n int) {
	for i := range t.shards {
		n += f(&t.shards[i])
	}
	return n
}

func (t *slotTable) dirtyCount() int { return t.sum(func(sh *tableShard) int { return sh.dirty }) }
func (t *slotTable) validCount() int { return t.sum(func(sh *tableShard) int { return sh.valid }) }
func (t *slotTable) lostCount() int  { return t.sum(func(sh *tableShard) int { return sh.lost }) }

// pendingCount counts the unmapped slots waiting for a durable record.
func (t *slotTable) pendingCount() int {
	return t.sum(func(sh *tableShard) int { return len(sh.pending) })
}

// freeCount counts the free slots: the free set and the spare run's
// (whole table locked, so no write is taking one).
func (t *slotTable) freeCount() int {
	return t.free.len() + len(t.run.Load().left())
}

// returnSpares puts the spare run's slots back into the free set (whole
// table locked).
func (t *slotTable) returnSpares() {
	for _, s := range t.run.Load().left() {
		t.free.add(s)
	}
	t.run.Store(nil)
}

// lookup returns the slot holding lba.
func (t *slotTable) lookup(lba uint64) (uint32, bool) {
	return t.shardOf(lba).index.get(lba, t.lba)
}

// mapSlot makes s hold lba, written in flush epoch epoch (unmapping
// whatever held lba before is the caller's job).
func (t *slotTable) mapSlot(s uint32, lba uint64, crc uint32, dirty bool, tick, epoch uint32) {
	sh := t.shardOf(lba)
	t.lba[s], t.crc[s] = lba, crc
	t.flags[s] = fValid
	t.epoch[s] = epoch
	sh.valid++
	if dirty {
		t.flags[s] |= fDirty
		t.since[s] = tick
		sh.dirty++
		t.countEpoch(sh, epoch, 1)
	}
	sh.index.put(lba, s, t.lba)
}

// unmap removes s from the index (or from the older versions); the slot
// keeps its pin.
func (t *slotTable) unmap(s uint32) {
	f := t.flags[s]
	if f&fValid == 0 {
		return
	}
	sh := t.shardOfSlot(s)
	if t.isOlder(s) {
		delete(t.older, s)
		if f&fLost == 0 {
			t.countOlder(t.lba[s], -1)
		}
	} else {
		sh.index.del(t.lba[s], s, t.lba)
	}
	if f&fDirty != 0 {
		sh.dirty--
		if f&fLost == 0 {
			t.countEpoch(sh, t.epoch[s], -1)
		}
	}
	if f&fLost != 0 {
		sh.lost--
	}
	sh.valid--
	t.flags[s] = f & fPinned
}

func (t *slotTable) setClean(s uint32) {
	if f := t.flags[s]; f&fDirty != 0 {
		sh := t.shardOfSlot(s)
		t.flags[s] &^= fDirty
		sh.dirty--
		if f&fLost == 0 {
			t.countEpoch(sh, t.epoch[s], -1)
		}
	}
}

// isOlder reports whether s holds an older version of its block.
func (t *slotTable) isOlder(s uint32) bool {
	if len(t.older) == 0 {
		return false
	}
	_, ok := t.older[s]
	return ok
}

// makeOlder turns s, the dirty current version of its block, into an
// older version: out of the index, still valid and dirty.
func (t *slotTable) makeOlder(s uint32) {
	t.shardOfSlot(s).index.del(t.lba[s], s, t.lba)
	t.older[s] = struct{}{}
	if t.flags[s]&fLost == 0 {
		t.countOlder(t.lba[s], 1)
	}
}

func (t *slotTable) countOlder(lba uint64, d int) {
	if n := t.olderLBA[lba] + d; n > 0 {
		t.olderLBA[lba] = n
	} else {
		delete(t.olderLBA, lba)
	}
}

// countEpoch adds d to shard sh's dirty versions of epoch e. A shard's
// versions are added in ascending epoch order (its records are appended
// under its lock with the epoch read under it), except by recovery,
// which rebuilds the queues.
func (t *slotTable) countEpoch(sh *tableShard, e uint32, d int) {
	n := sh.epochs[e] + d
	switch {
	case n > 0 && d > 0 && n == d:
		sh.epochs[e] = n
		i := len(sh.epochQ)
		for i > sh.epochHead && epochBefore(e, sh.epochQ[i-1].e) {
			i-- // only recovery adds out of order
		}
		var at int64
		if t.startOf != nil {
			at = t.startOf(e)
		}
		sh.epochQ = slices.Insert(sh.epochQ, i, epochStart{e: e, at: at})
		if live := len(sh.epochQ) - sh.epochHead; live > 2*len(sh.epochs)+64 {
			// Epochs emptied behind the oldest one stay queued until it
			// is written back: drop them while it is not.
			q := sh.epochQ[:0]
			for _, x := range sh.epochQ[sh.epochHead:] {
				if sh.epochs[x.e] > 0 && (len(q) == 0 || q[len(q)-1].e != x.e) {
					q = append(q, x)
				}
			}
			sh.epochQ, sh.epochHead = q, 0
		}
	case n > 0:
		sh.epochs[e] = n
	default:
		delete(sh.epochs, e)
	}
}

// epochCounts adds up the shards' dirty versions per epoch (whole table
// locked; for tests and logs).
func (t *slotTable) epochCounts() map[uint32]int {
	m := map[uint32]int{}
	for i := range t.shards {
		for e, n := range t.shards[i].epochs {
			m[e] += n
		}
	}
	return m
}

// oldestEpoch returns the oldest epoch with dirty versions (lost ones
// excepted). Whole table locked.
func (t *slotTable) oldestEpoch() (uint32, bool) {
	s, ok := t.oldestEpochStart()
	return s.e, ok
}

// oldestEpochStart is oldestEpoch with the time the epoch began.
func (t *slotTable) oldestEpochStart() (epochStart, bool) {
	var best epochStart
	found := false
	for i := range t.shards {
		s, ok := t.shards[i].oldestEpochStart()
		if ok && (!found || epochBefore(s.e, best.e)) {
			best, found = s, true
		}
	}
	return best, found
}

func (sh *tableShard) oldestEpochStart() (epochStart, bool) {
	for sh.epochHead < len(sh.epochQ) {
		s := sh.epochQ[sh.epochHead]
		if sh.epochs[s.e] > 0 {
			// Drop the dead front once it is half the queue: a cache
			// that is never wholly clean would otherwise keep an entry
			// for every epoch since Open.
			if sh.epochHead >= 64 && 2*sh.epochHead >= len(sh.epochQ) {
				sh.epochQ = append(sh.epochQ[:0], sh.epochQ[sh.epochHead:]...)
				sh.epochHead = 0
			}
			return s, true
		}
		sh.epochHead++
	}
	sh.epochQ, sh.epochHead = sh.epochQ[:0], 0
	return epochStart{}, false
}

// markLost marks valid slot s lost; it reports false if it was already.
// A lost version no longer holds back write-back: it is never written.
func (t *slotTable) markLost(s uint32) bool {
	f := t.flags[s]
	if f&fLost != 0 {
		return false
	}
	sh := t.shardOfSlot(s)
	t.flags[s] |= fLost
	sh.lost++
	if f&fDirty != 0 {
		t.countEpoch(sh, t.epoch[s], -1)
	}
	if t.isOlder(s) {
		t.countOlder(t.lba[s], -1)
	}
	return true
}

// epochBefore reports whether epoch a comes before b (epochs wrap).
func epochBefore(a, b uint32) bool { return int32(a-b) < 0 }

// lbaIndex is an open-addressing hash table from LBA to slot with linear
// probing. Buckets hold slot+1 (0 = empty); the key is read from the slot
// table, so a bucket costs 4 bytes. A shard's index starts with twice as
// many buckets as the shard's share of the slots and doubles when it is
// half full (a shard whose blocks take more than their share of the
// cache), so the load factor stays at most 1/2.
type lbaIndex struct {
	b []uint32
	n int // entries
}

func newLBAIndex(slots uint64) lbaIndex {
	return lbaIndex{b: make([]uint32, max(2*slots, 8))}
}

// home is the bucket an LBA hashes to (fast range reduction, any size).
func (x *lbaIndex) home(lba uint64) uint64 {
	hi, _ := bits.Mul64(hashLBA(lba), uint64(len(x.b)))
	return hi
}

func (x *lbaIndex) next(i uint64) uint64 {
	if i++; i == uint64(len(x.b)) {
		return 0
	}
	return i
}

func hashLBA(lba uint64) uint64 {
	lba ^= lba >> 33
	lba *= 0xff51afd7ed558ccd
	lba ^= lba >> 33
	return lba
}

func (x *lbaIndex) get(lba uint64, keys []uint64) (uint32, bool) {
	for i := x.home(lba); ; i = x.next(i) {
		v := x.b[i]
		if v == 0 {
			return 0, false
		}
		if keys[v-1] == lba {
			return v - 1, true
		}
	}
}

func (x *lbaIndex) put(lba uint64, s uint32, keys []uint64) {
	for i := x.home(lba); ; i = x.next(i) {
		v := x.b[i]
		if v == 0 || keys[v-1] == lba {
			x.b[i] = s + 1
			if v == 0 {
				x.n++
				if 2*x.n > len(x.b) {
					x.grow(keys)
				}
			}
			return
		}
	}
}

// grow doubles the buckets and puts every entry again.
func (x *lbaIndex) grow(keys []uint64) {
	old := x.b
	x.b, x.n = make([]uint32, 2*len(old)), 0
	for _, v := range old {
		if v != 0 {
			x.put(keys[v-1], v-1, keys)
		}
	}
}

// del removes lba if it maps to s, with backward-shift deletion.
func (x *lbaIndex) del(lba uint64, s uint32, keys []uint64) {
	i := x.home(lba)
	for {
		v := x.b[i]
		if v == 0 {
			return
		}
		if keys[v-1] == lba {
			if v-1 != s {
				return
			}
			break
		}
		i = x.next(i)
	}
	x.n--
	for j := x.next(i); ; j = x.next(j) {
		v := x.b[j]
		if v == 0 {
			break
		}
		h := x.home(keys[v-1])
		// Move v back to i if its home h is not in the cyclic range (i, j].
		if (j > i && (h <= i || h > j)) || (j < i && h <= i && h > j) {
			x.b[i] = v
			i = j
		}
	}
	x.b[i] = 0
}
