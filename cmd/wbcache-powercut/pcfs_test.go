package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/wbcache/wbcache/crashtest"
	"golang.org/x/sys/unix"
)

// fsBin is this command, built once for the tests that mount the
// filesystem. It must run in a process of its own: a Go process that
// faults on pages of a shared mapping served by its own FUSE server can
// deadlock (the faulting thread cannot be stopped for the garbage
// collector while it waits for the server's goroutines).
var (
	fsBin      string
	fsBinErr   error
	fsBinOnce  sync.Once
	fsBinDir   string
	fsBinBuilt bool
)

func TestMain(m *testing.M) {
	code := m.Run()
	if fsBinBuilt {
		os.RemoveAll(fsBinDir)
	}
	os.Exit(code)
}

func buildFS(t *testing.T) string {
	t.Helper()
	fsBinOnce.Do(func() {
		fsBinDir, fsBinErr = os.MkdirTemp("", "wbcache-powercut-test-")
		if fsBinErr != nil {
			return
		}
		fsBinBuilt = true
		fsBin = filepath.Join(fsBinDir, "wbcache-powercut")
		out, err := exec.Command("go", "build", "-o", fsBin, ".").CombinedOutput()
		if err != nil {
			fsBinErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	require.NoError(t, fsBinErr)
	return fsBin
}

// needFUSE skips unless the test can mount FUSE filesystems.
func needFUSE(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("SKIPPED: mounting the power-cut filesystem needs root (run 'sudo go test ./cmd/wbcache-powercut')")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skipf("SKIPPED: mounting the power-cut filesystem needs /dev/fuse (%v)", err)
	}
}

// fsRig is a directory with one 1 MiB file, served by "wbcache-powercut
// fs" in a child process.
type fsRig struct {
	dir, mnt, log string
	tr            *crashtest.Procs
	c             *crashtest.Child
}

const rigFileSize = 1 << 20

func newFSRig(t *testing.T) *fsRig {
	t.Helper()
	needFUSE(t)
	buildFS(t)
	base := t.TempDir()
	r := &fsRig{dir: filepath.Join(base, "dir"), mnt: filepath.Join(base, "mnt"), log: filepath.Join(base, "fs.log"), tr: crashtest.NewProcs()}
	require.NoError(t, os.Mkdir(r.dir, 0o755))
	require.NoError(t, os.Mkdir(r.mnt, 0o755))
	require.NoError(t, os.WriteFile(r.under(), nil, 0o600))
	require.NoError(t, os.Truncate(r.under(), rigFileSize))
	t.Cleanup(func() {
		r.tr.Cleanup(t.Logf)
		if t.Failed() {
			log, _ := os.ReadFile(r.log)
			t.Logf("filesystem log:\n%s", log)
		}
	})
	r.start(t)
	return r
}

// start runs a fresh instance on the directory. Its power cut drops every
// unsynced sector, so that the tests can say exactly what survives.
func (r *fsRig) start(t *testing.T) {
	t.Helper()
	c, err := r.tr.Start("fs", r.log, fsBin, "fs", "--seed", "1", "--keep-prob", "0", r.dir, r.mnt)
	require.NoError(t, err)
	r.tr.TrackMount(r.mnt)
	_, err = c.WaitLine(fsReadyPrefix, 30*time.Second)
	require.NoError(t, err)
	r.c = c
}

// stop stops the instance with SIGTERM; it must exit 0 and unmount.
func (r *fsRig) stop(t *testing.T) string {
	t.Helper()
	r.c.Signal(syscall.SIGTERM)
	line, err := r.c.WaitLine(fsStoppedPrefix, 30*time.Second)
	require.NoError(t, err)
	require.True(t, r.c.Wait(30*time.Second), "the filesystem exits after SIGTERM")
	require.Equal(t, 0, r.c.ExitCode())
	require.False(t, crashtest.IsMounted(r.mnt), "unmounted after SIGTERM")
	return line
}

// cut cuts the power and returns the sectors kept and dropped.
func (r *fsRig) cut(t *testing.T) (kept, dropped int) {
	t.Helper()
	r.c.Signal(syscall.SIGUSR1)
	line, err := r.c.WaitLine(fsCutPrefix, 30*time.Second)
	require.NoError(t, err)
	var files int
	_, err = fmt.Sscanf(strings.TrimPrefix(line, fsCutPrefix), "%d files, %d sectors kept, %d dropped", &files, &kept, &dropped)
	require.NoError(t, err, line)
	return kept, dropped
}

func (r *fsRig) path() string  { return filepath.Join(r.mnt, "f.img") }
func (r *fsRig) under() string { return filepath.Join(r.dir, "f.img") }

// cutAndRestart cuts the power, stops the instance and starts a fresh one
// on the directory.
func (r *fsRig) cutAndRestart(t *testing.T) (kept, dropped int) {
	t.Helper()
	kept, dropped = r.cut(t)
	require.Contains(t, r.stop(t), "after the power cut")
	r.start(t)
	return kept, dropped
}

func readAt(t *testing.T, path string, off int64, n int) []byte {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	p := make([]byte, n)
	_, err = f.ReadAt(p, off)
	require.NoError(t, err)
	return p
}

func pattern(c byte, n int) []byte { return bytes.Repeat([]byte{c}, n) }

// TestFSWriteCut: a write without fsync is served until the cut and lost
// with it; a write followed by fsync reaches the directory and survives.
func TestFSWriteCut(t *testing.T) {
	r := newFSRig(t)
	f, err := os.OpenFile(r.path(), os.O_RDWR, 0)
	require.NoError(t, err)
	_, err = f.WriteAt(pattern('b', 4096), 8192)
	require.NoError(t, err)
	require.Equal(t, make([]byte, 4096), readAt(t, r.under(), 8192, 4096), "not in the directory without fsync")
	require.NoError(t, f.Sync())
	require.Equal(t, pattern('b', 4096), readAt(t, r.under(), 8192, 4096), "in the directory after fsync")

	_, err = f.WriteAt(pattern('a', 4096), 0)
	require.NoError(t, err)
	require.Equal(t, pattern('a', 4096), readAt(t, r.path(), 0, 4096), "served before the cut")
	require.Equal(t, make([]byte, 4096), readAt(t, r.under(), 0, 4096), "not in the directory without fsync")

	// Grow the file without a sync: the size shows at once.
	_, err = f.WriteAt([]byte("tail"), rigFileSize+100)
	require.NoError(t, err)
	st, err := f.Stat()
	require.NoError(t, err)
	require.Equal(t, int64(rigFileSize+104), st.Size())
	require.NoError(t, f.Close())

	kept, dropped := r.cutAndRestart(t)
	require.Equal(t, 0, kept)
	require.Equal(t, 8+1, dropped, "the unsynced block and the sector of the extension")
	require.Equal(t, make([]byte, 4096), readAt(t, r.path(), 0, 4096), "an unsynced write is lost")
	require.Equal(t, pattern('b', 4096), readAt(t, r.path(), 8192, 4096), "a synced write survives")
	st2, err := os.Stat(r.path())
	require.NoError(t, err)
	require.Equal(t, int64(rigFileSize), st2.Size(), "the unsynced extension is lost")
}

// TestFSAfterCut: once the power is cut, writes and fsyncs succeed and are
// lost, while reads go on serving the state of the cut.
func TestFSAfterCut(t *testing.T) {
	r := newFSRig(t)
	f, err := os.OpenFile(r.path(), os.O_RDWR|unix.O_DIRECT, 0)
	require.NoError(t, err)
	defer f.Close()
	buf := alignedBuffer(4096)
	copy(buf, pattern('c', 4096))
	_, err = f.WriteAt(buf, 0)
	require.NoError(t, err)
	require.NoError(t, f.Sync())
	r.cut(t)

	copy(buf, pattern('d', 4096))
	_, err = f.WriteAt(buf, 0)
	require.NoError(t, err, "a write after the cut succeeds")
	require.NoError(t, f.Sync(), "an fsync after the cut succeeds")
	require.Equal(t, pattern('c', 4096), readAt(t, r.under(), 0, 4096))
	got := alignedBuffer(4096)
	_, err = f.ReadAt(got, 0)
	require.NoError(t, err)
	require.Equal(t, pattern('c', 4096), got, "an O_DIRECT read serves the state of the cut")
}

// TestFSDirectIO: O_DIRECT opens work on the mount; aligned direct writes
// go to the filesystem as they are made, unsynced until fsync. (The kernel
// also accepts unaligned O_DIRECT I/O on FUSE.)
func TestFSDirectIO(t *testing.T) {
	r := newFSRig(t)
	f, err := os.OpenFile(r.path(), os.O_RDWR|unix.O_DIRECT, 0)
	require.NoError(t, err)
	buf := alignedBuffer(8192)
	copy(buf, pattern('e', 8192))
	_, err = f.WriteAt(buf, 4096)
	require.NoError(t, err)
	require.Equal(t, make([]byte, 8192), readAt(t, r.under(), 4096, 8192), "unsynced")
	n, err := unix.Pwrite(int(f.Fd()), []byte("unaligned"), 100)
	t.Logf("unaligned O_DIRECT write on the FUSE mount: %d, %v", n, err)
	require.NoError(t, unix.Fdatasync(int(f.Fd())))
	require.Equal(t, pattern('e', 8192), readAt(t, r.under(), 4096, 8192))

	copy(buf, pattern('f', 8192))
	_, err = f.WriteAt(buf, 64<<10)
	require.NoError(t, err)
	require.NoError(t, f.Close())
	kept, dropped := r.cutAndRestart(t)
	require.Equal(t, 0, kept)
	require.Equal(t, 16, dropped, "the direct write reached the filesystem and was not synced")
	require.Equal(t, make([]byte, 8192), readAt(t, r.path(), 64<<10, 8192))
}

// TestFSMmap: a shared writable mapping works on the mount; msync or fsync
// brings its writes to the directory; an unsynced mapped write is lost
// with the power, whether the kernel wrote the page back before the cut or
// only after it.
func TestFSMmap(t *testing.T) {
	r := newFSRig(t)
	f, err := os.OpenFile(r.path(), os.O_RDWR, 0)
	require.NoError(t, err)
	mem, err := unix.Mmap(int(f.Fd()), 0, 64<<10, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	require.NoError(t, err)

	copy(mem[0:], pattern('m', 4096))
	require.NoError(t, unix.Msync(mem[:4096], unix.MS_SYNC))
	require.Equal(t, pattern('m', 4096), readAt(t, r.under(), 0, 4096), "msync reaches the directory")

	copy(mem[4096:], pattern('n', 4096))
	require.NoError(t, f.Sync())
	require.Equal(t, pattern('n', 4096), readAt(t, r.under(), 4096, 4096), "fsync writes back mapped pages")

	copy(mem[8192:], pattern('o', 4096)) // never synced
	// Half of the time let the kernel write the dirty page back before the
	// cut (as unsynced data), through the last close of the file.
	copy(mem[12288:], pattern('p', 4096))
	require.NoError(t, unix.Munmap(mem))
	require.NoError(t, f.Close())
	require.Equal(t, make([]byte, 4096), readAt(t, r.under(), 12288, 4096))

	r.cutAndRestart(t)
	require.Equal(t, pattern('m', 4096), readAt(t, r.path(), 0, 4096))
	require.Equal(t, pattern('n', 4096), readAt(t, r.path(), 4096, 4096))
	require.Equal(t, make([]byte, 4096), readAt(t, r.path(), 8192, 4096), "an unsynced mapped write is lost")
	require.Equal(t, make([]byte, 4096), readAt(t, r.path(), 12288, 4096), "an unsynced mapped write is lost")
}

// TestFSMmapDirtyAtCut: a page dirtied through a mapping that is still
// mapped at the cut is lost, although the kernel writes it back later.
func TestFSMmapDirtyAtCut(t *testing.T) {
	r := newFSRig(t)
	f, err := os.OpenFile(r.path(), os.O_RDWR, 0)
	require.NoError(t, err)
	mem, err := unix.Mmap(int(f.Fd()), 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	require.NoError(t, err)
	copy(mem, pattern('q', 4096))
	r.cut(t)
	require.NoError(t, unix.Msync(mem, unix.MS_SYNC), "a sync after the cut succeeds")
	require.NoError(t, unix.Munmap(mem))
	require.NoError(t, f.Close())
	r.stop(t)
	r.start(t)
	require.Equal(t, make([]byte, 4096), readAt(t, r.path(), 0, 4096))
}

// TestFSTruncatePunch: truncation and punched holes are unsynced changes
// like writes; create, rename and unlink go to the directory at once.
func TestFSTruncatePunch(t *testing.T) {
	r := newFSRig(t)
	f, err := os.OpenFile(r.path(), os.O_RDWR, 0)
	require.NoError(t, err)
	_, err = f.WriteAt(pattern('x', 3*4096), 0)
	require.NoError(t, err)
	require.NoError(t, f.Sync())
	require.NoError(t, unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 4096, 4096))
	require.Equal(t, make([]byte, 4096), readAt(t, r.path(), 4096, 4096), "a punched hole reads as zeros")
	require.NoError(t, f.Truncate(6000))
	st, err := f.Stat()
	require.NoError(t, err)
	require.Equal(t, int64(6000), st.Size())
	require.NoError(t, f.Close())

	g, err := os.Create(filepath.Join(r.mnt, "new.img"))
	require.NoError(t, err)
	_, err = g.Write([]byte("new"))
	require.NoError(t, err)
	require.NoError(t, g.Sync())
	require.NoError(t, g.Close())
	require.NoError(t, os.Rename(filepath.Join(r.mnt, "new.img"), filepath.Join(r.mnt, "renamed.img")))
	_, err = os.Stat(filepath.Join(r.dir, "renamed.img"))
	require.NoError(t, err)

	r.cutAndRestart(t) // drops the punch and the truncation
	require.Equal(t, pattern('x', 3*4096), readAt(t, r.path(), 0, 3*4096))
	st2, err := os.Stat(r.path())
	require.NoError(t, err)
	require.Equal(t, int64(rigFileSize), st2.Size())
	require.Equal(t, []byte("new"), readAt(t, filepath.Join(r.mnt, "renamed.img"), 0, 3))
	require.NoError(t, os.Remove(filepath.Join(r.mnt, "renamed.img")))
	_, err = os.Stat(filepath.Join(r.dir, "renamed.img"))
	require.ErrorIs(t, err, os.ErrNotExist)
}

// TestFSCleanStop: without a cut, stopping applies the unsynced writes (a
// clean shutdown).
func TestFSCleanStop(t *testing.T) {
	r := newFSRig(t)
	f, err := os.OpenFile(r.path(), os.O_RDWR, 0)
	require.NoError(t, err)
	_, err = f.WriteAt(pattern('z', 100), 5000)
	require.NoError(t, err)
	require.NoError(t, f.Close())
	require.Contains(t, r.stop(t), "cleanly: 1 unsynced sectors applied")
	require.Equal(t, pattern('z', 100), readAt(t, r.under(), 5000, 100))
	r.start(t)
}
