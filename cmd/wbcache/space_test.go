package main

import (
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/wbcache/wbcache/blockcache"
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

// TestFormatOnFullFilesystem: format allocates an existing sparse cache
// file as it does a new one, and refuses, saying why and changing
// nothing, when the file's filesystem has too little free space.
func TestFormatOnFullFilesystem(t *testing.T) {
	if os.Geteuid() != 0 {
		skipLoudly(t, "needs root to mount a small tmpfs")
	}
	dir := devicetest.MountTmpfs(t, 8<<20)
	backing := filepath.Join(t.TempDir(), "backing.img")
	require.NoError(t, device.Create(backing, 64<<20))

	sparse := filepath.Join(dir, "sparse.img")
	require.NoError(t, device.Create(sparse, 16<<20))
	r := wantCode(t, 1, "format", "--cache", sparse, "--backing", backing)
	require.Contains(t, r.stderr, "cache device "+sparse+": no space left on the cache device: device: "+sparse+
		" has 16.0 MiB of its 16.0 MiB not allocated (holes) and its filesystem has only 8.0 MiB free: no space left on device.")
	require.Contains(t, r.stderr, "Free space on the filesystem holding the cache file")
	require.Zero(t, allocatedBytes(t, sparse), "nothing allocated")
	st, err := os.Stat(sparse)
	require.NoError(t, err, "an existing file is kept")
	require.EqualValues(t, 16<<20, st.Size())
	require.NoError(t, os.Remove(sparse))

	newFile := filepath.Join(dir, "new.img")
	r = wantCode(t, 1, "format", "--cache", newFile, "--cache-size", "16M", "--backing", backing)
	require.Contains(t, r.stderr, "no space left on the cache device")
	require.NoFileExists(t, newFile)

	fits := filepath.Join(dir, "fits.img")
	require.NoError(t, device.Create(fits, 4<<20))
	wantCode(t, 0, "format", "--cache", fits, "--backing", backing)
	require.GreaterOrEqual(t, allocatedBytes(t, fits), int64(4<<20), "format allocated the existing file")
}

// tmpfsRig is a rig whose cache file (4 MiB) is on an 8 MiB tmpfs; the
// backing file is elsewhere.
func tmpfsRig(t *testing.T) (*rig, string) {
	t.Helper()
	needFUSE(t)
	fsDir := devicetest.MountTmpfs(t, 8<<20)
	dir := t.TempDir()
	r := &rig{dir: dir, backing: filepath.Join(dir, "backing.img"), cache: filepath.Join(fsDir, "cache.img"),
		mnt: filepath.Join(dir, "mnt"), size: 64 << 20}
	require.NoError(t, device.Create(r.backing, r.size))
	require.NoError(t, os.Mkdir(r.mnt, 0o755))
	require.NoError(t, device.Create(r.cache, 4<<20))
	wantCode(t, 0, "format", "--cache", r.cache, "--backing", r.backing)
	return r, fsDir
}

// geometry reads the cache's layout.
func (r *rig) geometry(t *testing.T) layout.Geometry {
	t.Helper()
	ssd, err := device.Open(r.cache, device.Options{ReadOnly: true})
	require.NoError(t, err)
	defer ssd.Close()
	sb, err := blockcache.ReadSuperblock(ssd)
	require.NoError(t, err)
	return sb.Geometry
}

// punchSlots makes slots [from, to) of the cache file holes, as they stay
// where the filesystem cannot allocate ahead.
func punchSlots(t *testing.T, path string, g layout.Geometry, from, to uint64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	require.NoError(t, err)
	defer f.Close()
	off := g.SlotOffset(from)
	require.NoError(t, unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, g.SlotOffset(to)-off))
}

// TestMountCacheFilesystemFull: a cache whose file has holes (the slots
// its filesystem could not allocate ahead) on a filesystem that fills up:
// a client write that needs a hole fails with ENOSPC, the log says the
// cache device is out of space, the daemon keeps serving and every
// acknowledged write reads back, before and after space is freed. A
// restart on the full filesystem is refused before it serves, saying why;
// once space is freed it serves every block.
func TestMountCacheFilesystemFull(t *testing.T) {
	r, fsDir := tmpfsRig(t)
	g := r.geometry(t)
	d := r.mount(t)
	require.Equal(t, "mmap", r.status(t).JournalWrites)
	require.Contains(t, d.stderr.String(), "journal writes: shared mapping")
	// Slots from the middle on lose their blocks (the cache has written
	// none there yet), then the filesystem fills up.
	punchSlots(t, r.cache, g, g.SlotCount/2, g.SlotCount)
	filler := devicetest.Fill(t, fsDir)

	disk, err := os.OpenFile(r.disk(), os.O_RDWR, 0)
	require.NoError(t, err)
	defer disk.Close()
	acked := map[int][]byte{}
	var werr error
	for lba := 0; lba < int(g.SlotCount) && werr == nil; lba++ {
		if _, werr = disk.WriteAt(blockData(lba, 0), int64(lba)*4096); werr == nil {
			acked[lba] = blockData(lba, 0)
		}
	}
	require.True(t, errors.Is(werr, syscall.ENOSPC), "a write into a hole of the cache file: %v", werr)
	require.Greater(t, len(acked), int(g.SlotCount)/4)
	require.NoError(t, disk.Sync())
	s := r.status(t)
	require.Empty(t, s.Failed, "the cache is still up")
	require.NotZero(t, s.CacheErrors)
	require.Contains(t, d.stderr.String(), `level=WARN msg="no space left on the cache device: `)
	require.Contains(t, d.stderr.String(), "(the filesystem holding the file is full)")
	check := func(what string) {
		buf := make([]byte, 4096)
		for lba, want := range acked {
			_, err := disk.ReadAt(buf, int64(lba)*4096)
			require.NoError(t, err, "%s: block %d", what, lba)
			require.Equal(t, want, buf, "%s: block %d", what, lba)
		}
	}
	check("filesystem full")

	require.NoError(t, os.Remove(filler))
	for lba := 2000; lba < 2050; lba++ {
		_, err := disk.WriteAt(blockData(lba, 1), int64(lba)*4096)
		require.NoError(t, err, "space freed: block %d", lba)
		acked[lba] = blockData(lba, 1)
	}
	require.NoError(t, disk.Sync())
	check("space freed")
	require.NoError(t, disk.Close())
	require.Equal(t, 0, d.stop(t))

	// The restart: holes again in the slots past those in use, the
	// filesystem full.
	used := uint64(len(acked)) + 64
	punchSlots(t, r.cache, g, used, g.SlotCount)
	filler = devicetest.Fill(t, fsDir)
	_, res := r.startMount(t)
	require.NotNil(t, res, "a mount on a full filesystem must not serve")
	require.Equal(t, 1, res.code, "%s", res)
	require.NotContains(t, res.stdout, "serving")
	require.Contains(t, res.stderr, "cache "+r.cache+" cannot be used: no space left on the cache device: device: "+r.cache+" has ")
	require.Contains(t, res.stderr, "Free space on the filesystem holding it, then run this again")

	require.NoError(t, os.Remove(filler))
	r.mount(t)
	disk, err = os.Open(r.disk())
	require.NoError(t, err)
	defer disk.Close()
	check("restarted")
	require.GreaterOrEqual(t, allocatedBytes(t, r.cache), int64(4<<20), "the mount allocated the cache file")
}
