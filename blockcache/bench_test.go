package blockcache

import (
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/wbcache/wbcache/device"
	"github.com/wbcache/wbcache/layout"
)

// benchCache opens a cache on real files in a temp dir: a 256 MiB cache
// file (buffered, as the command opens it) and a 1 GiB sparse backing file.
func benchCache(b *testing.B) *Cache { return benchCacheIn(b, b.TempDir()) }

// benchCacheIn is benchCache with its files in dir.
func benchCacheIn(b *testing.B, dir string) *Cache {
	ssdPath, hddPath := filepath.Join(dir, "ssd"), filepath.Join(dir, "hdd")
	require.NoError(b, device.Create(ssdPath, 256<<20))
	require.NoError(b, device.Create(hddPath, 1<<30))
	ssd, err := device.Open(ssdPath, device.Options{})
	require.NoError(b, err)
	hdd, err := device.Open(hddPath, device.Options{Direct: true})
	require.NoError(b, err)
	require.NoError(b, Format(ssd, hdd, FormatOptions{}))
	c, err := Open(ssd, hdd, Options{})
	require.NoError(b, err)
	// Benchmarks fill regions sequentially: keep those writes in the cache.
	require.NoError(b, c.SetSettings(layout.Settings{SetMask: layout.SetSeqCutoff}))
	b.Cleanup(func() {
		c.Close()
		ssd.Close()
		hdd.Close()
	})
	return c
}

// BenchmarkWrite4K: random 4 KiB writes into a region that fits the cache
// (no destaging needed), from parallel goroutines like FUSE's.
func BenchmarkWrite4K(b *testing.B) {
	for _, sync := range []bool{false, true} {
		b.Run(fmt.Sprintf("sync=%v", sync), func(b *testing.B) {
			c := benchCache(b)
			region := int64(c.SlotCount() / 2)
			b.SetBytes(BlockSize)
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				rng := rand.New(rand.NewPCG(rand.Uint64(), 1))
				buf := make([]byte, BlockSize)
				for pb.Next() {
					if _, err := c.WriteAt(buf, rng.Int64N(region)*BlockSize); err != nil {
						b.Fatal(err)
					}
					if sync {
						if err := c.Sync(); err != nil {
							b.Fatal(err)
						}
					}
				}
			})
		})
	}
}

// BenchmarkReadHit4K: random 4 KiB reads of cached blocks.
func BenchmarkReadHit4K(b *testing.B) {
	c := benchCache(b)
	region := int64(c.SlotCount() / 2)
	buf := make([]byte, BlockSize)
	for lba := int64(0); lba < region; lba++ {
		_, err := c.WriteAt(buf, lba*BlockSize)
		require.NoError(b, err)
	}
	b.SetBytes(BlockSize)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		rng := rand.New(rand.NewPCG(rand.Uint64(), 2))
		buf := make([]byte, BlockSize)
		for pb.Next() {
			if _, err := c.ReadAt(buf, rng.Int64N(region)*BlockSize); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkRecovery: reopen after a crash with the journal as full as the
// checkpoint trigger lets it get (half the ring), on a 256 MiB cache.
func BenchmarkRecovery(b *testing.B) {
	ssd, hdd, ssdPath := filePair(b, 256<<20, 1<<30, false)
	require.NoError(b, Format(ssd, hdd, FormatOptions{}))
	c, err := Open(ssd, hdd, Options{CheckpointInterval: -1})
	require.NoError(b, err)
	// Fill the journal without a checkpoint: half the ring of MAP records.
	g := c.Geometry()
	records := int(g.JournalBlocks/2-2) * layout.RecordsPerBlock
	buf := make([]byte, BlockSize)
	rng := rand.New(rand.NewPCG(3, 3))
	c.ckptMu.Lock() // hold checkpoints off while filling
	for i := 0; i < records && i < c.SlotCount()/2; i++ {
		_, err := c.WriteAt(buf, rng.Int64N(int64(c.SlotCount()/2))*BlockSize)
		require.NoError(b, err)
	}
	require.NoError(b, c.j.sync())
	js := c.j.stats()
	// Abandon the cache without a checkpoint: what a kill -9 leaves.
	c.closed.Store(true)
	close(c.stop)
	c.j.stop()
	c.ckptMu.Unlock()
	c.wg.Wait()
	c.j.close()
	b.ResetTimer()
	var last time.Duration
	for i := 0; i < b.N; i++ {
		img := ssdPath + ".copy"
		b.StopTimer()
		copyFile(b, ssdPath, img)
		s2, err := device.Open(img, device.Options{})
		require.NoError(b, err)
		b.StartTimer()
		c2, err := Open(s2, hdd, Options{CheckpointInterval: -1})
		require.NoError(b, err)
		last = time.Duration(c2.stats.recoveryNanos.Load())
		b.StopTimer()
		require.EqualValues(b, js.records, c2.stats.replayed.Load())
		c2.Close()
		s2.Close()
		b.StartTimer()
	}
	b.ReportMetric(float64(js.records), "records")
	b.ReportMetric(float64(js.used), "journal-blocks")
	b.ReportMetric(last.Seconds()*1000, "replay-ms")
}

func copyFile(b *testing.B, from, to string) {
	src, err := device.Open(from, device.Options{ReadOnly: true})
	require.NoError(b, err)
	defer src.Close()
	_ = removeFile(to)
	require.NoError(b, device.Create(to, src.Size()))
	dst, err := device.Open(to, device.Options{})
	require.NoError(b, err)
	defer dst.Close()
	buf := make([]byte, 4<<20)
	for off := int64(0); off < src.Size(); off += int64(len(buf)) {
		n := min(int64(len(buf)), src.Size()-off)
		_, err := src.ReadAt(buf[:n], off)
		require.NoError(b, err)
		_, err = dst.WriteAt(buf[:n], off)
		require.NoError(b, err)
	}
}

// TestMemoryPerSlot measures the engine's RAM per cache slot (slot table,
// index and free list) for 1 GiB and 16 GiB cache geometries; the budget
// is 32 bytes.
func TestMemoryPerSlot(t *testing.T) {
	for _, size := range []int64{1 << 30, 16 << 30} {
		g, err := layout.ComputeGeometry(size, 0)
		require.NoError(t, err)
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		tab := new(slotTable)
		tab.init(g.SlotCount, 0)
		for s := uint64(0); s < g.SlotCount; s++ {
			tab.free.add(uint32(s))
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		per := float64(after.HeapAlloc-before.HeapAlloc) / float64(g.SlotCount)
		t.Logf("cache %d GiB: %d slots, %.1f bytes of RAM per slot", size>>30, g.SlotCount, per)
		require.LessOrEqual(t, per, 32.0)
		runtime.KeepAlive(tab)
	}
}
