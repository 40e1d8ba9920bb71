package blockcache

import (
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/wbcache/wbcache/device"
	"github.com/wbcache/wbcache/layout"
)

// CheckReport is the result of an offline consistency check.
type CheckReport struct {
	UUID        [16]byte
	Clean       bool // the last stop was clean
	Slots       int
	Valid       int // slots holding a block after recovery
	Dirty       int
	Replayed    int // journal records that recovery would replay
	Dropped     int // unsynced journal records recovery would drop
	DataChecked int // slots whose data checksum was verified
	// Lost: dirty blocks whose slot fails its checksum (each also a
	// problem). Healable: clean blocks whose slot fails it, which the
	// backing device holds (read from there, not a problem).
	Lost, Healable []uint64
	// JournalDamaged: the journal is damaged in its middle, at block
	// JournalDamageLSN, where a completed sync had covered it (not a torn
	// tail). Open refuses such a cache; Replayed then counts the valid
	// records before the damage, and the slot counts are not known.
	JournalDamaged   bool
	JournalDamageLSN uint64
	// NoSuperblock: neither superblock copy is valid; nothing else was
	// checked (the Problems say whether Rescue may save blocks).
	NoSuperblock bool
	// Degraded: redundancy lost (a superblock or checkpoint copy bad)
	// while the cache is otherwise usable; mount repairs it.
	Degraded []string
	// Notes: things to know that are not problems.
	Notes    []string
	Problems []string
}

// OK reports whether the check found no problem.
func (r *CheckReport) OK() bool { return len(r.Problems) == 0 }

func (r *CheckReport) String() string {
	var b strings.Builder
	if r.NoSuperblock {
		b.WriteString("cache: no valid superblock: nothing else is known about it\n")
	} else if r.JournalDamaged {
		fmt.Fprintf(&b, "cache %x: %d slots; last stop clean: %v\n", r.UUID, r.Slots, r.Clean)
		fmt.Fprintf(&b, "journal: damaged at block %d, after %d valid records: recovery cannot go past it, so the cache cannot be opened\n", r.JournalDamageLSN, r.Replayed)
	} else {
		fmt.Fprintf(&b, "cache %x: %d slots, %d in use, %d dirty; last stop clean: %v\n", r.UUID, r.Slots, r.Valid, r.Dirty, r.Clean)
		fmt.Fprintf(&b, "journal: %d records to replay, %d unsynced records to drop\n", r.Replayed, r.Dropped)
		fmt.Fprintf(&b, "data: %d slot checksums verified\n", r.DataChecked)
		if len(r.Healable) > 0 {
			fmt.Fprintf(&b, "note: %d clean blocks fail their slot checksum; the backing device holds them and they are read from there: %s\n",
				len(r.Healable), FormatLBAs(r.Healable, 20))
		}
		if len(r.Lost) > 0 {
			fmt.Fprintf(&b, "lost dirty blocks: %s\n", FormatLBAs(r.Lost, 20))
		}
	}
	for _, n := range r.Notes {
		fmt.Fprintf(&b, "note: %s\n", n)
	}
	for _, d := range r.Degraded {
		fmt.Fprintf(&b, "WARNING: degraded redundancy: %s\n", d)
	}
	switch {
	case r.OK() && len(r.Degraded) > 0:
		b.WriteString("consistent, but with degraded redundancy: the next mount repairs it\n")
	case r.OK():
		b.WriteString("consistent\n")
	}
	for _, p := range r.Problems {
		fmt.Fprintf(&b, "PROBLEM: %s\n", p)
	}
	return b.String()
}

// Check verifies a cache device offline without writing to it: both
// superblocks, the current checkpoint, the journal, the data checksum of
// every cached block and, with hdd, that the backing device is the one the
// cache was formatted for. It returns an error only when it cannot read;
// what it finds wrong goes into Problems.
func Check(ssd, hdd device.Device) (*CheckReport, error) {
	r := &CheckReport{}
	sb, copyErrs, err := superblockCopies(ssd)
	if err != nil {
		if errors.Is(err, layout.ErrNotFormatted) || errors.Is(err, layout.ErrCorrupt) || errors.Is(err, layout.ErrVersion) || errors.Is(err, layout.ErrGeometry) {
			r.NoSuperblock = true
			r.Problems = append(r.Problems, fmt.Sprintf("superblock: %v", superblocksLost(ssd, err)))
			return r, nil
		}
		return nil, err
	}
	r.UUID, r.Clean, r.Slots = sb.UUID, sb.Clean(), int(sb.Geometry.SlotCount)
	if err := sb.Geometry.Validate(ssd.Size()); err != nil {
		r.Problems = append(r.Problems, fmt.Sprintf("geometry: %v", err))
		return r, nil
	}
	size := int64(sb.BackingSize)
	if hdd != nil {
		note, err := matchBacking(&sb, hdd)
		if err != nil {
			r.Problems = append(r.Problems, err.Error())
		} else if note != "" {
			r.Notes = append(r.Notes, note)
		}
	}
	if r.Degraded, err = degraded(ssd, &sb, copyErrs); err != nil {
		return nil, err
	}
	c := &Cache{
		ssd: ssd, hdd: hdd, g: sb.Geometry, uuid: sb.UUID, sb: sb,
		size: size, nblocks: uint64(size) / BlockSize,
		log: slog.New(slog.DiscardHandler), opts: Options{Now: time.Now},
	}
	rec, err := c.recover()
	if err != nil {
		var jd *journalDamageError
		if errors.As(err, &jd) {
			r.JournalDamaged, r.JournalDamageLSN, r.Replayed = true, jd.lsn, jd.records
			r.Problems = append(r.Problems, jd.describe()+"; the cache cannot be opened, so none of its blocks are served, "+
				"and the writes journaled from that block on cannot be recovered from it")
			return r, nil
		}
		if errors.Is(err, layout.ErrCorrupt) {
			r.Problems = append(r.Problems, err.Error())
			return r, nil
		}
		return nil, err
	}
	r.Valid, r.Dirty, r.Replayed, r.Dropped = rec.valid, rec.dirty, rec.records, rec.dropped
	t := &c.mu.t
	buf := device.AlignedBuffer(BlockSize)
	seen := make(map[uint64]uint32)
	for s, f := range t.flags {
		if f&fValid == 0 {
			continue
		}
		if !t.isOlder(uint32(s)) {
			if prev, dup := seen[t.lba[s]]; dup {
				r.Problems = append(r.Problems, fmt.Sprintf("block %d is held by slots %d and %d", t.lba[s], prev, s))
			}
			seen[t.lba[s]] = uint32(s)
		}
		if _, err := ssd.ReadAt(buf, c.g.SlotOffset(uint64(s))); err != nil {
			return nil, fmt.Errorf("reading slot %d: %w", s, err)
		}
		r.DataChecked++
		if got := layout.DataCRC(buf); got != t.crc[s] {
			if f&fDirty == 0 {
				// The backing device holds this version: the slot is
				// dropped at the next read (corrupt.go).
				r.Healable = append(r.Healable, t.lba[s])
				continue
			}
			r.Lost = append(r.Lost, t.lba[s])
			r.Problems = append(r.Problems, fmt.Sprintf("block %d is lost: it is dirty in slot %d, whose data checksum is %08x, want %08x; "+
				"the backing device holds an older version; it reads as an error until rewritten or discarded", t.lba[s], s, got, t.crc[s]))
		}
	}
	slices.Sort(r.Lost)
	slices.Sort(r.Healable)
	return r, nil
}
