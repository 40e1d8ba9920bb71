package main

import (
	"net/http"
	"os"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/stretchr/testify/require"
)

// TestMetrics scrapes --metrics and parses it with the Prometheus text
// format parser.
func TestMetrics(t *testing.T) {
	needFUSE(t)
	r := newRig(t, 16<<20, 8<<20)
	d := r.mount(t, "--metrics", "127.0.0.1:0")
	s := r.status(t)
	require.NotEmpty(t, s.MetricsAddr)

	f, err := os.OpenFile(r.disk(), os.O_RDWR, 0)
	require.NoError(t, err)
	buf := make([]byte, 64<<10)
	_, err = f.WriteAt(buf, 0)
	require.NoError(t, err)
	_, err = f.ReadAt(buf, 0)
	require.NoError(t, err)
	_, err = f.ReadAt(buf, 8<<20) // misses
	require.NoError(t, err)
	require.NoError(t, f.Sync())
	require.NoError(t, f.Close())
	wantCode(t, 0, "flush", r.mnt)

	resp, err := http.Get("http://" + s.MetricsAddr + "/metrics")
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Contains(t, resp.Header.Get("Content-Type"), "text/plain; version=0.0.4")
	parser := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := parser.TextToMetricFamilies(resp.Body)
	require.NoError(t, err)

	value := func(name string, labels ...string) float64 {
		t.Helper()
		fam, ok := fams[name]
		require.True(t, ok, "metric %s missing", name)
	next:
		for _, m := range fam.Metric {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, lp := range m.Label {
					if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
						found = true
					}
				}
				if !found {
					continue next
				}
			}
			switch fam.GetType() {
			case dto.MetricType_COUNTER:
				return m.GetCounter().GetValue()
			case dto.MetricType_GAUGE:
				return m.GetGauge().GetValue()
			}
			t.Fatalf("metric %s has type %v", name, fam.GetType())
		}
		t.Fatalf("metric %s%v missing", name, labels)
		return 0
	}
	counter := func(name string) {
		t.Helper()
		require.Equal(t, dto.MetricType_COUNTER, fams[name].GetType(), name)
	}
	for _, name := range []string{
		"wbcache_reads_total", "wbcache_writes_total", "wbcache_writes_in_place_total", "wbcache_read_hits_total", "wbcache_read_misses_total",
		"wbcache_bypassed_total", "wbcache_destaged_bytes_total", "wbcache_destage_runs_total",
		"wbcache_journal_commits_total", "wbcache_checkpoints_total", "wbcache_errors_total",
		"wbcache_syncs_total", "wbcache_discards_total", "wbcache_journal_records_total",
		"wbcache_destage_gap_read_blocks_total",
	} {
		counter(name)
	}
	require.Equal(t, float64(b2i(s.DestageGapReads)), value("wbcache_destage_gap_reads"))
	// The README lists every metric the daemon serves.
	readme, err := os.ReadFile("../../README.md")
	require.NoError(t, err)
	for name := range fams {
		require.Contains(t, string(readme), "`"+name, "metric %s is not in the README's list", name)
	}
	require.GreaterOrEqual(t, value("wbcache_writes_total"), 1.0)
	require.GreaterOrEqual(t, value("wbcache_reads_total"), 2.0)
	require.GreaterOrEqual(t, value("wbcache_read_hits_total"), 16.0)
	require.GreaterOrEqual(t, value("wbcache_read_misses_total"), 16.0)
	require.GreaterOrEqual(t, value("wbcache_bypassed_total"), 0.0)
	require.GreaterOrEqual(t, value("wbcache_syncs_total"), 1.0)
	require.GreaterOrEqual(t, value("wbcache_destaged_bytes_total"), float64(64<<10))
	require.GreaterOrEqual(t, value("wbcache_destage_runs_total"), 1.0)
	require.GreaterOrEqual(t, value("wbcache_journal_commits_total"), 1.0)
	require.GreaterOrEqual(t, value("wbcache_checkpoints_total"), 1.0)
	require.Equal(t, 0.0, value("wbcache_errors_total", "device", "cache"))
	require.Equal(t, 0.0, value("wbcache_errors_total", "device", "backing"))
	require.Equal(t, 0.0, value("wbcache_slots", "state", "dirty"))
	require.GreaterOrEqual(t, value("wbcache_slots", "state", "clean"), 16.0)
	require.Greater(t, value("wbcache_slots", "state", "free"), 0.0)
	require.Equal(t, float64(s.Slots), value("wbcache_slots_total"))
	require.Equal(t, 0.0, value("wbcache_dirty_bytes"))
	require.GreaterOrEqual(t, value("wbcache_recovery_seconds"), 0.0)
	require.Equal(t, 1.0, value("wbcache_info", "mode", "writeback"))
	require.Equal(t, float64(16<<20), value("wbcache_size_bytes"))
	require.Equal(t, 0.0, value("wbcache_failed"))

	require.Equal(t, 0, d.stop(t))
	_, err = http.Get("http://" + s.MetricsAddr + "/metrics")
	require.Error(t, err, "the endpoint closes with the daemon")
}
