package device

import (
	"bytes"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// newFile creates a size-byte file in a fresh temp dir and returns its path.
func newFile(t *testing.T, size int64) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "dev.img")
	if err := Create(path, size); err != nil {
		t.Fatalf("Create: %v", err)
	}
	return path
}

// openFile opens path and closes it at the end of the test.
func openFile(t *testing.T, path string, opts Options) *File {
	t.Helper()
	f, err := Open(path, opts)
	if err != nil {
		t.Fatalf("Open(%s, %+v): %v", path, opts, err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func TestCreate(t *testing.T) {
	path := newFile(t, 1<<20)
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() != 1<<20 || st.Mode().Perm() != 0o600 || !st.Mode().IsRegular() {
		t.Errorf("created file: size %d mode %v", st.Size(), st.Mode())
	}
	wantErr(t, "Create over an existing file", Create(path, 10), fs.ErrExist)
	if err := Create(filepath.Join(t.TempDir(), "neg"), -1); err == nil {
		t.Error("Create with negative size succeeded")
	}
}

func TestFileRoundTrip(t *testing.T) {
	f := openFile(t, newFile(t, 1<<20), Options{})
	if f.Size() != 1<<20 {
		t.Fatalf("Size = %d", f.Size())
	}
	data := pattern(10000, 3)
	mustWrite(t, f, data, 12345)
	if got := mustRead(t, f, 12345, len(data)); !bytes.Equal(got, data) {
		t.Error("read back differs from what was written")
	}
	// The last byte of the device is reachable.
	mustWrite(t, f, []byte{9}, f.Size()-1)
	if got := mustRead(t, f, f.Size()-1, 1); got[0] != 9 {
		t.Errorf("last byte = %d", got[0])
	}
	if err := f.Sync(); err != nil {
		t.Fatalf("Sync: %v", err)
	}
	if f.Path() == "" {
		t.Error("Path is empty")
	}
}

func TestFileDirect(t *testing.T) {
	path := newFile(t, 1<<20)
	f := openFile(t, path, Options{Direct: true})
	buf := AlignedBuffer(2 * BlockSize)
	copy(buf, pattern(len(buf), 5))
	mustWrite(t, f, buf, 4*BlockSize)
	got := AlignedBuffer(2 * BlockSize)
	if _, err := f.ReadAt(got, 4*BlockSize); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, buf) {
		t.Error("direct read back differs")
	}
	if err := f.Zero(4*BlockSize, BlockSize); err != nil {
		t.Fatalf("Zero: %v", err)
	}
	if _, err := f.ReadAt(got, 4*BlockSize); err != nil {
		t.Fatal(err)
	}
	if !allZero(got[:BlockSize]) || !bytes.Equal(got[BlockSize:], buf[BlockSize:]) {
		t.Error("direct Zero zeroed the wrong range")
	}
	// The kernel enforces alignment, and we report its refusal.
	if _, err := f.WriteAt(buf[1:BlockSize+1], 0); err == nil {
		t.Error("unaligned O_DIRECT write succeeded")
	}
}

func TestFileExclusive(t *testing.T) {
	path := newFile(t, 4096)
	f, err := Open(path, Options{Exclusive: true})
	if err != nil {
		t.Fatal(err)
	}
	_, err = Open(path, Options{Exclusive: true, ReadOnly: true})
	wantErr(t, "second exclusive Open", err, ErrLocked)
	if err != nil && (!strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "another wbcache process")) {
		t.Errorf("lock error %q should name the path and the other process", err)
	}
	// A non-exclusive open does not take the lock.
	g := openFile(t, path, Options{})
	g.Close()
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	// Close released the lock.
	openFile(t, path, Options{Exclusive: true})
}

func TestFileZero(t *testing.T) {
	const size = 3 << 20
	f := openFile(t, newFile(t, size), Options{})
	mustWrite(t, f, pattern(size, 1), 0)
	// Unaligned, and spanning more than one fallback chunk.
	off, n := int64(1000), int64(zeroChunk+5000)
	if err := f.Zero(off, n); err != nil {
		t.Fatalf("Zero: %v", err)
	}
	got := mustRead(t, f, 0, size)
	if !allZero(got[off : off+n]) {
		t.Error("zeroed range does not read as zeros")
	}
	want := pattern(size, 1)
	if !bytes.Equal(got[:off], want[:off]) || !bytes.Equal(got[off+n:], want[off+n:]) {
		t.Error("Zero touched bytes outside its range")
	}
	if err := f.Zero(5, 0); err != nil {
		t.Errorf("empty Zero: %v", err)
	}
}

func TestFileWriteZerosFallback(t *testing.T) {
	const size = 3 << 20
	f := openFile(t, newFile(t, size), Options{})
	mustWrite(t, f, pattern(size, 2), 0)
	off, n := int64(777), int64(2*zeroChunk+1)
	f.mu.RLock()
	err := f.writeZeros(f.fd, off, n)
	f.mu.RUnlock()
	if err != nil {
		t.Fatal(err)
	}
	got := mustRead(t, f, 0, size)
	want := pattern(size, 2)
	clear(want[off : off+n])
	if !bytes.Equal(got, want) {
		t.Error("writeZeros wrote the wrong bytes")
	}
	if !isAligned(zeroBuf()) || len(zeroBuf()) != zeroChunk {
		t.Error("zero buffer is not an aligned 1 MiB")
	}
}

func TestFileOutOfRange(t *testing.T) {
	f := openFile(t, newFile(t, 8192), Options{})
	buf := make([]byte, 100)
	cases := []struct {
		name string
		err  error
	}{
		{"read past end", second(f.ReadAt(buf, 8192-99))},
		{"read negative", second(f.ReadAt(buf, -1))},
		{"read far", second(f.ReadAt(buf, 1<<62))},
		{"write past end", second(f.WriteAt(buf, 8100))},
		{"write negative", second(f.WriteAt(buf, -100))},
		{"zero past end", f.Zero(8000, 193)},
		{"zero negative offset", f.Zero(-1, 10)},
		{"zero negative length", f.Zero(10, -1)},
		{"zero overflow", f.Zero(1, 1<<63-1)},
	}
	for _, c := range cases {
		wantErr(t, c.name, c.err, ErrOutOfRange)
	}
	// Exactly at the end is fine when empty.
	if _, err := f.ReadAt(nil, 8192); err != nil {
		t.Errorf("empty read at end: %v", err)
	}
}

func second(_ int, err error) error { return err }

func TestFileClosed(t *testing.T) {
	f, err := Open(newFile(t, 8192), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 10)
	wantErr(t, "read", second(f.ReadAt(buf, 0)), ErrClosed)
	wantErr(t, "write", second(f.WriteAt(buf, 0)), ErrClosed)
	wantErr(t, "zero", f.Zero(0, 10), ErrClosed)
	wantErr(t, "sync", f.Sync(), ErrClosed)
	wantErr(t, "close", f.Close(), ErrClosed)
}

func TestFileReadOnly(t *testing.T) {
	path := newFile(t, 8192)
	w := openFile(t, path, Options{})
	mustWrite(t, w, []byte("hello"), 10)
	f := openFile(t, path, Options{ReadOnly: true})
	if got := mustRead(t, f, 10, 5); string(got) != "hello" {
		t.Errorf("read %q", got)
	}
	wantErr(t, "write", second(f.WriteAt([]byte("x"), 0)), fs.ErrPermission)
	wantErr(t, "zero", f.Zero(0, 10), fs.ErrPermission)
}

func TestFileShortRead(t *testing.T) {
	path := newFile(t, 8192)
	f := openFile(t, path, Options{})
	// Shrink the file behind the open File's back.
	if err := os.Truncate(path, 4096); err != nil {
		t.Fatal(err)
	}
	n, err := f.ReadAt(make([]byte, 8192), 0)
	wantErr(t, "read of a shrunk file", err, io.ErrUnexpectedEOF)
	if n != 4096 {
		t.Errorf("short read returned n = %d, want 4096", n)
	}
}

func TestFileIdentity(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	for _, p := range []string{a, b} {
		if err := Create(p, 4096); err != nil {
			t.Fatal(err)
		}
	}
	f := openFile(t, a, Options{})
	id := f.Identity()
	f.Close()
	if again := openFile(t, a, Options{ReadOnly: true}).Identity(); again != id {
		t.Error("identity changed across reopen")
	}
	if other := openFile(t, b, Options{}).Identity(); other == id {
		t.Error("two files share an identity")
	}
	// A renamed file is the same file.
	c := filepath.Join(dir, "c")
	if err := os.Rename(a, c); err != nil {
		t.Fatal(err)
	}
	if renamed := openFile(t, c, Options{}).Identity(); renamed != id {
		t.Error("identity changed across rename")
	}
	if id == ([16]byte{}) {
		t.Error("identity is all zeros")
	}
}

func TestOpenRefusesOtherKinds(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct{ path, kind string }{
		{dir, "a directory"},
		{fifo, "a FIFO"},
		{"/dev/null", "a character device"},
	}
	for _, c := range cases {
		for _, ro := range []bool{false, true} {
			f, err := Open(c.path, Options{ReadOnly: ro})
			if err == nil {
				f.Close()
				t.Errorf("Open(%s) succeeded", c.path)
				continue
			}
			if !strings.Contains(err.Error(), c.path) || !strings.Contains(err.Error(), c.kind) {
				t.Errorf("Open(%s): error %q should name the path and %q", c.path, err, c.kind)
			}
		}
	}
	_, err := Open(filepath.Join(dir, "missing"), Options{})
	wantErr(t, "Open of a missing file", err, fs.ErrNotExist)
}

func TestFileConcurrentCloseAndIO(t *testing.T) {
	f, err := Open(newFile(t, 1<<20), Options{})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 4)
	for i := range 4 {
		go func() {
			buf := pattern(4096, byte(i))
			for {
				if _, err := f.WriteAt(buf, int64(i)*4096); err != nil {
					done <- err
					return
				}
			}
		}()
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	for range 4 {
		if err := <-done; !errors.Is(err, ErrClosed) {
			t.Errorf("writer stopped with %v, want ErrClosed", err)
		}
	}
}
