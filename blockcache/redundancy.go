package blockcache

import (
	"errors"
	"fmt"

	"github.com/wbcache/wbcache/device"
	"github.com/wbcache/wbcache/layout"
)

// Redundancy. The superblock is kept in two copies, written in turn, and
// so is the checkpoint: when a superblock write is torn, the other copy,
// naming the previous checkpoint, stands. That fallback is lost when the
// other superblock copy does not decode, or when the idle checkpoint copy
// (the previous checkpoint, generation one below the current) fails its
// checks. Neither stops the cache from opening; check reports it (exit 4)
// and Open repairs it: its post-recovery checkpoint writes the idle
// checkpoint copy and then the other superblock copy.

// ErrSuperblocksLost: the cache device has no valid superblock, but the
// checkpoint that format writes at block 2 is there: it is (or was) a
// cache and may hold dirty blocks, which Rescue can save.
var ErrSuperblocksLost = errors.New("no valid superblock, but the cache's checkpoint and journal may remain")

// superblockCopies reads both superblock copies and returns the valid
// newest one, plus what was wrong with each copy (nil: it is valid).
func superblockCopies(ssd device.Device) (layout.Superblock, [2]error, error) {
	var errs [2]error
	if ssd.Size() < 2*BlockSize {
		return layout.Superblock{}, errs, layout.ErrNotFormatted
	}
	buf := device.AlignedBuffer(2 * BlockSize)
	if _, err := ssd.ReadAt(buf, 0); err != nil {
		return layout.Superblock{}, errs, fmt.Errorf("reading superblock: %w", err)
	}
	var sbs [2]layout.Superblock
	for k := range 2 {
		block := buf[k*BlockSize : (k+1)*BlockSize]
		sbs[k], errs[k] = layout.DecodeSuperblock(block)
		if errs[k] == nil && sbs[k].Copy() != k {
			errs[k] = fmt.Errorf("superblock copy %d holds generation %d: %w", k, sbs[k].Generation, layout.ErrCorrupt)
		}
		if errors.Is(errs[k], layout.ErrNotFormatted) && allZero(block) {
			errs[k] = errZeroCopy
		}
	}
	for _, err := range errs {
		// Written by another version: the valid copy may be older than
		// what that version did, so it cannot stand in.
		if errors.Is(err, layout.ErrVersion) {
			return layout.Superblock{}, errs, err
		}
	}
	sb, err := layout.PickSuperblock(sbs[0], errs[0], sbs[1], errs[1])
	return sb, errs, err
}

// errZeroCopy: a superblock copy of zeros (what format by earlier
// versions left in copy 0 until the first checkpoint).
var errZeroCopy = fmt.Errorf("all zeros: %w", layout.ErrNotFormatted)

func allZero(b []byte) bool {
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}

// superblocksLost wraps err, the reason no superblock copy is valid, in
// ErrSuperblocksLost when block 2 holds a checkpoint page (see
// ErrSuperblocksLost); otherwise it returns err unchanged.
func superblocksLost(ssd device.Device, err error) error {
	if errors.Is(err, layout.ErrVersion) || ssd.Size() < 3*BlockSize {
		return err
	}
	page := device.AlignedBuffer(BlockSize)
	if _, rerr := ssd.ReadAt(page, 2*BlockSize); rerr != nil {
		return err
	}
	h, ok := layout.PeekPage(page)
	if !ok || h.Kind != layout.MapPage || h.Index != 0 {
		return err
	}
	return &superblocksLostError{cause: err, gen: h.Generation}
}

// superblocksLostError is ErrSuperblocksLost, and what was wrong with the superblock
// copies (cause).
type superblocksLostError struct {
	cause error
	gen   uint64 // of the checkpoint page at block 2
}

func (e *superblocksLostError) Error() string {
	reason := "neither superblock copy holds a superblock"
	if !errors.Is(e.cause, layout.ErrNotFormatted) {
		reason = e.cause.Error()
	}
	return fmt.Sprintf("%v (%s; block 2 holds checkpoint page 0 of generation %d): it may hold dirty blocks, "+
		"which Rescue can write back from its checkpoint and journal", ErrSuperblocksLost, reason, e.gen)
}

func (e *superblocksLostError) Unwrap() []error { return []error{ErrSuperblocksLost, e.cause} }

// degraded lists what redundancy sb's cache has lost (see the top of this
// file), given what was wrong with each superblock copy.
func degraded(ssd device.Device, sb *layout.Superblock, copyErrs [2]error) ([]string, error) {
	var out []string
	for k, err := range copyErrs {
		if err == nil || (errors.Is(err, errZeroCopy) && sb.Generation == 1) {
			continue
		}
		out = append(out, fmt.Sprintf("superblock copy %d (block %d) is damaged (%v); copy %d, generation %d, stands alone",
			k, k, err, 1-k, sb.Generation))
	}
	if sb.CheckpointGeneration < 2 {
		return out, nil // the idle copy was never written
	}
	bad, first, err := idleCheckpointDamage(ssd, sb)
	if err != nil {
		return nil, err
	}
	if bad > 0 {
		idle := 1 - sb.CheckpointCopy
		out = append(out, fmt.Sprintf("checkpoint copy %d (the previous checkpoint, generation %d, which a torn superblock write falls back on) is damaged: "+
			"%d of its %d pages fail their checks, the first: %v", idle, sb.CheckpointGeneration-1, bad, sb.Geometry.CheckpointBlocks, first))
	}
	return out, nil
}

// idleCheckpointDamage counts the pages of the idle checkpoint copy that
// hold neither the previous checkpoint (of its generation or older) nor
// the next one (a checkpoint interrupted while writing), and says what is
// wrong with the first.
func idleCheckpointDamage(ssd device.Device, sb *layout.Superblock) (bad int, first string, err error) {
	g := sb.Geometry
	idle := 1 - int(sb.CheckpointCopy)
	const chunk = 64
	buf := device.AlignedBuffer(chunk * BlockSize)
	for start := uint64(0); start < g.CheckpointBlocks; start += chunk {
		nb := min(chunk, g.CheckpointBlocks-start)
		if _, err := ssd.ReadAt(buf[:nb*BlockSize], g.MapPageOffset(idle, start)); err != nil {
			return 0, "", fmt.Errorf("reading checkpoint copy %d: %w", idle, err)
		}
		for k := range nb {
			i := start + k
			kind, idx := layout.MapPage, i
			if i >= g.MapPages {
				kind, idx = layout.BitmapPage, i-g.MapPages
			}
			page := buf[k*BlockSize : (k+1)*BlockSize]
			// The previous checkpoint left pages of its generation or of
			// older ones it found unchanged (checkpoint).
			perr := layout.CheckPageUpTo(page, kind, sb.UUID, sb.CheckpointGeneration-1, uint32(idx))
			if perr != nil && layout.CheckPage(page, kind, sb.UUID, sb.CheckpointGeneration+1, uint32(idx)) != nil {
				bad++
				if first == "" {
					first = perr.Error()
				}
			}
		}
	}
	return bad, first, nil
}
