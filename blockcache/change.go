package blockcache

import "github.com/wbcache/wbcache/layout"

// metaChange is one change to the slot table together with its journal
// records, and the only way records are appended. beginChange reserves
// journal room for n records first (waiting for room can wait for a
// checkpoint, which takes Cache.mu, so it must happen before the lock),
// then takes Cache.mu (the whole table; beginChangeAt takes one block's
// shard); each record is appended where its effect on the table is
// applied, so the journal's order is the order of the changes; end
// releases the lock and the reservation.
//
// A slot leaves its block only through free or through a superseding MAP
// followed by unmapLocked: both queue the slot until that record is
// durable (invariant 1).
type metaChange struct {
	c     *Cache
	n     int         // records reserved; 0 for beginChangeAt without room
	sh    *tableShard // the shard locked; nil: the whole table
	gen   uint64      // sync generation of the newest record (journal.appendGen)
	epoch uint32      // the flush epoch, read under the lock: records carry it
}

// beginChange reserves room for n records and takes Cache.mu. An error
// is the journal's (dead, closed or stopping): nothing was taken.
func (c *Cache) beginChange(n int) (metaChange, error) {
	if err := c.j.reserve(n); err != nil {
		return metaChange{}, err
	}
	c.mu.Lock()
	return metaChange{c: c, n: n, epoch: c.epoch.Load()}, nil
}

// beginChangeAt begins a change of block lba's mapping that journals one
// record, under lba's shard lock (Cache.lockLBA): changes of blocks in
// different shards proceed in parallel, and the journal's order is still
// the order of the changes of each block and of each slot (a slot moves
// to another shard's block only once the record that unmapped it is
// durable). With reserve it reserves journal room first, as beginChange
// does; without, it reserves none, and tryRecord and inPlace append only
// if the ring has room right now.
func (c *Cache) beginChangeAt(lba uint64, reserve bool) (metaChange, error) {
	n := 0
	if reserve {
		n = 1
		if err := c.j.reserve(n); err != nil {
			return metaChange{}, err
		}
	}
	sh := c.lockLBA(lba)
	return metaChange{c: c, n: n, sh: sh, epoch: c.epoch.Load()}, nil
}

// tryRecord is record for a change begun by beginChangeAt: without room
// reserved it appends r only if the ring has room right now, else it
// fails with errNoRoom, having appended nothing (the caller ends the
// change and begins it again with room reserved). Any other error is
// the journal's (dead or closed).
func (m *metaChange) tryRecord(r layout.Record) (uint64, error) {
	if m.n > 0 {
		return m.record(r), nil
	}
	r.Epoch = m.epoch
	seq, gen, err := m.c.j.tryAppendGen(r)
	if err != nil {
		return 0, err
	}
	m.gen = gen
	return seq, nil
}

// record appends r, stamped with the change's flush epoch, and returns
// its sequence number. The epoch is read under the change's lock, so the
// versions of each shard are mapped in ascending epoch order.
func (m *metaChange) record(r layout.Record) uint64 {
	r.Epoch = m.epoch
	var seq uint64
	seq, m.gen = m.c.j.appendGen(r)
	return seq
}

// free journals a FREE record for slot s, which holds lba, and unmaps the
// slot (clean: it held a clean copy; see unmapLocked).
func (m *metaChange) free(s uint32, lba uint64, clean bool) uint64 {
	seq := m.record(layout.Record{Type: layout.RecFree, Slot: s, LBA: lba})
	m.c.unmapLocked(s, seq, clean)
	return seq
}

// clean journals a CLEAN record for b and marks its slot clean.
func (m *metaChange) clean(b DirtyBlock) {
	m.record(layout.Record{Type: layout.RecClean, Slot: b.Slot, LBA: b.LBA, CRC: b.CRC})
	m.c.mu.t.setClean(b.Slot)
}

// inPlace appends the MAP record of an in-place rewrite of slot s, mapped
// by a record of sync generation gen (journal.appendInPlace), in a change
// begun by beginChangeAt without room. When the rewrite is claimed the
// caller releases the lock with handOff and, once the data is written,
// calls journal.endInPlace.
// The record keeps the slot's epoch: no sync of the journal has begun
// since the slot was mapped, so every Sync begun since then is still
// running, and the new data, written concurrently with them, may count
// as written before them (ordered.go).
func (m *metaChange) inPlace(gen uint64, r layout.Record) (seq uint64, claimed bool, err error) {
	r.Epoch = m.c.mu.t.epoch[r.Slot]
	return m.c.j.appendInPlace(gen, r)
}

// handOff releases the lock of a change whose in-place rewrite is
// claimed (see inPlace).
func (m *metaChange) handOff() { m.c.unlockLBA(m.sh) }

// end releases the lock and the reservation, if any.
func (m *metaChange) end() {
	m.c.unlockLBA(m.sh)
	if m.n > 0 {
		m.c.j.release(m.n)
	}
}

// lockedChange takes Cache.mu for a change that journals nothing (no
// room reserved: record must not be called).
func (c *Cache) lockedChange() metaChange {
	c.mu.Lock()
	return metaChange{c: c, epoch: c.epoch.Load()}
}
