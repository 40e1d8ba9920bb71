package crashtest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
)

// fioJobs are the fio job files of one kill -9 iteration: the same job
// sections for the write phase and the verify runs.
type fioJobs struct {
	dir  string
	desc string // "3 jobs libaio QD16"
}

// genJobs writes DIR/write.fio, DIR/verify-disk.fio and
// DIR/verify-backing.fio: 2-4 jobs on disjoint ranges of the disk, random
// writes with a bssplit of 4k-64k (sometimes a sequential 128k/1M stream,
// which the sequential cutoff sends around the cache), fsync=N on some,
// crc32c verify headers and a fresh randseed. trigger runs libaio at QD
// 4-32, otherwise psync at QD 1. DIR/dirty.fio, which variant drain-around
// runs first, writes a quarter of each job's blocks (4 KiB, random, no
// verify headers: the jobs' verify checks only what they write), so that
// the jobs then write over dirty cached blocks.
func (k *kill9) genJobs(dir string, trigger bool) fioJobs {
	e := k.e
	nj := e.between(2, 4)
	region := k.size / int64(nj) / (1 << 20) * (1 << 20)
	eng, qd := "psync", "1"
	if trigger {
		eng, qd = "libaio", e.pick("4", "8", "16", "32")
	}
	global := fmt.Sprintf("[global]\ndirect=1\nioengine=%s\niodepth=%s\nverify=crc32c\nrandseed=%d\nfallocate=none\nthread=1\n",
		eng, qd, e.between(1, 2000000000))
	var body, dirty strings.Builder
	for j := range nj {
		mib := int(region >> 20)
		off := int64(j)*region + int64(e.between(0, mib/2))<<20
		length := max(int64(e.between(mib/4, mib/2))<<20, 1<<20)
		rw, bs := "randwrite", "bssplit="+e.pick("4k/40:8k/20:16k/15:32k/15:64k/10", "4k/70:64k/30", "4k/10:16k/30:64k/60", "4k/100", "4k/50:8k/50")
		if e.rng.IntN(5) == 0 {
			rw, bs = "write", "bssplit=128k/40:1m/60"
		}
		fmt.Fprintf(&body, "[j%d]\noffset=%d\nsize=%d\nrw=%s\n%s\n", j, off, length, rw, bs)
		fmt.Fprintf(&dirty, "[d%d]\noffset=%d\nsize=%d\nrw=randwrite\nbs=4k\nnumber_ios=%d\n\n", j, off, length, length/4096/4)
		if fs := e.pick("0", "0", "1", "4", "16", "64"); fs != "0" {
			fmt.Fprintf(&body, "fsync=%s\n", fs)
		}
		body.WriteString("\n")
	}
	// The completion latency log, one line per write fio saw succeed
	// (log_offset adds its offset), is the list of acknowledged writes.
	write := global + "filename=" + k.disk() + "\ndo_verify=0\nverify_state_save=1\n" +
		"write_lat_log=" + filepath.Join(dir, "acked") + "\nlog_offset=1\ndisable_slat=1\ndisable_lat=1\n\n" + body.String()
	verify := "do_verify=1\nverify_only=1\nverify_state_load=1\nverify_fatal=1\nverify_state_save=0\n\n" + body.String()
	k.writeFile(filepath.Join(dir, "write.fio"), write)
	k.writeFile(filepath.Join(dir, "verify-disk.fio"), global+"filename="+k.disk()+"\n"+verify)
	k.writeFile(filepath.Join(dir, "verify-backing.fio"), global+"filename="+k.backing+"\n"+verify)
	k.writeFile(filepath.Join(dir, "dirty.fio"), fmt.Sprintf("[global]\ndirect=1\nioengine=libaio\niodepth=16\nrandseed=%d\nfallocate=none\nthread=1\nfilename=%s\n\n%s",
		e.between(1, 2000000000), k.disk(), dirty.String()))
	return fioJobs{dir: dir, desc: fmt.Sprintf("%d jobs %s QD%s", nj, eng, qd)}
}

func (k *kill9) writeFile(path, s string) {
	if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
		k.t.Fatal(err)
	}
}

// fioBytes sums the bytes read and written in fio's JSON output.
func fioBytes(path string) (read, written int64) {
	data, _ := os.ReadFile(path)
	if i := bytes.IndexByte(data, '{'); i >= 0 {
		data = data[i:] // fio may print text before the JSON
	}
	type side struct {
		IOBytes int64 `json:"io_bytes"`
	}
	var out struct{ Jobs []struct{ Read, Write side } } // fio's "jobs", "read", "write"
	_ = json.NewDecoder(bytes.NewReader(data)).Decode(&out)
	for _, j := range out.Jobs {
		read += j.Read.IOBytes
		written += j.Write.IOBytes
	}
	return read, written
}

// fio runs fio on a job file with JSON output to NAME.json, stdout and
// stderr to NAME.out and NAME.err, and its verify state in DIR/aux.
func fio(dir, name string, timeout time.Duration, extra ...string) int {
	args := append([]string{"fio", "--output-format=json", "--output=" + filepath.Join(dir, name+".json"),
		"--aux-path=" + filepath.Join(dir, "aux")}, extra...)
	code, out := run("", timeout, append(args, filepath.Join(dir, name+".fio"))...)
	_ = os.WriteFile(filepath.Join(dir, name+".err"), []byte(out), 0o644)
	return code
}

// freshState replaces DIR/aux with a pristine copy of the write phase's
// verify state (a verify-only run overwrites the state files on exit).
func freshState(dir string) error {
	aux, orig := filepath.Join(dir, "aux"), filepath.Join(dir, "aux.orig")
	if err := os.RemoveAll(aux); err != nil {
		return err
	}
	return os.CopyFS(aux, os.DirFS(orig))
}

var badBlockRE = regexp.MustCompile(`requested block: offset=(\d+), length=(\d+)`)

// matches lists "OFFSET LENGTH" of every match of re in s.
func matches(re *regexp.Regexp, s string) map[string]bool {
	m := map[string]bool{}
	for _, x := range re.FindAllStringSubmatch(s, -1) {
		m[x[1]+" "+x[2]] = true
	}
	return m
}

// ackedWrites lists "OFFSET LENGTH" of every write the write phase saw
// succeed, from its completion latency logs (DIR/acked_clat.N.log, lines
// "msec, nsec, ddir, length, offset, prio"; ddir 1 is a write), and the
// bytes they add up to. It returns nil when there is no log or a line
// does not parse.
func ackedWrites(dir string) (map[string]bool, int64) {
	logs, _ := filepath.Glob(filepath.Join(dir, "acked_clat.*.log"))
	if len(logs) == 0 {
		return nil, 0
	}
	acked := map[string]bool{}
	var total int64
	for _, l := range logs {
		data, err := os.ReadFile(l)
		if err != nil {
			return nil, 0
		}
		for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
			if line == "" {
				continue
			}
			f := strings.Split(line, ",")
			if len(f) < 5 {
				return nil, 0
			}
			if strings.TrimSpace(f[2]) != "1" {
				continue
			}
			n, err := strconv.ParseInt(strings.TrimSpace(f[3]), 10, 64)
			if err != nil {
				return nil, 0
			}
			acked[strings.TrimSpace(f[4])+" "+strings.TrimSpace(f[3])] = true
			total += n
		}
	}
	return acked, total
}

// excusedBlocks decides, after a failed verify of target, whether every
// bad block is a write that fio never saw succeed (in flight at the kill,
// never acknowledged: the contract says nothing about it). fio's verify
// state cannot represent such holes: fio 3.33 counts its window of
// writes that may not have completed from the verify reads completed,
// not issued, so it verifies up to an iodepth of writes that were still
// in flight when the state was saved, and wbcache completes a 1 MiB
// write sent around the cache long after small cached ones. It re-runs
// the verify with verify_fatal=0 to list every bad block and returns
// their count, or 0 and why not when any is a write fio saw succeed, the
// log of acknowledged writes is missing, or a read failed (never excused).
func excusedBlocks(dir, target string) (int, string) {
	acked, ackedBytes := ackedWrites(dir)
	if acked == nil {
		return 0, "no log of acknowledged writes"
	}
	if _, written := fioBytes(filepath.Join(dir, "write.json")); written != ackedBytes {
		return 0, fmt.Sprintf("the log of acknowledged writes adds up to %d bytes, fio reported %d written", ackedBytes, written)
	}
	job, _ := os.ReadFile(filepath.Join(dir, "verify-"+target+".fio"))
	all := "verify-" + target + "-all"
	_ = os.WriteFile(filepath.Join(dir, all+".fio"), bytes.Replace(job, []byte("verify_fatal=1"), []byte("verify_fatal=0"), 1), 0o644)
	if err := freshState(dir); err != nil {
		return 0, err.Error()
	}
	fio(dir, all, 15*time.Minute)
	verr, _ := os.ReadFile(filepath.Join(dir, all+".err"))
	if bytes.Contains(verr, []byte("io_u error")) {
		return 0, "a verify read failed"
	}
	bad := matches(badBlockRE, string(verr))
	var lost []string
	for b := range bad {
		if acked[b] {
			lost = append(lost, b)
		}
	}
	if len(lost) > 0 {
		sort.Strings(lost)
		return 0, fmt.Sprintf("%d of %d bad blocks are writes fio saw succeed (offset length: %s)", len(lost), len(bad), oneLine(strings.Join(lost, ", "), 300))
	}
	if len(bad) == 0 {
		return 0, "the verify failed without naming a bad block"
	}
	return len(bad), ""
}
