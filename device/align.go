package device

import "unsafe"

// BlockSize is the alignment O_DIRECT I/O needs: buffer addresses, file
// offsets and transfer lengths must all be multiples of it. 4096 covers
// both 512-byte and 4 KiB logical-sector devices.
const BlockSize = 4096

// AlignedBuffer returns a zeroed slice of length and capacity n whose first
// byte sits on a BlockSize boundary in memory, as O_DIRECT requires. It
// over-allocates by BlockSize and slices into the allocation; Go's heap does
// not move objects, so the alignment holds for the slice's lifetime.
// It panics if n is negative, as make does.
func AlignedBuffer(n int) []byte {
	if n < 0 {
		panic("device: AlignedBuffer: negative length")
	}
	raw := make([]byte, n+BlockSize)
	skip := 0
	if rem := int(uintptr(unsafe.Pointer(&raw[0])) % BlockSize); rem != 0 {
		skip = BlockSize - rem
	}
	return raw[skip : skip+n : skip+n]
}

// NeedsAlignment reports whether d takes only buffers aligned as
// AlignedBuffer makes them (an O_DIRECT file); other devices accept any.
func NeedsAlignment(d Device) bool {
	a, ok := d.(interface{ Direct() bool })
	return ok && a.Direct()
}
