package layout

import (
	"encoding/binary"
	"fmt"
)

// Settings are the mode and destage policy persisted in the superblock so a
// remount keeps what the administrator chose. A field whose SetMask bit
// (SetPromoteAfter and the rest) is clear takes its default whatever it
// holds; Mode has no bit, its zero value is writeback.
type Settings struct {
	Mode          uint8  // ModeWriteback, ModeWritethrough, ModeWritearound or ModeNone
	PromoteAfter  uint8  // read misses before a block is promoted (0 = on first miss); SetPromoteAfter
	LowWatermark  uint8  // percent of slots dirty where destaging idles; SetLowWatermark
	HighWatermark uint8  // percent of slots dirty where destaging runs flat out; SetHighWatermark
	Workers       uint16 // destager workers; SetWorkers
	MaxDirtyAge   uint32 // seconds a block may stay dirty; SetMaxDirtyAge
	SeqCutoff     uint64 // bytes of sequential stream before bypassing the cache; SetSeqCutoff
	IdleRate      uint32 // destage MiB/s while foreground I/O is busy below the high watermark; SetIdleRate
	Order         uint8  // OrderOrdered or OrderUnordered write-back (unset: unordered); SetOrder
	SetMask       uint32 // Set* bits of the fields set explicitly (lets 0 be a real value)
}

// Settings.Mode values. Part of the format: never change them without
// bumping FormatVersion.
const (
	ModeWriteback    uint8 = 0
	ModeWritethrough uint8 = 1
	ModeWritearound  uint8 = 2
	ModeNone         uint8 = 3
)

// Settings.SetMask bits: a field whose bit is clear takes its default. Part
// of the format: never change them without bumping FormatVersion.
const (
	SetPromoteAfter  uint32 = 1 << 0
	SetLowWatermark  uint32 = 1 << 1
	SetHighWatermark uint32 = 1 << 2
	SetWorkers       uint32 = 1 << 3
	SetMaxDirtyAge   uint32 = 1 << 4
	SetSeqCutoff     uint32 = 1 << 5
	SetIdleRate      uint32 = 1 << 6
	SetOrder         uint32 = 1 << 7 // format version 3

	// SetKnown is every bit the format defines; the others are reserved
	// and must be zero.
	SetKnown = SetPromoteAfter | SetLowWatermark | SetHighWatermark | SetWorkers |
		SetMaxDirtyAge | SetSeqCutoff | SetIdleRate | SetOrder
)

// Settings.Order values. Part of the format.
const (
	OrderOrdered   uint8 = 0 // write back epoch by epoch (the backing device alone stays crash-consistent)
	OrderUnordered uint8 = 1 // write back in address order only
)

// Has reports whether every field named by bits was set explicitly.
func (s Settings) Has(bits uint32) bool { return s.SetMask&bits == bits }

// Validate checks what the format requires of settings: a known mode and
// no reserved SetMask bit. The ranges of the values themselves belong to
// the packages that use them.
func (s Settings) Validate() error {
	if s.Mode > ModeNone {
		return fmt.Errorf("settings: mode %d (known: 0-%d): %w", s.Mode, ModeNone, ErrCorrupt)
	}
	if s.Order > OrderUnordered {
		return fmt.Errorf("settings: write-back order %d (known: 0-%d): %w", s.Order, OrderUnordered, ErrCorrupt)
	}
	if extra := s.SetMask &^ SetKnown; extra != 0 {
		return fmt.Errorf("settings: reserved set-mask bits %#x: %w", extra, ErrCorrupt)
	}
	return nil
}

func (s Settings) encode(b []byte) {
	b[0], b[1], b[2], b[3] = s.Mode, s.PromoteAfter, s.LowWatermark, s.HighWatermark
	binary.LittleEndian.PutUint16(b[4:], s.Workers)
	b[6] = s.Order
	binary.LittleEndian.PutUint32(b[8:], s.MaxDirtyAge)
	binary.LittleEndian.PutUint64(b[16:], s.SeqCutoff)
	binary.LittleEndian.PutUint32(b[24:], s.IdleRate)
	binary.LittleEndian.PutUint32(b[28:], s.SetMask)
}

func decodeSettings(b []byte) Settings {
	return Settings{
		Mode: b[0], PromoteAfter: b[1], LowWatermark: b[2], HighWatermark: b[3],
		Workers:     binary.LittleEndian.Uint16(b[4:]),
		Order:       b[6],
		MaxDirtyAge: binary.LittleEndian.Uint32(b[8:]),
		SeqCutoff:   binary.LittleEndian.Uint64(b[16:]),
		IdleRate:    binary.LittleEndian.Uint32(b[24:]),
		SetMask:     binary.LittleEndian.Uint32(b[28:]),
	}
}
