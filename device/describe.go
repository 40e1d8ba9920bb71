package device

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// Describe names the device at path in words, for messages that must say
// which device is meant: its absolute path and, for a block device, what
// identifies it (the file behind a loop device, a device-mapper name, a
// serial number or WWID, a partition's disk), or its device number. It
// never fails: what it cannot find out, it leaves out.
func Describe(path string) string {
	if abs, err := filepath.Abs(path); err == nil {
		path = abs
	}
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFBLK {
		return path
	}
	return fmt.Sprintf("%s (%s)", path, describeBlock(sysfsDir(st.Rdev), st.Rdev))
}

// describeBlock says what identifies the block device whose sysfs
// directory is dir.
func describeBlock(dir string, rdev uint64) string {
	if li, ok := readLoop(dir); ok {
		d := "loop device on " + li.file
		if li.offset != 0 {
			d += fmt.Sprintf(", offset %d", li.offset)
		}
		if li.sizelimit != 0 {
			d += fmt.Sprintf(", size limit %d", li.sizelimit)
		}
		return d
	}
	if id, ok := stackedID(dir); ok {
		return humanID(id)
	}
	if resolved, err := filepath.EvalSymlinks(dir); err == nil {
		if part, err := os.ReadFile(filepath.Join(resolved, "partition")); err == nil {
			parent := filepath.Dir(resolved)
			return fmt.Sprintf("partition %s of %s, %s", strings.TrimSpace(string(part)), filepath.Base(parent), parentDescription(parent))
		}
	}
	return fmt.Sprintf("block device %d:%d, no serial number", unix.Major(rdev), unix.Minor(rdev))
}

// parentDescription says what identifies a partition's disk.
func parentDescription(dir string) string {
	if li, ok := readLoop(dir); ok {
		return "a loop device on " + li.file
	}
	if id, ok := stackedID(dir); ok {
		return humanID(id)
	}
	return "which has no serial number"
}

// idNames turn the sysfs file an identifier came from into words.
var idNames = map[string]string{
	"wwid": "WWID", "device/wwid": "WWID", "device/serial": "serial number",
	"dm/uuid": "device-mapper UUID", "dm/name": "device-mapper name",
}

// humanID words an identifier from stackedID ("device/serial=WD-1" reads
// "serial number WD-1").
func humanID(id []byte) string {
	name, value, _ := strings.Cut(string(id), "=")
	if w, ok := idNames[name]; ok {
		name = w
	}
	return name + " " + value
}

// Description is Describe for an opened device: a File's path described,
// or "" for a device that has no path (in-memory devices).
func Description(d Device) string {
	if p, ok := d.(interface{ Path() string }); ok {
		return Describe(p.Path())
	}
	return ""
}
