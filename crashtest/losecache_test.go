package crashtest

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// loseCache is the state of TestLoseCacheExt4Loop.
type loseCache struct {
	*ext4Rig
	size, cacheSize int64
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
// formats a new cache over the backing file, mounts it with write-back
// running all the time, puts ext4 on a loop device on the disk (no
// discard) and runs `wbcheck write`; at a random moment it reads
// writeback_order.consistent_unix_nano (T) from `wbcache status --json`,
// kills the daemon with kill -9 and deletes the cache file. The backing
// file alone, on a loop device of its own, must then hold a good ext4
// (journal replayed by a mount, `fsck.ext4 -n -f` clean) in which every
// change committed before T is there (`wbcheck verify --before T`),
// mounted read-only. The next round goes on with that file system; a
// failed round makes a new one. Smoke run: 1 round.
func TestLoseCacheExt4Loop(t *testing.T) {
	x := &loseCache{ext4Rig: newExt4Rig(t, "losecache", "round", 1)}
	x.size, x.cacheSize = x.sizes()
	t.Logf("lose-cache loop: seed %d, %d rounds, ext4 of %d MiB, cache %d MiB, work dir %s", x.e.seed, x.n, x.size>>20, x.cacheSize>>20, x.e.work)
	x.newFS()
	defer x.summary()
	for x.it = 1; x.it <= x.n; x.it++ {
		if !x.round() || *flagStop && t.Failed() {
			return
		}
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
	x.format(x.cacheSize, "--writeback-order", "ordered")
	policy := []string{"--low-watermark", "0", "--high-watermark", x.e.pick("5", "50"),
		"--max-dirty-age", x.e.pick("0", "1s", "2s"), "--seq-cutoff", x.e.pick("0", "4M"), "--workers", "2"}
	x.mountArgs = mountOptions(append([]string{"--mode", "writeback"}, policy...)...)
	if err := x.start(fmt.Sprintf("round-%d", x.it)); err != nil {
		x.fail("wbcache mount: %v", err)
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
	var killAt int64
	ops := x.writeAndKill(x.size/4, ms, func() {
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
		x.fail("`wbcache status --json` has no writeback_order object: this wbcache has no ordered write-back " +
			"(--writeback-order, issue 15), so nothing says which fsyncs the backing device alone holds; this test needs it")
		return false
	}
	if wo.Order != "ordered" {
		x.fail("the cache was formatted with --writeback-order ordered, but status says the order is %q", wo.Order)
	}
	point := "unknown (0)"
	if wo.ConsistentUnixNano == 0 {
		x.unknown++
	} else {
		lag := float64(killAt-wo.ConsistentUnixNano) / 1e9
		x.lags = append(x.lags, lag)
		point = fmt.Sprintf("%.3fs before the kill", lag)
	}
	if !wo.InForce {
		x.suspended++
		point += fmt.Sprintf(", order suspended (%s)", wo.Suspended)
	}
	if st.DestagedBytes == 0 {
		x.idle++
	}
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

var beforeRE = regexp.MustCompile(`(?m)^wbcheck verify: before \d+: (\d+) names committed before it \((\d+) now at a later state\).*$`)

// summary logs the figures of the run.
func (x *loseCache) summary() {
	x.summaryHead("lose-cache loop")
	x.summaryLine("names required by T:", "%d in total over all verify runs (%d at a later state)", x.required, x.later)
	x.summaryLine("file systems made:", "%d (the first, and one after each failed round)", x.freshFS)
	x.summaryLine("consistent point to kill:", "%s", percentiles(x.lags))
	x.summaryLine("rounds with T unknown (0):", "%d", x.unknown)
	x.summaryLine("rounds with order suspended:", "%d", x.suspended)
	x.summaryLine("rounds with no write-back yet:", "%d", x.idle)
	x.summaryFails()
}
