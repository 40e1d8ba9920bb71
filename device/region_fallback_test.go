package device

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/wbcache/wbcache/device/devicetest"
	"golang.org/x/sys/unix"
)

// TestRegionUnmappableFile: a file on a filesystem that refuses shared
// mappings (a FUSE filesystem serving it with direct I/O answers ENODEV)
// still gets a region, which writes with WriteAt and says why.
func TestRegionUnmappableFile(t *testing.T) {
	under := t.TempDir()
	mnt := devicetest.MountDirectIO(t, under)
	path := filepath.Join(mnt, "f")
	require.NoError(t, Create(path, 1<<20))
	f, err := Open(path, Options{})
	require.NoError(t, err)
	defer f.Close()

	r, err := NewRegion(f, 64<<10, 256<<10)
	require.NoError(t, err, "a file that cannot be mapped still gets a region")
	mapped, why := Mapped(r)
	require.False(t, mapped)
	require.ErrorIs(t, why, unix.ENODEV)
	require.Contains(t, why.Error(), "mmap "+path)

	blk := bytes.Repeat([]byte{0xab}, BlockSize)
	require.NoError(t, r.Update(blk, 64<<10+BlockSize, 0, BlockSize))
	blk2 := bytes.Repeat([]byte{0xcd}, BlockSize)
	copy(blk2[:100], blk)
	require.NoError(t, r.Update(blk2, 64<<10+BlockSize, 100, BlockSize))
	require.Error(t, r.Update(blk, 64<<10-BlockSize, 0, BlockSize), "outside the region")
	require.NoError(t, f.Sync())

	// The write went through to the file the FUSE filesystem serves.
	got, err := os.ReadFile(filepath.Join(under, "f"))
	require.NoError(t, err)
	require.Equal(t, blk2, got[64<<10+BlockSize:64<<10+2*BlockSize])
	require.NoError(t, r.Close())
}

// TestRegionMmapErrors: the mmap errors that mean "this file cannot be
// mapped" make the region write with WriteAt; the others, which mean the
// process is short of something, are reported.
func TestRegionMmapErrors(t *testing.T) {
	f := openFile(t, newFile(t, 1<<20), Options{})
	defer func() { mmap = unix.Mmap }()
	for _, c := range []struct {
		errno    unix.Errno
		fallback bool
	}{
		{unix.ENODEV, true}, {unix.EOPNOTSUPP, true}, {unix.EINVAL, true},
		{unix.EACCES, true}, {unix.EPERM, true},
		{unix.ENOMEM, false}, {unix.EAGAIN, false}, {unix.ENFILE, false},
	} {
		mmap = func(int, int64, int, int, int) ([]byte, error) { return nil, c.errno }
		r, err := NewRegion(f, 0, 1<<20)
		if !c.fallback {
			require.ErrorIs(t, err, c.errno)
			continue
		}
		require.NoError(t, err, "%v", c.errno)
		mapped, why := Mapped(r)
		require.False(t, mapped)
		require.ErrorIs(t, why, c.errno)
		blk := pattern(BlockSize, byte(c.errno))
		require.NoError(t, r.Update(blk, BlockSize, 0, BlockSize))
		require.Equal(t, blk, mustRead(t, f, BlockSize, BlockSize))
		require.NoError(t, r.Close())
	}
	mmap = unix.Mmap
	r, err := NewRegion(f, 0, 1<<20)
	require.NoError(t, err)
	mapped, why := Mapped(r)
	require.True(t, mapped)
	require.NoError(t, why)
	require.NoError(t, r.Close())
}
