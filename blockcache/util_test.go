package blockcache

import (
	"fmt"
	"os"
)

func removeFile(p string) error { return os.Remove(p) }

func typeName(v any) string { return fmt.Sprintf("%T", v) }
