package fuse

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// memBackend is an in-memory Backend for tests: a byte slice under an
// RWMutex, call counters, an optional per-write delay (to make concurrency
// visible) and injectable errors.
type memBackend struct {
	mu   sync.RWMutex
	data []byte

	writeDelay time.Duration // set before mounting
	slowRead   time.Duration // reads of block 0 take this long (set before mounting)

	syncs, discards, writes, reads atomic.Int64
	inflight, maxInflight          atomic.Int64

	errMu                                  sync.Mutex
	readErr, writeErr, syncErr, discardErr error
}

var _ Backend = (*memBackend)(nil)

// MayWait: delayed writes and slow reads wait.
func (m *memBackend) MayWait(write bool, off, _ int64) bool {
	if write {
		return m.writeDelay > 0
	}
	return m.slowRead > 0 && off < 4096
}

func newMemBackend(size int) *memBackend {
	return &memBackend{data: make([]byte, size)}
}

func (m *memBackend) injected(p *error) error {
	m.errMu.Lock()
	defer m.errMu.Unlock()
	return *p
}

// inject sets the error the given operation returns until cleared with nil.
func (m *memBackend) inject(op string, err error) {
	m.errMu.Lock()
	defer m.errMu.Unlock()
	switch op {
	case "read":
		m.readErr = err
	case "write":
		m.writeErr = err
	case "sync":
		m.syncErr = err
	case "discard":
		m.discardErr = err
	default:
		panic("unknown op " + op)
	}
}

func (m *memBackend) check(p []byte, off int64) error {
	if off < 0 || off+int64(len(p)) > int64(len(m.data)) {
		return fmt.Errorf("memBackend: [%d,+%d) out of range (size %d)", off, len(p), len(m.data))
	}
	return nil
}

func (m *memBackend) ReadAt(p []byte, off int64) (int, error) {
	m.reads.Add(1)
	if err := m.injected(&m.readErr); err != nil {
		return 0, err
	}
	if err := m.check(p, off); err != nil {
		return 0, err
	}
	if m.slowRead > 0 && off < 4096 {
		time.Sleep(m.slowRead)
	}
	m.mu.RLock()
	defer m.mu.RUnlock()
	return copy(p, m.data[off:]), nil
}

func (m *memBackend) WriteAt(p []byte, off int64) (int, error) {
	m.writes.Add(1)
	n := m.inflight.Add(1)
	defer m.inflight.Add(-1)
	for {
		old := m.maxInflight.Load()
		if n <= old || m.maxInflight.CompareAndSwap(old, n) {
			break
		}
	}
	if err := m.injected(&m.writeErr); err != nil {
		return 0, err
	}
	if err := m.check(p, off); err != nil {
		return 0, err
	}
	if m.writeDelay > 0 {
		time.Sleep(m.writeDelay)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return copy(m.data[off:], p), nil
}

func (m *memBackend) Sync() error {
	m.syncs.Add(1)
	return m.injected(&m.syncErr)
}

func (m *memBackend) Discard(off, n int64) error {
	m.discards.Add(1)
	if err := m.injected(&m.discardErr); err != nil {
		return err
	}
	if off < 0 || n < 0 || off+n > int64(len(m.data)) {
		return fmt.Errorf("memBackend: discard [%d,+%d) out of range (size %d)", off, n, len(m.data))
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	clear(m.data[off : off+n])
	return nil
}

func (m *memBackend) Size() int64 { return int64(len(m.data)) }

// snapshot returns a copy of the contents.
func (m *memBackend) snapshot() []byte {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return append([]byte(nil), m.data...)
}
