package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/wbcache/wbcache/crashtest"
	"golang.org/x/sys/unix"
)

// wbcache binds a cache to its backing file by the file's filesystem ID
// and inode number. FUSE reports no filesystem ID (f_fsid is zero), so the
// ID is st_dev: an anonymous device number the kernel hands to each new
// FUSE (or tmpfs, ...) mount, the lowest one free at the time. Every
// instance of the power-cut filesystem must get the number the cache was
// formatted through, or wbcache refuses the backing file as another one.
//
// On a quiet machine the number comes back by itself (the previous
// instance freed it). When a lower number has been freed since, or
// another mount took ours, devPinner fills the free numbers below ours
// with tiny tmpfs placeholders until ours is the lowest free one; the
// filesystem is then mounted and the placeholders removed.

var errDevTaken = errors.New("the device number is in use by another mount")

type devPinner struct {
	tr  *crashtest.Procs
	dir string // placeholders are mounted under it
	n   int
}

// pin arranges that the next anonymous device number handed out is want.
// release removes the placeholders (after the mount that needed them).
func (d *devPinner) pin(want uint64) (release func(), err error) {
	var held []string
	release = func() {
		for _, p := range held {
			_ = unix.Unmount(p, unix.MNT_DETACH)
			_ = os.Remove(p)
		}
	}
	for range 256 {
		d.n++
		p := filepath.Join(d.dir, fmt.Sprintf("pin-%d", d.n))
		if err := os.MkdirAll(p, 0o700); err != nil {
			release()
			return nil, err
		}
		d.tr.TrackMount(p)
		if err := unix.Mount("wbcache-powercut-pin", p, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "size=4k,nr_inodes=16"); err != nil {
			os.Remove(p)
			release()
			return nil, fmt.Errorf("mounting a placeholder tmpfs: %w", err)
		}
		var st unix.Stat_t
		if err := unix.Stat(p, &st); err != nil {
			held = append(held, p)
			release()
			return nil, err
		}
		switch dev := st.Dev; {
		case dev == want:
			// Ours was the lowest free number: free it again.
			_ = unix.Unmount(p, 0)
			_ = os.Remove(p)
			return release, nil
		case dev < want:
			held = append(held, p) // keep it from the filesystem
		default:
			held = append(held, p)
			release()
			return nil, errDevTaken
		}
	}
	release()
	return nil, fmt.Errorf("more than 256 free device numbers below %d:%d", unix.Major(want), unix.Minor(want))
}

func devString(dev uint64) string {
	return fmt.Sprintf("%d:%d", unix.Major(dev), unix.Minor(dev))
}
