package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/wbcache/wbcache/fuse"
	"golang.org/x/sys/unix"
)

// controlClient talks to a daemon's control socket.
type controlClient struct {
	mountpoint string
	sock       string
	hc         *http.Client
}

// Why a client found no daemon to talk to; the errors that wrap them say
// what to do.
var (
	errNotServed  = errors.New("no wbcache daemon serves it")
	errNoAccess   = errors.New("permission denied")
	errDaemonGone = errors.New("its daemon is gone")
)

// dialControl finds the control socket of the daemon serving mountpoint:
// by name in the socket directories, else from MOUNTPOINT/stats. When it
// finds none, the error names the cause, told apart with the kernel's
// list of wbcache mounts: no mount there, a dead mount, or a live one this
// user may not reach.
func dialControl(mountpoint string) (*controlClient, error) {
	mp, err := resolvePath(mountpoint)
	if err != nil {
		return nil, err
	}
	sock, looked, denied := findSocket(mp)
	var statsErr error
	if sock == "" {
		sock, statsErr = socketFromStats(mp)
	}
	if sock == "" {
		return nil, notServedError(mp, looked, denied, statsErr)
	}
	return newControlClient(mp, sock), nil
}

// newControlClient talks to the control socket sock of the daemon serving
// mountpoint.
func newControlClient(mountpoint, sock string) *controlClient {
	c := &controlClient{mountpoint: mountpoint, sock: sock}
	c.hc = &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
	}}
	return c
}

// findSocket looks for the control socket of mp in the socket directories.
// It returns the socket found, the paths looked at, and the directories
// this user may not look into.
func findSocket(mp string) (sock string, looked, denied []string) {
	name := socketName(mp)
	for _, dir := range socketDirs() {
		p := filepath.Join(dir, name)
		looked = append(looked, p)
		_, err := os.Stat(p)
		switch {
		case err == nil:
			return p, looked, denied
		case errors.Is(err, fs.ErrPermission):
			denied = append(denied, dir)
		}
	}
	return "", looked, denied
}

// socketFromStats reads the control socket path from MOUNTPOINT/stats.
func socketFromStats(mp string) (string, error) {
	b, err := os.ReadFile(filepath.Join(mp, "stats"))
	if err != nil {
		return "", err
	}
	var s struct {
		ControlSocket string `json:"control_socket"`
	}
	if err := json.Unmarshal(b, &s); err != nil || s.ControlSocket == "" {
		return "", fmt.Errorf("%s/stats names no control socket", mp)
	}
	return s.ControlSocket, nil
}

// notServedError explains why no control socket was found for mp.
func notServedError(mp string, looked, denied []string, statsErr error) error {
	m, mounted := wbcacheMountAt(mp)
	switch {
	case mounted && !fuse.Alive(mp):
		return daemonGoneError(mp, m.Source)
	case mounted && (len(denied) > 0 || errors.Is(statsErr, fs.ErrPermission)):
		return fmt.Errorf("wbcache serves %s (cache %s), but you (uid %d) may not ask it: %w (on %s).\n"+
			"  Run this as root or as the user that mounted it, or mount it with --allow-other so that other users may read %s/stats",
			mp, m.Source, os.Getuid(), errNoAccess, strings.Join(append(denied, filepath.Join(mp, "stats")), " and "), mp)
	case mounted:
		return fmt.Errorf("wbcache serves %s (cache %s), but %w through a control socket (looked for %s).\n"+
			"  Run this as the user that mounted it, with the same TMPDIR",
			mp, m.Source, errNotServed, strings.Join(looked, " and "))
	}
	hint := ""
	if len(denied) > 0 {
		hint = fmt.Sprintf("; %s is not readable by uid %d, so a daemon that is stopping there cannot be seen", strings.Join(denied, " and "), os.Getuid())
	}
	return fmt.Errorf("%s: %w: it is not a wbcache mount point (looked for the control socket %s%s).\n"+
		"  Mount a cache there with 'wbcache mount'; 'wbcache list' shows the caches mounted on this host",
		mp, errNotServed, strings.Join(looked, " and "), hint)
}

// daemonGoneError: a dead mount of cache is left at mp.
func daemonGoneError(mp, cache string) error {
	return fmt.Errorf("%s: %w (a dead mount is left there: the daemon was killed or crashed).\n"+
		"  Mount the cache again (wbcache mount --cache %s --backing BACKING %s): it removes the dead mount and recovers every acknowledged write",
		mp, errDaemonGone, cache, mp)
}

// wbcacheMountAt returns the topmost wbcache mount at mp, if any.
func wbcacheMountAt(mp string) (fuse.MountRecord, bool) {
	ms, err := fuse.Mounts()
	if err != nil {
		return fuse.MountRecord{}, false
	}
	var found fuse.MountRecord
	ok := false
	for _, m := range ms {
		if m.MountPoint == mp {
			found, ok = m, true // later lines are mounted on top
		}
	}
	return found, ok
}

// explain turns a transport error into advice.
func (c *controlClient) explain(err error) error {
	switch {
	case errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ENOENT):
		if m, ok := wbcacheMountAt(c.mountpoint); ok && !fuse.Alive(c.mountpoint) {
			return daemonGoneError(c.mountpoint, m.Source)
		}
		return fmt.Errorf("the wbcache daemon for %s is not running (stale control socket %s): mount it again", c.mountpoint, c.sock)
	case errors.Is(err, syscall.EACCES):
		return fmt.Errorf("no permission to use the control socket %s of %s: run as the user that mounted it", c.sock, c.mountpoint)
	}
	return fmt.Errorf("control socket %s: %w", c.sock, err)
}

func (c *controlClient) get(path string) ([]byte, error) {
	resp, err := c.hc.Get("http://wbcache" + path)
	if err != nil {
		return nil, c.explain(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, c.explain(err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("daemon answered %s: %s", resp.Status, strings.TrimSpace(string(b)))
	}
	return b, nil
}

// stream POSTs to path and calls onLine for each progress line until the
// final one, which it returns. A reply with status 400 (bad setting or
// mode) is returned as a usageError for cmd.
func (c *controlClient) stream(cmd, path string, form url.Values, onLine func(progressLine)) (progressLine, error) {
	resp, err := c.hc.PostForm("http://wbcache"+path, form)
	if err != nil {
		return progressLine{}, c.explain(err)
	}
	defer resp.Body.Close()
	dec := json.NewDecoder(bufio.NewReader(resp.Body))
	if resp.StatusCode != http.StatusOK {
		var l progressLine
		if err := dec.Decode(&l); err != nil || l.Error == "" {
			return l, fmt.Errorf("daemon answered %s", resp.Status)
		}
		if resp.StatusCode == http.StatusBadRequest {
			return l, &usageError{cmd: cmd, err: errors.New(l.Error)}
		}
		return l, errors.New(l.Error)
	}
	for {
		var l progressLine
		if err := dec.Decode(&l); err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return l, fmt.Errorf("the daemon ended the reply early (did it stop?): %w", err)
		}
		if l.Done || l.Error != "" {
			if l.Error != "" {
				return l, errors.New(l.Error)
			}
			return l, nil
		}
		onLine(l)
	}
}

// progressPrinter shows write-back progress: one line rewritten with \r on
// a terminal, a line per second otherwise.
type progressPrinter struct {
	w     io.Writer
	tty   bool
	last  time.Time
	drawn bool
}

func newProgressPrinter(w io.Writer) *progressPrinter {
	return &progressPrinter{w: w, tty: isTerminal(w)}
}

func (p *progressPrinter) show(l progressLine) {
	text := progressText(l)
	if p.tty {
		fmt.Fprintf(p.w, "\r\033[K%s", text)
		p.drawn = true
		return
	}
	if time.Since(p.last) >= time.Second {
		fmt.Fprintln(p.w, text)
		p.last = time.Now()
	}
}

// end finishes the progress display.
func (p *progressPrinter) end() {
	if p.tty && p.drawn {
		fmt.Fprint(p.w, "\r\033[K")
	}
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}
