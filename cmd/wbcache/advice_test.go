package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/wbcache/wbcache/blockcache"
	"github.com/wbcache/wbcache/device"
	"github.com/wbcache/wbcache/layout"
)

// TestOpenCacheErrorAdvice: each kind of refusal from blockcache.Open gets
// the advice that fits it, and keeps its sentinel for errors.Is.
func TestOpenCacheErrorAdvice(t *testing.T) {
	const path = "/ssd/c.img"
	for _, tc := range []struct {
		err    error
		advice []string
	}{
		{layout.ErrNotFormatted, []string{"wbcache format --cache /ssd/c.img --backing BACKING"}},
		{fmt.Errorf("%w: backing identity 01, the cache was formatted with 02", blockcache.ErrWrongBacking),
			[]string{"Give the --backing it was formatted with", "wbcache detach --cache /ssd/c.img --backing ITS-BACKING"}},
		{&layout.VersionError{Found: layout.FormatVersion + 1}, []string{"Use the newer wbcache"}},
		{&layout.VersionError{Found: layout.FormatVersion - 1}, []string{"'wbcache detach' of the wbcache that formatted it"}},
		{fmt.Errorf("checkpoint copy 1 is damaged: %w", layout.ErrCorrupt), []string{"wbcache check --cache /ssd/c.img"}},
		{fmt.Errorf("journal: %w", layout.ErrGeometry), []string{"wbcache check --cache /ssd/c.img"}},
		{fmt.Errorf("reserving: %w", syscall.ENOSPC), []string{"Free space on the filesystem holding it"}},
		{errors.New("read error"), []string{"opening cache /ssd/c.img: read error"}},
	} {
		got := openCacheError(path, tc.err)
		require.ErrorIs(t, got, tc.err)
		require.Contains(t, got.Error(), path)
		for _, a := range tc.advice {
			require.Contains(t, got.Error(), a, "%v", tc.err)
		}
	}
}

// TestOpenAdviceFromCommand: mount and detach refuse an unformatted cache
// and a wrong backing device, saying what to type.
func TestOpenAdviceFromCommand(t *testing.T) {
	dir := t.TempDir()
	backing, other, cache, blank := filepath.Join(dir, "backing.img"), filepath.Join(dir, "other.img"),
		filepath.Join(dir, "cache.img"), filepath.Join(dir, "blank.img")
	for _, p := range []string{backing, other, blank} {
		require.NoError(t, device.Create(p, 16<<20))
	}
	wantCode(t, 0, "format", "--cache", cache, "--cache-size", "8M", "--backing", backing)
	mnt := filepath.Join(dir, "mnt")
	require.NoError(t, os.Mkdir(mnt, 0o755))

	r := wantCode(t, 1, "detach", "--cache", blank, "--backing", backing)
	require.Contains(t, r.stderr, "not a wbcache cache device")
	require.Contains(t, r.stderr, "wbcache format --cache "+blank)
	r = wantCode(t, 1, "mount", "--cache", blank, "--backing", backing, mnt)
	require.Contains(t, r.stderr, "wbcache format --cache "+blank)

	r = wantCode(t, 1, "detach", "--cache", cache, "--backing", other)
	require.Contains(t, r.stderr, "backing device does not match the cache")
	require.Contains(t, r.stderr, "Give the --backing it was formatted with")
	r = wantCode(t, 1, "mount", "--cache", cache, "--backing", other, mnt)
	require.Contains(t, r.stderr, "Give the --backing it was formatted with")
}
