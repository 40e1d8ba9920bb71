package main

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// keepDirty are mount options under which written blocks stay dirty
// until something drains them.
var keepDirty = []string{"--low-watermark", "90", "--high-watermark", "95", "--max-dirty-age", "1h"}

// writeSynced writes p at off to the disk and fsyncs it.
func writeSynced(t *testing.T, r *rig, p []byte, off int64) error {
	t.Helper()
	f, err := os.OpenFile(r.disk(), os.O_RDWR, 0)
	require.NoError(t, err)
	defer f.Close()
	_, err = f.WriteAt(p, off)
	require.NoError(t, err)
	return f.Sync()
}

// waitOutput runs the command until its stdout contains want or timeout
// passes, then stops it and returns what it printed.
func waitOutput(t *testing.T, want string, timeout time.Duration, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, wbcacheBin, args...)
	var out syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	require.NoError(t, cmd.Start())
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(done)
	}()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for !strings.Contains(out.String(), want) {
		select {
		case <-done:
			return out.String()
		case <-tick.C:
		}
	}
	cancel()
	<-done
	return out.String()
}

// TestFlushShowsBackingError: with every backing write failing, flush keeps
// retrying and shows the error; status counts the errors as the backing
// device's. Once the device is back, flush ends.
func TestFlushShowsBackingError(t *testing.T) {
	r, fd := newFaultRig(t, 16<<20, 8<<20)
	d := r.mount(t, keepDirty...)
	require.NoError(t, writeSynced(t, r, bytes.Repeat([]byte{7}, 256<<10), 0))
	require.Equal(t, 64, r.status(t).Dirty)

	fd.failWrites.Store(true)
	out := waitOutput(t, "FAILING", 20*time.Second, "flush", r.mnt)
	require.Contains(t, out, "FAILING, retrying: ", out)
	require.Contains(t, out, "input/output error", out)

	s := r.status(t)
	require.True(t, s.DestageFailing)
	require.Positive(t, s.DestageBackingErrors)
	require.GreaterOrEqual(t, s.BackingErrors, s.DestageBackingErrors, "write-back errors count as backing errors")
	human := wantCode(t, 0, "status", r.mnt).stdout
	require.Contains(t, human, "FAILING, retrying with back-off")
	require.Regexp(t, `backing device [1-9]\d* \([1-9]\d* in write-back\)`, human)

	fd.failWrites.Store(false)
	res := wantCode(t, 0, "flush", r.mnt)
	require.Regexp(t, `flushed: 256\.0 KiB written back in [0-9.]+s \(average .*/s\); 0 blocks dirty now`, res.stdout)
	require.False(t, r.status(t).DestageFailing)
	require.Equal(t, 0, d.stop(t))
	require.Contains(t, d.stderr.String(), "destage recovered")
	require.Contains(t, d.stderr.String(), "stopped cleanly: nothing dirty")
}

// TestBackingSyncFailureShown: in writethrough mode one failed backing
// sync makes every later fsync fail (fsyncgate); status, JSON, metrics and
// flush say so and how to clear it, and a restart clears it.
func TestBackingSyncFailureShown(t *testing.T) {
	r, fd := newFaultRig(t, 16<<20, 8<<20)
	d := r.mount(t, "--mode", "writethrough", "--metrics", "127.0.0.1:0")
	block := bytes.Repeat([]byte{3}, 4096)
	require.NoError(t, writeSynced(t, r, block, 0))

	fd.failSyncs.Store(true)
	require.Error(t, writeSynced(t, r, block, 4096))
	fd.failSyncs.Store(false)
	require.Error(t, writeSynced(t, r, block, 8192), "sticky: the next fsync fails too")

	s := r.status(t)
	require.Contains(t, s.BackingSyncFailed, "syncing backing device failed")
	at, err := time.Parse(time.RFC3339, s.BackingSyncFailedAt)
	require.NoError(t, err)
	require.WithinDuration(t, time.Now(), at, time.Minute)
	human := wantCode(t, 0, "status", r.mnt).stdout
	require.Contains(t, human, "BACKING SYNC FAILED at "+s.BackingSyncFailedAt)
	require.Contains(t, human, "then stop the daemon and mount again")

	resp, err := http.Get("http://" + s.MetricsAddr + "/metrics")
	require.NoError(t, err)
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.NoError(t, err)
	require.Contains(t, string(body), "\nwbcache_backing_sync_failed 1\n")
	require.Contains(t, string(body), "\nwbcache_backing_sync_failed_timestamp_seconds "+strconv.FormatInt(at.Unix(), 10)+"\n")

	res := wantCode(t, 1, "flush", r.mnt)
	require.Contains(t, res.stdout, "0 blocks dirty now", "the dirty blocks are written back all the same")
	require.Contains(t, res.stderr, "every dirty block was written back, but a sync of the backing device failed")
	require.Contains(t, res.stderr, "restarted (fsyncgate)")

	require.Equal(t, 0, d.stop(t))
	r.mount(t)
	require.Empty(t, r.status(t).BackingSyncFailed, "a restart clears it")
	require.NoError(t, writeSynced(t, r, block, 8192))
}

// TestDrainResumesAfterKill9: a daemon killed while 'wbcache mode MNT
// writethrough' drains leaves the mode saved with blocks still dirty; the
// next mount says so and finishes the drain.
func TestDrainResumesAfterKill9(t *testing.T) {
	r, fd := newFaultRig(t, 16<<20, 8<<20)
	d := r.mount(t, keepDirty...)
	data := bytes.Repeat([]byte{9}, 1<<20)
	require.NoError(t, writeSynced(t, r, data, 2<<20))
	require.Equal(t, 256, r.status(t).Dirty)

	fd.stall() // the drain's first backing write waits
	out := waitOutput(t, "writing back dirty blocks", 20*time.Second, "mode", r.mnt, "writethrough")
	require.Contains(t, out, "mode writethrough: writing back dirty blocks")
	// SIGKILL, then let the stalled write go: a process waiting for an
	// O_DIRECT write on FUSE dies only once the write is answered.
	d.Signal(syscall.SIGKILL)
	fd.release()
	<-d.Done()

	d = r.mount(t)
	require.Contains(t, d.ready, "mode writethrough")
	require.Eventually(t, func() bool { return strings.Contains(d.stderr.String(), "writing them back") }, 10*time.Second, 10*time.Millisecond)
	require.Regexp(t, `mode writethrough with [0-9.]+ [KM]iB dirty at mount`, d.stderr.String())
	require.Eventually(t, func() bool { return r.status(t).Dirty == 0 }, 30*time.Second, 50*time.Millisecond)
	require.Eventually(t, func() bool { return strings.Contains(d.stderr.String(), "resumed drain done") }, 10*time.Second, 10*time.Millisecond)
	require.Empty(t, r.status(t).Drain)
	require.Equal(t, 0, d.stop(t))
	requireSameBytes(t, data, readAll(t, fd.f.Name())[2<<20:3<<20], "backing device after the resumed drain")
}

// syncBuffer collects a command's output from concurrent writers.
type syncBuffer struct {
	mu  sync.Mutex
	buf strings.Builder
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
