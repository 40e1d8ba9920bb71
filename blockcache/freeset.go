package blockcache

import "math/bits"

// freeSet holds the free slots as a two-level bitmap and hands them out
// next-fit: each allocation takes the lowest free slot at or above the one
// after the previous allocation, wrapping around at the end. Consecutive
// writes therefore land in neighbouring slots wherever free space allows,
// so the cache file's dirty pages form long runs that the kernel writes
// back in few, large requests (a stack of recently freed slots scattered
// them: one request per page). It costs 1 bit per slot plus 1 bit per 64
// slots.
type freeSet struct {
	words []uint64 // bit s%64 of words[s/64] is set: slot s is free
	sum   []uint64 // bit w%64 of sum[w/64] is set: words[w] != 0
	n     int      // free slots
	next  uint32   // where the next allocation starts looking
	slots uint32
}

func newFreeSet(n uint64) freeSet {
	nw := (n + 63) / 64
	return freeSet{words: make([]uint64, nw), sum: make([]uint64, (nw+63)/64), slots: uint32(n)}
}

func (f *freeSet) len() int { return f.n }

func (f *freeSet) has(s uint32) bool { return f.words[s/64]&(1<<(s%64)) != 0 }

// add marks s free; adding a free slot again changes nothing.
func (f *freeSet) add(s uint32) {
	w := s / 64
	if f.words[w]&(1<<(s%64)) != 0 {
		return
	}
	f.words[w] |= 1 << (s % 64)
	f.sum[w/64] |= 1 << (w % 64)
	f.n++
}

// take removes and returns the next free slot (see freeSet); false when
// none is free.
func (f *freeSet) take() (uint32, bool) {
	if f.n == 0 {
		return 0, false
	}
	start := f.next
	if start >= f.slots {
		start = 0
	}
	s, ok := f.findFrom(start)
	if !ok {
		s, ok = f.findFrom(0)
	}
	if !ok {
		return 0, false // unreachable while n counts the bits
	}
	w := s / 64
	f.words[w] &^= 1 << (s % 64)
	if f.words[w] == 0 {
		f.sum[w/64] &^= 1 << (w % 64)
	}
	f.n--
	f.next = s + 1
	return s, true
}

// findFrom returns the lowest free slot at or above s.
func (f *freeSet) findFrom(s uint32) (uint32, bool) {
	w := s / 64
	if m := f.words[w] &^ (1<<(s%64) - 1); m != 0 {
		return w*64 + uint32(bits.TrailingZeros64(m)), true
	}
	// The next non-empty word after w, through the summary.
	w++
	for sw := int(w / 64); sw < len(f.sum); sw++ {
		m := f.sum[sw]
		if sw == int(w/64) {
			m &^= 1<<(w%64) - 1
		}
		if m != 0 {
			ww := uint32(sw)*64 + uint32(bits.TrailingZeros64(m))
			return ww*64 + uint32(bits.TrailingZeros64(f.words[ww])), true
		}
	}
	return 0, false
}

// each calls fn for every free slot, in order.
func (f *freeSet) each(fn func(s uint32)) {
	for w, m := range f.words {
		for m != 0 {
			fn(uint32(w)*64 + uint32(bits.TrailingZeros64(m)))
			m &= m - 1
		}
	}
}

// takeRange removes every free slot in [lo, hi) and returns them in
// ascending order, leaving where the next allocation starts alone.
func (f *freeSet) takeRange(lo, hi uint32) []uint32 {
	var out []uint32
	hi = min(hi, f.slots)
	for s := lo; s < hi; {
		w := s / 64
		m := f.words[w] &^ (1<<(s%64) - 1)
		if end := (w + 1) * 64; hi < end {
			m &= 1<<(hi%64) - 1
		}
		for b := m; b != 0; b &= b - 1 {
			out = append(out, w*64+uint32(bits.TrailingZeros64(b)))
		}
		if m != 0 {
			f.words[w] &^= m
			f.n -= bits.OnesCount64(m)
			if f.words[w] == 0 {
				f.sum[w/64] &^= 1 << (w % 64)
			}
		}
		s = (w + 1) * 64
	}
	return out
}
