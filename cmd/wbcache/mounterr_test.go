package main

import (
	"errors"
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/wbcache/wbcache/fuse"
)

// TestMountErrorAdvice: the fuse package says what broke, the command
// says what to type, and the cause stays testable with errors.Is.
func TestMountErrorAdvice(t *testing.T) {
	for _, c := range []struct {
		cause  error
		advice string
	}{
		{fuse.ErrRingStuck, "--fuse-uring off"},
		{fuse.ErrRingUnavailable, "--fuse-uring auto"},
		{fuse.ErrDevBatch, "--fuse-batch off"},
		{fuse.ErrDeadMount, "umount -l /mnt/x"},
		{errors.New("mount(2): permission denied"), "are you root?"},
	} {
		err := mountError("/mnt/x", fmt.Errorf("wbcache/fuse: mount /mnt/x: %w", c.cause))
		require.ErrorIs(t, err, c.cause)
		require.Contains(t, err.Error(), c.advice)
	}
}
