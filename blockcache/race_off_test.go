//go:build !race

package blockcache

const raceDetector = false
