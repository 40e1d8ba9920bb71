package layout

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// FlagClean marks a superblock written by a clean shutdown.
const FlagClean = 1 << 0

// Settings are the mode and destage policy persisted in the superblock so a
// remount keeps what the administrator chose. Zero values mean "default".
type Settings struct {
	Mode          uint8  // 0 writeback, 1 writethrough, 2 writearound, 3 none
	PromoteAfter  uint8  // read misses before a block is promoted (0 = on first miss)
	LowWatermark  uint8  // percent of slots dirty where destaging idles
	HighWatermark uint8  // percent of slots dirty where destaging runs flat out
	Workers       uint16 // destager workers
	MaxDirtyAge   uint32 // seconds a block may stay dirty
	SeqCutoff     uint64 // bytes of sequential stream before bypassing the cache
	IdleRate      uint32 // destage MiB/s while foreground I/O is busy below the high watermark
	SetMask       uint32 // bit i set when field i was set explicitly (lets 0 be a real value)
}

func (s Settings) encode(b []byte) {
	b[0], b[1], b[2], b[3] = s.Mode, s.PromoteAfter, s.LowWatermark, s.HighWatermark
	binary.LittleEndian.PutUint16(b[4:], s.Workers)
	binary.LittleEndian.PutUint32(b[8:], s.MaxDirtyAge)
	binary.LittleEndian.PutUint64(b[16:], s.SeqCutoff)
	binary.LittleEndian.PutUint32(b[24:], s.IdleRate)
	binary.LittleEndian.PutUint32(b[28:], s.SetMask)
}

func decodeSettings(b []byte) Settings {
	return Settings{
		Mode: b[0], PromoteAfter: b[1], LowWatermark: b[2], HighWatermark: b[3],
		Workers:     binary.LittleEndian.Uint16(b[4:]),
		MaxDirtyAge: binary.LittleEndian.Uint32(b[8:]),
		SeqCutoff:   binary.LittleEndian.Uint64(b[16:]),
		IdleRate:    binary.LittleEndian.Uint32(b[24:]),
		SetMask:     binary.LittleEndian.Uint32(b[28:]),
	}
}

// Superblock is the root of a cache device's metadata.
type Superblock struct {
	Generation uint64
	UUID       [16]byte
	Flags      uint32
	Geometry   Geometry

	BackingSize     uint64
	BackingIdentity [16]byte

	CheckpointCopy        uint32 // 0 or 1
	CheckpointGeneration  uint64 // 0 = no checkpoint written yet
	ReplayLSN             uint64
	CheckpointIncarnation uint64
	FlushEpoch            uint64
	// OldestDirty is when the oldest block dirty at this checkpoint
	// became dirty, in Unix seconds; 0 when none was dirty or the time
	// is not known. Blocks dirty at open count their age from it.
	OldestDirty uint32
	Settings    Settings
}

// Clean reports whether the superblock was written by a clean shutdown.
func (s *Superblock) Clean() bool { return s.Flags&FlagClean != 0 }

// Copy is the superblock slot (0 or 1) this generation is written to.
func (s *Superblock) Copy() int { return int(s.Generation % 2) }

// Encode writes the superblock into a 4 KiB block.
func (s *Superblock) Encode(b []byte) {
	checkLen(b)
	clear(b)
	le := binary.LittleEndian
	copy(b[0:8], superMagic)
	le.PutUint32(b[8:], FormatVersion)
	le.PutUint64(b[16:], s.Generation)
	copy(b[24:40], s.UUID[:])
	le.PutUint32(b[40:], BlockSize)
	le.PutUint32(b[44:], s.Flags)
	g := &s.Geometry
	le.PutUint64(b[48:], g.SlotCount)
	le.PutUint64(b[56:], g.CheckpointStart)
	le.PutUint64(b[64:], g.CheckpointBlocks)
	le.PutUint64(b[72:], g.MapPages)
	le.PutUint64(b[80:], g.BitmapPages)
	le.PutUint64(b[88:], g.JournalStart)
	le.PutUint64(b[96:], g.JournalBlocks)
	le.PutUint64(b[104:], g.DataStart)
	le.PutUint64(b[112:], g.DeviceSize)
	le.PutUint64(b[120:], s.BackingSize)
	copy(b[128:144], s.BackingIdentity[:])
	le.PutUint32(b[144:], s.CheckpointCopy)
	le.PutUint32(b[148:], s.OldestDirty)
	le.PutUint64(b[152:], s.CheckpointGeneration)
	le.PutUint64(b[160:], s.ReplayLSN)
	le.PutUint64(b[168:], s.CheckpointIncarnation)
	le.PutUint64(b[176:], s.FlushEpoch)
	s.Settings.encode(b[184 : 184+SettingsSize])
	le.PutUint32(b[12:], seededCRC([16]byte{}, b, 12))
}

// DecodeSuperblock parses and verifies a 4 KiB superblock.
func DecodeSuperblock(b []byte) (Superblock, error) {
	checkLen(b)
	le := binary.LittleEndian
	if string(b[0:8]) != superMagic {
		return Superblock{}, ErrNotFormatted
	}
	if v := le.Uint32(b[8:]); v != FormatVersion {
		if v > FormatVersion {
			return Superblock{}, fmt.Errorf("format version %d, this wbcache reads %d (use a newer wbcache): %w", v, FormatVersion, ErrVersion)
		}
		if v > 0 {
			return Superblock{}, fmt.Errorf("format version %d was written by an older wbcache, this one reads %d "+
				"(write the dirty blocks back with 'wbcache detach' of the wbcache that formatted it, then format again): %w", v, FormatVersion, ErrVersion)
		}
		return Superblock{}, fmt.Errorf("format version %d: %w", v, ErrCorrupt)
	}
	if got, want := le.Uint32(b[12:]), seededCRC([16]byte{}, b, 12); got != want {
		return Superblock{}, fmt.Errorf("superblock checksum %08x, want %08x: %w", got, want, ErrCorrupt)
	}
	if bs := le.Uint32(b[40:]); bs != BlockSize {
		return Superblock{}, fmt.Errorf("block size %d: %w", bs, ErrCorrupt)
	}
	var s Superblock
	s.Generation = le.Uint64(b[16:])
	copy(s.UUID[:], b[24:40])
	s.Flags = le.Uint32(b[44:])
	s.Geometry = Geometry{
		SlotCount:        le.Uint64(b[48:]),
		CheckpointStart:  le.Uint64(b[56:]),
		CheckpointBlocks: le.Uint64(b[64:]),
		MapPages:         le.Uint64(b[72:]),
		BitmapPages:      le.Uint64(b[80:]),
		JournalStart:     le.Uint64(b[88:]),
		JournalBlocks:    le.Uint64(b[96:]),
		DataStart:        le.Uint64(b[104:]),
		DeviceSize:       le.Uint64(b[112:]),
	}
	s.BackingSize = le.Uint64(b[120:])
	copy(s.BackingIdentity[:], b[128:144])
	s.CheckpointCopy = le.Uint32(b[144:])
	s.OldestDirty = le.Uint32(b[148:])
	s.CheckpointGeneration = le.Uint64(b[152:])
	s.ReplayLSN = le.Uint64(b[160:])
	s.CheckpointIncarnation = le.Uint64(b[168:])
	s.FlushEpoch = le.Uint64(b[176:])
	s.Settings = decodeSettings(b[184 : 184+SettingsSize])
	if s.CheckpointCopy > 1 || s.Flags&^FlagClean != 0 {
		return Superblock{}, fmt.Errorf("superblock fields out of range: %w", ErrCorrupt)
	}
	if err := s.Geometry.Validate(int64(s.Geometry.DeviceSize)); err != nil {
		return Superblock{}, err
	}
	return s, nil
}

// PickSuperblock chooses between the two decoded copies (either may carry
// an error): the valid one with the higher generation. When neither is
// valid it returns the more telling error (ErrVersion or ErrCorrupt before
// ErrNotFormatted).
func PickSuperblock(a Superblock, errA error, b Superblock, errB error) (Superblock, error) {
	switch {
	case errA == nil && errB == nil:
		if b.Generation > a.Generation {
			return b, nil
		}
		return a, nil
	case errA == nil:
		return a, nil
	case errB == nil:
		return b, nil
	}
	for _, err := range []error{errA, errB} {
		if !errors.Is(err, ErrNotFormatted) {
			return Superblock{}, err
		}
	}
	return Superblock{}, ErrNotFormatted
}
