package layout_test

import (
	"bytes"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wbcache/wbcache/layout"
)

// A seed found from one page verifies every other page and journal block
// sealed with the same UUID, and none sealed with another.
func TestSeedForStandsInForTheUUID(t *testing.T) {
	page, _ := sealedMapPage(testUUID, 7, 3)
	seed, ok := layout.SeedFor(page, pageCRCOff)
	require.True(t, ok)
	assert.NotEqual(t, testUUID, seed, "the seed is not the UUID itself, only equivalent to it")

	require.NoError(t, layout.CheckPage(page, layout.MapPage, seed, 7, 3))
	require.NoError(t, layout.CheckPage(sealedBitmapPage(testUUID, 9, 0), layout.BitmapPage, seed, 9, 0))
	recs := sampleRecords(20)
	h, got, err := layout.DecodeJournalBlock(encodeJournal(testUUID, 41, 2, recs), seed, nil)
	require.NoError(t, err)
	assert.Equal(t, uint64(41), h.LSN)
	assert.Equal(t, recs, got)

	assert.Error(t, layout.CheckPage(sealedBitmapPage(otherUUID, 9, 0), layout.BitmapPage, seed, 9, 0))
	_, err = layout.DecodeJournalHeader(encodeJournal(otherUUID, 41, 2, recs), seed)
	assert.Error(t, err)
}

// A journal block works as the source of the seed too.
func TestSeedForFromJournalBlock(t *testing.T) {
	b := encodeJournal(otherUUID, 5, 1, sampleRecords(3))
	seed, ok := layout.SeedFor(b[:32], journalCRCOff)
	require.True(t, ok)
	p, _ := sealedMapPage(otherUUID, 1, 0)
	assert.NoError(t, layout.CheckPage(p, layout.MapPage, seed, 1, 0))
}

// A superblock whose magic and checksum were wiped still says what its
// other fields held.
func TestResealSuperblock(t *testing.T) {
	s := sampleSuperblock(t)
	b := encodeSuperblock(s)
	copy(b[0:8], make([]byte, 8))
	le.PutUint32(b[12:], 0)
	_, err := layout.DecodeSuperblock(b)
	require.ErrorIs(t, err, layout.ErrNotFormatted)
	in := bytes.Clone(b)
	got, err := layout.ResealSuperblock(b)
	require.NoError(t, err)
	assert.Equal(t, s, got)
	assert.Equal(t, in, b, "ResealSuperblock modified its input")

	_, err = layout.ResealSuperblock(newBlock())
	assert.ErrorIs(t, err, layout.ErrCorrupt, "a zero block has no geometry")
}

func TestPeekPage(t *testing.T) {
	p, _ := sealedMapPage(testUUID, 12, 4)
	h, ok := layout.PeekPage(p)
	require.True(t, ok)
	assert.Equal(t, layout.PageHeader{Kind: layout.MapPage, Generation: 12, Index: 4}, h)
	h, ok = layout.PeekPage(sealedBitmapPage(testUUID, 3, 1))
	require.True(t, ok)
	assert.Equal(t, layout.BitmapPage, h.Kind)
	_, ok = layout.PeekPage(newBlock())
	assert.False(t, ok)
}
