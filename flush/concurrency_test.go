package flush

import (
	"context"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/wbcache/wbcache/blockcache"
	"github.com/wbcache/wbcache/device"
)

// TestVerDevCatchesRegression checks the §2.4 checker itself.
func TestVerDevCatchesRegression(t *testing.T) {
	e := newEnv(t, envConfig{hddBlocks: 8, slots: 8})
	rt := &recordTB{TB: t}
	v := newVerDev(rt, e.hddMem, nil)
	_, err := v.WriteAt(blockData(3, 5), 3*bs)
	require.NoError(t, err)
	_, err = v.WriteAt(blockData(3, 5), 3*bs) // same version again: fine
	require.NoError(t, err)
	require.Empty(t, rt.errs)
	_, err = v.WriteAt(blockData(3, 4), 3*bs)
	require.NoError(t, err)
	require.Len(t, rt.errs, 1, "older version not caught")
	_, err = v.WriteAt(blockData(2, 9), 3*bs)
	require.NoError(t, err)
	require.Len(t, rt.errs, 2, "foreign block not caught")
	e.close()
}

type recordTB struct {
	testing.TB
	mu   sync.Mutex
	errs []string
}

func (r *recordTB) Errorf(format string, args ...any) {
	r.mu.Lock()
	r.errs = append(r.errs, format)
	r.mu.Unlock()
}

// TestConcurrentOverwrites: writers keep rewriting the same blocks while
// the destager runs flat out; the backing device never goes backwards, and
// after a final FlushAll it holds exactly the newest versions.
func TestConcurrentOverwrites(t *testing.T) {
	const blocks, writers, perWriter = 48, 4, 300
	e := newEnv(t, envConfig{hddBlocks: blocks, slots: 64, reserve: 8})
	d := newTestDestager(t, e.c, Policy{LowWatermark: -1, HighWatermark: -1, MaxRun: 4 * bs, Workers: 3}, options{syncRuns: 3})
	d.Start()
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 1))
			for i := 0; i < perWriter; i++ {
				// Writer w owns the blocks ≡ w mod writers: its versions of
				// a block are ordered. Runs of neighbours make multi-block
				// runs on the backing device.
				lba := uint64(rng.IntN(blocks/writers)*writers + w)
				e.write(lba)
				if i%50 == 0 {
					require.NoError(t, e.c.Sync())
				}
			}
		}()
	}
	wg.Wait()
	flushAll(t, d)
	d.Stop()
	assert.Zero(t, e.c.DirtyCount())
	e.checkBacking("after overwrites and FlushAll", e.hddMem)
	e.checkReads("after overwrites and FlushAll")
	require.Zero(t, e.ver.bad.Load())
	assert.NotZero(t, d.Stats().DestagedBlocks)
	e.close()
}

// TestDiscardDuringDestage: blocks are discarded (and some rewritten)
// while the destager writes them back. Discarded blocks read as zeros, and
// the backing device ends with zeros or newer writes — never an older
// version over the zeros (the checker treats a Zero as the discard's
// version).
func TestDiscardDuringDestage(t *testing.T) {
	const blocks, workers, rounds = 64, 4, 60
	e := newEnv(t, envConfig{hddBlocks: blocks, slots: 80, reserve: 8})
	d := newTestDestager(t, e.c, Policy{LowWatermark: -1, HighWatermark: -1, MaxRun: 4 * bs}, options{syncRuns: 2})
	d.Start()
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Worker w owns blocks [w*16, w*16+16).
			base := uint64(w * blocks / workers)
			rng := rand.New(rand.NewPCG(uint64(w), 2))
			for i := 0; i < rounds; i++ {
				switch rng.IntN(3) {
				case 0, 1:
					for k := 0; k < 1+rng.IntN(6); k++ {
						e.write(base + uint64(rng.IntN(16)))
					}
				default:
					lo := uint64(rng.IntN(16))
					n := 1 + uint64(rng.IntN(int(16-lo)))
					e.discard(base+lo, n)
				}
			}
			// End with a discard of some blocks that are dirty right now.
			e.write(base + 3)
			e.write(base + 4)
			e.discard(base+2, 4)
		}()
	}
	wg.Wait()
	flushAll(t, d)
	d.Stop()
	e.checkReads("after discards and FlushAll")
	e.checkBacking("after discards and FlushAll", e.hddMem)
	require.Zero(t, e.ver.bad.Load())
	e.close()
}

// TestRunsAroundDuringDestage: writers send runs of whole blocks around
// the cache (mode writearound) over blocks the destager has pinned, dirty
// or filling gaps, while the mode keeps returning to writeback to dirty
// more. A run claims the pinned blocks its destage has not begun to write
// (the run is then written around them) and waits for one under way; the
// backing device never goes backwards, and after a final FlushAll it
// holds exactly the newest versions.
func TestRunsAroundDuringDestage(t *testing.T) {
	const blocks, writers, rounds = 64, 4, 200
	e := newEnv(t, envConfig{hddBlocks: blocks, slots: 80, reserve: 8})
	d := newTestDestager(t, e.c, Policy{LowWatermark: -1, HighWatermark: -1, MaxRun: 8 * bs, Workers: 2}, options{syncRuns: 4})
	d.Start()
	var wg, modes sync.WaitGroup
	var stop atomic.Bool
	modes.Add(1)
	go func() {
		defer modes.Done()
		for i := 0; !stop.Load(); i++ {
			m := blockcache.ModeWriteback
			if i%2 == 1 {
				m = blockcache.ModeWritearound
			}
			require.NoError(t, e.c.SetMode(m))
			time.Sleep(time.Millisecond)
		}
	}()
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Writer w owns blocks [w*16, w*16+16).
			base := uint64(w * blocks / writers)
			rng := rand.New(rand.NewPCG(uint64(w), 3))
			for i := 0; i < rounds; i++ {
				lo := uint64(rng.IntN(15))
				n := min(2+uint64(rng.IntN(6)), 16-lo)
				if rng.IntN(3) == 0 {
					n = 1
				}
				buf := make([]byte, 0, n*bs)
				vers := make([]uint64, n)
				for k := range n {
					vers[k] = e.m.newVersion()
					buf = append(buf, blockData(base+lo+k, vers[k])...)
				}
				_, err := e.c.WriteAt(buf, int64(base+lo)*bs)
				require.NoError(t, err)
				for k := range n {
					e.m.set(base+lo+k, vers[k], false)
				}
				if i%40 == 0 {
					require.NoError(t, e.c.Sync())
				}
			}
		}()
	}
	wg.Wait()
	stop.Store(true)
	modes.Wait()
	flushAll(t, d)
	d.Stop()
	e.checkReads("after runs around the cache and FlushAll")
	e.checkBacking("after runs around the cache and FlushAll", e.hddMem)
	require.Zero(t, e.ver.bad.Load())
	st := e.c.Stats()
	t.Logf("runs over dirty blocks %d, blocks claimed from destages %d, destaged blocks %d", st.BypassedOverDirty, st.DestageClaimed, st.DestagedBlocks)
	require.NotZero(t, st.BypassedOverDirty, "runs written around dirty blocks")
	require.NotZero(t, st.DestageClaimed, "blocks claimed from destages by writes")
	e.close()
}

// TestBackPressure: every slot is dirty and writers are blocked waiting for
// a free one; the running destager (default policy) cleans blocks so the
// reclaimer can free slots, and every writer finishes. Only the test
// timeout bounds it.
func TestBackPressure(t *testing.T) {
	const slots = 32
	e := newEnv(t, envConfig{hddBlocks: 256, slots: slots, reserve: 4})
	d := newTestDestager(t, e.c, Policy{}, options{})
	// Fill the cache (no destager yet): writes beyond the slot count block.
	for lba := uint64(0); lba < slots-4; lba++ {
		e.write(lba)
	}
	var wg sync.WaitGroup
	done := make(chan struct{})
	for w := 0; w < 6; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 20; i++ {
				e.write(uint64(64 + w*20 + i))
			}
		}()
	}
	go func() { wg.Wait(); close(done) }()
	// The writers block on free slots.
	require.Eventually(t, func() bool { return e.c.Stats().AllocWaits > 0 }, 10*time.Second, time.Millisecond)
	select {
	case <-done:
		t.Fatal("writers finished without a destager: the cache was not full")
	default:
	}
	d.Start()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("writers still blocked: destager did not relieve pressure")
	}
	flushAll(t, d)
	d.Stop()
	e.checkReads("after back-pressure")
	e.checkBacking("after back-pressure", e.hddMem)
	e.close()
}

// TestFlushAllUnderWrites: a writer keeps writing during FlushAll, then
// stops; FlushAll returns once it sees zero dirty, calling progress
// meanwhile and at the end. Block 127's backing write is held until the
// writer stops, so FlushAll cannot see zero before that.
func TestFlushAllUnderWrites(t *testing.T) {
	for _, started := range []bool{false, true} {
		t.Run(map[bool]string{false: "not-started", true: "started"}[started], func(t *testing.T) {
			gate := &gateDev{release: make(chan struct{}), entered: make(chan struct{}, 100),
				holds: func(off int64, n int) bool { return off <= 127*bs && 127*bs < off+int64(n) }}
			// Room for the pinned first batch plus a new version of every block.
			e := newEnv(t, envConfig{hddBlocks: 128, slots: 200, reserve: 8, wrapHDD: gate.wrap})
			for lba := uint64(0); lba < 60; lba++ {
				e.write(lba)
			}
			e.write(127)
			// Progress every 200 ms of a fake clock advanced by the test.
			clock := newFakeClock()
			d := newTestDestager(t, e.c, Policy{}, options{now: time.Now, after: clock.After})
			if started {
				d.Start()
			}
			stop := make(chan struct{})
			var wg sync.WaitGroup
			wg.Add(1)
			go func() {
				defer wg.Done()
				rng := rand.New(rand.NewPCG(5, 5))
				for {
					select {
					case <-stop:
						return
					default:
					}
					e.write(uint64(rng.IntN(64)))
				}
			}()
			var mu sync.Mutex
			var reports []Progress
			errc := make(chan error, 1)
			go func() {
				errc <- d.FlushAll(context.Background(), func(p Progress) {
					mu.Lock()
					reports = append(reports, p)
					mu.Unlock()
				})
			}()
			// Tick the progress clock a few times while writes go on.
			for i := 0; i < 3; i++ {
				require.Eventually(t, func() bool { return clock.hasPending(progressEvery) }, 10*time.Second, time.Millisecond)
				clock.Advance(progressEvery)
			}
			require.Eventually(t, func() bool { mu.Lock(); defer mu.Unlock(); return len(reports) >= 3 }, 10*time.Second, time.Millisecond)
			close(stop)
			wg.Wait()
			close(gate.release)
			select {
			case err := <-errc:
				require.NoError(t, err)
			case <-time.After(30 * time.Second):
				t.Fatal("FlushAll did not return after the writes stopped")
			}
			mu.Lock()
			n := len(reports)
			last := reports[n-1]
			mu.Unlock()
			assert.GreaterOrEqual(t, n, 4, "progress called periodically and at the end")
			assert.Zero(t, last.Dirty)
			assert.NotZero(t, last.DestagedBlocks)
			assert.NotZero(t, last.Runs)
			d.Stop()
			e.checkBacking("after FlushAll under writes", e.hddMem)
			e.close()
		})
	}
}

// TestFlushAllCancel: cancelling ctx ends FlushAll promptly while a backing
// write is stuck. Started, it returns at once; not started, it owns the
// loop, so it stops it: the run in flight completes when released, the
// runs not yet written stay dirty. No goroutine outlives it.
func TestFlushAllCancel(t *testing.T) {
	for _, started := range []bool{false, true} {
		t.Run(map[bool]string{false: "not-started", true: "started"}[started], func(t *testing.T) {
			gate := &gateDev{release: make(chan struct{}), entered: make(chan struct{}, 100)}
			e := newEnv(t, envConfig{hddBlocks: 128, slots: 96, wrapHDD: gate.wrap})
			for lba := uint64(0); lba < 80; lba += 2 { // 40 one-block runs
				e.write(lba)
			}
			d := newTestDestager(t, e.c, Policy{}, options{syncRuns: 4, noGapReads: true})
			if started {
				d.Start()
			}
			ctx, cancel := context.WithCancel(context.Background())
			errc := make(chan error, 1)
			go func() { errc <- d.FlushAll(ctx, nil) }()
			<-gate.entered // a backing write is in progress
			d.mu.Lock()
			l := d.cur
			d.mu.Unlock()
			cancel()
			if started {
				select {
				case err := <-errc:
					require.ErrorIs(t, err, context.Canceled)
				case <-time.After(10 * time.Second):
					t.Fatal("FlushAll did not return after cancel")
				}
				close(gate.release)
				d.Stop()
				require.Zero(t, d.live.Load())
				e.checkReads("after cancelled FlushAll")
				e.close()
				return
			}
			require.Eventually(t, l.quitting, 10*time.Second, time.Millisecond, "FlushAll did not stop its loop")
			close(gate.release)
			select {
			case err := <-errc:
				require.ErrorIs(t, err, context.Canceled)
			case <-time.After(10 * time.Second):
				t.Fatal("FlushAll did not return after cancel")
			}
			require.Zero(t, d.live.Load())
			assert.Equal(t, 39, e.c.DirtyCount(), "only the run in flight was written")
			e.checkReads("after cancelled FlushAll")
			e.close()
		})
	}
}

// gateDev holds backing writes (those holds accepts, or all) until
// release is closed, announcing each on entered.
type gateDev struct {
	device.Device
	release chan struct{}
	entered chan struct{}
	holds   func(off int64, n int) bool
}

func (g *gateDev) wrap(d device.Device) device.Device { g.Device = d; return g }

func (g *gateDev) WriteAt(p []byte, off int64) (int, error) {
	if g.holds != nil && !g.holds(off, len(p)) {
		return g.Device.WriteAt(p, off)
	}
	select {
	case g.entered <- struct{}{}:
	default:
	}
	<-g.release
	return g.Device.WriteAt(p, off)
}

// TestDiscardOfRunInFlight discards exactly the range whose backing write
// has just been issued: the discard waits for that destage, then zeroes;
// afterwards the blocks read as zeros and the backing device holds zeros.
func TestDiscardOfRunInFlight(t *testing.T) {
	e := newEnv(t, envConfig{hddBlocks: 64, slots: 48})
	for lba := uint64(10); lba < 18; lba++ {
		e.write(lba)
	}
	require.NoError(t, e.c.Sync())
	var once sync.Once
	discarded := make(chan struct{})
	o := options{afterWrite: func([]blockcache.DirtyBlock) {
		once.Do(func() {
			before := e.c.Stats().Discards
			go func() {
				defer close(discarded)
				e.discard(10, 8)
			}()
			// Return only once Discard has started (it then waits for this
			// destage to complete before zeroing).
			for e.c.Stats().Discards == before {
				runtime.Gosched()
			}
		})
	}}
	d := newTestDestager(t, e.c, Policy{}, o)
	flushAll(t, d)
	<-discarded
	flushAll(t, d)
	e.checkReads("after discard of a run in flight")
	e.checkBacking("after discard of a run in flight", e.hddMem)
	require.Zero(t, e.ver.bad.Load())
	e.close()
}

// TestStopFinishesRunInFlight: Stop waits for the backing write in flight,
// syncs and completes it (its blocks become clean), leaves the runs not
// yet written dirty, and returns with every goroutine gone.
func TestStopFinishesRunInFlight(t *testing.T) {
	gate := &gateDev{release: make(chan struct{}), entered: make(chan struct{}, 100)}
	e := newEnv(t, envConfig{hddBlocks: 128, slots: 96, wrapHDD: gate.wrap})
	for lba := uint64(0); lba < 40; lba += 2 { // 20 one-block runs
		e.write(lba)
	}
	d := newTestDestager(t, e.c, Policy{LowWatermark: -1}, options{noGapReads: true})
	d.Start()
	<-gate.entered
	d.mu.Lock()
	l := d.cur
	d.mu.Unlock()
	stopped := make(chan struct{})
	go func() { d.Stop(); close(stopped) }()
	require.Eventually(t, l.quitting, 10*time.Second, time.Millisecond)
	select {
	case <-stopped:
		t.Fatal("Stop returned with a write in flight")
	default:
	}
	close(gate.release)
	<-stopped
	require.Zero(t, d.live.Load())
	assert.Equal(t, 19, e.c.DirtyCount(), "the run in flight was completed, the others left dirty")
	assert.EqualValues(t, 1, d.Stats().DestagedBlocks)
	e.checkReads("after Stop")
	e.close()
}
