package main

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/wbcache/wbcache/device"
	"golang.org/x/sys/unix"
)

// devices are the two opened devices of a cache.
type devices struct {
	ssd, hdd *device.File
}

func (d *devices) close() error {
	var errs []error
	if d.hdd != nil {
		if err := d.hdd.Close(); err != nil && !errors.Is(err, device.ErrClosed) {
			errs = append(errs, err)
		}
	}
	if d.ssd != nil {
		if err := d.ssd.Close(); err != nil && !errors.Is(err, device.ErrClosed) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// openMode says how a command uses the devices.
type openMode int

const (
	openServe  openMode = iota // mount, detach: read-write, backing O_DIRECT
	openFormat                 // format: cache read-write, backing read-only
	openCheck                  // check: both read-only
)

// openDevices opens the cache device buffered and locked, and the backing
// device (if backingPath is not empty) as the mode requires. inUse is the
// advice given when a device is locked by another process.
func openDevices(cachePath, backingPath string, mode openMode, inUse string) (*devices, error) {
	if err := refuseSameDevice(cachePath, backingPath); err != nil {
		return nil, err
	}
	d := &devices{}
	var err error
	d.ssd, err = device.Open(cachePath, device.Options{Exclusive: true, ReadOnly: mode == openCheck})
	if err != nil {
		return nil, deviceError("cache", cachePath, err, inUse)
	}
	if backingPath == "" {
		return d, nil
	}
	hopts := device.Options{Exclusive: true}
	switch mode {
	case openServe:
		hopts.Direct = true
	case openFormat:
		hopts.ReadOnly = true
	case openCheck:
		hopts = device.Options{ReadOnly: true}
	}
	d.hdd, err = device.Open(backingPath, hopts)
	if err != nil {
		d.close()
		return nil, deviceError("backing", backingPath, err, inUse)
	}
	return d, nil
}

// errSameDevice: --cache and --backing name one file or device.
var errSameDevice = errors.New("--cache and --backing are the same device")

// refuseSameDevice refuses a cache and a backing device that are one file
// (also through another path or a hard link) or one block device. Opened
// twice, the second lock would fail as if another process held it.
func refuseSameDevice(cachePath, backingPath string) error {
	if backingPath == "" {
		return nil
	}
	var a, b unix.Stat_t
	if unix.Stat(cachePath, &a) != nil || unix.Stat(backingPath, &b) != nil {
		return nil // open reports a missing device
	}
	same := a.Dev == b.Dev && a.Ino == b.Ino
	if a.Mode&unix.S_IFMT == unix.S_IFBLK && b.Mode&unix.S_IFMT == unix.S_IFBLK {
		same = same || a.Rdev == b.Rdev
	}
	if !same {
		return nil
	}
	return fmt.Errorf("%w (%s and %s): give the SSD-side cache file or device as --cache and the disk whose data is kept as --backing",
		errSameDevice, cachePath, backingPath)
}

// deviceError explains a failure to open a device.
func deviceError(role, path string, err error, inUse string) error {
	if errors.Is(err, device.ErrLocked) {
		holder, advice := "", inUse
		if n, ok := lockHolder(path); ok {
			var mp string
			holder, mp = describeHolder(n)
			if mp != "" {
				advice += fmt.Sprintf(" (wbcache stop %s)", mp)
			}
		}
		return fmt.Errorf("another wbcache is using %s%s, the %s device: %s", path, holder, role, advice)
	}
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("%s device %s does not exist: give the right path", role, path)
	}
	if errors.Is(err, unix.EINVAL) && role == "backing" {
		return fmt.Errorf("opening backing device %s with O_DIRECT: %v (its filesystem must support O_DIRECT, e.g. not tmpfs)", path, err)
	}
	return fmt.Errorf("opening %s device: %w", role, err)
}

// describeHolder names the process pid holding a device: the mount point
// it serves if it is a daemon this user can reach (returned too), else its
// command line.
func describeHolder(pid int) (text, mountpoint string) {
	if st, ok := daemonByPID(pid); ok {
		return fmt.Sprintf(" (pid %d, serving %s)", pid, st.Mountpoint), st.Mountpoint
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || len(b) == 0 {
		return fmt.Sprintf(" (pid %d)", pid), ""
	}
	args := strings.Fields(strings.ReplaceAll(string(b), "\x00", " "))
	if len(args) > 0 {
		args[0] = filepath.Base(args[0])
	}
	return fmt.Sprintf(" (pid %d: %s)", pid, strings.Join(args, " ")), ""
}

// lockHolder finds the process holding a flock on path in /proc/locks.
func lockHolder(path string) (int, bool) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, false
	}
	want := fmt.Sprintf("%02x:%02x:%d", unix.Major(uint64(st.Dev)), unix.Minor(uint64(st.Dev)), st.Ino)
	f, err := os.Open("/proc/locks")
	if err != nil {
		return 0, false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// 1: FLOCK  ADVISORY  WRITE 25576 fe:00:9977962 0 EOF
		fields := strings.Fields(sc.Text())
		if len(fields) < 6 || fields[1] != "FLOCK" || fields[5] != want {
			continue
		}
		if pid, err := strconv.Atoi(fields[4]); err == nil && pid != os.Getpid() {
			return pid, true
		}
	}
	return 0, false
}
