package blockcache

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/wbcache/wbcache/device"
	"github.com/wbcache/wbcache/layout"
)

func openSmall(t *testing.T, slots, blocks int, opts Options) (*Cache, *device.Mem, *device.Mem) {
	ssd := device.NewMem(int64(2+2*2+32+slots)*BlockSize, [16]byte{1})
	hdd := device.NewMem(int64(blocks)*BlockSize, [16]byte{2})
	require.NoError(t, Format(ssd, hdd, FormatOptions{JournalBlocks: 32}))
	if opts.CheckpointInterval == 0 {
		opts.CheckpointInterval = -1
	}
	c, err := Open(ssd, hdd, opts)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c, ssd, hdd
}

func hddBlock(t *testing.T, hdd device.Device, lba int64) []byte {
	b := make([]byte, BlockSize)
	_, err := hdd.ReadAt(b, lba*BlockSize)
	require.NoError(t, err)
	return b
}

// TestSequentialCutoff: a sequential write stream longer than the cutoff
// goes to the backing device; with the cutoff at 0 it stays in the cache.
func TestSequentialCutoff(t *testing.T) {
	for _, cutoff := range []uint64{64 << 10, 0} {
		c, _, hdd := openSmall(t, 128, 512, Options{})
		require.NoError(t, c.SetSettings(layout.Settings{SeqCutoff: cutoff, SetMask: layout.SetSeqCutoff}))
		data := make([]byte, 256<<10)
		fill(rand.New(rand.NewPCG(1, 1)), data, 7)
		for off := 0; off < len(data); off += 16 << 10 {
			_, err := c.WriteAt(data[off:off+16<<10], int64(off))
			require.NoError(t, err)
		}
		got := make([]byte, len(data))
		_, err := c.ReadAt(got, 0)
		require.NoError(t, err)
		require.True(t, bytes.Equal(data, got))
		last := int64(len(data)/BlockSize - 1)
		st := c.Stats()
		if cutoff > 0 {
			require.Positive(t, st.Bypassed)
			// Whole blocks going around the cache leave in one I/O per request.
			require.LessOrEqual(t, hdd.Stats().Writes, int64(st.Bypassed), "bypassed requests should not be split into 4 KiB backing writes")
			require.True(t, bytes.Equal(data[last*BlockSize:], hddBlock(t, hdd, last)), "the tail of the stream should be on the backing device")
		} else {
			require.Zero(t, st.Bypassed)
			require.Equal(t, len(data)/BlockSize, st.Dirty, "every block should be dirty in the cache")
		}
	}
}

// TestSeqDetectAmidRandomRequests: a stream is recognised past the cutoff
// while random requests from other writers come between its requests (32
// between each pair, more than one part of the tracker holds), two
// interleaved streams each on their own, and the random requests never.
func TestSeqDetectAmidRandomRequests(t *testing.T) {
	c := &Cache{}
	c.seqCutoff.Store(64 << 10)
	var tr seqTracker
	rng := rand.New(rand.NewPCG(4, 4))
	const req = 16 << 10
	a, b := int64(1<<30), int64(3<<30)
	var aBypass, bBypass, randBypass int
	for i := 0; i < 16; i++ {
		if c.seqDetect(&tr, a, req) {
			aBypass++
		}
		a += req
		for k := 0; k < 32; k++ {
			if c.seqDetect(&tr, rng.Int64N(1<<20)*BlockSize, BlockSize) {
				randBypass++
			}
		}
		if c.seqDetect(&tr, b, req) {
			bBypass++
		}
		b += req
	}
	// 64 KiB is passed from the fifth request of each stream on.
	require.Equal(t, 12, aBypass, "stream a")
	require.Equal(t, 12, bBypass, "stream b")
	require.Zero(t, randBypass, "random requests")
	require.True(t, tr.continues(a), "stream a is still tracked")
	require.False(t, tr.continues(a+BlockSize), "no stream ends inside a request")
	require.False(t, c.seqDetect(&tr, 5<<30, 1<<20), "a request that starts a stream never bypasses, however long")
	c.seqCutoff.Store(0)
	require.False(t, c.seqDetect(&tr, a, req), "cutoff 0 never bypasses")
}

// TestPromotion: with promote-after 2, the first miss of a block does not
// copy it into the cache, the second does, and later reads hit.
func TestPromotion(t *testing.T) {
	c, _, hdd := openSmall(t, 64, 256, Options{PromoteAfter: 2})
	blk := make([]byte, BlockSize)
	fill(rand.New(rand.NewPCG(2, 2)), blk, 9)
	_, err := hdd.WriteAt(blk, 10*BlockSize)
	require.NoError(t, err)
	got := make([]byte, BlockSize)
	read := func() {
		_, err := c.ReadAt(got, 10*BlockSize)
		require.NoError(t, err)
		require.True(t, bytes.Equal(blk, got))
	}
	read()
	require.Zero(t, c.Stats().Promotions)
	read()
	require.EqualValues(t, 1, c.Stats().Promotions)
	read()
	require.EqualValues(t, 1, c.Stats().ReadHits)
}

// TestEviction: reading far more distinct blocks than the cache holds
// evicts clean blocks (CLOCK) and every read stays correct.
func TestEviction(t *testing.T) {
	c, _, hdd := openSmall(t, 32, 512, Options{ReserveFree: 4})
	rng := rand.New(rand.NewPCG(3, 3))
	want := make([]byte, 512*BlockSize)
	fill(rng, want, 11)
	_, err := hdd.WriteAt(want, 0)
	require.NoError(t, err)
	got := make([]byte, BlockSize)
	for i := 0; i < 2000; i++ {
		lba := rng.Int64N(512)
		_, err := c.ReadAt(got, lba*BlockSize)
		require.NoError(t, err)
		require.True(t, bytes.Equal(want[lba*BlockSize:(lba+1)*BlockSize], got), "block %d", lba)
	}
	// Eviction runs in the background reclaimer, kicked by misses that
	// found no free slot; on a fast device the reads can all finish first.
	require.Eventually(t, func() bool { return c.Stats().Evictions > 0 }, 10*time.Second, time.Millisecond,
		"clean blocks are evicted once the cache is full")
	st := c.Stats()
	require.Positive(t, st.ReadHits)
	require.LessOrEqual(t, st.Used, 32)
}

// TestModesUnderConcurrentIO switches mode repeatedly while writers run;
// each writer owns blocks and checks its reads, and after draining the
// backing device holds every block's last version.
func TestModesUnderConcurrentIO(t *testing.T) {
	c, _, hdd := openSmall(t, 96, 256, Options{})
	const writers, per = 4, 64
	models := make([][]byte, writers)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for w := 0; w < writers; w++ {
		models[w] = make([]byte, per*BlockSize)
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 4))
			base := int64(w*per) * BlockSize
			for i := 0; i < 600; i++ {
				off := rng.Int64N(per*BlockSize - 1)
				n := 1 + rng.Int64N(min(per*BlockSize-off, 2*BlockSize))
				if rng.IntN(3) == 0 {
					got := make([]byte, n)
					if _, err := c.ReadAt(got, base+off); err != nil {
						t.Error(err)
						return
					}
					if !bytes.Equal(got, models[w][off:off+n]) {
						t.Errorf("writer %d: read at %d+%d differs", w, off, n)
						return
					}
					continue
				}
				b := make([]byte, n)
				fill(rng, b, uint64(i))
				if _, err := c.WriteAt(b, base+off); err != nil {
					t.Error(err)
					return
				}
				copy(models[w][off:], b)
			}
		}(w)
	}
	var aux sync.WaitGroup
	aux.Add(1)
	go func() { // mode switches and destaging
		defer aux.Done()
		rng := rand.New(rand.NewPCG(9, 9))
		for {
			select {
			case <-stop:
				return
			default:
			}
			if err := c.SetMode(Mode(rng.IntN(4))); err != nil {
				t.Error(err)
				return
			}
			destageAll(t, c)
			if rng.IntN(4) == 0 {
				if err := c.Sync(); err != nil {
					t.Error(err)
					return
				}
			}
		}
	}()
	wg.Wait()
	close(stop)
	aux.Wait()
	require.NoError(t, c.SetMode(ModeWriteback))
	for c.DirtyCount() > 0 {
		destageAll(t, c)
	}
	require.NoError(t, c.Sync())
	for w := 0; w < writers; w++ {
		got := make([]byte, per*BlockSize)
		_, err := hdd.ReadAt(got, int64(w*per)*BlockSize)
		require.NoError(t, err)
		require.True(t, bytes.Equal(models[w], got), "writer %d: backing device differs after draining", w)
	}
}

// destageAll writes every dirty block back once (what package flush does).
func destageAll(t *testing.T, c *Cache) {
	if err := destageOnce(c); err != nil {
		t.Error(err)
	}
}

func destageOnce(c *Cache) error {
	pinned, err := c.Pin(c.DirtyBlocks(nil))
	if err != nil || len(pinned) == 0 {
		return err
	}
	buf := device.AlignedBuffer(len(pinned) * BlockSize)
	if err := c.ReadSlots(pinned, buf); err != nil {
		return errors.Join(err, c.Complete(pinned, false))
	}
	// Blocks a write of the backing device claimed since Pin are not
	// written.
	claimed := c.BeginWriteBack(pinned)
	for i, b := range pinned {
		if err == nil && !slices.Contains(claimed, i) {
			_, err = c.Backing().WriteAt(buf[i*BlockSize:(i+1)*BlockSize], int64(b.LBA)*BlockSize)
		}
	}
	c.EndWriteBack(pinned)
	if err == nil {
		err = c.Backing().Sync()
	}
	written, taken := SplitClaimed(pinned, claimed)
	if cerr := errors.Join(c.Complete(taken, false), c.Complete(written, err == nil)); err == nil {
		err = cerr
	}
	return err
}

// TestBackingSyncRestoresPromotionAndCleansThrough: writes sent around the
// cache stop promotion (their data is not durable on the backing device)
// and write-through blocks stay dirty, until a backing sync; the reclaimer
// runs that sync every second, so neither waits for a client fsync.
func TestBackingSyncRestoresPromotionAndCleansThrough(t *testing.T) {
	c, _, _ := openSmall(t, 64, 256, Options{NoBackgroundBackingSync: true})
	require.NoError(t, c.SetMode(ModeWritearound))
	_, err := c.WriteAt(make([]byte, BlockSize), 0)
	require.NoError(t, err)
	b := make([]byte, BlockSize)
	_, err = c.ReadAt(b, 100*BlockSize)
	require.NoError(t, err)
	require.Zero(t, c.Stats().Promotions, "unsynced backing data must not be promoted")
	require.NoError(t, c.syncBacking())
	_, err = c.ReadAt(b, 101*BlockSize)
	require.NoError(t, err)
	require.EqualValues(t, 1, c.Stats().Promotions)

	require.NoError(t, c.SetMode(ModeWritethrough))
	_, err = c.WriteAt(make([]byte, 3*BlockSize), 10*BlockSize)
	require.NoError(t, err)
	require.Equal(t, 3, c.DirtyCount(), "write-through blocks stay dirty until the backing write is durable")
	require.NoError(t, c.syncBacking())
	require.Zero(t, c.DirtyCount())
}

// TestMayWait checks the FUSE server's scheduling hint: reads of cached
// blocks and writeback writes do not wait for the backing device; misses,
// writes in the modes that write it, and large requests may.
func TestMayWait(t *testing.T) {
	c, _, _ := openSmall(t, 64, 256, Options{})
	blk := make([]byte, BlockSize)
	_, err := c.WriteAt(blk, 3*BlockSize)
	require.NoError(t, err)

	require.False(t, c.MayWait(true, 10*BlockSize, BlockSize), "writeback write")
	require.False(t, c.MayWait(false, 3*BlockSize, BlockSize), "read of a cached block")
	require.False(t, c.MayWait(false, 3*BlockSize+100, 512), "unaligned read inside a cached block")
	require.True(t, c.MayWait(false, 3*BlockSize, 2*BlockSize), "read running into an uncached block")
	require.True(t, c.MayWait(false, 20*BlockSize, BlockSize), "read miss")
	require.True(t, c.MayWait(true, 0, 64<<10), "large write")

	require.NoError(t, c.SetMode(ModeWritethrough))
	require.True(t, c.MayWait(true, 3*BlockSize, BlockSize), "writethrough write")
	require.False(t, c.MayWait(false, 3*BlockSize, BlockSize), "writethrough cached read")
	require.NoError(t, c.SetMode(ModeNone))
	require.True(t, c.MayWait(false, 3*BlockSize, BlockSize), "mode none")
}

// notifyDev reports each write at off on wrote.
type notifyDev struct {
	*device.Mem
	off   int64
	wrote chan []byte
}

func (d *notifyDev) WriteAt(p []byte, off int64) (int, error) {
	n, err := d.Mem.WriteAt(p, off)
	if off == d.off {
		d.wrote <- bytes.Clone(p)
	}
	return n, err
}

// slotGate holds the next write at or past from (a data slot), once armed,
// until released.
type slotGate struct {
	*device.Mem
	from    int64
	armed   atomic.Bool
	arrived chan struct{}
	release chan struct{}
}

func (g *slotGate) WriteAt(p []byte, off int64) (int, error) {
	if off >= g.from && g.armed.CompareAndSwap(true, false) {
		close(g.arrived)
		<-g.release
	}
	return g.Mem.WriteAt(p, off)
}

// TestWriteThroughWaitsForOlderDestage: a write-through of a block whose
// older version a destage pins and begins to write back just before the
// new version is mapped writes the backing device only after that
// destage's write has landed (EndWriteBack). Otherwise
// the older version could land over it after the backing sync that marks
// the new one clean, and the block, once evicted, would read stale.
func TestWriteThroughWaitsForOlderDestage(t *testing.T) {
	ssd := &slotGate{Mem: device.NewMem(int64(2+2*2+32+32)*BlockSize, [16]byte{1}), arrived: make(chan struct{}), release: make(chan struct{})}
	mem := device.NewMem(64*BlockSize, [16]byte{2})
	hdd := &notifyDev{Mem: mem, off: 5 * BlockSize, wrote: make(chan []byte, 8)}
	require.NoError(t, Format(ssd, hdd, FormatOptions{JournalBlocks: 32}))
	c, err := Open(ssd, hdd, Options{CheckpointInterval: -1, NoBackgroundBackingSync: true})
	require.NoError(t, err)
	defer c.Close()
	ssd.from = c.g.SlotOffset(0)
	require.NoError(t, c.SetMode(ModeWritethrough))
	v1, v2 := pattern(1), pattern(2)
	_, err = c.WriteAt(v1, 5*BlockSize)
	require.NoError(t, err)
	require.Equal(t, v1, <-hdd.wrote)

	// Version 2's write-through stops at its slot write, before it is
	// mapped; then a destage pins version 1 (a write-through block stays
	// dirty until a backing sync) and has not written it yet.
	ssd.armed.Store(true)
	done := make(chan error, 1)
	go func() {
		_, err := c.WriteAt(v2, 5*BlockSize)
		done <- err
	}()
	<-ssd.arrived
	pinned, err := c.Pin(c.DirtyBlocks(nil))
	require.NoError(t, err)
	require.Len(t, pinned, 1)
	require.Empty(t, c.BeginWriteBack(pinned))
	close(ssd.release)
	select {
	case <-hdd.wrote:
		t.Fatal("the write-through wrote the backing device while version 1's destage was in flight")
	case err := <-done:
		t.Fatalf("the write-through returned (%v) while version 1's destage was in flight", err)
	case <-time.After(200 * time.Millisecond):
	}
	// The destage lands, then the write-through.
	_, err = mem.WriteAt(v1, 5*BlockSize)
	require.NoError(t, err)
	c.EndWriteBack(pinned)
	require.NoError(t, mem.Sync())
	require.NoError(t, c.Complete(pinned, true))
	require.NoError(t, <-done)
	require.Equal(t, v2, <-hdd.wrote)
	require.NoError(t, c.Sync())
	require.Zero(t, c.DirtyCount(), "the backing sync marked version 2 clean")
	require.Equal(t, v2, hddBlock(t, mem, 5))
}
