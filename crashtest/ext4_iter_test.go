package crashtest

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// iteration is one pass of the ext4 loop; false stops the loop (the
// stack could not be rebuilt).
func (x *ext4Loop) iteration(budget int64) bool {
	opts := ""
	if x.e.rng.IntN(3) == 0 {
		opts = "discard" // freed blocks reach wbcache as PUNCH_HOLE
		x.st.discards++
	}
	if !x.mountFS(opts) {
		return false
	}
	if err := os.MkdirAll(filepath.Join(x.fs, "data"), 0o755); err != nil {
		x.t.Fatal(err)
	}
	ms := x.e.between(500, 5000)
	if x.quick {
		ms = x.e.between(500, 1500)
	}
	ops := x.writeAndKill(budget, ms)
	_ = unix.Unmount(x.fs, unix.MNT_DETACH) // the dead stack goes
	x.loopDown()
	if !x.restart() || !x.loopUp() {
		return false
	}
	frc, ok := x.fsck()
	if !ok {
		return false
	}
	line, ok := x.verifyFiles()
	if !ok {
		return false
	}
	post := "crash"
	if x.it%4 == 0 || x.it == x.n {
		post = "clean stop + check"
		if !x.cleanStopCheck() {
			return false
		}
	}
	x.t.Logf("iter %d/%d: %s, kill at %dms, %d ops, ready %.3fs, fsck rc %d, %s; %s; failures so far %d",
		x.it, x.n, map[bool]string{true: "discard", false: "no discard"}[opts != ""], ms, ops, x.d.Ready.Seconds(), frc, line, post, len(x.st.fails))
	return true
}

// writeAndKill runs `wbcheck write` and kills the daemon with kill -9
// after ms: the loop device then fails every I/O, ext4 aborts and the
// writer stops at its first I/O error. It returns the operations the
// writer committed.
func (x *ext4Loop) writeAndKill(budget int64, ms int) int64 {
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
	x.st.ops += ops
	return ops
}

// restart mounts after the crash: the daemon must remove the dead mount
// itself.
func (x *ext4Loop) restart() bool {
	err := x.start(fmt.Sprintf("restart-%d", x.it))
	if err != nil && IsMounted(x.mnt) {
		x.fail("wbcache mount failed after kill -9 with the dead mount still present (it must clean it up itself): %v", err)
		_ = x.e.procs.UnmountFUSE(x.mnt)
		err = x.start(fmt.Sprintf("restart2-%d", x.it))
	}
	if err != nil {
		x.fail("wbcache mount failed after kill -9: %v", err)
		return false
	}
	x.st.ready = append(x.st.ready, x.d.Ready.Seconds())
	if st, err := x.d.Status(); err == nil {
		if r, ok := st["recovery_seconds"].(float64); ok {
			x.st.recovery = append(x.st.recovery, r)
		}
	}
	return true
}

// fsck mounts and unmounts the ext4 once (a crashed ext4 is consistent
// only after its journal is replayed, which the kernel does at mount and
// fsck -n does not), then runs `fsck.ext4 -n -f`, which must exit 0.
func (x *ext4Loop) fsck() (int, bool) {
	if !x.mountFS("") || !x.umountFS() {
		return -1, false
	}
	code, out := run(filepath.Join(x.logs, "fsck.log"), 10*time.Minute, "fsck.ext4", "-n", "-f", x.loop)
	x.st.fscks++
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

// verifyFiles mounts the ext4 and runs `wbcheck verify --resolve`.
func (x *ext4Loop) verifyFiles() (string, bool) {
	if !x.mountFS("") {
		return "", false
	}
	code, out := run(filepath.Join(x.logs, fmt.Sprintf("verify-%d.out", x.it)), 10*time.Minute,
		x.wbcheck, "verify", "--dir", filepath.Join(x.fs, "data"), "--manifest", x.manifest, "--resolve")
	line := ""
	if m := verifyRE.FindStringSubmatch(out); m != nil {
		line = strings.TrimSpace(m[0])
		x.st.files += atoi(m[1])
		x.st.bytes += atoi(m[2])
	}
	if code != 0 {
		x.fail("wbcheck verify: %s", oneLine(grepLines(out, "problem"), 600))
	}
	return line, x.umountFS()
}

// cleanStopCheck stops the daemon with SIGTERM, runs `wbcache check` and,
// unless this is the last iteration, mounts again.
func (x *ext4Loop) cleanStopCheck() bool {
	x.loopDown()
	if err := x.d.Stop(2 * time.Minute); err != nil {
		x.fail("clean stop: %v", err)
	}
	code, out := run(filepath.Join(x.logs, "check.log"), 10*time.Minute, x.bin, "check", "--cache", x.cache, "--backing", x.backing)
	x.st.checks++
	if code != 0 {
		x.fail("wbcache check exited %d: %s", code, oneLine(out, 500))
	}
	if x.it == x.n {
		return true
	}
	if err := x.start(fmt.Sprintf("clean-restart-%d", x.it)); err != nil {
		x.fail("wbcache mount failed after a clean stop: %v", err)
		return false
	}
	return x.loopUp()
}

// summary logs the figures of the run.
func (x *ext4Loop) summary() {
	s := &x.st
	line := func(name, format string, a ...any) { x.t.Logf("  %-30s %s", name, fmt.Sprintf(format, a...)) }
	x.t.Logf("=== ext4 loop summary (seed %d) ===", x.e.seed)
	line("iterations:", "%d of %d", min(x.it, x.n), x.n)
	line("file operations committed:", "%d (creates/replaces/deletes, each after fsync)", s.ops)
	line("files verified:", "%d in total over all verify runs (%d MiB)", s.files, s.bytes>>20)
	line("fsck.ext4 -n -f runs:", "%d", s.fscks)
	line("iterations mounted -o discard:", "%d", s.discards)
	line("clean stops + wbcache check:", "%d", s.checks)
	line("failures:", "%d", len(s.fails))
	line("time to ready after crash:", "%s", percentiles(s.ready))
	line("recovery_seconds (status):", "%s", percentiles(s.recovery))
	for _, f := range s.fails {
		x.t.Logf("  - %s", f)
	}
}
