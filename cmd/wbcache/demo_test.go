package main

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestDemo runs `wbcache demo` end to end, with its kill -9 of the
// daemon in the middle of the workload.
func TestDemo(t *testing.T) {
	needFUSE(t)
	r := wantCode(t, 0, "demo", "--duration", "2s", "--seed", "42")
	require.Contains(t, r.stdout, "PASS")
	require.Regexp(t, `killed pid \d+ with SIGKILL: \d+ writes .* acknowledged before`, r.stdout)
	require.Contains(t, r.stdout, "every acknowledged write survived: all 256.0 MiB read through the mount match the model")
	require.Contains(t, r.stdout, "all 256.0 MiB match the model")
	require.Contains(t, r.stdout, "consistent")
}

// TestSettleInFlight: a block under a write that never returned may read
// as before or after it, and the model follows; a torn block is reported.
func TestSettleInFlight(t *testing.T) {
	const bs = 4096
	model := make([]byte, 4*bs)
	for i := range model {
		model[i] = byte(i / bs) // block k holds k
	}
	disk := make([]byte, len(model))
	copy(disk, model)
	// Written across blocks 1 and 2 (unaligned): block 1 landed, block 2 did not.
	w := &workload{}
	data := make([]byte, bs)
	for i := range data {
		data[i] = 0xee
	}
	w.unacknowledged(bs+100, data)
	copy(disk[bs+100:2*bs], data)
	path := filepath.Join(t.TempDir(), "disk")
	require.NoError(t, os.WriteFile(path, disk, 0o600))
	m := append([]byte(nil), model...)
	changed, err := w.settleInFlight(path, m)
	require.NoError(t, err)
	require.Equal(t, 1, changed)
	require.Equal(t, disk, m, "the model takes the landed block")

	// A torn block: half of the write's bytes in block 2.
	copy(disk[2*bs:2*bs+50], data)
	require.NoError(t, os.WriteFile(path, disk, 0o600))
	_, err = w.settleInFlight(path, append([]byte(nil), model...))
	require.ErrorContains(t, err, "MISMATCH: the block at offset 8192")
}
