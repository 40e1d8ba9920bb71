package layout_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/wbcache/wbcache/layout"
)

// The tests are written against the format as doc.go describes it: offsets
// and checksum definitions below are taken from the documentation, not from
// the package's unexported constants, so a silent format change fails here.

var le = binary.LittleEndian

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

var (
	testUUID  = [16]byte{0x5a, 0x17, 0x3c, 0x99, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0xf0, 0xe1, 0xd2, 0xc3}
	otherUUID = [16]byte{0x5a, 0x17, 0x3c, 0x99, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0xf0, 0xe1, 0xd2, 0xc2}
)

// Doc offsets.
const (
	sbCRCOff      = 12
	pageCRCOff    = 4
	journalCRCOff = 4
	pageHeader    = 32
	journalHeader = 32
	settingsOff   = 184
)

const bitsPerBlock = layout.BlockSize * 8

// docCRC is CRC32C(seed, b) as doc.go defines it: the CRC32C of the 16 seed
// bytes followed by b with its 4-byte checksum field at off taken as zero.
func docCRC(seed [16]byte, b []byte, off int) uint32 {
	buf := make([]byte, 0, len(seed)+len(b))
	buf = append(buf, seed[:]...)
	buf = append(buf, b...)
	clear(buf[len(seed)+off : len(seed)+off+4])
	return crc32.Checksum(buf, castagnoli)
}

// reseal recomputes the checksum of a hand-edited block, so the edit gets
// past the CRC check and reaches the field checks behind it.
func reseal(seed [16]byte, b []byte, off int) {
	le.PutUint32(b[off:], docCRC(seed, b, off))
}

func resealSuperblock(b []byte) { reseal([16]byte{}, b, sbCRCOff) }

func newBlock() []byte { return make([]byte, layout.BlockSize) }

// flipBit returns a copy of b with bit i (bit i%8 of byte i/8) inverted.
func flipBit(b []byte, i int) []byte {
	c := bytes.Clone(b)
	c[i/8] ^= 1 << (i % 8)
	return c
}

// fitBlock pads with zeros or truncates fuzz input to one block.
func fitBlock(data []byte) []byte {
	b := newBlock()
	copy(b, data)
	return b
}

// requireSentinel fails unless err wraps one of the package's sentinels.
func requireSentinel(t testing.TB, err error) {
	t.Helper()
	for _, s := range []error{layout.ErrCorrupt, layout.ErrNotFormatted, layout.ErrVersion, layout.ErrGeometry} {
		if errors.Is(err, s) {
			return
		}
	}
	require.Failf(t, "error wraps no layout sentinel", "%v", err)
}

func mustGeometry(t testing.TB, deviceBytes int64, journalBlocks uint64) layout.Geometry {
	t.Helper()
	g, err := layout.ComputeGeometry(deviceBytes, journalBlocks)
	require.NoError(t, err)
	return g
}

func sampleSettings() layout.Settings {
	return layout.Settings{
		Mode:          2,
		PromoteAfter:  3,
		LowWatermark:  10,
		HighWatermark: 90,
		Workers:       0xbeef,
		Order:         layout.OrderUnordered,
		MaxDirtyAge:   0xdeadbeef,
		SeqCutoff:     0x0123456789abcdef,
		IdleRate:      0xcafef00d,
		SetMask:       layout.SetKnown,
	}
}

// sampleSuperblock has every field set to a distinct non-zero value.
func sampleSuperblock(t testing.TB) layout.Superblock {
	return layout.Superblock{
		Generation:            0x1122334455667788,
		UUID:                  testUUID,
		Flags:                 layout.FlagClean,
		Geometry:              mustGeometry(t, 3<<30+12345, 0),
		BackingSize:           0x0000_7fff_0000_1000,
		BackingIdentity:       [16]byte{0xb0, 0xb1, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6, 0xb7, 0xb8, 0xb9, 0xba, 0xbb, 0xbc, 0xbd, 0xbe, 0xbf},
		CheckpointCopy:        1,
		CheckpointGeneration:  0x0a0b0c0d0e0f1011,
		ReplayLSN:             0x2122232425262728,
		CheckpointIncarnation: 0x3132333435363738,
		FlushEpoch:            0x4142434445464748,
		Settings:              sampleSettings(),
		BackingDescription:    "/dev/loop7 (loop device on /srv/hdd.img)",
	}
}

func encodeSuperblock(s layout.Superblock) []byte {
	b := newBlock()
	s.Encode(b)
	return b
}

// sampleRecords returns n records cycling through every type and flag
// combination the decoder accepts, with distinct field values.
func sampleRecords(n int) []layout.Record {
	kinds := []struct {
		typ   layout.RecordType
		flags uint8
	}{
		{layout.RecMap, layout.RecordDirty},
		{layout.RecMap, 0},
		{layout.RecClean, 0},
		{layout.RecFree, 0},
		{layout.RecClean, layout.RecordDirty},
		{layout.RecFree, layout.RecordDirty},
		{layout.RecMap, layout.RecordDirty | layout.RecordInPlace},
		{layout.RecMap, layout.RecordInPlace},
	}
	recs := make([]layout.Record, n)
	for i := range recs {
		k := kinds[i%len(kinds)]
		recs[i] = layout.Record{
			Type:  k.typ,
			Flags: k.flags,
			Slot:  uint32(i)*0x01000193 + 7,
			LBA:   uint64(i)*0x9e3779b97f4a7c15 + 1,
			CRC:   uint32(i) ^ 0xa5a5a5a5,
			Epoch: uint32(i) * 3,
		}
	}
	return recs
}

func encodeJournal(uuid [16]byte, lsn, inc uint64, recs []layout.Record) []byte {
	b := newBlock()
	layout.EncodeJournalBlock(b, uuid, layout.JournalHeader{LSN: lsn, Incarnation: inc}, recs)
	return b
}

// sealedMapPage returns a slot-map page with every entry filled.
func sealedMapPage(uuid [16]byte, gen uint64, index uint32) ([]byte, []layout.MapEntry) {
	p := newBlock()
	entries := make([]layout.MapEntry, layout.EntriesPerMapPage)
	for i := range entries {
		entries[i] = layout.MapEntry{
			LBA:   uint64(i)*0x9e3779b97f4a7c15 + uint64(index),
			CRC:   uint32(i)*0x01000193 ^ 0x5555aaaa,
			Valid: i%3 != 0,
		}
		layout.PutMapEntry(p, i, entries[i])
	}
	layout.SealPage(p, layout.MapPage, uuid, gen, index)
	return p, entries
}

// sealedBitmapPage returns a dirty-bitmap page with a pattern of bits set.
func sealedBitmapPage(uuid [16]byte, gen uint64, index uint32) []byte {
	p := newBlock()
	bm := layout.BitmapPayload(p)
	for i := range bm {
		bm[i] = byte(i*37 + 11)
	}
	layout.SealPage(p, layout.BitmapPage, uuid, gen, index)
	return p
}
