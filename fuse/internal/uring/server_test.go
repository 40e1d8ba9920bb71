package uring

import "testing"

func TestParseCPUList(t *testing.T) {
	for _, c := range []struct {
		in   string
		want int
		bad  bool
	}{
		{"0-1\n", 2, false}, {"0", 1, false}, {"0-3,8,10-11", 7, false},
		{"", 0, true}, {"a-b", 0, true}, {"3-1", 0, true},
	} {
		got, err := parseCPUList(c.in)
		if c.bad {
			if err == nil {
				t.Errorf("parseCPUList(%q) = %d, want an error", c.in, got)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("parseCPUList(%q) = %d, %v; want %d", c.in, got, err, c.want)
		}
	}
}

// TestEntriesPerThread: the ring's 1 MiB buffers stay within a budget as
// CPUs grow, and every queue keeps some depth.
func TestEntriesPerThread(t *testing.T) {
	for _, c := range []struct{ cpus, want int }{{1, 32}, {2, 16}, {4, 8}, {8, 4}, {16, 2}, {64, 2}} {
		if got := entriesPerThread(c.cpus); got != c.want {
			t.Errorf("entriesPerThread(%d) = %d, want %d", c.cpus, got, c.want)
		}
	}
}

// TestDevThreads: one /dev/fuse thread per CPU up to a cap; the slots'
// 1 MiB buffers stay within a budget with some depth per thread, and half
// as many spare slots stand in for requests answered on goroutines.
func TestDevThreads(t *testing.T) {
	for _, c := range []struct{ cpus, threads, wait, spare int }{
		{0, 1, 16, 8}, {1, 1, 16, 8}, {2, 2, 16, 8}, {4, 4, 16, 8}, {8, 8, 8, 4}, {16, 16, 4, 2}, {64, 16, 4, 2},
	} {
		if th, w, sp := devThreads(c.cpus); th != c.threads || w != c.wait || sp != c.spare {
			t.Errorf("devThreads(%d) = %d threads × %d waiting + %d spare slots, want %d × %d + %d", c.cpus, th, w, sp, c.threads, c.wait, c.spare)
		}
	}
}

// TestProbeDev: the probe passes wherever io_uring works on Linux 5.11+,
// every time (its ring must be used from the thread that created it).
func TestProbeDev(t *testing.T) {
	if err := Probe(); err != nil {
		t.Skipf("SKIPPED: io_uring unavailable (kernel.io_uring_disabled?): %v", err)
	}
	for range 200 {
		if err := probeDev(); err != nil {
			t.Fatalf("probeDev: %v", err)
		}
	}
}
