package device

import (
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestAlignedBuffer(t *testing.T) {
	for _, n := range []int{0, 1, 511, BlockSize, 3*BlockSize + 17, 1 << 20} {
		b := AlignedBuffer(n)
		if len(b) != n || cap(b) != n {
			t.Errorf("AlignedBuffer(%d): len %d cap %d", n, len(b), cap(b))
		}
		if !isAligned(b) {
			t.Errorf("AlignedBuffer(%d) is not %d-aligned", n, BlockSize)
		}
		if !allZero(b) {
			t.Errorf("AlignedBuffer(%d) is not zeroed", n)
		}
	}
	defer func() {
		if recover() == nil {
			t.Error("AlignedBuffer(-1) did not panic")
		}
	}()
	AlignedBuffer(-1)
}

func TestNeedsAlignment(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f")
	require.NoError(t, Create(path, 1<<20))
	for _, direct := range []bool{false, true} {
		f, err := Open(path, Options{Direct: direct})
		require.NoError(t, err)
		require.Equal(t, direct, NeedsAlignment(f))
		require.NoError(t, f.Close())
	}
	require.False(t, NeedsAlignment(NewMem(1<<20, [16]byte{1})))
}
