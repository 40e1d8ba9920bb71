package main

import (
	"errors"
	"fmt"
	"io"

	"github.com/wbcache/wbcache/blockcache"
	"github.com/wbcache/wbcache/device"
)

const rescueAbout = `
Offline, for a cache that mount and detach refuse (superblocks lost,
checkpoint or journal damaged): writes every dirty block whose checksum
verifies back to the backing device, syncs it, and lists the blocks it
could not save. It never writes to the cache device.

It needs no superblock. Without one it finds the layout from a damaged
superblock copy, or from the checkpoint that format writes at block 2
(with --journal when the journal size cannot be told from what the
checkpoint and the journal show), uses the newest valid version of each
checkpoint page, and replays the journal from its oldest unbroken block
up to the first damaged one. A dirty block whose newest version fails its
checksum is listed; an older version that verifies is written instead.

When no superblock survives, rescue cannot check that --backing is the
device the cache was formatted for: it then writes only with
--unverified-backing (look at --dry-run first).

Exit status: 0 every dirty block written back, 3 some could not be saved
(listed), 1 rescue could not run.`

func runRescue(args []string, out io.Writer) error {
	f := newFlags("rescue", "wbcache rescue --cache PATH --backing PATH [--dry-run] [--journal SIZE] [--unverified-backing]", rescueAbout, out)
	cachePath := f.String("cache", "", "cache device `PATH`")
	backingPath := f.String("backing", "", "backing device `PATH` the blocks are written to")
	dryRun := f.Bool("dry-run", false, "verify and report, write nothing")
	var journal sizeFlag
	f.Var(&journal, "journal", "journal `SIZE` given to format (only needed when rescue cannot tell it)")
	unverified := f.Bool("unverified-backing", false, "write even when no superblock survives to verify --backing")
	_, err := f.parseDevices(args, cachePath, backingPath)
	if err != nil {
		return err
	}
	opts := blockcache.RescueOptions{DryRun: *dryRun, UnverifiedBacking: *unverified}
	if opts.JournalBlocks, err = journalFlag("rescue", f, journal); err != nil {
		return err
	}
	ssd, hdd, err := openRescue(*cachePath, *backingPath, *dryRun)
	if err != nil {
		return err
	}
	defer ssd.Close()
	defer hdd.Close()
	rep, err := blockcache.Rescue(ssd, hdd, opts)
	if err != nil {
		return rescueError(*cachePath, err)
	}
	fmt.Fprint(out, rep.String())
	if len(rep.Unverifiable) > 0 {
		return &codeError{code: exitProblems, err: fmt.Errorf("rescue could not save %d dirty blocks at their newest version (listed above)", len(rep.Unverifiable))}
	}
	if !*dryRun {
		fmt.Fprintf(out, "%s now holds every dirty block the cache held. %s is unchanged.\n", *backingPath, *cachePath)
	}
	return nil
}

// openRescue opens the cache device read-only and the backing device for
// writing (read-only for a dry run), both locked.
func openRescue(cachePath, backingPath string, dryRun bool) (*device.File, *device.File, error) {
	const inUse = "unmount first (stop its 'wbcache mount'), then rescue"
	ssd, err := device.Open(cachePath, device.Options{Exclusive: true, ReadOnly: true})
	if err != nil {
		return nil, nil, deviceError("cache", cachePath, err, inUse)
	}
	hdd, err := device.Open(backingPath, device.Options{Exclusive: true, Direct: true, ReadOnly: dryRun})
	if err != nil {
		ssd.Close()
		return nil, nil, deviceError("backing", backingPath, err, inUse)
	}
	return ssd, hdd, nil
}

// rescueError names the cache in blockcache.Rescue errors and says what
// to type about them.
func rescueError(cachePath string, err error) error {
	switch {
	case errors.Is(err, blockcache.ErrBackingUnverified):
		return fmt.Errorf("%w.\n  Make sure it is, look at what would be written with --dry-run, then run again with --unverified-backing", err)
	case errors.Is(err, blockcache.ErrLayoutUnknown):
		return fmt.Errorf("rescue of cache %s: %w.\n  Give --journal, the size given to 'wbcache format' for this cache", cachePath, err)
	}
	return fmt.Errorf("rescue of cache %s: %w", cachePath, err)
}
