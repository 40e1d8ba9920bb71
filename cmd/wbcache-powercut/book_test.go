package main

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestBlockFormat(t *testing.T) {
	b := make([]byte, blockSize)
	h := header{lba: 12345, version: 7, round: 3, thread: 2}
	fillBlock(b, 99, h)
	got, magic, crcOK := parseHeader(b)
	require.True(t, magic)
	require.True(t, crcOK)
	require.Equal(t, h, got)

	b[2000] ^= 1
	_, magic, crcOK = parseHeader(b)
	require.True(t, magic)
	require.False(t, crcOK, "a flipped bit fails the CRC")

	other := make([]byte, blockSize)
	fillBlock(other, 99, header{lba: 12345, version: 8, round: 3, thread: 2})
	require.NotEqual(t, b[blockSize-sectorSize:], other[blockSize-sectorSize:], "versions differ in every sector")
}

func TestBookOwner(t *testing.T) {
	b := newBook(1, 3, 100)
	for lba := range int64(100) {
		lo, hi := b.span(b.owner(lba))
		require.True(t, lba >= lo && lba < hi, "lba %d owner %d [%d,%d)", lba, b.owner(lba), lo, hi)
	}
	lo, _ := b.span(0)
	_, hi := b.span(2)
	require.Equal(t, int64(0), lo)
	require.Equal(t, int64(100), hi)
}

// write issues and acknowledges the next version of lba.
func write(b *book, lba int64, round int) uint32 {
	v := b.issue(lba, round)
	b.ack(lba, []uint32{v})
	return v
}

// TestBookFloors: an fsync makes durable what was acknowledged before it
// started, and the state the verifier read; an fsync that returns after
// the cut was asked for proves nothing.
func TestBookFloors(t *testing.T) {
	b := newBook(1, 1, 10)
	write(b, 0, 1)      // v1
	s := b.fsyncStart() // covers v1 of block 0
	write(b, 1, 1)      // v1 of block 1: after the start
	b.fsyncDone(s)
	_ = b.fsyncStart() // covers both, but never completes
	require.Equal(t, 1, b.endRound())
	require.Equal(t, uint32(1), b.floor[0])
	require.Equal(t, uint32(0), b.floor[1])

	// The next round: the verifier read block 1 at v1; a completed fsync
	// makes that durable even without a write to it.
	scratch := make([]byte, blockSize)
	var st verifyStats
	data := make([]byte, blockSize)
	b.expected(data, 1, 1)
	require.Nil(t, b.check(1, data, scratch, &st))
	write(b, 2, 2)
	b.beginCut()
	b.fsyncDone(b.fsyncStart()) // after the cut request: ignored
	b.endRound()
	require.Equal(t, uint32(0), b.floor[1])
	require.Equal(t, uint32(0), b.floor[2])
	b.fsyncDone(b.fsyncStart())
	b.endRound()
	require.Equal(t, uint32(1), b.floor[1])
	require.Equal(t, uint32(0), b.floor[2], "v1 of block 2 was never covered")
}

func TestBookCheck(t *testing.T) {
	scratch := make([]byte, blockSize)
	blk := func(b *book, lba int64, v uint32) []byte {
		p := make([]byte, blockSize)
		b.expected(p, lba, v)
		return p
	}
	check := func(b *book, lba int64, data []byte) *violation {
		var st verifyStats
		return b.check(lba, data, scratch, &st)
	}
	// Block 3: v1-v3 durable, v4 acknowledged, v5 in flight. Each check
	// is a verify after a crash, so each case starts from this state.
	mk := func() *book {
		b := newBook(5, 2, 64)
		for range 3 {
			write(b, 3, 1)
		}
		b.fsyncDone(b.fsyncStart())
		b.endRound()
		write(b, 3, 2)
		b.issue(3, 2)
		write(b, 40, 2)
		return b
	}
	b := mk()
	require.Nil(t, check(b, 3, blk(b, 3, 3)), "the durable version")
	b = mk()
	require.Nil(t, check(b, 3, blk(b, 3, 4)), "the acknowledged version")
	b = mk()
	require.Nil(t, check(b, 3, blk(b, 3, 5)), "the version in flight")
	b = mk()
	v := check(b, 3, blk(b, 3, 2))
	require.NotNil(t, v)
	require.Equal(t, "stale", v.kind)
	require.Contains(t, v.String(), "floor v3")
	require.Contains(t, v.String(), "highest issued v5")
	require.Equal(t, "lost", check(mk(), 3, make([]byte, blockSize)).kind)
	require.Equal(t, "foreign", check(b, 3, blk(b, 40, 1)).kind)

	bad := blk(b, 3, 4)
	copy(bad[2*sectorSize:4*sectorSize], blk(b, 3, 3)[2*sectorSize:4*sectorSize])
	v = check(b, 3, bad)
	require.Equal(t, "torn", v.kind)
	require.Contains(t, v.got, "sectors 2-3 v3")

	garbage := blk(b, 3, 4)
	garbage[3000] ^= 0xff
	require.Equal(t, "garbage", check(b, 3, garbage).kind)

	never := make([]byte, blockSize)
	fillBlock(never, 5, header{lba: 3, version: 9, round: 2, thread: 0})
	require.Equal(t, "unwritten", check(b, 3, never).kind)

	// A verify that reads v3 (v4 and v5 lost) makes v4 and v5 dead.
	b = mk()
	require.Nil(t, check(b, 3, blk(b, 3, 3)))
	v = check(b, 3, blk(b, 3, 5))
	require.Equal(t, "resurrected", v.kind)
	require.True(t, strings.Contains(v.got, "v5"))
}
