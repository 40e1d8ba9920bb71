package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// demoDaemon is the 'wbcache mount' process the demo kills.
type demoDaemon struct {
	cmd  *exec.Cmd
	mnt  string
	done chan struct{} // closed when the process has exited
}

// startDemoDaemon runs this binary's 'mount' in a child process and waits
// for its ready line.
func startDemoDaemon(cache, backing, mnt, logLevel string) (*demoDaemon, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("demo: finding this program to run its daemon: %w", err)
	}
	cmd := exec.Command(self, "mount", "--cache", cache, "--backing", backing, "--log-level", logLevel, mnt)
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("demo: starting the daemon: %w", err)
	}
	c := &demoDaemon{cmd: cmd, mnt: mnt, done: make(chan struct{})}
	ready := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		ok := false
		for sc.Scan() {
			if !ok && strings.HasPrefix(sc.Text(), "wbcache: serving ") {
				ok = true
				ready <- true
			}
		}
		if !ok {
			ready <- false
		}
		_ = cmd.Wait()
		close(c.done)
	}()
	select {
	case ok := <-ready:
		if ok {
			return c, nil
		}
		<-c.done
		return nil, fmt.Errorf("demo: the daemon exited before serving (%v)", cmd.ProcessState)
	case <-time.After(30 * time.Second):
		c.stop()
		return nil, fmt.Errorf("demo: the daemon did not serve within 30s")
	}
}

// kill kills the daemon with SIGKILL and waits for it to be gone.
func (c *demoDaemon) kill() error {
	if err := c.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		return fmt.Errorf("demo: kill -9 of the daemon: %w", err)
	}
	<-c.done
	return nil
}

// stop ends a daemon still running (on error paths) with SIGTERM.
func (c *demoDaemon) stop() {
	select {
	case <-c.done:
		return
	default:
	}
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(30 * time.Second):
		_ = c.cmd.Process.Kill()
		<-c.done
	}
}

// dirty reads the daemon's dirty bytes from MOUNTPOINT/stats.
func (c *demoDaemon) dirty() (int64, bool) {
	b, err := os.ReadFile(filepath.Join(c.mnt, "stats"))
	if err != nil {
		return 0, false
	}
	var st Status
	if json.Unmarshal(b, &st) != nil {
		return 0, false
	}
	return st.DirtyBytes, true
}
