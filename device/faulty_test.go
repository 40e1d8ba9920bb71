package device

import (
	"errors"
	"sync"
	"testing"
)

// workload issues a fixed mix of operations and returns the first error.
func workload(d Device) error {
	buf := make([]byte, 512)
	steps := []func() error{
		func() error { _, err := d.WriteAt(buf, 0); return err },
		func() error { _, err := d.ReadAt(buf, 0); return err },
		func() error { _, err := d.WriteAt(buf, 512); return err },
		func() error { return d.Sync() },
		func() error { return d.Zero(1024, 512) },
		func() error { _, err := d.WriteAt(buf, 2048); return err },
		func() error { return d.Sync() },
	}
	for _, step := range steps {
		if err := step(); err != nil {
			return err
		}
	}
	return nil
}

func TestFaultyCountsAndPassesThrough(t *testing.T) {
	m := NewMem(4096, memID)
	f := NewFaulty(m)
	if err := workload(f); err != nil {
		t.Fatal(err)
	}
	if f.Count() != 7 || f.Injected() != 0 {
		t.Errorf("Count %d Injected %d, want 7 and 0", f.Count(), f.Injected())
	}
	if f.Size() != 4096 || f.Identity() != memID || f.Device() != m {
		t.Error("Size, Identity or Device not passed through")
	}
	if s := m.Stats(); s.Writes != 3 || s.Reads != 1 || s.Syncs != 2 || s.Zeros != 1 {
		t.Errorf("wrapped device saw %+v", s)
	}
	f.Track(OpWrite | OpSync)
	workload(f)
	if f.Count() != 5 {
		t.Errorf("Count of writes and syncs = %d, want 5", f.Count())
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	wantErr(t, "after Close", f.Sync(), ErrClosed)
}

func TestFaultyFailAtEachOp(t *testing.T) {
	const ops = OpWrite | OpSync
	f := NewFaulty(NewMem(4096, memID))
	f.Track(ops)
	workload(f)
	total := f.Count()
	for n := range total {
		m := NewMem(4096, memID)
		f := NewFaulty(m)
		f.FailAt(n, ops, false)
		err := workload(f)
		wantErr(t, "workload", err, ErrInjected)
		if f.Injected() != 1 || f.Count() != n+1 {
			t.Errorf("n=%d: Injected %d Count %d", n, f.Injected(), f.Count())
		}
		// The failed op was not performed; the ones before were.
		s := m.Stats()
		if performed := s.Writes + s.Syncs; performed != n {
			t.Errorf("n=%d: %d writes and syncs reached the device", n, performed)
		}
	}
}

func TestFaultyStickyAndDisarm(t *testing.T) {
	m := NewMem(4096, memID)
	f := NewFaulty(m)
	f.FailAt(1, OpWrite, true)
	buf := make([]byte, 10)
	if _, err := f.WriteAt(buf, 0); err != nil {
		t.Fatalf("write 0: %v", err)
	}
	if _, err := f.ReadAt(buf, 0); err != nil {
		t.Fatalf("reads are not counted, yet: %v", err)
	}
	for i := range 3 {
		if _, err := f.WriteAt(buf, 0); !errors.Is(err, ErrInjected) {
			t.Errorf("sticky write %d: %v", i+1, err)
		}
	}
	if f.Count() != 4 || f.Injected() != 3 {
		t.Errorf("Count %d Injected %d", f.Count(), f.Injected())
	}
	f.Disarm()
	if _, err := f.WriteAt(buf, 0); err != nil {
		t.Errorf("after Disarm: %v", err)
	}
	if f.Count() != 5 {
		t.Errorf("Disarm stopped counting: %d", f.Count())
	}

	// Not sticky: only the n-th fails.
	f.FailAt(0, OpAll, false)
	wantErr(t, "first op", f.Sync(), ErrInjected)
	if err := f.Sync(); err != nil {
		t.Errorf("second op: %v", err)
	}
}

func TestFaultyFailIf(t *testing.T) {
	m := NewMem(1<<16, memID)
	f := NewFaulty(m)
	// Fail writes and zeroes touching [8192, 12288).
	f.FailIf(func(op Op, off, n int64) bool {
		return op&(OpWrite|OpZero) != 0 && off < 12288 && off+n > 8192
	})
	buf := pattern(4096, 1)
	if _, err := f.WriteAt(buf, 0); err != nil {
		t.Errorf("write outside the range: %v", err)
	}
	wantErr(t, "write overlapping the range", second(f.WriteAt(buf, 6000)), ErrInjected)
	wantErr(t, "zero inside the range", f.Zero(9000, 10), ErrInjected)
	if _, err := f.ReadAt(buf, 8192); err != nil {
		t.Errorf("read inside the range: %v", err)
	}
	if got := mustRead(t, m, 6000, 4096); !allZero(got) {
		t.Error("failed write reached the device")
	}
	f.FailIf(nil)
	if _, err := f.WriteAt(buf, 8192); err != nil {
		t.Errorf("after FailIf(nil): %v", err)
	}
	f.FailIf(func(Op, int64, int64) bool { return true })
	f.Disarm()
	if err := f.Sync(); err != nil {
		t.Errorf("Disarm left FailIf armed: %v", err)
	}
}

func TestFaultyConcurrent(t *testing.T) {
	f := NewFaulty(NewMem(1<<16, memID))
	f.FailAt(100, OpWrite, false)
	var wg sync.WaitGroup
	var mu sync.Mutex
	failed := 0
	for g := range 8 {
		wg.Go(func() {
			buf := make([]byte, 64)
			for range 50 {
				if _, err := f.WriteAt(buf, int64(g)*64); err != nil {
					mu.Lock()
					failed++
					mu.Unlock()
				}
				f.ReadAt(buf, 0)
			}
		})
	}
	wg.Wait()
	if failed != 1 || f.Count() != 400 || f.Injected() != 1 {
		t.Errorf("failed %d, Count %d, Injected %d; want 1, 400, 1", failed, f.Count(), f.Injected())
	}
}

func TestOpString(t *testing.T) {
	for op, want := range map[Op]string{OpRead: "read", OpWrite | OpSync: "write|sync", OpAll: "read|write|sync|zero", 0: "none"} {
		if op.String() != want {
			t.Errorf("%d.String() = %q, want %q", op, op.String(), want)
		}
	}
}
