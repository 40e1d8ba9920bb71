package device

import (
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// Rotational reports whether the disk under path (a block device, or a
// file on one) is a spinning disk, as the kernel's queue/rotational
// attribute says; known is false when it cannot tell (a file on tmpfs or
// a network file system, no sysfs).
func Rotational(path string) (rotational, known bool) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return false, false
	}
	dev := st.Dev
	if st.Mode&unix.S_IFMT == unix.S_IFBLK {
		dev = st.Rdev
	}
	return rotationalOf(sysfsDir(dev))
}

// rotationalOf reads the rotational attribute of the block device whose
// sysfs directory (sysfsDir) is dir; a partition takes its disk's.
func rotationalOf(dir string) (rotational, known bool) {
	dir, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return false, false
	}
	if _, err := os.Stat(filepath.Join(dir, "partition")); err == nil {
		dir = filepath.Dir(dir)
	}
	b, err := os.ReadFile(filepath.Join(dir, "queue", "rotational"))
	if err != nil {
		return false, false
	}
	switch strings.TrimSpace(string(b)) {
	case "1":
		return true, true
	case "0":
		return false, true
	}
	return false, false
}
