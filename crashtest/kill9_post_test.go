package crashtest

import (
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// post ends an iteration after the verify: flush (slots_dirty must be 0,
// clean stop, the backing file verified alone), detach (clean stop,
// `wbcache detach`, the backing file verified alone, a new cache), chain
// (the next iteration crashes the same daemon) or none (clean stop and
// check). Quick runs rotate none, flush, detach.
func (k *kill9) post(bin, v string) string {
	post := [...]string{"detach", "none", "flush"}[k.it%3]
	if !k.quick {
		switch r := k.e.rng.IntN(100); {
		case r < 15:
			post = "flush"
		case r < 25:
			post = "detach"
		case r < 45 && k.it < k.n:
			post = "chain"
		default:
			post = "none"
		}
	}
	switch post {
	case "flush":
		k.st.flushes++
		code, out := run(filepath.Join(k.dir, "flush.log"), 15*time.Minute, bin, "flush", k.mnt)
		if code != 0 {
			k.fail("wbcache flush exited %d: %s", code, oneLine(out, 300))
		} else if st, err := k.d.Status(); err != nil || st["slots_dirty"] != float64(0) {
			k.fail("slots_dirty is %v right after wbcache flush (%v)", st["slots_dirty"], err)
		}
		k.cleanStop(bin)
		if code == 0 {
			k.verify("backing")
		}
	case "detach":
		k.st.detaches++
		k.cleanStop(bin)
		code, out := run(filepath.Join(k.dir, "detach.log"), 15*time.Minute, bin, "detach", "--cache", k.cache, "--backing", k.backing)
		if code != 0 {
			k.fail("wbcache detach exited %d: %s", code, oneLine(out, 300))
		} else {
			k.verify("backing")
		}
		k.format(bin, v)
	case "none":
		k.cleanStop(bin)
	}
	return post
}

// kill9Stats are the figures of the summary.
type kill9Stats struct {
	variants, methods, rkPhase                  map[string]int
	written, verified, backingVerified          int64
	verifyRuns, backingRuns, flushes, detaches  int
	checks, chained, fioDoneFirst, modeSwitches int
	overDirty, claimed                          int
	rkTotal, rkBefore, rkOpen, rkStuck          int
	exemptBlocks, exemptRuns                    int
	ready, recovery                             []float64
	fails                                       []string
}

func newKill9Stats() kill9Stats {
	return kill9Stats{variants: map[string]int{}, methods: map[string]int{}, rkPhase: map[string]int{}}
}

// summary logs the figures of the run.
func (k *kill9) summary(variant string) {
	s := &k.st
	line := func(name, format string, a ...any) { k.t.Logf("  %-28s %s", name, fmt.Sprintf(format, a...)) }
	k.t.Logf("=== kill -9 loop summary (seed %d, variant %s, backing %d MiB, cache %d MiB) ===", k.e.seed, variant, k.size>>20, k.cacheSize>>20)
	line("iterations:", "%d of %d", min(k.it, k.n), k.n)
	line("variants:", "%s", counts(s.variants))
	line("kill methods:", "%s (fio done before the kill: %d)", counts(s.methods), s.fioDoneFirst)
	line("kills during startup:", "%d (%d before the ready line, %d of them before the cache was open; %d left an unkillable daemon)", s.rkTotal, s.rkBefore, s.rkOpen, s.rkStuck)
	line("  startup kill points:", "%s", counts(s.rkPhase))
	line("live mode switches:", "%d (runs written around dirty blocks: %d, blocks claimed from write-back: %d)", s.modeSwitches, s.overDirty, s.claimed)
	line("writes acknowledged:", "%s (%d bytes)", human(s.written), s.written)
	line("writes verified via wbcache:", "%s (%d 4 KiB blocks, %d fio verify runs)", human(s.verified), s.verified/4096, s.verifyRuns)
	line("verified on backing alone:", "%s (%d runs: %d after flush, %d after detach)", human(s.backingVerified), s.backingRuns, s.flushes, s.detaches)
	line("wbcache check runs:", "%d (crashes chained without clean stop: %d)", s.checks, s.chained)
	line("unacked blocks fio flagged:", "%d in %d verify runs (writes fio never saw succeed: in flight at the kill)", s.exemptBlocks, s.exemptRuns)
	line("failures:", "%d", len(s.fails))
	line("time to ready after crash:", "%s", percentiles(s.ready))
	line("recovery_seconds (status):", "%s", percentiles(s.recovery))
	for _, f := range s.fails {
		k.t.Logf("  - %s", f)
	}
}

// counts is "a 2  b 3" in key order.
func counts(m map[string]int) string {
	keys := make([]string, 0, len(m))
	for key := range m {
		keys = append(keys, key)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, key := range keys {
		fmt.Fprintf(&b, "%s %d  ", key, m[key])
	}
	return strings.TrimSpace(b.String())
}

// percentiles is "p50 Xs  p99 Ys  max Zs  (n=N)" (nearest rank).
func percentiles(v []float64) string {
	if len(v) == 0 {
		return "n/a"
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	at := func(p float64) float64 {
		i := int(p/100*float64(len(s))+0.999999) - 1
		return s[max(0, min(i, len(s)-1))]
	}
	return fmt.Sprintf("p50 %.4gs  p99 %.4gs  max %.4gs  (n=%d)", at(50), at(99), s[len(s)-1], len(s))
}

// human is a byte count in B, KiB, MiB, GiB or TiB.
func human(b int64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB"}
	f, i := float64(b), 0
	for f >= 1024 && i < len(units)-1 {
		f /= 1024
		i++
	}
	if i == 0 {
		return fmt.Sprintf("%d B", b)
	}
	return fmt.Sprintf("%.1f %s", f, units[i])
}
