package device

import (
	"math/rand/v2"
	"sync"
	"sync/atomic"
)

// CrashRig, for tests, runs code on two in-memory devices (a cache and a
// backing device) and takes the images a crash would leave, of both at the
// same instant, after the Nth mutating operation (write, zero or sync) on
// either, while the code goes on running. Operations hold a lock shared;
// taking the images holds it exclusively.
type CrashRig struct {
	mu       sync.RWMutex
	ssd, hdd *Mem
	ops      atomic.Int64
	trigger  atomic.Int64 // take the images when ops reaches it; 0 = disarmed
	power    bool
	rng      *rand.Rand
	onSnap   func()
	snapped  atomic.Bool
	snapSSD  *Mem
	snapHDD  *Mem
	spareSSD *Mem // Recycle's: Take's images go into them
	spareHDD *Mem
}

// NewCrashRig watches ssd and hdd; use Dev to get the devices to run on.
func NewCrashRig(ssd, hdd *Mem) *CrashRig { return &CrashRig{ssd: ssd, hdd: hdd} }

// Dev returns m (the rig's ssd or hdd) counted by the rig.
func (r *CrashRig) Dev(m *Mem) Device { return &rigDev{Device: m, r: r} }

// Arm schedules the crash after n more mutating operations (0: now). The
// images are those of a power cut (PowerCut with rng) or of a process
// crash (CrashProcess). onSnap, if set, runs when they are taken, with
// every device operation held off.
func (r *CrashRig) Arm(n int64, power bool, rng *rand.Rand, onSnap func()) {
	r.power, r.rng, r.onSnap = power, rng, onSnap
	r.snapped.Store(false)
	if n == 0 {
		r.Take()
		return
	}
	r.trigger.Store(r.ops.Load() + n)
}

// Disarm cancels a scheduled crash.
func (r *CrashRig) Disarm() { r.trigger.Store(0) }

// Take takes the images now, unless they were taken since the last Arm.
func (r *CrashRig) Take() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.snapped.Load() {
		return
	}
	r.trigger.Store(0)
	if r.power {
		r.snapSSD, r.snapHDD = r.ssd.PowerCutInto(r.spareSSD, r.rng), r.hdd.PowerCutInto(r.spareHDD, r.rng)
	} else {
		r.snapSSD, r.snapHDD = r.ssd.CrashProcessInto(r.spareSSD), r.hdd.CrashProcessInto(r.spareHDD)
	}
	r.spareSSD, r.spareHDD = nil, nil
	if r.onSnap != nil {
		r.onSnap()
	}
	r.snapped.Store(true)
}

// Recycle gives the rig two Mems nothing uses any more (either may be
// nil); Take builds its images in them when the sizes match instead of
// allocating new ones.
func (r *CrashRig) Recycle(ssd, hdd *Mem) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.spareSSD, r.spareHDD = ssd, hdd
}

// Snapped reports whether the images were taken since the last Arm.
func (r *CrashRig) Snapped() bool { return r.snapped.Load() }

// Images returns the last images taken.
func (r *CrashRig) Images() (ssd, hdd *Mem) { return r.snapSSD, r.snapHDD }

func (r *CrashRig) mutated() {
	n := r.ops.Add(1)
	if t := r.trigger.Load(); t != 0 && n >= t && !r.snapped.Load() {
		r.Take()
	}
}

type rigDev struct {
	Device
	r *CrashRig
}

// PartialUpdates passes on the device's own (see Mem.SetPartialUpdates).
func (d *rigDev) PartialUpdates() bool {
	p, ok := d.Device.(partialUpdater)
	return ok && p.PartialUpdates()
}

func (d *rigDev) ReadAt(p []byte, off int64) (int, error) {
	d.r.mu.RLock()
	defer d.r.mu.RUnlock()
	return d.Device.ReadAt(p, off)
}

func (d *rigDev) WriteAt(p []byte, off int64) (int, error) {
	d.r.mu.RLock()
	n, err := d.Device.WriteAt(p, off)
	d.r.mu.RUnlock()
	d.r.mutated()
	return n, err
}

func (d *rigDev) Zero(off, n int64) error {
	d.r.mu.RLock()
	err := d.Device.Zero(off, n)
	d.r.mu.RUnlock()
	d.r.mutated()
	return err
}

func (d *rigDev) Sync() error {
	d.r.mu.RLock()
	err := d.Device.Sync()
	d.r.mu.RUnlock()
	d.r.mutated()
	return err
}
