package main

import (
	"fmt"
	"io"
)

const flushAbout = `
Writes every dirty block of the cache mounted on MOUNTPOINT back to the
backing device and waits until nothing is dirty (new writes arriving
meanwhile are written back too). Exits 0 once nothing is dirty; the
backing device then holds every block written so far. Interrupting it
stops waiting; write-back goes on under the normal policy.`

func runFlush(args []string, out io.Writer) error {
	f := newFlags("flush", "wbcache flush MOUNTPOINT", flushAbout, out)
	pos, err := f.parse(args)
	if err != nil {
		return err
	}
	if err := f.wantArgs(pos, "MOUNTPOINT"); err != nil {
		return err
	}
	cl, err := dialControl(pos[0])
	if err != nil {
		return err
	}
	pp := newProgressPrinter(out)
	final, err := cl.stream("flush", "/flush", nil, pp.show)
	pp.end()
	if err != nil {
		return fmt.Errorf("flush: %w", err)
	}
	fmt.Fprintf(out, "flushed: %s written back in %.1fs; %d blocks dirty now\n",
		formatSize(int64(final.DestagedBytes)), final.Elapsed, final.DirtyBlocks)
	return nil
}
