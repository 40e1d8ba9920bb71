package flush

import (
	"context"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/wbcache/wbcache/blockcache"
)

// TestDrainFillsGapsWithCleanCopies: dirty blocks one apart, with clean
// cached copies between them, drain as one run (one backing write)
// instead of one run each; only the dirty blocks count as written back,
// and the backing device ends up holding every block's newest version.
func TestDrainFillsGapsWithCleanCopies(t *testing.T) {
	e := newEnv(t, envConfig{hddBlocks: 128, slots: 96})
	buf := make([]byte, bs)
	for lba := int64(1); lba < 40; lba += 2 { // clean copies, promoted by reads
		_, err := e.c.ReadAt(buf, lba*bs)
		require.NoError(t, err)
	}
	dirty := 0
	for lba := uint64(0); lba <= 40; lba += 2 {
		e.write(lba)
		dirty++
	}
	e.write(60) // the 19 blocks before it are not cached: a run of its own
	dirty++
	writes := e.ver.writes.Load()
	d := newTestDestager(t, e.c, Policy{}, options{})
	require.NoError(t, d.FlushAll(context.Background(), nil))
	assert.Zero(t, e.c.DirtyCount())
	assert.EqualValues(t, 2, e.ver.writes.Load()-writes, "blocks 0-40 in one run (gaps filled), 60 in another")
	st := d.Stats()
	assert.EqualValues(t, dirty, st.DestagedBlocks, "the clean copies do not count as written back")
	e.checkBacking("after FlushAll", e.hddMem)
	e.checkReads("after FlushAll")
	e.close()
}

// TestDrainReadsGapsFromBacking: sparse dirty blocks with short gaps that
// nothing caches drain as one run: the gaps are read from the backing
// device and written back with the dirty blocks (one backing write), only
// the dirty blocks count as written back, and the backing device ends up
// holding every block's newest version. A far block stays a run of its
// own.
func TestDrainReadsGapsFromBacking(t *testing.T) {
	e := newEnv(t, envConfig{hddBlocks: 512, slots: 96})
	for lba := uint64(0); lba < 256; lba += 4 { // before the cache: on the backing device
		e.write(lba + 1)
	}
	flushAll(t, newTestDestager(t, e.c, Policy{}, options{}))
	dirty := 0
	for lba := uint64(0); lba <= 40; lba += 2 {
		e.write(lba)
		dirty++
	}
	e.write(300) // 259 blocks past the others: not worth reading
	dirty++
	writes, gapReads := e.ver.writes.Load(), e.c.Stats().GapReadBlocks
	d := newTestDestager(t, e.c, Policy{}, options{})
	require.NoError(t, d.FlushAll(context.Background(), nil))
	assert.Zero(t, e.c.DirtyCount())
	assert.EqualValues(t, 2, e.ver.writes.Load()-writes, "blocks 0-40 in one run (gaps read), 300 in another")
	assert.EqualValues(t, 10, e.c.Stats().GapReadBlocks-gapReads, "the 10 of the 20 one-block gaps between blocks 0 and 40 with no clean cached copy")
	assert.EqualValues(t, dirty, d.Stats().DestagedBlocks, "the gap blocks do not count as written back")
	e.checkBacking("after FlushAll", e.hddMem)
	e.checkReads("after FlushAll")
	e.close()
}

// TestGapReadsUnderDirectWrites: while the destager reads gaps from the
// backing device and writes them back, other writers write those blocks
// around the cache, through it and into it, and discard them. A gap's
// write-back must never put back what it read over a newer version (the
// checker fails any backing write that goes backwards), and at the end
// the backing device and every read hold the newest versions.
func TestGapReadsUnderDirectWrites(t *testing.T) {
	const blocks, writers = 1024, 3
	e := newEnv(t, envConfig{hddBlocks: blocks, slots: 512, reserve: 8})
	d := newTestDestager(t, e.c, Policy{LowWatermark: -1, HighWatermark: -1}, options{})
	d.Start()
	stop := make(chan struct{})
	var flips sync.WaitGroup
	flips.Add(1)
	go func() {
		// Switch modes under the writers: writeback fills sparse dirty
		// blocks, the others write the backing device in place.
		defer flips.Done()
		modes := []blockcache.Mode{blockcache.ModeWriteback, blockcache.ModeWritearound, blockcache.ModeWriteback, blockcache.ModeWritethrough}
		for i := 0; ; i++ {
			select {
			case <-stop:
				require.NoError(t, e.c.SetMode(blockcache.ModeWriteback))
				return
			case <-time.After(2 * time.Millisecond):
			}
			require.NoError(t, e.c.SetMode(modes[i%len(modes)]))
		}
	}()
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 3))
			for i := 0; i < 1500; i++ {
				// Writer w owns the blocks ≡ w mod writers.
				lba := uint64(rng.IntN(blocks/writers)*writers + w)
				if rng.IntN(40) == 0 && lba+writers < blocks {
					e.discard(lba, 1)
					continue
				}
				e.write(lba)
				if i%100 == 0 {
					require.NoError(t, e.c.Sync())
				}
			}
		}()
	}
	wg.Wait()
	close(stop)
	flips.Wait()
	flushAll(t, d)
	d.Stop()
	require.Zero(t, e.ver.bad.Load())
	assert.Zero(t, e.c.DirtyCount())
	e.checkBacking("after FlushAll", e.hddMem)
	e.checkReads("after FlushAll")
	st := e.c.Stats()
	t.Logf("gap blocks read from the backing device: %d; destaged %d in %d runs", st.GapReadBlocks, st.DestagedBlocks, st.DestageRuns)
	assert.NotZero(t, st.GapReadBlocks, "the destager never read a gap: the test does not test it")
	e.close()
}

// TestGapReadsOff: with gap reads turned off (a backing device that does
// not seek) the same sparse blocks drain as runs of their own, reading
// nothing from the backing device.
func TestGapReadsOff(t *testing.T) {
	e := newEnv(t, envConfig{hddBlocks: 128, slots: 96})
	for lba := uint64(0); lba <= 40; lba += 2 {
		e.write(lba)
	}
	d := newTestDestager(t, e.c, Policy{}, options{})
	require.True(t, d.GapReads(), "on by default")
	d.SetGapReads(false)
	writes := e.ver.writes.Load()
	require.NoError(t, d.FlushAll(context.Background(), nil))
	assert.Zero(t, e.c.DirtyCount())
	assert.EqualValues(t, 21, e.ver.writes.Load()-writes, "one write per dirty block")
	assert.Zero(t, e.c.Stats().GapReadBlocks)
	e.checkBacking("after FlushAll", e.hddMem)
	e.close()
}
