package flush

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/wbcache/wbcache/device"
)

// recordingHandler keeps the messages and attributes logged.
type recordingHandler struct {
	mu   sync.Mutex
	msgs []string
	recs []map[string]string
}

func (h *recordingHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *recordingHandler) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *recordingHandler) WithGroup(string) slog.Handler            { return h }
func (h *recordingHandler) Handle(_ context.Context, r slog.Record) error {
	attrs := map[string]string{}
	r.Attrs(func(a slog.Attr) bool {
		attrs[a.Key] = a.Value.String()
		return true
	})
	h.mu.Lock()
	h.msgs = append(h.msgs, r.Message)
	h.recs = append(h.recs, attrs)
	h.mu.Unlock()
	return nil
}

// TestOutageLogging: a long outage is logged when it begins, then again
// every outageLogEvery with the count of failed attempts, and its end once.
func TestOutageLogging(t *testing.T) {
	h := &recordingHandler{}
	log := slog.New(h)
	var o outage
	t0 := time.Date(2026, 12, 4, 10, 0, 0, 0, time.UTC)
	err := errors.New("EIO")
	for i := range 130 { // an attempt a second for 130 s
		o.failed(log, t0.Add(time.Duration(i)*time.Second), err)
	}
	require.Equal(t, []string{
		"destage failed: the blocks stay dirty; retrying with back-off",
		"destage still failing: the blocks stay dirty; retrying with back-off",
		"destage still failing: the blocks stay dirty; retrying with back-off",
	}, h.msgs)
	assert.Equal(t, "61", h.recs[1]["failed_attempts"])
	assert.Equal(t, "1m0s", h.recs[1]["for"])
	assert.Equal(t, "121", h.recs[2]["failed_attempts"])

	o.succeeded(log, t0.Add(131*time.Second))
	o.succeeded(log, t0.Add(132*time.Second))
	require.Len(t, h.msgs, 4, "the recovery is logged once")
	assert.Equal(t, "destage recovered", h.msgs[3])
	assert.Equal(t, "130", h.recs[3]["failed_attempts"])

	o.failed(log, t0.Add(200*time.Second), err)
	require.Len(t, h.msgs, 5, "a new outage is logged at once")
}

// TestBackingErrorsCountedApart: backing write errors count in
// BackingErrors; cache read errors only in Errors.
func TestBackingErrorsCountedApart(t *testing.T) {
	fe := newFaultEnv(t)
	for lba := uint64(0); lba < 4; lba++ {
		fe.write(lba)
	}
	fe.hdd.f.FailIf(func(o device.Op, _, _ int64) bool { return o == device.OpWrite })
	d := newTestDestager(t, fe.c, Policy{LowWatermark: -1}, fe.clock.options(options{}))
	d.Start()
	require.Eventually(t, func() bool { return d.Stats().Backoff == minBackoff && fe.clock.hasPending(minBackoff) }, 10*time.Second, time.Millisecond)
	st := d.Stats()
	assert.EqualValues(t, 1, st.Errors)
	assert.EqualValues(t, 1, st.BackingErrors)

	fe.hdd.f.Disarm()
	slots := fe.c.Geometry().SlotOffset(0)
	fe.ssd.f.FailIf(func(o device.Op, off, _ int64) bool { return o == device.OpRead && off >= slots })
	fe.clock.Advance(minBackoff)
	require.Eventually(t, func() bool { return d.Stats().Errors == 2 }, 10*time.Second, time.Millisecond)
	assert.EqualValues(t, 1, d.Stats().BackingErrors, "a cache read error is not a backing error")
	fe.ssd.f.Disarm()
	fe.clock.Advance(2 * minBackoff)
	require.Eventually(t, func() bool { return fe.c.DirtyCount() == 0 }, 10*time.Second, time.Millisecond)
	d.Stop()
	fe.close()
}
