package device

import (
	"bytes"
	"errors"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// TestUnwritten: written data, an extent allocated ahead, a hole and
// pages waiting for delayed allocation are told apart, and
// WriteZerosAhead leaves nothing unwritten without touching the data
// around it.
func TestUnwritten(t *testing.T) {
	const mib = 1 << 20
	path := filepath.Join(t.TempDir(), "f")
	require.NoError(t, Create(path, 4*mib))
	f, err := Open(path, Options{})
	require.NoError(t, err)
	defer f.Close()
	data := bytes.Repeat([]byte{0x5A}, mib)
	_, err = f.WriteAt(data, 0)
	require.NoError(t, err)
	require.NoError(t, f.Sync())
	require.NoError(t, unix.Fallocate(f.fd, unix.FALLOC_FL_KEEP_SIZE, mib, mib))
	// [3 MiB, 4 MiB): dirty pages, no blocks yet (delayed allocation).
	_, err = f.WriteAt(data, 3*mib)
	require.NoError(t, err)

	got, err := f.Unwritten(0, 4*mib)
	if errors.Is(err, ErrNoExtentMap) {
		t.Skipf("SKIP: the filesystem of %s does not report extents (FIEMAP)", path)
	}
	require.NoError(t, err)
	// Allocated-ahead [1, 2) and hole [2, 3) make one range. Filesystems
	// without delayed allocation have allocated [3, 4) already.
	require.Equal(t, []Extent{{mib, 2 * mib}}, got)
	part, err := f.Unwritten(mib+4096, 8192)
	require.NoError(t, err)
	require.Equal(t, []Extent{{mib + 4096, 8192}}, part, "clipped to the range asked")

	require.NoError(t, f.WriteZerosAhead([]Extent{{mib, 2 * mib}}))
	got, err = f.Unwritten(0, 4*mib)
	require.NoError(t, err)
	require.Empty(t, got)
	buf := make([]byte, mib)
	for _, off := range []int64{0, 3 * mib} {
		_, err = f.ReadAt(buf, off)
		require.NoError(t, err)
		require.Equal(t, data, buf, "data at %d changed", off)
	}
	_, err = f.ReadAt(buf, mib)
	require.NoError(t, err)
	require.Equal(t, make([]byte, mib), buf)
	require.Error(t, f.WriteZerosAhead([]Extent{{100, 4096}}), "unaligned range accepted")
}
