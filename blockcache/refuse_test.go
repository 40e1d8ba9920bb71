package blockcache

import (
	"encoding/binary"
	"hash/crc32"
	"math/rand/v2"
	"regexp"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/wbcache/wbcache/device"
	"github.com/wbcache/wbcache/layout"
)

func formatted(t *testing.T) (*device.Mem, *device.Mem) {
	ssd, hdd := device.NewMem(64*BlockSize, [16]byte{1}), device.NewMem(32*BlockSize, [16]byte{2})
	require.NoError(t, Format(ssd, hdd, FormatOptions{JournalBlocks: 16}))
	return ssd, hdd
}

func TestOpenRefusesUnformatted(t *testing.T) {
	ssd, hdd := device.NewMem(64*BlockSize, [16]byte{1}), device.NewMem(32*BlockSize, [16]byte{2})
	_, err := Open(ssd, hdd, Options{})
	require.ErrorIs(t, err, layout.ErrNotFormatted)
	requireNoCommandAdvice(t, err)
}

// requireNoCommandAdvice: the engine's errors say what is wrong; what to
// type about it is the command's to say.
func requireNoCommandAdvice(t *testing.T, err error) {
	t.Helper()
	require.NotRegexp(t, commandAdvice, err.Error())
}

// commandAdvice matches a subcommand or a flag named in a message.
var commandAdvice = regexp.MustCompile(`wbcache (format|mount|check|detach|status|flush|mode|set)\b|--[a-z]`)

func TestOpenRefusesForeign(t *testing.T) {
	ssd, hdd := device.NewMem(64*BlockSize, [16]byte{1}), device.NewMem(32*BlockSize, [16]byte{2})
	junk := make([]byte, 64*BlockSize)
	fill(rand.New(rand.NewPCG(1, 2)), junk, 0)
	_, err := ssd.WriteAt(junk, 0)
	require.NoError(t, err)
	_, err = Open(ssd, hdd, Options{})
	require.ErrorIs(t, err, layout.ErrNotFormatted)
}

func TestOpenRefusesNewerVersion(t *testing.T) {
	ssd, hdd := formatted(t)
	sb, err := ReadSuperblock(ssd)
	require.NoError(t, err)
	b := make([]byte, BlockSize)
	_, err = ssd.ReadAt(b, layout.SuperblockOffset(sb.Copy()))
	require.NoError(t, err)
	binary.LittleEndian.PutUint32(b[8:], layout.FormatVersion+1)
	// Re-seal as a newer wbcache would: CRC32C over 16 zero bytes then the
	// block with the checksum field zero.
	binary.LittleEndian.PutUint32(b[12:], 0)
	tab := crc32.MakeTable(crc32.Castagnoli)
	crc := crc32.Update(crc32.Update(0, tab, make([]byte, 16)), tab, b)
	binary.LittleEndian.PutUint32(b[12:], crc)
	_, err = ssd.WriteAt(b, layout.SuperblockOffset(sb.Copy()))
	require.NoError(t, err)
	_, err = Open(ssd, hdd, Options{})
	require.ErrorIs(t, err, layout.ErrVersion)
	require.Contains(t, err.Error(), "newer")
}

func TestOpenRefusesWrongBacking(t *testing.T) {
	ssd, _ := formatted(t)
	_, err := Open(ssd, device.NewMem(32*BlockSize, [16]byte{3}), Options{})
	require.ErrorIs(t, err, ErrWrongBacking)
	require.Contains(t, err.Error(), "identity")
	requireNoCommandAdvice(t, err)
	_, err = Open(ssd, device.NewMem(40*BlockSize, [16]byte{2}), Options{})
	require.ErrorIs(t, err, ErrWrongBacking)
	require.Contains(t, err.Error(), "bytes")
	requireNoCommandAdvice(t, err)
}

func TestFormatRefusesFormatted(t *testing.T) {
	ssd, hdd := formatted(t)
	err := Format(ssd, hdd, FormatOptions{JournalBlocks: 16})
	require.ErrorIs(t, err, ErrFormatted)
	require.NotErrorIs(t, err, layout.ErrCorrupt)
	require.Contains(t, err.Error(), "UUID")
	requireNoCommandAdvice(t, err)
	require.NoError(t, Format(ssd, hdd, FormatOptions{JournalBlocks: 16, Force: true}))
}

// TestFormatRefusesDamagedCache: a device whose superblocks carry the
// magic but fail their checks is refused as a cache too, and the error
// also says why the superblock is damaged (errors.Is layout.ErrCorrupt).
func TestFormatRefusesDamagedCache(t *testing.T) {
	ssd, hdd := formatted(t)
	for copyNo := range 2 {
		b := make([]byte, 1)
		off := layout.SuperblockOffset(copyNo) + 100
		_, err := ssd.ReadAt(b, off)
		require.NoError(t, err)
		b[0] ^= 0xff
		_, err = ssd.WriteAt(b, off)
		require.NoError(t, err)
	}
	err := Format(ssd, hdd, FormatOptions{JournalBlocks: 16})
	require.ErrorIs(t, err, ErrFormatted)
	require.ErrorIs(t, err, layout.ErrCorrupt)
	requireNoCommandAdvice(t, err)
	require.NoError(t, Format(ssd, hdd, FormatOptions{JournalBlocks: 16, Force: true}))
}

func TestFormatRefusesBadBacking(t *testing.T) {
	ssd := device.NewMem(64*BlockSize, [16]byte{1})
	err := Format(ssd, device.NewMem(BlockSize+512, [16]byte{2}), FormatOptions{JournalBlocks: 16})
	require.ErrorIs(t, err, ErrBadBacking)
	err = Format(device.NewMem(8*BlockSize, [16]byte{1}), device.NewMem(32*BlockSize, [16]byte{2}), FormatOptions{JournalBlocks: 16})
	require.ErrorIs(t, err, layout.ErrGeometry)
}

func TestOutOfRangeIO(t *testing.T) {
	ssd, hdd := formatted(t)
	c, err := Open(ssd, hdd, Options{})
	require.NoError(t, err)
	defer c.Close()
	_, err = c.WriteAt(make([]byte, 10), c.Size()-5)
	require.ErrorIs(t, err, ErrInvalid)
	_, err = c.ReadAt(make([]byte, 1), -1)
	require.ErrorIs(t, err, ErrInvalid)
	require.ErrorIs(t, c.Discard(c.Size(), BlockSize), ErrInvalid)
}

// TestCheckDetectsCorruptData: the offline checker verifies every cached
// block's checksum.
func TestCheckDetectsCorruptData(t *testing.T) {
	ssd, hdd := formatted(t)
	c, err := Open(ssd, hdd, Options{})
	require.NoError(t, err)
	_, err = c.WriteAt(make([]byte, 4*BlockSize), 0)
	require.NoError(t, err)
	require.NoError(t, c.Close())
	r, err := Check(ssd, hdd)
	require.NoError(t, err)
	require.True(t, r.OK(), r.String())
	require.Equal(t, 4, r.Dirty)
	require.True(t, r.Clean)
	g := c.Geometry()
	// Flip a byte of the first data slot that holds a block.
	for s := uint64(0); s < g.SlotCount; s++ {
		b := make([]byte, 1)
		_, err := ssd.ReadAt(b, g.SlotOffset(s)+100)
		require.NoError(t, err)
		b[0] ^= 1
		_, err = ssd.WriteAt(b, g.SlotOffset(s)+100)
		require.NoError(t, err)
	}
	r, err = Check(ssd, hdd)
	require.NoError(t, err)
	require.False(t, r.OK())
	require.Len(t, r.Problems, 4, r.String())
	r, err = Check(ssd, device.NewMem(32*BlockSize, [16]byte{9}))
	require.NoError(t, err)
	require.Contains(t, r.String(), "identity")
}
