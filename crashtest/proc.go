package crashtest

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// ErrClosing is returned by Procs.Start after Procs.Cleanup began.
var ErrClosing = errors.New("crashtest: cleaning up, no new processes")

// Child is a process started by Procs.Start: its stdout lines are copied to
// its log and handed out by WaitLine; stderr goes to the log only.
type Child struct {
	Name  string
	Pid   int
	Log   string // the log file's path
	cmd   *exec.Cmd
	lines chan string
	done  chan struct{} // closed when the process was reaped
	err   error         // its exit, after done

	mu     sync.Mutex
	stdout strings.Builder // every stdout line
}

// Procs knows every process, mount and loop device a test made, so that
// they are all undone on any way out (Cleanup).
type Procs struct {
	mu       sync.Mutex
	closing  bool
	children map[int]*Child
	mounts   []string // mount points, unmounted in reverse order
	loops    []string // loop devices, detached after the mounts
	fusectl  bool     // fusectl was mounted by us
}

// NewProcs returns an empty registry.
func NewProcs() *Procs { return &Procs{children: map[int]*Child{}} }

// Start runs args[0] args[1:]... with stdout lines available through
// WaitLine and both streams appended to logPath. The child gets its own
// process group (a Ctrl-C on the terminal reaches only the test, which
// stops it in order) and SIGTERM if the test dies.
func (p *Procs) Start(name, logPath string, args ...string) (*Child, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closing {
		return nil, ErrClosing
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
	c := &Child{Name: name, Pid: cmd.Process.Pid, Log: logPath, cmd: cmd, lines: make(chan string, 64), done: make(chan struct{})}
	p.children[c.Pid] = c
	go p.follow(c, out, lf)
	return c, nil
}

// follow copies the child's stdout to its log and its lines to WaitLine,
// then reaps it.
func (p *Procs) follow(c *Child, out io.Reader, lf *os.File) {
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		l := sc.Text()
		fmt.Fprintln(lf, l)
		c.mu.Lock()
		c.stdout.WriteString(l + "\n")
		c.mu.Unlock()
		select {
		case c.lines <- l:
		default: // nobody is waiting for lines now
		}
	}
	_, _ = io.Copy(io.Discard, out)
	c.err = c.cmd.Wait()
	lf.Close()
	close(c.done)
	p.mu.Lock()
	delete(p.children, c.Pid)
	p.mu.Unlock()
}

// WaitLine waits for a stdout line starting with prefix.
func (c *Child) WaitLine(prefix string, timeout time.Duration) (string, error) {
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
					return "", fmt.Errorf("%s (pid %d) exited (%v) before printing %q", c.Name, c.Pid, c.err, prefix)
				}
			}
		case <-t.C:
			return "", fmt.Errorf("%s (pid %d) printed no %q within %v", c.Name, c.Pid, prefix, timeout)
		}
	}
}

// Stdout is what the child printed on stdout so far.
func (c *Child) Stdout() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stdout.String()
}

// Done is closed when the child was reaped.
func (c *Child) Done() <-chan struct{} { return c.done }

// Exited reports whether the child was reaped.
func (c *Child) Exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// Signal sends sig unless the child was reaped.
func (c *Child) Signal(sig syscall.Signal) {
	if !c.Exited() {
		_ = c.cmd.Process.Signal(sig)
	}
}

// Wait waits up to timeout for the child to be reaped.
func (c *Child) Wait(timeout time.Duration) bool {
	select {
	case <-c.done:
		return true
	case <-time.After(timeout):
		return false
	}
}

// ExitCode is the child's exit status (-1 while running or when killed by
// a signal).
func (c *Child) ExitCode() int {
	if !c.Exited() {
		return -1
	}
	return c.cmd.ProcessState.ExitCode()
}

// Stop sends SIGTERM, waits up to timeout, then SIGKILL. It reports
// whether the child stopped on SIGTERM.
func (c *Child) Stop(timeout time.Duration) bool {
	c.Signal(syscall.SIGTERM)
	if c.Wait(timeout) {
		return true
	}
	c.Signal(syscall.SIGKILL)
	c.Wait(10 * time.Second)
	return false
}

// Stacks returns the state and kernel stack of each thread of pid (for a
// process that does not go away).
func Stacks(pid int) string {
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

// Cleanup stops every child (SIGTERM, then SIGKILL; processes named
// "wbcache" first), removes every mount in reverse order and detaches
// every loop device. Later Starts fail with ErrClosing.
func (p *Procs) Cleanup(logf func(string, ...any)) {
	p.mu.Lock()
	p.closing = true
	var kids []*Child
	for _, c := range p.children {
		kids = append(kids, c)
	}
	points := append([]string(nil), p.mounts...)
	loops := append([]string(nil), p.loops...)
	p.mu.Unlock()
	for _, first := range []bool{true, false} {
		for _, c := range kids {
			if (c.Name == "wbcache") == first && !c.Stop(20*time.Second) {
				logf("%s (pid %d) did not stop on SIGTERM; killed", c.Name, c.Pid)
			}
		}
	}
	for i := len(points) - 1; i >= 0; i-- {
		if err := p.unmountAny(points[i]); err != nil {
			logf("cleanup: %v", err)
		}
	}
	for _, l := range loops {
		if err := p.DetachLoop(l); err != nil {
			logf("cleanup: %v", err)
		}
	}
	p.mu.Lock()
	ctl := p.fusectl
	p.fusectl = false
	p.mu.Unlock()
	if ctl {
		_ = unmount(fusectlDir, 0)
	}
}
