package main

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"syscall"
	"time"

	"github.com/wbcache/wbcache/fuse"
)

const mountAbout = `
Serves the cache as MOUNTPOINT/disk (a file of the backing device's size)
in the foreground, plus MOUNTPOINT/stats (a JSON status snapshot). When
ready it prints one line to stdout:

  wbcache: serving MOUNTPOINT/disk (SIZE, mode MODE)

It stops on SIGTERM or SIGINT, on 'wbcache stop MOUNTPOINT', or when
MOUNTPOINT is unmounted from outside (umount MOUNTPOINT): it unmounts,
lets write-back runs in flight finish, writes a checkpoint, marks the
cache clean and exits 0. Dirty blocks stay
in the cache (it is persistent); 'wbcache flush' or 'wbcache detach' write
them back. If the mount is still in use when a signal arrives (a loop
device on the disk), it is detached lazily and the daemon waits for the
last user; a second signal (or 'wbcache stop --force') stops it anyway.

MOUNTPOINT must be an empty directory (--nonempty mounts over files,
hiding them) that no other wbcache serves; both are checked before the
cache is opened. /proc/mounts shows the mount as type fuse.wbcache with
the cache path as its source. A cache whose data area is larger than the
backing device draws a warning in the log.

Under systemd (Type=notify, $NOTIFY_SOCKET set) it sends READY=1 once
MOUNTPOINT/disk serves, a STATUS= line with the dirty bytes every 10
seconds, and STOPPING=1 when it stops (scripts/wbcache.service).

A dead mount left at MOUNTPOINT by a daemon killed with SIGKILL is cleaned
up first. The cache device is opened buffered and locked, the backing
device with O_DIRECT and locked: a second mount of either is refused.

Mode and policy options given here override the settings saved in the
cache's superblock and are saved; options not given keep the saved ones
(see 'wbcache set --help' for what each does).

The control socket (for status, flush, mode, set, stop, list) is
/run/wbcache/HASH.sock, or $TMPDIR/wbcache-UID/HASH.sock when /run is not
writable. Nothing listens on TCP unless --metrics is given.`

func runMount(args []string, out io.Writer) error {
	cfg, err := parseMount(args, out)
	if err != nil {
		return err
	}
	notify, err := newNotifier(os.Getenv("NOTIFY_SOCKET"), cfg.log)
	if err != nil {
		cfg.log.Warn("not telling systemd about readiness", "err", err)
	}
	defer notify.close()
	cfg.notify = notify

	// Catch signals before anything is mounted, so an early SIGTERM still
	// unmounts cleanly.
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)

	d, err := startDaemon(cfg)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "wbcache: serving %s (%s, mode %s)\n", d.diskPath(), formatSize(d.cache.Size()), d.cache.Mode())
	if d.metrics != nil {
		d.log.Info("metrics endpoint", "url", "http://"+d.metrics.addr+"/metrics")
	}
	d.log.Info("serving", "disk", d.diskPath(), "control_socket", d.ctl.path, "gomaxprocs", runtime.GOMAXPROCS(0),
		"fuse_transport", d.transport())
	d.resumeDrain()
	if notify != nil {
		notify.ready(d.servingStatus())
		tick := time.NewTicker(notifyInterval)
		defer tick.Stop()
		go notify.reportStatus(d.ctx, tick.C, d.servingStatus)
	}

	waitForStop(d, sigs)
	if err := d.stop(); err != nil {
		return err
	}
	d.log.Info(stoppedMessage(d.closedDirty))
	return nil
}

// waitForStop returns when the daemon should stop: at a signal (a second
// one forces the stop past a busy mount), a 'wbcache stop', or when the
// mount went away.
func waitForStop(d *daemon, sigs <-chan os.Signal) {
	select {
	case sig := <-sigs:
		d.log.Info("stopping", "signal", sig.String())
	case <-d.stopReq:
		d.log.Info("stopping: asked through the control socket (wbcache stop)")
	case <-d.mountGone:
		d.log.Info("stopping: the mount went away (unmounted from outside)", "mountpoint", d.mountpoint)
		return
	}
	go func() {
		<-sigs
		d.forceStop()
	}()
}

// parseMount turns the command line into what the daemon serves.
func parseMount(args []string, out io.Writer) (daemonConfig, error) {
	f := newFlags("mount", "wbcache mount --cache PATH --backing PATH [options] MOUNTPOINT", mountAbout, out)
	cachePath := f.String("cache", "", "cache device `PATH` (formatted with 'wbcache format')")
	backingPath := f.String("backing", "", "backing device `PATH`")
	allowOther := f.Bool("allow-other", false, "let users other than the mounting one open MOUNTPOINT/disk (mode bits still apply)")
	nonempty := f.Bool("nonempty", false, "mount over a MOUNTPOINT that holds files (they are hidden while mounted)")
	metrics := f.String("metrics", "", "serve Prometheus metrics on `ADDR` (host:port; a bare :port or port binds 127.0.0.1)")
	logLevel := f.String("log-level", "info", "log `LEVEL`: debug, info, warn or error")
	ioUring := f.String("fuse-uring", "auto", "FUSE request transport `MODE`: auto (FUSE over io_uring where the kernel has it, turning on the fuse module's enable_uring parameter as root; /dev/fuse otherwise), on (io_uring or refuse to mount) or off (/dev/fuse)")
	fuseBatch := f.String("fuse-batch", "auto", "how requests through /dev/fuse are read and answered, `MODE`: auto (many per system call through io_uring where the kernel allows it) or off (one system call per request and per reply)")
	vals := map[string]*string{}
	for _, s := range settingKeys {
		vals[s.key] = f.String(s.key, "", s.help+"; default: the saved setting")
		f.args[s.key] = s.arg
	}
	pos, err := f.parseDevices(args, cachePath, backingPath, "MOUNTPOINT")
	if err != nil {
		return daemonConfig{}, err
	}
	level, err := parseLevel(*logLevel)
	if err != nil {
		return daemonConfig{}, usagef("mount", "%v", err)
	}
	ringMode, err := fuse.ParseIOUringMode(*ioUring)
	if err != nil {
		return daemonConfig{}, usagef("mount", "--fuse-uring: %v", err)
	}
	if *fuseBatch != "auto" && *fuseBatch != "off" {
		return daemonConfig{}, usagef("mount", "--fuse-batch: unknown mode %q (want auto or off)", *fuseBatch)
	}
	var changes []kv
	for _, s := range settingKeys {
		if f.given(s.key) {
			changes = append(changes, kv{s.key, *vals[s.key]})
		}
	}
	if err := checkSyntax(changes); err != nil {
		return daemonConfig{}, usagef("mount", "%v", err)
	}
	return daemonConfig{
		cachePath: *cachePath, backingPath: *backingPath, mountpoint: pos[0],
		changes: changes, allowOther: *allowOther, nonempty: *nonempty, metricsAddr: *metrics,
		log:     slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})),
		ioUring: ringMode, unbatchedDev: *fuseBatch == "off",
	}, nil
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return 0, fmt.Errorf("--log-level %q: want debug, info, warn or error", s)
	}
	return l, nil
}
