package crashtest

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

var kill9Variants = []string{"plain", "heavy-destage", "checkpoint", "recovery", "mode-switch", "drain-around"}

// defaultPolicy is passed by every variant that does not change it: mount
// options are saved in the cache's superblock and stick.
var defaultPolicy = []string{"--low-watermark", "10", "--high-watermark", "50", "--max-dirty-age", "30s", "--workers", "2", "--seq-cutoff", "4M"}

// variantFormat is the variant's format options: checkpoint formats the
// smallest journal (64K = 16 blocks), which the writes fill many times a
// second, so every kill lands in or near a checkpoint.
func variantFormat(v string) []string {
	if v == "checkpoint" {
		return []string{"--journal", "64K"}
	}
	return nil
}

// variantMount is the variant's mount options: heavy-destage writes back
// all the time; drain-around holds write-back back until the cache is
// full, so that the drain its mode switch starts has dirty blocks among
// the ones the writes go around.
func variantMount(v string) []string {
	switch v {
	case "heavy-destage":
		return mountOptions("--mode", "writeback", "--low-watermark", "0", "--high-watermark", "1", "--max-dirty-age", "0", "--workers", "4", "--seq-cutoff", "4M")
	case "drain-around":
		return mountOptions("--mode", "writeback", "--low-watermark", "99", "--high-watermark", "100", "--max-dirty-age", "1h", "--workers", "2", "--seq-cutoff", "4M")
	}
	return mountOptions(append([]string{"--mode", "writeback"}, defaultPolicy...)...)
}

// kill9 is the state of TestKill9Loop.
type kill9 struct {
	t                     *testing.T
	e                     *env
	quick                 bool
	n                     int
	size                  int64
	cacheSize             int64
	cache, backing, mnt   string
	failures              string
	d                     *Daemon // the running daemon, if any
	dKey, formatKey       string  // its options, the cache's format options
	it                    int
	dir                   string // this iteration's directory
	needSave, lastReadyOK bool
	lastReady             time.Duration
	st                    kill9Stats
}

// TestKill9Loop is the kill -9 loop (docs/design.md §2.1, §2.3, §2.4,
// §2.6): fio writes with verify state, kill -9 of the daemon, restart,
// fio verifies every acknowledged write, then a clean stop and `wbcache
// check`, or flush or detach and the backing file verified alone.
// Variants: -crash.variant. Smoke run: 1 iteration, of the variant the
// seed picks.
func TestKill9Loop(t *testing.T) {
	needRig(t, "fio", "losetup")
	v := *flagVariant
	if v != "all" && !contains(kill9Variants, v) {
		t.Fatalf("-crash.variant %q: want %s or all", v, strings.Join(kill9Variants, ", "))
	}
	k := &kill9{t: t, e: newEnv(t, "crash"), st: newKill9Stats()}
	k.n, k.quick = loopSize(1)
	rotation := 0 // where -crash.variant all starts
	if *flagN == 0 {
		rotation = int(k.e.seed % uint64(len(kill9Variants)))
	}
	k.size = sizeFlag(t, flagSize, "2G", "512M", k.quick)
	k.cacheSize = sizeFlag(t, flagCache, "256M", "64M", k.quick)
	k.cache, k.backing, k.mnt = k.e.path("cache.img"), k.e.path("backing.img"), k.e.path("mnt")
	k.failures = *flagFailures
	if k.failures == "" {
		k.failures = k.e.path("failures")
	}
	bin := binary(t, "wbcache")
	t.Logf("kill -9 loop: seed %d, %d iterations, variant %s, backing %d MiB, cache %d MiB, work dir %s",
		k.e.seed, k.n, v, k.size>>20, k.cacheSize>>20, k.e.work)
	k.truncateBacking()
	first := v
	if v == "all" {
		first = kill9Variants[rotation]
	}
	k.dir = k.e.path("setup")
	k.mkdir(k.dir)
	k.format(bin, first)
	defer k.summary(v)
	for k.it = 1; k.it <= k.n; k.it++ {
		variant := v
		if v == "all" {
			variant = kill9Variants[(rotation+k.it-1)%len(kill9Variants)]
		}
		k.iteration(bin, variant)
		if *flagStop && t.Failed() {
			k.saveImages(bin)
			return
		}
	}
	if k.d != nil {
		k.cleanStop(bin)
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func (k *kill9) mkdir(dir string) {
	if err := os.MkdirAll(filepath.Join(dir, "aux"), 0o755); err != nil {
		k.t.Fatal(err)
	}
}

func (k *kill9) truncateBacking() {
	if err := os.WriteFile(k.backing, nil, 0o600); err != nil {
		k.t.Fatal(err)
	}
	if err := os.Truncate(k.backing, k.size); err != nil {
		k.t.Fatal(err)
	}
}

func (k *kill9) disk() string { return filepath.Join(k.mnt, "disk") }

// fail records a failed check of this iteration and keeps its directory.
func (k *kill9) fail(format string, a ...any) {
	msg := fmt.Sprintf(format, a...)
	k.st.fails = append(k.st.fails, fmt.Sprintf("iteration %d: %s", k.it, msg))
	k.t.Errorf("iteration %d: %s", k.it, msg)
	dst := filepath.Join(k.failures, fmt.Sprintf("iter-%d", k.it))
	_ = os.RemoveAll(dst)
	if err := os.CopyFS(dst, os.DirFS(k.dir)); err == nil {
		k.t.Logf("saved to %s", dst)
	}
	if _, err := os.Stat(filepath.Join(k.failures, "cache.img")); err != nil {
		k.needSave = true
	}
}

// format formats the cache with the variant's format options.
func (k *kill9) format(bin, v string) {
	args := append([]string{bin, "format", "--cache", k.cache, "--backing", k.backing,
		"--cache-size", fmt.Sprint(k.cacheSize), "--force"}, variantFormat(v)...)
	if code, out := run(filepath.Join(k.dir, "format.log"), 2*time.Minute, args...); code != 0 {
		k.t.Fatalf("wbcache format: exit %d: %s", code, out)
	}
	k.formatKey = strings.Join(variantFormat(v), " ")
}

// start mounts with the variant's options and waits for the ready line.
func (k *kill9) start(bin, tag, v string) bool {
	d, err := k.e.procs.MountDaemon(DaemonConfig{Bin: bin, Cache: k.cache, Backing: k.backing, Mnt: k.mnt,
		Log: filepath.Join(k.dir, "daemon-"+tag+".log"), Args: variantMount(v)}, 2*time.Minute)
	if err != nil {
		k.t.Logf("%v", err)
		return false
	}
	k.d, k.dKey = d, k.keyOf(v)
	return true
}

func (k *kill9) keyOf(v string) string {
	return strings.Join(variantFormat(v), " ") + "|" + strings.Join(variantMount(v), " ")
}

// cleanStop stops the daemon with SIGTERM (exit 0, mount gone) and runs
// `wbcache check`.
func (k *kill9) cleanStop(bin string) {
	if err := k.d.Stop(2 * time.Minute); err != nil {
		k.fail("clean stop: %v", err)
	}
	k.d = nil
	k.check(bin)
}

// check runs `wbcache check --cache --backing`, which must exit 0.
func (k *kill9) check(bin string) {
	k.st.checks++
	code, out := run(filepath.Join(k.dir, "check.log"), 10*time.Minute, bin, "check", "--cache", k.cache, "--backing", k.backing)
	if code != 0 {
		k.fail("wbcache check exited %d: %s", code, oneLine(out, 600))
	}
}

// recoverFromBroken reformats after a failure that left the cache unusable.
func (k *kill9) recoverFromBroken(bin, v string) {
	if k.d != nil {
		_ = k.d.Kill9()
		k.d = nil
	}
	_ = k.e.procs.UnmountFUSE(k.mnt)
	if k.needSave {
		k.saveImages(bin)
	}
	k.format(bin, v)
	k.dKey = ""
}

// saveImages keeps the cache and backing images of the first failed
// iteration in the failures directory, mountable with `wbcache mount
// --cache F/cache.img --backing F/backing.img`: the backing file is
// moved, not copied (wbcache knows a backing file by its inode). The run
// goes on with a new backing file and a new cache.
func (k *kill9) saveImages(bin string) {
	k.needSave = false
	if k.d != nil {
		_ = k.d.Stop(2 * time.Minute)
		k.d = nil
	}
	_ = k.e.procs.UnmountFUSE(k.mnt)
	if err := os.MkdirAll(k.failures, 0o755); err != nil {
		k.t.Logf("saving images: %v", err)
		return
	}
	run("", 10*time.Minute, "cp", "--sparse=always", k.cache, filepath.Join(k.failures, "cache.img"))
	if err := os.Rename(k.backing, filepath.Join(k.failures, "backing.img")); err != nil {
		run("", 10*time.Minute, "mv", k.backing, filepath.Join(k.failures, "backing.img"))
	}
	k.t.Logf("images of iteration %d saved in %s (mount them with --cache %s/cache.img --backing %s/backing.img)", k.it, k.failures, k.failures, k.failures)
	k.truncateBacking()
	k.formatKey = "none"
}

// startupKill is a kill -9 during the restart of variant recovery: at
// once, right after the log says the cache is open (recovery done),
// right after the destager started (while FUSE is being mounted), or
// after a random fraction of the last time to ready.
func (k *kill9) startupKill(bin, v string, n int) {
	logPath := filepath.Join(k.dir, fmt.Sprintf("daemon-recov%d.log", n))
	d, err := k.e.procs.StartDaemon(DaemonConfig{Bin: bin, Cache: k.cache, Backing: k.backing, Mnt: k.mnt, Log: logPath, Args: variantMount(v)})
	if err != nil {
		k.t.Fatal(err)
	}
	at := k.e.pick("now", "opened", "destager", "random")
	k.st.rkPhase[at]++
	switch at {
	case "opened", "destager":
		pat := map[string]string{"opened": "cache opened", "destager": "destager started"}[at]
		for range 5000 {
			if b, _ := os.ReadFile(logPath); strings.Contains(string(b), pat) || d.Exited() {
				break
			}
			time.Sleep(time.Millisecond)
		}
	case "random":
		time.Sleep(time.Duration(k.e.rng.Float64() * float64(k.lastReady)))
	}
	d.Signal(syscall.SIGKILL)
	k.st.rkTotal++
	err = d.Kill9()
	log, _ := os.ReadFile(logPath)
	if !strings.Contains(string(log), readyPrefix) {
		k.st.rkBefore++
	}
	if !strings.Contains(string(log), "cache opened") {
		k.st.rkOpen++
	}
	if err != nil {
		k.st.rkStuck++
		k.fail("kill -9 during startup (kill point: %s): %v", at, err)
	}
}

// switchStats is what a mode switcher saw: the switches it made, and the
// most the daemon's status reported of runs written around dirty blocks
// (bypassed_over_dirty) and of blocks claimed from write-back by writes
// of the backing device (destage_blocks_claimed).
type switchStats struct{ n, overDirty, claimed int }

// modeSwitcher switches modes every 0.1-0.8 s until stop is set (variant
// mode-switch), or, for drain-around, once to writearound after 0.3-1.2 s,
// which drains the dirty blocks while the writes go around the cache
// over them. It reads the daemon's status as it goes, and returns what
// it saw.
func (k *kill9) modeSwitcher(bin, v string, rng *rand.Rand, stop *atomic.Bool, done chan<- switchStats) {
	var ss switchStats
	d := k.d
	note := func() {
		if st, err := d.Status(); err == nil {
			over, _ := st["bypassed_over_dirty"].(float64)
			claimed, _ := st["destage_blocks_claimed"].(float64)
			ss.overDirty, ss.claimed = max(ss.overDirty, int(over)), max(ss.claimed, int(claimed))
		}
	}
	logPath := filepath.Join(k.dir, "modes.log")
	if v == "drain-around" {
		time.Sleep(time.Duration(300+rng.IntN(900)) * time.Millisecond)
		if !stop.Load() {
			ss.n++
			// It returns when the drain ends or the daemon is killed.
			go run(logPath, time.Minute, bin, "mode", k.mnt, "writearound")
		}
		for !stop.Load() {
			time.Sleep(100 * time.Millisecond)
			note()
		}
		done <- ss
		return
	}
	logf, _ := os.Create(logPath)
	defer logf.Close()
	for !stop.Load() {
		time.Sleep(time.Duration(100+rng.IntN(700)) * time.Millisecond)
		if stop.Load() {
			break
		}
		m := [...]string{"writethrough", "writearound", "none", "writeback", "writeback"}[rng.IntN(5)]
		ss.n++
		code, out := run("", time.Minute, bin, "mode", k.mnt, m)
		fmt.Fprintf(logf, "%s mode %s: exit %d %s\n", time.Now().Format("15:04:05.000"), m, code, strings.TrimSpace(out))
		note()
	}
	done <- ss
}
