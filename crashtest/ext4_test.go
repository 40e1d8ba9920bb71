package crashtest

import (
	"path/filepath"
	"testing"
)

// ext4Loop is the state of TestExt4Loop.
type ext4Loop struct {
	*ext4Rig
	checks, discards int64
	ready, recovery  []float64
}

// TestExt4Loop is the ext4 loop (docs/design.md §2.1 through a real file
// system): ext4 on a loop device on the disk, `wbcheck write` creates,
// replaces, appends to, moves and deletes fsync'd files and records each
// committed change in a manifest on another file system, kill -9 of the
// daemon, restart, the ext4 journal replayed by a mount, `fsck.ext4 -n
// -f` clean, and `wbcheck verify --resolve`: every committed file intact,
// every committed delete stayed deleted, over all iterations so far.
// Every 4th iteration (and the last) also stops the daemon cleanly and
// runs `wbcache check`. Smoke run: 1 iteration.
func TestExt4Loop(t *testing.T) {
	x := &ext4Loop{ext4Rig: newExt4Rig(t, "ext4", "iteration", 1)}
	size, cacheSize := x.sizes()
	x.mountArgs = variantMount("plain")
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

// setup formats a cache, mounts it, attaches a loop device and makes the
// ext4 through it.
func (x *ext4Loop) setup(size, cacheSize int64) {
	x.newBacking(size)
	x.format(cacheSize)
	if err := x.start("first"); err != nil {
		x.t.Fatal(err)
	}
	if !x.loopUp(filepath.Join(x.mnt, "disk")) {
		x.t.FailNow()
	}
	x.mkfs(x.loop)
}
