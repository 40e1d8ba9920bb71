package main

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/wbcache/wbcache/blockcache"
	"github.com/wbcache/wbcache/device"
)

// TestDetachLostBlock: a dirty block whose cache slot fails its checksum,
// in the middle of a run, is lost: check names it (exit 3), detach writes
// back its neighbours, ends naming it and leaves the cache attached.
func TestDetachLostBlock(t *testing.T) {
	dir := t.TempDir()
	backing := filepath.Join(dir, "backing.img")
	cache := filepath.Join(dir, "cache.img")
	require.NoError(t, device.Create(backing, 16<<20))
	wantCode(t, 0, "format", "--cache", cache, "--cache-size", "8M", "--backing", backing)

	ssd, err := device.Open(cache, device.Options{})
	require.NoError(t, err)
	hdd, err := device.Open(backing, device.Options{})
	require.NoError(t, err)
	c, err := blockcache.Open(ssd, hdd, blockcache.Options{CheckpointInterval: -1})
	require.NoError(t, err)
	block := func(lba int) []byte { return bytes.Repeat([]byte{byte(0x40 + lba)}, blockcache.BlockSize) }
	for lba := 0; lba < 6; lba++ {
		_, err := c.WriteAt(block(lba), int64(lba)*blockcache.BlockSize)
		require.NoError(t, err)
	}
	require.NoError(t, c.Sync())
	var slot uint32
	for _, b := range c.DirtyBlocks(nil) {
		if b.LBA == 2 {
			slot = b.Slot
		}
	}
	require.NoError(t, c.Close())
	_, err = ssd.WriteAt(make([]byte, blockcache.BlockSize), c.Geometry().SlotOffset(uint64(slot)))
	require.NoError(t, err)
	require.NoError(t, ssd.Close())
	require.NoError(t, hdd.Close())

	r := wantCode(t, 3, "check", "--cache", cache, "--backing", backing)
	require.Contains(t, r.stdout, "block 2 is lost")

	r = wantCode(t, 1, "detach", "--cache", cache, "--backing", backing)
	require.Contains(t, r.stderr, "1 blocks could not be written back")
	require.Contains(t, r.stderr, ": 2;")
	img, err := os.ReadFile(backing)
	require.NoError(t, err)
	for lba := 0; lba < 6; lba++ {
		got := img[lba*blockcache.BlockSize : (lba+1)*blockcache.BlockSize]
		if lba == 2 {
			require.Equal(t, make([]byte, blockcache.BlockSize), got, "the lost block keeps its older version")
			continue
		}
		require.Equal(t, block(lba), got, "block %d reached the backing file", lba)
	}
	// The cache is still attached: check still names the lost block.
	r = wantCode(t, 3, "check", "--cache", cache, "--backing", backing)
	require.Contains(t, r.stdout, "lost dirty blocks: 2")
}
