package blockcache

import (
	"bytes"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/wbcache/wbcache/device"
	"github.com/wbcache/wbcache/layout"
)

// newOrderedCache is a cache with ordered write-back over in-memory
// devices of the given size (backing blocks, cache slots).
func newOrderedCache(t *testing.T, blocks, slots int, opts Options) (*Cache, *device.Mem, *device.Mem) {
	t.Helper()
	ssd := device.NewMem(int64(2+2*2+32+slots)*BlockSize, [16]byte{1})
	hdd := device.NewMem(int64(blocks)*BlockSize, [16]byte{2})
	require.NoError(t, Format(ssd, hdd, FormatOptions{JournalBlocks: 32,
		Settings: layout.Settings{Order: layout.OrderOrdered, SetMask: layout.SetOrder}}))
	opts.CheckpointInterval = -1
	opts.NoBackgroundBackingSync = true
	c, err := Open(ssd, hdd, opts)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	require.True(t, c.Order().InForce, "ordering in force on a new cache")
	return c, ssd, hdd
}

// destageOffered writes back what DirtyBlocks offers, as the destager does.
func destageOffered(t *testing.T, c *Cache) []DirtyBlock {
	t.Helper()
	pinned, err := c.Pin(c.DirtyBlocks(nil))
	require.NoError(t, err)
	require.NoError(t, c.writeBackPinned(pinned))
	return pinned
}

func writeBlock(t *testing.T, c *Cache, lba int64, data []byte) {
	t.Helper()
	_, err := c.WriteAt(data, lba*BlockSize)
	require.NoError(t, err)
}

// TestOrderedKeepsOlderVersion: a block rewritten after a Sync keeps its
// earlier version until that version is written back; the destager is
// offered one epoch at a time, the older version first, and the backing
// device holds it before it holds the newer one.
func TestOrderedKeepsOlderVersion(t *testing.T) {
	c, _, hdd := newOrderedCache(t, 64, 32, Options{})
	v1, v2, w := pattern(1), pattern(2), pattern(3)
	writeBlock(t, c, 5, v1)
	require.NoError(t, c.Sync())
	writeBlock(t, c, 5, v2)
	writeBlock(t, c, 9, w)
	st := c.Order()
	require.Equal(t, 1, st.OlderVersions)
	require.True(t, st.InForce)
	require.EqualValues(t, 2, st.BehindEpochs, "behind by v1's epoch and the current one")
	require.Equal(t, c.epoch.Load()-2, st.ConsistentEpoch)

	first := destageOffered(t, c)
	require.Len(t, first, 1, "only the first epoch is offered")
	require.EqualValues(t, 5, first[0].LBA)
	require.Equal(t, v1, hddBlock(t, hdd, 5))
	require.Equal(t, make([]byte, BlockSize), hddBlock(t, hdd, 9), "nothing of the later epoch yet")
	require.Zero(t, c.Order().OlderVersions, "the older version is freed once written back")

	second := destageOffered(t, c)
	require.Len(t, second, 2)
	require.Equal(t, v2, hddBlock(t, hdd, 5))
	require.Equal(t, w, hddBlock(t, hdd, 9))
	require.Zero(t, c.DirtyCount())
	got := make([]byte, BlockSize)
	_, err := c.ReadAt(got, 5*BlockSize)
	require.NoError(t, err)
	require.Equal(t, v2, got)
}

// TestOrderedSuspendsAndResumes: at the bound on older versions ordering
// is suspended, the superblock says so before write-back may break the
// order, and once the write-back has caught up ordering resumes and the
// superblock says that too.
func TestOrderedSuspendsAndResumes(t *testing.T) {
	c, ssd, _ := newOrderedCache(t, 64, 32, Options{MaxOlderVersions: 2})
	for lba := int64(0); lba < 4; lba++ {
		writeBlock(t, c, lba, pattern(int(lba)))
	}
	require.NoError(t, c.Sync())
	for lba := int64(0); lba < 4; lba++ {
		writeBlock(t, c, lba, pattern(int(lba)+10))
	}
	st := c.Order()
	require.False(t, st.InForce)
	require.NotEmpty(t, st.Suspended)
	require.EqualValues(t, 1, st.Suspensions)
	flag := func() bool {
		sb, err := ReadSuperblock(ssd)
		require.NoError(t, err)
		return sb.Flags&layout.FlagOrderBroken != 0
	}
	require.Eventually(t, flag, 5*time.Second, time.Millisecond, "the superblock marks the order broken")

	for c.DirtyCount() > 0 {
		destageOffered(t, c)
	}
	require.NoError(t, c.Sync()) // a new epoch: nothing older is dirty
	require.Eventually(t, func() bool { return c.Order().InForce }, 5*time.Second, time.Millisecond, "ordering resumes")
	require.Eventually(t, func() bool { return !flag() }, 5*time.Second, time.Millisecond, "the superblock no longer marks it broken")
	require.Empty(t, c.Order().Suspended)
}

// TestOrderedDiscardCatchesUp: a discard is a write of the current epoch,
// so the dirty versions of earlier epochs reach the backing device first,
// consecutive blocks in one request.
func TestOrderedDiscardCatchesUp(t *testing.T) {
	c, _, hdd := newOrderedCache(t, 64, 32, Options{})
	for lba := int64(10); lba < 14; lba++ {
		writeBlock(t, c, lba, pattern(int(lba)))
	}
	require.NoError(t, c.Sync())
	writeBlock(t, c, 30, pattern(30))
	writes := hdd.Stats().Writes
	require.NoError(t, c.Discard(20*BlockSize, 4*BlockSize))
	require.EqualValues(t, 1, hdd.Stats().Writes-writes, "blocks 10-13 in one write")
	for lba := int64(10); lba < 14; lba++ {
		require.True(t, bytes.Equal(pattern(int(lba)), hddBlock(t, hdd, lba)), "block %d written back before the discard", lba)
	}
	require.Equal(t, make([]byte, BlockSize), hddBlock(t, hdd, 30), "the current epoch's block stays dirty")
	require.Equal(t, 1, c.DirtyCount())
}

// TestEpochQueueBounded: the queue of epochs with dirty versions keeps no
// entry for every epoch since Open, whether the oldest epoch is written
// back (the front empties) or stays dirty while later epochs come and go.
func TestEpochQueueBounded(t *testing.T) {
	var tb slotTable
	tb.init(16, 0)
	tb.mapSlot(0, 100, 0, true, 0, 1) // epoch 1 stays dirty
	for e := uint32(2); e < 100000; e++ {
		tb.mapSlot(1, 5, 0, true, 0, e) // a block rewritten once per epoch
		tb.setClean(1)
		tb.unmap(1)
	}
	o, ok := tb.oldestEpoch()
	require.True(t, ok)
	require.EqualValues(t, 1, o)
	require.Less(t, len(tb.shards[0].epochQ), 200, "queue entries while the oldest epoch stays dirty")

	tb.setClean(0)
	for e := uint32(100000); e < 200000; e++ {
		tb.mapSlot(1, 5, 0, true, 0, e)
		if o, _ := tb.oldestEpoch(); o != e {
			t.Fatalf("oldest epoch %d, want %d", o, e)
		}
		tb.setClean(1)
		tb.unmap(1)
		tb.mapSlot(2, 6, 0, true, 0, e) // the front empties as the next comes
		tb.oldestEpoch()
		tb.setClean(2)
		tb.unmap(2)
	}
	require.Less(t, cap(tb.shards[0].epochQ), 1000, "queue capacity once the front keeps emptying")
}
