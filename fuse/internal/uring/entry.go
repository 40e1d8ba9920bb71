package uring

import (
	"unsafe"

	gofuse "github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// entry is one ring entry: the buffers the kernel writes a request into
// and reads the answer from.
type entry struct {
	hdr      []byte // struct fuse_uring_req_header
	payload  []byte
	iov      [2]unix.Iovec // hdr and payload, as the commands pass them
	idx      uint64        // index in its thread's entries (the SQE user data)
	commitID uint64        // the request being answered
	scratch  [40]uint64    // the request header and op struct, contiguous
}

func (e *entry) init(idx uint64, hdr, payload []byte) {
	e.idx = idx
	e.hdr, e.payload = hdr, payload
	e.iov[0].Base = &hdr[0]
	e.iov[0].SetLen(len(hdr))
	e.iov[1].Base = &payload[0]
	e.iov[1].SetLen(len(payload))
}

// load copies the request header and op struct into e.scratch, where
// they are contiguous as go-fuse's request types expect.
func (e *entry) load() *gofuse.InHeader {
	sc := unsafe.Slice((*byte)(unsafe.Pointer(&e.scratch[0])), len(e.scratch)*8)
	copy(sc[:inHeaderSize], e.hdr[:inHeaderSize])
	copy(sc[inHeaderSize:], e.hdr[offOpIn:offOpIn+opInSize])
	e.commitID = getU64(e.hdr, offCommitID)
	return e.header()
}

// header is the request loaded last.
func (e *entry) header() *gofuse.InHeader { return (*gofuse.InHeader)(unsafe.Pointer(&e.scratch[0])) }

// answer runs the request loaded in e and writes the reply header and
// payload size into e's header buffer.
func (s *Server) answer(e *entry, h *gofuse.InHeader) {
	unique := h.Unique
	inLen := int(getU32(e.hdr, offPayloadSz))
	st, outLen := s.dispatchSafe(h, e.payload, inLen)
	if st != gofuse.OK {
		outLen = 0
	}
	*(*gofuse.OutHeader)(unsafe.Pointer(&e.hdr[0])) = gofuse.OutHeader{
		Length: uint32(outHeaderSize + outLen),
		Status: -int32(st),
		Unique: unique,
	}
	clear(e.hdr[offEntInOut:hdrSize])
	putU32(e.hdr, offPayloadSz, uint32(outLen))
}

// waits reports reads and writes that MayWait says may wait for a slow
// device. fsync and fallocate wait for the cache device only (a sync,
// 100-300µs) and are answered on the ring thread: handing them to a
// goroutine and waking the thread for the answer doubled an fsync's
// latency (4 KiB write + fsync at QD1: 3,380 IOPS, fsync p50 297µs, against
// 5,756 and 140µs through /dev/fuse). While one thread syncs, new requests
// go to the entries its queue's other thread has just committed (the
// kernel hands out the most recently committed entry first).
func (s *Server) waits(h *gofuse.InHeader) bool {
	if s.mayWait == nil {
		return false
	}
	switch h.Opcode {
	case opRead:
		ri := reqAs[gofuse.ReadIn](h)
		return s.mayWait(h.NodeId, false, int64(ri.Offset), int64(ri.Size))
	case opWrite:
		wi := reqAs[gofuse.WriteIn](h)
		return s.mayWait(h.NodeId, true, int64(wi.Offset), int64(wi.Size))
	}
	return false
}
