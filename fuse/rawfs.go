package fuse

import (
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	gofuse "github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// Inode numbers of the fixed tree.
const (
	rootIno  = gofuse.FUSE_ROOT_ID
	diskIno  = 2
	statsIno = 3
	numInos  = 4 // size of per-inode arrays, indexed by inode number
)

const (
	diskName  = "disk"
	statsName = "stats"

	// nodeTimeout is how long the kernel may cache entries and attributes.
	// The tree never changes and attribute changes go through SETATTR,
	// whose reply refreshes the kernel's copy, so it can be long.
	nodeTimeout = 24 * time.Hour

	// rootAttrTimeout is shorter for the mount point itself, so that
	// stat(MOUNTPOINT) reports ENOTCONN soon after the daemon dies, as tools
	// expect (a GETATTR of the root per second costs nothing).
	rootAttrTimeout = time.Second

	// blockSize is reported as st_blksize and as the statfs block size.
	blockSize = 4096
)

// Fallocate modes handled (see fallocate(2)).
const (
	fallocKeepSize  = unix.FALLOC_FL_KEEP_SIZE
	fallocPunchHole = unix.FALLOC_FL_PUNCH_HOLE
	fallocZeroRange = unix.FALLOC_FL_ZERO_RANGE
)

// nodeMeta is the mutable metadata of a node (chmod, chown, utimes), kept in
// memory only.
type nodeMeta struct {
	perm                uint32 // permission bits, 07777
	uid, gid            uint32
	atime, mtime, ctime time.Time
}

// rawFS implements go-fuse's RawFileSystem for the fixed tree. Operations it
// does not override come from the embedded default (ENOSYS), which is only
// used for operations where ENOSYS is harmless (xattrs, locks, ioctl, lseek,
// copy_file_range, poll, statx: the kernel falls back or refuses locally).
type rawFS struct {
	gofuse.RawFileSystem

	b      Backend
	size   uint64
	stats  func() []byte
	logger *slog.Logger
	errLog *rateLog

	metaMu sync.Mutex
	meta   [numInos]nodeMeta

	initOnce sync.Once
	initDone chan struct{} // closed once INIT has been answered

	nextFh    atomic.Uint64
	handlesMu sync.Mutex
	handles   map[uint64][]byte // stats snapshots by file handle
}

var _ gofuse.RawFileSystem = (*rawFS)(nil)

func newRawFS(b Backend, size int64, opts Options, logger *slog.Logger) *rawFS {
	r := &rawFS{
		RawFileSystem: gofuse.NewDefaultRawFileSystem(),
		b:             b,
		size:          uint64(size),
		stats:         opts.Stats,
		logger:        logger,
		errLog:        newRateLog(logger, time.Second),
		handles:       make(map[uint64][]byte),
		initDone:      make(chan struct{}),
	}
	now := time.Now()
	uid, gid := uint32(syscall.Geteuid()), uint32(syscall.Getegid())
	diskPerm, statsPerm := uint32(0o600), uint32(0o400)
	if opts.AllowOther {
		diskPerm, statsPerm = 0o644, 0o444
	}
	for ino, perm := range map[int]uint32{rootIno: 0o755, diskIno: diskPerm, statsIno: statsPerm} {
		r.meta[ino] = nodeMeta{perm: perm, uid: uid, gid: gid, atime: now, mtime: now, ctime: now}
	}
	return r
}

func (r *rawFS) String() string { return "wbcache" }

// Init is called once INIT has been answered.
func (r *rawFS) Init(*gofuse.Server) { r.initOnce.Do(func() { close(r.initDone) }) }

// exists reports whether ino is a node of this mount.
func (r *rawFS) exists(ino uint64) bool {
	switch ino {
	case rootIno, diskIno:
		return true
	case statsIno:
		return r.stats != nil
	}
	return false
}

func (r *rawFS) inoOf(name string) uint64 {
	switch name {
	case diskName:
		return diskIno
	case statsName:
		if r.stats != nil {
			return statsIno
		}
	}
	return 0
}

func attrTimeout(ino uint64) time.Duration {
	if ino == rootIno {
		return rootAttrTimeout
	}
	return nodeTimeout
}

func setTime(t time.Time) (sec uint64, nsec uint32) {
	return uint64(t.Unix()), uint32(t.Nanosecond())
}

// fillAttr writes the attributes of an existing node into a.
func (r *rawFS) fillAttr(ino uint64, a *gofuse.Attr) {
	r.metaMu.Lock()
	m := r.meta[ino]
	r.metaMu.Unlock()

	*a = gofuse.Attr{Ino: ino, Blksize: blockSize}
	a.Uid, a.Gid = m.uid, m.gid
	a.Atime, a.Atimensec = setTime(m.atime)
	a.Mtime, a.Mtimensec = setTime(m.mtime)
	a.Ctime, a.Ctimensec = setTime(m.ctime)
	switch ino {
	case rootIno:
		a.Mode = syscall.S_IFDIR | m.perm
		a.Nlink = 2
		a.Size = blockSize
	case diskIno:
		a.Mode = syscall.S_IFREG | m.perm
		a.Nlink = 1
		a.Size = r.size
		a.Blocks = (r.size + 511) / 512
	case statsIno:
		a.Mode = syscall.S_IFREG | m.perm
		a.Nlink = 1
	}
}

func (r *rawFS) Lookup(_ <-chan struct{}, h *gofuse.InHeader, name string, out *gofuse.EntryOut) gofuse.Status {
	if h.NodeId != rootIno {
		return gofuse.ENOTDIR
	}
	ino := r.inoOf(name)
	if ino == 0 {
		return gofuse.ENOENT
	}
	out.NodeId = ino
	out.Generation = 1
	out.SetEntryTimeout(nodeTimeout)
	out.SetAttrTimeout(nodeTimeout)
	r.fillAttr(ino, &out.Attr)
	return gofuse.OK
}

func (r *rawFS) GetAttr(_ <-chan struct{}, in *gofuse.GetAttrIn, out *gofuse.AttrOut) gofuse.Status {
	if !r.exists(in.NodeId) {
		return gofuse.ENOENT
	}
	out.SetTimeout(attrTimeout(in.NodeId))
	r.fillAttr(in.NodeId, &out.Attr)
	return gofuse.OK
}

// SetAttr refuses size changes (EINVAL: the size is fixed by the backing
// device) and keeps mode, owner and times in memory.
func (r *rawFS) SetAttr(_ <-chan struct{}, in *gofuse.SetAttrIn, out *gofuse.AttrOut) gofuse.Status {
	ino := in.NodeId
	if !r.exists(ino) {
		return gofuse.ENOENT
	}
	if in.Valid&gofuse.FATTR_SIZE != 0 {
		switch ino {
		case rootIno:
			return gofuse.EISDIR
		case diskIno:
			if in.Size != r.size {
				return gofuse.EINVAL
			}
		default:
			if in.Size != 0 {
				return gofuse.EINVAL
			}
		}
	}
	now := time.Now()
	r.metaMu.Lock()
	m := &r.meta[ino]
	if in.Valid&gofuse.FATTR_MODE != 0 {
		m.perm = in.Mode & 0o7777
	}
	if in.Valid&gofuse.FATTR_UID != 0 {
		m.uid = in.Uid
	}
	if in.Valid&gofuse.FATTR_GID != 0 {
		m.gid = in.Gid
	}
	if in.Valid&gofuse.FATTR_KILL_SUIDGID != 0 {
		m.perm &^= syscall.S_ISUID | syscall.S_ISGID
	}
	if in.Valid&gofuse.FATTR_ATIME_NOW != 0 {
		m.atime = now
	} else if in.Valid&gofuse.FATTR_ATIME != 0 {
		m.atime = time.Unix(int64(in.Atime), int64(in.Atimensec))
	}
	if in.Valid&gofuse.FATTR_MTIME_NOW != 0 {
		m.mtime = now
	} else if in.Valid&gofuse.FATTR_MTIME != 0 {
		m.mtime = time.Unix(int64(in.Mtime), int64(in.Mtimensec))
	}
	if in.Valid&gofuse.FATTR_CTIME != 0 {
		m.ctime = time.Unix(int64(in.Ctime), int64(in.Ctimensec))
	} else {
		m.ctime = now
	}
	r.metaMu.Unlock()

	out.SetTimeout(attrTimeout(ino))
	r.fillAttr(ino, &out.Attr)
	return gofuse.OK
}

func (r *rawFS) Open(_ <-chan struct{}, in *gofuse.OpenIn, out *gofuse.OpenOut) gofuse.Status {
	switch {
	case in.NodeId == diskIno:
		out.OpenFlags = gofuse.FOPEN_DIRECT_IO | gofuse.FOPEN_PARALLEL_DIRECT_WRITES
		return gofuse.OK
	case in.NodeId == statsIno && r.stats != nil:
		if in.Flags&syscall.O_ACCMODE != syscall.O_RDONLY {
			return gofuse.EACCES
		}
		data := r.stats()
		fh := r.nextFh.Add(1)
		r.handlesMu.Lock()
		r.handles[fh] = data
		r.handlesMu.Unlock()
		out.Fh = fh
		out.OpenFlags = gofuse.FOPEN_DIRECT_IO
		return gofuse.OK
	case in.NodeId == rootIno:
		return gofuse.EISDIR
	}
	return gofuse.ENOENT
}

func (r *rawFS) Release(_ <-chan struct{}, in *gofuse.ReleaseIn) {
	if in.NodeId == statsIno {
		r.handlesMu.Lock()
		delete(r.handles, in.Fh)
		r.handlesMu.Unlock()
	}
}

func (r *rawFS) Read(_ <-chan struct{}, in *gofuse.ReadIn, buf []byte) (gofuse.ReadResult, gofuse.Status) {
	switch in.NodeId {
	case diskIno:
		return r.readDisk(in.Offset, in.Size, buf)
	case statsIno:
		r.handlesMu.Lock()
		data, ok := r.handles[in.Fh]
		r.handlesMu.Unlock()
		if !ok {
			return nil, gofuse.EBADF
		}
		if in.Offset >= uint64(len(data)) {
			return gofuse.ReadResultData(nil), gofuse.OK
		}
		data = data[in.Offset:]
		if uint64(len(data)) > uint64(in.Size) {
			data = data[:in.Size]
		}
		return gofuse.ReadResultData(data), gofuse.OK
	case rootIno:
		return nil, gofuse.EISDIR
	}
	return nil, gofuse.EBADF
}

// readDisk reads up to size bytes at off into buf; a read is cut at the end
// of the disk like a regular file's.
func (r *rawFS) readDisk(off uint64, size uint32, buf []byte) (gofuse.ReadResult, gofuse.Status) {
	n := min(uint64(size), uint64(len(buf)))
	if off >= r.size || n == 0 {
		return gofuse.ReadResultData(nil), gofuse.OK
	}
	n = min(n, r.size-off)
	p := buf[:n]
	got, err := r.b.ReadAt(p, int64(off))
	if got == len(p) && (err == nil || err == io.EOF) {
		return gofuse.ReadResultData(p), gofuse.OK
	}
	if err == nil {
		err = io.ErrUnexpectedEOF
	}
	return nil, r.fail("read", int64(off), int64(n), err)
}

// Write writes a contiguous request (the /dev/fuse case).
func (r *rawFS) Write(_ <-chan struct{}, in *gofuse.WriteIn, data []byte) (uint32, gofuse.Status) {
	switch in.NodeId {
	case diskIno:
		return r.writeDisk(in.Offset, data)
	case rootIno:
		return 0, gofuse.EISDIR
	}
	return 0, gofuse.EBADF
}

// Writev handles a WRITE whose payload arrived in pieces (virtiofs); it is
// joined so the Backend sees one write, never a torn one.
func (r *rawFS) Writev(c <-chan struct{}, in *gofuse.WriteIn, data [][]byte) (uint32, gofuse.Status) {
	if len(data) == 1 {
		return r.Write(c, in, data[0])
	}
	total := 0
	for _, d := range data {
		total += len(d)
	}
	buf := make([]byte, 0, total)
	for _, d := range data {
		buf = append(buf, d...)
	}
	return r.Write(c, in, buf)
}

// writeDisk writes data at off. Like a block device: ENOSPC at or past the
// end, a short write when the request crosses it.
func (r *rawFS) writeDisk(off uint64, data []byte) (uint32, gofuse.Status) {
	if len(data) == 0 {
		return 0, gofuse.OK
	}
	if off >= r.size {
		return 0, gofuse.Status(syscall.ENOSPC)
	}
	if uint64(len(data)) > r.size-off {
		data = data[:r.size-off]
	}
	n, err := r.b.WriteAt(data, int64(off))
	if err == nil && n != len(data) {
		err = io.ErrShortWrite
	}
	if err != nil {
		return 0, r.fail("write", int64(off), int64(len(data)), err)
	}
	return uint32(n), gofuse.OK
}

// Flush is sent on every close(2). It is not a durability point.
func (r *rawFS) Flush(<-chan struct{}, *gofuse.FlushIn) gofuse.Status { return gofuse.OK }

// Fsync makes everything acknowledged so far durable. fsync and fdatasync
// (FsyncFlags&1) are treated alike: both are a full barrier.
func (r *rawFS) Fsync(_ <-chan struct{}, in *gofuse.FsyncIn) gofuse.Status {
	if in.NodeId != diskIno {
		return gofuse.OK
	}
	if err := r.b.Sync(); err != nil {
		return r.fail("fsync", 0, 0, err)
	}
	return gofuse.OK
}

func (r *rawFS) FsyncDir(<-chan struct{}, *gofuse.FsyncIn) gofuse.Status { return gofuse.OK }

func (r *rawFS) Fallocate(_ <-chan struct{}, in *gofuse.FallocateIn) gofuse.Status {
	switch in.NodeId {
	case diskIno:
	case rootIno:
		return gofuse.EISDIR
	default:
		return gofuse.Status(syscall.EOPNOTSUPP)
	}
	off, end := in.Offset, in.Offset+in.Length
	if in.Length == 0 || end < off || end > 1<<63-1 {
		return gofuse.EINVAL
	}
	switch in.Mode {
	case 0:
		// Plain allocation: everything inside the disk is allocated.
		if end > r.size {
			return gofuse.Status(syscall.EOPNOTSUPP)
		}
		return gofuse.OK
	case fallocKeepSize:
		return gofuse.OK
	case fallocZeroRange:
		if end > r.size {
			return gofuse.Status(syscall.EOPNOTSUPP)
		}
		return r.discard(off, end)
	case fallocPunchHole | fallocKeepSize, fallocZeroRange | fallocKeepSize:
		return r.discard(off, end)
	}
	return gofuse.Status(syscall.EOPNOTSUPP)
}

// discard makes [off, end) clipped to the disk read as zeros.
func (r *rawFS) discard(off, end uint64) gofuse.Status {
	end = min(end, r.size)
	if off >= end {
		return gofuse.OK
	}
	if err := r.b.Discard(int64(off), int64(end-off)); err != nil {
		return r.fail("discard", int64(off), int64(end-off), err)
	}
	return gofuse.OK
}

func (r *rawFS) OpenDir(_ <-chan struct{}, in *gofuse.OpenIn, _ *gofuse.OpenOut) gofuse.Status {
	switch {
	case in.NodeId == rootIno:
		return gofuse.OK
	case r.exists(in.NodeId):
		return gofuse.ENOTDIR
	}
	return gofuse.ENOENT
}

func (r *rawFS) ReadDir(_ <-chan struct{}, in *gofuse.ReadIn, out *gofuse.DirEntryList) gofuse.Status {
	if in.NodeId != rootIno {
		return gofuse.ENOTDIR
	}
	entries := []gofuse.DirEntry{
		{Name: ".", Ino: rootIno, Mode: syscall.S_IFDIR},
		{Name: "..", Ino: rootIno, Mode: syscall.S_IFDIR},
		{Name: diskName, Ino: diskIno, Mode: syscall.S_IFREG},
	}
	if r.stats != nil {
		entries = append(entries, gofuse.DirEntry{Name: statsName, Ino: statsIno, Mode: syscall.S_IFREG})
	}
	for i := in.Offset; i < uint64(len(entries)); i++ {
		e := entries[i]
		e.Off = i + 1 // the offset of the next entry
		if !out.AddDirEntry(e) {
			break
		}
	}
	return gofuse.OK
}

func (r *rawFS) ReleaseDir(*gofuse.ReleaseIn) {}

func (r *rawFS) StatFs(_ <-chan struct{}, _ *gofuse.InHeader, out *gofuse.StatfsOut) gofuse.Status {
	*out = gofuse.StatfsOut{
		Blocks:  r.size / blockSize,
		Files:   numInos - 1,
		Bsize:   blockSize,
		Frsize:  blockSize,
		NameLen: 255,
	}
	return gofuse.OK
}

// The tree is fixed: creating, removing, renaming and linking are refused.

func (r *rawFS) Mknod(<-chan struct{}, *gofuse.MknodIn, string, *gofuse.EntryOut) gofuse.Status {
	return gofuse.EPERM
}

func (r *rawFS) Mkdir(<-chan struct{}, *gofuse.MkdirIn, string, *gofuse.EntryOut) gofuse.Status {
	return gofuse.EPERM
}

func (r *rawFS) Create(<-chan struct{}, *gofuse.CreateIn, string, *gofuse.CreateOut) gofuse.Status {
	return gofuse.EPERM
}

func (r *rawFS) Tmpfile(<-chan struct{}, *gofuse.CreateIn, *gofuse.CreateOut) gofuse.Status {
	return gofuse.EPERM
}

func (r *rawFS) Unlink(<-chan struct{}, *gofuse.InHeader, string) gofuse.Status {
	return gofuse.EPERM
}

func (r *rawFS) Rmdir(<-chan struct{}, *gofuse.InHeader, string) gofuse.Status {
	return gofuse.EPERM
}

func (r *rawFS) Rename(<-chan struct{}, *gofuse.RenameIn, string, string) gofuse.Status {
	return gofuse.EPERM
}

func (r *rawFS) Link(<-chan struct{}, *gofuse.LinkIn, string, *gofuse.EntryOut) gofuse.Status {
	return gofuse.EPERM
}

func (r *rawFS) Symlink(<-chan struct{}, *gofuse.InHeader, string, string, *gofuse.EntryOut) gofuse.Status {
	return gofuse.EPERM
}

// fail maps a Backend error to an errno. Errors that become EIO are logged,
// at most once per second.
func (r *rawFS) fail(op string, off, n int64, err error) gofuse.Status {
	st, known := statusOf(err)
	if st == gofuse.EIO {
		r.errLog.Error("wbcache/fuse: backend error, returning EIO",
			"op", op, "off", off, "len", n, "err", err, "recognised", known)
	} else {
		r.logger.Debug("wbcache/fuse: backend error", "op", op, "off", off, "len", n, "err", err, "errno", st)
	}
	return st
}
