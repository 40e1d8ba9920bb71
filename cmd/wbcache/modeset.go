package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"sync"
	"time"

	"github.com/wbcache/wbcache/blockcache"
	"github.com/wbcache/wbcache/layout"
)

const modeAbout = `
Without MODE, prints the mode of the cache mounted on MOUNTPOINT.

With MODE, switches the cache to it and saves it in the cache's
superblock (a remount keeps it):

  writeback     writes go to the cache and are written back later (default)
  writethrough  writes go to the backing device and a clean copy to the cache
  writearound   writes go to the backing device only; reads are cached
  none          pass-through: nothing new enters the cache

Leaving writeback writes back every dirty block before returning, showing
progress as 'wbcache flush' does. The mode is saved before that drain: if
the daemon stops or is killed during it, the next mount resumes it.`

func runMode(args []string, out io.Writer) error {
	f := newFlags("mode", "wbcache mode MOUNTPOINT [MODE]", modeAbout, out)
	pos, err := f.parse(args)
	if err != nil {
		return err
	}
	if len(pos) == 1 {
		return printMode(pos[0], out)
	}
	if err := f.wantArgs(pos, "MOUNTPOINT", "MODE"); err != nil {
		return err
	}
	if err := applyMode(&layout.Settings{}, pos[1]); err != nil {
		return usagef("mode", "%v", err)
	}
	return changeSettings("mode", pos[0], "/mode?mode="+url.QueryEscape(pos[1]), nil, out)
}

// printMode prints the mode in force on mountpoint.
func printMode(mountpoint string, out io.Writer) error {
	raw, err := fetchStatus(mountpoint)
	if err != nil {
		return err
	}
	var s Status
	if err := json.Unmarshal(raw, &s); err != nil || s.Mode == "" {
		return fmt.Errorf("decoding the status of %s: no mode in it (%v)", mountpoint, err)
	}
	_, err = fmt.Fprintln(out, s.Mode)
	return err
}

const setAbout = `
Changes policy settings of the cache mounted on MOUNTPOINT. They take
effect at once and are saved in the
cache's superblock, so a remount keeps them. Keys:
`

func runSet(args []string, out io.Writer) error {
	about := setAbout
	for _, s := range settingKeys {
		about += fmt.Sprintf("  %-15s %-6s %s\n", s.key, s.arg, s.help)
	}
	about += "\nExample: wbcache set /mnt/wbc max-dirty-age=1m workers=8"
	f := newFlags("set", "wbcache set MOUNTPOINT KEY=VALUE...", about, out)
	pos, err := f.parse(args)
	if err != nil {
		return err
	}
	if len(pos) < 2 {
		return usagef("set", "want MOUNTPOINT and at least one KEY=VALUE")
	}
	changes, err := parseKV(pos[1:])
	if err != nil {
		return usagef("set", "%v", err)
	}
	// Check syntax locally for a quick usage error; the daemon validates
	// the combination with the settings in force.
	if err := checkSyntax(changes); err != nil {
		return usagef("set", "%v", err)
	}
	form := url.Values{}
	for _, c := range changes {
		form.Add(c.key, c.value)
	}
	return changeSettings("set", pos[0], "/set", form, out)
}

// changeSettings posts a settings change and shows drain progress.
func changeSettings(cmd, mountpoint, path string, form url.Values, out io.Writer) error {
	cl, err := dialControl(mountpoint)
	if err != nil {
		return err
	}
	pp := newProgressPrinter(out)
	announced := false
	final, err := cl.stream(cmd, path, form, func(l progressLine) {
		if l.Message != "" && !announced {
			pp.end()
			fmt.Fprintln(out, l.Message)
			announced = true
		}
		pp.show(l)
	})
	pp.end()
	if err != nil {
		return err
	}
	if final.Message != "" {
		fmt.Fprintln(out, final.Message)
	}
	if announced {
		fmt.Fprintf(out, "drained: %s\n", drainSummary(final))
	}
	if final.Settings != nil {
		fmt.Fprintf(out, "in force: %s\n", final.Settings)
	}
	return nil
}

// drainState is a drain the daemon runs on its own: the one it resumes at
// mount (resumeDrain). Its goroutine ends when the drain ends or the
// daemon stops; wait waits for it.
type drainState struct {
	mu   sync.Mutex
	why  string // "" when none runs
	done sync.WaitGroup
}

func (s *drainState) reason() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.why
}

func (s *drainState) set(why string) {
	s.mu.Lock()
	s.why = why
	s.mu.Unlock()
}

func (s *drainState) wait() { s.done.Wait() }

// resumeDrain resumes a drain that a stop interrupted. A mode switch away
// from writeback saves the new mode before it writes the dirty blocks
// back, so a cache found at mount in another mode with dirty blocks was
// stopped (or killed) in the middle of that drain, or before its last
// write-through blocks were synced. Its blocks are written back now, flat
// out, as the switch would have; status shows it under "drain".
func (d *daemon) resumeDrain() {
	mode, n := d.cache.Mode(), d.cache.DirtyCount()
	if mode == blockcache.ModeWriteback || n == 0 {
		return
	}
	dirty := formatSize(int64(n) * blockcache.BlockSize)
	why := fmt.Sprintf("mode %s with %s dirty at mount (a drain interrupted by a stop, or write-through blocks not yet synced): writing them back", mode, dirty)
	d.log.Warn(why, "dirty_blocks", n)
	d.drain.set(why)
	d.drain.done.Add(1)
	go func() {
		defer d.drain.done.Done()
		defer d.drain.set("")
		start := time.Now()
		if err := d.dest.FlushAll(d.ctx, nil); err != nil {
			level := slog.LevelWarn
			if d.ctx.Err() != nil {
				level = slog.LevelInfo // the daemon is stopping: the next mount resumes it
			}
			d.log.Log(context.Background(), level, "resumed drain ended early", "err", err, "dirty_blocks", d.cache.DirtyCount())
			return
		}
		d.log.Info("resumed drain done: nothing dirty", "mode", mode, "written_back", dirty, "took", time.Since(start).Round(time.Millisecond))
	}()
}

// stoppedMessage is the daemon's last log line after a clean stop that
// left dirty blocks in the cache.
func stoppedMessage(dirty int) string {
	if dirty == 0 {
		return "stopped cleanly: nothing dirty, the backing device holds every block"
	}
	return fmt.Sprintf("stopped cleanly: %s (%d blocks) still dirty, kept in the cache; "+
		"it is written back after the next mount (or by 'wbcache detach' offline)", formatSize(int64(dirty)*blockcache.BlockSize), dirty)
}
