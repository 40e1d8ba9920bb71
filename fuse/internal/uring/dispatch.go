package uring

import (
	"bytes"
	"runtime/debug"
	"syscall"
	"unsafe"

	gofuse "github.com/hanwen/go-fuse/v2/fuse"
)

// dispatchSafe is dispatch with a panic turned into EIO (as go-fuse does
// for its handlers): one bad request must not take the daemon down.
func (s *Server) dispatchSafe(h *gofuse.InHeader, p []byte, inLen int) (st gofuse.Status, n int) {
	defer func() {
		if r := recover(); r != nil {
			s.logger.Error("wbcache/fuse: panic answering a request", "opcode", h.Opcode, "panic", r, "stack", string(debug.Stack()))
			st, n = gofuse.EIO, 0
		}
	}()
	return s.dispatch(h, p, inLen)
}

func reqAs[T any](h *gofuse.InHeader) *T { return (*T)(unsafe.Pointer(h)) }

// replyAs is the zeroed reply struct at the start of p.
func replyAs[T any](p []byte) *T {
	var zero T
	clear(p[:unsafe.Sizeof(zero)])
	return (*T)(unsafe.Pointer(&p[0]))
}

func sizeOf[T any]() int {
	var zero T
	return int(unsafe.Sizeof(zero))
}

// dispatch runs one request against the file system. The request's fixed
// part is in h (header, then the op struct); variable input (names, write
// data) is p[:inLen]. The reply payload is written to p; its length is
// returned. Operations the file system does not serve over the ring answer
// ENOSYS, as go-fuse's default does.
func (s *Server) dispatch(h *gofuse.InHeader, p []byte, inLen int) (gofuse.Status, int) {
	fs := s.fs
	if h.NodeId == pollHackInode {
		return pollHackReply(h, p)
	}
	switch h.Opcode {
	case opLookup:
		return s.lookup(h, p, inLen)
	case opGetattr:
		return fs.GetAttr(nil, reqAs[gofuse.GetAttrIn](h), replyAs[gofuse.AttrOut](p)), sizeOf[gofuse.AttrOut]()
	case opSetattr:
		return fs.SetAttr(nil, reqAs[gofuse.SetAttrIn](h), replyAs[gofuse.AttrOut](p)), sizeOf[gofuse.AttrOut]()
	case opOpen:
		return fs.Open(nil, reqAs[gofuse.OpenIn](h), replyAs[gofuse.OpenOut](p)), sizeOf[gofuse.OpenOut]()
	case opOpendir:
		return fs.OpenDir(nil, reqAs[gofuse.OpenIn](h), replyAs[gofuse.OpenOut](p)), sizeOf[gofuse.OpenOut]()
	case opRead:
		return s.read(reqAs[gofuse.ReadIn](h), p)
	case opWrite:
		wi := reqAs[gofuse.WriteIn](h)
		n, st := fs.Write(nil, wi, p[:min(inLen, int(wi.Size))])
		*replyAs[gofuse.WriteOut](p) = gofuse.WriteOut{Size: n}
		return st, sizeOf[gofuse.WriteOut]()
	case opStatfs:
		return fs.StatFs(nil, h, replyAs[gofuse.StatfsOut](p)), sizeOf[gofuse.StatfsOut]()
	case opRelease:
		fs.Release(nil, reqAs[gofuse.ReleaseIn](h))
		return gofuse.OK, 0
	case opReleasedir:
		fs.ReleaseDir(reqAs[gofuse.ReleaseIn](h))
		return gofuse.OK, 0
	case opFsync:
		return fs.Fsync(nil, reqAs[gofuse.FsyncIn](h)), 0
	case opFsyncdir:
		return fs.FsyncDir(nil, reqAs[gofuse.FsyncIn](h)), 0
	case opFlush:
		return fs.Flush(nil, reqAs[gofuse.FlushIn](h)), 0
	case opReaddir:
		ri := reqAs[gofuse.ReadIn](h)
		l := gofuse.NewDirEntryList(p[:min(int(ri.Size), len(p))], ri.Offset)
		st := fs.ReadDir(nil, ri, l)
		return st, len(l.Bytes())
	case opFallocate:
		return fs.Fallocate(nil, reqAs[gofuse.FallocateIn](h)), 0
	case opDestroy:
		return gofuse.OK, 0
	case opSymlink, opMknod, opMkdir, opUnlink, opRmdir, opRename, opLink, opCreate, opRename2, opTmpfile:
		// The tree is fixed (as the file system answers through /dev/fuse).
		return gofuse.EPERM, 0
	}
	return gofuse.ENOSYS, 0
}

// lookup answers LOOKUP; the name is p[:inLen], NUL-terminated.
func (s *Server) lookup(h *gofuse.InHeader, p []byte, inLen int) (gofuse.Status, int) {
	name := p[:inLen]
	if i := bytes.IndexByte(name, 0); i >= 0 {
		name = name[:i]
	}
	if h.NodeId == gofuse.FUSE_ROOT_ID && string(name) == pollHackName {
		return pollHackReply(h, p)
	}
	n := string(name) // copied before the reply overwrites p
	return s.fs.Lookup(nil, h, n, replyAs[gofuse.EntryOut](p)), sizeOf[gofuse.EntryOut]()
}

// read answers READ into p.
func (s *Server) read(ri *gofuse.ReadIn, p []byte) (gofuse.Status, int) {
	size := min(int(ri.Size), len(p))
	res, st := s.fs.Read(nil, ri, p[:size])
	if st != gofuse.OK {
		return st, 0
	}
	data, st := res.Bytes(p[:size])
	res.Done()
	if st != gofuse.OK {
		return st, 0
	}
	return gofuse.OK, copy(p[:size], data)
}

// pollHackReply answers the poll hack's requests as go-fuse does.
func pollHackReply(h *gofuse.InHeader, p []byte) (gofuse.Status, int) {
	attr := gofuse.Attr{Ino: pollHackInode, Mode: syscall.S_IFREG | 0o644, Nlink: 1}
	switch h.Opcode {
	case opLookup:
		*replyAs[gofuse.EntryOut](p) = gofuse.EntryOut{NodeId: pollHackInode, Attr: attr}
		return gofuse.OK, sizeOf[gofuse.EntryOut]()
	case opOpen:
		*replyAs[gofuse.OpenOut](p) = gofuse.OpenOut{Fh: pollHackInode}
		return gofuse.OK, sizeOf[gofuse.OpenOut]()
	case opGetattr, opSetattr:
		replyAs[gofuse.AttrOut](p).Attr = attr
		return gofuse.OK, sizeOf[gofuse.AttrOut]()
	case opGetxattr:
		return gofuse.ENODATA, 0
	case opPoll:
		return gofuse.ENOSYS, 0
	case opAccess, opFlush, opRelease:
		return gofuse.OK, 0
	}
	return gofuse.ERANGE, 0
}
