package layout

import (
	"fmt"
	"math"
)

// Geometry says where each region of a cache device lives, in blocks.
type Geometry struct {
	SlotCount        uint64
	MapPages         uint64 // per checkpoint copy
	BitmapPages      uint64 // per checkpoint copy
	CheckpointStart  uint64 // first block of copy 0
	CheckpointBlocks uint64 // blocks per copy = MapPages + BitmapPages
	JournalStart     uint64
	JournalBlocks    uint64
	DataStart        uint64
	DeviceSize       uint64 // bytes
}

// MinJournalBlocks is the smallest journal ring accepted.
const MinJournalBlocks = 16

// maxBlocks bounds every block count: no device holds more than MaxInt64
// bytes. Checking it first keeps geometry arithmetic from wrapping around.
const maxBlocks = math.MaxInt64 / BlockSize

// DefaultJournalBlocks picks a journal size for a device of the given size:
// 1/256 of the device, or 1/64 of it up to 2048 blocks (8 MiB) when that
// is more, between 256 blocks (1 MiB) and 32768 (128 MiB). Small caches
// get the larger share because every write journals a record: a 2 MiB
// journal in front of a 512 MiB cache filled up (and forced a checkpoint
// and two syncs) about every 0.4 s under random writes at QD32.
func DefaultJournalBlocks(deviceBytes int64) uint64 {
	blocks := uint64(deviceBytes) / BlockSize
	j := max(blocks/256, min(blocks/64, 2048))
	return min(max(j, 256), 32768)
}

func ceilDiv(a, b uint64) uint64 { return (a + b - 1) / b }

// ComputeGeometry lays out a device of deviceBytes with a journal of
// journalBlocks (0 picks DefaultJournalBlocks), maximising the slot count.
func ComputeGeometry(deviceBytes int64, journalBlocks uint64) (Geometry, error) {
	if deviceBytes < 0 {
		return Geometry{}, fmt.Errorf("device size %d: %w", deviceBytes, ErrGeometry)
	}
	if journalBlocks == 0 {
		journalBlocks = DefaultJournalBlocks(deviceBytes)
	}
	if journalBlocks < MinJournalBlocks {
		return Geometry{}, fmt.Errorf("journal of %d blocks is below the minimum of %d: %w", journalBlocks, MinJournalBlocks, ErrGeometry)
	}
	if journalBlocks > maxBlocks {
		return Geometry{}, fmt.Errorf("journal of %d blocks is larger than any device: %w", journalBlocks, ErrGeometry)
	}
	total := uint64(deviceBytes) / BlockSize
	// The smallest layout: superblocks, journal, two checkpoint copies of
	// one map page and one bitmap page each, one data slot.
	fixed := 2 + journalBlocks
	if total < fixed+5 {
		return Geometry{}, fmt.Errorf("cache device of %d bytes is too small (need at least %d KiB): %w", deviceBytes, (fixed+5)*4, ErrGeometry)
	}
	// Largest n with fixed + 2*ckpt(n) + n <= total; ckpt grows by ~1/254 of n.
	lo, hi := uint64(0), total-fixed
	for lo < hi {
		mid := (lo + hi + 1) / 2
		if fixed+2*ckptBlocks(mid)+mid <= total {
			lo = mid
		} else {
			hi = mid - 1
		}
	}
	if lo == 0 {
		return Geometry{}, fmt.Errorf("cache device of %d bytes leaves no room for data slots: %w", deviceBytes, ErrGeometry)
	}
	return makeGeometry(lo, journalBlocks, uint64(deviceBytes)), nil
}

func ckptBlocks(n uint64) uint64 {
	return ceilDiv(n, EntriesPerMapPage) + ceilDiv(n, BitsPerBitmapPage)
}

func makeGeometry(slots, journalBlocks, deviceBytes uint64) Geometry {
	g := Geometry{
		SlotCount:       slots,
		MapPages:        ceilDiv(slots, EntriesPerMapPage),
		BitmapPages:     ceilDiv(slots, BitsPerBitmapPage),
		CheckpointStart: 2,
		JournalBlocks:   journalBlocks,
		DeviceSize:      deviceBytes,
	}
	g.CheckpointBlocks = g.MapPages + g.BitmapPages
	g.JournalStart = g.CheckpointStart + 2*g.CheckpointBlocks
	g.DataStart = g.JournalStart + journalBlocks
	return g
}

// Validate checks that a geometry read from a superblock is self-consistent
// and fits a device of deviceBytes.
func (g Geometry) Validate(deviceBytes int64) error {
	// The counts are bounded before makeGeometry so its arithmetic cannot wrap.
	if g.SlotCount == 0 || g.SlotCount > maxBlocks || g.JournalBlocks < MinJournalBlocks || g.JournalBlocks > maxBlocks ||
		g != makeGeometry(g.SlotCount, g.JournalBlocks, g.DeviceSize) {
		return fmt.Errorf("inconsistent region table: %w", ErrCorrupt)
	}
	if end := g.DataStart + g.SlotCount; deviceBytes < 0 || end > uint64(deviceBytes)/BlockSize {
		return fmt.Errorf("cache regions end at block %d but the device has %d bytes (was it truncated?): %w", end, deviceBytes, ErrGeometry)
	}
	return nil
}

// SuperblockOffset is the byte offset of superblock copy 0 or 1.
func SuperblockOffset(copy int) int64 { return int64(copy) * BlockSize }

// MapPageOffset is the byte offset of slot-map page i of checkpoint copy c.
func (g Geometry) MapPageOffset(c int, i uint64) int64 {
	return int64(g.CheckpointStart+uint64(c)*g.CheckpointBlocks+i) * BlockSize
}

// BitmapPageOffset is the byte offset of dirty-bitmap page i of checkpoint copy c.
func (g Geometry) BitmapPageOffset(c int, i uint64) int64 {
	return g.MapPageOffset(c, g.MapPages+i)
}

// JournalOffset is the byte offset of the journal block with the given LSN.
func (g Geometry) JournalOffset(lsn uint64) int64 {
	return int64(g.JournalStart+lsn%g.JournalBlocks) * BlockSize
}

// SlotOffset is the byte offset of data slot s.
func (g Geometry) SlotOffset(s uint64) int64 { return int64(g.DataStart+s) * BlockSize }
