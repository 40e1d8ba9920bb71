package main

import (
	"cmp"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// pcfs is the power-cut filesystem: it serves the regular files at the top
// of a directory, holding every write no fsync has covered in memory (see
// overlay), until a power cut keeps or drops each such sector.
//
// Directory operations (create, unlink, rename) go to the directory at
// once: the filesystem models a disk under file data, not a filesystem's
// own metadata journal.
type pcfs struct {
	dir      string
	keepProb float64
	logf     func(format string, args ...any)
	// lying makes fsync succeed without making anything durable: a disk
	// that ignores cache flushes (to check that the checker notices).
	lying bool

	// cutMu is read-held by every request that reads or changes data and
	// write-held by the power cut, which is therefore atomic with respect
	// to them.
	cutMu sync.RWMutex
	isCut bool
	rng   *rand.Rand // under cutMu (write)

	filesMu sync.Mutex
	files   map[uint64]*pcFile // by inode number of the file in dir

	// armed counts down the writes, fsyncs and fallocates left before
	// the filesystem cuts its own power (0: not armed); onCut reports
	// such a cut.
	armed atomic.Int64
	onCut func(cutStats, error)
}

// pcFile is one file of the directory: its descriptor and overlay.
type pcFile struct {
	ino uint64
	mu  sync.Mutex // guards ov and f's position-free I/O sequencing
	f   *os.File
	ov  *overlay
}

// osBase adapts an *os.File to baseFile.
type osBase struct{ f *os.File }

func (b osBase) ReadAt(p []byte, off int64) (int, error)  { return b.f.ReadAt(p, off) }
func (b osBase) WriteAt(p []byte, off int64) (int, error) { return b.f.WriteAt(p, off) }
func (b osBase) Truncate(size int64) error                { return b.f.Truncate(size) }
func (b osBase) Sync() error                              { return unix.Fdatasync(int(b.f.Fd())) }
func (b osBase) PunchHole(off, n int64) error {
	err := unix.Fallocate(int(b.f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
	if err == unix.EOPNOTSUPP {
		_, err = b.f.WriteAt(make([]byte, n), off)
	}
	return err
}

func newPCFS(dir string, seed uint64, keepProb float64, logf func(string, ...any)) *pcfs {
	return &pcfs{
		dir: dir, keepProb: keepProb, logf: logf,
		rng:   rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)),
		files: map[uint64]*pcFile{},
	}
}

// file returns the state of the file named name in dir, opening it on
// first use. st is its lstat.
func (p *pcfs) file(name string, st *unix.Stat_t) (*pcFile, error) {
	p.filesMu.Lock()
	defer p.filesMu.Unlock()
	if pf := p.files[st.Ino]; pf != nil {
		return pf, nil
	}
	f, err := os.OpenFile(filepath.Join(p.dir, name), os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	pf := &pcFile{ino: st.Ino, f: f, ov: newOverlay(st.Size)}
	p.files[st.Ino] = pf
	return pf, nil
}

// sortedFiles returns the files by inode number (a fixed order, so that a
// seeded cut makes the same choices for the same state).
func (p *pcfs) sortedFiles() []*pcFile {
	p.filesMu.Lock()
	defer p.filesMu.Unlock()
	out := make([]*pcFile, 0, len(p.files))
	for _, pf := range p.files {
		out = append(out, pf)
	}
	slices.SortFunc(out, func(a, b *pcFile) int { return cmp.Compare(a.ino, b.ino) })
	return out
}

// cutStats is what a power cut did.
type cutStats struct {
	files, kept, dropped int
	perFile              []string // "NAME kept K dropped D" for files that had unsynced sectors
	at                   string   // the request the power failed in, for an armed cut
}

// arm makes the n-th write, fsync or fallocate request from now cut the
// power: that request is lost, the ones before it are unsynced or synced
// as they were.
func (p *pcfs) arm(n int64) { p.armed.Store(max(n, 1)) }

// tripped counts a request down and, for the one that trips the armed
// cut, cuts the power. The caller must not hold cutMu. It returns true
// when the power was cut by this request (which is then lost).
func (p *pcfs) tripped(what string) bool {
	for {
		v := p.armed.Load()
		if v <= 0 {
			return false
		}
		if p.armed.CompareAndSwap(v, v-1) {
			if v != 1 {
				return false
			}
			cs, err := p.powerCut()
			cs.at = what
			if p.onCut != nil {
				p.onCut(cs, err)
			}
			return true
		}
	}
}

// powerCut keeps or drops every unsynced sector at random, syncs the
// files, and makes every later write, size change and fsync a no-op that
// succeeds. A second cut does nothing.
func (p *pcfs) powerCut() (cutStats, error) {
	p.cutMu.Lock()
	defer p.cutMu.Unlock()
	var cs cutStats
	if p.isCut {
		return cs, nil
	}
	p.isCut = true
	p.armed.Store(0)
	var firstErr error
	for _, pf := range p.sortedFiles() {
		pf.mu.Lock()
		if pf.ov.dirty() {
			cs.files++
		}
		k, d, err := pf.ov.cut(osBase{pf.f}, p.rng, p.keepProb)
		cs.kept += k
		cs.dropped += d
		if k+d > 0 {
			cs.perFile = append(cs.perFile, fmt.Sprintf("%s %d/%d", filepath.Base(pf.f.Name()), k, d))
		}
		if err == nil {
			err = osBase{pf.f}.Sync()
		}
		pf.mu.Unlock()
		if err != nil && firstErr == nil {
			firstErr = fmt.Errorf("power cut: %s: %w", pf.f.Name(), err)
		}
	}
	syncDir(p.dir)
	return cs, firstErr
}

// flushAll applies every unsynced write (a clean shutdown) unless the power
// was cut, and closes the files. It returns the sectors applied.
func (p *pcfs) flushAll() (int, error) {
	p.cutMu.Lock()
	defer p.cutMu.Unlock()
	n := 0
	var firstErr error
	for _, pf := range p.sortedFiles() {
		pf.mu.Lock()
		var err error
		if !p.isCut && pf.ov.dirty() {
			n += pf.ov.sectors()
			if err = pf.ov.sync(osBase{pf.f}); err == nil {
				err = osBase{pf.f}.Sync()
			}
		}
		if cerr := pf.f.Close(); err == nil {
			err = cerr
		}
		pf.mu.Unlock()
		if err != nil && firstErr == nil {
			firstErr = fmt.Errorf("%s: %w", pf.f.Name(), err)
		}
	}
	p.filesMu.Lock()
	p.files = map[uint64]*pcFile{}
	p.filesMu.Unlock()
	syncDir(p.dir)
	return n, firstErr
}

func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
}

// ---------------------------------------------------------------- nodes

type pcRoot struct {
	fs.Inode
	p *pcfs
}

type pcNode struct {
	fs.Inode
	p  *pcfs
	pf *pcFile
}

var (
	_ fs.NodeLookuper  = (*pcRoot)(nil)
	_ fs.NodeReaddirer = (*pcRoot)(nil)
	_ fs.NodeCreater   = (*pcRoot)(nil)
	_ fs.NodeUnlinker  = (*pcRoot)(nil)
	_ fs.NodeRenamer   = (*pcRoot)(nil)
	_ fs.NodeGetattrer = (*pcRoot)(nil)
	_ fs.NodeStatfser  = (*pcRoot)(nil)

	_ fs.NodeOpener    = (*pcNode)(nil)
	_ fs.NodeReader    = (*pcNode)(nil)
	_ fs.NodeWriter    = (*pcNode)(nil)
	_ fs.NodeFsyncer   = (*pcNode)(nil)
	_ fs.NodeFlusher   = (*pcNode)(nil)
	_ fs.NodeGetattrer = (*pcNode)(nil)
	_ fs.NodeSetattrer = (*pcNode)(nil)
	_ fs.NodeAllocater = (*pcNode)(nil)
)

func (r *pcRoot) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	var st unix.Stat_t
	if err := unix.Stat(r.p.dir, &st); err != nil {
		return fs.ToErrno(err)
	}
	out.FromStat(toSyscallStat(&st))
	return 0
}

func (r *pcRoot) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	var s syscall.Statfs_t
	if err := syscall.Statfs(r.p.dir, &s); err != nil {
		return fs.ToErrno(err)
	}
	out.FromStatfsT(&s)
	return 0
}

// validName accepts names of entries directly in the directory.
func validName(name string) bool {
	return name != "" && name != "." && name != ".." && filepath.Base(name) == name
}

func (r *pcRoot) child(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(r.p.dir, name), &st); err != nil {
		return nil, fs.ToErrno(err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, syscall.ENOENT // only regular files are served
	}
	pf, err := r.p.file(name, &st)
	if err != nil {
		return nil, fs.ToErrno(err)
	}
	n := &pcNode{p: r.p, pf: pf}
	ch := r.NewInode(ctx, n, fs.StableAttr{Mode: syscall.S_IFREG, Ino: st.Ino})
	r.p.cutMu.RLock()
	pf.mu.Lock()
	fillAttr(&out.Attr, &st, pf.ov.size)
	pf.mu.Unlock()
	r.p.cutMu.RUnlock()
	return ch, 0
}

func (r *pcRoot) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	if !validName(name) {
		return nil, syscall.ENOENT
	}
	return r.child(ctx, name, out)
}

func (r *pcRoot) Readdir(ctx context.Context) (fs.DirStream, syscall.Errno) {
	ents, err := os.ReadDir(r.p.dir)
	if err != nil {
		return nil, fs.ToErrno(err)
	}
	var list []fuse.DirEntry
	for _, e := range ents {
		if !e.Type().IsRegular() {
			continue
		}
		info, err := e.Info()
		if err != nil {
			continue
		}
		st, _ := info.Sys().(*syscall.Stat_t)
		var ino uint64
		if st != nil {
			ino = st.Ino
		}
		list = append(list, fuse.DirEntry{Name: e.Name(), Mode: syscall.S_IFREG, Ino: ino})
	}
	return fs.NewListDirStream(list), 0
}

func (r *pcRoot) Create(ctx context.Context, name string, flags uint32, mode uint32, out *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	if !validName(name) {
		return nil, nil, 0, syscall.EINVAL
	}
	r.p.cutMu.RLock()
	cut := r.p.isCut
	r.p.cutMu.RUnlock()
	if cut {
		return nil, nil, 0, syscall.EROFS
	}
	fd, err := unix.Open(filepath.Join(r.p.dir, name), unix.O_RDWR|unix.O_CREAT|unix.O_CLOEXEC|int(flags&unix.O_EXCL), mode&07777)
	if err != nil {
		return nil, nil, 0, fs.ToErrno(err)
	}
	unix.Close(fd)
	ch, errno := r.child(ctx, name, out)
	return ch, nil, fuse.FOPEN_KEEP_CACHE, errno
}

func (r *pcRoot) Unlink(ctx context.Context, name string) syscall.Errno {
	if !validName(name) {
		return syscall.ENOENT
	}
	r.p.cutMu.RLock()
	defer r.p.cutMu.RUnlock()
	if r.p.isCut {
		return syscall.EROFS
	}
	path := filepath.Join(r.p.dir, name)
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		return fs.ToErrno(err)
	}
	if err := unix.Unlink(path); err != nil {
		return fs.ToErrno(err)
	}
	if st.Nlink <= 1 {
		// Its unsynced writes go with it. The node may stay open; it
		// keeps its descriptor and overlay until the filesystem stops.
		r.p.filesMu.Lock()
		delete(r.p.files, st.Ino)
		r.p.filesMu.Unlock()
	}
	return 0
}

func (r *pcRoot) Rename(ctx context.Context, name string, newParent fs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	if !validName(name) || !validName(newName) {
		return syscall.EINVAL
	}
	if newParent.EmbeddedInode() != r.EmbeddedInode() {
		return syscall.EXDEV
	}
	r.p.cutMu.RLock()
	defer r.p.cutMu.RUnlock()
	if r.p.isCut {
		return syscall.EROFS
	}
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(r.p.dir, newName), &st); err == nil && st.Nlink <= 1 {
		r.p.filesMu.Lock()
		delete(r.p.files, st.Ino) // replaced: its unsynced writes go with it
		r.p.filesMu.Unlock()
	}
	err := unix.Renameat2(unix.AT_FDCWD, filepath.Join(r.p.dir, name), unix.AT_FDCWD, filepath.Join(r.p.dir, newName), uint(flags))
	return fs.ToErrno(err)
}

// Open keeps the kernel page cache (no FOPEN_DIRECT_IO): shared writable
// mappings work, and nothing but this filesystem changes the files.
func (n *pcNode) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	return nil, fuse.FOPEN_KEEP_CACHE, 0
}

func (n *pcNode) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	var st unix.Stat_t
	if err := unix.Fstat(int(n.pf.f.Fd()), &st); err != nil {
		return fs.ToErrno(err)
	}
	n.p.cutMu.RLock()
	n.pf.mu.Lock()
	fillAttr(&out.Attr, &st, n.pf.ov.size)
	n.pf.mu.Unlock()
	n.p.cutMu.RUnlock()
	return 0
}

func (n *pcNode) Setattr(ctx context.Context, f fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if size, ok := in.GetSize(); ok {
		n.p.cutMu.RLock()
		if !n.p.isCut {
			n.pf.mu.Lock()
			n.pf.ov.truncate(int64(size))
			n.pf.mu.Unlock()
		}
		n.p.cutMu.RUnlock()
	}
	// Mode, owner and times are not modelled: they are left as they are.
	return n.Getattr(ctx, f, out)
}

func (n *pcNode) Read(ctx context.Context, f fs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	n.p.cutMu.RLock()
	defer n.p.cutMu.RUnlock()
	n.pf.mu.Lock()
	defer n.pf.mu.Unlock()
	k, err := n.pf.ov.read(osBase{n.pf.f}, dest, off)
	if err != nil {
		n.p.logf("read %s at %d: %v", n.pf.f.Name(), off, err)
		return nil, syscall.EIO
	}
	return fuse.ReadResultData(dest[:k]), 0
}

func (n *pcNode) Write(ctx context.Context, f fs.FileHandle, data []byte, off int64) (uint32, syscall.Errno) {
	if n.p.tripped(fmt.Sprintf("a write of %d bytes at %d to %s", len(data), off, filepath.Base(n.pf.f.Name()))) {
		return uint32(len(data)), 0
	}
	n.p.cutMu.RLock()
	defer n.p.cutMu.RUnlock()
	if n.p.isCut {
		return uint32(len(data)), 0 // the power is off: lost
	}
	n.pf.mu.Lock()
	defer n.pf.mu.Unlock()
	if err := n.pf.ov.write(osBase{n.pf.f}, data, off); err != nil {
		n.p.logf("write %s at %d: %v", n.pf.f.Name(), off, err)
		return 0, syscall.EIO
	}
	return uint32(len(data)), 0
}

// Fsync applies the file's unsynced writes to the file in the directory,
// then fdatasyncs that. The kernel has written back the file's dirty
// pages (including those of shared mappings) before it sends FSYNC.
func (n *pcNode) Fsync(ctx context.Context, f fs.FileHandle, flags uint32) syscall.Errno {
	if n.p.tripped("an fsync of " + filepath.Base(n.pf.f.Name())) {
		return 0
	}
	n.p.cutMu.RLock()
	if n.p.isCut || n.p.lying {
		n.p.cutMu.RUnlock()
		return 0
	}
	n.pf.mu.Lock()
	err := n.pf.ov.sync(osBase{n.pf.f})
	n.pf.mu.Unlock()
	n.p.cutMu.RUnlock()
	if err == nil {
		// What was applied is what survives a cut from now on. Syncing
		// the file in the directory (for a crash of the machine itself)
		// holds no lock: writes go on into the overlay, and a power cut
		// need not wait for it.
		err = osBase{n.pf.f}.Sync()
	}
	if err != nil {
		n.p.logf("fsync %s: %v", n.pf.f.Name(), err)
		return syscall.EIO
	}
	return 0
}

func (n *pcNode) Flush(ctx context.Context, f fs.FileHandle) syscall.Errno { return 0 }

// Allocate: PUNCH_HOLE and ZERO_RANGE are unsynced writes of zeros;
// a plain allocation only changes the size (when KEEP_SIZE is not given).
func (n *pcNode) Allocate(ctx context.Context, f fs.FileHandle, off uint64, size uint64, mode uint32) syscall.Errno {
	if n.p.tripped(fmt.Sprintf("a fallocate (mode %#x) of %d bytes at %d to %s", mode, size, off, filepath.Base(n.pf.f.Name()))) {
		return 0
	}
	n.p.cutMu.RLock()
	defer n.p.cutMu.RUnlock()
	if n.p.isCut {
		return 0
	}
	n.pf.mu.Lock()
	defer n.pf.mu.Unlock()
	ov := n.pf.ov
	o, l := int64(off), int64(size)
	keep := mode&unix.FALLOC_FL_KEEP_SIZE != 0
	var err error
	switch mode &^ unix.FALLOC_FL_KEEP_SIZE {
	case unix.FALLOC_FL_PUNCH_HOLE:
		if !keep {
			return syscall.EINVAL
		}
		if o < ov.size {
			err = ov.zero(osBase{n.pf.f}, o, min(l, ov.size-o))
		}
	case unix.FALLOC_FL_ZERO_RANGE:
		end := o + l
		if keep {
			end = min(end, ov.size)
		}
		if end > o {
			err = ov.zero(osBase{n.pf.f}, o, end-o)
		}
	case 0:
		if !keep && o+l > ov.size {
			ov.truncate(o + l)
		}
	default:
		return syscall.EOPNOTSUPP
	}
	if err != nil {
		n.p.logf("fallocate %s: %v", n.pf.f.Name(), err)
		return syscall.EIO
	}
	return 0
}

func fillAttr(a *fuse.Attr, st *unix.Stat_t, size int64) {
	a.FromStat(toSyscallStat(st))
	a.Size = uint64(size)
	a.Blocks = (uint64(size) + 511) / 512
}

func toSyscallStat(st *unix.Stat_t) *syscall.Stat_t {
	return &syscall.Stat_t{
		Dev: st.Dev, Ino: st.Ino, Nlink: st.Nlink, Mode: st.Mode, Uid: st.Uid, Gid: st.Gid,
		Rdev: st.Rdev, Size: st.Size, Blksize: st.Blksize, Blocks: st.Blocks,
		Atim: syscall.Timespec{Sec: st.Atim.Sec, Nsec: st.Atim.Nsec},
		Mtim: syscall.Timespec{Sec: st.Mtim.Sec, Nsec: st.Mtim.Nsec},
		Ctim: syscall.Timespec{Sec: st.Ctim.Sec, Nsec: st.Ctim.Nsec},
	}
}

// mountPCFS mounts p at mnt. The mount has the kernel page cache above it
// (no direct_io), no writeback cache (every write() reaches the
// filesystem when it is made; dirty pages of shared mappings when the
// kernel writes them back), and 1 s attribute and entry timeouts.
func mountPCFS(p *pcfs, mnt string) (*fuse.Server, error) {
	sec := time.Second
	opts := &fs.Options{
		EntryTimeout:    &sec,
		AttrTimeout:     &sec,
		NegativeTimeout: &sec,
		MountOptions: fuse.MountOptions{
			FsName:        p.dir,
			Name:          "wbcache-powercut",
			DirectMount:   true,
			MaxWrite:      1 << 20,
			DisableXAttrs: true,
			// The files change only through this filesystem: the kernel
			// must not drop its cached pages because an attribute changed.
			ExplicitDataCacheControl: true,
		},
	}
	return fs.Mount(mnt, &pcRoot{p: p}, opts)
}
