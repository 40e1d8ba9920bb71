package crashtest

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// loseCache is the state of TestLoseCacheExt4Loop.
type loseCache struct {
	*ext4Rig
	size, cacheSize int64
	checked         int       // rounds whose backing file was checked
	freshFS         int       // file systems made: the first, and one after each failed round
	lags            []float64 // seconds from the consistent point to the kill
	unknown         int       // rounds whose consistent point was 0 (unknown) at the kill
	suspended       int       // rounds whose order was not in force at the kill
	idle            int       // rounds with nothing written back yet at the kill
	required, later int64     // names verify required, and found at a later state
}

// killStatus is the part of `wbcache status --json` read just before the
// kill.
type killStatus struct {
	WritebackOrder *WritebackOrder `json:"writeback_order"`
	DirtyBytes     int64           `json:"dirty_bytes"`
	DestagedBytes  uint64          `json:"destaged_bytes"`
}

// TestLoseCacheExt4Loop loses the cache device (issue 15, ordered
// write-back): with --writeback-order ordered the backing device alone
// must always hold a state a power cut could have left. Each round
// formats a new cache over the backing file, mounts it with
// --writeback-order ordered and write-back running all the time, puts ext4 on a loop device on the disk (no
// discard) and runs `wbcheck write`; at a random moment it reads
// writeback_order.consistent_unix_nano (T) from `wbcache status --json`,
// kills the daemon with kill -9 and deletes the cache file. The backing
// file alone, on a loop device of its own, must then hold a good ext4
// (journal replayed by a mount, `fsck.ext4 -n -f` clean) in which every
// change committed before T is there (`wbcheck verify --before T`),
// mounted read-only. The next round goes on with that file system; a
// failed round makes a new one.
//
// While ordering is suspended (too many older versions, or too many
// epochs behind) the daemon promises no consistent point: a round that
// ends so is not checked, makes a new file system and does not count
// towards -crash.n; up to 2n+1 rounds run to check n, and fewer checked
// rounds are a failure. Smoke run: 1 checked round.
func TestLoseCacheExt4Loop(t *testing.T) {
	if *flagOrder == "unordered" {
		skipLoudly(t, "it checks ordered write-back, and -crash.order unordered promises nothing about the backing device alone")
	}
	x := &loseCache{ext4Rig: newExt4Rig(t, "losecache", "round", 1)}
	x.size, x.cacheSize = x.sizes()
	t.Logf("lose-cache loop: seed %d, %d rounds, ext4 of %d MiB, cache %d MiB, work dir %s", x.e.seed, x.n, x.size>>20, x.cacheSize>>20, x.e.work)
	x.newFS()
	defer x.summary()
	for x.it = 1; x.checked < x.n && x.it <= 2*x.n+1; x.it++ {
		if !x.round() || *flagStop && t.Failed() {
			return
		}
	}
	x.it--
	if x.checked < x.n {
		x.fail("only %d of %d rounds could be checked: ordered write-back was suspended at the kill in %d of %d", x.checked, x.n, x.suspended, x.it)
	}
}

// newFS makes an ext4 on the backing file itself (no cache in front: the
// round starts from a backing file that holds all of it) and starts a new
// manifest, keeping the old one in the logs.
func (x *loseCache) newFS() {
	if _, err := os.Stat(x.manifest); err == nil {
		if err := os.Rename(x.manifest, filepath.Join(x.logs, fmt.Sprintf("manifest-to-round-%d", x.it))); err != nil {
			x.t.Fatal(err)
		}
	}
	x.newBacking(x.size)
	x.mkfs(x.backing)
	x.freshFS++
}

// round is one round; false stops the loop (the stack could not be
// built over a backing file that passed its checks).
func (x *loseCache) round() bool {
	fails := x.failures()
	base := time.Now().UnixNano() // everything committed before it is on the backing file
	x.format(x.cacheSize)
	policy := []string{"--low-watermark", "0", "--high-watermark", x.e.pick("5", "50"),
		"--max-dirty-age", x.e.pick("0", "1s", "2s"), "--seq-cutoff", x.e.pick("0", "4M"), "--workers", "2"}
	x.mountArgs = mountOptions(append([]string{"--mode", "writeback", "--writeback-order", "ordered"}, policy...)...)
	if err := x.start(fmt.Sprintf("round-%d", x.it)); err != nil {
		x.fail("wbcache mount: %v", err)
		return false
	}
	if !x.inForce(30 * time.Second) {
		return false
	}
	if !x.loopUp(x.d.Disk()) || !x.mountFS("") {
		return false
	}
	ms := x.e.between(500, 5000)
	if x.quick {
		ms = x.e.between(500, 1500)
	}
	var st killStatus
	var stErr error
	var statusAt time.Time
	var killAt int64
	ops := x.writeAndKill(x.size/4, ms, func() {
		statusAt = time.Now()
		stErr = x.d.StatusInto(&st)
		killAt = time.Now().UnixNano()
	})
	// Everything but the backing file goes: the ext4 over the dead disk,
	// its loop device, the dead FUSE mount and the cache file.
	_ = unix.Unmount(x.fs, unix.MNT_DETACH)
	x.loopDown()
	if err := x.e.procs.UnmountFUSE(x.mnt); err != nil {
		x.t.Logf("round %d: %v", x.it, err)
	}
	if err := os.Remove(x.cache); err != nil {
		x.t.Fatal(err)
	}
	if stErr != nil {
		x.fail("reading the consistent point before the kill: %v", stErr)
		return false
	}
	wo := st.WritebackOrder
	if wo == nil {
		x.fail("%s", errNoOrder)
		return false
	}
	if wo.Order != "ordered" {
		x.fail("the cache was mounted with --writeback-order ordered, but status says the order is %q", wo.Order)
	}
	point := "unknown (0)"
	if wo.ConsistentUnixNano == 0 {
		x.unknown++
	} else {
		lag := float64(killAt-wo.ConsistentUnixNano) / 1e9
		x.lags = append(x.lags, lag)
		point = fmt.Sprintf("%.3fs before the kill", lag)
	}
	if st.DestagedBytes == 0 {
		x.idle++
	}
	why := wo.Suspended
	if r, ok := suspendedSince(x.d.Log, statusAt); ok && wo.InForce {
		why = r + " (logged after the status read)"
	} else if !wo.InForce && why == "" {
		why = "not in force"
	}
	if why != "" {
		x.suspended++
		x.newFS()
		x.t.Logf("round %d/%d: %s; kill at %dms, %d ops; ordered write-back suspended at the kill: %s; not checked, next round on a new file system",
			x.it, x.n, strings.Join(policy, " "), ms, ops, why)
		return true
	}
	x.checked++
	limit := max(wo.ConsistentUnixNano, base)

	// The backing file alone (with -crash.failures, a copy as the kill
	// left it is kept for a failed round).
	evidence := ""
	if *flagFailures != "" {
		evidence = x.e.path("backing-at-kill.img")
		if code, out := run("", 10*time.Minute, "cp", "--sparse=always", x.backing, evidence); code != 0 {
			x.t.Fatalf("copying the backing file: %s", out)
		}
	}
	if !x.loopUp(x.backing) {
		return false
	}
	frc, replayed := x.fsck()
	vline := "not verified (no mountable ext4)"
	if replayed {
		var out string
		vline, out, _ = x.verifyFiles("ro", "--before", fmt.Sprint(limit), "--settle")
		if m := beforeRE.FindStringSubmatch(out); m != nil {
			x.required += atoi(m[1])
			x.later += atoi(m[2])
			vline += "; " + m[0]
		}
	}
	x.loopDown()
	next := "next round on this file system"
	if x.failures() > fails {
		x.newFS()
		next = "next round on a new file system"
		if evidence != "" {
			dst := filepath.Join(*flagFailures, fmt.Sprintf("round-%d", x.it), "backing-at-kill.img")
			if err := os.MkdirAll(filepath.Dir(dst), 0o755); err == nil {
				run("", 10*time.Minute, "mv", evidence, dst)
			}
		}
	}
	if evidence != "" {
		os.Remove(evidence)
	}
	x.t.Logf("round %d/%d: %s; kill at %dms, %d ops, %d MiB dirty, %d MiB written back; consistent point %s (epoch %d, %d behind, %d older versions); fsck rc %d; %s; %s; failures so far %d",
		x.it, x.n, strings.Join(policy, " "), ms, ops, st.DirtyBytes>>20, st.DestagedBytes>>20, point, wo.ConsistentEpoch, wo.BehindEpochs, wo.OlderVersions,
		frc, vline, next, x.failures())
	return true
}

const errNoOrder = "`wbcache status --json` has no writeback_order object: this wbcache has no ordered write-back " +
	"(--writeback-order, issue 15), so nothing says which fsyncs the backing device alone holds; this test needs it"

// inForce waits for ordered write-back to be in force on the fresh cache
// before the workload begins. The format leaves the order unset, so the
// superblock says the backing device was written out of order before:
// the daemon holds ordering suspended until it has seen the write-back
// caught up, which over an empty cache is at once.
func (x *loseCache) inForce(timeout time.Duration) bool {
	var st killStatus
	for deadline := time.Now().Add(timeout); ; time.Sleep(50 * time.Millisecond) {
		if err := x.d.StatusInto(&st); err != nil {
			x.fail("%v", err)
			return false
		}
		wo := st.WritebackOrder
		switch {
		case wo == nil:
			x.fail("%s", errNoOrder)
			return false
		case wo.Order != "ordered":
			x.fail("mounted with --writeback-order ordered, but status says the order is %q", wo.Order)
			return false
		case wo.InForce:
			return true
		case time.Now().After(deadline):
			x.fail("ordered write-back not in force %v after mounting a new cache: %s", timeout, wo.Suspended)
			return false
		}
	}
}

// suspendedSince is the reason of an "ordered write-back suspended"
// warning that the daemon logged (slog text: time=... reason=...) at or
// after t, if there is one.
func suspendedSince(logPath string, t time.Time) (string, bool) {
	data, _ := os.ReadFile(logPath)
	for _, l := range strings.Split(string(data), "\n") {
		if !strings.Contains(l, "ordered write-back suspended") {
			continue
		}
		reason := l
		if m := slogReasonRE.FindStringSubmatch(l); m != nil {
			reason = m[1]
			if s, err := strconv.Unquote(reason); err == nil {
				reason = s
			}
		}
		m := slogTimeRE.FindStringSubmatch(l)
		if m == nil {
			return reason, true
		}
		at, err := time.Parse(time.RFC3339Nano, m[1])
		if err != nil || !at.Before(t.Truncate(time.Millisecond)) {
			return reason, true
		}
	}
	return "", false
}

var (
	slogTimeRE   = regexp.MustCompile(`\btime=(\S+)`)
	slogReasonRE = regexp.MustCompile(`\breason=("(?:[^"\\]|\\.)*"|\S+)`)
)

var beforeRE = regexp.MustCompile(`(?m)^wbcheck verify: before \d+: (\d+) names committed before it \((\d+) now at a later state\).*$`)

// summary logs the figures of the run.
func (x *loseCache) summary() {
	x.summaryHead("lose-cache loop", fmt.Sprintf("%d run, %d checked (of %d to check)", x.it, x.checked, x.n))
	x.summaryLine("names required by T:", "%d in total over all verify runs (%d at a later state)", x.required, x.later)
	x.summaryLine("file systems made:", "%d (the first, and one after each failed round)", x.freshFS)
	x.summaryLine("consistent point to kill:", "%s", percentiles(x.lags))
	x.summaryLine("rounds with T unknown (0):", "%d", x.unknown)
	x.summaryLine("rounds suspended at the kill:", "%d (not checked)", x.suspended)
	x.summaryLine("rounds with no write-back yet:", "%d", x.idle)
	x.summaryFails()
}

// TestSuspendedSince: a suspension warning counts from the status read's
// millisecond on, with its reason.
func TestSuspendedSince(t *testing.T) {
	path := filepath.Join(t.TempDir(), "daemon.log")
	log := `time=2026-12-04T20:19:05.120Z level=INFO msg="wbcache: serving"
time=2026-12-04T20:19:05.200Z level=WARN msg="ordered write-back suspended: the backing device alone is no longer a consistent point in time; ordering resumes once the write-back has caught up" reason="older versions fill 4096 slots, the bound (a quarter of the cache)"
`
	if err := os.WriteFile(path, []byte(log), 0o644); err != nil {
		t.Fatal(err)
	}
	at := func(s string) time.Time {
		v, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	if r, ok := suspendedSince(path, at("2026-12-04T20:19:05.200900Z")); !ok || r != "older versions fill 4096 slots, the bound (a quarter of the cache)" {
		t.Errorf("same millisecond: %q %v", r, ok)
	}
	if r, ok := suspendedSince(path, at("2026-12-04T20:19:05.201Z")); ok {
		t.Errorf("a suspension before the read counted: %q", r)
	}
	if _, ok := suspendedSince(filepath.Join(t.TempDir(), "none"), time.Time{}); ok {
		t.Error("no log: suspended")
	}
}
