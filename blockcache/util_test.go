package blockcache

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/wbcache/wbcache/device"
)

func removeFile(p string) error { return os.Remove(p) }

func typeName(v any) string { return fmt.Sprintf("%T", v) }

// filePair creates a cache file of ssdSize bytes (allocated ahead with
// allocate, as format does) and a sparse backing file of hddSize bytes
// in a new temporary directory, and opens both through the page cache;
// they are closed when tb ends. It returns the cache file's path too.
func filePair(tb testing.TB, ssdSize, hddSize int64, allocate bool) (ssd, hdd *device.File, ssdPath string) {
	tb.Helper()
	dir := tb.TempDir()
	ssdPath, hddPath := filepath.Join(dir, "ssd"), filepath.Join(dir, "hdd")
	create := device.Create
	if allocate {
		create = device.CreateAllocated
	}
	require.NoError(tb, create(ssdPath, ssdSize))
	require.NoError(tb, device.Create(hddPath, hddSize))
	ssd, err := device.Open(ssdPath, device.Options{})
	require.NoError(tb, err)
	tb.Cleanup(func() { ssd.Close() })
	hdd, err = device.Open(hddPath, device.Options{})
	require.NoError(tb, err)
	tb.Cleanup(func() { hdd.Close() })
	return ssd, hdd, ssdPath
}
