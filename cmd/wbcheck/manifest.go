package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// version is one manifest line about a name: a committed state (C, D) or
// a change that began (R, X, A).
type version struct {
	kind byte   // 'C', 'D', 'R', 'X' or 'A'
	sum  string // C, R, A: the content's SHA-256
	size int64  // C, R, A: the content's size
	t    int64  // unix ns: C, D when committed, R, X, A when begun; 0: not recorded
}

func (v version) committed() bool { return v.kind == 'C' || v.kind == 'D' }

// line is v as a manifest line about name.
func (v version) line(name string) string {
	if v.kind == 'D' || v.kind == 'X' {
		return fmt.Sprintf("%c %s %d", v.kind, name, v.t)
	}
	return fmt.Sprintf("%c %s %s %d %d", v.kind, name, v.sum, v.size, v.t)
}

// entry is the manifest's knowledge of one name: its lines, in order.
type entry struct{ hist []version }

// last is the latest committed state (a C or D line); ok is false when
// the name was never committed.
func (e *entry) last() (v version, ok bool) {
	for i := len(e.hist) - 1; i >= 0; i-- {
		if e.hist[i].committed() {
			return e.hist[i], true
		}
	}
	return version{}, false
}

// present reports whether the latest committed state is a file.
func (e *entry) present() bool {
	v, ok := e.last()
	return ok && v.kind == 'C'
}

// pending reports whether a change began after the latest committed state.
func (e *entry) pending() bool {
	return len(e.hist) > 0 && !e.hist[len(e.hist)-1].committed()
}

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
		name, v, err := parseLine(line)
		if err != nil {
			return nil, fmt.Errorf("%s:%d: %w", path, i+1, err)
		}
		m.add(name, v)
	}
	return m, nil
}

// parseLine reads "K NAME [SHA256 SIZE] [TIME]".
func parseLine(line string) (string, version, error) {
	f := strings.Fields(line)
	bad := fmt.Errorf("malformed line %q", line)
	if len(f) < 2 || len(f[0]) != 1 {
		return "", version{}, bad
	}
	v := version{kind: f[0][0]}
	rest := f[2:]
	switch v.kind {
	case 'C', 'R', 'A':
		if len(rest) != 2 && len(rest) != 3 {
			return "", version{}, bad
		}
		size, err := strconv.ParseInt(rest[1], 10, 64)
		if err != nil || size < 0 {
			return "", version{}, bad
		}
		v.sum, v.size, rest = rest[0], size, rest[2:]
	case 'D', 'X':
	default:
		return "", version{}, bad
	}
	switch len(rest) {
	case 0:
	case 1:
		t, err := strconv.ParseInt(rest[0], 10, 64)
		if err != nil {
			return "", version{}, bad
		}
		v.t = t
	default:
		return "", version{}, bad
	}
	return f[1], v, nil
}

// add appends v to the name's history (in memory only).
func (m *manifest) add(name string, v version) {
	e := m.entries[name]
	if e == nil {
		e = &entry{}
		m.entries[name] = e
	}
	e.hist = append(e.hist, v)
	if seq, ok := nameSeq(name); ok && seq > m.maxSeq {
		m.maxSeq = seq
	}
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

// record appends a line about name, fsyncs the manifest and adds the line
// to the name's history.
func (m *manifest) record(name string, v version) error {
	if _, err := fmt.Fprintln(m.f, v.line(name)); err != nil {
		return err
	}
	if err := m.f.Sync(); err != nil {
		return err
	}
	m.add(name, v)
	return nil
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
