package crashtest

import (
	"fmt"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// iteration is one pass of the ext4 loop; false stops the loop (the
// stack could not be rebuilt).
func (x *ext4Loop) iteration(budget int64) bool {
	opts := ""
	if x.e.rng.IntN(3) == 0 {
		opts = "discard" // freed blocks reach wbcache as PUNCH_HOLE
		x.discards++
	}
	if !x.mountFS(opts) {
		return false
	}
	ms := x.e.between(500, 5000)
	if x.quick {
		ms = x.e.between(500, 1500)
	}
	ops := x.writeAndKill(budget, ms, nil)
	_ = unix.Unmount(x.fs, unix.MNT_DETACH) // the dead stack goes
	x.loopDown()
	if !x.restart() || !x.loopUp(x.d.Disk()) {
		return false
	}
	frc, ok := x.fsck()
	if !ok {
		return false
	}
	line, _, ok := x.verifyFiles("", "--resolve")
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
		x.it, x.n, map[bool]string{true: "discard", false: "no discard"}[opts != ""], ms, ops, x.d.Ready.Seconds(), frc, line, post, x.failures())
	return true
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
	x.ready = append(x.ready, x.d.Ready.Seconds())
	if st, err := x.d.Status(); err == nil {
		if r, ok := st["recovery_seconds"].(float64); ok {
			x.recovery = append(x.recovery, r)
		}
	}
	return true
}

// cleanStopCheck stops the daemon with SIGTERM, runs `wbcache check` and,
// unless this is the last iteration, mounts again.
func (x *ext4Loop) cleanStopCheck() bool {
	x.loopDown()
	if err := x.d.Stop(2 * time.Minute); err != nil {
		x.fail("clean stop: %v", err)
	}
	code, out := run(filepath.Join(x.logs, "check.log"), 10*time.Minute, x.bin, "check", "--cache", x.cache, "--backing", x.backing)
	x.checks++
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
	return x.loopUp(x.d.Disk())
}

// summary logs the figures of the run.
func (x *ext4Loop) summary() {
	x.summaryHead("ext4 loop", fmt.Sprintf("%d of %d", min(x.it, x.n), x.n))
	x.summaryLine("iterations mounted -o discard:", "%d", x.discards)
	x.summaryLine("clean stops + wbcache check:", "%d", x.checks)
	x.summaryLine("time to ready after crash:", "%s", percentiles(x.ready))
	x.summaryLine("recovery_seconds (status):", "%s", percentiles(x.recovery))
	x.summaryFails()
}
