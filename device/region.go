package device

import (
	"errors"
	"fmt"
	"os"
	"runtime/debug"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// Region is a window onto part of a device for small, frequent updates of
// whole blocks, such as a journal appending records to its open block.
//
// On a buffered File the region is mapped shared into memory, so an Update
// is a memory copy into the file's page cache: it survives the process
// being killed the moment the copy is done, costs no system call, and the
// device's Sync makes it durable like any write. An Update of whole pages
// is a WriteAt instead (into the same page cache), which does not read
// the pages it replaces. On every other device
// (O_DIRECT files, test doubles), and on a file its filesystem will not
// map, an Update is a WriteAt of the block. Mapped tells which.
type Region interface {
	// Update makes b the content of the device at off, where only bytes
	// [from, to) of b may differ from what the last Update of the same
	// range wrote. off and len(b) must lie inside the region.
	Update(b []byte, off int64, from, to int) error
	// Prepare writes b, whole pages, at off and readies those pages for
	// Updates of part of them: on a mapping it also stores into each page
	// through it, so that the next Update there is a copy that neither
	// faults nor enters the kernel (until a sync of the device cleans the
	// page again). It reports whether the pages are ready in that sense;
	// a region that is not mapped writes nothing and reports false.
	Prepare(b []byte, off int64) (bool, error)
	// Close unmaps the region. The device stays open.
	Close() error
}

// NewRegion opens the region [off, off+n) of d for Updates.
//
// A buffered, writable File is mapped shared. If its filesystem refuses
// the mapping (see unmappable: a FUSE filesystem serving the file with
// direct I/O answers ENODEV), the region writes with WriteAt instead;
// Mapped reports why.
func NewRegion(d Device, off, n int64) (Region, error) {
	if err := checkRange("map", off, n, d.Size()); err != nil {
		return nil, err
	}
	if p, ok := d.(partialUpdater); ok && p.PartialUpdates() {
		return &partRegion{d: d, off: off, n: n}, nil
	}
	w := &writeRegion{d: d, off: off, n: n}
	f, ok := d.(*File)
	switch {
	case !ok || n == 0:
	case f.direct:
		w.why = fmt.Errorf("device: %s is open with O_DIRECT", f.path)
	case f.readOnly:
		w.why = fmt.Errorf("device: %s is open read-only", f.path)
	default:
		r, err := f.mapRegion(off, n)
		if err == nil {
			return r, nil
		}
		if !unmappable(err) {
			return nil, err
		}
		w.why = err
	}
	return w, nil
}

// unmappable reports whether an mmap error means that this file cannot be
// mapped shared and writable, so that writing it with pwrite is the way,
// rather than that the process is short of something (ENOMEM: address
// space or the map count limit; EAGAIN, ENFILE), which is reported:
//   - ENODEV, EOPNOTSUPP: the filesystem has no shared mappings for the
//     file (FUSE with direct I/O, network and special filesystems);
//   - EINVAL: the filesystem rejects this mapping of the file (our
//     arguments are valid for any mappable file);
//   - EACCES, EPERM: writable shared mappings of the file are refused
//     (an append-only or sealed file, a security module) while writes
//     may still be allowed; if they are not, the first write says so.
func unmappable(err error) bool {
	for _, e := range []error{unix.ENODEV, unix.EOPNOTSUPP, unix.EINVAL, unix.EACCES, unix.EPERM} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// Mapped reports whether the Updates of r are copies into a shared memory
// mapping. When they are WriteAt calls instead, why is what kept a File's
// region from being mapped (the mmap error, or the File's mode); it is nil
// for devices that are never mapped.
func Mapped(r Region) (mapped bool, why error) {
	switch r := r.(type) {
	case *mapRegion, *partRegion:
		return true, nil
	case *writeRegion:
		return false, r.why
	}
	return false, nil
}

// writeRegion updates through WriteAt.
type writeRegion struct {
	d      Device
	off, n int64
	why    error // why a File's region is not mapped
}

func (r *writeRegion) Update(b []byte, off int64, from, to int) error {
	if off < r.off || off+int64(len(b)) > r.off+r.n {
		return fmt.Errorf("device: update at %d length %d outside the region [%d, %d)", off, len(b), r.off, r.off+r.n)
	}
	_, err := r.d.WriteAt(b, off)
	return err
}

// Prepare has nothing to ready: every Update is a WriteAt.
func (r *writeRegion) Prepare(b []byte, off int64) (bool, error) { return false, nil }

func (r *writeRegion) Close() error { return nil }

// checkUpdate checks that an Update of b at off, changing [from, to) of
// it, lies inside the region [rOff, rOff+rN).
func checkUpdate(b []byte, off int64, from, to int, rOff, rN int64) error {
	if off < rOff || off+int64(len(b)) > rOff+rN || from < 0 || from > to || to > len(b) {
		return fmt.Errorf("device: update at %d length %d [%d, %d) outside the region [%d, %d)", off, len(b), from, to, rOff, rOff+rN)
	}
	return nil
}

// partialUpdater is a device that writes any byte range in place and
// asks for a region that writes only the bytes an Update changes (Mem,
// when a test asks it to).
type partialUpdater interface{ PartialUpdates() bool }

// partRegion writes only bytes [from, to) of each Update, with WriteAt,
// as the stores into a shared mapping change only those bytes. Mapped
// reports it as mapped, so that users take their mapped paths (the
// journal places records without its lock) over a device a test can
// crash at any write: each Update is one write the device may keep, lose
// or tear.
type partRegion struct {
	d      Device
	off, n int64
	closed atomic.Bool
}

func (r *partRegion) Update(b []byte, off int64, from, to int) error {
	if err := checkUpdate(b, off, from, to, r.off, r.n); err != nil {
		return err
	}
	if r.closed.Load() {
		return ErrClosed
	}
	_, err := r.d.WriteAt(b[from:to], off+int64(from))
	return err
}

// Prepare writes b: the next Updates there change parts of it.
func (r *partRegion) Prepare(b []byte, off int64) (bool, error) {
	if off < r.off || off+int64(len(b)) > r.off+r.n {
		return false, fmt.Errorf("device: prepare at %d length %d outside the region [%d, %d)", off, len(b), r.off, r.off+r.n)
	}
	if r.closed.Load() {
		return false, ErrClosed
	}
	if _, err := r.d.WriteAt(b, off); err != nil {
		return false, err
	}
	return true, nil
}

func (r *partRegion) Close() error {
	if r.closed.Swap(true) {
		return ErrClosed
	}
	return nil
}

// mapRegion maps [off, off+n) of f shared, read-write.
type mapRegion struct {
	f      *File
	base   int64 // file offset of mem[0] (page aligned)
	off, n int64
	mem    []byte
}

// mmap is unix.Mmap; tests replace it to make mappings fail.
var mmap = unix.Mmap

func (f *File) mapRegion(off, n int64) (Region, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if f.closed {
		return nil, ErrClosed
	}
	page := int64(os.Getpagesize())
	base := off - off%page
	// Pages of the file are cached in folios of up to megabytes when
	// readahead brings them in, and a store through a shared mapping
	// dirties its whole folio: every sync would then write back the
	// folio around the one block updated (about 2 MiB per sync under a
	// sync per write, with read_ahead_kb 8192). So the range's clean cached
	// pages (from reads before, such as recovery's) are dropped, and
	// faults of the mapping read one page, with no read-around.
	_ = unix.Fadvise(f.fd, base, off+n-base, unix.FADV_DONTNEED)
	mem, err := mmap(f.fd, base, int(off+n-base), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, &os.PathError{Op: "mmap", Path: f.path, Err: err}
	}
	_ = unix.Madvise(mem, unix.MADV_RANDOM) // a hint: without it, only slower
	return &mapRegion{f: f, base: base, off: off, n: n, mem: mem}, nil
}

func (r *mapRegion) Update(b []byte, off int64, from, to int) (err error) {
	if err := checkUpdate(b, off, from, to, r.off, r.n); err != nil {
		return err
	}
	if r.mem == nil {
		return ErrClosed
	}
	if page := int64(os.Getpagesize()); from == 0 && to == len(b) && off%page == 0 && int64(len(b))%page == 0 {
		// Whole pages are written, not stored: a store faults a page
		// that is not in the page cache in from the device first (a
		// read for nothing: all of it is replaced), and a write of one
		// page cannot be cut short by the process being killed.
		_, err := r.f.WriteAt(b, off)
		return err
	}
	// Touching a mapped page the kernel cannot read in (an I/O error on
	// the device) raises SIGBUS: turn it into an error for this call.
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if p := recover(); p != nil {
			err = &os.PathError{Op: "write (mapped)", Path: r.f.path, Err: r.f.faultError(off+int64(from), p)}
		}
	}()
	copy(r.mem[off-r.base+int64(from):], b[from:to])
	return nil
}

func (r *mapRegion) Prepare(b []byte, off int64) (ready bool, err error) {
	page := int64(os.Getpagesize())
	if off < r.off || off+int64(len(b)) > r.off+r.n || off%page != 0 || int64(len(b))%page != 0 {
		return false, fmt.Errorf("device: prepare at %d length %d is not whole pages inside the region [%d, %d)", off, len(b), r.off, r.off+r.n)
	}
	if r.mem == nil {
		return false, ErrClosed
	}
	// Written, not stored, for the reasons Update gives.
	if _, err := r.f.WriteAt(b, off); err != nil {
		return false, err
	}
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if p := recover(); p != nil {
			ready, err = false, &os.PathError{Op: "write (mapped)", Path: r.f.path, Err: r.f.faultError(off, p)}
		}
	}()
	// Storing the byte the page already holds faults the page into the
	// mapping, writable: the fault (and the filesystem's page_mkwrite)
	// happens here rather than in the next Update.
	for p := int64(0); p < int64(len(b)); p += page {
		r.mem[off-r.base+p] = b[p]
	}
	return true, nil
}

func (r *mapRegion) Close() error {
	if r.mem == nil {
		return ErrClosed
	}
	err := unix.Munmap(r.mem)
	r.mem = nil
	if err != nil {
		return &os.PathError{Op: "munmap", Path: r.f.path, Err: err}
	}
	return nil
}

// faultError explains a memory fault at file offset off of a mapping of f.
// The page may be a hole that the filesystem, being full, could not
// allocate: then the error wraps ENOSPC and says so.
func (f *File) faultError(off int64, fault any) error {
	err := fmt.Errorf("memory fault at file offset %d: %v", off, fault)
	f.mu.RLock()
	defer f.mu.RUnlock()
	if f.closed || f.kind != kindRegular {
		return err
	}
	if free, known := freeBytes(f.fd); known && free < int64(os.Getpagesize()) {
		return fmt.Errorf("%w: %w", err, &NoSpaceError{Path: f.path, Err: unix.ENOSPC})
	}
	return err
}
