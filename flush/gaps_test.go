package flush

import (
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestDrainFillsGapsWithCleanCopies: dirty blocks one apart, with clean
// cached copies between them, drain as one run (one backing write)
// instead of one run each; only the dirty blocks count as written back,
// and the backing device ends up holding every block's newest version.
func TestDrainFillsGapsWithCleanCopies(t *testing.T) {
	e := newEnv(t, envConfig{hddBlocks: 128, slots: 96})
	buf := make([]byte, bs)
	for lba := int64(1); lba < 40; lba += 2 { // clean copies, promoted by reads
		_, err := e.c.ReadAt(buf, lba*bs)
		require.NoError(t, err)
	}
	dirty := 0
	for lba := uint64(0); lba <= 40; lba += 2 {
		e.write(lba)
		dirty++
	}
	e.write(60) // the 19 blocks before it are not cached: a run of its own
	dirty++
	writes := e.ver.writes.Load()
	d := newTestDestager(t, e.c, Policy{}, options{})
	require.NoError(t, d.FlushAll(context.Background(), nil))
	assert.Zero(t, e.c.DirtyCount())
	assert.EqualValues(t, 2, e.ver.writes.Load()-writes, "blocks 0-40 in one run (gaps filled), 60 in another")
	st := d.Stats()
	assert.EqualValues(t, dirty, st.DestagedBlocks, "the clean copies do not count as written back")
	e.checkBacking("after FlushAll", e.hddMem)
	e.checkReads("after FlushAll")
	e.close()
}
