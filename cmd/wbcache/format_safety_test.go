package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/wbcache/wbcache/device"
)

// TestProbeSignature: each known format is found in a hand-made image of
// the start of a device, with the offset of its magic; zeros, unknown data
// and short buffers match nothing.
func TestProbeSignature(t *testing.T) {
	put := func(buf []byte, off int, s string) { copy(buf[off:], s) }
	mbrSig := func(buf []byte) { buf[510], buf[511] = 0x55, 0xAA }
	for _, tc := range []struct {
		name string
		make func(buf []byte)
		what string
		at   int64
	}{
		{"ext2", func(b []byte) { binary.LittleEndian.PutUint16(b[1080:], 0xEF53) }, "an ext2 filesystem", 1080},
		{"ext3", func(b []byte) {
			binary.LittleEndian.PutUint16(b[1080:], 0xEF53)
			binary.LittleEndian.PutUint32(b[1024+0x5C:], 0x4) // has_journal
		}, "an ext3 filesystem", 1080},
		{"ext4", func(b []byte) {
			binary.LittleEndian.PutUint16(b[1080:], 0xEF53)
			binary.LittleEndian.PutUint32(b[1024+0x5C:], 0x4)
			binary.LittleEndian.PutUint32(b[1024+0x60:], 0x40|0x200) // extents, flex_bg
		}, "an ext4 filesystem", 1080},
		{"xfs", func(b []byte) { put(b, 0, "XFSB") }, "an XFS filesystem", 0},
		{"btrfs", func(b []byte) { put(b, 65600, "_BHRfS_M") }, "a btrfs filesystem", 65600},
		{"swap", func(b []byte) { put(b, 4086, "SWAPSPACE2") }, "a swap area", 4086},
		{"old swap", func(b []byte) { put(b, 4086, "SWAP-SPACE") }, "a swap area", 4086},
		{"swap 64K pages", func(b []byte) { put(b, 65526, "SWAPSPACE2") }, "a swap area", 65526},
		{"mbr", func(b []byte) {
			mbrSig(b)
			e := b[446+16:] // second entry: Linux, start 2048, 8192 sectors
			e[4] = 0x83
			binary.LittleEndian.PutUint32(e[8:], 2048)
			binary.LittleEndian.PutUint32(e[12:], 8192)
		}, "an MBR partition table", 510},
		{"gpt", func(b []byte) {
			mbrSig(b)
			b[446+4] = 0xEE
			binary.LittleEndian.PutUint32(b[446+8:], 1)
			binary.LittleEndian.PutUint32(b[446+12:], 0xFFFFFFFF)
			put(b, 512, "EFI PART")
		}, "a GPT partition table", 512},
		{"luks", func(b []byte) { put(b, 0, "LUKS\xba\xbe") }, "a LUKS encrypted volume", 0},
		{"iso9660", func(b []byte) { put(b, 32769, "CD001") }, "an ISO 9660 filesystem", 32769},
		{"fat16", func(b []byte) { mbrSig(b); put(b, 54, "FAT16   ") }, "a FAT filesystem", 54},
		{"fat32", func(b []byte) {
			mbrSig(b)
			put(b, 82, "FAT32   ")
			b[446+4] = 0x0C // boot code bytes that look like a partition entry
			b[446+8] = 1
		}, "a FAT32 filesystem", 82},
		{"lvm2 sector 1", func(b []byte) { put(b, 512, "LABELONE") }, "an LVM2 physical volume", 512},
		{"lvm2 sector 3", func(b []byte) { put(b, 1536, "LABELONE") }, "an LVM2 physical volume", 1536},
		{"squashfs", func(b []byte) { put(b, 0, "hsqs") }, "a squashfs filesystem", 0},
		{"ntfs", func(b []byte) { mbrSig(b); put(b, 3, "NTFS    ") }, "an NTFS filesystem", 3},
		{"exfat", func(b []byte) { mbrSig(b); put(b, 3, "EXFAT   ") }, "an exFAT filesystem", 3},
	} {
		buf := make([]byte, probeSize)
		tc.make(buf)
		sig, ok := probeSignature(buf)
		require.True(t, ok, tc.name)
		require.Equal(t, tc.what, sig.what, tc.name)
		require.Equal(t, tc.at, sig.at, tc.name)
		require.Contains(t, sig.String(), "magic at byte", tc.name)
	}

	none := map[string][]byte{
		"zeros":   make([]byte, probeSize),
		"unknown": bytes.Repeat([]byte("reused file, old data "), probeSize/22),
		"empty":   nil,
		"short":   []byte("XFS"),
		"4K":      make([]byte, 4096),
	}
	emptyMBR := make([]byte, probeSize) // boot signature, no partition
	mbrSig(emptyMBR)
	none["mbr without partitions"] = emptyMBR
	typeOnly := make([]byte, probeSize) // a type but no extent
	mbrSig(typeOnly)
	typeOnly[446+4] = 0x83
	none["mbr entry without extent"] = typeOnly
	cut := make([]byte, 65600+4) // btrfs magic cut off by the end of the device
	copy(cut[65600:], "_BHR")
	none["cut"] = cut
	for name, buf := range none {
		sig, ok := probeSignature(buf)
		require.False(t, ok, "%s: found %v", name, sig)
	}
}

// handExt4 writes an ext4 superblock magic and feature flags into a new
// sparse file of size bytes.
func handExt4(t *testing.T, path string, size int64) {
	t.Helper()
	require.NoError(t, device.Create(path, size))
	sb := make([]byte, 1024)
	binary.LittleEndian.PutUint16(sb[56:], 0xEF53)
	binary.LittleEndian.PutUint32(sb[0x60:], 0x40) // extents
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	require.NoError(t, err)
	_, err = f.WriteAt(sb, 1024)
	require.NoError(t, err)
	require.NoError(t, f.Close())
}

func fileSum(t *testing.T, path string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	return sha256.Sum256(b)
}

// TestFormatRefusesFilesystem: format will not overwrite an ext4 image
// (hand-made, and one made by mkfs.ext4 when it is installed) without
// --force, also when --cache and --backing are swapped, and leaves it
// untouched; with --force it formats.
func TestFormatRefusesFilesystem(t *testing.T) {
	images := map[string]func(t *testing.T, path string){
		"hand-made": func(t *testing.T, path string) { handExt4(t, path, 32<<20) },
	}
	if _, err := exec.LookPath("mkfs.ext4"); err == nil {
		images["mkfs.ext4"] = func(t *testing.T, path string) {
			require.NoError(t, device.Create(path, 32<<20))
			sh(t, "mkfs.ext4", "-q", "-F", path)
		}
	} else {
		t.Logf("mkfs.ext4 not found: testing the hand-made ext4 image only")
	}
	for name, mk := range images {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			hdd := filepath.Join(dir, "data-hdd.img")
			ssd := filepath.Join(dir, "blank-ssd.img")
			mk(t, hdd)
			require.NoError(t, device.Create(ssd, 16<<20))
			before := fileSum(t, hdd)

			// Swapped: the ext4 "HDD" given as the cache.
			r := wantCode(t, 1, "format", "--cache", hdd, "--backing", ssd)
			require.Contains(t, r.stderr, hdd+" holds an ext4 filesystem (magic at byte 1080)")
			require.Contains(t, r.stderr, "would destroy it")
			require.Contains(t, r.stderr, "swapped")
			require.Contains(t, r.stderr, "--force")
			require.Empty(t, r.stdout)
			require.Equal(t, before, fileSum(t, hdd), "a refused format leaves the device untouched")
			// Its size given explicitly changes nothing.
			r = wantCode(t, 1, "format", "--cache", hdd, "--cache-size", "32M", "--backing", ssd)
			require.Contains(t, r.stderr, "ext4 filesystem")
			require.Equal(t, before, fileSum(t, hdd))

			// The right way round formats, and the ext4 data is only read.
			wantCode(t, 0, "format", "--cache", ssd, "--backing", hdd)
			require.Equal(t, before, fileSum(t, hdd))

			// --force overwrites it; the cache (32M) is larger than its
			// backing device (16M), which is warned about.
			other := filepath.Join(dir, "other.img")
			handExt4(t, other, 16<<20)
			r = wantCode(t, 0, "format", "--cache", hdd, "--backing", other, "--force")
			require.Contains(t, r.stdout, "formatted "+hdd)
			require.Contains(t, r.stderr, "warning: the cache data")
			require.Contains(t, r.stderr, "is larger than the backing device "+other+" (16.0 MiB)")
			// Now a wbcache cache: the existing refusal applies.
			r = wantCode(t, 1, "format", "--cache", hdd, "--backing", other)
			require.Contains(t, r.stderr, "already holds a wbcache cache")
		})
	}
}

// TestFormatAcceptsUnknownData: a sparse file, a file of written zeros and
// a file of data of no known format all format without --force, and with
// no warning when the cache is smaller than the backing device.
func TestFormatAcceptsUnknownData(t *testing.T) {
	dir := t.TempDir()
	backing := filepath.Join(dir, "backing.img")
	handExt4(t, backing, 64<<20) // a filesystem on the backing device is what it is for

	sparse := filepath.Join(dir, "sparse.img")
	require.NoError(t, device.Create(sparse, 16<<20))
	zeros := filepath.Join(dir, "zeros.img")
	require.NoError(t, os.WriteFile(zeros, make([]byte, 16<<20), 0o600))
	unknown := filepath.Join(dir, "unknown.img")
	require.NoError(t, os.WriteFile(unknown, bytes.Repeat([]byte("old bytes\n"), 16<<20/10+6)[:16<<20], 0o600))
	small := filepath.Join(dir, "small.img") // smaller than the probed area
	require.NoError(t, os.WriteFile(small, make([]byte, 64<<10), 0o600))
	for _, cache := range []string{sparse, zeros, unknown} {
		r := wantCode(t, 0, "format", "--cache", cache, "--backing", backing)
		require.Contains(t, r.stdout, "formatted "+cache)
		require.NotContains(t, r.stderr, "warning")
	}
	r := wantCode(t, 1, "format", "--cache", small, "--backing", backing)
	require.Contains(t, r.stderr, "too small", "a small device gets past the probe to the geometry check")
	r = wantCode(t, 0, "format", "--cache", filepath.Join(dir, "new.img"), "--cache-size", "8M", "--backing", backing)
	require.NotContains(t, r.stderr, "warning")

	// A new cache file larger than its backing device: formatted, warned.
	tiny := filepath.Join(dir, "tiny-backing.img")
	require.NoError(t, device.Create(tiny, 4<<20))
	r = wantCode(t, 0, "format", "--cache", filepath.Join(dir, "big.img"), "--cache-size", "16M", "--backing", tiny)
	require.Contains(t, r.stderr, "is larger than the backing device "+tiny+" (4.0 MiB)")
	require.Contains(t, r.stdout, "formatted")
}
