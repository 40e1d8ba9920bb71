package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// child is a process the runner started: its stdout lines are copied to
// its log and handed out by waitLine; stderr goes to the log only.
type child struct {
	name  string
	cmd   *exec.Cmd
	pid   int
	log   *os.File
	lines chan string
	done  chan struct{} // closed when the process was reaped
	err   error         // its exit, after done
}

// tracker knows every process and mount the runner made, so that they are
// all undone on any way out.
type tracker struct {
	mu       sync.Mutex
	closing  bool
	children map[int]*child
	mounts   []string // mount points, unmounted in reverse order
	fusectl  bool     // fusectl was mounted by us
}

func newTracker() *tracker { return &tracker{children: map[int]*child{}} }

var errClosing = errors.New("interrupted")

// start runs name args... with stdout lines available through waitLine
// and both streams appended to logPath. The child gets its own process
// group (a Ctrl-C on the terminal reaches only the runner, which stops it
// in order) and SIGTERM if the runner dies.
func (tr *tracker) start(name, logPath string, args ...string) (*child, error) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	if tr.closing {
		return nil, errClosing
	}
	lf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(lf, "=== %s: %s\n", time.Now().Format("15:04:05.000"), strings.Join(args, " "))
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stderr = lf
	out, err := cmd.StdoutPipe()
	if err != nil {
		lf.Close()
		return nil, err
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		lf.Close()
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	c := &child{name: name, cmd: cmd, pid: cmd.Process.Pid, log: lf, lines: make(chan string, 64), done: make(chan struct{})}
	tr.children[c.pid] = c
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			l := sc.Text()
			fmt.Fprintln(lf, l)
			select {
			case c.lines <- l:
			default: // nobody is waiting for lines now
			}
		}
		io.Copy(io.Discard, out)
		c.err = cmd.Wait()
		lf.Close()
		close(c.done)
		tr.mu.Lock()
		delete(tr.children, c.pid)
		tr.mu.Unlock()
	}()
	return c, nil
}

// waitLine waits for a stdout line starting with prefix.
func (c *child) waitLine(prefix string, timeout time.Duration) (string, error) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	for {
		select {
		case l := <-c.lines:
			if strings.HasPrefix(l, prefix) {
				return l, nil
			}
		case <-c.done:
			// Lines printed just before the exit may still be queued.
			for {
				select {
				case l := <-c.lines:
					if strings.HasPrefix(l, prefix) {
						return l, nil
					}
				default:
					return "", fmt.Errorf("%s (pid %d) exited (%v) before printing %q", c.name, c.pid, c.err, prefix)
				}
			}
		case <-t.C:
			return "", fmt.Errorf("%s (pid %d) printed no %q within %v", c.name, c.pid, prefix, timeout)
		}
	}
}

func (c *child) exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

func (c *child) signal(sig syscall.Signal) {
	if !c.exited() {
		_ = c.cmd.Process.Signal(sig)
	}
}

// wait waits up to timeout for the child to be reaped.
func (c *child) wait(timeout time.Duration) bool {
	select {
	case <-c.done:
		return true
	case <-time.After(timeout):
		return false
	}
}

// exitCode is the child's exit status (-1 while running or when killed by
// a signal).
func (c *child) exitCode() int {
	if !c.exited() {
		return -1
	}
	return c.cmd.ProcessState.ExitCode()
}

// stop sends SIGTERM, waits up to timeout, then SIGKILL. It reports
// whether the child stopped on SIGTERM.
func (c *child) stop(timeout time.Duration) bool {
	c.signal(syscall.SIGTERM)
	if c.wait(timeout) {
		return true
	}
	c.signal(syscall.SIGKILL)
	c.wait(10 * time.Second)
	return false
}

// stacks returns the kernel stacks of the child's threads (for a process
// that does not go away).
func stacks(pid int) string {
	var b strings.Builder
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*", pid))
	for _, t := range tasks {
		st, _ := os.ReadFile(filepath.Join(t, "stat"))
		stk, _ := os.ReadFile(filepath.Join(t, "stack"))
		f := strings.Fields(string(st))
		state := "?"
		if len(f) > 2 {
			state = f[2]
		}
		fmt.Fprintf(&b, "  thread %s state %s:\n    %s\n", filepath.Base(t), state, strings.ReplaceAll(strings.TrimSpace(string(stk)), "\n", "\n    "))
	}
	return b.String()
}

// ---------------------------------------------------------------- mounts

// mountEntry is a line of /proc/self/mountinfo.
type mountEntry struct {
	dev    string // MAJ:MIN of the superblock
	point  string
	fsType string
}

func mounts() []mountEntry {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	var out []mountEntry
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
		out = append(out, mountEntry{dev: f[2], point: unescapeMount(f[4]), fsType: fsType})
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

// topMount returns the topmost mount at point.
func topMount(point string) (mountEntry, bool) {
	var m mountEntry
	found := false
	for _, e := range mounts() {
		if e.point == point {
			m, found = e, true
		}
	}
	return m, found
}

func isMounted(point string) bool {
	_, ok := topMount(point)
	return ok
}

func (tr *tracker) trackMount(point string) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	for _, m := range tr.mounts {
		if m == point {
			return
		}
	}
	tr.mounts = append(tr.mounts, point)
}

// fuseAbort aborts the FUSE connection of the mount at point through
// fusectl (mounting it if needed): every request waiting on it fails at
// once, even when no daemon will ever answer.
func (tr *tracker) fuseAbort(point string) error {
	m, ok := topMount(point)
	if !ok {
		return fmt.Errorf("%s is not mounted", point)
	}
	if !strings.HasPrefix(m.fsType, "fuse") {
		return fmt.Errorf("%s is %s, not FUSE", point, m.fsType)
	}
	const ctl = "/sys/fs/fuse/connections"
	if !isMounted(ctl) {
		if err := unix.Mount("fusectl", ctl, "fusectl", 0, ""); err != nil {
			return fmt.Errorf("mounting fusectl: %w", err)
		}
		tr.mu.Lock()
		tr.fusectl = true
		tr.mu.Unlock()
	}
	var maj, min uint32
	if _, err := fmt.Sscanf(m.dev, "%d:%d", &maj, &min); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(ctl, strconv.FormatUint(unix.Mkdev(maj, min), 10), "abort"), []byte("1"), 0)
}

// responsive reports whether statfs of point returns within timeout (a
// FUSE mount whose daemon is stopped but alive does not answer).
func responsive(point string, timeout time.Duration) bool {
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

// unmountFUSE removes every FUSE mount at point, alive, dead or hung (a
// hung one is aborted first), lazily if it is busy.
func (tr *tracker) unmountFUSE(point string) error {
	for range 8 {
		m, ok := topMount(point)
		if !ok {
			return nil
		}
		if !strings.HasPrefix(m.fsType, "fuse") {
			return fmt.Errorf("%s is %s, not FUSE: left alone", point, m.fsType)
		}
		if !responsive(point, 3*time.Second) {
			_ = tr.fuseAbort(point)
		}
		if err := unix.Unmount(point, 0); err != nil {
			if err := unix.Unmount(point, unix.MNT_DETACH); err != nil {
				return fmt.Errorf("unmounting %s: %w", point, err)
			}
		}
	}
	return fmt.Errorf("%s: still mounted", point)
}

// cleanup stops every child (SIGTERM, then SIGKILL) and removes every
// mount the runner made. Later starts fail.
func (tr *tracker) cleanup(logf func(string, ...any)) {
	tr.mu.Lock()
	tr.closing = true
	var kids []*child
	for _, c := range tr.children {
		kids = append(kids, c)
	}
	points := append([]string(nil), tr.mounts...)
	tr.mu.Unlock()
	// wbcache first: it serves from the filesystem's files.
	for _, c := range kids {
		if c.name == "wbcache" {
			if !c.stop(20 * time.Second) {
				logf("%s (pid %d) did not stop on SIGTERM; killed", c.name, c.pid)
			}
		}
	}
	for _, c := range kids {
		if c.name != "wbcache" && !c.stop(20*time.Second) {
			logf("%s (pid %d) did not stop on SIGTERM; killed", c.name, c.pid)
		}
	}
	for i := len(points) - 1; i >= 0; i-- {
		p := points[i]
		m, ok := topMount(p)
		if !ok {
			continue
		}
		var err error
		if strings.HasPrefix(m.fsType, "fuse") {
			err = tr.unmountFUSE(p)
		} else if err = unix.Unmount(p, 0); err != nil {
			err = unix.Unmount(p, unix.MNT_DETACH)
		}
		if err != nil {
			logf("cleanup: %v", err)
		}
	}
	tr.mu.Lock()
	ctl := tr.fusectl
	tr.fusectl = false
	tr.mu.Unlock()
	if ctl {
		_ = unix.Unmount("/sys/fs/fuse/connections", 0)
	}
}
