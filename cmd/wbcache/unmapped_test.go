package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/wbcache/wbcache/device"
	"github.com/wbcache/wbcache/device/devicetest"
)

// blockData is what the tests write at block lba in round n.
func blockData(lba, n int) []byte {
	return bytes.Repeat([]byte(fmt.Sprintf("block %6d round %2d|", lba, n)), 4096/20+1)[:4096]
}

// TestMountUnmappableCacheFile: a cache file on a filesystem that refuses
// shared mappings (a FUSE filesystem serving it with direct I/O) mounts
// and serves, writing its journal with pwrite; the log and status say so.
func TestMountUnmappableCacheFile(t *testing.T) {
	needFUSE(t)
	under := t.TempDir()
	fuseDir := devicetest.MountDirectIO(t, under)
	dir := t.TempDir()
	r := &rig{dir: dir, backing: filepath.Join(dir, "backing.img"), cache: filepath.Join(fuseDir, "ssd.img"),
		mnt: filepath.Join(dir, "mnt"), size: 64 << 20}
	require.NoError(t, device.Create(r.backing, r.size))
	require.NoError(t, os.Mkdir(r.mnt, 0o755))
	wantCode(t, 0, "format", "--cache", r.cache, "--cache-size", "16M", "--backing", r.backing)

	d := r.mount(t, "--log-level", "info")
	require.Contains(t, d.stderr.String(), `msg="journal writes: pwrite (the cache file cannot be mapped: mmap `+r.cache+`: no such device)"`)
	s := r.status(t)
	require.Equal(t, "pwrite", s.JournalWrites)
	st := wantCode(t, 0, "status", r.mnt)
	require.Contains(t, st.stdout, "records written with pwrite: the cache file cannot be mapped")

	want := map[int][]byte{}
	for lba := 0; lba < 400; lba += 2 {
		writeDisk(t, r.disk(), blockData(lba, 0), int64(lba)*4096)
		want[lba] = blockData(lba, 0)
	}
	disk, err := os.OpenFile(r.disk(), os.O_RDWR, 0)
	require.NoError(t, err)
	require.NoError(t, disk.Sync())
	require.NoError(t, disk.Close())
	d.kill9(t)

	// A restart after a crash replays the journal written with pwrite.
	r.mount(t)
	got := readAll(t, r.disk())
	for lba, w := range want {
		require.Equal(t, w, got[lba*4096:(lba+1)*4096], "block %d", lba)
	}
}
