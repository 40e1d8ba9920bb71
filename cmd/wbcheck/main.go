// Command wbcheck is a helper of the crash loops (crashtest/). It is not
// part of wbcache itself.
//
//	wbcheck write  --dir DIR --manifest FILE [--seed N] [--duration D] [--ops N] [--budget BYTES]
//	wbcheck verify --dir DIR --manifest FILE [--before UNIXNANO] [--settle | --resolve]
//	wbcheck fio-bytes FILE.json...
//	wbcheck json FILE|- KEY...
//
// write creates files, replaces them (write a temporary file, fsync,
// rename over the old name, fsync the directory), appends to them (1 B to
// 64 KiB, fsync), moves them to a new name (rename, fsync both
// directories) and deletes them, under DIR, which is meant to be a file
// system on top of the device under test (it creates DIR if needed and
// makes it durable). Each change is recorded in the manifest only after
// every fsync it depends on has returned, with that time: the manifest
// lives on a different file system and is fsync'd after every line. A
// change in progress is recorded as begun first, so that after a crash
// either its old or its new state is accepted (and for an append,
// anything in between). write stops at the first I/O error (expected once
// the device under test dies) and exits 2 then; it exits 0 when
// --duration or --ops ran out.
//
// Manifest lines (append-only; TIME is unix ns, optional when reading):
//
//	C NAME SHA256 SIZE TIME   NAME holds exactly this content (committed at TIME)
//	D NAME TIME               NAME is deleted (committed at TIME)
//	R NAME SHA256 SIZE TIME   NAME is being replaced by this content, or moved
//	                          here with it (begun at TIME)
//	A NAME SHA256 SIZE TIME   NAME is being appended to, to this content
//	X NAME TIME               NAME is being deleted, or moved away
//
// verify checks every name the manifest knows: the state committed last
// must be there, or the one a begun change leads to. With --before T only
// the changes committed before T must be there: each name must hold the
// state committed last before T, or any state a later line gives it (the
// file system may have got further than T, never less far); a name first
// committed at or after T may be missing. Files the manifest does not know
// (created but never committed) are ignored. --settle appends records that
// settle every name to what is on disk, so that the next write starts from
// a manifest without pending entries; --resolve also removes the unknown
// files. verify exits 1 on any mismatch and prints one line per problem.
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
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
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
  wbcheck verify --dir DIR --manifest FILE [--before UNIXNANO] [--settle | --resolve]
  wbcheck fio-bytes FILE.json...
  wbcheck json FILE|- KEY...
`)
	os.Exit(2)
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
