package crashtest

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// iteration is one pass of the kill -9 loop.
func (k *kill9) iteration(bin, v string) {
	k.st.variants[v]++
	k.dir = k.e.path(fmt.Sprintf("iter-%d", k.it))
	k.mkdir(k.dir)
	if !k.ensureDaemon(bin, v) {
		return
	}
	trigger := k.e.rng.IntN(2) == 0
	jobs := k.genJobs(k.dir, trigger)
	kdesc, written := k.writePhase(bin, v, jobs, trigger)
	if v == "recovery" {
		for n := range k.e.between(1, 3) {
			k.startupKill(bin, v, n+1)
		}
	}
	if !k.restart(bin, v) {
		return
	}
	rs := "?"
	if st, err := k.d.Status(); err != nil {
		k.fail("%v", err)
	} else if r, ok := st["recovery_seconds"].(float64); ok {
		k.st.recovery = append(k.st.recovery, r)
		rs = fmt.Sprintf("%.4f", r)
	}
	verified := k.verify("disk")
	post := k.post(bin, v)
	if k.needSave {
		k.saveImages(bin)
		k.format(bin, v)
	}
	k.t.Logf("iter %d/%d %s: %s, %s, wrote %s, ready %.3fs, recovery %ss, verified %s, then %s; failures so far %d",
		k.it, k.n, v, jobs.desc, kdesc, human(written), k.lastReady.Seconds(), rs, human(verified), post, len(k.st.fails))
	if !k.t.Failed() && k.d == nil && !*flagKeep { // a chained daemon still logs here
		os.RemoveAll(k.dir)
	}
}

// ensureDaemon makes sure a daemon with the variant's settings runs.
func (k *kill9) ensureDaemon(bin, v string) bool {
	if k.d != nil && k.dKey != k.keyOf(v) {
		k.cleanStop(bin)
	}
	if k.formatKey != strings.Join(variantFormat(v), " ") {
		if k.d != nil {
			k.cleanStop(bin)
		}
		k.format(bin, v)
	}
	if k.d != nil {
		k.st.chained++
		return true
	}
	if !k.start(bin, "start", v) {
		k.fail("wbcache mount failed on a cleanly stopped cache")
		k.recoverFromBroken(bin, v)
		return false
	}
	return true
}

// writePhase runs fio and kills the daemon with kill -9, through fio's
// trigger (libaio: fio saves its verify state, stops its jobs, runs the
// kill) or from outside after 0.5-3.5 s (psync at QD 1, writes in
// flight). It returns how the kill came and the bytes fio wrote.
func (k *kill9) writePhase(bin, v string, jobs fioJobs, trigger bool) (string, int64) {
	var stopSwitch atomic.Bool
	switches := make(chan switchStats, 1)
	if v == "drain-around" {
		if code := fio(k.dir, "dirty", 5*time.Minute); code != 0 {
			b, _ := os.ReadFile(filepath.Join(k.dir, "dirty.err"))
			k.fail("fio dirty phase failed (exit %d): %s", code, oneLine(string(b), 400))
		}
	}
	switching := v == "mode-switch" || v == "drain-around"
	if switching {
		go k.modeSwitcher(bin, v, rand.New(rand.NewPCG(k.e.rng.Uint64(), 1)), &stopSwitch, switches)
	}
	killed := filepath.Join(k.dir, "killed")
	var kdesc string
	var code int
	var early bool
	if trigger {
		k.st.methods["trigger"]++
		tt := 1
		if !k.quick {
			tt = k.e.between(1, 3)
		}
		delay := fmt.Sprintf("0.%03d", k.e.rng.IntN(500))
		kdesc = fmt.Sprintf("trigger %ds+%ss", tt, delay)
		code = fio(k.dir, "write", 5*time.Minute, fmt.Sprintf("--trigger-timeout=%d", tt),
			fmt.Sprintf("--trigger=sleep %s; touch %s; kill -9 %d", delay, killed, k.d.Pid))
	} else {
		k.st.methods["psync"]++
		ms := k.e.between(500, 3500)
		if k.quick {
			ms = k.e.between(500, 1500)
		}
		kdesc = fmt.Sprintf("psync kill at %dms", ms)
		d := k.d
		timer := time.AfterFunc(time.Duration(ms)*time.Millisecond, func() { d.Signal(syscall.SIGKILL) })
		code = fio(k.dir, "write", 5*time.Minute)
		early = timer.Stop() // fio ended before the kill
		if !early {
			_ = os.WriteFile(killed, nil, 0o644)
		}
	}
	if switching {
		stopSwitch.Store(true)
		ss := <-switches
		k.st.modeSwitches += ss.n
		k.st.overDirty += ss.overDirty
		k.st.claimed += ss.claimed
	}
	if _, err := os.Stat(killed); err != nil || early {
		k.st.fioDoneFirst++ // fio ended before the kill: it wrote everything, or it failed
		if code != 0 {
			b, _ := os.ReadFile(filepath.Join(k.dir, "write.err"))
			k.fail("fio write phase failed (exit %d) before the kill: %s", code, oneLine(string(b), 400))
		}
	}
	// After the kill fio reports errors for its writes in flight.
	if err := k.d.Kill9(); err != nil {
		k.fail("after kill -9 during the writes: %v", err)
	}
	if Panicked(k.d.Log) {
		k.fail("the daemon panicked before the kill (%s)", k.d.Log)
	}
	k.d = nil
	if err := os.CopyFS(filepath.Join(k.dir, "aux.orig"), os.DirFS(filepath.Join(k.dir, "aux"))); err != nil {
		k.t.Fatal(err)
	}
	_, written := fioBytes(filepath.Join(k.dir, "write.json"))
	k.st.written += written
	return kdesc, written
}

// restart mounts after the crash: the daemon must remove the dead mount
// itself.
func (k *kill9) restart(bin, v string) bool {
	ok := k.start(bin, "restart", v)
	if !ok && IsMounted(k.mnt) {
		k.fail("wbcache mount failed after kill -9 with the dead mount still present (the daemon must clean it up itself)")
		_ = k.e.procs.UnmountFUSE(k.mnt)
		ok = k.start(bin, "restart2", v)
	}
	if !ok {
		k.fail("wbcache mount failed after kill -9 (recovery)")
		k.recoverFromBroken(bin, v)
		return false
	}
	k.lastReady = k.d.Ready
	k.st.ready = append(k.st.ready, k.d.Ready.Seconds())
	return true
}

// verify runs fio's verify-only pass on the disk or on the backing file
// alone and returns the bytes it verified.
func (k *kill9) verify(target string) int64 {
	if err := freshState(k.dir); err != nil {
		k.t.Fatal(err)
	}
	name := "verify-" + target
	if code := fio(k.dir, name, 15*time.Minute); code != 0 {
		n, why := excusedBlocks(k.dir, target)
		if n == 0 {
			b, _ := os.ReadFile(filepath.Join(k.dir, name+".err"))
			k.fail("fio verify on the %s failed (exit %d; %s): %s", target, code, why, oneLine(grepLines(string(b), "verify", "bad", "error", "fio:"), 600))
			return 0
		}
		k.st.exemptBlocks += n
		k.st.exemptRuns++
		k.t.Logf("iteration %d: verify on the %s flagged %d blocks, none of them a write fio saw succeed (in flight at the kill, never acknowledged): not a failure (fio verify-state limitation)", k.it, target, n)
		name += "-all"
	}
	read, _ := fioBytes(filepath.Join(k.dir, name+".json"))
	if target == "disk" {
		k.st.verified += read
		k.st.verifyRuns++
	} else {
		k.st.backingVerified += read
		k.st.backingRuns++
	}
	return read
}

// grepLines keeps the lines of s that contain any of words (case-blind).
func grepLines(s string, words ...string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		for _, w := range words {
			if strings.Contains(strings.ToLower(l), w) {
				out = append(out, l)
				break
			}
		}
	}
	return strings.Join(out, "\n")
}
