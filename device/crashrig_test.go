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

// TestCrashRigRecycle: Take builds its images in the Mems given to
// Recycle (once), with the same content as in new ones.
func TestCrashRigRecycle(t *testing.T) {
	ssd, hdd := NewMem(8*BlockSize, [16]byte{1}), NewMem(16*BlockSize, [16]byte{2})
	mustWrite(t, ssd, bytes.Repeat([]byte{5}, BlockSize), 0)
	mustWrite(t, hdd, bytes.Repeat([]byte{6}, BlockSize), BlockSize)
	spareS, spareH := NewMem(8*BlockSize, [16]byte{9}), NewMem(16*BlockSize, [16]byte{9})
	mustWrite(t, spareS, bytes.Repeat([]byte{7}, 8*BlockSize), 0)
	r := NewCrashRig(ssd, hdd)
	r.Recycle(spareS, spareH)
	r.Arm(0, false, nil, nil)
	img, imgH := r.Images()
	require.True(t, img == spareS && imgH == spareH, "the images are not in the recycled Mems")
	require.Equal(t, mustRead(t, ssd, 0, 8*BlockSize), mustRead(t, img, 0, 8*BlockSize))
	require.Equal(t, mustRead(t, hdd, 0, 16*BlockSize), mustRead(t, imgH, 0, 16*BlockSize))
	require.Equal(t, [16]byte{1}, img.Identity())
	r.Arm(0, true, rand.New(rand.NewPCG(1, 2)), nil)
	img2, _ := r.Images()
	require.True(t, img2 != spareS, "a recycled Mem was used twice")
}
