package main

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"time"
)

// ioError marks an error of the file system under test.
type ioError struct{ err error }

func (e ioError) Error() string { return e.err.Error() }

func now() int64 { return time.Now().UnixNano() }

func cmdWrite(args []string) (int, error) {
	fl := flag.NewFlagSet("write", flag.ContinueOnError)
	dir := fl.String("dir", "", "directory on the file system under test")
	man := fl.String("manifest", "", "manifest file on another file system")
	seed := fl.Uint64("seed", 1, "random seed")
	dur := fl.Duration("duration", time.Hour, "stop after this long")
	ops := fl.Int("ops", 0, "stop after this many operations (0 = no limit)")
	budget := fl.Int64("budget", 256<<20, "keep the live files below about this many bytes")
	if err := fl.Parse(args); err != nil {
		return 2, err
	}
	if *dir == "" || *man == "" {
		return 2, errors.New("--dir and --manifest are required")
	}
	m, err := loadManifest(*man)
	if err != nil {
		return 1, err
	}
	for name, e := range m.entries {
		if e.pending() {
			return 1, fmt.Errorf("manifest has a pending change for %s: run 'wbcheck verify --resolve' first", name)
		}
	}
	if err := os.MkdirAll(*dir, 0o755); err != nil {
		return 2, ioError{err}
	}
	if err := syncDir(filepath.Dir(filepath.Clean(*dir))); err != nil {
		return 2, ioError{err}
	}
	if err := m.open(); err != nil {
		return 1, err
	}
	defer m.f.Close()

	w := &writer{dir: *dir, m: m, rng: rand.New(rand.NewPCG(*seed, *seed^0x9e3779b97f4a7c15)), budget: *budget}
	for name, e := range m.entries {
		if v, ok := e.last(); ok && v.kind == 'C' {
			w.live = append(w.live, name)
			w.liveBytes += v.size
		}
	}
	sort.Strings(w.live)
	deadline := time.Now().Add(*dur)
	start := time.Now()
	n := 0
	for ; (*ops == 0 || n < *ops) && time.Now().Before(deadline); n++ {
		if err := w.step(); err != nil {
			var ie ioError
			if errors.As(err, &ie) {
				fmt.Printf("wbcheck write: stopped by I/O error after %d operations in %.1fs (%s): %v\n",
					n, time.Since(start).Seconds(), w.counts(), err)
				return 2, nil
			}
			return 1, err
		}
	}
	fmt.Printf("wbcheck write: %d operations in %.1fs (%s)\n", n, time.Since(start).Seconds(), w.counts())
	return 0, nil
}

type writer struct {
	dir       string
	m         *manifest
	rng       *rand.Rand
	live      []string
	liveBytes int64
	budget    int64
	dirsMade  map[string]bool

	creates, replaces, appends, moves, deletes int
	bytes                                      int64
}

func (w *writer) counts() string {
	return fmt.Sprintf("%d creates, %d replaces, %d appends, %d moves, %d deletes, %d bytes fsync'd",
		w.creates, w.replaces, w.appends, w.moves, w.deletes, w.bytes)
}

func (w *writer) step() error {
	r := w.rng.IntN(100)
	switch {
	case len(w.live) > 0 && (w.liveBytes > w.budget || r < 10):
		return w.remove()
	case len(w.live) > 0 && r < 25:
		return w.replace()
	case len(w.live) > 0 && r < 45:
		return w.appendTo()
	case len(w.live) > 0 && r < 52:
		return w.move()
	default:
		return w.create()
	}
}

// content returns random file contents of a random size.
func (w *writer) content() []byte {
	var size int
	switch r := w.rng.IntN(100); {
	case r < 5:
		size = 1<<20 + w.rng.IntN(7<<20)
	case r < 30:
		size = 64<<10 + w.rng.IntN(960<<10)
	case r < 35:
		size = 0
	default:
		size = 1 + w.rng.IntN(64<<10)
	}
	return w.random(size)
}

// random returns size random bytes.
func (w *writer) random(size int) []byte {
	b := make([]byte, size)
	for i := 0; i+8 <= len(b); i += 8 {
		v := w.rng.Uint64()
		for k := 0; k < 8; k++ {
			b[i+k] = byte(v >> (8 * k))
		}
	}
	for i := len(b) &^ 7; i < len(b); i++ {
		b[i] = byte(w.rng.Uint32())
	}
	return b
}

func sum(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// writeChunks writes b to f in chunks of random size and fsyncs f.
func (w *writer) writeChunks(f *os.File, b []byte) error {
	for off := 0; off < len(b); {
		n := min(len(b)-off, 4096*(1+w.rng.IntN(64)))
		if _, err := f.Write(b[off : off+n]); err != nil {
			f.Close()
			return ioError{err}
		}
		off += n
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return ioError{err}
	}
	if err := f.Close(); err != nil {
		return ioError{err}
	}
	w.bytes += int64(len(b))
	return nil
}

// writeFile writes b to path in chunks of random size and fsyncs it.
func (w *writer) writeFile(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return ioError{err}
	}
	return w.writeChunks(f, b)
}

func (w *writer) mkdir(rel string) error {
	if w.dirsMade == nil {
		w.dirsMade = map[string]bool{}
	}
	if w.dirsMade[rel] {
		return nil
	}
	err := os.Mkdir(filepath.Join(w.dir, rel), 0o755)
	if err != nil && !errors.Is(err, fs.ErrExist) {
		return ioError{err}
	}
	if err := syncDir(w.dir); err != nil {
		return ioError{err}
	}
	w.dirsMade[rel] = true
	return nil
}

// newName is a name never used before, in one of 16 directories (made).
func (w *writer) newName() (string, error) {
	w.m.maxSeq++
	seq := w.m.maxSeq
	sub := fmt.Sprintf("d%02d", seq%16)
	return fmt.Sprintf("%s/f%08d", sub, seq), w.mkdir(sub)
}

// pick is a live name, its index in w.live and its committed state.
func (w *writer) pick() (int, string, version) {
	i := w.rng.IntN(len(w.live))
	v, _ := w.m.entries[w.live[i]].last()
	return i, w.live[i], v
}

func (w *writer) create() error {
	name, err := w.newName()
	if err != nil {
		return err
	}
	b := w.content()
	if err := w.writeFile(filepath.Join(w.dir, name), b); err != nil {
		return err
	}
	if err := syncDir(filepath.Join(w.dir, filepath.Dir(name))); err != nil {
		return ioError{err}
	}
	if err := w.m.record(name, version{kind: 'C', sum: sum(b), size: int64(len(b)), t: now()}); err != nil {
		return err
	}
	w.live = append(w.live, name)
	w.liveBytes += int64(len(b))
	w.creates++
	return nil
}

// replace writes a temporary file, fsyncs it, renames it over the name
// and fsyncs the directory.
func (w *writer) replace() error {
	_, name, cur := w.pick()
	b := w.content()
	v := version{kind: 'R', sum: sum(b), size: int64(len(b)), t: now()}
	if err := w.m.record(name, v); err != nil {
		return err
	}
	path := filepath.Join(w.dir, name)
	tmp := path + ".tmp"
	if err := w.writeFile(tmp, b); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return ioError{err}
	}
	if err := syncDir(filepath.Dir(path)); err != nil {
		return ioError{err}
	}
	v.kind, v.t = 'C', now()
	if err := w.m.record(name, v); err != nil {
		return err
	}
	w.liveBytes += v.size - cur.size
	w.replaces++
	return nil
}

// appendTo appends 1 byte to 64 KiB to a file (rarely a whole number of
// blocks, so its last block is rewritten) and fsyncs it. It first reads
// the file: its new content's checksum covers the old content, which must
// be the committed one.
func (w *writer) appendTo() error {
	_, name, cur := w.pick()
	path := filepath.Join(w.dir, name)
	old, err := os.ReadFile(path)
	if err != nil {
		return ioError{err}
	}
	if s := sum(old); s != cur.sum || int64(len(old)) != cur.size {
		return fmt.Errorf("%s holds %s (%d bytes) before an append, but its committed content is %s (%d bytes)",
			name, short(s), len(old), short(cur.sum), cur.size)
	}
	add := w.random(1 + w.rng.IntN(64<<10))
	v := version{kind: 'A', sum: sum(append(old, add...)), size: cur.size + int64(len(add)), t: now()}
	if err := w.m.record(name, v); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return ioError{err}
	}
	if err := w.writeChunks(f, add); err != nil {
		return err
	}
	v.kind, v.t = 'C', now()
	if err := w.m.record(name, v); err != nil {
		return err
	}
	w.liveBytes += int64(len(add))
	w.appends++
	return nil
}

// move renames a file to a new name, most often in another directory, and
// fsyncs both directories. The manifest records it as the old name's
// delete and the new name's create, both pending, then both committed.
func (w *writer) move() error {
	i, old, cur := w.pick()
	name, err := w.newName()
	if err != nil {
		return err
	}
	t := now()
	if err := w.m.record(old, version{kind: 'X', t: t}); err != nil {
		return err
	}
	if err := w.m.record(name, version{kind: 'R', sum: cur.sum, size: cur.size, t: t}); err != nil {
		return err
	}
	from, to := filepath.Join(w.dir, old), filepath.Join(w.dir, name)
	if err := os.Rename(from, to); err != nil {
		return ioError{err}
	}
	if err := syncDir(filepath.Dir(to)); err != nil {
		return ioError{err}
	}
	if filepath.Dir(from) != filepath.Dir(to) {
		if err := syncDir(filepath.Dir(from)); err != nil {
			return ioError{err}
		}
	}
	t = now()
	if err := w.m.record(old, version{kind: 'D', t: t}); err != nil {
		return err
	}
	if err := w.m.record(name, version{kind: 'C', sum: cur.sum, size: cur.size, t: t}); err != nil {
		return err
	}
	w.live[i] = name
	w.moves++
	return nil
}

func (w *writer) remove() error {
	i, name, cur := w.pick()
	if err := w.m.record(name, version{kind: 'X', t: now()}); err != nil {
		return err
	}
	path := filepath.Join(w.dir, name)
	if err := os.Remove(path); err != nil {
		return ioError{err}
	}
	if err := syncDir(filepath.Dir(path)); err != nil {
		return ioError{err}
	}
	if err := w.m.record(name, version{kind: 'D', t: now()}); err != nil {
		return err
	}
	w.liveBytes -= cur.size
	w.live[i] = w.live[len(w.live)-1]
	w.live = w.live[:len(w.live)-1]
	w.deletes++
	return nil
}
