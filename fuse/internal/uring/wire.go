package uring

import (
	"unsafe"

	gofuse "github.com/hanwen/go-fuse/v2/fuse"
)

// The FUSE wire constants the transport needs that go-fuse keeps
// unexported (its opcodes are _OP_* constants) or does not have at all
// (it has no io_uring transport): struct fuse_uring_req_header, the
// FUSE_IO_URING_CMD_* commands and the opcodes served over the ring, from
// include/uapi/linux/fuse.h. The request and reply structs themselves
// (InHeader, OutHeader, ReadIn, WriteOut...) are go-fuse's.

// struct fuse_uring_req_header: in_out[128] (fuse_in_header on the way
// in, fuse_out_header on the way out), op_in[128], then struct
// fuse_uring_ent_in_out {flags, commit_id, payload_sz, padding, reserved}.
const (
	hdrSize      = 288 // sizeof(struct fuse_uring_req_header)
	hdrStride    = 512 // header buffers are this far apart in their mapping
	offOpIn      = 128
	opInSize     = 128
	offEntInOut  = 256
	offCommitID  = offEntInOut + 8
	offPayloadSz = offEntInOut + 16
)

// FUSE_IO_URING_CMD_* (the SQE's cmd_op); struct fuse_uring_cmd_req
// (the SQE's command area) holds flags, commit_id, qid.
const (
	cmdRegister    = 1
	cmdCommitFetch = 2

	cmdReqOffCommitID = 8
	cmdReqOffQid      = 16
)

var (
	inHeaderSize  = int(unsafe.Sizeof(gofuse.InHeader{}))
	outHeaderSize = int(unsafe.Sizeof(gofuse.OutHeader{}))
)

// FUSE opcodes served over the ring (enum fuse_opcode).
const (
	opLookup     = 1
	opGetattr    = 3
	opSetattr    = 4
	opSymlink    = 6
	opMknod      = 8
	opMkdir      = 9
	opUnlink     = 10
	opRmdir      = 11
	opRename     = 12
	opLink       = 13
	opOpen       = 14
	opRead       = 15
	opWrite      = 16
	opStatfs     = 17
	opRelease    = 18
	opFsync      = 20
	opGetxattr   = 22
	opFlush      = 25
	opOpendir    = 27
	opReaddir    = 28
	opReleasedir = 29
	opFsyncdir   = 30
	opAccess     = 34
	opCreate     = 35
	opDestroy    = 38
	opPoll       = 40
	opFallocate  = 43
	opRename2    = 45
	opTmpfile    = 51
)

// go-fuse's poll hack (Server.WaitMount) opens this name so that the
// kernel learns early that POLL is not supported; through /dev/fuse
// go-fuse answers it, through the ring dispatch does the same. go-fuse
// keeps both unexported.
const (
	pollHackName  = ".go-fuse-epoll-hack"
	pollHackInode = ^uint64(0)
)
