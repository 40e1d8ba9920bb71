package layout

import (
	"encoding/binary"
	"fmt"
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

// RecordDirty is the MAP flag for a block the backing device does not hold.
const RecordDirty = 1 << 0

// Record is one metadata change.
type Record struct {
	Type  RecordType
	Flags uint8
	Slot  uint32
	LBA   uint64
	CRC   uint32
	Epoch uint32
}

// JournalHeader is the header of a journal block.
type JournalHeader struct {
	LSN         uint64
	Incarnation uint64
	Count       int
}

// EncodeJournalBlock fills a 4 KiB journal block. len(recs) must not exceed
// RecordsPerBlock.
func EncodeJournalBlock(b []byte, uuid [16]byte, lsn, incarnation uint64, recs []Record) {
	checkLen(b)
	if len(recs) > RecordsPerBlock {
		panic("layout: too many records for one journal block")
	}
	le := binary.LittleEndian
	clear(b)
	le.PutUint32(b[0:], journMagic)
	le.PutUint64(b[8:], lsn)
	le.PutUint64(b[16:], incarnation)
	le.PutUint16(b[24:], uint16(len(recs)))
	for i, r := range recs {
		o := b[journalHeaderSize+i*RecordSize:]
		o[0], o[1] = byte(r.Type), r.Flags
		le.PutUint32(o[4:], r.Slot)
		le.PutUint64(o[8:], r.LBA)
		le.PutUint32(o[16:], r.CRC)
		le.PutUint32(o[20:], r.Epoch)
	}
	le.PutUint32(b[4:], seededCRC(uuid, b, 4))
}

// DecodeJournalBlock verifies a journal block and appends its records to
// recs. Any failure wraps ErrCorrupt and returns recs as it was passed in:
// to replay, it marks the end of the log.
func DecodeJournalBlock(b []byte, uuid [16]byte, recs []Record) (JournalHeader, []Record, error) {
	checkLen(b)
	le := binary.LittleEndian
	if le.Uint32(b[0:]) != journMagic {
		return JournalHeader{}, recs, fmt.Errorf("journal block: bad magic: %w", ErrCorrupt)
	}
	if got, want := le.Uint32(b[4:]), seededCRC(uuid, b, 4); got != want {
		return JournalHeader{}, recs, fmt.Errorf("journal block: checksum %08x, want %08x: %w", got, want, ErrCorrupt)
	}
	h := JournalHeader{
		LSN:         le.Uint64(b[8:]),
		Incarnation: le.Uint64(b[16:]),
		Count:       int(le.Uint16(b[24:])),
	}
	if h.Count > RecordsPerBlock {
		return JournalHeader{}, recs, fmt.Errorf("journal block %d: %d records: %w", h.LSN, h.Count, ErrCorrupt)
	}
	n := len(recs)
	for i := 0; i < h.Count; i++ {
		o := b[journalHeaderSize+i*RecordSize:]
		r := Record{
			Type:  RecordType(o[0]),
			Flags: o[1],
			Slot:  le.Uint32(o[4:]),
			LBA:   le.Uint64(o[8:]),
			CRC:   le.Uint32(o[16:]),
			Epoch: le.Uint32(o[20:]),
		}
		if r.Type < RecMap || r.Type > RecFree || r.Flags&^RecordDirty != 0 {
			return JournalHeader{}, recs[:n], fmt.Errorf("journal block %d record %d: %v flags %#x: %w", h.LSN, i, r.Type, r.Flags, ErrCorrupt)
		}
		recs = append(recs, r)
	}
	return h, recs, nil
}
