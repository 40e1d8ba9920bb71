package main

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/stretchr/testify/require"
	"github.com/wbcache/wbcache/device"
)

// faultDisk is a backing device that fails on demand: a FUSE filesystem,
// served by the test process, with one file, disk, kept in a regular file.
// Its writes or syncs can be made to fail with EIO, and its writes to
// wait. It stays mounted while daemons come and go, so the backing
// device keeps its identity.
type faultDisk struct {
	fs.Inode
	f          *os.File
	size       int64
	failWrites atomic.Bool
	failSyncs  atomic.Bool

	mu   sync.Mutex
	gate chan struct{} // while not nil, writes wait for it to close
}

var (
	_ fs.NodeOnAdder   = (*faultDisk)(nil)
	_ fs.NodeGetattrer = (*faultFile)(nil)
	_ fs.NodeOpener    = (*faultFile)(nil)
	_ fs.NodeReader    = (*faultFile)(nil)
	_ fs.NodeWriter    = (*faultFile)(nil)
	_ fs.NodeFsyncer   = (*faultFile)(nil)
	_ fs.NodeFlusher   = (*faultFile)(nil)
)

// faultFile is the disk file of a faultDisk.
type faultFile struct {
	fs.Inode
	d *faultDisk
}

// mountFaultDisk serves a zeroed file of size bytes as DIR/fault/disk and
// returns the filesystem and the file's path.
func mountFaultDisk(t *testing.T, dir string, size int64) (*faultDisk, string) {
	t.Helper()
	img := filepath.Join(dir, "backing.img")
	require.NoError(t, device.Create(img, size))
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	require.NoError(t, err)
	d := &faultDisk{f: f, size: size}
	mnt := filepath.Join(dir, "fault")
	require.NoError(t, os.Mkdir(mnt, 0o755))
	srv, err := fs.Mount(mnt, d, &fs.Options{MountOptions: fuse.MountOptions{
		FsName: "wbcache-test-faultdisk", DirectMount: true, MaxWrite: 1 << 20, DisableXAttrs: true,
	}})
	require.NoError(t, err)
	t.Cleanup(func() {
		d.release()
		if err := srv.Unmount(); err != nil {
			_ = syscall.Unmount(mnt, syscall.MNT_DETACH)
		}
		f.Close()
	})
	return d, filepath.Join(mnt, "disk")
}

func (d *faultDisk) OnAdd(ctx context.Context) {
	ch := d.NewPersistentInode(ctx, &faultFile{d: d}, fs.StableAttr{Mode: syscall.S_IFREG, Ino: 2})
	d.AddChild("disk", ch, false)
}

// stall makes writes wait until release.
func (d *faultDisk) stall() {
	d.mu.Lock()
	if d.gate == nil {
		d.gate = make(chan struct{})
	}
	d.mu.Unlock()
}

func (d *faultDisk) release() {
	d.mu.Lock()
	if d.gate != nil {
		close(d.gate)
		d.gate = nil
	}
	d.mu.Unlock()
}

func (n *faultFile) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = syscall.S_IFREG | 0o600
	out.Size = uint64(n.d.size)
	out.Blocks = uint64(n.d.size) / 512
	return 0
}

func (n *faultFile) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	return nil, 0, 0
}

func (n *faultFile) Read(ctx context.Context, f fs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	k, err := n.d.f.ReadAt(dest, off)
	if err != nil && k == 0 && off < n.d.size {
		return nil, fs.ToErrno(err)
	}
	return fuse.ReadResultData(dest[:k]), 0
}

func (n *faultFile) Write(ctx context.Context, f fs.FileHandle, data []byte, off int64) (uint32, syscall.Errno) {
	n.d.mu.Lock()
	gate := n.d.gate
	n.d.mu.Unlock()
	if gate != nil {
		<-gate
	}
	if n.d.failWrites.Load() {
		return 0, syscall.EIO
	}
	k, err := n.d.f.WriteAt(data, off)
	if err != nil {
		return uint32(k), fs.ToErrno(err)
	}
	return uint32(k), 0
}

func (n *faultFile) Fsync(ctx context.Context, f fs.FileHandle, flags uint32) syscall.Errno {
	if n.d.failSyncs.Load() {
		return syscall.EIO
	}
	return fs.ToErrno(n.d.f.Sync())
}

func (n *faultFile) Flush(ctx context.Context, f fs.FileHandle) syscall.Errno { return 0 }

// newFaultRig is a rig whose backing device is a faultDisk of size bytes,
// with a cache of cacheSize bytes formatted for it.
func newFaultRig(t *testing.T, size, cacheSize int64) (*rig, *faultDisk) {
	t.Helper()
	needFUSE(t)
	dir := t.TempDir()
	fd, backing := mountFaultDisk(t, dir, size)
	r := &rig{dir: dir, backing: backing, cache: filepath.Join(dir, "cache.img"), mnt: filepath.Join(dir, "mnt"), size: size}
	require.NoError(t, os.Mkdir(r.mnt, 0o755))
	wantCode(t, 0, "format", "--cache", r.cache, "--cache-size", formatSizeExact(cacheSize), "--backing", r.backing)
	return r, fd
}
