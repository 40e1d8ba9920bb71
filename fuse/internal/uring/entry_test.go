package uring

import (
	"bytes"
	"io"
	"log/slog"
	"syscall"
	"testing"
	"time"
	"unsafe"

	gofuse "github.com/hanwen/go-fuse/v2/fuse"
)

// These tests put requests into ring entries as the kernel lays them out
// and check the answers written back; they need neither root nor FUSE.

// memFS serves inode 2 as a small in-memory file.
type memFS struct {
	gofuse.RawFileSystem
	data   []byte
	lookup string // the last name looked up
}

const memIno = 2

func newMemFS(size int) *memFS {
	return &memFS{RawFileSystem: gofuse.NewDefaultRawFileSystem(), data: make([]byte, size)}
}

func (m *memFS) Read(_ <-chan struct{}, in *gofuse.ReadIn, buf []byte) (gofuse.ReadResult, gofuse.Status) {
	n := copy(buf, m.data[in.Offset:])
	return gofuse.ReadResultData(buf[:n]), gofuse.OK
}

func (m *memFS) Write(_ <-chan struct{}, in *gofuse.WriteIn, p []byte) (uint32, gofuse.Status) {
	if in.NodeId != memIno {
		return 0, gofuse.EBADF
	}
	return uint32(copy(m.data[in.Offset:], p)), gofuse.OK
}

func (m *memFS) Lookup(_ <-chan struct{}, _ *gofuse.InHeader, name string, out *gofuse.EntryOut) gofuse.Status {
	m.lookup = name
	out.NodeId = memIno
	return gofuse.OK
}

func (m *memFS) ReadDir(_ <-chan struct{}, _ *gofuse.ReadIn, out *gofuse.DirEntryList) gofuse.Status {
	for _, n := range []string{".", "..", "disk", "stats"} {
		out.AddDirEntry(gofuse.DirEntry{Name: n, Ino: 1, Mode: syscall.S_IFREG})
	}
	return gofuse.OK
}

func (m *memFS) GetAttr(_ <-chan struct{}, in *gofuse.GetAttrIn, out *gofuse.AttrOut) gofuse.Status {
	out.Ino, out.Size, out.Mode, out.Nlink = in.NodeId, uint64(len(m.data)), syscall.S_IFREG|0o600, 1
	out.SetTimeout(time.Hour)
	return gofuse.OK
}

func (m *memFS) Fsync(<-chan struct{}, *gofuse.FsyncIn) gofuse.Status { panic("fsync on fire") }

func testServer(fs gofuse.RawFileSystem) *Server {
	return &Server{fs: fs, logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
}

func testEntry(payload int) *entry {
	e := &entry{}
	e.init(3, make([]byte, hdrSize), make([]byte, payload))
	return e
}

// put writes req (a go-fuse request struct: InHeader, then the op
// struct) and payload into e as the kernel does.
func put[T any](e *entry, req *T, payload []byte) {
	b := unsafe.Slice((*byte)(unsafe.Pointer(req)), unsafe.Sizeof(*req))
	clear(e.hdr)
	copy(e.hdr[:inHeaderSize], b)
	copy(e.hdr[offOpIn:offOpIn+opInSize], b[inHeaderSize:])
	copy(e.payload, payload)
	putU32(e.hdr, offPayloadSz, uint32(len(payload)))
	putU64(e.hdr, offCommitID, 77)
}

// reply runs the request in e and returns the reply header and payload.
func reply(t *testing.T, s *Server, e *entry) (gofuse.OutHeader, []byte) {
	t.Helper()
	s.answer(e, e.load())
	if e.commitID != 77 {
		t.Fatalf("commit ID %d, want 77", e.commitID)
	}
	oh := *(*gofuse.OutHeader)(unsafe.Pointer(&e.hdr[0]))
	n := int(getU32(e.hdr, offPayloadSz))
	if int(oh.Length) != outHeaderSize+n {
		t.Fatalf("reply length %d, payload size %d", oh.Length, n)
	}
	return oh, e.payload[:n]
}

func TestAnswerWriteRead(t *testing.T) {
	fs := newMemFS(1 << 16)
	s := testServer(fs)
	e := testEntry(1 << 16)
	data := bytes.Repeat([]byte("ring"), 1024)

	w := gofuse.WriteIn{InHeader: gofuse.InHeader{Opcode: opWrite, Unique: 9, NodeId: memIno}, Offset: 8192, Size: uint32(len(data))}
	put(e, &w, data)
	oh, p := reply(t, s, e)
	if oh.Status != 0 || oh.Unique != 9 || len(p) != sizeOf[gofuse.WriteOut]() || (*gofuse.WriteOut)(unsafe.Pointer(&p[0])).Size != uint32(len(data)) {
		t.Fatalf("WRITE reply %+v, payload %v", oh, p)
	}
	if !bytes.Equal(fs.data[8192:8192+len(data)], data) {
		t.Fatal("WRITE did not reach the file system")
	}

	r := gofuse.ReadIn{InHeader: gofuse.InHeader{Opcode: opRead, Unique: 10, NodeId: memIno}, Offset: 8192 + 4, Size: 100}
	put(e, &r, nil)
	oh, p = reply(t, s, e)
	if oh.Status != 0 || oh.Unique != 10 || !bytes.Equal(p, data[4:104]) {
		t.Fatalf("READ reply %+v, %d bytes", oh, len(p))
	}

	w.NodeId = 5 // the file system refuses: no payload, the errno
	put(e, &w, data)
	if oh, p = reply(t, s, e); oh.Status != -int32(syscall.EBADF) || len(p) != 0 {
		t.Fatalf("refused WRITE: reply %+v, %d bytes", oh, len(p))
	}
}

func TestAnswerLookupReaddir(t *testing.T) {
	fs := newMemFS(4096)
	s := testServer(fs)
	e := testEntry(4096)
	put(e, &gofuse.InHeader{Opcode: opLookup, NodeId: gofuse.FUSE_ROOT_ID}, []byte("disk\x00"))
	oh, p := reply(t, s, e)
	if oh.Status != 0 || fs.lookup != "disk" || len(p) != sizeOf[gofuse.EntryOut]() || (*gofuse.EntryOut)(unsafe.Pointer(&p[0])).NodeId != memIno {
		t.Fatalf("LOOKUP: reply %+v, name %q", oh, fs.lookup)
	}

	want := 0
	for _, n := range []string{".", "..", "disk", "stats"} {
		want += (24 + len(n) + 7) &^ 7 // struct fuse_dirent, padded to 8
	}
	put(e, &gofuse.ReadIn{InHeader: gofuse.InHeader{Opcode: opReaddir, NodeId: gofuse.FUSE_ROOT_ID}, Size: 4096}, nil)
	oh, p = reply(t, s, e)
	if oh.Status != 0 || len(p) != want {
		t.Fatalf("READDIR: reply %+v, %d bytes, want %d", oh, len(p), want)
	}
	if list, err := gofuse.ParseDirEntries(p); err != nil || len(list) != 4 || list[3].Name != "stats" {
		t.Fatalf("READDIR entries %+v, %v", list, err)
	}
}

func TestAnswerNeverPanicsOrCreates(t *testing.T) {
	s := testServer(newMemFS(4096))
	e := testEntry(4096)
	for _, c := range []struct {
		name string
		op   uint32
		want syscall.Errno
	}{
		{"fsync that panics", opFsync, syscall.EIO},
		{"mkdir", opMkdir, syscall.EPERM},
		{"unknown opcode", 4000, syscall.ENOSYS},
	} {
		put(e, &gofuse.FsyncIn{InHeader: gofuse.InHeader{Opcode: c.op, NodeId: memIno}}, nil)
		if oh, _ := reply(t, s, e); oh.Status != -int32(c.want) {
			t.Errorf("%s: status %d, want -%d", c.name, oh.Status, c.want)
		}
	}
}

// BenchmarkAnswer measures one request through an entry (load, dispatch,
// reply header): the ring thread's own work per request.
func BenchmarkAnswer(b *testing.B) {
	for _, c := range []struct {
		name string
		op   uint32
	}{{"write4k", opWrite}, {"read4k", opRead}, {"getattr", opGetattr}} {
		b.Run(c.name, func(b *testing.B) {
			s := testServer(newMemFS(1 << 20))
			e := testEntry(1 << 20)
			req := gofuse.WriteIn{InHeader: gofuse.InHeader{Opcode: c.op, NodeId: memIno}, Offset: 8192, Size: 4096}
			put(e, &req, make([]byte, 4096))
			in := bytes.Clone(e.hdr[:inHeaderSize]) // the reply overwrites it
			b.ReportAllocs()
			for b.Loop() {
				copy(e.hdr, in)
				putU32(e.hdr, offPayloadSz, 4096)
				s.answer(e, e.load())
				if e.hdr[4] != 0 { // OutHeader.Status
					b.Fatalf("status %d", int32(getU32(e.hdr, 4)))
				}
			}
		})
	}
}
