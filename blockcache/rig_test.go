package blockcache

import (
	"math/rand/v2"
	"sync"
	"sync/atomic"

	"github.com/wbcache/wbcache/device"
)

// rig runs a cache on two in-memory devices and can take the image a crash
// would leave at the Nth mutating operation (write, zero or sync) on either
// device, while the cache goes on running.
type rig struct {
	mu       sync.RWMutex // operations hold it shared; a snapshot holds it exclusive
	ssd, hdd *device.Mem
	ops      atomic.Int64
	trigger  atomic.Int64 // snapshot after this many ops; 0 = never
	power    bool
	rng      *rand.Rand
	onSnap   func() // called with the snapshot, under mu
	snapSSD  *device.Mem
	snapHDD  *device.Mem
	snapped  atomic.Bool
}

func newRig(ssd, hdd *device.Mem) *rig { return &rig{ssd: ssd, hdd: hdd} }

func (r *rig) dev(m *device.Mem) *rigDev { return &rigDev{r: r, m: m} }

// arm schedules a snapshot after n more mutating operations.
func (r *rig) arm(n int64, power bool, rng *rand.Rand, onSnap func()) {
	r.power, r.rng, r.onSnap = power, rng, onSnap
	r.snapped.Store(false)
	r.trigger.Store(r.ops.Load() + n)
}

// snapNow takes the snapshot at once (a crash between operations).
func (r *rig) snapNow() {
	if r.snapped.Load() {
		return
	}
	r.trigger.Store(0)
	r.take()
}

func (r *rig) take() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.snapped.Load() {
		return
	}
	if r.power {
		r.snapSSD, r.snapHDD = r.ssd.PowerCut(r.rng), r.hdd.PowerCut(r.rng)
	} else {
		r.snapSSD, r.snapHDD = r.ssd.CrashProcess(), r.hdd.CrashProcess()
	}
	if r.onSnap != nil {
		r.onSnap()
	}
	r.snapped.Store(true)
}

func (r *rig) mutated() {
	n := r.ops.Add(1)
	if t := r.trigger.Load(); t != 0 && n >= t && !r.snapped.Load() {
		r.take()
	}
}

type rigDev struct {
	r *rig
	m *device.Mem
}

func (d *rigDev) ReadAt(p []byte, off int64) (int, error) {
	d.r.mu.RLock()
	defer d.r.mu.RUnlock()
	return d.m.ReadAt(p, off)
}

func (d *rigDev) WriteAt(p []byte, off int64) (int, error) {
	d.r.mu.RLock()
	n, err := d.m.WriteAt(p, off)
	d.r.mu.RUnlock()
	d.r.mutated()
	return n, err
}

func (d *rigDev) Zero(off, n int64) error {
	d.r.mu.RLock()
	err := d.m.Zero(off, n)
	d.r.mu.RUnlock()
	d.r.mutated()
	return err
}

func (d *rigDev) Sync() error {
	d.r.mu.RLock()
	err := d.m.Sync()
	d.r.mu.RUnlock()
	d.r.mutated()
	return err
}

func (d *rigDev) Size() int64        { return d.m.Size() }
func (d *rigDev) Identity() [16]byte { return d.m.Identity() }
func (d *rigDev) Close() error       { return d.m.Close() }
