package fuse

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"strings"
	"syscall"
	"testing"
	"time"

	gofuse "github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// These tests call the handlers directly and need neither root nor FUSE.

func quietLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

func newTestFS(t *testing.T, size int, opts Options) (*rawFS, *memBackend) {
	t.Helper()
	b := newMemBackend(size)
	return newRawFS(b, b.Size(), opts, quietLogger()), b
}

func TestStatusOf(t *testing.T) {
	for _, tc := range []struct {
		err   error
		want  gofuse.Status
		known bool
	}{
		{nil, gofuse.OK, true},
		{syscall.EINVAL, gofuse.EINVAL, true},
		{fmt.Errorf("wrapped: %w", syscall.ENOSPC), gofuse.Status(syscall.ENOSPC), true},
		{&fs.PathError{Op: "pread", Path: "/x", Err: syscall.EIO}, gofuse.EIO, true},
		{syscall.EOPNOTSUPP, gofuse.Status(syscall.EOPNOTSUPP), true},
		{syscall.ENOSYS, gofuse.EIO, false},
		{syscall.ENOENT, gofuse.EIO, false},
		{syscall.ENOTCONN, gofuse.EIO, false},
		{fs.ErrInvalid, gofuse.EINVAL, true},
		{fmt.Errorf("x: %w", fs.ErrPermission), gofuse.EPERM, true},
		{errors.New("boom"), gofuse.EIO, false},
		{io.ErrUnexpectedEOF, gofuse.EIO, false},
	} {
		st, known := statusOf(tc.err)
		if st != tc.want || known != tc.known {
			t.Errorf("statusOf(%v) = %v, %v; want %v, %v", tc.err, st, known, tc.want, tc.known)
		}
	}
}

func TestRateLog(t *testing.T) {
	var buf bytes.Buffer
	l := newRateLog(slog.New(slog.NewTextHandler(&buf, nil)), time.Second)
	now := time.Unix(1000, 0)
	l.now = func() time.Time { return now }
	if !l.Error("first") {
		t.Fatal("first record suppressed")
	}
	for range 5 {
		now = now.Add(100 * time.Millisecond)
		if l.Error("again") {
			t.Fatal("record within the interval was emitted")
		}
	}
	now = now.Add(600 * time.Millisecond)
	if !l.Error("later") {
		t.Fatal("record after the interval suppressed")
	}
	out := buf.String()
	if strings.Count(out, "\n") != 2 || !strings.Contains(out, "suppressed=5") {
		t.Fatalf("unexpected log output:\n%s", out)
	}
}

func TestParseMountInfo(t *testing.T) {
	line := `123 45 0:67 / /tmp/a\040b rw,nosuid,nodev,relatime shared:1 - fuse.wbcache wbcache rw,user_id=0,group_id=0,default_permissions`
	e, mp, ok := parseMountInfo(line)
	if !ok || mp != "/tmp/a b" || e.fsType != "fuse.wbcache" || e.dev != 67 {
		t.Fatalf("parseMountInfo = %+v %q %v", e, mp, ok)
	}
	e, _, ok = parseMountInfo(`1 2 8:3 / /boot rw - ext4 /dev/sda3 rw`)
	if !ok || e.dev != 8<<20|3 || e.fsType != "ext4" {
		t.Fatalf("parseMountInfo = %+v %v", e, ok)
	}
	if _, _, ok := parseMountInfo("garbage"); ok {
		t.Fatal("garbage parsed")
	}
	if got := unescapeMountInfo(`/a\134b\011c\`); got != "/a\\b\tc\\" {
		t.Fatalf("unescape = %q", got)
	}
}

func TestReadWriteClamp(t *testing.T) {
	const size = 10000
	r, b := newTestFS(t, size, Options{})
	data := bytes.Repeat([]byte{7}, 300)

	// Write crossing the end: short write, like a block device.
	n, st := r.Write(nil, &gofuse.WriteIn{InHeader: gofuse.InHeader{NodeId: diskIno}, Offset: size - 100}, data)
	if st != gofuse.OK || n != 100 {
		t.Fatalf("write across end = %d, %v; want 100, OK", n, st)
	}
	// At and past the end: ENOSPC.
	for _, off := range []uint64{size, size + 1, 1 << 62} {
		if n, st := r.Write(nil, &gofuse.WriteIn{InHeader: gofuse.InHeader{NodeId: diskIno}, Offset: off}, data); st != gofuse.Status(syscall.ENOSPC) || n != 0 {
			t.Fatalf("write at %d = %d, %v; want 0, ENOSPC", off, n, st)
		}
	}
	// Split payload is joined into one backend write.
	w0 := b.writes.Load()
	n, st = r.Writev(nil, &gofuse.WriteIn{InHeader: gofuse.InHeader{NodeId: diskIno}, Offset: 10}, [][]byte{{1, 2}, {3}, {4, 5, 6}})
	if st != gofuse.OK || n != 6 || b.writes.Load() != w0+1 || !bytes.Equal(b.snapshot()[10:16], []byte{1, 2, 3, 4, 5, 6}) {
		t.Fatalf("writev = %d, %v, %d backend writes", n, st, b.writes.Load()-w0)
	}

	buf := make([]byte, 4096)
	read := func(off uint64, sz uint32) ([]byte, gofuse.Status) {
		res, st := r.Read(nil, &gofuse.ReadIn{InHeader: gofuse.InHeader{NodeId: diskIno}, Offset: off, Size: sz}, buf[:sz])
		if st != gofuse.OK {
			return nil, st
		}
		p, st := res.Bytes(nil)
		return p, st
	}
	if p, st := read(size-50, 200); st != gofuse.OK || len(p) != 50 || !bytes.Equal(p, data[:50]) {
		t.Fatalf("read across end = %d bytes, %v; want 50", len(p), st)
	}
	for _, off := range []uint64{size, size + 4096, 1 << 63} {
		if p, st := read(off, 4096); st != gofuse.OK || len(p) != 0 {
			t.Fatalf("read at %d = %d bytes, %v; want EOF", off, len(p), st)
		}
	}

	// Backend errors.
	b.inject("read", syscall.EINVAL)
	if _, st := read(0, 10); st != gofuse.EINVAL {
		t.Fatalf("read with EINVAL backend = %v", st)
	}
	b.inject("read", errors.New("disk on fire"))
	if _, st := read(0, 10); st != gofuse.EIO {
		t.Fatalf("read with unknown backend error = %v", st)
	}
	b.inject("read", nil)
	b.inject("write", syscall.ENOSYS)
	if _, st := r.Write(nil, &gofuse.WriteIn{InHeader: gofuse.InHeader{NodeId: diskIno}}, data); st != gofuse.EIO {
		t.Fatalf("write with ENOSYS backend = %v, want EIO", st)
	}
}

func TestFallocateModes(t *testing.T) {
	const size = 1 << 20
	r, b := newTestFS(t, size, Options{})
	fa := func(mode uint32, off, n uint64) gofuse.Status {
		return r.Fallocate(nil, &gofuse.FallocateIn{InHeader: gofuse.InHeader{NodeId: diskIno}, Mode: mode, Offset: off, Length: n})
	}
	eop := gofuse.Status(syscall.EOPNOTSUPP)
	for _, tc := range []struct {
		name        string
		mode        uint32
		off, n      uint64
		want        gofuse.Status
		discards    int64
		discardSpan [2]int64
	}{
		{"allocate within", 0, 0, size, gofuse.OK, 0, [2]int64{}},
		{"allocate beyond", 0, size - 10, 20, eop, 0, [2]int64{}},
		{"keep size beyond", unix.FALLOC_FL_KEEP_SIZE, size, 20, gofuse.OK, 0, [2]int64{}},
		{"punch", unix.FALLOC_FL_PUNCH_HOLE | unix.FALLOC_FL_KEEP_SIZE, 100, 200, gofuse.OK, 1, [2]int64{100, 300}},
		{"punch across end", unix.FALLOC_FL_PUNCH_HOLE | unix.FALLOC_FL_KEEP_SIZE, size - 10, 100, gofuse.OK, 1, [2]int64{size - 10, size}},
		{"punch past end", unix.FALLOC_FL_PUNCH_HOLE | unix.FALLOC_FL_KEEP_SIZE, size, 100, gofuse.OK, 0, [2]int64{}},
		{"zero range", unix.FALLOC_FL_ZERO_RANGE, 5000, 3000, gofuse.OK, 1, [2]int64{5000, 8000}},
		{"zero range beyond", unix.FALLOC_FL_ZERO_RANGE, size - 10, 100, eop, 0, [2]int64{}},
		{"zero range keep size across end", unix.FALLOC_FL_ZERO_RANGE | unix.FALLOC_FL_KEEP_SIZE, size - 10, 100, gofuse.OK, 1, [2]int64{size - 10, size}},
		{"punch without keep size", unix.FALLOC_FL_PUNCH_HOLE, 0, 100, eop, 0, [2]int64{}},
		{"collapse", unix.FALLOC_FL_COLLAPSE_RANGE, 0, 4096, eop, 0, [2]int64{}},
		{"insert", unix.FALLOC_FL_INSERT_RANGE, 0, 4096, eop, 0, [2]int64{}},
		{"zero length", 0, 0, 0, gofuse.EINVAL, 0, [2]int64{}},
		{"overflow", unix.FALLOC_FL_PUNCH_HOLE | unix.FALLOC_FL_KEEP_SIZE, 1<<64 - 10, 100, gofuse.EINVAL, 0, [2]int64{}},
	} {
		b.mu.Lock()
		for i := range b.data {
			b.data[i] = 0xAB
		}
		b.mu.Unlock()
		d0 := b.discards.Load()
		if st := fa(tc.mode, tc.off, tc.n); st != tc.want {
			t.Errorf("%s: status %v, want %v", tc.name, st, tc.want)
			continue
		}
		if got := b.discards.Load() - d0; got != tc.discards {
			t.Errorf("%s: %d discards, want %d", tc.name, got, tc.discards)
		}
		data := b.snapshot()
		for i, c := range data {
			zero := int64(i) >= tc.discardSpan[0] && int64(i) < tc.discardSpan[1]
			if zero != (c == 0) {
				t.Errorf("%s: byte %d = %#x", tc.name, i, c)
				break
			}
		}
	}
	if st := r.Fallocate(nil, &gofuse.FallocateIn{InHeader: gofuse.InHeader{NodeId: rootIno}, Length: 1}); st == gofuse.ENOSYS {
		t.Fatal("fallocate on the root answered ENOSYS")
	}
	b.inject("discard", syscall.ENOSYS)
	if st := fa(unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 0, 10); st != gofuse.EIO {
		t.Fatalf("discard with ENOSYS backend = %v, want EIO", st)
	}
}

func TestNeverENOSYS(t *testing.T) {
	r, b := newTestFS(t, 4096, Options{Stats: func() []byte { return nil }})
	b.inject("sync", syscall.ENOSYS)
	for _, ino := range []uint64{rootIno, diskIno, statsIno, 99} {
		h := gofuse.InHeader{NodeId: ino}
		if st := r.Fsync(nil, &gofuse.FsyncIn{InHeader: h}); st == gofuse.ENOSYS {
			t.Errorf("fsync ino %d: ENOSYS", ino)
		}
		if st := r.Fsync(nil, &gofuse.FsyncIn{InHeader: h, FsyncFlags: 1}); st == gofuse.ENOSYS {
			t.Errorf("fdatasync ino %d: ENOSYS", ino)
		}
		if st := r.FsyncDir(nil, &gofuse.FsyncIn{InHeader: h}); st != gofuse.OK {
			t.Errorf("fsyncdir ino %d: %v", ino, st)
		}
		if st := r.Flush(nil, &gofuse.FlushIn{InHeader: h}); st != gofuse.OK {
			t.Errorf("flush ino %d: %v", ino, st)
		}
		if st := r.Fallocate(nil, &gofuse.FallocateIn{InHeader: h, Length: 1}); st == gofuse.ENOSYS {
			t.Errorf("fallocate ino %d: ENOSYS", ino)
		}
	}
	if b.syncs.Load() != 2 {
		t.Fatalf("backend Sync called %d times, want 2 (fsync + fdatasync on disk)", b.syncs.Load())
	}
}

func TestSetAttr(t *testing.T) {
	const size = 8192
	r, _ := newTestFS(t, size, Options{})
	var out gofuse.AttrOut
	in := &gofuse.SetAttrIn{}
	in.NodeId = diskIno
	in.Valid = gofuse.FATTR_SIZE
	in.Size = size - 1
	if st := r.SetAttr(nil, in, &out); st != gofuse.EINVAL {
		t.Fatalf("truncate to other size = %v, want EINVAL", st)
	}
	in.Size = size
	if st := r.SetAttr(nil, in, &out); st != gofuse.OK || out.Size != size {
		t.Fatalf("truncate to same size = %v, size %d", st, out.Size)
	}
	in.Valid = gofuse.FATTR_MODE | gofuse.FATTR_UID | gofuse.FATTR_GID | gofuse.FATTR_MTIME
	in.Mode = syscall.S_IFREG | 0o640
	in.Uid, in.Gid = 1234, 5678
	in.Mtime, in.Mtimensec = 1e9, 5
	if st := r.SetAttr(nil, in, &out); st != gofuse.OK {
		t.Fatalf("chmod/chown/utimes = %v", st)
	}
	var got gofuse.AttrOut
	r.GetAttr(nil, &gofuse.GetAttrIn{InHeader: gofuse.InHeader{NodeId: diskIno}}, &got)
	if got.Mode != syscall.S_IFREG|0o640 || got.Uid != 1234 || got.Gid != 5678 || got.Mtime != 1e9 || got.Mtimensec != 5 || got.Size != size {
		t.Fatalf("attributes after setattr: %+v", got.Attr)
	}
}

func TestAttrsAndTree(t *testing.T) {
	r, _ := newTestFS(t, 1<<20, Options{})
	var out gofuse.AttrOut
	if r.GetAttr(nil, &gofuse.GetAttrIn{InHeader: gofuse.InHeader{NodeId: diskIno}}, &out); out.Mode != syscall.S_IFREG|0o600 || out.Uid != uint32(syscall.Geteuid()) {
		t.Fatalf("disk attrs %+v", out.Attr)
	}
	var e gofuse.EntryOut
	if st := r.Lookup(nil, &gofuse.InHeader{NodeId: rootIno}, statsName, &e); st != gofuse.ENOENT {
		t.Fatalf("lookup stats without Stats = %v", st)
	}
	r, _ = newTestFS(t, 1<<20, Options{AllowOther: true, Stats: func() []byte { return []byte("x") }})
	if st := r.Lookup(nil, &gofuse.InHeader{NodeId: rootIno}, statsName, &e); st != gofuse.OK || e.Mode != syscall.S_IFREG|0o444 {
		t.Fatalf("lookup stats = %v, %+v", st, e.Attr)
	}
	if st := r.Lookup(nil, &gofuse.InHeader{NodeId: rootIno}, diskName, &e); st != gofuse.OK || e.Mode != syscall.S_IFREG|0o644 || e.EntryTimeout() < time.Hour {
		t.Fatalf("lookup disk = %v, %+v", st, e)
	}
}

func TestParseIOUringMode(t *testing.T) {
	for _, m := range []IOUringMode{IOUringAuto, IOUringOn, IOUringOff} {
		got, err := ParseIOUringMode(m.String())
		if err != nil || got != m {
			t.Errorf("ParseIOUringMode(%q) = %v, %v", m.String(), got, err)
		}
	}
	if _, err := ParseIOUringMode("yes"); err == nil {
		t.Error("ParseIOUringMode(yes): want an error")
	}
}
