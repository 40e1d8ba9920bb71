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
	// held when this one was started: replay continues past a block only
	// into a next block that agrees, so a torn block cannot leave a hole.
	PrevCount int
	// Count is the number of valid records found by DecodeJournalBlock
	// (EncodeJournalHeader ignores it).
	Count int
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
	c := seededCRC(uuid, hb, 4)
	le.PutUint32(hb[4:], c)
	return c
}

// RecordOffset is the offset of record i in a journal block.
func RecordOffset(i int) int { return journalHeaderSize + i*RecordSize }

// EncodeJournalRecord writes record i of a journal block into b, chained
// to chain (the header's checksum for record 0, else the previous record's
// return value), and returns the checksum that chains record i+1. Records
// are appended in place: writing record i changes only its own 32 bytes.
func EncodeJournalRecord(b []byte, i int, chain uint32, r Record) uint32 {
	checkLen(b)
	if i < 0 || i >= RecordsPerBlock {
		panic("layout: journal record index out of range")
	}
	le := binary.LittleEndian
	o := b[RecordOffset(i):RecordOffset(i+1)]
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
	c := EncodeJournalHeader(b, uuid, h)
	for i, r := range recs {
		c = EncodeJournalRecord(b, i, c, r)
	}
}

// DecodeJournalBlock verifies a journal block's header and appends its
// valid records to recs: those from the first on whose chained checksums
// hold, up to the first that fails (a record never written, or torn).
// A bad header, or a record whose checksum holds but whose fields do not,
// wraps ErrCorrupt and returns recs as it was passed in: to replay, it
// marks the end of the log.
func DecodeJournalBlock(b []byte, uuid [16]byte, recs []Record) (JournalHeader, []Record, error) {
	checkLen(b)
	h, err := DecodeJournalHeader(b, uuid)
	if err != nil {
		return JournalHeader{}, recs, err
	}
	le := binary.LittleEndian
	c := le.Uint32(b[4:])
	n := len(recs)
	for i := 0; i < RecordsPerBlock; i++ {
		o := b[RecordOffset(i):RecordOffset(i+1)]
		next := crc32.Update(c, castagnoli, o[:recordCRCOff])
		if le.Uint32(o[recordCRCOff:]) != next {
			break
		}
		c = next
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
	}
	if h.PrevCount > RecordsPerBlock || !allZero(hb[26:]) {
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
