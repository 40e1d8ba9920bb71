package blockcache

import (
	"bytes"
	"errors"
	"io/fs"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/wbcache/wbcache/device"
)

// slotOf returns the slot holding lba.
func slotOf(t *testing.T, c *Cache, lba uint64) uint32 {
	c.mu.Lock()
	defer c.mu.Unlock()
	s, ok := c.mu.t.lookup(lba)
	require.True(t, ok, "block %d is not cached", lba)
	return s
}

// spoil overwrites slot s on the device, as an SSD returning bad data.
func spoil(t *testing.T, ssd device.Device, c *Cache, s uint32) {
	_, err := ssd.WriteAt(bytes.Repeat([]byte{0xee}, BlockSize), c.g.SlotOffset(uint64(s)))
	require.NoError(t, err)
}

// TestCorruptCleanSlotHeals: a clean block whose slot fails its checksum
// is read from the backing device, which holds it; the slot is dropped and
// counted, also for a partial write, and across a restart.
func TestCorruptCleanSlotHeals(t *testing.T) {
	ssd, hdd, c := memCache(t)
	for lba := 0; lba < 3; lba++ {
		_, err := hdd.WriteAt(pattern(lba), int64(lba)*BlockSize)
		require.NoError(t, err)
	}
	buf := make([]byte, BlockSize)
	for lba := 0; lba < 3; lba++ {
		_, err := c.ReadAt(buf, int64(lba)*BlockSize) // promotes a clean copy
		require.NoError(t, err)
	}
	require.NoError(t, c.Sync())
	bad0 := slotOf(t, c, 0)
	for lba := uint64(0); lba < 3; lba++ {
		spoil(t, ssd, c, slotOf(t, c, lba))
	}

	_, err := c.ReadAt(buf, 0)
	require.NoError(t, err)
	require.Equal(t, pattern(0), buf, "a clean block reads from the backing device")
	require.EqualValues(t, 1, c.Stats().HealedBlocks)
	c.mu.Lock()
	s, cached := c.mu.t.lookup(0)
	c.mu.Unlock()
	require.False(t, cached && s == bad0, "the bad slot is dropped (the block may be promoted again elsewhere)")

	// A partial write merges with the backing device's version.
	_, err = c.WriteAt([]byte{1, 2, 3}, BlockSize+10)
	require.NoError(t, err)
	_, err = c.ReadAt(buf, BlockSize)
	require.NoError(t, err)
	want := pattern(1)
	copy(want[10:], []byte{1, 2, 3})
	require.Equal(t, want, buf)
	require.EqualValues(t, 2, c.Stats().HealedBlocks)

	// After a restart the third one heals on its first read.
	require.NoError(t, c.Close())
	c, err = Open(ssd, hdd, Options{CheckpointInterval: -1})
	require.NoError(t, err)
	defer c.Close()
	_, err = c.ReadAt(buf, 2*BlockSize)
	require.NoError(t, err)
	require.Equal(t, pattern(2), buf)
	require.EqualValues(t, 1, c.Stats().HealedBlocks)
	require.Zero(t, c.Stats().LostBlocks)
}

// TestCorruptDirtySlotIsLost: a dirty block whose slot fails its checksum
// reads as an error naming it, never as zeros or an older version, also
// after a restart; write-back skips it; rewriting it clears the loss.
func TestCorruptDirtySlotIsLost(t *testing.T) {
	ssd, hdd, c := memCache(t)
	_, err := hdd.WriteAt(pattern(9), 5*BlockSize) // an older version
	require.NoError(t, err)
	_, err = c.WriteAt(pattern(5), 5*BlockSize)
	require.NoError(t, err)
	require.NoError(t, c.Sync())
	spoil(t, ssd, c, slotOf(t, c, 5))

	buf := make([]byte, BlockSize)
	_, err = c.ReadAt(buf, 5*BlockSize)
	require.ErrorIs(t, err, ErrCorruptData)
	require.Contains(t, err.Error(), "block 5 ")
	require.Equal(t, []uint64{5}, c.LostBlocks())
	require.Equal(t, 1, c.Stats().LostBlocks)
	require.Zero(t, c.Destageable(), "a lost block is not written back")
	require.Empty(t, c.DirtyBlocks(nil))
	_, err = c.WriteAt([]byte{1}, 5*BlockSize)
	require.ErrorIs(t, err, ErrCorruptData, "a partial write cannot merge with a lost block")

	require.NoError(t, c.Close())
	c, err = Open(ssd, hdd, Options{CheckpointInterval: -1})
	require.NoError(t, err)
	defer c.Close()
	_, err = c.ReadAt(buf, 5*BlockSize)
	require.ErrorIs(t, err, ErrCorruptData, "still lost after a restart")
	require.Equal(t, []uint64{5}, c.LostBlocks())

	_, err = c.WriteAt(pattern(6), 5*BlockSize)
	require.NoError(t, err)
	_, err = c.ReadAt(buf, 5*BlockSize)
	require.NoError(t, err)
	require.Equal(t, pattern(6), buf)
	require.Empty(t, c.LostBlocks())
	require.Equal(t, 1, c.Destageable())

	// Discarding a lost block clears it too.
	_, err = c.WriteAt(pattern(7), 7*BlockSize)
	require.NoError(t, err)
	require.NoError(t, c.Sync())
	spoil(t, ssd, c, slotOf(t, c, 7))
	_, err = c.ReadAt(buf, 7*BlockSize)
	require.True(t, errors.Is(err, ErrCorruptData))
	require.NoError(t, c.Discard(7*BlockSize, BlockSize))
	_, err = c.ReadAt(buf, 7*BlockSize)
	require.NoError(t, err)
	require.Equal(t, make([]byte, BlockSize), buf)
	require.Empty(t, c.LostBlocks())
}

// TestReadSlotsReportsLost: ReadSlots reads every intact block of a run
// and names the lost ones, which Complete never marks clean.
func TestReadSlotsReportsLost(t *testing.T) {
	ssd, _, c := memCache(t)
	defer c.Close()
	for lba := 0; lba < 4; lba++ {
		_, err := c.WriteAt(pattern(lba), int64(lba)*BlockSize)
		require.NoError(t, err)
	}
	require.NoError(t, c.Sync())
	spoil(t, ssd, c, slotOf(t, c, 2))
	pinned, err := c.Pin(c.DirtyBlocks(nil))
	require.NoError(t, err)
	require.Len(t, pinned, 4)
	buf := make([]byte, 4*BlockSize)
	err = c.ReadSlots(pinned, buf)
	var lost *LostBlocksError
	require.ErrorAs(t, err, &lost)
	require.Equal(t, []int{2}, lost.Lost)
	for _, i := range []int{0, 1, 3} {
		require.Equal(t, pattern(i), buf[i*BlockSize:(i+1)*BlockSize])
	}
	require.NoError(t, c.Complete(pinned, true))
	require.Equal(t, 1, c.DirtyCount(), "the lost block stays dirty")
	require.Zero(t, c.Destageable())
	require.Equal(t, []uint64{2}, c.LostBlocks())
}

func TestFormatLBAs(t *testing.T) {
	require.Equal(t, "", FormatLBAs(nil, 3))
	require.Equal(t, "7", FormatLBAs([]uint64{7}, 3))
	require.Equal(t, "1-3, 7, 9-10", FormatLBAs([]uint64{1, 2, 3, 7, 9, 10}, 3))
	require.Equal(t, "1, 3, and 2 more blocks", FormatLBAs([]uint64{1, 3, 5, 6}, 2))
}

// TestCheckListsLostBlocks: check names a dirty block whose slot fails its
// checksum as lost (a problem) and a clean one as healable (not one).
func TestCheckListsLostBlocks(t *testing.T) {
	ssd, hdd, c := memCache(t)
	_, err := hdd.WriteAt(pattern(3), 3*BlockSize)
	require.NoError(t, err)
	buf := make([]byte, BlockSize)
	_, err = c.ReadAt(buf, 3*BlockSize) // a clean copy
	require.NoError(t, err)
	_, err = c.WriteAt(pattern(8), 8*BlockSize) // a dirty block
	require.NoError(t, err)
	require.NoError(t, c.Sync())
	spoil(t, ssd, c, slotOf(t, c, 3))
	spoil(t, ssd, c, slotOf(t, c, 8))
	require.NoError(t, c.Close())

	r, err := Check(ssd, hdd)
	require.NoError(t, err)
	require.Equal(t, []uint64{8}, r.Lost)
	require.Equal(t, []uint64{3}, r.Healable)
	require.Len(t, r.Problems, 1)
	require.Contains(t, r.Problems[0], "block 8 is lost")
	require.Contains(t, r.String(), "lost dirty blocks: 8\n")
}

// TestErrInvalidIsEINVAL: the FUSE server answers fs.ErrInvalid with
// EINVAL, so the engine's ErrInvalid must be one.
func TestErrInvalidIsEINVAL(t *testing.T) {
	_, _, c := memCache(t)
	defer c.Close()
	_, err := c.WriteAt(make([]byte, BlockSize), c.Size())
	require.ErrorIs(t, err, ErrInvalid)
	require.ErrorIs(t, err, fs.ErrInvalid)
}
