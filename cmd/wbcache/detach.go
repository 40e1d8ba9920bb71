package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/wbcache/wbcache/blockcache"
	"github.com/wbcache/wbcache/device"
	"github.com/wbcache/wbcache/flush"
	"github.com/wbcache/wbcache/layout"
)

const detachAbout = `
Offline (the cache must not be mounted): opens the cache, recovering it if
its last stop was not clean, writes every dirty block back to the backing
device, syncs it and closes the cache. Then it erases the cache's
superblocks, so the cache can never again serve blocks that the backing
device, used on its own from now on, may have changed.

Afterwards the backing device holds every block and is used without
wbcache. To cache it again, run 'wbcache format' (with --cache-size only
when creating a new cache file).`

func runDetach(args []string, out io.Writer) error {
	f := newFlags("detach", "wbcache detach --cache PATH --backing PATH", detachAbout, out)
	cachePath := f.String("cache", "", "cache device `PATH`")
	backingPath := f.String("backing", "", "backing device `PATH`")
	logLevel := f.String("log-level", "warn", "log `LEVEL`: debug, info, warn or error")
	_, err := f.parseDevices(args, cachePath, backingPath)
	if err != nil {
		return err
	}
	level, err := parseLevel(*logLevel)
	if err != nil {
		return usagef("detach", "%v", err)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	devs, err := openDevices(*cachePath, *backingPath, openServe, "unmount first (stop its 'wbcache mount'), then detach")
	if err != nil {
		return err
	}
	defer devs.close()
	// No prefill: the cache is about to be emptied, not written.
	c, err := blockcache.Open(devs.ssd, devs.hdd, blockcache.Options{Logger: log, NoPrefill: true})
	if err != nil {
		return openCacheError(*cachePath, err)
	}
	dirty := c.DirtyCount()
	fmt.Fprintf(out, "writing back %d dirty blocks (%s) from %s to %s\n", dirty, formatSize(int64(dirty)*blockcache.BlockSize), *cachePath, *backingPath)

	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer cancel()
	d := flush.New(c, flush.PolicyFromSettings(c.Settings()), log)
	setGapReads(d, *backingPath, log)
	d.Start()
	pp := newProgressPrinter(out)
	start := time.Now()
	base := d.Stats().DestagedBlocks
	ferr := d.FlushAll(ctx, func(p flush.Progress) {
		pp.show(progressLine{
			DirtyBlocks: p.Dirty, DirtyBytes: int64(p.Dirty) * blockcache.BlockSize,
			DestagedBytes: (p.DestagedBlocks - base) * blockcache.BlockSize, Rate: p.BytesPerSec,
		})
	})
	pp.end()
	d.Stop()
	left := c.DirtyCount()
	if cerr := c.Close(); cerr != nil && ferr == nil {
		ferr = fmt.Errorf("closing the cache: %w", cerr)
	}
	if errors.Is(ferr, flush.ErrLostBlocks) {
		return fmt.Errorf("detach wrote back every block it could, but the cache is still attached: %w. "+
			"To finish, mount the cache, rewrite or discard (fallocate --punch-hole) those blocks, stop it and run detach again", ferr)
	}
	if ferr != nil {
		return fmt.Errorf("detach stopped with %d dirty blocks still in the cache (it is intact; mount it or run detach again): %w", left, ferr)
	}
	if left != 0 {
		return fmt.Errorf("detach: %d blocks are still dirty after write-back; the cache is intact: run detach again", left)
	}
	fmt.Fprintf(out, "wrote back %s in %.1fs\n", formatSize(int64(dirty)*blockcache.BlockSize), time.Since(start).Seconds())
	if err := eraseSuperblocks(devs.ssd); err != nil {
		return fmt.Errorf("every block is on %s, but erasing the cache's superblocks failed: %w; reformat %s before using it again",
			*backingPath, err, *cachePath)
	}
	fmt.Fprintf(out, "detached: %s now holds every block and can be used without wbcache.\n", *backingPath)
	fmt.Fprintf(out, "%s no longer holds a cache; run 'wbcache format' to use it again.\n", *cachePath)
	return nil
}

// eraseSuperblocks zeroes both superblock copies, so the device no longer
// opens as a cache, and the first checkpoint page (block 2), so it is not
// taken for a cache that lost its superblocks (which mount and format
// refuse, pointing to rescue).
func eraseSuperblocks(ssd device.Device) error {
	zero := device.AlignedBuffer(3 * layout.BlockSize)
	if _, err := ssd.WriteAt(zero, 0); err != nil {
		return err
	}
	return ssd.Sync()
}
