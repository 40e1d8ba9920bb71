package layout_test

import (
	"bytes"
	"errors"
	"fmt"
	"hash/crc32"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wbcache/wbcache/layout"
)

func TestSuperblockRoundTrip(t *testing.T) {
	maxSettings := layout.Settings{
		Mode: layout.ModeNone, PromoteAfter: math.MaxUint8, LowWatermark: math.MaxUint8, HighWatermark: math.MaxUint8,
		Workers: math.MaxUint16, MaxDirtyAge: math.MaxUint32, SeqCutoff: math.MaxUint64,
		IdleRate: math.MaxUint32, SetMask: layout.SetKnown,
	}
	ones := [16]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	cases := map[string]layout.Superblock{
		"sample": sampleSuperblock(t),
		"zero fields": {
			Geometry: mustGeometry(t, 2<<20, 16),
		},
		"max fields": {
			Generation:            math.MaxUint64,
			UUID:                  ones,
			Flags:                 layout.FlagClean,
			Geometry:              mustGeometry(t, 16<<30, 32768),
			BackingSize:           math.MaxUint64,
			BackingIdentity:       ones,
			CheckpointCopy:        1,
			CheckpointGeneration:  math.MaxUint64,
			ReplayLSN:             math.MaxUint64,
			CheckpointIncarnation: math.MaxUint64,
			FlushEpoch:            math.MaxUint64,
			Settings:              maxSettings,
			BackingDescription:    strings.Repeat("é", layout.DescriptionSize/2),
		},
		"settings only": {
			Generation: 1,
			UUID:       testUUID,
			Geometry:   mustGeometry(t, 64<<20, 0),
			Settings:   layout.Settings{Mode: layout.ModeWritethrough, SetMask: layout.SetPromoteAfter},
		},
	}
	for name, s := range cases {
		t.Run(name, func(t *testing.T) {
			b := encodeSuperblock(s)
			got, err := layout.DecodeSuperblock(b)
			require.NoError(t, err)
			assert.Equal(t, s, got)
			assert.Equal(t, s.Settings, got.Settings)
			assert.Equal(t, s.Geometry, got.Geometry)

			// Re-encoding reproduces the same bytes, also into a dirty buffer.
			again := bytes.Repeat([]byte{0xa5}, layout.BlockSize)
			got.Encode(again)
			assert.Equal(t, b, again)
		})
	}
}

func TestSuperblockDocLayout(t *testing.T) {
	s := sampleSuperblock(t)
	b := encodeSuperblock(s)
	g := s.Geometry

	assert.Equal(t, "WBCACHE1", string(b[0:8]))
	assert.Equal(t, uint32(layout.FormatVersion), le.Uint32(b[8:]))
	assert.Equal(t, docCRC([16]byte{}, b, sbCRCOff), le.Uint32(b[12:]), "superblock CRC is CRC32C(16 zero bytes, block)")
	assert.Equal(t, s.Generation, le.Uint64(b[16:]))
	assert.Equal(t, s.UUID[:], b[24:40])
	assert.Equal(t, uint32(layout.BlockSize), le.Uint32(b[40:]))
	assert.Equal(t, s.Flags, le.Uint32(b[44:]))
	assert.Equal(t, g.SlotCount, le.Uint64(b[48:]))
	assert.Equal(t, g.CheckpointStart, le.Uint64(b[56:]))
	assert.Equal(t, g.CheckpointBlocks, le.Uint64(b[64:]))
	assert.Equal(t, g.MapPages, le.Uint64(b[72:]))
	assert.Equal(t, g.BitmapPages, le.Uint64(b[80:]))
	assert.Equal(t, g.JournalStart, le.Uint64(b[88:]))
	assert.Equal(t, g.JournalBlocks, le.Uint64(b[96:]))
	assert.Equal(t, g.DataStart, le.Uint64(b[104:]))
	assert.Equal(t, g.DeviceSize, le.Uint64(b[112:]))
	assert.Equal(t, s.BackingSize, le.Uint64(b[120:]))
	assert.Equal(t, s.BackingIdentity[:], b[128:144])
	assert.Equal(t, s.CheckpointCopy, le.Uint32(b[144:]))
	assert.Equal(t, make([]byte, 4), b[148:152], "reserved")
	assert.Equal(t, s.CheckpointGeneration, le.Uint64(b[152:]))
	assert.Equal(t, s.ReplayLSN, le.Uint64(b[160:]))
	assert.Equal(t, s.CheckpointIncarnation, le.Uint64(b[168:]))
	assert.Equal(t, s.FlushEpoch, le.Uint64(b[176:]))
	assert.Equal(t, s.BackingDescription, strings.TrimRight(string(b[248:248+layout.DescriptionSize]), "\x00"))
	assert.Equal(t, make([]byte, layout.BlockSize-504), b[504:], "tail must be zero")

	// Settings live in the 64 bytes at 184 and nowhere else: changing only
	// the settings changes only that window (and the CRC).
	s2 := s
	s2.Settings = layout.Settings{}
	b2 := encodeSuperblock(s2)
	for i := range b {
		if i >= sbCRCOff && i < sbCRCOff+4 || i >= settingsOff && i < settingsOff+layout.SettingsSize {
			continue
		}
		require.Equal(t, b[i], b2[i], "byte %d changed with the settings", i)
	}
	assert.Equal(t, make([]byte, layout.SettingsSize), b2[settingsOff:settingsOff+layout.SettingsSize])
}

func TestSuperblockAccessors(t *testing.T) {
	s := layout.Superblock{}
	assert.False(t, s.Clean())
	s.Flags = layout.FlagClean
	assert.True(t, s.Clean())
	for gen, want := range map[uint64]int{0: 0, 1: 1, 2: 0, 7: 1, math.MaxUint64: 1} {
		s.Generation = gen
		assert.Equal(t, want, s.Copy(), "generation %d", gen)
		assert.Equal(t, int64(want)*layout.BlockSize, layout.SuperblockOffset(s.Copy()))
	}
}

func TestSuperblockWrongLengthPanics(t *testing.T) {
	s := sampleSuperblock(t)
	for _, n := range []int{0, layout.BlockSize - 1, layout.BlockSize + 1, 2 * layout.BlockSize} {
		assert.Panics(t, func() { s.Encode(make([]byte, n)) }, "Encode len %d", n)
		assert.Panics(t, func() { _, _ = layout.DecodeSuperblock(make([]byte, n)) }, "Decode len %d", n)
	}
}

func TestSuperblockNotFormatted(t *testing.T) {
	journal := encodeJournal(testUUID, 1, 1, sampleRecords(3))
	page, _ := sealedMapPage(testUUID, 1, 0)
	ff := bytes.Repeat([]byte{0xff}, layout.BlockSize)
	other := encodeSuperblock(sampleSuperblock(t))
	copy(other, "WBCACHE2")
	resealSuperblock(other)
	rnd := newBlock()
	r := rand.New(rand.NewPCG(1, 2))
	for i := range rnd {
		rnd[i] = byte(r.Uint32())
	}
	for name, b := range map[string][]byte{
		"zero":          newBlock(),
		"ones":          ff,
		"random":        rnd,
		"journal block": journal,
		"map page":      page,
		"other magic":   other,
	} {
		_, err := layout.DecodeSuperblock(b)
		assert.ErrorIs(t, err, layout.ErrNotFormatted, name)
		assert.NotErrorIs(t, err, layout.ErrCorrupt, name)
	}
}

func TestSuperblockVersion(t *testing.T) {
	good := encodeSuperblock(sampleSuperblock(t))
	for _, v := range []uint32{layout.FormatVersion + 1, layout.FormatVersion + 100, math.MaxUint32} {
		b := bytes.Clone(good)
		le.PutUint32(b[8:], v)
		resealSuperblock(b)
		_, err := layout.DecodeSuperblock(b)
		require.ErrorIs(t, err, layout.ErrVersion, "version %d", v)
		assert.NotErrorIs(t, err, layout.ErrCorrupt)
		var ve *layout.VersionError
		require.ErrorAs(t, err, &ve)
		assert.Equal(t, v, ve.Found)
		assert.True(t, ve.Newer())
		assert.Contains(t, err.Error(), "newer")
	}

	// Versions from OldestReadableVersion on are read (and rewritten as
	// FormatVersion by the next superblock write).
	for v := uint32(layout.OldestReadableVersion); v < layout.FormatVersion; v++ {
		b := bytes.Clone(good)
		le.PutUint32(b[8:], v)
		resealSuperblock(b)
		_, err := layout.DecodeSuperblock(b)
		require.NoError(t, err, "version %d", v)
	}

	// An older version is refused; the error says which it is, so that
	// the command can say how to move on.
	for v := uint32(1); v < layout.OldestReadableVersion; v++ {
		b := bytes.Clone(good)
		le.PutUint32(b[8:], v)
		resealSuperblock(b)
		_, err := layout.DecodeSuperblock(b)
		require.ErrorIs(t, err, layout.ErrVersion, "version %d", v)
		var ve *layout.VersionError
		require.ErrorAs(t, err, &ve)
		assert.False(t, ve.Newer(), "version %d", v)
		assert.Contains(t, err.Error(), "older", "version %d", v)
		assert.NotContains(t, err.Error(), "wbcache ", "no command advice in the format's errors")
	}

	// Version 0 was never written: it is damage.
	b := bytes.Clone(good)
	le.PutUint32(b[8:], 0)
	resealSuperblock(b)
	_, err := layout.DecodeSuperblock(b)
	require.ErrorIs(t, err, layout.ErrCorrupt)
	assert.NotErrorIs(t, err, layout.ErrVersion)
}

// TestSuperblockFieldChecks edits one field, fixes up the CRC, and expects
// the decoder's field checks to reject the result.
func TestSuperblockFieldChecks(t *testing.T) {
	s := sampleSuperblock(t)
	g := s.Geometry
	good := encodeSuperblock(s)
	put32 := func(off int, v uint32) func([]byte) { return func(b []byte) { le.PutUint32(b[off:], v) } }
	put64 := func(off int, v uint64) func([]byte) { return func(b []byte) { le.PutUint64(b[off:], v) } }
	cases := []struct {
		name string
		edit func([]byte)
		want error
	}{
		{"block size 512", put32(40, 512), layout.ErrCorrupt},
		{"block size 0", put32(40, 0), layout.ErrCorrupt},
		{"unknown flag", put32(44, layout.FlagClean|4), layout.ErrCorrupt},
		{"high flag", put32(44, 1<<31), layout.ErrCorrupt},
		{"checkpoint copy 2", put32(144, 2), layout.ErrCorrupt},
		{"checkpoint copy max", put32(144, math.MaxUint32), layout.ErrCorrupt},
		{"slot count 0", put64(48, 0), layout.ErrCorrupt},
		{"slot count +1", put64(48, g.SlotCount+1), nil},
		{"checkpoint start", put64(56, g.CheckpointStart+1), layout.ErrCorrupt},
		{"checkpoint blocks", put64(64, g.CheckpointBlocks-1), layout.ErrCorrupt},
		{"map pages", put64(72, g.MapPages+1), layout.ErrCorrupt},
		{"bitmap pages", put64(80, g.BitmapPages+1), layout.ErrCorrupt},
		{"journal start", put64(88, g.JournalStart-1), layout.ErrCorrupt},
		{"journal blocks", put64(96, g.JournalBlocks+1), layout.ErrCorrupt},
		{"journal blocks below minimum", put64(96, layout.MinJournalBlocks-1), layout.ErrCorrupt},
		{"data start", put64(104, g.DataStart+1), layout.ErrCorrupt},
		{"device shrunk", put64(112, (g.DataStart+g.SlotCount)*layout.BlockSize-1), layout.ErrGeometry},
		{"device size 0", put64(112, 0), layout.ErrGeometry},
		{"device size beyond int64", put64(112, math.MaxUint64), layout.ErrGeometry},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b := bytes.Clone(good)
			c.edit(b)
			resealSuperblock(b)
			_, err := layout.DecodeSuperblock(b)
			require.Error(t, err)
			requireSentinel(t, err)
			if c.want != nil {
				require.ErrorIs(t, err, c.want)
			}
		})
	}
}

// TestSuperblockOrderBrokenFlag: the flag of format version 3 is read
// back, with or without the clean flag.
func TestSuperblockOrderBrokenFlag(t *testing.T) {
	for _, f := range []uint32{layout.FlagOrderBroken, layout.FlagClean | layout.FlagOrderBroken} {
		b := encodeSuperblock(layout.Superblock{Generation: 3, Geometry: mustGeometry(t, 2<<20, 16), Flags: f})
		s, err := layout.DecodeSuperblock(b)
		require.NoError(t, err)
		require.Equal(t, f, s.Flags)
	}
}

// TestSuperblockWrappingGeometry: a superblock whose region table is
// consistent only with wrap-around uint64 arithmetic must not decode.
func TestSuperblockWrappingGeometry(t *testing.T) {
	for _, g := range wrappingGeometries() {
		s := sampleSuperblock(t)
		s.Geometry = g
		b := encodeSuperblock(s)
		_, err := layout.DecodeSuperblock(b)
		require.Error(t, err, "%+v", g)
		requireSentinel(t, err)
	}
}

// TestSuperblockEveryBitFlip flips each of the 32768 bits of valid
// superblocks in turn: every single flip must be detected.
func TestSuperblockEveryBitFlip(t *testing.T) {
	for name, s := range map[string]layout.Superblock{
		"sample":  sampleSuperblock(t),
		"minimal": {Geometry: mustGeometry(t, 2<<20, 16)},
	} {
		t.Run(name, func(t *testing.T) {
			good := encodeSuperblock(s)
			for bit := range bitsPerBlock {
				_, err := layout.DecodeSuperblock(flipBit(good, bit))
				if err == nil {
					t.Fatalf("flipping bit %d (byte %d) was not detected", bit, bit/8)
				}
				switch {
				case bit < 64: // magic
					require.ErrorIs(t, err, layout.ErrNotFormatted, "bit %d", bit)
				case bit < 96: // version: higher reads as newer, lower as damage
					if !errors.Is(err, layout.ErrVersion) {
						require.ErrorIs(t, err, layout.ErrCorrupt, "bit %d", bit)
					}
				default:
					require.ErrorIs(t, err, layout.ErrCorrupt, "bit %d", bit)
				}
			}
		})
	}
}

func TestPickSuperblock(t *testing.T) {
	older := sampleSuperblock(t)
	older.Generation = 10
	newer := older
	newer.Generation = 11
	wrappedNF := fmt.Errorf("copy 0: %w", layout.ErrNotFormatted)
	corrupt := fmt.Errorf("superblock checksum: %w", layout.ErrCorrupt)
	version := fmt.Errorf("format version 9: %w", layout.ErrVersion)
	zero := layout.Superblock{}

	type sbErr struct {
		sb  layout.Superblock
		err error
	}
	cases := []struct {
		name    string
		a, b    sbErr
		want    layout.Superblock
		wantErr error
	}{
		{"b newer", sbErr{older, nil}, sbErr{newer, nil}, newer, nil},
		{"a newer", sbErr{newer, nil}, sbErr{older, nil}, newer, nil},
		{"equal generations", sbErr{older, nil}, sbErr{older, nil}, older, nil},
		{"a only, b blank", sbErr{older, nil}, sbErr{zero, layout.ErrNotFormatted}, older, nil},
		{"a only, b corrupt", sbErr{older, nil}, sbErr{newer, corrupt}, older, nil},
		{"a only, b newer version", sbErr{older, nil}, sbErr{zero, version}, older, nil},
		{"b only, a blank", sbErr{zero, layout.ErrNotFormatted}, sbErr{older, nil}, older, nil},
		{"b only, a corrupt", sbErr{newer, corrupt}, sbErr{older, nil}, older, nil},
		{"b only, a newer version", sbErr{zero, version}, sbErr{older, nil}, older, nil},
		{"both blank", sbErr{zero, layout.ErrNotFormatted}, sbErr{zero, layout.ErrNotFormatted}, zero, layout.ErrNotFormatted},
		{"corrupt before blank (a)", sbErr{zero, corrupt}, sbErr{zero, layout.ErrNotFormatted}, zero, layout.ErrCorrupt},
		{"corrupt before blank (b)", sbErr{zero, layout.ErrNotFormatted}, sbErr{zero, corrupt}, zero, layout.ErrCorrupt},
		{"version before blank (a)", sbErr{zero, version}, sbErr{zero, layout.ErrNotFormatted}, zero, layout.ErrVersion},
		{"version before blank (b)", sbErr{zero, layout.ErrNotFormatted}, sbErr{zero, version}, zero, layout.ErrVersion},
		{"corrupt before wrapped blank", sbErr{zero, wrappedNF}, sbErr{zero, corrupt}, zero, layout.ErrCorrupt},
		{"version before wrapped blank", sbErr{zero, wrappedNF}, sbErr{zero, version}, zero, layout.ErrVersion},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := layout.PickSuperblock(c.a.sb, c.a.err, c.b.sb, c.b.err)
			if c.wantErr == nil {
				require.NoError(t, err)
			} else {
				require.ErrorIs(t, err, c.wantErr)
			}
			assert.Equal(t, c.want, got)
		})
	}

	// Two telling errors: either may be reported, but never "not formatted".
	for _, pair := range [][2]error{{corrupt, version}, {version, corrupt}} {
		got, err := layout.PickSuperblock(zero, pair[0], zero, pair[1])
		require.Error(t, err)
		assert.True(t, err == pair[0] || err == pair[1])
		assert.NotErrorIs(t, err, layout.ErrNotFormatted)
		assert.Equal(t, zero, got)
	}
}

// TestPickSuperblockFromDevice runs the superblock update protocol on a
// two-block "device": each generation goes to its copy, and a torn or
// damaged latest copy falls back to the previous generation.
func TestPickSuperblockFromDevice(t *testing.T) {
	dev := make([]byte, 2*layout.BlockSize)
	copyOf := func(c int) []byte {
		off := layout.SuperblockOffset(c)
		return dev[off : off+layout.BlockSize]
	}
	read := func() (layout.Superblock, error) {
		a, errA := layout.DecodeSuperblock(copyOf(0))
		b, errB := layout.DecodeSuperblock(copyOf(1))
		return layout.PickSuperblock(a, errA, b, errB)
	}

	_, err := read()
	require.ErrorIs(t, err, layout.ErrNotFormatted)

	s := sampleSuperblock(t)
	for gen := uint64(0); gen < 6; gen++ {
		s.Generation = gen
		s.ReplayLSN = gen * 100
		s.Encode(copyOf(s.Copy()))
		got, err := read()
		require.NoError(t, err)
		require.Equal(t, s, got)
	}

	// Tear the newest copy (generation 5, copy 1): generation 4 wins.
	torn := copyOf(1)
	for i := layout.BlockSize / 2; i < layout.BlockSize; i++ {
		torn[i] ^= 0x5a
	}
	got, err := read()
	require.NoError(t, err)
	assert.Equal(t, uint64(4), got.Generation)
	assert.Equal(t, uint64(400), got.ReplayLSN)

	// Damage the other copy as well: corruption is reported, not "blank".
	copyOf(0)[200] ^= 1
	_, err = read()
	require.ErrorIs(t, err, layout.ErrCorrupt)

	// One copy wiped, the other damaged: still corruption.
	clear(copyOf(1))
	_, err = read()
	require.ErrorIs(t, err, layout.ErrCorrupt)
	assert.NotErrorIs(t, err, layout.ErrNotFormatted)
}

func TestDataCRC(t *testing.T) {
	// The standard CRC-32C check value.
	assert.Equal(t, uint32(0xe3069283), layout.DataCRC([]byte("123456789")))
	assert.Equal(t, uint32(0), layout.DataCRC(nil))
	b := bytes.Repeat([]byte{0x42}, layout.BlockSize)
	assert.Equal(t, crc32.Checksum(b, castagnoli), layout.DataCRC(b), "the data CRC is plain, unseeded CRC32C")
}

// An old superblock has zeros where the description goes: it decodes with
// an empty description. A long one is cut at a character boundary.
func TestSuperblockDescription(t *testing.T) {
	s := sampleSuperblock(t)
	s.BackingDescription = ""
	got, err := layout.DecodeSuperblock(encodeSuperblock(s))
	require.NoError(t, err)
	assert.Empty(t, got.BackingDescription)

	s.BackingDescription = "/dev/loop0 (loop device on /srv/" + strings.Repeat("ü", 200) + ".img)"
	got, err = layout.DecodeSuperblock(encodeSuperblock(s))
	require.NoError(t, err)
	assert.LessOrEqual(t, len(got.BackingDescription), layout.DescriptionSize)
	assert.True(t, strings.HasPrefix(s.BackingDescription, got.BackingDescription))
	assert.True(t, utf8.ValidString(got.BackingDescription), "cut inside a character: %q", got.BackingDescription[len(got.BackingDescription)-4:])
	assert.Equal(t, got.BackingDescription, layout.TruncateDescription(s.BackingDescription))
}
