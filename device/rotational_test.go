package device

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestRotationalOf reads queue/rotational from a sysfs tree: a disk's own,
// a partition's disk's, and nothing for an unknown device.
func TestRotationalOf(t *testing.T) {
	sys := t.TempDir()
	mk := func(dir, rot string) {
		require.NoError(t, os.MkdirAll(filepath.Join(sys, dir, "queue"), 0o755))
		require.NoError(t, os.WriteFile(filepath.Join(sys, dir, "queue", "rotational"), []byte(rot+"\n"), 0o644))
	}
	mk("devices/sda", "1")
	mk("devices/nvme0n1", "0")
	require.NoError(t, os.MkdirAll(filepath.Join(sys, "devices/nvme0n1/nvme0n1p2"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(sys, "devices/nvme0n1/nvme0n1p2/partition"), []byte("2\n"), 0o644))
	require.NoError(t, os.MkdirAll(filepath.Join(sys, "dev/block"), 0o755))
	for link, target := range map[string]string{"8:0": "devices/sda", "259:0": "devices/nvme0n1", "259:2": "devices/nvme0n1/nvme0n1p2"} {
		require.NoError(t, os.Symlink(filepath.Join(sys, target), filepath.Join(sys, "dev/block", link)))
	}
	for _, tc := range []struct {
		major, minor uint32
		rot, known   bool
	}{{8, 0, true, true}, {259, 0, false, true}, {259, 2, false, true}, {7, 9, false, false}} {
		rot, known := rotationalOf(filepath.Join(sys, "dev/block", fmt.Sprintf("%d:%d", tc.major, tc.minor)))
		require.Equal(t, tc.known, known, "%d:%d known", tc.major, tc.minor)
		require.Equal(t, tc.rot, rot, "%d:%d rotational", tc.major, tc.minor)
	}
	// A path that does not exist: unknown.
	_, known := Rotational(filepath.Join(sys, "missing"))
	require.False(t, known)
}
