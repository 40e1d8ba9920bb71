package blockcache

import (
	"bytes"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/wbcache/wbcache/device"
	"github.com/wbcache/wbcache/device/devicetest"
	"github.com/wbcache/wbcache/layout"
)

// logBuffer collects a logger's output.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func (l *logBuffer) logger() *slog.Logger { return slog.New(slog.NewTextHandler(l, nil)) }

// spaceOpts are the options of the caches in these tests.
func spaceOpts(log *slog.Logger) Options {
	return Options{Logger: log, CheckpointInterval: -1, NoBackgroundBackingSync: true}
}

// block is the content a test writes to lba in round r.
func block(lba, r int) []byte {
	return bytes.Repeat([]byte(fmt.Sprintf("lba %5d round %3d|", lba, r)), BlockSize/20+1)[:BlockSize]
}

// readBack checks that every block of want reads back from c.
func readBack(t *testing.T, c *Cache, want map[int][]byte) {
	t.Helper()
	buf := make([]byte, BlockSize)
	for lba, data := range want {
		_, err := c.ReadAt(buf, int64(lba)*BlockSize)
		require.NoError(t, err, "block %d", lba)
		require.Equal(t, data, buf, "block %d", lba)
	}
}

// TestUnmappableCacheFile: a cache file on a filesystem that refuses
// shared mappings (a FUSE filesystem serving it with direct I/O) formats,
// opens, takes writes and syncs, with its journal written by pwrite; the
// log says so, every acknowledged write survives a process crash (the
// file as the writes left it, no sync, no close), and a clean reopen.
func TestUnmappableCacheFile(t *testing.T) {
	mnt := devicetest.MountDirectIO(t, t.TempDir())
	ssdPath, hddPath := filepath.Join(mnt, "ssd.img"), filepath.Join(t.TempDir(), "hdd.img")
	require.NoError(t, device.CreateAllocated(ssdPath, 16<<20))
	require.NoError(t, device.Create(hddPath, 64<<20))
	ssd, hdd := openFiles(t, ssdPath, hddPath, false)
	require.NoError(t, Format(ssd, hdd, FormatOptions{}))
	var log logBuffer
	c, err := Open(ssd, hdd, spaceOpts(log.logger()))
	require.NoError(t, err)
	require.Equal(t, "pwrite", c.JournalWrites())
	require.Contains(t, log.String(), `msg="journal writes: pwrite (the cache file cannot be mapped: mmap `+ssdPath+`: no such device)"`)

	// More records than a journal block holds, some blocks rewritten,
	// partial writes; a sync half-way.
	want := map[int][]byte{}
	write := func(lba, r int) {
		_, err := c.WriteAt(block(lba, r), int64(lba)*BlockSize)
		require.NoError(t, err)
		want[lba] = block(lba, r)
	}
	for lba := range 2 * layout.RecordsPerBlock {
		write(lba, 0)
	}
	require.NoError(t, c.Sync())
	for lba := 0; lba < 300; lba += 3 {
		write(lba, 1)
	}
	_, err = c.WriteAt([]byte("partial"), 5*BlockSize+100)
	require.NoError(t, err)
	copy(want[5][100:], "partial")
	readBack(t, c, want)

	// A process crash now: the cache file holds what the writes put there.
	img, err := os.ReadFile(ssdPath)
	require.NoError(t, err)
	crashPath := filepath.Join(t.TempDir(), "crash.img")
	require.NoError(t, os.WriteFile(crashPath, img, 0o600))
	crashSSD, err := device.Open(crashPath, device.Options{})
	require.NoError(t, err)
	defer crashSSD.Close()
	c2, err := Open(crashSSD, hdd, spaceOpts(nil))
	require.NoError(t, err)
	require.NotZero(t, c2.Stats().Replayed, "the writes are replayed from the journal")
	readBack(t, c2, want)
	require.NoError(t, c2.Close())

	// A clean stop and reopen on the FUSE filesystem.
	require.NoError(t, c.Close())
	ssd3, hdd3 := openFiles(t, ssdPath, hddPath, false)
	c3, err := Open(ssd3, hdd3, spaceOpts(nil))
	require.NoError(t, err)
	defer c3.Close()
	require.Equal(t, "pwrite", c3.JournalWrites())
	readBack(t, c3, want)
}

// TestJournalWritesMapped: a cache file that can be mapped says so.
func TestJournalWritesMapped(t *testing.T) {
	dir := t.TempDir()
	ssdPath, hddPath := filepath.Join(dir, "ssd"), filepath.Join(dir, "hdd")
	require.NoError(t, device.Create(ssdPath, 16<<20))
	require.NoError(t, device.Create(hddPath, 64<<20))
	ssd, hdd := openFiles(t, ssdPath, hddPath, false)
	require.NoError(t, Format(ssd, hdd, FormatOptions{}))
	var log logBuffer
	c, err := Open(ssd, hdd, spaceOpts(log.logger()))
	require.NoError(t, err)
	defer c.Close()
	require.Equal(t, "mmap", c.JournalWrites())
	require.Contains(t, log.String(), `msg="journal writes: shared mapping"`)
}
