package main

import (
	"runtime"
	"runtime/debug"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestVersionText(t *testing.T) {
	info := &debug.BuildInfo{GoVersion: "go1.99", Main: debug.Module{Path: "github.com/wbcache/wbcache", Version: "v1.2.3"},
		Settings: []debug.BuildSetting{{Key: "vcs.revision", Value: "abc123"}, {Key: "vcs.time", Value: "2026-12-04T10:00:00Z"}, {Key: "vcs.modified", Value: "true"}}}
	platform := runtime.GOOS + "/" + runtime.GOARCH
	require.Equal(t, "wbcache v1.2.3\n  module:   github.com/wbcache/wbcache\n  revision: abc123 (2026-12-04T10:00:00Z), modified\n  go:       go1.99 "+platform+"\n",
		versionText(info))

	info = &debug.BuildInfo{GoVersion: "go1.99", Main: debug.Module{Path: "github.com/wbcache/wbcache"}}
	require.Equal(t, "wbcache (devel)\n  module:   github.com/wbcache/wbcache\n  go:       go1.99 "+platform+"\n", versionText(info))
	require.Contains(t, versionText(nil), "unknown version")
}

// TestVersionCommand: the built binary reports its module and Go version.
func TestVersionCommand(t *testing.T) {
	for _, args := range [][]string{{"version"}, {"--version"}} {
		r := wantCode(t, 0, args...)
		require.Regexp(t, `^wbcache \S+\n  module:   github.com/wbcache/wbcache\n`, r.stdout)
		require.Contains(t, r.stdout, "  go:       "+runtime.Version())
	}
}
