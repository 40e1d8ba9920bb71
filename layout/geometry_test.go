package layout_test

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wbcache/wbcache/layout"
)

const (
	kib = int64(1) << 10
	mib = int64(1) << 20
	gib = int64(1) << 30
)

// docGeometry is the region table doc.go describes for a slot count and
// journal size, in plain (wrapping) uint64 arithmetic.
func docGeometry(slots, journalBlocks, deviceBytes uint64) layout.Geometry {
	g := layout.Geometry{
		SlotCount:       slots,
		MapPages:        (slots + layout.EntriesPerMapPage - 1) / layout.EntriesPerMapPage,
		BitmapPages:     (slots + layout.BitsPerBitmapPage - 1) / layout.BitsPerBitmapPage,
		CheckpointStart: 2,
		JournalBlocks:   journalBlocks,
		DeviceSize:      deviceBytes,
	}
	g.CheckpointBlocks = g.MapPages + g.BitmapPages
	g.JournalStart = g.CheckpointStart + 2*g.CheckpointBlocks
	g.DataStart = g.JournalStart + journalBlocks
	return g
}

// ckptBlocks is the size of one checkpoint copy for n slots.
func ckptBlocks(n uint64) uint64 {
	return (n+layout.EntriesPerMapPage-1)/layout.EntriesPerMapPage + (n+layout.BitsPerBitmapPage-1)/layout.BitsPerBitmapPage
}

// minDevice is the smallest device (in bytes) with room for one data slot.
func minDevice(journalBlocks uint64) int64 {
	return int64(2+journalBlocks+2*ckptBlocks(1)+1) * layout.BlockSize
}

// checkGeometry verifies every invariant of a computed geometry. It returns
// an error rather than asserting so the sweeps below stay fast.
func checkGeometry(g layout.Geometry, deviceBytes int64, journalBlocks uint64) error {
	if journalBlocks == 0 {
		journalBlocks = layout.DefaultJournalBlocks(deviceBytes)
		if journalBlocks < 256 || journalBlocks > 32768 {
			return fmt.Errorf("default journal of %d blocks out of [256, 32768]", journalBlocks)
		}
	}
	if g.JournalBlocks != journalBlocks {
		return fmt.Errorf("journal of %d blocks, asked for %d", g.JournalBlocks, journalBlocks)
	}
	if err := g.Validate(deviceBytes); err != nil {
		return fmt.Errorf("Validate: %w", err)
	}
	if want := docGeometry(g.SlotCount, journalBlocks, uint64(deviceBytes)); g != want {
		return fmt.Errorf("geometry %+v, doc.go says %+v", g, want)
	}
	n := g.SlotCount
	if n == 0 {
		return fmt.Errorf("no slots")
	}
	// Checkpoint pages cover every slot, with no spare page.
	if g.MapPages*layout.EntriesPerMapPage < n || (g.MapPages-1)*layout.EntriesPerMapPage >= n {
		return fmt.Errorf("%d map pages for %d slots", g.MapPages, n)
	}
	if g.BitmapPages*layout.BitsPerBitmapPage < n || (g.BitmapPages-1)*layout.BitsPerBitmapPage >= n {
		return fmt.Errorf("%d bitmap pages for %d slots", g.BitmapPages, n)
	}
	if g.CheckpointBlocks != g.MapPages+g.BitmapPages {
		return fmt.Errorf("checkpoint copy of %d blocks holds %d+%d pages", g.CheckpointBlocks, g.MapPages, g.BitmapPages)
	}
	// Regions in order, back to back, none overlapping, all inside the device.
	regions := []struct {
		name       string
		start, end uint64
	}{
		{"superblocks", 0, 2},
		{"checkpoint 0", g.CheckpointStart, g.CheckpointStart + g.CheckpointBlocks},
		{"checkpoint 1", g.CheckpointStart + g.CheckpointBlocks, g.CheckpointStart + 2*g.CheckpointBlocks},
		{"journal", g.JournalStart, g.JournalStart + g.JournalBlocks},
		{"data", g.DataStart, g.DataStart + n},
	}
	for i, r := range regions {
		if r.end <= r.start {
			return fmt.Errorf("region %s is empty: [%d, %d)", r.name, r.start, r.end)
		}
		if i > 0 && r.start != regions[i-1].end {
			return fmt.Errorf("region %s starts at %d, %s ends at %d", r.name, r.start, regions[i-1].name, regions[i-1].end)
		}
	}
	total := uint64(deviceBytes) / layout.BlockSize
	if end := g.DataStart + n; end > total {
		return fmt.Errorf("data ends at block %d, device has %d", end, total)
	}
	// The slot count is the largest that fits.
	if 2+journalBlocks+2*ckptBlocks(n+1)+n+1 <= total {
		return fmt.Errorf("%d slots, but %d would fit in %d blocks", n, n+1, total)
	}
	// Offsets.
	for c := range 2 {
		first := int64(g.CheckpointStart+uint64(c)*g.CheckpointBlocks) * layout.BlockSize
		last := first + int64(g.CheckpointBlocks-1)*layout.BlockSize
		if got := g.MapPageOffset(c, 0); got != first {
			return fmt.Errorf("copy %d map page 0 at %d, want %d", c, got, first)
		}
		if got := g.BitmapPageOffset(c, 0); got != first+int64(g.MapPages)*layout.BlockSize {
			return fmt.Errorf("copy %d bitmap page 0 at %d", c, got)
		}
		if got := g.BitmapPageOffset(c, g.BitmapPages-1); got != last {
			return fmt.Errorf("copy %d last bitmap page at %d, want %d", c, got, last)
		}
		if got := g.MapPageOffset(c, g.MapPages-1); got != g.BitmapPageOffset(c, 0)-layout.BlockSize {
			return fmt.Errorf("copy %d last map page at %d", c, got)
		}
	}
	for _, lsn := range []uint64{0, 1, g.JournalBlocks - 1, g.JournalBlocks, 3*g.JournalBlocks + 5, math.MaxUint64} {
		want := int64(g.JournalStart+lsn%g.JournalBlocks) * layout.BlockSize
		if got := g.JournalOffset(lsn); got != want {
			return fmt.Errorf("journal LSN %d at %d, want %d", lsn, got, want)
		}
	}
	for _, s := range []uint64{0, n / 2, n - 1} {
		off := g.SlotOffset(s)
		if off%layout.BlockSize != 0 || off != int64(g.DataStart+s)*layout.BlockSize || off+layout.BlockSize > deviceBytes {
			return fmt.Errorf("slot %d at offset %d", s, off)
		}
	}
	return nil
}

func TestComputeGeometrySizes(t *testing.T) {
	sizes := []int64{minDevice(256), minDevice(256) + 1, minDevice(256) + 4095, minDevice(256) + 4096}
	for s := 2 * mib; s <= 16*gib; s *= 2 {
		sizes = append(sizes, s-1, s, s+1, s+12345, s+s/2, s+s/2+4095)
	}
	r := rand.New(rand.NewPCG(42, 7))
	for range 300 {
		sizes = append(sizes, minDevice(256)+r.Int64N(16*gib-minDevice(256)))
	}
	sizes = append(sizes, 256*mib-1, 256*mib, 256*mib+layout.BlockSize*256, 16*gib)
	slices.Sort(sizes)

	for _, jb := range []uint64{0, layout.MinJournalBlocks, 17, 255, 256, 4096, 32768} {
		prev := uint64(0)
		for _, size := range sizes {
			if jb != 0 && size < minDevice(jb) {
				continue
			}
			g, err := layout.ComputeGeometry(size, jb)
			require.NoError(t, err, "size %d journal %d", size, jb)
			require.NoError(t, checkGeometry(g, size, jb), "size %d journal %d", size, jb)
			require.GreaterOrEqual(t, g.SlotCount, prev, "slots must not shrink as the device grows (size %d journal %d)", size, jb)
			prev = g.SlotCount
		}
	}

	// At 16 GiB nearly everything is data: metadata is ~1% plus the journal.
	g := mustGeometry(t, 16*gib, 0)
	assert.Equal(t, uint64(16*gib/layout.BlockSize/256), g.JournalBlocks)
	assert.Greater(t, float64(g.SlotCount), 0.985*float64(16*gib/layout.BlockSize))
}

// TestComputeGeometryEveryBlockCount sweeps every device size, one block at
// a time, across the first map- and bitmap-page boundaries and the minimum.
func TestComputeGeometryEveryBlockCount(t *testing.T) {
	limit := uint64(70000)
	if testing.Short() {
		limit = 5000
	}
	for _, jb := range []uint64{0, layout.MinJournalBlocks} {
		for total := uint64(0); total < limit; total++ {
			size := int64(total)*layout.BlockSize + int64(total%layout.BlockSize) // odd tails too
			g, err := layout.ComputeGeometry(size, jb)
			eff := jb
			if eff == 0 {
				eff = layout.DefaultJournalBlocks(size)
			}
			if size < minDevice(eff) {
				require.ErrorIs(t, err, layout.ErrGeometry, "%d blocks journal %d", total, jb)
				require.Contains(t, err.Error(), "too small")
				continue
			}
			require.NoError(t, err, "%d blocks journal %d", total, jb)
			require.NoError(t, checkGeometry(g, size, jb), "%d blocks journal %d", total, jb)
		}
	}
}

func TestComputeGeometryMinimum(t *testing.T) {
	for _, jb := range []uint64{0, layout.MinJournalBlocks, 100, 256, 1000} {
		want := jb
		if jb == 0 {
			want = 256
		}
		minSize := minDevice(want)
		g, err := layout.ComputeGeometry(minSize, jb)
		require.NoError(t, err, "journal %d: a device of %d bytes holds one slot", jb, minSize)
		assert.Equal(t, uint64(1), g.SlotCount)
		require.NoError(t, checkGeometry(g, minSize, jb))

		// Anything smaller is "too small" (not some other complaint).
		for _, size := range []int64{minSize - 1, minSize - layout.BlockSize, minSize - 2*layout.BlockSize} {
			_, err := layout.ComputeGeometry(size, jb)
			require.ErrorIs(t, err, layout.ErrGeometry, "journal %d size %d", jb, size)
			assert.Contains(t, err.Error(), "too small", "journal %d size %d", jb, size)
		}
	}
}

func TestComputeGeometryTooSmall(t *testing.T) {
	for _, size := range []int64{0, 1, 511, 4095, 4096, 8191, 8192, 64 * kib, mib, minDevice(256) - 1} {
		g, err := layout.ComputeGeometry(size, 0)
		require.ErrorIs(t, err, layout.ErrGeometry, "size %d", size)
		assert.Contains(t, err.Error(), "too small", "size %d", size)
		assert.Equal(t, layout.Geometry{}, g)
	}
}

func TestComputeGeometryBadArguments(t *testing.T) {
	for _, size := range []int64{-1, -layout.BlockSize, math.MinInt64} {
		_, err := layout.ComputeGeometry(size, 0)
		require.ErrorIs(t, err, layout.ErrGeometry, "size %d", size)
	}
	for jb := uint64(1); jb < layout.MinJournalBlocks; jb++ {
		_, err := layout.ComputeGeometry(gib, jb)
		require.ErrorIs(t, err, layout.ErrGeometry, "journal %d", jb)
	}
	// Absurd journal sizes must not wrap around into a bogus layout.
	for _, jb := range []uint64{math.MaxUint64, math.MaxUint64 - 1, math.MaxUint64 - 6, 1 << 63, 1 << 62, math.MaxInt64/layout.BlockSize + 1} {
		for _, size := range []int64{100 * mib, 16 * gib, math.MaxInt64} {
			g, err := layout.ComputeGeometry(size, jb)
			require.ErrorIs(t, err, layout.ErrGeometry, "journal %d size %d: got %+v", jb, size, g)
		}
	}
	// A journal that fills the device leaves no room.
	_, err := layout.ComputeGeometry(100*mib, uint64(100*mib/layout.BlockSize))
	require.ErrorIs(t, err, layout.ErrGeometry)
}

func TestDefaultJournalBlocks(t *testing.T) {
	cases := map[int64]uint64{
		0:                   256,
		1:                   256,
		mib:                 256,
		64 * mib:            256,
		64*mib + 64*4096:    257,
		256 * mib:           1024,
		256*mib + 256*4096:  1028,
		512 * mib:           2048,
		gib:                 2048,
		2 * gib:             2048,
		2*gib + 256*4096:    2049,
		4 * gib:             4096,
		16 * gib:            16384,
		32*gib - 4096*256:   32767,
		32 * gib:            32768,
		64 * gib:            32768,
		math.MaxInt64:       32768,
		3*gib + 7*mib + 123: uint64(3*gib+7*mib+123) / 4096 / 256,
	}
	for size, want := range cases {
		assert.Equal(t, want, layout.DefaultJournalBlocks(size), "size %d", size)
	}
	r := rand.New(rand.NewPCG(3, 4))
	for range 1000 {
		size := r.Int64()
		j := layout.DefaultJournalBlocks(size)
		require.GreaterOrEqual(t, j, uint64(256))
		require.LessOrEqual(t, j, uint64(32768))
		require.GreaterOrEqual(t, j, uint64(layout.MinJournalBlocks))
	}
}

// wrappingGeometries are region tables that agree with doc.go only in
// wrap-around uint64 arithmetic: nonsense that must never validate.
func wrappingGeometries() []layout.Geometry {
	return []layout.Geometry{
		// Journal so large that DataStart wraps to before JournalStart.
		docGeometry(25398, math.MaxUint64-1, uint64(100*mib)),
		docGeometry(25397, math.MaxUint64, uint64(100*mib)),
		// Journal so large that the end offset in bytes wraps.
		docGeometry(100, 1<<62, uint64(100*mib)),
		// Slot counts so large that the page counts or end offset wrap.
		docGeometry(math.MaxUint64-100, layout.MinJournalBlocks, uint64(gib)),
		docGeometry(1<<60, layout.MinJournalBlocks, uint64(gib)),
		docGeometry(1<<52, layout.MinJournalBlocks, uint64(gib)),
		docGeometry(1<<52, layout.MinJournalBlocks, math.MaxInt64),
	}
}

func TestValidate(t *testing.T) {
	const size = 5*gib + 3*mib
	g := mustGeometry(t, size, 0)
	end := int64(g.DataStart+g.SlotCount) * layout.BlockSize

	require.NoError(t, g.Validate(size))
	require.NoError(t, g.Validate(end), "regions ending exactly at the device end fit")
	require.NoError(t, g.Validate(16*gib), "a device that grew still holds the regions")
	require.NoError(t, g.Validate(math.MaxInt64))
	for _, dev := range []int64{end - 1, end - layout.BlockSize, size / 2, 0, -1, math.MinInt64} {
		require.ErrorIs(t, g.Validate(dev), layout.ErrGeometry, "device of %d bytes", dev)
	}

	require.ErrorIs(t, layout.Geometry{}.Validate(size), layout.ErrCorrupt)

	// Every single field moved by one, either way, is inconsistent (or, for
	// the slot count going up, no longer fits).
	fields := []struct {
		name string
		ptr  func(*layout.Geometry) *uint64
	}{
		{"SlotCount", func(g *layout.Geometry) *uint64 { return &g.SlotCount }},
		{"MapPages", func(g *layout.Geometry) *uint64 { return &g.MapPages }},
		{"BitmapPages", func(g *layout.Geometry) *uint64 { return &g.BitmapPages }},
		{"CheckpointStart", func(g *layout.Geometry) *uint64 { return &g.CheckpointStart }},
		{"CheckpointBlocks", func(g *layout.Geometry) *uint64 { return &g.CheckpointBlocks }},
		{"JournalStart", func(g *layout.Geometry) *uint64 { return &g.JournalStart }},
		{"JournalBlocks", func(g *layout.Geometry) *uint64 { return &g.JournalBlocks }},
		{"DataStart", func(g *layout.Geometry) *uint64 { return &g.DataStart }},
	}
	for _, f := range fields {
		for _, delta := range []uint64{1, math.MaxUint64 /* -1 */, 1 << 40, 1 << 63} {
			if f.name == "SlotCount" && delta == math.MaxUint64 {
				continue // fewer slots is a consistent layout that wastes space
			}
			bad := g
			*f.ptr(&bad) += delta
			err := bad.Validate(size)
			require.Error(t, err, "%s += %d", f.name, int64(delta))
			requireSentinel(t, err)
		}
	}

	// Slot counts at page boundaries change the checkpoint size: a table
	// that does not follow is rejected.
	for _, n := range []uint64{layout.EntriesPerMapPage, layout.EntriesPerMapPage + 1, layout.BitsPerBitmapPage, layout.BitsPerBitmapPage + 1} {
		ok := docGeometry(n, 256, uint64(gib))
		require.NoError(t, ok.Validate(gib), "%d slots", n)
		stale := ok
		stale.SlotCount++
		if ok.MapPages == docGeometry(n+1, 256, 0).MapPages && ok.BitmapPages == docGeometry(n+1, 256, 0).BitmapPages {
			require.NoError(t, stale.Validate(gib), "%d slots", n+1)
		} else {
			require.ErrorIs(t, stale.Validate(gib), layout.ErrCorrupt, "%d slots", n+1)
		}
	}

	for _, bad := range wrappingGeometries() {
		for _, dev := range []int64{int64(bad.DeviceSize), gib, math.MaxInt64} {
			err := bad.Validate(dev)
			require.Error(t, err, "%+v on %d bytes", bad, dev)
			requireSentinel(t, err)
		}
	}
}

func TestSlotOffsetAligned(t *testing.T) {
	r := rand.New(rand.NewPCG(9, 9))
	for _, size := range []int64{minDevice(256), 10*mib + 1, gib - 1, 16 * gib} {
		g := mustGeometry(t, size, 0)
		for range 1000 {
			s := r.Uint64N(g.SlotCount)
			off := g.SlotOffset(s)
			require.Zero(t, off%layout.BlockSize)
			require.GreaterOrEqual(t, off, int64(g.DataStart)*layout.BlockSize)
			require.LessOrEqual(t, off+layout.BlockSize, size)
		}
		for c := range 2 {
			for i := range g.MapPages {
				require.Zero(t, g.MapPageOffset(c, i)%layout.BlockSize)
			}
		}
	}
}
