package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wbcache/wbcache/blockcache"
	"golang.org/x/sys/unix"
)

// workload counts what the demo workload did. Each worker owns a slice of
// the disk, so the model (every byte as the acknowledged writes left it)
// needs no locking.
type workload struct {
	writes, writeBytes, reads, syncs, punches atomic.Int64

	// killed is set just before the daemon is killed: a failing request
	// then ends its worker instead of the demo.
	killed atomic.Bool
	mu     sync.Mutex
	// inFlight are the writes and punched holes that had not returned
	// when the daemon died: not acknowledged, so each of their blocks may
	// read as before or as after them.
	inFlight []pendingWrite
}

// pendingWrite is a write (or a punched hole: zeros) that never returned.
type pendingWrite struct {
	off  int64
	data []byte
}

// runWorkload runs demoWorkers goroutines on disk until dur passes,
// showing progress (with dirty, the cache's dirty bytes, if it can tell).
// With kill set, at dur it calls kill while the workers still run and
// waits for them to fail.
func runWorkload(ctx context.Context, out io.Writer, w *workload, diskPath string, dirty func() (int64, bool),
	model []byte, dur time.Duration, seed uint64, kill func() error) error {
	disk, err := os.OpenFile(diskPath, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer disk.Close()
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errs := make([]error, demoWorkers)
	region := int64(len(model)) / demoWorkers
	for i := range demoWorkers {
		wg.Go(func() {
			errs[i] = w.worker(wctx, disk, model, int64(i)*region, int64(i+1)*region, seed, uint64(i))
			if errs[i] != nil {
				cancel()
			}
		})
	}
	finished := make(chan struct{})
	go func() { wg.Wait(); close(finished) }()
	killErr := w.showProgress(out, finished, dirty, dur, func() error {
		if kill == nil {
			cancel()
			return nil
		}
		w.killed.Store(true)
		return kill()
	})
	if err := errors.Join(append(errs, killErr)...); err != nil {
		return err
	}
	if err := context.Cause(ctx); err != nil {
		return fmt.Errorf("workload interrupted: %w", err)
	}
	return nil
}

// showProgress prints a progress line (rewritten on a terminal, one a
// second otherwise) until finished is closed; at dur it calls end once.
func (w *workload) showProgress(out io.Writer, finished <-chan struct{}, dirty func() (int64, bool),
	dur time.Duration, end func() error) error {
	tty := isTerminal(out)
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	deadline := time.NewTimer(dur)
	defer deadline.Stop()
	start, lastLine := time.Now(), time.Now()
	var endErr error
	for running := true; running; {
		select {
		case <-finished:
			running = false
		case <-deadline.C:
			endErr = end()
			continue
		case <-tick.C:
		}
		line := fmt.Sprintf("%4.1fs  writes %d (%s)  reads %d  fsyncs %d  holes %d",
			time.Since(start).Seconds(), w.writes.Load(), formatSize(w.writeBytes.Load()), w.reads.Load(),
			w.syncs.Load(), w.punches.Load())
		if n, ok := dirty(); ok {
			line += "  dirty " + formatSize(n)
		}
		switch {
		case tty:
			fmt.Fprintf(out, "\r\033[K%s", line)
			if !running {
				fmt.Fprintln(out)
			}
		case !running || time.Since(lastLine) >= time.Second:
			fmt.Fprintln(out, line)
			lastLine = time.Now()
		}
	}
	return endErr
}

// demoWorker is one workload goroutine's state.
type demoWorker struct {
	w      *workload
	disk   *os.File
	model  []byte
	lo, hi int64
	rng    *rand.Rand
	data   *rand.ChaCha8
	buf    []byte
	recent []int64 // recently written block offsets, for rewrites
}

// worker runs random operations on [lo, hi) of the disk until ctx ends,
// or until a request fails after the daemon was killed.
func (w *workload) worker(ctx context.Context, disk *os.File, model []byte, lo, hi int64, seed, id uint64) error {
	rng := rand.New(rand.NewPCG(seed, id))
	var key [32]byte
	for i := range 4 {
		v := rng.Uint64()
		for j := range 8 {
			key[i*8+j] = byte(v >> (8 * j))
		}
	}
	dw := &demoWorker{w: w, disk: disk, model: model, lo: lo, hi: hi, rng: rng, data: rand.NewChaCha8(key), buf: make([]byte, 1<<20)}
	for ctx.Err() == nil {
		if err := dw.step(); err != nil {
			if w.killed.Load() {
				return nil
			}
			return err
		}
	}
	return nil
}

// step runs one random operation.
func (dw *demoWorker) step() error {
	const bs = blockcache.BlockSize
	rng, lo, hi := dw.rng, dw.lo, dw.hi
	blocks := (hi - lo) / bs
	switch op := rng.IntN(100); {
	case op < 30: // random 4 KiB write
		return dw.write(lo+rng.Int64N(blocks)*bs, bs)
	case op < 42: // random 64 KiB write
		return dw.write(lo+rng.Int64N(blocks-16)*bs, 64<<10)
	case op < 50: // unaligned write
		n := 1 + rng.IntN(3*bs)
		return dw.write(lo+rng.Int64N(hi-lo-int64(n)), n)
	case op < 62: // rewrite a recent block
		if len(dw.recent) > 0 {
			return dw.write(dw.recent[rng.IntN(len(dw.recent))], bs)
		}
		return nil
	case op < 94:
		return dw.read()
	case op < 99:
		if err := dw.disk.Sync(); err != nil {
			return fmt.Errorf("fsync: %w", err)
		}
		dw.w.syncs.Add(1)
		return nil
	}
	return dw.punch()
}

func (dw *demoWorker) write(off int64, n int) error {
	const bs = blockcache.BlockSize
	p := dw.buf[:n]
	_, _ = dw.data.Read(p)
	if _, err := dw.disk.WriteAt(p, off); err != nil {
		dw.w.unacknowledged(off, p)
		return fmt.Errorf("write of %d bytes at offset %d: %w", n, off, err)
	}
	copy(dw.model[off:], p)
	dw.w.writes.Add(1)
	dw.w.writeBytes.Add(int64(n))
	if len(dw.recent) < 256 {
		dw.recent = append(dw.recent, off&^(bs-1))
	} else {
		dw.recent[dw.rng.IntN(len(dw.recent))] = off &^ (bs - 1)
	}
	return nil
}

// read reads a recent block, a random 64 KiB or a random unaligned range
// and checks it against the model.
func (dw *demoWorker) read() error {
	const bs = blockcache.BlockSize
	rng, lo, hi := dw.rng, dw.lo, dw.hi
	var off int64
	n := bs
	switch {
	case len(dw.recent) > 0 && rng.IntN(2) == 0:
		off = dw.recent[rng.IntN(len(dw.recent))]
	case rng.IntN(2) == 0:
		n = 64 << 10
		off = lo + rng.Int64N((hi-lo)/bs-16)*bs
	default:
		n = 1 + rng.IntN(2*bs)
		off = lo + rng.Int64N(hi-lo-int64(n))
	}
	if _, err := dw.disk.ReadAt(dw.buf[:n], off); err != nil {
		return fmt.Errorf("read of %d bytes at offset %d: %w", n, off, err)
	}
	if i := firstDiff(dw.buf[:n], dw.model[off:off+int64(n)]); i >= 0 {
		return fmt.Errorf("MISMATCH: read through the mount at offset %d: got %#02x, want %#02x", off+int64(i), dw.buf[i], dw.model[off+int64(i)])
	}
	dw.w.reads.Add(1)
	return nil
}

// punch punches a hole of 64 KiB to 1 MiB.
func (dw *demoWorker) punch() error {
	const bs = blockcache.BlockSize
	nb := 16 + dw.rng.Int64N(240)
	off := dw.lo + dw.rng.Int64N((dw.hi-dw.lo)/bs-nb)*bs
	if err := unix.Fallocate(int(dw.disk.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, nb*bs); err != nil {
		dw.w.unacknowledged(off, make([]byte, nb*bs))
		return fmt.Errorf("punch hole of %d bytes at offset %d: %w", nb*bs, off, err)
	}
	clear(dw.model[off : off+nb*bs])
	dw.w.punches.Add(1)
	return nil
}

// unacknowledged records a write that failed (the daemon died under it).
func (w *workload) unacknowledged(off int64, p []byte) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.inFlight = append(w.inFlight, pendingWrite{off: off, data: append([]byte(nil), p...)})
}

// settleInFlight reads, through the remounted disk, each block that a
// write in flight at the kill touched. Not acknowledged, such a write may
// have reached the cache or not: each block must read either as before it
// or as after it, never torn or foreign. The model takes what was found.
func (w *workload) settleInFlight(diskPath string, model []byte) (changed int, err error) {
	const bs = blockcache.BlockSize
	disk, err := os.Open(diskPath)
	if err != nil {
		return 0, err
	}
	defer disk.Close()
	got, after := make([]byte, bs), make([]byte, bs)
	for _, p := range w.inFlight {
		for blk := p.off &^ (bs - 1); blk < p.off+int64(len(p.data)); blk += bs {
			if _, err := disk.ReadAt(got, blk); err != nil {
				return changed, fmt.Errorf("reading block at offset %d: %w", blk, err)
			}
			before := model[blk : blk+bs]
			copy(after, before)
			lo, hi := max(p.off, blk), min(p.off+int64(len(p.data)), blk+bs)
			copy(after[lo-blk:hi-blk], p.data[lo-p.off:hi-p.off])
			switch {
			case firstDiff(got, before) < 0:
			case firstDiff(got, after) < 0:
				copy(before, after)
				changed++
			default:
				return changed, fmt.Errorf("MISMATCH: the block at offset %d, under a write in flight at the kill, reads as neither its old content nor the write's", blk)
			}
		}
	}
	return changed, nil
}
