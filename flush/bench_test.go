package flush

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/wbcache/wbcache/blockcache"
	"github.com/wbcache/wbcache/device"
	"github.com/wbcache/wbcache/layout"
)

// drainResult is what one drain measured, in the HDD model's virtual time.
type drainResult struct {
	blocks, runs uint64
	elapsed      time.Duration
	seqBW        float64 // bytes/s
	ops          device.HDDOps
}

func (r drainResult) avgRun() float64 { return float64(r.blocks) / float64(max(r.runs, 1)) }
func (r drainResult) mibps() float64 {
	return float64(r.blocks*bs) / (1 << 20) / r.elapsed.Seconds()
}
func (r drainResult) ratio() float64 { return r.mibps() * (1 << 20) / r.seqBW }

func (r drainResult) String() string {
	return fmt.Sprintf("blocks %6d  runs %5d  avg run %6.1f blocks  drain %9.1f ms  %7.2f MiB/s  %5.1f%% of sequential (seeks %d, short skips %d, syncs %d)",
		r.blocks, r.runs, r.avgRun(), float64(r.elapsed)/1e6, r.mibps(), 100*r.ratio(), r.ops.Seeks, r.ops.ShortSkips, r.ops.Syncs)
}

// drainSetup is a cache over an HDD model holding dirty 4 KiB blocks at a
// given density over a region, written in random order; with cleanRest
// every other block of the region has a clean cached copy (read before).
type drainSetup struct {
	c   *blockcache.Cache
	hdd *device.HDDModel
}

func newDrainSetup(tb testing.TB, region int, density float64, seed uint64, cleanRest bool) *drainSetup {
	return newOrderedDrainSetup(tb, region, density, seed, cleanRest, layout.OrderUnordered, 2048, 0)
}

// newOrderedDrainSetup is newDrainSetup with a write-back order, and a
// Sync by each of the 4 writers every syncEvery of its writes (each Sync
// begins a flush epoch). After the fill each writer rewrites the share
// rewrite of its blocks once more, in the same order, so versions of
// earlier epochs are superseded (kept as older versions when ordered).
func newOrderedDrainSetup(tb testing.TB, region int, density float64, seed uint64, cleanRest bool, order uint8, syncEvery int, rewrite float64) *drainSetup {
	rng := rand.New(rand.NewPCG(seed, 99))
	perm := rng.Perm(region)
	n := int(float64(region) * density)
	lbas := perm[:n] // a random subset, in random order
	lbas = append(lbas, lbas[:int(float64(n)*rewrite)]...)
	slots := len(lbas) + 1024 // room for every version: the fill runs no destager
	if cleanRest {
		slots = region + 1024
	}
	ssd := device.NewMem(cacheBytes(tb, slots, 0), [16]byte{0x55})
	hddMem := device.NewMem(int64(region)*bs, hddID)
	hdd := device.NewHDDModel(hddMem)
	require.NoError(tb, blockcache.Format(ssd, hdd, blockcache.FormatOptions{Settings: layout.Settings{Order: order, SetMask: layout.SetOrder}}))
	c, err := blockcache.Open(ssd, hdd, blockcache.Options{CheckpointInterval: -1, ReserveFree: 8})
	require.NoError(tb, err)
	if cleanRest {
		buf := make([]byte, bs)
		for _, lba := range perm[n:] {
			_, err := c.ReadAt(buf, int64(lba)*bs) // promoted: a clean copy
			require.NoError(tb, err)
		}
	}
	// Fill with a few writers; sync now and then so the in-memory
	// devices drop their undo logs.
	const writers = 4
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < len(lbas); i += writers {
				lba := uint64(lbas[i])
				if _, err := c.WriteAt(blockData(lba, 1), int64(lba)*bs); err != nil {
					tb.Error(err)
					return
				}
				if (i/writers)%syncEvery == syncEvery-1 {
					if err := c.Sync(); err != nil {
						tb.Error(err)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	require.NoError(tb, c.Sync())
	require.GreaterOrEqual(tb, c.DirtyCount(), n) // older versions count too
	return &drainSetup{c: c, hdd: hdd}
}

// drain runs FlushAll (no Start) with the default policy and measures it
// on the HDD model's clock.
func (s *drainSetup) drain(tb testing.TB) drainResult {
	s.hdd.Reset()
	d := New(s.c, Policy{}, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	require.NoError(tb, d.FlushAll(ctx, nil))
	st := d.Stats()
	return drainResult{blocks: st.DestagedBlocks, runs: st.Runs, elapsed: s.hdd.Elapsed(), seqBW: s.hdd.SeqBandwidth(), ops: s.hdd.Ops()}
}

// BenchmarkDrain fills a cache with dirty 4 KiB blocks written in random
// order over a 64 MiB region (16384 blocks) at densities 100 % (every
// block), 25 % and 1 %, then times FlushAll on an HDD model (virtual time:
// 8 ms seeks, 2 ms short skips, 170 MiB/s transfer, 0.5 ms per sync).
// It reports blocks, runs, the average run length, the virtual drain time,
// the virtual MiB/s and its ratio to the model's sequential bandwidth.
// The virtual figures do not depend on b.N; run it with -benchtime=1x:
//
//	go test -run '^$' -bench Drain -benchtime 1x -v ./flush/
func BenchmarkDrain(b *testing.B) {
	const region = 16384
	for _, dens := range []struct {
		name      string
		d         float64
		cleanRest bool
	}{{"100%", 1, false}, {"25%", 0.25, false}, {"1%", 0.01, false}, {"25%+clean", 0.25, true}, {"1%+clean", 0.01, true}} {
		b.Run("density="+dens.name, func(b *testing.B) {
			var r drainResult
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				s := newDrainSetup(b, region, dens.d, uint64(i), dens.cleanRest)
				b.StartTimer()
				r = s.drain(b)
				b.StopTimer()
				require.NoError(b, s.c.Close())
			}
			b.ReportMetric(float64(r.blocks), "blocks")
			b.ReportMetric(float64(r.runs), "runs")
			b.ReportMetric(r.avgRun(), "blocks/run")
			b.ReportMetric(float64(r.elapsed)/1e6, "drain-ms(virtual)")
			b.ReportMetric(r.mibps(), "MiB/s(virtual)")
			b.ReportMetric(r.ratio(), "ratio-to-seq")
			b.Logf("density %-4s  %s", dens.name, r)
		})
	}
}

// BenchmarkDrainOrder compares ordered with unordered write-back
// side by side: the same fill (a random subset of a 64 MiB region at
// densities 100 % and 25 %, 4 writers, each syncing every N of its writes,
// so the fill spans about 4·blocks/(4·N) flush epochs), drained by FlushAll
// on the HDD model. The rewrite=25% cases then rewrite a quarter of the
// blocks once more (syncing as before), which shows the slots older
// versions take (slots-used: ordered against unordered). Run it with
// -benchtime=1x:
//
//	go test -run '^$' -bench DrainOrder -benchtime 1x -v ./flush/
func BenchmarkDrainOrder(b *testing.B) {
	const region = 16384
	type fill struct {
		dens    float64
		every   int
		rewrite float64
	}
	var fills []fill
	for _, dens := range []float64{1, 0.25} {
		for _, every := range []int{1 << 30, 1024, 64} {
			fills = append(fills, fill{dens, every, 0})
		}
		fills = append(fills, fill{dens, 1024, 0.25})
	}
	for _, f := range fills {
		dens, every := f.dens, f.every
		for _, order := range []uint8{layout.OrderUnordered, layout.OrderOrdered} {
			sync := "none"
			if every < 1<<30 {
				sync = fmt.Sprint(every)
			}
			if f.rewrite > 0 {
				sync += fmt.Sprintf("/rewrite=%.0f%%", f.rewrite*100)
			}
			name := fmt.Sprintf("density=%.0f%%/sync-every=%s/order=%s", dens*100, sync, map[uint8]string{0: "ordered", 1: "unordered"}[order])
			b.Run(name, func(b *testing.B) {
				var r drainResult
				var st blockcache.Stats
				for i := 0; i < b.N; i++ {
					b.StopTimer()
					s := newOrderedDrainSetup(b, region, dens, uint64(i), false, order, every, f.rewrite)
					st = s.c.Stats()
					b.StartTimer()
					r = s.drain(b)
					b.StopTimer()
					require.NoError(b, s.c.Close())
				}
				b.ReportMetric(r.mibps(), "MiB/s(virtual)")
				b.ReportMetric(float64(r.runs), "runs")
				b.ReportMetric(float64(st.Syncs), "fill-syncs")
				b.ReportMetric(float64(st.OlderKept), "older-kept")
				b.ReportMetric(float64(st.Used), "slots-used")
				b.Logf("%s  %s; fill: %d syncs, %d older versions kept, %d slots used before the drain (%d older versions)",
					name, r, st.Syncs, st.OlderKept, st.Used, st.Order.OlderVersions)
			})
		}
	}
}

// TestDrainSequentialBandwidth: a fully dirty region written in random
// order drains at ≥ 80 % of the disk's sequential bandwidth (HDD model),
// thanks to elevator order, 1 MiB runs and batched syncs.
func TestDrainSequentialBandwidth(t *testing.T) {
	s := newDrainSetup(t, 4096, 1, 1, false)
	r := s.drain(t)
	t.Logf("density 100%%: %s", r)
	require.EqualValues(t, 4096, r.blocks)
	require.EqualValues(t, 16, r.runs, "1 MiB runs")
	require.GreaterOrEqual(t, r.ratio(), 0.8)
	require.NoError(t, s.c.Close())
}
