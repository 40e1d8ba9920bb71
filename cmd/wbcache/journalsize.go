package main

import (
	"errors"
	"fmt"
	"sort"

	"github.com/wbcache/wbcache/layout"
)

// The range of --journal: the smallest ring the format accepts, and the
// default of the largest caches (layout.DefaultJournalBlocks). A larger
// journal would only lengthen the replay after a crash.
const (
	minJournalBytes = layout.MinJournalBlocks * layout.BlockSize
	maxJournalBytes = 128 << 20
)

// journalUsage is the help of --journal; TestJournalHelpMatchesValidation
// reads the range back from it.
var journalUsage = fmt.Sprintf("metadata journal `SIZE`, %s to %s (default: 1/256 of the cache, or 1/64 up to 8M when that is more, between 1M and 128M)",
	formatSizeExact(minJournalBytes), formatSizeExact(maxJournalBytes))

// checkJournal validates the value of --journal and returns it in blocks.
func checkJournal(cmd string, n int64) (uint64, error) {
	if n%layout.BlockSize != 0 || n < minJournalBytes || n > maxJournalBytes {
		return 0, usagef(cmd, "--journal %s: want a multiple of 4K from %s to %s",
			formatSizeExact(n), formatSizeExact(minJournalBytes), formatSizeExact(maxJournalBytes))
	}
	return uint64(n / layout.BlockSize), nil
}

// errSmallData: the cache leaves too little room for data slots to be
// useful.
var errSmallData = errors.New("too small to be useful")

// usefulLayout reports whether a cache of cacheBytes with a journal of
// journalBlocks (0: the default for the size) is worth formatting: it
// holds at least as many data slots as journal blocks.
func usefulLayout(cacheBytes int64, journalBlocks uint64) bool {
	g, err := layout.ComputeGeometry(cacheBytes, journalBlocks)
	return err == nil && g.SlotCount >= g.JournalBlocks
}

// checkDataArea refuses a cache whose data area would be smaller than its
// journal, saying which flag to change. journalBlocks is 0 when --journal
// was not given; creating says whether --cache-size creates the file.
func checkDataArea(cacheBytes int64, journalBlocks uint64, creating bool) error {
	if usefulLayout(cacheBytes, journalBlocks) {
		return nil
	}
	jb := journalBlocks
	if jb == 0 {
		jb = layout.DefaultJournalBlocks(cacheBytes)
	}
	what := fmt.Sprintf("a cache of %s with a journal of %s", formatSize(cacheBytes), formatSize(int64(jb)*layout.BlockSize))
	if g, err := layout.ComputeGeometry(cacheBytes, journalBlocks); err == nil {
		what += fmt.Sprintf(" leaves %s for data", formatSize(int64(g.SlotCount)*layout.BlockSize))
	} else {
		what += " leaves no room for data"
	}
	larger := "a larger cache device"
	if creating {
		larger = "a larger --cache-size"
	}
	larger += " (at least " + formatSizeExact(minUsefulCache(journalBlocks)) + ")"
	if journalBlocks > layout.MinJournalBlocks {
		if most := maxUsefulJournal(cacheBytes); most > 0 {
			return fmt.Errorf("%s: %w: give a smaller --journal (at most %s) or %s",
				what, errSmallData, formatSizeExact(most), larger)
		}
	}
	return fmt.Errorf("%s: %w: give %s", what, errSmallData, larger)
}

// minUsefulCache is the smallest cache size (whole MiB above 1 MiB) that
// usefulLayout accepts with journalBlocks.
func minUsefulCache(journalBlocks uint64) int64 {
	const step = 1 << 20
	n := sort.Search(1<<30, func(i int) bool { return usefulLayout(int64(i)*step, journalBlocks) })
	return int64(n) * step
}

// maxUsefulJournal is the largest journal in the --journal range (whole
// MiB from 1 MiB up) that usefulLayout accepts for cacheBytes, 0 if none.
func maxUsefulJournal(cacheBytes int64) int64 {
	lo, hi := uint64(layout.MinJournalBlocks), uint64(maxJournalBytes/layout.BlockSize)
	if !usefulLayout(cacheBytes, lo) {
		return 0
	}
	n := sort.Search(int(hi-lo+1), func(i int) bool { return !usefulLayout(cacheBytes, lo+uint64(i)) })
	most := int64(lo+uint64(n)-1) * layout.BlockSize
	if most >= 1<<20 {
		most &^= 1<<20 - 1 // whole MiB read better
	}
	return most
}
