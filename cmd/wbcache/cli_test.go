package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/wbcache/wbcache/blockcache"
	"github.com/wbcache/wbcache/device"
	"github.com/wbcache/wbcache/flush"
	"github.com/wbcache/wbcache/layout"
)

func TestParseSize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
	}{
		{"0", 0}, {"4096", 4096}, {"4K", 4096}, {"4k", 4096}, {"64M", 64 << 20}, {"2G", 2 << 30},
		{"1T", 1 << 40}, {"16MiB", 16 << 20}, {"512B", 512}, {" 8M ", 8 << 20},
	} {
		got, err := parseSize(tc.in)
		require.NoError(t, err, tc.in)
		require.Equal(t, tc.want, got, tc.in)
	}
	for _, bad := range []string{"", "M", "-1", "1.5G", "12Q", "99999999999T", "0x10"} {
		_, err := parseSize(bad)
		require.Error(t, err, bad)
	}
	for _, n := range []int64{0, 4096, 64 << 20, 4097, 3 << 30} {
		back, err := parseSize(formatSizeExact(n))
		require.NoError(t, err)
		require.Equal(t, n, back)
	}
}

func TestMetricsListenAddr(t *testing.T) {
	for in, want := range map[string]string{
		":9100": "127.0.0.1:9100", "9100": "127.0.0.1:9100", "0.0.0.0:9100": "0.0.0.0:9100",
		"[::1]:9100": "[::1]:9100", "localhost:1": "localhost:1",
	} {
		got, err := metricsListenAddr(in)
		require.NoError(t, err, in)
		require.Equal(t, want, got, in)
	}
	_, err := metricsListenAddr("host:")
	require.Error(t, err)
}

func TestApplySettings(t *testing.T) {
	s, err := applySettings(layout.Settings{}, []kv{
		{"mode", "writearound"}, {"low-watermark", "5"}, {"high-watermark", "80%"}, {"max-dirty-age", "1500ms"},
		{"workers", "3"}, {"seq-cutoff", "0"}, {"promote-after", "2"}, {"idle-rate", "40"},
	})
	require.NoError(t, err)
	require.Equal(t, uint8(blockcache.ModeWritearound), s.Mode)
	require.Equal(t, uint8(5), s.LowWatermark)
	require.Equal(t, uint8(80), s.HighWatermark)
	require.Equal(t, uint32(2), s.MaxDirtyAge, "rounded up to whole seconds")
	require.Equal(t, uint16(3), s.Workers)
	require.Equal(t, uint64(0), s.SeqCutoff)
	require.Equal(t, int64(0), blockcache.SeqCutoff(s), "explicit 0 disables the cutoff")
	require.Equal(t, 2, blockcache.PromoteAfter(s))
	require.Equal(t, uint32(40), s.IdleRate)
	const all = layout.SetLowWatermark | layout.SetHighWatermark | layout.SetMaxDirtyAge |
		layout.SetWorkers | layout.SetSeqCutoff | layout.SetPromoteAfter | layout.SetIdleRate
	require.Equal(t, all, s.SetMask)
	p := flush.PolicyFromSettings(s).WithDefaults()
	require.Equal(t, 2*time.Second, p.MaxDirtyAge)

	// Defaults stay defaults.
	def, err := applySettings(layout.Settings{}, nil)
	require.NoError(t, err)
	require.Equal(t, int64(blockcache.DefaultSeqCutoff), blockcache.SeqCutoff(def))

	for _, bad := range [][]kv{
		{{"nope", "1"}}, {{"mode", "fast"}}, {{"low-watermark", "101"}}, {{"high-watermark", "0"}},
		{{"workers", "0"}}, {{"workers", "x"}}, {{"max-dirty-age", "-1s"}}, {{"max-dirty-age", "30"}},
		{{"seq-cutoff", "1Q"}}, {{"promote-after", "256"}}, {{"idle-rate", "-3"}},
		{{"low-watermark", "60"}, {"high-watermark", "40"}},
	} {
		_, err := applySettings(layout.Settings{}, bad)
		require.Error(t, err, "%v", bad)
	}
	_, err = parseKV([]string{"workers"})
	require.Error(t, err)
}

// TestSettingMessages: a refused value names the setting and what it takes.
func TestSettingMessages(t *testing.T) {
	for _, tc := range []struct {
		change []kv
		want   string
	}{
		{[]kv{{"workers", "0"}}, `workers "0": want a number from 1 to 64`},
		{[]kv{{"workers", "3%"}}, `workers "3%": want a number from 1 to 64`},
		{[]kv{{"promote-after", "256"}}, `promote-after "256": want a number from 0 to 255`},
		{[]kv{{"high-watermark", "0%"}}, `high-watermark "0%": want a whole percentage from 1 to 100`},
		{[]kv{{"low-watermark", "x"}}, `low-watermark "x": want a whole percentage from 0 to 99`},
		{[]kv{{"mode", "fast"}}, `mode "fast": want writeback, writethrough, writearound or none`},
		{[]kv{{"low-watermark", "60"}}, "low-watermark 60% must be below high-watermark 50%"},
		{[]kv{{"nope", "1"}}, `unknown setting "nope" (known: mode, low-watermark,`},
	} {
		_, err := applySettings(layout.Settings{}, tc.change)
		require.ErrorContains(t, err, tc.want, "%v", tc.change)
	}
	s, err := applySettings(layout.Settings{}, []kv{{"low-watermark", "0%"}, {"high-watermark", "1"}})
	require.NoError(t, err, "0 is a real low watermark")
	require.True(t, s.Has(layout.SetLowWatermark))
	require.Equal(t, 0, flush.PolicyFromSettings(s).WithDefaults().LowWatermark)
}

func TestUsage(t *testing.T) {
	r := wantCode(t, 0, "help")
	require.Contains(t, r.stdout, "Commands:")
	wantCode(t, 0, "--help")
	r = wantCode(t, 2)
	require.Contains(t, r.stderr, "Usage:")
	r = wantCode(t, 2, "frobnicate")
	require.Contains(t, r.stderr, `unknown command "frobnicate"`)
	require.Contains(t, r.stderr, "Commands:")
	for _, c := range commands {
		if c.name == "help" {
			continue
		}
		for _, h := range []string{"-h", "--help"} {
			r := wantCode(t, 0, c.name, h)
			require.Contains(t, r.stdout, "Usage:\n  wbcache "+c.name, c.name)
		}
		r := wantCode(t, 0, "help", c.name)
		require.Contains(t, r.stdout, "Usage:", c.name)
	}
	wantCode(t, 2, "help", "frobnicate")

	// Usage errors: exit 2 with what is wrong and where to look.
	for _, args := range [][]string{
		{"format"},
		{"format", "--cache", "c", "--backing", "b", "--cache-size", "12Q"},
		{"format", "--cache", "c", "--backing", "b", "--cache-size", "5000"},
		{"format", "--cache", "c", "--backing", "b", "extra"},
		{"format", "--bogus"},
		{"mount", "--cache", "c", "--backing", "b"},
		{"mount", "--cache", "c", "--backing", "b", "--mode", "fast", "/mnt"},
		{"mount", "--cache", "c", "--backing", "b", "--workers", "0", "/mnt"},
		{"mount", "--cache", "c", "--backing", "b", "--log-level", "loud", "/mnt"},
		{"mount", "--cache", "c", "--backing", "b", "--fuse-batch", "on", "/mnt"},
		{"status"},
		{"status", "a", "b"},
		{"flush"},
		{"mode"},
		{"mode", "/mnt", "fast"},
		{"mode", "/mnt", "writeback", "extra"},
		{"stop"},
		{"stop", "a", "b"},
		{"list", "extra"},
		{"version", "extra"},
		{"set", "/mnt"},
		{"set", "/mnt", "workers"},
		{"set", "/mnt", "colour=blue"},
		{"set", "/mnt", "workers=many"},
		{"check"},
		{"detach", "--cache", "c"},
		{"demo", "extra"},
	} {
		r := wantCode(t, 2, args...)
		require.Contains(t, r.stderr, "--help", "%v", args)
	}

	// Runtime errors: exit 1 with advice.
	dir := t.TempDir()
	r = wantCode(t, 1, "status", dir)
	require.Contains(t, r.stderr, "no wbcache daemon serves")
	r = wantCode(t, 1, "flush", dir)
	require.Contains(t, r.stderr, "no wbcache daemon serves")
}

func TestFormat(t *testing.T) {
	dir := t.TempDir()
	backing := filepath.Join(dir, "backing.img")
	cache := filepath.Join(dir, "cache.img")
	require.NoError(t, device.Create(backing, 64<<20))

	r := wantCode(t, 1, "format", "--cache", cache, "--backing", backing)
	require.Contains(t, r.stderr, "does not exist: give --cache-size")
	r = wantCode(t, 1, "format", "--cache", cache, "--cache-size", "16M", "--backing", filepath.Join(dir, "nope"))
	require.Contains(t, r.stderr, "does not exist")
	_, err := os.Stat(cache)
	require.ErrorIs(t, err, os.ErrNotExist, "a cache file created for a failed format is removed")

	r = wantCode(t, 0, "format", "--cache", cache, "--cache-size", "16M", "--journal", "256K", "--backing", backing)
	require.Contains(t, r.stdout, "slots:")
	require.Contains(t, r.stdout, "journal:    256.0 KiB (64 blocks)")
	fi, err := os.Stat(cache)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
	require.Equal(t, int64(16<<20), fi.Size())

	// Refuses to overwrite a formatted cache without --force.
	r = wantCode(t, 1, "format", "--cache", cache, "--backing", backing)
	require.Contains(t, r.stderr, "already holds a wbcache cache")
	require.Contains(t, r.stderr, "--force")
	r = wantCode(t, 1, "format", "--cache", cache, "--cache-size", "32M", "--backing", backing)
	require.Contains(t, r.stderr, "not the --cache-size 32M given")
	wantCode(t, 0, "format", "--cache", cache, "--cache-size", "16M", "--backing", backing, "--force")

	// A cache too small for its journal.
	r = wantCode(t, 1, "format", "--cache", filepath.Join(dir, "tiny.img"), "--cache-size", "64K", "--backing", backing)
	require.Contains(t, r.stderr, "too small")

	// check: consistent, then corrupt.
	r = wantCode(t, 0, "check", "--cache", cache, "--backing", backing)
	require.Contains(t, r.stdout, "consistent")
	other := filepath.Join(dir, "other.img")
	require.NoError(t, device.Create(other, 64<<20))
	r = wantCode(t, 3, "check", "--cache", cache, "--backing", other)
	require.Contains(t, r.stdout, "PROBLEM")
	garbage := filepath.Join(dir, "garbage.img")
	require.NoError(t, os.WriteFile(garbage, []byte(strings.Repeat("x", 1<<20)), 0o600))
	r = wantCode(t, 3, "check", "--cache", garbage)
	require.Contains(t, r.stdout, "PROBLEM")
	r = wantCode(t, 1, "check", "--cache", filepath.Join(dir, "missing.img"))
	require.Contains(t, r.stderr, "does not exist")
}

// TestServingProcs: the daemon serves with two Go processors per CPU it
// may use, unless GOMAXPROCS was set in the environment.
func TestServingProcs(t *testing.T) {
	require.Equal(t, 4, servingProcs("", 2))
	require.Equal(t, 16, servingProcs("", 8))
	require.Equal(t, 2, servingProcs("2", 2), "GOMAXPROCS from the environment is kept")
	require.Equal(t, 3, servingProcs("3", 3))
}
