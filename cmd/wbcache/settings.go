package main

import (
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/wbcache/wbcache/blockcache"
	"github.com/wbcache/wbcache/flush"
	"github.com/wbcache/wbcache/layout"
)

// A setting is one knob that `mount` takes as a flag and `set` as
// KEY=VALUE. Every setting is persisted in the superblock (layout.Settings),
// so a remount keeps it.
type setting struct {
	key   string
	arg   string // placeholder in help
	help  string
	apply func(s *layout.Settings, v string) error
}

// settingKeys lists the knobs in the order help shows them.
var settingKeys = []setting{
	{"mode", "MODE", "cache mode: writeback, writethrough, writearound or none", applyMode},
	{"low-watermark", "PCT", "percent of slots dirty at or below which only blocks older than max-dirty-age are written back (0-99, below high-watermark)",
		applyNumber("low-watermark", percentRange, 0, 99, layout.SetLowWatermark, func(s *layout.Settings, v int) { s.LowWatermark = uint8(v) })},
	{"high-watermark", "PCT", "percent of slots dirty at or above which write-back runs flat out (1-100)",
		applyNumber("high-watermark", percentRange, 1, 100, layout.SetHighWatermark, func(s *layout.Settings, v int) { s.HighWatermark = uint8(v) })},
	{"max-dirty-age", "DUR", "longest time a block stays dirty, rounded up to whole seconds (0 = write back at once)", applyMaxDirtyAge},
	{"workers", "N", "destager workers writing runs to the backing device (1-64)",
		applyNumber("workers", numberRange, 1, 64, layout.SetWorkers, func(s *layout.Settings, v int) { s.Workers = uint16(v) })},
	{"seq-cutoff", "SIZE", "sequential stream length beyond which writes bypass the cache (0 = never bypass)", applySeqCutoff},
	{"promote-after", "N", "read misses of a block before it is copied into the cache (0 or 1 = first miss, max 255)",
		applyNumber("promote-after", numberRange, 0, 255, layout.SetPromoteAfter, func(s *layout.Settings, v int) { s.PromoteAfter = uint8(v) })},
	{"idle-rate", "MIBPS", "cap on write-back MiB/s between the watermarks while foreground I/O is busy (0 = no cap; default 8)", applyIdleRate},
	{"writeback-order", "ORDER", "ordered (the backing device alone stays a consistent point in time; slower write-back after many fsyncs) or unordered (default)", applyOrder},
}

func settingByKey(key string) *setting {
	for i := range settingKeys {
		if settingKeys[i].key == key {
			return &settingKeys[i]
		}
	}
	return nil
}

func settingKeyNames() string {
	var names []string
	for _, s := range settingKeys {
		names = append(names, s.key)
	}
	return strings.Join(names, ", ")
}

// kv is one KEY=VALUE change.
type kv struct{ key, value string }

// parseKV splits "key=value" arguments.
func parseKV(args []string) ([]kv, error) {
	var out []kv
	for _, a := range args {
		k, v, ok := strings.Cut(a, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("%q is not KEY=VALUE (keys: %s)", a, settingKeyNames())
		}
		out = append(out, kv{strings.TrimSpace(k), strings.TrimSpace(v)})
	}
	return out, nil
}

// checkSyntax checks each change on its own (known key, valid value).
func checkSyntax(changes []kv) error {
	var s layout.Settings
	for _, c := range changes {
		st := settingByKey(c.key)
		if st == nil {
			return fmt.Errorf("unknown setting %q (known: %s)", c.key, settingKeyNames())
		}
		if err := st.apply(&s, c.value); err != nil {
			return err
		}
	}
	return nil
}

// applySettings applies changes to a copy of s and validates the result.
func applySettings(s layout.Settings, changes []kv) (layout.Settings, error) {
	for _, c := range changes {
		st := settingByKey(c.key)
		if st == nil {
			return s, fmt.Errorf("unknown setting %q (known: %s)", c.key, settingKeyNames())
		}
		if err := st.apply(&s, c.value); err != nil {
			return s, err
		}
	}
	if low, high := flush.PolicyFromSettings(s).Watermarks(); low >= high {
		return s, fmt.Errorf("low-watermark %d%% must be below high-watermark %d%%", low, high)
	}
	return s, nil
}

func applyMode(s *layout.Settings, v string) error {
	m, err := blockcache.ParseMode(v)
	if err != nil {
		return fmt.Errorf("mode %q: want writeback, writethrough, writearound or none", v)
	}
	s.Mode = uint8(m)
	return nil
}

func applyOrder(s *layout.Settings, v string) error {
	switch v {
	case "ordered":
		s.Order = layout.OrderOrdered
	case "unordered":
		s.Order = layout.OrderUnordered
	default:
		return fmt.Errorf("writeback-order %q: want ordered or unordered", v)
	}
	s.SetMask |= layout.SetOrder
	return nil
}

// How applyNumber reads a value and names its range.
const (
	percentRange = "a whole percentage"
	numberRange  = "a number"
)

// applyNumber parses a whole number from lo to hi (a percentage may end in
// %), stores it with set and marks bit.
func applyNumber(key, kind string, lo, hi int, bit uint32, set func(*layout.Settings, int)) func(*layout.Settings, string) error {
	return func(s *layout.Settings, v string) error {
		num := v
		if kind == percentRange {
			num = strings.TrimSuffix(v, "%")
		}
		n, err := strconv.Atoi(num)
		if err != nil || n < lo || n > hi {
			return fmt.Errorf("%s %q: want %s from %d to %d", key, v, kind, lo, hi)
		}
		set(s, n)
		s.SetMask |= bit
		return nil
	}
}

func applyMaxDirtyAge(s *layout.Settings, v string) error {
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 {
		return fmt.Errorf("max-dirty-age %q: want a duration such as 30s or 5m (0 = write back at once)", v)
	}
	sec := (d + time.Second - 1) / time.Second
	if sec > math.MaxUint32 {
		return fmt.Errorf("max-dirty-age %q: too long", v)
	}
	s.MaxDirtyAge = uint32(sec)
	s.SetMask |= layout.SetMaxDirtyAge
	return nil
}

func applySeqCutoff(s *layout.Settings, v string) error {
	n, err := parseSize(v)
	if err != nil {
		return fmt.Errorf("seq-cutoff: %v", err)
	}
	s.SeqCutoff = uint64(n)
	s.SetMask |= layout.SetSeqCutoff
	return nil
}

func applyIdleRate(s *layout.Settings, v string) error {
	n, err := strconv.ParseUint(strings.TrimSuffix(strings.ToLower(v), "mib/s"), 10, 32)
	if err != nil {
		return fmt.Errorf("idle-rate %q: want MiB/s as a whole number (0 = no cap)", v)
	}
	s.IdleRate = uint32(n)
	s.SetMask |= layout.SetIdleRate
	return nil
}

// policyView is the settings in force, as status reports them.
type policyView struct {
	Mode               string  `json:"mode"`
	LowWatermark       int     `json:"low_watermark_percent"`
	HighWatermark      int     `json:"high_watermark_percent"`
	MaxDirtyAgeSeconds float64 `json:"max_dirty_age_seconds"`
	Workers            int     `json:"workers"`
	SeqCutoffBytes     int64   `json:"seq_cutoff_bytes"`
	PromoteAfter       int     `json:"promote_after"`
	IdleRateMiBps      int     `json:"idle_rate_mibps"`
	WritebackOrder     string  `json:"writeback_order"`
}

func makePolicyView(mode blockcache.Mode, p flush.Policy, s layout.Settings, promote int) policyView {
	return policyView{
		Mode:               mode.String(),
		LowWatermark:       p.LowWatermark,
		HighWatermark:      p.HighWatermark,
		MaxDirtyAgeSeconds: p.MaxDirtyAge.Seconds(),
		Workers:            p.Workers,
		SeqCutoffBytes:     blockcache.SeqCutoff(s),
		PromoteAfter:       promote,
		IdleRateMiBps:      p.IdleRate,
		WritebackOrder:     orderName(s),
	}
}

func orderName(s layout.Settings) string {
	if blockcache.Ordered(s) {
		return "ordered"
	}
	return "unordered"
}

func (v policyView) String() string {
	idle := "no cap"
	if v.IdleRateMiBps > 0 {
		idle = fmt.Sprintf("%d MiB/s", v.IdleRateMiBps)
	}
	cut := "off"
	if v.SeqCutoffBytes > 0 {
		cut = formatSize(v.SeqCutoffBytes)
	}
	return fmt.Sprintf("mode=%s low-watermark=%d%% high-watermark=%d%% max-dirty-age=%s workers=%d seq-cutoff=%s promote-after=%d idle-rate=%s writeback-order=%s",
		v.Mode, v.LowWatermark, v.HighWatermark, formatAge(v.MaxDirtyAgeSeconds), v.Workers, cut, v.PromoteAfter, idle, v.WritebackOrder)
}

// changedKeys lists the keys of changes, deduplicated, in order.
func changedKeys(changes []kv) []string {
	var keys []string
	for _, c := range changes {
		if !slices.Contains(keys, c.key) {
			keys = append(keys, c.key)
		}
	}
	return keys
}
