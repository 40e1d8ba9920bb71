package crashtest

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
)

// TestPowerCutLoop pulls power cuts under the real daemon (docs/design.md
// §2.2, §2.3) with `wbcache-powercut run`: the daemon on a FUSE
// filesystem that holds every unsynced write in memory per 512-byte
// sector, 8 writers with exact bookkeeping, kill -9 and the power cut in
// one of three orders, then every block checked; after the last round a
// clean stop and `wbcache check`. Smoke run: 1 round at quick sizes.
// -crash.powercut-args passes more options (see `wbcache-powercut run
// --help`).
func TestPowerCutLoop(t *testing.T) {
	needRig(t)
	n, quick := loopSize(1)
	e := newEnv(t, "powercut")
	args := []string{binary(t, "wbcache-powercut"), "run", "-n", fmt.Sprint(n), "--seed", fmt.Sprint(e.seed),
		"--wbcache", binary(t, "wbcache"), "--workdir", e.work}
	size, cacheSize := "512M", "128M"
	if quick {
		size, cacheSize = "256M", "32M"
		args = append(args, "--min-run", "500ms", "--max-run", "1500ms")
	}
	args = append(args, "--backing-size", strOr(*flagSize, size), "--cache-size", strOr(*flagCache, cacheSize))
	if *flagKeep {
		args = append(args, "--keep")
	}
	if *flagStop {
		args = append(args, "--stop-on-failure")
	}
	if m := os.Getenv("WBC_FUSE_URING"); m != "" {
		args = append(args, "--fuse-uring", m)
	}
	if *flagOrder != "" {
		args = append(args, "--mount-args=--writeback-order="+*flagOrder)
	}
	args = append(args, strings.Fields(*flagPCArgs)...)
	t.Logf("power-cut loop: %s", strings.Join(args, " "))

	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// The runner undoes its own processes and mounts on SIGTERM.
	t.Cleanup(func() { _ = cmd.Process.Signal(syscall.SIGTERM) })
	summary := ""
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		if l := sc.Text(); l != "" {
			t.Log(l)
			if strings.HasPrefix(l, "powercut-real: ") {
				summary = l
			}
		}
	}
	if err := cmd.Wait(); err != nil {
		t.Errorf("wbcache-powercut run: %v", err)
	}
	want := fmt.Sprintf("powercut-real: %d rounds, ", n)
	if !strings.HasPrefix(summary, want) || !strings.Contains(summary, " 0 violations, 0 failures;") {
		t.Errorf("summary %q: want %q... with 0 violations and 0 failures", summary, want)
	}
}

func strOr(s, def string) string {
	if s != "" {
		return s
	}
	return def
}
