package blockcache

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wbcache/wbcache/device"
)

// allUnwritten is a cache device whose filesystem reports every byte as
// not written yet. It writes its "zeros" as a recognisable pattern, one
// slot at a time with a pause, so that a prefill pass that touched a slot
// in use would show in that slot's data, and it records what it wrote.
type allUnwritten struct {
	device.Device
	mu      sync.Mutex
	written map[int64]int // offset -> times written
	pause   time.Duration
}

func (d *allUnwritten) Unwritten(off, n int64) ([]device.Extent, error) {
	return []device.Extent{{Off: off, Len: n}}, nil
}

func (d *allUnwritten) WriteZerosAhead(ext []device.Extent) error {
	junk := bytes.Repeat([]byte{0xA5}, BlockSize)
	for _, e := range ext {
		for o := e.Off; o < e.Off+e.Len; o += BlockSize {
			if _, err := d.Device.WriteAt(junk, o); err != nil {
				return err
			}
			d.mu.Lock()
			d.written[o]++
			d.mu.Unlock()
			time.Sleep(d.pause)
		}
	}
	return nil
}

// requireReadsBack checks that every block with data in want reads back
// as that data.
func requireReadsBack(t *testing.T, c *Cache, want [][]byte, when string) {
	t.Helper()
	got := make([]byte, BlockSize)
	for lba, w := range want {
		if w == nil {
			continue
		}
		_, err := c.ReadAt(got, int64(lba)*BlockSize)
		require.NoError(t, err, "block %d%s", lba, when)
		require.True(t, bytes.Equal(w, got), "block %d does not read back as written%s", lba, when)
	}
}

func waitPrefilled(t *testing.T, c *Cache) {
	t.Helper()
	require.Eventually(t, func() bool { return c.Stats().UnwrittenBytes == 0 }, 60*time.Second, 5*time.Millisecond)
	// (The counter drops only after the pass has put a chunk's slots back.)
}

// TestPrefillOnlyFreeSlots: the background pass overwrites free slots only,
// while writers fill and rewrite slots and syncs free old ones. A slot the
// pass took while in use would read back as the pass's pattern and fail
// its checksum. With no writer, it covers every slot once.
func TestPrefillOnlyFreeSlots(t *testing.T) {
	ssd := &allUnwritten{Device: device.NewMem(8<<20, [16]byte{1}), written: map[int64]int{}, pause: 20 * time.Microsecond}
	hdd := device.NewMem(16<<20, [16]byte{2})
	require.NoError(t, Format(ssd, hdd, FormatOptions{}))
	require.NotEmpty(t, ssd.written, "Format wrote nothing ahead over the metadata area")
	clear(ssd.written)

	c, err := Open(ssd, hdd, Options{CheckpointInterval: -1})
	require.NoError(t, err)
	defer c.Close()
	slots := int64(c.SlotCount())
	require.Equal(t, slots*BlockSize, c.Stats().UnwrittenBytes, "the pass should start with the whole slot area")

	// Writers over more blocks than slots, so slots are freed and reused
	// while the pass runs.
	region := slots * 3 / 2
	want := make([][]byte, region)
	var wmu sync.Mutex
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func(seed uint64) {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, 1))
			for i := 0; i < 600; i++ {
				lba := rng.Int64N(region)
				buf := make([]byte, BlockSize)
				for k := range buf {
					buf[k] = byte(rng.Uint32())
				}
				wmu.Lock() // one writer per block, so want matches the disk
				if _, err := c.WriteAt(buf, lba*BlockSize); err != nil {
					wmu.Unlock()
					t.Error(err)
					return
				}
				want[lba] = buf
				wmu.Unlock()
				if i%50 == 0 {
					if err := c.Sync(); err != nil {
						t.Error(err)
						return
					}
				}
			}
		}(uint64(w) + 1)
	}
	wg.Wait()
	waitPrefilled(t, c)
	requireReadsBack(t, c, want, "")
	ssd.mu.Lock()
	for off, n := range ssd.written {
		require.GreaterOrEqual(t, off, c.g.SlotOffset(0), "the pass wrote into the metadata area")
		require.Equal(t, 1, n, "slot at %d written more than once", off)
	}
	ssd.mu.Unlock()
	c.Close()

	// Reopen the same devices: the pass runs again (the fake reports all
	// unwritten) with nothing in the way, and must cover every free slot.
	clear(ssd.written)
	ssd.pause = 0
	c2, err := Open(ssd, hdd, Options{CheckpointInterval: -1})
	require.NoError(t, err)
	defer c2.Close()
	waitPrefilled(t, c2)
	st := c2.Stats()
	ssd.mu.Lock()
	require.Equal(t, st.Free, len(ssd.written), "every free slot, and only those, written once")
	ssd.mu.Unlock()
	requireReadsBack(t, c2, want, " after reopening")
	c2.Close()

	// NoPrefill (detach) writes nothing ahead.
	clear(ssd.written)
	c3, err := Open(ssd, hdd, Options{CheckpointInterval: -1, NoPrefill: true})
	require.NoError(t, err)
	defer c3.Close()
	require.Zero(t, c3.Stats().UnwrittenBytes)
	time.Sleep(20 * time.Millisecond)
	ssd.mu.Lock()
	require.Empty(t, ssd.written, "NoPrefill wrote ahead")
	ssd.mu.Unlock()
}

// TestPrefillMarksCacheFileWritten: on a real filesystem the cache file
// allocated ahead is reported unwritten, and after Format and the pass
// nothing of it is (the point: a sync then commits no block-map change).
func TestPrefillMarksCacheFileWritten(t *testing.T) {
	ssd, hdd, path := filePair(t, 16<<20, 64<<20, true)
	before, err := ssd.Unwritten(0, ssd.Size())
	if errors.Is(err, device.ErrNoExtentMap) {
		t.Skipf("SKIP: the filesystem of %s does not report extents (FIEMAP), so there is nothing to write ahead", path)
	}
	require.NoError(t, err)
	if len(before) == 0 {
		t.Skipf("SKIP: the filesystem of %s has no unwritten extents after fallocate (nothing to write ahead)", path)
	}
	require.NoError(t, Format(ssd, hdd, FormatOptions{}))
	c, err := Open(ssd, hdd, Options{})
	require.NoError(t, err)
	defer c.Close()
	// Writes while the pass runs must land and stay.
	for i := int64(0); i < 64; i++ {
		_, err := c.WriteAt(pattern(int(i*7)), i*7*BlockSize)
		require.NoError(t, err)
	}
	require.NoError(t, c.Sync())
	waitPrefilled(t, c)
	// The slots just written are marked written once their pages are.
	require.NoError(t, ssd.Sync())
	after, err := ssd.Unwritten(0, ssd.Size())
	require.NoError(t, err)
	require.Empty(t, after, "ranges still unwritten after the pass")
	got := make([]byte, BlockSize)
	for i := int64(0); i < 64; i++ {
		_, err := c.ReadAt(got, i*7*BlockSize)
		require.NoError(t, err)
		require.Equal(t, pattern(int(i*7)), got)
	}
}
