package blockcache

import "math/bits"

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
// It costs 8+4+1+4 bytes per slot, 8 bytes per slot of index (two uint32
// buckets), 1 byte per slot of fresh list and a little over 1 bit per slot
// of free set: 26.1 bytes in all.
// All fields are guarded by Cache.mu.
type slotTable struct {
	lba   []uint64
	crc   []uint32
	flags []uint8
	since []uint32 // age tick at which the slot became dirty
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
}

func newSlotTable(n uint64) slotTable {
	return slotTable{
		lba:   make([]uint64, n),
		crc:   make([]uint32, n),
		flags: make([]uint8, n),
		since: make([]uint32, n),
		index: newLBAIndex(n),
		free:  newFreeSet(n),
		fresh: make([]uint32, 0, max(n/4, 1)),
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

// mapSlot makes s hold lba (unmapping whatever held lba before is the
// caller's job) and returns nothing.
func (t *slotTable) mapSlot(s uint32, lba uint64, crc uint32, dirty bool, tick uint32) {
	t.lba[s], t.crc[s] = lba, crc
	t.flags[s] = fValid
	t.valid++
	if dirty {
		t.flags[s] |= fDirty
		t.since[s] = tick
		t.dirty++
	}
	t.index.put(lba, s, t.lba)
}

// unmap removes s from the index; the slot keeps its pin.
func (t *slotTable) unmap(s uint32) {
	f := t.flags[s]
	if f&fValid == 0 {
		return
	}
	t.index.del(t.lba[s], s, t.lba)
	if f&fDirty != 0 {
		t.dirty--
	}
	if f&fLost != 0 {
		t.lost--
	}
	t.valid--
	t.flags[s] = f & fPinned
}

func (t *slotTable) setClean(s uint32) {
	if t.flags[s]&fDirty != 0 {
		t.flags[s] &^= fDirty
		t.dirty--
	}
}

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
