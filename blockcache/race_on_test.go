//go:build race

package blockcache

// raceDetector: the race detector slows the engine about tenfold, so the
// long randomized tests run fewer cycles under it (scripts/powercut.sh
// runs them at length without it).
const raceDetector = true
