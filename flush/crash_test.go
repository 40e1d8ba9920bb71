package flush

import (
	"fmt"
	"math/rand/v2"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/wbcache/wbcache/blockcache"
	"github.com/wbcache/wbcache/device"
)

// crashScenario is a cache image with dirty blocks over a backing device
// that already holds older versions of some of them.
type crashScenario struct {
	e        *env // the model and geometry
	ssd, hdd *device.Mem
	pol      Policy
	opts     options
}

const (
	crashHDDBlocks = 64
	crashSlots     = 32
)

// newCrashScenario: version 1 of 20 blocks destaged, then newer versions
// of some of them and new blocks written and synced, and the cache closed.
// The dirty blocks form runs of several lengths, split by MaxRun 4 blocks
// and synced every 2 runs, so one FlushAll has several batches.
func newCrashScenario(t *testing.T) *crashScenario {
	e := newEnv(t, envConfig{hddBlocks: crashHDDBlocks, slots: crashSlots, reserve: 4})
	first := []uint64{0, 1, 2, 3, 4, 5, 10, 11, 20, 30, 31, 32, 33, 34, 35, 36, 37, 50, 62, 63}
	for _, lba := range first {
		e.write(lba)
	}
	require.NoError(t, e.c.Sync())
	pol := Policy{MaxRun: 4 * bs, Workers: 2}
	opts := options{syncRuns: 2}
	d := newDestager(e.c, pol, nil, opts)
	flushAll(t, d)
	// Newer versions (some twice) and new blocks.
	for _, lba := range []uint64{1, 2, 3, 4, 11, 12, 20, 30, 31, 33, 34, 35, 36, 37, 38, 39, 50, 51, 63, 2, 34} {
		e.write(lba)
	}
	require.NoError(t, e.c.Sync())
	require.NotZero(t, e.c.DirtyCount())
	e.close()
	return &crashScenario{e: e, ssd: e.ssdMem, hdd: e.hddMem, pol: pol, opts: opts}
}

// crashRun is one run of the scenario with a crash armed.
type crashRun struct {
	s     *crashScenario
	rig   *device.CrashRig
	c     *blockcache.Cache
	ver   *verDev
	fired bool
}

// start opens copies of the scenario's images under a crash rig.
func (s *crashScenario) start(t *testing.T) *crashRun {
	ssd, hdd := s.ssd.CrashProcess(), s.hdd.CrashProcess()
	rig := device.NewCrashRig(ssd, hdd)
	ver := newVerDev(t, rig.Dev(hdd), nil)
	c, err := blockcache.Open(rig.Dev(ssd), ver, blockcache.Options{CheckpointInterval: -1, ReserveFree: 4})
	require.NoError(t, err)
	return &crashRun{s: s, rig: rig, c: c, ver: ver}
}

// finish stops the cache (the crash images were taken already, or are
// taken now if the crash never fired) and checks recovery from them:
// every block reads its newest version (all were synced, so this holds
// for a power cut too), and after a FlushAll of the recovered cache the
// backing device holds them, the checker having seen no backing write go
// backwards in either life.
func (cr *crashRun) finish(t *testing.T, what string) {
	cr.rig.Disarm()
	cr.fired = cr.rig.Snapped()
	cr.rig.Take()
	require.NoError(t, cr.c.Close())
	require.Zero(t, cr.ver.bad.Load(), "%s: backing writes went backwards before the crash", what)

	e := cr.s.e
	ssd, hdd := cr.rig.Images()
	ver := newVerDev(t, hdd, nil)
	c, err := blockcache.Open(ssd, ver, blockcache.Options{CheckpointInterval: -1, ReserveFree: 4})
	require.NoError(t, err, what)
	e.c = c
	e.checkReads(what + ": after recovery")
	d := newDestager(c, cr.s.pol, nil, cr.s.opts)
	flushAll(t, d)
	require.Zero(t, c.DirtyCount())
	e.checkBacking(what+": after recovery and FlushAll", hdd)
	e.checkReads(what + ": after recovery and FlushAll")
	require.NoError(t, c.Close())
	require.Zero(t, ver.bad.Load(), "%s: backing writes went backwards after recovery", what)
}

// TestCrashAtEveryOp crashes a FlushAll at every mutating device operation
// N = 0, 1, 2, … (of either device, counted from the start of the pass)
// until the pass ends before N: a process crash keeps everything written,
// a power cut keeps what was synced and keeps, drops or tears the rest
// (three random outcomes per N). Contract §2.1-2.4 must hold after each.
func TestCrashAtEveryOp(t *testing.T) {
	s := newCrashScenario(t)
	for _, power := range []bool{false, true} {
		name := "process"
		seeds := 1
		if power {
			name, seeds = "power", 3
		}
		t.Run(name, func(t *testing.T) {
			total := 0
			for n := int64(0); ; n++ {
				fired := false
				for seed := 0; seed < seeds; seed++ {
					cr := s.start(t)
					cr.rig.Arm(n, power, rand.New(rand.NewPCG(uint64(n), uint64(seed))), nil)
					d := newDestager(cr.c, s.pol, nil, s.opts)
					flushAll(t, d)
					require.Zero(t, d.live.Load())
					cr.finish(t, fmt.Sprintf("%s crash at op %d (seed %d)", name, n, seed))
					fired = fired || cr.fired
					total++
				}
				if !fired {
					t.Logf("%d crash points (%d ops in a pass)", total, n)
					require.Greater(t, n, int64(10), "a pass should take more operations")
					return
				}
			}
		})
	}
}

// TestCrashAtDestageSteps crashes at the k-th occurrence of each step of a
// destage — after a run's backing write, after the batch's backing sync,
// before and after a run's Complete (CLEAN records appended) — for every k
// the pass reaches.
func TestCrashAtDestageSteps(t *testing.T) {
	s := newCrashScenario(t)
	steps := []string{"after-write", "after-sync", "before-complete", "after-complete"}
	for _, step := range steps {
		for _, power := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/power=%v", step, power), func(t *testing.T) {
				for k := 0; ; k++ {
					cr := s.start(t)
					var calls atomic.Int64
					hit := func() {
						if calls.Add(1)-1 == int64(k) {
							cr.rig.Arm(0, power, rand.New(rand.NewPCG(uint64(k), 7)), nil)
						}
					}
					o := s.opts
					switch step {
					case "after-write":
						o.afterWrite = func([]blockcache.DirtyBlock) { hit() }
					case "after-sync":
						o.afterSync = hit
					case "before-complete":
						o.beforeComplete = func([]blockcache.DirtyBlock, bool) { hit() }
					case "after-complete":
						o.afterComplete = func([]blockcache.DirtyBlock, bool) { hit() }
					}
					d := newDestager(cr.c, s.pol, nil, o)
					flushAll(t, d)
					cr.finish(t, fmt.Sprintf("crash %s #%d (power %v)", step, k, power))
					if !cr.fired {
						require.Greater(t, k, 1, "step %s should happen several times", step)
						return
					}
				}
			})
		}
	}
}
