package device

import (
	"bytes"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// mappedRegion maps [64 KiB, 320 KiB) of a new 1 MiB file, closed when
// the test ends.
func mappedRegion(t *testing.T) (*File, string, Region) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "f")
	require.NoError(t, Create(path, 1<<20))
	f, err := Open(path, Options{})
	require.NoError(t, err)
	t.Cleanup(func() { f.Close() })
	r, err := NewRegion(f, 64<<10, 256<<10)
	require.NoError(t, err)
	require.IsType(t, &mapRegion{}, r)
	return f, path, r
}

func TestRegionMappedFile(t *testing.T) {
	f, path, r := mappedRegion(t)

	blk := bytes.Repeat([]byte{0xab}, BlockSize)
	require.NoError(t, r.Update(blk, 64<<10+BlockSize, 0, BlockSize))
	// Only [from, to) is copied.
	blk2 := bytes.Repeat([]byte{0xcd}, BlockSize)
	require.NoError(t, r.Update(blk2, 64<<10+BlockSize, 100, 200))

	// Another descriptor sees it at once: it is in the page cache.
	g, err := Open(path, Options{ReadOnly: true})
	require.NoError(t, err)
	defer g.Close()
	got := make([]byte, BlockSize)
	_, err = g.ReadAt(got, 64<<10+BlockSize)
	require.NoError(t, err)
	want := bytes.Clone(blk)
	copy(want[100:200], blk2[100:200])
	require.Equal(t, want, got)
	require.NoError(t, f.Sync())

	// A whole page is written with pwrite, a part of one stored through
	// the mapping: each sees the other, as the page cache is one.
	page := bytes.Repeat([]byte{0x11}, BlockSize)
	require.NoError(t, r.Update(page, 64<<10+2*BlockSize, 0, BlockSize))
	mr := r.(*mapRegion)
	require.Equal(t, page, mr.mem[64<<10+2*BlockSize-mr.base:][:BlockSize], "the mapping sees a whole-page update")
	part := bytes.Repeat([]byte{0x22}, BlockSize)
	require.NoError(t, r.Update(part, 64<<10+2*BlockSize, 8, 16))
	require.NoError(t, r.Update(page, 64<<10+3*BlockSize, 0, BlockSize))
	_, err = g.ReadAt(got, 64<<10+2*BlockSize)
	require.NoError(t, err)
	want = bytes.Clone(page)
	copy(want[8:16], part[8:16])
	require.Equal(t, want, got)
	_, err = g.ReadAt(got, 64<<10+3*BlockSize)
	require.NoError(t, err)
	require.Equal(t, page, got)

	// Out of the region.
	require.Error(t, r.Update(blk, 64<<10-BlockSize, 0, BlockSize))
	require.Error(t, r.Update(blk, 64<<10+256<<10-100, 0, BlockSize))
	require.Error(t, r.Update(blk, 64<<10, 10, 5))
	require.NoError(t, r.Close())
	require.ErrorIs(t, r.Update(blk, 64<<10, 0, BlockSize), ErrClosed)
	require.ErrorIs(t, r.Close(), ErrClosed)

	_, err = NewRegion(f, 1<<20-BlockSize, 2*BlockSize)
	require.Error(t, err, "a region past the end of the device")
}

// TestRegionWriteThrough: devices that cannot be mapped (O_DIRECT files,
// read-only files, test doubles) take the whole block through WriteAt, so
// fault injection and crash images see every update.
func TestRegionWriteThrough(t *testing.T) {
	m := NewMem(1<<20, [16]byte{9})
	r, err := NewRegion(m, 0, 1<<20)
	require.NoError(t, err)
	require.IsType(t, &writeRegion{}, r)
	blk := bytes.Repeat([]byte{7}, BlockSize)
	require.NoError(t, r.Update(blk, 2*BlockSize, 10, 20))
	got := make([]byte, BlockSize)
	_, err = m.ReadAt(got, 2*BlockSize)
	require.NoError(t, err)
	require.Equal(t, blk, got, "the whole block is written")
	require.Error(t, r.Update(blk, 1<<20-10, 0, BlockSize))
	require.NoError(t, r.Close())

	path := filepath.Join(t.TempDir(), "f")
	require.NoError(t, Create(path, 1<<20))
	for _, o := range []Options{{Direct: true}, {ReadOnly: true}} {
		f, err := Open(path, o)
		require.NoError(t, err)
		r, err := NewRegion(f, 0, 1<<20)
		require.NoError(t, err)
		require.IsType(t, &writeRegion{}, r, "%+v", o)
		require.NoError(t, r.Close())
		require.NoError(t, f.Close())
	}
}

// TestRegionPrepare: Prepare writes whole pages and, on a mapping, leaves
// them mapped writable, so the next partial Update is a plain copy; the
// content is the same as if the pages had been written by Update. A region
// that is not mapped writes nothing and says the pages are not ready.
func TestRegionPrepare(t *testing.T) {
	f, path, r := mappedRegion(t)
	off := int64(64<<10 + 3*BlockSize)
	old := bytes.Repeat([]byte{0x5a}, 2*BlockSize)
	_, err := f.WriteAt(old, off)
	require.NoError(t, err)

	zero := make([]byte, 2*BlockSize)
	ready, err := r.Prepare(zero, off)
	require.NoError(t, err)
	require.True(t, ready, "a mapped region readies its pages")
	g, err := Open(path, Options{ReadOnly: true})
	require.NoError(t, err)
	defer g.Close()
	got := make([]byte, 2*BlockSize)
	_, err = g.ReadAt(got, off)
	require.NoError(t, err)
	require.Equal(t, zero, got, "Prepare writes b over what was there")

	part := bytes.Repeat([]byte{0x77}, BlockSize)
	require.NoError(t, r.Update(part, off+BlockSize, 0, 40))
	_, err = g.ReadAt(got, off)
	require.NoError(t, err)
	want := bytes.Clone(zero)
	copy(want[BlockSize:], part[:40])
	require.Equal(t, want, got)

	require.Error(t, func() error { _, err := r.Prepare(zero, off+1); return err }(), "not page aligned")
	require.Error(t, func() error { _, err := r.Prepare(zero[:100], off); return err }(), "not whole pages")
	require.Error(t, func() error { _, err := r.Prepare(zero, 64<<10+256<<10-BlockSize); return err }(), "past the region")
	require.NoError(t, r.Close())
	_, err = r.Prepare(zero, off)
	require.ErrorIs(t, err, ErrClosed)

	m := NewMem(1<<20, [16]byte{9})
	w, err := NewRegion(m, 0, 1<<20)
	require.NoError(t, err)
	_, err = m.WriteAt(old[:BlockSize], 2*BlockSize)
	require.NoError(t, err)
	ready, err = w.Prepare(zero[:BlockSize], 2*BlockSize)
	require.NoError(t, err)
	require.False(t, ready, "a region that is not mapped has nothing to ready")
	_, err = m.ReadAt(got[:BlockSize], 2*BlockSize)
	require.NoError(t, err)
	require.Equal(t, old[:BlockSize], got[:BlockSize], "and writes nothing")
}
