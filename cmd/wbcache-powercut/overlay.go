package main

import (
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
)

// The power-cut filesystem keeps every write that no fsync has covered in
// memory, in an overlay over the file in the backing directory, at the
// granularity of a 512-byte sector: a disk may persist any subset of the
// sectors written since its last cache flush, so a power cut keeps or
// drops each sector on its own, and a 4 KiB block written over sectors of
// an older one comes back torn when some of its sectors are dropped.

const (
	sectorSize     = 512
	pageSize       = 4096
	sectorsPerPage = pageSize / sectorSize
	fullMask       = 1<<sectorsPerPage - 1
)

// baseFile is the file underneath an overlay: the file in the backing
// directory, as it would be found after a power cut.
type baseFile interface {
	io.ReaderAt
	io.WriterAt
	Truncate(size int64) error
	// PunchHole makes [off, off+n) read as zeros, keeping the size.
	PunchHole(off, n int64) error
	Sync() error
}

// page holds the unsynced sectors of one 4 KiB page of a file.
type page struct {
	mask uint8 // bit i: sector i is held
	// data holds the held sectors; nil means every held sector is zeros
	// (a punched range costs no memory).
	data *[pageSize]byte
}

// overlay is the unsynced state of one file. It is not safe for concurrent
// use.
type overlay struct {
	pages map[int64]*page // by page index
	// size is the size the file has for its users, with unsynced
	// truncations and extensions.
	size int64
	// base is the size of the file underneath.
	base int64
	// low is the smallest size the file had since its last sync: bytes of
	// the file underneath at or past low read as zeros (an unsynced
	// truncation cut them off).
	low int64
}

func newOverlay(baseSize int64) *overlay {
	return &overlay{pages: map[int64]*page{}, size: baseSize, base: baseSize, low: baseSize}
}

// dirty reports whether the overlay holds anything not in the file
// underneath.
func (o *overlay) dirty() bool {
	return len(o.pages) > 0 || o.size != o.base || o.low != o.base
}

// sectors returns the number of sectors held.
func (o *overlay) sectors() int {
	n := 0
	for _, p := range o.pages {
		n += popcount(p.mask)
	}
	return n
}

func popcount(m uint8) int {
	n := 0
	for ; m != 0; m &= m - 1 {
		n++
	}
	return n
}

// readBase reads [off, off+len(p)) of the file underneath as the overlay's
// users see it without the held sectors: zeros past low.
func (o *overlay) readBase(f baseFile, p []byte, off int64) error {
	n := len(p)
	lim := min(o.low, o.base)
	if off+int64(n) > lim {
		k := max(0, int(lim-off))
		clear(p[k:])
		n = k
	}
	if n <= 0 {
		return nil
	}
	got, err := f.ReadAt(p[:n], off)
	if err == io.EOF {
		clear(p[got:n])
		err = nil
	}
	return err
}

// read fills p with the file's content at off and returns how many bytes
// lie before the end of the file.
func (o *overlay) read(f baseFile, p []byte, off int64) (int, error) {
	if off >= o.size {
		return 0, nil
	}
	p = p[:min(int64(len(p)), o.size-off)]
	if err := o.readBase(f, p, off); err != nil {
		return 0, err
	}
	end := off + int64(len(p))
	for pi := off / pageSize; pi*pageSize < end; pi++ {
		pg := o.pages[pi]
		if pg == nil {
			continue
		}
		for s := range sectorsPerPage {
			if pg.mask&(1<<s) == 0 {
				continue
			}
			so := pi*pageSize + int64(s)*sectorSize
			lo, hi := max(so, off), min(so+sectorSize, end)
			if lo >= hi {
				continue
			}
			dst := p[lo-off : hi-off]
			if pg.data == nil {
				clear(dst)
			} else {
				copy(dst, pg.data[lo-pi*pageSize:hi-pi*pageSize])
			}
		}
	}
	return len(p), nil
}

// write stores p at off as unsynced sectors (zeros when p is nil and n
// gives the length), extending the file if it ends past its end. A sector
// only partly covered is completed from what the file holds there.
func (o *overlay) write(f baseFile, p []byte, off int64) error {
	return o.store(f, p, off, int64(len(p)))
}

// zero makes [off, off+n) read as zeros, as an unsynced write of zeros.
func (o *overlay) zero(f baseFile, off, n int64) error {
	return o.store(f, nil, off, n)
}

func (o *overlay) store(f baseFile, p []byte, off, n int64) error {
	if off < 0 || n < 0 {
		return fmt.Errorf("write of %d bytes at %d: out of range", n, off)
	}
	end := off + n
	for pi := off / pageSize; pi*pageSize < end; pi++ {
		po := pi * pageSize
		lo, hi := max(po, off), min(po+pageSize, end)
		pg := o.pages[pi]
		if pg == nil {
			pg = &page{}
			o.pages[pi] = pg
		}
		if p == nil && lo == po && hi == po+pageSize {
			// A whole page of zeros: no data needed.
			pg.mask, pg.data = fullMask, nil
			continue
		}
		if pg.data == nil && (p != nil || pg.mask != fullMask) {
			pg.data = new([pageSize]byte) // held sectors so far were zeros
		}
		if pg.data == nil {
			continue // zeros over zeros
		}
		// Complete partly covered sectors that are not held yet.
		for s := (lo - po) / sectorSize; s*sectorSize < hi-po; s++ {
			if pg.mask&(1<<s) != 0 {
				continue
			}
			so := po + s*sectorSize
			if so < lo || so+sectorSize > hi {
				if err := o.readBase(f, pg.data[s*sectorSize:(s+1)*sectorSize], so); err != nil {
					return err
				}
			}
			pg.mask |= 1 << s
		}
		dst := pg.data[lo-po : hi-po]
		if p == nil {
			clear(dst)
		} else {
			copy(dst, p[lo-off:hi-off])
		}
	}
	if end > o.size {
		o.size = end
	}
	return nil
}

// truncate sets the file's size, as an unsynced change.
func (o *overlay) truncate(size int64) {
	if size < 0 {
		return
	}
	if size < o.size {
		for pi, pg := range o.pages {
			po := pi * pageSize
			if po >= size {
				delete(o.pages, pi)
				continue
			}
			if po+pageSize <= size {
				continue
			}
			for s := range sectorsPerPage {
				so := po + int64(s)*sectorSize
				switch {
				case so >= size:
					pg.mask &^= 1 << s
				case so+sectorSize > size && pg.mask&(1<<s) != 0 && pg.data != nil:
					clear(pg.data[size-po : so+sectorSize-po])
				}
			}
			if pg.mask == 0 {
				delete(o.pages, pi)
			}
		}
		o.low = min(o.low, size)
	}
	o.size = size
}

// sortedPages returns the page indexes in ascending order.
func (o *overlay) sortedPages() []int64 {
	idx := make([]int64, 0, len(o.pages))
	for pi := range o.pages {
		idx = append(idx, pi)
	}
	slices.Sort(idx)
	return idx
}

// sync applies everything to the file underneath (without syncing it:
// the caller does that) and empties the overlay.
func (o *overlay) sync(f baseFile) error {
	keepAll := func(int64, int) bool { return true }
	if _, _, err := o.apply(f, true, keepAll); err != nil {
		return err
	}
	return nil
}

// cut is a power cut: each held sector is kept (written to the file
// underneath) or dropped at random, an unsynced size change is kept or
// dropped as a whole, and the overlay is emptied. It returns how many
// sectors were kept and dropped. With the same rng state and overlay it
// makes the same choices.
func (o *overlay) cut(f baseFile, rng *rand.Rand, keepProb float64) (kept, dropped int, err error) {
	keepMeta := true
	if o.size != o.base || o.low != o.base {
		keepMeta = rng.Float64() < keepProb
	}
	return o.apply(f, keepMeta, func(int64, int) bool { return rng.Float64() < keepProb })
}

// apply writes the held sectors that keep selects to f, with the size
// change if keepMeta, and empties the overlay. The file underneath then
// has the final size; sectors at or past it are dropped.
func (o *overlay) apply(f baseFile, keepMeta bool, keep func(page int64, sector int) bool) (kept, dropped int, err error) {
	final := o.base
	if keepMeta {
		final = o.size
		if o.low < o.base {
			if err := f.Truncate(o.low); err != nil {
				return 0, 0, err
			}
		}
	}
	var zeros [pageSize]byte
	for _, pi := range o.sortedPages() {
		pg := o.pages[pi]
		po := pi * pageSize
		if pg.mask == fullMask && po+pageSize <= final {
			// Decide every sector first so that the choices do not
			// depend on how the writes are grouped.
			var sel uint8
			for s := range sectorsPerPage {
				if keep(pi, s) {
					sel |= 1 << s
				}
			}
			kept += popcount(sel)
			dropped += sectorsPerPage - popcount(sel)
			if sel == fullMask && pg.data == nil {
				if err := f.PunchHole(po, pageSize); err != nil {
					return kept, dropped, err
				}
				continue
			}
			if err := writeSectors(f, pg, po, sel, &zeros); err != nil {
				return kept, dropped, err
			}
			continue
		}
		var sel uint8
		for s := range sectorsPerPage {
			if pg.mask&(1<<s) == 0 {
				continue
			}
			if po+int64(s)*sectorSize < final && keep(pi, s) {
				sel |= 1 << s
				kept++
			} else {
				dropped++
			}
		}
		if err := writeSectors(f, pg, po, sel, &zeros); err != nil {
			return kept, dropped, err
		}
	}
	if err := f.Truncate(final); err != nil {
		return kept, dropped, err
	}
	o.pages = map[int64]*page{}
	o.size, o.base, o.low = final, final, final
	return kept, dropped, nil
}

// writeSectors writes the sectors of pg selected by sel, in runs.
func writeSectors(f baseFile, pg *page, po int64, sel uint8, zeros *[pageSize]byte) error {
	src := zeros
	if pg.data != nil {
		src = pg.data
	}
	for s := 0; s < sectorsPerPage; {
		if sel&(1<<s) == 0 {
			s++
			continue
		}
		e := s
		for e < sectorsPerPage && sel&(1<<e) != 0 {
			e++
		}
		if _, err := f.WriteAt(src[s*sectorSize:e*sectorSize], po+int64(s)*sectorSize); err != nil {
			return err
		}
		s = e
	}
	return nil
}
