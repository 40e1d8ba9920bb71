package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/url"

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
progress as 'wbcache flush' does.`

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
		fmt.Fprintf(out, "written back %s in %.1fs; %d blocks dirty now\n", formatSize(int64(final.DestagedBytes)), final.Elapsed, final.DirtyBlocks)
	}
	if final.Settings != nil {
		fmt.Fprintf(out, "in force: %s\n", final.Settings)
	}
	return nil
}
