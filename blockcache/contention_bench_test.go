package blockcache

import (
	"bufio"
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"runtime/pprof"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wbcache/wbcache/layout"
)

// BenchmarkConcurrentWrite: N goroutines write random 4 KiB blocks to the
// engine alone (no FUSE, no destager), as N synchronous writers do through
// the daemon. The cache file is on a tmpfs when /dev/shm exists (so the
// figures are the engine's, not a disk's), the backing file beside it;
// the region is half the cache, so writes neither wait for write-back
// nor evict. Besides writes/s it reports the lock waiting per write from
// the runtime's mutex profile (time goroutines waited for a sync.Mutex or
// RWMutex another held) and block profile (all blocking on sync
// primitives, including condition variables), both counted over the
// benchmark loop only. With -v it logs where the waiting is, by function.
//
//	go test -run '^$' -bench ConcurrentWrite -benchtime 200000x ./blockcache
func BenchmarkConcurrentWrite(b *testing.B) {
	concurrentWrite(b, contentionCache, false)
}

// BenchmarkConcurrentWriteYield is BenchmarkConcurrentWrite with each
// writer giving up its processor between writes (runtime.Gosched), as a
// goroutine serving FUSE requests does when it waits for the next one.
// In BenchmarkConcurrentWrite the writers never wait between writes, so
// with more writers than processors each runs until the scheduler
// preempts it (after 10 ms), most often while it holds its block's
// stripe lock (held for most of a write), and every writer that needs
// that stripe meanwhile waits for the preempted one's next turn, however
// the engine locks: the figures there are mostly those preemptions.
//
//	go test -run '^$' -bench ConcurrentWriteYield -benchtime 200000x ./blockcache
func BenchmarkConcurrentWriteYield(b *testing.B) {
	concurrentWrite(b, contentionCache, true)
}

// BenchmarkConcurrentWriteRAM is BenchmarkConcurrentWrite over a cache
// device in process memory (ramDevice): no system calls, so no waiting in
// the kernel (a buffered write to a file takes the file's inode lock)
// while a write holds its block's lock. What it measures is the engine's
// own locking.
//
//	go test -run '^$' -bench ConcurrentWriteRAM -benchtime 200000x ./blockcache
func BenchmarkConcurrentWriteRAM(b *testing.B) {
	concurrentWrite(b, func(b *testing.B) *Cache {
		ssd := &ramDevice{b: make([]byte, 256<<20)}
		hdd := &ramDevice{b: make([]byte, 1<<30)}
		require.NoError(b, Format(ssd, hdd, FormatOptions{}))
		c, err := Open(ssd, hdd, Options{})
		require.NoError(b, err)
		require.NoError(b, c.SetSettings(layout.Settings{SetMask: layout.SetSeqCutoff}))
		b.Cleanup(func() { c.Close() })
		return c
	}, false)
}

// ramDevice is a device in process memory with no lock of its own: the
// engine never writes a range while another goroutine reads or writes it.
type ramDevice struct{ b []byte }

func (d *ramDevice) ReadAt(p []byte, off int64) (int, error)  { return copy(p, d.b[off:]), nil }
func (d *ramDevice) WriteAt(p []byte, off int64) (int, error) { return copy(d.b[off:], p), nil }
func (d *ramDevice) Sync() error                              { return nil }
func (d *ramDevice) Size() int64                              { return int64(len(d.b)) }
func (d *ramDevice) Zero(off, n int64) error                  { clear(d.b[off : off+n]); return nil }
func (d *ramDevice) Identity() [16]byte                       { return [16]byte{byte(len(d.b) >> 20)} }
func (d *ramDevice) Close() error                             { return nil }

// concurrentWrite runs the benchmark over caches from newCache; with
// yield each writer calls runtime.Gosched between writes.
func concurrentWrite(b *testing.B, newCache func(*testing.B) *Cache, yield bool) {
	for _, n := range []int{1, 4, 16, 64} {
		b.Run(fmt.Sprintf("writers=%d", n), func(b *testing.B) {
			c := newCache(b)
			region := int64(c.SlotCount() / 2)
			prof := startLockProfile()
			b.ResetTimer()
			start := time.Now()
			var wg sync.WaitGroup
			per := b.N / n
			for w := 0; w < n; w++ {
				count := per
				if w == 0 {
					count += b.N % n
				}
				wg.Add(1)
				go func(seed uint64, count int) {
					defer wg.Done()
					rng := rand.New(rand.NewPCG(seed, 7))
					buf := make([]byte, BlockSize)
					for i := 0; i < count; i++ {
						if yield && i > 0 {
							runtime.Gosched()
						}
						buf[0] = byte(i)
						if _, err := c.WriteAt(buf, rng.Int64N(region)*BlockSize); err != nil {
							b.Error(err)
							return
						}
					}
				}(uint64(w)+1, count)
			}
			wg.Wait()
			elapsed := time.Since(start)
			b.StopTimer()
			mutex, block := prof.stop(b)
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "writes/s")
			b.ReportMetric(float64(mutex.total.Nanoseconds())/float64(b.N), "mutex-ns/write")
			b.ReportMetric(float64(block.total.Nanoseconds())/float64(b.N), "block-ns/write")
			st := c.Stats()
			b.Logf("%d writes (%d in place): mutex wait %v (%d contentions), blocked %v", b.N, st.WritesInPlace, mutex.total, mutex.count, block.total)
			for _, f := range mutex.top(6) {
				b.Logf("  mutex %-60s %v", f.name, f.wait)
			}
			for _, f := range block.top(6) {
				b.Logf("  block %-60s %v", f.name, f.wait)
			}
		})
	}
}

// contentionCache is benchCache on a tmpfs where there is one.
func contentionCache(b *testing.B) *Cache {
	dir := b.TempDir()
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		d, err := os.MkdirTemp("/dev/shm", "wbc-bench-")
		require.NoError(b, err)
		b.Cleanup(func() { os.RemoveAll(d) })
		dir = d
	}
	return benchCacheIn(b, dir)
}

// lockProfile turns on the runtime's mutex and block profiles and keeps
// their totals at the start, so stop reports the waiting in between.
type lockProfile struct {
	mutex0, block0 profileTotals
	mutexRate      int
}

type profileTotals struct {
	total time.Duration
	count int64
	byFn  map[string]time.Duration
}

type fnWait struct {
	name string
	wait time.Duration
}

func startLockProfile() *lockProfile {
	p := &lockProfile{mutexRate: runtime.SetMutexProfileFraction(1)}
	runtime.SetBlockProfileRate(1)
	p.mutex0 = readProfile("mutex")
	p.block0 = readProfile("block")
	return p
}

func (p *lockProfile) stop(b *testing.B) (mutex, block profileTotals) {
	mutex = readProfile("mutex").minus(p.mutex0)
	block = readProfile("block").minus(p.block0)
	runtime.SetMutexProfileFraction(p.mutexRate)
	runtime.SetBlockProfileRate(0)
	return mutex, block
}

// readProfile parses the text form (debug=1) of a contention profile:
// a "cycles/second=" header, then per stack "<cycles> <count> @ pcs"
// followed by "#" lines naming its frames. Each stack's wait is charged
// to its innermost frame in package blockcache, the lock's user.
func readProfile(name string) profileTotals {
	var buf bytes.Buffer
	_ = pprof.Lookup(name).WriteTo(&buf, 1)
	t := profileTotals{byFn: map[string]time.Duration{}}
	cyclesPerSec := 1.0
	var cur time.Duration
	charged := true
	sc := bufio.NewScanner(&buf)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "cycles/second="):
			cyclesPerSec, _ = strconv.ParseFloat(strings.TrimPrefix(line, "cycles/second="), 64)
		case strings.Contains(line, " @ "):
			f := strings.Fields(line)
			cycles, _ := strconv.ParseFloat(f[0], 64)
			count, _ := strconv.ParseInt(f[1], 10, 64)
			cur = time.Duration(cycles / cyclesPerSec * 1e9)
			t.total += cur
			t.count += count
			charged = false
		case strings.HasPrefix(line, "#") && !charged:
			f := strings.Fields(line)
			if len(f) >= 3 && strings.Contains(f[2], "/blockcache.") {
				t.byFn[f[2][strings.LastIndex(f[2], "/")+1:]] += cur
				charged = true
			}
		}
	}
	return t
}

func (t profileTotals) minus(o profileTotals) profileTotals {
	r := profileTotals{total: t.total - o.total, count: t.count - o.count, byFn: map[string]time.Duration{}}
	for k, v := range t.byFn {
		if d := v - o.byFn[k]; d > 0 {
			r.byFn[k] = d
		}
	}
	return r
}

func (t profileTotals) top(n int) []fnWait {
	var fs []fnWait
	for k, v := range t.byFn {
		fs = append(fs, fnWait{k, v})
	}
	sort.Slice(fs, func(i, j int) bool { return fs[i].wait > fs[j].wait })
	if len(fs) > n {
		fs = fs[:n]
	}
	return fs
}
