package main

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

func TestParseLine(t *testing.T) {
	for _, c := range []struct {
		line, name string
		want       version
	}{
		{"C d01/f00000001 abc 12 1700", "d01/f00000001", version{kind: 'C', sum: "abc", size: 12, t: 1700}},
		{"C d01/f00000001 abc 12", "d01/f00000001", version{kind: 'C', sum: "abc", size: 12}},
		{"A n abc 0 5", "n", version{kind: 'A', sum: "abc", t: 5}},
		{"D n 9", "n", version{kind: 'D', t: 9}},
		{"X n", "n", version{kind: 'X'}},
	} {
		name, v, err := parseLine(c.line)
		if err != nil || name != c.name || v != c.want {
			t.Errorf("parseLine(%q) = %q, %+v, %v; want %q, %+v", c.line, name, v, err, c.name, c.want)
		}
		if v.t != 0 {
			if back := v.line(name); back != c.line {
				t.Errorf("line() = %q, want %q", back, c.line)
			}
		}
	}
	for _, bad := range []string{"C n abc", "C n abc x", "D n 1 2", "Q n", "CC n", "C", "C n abc 1 2 3", "D n t"} {
		if _, _, err := parseLine(bad); err == nil {
			t.Errorf("parseLine(%q) accepted", bad)
		}
	}
}

// TestJudge: what a name may hold after a crash, given its history and
// the limit before which every committed change must be there.
func TestJudge(t *testing.T) {
	content := []byte("0123456789abcdef")
	s4, s10, s16 := sum(content[:4]), sum(content[:10]), sum(content)
	var missing []byte
	c := func(s string, size, t int64) version { return version{kind: 'C', sum: s, size: size, t: t} }
	a := func(s string, size, t int64) version { return version{kind: 'A', sum: s, size: size, t: t} }
	r := func(s string, size, t int64) version { return version{kind: 'R', sum: s, size: size, t: t} }
	d := func(t int64) version { return version{kind: 'D', t: t} }
	x := func(t int64) version { return version{kind: 'X', t: t} }
	const all = int64(1) << 62
	// Created at 10, appended to 10 bytes (begun 20, committed 30), then
	// to 16 bytes (begun 40, committed 50).
	appends := []version{c(s4, 4, 10), a(s10, 10, 20), c(s10, 10, 30), a(s16, 16, 40), c(s16, 16, 50)}
	for _, tc := range []struct {
		name  string
		hist  []version
		limit int64
		b     []byte // nil: missing
		ok    bool
		later bool
	}{
		{"committed, intact", appends, all, content, true, false},
		{"committed, an older state", appends, all, content[:10], false, false},
		{"committed, missing", appends, all, missing, false, false},
		{"limit after the second append: the first append is a floor", appends, 35, content[:10], true, false},
		{"limit after the second append: the third is later", appends, 35, content, true, true},
		{"limit after the second append: part of the third", appends, 35, content[:13], true, true},
		{"limit after the second append: the create is older", appends, 35, content[:4], false, false},
		{"limit after the second append: part of the second is older", appends, 35, content[:7], false, false},
		{"part of an append whose old bytes changed", appends, 35, []byte("01234567X9abc"), false, false},
		{"limit before the create: missing", appends, 5, missing, true, false},
		{"limit before the create: anything (cut short)", appends, 5, []byte("zz"), true, false},
		{"begun append, cut short", appends[:4], all, content[:12], true, true},
		{"begun append, not begun on disk", appends[:4], all, content[:10], true, false},
		{"delete committed before the limit, file back", []version{c(s4, 4, 1), x(2), d(3)}, 10, content[:4], false, false},
		{"delete committed after the limit, file there", []version{c(s4, 4, 1), x(2), d(3)}, 3, content[:4], true, false},
		{"delete committed after the limit, file gone", []version{c(s4, 4, 1), x(2), d(3)}, 3, missing, true, true},
		{"move target, committed later, missing", []version{r(s4, 4, 2), c(s4, 4, 3)}, 3, missing, true, false},
		{"move target, committed later, other content", []version{r(s4, 4, 2), c(s4, 4, 3)}, 3, []byte("zz"), false, false},
		{"move target, committed later, there", []version{r(s4, 4, 2), c(s4, 4, 3)}, 3, content[:4], true, true},
		{"replace begun: old", []version{c(s4, 4, 1), r(s16, 16, 2)}, all, content[:4], true, false},
		{"replace begun: new", []version{c(s4, 4, 1), r(s16, 16, 2)}, all, content, true, true},
		{"replace begun: neither", []version{c(s4, 4, 1), r(s16, 16, 2)}, all, content[:10], false, false},
		{"manifest without times", []version{c(s4, 4, 0)}, 100, content[:4], true, false},
	} {
		d := onDisk{exists: tc.b != nil, sum: sum(tc.b), size: int64(len(tc.b))}
		prefix := func(n int64) (string, error) { return sum(tc.b[:n]), nil }
		j := judge(tc.hist, tc.limit, d, prefix)
		if j.ok != tc.ok || j.ok && j.later != tc.later {
			t.Errorf("%s: ok %v later %v, want %v %v (%s)", tc.name, j.ok, j.later, tc.ok, tc.later, j.problem(d, tc.limit))
		}
	}
}

// TestWriteVerify: write's manifest verifies against what it wrote, every
// operation happened, and a file set back to an older state is found
// unless the limit is before the change that lost.
func TestWriteVerify(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	man := filepath.Join(t.TempDir(), "manifest")
	out := capture(t, func() {
		if code, err := cmdWrite([]string{"--dir", dir, "--manifest", man, "--ops", "300", "--seed", "7", "--budget", "4000000"}); code != 0 || err != nil {
			t.Fatalf("write: %d %v", code, err)
		}
	})
	for _, op := range []string{"creates", "replaces", "appends", "moves", "deletes"} {
		if strings.Contains(out, " 0 "+op) {
			t.Errorf("write did no %s: %s", op, out)
		}
	}
	if code, err := cmdVerify([]string{"--dir", dir, "--manifest", man}); code != 0 {
		t.Fatalf("verify: %d %v", code, err)
	}
	m, err := loadManifest(man)
	if err != nil {
		t.Fatal(err)
	}
	// The last append: put the file back as it was before it.
	var name string
	var before, after version
	for n, e := range m.entries {
		h := e.hist
		if len(h) >= 3 && h[len(h)-2].kind == 'A' && h[len(h)-3].kind == 'C' && (name == "" || h[len(h)-1].t > after.t) {
			name, before, after = n, h[len(h)-3], h[len(h)-1]
		}
	}
	if name == "" {
		t.Fatal("no append in the manifest")
	}
	path := filepath.Join(dir, name)
	if err := os.Truncate(path, before.size); err != nil {
		t.Fatal(err)
	}
	if code, _ := cmdVerify([]string{"--dir", dir, "--manifest", man}); code != 1 {
		t.Errorf("verify of a lost append: exit %d, want 1", code)
	}
	if code, _ := cmdVerify([]string{"--dir", dir, "--manifest", man, "--before", itoa(after.t + 1)}); code != 1 {
		t.Errorf("verify --before after the append: exit %d, want 1", code)
	}
	if code, err := cmdVerify([]string{"--dir", dir, "--manifest", man, "--before", itoa(after.t), "--settle"}); code != 0 {
		t.Fatalf("verify --before the append's commit: %d %v", code, err)
	}
	// Settled: the older state is now the committed one, and write goes on.
	if code, err := cmdVerify([]string{"--dir", dir, "--manifest", man}); code != 0 {
		t.Fatalf("verify after --settle: %d %v", code, err)
	}
	capture(t, func() {
		if code, err := cmdWrite([]string{"--dir", dir, "--manifest", man, "--ops", "20", "--seed", "8"}); code != 0 || err != nil {
			t.Fatalf("write after --settle: %d %v", code, err)
		}
	})
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

// capture runs f with stdout sent to a pipe and returns what it printed.
func capture(t *testing.T, f func()) string {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	old := os.Stdout
	os.Stdout = w
	done := make(chan []byte)
	go func() {
		var buf bytes.Buffer
		_, _ = io.Copy(&buf, r)
		done <- buf.Bytes()
	}()
	defer func() {
		os.Stdout = old
	}()
	f()
	w.Close()
	return string(<-done)
}
