package fuse

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

const (
	mountInfoPath   = "/proc/self/mountinfo"
	fuseConnections = "/sys/fs/fuse/connections"
	// maxStaleLayers bounds how many dead mounts stacked on one mount point
	// CleanupStale removes.
	maxStaleLayers = 8
)

// CleanupStale makes mountpoint usable again after the daemon that served
// it died: if statfs or stat of mountpoint fails with ENOTCONN (or
// ECONNABORTED, or ECANCELED: see deadErr), the dead FUSE mount is aborted through /sys/fs/fuse/connections/<dev>/abort
// (when fusectl is mounted) and detached (umount2 MNT_DETACH as root,
// fusermount -u -z otherwise). If both succeed, or fail for another
// reason, CleanupStale does nothing and returns nil; Mount will report any
// remaining problem. An error means a dead mount is there and could not be
// removed.
func CleanupStale(mountpoint string) error {
	mp, err := resolveMountpoint(mountpoint)
	if err != nil {
		return fmt.Errorf("wbcache/fuse: cleanup %s: %w", mountpoint, err)
	}
	for range maxStaleLayers {
		err := deadErr(mp)
		if err == nil {
			return nil
		}
		if err := detachDead(mp, err); err != nil {
			return fmt.Errorf("wbcache/fuse: cleanup %s: %w", mp, err)
		}
	}
	return fmt.Errorf("wbcache/fuse: cleanup %s: still not connected after removing %d dead mounts", mp, maxStaleLayers)
}

// deadErr returns the ENOTCONN/ECONNABORTED error if mp is a FUSE mount
// whose daemon is gone, else nil. statfs is asked first because the kernel
// always forwards it to the daemon, while stat may be answered from cached
// attributes for a while after the daemon died. A daemon that served
// through io_uring leaves ECONNABORTED, and a request that raced the ring's
// teardown fails with ECANCELED; a live daemon never answers statfs with
// either.
func deadErr(mp string) error {
	dead := func(err error) bool {
		return errors.Is(err, unix.ENOTCONN) || errors.Is(err, unix.ECONNABORTED) || errors.Is(err, unix.ECANCELED)
	}
	var sfs unix.Statfs_t
	if err := unix.Statfs(mp, &sfs); dead(err) {
		return fmt.Errorf("statfs: %w", err)
	}
	var st unix.Stat_t
	if err := unix.Stat(mp, &st); dead(err) {
		return fmt.Errorf("stat: %w", err)
	}
	return nil
}

// resolveMountpoint returns the absolute path of mountpoint as it appears in
// mountinfo, resolving symlinks in its parent (the mount point itself cannot
// be looked at while dead).
func resolveMountpoint(mountpoint string) (string, error) {
	abs, err := filepath.Abs(mountpoint)
	if err != nil {
		return "", err
	}
	dir, base := filepath.Split(abs)
	if base == "" {
		return abs, nil
	}
	if d, err := filepath.EvalSymlinks(dir); err == nil {
		dir = d
	}
	return filepath.Join(dir, base), nil
}

// detachDead aborts and lazily unmounts the topmost mount at mp, which stat
// reported as dead with statErr.
func detachDead(mp string, statErr error) error {
	m, found, err := findMount(mp)
	if err != nil {
		return err
	}
	if !found {
		return fmt.Errorf("%v, but no mount is at this path (is a parent directory a dead FUSE mount?)", statErr)
	}
	if !strings.HasPrefix(m.fsType, "fuse") {
		return fmt.Errorf("%v, but the mount here is %q, not FUSE: refusing to touch it", statErr, m.fsType)
	}
	// Aborting fails pending requests of a hung daemon at once; for a dead
	// daemon it is a no-op. Best effort: fusectl may not be mounted.
	abort := filepath.Join(fuseConnections, strconv.FormatUint(m.dev, 10), "abort")
	if f, err := os.OpenFile(abort, os.O_WRONLY, 0); err == nil {
		_, _ = f.WriteString("1")
		_ = f.Close()
	}
	return lazyUnmount(mp)
}

type mountEntry struct {
	dev    uint64 // kernel dev_t of the superblock: the fusectl connection id
	fsType string
}

// findMount returns the topmost mount whose mount point is mp.
func findMount(mp string) (mountEntry, bool, error) {
	f, err := os.Open(mountInfoPath)
	if err != nil {
		return mountEntry{}, false, err
	}
	defer f.Close()
	var m mountEntry
	found := false
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		e, point, ok := parseMountInfo(sc.Text())
		if ok && point == mp {
			m, found = e, true // later lines are mounted on top
		}
	}
	if err := sc.Err(); err != nil {
		return mountEntry{}, false, fmt.Errorf("reading %s: %w", mountInfoPath, err)
	}
	return m, found, nil
}

// parseMountInfo parses one line of /proc/self/mountinfo:
//
//	36 35 0:42 / /mnt/x rw,nosuid - fuse.wbcache wbcache rw,user_id=0
func parseMountInfo(line string) (e mountEntry, mountPoint string, ok bool) {
	fields := strings.Fields(line)
	sep := -1
	for i := 6; i < len(fields); i++ {
		if fields[i] == "-" {
			sep = i
			break
		}
	}
	if sep < 0 || sep+1 >= len(fields) {
		return e, "", false
	}
	majS, minS, ok := strings.Cut(fields[2], ":")
	if !ok {
		return e, "", false
	}
	maj, err1 := strconv.ParseUint(majS, 10, 32)
	mnr, err2 := strconv.ParseUint(minS, 10, 32)
	if err1 != nil || err2 != nil {
		return e, "", false
	}
	// The kernel's internal dev_t (MKDEV): 12-bit major, 20-bit minor.
	e.dev = maj<<20 | mnr
	e.fsType = fields[sep+1]
	return e, unescapeMountInfo(fields[4]), true
}

// unescapeMountInfo undoes the octal escapes (\040 for space, \011, \012,
// \134) the kernel uses in mountinfo paths.
func unescapeMountInfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) && isOctal(s[i+1]) && isOctal(s[i+2]) && isOctal(s[i+3]) {
			b.WriteByte((s[i+1]-'0')<<6 | (s[i+2]-'0')<<3 | (s[i+3] - '0'))
			i += 3
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isOctal(c byte) bool { return c >= '0' && c <= '7' }
