package crashtest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Errors of the daemon lifecycle; each is wrapped with what happened.
var (
	ErrNotReady   = errors.New("wbcache mount did not become ready")
	ErrStuck      = errors.New("wbcache did not go away after SIGKILL")
	ErrNoStop     = errors.New("wbcache did not stop after SIGTERM")
	ErrExitStatus = errors.New("wbcache exited with a non-zero status")
	ErrMountLeft  = errors.New("wbcache exited but left its mount")
)

// readyPrefix starts the line `wbcache mount` prints on stdout once it
// serves the disk.
const readyPrefix = "wbcache: serving "

// DaemonConfig says how to run `wbcache mount`.
type DaemonConfig struct {
	Bin     string   // the wbcache binary
	Cache   string   // --cache
	Backing string   // --backing
	Mnt     string   // the mount point
	Log     string   // stdout and stderr are appended here
	Args    []string // more mount options
}

// Daemon is a running `wbcache mount`.
type Daemon struct {
	*Child
	cfg     DaemonConfig
	procs   *Procs
	started time.Time
	Ready   time.Duration // from the start to the ready line, after WaitReady
}

// StartDaemon starts `wbcache mount` without waiting for it; the process
// and the mount point are registered for Cleanup.
func (p *Procs) StartDaemon(cfg DaemonConfig) (*Daemon, error) {
	if err := os.MkdirAll(cfg.Mnt, 0o755); err != nil && !IsMounted(cfg.Mnt) {
		return nil, err
	}
	args := append([]string{cfg.Bin, "mount", "--cache", cfg.Cache, "--backing", cfg.Backing}, cfg.Args...)
	t0 := time.Now()
	c, err := p.Start("wbcache", cfg.Log, append(args, cfg.Mnt)...)
	if err != nil {
		return nil, err
	}
	p.TrackMount(cfg.Mnt)
	return &Daemon{Child: c, cfg: cfg, procs: p, started: t0}, nil
}

// MountDaemon starts `wbcache mount` and waits for it to serve the disk.
// A daemon that does not get there is stopped.
func (p *Procs) MountDaemon(cfg DaemonConfig, timeout time.Duration) (*Daemon, error) {
	d, err := p.StartDaemon(cfg)
	if err != nil {
		return nil, err
	}
	if err := d.WaitReady(timeout); err != nil {
		d.Stop(30 * time.Second)
		return nil, err
	}
	return d, nil
}

// WaitReady waits for the ready line and the disk file behind it.
func (d *Daemon) WaitReady(timeout time.Duration) error {
	if _, err := d.WaitLine(readyPrefix, timeout); err != nil {
		return fmt.Errorf("%w: %v; log %s:\n%s", ErrNotReady, err, d.Log, Tail(d.Log, 20))
	}
	d.Ready = time.Since(d.started)
	if _, err := os.Stat(d.Disk()); err != nil {
		return fmt.Errorf("%w: ready line printed but %v", ErrNotReady, err)
	}
	return nil
}

// Disk is the daemon's virtual disk file.
func (d *Daemon) Disk() string { return filepath.Join(d.cfg.Mnt, "disk") }

// Kill9 kills the daemon with SIGKILL and reaps it. The dead mount stays
// for the next `wbcache mount` to remove, as the daemon promises. A daemon
// that does not go away within 15 s (a thread in uninterruptible sleep
// waiting for an answer from its own FUSE mount) is released by aborting
// its FUSE connection; the error wraps ErrStuck and holds its threads'
// kernel stacks.
func (d *Daemon) Kill9() error {
	d.Signal(syscall.SIGKILL)
	if d.Wait(15 * time.Second) {
		return nil
	}
	stk := Stacks(d.Pid)
	aerr := d.procs.FUSEAbort(d.cfg.Mnt)
	d.Wait(30 * time.Second)
	return fmt.Errorf("%w: pid %d, released by aborting the FUSE connection of %s (%v); its threads:\n%s",
		ErrStuck, d.Pid, d.cfg.Mnt, aerr, stk)
}

// Stop stops the daemon cleanly: SIGTERM, exit status 0 within timeout,
// and its mount gone. A daemon still running at the timeout is killed; a
// mount left behind is removed; both are errors.
func (d *Daemon) Stop(timeout time.Duration) error {
	d.Signal(syscall.SIGTERM)
	if !d.Wait(timeout) {
		stk := Stacks(d.Pid)
		_ = d.Kill9()
		_ = d.procs.UnmountFUSE(d.cfg.Mnt)
		return fmt.Errorf("%w within %v (pid %d); its threads:\n%s", ErrNoStop, timeout, d.Pid, stk)
	}
	var err error
	if code := d.ExitCode(); code != 0 {
		err = fmt.Errorf("%w: status %d; log %s:\n%s", ErrExitStatus, code, d.Log, Tail(d.Log, 10))
	}
	if IsMounted(d.cfg.Mnt) {
		_ = d.procs.UnmountFUSE(d.cfg.Mnt)
		if err == nil {
			err = fmt.Errorf("%w: %s", ErrMountLeft, d.cfg.Mnt)
		}
	}
	return err
}

// Status is `wbcache status MNT --json`, decoded.
func (d *Daemon) Status() (map[string]any, error) {
	var m map[string]any
	if err := d.StatusInto(&m); err != nil {
		return nil, err
	}
	return m, nil
}

// StatusInto decodes `wbcache status MNT --json` into v (a struct keeps
// the integers exact, which a map's float64 does not past 2^53).
func (d *Daemon) StatusInto(v any) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, d.cfg.Bin, "status", d.cfg.Mnt, "--json").Output()
	if err != nil {
		return fmt.Errorf("wbcache status %s --json: %w", d.cfg.Mnt, err)
	}
	if err := json.Unmarshal(out, v); err != nil {
		return fmt.Errorf("wbcache status %s --json: %w", d.cfg.Mnt, err)
	}
	return nil
}

// WritebackOrder is the writeback_order object of `wbcache status --json`
// (ordered write-back: the backing device alone always holds a state a
// power cut could have left).
type WritebackOrder struct {
	Order     string `json:"order"`     // "ordered" or "unordered"
	InForce   bool   `json:"in_force"`  // the order holds now
	Suspended string `json:"suspended"` // why it does not, if so
	// Every client fsync that began before ConsistentUnixNano is on the
	// backing device with everything written before it; 0: unknown.
	ConsistentEpoch    uint64 `json:"consistent_epoch"`
	ConsistentUnixNano int64  `json:"consistent_unix_nano"`
	BehindEpochs       uint64 `json:"behind_epochs"`
	OlderVersions      int    `json:"older_versions"`
}

// Panicked reports whether a daemon log holds a Go panic or a data race.
func Panicked(logPath string) bool {
	data, _ := os.ReadFile(logPath)
	s := string(data)
	return strings.Contains(s, "panic:") || strings.Contains(s, "fatal error:") || strings.Contains(s, "DATA RACE")
}

// Tail is the last n lines of a file, indented.
func Tail(path string, n int) string {
	data, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return "  " + strings.Join(lines, "\n  ")
}
