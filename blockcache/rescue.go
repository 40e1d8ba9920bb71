package blockcache

import (
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/wbcache/wbcache/device"
	"github.com/wbcache/wbcache/layout"
)

// Rescue writes back, offline, every dirty block of a cache whose
// checksum verifies, from whatever metadata survives: it never needs the
// superblock (salvage.go finds the layout) and never writes to the cache
// device. The checkpoint is the newest whole copy, else the newest valid
// version of each page from either copy; replay starts at the
// superblock's replay point or, without one, at the oldest journal block
// of the unbroken run that ends at the newest one, and goes on up to the
// first damaged block. Each dirty slot's data is checked against its
// checksum: those that match are written to the backing device at their
// block, the rest are reported.

// ErrBackingUnverified: the backing device cannot be checked against the
// cache (no superblock survives to say which it was), and the caller did
// not accept that.
var ErrBackingUnverified = errors.New("the backing device cannot be verified")

// RescueOptions control Rescue.
type RescueOptions struct {
	// DryRun verifies and reports, writing nothing.
	DryRun bool
	// JournalBlocks is the journal size the cache was formatted with, if
	// known (0: found by scanning, see salvage.go).
	JournalBlocks uint64
	// UnverifiedBacking lets Rescue write to a backing device it cannot
	// check (see ErrBackingUnverified).
	UnverifiedBacking bool
}

// RescueReport says what Rescue found and did.
type RescueReport struct {
	Layout     string // where the layout came from
	Checkpoint string // which checkpoint was used
	Journal    string // what was replayed
	// BackingNote: how far the backing device could be checked.
	BackingNote string
	DryRun      bool
	// Restored: dirty blocks whose data verified, written back (or, with
	// DryRun, to be written). Unverifiable: dirty blocks whose slot fails
	// its checksum: not written, the backing device keeps an older version.
	Restored, Unverifiable []uint64
	// Notes: other things that could not be saved or checked.
	Notes []string
}

// Rescue writes every verified dirty block of the cache on ssd to hdd (see
// the top of this file) and syncs hdd.
func Rescue(ssd, hdd device.Device, opts RescueOptions) (*RescueReport, error) {
	if err := checkBacking(hdd); err != nil {
		return nil, err
	}
	sv, err := findLayout(ssd, opts.JournalBlocks)
	if err != nil {
		return nil, err
	}
	rep := &RescueReport{Layout: sv.source, DryRun: opts.DryRun}
	if err := rescueBacking(&sv, hdd, opts, rep); err != nil {
		return nil, err
	}
	view, err := salvageView(ssd, &sv, rep)
	if err != nil {
		return nil, err
	}
	size := hdd.Size()
	c := &Cache{
		ssd: view, hdd: hdd, g: sv.sb.Geometry, uuid: sv.sb.UUID, sb: sv.sb,
		size: size, nblocks: uint64(size) / BlockSize,
		log: slog.New(slog.DiscardHandler), opts: Options{Now: time.Now},
	}
	rec, err := c.rescueReplay(rep)
	if err != nil {
		return nil, fmt.Errorf("replaying the cache's metadata: %w", err)
	}
	rep.Journal = fmt.Sprintf("%d records replayed from block %d up to block %d", rec.records, sv.sb.ReplayLSN, rec.endLSN)
	if rec.dropped > 0 {
		rep.Notes = append(rep.Notes, fmt.Sprintf("%d journal records were set aside: their slot's data does not match them (a write never synced, or a damaged slot)", rec.dropped))
	}
	if err := c.writeBackVerified(rep, opts.DryRun); err != nil {
		return rep, err
	}
	return rep, nil
}

// rescueReplay is recovery for rescue: a live MAP record whose slot fails
// its checksum is set aside alone, as recovery does with an in-place one
// (the mapping before it stands, to be checked in turn), whatever follows
// it: one damaged slot then costs only its own block, not every record
// after it. A dirty block whose newest version is set aside goes into
// rep.Unverifiable.
func (c *Cache) rescueReplay(rep *RescueReport) (recoveryResult, error) {
	var res recoveryResult
	recs, endLSN, _, _, err := c.loadState()
	if err != nil {
		return res, err
	}
	void, checked := map[int]bool{}, map[int]bool{}
	for {
		live := liveMaps(recs, void)
		if err := c.checkSlots(recs, live, checked); err != nil {
			return res, err
		}
		setAside := 0
		for _, i := range live {
			if !checked[i] {
				void[i] = true
				setAside++
				if recs[i].Flags&layout.RecordDirty != 0 {
					rep.Unverifiable = append(rep.Unverifiable, recs[i].LBA)
				}
			}
		}
		if setAside == 0 {
			break
		}
	}
	res.records, res.dropped, res.endLSN = len(recs)-len(void), len(void), endLSN
	c.applyReplay(recs, void, &res)
	return res, nil
}

// rescueBacking checks hdd against what survives of the superblock.
func rescueBacking(sv *salvaged, hdd device.Device, opts RescueOptions, rep *RescueReport) error {
	if sv.identity {
		note, err := matchBacking(&sv.sb, hdd)
		if err != nil {
			return err
		}
		rep.BackingNote = "verified: it is the device the cache was formatted for"
		if note != "" {
			rep.BackingNote = note
		}
		return nil
	}
	rep.BackingNote = "not verified: no superblock survives to say which device the cache was formatted for"
	if !opts.DryRun && !opts.UnverifiedBacking {
		return fmt.Errorf("%w: no superblock survives to say which device the cache was formatted for, so it cannot tell whether %s is that device",
			ErrBackingUnverified, given(hdd))
	}
	return nil
}

// writeBackVerified checks each dirty slot's data against its checksum
// and writes those that match to the backing device, then syncs it.
func (c *Cache) writeBackVerified(rep *RescueReport, dryRun bool) error {
	t := &c.mu.t
	buf := device.AlignedBuffer(BlockSize)
	// Older versions (ordered write-back) first, oldest first, so that
	// each block ends at its newest version that can be verified.
	var order []int
	for s, f := range t.flags {
		if f&(fValid|fDirty) == fValid|fDirty {
			order = append(order, s)
		}
	}
	slices.SortStableFunc(order, func(a, b int) int {
		oa, ob := t.isOlder(uint32(a)), t.isOlder(uint32(b))
		switch {
		case oa && !ob:
			return -1
		case ob && !oa:
			return 1
		case oa && epochBefore(t.epoch[a], t.epoch[b]):
			return -1
		case oa && epochBefore(t.epoch[b], t.epoch[a]):
			return 1
		}
		return 0
	})
	for _, s := range order {
		if _, err := c.ssd.ReadAt(buf, c.g.SlotOffset(uint64(s))); err != nil || layout.DataCRC(buf) != t.crc[s] {
			rep.Unverifiable = append(rep.Unverifiable, t.lba[s])
			continue
		}
		if !dryRun {
			if _, err := c.hdd.WriteAt(buf, int64(t.lba[s])*BlockSize); err != nil {
				return fmt.Errorf("writing block %d to the backing device: %w", t.lba[s], err)
			}
		}
		rep.Restored = append(rep.Restored, t.lba[s])
	}
	slices.Sort(rep.Restored)
	rep.Restored = slices.Compact(rep.Restored)
	slices.Sort(rep.Unverifiable)
	rep.Unverifiable = slices.Compact(rep.Unverifiable)
	if dryRun {
		return nil
	}
	if err := c.hdd.Sync(); err != nil {
		return fmt.Errorf("syncing the backing device: %w", err)
	}
	return nil
}

// String reports what Rescue did, listing at most 20 runs of blocks each.
func (r *RescueReport) String() string {
	verb := "restored"
	if r.DryRun {
		verb = "would restore (dry run: nothing written)"
	}
	s := fmt.Sprintf("layout: %s\ncheckpoint: %s\njournal: %s\nbacking device: %s\n", r.Layout, r.Checkpoint, r.Journal, r.BackingNote)
	s += fmt.Sprintf("%s %d dirty blocks", verb, len(r.Restored))
	if len(r.Restored) > 0 {
		s += ": " + FormatLBAs(r.Restored, 20)
	}
	s += "\n"
	if len(r.Unverifiable) > 0 {
		s += fmt.Sprintf("could not save %d dirty blocks at their newest version (its slot fails its checksum): %s\n",
			len(r.Unverifiable), FormatLBAs(r.Unverifiable, 20))
		if older := r.olderVersions(); older > 0 {
			s += fmt.Sprintf("  of these, %d had an older version that verified, which was written instead (restored above)\n", older)
		}
	}
	for _, n := range r.Notes {
		s += "note: " + n + "\n"
	}
	return s
}

// olderVersions counts the unverifiable blocks restored at an older version.
func (r *RescueReport) olderVersions() int {
	n := 0
	for _, lba := range r.Unverifiable {
		if _, ok := slices.BinarySearch(r.Restored, lba); ok {
			n++
		}
	}
	return n
}
