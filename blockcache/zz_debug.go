package blockcache

import (
	"fmt"
	"os"
	"strconv"
)

var dbgLBA = func() int64 {
	v, err := strconv.ParseInt(os.Getenv("WBC_DEBUG_LBA"), 10, 64)
	if err != nil {
		return -1
	}
	return v
}()

func dbg(lba uint64, format string, a ...any) {
	if int64(lba) == dbgLBA {
		fmt.Printf("DBG lba %d: %s\n", lba, fmt.Sprintf(format, a...))
	}
}
