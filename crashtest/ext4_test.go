package crashtest

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// ext4Loop is the state of TestExt4Loop.
type ext4Loop struct {
	t                   *testing.T
	e                   *env
	bin, wbcheck        string
	n                   int
	quick               bool
	cache, backing, mnt string
	fs, manifest, logs  string
	d                   *Daemon
	loop                string
	it                  int
	st                  ext4Stats
}

type ext4Stats struct {
	ops, files, bytes, fscks, checks, discards int64
	ready, recovery                            []float64
	fails                                      []string
}

// TestExt4Loop is the ext4 loop (docs/design.md §2.1 through a real file
// system): ext4 on a loop device on the disk, `wbcheck write` creates,
// replaces and deletes fsync'd files and records each committed change
// in a manifest on another file system, kill -9 of the daemon, restart,
// the ext4 journal replayed by a mount, `fsck.ext4 -n -f` clean, and
// `wbcheck verify --resolve`: every committed file intact, every committed
// delete stayed deleted, over all iterations so far. Every 4th iteration
// (and the last) also stops the daemon cleanly and runs `wbcache check`.
// Smoke run: 1 iteration.
func TestExt4Loop(t *testing.T) {
	needRig(t, "losetup", "mkfs.ext4", "fsck.ext4", "mount")
	x := &ext4Loop{t: t, e: newEnv(t, "ext4"), bin: binary(t, "wbcache"), wbcheck: binary(t, "wbcheck")}
	x.n, x.quick = loopSize(1)
	size := sizeFlag(t, flagSize, "2G", "1G", x.quick)
	cacheSize := sizeFlag(t, flagCache, "256M", "64M", x.quick)
	x.cache, x.backing, x.mnt = x.e.path("cache.img"), x.e.path("backing.img"), x.e.path("mnt")
	x.fs, x.manifest, x.logs = x.e.path("fs"), x.e.path("manifest"), x.e.path("logs")
	for _, d := range []string{x.mnt, x.fs, x.logs} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("ext4 loop: seed %d, %d iterations, ext4 of %d MiB, cache %d MiB, work dir %s", x.e.seed, x.n, size>>20, cacheSize>>20, x.e.work)
	x.setup(size, cacheSize)
	defer x.summary()
	for x.it = 1; x.it <= x.n; x.it++ {
		if !x.iteration(size / 4) {
			return
		}
		if *flagStop && t.Failed() {
			return
		}
	}
}

func (x *ext4Loop) fail(format string, a ...any) {
	msg := fmt.Sprintf(format, a...)
	x.st.fails = append(x.st.fails, fmt.Sprintf("iteration %d: %s", x.it, msg))
	x.t.Errorf("iteration %d: %s (logs in %s)", x.it, msg, x.logs)
	if *flagFailures != "" {
		dst := filepath.Join(*flagFailures, fmt.Sprintf("iter-%d", x.it))
		_ = os.RemoveAll(dst)
		if err := os.CopyFS(dst, os.DirFS(x.logs)); err == nil {
			run("", time.Minute, "cp", x.manifest, filepath.Join(dst, "manifest"))
		}
	}
}

// setup formats a cache, mounts it, attaches a loop device and makes the
// ext4.
func (x *ext4Loop) setup(size, cacheSize int64) {
	if err := os.WriteFile(x.backing, nil, 0o600); err != nil {
		x.t.Fatal(err)
	}
	if err := os.Truncate(x.backing, size); err != nil {
		x.t.Fatal(err)
	}
	if code, out := run(filepath.Join(x.logs, "format.log"), 2*time.Minute, x.bin, "format", "--cache", x.cache,
		"--backing", x.backing, "--cache-size", fmt.Sprint(cacheSize), "--force"); code != 0 {
		x.t.Fatalf("wbcache format: exit %d: %s", code, out)
	}
	if err := x.start("first"); err != nil {
		x.t.Fatal(err)
	}
	if !x.loopUp() {
		x.t.FailNow()
	}
	if code, out := run(filepath.Join(x.logs, "mkfs.log"), 5*time.Minute, "mkfs.ext4", "-q", "-F",
		"-E", "lazy_itable_init=0,lazy_journal_init=0,nodiscard", x.loop); code != 0 {
		x.t.Fatalf("mkfs.ext4: exit %d: %s", code, out)
	}
}

// start mounts the cache with the default policy (mount options stick in
// the superblock, so every mount passes them all).
func (x *ext4Loop) start(tag string) error {
	d, err := x.e.procs.MountDaemon(DaemonConfig{Bin: x.bin, Cache: x.cache, Backing: x.backing, Mnt: x.mnt,
		Log: filepath.Join(x.logs, "daemon-"+tag+".log"), Args: variantMount("plain")}, 2*time.Minute)
	x.d = d
	return err
}

func (x *ext4Loop) loopUp() bool {
	dev, err := x.e.procs.AttachLoop(filepath.Join(x.mnt, "disk"))
	if err != nil {
		x.fail("%v", err)
		return false
	}
	x.loop = dev
	return true
}

func (x *ext4Loop) loopDown() {
	if x.loop != "" {
		if err := x.e.procs.DetachLoop(x.loop); err != nil {
			x.t.Logf("%v", err)
		}
		x.loop = ""
	}
}

// mountFS mounts the ext4 (registered for cleanup).
func (x *ext4Loop) mountFS(opts string) bool {
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

func (x *ext4Loop) umountFS() bool {
	if err := unix.Unmount(x.fs, 0); err != nil {
		x.fail("umount of the ext4: %v", err)
		return false
	}
	return true
}

var (
	opsRE    = regexp.MustCompile(`(?m)(?:after |^wbcheck write: )(\d+) operations`)
	verifyRE = regexp.MustCompile(`(?m)^wbcheck verify: (\d+) .*\((\d+) bytes\)`)
)

func atoi(s string) int64 {
	n, _ := strconv.ParseInt(s, 10, 64)
	return n
}
