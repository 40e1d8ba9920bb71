package blockcache

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/wbcache/wbcache/device"
)

// TestParallelStress runs writers, readers, syncs, discards, checkpoints
// and a destage loop at once (run it with -race). Each writer owns a range
// and checks its reads exactly; shared blocks are written whole with a
// repeated tag, so readers can tell a torn or foreign block. A clean
// reopen at the end must hold every owner's last write.
func TestParallelStress(t *testing.T) {
	const (
		writers = 4
		owned   = 96
		shared  = 16
		blocks  = writers*owned + shared
		slots   = 200
		iters   = 1500
	)
	ssd := device.NewMem(int64(2+2*2+64+slots)*BlockSize, [16]byte{1})
	hdd := device.NewMem(blocks*BlockSize, [16]byte{2})
	require.NoError(t, Format(ssd, hdd, FormatOptions{JournalBlocks: 64}))
	// The slot table in shards of a few dozen slots: writers of
	// different shards change it at once, and slots move between shards.
	c, err := Open(ssd, hdd, Options{CheckpointInterval: -1, shardSlots: 16})
	require.NoError(t, err)
	require.GreaterOrEqual(t, len(c.mu.t.shards), 8, "shards")

	models := make([][]byte, writers)
	var wg sync.WaitGroup
	var stop, stopDestage atomic.Bool
	errs := make(chan error, 16)
	report := func(err error) {
		t.Errorf("stress: %v", err)
		select {
		case errs <- err:
		default:
		}
	}
	for w := 0; w < writers; w++ {
		models[w] = make([]byte, owned*BlockSize)
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 99))
			base := int64(w*owned) * BlockSize
			m := models[w]
			for i := 0; i < iters; i++ {
				off := rng.Int64N(int64(len(m)) - 1)
				n := 1 + rng.Int64N(min(int64(len(m))-off, 3*BlockSize))
				switch p := rng.IntN(10); {
				case p < 5:
					b := make([]byte, n)
					fill(rng, b, uint64(w)<<56|uint64(i))
					if _, err := c.WriteAt(b, base+off); err != nil {
						report(err)
						return
					}
					copy(m[off:], b)
				case p < 8:
					got := make([]byte, n)
					if _, err := c.ReadAt(got, base+off); err != nil {
						report(err)
						return
					}
					if !bytes.Equal(got, m[off:off+n]) {
						report(fmt.Errorf("writer %d: read at %d+%d differs from what it wrote", w, off, n))
						return
					}
				case p < 9:
					if err := c.Discard(base+off, n); err != nil {
						report(err)
						return
					}
					clear(m[off : off+n])
				default:
					if err := c.Sync(); err != nil {
						report(err)
						return
					}
				}
			}
		}(w)
	}
	sharedBase := uint64(writers * owned)
	var aux, destager sync.WaitGroup
	for g := 0; g < 2; g++ {
		aux.Add(1)
		go func(g int) {
			defer aux.Done()
			rng := rand.New(rand.NewPCG(uint64(g), 7))
			b := make([]byte, BlockSize)
			for i := 0; !stop.Load(); i++ {
				lba := sharedBase + uint64(rng.IntN(shared))
				if g == 0 {
					tag := lba<<32 | uint64(i)
					for k := 0; k < BlockSize; k += 8 {
						binary.LittleEndian.PutUint64(b[k:], tag)
					}
					if _, err := c.WriteAt(b, int64(lba)*BlockSize); err != nil {
						report(err)
						return
					}
					continue
				}
				if _, err := c.ReadAt(b, int64(lba)*BlockSize); err != nil {
					report(err)
					return
				}
				first := binary.LittleEndian.Uint64(b)
				if first != 0 && first>>32 != lba {
					report(fmt.Errorf("shared block %d holds block %d's data", lba, first>>32))
					return
				}
				for k := 0; k < BlockSize; k += 8 {
					if binary.LittleEndian.Uint64(b[k:]) != first {
						report(fmt.Errorf("shared block %d is torn", lba))
						return
					}
				}
			}
		}(g)
	}
	destager.Add(1)
	go func() { // destage loop and checkpoints
		defer destager.Done()
		for i := 0; !stopDestage.Load(); i++ {
			dirty, err := c.Pin(c.DirtyBlocks(nil))
			if err != nil {
				report(err)
				return
			}
			buf := device.AlignedBuffer(len(dirty) * BlockSize)
			if err := c.ReadSlots(dirty, buf); err != nil {
				report(err)
				return
			}
			// Blocks a discard claimed since Pin are not written.
			claimed := c.BeginWriteBack(dirty)
			for k, b := range dirty {
				if slices.Contains(claimed, k) {
					continue
				}
				if _, err := hdd.WriteAt(buf[k*BlockSize:(k+1)*BlockSize], int64(b.LBA)*BlockSize); err != nil {
					report(err)
					return
				}
			}
			c.EndWriteBack(dirty)
			if err := hdd.Sync(); err != nil {
				report(err)
				return
			}
			written, taken := SplitClaimed(dirty, claimed)
			if err := errors.Join(c.Complete(taken, false), c.Complete(written, true)); err != nil {
				report(err)
				return
			}
			if i%16 == 0 {
				if err := c.Checkpoint(); err != nil {
					report(err)
					return
				}
			}
		}
	}()
	wg.Wait()
	stop.Store(true)
	aux.Wait()
	stopDestage.Store(true)
	destager.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	st := c.Stats()
	t.Logf("stats: writes %d reads %d hits %d misses %d destaged %d evictions %d alloc waits %d checkpoints %d",
		st.Writes, st.Reads, st.ReadHits, st.ReadMisses, st.DestagedBlocks, st.Evictions, st.AllocWaits, st.Checkpoints)
	require.NoError(t, c.Close())
	c, err = Open(ssd, hdd, Options{})
	require.NoError(t, err)
	defer c.Close()
	for w := 0; w < writers; w++ {
		got := make([]byte, owned*BlockSize)
		_, err := c.ReadAt(got, int64(w*owned)*BlockSize)
		require.NoError(t, err)
		require.True(t, bytes.Equal(models[w], got), "writer %d's range differs after reopen", w)
	}
}
