package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/wbcache/wbcache/device"
	"github.com/wbcache/wbcache/fuse"
	"golang.org/x/sys/unix"
)

// modelIO runs random aligned and unaligned writes and reads on disk,
// checking every read against model (which it updates).
func modelIO(t *testing.T, disk *os.File, model []byte, rng *rand.Rand, ops int) {
	t.Helper()
	size := int64(len(model))
	buf := make([]byte, 256<<10)
	for i := range ops {
		var off int64
		var n int
		if rng.IntN(2) == 0 { // aligned
			n = (1 + rng.IntN(32)) * 4096
			off = rng.Int64N((size-int64(n))/4096) * 4096
		} else { // unaligned
			n = 1 + rng.IntN(20000)
			off = rng.Int64N(size - int64(n))
		}
		p := buf[:n]
		if rng.IntN(3) > 0 {
			fillRandom(rng, p)
			w, err := disk.WriteAt(p, off)
			require.NoError(t, err, "op %d: write %d at %d", i, n, off)
			require.Equal(t, n, w)
			copy(model[off:], p)
		} else {
			r, err := disk.ReadAt(p, off)
			require.NoError(t, err, "op %d: read %d at %d", i, n, off)
			require.Equal(t, n, r)
			requireSameBytes(t, model[off:off+int64(n)], p, fmt.Sprintf("op %d: read of %d bytes at %d", i, n, off))
		}
	}
}

// writeDisk writes p at off (os.WriteFile would truncate, which the
// fixed-size disk refuses).
func writeDisk(t *testing.T, path string, p []byte, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	require.NoError(t, err)
	_, err = f.WriteAt(p, off)
	require.NoError(t, err)
	require.NoError(t, f.Close())
}

func fillRandom(rng *rand.Rand, p []byte) {
	for i := 0; i < len(p); i += 8 {
		v := rng.Uint64()
		for j := 0; j < 8 && i+j < len(p); j++ {
			p[i+j] = byte(v >> (8 * j))
		}
	}
}

// TestMountIO: byte-exact I/O through MOUNTPOINT/disk against a model,
// fsync, punch hole, fixed size, out-of-range writes, status, SIGTERM with
// a clean superblock, and the data still there after a remount.
func TestMountIO(t *testing.T) {
	needFUSE(t)
	const size = 64 << 20
	// A cache larger than the disk, and a lazy policy: blocks stay dirty.
	r := newRig(t, size, 80<<20)
	d := r.mount(t, "--max-dirty-age", "1h", "--low-watermark", "90", "--high-watermark", "95")
	require.Equal(t, fmt.Sprintf("wbcache: serving %s (64.0 MiB, mode writeback)", r.disk()), d.ready)

	disk, err := os.OpenFile(r.disk(), os.O_RDWR, 0)
	require.NoError(t, err)
	defer disk.Close()
	fi, err := disk.Stat()
	require.NoError(t, err)
	require.Equal(t, int64(size), fi.Size())

	model := make([]byte, size)
	rng := rand.New(rand.NewPCG(1, 2))
	modelIO(t, disk, model, rng, 1500)
	require.NoError(t, disk.Sync(), "fsync")
	require.NoError(t, unix.Fdatasync(int(disk.Fd())), "fdatasync")

	// Punch holes, aligned and not: the range reads as zeros.
	for _, h := range []struct{ off, n int64 }{{1 << 20, 256 << 10}, {3<<20 + 1000, 50000}, {size - 8192, 8192}} {
		require.NoError(t, unix.Fallocate(int(disk.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, h.off, h.n), "punch %v", h)
		clear(model[h.off : h.off+h.n])
		got := make([]byte, h.n)
		_, err := disk.ReadAt(got, h.off)
		require.NoError(t, err)
		requireSameBytes(t, make([]byte, h.n), got, "punched range")
	}

	// The size is fixed: truncate fails, writes past the end fail.
	require.Error(t, disk.Truncate(size/2), "shrink")
	require.Error(t, os.Truncate(r.disk(), size+4096), "grow")
	_, err = disk.WriteAt([]byte("x"), size)
	require.ErrorIs(t, err, syscall.ENOSPC, "write at the end")
	// (os.File.WriteAt drops the short count when the retry fails.)
	n, err := unix.Pwrite(int(disk.Fd()), make([]byte, 8192), size-4096)
	require.NoError(t, err, "write across the end")
	require.Equal(t, 4096, n, "a write across the end is cut short there")
	clear(model[size-4096:])
	n, err = disk.ReadAt(make([]byte, 10), size)
	require.Equal(t, 0, n, "read at the end: %v", err)
	fi, err = os.Stat(r.disk())
	require.NoError(t, err)
	require.Equal(t, int64(size), fi.Size())

	// Full read-back.
	requireSameBytes(t, model, readAll(t, r.disk()), "read-back through the mount")

	// status --json and MOUNTPOINT/stats.
	s := r.status(t)
	require.Equal(t, "writeback", s.Mode)
	require.Equal(t, int64(size), s.SizeBytes)
	require.Equal(t, r.mnt, s.Mountpoint)
	if os.Geteuid() == 0 && fuse.IOUringBuiltIn() {
		require.Equal(t, "io_uring", s.FuseTransport, "--fuse-uring auto as root on a kernel with FUSE over io_uring")
		require.True(t, fuse.IOUringEnabled())
	} else {
		// Batched through io_uring where this process can use it.
		require.Contains(t, []string{"/dev/fuse+io_uring", "/dev/fuse"}, s.FuseTransport)
	}
	require.Greater(t, s.Writes, uint64(0))
	require.Greater(t, s.Dirty, 0)
	require.Equal(t, int64(s.Dirty)*4096, s.DirtyBytes)
	require.Greater(t, s.Syncs, uint64(0))
	require.Greater(t, s.Discards, uint64(0))
	require.True(t, strings.HasPrefix(s.ControlSocket, "/run/wbcache/") || strings.Contains(s.ControlSocket, "wbcache-"), s.ControlSocket)
	fi, err = os.Stat(s.ControlSocket)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
	var fromFile Status
	require.NoError(t, json.Unmarshal(readAll(t, filepath.Join(r.mnt, "stats")), &fromFile))
	require.Equal(t, s.ControlSocket, fromFile.ControlSocket)
	human := wantCode(t, 0, "status", r.mnt)
	for _, want := range []string{"mode writeback", "slots:", "dirty:", "hit ratio", "destage:", "journal:", "recovery:"} {
		require.Contains(t, human.stdout, want)
	}

	// SIGTERM: exit 0, clean superblock, socket removed.
	require.NoError(t, disk.Close())
	require.Equal(t, 0, d.stop(t), d.stderr.String())
	require.True(t, r.superblockClean(t), "clean flag after SIGTERM")
	require.False(t, isMounted(r.mnt))
	_, err = os.Stat(s.ControlSocket)
	require.ErrorIs(t, err, os.ErrNotExist)
	r2 := wantCode(t, 0, "check", "--cache", r.cache, "--backing", r.backing)
	require.Contains(t, r2.stdout, "consistent")

	// Remount: everything is still there.
	d = r.mount(t)
	requireSameBytes(t, model, readAll(t, r.disk()), "read-back after remount")
	require.Equal(t, 0, d.stop(t))
}

// TestExternalUmount: umount MOUNTPOINT makes the daemon stop cleanly.
func TestExternalUmount(t *testing.T) {
	needFUSE(t)
	r := newRig(t, 16<<20, 8<<20)
	d := r.mount(t)
	writeDisk(t, r.disk(), []byte("hello"), 0)
	require.NoError(t, unix.Unmount(r.mnt, 0))
	select {
	case <-d.Done():
	case <-time.After(20 * time.Second):
		t.Fatalf("daemon still running after umount; stderr:\n%s", d.stderr.String())
	}
	require.Equal(t, 0, d.ExitCode(), d.stderr.String())
	require.Contains(t, d.stderr.String(), "the mount went away")
	require.True(t, r.superblockClean(t))
}

// TestKill9: acknowledged writes survive kill -9 of the daemon; the next
// mount on the same mount point cleans up the dead mount.
func TestKill9(t *testing.T) {
	needFUSE(t)
	const size = 64 << 20
	r := newRig(t, size, 16<<20)
	d := r.mount(t)

	// Writers on disjoint slices of the disk; each write goes to blocks
	// never written before, so a write in flight at the kill (which may or
	// may not have landed) cannot touch a recorded one.
	type rec struct {
		off  int64
		data []byte
	}
	const writers = 4
	var mu sync.Mutex
	var recs []rec
	var wg sync.WaitGroup
	started := make(chan struct{}, writers)
	disk, err := os.OpenFile(r.disk(), os.O_RDWR, 0)
	require.NoError(t, err)
	region := int64(size / writers)
	for w := range writers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(7, uint64(w)))
			lo := int64(w) * region
			// Two-block chunks in random order.
			chunks := rng.Perm(int(region / 8192))
			for i, c := range chunks {
				off := lo + int64(c)*8192
				var p []byte
				switch rng.IntN(3) {
				case 0:
					p = make([]byte, 4096)
				case 1:
					p = make([]byte, 8192)
				default: // unaligned, inside the chunk
					start := rng.Int64N(8000)
					off += start
					p = make([]byte, 1+rng.Int64N(8192-start-1))
				}
				fillRandom(rng, p)
				if _, err := disk.WriteAt(p, off); err != nil {
					return // the daemon is gone
				}
				mu.Lock()
				recs = append(recs, rec{off, p})
				mu.Unlock()
				if i == 200 {
					started <- struct{}{}
				}
				if rng.IntN(50) == 0 {
					if err := disk.Sync(); err != nil {
						return
					}
				}
			}
		})
	}
	for range writers {
		select {
		case <-started:
		case <-time.After(30 * time.Second):
			t.Fatal("writers made no progress")
		}
	}
	d.kill9(t)
	wg.Wait()
	disk.Close()
	mu.Lock()
	n := len(recs)
	mu.Unlock()
	t.Logf("%d writes acknowledged before kill -9", n)
	require.GreaterOrEqual(t, n, 4*200)

	// The mount point is dead now.
	var st unix.Statfs_t
	err = unix.Statfs(r.mnt, &st)
	require.True(t, errors.Is(err, syscall.ENOTCONN) || errors.Is(err, syscall.ECONNABORTED) || errors.Is(err, syscall.ECANCELED), "statfs of the dead mount: %v", err)

	d = r.mount(t)
	got := readAll(t, r.disk())
	for i, w := range recs {
		requireSameBytes(t, w.data, got[w.off:w.off+int64(len(w.data))], fmt.Sprintf("write %d (%d bytes at %d)", i, len(w.data), w.off))
	}
	s := r.status(t)
	t.Logf("recovery took %.3fs, replayed %d records", s.RecoverySecs, s.Replayed)
	require.Equal(t, 0, d.stop(t))
	wantCode(t, 0, "check", "--cache", r.cache, "--backing", r.backing)
}

// TestSecondMountRefused: a second daemon on the same cache, or on the
// same mount point, is refused with a clear message while the first runs.
func TestSecondMountRefused(t *testing.T) {
	needFUSE(t)
	r := newRig(t, 16<<20, 8<<20)
	d := r.mount(t)
	writeDisk(t, r.disk(), []byte("first"), 0)

	other := filepath.Join(r.dir, "mnt2")
	require.NoError(t, os.Mkdir(other, 0o755))
	res := wantCode(t, 1, "mount", "--cache", r.cache, "--backing", r.backing, other)
	require.Contains(t, res.stderr, "another wbcache is using "+r.cache)
	require.Contains(t, res.stderr, fmt.Sprintf("pid %d", d.Pid))
	require.False(t, isMounted(other))

	// Same mount point, another cache and backing.
	r2 := &rig{dir: r.dir, backing: filepath.Join(r.dir, "b2.img"), cache: filepath.Join(r.dir, "c2.img"), mnt: r.mnt}
	require.NoError(t, device.Create(r2.backing, 16<<20))
	wantCode(t, 0, "format", "--cache", r2.cache, "--cache-size", "8M", "--backing", r2.backing)
	_, res2 := r2.startMount(t)
	require.NotNil(t, res2, "second mount on the same mount point must fail")
	require.Equal(t, 1, res2.code, res2.String())
	require.Contains(t, res2.stderr, "mount point "+r.mnt+": a wbcache daemon already serves it")

	// offline commands refuse too
	res = wantCode(t, 1, "check", "--cache", r.cache)
	require.Contains(t, res.stderr, "unmount first")
	res = wantCode(t, 1, "detach", "--cache", r.cache, "--backing", r.backing)
	require.Contains(t, res.stderr, "unmount first")
	res = wantCode(t, 1, "format", "--cache", r.cache, "--backing", r.backing, "--force")
	require.Contains(t, res.stderr, "another wbcache is using")

	// The first still works.
	b := make([]byte, 5)
	f, err := os.Open(r.disk())
	require.NoError(t, err)
	_, err = f.ReadAt(b, 0)
	f.Close()
	require.NoError(t, err)
	require.Equal(t, "first", string(b))
	require.Equal(t, 0, d.stop(t))
}

// TestFlushDetach: flush empties the cache of dirty blocks; detach (after
// more writes) leaves the backing file equal to the model.
func TestFlushDetach(t *testing.T) {
	needFUSE(t)
	const size = 32 << 20
	r := newRig(t, size, 16<<20)
	// A long max-dirty-age and high watermarks keep blocks dirty.
	d := r.mount(t, "--max-dirty-age", "1h", "--low-watermark", "90", "--high-watermark", "95")
	disk, err := os.OpenFile(r.disk(), os.O_RDWR, 0)
	require.NoError(t, err)
	model := make([]byte, size)
	rng := rand.New(rand.NewPCG(3, 4))
	modelIO(t, disk, model, rng, 200) // less than the cache holds
	s := r.status(t)
	require.Greater(t, s.Dirty, 0, "dirty blocks before flush")

	res := wantCode(t, 0, "flush", r.mnt)
	require.Contains(t, res.stdout, "flushed:")
	s = r.status(t)
	require.Equal(t, 0, s.Dirty)
	require.Equal(t, int64(0), s.DirtyBytes)
	require.Greater(t, s.DestagedBytes, uint64(0))
	// The backing file already holds everything (read it directly).
	requireSameBytes(t, model, readAll(t, r.backing), "backing after flush")

	// More writes, then stop and detach offline.
	modelIO(t, disk, model, rng, 60)
	require.NoError(t, disk.Close())
	require.Greater(t, r.status(t).Dirty, 0)
	require.Equal(t, 0, d.stop(t))
	wantCode(t, 0, "check", "--cache", r.cache, "--backing", r.backing)
	res = wantCode(t, 0, "detach", "--cache", r.cache, "--backing", r.backing)
	require.Contains(t, res.stdout, "can be used without wbcache")
	requireSameBytes(t, model, readAll(t, r.backing), "backing after detach")

	// The cache no longer opens: it must be formatted again.
	_, res2 := r.startMount(t)
	require.NotNil(t, res2)
	require.Equal(t, 1, res2.code)
	require.Contains(t, res2.stderr, "wbcache format")
	wantCode(t, 3, "check", "--cache", r.cache)
}

// TestModeAndSet: mode and set change the running daemon and persist.
func TestModeAndSet(t *testing.T) {
	needFUSE(t)
	r := newRig(t, 16<<20, 8<<20)
	d := r.mount(t, "--max-dirty-age", "7s", "--seq-cutoff", "2M")
	s := r.status(t)
	require.Equal(t, 7.0, s.Policy.MaxDirtyAgeSeconds)
	require.Equal(t, int64(2<<20), s.Policy.SeqCutoffBytes)

	res := wantCode(t, 0, "set", r.mnt, "workers=3", "idle-rate=20", "low-watermark=5", "high-watermark=70")
	require.Contains(t, res.stdout, "workers=3")
	s = r.status(t)
	require.Equal(t, 3, s.Policy.Workers)
	require.Equal(t, 20, s.Policy.IdleRateMiBps)
	require.Equal(t, 5, s.Policy.LowWatermark)
	require.Equal(t, 70, s.Policy.HighWatermark)

	res = wantCode(t, 2, "set", r.mnt, "low-watermark=80")
	require.Contains(t, res.stderr, "must be below high-watermark 70%")
	wantCode(t, 2, "set", r.mnt, "speed=11")

	// Dirty some blocks, then leave writeback: the switch drains them.
	// 1 MiB is an eighth of the cache: above a low watermark of 5% the
	// destager writes it back as soon as the foreground is idle, maybe
	// before the status below. Under a low watermark of 50% it stays
	// dirty for max-dirty-age (7 s).
	wantCode(t, 0, "set", r.mnt, "low-watermark=50")
	writeDisk(t, r.disk(), bytes.Repeat([]byte{7}, 1<<20), 0)
	require.Greater(t, r.status(t).Dirty, 0)
	res = wantCode(t, 0, "mode", r.mnt, "writethrough")
	require.Contains(t, res.stdout, "mode=writethrough")
	s = r.status(t)
	require.Equal(t, "writethrough", s.Mode)
	require.Equal(t, 0, s.Dirty)
	wantCode(t, 0, "set", r.mnt, "mode=writearound")
	require.Equal(t, "writearound", r.status(t).Mode)

	// Persisted across a remount without flags.
	require.Equal(t, 0, d.stop(t))
	d = r.mount(t)
	require.Contains(t, d.ready, "mode writearound")
	s = r.status(t)
	require.Equal(t, "writearound", s.Mode)
	require.Equal(t, 3, s.Policy.Workers)
	require.Equal(t, 7.0, s.Policy.MaxDirtyAgeSeconds)
	require.Equal(t, int64(2<<20), s.Policy.SeqCutoffBytes)
	require.Equal(t, 0, d.stop(t))

	// A flag overrides the saved mode.
	d = r.mount(t, "--mode", "writeback")
	require.Equal(t, "writeback", r.status(t).Mode)
	require.Equal(t, 0, d.stop(t))
}
