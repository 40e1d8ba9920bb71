package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"

	"github.com/wbcache/wbcache/blockcache"
	"github.com/wbcache/wbcache/device"
	"github.com/wbcache/wbcache/layout"
)

const formatAbout = `
Writes an empty cache onto the cache device (a regular file or a block
device) for the given backing device. The backing device is only read: its
size and identity are recorded, its contents are kept and show through.

If the cache file does not exist and --cache-size is given, it is created
(mode 0600). If it exists, --cache-size must match its size. Either way
its blocks are allocated (fallocate), so that the cache never runs out
of space when its filesystem fills up; format refuses, changing nothing,
when that filesystem has too little free space.
A device that already holds a wbcache cache is refused unless --force is
given: --force discards the old cache, including dirty blocks that were
never written back (run 'wbcache detach' first to keep them). So is one
whose superblocks are gone but whose checkpoint remains: run 'wbcache
rescue' first to write its dirty blocks back.

The backing device's identity is recorded (a loop device by the file
behind it) with its name, so that mount, check and detach refuse another
device and say which one the cache was made for.

An existing cache device that holds a filesystem (ext2/3/4, XFS, btrfs,
FAT, NTFS, exFAT, squashfs, ISO 9660), a partition table (MBR, GPT), a
swap area, a LUKS or an LVM2 header is refused too, unless --force is
given: it is most likely --cache and --backing swapped. Only these
signatures at the start of the device are looked for; a device holding
zeros or data of no known format is formatted without --force.
A cache larger than the backing device is formatted with a warning.`

func runFormat(args []string, out io.Writer) error {
	f := newFlags("format", "wbcache format --cache PATH --backing PATH [--cache-size SIZE] [--journal SIZE] [--force]", formatAbout, out)
	cachePath := f.String("cache", "", "cache device `PATH` (SSD file or block device)")
	backingPath := f.String("backing", "", "backing device `PATH` (HDD file or block device)")
	var cacheSize, journal sizeFlag
	f.Var(&cacheSize, "cache-size", "create the cache file with this `SIZE` if it does not exist")
	f.Var(&journal, "journal", journalUsage)
	force := f.Bool("force", false, "overwrite an existing cache, filesystem or partition table on the cache device, losing its contents")
	_, err := f.parseDevices(args, cachePath, backingPath)
	if err != nil {
		return err
	}
	if f.given("cache-size") && (cacheSize.n <= 0 || cacheSize.n%layout.BlockSize != 0) {
		return usagef("format", "--cache-size %d: want a positive multiple of 4K", cacheSize.n)
	}
	journalBlocks, err := journalFlag("format", f, journal)
	if err != nil {
		return err
	}

	created, err := createCacheFile(*cachePath, cacheSize.n, f.given("cache-size"), journalBlocks)
	if err != nil {
		return err
	}
	fail := func(err error) error {
		if created {
			os.Remove(*cachePath)
		}
		return err
	}

	devs, err := openDevices(*cachePath, *backingPath, openFormat, "unmount it (stop its 'wbcache mount') before formatting")
	if err != nil {
		return fail(err)
	}
	defer devs.close()
	if f.given("cache-size") && devs.ssd.Size() != cacheSize.n {
		return fmt.Errorf("cache device %s has %s (%d bytes), not the --cache-size %s given: drop --cache-size to use it as it is, or give its real size",
			*cachePath, formatSize(devs.ssd.Size()), devs.ssd.Size(), formatSizeExact(cacheSize.n))
	}
	if err := checkDataArea(devs.ssd.Size(), journalBlocks, false); err != nil {
		return fail(fmt.Errorf("cache device %s: %w", *cachePath, err))
	}
	if !*force && !created {
		if err := refuseForeign(devs, *cachePath); err != nil {
			return err
		}
	}
	err = blockcache.Format(devs.ssd, devs.hdd, blockcache.FormatOptions{JournalBlocks: journalBlocks, Force: *force})
	if err != nil {
		// A refusal never meets a file created here: it holds no cache.
		return fail(formatError(*cachePath, *backingPath, err))
	}
	if err := devs.close(); err != nil {
		return err
	}
	return printFormatted(out, *cachePath, *backingPath)
}

// createCacheFile creates the cache file, allocated, if it does not exist
// and --cache-size gave its size; it reports whether it did.
func createCacheFile(path string, size int64, sizeGiven bool, journalBlocks uint64) (bool, error) {
	_, err := os.Stat(path)
	if err == nil {
		return false, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return false, fmt.Errorf("cache device: %w", err)
	}
	if !sizeGiven {
		return false, fmt.Errorf("cache device %s does not exist: give --cache-size to create it as a file", path)
	}
	if err := checkDataArea(size, journalBlocks, true); err != nil {
		return false, fmt.Errorf("cache device %s: %w", path, err)
	}
	if err := device.CreateAllocated(path, size); err != nil {
		if noSpace(err) {
			return false, fmt.Errorf("creating cache file: no space left on the cache device: %w.\n  %s", err, noSpaceAdvice)
		}
		return false, fmt.Errorf("creating cache file: %w", err)
	}
	return true, nil
}

// printFormatted reads the new superblock back and prints what format
// wrote.
func printFormatted(out io.Writer, cachePath, backingPath string) error {
	// Read the result back to print what was written.
	ssd, err := device.Open(cachePath, device.Options{ReadOnly: true})
	if err != nil {
		return err
	}
	defer ssd.Close()
	sb, err := blockcache.ReadSuperblock(ssd)
	if err != nil {
		return fmt.Errorf("reading back the new superblock: %w", err)
	}
	g := sb.Geometry
	fmt.Fprintf(out, "formatted %s as a cache for %s (%s)\n", cachePath, backingPath, formatSize(int64(sb.BackingSize)))
	fmt.Fprintf(out, "  slots:      %d of 4 KiB (cache data %s)\n", g.SlotCount, formatSize(int64(g.SlotCount)*layout.BlockSize))
	fmt.Fprintf(out, "  journal:    %s (%d blocks)\n", formatSize(int64(g.JournalBlocks)*layout.BlockSize), g.JournalBlocks)
	fmt.Fprintf(out, "  checkpoint: 2 copies of %s\n", formatSize(int64(g.CheckpointBlocks)*layout.BlockSize))
	fmt.Fprintf(out, "  uuid:       %x\n", sb.UUID)
	if space := allocation(cachePath); space != "" {
		fmt.Fprintf(out, "  space:      %s\n", space)
	}
	if data := int64(g.SlotCount) * layout.BlockSize; data > int64(sb.BackingSize) {
		fmt.Fprintf(os.Stderr, "wbcache: warning: the cache data (%s) is larger than the backing device %s (%s): "+
			"it never holds more than %s of distinct blocks;\n"+
			"  the rest only serves as room for rewritten blocks until their old copies are freed\n",
			formatSize(data), backingPath, formatSize(int64(sb.BackingSize)), formatSize(int64(sb.BackingSize)))
	}
	return nil
}

// formatError adds advice to a blockcache.Format error.
func formatError(cachePath, backingPath string, err error) error {
	switch {
	case errors.Is(err, blockcache.ErrSuperblocksLost):
		return fmt.Errorf("%s has lost its superblocks but still holds a wbcache cache's checkpoint and journal; refusing to overwrite it.\n"+
			"  It may hold dirty blocks: write back every one that verifies with\n"+
			"  'wbcache rescue --cache %s --backing BACKING' (see what it would do with --dry-run first).\n  (%v)", cachePath, cachePath, err)
	case errors.Is(err, blockcache.ErrFormatted):
		return fmt.Errorf("%s already holds a wbcache cache; refusing to overwrite it.\n"+
			"  To keep its data, mount it, or write it back with 'wbcache detach --cache %s --backing BACKING'.\n"+
			"  Only once it is detached, or if its dirty blocks are not wanted, run format again with --force.\n  (%v)", cachePath, cachePath, err)
	case errors.Is(err, blockcache.ErrBadBacking):
		return fmt.Errorf("backing device %s: %w", backingPath, err)
	case errors.Is(err, layout.ErrGeometry):
		return fmt.Errorf("cache device %s: %w: give a larger cache or a smaller --journal", cachePath, err)
	case noSpace(err):
		return fmt.Errorf("cache device %s: %w.\n  %s", cachePath, err, noSpaceAdvice)
	}
	return fmt.Errorf("format: %w", err)
}

// refuseForeign refuses a cache device that holds a filesystem, partition
// table or volume header (see probeSignature): formatting it would
// destroy it, and the likely cause is --cache and --backing swapped. A
// wbcache cache is left to blockcache.Format, which has its own refusal;
// a device holding zeros or data of no known format is accepted.
func refuseForeign(devs *devices, cachePath string) error {
	if _, err := blockcache.ReadSuperblock(devs.ssd); !errors.Is(err, layout.ErrNotFormatted) {
		return nil
	}
	n := min(devs.ssd.Size(), probeSize)
	buf := device.AlignedBuffer(int((n + layout.BlockSize - 1) / layout.BlockSize * layout.BlockSize))[:n]
	if _, err := devs.ssd.ReadAt(buf, 0); err != nil {
		return fmt.Errorf("cache device %s: reading its first %d bytes: %w", cachePath, n, err)
	}
	sig, ok := probeSignature(buf)
	if !ok {
		return nil
	}
	return fmt.Errorf("%s holds %s: formatting it as a cache would destroy it.\n"+
		"  Check that --cache and --backing are not swapped (--cache is the SSD side, --backing the disk whose data is kept),\n"+
		"  or pass --force to overwrite it", cachePath, sig)
}

// journalFlag is the --journal option in blocks (0 when not given), or a
// usage error of command cmd.
func journalFlag(cmd string, f *cmdFlags, journal sizeFlag) (uint64, error) {
	if !f.given("journal") {
		return 0, nil
	}
	return checkJournal(cmd, journal.n)
}

// allocation says whether the cache file's blocks are allocated ("" for a
// block device). format allocates them on purpose (device.File.Reserve):
// a cache file must not meet a full filesystem in the middle of a write.
func allocation(path string) string {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil || st.Mode&syscall.S_IFMT != syscall.S_IFREG {
		return ""
	}
	if st.Blocks*512 >= st.Size {
		return "allocated (fallocate): the cache never needs more space on its filesystem"
	}
	return fmt.Sprintf("sparse, %s not allocated: its filesystem cannot allocate ahead, so a write can fail with ENOSPC if it fills up",
		formatSize(st.Size-st.Blocks*512))
}

// noSpaceAdvice follows a format refused for want of space.
const noSpaceAdvice = "Free space on the filesystem holding the cache file, or give a smaller cache (a new file with a smaller --cache-size)"

// noSpace: err says that a filesystem or quota has no room.
func noSpace(err error) bool {
	return errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT)
}
