package fuse

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/wbcache/wbcache/fuse/internal/uring"
	"golang.org/x/sys/unix"
)

const fuseSuperMagic = 0x65735546

// requireFUSE skips the test unless it can mount: root and /dev/fuse.
func requireFUSE(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("SKIPPED: needs root and /dev/fuse to mount: run `go test ./fuse/` as root")
	}
	f, err := os.OpenFile("/dev/fuse", os.O_RDWR, 0)
	if err != nil {
		t.Skipf("SKIPPED: needs root and /dev/fuse to mount: opening /dev/fuse: %v", err)
	}
	f.Close()
}

func testLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// mountMem mounts a fresh memBackend of the given size into a temporary
// directory and unmounts it when the test ends. setup, if non-nil, can
// adjust the backend before mounting.
func mountMem(t *testing.T, size int, opts Options, setup func(*memBackend)) (*Server, *memBackend, string) {
	t.Helper()
	requireFUSE(t)
	b := newMemBackend(size)
	if setup != nil {
		setup(b)
	}
	if opts.Logger == nil {
		opts.Logger = testLogger()
	}
	mp := t.TempDir()
	opts.SelfAccess = true
	if opts.IOUring == IOUringAuto {
		opts.IOUring = testTransport.ring
		opts.UnbatchedDev = testTransport.unbatched
	}
	s, err := Mount(mp, b, opts)
	if err != nil {
		t.Fatalf("Mount: %v", err)
	}
	// Registered before the checks below, so that a failed one does not
	// leave the mount behind.
	ring, dev := s.IOUring(), s.DevBatched()
	t.Cleanup(func() {
		if (ring || dev) && s.RingRequests() == 0 && !t.Failed() {
			t.Errorf("serving through io_uring (FUSE over io_uring %v), but no request was answered through it", ring)
		}
		unmountAndWait(t, s)
		if s.DevBatched() {
			t.Errorf("/dev/fuse threads still running after the connection ended")
		}
	})
	if want := opts.IOUring == IOUringOn; ring != want {
		t.Fatalf("Mount with IOUring %v: serving through io_uring = %v", opts.IOUring, ring)
	}
	if want := opts.IOUring == IOUringOff && !opts.UnbatchedDev && uring.ProbeDev() == nil; dev != want {
		t.Fatalf("Mount with IOUring %v, UnbatchedDev %v: /dev/fuse batched through io_uring = %v", opts.IOUring, opts.UnbatchedDev, dev)
	}
	return s, b, filepath.Join(mp, diskName)
}

// testTransport is the FUSE transport mountMem uses when the test does not
// choose one; eachTransport sets it for its subtests.
var testTransport = testTr{ring: IOUringOff}

type testTr struct {
	ring      IOUringMode
	unbatched bool
}

// eachTransport runs f as three subtests: requests through /dev/fuse read
// through io_uring, through /dev/fuse read by go-fuse, and through FUSE
// over io_uring (which turns on the fuse module's enable_uring parameter,
// as `wbcache mount` does by default).
func eachTransport(t *testing.T, f func(t *testing.T)) {
	for _, c := range []struct {
		name string
		tr   testTr
	}{
		{"devfuse", testTr{ring: IOUringOff}},
		{"devfuse-unbatched", testTr{ring: IOUringOff, unbatched: true}},
		{"uring", testTr{ring: IOUringOn}},
	} {
		t.Run(c.name, func(t *testing.T) {
			switch {
			case c.tr.ring == IOUringOn:
				requireRing(t)
			case !c.tr.unbatched:
				requireDevBatch(t)
			}
			testTransport = c.tr
			defer func() { testTransport = testTr{ring: IOUringOff} }()
			f(t)
		})
	}
}

// requireDevBatch skips, loudly, where /dev/fuse cannot be read through
// io_uring.
func requireDevBatch(t *testing.T) {
	t.Helper()
	requireFUSE(t)
	if err := uring.ProbeDev(); err != nil {
		t.Skipf("SKIPPED: io_uring cannot read /dev/fuse here (needs Linux 5.11+ with io_uring enabled): %v", err)
	}
}

// requireRing skips, loudly, where FUSE over io_uring cannot run.
func requireRing(t *testing.T) {
	t.Helper()
	requireFUSE(t)
	if err := EnableIOUring(); err != nil {
		t.Skipf("SKIPPED: FUSE over io_uring unavailable (needs Linux 6.14+ built with CONFIG_FUSE_IO_URING): %v", err)
	}
	if err := uring.Probe(); err != nil {
		t.Skipf("SKIPPED: io_uring unavailable (kernel.io_uring_disabled?): %v", err)
	}
}

func unmountAndWait(t *testing.T, s *Server) {
	t.Helper()
	if err := s.Unmount(); err != nil {
		t.Errorf("Unmount: %v", err)
	}
	waitDone(t, s, 10*time.Second)
}

func waitDone(t *testing.T, s *Server, d time.Duration) {
	t.Helper()
	done := make(chan struct{})
	go func() { s.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(d):
		t.Errorf("Wait did not return within %v", d)
	}
}

// alignedBuf returns an n-byte buffer aligned to 4 KiB for O_DIRECT.
func alignedBuf(n int) []byte {
	b := make([]byte, n+4096)
	skip := (4096 - int(uintptr(unsafe.Pointer(&b[0]))&4095)) & 4095
	return b[skip : skip+n]
}

func isFUSEMount(t *testing.T, path string) bool {
	t.Helper()
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		t.Fatalf("statfs %s: %v", path, err)
	}
	return st.Type == fuseSuperMagic
}

func openDisk(t *testing.T, path string, flags int) *os.File {
	t.Helper()
	f, err := os.OpenFile(path, flags, 0)
	if err != nil {
		t.Fatalf("open %s: %v", path, err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func TestMountTree(t *testing.T) { eachTransport(t, tMountTree) }

func tMountTree(t *testing.T) {
	s, _, disk := mountMem(t, 1<<20+512, Options{}, nil)
	mp := s.Mountpoint()

	st, err := os.Stat(disk)
	if err != nil {
		t.Fatal(err)
	}
	sys := st.Sys().(*syscall.Stat_t)
	if st.Mode() != 0o600 || st.Size() != 1<<20+512 || sys.Uid != uint32(os.Geteuid()) || sys.Gid != uint32(os.Getegid()) {
		t.Fatalf("disk: mode %v size %d uid %d gid %d", st.Mode(), st.Size(), sys.Uid, sys.Gid)
	}
	ents, err := os.ReadDir(mp)
	if err != nil || len(ents) != 1 || ents[0].Name() != diskName {
		t.Fatalf("readdir = %v, %v; want [disk]", ents, err)
	}
	if _, err := os.Stat(filepath.Join(mp, statsName)); !errors.Is(err, syscall.ENOENT) {
		t.Fatalf("stats without Stats option: %v, want ENOENT", err)
	}
	if err := os.Mkdir(filepath.Join(mp, "d"), 0o755); !errors.Is(err, syscall.EPERM) {
		t.Fatalf("mkdir: %v, want EPERM", err)
	}
	if _, err := os.Create(filepath.Join(mp, "new")); !errors.Is(err, syscall.EPERM) {
		t.Fatalf("create: %v, want EPERM", err)
	}
	if err := os.Remove(disk); !errors.Is(err, syscall.EPERM) {
		t.Fatalf("unlink: %v, want EPERM", err)
	}
	if err := os.Rename(disk, filepath.Join(mp, "other")); !errors.Is(err, syscall.EPERM) {
		t.Fatalf("rename: %v, want EPERM", err)
	}
	var sfs unix.Statfs_t
	if err := unix.Statfs(mp, &sfs); err != nil || sfs.Type != fuseSuperMagic || sfs.Bsize != 4096 || sfs.Blocks != (1<<20+512)/4096 {
		t.Fatalf("statfs: %+v, %v", sfs, err)
	}

	// /proc/self/mountinfo shows the fsname, the type and default_permissions.
	m, found, err := findMount(mp)
	if err != nil || !found || m.fsType != "fuse.wbcache" {
		t.Fatalf("findMount = %+v %v %v", m, found, err)
	}
	info, _ := os.ReadFile("/proc/self/mountinfo")
	var line string
	for l := range strings.Lines(string(info)) {
		if strings.Contains(l, " "+mp+" ") {
			line = l
		}
	}
	if !strings.Contains(line, " fuse.wbcache wbcache ") || !strings.Contains(line, "default_permissions") || !strings.Contains(line, "max_read=1048576") {
		t.Fatalf("mountinfo line: %q", line)
	}
}

func TestRandomIO(t *testing.T) { eachTransport(t, tRandomIO) }

func tRandomIO(t *testing.T) {
	const size = 4 << 20
	_, b, disk := mountMem(t, size, Options{}, nil)
	direct := openDisk(t, disk, os.O_RDWR|syscall.O_DIRECT)
	buffered := openDisk(t, disk, os.O_RDWR)
	dfd, bfd := int(direct.Fd()), int(buffered.Fd())

	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 42))
	model := make([]byte, size)
	abuf := alignedBuf(300 * 4096) // up to 1.2 MiB: beyond one 1 MiB FUSE request
	ubuf := make([]byte, 70000)

	for i := range 800 {
		switch op := rng.IntN(4); op {
		case 0, 1: // aligned O_DIRECT
			off := rng.IntN(size/4096) * 4096
			n := min((1+rng.IntN(300))*4096, size-off)
			p := abuf[:n]
			if op == 0 {
				fillRandom(rng, p)
				if got, err := unix.Pwrite(dfd, p, int64(off)); err != nil || got != n {
					t.Fatalf("op %d: direct pwrite [%d,+%d) = %d, %v", i, off, n, got, err)
				}
				copy(model[off:], p)
			} else {
				clear(p)
				if got, err := unix.Pread(dfd, p, int64(off)); err != nil || got != n {
					t.Fatalf("op %d: direct pread [%d,+%d) = %d, %v", i, off, n, got, err)
				}
				if !bytes.Equal(p, model[off:off+n]) {
					t.Fatalf("op %d: direct pread [%d,+%d): data differs from model", i, off, n)
				}
			}
		case 2, 3: // unaligned, buffered fd (the file is direct_io anyway)
			off := rng.IntN(size)
			n := 1 + rng.IntN(len(ubuf))
			p := ubuf[:n]
			want := min(n, size-off)
			if op == 2 {
				fillRandom(rng, p)
				got, err := unix.Pwrite(bfd, p, int64(off))
				if err != nil || got != want {
					t.Fatalf("op %d: pwrite [%d,+%d) = %d, %v; want %d", i, off, n, got, err, want)
				}
				copy(model[off:], p[:want])
			} else {
				got, err := unix.Pread(bfd, p, int64(off))
				if err != nil || got != want {
					t.Fatalf("op %d: pread [%d,+%d) = %d, %v; want %d", i, off, n, got, err, want)
				}
				if !bytes.Equal(p[:got], model[off:off+got]) {
					t.Fatalf("op %d: pread [%d,+%d): data differs from model", i, off, n)
				}
			}
		}
	}
	all, err := os.ReadFile(disk)
	if err != nil || !bytes.Equal(all, model) {
		t.Fatalf("whole-disk read differs from model (err %v, len %d)", err, len(all))
	}
	if !bytes.Equal(b.snapshot(), model) {
		t.Fatal("backend contents differ from model")
	}
}

func fillRandom(rng *rand.Rand, p []byte) {
	for i := 0; i+8 <= len(p); i += 8 {
		v := rng.Uint64()
		for j := range 8 {
			p[i+j] = byte(v >> (8 * j))
		}
	}
	for i := len(p) &^ 7; i < len(p); i++ {
		p[i] = byte(rng.Uint32())
	}
}

func TestEndOfDisk(t *testing.T) { eachTransport(t, tEndOfDisk) }

func tEndOfDisk(t *testing.T) {
	const size = 1<<20 + 3*512
	_, _, disk := mountMem(t, size, Options{}, nil)
	f := openDisk(t, disk, os.O_RDWR)
	fd := int(f.Fd())
	p := bytes.Repeat([]byte{0x5A}, 8192)

	if n, err := unix.Pread(fd, p, size); n != 0 || err != nil {
		t.Fatalf("pread at size = %d, %v; want 0 (EOF)", n, err)
	}
	if n, err := unix.Pread(fd, p, size+1<<20); n != 0 || err != nil {
		t.Fatalf("pread past size = %d, %v; want 0 (EOF)", n, err)
	}
	if n, err := unix.Pwrite(fd, p, size-1000); n != 1000 || err != nil {
		t.Fatalf("pwrite across the end = %d, %v; want a 1000-byte short write", n, err)
	}
	if n, err := unix.Pread(fd, p, size-1000); n != 1000 || err != nil || !bytes.Equal(p[:1000], bytes.Repeat([]byte{0x5A}, 1000)) {
		t.Fatalf("pread across the end = %d, %v; want 1000 bytes of data", n, err)
	}
	if _, err := unix.Pwrite(fd, p, size); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("pwrite at size: %v, want ENOSPC", err)
	}
	if _, err := unix.Pwrite(fd, p, size+4096); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("pwrite past size: %v, want ENOSPC", err)
	}
	// O_DIRECT too.
	d := openDisk(t, disk, os.O_RDWR|syscall.O_DIRECT)
	ab := alignedBuf(8192)
	if n, err := unix.Pread(int(d.Fd()), ab, size-512); n != 512 || err != nil {
		t.Fatalf("direct pread across the end = %d, %v; want 512", n, err)
	}
	if _, err := unix.Pwrite(int(d.Fd()), ab, size+4096); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("direct pwrite past size: %v, want ENOSPC", err)
	}
	if st, _ := os.Stat(disk); st.Size() != size {
		t.Fatalf("size changed to %d", st.Size())
	}
}

func TestFsyncReachesBackend(t *testing.T) { eachTransport(t, tFsyncReachesBackend) }

func tFsyncReachesBackend(t *testing.T) {
	_, b, disk := mountMem(t, 1<<20, Options{}, nil)
	f := openDisk(t, disk, os.O_RDWR)
	if _, err := f.WriteAt([]byte("hello"), 0); err != nil {
		t.Fatal(err)
	}
	s0 := b.syncs.Load()
	if err := f.Sync(); err != nil {
		t.Fatalf("fsync: %v", err)
	}
	if got := b.syncs.Load() - s0; got != 1 {
		t.Fatalf("fsync: %d backend syncs, want 1", got)
	}
	if err := unix.Fdatasync(int(f.Fd())); err != nil {
		t.Fatalf("fdatasync: %v", err)
	}
	if got := b.syncs.Load() - s0; got != 2 {
		t.Fatalf("fdatasync: %d backend syncs in total, want 2", got)
	}
	// close sends FLUSH, which is not a durability point.
	g, err := os.OpenFile(disk, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := g.WriteAt([]byte("x"), 10); err != nil {
		t.Fatal(err)
	}
	if err := g.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	if got := b.syncs.Load() - s0; got != 2 {
		t.Fatalf("close caused a backend sync (%d in total)", got)
	}
	// A failing Sync reaches the caller as EIO; later fsyncs still reach
	// the backend (the kernel did not switch FSYNC off).
	b.inject("sync", syscall.ENOSYS)
	if err := f.Sync(); !errors.Is(err, syscall.EIO) {
		t.Fatalf("fsync with failing backend: %v, want EIO", err)
	}
	b.inject("sync", nil)
	if err := f.Sync(); err != nil {
		t.Fatalf("fsync after failure: %v", err)
	}
	if got := b.syncs.Load() - s0; got != 4 {
		t.Fatalf("%d backend syncs in total, want 4", got)
	}
}

func TestBackendErrors(t *testing.T) { eachTransport(t, tBackendErrors) }

func tBackendErrors(t *testing.T) {
	_, b, disk := mountMem(t, 1<<20, Options{}, nil)
	f := openDisk(t, disk, os.O_RDWR)
	fd := int(f.Fd())
	p := make([]byte, 4096)
	for _, tc := range []struct {
		op   string
		err  error
		want syscall.Errno
	}{
		{"read", syscall.EINVAL, syscall.EINVAL},
		{"read", errors.New("unknown"), syscall.EIO},
		{"write", fmt.Errorf("wrapped: %w", syscall.ENOSPC), syscall.ENOSPC},
		{"write", syscall.ENOSYS, syscall.EIO},
		{"discard", syscall.EOPNOTSUPP, syscall.EOPNOTSUPP},
	} {
		b.inject(tc.op, tc.err)
		var err error
		switch tc.op {
		case "read":
			_, err = unix.Pread(fd, p, 0)
		case "write":
			_, err = unix.Pwrite(fd, p, 0)
		case "discard":
			err = unix.Fallocate(fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 0, 4096)
		}
		b.inject(tc.op, nil)
		if !errors.Is(err, tc.want) {
			t.Errorf("%s with backend error %v: got %v, want %v", tc.op, tc.err, err, tc.want)
		}
	}
	if _, err := unix.Pread(fd, p, 0); err != nil {
		t.Fatalf("read after errors: %v", err)
	}
}

func TestFallocate(t *testing.T) { eachTransport(t, tFallocate) }

func tFallocate(t *testing.T) {
	const size = 1 << 20
	_, b, disk := mountMem(t, size, Options{}, nil)
	f := openDisk(t, disk, os.O_RDWR)
	fd := int(f.Fd())
	fill := bytes.Repeat([]byte{0xAB}, size)

	for _, tc := range []struct {
		name       string
		mode       uint32
		off, n     int64
		zeroFrom   int64
		zeroTo     int64
		wantDiscar int64
	}{
		{"punch hole", unix.FALLOC_FL_PUNCH_HOLE | unix.FALLOC_FL_KEEP_SIZE, 8192 + 100, 50000, 8192 + 100, 8192 + 100 + 50000, 1},
		{"punch across end", unix.FALLOC_FL_PUNCH_HOLE | unix.FALLOC_FL_KEEP_SIZE, size - 4096, 1 << 20, size - 4096, size, 1},
		{"zero range keep size", unix.FALLOC_FL_ZERO_RANGE | unix.FALLOC_FL_KEEP_SIZE, 333, 4444, 333, 333 + 4444, 1},
		{"zero range", unix.FALLOC_FL_ZERO_RANGE, 65536, 65536, 65536, 131072, 1},
		{"allocate", 0, 0, size, 0, 0, 0},
	} {
		if _, err := f.WriteAt(fill, 0); err != nil {
			t.Fatal(err)
		}
		d0 := b.discards.Load()
		if err := unix.Fallocate(fd, tc.mode, tc.off, tc.n); err != nil {
			t.Errorf("%s: fallocate: %v", tc.name, err)
			continue
		}
		if got := b.discards.Load() - d0; got != tc.wantDiscar {
			t.Errorf("%s: %d backend discards, want %d", tc.name, got, tc.wantDiscar)
		}
		got := make([]byte, size)
		if _, err := f.ReadAt(got, 0); err != nil {
			t.Fatal(err)
		}
		want := bytes.Clone(fill)
		clear(want[tc.zeroFrom:tc.zeroTo])
		if !bytes.Equal(got, want) {
			t.Errorf("%s: contents wrong after fallocate", tc.name)
		}
	}
	for _, tc := range []struct {
		name   string
		mode   uint32
		off, n int64
	}{
		{"allocate beyond end", 0, size - 4096, 8192},
		{"zero range beyond end", unix.FALLOC_FL_ZERO_RANGE, size - 4096, 8192},
		{"collapse range", unix.FALLOC_FL_COLLAPSE_RANGE, 0, 4096},
		{"insert range", unix.FALLOC_FL_INSERT_RANGE, 0, 4096},
	} {
		if err := unix.Fallocate(fd, tc.mode, tc.off, tc.n); !errors.Is(err, syscall.EOPNOTSUPP) {
			t.Errorf("%s: %v, want EOPNOTSUPP", tc.name, err)
		}
	}
	// The kernel still sends FALLOCATE after the refusals above.
	d0 := b.discards.Load()
	if err := unix.Fallocate(fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 0, 4096); err != nil || b.discards.Load() != d0+1 {
		t.Fatalf("punch after refusals: %v, %d discards", err, b.discards.Load()-d0)
	}
}

func TestTruncateAndAttrs(t *testing.T) { eachTransport(t, tTruncateAndAttrs) }

func tTruncateAndAttrs(t *testing.T) {
	const size = 1 << 20
	_, _, disk := mountMem(t, size, Options{}, nil)
	if err := os.Truncate(disk, size/2); !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("truncate to half: %v, want EINVAL", err)
	}
	if err := os.Truncate(disk, 2*size); !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("truncate to double: %v, want EINVAL", err)
	}
	if err := os.Truncate(disk, size); err != nil {
		t.Fatalf("truncate to the same size: %v", err)
	}
	if _, err := os.OpenFile(disk, os.O_WRONLY|os.O_TRUNC, 0); !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("open O_TRUNC: %v, want EINVAL", err)
	}
	f := openDisk(t, disk, os.O_RDWR)
	if err := f.Truncate(0); !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("ftruncate: %v, want EINVAL", err)
	}
	if err := os.Chmod(disk, 0o640); err != nil {
		t.Fatalf("chmod: %v", err)
	}
	mt := time.Unix(1_500_000_000, 123)
	if err := os.Chtimes(disk, mt, mt); err != nil {
		t.Fatalf("utimes: %v", err)
	}
	if err := os.Chown(disk, 1000, 1000); err != nil {
		t.Fatalf("chown: %v", err)
	}
	st, err := os.Stat(disk)
	if err != nil {
		t.Fatal(err)
	}
	sys := st.Sys().(*syscall.Stat_t)
	if st.Mode() != 0o640 || !st.ModTime().Equal(mt) || sys.Uid != 1000 || st.Size() != size {
		t.Fatalf("after chmod/utimes/chown: mode %v mtime %v uid %d size %d", st.Mode(), st.ModTime(), sys.Uid, st.Size())
	}
}

func TestStatsFile(t *testing.T) { eachTransport(t, tStatsFile) }

func tStatsFile(t *testing.T) {
	var mu sync.Mutex
	calls := 0
	stats := func() []byte {
		mu.Lock()
		defer mu.Unlock()
		calls++
		// Larger than one read request, to exercise offsets.
		return fmt.Appendf(nil, "{\"calls\":%d,\"pad\":%q}\n", calls, strings.Repeat("x", 300<<10))
	}
	s, _, _ := mountMem(t, 1<<20, Options{Stats: stats}, nil)
	path := filepath.Join(s.Mountpoint(), statsName)

	st, err := os.Stat(path)
	if err != nil || st.Mode() != 0o400 {
		t.Fatalf("stat stats: %v, %v", st, err)
	}
	ents, err := os.ReadDir(s.Mountpoint())
	if err != nil || len(ents) != 2 || ents[0].Name() != diskName || ents[1].Name() != statsName {
		t.Fatalf("readdir = %v, %v", ents, err)
	}
	for want := 1; want <= 2; want++ {
		got, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.HasPrefix(got, fmt.Appendf(nil, "{\"calls\":%d,", want)) || len(got) < 300<<10 || got[len(got)-1] != '\n' {
			t.Fatalf("read %d: %d bytes, starts %q", want, len(got), got[:min(20, len(got))])
		}
	}
	// The content is fixed per open file.
	f := openDisk(t, path, os.O_RDONLY)
	first, err := bufio.NewReader(f).ReadString(',')
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.ReadFile(path); err != nil { // another open in between
		t.Fatal(err)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	again, _ := bufio.NewReader(f).ReadString(',')
	if first != again || first != "{\"calls\":3," {
		t.Fatalf("snapshot changed within one open file: %q then %q", first, again)
	}
	if _, err := os.OpenFile(path, os.O_WRONLY, 0); !errors.Is(err, syscall.EACCES) {
		t.Fatalf("open stats for writing: %v, want EACCES", err)
	}
}

func TestConcurrentWriters(t *testing.T) { eachTransport(t, tConcurrentWriters) }

func tConcurrentWriters(t *testing.T) {
	const (
		size    = 8 << 20
		workers = 8
		region  = size / workers
		ops     = 150
	)
	_, b, disk := mountMem(t, size, Options{}, func(b *memBackend) { b.writeDelay = 200 * time.Microsecond })
	f := openDisk(t, disk, os.O_RDWR|syscall.O_DIRECT) // one fd shared by all writers
	fd := int(f.Fd())
	model := make([]byte, size)
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)

	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(w)))
			base := w * region
			buf := alignedBuf(64 << 10)
			rbuf := alignedBuf(64 << 10)
			for i := range ops {
				off := base + rng.IntN(region/4096)*4096
				n := min((1+rng.IntN(16))*4096, base+region-off)
				p := buf[:n]
				fillRandom(rng, p)
				if got, err := unix.Pwrite(fd, p, int64(off)); err != nil || got != n {
					errs <- fmt.Errorf("worker %d op %d: pwrite [%d,+%d) = %d, %v", w, i, off, n, got, err)
					return
				}
				copy(model[off:], p) // each worker owns its region of the model
				if i%5 == 0 {
					q := rbuf[:n]
					if got, err := unix.Pread(fd, q, int64(off)); err != nil || got != n || !bytes.Equal(q, p) {
						errs <- fmt.Errorf("worker %d op %d: read back [%d,+%d) = %d, %v, equal %v", w, i, off, n, got, err, bytes.Equal(q, p))
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		return
	}
	all, err := os.ReadFile(disk)
	if err != nil || !bytes.Equal(all, model) {
		t.Fatalf("disk differs from model after concurrent writes (err %v)", err)
	}
	if !bytes.Equal(b.snapshot(), model) {
		t.Fatal("backend differs from model")
	}
	// FOPEN_PARALLEL_DIRECT_WRITES: the kernel must not serialise writes
	// to the file, so the backend sees several at once.
	if got := b.maxInflight.Load(); got < 2 {
		t.Fatalf("at most %d concurrent backend writes: writes were serialised", got)
	}
	t.Logf("max concurrent backend writes: %d", b.maxInflight.Load())
}

// TestSlowReadsHoldNoOthers: requests that wait for a slow device are
// answered on goroutines, and the requests that come meanwhile are not
// held up behind them. Through /dev/fuse read by io_uring, a request that
// arrives while a thread's woken poll has not run yet is one nobody else
// is woken for; the thread must arm another slot, whose poll finds it,
// before it goes back to sleep.
func TestSlowReadsHoldNoOthers(t *testing.T) { eachTransport(t, tSlowReadsHoldNoOthers) }

func tSlowReadsHoldNoOthers(t *testing.T) {
	const slow = 200 * time.Millisecond
	_, _, disk := mountMem(t, 1<<20, Options{}, func(b *memBackend) { b.slowRead = slow })
	f := openDisk(t, disk, os.O_RDONLY|syscall.O_DIRECT)
	fd := int(f.Fd())
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var slowReads, fastReads atomic.Int64
	var worst atomic.Int64
	errs := make(chan error, 16)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := alignedBuf(4096)
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := unix.Pread(fd, buf, 0); err != nil {
					errs <- fmt.Errorf("slow read: %w", err)
					return
				}
				slowReads.Add(1)
			}
		}()
	}
	// One reader of fast blocks: when its request is the one a woken poll
	// kept to itself, no other request comes to look for it.
	for w := range 1 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := alignedBuf(4096)
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				start := time.Now()
				if _, err := unix.Pread(fd, buf, int64(1+(w*64+i)%255)*4096); err != nil {
					errs <- fmt.Errorf("fast read: %w", err)
					return
				}
				d := int64(time.Since(start))
				fastReads.Add(1)
				for {
					old := worst.Load()
					if d <= old || worst.CompareAndSwap(old, d) {
						break
					}
				}
			}
		}()
	}
	time.Sleep(12 * slow)
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	t.Logf("%d slow reads, %d fast reads, the slowest fast read %v", slowReads.Load(), fastReads.Load(), time.Duration(worst.Load()))
	if slowReads.Load() < 4 {
		t.Fatalf("only %d slow reads completed", slowReads.Load())
	}
	if w := time.Duration(worst.Load()); w >= slow/2 {
		t.Fatalf("a read of a fast block took %v while reads of a slow one (%v each) were under way: it waited behind them", w, slow)
	}
}

func TestUnmountWait(t *testing.T) { eachTransport(t, tUnmountWait) }

func tUnmountWait(t *testing.T) {
	s, _, disk := mountMem(t, 1<<20, Options{}, nil)
	if err := os.WriteFile(disk, []byte("data"), 0); err == nil {
		// os.WriteFile opens with O_TRUNC, which must fail.
		t.Fatal("os.WriteFile (O_TRUNC) succeeded")
	}
	if err := s.Unmount(); err != nil {
		t.Fatalf("Unmount: %v", err)
	}
	waitDone(t, s, 5*time.Second)
	if isFUSEMount(t, s.Mountpoint()) {
		t.Fatal("still a FUSE mount after Unmount")
	}
	if err := s.Unmount(); err != nil {
		t.Fatalf("second Unmount: %v", err)
	}
}

func TestExternalUnmount(t *testing.T) { eachTransport(t, tExternalUnmount) }

func tExternalUnmount(t *testing.T) {
	s, _, _ := mountMem(t, 1<<20, Options{}, nil)
	if err := unix.Unmount(s.Mountpoint(), 0); err != nil {
		t.Fatalf("umount: %v", err)
	}
	waitDone(t, s, 5*time.Second)
	if err := s.Unmount(); err != nil {
		t.Fatalf("Unmount after external umount: %v", err)
	}
}

func TestUnmountBusyIsLazy(t *testing.T) { eachTransport(t, tUnmountBusyIsLazy) }

func tUnmountBusyIsLazy(t *testing.T) {
	s, _, disk := mountMem(t, 1<<20, Options{}, nil)
	f, err := os.OpenFile(disk, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt([]byte("still here"), 100); err != nil {
		t.Fatal(err)
	}
	if err := s.Unmount(); err != nil {
		t.Fatalf("Unmount while busy: %v", err)
	}
	if isFUSEMount(t, s.Mountpoint()) {
		t.Fatal("mount point still a FUSE mount after lazy unmount")
	}
	// The open file keeps working until closed.
	p := make([]byte, 10)
	if _, err := f.ReadAt(p, 100); err != nil || string(p) != "still here" {
		t.Fatalf("read through the open file after lazy unmount: %q, %v", p, err)
	}
	if err := f.Sync(); err != nil {
		t.Fatalf("fsync after lazy unmount: %v", err)
	}
	done := make(chan struct{})
	go func() { s.Wait(); close(done) }()
	select {
	case <-done:
		t.Fatal("Wait returned while the disk was still open")
	case <-time.After(200 * time.Millisecond):
	}
	f.Close()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Wait did not return after the last file was closed")
	}
}

// syncBuffer is a bytes.Buffer safe for concurrent writers.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestAllowOtherAndDebug(t *testing.T) {
	requireFUSE(t)
	var logs syncBuffer
	mp := t.TempDir()
	s, err := Mount(mp, newMemBackend(1<<20), Options{
		SelfAccess: true,
		AllowOther: true,
		Debug:      true,
		FsName:     "wbc-test",
		Stats:      func() []byte { return []byte("{}") },
		Logger:     slog.New(slog.NewTextHandler(&logs, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unmountAndWait(t, s) })
	for name, want := range map[string]os.FileMode{diskName: 0o644, statsName: 0o444} {
		st, err := os.Stat(filepath.Join(mp, name))
		if err != nil || st.Mode() != want {
			t.Fatalf("%s: %v, %v; want mode %v", name, st, err, want)
		}
	}
	info, _ := os.ReadFile("/proc/self/mountinfo")
	found := false
	for l := range strings.Lines(string(info)) {
		if strings.Contains(l, " "+mp+" ") {
			found = strings.Contains(l, " fuse.wbcache wbc-test ") && strings.Contains(l, "allow_other")
		}
	}
	if !found {
		t.Fatalf("mountinfo lacks fsname wbc-test or allow_other:\n%s", info)
	}
	unmountAndWait(t, s)
	if out := logs.String(); !strings.Contains(out, "LOOKUP") {
		t.Fatalf("Debug set but no request trace logged:\n%.2000s", out)
	}
}

// TestRingFallback: when registering ring entries fails after the kernel
// agreed to io_uring at INIT (here: buffers too small), the mount must not
// hang: in auto mode it serves through /dev/fuse, with on it is refused.
func TestRingFallback(t *testing.T) {
	requireRing(t)
	defer func(p int) { ringPayload = p }(ringPayload)
	ringPayload = 4096

	if !IOUringEnabled() {
		t.Fatal("requireRing left enable_uring off")
	}
	b := newMemBackend(1 << 20)
	s, err := Mount(t.TempDir(), b, Options{IOUring: IOUringAuto, Logger: testLogger(), SelfAccess: true})
	if err != nil {
		t.Fatalf("Mount in auto mode: %v", err)
	}
	t.Cleanup(func() { unmountAndWait(t, s) })
	disk := filepath.Join(s.Mountpoint(), diskName)
	if s.IOUring() {
		t.Fatal("serving through io_uring with buffers the kernel must refuse")
	}
	if want := uring.ProbeDev() == nil; s.DevBatched() != want {
		t.Fatalf("after the ring's failure, /dev/fuse read through io_uring = %v, want %v", s.DevBatched(), want)
	}
	f := openDisk(t, disk, os.O_RDWR)
	done := make(chan error, 1)
	go func() {
		_, err := f.WriteAt([]byte("after the fallback"), 4096)
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("write after the fallback: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a write after the failed ring setup hangs")
	}
	b.mu.RLock()
	got := string(b.data[4096 : 4096+18])
	b.mu.RUnlock()
	if got != "after the fallback" {
		t.Fatalf("backend holds %q", got)
	}

	mp := t.TempDir()
	_, err = Mount(mp, newMemBackend(1<<20), Options{IOUring: IOUringOn, Logger: testLogger(), SelfAccess: true})
	if !errors.Is(err, ErrRingUnavailable) {
		t.Fatalf("Mount with IOUringOn although the ring cannot be registered: %v; want ErrRingUnavailable", err)
	}
	t.Logf("Mount with IOUringOn: %v", err)
}
