package device

import (
	"bytes"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestCrashRig: the images are taken at the Nth mutating operation on
// either device, hold exactly what was written by then, and later
// operations do not reach them.
func TestCrashRig(t *testing.T) {
	ssd, hdd := NewMem(64*BlockSize, [16]byte{1}), NewMem(64*BlockSize, [16]byte{2})
	r := NewCrashRig(ssd, hdd)
	s, h := r.Dev(ssd), r.Dev(hdd)
	blk := func(b byte) []byte { return bytes.Repeat([]byte{b}, BlockSize) }
	called := 0
	r.Arm(3, false, nil, func() { called++ })
	mustWrite(t, s, blk(1), 0)
	require.NoError(t, h.Sync())
	require.False(t, r.Snapped())
	mustWrite(t, h, blk(2), 0) // the third: the images are taken after it
	require.True(t, r.Snapped())
	mustWrite(t, s, blk(3), 0)
	img, imgH := r.Images()
	require.Equal(t, blk(1), mustRead(t, img, 0, BlockSize), "a process crash keeps unsynced writes")
	require.Equal(t, blk(2), mustRead(t, imgH, 0, BlockSize))
	require.Equal(t, blk(3), mustRead(t, ssd, 0, BlockSize), "the live device goes on")
	require.Equal(t, 1, called)

	// A power cut drops or tears what was not synced; Arm(0) crashes now.
	require.NoError(t, s.Sync())
	mustWrite(t, s, blk(4), BlockSize)
	r.Arm(0, true, rand.New(rand.NewPCG(1, 2)), nil)
	require.True(t, r.Snapped())
	img, _ = r.Images()
	require.Equal(t, blk(3), mustRead(t, img, 0, BlockSize), "synced data survives a power cut")
	r.Disarm()
}
