package main

import (
	"bytes"
	"flag"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/wbcache/wbcache/layout"
)

// TestHelpRangesMatchValidation: every numeric range the help of 'set'
// and 'mount' states for a setting ("(1-64)", "max 255")
// is the range the setting's validation accepts: its ends are accepted
// and one past either end is refused.
func TestHelpRangesMatchValidation(t *testing.T) {
	var set, mount bytes.Buffer
	require.ErrorIs(t, runSet([]string{"--help"}, &set), flag.ErrHelp)
	require.ErrorIs(t, runMount([]string{"--help"}, &mount), flag.ErrHelp)
	span := regexp.MustCompile(`\((\d+)-(\d+)[,)]`)
	max := regexp.MustCompile(`(?:^|[ (])(\d+) or \d+ = [^,]*, max (\d+)\)`)
	checked := 0
	for _, line := range strings.Split(set.String(), "\n") {
		f := strings.Fields(line)
		if len(f) < 3 || settingByKey(f[0]) == nil {
			continue
		}
		key := f[0]
		var lo, hi int
		if m := span.FindStringSubmatch(line); m != nil {
			lo, hi = atoi(t, m[1]), atoi(t, m[2])
		} else if m := max.FindStringSubmatch(line); m != nil {
			lo, hi = atoi(t, m[1]), atoi(t, m[2])
		} else {
			continue
		}
		require.Contains(t, mount.String(), "--"+key, "mount offers %s", key)
		require.Contains(t, mount.String(), line[strings.Index(line, f[2]):], "mount's help states %s's range as set's does", key)
		for _, ok := range []int{lo, hi} {
			_, err := applySettings(layout.Settings{}, withPair(key, ok))
			require.NoError(t, err, "help says %s=%d is accepted", key, ok)
		}
		for _, bad := range []int{lo - 1, hi + 1} {
			_, err := applySettings(layout.Settings{}, withPair(key, bad))
			require.Error(t, err, "help says %s=%d is refused", key, bad)
		}
		checked++
	}
	require.Equal(t, 4, checked, "workers, promote-after and the two watermarks have stated ranges")
}

// withPair sets key to v, and a watermark's partner to the end that
// leaves v's own range to be tested (low below high).
func withPair(key string, v int) []kv {
	switch key {
	case "low-watermark":
		return []kv{{"high-watermark", "100"}, {key, strconv.Itoa(v)}}
	case "high-watermark":
		return []kv{{"low-watermark", "0"}, {key, strconv.Itoa(v)}}
	}
	return []kv{{key, strconv.Itoa(v)}}
}

func atoi(t *testing.T, s string) int {
	n, err := strconv.Atoi(s)
	require.NoError(t, err)
	return n
}
