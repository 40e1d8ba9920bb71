package device

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/wbcache/wbcache/device/devicetest"
	"golang.org/x/sys/unix"
)

// allocated is the bytes allocated to path.
func allocated(t *testing.T, path string) int64 {
	t.Helper()
	var st unix.Stat_t
	require.NoError(t, unix.Stat(path, &st))
	return st.Blocks * 512
}

// TestReserve: Reserve allocates a sparse file's holes without changing
// its content.
func TestReserve(t *testing.T) {
	path := newFile(t, 1<<20)
	f := openFile(t, path, Options{})
	data := pattern(BlockSize, 5)
	mustWrite(t, f, data, 300<<10)
	require.Less(t, allocated(t, path), int64(1<<20))
	left, err := f.Reserve()
	require.NoError(t, err)
	require.Zero(t, left)
	require.GreaterOrEqual(t, allocated(t, path), int64(1<<20))
	require.Equal(t, data, mustRead(t, f, 300<<10, BlockSize))
	require.True(t, allZero(mustRead(t, f, 0, 300<<10)))
	st, err := os.Stat(path)
	require.NoError(t, err)
	require.EqualValues(t, 1<<20, st.Size())

	// Again: nothing to do.
	left, err = f.Reserve()
	require.NoError(t, err)
	require.Zero(t, left)

	ro := openFile(t, path, Options{ReadOnly: true})
	_, err = ro.Reserve()
	require.Error(t, err, "a read-only file")
}

// TestReserveNoSpace: on a filesystem with less free space than a sparse
// file's holes, Reserve refuses, saying so, and allocates nothing; so
// does CreateAllocated, which leaves no file behind.
func TestReserveNoSpace(t *testing.T) {
	dir := devicetest.MountTmpfs(t, 8<<20)
	path := filepath.Join(dir, "big.img")
	require.NoError(t, Create(path, 16<<20))
	f := openFile(t, path, Options{})
	free := devicetest.Free(t, dir)
	_, err := f.Reserve()
	var nse *NoSpaceError
	require.ErrorAs(t, err, &nse)
	require.ErrorIs(t, err, unix.ENOSPC)
	require.Equal(t, path, nse.Path)
	require.EqualValues(t, 16<<20, nse.Size)
	require.Equal(t, free, nse.Free)
	require.Contains(t, err.Error(), "16.0 MiB not allocated")
	require.Contains(t, err.Error(), "only 8.0 MiB free")
	require.Zero(t, allocated(t, path), "nothing was allocated")
	require.Equal(t, free, devicetest.Free(t, dir))

	small := filepath.Join(dir, "small.img")
	require.NoError(t, Create(small, 4<<20))
	g := openFile(t, small, Options{})
	left, err := g.Reserve()
	require.NoError(t, err)
	require.Zero(t, left)
	require.GreaterOrEqual(t, allocated(t, small), int64(4<<20))

	err = CreateAllocated(filepath.Join(dir, "new.img"), 8<<20)
	require.ErrorAs(t, err, &nse)
	require.ErrorIs(t, err, unix.ENOSPC)
	require.NoFileExists(t, filepath.Join(dir, "new.img"))
	require.NoError(t, CreateAllocated(filepath.Join(dir, "fits.img"), 2<<20))
	require.GreaterOrEqual(t, allocated(t, filepath.Join(dir, "fits.img")), int64(2<<20))
}

// TestNoSpaceOnFullFilesystem: with the filesystem under a sparse file
// full, a write into a hole fails with ENOSPC saying what is full, and a
// store through a mapping into a hole (which faults) is an error wrapping
// ENOSPC too, not a crash. Both work again once space is freed.
func TestNoSpaceOnFullFilesystem(t *testing.T) {
	dir := devicetest.MountTmpfs(t, 8<<20)
	path := filepath.Join(dir, "f.img")
	require.NoError(t, Create(path, 4<<20))
	f := openFile(t, path, Options{})
	r, err := NewRegion(f, 0, 1<<20)
	require.NoError(t, err)
	defer r.Close()
	mapped, _ := Mapped(r)
	require.True(t, mapped)
	filler := devicetest.Fill(t, dir)

	blk := pattern(BlockSize, 1)
	_, err = f.WriteAt(blk, 2<<20)
	require.ErrorIs(t, err, unix.ENOSPC)
	var nse *NoSpaceError
	require.ErrorAs(t, err, &nse)
	require.Equal(t, path, nse.Path)
	require.Contains(t, err.Error(), "write "+path)
	require.Contains(t, err.Error(), "the filesystem holding the file is full")

	// A store into part of a page faults the hole in: SIGBUS, reported.
	err = r.Update(blk, 8*BlockSize, 0, 100)
	require.ErrorIs(t, err, unix.ENOSPC)
	require.Contains(t, err.Error(), "write (mapped) "+path)
	require.Contains(t, err.Error(), "full")
	// A whole page is written with pwrite.
	err = r.Update(blk, 9*BlockSize, 0, BlockSize)
	require.ErrorIs(t, err, unix.ENOSPC)
	require.Contains(t, err.Error(), "write "+path)
	require.Contains(t, err.Error(), "full")

	require.NoError(t, os.Remove(filler))
	mustWrite(t, f, blk, 2<<20)
	require.NoError(t, r.Update(blk, 8*BlockSize, 0, BlockSize))
	require.Equal(t, blk, mustRead(t, f, 2<<20, BlockSize))
	require.Equal(t, blk, mustRead(t, f, 8*BlockSize, BlockSize))
}

// TestNoSpaceErrorText: the errno stays in the chain under the message.
func TestNoSpaceErrorText(t *testing.T) {
	e := &NoSpaceError{Path: "/c.img", Size: 16 << 20, Allocated: 4 << 20, Free: 1 << 20}
	require.True(t, errors.Is(e, unix.ENOSPC))
	require.Equal(t, "device: /c.img has 12.0 MiB of its 16.0 MiB not allocated (holes) and its filesystem has only 1.0 MiB free: no space left on device", e.Error())
	e.Err = unix.EDQUOT
	require.True(t, errors.Is(e, unix.EDQUOT))
	require.True(t, strings.HasSuffix(e.Error(), "allocating them failed: disk quota exceeded"), e.Error())

	w := &NoSpaceError{Path: "/c.img", Err: unix.ENOSPC}
	require.Equal(t, "no space left on device (the filesystem holding the file is full)", w.Error())
	require.True(t, errors.Is(w, unix.ENOSPC))
}
