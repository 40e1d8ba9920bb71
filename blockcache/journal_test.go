package blockcache

import (
	"bytes"
	"path/filepath"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wbcache/wbcache/device"
	"github.com/wbcache/wbcache/layout"
)

func memCache(t *testing.T) (*device.Mem, *device.Mem, *Cache) {
	ssd := device.NewMem(8<<20, [16]byte{1})
	hdd := device.NewMem(64<<20, [16]byte{2})
	require.NoError(t, Format(ssd, hdd, FormatOptions{}))
	c, err := Open(ssd, hdd, Options{CheckpointInterval: -1, NoBackgroundBackingSync: true})
	require.NoError(t, err)
	return ssd, hdd, c
}

// fileCache formats and opens a cache on new files (O_DIRECT with direct).
func fileCache(t *testing.T, direct bool) (*Cache, string, string) {
	dir := t.TempDir()
	ssdPath, hddPath := filepath.Join(dir, "ssd"), filepath.Join(dir, "hdd")
	require.NoError(t, device.Create(ssdPath, 16<<20))
	require.NoError(t, device.Create(hddPath, 64<<20))
	ssd, hdd := openFiles(t, ssdPath, hddPath, direct)
	require.NoError(t, Format(ssd, hdd, FormatOptions{}))
	c, err := Open(ssd, hdd, Options{CheckpointInterval: -1, NoBackgroundBackingSync: true})
	require.NoError(t, err)
	return c, ssdPath, hddPath
}

// openFiles opens a cache and a backing file, closed when the test ends.
func openFiles(t *testing.T, ssdPath, hddPath string, direct bool) (*device.File, *device.File) {
	ssd, err := device.Open(ssdPath, device.Options{Direct: direct})
	require.NoError(t, err)
	t.Cleanup(func() { ssd.Close() })
	hdd, err := device.Open(hddPath, device.Options{Direct: direct})
	require.NoError(t, err)
	t.Cleanup(func() { hdd.Close() })
	return ssd, hdd
}

func pattern(lba int) []byte { return bytes.Repeat([]byte{byte(lba*7 + 1)}, BlockSize) }

// TestJournalHoleLosesOneRecord: records are checked each on its own, so
// a record missing from a block (its writer killed before its copy, or
// torn without a sync) loses that record alone: the records after it, in
// its block and the next, are replayed. Records placed side by side are
// of different blocks of the cache, so none needs the one lost.
func TestJournalHoleLosesOneRecord(t *testing.T) {
	ssd, hdd, c := memCache(t)
	defer c.Close()
	// One MAP record per write: fill the open block and spill into the next.
	first := c.j.checkpointLSN()
	n := layout.RecordsPerBlock + 20
	for lba := 0; lba < n; lba++ {
		_, err := c.WriteAt(pattern(lba), int64(lba)*BlockSize)
		require.NoError(t, err)
	}
	require.Equal(t, first+1, c.j.checkpointLSN(), "the writes span two blocks")

	for _, tc := range []struct {
		name string
		cut  int // the record of block first lost; -1 = none
	}{
		{"intact", -1},
		{"hole at 100", 100},
		{"hole at 0", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			img := ssd.CrashProcess()
			if tc.cut >= 0 {
				// Zero record tc.cut of the first block: a hole, as a
				// writer killed before its copy leaves.
				off := c.g.JournalOffset(first) + int64(layout.RecordOffset(tc.cut))
				_, err := img.WriteAt(make([]byte, layout.RecordSize), off)
				require.NoError(t, err)
			}
			c2, err := Open(img, hdd.CrashProcess(), Options{CheckpointInterval: -1, NoBackgroundBackingSync: true})
			require.NoError(t, err)
			defer c2.Close()
			buf := make([]byte, BlockSize)
			for lba := 0; lba < n; lba++ {
				_, err := c2.ReadAt(buf, int64(lba)*BlockSize)
				require.NoError(t, err)
				if lba != tc.cut {
					require.Equal(t, pattern(lba), buf, "block %d: its record is whole, before or after the hole", lba)
				} else {
					require.Equal(t, make([]byte, BlockSize), buf, "block %d: its record is the hole", lba)
				}
			}
		})
	}
}

// TestJournalMappedOnFile: on a buffered cache file the journal is a shared
// memory mapping, and a record is in the file's page cache (readable by
// any other opener, so kept if the process dies) as soon as the write that
// made it returns, with no sync and no close.
func TestJournalMappedOnFile(t *testing.T) {
	c, ssdPath, hddPath := fileCache(t, false)
	defer c.Close()
	require.Equal(t, "*device.mapRegion", typeName(c.j.reg), "a buffered cache file must get a mapped journal")

	other, err := device.Open(ssdPath, device.Options{ReadOnly: true})
	require.NoError(t, err)
	defer other.Close()
	lsn := c.j.checkpointLSN()
	blk := make([]byte, BlockSize)
	for lba := 0; lba < 50; lba++ {
		_, err := c.WriteAt(pattern(lba), int64(lba)*BlockSize)
		require.NoError(t, err)
		_, err = other.ReadAt(blk, c.g.JournalOffset(lsn))
		require.NoError(t, err)
		h, recs, err := layout.DecodeJournalBlock(blk, c.uuid, nil)
		require.NoError(t, err)
		require.Equal(t, lsn, h.LSN)
		require.Equal(t, lba+1, h.Count, "the record of write %d must be in the page cache when the write returns", lba)
		last := recs[len(recs)-1]
		require.Equal(t, layout.RecMap, last.Type)
		require.Equal(t, uint64(lba), last.LBA)
		require.Equal(t, layout.DataCRC(pattern(lba)), last.CRC)
	}

	// A cache opened from a second handle of the same file (what a
	// restarted process sees) recovers every write, with no sync done.
	reopenReads(t, ssdPath, hddPath, 50)
}

// reopenReads opens the cache again through new handles of its files
// (what a restarted process sees) and checks that blocks 0 to n-1 read as
// pattern.
func reopenReads(t *testing.T, ssdPath, hddPath string, n int) {
	t.Helper()
	ssd2, hdd2 := openFiles(t, ssdPath, hddPath, false)
	c2, err := Open(ssd2, hdd2, Options{CheckpointInterval: -1, NoBackgroundBackingSync: true})
	require.NoError(t, err)
	defer c2.Close()
	buf := make([]byte, BlockSize)
	for lba := 0; lba < n; lba++ {
		_, err := c2.ReadAt(buf, int64(lba)*BlockSize)
		require.NoError(t, err)
		require.Equal(t, pattern(lba), buf, "block %d", lba)
	}
}

// TestJournalDirectFileWrites: a cache file opened O_DIRECT cannot share
// a mapping coherently, so its journal writes through WriteAt.
func TestJournalDirectFileWrites(t *testing.T) {
	c, _, _ := fileCache(t, true)
	require.NotEqual(t, "*device.mapRegion", typeName(c.j.reg))
	b := device.AlignedBuffer(BlockSize)
	copy(b, pattern(3))
	_, err := c.WriteAt(b, 3*BlockSize)
	require.NoError(t, err)
	require.NoError(t, c.Close())
}

// TestPinSyncsOncePerSnapshot: Pin makes the snapshot's records durable
// with one sync; later batches from the same snapshot need none, and a
// newer snapshot with unsynced records gets its own.
func TestPinSyncsOncePerSnapshot(t *testing.T) {
	_, _, c := memCache(t)
	defer c.Close()
	syncs := func() uint64 { return c.j.stats().syncs }
	for lba := 0; lba < 40; lba++ {
		_, err := c.WriteAt(pattern(lba), int64(lba)*BlockSize)
		require.NoError(t, err)
	}
	snap := c.DirtyBlocks(nil)
	require.Len(t, snap, 40)
	before := syncs()
	p1, err := c.Pin(snap[:10])
	require.NoError(t, err)
	require.Len(t, p1, 10)
	require.Equal(t, before+1, syncs(), "the first batch syncs the snapshot's records")
	require.GreaterOrEqual(t, c.j.durable(), c.snapSeq.Load())
	p2, err := c.Pin(snap[10:20])
	require.NoError(t, err)
	require.Len(t, p2, 10)
	require.Equal(t, before+1, syncs(), "a later batch of the same snapshot needs no sync")
	require.NoError(t, c.Complete(p1, false))
	require.NoError(t, c.Complete(p2, false))
	c.j.mu.Lock()
	reserved := c.j.reserved
	c.j.mu.Unlock()
	require.Zero(t, reserved, "a completion that journals nothing holds no journal room")

	// A rewrite after the snapshot: the next snapshot holds an unsynced
	// record, so pinning from it syncs again.
	_, err = c.WriteAt(pattern(99), 25*BlockSize)
	require.NoError(t, err)
	snap = c.DirtyBlocks(nil)
	_, err = c.Pin(snap)
	require.NoError(t, err)
	require.Equal(t, before+2, syncs())
}

// TestRewriteInPlace: a dirty block rewritten before any sync covers its
// record is rewritten in its slot; once a sync has begun, the next rewrite
// goes to a new slot (the old one holds a version a power cut must keep).
func TestRewriteInPlace(t *testing.T) {
	_, _, c := memCache(t)
	defer c.Close()
	slotOf := func(lba uint64) uint32 {
		c.mu.Lock()
		defer c.mu.Unlock()
		s, ok := c.mu.t.lookup(lba)
		require.True(t, ok)
		return s
	}
	_, err := c.WriteAt(pattern(1), 5*BlockSize)
	require.NoError(t, err)
	s0 := slotOf(5)
	_, err = c.WriteAt(pattern(2), 5*BlockSize)
	require.NoError(t, err)
	require.Equal(t, s0, slotOf(5), "rewritten in place")
	// A partial write (read-modify-write) qualifies too.
	_, err = c.WriteAt([]byte("hello"), 5*BlockSize+100)
	require.NoError(t, err)
	require.Equal(t, s0, slotOf(5))
	require.Equal(t, uint64(2), c.Stats().WritesInPlace)
	want := pattern(2)
	copy(want[100:], "hello")
	got := make([]byte, BlockSize)
	_, err = c.ReadAt(got, 5*BlockSize)
	require.NoError(t, err)
	require.Equal(t, want, got)

	require.NoError(t, c.Sync())
	_, err = c.WriteAt(pattern(3), 5*BlockSize)
	require.NoError(t, err)
	s1 := slotOf(5)
	require.NotEqual(t, s0, s1, "after a sync the durable version's slot is kept")
	require.Equal(t, uint64(2), c.Stats().WritesInPlace)
	_, err = c.WriteAt(pattern(4), 5*BlockSize)
	require.NoError(t, err)
	require.Equal(t, s1, slotOf(5), "the new slot is fresh again")

	// A pinned block (destage in flight) is never rewritten in place.
	pinned, err := c.Pin(c.DirtyBlocks(nil))
	require.NoError(t, err)
	require.Len(t, pinned, 1)
	_, err = c.WriteAt(pattern(5), 5*BlockSize)
	require.NoError(t, err)
	require.NotEqual(t, s1, slotOf(5))
	require.NoError(t, c.Complete(pinned, false))
	_, err = c.ReadAt(got, 5*BlockSize)
	require.NoError(t, err)
	require.Equal(t, pattern(5), got)
}

// gateDev holds writes at one offset until released.
type gateDev struct {
	*device.Mem
	off     atomic.Int64 // -1: no gate
	arrived chan struct{}
	release chan struct{}
}

func (g *gateDev) WriteAt(p []byte, off int64) (int, error) {
	if off == g.off.Load() {
		g.off.Store(-1)
		close(g.arrived)
		<-g.release
	}
	return g.Mem.WriteAt(p, off)
}

// TestRewriteInPlaceProcessCrash: a process crash after an in-place MAP
// record is journaled but before its data is written voids that record
// alone: the block keeps its acknowledged version, and every write
// acknowledged after the record (here, another block's) survives.
func TestRewriteInPlaceProcessCrash(t *testing.T) {
	mem := device.NewMem(8<<20, [16]byte{1})
	hdd := device.NewMem(64<<20, [16]byte{2})
	require.NoError(t, Format(mem, hdd, FormatOptions{}))
	g := &gateDev{Mem: mem, arrived: make(chan struct{}), release: make(chan struct{})}
	g.off.Store(-1)
	c, err := Open(g, hdd, Options{CheckpointInterval: -1, NoBackgroundBackingSync: true})
	require.NoError(t, err)
	const a, b = 7, 8
	require.True(t, c.stripe(a) != c.stripe(b), "the two blocks must not share a stripe lock")
	_, err = c.WriteAt(pattern(1), a*BlockSize)
	require.NoError(t, err)
	c.mu.Lock()
	s, _ := c.mu.t.lookup(a)
	c.mu.Unlock()
	g.off.Store(c.g.SlotOffset(uint64(s)))
	done := make(chan error)
	go func() {
		_, err := c.WriteAt(pattern(2), a*BlockSize) // in place: record, then data (held)
		done <- err
	}()
	<-g.arrived
	_, err = c.WriteAt(pattern(3), b*BlockSize)
	require.NoError(t, err)
	img := mem.CrashProcess() // the process dies here
	close(g.release)
	require.NoError(t, <-done)
	require.Equal(t, uint64(1), c.Stats().WritesInPlace)
	require.NoError(t, c.Close())

	c2, err := Open(img, hdd.CrashProcess(), Options{CheckpointInterval: -1, NoBackgroundBackingSync: true})
	require.NoError(t, err)
	defer c2.Close()
	got := make([]byte, BlockSize)
	_, err = c2.ReadAt(got, a*BlockSize)
	require.NoError(t, err)
	require.Equal(t, pattern(1), got, "the acknowledged version stands")
	_, err = c2.ReadAt(got, b*BlockSize)
	require.NoError(t, err)
	require.Equal(t, pattern(3), got, "a write acknowledged after the in-place record survives")
}

// TestWriteFromCallerBuffer: a whole-block write into a buffered cache file
// is written straight from the caller's buffer; an O_DIRECT cache file
// needs an aligned copy. Either way any buffer alignment works, and the
// caller may reuse its buffer as soon as WriteAt returns.
func TestWriteFromCallerBuffer(t *testing.T) {
	for _, direct := range []bool{false, true} {
		c, _, _ := fileCache(t, direct)
		require.Equal(t, direct, c.ssdAligned)
		raw := make([]byte, 2*BlockSize+1)
		buf := raw[1 : 1+BlockSize] // never 4 KiB aligned
		for lba := 0; lba < 20; lba++ {
			copy(buf, pattern(lba))
			_, err := c.WriteAt(buf, int64(lba)*BlockSize)
			require.NoError(t, err, "direct=%v", direct)
			copy(buf, pattern(lba+1000)) // reused at once
			// Again, so the second write can go in place.
			copy(buf, pattern(lba))
			_, err = c.WriteAt(buf, int64(lba)*BlockSize)
			require.NoError(t, err, "direct=%v", direct)
			clear(buf)
		}
		got := make([]byte, BlockSize)
		for lba := 0; lba < 20; lba++ {
			_, err := c.ReadAt(got, int64(lba)*BlockSize)
			require.NoError(t, err)
			require.Equal(t, pattern(lba), got, "direct=%v block %d", direct, lba)
		}
		require.NoError(t, c.Close())
	}
}

// TestStaleCheckpointRequest: a checkpoint request found after the journal
// has room again (appends ask while a checkpoint runs) writes no
// checkpoint; a ring at least half used does.
func TestStaleCheckpointRequest(t *testing.T) {
	_, _, c := memCache(t)
	defer c.Close()
	before := c.Stats().Checkpoints
	c.requestCheckpoint()
	time.Sleep(50 * time.Millisecond)
	require.Equal(t, before, c.Stats().Checkpoints, "the ring is nearly empty: the request is stale")
	// Fill half the ring: the appends ask, and this time it is needed.
	n := int(c.g.JournalBlocks/2+1) * layout.RecordsPerBlock
	for i := 0; i < n; i++ {
		_, err := c.WriteAt(pattern(i%64), int64(i%64)*BlockSize)
		require.NoError(t, err)
	}
	require.Eventually(t, func() bool { return c.Stats().Checkpoints > before }, 10*time.Second, time.Millisecond)
}

// TestPinTakesCurrentVersion: a block rewritten between the snapshot and
// Pin (in place, or into a new slot) is pinned at its current version,
// whose record Pin makes durable; the destage then reads that version.
func TestPinTakesCurrentVersion(t *testing.T) {
	_, _, c := memCache(t)
	defer c.Close()
	for lba := 0; lba < 4; lba++ {
		_, err := c.WriteAt(pattern(lba), int64(lba)*BlockSize)
		require.NoError(t, err)
	}
	snap := c.DirtyBlocks(nil)
	require.Len(t, snap, 4)
	_, err := c.WriteAt(pattern(100), 1*BlockSize) // no sync since: in place
	require.NoError(t, err)
	require.NoError(t, c.syncJournal())
	_, err = c.WriteAt(pattern(200), 2*BlockSize) // after a sync: a new slot
	require.NoError(t, err)
	last := c.j.lastSeq()

	pinned, newer, err := c.PinWait(slices.Clone(snap), nil) // Pin filters in place
	require.NoError(t, err)
	require.Len(t, pinned, 4)
	require.Equal(t, 2, newer, "two blocks were pinned at newer versions")
	require.GreaterOrEqual(t, c.j.durable(), last, "the newer versions' records are durable")
	require.Equal(t, snap[0].Slot, pinned[0].Slot)
	require.Equal(t, snap[1].Slot, pinned[1].Slot, "rewritten in place")
	require.Equal(t, layout.DataCRC(pattern(100)), pinned[1].CRC)
	require.NotEqual(t, snap[2].Slot, pinned[2].Slot, "rewritten into a new slot")
	require.Equal(t, layout.DataCRC(pattern(200)), pinned[2].CRC)
	require.Equal(t, uint64(2), c.Stats().DestageNewer)
	buf := make([]byte, 4*BlockSize)
	require.NoError(t, c.ReadSlots(pinned, buf))
	require.Equal(t, pattern(100), buf[BlockSize:2*BlockSize])
	require.Equal(t, pattern(200), buf[2*BlockSize:3*BlockSize])
	require.NoError(t, c.Complete(pinned, true))
	require.Zero(t, c.Stats().Dirty)
}

// waitPrepared waits until the journal has prepared block lsn.
func waitPrepared(t *testing.T, j *journal, lsn uint64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		j.mu.Lock()
		done := j.prepEnd > lsn
		j.mu.Unlock()
		if done {
			return
		}
		require.True(t, time.Now().Before(deadline), "journal block %d was never prepared", lsn)
		time.Sleep(time.Millisecond)
	}
}

// TestJournalOpensPreparedBlocks: on a mapped journal every block after
// the first is prepared ahead (by a write done with its locks, or the
// journal goroutine) and opened with a copy, and the blocks so written read back, from another handle, as the
// journal's format says (header, the records, zeros after them), and
// replay to every write.
func TestJournalOpensPreparedBlocks(t *testing.T) {
	c, ssdPath, hddPath := fileCache(t, false)
	defer c.Close()
	require.True(t, c.j.mapped)
	first := c.j.checkpointLSN()
	const blocks = 6
	n := 0
	for b := 0; b < blocks; b++ {
		if b > 0 {
			waitPrepared(t, c.j, first+uint64(b))
		}
		for k := 0; k < layout.RecordsPerBlock; k++ {
			_, err := c.WriteAt(pattern(n), int64(n)*BlockSize)
			require.NoError(t, err)
			n++
		}
	}
	c.j.mu.Lock()
	opens, blocksStarted := c.j.prepOpens, c.j.blocks
	c.j.mu.Unlock()
	require.Equal(t, uint64(blocks), blocksStarted)
	require.Equal(t, uint64(blocks-1), opens, "every block after the first opens prepared")
	require.Equal(t, opens, c.Stats().JournalPrepared, "the status counts them")

	other, err := device.Open(ssdPath, device.Options{ReadOnly: true})
	require.NoError(t, err)
	defer other.Close()
	blk := make([]byte, BlockSize)
	lba := 0
	for b := 0; b < blocks; b++ {
		_, err = other.ReadAt(blk, c.g.JournalOffset(first+uint64(b)))
		require.NoError(t, err)
		h, recs, err := layout.DecodeJournalBlock(blk, c.uuid, nil)
		require.NoError(t, err, "block %d", b)
		require.Equal(t, first+uint64(b), h.LSN)
		require.Equal(t, layout.RecordsPerBlock, h.Count, "block %d", b)
		for _, r := range recs {
			require.Equal(t, uint64(lba), r.LBA)
			lba++
		}
	}
	// The block prepared after the last one holds zeros: no block at all.
	_, err = other.ReadAt(blk, c.g.JournalOffset(first+blocks))
	require.NoError(t, err)
	waitPrepared(t, c.j, first+blocks)
	_, err = other.ReadAt(blk, c.g.JournalOffset(first+blocks))
	require.NoError(t, err)
	require.Equal(t, make([]byte, BlockSize), blk)
	reopenReads(t, ssdPath, hddPath, n)
}

// holdPreparations makes every preparation of a journal block send its
// LSN on started and wait until release is closed. The caller removes
// the hook (tracePrepare.Store(nil)).
func holdPreparations() (started chan uint64, release chan struct{}) {
	started, release = make(chan uint64, 4), make(chan struct{})
	hook := func(lsn uint64) {
		started <- lsn
		<-release
	}
	tracePrepare.Store(&hook)
	return started, release
}

// TestJournalWaitsForPreparation: a write that would open a block under
// preparation waits until the zeros are written, so
// they cannot land over its record, then opens it prepared.
func TestJournalWaitsForPreparation(t *testing.T) {
	c, ssdPath, _ := fileCache(t, false)
	defer c.Close()
	first := c.j.checkpointLSN()
	started, release := holdPreparations()
	defer tracePrepare.Store(nil)

	n := 0
	for ; n < prepareAt-1; n++ {
		_, err := c.WriteAt(pattern(n), int64(n)*BlockSize)
		require.NoError(t, err)
	}
	// The write that makes the block half full asks for the next one and
	// prepares it itself once it holds no lock (or the journal goroutine
	// does): the hook holds the preparation there.
	asked := make(chan error, 1)
	go func(n int) {
		_, err := c.WriteAt(pattern(n), int64(n)*BlockSize)
		asked <- err
	}(n)
	n++
	require.Equal(t, first+1, <-started, "block %d half full asks for the next one", first)
	// A sync ends the open block: the next record opens the one being
	// prepared.
	require.NoError(t, c.Sync())
	done := make(chan error, 1)
	go func() {
		_, err := c.WriteAt(pattern(n), int64(n)*BlockSize)
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("the write returned (%v) while its journal block was being prepared", err)
	case <-time.After(100 * time.Millisecond):
	}
	tracePrepare.Store(nil)
	close(release)
	require.NoError(t, <-done)
	require.NoError(t, <-asked)

	c.j.mu.Lock()
	opens := c.j.prepOpens
	c.j.mu.Unlock()
	require.Equal(t, uint64(1), opens)
	other, err := device.Open(ssdPath, device.Options{ReadOnly: true})
	require.NoError(t, err)
	defer other.Close()
	blk := make([]byte, BlockSize)
	_, err = other.ReadAt(blk, c.g.JournalOffset(first+1))
	require.NoError(t, err)
	h, recs, err := layout.DecodeJournalBlock(blk, c.uuid, nil)
	require.NoError(t, err)
	require.Equal(t, first+1, h.LSN)
	require.Equal(t, 1, h.Count)
	require.Equal(t, uint64(n), recs[0].LBA)
}
