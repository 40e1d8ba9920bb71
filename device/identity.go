package device

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

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

// blockIdentity derives a block device's identity and size. A device
// stacked on another (a loop device, device-mapper without a UUID, or a
// partition of either) is identified by what it stacks on: a loop device
// by the file behind it (see loopID). Others, and devices without a
// stable identifier, follow the rule of earlier versions
// (legacyBlockIdentity).
func blockIdentity(rdev uint64, size int64) [16]byte {
	dir := sysfsDir(rdev)
	id, ok := stackedID(dir)
	if !ok {
		id, ok = partitionID(dir, stackedID)
	}
	if !ok {
		return legacyBlockIdentity(rdev, size)
	}
	h := sha256.New()
	h.Write([]byte("blk"))
	h.Write(id)
	writeU64(h, uint64(size))
	return sum16(h.Sum(nil))
}

// legacyBlockIdentity is how wbcache before the stacked rule identified a
// block device: by a sysfs identifier when one exists, else by its device
// number, and its size. For a loop device that is the device number
// alone, whatever file is attached to it.
func legacyBlockIdentity(rdev uint64, size int64) [16]byte {
	h := sha256.New()
	h.Write([]byte("blk"))
	dir := sysfsDir(rdev)
	if id, ok := sysfsID(dir); ok {
		h.Write(id)
	} else if id, ok := partitionID(dir, sysfsID); ok {
		h.Write(id)
	} else {
		h.Write([]byte("rdev"))
		writeU64(h, rdev)
	}
	writeU64(h, uint64(size))
	return sum16(h.Sum(nil))
}

func sysfsDir(rdev uint64) string {
	return filepath.Join(sysfsBlock, fmt.Sprintf("%d:%d", unix.Major(rdev), unix.Minor(rdev)))
}

// stackedID is a hardware or volume identifier (sysfsID), else what a
// stacked device stacks on: the file behind a loop device, or a
// device-mapper device's name.
func stackedID(dir string) ([]byte, bool) {
	if id, ok := sysfsID(dir); ok {
		return id, true
	}
	if id, ok := loopID(dir); ok {
		return id, true
	}
	if b, err := os.ReadFile(filepath.Join(dir, "dm/name")); err == nil {
		if b = bytes.TrimSpace(b); len(b) > 0 {
			return append([]byte("dm/name="), b...), true
		}
	}
	return nil, false
}

// loopInfo is what sysfs says about an attached loop device (the same as
// LOOP_GET_STATUS64 reports: lo_file_name, lo_offset, lo_sizelimit).
type loopInfo struct {
	file              string // the backing file's path, as the kernel shows it
	offset, sizelimit uint64
}

// readLoop reads dir/loop/; ok is false when dir is not an attached loop
// device.
func readLoop(dir string) (loopInfo, bool) {
	b, err := os.ReadFile(filepath.Join(dir, "loop/backing_file"))
	if err != nil || len(bytes.TrimSpace(b)) == 0 {
		return loopInfo{}, false
	}
	li := loopInfo{file: strings.TrimSpace(string(b))}
	li.offset, _ = readUint(filepath.Join(dir, "loop/offset"))
	li.sizelimit, _ = readUint(filepath.Join(dir, "loop/sizelimit"))
	return li, true
}

// loopID identifies an attached loop device by its backing file (the ID
// of the filesystem holding it and its inode, as for a regular file
// backing device), offset and size limit: re-attaching the device number
// to another file changes it, and the same file attached under another
// number keeps it. A backing file that cannot be looked up (deleted, or
// not visible from here) is identified by its path.
func loopID(dir string) ([]byte, bool) {
	li, ok := readLoop(dir)
	if !ok {
		return nil, false
	}
	id := fmt.Appendf(nil, "loop offset=%d sizelimit=%d ", li.offset, li.sizelimit)
	var st unix.Stat_t
	var sfs unix.Statfs_t
	if unix.Stat(li.file, &st) != nil || unix.Statfs(li.file, &sfs) != nil {
		return fmt.Appendf(id, "path=%s", li.file), true
	}
	fsid := uint64(st.Dev)
	if sfs.Fsid.Val[0] != 0 || sfs.Fsid.Val[1] != 0 {
		fsid = uint64(uint32(sfs.Fsid.Val[0]))<<32 | uint64(uint32(sfs.Fsid.Val[1]))
	}
	return fmt.Appendf(id, "fs=%x ino=%d", fsid, st.Ino), true
}

func readUint(path string) (uint64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.ParseUint(string(bytes.TrimSpace(b)), 10, 64)
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

// partitionID identifies a partition by its parent disk's identifier
// (from parentID) plus the partition number and start sector; ok is false
// when dir is not a partition or the parent has no identifier.
func partitionID(dir string, parentID func(string) ([]byte, bool)) ([]byte, bool) {
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
	id, ok := parentID(filepath.Dir(resolved))
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

// LegacyIdentity returns the identity d had under the rule of earlier
// versions, where it differs from Identity: for a block device that rule
// (legacyBlockIdentity) ignored what a stacked device stacks on, so a
// loop device was known by its device number alone. ok is false where
// both rules agree, and for devices other than a File.
func LegacyIdentity(d Device) (id [16]byte, ok bool) {
	f, isFile := d.(*File)
	if !isFile || f.kind != kindBlock {
		return id, false
	}
	f.mu.RLock()
	defer f.mu.RUnlock()
	if f.closed {
		return id, false
	}
	var st unix.Stat_t
	if err := unix.Fstat(f.fd, &st); err != nil {
		return id, false
	}
	id = legacyBlockIdentity(st.Rdev, f.size)
	return id, id != f.identity
}
