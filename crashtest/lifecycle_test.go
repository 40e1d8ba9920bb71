package crashtest

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestProcsLifecycle: a child's stdout lines reach WaitLine and its log,
// Cleanup stops what still runs, and nothing starts after it.
func TestProcsLifecycle(t *testing.T) {
	p := NewProcs()
	logPath := filepath.Join(t.TempDir(), "child.log")
	c, err := p.Start("sleeper", logPath, "sh", "-c", "echo starting; echo ready now; exec sleep 60")
	if err != nil {
		t.Fatal(err)
	}
	line, err := c.WaitLine("ready", 10*time.Second)
	if err != nil || line != "ready now" {
		t.Fatalf("WaitLine: %q, %v", line, err)
	}
	if c.Exited() {
		t.Fatal("the child exited early")
	}
	p.Cleanup(t.Logf)
	if !c.Exited() || c.ExitCode() != -1 {
		t.Fatalf("after Cleanup: exited %v, status %d; want stopped by a signal", c.Exited(), c.ExitCode())
	}
	if got := c.Stdout(); got != "starting\nready now\n" {
		t.Errorf("Stdout %q", got)
	}
	if b, _ := os.ReadFile(logPath); !strings.Contains(string(b), "ready now") {
		t.Errorf("log %q lacks the stdout line", b)
	}
	if _, err := p.Start("late", logPath, "true"); !errors.Is(err, ErrClosing) {
		t.Errorf("Start after Cleanup: %v, want ErrClosing", err)
	}
}

// TestWaitLineExit: a child that exits without the line is reported as
// such, with its status.
func TestWaitLineExit(t *testing.T) {
	p := NewProcs()
	defer p.Cleanup(t.Logf)
	c, err := p.Start("quitter", filepath.Join(t.TempDir(), "log"), "sh", "-c", "echo nope; exit 3")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.WaitLine("ready", 10*time.Second); err == nil || !strings.Contains(err.Error(), "exited") {
		t.Fatalf("WaitLine: %v, want an exit before the line", err)
	}
	if !c.Wait(5*time.Second) || c.ExitCode() != 3 {
		t.Errorf("status %d, want 3", c.ExitCode())
	}
	c.Signal(syscall.SIGTERM) // after the exit: no effect, no panic
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"4096": 4096, "64K": 64 << 10, "512M": 512 << 20, "2G": 2 << 30, "1t": 1 << 40, "8MiB": 8 << 20} {
		if got, err := ParseSize(in); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "0", "-1M", "2X", "M"} {
		if _, err := ParseSize(in); !errors.Is(err, ErrBadSize) {
			t.Errorf("ParseSize(%q): %v, want ErrBadSize", in, err)
		}
	}
}

// TestFioOutputParsing: the byte counts of fio's JSON, the blocks its
// verify errors name and the writes its completion logs acknowledge.
func TestFioOutputParsing(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "out.json")
	json := `fio: note before the JSON
{"jobs": [{"jobname": "j0", "read": {"io_bytes": 4096, "iops": 1.5}, "write": {"io_bytes": 8192}},
          {"jobname": "j1", "read": {"io_bytes": 1}, "write": {"io_bytes": 2}}]}`
	if err := os.WriteFile(path, []byte(json), 0o644); err != nil {
		t.Fatal(err)
	}
	if r, w := fioBytes(path); r != 4097 || w != 8194 {
		t.Errorf("fioBytes = %d, %d; want 4097, 8194", r, w)
	}
	errs := "verify: bad magic header 0, wanted acca at file x offset 1048576, length 65536 (requested block: offset=1048576, length=65536)\n"
	if b := matches(badBlockRE, errs); len(b) != 1 || !b["1048576 65536"] {
		t.Errorf("bad blocks %v", b)
	}
	if a, _ := ackedWrites(dir); a != nil {
		t.Errorf("ackedWrites without logs = %v, want nil", a)
	}
	logs := map[string]string{
		"acked_clat.1.log": "2, 1699560, 1, 4096, 249856, 0\n5, 2246679, 1, 65536, 3104768, 0\n6, 100, 0, 4096, 0, 0\n",
		"acked_clat.2.log": "9, 2249724, 1, 1048576, 1048576, 0\n",
	}
	for name, s := range logs {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	a, n := ackedWrites(dir)
	if len(a) != 3 || !a["249856 4096"] || !a["3104768 65536"] || !a["1048576 1048576"] || n != 4096+65536+1048576 {
		t.Errorf("ackedWrites = %v, %d bytes; want the three writes (not the read), 1118208 bytes", a, n)
	}
	if err := os.WriteFile(filepath.Join(dir, "acked_clat.3.log"), []byte("garbage\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if a, _ := ackedWrites(dir); a != nil {
		t.Errorf("ackedWrites with a bad line = %v, want nil", a)
	}
}

func TestPercentiles(t *testing.T) {
	if got := percentiles([]float64{3, 1, 2, 4}); got != "p50 2s  p99 4s  max 4s  (n=4)" {
		t.Errorf("percentiles = %q", got)
	}
	if got := percentiles(nil); got != "n/a" {
		t.Errorf("percentiles(nil) = %q", got)
	}
}
