package blockcache

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/wbcache/wbcache/device"
	"github.com/wbcache/wbcache/layout"
)

// TestStreamOverCachedBlocks: a sequential stream past the cutoff over a
// region whose blocks are cached at some density is placed whole, one
// 1 MiB write at a time, never as a scatter of short backing writes
// between cached blocks. In writeback mode a write that covers a dirty
// cached version goes into the cache. Modes writearound and none admit
// no new blocks: there a write over dirty versions goes to the backing
// device in one I/O and one backing sync, and the dirty versions it
// supersedes are dropped, unless every block of it has one (100%: it
// goes into the cache). A write over clean copies alone goes to the
// backing device in one I/O, the copies dropped first. Every block reads
// back as the stream wrote it.
func TestStreamOverCachedBlocks(t *testing.T) {
	for _, tc := range []struct {
		density int // percent of the region's blocks cached before the stream
		clean   bool
		mode    Mode
	}{
		{0, false, ModeWriteback}, {25, false, ModeWriteback}, {50, false, ModeWriteback}, {75, false, ModeWriteback},
		{100, false, ModeWriteback}, {25, true, ModeWriteback}, {100, true, ModeWriteback},
		{25, false, ModeWritearound}, {50, false, ModeWritearound}, {75, false, ModeWritearound},
		{100, false, ModeWritearound}, {50, false, ModeNone}, {25, true, ModeNone},
	} {
		kind := "dirty"
		if tc.clean {
			kind = "clean"
		}
		t.Run(fmt.Sprintf("%d%%-%s-%s", tc.density, kind, tc.mode), func(t *testing.T) {
			testStream(t, tc.density, tc.clean, tc.mode)
		})
	}
}

func testStream(t *testing.T, density int, clean bool, mode Mode) {
	const (
		mib    = 1 << 20
		first  = 256  // the region starts at 1 MiB: the stream's first write is before it
		region = 2048 // 8 MiB: eight 1 MiB writes
	)
	ssd := device.NewMem(32<<20, [16]byte{1})
	hdd := device.NewMem(64<<20, [16]byte{2})
	require.NoError(t, Format(ssd, hdd, FormatOptions{}))
	c, err := Open(ssd, hdd, Options{CheckpointInterval: -1, NoBackgroundBackingSync: true})
	require.NoError(t, err)
	defer c.Close()
	require.NoError(t, c.SetSettings(layout.Settings{SeqCutoff: 64 << 10, SetMask: layout.SetSeqCutoff}))

	rng := rand.New(rand.NewPCG(uint64(density), 1))
	buf := make([]byte, BlockSize)
	for _, i := range rng.Perm(region)[:region*density/100] {
		lba := first + i
		if clean {
			_, err = c.ReadAt(buf, int64(lba)*BlockSize) // promoted as a clean copy
		} else {
			_, err = c.WriteAt(pattern(lba), int64(lba)*BlockSize)
		}
		require.NoError(t, err)
	}
	require.Equal(t, region*density/100, c.cachedBetween(first, first+region), "blocks cached before the stream")
	require.NoError(t, c.Sync())
	// Set after the blocks are dirty: a mode other than writeback with
	// dirty blocks is what a drain that follows a mode change sees (the
	// engine alone runs no destager).
	require.NoError(t, c.SetMode(mode))
	dirtyBefore := c.DirtyCount()

	stream := make([]byte, (first+region)*BlockSize)
	for i := range stream {
		stream[i] = byte(i/BlockSize*13 + 5)
	}
	_, err = c.WriteAt(stream[:mib], 0) // starts the stream
	require.NoError(t, err)
	writes, syncs, bypassed := hdd.Stats().Writes, hdd.Stats().Syncs, c.Stats().Bypassed
	for off := mib; off < len(stream); off += mib {
		_, err = c.WriteAt(stream[off:off+mib], int64(off))
		require.NoError(t, err)
	}
	backing := hdd.Stats().Writes - writes
	backingSyncs := hdd.Stats().Syncs - syncs
	bypassed = c.Stats().Bypassed - bypassed

	cached := c.cachedBetween(first, first+region)
	overDirty := density > 0 && !clean
	switch {
	case overDirty && mode != ModeWriteback && density < 100:
		mibs := region * BlockSize / mib
		require.EqualValues(t, mibs, backing, "one backing write per 1 MiB write")
		require.EqualValues(t, mibs, backingSyncs, "one backing sync per 1 MiB write over dirty blocks")
		require.EqualValues(t, mibs, bypassed, "each 1 MiB write bypassed the cache")
		require.EqualValues(t, mibs, c.Stats().BypassedOverDirty, "runs written over dirty blocks")
		require.Zero(t, cached, "the dirty versions under the stream were dropped")
		require.Equal(t, dirtyBefore-region*density/100, c.DirtyCount(), "dirty blocks left")
	case overDirty:
		require.Zero(t, backing, "backing writes of a stream over dirty cached blocks")
		require.Zero(t, bypassed, "requests placed in the cache are not counted as bypassing it")
		require.Equal(t, region, cached, "the whole stream went into the cache")
	default:
		require.Zero(t, c.Stats().BypassedOverDirty, "runs written over dirty blocks")
		require.EqualValues(t, region*BlockSize/mib, backing, "one backing write per 1 MiB write")
		require.EqualValues(t, region*BlockSize/mib, bypassed, "each 1 MiB write bypassed the cache")
		require.Zero(t, cached, "clean copies under the stream were dropped")
	}
	got := make([]byte, mib)
	for off := mib; off < len(stream); off += mib {
		_, err = c.ReadAt(got, int64(off))
		require.NoError(t, err)
		require.True(t, bytes.Equal(stream[off:off+mib], got), "data at %d MiB", off/mib)
	}
}

// cachedBetween counts the blocks in [lo, hi) with a cached copy.
func (c *Cache) cachedBetween(lo, hi int) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for l := lo; l < hi; l++ {
		if _, ok := c.mu.t.lookup(uint64(l)); ok {
			n++
		}
	}
	return n
}

// TestStreamOverDirtyCrashes crashes (process crash and power cut) at
// every device operation of a run written around the cache over dirty
// and clean cached blocks in mode writearound, and of the fsync after
// it. After each recovery a block that had a dirty cached version reads
// as that version or as the run wrote it, never torn; the others read as
// before or as written (torn at sector boundaries only by a power cut,
// as on the bare disk); once the write has returned (process crash) or
// the fsync (power cut), every block reads as written. Clean cached
// copies equal the backing device, and the crashes cover the window
// where the backing device holds the run and the dirty versions are not
// dropped yet.
func TestStreamOverDirtyCrashes(t *testing.T) {
	const (
		lo, n  = 8, 16 // the run: blocks [8, 24)
		blocks = 32
	)
	dirty := map[int]bool{9: true, 12: true, 13: true, 20: true}
	clean := map[int]bool{15: true, 22: true}
	version := func(lba int, v byte) []byte {
		b := make([]byte, BlockSize)
		for i := range b {
			b[i] = byte(lba)*11 + v + byte(i/512) // sectors differ: a tear shows
		}
		return b
	}
	const vOld, vDirty, vNew = 1, 100, 200
	run := make([]byte, 0, n*BlockSize)
	for lba := lo; lba < lo+n; lba++ {
		run = append(run, version(lba, vNew)...)
	}
	windows := 0
	for _, power := range []bool{false, true} {
		for k := int64(1); ; k++ {
			ssd := device.NewMem(4<<20, [16]byte{1})
			hdd := device.NewMem(1<<20, [16]byte{2})
			require.NoError(t, Format(ssd, hdd, FormatOptions{}))
			for lba := range blocks {
				_, err := hdd.WriteAt(version(lba, vOld), int64(lba)*BlockSize)
				require.NoError(t, err)
			}
			require.NoError(t, hdd.Sync())
			r := device.NewCrashRig(ssd, hdd)
			c, err := Open(r.Dev(ssd), r.Dev(hdd), Options{CheckpointInterval: -1, NoBackgroundBackingSync: true})
			require.NoError(t, err)
			for lba := range dirty {
				_, err := c.WriteAt(version(lba, vDirty), int64(lba)*BlockSize)
				require.NoError(t, err)
			}
			buf := make([]byte, BlockSize)
			for lba := range clean {
				_, err := c.ReadAt(buf, int64(lba)*BlockSize) // promoted
				require.NoError(t, err)
			}
			require.Equal(t, len(dirty)+len(clean), c.cachedBetween(0, blocks))
			require.NoError(t, c.Sync())
			require.NoError(t, c.SetMode(ModeWritearound))

			var phase, atSnap atomic.Int32 // 1: the write returned; 2: the fsync did
			r.Arm(k, power, rand.New(rand.NewPCG(uint64(k), 7)), func() { atSnap.Store(phase.Load()) })
			_, err = c.WriteAt(run, lo*BlockSize)
			require.NoError(t, err)
			phase.Store(1)
			require.NoError(t, c.Sync())
			phase.Store(2)
			last := !r.Snapped()
			r.Take()
			over := c.Stats().BypassedOverDirty
			ssd.Close()
			hdd.Close()
			c.Close()
			require.EqualValues(t, 1, over, "the run went around the dirty blocks")

			ssdImg, hddImg := r.Images()
			c, err = Open(ssdImg, hddImg, Options{CheckpointInterval: -1, NoBackgroundBackingSync: true})
			require.NoError(t, err)
			done := atSnap.Load() == 2 || atSnap.Load() == 1 && !power
			sawDirty, sawNew := false, false
			for lba := range blocks {
				_, err := c.ReadAt(buf, int64(lba)*BlockSize)
				require.NoError(t, err)
				where := fmt.Sprintf("power cut %v at operation %d (phase %d): block %d", power, k, atSnap.Load(), lba)
				if lba < lo || lba >= lo+n {
					require.True(t, bytes.Equal(version(lba, vOld), buf), "%s outside the run changed", where)
					continue
				}
				before := version(lba, vOld)
				if dirty[lba] {
					before = version(lba, vDirty)
				}
				switch {
				case done:
					require.True(t, bytes.Equal(version(lba, vNew), buf), "%s does not read as written", where)
				case dirty[lba]:
					require.True(t, bytes.Equal(before, buf) || bytes.Equal(version(lba, vNew), buf), "%s reads neither its dirty version nor the new one", where)
				default:
					require.True(t, sectorsFrom(buf, [][]byte{before, version(lba, vNew)}, power), "%s reads neither as before nor as written", where)
				}
				sawDirty = sawDirty || dirty[lba] && bytes.Equal(before, buf)
				sawNew = sawNew || !dirty[lba] && bytes.Equal(version(lba, vNew), buf)
			}
			if sawDirty && sawNew {
				windows++ // the backing device has the run, the dirty versions are back
			}
			checkCleanCopies(t, c)
			require.NoError(t, c.Close())
			if last {
				t.Logf("power cut %v: %d crash points", power, k-1)
				break
			}
			require.Less(t, k, int64(200), "the run and its fsync end within 200 device operations")
		}
	}
	require.NotZero(t, windows, "no crash fell between the backing sync and the dirty versions' FREE records")
	t.Logf("crashes that brought dirty versions back over a written run: %d", windows)
}

// checkCleanCopies fails unless every clean cached copy equals what the
// backing device holds (invariant 3).
func checkCleanCopies(t *testing.T, c *Cache) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	tb := &c.mu.t
	a, b := make([]byte, BlockSize), make([]byte, BlockSize)
	for s, f := range tb.flags {
		if f&fValid == 0 || f&fDirty != 0 {
			continue
		}
		_, err := c.ssd.ReadAt(a, c.g.SlotOffset(uint64(s)))
		require.NoError(t, err)
		_, err = c.hdd.ReadAt(b, int64(tb.lba[s])*BlockSize)
		require.NoError(t, err)
		require.True(t, bytes.Equal(a, b), "clean copy of block %d in slot %d differs from the backing device", tb.lba[s], s)
	}
}

// gatedSync holds the first backing sync until release is closed, and
// counts syncs.
type gatedSync struct {
	*device.Mem
	syncs   atomic.Int64
	release chan struct{}
}

func (g *gatedSync) Sync() error {
	if g.syncs.Add(1) == 1 {
		<-g.release
	}
	return g.Mem.Sync()
}

// TestBackingSyncsShared: writers that go around the cache over dirty
// blocks at once share backing syncs (one runs at a time; one that
// started after a writer's write ended covers it): eight such writes,
// the first sync held until all eight backing writes have ended, take two
// syncs, not eight, and a power cut after them keeps every one. The
// writes are short runs far apart, or the 1 MiB requests of a stream in
// flight together: neighbouring runs, each holding the stripes of all
// its blocks (stripeOf). Were two of them to share a stripe, they would
// go one at a time, each with a sync of its own; the first sync is then
// released after a few seconds rather than never, so that the test
// fails with a count instead of hanging.
func TestBackingSyncsShared(t *testing.T) {
	for _, tc := range []struct {
		name           string
		blocks, stride int
	}{
		{"scattered", 2, 16},
		{"stream", 256, 256},
	} {
		t.Run(tc.name, func(t *testing.T) { backingSyncsShared(t, tc.blocks, tc.stride) })
	}
}

func backingSyncsShared(t *testing.T, blocks, stride int) {
	const writers = 8
	ssd := device.NewMem(4<<20, [16]byte{1})
	mem := device.NewMem(int64(max(writers*stride*BlockSize, 1<<20)), [16]byte{2})
	hdd := &gatedSync{Mem: mem, release: make(chan struct{})}
	require.NoError(t, Format(ssd, hdd, FormatOptions{}))
	c, err := Open(ssd, hdd, Options{CheckpointInterval: -1, NoBackgroundBackingSync: true})
	require.NoError(t, err)
	defer c.Close()
	for i := range writers {
		_, err := c.WriteAt(pattern(100+i), int64(stride*i)*BlockSize)
		require.NoError(t, err)
	}
	require.NoError(t, c.SetMode(ModeWritearound))
	hdd.syncs.Store(0)
	written := c.hddWritten.Load()
	go func() {
		for deadline := time.Now().Add(5 * time.Second); c.hddWritten.Load() < written+writers && time.Now().Before(deadline); {
			time.Sleep(time.Millisecond)
		}
		close(hdd.release)
	}()
	var wg sync.WaitGroup
	for i := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := c.WriteAt(bytes.Repeat(pattern(i), blocks), int64(stride*i)*BlockSize)
			assert.NoError(t, err)
		}()
	}
	wg.Wait()
	require.EqualValues(t, writers, c.Stats().BypassedOverDirty)
	require.EqualValues(t, 2, hdd.syncs.Load(), "backing syncs for %d writes in flight together", writers)
	require.Zero(t, c.DirtyCount())
	img := mem.PowerCut(rand.New(rand.NewPCG(1, 2)))
	buf := make([]byte, blocks*BlockSize)
	for i := range writers {
		_, err := img.ReadAt(buf, int64(stride*i)*BlockSize)
		require.NoError(t, err)
		require.Equal(t, bytes.Repeat(pattern(i), blocks), buf, "writer %d's run after a power cut", i)
	}
}

// TestStripes: the blocks of one aligned 16 MiB window take every stripe
// once, so neighbouring runs never share a stripe; windows are rotated
// apart, so blocks 16 MiB apart do not all share one.
func TestStripes(t *testing.T) {
	for _, w := range []uint64{0, 1, 77, 1 << 20} {
		seen := make(map[int]bool)
		for l := w * nStripes; l < (w+1)*nStripes; l++ {
			i := stripeOf(l)
			require.False(t, seen[i], "window %d: block %d shares stripe %d", w, l, i)
			seen[i] = true
		}
	}
	apart := make(map[int]bool)
	for w := range uint64(64) {
		apart[stripeOf(w*nStripes+5)] = true
	}
	require.Greater(t, len(apart), 48, "stripes of 64 blocks 16 MiB apart")
	got := stripesOf(nStripes-10, nStripes+10)
	require.Len(t, got, 20)
	require.True(t, slices.IsSorted(got))
	require.Len(t, stripesOf(3, 3+2*nStripes), nStripes)
}

// TestWriteThroughRuns: in mode writethrough a stream of 1 MiB writes over
// a region with clean and dirty cached blocks goes to the backing device
// in one write per request, not one per 4 KiB block; every block stays
// dirty until a backing sync covers it, and after Sync the backing device
// alone holds the stream, even across a power cut.
func TestWriteThroughRuns(t *testing.T) {
	const (
		mib    = 1 << 20
		region = 2048 // 8 MiB
	)
	ssd := device.NewMem(32<<20, [16]byte{1})
	hdd := device.NewMem(16<<20, [16]byte{2})
	require.NoError(t, Format(ssd, hdd, FormatOptions{}))
	c, err := Open(ssd, hdd, Options{CheckpointInterval: -1, NoBackgroundBackingSync: true})
	require.NoError(t, err)
	defer c.Close()
	buf := make([]byte, BlockSize)
	for lba := 0; lba < region; lba += 7 {
		if lba%2 == 0 {
			_, err = c.WriteAt(pattern(lba), int64(lba)*BlockSize) // dirty
		} else {
			_, err = c.ReadAt(buf, int64(lba)*BlockSize) // a clean copy
		}
		require.NoError(t, err)
	}
	require.NoError(t, c.Sync())
	require.NoError(t, c.SetMode(ModeWritethrough))
	stream := make([]byte, region*BlockSize)
	for i := range stream {
		stream[i] = byte(i/BlockSize*29 + 3)
	}
	writes, runs := hdd.Stats().Writes, c.stats.throughRuns.Load()
	for off := 0; off < len(stream); off += mib {
		_, err = c.WriteAt(stream[off:off+mib], int64(off))
		require.NoError(t, err)
	}
	require.EqualValues(t, region*BlockSize/mib, hdd.Stats().Writes-writes, "one backing write per 1 MiB write")
	require.EqualValues(t, region*BlockSize/mib, c.stats.throughRuns.Load()-runs)
	require.Equal(t, region, c.DirtyCount(), "written through, dirty until a backing sync")
	require.NoError(t, c.Sync())
	require.Zero(t, c.DirtyCount(), "the backing sync made them clean")
	got := make([]byte, len(stream))
	_, err = c.ReadAt(got, 0)
	require.NoError(t, err)
	require.True(t, bytes.Equal(stream, got))
	_, err = hdd.PowerCut(rand.New(rand.NewPCG(3, 4))).ReadAt(got, 0)
	require.NoError(t, err)
	require.True(t, bytes.Equal(stream, got), "the backing device alone after a power cut")
}

// syncHook is a backing device that runs after once, inside its next
// successful Sync.
type syncHook struct {
	device.Device
	after func()
}

func (d *syncHook) Sync() error {
	err := d.Device.Sync()
	if f := d.after; err == nil && f != nil {
		d.after = nil
		f()
	}
	return err
}

// TestCompleteAfterClaim: a destage has written block 1's dirty version
// and ended its write (EndWriteBack) but not completed; a run written
// around the cache over block 1 claims it (without waiting for the
// destage's batch) and writes and syncs the backing device; the destage
// completes in between, before the run's FREE records. Block 1 must not
// become a clean copy of the version the run superseded: a process crash
// right there would bring it back, to be read instead of the run's data
// (and written back over it as a gap copy).
func TestCompleteAfterClaim(t *testing.T) {
	ssd := device.NewMem(8<<20, [16]byte{1})
	mem := device.NewMem(16<<20, [16]byte{2})
	require.NoError(t, Format(ssd, mem, FormatOptions{}))
	hdd := &syncHook{Device: mem}
	c, err := Open(ssd, hdd, Options{CheckpointInterval: -1, NoBackgroundBackingSync: true})
	require.NoError(t, err)
	defer c.Close()
	_, err = c.WriteAt(pattern(1), BlockSize)
	require.NoError(t, err)
	pinned, err := c.Pin(c.DirtyBlocks(nil))
	require.NoError(t, err)
	require.Len(t, pinned, 1)
	data := make([]byte, BlockSize)
	require.NoError(t, c.ReadSlots(pinned, data))
	require.Empty(t, c.BeginWriteBack(pinned))
	_, err = mem.WriteAt(data, BlockSize)
	require.NoError(t, err)
	c.EndWriteBack(pinned)
	require.NoError(t, c.SetMode(ModeWritearound))

	var ssdImg, hddImg *device.Mem
	hdd.after = func() {
		// The destage's own backing sync, then its completion; then the
		// process dies, before the run's FREE records.
		require.NoError(t, mem.Sync())
		require.NoError(t, c.Complete(pinned, true))
		ssdImg, hddImg = ssd.CrashProcess(), mem.CrashProcess()
	}
	run := append(pattern(50), pattern(51)...)
	_, err = c.WriteAt(run, 0)
	require.NoError(t, err)
	require.NotNil(t, ssdImg, "the run synced the backing device")
	require.EqualValues(t, 1, c.Stats().BypassedOverDirty)
	buf := make([]byte, 2*BlockSize)
	_, err = c.ReadAt(buf, 0)
	require.NoError(t, err)
	require.Equal(t, run, buf, "read after the run")
	require.Zero(t, c.DirtyCount(), "the run dropped the dirty version")

	c2, err := Open(ssdImg, hddImg, Options{CheckpointInterval: -1, NoBackgroundBackingSync: true})
	require.NoError(t, err)
	defer c2.Close()
	_, err = c2.ReadAt(buf, 0)
	require.NoError(t, err)
	// Before or as written, block by block; never a clean copy of the
	// old version over the run's data.
	require.Equal(t, pattern(50), buf[:BlockSize], "block 0 after a crash")
	if !bytes.Equal(buf[BlockSize:], pattern(51)) {
		require.Equal(t, pattern(1), buf[BlockSize:], "block 1 after a crash")
		require.EqualValues(t, 1, c2.DirtyCount(), "block 1's old version comes back dirty, to be written back over the run")
	}
}
