package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/wbcache/wbcache/blockcache"
	"github.com/wbcache/wbcache/crashtest"
	"github.com/wbcache/wbcache/device"
)

// wbcacheBin is the command under test, built once by TestMain.
var wbcacheBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "wbcache-cmdtest-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	wbcacheBin = filepath.Join(dir, "wbcache")
	if out, err := exec.Command("go", "build", "-o", wbcacheBin, ".").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building wbcache: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// skipLoudly skips with a message that also reaches stderr without -v.
func skipLoudly(t *testing.T, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	fmt.Fprintf(os.Stderr, "!!! SKIPPING %s: %s\n", t.Name(), msg)
	t.Skip("SKIPPED: " + msg)
}

// needFUSE skips unless the test can mount FUSE filesystems as root.
func needFUSE(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		skipLoudly(t, "needs root to mount FUSE (run 'sudo go test ./cmd/...')")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		skipLoudly(t, "needs /dev/fuse (%v)", err)
	}
}

// result is a finished run of the command.
type result struct {
	stdout, stderr string
	code           int
}

func (r result) String() string {
	return fmt.Sprintf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
}

// wbc runs the command to completion (at most 2 minutes).
func wbc(t *testing.T, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, wbcacheBin, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := result{stdout: out.String(), stderr: errb.String()}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	default:
		t.Fatalf("running wbcache %v: %v", args, err)
	}
	return r
}

// wantCode runs the command and checks its exit code.
func wantCode(t *testing.T, code int, args ...string) result {
	t.Helper()
	r := wbc(t, args...)
	require.Equal(t, code, r.code, "wbcache %s\n%s", strings.Join(args, " "), r)
	return r
}

// rig is a backing file, a cache file and a mount point in a temp dir.
type rig struct {
	dir, backing, cache, mnt string
	size                     int64
	slots                    map[uint64]uint32 // dirtyRig: the slot of each dirty block
}

// newRig creates a sparse backing file of size bytes and formats a cache
// of cacheSize bytes for it.
func newRig(t *testing.T, size, cacheSize int64) *rig {
	t.Helper()
	dir := t.TempDir()
	r := &rig{dir: dir, backing: filepath.Join(dir, "backing.img"), cache: filepath.Join(dir, "cache.img"),
		mnt: filepath.Join(dir, "mnt"), size: size}
	require.NoError(t, device.Create(r.backing, size))
	require.NoError(t, os.Mkdir(r.mnt, 0o755))
	wantCode(t, 0, "format", "--cache", r.cache, "--cache-size", fmt.Sprint(cacheSize), "--backing", r.backing)
	return r
}

func (r *rig) disk() string { return filepath.Join(r.mnt, "disk") }

// daemonProc is a running `wbcache mount`, on the crash tests' daemon
// lifecycle (crashtest.Daemon).
type daemonProc struct {
	*crashtest.Daemon
	stderr daemonLog
	ready  string
}

// daemonLog is the daemon's log file: its stderr, and its stdout lines.
type daemonLog string

func (l daemonLog) String() string {
	b, _ := os.ReadFile(string(l))
	return string(b)
}

// startMount starts `wbcache mount` and returns once it printed its ready
// line, or with the exit result if it exited first. t.Cleanup stops it
// (SIGTERM, then SIGKILL) and removes any mount it left.
func (r *rig) startMount(t *testing.T, args ...string) (*daemonProc, *result) {
	t.Helper()
	procs := crashtest.NewProcs()
	logPath := filepath.Join(t.TempDir(), "daemon.log")
	t.Cleanup(func() {
		procs.Cleanup(t.Logf)
		if t.Failed() {
			t.Logf("daemon log:\n%s", daemonLog(logPath))
		}
	})
	cd, err := procs.StartDaemon(crashtest.DaemonConfig{Bin: wbcacheBin, Cache: r.cache, Backing: r.backing, Mnt: r.mnt,
		Log: logPath, Args: append([]string{"--log-level", "debug"}, args...)})
	require.NoError(t, err)
	d := &daemonProc{Daemon: cd, stderr: daemonLog(logPath)}
	line, err := cd.WaitLine("wbcache: serving ", 30*time.Second)
	if err == nil {
		d.ready = line
		return d, nil
	}
	if !cd.Wait(5 * time.Second) {
		t.Fatalf("wbcache mount not ready after 30s: %v; log:\n%s", err, d.stderr)
	}
	return nil, &result{stdout: cd.Stdout(), stderr: d.stderr.String(), code: cd.ExitCode()}
}

// mount is startMount that requires success.
func (r *rig) mount(t *testing.T, args ...string) *daemonProc {
	t.Helper()
	d, res := r.startMount(t, args...)
	if d == nil {
		t.Fatalf("wbcache mount failed: %s", res)
	}
	return d
}

// stop sends SIGTERM and waits for the exit code.
func (d *daemonProc) stop(t *testing.T) int {
	t.Helper()
	d.Signal(syscall.SIGTERM)
	if !d.Wait(30 * time.Second) {
		t.Fatalf("wbcache mount did not exit 30s after SIGTERM; log:\n%s", d.stderr)
	}
	return d.ExitCode()
}

// kill9 kills the daemon with SIGKILL and waits for it.
func (d *daemonProc) kill9(t *testing.T) {
	t.Helper()
	require.NoError(t, d.Kill9())
}

func (d *daemonProc) exited() bool { return d.Exited() }

// isMounted reports whether mnt is a mount point.
func isMounted(mnt string) bool { return crashtest.IsMounted(mnt) }

// status runs `wbcache status --json` and decodes it.
func (r *rig) status(t *testing.T) Status {
	t.Helper()
	res := wantCode(t, 0, "status", r.mnt, "--json")
	var s Status
	require.NoError(t, json.Unmarshal([]byte(res.stdout), &s), res.stdout)
	return s
}

// superblockClean reads the cache's clean flag.
func (r *rig) superblockClean(t *testing.T) bool {
	t.Helper()
	ssd, err := device.Open(r.cache, device.Options{ReadOnly: true})
	require.NoError(t, err)
	defer ssd.Close()
	sb, err := blockcache.ReadSuperblock(ssd)
	require.NoError(t, err)
	return sb.Clean()
}

// readAll reads the whole of a file.
func readAll(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	return b
}

// equalOrOffset fails with the first differing offset.
func requireSameBytes(t *testing.T, want, got []byte, what string) {
	t.Helper()
	require.Equal(t, len(want), len(got), "%s: length", what)
	if i := firstDiff(got, want); i >= 0 {
		t.Fatalf("%s: first difference at offset %d: got %#02x, want %#02x", what, i, got[i], want[i])
	}
}
