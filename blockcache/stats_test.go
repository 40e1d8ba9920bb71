package blockcache

import (
	"bytes"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/wbcache/wbcache/device"
	"github.com/wbcache/wbcache/layout"
)

// fakeClock is a clock a test moves by hand.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// clockedDevices formats a small cache device for hdd and returns open
// options with a fake clock.
func clockedDevices(t *testing.T, hdd device.Device) (*fakeClock, *device.Mem, device.Device, Options) {
	t.Helper()
	clk := &fakeClock{now: time.Unix(1_800_000_000, 0)}
	ssd := device.NewMem(int64(2+2*2+32+64)*BlockSize, [16]byte{1})
	require.NoError(t, Format(ssd, hdd, FormatOptions{JournalBlocks: 32}))
	return clk, ssd, hdd, Options{Now: clk.Now, CheckpointInterval: -1, NoBackgroundBackingSync: true}
}

// TestOldestDirtyAgeSurvivesReopen: the age of the oldest dirty block
// goes on counting across a close and an open (the superblock carries
// when it became dirty), and the destager's ticks see it as that old.
func TestOldestDirtyAgeSurvivesReopen(t *testing.T) {
	clk, ssd, hdd, opts := clockedDevices(t, device.NewMem(256*BlockSize, [16]byte{2}))
	c, err := Open(ssd, hdd, opts)
	require.NoError(t, err)
	_, err = c.WriteAt(make([]byte, BlockSize), 0)
	require.NoError(t, err)
	clk.advance(40 * time.Second)
	_, err = c.WriteAt(make([]byte, BlockSize), 8*BlockSize)
	require.NoError(t, err)
	clk.advance(20 * time.Second)
	require.Equal(t, 60.0, c.Stats().OldestDirtySeconds)
	require.NoError(t, c.Close())

	clk.advance(5 * time.Minute) // unmounted
	c, err = Open(ssd, hdd, opts)
	require.NoError(t, err)
	defer c.Close()
	clk.advance(10 * time.Second)
	s := c.Stats()
	require.Equal(t, 2, s.Dirty)
	require.Equal(t, 370.0, s.OldestDirtySeconds, "60 s before the close, 5 min closed, 10 s since the open")
	require.False(t, s.OldestDirtySinceOpen)
	blocks := c.DirtyBlocks(nil)
	require.Len(t, blocks, 2)
	require.EqualValues(t, 370, c.Tick()-blocks[0].Since, "the destager sees the carried age too")

	// A block dirtied after the open counts from its own write. (Ordered
	// write-back would offer only the oldest epoch's blocks: unordered
	// shows all three.)
	require.NoError(t, c.SetSettings(layout.Settings{Order: layout.OrderUnordered, SetMask: layout.SetOrder}))
	_, err = c.WriteAt(make([]byte, BlockSize), 16*BlockSize)
	require.NoError(t, err)
	clk.advance(time.Second)
	blocks = c.DirtyBlocks(nil)
	require.EqualValues(t, 1, c.Tick()-blocks[2].Since)
}

// TestOldestDirtyUnrecorded: a superblock without the time (written by an
// earlier wbcache) gives an age counted from the open, flagged as such.
func TestOldestDirtyUnrecorded(t *testing.T) {
	clk, ssd, hdd, opts := clockedDevices(t, device.NewMem(256*BlockSize, [16]byte{2}))
	c, err := Open(ssd, hdd, opts)
	require.NoError(t, err)
	_, err = c.WriteAt(make([]byte, BlockSize), 0)
	require.NoError(t, err)
	require.NoError(t, c.Close())

	sb, err := ReadSuperblock(ssd)
	require.NoError(t, err)
	require.NotZero(t, sb.OldestDirty)
	sb.OldestDirty = 0
	sb.Generation++
	require.NoError(t, writeSuperblock(ssd, &sb))

	clk.advance(time.Hour)
	c, err = Open(ssd, hdd, opts)
	require.NoError(t, err)
	defer c.Close()
	clk.advance(7 * time.Second)
	s := c.Stats()
	require.True(t, s.OldestDirtySinceOpen)
	require.Equal(t, 7.0, s.OldestDirtySeconds)

	// A checkpoint does not turn the unknown time into the open's.
	require.NoError(t, c.Checkpoint())
	sb, err = ReadSuperblock(ssd)
	require.NoError(t, err)
	require.Zero(t, sb.OldestDirty)
}

// TestBackingSyncFailureInStats: a failed backing sync is sticky and shows
// in Stats with its time until the cache is reopened.
func TestBackingSyncFailureInStats(t *testing.T) {
	hdd := device.NewFaulty(device.NewMem(256*BlockSize, [16]byte{2}))
	clk, ssd, _, opts := clockedDevices(t, hdd)
	c, err := Open(ssd, hdd, opts)
	require.NoError(t, err)
	require.NoError(t, c.SetMode(ModeWritethrough))
	require.Empty(t, c.Stats().BackingSyncFailed)

	hdd.FailIf(func(op device.Op, off, n int64) bool { return op == device.OpSync })
	_, err = c.WriteAt(make([]byte, BlockSize), 0)
	require.NoError(t, err)
	require.ErrorIs(t, c.Sync(), device.ErrInjected)
	hdd.FailIf(nil)
	clk.advance(time.Minute)
	_, err = c.WriteAt(make([]byte, BlockSize), BlockSize)
	require.NoError(t, err)
	require.ErrorIs(t, c.Sync(), device.ErrInjected, "sticky: a later sync that would succeed still fails")

	s := c.Stats()
	require.Contains(t, s.BackingSyncFailed, "syncing backing device failed")
	require.Equal(t, "2027-01-15T08:00:00Z", s.BackingSyncFailedAt)
	ferr, at := c.BackingSyncFailure()
	require.True(t, errors.Is(ferr, device.ErrInjected))
	require.Equal(t, clk.now.Add(-time.Minute).Unix(), at.Unix())
	require.NoError(t, c.Close())

	c, err = Open(ssd, hdd, opts)
	require.NoError(t, err)
	defer c.Close()
	require.Empty(t, c.Stats().BackingSyncFailed, "reopening clears it")
	require.NoError(t, c.Sync())
}

// openOverFaulty opens a cache in mode over hdd, a backing device whose
// operations the test fails (device.Faulty, or one around it).
func openOverFaulty(t *testing.T, hdd device.Device, mode Mode) *Cache {
	t.Helper()
	_, ssd, _, opts := clockedDevices(t, hdd)
	c, err := Open(ssd, hdd, opts)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	require.NoError(t, c.SetMode(mode))
	return c
}

// failSyncs makes every sync of f fail until f.FailIf(nil).
func failSyncs(f *device.Faulty) {
	f.FailIf(func(op device.Op, off, n int64) bool { return op == device.OpSync })
}

// TestBackingSyncFailureSeenBySync: a failed sync of the backing device
// made by someone else (the destager, through SyncBacking) while writes
// made in place for clients were not covered by a good sync yet makes
// every later Sync fail, as one of its own would: that data may be gone,
// and a sync that succeeds afterwards would not bring it back. With
// nothing of the clients' uncovered, the failure is the destager's alone
// (it writes its blocks again) and Sync is not affected.
func TestBackingSyncFailureSeenBySync(t *testing.T) {
	hdd := device.NewFaulty(device.NewMem(256*BlockSize, [16]byte{2}))
	c := openOverFaulty(t, hdd, ModeWritearound)
	failSync := func() {
		failSyncs(hdd)
		require.ErrorIs(t, c.SyncBacking(c.BackingSyncFailures()), device.ErrInjected)
		hdd.FailIf(nil)
	}

	_, err := c.WriteAt(pattern(3), 3*BlockSize)
	require.NoError(t, err)
	require.NoError(t, c.Sync())
	failSync()
	require.NoError(t, c.Sync(), "nothing of the clients' was uncovered")
	require.Empty(t, c.Stats().BackingSyncFailed)

	_, err = c.WriteAt(pattern(5), 5*BlockSize)
	require.NoError(t, err)
	require.NoError(t, c.SyncBacking(c.BackingSyncFailures()))
	failSync()
	require.NoError(t, c.Sync(), "the write around the cache was covered by a good sync of SyncBacking")
	require.Empty(t, c.Stats().BackingSyncFailed)

	_, err = c.WriteAt(pattern(4), 4*BlockSize)
	require.NoError(t, err)
	failSync()
	require.ErrorIs(t, c.Sync(), device.ErrInjected, "a write around the cache was uncovered")
	require.ErrorIs(t, c.Sync(), device.ErrInjected, "sticky")
	require.Contains(t, c.Stats().BackingSyncFailed, "syncing backing device failed")
}

// failFirstSync is a backing device whose first Sync once armed waits
// for release and fails; the others succeed, as a file reports a
// write-back error to one fsync only.
type failFirstSync struct {
	*device.Mem
	started, release chan struct{}
	armed            atomic.Bool
}

func (d *failFirstSync) Sync() error {
	if d.armed.CompareAndSwap(true, false) {
		close(d.started)
		<-d.release
		return device.ErrInjected
	}
	return d.Mem.Sync()
}

// TestBackingSyncsOneAtATime: a client's Sync that comes while the
// destager's backing sync is under way waits for it rather than syncing
// beside it; when that sync fails with a write around the cache not yet
// covered, the client's Sync fails too. Beside it, its own sync could
// succeed (the failure is reported to one of them) and promise data that
// may be gone.
func TestBackingSyncsOneAtATime(t *testing.T) {
	hdd := &failFirstSync{Mem: device.NewMem(256*BlockSize, [16]byte{2}), started: make(chan struct{}), release: make(chan struct{})}
	c := openOverFaulty(t, hdd, ModeWritearound)
	_, err := c.WriteAt(pattern(4), 4*BlockSize)
	require.NoError(t, err)
	hdd.armed.Store(true)
	destager := make(chan error)
	go func() { destager <- c.SyncBacking(c.BackingSyncFailures()) }()
	<-hdd.started
	client := make(chan error)
	go func() { client <- c.Sync() }()
	time.Sleep(50 * time.Millisecond)
	close(hdd.release)
	require.ErrorIs(t, <-destager, device.ErrInjected)
	require.ErrorIs(t, <-client, device.ErrInjected, "the client's Sync after the failed one")
	require.ErrorIs(t, c.Sync(), device.ErrInjected, "sticky")
}

// TestDiscardSyncFailure: a discard whose backing sync fails has zeroed
// the backing device in place, maybe only in its cache: the zeros count
// as a write in place, so Sync does not report them durable from then on.
func TestDiscardSyncFailure(t *testing.T) {
	hdd := device.NewFaulty(device.NewMem(256*BlockSize, [16]byte{2}))
	c := openOverFaulty(t, hdd, ModeWriteback)
	failSyncs(hdd)
	require.ErrorIs(t, c.Discard(8*BlockSize, 4*BlockSize), device.ErrInjected)
	hdd.FailIf(nil)
	require.ErrorIs(t, c.Sync(), device.ErrInjected, "the zeros were never synced")
}

// TestSyncBackingAfterAFailedSync: a sync of the backing device that
// failed after the destager's writes began may have lost them, whoever
// made it; the destager's own sync, though it succeeds, then fails too,
// so that the blocks stay dirty and are written again.
func TestSyncBackingAfterAFailedSync(t *testing.T) {
	hdd := device.NewFaulty(device.NewMem(256*BlockSize, [16]byte{2}))
	c := openOverFaulty(t, hdd, ModeWritearound)
	since := c.BackingSyncFailures()
	_, err := c.WriteAt(pattern(2), 2*BlockSize)
	require.NoError(t, err)
	failSyncs(hdd)
	require.ErrorIs(t, c.Sync(), device.ErrInjected)
	hdd.FailIf(nil)
	require.ErrorIs(t, c.SyncBacking(since), errEarlierSyncFailed)
	require.NoError(t, c.SyncBacking(c.BackingSyncFailures()))
}

// slowWrite holds its first WriteAt once armed until release.
type slowWrite struct {
	*device.Faulty
	entered, release chan struct{}
	armed            atomic.Bool
}

func (d *slowWrite) WriteAt(p []byte, off int64) (int, error) {
	if d.armed.CompareAndSwap(true, false) {
		close(d.entered)
		<-d.release
	}
	return d.Faulty.WriteAt(p, off)
}

// TestBackingSyncFailsDuringWrite: a backing sync that fails while a write
// around the cache is under way (not yet counted as ended) may have lost
// part of it: the failure is sticky, and the Sync after the write fails.
func TestBackingSyncFailsDuringWrite(t *testing.T) {
	hdd := &slowWrite{Faulty: device.NewFaulty(device.NewMem(256*BlockSize, [16]byte{2})), entered: make(chan struct{}), release: make(chan struct{})}
	c := openOverFaulty(t, hdd, ModeWritearound)
	hdd.armed.Store(true)
	wrote := make(chan error)
	go func() {
		_, err := c.WriteAt(pattern(6), 6*BlockSize)
		wrote <- err
	}()
	<-hdd.entered
	failSyncs(hdd.Faulty)
	require.ErrorIs(t, c.SyncBacking(c.BackingSyncFailures()), device.ErrInjected)
	hdd.FailIf(nil)
	close(hdd.release)
	require.NoError(t, <-wrote)
	require.ErrorIs(t, c.Sync(), device.ErrInjected, "the write was under way when a sync failed")
}

// TestFailedBackingWriteChangesGeneration: a write around the cache that
// fails may still have changed the block on the backing device, so the
// block's stripe generation changes all the same: a read that looked the
// block up before must not cache what it read (maybePromote).
func TestFailedBackingWriteChangesGeneration(t *testing.T) {
	hdd := device.NewFaulty(device.NewMem(256*BlockSize, [16]byte{2}))
	c := openOverFaulty(t, hdd, ModeWritearound)
	for _, blocks := range []int{1, 3} {
		gen := c.stripeGen(7)
		hdd.FailIf(func(op device.Op, off, n int64) bool { return op == device.OpWrite })
		_, err := c.WriteAt(bytes.Repeat(pattern(7), blocks), 7*BlockSize)
		hdd.FailIf(nil)
		require.ErrorIs(t, err, device.ErrInjected)
		require.NotEqual(t, gen, c.stripeGen(7), "a failed write of %d blocks around the cache", blocks)
	}
}

// TestRunsOverDirtyAfterStickyFailure: once a failed backing sync is
// sticky, nothing written in place can be promised durable, so a run over
// dirty blocks is superseded in the cache instead of going around it.
func TestRunsOverDirtyAfterStickyFailure(t *testing.T) {
	hdd := device.NewFaulty(device.NewMem(256*BlockSize, [16]byte{2}))
	c := openOverFaulty(t, hdd, ModeWriteback)
	_, err := c.WriteAt(pattern(20), 20*BlockSize) // dirty
	require.NoError(t, err)
	require.NoError(t, c.SetMode(ModeWritearound))
	_, err = c.WriteAt(pattern(30), 30*BlockSize) // around the cache
	require.NoError(t, err)
	failSyncs(hdd)
	require.ErrorIs(t, c.Sync(), device.ErrInjected)
	hdd.FailIf(nil)
	run := append(pattern(40), pattern(41)...)
	_, err = c.WriteAt(run, 20*BlockSize)
	require.NoError(t, err)
	require.Zero(t, c.Stats().BypassedOverDirty)
	got := make([]byte, len(run))
	_, err = c.ReadAt(got, 20*BlockSize)
	require.NoError(t, err)
	require.Equal(t, run, got)
}
