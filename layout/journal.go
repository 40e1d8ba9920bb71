package layout

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
)

// RecordType is the kind of a journal record.
type RecordType uint8

// Journal record types.
const (
	RecMap   RecordType = 1 // slot holds LBA with CRC (flag dirty)
	RecClean RecordType = 2 // slot's block is on the backing device
	RecFree  RecordType = 3 // slot no longer holds LBA
)

func (t RecordType) String() string {
	switch t {
	case RecMap:
		return "MAP"
	case RecClean:
		return "CLEAN"
	case RecFree:
		return "FREE"
	}
	return fmt.Sprintf("type(%d)", uint8(t))
}

// MAP record flags.
const (
	// RecordDirty marks a block the backing device does not hold.
	RecordDirty = 1 << 0
	// RecordInPlace marks a rewrite of the slot that already holds the
	// block, journaled before its data is written: if the slot's data
	// does not match, this record alone is void and the one before it
	// stands.
	RecordInPlace = 1 << 1
	// RecordKeepOld marks a MAP whose block's previous dirty version, in
	// slot Old, stays as an older version (ordered write-back): it is
	// written back before this one and then freed, not unmapped now.
	RecordKeepOld = 1 << 2
)

// Record is one metadata change.
type Record struct {
	Type  RecordType
	Flags uint8
	Slot  uint32
	LBA   uint64
	CRC   uint32
	Epoch uint32
	Old   uint32 // with RecordKeepOld: the slot of the version kept
}

// JournalHeader is the header of a journal block.
type JournalHeader struct {
	LSN         uint64
	Incarnation uint64
	// PrevCount is how many records the block before this one (LSN-1)
	// held when this one was started. In a chained block, replay
	// continues past a block only into a next block that agrees, so a
	// torn block cannot leave a hole; in either kind, a disagreement that
	// a completed sync covered is damage (see the package documentation).
	PrevCount int
	// Alone marks a block whose records are checked each on its own (the
	// CRC of every record continues from the header's), so that writers
	// can place records side by side without waiting for each other; a
	// position that fails its check is a hole, and the records after it
	// still count. Without it the records are chained (format versions
	// up to 4).
	Alone bool
	// Count is the number of valid records found by DecodeJournalBlock,
	// and Reach the position after the last of them: they differ when a
	// block of records checked alone has holes. EncodeJournalHeader
	// ignores both.
	Count, Reach int
}

// EncodeJournalHeader writes the 32-byte header of a journal block into
// b[:32] and returns the checksum that chains its first record.
func EncodeJournalHeader(b []byte, uuid [16]byte, h JournalHeader) uint32 {
	if h.PrevCount < 0 || h.PrevCount > RecordsPerBlock {
		panic("layout: journal header previous count out of range")
	}
	le := binary.LittleEndian
	hb := b[:journalHeaderSize]
	clear(hb)
	le.PutUint32(hb[0:], journMagic)
	le.PutUint64(hb[8:], h.LSN)
	le.PutUint64(hb[16:], h.Incarnation)
	le.PutUint16(hb[24:], uint16(h.PrevCount))
	if h.Alone {
		hb[26] = headerAlone
	}
	c := seededCRC(uuid, hb, 4)
	le.PutUint32(hb[4:], c)
	return c
}

// RecordOffset is the offset of record i in a journal block.
func RecordOffset(i int) int { return journalHeaderSize + i*RecordSize }

// headerAlone is the header's byte 26 in a block of records checked alone.
const headerAlone = 1

// EncodeJournalRecord writes record i of a journal block into b, chained
// to chain, and returns the checksum that chains record i+1. In a chained
// block chain is the header's checksum for record 0, else the previous
// record's return value; in a block of records checked alone it is the
// header's checksum for every record. Records are appended in place:
// writing record i changes only its own 32 bytes.
func EncodeJournalRecord(b []byte, i int, chain uint32, r Record) uint32 {
	checkLen(b)
	if i < 0 || i >= RecordsPerBlock {
		panic("layout: journal record index out of range")
	}
	return EncodeRecord(b[RecordOffset(i):RecordOffset(i+1)], chain, r)
}

// EncodeRecord writes one record into o (RecordSize bytes), its CRC
// continuing from chain, and returns that CRC: what EncodeJournalRecord
// writes at a record's place in a block, for a writer that copies the
// record there itself.
func EncodeRecord(o []byte, chain uint32, r Record) uint32 {
	if len(o) != RecordSize {
		panic("layout: a record is RecordSize bytes")
	}
	le := binary.LittleEndian
	clear(o)
	o[0], o[1] = byte(r.Type), r.Flags
	le.PutUint32(o[4:], r.Slot)
	le.PutUint64(o[8:], r.LBA)
	le.PutUint32(o[16:], r.CRC)
	le.PutUint32(o[20:], r.Epoch)
	if r.Flags&RecordKeepOld != 0 {
		le.PutUint32(o[24:], r.Old)
	}
	c := crc32.Update(chain, castagnoli, o[:recordCRCOff])
	le.PutUint32(o[recordCRCOff:], c)
	return c
}

// EncodeJournalBlock fills a whole 4 KiB journal block: header and recs,
// the rest zero. len(recs) must not exceed RecordsPerBlock.
func EncodeJournalBlock(b []byte, uuid [16]byte, h JournalHeader, recs []Record) {
	checkLen(b)
	if len(recs) > RecordsPerBlock {
		panic("layout: too many records for one journal block")
	}
	clear(b)
	hc := EncodeJournalHeader(b, uuid, h)
	c := hc
	for i, r := range recs {
		c = EncodeJournalRecord(b, i, c, r)
		if h.Alone {
			c = hc
		}
	}
}

// DecodeJournalBlock verifies a journal block's header and appends its
// valid records to recs, in the order of their positions. In a chained
// block they are those from the first on whose chained checksums hold,
// up to the first that fails (a record never written, or torn). In a
// block of records checked alone they are all those whose own checksums
// hold; the others are holes (never written, torn, or left from an
// earlier pass of the ring, whose header differs). A bad header, or a
// record whose checksum holds but whose fields do not, wraps ErrCorrupt
// and returns recs as it was passed in: to replay, it marks the end of
// the log.
func DecodeJournalBlock(b []byte, uuid [16]byte, recs []Record) (JournalHeader, []Record, error) {
	checkLen(b)
	h, err := DecodeJournalHeader(b, uuid)
	if err != nil {
		return JournalHeader{}, recs, err
	}
	le := binary.LittleEndian
	hc := le.Uint32(b[4:])
	c := hc
	n := len(recs)
	for i := 0; i < RecordsPerBlock; i++ {
		o := b[RecordOffset(i):RecordOffset(i+1)]
		next := crc32.Update(c, castagnoli, o[:recordCRCOff])
		if le.Uint32(o[recordCRCOff:]) != next {
			if h.Alone {
				continue
			}
			break
		}
		if !h.Alone {
			c = next
		}
		h.Reach = i + 1
		r := Record{
			Type:  RecordType(o[0]),
			Flags: o[1],
			Slot:  le.Uint32(o[4:]),
			LBA:   le.Uint64(o[8:]),
			CRC:   le.Uint32(o[16:]),
			Epoch: le.Uint32(o[20:]),
		}
		keep := r.Flags&RecordKeepOld != 0
		if keep {
			r.Old = le.Uint32(o[24:])
		}
		if r.Type < RecMap || r.Type > RecFree || r.Flags&^(RecordDirty|RecordInPlace|RecordKeepOld) != 0 ||
			(r.Type != RecMap && r.Flags&(RecordInPlace|RecordKeepOld) != 0) ||
			(keep && (r.Flags&(RecordDirty|RecordInPlace) != RecordDirty || r.Old == r.Slot)) ||
			o[2] != 0 || o[3] != 0 || (!keep && !allZero(o[24:recordCRCOff])) {
			return JournalHeader{}, recs[:n], fmt.Errorf("journal block %d record %d: %v flags %#x: %w", h.LSN, i, r.Type, r.Flags, ErrCorrupt)
		}
		recs = append(recs, r)
	}
	h.Count = len(recs) - n
	return h, recs, nil
}

// DecodeJournalHeader verifies and decodes only the 32-byte header of a
// journal block (Count is left zero): the header is written whole, with
// the block's first record, so a valid one proves that the block was
// started, whatever became of its records.
func DecodeJournalHeader(b []byte, uuid [16]byte) (JournalHeader, error) {
	if len(b) < journalHeaderSize {
		panic("layout: journal header buffer too short")
	}
	le := binary.LittleEndian
	if le.Uint32(b[0:]) != journMagic {
		return JournalHeader{}, fmt.Errorf("journal block: bad magic: %w", ErrCorrupt)
	}
	hb := b[:journalHeaderSize]
	c := seededCRC(uuid, hb, 4)
	if got := le.Uint32(hb[4:]); got != c {
		return JournalHeader{}, fmt.Errorf("journal block: header checksum %08x, want %08x: %w", got, c, ErrCorrupt)
	}
	h := JournalHeader{
		LSN:         le.Uint64(hb[8:]),
		Incarnation: le.Uint64(hb[16:]),
		PrevCount:   int(le.Uint16(hb[24:])),
		Alone:       hb[26] == headerAlone,
	}
	if h.PrevCount > RecordsPerBlock || hb[26] > headerAlone || !allZero(hb[27:]) {
		return JournalHeader{}, fmt.Errorf("journal block %d: bad header fields: %w", h.LSN, ErrCorrupt)
	}
	return h, nil
}

func allZero(b []byte) bool {
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}
