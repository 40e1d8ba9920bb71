package fuse

import (
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// TestFioVerify runs fio against the disk: 4 KiB random read/write with
// libaio at iodepth 16, O_DIRECT, every written block verified (crc32c).
func TestFioVerify(t *testing.T) { eachTransport(t, tFioVerify) }

func tFioVerify(t *testing.T) {
	fio, err := exec.LookPath("fio")
	if err != nil {
		t.Skip("SKIPPED: fio is not on PATH: install fio to run the fio smoke test")
	}
	if testing.Short() {
		t.Skip("SKIPPED in -short mode")
	}
	const size = 64 << 20
	s, b, disk := mountMem(t, size, Options{}, nil)
	args := []string{
		"--name=wbcache-smoke",
		"--filename=" + disk,
		"--ioengine=libaio",
		"--iodepth=16",
		"--direct=1",
		"--rw=randrw",
		"--bs=4k",
		"--size=" + "64m",
		"--time_based",
		"--runtime=2",
		"--verify=crc32c",
		"--verify_fatal=1",
		"--verify_dump=0",
		"--aux-path=" + filepath.Dir(s.Mountpoint()),
	}
	out, err := exec.Command(fio, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("fio %v: %v\n%s", args, err, out)
	}
	t.Logf("fio done; backend saw %d writes, %d reads", b.writes.Load(), b.reads.Load())
	if b.writes.Load() == 0 || b.reads.Load() == 0 {
		t.Fatalf("fio did no I/O through the mount:\n%s", out)
	}
}

// TestFioQueueDepthReachesBackend checks that one libaio submitter at
// iodepth 16 gets its writes to the Backend concurrently (CAP_ASYNC_DIO and
// FOPEN_PARALLEL_DIRECT_WRITES at work), not one at a time.
func TestFioQueueDepthReachesBackend(t *testing.T) { eachTransport(t, tFioQueueDepthReachesBackend) }

func tFioQueueDepthReachesBackend(t *testing.T) {
	fio, err := exec.LookPath("fio")
	if err != nil {
		t.Skip("SKIPPED: fio is not on PATH: install fio to run the fio queue-depth test")
	}
	_, b, disk := mountMem(t, 16<<20, Options{}, func(b *memBackend) { b.writeDelay = 500 * time.Microsecond })
	args := []string{
		"--name=wbcache-qd", "--filename=" + disk, "--ioengine=libaio", "--iodepth=16",
		"--direct=1", "--rw=randwrite", "--bs=4k", "--size=16m", "--time_based", "--runtime=1",
	}
	out, err := exec.Command(fio, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("fio %v: %v\n%s", args, err, out)
	}
	if got := b.maxInflight.Load(); got < 8 {
		t.Fatalf("one fio job at iodepth 16: at most %d concurrent backend writes, want >= 8", got)
	}
	t.Logf("max concurrent backend writes: %d", b.maxInflight.Load())
}
