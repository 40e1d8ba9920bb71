package device

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// sysfsBlock is where the kernel describes block devices by MAJ:MIN.
// A variable so tests can point it at a fake tree.
var sysfsBlock = "/sys/dev/block"

// idFiles are the sysfs files, relative to a disk's directory, that may hold
// a stable hardware or volume identifier, in order of preference.
var idFiles = []string{"wwid", "device/serial", "device/wwid", "dm/uuid"}

// filesystemID names the filesystem a file lives on: its f_fsid, which
// ext4, xfs and btrfs derive from the filesystem UUID and so survives a
// reboot that renumbers devices; the device number where f_fsid is zero.
func filesystemID(fd int, dev uint64) uint64 {
	var sfs unix.Statfs_t
	if err := unix.Fstatfs(fd, &sfs); err == nil && (sfs.Fsid.Val[0] != 0 || sfs.Fsid.Val[1] != 0) {
		return uint64(uint32(sfs.Fsid.Val[0]))<<32 | uint64(uint32(sfs.Fsid.Val[1]))
	}
	return dev
}

// fileIdentity derives a regular file's identity from its filesystem's ID
// (see filesystemID) and the inode number.
func fileIdentity(dev, ino uint64) [16]byte {
	h := sha256.New()
	h.Write([]byte("file"))
	writeU64(h, dev)
	writeU64(h, ino)
	return sum16(h.Sum(nil))
}

// blockIdentity derives a block device's identity from a sysfs identifier
// when one exists, else from its device number, and its size.
func blockIdentity(rdev uint64, size int64) [16]byte {
	h := sha256.New()
	h.Write([]byte("blk"))
	dir := filepath.Join(sysfsBlock, fmt.Sprintf("%d:%d", unix.Major(rdev), unix.Minor(rdev)))
	if id, ok := sysfsID(dir); ok {
		h.Write(id)
	} else if id, ok := partitionID(dir); ok {
		h.Write(id)
	} else {
		h.Write([]byte("rdev"))
		writeU64(h, rdev)
	}
	writeU64(h, uint64(size))
	return sum16(h.Sum(nil))
}

// sysfsID returns the first non-empty identifier file under dir, prefixed
// by its name so that, say, a serial never collides with a dm uuid.
func sysfsID(dir string) ([]byte, bool) {
	for _, name := range idFiles {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			continue
		}
		if b = bytes.TrimSpace(b); len(b) > 0 {
			return append([]byte(name+"="), b...), true
		}
	}
	return nil, false
}

// partitionID identifies a partition by its parent disk's identifier plus
// the partition number and start sector; ok is false when dir is not a
// partition or the parent has no identifier.
func partitionID(dir string) ([]byte, bool) {
	part, err := os.ReadFile(filepath.Join(dir, "partition"))
	if err != nil {
		return nil, false
	}
	start, err := os.ReadFile(filepath.Join(dir, "start"))
	if err != nil {
		return nil, false
	}
	resolved, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return nil, false
	}
	id, ok := sysfsID(filepath.Dir(resolved))
	if !ok {
		return nil, false
	}
	id = append(id, " part="...)
	id = append(id, bytes.TrimSpace(part)...)
	id = append(id, " start="...)
	id = append(id, bytes.TrimSpace(start)...)
	return id, true
}

func writeU64(h io.Writer, v uint64) {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], v)
	h.Write(b[:])
}

func sum16(sum []byte) [16]byte {
	var id [16]byte
	copy(id[:], sum)
	return id
}
