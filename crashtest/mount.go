package crashtest

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// ErrNotFUSE is returned for a FUSE operation on a mount of another type
// (it is left alone).
var ErrNotFUSE = errors.New("not a FUSE mount")

const fusectlDir = "/sys/fs/fuse/connections"

// MountEntry is a line of /proc/self/mountinfo.
type MountEntry struct {
	Dev    string // MAJ:MIN of the superblock
	Point  string
	FSType string
}

// Mounts lists /proc/self/mountinfo.
func Mounts() []MountEntry {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	var out []MountEntry
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 10 {
			continue
		}
		var fsType string
		for i, x := range f {
			if x == "-" && i+1 < len(f) {
				fsType = f[i+1]
				break
			}
		}
		out = append(out, MountEntry{Dev: f[2], Point: unescapeMount(f[4]), FSType: fsType})
	}
	return out
}

// unescapeMount undoes the octal escapes of mountinfo (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// TopMount returns the topmost mount at point.
func TopMount(point string) (MountEntry, bool) {
	var m MountEntry
	found := false
	for _, e := range Mounts() {
		if e.Point == point {
			m, found = e, true
		}
	}
	return m, found
}

// IsMounted reports whether point is a mount point.
func IsMounted(point string) bool {
	_, ok := TopMount(point)
	return ok
}

// TrackMount registers a mount point for Cleanup.
func (p *Procs) TrackMount(point string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, m := range p.mounts {
		if m == point {
			return
		}
	}
	p.mounts = append(p.mounts, point)
}

// FUSEAbort aborts the FUSE connection of the mount at point through
// fusectl (mounting it if needed): every request waiting on it fails at
// once, even when no daemon will ever answer.
func (p *Procs) FUSEAbort(point string) error {
	m, ok := TopMount(point)
	if !ok {
		return fmt.Errorf("%s is not mounted", point)
	}
	if !strings.HasPrefix(m.FSType, "fuse") {
		return fmt.Errorf("%s is %s: %w", point, m.FSType, ErrNotFUSE)
	}
	if !IsMounted(fusectlDir) {
		if err := unix.Mount("fusectl", fusectlDir, "fusectl", 0, ""); err != nil {
			return fmt.Errorf("mounting fusectl: %w", err)
		}
		p.mu.Lock()
		p.fusectl = true
		p.mu.Unlock()
	}
	var maj, min uint32
	if _, err := fmt.Sscanf(m.Dev, "%d:%d", &maj, &min); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(fusectlDir, strconv.FormatUint(unix.Mkdev(maj, min), 10), "abort"), []byte("1"), 0)
}

// Responsive reports whether statfs of point returns within timeout (a
// FUSE mount whose daemon is stopped but alive does not answer).
func Responsive(point string, timeout time.Duration) bool {
	done := make(chan struct{})
	go func() {
		var s unix.Statfs_t
		_ = unix.Statfs(point, &s)
		close(done)
	}()
	select {
	case <-done:
		return true
	case <-time.After(timeout):
		return false
	}
}

// UnmountFUSE removes every FUSE mount at point, alive, dead or hung (a
// hung one is aborted first), lazily if it is busy.
func (p *Procs) UnmountFUSE(point string) error {
	for range 8 {
		m, ok := TopMount(point)
		if !ok {
			return nil
		}
		if !strings.HasPrefix(m.FSType, "fuse") {
			return fmt.Errorf("%s is %s, left alone: %w", point, m.FSType, ErrNotFUSE)
		}
		if !Responsive(point, 3*time.Second) {
			_ = p.FUSEAbort(point)
		}
		if err := unmount(point, 0); err != nil {
			if err := unmount(point, unix.MNT_DETACH); err != nil {
				return err
			}
		}
	}
	return fmt.Errorf("%s: still mounted", point)
}

// unmountAny removes the mounts at point: FUSE ones as UnmountFUSE does,
// others normally or, if busy, lazily.
func (p *Procs) unmountAny(point string) error {
	m, ok := TopMount(point)
	if !ok {
		return nil
	}
	if strings.HasPrefix(m.FSType, "fuse") {
		return p.UnmountFUSE(point)
	}
	if err := unmount(point, 0); err != nil {
		return unmount(point, unix.MNT_DETACH)
	}
	return nil
}

func unmount(point string, flags int) error {
	if err := unix.Unmount(point, flags); err != nil {
		return fmt.Errorf("unmounting %s: %w", point, err)
	}
	return nil
}
