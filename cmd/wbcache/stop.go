package main

import (
	"encoding/json"
	"fmt"
	"io"
)

const stopAbout = `
Asks the daemon serving MOUNTPOINT to stop, as SIGTERM does: it unmounts,
lets write-back runs in flight finish, writes a checkpoint and marks the
cache clean. stop waits until the daemon has closed the cache, saying what
it waits for, then reports how much dirty data stays in the cache. The
cache is persistent: the next mount serves that data and writes it back;
'wbcache flush MOUNTPOINT' before stopping, or 'wbcache detach' after,
writes it back now.

If MOUNTPOINT/disk is still in use (a loop device on it), the daemon
detaches the mount lazily and waits for the last user (losetup -d);
--force stops it anyway, and I/O still arriving on the disk then fails
with EIO. Interrupting stop only stops waiting: the daemon goes on
stopping.`

func runStop(args []string, out io.Writer) error {
	f := newFlags("stop", "wbcache stop [--force] MOUNTPOINT", stopAbout, out)
	force := f.Bool("force", false, "stop even while MOUNTPOINT/disk is in use (I/O still arriving then fails with EIO)")
	pos, err := f.parseArgs(args, "MOUNTPOINT")
	if err != nil {
		return err
	}
	cl, err := dialControl(pos[0])
	if err != nil {
		return err
	}
	raw, err := cl.get("/status")
	if err != nil {
		return err
	}
	var st Status
	if err := json.Unmarshal(raw, &st); err != nil {
		return fmt.Errorf("decoding status: %w", err)
	}
	fmt.Fprintf(out, "stopping the wbcache daemon serving %s (pid %d, cache %s, %s dirty)\n",
		cl.mountpoint, st.PID, st.Cache, formatSize(st.DirtyBytes))
	path := "/stop"
	if *force {
		path += "?force=1"
	}
	final, err := cl.stream("stop", path, nil, func(l progressLine) {
		fmt.Fprintf(out, "  %s\n", l.Message)
	})
	if err != nil {
		return fmt.Errorf("stopping the daemon serving %s: %w", cl.mountpoint, err)
	}
	fmt.Fprintf(out, "stopped in %.1fs; the cache was closed cleanly\n", final.Elapsed)
	if final.DirtyBlocks == 0 {
		fmt.Fprintf(out, "nothing dirty: the backing device %s holds every block\n", st.Backing)
		return nil
	}
	fmt.Fprintf(out, "%s (%d blocks) stay dirty in the cache %s, not yet on the backing device %s:\n"+
		"  the next 'wbcache mount' serves and writes them back; 'wbcache detach --cache %s --backing %s' writes them back offline\n",
		formatSize(final.DirtyBytes), final.DirtyBlocks, st.Cache, st.Backing, st.Cache, st.Backing)
	return nil
}
