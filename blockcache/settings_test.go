package blockcache

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/wbcache/wbcache/device"
	"github.com/wbcache/wbcache/layout"
)

// TestSettingsOutsideFormatRefused: settings the superblock cannot hold
// (an unknown mode, a reserved set-mask bit) are refused as invalid by
// SetSettings and Format, so they never make the superblock corrupt.
func TestSettingsOutsideFormatRefused(t *testing.T) {
	c, ssd, hdd := openSmall(t, 32, 64, Options{})
	good := layout.Settings{Mode: layout.ModeWritethrough, Workers: 3, SetMask: layout.SetWorkers}
	require.NoError(t, c.SetSettings(good))
	for _, bad := range []layout.Settings{
		{Mode: layout.ModeNone + 1},
		{SetMask: layout.SetKnown + 1},
		{SetMask: 1 << 31},
	} {
		require.ErrorIs(t, c.SetSettings(bad), ErrInvalid, "%+v", bad)
		require.Equal(t, good, c.Settings(), "a refused change leaves the settings")
		require.ErrorIs(t, Format(device.NewMem(ssd.Size(), [16]byte{5}), hdd, FormatOptions{JournalBlocks: 32, Settings: bad}), ErrInvalid)
	}
	require.NoError(t, c.Close())
	sb, err := ReadSuperblock(ssd)
	require.NoError(t, err)
	require.Equal(t, good, sb.Settings)
}

func TestSettingsEngineDefaults(t *testing.T) {
	var s layout.Settings
	require.Equal(t, int64(DefaultSeqCutoff), SeqCutoff(s))
	require.Equal(t, 1, PromoteAfter(s))
	s.SeqCutoff, s.PromoteAfter = 0, 0
	s.SetMask = layout.SetSeqCutoff | layout.SetPromoteAfter
	require.Zero(t, SeqCutoff(s), "explicit 0: never bypass")
	require.Zero(t, PromoteAfter(s))
	s.SeqCutoff, s.PromoteAfter = 1<<20, 4
	require.Equal(t, int64(1<<20), SeqCutoff(s))
	require.Equal(t, 4, PromoteAfter(s))
	s.SetMask = 0
	require.Equal(t, int64(DefaultSeqCutoff), SeqCutoff(s), "a value without its bit is ignored")
	require.Equal(t, 1, PromoteAfter(s))
}
