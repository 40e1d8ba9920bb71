package main

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/wbcache/wbcache/blockcache"
	"github.com/wbcache/wbcache/device"
	"github.com/wbcache/wbcache/layout"
)

// journalBlock is one valid journal block of a cache image.
type journalBlock struct {
	lsn     uint64
	pos     uint64
	off     int64 // byte offset in the cache file
	records int
}

// replayBlocks lists the journal blocks of the cache file at path that
// recovery would replay, from the superblock's replay LSN on.
func replayBlocks(t *testing.T, path string) []journalBlock {
	t.Helper()
	ssd, err := device.Open(path, device.Options{ReadOnly: true})
	require.NoError(t, err)
	defer ssd.Close()
	sb, err := blockcache.ReadSuperblock(ssd)
	require.NoError(t, err)
	g := sb.Geometry
	var out []journalBlock
	b := make([]byte, layout.BlockSize)
	prev := -1
	for lsn := sb.ReplayLSN; lsn < sb.ReplayLSN+g.JournalBlocks; lsn++ {
		_, err := ssd.ReadAt(b, g.JournalOffset(lsn))
		require.NoError(t, err)
		h, _, err := layout.DecodeJournalBlock(b, sb.UUID, nil)
		if err != nil || h.LSN != lsn || h.Incarnation < sb.CheckpointIncarnation || (prev >= 0 && h.PrevCount != prev) {
			break
		}
		out = append(out, journalBlock{lsn: lsn, pos: lsn % g.JournalBlocks, off: g.JournalOffset(lsn), records: h.Count})
		prev = h.Count
	}
	return out
}

// flipByte inverts a bit of the byte at off in the file at path.
func flipByte(t *testing.T, path string, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	require.NoError(t, err)
	defer f.Close()
	b := make([]byte, 1)
	_, err = f.ReadAt(b, off)
	require.NoError(t, err)
	b[0] ^= 0x20
	_, err = f.WriteAt(b, off)
	require.NoError(t, err)
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(to, b, 0o600))
}

// requireRefused checks that check (exit 3) and mount and detach (exit 1)
// all name damaged journal block jb of the cache file, and that detach
// leaves the backing file as it was.
func requireRefused(t *testing.T, cache, backing string, jb journalBlock) {
	t.Helper()
	name := fmt.Sprintf("journal block %d (ring position %d, cache device byte offset %d) is damaged", jb.lsn, jb.pos, jb.off)
	r := wantCode(t, 3, "check", "--cache", cache, "--backing", backing)
	require.Contains(t, r.stdout, "PROBLEM: "+name)
	require.Contains(t, r.stdout, fmt.Sprintf("journal: damaged at block %d", jb.lsn))
	require.Contains(t, r.stdout, "not a torn tail")
	require.NotContains(t, r.stdout, "consistent")
	require.Contains(t, r.stderr, "check found 1 problem(s)")
	require.Contains(t, r.stderr, "'wbcache mount' and 'wbcache detach' refuse this cache")
	require.Contains(t, r.stderr, "'wbcache format --force --cache "+cache+" --backing BACKING', which loses every dirty block")

	mnt := filepath.Join(t.TempDir(), "mnt")
	require.NoError(t, os.Mkdir(mnt, 0o755))
	r = wantCode(t, 1, "mount", "--cache", cache, "--backing", backing, mnt)
	require.Contains(t, r.stderr, name)
	require.Contains(t, r.stderr, "none of its blocks are served")
	require.Contains(t, r.stderr, "wbcache check")
	require.False(t, isMounted(mnt))

	before := readAll(t, backing)
	r = wantCode(t, 1, "detach", "--cache", cache, "--backing", backing)
	require.Contains(t, r.stderr, name)
	requireSameBytes(t, before, readAll(t, backing), "backing after a refused detach")
}

// TestCheckJournalDamage: a byte flipped in a journal record that a
// completed sync covered (the process was killed later, after more syncs)
// makes check report the damaged block and exit 3, and mount and detach
// refuse the cache naming it. Damage in what was written since the last
// sync is a torn tail: check finds the cache consistent.
func TestCheckJournalDamage(t *testing.T) {
	dir := t.TempDir()
	backing, cache := filepath.Join(dir, "backing.img"), filepath.Join(dir, "cache.img")
	require.NoError(t, device.Create(backing, 16<<20))
	wantCode(t, 0, "format", "--cache", cache, "--cache-size", "8M", "--backing", backing)

	ssd, err := device.Open(cache, device.Options{})
	require.NoError(t, err)
	hdd, err := device.Open(backing, device.Options{})
	require.NoError(t, err)
	c, err := blockcache.Open(ssd, hdd, blockcache.Options{CheckpointInterval: -1})
	require.NoError(t, err)
	buf := make([]byte, layout.BlockSize)
	lba := 0
	write := func(n int, sync bool) {
		for range n {
			buf[0], buf[1] = byte(lba), byte(lba>>8)
			_, err := c.WriteAt(buf, int64(lba)*layout.BlockSize)
			require.NoError(t, err)
			lba++
		}
		if sync {
			require.NoError(t, c.Sync())
		}
	}
	for range 8 {
		write(30, true)
	}
	write(10, false)
	// What a restart finds after kill -9 now: the file as the page cache
	// holds it.
	crashed := filepath.Join(dir, "crashed.img")
	copyFile(t, cache, crashed)
	require.NoError(t, c.Close())
	require.NoError(t, ssd.Close())
	require.NoError(t, hdd.Close())

	blocks := replayBlocks(t, crashed)
	require.Len(t, blocks, 9, "one journal block per sync, then the unsynced one")
	require.Equal(t, 30, blocks[2].records)
	require.Equal(t, 10, blocks[8].records)
	r := wantCode(t, 0, "check", "--cache", crashed, "--backing", backing)
	require.Contains(t, r.stdout, "journal: 250 records to replay")
	require.Contains(t, r.stdout, "consistent")

	// Mid-log damage: record 7 of the third block.
	damaged := filepath.Join(dir, "damaged.img")
	copyFile(t, crashed, damaged)
	flipByte(t, damaged, blocks[2].off+int64(layout.RecordOffset(7))+8)
	requireRefused(t, damaged, backing, blocks[2])

	// A torn tail: record 3 of the block written since the last sync. It
	// is lost alone; the records after it are checked each on its own.
	torn := filepath.Join(dir, "torn.img")
	copyFile(t, crashed, torn)
	flipByte(t, torn, blocks[8].off+int64(layout.RecordOffset(3))+8)
	r = wantCode(t, 0, "check", "--cache", torn, "--backing", backing)
	require.Contains(t, r.stdout, fmt.Sprintf("journal: %d records to replay", 8*30+10-1))
	require.Contains(t, r.stdout, "consistent")
}

// TestMountRefusesJournalDamageAfterKill9: the reported failure. A daemon
// is killed with -9 after writes that fsync covered; one byte of a journal
// record early in the log then flips. The cache must not be served (it
// would return stale blocks for everything journaled after the damage):
// check reports the block (exit 3), mount refuses (exit 1).
func TestMountRefusesJournalDamageAfterKill9(t *testing.T) {
	needFUSE(t)
	r := newRig(t, 16<<20, 16<<20)
	d := r.mount(t)
	disk, err := os.OpenFile(r.disk(), os.O_RDWR, 0)
	require.NoError(t, err)
	buf := make([]byte, layout.BlockSize)
	const blocks = 1024
	for i := 0; i < blocks; i++ {
		buf[0], buf[1], buf[2] = byte(i), byte(i>>8), 0xa5
		_, err := disk.WriteAt(buf, int64(i)*layout.BlockSize)
		require.NoError(t, err)
		if i%16 == 15 {
			require.NoError(t, disk.Sync())
		}
	}
	require.NoError(t, disk.Close())
	d.kill9(t)

	jb := replayBlocks(t, r.cache)
	require.GreaterOrEqual(t, len(jb), 8, "fsyncs ended many journal blocks")
	require.Positive(t, jb[1].records)
	saved := filepath.Join(r.dir, "saved.img")
	copyFile(t, r.cache, saved)
	flipByte(t, r.cache, jb[1].off+int64(layout.RecordOffset(jb[1].records/2))+8)
	requireRefused(t, r.cache, r.backing, jb[1])

	// Undamaged, the same image mounts and serves every fsynced block.
	copyFile(t, saved, r.cache)
	d = r.mount(t)
	disk, err = os.Open(r.disk())
	require.NoError(t, err)
	for i := 0; i < blocks; i++ {
		_, err := disk.ReadAt(buf, int64(i)*layout.BlockSize)
		require.NoError(t, err)
		require.Equal(t, []byte{byte(i), byte(i >> 8), 0xa5}, buf[:3], "block %d", i)
	}
	require.NoError(t, disk.Close())
	require.Equal(t, 0, d.stop(t))
}
