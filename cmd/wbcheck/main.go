// Command wbcheck is a helper of the crash loops (crashtest/). It is not
// part of wbcache itself.
//
//	wbcheck write  --dir DIR --manifest FILE [--seed N] [--duration D] [--ops N] [--budget BYTES]
//	wbcheck verify --dir DIR --manifest FILE [--resolve]
//	wbcheck fio-bytes FILE.json...
//	wbcheck json FILE|- KEY...
//
// write creates, replaces (write a temporary file, fsync, rename over the
// old name, fsync the directory) and deletes files under DIR, which is
// meant to be a file system on top of the device under test. Each change
// is recorded in the manifest only after every fsync it depends on has
// returned: the manifest lives on a different file system and is fsync'd
// after every line. A change in progress is recorded as pending first, so
// that after a crash either its old or its new state is accepted. write
// stops at the first I/O error (expected once the device under test dies)
// and exits 2 then; it exits 0 when --duration or --ops ran out.
//
// Manifest lines (append-only; later lines win):
//
//	C NAME SHA256 SIZE   NAME holds exactly this content (committed)
//	R NAME SHA256 SIZE   NAME is being replaced by this content (pending)
//	X NAME               NAME is being deleted (pending)
//	D NAME               NAME is deleted (committed)
//
// verify checks every name the manifest knows: a committed file must exist
// with its recorded content, or with a pending new content; a committed
// delete must stay deleted. Files the manifest does not know (created but
// never committed) are ignored; --resolve removes them and appends records
// that settle every pending change to what is on disk, so that the next
// write starts from a manifest without pending entries. verify exits 1 on
// any mismatch and prints one line per problem.
//
// fio-bytes sums the read and write io_bytes and the error counts of every
// job in fio --output-format=json files and prints "READ WRITE ERRORS".
//
// json prints the value at each KEY (a dotted path; a bare key is also
// searched for anywhere in the document) of a JSON document, tab-separated.
package main

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var err error
	code := 0
	switch os.Args[1] {
	case "write":
		code, err = cmdWrite(os.Args[2:])
	case "verify":
		code, err = cmdVerify(os.Args[2:])
	case "fio-bytes":
		err = cmdFioBytes(os.Args[2:])
	case "json":
		err = cmdJSON(os.Args[2:])
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "wbcheck %s: %v\n", os.Args[1], err)
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}

func usage() {
	fmt.Fprint(os.Stderr, `usage:
  wbcheck write  --dir DIR --manifest FILE [--seed N] [--duration D] [--ops N] [--budget BYTES]
  wbcheck verify --dir DIR --manifest FILE [--resolve]
  wbcheck fio-bytes FILE.json...
  wbcheck json FILE|- KEY...
`)
	os.Exit(2)
}

// entry is the manifest's knowledge of one name.
type entry struct {
	present  bool   // committed state: exists
	sum      string // committed content
	size     int64
	pendSum  []string // pending replacement contents
	pendSize []int64
	pendDel  bool // a delete is pending
}

func (e *entry) pending() bool { return len(e.pendSum) > 0 || e.pendDel }

type manifest struct {
	path    string
	f       *os.File
	entries map[string]*entry
	maxSeq  int
}

func loadManifest(path string) (*manifest, error) {
	m := &manifest{path: path, entries: map[string]*entry{}}
	data, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	for i, line := range strings.Split(string(data), "\n") {
		if line == "" {
			continue
		}
		f := strings.Fields(line)
		bad := func() error { return fmt.Errorf("%s:%d: malformed line %q", path, i+1, line) }
		if len(f) < 2 {
			return nil, bad()
		}
		name := f[1]
		e := m.entries[name]
		if e == nil {
			e = &entry{}
			m.entries[name] = e
		}
		if seq, ok := nameSeq(name); ok && seq > m.maxSeq {
			m.maxSeq = seq
		}
		switch f[0] {
		case "C", "R":
			if len(f) != 4 {
				return nil, bad()
			}
			size, err := strconv.ParseInt(f[3], 10, 64)
			if err != nil {
				return nil, bad()
			}
			if f[0] == "C" {
				*e = entry{present: true, sum: f[2], size: size}
			} else {
				e.pendSum = append(e.pendSum, f[2])
				e.pendSize = append(e.pendSize, size)
			}
		case "X":
			e.pendDel = true
		case "D":
			*e = entry{}
		default:
			return nil, bad()
		}
	}
	return m, nil
}

func (m *manifest) open() error {
	f, err := os.OpenFile(m.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	m.f = f
	// Make the manifest's own directory entry durable.
	return syncDir(filepath.Dir(m.path))
}

// record appends one line and fsyncs the manifest.
func (m *manifest) record(format string, args ...any) error {
	if _, err := fmt.Fprintf(m.f, format+"\n", args...); err != nil {
		return err
	}
	return m.f.Sync()
}

// nameSeq parses the sequence number of a name "dNN/fNNNNNNNN".
func nameSeq(name string) (int, bool) {
	base := filepath.Base(name)
	if len(base) < 2 || base[0] != 'f' {
		return 0, false
	}
	n, err := strconv.Atoi(base[1:])
	return n, err == nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// ioError marks an error of the file system under test.
type ioError struct{ err error }

func (e ioError) Error() string { return e.err.Error() }

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
	if err := m.open(); err != nil {
		return 1, err
	}
	defer m.f.Close()

	w := &writer{dir: *dir, m: m, rng: rand.New(rand.NewPCG(*seed, *seed^0x9e3779b97f4a7c15)), budget: *budget}
	for name, e := range m.entries {
		if e.present {
			w.live = append(w.live, name)
			w.liveBytes += e.size
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
				fmt.Printf("wbcheck write: stopped by I/O error after %d operations in %.1fs (%d creates, %d replaces, %d deletes, %d bytes fsync'd): %v\n",
					n, time.Since(start).Seconds(), w.creates, w.replaces, w.deletes, w.bytes, err)
				return 2, nil
			}
			return 1, err
		}
	}
	fmt.Printf("wbcheck write: %d operations in %.1fs (%d creates, %d replaces, %d deletes, %d bytes fsync'd)\n",
		n, time.Since(start).Seconds(), w.creates, w.replaces, w.deletes, w.bytes)
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

	creates, replaces, deletes int
	bytes                      int64
}

func (w *writer) step() error {
	r := w.rng.IntN(100)
	switch {
	case len(w.live) > 0 && (w.liveBytes > w.budget || r < 12):
		return w.remove()
	case len(w.live) > 0 && r < 30:
		return w.replace()
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

// writeFile writes b to path in chunks of random size and fsyncs it.
func (w *writer) writeFile(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return ioError{err}
	}
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

func (w *writer) create() error {
	w.m.maxSeq++
	seq := w.m.maxSeq
	sub := fmt.Sprintf("d%02d", seq%16)
	name := fmt.Sprintf("%s/f%08d", sub, seq)
	if err := w.mkdir(sub); err != nil {
		return err
	}
	b := w.content()
	if err := w.writeFile(filepath.Join(w.dir, name), b); err != nil {
		return err
	}
	if err := syncDir(filepath.Join(w.dir, sub)); err != nil {
		return ioError{err}
	}
	if err := w.m.record("C %s %s %d", name, sum(b), len(b)); err != nil {
		return err
	}
	w.m.entries[name] = &entry{present: true, sum: sum(b), size: int64(len(b))}
	w.live = append(w.live, name)
	w.liveBytes += int64(len(b))
	w.creates++
	return nil
}

func (w *writer) replace() error {
	i := w.rng.IntN(len(w.live))
	name := w.live[i]
	e := w.m.entries[name]
	b := w.content()
	s := sum(b)
	if err := w.m.record("R %s %s %d", name, s, len(b)); err != nil {
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
	if err := w.m.record("C %s %s %d", name, s, len(b)); err != nil {
		return err
	}
	w.liveBytes += int64(len(b)) - e.size
	*e = entry{present: true, sum: s, size: int64(len(b))}
	w.replaces++
	return nil
}

func (w *writer) remove() error {
	i := w.rng.IntN(len(w.live))
	name := w.live[i]
	e := w.m.entries[name]
	if err := w.m.record("X %s", name); err != nil {
		return err
	}
	path := filepath.Join(w.dir, name)
	if err := os.Remove(path); err != nil {
		return ioError{err}
	}
	if err := syncDir(filepath.Dir(path)); err != nil {
		return ioError{err}
	}
	if err := w.m.record("D %s", name); err != nil {
		return err
	}
	w.liveBytes -= e.size
	*e = entry{}
	w.live[i] = w.live[len(w.live)-1]
	w.live = w.live[:len(w.live)-1]
	w.deletes++
	return nil
}

func fileSum(path string) (string, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return "", n, err
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

func cmdVerify(args []string) (int, error) {
	fl := flag.NewFlagSet("verify", flag.ContinueOnError)
	dir := fl.String("dir", "", "directory on the file system under test")
	man := fl.String("manifest", "", "manifest file")
	resolve := fl.Bool("resolve", false, "settle pending changes in the manifest and remove unknown files")
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
	names := make([]string, 0, len(m.entries))
	for n := range m.entries {
		names = append(names, n)
	}
	sort.Strings(names)
	var problems []string
	var settle []string
	files, pend := 0, 0
	var bytesOK int64
	for _, name := range names {
		e := m.entries[name]
		path := filepath.Join(*dir, name)
		s, size, err := fileSum(path)
		exists := err == nil
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			problems = append(problems, fmt.Sprintf("%s: %v", name, err))
			continue
		}
		if e.pending() {
			pend++
		}
		switch {
		case !exists:
			if e.present && !e.pendDel {
				problems = append(problems, fmt.Sprintf("%s: missing (committed %s, %d bytes)", name, short(e.sum), e.size))
				continue
			}
			if e.pending() {
				settle = append(settle, "D "+name)
			}
		case e.present && s == e.sum:
			files++
			bytesOK += size
			if e.pending() {
				settle = append(settle, fmt.Sprintf("C %s %s %d", name, s, size))
			}
		default:
			ok := false
			for i, ps := range e.pendSum {
				if ps == s && e.pendSize[i] == size {
					ok = true
				}
			}
			if ok {
				files++
				bytesOK += size
				settle = append(settle, fmt.Sprintf("C %s %s %d", name, s, size))
				continue
			}
			if !e.present {
				problems = append(problems, fmt.Sprintf("%s: exists (%s, %d bytes) but its delete was committed", name, short(s), size))
				continue
			}
			problems = append(problems, fmt.Sprintf("%s: content %s (%d bytes), want committed %s (%d bytes)%s",
				name, short(s), size, short(e.sum), e.size, pendNote(e)))
		}
	}
	var unknown []string
	err = filepath.WalkDir(*dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if d.Name() == "lost+found" {
				return filepath.SkipDir
			}
			return nil
		}
		rel, _ := filepath.Rel(*dir, path)
		if _, known := m.entries[rel]; known {
			return nil
		}
		unknown = append(unknown, path)
		return nil
	})
	if err != nil {
		problems = append(problems, fmt.Sprintf("walking %s: %v", *dir, err))
	}
	for _, p := range problems {
		fmt.Println("PROBLEM", p)
	}
	fmt.Printf("wbcheck verify: %d files intact (%d bytes), %d were pending, %d unknown files, %d problems\n",
		files, bytesOK, pend, len(unknown), len(problems))
	if len(problems) > 0 {
		return 1, fmt.Errorf("%d problems", len(problems))
	}
	if *resolve {
		for _, path := range unknown {
			if err := os.Remove(path); err != nil {
				return 1, err
			}
		}
		if len(unknown) > 0 {
			// Make the removals durable.
			syscall.Sync()
		}
		if len(settle) > 0 {
			if err := m.open(); err != nil {
				return 1, err
			}
			defer m.f.Close()
			for _, l := range settle {
				if err := m.record("%s", l); err != nil {
					return 1, err
				}
			}
		}
	}
	return 0, nil
}

func short(s string) string {
	if len(s) > 12 {
		return s[:12]
	}
	return s
}

func pendNote(e *entry) string {
	if !e.pending() {
		return ""
	}
	var p []string
	for i, s := range e.pendSum {
		p = append(p, fmt.Sprintf("%s (%d bytes)", short(s), e.pendSize[i]))
	}
	if e.pendDel {
		p = append(p, "deleted")
	}
	return " or pending " + strings.Join(p, ", ")
}

// fioJob is the part of a fio JSON job this tool reads.
type fioJob struct {
	Error int `json:"error"`
	Read  struct {
		IOBytes int64 `json:"io_bytes"`
	} `json:"read"`
	Write struct {
		IOBytes int64 `json:"io_bytes"`
	} `json:"write"`
}

// decodeFio reads fio's JSON output, skipping any text fio printed before it.
func decodeFio(data []byte, v any) error {
	i := bytes.IndexByte(data, '{')
	if i < 0 {
		return errors.New("no JSON object in fio output")
	}
	return json.NewDecoder(bytes.NewReader(data[i:])).Decode(v)
}

func cmdFioBytes(args []string) error {
	if len(args) == 0 {
		return errors.New("want fio JSON files")
	}
	var rd, wr int64
	errs := 0
	for _, a := range args {
		data, err := os.ReadFile(a)
		if err != nil {
			return err
		}
		var out struct {
			Jobs []fioJob `json:"jobs"`
		}
		if err := decodeFio(data, &out); err != nil {
			return fmt.Errorf("%s: %w", a, err)
		}
		for _, j := range out.Jobs {
			rd += j.Read.IOBytes
			wr += j.Write.IOBytes
			if j.Error != 0 {
				errs++
			}
		}
	}
	fmt.Println(rd, wr, errs)
	return nil
}

func cmdJSON(args []string) error {
	if len(args) < 2 {
		return errors.New("want FILE|- KEY...")
	}
	var data []byte
	var err error
	if args[0] == "-" {
		data, err = io.ReadAll(bufio.NewReader(os.Stdin))
	} else {
		data, err = os.ReadFile(args[0])
	}
	if err != nil {
		return err
	}
	var doc any
	if err := decodeFio(data, &doc); err != nil {
		return err
	}
	var vals []string
	for _, k := range args[1:] {
		v, ok := lookup(doc, strings.Split(k, "."))
		if !ok && !strings.Contains(k, ".") {
			v, ok = search(doc, k)
		}
		if !ok {
			return fmt.Errorf("key %q not found", k)
		}
		switch x := v.(type) {
		case string:
			vals = append(vals, x)
		case float64:
			vals = append(vals, strconv.FormatFloat(x, 'f', -1, 64))
		default:
			b, _ := json.Marshal(x)
			vals = append(vals, string(b))
		}
	}
	fmt.Println(strings.Join(vals, "\t"))
	return nil
}

func lookup(doc any, path []string) (any, bool) {
	for _, k := range path {
		switch d := doc.(type) {
		case map[string]any:
			v, ok := d[k]
			if !ok {
				return nil, false
			}
			doc = v
		case []any:
			i, err := strconv.Atoi(k)
			if err != nil || i < 0 || i >= len(d) {
				return nil, false
			}
			doc = d[i]
		default:
			return nil, false
		}
	}
	return doc, true
}

// search finds key anywhere in doc, breadth first.
func search(doc any, key string) (any, bool) {
	queue := []any{doc}
	for len(queue) > 0 {
		d := queue[0]
		queue = queue[1:]
		switch x := d.(type) {
		case map[string]any:
			if v, ok := x[key]; ok {
				return v, true
			}
			keys := make([]string, 0, len(x))
			for k := range x {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			for _, k := range keys {
				queue = append(queue, x[k])
			}
		case []any:
			queue = append(queue, x...)
		}
	}
	return nil, false
}
