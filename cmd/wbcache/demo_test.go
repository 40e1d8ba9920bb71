package main

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// TestDemo runs `wbcache demo` end to end.
func TestDemo(t *testing.T) {
	needFUSE(t)
	r := wantCode(t, 0, "demo", "--duration", "2s", "--seed", "42")
	require.Contains(t, r.stdout, "PASS")
	require.Contains(t, r.stdout, "all 256.0 MiB match the model")
	require.Contains(t, r.stdout, "consistent")
}
