package main

import (
	"bytes"
	"io"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/require"
)

// memFile is an in-memory baseFile.
type memFile struct {
	data    []byte
	syncs   int
	punches int
}

func (m *memFile) ReadAt(p []byte, off int64) (int, error) {
	if off >= int64(len(m.data)) {
		return 0, io.EOF
	}
	n := copy(p, m.data[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (m *memFile) WriteAt(p []byte, off int64) (int, error) {
	if end := off + int64(len(p)); end > int64(len(m.data)) {
		m.data = append(m.data, make([]byte, end-int64(len(m.data)))...)
	}
	return copy(m.data[off:], p), nil
}

func (m *memFile) Truncate(size int64) error {
	if size <= int64(len(m.data)) {
		m.data = m.data[:size]
	} else {
		m.data = append(m.data, make([]byte, size-int64(len(m.data)))...)
	}
	return nil
}

func (m *memFile) PunchHole(off, n int64) error {
	m.punches++
	end := min(off+n, int64(len(m.data)))
	if off < end {
		clear(m.data[off:end])
	}
	return nil
}

func (m *memFile) Sync() error { m.syncs++; return nil }

func randBytes(rng *rand.Rand, n int) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = byte(rng.Uint32())
	}
	return p
}

// readAll reads the whole file through the overlay.
func readAll(t *testing.T, o *overlay, f baseFile) []byte {
	t.Helper()
	p := make([]byte, o.size+100)
	n, err := o.read(f, p, 0)
	require.NoError(t, err)
	require.Equal(t, int(o.size), n)
	return p[:n]
}

// setSize resizes the model like truncate.
func setSize(model []byte, size int64) []byte {
	if size <= int64(len(model)) {
		return model[:size]
	}
	return append(model, make([]byte, size-int64(len(model)))...)
}

// TestOverlayModel: random writes (aligned or not), zero ranges and
// truncations read back like a plain byte slice, leave the file underneath
// alone until sync, and sync makes it equal to the model.
func TestOverlayModel(t *testing.T) {
	for seed := range uint64(20) {
		rng := rand.New(rand.NewPCG(seed, 1))
		base := &memFile{data: randBytes(rng, 64<<10+rng.IntN(3000))}
		orig := bytes.Clone(base.data)
		model := bytes.Clone(base.data)
		o := newOverlay(int64(len(base.data)))
		for op := range 300 {
			switch k := rng.IntN(10); {
			case k < 6:
				off := rng.Int64N(int64(len(model)) + 5000)
				p := randBytes(rng, 1+rng.IntN(9000))
				require.NoError(t, o.write(base, p, off))
				if end := off + int64(len(p)); end > int64(len(model)) {
					model = setSize(model, end)
				}
				copy(model[off:], p)
			case k < 8:
				if len(model) == 0 {
					continue
				}
				off := rng.Int64N(int64(len(model)))
				n := min(1+rng.Int64N(20000), int64(len(model))-off)
				require.NoError(t, o.zero(base, off, n))
				clear(model[off : off+n])
			default:
				size := rng.Int64N(96 << 10)
				o.truncate(size)
				model = setSize(model, size)
			}
			require.Equal(t, int64(len(model)), o.size, "seed %d op %d", seed, op)
			if op%25 == 0 {
				require.True(t, bytes.Equal(model, readAll(t, o, base)), "seed %d op %d: read-back", seed, op)
			}
		}
		require.True(t, bytes.Equal(model, readAll(t, o, base)), "seed %d: read-back", seed)
		require.Equal(t, orig, base.data, "seed %d: nothing reaches the file before a sync", seed)
		require.NoError(t, o.sync(base))
		require.True(t, bytes.Equal(model, base.data), "seed %d: the file after sync", seed)
		require.False(t, o.dirty())
		require.True(t, bytes.Equal(model, readAll(t, o, base)), "seed %d: read-back after sync", seed)
	}
}

// TestOverlayPartialSector: a write covering part of a sector holds the
// whole sector, completed from the file underneath.
func TestOverlayPartialSector(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 7))
	base := &memFile{data: randBytes(rng, 8192)}
	orig := bytes.Clone(base.data)
	o := newOverlay(8192)
	require.NoError(t, o.write(base, []byte("0123456789"), 700))
	require.Equal(t, 1, o.sectors(), "one sector held")
	// A cut that keeps it writes the whole sector: the old bytes around
	// the write, the new ones inside.
	kept, dropped, err := o.cut(base, rng, 1)
	require.NoError(t, err)
	require.Equal(t, 1, kept)
	require.Equal(t, 0, dropped)
	want := bytes.Clone(orig)
	copy(want[700:], "0123456789")
	require.Equal(t, want, base.data)
}

// TestOverlayCutSectors: a cut keeps or drops each unsynced sector as a
// whole, with the same choices for the same seed; keep probability 0 and 1
// drop or keep all.
func TestOverlayCutSectors(t *testing.T) {
	const size = 256 << 10
	setup := func() (*memFile, *overlay, []byte, []byte) {
		rng := rand.New(rand.NewPCG(1, 2))
		base := &memFile{data: randBytes(rng, size)}
		old := bytes.Clone(base.data)
		o := newOverlay(size)
		model := bytes.Clone(old)
		for range 200 {
			off := rng.Int64N(size - 9000)
			p := randBytes(rng, 1+rng.IntN(9000))
			require.NoError(t, o.write(base, p, off))
			copy(model[off:], p)
		}
		return base, o, old, model
	}
	cut := func(seed uint64, prob float64) ([]byte, int, int) {
		base, o, _, _ := setup()
		held := o.sectors()
		kept, dropped, err := o.cut(base, rand.New(rand.NewPCG(seed, 0)), prob)
		require.NoError(t, err)
		require.Equal(t, held, kept+dropped)
		require.False(t, o.dirty())
		return base.data, kept, dropped
	}

	_, _, old, model := setup()
	got, kept, dropped := cut(1, 0.5)
	require.Greater(t, kept, 50)
	require.Greater(t, dropped, 50)
	mixed := 0
	for s := 0; s < size; s += sectorSize {
		g, o, m := got[s:s+sectorSize], old[s:s+sectorSize], model[s:s+sectorSize]
		require.True(t, bytes.Equal(g, o) || bytes.Equal(g, m), "sector at %d is neither old nor new", s)
		if !bytes.Equal(o, m) && bytes.Equal(g, m) {
			mixed++
		}
	}
	require.Greater(t, mixed, 0)

	again, _, _ := cut(1, 0.5)
	require.Equal(t, got, again, "same seed, same cut")
	other, _, _ := cut(2, 0.5)
	require.NotEqual(t, got, other, "another seed, another cut")

	all, _, d := cut(3, 1)
	require.Equal(t, 0, d)
	require.Equal(t, model, all)
	none, k, _ := cut(3, 0)
	require.Equal(t, 0, k)
	require.Equal(t, old, none)
}

// TestOverlayTruncate: an unsynced shrink cuts off the bytes past the new
// size, an extension reads as zeros; sync applies both; a cut keeps or
// drops the size change as a whole.
func TestOverlayTruncate(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 3))
	base := &memFile{data: randBytes(rng, 10000)}
	orig := bytes.Clone(base.data)
	o := newOverlay(10000)
	require.NoError(t, o.write(base, []byte("abc"), 5000))
	o.truncate(3000)
	o.truncate(12000)
	want := append(bytes.Clone(orig[:3000]), make([]byte, 9000)...)
	require.Equal(t, want, readAll(t, o, base))
	require.Equal(t, orig, base.data)

	// A cut that drops the size change keeps the old size and content.
	o2 := newOverlay(10000)
	o2.truncate(3000)
	o2.truncate(12000)
	_, _, err := o2.cut(base, rand.New(rand.NewPCG(0, 0)), 0)
	require.NoError(t, err)
	require.Equal(t, orig, base.data)

	require.NoError(t, o.sync(base))
	require.Equal(t, want, base.data)
	require.Equal(t, int64(12000), o.size)
}

// TestOverlayZeroPages: a punched range costs no page data, reads as
// zeros, and is applied as holes where it covers whole pages.
func TestOverlayZeroPages(t *testing.T) {
	rng := rand.New(rand.NewPCG(4, 4))
	base := &memFile{data: randBytes(rng, 64<<10)}
	o := newOverlay(64 << 10)
	require.NoError(t, o.zero(base, 4096, 8*4096))
	for pi := int64(1); pi <= 8; pi++ {
		require.Nil(t, o.pages[pi].data, "page %d", pi)
	}
	// A partial write into a zero page keeps the rest of it zero.
	require.NoError(t, o.write(base, []byte{1, 2, 3}, 3*4096+100))
	got := readAll(t, o, base)
	want := bytes.Clone(base.data)
	clear(want[4096 : 9*4096])
	copy(want[3*4096+100:], []byte{1, 2, 3})
	require.Equal(t, want, got)
	require.NoError(t, o.sync(base))
	require.Equal(t, want, base.data)
	require.Equal(t, 7, base.punches, "whole zero pages become holes")
}
