package blockcache

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wbcache/wbcache/device"
	"github.com/wbcache/wbcache/layout"
)

// versionOf is block lba's content at version v (0: never written).
func versionOf(lba, v int) []byte {
	b := make([]byte, BlockSize)
	if v == 0 {
		return b
	}
	for i := range b {
		b[i] = byte(lba + 3*v)
	}
	binary.LittleEndian.PutUint64(b, uint64(lba))
	binary.LittleEndian.PutUint64(b[8:], uint64(v))
	return b
}

// killedImage copies the cache file at path as the page cache holds it
// now, which is what a process killed now leaves, and returns the copy's
// path. The backing file is not copied: in mode writeback, with no
// write-back running, it is not written, so it is its own image (and a
// copy would be another device to the cache).
func killedImage(t *testing.T, path string) string {
	img := filepath.Join(t.TempDir(), "ssd")
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(img, b, 0o600))
	return img
}

// TestJournalAppendsSideBySide: on a mapped journal, writers of
// different blocks place their records without the journal's lock, and
// a writer that has its place but has not copied its record yet holds no
// one up. The image a killed process leaves at that moment (the cache
// file's page cache) recovers every acknowledged write exactly: the
// records copied after the holes count, and each hole loses only its own
// write, which was not acknowledged.
func TestJournalAppendsSideBySide(t *testing.T) {
	for round := range 4 {
		t.Run(fmt.Sprintf("round %d", round), func(t *testing.T) { appendsSideBySide(t, uint64(round)) })
	}
}

// appendsSideBySide is one round of TestJournalAppendsSideBySide: the
// records held are at positions that leave rest divided by 5.
func appendsSideBySide(t *testing.T, rest uint64) {
	c, ssdPath, hddPath := fileCache(t, false)
	require.True(t, c.j.mapped)

	var locked atomic.Int64
	countLocked := func() { locked.Add(1) }
	traceLocked.Store(&countLocked)
	defer traceLocked.Store(nil)

	// Once armed, the first holes records placed at positions that leave
	// rest divided by 5 wait (before their copy) until release is closed.
	const holes = 3
	var (
		armed   atomic.Bool
		mu      sync.Mutex
		held    []uint64 // sequence numbers of the records held
		placed  []uint64 // of the others, once armed
		release = make(chan struct{})
	)
	hold := func(seq uint64) {
		if !armed.Load() {
			return
		}
		mu.Lock()
		if len(held) < holes && seq%5 == rest {
			held = append(held, seq)
			mu.Unlock()
			<-release
			return
		}
		placed = append(placed, seq)
		mu.Unlock()
	}
	tracePlaced.Store(&hold)
	defer tracePlaced.Store(nil)

	// Each writer's blocks are of shards of its own, so that a held
	// record (whose writer keeps its shard locked) stops only its writer.
	shards := len(c.mu.t.shards)
	writers := min(8, shards)
	require.GreaterOrEqual(t, writers, 4)
	const perWriter = 48
	lbas := make([][]int, writers)
	total, nblocks := 0, 0
	for ; total < writers*perWriter; nblocks++ {
		if w := int(hashLBA(uint64(nblocks))&c.mu.t.mask) % writers; len(lbas[w]) < perWriter {
			lbas[w] = append(lbas[w], nblocks)
			total++
		}
	}
	acked := make([]atomic.Int64, nblocks)
	writing := make([]atomic.Int64, writers) // the block each writer is writing, -1: none
	var stop atomic.Bool
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			writing[w].Store(-1)
			for v := 1; ; v++ {
				for _, lba := range lbas[w] {
					writing[w].Store(int64(lba))
					if stop.Load() {
						writing[w].Store(-1)
						return
					}
					if _, err := c.WriteAt(versionOf(lba, v), int64(lba)*BlockSize); err != nil {
						t.Errorf("write of block %d: %v", lba, err)
						return
					}
					acked[lba].Store(int64(v))
					writing[w].Store(-1)
				}
			}
		}()
	}
	defer func() {
		stop.Store(true)
		select {
		case <-release:
		default:
			close(release)
		}
		wg.Wait()
	}()

	// Armed early, so that the ring has room for what follows: a held
	// record holds off every sync, and with it every checkpoint.
	for c.j.lastSeq()%posBlock < 20 && c.j.stats().blocks < 2 {
		time.Sleep(100 * time.Microsecond)
	}
	armed.Store(true)
	// Writes go on around the held records, 300 of them; then the
	// writers stop, those of the held records' shards waiting for them.
	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		n, p := len(held), len(placed)
		mu.Unlock()
		if n == holes && p >= 300 {
			break
		}
		require.True(t, time.Now().Before(deadline), "writers placed too few records (%d held, %d placed, %d took the lock, %+v)", n, p, locked.Load(), c.j.stats())
		time.Sleep(100 * time.Microsecond)
	}
	stop.Store(true)
	time.Sleep(200 * time.Millisecond)

	mu.Lock()
	after := 0 // records placed after a held one in its block, whole by now
	for _, h := range held {
		for _, p := range placed {
			if p > h && p/posBlock == h/posBlock {
				after++
			}
		}
	}
	mu.Unlock()
	require.NotZero(t, after, "records must be placed beside the held ones, in their blocks")

	// A write still under way (held, waiting for a held writer's shard,
	// or slow to finish) may be in the image or not: its block reads as
	// the version acknowledged or the next.
	want := make([]int, nblocks)
	inFlight := map[int]bool{}
	for w := range writers {
		if lba := writing[w].Load(); lba >= 0 {
			inFlight[int(lba)] = true
		}
	}
	for lba := range want {
		want[lba] = int(acked[lba].Load())
	}
	ssdImg := killedImage(t, ssdPath)
	close(release)
	wg.Wait()

	st := c.j.stats()
	require.Greater(t, st.records, uint64(300))
	require.Less(t, locked.Load()*4, int64(st.records), "most appends must take their place without the journal's lock (%d of %d took it)", locked.Load(), st.records)
	require.NoError(t, c.Close())

	ssd, hdd := openFiles(t, ssdImg, hddPath, false)
	r, err := Check(ssd, hdd)
	require.NoError(t, err)
	require.True(t, r.OK(), r.String())
	c2, err := Open(ssd, hdd, Options{CheckpointInterval: -1, NoBackgroundBackingSync: true})
	require.NoError(t, err)
	defer c2.Close()
	buf := make([]byte, BlockSize)
	for lba, v := range want {
		_, err := c2.ReadAt(buf, int64(lba)*BlockSize)
		require.NoError(t, err)
		got := int(binary.LittleEndian.Uint64(buf[8:]))
		if inFlight[lba] && bytes.Equal(buf, versionOf(lba, v+1)) {
			continue
		}
		require.Equal(t, versionOf(lba, v), buf, "block %d: acknowledged version %d, read version %d", lba, v, got)
	}
}

// TestJournalOpenWaitsForPreparation: the block after the open one is
// prepared (written with zeros) with the journal's lock released. An
// append that holds the lock while the open block has room, and finds it
// full because a writer without the lock took the last place, must wait
// for that preparation before it opens the block: else the zeros land
// over the new block's header and first record.
func TestJournalOpenWaitsForPreparation(t *testing.T) {
	c, ssdPath, _ := fileCache(t, false)
	g, uuid := c.g, c.uuid
	require.NoError(t, c.Close())
	dev, err := device.Open(ssdPath, device.Options{})
	require.NoError(t, err)
	defer dev.Close()
	const first = 1000
	j, err := newJournal(dev, g, uuid, 99, first, 0, false, func() {})
	require.NoError(t, err)
	require.True(t, j.mapped)

	started, release := holdPreparations()
	defer tracePrepare.Store(nil)
	released := false
	defer func() {
		if !released {
			close(release)
		}
		j.close()
	}()

	r := layout.Record{Type: layout.RecMap, Flags: layout.RecordDirty, Slot: 1, LBA: 2, CRC: 3}
	for range layout.RecordsPerBlock - 1 {
		j.appendGen(r)
	}
	require.Equal(t, uint64(first+1), <-started, "the next block's preparation is under way")

	// The append below takes the lock with one place left; a writer
	// without the lock takes it first.
	var once sync.Once
	fill := func() {
		once.Do(func() {
			_, _, ok := j.appendFast(r, false)
			require.True(t, ok)
		})
	}
	traceLocked.Store(&fill)
	defer traceLocked.Store(nil)
	opened := make(chan uint64)
	go func() {
		j.mu.Lock()
		seq, _ := j.appendLocked(r, false)
		j.mu.Unlock()
		opened <- seq
	}()
	select {
	case seq := <-opened:
		t.Fatalf("block %d was opened (record %d) while it was being prepared", first+1, seq)
	case <-time.After(100 * time.Millisecond):
	}
	close(release)
	released = true
	seq := <-opened
	lsn, _ := splitPos(seq)
	require.Equal(t, uint64(first+1), lsn)

	b := make([]byte, BlockSize)
	_, err = dev.ReadAt(b, g.JournalOffset(first+1))
	require.NoError(t, err)
	h, recs, err := layout.DecodeJournalBlock(b, uuid, nil)
	require.NoError(t, err, "the opened block's header survives its preparation")
	require.Equal(t, uint64(first+1), h.LSN)
	require.Equal(t, layout.RecordsPerBlock, h.PrevCount)
	require.Equal(t, []layout.Record{r}, recs)
}

// TestOrderingWaitsForChainedJournal: ordered write-back set over an
// open journal block of records checked alone comes into force only once
// a sync has ended that block, so that every write while it is in force
// goes into chained blocks (journal.chainedNow).
func TestOrderingWaitsForChainedJournal(t *testing.T) {
	c, _, _ := fileCache(t, false)
	defer c.Close()
	_, err := c.WriteAt(versionOf(7, 1), 7*BlockSize)
	require.NoError(t, err)
	require.NoError(t, c.Discard(7*BlockSize, BlockSize)) // nothing dirty: ordering may resume at once
	_, n := splitPos(c.j.lastSeq())
	require.NotZero(t, n, "a block of records checked alone is open")
	s := c.Settings()
	s.Order, s.SetMask = layout.OrderOrdered, s.SetMask|layout.SetOrder
	require.NoError(t, c.SetSettings(s))
	deadline := time.Now().Add(5 * time.Second)
	for !c.Order().InForce {
		require.True(t, time.Now().Before(deadline), "ordering never came into force")
		time.Sleep(time.Millisecond)
	}
	for lba := range 3 {
		_, err = c.WriteAt(versionOf(lba+8, 1), int64(lba+8)*BlockSize)
		require.NoError(t, err)
		p := c.j.pos.Load()
		require.NotZero(t, p&posChained, "a write while ordering is in force went into a block of records checked alone")
	}
}

// TestChainedBlockWaitsForCopies: the first chained block after blocks
// of records checked alone opens only once every record placed before
// it is copied. Replay stops at a hole before a chained block, so a
// write acknowledged in the chained block while an earlier writer was
// still copying its record would be lost if the process died then.
func TestChainedBlockWaitsForCopies(t *testing.T) {
	c, ssdPath, hddPath := fileCache(t, false)
	// A dirty version of an earlier epoch keeps ordering suspended: writes
	// then take only their shards' locks, and records are placed side by
	// side until the open block is left.
	_, err := c.WriteAt(versionOf(5000, 1), 5000*BlockSize)
	require.NoError(t, err)
	require.NoError(t, c.Sync())
	_, err = c.WriteAt(versionOf(5001, 1), 5001*BlockSize)
	require.NoError(t, err)
	s := c.Settings()
	s.Order, s.SetMask = layout.OrderOrdered, s.SetMask|layout.SetOrder
	require.NoError(t, c.SetSettings(s))
	c.mu.Lock()
	require.False(t, c.orderingLocked(), "ordering suspended")
	c.mu.Unlock()

	// Fill the open block up to its last place; the write of block a takes
	// that place and is held before its copy.
	lba := 0
	for {
		if _, n := splitPos(c.j.lastSeq()); n == layout.RecordsPerBlock-1 {
			break
		}
		_, err := c.WriteAt(versionOf(lba, 1), int64(lba)*BlockSize)
		require.NoError(t, err)
		lba++
	}
	a, b := lba, lba+1
	for c.mu.t.shardOf(uint64(b)) == c.mu.t.shardOf(uint64(a)) {
		b++
	}
	held, release := make(chan uint64, 1), make(chan struct{})
	hold := func(seq uint64) {
		if _, n := splitPos(seq); n == layout.RecordsPerBlock {
			held <- seq
			<-release
		}
	}
	tracePlaced.Store(&hold)
	defer tracePlaced.Store(nil)
	aDone, bDone := make(chan error, 1), make(chan error, 1)
	go func() {
		_, err := c.WriteAt(versionOf(a, 1), int64(a)*BlockSize)
		aDone <- err
	}()
	<-held
	go func() {
		_, err := c.WriteAt(versionOf(b, 1), int64(b)*BlockSize)
		bDone <- err
	}()
	select {
	case err := <-bDone:
		close(release)
		t.Fatalf("block %d's write (%v) was acknowledged in a chained block while block %d's record was not copied yet", b, err, a)
	case <-time.After(100 * time.Millisecond):
	}
	close(release)
	require.NoError(t, <-aDone)
	require.NoError(t, <-bDone)
	require.NotZero(t, c.j.pos.Load()&posChained, "block %d's record opened a chained block", b)

	// What a process killed now leaves holds both.
	img := killedImage(t, ssdPath)
	require.NoError(t, c.Close())
	ssd, hdd := openFiles(t, img, hddPath, false)
	c2, err := Open(ssd, hdd, Options{CheckpointInterval: -1, NoBackgroundBackingSync: true})
	require.NoError(t, err)
	defer c2.Close()
	buf := make([]byte, BlockSize)
	for _, x := range []int{a, b} {
		_, err = c2.ReadAt(buf, int64(x)*BlockSize)
		require.NoError(t, err)
		require.Equal(t, versionOf(x, 1), buf, "block %d", x)
	}
}
