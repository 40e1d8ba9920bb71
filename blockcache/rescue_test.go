package blockcache

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wbcache/wbcache/device"
	"github.com/wbcache/wbcache/layout"
)

// blockData is version v of block lba: unique to both.
func blockData(lba uint64, v int) []byte {
	b := make([]byte, BlockSize)
	for i := 0; i < BlockSize; i += 16 {
		binary.LittleEndian.PutUint64(b[i:], lba)
		binary.LittleEndian.PutUint64(b[i+8:], uint64(v)*0x9e3779b97f4a7c15+uint64(i))
	}
	return b
}

// dirtyCache formats a cache with journalBlocks (0: default), writes
// blocks into it before and after a checkpoint (some twice), and returns
// what a killed process leaves, with the newest version of every block.
func dirtyCache(t *testing.T, journalBlocks uint64) (ssd, hdd *device.Mem, want map[uint64][]byte) {
	ssd, hdd = device.NewMem(8<<20, [16]byte{1}), device.NewMem(16<<20, [16]byte{2})
	require.NoError(t, Format(ssd, hdd, FormatOptions{JournalBlocks: journalBlocks}))
	c, err := Open(ssd, hdd, Options{CheckpointInterval: -1, NoBackgroundBackingSync: true})
	require.NoError(t, err)
	defer c.Close()
	want = map[uint64][]byte{}
	write := func(lba uint64, v int) {
		want[lba] = blockData(lba, v)
		_, err := c.WriteAt(want[lba], int64(lba)*BlockSize)
		require.NoError(t, err)
	}
	for lba := range uint64(200) {
		write(lba*3, 1)
	}
	require.NoError(t, c.Checkpoint())
	for lba := range uint64(101) {
		write(lba*2, 2) // half of them rewrites
	}
	require.NoError(t, c.Sync())
	return ssd.CrashProcess(), hdd.CrashProcess(), want
}

func wipeSuperblocks(t *testing.T, ssd device.Device) {
	_, err := ssd.WriteAt(make([]byte, 2*BlockSize), 0)
	require.NoError(t, err)
}

// requireBacking checks that hdd holds every block of want.
func requireBacking(t *testing.T, hdd device.Device, want map[uint64][]byte) {
	t.Helper()
	got := make([]byte, BlockSize)
	for lba, w := range want {
		_, err := hdd.ReadAt(got, int64(lba)*BlockSize)
		require.NoError(t, err)
		require.True(t, bytes.Equal(w, got), "block %d does not hold its newest version", lba)
	}
}

// With both superblocks gone, rescue finds the layout from the
// checkpoint and writes every dirty block back.
func TestRescueBothSuperblocksWiped(t *testing.T) {
	for _, jb := range []uint64{0, 40} { // default journal size, and one to find by scoring
		ssd, hdd, want := dirtyCache(t, jb)
		wipeSuperblocks(t, ssd)

		_, err := Open(ssd, hdd, Options{})
		require.ErrorIs(t, err, ErrSuperblocksLost)
		assert.Contains(t, err.Error(), "it may hold dirty blocks")
		assert.NotContains(t, err.Error(), "wbcache", "the engine says what broke; the command says what to type")
		require.ErrorIs(t, Format(ssd, hdd, FormatOptions{}), ErrFormatted, "format without force over a cache that lost its superblocks")

		_, err = Rescue(ssd, hdd, RescueOptions{})
		require.ErrorIs(t, err, ErrBackingUnverified)

		before := hdd.CrashProcess()
		rep, err := Rescue(ssd, hdd, RescueOptions{DryRun: true})
		require.NoError(t, err)
		assert.Len(t, rep.Restored, len(want))
		assert.Equal(t, before.Stats(), hdd.CrashProcess().Stats(), "a dry run wrote to the backing device")

		rep, err = Rescue(ssd, hdd, RescueOptions{UnverifiedBacking: true})
		require.NoError(t, err)
		t.Log(rep.String())
		assert.Contains(t, rep.Layout, "found by scanning")
		assert.Len(t, rep.Restored, len(want))
		assert.Empty(t, rep.Unverifiable)
		requireBacking(t, hdd, want)
		assert.Zero(t, hdd.Unsynced(), "rescue did not sync the backing device")
	}
}

// Only the magics wiped: the rest of a superblock copy gives the layout
// and says which backing device is the right one.
func TestRescueMagicsWiped(t *testing.T) {
	ssd, hdd, want := dirtyCache(t, 0)
	for k := range int64(2) {
		_, err := ssd.WriteAt(make([]byte, 8), k*BlockSize)
		require.NoError(t, err)
	}
	_, err := Rescue(ssd, device.NewMem(hdd.Size(), [16]byte{3}), RescueOptions{})
	require.ErrorIs(t, err, ErrWrongBacking)

	rep, err := Rescue(ssd, hdd, RescueOptions{})
	require.NoError(t, err)
	assert.Contains(t, rep.Layout, "damaged superblock copy")
	assert.Contains(t, rep.BackingNote, "verified")
	assert.Len(t, rep.Restored, len(want))
	requireBacking(t, hdd, want)
}

// A dirty slot whose data fails its checksum is reported, not written,
// and costs only its own block: the journal records after it still apply.
func TestRescueReportsUnverifiable(t *testing.T) {
	ssd, hdd, want := dirtyCache(t, 0)
	sb, err := ReadSuperblock(ssd)
	require.NoError(t, err)
	c, err := Open(ssd.CrashProcess(), hdd.CrashProcess(), Options{CheckpointInterval: -1})
	require.NoError(t, err)
	for _, lba := range []uint64{4, 6} {
		slot, ok := c.mu.t.lookup(lba)
		require.True(t, ok)
		_, err = ssd.WriteAt([]byte{0xff}, sb.Geometry.SlotOffset(uint64(slot))+10)
		require.NoError(t, err)
	}
	require.NoError(t, c.Close())

	rep, err := Rescue(ssd, hdd, RescueOptions{})
	require.NoError(t, err)
	assert.Equal(t, []uint64{4, 6}, rep.Unverifiable)
	// Block 6 was written twice: its first version, in another slot,
	// verifies and is written instead. Block 4 has no other version: the
	// backing device keeps what it had. Every other block is whole.
	assert.Len(t, rep.Restored, len(want)-1)
	assert.Contains(t, rep.String(), "could not save 2 dirty blocks at their newest version (its slot fails its checksum): 4, 6")
	assert.Contains(t, rep.String(), "1 had an older version that verified")
	want[6] = blockData(6, 1)
	want[4] = make([]byte, BlockSize)
	requireBacking(t, hdd, want)
}

// The checkpoint the superblock names is damaged: its pages are taken
// from the other copy where that holds them.
func TestRescueDamagedCheckpoint(t *testing.T) {
	ssd, hdd, want := dirtyCache(t, 0)
	sb, err := ReadSuperblock(ssd)
	require.NoError(t, err)
	_, err = ssd.WriteAt([]byte{0xff}, sb.Geometry.MapPageOffset(int(sb.CheckpointCopy), 0)+100)
	require.NoError(t, err)
	_, err = Open(ssd, hdd, Options{})
	require.ErrorIs(t, err, layout.ErrCorrupt)

	rep, err := Rescue(ssd, hdd, RescueOptions{})
	require.NoError(t, err)
	assert.Contains(t, rep.Checkpoint, "either copy")
	assert.Len(t, rep.Restored, len(want))
	requireBacking(t, hdd, want)
}
