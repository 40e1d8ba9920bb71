package device

import (
	"sync"
	"testing"
	"time"
)

func TestHDDModelAccounting(t *testing.T) {
	h := NewHDDModel(NewMem(1<<30, memID))
	h.Bandwidth = 100 << 20 // 1 MiB costs 10 ms
	const mib = 1 << 20
	buf := make([]byte, mib)
	ms := time.Millisecond

	steps := []struct {
		name string
		do   func() error
		want time.Duration // cost of this step
	}{
		{"sequential from 0", func() error { _, err := h.WriteAt(buf, 0); return err }, 10 * ms},
		{"continues at head", func() error { _, err := h.ReadAt(buf, mib); return err }, 10 * ms},
		{"short forward skip", func() error { _, err := h.WriteAt(buf, 2*mib+4096); return err }, 2*ms + 10*ms},
		{"skip of exactly ShortSkip seeks", func() error { _, err := h.WriteAt(buf, 3*mib+4096+64<<10); return err }, 8*ms + 10*ms},
		{"backwards seeks", func() error { _, err := h.ReadAt(buf, 0); return err }, 8*ms + 10*ms},
		{"sync", h.Sync, 500 * time.Microsecond},
		{"zero is a write", func() error { return h.Zero(mib, mib) }, 10 * ms},
		{"far forward seeks", func() error { _, err := h.WriteAt(buf, 512*mib); return err }, 8*ms + 10*ms},
		{"failed op is free", func() error { h.WriteAt(buf, 1<<30); return nil }, 0},
	}
	var total time.Duration
	for _, s := range steps {
		if err := s.do(); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		total += s.want
		if got := h.Elapsed(); got != total {
			t.Fatalf("after %s: Elapsed %v, want %v", s.name, got, total)
		}
	}
	want := HDDOps{Reads: 2, Writes: 4, Zeros: 1, Syncs: 1, Seeks: 3, ShortSkips: 1, Bytes: 7 * mib}
	if got := h.Ops(); got != want {
		t.Errorf("Ops = %+v, want %+v", got, want)
	}
	if h.SeqBandwidth() != 100<<20 {
		t.Errorf("SeqBandwidth = %v", h.SeqBandwidth())
	}

	h.Reset()
	if h.Elapsed() != 0 || h.Ops() != (HDDOps{}) {
		t.Error("Reset left state behind")
	}
	// The head is back at 0.
	h.WriteAt(buf, 0)
	if h.Ops().Seeks != 0 {
		t.Error("write at 0 after Reset seeked")
	}
}

func TestHDDModelDefaults(t *testing.T) {
	h := NewHDDModel(NewMem(17<<20, memID))
	if h.SeekTime != 8*time.Millisecond || h.RotationalTime != 2*time.Millisecond ||
		h.ShortSkip != 64<<10 || h.Bandwidth != 170<<20 || h.SyncTime != 500*time.Microsecond {
		t.Errorf("defaults: %+v", h)
	}
	// A sequential stream costs only transfer time at the bandwidth:
	// 17 MiB of 64 KiB writes take 100 ms.
	buf := make([]byte, 64<<10)
	for i := range int64(17 << 4) {
		h.WriteAt(buf, i*int64(len(buf)))
	}
	if got, want := h.Elapsed(), 100*time.Millisecond; got != want {
		t.Errorf("sequential Elapsed %v, want %v", got, want)
	}
	if h.Size() != 17<<20 || h.Identity() != memID || h.Device() == nil {
		t.Error("Size, Identity or Device not passed through")
	}
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	wantErr(t, "sync after close", h.Sync(), ErrClosed)
	if h.Ops().Syncs != 0 {
		t.Error("failed sync was counted")
	}
}

func TestHDDModelConcurrent(t *testing.T) {
	h := NewHDDModel(NewMem(1<<20, memID))
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			buf := make([]byte, 512)
			for i := range 25 {
				h.WriteAt(buf, int64(g*25+i)*512)
				h.Elapsed()
			}
			h.Sync()
		})
	}
	wg.Wait()
	o := h.Ops()
	if o.Writes != 100 || o.Syncs != 4 || o.Bytes != 100*512 {
		t.Errorf("Ops = %+v", o)
	}
}
