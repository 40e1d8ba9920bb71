package blockcache

import (
	"errors"
	"fmt"

	"github.com/wbcache/wbcache/device"
	"github.com/wbcache/wbcache/layout"
)

// salvageView makes what recovery reads of the cache on ssd fit sv.sb (see
// rescue.go): it fills in sv.sb's checkpoint and replay point when no
// valid superblock gave them, and returns the cache device as recovery
// should see it (with the checkpoint combined from both copies served in
// place of copy 0 when no whole copy is named). The view is read-only.
func salvageView(ssd device.Device, sv *salvaged, rep *RescueReport) (device.Device, error) {
	sb := &sv.sb
	// Replay up to the first damaged journal block, torn or not.
	sb.Flags = layout.FlagClean
	if sv.whole {
		ok, err := wholeCheckpoint(ssd, sb)
		if err != nil {
			return nil, err
		}
		if ok {
			rep.Checkpoint = fmt.Sprintf("copy %d, generation %d, as the superblock names it", sb.CheckpointCopy, sb.CheckpointGeneration)
			return &readOnlyView{Device: ssd}, nil
		}
		rep.Notes = append(rep.Notes, fmt.Sprintf("the checkpoint the superblock names (copy %d, generation %d) is damaged: pages of both copies are combined",
			sb.CheckpointCopy, sb.CheckpointGeneration))
	}
	named := -1
	if sv.whole {
		named = int(sb.CheckpointCopy)
	}
	view, err := combineCheckpoints(ssd, sb, named, rep)
	if err != nil {
		return nil, err
	}
	if err := findReplayStart(ssd, sb, rep); err != nil {
		return nil, err
	}
	return view, nil
}

// wholeCheckpoint: every page of the checkpoint sb names checks.
func wholeCheckpoint(ssd device.Device, sb *layout.Superblock) (bool, error) {
	g := sb.Geometry
	page := device.AlignedBuffer(BlockSize)
	for i := uint64(0); i < g.CheckpointBlocks; i++ {
		if _, err := ssd.ReadAt(page, g.MapPageOffset(int(sb.CheckpointCopy), i)); err != nil {
			return false, fmt.Errorf("reading the checkpoint: %w", err)
		}
		kind, idx := pageKind(g, i)
		if layout.CheckPageUpTo(page, kind, sb.UUID, sb.CheckpointGeneration, idx) != nil {
			return false, nil
		}
	}
	return true, nil
}

// pageKind says what checkpoint page i of a copy is.
func pageKind(g layout.Geometry, i uint64) (layout.PageKind, uint32) {
	if i < g.MapPages {
		return layout.MapPage, uint32(i)
	}
	return layout.BitmapPage, uint32(i - g.MapPages)
}

// combineCheckpoints takes, for each checkpoint page, a valid version from
// either copy (an empty page where neither is valid), and serves them,
// sealed as one generation, as copy 0. With named >= 0 (the copy the
// superblock names), that copy's page is taken wherever it checks (at
// most the superblock's generation: a checkpoint leaves the pages it
// finds unchanged, so a page of an older generation may still be the
// newest content, and the other copy's newer generation may hold content
// older than it); else, and where it is damaged, the valid version of the
// highest generation.
func combineCheckpoints(ssd device.Device, sb *layout.Superblock, named int, rep *RescueReport) (device.Device, error) {
	g := sb.Geometry
	pages := make([][]byte, g.CheckpointBlocks)
	var gens [2]uint64 // lowest and highest generation used
	var missing []uint64
	for i := range pages {
		kind, idx := pageKind(g, uint64(i))
		for cp := range 2 {
			page := device.AlignedBuffer(BlockSize)
			if _, err := ssd.ReadAt(page, g.MapPageOffset(cp, uint64(i))); err != nil {
				continue
			}
			h, ok := layout.PeekPage(page)
			if !ok || layout.CheckPage(page, kind, sb.UUID, h.Generation, idx) != nil {
				continue
			}
			if cp == named && h.Generation <= sb.CheckpointGeneration {
				pages[i] = page
				break
			}
			if pages[i] == nil || h.Generation > peekGen(pages[i]) {
				pages[i] = page
			}
		}
		if pages[i] == nil {
			missing = append(missing, uint64(i))
			pages[i] = make([]byte, BlockSize)
			continue
		}
		gen := peekGen(pages[i])
		if gens[1] == 0 || gen < gens[0] {
			gens[0] = gen
		}
		gens[1] = max(gens[1], gen)
	}
	sb.CheckpointCopy, sb.CheckpointGeneration = 0, max(gens[1], 1)
	o := &readOnlyView{Device: ssd, pages: make(map[int64][]byte, len(pages))}
	for i, page := range pages {
		kind, idx := pageKind(g, uint64(i))
		layout.SealPage(page, kind, sb.UUID, sb.CheckpointGeneration, idx)
		o.pages[g.MapPageOffset(0, uint64(i))] = page
	}
	rep.Checkpoint = fmt.Sprintf("the newest valid version of each page from either copy (generations %d to %d)", gens[0], gens[1])
	if gens[0] == gens[1] {
		rep.Checkpoint = fmt.Sprintf("the newest valid version of each page from either copy (all of generation %d)", gens[1])
	}
	if len(missing) > 0 {
		rep.Notes = append(rep.Notes, fmt.Sprintf("%d checkpoint pages are damaged in both copies (page numbers %s): "+
			"the slots they cover are known only from the journal", len(missing), FormatLBAs(missing, 10)))
	}
	return o, nil
}

func peekGen(page []byte) uint64 {
	h, _ := layout.PeekPage(page)
	return h.Generation
}

// findReplayStart sets sb's replay point to the oldest journal block of
// the unbroken run that ends at the newest valid block.
func findReplayStart(ssd device.Device, sb *layout.Superblock, rep *RescueReport) error {
	g := sb.Geometry
	hs := make([]*layout.JournalHeader, g.JournalBlocks)
	buf := device.AlignedBuffer(BlockSize)
	newest := -1
	for pos := range hs {
		if _, err := ssd.ReadAt(buf, g.JournalOffset(uint64(pos))); err != nil {
			continue
		}
		h, err := layout.DecodeJournalHeader(buf, sb.UUID)
		if err != nil || h.LSN%g.JournalBlocks != uint64(pos) {
			continue
		}
		hs[pos] = &h
		if newest < 0 || h.LSN > hs[newest].LSN {
			newest = pos
		}
	}
	if newest < 0 {
		sb.ReplayLSN, sb.CheckpointIncarnation = 0, 0
		rep.Notes = append(rep.Notes, "no journal block is valid: only the checkpoint was used")
		return nil
	}
	lsn, inc := hs[newest].LSN, hs[newest].Incarnation
	for n := uint64(1); n < g.JournalBlocks && lsn > 0; n++ {
		p := hs[(lsn-1)%g.JournalBlocks]
		if p == nil || p.LSN != lsn-1 || p.Incarnation > inc {
			break
		}
		lsn, inc = p.LSN, p.Incarnation
	}
	sb.ReplayLSN, sb.CheckpointIncarnation = lsn, inc
	return nil
}

// errReadOnlyView: rescue never writes to the cache device.
var errReadOnlyView = errors.New("rescue does not write to the cache device")

// readOnlyView serves pages in place of the device's blocks at their
// offsets, and refuses writes.
type readOnlyView struct {
	device.Device
	pages map[int64][]byte // by byte offset; each BlockSize bytes
}

func (v *readOnlyView) ReadAt(p []byte, off int64) (int, error) {
	n, err := v.Device.ReadAt(p, off)
	if err != nil {
		return n, err
	}
	for i := int64(0); i+BlockSize <= int64(len(p)); i += BlockSize {
		if page, ok := v.pages[off+i]; ok {
			copy(p[i:i+BlockSize], page)
		}
	}
	return n, nil
}

func (v *readOnlyView) WriteAt([]byte, int64) (int, error) { return 0, errReadOnlyView }

func (v *readOnlyView) Zero(int64, int64) error { return errReadOnlyView }
