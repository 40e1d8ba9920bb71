package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// controlClient talks to a daemon's control socket.
type controlClient struct {
	mountpoint string
	sock       string
	hc         *http.Client
}

// dialControl finds the control socket of the daemon serving mountpoint:
// by name in the socket directories, else from MOUNTPOINT/stats.
func dialControl(mountpoint string) (*controlClient, error) {
	mp, err := resolvePath(mountpoint)
	if err != nil {
		return nil, err
	}
	name := socketName(mp)
	var looked []string
	sock := ""
	for _, dir := range socketDirs() {
		p := filepath.Join(dir, name)
		looked = append(looked, p)
		if _, err := os.Stat(p); err == nil {
			sock = p
			break
		}
	}
	if sock == "" {
		if b, err := os.ReadFile(filepath.Join(mp, "stats")); err == nil {
			var s struct {
				ControlSocket string `json:"control_socket"`
			}
			if json.Unmarshal(b, &s) == nil && s.ControlSocket != "" {
				sock = s.ControlSocket
			}
		}
	}
	if sock == "" {
		return nil, fmt.Errorf("no wbcache daemon serves %s: no control socket (looked for %s); is it mounted with 'wbcache mount'?",
			mp, strings.Join(looked, " and "))
	}
	c := &controlClient{mountpoint: mp, sock: sock}
	c.hc = &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
	}}
	return c, nil
}

// explain turns a transport error into advice.
func (c *controlClient) explain(err error) error {
	switch {
	case errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ENOENT):
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
