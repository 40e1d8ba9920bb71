package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// fakeNotifySocket listens as systemd does for sd_notify messages, on a
// path or (name beginning with '@') an abstract socket.
func fakeNotifySocket(t *testing.T, name string) *net.UnixConn {
	t.Helper()
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	return conn
}

// nextMessage reads one datagram (failing after 30s).
func nextMessage(t *testing.T, conn *net.UnixConn) string {
	t.Helper()
	require.NoError(t, conn.SetReadDeadline(time.Now().Add(30*time.Second)))
	buf := make([]byte, 4096)
	n, err := conn.Read(buf)
	require.NoError(t, err, "no sd_notify message")
	return string(buf[:n])
}

// TestNotifier: messages reach a path socket and an abstract one; the
// status is renewed at each tick until the context ends.
func TestNotifier(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	for _, name := range []string{
		filepath.Join(t.TempDir(), "notify.sock"),
		fmt.Sprintf("@wbcache-test-notify-%d", os.Getpid()),
	} {
		conn := fakeNotifySocket(t, name)
		n, err := newNotifier(name, log)
		require.NoError(t, err, name)
		n.ready("serving X")
		require.Equal(t, fmt.Sprintf("READY=1\nMAINPID=%d\nSTATUS=serving X", os.Getpid()), nextMessage(t, conn), name)

		ctx, cancel := context.WithCancel(context.Background())
		tick := make(chan time.Time)
		done := make(chan struct{})
		calls := 0
		go func() {
			n.reportStatus(ctx, tick, func() string { calls++; return fmt.Sprintf("dirty %d", calls) })
			close(done)
		}()
		tick <- time.Now()
		require.Equal(t, "STATUS=dirty 1", nextMessage(t, conn))
		tick <- time.Now()
		require.Equal(t, "STATUS=dirty 2", nextMessage(t, conn))
		cancel()
		<-done
		n.send("STOPPING=1")
		require.Equal(t, "STOPPING=1", nextMessage(t, conn))
		n.close()
		n.send("STATUS=after close") // does nothing, and does not fail
	}

	n, err := newNotifier("", log)
	require.NoError(t, err)
	require.Nil(t, n, "no NOTIFY_SOCKET: no notifier")
	n.send("READY=1") // a nil notifier sends nothing
	_, err = newNotifier("relative.sock", log)
	require.ErrorContains(t, err, "want an absolute path or an abstract socket name")
	_, err = newNotifier(filepath.Join(t.TempDir(), "nobody-listens"), log)
	require.ErrorIs(t, err, syscall.ENOENT)
}

// TestNotifyMount: 'wbcache mount' under a (fake) Type=notify unit says
// READY=1 once the disk serves, with the dirty bytes in STATUS, and
// STOPPING=1 at SIGTERM.
func TestNotifyMount(t *testing.T) {
	needFUSE(t)
	name := fmt.Sprintf("@wbcache-test-mount-%d", os.Getpid())
	conn := fakeNotifySocket(t, name)
	t.Setenv("NOTIFY_SOCKET", name)
	r := newRig(t, 16<<20, 8<<20)
	d := r.mount(t)
	msg := nextMessage(t, conn)
	require.Contains(t, msg, "READY=1\n")
	require.Contains(t, msg, fmt.Sprintf("MAINPID=%d\n", d.Pid))
	require.Contains(t, msg, fmt.Sprintf("STATUS=serving %s (mode writeback): 0 B dirty", r.disk()))
	d.Signal(syscall.SIGTERM)
	require.Equal(t, "STOPPING=1", nextMessage(t, conn))
	for msg := ""; !strings.HasSuffix(msg, "stopping: stopped"); {
		msg = nextMessage(t, conn)
		require.True(t, strings.HasPrefix(msg, "STATUS=stopping: "), msg)
	}
	<-d.Done()
	require.Equal(t, 0, d.ExitCode(), d.stderr.String())
}
