package crashtest

import (
	"flag"
	"fmt"
	"os"
	"testing"
)

// The crash loops' flags. Without -crash.n each test makes a short smoke
// run at quick sizes, so that `go test ./...` stays fast; the scripts pass
// these flags for long runs.
var (
	flagN        = flag.Int("crash.n", 0, "iterations (rounds, power cuts) of each crash loop; 0: a short smoke run at quick sizes")
	flagSeed     = flag.Uint64("crash.seed", 0, "random seed (0: time based; printed)")
	flagVariant  = flag.String("crash.variant", "all", "TestKill9Loop: plain, heavy-destage, checkpoint, recovery, mode-switch, drain-around or all (rotates)")
	flagQuick    = flag.Bool("crash.quick", false, "small sizes and short write phases (the smoke run always uses them)")
	flagSize     = flag.String("crash.size", "", "backing size = disk size (kill -9: 2G, quick 512M; ext4: 2G, quick 1G; power cut: 512M, quick 256M)")
	flagCache    = flag.String("crash.cache-size", "", "cache size (kill -9 and ext4: 256M, quick 64M; power cut: 128M, quick 32M)")
	flagKeep     = flag.Bool("crash.keep", false, "keep the work directory (it is always kept when the test fails)")
	flagStop     = flag.Bool("crash.stop-on-failure", false, "stop at the first failed iteration")
	flagFailures = flag.String("crash.failures", "", "where failed iterations are saved (default WORK/failures)")
	flagOrder    = flag.String("crash.order", "", "write-back order of every daemon the loops mount: ordered or unordered (default: the daemon's default)")
	flagPCArgs   = flag.String("crash.powercut-args", "", "TestPowerCutLoop: more options for wbcache-powercut run, space separated (e.g. \"--order armed\")")
)

// binDir holds the binaries built for this test run; TestMain removes it.
var binDir string

func TestMain(m *testing.M) {
	flag.Parse()
	switch *flagOrder {
	case "", "ordered", "unordered":
	default:
		// Every daemon would refuse it: say so once instead of failing
		// each iteration.
		fmt.Fprintf(os.Stderr, "-crash.order %q: want ordered or unordered, or no flag for the daemon's default\n", *flagOrder)
		os.Exit(2)
	}
	dir, err := os.MkdirTemp("", "wbc-crashtest-bin.")
	if err != nil {
		panic(err)
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// loopSize is the iteration count and whether to use quick sizes: the
// flags, or smoke iterations at quick sizes.
func loopSize(smoke int) (n int, quick bool) {
	if *flagN > 0 {
		return *flagN, *flagQuick
	}
	return smoke, true
}

// sizeFlag is -crash.size or -crash.cache-size, or the default for the
// run's sizes.
func sizeFlag(t *testing.T, v *string, full, quick string, isQuick bool) int64 {
	t.Helper()
	s := *v
	if s == "" {
		s = full
		if isQuick {
			s = quick
		}
	}
	n, err := ParseSize(s)
	if err != nil {
		t.Fatalf("-crash.size / -crash.cache-size: %v", err)
	}
	return n
}
