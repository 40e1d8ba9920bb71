package blockcache

import (
	"math/bits"
	"slices"
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
// uint32 buckets), 1 byte per slot of fresh list and a little over 1 bit
// per slot of free set: 30.1 bytes in all, plus a map entry per older
// version and per flush epoch with dirty blocks.
// All fields are guarded by Cache.mu.
type slotTable struct {
	lba   []uint64
	crc   []uint32
	flags []uint8
	since []uint32 // age tick at which the slot became dirty
	epoch []uint32 // flush epoch of the slot's version (see epochs)
	index lbaIndex
	free  freeSet
	dirty int
	valid int
	lost  int // valid slots marked fLost
	hand  int // CLOCK hand

	// fresh lists the slots marked fFresh: dirty slots whose MAP record
	// was appended while the journal's sync generation was freshGen (no
	// sync covers it yet), so they may be rewritten in place until the
	// next sync starts. The marks of an older generation are cleared
	// lazily, when the first slot of a newer one is marked. At most
	// cap(fresh) slots are marked per generation.
	fresh    []uint32
	freshGen uint64

	// older holds the slots that keep an older dirty version of their
	// block for ordered write-back (ordered.go): valid and dirty, but not
	// in the index, which points at the newest version. olderLBA counts
	// them per block, the lost ones excepted.
	older    map[uint32]struct{}
	olderLBA map[uint64]int
	// epochs counts the dirty versions, lost ones excepted, per flush
	// epoch; epochQ lists those epochs in ascending order from epochHead
	// (empty ones are dropped from the front lazily).
	epochs    map[uint32]int
	epochQ    []epochStart
	epochHead int
	// startOf returns when an epoch began (unix ns, 0 if unknown).
	startOf func(uint32) int64
}

func newSlotTable(n uint64) slotTable {
	return slotTable{
		lba:   make([]uint64, n),
		crc:   make([]uint32, n),
		flags: make([]uint8, n),
		since: make([]uint32, n),
		epoch: make([]uint32, n),
		index: newLBAIndex(n),
		older: map[uint32]struct{}{}, olderLBA: map[uint64]int{},
		epochs: map[uint32]int{},
		free:   newFreeSet(n),
		fresh:  make([]uint32, 0, max(n/4, 1)),
	}
}

// markFresh marks s, just mapped by a record appended in sync generation
// gen, as rewritable in place.
func (t *slotTable) markFresh(s uint32, gen uint64) {
	if gen > t.freshGen {
		for _, x := range t.fresh {
			t.flags[x] &^= fFresh
		}
		t.fresh, t.freshGen = t.fresh[:0], gen
	}
	if gen == t.freshGen && len(t.fresh) < cap(t.fresh) {
		t.flags[s] |= fFresh
		t.fresh = append(t.fresh, s)
	}
}

func (t *slotTable) n() int { return len(t.lba) }

// lookup returns the slot holding lba.
func (t *slotTable) lookup(lba uint64) (uint32, bool) {
	return t.index.get(lba, t.lba)
}

// mapSlot makes s hold lba, written in flush epoch epoch (unmapping
// whatever held lba before is the caller's job).
func (t *slotTable) mapSlot(s uint32, lba uint64, crc uint32, dirty bool, tick, epoch uint32) {
	t.lba[s], t.crc[s] = lba, crc
	t.flags[s] = fValid
	t.epoch[s] = epoch
	t.valid++
	if dirty {
		t.flags[s] |= fDirty
		t.since[s] = tick
		t.dirty++
		t.countEpoch(epoch, 1)
	}
	t.index.put(lba, s, t.lba)
}

// unmap removes s from the index (or from the older versions); the slot
// keeps its pin.
func (t *slotTable) unmap(s uint32) {
	f := t.flags[s]
	if f&fValid == 0 {
		return
	}
	if t.isOlder(s) {
		delete(t.older, s)
		if f&fLost == 0 {
			t.countOlder(t.lba[s], -1)
		}
	} else {
		t.index.del(t.lba[s], s, t.lba)
	}
	if f&fDirty != 0 {
		t.dirty--
		if f&fLost == 0 {
			t.countEpoch(t.epoch[s], -1)
		}
	}
	if f&fLost != 0 {
		t.lost--
	}
	t.valid--
	t.flags[s] = f & fPinned
}

func (t *slotTable) setClean(s uint32) {
	if f := t.flags[s]; f&fDirty != 0 {
		t.flags[s] &^= fDirty
		t.dirty--
		if f&fLost == 0 {
			t.countEpoch(t.epoch[s], -1)
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
	t.index.del(t.lba[s], s, t.lba)
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

// countEpoch adds d to the dirty versions of epoch e. Versions are added
// in ascending epoch order (records are appended under Cache.mu with the
// epoch read under it), except by recovery, which rebuilds the queue.
func (t *slotTable) countEpoch(e uint32, d int) {
	n := t.epochs[e] + d
	switch {
	case n > 0 && d > 0 && n == d:
		t.epochs[e] = n
		i := len(t.epochQ)
		for i > t.epochHead && epochBefore(e, t.epochQ[i-1].e) {
			i-- // only recovery adds out of order
		}
		var at int64
		if t.startOf != nil {
			at = t.startOf(e)
		}
		t.epochQ = slices.Insert(t.epochQ, i, epochStart{e: e, at: at})
		if live := len(t.epochQ) - t.epochHead; live > 2*len(t.epochs)+64 {
			// Epochs emptied behind the oldest one stay queued until it
			// is written back: drop them while it is not.
			q := t.epochQ[:0]
			for _, x := range t.epochQ[t.epochHead:] {
				if t.epochs[x.e] > 0 && (len(q) == 0 || q[len(q)-1].e != x.e) {
					q = append(q, x)
				}
			}
			t.epochQ, t.epochHead = q, 0
		}
	case n > 0:
		t.epochs[e] = n
	default:
		delete(t.epochs, e)
	}
}

// oldestEpoch returns the oldest epoch with dirty versions (lost ones
// excepted).
func (t *slotTable) oldestEpoch() (uint32, bool) {
	s, ok := t.oldestEpochStart()
	return s.e, ok
}

// oldestEpochStart is oldestEpoch with the time the epoch began.
func (t *slotTable) oldestEpochStart() (epochStart, bool) {
	for t.epochHead < len(t.epochQ) {
		s := t.epochQ[t.epochHead]
		if t.epochs[s.e] > 0 {
			// Drop the dead front once it is half the queue: a cache
			// that is never wholly clean would otherwise keep an entry
			// for every epoch since Open.
			if t.epochHead >= 64 && 2*t.epochHead >= len(t.epochQ) {
				t.epochQ = append(t.epochQ[:0], t.epochQ[t.epochHead:]...)
				t.epochHead = 0
			}
			return s, true
		}
		t.epochHead++
	}
	t.epochQ, t.epochHead = t.epochQ[:0], 0
	return epochStart{}, false
}

// markLost marks valid slot s lost; it reports false if it was already.
// A lost version no longer holds back write-back: it is never written.
func (t *slotTable) markLost(s uint32) bool {
	f := t.flags[s]
	if f&fLost != 0 {
		return false
	}
	t.flags[s] |= fLost
	t.lost++
	if f&fDirty != 0 {
		t.countEpoch(t.epoch[s], -1)
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
// table, so a bucket costs 4 bytes. It has twice as many buckets as slots
// (load factor at most 1/2), whatever the slot count.
type lbaIndex struct {
	b []uint32
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
			return
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
