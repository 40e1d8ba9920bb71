package layout_test

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wbcache/wbcache/layout"
)

// Settings offsets and set-mask bits as the settings table in doc.go gives
// them, relative to settingsOff.
const (
	setModeOff      = 0
	setPromoteOff   = 1
	setLowOff       = 2
	setHighOff      = 3
	setWorkersOff   = 4
	setOrderOff     = 6
	setAgeOff       = 8
	setCutoffOff    = 16
	setIdleRateOff  = 24
	setMaskOff      = 28
	setReservedOff  = 32
	docKnownSetBits = 8 // bits 0-7
)

// TestSettingsFormatValues: the mode values and set-mask bits are those
// doc.go gives, the ones existing caches were written with.
func TestSettingsFormatValues(t *testing.T) {
	assert.Equal(t, []uint8{0, 1, 2, 3},
		[]uint8{layout.ModeWriteback, layout.ModeWritethrough, layout.ModeWritearound, layout.ModeNone})
	assert.Equal(t, []uint32{1 << 0, 1 << 1, 1 << 2, 1 << 3, 1 << 4, 1 << 5, 1 << 6, 1 << 7},
		[]uint32{layout.SetPromoteAfter, layout.SetLowWatermark, layout.SetHighWatermark, layout.SetWorkers,
			layout.SetMaxDirtyAge, layout.SetSeqCutoff, layout.SetIdleRate, layout.SetOrder})
	assert.Equal(t, []uint8{0, 1}, []uint8{layout.OrderOrdered, layout.OrderUnordered})
	assert.Equal(t, uint32(1<<docKnownSetBits-1), layout.SetKnown)
}

func TestSettingsDocLayout(t *testing.T) {
	s := sampleSettings()
	b := encodeSuperblock(layout.Superblock{Geometry: mustGeometry(t, 2<<20, 16), Settings: s})[settingsOff:]
	assert.Equal(t, s.Mode, b[setModeOff])
	assert.Equal(t, s.PromoteAfter, b[setPromoteOff])
	assert.Equal(t, s.LowWatermark, b[setLowOff])
	assert.Equal(t, s.HighWatermark, b[setHighOff])
	assert.Equal(t, s.Workers, le.Uint16(b[setWorkersOff:]))
	assert.Equal(t, s.Order, b[setOrderOff])
	assert.Equal(t, []byte{0}, b[7:8], "reserved")
	assert.Equal(t, s.MaxDirtyAge, le.Uint32(b[setAgeOff:]))
	assert.Equal(t, []byte{0, 0, 0, 0}, b[12:16], "reserved")
	assert.Equal(t, s.SeqCutoff, le.Uint64(b[setCutoffOff:]))
	assert.Equal(t, s.IdleRate, le.Uint32(b[setIdleRateOff:]))
	assert.Equal(t, s.SetMask, le.Uint32(b[setMaskOff:]))
	assert.Equal(t, make([]byte, layout.SettingsSize-setReservedOff), b[setReservedOff:layout.SettingsSize], "reserved")
}

// TestSettingsSetMaskRoundTrip: every defined bit, alone and with the
// others, survives a superblock round trip and is the only one Has sees.
func TestSettingsSetMaskRoundTrip(t *testing.T) {
	for bit := range docKnownSetBits {
		for _, mask := range []uint32{1 << bit, layout.SetKnown, layout.SetKnown &^ (1 << bit)} {
			s := layout.Settings{Mode: layout.ModeWritearound, SetMask: mask}
			got := decodeSettingsVia(t, s)
			require.Equal(t, s, got, "mask %#x", mask)
			assert.Equal(t, mask&(1<<bit) != 0, got.Has(1<<bit), "mask %#x bit %d", mask, bit)
		}
	}
	assert.True(t, layout.Settings{SetMask: layout.SetKnown}.Has(layout.SetWorkers|layout.SetIdleRate))
	assert.False(t, layout.Settings{SetMask: layout.SetWorkers}.Has(layout.SetWorkers|layout.SetIdleRate))
}

// TestSettingsReservedRefused: a superblock whose settings carry a
// reserved set-mask bit or an unknown mode is corrupt, as doc.go says.
func TestSettingsReservedRefused(t *testing.T) {
	var bad []layout.Settings
	for bit := docKnownSetBits; bit < 32; bit++ {
		bad = append(bad, layout.Settings{SetMask: layout.SetKnown | 1<<bit})
	}
	for mode := int(layout.ModeNone) + 1; mode <= 255; mode += 17 {
		bad = append(bad, layout.Settings{Mode: uint8(mode)})
	}
	for _, s := range bad {
		name := fmt.Sprintf("mode %d mask %#x", s.Mode, s.SetMask)
		require.ErrorIs(t, s.Validate(), layout.ErrCorrupt, name)
		b := encodeSuperblock(layout.Superblock{Generation: 3, Geometry: mustGeometry(t, 2<<20, 16), Settings: s})
		_, err := layout.DecodeSuperblock(b)
		require.ErrorIs(t, err, layout.ErrCorrupt, name)
		if extra := s.SetMask &^ layout.SetKnown; extra != 0 {
			assert.Contains(t, err.Error(), fmt.Sprintf("%#x", extra), name)
		}
	}
	require.NoError(t, sampleSettings().Validate())
}

// decodeSettingsVia encodes s in a superblock and decodes it again.
func decodeSettingsVia(t *testing.T, s layout.Settings) layout.Settings {
	t.Helper()
	got, err := layout.DecodeSuperblock(encodeSuperblock(layout.Superblock{Geometry: mustGeometry(t, 2<<20, 16), Settings: s}))
	require.NoError(t, err)
	return got.Settings
}
