package layout

import (
	"encoding/binary"
	"fmt"
)

// PageKind tells slot-map pages from dirty-bitmap pages.
type PageKind uint32

// Checkpoint page kinds.
const (
	MapPage    PageKind = mapMagic
	BitmapPage PageKind = bitmapMagic
)

func (k PageKind) String() string {
	if k == MapPage {
		return "slot-map page"
	}
	return "dirty-bitmap page"
}

// MapEntry is one slot's entry in the checkpoint slot map.
type MapEntry struct {
	LBA   uint64
	CRC   uint32
	Valid bool
	// Older: the slot holds an older dirty version of LBA, kept for
	// ordered write-back (the index points at a newer one).
	Older bool
	// Epoch is the low 24 bits of the flush epoch of the slot's version
	// (EpochFrom widens it again).
	Epoch uint32
}

// EpochBits is how many bits of a version's flush epoch a map entry keeps.
const EpochBits = 24

// EpochFrom widens the low EpochBits of an epoch to the full epoch nearest
// below or at ref (the superblock's flush epoch): versions are never more
// than 2^EpochBits epochs older than the checkpoint that saves them.
func EpochFrom(low, ref uint32) uint32 {
	const mask = 1<<EpochBits - 1
	return ref - (ref-low)&mask
}

// PutMapEntry stores entry i of a slot-map page.
func PutMapEntry(page []byte, i int, e MapEntry) {
	b := page[pageHeaderSize+i*mapEntrySize:]
	binary.LittleEndian.PutUint64(b, e.LBA)
	binary.LittleEndian.PutUint32(b[8:], e.CRC)
	var f uint32
	if e.Valid {
		f = 1
	}
	if e.Older {
		f |= 2
	}
	f |= (e.Epoch & (1<<EpochBits - 1)) << 8
	binary.LittleEndian.PutUint32(b[12:], f)
}

// GetMapEntry reads entry i of a slot-map page.
func GetMapEntry(page []byte, i int) MapEntry {
	b := page[pageHeaderSize+i*mapEntrySize:]
	return MapEntry{
		LBA:   binary.LittleEndian.Uint64(b),
		CRC:   binary.LittleEndian.Uint32(b[8:]),
		Valid: binary.LittleEndian.Uint32(b[12:])&1 != 0,
		Older: binary.LittleEndian.Uint32(b[12:])&2 != 0,
		Epoch: binary.LittleEndian.Uint32(b[12:]) >> 8,
	}
}

// BitmapPayload is the bit area of a dirty-bitmap page: bit j of byte k
// stands for slot page*BitsPerBitmapPage + 8k + j.
func BitmapPayload(page []byte) []byte { return page[pageHeaderSize:] }

// SealPage writes the header and checksum of a checkpoint page whose
// payload is already filled in.
func SealPage(page []byte, kind PageKind, uuid [16]byte, gen uint64, index uint32) {
	checkLen(page)
	le := binary.LittleEndian
	le.PutUint32(page[0:], uint32(kind))
	le.PutUint64(page[8:], gen)
	le.PutUint32(page[16:], index)
	clear(page[20:pageHeaderSize])
	le.PutUint32(page[4:], seededCRC(uuid, page, 4))
}

// CheckPage verifies a checkpoint page read back from the device, of
// generation gen exactly.
func CheckPage(page []byte, kind PageKind, uuid [16]byte, gen uint64, index uint32) error {
	return checkPage(page, kind, uuid, gen, gen, index)
}

// CheckPageUpTo verifies a page of a checkpoint of generation gen: a
// checkpoint rewrites only the pages whose content changed since its copy
// last got them (format version 4), so the others keep the generation
// that wrote them, which is older.
func CheckPageUpTo(page []byte, kind PageKind, uuid [16]byte, gen uint64, index uint32) error {
	return checkPage(page, kind, uuid, 1, gen, index)
}

// PagePayload is the part of a checkpoint page after its header: what
// changes with the slot table, not with the generation writing it.
func PagePayload(page []byte) []byte { return page[pageHeaderSize:] }

func checkPage(page []byte, kind PageKind, uuid [16]byte, lo, hi uint64, index uint32) error {
	checkLen(page)
	le := binary.LittleEndian
	if PageKind(le.Uint32(page[0:])) != kind {
		return fmt.Errorf("%v %d: bad magic: %w", kind, index, ErrCorrupt)
	}
	if got, want := le.Uint32(page[4:]), seededCRC(uuid, page, 4); got != want {
		return fmt.Errorf("%v %d: checksum %08x, want %08x: %w", kind, index, got, want, ErrCorrupt)
	}
	switch g := le.Uint64(page[8:]); {
	case lo == hi && g != hi:
		return fmt.Errorf("%v %d: generation %d, want %d: %w", kind, index, g, hi, ErrCorrupt)
	case g < lo || g > hi:
		return fmt.Errorf("%v %d: generation %d, want %d to %d: %w", kind, index, g, lo, hi, ErrCorrupt)
	}
	if i := le.Uint32(page[16:]); i != index {
		return fmt.Errorf("%v %d: holds index %d: %w", kind, index, i, ErrCorrupt)
	}
	return nil
}
