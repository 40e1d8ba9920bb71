package blockcache

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/wbcache/wbcache/device"
	"github.com/wbcache/wbcache/layout"
)

// TestStreamOverCachedBlocks: a sequential stream past the cutoff over a
// region whose blocks are cached at some density is placed whole, one
// 1 MiB write at a time: into the cache when a block of it has a dirty
// cached version (never a scatter of short backing writes between
// them), else to the backing device in one I/O, clean cached copies
// dropped first. Either way every block reads back as the stream wrote it.
func TestStreamOverCachedBlocks(t *testing.T) {
	for _, tc := range []struct {
		density int // percent of the region's blocks cached before the stream
		clean   bool
	}{{0, false}, {25, false}, {50, false}, {75, false}, {100, false}, {25, true}, {100, true}} {
		kind := "dirty"
		if tc.clean {
			kind = "clean"
		}
		t.Run(fmt.Sprintf("%d%%-%s", tc.density, kind), func(t *testing.T) {
			testStream(t, tc.density, tc.clean)
		})
	}
}

func testStream(t *testing.T, density int, clean bool) {
	const (
		mib    = 1 << 20
		first  = 256  // the region starts at 1 MiB: the stream's first write is before it
		region = 2048 // 8 MiB: eight 1 MiB writes
	)
	ssd := device.NewMem(32<<20, [16]byte{1})
	hdd := device.NewMem(64<<20, [16]byte{2})
	require.NoError(t, Format(ssd, hdd, FormatOptions{}))
	c, err := Open(ssd, hdd, Options{CheckpointInterval: -1, NoBackgroundBackingSync: true})
	require.NoError(t, err)
	defer c.Close()
	require.NoError(t, c.SetSettings(layout.Settings{SeqCutoff: 64 << 10, SetMask: layout.SetSeqCutoff}))

	rng := rand.New(rand.NewPCG(uint64(density), 1))
	buf := make([]byte, BlockSize)
	for _, i := range rng.Perm(region)[:region*density/100] {
		lba := first + i
		if clean {
			_, err = c.ReadAt(buf, int64(lba)*BlockSize) // promoted as a clean copy
		} else {
			_, err = c.WriteAt(pattern(lba), int64(lba)*BlockSize)
		}
		require.NoError(t, err)
	}
	require.Equal(t, region*density/100, c.cachedBetween(first, first+region), "blocks cached before the stream")
	require.NoError(t, c.Sync())

	stream := make([]byte, (first+region)*BlockSize)
	for i := range stream {
		stream[i] = byte(i/BlockSize*13 + 5)
	}
	_, err = c.WriteAt(stream[:mib], 0) // starts the stream
	require.NoError(t, err)
	writes, bypassed := hdd.Stats().Writes, c.Stats().Bypassed
	for off := mib; off < len(stream); off += mib {
		_, err = c.WriteAt(stream[off:off+mib], int64(off))
		require.NoError(t, err)
	}
	backing := hdd.Stats().Writes - writes
	bypassed = c.Stats().Bypassed - bypassed

	cached := c.cachedBetween(first, first+region)
	if density > 0 && !clean {
		require.Zero(t, backing, "backing writes of a stream over dirty cached blocks")
		require.Zero(t, bypassed, "requests placed in the cache are not counted as bypassing it")
		require.Equal(t, region, cached, "the whole stream went into the cache")
	} else {
		require.EqualValues(t, region*BlockSize/mib, backing, "one backing write per 1 MiB write")
		require.EqualValues(t, region*BlockSize/mib, bypassed, "each 1 MiB write bypassed the cache")
		require.Zero(t, cached, "clean copies under the stream were dropped")
	}
	got := make([]byte, mib)
	for off := mib; off < len(stream); off += mib {
		_, err = c.ReadAt(got, int64(off))
		require.NoError(t, err)
		require.True(t, bytes.Equal(stream[off:off+mib], got), "data at %d MiB", off/mib)
	}
}

// cachedBetween counts the blocks in [lo, hi) with a cached copy.
func (c *Cache) cachedBetween(lo, hi int) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for l := lo; l < hi; l++ {
		if _, ok := c.mu.t.lookup(uint64(l)); ok {
			n++
		}
	}
	return n
}
