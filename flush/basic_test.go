package flush

import (
	"context"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/wbcache/wbcache/blockcache"
	"github.com/wbcache/wbcache/device"
	"github.com/wbcache/wbcache/layout"
)

// TestFlushAllWithoutStart drains a cache with a FlushAll that drives the
// loop itself, writing coalesced runs in LBA order.
func TestFlushAllWithoutStart(t *testing.T) {
	e := newEnv(t, envConfig{hddBlocks: 64, slots: 48})
	// Three stretches, written in a scrambled order: 0-9, 20-21, 40-49.
	lbas := []uint64{45, 3, 20, 0, 9, 41, 1, 2, 21, 4, 40, 5, 6, 7, 8, 42, 43, 44, 46, 47, 48, 49}
	for _, lba := range lbas {
		e.write(lba)
	}
	e.write(3) // a second version
	d := newTestDestager(t, e.c, Policy{MaxRun: 8 * bs}, options{})
	var calls int
	require.NoError(t, d.FlushAll(context.Background(), func(Progress) { calls++ }))
	assert.GreaterOrEqual(t, calls, 1, "progress called at the end")
	assert.Zero(t, e.c.DirtyCount())
	e.checkBacking("after FlushAll", e.hddMem)
	e.checkReads("after FlushAll")
	st := d.Stats()
	assert.EqualValues(t, len(lbas), st.DestagedBlocks)
	// 0-7, 8-9, 20-21, 40-47, 48-49.
	assert.EqualValues(t, 5, st.Runs)
	assert.Zero(t, st.Errors)
	assert.Zero(t, d.live.Load(), "FlushAll without Start leaves no goroutine")
	e.close()
}

// TestRunsAreAlignedAndOrdered checks every backing write is one run from
// an aligned buffer, issued in ascending LBA order within a rotation.
func TestRunsAreAlignedAndOrdered(t *testing.T) {
	var rec writeRecorder
	e := newEnv(t, envConfig{hddBlocks: 256, slots: 200, wrapHDD: rec.wrap})
	for i := 0; i < 150; i++ {
		e.write(uint64((i * 37) % 256))
	}
	d := newTestDestager(t, e.c, Policy{MaxRun: 16 * bs, Workers: 3}, options{syncRuns: 3})
	flushAll(t, d)
	e.checkBacking("after FlushAll", e.hddMem)
	rec.mu.Lock()
	defer rec.mu.Unlock()
	require.NotEmpty(t, rec.writes)
	for i, w := range rec.writes {
		assert.True(t, w.aligned, "write %d buffer not 4096-aligned", i)
		assert.LessOrEqual(t, w.n, 16*bs)
		if i > 0 {
			assert.Greater(t, w.off, rec.writes[i-1].off, "writes out of elevator order")
		}
	}
	// Syncs batch several runs.
	assert.Less(t, rec.syncs, len(rec.writes))
	e.close()
}

type writeRecorder struct {
	mu     sync.Mutex
	writes []struct {
		off     int64
		n       int
		aligned bool
	}
	syncs int
}

func (r *writeRecorder) wrap(d device.Device) device.Device { return &recDev{Device: d, r: r} }

type recDev struct {
	device.Device
	r *writeRecorder
}

func (d *recDev) WriteAt(p []byte, off int64) (int, error) {
	d.r.mu.Lock()
	d.r.writes = append(d.r.writes, struct {
		off     int64
		n       int
		aligned bool
	}{off, len(p), isAligned(p)})
	d.r.mu.Unlock()
	return d.Device.WriteAt(p, off)
}

func (d *recDev) Sync() error {
	d.r.mu.Lock()
	d.r.syncs++
	d.r.mu.Unlock()
	return d.Device.Sync()
}

// TestStartStopNoLeak starts and stops the destager repeatedly, with and
// without work, and checks no goroutine survives (counted by the runtime).
func TestStartStopNoLeak(t *testing.T) {
	e := newEnv(t, envConfig{hddBlocks: 64, slots: 48})
	before := runtime.NumGoroutine()
	d := newDestager(e.c, Policy{LowWatermark: -1, Workers: 4}, nil, options{})
	for i := 0; i < 5; i++ {
		for lba := uint64(0); lba < 20; lba++ {
			e.write(lba*3%64 + uint64(i))
		}
		d.Start()
		d.Start() // idempotent
		flushAll(t, d)
		d.SetPolicy(Policy{LowWatermark: -1, Workers: 1 + i%3})
		e.write(7)
		d.Stop()
		d.Stop() // idempotent
		require.Zero(t, d.live.Load())
	}
	// Poll by hand: require.Eventually runs goroutines of its own.
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		runtime.Gosched()
	}
	require.LessOrEqual(t, runtime.NumGoroutine(), before, "goroutines leaked")
	e.close()
}

// TestStartDestagesInBackground: with a 0 % low watermark, the started
// destager cleans everything without FlushAll.
func TestStartDestagesInBackground(t *testing.T) {
	e := newEnv(t, envConfig{hddBlocks: 64, slots: 48})
	d := newTestDestager(t, e.c, Policy{LowWatermark: -1}, options{})
	d.Start()
	for lba := uint64(0); lba < 30; lba++ {
		e.write(lba * 2)
	}
	require.Eventually(t, func() bool { return e.c.DirtyCount() == 0 }, 10*time.Second, time.Millisecond)
	d.Stop()
	e.checkBacking("background destage", e.hddMem)
	e.close()
}

// TestCacheClosedStopsLoop: a closed cache ends the loop and FlushAll
// returns the cache's error.
func TestCacheClosedStopsLoop(t *testing.T) {
	e := newEnv(t, envConfig{hddBlocks: 64, slots: 48})
	e.write(1)
	d := newTestDestager(t, e.c, Policy{}, options{})
	require.NoError(t, e.c.Close())
	err := d.FlushAll(context.Background(), nil)
	require.ErrorIs(t, err, blockcache.ErrClosed)
	assert.Contains(t, d.Stats().LastError, "closed")
	assert.Zero(t, d.live.Load())
}

// TestStopDuringFlushAll: Stop makes a FlushAll return ErrStopped.
func TestStopDuringFlushAll(t *testing.T) {
	clock := newFakeClock()
	f := &faultSwitch{}
	e := newEnv(t, envConfig{hddBlocks: 64, slots: 48, clock: clock, wrapHDD: f.wrap})
	e.write(1)
	f.f.FailIf(func(op device.Op, _, _ int64) bool { return op == device.OpWrite })
	d := newTestDestager(t, e.c, Policy{}, clock.options(options{}))
	d.Start()
	errc := make(chan error, 1)
	go func() { errc <- d.FlushAll(context.Background(), nil) }()
	require.Eventually(t, func() bool { return d.Stats().Errors > 0 }, 10*time.Second, time.Millisecond)
	d.Stop()
	require.ErrorIs(t, <-errc, ErrStopped)
	e.close()
}

func TestPolicyNormalize(t *testing.T) {
	assert.Equal(t, DefaultPolicy(), Policy{}.normalize())
	p := Policy{LowWatermark: -1, HighWatermark: 200, MaxDirtyAge: -1, Workers: 1000, IdleRate: -5, MaxRun: 5000}.normalize()
	assert.Equal(t, Policy{LowWatermark: 0, HighWatermark: 100, MaxDirtyAge: 0, Workers: maxWorkers, IdleRate: 0, MaxRun: 4096}, p)
	assert.Equal(t, DefaultIdleRate, Policy{}.normalize().IdleRate, "0 takes the default cap")
	assert.Equal(t, 0, Policy{IdleRate: -1}.normalize().IdleRate, "an explicit 0 is no cap")
	p = Policy{LowWatermark: 70, HighWatermark: 40}.normalize()
	assert.Equal(t, 70, p.HighWatermark, "high is raised to low")
	assert.EqualValues(t, 30, DefaultPolicy().ageTicks())
	assert.EqualValues(t, 2, Policy{MaxDirtyAge: 1500 * time.Millisecond}.ageTicks())
}

func TestPolicySettingsRoundTrip(t *testing.T) {
	// Unset fields stay unset (defaults), other settings are kept.
	base := blockcacheSettings()
	s := Policy{}.Settings(base)
	assert.Equal(t, base, s)
	assert.Equal(t, Policy{}, PolicyFromSettings(s))
	assert.Equal(t, DefaultPolicy(), PolicyFromSettings(s).WithDefaults())

	// An explicit 0 idle rate (no cap) survives the round trip.
	s = Policy{IdleRate: -1}.Settings(base)
	assert.True(t, s.Has(layout.SetIdleRate))
	assert.EqualValues(t, 0, s.IdleRate)
	assert.Equal(t, 0, PolicyFromSettings(s).WithDefaults().IdleRate)

	p := Policy{LowWatermark: -1, HighWatermark: 80, MaxDirtyAge: 90 * time.Second, Workers: 3, IdleRate: 20}
	s = p.Settings(base)
	assert.Equal(t, base.Mode, s.Mode)
	assert.Equal(t, base.SeqCutoff, s.SeqCutoff)
	assert.NotZero(t, s.SetMask&layout.SetSeqCutoff, "other bits kept")
	assert.EqualValues(t, 0, s.LowWatermark)
	assert.NotZero(t, s.SetMask&layout.SetLowWatermark, "explicit zero is marked set")
	assert.EqualValues(t, 80, s.HighWatermark)
	assert.EqualValues(t, 90, s.MaxDirtyAge)
	assert.EqualValues(t, 3, s.Workers)
	assert.EqualValues(t, 20, s.IdleRate)
	assert.Equal(t, p, PolicyFromSettings(s))
	assert.Equal(t, s, PolicyFromSettings(s).Settings(s))
	// Explicit zero age: destage everything below the low watermark at once.
	s = Policy{MaxDirtyAge: -1}.Settings(base)
	assert.NotZero(t, s.SetMask&layout.SetMaxDirtyAge)
	assert.Equal(t, time.Duration(0), PolicyFromSettings(s).normalize().MaxDirtyAge)
}

func blockcacheSettings() layout.Settings {
	return layout.Settings{Mode: 1, PromoteAfter: 2, SeqCutoff: 1 << 20,
		SetMask: layout.SetSeqCutoff | layout.SetPromoteAfter}
}
