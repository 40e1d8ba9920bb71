package blockcache

import (
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/wbcache/wbcache/device"
)

// stallWrites holds every backing write at off until release is closed,
// saying so on entered.
type stallWrites struct {
	device.Device
	off     int64
	entered chan struct{}
	release chan struct{}
}

func (s *stallWrites) WriteAt(p []byte, off int64) (int, error) {
	if off == s.off {
		s.entered <- struct{}{}
		<-s.release
	}
	return s.Device.WriteAt(p, off)
}

// TestNoPromotionOfUnsyncedWrite: a backing sync that starts while a
// write around the cache is still on its way must not count that write
// as durable. If it did, a read of the block right after the write would
// copy it into the cache as a clean block that a power cut could leave
// different from the backing device (invariant 3).
func TestNoPromotionOfUnsyncedWrite(t *testing.T) {
	ssd := device.NewMem(8<<20, [16]byte{1})
	mem := device.NewMem(64<<20, [16]byte{2})
	const lba = 7
	hdd := &stallWrites{Device: mem, off: lba * BlockSize, entered: make(chan struct{}), release: make(chan struct{})}
	require.NoError(t, Format(ssd, hdd, FormatOptions{}))
	c, err := Open(ssd, hdd, Options{CheckpointInterval: -1, NoBackgroundBackingSync: true})
	require.NoError(t, err)
	defer c.Close()
	require.NoError(t, c.SetMode(ModeWritearound))

	wrote := make(chan error)
	go func() {
		_, err := c.WriteAt(pattern(lba), lba*BlockSize)
		wrote <- err
	}()
	<-hdd.entered
	require.NoError(t, c.syncBacking(), "a backing sync while the write is on its way")
	close(hdd.release)
	require.NoError(t, <-wrote)

	buf := make([]byte, BlockSize)
	_, err = c.ReadAt(buf, lba*BlockSize)
	require.NoError(t, err)
	require.Equal(t, pattern(lba), buf)
	c.mu.Lock()
	_, cached := c.mu.t.lookup(lba)
	c.mu.Unlock()
	require.False(t, cached, "a block whose backing write no sync has covered was promoted as a clean copy")

	// Once a sync covers it, it may be promoted.
	require.NoError(t, c.Sync())
	_, err = c.ReadAt(buf, lba*BlockSize)
	require.NoError(t, err)
	c.mu.Lock()
	_, cached = c.mu.t.lookup(lba)
	c.mu.Unlock()
	require.True(t, cached, "promotion after the sync")
}
