package flush

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/stretchr/testify/require"
	"github.com/wbcache/wbcache/blockcache"
	"github.com/wbcache/wbcache/device"
	"github.com/wbcache/wbcache/layout"
)

const bs = blockcache.BlockSize

// ---- block contents carrying a version tag ----

const tagMagic = 0x5742434b54414721 // "WBCKTAG!"

// blockData is version ver of block lba: every 512-byte sector starts with
// (lba, ver, magic) followed by bytes derived from them, so a torn block,
// another block's data or an older version are all recognisable.
// Version 0 is the zero block.
func blockData(lba, ver uint64) []byte {
	b := make([]byte, bs)
	if ver == 0 {
		return b
	}
	rng := rand.New(rand.NewPCG(lba, ver))
	for s := 0; s < bs; s += 512 {
		binary.LittleEndian.PutUint64(b[s:], lba)
		binary.LittleEndian.PutUint64(b[s+8:], ver)
		binary.LittleEndian.PutUint64(b[s+16:], tagMagic)
		for i := s + 24; i+8 <= s+512; i += 8 {
			binary.LittleEndian.PutUint64(b[i:], rng.Uint64())
		}
	}
	return b
}

// sectorVersions decodes the tag of each sector of a block: ok is false if
// a sector is neither zero nor tagged for lba.
func sectorVersions(b []byte, lba uint64) (vers []uint64, ok bool) {
	ok = true
	for s := 0; s < bs; s += 512 {
		sec := b[s : s+512]
		if allZero(sec) {
			vers = append(vers, 0)
			continue
		}
		if binary.LittleEndian.Uint64(sec[16:]) != tagMagic || binary.LittleEndian.Uint64(sec) != lba {
			ok = false
			vers = append(vers, 0)
			continue
		}
		vers = append(vers, binary.LittleEndian.Uint64(sec[8:]))
	}
	return vers, ok
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// ---- the model: newest version per block ----

// model holds each block's newest acknowledged version (0 = zeros, also
// after a discard, whose version number is then recorded in zeroVer).
type model struct {
	mu      sync.Mutex
	ver     []uint64 // newest version written (0 = never)
	zeroed  []bool   // the newest operation was a discard
	nextVer atomic.Uint64
}

func newModel(blocks int) *model {
	return &model{ver: make([]uint64, blocks), zeroed: make([]bool, blocks)}
}

// newVersion returns a fresh version number, larger than every earlier.
func (m *model) newVersion() uint64 { return m.nextVer.Add(1) }

func (m *model) set(lba, ver uint64, zero bool) {
	m.mu.Lock()
	m.ver[lba], m.zeroed[lba] = ver, zero
	m.mu.Unlock()
}

// want is what block lba must hold.
func (m *model) want(lba uint64) []byte {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.zeroed[lba] {
		return make([]byte, bs)
	}
	return blockData(lba, m.ver[lba])
}

// latest is the newest version number of lba (including a discard's).
func (m *model) latest(lba uint64) uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.ver[lba]
}

// ---- the backing device checker (contract §2.4) ----

// verDev wraps the backing device and fails the test when a write would
// put an older version of a block over a newer one, or another block's
// data, or a torn block. Zero sets the held version to what zeroVer says
// (the discard's version in the model); nil keeps 0.
type verDev struct {
	device.Device
	t       testing.TB
	mu      sync.Mutex
	held    []uint64
	zeroVer func(lba uint64) uint64
	// zeroed: the block holds the zeros of a Zero (a discard), the held
	// version: zeros written back over them (a gap read from the backing
	// device) are that version again.
	zeroed []bool
	writes atomic.Int64
	bad    atomic.Int64
}

// newVerDev wraps d; the held versions are decoded from d's contents (the
// highest sector version of each block, as a power cut may have torn it).
func newVerDev(t testing.TB, d device.Device, zeroVer func(uint64) uint64) *verDev {
	n := d.Size() / bs
	v := &verDev{Device: d, t: t, held: make([]uint64, n), zeroed: make([]bool, n), zeroVer: zeroVer}
	buf := make([]byte, bs)
	for lba := int64(0); lba < n; lba++ {
		_, err := d.ReadAt(buf, lba*bs)
		require.NoError(t, err)
		vers, _ := sectorVersions(buf, uint64(lba))
		for _, x := range vers {
			v.held[lba] = max(v.held[lba], x)
		}
	}
	return v
}

func (v *verDev) WriteAt(p []byte, off int64) (int, error) {
	v.writes.Add(1)
	if off%bs != 0 || len(p)%bs != 0 {
		v.fail("unaligned backing write of %d bytes at %d", len(p), off)
	}
	v.mu.Lock()
	for i := 0; i+bs <= len(p); i += bs {
		lba := uint64(off/bs) + uint64(i/bs)
		vers, ok := sectorVersions(p[i:i+bs], lba)
		if !ok {
			v.fail("backing write of block %d carries another block's data or garbage", lba)
			continue
		}
		for _, x := range vers[1:] {
			if x != vers[0] {
				v.fail("backing write of block %d is torn: sector versions %v", lba, vers)
			}
		}
		if vers[0] == 0 && v.zeroed[lba] {
			continue
		}
		if vers[0] < v.held[lba] {
			v.fail("§2.4 violated: backing write of block %d version %d over version %d", lba, vers[0], v.held[lba])
		}
		v.held[lba], v.zeroed[lba] = vers[0], false
	}
	v.mu.Unlock()
	return v.Device.WriteAt(p, off)
}

func (v *verDev) Zero(off, n int64) error {
	v.mu.Lock()
	for lba := uint64(off / bs); lba < uint64((off+n)/bs); lba++ {
		z := uint64(0)
		if v.zeroVer != nil {
			z = v.zeroVer(lba)
		}
		if z < v.held[lba] {
			v.fail("§2.4 violated: zeroing block %d (discard version %d) over version %d", lba, z, v.held[lba])
		}
		v.held[lba], v.zeroed[lba] = z, true
	}
	v.mu.Unlock()
	return v.Device.Zero(off, n)
}

func (v *verDev) fail(format string, args ...any) {
	v.bad.Add(1)
	v.t.Errorf(format, args...)
}

// ---- building a cache on in-memory devices ----

// cacheBytes sizes a cache device with at least slots data slots and a
// journal of journal blocks.
func cacheBytes(t testing.TB, slots int, journal uint64) int64 {
	for blocks := int64(slots) + 2 + int64(journal); ; blocks++ {
		g, err := layout.ComputeGeometry(blocks*bs, journal)
		if err == nil && g.SlotCount >= uint64(slots) {
			return blocks * bs
		}
		require.Less(t, blocks, int64(slots)*2+int64(journal)+64, "no geometry")
	}
}

type envConfig struct {
	hddBlocks int
	slots     int
	journal   uint64 // default 16
	clock     *fakeClock
	reserve   int // ReserveFree (default 2)
	// Wrappers between the cache and the devices (outside the checker).
	wrapSSD, wrapHDD func(device.Device) device.Device
}

type env struct {
	t              testing.TB
	cfg            envConfig
	ssdMem, hddMem *device.Mem
	ver            *verDev
	c              *blockcache.Cache
	m              *model
}

var hddID = [16]byte{0xdd, 1}

func newEnv(t testing.TB, cfg envConfig) *env {
	if cfg.journal == 0 {
		cfg.journal = 16
	}
	if cfg.reserve == 0 {
		cfg.reserve = 2
	}
	e := &env{t: t, cfg: cfg, m: newModel(cfg.hddBlocks)}
	e.ssdMem = device.NewMem(cacheBytes(t, cfg.slots, cfg.journal), [16]byte{0x55})
	e.hddMem = device.NewMem(int64(cfg.hddBlocks)*bs, hddID)
	require.NoError(t, blockcache.Format(e.ssdMem, e.hddMem, blockcache.FormatOptions{JournalBlocks: cfg.journal}))
	e.open(e.ssdMem, e.hddMem)
	return e
}

// open opens the cache on ssd and hdd (wrapped as configured).
func (e *env) open(ssd, hdd *device.Mem) {
	e.ver = newVerDev(e.t, hdd, e.m.latest)
	var s, h device.Device = ssd, e.ver
	if e.cfg.wrapSSD != nil {
		s = e.cfg.wrapSSD(s)
	}
	if e.cfg.wrapHDD != nil {
		h = e.cfg.wrapHDD(h)
	}
	opts := blockcache.Options{CheckpointInterval: -1, ReserveFree: e.cfg.reserve}
	if e.cfg.clock != nil {
		opts.Now = e.cfg.clock.Now
	}
	c, err := blockcache.Open(s, h, opts)
	require.NoError(e.t, err)
	e.c = c
}

func (e *env) close() {
	require.NoError(e.t, e.c.Close())
}

// write writes a new version of block lba and records it in the model.
func (e *env) write(lba uint64) uint64 {
	v := e.m.newVersion()
	_, err := e.c.WriteAt(blockData(lba, v), int64(lba)*bs)
	require.NoError(e.t, err)
	e.m.set(lba, v, false)
	return v
}

// discard discards blocks [lba, lba+n) and records it in the model.
func (e *env) discard(lba, n uint64) {
	v := e.m.newVersion()
	for i := lba; i < lba+n; i++ {
		e.m.set(i, v, true)
	}
	require.NoError(e.t, e.c.Discard(int64(lba)*bs, int64(n)*bs))
}

// checkReads asserts every block reads as the model's newest version.
func (e *env) checkReads(what string) {
	e.t.Helper()
	buf := make([]byte, bs)
	for lba := uint64(0); lba < uint64(e.cfg.hddBlocks); lba++ {
		_, err := e.c.ReadAt(buf, int64(lba)*bs)
		require.NoError(e.t, err)
		if want := e.m.want(lba); !bytes.Equal(buf, want) {
			e.t.Fatalf("%s: block %d reads %s, want version %d", what, lba, describe(buf, lba), e.m.latest(lba))
		}
	}
}

// checkBacking asserts the backing device holds the newest versions.
func (e *env) checkBacking(what string, hdd *device.Mem) {
	e.t.Helper()
	buf := make([]byte, bs)
	for lba := uint64(0); lba < uint64(e.cfg.hddBlocks); lba++ {
		_, err := hdd.ReadAt(buf, int64(lba)*bs)
		require.NoError(e.t, err)
		if want := e.m.want(lba); !bytes.Equal(buf, want) {
			e.t.Fatalf("%s: backing block %d holds %s, want version %d", what, lba, describe(buf, lba), e.m.latest(lba))
		}
	}
}

func describe(b []byte, lba uint64) string {
	if allZero(b) {
		return "zeros"
	}
	vers, ok := sectorVersions(b, lba)
	if !ok {
		return fmt.Sprintf("foreign data (sector versions %v)", vers)
	}
	return fmt.Sprintf("sector versions %v", vers)
}

// newTestDestager makes a destager whose goroutines are checked for leaks
// when the test ends.
func newTestDestager(t testing.TB, c *blockcache.Cache, p Policy, o options) *Destager {
	d := newDestager(c, p, testLogger(t), o)
	t.Cleanup(func() {
		d.Stop()
		require.Zero(t, d.live.Load(), "destager goroutines left running")
	})
	return d
}

func flushAll(t testing.TB, d *Destager) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	require.NoError(t, d.FlushAll(ctx, nil))
}

// ---- logging ----

// countingHandler counts log records per level and forwards them to t.Log.
type countingHandler struct {
	t      testing.TB
	counts *sync.Map // slog.Level -> *atomic.Int64
}

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(&countingHandler{t: t, counts: new(sync.Map)})
}

func (h *countingHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *countingHandler) Handle(_ context.Context, r slog.Record) error {
	v, _ := h.counts.LoadOrStore(r.Level, new(atomic.Int64))
	v.(*atomic.Int64).Add(1)
	return nil
}
func (h *countingHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *countingHandler) WithGroup(string) slog.Handler      { return h }

func logCount(d *Destager, level slog.Level) int64 {
	h, ok := d.log.Handler().(*countingHandler)
	if !ok {
		return -1
	}
	v, ok := h.counts.Load(level)
	if !ok {
		return 0
	}
	return v.(*atomic.Int64).Load()
}

// faultSwitch wraps a device in a device.Faulty and keeps it for the test.
type faultSwitch struct{ f *device.Faulty }

func (s *faultSwitch) wrap(d device.Device) device.Device {
	s.f = device.NewFaulty(d)
	return s.f
}

func isAligned(b []byte) bool {
	return len(b) == 0 || uintptr(unsafe.Pointer(&b[0]))%bs == 0
}
