package uring

import (
	"testing"
	"unsafe"

	gofuse "github.com/hanwen/go-fuse/v2/fuse"
)

// TestDevSlotLoad: a request read from /dev/fuse is one byte stream; load
// keeps its header and op struct aside and puts the reply's payload where
// its header fits just before it without overwriting what the handler
// still reads: over a write's data, over a LOOKUP's name, else at the
// buffer's start.
func TestDevSlotLoad(t *testing.T) {
	wiSize := int(unsafe.Sizeof(gofuse.WriteIn{})) // go-fuse's op structs start with the header
	for _, c := range []struct {
		name   string
		opcode uint32
		n      int
		write  uint32
		off    int
	}{
		{"write", opWrite, wiSize + 4096, 4096, wiSize},
		{"write cut short", opWrite, wiSize + 10, 4096, wiSize},
		{"write without its op struct", opWrite, inHeaderSize + 8, 4096, inHeaderSize + 8},
		{"lookup", opLookup, inHeaderSize + 5, 0, inHeaderSize},
		{"read", opRead, int(unsafe.Sizeof(gofuse.ReadIn{})), 0, outHeaderSize},
		{"getattr", opGetattr, int(unsafe.Sizeof(gofuse.GetAttrIn{})), 0, outHeaderSize},
	} {
		sl := devSlot{buf: make([]byte, 8192), n: c.n}
		h := (*gofuse.InHeader)(unsafe.Pointer(&sl.buf[0]))
		h.Length, h.Opcode, h.Unique, h.NodeId = uint32(c.n), c.opcode, 77, 2
		if c.opcode == opWrite {
			(*gofuse.WriteIn)(unsafe.Pointer(&sl.buf[0])).Size = c.write
		}
		got := sl.load()
		if got.Opcode != c.opcode || got.Unique != 77 || got.NodeId != 2 {
			t.Errorf("%s: loaded header %+v", c.name, *got)
		}
		if sl.off != c.off {
			t.Errorf("%s: reply payload at %d, want %d", c.name, sl.off, c.off)
		}
		if sl.off < outHeaderSize {
			t.Errorf("%s: no room for the reply's header before offset %d", c.name, sl.off)
		}
		// The copy is the handler's: the buffer may be overwritten.
		clear(sl.buf)
		if h := sl.header(); h.Unique != 77 || h.Opcode != c.opcode {
			t.Errorf("%s: header copy changed with the buffer: %+v", c.name, h)
		}
	}
}
