package main

import (
	"fmt"
	"io"
	"time"

	"github.com/wbcache/wbcache/flush"
)

const flushAbout = `
Writes every dirty block of the cache mounted on MOUNTPOINT back to the
backing device and waits until nothing is dirty (new writes arriving
meanwhile are written back too). Exits 0 once nothing is dirty; the
backing device then holds every block written so far. Interrupting it
stops waiting; write-back goes on under the normal policy.

Progress shows the rate of the last 10 seconds ("now"); the summary at
the end the average over the flush. While write-back fails (the backing
device returns errors) it keeps retrying and shows the last error.
If a sync of the backing device has failed since the daemon started,
flush exits 1 even once nothing is dirty: data written around the cache
before that sync may be lost ('wbcache status' says more).`

func runFlush(args []string, out io.Writer) error {
	f := newFlags("flush", "wbcache flush MOUNTPOINT", flushAbout, out)
	pos, err := f.parseArgs(args, "MOUNTPOINT")
	if err != nil {
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
	fmt.Fprintf(out, "flushed: %s\n", drainSummary(final))
	if final.BackingSyncFailed != "" {
		return fmt.Errorf("every dirty block was written back, but %s", backingSyncAdvice(final.BackingSyncFailed))
	}
	return nil
}

// progressText is a progress line of a drain, as flush and mode show it.
// The rate is the destager's over the last 10 s.
func progressText(l progressLine) string {
	text := fmt.Sprintf("writing back: %d dirty blocks (%s) left, %s written back, now %s/s",
		l.DirtyBlocks, formatSize(l.DirtyBytes), formatSize(int64(l.DestagedBytes)), formatSize(int64(l.Rate)))
	if l.LastError != "" {
		text += "; FAILING, retrying: " + l.LastError
	}
	return text
}

// drainSummary sums up a finished drain: bytes, time, average rate.
func drainSummary(l progressLine) string {
	avg := 0.0
	if l.Elapsed > 0 {
		avg = float64(l.DestagedBytes) / l.Elapsed
	}
	return fmt.Sprintf("%s written back in %.1fs (average %s/s); %d blocks dirty now",
		formatSize(int64(l.DestagedBytes)), l.Elapsed, formatSize(int64(avg)), l.DirtyBlocks)
}

// backingSyncAdvice explains a sticky backing sync failure (err is its
// text) and how to clear it.
func backingSyncAdvice(err string) string {
	return "a sync of the backing device failed " + err + ".\n  Every fsync fails until the daemon is restarted (fsyncgate): " +
		"check the backing device, then stop the daemon and mount again"
}

// noteFaults adds to a progress line what the operator must see while a
// drain runs: the last write-back error while write-back is failing, and a
// sticky backing sync failure.
func (d *daemon) noteFaults(l *progressLine, p flush.Progress) {
	if p.Backoff > 0 {
		l.LastError = p.LastError
	}
	if err, at := d.cache.BackingSyncFailure(); err != nil {
		l.BackingSyncFailed = fmt.Sprintf("at %s: %v", at.Format(time.RFC3339), err)
	}
}
