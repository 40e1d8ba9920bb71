package blockcache

import (
	"fmt"
	"hash/maphash"
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
//
// Only the pages whose content differs from what the copy holds are
// written (ckptHeld): a page the copy already holds is, byte for byte in
// its payload, the page that would be written, so leaving it is the same
// as writing it, and recovery accepts its older generation (layout
// CheckPageUpTo). The cost of a checkpoint then follows what changed
// since the copy was last written, not the size of the cache: with one
// journal block per sync, a checkpoint came every half journal of syncs
// and rewrote the whole table (docs/design.md §1).
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
	var sums [chunk]uint64
	held := c.ckptHeld[cp]
	oldest := uint32(math.MaxUint32)
	for first := uint64(0); first < c.g.CheckpointBlocks; first += chunk {
		nb := min(chunk, c.g.CheckpointBlocks-first)
		for k := uint64(0); k < nb; k++ {
			page := buf[k*BlockSize : (k+1)*BlockSize]
			oldest = min(oldest, c.encodePage(page, first+k, gen))
			sums[k] = c.pageSum(page)
		}
		// Write each run of pages whose content the copy does not hold.
		for k := uint64(0); k < nb; {
			if held[first+k] == sums[k] {
				k++
				continue
			}
			e := k
			for ; e < nb && held[first+e] != sums[e]; e++ {
				held[first+e] = 0 // unknown until the write has returned
			}
			if _, err := c.ssd.WriteAt(buf[k*BlockSize:e*BlockSize], c.g.MapPageOffset(cp, first+k)); err != nil {
				c.stats.cacheErrors.Add(1)
				return fmt.Errorf("writing checkpoint: %w", err)
			}
			copy(held[first+k:first+e], sums[k:e])
			c.stats.checkpointPages.Add(e - k)
			k = e
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

// pageSum identifies the payload of a checkpoint page (the header holds
// the generation, which changes every time): a 64-bit hash, seeded per
// process, never 0 (which stands for "not known").
func (c *Cache) pageSum(page []byte) uint64 {
	return maphash.Bytes(c.ckptSeed, layout.PagePayload(page)) | 1
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
			if c.j.lastSeq() == lastSeq {
				continue
			}
		}
		lastSeq = c.j.lastSeq()
		if err := c.checkpoint(false); err != nil {
			c.log.Error("checkpoint failed", "err", err)
		}
	}
}
