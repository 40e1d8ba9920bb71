package blockcache

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestPinGaps: short gaps between pinned dirty blocks whose blocks all
// have clean cached copies are filled with them; a gap with an uncached
// block, or longer than maxGap, is not. Completing the run marks only the
// dirty blocks clean (one CLEAN record each) and unpins the copies.
func TestPinGaps(t *testing.T) {
	_, hdd, c := memCache(t)
	defer c.Close()
	buf := make([]byte, BlockSize)
	for _, lba := range []int{1, 3, 12, 13} { // clean copies, promoted by reads
		_, err := c.ReadAt(buf, int64(lba)*BlockSize)
		require.NoError(t, err)
	}
	for _, lba := range []int{0, 2, 4, 10, 14, 30} {
		_, err := c.WriteAt(pattern(lba), int64(lba)*BlockSize)
		require.NoError(t, err)
	}
	pinned, err := c.Pin(c.DirtyBlocks(nil))
	require.NoError(t, err)
	run := c.PinGaps(pinned, 8, nil)
	var lbas []uint64
	clean := map[uint64]bool{}
	for _, b := range run {
		lbas = append(lbas, b.LBA)
		clean[b.LBA] = b.Clean
	}
	// 5-9: not cached; 11: not cached; 15-29: longer than 8.
	require.Equal(t, []uint64{0, 1, 2, 3, 4, 10, 14, 30}, lbas)
	require.True(t, clean[1] && clean[3])
	require.False(t, clean[0] || clean[2] || clean[4] || clean[10])

	data := make([]byte, len(run)*BlockSize)
	require.NoError(t, c.ReadSlots(run, data))
	require.Empty(t, c.BeginWriteBack(run))
	for i, b := range run {
		_, err := hdd.WriteAt(data[i*BlockSize:(i+1)*BlockSize], int64(b.LBA)*BlockSize)
		require.NoError(t, err)
	}
	c.EndWriteBack(run)
	require.NoError(t, hdd.Sync())
	seq := c.j.lastSeq()
	require.NoError(t, c.Complete(run, true))
	require.EqualValues(t, 6, c.j.lastSeq()-seq, "a CLEAN record per dirty block, none for the copies")
	require.Zero(t, c.DirtyCount())
	c.mu.Lock()
	for _, lba := range []uint64{1, 3} {
		s, ok := c.mu.t.lookup(lba)
		require.True(t, ok)
		require.Zero(t, c.mu.t.flags[s]&(fPinned|fDirty), "block %d: unpinned and clean", lba)
	}
	require.Empty(t, c.mu.inflight)
	c.mu.Unlock()
}

// TestWriteAroundWaitsForGapCopy: a write around the cache to a block
// whose clean copy a destage is writing back (a gap filler) waits until
// that backing write ends (EndWriteBack), so the older copy can never
// land on the backing device after the newer write; it does not wait for
// the destage to sync and complete.
func TestWriteAroundWaitsForGapCopy(t *testing.T) {
	_, hdd, c := memCache(t)
	defer c.Close()
	run := pinGapRun(t, c)
	data := make([]byte, len(run)*BlockSize)
	require.NoError(t, c.ReadSlots(run, data))
	require.Empty(t, c.BeginWriteBack(run), "nothing claimed the run")

	wrote := make(chan error, 1)
	go func() {
		_, err := c.WriteAt(pattern(101), 1*BlockSize)
		wrote <- err
	}()
	select {
	case err := <-wrote:
		t.Fatalf("the write around the cache did not wait for the destage writing block 1 (err %v)", err)
	case <-time.After(100 * time.Millisecond):
	}
	// The destage writes its (older) copy of block 1.
	_, err := hdd.WriteAt(data, 0)
	require.NoError(t, err)
	c.EndWriteBack(run)
	require.NoError(t, <-wrote)
	require.NoError(t, hdd.Sync())
	require.NoError(t, c.Complete(run, true))

	buf := make([]byte, BlockSize)
	_, err = hdd.ReadAt(buf, 1*BlockSize)
	require.NoError(t, err)
	require.Equal(t, pattern(101), buf, "the newer write is on the backing device")
	_, err = c.ReadAt(buf, 1*BlockSize)
	require.NoError(t, err)
	require.Equal(t, pattern(101), buf)
	require.Zero(t, c.DirtyCount())
}

// TestWriteAroundClaimsGapCopy: a write around the cache to a block that a
// destage has pinned (a gap filler) but not begun to write goes ahead at
// once and claims it: the destage then writes the run around it
// (BeginWriteBack reports it claimed) and completes it unwritten.
func TestWriteAroundClaimsGapCopy(t *testing.T) {
	_, hdd, c := memCache(t)
	defer c.Close()
	run := pinGapRun(t, c)
	_, err := c.WriteAt(pattern(101), 1*BlockSize) // would block if it waited
	require.NoError(t, err)
	claimed := c.BeginWriteBack(run)
	require.Equal(t, []int{1}, claimed, "the write around the cache claimed block 1")
	require.EqualValues(t, 1, c.Stats().DestageClaimed)
	data := make([]byte, len(run)*BlockSize)
	require.NoError(t, c.ReadSlots(run, data))
	for _, i := range []int{0, 2} {
		_, err := hdd.WriteAt(data[i*BlockSize:(i+1)*BlockSize], int64(run[i].LBA)*BlockSize)
		require.NoError(t, err)
	}
	c.EndWriteBack(run)
	require.NoError(t, hdd.Sync())
	written, taken := SplitClaimed(run, claimed)
	require.Len(t, written, 2)
	require.NoError(t, c.Complete(taken, false))
	require.NoError(t, c.Complete(written, true))
	require.Zero(t, c.DirtyCount())
	buf := make([]byte, BlockSize)
	for lba, want := range map[int][]byte{0: pattern(0), 1: pattern(101), 2: pattern(2)} {
		_, err = hdd.ReadAt(buf, int64(lba)*BlockSize)
		require.NoError(t, err)
		require.Equal(t, want, buf, "block %d on the backing device", lba)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	require.Empty(t, c.mu.inflight)
	require.Empty(t, c.mu.claimed)
	require.Empty(t, c.mu.writing)
}

// pinGapRun pins dirty blocks 0 and 2 with the clean copy of block 1
// between them (PinGaps), then sets mode writearound.
func pinGapRun(t *testing.T, c *Cache) []DirtyBlock {
	t.Helper()
	buf := make([]byte, BlockSize)
	_, err := c.ReadAt(buf, 1*BlockSize) // clean copy of block 1
	require.NoError(t, err)
	for _, lba := range []int{0, 2} {
		_, err := c.WriteAt(pattern(lba), int64(lba)*BlockSize)
		require.NoError(t, err)
	}
	pinned, err := c.Pin(c.DirtyBlocks(nil))
	require.NoError(t, err)
	run := c.PinGaps(pinned, 8, nil)
	require.Len(t, run, 3)
	require.NoError(t, c.SetMode(ModeWritearound))
	return run
}
