package device

import (
	"errors"
	"testing"
	"unsafe"
)

// pattern returns n bytes that differ from zero and from each other's
// neighbours, seeded so different calls give different contents.
func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = (byte(i*7) + seed) | 1 // odd, so never zero
	}
	return b
}

// mustRead reads n bytes at off from d, failing the test on error.
func mustRead(t *testing.T, d Device, off int64, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := d.ReadAt(b, off); err != nil {
		t.Fatalf("ReadAt(%d, %d): %v", off, n, err)
	}
	return b
}

// mustWrite writes p at off to d, failing the test on error.
func mustWrite(t *testing.T, d Device, p []byte, off int64) {
	t.Helper()
	if n, err := d.WriteAt(p, off); err != nil || n != len(p) {
		t.Fatalf("WriteAt(%d bytes, %d) = %d, %v", len(p), off, n, err)
	}
}

// wantErr fails the test unless errors.Is(err, target).
func wantErr(t *testing.T, what string, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Errorf("%s: got error %v, want %v", what, err, target)
	}
}

// allZero reports whether b holds only zeros.
func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// isAligned reports whether b's first byte is on a BlockSize boundary.
// An empty slice counts as aligned.
func isAligned(b []byte) bool {
	if len(b) == 0 {
		return true
	}
	return uintptr(unsafe.Pointer(&b[0]))%BlockSize == 0
}
