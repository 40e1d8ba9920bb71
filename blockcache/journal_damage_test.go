package blockcache

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/wbcache/wbcache/device"
	"github.com/wbcache/wbcache/layout"
)

// damageLog writes a journal of known shape: each step writes n blocks
// never written before (one MAP record each), optionally followed by a
// Sync, and remembers which journal block every record went to.
type damageLog struct {
	t     *testing.T
	ssd   *device.Mem
	hdd   *device.Mem
	c     *Cache
	lbas  int               // blocks written so far: LBAs 0..lbas-1
	where map[int][2]uint64 // LBA -> journal block LSN, record index
}

func newDamageLog(t *testing.T) *damageLog {
	ssd, hdd, c := memCache(t)
	t.Cleanup(func() { c.Close() })
	return &damageLog{t: t, ssd: ssd, hdd: hdd, c: c, where: map[int][2]uint64{}}
}

// write writes n new blocks, then syncs if sync is set.
func (l *damageLog) write(n int, sync bool) {
	for range n {
		l.c.j.mu.Lock()
		if open, n := l.c.j.openLSNLocked(); n == layout.RecordsPerBlock {
			l.where[l.lbas] = [2]uint64{open + 1, 0}
		} else {
			l.where[l.lbas] = [2]uint64{open, uint64(n)}
		}
		l.c.j.mu.Unlock()
		_, err := l.c.WriteAt(pattern(l.lbas), int64(l.lbas)*BlockSize)
		require.NoError(l.t, err)
		l.lbas++
	}
	if sync {
		require.NoError(l.t, l.c.Sync())
	}
}

// unsyncedBlocks is a log of four batches of 40 writes, each synced, then
// three journal blocks' worth of writes ended only by filling up: no sync
// covers them.
func unsyncedBlocks(t *testing.T) *damageLog {
	l := newDamageLog(t)
	for range 4 {
		l.write(40, true)
	}
	l.write(3*layout.RecordsPerBlock, false)
	return l
}

// block is the LSN of the journal block that holds the record of lba.
func (l *damageLog) block(lba int) uint64 { return l.where[lba][0] }

// crash returns the images a killed process leaves: everything written.
func (l *damageLog) crash() (*device.Mem, *device.Mem) {
	return l.ssd.CrashProcess(), l.hdd.CrashProcess()
}

// overwrite writes b into image img at byte off of journal block lsn.
func (l *damageLog) overwrite(img *device.Mem, lsn uint64, off int, b []byte) {
	_, err := img.WriteAt(b, l.c.g.JournalOffset(lsn)+int64(off))
	require.NoError(l.t, err)
}

// flip inverts one bit of byte off of journal block lsn in img.
func (l *damageLog) flip(img *device.Mem, lsn uint64, off int) {
	b := make([]byte, 1)
	_, err := img.ReadAt(b, l.c.g.JournalOffset(lsn)+int64(off))
	require.NoError(l.t, err)
	b[0] ^= 0x04
	l.overwrite(img, lsn, off, b)
}

// requireRecovered opens the images and checks that blocks 0..want-1
// hold what was written and every later one reads as zeros (its record
// was after the tear), and that Check finds nothing wrong and replayed
// records.
func (l *damageLog) requireRecovered(ssd, hdd *device.Mem, want, replayed int) {
	l.requireRecoveredBut(ssd, hdd, func(lba int) bool { return lba >= want }, replayed)
}

// requireRecoveredBut is requireRecovered where the blocks whose records
// were lost are those lost says.
func (l *damageLog) requireRecoveredBut(ssd, hdd *device.Mem, lost func(lba int) bool, replayed int) {
	t := l.t
	r, err := Check(ssd, hdd)
	require.NoError(t, err)
	require.True(t, r.OK(), r.String())
	require.False(t, r.JournalDamaged)
	require.Equal(t, replayed, r.Replayed, r.String())
	c, err := Open(ssd, hdd, Options{CheckpointInterval: -1, NoBackgroundBackingSync: true})
	require.NoError(t, err)
	defer c.Close()
	buf := make([]byte, BlockSize)
	for lba := 0; lba < l.lbas; lba++ {
		_, err := c.ReadAt(buf, int64(lba)*BlockSize)
		require.NoError(t, err)
		if !lost(lba) {
			require.Equal(t, pattern(lba), buf, "block %d: its record is whole", lba)
		} else {
			require.Equal(t, make([]byte, BlockSize), buf, "block %d: its record was lost", lba)
		}
	}
}

// TestJournalDamageMidLogRefused: damage to a journal block that a
// completed sync covered (two later blocks were ended by syncs, the
// second begun after the first completed) is refused by Open and
// reported by Check, naming the block, instead of replay stopping there
// and serving what the journal held before it.
func TestJournalDamageMidLogRefused(t *testing.T) {
	for _, tc := range []struct {
		name string
		// lba whose journal block is damaged, and the damage
		lba     int
		damage  func(l *damageLog, img *device.Mem, lsn uint64)
		records int // valid records before the damage
	}{
		{"record byte", 2*40 + 17, func(l *damageLog, img *device.Mem, lsn uint64) {
			l.flip(img, lsn, layout.RecordOffset(17)+9) // record 17's LBA
		}, 2*40 + 39}, // a hole: the block's other records still count
		{"record checksum", 2*40 + 39, func(l *damageLog, img *device.Mem, lsn uint64) {
			l.flip(img, lsn, layout.RecordOffset(39)+29) // the block's last record
		}, 2*40 + 39},
		{"header byte", 2 * 40, func(l *damageLog, img *device.Mem, lsn uint64) {
			l.flip(img, lsn, 9)
		}, 2 * 40},
		{"zeroed block", 2 * 40, func(l *damageLog, img *device.Mem, lsn uint64) {
			l.overwrite(img, lsn, 0, make([]byte, BlockSize))
		}, 2 * 40},
		{"block of an earlier incarnation", 2 * 40, func(l *damageLog, img *device.Mem, lsn uint64) {
			b := make([]byte, BlockSize)
			layout.EncodeJournalBlock(b, l.c.uuid, layout.JournalHeader{LSN: lsn, Incarnation: l.c.j.inc - 1}, nil)
			l.overwrite(img, lsn, 0, b)
		}, 2 * 40},
		{"first block record", 5, func(l *damageLog, img *device.Mem, lsn uint64) {
			l.flip(img, lsn, layout.RecordOffset(5)+1)
		}, 39},
		{"first block header", 0, func(l *damageLog, img *device.Mem, lsn uint64) {
			l.flip(img, lsn, 20)
		}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := newDamageLog(t)
			for range 8 {
				l.write(40, true)
			}
			l.write(10, false)
			lsn := l.block(tc.lba)
			if tc.lba < 40 {
				require.Equal(t, l.c.sb.ReplayLSN, lsn, "the first batch is in the replay LSN's block")
			}
			ssd, hdd := l.crash()
			tc.damage(l, ssd, lsn)
			requireMidLogDamage(t, l, ssd, hdd, lsn, tc.records)
		})
	}
}

// requireMidLogDamage checks that Open refuses the images, and Check
// reports the damage, at journal block lsn after records valid records.
func requireMidLogDamage(t *testing.T, l *damageLog, ssd, hdd *device.Mem, lsn uint64, records int) {
	t.Helper()
	pos := lsn % l.c.g.JournalBlocks
	name := fmt.Sprintf("journal block %d (ring position %d, cache device byte offset %d)", lsn, pos, l.c.g.JournalOffset(lsn))
	_, err := Open(ssd, hdd, Options{CheckpointInterval: -1, NoBackgroundBackingSync: true})
	require.Error(t, err)
	require.ErrorIs(t, err, layout.ErrCorrupt)
	require.Contains(t, err.Error(), name)
	require.Contains(t, err.Error(), "not a torn tail")
	require.Contains(t, err.Error(), "none of its blocks are served")
	requireNoCommandAdvice(t, err)

	r, err := Check(ssd, hdd)
	require.NoError(t, err)
	require.False(t, r.OK())
	require.True(t, r.JournalDamaged)
	require.Equal(t, lsn, r.JournalDamageLSN)
	require.Equal(t, records, r.Replayed)
	require.Len(t, r.Problems, 1, r.String())
	require.Contains(t, r.Problems[0], name)
	require.Contains(t, r.String(), fmt.Sprintf("journal: damaged at block %d, after %d valid records", lsn, records))
	require.NotContains(t, r.String(), "consistent")
	require.NotRegexp(t, commandAdvice, r.Problems[0], "the command gives the advice")

	// Nothing was written: the damage stays for the next look.
	_, err = Open(ssd, hdd, Options{CheckpointInterval: -1, NoBackgroundBackingSync: true})
	require.ErrorIs(t, err, layout.ErrCorrupt)
}

// TestJournalTornTailReplayed: what was written since the last completed
// sync may be torn, in any block of it, and other blocks of it may still
// have reached the device (written back out of order). Replay keeps
// every record that is whole, before the tear and after it, opens, and
// Check finds nothing wrong.
func TestJournalTornTailReplayed(t *testing.T) {
	t.Run("earlier unsynced block torn, later ones intact", func(t *testing.T) {
		l := unsyncedBlocks(t)
		lsn := l.block(4*40 + 50)
		require.Equal(t, lsn+2, l.block(l.lbas-1))
		ssd, hdd := l.crash()
		l.overwrite(ssd, lsn, layout.RecordOffset(50), make([]byte, layout.RecordSize))
		l.requireRecoveredBut(ssd, hdd, func(lba int) bool { return lba == 4*40+50 }, l.lbas-1)
	})
	t.Run("earlier unsynced block torn at sectors, later ones intact", func(t *testing.T) {
		l := unsyncedBlocks(t)
		lsn := l.block(4*40 + 50)
		ssd, hdd := l.crash()
		// Sectors 2 and 5 never reached the device: records 31-46 and
		// 79-94 (bytes 1024-1535 and 2560-3071).
		l.overwrite(ssd, lsn, 1024, make([]byte, 512))
		l.overwrite(ssd, lsn, 2560, make([]byte, 512))
		first := l.lbas - 3*layout.RecordsPerBlock
		require.Equal(t, first, 4*40)
		lost := func(lba int) bool {
			i := lba - first
			if i < 0 || i >= layout.RecordsPerBlock { // other blocks
				return false
			}
			lo, hi := layout.RecordOffset(i), layout.RecordOffset(i+1)
			return (lo < 1536 && hi > 1024) || (lo < 3072 && hi > 2560)
		}
		n := 0
		for lba := range l.lbas {
			if lost(lba) {
				n++
			}
		}
		require.Equal(t, 32, n)
		l.requireRecoveredBut(ssd, hdd, lost, l.lbas-n)
	})
	t.Run("sync in flight", func(t *testing.T) {
		// The sync that ended a block had not completed: it may be torn,
		// although the next block (begun after the sync started) is there.
		l := newDamageLog(t)
		for range 4 {
			l.write(40, true)
		}
		l.write(30, true)
		l.write(10, false)
		lsn := l.block(4*40 + 10)
		require.Equal(t, lsn+1, l.block(l.lbas-1))
		ssd, hdd := l.crash()
		l.overwrite(ssd, lsn, layout.RecordOffset(10), make([]byte, layout.RecordSize))
		l.requireRecoveredBut(ssd, hdd, func(lba int) bool { return lba == 4*40+10 }, l.lbas-1)
	})
	t.Run("last block's later sectors lost", func(t *testing.T) {
		l := newDamageLog(t)
		for range 4 {
			l.write(40, true)
		}
		l.write(60, false)
		lsn := l.block(l.lbas - 1)
		ssd, hdd := l.crash()
		// Sectors 2-7: records from 31 on (record 30 ends at byte 1024).
		require.Equal(t, 1024, layout.RecordOffset(31))
		l.overwrite(ssd, lsn, 1024, make([]byte, BlockSize-1024))
		l.requireRecovered(ssd, hdd, 4*40+31, 4*40+31)
	})
	t.Run("last block lost", func(t *testing.T) {
		l := newDamageLog(t)
		for range 4 {
			l.write(40, true)
		}
		l.write(60, false)
		ssd, hdd := l.crash()
		l.overwrite(ssd, l.block(l.lbas-1), 0, make([]byte, BlockSize))
		l.requireRecovered(ssd, hdd, 4*40, 4*40)
	})
}

// TestJournalDamageNeedsACompletedSync: the same tear as the "sync in
// flight" torn tail, but a second sync ended a later block, and it began
// only after the first completed: the torn block was durable, so this is
// damage.
func TestJournalDamageNeedsACompletedSync(t *testing.T) {
	l := newDamageLog(t)
	for range 4 {
		l.write(40, true)
	}
	l.write(30, true)
	l.write(10, true)
	l.write(1, false)
	lsn := l.block(4*40 + 10)
	require.Equal(t, lsn+2, l.block(l.lbas-1))
	ssd, hdd := l.crash()
	l.overwrite(ssd, lsn, layout.RecordOffset(10), make([]byte, layout.RecordSize))
	requireMidLogDamage(t, l, ssd, hdd, lsn, 4*40+29) // the block's other 29 records count
}

// TestJournalDamageAfterCleanStop: a clean stop leaves nothing to replay,
// and a block written after it by no one is not looked for.
func TestJournalDamageAfterCleanStop(t *testing.T) {
	l := newDamageLog(t)
	for range 4 {
		l.write(40, true)
	}
	require.NoError(t, l.c.Close())
	ssd, hdd := l.crash()
	// The blocks before the clean checkpoint's replay LSN are not needed:
	// damage there is harmless.
	l.flip(ssd, l.block(40), layout.RecordOffset(3))
	l.requireRecovered(ssd, hdd, l.lbas, 0)
}

// TestJournalChainedBlocks: the journal blocks of format version 4 and
// before, whose records are chained, are replayed as before: up to the
// first record that fails, and a block whose predecessor holds fewer
// records than its header says ends the log (a torn tail).
func TestJournalChainedBlocks(t *testing.T) {
	l := unsyncedBlocks(t)
	rechained := func() (*device.Mem, *device.Mem) {
		ssd, hdd := l.crash()
		b := make([]byte, BlockSize)
		for lsn := l.c.sb.ReplayLSN; lsn <= l.block(l.lbas-1); lsn++ {
			_, err := ssd.ReadAt(b, l.c.g.JournalOffset(lsn))
			require.NoError(t, err)
			h, recs, err := layout.DecodeJournalBlock(b, l.c.uuid, nil)
			require.NoError(t, err)
			require.True(t, h.Alone)
			require.Equal(t, h.Count, h.Reach)
			h.Alone = false
			layout.EncodeJournalBlock(b, l.c.uuid, h, recs)
			l.overwrite(ssd, lsn, 0, b)
		}
		return ssd, hdd
	}
	ssd, hdd := rechained()
	l.requireRecovered(ssd, hdd, l.lbas, l.lbas)

	ssd, hdd = rechained()
	lsn := l.block(4*40 + 50)
	require.Equal(t, lsn+2, l.block(l.lbas-1))
	l.overwrite(ssd, lsn, layout.RecordOffset(50), make([]byte, layout.RecordSize))
	l.requireRecovered(ssd, hdd, 4*40+50, 4*40+50)
}

// TestJournalOrderedChains: with ordered write-back the journal chains
// its records again, from the next block it opens, so that after a power
// cut no record replays without every one placed before it (a later
// flush epoch's write without an earlier one's). A block with holes
// before a chained block ends the log.
func TestJournalOrderedChains(t *testing.T) {
	l := newDamageLog(t)
	l.write(40, true)
	l.write(40, true)
	l.write(20, false)
	s := l.c.Settings()
	s.Order, s.SetMask = layout.OrderOrdered, s.SetMask|layout.SetOrder
	require.NoError(t, l.c.SetSettings(s))
	l.write(2*layout.RecordsPerBlock, false)
	open := l.block(90)
	require.Greater(t, l.block(l.lbas-1), open+1)

	ssd, hdd := l.crash()
	b := make([]byte, BlockSize)
	for lsn := l.block(0); lsn <= l.block(l.lbas-1); lsn++ {
		_, err := ssd.ReadAt(b, l.c.g.JournalOffset(lsn))
		require.NoError(t, err)
		h, _, err := layout.DecodeJournalBlock(b, l.c.uuid, nil)
		require.NoError(t, err)
		require.Equal(t, lsn <= open, h.Alone, "block %d: blocks opened once ordering is set are chained", lsn)
	}
	l.requireRecovered(ssd, hdd, l.lbas, l.lbas)

	// A hole in the block open when ordering was set ends the log there.
	ssd, hdd = l.crash()
	l.overwrite(ssd, open, layout.RecordOffset(int(l.where[90][1])), make([]byte, layout.RecordSize))
	lost := func(lba int) bool { return lba == 90 || l.block(lba) > open }
	n := 0
	for lba := range l.lbas {
		if !lost(lba) {
			n++
		}
	}
	l.requireRecoveredBut(ssd, hdd, lost, n)
}
