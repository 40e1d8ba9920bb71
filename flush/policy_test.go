package flush

import (
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/wbcache/wbcache/blockcache"
)

func dirtyLBAs(c *blockcache.Cache) []uint64 {
	var out []uint64
	for _, b := range c.DirtyBlocks(nil) {
		out = append(out, b.LBA)
	}
	return out
}

// TestAgePolicy: below the low watermark only blocks dirty for MaxDirtyAge
// are written back; young ones wait until they come of age. The cache's age
// clock and the destager's run on the same fake clock.
func TestAgePolicy(t *testing.T) {
	clock := newFakeClock()
	e := newEnv(t, envConfig{hddBlocks: 128, slots: 200, clock: clock})
	e.write(5) // tick 0
	clock.Advance(20 * time.Second)
	e.write(9) // tick 20
	// Default policy: low watermark 10 %, max dirty age 30 s.
	d := newTestDestager(t, e.c, Policy{}, clock.options(options{}))
	d.Start()
	// parked waits until the destager sleeps on the clock again.
	parked := func() {
		t.Helper()
		require.Eventually(t, func() bool { return clock.hasPending(pollInterval) }, 10*time.Second, time.Millisecond)
	}
	parked()
	assert.Equal(t, []uint64{5, 9}, dirtyLBAs(e.c), "nothing is old enough yet")

	clock.Advance(9 * time.Second) // t=29: block 5 is 29 s old
	parked()
	assert.Equal(t, []uint64{5, 9}, dirtyLBAs(e.c))

	clock.Advance(time.Second) // t=30
	require.Eventually(t, func() bool { return e.c.DirtyCount() == 1 }, 10*time.Second, time.Millisecond)
	parked()
	assert.Equal(t, []uint64{9}, dirtyLBAs(e.c), "the young block stays dirty")

	clock.Advance(19 * time.Second) // t=49: block 9 is 29 s old
	parked()
	assert.Equal(t, []uint64{9}, dirtyLBAs(e.c))

	clock.Advance(time.Second) // t=50
	require.Eventually(t, func() bool { return e.c.DirtyCount() == 0 }, 10*time.Second, time.Millisecond)
	d.Stop()
	e.checkBacking("after aging out", e.hddMem)
	e.close()
}

// TestWatermarks: crossing the low watermark destages young blocks too.
func TestWatermarks(t *testing.T) {
	clock := newFakeClock()
	e := newEnv(t, envConfig{hddBlocks: 256, slots: 100, clock: clock, reserve: 4})
	d := newTestDestager(t, e.c, Policy{LowWatermark: 20, HighWatermark: 90}, clock.options(options{}))
	d.Start()
	slots := e.c.SlotCount()
	low := slots * 20 / 100
	for lba := 0; lba < low; lba++ {
		e.write(uint64(lba * 2))
	}
	clock.Advance(pollInterval)
	require.Eventually(t, func() bool { return clock.hasPending(pollInterval) }, 10*time.Second, time.Millisecond)
	assert.Equal(t, low, e.c.DirtyCount(), "at the low watermark young blocks stay")
	e.write(201)
	clock.Advance(pollInterval)
	require.Eventually(t, func() bool { return e.c.DirtyCount() == 0 }, 10*time.Second, time.Millisecond)
	d.Stop()
	e.close()
}

// TestPressureWakesDestager: with watermarks at 100 % and a clock that never
// moves, nothing but writer pressure can wake the destager; a writer blocked
// on a full cache does, and gets its slot.
func TestPressureWakesDestager(t *testing.T) {
	clock := newFakeClock()
	e := newEnv(t, envConfig{hddBlocks: 256, slots: 32, clock: clock})
	d := newTestDestager(t, e.c, Policy{LowWatermark: 100, HighWatermark: 100, MaxDirtyAge: time.Hour}, clock.options(options{}))
	d.Start()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for lba := uint64(0); lba < 48; lba++ {
			e.write(lba)
		}
	}()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("writer still blocked: pressure did not wake the destager")
	}
	assert.NotZero(t, e.c.Stats().AllocWaits, "the writer did wait")
	// The writer can be woken inside Complete, before the destager counts
	// the blocks it wrote back.
	require.Eventually(t, func() bool { return d.Stats().DestagedBlocks > 0 }, 10*time.Second, time.Millisecond,
		"the destager wrote blocks back")
	d.Stop()
	e.close()
}

// TestStateModes checks the mode decision directly.
func TestStateModes(t *testing.T) {
	e := newEnv(t, envConfig{hddBlocks: 256, slots: 100})
	d := newDestager(e.c, Policy{LowWatermark: 10, HighWatermark: 50}, nil, options{})
	l := &loop{d: d, c: e.c}
	assert.Equal(t, modeIdle, l.state().mode)
	slots := e.c.SlotCount()
	lba := uint64(0)
	fill := func(pct int) {
		for e.c.DirtyCount()*100 < pct*slots {
			e.write(lba)
			lba++
		}
	}
	fill(1)
	assert.Equal(t, modeAged, l.state().mode)
	l.pressureUntil = time.Now().Add(time.Second)
	assert.Equal(t, modeFull, l.state().mode, "pressure")
	l.pressureUntil = time.Time{}
	d.flushers.Add(1)
	assert.Equal(t, modeFull, l.state().mode, "FlushAll")
	d.flushers.Add(-1)
	fill(11)
	assert.Equal(t, modeNormal, l.state().mode)
	fill(50)
	assert.Equal(t, modeFull, l.state().mode)
	d.SetPolicy(Policy{LowWatermark: -1, HighWatermark: 100})
	assert.Equal(t, modeNormal, l.state().mode)
	e.close()
}

// TestForegroundBusy: foreground I/O since the last sample (at most one
// sample per busyInterval) makes the destager back off.
func TestForegroundBusy(t *testing.T) {
	e := newEnv(t, envConfig{hddBlocks: 64, slots: 48})
	d := newDestager(e.c, Policy{}, nil, options{})
	l := &loop{d: d, c: e.c}
	t0 := time.Now()
	assert.False(t, l.foregroundBusy(t0), "baseline")
	e.write(1)
	assert.False(t, l.foregroundBusy(t0.Add(busyInterval/2)), "not resampled yet")
	assert.True(t, l.foregroundBusy(t0.Add(busyInterval)))
	assert.True(t, l.foregroundBusy(t0.Add(busyInterval*3/2)), "cached")
	assert.False(t, l.foregroundBusy(t0.Add(2*busyInterval)), "quiet again")
	buf := make([]byte, bs)
	_, err := e.c.ReadAt(buf, 0)
	require.NoError(t, err)
	assert.True(t, l.foregroundBusy(t0.Add(3*busyInterval)), "reads count too")
	e.close()
}

// TestBusyBackoff: between the watermarks with foreground I/O busy, the
// destager writes small batches (4 runs) and pauses after each on the
// clock; once foreground I/O stops it goes flat out.
func TestBusyBackoff(t *testing.T) {
	clock := newFakeClock()
	e := newEnv(t, envConfig{hddBlocks: 128, slots: 100, clock: clock})
	d := newTestDestager(t, e.c, Policy{LowWatermark: -1, HighWatermark: 100}, clock.options(options{noGapReads: true}))
	d.Start() // baseline of foreground activity
	require.Eventually(t, func() bool { return clock.hasPending(pollInterval) }, 10*time.Second, time.Millisecond)
	for lba := uint64(0); lba < 80; lba += 2 { // 40 one-block runs
		e.write(lba)
	}
	// Durable records: no batch waits for a sync (TestBusyWaitsForSync).
	require.NoError(t, e.c.Sync())
	clock.Advance(busyInterval) // wakes the idle loop; the writes count as busy
	require.Eventually(t, func() bool { return d.Stats().DestagedBlocks == 4 && clock.hasPending(minBusyPause) }, 10*time.Second, time.Millisecond)
	consistently(t, func() bool { return d.Stats().DestagedBlocks == 4 }, "no pause after a busy batch")
	clock.Advance(minBusyPause)
	require.Eventually(t, func() bool { return d.Stats().DestagedBlocks == 8 && clock.hasPending(minBusyPause) }, 10*time.Second, time.Millisecond)
	// Quiet for a sampling interval: full speed.
	clock.Advance(busyInterval)
	require.Eventually(t, func() bool { return e.c.DirtyCount() == 0 }, 10*time.Second, time.Millisecond)
	d.Stop()
	e.close()
}

// TestBusyWaitsForSync: while foreground I/O is busy, a batch whose
// records are not durable waits for a sync the cache makes anyway rather
// than forcing one, for up to syncPatience; then it syncs itself.
func TestBusyWaitsForSync(t *testing.T) {
	for _, other := range []bool{true, false} {
		clock := newFakeClock()
		e := newEnv(t, envConfig{hddBlocks: 128, slots: 100, clock: clock})
		d := newTestDestager(t, e.c, Policy{LowWatermark: -1, HighWatermark: 100}, clock.options(options{noGapReads: true}))
		d.Start()
		require.Eventually(t, func() bool { return clock.hasPending(pollInterval) }, 10*time.Second, time.Millisecond)
		for lba := uint64(0); lba < 80; lba += 2 {
			e.write(lba)
		}
		syncs := e.c.Stats().JournalSyncs
		clock.Advance(busyInterval) // busy: the writes since the baseline
		require.Eventually(t, func() bool { return clock.hasPending(retryPause) }, 10*time.Second, time.Millisecond)
		consistently(t, func() bool {
			return d.Stats().DestagedBlocks == 0 && e.c.Stats().JournalSyncs == syncs
		}, "the batch waits, and makes no sync")
		if other {
			require.NoError(t, e.c.Sync()) // a client's fsync covers the snapshot
			clock.Advance(retryPause)
			require.Eventually(t, func() bool { return d.Stats().DestagedBlocks == 4 }, 10*time.Second, time.Millisecond)
			require.Equal(t, syncs+1, e.c.Stats().JournalSyncs, "only the client's sync")
		} else {
			clock.Advance(syncPatience)
			require.Eventually(t, func() bool { return d.Stats().DestagedBlocks == 4 }, 10*time.Second, time.Millisecond)
			require.Greater(t, e.c.Stats().JournalSyncs, syncs, "Pin synced once its patience ran out")
		}
		d.Stop()
		e.close()
	}
}

func TestPace(t *testing.T) {
	ms := time.Millisecond
	// The default cap, 8 MiB/s: 1 MiB takes 125 ms.
	def := DefaultPolicy()
	assert.Equal(t, 125*ms-30*ms, pace(state{mode: modeNormal, busy: true, pol: def}, 1<<20, 30*ms))
	assert.Equal(t, 80*ms, pace(state{mode: modeNormal, busy: true, pol: def}, 1<<20, 80*ms), "the duty cycle when slower")
	pol := DefaultPolicy()
	pol.IdleRate = 0 // normalised explicit 0: no cap, the duty cycle alone
	assert.Zero(t, pace(state{mode: modeFull, busy: true, pol: pol}, 1<<20, ms))
	assert.Zero(t, pace(state{mode: modeNormal, busy: false, pol: pol}, 1<<20, ms))
	assert.Equal(t, minBusyPause, pace(state{mode: modeNormal, busy: true, pol: pol}, 1<<20, ms))
	assert.Equal(t, 30*ms, pace(state{mode: modeAged, busy: true, pol: pol}, 1<<20, 30*ms), "50 % duty cycle")
	pol.IdleRate = 2 // MiB/s: 1 MiB takes 500 ms
	assert.Equal(t, 400*ms, pace(state{mode: modeNormal, busy: true, pol: pol}, 1<<20, 100*ms))
}

func TestRateMeter(t *testing.T) {
	t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	m := rateMeter{start: t0}
	assert.Zero(t, m.rate(t0))
	m.add(t0.Add(500*time.Millisecond), 1<<20)
	assert.InDelta(t, float64(1<<20), m.rate(t0.Add(time.Second)), 1, "1 MiB in the first second")
	for i := 1; i < 20; i++ {
		m.add(t0.Add(time.Duration(i)*time.Second), 1<<20)
	}
	assert.InDelta(t, float64(1<<20), m.rate(t0.Add(20*time.Second)), float64(1<<18), "steady 1 MiB/s")
	assert.Zero(t, m.rate(t0.Add(60*time.Second)), "nothing recent")
}

func TestSplitRunsAndSweep(t *testing.T) {
	mk := func(lbas ...uint64) []blockcache.DirtyBlock {
		var out []blockcache.DirtyBlock
		for _, l := range lbas {
			out = append(out, blockcache.DirtyBlock{LBA: l})
		}
		return out
	}
	runs := splitRuns(mk(1, 2, 3, 4, 5, 7, 8, 100, 2), 3)
	var lens []int
	for _, r := range runs {
		lens = append(lens, len(r))
	}
	assert.Equal(t, []int{3, 2, 2, 1, 1}, lens)

	// Elevator: from the cursor up, then wrapping.
	sw := sweep{snap: mk(1, 2, 3, 10, 11, 20, 30, 31), start: lowerBound(mk(1, 2, 3, 10, 11, 20, 30, 31), 11)}
	all := func(blockcache.DirtyBlock) bool { return true }
	var got []uint64
	for !sw.exhausted() {
		for _, b := range sw.next(nil, all, batchLimits{runs: 2, bytes: 1 << 20, maxRunBlocks: 256}) {
			got = append(got, b.LBA)
		}
		got = append(got, 0) // batch boundary
	}
	assert.Equal(t, []uint64{11, 20, 0, 30, 31, 1, 2, 3, 0, 10, 0}, got)

	// Byte limit: no new run once the batch holds the limit.
	sw = sweep{snap: mk(1, 2, 3, 10, 11, 20)}
	b := sw.next(nil, all, batchLimits{runs: 10, bytes: 2 * bs, maxRunBlocks: 256})
	assert.Len(t, b, 3, "the run in progress is finished")
}

// TestPolicyWatermarks: Watermarks fills in defaults and explicit zeros
// but keeps the order as given, which normalize then repairs.
func TestPolicyWatermarks(t *testing.T) {
	for _, tc := range []struct {
		p         Policy
		low, high int
	}{
		{Policy{}, DefaultLowWatermark, DefaultHighWatermark},
		{Policy{LowWatermark: -1, HighWatermark: 200}, 0, 100},
		{Policy{LowWatermark: 70, HighWatermark: 40}, 70, 40},
		{Policy{LowWatermark: 60}, 60, DefaultHighWatermark},
	} {
		low, high := tc.p.Watermarks()
		require.Equal(t, [2]int{tc.low, tc.high}, [2]int{low, high}, "%+v", tc.p)
		n := tc.p.WithDefaults()
		require.Equal(t, [2]int{low, max(low, high)}, [2]int{n.LowWatermark, n.HighWatermark}, "%+v", tc.p)
	}
}
