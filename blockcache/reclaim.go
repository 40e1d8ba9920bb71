package blockcache

import (
	"errors"
	"time"
)

var errNoSlot = errors.New("no free cache slot")

func (c *Cache) kickReclaim() {
	select {
	case c.reclaimReq <- struct{}{}:
	default:
	}
}

func (c *Cache) signalPressure() {
	select {
	case c.pressure <- struct{}{}:
	default:
	}
}

// Pressure is signalled when a writer waits for a free slot: the destager
// should clean blocks (the reclaimer can only evict clean ones).
func (c *Cache) Pressure() <-chan struct{} { return c.pressure }

// reclaimer keeps ReserveFree slots free: it makes pending frees durable and
// evicts clean blocks in CLOCK order.
func (c *Cache) reclaimer() {
	defer c.wg.Done()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-c.stop:
			return
		case <-c.reclaimReq:
		case <-t.C:
		}
		if c.usable() != nil {
			return
		}
		if err := c.reclaim(); err != nil {
			c.log.Error("reclaim failed", "err", err)
		}
		if c.opts.NoBackgroundBackingSync {
			continue
		}
		// A failed backing sync is sticky and logged once when it happens.
		if err := c.syncBacking(); err != nil && c.backingSyncErr.Load() == nil {
			c.log.Error("background sync of the backing device failed", "err", err)
		}
	}
}

// reclaim frees slots up to the reserve. Slots waiting for their
// unmapping record to become durable are freed by a sync, but only once
// they are needed: when the free slots run short of the reserve, or when
// as many wait as are free. Every sync writes back the data written since
// the last one and ends in-place rewrites of the blocks written since, so
// syncing while plenty of slots are free would cost write-back and slots
// for nothing.
func (c *Cache) reclaim() error {
	c.mu.Lock()
	free, pending := c.mu.t.freeCount(), c.mu.t.pendingCount()
	c.mu.Unlock()
	short := c.opts.ReserveFree - free - pending
	evicted := 0
	if short > 0 {
		evicted = c.evict(short)
	}
	if evicted > 0 || (pending > 0 && (free < 2*c.opts.ReserveFree || pending >= free)) {
		return c.syncJournal()
	}
	return nil
}

// evict unmaps up to n clean, unpinned, unreferenced blocks (CLOCK) with
// FREE records. It skips blocks whose stripe is busy.
func (c *Cache) evict(n int) int {
	done := 0
	for done < n {
		victims := c.clockVictims(min(n-done, 64))
		if len(victims) == 0 {
			return done
		}
		progress := false
		for _, s := range victims {
			if c.evictSlot(s) {
				done++
				progress = true
			}
		}
		if !progress {
			return done
		}
	}
	return done
}

// clockVictims sweeps the CLOCK hand over at most two rotations' worth of a
// bounded window and returns candidate slots.
func (c *Cache) clockVictims(n int) []uint32 {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &c.mu.t
	var out []uint32
	limit := min(2*t.n(), 1<<16)
	for i := 0; i < limit && len(out) < n; i++ {
		s := t.hand
		t.hand = (t.hand + 1) % t.n()
		f := t.flags[s]
		if f&fValid == 0 || f&(fDirty|fPinned) != 0 {
			continue
		}
		if f&fRef != 0 {
			t.flags[s] = f &^ fRef
			continue
		}
		out = append(out, uint32(s))
	}
	return out
}

func (c *Cache) evictSlot(s uint32) bool {
	c.mu.Lock()
	lba := c.mu.t.lba[s]
	c.mu.Unlock()
	st := c.stripe(lba)
	if !st.TryLock() {
		return false
	}
	defer st.Unlock()
	m, err := c.beginChange(1)
	if err != nil {
		return false
	}
	defer m.end()
	t := &c.mu.t
	f := t.flags[s]
	if f&fValid == 0 || f&(fDirty|fPinned) != 0 || t.lba[s] != lba {
		return false
	}
	m.free(s, lba, true)
	c.bumpGen(lba)
	c.stats.evictions.Add(1)
	return true
}
