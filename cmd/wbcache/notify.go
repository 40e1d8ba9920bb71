package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"github.com/wbcache/wbcache/blockcache"
)

// notifier tells systemd about the daemon (the sd_notify protocol, for a
// Type=notify unit): READY=1 once MOUNTPOINT/disk serves, STATUS= lines
// with the dirty bytes while it serves and what a stop is doing,
// STOPPING=1 when it stops. Each message is one datagram of
// newline-separated VAR=VALUE assignments sent to the unix datagram
// socket named by $NOTIFY_SOCKET; a name beginning with '@' is in the
// abstract namespace (the Go runtime maps the '@' to the leading NUL byte).
//
// A nil notifier (no $NOTIFY_SOCKET: not run by systemd) sends nothing.
type notifier struct {
	mu   sync.Mutex
	conn *net.UnixConn
	log  *slog.Logger
}

// newNotifier connects to the socket named by the value of
// $NOTIFY_SOCKET; it returns nil for an empty name.
func newNotifier(name string, log *slog.Logger) (*notifier, error) {
	if name == "" {
		return nil, nil
	}
	if name[0] != '/' && name[0] != '@' {
		return nil, fmt.Errorf("NOTIFY_SOCKET=%q: want an absolute path or an abstract socket name beginning with '@'", name)
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		return nil, fmt.Errorf("NOTIFY_SOCKET=%s: %w", name, err)
	}
	return &notifier{conn: conn, log: log}, nil
}

// send sends one message. A failure is logged, never fatal: the daemon
// serves whether or not systemd listens.
func (n *notifier) send(msg string) {
	if n == nil {
		return
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.conn == nil {
		return
	}
	if _, err := n.conn.Write([]byte(msg)); err != nil {
		n.log.Debug("sd_notify failed", "msg", msg, "err", err)
	}
}

// ready says that the daemon serves, with its first status line.
func (n *notifier) ready(status string) {
	n.send(fmt.Sprintf("READY=1\nMAINPID=%d\nSTATUS=%s", os.Getpid(), status))
}

// close closes the socket; later sends do nothing.
func (n *notifier) close() {
	if n == nil {
		return
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.conn != nil {
		n.conn.Close()
		n.conn = nil
	}
}

// notifyInterval is how often the STATUS line is renewed while serving.
const notifyInterval = 10 * time.Second

// reportStatus sends STATUS=line() at each tick until ctx ends.
func (n *notifier) reportStatus(ctx context.Context, tick <-chan time.Time, line func() string) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick:
			n.send("STATUS=" + line())
		}
	}
}

// servingStatus is the STATUS line while the daemon serves.
func (d *daemon) servingStatus() string {
	s := d.cache.Stats()
	return fmt.Sprintf("serving %s (mode %s): %s dirty (%.1f%% of the slots), oldest %s",
		d.diskPath(), s.Mode, formatSize(int64(s.Dirty)*blockcache.BlockSize), percent(s.Dirty, s.Slots), formatAge(s.OldestDirtySeconds))
}
