package crashtest

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// ext4Rig is what the ext4 loops share: a cache in front of a backing
// file and its daemon, a loop device, the ext4 on it mounted at fs,
// `wbcheck write` and `verify` with a manifest on another file system,
// and the figures every loop reports. Each pass of a loop is a unit
// ("iteration", "round") numbered by it.
type ext4Rig struct {
	t                   *testing.T
	e                   *env
	bin, wbcheck        string
	n                   int
	quick               bool
	unit                string
	cache, backing, mnt string
	fs, manifest, logs  string
	mountArgs           []string // the daemon's options
	d                   *Daemon
	loop                string
	it                  int

	ops, files, bytes, fscks int64
	fails                    []string
}

// newExt4Rig skips without root, /dev/fuse or the tools, and makes the
// work directory, its paths and the binaries.
func newExt4Rig(t *testing.T, name, unit string, smoke int) *ext4Rig {
	needRig(t, "losetup", "mkfs.ext4", "fsck.ext4", "mount")
	x := &ext4Rig{t: t, e: newEnv(t, name), bin: binary(t, "wbcache"), wbcheck: binary(t, "wbcheck"), unit: unit}
	x.n, x.quick = loopSize(smoke)
	x.cache, x.backing, x.mnt = x.e.path("cache.img"), x.e.path("backing.img"), x.e.path("mnt")
	x.fs, x.manifest, x.logs = x.e.path("fs"), x.e.path("manifest"), x.e.path("logs")
	for _, d := range []string{x.mnt, x.fs, x.logs} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return x
}

// sizes are the ext4 (= backing) and cache sizes: the flags or the
// defaults.
func (x *ext4Rig) sizes() (size, cacheSize int64) {
	return sizeFlag(x.t, flagSize, "2G", "1G", x.quick), sizeFlag(x.t, flagCache, "256M", "64M", x.quick)
}

func (x *ext4Rig) fail(format string, a ...any) {
	msg := fmt.Sprintf(format, a...)
	x.fails = append(x.fails, fmt.Sprintf("%s %d: %s", x.unit, x.it, msg))
	x.t.Errorf("%s %d: %s (logs in %s)", x.unit, x.it, msg, x.logs)
	if *flagFailures != "" {
		dst := filepath.Join(*flagFailures, fmt.Sprintf("%s-%d", x.unit, x.it))
		_ = os.RemoveAll(dst)
		if err := os.CopyFS(dst, os.DirFS(x.logs)); err == nil {
			run("", time.Minute, "cp", x.manifest, filepath.Join(dst, "manifest"))
		}
	}
}

// failures is the number of failures so far.
func (x *ext4Rig) failures() int { return len(x.fails) }

// newBacking makes the backing file anew: size bytes of zeros (sparse).
func (x *ext4Rig) newBacking(size int64) {
	if err := os.WriteFile(x.backing, nil, 0o600); err != nil {
		x.t.Fatal(err)
	}
	if err := os.Truncate(x.backing, size); err != nil {
		x.t.Fatal(err)
	}
}

// format formats the cache (made anew, of cacheSize bytes) over the
// backing file.
func (x *ext4Rig) format(cacheSize int64, args ...string) {
	args = append([]string{x.bin, "format", "--cache", x.cache, "--backing", x.backing,
		"--cache-size", fmt.Sprint(cacheSize), "--force"}, args...)
	if code, out := run(filepath.Join(x.logs, "format.log"), 2*time.Minute, args...); code != 0 {
		x.t.Fatalf("wbcache format: exit %d: %s", code, out)
	}
}

// mkfs makes the ext4 on dev (a loop device or the backing file).
func (x *ext4Rig) mkfs(dev string) {
	if code, out := run(filepath.Join(x.logs, "mkfs.log"), 5*time.Minute, "mkfs.ext4", "-q", "-F",
		"-E", "lazy_itable_init=0,lazy_journal_init=0,nodiscard", dev); code != 0 {
		x.t.Fatalf("mkfs.ext4: exit %d: %s", code, out)
	}
}

// start mounts the cache with x.mountArgs.
func (x *ext4Rig) start(tag string) error {
	d, err := x.e.procs.MountDaemon(DaemonConfig{Bin: x.bin, Cache: x.cache, Backing: x.backing, Mnt: x.mnt,
		Log: filepath.Join(x.logs, "daemon-"+tag+".log"), Args: x.mountArgs}, 2*time.Minute)
	x.d = d
	return err
}

// loopUp attaches the loop device to file (the daemon's disk, or the
// backing file alone).
func (x *ext4Rig) loopUp(file string) bool {
	dev, err := x.e.procs.AttachLoop(file)
	if err != nil {
		x.fail("%v", err)
		return false
	}
	x.loop = dev
	return true
}

func (x *ext4Rig) loopDown() {
	if x.loop != "" {
		if err := x.e.procs.DetachLoop(x.loop); err != nil {
			x.t.Logf("%v", err)
		}
		x.loop = ""
	}
}

// mountFS mounts the ext4 (registered for cleanup).
func (x *ext4Rig) mountFS(opts string) bool {
	args := []string{"mount", "-t", "ext4"}
	if opts != "" {
		args = append(args, "-o", opts)
	}
	if code, out := run("", time.Minute, append(args, x.loop, x.fs)...); code != 0 {
		x.fail("mount of the ext4 failed: %s", oneLine(out, 300))
		return false
	}
	x.e.procs.TrackMount(x.fs)
	return true
}

func (x *ext4Rig) umountFS() bool {
	if err := unix.Unmount(x.fs, 0); err != nil {
		x.fail("umount of the ext4: %v", err)
		return false
	}
	return true
}

// writeAndKill runs `wbcheck write` and, after ms, calls beforeKill (if
// any) and kills the daemon with kill -9: the loop device then fails every
// I/O, ext4 aborts and the writer stops at its first I/O error. It
// returns the operations the writer committed.
func (x *ext4Rig) writeAndKill(budget int64, ms int, beforeKill func()) int64 {
	wlog := filepath.Join(x.logs, fmt.Sprintf("write-%d.out", x.it))
	w, err := x.e.procs.Start("wbcheck", wlog, x.wbcheck, "write", "--dir", filepath.Join(x.fs, "data"),
		"--manifest", x.manifest, "--seed", fmt.Sprint(x.e.seed*1000+uint64(x.it)), "--duration", "120s", "--budget", fmt.Sprint(budget))
	if err != nil {
		x.t.Fatal(err)
	}
	time.Sleep(time.Duration(ms) * time.Millisecond)
	if w.Exited() {
		x.fail("wbcheck write ended before the kill: %s", Tail(wlog, 3))
	}
	if beforeKill != nil {
		beforeKill()
	}
	if err := x.d.Kill9(); err != nil {
		x.fail("after kill -9: %v", err)
	}
	if !w.Wait(30 * time.Second) {
		x.t.Logf("wbcheck write still running 30s after the kill; killing it")
		w.Signal(syscall.SIGKILL)
		w.Wait(10 * time.Second)
	}
	if code := w.ExitCode(); code != 0 && code != 2 {
		x.fail("wbcheck write exited %d: %s", code, Tail(wlog, 3))
	}
	out, _ := os.ReadFile(wlog)
	var ops int64
	if m := opsRE.FindStringSubmatch(string(out)); m != nil {
		ops = atoi(m[1])
	}
	x.ops += ops
	return ops
}

// fsck mounts and unmounts the ext4 once (a crashed ext4 is consistent
// only after its journal is replayed, which the kernel does at mount and
// fsck -n does not), then runs `fsck.ext4 -n -f`, which must exit 0. A
// mount that fails is a failure and skips fsck (replayed false).
func (x *ext4Rig) fsck() (code int, replayed bool) {
	if !x.mountFS("") || !x.umountFS() {
		return -1, false
	}
	code, out := run(filepath.Join(x.logs, fmt.Sprintf("fsck-%d.log", x.it)), 10*time.Minute, "fsck.ext4", "-n", "-f", x.loop)
	x.fscks++
	if code != 0 {
		var bad []string
		for _, l := range strings.Split(out, "\n") {
			if l != "" && !strings.HasPrefix(l, "e2fsck") && !strings.HasPrefix(l, "Pass") {
				bad = append(bad, l)
			}
		}
		x.fail("fsck.ext4 -n -f exited %d: %s", code, strings.Join(bad[:min(5, len(bad))], " "))
	}
	return code, true
}

// verifyFiles mounts the ext4 with opts, runs `wbcheck verify` with args
// and unmounts it. It returns verify's summary line, its output and
// whether the ext4 could be mounted and unmounted.
func (x *ext4Rig) verifyFiles(opts string, args ...string) (string, string, bool) {
	if !x.mountFS(opts) {
		return "", "", false
	}
	args = append([]string{x.wbcheck, "verify", "--dir", filepath.Join(x.fs, "data"), "--manifest", x.manifest}, args...)
	code, out := run(filepath.Join(x.logs, fmt.Sprintf("verify-%d.out", x.it)), 10*time.Minute, args...)
	line := ""
	if m := verifyRE.FindStringSubmatch(out); m != nil {
		line = strings.TrimSpace(m[0])
		x.files += atoi(m[1])
		x.bytes += atoi(m[2])
	}
	if code != 0 {
		detail := grepLines(out, "problem ")
		if line == "" {
			detail = out
		}
		x.fail("wbcheck verify exited %d (%s): %s", code, line, oneLine(detail, 600))
	}
	return line, out, x.umountFS()
}

// summaryHead logs the title of the summary and the figures every loop
// has; the loop adds its own with summaryLine, then summaryFails.
func (x *ext4Rig) summaryHead(title, units string) {
	x.t.Logf("=== %s summary (seed %d) ===", title, x.e.seed)
	x.summaryLine(x.unit+"s:", "%s", units)
	x.summaryLine("file operations committed:", "%d (creates/replaces/appends/moves/deletes, each after fsync)", x.ops)
	x.summaryLine("files verified:", "%d in total over all verify runs (%d MiB)", x.files, x.bytes>>20)
	x.summaryLine("fsck.ext4 -n -f runs:", "%d", x.fscks)
}

func (x *ext4Rig) summaryLine(name, format string, a ...any) {
	x.t.Logf("  %-30s %s", name, fmt.Sprintf(format, a...))
}

func (x *ext4Rig) summaryFails() {
	x.summaryLine("failures:", "%d", len(x.fails))
	for _, f := range x.fails {
		x.t.Logf("  - %s", f)
	}
}

var (
	opsRE    = regexp.MustCompile(`(?m)(?:after |^wbcheck write: )(\d+) operations`)
	verifyRE = regexp.MustCompile(`(?m)^wbcheck verify: (\d+) .*\((\d+) bytes\)`)
)

func atoi(s string) int64 {
	n, _ := strconv.ParseInt(s, 10, 64)
	return n
}
