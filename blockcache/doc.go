// Package blockcache is the cache engine: it maps 4 KiB blocks (LBAs) of a
// backing device onto slots of a cache device and keeps that mapping crash
// safe with a metadata journal and checkpoints (format: package layout).
//
// # Paths
//
// Write (writeback): the block goes to a new slot (out of place), then a MAP
// record is appended to the journal and the in-memory index flips, under
// one critical section, so the journal's order is the order of the changes.
// A block rewritten before any sync has covered its current slot's record
// is rewritten in that slot instead (invariant 2): between two syncs a hot
// block costs one slot and one page of writeback, not one per write.
// The journal ring is mapped shared into memory (device.Region): appending
// a record is a memory copy into the cache file's page cache (the first
// of a block too, once the block is prepared ahead: journal.go; else a
// pwrite of the whole block), so WriteAt
// returns, with no journal I/O and no hand-off to another goroutine, once
// data and record are both in the page cache (they survive a process
// crash). On devices that cannot be mapped the record is written with
// WriteAt before the append returns. Sync fdatasyncs the cache device (data and
// journal) and, if anything was written to the backing device in place,
// the backing device. Partial blocks are read-modify-written under the
// block's stripe lock.
//
// Read: a cached block is read from its slot and its CRC32C checked; a miss
// reads the backing device (coalescing a run of misses into one I/O) and may
// promote the block as a clean copy.
//
// Destage hooks (used by package flush): DirtyBlocks, Pin, PinGaps,
// PinBackingGaps, ReadSlots and Complete. Complete journals CLEAN only after the caller has written and
// synced the backing device.
//
// # Invariants
//
//  1. A slot is reused only after the record that unmapped it (a
//     superseding MAP, or FREE) is durable, and only when no destage has it
//     pinned. Otherwise a power cut could bring back a mapping to a slot
//     that now holds other data. Every path that takes a slot from its
//     block (a newer version elsewhere, eviction, discard, a dropped clean
//     copy, a corrupt clean slot) goes through unmapLocked, which puts it
//     on the pending list; only releaseDurable and Complete return
//     pending slots to the free set.
//  2. A dirty slot is rewritten in place only while no sync has started
//     since the MAP record that mapped it (so no durable record names its
//     content), and no sync starts while such a rewrite is in flight. The
//     rewrite journals its MAP (flagged in place) before writing the data,
//     so a process crash in between leaves the acknowledged version under
//     the previous record, and recovery voids the in-place record alone.
//  3. A clean cached copy always equals what the backing device durably
//     holds. So a clean copy is dropped durably (FREE + sync) before the
//     backing device is written in place under it, promotion only copies
//     backing data that has been synced, and write-through blocks stay
//     dirty until a Sync has made their backing write durable.
//  4. The backing device only moves forward: at most one destage per LBA is
//     in flight, only the current dirty version is pinned (a pinned slot is
//     never rewritten in place, so it stays that version), its MAP record is
//     durable before Pin returns, and a block with a dirty cached version is
//     written into the cache, in every mode, unless a run of whole blocks
//     written around the cache (modes writearound and none) supersedes it
//     as a discard does (invariant 5, writeOverDirty). A clean copy pinned to
//     fill a gap between dirty blocks (PinGaps) rewrites what the backing
//     device already holds. A destager writes a pinned block only between
//     BeginWriteBack and EndWriteBack; a writer of the backing device in
//     place claims the pinned blocks in its range whose write has not
//     begun, so it is never done, and waits for one under way
//     (claimBackingLocked). A block claimed after its write is not
//     marked clean when its destage completes: the backing device may
//     hold the writer's data by then, and the writer drops the version
//     once its own data is durable. A gap block read from
//     the backing device (PinBackingGaps) is rewritten as read: it is
//     taken only while no writer holds its stripe and no destage,
//     discard or overwrite holds it, and from then on writes in place
//     claim it or wait for its write, as for any pinned block.
//  5. Discard drops clean copies first (durably), then zeroes and syncs the
//     backing device, then drops dirty copies: each block reads as before or
//     as zeros at every crash point. A run written around the cache over
//     dirty cached versions (writeOverDirty) takes the same steps with its
//     data for the zeros: each block reads as before or as written. Both
//     mark their range (holdOverwriteLocked), so that no destage pins a
//     block of it meanwhile.
//  6. A failed sync or journal write of the cache device is fatal (ErrFailed):
//     the page cache may have dropped what it could not write, so the cache
//     refuses further I/O rather than pretend (fsyncgate).
//
// # Recovery
//
// Open loads the checkpoint named by the superblock and replays the journal
// from its replay LSN. Checkpoints are fuzzy (pages are copied from live
// state one at a time); every record is an absolute assignment, so
// replaying records whose effect a page already holds is harmless. A
// checkpoint writes only the pages whose content its copy does not hold
// already (as far as this process wrote them); the pages it leaves keep
// the generation of the checkpoint that wrote them. The
// replayed log is the longest prefix in which every MAP record still live
// at its end has data matching its CRC: such a record can only fail if no
// sync followed its data write, and then nothing after it was ever
// promised. Damage that later journal blocks prove a completed sync
// covered is no torn tail: Open refuses the cache (layout.ErrCorrupt)
// rather than serve it without the records after the damage (recovery.go).
// Open then writes a fresh checkpoint in a new journal
// incarnation, so stale blocks past the end of the log can never be read
// as part of it.
//
// # Concurrency
//
// Locks, in the order they are taken (a lock is never taken while one
// below it is held):
//
//  1. Cache.ckptMu: one checkpoint or superblock write at a time.
//  2. Cache.stripes: per-LBA RWMutexes (stripeOf: each aligned 16 MiB
//     window onto all the stripes, rotated by a hash of the window, so
//     that neighbouring runs share none). A writer of a block holds its
//     stripe exclusively from lookup to mapping change; readers hold it
//     shared while they read a slot, so its content stays put. Several
//     are taken in ascending index order (lockStripes): a run written
//     around or through the cache, or discarded, holds all of its own.
//  3. journal room (journal.reserve): may wait for a checkpoint to free
//     ring space, so it is never waited for under a table lock, nor by
//     a claimed in-place rewrite (a checkpoint's sync waits for those).
//  4. the slot table's shards (slotTable.shards, by LBA hash). Each
//     guards its blocks' index, counters, fresh list, epoch counts,
//     pending slots, and the entries of the slots its blocks hold. A
//     write or read locks the shard of its block (Cache.lockLBA); Cache.mu
//     locks them all (tableState.Lock, in index order, holding none while
//     it waits for one) and guards the rest: the free set, older
//     versions, in-flight destages, the write-back order. While ordered
//     write-back is in force lockLBA takes Cache.mu: its decisions span
//     blocks. Never held across I/O.
//  5. slotTable.freeMu: the free set, for a write that refills the
//     spare run from it (Cache.takeSpare) while holding only its shard's
//     lock, once per batch of slots; the run's slots are taken with an
//     atomic add and no lock.
//  6. journal.mu: opening a journal block (its header and first record),
//     sealing it, ring room and sync state: taken once per journal
//     block, per sync and per reservation, not per record. On a mapped
//     journal a record takes its place in the open block with a
//     compare-and-swap and is copied in with no lock (journal.go); on a
//     journal that is not mapped, and while ordered write-back is set
//     (its records are chained), each append takes mu. Once the open
//     block is half full the next one is written with zeros and faulted
//     into the mapping, with mu released, by a write that holds no lock
//     or by the journal goroutine, so that opening it is a copy too (a
//     pwrite of the whole block when it is not prepared in time, or not
//     mapped).
//
// Leaf locks, taken alone: the sequential-stream trackers' parts
// (seqTracker, by the hash of where a request starts and where it
// ends, one at a time, before the stripe), the promotion sketch's, and
// Cache.bsync.mu (one backing sync at a time, the destager's included;
// never held across the sync, which its waiters wait for on a
// condition, holding their stripes or, the destager, its pins; the sync
// under way takes no stripe and waits for no destage).
//
// No lock is shared by all writes (unless ordered write-back is in
// force, see 4): a write's record takes its place in the journal with a
// compare-and-swap, and journal.mu is taken by the write that opens a
// journal block, once in RecordsPerBlock records (or once per sync,
// where syncs end blocks sooner). A whole-block write
// back into the cache (Cache.writeFast) takes
// its stripe, then its shard twice: once to look the block up and claim
// its slot for a rewrite in place (appending the record) or take a spare
// slot, once to map the new slot (or end the rewrite).
//
// Every change to the slot table that journals goes through metaChange
// (change.go): reserve, lock (the shard of the block, or all of them),
// append each record where its effect is applied (so the journal's order
// is the order of the changes of each block and each slot: a slot moves
// to another shard's block only once the record that unmapped it is
// durable), unlock, release. A write reserves no room: its record goes in
// if the ring has room now, else the change is begun again after
// reserve. Syncs of the cache device run one at a time, started
// by the journal goroutine, except that a client's Sync runs one itself
// when none is in flight and no in-place rewrite holds it off. Background
// goroutines: journal syncer, checkpointer,
// reclaimer (evicts clean blocks in CLOCK order and frees slots), and at
// open the prefill pass (writes zeros once over free slots the cache
// file's filesystem has not written yet, holding them out of the free
// set meanwhile; prefill.go); Close stops them all.
//
// BenchmarkConcurrentWrite and its variants measure the waiting on these
// locks per write (docs/bench/concurrency-2026-12-05.md).
//
// # Memory
//
// 30.2 bytes of RAM per slot (slot table 21, index 8, lists of slots
// rewritable in place 1, free-slot bitmap 0.13, the shards' own fields
// and locks a few KiB in all), measured by TestMemoryPerSlot.
//
// # Slot allocation
//
// Free slots are handed out next-fit (freeSet): ascending from where the
// last allocation stopped, wrapping around. Writes arriving together land
// in neighbouring slots, so the cache file's dirty pages form runs and a
// sync writes them back in few large requests. Under 4 KiB random writes
// at QD32 on a 512 MiB cache that took the cache device's write requests
// from 322,893 (7.1 KiB each) to 6,172 (380 KiB each) in a 6 s run. The
// spare run (slotTable.run) holds the next batch of up to 64 free slots
// in that order, and a write of any shard takes the next one with an
// atomic add, so the order survives the sharding. When each shard took
// batches of 16 neighbouring slots of its own instead, the shards' writes
// interleaved and the runs shortened: in the same job through FUSE the
// disk saw 4,636 write requests of 357 KiB on average, against 2,096 of
// 788 KiB before the table was sharded and 2,102 of 784 KiB with the
// shared run (scripts/ceiling-ab.sh, medians of five rounds).
package blockcache
