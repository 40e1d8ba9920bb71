package main

import (
	"bytes"
	"errors"
	"flag"
	"os"
	"regexp"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/wbcache/wbcache/layout"
)

// journalRange finds "SIZE, MIN to MAX (default: ... between DMIN and
// DMAX)" in text and parses the four sizes.
func journalRange(t *testing.T, text string) (lo, hi, dlo, dhi int64) {
	t.Helper()
	re := regexp.MustCompile(`(?s)journal[^,]*,\s+(\S+)\s+to\s+(\S+)\s+\(default:.*?between\s+(\S+)\s+and\s+(\S+?)\)`)
	m := re.FindStringSubmatch(text)
	require.NotNil(t, m, "no --journal range in:\n%s", text)
	var vals [4]int64
	for i, s := range m[1:] {
		n, err := parseSize(s)
		require.NoError(t, err, "size %q", s)
		vals[i] = n
	}
	return vals[0], vals[1], vals[2], vals[3]
}

// TestJournalHelpMatchesValidation: the range that 'format --help' and the
// README state for --journal is the range the validation accepts, and the
// default range they state is the one layout picks.
func TestJournalHelpMatchesValidation(t *testing.T) {
	var help bytes.Buffer
	require.ErrorIs(t, runFormat([]string{"--help"}, &help), flag.ErrHelp)
	readme, err := os.ReadFile("../../README.md")
	require.NoError(t, err)
	for _, src := range []struct{ name, text string }{{"help", help.String()}, {"README", string(readme)}} {
		lo, hi, dlo, dhi := journalRange(t, src.text)
		for _, ok := range []int64{lo, hi, lo + layout.BlockSize, hi - layout.BlockSize} {
			_, err := checkJournal("format", ok)
			require.NoError(t, err, "%s says %d is accepted", src.name, ok)
		}
		for _, bad := range []int64{lo - layout.BlockSize, hi + layout.BlockSize, lo + 1, 0} {
			_, err := checkJournal("format", bad)
			require.Error(t, err, "%s says %d is refused", src.name, bad)
		}
		require.Equal(t, uint64(dlo), layout.DefaultJournalBlocks(1<<20)*layout.BlockSize, "%s: smallest default", src.name)
		require.Equal(t, uint64(dhi), layout.DefaultJournalBlocks(1<<50)*layout.BlockSize, "%s: largest default", src.name)
		require.LessOrEqual(t, dhi, hi, "%s: the default must be accepted when given", src.name)
	}
}

// TestSmallDataArea: a data area smaller than the journal is refused, and
// the advice names the flag to change.
func TestSmallDataArea(t *testing.T) {
	for _, tc := range []struct {
		cache   int64
		journal uint64 // blocks; 0 = not given
		create  bool
		want    []string
		notWant string
	}{
		// --journal 30M on 32M: leaves 2 MiB of data.
		{32 << 20, 30 << 8, true, []string{"leaves 2.0 MiB for data", "smaller --journal (at most 15M)", "larger --cache-size (at least 61M)"}, ""},
		// The default journal: only a larger cache helps.
		{64 << 10, 0, true, []string{"no room for data", "larger --cache-size (at least 3M)"}, "--journal"},
		// The minimum journal given: a smaller one is impossible.
		{96 << 10, layout.MinJournalBlocks, false, []string{"larger cache device"}, "--journal"},
	} {
		err := checkDataArea(tc.cache, tc.journal, tc.create)
		require.True(t, errors.Is(err, errSmallData), "%d/%d: %v", tc.cache, tc.journal, err)
		for _, w := range tc.want {
			require.Contains(t, err.Error(), w)
		}
		if tc.notWant != "" {
			require.NotContains(t, err.Error(), tc.notWant)
		}
	}
	// The sizes the advice gives do work.
	require.NoError(t, checkDataArea(61<<20, 30<<8, true))
	require.NoError(t, checkDataArea(32<<20, 15<<8, true))
	require.NoError(t, checkDataArea(3<<20, 0, true))
	require.NoError(t, checkDataArea(16<<20, 64, true))
}

// TestOptionErrorsUseTwoDashes: errors name options as the help does.
func TestOptionErrorsUseTwoDashes(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--cache", "c", "--backing", "b", "--cache-size", "12Q"}, `--cache-size "12Q": invalid size`},
		{[]string{"-bogus"}, "unknown option --bogus"},
		{[]string{"--cache"}, "option --cache needs a value"},
		{[]string{"--force=maybe"}, "--force=maybe: want true or false"},
	} {
		err := runFormat(tc.args, &bytes.Buffer{})
		var ue *usageError
		require.True(t, errors.As(err, &ue), "%v: %v", tc.args, err)
		require.Contains(t, err.Error(), tc.want)
		require.NotRegexp(t, `(^|\s)-[a-z]`, err.Error(), "%v", tc.args)
	}
}
