package main

import (
	"crypto/sha256"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/wbcache/wbcache/crashtest"
	"golang.org/x/sys/unix"
)

// sh runs a system command and fails the test with its output.
func sh(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	require.NoError(t, err, "%s %s:\n%s", name, strings.Join(args, " "), out)
	return strings.TrimSpace(string(out))
}

// testProcs is a registry of the loop devices and mounts a test makes,
// undone at its end.
func testProcs(t *testing.T) *crashtest.Procs {
	p := crashtest.NewProcs()
	t.Cleanup(func() { p.Cleanup(t.Logf) })
	return p
}

// attachLoop puts a loop device on file (detached at cleanup).
func attachLoop(t *testing.T, p *crashtest.Procs, file string) string {
	t.Helper()
	dev, err := p.AttachLoop(file)
	require.NoError(t, err)
	return dev
}

// mountFS mounts dev on dir (unmounted at cleanup).
func mountFS(t *testing.T, p *crashtest.Procs, dev, dir string) {
	t.Helper()
	sh(t, "mount", dev, dir)
	p.TrackMount(dir)
}

// TestExt4: losetup + mkfs.ext4 + mount on MOUNTPOINT/disk, files written
// and synced, fsck clean after a daemon restart, checksums equal.
func TestExt4(t *testing.T) {
	needFUSE(t)
	for _, tool := range []string{"losetup", "mkfs.ext4", "fsck.ext4", "mount"} {
		if _, err := exec.LookPath(tool); err != nil {
			skipLoudly(t, "needs %s (install util-linux and e2fsprogs)", tool)
		}
	}
	r := newRig(t, 256<<20, 64<<20)
	d := r.mount(t)
	p := testProcs(t)
	fsDir := filepath.Join(r.dir, "fs")
	require.NoError(t, os.Mkdir(fsDir, 0o755))

	loop := attachLoop(t, p, r.disk())
	sh(t, "mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", loop)
	mountFS(t, p, loop, fsDir)

	rng := rand.New(rand.NewPCG(11, 12))
	sums := map[string][32]byte{}
	for i := range 40 {
		n := 1 + rng.IntN(2<<20)
		if i%4 == 0 {
			n = 1 + rng.IntN(5000)
		}
		data := make([]byte, n)
		fillRandom(rng, data)
		name := filepath.Join(fsDir, fmt.Sprintf("dir%d", i%5), fmt.Sprintf("file%02d", i))
		require.NoError(t, os.MkdirAll(filepath.Dir(name), 0o755))
		require.NoError(t, os.WriteFile(name, data, 0o644))
		sums[name] = sha256.Sum256(data)
	}
	// Overwrite and delete some (discards through the loop device).
	for i := 0; i < 40; i += 7 {
		name := filepath.Join(fsDir, fmt.Sprintf("dir%d", i%5), fmt.Sprintf("file%02d", i))
		require.NoError(t, os.Remove(name))
		delete(sums, name)
	}
	sh(t, "sync")
	sh(t, "fstrim", fsDir)
	s := r.status(t)
	t.Logf("after writing files: %d dirty slots, %d syncs, %d discards", s.Dirty, s.Syncs, s.Discards)
	require.Greater(t, s.Syncs, uint64(0))

	require.NoError(t, unix.Unmount(fsDir, 0))
	require.NoError(t, p.DetachLoop(loop))
	require.Equal(t, 0, d.stop(t), "daemon stop with the loop device gone")
	require.True(t, r.superblockClean(t))

	// Restart the daemon, fsck, remount, compare.
	d = r.mount(t)
	loop = attachLoop(t, p, r.disk())
	out, err := exec.Command("fsck.ext4", "-n", "-f", loop).CombinedOutput()
	require.NoError(t, err, "fsck.ext4 -n -f:\n%s", out)
	mountFS(t, p, loop, fsDir)
	for name, want := range sums {
		got, err := os.ReadFile(name)
		require.NoError(t, err)
		require.Equal(t, want, sha256.Sum256(got), name)
	}
	require.NoError(t, unix.Unmount(fsDir, 0))

	// SIGTERM while the loop device still holds the disk open: the daemon
	// detaches the mount lazily and waits for the loop device to go.
	d.Signal(syscall.SIGTERM)
	require.Eventually(t, func() bool { return strings.Contains(d.stderr.String(), "the mount is busy") },
		20*time.Second, 50*time.Millisecond, "no busy-mount message:\n%s", d.stderr.String())
	require.False(t, d.exited(), "daemon exited with the loop device still attached:\n%s", d.stderr.String())
	require.NoError(t, p.DetachLoop(loop))
	select {
	case <-d.Done():
	case <-time.After(20 * time.Second):
		t.Fatalf("daemon still running after losetup -d:\n%s", d.stderr.String())
	}
	require.Equal(t, 0, d.ExitCode(), d.stderr.String())
	require.True(t, r.superblockClean(t))
}
