package layout_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/wbcache/wbcache/layout"
)

// TestJournalHeaderAlone: the header decodes on its own, whatever became
// of the block's records (torn, or damaged), and every check that
// DecodeJournalBlock makes of the header it makes too.
func TestJournalHeaderAlone(t *testing.T) {
	want := layout.JournalHeader{LSN: 77, Incarnation: 5, PrevCount: 12}
	b := newBlock()
	layout.EncodeJournalBlock(b, testUUID, want, sampleRecords(40))
	h, err := layout.DecodeJournalHeader(b, testUUID)
	require.NoError(t, err)
	require.Equal(t, want, h, "Count is left zero")

	// Record 3 damaged: the block holds 3 records, the header still decodes.
	b[layout.RecordOffset(3)+9] ^= 0x10
	h, err = layout.DecodeJournalHeader(b, testUUID)
	require.NoError(t, err)
	require.Equal(t, want, h)
	full, recs, err := layout.DecodeJournalBlock(b, testUUID, nil)
	require.NoError(t, err)
	require.Len(t, recs, 3)
	require.Equal(t, 3, full.Count)

	// Only the 32 header bytes are needed.
	h, err = layout.DecodeJournalHeader(b[:32], testUUID)
	require.NoError(t, err)
	require.Equal(t, want, h)

	for bit := 0; bit < 32*8; bit++ {
		_, err := layout.DecodeJournalHeader(flipBit(b, bit), testUUID)
		requireSentinel(t, err)
		_, recs, err := layout.DecodeJournalBlock(flipBit(b, bit), testUUID, nil)
		requireSentinel(t, err)
		require.Empty(t, recs)
	}
	_, err = layout.DecodeJournalHeader(b, [16]byte{1})
	require.ErrorIs(t, err, layout.ErrCorrupt, "another cache's block")
	require.Panics(t, func() { _, _ = layout.DecodeJournalHeader(b[:31], testUUID) })
}
