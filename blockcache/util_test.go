package blockcache

import (
	"fmt"
	"os"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/wbcache/wbcache/device"
)

func removeFile(p string) error { return os.Remove(p) }

func typeName(v any) string { return fmt.Sprintf("%T", v) }

// openFilePair opens a cache file and a backing file (through the page
// cache); both are closed when tb ends.
func openFilePair(tb testing.TB, ssdPath, hddPath string) (ssd, hdd *device.File) {
	tb.Helper()
	ssd, err := device.Open(ssdPath, device.Options{})
	require.NoError(tb, err)
	tb.Cleanup(func() { ssd.Close() })
	hdd, err = device.Open(hddPath, device.Options{})
	require.NoError(tb, err)
	tb.Cleanup(func() { hdd.Close() })
	return ssd, hdd
}
