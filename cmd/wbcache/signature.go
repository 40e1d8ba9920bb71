package main

import (
	"bytes"
	"encoding/binary"
	"fmt"
)

// probeSize is how much of the start of a device probeSignature reads:
// enough to reach the btrfs superblock at 64 KiB and a swap header on
// 64 KiB pages.
const probeSize = 68 << 10

// signature is a filesystem, partition table or volume header found at
// the start of a device.
type signature struct {
	what string // "an ext4 filesystem", "an MBR partition table", ...
	at   int64  // byte offset of the magic that identified it
}

func (s signature) String() string {
	return fmt.Sprintf("%s (magic at byte %d)", s.what, s.at)
}

// probeSignature looks for a known on-disk format in buf, the first bytes
// of a device (up to probeSize; a shorter buf is a smaller device). It
// reports the first match in a fixed order, most specific first. It only
// compares magic numbers at fixed offsets: a device holding unknown data
// matches nothing.
func probeSignature(buf []byte) (signature, bool) {
	at := func(off int, magic string) bool {
		return off >= 0 && off+len(magic) <= len(buf) && string(buf[off:off+len(magic)]) == magic
	}
	le16 := func(off int) uint16 { return binary.LittleEndian.Uint16(buf[off:]) }
	le32 := func(off int) uint32 { return binary.LittleEndian.Uint32(buf[off:]) }
	found := func(what string, off int) (signature, bool) {
		return signature{what: what, at: int64(off)}, true
	}

	// Headers at byte 0.
	switch {
	case at(0, "LUKS\xba\xbe"):
		return found("a LUKS encrypted volume", 0)
	case at(0, "XFSB"):
		return found("an XFS filesystem", 0)
	case at(0, "hsqs"):
		return found("a squashfs filesystem", 0)
	case at(3, "NTFS    "):
		return found("an NTFS filesystem", 3)
	case at(3, "EXFAT   "):
		return found("an exFAT filesystem", 3)
	}
	// LVM2 physical volume: a label in one of the first four sectors.
	for sector := 0; sector < 4; sector++ {
		if off := sector * 512; at(off, "LABELONE") {
			return found("an LVM2 physical volume", off)
		}
	}
	// GPT before MBR: a GPT disk also carries a protective MBR.
	if at(512, "EFI PART") {
		return found("a GPT partition table", 512)
	}
	// ext2/3/4: superblock at 1024, magic 0xEF53 at 1024+56.
	if len(buf) >= 1024+0x68 && le16(1024+56) == 0xEF53 {
		return found(extKind(le32(1024+0x5C), le32(1024+0x60), le32(1024+0x64)), 1024+56)
	}
	// A FAT boot sector ends in 0x55AA like an MBR; tell them apart by the
	// filesystem type string of the FAT12/16 or FAT32 boot record.
	if len(buf) >= 512 && buf[510] == 0x55 && buf[511] == 0xAA {
		if at(54, "FAT") {
			return found("a FAT filesystem", 54)
		}
		if at(82, "FAT") {
			return found("a FAT32 filesystem", 82)
		}
		for i := 0; i < 4; i++ {
			entry := buf[446+16*i : 446+16*(i+1)]
			if entry[4] != 0 && !allZero(entry[8:16]) { // partition type, start and length
				return found("an MBR partition table", 510)
			}
		}
	}
	// Swap: the signature ends the first page, whatever the page size.
	for _, page := range []int{4096, 8192, 16384, 65536} {
		if at(page-10, "SWAPSPACE2") || at(page-10, "SWAP-SPACE") {
			return found("a swap area", page-10)
		}
	}
	if at(32769, "CD001") {
		return found("an ISO 9660 filesystem", 32769)
	}
	if at(65536+64, "_BHRfS_M") {
		return found("a btrfs filesystem", 65536+64)
	}
	return signature{}, false
}

// extKind names an ext2/3/4 filesystem by its feature flags: extents,
// 64-bit, flex_bg or the like make it ext4, a journal alone ext3.
func extKind(compat, incompat, roCompat uint32) string {
	const (
		compatJournal    = 0x4
		incompatExt4     = 0x40 | 0x80 | 0x200 | 0x400 | 0x10000 // extents, 64bit, flex_bg, ea_inode, inline_data
		roCompatHugeFile = 0x8
		roCompatChecksum = 0x400 // metadata_csum
	)
	switch {
	case incompat&incompatExt4 != 0 || roCompat&(roCompatHugeFile|roCompatChecksum) != 0:
		return "an ext4 filesystem"
	case compat&compatJournal != 0:
		return "an ext3 filesystem"
	}
	return "an ext2 filesystem"
}

func allZero(b []byte) bool {
	return len(bytes.Trim(b, "\x00")) == 0
}
