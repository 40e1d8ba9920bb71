package layout_test

import (
	"bytes"
	"errors"
	"math"
	"math/bits"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/wbcache/wbcache/layout"
)

// The decoders must be total: any 4 KiB input either fails with a layout
// sentinel, or is a byte-exact valid encoding (re-encoding the decoded value
// reproduces the input), so garbage can never pass for metadata.

// addMutations seeds f with b, trimmed to its first trimTo bytes (the rest
// of b is zero, which fitBlock restores), and with single-bit, single-byte
// and length mutations of the trimmed form. Keeping seeds short keeps the
// fuzzer's minimisation of new inputs cheap.
func addMutations(f *testing.F, b []byte, trimTo int) {
	f.Helper()
	require.Equal(f, make([]byte, len(b)-trimTo), b[trimTo:], "seed tail must be zero")
	short := b[:trimTo]
	f.Add(bytes.Clone(short))
	for _, bit := range []int{0, 37, 8*4 + 1, 8*12 + 3, 8*30 + 7, 8*trimTo - 1} {
		f.Add(flipBit(short, bit))
	}
	c := bytes.Clone(short)
	c[len(c)/2] ^= 0xff
	f.Add(c)
	f.Add(short[:len(short)-1])
	f.Add(append(bytes.Clone(short), 0xaa))
}

func FuzzDecodeSuperblock(f *testing.F) {
	sbs := []layout.Superblock{
		sampleSuperblock(f),
		{Geometry: mustGeometry(f, 2<<20, 16)},
		{Generation: math.MaxUint64, Flags: layout.FlagClean, CheckpointCopy: 1, Geometry: mustGeometry(f, 16<<30, 0)},
	}
	for i, s := range sbs {
		b := encodeSuperblock(s)
		addMutations(f, b, 504) // everything past 504 is zero
		if i == 0 {
			f.Add(b) // full length
			f.Add(append(bytes.Clone(b), 1, 2, 3))
		}
		// Hand-edited, re-sealed: each field check behind the CRC.
		for _, edit := range []struct {
			off int
			v   uint32
		}{{8, layout.FormatVersion + 1}, {8, 0}, {40, 512}, {44, 2}, {144, 2}, {48, 0},
			{settingsOff + setMaskOff, layout.SetKnown + 1}, {settingsOff + setModeOff, uint32(layout.ModeNone) + 1}} {
			v := bytes.Clone(b)
			le.PutUint32(v[edit.off:], edit.v)
			resealSuperblock(v)
			f.Add(v[:504])
		}
	}
	f.Add([]byte{})
	f.Add([]byte("WBCACHE1"))
	f.Add(bytes.Repeat([]byte{0xff}, layout.BlockSize))

	f.Fuzz(func(t *testing.T, data []byte) {
		b := fitBlock(data)
		in := bytes.Clone(b)
		s, err := layout.DecodeSuperblock(b)
		if !bytes.Equal(in, b) {
			t.Fatal("DecodeSuperblock modified its input")
		}
		if err != nil {
			requireSentinel(t, err)
			return
		}
		out := newBlock()
		s.Encode(out)
		if !bytes.Equal(out, b) {
			t.Fatalf("decoded superblock re-encodes differently: first difference at byte %d", firstDiff(out, b))
		}
		// What decodes is sane.
		require.LessOrEqual(t, s.CheckpointCopy, uint32(1))
		require.Zero(t, s.Flags&^(layout.FlagClean|layout.FlagOrderBroken))
		require.NoError(t, s.Settings.Validate())
		require.NoError(t, s.Geometry.Validate(int64(s.Geometry.DeviceSize)))
		s2, err := layout.DecodeSuperblock(out)
		require.NoError(t, err)
		require.Equal(t, s, s2)
	})
}

func FuzzDecodeJournalBlock(f *testing.F) {
	for _, n := range []int{0, 1, 2, 6, 50, layout.RecordsPerBlock} {
		b := encodeJournal(testUUID, uint64(n)*1000+1, uint64(n), sampleRecords(n))
		trim := journalHeader + n*layout.RecordSize
		addMutations(f, b, trim)
		// Hand-edited, re-sealed header: bad previous count.
		c := bytes.Clone(b)
		le.PutUint16(c[24:], layout.RecordsPerBlock+1)
		reseal(testUUID, c[:journalHeader], journalCRCOff)
		f.Add(c[:trim])
	}
	f.Add(encodeJournal(otherUUID, 5, 5, sampleRecords(3)))
	f.Add([]byte{})
	f.Add([]byte("WBCJ"))

	prefix := layout.Record{Type: layout.RecFree, Slot: 0xdead, LBA: 0xbeef}
	f.Fuzz(func(t *testing.T, data []byte) {
		b := fitBlock(data)
		in := bytes.Clone(b)
		h, recs, err := layout.DecodeJournalBlock(b, testUUID, []layout.Record{prefix})
		if !bytes.Equal(in, b) {
			t.Fatal("DecodeJournalBlock modified its input")
		}
		if err != nil {
			require.ErrorIs(t, err, layout.ErrCorrupt)
			require.Equal(t, []layout.Record{prefix}, recs, "a rejected block must append nothing")
			require.Equal(t, layout.JournalHeader{}, h)
			return
		}
		require.Equal(t, prefix, recs[0])
		require.Len(t, recs, 1+h.Count)
		require.LessOrEqual(t, h.Count, layout.RecordsPerBlock)
		require.LessOrEqual(t, h.PrevCount, layout.RecordsPerBlock)
		for _, r := range recs[1:] {
			require.Contains(t, []layout.RecordType{layout.RecMap, layout.RecClean, layout.RecFree}, r.Type)
			require.Zero(t, r.Flags&^(layout.RecordDirty|layout.RecordInPlace))
			if r.Type != layout.RecMap {
				require.Zero(t, r.Flags&layout.RecordInPlace)
			}
		}
		// The header and the valid records re-encode to the same bytes.
		out := newBlock()
		layout.EncodeJournalBlock(out, testUUID, h, recs[1:])
		used := journalHeader + h.Count*layout.RecordSize
		if !bytes.Equal(out[:used], b[:used]) {
			t.Fatalf("decoded journal block re-encodes differently: first difference at byte %d", firstDiff(out[:used], b[:used]))
		}
		// And it is a journal block of this cache only.
		_, _, err = layout.DecodeJournalBlock(b, otherUUID, nil)
		require.ErrorIs(t, err, layout.ErrCorrupt)
	})
}

func FuzzCheckPage(f *testing.F) {
	type seed struct {
		page   []byte
		gen    uint64
		index  uint32
		bitmap bool
	}
	// Full pages once; short (zero-tailed) pages with mutations.
	mp, _ := sealedMapPage(testUUID, 12, 3)
	f.Add(mp, uint64(12), uint32(3), false)
	f.Add(sealedBitmapPage(testUUID, 12, 4), uint64(12), uint32(4), true)
	var seeds []seed
	sparse := newBlock()
	layout.PutMapEntry(sparse, 0, layout.MapEntry{LBA: 77, CRC: 88, Valid: true})
	layout.PutMapEntry(sparse, 2, layout.MapEntry{LBA: 1 << 40, CRC: 0xffffffff})
	layout.SealPage(sparse, layout.MapPage, testUUID, 1, 0)
	seeds = append(seeds, seed{sparse, 1, 0, false})
	bm := newBlock()
	layout.BitmapPayload(bm)[3] = 0x81
	layout.SealPage(bm, layout.BitmapPage, testUUID, 99, 2)
	seeds = append(seeds, seed{bm, 99, 2, true})
	empty := newBlock()
	layout.SealPage(empty, layout.BitmapPage, testUUID, math.MaxUint64, math.MaxUint32)
	seeds = append(seeds, seed{empty, math.MaxUint64, math.MaxUint32, true})
	for _, s := range seeds {
		trim := layout.BlockSize
		for trim > pageHeader && s.page[trim-1] == 0 {
			trim--
		}
		p := s.page[:trim]
		f.Add(p, s.gen, s.index, s.bitmap)
		f.Add(p, s.gen+1, s.index, s.bitmap)
		f.Add(p, s.gen, s.index+1, s.bitmap)
		f.Add(p, s.gen, s.index, !s.bitmap)
		for _, bit := range []int{0, 33, 8*8 + 2, 8*16 + 5, 8*25 + 1, 8*trim - 1} {
			f.Add(flipBit(p, bit), s.gen, s.index, s.bitmap)
		}
	}
	f.Add([]byte{}, uint64(0), uint32(0), false)
	f.Add([]byte("WBCM"), uint64(0), uint32(0), false)
	f.Add([]byte("WBCD"), uint64(0), uint32(0), true)

	f.Fuzz(func(t *testing.T, data []byte, gen uint64, index uint32, bitmap bool) {
		kind := layout.MapPage
		if bitmap {
			kind = layout.BitmapPage
		}
		p := fitBlock(data)
		in := bytes.Clone(p)
		err := layout.CheckPage(p, kind, testUUID, gen, index)
		if !bytes.Equal(in, p) {
			t.Fatal("CheckPage modified its input")
		}
		if err != nil {
			require.ErrorIs(t, err, layout.ErrCorrupt)
			return
		}
		// It passed, so its checksum must really verify: sealing a copy
		// with the same parameters changes nothing.
		resealed := bytes.Clone(p)
		layout.SealPage(resealed, kind, testUUID, gen, index)
		if !bytes.Equal(resealed, p) {
			t.Fatalf("page passed CheckPage but resealing changes byte %d", firstDiff(resealed, p))
		}
		require.Equal(t, docCRC(testUUID, p, pageCRCOff), le.Uint32(p[4:]))
		// And it is bound to this cache, generation, index and kind.
		other := layout.MapPage
		if kind == layout.MapPage {
			other = layout.BitmapPage
		}
		require.ErrorIs(t, layout.CheckPage(p, kind, otherUUID, gen, index), layout.ErrCorrupt)
		require.ErrorIs(t, layout.CheckPage(p, kind, testUUID, gen+1, index), layout.ErrCorrupt)
		require.ErrorIs(t, layout.CheckPage(p, kind, testUUID, gen, index+1), layout.ErrCorrupt)
		require.ErrorIs(t, layout.CheckPage(p, other, testUUID, gen, index), layout.ErrCorrupt)
	})
}

// FuzzComputeGeometry: any size and journal either fail with ErrGeometry or
// give a layout meeting every invariant.
func FuzzComputeGeometry(f *testing.F) {
	for _, size := range []int64{-1, 0, 4096, minDevice(256) - 1, minDevice(256), minDevice(16), 1 << 30, 16 << 30, math.MaxInt64} {
		for _, jb := range []uint64{0, 1, 15, 16, 256, 32768, 1 << 40, math.MaxUint64 - 1, math.MaxUint64} {
			f.Add(size, jb)
		}
	}
	f.Fuzz(func(t *testing.T, size int64, jb uint64) {
		g, err := layout.ComputeGeometry(size, jb)
		if err != nil {
			require.ErrorIs(t, err, layout.ErrGeometry)
			require.Equal(t, layout.Geometry{}, g)
			return
		}
		require.NoError(t, checkGeometry(g, size, jb))
	})
}

// FuzzValidate: a region table that Validate accepts really is laid out as
// doc.go says, inside the device, with no arithmetic wrapping around.
func FuzzValidate(f *testing.F) {
	for _, g := range wrappingGeometries() {
		f.Add(g.SlotCount, g.JournalBlocks, g.DeviceSize, int64(g.DeviceSize))
	}
	for _, size := range []int64{minDevice(256), 1 << 30, 16 << 30} {
		g := mustGeometry(f, size, 0)
		f.Add(g.SlotCount, g.JournalBlocks, g.DeviceSize, size)
		f.Add(g.SlotCount+1, g.JournalBlocks, g.DeviceSize, size)
		f.Add(g.SlotCount, g.JournalBlocks, g.DeviceSize, size-4096)
	}
	f.Fuzz(func(t *testing.T, slots, jb, deviceSize uint64, deviceBytes int64) {
		g := docGeometry(slots, jb, deviceSize)
		err := g.Validate(deviceBytes)
		if err != nil {
			if !errors.Is(err, layout.ErrCorrupt) {
				require.ErrorIs(t, err, layout.ErrGeometry)
			}
			return
		}
		require.GreaterOrEqual(t, deviceBytes, int64(0))
		require.GreaterOrEqual(t, jb, uint64(layout.MinJournalBlocks))
		require.Positive(t, slots)
		// Recompute everything with overflow checks.
		hi, mp := bits.Mul64(g.MapPages, layout.EntriesPerMapPage)
		require.True(t, hi != 0 || mp >= slots, "map pages cover the slots")
		hi, bp := bits.Mul64(g.BitmapPages, layout.BitsPerBitmapPage)
		require.True(t, hi != 0 || bp >= slots, "bitmap pages cover the slots")
		end := uint64(2)
		for _, n := range []uint64{g.CheckpointBlocks, g.CheckpointBlocks, g.JournalBlocks, g.SlotCount} {
			var carry uint64
			end, carry = bits.Add64(end, n, 0)
			require.Zero(t, carry, "region table wraps around")
		}
		require.Equal(t, g.DataStart+g.SlotCount, end)
		hi, endBytes := bits.Mul64(end, layout.BlockSize)
		require.Zero(t, hi, "region table wraps around")
		require.LessOrEqual(t, endBytes, uint64(deviceBytes))
	})
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}
