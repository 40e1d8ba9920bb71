package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/wbcache/wbcache/blockcache"
)

// Status is the JSON snapshot served as MOUNTPOINT/stats, by GET /status on
// the control socket and printed by `wbcache status --json`. Field names
// are stable (README lists them); the engine's counters are inlined from
// blockcache.Stats.
type Status struct {
	Mountpoint    string  `json:"mountpoint"`
	Disk          string  `json:"disk"`
	Cache         string  `json:"cache"`
	Backing       string  `json:"backing"`
	PID           int     `json:"pid"`
	ControlSocket string  `json:"control_socket"`
	MetricsAddr   string  `json:"metrics_address,omitempty"`
	UptimeSeconds float64 `json:"uptime_seconds"`
	FuseTransport string  `json:"fuse_transport"`
	JournalWrites string  `json:"journal_writes"`
	Stopping      string  `json:"stopping,omitempty"` // what a stop in progress is doing

	blockcache.Stats

	SlotSize   int   `json:"slot_size"`
	DirtyBytes int64 `json:"dirty_bytes"`

	DestagedBytes        uint64  `json:"destaged_bytes"`
	DestageRate          float64 `json:"destage_rate_bytes_per_second"` // over the last 10 s
	DestageErrors        uint64  `json:"destage_errors"`
	DestageBackingErrors uint64  `json:"destage_backing_errors"` // the part of destage_errors counted in backing_errors
	DestageLastError     string  `json:"destage_last_error,omitempty"`
	// DestageFailing: the last write-back attempt failed and the destager
	// waits to retry.
	DestageFailing bool `json:"destage_failing,omitempty"`
	// DestageGapReads: the destager reads short gaps between dirty blocks
	// from the backing device to write long runs (off over a backing
	// device the kernel reports as not rotational).
	DestageGapReads bool `json:"destage_gap_reads"`
	// Drain says why a drain started by the daemon itself runs, if one does.
	Drain              string     `json:"drain,omitempty"`
	HitRatio           float64    `json:"hit_ratio"`
	JournalUsedPercent float64    `json:"journal_used_percent"`
	Policy             policyView `json:"policy"`
}

// status takes a snapshot.
func (d *daemon) status() Status {
	cs := d.cache.Stats()
	ds := d.dest.Stats()
	s := Status{
		Mountpoint:       d.mountpoint,
		Disk:             d.diskPath(),
		Cache:            absOr(d.cfg.cachePath),
		Backing:          absOr(d.cfg.backingPath),
		PID:              os.Getpid(),
		UptimeSeconds:    time.Since(d.started).Seconds(),
		Stats:            cs,
		SlotSize:         blockcache.BlockSize,
		DirtyBytes:       int64(cs.Dirty) * blockcache.BlockSize,
		DestagedBytes:    cs.DestagedBlocks * blockcache.BlockSize,
		DestageRate:      ds.BytesPerSec,
		DestageErrors:    ds.Errors,
		DestageLastError: ds.LastError,
		DestageFailing:   ds.Backoff > 0,
		DestageGapReads:  d.dest.GapReads(),
		Drain:            d.drain.reason(),
		Policy:           makePolicyView(d.cache.Mode(), d.dest.Policy(), d.cache.Settings(), d.promote),
		JournalWrites:    d.cache.JournalWrites(),
		Stopping:         d.stopping(),
	}
	// Write-back errors on the backing device count as backing errors.
	s.DestageBackingErrors = ds.BackingErrors
	s.BackingErrors += ds.BackingErrors
	if d.ctl != nil {
		s.ControlSocket = d.ctl.path
	}
	if d.srv != nil {
		s.FuseTransport = d.transport()
	}
	if d.metrics != nil {
		s.MetricsAddr = d.metrics.addr
	}
	if n := cs.ReadHits + cs.ReadMisses; n > 0 {
		s.HitRatio = float64(cs.ReadHits) / float64(n)
	}
	if cs.JournalSize > 0 {
		s.JournalUsedPercent = 100 * float64(cs.JournalUsed) / float64(cs.JournalSize)
	}
	return s
}

func absOr(p string) string {
	if a, err := filepath.Abs(p); err == nil {
		return a
	}
	return p
}

// printStatus writes the human form of s.
func printStatus(w io.Writer, s *Status) {
	pct := func(n int) string { return fmt.Sprintf("%d (%.1f%%)", n, percent(n, s.Slots)) }
	fmt.Fprintf(w, "wbcache on %s (pid %d, up %s)\n", s.Mountpoint, s.PID, formatAge(s.UptimeSeconds))
	if s.Stopping != "" {
		fmt.Fprintf(w, "  STOPPING:   %s\n", s.Stopping)
	}
	printFaults(w, s)
	fmt.Fprintf(w, "  disk:       %s, %s, mode %s\n", s.Disk, formatSize(s.SizeBytes), s.Mode)
	fmt.Fprintf(w, "  cache:      %s (%d slots of 4 KiB = %s)\n", s.Cache, s.Slots, formatSize(int64(s.Slots)*blockcache.BlockSize))
	if s.UnwrittenBytes > 0 {
		fmt.Fprintf(w, "              %s of free slots not yet written by the filesystem: writing zeros over them once, in the background\n", formatSize(s.UnwrittenBytes))
	}
	fmt.Fprintf(w, "  backing:    %s\n", s.Backing)
	if s.FuseTransport != "" {
		fmt.Fprintf(w, "  fuse:       requests through %s\n", s.FuseTransport)
	}
	fmt.Fprintf(w, "  slots:      used %s: dirty %s, clean %s; free %s\n", pct(s.Used), pct(s.Dirty), pct(s.Clean), pct(s.Free))
	fmt.Fprintf(w, "  dirty:      %s not yet on the backing device; oldest %s\n", formatSize(s.DirtyBytes), oldestDirty(s))
	if s.Drain != "" {
		fmt.Fprintf(w, "  drain:      %s\n", s.Drain)
	}
	fmt.Fprintf(w, "  reads:      %d (%s), hits %d, misses %d, hit ratio %.1f%%, promoted %d\n",
		s.Reads, formatSize(int64(s.ReadBytes)), s.ReadHits, s.ReadMisses, 100*s.HitRatio, s.Promotions)
	over := ""
	if s.BypassedOverDirty > 0 {
		over = fmt.Sprintf(" (%d runs over dirty blocks)", s.BypassedOverDirty)
	}
	fmt.Fprintf(w, "  writes:     %d (%s), in place %d, bypassed %d%s, syncs %d, discards %d\n",
		s.Writes, formatSize(int64(s.WriteBytes)), s.WritesInPlace, s.Bypassed, over, s.Syncs, s.Discards)
	gaps := "gap reads off (the backing device does not seek)"
	if s.DestageGapReads {
		gaps = fmt.Sprintf("%s of gaps read", formatSize(int64(s.GapReadBlocks)*blockcache.BlockSize))
	}
	fmt.Fprintf(w, "  destage:    %s in %d runs, now %s/s (last 10 s), errors %d; %s\n",
		formatSize(int64(s.DestagedBytes)), s.DestageRuns, formatSize(int64(s.DestageRate)), s.DestageErrors, gaps)
	switch {
	case s.DestageFailing:
		fmt.Fprintf(w, "              FAILING, retrying with back-off: %s\n", s.DestageLastError)
	case s.DestageLastError != "":
		fmt.Fprintf(w, "              last error (since recovered): %s\n", s.DestageLastError)
	}
	fmt.Fprintf(w, "  journal:    %d of %d blocks in use (%.1f%%), %d records, %d commits; %d checkpoints (%d pages written)\n",
		s.JournalUsed, s.JournalSize, s.JournalUsedPercent, s.JournalRecords, s.JournalSyncs, s.Checkpoints, s.CheckpointPages)
	if s.JournalWrites == "pwrite" {
		fmt.Fprintf(w, "              records written with pwrite: the cache file cannot be mapped\n")
	}
	fmt.Fprintf(w, "  errors:     cache device %d, backing device %d (%d in write-back); clean blocks healed %d\n",
		s.CacheErrors, s.BackingErrors, s.DestageBackingErrors, s.HealedBlocks)
	if s.LostBlocks > 0 {
		fmt.Fprintf(w, "  LOST:       %d dirty blocks fail their checksum and read as errors (see the log; rewrite or discard them)\n", s.LostBlocks)
	}
	fmt.Fprintf(w, "  recovery:   %.3fs at open, %d journal records replayed\n", s.RecoverySecs, s.Replayed)
	fmt.Fprintf(w, "  order:      %s\n", orderLine(s.Order))
	fmt.Fprintf(w, "  policy:     %s\n", s.Policy)
	if s.ControlSocket != "" {
		fmt.Fprintf(w, "  control:    %s\n", s.ControlSocket)
	}
}

// printFaults writes the failures that need the operator first.
func printFaults(w io.Writer, s *Status) {
	if s.Failed != "" {
		fmt.Fprintf(w, "  FAILED:     %s\n", s.Failed)
		fmt.Fprintf(w, "              the cache refuses I/O; stop the daemon and mount again to recover\n")
	}
	if s.BackingSyncFailed != "" {
		fmt.Fprintf(w, "  BACKING SYNC FAILED at %s: %s\n", s.BackingSyncFailedAt, s.BackingSyncFailed)
		fmt.Fprintf(w, "              every fsync on the disk fails until the daemon is restarted (fsyncgate);\n")
		fmt.Fprintf(w, "              write-back and flush go on but do not clear it. Check the backing device,\n")
		fmt.Fprintf(w, "              then stop the daemon and mount again\n")
	}
}

// oldestDirty describes the age of the oldest dirty block.
func oldestDirty(s *Status) string {
	switch {
	case s.Dirty == 0:
		return "none"
	case s.OldestDirtySinceOpen:
		return "at least " + formatAge(s.OldestDirtySeconds) + " old (dirty since before this mount, at a time not recorded)"
	}
	return formatAge(s.OldestDirtySeconds) + " old"
}

const statusAbout = `
Shows the state of the cache mounted on MOUNTPOINT, asked from its daemon
over the control socket (or read from MOUNTPOINT/stats when the socket is
not reachable). --json prints the JSON snapshot; README.md lists its fields.`

func runStatus(args []string, out io.Writer) error {
	f := newFlags("status", "wbcache status MOUNTPOINT [--json]", statusAbout, out)
	asJSON := f.Bool("json", false, "print the JSON snapshot")
	pos, err := f.parseArgs(args, "MOUNTPOINT")
	if err != nil {
		return err
	}
	raw, err := fetchStatus(pos[0])
	if err != nil {
		return err
	}
	if *asJSON {
		_, err := out.Write(raw)
		return err
	}
	var s Status
	if err := json.Unmarshal(raw, &s); err != nil {
		return fmt.Errorf("decoding status: %w", err)
	}
	printStatus(out, &s)
	return nil
}

// fetchStatus gets the JSON snapshot of the daemon serving mountpoint.
func fetchStatus(mountpoint string) ([]byte, error) {
	cl, err := dialControl(mountpoint)
	if err == nil {
		var b []byte
		if b, err = cl.get("/status"); err == nil {
			return b, nil
		}
	}
	// The socket may belong to another user: try the stats file.
	b, ferr := os.ReadFile(filepath.Join(mountpoint, "stats"))
	if ferr == nil {
		return b, nil
	}
	if err != nil {
		return nil, err
	}
	return nil, ferr
}

// orderLine says how far behind the backing device is (ordered.go).
func orderLine(o blockcache.OrderStatus) string {
	switch {
	case o.Order != "ordered":
		return "unordered write-back: the backing device alone is not a consistent point in time while blocks are dirty"
	case !o.InForce:
		return fmt.Sprintf("ordered write-back SUSPENDED (%s); %d older versions; the backing device alone is not a consistent point in time until it resumes", o.Suspended, o.OlderVersions)
	}
	at := "unknown (before this mount)"
	if o.ConsistentUnixNano > 0 {
		at = time.Unix(0, o.ConsistentUnixNano).UTC().Format(time.RFC3339Nano)
	}
	return fmt.Sprintf("ordered, in force: the backing device alone holds every write fsync'd before %s (epoch %d, %d behind); %d older versions", at, o.ConsistentEpoch, o.BehindEpochs, o.OlderVersions)
}
