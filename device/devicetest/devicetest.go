// Package devicetest mounts the filesystems that tests of the device layer,
// the engine and the command put cache files on: a size-limited tmpfs (a
// filesystem that fills up) and a FUSE loopback whose files are opened
// with direct I/O (a filesystem that refuses shared mappings). Both need
// root; the helpers skip the test, saying why, where they cannot mount.
package devicetest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// RequireRoot skips the test unless it runs as root (needed to mount).
func RequireRoot(t testing.TB, what string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skipf("SKIPPED: %s needs root to mount a filesystem: run the test as root", what)
	}
}

// MountTmpfs mounts a tmpfs of size bytes on a fresh directory and returns
// it; the test's cleanup unmounts it.
func MountTmpfs(t testing.TB, size int64) string {
	t.Helper()
	RequireRoot(t, "a test on a small filesystem")
	dir := t.TempDir()
	if err := unix.Mount("wbcache-test", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, fmt.Sprintf("size=%d,mode=0700", size)); err != nil {
		t.Skipf("SKIPPED: cannot mount a tmpfs on %s: %v", dir, err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, 0); err != nil {
			t.Errorf("unmounting the tmpfs on %s: %v", dir, err)
			unix.Unmount(dir, unix.MNT_DETACH)
		}
	})
	return dir
}

// Free returns the bytes free on the filesystem holding path.
func Free(t testing.TB, path string) int64 {
	t.Helper()
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		t.Fatalf("statfs %s: %v", path, err)
	}
	return int64(st.Bfree) * st.Bsize
}

// Fill writes a file in dir until its filesystem is full and returns the
// file's path: removing it frees the space again.
func Fill(t testing.TB, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "filler")
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatalf("creating the filler: %v", err)
	}
	defer f.Close()
	buf := make([]byte, 64<<10)
	for i := range buf {
		buf[i] = 0x5a
	}
	for len(buf) > 0 {
		_, err := f.Write(buf)
		if errors.Is(err, syscall.ENOSPC) {
			buf = buf[:len(buf)/2] // fill the last partial pages too
			continue
		}
		if err != nil {
			t.Fatalf("filling %s: %v", dir, err)
		}
	}
	return path
}

// MountDirectIO serves dir through a FUSE loopback filesystem, mounted on a
// fresh directory that it returns, whose files are opened with direct I/O
// (FOPEN_DIRECT_IO). The kernel refuses shared writable mappings of such
// files (mmap fails with ENODEV), as it does for the files of many FUSE
// filesystems. The test's cleanup unmounts it.
func MountDirectIO(t testing.TB, dir string) string {
	t.Helper()
	RequireRoot(t, "a test on a FUSE filesystem")
	if f, err := os.OpenFile("/dev/fuse", os.O_RDWR, 0); err != nil {
		t.Skipf("SKIPPED: a test on a FUSE filesystem needs /dev/fuse: %v", err)
	} else {
		f.Close()
	}
	var st syscall.Stat_t
	if err := syscall.Stat(dir, &st); err != nil {
		t.Fatal(err)
	}
	root := &fs.LoopbackRoot{Path: dir, Dev: uint64(st.Dev)}
	root.NewNode = func(r *fs.LoopbackRoot, _ *fs.Inode, _ string, _ *syscall.Stat_t) fs.InodeEmbedder {
		return &directNode{LoopbackNode: fs.LoopbackNode{RootData: r}}
	}
	root.RootNode = root.NewNode(root, nil, "", &st)
	mnt := t.TempDir()
	srv, err := fs.Mount(mnt, root.RootNode, &fs.Options{
		// Without passthrough: the kernel would map the underlying file.
		MountOptions: fuse.MountOptions{FsName: "wbcache-directio", Name: "loopback", DisabledCapabilities: fuse.CAP_PASSTHROUGH},
	})
	if err != nil {
		t.Skipf("SKIPPED: cannot mount a FUSE filesystem on %s: %v", mnt, err)
	}
	t.Cleanup(func() {
		if err := srv.Unmount(); err != nil {
			// Something still uses it (a mapping left behind): detach it
			// and leave the server to end with its last user.
			t.Errorf("unmounting the FUSE loopback on %s: %v", mnt, err)
			unix.Unmount(mnt, unix.MNT_DETACH)
			return
		}
		srv.Wait()
	})
	return mnt
}

// directNode is a loopback node whose files are opened with direct I/O.
type directNode struct {
	fs.LoopbackNode
}

var (
	_ fs.NodeOpener  = (*directNode)(nil)
	_ fs.NodeCreater = (*directNode)(nil)
)

func (n *directNode) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	fh, fl, errno := n.LoopbackNode.Open(ctx, flags)
	return fh, fl | fuse.FOPEN_DIRECT_IO, errno
}

func (n *directNode) Create(ctx context.Context, name string, flags, mode uint32, out *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	in, fh, fl, errno := n.LoopbackNode.Create(ctx, name, flags, mode, out)
	return in, fh, fl | fuse.FOPEN_DIRECT_IO, errno
}
