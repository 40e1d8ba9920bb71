package crashtest

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// skipLoudly skips with a message that also reaches stderr without -v.
func skipLoudly(t *testing.T, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	fmt.Fprintf(os.Stderr, "!!! SKIPPING %s: %s\n", t.Name(), msg)
	t.Skip("SKIPPED: " + msg)
}

// needRig skips unless the test runs as root with /dev/fuse and tools.
func needRig(t *testing.T, tools ...string) {
	t.Helper()
	if os.Geteuid() != 0 {
		skipLoudly(t, "the crash loops need root for FUSE mounts and loop devices (run 'sudo go test ./crashtest')")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		skipLoudly(t, "the crash loops need /dev/fuse (%v)", err)
	}
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			skipLoudly(t, "needs %s (apt-get install -y fio fuse3 e2fsprogs util-linux)", tool)
		}
	}
}

var (
	buildMu sync.Mutex
	built   = map[string]string{}
)

// binary is the named command: $WBCACHE / $WBCHECK when set (wbcache,
// wbcheck), else built once per test run.
func binary(t *testing.T, name string) string {
	t.Helper()
	if p := os.Getenv(strings.ToUpper(strings.ReplaceAll(name, "-", "_"))); p != "" {
		return p
	}
	buildMu.Lock()
	defer buildMu.Unlock()
	if p, ok := built[name]; ok {
		return p
	}
	bins, err := Build(binDir, name)
	if err != nil {
		t.Fatal(err)
	}
	built[name] = bins[name]
	return bins[name]
}

// env is a crash loop's work directory, seed and registry of processes,
// mounts and loop devices (undone at the end of the test).
type env struct {
	t     *testing.T
	work  string
	seed  uint64
	rng   *rand.Rand
	procs *Procs
}

// newEnv makes the work directory under $WBC_TMP (default /var/tmp: a
// real disk, not a tmpfs). It is removed at the end unless -crash.keep is
// given or the test failed.
func newEnv(t *testing.T, name string) *env {
	t.Helper()
	parent := os.Getenv("WBC_TMP")
	if parent == "" {
		parent = "/var/tmp"
	}
	if err := os.MkdirAll(parent, 0o755); err != nil {
		t.Fatal(err)
	}
	work, err := os.MkdirTemp(parent, "wbc-"+name+".")
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, work: work, seed: *flagSeed, procs: NewProcs()}
	if e.seed == 0 {
		e.seed = uint64(time.Now().UnixNano()) % 1_000_000
	}
	e.rng = rand.New(rand.NewPCG(e.seed, 0xc7a5))
	t.Cleanup(func() {
		if *flagKeep || t.Failed() {
			t.Logf("kept the work directory %s", work)
			return
		}
		os.RemoveAll(work)
	})
	t.Cleanup(func() { e.procs.Cleanup(t.Logf) }) // runs first
	return e
}

// path is a path in the work directory.
func (e *env) path(elem ...string) string { return filepath.Join(append([]string{e.work}, elem...)...) }

// between is a random integer in [lo, hi].
func (e *env) between(lo, hi int) int { return lo + e.rng.IntN(hi-lo+1) }

// pick is one of the words, at random.
func (e *env) pick(words ...string) string { return words[e.rng.IntN(len(words))] }

// run runs a command to completion within timeout, its combined output
// to logPath; it returns the exit status (-1 if it could not run or timed
// out) and the output.
func run(logPath string, timeout time.Duration, args ...string) (int, string) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, args[0], args[1:]...).CombinedOutput()
	if logPath != "" {
		_ = os.WriteFile(logPath, out, 0o644)
	}
	if err == nil {
		return 0, string(out)
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) && ctx.Err() == nil {
		return ee.ExitCode(), string(out)
	}
	return -1, fmt.Sprintf("%s: %v\n%s", args[0], err, out)
}

// oneLine shortens command output for a failure message.
func oneLine(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > n {
		s = s[:n] + "..."
	}
	return s
}

// mountOptions are the wbcache mount options every loop passes:
// WBC_FUSE_URING (auto, on or off), when set, as --fuse-uring.
func mountOptions(args ...string) []string {
	if m := os.Getenv("WBC_FUSE_URING"); m != "" {
		args = append(args, "--fuse-uring", m)
	}
	if *flagOrder != "" {
		args = append(args, "--writeback-order", *flagOrder)
	}
	return args
}
