package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/wbcache/wbcache/blockcache"
	"github.com/wbcache/wbcache/device"
	"golang.org/x/sys/unix"
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

// daemonProc is a running `wbcache mount`.
type daemonProc struct {
	cmd    *exec.Cmd
	stderr *syncBuffer
	done   chan struct{}
	err    error // after done
	ready  string
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startMount starts `wbcache mount` and returns once it printed its ready
// line, or with the exit result if it exited first. t.Cleanup stops it
// (SIGTERM, then SIGKILL) and removes any mount it left.
func (r *rig) startMount(t *testing.T, args ...string) (*daemonProc, *result) {
	t.Helper()
	full := append([]string{"mount", "--cache", r.cache, "--backing", r.backing, "--log-level", "debug"}, args...)
	full = append(full, r.mnt)
	cmd := exec.Command(wbcacheBin, full...)
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	d := &daemonProc{cmd: cmd, stderr: &syncBuffer{}, done: make(chan struct{})}
	cmd.Stderr = d.stderr
	require.NoError(t, cmd.Start())
	lines := make(chan string, 16)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	go func() {
		d.err = cmd.Wait()
		close(d.done)
	}()
	t.Cleanup(func() { d.cleanup(t, r.mnt) })
	timeout := time.After(30 * time.Second)
	var out []string
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				<-d.done
				res := &result{stdout: strings.Join(out, "\n"), stderr: d.stderr.String(), code: exitCode(d.err)}
				return nil, res
			}
			out = append(out, l)
			if strings.HasPrefix(l, "wbcache: serving ") {
				d.ready = l
				go func() {
					for range lines {
					}
				}()
				return d, nil
			}
		case <-timeout:
			t.Fatalf("wbcache mount not ready after 30s; stdout %q, stderr:\n%s", out, d.stderr.String())
		}
	}
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

func exitCode(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	if err != nil {
		return -1
	}
	return 0
}

// stop sends SIGTERM and waits for the exit code.
func (d *daemonProc) stop(t *testing.T) int {
	t.Helper()
	require.NoError(t, d.cmd.Process.Signal(syscall.SIGTERM))
	select {
	case <-d.done:
	case <-time.After(30 * time.Second):
		t.Fatalf("wbcache mount did not exit 30s after SIGTERM; stderr:\n%s", d.stderr.String())
	}
	return exitCode(d.err)
}

// kill9 kills the daemon with SIGKILL and waits for it.
func (d *daemonProc) kill9(t *testing.T) {
	t.Helper()
	require.NoError(t, d.cmd.Process.Kill())
	<-d.done
}

func (d *daemonProc) exited() bool {
	select {
	case <-d.done:
		return true
	default:
		return false
	}
}

// cleanup stops the daemon if it still runs and removes a mount left at mnt.
func (d *daemonProc) cleanup(t *testing.T, mnt string) {
	if !d.exited() {
		_ = d.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-d.done:
		case <-time.After(15 * time.Second):
			t.Logf("daemon pid %d ignored SIGTERM; killing it", d.cmd.Process.Pid)
			_ = d.cmd.Process.Kill()
			<-d.done
		}
	}
	// A dead or lingering mount: detach it.
	for range 4 {
		if !isMounted(mnt) {
			break
		}
		_ = unix.Unmount(mnt, unix.MNT_DETACH)
	}
	if t.Failed() {
		t.Logf("daemon stderr:\n%s", d.stderr.String())
	}
}

// isMounted reports whether mnt is a mount point in /proc/self/mountinfo.
func isMounted(mnt string) bool {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && f[4] == mnt {
			return true
		}
	}
	return false
}

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
