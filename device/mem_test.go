package device

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"sync"
	"testing"
)

var memID = [16]byte{1, 2, 3}

func TestMemBasics(t *testing.T) {
	m := NewMem(1<<16, memID)
	if m.Size() != 1<<16 || m.Identity() != memID {
		t.Fatalf("Size %d Identity %x", m.Size(), m.Identity())
	}
	data := pattern(3000, 1)
	mustWrite(t, m, data, 100)
	if got := mustRead(t, m, 100, 3000); !bytes.Equal(got, data) {
		t.Error("read back differs")
	}
	if err := m.Zero(200, 100); err != nil {
		t.Fatal(err)
	}
	if got := mustRead(t, m, 200, 100); !allZero(got) {
		t.Error("Zero did not zero")
	}
	if m.Unsynced() != 2 {
		t.Errorf("Unsynced = %d, want 2", m.Unsynced())
	}
	if err := m.Sync(); err != nil {
		t.Fatal(err)
	}
	if m.Unsynced() != 0 {
		t.Errorf("Unsynced after Sync = %d", m.Unsynced())
	}
	want := MemStats{Reads: 2, Writes: 1, Zeros: 1, Syncs: 1, BytesRead: 3100, BytesWritten: 3000}
	if s := m.Stats(); s != want {
		t.Errorf("Stats = %+v, want %+v", s, want)
	}

	wantErr(t, "read past end", second(m.ReadAt(make([]byte, 2), 1<<16-1)), ErrOutOfRange)
	wantErr(t, "write negative", second(m.WriteAt(make([]byte, 2), -1)), ErrOutOfRange)
	wantErr(t, "zero past end", m.Zero(1<<16, 1), ErrOutOfRange)

	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	wantErr(t, "read", second(m.ReadAt(make([]byte, 1), 0)), ErrClosed)
	wantErr(t, "write", second(m.WriteAt(make([]byte, 1), 0)), ErrClosed)
	wantErr(t, "zero", m.Zero(0, 1), ErrClosed)
	wantErr(t, "sync", m.Sync(), ErrClosed)
	wantErr(t, "close", m.Close(), ErrClosed)
}

// TestMemCrashProcessKeepsEverything: a process crash image holds every
// write, synced or not, with nothing pending, whether it is built in new
// memory (CrashProcess, or CrashProcessInto a Mem of another size) or in
// a used Mem of the same size, which comes back open; writing it does
// not reach the original.
func TestMemCrashProcessKeepsEverything(t *testing.T) {
	for _, into := range []string{"new", "same size", "other size"} {
		m := NewMem(1<<16, memID)
		mustWrite(t, m, pattern(5000, 1), 0)
		m.Sync()
		mustWrite(t, m, pattern(5000, 2), 3000)
		m.Zero(9000, 10)
		m.Close() // closing neither syncs nor prevents a crash image

		var c *Mem
		switch into {
		case "new":
			c = m.CrashProcess()
		case "same size":
			dst := NewMem(1<<16, [16]byte{7})
			mustWrite(t, dst, pattern(1<<16, 3), 0)
			dst.Close()
			if c = m.CrashProcessInto(dst); c != dst {
				t.Fatal("same size: the image did not land in dst")
			}
		case "other size":
			c = m.CrashProcessInto(NewMem(1<<12, memID))
		}
		if c.Identity() != memID || c.Size() != m.Size() || c.Unsynced() != 0 {
			t.Fatalf("%s: crash image: identity %x size %d unsynced %d", into, c.Identity(), c.Size(), c.Unsynced())
		}
		want := make([]byte, 1<<16)
		copy(want, pattern(5000, 1))
		copy(want[3000:], pattern(5000, 2))
		if got := mustRead(t, c, 0, 1<<16); !bytes.Equal(got, want) {
			t.Errorf("%s: the crash image lost data", into)
		}
		mustWrite(t, c, []byte{0}, 0)
		if m.image[0] == 0 {
			t.Errorf("%s: writing the crash image changed the original", into)
		}
	}
}

// TestMemPowerCutInto: into a used Mem of the same size, a power cut
// leaves exactly the image PowerCut makes with the same random choices.
func TestMemPowerCutInto(t *testing.T) {
	m := NewMem(1<<14, memID)
	mustWrite(t, m, pattern(5000, 1), 0)
	m.Sync()
	mustWrite(t, m, pattern(3000, 2), 1000)
	m.Zero(2500, 3000)
	mustWrite(t, m, pattern(700, 3), 9001)
	dst := NewMem(1<<14, [16]byte{7})
	for seed := range uint64(50) {
		mustWrite(t, dst, pattern(1<<14, 4), 0)
		want := mustRead(t, m.PowerCut(rand.New(rand.NewPCG(seed, 9))), 0, 1<<14)
		got := m.PowerCutInto(dst, rand.New(rand.NewPCG(seed, 9)))
		if got != dst || got.Unsynced() != 0 || got.Identity() != memID {
			t.Fatalf("seed %d: not reset into dst (unsynced %d)", seed, got.Unsynced())
		}
		if !bytes.Equal(mustRead(t, got, 0, 1<<14), want) {
			t.Fatalf("seed %d: the image differs from PowerCut's", seed)
		}
	}
}

func TestMemSyncedSurvivesPowerCut(t *testing.T) {
	for seed := range uint64(100) {
		m := NewMem(1<<16, memID)
		synced := pattern(8000, 1)
		mustWrite(t, m, synced, 0)
		m.Zero(4000, 1000)
		m.Sync()
		mustWrite(t, m, pattern(9000, 2), 10000)
		m.Zero(30000, 5000)

		p := m.PowerCut(rand.New(rand.NewPCG(seed, 1)))
		want := append([]byte(nil), synced...)
		clear(want[4000:5000])
		if got := mustRead(t, p, 0, 8000); !bytes.Equal(got, want) {
			t.Fatalf("seed %d: synced data damaged by power cut", seed)
		}
		if p.Unsynced() != 0 || p.Identity() != memID {
			t.Fatalf("seed %d: unsynced %d identity %x", seed, p.Unsynced(), p.Identity())
		}
	}
}

// TestMemReadDurable: ReadDurable returns every byte as of the last Sync,
// under overlapping unsynced writes and zeroes, and reads see them all.
func TestMemReadDurable(t *testing.T) {
	m := NewMem(1<<16, memID)
	synced := pattern(20000, 1)
	mustWrite(t, m, synced, 0)
	m.Zero(4000, 1000)
	m.Sync()
	durable := append([]byte(nil), synced...)
	clear(durable[4000:5000])
	durable = append(durable, make([]byte, 1<<16-len(durable))...)
	mustWrite(t, m, pattern(9000, 2), 3000) // over the zeroed range
	m.Zero(6000, 20000)                     // over that write and past the synced data
	mustWrite(t, m, pattern(100, 3), 7000)
	for _, r := range [][2]int64{{0, 1 << 16}, {3500, 100}, {5999, 2}, {7050, 10}, {19990, 20}, {65535, 1}, {0, 0}} {
		got := make([]byte, r[1])
		if n, err := m.ReadDurable(got, r[0]); err != nil || n != int(r[1]) {
			t.Fatalf("ReadDurable(%d bytes at %d) = %d, %v", r[1], r[0], n, err)
		}
		if !bytes.Equal(got, durable[r[0]:r[0]+r[1]]) {
			t.Errorf("ReadDurable(%d bytes at %d) differs from the synced image", r[1], r[0])
		}
	}
	if got := mustRead(t, m, 7000, 100); !bytes.Equal(got, pattern(100, 3)) {
		t.Error("ReadDurable changed what reads see")
	}
	if _, err := m.ReadDurable(make([]byte, 2), 1<<16-1); !errors.Is(err, ErrOutOfRange) {
		t.Errorf("ReadDurable past the end: %v, want ErrOutOfRange", err)
	}
	m.Sync()
	got := make([]byte, 100)
	if _, err := m.ReadDurable(got, 7000); err != nil || !bytes.Equal(got, pattern(100, 3)) {
		t.Errorf("after Sync, ReadDurable = %v; want the last write", err)
	}
}

// sectorOutcome says what became of one unsynced write across its sectors.
type sectorOutcome int

const (
	outcomeOld sectorOutcome = iota
	outcomeNew
	outcomeTorn
)

func TestMemPowerCutOutcomes(t *testing.T) {
	const off, n = 700, 3000 // unaligned: partial first and last sectors
	old := pattern(1<<14, 1)
	neu := pattern(n, 2)
	seen := map[sectorOutcome]int{}
	for seed := range uint64(300) {
		m := NewMem(1<<14, memID)
		mustWrite(t, m, old, 0)
		m.Sync()
		mustWrite(t, m, neu, off)
		if m.Unsynced() != 1 {
			t.Fatalf("Unsynced = %d", m.Unsynced())
		}
		got := mustRead(t, m.PowerCut(rand.New(rand.NewPCG(seed, 2))), 0, 1<<14)

		if !bytes.Equal(got[:off], old[:off]) || !bytes.Equal(got[off+n:], old[off+n:]) {
			t.Fatalf("seed %d: bytes outside the write changed", seed)
		}
		// Each sector's part of the write is wholly old or wholly new.
		var kept, lost int
		for s := int64(off - off%tornSectorSize); s < off+n; s += tornSectorSize {
			lo, hi := max(s, off), min(s+tornSectorSize, off+n)
			switch {
			case bytes.Equal(got[lo:hi], neu[lo-off:hi-off]):
				kept++
			case bytes.Equal(got[lo:hi], old[lo:hi]):
				lost++
			default:
				t.Fatalf("seed %d: sector at %d is neither old nor new", seed, s)
			}
		}
		switch {
		case lost == 0:
			seen[outcomeNew]++
		case kept == 0:
			seen[outcomeOld]++
		default:
			seen[outcomeTorn]++
		}
	}
	for _, o := range []sectorOutcome{outcomeOld, outcomeNew, outcomeTorn} {
		if seen[o] == 0 {
			t.Errorf("outcome %d never happened in 300 power cuts: %v", o, seen)
		}
	}
}

func TestMemPowerCutReplaysInOrder(t *testing.T) {
	// Two overlapping unsynced writes and a Zero over a synced image: each
	// byte must end up with a value one of them (or the durable image)
	// gave it, and where the later one's sector survived, the later one's.
	const size = 4096
	old := pattern(size, 1)
	a, b := pattern(2048, 2), pattern(2048, 3)
	for seed := range uint64(200) {
		m := NewMem(size, memID)
		mustWrite(t, m, old, 0)
		m.Sync()
		mustWrite(t, m, a, 0)
		mustWrite(t, m, b, 1024)
		m.Zero(1536, 1024)
		got := mustRead(t, m.PowerCut(rand.New(rand.NewPCG(seed, 3))), 0, size)
		for i := range size {
			ok := got[i] == old[i] ||
				(i < 2048 && got[i] == a[i]) ||
				(i >= 1024 && i < 3072 && got[i] == b[i-1024]) ||
				(i >= 1536 && i < 2560 && got[i] == 0)
			if !ok {
				t.Fatalf("seed %d: byte %d = %d comes from no write", seed, i, got[i])
			}
		}
	}
}

func TestMemConcurrent(t *testing.T) {
	m := NewMem(1<<20, memID)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			off := int64(g) << 16
			data := pattern(4096, byte(g))
			for i := range 50 {
				if _, err := m.WriteAt(data, off+int64(i%16)*4096); err != nil {
					t.Error(err)
					return
				}
				if _, err := m.ReadAt(make([]byte, 4096), off); err != nil {
					t.Error(err)
					return
				}
				switch i % 10 {
				case 3:
					m.Sync()
				case 5:
					m.Zero(off, 512)
				case 7:
					m.PowerCut(rand.New(rand.NewPCG(uint64(g), uint64(i))))
					m.CrashProcess()
					m.Unsynced()
					m.Stats()
				}
			}
		})
	}
	wg.Wait()
	if s := m.Stats(); s.Writes != 8*50 {
		t.Errorf("Writes = %d, want 400", s.Writes)
	}
}
