package main

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
)

func cmdVerify(args []string) (int, error) {
	fl := flag.NewFlagSet("verify", flag.ContinueOnError)
	dir := fl.String("dir", "", "directory on the file system under test")
	man := fl.String("manifest", "", "manifest file")
	resolve := fl.Bool("resolve", false, "as --settle, and remove unknown files")
	settleFl := fl.Bool("settle", false, "append records that settle every name to what is on disk (nothing on DIR changes)")
	before := fl.Int64("before", 0, "unix ns: only the changes committed before it must be there, later ones may be (0: every committed change)")
	if err := fl.Parse(args); err != nil {
		return 2, err
	}
	if *dir == "" || *man == "" {
		return 2, errors.New("--dir and --manifest are required")
	}
	limit := *before
	if limit <= 0 {
		limit = math.MaxInt64
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
	var problems, settle []string
	var st verifyStats
	t := now()
	for _, name := range names {
		e := m.entries[name]
		path := filepath.Join(*dir, name)
		s, size, err := fileSum(path)
		d := onDisk{exists: err == nil, sum: s, size: size}
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			problems = append(problems, fmt.Sprintf("%s: %v", name, err))
			continue
		}
		if e.pending() {
			st.pending++
		}
		j := judge(e.hist, limit, d, func(n int64) (string, error) { return prefixSum(path, n) })
		switch {
		case !j.ok:
			problems = append(problems, fmt.Sprintf("%s: %s", name, j.problem(d, limit)))
			continue
		case j.floor >= 0:
			st.required++
			if j.later {
				st.later++
			}
		default:
			st.young++
			if d.exists {
				st.youngThere++
			}
		}
		if d.exists {
			st.files++
			st.bytes += d.size
		}
		if cur, ok := e.last(); e.pending() || !ok || !d.is(cur) {
			v := version{kind: 'D', t: t}
			if d.exists {
				v = version{kind: 'C', sum: d.sum, size: d.size, t: t}
			}
			settle = append(settle, v.line(name))
		}
	}
	// A DIR the file system lost holds no unknown files; every name in it
	// was judged missing above.
	var unknown []string
	if _, err := os.Stat(*dir); !errors.Is(err, fs.ErrNotExist) {
		err := filepath.WalkDir(*dir, func(path string, d fs.DirEntry, err error) error {
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
	}
	if code, err := report(problems, st, unknown, *before); code != 0 {
		return code, err
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
	}
	if (*resolve || *settleFl) && len(settle) > 0 {
		if err := m.open(); err != nil {
			return 1, err
		}
		defer m.f.Close()
		for _, l := range settle {
			if _, err := fmt.Fprintln(m.f, l); err != nil {
				return 1, err
			}
		}
		if err := m.f.Sync(); err != nil {
			return 1, err
		}
	}
	return 0, nil
}

// report prints the problems and the summary; it exits 1 on problems.
func report(problems []string, st verifyStats, unknown []string, before int64) (int, error) {
	for _, p := range problems {
		fmt.Println("PROBLEM", p)
	}
	fmt.Printf("wbcheck verify: %d files intact (%d bytes), %d were pending, %d unknown files, %d problems\n",
		st.files, st.bytes, st.pending, len(unknown), len(problems))
	if before > 0 {
		fmt.Printf("wbcheck verify: before %d: %d names committed before it (%d now at a later state), %d names first committed after it (%d there)\n",
			before, st.required, st.later, st.young, st.youngThere)
	}
	if len(problems) > 0 {
		return 1, fmt.Errorf("%d problems", len(problems))
	}
	return 0, nil
}

type verifyStats struct {
	files, pending    int
	bytes             int64
	required, later   int
	young, youngThere int
}

// onDisk is what a name holds on the file system.
type onDisk struct {
	exists bool
	sum    string
	size   int64
}

// is reports whether d is the state v.
func (d onDisk) is(v version) bool {
	switch v.kind {
	case 'D', 'X':
		return !d.exists
	}
	return d.exists && d.sum == v.sum && d.size == v.size
}

func (d onDisk) String() string {
	if !d.exists {
		return "missing"
	}
	return fmt.Sprintf("%s (%d bytes)", short(d.sum), d.size)
}

// verdict is judge's answer for one name.
type verdict struct {
	ok    bool
	hist  []version
	floor int  // index of the last state committed before the limit; -1: none
	later bool // the name holds a state newer than its floor
}

// judge checks what a name holds against its history. The floor is the
// last state committed before limit: it, or the state of any later line,
// must be there (the file system may have got further than limit, never
// less far). A begun append (A) also passes partly done: longer than the
// content it extends, whose bytes stay a prefix. A name first committed
// at or after limit may be missing, or hold anything when its first line
// is its create (which may have been cut short).
func judge(hist []version, limit int64, d onDisk, prefix func(n int64) (string, error)) verdict {
	j := verdict{hist: hist, floor: -1}
	for i, v := range hist {
		if v.committed() && v.t < limit {
			j.floor = i
		}
	}
	from := j.floor
	if from < 0 {
		if !d.exists || hist[0].kind == 'C' {
			j.ok = true
			return j
		}
		from = 0
	}
	for i := from; i < len(hist); i++ {
		v := hist[i]
		if d.is(v) || v.kind == 'A' && partialAppend(hist[:i], v, d, prefix) {
			j.ok, j.later = true, i > j.floor
			return j
		}
	}
	return j
}

// partialAppend reports whether d is the append a cut short: longer than
// the content it extends (the last C before it), which is d's prefix.
func partialAppend(before []version, a version, d onDisk, prefix func(n int64) (string, error)) bool {
	for i := len(before) - 1; i >= 0; i-- {
		if b := before[i]; b.kind == 'C' {
			if !d.exists || d.size < b.size || d.size > a.size {
				return false
			}
			s, err := prefix(b.size)
			return err == nil && s == b.sum
		}
	}
	return false
}

// problem says why d fails.
func (j verdict) problem(d onDisk, limit int64) string {
	want := "a state"
	if j.floor >= 0 {
		f := j.hist[j.floor]
		want = "committed " + describe(f)
		if limit != math.MaxInt64 {
			want += fmt.Sprintf(" %.3fs before the limit", float64(limit-f.t)/1e9)
		}
	}
	var alt []string
	for i := max(j.floor+1, 0); i < len(j.hist); i++ {
		v := j.hist[i]
		s := describe(v)
		if v.kind == 'A' {
			s += " or part of it"
		}
		if !v.committed() {
			s = "begun " + s
		}
		alt = append(alt, s)
	}
	msg := fmt.Sprintf("%s, want %s", d, want)
	if len(alt) > 0 {
		msg += " or later: " + strings.Join(alt, ", ")
	}
	return msg
}

func describe(v version) string {
	if v.kind == 'D' || v.kind == 'X' {
		return "deleted"
	}
	return fmt.Sprintf("%s (%d bytes)", short(v.sum), v.size)
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

// prefixSum is the SHA-256 of the first n bytes of path.
func prefixSum(path string, n int64) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.CopyN(h, f, n); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func short(s string) string {
	if len(s) > 12 {
		return s[:12]
	}
	return s
}
