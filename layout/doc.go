// Package layout owns the on-disk format of a wbcache cache device (the SSD
// file). It encodes and decodes every metadata block and computes where each
// region lives; it does no I/O.
//
// # Regions
//
// The device is an array of 4 KiB blocks:
//
//	block 0            superblock copy A   (written when generation is even)
//	block 1            superblock copy B   (written when generation is odd)
//	CheckpointStart    checkpoint copy 0:  MapPages slot-map pages, then BitmapPages dirty-bitmap pages
//	  + CheckpointBlocks checkpoint copy 1: same shape
//	JournalStart       metadata journal:   JournalBlocks blocks used as a ring, block LSN n at JournalStart + n % JournalBlocks
//	DataStart          data slots:         SlotCount slots of 4 KiB, slot s at DataStart + s
//
// All integers are little-endian. All checksums are CRC32C (Castagnoli).
// CRC32C(seed, block) is the CRC32C of the 16 seed bytes followed by the block.
// Metadata checksums other than the superblock's are seeded with the cache
// UUID, so a block left over from an earlier format of the same device never
// verifies; the superblock's is seeded with 16 zero bytes.
//
// # Superblock (block 0 or 1)
//
//	off  size field
//	  0     8 magic "WBCACHE1"
//	  8     4 format version (FormatVersion)
//	 12     4 CRC32C(16 zero bytes, whole 4 KiB block with this field zero)
//	 16     8 generation: the copy with the highest valid generation wins
//	 24    16 cache UUID
//	 40     4 block size (4096)
//	 44     4 flags: bit 0 = clean shutdown, bit 1 = backing device maybe out
//	          of order (ordered write-back suspended or off; version 3)
//	 48     8 slot count
//	 56     8 checkpoint start block      64  8 checkpoint blocks per copy
//	 72     8 map pages per copy          80  8 bitmap pages per copy
//	 88     8 journal start block         96  8 journal blocks
//	104     8 data start block           112  8 cache device size in bytes
//	120     8 backing size in bytes      128 16 backing identity
//	144     4 current checkpoint copy (0 or 1)
//	148     4 oldest dirty time: Unix seconds at which the oldest block
//	          dirty at this checkpoint became dirty; 0 = none dirty, or
//	          not recorded (earlier wbcache versions kept these 4 bytes
//	          reserved: they write zero here and ignore what is here)
//	152     8 checkpoint generation      160  8 replay LSN (first journal block to replay)
//	168     8 journal incarnation of the checkpoint
//	176     8 flush epoch at the checkpoint
//	184    64 settings (Settings: mode and destage policy, persisted across mounts)
//	248   256 backing description: the backing device in words (UTF-8, padded
//	          with zero bytes; all zero when formatted by a wbcache before it
//	          was recorded), for messages only: matching uses the identity
//	504  3592 zero
//
// A superblock is valid when its magic, version and CRC check, and its
// flags, checkpoint copy and settings hold only values defined here. Open reads
// both copies and uses the valid one with the higher generation; an update
// writes the other copy and syncs, so a torn superblock write leaves the
// previous one standing (bbolt's meta pages).
//
// # Settings (superblock bytes 184-247)
//
//	off size field                      set-mask bit
//	  0    1 mode: 0 writeback, 1 writethrough, 2 writearound, 3 none  (none)
//	  1    1 promote after (read misses)     bit 0 SetPromoteAfter
//	  2    1 low watermark (percent)         bit 1 SetLowWatermark
//	  3    1 high watermark (percent)        bit 2 SetHighWatermark
//	  4    2 destager workers                bit 3 SetWorkers
//	  6    1 write-back order: 0 ordered, 1 unordered   bit 7 SetOrder
//	  7    1 reserved (zero)
//	  8    4 max dirty age (seconds)         bit 4 SetMaxDirtyAge
//	 12    4 reserved (zero)
//	 16    8 sequential cutoff (bytes)       bit 5 SetSeqCutoff
//	 24    4 idle rate (MiB/s)               bit 6 SetIdleRate
//	 28    4 set mask
//	 32   32 reserved (zero)
//
// A field whose set-mask bit is clear takes its default, whatever it
// holds, so that zero can be a value chosen on purpose. Set-mask bits 8-31
// are reserved: written as zero, and a superblock that has one set (or a
// mode above 3) is corrupt, as one with an unknown flag is. A new setting
// takes a new bit together with a new FormatVersion.
//
// # Checkpoint pages
//
// Every checkpoint page has a 32-byte header followed by 4064 payload bytes:
//
//	off size field
//	  0    4 magic: "WBCM" (slot map) or "WBCD" (dirty bitmap)
//	  4    4 CRC32C(UUID, page with this field zero)
//	  8    8 checkpoint generation that wrote the page (at most the
//	         superblock's; format version 4, see below)
//	 16    4 page index within its region
//	 20   12 reserved (zero)
//
// A slot-map page holds EntriesPerMapPage entries of 16 bytes:
// backing LBA (8), data CRC32C (4), flags (4: bit 0 = slot holds a block,
// bit 1 = it holds an older dirty version of it, kept for ordered
// write-back, bits 8-31 = the low 24 bits of the version's flush epoch,
// widened again against the superblock's flush epoch; format version 3).
// A dirty-bitmap page holds BitsPerBitmapPage bits, bit s%BitsPerBitmapPage
// of page s/BitsPerBitmapPage set when slot s holds data the backing device
// does not have yet. A checkpoint is written to the idle copy, synced, and
// only then named by a new superblock, so a torn checkpoint is never used.
// Since format version 4 a checkpoint writes only the pages whose payload
// differs from what that copy holds (as the writing process knows it; a
// process writes every page of a copy the first time): the others keep
// the content and generation a previous checkpoint of the same copy gave
// them, and are read as part of the newer one.
//
// # Journal blocks
//
//	off size field
//	  0    4 magic "WBCJ"
//	  4    4 CRC32C(UUID, header bytes 0-31 with this field zero)
//	  8    8 LSN (block sequence number; position = LSN % JournalBlocks)
//	 16    8 incarnation (bumped each time the cache is opened)
//	 24    2 previous count: records in block LSN-1 when this one began
//	 26    1 1 = records checked alone (format version 5), 0 = chained
//	 27    5 reserved (zero)
//	 32  ... up to RecordsPerBlock records, RecordSize bytes each
//
// Record (32 bytes): type (1), flags (1, MAP only: bit 0 = dirty, bit 1 =
// in place: the slot already held LBA and this record was journaled before
// the new data was written, so if the data does not match, this record
// alone is void and the mapping before it stands), reserved
// (2), slot (4), LBA (8), data CRC32C (4), flush epoch (4), old slot (4,
// with flag bit 2 = keep old: the block's previous dirty version stays in
// the old slot as an older version for ordered write-back, to be written
// back before this one and then freed; zero without it), CRC32C (4) of
// bytes 0-27: in a block of records checked alone, continuing from the
// header's CRC; in a chained block, from the previous record's CRC, or
// from the header's for record 0.
//
//	MAP   slot now holds block LBA with data CRC; dirty or clean (promoted)
//	CLEAN slot (holding LBA with CRC) is on the backing device
//	FREE  slot (holding LBA) no longer holds it (evicted or discarded)
//
// Records are appended in place: the header is written when the block
// gets its first record, and each record after that writes only its own
// 32 bytes, so the block is valid at every instant (the engine maps the
// journal into memory and a record is a memory copy).
//
// Since format version 5 the records of a block are checked alone: each
// record's CRC continues from the header's, so writers can take
// positions side by side and copy their records in any order. A block's
// records are all those whose CRCs hold, in the order of their
// positions; a position that fails (never written, torn, or left from an
// earlier pass of the ring, whose header differs) is a hole, and the
// records after it still count. The engine only places records side by
// side that do not depend on each other (package blockcache, journal.go).
// In a chained block (format versions up to 4, and the engine's blocks
// while ordered write-back is set), the records are those
// from the first on whose chained CRCs hold; the first that fails ends
// the block. Each block's header says which kind it is. Once a sync has
// covered a block, it is never written again.
//
// Replay starts at the superblock's replay LSN and reads block after
// block. It stops at the first block whose magic, header CRC or LSN does
// not check, or whose incarnation is lower than the checkpoint's or the
// previous block's. After a chained block it also stops where the next
// block's previous count differs from the records found (that block lost
// records to a tear, and a chained log has no holes). After a block of
// records checked alone, such a difference is a hole that replay skips
// when the next block's records are checked alone too, unless the rule
// below shows a completed sync had covered it; before a chained block it
// ends the log. The engine
// (package blockcache) defines how records apply.
//
// A torn tail is replayed; damage in the middle of the log is refused.
// The block D where the log ends is the one replay stopped at or, when
// the previous count disagrees, the one before it; after a block of
// records checked alone, D is also any block with holes below the next
// block's previous count. A block is ended either when full or when a
// sync starts (which ends the open block, if it has records), so a
// previous count below RecordsPerBlock says that a sync ended the block
// before. A sync waits for the records placed before it began to be
// copied before it syncs the device, so no hole is left in what a
// completed sync covered. Syncs run one at a time: when
// two blocks at or after D were ended by syncs (valid headers of the
// blocks after them, of the checkpoint's incarnation, with such counts),
// the first of those syncs had completed before the second started, so D
// was durable and never written again. Then D is damaged, not torn, and
// the cache is refused rather than served without the records after D.
// A torn tail cannot show this: since the last completed sync, at most
// one more can have started, and only it can have ended a block from the
// first torn one on. DecodeJournalHeader reads a header alone, for this.
//
// The constants below are part of the format and must never change without
// bumping FormatVersion.
package layout
