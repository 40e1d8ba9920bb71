package main

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"
)

// metricsServer serves the Prometheus text format on /metrics.
type metricsServer struct {
	addr string
	ln   net.Listener
	srv  *http.Server
	log  *slog.Logger
}

// metricsListenAddr defaults the host to 127.0.0.1: ":9100" and "9100" bind
// loopback only; give 0.0.0.0:9100 to listen on every interface.
func metricsListenAddr(addr string) (string, error) {
	if !strings.Contains(addr, ":") {
		addr = ":" + addr
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil || port == "" {
		return "", fmt.Errorf("--metrics %q: want HOST:PORT, :PORT or PORT", addr)
	}
	if host == "" {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port), nil
}

func startMetrics(d *daemon, addr string) (*metricsServer, error) {
	a, err := metricsListenAddr(addr)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", a)
	if err != nil {
		return nil, fmt.Errorf("metrics endpoint: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		s := d.status()
		_, _ = w.Write(formatMetrics(&s))
	})
	m := &metricsServer{addr: ln.Addr().String(), ln: ln, log: d.log,
		srv: &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}}
	return m, nil
}

func (m *metricsServer) serve() {
	go func() {
		if err := m.srv.Serve(m.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			m.log.Error("metrics endpoint stopped", "err", err)
		}
	}()
}

func (m *metricsServer) close() {
	m.srv.Close()
	m.ln.Close() // in case Serve never ran
}

func b2i(b bool) int64 {
	if b {
		return 1
	}
	return 0
}

// formatMetrics renders a status snapshot in the Prometheus text
// exposition format (version 0.0.4).
func formatMetrics(s *Status) []byte {
	var b bytes.Buffer
	metric := func(name, typ, help string, samples ...string) {
		fmt.Fprintf(&b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, typ)
		for _, smp := range samples {
			fmt.Fprintf(&b, "%s%s\n", name, smp)
		}
	}
	u := func(v uint64) string { return fmt.Sprintf(" %d", v) }
	i := func(v int64) string { return fmt.Sprintf(" %d", v) }
	f := func(v float64) string { return fmt.Sprintf(" %g", v) }
	lbl := func(k, v, val string) string { return fmt.Sprintf("{%s=%q}%s", k, v, val) }

	metric("wbcache_info", "gauge", "Constant 1, labelled with the mode and devices.",
		fmt.Sprintf("{mode=%q,cache=%q,backing=%q,mountpoint=%q} 1", s.Mode, s.Cache, s.Backing, s.Mountpoint))
	metric("wbcache_size_bytes", "gauge", "Size of the virtual disk.", i(s.SizeBytes))
	metric("wbcache_reads_total", "counter", "Read requests.", u(s.Reads))
	metric("wbcache_writes_total", "counter", "Write requests.", u(s.Writes))
	metric("wbcache_writes_in_place_total", "counter", "Block writes that rewrote a dirty block in its own slot.", u(s.WritesInPlace))
	metric("wbcache_read_bytes_total", "counter", "Bytes read.", u(s.ReadBytes))
	metric("wbcache_written_bytes_total", "counter", "Bytes written.", u(s.WriteBytes))
	metric("wbcache_syncs_total", "counter", "fsync/fdatasync requests.", u(s.Syncs))
	metric("wbcache_discards_total", "counter", "Discard (punch hole, zero range) requests.", u(s.Discards))
	metric("wbcache_read_hits_total", "counter", "Blocks read from the cache.", u(s.ReadHits))
	metric("wbcache_read_misses_total", "counter", "Blocks read from the backing device.", u(s.ReadMisses))
	metric("wbcache_promotions_total", "counter", "Blocks copied into the cache after read misses.", u(s.Promotions))
	metric("wbcache_bypassed_total", "counter", "Write requests that bypassed the cache (sequential cutoff).", u(s.Bypassed))
	metric("wbcache_bypassed_over_dirty_total", "counter", "Runs written around the cache over dirty cached blocks (modes writearound and none), superseding them after a backing sync.", u(s.BypassedOverDirty))
	metric("wbcache_evictions_total", "counter", "Clean blocks evicted to free slots.", u(s.Evictions))
	metric("wbcache_alloc_waits_total", "counter", "Times a writer waited for a free slot.", u(s.AllocWaits))
	metric("wbcache_slots", "gauge", "Cache slots by state.",
		lbl("state", "dirty", i(int64(s.Dirty))), lbl("state", "clean", i(int64(s.Clean))), lbl("state", "free", i(int64(s.Free))))
	metric("wbcache_slots_total", "gauge", "Cache slots (4 KiB each).", i(int64(s.Slots)))
	metric("wbcache_dirty_bytes", "gauge", "Bytes in the cache not yet written back.", i(s.DirtyBytes))
	metric("wbcache_oldest_dirty_seconds", "gauge", "Age of the oldest dirty block (0 if none).", f(s.OldestDirtySeconds))
	metric("wbcache_destaged_bytes_total", "counter", "Bytes written back to the backing device.", u(s.DestagedBytes))
	metric("wbcache_destage_runs_total", "counter", "Coalesced write-back runs.", u(s.DestageRuns))
	metric("wbcache_destage_gap_read_blocks_total", "counter", "Blocks read from the backing device to fill gaps between dirty blocks, so a stretch is written back in one run.", u(s.GapReadBlocks))
	metric("wbcache_destage_gap_reads", "gauge", "1 while the destager reads such gaps (0 over a backing device that does not seek).", i(b2i(s.DestageGapReads)))
	metric("wbcache_destage_rate_bytes_per_second", "gauge", "Write-back rate over the last 10 s.", f(s.DestageRate))
	metric("wbcache_destage_errors_total", "counter", "Write-back errors (backing device and cache reads).", u(s.DestageErrors))
	metric("wbcache_destage_backing_errors_total", "counter", "Write-back errors of the backing device (also in wbcache_errors_total).", u(s.DestageBackingErrors))
	metric("wbcache_destage_failing", "gauge", "1 while the last write-back attempt failed and the destager waits to retry.", i(b2i(s.DestageFailing)))
	metric("wbcache_draining", "gauge", "1 while the daemon writes back everything on its own (a drain resumed at mount).", i(b2i(s.Drain != "")))
	o := s.Order
	metric("wbcache_writeback_ordered", "gauge", "1 while ordered write-back is in force (the backing device alone is a consistent point in time).", i(b2i(o.InForce)))
	metric("wbcache_writeback_order_behind_epochs", "gauge", "Flush epochs (fsyncs) between the backing device's consistent state and now, while ordered write-back is in force.", u(uint64(o.BehindEpochs)))
	metric("wbcache_writeback_order_consistent_time_seconds", "gauge", "Unix time before which every fsync'd write is on the backing device (0 if unknown or not in force).", f(float64(o.ConsistentUnixNano)/1e9))
	metric("wbcache_older_versions", "gauge", "Slots holding older dirty versions kept for ordered write-back.", i(int64(o.OlderVersions)))
	metric("wbcache_writeback_order_suspensions_total", "counter", "Times ordered write-back was suspended (older versions reached their bound).", u(o.Suspensions))
	metric("wbcache_journal_records_total", "counter", "Metadata journal records.", u(s.JournalRecords))
	metric("wbcache_journal_commits_total", "counter", "Journal commits (cache device syncs).", u(s.JournalSyncs))
	metric("wbcache_journal_blocks_written_total", "counter", "Journal blocks started (up to 127 records each).", u(s.JournalBlocks))
	metric("wbcache_journal_blocks_prepared_total", "counter", "Journal blocks opened into a page prepared ahead, outside the journal's lock.", u(s.JournalPrepared))
	metric("wbcache_journal_used_blocks", "gauge", "Journal blocks in use.", u(s.JournalUsed))
	metric("wbcache_journal_blocks", "gauge", "Journal size in blocks.", u(s.JournalSize))
	metric("wbcache_checkpoints_total", "counter", "Checkpoints written.", u(s.Checkpoints))
	metric("wbcache_cache_file_unwritten_bytes", "gauge", "Free slot bytes of the cache file its filesystem has not written yet, which a background pass is writing zeros over once.", i(s.UnwrittenBytes))
	metric("wbcache_checkpoint_pages_written_total", "counter", "Checkpoint pages written (only those that changed since their copy was last written).", u(s.CheckpointPages))
	metric("wbcache_errors_total", "counter", "I/O errors by device (backing: foreground and write-back).",
		lbl("device", "cache", u(s.CacheErrors)), lbl("device", "backing", u(s.BackingErrors)))
	metric("wbcache_healed_blocks_total", "counter", "Clean blocks whose cache slot failed its checksum, read from the backing device instead.", u(s.HealedBlocks))
	metric("wbcache_lost_blocks", "gauge", "Dirty blocks whose cache slot fails its checksum: they read as errors until rewritten or discarded.", i(int64(s.LostBlocks)))
	metric("wbcache_recovery_seconds", "gauge", "Time the last open spent recovering.", f(s.RecoverySecs))
	metric("wbcache_recovery_replayed_records", "gauge", "Journal records replayed by the last open.", u(s.Replayed))
	metric("wbcache_failed", "gauge", "1 if the cache device failed and the cache refuses I/O.", i(b2i(s.Failed != "")))
	syncFailedAt := int64(0)
	if t, err := time.Parse(time.RFC3339, s.BackingSyncFailedAt); err == nil && s.BackingSyncFailed != "" {
		syncFailedAt = t.Unix()
	}
	metric("wbcache_backing_sync_failed", "gauge", "1 once a backing device sync failed: every fsync fails until restart.", i(b2i(s.BackingSyncFailed != "")))
	metric("wbcache_backing_sync_failed_timestamp_seconds", "gauge", "When the backing device sync failed (Unix time; 0 if it has not).", i(syncFailedAt))
	metric("wbcache_uptime_seconds", "gauge", "Seconds since the daemon started serving.", f(s.UptimeSeconds))
	return b.Bytes()
}
