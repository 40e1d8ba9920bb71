package layout

import (
	"bytes"
	"encoding/binary"
	"math/bits"
)

// Salvage: reading a cache whose superblocks are gone.
//
// Checkpoint pages and journal headers are checksummed with the cache
// UUID as a 16-byte seed, and the UUID lives only in the superblock. But
// CRC32C reads the seed into a 32-bit state before the block, so every
// seed that leaves the same state checks every block the same way. With
// the last 4 of its 16 bytes free, one such seed is found from any one
// sealed block (the state is an invertible affine function of those 4
// bytes): SeedFor. A seed found from one page of a cache verifies every
// other page and journal header of that cache, and nothing sealed with
// another UUID (but for a 1 in 2^32 chance per block).

// SeedFor returns a 16-byte seed under which block's stored checksum (the
// 4 bytes at crcOff, computed as CRC32C(seed, block with that field
// zero)) holds. Given a sealed checkpoint page (crcOff 4) or journal
// block, it stands in for the cache UUID in CheckPage and
// DecodeJournalBlock. ok is false only if no seed fits, which cannot
// happen for CRC32C.
func SeedFor(block []byte, crcOff int) (seed [16]byte, ok bool) {
	want := binary.LittleEndian.Uint32(block[crcOff:])
	f := func(x uint32) uint32 {
		var s [16]byte
		binary.LittleEndian.PutUint32(s[12:], x)
		return seededCRC(s, block, crcOff)
	}
	base := f(0)
	// Gaussian elimination over GF(2): basis[b] is a column combination
	// whose value has b as its highest bit; mask says which x bits.
	var basis [32]struct{ v, mask uint32 }
	for i := range 32 {
		v, m := f(1<<i)^base, uint32(1)<<i
		for v != 0 {
			b := 31 - bits.LeadingZeros32(v)
			if basis[b].v == 0 {
				basis[b].v, basis[b].mask = v, m
				break
			}
			v, m = v^basis[b].v, m^basis[b].mask
		}
	}
	t, x := want^base, uint32(0)
	for t != 0 {
		b := 31 - bits.LeadingZeros32(t)
		if basis[b].v == 0 {
			return seed, false
		}
		t, x = t^basis[b].v, x^basis[b].mask
	}
	binary.LittleEndian.PutUint32(seed[12:], x)
	return seed, true
}

// ResealSuperblock decodes a damaged superblock copy as if its magic,
// version and checksum were right: what its other fields say. Salvage
// uses it only as a guess, to be confirmed against the checkpoint pages
// (whose checksums the UUID it names must verify).
func ResealSuperblock(b []byte) (Superblock, error) {
	checkLen(b)
	c := bytes.Clone(b)
	copy(c[0:8], superMagic)
	binary.LittleEndian.PutUint32(c[8:], FormatVersion)
	binary.LittleEndian.PutUint32(c[12:], seededCRC([16]byte{}, c, 12))
	return DecodeSuperblock(c)
}

// PageHeader is what a checkpoint page's header says, unverified.
type PageHeader struct {
	Kind       PageKind
	Generation uint64
	Index      uint32
}

// PeekPage reads a checkpoint page's header without verifying it; ok is
// false when the block has neither checkpoint magic.
func PeekPage(page []byte) (PageHeader, bool) {
	checkLen(page)
	le := binary.LittleEndian
	k := PageKind(le.Uint32(page[0:]))
	if k != MapPage && k != BitmapPage {
		return PageHeader{}, false
	}
	return PageHeader{Kind: k, Generation: le.Uint64(page[8:]), Index: le.Uint32(page[16:])}, true
}
