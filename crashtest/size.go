package crashtest

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// ErrBadSize is returned by ParseSize.
var ErrBadSize = errors.New("bad size")

// ParseSize reads a size as the wbcache command does: bytes, or a number
// with a K, M, G or T suffix in KiB units (512M, 2G).
func ParseSize(v string) (int64, error) {
	u := strings.ToUpper(strings.TrimSpace(v))
	mult := int64(1)
	u = strings.TrimSuffix(strings.TrimSuffix(u, "IB"), "B")
	if u != "" {
		switch u[len(u)-1] {
		case 'K':
			mult = 1 << 10
		case 'M':
			mult = 1 << 20
		case 'G':
			mult = 1 << 30
		case 'T':
			mult = 1 << 40
		}
		if mult > 1 {
			u = u[:len(u)-1]
		}
	}
	n, err := strconv.ParseInt(u, 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("%w %q: want a positive number with an optional K, M, G or T suffix", ErrBadSize, v)
	}
	return n * mult, nil
}
