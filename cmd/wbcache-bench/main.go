// Command wbcache-bench turns the raw results of scripts/bench.sh into a
// markdown report and PNG plots. It is a separate module (its own go.mod)
// so that the plotting library is not a dependency of wbcache itself.
//
//	wbcache-bench report --raw DIR --out DIR
//
// DIR (--raw) holds what bench.sh wrote:
//
//	targets.txt              NAME<TAB>description, in table order
//	workloads.txt            NAME<TAB>description, in table order
//	WORKLOAD@TARGET.json     fio --output-format=json
//	WORKLOAD@TARGET_iops.N.log  fio --write_iops_log (log_avg_msec set)
//	status-WORKLOAD@TARGET.tsv  wbcache status samples:
//	                         secs phase slots dirty used destaged writes
//	meta.tsv                 KIND<TAB>WORKLOAD<TAB>TARGET<TAB>values...:
//	                         hits H M | dirty BYTES | drain SECS BYTES |
//	                         bypassed N | hddio - TARGET R W | note - - TEXT
//
// The report (stdout and OUT/results.md) has one table row per workload
// and target: IOPS, MiB/s, p50/p99 completion latency, IOPS relative to
// the bare emulated HDD and to wbcache mode none (FUSE pass-through), the
// cache hit ratio, dirty data left after the run and the time `wbcache
// flush` took to write it back. Plots: OUT/iops-WORKLOAD.png (IOPS over
// time per target, log scale), OUT/lat-WORKLOAD.png (completion latency
// distribution per target) and OUT/cache-WORKLOAD@TARGET.png (dirty
// share of the cache and destage rate over the run and the drain).
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"image/color"
	"io"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

func main() {
	if len(os.Args) < 2 || os.Args[1] != "report" {
		fmt.Fprintln(os.Stderr, "usage: wbcache-bench report --raw DIR --out DIR")
		os.Exit(2)
	}
	fl := flag.NewFlagSet("report", flag.ExitOnError)
	raw := fl.String("raw", "", "directory with bench.sh's raw results")
	out := fl.String("out", "", "directory for results.md and the plots")
	title := fl.String("title", "wbcache benchmark", "report title")
	fl.Parse(os.Args[2:])
	if *raw == "" || *out == "" {
		fmt.Fprintln(os.Stderr, "wbcache-bench report: --raw and --out are required")
		os.Exit(2)
	}
	if err := report(*raw, *out, *title, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "wbcache-bench:", err)
		os.Exit(1)
	}
}

type named struct{ name, desc string }

func readList(path string) ([]named, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var l []named
	for _, line := range strings.Split(string(data), "\n") {
		if strings.TrimSpace(line) == "" {
			continue
		}
		name, desc, _ := strings.Cut(line, "\t")
		l = append(l, named{name, desc})
	}
	return l, nil
}

// fio JSON, the parts used here.
type fioLat struct {
	N          int64              `json:"N"`
	Mean       float64            `json:"mean"`
	Percentile map[string]float64 `json:"percentile"`
}

type fioDir struct {
	IOBytes int64   `json:"io_bytes"`
	BW      float64 `json:"bw_bytes"`
	IOPS    float64 `json:"iops"`
	TotalIO int64   `json:"total_ios"`
	Clat    fioLat  `json:"clat_ns"`
	Lat     fioLat  `json:"lat_ns"`
}

type fioJob struct {
	Name  string `json:"jobname"`
	Error int    `json:"error"`
	Read  fioDir `json:"read"`
	Write fioDir `json:"write"`
	Sync  struct {
		TotalIOs int64  `json:"total_ios"`
		Lat      fioLat `json:"lat_ns"`
	} `json:"sync"`
}

func readFio(path string) (*fioJob, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	i := bytes.IndexByte(data, '{')
	if i < 0 {
		return nil, errors.New("no JSON in " + path)
	}
	var doc struct {
		Jobs []fioJob `json:"jobs"`
	}
	if err := json.Unmarshal(data[i:], &doc); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(doc.Jobs) == 0 {
		return nil, errors.New("no jobs in " + path)
	}
	j := doc.Jobs[0]
	// Several jobs: add up throughput, keep the first one's latencies.
	for _, o := range doc.Jobs[1:] {
		j.Read.IOPS += o.Read.IOPS
		j.Read.BW += o.Read.BW
		j.Write.IOPS += o.Write.IOPS
		j.Write.BW += o.Write.BW
	}
	return &j, nil
}

func pct(l fioLat, p string) float64 {
	for k, v := range l.Percentile {
		f, err := strconv.ParseFloat(k, 64)
		if err == nil && strconv.FormatFloat(f, 'f', -1, 64) == p {
			return v
		}
	}
	return math.NaN()
}

func fmtLat(ns float64) string {
	switch {
	case math.IsNaN(ns) || ns == 0:
		return "-"
	case ns < 1e3:
		return fmt.Sprintf("%.0fns", ns)
	case ns < 1e6:
		return fmt.Sprintf("%.0fµs", ns/1e3)
	case ns < 1e9:
		return fmt.Sprintf("%.1fms", ns/1e6)
	}
	return fmt.Sprintf("%.2fs", ns/1e9)
}

func fmtNum(v float64) string {
	switch {
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	}
	return fmt.Sprintf("%.2f", v)
}

func fmtBytes(b float64) string {
	switch {
	case b >= 1<<30:
		return fmt.Sprintf("%.2f GiB", b/(1<<30))
	case b >= 1<<20:
		return fmt.Sprintf("%.1f MiB", b/(1<<20))
	case b >= 1<<10:
		return fmt.Sprintf("%.0f KiB", b/(1<<10))
	}
	return fmt.Sprintf("%.0f B", b)
}

type meta struct {
	hits     map[string][2]float64
	dirty    map[string]float64
	drain    map[string][2]float64
	bypassed map[string]float64
	hddio    map[string][2]float64
	notes    []string
}

func key(wl, t string) string { return wl + "@" + t }

func readMeta(path string) (*meta, error) {
	m := &meta{hits: map[string][2]float64{}, dirty: map[string]float64{}, drain: map[string][2]float64{},
		bypassed: map[string]float64{}, hddio: map[string][2]float64{}}
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return m, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		p := strings.Split(sc.Text(), "\t")
		if len(p) < 4 {
			continue
		}
		num := func(i int) float64 {
			if i >= len(p) {
				return math.NaN()
			}
			v, err := strconv.ParseFloat(p[i], 64)
			if err != nil {
				return math.NaN()
			}
			return v
		}
		k := key(p[1], p[2])
		switch p[0] {
		case "hits":
			m.hits[k] = [2]float64{num(3), num(4)}
		case "dirty":
			m.dirty[k] = num(3)
		case "drain":
			m.drain[k] = [2]float64{num(3), num(4)}
		case "bypassed":
			m.bypassed[k] = num(3)
		case "hddio":
			m.hddio[p[2]] = [2]float64{num(3), num(4)}
		case "note":
			m.notes = append(m.notes, strings.Join(p[3:], "\t"))
		}
	}
	return m, sc.Err()
}

type row struct {
	iops, mibs float64
	p50, p99   string
	job        *fioJob
}

func summarize(j *fioJob) row {
	r := row{iops: j.Read.IOPS + j.Write.IOPS, mibs: (j.Read.BW + j.Write.BW) / (1 << 20), job: j}
	rd, wr := j.Read.TotalIO > 0, j.Write.TotalIO > 0
	switch {
	case rd && wr:
		r.p50 = "r " + fmtLat(pct(j.Read.Clat, "50")) + " / w " + fmtLat(pct(j.Write.Clat, "50"))
		r.p99 = "r " + fmtLat(pct(j.Read.Clat, "99")) + " / w " + fmtLat(pct(j.Write.Clat, "99"))
	case rd:
		r.p50, r.p99 = fmtLat(pct(j.Read.Clat, "50")), fmtLat(pct(j.Read.Clat, "99"))
	default:
		r.p50, r.p99 = fmtLat(pct(j.Write.Clat, "50")), fmtLat(pct(j.Write.Clat, "99"))
	}
	if j.Sync.TotalIOs > 0 {
		r.p50 += " + fsync " + fmtLat(pct(j.Sync.Lat, "50"))
		r.p99 += " + fsync " + fmtLat(pct(j.Sync.Lat, "99"))
	}
	return r
}

func report(raw, out, title string, stdout io.Writer) error {
	targets, err := readList(filepath.Join(raw, "targets.txt"))
	if err != nil {
		return err
	}
	workloads, err := readList(filepath.Join(raw, "workloads.txt"))
	if err != nil {
		return err
	}
	m, err := readMeta(filepath.Join(raw, "meta.tsv"))
	if err != nil {
		return err
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	var md strings.Builder
	fmt.Fprintf(&md, "# %s\n\n", title)
	fmt.Fprintf(&md, "Targets:\n\n")
	for _, t := range targets {
		fmt.Fprintf(&md, "- `%s`: %s\n", t.name, t.desc)
	}
	fmt.Fprintf(&md, "\nIOPS and MiB/s count reads and writes; latencies are fio completion latencies (clat) p50 / p99. "+
		"×HDD and ×none: IOPS relative to the bare emulated HDD and to wbcache mode none (FUSE pass-through to the HDD), same workload. "+
		"hits: cache hit ratio of the run's reads. dirty: dirty data left in the cache after the run; drain: time `wbcache flush` took to write it back.\n\n")
	fmt.Fprintf(&md, "| workload | target | IOPS | MiB/s | lat p50 | lat p99 | ×HDD | ×none | hits | dirty after | drain |\n")
	fmt.Fprintf(&md, "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n")
	var plots []string
	for _, w := range workloads {
		rows := map[string]row{}
		for _, t := range targets {
			j, err := readFio(filepath.Join(raw, key(w.name, t.name)+".json"))
			if err != nil {
				continue
			}
			rows[t.name] = summarize(j)
		}
		if len(rows) == 0 {
			continue
		}
		for _, t := range targets {
			r, ok := rows[t.name]
			if !ok {
				continue
			}
			ratio := func(base string) string {
				b, ok := rows[base]
				if !ok || b.iops == 0 {
					return "-"
				}
				return fmtNum(r.iops/b.iops) + "×"
			}
			k := key(w.name, t.name)
			hits, dirty, drain := "-", "-", "-"
			if h, ok := m.hits[k]; ok && h[0]+h[1] > 0 {
				hits = fmt.Sprintf("%.0f%%", 100*h[0]/(h[0]+h[1]))
			}
			if d, ok := m.dirty[k]; ok {
				dirty = fmtBytes(d)
			}
			if d, ok := m.drain[k]; ok && !math.IsNaN(d[0]) {
				drain = fmt.Sprintf("%.1fs", d[0])
			}
			if r.job.Error != 0 {
				drain += fmt.Sprintf(" (fio error %d)", r.job.Error)
			}
			fmt.Fprintf(&md, "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n",
				w.name, t.name, fmtNum(r.iops), fmtNum(r.mibs), r.p50, r.p99, ratio("hdd"), ratio("none"), hits, dirty, drain)
		}
		if p, err := plotIOPS(raw, out, w, targets); err != nil {
			fmt.Fprintf(os.Stderr, "wbcache-bench: iops plot %s: %v\n", w.name, err)
		} else if p != "" {
			plots = append(plots, p)
		}
		if p, err := plotLatency(out, w, targets, rows); err != nil {
			fmt.Fprintf(os.Stderr, "wbcache-bench: latency plot %s: %v\n", w.name, err)
		} else if p != "" {
			plots = append(plots, p)
		}
		for _, t := range targets {
			p, err := plotCache(raw, out, w, t)
			if err != nil {
				fmt.Fprintf(os.Stderr, "wbcache-bench: cache plot %s: %v\n", key(w.name, t.name), err)
			} else if p != "" {
				plots = append(plots, p)
			}
		}
	}
	if len(m.bypassed) > 0 {
		fmt.Fprintf(&md, "\nWrites that bypassed the cache (sequential cutoff), per run:\n\n| workload | target | bypassed writes | dirty after | drain |\n|---|---|--:|--:|--:|\n")
		keys := make([]string, 0, len(m.bypassed))
		for k := range m.bypassed {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			wl, t, _ := strings.Cut(k, "@")
			dirty, drain := "-", "-"
			if d, ok := m.dirty[k]; ok {
				dirty = fmtBytes(d)
			}
			if d, ok := m.drain[k]; ok {
				drain = fmt.Sprintf("%.1fs", d[0])
			}
			fmt.Fprintf(&md, "| %s | %s | %.0f | %s | %s |\n", wl, t, m.bypassed[k], dirty, drain)
		}
	}
	if len(m.hddio) > 0 {
		fmt.Fprintf(&md, "\nI/O the blkio cgroup throttled on the emulated HDD, per target (sanity check that the HDD limit applied):\n\n| target | reads | writes |\n|---|--:|--:|\n")
		for _, t := range targets {
			if v, ok := m.hddio[t.name]; ok {
				fmt.Fprintf(&md, "| %s | %.0f | %.0f |\n", t.name, v[0], v[1])
			}
		}
	}
	if len(m.notes) > 0 {
		fmt.Fprintf(&md, "\nNotes:\n\n")
		for _, n := range m.notes {
			fmt.Fprintf(&md, "- %s\n", n)
		}
	}
	if len(plots) > 0 {
		fmt.Fprintf(&md, "\nPlots (in %s): %s\n", out, strings.Join(plots, ", "))
	}
	if err := os.WriteFile(filepath.Join(out, "results.md"), []byte(md.String()), 0o644); err != nil {
		return err
	}
	_, err = io.WriteString(stdout, md.String())
	return err
}

// readIOPSLog sums fio iops logs WORKLOAD@TARGET_iops.*.log per time bucket.
func readIOPSLog(raw, k string) (plotter.XYs, error) {
	files, _ := filepath.Glob(filepath.Join(raw, k+"_iops.*.log"))
	if len(files) == 0 {
		return nil, nil
	}
	sum := map[int64]float64{}
	for _, fn := range files {
		f, err := os.Open(fn)
		if err != nil {
			return nil, err
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			p := strings.Split(sc.Text(), ",")
			if len(p) < 2 {
				continue
			}
			t, err1 := strconv.ParseInt(strings.TrimSpace(p[0]), 10, 64)
			v, err2 := strconv.ParseFloat(strings.TrimSpace(p[1]), 64)
			if err1 != nil || err2 != nil {
				continue
			}
			sum[t] += v
		}
		f.Close()
	}
	ts := make([]int64, 0, len(sum))
	for t := range sum {
		ts = append(ts, t)
	}
	sort.Slice(ts, func(a, b int) bool { return ts[a] < ts[b] })
	xy := make(plotter.XYs, 0, len(ts))
	for _, t := range ts {
		v := sum[t]
		if v < 1 {
			v = 1 // log scale
		}
		xy = append(xy, plotter.XY{X: float64(t) / 1000, Y: v})
	}
	return xy, nil
}

func styleLine(l *plotter.Line, i int) {
	l.Color = plotutil.Color(i)
	l.Width = vg.Points(1.5)
	if i >= 7 {
		l.Dashes = []vg.Length{vg.Points(4), vg.Points(2)}
	}
}

func plotIOPS(raw, out string, w named, targets []named) (string, error) {
	p := plot.New()
	p.Title.Text = w.name + ": IOPS over time"
	p.X.Label.Text = "seconds"
	p.Y.Label.Text = "IOPS (log)"
	p.Y.Scale = plot.LogScale{}
	p.Y.Tick.Marker = plot.LogTicks{Prec: -1}
	p.Legend.Top = true
	n := 0
	for i, t := range targets {
		xy, err := readIOPSLog(raw, key(w.name, t.name))
		if err != nil {
			return "", err
		}
		if len(xy) == 0 {
			continue
		}
		l, err := plotter.NewLine(xy)
		if err != nil {
			return "", err
		}
		styleLine(l, i)
		p.Add(l)
		p.Legend.Add(t.name, l)
		n++
	}
	if n == 0 {
		return "", nil
	}
	name := "iops-" + w.name + ".png"
	return name, p.Save(9*vg.Inch, 4.5*vg.Inch, filepath.Join(out, name))
}

var pctKeys = []float64{1, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 99, 99.5, 99.9, 99.99}

func plotLatency(out string, w named, targets []named, rows map[string]row) (string, error) {
	p := plot.New()
	p.Title.Text = w.name + ": completion latency distribution"
	p.X.Label.Text = "latency (µs, log)"
	p.Y.Label.Text = "percent of I/Os completed"
	p.X.Scale = plot.LogScale{}
	p.X.Tick.Marker = plot.LogTicks{Prec: -1}
	p.Legend.Top = true
	p.Legend.Left = true
	n := 0
	for i, t := range targets {
		r, ok := rows[t.name]
		if !ok {
			continue
		}
		lat := r.job.Write.Clat
		if r.job.Read.TotalIO >= r.job.Write.TotalIO {
			lat = r.job.Read.Clat
		}
		var xy plotter.XYs
		for _, q := range pctKeys {
			v := pct(lat, strconv.FormatFloat(q, 'f', -1, 64))
			if math.IsNaN(v) || v <= 0 {
				continue
			}
			xy = append(xy, plotter.XY{X: v / 1e3, Y: q})
		}
		if len(xy) < 2 {
			continue
		}
		l, err := plotter.NewLine(xy)
		if err != nil {
			return "", err
		}
		styleLine(l, i)
		p.Add(l)
		p.Legend.Add(t.name, l)
		n++
	}
	if n == 0 {
		return "", nil
	}
	name := "lat-" + w.name + ".png"
	return name, p.Save(9*vg.Inch, 4.5*vg.Inch, filepath.Join(out, name))
}

// plotCache plots status-WORKLOAD@TARGET.tsv: dirty share of the cache and
// the destage rate over the run and the drain after it.
func plotCache(raw, out string, w named, t named) (string, error) {
	k := key(w.name, t.name)
	f, err := os.Open(filepath.Join(raw, "status-"+k+".tsv"))
	if errors.Is(err, os.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	defer f.Close()
	var dirty, rate plotter.XYs
	var drainStart float64 = -1
	var lastT, lastD float64 = -1, 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		p := strings.Fields(sc.Text())
		if len(p) < 6 {
			continue
		}
		num := func(i int) float64 { v, _ := strconv.ParseFloat(p[i], 64); return v }
		ts, slots, d, destaged := num(0), num(2), num(3), num(5)
		if slots <= 0 {
			continue
		}
		if p[1] == "drain" && drainStart < 0 {
			drainStart = ts
		}
		dirty = append(dirty, plotter.XY{X: ts, Y: 100 * d / slots})
		if lastT >= 0 && ts > lastT {
			rate = append(rate, plotter.XY{X: ts, Y: (destaged - lastD) * 4096 / (1 << 20) / (ts - lastT)})
		}
		lastT, lastD = ts, destaged
	}
	if len(dirty) < 2 {
		return "", nil
	}
	pl := plot.New()
	pl.Title.Text = fmt.Sprintf("%s on %s: cache filling and draining", w.name, t.name)
	pl.X.Label.Text = "seconds (fio run, then wbcache flush)"
	pl.Y.Label.Text = "dirty % of cache slots / destage MiB/s"
	pl.Legend.Top = true
	ld, err := plotter.NewLine(dirty)
	if err != nil {
		return "", err
	}
	styleLine(ld, 0)
	pl.Add(ld)
	pl.Legend.Add("dirty % of slots", ld)
	if len(rate) > 1 {
		lr, err := plotter.NewLine(rate)
		if err != nil {
			return "", err
		}
		styleLine(lr, 1)
		pl.Add(lr)
		pl.Legend.Add("destage MiB/s", lr)
	}
	if drainStart >= 0 {
		v, err := plotter.NewLine(plotter.XYs{{X: drainStart, Y: 0}, {X: drainStart, Y: 100}})
		if err == nil {
			v.Color = color.Gray{Y: 128}
			v.Dashes = []vg.Length{vg.Points(2), vg.Points(2)}
			pl.Add(v)
			pl.Legend.Add("flush starts", v)
		}
	}
	name := "cache-" + k + ".png"
	return name, pl.Save(9*vg.Inch, 4.5*vg.Inch, filepath.Join(out, name))
}
