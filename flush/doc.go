// Package flush is the destager: it writes the dirty blocks of a
// blockcache.Cache back to the cache's backing device (the HDD) and marks
// them clean, so that the reclaimer can reuse their slots and the HDD
// catches up with what clients see.
//
// # Protocol (per batch)
//
// It builds only on the engine's destage hooks (blockcache/destage.go):
//
//  1. Cache.DirtyBlocks: a snapshot of the dirty, unpinned blocks, sorted
//     by LBA — taken once per elevator rotation, not per batch.
//  2. Choose a batch in elevator order (below) and Cache.Pin it. Pin takes
//     each block's current dirty version (a block rewritten since the
//     snapshot is destaged at its new version: hot blocks rewritten faster
//     than a snapshot could be synced were otherwise never destaged),
//     skips blocks with a destage of the same LBA in flight, an in-place
//     rewrite in flight, or being discarded, and then syncs the cache
//     journal unless a sync already covers the pinned versions' records,
//     so recovery can never roll a destaged version back.
//  3. Cache.PinGaps fills each gap of at most 64 blocks between pinned
//     blocks whose blocks all have clean cached copies with those copies
//     (pinned too, marked Clean: they rewrite what the backing device
//     holds, and a second run would cost a seek). Then
//     Cache.PinBackingGaps fills the gaps gapReads chooses with blocks to
//     be read from the backing device (marked Backing: a stretch of short
//     gaps is read in one request and written back whole, when the skips
//     and seeks it saves cost more on a spinning disk than the read).
//     Cut the blocks into runs of consecutive LBAs, at most Policy.MaxRun
//     bytes each. (Batches are sized counting such gaps as part of runs.)
//  4. Workers read each run from the cache device (Cache.ReadSlots, which
//     verifies checksums, and reads Backing blocks from the backing
//     device) into a 4096-aligned buffer (device.AlignedBuffer:
//     production backing devices are opened O_DIRECT) and write it to the
//     backing device with one WriteAt. A batch with Backing blocks is read
//     whole before its first write (one ascending read pass, then one
//     write pass). Each run's write is bracketed by
//     Cache.BeginWriteBack and Cache.EndWriteBack: a write of the backing
//     device in place (around or through the cache, a discard) that
//     reached a block of the run first has claimed it: BeginWriteBack
//     reports it, the run is written as the pieces around it, and the
//     claimed blocks are completed unwritten (a dirty one the writer did
//     not supersede stays dirty, for a later batch). A writer that comes
//     later waits for that run's write alone, not for the batch.
//  5. One Cache.SyncBacking(since) (fdatasync) for the whole batch, after all
//     of its writes returned.
//  6. Only then Cache.Complete(run, true) per run: CLEAN records, the
//     dirty blocks become clean (the gap copies are only unpinned),
//     except a block a writer claimed after its write began (the backing
//     device may hold the writer's data by then). Runs that failed, were
//     skipped, or whose sync failed are completed with false and stay
//     dirty.
//
// # Invariants
//
//   - A block is marked clean only after the backing sync that covers its
//     write returned nil, and no other sync of the backing device failed
//     since the batch began (Cache.SyncBacking with BackingSyncFailures
//     read before the writes: a file reports a lost write-back to one
//     fsync only) (contract §2.2: a power cut after CLEAN finds the
//     data on the HDD). A crash anywhere before leaves the block dirty in
//     the cache; a CLEAN record lost in a crash only means the block is
//     written again after recovery, with the same data.
//   - The backing device only moves forward (§2.4): Pin admits one destage
//     per LBA at a time and only the current version, every pinned block is
//     passed to Complete exactly once (even on errors and on Stop), and a
//     run's write has returned before its Complete. A newer version of an
//     LBA can therefore only be pinned after the older one's write is over.
//   - Every pinned block is released before the batch ends, so Stop never
//     waits for more than one batch, and writers of the backing device in
//     place wait at most for one run's write.
//
// # Elevator order and batching
//
// The scheduler keeps a cursor, the LBA after the last block it chose. A
// rotation visits the snapshot from the first block at or above the cursor
// upwards, then wraps to the lowest LBA; then a new snapshot is taken. A
// batch is the next eligible blocks of the rotation, up to 64 runs or
// 16 MiB (4 runs while foreground I/O is busy): each backing sync covers
// several runs, so the HDD is not synced per 4 KiB, and CLEAN records
// follow within one batch's write time. Batches continue where the last
// one ended, so a fully dirty region is written as back-to-back 1 MiB
// writes at the disk's sequential speed.
//
// Backing writes go out strictly one at a time, in elevator order (run i's
// write starts after run i-1's returned): the HDD is one spindle, and two
// writes racing would reorder into seeks. Parallelism is spent on the cache
// side instead: with Workers = 2 (the default) one worker reads the next
// run from the SSD while the other's write is on the HDD.
//
// # Policy (before every batch)
//
// With d = percent of slots dirty:
//
//   - d ≤ LowWatermark (default 10 %): only blocks dirty for MaxDirtyAge
//     (default 30 s, measured with Cache.Tick against DirtyBlock.Since) are
//     written. When nothing is old enough the destager sleeps until the
//     oldest block of its last snapshot comes of age (blocks dirtied later
//     are younger), re-checking the dirty level every 200 ms.
//   - LowWatermark < d < HighWatermark (default 50 %): everything, in
//     elevator order, but backing off while foreground I/O is busy.
//     "Busy" means Cache.Stats showed foreground reads or writes since its
//     previous sample (sampled at most every 500 ms: Stats is O(slots)).
//     While busy, batches are small (4 runs) and each is followed by a
//     pause as long as the batch took (at least 10 ms): the destager takes
//     at most half of the disk's time. The pause also keeps it under
//     IdleRate (default 8 MiB/s; explicitly 0: no cap beyond the 50 %
//     duty cycle). Between the watermarks nothing is urgent, and write-back
//     at half the disk's time still slowed a client's write+fsync pairs:
//     fsync p99 1.0-1.3 ms against 0.47-0.56 ms with the cap, in the
//     steady-state sequence (docs/bench/fsync-unwritten-2026-12-05.md). Old blocks below the low
//     watermark are written with the same back-off. A busy batch whose
//     MAP records no sync has covered yet waits up to 1 s for a sync the
//     cache makes anyway (a checkpoint, a reclaim, a client's fsync)
//     before Pin syncs for it: a sync per batch wrote the hot blocks'
//     pages back over and over and kept them from being rewritten in
//     place. Under 4 KiB random writes at QD32 over 128 MiB of a 512 MiB
//     cache, a 6 s run went from 26-27 journal syncs to 6-7, in-place
//     rewrites from 20-22% to 70% of writes, and the cache device's writes
//     from about 2,000 MiB to 850-960 MiB (together with the checkpointer
//     no longer running twice in a row).
//   - d ≥ HighWatermark, or Cache.Pressure fired (a writer is blocked
//     waiting for a free slot; this holds for 1 s), or FlushAll is running:
//     everything, flat out.
//
// # Errors
//
// A backing write or sync error, or a cache-device read error in
// ReadSlots, leaves the run's blocks dirty (Complete false), counts in
// Progress.Errors, is logged once per burst of failures (and once when
// destaging recovers), and makes the scheduler back off: 100 ms, doubling
// up to 10 s, reset by the next clean batch. Nothing is retried in a busy
// loop. The failed blocks are retried on the next rotation. A failing
// fdatasync of the HDD is safe to retry this way: the blocks are still
// dirty in the cache, and the whole run is written again from there. What
// a failed sync may have lost of the writes made in place for clients
// (around or through the cache) cannot be written again: SyncBacking
// then makes every later Cache.Sync fail, as the cache's own failed
// backing syncs do.
// Errors from Pin or Complete mean the cache failed or was closed
// (blockcache.ErrFailed / ErrClosed): the destage loop stops and FlushAll
// returns the error.
//
// # Goroutines
//
// Start (or a FlushAll without Start) runs one scheduler goroutine, which
// starts the workers lazily and owns them. It alternates two steps: choose
// a batch and pin it (choose.go: the mode, the sweep, the eligible
// candidates, Pin), then destage it (loop.go: runBatch, its outcome, the
// pause). Stop closes the loop: the run
// whose write is in progress finishes, runs not yet written are skipped,
// the batch is synced and completed, and Stop returns when every goroutine
// has exited. Stop the destager before closing the cache.
package flush
