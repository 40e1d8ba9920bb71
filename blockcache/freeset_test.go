package blockcache

import (
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestFreeSetNextFit: slots come out in ascending order from where the
// last allocation stopped, wrapping around, so consecutive allocations are
// neighbours wherever the free space allows.
func TestFreeSetNextFit(t *testing.T) {
	f := newFreeSet(200)
	for s := uint32(0); s < 200; s++ {
		f.add(s)
	}
	for want := uint32(0); want < 150; want++ {
		s, ok := f.take()
		require.True(t, ok)
		require.Equal(t, want, s)
	}
	f.add(3)
	f.add(70)
	f.add(70) // a second add changes nothing
	require.Equal(t, 52, f.len())
	for want := uint32(150); want < 200; want++ {
		s, _ := f.take()
		require.Equal(t, want, s, "past the cursor first")
	}
	s, _ := f.take()
	require.Equal(t, uint32(3), s, "then wrap around")
	s, _ = f.take()
	require.Equal(t, uint32(70), s)
	_, ok := f.take()
	require.False(t, ok)
	require.Equal(t, 0, f.len())
}

// TestFreeSetModel: random adds and takes against a map, on sizes around
// the bitmap's word and summary boundaries.
func TestFreeSetModel(t *testing.T) {
	for _, n := range []uint64{1, 63, 64, 65, 4095, 4096, 4097, 10000} {
		rng := rand.New(rand.NewPCG(n, 7))
		f := newFreeSet(n)
		model := map[uint32]bool{}
		next := uint32(0)
		for i := 0; i < 20000; i++ {
			if rng.IntN(2) == 0 {
				s := uint32(rng.Uint64N(n))
				f.add(s)
				model[s] = true
			} else {
				s, ok := f.take()
				require.Equal(t, len(model) > 0, ok, "n=%d", n)
				if !ok {
					continue
				}
				require.True(t, model[s], "n=%d: took slot %d, which is not free", n, s)
				// The lowest free slot at or above the cursor, else the lowest.
				want, found := uint32(0), false
				for x := range model {
					if x >= next && (!found || x < want) {
						want, found = x, true
					}
				}
				if !found {
					for x := range model {
						if !found || x < want {
							want, found = x, true
						}
					}
				}
				require.Equal(t, want, s, "n=%d", n)
				delete(model, s)
				next = s + 1
			}
			require.Equal(t, len(model), f.len())
		}
		seen := 0
		f.each(func(s uint32) {
			require.True(t, model[s])
			require.True(t, f.has(s))
			seen++
		})
		require.Equal(t, len(model), seen)
	}
}

func TestFreeSetTakeRange(t *testing.T) {
	f := newFreeSet(300)
	for s := uint32(0); s < 300; s++ {
		if s%3 != 0 {
			f.add(s)
		}
	}
	f.next = 150
	n := f.len()
	got := f.takeRange(60, 200)
	var want []uint32
	for s := uint32(60); s < 200; s++ {
		if s%3 != 0 {
			want = append(want, s)
		}
	}
	require.Equal(t, want, got)
	require.Equal(t, n-len(want), f.len())
	require.Equal(t, uint32(150), f.next, "takeRange moved the allocation cursor")
	for s := uint32(0); s < 300; s++ {
		require.Equal(t, s%3 != 0 && (s < 60 || s >= 200), f.has(s), "slot %d", s)
	}
	// The summary bits follow: allocation skips the emptied words.
	s, ok := f.take()
	require.True(t, ok)
	require.Equal(t, uint32(200), s)
	require.Empty(t, f.takeRange(60, 200))
	require.Equal(t, []uint32{298, 299}, f.takeRange(298, 400))
}
