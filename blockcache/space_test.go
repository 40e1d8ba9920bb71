package blockcache

import (
	"bytes"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/wbcache/wbcache/device"
	"github.com/wbcache/wbcache/device/devicetest"
	"github.com/wbcache/wbcache/layout"
)

// allocatedBytes is the bytes allocated to path.
func allocatedBytes(t *testing.T, path string) int64 {
	t.Helper()
	var st unix.Stat_t
	require.NoError(t, unix.Stat(path, &st))
	return st.Blocks * 512
}

// tmpfsCache creates a sparse cache file of size bytes on a tmpfs of 8 MiB
// and a backing file of 64 MiB elsewhere, and opens both.
func tmpfsCache(t *testing.T, size int64) (dir, ssdPath string, ssd, hdd *device.File) {
	dir = devicetest.MountTmpfs(t, 8<<20)
	ssdPath, hddPath := filepath.Join(dir, "cache.img"), filepath.Join(t.TempDir(), "hdd.img")
	require.NoError(t, device.Create(ssdPath, size))
	require.NoError(t, device.Create(hddPath, 64<<20))
	ssd, hdd = openFiles(t, ssdPath, hddPath, false)
	return dir, ssdPath, ssd, hdd
}

// TestFormatReservesCacheFile: Format allocates an existing sparse cache
// file, and refuses, saying why and changing nothing, when its filesystem
// lacks the space.
func TestFormatReservesCacheFile(t *testing.T) {
	dir, ssdPath, ssd, hdd := tmpfsCache(t, 16<<20)
	err := Format(ssd, hdd, FormatOptions{})
	require.ErrorIs(t, err, syscall.ENOSPC)
	require.Contains(t, err.Error(), "no space left on the cache device: device: "+ssdPath+" has 16.0 MiB of its 16.0 MiB not allocated (holes) and its filesystem has only 8.0 MiB free")
	require.Zero(t, allocatedBytes(t, ssdPath), "nothing allocated")
	_, err = ReadSuperblock(ssd)
	require.ErrorIs(t, err, layout.ErrNotFormatted, "nothing written")

	small := filepath.Join(dir, "small.img")
	require.NoError(t, device.Create(small, 4<<20))
	s, err := device.Open(small, device.Options{})
	require.NoError(t, err)
	defer s.Close()
	require.NoError(t, Format(s, hdd, FormatOptions{}))
	require.GreaterOrEqual(t, allocatedBytes(t, small), int64(4<<20))
}

// TestFullFilesystemAllocatedCache: once formatted, the cache file is
// allocated: its filesystem filling up changes nothing, for writes, syncs,
// a close and a reopen.
func TestFullFilesystemAllocatedCache(t *testing.T) {
	dir, ssdPath, ssd, hdd := tmpfsCache(t, 4<<20)
	require.NoError(t, Format(ssd, hdd, FormatOptions{}))
	c, err := Open(ssd, hdd, spaceOpts(nil))
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() }) // unmaps the journal before the tmpfs goes
	devicetest.Fill(t, dir)
	require.Zero(t, devicetest.Free(t, dir))

	want := map[int][]byte{}
	n := int(c.Geometry().SlotCount) * 3 / 4
	for lba := range n {
		_, err := c.WriteAt(block(lba, 0), int64(lba)*BlockSize)
		require.NoError(t, err, "block %d", lba)
		want[lba] = block(lba, 0)
		if lba%100 == 0 {
			require.NoError(t, c.Sync())
		}
	}
	require.NoError(t, c.Sync())
	readBack(t, c, want)
	require.NoError(t, c.Close())

	ssd2, err := device.Open(ssdPath, device.Options{})
	require.NoError(t, err)
	defer ssd2.Close()
	c2, err := Open(ssd2, hdd, spaceOpts(nil))
	require.NoError(t, err, "the filesystem is still full")
	defer c2.Close()
	readBack(t, c2, want)
}

// punchSlots makes slots [from, to) of the cache file at path holes again,
// as they stay on a filesystem that cannot allocate ahead.
func punchSlots(t *testing.T, path string, g layout.Geometry, from, to uint64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	require.NoError(t, err)
	defer f.Close()
	off := g.SlotOffset(from)
	require.NoError(t, unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, g.SlotOffset(to)-off))
}

// TestFullFilesystemSparseCache: where the cache file has holes (its
// filesystem could not allocate it ahead) and that filesystem fills up, a
// write that needs a hole fails with ENOSPC, saying that the filesystem is
// full; the cache stays up, every acknowledged write still reads back,
// syncs work, and once space is freed writes work again.
func TestFullFilesystemSparseCache(t *testing.T) {
	dir, ssdPath, ssd, hdd := tmpfsCache(t, 4<<20)
	require.NoError(t, Format(ssd, hdd, FormatOptions{}))
	c, err := Open(ssd, hdd, spaceOpts(nil))
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() }) // unmaps the journal before the tmpfs goes
	g := c.Geometry()
	punchSlots(t, ssdPath, g, 0, g.SlotCount)

	want := map[int][]byte{}
	write := func(lba, r int) error {
		_, err := c.WriteAt(block(lba, r), int64(lba)*BlockSize)
		if err == nil {
			want[lba] = block(lba, r)
		}
		return err
	}
	for lba := range 50 {
		require.NoError(t, write(lba, 0))
	}
	require.NoError(t, c.Sync())
	for lba := 60; lba < 70; lba++ {
		require.NoError(t, write(lba, 0))
	}
	filler := devicetest.Fill(t, dir)

	err = write(1000, 0)
	require.ErrorIs(t, err, syscall.ENOSPC)
	require.Contains(t, err.Error(), "writing cache slot")
	require.Contains(t, err.Error(), "write "+ssdPath)
	require.Contains(t, err.Error(), "no space left on device (the filesystem holding the file is full)")
	for lba := 1001; lba < 1020; lba++ {
		require.ErrorIs(t, write(lba, 0), syscall.ENOSPC)
	}
	require.Empty(t, c.Stats().Failed, "running out of space does not stop the cache")
	// Blocks that no sync covered yet are rewritten in their own slots.
	inPlace := c.Stats().WritesInPlace
	for lba := 60; lba < 70; lba++ {
		require.NoError(t, write(lba, 1), "block %d rewritten in place", lba)
	}
	require.Equal(t, inPlace+10, c.Stats().WritesInPlace)
	require.NoError(t, c.Sync())
	readBack(t, c, want)

	require.NoError(t, os.Remove(filler))
	for lba := 1000; lba < 1100; lba++ {
		require.NoError(t, write(lba, 2))
	}
	require.NoError(t, c.Sync())
	readBack(t, c, want)
	require.NoError(t, c.Close())

	ssd2, err := device.Open(ssdPath, device.Options{})
	require.NoError(t, err)
	defer ssd2.Close()
	c2, err := Open(ssd2, hdd, spaceOpts(nil))
	require.NoError(t, err)
	defer c2.Close()
	readBack(t, c2, want)
}

// TestOpenRefusesFullFilesystem: a cache file with holes on a full
// filesystem is refused at open, before anything is written, with the
// reason; once space is freed it opens with every block.
func TestOpenRefusesFullFilesystem(t *testing.T) {
	dir, ssdPath, ssd, hdd := tmpfsCache(t, 4<<20)
	require.NoError(t, Format(ssd, hdd, FormatOptions{}))
	c, err := Open(ssd, hdd, spaceOpts(nil))
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() }) // unmaps the journal before the tmpfs goes
	want := map[int][]byte{}
	for lba := range 20 {
		_, err := c.WriteAt(block(lba, 0), int64(lba)*BlockSize)
		require.NoError(t, err)
		want[lba] = block(lba, 0)
	}
	g := c.Geometry()
	require.NoError(t, c.Close())
	punchSlots(t, ssdPath, g, g.SlotCount/2, g.SlotCount)
	filler := devicetest.Fill(t, dir)

	img, err := os.ReadFile(ssdPath)
	require.NoError(t, err)
	ssd2, err := device.Open(ssdPath, device.Options{})
	require.NoError(t, err)
	defer ssd2.Close()
	_, err = Open(ssd2, hdd, spaceOpts(nil))
	require.ErrorIs(t, err, syscall.ENOSPC)
	require.Contains(t, err.Error(), "no space left on the cache device: device: "+ssdPath+" has ")
	require.Contains(t, err.Error(), "its filesystem has only 0 B free")
	after, err := os.ReadFile(ssdPath)
	require.NoError(t, err)
	require.True(t, bytes.Equal(img, after), "a refused open writes nothing")

	require.NoError(t, os.Remove(filler))
	c2, err := Open(ssd2, hdd, spaceOpts(nil))
	require.NoError(t, err)
	defer c2.Close()
	require.GreaterOrEqual(t, allocatedBytes(t, ssdPath), int64(4<<20))
	readBack(t, c2, want)
}
