package blockcache

import (
	"errors"
	"fmt"

	"github.com/wbcache/wbcache/device"
	"github.com/wbcache/wbcache/layout"
)

// Salvage: finding a cache's layout without its superblock, for rescue.
//
// The geometry and the checksum seed (the UUID, or a seed equivalent to it:
// layout.SeedFor) come from, in order:
//
//  1. a valid superblock;
//  2. a damaged superblock copy read as if its magic and checksum were
//     right (layout.ResealSuperblock), if its geometry fits the device and
//     its UUID verifies the first checkpoint page;
//  3. the checkpoint: format writes checkpoint copy 0 at block 2, so the
//     page there gives the seed, and the run of slot-map and then
//     dirty-bitmap pages from there gives the checkpoint's shape. The
//     journal size is the one unknown left: of the journal sizes whose
//     geometry has that shape, the one under which the most sampled map
//     entries (from the checkpoint and the first journal blocks) find
//     their data in their slot wins; a tie goes to the default size, or
//     is refused (ErrLayoutUnknown): the caller must give the journal size.

// ErrLayoutUnknown: rescue cannot tell where the cache's regions are.
var ErrLayoutUnknown = errors.New("cannot find the cache's layout")

// salvaged is what salvage found about a cache.
type salvaged struct {
	sb     layout.Superblock // from a superblock, or with only Geometry and UUID (the seed) known
	source string            // where the layout came from, in words
	// identity: sb's backing size, identity and description are known.
	identity bool
	whole    bool // sb is a valid superblock: its checkpoint and replay point apply
}

// findLayout finds the geometry and seed of the cache on ssd (see above);
// journalBlocks, if not 0, is the journal size the cache was formatted
// with.
func findLayout(ssd device.Device, journalBlocks uint64) (salvaged, error) {
	sb, _, err := superblockCopies(ssd)
	if err == nil {
		return salvaged{sb: sb, source: fmt.Sprintf("superblock, generation %d", sb.Generation), identity: true, whole: true}, nil
	}
	if errors.Is(err, layout.ErrVersion) {
		return salvaged{}, err
	}
	buf := device.AlignedBuffer(2 * BlockSize)
	if ssd.Size() >= 3*BlockSize {
		if _, err := ssd.ReadAt(buf, 0); err != nil {
			return salvaged{}, fmt.Errorf("reading the superblocks: %w", err)
		}
		for k := range 2 {
			cand, err := layout.ResealSuperblock(buf[k*BlockSize : (k+1)*BlockSize])
			if err == nil && cand.Geometry.Validate(ssd.Size()) == nil && seedVerifies(ssd, cand.Geometry, cand.UUID) {
				return salvaged{sb: cand, identity: true,
					source: fmt.Sprintf("damaged superblock copy %d (its UUID verifies the checkpoint)", k)}, nil
			}
		}
	}
	return scanLayout(ssd, journalBlocks)
}

// seedVerifies: the first slot-map page of either checkpoint copy checks
// under seed.
func seedVerifies(ssd device.Device, g layout.Geometry, seed [16]byte) bool {
	page := device.AlignedBuffer(BlockSize)
	for cp := range 2 {
		if _, err := ssd.ReadAt(page, g.MapPageOffset(cp, 0)); err != nil {
			continue
		}
		if h, ok := layout.PeekPage(page); ok && layout.CheckPage(page, layout.MapPage, seed, h.Generation, 0) == nil {
			return true
		}
	}
	return false
}

// scanLayout finds the layout from the checkpoint (step 3 above).
func scanLayout(ssd device.Device, journalBlocks uint64) (salvaged, error) {
	const start = 2 // checkpoint copy 0, wherever the journal ends
	if ssd.Size() < (start+1)*BlockSize {
		return salvaged{}, fmt.Errorf("%w: the device is too small to be a cache", ErrLayoutUnknown)
	}
	page := device.AlignedBuffer(BlockSize)
	if _, err := ssd.ReadAt(page, start*BlockSize); err != nil {
		return salvaged{}, fmt.Errorf("reading block %d: %w", start, err)
	}
	if h, ok := layout.PeekPage(page); !ok || h.Kind != layout.MapPage || h.Index != 0 {
		return salvaged{}, fmt.Errorf("%w: no superblock, and block %d holds no checkpoint page (is it a wbcache cache device?)", ErrLayoutUnknown, start)
	}
	seed, _ := layout.SeedFor(page, 4)
	mapPages, bitmapPages, samples, err := checkpointShape(ssd, seed, start)
	if err != nil {
		return salvaged{}, err
	}
	var cands []layout.Geometry
	for jb := uint64(layout.MinJournalBlocks); jb <= maxJournalBlocks; jb++ {
		if journalBlocks != 0 && jb != journalBlocks {
			continue
		}
		g, err := layout.ComputeGeometry(ssd.Size(), jb)
		if err == nil && g.MapPages == mapPages && g.BitmapPages == bitmapPages {
			cands = append(cands, g)
		}
	}
	if len(cands) == 0 {
		return salvaged{}, fmt.Errorf("%w: no journal size gives a checkpoint of %d map and %d bitmap pages on a device of %d bytes",
			ErrLayoutUnknown, mapPages, bitmapPages, ssd.Size())
	}
	if len(cands) > 1 {
		samples = append(samples, journalSamples(ssd, cands[0], seed)...)
	}
	g, err := pickGeometry(ssd, cands, samples)
	if err != nil {
		return salvaged{}, err
	}
	return salvaged{sb: layout.Superblock{Geometry: g, UUID: seed},
		source: fmt.Sprintf("found by scanning: checkpoint at block %d, journal of %d blocks at block %d", start, g.JournalBlocks, g.JournalStart)}, nil
}

// maxJournalBlocks is the largest journal format accepts (128 MiB).
const maxJournalBlocks = 32768

// slotSample is a slot and the checksum of the data a map entry or MAP
// record says it holds.
type slotSample struct {
	slot uint64
	crc  uint32
}

// checkpointShape counts the slot-map pages and then the dirty-bitmap
// pages that check under seed from block start on, and samples map
// entries of the former (those of all-zero blocks tell nothing).
func checkpointShape(ssd device.Device, seed [16]byte, start uint64) (mapPages, bitmapPages uint64, samples []slotSample, err error) {
	page := device.AlignedBuffer(BlockSize)
	zeroCRC := layout.DataCRC(make([]byte, BlockSize))
	kind, idx := layout.MapPage, uint64(0)
	for b := start; int64(b+1)*BlockSize <= ssd.Size(); b++ {
		if _, err := ssd.ReadAt(page, int64(b)*BlockSize); err != nil {
			return 0, 0, nil, fmt.Errorf("reading checkpoint block %d: %w", b, err)
		}
		h, ok := layout.PeekPage(page)
		if ok && kind == layout.MapPage && h.Kind == layout.BitmapPage {
			kind, idx, mapPages = layout.BitmapPage, 0, idx
		}
		if !ok || layout.CheckPage(page, kind, seed, h.Generation, uint32(idx)) != nil {
			break
		}
		for e := 0; kind == layout.MapPage && e < layout.EntriesPerMapPage && len(samples) < 64; e += 17 {
			if me := layout.GetMapEntry(page, e); me.Valid && me.CRC != zeroCRC {
				samples = append(samples, slotSample{idx*layout.EntriesPerMapPage + uint64(e), me.CRC})
			}
		}
		idx++
	}
	if kind != layout.BitmapPage || idx == 0 {
		return 0, 0, nil, fmt.Errorf("%w: the checkpoint at block %d is damaged (its slot-map pages are not followed by dirty-bitmap pages)", ErrLayoutUnknown, start)
	}
	return mapPages, idx, samples, nil
}

// journalSamples samples MAP records from the first journal blocks (their
// place depends only on the checkpoint's shape, the same in every
// candidate g).
func journalSamples(ssd device.Device, g layout.Geometry, seed [16]byte) []slotSample {
	zeroCRC := layout.DataCRC(make([]byte, BlockSize))
	b := device.AlignedBuffer(BlockSize)
	var out []slotSample
	for i := uint64(0); i < layout.MinJournalBlocks && len(out) < 64; i++ {
		if _, err := ssd.ReadAt(b, int64(g.JournalStart+i)*BlockSize); err != nil {
			continue
		}
		_, recs, err := layout.DecodeJournalBlock(b, seed, nil)
		if err != nil {
			continue
		}
		for _, r := range recs {
			if r.Type == layout.RecMap && r.CRC != zeroCRC {
				out = append(out, slotSample{uint64(r.Slot), r.CRC})
			}
		}
	}
	return out
}

// pickGeometry scores each candidate by how many samples find their data
// in their slot under it (see the top of this file).
func pickGeometry(ssd device.Device, cands []layout.Geometry, samples []slotSample) (layout.Geometry, error) {
	if len(cands) == 1 {
		return cands[0], nil
	}
	buf := device.AlignedBuffer(BlockSize)
	best, bestScore, ties := -1, -1, 0
	for i, g := range cands {
		score := 0
		for _, s := range samples {
			if s.slot < g.SlotCount {
				if _, err := ssd.ReadAt(buf, g.SlotOffset(s.slot)); err == nil && layout.DataCRC(buf) == s.crc {
					score++
				}
			}
		}
		switch {
		case score > bestScore:
			best, bestScore, ties = i, score, 1
		case score == bestScore:
			ties++
			if g.JournalBlocks == layout.DefaultJournalBlocks(ssd.Size()) {
				best = i
			}
		}
	}
	if ties > 1 && cands[best].JournalBlocks != layout.DefaultJournalBlocks(ssd.Size()) {
		return layout.Geometry{}, fmt.Errorf("%w: %d journal sizes fit what the checkpoint and the journal show equally well "+
			"(the default for this cache is %d KiB)",
			ErrLayoutUnknown, ties, layout.DefaultJournalBlocks(ssd.Size())*4)
	}
	return cands[best], nil
}
