package main

import (
	"errors"
	"fmt"

	"github.com/wbcache/wbcache/blockcache"
	"github.com/wbcache/wbcache/fuse"
	"github.com/wbcache/wbcache/layout"
)

// The library packages say what went wrong; the functions here add what
// to type about it.

// openCacheError adds advice to blockcache.Open errors.
func openCacheError(cachePath string, err error) error {
	var ve *layout.VersionError
	switch {
	case errors.Is(err, blockcache.ErrSuperblocksLost):
		return fmt.Errorf("cache %s: %w.\n  Write every block that can be verified back to the backing device with\n"+
			"  'wbcache rescue --cache %s --backing BACKING' (try --dry-run first); do not format it before that", cachePath, err, cachePath)
	case errors.Is(err, layout.ErrNotFormatted):
		return fmt.Errorf("%s: %w.\n  Format it first: wbcache format --cache %s --backing BACKING", cachePath, err, cachePath)
	case errors.Is(err, blockcache.ErrWrongBacking):
		return fmt.Errorf("cache %s: %w.\n  Give the --backing it was formatted with; to cache another device, write this cache back "+
			"with 'wbcache detach --cache %s --backing ITS-BACKING', then format it again", cachePath, err, cachePath)
	case errors.As(err, &ve) && ve.Newer():
		return fmt.Errorf("cache %s cannot be opened: %w.\n  Use the newer wbcache that formatted it or last opened it", cachePath, err)
	case errors.As(err, &ve):
		return fmt.Errorf("cache %s cannot be opened: %w.\n  Write its dirty blocks back with 'wbcache detach' of the wbcache that "+
			"formatted it, then format it again with this one", cachePath, err)
	case errors.Is(err, layout.ErrCorrupt), errors.Is(err, layout.ErrGeometry):
		return fmt.Errorf("cache %s cannot be opened: %w (run 'wbcache check --cache %s' for details)", cachePath, err, cachePath)
	case noSpace(err):
		return fmt.Errorf("cache %s cannot be used: %w.\n  Free space on the filesystem holding it, then run this again", cachePath, err)
	}
	return fmt.Errorf("opening cache %s: %w", cachePath, err)
}

// checkAdvice says what to do about the problems a check report lists
// ("" when the report has no advice to go with them).
func checkAdvice(rep *blockcache.CheckReport, cachePath string) string {
	if rep.NoSuperblock {
		return fmt.Sprintf("Write every block that can be verified back to the backing device with\n"+
			"  'wbcache rescue --cache %s --backing BACKING' (try --dry-run first); do not format it before that", cachePath)
	}
	if !rep.JournalDamaged {
		return ""
	}
	return fmt.Sprintf("'wbcache mount' and 'wbcache detach' refuse this cache, so none of its blocks are served.\n"+
		"  'wbcache rescue --cache %[1]s --backing BACKING' writes back every block the checkpoint and the journal\n"+
		"  before the damage name whose checksum verifies, and lists those it cannot save.\n"+
		"  Restore the writes it lost from a backup, or give the cache up with\n"+
		"  'wbcache format --force --cache %[1]s --backing BACKING', which loses every dirty block it holds\n"+
		"  (the backing device keeps the versions already written back)", cachePath)
}

// mountError adds advice to fuse.Mount errors.
func mountError(mp string, err error) error {
	switch {
	case errors.Is(err, fuse.ErrRingStuck):
		return fmt.Errorf("%w.\n  Mount with --fuse-uring off to serve through /dev/fuse", err)
	case errors.Is(err, fuse.ErrRingUnavailable):
		return fmt.Errorf("%w.\n  Mount with --fuse-uring auto (io_uring where it works, /dev/fuse otherwise) or off", err)
	case errors.Is(err, fuse.ErrDevBatch):
		return fmt.Errorf("%w.\n  Mount with --fuse-batch off to read /dev/fuse one request per system call", err)
	case errors.Is(err, fuse.ErrDeadMount):
		return fmt.Errorf("%w.\n  Unmount it by hand (umount -l %s) and retry", err, mp)
	}
	return fmt.Errorf("%w (is /dev/fuse available and are you root?)", err)
}
