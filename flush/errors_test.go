package flush

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/wbcache/wbcache/blockcache"
	"github.com/wbcache/wbcache/device"
)

// consistently asserts cond holds throughout a short window of real time
// (used only to show that nothing happens while the fake clock stands
// still: no busy loop).
func consistently(t *testing.T, cond func() bool, msg string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Millisecond)
	for time.Now().Before(deadline) {
		require.True(t, cond(), msg)
		time.Sleep(time.Millisecond)
	}
}

// faultEnv is a cache whose backing device (or cache device) fails on
// demand, with a fake clock.
type faultEnv struct {
	*env
	clock *fakeClock
	hdd   *faultSwitch
	ssd   *faultSwitch
}

func newFaultEnv(t *testing.T) *faultEnv {
	fe := &faultEnv{clock: newFakeClock(), hdd: &faultSwitch{}, ssd: &faultSwitch{}}
	fe.env = newEnv(t, envConfig{hddBlocks: 128, slots: 64, clock: fe.clock, wrapHDD: fe.hdd.wrap, wrapSSD: fe.ssd.wrap})
	return fe
}

// TestBackingErrorsBackoff: every backing write fails (EIO). The blocks stay
// dirty, each failure is counted, the first of the burst is logged, and the
// destager retries after 100 ms, 200 ms, 400 ms … up to 10 s — never while
// the (fake) clock stands still. When the fault goes away it recovers.
func TestBackingErrorsBackoff(t *testing.T) {
	for _, op := range []device.Op{device.OpWrite, device.OpSync} {
		t.Run(op.String(), func(t *testing.T) {
			fe := newFaultEnv(t)
			for lba := uint64(10); lba < 20; lba++ { // one run
				fe.write(lba)
			}
			f := fe.hdd.f
			f.FailIf(func(o device.Op, _, _ int64) bool { return o == op })
			d := newTestDestager(t, fe.c, Policy{LowWatermark: -1}, fe.clock.options(options{}))
			d.Start()

			attempts := func() int64 { return f.Injected() }
			waitBackoff := func(want time.Duration, n int64) {
				t.Helper()
				require.Eventually(t, func() bool {
					return d.Stats().Backoff == want && attempts() == n && fe.clock.hasPending(want)
				}, 10*time.Second, time.Millisecond, "want back-off %v after %d attempts", want, n)
			}
			waitBackoff(minBackoff, 1)
			st := d.Stats()
			assert.EqualValues(t, 1, st.Errors)
			assert.Contains(t, st.LastError, "injected")
			assert.Equal(t, 10, st.Dirty, "blocks stay dirty")
			assert.Zero(t, st.DestagedBlocks)
			consistently(t, func() bool { return attempts() == 1 }, "retried without the clock moving: busy loop")

			// Just short of the back-off: nothing.
			fe.clock.Advance(minBackoff - time.Millisecond)
			consistently(t, func() bool { return attempts() == 1 }, "retried before the back-off")
			fe.clock.Advance(time.Millisecond)
			waitBackoff(2*minBackoff, 2)
			fe.clock.Advance(2 * minBackoff)
			waitBackoff(4*minBackoff, 3)
			// Doubling up to the cap.
			want := 4 * minBackoff
			for n := int64(4); want < maxBackoff; n++ {
				fe.clock.Advance(want)
				want = min(2*want, maxBackoff)
				waitBackoff(want, n)
			}
			n := attempts()
			fe.clock.Advance(maxBackoff)
			waitBackoff(maxBackoff, n+1)
			assert.Equal(t, 10, fe.c.DirtyCount())
			assert.EqualValues(t, n+1, d.Stats().Errors)
			assert.EqualValues(t, 1, logCount(d, slog.LevelWarn), "logged once per burst")

			// The disk comes back.
			f.Disarm()
			fe.clock.Advance(maxBackoff)
			require.Eventually(t, func() bool { return fe.c.DirtyCount() == 0 }, 10*time.Second, time.Millisecond)
			require.Eventually(t, func() bool { return d.Stats().Backoff == 0 }, 10*time.Second, time.Millisecond)
			assert.EqualValues(t, 1, logCount(d, slog.LevelInfo)-1, "recovery logged once (besides the start)")
			d.Stop()
			fe.checkBacking("after recovery", fe.hddMem)
			fe.close()
		})
	}
}

// TestOneRunFails: a write error in one run leaves only that run dirty;
// the other runs of the batch are synced and cleaned.
func TestOneRunFails(t *testing.T) {
	fe := newFaultEnv(t)
	for _, lba := range []uint64{1, 2, 3, 20, 21, 40, 41, 42} {
		fe.write(lba)
	}
	fe.hdd.f.FailIf(func(o device.Op, off, _ int64) bool { return o == device.OpWrite && off == 20*bs })
	d := newTestDestager(t, fe.c, Policy{LowWatermark: -1}, fe.clock.options(options{noGapReads: true}))
	d.Start()
	require.Eventually(t, func() bool { return d.Stats().Backoff == minBackoff && fe.clock.hasPending(minBackoff) }, 10*time.Second, time.Millisecond)
	assert.Equal(t, 2, fe.c.DirtyCount())
	assert.EqualValues(t, 6, d.Stats().DestagedBlocks)
	dirty := fe.c.DirtyBlocks(nil)
	require.Len(t, dirty, 2)
	assert.EqualValues(t, 20, dirty[0].LBA)
	assert.EqualValues(t, 21, dirty[1].LBA)
	fe.hdd.f.Disarm()
	fe.clock.Advance(minBackoff)
	require.Eventually(t, func() bool { return fe.c.DirtyCount() == 0 }, 10*time.Second, time.Millisecond)
	d.Stop()
	fe.checkBacking("after retry", fe.hddMem)
	fe.close()
}

// TestCacheReadErrors: reading dirty slots from the cache device fails
// (EIO); handled like backing errors.
func TestCacheReadErrors(t *testing.T) {
	fe := newFaultEnv(t)
	for lba := uint64(0); lba < 8; lba++ {
		fe.write(lba)
	}
	slots := fe.c.Geometry().SlotOffset(0)
	f := fe.ssd.f
	f.FailIf(func(o device.Op, off, _ int64) bool { return o == device.OpRead && off >= slots })
	d := newTestDestager(t, fe.c, Policy{LowWatermark: -1}, fe.clock.options(options{}))
	d.Start()
	require.Eventually(t, func() bool { return d.Stats().Backoff == minBackoff && fe.clock.hasPending(minBackoff) }, 10*time.Second, time.Millisecond)
	assert.EqualValues(t, 1, f.Injected())
	assert.EqualValues(t, 1, d.Stats().Errors)
	assert.Contains(t, d.Stats().LastError, "cache device")
	assert.Equal(t, 8, fe.c.DirtyCount())
	assert.Zero(t, fe.ver.writes.Load(), "nothing written to the backing device")
	consistently(t, func() bool { return f.Injected() == 1 }, "busy loop")
	f.Disarm()
	fe.clock.Advance(minBackoff)
	require.Eventually(t, func() bool { return fe.c.DirtyCount() == 0 }, 10*time.Second, time.Millisecond)
	d.Stop()
	fe.checkBacking("after recovery", fe.hddMem)
	fe.close()
}

// TestFlushAllRetriesUntilCancelled: with the backing device failing,
// FlushAll keeps retrying with back-off until ctx is cancelled, then
// returns the ctx error wrapped with the last backing error.
func TestFlushAllRetriesUntilCancelled(t *testing.T) {
	for _, started := range []bool{false, true} {
		t.Run(map[bool]string{false: "not-started", true: "started"}[started], func(t *testing.T) {
			fe := newFaultEnv(t)
			fe.write(3)
			f := fe.hdd.f
			f.FailIf(func(o device.Op, _, _ int64) bool { return o == device.OpWrite })
			d := newTestDestager(t, fe.c, Policy{}, fe.clock.options(options{}))
			if started {
				d.Start()
			}
			ctx, cancel := context.WithCancel(context.Background())
			errc := make(chan error, 1)
			go func() { errc <- d.FlushAll(ctx, nil) }()
			for n := int64(1); n <= 3; n++ {
				want := minBackoff << (n - 1)
				timers := 1 // the back-off timer, and FlushAll's progress tick if it has the same period
				if want == progressEvery {
					timers++
				}
				require.Eventually(t, func() bool {
					return f.Injected() == n && d.Stats().Backoff == want && fe.clock.pendingCount(want) >= timers
				}, 10*time.Second, time.Millisecond, "attempt %d", n)
				fe.clock.Advance(want)
			}
			cancel()
			select {
			case err := <-errc:
				require.ErrorIs(t, err, context.Canceled)
				require.ErrorIs(t, err, device.ErrInjected, "the last backing error is wrapped")
				assert.Contains(t, err.Error(), "writing blocks 3-3 to the backing device")
			case <-time.After(10 * time.Second):
				t.Fatal("FlushAll did not return after cancel")
			}
			assert.Equal(t, 1, fe.c.DirtyCount())
			d.Stop()
			fe.close()
		})
	}
}

// TestLostBlockInRun: one dirty block whose cache slot fails its checksum,
// in the middle of a run, is lost; its neighbours still reach the backing
// device, FlushAll ends naming the lost block instead of retrying forever,
// and the lost block stays dirty.
func TestLostBlockInRun(t *testing.T) {
	e := newEnv(t, envConfig{hddBlocks: 32, slots: 16})
	for lba := uint64(4); lba < 10; lba++ {
		e.write(lba)
	}
	require.NoError(t, e.c.Sync())
	slot := -1
	for _, b := range e.c.DirtyBlocks(nil) {
		if b.LBA == 6 {
			slot = int(b.Slot)
		}
	}
	require.GreaterOrEqual(t, slot, 0)
	_, err := e.ssdMem.WriteAt(make([]byte, bs), e.c.Geometry().SlotOffset(uint64(slot)))
	require.NoError(t, err)

	d := newTestDestager(t, e.c, Policy{MaxRun: 16 * bs}, options{})
	err = d.FlushAll(context.Background(), nil)
	require.ErrorIs(t, err, ErrLostBlocks)
	require.Contains(t, err.Error(), ": 6;")
	require.Equal(t, []uint64{6}, e.c.LostBlocks())
	require.Equal(t, 1, e.c.DirtyCount())
	buf := make([]byte, bs)
	for lba := uint64(4); lba < 10; lba++ {
		_, err := e.hddMem.ReadAt(buf, int64(lba)*bs)
		require.NoError(t, err)
		if lba == 6 {
			require.Equal(t, make([]byte, bs), buf, "the lost block's older version stays on the backing device")
			continue
		}
		require.Equal(t, e.m.want(lba), buf, "block %d", lba)
	}
	_, err = e.c.ReadAt(buf, 6*bs)
	require.ErrorIs(t, err, blockcache.ErrCorruptData)
	require.Zero(t, e.ver.bad.Load())
}
