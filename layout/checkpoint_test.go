package layout_test

import (
	"bytes"
	"math"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wbcache/wbcache/layout"
)

func TestMapPageRoundTrip(t *testing.T) {
	for _, gen := range []uint64{0, 1, math.MaxUint64} {
		for _, index := range []uint32{0, 7, math.MaxUint32} {
			p, entries := sealedMapPage(testUUID, gen, index)
			require.NoError(t, layout.CheckPage(p, layout.MapPage, testUUID, gen, index))
			for i, want := range entries {
				require.Equal(t, want, layout.GetMapEntry(p, i), "entry %d", i)
			}
		}
	}
}

func TestMapEntryValues(t *testing.T) {
	p := newBlock()
	edge := []layout.MapEntry{
		{},
		{LBA: math.MaxUint64, CRC: math.MaxUint32, Valid: true},
		{LBA: 1, CRC: 0, Valid: true},
		{LBA: math.MaxUint64, CRC: math.MaxUint32, Valid: false},
	}
	for i, e := range edge {
		layout.PutMapEntry(p, i, e)
	}
	// The last entry sits flush against the end of the page.
	last := layout.EntriesPerMapPage - 1
	layout.PutMapEntry(p, last, edge[1])
	for i, e := range edge {
		assert.Equal(t, e, layout.GetMapEntry(p, i))
	}
	assert.Equal(t, edge[1], layout.GetMapEntry(p, last))

	// Overwriting an entry replaces all of it, including a cleared Valid.
	layout.PutMapEntry(p, 1, layout.MapEntry{LBA: 5})
	assert.Equal(t, layout.MapEntry{LBA: 5}, layout.GetMapEntry(p, 1))
	// Neighbours are untouched.
	assert.Equal(t, edge[0], layout.GetMapEntry(p, 0))
	assert.Equal(t, edge[2], layout.GetMapEntry(p, 2))
}

func TestMapPageDocLayout(t *testing.T) {
	p := newBlock()
	e := layout.MapEntry{LBA: 0x0102030405060708, CRC: 0xa1b2c3d4, Valid: true}
	layout.PutMapEntry(p, 3, e)
	layout.SealPage(p, layout.MapPage, testUUID, 0x1112131415161718, 0x21222324)

	assert.Equal(t, "WBCM", string(p[0:4]))
	assert.Equal(t, docCRC(testUUID, p, pageCRCOff), le.Uint32(p[4:]), "page CRC is CRC32C(UUID, page)")
	assert.Equal(t, uint64(0x1112131415161718), le.Uint64(p[8:]))
	assert.Equal(t, uint32(0x21222324), le.Uint32(p[16:]))
	assert.Equal(t, make([]byte, 12), p[20:32], "reserved")

	o := pageHeader + 3*16
	assert.Equal(t, e.LBA, le.Uint64(p[o:]))
	assert.Equal(t, e.CRC, le.Uint32(p[o+8:]))
	assert.Equal(t, uint32(1), le.Uint32(p[o+12:]), "flags bit 0 = slot holds a block")
	assert.Equal(t, make([]byte, 3*16), p[pageHeader:o], "entries before are untouched")
	assert.Equal(t, make([]byte, layout.BlockSize-o-16), p[o+16:], "entries after are untouched")

	assert.Equal(t, layout.EntriesPerMapPage, (layout.BlockSize-pageHeader)/16)
	assert.Equal(t, 254, layout.EntriesPerMapPage)
}

func TestBitmapPageRoundTrip(t *testing.T) {
	p := newBlock()
	bm := layout.BitmapPayload(p)
	require.Len(t, bm, layout.BlockSize-pageHeader)
	require.Equal(t, layout.BitsPerBitmapPage, len(bm)*8)
	require.Equal(t, 32512, layout.BitsPerBitmapPage)

	// The payload aliases the page, after the header.
	bm[0] = 0x01
	bm[len(bm)-1] = 0x80
	assert.Equal(t, byte(0x01), p[pageHeader])
	assert.Equal(t, byte(0x80), p[layout.BlockSize-1])

	// Set every third slot's bit: bit j of byte k is slot 8k+j.
	clear(bm)
	for s := 0; s < layout.BitsPerBitmapPage; s += 3 {
		bm[s/8] |= 1 << (s % 8)
	}
	layout.SealPage(p, layout.BitmapPage, testUUID, 42, 9)
	require.NoError(t, layout.CheckPage(p, layout.BitmapPage, testUUID, 42, 9))

	assert.Equal(t, "WBCD", string(p[0:4]))
	assert.Equal(t, docCRC(testUUID, p, pageCRCOff), le.Uint32(p[4:]))
	bm = layout.BitmapPayload(p)
	for s := range layout.BitsPerBitmapPage {
		require.Equal(t, s%3 == 0, bm[s/8]&(1<<(s%8)) != 0, "slot %d", s)
	}

	// All bits set and all bits clear both seal and check.
	for _, fill := range []byte{0x00, 0xff} {
		p := newBlock()
		bm := layout.BitmapPayload(p)
		for i := range bm {
			bm[i] = fill
		}
		layout.SealPage(p, layout.BitmapPage, testUUID, 1, 0)
		require.NoError(t, layout.CheckPage(p, layout.BitmapPage, testUUID, 1, 0))
		assert.Equal(t, bytes.Repeat([]byte{fill}, len(bm)), layout.BitmapPayload(p))
	}
}

func TestSealPageOnlyWritesHeader(t *testing.T) {
	p := bytes.Repeat([]byte{0xee}, layout.BlockSize)
	layout.SealPage(p, layout.MapPage, testUUID, 5, 6)
	assert.Equal(t, bytes.Repeat([]byte{0xee}, layout.BlockSize-pageHeader), p[pageHeader:], "payload untouched")
	assert.Equal(t, make([]byte, 12), p[20:32], "reserved header bytes cleared")
	require.NoError(t, layout.CheckPage(p, layout.MapPage, testUUID, 5, 6))

	// Resealing is idempotent, and resealing with new header values works.
	q := bytes.Clone(p)
	layout.SealPage(q, layout.MapPage, testUUID, 5, 6)
	assert.Equal(t, p, q)
	layout.SealPage(q, layout.BitmapPage, otherUUID, 7, 8)
	require.NoError(t, layout.CheckPage(q, layout.BitmapPage, otherUUID, 7, 8))
	require.Error(t, layout.CheckPage(q, layout.MapPage, testUUID, 5, 6))
}

func TestCheckPageMismatch(t *testing.T) {
	const gen, index = 1000, 3
	mp, _ := sealedMapPage(testUUID, gen, index)
	bp := sealedBitmapPage(testUUID, gen, index)
	pages := map[layout.PageKind][]byte{layout.MapPage: mp, layout.BitmapPage: bp}
	for kind, p := range pages {
		t.Run(kind.String(), func(t *testing.T) {
			require.NoError(t, layout.CheckPage(p, kind, testUUID, gen, index))
			other := layout.BitmapPage
			if kind == layout.BitmapPage {
				other = layout.MapPage
			}
			for name, err := range map[string]error{
				"other kind":     layout.CheckPage(p, other, testUUID, gen, index),
				"other uuid":     layout.CheckPage(p, kind, otherUUID, gen, index),
				"zero uuid":      layout.CheckPage(p, kind, [16]byte{}, gen, index),
				"older gen":      layout.CheckPage(p, kind, testUUID, gen-1, index),
				"newer gen":      layout.CheckPage(p, kind, testUUID, gen+1, index),
				"other index":    layout.CheckPage(p, kind, testUUID, gen, index+1),
				"index 0":        layout.CheckPage(p, kind, testUUID, gen, 0),
				"everything off": layout.CheckPage(p, other, otherUUID, gen+1, index+1),
			} {
				assert.ErrorIs(t, err, layout.ErrCorrupt, name)
			}
		})
	}

	// Pages that are not sealed checkpoint pages at all.
	for name, p := range map[string][]byte{
		"zero":          newBlock(),
		"ones":          bytes.Repeat([]byte{0xff}, layout.BlockSize),
		"journal block": encodeJournal(testUUID, gen, 1, sampleRecords(5)),
		"superblock":    encodeSuperblock(sampleSuperblock(t)),
	} {
		for _, kind := range []layout.PageKind{layout.MapPage, layout.BitmapPage} {
			assert.ErrorIs(t, layout.CheckPage(p, kind, testUUID, gen, index), layout.ErrCorrupt, "%s as %v", name, kind)
		}
	}
}

// TestCheckPageWrongHeaderResealed: a page correctly sealed for another
// generation or index (a stale checkpoint, or a page written to the wrong
// place) has a valid CRC but must still fail.
func TestCheckPageWrongHeaderResealed(t *testing.T) {
	for _, kind := range []layout.PageKind{layout.MapPage, layout.BitmapPage} {
		p := newBlock()
		layout.SealPage(p, kind, testUUID, 7, 2)
		require.NoError(t, layout.CheckPage(p, kind, testUUID, 7, 2))
		assert.ErrorIs(t, layout.CheckPage(p, kind, testUUID, 8, 2), layout.ErrCorrupt)
		assert.ErrorIs(t, layout.CheckPage(p, kind, testUUID, 7, 1), layout.ErrCorrupt)
		assert.ErrorIs(t, layout.CheckPage(p, kind, testUUID, 7, 3), layout.ErrCorrupt)
	}
}

// TestCheckPageEveryBitFlip flips each of the 32768 bits of sealed pages of
// both kinds: every flip must be caught.
func TestCheckPageEveryBitFlip(t *testing.T) {
	const gen, index = 0x0102030405060708, 17
	mp, _ := sealedMapPage(testUUID, gen, index)
	pages := map[layout.PageKind][]byte{
		layout.MapPage:    mp,
		layout.BitmapPage: sealedBitmapPage(testUUID, gen, index),
	}
	for kind, p := range pages {
		t.Run(kind.String(), func(t *testing.T) {
			require.NoError(t, layout.CheckPage(p, kind, testUUID, gen, index))
			for bit := range bitsPerBlock {
				err := layout.CheckPage(flipBit(p, bit), kind, testUUID, gen, index)
				if err == nil {
					t.Fatalf("flipping bit %d (byte %d) was not detected", bit, bit/8)
				}
				require.ErrorIs(t, err, layout.ErrCorrupt, "bit %d", bit)
			}
		})
	}
	// An all-zero page is caught too, in both kinds, with any UUID.
	for _, kind := range []layout.PageKind{layout.MapPage, layout.BitmapPage} {
		require.ErrorIs(t, layout.CheckPage(newBlock(), kind, [16]byte{}, 0, 0), layout.ErrCorrupt)
	}
}

func TestPageWrongLengthPanics(t *testing.T) {
	for _, n := range []int{0, layout.BlockSize - 1, layout.BlockSize + 1} {
		assert.Panics(t, func() { layout.SealPage(make([]byte, n), layout.MapPage, testUUID, 1, 0) }, "SealPage len %d", n)
		assert.Panics(t, func() { _ = layout.CheckPage(make([]byte, n), layout.MapPage, testUUID, 1, 0) }, "CheckPage len %d", n)
	}
}

func TestPageKindString(t *testing.T) {
	assert.Equal(t, "slot-map page", layout.MapPage.String())
	assert.Equal(t, "dirty-bitmap page", layout.BitmapPage.String())
	assert.NotEqual(t, layout.MapPage, layout.BitmapPage)
}
