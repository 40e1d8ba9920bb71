package flush

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/wbcache/wbcache/blockcache"
	"github.com/wbcache/wbcache/device"
)

// ledger is the exact bookkeeping of concurrent writers: per block, the
// newest version issued (a write may be in flight), the newest
// acknowledged, and the floor a completed Sync guarantees.
type ledger struct {
	mu     sync.Mutex
	issued []uint64
	acked  []uint64
	floor  []uint64
	next   uint64
}

func newLedger(blocks int) *ledger {
	return &ledger{issued: make([]uint64, blocks), acked: make([]uint64, blocks), floor: make([]uint64, blocks)}
}

// issue returns new versions for blocks [lba, lba+n).
func (l *ledger) issue(lba uint64, n int) []uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	vs := make([]uint64, n)
	for i := range vs {
		l.next++
		vs[i] = l.next
		l.issued[lba+uint64(i)] = l.next
	}
	return vs
}

func (l *ledger) ack(lba uint64, vs []uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i, v := range vs {
		l.acked[lba+uint64(i)] = max(l.acked[lba+uint64(i)], v)
	}
}

// syncStart snapshots what a Sync starting now covers.
func (l *ledger) syncStart() []uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]uint64(nil), l.acked...)
}

func (l *ledger) synced(snap []uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i, v := range snap {
		l.floor[i] = max(l.floor[i], v)
	}
}

// bounds returns, per block, the oldest and newest version a crash now
// may leave.
func (l *ledger) bounds() (lo, hi []uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]uint64(nil), l.floor...), append([]uint64(nil), l.issued...)
}

// reset makes what was read back after recovery the durable state.
func (l *ledger) reset(vers []uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	copy(l.issued, vers)
	copy(l.acked, vers)
	copy(l.floor, vers)
}

// blockVersion decodes a whole block written by blockData: its version, or
// ok false if it is torn, foreign or garbage.
func blockVersion(b []byte, lba uint64) (uint64, bool) {
	vers, ok := sectorVersions(b, lba)
	if !ok {
		return 0, false
	}
	for _, v := range vers[1:] {
		if v != vers[0] {
			return 0, false
		}
	}
	return vers[0], bytes.Equal(b, blockData(lba, vers[0]))
}

// powerCutRun is the cache, the destager and the writers of one life
// between two power cuts.
type powerCutRun struct {
	t       *testing.T
	blocks  int
	writers int
	maxRun  int
	l       *ledger
	rig     *device.CrashRig
	ssd     *device.Mem
	hdd     *device.Mem
	c       *blockcache.Cache
	d       *Destager
	ops     atomic.Int64
	syncs   atomic.Int64
}

// TestConcurrentPowerCut runs the engine as the daemon does, with writer
// goroutines, a running destager, the reclaimer evicting and the
// checkpointer, on a cache a quarter the size of the working set, and cuts
// the power at a random device operation. After recovery every block must
// read as a version no older than the last completed Sync covered and no
// newer than the newest issued, whole: never torn, never another block's,
// never an error. WBC_POWERCUT_CYCLES sets the number of cuts (40, or
// 150 with WBC_LONG=1).
func TestConcurrentPowerCut(t *testing.T) {
	cycles := 40 // WBC_LONG=1 (.ci/run) runs 150
	if os.Getenv("WBC_LONG") != "" && !testing.Short() {
		cycles = 150
	}
	if s := os.Getenv("WBC_POWERCUT_CYCLES"); s != "" {
		n, err := strconv.Atoi(s)
		require.NoError(t, err)
		cycles = n
	}
	seed := uint64(1)
	if s := os.Getenv("WBC_POWERCUT_SEED"); s != "" {
		n, err := strconv.ParseUint(s, 10, 64)
		require.NoError(t, err)
		seed = n
	}
	blocks, slots, writers, journal, maxRun, armAt := 256, 64, 4, 16, 4, 3000
	envInt(t, "WBC_POWERCUT_BLOCKS", &blocks)
	envInt(t, "WBC_POWERCUT_SLOTS", &slots)
	envInt(t, "WBC_POWERCUT_WRITERS", &writers)
	envInt(t, "WBC_POWERCUT_JOURNAL", &journal)
	envInt(t, "WBC_POWERCUT_RUN", &maxRun)
	envInt(t, "WBC_POWERCUT_ARM", &armAt)
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	ssd := device.NewMem(cacheBytes(t, slots, uint64(journal)), [16]byte{0x55})
	hdd := device.NewMem(int64(blocks)*bs, hddID)
	require.NoError(t, blockcache.Format(ssd, hdd, blockcache.FormatOptions{JournalBlocks: uint64(journal)}))
	l := newLedger(blocks)
	var total blockcache.Stats
	var writes, syncs int64
	for cycle := 0; cycle < cycles; cycle++ {
		r := &powerCutRun{t: t, blocks: blocks, writers: writers, maxRun: maxRun, l: l}
		r.start(ssd, hdd)
		var lo, hi []uint64
		r.rig.Arm(1+rng.Int64N(int64(armAt)), true, rand.New(rand.NewPCG(rng.Uint64(), 3)), func() { lo, hi = l.bounds() })
		r.runUntilCut(rng.Uint64())
		st := r.c.Stats()
		total.Evictions += st.Evictions
		total.Promotions += st.Promotions
		total.WritesInPlace += st.WritesInPlace
		total.Checkpoints += st.Checkpoints
		writes += r.ops.Load()
		syncs += r.syncs.Load()
		ssd, hdd = r.rig.Images()
		r.verify(fmt.Sprintf("cycle %d", cycle), ssd, hdd, lo, hi)
	}
	t.Logf("%d power cuts: %d writes, %d syncs, %d evictions, %d promotions, %d rewrites in place, %d checkpoints",
		cycles, writes, syncs, total.Evictions, total.Promotions, total.WritesInPlace, total.Checkpoints)
	require.NotZero(t, total.Evictions, "the cache must fill and evict")
}

func envInt(t *testing.T, name string, v *int) {
	if s := os.Getenv(name); s != "" {
		n, err := strconv.Atoi(s)
		require.NoError(t, err, name)
		*v = n
	}
}

func (r *powerCutRun) start(ssd, hdd *device.Mem) {
	r.ssd, r.hdd = ssd, hdd
	r.rig = device.NewCrashRig(ssd, hdd)
	c, err := blockcache.Open(r.rig.Dev(ssd), r.rig.Dev(hdd), blockcache.Options{CheckpointInterval: -1, ReserveFree: 4, PromoteAfter: 1})
	require.NoError(r.t, err)
	r.c = c
	r.d = newDestager(c, Policy{LowWatermark: 10, HighWatermark: 50, MaxRun: 8 * bs, Workers: 2}, nil, options{syncRuns: 4})
	r.d.Start()
}

// runUntilCut runs writers (each on its own range of blocks, syncing now
// and then) and a reader until the rig has taken its images, then stops
// the destager and the cache. Errors after the cut are expected (the
// devices are closed under the cache); before it, none is.
func (r *powerCutRun) runUntilCut(seed uint64) {
	var wg sync.WaitGroup
	per := r.blocks / r.writers
	for w := 0; w < r.writers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(w)))
			base := uint64(w * per)
			for !r.rig.Snapped() {
				switch p := rng.IntN(100); {
				case p < 8:
					snap := r.l.syncStart()
					if err := r.c.Sync(); err != nil {
						r.failBeforeCut("sync", err)
						return
					}
					r.l.synced(snap)
					r.syncs.Add(1)
				case p < 25:
					lba := base + uint64(rng.IntN(per))
					buf := make([]byte, bs)
					if _, err := r.c.ReadAt(buf, int64(lba)*bs); err != nil {
						r.failBeforeCut("read", err)
						return
					}
				default:
					n := 1 + rng.IntN(r.maxRun)
					lba := base + uint64(rng.IntN(per-n+1))
					vs := r.l.issue(lba, n)
					buf := make([]byte, 0, n*bs)
					for i, v := range vs {
						buf = append(buf, blockData(lba+uint64(i), v)...)
					}
					if _, err := r.c.WriteAt(buf, int64(lba)*bs); err != nil {
						r.failBeforeCut("write", err)
						return
					}
					r.l.ack(lba, vs)
					r.ops.Add(1)
				}
			}
		}(w)
	}
	wg.Add(1)
	go func() {
		// A sweep over every block, as a verify pass does: misses
		// promote clean copies while writers evict them.
		defer wg.Done()
		buf := make([]byte, bs)
		for lba := 0; lba < r.blocks && !r.rig.Snapped(); lba++ {
			if _, err := r.c.ReadAt(buf, int64(lba)*bs); err != nil {
				r.failBeforeCut("sweep read", err)
				return
			}
		}
	}()
	wg.Wait()
	r.ssd.Close()
	r.hdd.Close()
	r.d.Stop()
	r.c.Close()
}

func (r *powerCutRun) failBeforeCut(what string, err error) {
	if r.rig.Snapped() || errors.Is(err, device.ErrClosed) {
		return
	}
	r.t.Errorf("%s failed before the power cut: %v", what, err)
	r.rig.Take()
}

// verify recovers from the images and checks every block.
func (r *powerCutRun) verify(what string, ssd, hdd *device.Mem, lo, hi []uint64) {
	t := r.t
	c, err := blockcache.Open(ssd.CrashProcess(), hdd.CrashProcess(), blockcache.Options{CheckpointInterval: -1})
	require.NoError(t, err, what)
	got := make([]uint64, r.blocks)
	buf := make([]byte, bs)
	bad := 0
	for lba := 0; lba < r.blocks; lba++ {
		if _, err := c.ReadAt(buf, int64(lba)*bs); err != nil {
			t.Errorf("%s: block %d: %v (versions %d..%d allowed)", what, lba, err, lo[lba], hi[lba])
			bad++
			continue
		}
		v, ok := blockVersion(buf, uint64(lba))
		if !ok || v < lo[lba] || v > hi[lba] {
			hb := make([]byte, bs)
			hdd.ReadAt(hb, int64(lba)*bs)
			t.Errorf("%s: block %d reads %s, versions %d..%d allowed; hdd image %s", what, lba, describe(buf, uint64(lba)), lo[lba], hi[lba], describe(hb, uint64(lba)))
			bad++
		}
		got[lba] = v
	}
	require.NoError(t, c.Close())
	if bad > 0 {
		t.Fatalf("%s: %d blocks violate the contract (%d writes, %d syncs in this life)", what, bad, r.ops.Load(), r.syncs.Load())
	}
	r.l.reset(got)
}
