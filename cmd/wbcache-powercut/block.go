package main

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"math/rand/v2"
	"strings"
)

// Every 4 KiB block the writers write is self-describing:
//
//	[0:8)    magic
//	[8:16)   LBA (block number on the disk)
//	[16:20)  version (1, 2, ... per block)
//	[20:24)  round that wrote it
//	[24:28)  writer thread
//	[28:32)  CRC32C of the whole block with this field zero
//	[32:4096) pseudo-random bytes from (run seed, LBA, version)
//
// so a block read back names what it claims to be, the CRC says whether
// it is intact, and the verifier can rebuild any version exactly.

const (
	blockSize   = 4096
	blockMagic  = 0x5442_4350_4357_4257 // "WBCWPCBT" little-endian
	hdrCRC      = 28
	hdrSize     = 32
	secPerBlock = blockSize / sectorSize
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// header is the self-description of a block.
type header struct {
	lba     int64
	version uint32
	round   uint32
	thread  uint32
}

// fillBlock writes version h.version of block h.lba into b (4096 bytes).
func fillBlock(b []byte, seed uint64, h header) {
	b = b[:blockSize]
	binary.LittleEndian.PutUint64(b[0:], blockMagic)
	binary.LittleEndian.PutUint64(b[8:], uint64(h.lba))
	binary.LittleEndian.PutUint32(b[16:], h.version)
	binary.LittleEndian.PutUint32(b[20:], h.round)
	binary.LittleEndian.PutUint32(b[24:], h.thread)
	binary.LittleEndian.PutUint32(b[hdrCRC:], 0)
	src := rand.NewPCG(seed^uint64(h.lba)*0x9e3779b97f4a7c15, uint64(h.version)<<1|1)
	for i := hdrSize; i < blockSize; i += 8 {
		binary.LittleEndian.PutUint64(b[i:], src.Uint64())
	}
	binary.LittleEndian.PutUint32(b[hdrCRC:], crc32.Checksum(b, castagnoli))
}

// parseHeader returns the header of b and whether b carries the magic and
// an intact CRC.
func parseHeader(b []byte) (h header, magic, crcOK bool) {
	b = b[:blockSize]
	if binary.LittleEndian.Uint64(b[0:]) != blockMagic {
		return h, false, false
	}
	h = header{
		lba:     int64(binary.LittleEndian.Uint64(b[8:])),
		version: binary.LittleEndian.Uint32(b[16:]),
		round:   binary.LittleEndian.Uint32(b[20:]),
		thread:  binary.LittleEndian.Uint32(b[24:]),
	}
	want := binary.LittleEndian.Uint32(b[hdrCRC:])
	var c [4]byte
	crc := crc32.Update(0, castagnoli, b[:hdrCRC])
	crc = crc32.Update(crc, castagnoli, c[:])
	crc = crc32.Update(crc, castagnoli, b[hdrCRC+4:])
	return h, true, crc == want
}

func isZero(b []byte) bool {
	for len(b) >= 8 {
		if binary.LittleEndian.Uint64(b) != 0 {
			return false
		}
		b = b[8:]
	}
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// sectorSource names what one 512-byte sector of a bad block holds.
type sectorSource struct {
	zero    bool
	version uint32 // a version of this block (0 with !zero: unknown)
}

func (s sectorSource) String() string {
	switch {
	case s.zero:
		return "zeros"
	case s.version > 0:
		return fmt.Sprintf("v%d", s.version)
	default:
		return "unknown bytes"
	}
}

// describeSectors says, for runs of sectors, what they hold: zeros, a
// version of this block among the candidates, or bytes none of them has.
func describeSectors(b []byte, candidates map[uint32][]byte) string {
	var src [secPerBlock]sectorSource
	for s := range secPerBlock {
		sec := b[s*sectorSize : (s+1)*sectorSize]
		if isZero(sec) {
			src[s].zero = true
			continue
		}
		// Prefer the highest matching version (sectors past the header
		// are unique per version; the header sector differs in version).
		var best uint32
		for v, want := range candidates {
			if v > best && bytes.Equal(sec, want[s*sectorSize:(s+1)*sectorSize]) {
				best = v
			}
		}
		src[s].version = best
	}
	var parts []string
	for s := 0; s < secPerBlock; {
		e := s + 1
		for e < secPerBlock && src[e] == src[s] {
			e++
		}
		if e-s == 1 {
			parts = append(parts, fmt.Sprintf("sector %d %s", s, src[s]))
		} else {
			parts = append(parts, fmt.Sprintf("sectors %d-%d %s", s, e-1, src[s]))
		}
		s = e
	}
	return strings.Join(parts, ", ")
}
