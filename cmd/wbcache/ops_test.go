package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/wbcache/wbcache/device"
	"github.com/wbcache/wbcache/fuse"
)

// wbcAsNobody runs the command as uid/gid 65534, from a copy of the binary
// that user may execute.
func wbcAsNobody(t *testing.T, args ...string) result {
	t.Helper()
	dir, err := os.MkdirTemp("", "wbcache-nobody-")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	require.NoError(t, os.Chmod(dir, 0o755))
	bin := filepath.Join(dir, "wbcache")
	require.NoError(t, os.WriteFile(bin, readAll(t, wbcacheBin), 0o755))
	cmd := exec.Command(bin, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	return result{stdout: out.String(), stderr: errb.String(), code: exitCode(err)}
}

// otherCacheAt formats a second cache and backing file in r's directory,
// to be mounted on r's mount point.
func otherCacheAt(t *testing.T, r *rig) *rig {
	t.Helper()
	r2 := &rig{dir: r.dir, backing: filepath.Join(r.dir, "b2.img"), cache: filepath.Join(r.dir, "c2.img"), mnt: r.mnt}
	require.NoError(t, device.Create(r2.backing, 16<<20))
	wantCode(t, 0, "format", "--cache", r2.cache, "--cache-size", "8M", "--backing", r2.backing)
	return r2
}

// requireRefusedUntouched mounts r, which must fail with exit 1 and the
// message want, before anything is written to its cache file.
func requireRefusedUntouched(t *testing.T, r *rig, want string) {
	t.Helper()
	before := fileSum(t, r.cache)
	_, res := r.startMount(t)
	require.NotNil(t, res, "the mount must be refused")
	require.Equal(t, 1, res.code, res.String())
	require.Contains(t, res.stderr, want)
	require.Equal(t, before, fileSum(t, r.cache), "the refused mount wrote to its cache")
}

// TestSameDeviceTwice: the same file as --cache and --backing is named as
// such, not as a device another wbcache uses.
func TestSameDeviceTwice(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "back.img")
	require.NoError(t, device.Create(img, 16<<20))
	link := filepath.Join(dir, "link.img")
	require.NoError(t, os.Link(img, link))
	mnt := filepath.Join(dir, "mnt")
	require.NoError(t, os.Mkdir(mnt, 0o755))
	for _, args := range [][]string{
		{"format", "--cache", img, "--backing", img},
		{"format", "--cache", link, "--backing", img, "--force"},
		{"mount", "--cache", img, "--backing", link, mnt},
		{"check", "--cache", img, "--backing", img},
		{"detach", "--cache", img, "--backing", img},
	} {
		r := wantCode(t, 1, args...)
		require.Contains(t, r.stderr, "--cache and --backing are the same device", "%v", args)
		require.Contains(t, r.stderr, "give the SSD-side cache file", "%v", args)
		require.NotContains(t, r.stderr, "another wbcache", "%v", args)
	}
}

// TestStatusCauses: status names why it cannot ask a daemon: nothing
// mounted, a mount this user may not reach, a dead mount.
func TestStatusCauses(t *testing.T) {
	needFUSE(t)
	r := newRig(t, 16<<20, 8<<20)

	res := wantCode(t, 1, "status", r.mnt)
	require.Contains(t, res.stderr, r.mnt+": no wbcache daemon serves it: it is not a wbcache mount point")
	require.Contains(t, res.stderr, "'wbcache list'")

	d := r.mount(t)
	// Another user may walk to the mount point but not into the mount.
	require.NoError(t, os.Chmod(filepath.Dir(r.dir), 0o755))
	require.NoError(t, os.Chmod(r.dir, 0o755))
	res = wbcAsNobody(t, "status", r.mnt)
	require.Equal(t, 1, res.code, res.String())
	require.Contains(t, res.stderr, fmt.Sprintf("wbcache serves %s (cache %s), but you (uid 65534) may not ask it: permission denied", r.mnt, r.cache))
	require.Contains(t, res.stderr, "mount it with --allow-other")
	require.NotContains(t, res.stderr, "no wbcache daemon serves")
	res = wbcAsNobody(t, "mode", r.mnt)
	require.Equal(t, 1, res.code, res.String())
	require.Contains(t, res.stderr, "may not ask it: permission denied")

	d.kill9(t)
	t.Cleanup(func() { // the killed daemon's socket
		for _, dir := range socketDirs() {
			if p := filepath.Join(dir, socketName(r.mnt)); !socketAnswers(p) {
				os.Remove(p)
			}
		}
	})
	res = wantCode(t, 1, "status", r.mnt)
	require.Contains(t, res.stderr, r.mnt+": its daemon is gone (a dead mount is left there")
	require.Contains(t, res.stderr, "Mount the cache again (wbcache mount --cache "+r.cache)
	res = wantCode(t, 0, "list", "--json")
	var entries []listEntry
	require.NoError(t, json.Unmarshal([]byte(res.stdout), &entries), res.stdout)
	require.Contains(t, entries, listEntry{Mountpoint: r.mnt, State: "dead", Cache: r.cache})
}

// TestMountpointChecks: a busy or non-empty mount point is refused before
// the cache is opened (the cache file is left untouched), and the mount
// shows the cache path as its source.
func TestMountpointChecks(t *testing.T) {
	needFUSE(t)
	r := newRig(t, 16<<20, 32<<20)
	d := r.mount(t)
	require.Contains(t, d.stderr.String(), "is larger than the backing device (16.0 MiB)")
	ms, err := fuse.Mounts()
	require.NoError(t, err)
	require.Contains(t, ms, fuse.MountRecord{MountPoint: r.mnt, Source: r.cache})

	// A second cache on the busy mount point.
	r2 := otherCacheAt(t, r)
	requireRefusedUntouched(t, r2, fmt.Sprintf("mount point %s: a wbcache daemon already serves it (cache %s): stop it first (wbcache stop %s)", r.mnt, r.cache, r.mnt))

	// The first cache from elsewhere: the message names its mount point.
	other := filepath.Join(r.dir, "mnt2")
	require.NoError(t, os.Mkdir(other, 0o755))
	res2 := wantCode(t, 1, "mount", "--cache", r.cache, "--backing", r.backing, other)
	require.Contains(t, res2.stderr, fmt.Sprintf("another wbcache is using %s (pid %d, serving %s), the cache device: stop that daemon first (wbcache stop %s)",
		r.cache, d.Pid, r.mnt, r.mnt))
	require.Equal(t, 0, d.stop(t))

	// A mount point holding a file.
	require.NoError(t, os.WriteFile(filepath.Join(r.mnt, "notes.txt"), []byte("x"), 0o644))
	requireRefusedUntouched(t, r2, fmt.Sprintf(`mount point %s is not empty (it holds "notes.txt")`, r.mnt))
	requireRefusedUntouched(t, r2, "--nonempty to mount over them anyway")
	d = r2.mount(t, "--nonempty")
	_, err = os.Stat(filepath.Join(r.mnt, "notes.txt"))
	require.ErrorIs(t, err, os.ErrNotExist, "hidden under the mount")
	require.Equal(t, 0, d.stop(t))
}

// TestListModeStop: list shows the running caches; mode without a mode
// prints it; stop stops a daemon and reports what stays dirty.
func TestListModeStop(t *testing.T) {
	needFUSE(t)
	a := newRig(t, 16<<20, 8<<20)
	b := newRig(t, 16<<20, 8<<20)
	da := a.mount(t, "--max-dirty-age", "1h", "--low-watermark", "90", "--high-watermark", "95")
	db := b.mount(t, "--mode", "writethrough")
	writeDisk(t, a.disk(), make([]byte, 1<<20), 0)

	res := wantCode(t, 0, "list", "--json")
	var entries []listEntry
	require.NoError(t, json.Unmarshal([]byte(res.stdout), &entries), res.stdout)
	require.Contains(t, entries, listEntry{Mountpoint: a.mnt, State: "serving", PID: da.Pid, Mode: "writeback", DirtyBytes: 1 << 20, Cache: a.cache})
	require.Contains(t, entries, listEntry{Mountpoint: b.mnt, State: "serving", PID: db.Pid, Mode: "writethrough", Cache: b.cache})
	res = wantCode(t, 0, "list")
	require.Regexp(t, `(?m)^MOUNTPOINT +STATE +PID +MODE +DIRTY +CACHE$`, res.stdout)
	require.Regexp(t, fmt.Sprintf(`(?m)^%s +serving +%d +writeback +1.0 MiB +%s$`, a.mnt, da.Pid, a.cache), res.stdout)

	require.Equal(t, "writeback\n", wantCode(t, 0, "mode", a.mnt).stdout)
	require.Equal(t, "writethrough\n", wantCode(t, 0, "mode", b.mnt).stdout)

	res = wantCode(t, 0, "stop", a.mnt)
	require.Contains(t, res.stdout, fmt.Sprintf("stopping the wbcache daemon serving %s (pid %d", a.mnt, da.Pid))
	require.Contains(t, res.stdout, "1.0 MiB (256 blocks) stay dirty in the cache "+a.cache)
	select {
	case <-da.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the daemon is still running after stop")
	}
	require.Equal(t, 0, da.ExitCode(), da.stderr.String())
	require.Contains(t, da.stderr.String(), "asked through the control socket")
	require.True(t, a.superblockClean(t))
	require.False(t, isMounted(a.mnt))

	res = wantCode(t, 0, "stop", b.mnt)
	require.Contains(t, res.stdout, "nothing dirty: the backing device "+b.backing+" holds every block")
	<-db.Done()
	res = wantCode(t, 0, "list")
	require.NotContains(t, res.stdout, a.mnt)
	require.NotContains(t, res.stdout, b.mnt)
	res = wantCode(t, 1, "stop", a.mnt)
	require.Contains(t, res.stderr, "no wbcache daemon serves it")
}

// TestStopWhileBusy: a daemon that waits for the last user of its disk
// still answers status, list and stop, refuses changes, and keeps its
// mount point from being reused.
func TestStopWhileBusy(t *testing.T) {
	needFUSE(t)
	r := newRig(t, 16<<20, 8<<20)
	d := r.mount(t)
	disk, err := os.OpenFile(r.disk(), os.O_RDWR, 0)
	require.NoError(t, err)
	defer disk.Close()
	d.Signal(syscall.SIGTERM)
	require.Eventually(t, func() bool { return strings.Contains(d.stderr.String(), "the mount is busy") }, 20*time.Second, 50*time.Millisecond)

	res := wantCode(t, 0, "status", r.mnt)
	require.Contains(t, res.stdout, "STOPPING:   waiting for the last user of "+r.disk())
	res = wantCode(t, 1, "mode", r.mnt, "writethrough")
	require.Contains(t, res.stderr, fmt.Sprintf("the daemon serving %s is stopping (waiting for the last user", r.mnt))
	res = wantCode(t, 0, "list", "--json")
	require.Contains(t, res.stdout, `"state": "stopping"`)

	requireRefusedUntouched(t, otherCacheAt(t, r), fmt.Sprintf("mount point %s: a wbcache daemon already serves it while it stops", r.mnt))

	// stop --force ends the wait.
	res = wantCode(t, 0, "stop", "--force", r.mnt)
	require.Contains(t, res.stdout, "stopped in")
	select {
	case <-d.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the daemon is still running after stop --force")
	}
	require.Equal(t, 0, d.ExitCode(), d.stderr.String())
}

// exitCode is the exit code a finished command's error stands for (-1
// when it did not run or was killed).
func exitCode(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	if err != nil {
		return -1
	}
	return 0
}
