package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/wbcache/wbcache/blockcache"
	"github.com/wbcache/wbcache/device"
	"github.com/wbcache/wbcache/layout"
)

// The case: a cache formatted for /dev/loopN on hdd.img, the loop
// device then re-attached to other.img. mount, check and detach refuse it,
// naming both files; other.img is not written.
func TestLoopBackingSwapped(t *testing.T) {
	if os.Geteuid() != 0 {
		skipLoudly(t, "needs root to attach loop devices")
	}
	if _, err := exec.LookPath("losetup"); err != nil {
		skipLoudly(t, "needs losetup")
	}
	dir := t.TempDir()
	hddImg, otherImg, cache := filepath.Join(dir, "hdd.img"), filepath.Join(dir, "other.img"), filepath.Join(dir, "cache.img")
	mnt := filepath.Join(dir, "mnt")
	require.NoError(t, os.Mkdir(mnt, 0o755))
	require.NoError(t, device.Create(hddImg, 16<<20))
	require.NoError(t, device.Create(otherImg, 16<<20))
	loop := attachLoop(t, testProcs(t), hddImg)
	wantCode(t, 0, "format", "--cache", cache, "--cache-size", "8M", "--backing", loop)
	wantCode(t, 0, "check", "--cache", cache, "--backing", loop)

	sh(t, "losetup", "-d", loop)
	sh(t, "losetup", "--direct-io=on", loop, otherImg)
	before := fileSum(t, otherImg)
	formatted := loop + " (loop device on " + hddImg + ")"
	now := loop + " (loop device on " + otherImg + ")"

	res := wantCode(t, 3, "check", "--cache", cache, "--backing", loop)
	require.Contains(t, res.stdout, "PROBLEM: backing device does not match the cache: the backing device "+now)
	require.Contains(t, res.stdout, "is not the one the cache was formatted for, "+formatted)
	for _, args := range [][]string{
		{"mount", "--cache", cache, "--backing", loop, mnt},
		{"detach", "--cache", cache, "--backing", loop},
	} {
		res := wantCode(t, 1, args...)
		require.Contains(t, res.stderr, "the backing device "+now, args[0])
		require.Contains(t, res.stderr, "formatted for, "+formatted, args[0])
	}
	require.Equal(t, before, fileSum(t, otherImg), "the wrong backing file was written")

	// A cache formatted by an earlier wbcache knew loop devices by number
	// and recorded no name: it still matches by that rule, with a note.
	ssd, err := device.Open(cache, device.Options{})
	require.NoError(t, err)
	hdd, err := device.Open(loop, device.Options{ReadOnly: true})
	require.NoError(t, err)
	sb, err := blockcache.ReadSuperblock(ssd)
	require.NoError(t, err)
	legacy, ok := device.LegacyIdentity(hdd)
	require.True(t, ok)
	sb.BackingIdentity, sb.BackingDescription = legacy, ""
	sb.Generation++
	buf := device.AlignedBuffer(layout.BlockSize)
	sb.Encode(buf)
	_, err = ssd.WriteAt(buf, layout.SuperblockOffset(sb.Copy()))
	require.NoError(t, err)
	require.NoError(t, ssd.Close())
	require.NoError(t, hdd.Close())
	res = wantCode(t, 0, "check", "--cache", cache, "--backing", loop)
	require.Contains(t, res.stdout, "note: the cache was formatted by an earlier wbcache, which knew a loop device by its device number only")
	require.True(t, strings.HasSuffix(res.stdout, "consistent\n"), res.stdout)
}
