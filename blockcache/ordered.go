package blockcache

import (
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/wbcache/wbcache/device"
	"github.com/wbcache/wbcache/layout"
)

// Ordered write-back (docs/design.md §2.7): at every instant the backing
// device alone holds a state a power cut could have left, consistent with
// the client's fsync barriers.
//
// Every Sync begins a new flush epoch; each dirty version carries the
// epoch its write belongs to (slotTable.epoch), read under the lock of
// its block's shard when its record is appended, so each shard's versions
// are mapped in ascending epoch order (while ordering is in force writes
// lock the whole table, so all are).
// While ordering is in force:
//
//   - DirtyBlocks offers only the versions of the oldest epoch with dirty
//     versions; the destager writes them in sorted, coalesced runs, syncs
//     the backing device and completes them, and only then does the next
//     epoch become the oldest. Within an epoch any subset and any order
//     is allowed, as on a real disk.
//   - A write that supersedes a dirty version of an older epoch keeps that
//     version as an older version (MAP with RecordKeepOld): out of the
//     index, still dirty, written back in its epoch and then freed. A
//     version of the same epoch is superseded as before (the newer data
//     counts as written in that epoch, which a disk may also show).
//   - An in-place rewrite keeps the slot's epoch: no sync of the journal
//     has begun since the slot was mapped, so the Syncs begun since are
//     all still running and the write may count as before them.
//   - Nothing is written to the backing device in place (write-around,
//     write-through, streams) while a dirty version of an older epoch
//     exists ("behind"): such writes go into the cache. A Discard first
//     writes back everything older than its epoch (catchUp).
//
// The backing device is then consistent through the epoch before the
// oldest dirty one. Older versions may hold at most a quarter of the slots
// (and span at most maxEpochSpan epochs, which the checkpoint's 24-bit
// epochs need). At the bound ordering is suspended: the superblock is
// marked (FlagOrderBroken) before the first write that breaks the order,
// so a restart never believes the backing device consistent when it is
// not; write-back runs in address order (each block's versions still
// oldest first, so the backing device only moves forward), and ordering
// resumes once no dirty version older than the current epoch is left and
// the backing device is synced.

// maxEpochSpan bounds the epochs between the oldest dirty version and the
// newest: checkpoints keep 24 bits of each version's epoch.
const maxEpochSpan = 1 << (layout.EpochBits - 1)

// orderState is the write-back order, guarded by Cache.mu (the whole
// table; a shard's lock is enough to read it), but inForce, which note()
// keeps equal to what Order reports as in force, for readers that must
// not take Cache.mu, and unkept (atomic).
type orderState struct {
	inForce atomic.Bool
	ordered bool // the setting
	// suspended says why ordering is not in force ("" when it is, or
	// when the order is unordered); broken that the superblock says so.
	suspended   string
	since       time.Time
	broken      bool
	persisting  bool // a goroutine is writing the superblock for suspended
	suspensions uint64
	// unkept is the newest epoch in which a write superseded a dirty
	// version of an earlier epoch without keeping it (ordering off): that
	// block's state as of the end of the epoch before is lost, so
	// ordering can resume only in a later epoch. Such writes hold only
	// their block's shard, so it is atomic: 0 when there was none, else
	// 1<<32 | epoch (noteUnkept, unkeptEpoch).
	unkept atomic.Uint64
}

// noteUnkept records that a write of epoch e superseded a dirty version
// without keeping it, keeping the newest such epoch.
func (o *orderState) noteUnkept(e uint32) {
	for {
		old := o.unkept.Load()
		if old != 0 && !epochBefore(uint32(old), e) {
			return
		}
		if o.unkept.CompareAndSwap(old, 1<<32|uint64(e)) {
			return
		}
	}
}

// unkeptEpoch returns the newest epoch noted by noteUnkept.
func (o *orderState) unkeptEpoch() (uint32, bool) {
	v := o.unkept.Load()
	return uint32(v), v != 0
}

// note updates inForce after a change.
func (o *orderState) note() { o.inForce.Store(o.ordered && o.suspended == "" && !o.broken) }

// maxOlder is the most slots older versions may hold before ordering is
// suspended.
func (c *Cache) maxOlder() int {
	if c.opts.MaxOlderVersions > 0 {
		return c.opts.MaxOlderVersions
	}
	return max(1, int(c.g.SlotCount/4))
}

// orderingLocked reports whether write-back is kept in order: while
// ordering is in force, from the moment it resumes, and until the
// superblock says that it is suspended.
func (c *Cache) orderingLocked() bool {
	o := &c.mu.order
	return o.ordered && (o.suspended == "" || !o.broken)
}

// behindLocked reports whether a dirty version of an epoch before e
// exists while ordering is in force: then nothing of epoch e may be
// written to the backing device in place.
func (c *Cache) behindLocked(e uint32) bool {
	if !c.orderingLocked() {
		return false
	}
	o, ok := c.mu.t.oldestEpoch()
	return ok && epochBefore(o, e)
}

// keepOlderLocked decides whether a write of epoch e that supersedes slot
// old keeps it as an older version.
func (c *Cache) keepOlderLocked(old, e uint32) bool {
	t := &c.mu.t
	if t.flags[old]&(fValid|fDirty|fLost) != fValid|fDirty || !epochBefore(t.epoch[old], e) {
		return false
	}
	if !c.orderingLocked() {
		c.mu.order.noteUnkept(e)
		return false
	}
	if n := len(t.older); n >= c.maxOlder() {
		c.suspendLocked(fmt.Sprintf("older versions fill %d slots, the bound (a quarter of the cache)", n))
	} else if o, ok := t.oldestEpoch(); ok && e-o >= maxEpochSpan {
		c.suspendLocked(fmt.Sprintf("the oldest dirty version is %d epochs old", e-o))
	}
	// Until the superblock says ordering is suspended, the order is kept
	// (the bound is exceeded for that long).
	return c.orderingLocked()
}

// suspendLocked suspends ordered write-back: it marks the superblock in
// the background and, once that is durable, lets write-back run in
// address order.
func (c *Cache) suspendLocked(why string) {
	o := &c.mu.order
	if !o.ordered || o.suspended != "" {
		return
	}
	o.suspended, o.since = why, c.opts.Now()
	o.note()
	o.suspensions++
	c.log.Warn("ordered write-back suspended: the backing device alone is no longer a consistent point in time; "+
		"ordering resumes once the write-back has caught up", "reason", why)
	if !o.persisting {
		o.persisting = true
		c.wg.Add(1)
		go c.persistOrder()
	}
}

// persistOrder writes the superblock until its FlagOrderBroken matches
// the order state, then applies it.
func (c *Cache) persistOrder() {
	defer c.wg.Done()
	for {
		c.mu.Lock()
		want := c.mu.order.suspended != "" || !c.mu.order.ordered
		if want == c.mu.order.broken || c.usable() != nil {
			c.mu.order.persisting = false
			c.mu.Unlock()
			return
		}
		c.mu.Unlock()
		if err := c.writeOrderFlag(want); err != nil {
			c.log.Error("writing the superblock for the write-back order failed", "err", err)
			c.mu.Lock()
			c.mu.order.persisting = false
			c.mu.Unlock()
			return
		}
		c.mu.Lock()
		c.mu.order.broken = want
		c.mu.order.note()
		c.mu.freed.Broadcast()
		c.mu.Unlock()
	}
}

// writeOrderFlag writes a superblock with FlagOrderBroken set or clear.
func (c *Cache) writeOrderFlag(broken bool) error {
	c.ckptMu.Lock()
	defer c.ckptMu.Unlock()
	sb := c.sb
	if (sb.Flags&layout.FlagOrderBroken != 0) == broken {
		return nil
	}
	sb.Generation++
	sb.Flags ^= layout.FlagOrderBroken
	if err := writeSuperblock(c.ssd, &sb); err != nil {
		return c.fail(err)
	}
	c.sb = sb
	return nil
}

// maybeResumeLocked puts ordering back in force once no dirty version
// older than the current epoch is left, no version of an earlier epoch
// was superseded unkept in the current one, and every write to the
// backing device in place is synced: the backing device then holds every
// block as it was at the end of the epoch before the current one.
func (c *Cache) maybeResumeLocked() {
	o := &c.mu.order
	if !o.ordered || o.suspended == "" || o.persisting {
		return
	}
	cur := c.epoch.Load()
	e, dirty := c.mu.t.oldestEpoch()
	if dirty && epochBefore(e, cur) {
		return
	}
	// With no dirty version at all the backing device holds every block
	// as it is now, whatever was superseded before.
	if u, set := o.unkeptEpoch(); dirty && set && !epochBefore(u, cur) {
		return
	}
	if len(c.mu.t.older) > 0 {
		return // lost older versions wait for a discard or a rewrite
	}
	if c.hddWritten.Load() != c.hddSynced.Load() {
		return
	}
	if c.j == nil || !c.j.chainedNow() {
		return // a sync ends the journal's block of records checked alone first
	}
	c.log.Info("ordered write-back back in force", "suspended_for", c.opts.Now().Sub(o.since).Round(time.Millisecond).String(), "reason_was", o.suspended)
	o.suspended = ""
	o.note()
	o.persisting = true
	c.wg.Add(1)
	go c.persistOrder()
}

// setOrderLocked applies the order setting and what the superblock says
// (broken: FlagOrderBroken). Ordering turned on over a backing device
// written out of order is suspended until the write-back catches up.
func (c *Cache) setOrderLocked(ordered, broken bool) {
	o := &c.mu.order
	o.ordered, o.broken = ordered, broken
	if c.j != nil {
		c.j.setChained(ordered) // journal.go: ordered write-back chains its records
	}
	switch {
	case !ordered:
		o.suspended = ""
	case broken && o.suspended == "":
		o.suspended, o.since = "the backing device was written out of order before; waiting for the write-back to catch up", c.opts.Now()
		// What superseded what before is not known: resume no sooner
		// than the epoch after this one.
		o.unkept.Store(1<<32 | uint64(c.epoch.Load()))
	}
	o.note()
}

// Ordered reports whether the settings select ordered write-back. It is
// opt-in (README, "Write-back order"): unset means unordered.
func Ordered(s layout.Settings) bool {
	return s.Has(layout.SetOrder) && s.Order == layout.OrderOrdered
}

// noteEpoch begins a new flush epoch and remembers when.
func (c *Cache) noteEpoch() {
	c.epochMu.Lock()
	c.setEpochLocked(c.epoch.Add(1))
	c.epochMu.Unlock()
}

// setEpochLocked records that epoch e begins now (epochMu held, or Open).
func (c *Cache) setEpochLocked(e uint32) {
	c.epoch.Store(e)
	c.epochStarts[e%uint32(len(c.epochStarts))] = epochStart{e: e, at: c.opts.Now().UnixNano()}
}

type epochStart struct {
	e  uint32
	at int64
}

// epochStarted returns when epoch e began (unix ns), or 0 if that is not
// known (it began before Open, or too many epochs ago: the table of
// epochs with dirty versions keeps the time of each, read from here when
// the epoch's first version is mapped, while it is still recent).
func (c *Cache) epochStarted(e uint32) int64 {
	c.epochMu.Lock()
	defer c.epochMu.Unlock()
	if s := c.epochStarts[e%uint32(len(c.epochStarts))]; s.e == e {
		return s.at
	}
	return 0
}

// OrderStatus says how far behind the backing device is.
type OrderStatus struct {
	// Order is "ordered" or "unordered" (the setting).
	Order string `json:"order"`
	// InForce: the backing device alone is a consistent point in time.
	InForce bool `json:"in_force"`
	// Suspended says why ordering is suspended ("" when it is not).
	Suspended string `json:"suspended,omitempty"`
	// ConsistentEpoch: the backing device holds every write of the flush
	// epochs up to this one (each Sync begins an epoch). Valid with
	// InForce.
	ConsistentEpoch uint32 `json:"consistent_epoch"`
	// ConsistentUnixNano: every write covered by a completed Sync that
	// began before this time (unix ns) is on the backing device; 0 when
	// unknown (not in force, or the point is older than this mount).
	ConsistentUnixNano int64 `json:"consistent_unix_nano"`
	// BehindEpochs: epochs between the backing device's state and now.
	BehindEpochs uint32 `json:"behind_epochs"`
	// OlderVersions: slots holding older dirty versions of blocks.
	OlderVersions int `json:"older_versions"`
	// Suspensions counts the times ordering was suspended since Open.
	Suspensions uint64 `json:"suspensions"`
}

// Order reports the write-back order and how far behind the backing
// device is.
func (c *Cache) Order() OrderStatus {
	c.mu.Lock()
	c.maybeResumeLocked()
	o := &c.mu.order
	t := &c.mu.t
	cur := c.epoch.Load()
	st := OrderStatus{Order: "unordered", OlderVersions: len(t.older), Suspensions: o.suspensions, Suspended: o.suspended}
	if o.ordered && o.suspended == "" && o.broken {
		st.Suspended = "resuming: writing the superblock"
	}
	if o.ordered {
		st.Order = "ordered"
	}
	st.InForce = o.inForce.Load()
	oldest, dirty := t.oldestEpochStart()
	synced := c.hddWritten.Load() == c.hddSynced.Load()
	c.mu.Unlock()
	if !st.InForce {
		return st
	}
	switch {
	case dirty:
		st.ConsistentEpoch = oldest.e - 1
		st.ConsistentUnixNano = oldest.at
	case synced:
		st.ConsistentEpoch = cur
		st.ConsistentUnixNano = c.opts.Now().UnixNano()
	default:
		st.ConsistentEpoch = cur - 1
		st.ConsistentUnixNano = c.epochStarted(cur)
	}
	st.BehindEpochs = cur - st.ConsistentEpoch
	return st
}

// catchUp writes back, in epoch order, every dirty version of an epoch
// before e, the way the destager does (pin, read, write the backing
// device, sync it, complete), waiting for versions another destage has in
// flight. Discard calls it before it zeroes the backing device.
func (c *Cache) catchUp(e uint32) error {
	for {
		c.mu.Lock()
		behind := c.behindLocked(e)
		c.mu.Unlock()
		if !behind {
			return nil
		}
		blocks, err := c.Pin(c.DirtyBlocks(nil))
		if err != nil {
			return err
		}
		if len(blocks) == 0 {
			// The rest are pinned by the destager: wait for it.
			c.mu.Lock()
			if c.behindLocked(e) && c.usable() == nil {
				c.mu.freed.Wait()
			}
			c.mu.Unlock()
			if err := c.usable(); err != nil {
				return err
			}
			continue
		}
		if err := c.writeBackPinned(blocks); err != nil {
			return err
		}
	}
}

// maxCatchUpRun is the most blocks catchUp writes in one request (1 MiB).
const maxCatchUpRun = 256

// writeBackPinned writes pinned blocks to the backing device, syncs it and
// completes them (blocks whose slots fail their checksums are left out, as
// the destager does: Complete never cleans a lost one; so are blocks that
// a write of the backing device in place claimed, completed unwritten).
func (c *Cache) writeBackPinned(blocks []DirtyBlock) error {
	since := c.BackingSyncFailures()
	buf := device.AlignedBuffer(len(blocks) * BlockSize)
	err := c.ReadSlots(blocks, buf)
	skip := map[int]bool{}
	if lost := (*LostBlocksError)(nil); errors.As(err, &lost) {
		for _, i := range lost.Lost {
			skip[i] = true
		}
		err = nil
	}
	began := err == nil
	var claimed []int
	if began {
		claimed = c.BeginWriteBack(blocks)
		for _, i := range claimed {
			skip[i] = true
		}
	}
	// Runs of consecutive blocks (DirtyBlocks sorts them) go in one write.
	for i := 0; i < len(blocks) && err == nil; {
		if skip[i] {
			i++
			continue
		}
		j := i + 1
		for j < len(blocks) && !skip[j] && blocks[j].LBA == blocks[j-1].LBA+1 && j-i < maxCatchUpRun {
			j++
		}
		if _, werr := c.hdd.WriteAt(buf[i*BlockSize:j*BlockSize], int64(blocks[i].LBA)*BlockSize); werr != nil {
			c.stats.backingErrors.Add(1)
			err = fmt.Errorf("writing back blocks %d-%d before a discard: %w", blocks[i].LBA, blocks[j-1].LBA, werr)
		}
		i = j
	}
	if began {
		c.EndWriteBack(blocks)
	}
	if err == nil {
		if serr := c.SyncBacking(since); serr != nil {
			c.stats.backingErrors.Add(1)
			err = fmt.Errorf("syncing the backing device before a discard: %w", serr)
		}
	}
	if err != nil {
		c.Complete(blocks, false)
		return err
	}
	if len(claimed) == 0 {
		return c.Complete(blocks, true)
	}
	written, taken := SplitClaimed(blocks, claimed)
	return errors.Join(c.Complete(taken, false), c.Complete(written, true))
}
