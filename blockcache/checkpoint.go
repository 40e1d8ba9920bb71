package blockcache

import (
	"fmt"
	"math"
	"time"

	"github.com/wbcache/wbcache/device"
	"github.com/wbcache/wbcache/layout"
)

// checkpoint writes the slot map and dirty bitmap to the idle checkpoint
// copy and names it in a new superblock, which frees the journal before the
// replay LSN. The pages are copied from live state a page at a time
// (fuzzy): replay starts at the block that was open when copying began, and
// records are absolute, so replaying ones whose effect a page already holds
// is harmless. All records appended before the last page was copied are
// made durable before the superblock is written.
func (c *Cache) checkpoint(clean bool) error {
	c.ckptMu.Lock()
	defer c.ckptMu.Unlock()
	if clean {
		// Seal the open block first, so a clean checkpoint leaves nothing
		// to replay.
		if err := c.syncJournal(); err != nil {
			return err
		}
	}
	replay := c.j.checkpointLSN()
	sb := c.sb
	cp := 1 - int(sb.CheckpointCopy)
	gen := sb.CheckpointGeneration + 1
	const chunk = 64
	buf := device.AlignedBuffer(chunk * BlockSize)
	oldest := uint32(math.MaxUint32)
	for first := uint64(0); first < c.g.CheckpointBlocks; first += chunk {
		nb := min(chunk, c.g.CheckpointBlocks-first)
		for k := uint64(0); k < nb; k++ {
			oldest = min(oldest, c.encodePage(buf[k*BlockSize:(k+1)*BlockSize], first+k, gen))
		}
		if _, err := c.ssd.WriteAt(buf[:nb*BlockSize], c.g.MapPageOffset(cp, first)); err != nil {
			c.stats.cacheErrors.Add(1)
			return fmt.Errorf("writing checkpoint: %w", err)
		}
	}
	if err := c.syncJournal(); err != nil {
		return err
	}
	sb.Generation++
	sb.CheckpointCopy = uint32(cp)
	sb.CheckpointGeneration = gen
	sb.ReplayLSN = replay
	sb.CheckpointIncarnation = c.j.inc
	sb.FlushEpoch = uint64(c.epoch.Load())
	sb.OldestDirty = c.oldestDirtyUnix(oldest)
	sb.Flags &= layout.FlagOrderBroken
	if clean {
		sb.Flags |= layout.FlagClean
	}
	if err := writeSuperblock(c.ssd, &sb); err != nil {
		// The old superblock still names the old checkpoint, and the
		// journal since its replay LSN is intact: nothing is lost, but a
		// failed sync means the device cannot be trusted any more.
		return c.fail(err)
	}
	c.sb = sb
	c.j.setTail(replay)
	c.stats.checkpoints.Add(1)
	return nil
}

// encodePage fills checkpoint page i (slot map pages first, then bitmap
// pages) from the live slot table. For a bitmap page it returns the
// smallest age tick of the dirty blocks it marks (math.MaxUint32 for none,
// and for map pages).
func (c *Cache) encodePage(page []byte, i, gen uint64) uint32 {
	clear(page)
	c.mu.Lock()
	t := &c.mu.t
	if i < c.g.MapPages {
		base := i * layout.EntriesPerMapPage
		for e := 0; e < layout.EntriesPerMapPage && base+uint64(e) < c.g.SlotCount; e++ {
			s := base + uint64(e)
			if t.flags[s]&fValid != 0 {
				layout.PutMapEntry(page, e, layout.MapEntry{LBA: t.lba[s], CRC: t.crc[s], Valid: true, Older: t.isOlder(uint32(s)), Epoch: t.epoch[s]})
			}
		}
		c.mu.Unlock()
		layout.SealPage(page, layout.MapPage, c.uuid, gen, uint32(i))
		return math.MaxUint32
	}
	bi := i - c.g.MapPages
	bits := layout.BitmapPayload(page)
	base := bi * layout.BitsPerBitmapPage
	oldest := uint32(math.MaxUint32)
	for b := uint64(0); b < layout.BitsPerBitmapPage && base+b < c.g.SlotCount; b++ {
		if t.flags[base+b]&(fValid|fDirty) == fValid|fDirty {
			bits[b/8] |= 1 << (b % 8)
			oldest = min(oldest, t.since[base+b])
		}
	}
	c.mu.Unlock()
	layout.SealPage(page, layout.BitmapPage, c.uuid, gen, uint32(bi))
	return oldest
}

// Checkpoint writes a checkpoint now (bounding replay time).
func (c *Cache) Checkpoint() error {
	if err := c.usable(); err != nil {
		return err
	}
	return c.checkpoint(false)
}

func (c *Cache) requestCheckpoint() {
	select {
	case c.ckptReq <- struct{}{}:
	default:
	}
}

// checkpointer writes a checkpoint when the journal is half full or the
// interval passes with new records.
func (c *Cache) checkpointer() {
	defer c.wg.Done()
	var tick <-chan time.Time
	if c.opts.CheckpointInterval > 0 {
		t := time.NewTicker(c.opts.CheckpointInterval)
		defer t.Stop()
		tick = t.C
	}
	var lastSeq uint64
	for {
		select {
		case <-c.stop:
			return
		case <-c.ckptReq:
			// Appends keep asking while a checkpoint runs; once it has
			// moved the tail, a request left over from then is stale.
			if !c.j.wantsCheckpoint() {
				continue
			}
		case <-tick:
			if seq, _, _, _, _ := c.j.stats(); seq == lastSeq {
				continue
			}
		}
		lastSeq, _, _, _, _ = c.j.stats()
		if err := c.checkpoint(false); err != nil {
			c.log.Error("checkpoint failed", "err", err)
		}
	}
}
