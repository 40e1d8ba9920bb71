package blockcache

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/wbcache/wbcache/device"
	"github.com/wbcache/wbcache/layout"
)

// faultScenario formats, opens, writes, syncs, checkpoints, destages,
// discards and closes, recording which writes were acknowledged. It stops
// at the first error and returns it.
type faultScenario struct {
	acked map[uint64][]byte // block -> newest acknowledged content
	// zeroOK: blocks of a Discard that failed, which may read as zeros
	// as well (invariant 5 in blockcache/doc.go).
	zeroOK map[uint64]bool
}

const faultBlocks = 24

func (fs *faultScenario) run(ssd, hdd device.Device) (err error) {
	fs.acked, fs.zeroOK = map[uint64][]byte{}, map[uint64]bool{}
	if err := Format(ssd, hdd, FormatOptions{JournalBlocks: 16}); err != nil {
		return fmt.Errorf("format: %w", err)
	}
	c, err := Open(ssd, hdd, Options{CheckpointInterval: -1, ReserveFree: 2})
	if err != nil {
		return fmt.Errorf("open: %w", err)
	}
	defer func() {
		if cerr := c.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("close: %w", cerr)
		}
	}()
	rng := rand.New(rand.NewPCG(7, 7))
	write := func(lba uint64) error {
		b := make([]byte, BlockSize)
		fill(rng, b, lba<<40)
		if _, err := c.WriteAt(b, int64(lba)*BlockSize); err != nil {
			return fmt.Errorf("write %d: %w", lba, err)
		}
		fs.acked[lba] = b
		return nil
	}
	// writePart rewrites the middle half of lba: a read-modify-write,
	// in place when lba was written since the last sync.
	writePart := func(lba uint64) error {
		b := make([]byte, BlockSize/2)
		fill(rng, b, lba<<40|1)
		if _, err := c.WriteAt(b, int64(lba)*BlockSize+BlockSize/4); err != nil {
			return fmt.Errorf("partial write %d: %w", lba, err)
		}
		cur := make([]byte, BlockSize)
		copy(cur, fs.acked[lba])
		copy(cur[BlockSize/4:], b)
		fs.acked[lba] = cur
		return nil
	}
	for round := 0; round < 3; round++ {
		var last uint64
		for i := 0; i < 8; i++ {
			last = uint64(rng.IntN(faultBlocks))
			if err := write(last); err != nil {
				return err
			}
		}
		if err := writePart(last); err != nil {
			return err
		}
		if err := c.Sync(); err != nil {
			return fmt.Errorf("sync: %w", err)
		}
		if err := c.Checkpoint(); err != nil {
			return fmt.Errorf("checkpoint: %w", err)
		}
		dirty, err := c.Pin(c.DirtyBlocks(nil))
		if err != nil {
			return fmt.Errorf("pin: %w", err)
		}
		buf := make([]byte, len(dirty)*BlockSize)
		err = c.ReadSlots(dirty, buf)
		began := err == nil
		if began && len(c.BeginWriteBack(dirty)) > 0 {
			err = fmt.Errorf("pinned blocks claimed with no write running")
		}
		for i, b := range dirty {
			if err == nil {
				_, err = hdd.WriteAt(buf[i*BlockSize:(i+1)*BlockSize], int64(b.LBA)*BlockSize)
			}
		}
		if began {
			c.EndWriteBack(dirty)
		}
		if err == nil {
			err = hdd.Sync()
		}
		if cerr := c.Complete(dirty, err == nil); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("destage: %w", err)
		}
		lba := uint64(rng.IntN(faultBlocks - 2))
		if err := c.Discard(int64(lba)*BlockSize, 2*BlockSize); err != nil {
			fs.zeroOK[lba], fs.zeroOK[lba+1] = true, true
			return fmt.Errorf("discard: %w", err)
		}
		fs.acked[lba], fs.acked[lba+1] = make([]byte, BlockSize), make([]byte, BlockSize)
	}
	return nil
}

// TestFaultInjection fails the Nth operation on the cache device, and then
// on the backing device, for every N the scenario reaches: the error must
// reach the caller, and a restart on what reached the devices must either
// recover every acknowledged write or refuse with a clear error.
func TestFaultInjection(t *testing.T) {
	for _, onSSD := range []bool{true, false} {
		name := "backing"
		if onSSD {
			name = "cache"
		}
		t.Run(name, func(t *testing.T) {
			count := func() int64 {
				ssd, hdd := device.NewMem(60*BlockSize, [16]byte{1}), device.NewMem(faultBlocks*BlockSize, [16]byte{2})
				f := device.NewFaulty(ssd)
				if !onSSD {
					f = device.NewFaulty(hdd)
				}
				f.Track(device.OpAll)
				var fs faultScenario
				var err error
				if onSSD {
					err = fs.run(f, hdd)
				} else {
					err = fs.run(ssd, f)
				}
				require.NoError(t, err)
				return f.Count()
			}
			total := count()
			require.Greater(t, total, int64(20))
			refused, recovered := 0, 0
			for n := int64(0); n < total; n++ {
				ssd, hdd := device.NewMem(60*BlockSize, [16]byte{1}), device.NewMem(faultBlocks*BlockSize, [16]byte{2})
				var f *device.Faulty
				var fs faultScenario
				var err error
				if onSSD {
					f = device.NewFaulty(ssd)
					f.FailAt(n, device.OpAll, true)
					err = fs.run(f, hdd)
				} else {
					f = device.NewFaulty(hdd)
					f.FailAt(n, device.OpAll, true)
					err = fs.run(ssd, f)
				}
				if err == nil && f.Injected() == 0 {
					// Background work (reclaimer, checkpointer) makes the
					// operation count vary a little: this run ended first.
					continue
				}
				require.Error(t, err, "fault at op %d was swallowed", n)
				require.True(t, errors.Is(err, device.ErrInjected), "fault at op %d: error %v does not wrap the injected fault", n, err)
				// Restart on what reached the devices (a process crash keeps it).
				c, err := Open(ssd.CrashProcess(), hdd.CrashProcess(), Options{CheckpointInterval: -1})
				if err != nil {
					require.True(t, errors.Is(err, layout.ErrNotFormatted) || errors.Is(err, layout.ErrCorrupt),
						"fault at op %d: restart refused with an unclear error: %v", n, err)
					require.Empty(t, fs.acked, "fault at op %d: restart refused after writes were acknowledged: %v", n, err)
					refused++
					continue
				}
				for lba, want := range fs.acked {
					got := make([]byte, BlockSize)
					_, err := c.ReadAt(got, int64(lba)*BlockSize)
					require.NoError(t, err)
					if fs.zeroOK[lba] && bytes.Equal(got, make([]byte, BlockSize)) {
						continue
					}
					require.True(t, bytes.Equal(want, got), "fault at op %d: acknowledged block %d lost", n, lba)
				}
				require.NoError(t, c.Close())
				recovered++
			}
			t.Logf("%d fault points: %d recovered, %d refused (format interrupted)", total, recovered, refused)
		})
	}
}

// TestSyncFailureIsFatal: after a failed sync of the cache device the
// cache refuses further I/O instead of retrying (fsyncgate).
func TestSyncFailureIsFatal(t *testing.T) {
	ssd, hdd := device.NewMem(60*BlockSize, [16]byte{1}), device.NewMem(faultBlocks*BlockSize, [16]byte{2})
	require.NoError(t, Format(ssd, hdd, FormatOptions{JournalBlocks: 16}))
	f := device.NewFaulty(ssd)
	c, err := Open(f, hdd, Options{CheckpointInterval: -1})
	require.NoError(t, err)
	_, err = c.WriteAt(make([]byte, BlockSize), 0)
	require.NoError(t, err)
	f.FailAt(0, device.OpSync, false)
	err = c.Sync()
	require.ErrorIs(t, err, ErrFailed)
	f.Disarm()
	_, err = c.WriteAt(make([]byte, BlockSize), 0)
	require.ErrorIs(t, err, ErrFailed, "a write after a failed sync must fail")
	require.ErrorIs(t, c.Sync(), ErrFailed, "a sync after a failed sync must not pretend to succeed")
	require.NotEmpty(t, c.Stats().Failed)
	require.Error(t, c.Close())
}
