package layout

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
)

// FlagClean marks a superblock written by a clean shutdown.
const FlagClean = 1 << 0

// FlagOrderBroken marks a backing device that write-back may have left out
// of order (ordered write-back suspended or off): alone, it need not be a
// consistent point in time (format version 3).
const FlagOrderBroken = 1 << 1

// DescriptionSize is the room for the backing device's description in the
// superblock, at byte descriptionOff.
const (
	DescriptionSize = 256
	descriptionOff  = 248
)

// TruncateDescription cuts d to at most DescriptionSize bytes, at a
// character boundary, as Encode stores it.
func TruncateDescription(d string) string {
	if len(d) <= DescriptionSize {
		return d
	}
	cut := DescriptionSize
	for cut > 0 && !utf8.RuneStart(d[cut]) {
		cut--
	}
	return d[:cut]
}

// Superblock is the root of a cache device's metadata.
type Superblock struct {
	Generation uint64
	UUID       [16]byte
	Flags      uint32
	Geometry   Geometry

	BackingSize     uint64
	BackingIdentity [16]byte
	// BackingDescription names the backing device in words, as format saw
	// it (its path and, for a loop device, the file behind it), for
	// messages. Empty: formatted by a wbcache that did not record it.
	// Encode truncates it to DescriptionSize bytes.
	BackingDescription string

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
	copy(b[descriptionOff:descriptionOff+DescriptionSize], TruncateDescription(s.BackingDescription))
	le.PutUint32(b[12:], seededCRC([16]byte{}, b, 12))
}

// DecodeSuperblock parses and verifies a 4 KiB superblock.
func DecodeSuperblock(b []byte) (Superblock, error) {
	checkLen(b)
	le := binary.LittleEndian
	if string(b[0:8]) != superMagic {
		return Superblock{}, ErrNotFormatted
	}
	if v := le.Uint32(b[8:]); v < OldestReadableVersion || v > FormatVersion {
		if v > 0 {
			return Superblock{}, &VersionError{Found: v}
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
	s.BackingDescription = strings.TrimRight(string(b[descriptionOff:descriptionOff+DescriptionSize]), "\x00")
	if s.CheckpointCopy > 1 || s.Flags&^(FlagClean|FlagOrderBroken) != 0 {
		return Superblock{}, fmt.Errorf("superblock fields out of range: %w", ErrCorrupt)
	}
	if err := s.Settings.Validate(); err != nil {
		return Superblock{}, err
	}
	if err := s.Geometry.Validate(int64(s.Geometry.DeviceSize)); err != nil {
		return Superblock{}, err
	}
	return s, nil
}

// VersionError is a superblock of another FormatVersion than this one
// reads: newer, or older and incompatible. It wraps ErrVersion.
type VersionError struct{ Found uint32 }

// Newer reports whether a newer format than this one wrote the superblock.
func (e *VersionError) Newer() bool { return e.Found > FormatVersion }

func (e *VersionError) Error() string {
	age := "older"
	if e.Newer() {
		age = "newer"
	}
	return fmt.Sprintf("format version %d is %s than version %d read here: %v", e.Found, age, FormatVersion, ErrVersion)
}

func (e *VersionError) Unwrap() error { return ErrVersion }

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
