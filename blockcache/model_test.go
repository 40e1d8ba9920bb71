package blockcache

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/wbcache/wbcache/device"
	"github.com/wbcache/wbcache/layout"
)

// model is what the disk must hold: per block, every version since the
// last completed Sync (the first one is durable), plus the versions of the
// operation in flight.
type model struct {
	mu      sync.Mutex
	vers    [][][]byte
	pending map[uint64][]byte
	hist    [][][]byte // every version since the last reset, for diagnostics
	// direct marks blocks written on the backing device in place since the
	// last sync (bypass modes, discards): a power cut may tear those at
	// 512-byte sectors, as it would on the bare device.
	direct     []bool
	pendDirect bool
	allowTear  []bool
	// filled at the snapshot: what each block may read back as.
	allowed [][][]byte

	// The client's history for the check of the backing device alone
	// (ordered write-back): per block every version with the epoch of its
	// write; an epoch ends at each Sync and at each recovery.
	bh    [][]hver
	epoch int
	// at the snapshot: the pending versions, and whether ordering was in
	// force.
	snapPending map[uint64][]byte
	snapInForce bool
	// torn marks blocks that a power cut left torn on the backing device
	// (whole sectors of an unsynced write): until a later write-back
	// covers them, which the model does not track, their sectors are
	// checked one by one.
	torn []bool
}

// debugBacking (WBC_DEBUG_BACKING=1) prints, for an inconsistent backing
// image, the history of the first block that fits no epoch.
var debugBacking = os.Getenv("WBC_DEBUG_BACKING") != ""

type hver struct {
	data  []byte
	epoch int
}

func newModel(blocks int) *model {
	m := &model{vers: make([][][]byte, blocks), hist: make([][][]byte, blocks), direct: make([]bool, blocks), pending: map[uint64][]byte{},
		bh: make([][]hver, blocks), torn: make([]bool, blocks)}
	for i := range m.vers {
		m.vers[i] = [][]byte{make([]byte, BlockSize)}
		m.hist[i] = m.vers[i]
		m.bh[i] = []hver{{data: m.vers[i][0], epoch: -1}}
	}
	return m
}

func (m *model) current(lba uint64) []byte { return m.vers[lba][len(m.vers[lba])-1] }

// begin records the new block contents of the operation about to run.
func (m *model) begin(news map[uint64][]byte, direct bool) {
	m.mu.Lock()
	m.pending = news
	m.pendDirect = direct
	m.mu.Unlock()
}

// commit makes the operation's versions acknowledged.
func (m *model) commit() {
	m.mu.Lock()
	for lba, b := range m.pending {
		m.vers[lba] = append(m.vers[lba], b)
		m.hist[lba] = append(m.hist[lba], b)
		m.bh[lba] = append(m.bh[lba], hver{data: b, epoch: m.epoch})
		m.direct[lba] = m.direct[lba] || m.pendDirect
	}
	m.pending = map[uint64][]byte{}
	m.mu.Unlock()
}

// synced: a Sync completed; the newest versions are durable.
func (m *model) synced() {
	m.mu.Lock()
	for i, v := range m.vers {
		m.vers[i] = v[len(v)-1:]
		m.direct[i] = false
	}
	m.epoch++
	m.mu.Unlock()
}

// snap computes what may be read after a crash now. Called under rig.mu.
func (m *model) snap(power bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.snapPending = maps.Clone(m.pending)
	m.allowed = make([][][]byte, len(m.vers))
	m.allowTear = make([]bool, len(m.vers))
	for i, v := range m.vers {
		_, inflight := m.pending[uint64(i)]
		m.allowTear[i] = power && (m.direct[i] || (inflight && m.pendDirect))
		var a [][]byte
		if power {
			a = append(a, v...)
		} else {
			a = append(a, v[len(v)-1])
		}
		if p, ok := m.pending[uint64(i)]; ok {
			a = append(a, p)
		}
		m.allowed[i] = a
	}
}

// reset after recovery: what was read back is now the durable state.
func (m *model) reset(got [][]byte) {
	for i := range m.vers {
		m.vers[i] = [][]byte{got[i]}
		m.hist[i] = [][]byte{got[i]}
		m.direct[i] = false
		// Versions after the one recovered were lost with the crash:
		// the client never sees them again. (A torn direct write is a
		// version of its own.) Recovery ends an epoch, as the last write
		// of the epoch the crash cut: the versions of that epoch it did
		// not bring back, and the operation in flight, may still have
		// reached the backing device (a discard zeroes it before its
		// records unmap the dirty copies, which recovery then keeps), and
		// stay allowed in a cut at that epoch.
		h := m.bh[i]
		k := len(h) - 1
		for k >= 0 && !bytes.Equal(h[k].data, got[i]) {
			k--
		}
		if k < 0 {
			m.bh[i] = append(h, hver{data: got[i], epoch: m.epoch})
			continue
		}
		var lost []hver
		for _, v := range h[k+1:] {
			if v.epoch == m.epoch {
				lost = append(lost, v)
			}
		}
		if p, ok := m.snapPending[uint64(i)]; ok && !bytes.Equal(p, got[i]) {
			lost = append(lost, hver{data: p, epoch: m.epoch})
		}
		m.bh[i] = h[:k+1]
		if len(lost) > 0 {
			m.bh[i] = append(append(m.bh[i], lost...), hver{data: got[i], epoch: m.epoch})
		}
	}
	m.epoch++
	m.pending = map[uint64][]byte{}
}

// noteTorn marks the blocks of img, the backing device after a power cut,
// that hold no whole version: torn writes.
func (m *model) noteTorn(img *device.Mem) {
	b := make([]byte, BlockSize)
	for lba, h := range m.bh {
		img.ReadAt(b, int64(lba)*BlockSize)
		whole := false
		for _, v := range h {
			whole = whole || bytes.Equal(v.data, b)
		}
		if p, ok := m.snapPending[uint64(lba)]; ok && bytes.Equal(p, b) {
			whole = true
		}
		m.torn[lba] = m.torn[lba] || !whole
	}
}

// backingValid reports whether img, the backing device alone, is a state
// a power cut could have left (tear: whole sectors of unsynced writes): for
// some epoch k, every block holds either its version as of the end of
// epoch k-1 or a version written in epoch k (or the write in flight, when
// k is the current epoch). It returns the epochs k that fit, as a count,
// and the first block that fits none.
func (m *model) backingValid(img *device.Mem, tear bool) (fits int, bad int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.backingValidLocked(img, tear, m.snapPending)
}

// backingValidLocked is backingValid with the operation in flight's
// versions given (m.mu held).
func (m *model) backingValidLocked(img *device.Mem, tear bool, pending map[uint64][]byte) (fits int, bad int) {
	// Most images fit a recent epoch: try those first, comparing only the
	// versions they allow.
	if lo := m.epoch - 64; lo > 0 {
		if fits, bad := m.backingValidFrom(img, tear, pending, lo, false); bad < 0 {
			return fits, bad
		}
	}
	return m.backingValidFrom(img, tear, pending, 0, debugBacking)
}

// backingValidFrom is backingValid over the cuts k >= lo; debug prints the
// history of the first block that fits none.
func (m *model) backingValidFrom(img *device.Mem, tear bool, pending map[uint64][]byte, lo int, debug bool) (fits int, bad int) {
	ok := make([]bool, m.epoch+1-lo) // ok[k-lo]: every block so far fits epoch k
	for k := range ok {
		ok[k] = true
	}
	b := make([]byte, BlockSize)
	for lba := range m.bh {
		img.ReadAt(b, int64(lba)*BlockSize)
		h := m.bh[lba]
		if p, inflight := pending[uint64(lba)]; inflight {
			h = append(h[:len(h):len(h)], hver{data: p, epoch: m.epoch})
		}
		units := []int{0}
		size := BlockSize
		if tear || m.torn[lba] {
			units, size = nil, 512
			for off := 0; off < BlockSize; off += 512 {
				units = append(units, off)
			}
		}
		for _, off := range units {
			// fit[k]: the unit matches a version allowed at cut k.
			fit := make([]bool, len(ok))
			for i, v := range h {
				// Allowed from its own epoch on until the epoch of the
				// next version (it is the version as of the end of every
				// epoch before that one).
				hi := m.epoch
				if i+1 < len(h) {
					hi = h[i+1].epoch
				}
				if hi < lo || !bytes.Equal(v.data[off:off+size], b[off:off+size]) {
					continue
				}
				for k := max(v.epoch, lo); k <= hi && k-lo < len(fit); k++ {
					fit[k-lo] = true
				}
			}
			fitBefore := slices.Clone(ok)
			any := false
			for k := range ok {
				ok[k] = ok[k] && fit[k]
				any = any || ok[k]
			}
			if !any {
				if debug {
					var eps []string
					for i, v := range h {
						eps = append(eps, fmt.Sprintf("%d:e%d:%v", i, v.epoch, bytes.Equal(v.data[off:off+size], b[off:off+size])))
					}
					var prev []int
					for k := range ok {
						if fitBefore[k] {
							prev = append(prev, k+lo)
						}
					}
					fmt.Printf("block %d: history (version:epoch:matches) %v; cuts fitting the blocks before it: %v; epoch now %d\n", lba, eps, prev, m.epoch)
				}
				return 0, lba
			}
		}
	}
	for _, v := range ok {
		if v {
			fits++
		}
	}
	return fits, -1
}

// fill writes recognisable, never-repeating content.
func fill(rng *rand.Rand, b []byte, tag uint64) {
	for i := 0; i+8 <= len(b); i += 8 {
		binary.LittleEndian.PutUint64(b[i:], tag^rng.Uint64())
	}
	for i := len(b) &^ 7; i < len(b); i++ {
		b[i] = byte(rng.Uint32())
	}
}

type modelRun struct {
	// shardSlots: Options.shardSlots of every open (0: the default, one
	// shard for the model's few slots).
	shardSlots int
	// partial: the cache device's journal region writes only the bytes
	// of each record (device.Mem.SetPartialUpdates), as a mapped file's
	// does, so the journal places records without its lock, in blocks
	// of records checked alone; otherwise every append writes its whole
	// block under the lock. Seeds 2 and 3 modulo 4.
	partial bool
	holes   uint64 // journal positions recovery skipped before a record (replayHoles)
	t       testing.TB
	rng     *rand.Rand
	blocks  int
	r       *device.CrashRig
	ssd     *device.Mem // the live devices the rig watches
	hdd     *device.Mem
	c       *Cache
	m       *model
	tag     uint64
	cycles  int
	ops     map[string]int
	log     []string
	// hot, when set, sends most I/O to the first hot blocks, so blocks are
	// rewritten between syncs (in place) far more often.
	hot         int
	inPlace     uint64 // in-place rewrites done, over every reopen
	overDirty   uint64 // runs written around dirty blocks (writeOverDirty), over every reopen
	throughRuns uint64 // runs written through (writeThroughRun), over every reopen
	// expectOrderFailure: the cache writes back unordered, and
	// checkBackingAlone counts inconsistent images instead of failing.
	expectOrderFailure bool

	// ordered: ordered write-back is set; the backing device is checked
	// between operations too (checkBackingNow).
	ordered bool

	// pending: a destage written back and synced whose Complete waits
	// for a later step, as a destager's batch completes after its sync
	// while writes go on: writers of the backing device in place claim
	// its blocks meanwhile (claimBackingLocked), and a block claimed
	// after its write must not become clean.
	pending []DirtyBlock

	keepSSD, keepHDD *device.Mem // the last crash image, for tracing
	hddNow           *device.Mem // checkBackingNow's copy of the backing device
	// the engine's slots per block just after the last crash, and the
	// crash's kind, for diagnostics
	preCrash map[uint64][]string
	prePower bool
}

// trace recovers the last crash image again, logging what recovery sees of
// block lba.
func (mr *modelRun) trace(lba int) {
	traceMu.Lock()
	defer traceMu.Unlock()
	// Other seeds recover concurrently: they may log into this trace too.
	endFn := func(lsn uint64, h layout.JournalHeader, err error, inc uint64) {
		mr.t.Logf("journal ends at LSN %d: header %+v err %v want inc >= %d", lsn, h, err, inc)
	}
	traceJournalEnd.Store(&endFn)
	defer traceJournalEnd.Store(nil)
	recFn := func(c *Cache, recs []layout.Record, n int) {
		mr.t.Logf("replaying %d of %d records", n, len(recs))
		mr.t.Logf("checkpoint: replay from %d inc %d", c.sb.ReplayLSN, c.sb.CheckpointIncarnation)
		if s, ok := c.mu.t.lookup(uint64(lba)); ok {
			mr.t.Logf("checkpoint maps block %d to slot %d dirty=%v", lba, s, c.mu.t.flags[s]&fDirty != 0)
		}
		slots := map[uint32]bool{}
		for _, r := range recs {
			if r.LBA == uint64(lba) {
				slots[r.Slot] = true
			}
		}
		if s, ok := c.mu.t.lookup(uint64(lba)); ok {
			slots[s] = true
		}
		for i, r := range recs {
			if r.LBA == uint64(lba) || slots[r.Slot] {
				mr.t.Logf("rec %d/%d: %v slot %d lba %d crc %x flags %d epoch %d old %d", i, n, r.Type, r.Slot, r.LBA, r.CRC, r.Flags, r.Epoch, r.Old)
			}
		}
		for s := range c.mu.t.older {
			mr.t.Logf("checkpoint: older slot %d lba %d epoch %d", s, c.mu.t.lba[s], c.mu.t.epoch[s])
		}
	}
	traceRecovery.Store(&recFn)
	c2, err := Open(mr.keepSSD.CrashProcess(), mr.keepHDD.CrashProcess(), Options{CheckpointInterval: -1})
	traceRecovery.Store(nil)
	require.NoError(mr.t, err)
	c2.Close()
}

var traceMu sync.Mutex

const (
	modelBlocks   = 80 // four times the slots: eviction and slot reuse in every cycle
	modelSlots    = 20
	modelJournal  = 16
	modelCacheBlk = 2 + 2*2 + modelJournal + modelSlots
)

func newModelRun(t testing.TB, seed uint64) *modelRun {
	return newModelRunShards(t, seed, 0)
}

// newModelRunShards is newModelRun with a slot table in shards of at
// least shardSlots slots (0: one shard).
func newModelRunShards(t testing.TB, seed uint64, shardSlots int) *modelRun {
	id := [16]byte{1, 2, 3}
	ssd := device.NewMem(modelCacheBlk*BlockSize, [16]byte{9})
	hdd := device.NewMem(modelBlocks*BlockSize, id)
	require.NoError(t, Format(ssd, hdd, FormatOptions{JournalBlocks: modelJournal}))
	mr := &modelRun{t: t, rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), blocks: modelBlocks, m: newModel(modelBlocks), ops: map[string]int{}, shardSlots: shardSlots, partial: seed/2%2 == 1}
	mr.open(ssd, hdd)
	// A short sequential cutoff, so streams (step) go around the cache or
	// are placed in it whole (it is saved: every reopen keeps it).
	require.NoError(t, mr.c.SetSettings(layout.Settings{SeqCutoff: modelSeqCutoff, SetMask: layout.SetSeqCutoff}))
	return mr
}

// modelSeqCutoff is the model's sequential cutoff: a stream of three
// writes of 2-4 blocks passes it.
const modelSeqCutoff = 2 * BlockSize

func (mr *modelRun) open(ssd, hdd *device.Mem) {
	// The devices of the last run (closed, and its cache with them) take
	// the next crash's images.
	spareSSD, spareHDD := mr.ssd, mr.hdd
	mr.ssd, mr.hdd = ssd, hdd
	mr.r = device.NewCrashRig(ssd, hdd)
	mr.r.Recycle(spareSSD, spareHDD)
	ssd.SetPartialUpdates(mr.partial)
	c, err := Open(mr.r.Dev(ssd), mr.r.Dev(hdd), Options{CheckpointInterval: -1, ReserveFree: 2, shardSlots: mr.shardSlots})
	require.NoError(mr.t, err)
	require.Equal(mr.t, mr.partial, c.j.mapped, "the journal places records without its lock exactly on partial updates")
	mr.holes += c.stats.replayHoles.Load()
	mr.c = c
}

// kill abandons the running cache: its devices stop answering, so its
// goroutines wind down without touching the snapshot.
func (mr *modelRun) kill() {
	mr.pending = nil // the process died before the destage completed
	mr.inPlace += mr.c.stats.inPlace.Load()
	mr.overDirty += mr.c.stats.aroundOverDirty.Load()
	mr.throughRuns += mr.c.stats.throughRuns.Load()
	mr.ssd.Close()
	mr.hdd.Close()
	mr.c.Close()
}

func (mr *modelRun) newBlockContents(off int64, data []byte) map[uint64][]byte {
	news := map[uint64][]byte{}
	for i := 0; i < len(data); {
		pos := off + int64(i)
		lba := uint64(pos / BlockSize)
		in := int(pos % BlockSize)
		n := min(BlockSize-in, len(data)-i)
		b := bytes.Clone(mr.m.current(lba))
		copy(b[in:], data[i:i+n])
		news[lba] = b
		i += n
	}
	return news
}

func (mr *modelRun) randRange() (int64, int) {
	size := int64(mr.blocks) * BlockSize
	if mr.hot > 0 && mr.rng.IntN(4) != 0 {
		lba := mr.rng.Int64N(int64(mr.hot))
		if mr.rng.IntN(3) == 0 {
			in := mr.rng.Int64N(BlockSize - 1)
			return lba*BlockSize + in, 1 + mr.rng.IntN(int(BlockSize-in))
		}
		return lba * BlockSize, BlockSize
	}
	if mr.rng.IntN(2) == 0 {
		lba := mr.rng.Int64N(int64(mr.blocks))
		n := min(1+mr.rng.IntN(4), mr.blocks-int(lba))
		return lba * BlockSize, n * BlockSize
	}
	off := mr.rng.Int64N(size - 1)
	n := 1 + mr.rng.IntN(min(3*BlockSize, int(size-off)))
	return off, n
}

// step runs one random operation and checks reads against the model.
func (mr *modelRun) step() {
	t, c, m := mr.t, mr.c, mr.m
	mr.makeRoom()
	switch p := mr.rng.IntN(100); {
	case p < 41: // write
		mr.write(mr.randRange())
	case p < 45: // a sequential stream past the cutoff
		mr.stream()
	case p < 60: // read
		off, n := mr.randRange()
		got := make([]byte, n)
		_, err := c.ReadAt(got, off)
		require.NoError(t, err)
		want := make([]byte, 0, n)
		for lba := off / BlockSize; lba*BlockSize < off+int64(n); lba++ {
			want = append(want, m.current(uint64(lba))...)
		}
		in := off % BlockSize
		require.True(t, bytes.Equal(want[in:in+int64(n)], got), "read at %d+%d differs from model", off, n)
		mr.ops["read"]++
		mr.log = append(mr.log, "read")
	case p < 70:
		require.NoError(t, c.Sync())
		m.synced()
		mr.ops["sync"]++
		mr.log = append(mr.log, "sync")
	case p < 76: // discard
		off, n := mr.randRange()
		m.begin(mr.newBlockContents(off, make([]byte, n)), true)
		require.NoError(t, c.Discard(off, int64(n)))
		m.commit()
		mr.ops["discard"]++
		mr.log = append(mr.log, "discard")
	case p < 80:
		require.NoError(t, c.Checkpoint())
		mr.ops["checkpoint"]++
		mr.log = append(mr.log, "checkpoint")
	case p < 95:
		mr.destage(mr.rng.IntN(4) == 0)
		mr.ops["destage"]++
		mr.log = append(mr.log, "destage")
	default:
		mode := Mode(mr.rng.IntN(4))
		if mr.rng.IntN(2) == 0 {
			mode = ModeWriteback
		}
		require.NoError(t, c.SetMode(mode))
		mr.ops["mode"]++
		mr.log = append(mr.log, "mode")
	}
}

// checkBackingAlone checks the backing device's crash image alone (the
// cache device lost) against the client's history, when ordered
// write-back was in force (or always, with mr.expectOrderFailure): it
// must be a state a power cut could have left. It counts the checks and
// the inconsistent images, and fails on one unless the order is expected
// to fail.
func (mr *modelRun) checkBackingAlone(hdd *device.Mem, power bool) {
	if !mr.m.snapInForce && !mr.expectOrderFailure {
		mr.ops["backing-alone-skipped"]++
		return
	}
	mr.ops["backing-alone-checked"]++
	fits, bad := mr.m.backingValid(hdd, power)
	if bad < 0 {
		return
	}
	mr.ops["backing-alone-inconsistent"]++
	if !mr.expectOrderFailure {
		mr.t.Fatalf("cycle %d (power cut %v): the backing device alone is no state a power cut could have left: block %d fits no epoch (%d epochs); log %v",
			mr.cycles, power, bad, mr.m.epoch+1, mr.log)
	}
	_ = fits
}

// engineState describes every valid slot by block.
func (mr *modelRun) engineState() map[uint64][]string {
	c := mr.c
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &c.mu.t
	st := map[uint64][]string{}
	for s := range t.flags {
		if t.flags[s]&fValid != 0 {
			st[t.lba[s]] = append(st[t.lba[s]], fmt.Sprintf("slot %d flags %x epoch %d older %v", s, t.flags[s], t.epoch[s], t.isOlder(uint32(s))))
		}
	}
	o := &c.mu.order
	oe, ok := t.oldestEpoch()
	u, uset := o.unkeptEpoch()
	st[orderKey] = []string{fmt.Sprintf("order: suspended %q broken %v unkept %d %v; epoch %d oldest %d %v",
		o.suspended, o.broken, u, uset, c.epoch.Load(), oe, ok)}
	return st
}

// orderKey is where engineState puts the ordering state (no block).
const orderKey = 1 << 62

// checkBackingNow checks, with ordered write-back, the backing device's
// content between operations and after recovery (every write issued, as
// if the power were cut with all of them landed): while ordering is in
// force it must be a state a power cut could have left.
func (mr *modelRun) checkBackingNow() {
	if !mr.ordered {
		return
	}
	c := mr.c
	c.mu.Lock()
	inForce := c.mu.order.inForce.Load()
	c.mu.Unlock()
	if !inForce {
		return
	}
	mr.m.mu.Lock()
	mr.hddNow = mr.hdd.CrashProcessInto(mr.hddNow)
	_, bad := mr.m.backingValidLocked(mr.hddNow, false, nil)
	mr.m.mu.Unlock()
	if bad < 0 {
		return
	}
	now := mr.engineState()
	mr.t.Logf("block %d: %v; %v; model epoch %d", bad, now[uint64(bad)], now[orderKey], mr.m.epoch)
	if mr.preCrash != nil {
		mr.t.Logf("before the crash (power %v): block %d %v; %v", mr.prePower, bad, mr.preCrash[uint64(bad)], mr.preCrash[orderKey])
		mr.trace(bad)
	}
	mr.t.Fatalf("cycle %d: the backing device is no consistent state while ordering is in force: block %d; log %v", mr.cycles, bad, mr.log)
}

// makeRoom destages until at most half the slots are dirty, so that the
// next write (at most four blocks) finds slots: the model runs no
// destager, and with ordered write-back a destage takes one epoch at a
// time, and writes that would go around the cache go into it while older
// epochs are dirty.
func (mr *modelRun) makeRoom() {
	c := mr.c
	for i := 0; c.DirtyCount() > modelSlots/2 && i < 64; i++ {
		mr.destage(true)
	}
	if n := c.DirtyCount(); n > modelSlots/2 {
		offered := len(c.DirtyBlocks(nil))
		c.mu.Lock()
		defer c.mu.Unlock()
		o, ok := c.mu.t.oldestEpoch()
		mr.t.Fatalf("destaging cannot bring the dirty blocks (%d) down: offered %d, oldest epoch %d %v, epochs %v, older %v, suspended %q; log %v",
			n, offered, o, ok, c.mu.t.epochCounts(), c.mu.t.olderLBA, c.mu.order.suspended, mr.log)
	}
}

// write writes n random bytes at off and tells the model. A write that
// continues a sequential stream may go around the cache in any mode.
func (mr *modelRun) write(off int64, n int) {
	mr.writeTo(off, n, mr.c.Mode() != ModeWriteback || mr.c.continuesStream(off))
}

// continuesStream reports whether a write at off continues a sequential
// stream the engine tracks: past the cutoff it may bypass the cache.
func (c *Cache) continuesStream(off int64) bool { return c.seqWrites.continues(off) }

// stream writes three runs of 2-4 whole blocks back to back, so the last
// ones pass the sequential cutoff: each goes to the backing device whole,
// or into the cache whole when it covers a dirty block.
func (mr *modelRun) stream() {
	lba := mr.rng.IntN(mr.blocks - 1)
	for k := 0; k < 3 && lba < mr.blocks-1; k++ {
		if k > 0 {
			mr.makeRoom()
		}
		n := min(2+mr.rng.IntN(3), mr.blocks-lba)
		mr.writeTo(int64(lba)*BlockSize, n*BlockSize, true)
		lba += n
	}
	mr.ops["stream"]++
}

// writeTo is write; direct says the data may go to the backing device in
// place (a power cut may then tear it, as on the bare disk).
func (mr *modelRun) writeTo(off int64, n int, direct bool) {
	c, m := mr.c, mr.m
	data := make([]byte, n)
	mr.tag++
	fill(mr.rng, data, mr.tag<<32)
	m.begin(mr.newBlockContents(off, data), direct)
	mr.log = append(mr.log, fmt.Sprintf("w%d+%d/%v", off, n, c.Mode()))
	_, err := c.WriteAt(data, off)
	require.NoError(mr.t, err)
	m.commit()
	mr.ops["write"]++
	mr.log = append(mr.log, "write")
}

// destage writes dirty blocks back the way the destager does: pin, read,
// write the backing device, sync it, complete. Sometimes blocks of the
// snapshot are rewritten before Pin, which then destages their newer
// versions.
func (mr *modelRun) destage(all bool) {
	c := mr.c
	mr.completePending() // one batch at a time, as the destager
	dirty := c.DirtyBlocks(nil)
	if len(dirty) == 0 {
		return
	}
	if !all {
		i := mr.rng.IntN(len(dirty))
		dirty = dirty[i:min(len(dirty), i+1+mr.rng.IntN(6))]
	}
	// (Not while making room: the rewrites take slots, and the model
	// runs no destager to free them while a write waits for one.)
	if mr.rng.IntN(2) == 0 && c.DirtyCount() <= modelSlots/2 {
		for k := mr.rng.IntN(3); k >= 0; k-- {
			b := dirty[mr.rng.IntN(len(dirty))]
			mr.write(int64(b.LBA)*BlockSize, BlockSize)
			mr.log = append(mr.log, "rewrite-before-pin")
		}
	}
	newer := c.stats.pinnedNewer.Load()
	pinned, err := c.Pin(dirty)
	require.NoError(mr.t, err)
	mr.ops["pin-newer"] += int(c.stats.pinnedNewer.Load() - newer)
	if len(pinned) == 0 {
		return
	}
	if mr.rng.IntN(2) == 0 {
		// Fill short gaps between them with clean cached copies, as the
		// destager does: they are written back too.
		n := len(pinned)
		pinned = c.PinGaps(pinned, 8, nil)
		mr.ops["gap-fill"] += len(pinned) - n
	}
	if mr.rng.IntN(3) == 0 {
		// Fill some of the gaps left from the backing device.
		n := len(pinned)
		pinned = c.PinBackingGaps(pinned, func(lo, hi uint64) bool { return hi-lo <= 6 && mr.rng.IntN(2) == 0 }, nil)
		mr.ops["gap-read"] += len(pinned) - n
	}
	buf := device.AlignedBuffer(len(pinned) * BlockSize)
	require.NoError(mr.t, c.ReadSlots(pinned, buf))
	since := c.BackingSyncFailures()
	require.Empty(mr.t, c.BeginWriteBack(pinned), "no write ran since Pin")
	for i, b := range pinned {
		_, err := c.Backing().WriteAt(buf[i*BlockSize:(i+1)*BlockSize], int64(b.LBA)*BlockSize)
		require.NoError(mr.t, err)
	}
	c.EndWriteBack(pinned)
	require.NoError(mr.t, c.SyncBacking(since))
	// Now and then the completion waits for a later step (not under
	// ordered write-back, whose catch-up would wait for it, nor for
	// makeRoom, which needs the slots; few blocks, so that writes still
	// find free slots with no destager to evict the pinned ones).
	if !all && !mr.ordered && len(pinned) <= 3 && mr.rng.IntN(3) == 0 {
		mr.pending = pinned
		mr.ops["destage-pending"]++
		return
	}
	require.NoError(mr.t, c.Complete(pinned, true))
}

// completePending completes the pending destage, if any.
func (mr *modelRun) completePending() {
	if mr.pending != nil {
		require.NoError(mr.t, mr.c.Complete(mr.pending, true))
		mr.pending = nil
	}
}

// cycle runs a few operations with a crash armed somewhere inside them,
// recovers and checks the contract.
func (mr *modelRun) cycle() {
	power := mr.rng.IntN(2) == 0
	armAt, maxOps := int64(40), 8
	if mr.hot > 0 {
		// Longer cycles: several rewrites of a hot block between syncs.
		armAt, maxOps = 160, 32
	}
	mr.r.Arm(1+mr.rng.Int64N(armAt), power, rand.New(rand.NewPCG(mr.rng.Uint64(), 1)), func() {
		mr.m.snap(power)
		mr.m.snapInForce = mr.c.mu.order.inForce.Load() // (Cache.mu may be held across a journal write)
	})
	nops := 1 + mr.rng.IntN(maxOps)
	for i := 0; i < nops && !mr.r.Snapped(); i++ {
		mr.step()
		if !mr.r.Snapped() {
			mr.checkClean("step")
			mr.checkBackingNow()
		}
	}
	mr.r.Take()
	mr.c.j.mu.Lock()
	open, n := mr.c.j.openLSNLocked()
	mr.log = append(mr.log, fmt.Sprintf("CRASH(open %d with %d tail %d appended %d)", open, n, mr.c.j.tail, mr.c.j.lastSeq()))
	mr.c.j.mu.Unlock()
	ssd, hdd := mr.r.Images()
	mr.checkBackingAlone(hdd, power)
	if mr.ordered {
		mr.preCrash, mr.prePower = mr.engineState(), power
	}
	if power {
		mr.m.noteTorn(hdd)
	}
	mr.kill()
	mr.keepSSD, mr.keepHDD = ssd.CrashProcessInto(mr.keepSSD), hdd.CrashProcessInto(mr.keepHDD)
	mr.open(ssd, hdd)
	got := make([][]byte, mr.blocks)
	for lba := range got {
		got[lba] = make([]byte, BlockSize)
		_, err := mr.c.ReadAt(got[lba], int64(lba)*BlockSize)
		require.NoError(mr.t, err)
		ok := sectorsFrom(got[lba], mr.m.allowed[lba], mr.m.allowTear[lba])
		if !ok {
			idx := -1
			for i, h := range mr.m.hist[lba] {
				if bytes.Equal(h, got[lba]) {
					idx = i
				}
			}
			for i, a := range mr.m.allowed[lba] {
				same := 0
				for k := 0; k < BlockSize; k += 512 {
					if bytes.Equal(a[k:k+512], got[lba][k:k+512]) {
						same++
					}
				}
				mr.t.Logf("allowed %d: %d of 8 sectors equal", i, same)
			}
			for ob := range mr.m.hist {
				for i, h := range mr.m.hist[ob] {
					if bytes.Equal(h, got[lba]) {
						mr.t.Logf("content is block %d version %d", ob, i)
					}
				}
			}
			mr.t.Logf("block %d matches history version %d of %d; durable is version %d; log: %v", lba, idx, len(mr.m.hist[lba]), len(mr.m.hist[lba])-len(mr.m.vers[lba]), mr.log)
			mr.trace(lba)
			mr.t.Fatalf("cycle %d (power cut %v): block %d reads a version that is neither durable nor acknowledged (%d allowed)", mr.cycles, power, lba, len(mr.m.allowed[lba]))
		}
	}
	mr.m.reset(got)
	mr.checkClean("recovery")
	mr.log = append(mr.log, "RECOVERED")
	mr.checkBackingNow()
	mr.log = mr.log[:0]
	mr.cycles++
}

func modelCycles(t *testing.T) int {
	if s := os.Getenv("WBC_MODEL_CYCLES"); s != "" {
		n, err := strconv.Atoi(s)
		require.NoError(t, err)
		return n
	}
	switch long := os.Getenv("WBC_LONG") != ""; {
	case testing.Short() || raceDetector && !long:
		return 200 // WBC_LONG=1 (.ci/run) runs the long counts
	case raceDetector:
		return 1000
	}
	return 2500
}

// TestModelCrashRecovery runs random operations against a model and crashes
// (process crash or power cut) at random device operations, including in
// the middle of writes, syncs, discards, checkpoints and destages. After
// every recovery each block must read as a version the contract allows
// (docs/design.md §2.1-2.3). Four seeds × 2500 cycles by default; under
// the race detector 200, or 1000 with WBC_LONG=1; 200 with -short.
func TestModelCrashRecovery(t *testing.T) {
	modelCrashRecovery(t, 0, 4)
}

// TestModelCrashRecoveryHot is TestModelCrashRecovery with most I/O on
// three blocks: rewrites in place, crashed at every step of them. Two
// seeds × as many cycles as TestModelCrashRecovery.
func TestModelCrashRecoveryHot(t *testing.T) {
	modelCrashRecovery(t, 3, 2)
}

// TestModelCrashRecoveryOrdered is TestModelCrashRecovery with ordered
// write-back (two seeds, the default bound on older versions, so ordering
// is suspended and resumes): every recovery must keep the contract. At
// each crash while ordering was in force the backing device's image alone
// is checked against the client's history (checkBackingAlone), and so is
// its full content between operations and after each recovery
// (checkBackingNow): each must be a state a power cut could have left
// (docs/design.md §2.7).
func TestModelCrashRecoveryOrdered(t *testing.T) {
	modelCrashRecoveryOrder(t, 0, 2, layout.OrderOrdered)
}

// TestModelBackingAloneUnordered shows that the check of the backing
// device alone can fail: with unordered write-back, images that no power
// cut could have left must turn up.
func TestModelBackingAloneUnordered(t *testing.T) {
	mr := newModelRun(t, 77)
	require.NoError(t, mr.c.SetSettings(layout.Settings{SeqCutoff: modelSeqCutoff, Order: layout.OrderUnordered, SetMask: layout.SetSeqCutoff | layout.SetOrder}))
	mr.expectOrderFailure = true
	for i := 0; i < modelCycles(t) && mr.ops["backing-alone-inconsistent"] == 0; i++ {
		mr.cycle()
	}
	mr.kill()
	t.Logf("cycles %d ops %v", mr.cycles, mr.ops)
	require.NotZero(t, mr.ops["backing-alone-inconsistent"], "unordered write-back must leave the backing device inconsistent at some crash")
}

func modelCrashRecovery(t *testing.T, hot, seeds int) {
	modelCrashRecoveryOrder(t, hot, seeds, layout.OrderUnordered)
}

func modelCrashRecoveryOrder(t *testing.T, hot, seeds int, order uint8) {
	base := uint64(0)
	if s := os.Getenv("WBC_MODEL_SEED"); s != "" {
		b, err := strconv.ParseUint(s, 10, 64)
		require.NoError(t, err)
		base = b
	}
	// Runs around dirty blocks and runs written through, summed over the
	// seeds: their number per seed depends on timing (the model's cache
	// runs its background work), 1-13 per 1,000 cycles around dirty
	// blocks, so one seed alone can have none.
	var overDirty, throughRuns, holes atomic.Uint64
	n := modelCycles(t)
	t.Run("seeds", func(t *testing.T) { modelSeeds(t, base, seeds, hot, order, n, &overDirty, &throughRuns, &holes) })
	if hot == 0 && order == layout.OrderUnordered && n >= 1000 && !t.Failed() {
		// (8-25 per seed in 2500 cycles: too few to count on in 200.)
		require.NotZero(t, overDirty.Load(), "streams in modes writearound and none must go around dirty blocks")
		require.NotZero(t, throughRuns.Load(), "writes of whole blocks in mode writethrough must go through as runs")
		require.NotZero(t, holes.Load(), "power cuts must leave holes in journal blocks of records checked alone, and recovery replay past them")
	}
}

func modelSeeds(t *testing.T, base uint64, seeds, hot int, order uint8, n int, overDirty, throughRuns, holes *atomic.Uint64) {
	for seed := base + 1; seed <= base+uint64(seeds); seed++ {
		// Even seeds split the slot table into four shards of five
		// slots, so records of different shards interleave, slots move
		// between shards, and shards run out of slots of their own.
		shardSlots, shards := 0, 1
		if seed%2 == 0 {
			shardSlots, shards = modelSlots/4, 4
		}
		t.Run(fmt.Sprintf("seed%d", seed), func(t *testing.T) {
			t.Parallel()
			mr := newModelRunShards(t, seed, shardSlots)
			require.Len(t, mr.c.mu.t.shards, shards)
			mr.hot = hot
			if order == layout.OrderOrdered {
				mr.ordered = true
				require.NoError(t, mr.c.SetSettings(layout.Settings{SeqCutoff: modelSeqCutoff, Order: order, SetMask: layout.SetSeqCutoff | layout.SetOrder}))
			}
			for i := 0; i < n; i++ {
				mr.cycle()
			}
			mr.kill()
			t.Logf("cycles %d ops %v in place %d, runs around dirty blocks %d, runs written through %d, journal records without the lock %v, holes replayed past %d",
				mr.cycles, mr.ops, mr.inPlace, mr.overDirty, mr.throughRuns, mr.partial, mr.holes)
			if hot > 0 {
				require.Greater(t, mr.inPlace, uint64(n/10), "the hot run must rewrite in place often")
			}
			overDirty.Add(mr.overDirty)
			throughRuns.Add(mr.throughRuns)
			holes.Add(mr.holes)
		})
	}
}

// sectorsFrom reports whether b equals one of the allowed versions or, with
// tear, whether each 512-byte sector of b equals that sector of some
// allowed version.
func sectorsFrom(b []byte, allowed [][]byte, tear bool) bool {
	for _, a := range allowed {
		if bytes.Equal(a, b) {
			return true
		}
	}
	if !tear {
		return false
	}
	for k := 0; k < len(b); k += 512 {
		ok := false
		for _, a := range allowed {
			if bytes.Equal(a[k:k+512], b[k:k+512]) {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	return true
}

// checkClean asserts the slot table's invariants, and that every clean
// cached block equals the backing device's content, both as reads see it
// and as it was at the last backing sync (what any power cut keeps).
func (mr *modelRun) checkClean(what string) {
	c := mr.c
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &c.mu.t
	a := make([]byte, BlockSize)
	b := make([]byte, BlockSize)
	d := make([]byte, BlockSize)
	entries := 0
	for i := range t.shards {
		for _, v := range t.shards[i].index.b {
			if v != 0 {
				entries++
				if t.flags[v-1]&fValid == 0 {
					mr.t.Fatalf("after %s: index points at invalid slot %d; log %v", what, v-1, mr.log)
				}
			}
		}
	}
	nFree := 0
	t.free.each(func(s uint32) {
		nFree++
		if t.flags[s] != 0 {
			mr.t.Fatalf("after %s: free slot %d has flags %x; log %v", what, s, t.flags[s], mr.log)
		}
	})
	if nFree != t.free.len() {
		mr.t.Fatalf("after %s: the free set counts %d slots and holds %d; log %v", what, t.free.len(), nFree, mr.log)
	}
	for s, f := range t.flags {
		if t.isOlder(uint32(s)) {
			if f&(fValid|fDirty) != fValid|fDirty {
				mr.t.Fatalf("after %s: older version in slot %d (block %d) has flags %x; log %v", what, s, t.lba[s], f, mr.log)
			}
			continue
		}
		if f&fValid != 0 {
			if got, ok := t.lookup(t.lba[s]); !ok || got != uint32(s) {
				mr.t.Fatalf("after %s: valid slot %d (block %d) not in the index; log %v", what, s, t.lba[s], mr.log)
			}
		}
	}
	epochs, olderLBA := map[uint32]int{}, map[uint64]int{}
	for s, f := range t.flags {
		if f&(fValid|fDirty|fLost) == fValid|fDirty {
			epochs[t.epoch[s]]++
			if t.isOlder(uint32(s)) {
				olderLBA[t.lba[s]]++
			}
		}
	}
	if counted := t.epochCounts(); !maps.Equal(epochs, counted) || !maps.Equal(olderLBA, t.olderLBA) {
		mr.t.Fatalf("after %s: dirty versions per epoch %v, counted %v; older per block %v, counted %v; log %v", what, epochs, counted, olderLBA, t.olderLBA, mr.log)
	}
	if entries != t.validCount()-len(t.older) {
		mr.t.Fatalf("after %s: index has %d entries, %d valid slots; log %v", what, entries, t.validCount(), mr.log)
	}
	for i := range t.shards {
		sh := &t.shards[i]
		n := 0
		for _, v := range sh.index.b {
			if v != 0 {
				n++
				if t.shardOfSlot(v-1) != sh {
					mr.t.Fatalf("after %s: slot %d (block %d) is in the index of shard %d, not its own; log %v", what, v-1, t.lba[v-1], i, mr.log)
				}
			}
		}
		if n != sh.index.n {
			mr.t.Fatalf("after %s: shard %d's index counts %d entries and holds %d; log %v", what, i, sh.index.n, n, mr.log)
		}
	}
	for _, s := range t.run.Load().left() {
		if t.flags[s] != 0 || t.free.has(s) {
			mr.t.Fatalf("after %s: spare slot %d has flags %x (in the free set: %v); log %v", what, s, t.flags[s], t.free.has(s), mr.log)
		}
	}
	for s, f := range t.flags {
		if f&(fValid|fDirty) != fValid {
			continue
		}
		mr.ssd.ReadAt(a, c.g.SlotOffset(uint64(s)))
		mr.hdd.ReadAt(b, int64(t.lba[s])*BlockSize)
		_, err := mr.hdd.ReadDurable(d, int64(t.lba[s])*BlockSize)
		require.NoError(mr.t, err)
		if !bytes.Equal(a, b) || !bytes.Equal(a, d) {
			mr.c.mu.Unlock()
			mr.trace(int(t.lba[s]))
			mr.c.mu.Lock()
			mr.t.Fatalf("after %s: clean slot %d (block %d) differs from the backing device (as read: %v, as synced: %v); log %v",
				what, s, t.lba[s], !bytes.Equal(a, b), !bytes.Equal(a, d), mr.log)
		}
	}
}
