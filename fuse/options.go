package fuse

import (
	"fmt"
	"log/slog"

	gofuse "github.com/hanwen/go-fuse/v2/fuse"
)

// Options configure Mount.
type Options struct {
	// AllowOther lets other users access the mount (allow_other); the mode
	// bits (0644 for disk, 0444 for stats) still apply.
	AllowOther bool
	// Debug logs every FUSE request and reply (very verbose).
	Debug bool
	// FsName is the source shown in /proc/mounts; default "wbcache".
	FsName string
	// Stats, if non-nil, is served as the read-only file MOUNTPOINT/stats.
	// It is called when the file is opened; the bytes it returns are what
	// that open file reads. It may be called concurrently.
	Stats func() []byte
	// SelfAccess: the serving process itself opens files on the mount
	// (tests, the demo). Mount then runs go-fuse's poll hack, which tells
	// the kernel early that POLL is unsupported so the Go netpoller of this
	// process cannot deadlock on its own mount. A daemon that never touches
	// its mount leaves it off: killed during the hack's open, the process
	// could never exit (a thread would wait for its own dead server).
	SelfAccess bool
	// Logger receives errors and warnings; default slog.Default().
	Logger *slog.Logger
	// IOUring chooses the request transport: FUSE over io_uring or
	// read/write on /dev/fuse (see IOUringMode).
	IOUring IOUringMode
	// UnbatchedDev: through /dev/fuse, read each request and send each
	// reply with a system call of its own (go-fuse's readers), even where
	// io_uring could batch them (doc.go, "Transports").
	UnbatchedDev bool
}

// IOUringMode chooses between FUSE over io_uring and /dev/fuse.
type IOUringMode int

const (
	// IOUringAuto uses io_uring when the kernel offers it (the fuse
	// module's enable_uring parameter is Y) and the daemon runs as root,
	// and /dev/fuse otherwise.
	IOUringAuto IOUringMode = iota
	// IOUringOff always uses /dev/fuse.
	IOUringOff
	// IOUringOn turns on enable_uring if needed and fails the mount if
	// the ring cannot be set up.
	IOUringOn
)

// ParseIOUringMode parses "auto", "on" or "off".
func ParseIOUringMode(s string) (IOUringMode, error) {
	switch s {
	case "auto":
		return IOUringAuto, nil
	case "on":
		return IOUringOn, nil
	case "off":
		return IOUringOff, nil
	}
	return 0, fmt.Errorf("unknown io_uring mode %q (want auto, on or off)", s)
}

func (m IOUringMode) String() string {
	switch m {
	case IOUringOn:
		return "on"
	case IOUringOff:
		return "off"
	}
	return "auto"
}

// Mount parameters; doc.go explains them.
const (
	maxWrite      = 1 << 20
	maxReadAhead  = 1 << 20
	maxBackground = 128
)

// withDefaults fills in the Logger and FsName left empty.
func (o Options) withDefaults() Options {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.FsName == "" {
		o.FsName = "wbcache"
	}
	return o
}

// goFuseOptions are the go-fuse mount options for opts (defaults filled
// in); doc.go says why each is set.
func goFuseOptions(opts Options, root bool) *gofuse.MountOptions {
	// go-fuse logs through a *log.Logger: route it into slog. Its debug
	// trace is wanted when Debug is set, so it must not be filtered out.
	goFuseLevel := slog.LevelWarn
	if opts.Debug {
		goFuseLevel = slog.LevelInfo
	}
	return &gofuse.MountOptions{
		AllowOther:    opts.AllowOther,
		Options:       []string{"default_permissions"},
		MaxBackground: maxBackground,
		MaxWrite:      maxWrite,
		MaxReadAhead:  maxReadAhead,
		FsName:        opts.FsName,
		Name:          "wbcache",
		Debug:         opts.Debug,
		Logger:        slog.NewLogLogger(opts.Logger.With("component", "go-fuse").Handler(), goFuseLevel),
		// As root, mount(2) directly and report its error; otherwise try
		// it and fall back to the fusermount helper.
		DirectMount:          true,
		DirectMountStrict:    root,
		EnableLocks:          false,
		DisableXAttrs:        true,
		DisableReadDirPlus:   true,
		DisableSplice:        true,
		ExtraCapabilities:    gofuse.CAP_ASYNC_DIO,
		DisabledCapabilities: gofuse.CAP_WRITEBACK_CACHE,
	}
}
