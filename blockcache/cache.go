package blockcache

import (
	"crypto/rand"
	"errors"
	"fmt"
	"hash/maphash"
	"io/fs"
	"log/slog"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/wbcache/wbcache/device"
	"github.com/wbcache/wbcache/layout"
)

// BlockSize is the cache's unit of mapping.
const BlockSize = layout.BlockSize

// Sentinel errors.
var (
	// ErrClosed: the cache has been closed.
	ErrClosed = errors.New("blockcache: closed")
	// ErrFailed: the cache device failed in a way that cannot be retried
	// (a failed sync or journal write); the cache refuses further I/O and
	// the next Open recovers from what reached the device.
	ErrFailed = errors.New("blockcache: cache device failed")
	// ErrWrongBacking: the backing device is not the one the cache was
	// formatted with.
	ErrWrongBacking = errors.New("backing device does not match the cache")
	// ErrFormatted: Format refused to overwrite an existing cache.
	ErrFormatted = errors.New("cache device already holds a wbcache cache")
	// ErrInvalid: an argument is out of range. It wraps fs.ErrInvalid, which
	// the FUSE server answers with EINVAL.
	ErrInvalid = fmt.Errorf("%w", fs.ErrInvalid)
	// ErrCorruptData: a cache slot's data does not match its checksum.
	ErrCorruptData = errors.New("cache data corrupt")
	// ErrBadBacking: the backing device cannot be used (size not a
	// multiple of 4 KiB, empty).
	ErrBadBacking = errors.New("unusable backing device")
)

// Options tune an opened cache. The zero value is usable.
type Options struct {
	// Logger receives structured logs; nil discards them.
	Logger *slog.Logger
	// CheckpointInterval bounds the time between checkpoints while the
	// journal has records (default 30s; negative disables the timer).
	CheckpointInterval time.Duration
	// PromoteAfter is how many read misses of a block (counted in a small
	// sketch) happen before it is copied into the cache; 0 or 1 promotes on
	// the first miss. Negative disables promotion.
	PromoteAfter int
	// ReserveFree is how many free slots the reclaimer keeps ready by
	// evicting clean blocks (default 1/64 of the slots, at least 8).
	ReserveFree int
	// MaxOlderVersions bounds the slots that older versions kept for
	// ordered write-back may hold before ordering is suspended (default
	// a quarter of the slots).
	MaxOlderVersions int
	// NoBackgroundBackingSync turns off the reclaimer's once-a-second sync
	// of the backing device after writes sent around the cache (then only
	// Sync makes them durable, marks write-through blocks clean and lets
	// promotion resume). For tests.
	NoBackgroundBackingSync bool
	// NoPrefill skips the background pass that writes zeros over the
	// free slots the cache file's filesystem has not written yet
	// (prefill.go): for an open that only drains the cache (detach).
	NoPrefill bool
	// Now is the clock (tests inject one). Default time.Now.
	Now func() time.Time
	// shardSlots is the least slots per shard of the slot table (0: the
	// default); tests lower it to give small caches several shards.
	shardSlots int
}

// Cache is an open cache device in front of a backing device.
type Cache struct {
	ssd, hdd device.Device
	g        layout.Geometry
	uuid     [16]byte
	size     int64  // bytes of the virtual disk (= backing size)
	nblocks  uint64 // blocks of the virtual disk
	opts     Options
	log      *slog.Logger
	start    time.Time

	// Locks, in the order they are taken: ckptMu, stripes, journal room
	// (j.reserve), mu (all of the table's shards, or one), j.mu. What
	// each guards: doc.go, "Concurrency".
	stripes [nStripes]sync.RWMutex // per-LBA locks (stripeOf)
	gens    [nStripes]uint64       // mapping changes per stripe (see stripeGen)

	mode         atomic.Uint32
	promoteAfter atomic.Int32
	seqCutoff    atomic.Int64
	seqReads     seqTracker
	seqWrites    seqTracker
	pressure     chan struct{} // signalled when a writer waits for a free slot
	sketch       lockedSketch

	mu tableState

	j *journal
	// ssdAligned: the cache device takes only aligned buffers, so data
	// from the caller is copied before it is written there.
	ssdAligned bool
	// ckptHeld[cp][i] identifies (pageSum) what page i of checkpoint copy
	// cp holds, as this process wrote it; 0 when not known, so each copy
	// is written whole the first time. Guarded by ckptMu.
	ckptHeld [2][]uint64
	ckptSeed maphash.Seed

	ckptMu  sync.Mutex // serialises checkpoints and superblock writes
	sb      layout.Superblock
	ckptReq chan struct{}

	reclaimReq chan struct{}
	stop       chan struct{}
	wg         sync.WaitGroup

	epoch atomic.Uint32 // flush epoch: bumped by every Sync (noteEpoch)
	// epochMu guards epochStarts, when recent epochs began (ordered.go).
	epochMu     sync.Mutex
	epochStarts [256]epochStart
	failed      atomic.Pointer[error]
	closed      atomic.Bool
	// Foreground writes to the backing device (counted as each begins,
	// and as each ends), and how many of them the last backing sync
	// covered.
	hddStarted, hddWritten, hddSynced atomic.Uint64
	backingSyncErr                    atomic.Pointer[error] // sticky: a backing sync failed
	hddSyncFailures                   atomic.Uint64         // backing syncs that failed (BackingSyncFailures)
	// bsync runs one backing sync at a time, the destager's too
	// (SyncBacking), and lets callers whose writes the one in flight
	// covers wait for it (syncBacking).
	bsync struct {
		mu      sync.Mutex
		done    *sync.Cond
		running bool
		from    uint64 // hddWritten when the running sync started
	}
	// Sequence number of the newest record that dropped a clean copy
	// (written under mu, so it only grows).
	cleanUnmapSeq atomic.Uint64
	// Sequence number of the newest record appended when DirtyBlocks last
	// took a snapshot (it only grows): every block a snapshot returned
	// was mapped by a record no newer.
	snapSeq atomic.Uint64

	stats counters
}

// tableState is the slot table and what is kept with it. Lock and Unlock
// take every shard's lock (the whole table); the paths that touch one
// block take its shard's alone (Cache.lockLBA). The fields outside the
// table are guarded by the whole table's lock.
type tableState struct {
	t        slotTable
	freed    *sync.Cond     // broadcast when slots become free or clean
	inflight map[uint64]int // LBAs with a destage in flight
	// Of those, the LBAs whose backing write is under way (BeginWriteBack
	// to EndWriteBack, even if claimed), and those claimed by a writer of
	// the backing device in place before it began (claimBackingLocked):
	// their destage must not write them.
	writing     map[uint64]int
	claimed     map[uint64]bool
	overwriting []lbaRange   // ranges written on the backing device under their cached copies (holdOverwrite)
	through     []DirtyBlock // write-through blocks waiting for a backing sync
	zeroing     int          // free slots the prefill pass holds (prefill.go)
	order       orderState
}

// Lock locks the whole table: every shard, in order. It does not hold
// some shards while it waits for another: writers of the shards it holds
// would queue behind it, and the holder it waits for may itself be
// waiting to run. So it tries each lock; at the first busy one it lets
// go of those it took, waits for that one to be free, and tries again.
// After a few rounds it waits for each in turn, so it cannot starve.
func (m *tableState) Lock() {
	sh := m.t.shards
	for round := 0; round < 4; round++ {
		i := 0
		for i < len(sh) && sh[i].mu.TryLock() {
			i++
		}
		if i == len(sh) {
			return
		}
		for k := i - 1; k >= 0; k-- {
			sh[k].mu.Unlock()
		}
		sh[i].mu.Lock()
		sh[i].mu.Unlock()
	}
	for i := range sh {
		sh[i].mu.Lock()
	}
}

// Unlock unlocks the whole table.
func (m *tableState) Unlock() {
	for i := len(m.t.shards) - 1; i >= 0; i-- {
		m.t.shards[i].mu.Unlock()
	}
}

// lockLBA locks the table for a change or lookup of block lba: its
// shard alone, unless ordered write-back is in force (ordered.go), whose
// decisions span the table; then the whole table. It returns the shard
// locked, nil for the whole table (unlockLBA).
func (c *Cache) lockLBA(lba uint64) *tableShard {
	sh := c.mu.t.shardOf(lba)
	sh.mu.Lock()
	if len(c.mu.t.shards) > 1 && c.orderingLocked() {
		// The order setting changes only under the whole table's lock,
		// which this shard's lock excludes: what was read holds.
		sh.mu.Unlock()
		c.mu.Lock()
		return nil
	}
	return sh
}

func (c *Cache) unlockLBA(sh *tableShard) {
	if sh != nil {
		sh.mu.Unlock()
	} else {
		c.mu.Unlock()
	}
}

// lockedSketch is the promotion sketch, with a lock of its own.
type lockedSketch struct {
	mu sync.Mutex
	s  promoteSketch
}

func (l *lockedSketch) hit(lba uint64, after int) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.s.hit(lba, after)
}

type pendingFree struct {
	slot uint32
	seq  uint64
}

type lbaRange struct{ lo, hi uint64 }

// nStripes is how many stripe locks there are: enough that the runs of a
// stream in flight together (eight 1 MiB requests are 2,048 blocks) fit
// in one window of stripeOf without sharing a stripe.
const nStripes = 4096

// stripeOf is the stripe of block lba. Each aligned window of nStripes
// blocks (16 MiB) maps onto the stripes one to one, rotated by a hash of
// the window: a run of blocks inside a window takes consecutive stripes,
// so requests over neighbouring ranges (a stream's requests in flight
// together, which each lock their whole run: lockStripes) never share
// one, while blocks a multiple of 16 MiB apart (the same place in every
// block group of a filesystem) land on stripes as unrelated as random
// blocks do. With stripes chosen by a hash of each block, a 1 MiB run
// took about a fifth of 1,024 stripes, and two runs in flight almost
// always shared one, so a stream around the cache went one request at a
// time.
func stripeOf(lba uint64) int { return int((lba + hashLBA(lba/nStripes)) % nStripes) }

func (c *Cache) stripe(lba uint64) *sync.RWMutex { return &c.stripes[stripeOf(lba)] }

// Size is the size of the virtual disk in bytes.
func (c *Cache) Size() int64 { return c.size }

// Geometry returns the cache device layout.
func (c *Cache) Geometry() layout.Geometry { return c.g }

// UUID returns the cache's UUID.
func (c *Cache) UUID() [16]byte { return c.uuid }

// Backing returns the backing device (the destager writes to it).
func (c *Cache) Backing() device.Device { return c.hdd }

// FormatOptions control Format.
type FormatOptions struct {
	// JournalBlocks sizes the journal ring (0 = default for the size).
	JournalBlocks uint64
	// Force overwrites an existing cache (its dirty data is lost).
	Force bool
	// Settings are stored in the superblock as the initial policy.
	Settings layout.Settings
}

// Format writes an empty cache onto ssd for the backing device hdd. It
// refuses a device that already holds a cache unless opts.Force is set.
func Format(ssd, hdd device.Device, opts FormatOptions) error {
	if err := checkBacking(hdd); err != nil {
		return err
	}
	if err := checkSettings(opts.Settings); err != nil {
		return err
	}
	g, err := layout.ComputeGeometry(ssd.Size(), opts.JournalBlocks)
	if err != nil {
		return err
	}
	if !opts.Force {
		sb, err := readSuperblock(ssd)
		if err == nil {
			return fmt.Errorf("%w (UUID %x, %d slots, clean=%v)", ErrFormatted, sb.UUID, sb.Geometry.SlotCount, sb.Clean())
		}
		if errors.Is(err, layout.ErrCorrupt) || errors.Is(err, layout.ErrVersion) || errors.Is(err, layout.ErrGeometry) {
			return fmt.Errorf("%w: it holds a damaged wbcache superblock: %w", ErrFormatted, err)
		}
		if !errors.Is(err, layout.ErrNotFormatted) {
			return fmt.Errorf("format: %w", err)
		}
		if err := superblocksLost(ssd, err); errors.Is(err, ErrSuperblocksLost) {
			return fmt.Errorf("%w: %w", ErrFormatted, err)
		}
	}
	if err := reserveCache(ssd, nil); err != nil {
		return err
	}
	// Only speed depends on it (prefill.go): a failure leaves the
	// metadata area to be marked written by its first writes.
	_ = writeAheadMeta(ssd, g)
	var uuid [16]byte
	if _, err := rand.Read(uuid[:]); err != nil {
		return err
	}
	sb := layout.Superblock{
		Generation:      1,
		UUID:            uuid,
		Flags:           layout.FlagClean,
		Geometry:        g,
		BackingSize:     uint64(hdd.Size()),
		BackingIdentity: hdd.Identity(),
		Settings:        opts.Settings,
		// Checked before anything is written: a long one is cut.
		BackingDescription: layout.TruncateDescription(device.Description(hdd)),
	}
	// An empty checkpoint in copy 0, generation 1.
	sb.CheckpointGeneration = 1
	sb.CheckpointIncarnation = 1
	page := device.AlignedBuffer(BlockSize)
	for i := uint64(0); i < g.CheckpointBlocks; i++ {
		clear(page)
		kind, idx := layout.MapPage, i
		if i >= g.MapPages {
			kind, idx = layout.BitmapPage, i-g.MapPages
		}
		layout.SealPage(page, kind, uuid, 1, uint32(idx))
		if _, err := ssd.WriteAt(page, g.MapPageOffset(0, i)); err != nil {
			return fmt.Errorf("format: writing checkpoint: %w", err)
		}
	}
	// Invalidate the other superblock copy, then write ours.
	clear(page)
	if _, err := ssd.WriteAt(page, layout.SuperblockOffset(0)); err != nil {
		return fmt.Errorf("format: %w", err)
	}
	if err := ssd.Sync(); err != nil {
		return fmt.Errorf("format: sync: %w", err)
	}
	if err := writeSuperblock(ssd, &sb); err != nil {
		return fmt.Errorf("format: %w", err)
	}
	// And the same into copy 0, so that both copies are valid from the
	// start (a copy that does not decode is degraded redundancy).
	sb.Generation++
	if err := writeSuperblock(ssd, &sb); err != nil {
		return fmt.Errorf("format: %w", err)
	}
	return nil
}

func checkBacking(hdd device.Device) error {
	if hdd.Size() <= 0 || hdd.Size()%BlockSize != 0 {
		return fmt.Errorf("%w: size %d bytes is not a positive multiple of 4096", ErrBadBacking, hdd.Size())
	}
	return nil
}

// readSuperblock reads both copies and returns the valid newest one.
func readSuperblock(ssd device.Device) (layout.Superblock, error) {
	sb, _, err := superblockCopies(ssd)
	return sb, err
}

// writeSuperblock writes sb (its generation picks the copy) and syncs.
func writeSuperblock(ssd device.Device, sb *layout.Superblock) error {
	buf := device.AlignedBuffer(BlockSize)
	sb.Encode(buf)
	if _, err := ssd.WriteAt(buf, layout.SuperblockOffset(sb.Copy())); err != nil {
		return fmt.Errorf("writing superblock: %w", err)
	}
	if err := ssd.Sync(); err != nil {
		return fmt.Errorf("%w: sync after superblock: %w", ErrFailed, err)
	}
	return nil
}

// ReadSuperblock returns the current superblock of a cache device.
func ReadSuperblock(ssd device.Device) (layout.Superblock, error) { return readSuperblock(ssd) }

// Open opens a formatted cache, recovering after an unclean stop: it loads
// the checkpoint, replays the journal, verifies replayed data, writes a
// fresh checkpoint and marks the superblock in use.
func Open(ssd, hdd device.Device, opts Options) (*Cache, error) {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.CheckpointInterval == 0 {
		opts.CheckpointInterval = 30 * time.Second
	}
	sb, lost, err := openSuperblock(ssd, hdd, opts.Logger)
	if err != nil {
		return nil, err
	}
	// Before anything is written: a cache file with holes on a full
	// filesystem would fail its first writes, or fault in the journal.
	if err := reserveCache(ssd, opts.Logger); err != nil {
		return nil, err
	}
	if opts.ReserveFree == 0 {
		opts.ReserveFree = max(8, int(sb.Geometry.SlotCount/64))
	}
	opts.ReserveFree = min(opts.ReserveFree, max(1, int(sb.Geometry.SlotCount/4)))
	c := &Cache{
		ssd: ssd, hdd: hdd, g: sb.Geometry, uuid: sb.UUID,
		size: hdd.Size(), nblocks: uint64(hdd.Size()) / BlockSize,
		opts: opts, log: opts.Logger, start: opts.Now(), sb: sb,
		ckptReq: make(chan struct{}, 1), reclaimReq: make(chan struct{}, 1), pressure: make(chan struct{}, 1),
		stop: make(chan struct{}),
	}
	c.carryDirtyAge(opts.Now())
	c.ssdAligned = device.NeedsAlignment(ssd)
	c.mu.freed = sync.NewCond(&c.mu)
	c.bsync.done = sync.NewCond(&c.bsync.mu)
	c.promoteAfter.Store(int32(opts.PromoteAfter))
	c.applySettings(sb.Settings)
	c.mu.inflight = make(map[uint64]int)
	c.mu.writing = make(map[uint64]int)
	c.mu.claimed = make(map[uint64]bool)
	c.sketch.s = newPromoteSketch()
	t0 := opts.Now()
	rec, err := c.recover()
	if err != nil {
		return nil, err
	}
	c.stats.recoveryNanos.Store(int64(opts.Now().Sub(t0)))
	c.setEpochLocked(rec.epoch + 1)
	c.mu.t.startOf = c.epochStarted
	c.ckptHeld = [2][]uint64{make([]uint64, c.g.CheckpointBlocks), make([]uint64, c.g.CheckpointBlocks)}
	c.ckptSeed = maphash.MakeSeed()
	c.j, err = newJournal(ssd, c.g, c.uuid, rec.incarnation, rec.endLSN, rec.endCount, Ordered(sb.Settings), c.requestCheckpoint)
	if err != nil {
		return nil, err
	}
	switch mapped, why := device.Mapped(c.j.reg); {
	case mapped:
		c.log.Info("journal writes: shared mapping")
	case why != nil:
		c.log.Info(fmt.Sprintf("journal writes: pwrite (the cache file cannot be mapped: %v)", why))
	default:
		c.log.Info("journal writes: pwrite")
	}
	// A fresh checkpoint makes the replayed state the new base, in the new
	// incarnation, and marks the cache in use (not clean).
	if err := c.checkpoint(false); err != nil {
		c.j.close()
		return nil, fmt.Errorf("writing the post-recovery checkpoint: %w", err)
	}
	for _, what := range lost {
		c.log.Warn("degraded redundancy, repaired by the post-recovery checkpoint: " + what)
	}
	c.log.Info("cache opened", "slots", c.g.SlotCount, "valid", rec.valid, "dirty", rec.dirty,
		"replayed_records", rec.records, "dropped_records", rec.dropped, "journal_holes", c.stats.replayHoles.Load(), "was_clean", sb.Clean(),
		"recovery", time.Duration(c.stats.recoveryNanos.Load()))
	c.wg.Add(2)
	go c.checkpointer()
	go c.reclaimer()
	if !opts.NoPrefill {
		c.startPrefill()
	}
	return c, nil
}

// openSuperblock reads the superblock for Open and checks it against both
// devices. It also returns what redundancy is degraded (see
// redundancy.go), which Open's post-recovery checkpoint repairs.
func openSuperblock(ssd, hdd device.Device, log *slog.Logger) (layout.Superblock, []string, error) {
	sb, copyErrs, err := superblockCopies(ssd)
	if err != nil {
		if lost := superblocksLost(ssd, err); lost != err {
			return sb, nil, lost
		}
		return sb, nil, err
	}
	if err := sb.Geometry.Validate(ssd.Size()); err != nil {
		return sb, nil, err
	}
	if err := checkBacking(hdd); err != nil {
		return sb, nil, err
	}
	note, err := matchBacking(&sb, hdd)
	if err != nil {
		return sb, nil, err
	}
	if note != "" {
		log.Warn(note)
	}
	lost, err := degraded(ssd, &sb, copyErrs)
	return sb, lost, err
}

// JournalWrites says how journal records reach the cache device: "mmap"
// (copied into a shared mapping of the journal ring) or "pwrite" (a write
// of the journal block per record, where the cache device cannot be
// mapped).
func (c *Cache) JournalWrites() string {
	if mapped, _ := device.Mapped(c.j.reg); mapped {
		return "mmap"
	}
	return "pwrite"
}

// reserver is a cache device that can allocate its blocks ahead
// (device.File).
type reserver interface {
	Reserve() (unallocated int64, err error)
}

// reserveCache allocates the holes of a cache file, so that its filesystem
// filling up can fail neither a slot write nor a store into the journal's
// mapping. Without the space it fails, saying so, having changed nothing.
// Where the filesystem cannot allocate ahead, it logs a warning on log
// (if not nil) and leaves the file as it is.
func reserveCache(ssd device.Device, log *slog.Logger) error {
	r, ok := ssd.(reserver)
	if !ok {
		return nil
	}
	left, err := r.Reserve()
	if err != nil {
		if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
			return fmt.Errorf("no space left on the cache device: %w", err)
		}
		return fmt.Errorf("allocating the cache file: %w", err)
	}
	if left > 0 && log != nil {
		log.Warn("the filesystem of the cache file cannot allocate it ahead: if that filesystem fills up, writes fail with ENOSPC (no space left on the cache device)",
			"unallocated_bytes", left)
	}
	return nil
}

// fail marks the cache dead after an unrecoverable device error.
func (c *Cache) fail(err error) error {
	if !errors.Is(err, ErrFailed) {
		err = fmt.Errorf("%w: %w", ErrFailed, err)
	}
	if c.failed.CompareAndSwap(nil, &err) {
		c.log.Error("cache failed: refusing further I/O until restart", "err", err)
	}
	c.mu.Lock()
	c.mu.freed.Broadcast()
	c.mu.Unlock()
	return err
}

// usable returns an error when the cache is closed or failed.
func (c *Cache) usable() error {
	if p := c.failed.Load(); p != nil {
		return *p
	}
	if c.closed.Load() {
		return ErrClosed
	}
	return nil
}

// Close checkpoints and marks the cache clean. Dirty blocks stay in the
// cache (it is persistent); use the destager's FlushAll first to empty it.
func (c *Cache) Close() error {
	if c.closed.Swap(true) {
		return ErrClosed
	}
	close(c.stop)
	c.j.stop()
	c.mu.Lock()
	c.mu.freed.Broadcast()
	c.mu.Unlock()
	c.wg.Wait()
	var err error
	if c.failed.Load() == nil {
		err = c.checkpoint(true)
	} else {
		err = *c.failed.Load()
	}
	c.j.close()
	return err
}

// tick is the age clock for dirty blocks: seconds since c.start, which
// Open sets back by the age of the blocks it finds dirty (carryDirtyAge).
func (c *Cache) tick() uint32 { return uint32(c.opts.Now().Sub(c.start) / time.Second) }
