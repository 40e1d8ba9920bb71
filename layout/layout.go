package layout

import (
	"errors"
	"fmt"
	"hash/crc32"
)

// Format constants. Never change them without bumping FormatVersion.
const (
	BlockSize     = 4096
	FormatVersion = 5
	// OldestReadableVersion is the oldest format version this one reads:
	// version 2 lacks only what version 3 added (older versions kept for
	// ordered write-back, the writeback-order setting), which a version 2
	// cache never holds; version 3 checkpoints hold every page at the
	// checkpoint's generation, which version 4 accepts (it allows older
	// ones: a checkpoint rewrites only the pages that changed); version 5
	// writes journal blocks of records checked alone, and still reads the
	// chained blocks of earlier versions (each block says which it is). A
	// superblock is always written as FormatVersion.
	OldestReadableVersion = 2

	superMagic  = "WBCACHE1"
	mapMagic    = 0x4d434257 // "WBCM"
	bitmapMagic = 0x44434257 // "WBCD"
	journMagic  = 0x4a434257 // "WBCJ"

	pageHeaderSize    = 32
	pagePayload       = BlockSize - pageHeaderSize
	mapEntrySize      = 16
	EntriesPerMapPage = pagePayload / mapEntrySize // 254
	BitsPerBitmapPage = pagePayload * 8            // 32512

	journalHeaderSize = 32
	RecordSize        = 32
	recordCRCOff      = 28
	RecordsPerBlock   = (BlockSize - journalHeaderSize) / RecordSize // 127

	// SettingsSize is the size of the settings area in the superblock.
	SettingsSize = 64
)

// Sentinel errors. Callers test them with errors.Is.
var (
	// ErrNotFormatted: the block carries no wbcache magic at all.
	ErrNotFormatted = errors.New("not a wbcache cache device")
	// ErrCorrupt: the block has the magic but fails a check.
	ErrCorrupt = errors.New("corrupt metadata")
	// ErrVersion: written by a newer (or an older, incompatible) wbcache.
	ErrVersion = errors.New("unsupported format version")
	// ErrGeometry: the device is too small or the geometry is inconsistent.
	ErrGeometry = errors.New("bad geometry")
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// DataCRC is the checksum of a data block, as stored in MAP records and the
// slot map.
func DataCRC(b []byte) uint32 { return crc32.Checksum(b, castagnoli) }

// seededCRC computes CRC32C(uuid || b) with b[crcOff:crcOff+4] taken as zero.
func seededCRC(uuid [16]byte, b []byte, crcOff int) uint32 {
	c := crc32.Update(0, castagnoli, uuid[:])
	c = crc32.Update(c, castagnoli, b[:crcOff])
	var zero [4]byte
	c = crc32.Update(c, castagnoli, zero[:])
	return crc32.Update(c, castagnoli, b[crcOff+4:])
}

func checkLen(b []byte) {
	if len(b) != BlockSize {
		panic(fmt.Sprintf("layout: buffer of %d bytes, want %d", len(b), BlockSize))
	}
}
