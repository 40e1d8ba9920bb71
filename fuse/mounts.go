package fuse

import (
	"bufio"
	"fmt"
	"os"
	"strings"
)

// FSType is the filesystem type a wbcache mount has in /proc/mounts: FUSE
// with the subtype given at Mount.
const FSType = "fuse.wbcache"

// MountRecord is a wbcache mount as the kernel lists it.
type MountRecord struct {
	MountPoint string // absolute, as in mountinfo
	Source     string // Options.FsName given at Mount (the cache path for the daemon)
}

// Mounts lists the wbcache mounts of this mount namespace from
// /proc/self/mountinfo, in mount order. A dead mount left by a daemon that
// died is listed too: Alive tells them apart.
func Mounts() ([]MountRecord, error) {
	f, err := os.Open(mountInfoPath)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []MountRecord
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		e, point, ok := parseMountInfo(line)
		if !ok || e.fsType != FSType {
			continue
		}
		out = append(out, MountRecord{MountPoint: point, Source: mountSource(line)})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading %s: %w", mountInfoPath, err)
	}
	return out, nil
}

// mountSource is the source field of a mountinfo line: the first field
// after the filesystem type, which follows the "-" separator.
func mountSource(line string) string {
	_, after, ok := strings.Cut(line, " - ")
	if !ok {
		return ""
	}
	fields := strings.Fields(after)
	if len(fields) < 2 {
		return ""
	}
	return unescapeMountInfo(fields[1])
}

// Alive reports whether the daemon serving the mount at mountPoint still
// answers: false for a dead mount (ENOTCONN and the like; see deadErr).
func Alive(mountPoint string) bool { return deadErr(mountPoint) == nil }
