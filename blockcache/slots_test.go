package blockcache

import (
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestLBAIndex checks the index against a map through random puts and
// deletes, for table sizes that are not powers of two.
func TestLBAIndex(t *testing.T) {
	for _, n := range []uint64{1, 3, 7, 100, 1000} {
		rng := rand.New(rand.NewPCG(n, 5))
		keys := make([]uint64, n)
		x := newLBAIndex(n)
		model := map[uint64]uint32{}
		used := map[uint32]bool{}
		for i := 0; i < 20000; i++ {
			s := uint32(rng.Uint64N(n))
			if used[s] {
				x.del(keys[s], s, keys)
				delete(model, keys[s])
				used[s] = false
				continue
			}
			lba := rng.Uint64N(4 * n)
			if _, taken := model[lba]; taken {
				continue
			}
			keys[s] = lba
			x.put(lba, s, keys)
			model[lba], used[s] = s, true
			if i%97 == 0 {
				for l, want := range model {
					got, ok := x.get(l, keys)
					require.True(t, ok)
					require.Equal(t, want, got)
				}
				for l := uint64(0); l < 4*n; l++ {
					if _, ok := model[l]; !ok {
						_, ok := x.get(l, keys)
						require.False(t, ok)
					}
				}
			}
		}
	}
}
