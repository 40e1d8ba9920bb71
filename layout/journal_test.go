package layout_test

import (
	"bytes"
	"hash/crc32"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wbcache/wbcache/layout"
)

func TestJournalRoundTrip(t *testing.T) {
	require.Equal(t, 127, layout.RecordsPerBlock)
	require.Equal(t, 32, layout.RecordSize)
	edge := []layout.Record{
		{Type: layout.RecMap, Flags: layout.RecordDirty, Slot: math.MaxUint32, LBA: math.MaxUint64, CRC: math.MaxUint32, Epoch: math.MaxUint32},
		{Type: layout.RecMap, Flags: 0, Slot: 0, LBA: 0, CRC: 0, Epoch: 0},
		{Type: layout.RecClean, Slot: 1, LBA: 2, CRC: 3, Epoch: 4},
		{Type: layout.RecFree, Slot: 5, LBA: 6, CRC: 7, Epoch: 8},
	}
	cases := map[string][]layout.Record{
		"empty":    nil,
		"one MAP":  sampleRecords(1),
		"edge":     edge,
		"two":      sampleRecords(2),
		"all-1":    sampleRecords(layout.RecordsPerBlock - 1),
		"full":     sampleRecords(layout.RecordsPerBlock),
		"all kind": sampleRecords(6),
	}
	for name, recs := range cases {
		for _, hdr := range []layout.JournalHeader{{}, {LSN: 1, Incarnation: 1, PrevCount: 1}, {LSN: 12345, Incarnation: 678, PrevCount: 17},
			{LSN: math.MaxUint64, Incarnation: math.MaxUint64, PrevCount: layout.RecordsPerBlock},
			{LSN: 5, Incarnation: 2, PrevCount: 3, Alone: true}} {
			b := newBlock()
			layout.EncodeJournalBlock(b, testUUID, hdr, recs)
			h, got, err := layout.DecodeJournalBlock(b, testUUID, nil)
			require.NoError(t, err, name)
			want := hdr
			want.Count, want.Reach = len(recs), len(recs)
			assert.Equal(t, want, h, name)
			if len(recs) == 0 {
				assert.Empty(t, got, name)
			} else {
				assert.Equal(t, recs, got, name)
			}

			// Re-encoding the decoded block reproduces it byte for byte.
			again := bytes.Repeat([]byte{0x77}, layout.BlockSize)
			layout.EncodeJournalBlock(again, testUUID, h, got)
			assert.Equal(t, b, again, name)
		}
	}
}

// TestJournalAppendInPlace builds a block record by record on top of a
// stale block of an earlier ring pass, as the engine does: every prefix
// decodes as exactly the records written so far, and writing record i
// changes only its own bytes.
func TestJournalAppendInPlace(t *testing.T) {
	b := encodeJournal(testUUID, 7, 3, sampleRecords(layout.RecordsPerBlock))
	recs := sampleRecords(40)
	for i := range recs {
		recs[i].Slot += 1000 // differ from the stale block
	}
	c := layout.EncodeJournalHeader(b, testUUID, layout.JournalHeader{LSN: 7 + 512, Incarnation: 3, PrevCount: 9})
	h, got, err := layout.DecodeJournalBlock(b, testUUID, nil)
	require.NoError(t, err)
	assert.Zero(t, h.Count, "stale records of the earlier pass do not chain to the new header")
	assert.Empty(t, got)
	for i, r := range recs {
		before := bytes.Clone(b)
		c = layout.EncodeJournalRecord(b, i, c, r)
		lo, hi := journalHeader+i*layout.RecordSize, journalHeader+(i+1)*layout.RecordSize
		assert.Equal(t, before[:lo], b[:lo], "record %d", i)
		assert.Equal(t, before[hi:], b[hi:], "record %d", i)
		h, got, err := layout.DecodeJournalBlock(b, testUUID, nil)
		require.NoError(t, err)
		require.Equal(t, i+1, h.Count)
		require.Equal(t, recs[:i+1], got)
		assert.Equal(t, 9, h.PrevCount)
	}
}

// TestJournalTornMix: a block torn at 512-byte sectors between two states
// of the same open block (a power cut during writeback) decodes as a
// prefix of the newer state's records, never anything else.
func TestJournalTornMix(t *testing.T) {
	recs := sampleRecords(layout.RecordsPerBlock)
	hdr := layout.JournalHeader{LSN: 99, Incarnation: 4, PrevCount: 5}
	states := [][]byte{newBlock()} // never written
	old := encodeJournal(testUUID, 99-64, 4, sampleRecords(80))
	states = append(states, old) // an earlier ring pass
	for _, n := range []int{0, 1, 15, 16, 17, 50, layout.RecordsPerBlock} {
		b := newBlock()
		layout.EncodeJournalBlock(b, testUUID, hdr, recs[:n])
		states = append(states, b)
	}
	const sectors = layout.BlockSize / 512
	rng := rand.New(rand.NewPCG(1, 2))
	for range 20000 {
		mix := newBlock()
		for s := range sectors {
			src := states[rng.IntN(len(states))]
			copy(mix[s*512:(s+1)*512], src[s*512:(s+1)*512])
		}
		h, got, err := layout.DecodeJournalBlock(mix, testUUID, nil)
		if err != nil {
			require.ErrorIs(t, err, layout.ErrCorrupt)
			continue
		}
		if h.LSN == 99-64 {
			require.Len(t, got, h.Count)
			if h.Count > 0 {
				require.Equal(t, sampleRecords(80)[:h.Count], got)
			}
			continue
		}
		require.Equal(t, hdr.LSN, h.LSN)
		require.Len(t, got, h.Count)
		if h.Count > 0 {
			require.Equal(t, recs[:h.Count], got, "a torn block must decode as a prefix")
		}
	}
}

// TestJournalAloneHoles: in a block of records checked alone, records are
// written in any order and each counts once it is whole. A torn mix of
// two states decodes as exactly the records whole in it, in position
// order, with the positions in between counted as holes; records of an
// earlier pass of the ring at the same place never count.
func TestJournalAloneHoles(t *testing.T) {
	recs := sampleRecords(layout.RecordsPerBlock)
	hdr := layout.JournalHeader{LSN: 99, Incarnation: 4, PrevCount: 5, Alone: true}
	stale := encodeJournal(testUUID, 99-64, 4, sampleRecords(layout.RecordsPerBlock))
	rng := rand.New(rand.NewPCG(3, 4))
	for round := range 2000 {
		// Some records written, in any order, over the stale block.
		b := bytes.Clone(stale)
		hc := layout.EncodeJournalHeader(b, testUUID, hdr)
		written := make([]bool, layout.RecordsPerBlock)
		for i := range written {
			if rng.IntN(3) > 0 {
				written[i] = true
				layout.EncodeJournalRecord(b, i, hc, recs[i])
			}
		}
		// A power cut tears it at sectors against the never-written
		// (stale) state; sector 0 holds the header, kept.
		mix := bytes.Clone(b)
		if round%2 == 1 {
			for s := 1; s < layout.BlockSize/512; s++ {
				if rng.IntN(2) == 0 {
					copy(mix[s*512:(s+1)*512], stale[s*512:(s+1)*512])
				}
			}
		}
		h, got, err := layout.DecodeJournalBlock(mix, testUUID, nil)
		require.NoError(t, err)
		var want []layout.Record
		reach := 0
		for i, w := range written {
			lo := journalHeader + i*layout.RecordSize
			if w && bytes.Equal(mix[lo:lo+layout.RecordSize], b[lo:lo+layout.RecordSize]) {
				want = append(want, recs[i])
				reach = i + 1
			}
		}
		require.Equal(t, want, got, "round %d", round)
		require.Equal(t, len(want), h.Count)
		require.Equal(t, reach, h.Reach)
		require.True(t, h.Alone)
	}

	// The same records chained stop at the first hole.
	b := newBlock()
	c := layout.EncodeJournalHeader(b, testUUID, layout.JournalHeader{LSN: 1})
	c = layout.EncodeJournalRecord(b, 0, c, recs[0])
	layout.EncodeJournalRecord(b, 2, c, recs[2])
	h, got, err := layout.DecodeJournalBlock(b, testUUID, nil)
	require.NoError(t, err)
	assert.Equal(t, recs[:1], got)
	assert.Equal(t, 1, h.Reach)
}

func TestJournalEveryRecordKind(t *testing.T) {
	kinds := []struct {
		typ   layout.RecordType
		flags uint8
	}{
		{layout.RecMap, 0}, {layout.RecMap, layout.RecordDirty},
		{layout.RecClean, 0}, {layout.RecClean, layout.RecordDirty},
		{layout.RecFree, 0}, {layout.RecFree, layout.RecordDirty},
		{layout.RecMap, layout.RecordInPlace}, {layout.RecMap, layout.RecordDirty | layout.RecordInPlace},
	}
	for _, k := range kinds {
		r := layout.Record{Type: k.typ, Flags: k.flags, Slot: 9, LBA: 10, CRC: 11, Epoch: 12}
		b := encodeJournal(testUUID, 1, 1, []layout.Record{r})
		_, got, err := layout.DecodeJournalBlock(b, testUUID, nil)
		require.NoError(t, err, "%v flags %d", k.typ, k.flags)
		require.Equal(t, []layout.Record{r}, got)
	}
}

func TestJournalDocLayout(t *testing.T) {
	recs := sampleRecords(3)
	b := newBlock()
	layout.EncodeJournalBlock(b, testUUID, layout.JournalHeader{LSN: 0x0102030405060708, Incarnation: 0x1112131415161718, PrevCount: 0x55}, recs)

	assert.Equal(t, "WBCJ", string(b[0:4]))
	assert.Equal(t, docCRC(testUUID, b[:journalHeader], journalCRCOff), le.Uint32(b[4:]), "header CRC is CRC32C(UUID, header)")
	assert.Equal(t, uint64(0x0102030405060708), le.Uint64(b[8:]))
	assert.Equal(t, uint64(0x1112131415161718), le.Uint64(b[16:]))
	assert.Equal(t, uint16(0x55), le.Uint16(b[24:]))
	assert.Equal(t, make([]byte, 6), b[26:32], "reserved")
	chain := le.Uint32(b[4:])
	for i, r := range recs {
		o := b[journalHeader+i*32:]
		assert.Equal(t, byte(r.Type), o[0])
		assert.Equal(t, r.Flags, o[1])
		assert.Equal(t, []byte{0, 0}, o[2:4], "reserved")
		assert.Equal(t, r.Slot, le.Uint32(o[4:]))
		assert.Equal(t, r.LBA, le.Uint64(o[8:]))
		assert.Equal(t, r.CRC, le.Uint32(o[16:]))
		assert.Equal(t, r.Epoch, le.Uint32(o[20:]))
		assert.Equal(t, []byte{0, 0, 0, 0}, o[24:28], "reserved")
		chain = crc32.Update(chain, crc32.MakeTable(crc32.Castagnoli), o[:28])
		assert.Equal(t, chain, le.Uint32(o[28:]), "record %d CRC chains from the previous one", i)
	}
	assert.Equal(t, make([]byte, layout.BlockSize-journalHeader-3*32), b[journalHeader+3*32:], "unused record space is zero")
	assert.Equal(t, layout.RecordsPerBlock, (layout.BlockSize-journalHeader)/32)
}

func TestJournalDecodeAppends(t *testing.T) {
	prefix := []layout.Record{{Type: layout.RecFree, Slot: 1000}}
	recs := sampleRecords(10)
	b := encodeJournal(testUUID, 3, 1, recs)
	_, got, err := layout.DecodeJournalBlock(b, testUUID, nil)
	require.NoError(t, err)
	require.Equal(t, recs, got)

	base := append(make([]layout.Record, 0, 64), prefix...)
	_, got, err = layout.DecodeJournalBlock(b, testUUID, base)
	require.NoError(t, err)
	require.Equal(t, append(append([]layout.Record{}, prefix...), recs...), got)

	// Several blocks accumulate into one slice, in order.
	var all []layout.Record
	var want []layout.Record
	for lsn := uint64(0); lsn < 5; lsn++ {
		rs := sampleRecords(int(lsn) * 30)
		want = append(want, rs...)
		var h layout.JournalHeader
		h, all, err = layout.DecodeJournalBlock(encodeJournal(testUUID, lsn, 2, rs), testUUID, all)
		require.NoError(t, err)
		require.Equal(t, lsn, h.LSN)
		require.Equal(t, len(rs), h.Count)
	}
	require.Equal(t, want, all)
}

func TestJournalWrongUUID(t *testing.T) {
	for _, n := range []int{0, 1, layout.RecordsPerBlock} {
		b := encodeJournal(testUUID, 1, 1, sampleRecords(n))
		for _, u := range [][16]byte{otherUUID, {}} {
			prefix := sampleRecords(2)
			h, got, err := layout.DecodeJournalBlock(b, u, prefix)
			require.ErrorIs(t, err, layout.ErrCorrupt)
			assert.Equal(t, layout.JournalHeader{}, h)
			assert.Equal(t, prefix, got, "a rejected block appends nothing")
		}
	}
}

func TestJournalNotAJournalBlock(t *testing.T) {
	page, _ := sealedMapPage(testUUID, 1, 0)
	for name, b := range map[string][]byte{
		"zero":       newBlock(),
		"ones":       bytes.Repeat([]byte{0xff}, layout.BlockSize),
		"superblock": encodeSuperblock(sampleSuperblock(t)),
		"map page":   page,
	} {
		_, got, err := layout.DecodeJournalBlock(b, testUUID, nil)
		assert.ErrorIs(t, err, layout.ErrCorrupt, name)
		assert.Empty(t, got, name)
	}
}

// TestJournalFieldChecks hand-edits a block and fixes up its checksums:
// the field checks behind them must still reject it and append nothing.
func TestJournalFieldChecks(t *testing.T) {
	recs := sampleRecords(10)
	rec := func(i, off int) int { return journalHeader + i*layout.RecordSize + off }
	cases := map[string]func([]byte){
		"prev count 128":  func(b []byte) { le.PutUint16(b[24:], layout.RecordsPerBlock+1) },
		"prev count max":  func(b []byte) { le.PutUint16(b[24:], math.MaxUint16) },
		"header reserved": func(b []byte) { b[30] = 1 },
		"type 0 first":    func(b []byte) { b[rec(0, 0)] = 0 },
		"type 4 last":     func(b []byte) { b[rec(9, 0)] = 4 },
		"type 255":        func(b []byte) { b[rec(5, 0)] = 255 },
		"flag 4":          func(b []byte) { b[rec(3, 1)] = 4 },
		"in place CLEAN":  func(b []byte) { b[rec(2, 1)] = layout.RecordInPlace },
		"in place FREE":   func(b []byte) { b[rec(3, 1)] = layout.RecordInPlace },
		"flag 0x80":       func(b []byte) { b[rec(9, 1)] = 0x80 },
		"rec reserved":    func(b []byte) { b[rec(2, 2)] = 1 },
		"rec reserved 2":  func(b []byte) { b[rec(4, 25)] = 1 },
	}
	for name, edit := range cases {
		t.Run(name, func(t *testing.T) {
			b := encodeJournal(testUUID, 77, 3, recs)
			edit(b)
			// Re-seal the header and re-chain every record.
			reseal(testUUID, b[:journalHeader], journalCRCOff)
			c := le.Uint32(b[4:])
			for i := range recs {
				o := b[rec(i, 0):rec(i+1, 0)]
				c = crc32.Update(c, crc32.MakeTable(crc32.Castagnoli), o[:28])
				le.PutUint32(o[28:], c)
			}
			prefix := make([]layout.Record, 1, 300)
			prefix[0] = layout.Record{Type: layout.RecMap, Slot: 99}
			h, got, err := layout.DecodeJournalBlock(b, testUUID, prefix)
			require.ErrorIs(t, err, layout.ErrCorrupt)
			assert.Equal(t, layout.JournalHeader{}, h)
			assert.Equal(t, prefix, got, "a rejected block must not leave records behind")
		})
	}
}

// TestJournalStaleHeader: the LSN, incarnation and previous-count checks
// belong to the caller, so a valid block for another position decodes and
// reports its own header fields.
func TestJournalStaleHeader(t *testing.T) {
	recs := sampleRecords(4)
	b := encodeJournal(testUUID, 1000, 5, recs)
	h, got, err := layout.DecodeJournalBlock(b, testUUID, nil)
	require.NoError(t, err)
	assert.Equal(t, uint64(1000), h.LSN)
	assert.Equal(t, uint64(5), h.Incarnation)
	assert.Equal(t, 4, h.Count)
	assert.Equal(t, recs, got)

	g := mustGeometry(t, gib, 0)
	// Blocks one ring apart share a position; only the LSN tells them apart.
	assert.Equal(t, g.JournalOffset(1000), g.JournalOffset(1000+g.JournalBlocks))
}

// TestJournalEveryBitFlip flips each of the 32768 bits of encoded blocks:
// a flip in the header is caught, a flip in record i cuts the records at
// or before i, and a flip in unused space changes nothing. Never does a
// flip produce a record that was not written.
func TestJournalEveryBitFlip(t *testing.T) {
	for name, recs := range map[string][]layout.Record{
		"empty": nil,
		"some":  sampleRecords(7),
		"full":  sampleRecords(layout.RecordsPerBlock),
	} {
		t.Run(name, func(t *testing.T) {
			good := encodeJournal(testUUID, 0x0a0b0c0d, 0x10, recs)
			for bit := range bitsPerBlock {
				byteOff := bit / 8
				h, got, err := layout.DecodeJournalBlock(flipBit(good, bit), testUUID, nil)
				switch {
				case byteOff < journalHeader:
					require.ErrorIs(t, err, layout.ErrCorrupt, "bit %d", bit)
				case (byteOff-journalHeader)/layout.RecordSize < len(recs):
					i := (byteOff - journalHeader) / layout.RecordSize
					require.NoError(t, err, "bit %d", bit)
					require.LessOrEqual(t, h.Count, i, "flip in record %d not detected (bit %d)", i, bit)
					require.Len(t, got, h.Count)
					if h.Count > 0 {
						require.Equal(t, recs[:h.Count], got)
					}
				default:
					require.NoError(t, err, "bit %d", bit)
					require.Equal(t, len(recs), h.Count, "bit %d", bit)
				}
			}
		})
	}
}

func TestJournalEncodePanics(t *testing.T) {
	assert.Panics(t, func() {
		layout.EncodeJournalBlock(newBlock(), testUUID, layout.JournalHeader{LSN: 1}, sampleRecords(layout.RecordsPerBlock+1))
	})
	assert.Panics(t, func() { layout.EncodeJournalRecord(newBlock(), layout.RecordsPerBlock, 0, sampleRecords(1)[0]) })
	assert.Panics(t, func() { layout.EncodeJournalRecord(newBlock(), -1, 0, sampleRecords(1)[0]) })
	assert.Panics(t, func() {
		layout.EncodeJournalHeader(newBlock(), testUUID, layout.JournalHeader{PrevCount: layout.RecordsPerBlock + 1})
	})
	for _, n := range []int{0, layout.BlockSize - 1, layout.BlockSize + 1} {
		assert.Panics(t, func() { layout.EncodeJournalBlock(make([]byte, n), testUUID, layout.JournalHeader{}, nil) }, "Encode len %d", n)
		assert.Panics(t, func() { _, _, _ = layout.DecodeJournalBlock(make([]byte, n), testUUID, nil) }, "Decode len %d", n)
	}
}

func TestRecordTypeString(t *testing.T) {
	assert.Equal(t, "MAP", layout.RecMap.String())
	assert.Equal(t, "CLEAN", layout.RecClean.String())
	assert.Equal(t, "FREE", layout.RecFree.String())
	assert.Equal(t, "type(0)", layout.RecordType(0).String())
	assert.Equal(t, "type(200)", layout.RecordType(200).String())
}
