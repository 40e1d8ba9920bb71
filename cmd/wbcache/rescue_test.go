package main

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/wbcache/wbcache/blockcache"
	"github.com/wbcache/wbcache/device"
	"github.com/wbcache/wbcache/layout"
)

// dirtyRig formats a cache with the command and leaves n dirty blocks in
// it (block i holds its number), as a stopped daemon would.
func dirtyRig(t *testing.T, n int) *rig {
	r := newRig(t, 16<<20, 8<<20)
	ssd, err := device.Open(r.cache, device.Options{})
	require.NoError(t, err)
	defer ssd.Close()
	hdd, err := device.Open(r.backing, device.Options{})
	require.NoError(t, err)
	defer hdd.Close()
	c, err := blockcache.Open(ssd, hdd, blockcache.Options{CheckpointInterval: -1})
	require.NoError(t, err)
	for lba := range n {
		_, err := c.WriteAt(rescueBlock(lba), int64(lba)*blockcache.BlockSize)
		require.NoError(t, err)
	}
	r.slots = map[uint64]uint32{}
	for _, b := range c.DirtyBlocks(nil) {
		r.slots[b.LBA] = b.Slot
	}
	require.NoError(t, c.Close())
	return r
}

func rescueBlock(lba int) []byte {
	b := make([]byte, blockcache.BlockSize)
	for i := 0; i < len(b); i += 8 {
		binary.LittleEndian.PutUint64(b[i:], uint64(lba)<<32|uint64(i))
	}
	return b
}

// requireBlocks checks that the first n blocks of path hold rescueBlock.
func requireBlocks(t *testing.T, path string, n int) {
	t.Helper()
	img := readAll(t, path)
	for lba := range n {
		requireSameBytes(t, rescueBlock(lba), img[lba*blockcache.BlockSize:(lba+1)*blockcache.BlockSize], fmt.Sprintf("block %d", lba))
	}
}

// Both superblocks wiped on a cache holding 301 dirty blocks: mount,
// check and format point to rescue, and rescue restores every block.
func TestRescueBothSuperblocksWiped(t *testing.T) {
	const n = 301
	r := dirtyRig(t, n)
	f, err := os.OpenFile(r.cache, os.O_WRONLY, 0)
	require.NoError(t, err)
	_, err = f.WriteAt(make([]byte, 2*layout.BlockSize), 0)
	require.NoError(t, err)
	require.NoError(t, f.Close())
	cacheSum, backingSum := fileSum(t, r.cache), fileSum(t, r.backing)

	res := wantCode(t, 1, "mount", "--cache", r.cache, "--backing", r.backing, r.mnt)
	require.Contains(t, res.stderr, "no valid superblock, but the cache's checkpoint and journal may remain")
	require.Contains(t, res.stderr, "wbcache rescue")
	require.NotContains(t, res.stderr, "run 'wbcache format'")
	res = wantCode(t, 1, "detach", "--cache", r.cache, "--backing", r.backing)
	require.Contains(t, res.stderr, "wbcache rescue")
	res = wantCode(t, 1, "format", "--cache", r.cache, "--backing", r.backing)
	require.Contains(t, res.stderr, "has lost its superblocks but still holds a wbcache cache's checkpoint")
	require.Contains(t, res.stderr, "'wbcache rescue --cache "+r.cache)
	res = wantCode(t, 3, "check", "--cache", r.cache, "--backing", r.backing)
	require.Contains(t, res.stdout, "cache: no valid superblock")
	require.NotContains(t, res.stdout, "0 slots")
	require.Contains(t, res.stderr, "'wbcache rescue --cache "+r.cache)

	res = wantCode(t, 1, "rescue", "--cache", r.cache, "--backing", r.backing)
	require.Contains(t, res.stderr, "the backing device cannot be verified: no superblock survives")
	require.Contains(t, res.stderr, "--unverified-backing")
	res = wantCode(t, 0, "rescue", "--cache", r.cache, "--backing", r.backing, "--dry-run")
	require.Contains(t, res.stdout, fmt.Sprintf("would restore (dry run: nothing written) %d dirty blocks: 0-300", n))
	require.Equal(t, backingSum, fileSum(t, r.backing), "a dry run wrote to the backing device")

	res = wantCode(t, 0, "rescue", "--cache", r.cache, "--backing", r.backing, "--unverified-backing")
	require.Contains(t, res.stdout, "layout: found by scanning")
	require.Contains(t, res.stdout, fmt.Sprintf("restored %d dirty blocks: 0-300", n))
	require.Contains(t, res.stdout, "backing device: not verified")
	requireBlocks(t, r.backing, n)
	require.Equal(t, cacheSum, fileSum(t, r.cache), "rescue wrote to the cache device")
}

// A dirty slot that fails its checksum is listed, exit 3.
func TestRescueListsWhatItCannotSave(t *testing.T) {
	r := dirtyRig(t, 10)
	ssd, err := device.Open(r.cache, device.Options{})
	require.NoError(t, err)
	sb, err := blockcache.ReadSuperblock(ssd)
	require.NoError(t, err)
	require.NoError(t, ssd.Close())
	flipByte(t, r.cache, sb.Geometry.SlotOffset(uint64(r.slots[7]))+5)
	res := wantCode(t, 3, "rescue", "--cache", r.cache, "--backing", r.backing)
	require.Contains(t, res.stdout, "layout: superblock")
	require.Contains(t, res.stdout, "backing device: verified")
	require.Contains(t, res.stdout, "could not save 1 dirty blocks at their newest version (its slot fails its checksum): 7")
	require.Contains(t, res.stderr, "rescue could not save 1 dirty blocks")
	img := readAll(t, r.backing)
	require.True(t, bytes.Equal(make([]byte, blockcache.BlockSize), img[7*blockcache.BlockSize:8*blockcache.BlockSize]))
	requireBlocks(t, r.backing, 7)
}

func TestRescueMisuse(t *testing.T) {
	r := newRig(t, 16<<20, 8<<20)
	res := wantCode(t, 2, "rescue", "--cache", r.cache)
	require.Contains(t, res.stderr, "--cache and --backing are required")
	res = wantCode(t, 2, "rescue", "--cache", r.cache, "--backing", r.backing, "--journal", "5K")
	require.Contains(t, res.stderr, "--journal 5K: want a multiple of 4K from 64K to 128M")
	other := filepath.Join(r.dir, "other.img")
	require.NoError(t, device.Create(other, 16<<20))
	res = wantCode(t, 1, "rescue", "--cache", r.cache, "--backing", other)
	require.Contains(t, res.stderr, "the backing device "+other+" (identity")
	require.Contains(t, res.stderr, "is not the one the cache was formatted for, "+r.backing)
	res = wantCode(t, 1, "rescue", "--cache", r.backing, "--backing", other)
	require.Contains(t, res.stderr, "cannot find the cache's layout: no superblock, and block 2 holds no checkpoint page")
}

// One superblock copy bad: check warns, exit 4; mount repairs it.
func TestCheckDegradedExit4(t *testing.T) {
	r := dirtyRig(t, 3)
	flipByte(t, r.cache, 60) // in superblock copy 0
	res := wantCode(t, 4, "check", "--cache", r.cache, "--backing", r.backing)
	require.Contains(t, res.stdout, "WARNING: degraded redundancy: superblock copy 0 (block 0) is damaged")
	require.Contains(t, res.stdout, "consistent, but with degraded redundancy: the next mount repairs it")
	require.Contains(t, res.stderr, "its redundancy is degraded (1 warning(s)): mount it to repair")

	needFUSE(t)
	d := r.mount(t)
	require.Contains(t, d.stderr.String(), "degraded redundancy, repaired by the post-recovery checkpoint: superblock copy 0")
	require.Equal(t, 0, d.stop(t))
	res = wantCode(t, 0, "check", "--cache", r.cache, "--backing", r.backing)
	require.Contains(t, res.stdout, "\nconsistent\n")
}
