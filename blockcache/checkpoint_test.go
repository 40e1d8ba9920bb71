package blockcache

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/wbcache/wbcache/device"
	"github.com/wbcache/wbcache/layout"
)

// TestCheckpointWritesOnlyChangedPages: once a process has written both
// checkpoint copies, a checkpoint writes the pages that changed since its
// copy was last written, not the whole table; a cache recovered from a
// power cut after such checkpoints reads every block as written, from a
// checkpoint whose pages are of several generations.
func TestCheckpointWritesOnlyChangedPages(t *testing.T) {
	ssd := device.NewMem(64<<20, [16]byte{1})
	hdd := device.NewMem(256<<20, [16]byte{2})
	require.NoError(t, Format(ssd, hdd, FormatOptions{}))
	c, err := Open(ssd, hdd, Options{CheckpointInterval: -1, NoBackgroundBackingSync: true})
	require.NoError(t, err)
	defer func() { c.Close() }()
	pages := c.g.CheckpointBlocks
	require.Greater(t, pages, uint64(40), "the test needs a table of many pages")

	want := map[int64][]byte{}
	write := func(lba int64, tag byte) {
		b := bytes.Repeat([]byte{tag, byte(lba), byte(lba >> 8)}, BlockSize/3+1)[:BlockSize]
		_, err := c.WriteAt(b, lba*BlockSize)
		require.NoError(t, err)
		want[lba] = b
	}
	written := func() uint64 { return c.Stats().CheckpointPages }
	checkpoint := func() uint64 {
		before := written()
		require.NoError(t, c.Checkpoint())
		return written() - before
	}

	for i := int64(0); i < 3000; i++ {
		write(i*7, 1)
	}
	require.NoError(t, c.Sync())
	// Open wrote one copy whole; the first checkpoint writes the other
	// whole, since this process does not know what it holds.
	require.Equal(t, pages, checkpoint(), "first checkpoint of the other copy")
	// The copy Open wrote lacks the pages of the 3000 blocks' slots (next
	// fit, in each shard's batches of slots: 12 or 13 map pages) and the
	// bitmap page.
	mapPages := map[uint64]bool{}
	c.mu.Lock()
	for s, f := range c.mu.t.flags {
		if f&fValid != 0 {
			mapPages[uint64(s)/layout.EntriesPerMapPage] = true
		}
	}
	c.mu.Unlock()
	require.LessOrEqual(t, len(mapPages), 3000/layout.EntriesPerMapPage+2, "slots of 3000 blocks in neighbouring pages")
	require.Equal(t, uint64(len(mapPages)+1), checkpoint())
	require.Zero(t, checkpoint(), "nothing changed: nothing to write")
	require.Zero(t, checkpoint())

	write(60_003, 2) // a new block: one map page and one bitmap page
	require.NoError(t, c.Sync())
	require.LessOrEqual(t, checkpoint(), uint64(2))
	require.LessOrEqual(t, checkpoint(), uint64(2), "the other copy lacks the same pages")
	require.Zero(t, checkpoint())

	// Rewrites after a sync go to new slots and free the old ones.
	for i := int64(0); i < 5; i++ {
		write(i*7*500, 3)
	}
	require.NoError(t, c.Sync())
	n := checkpoint()
	require.Positive(t, n)
	require.LessOrEqual(t, n, uint64(12))

	// Data the pages cover changes while the page stays: the bitmap
	// page that marked it dirty marks it dirty still.
	write(60_003, 4)
	require.NoError(t, c.Sync())

	gens := map[uint64]int{}
	for i := uint64(0); i < pages; i++ {
		p := make([]byte, BlockSize)
		_, err := ssd.ReadAt(p, c.g.MapPageOffset(int(c.sb.CheckpointCopy), i))
		require.NoError(t, err)
		h, ok := layout.PeekPage(p)
		require.True(t, ok)
		require.LessOrEqual(t, h.Generation, c.sb.CheckpointGeneration)
		gens[h.Generation]++
	}
	require.Greater(t, len(gens), 1, "the named copy holds pages of several generations: %v", gens)

	// A power cut now (everything synced) and recovery from that copy.
	rng := rand.New(rand.NewPCG(1, 2))
	ssd2, hdd2 := ssd.PowerCut(rng), hdd.PowerCut(rng)
	c2, err := Open(ssd2, hdd2, Options{CheckpointInterval: -1, NoBackgroundBackingSync: true})
	require.NoError(t, err)
	defer c2.Close()
	got := make([]byte, BlockSize)
	for lba, b := range want {
		_, err := c2.ReadAt(got, lba*BlockSize)
		require.NoError(t, err)
		require.Equal(t, b, got, "block %d after recovery", lba)
	}
	require.Equal(t, c.Stats().Dirty, c2.Stats().Dirty)
}

// TestCheckPageUpTo: a checkpoint's pages may be of its generation or an
// older one, never a newer one, and must otherwise check.
func TestCheckPageUpTo(t *testing.T) {
	uuid := [16]byte{9}
	p := make([]byte, BlockSize)
	layout.SealPage(p, layout.MapPage, uuid, 5, 3)
	require.NoError(t, layout.CheckPageUpTo(p, layout.MapPage, uuid, 5, 3))
	require.NoError(t, layout.CheckPageUpTo(p, layout.MapPage, uuid, 9, 3))
	require.ErrorIs(t, layout.CheckPageUpTo(p, layout.MapPage, uuid, 4, 3), layout.ErrCorrupt)
	require.ErrorIs(t, layout.CheckPageUpTo(p, layout.MapPage, uuid, 9, 2), layout.ErrCorrupt)
	require.ErrorIs(t, layout.CheckPageUpTo(p, layout.BitmapPage, uuid, 9, 3), layout.ErrCorrupt)
	require.ErrorIs(t, layout.CheckPageUpTo(p, layout.MapPage, [16]byte{8}, 9, 3), layout.ErrCorrupt)
	require.ErrorIs(t, layout.CheckPage(p, layout.MapPage, uuid, 9, 3), layout.ErrCorrupt, "CheckPage wants the generation exactly")
}

// TestCheckpointCrashes crashes (power cuts and process crashes, at a
// random device operation) caches that wrote several checkpoints since
// they were opened, most of them rewriting only the pages that changed,
// and checks after each recovery that every block reads as its newest
// synced version or a newer acknowledged one. Two seeds (7 and 8, or
// WBC_MODEL_SEED and the next) run side by side, each with half the
// rounds: the rounds of one seed form a chain (each opens the images the
// last one left), so one seed would keep a single CPU busy.
func TestCheckpointCrashes(t *testing.T) {
	rounds := 200
	switch {
	case os.Getenv("WBC_LONG") != "" && raceDetector:
		rounds = 400 // .ci/run
	case os.Getenv("WBC_LONG") != "":
		rounds = 1000
	case testing.Short():
		rounds = 40
	}
	seed := uint64(7)
	if s := os.Getenv("WBC_MODEL_SEED"); s != "" {
		n, err := strconv.ParseUint(s, 10, 64)
		require.NoError(t, err)
		seed = n
	}
	for i := range uint64(2) {
		t.Run(fmt.Sprintf("seed%d", seed+i), func(t *testing.T) {
			t.Parallel()
			checkpointCrashes(t, seed+i, rounds/2)
		})
	}
}

// checkpointCrashes is one seed's chain of TestCheckpointCrashes rounds.
func checkpointCrashes(t *testing.T, seed uint64, rounds int) {
	const region = 2000
	rng := rand.New(rand.NewPCG(seed, 11))
	ssd := device.NewMem(16<<20, [16]byte{1})
	hdd := device.NewMem(region*BlockSize, [16]byte{2})
	require.NoError(t, Format(ssd, hdd, FormatOptions{}))
	block := func(lba int64, tag uint32) []byte {
		b := make([]byte, BlockSize)
		if tag != 0 {
			for i := 0; i < BlockSize; i += 8 {
				binary.LittleEndian.PutUint32(b[i:], uint32(lba))
				binary.LittleEndian.PutUint32(b[i+4:], tag)
			}
		}
		return b
	}
	durable := make([]uint32, region) // tag of the newest synced version (0: zeros)
	acked := make([][]uint32, region) // tags written since, acknowledged or in flight
	var tag uint32
	incremental, cuts, mixed := 0, 0, 0
	var spareSSD, spareHDD *device.Mem // the last round's devices, closed
	for round := 0; round < rounds; round++ {
		r := device.NewCrashRig(ssd, hdd)
		r.Recycle(spareSSD, spareHDD)
		c, err := Open(r.Dev(ssd), r.Dev(hdd), Options{CheckpointInterval: -1})
		require.NoError(t, err)
		phases := 2 + rng.IntN(5)
		crashIn := 1 + rng.IntN(phases-1)
		power := rng.IntN(2) == 0
		for p := 0; p < phases && !r.Snapped(); p++ {
			if p == crashIn {
				r.Arm(1+rng.Int64N(60), power, rand.New(rand.NewPCG(rng.Uint64(), 5)), nil)
			}
			for n := 1 + rng.IntN(120); n > 0 && !r.Snapped(); n-- {
				lba := rng.Int64N(region)
				tag++
				_, err := c.WriteAt(block(lba, tag), lba*BlockSize)
				acked[lba] = append(acked[lba], tag)
				if r.Snapped() {
					break
				}
				require.NoError(t, err)
			}
			if r.Snapped() {
				break
			}
			err := c.Sync()
			if r.Snapped() {
				break
			}
			require.NoError(t, err)
			for lba, a := range acked {
				if len(a) > 0 {
					durable[lba], acked[lba] = a[len(a)-1], acked[lba][:0]
				}
			}
			pages := c.Stats().CheckpointPages
			err = c.Checkpoint()
			if r.Snapped() {
				break
			}
			require.NoError(t, err)
			if c.Stats().CheckpointPages-pages < c.g.CheckpointBlocks {
				incremental++
			}
		}
		r.Take()
		if power {
			cuts++
		}
		img, himg := r.Images()
		if mixedGenerations(t, img) {
			mixed++
		}
		ssd.Close()
		hdd.Close()
		c.Close()
		ssd, hdd, spareSSD, spareHDD = img, himg, ssd, hdd
		c2, err := Open(ssd, hdd, Options{CheckpointInterval: -1})
		require.NoError(t, err, "round %d", round)
		got := make([]byte, BlockSize)
		for lba := int64(0); lba < region; lba++ {
			_, err := c2.ReadAt(got, lba*BlockSize)
			require.NoError(t, err)
			ok := false
			for _, tg := range append([]uint32{durable[lba]}, acked[lba]...) {
				if bytes.Equal(got, block(lba, tg)) {
					durable[lba], ok = tg, true
					break
				}
			}
			require.True(t, ok, "round %d (power %v): block %d is none of its allowed versions (durable %d, since %v)", round, power, lba, durable[lba], acked[lba])
			acked[lba] = acked[lba][:0]
		}
		require.NoError(t, c2.Close())
		// The next round opens the same images again (a clean stop now).
	}
	t.Logf("seed %d: %d rounds (%d power cuts), %d checkpoints that wrote only changed pages, %d recoveries from a checkpoint of pages of several generations",
		seed, rounds, cuts, incremental, mixed)
	require.Positive(t, incremental)
	require.Positive(t, mixed)
}

// mixedGenerations reports whether the checkpoint the superblock of ssd
// names holds pages older than its generation.
func mixedGenerations(t *testing.T, ssd device.Device) bool {
	sb, err := readSuperblock(ssd)
	require.NoError(t, err)
	p := make([]byte, BlockSize)
	for i := uint64(0); i < sb.Geometry.CheckpointBlocks; i++ {
		_, err := ssd.ReadAt(p, sb.Geometry.MapPageOffset(int(sb.CheckpointCopy), i))
		require.NoError(t, err)
		if h, ok := layout.PeekPage(p); ok && h.Generation < sb.CheckpointGeneration {
			return true
		}
	}
	return false
}
