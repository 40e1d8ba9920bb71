package main

import (
	"bytes"
	"fmt"
	"strings"
	"sync"
)

// book is the exact record of what the writers did, against which every
// block is checked after a crash.
//
// Each block's versions are numbered 1, 2, ... in the order they were
// issued; version 0 is "never written" (zeros). A version is acknowledged
// when the write carrying it returned. A completed fsync makes durable
// every version acknowledged before it started (any writer's: fsync covers
// the whole disk), and the state the verifier read at the start of the
// round. After a crash a block must read as a version v with
//
//	floor <= v <= issued
//
// where floor is the newest durable version and issued the highest version
// ever issued (a write in flight at the crash may or may not have landed;
// an acknowledged but unsynced one may be lost), intact, and not a version
// an earlier verify found lost ("resurrected"): once the disk has shown a
// block without a version, that version must not come back.
//
// Block i is only ever written by its owner thread (the disk is split into
// one contiguous range per thread), one write at a time, so per-block
// fields need no lock while writers run; the verifier runs when no writer
// does, one goroutine per disjoint range.
type book struct {
	seed    uint64
	threads int
	nblocks int64

	issued   []uint32 // highest version issued
	acked    []uint32 // newest version acknowledged (since the last verify)
	floor    []uint32 // newest durable version
	observed []uint32 // version the last verify read
	obsOK    []bool   // observed is valid (the block passed)
	rounds   [][]uint16
	dead     [][]vrange // versions a verify found lost

	mu      sync.Mutex // guards the ack log
	seq     uint64     // acknowledgements so far
	events  []ackEvent // this round's acknowledgements
	synced  bool       // an fsync completed this round
	durable uint64     // every event with seq <= durable is durable
	cutting bool       // the power cut was asked for: later fsyncs prove nothing
}

type vrange struct{ lo, hi uint32 } // versions lo < v <= hi

type ackEvent struct {
	lba     int64
	version uint32
	seq     uint64
}

func newBook(seed uint64, threads int, nblocks int64) *book {
	return &book{
		seed: seed, threads: threads, nblocks: nblocks,
		issued:   make([]uint32, nblocks),
		acked:    make([]uint32, nblocks),
		floor:    make([]uint32, nblocks),
		observed: make([]uint32, nblocks),
		obsOK:    make([]bool, nblocks),
		rounds:   make([][]uint16, nblocks),
		dead:     make([][]vrange, nblocks),
	}
}

// span returns the blocks [lo, hi) owned by thread t.
func (b *book) span(t int) (lo, hi int64) {
	n, T := b.nblocks, int64(b.threads)
	return int64(t) * n / T, int64(t+1) * n / T
}

// owner returns the thread that writes block lba.
func (b *book) owner(lba int64) int {
	t := int(lba * int64(b.threads) / b.nblocks)
	for t > 0 {
		if lo, _ := b.span(t); lba >= lo {
			break
		}
		t--
	}
	for t < b.threads-1 {
		if _, hi := b.span(t); lba < hi {
			break
		}
		t++
	}
	return t
}

// issue returns the next version of lba, written in round.
func (b *book) issue(lba int64, round int) uint32 {
	b.issued[lba]++
	b.rounds[lba] = append(b.rounds[lba], uint16(round))
	return b.issued[lba]
}

// ack records that versions[i] of block lba+i were acknowledged.
func (b *book) ack(lba int64, versions []uint32) {
	for i, v := range versions {
		b.acked[lba+int64(i)] = v
	}
	b.mu.Lock()
	b.seq++
	for i, v := range versions {
		b.events = append(b.events, ackEvent{lba + int64(i), v, b.seq})
	}
	b.mu.Unlock()
}

// fsyncStart is called just before an fsync; its result goes to fsyncDone
// if that fsync succeeds.
func (b *book) fsyncStart() uint64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.seq
}

func (b *book) fsyncDone(start uint64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.cutting {
		// It may have returned after the cut, which makes every fsync
		// succeed without writing anything.
		return
	}
	b.synced = true
	b.durable = max(b.durable, start)
}

// beginCut is called before the power cut is asked for: fsyncs that
// return from then on do not count.
func (b *book) beginCut() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.cutting = true
}

// isCutting reports whether the power cut was asked for this round.
func (b *book) isCutting() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.cutting
}

// endRound raises the floors by what this round's completed fsyncs made
// durable. Call it when no writer runs.
func (b *book) endRound() (raised int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.synced {
		for lba := range b.nblocks {
			if b.obsOK[lba] && b.observed[lba] > b.floor[lba] {
				b.floor[lba] = b.observed[lba]
				raised++
			}
		}
		for _, e := range b.events {
			if e.seq <= b.durable && e.version > b.floor[e.lba] {
				b.floor[e.lba] = e.version
				raised++
			}
		}
	}
	b.events = b.events[:0]
	b.synced, b.durable, b.cutting = false, 0, false
	return raised
}

// expected builds version v of block lba into buf.
func (b *book) expected(buf []byte, lba int64, v uint32) {
	fillBlock(buf, b.seed, header{lba: lba, version: v, round: uint32(b.rounds[lba][v-1]), thread: uint32(b.owner(lba))})
}

func (b *book) isDead(lba int64, v uint32) bool {
	for _, r := range b.dead[lba] {
		if v > r.lo && v <= r.hi {
			return true
		}
	}
	return false
}

// violation is a block that breaks the contract.
type violation struct {
	lba                  int64
	kind                 string // eio, lost, stale, unwritten, resurrected, foreign, content, torn, garbage
	got                  string // what was read
	floor, acked, issued uint32
	online               bool // read while the writers ran: acked and issued were moving
}

func (v violation) String() string {
	if v.online {
		return fmt.Sprintf("lba %d (offset %#x): %s: read %s; floor v%d (newest durable at the start of the round)",
			v.lba, v.lba*blockSize, v.kind, v.got, v.floor)
	}
	return fmt.Sprintf("lba %d (offset %#x): %s: read %s; floor v%d (newest durable), newest acknowledged v%d, highest issued v%d",
		v.lba, v.lba*blockSize, v.kind, v.got, v.floor, v.acked, v.issued)
}

// verifyStats counts what a verify found.
type verifyStats struct {
	blocks      int64 // checked
	written     int64 // blocks that read as a written version
	newest      int64 // ... the newest acknowledged one
	lostUnsync  int64 // older than the newest acknowledged (unsynced, allowed)
	inflight    int64 // newer than the newest acknowledged (in flight at the crash)
	lostToZeros int64 // zeros though written (nothing durable yet, allowed)
}

func (s *verifyStats) add(o verifyStats) {
	s.blocks += o.blocks
	s.written += o.written
	s.newest += o.newest
	s.lostUnsync += o.lostUnsync
	s.inflight += o.inflight
	s.lostToZeros += o.lostToZeros
}

// check checks block lba as read (data) and records what it holds. scratch
// is a 4 KiB buffer. It returns nil if the block is allowed.
func (b *book) check(lba int64, data, scratch []byte, st *verifyStats) *violation {
	st.blocks++
	fl, ack, is := b.floor[lba], b.acked[lba], b.issued[lba]
	viol := func(kind, got string) *violation {
		b.obsOK[lba] = false
		return &violation{lba: lba, kind: kind, got: got, floor: fl, acked: ack, issued: is}
	}
	var v uint32
	if isZero(data) {
		if fl > 0 {
			return viol("lost", "zeros, as if never written")
		}
		if is > 0 {
			st.lostToZeros++
		}
	} else {
		h, magic, crcOK := parseHeader(data)
		switch {
		case magic && crcOK && h.lba != lba:
			got := fmt.Sprintf("the block of LBA %d v%d (round %d, thread %d)", h.lba, h.version, h.round, h.thread)
			if h.lba < 0 || h.lba >= b.nblocks || h.version == 0 || h.version > b.issued[h.lba] {
				got += ", a version never written"
			}
			return viol("foreign", got)
		case magic && crcOK:
			v = h.version
			got := fmt.Sprintf("v%d (round %d, thread %d)", v, h.round, h.thread)
			if v == 0 || v > is {
				return viol("unwritten", got+", a version never issued")
			}
			b.expected(scratch, lba, v)
			if !bytes.Equal(scratch, data[:blockSize]) {
				return viol("content", got+" with other content: "+b.sectors(lba, data, is))
			}
			if v < fl {
				return viol("stale", got)
			}
			if b.isDead(lba, v) {
				return viol("resurrected", got+", which an earlier verify found lost")
			}
		default:
			desc := b.sectors(lba, data, is)
			kind := "garbage"
			if !strings.Contains(desc, "unknown") {
				kind = "torn"
			}
			if magic {
				desc = fmt.Sprintf("a header claiming LBA %d v%d with a bad CRC; %s", h.lba, h.version, desc)
			} else {
				desc = "no header; " + desc
			}
			return viol(kind, desc)
		}
	}
	switch {
	case v > 0 && v == ack:
		st.newest++
	case v > ack:
		st.inflight++
	case v > 0 && v < ack:
		st.lostUnsync++
	}
	if v > 0 {
		st.written++
	}
	b.observed[lba], b.obsOK[lba], b.acked[lba] = v, true, v
	if v < is {
		b.dead[lba] = append(b.dead[lba], vrange{v, is})
	}
	return nil
}

// sectors describes the sectors of a bad block against the last 64
// versions of the block.
func (b *book) sectors(lba int64, data []byte, issued uint32) string {
	cands := map[uint32][]byte{}
	for v := issued; v >= 1 && issued-v < 64; v-- {
		buf := make([]byte, blockSize)
		b.expected(buf, lba, v)
		cands[v] = buf
	}
	return describeSectors(data, cands)
}
