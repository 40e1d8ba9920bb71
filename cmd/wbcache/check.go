package main

import (
	"fmt"
	"io"

	"github.com/wbcache/wbcache/blockcache"
)

const checkAbout = `
Checks an unmounted cache device offline, without writing to it: both
superblocks, the current checkpoint, the journal, the checksum of every
cached block and, with --backing, that the backing device is the one the
cache was formatted for. Refuses while a daemon has the cache open.

Journal damage that later journal blocks prove a completed sync covered
is reported naming the block (its LSN, ring position and byte offset):
mount refuses such a cache rather than serve stale blocks. What was
written since the last sync before a crash may be torn; that is not a
problem, and recovery keeps everything before the tear.

With --backing it also checks that the backing device is the one the
cache was formatted for: by its identity (a loop device by the file
behind it), naming both devices when they differ.

Degraded redundancy is a warning, not a problem: one superblock copy, or
the previous checkpoint copy that a torn superblock write falls back on,
is damaged. The cache is usable; the next mount repairs it.

A device whose superblocks are both gone but whose checkpoint remains is
reported as such: 'wbcache rescue' can still write its blocks back.

Exit status: 0 consistent, 3 problems found (listed), 4 consistent but
with degraded redundancy, 1 the check could not run (e.g. a read error).`

func runCheck(args []string, out io.Writer) error {
	f := newFlags("check", "wbcache check --cache PATH [--backing PATH]", checkAbout, out)
	cachePath := f.String("cache", "", "cache device `PATH`")
	backingPath := f.String("backing", "", "backing device `PATH` (optional: also check it matches)")
	_, err := f.parseArgs(args)
	if err != nil {
		return err
	}
	if *cachePath == "" {
		return usagef("check", "--cache is required")
	}
	devs, err := openDevices(*cachePath, *backingPath, openCheck, "unmount first (stop its 'wbcache mount'), then check")
	if err != nil {
		return err
	}
	defer devs.close()
	var rep *blockcache.CheckReport
	if devs.hdd != nil {
		rep, err = blockcache.Check(devs.ssd, devs.hdd)
	} else {
		rep, err = blockcache.Check(devs.ssd, nil)
	}
	if err != nil {
		return fmt.Errorf("check could not run: %w", err)
	}
	fmt.Fprint(out, rep.String())
	if !rep.OK() {
		err := fmt.Errorf("check found %d problem(s) in %s", len(rep.Problems), *cachePath)
		if advice := checkAdvice(rep, *cachePath); advice != "" {
			err = fmt.Errorf("%w.\n  %s", err, advice)
		}
		return &codeError{code: exitProblems, err: err}
	}
	if len(rep.Degraded) > 0 {
		return &codeError{code: exitDegraded, err: fmt.Errorf("%s is consistent, but its redundancy is degraded (%d warning(s)): mount it to repair", *cachePath, len(rep.Degraded))}
	}
	return nil
}
