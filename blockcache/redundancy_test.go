package blockcache

import (
	"bytes"
	"log/slog"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wbcache/wbcache/device"
	"github.com/wbcache/wbcache/layout"
)

// usedCache is a cache opened and closed twice (so both superblock and
// both checkpoint copies have been written), holding dirty blocks.
func usedCache(t *testing.T) (*device.Mem, *device.Mem) {
	ssd, hdd := device.NewMem(8<<20, [16]byte{1}), device.NewMem(16<<20, [16]byte{2})
	require.NoError(t, Format(ssd, hdd, FormatOptions{}))
	for range 2 {
		c, err := Open(ssd, hdd, Options{CheckpointInterval: -1})
		require.NoError(t, err)
		_, err = c.WriteAt(bytes.Repeat([]byte{7}, 8*BlockSize), 0)
		require.NoError(t, err)
		require.NoError(t, c.Close())
	}
	return ssd, hdd
}

// openLogged opens the cache and returns what it logged.
func openLogged(t *testing.T, ssd, hdd device.Device) string {
	var log bytes.Buffer
	c, err := Open(ssd, hdd, Options{CheckpointInterval: -1, Logger: slog.New(slog.NewTextHandler(&log, nil))})
	require.NoError(t, err)
	require.NoError(t, c.Close())
	return log.String()
}

func TestDegradedSuperblockCopy(t *testing.T) {
	for k := range int64(2) {
		ssd, hdd := usedCache(t)
		_, err := ssd.WriteAt([]byte{0xee}, k*BlockSize+60)
		require.NoError(t, err)

		r, err := Check(ssd, hdd)
		require.NoError(t, err)
		require.True(t, r.OK(), r.String())
		require.Len(t, r.Degraded, 1, r.String())
		assert.Contains(t, r.Degraded[0], "superblock copy "+string(rune('0'+k)))
		assert.Contains(t, r.String(), "WARNING: degraded redundancy")
		assert.NotContains(t, r.String(), "\nconsistent\n")

		assert.Contains(t, openLogged(t, ssd, hdd), "degraded redundancy, repaired")
		r, err = Check(ssd, hdd)
		require.NoError(t, err)
		assert.Empty(t, r.Degraded, "mount did not repair copy %d: %s", k, r.String())
	}
}

func TestDegradedCheckpointCopy(t *testing.T) {
	ssd, hdd := usedCache(t)
	sb, err := ReadSuperblock(ssd)
	require.NoError(t, err)
	_, err = ssd.WriteAt([]byte{0xee}, sb.Geometry.MapPageOffset(1-int(sb.CheckpointCopy), 0)+200)
	require.NoError(t, err)

	r, err := Check(ssd, hdd)
	require.NoError(t, err)
	require.True(t, r.OK(), r.String())
	require.Len(t, r.Degraded, 1, r.String())
	assert.Contains(t, r.Degraded[0], "checkpoint copy")
	assert.Contains(t, r.Degraded[0], "1 of its")

	assert.Contains(t, openLogged(t, ssd, hdd), "checkpoint copy")
	r, err = Check(ssd, hdd)
	require.NoError(t, err)
	assert.Empty(t, r.Degraded, r.String())
}

// A fresh cache has nothing degraded, nor one formatted by an earlier
// wbcache (copy 0 zero until the first checkpoint).
func TestFreshFormatNotDegraded(t *testing.T) {
	ssd, hdd := formatted(t)
	r, err := Check(ssd, hdd)
	require.NoError(t, err)
	assert.Empty(t, r.Degraded)
	assert.Contains(t, r.String(), "\nconsistent\n")

	_, err = ssd.WriteAt(make([]byte, BlockSize), 0) // what earlier versions left
	require.NoError(t, err)
	r, err = Check(ssd, hdd)
	require.NoError(t, err)
	assert.Empty(t, r.Degraded, r.String())
}

// Without a superblock, check prints no header of zeros, and says what
// can save the blocks.
func TestCheckNoSuperblock(t *testing.T) {
	ssd, hdd := usedCache(t)
	wipeSuperblocks(t, ssd)
	r, err := Check(ssd, hdd)
	require.NoError(t, err)
	require.True(t, r.NoSuperblock)
	require.False(t, r.OK())
	assert.NotContains(t, r.String(), "0 slots")
	assert.Contains(t, r.String(), "no valid superblock")
	assert.Contains(t, r.String(), "it may hold dirty blocks")
	assert.NotContains(t, r.String(), "wbcache", "the engine says what broke; the command says what to type")
}

// A foreign device has no checkpoint at block 2: nothing to rescue.
func TestOpenUnformattedNoRemnants(t *testing.T) {
	ssd, hdd := device.NewMem(64*BlockSize, [16]byte{1}), device.NewMem(32*BlockSize, [16]byte{2})
	_, err := Open(ssd, hdd, Options{})
	require.ErrorIs(t, err, layout.ErrNotFormatted)
	require.NotErrorIs(t, err, ErrSuperblocksLost)
}

// The wrong backing device is refused naming both devices in words.
func TestWrongBackingNamesBoth(t *testing.T) {
	dir := t.TempDir()
	ssdPath, hddPath, otherPath := filepath.Join(dir, "ssd"), filepath.Join(dir, "hdd.img"), filepath.Join(dir, "other.img")
	require.NoError(t, device.Create(ssdPath, 8<<20))
	require.NoError(t, device.Create(hddPath, 16<<20))
	require.NoError(t, device.Create(otherPath, 16<<20))
	ssd, hdd := openFiles(t, ssdPath, hddPath, false)
	require.NoError(t, Format(ssd, hdd, FormatOptions{}))
	sb, err := ReadSuperblock(ssd)
	require.NoError(t, err)
	assert.Equal(t, hddPath, sb.BackingDescription)

	other, err := device.Open(otherPath, device.Options{ReadOnly: true})
	require.NoError(t, err)
	defer other.Close()
	_, err = Open(ssd, other, Options{})
	require.ErrorIs(t, err, ErrWrongBacking)
	assert.Contains(t, err.Error(), "the backing device "+otherPath+" (identity")
	assert.Contains(t, err.Error(), "formatted for, "+hddPath+" (identity")
	r, err := Check(ssd, other)
	require.NoError(t, err)
	require.False(t, r.OK())
	assert.Contains(t, r.Problems[0], hddPath)

	// A cache from before descriptions were recorded says so.
	sb.BackingDescription = ""
	sb.Generation++
	require.NoError(t, writeSuperblock(ssd, &sb))
	_, err = Open(ssd, other, Options{})
	assert.Contains(t, err.Error(), "a device it did not record (the cache was formatted by an earlier wbcache)")
}
