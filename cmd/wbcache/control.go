package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/wbcache/wbcache/blockcache"
	"github.com/wbcache/wbcache/flush"
)

// The control channel is HTTP over a unix socket (mode 0600 in a 0700
// directory, so only the daemon's user can use it):
//
//	GET  /status           the JSON status snapshot
//	POST /flush            write back every dirty block; streams progress lines
//	POST /mode?mode=M      switch mode; leaving writeback drains like /flush
//	POST /set              form KEY=VALUE pairs: validate, apply, persist
//	POST /stop[?force=1]   stop as SIGTERM does; streams what the stop is doing
//	                       until the cache is closed (the last line says how
//	                       many blocks stay dirty in it)
//
// The socket answers until the daemon has closed the cache, also while a
// stop waits for the mount's last user; POST requests other than /stop are
// then refused (503).
//
// Streaming replies are JSON lines (progressLine); the last one has
// "done":true or "error".

// socketDirs are where control sockets live, in order of preference.
func socketDirs() []string {
	return []string{"/run/wbcache", filepath.Join(os.TempDir(), fmt.Sprintf("wbcache-%d", os.Getuid()))}
}

// socketName derives the socket file name from the absolute mount point.
func socketName(mountpoint string) string {
	h := sha256.Sum256([]byte(mountpoint))
	return hex.EncodeToString(h[:8]) + ".sock"
}

// progressLine is one line of a streaming control reply.
type progressLine struct {
	DirtyBlocks   int     `json:"dirty_blocks"`
	DirtyBytes    int64   `json:"dirty_bytes"`
	DestagedBytes uint64  `json:"destaged_bytes"` // since this request began
	Rate          float64 `json:"rate_bytes_per_second"`
	Elapsed       float64 `json:"elapsed_seconds"`
	// LastError is the last write-back error while write-back is failing
	// (waiting to retry); BackingSyncFailed a sticky backing sync failure.
	LastError         string      `json:"last_error,omitempty"`
	BackingSyncFailed string      `json:"backing_sync_failed,omitempty"`
	Message           string      `json:"message,omitempty"`
	Settings          *policyView `json:"settings,omitempty"`
	Done              bool        `json:"done,omitempty"`
	Error             string      `json:"error,omitempty"`
}

type controlServer struct {
	path string
	ln   net.Listener
	srv  *http.Server
	wg   sync.WaitGroup // handlers in flight
	log  *slog.Logger
}

func (cs *controlServer) serve() {
	go func() {
		if err := cs.srv.Serve(cs.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			cs.log.Error("control socket stopped", "err", err)
		}
	}()
	cs.log.Debug("control socket listening", "path", cs.path)
}

// startControl listens on the daemon's control socket; serve starts
// answering.
func startControl(d *daemon) (*controlServer, error) {
	name := socketName(d.mountpoint)
	var errs []error
	for _, dir := range socketDirs() {
		if err := prepareSocketDir(dir); err != nil {
			errs = append(errs, err)
			continue
		}
		path := filepath.Join(dir, name)
		if err := removeStaleSocket(path, d.mountpoint); err != nil {
			return nil, err
		}
		ln, err := net.Listen("unix", path)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if err := os.Chmod(path, 0o600); err != nil {
			ln.Close()
			return nil, fmt.Errorf("control socket: %w", err)
		}
		cs := &controlServer{path: path, ln: ln}
		mux := http.NewServeMux()
		mux.HandleFunc("GET /status", cs.track(d.handleStatus))
		mux.HandleFunc("POST /flush", cs.track(d.whileServing(d.handleFlush)))
		mux.HandleFunc("POST /mode", cs.track(d.whileServing(d.handleMode)))
		mux.HandleFunc("POST /set", cs.track(d.whileServing(d.handleSet)))
		mux.HandleFunc("POST /stop", cs.track(d.handleStop))
		cs.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		cs.log = d.log
		return cs, nil
	}
	return nil, fmt.Errorf("cannot create the control socket: %w", errors.Join(errs...))
}

// prepareSocketDir makes dir (0700) and checks that it is ours and private.
func prepareSocketDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	fi, err := os.Lstat(dir)
	if err != nil {
		return err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !fi.IsDir() || !ok || int(st.Uid) != os.Geteuid() {
		return fmt.Errorf("%s is not a directory owned by uid %d", dir, os.Geteuid())
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return os.Chmod(dir, 0o700)
	}
	return nil
}

// removeStaleSocket removes a socket left by a daemon that died, and
// refuses if a live daemon answers on it.
func removeStaleSocket(path, mountpoint string) error {
	if _, err := os.Lstat(path); err != nil {
		return nil
	}
	if socketAnswers(path) {
		return fmt.Errorf("mount point %s: %w (control socket %s): stop it first (wbcache stop %s)", mountpoint, errMountpointBusy, path, mountpoint)
	}
	return os.Remove(path)
}

// socketAnswers reports whether a daemon accepts connections on path.
func socketAnswers(path string) bool {
	conn, err := net.DialTimeout("unix", path, time.Second)
	if err != nil {
		return false
	}
	conn.Close()
	return true
}

// liveSocket returns the control socket of a live daemon serving
// mountpoint, if this user can see one.
func liveSocket(mountpoint string) (string, bool) {
	for _, dir := range socketDirs() {
		p := filepath.Join(dir, socketName(mountpoint))
		if socketAnswers(p) {
			return p, true
		}
	}
	return "", false
}

// track counts handlers in flight so close can wait for them.
func (cs *controlServer) track(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		cs.wg.Add(1)
		defer cs.wg.Done()
		h(w, r)
	}
}

// close stops listening, lets the requests in flight end (for up to
// closeGrace: streaming ones watch the daemon's context, cancelled
// before, or end once the cache is closed), ends connections and waits
// for handlers.
func (cs *controlServer) close() {
	ctx, cancel := context.WithTimeout(context.Background(), closeGrace)
	defer cancel()
	_ = cs.srv.Shutdown(ctx)
	cs.srv.Close()
	cs.ln.Close() // in case Serve never ran
	cs.wg.Wait()
	os.Remove(cs.path)
}

// closeGrace bounds how long the control socket waits for requests in
// flight when the daemon stops.
const closeGrace = 2 * time.Second

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func writeError(w http.ResponseWriter, code int, err error) {
	writeJSON(w, code, progressLine{Error: err.Error()})
}

// whileServing refuses a request once the daemon is stopping.
func (d *daemon) whileServing(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if p := d.stopping(); p != "" {
			writeError(w, http.StatusServiceUnavailable, fmt.Errorf("the daemon serving %s is stopping (%s): %w", d.mountpoint, p, errStopping))
			return
		}
		h(w, r)
	}
}

// errStopping: the daemon refuses a change because it is stopping.
var errStopping = errors.New("it takes no more requests")

func (d *daemon) handleStatus(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, d.status())
}

func (d *daemon) handleFlush(w http.ResponseWriter, r *http.Request) {
	d.streamFlush(w, r, "")
}

func (d *daemon) handleMode(w http.ResponseWriter, r *http.Request) {
	mode := r.URL.Query().Get("mode")
	if mode == "" {
		writeError(w, http.StatusBadRequest, errors.New("missing mode: want writeback, writethrough, writearound or none"))
		return
	}
	d.change(w, r, []kv{{"mode", mode}})
}

func (d *daemon) handleSet(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	var changes []kv
	// Keep the documented key order so error messages are deterministic.
	for _, st := range settingKeys {
		for _, v := range r.PostForm[st.key] {
			changes = append(changes, kv{st.key, v})
		}
	}
	for k := range r.PostForm {
		if settingByKey(k) == nil {
			writeError(w, http.StatusBadRequest, fmt.Errorf("unknown setting %q (known: %s)", k, settingKeyNames()))
			return
		}
	}
	if len(changes) == 0 {
		writeError(w, http.StatusBadRequest, fmt.Errorf("no KEY=VALUE given (keys: %s)", settingKeyNames()))
		return
	}
	d.change(w, r, changes)
}

// change applies settings, persists them and, when the mode left
// writeback, drains dirty blocks while streaming progress.
func (d *daemon) change(w http.ResponseWriter, r *http.Request, changes []kv) {
	d.setMu.Lock()
	old := d.cache.Settings()
	s, err := applySettings(old, changes)
	if err != nil {
		d.setMu.Unlock()
		writeError(w, http.StatusBadRequest, err)
		return
	}
	if s != old {
		if err := d.cache.SetSettings(s); err != nil {
			d.setMu.Unlock()
			writeError(w, http.StatusInternalServerError, fmt.Errorf("saving settings: %w", err))
			return
		}
		d.dest.SetPolicy(flush.PolicyFromSettings(s))
		d.log.Info("settings changed", "keys", changedKeys(changes), "policy", d.policy().String())
	}
	d.setMu.Unlock()

	msg := "settings saved"
	if blockcache.Mode(old.Mode) == blockcache.ModeWriteback && blockcache.Mode(s.Mode) != blockcache.ModeWriteback {
		d.streamFlush(w, r, fmt.Sprintf("%s; mode %s: writing back dirty blocks", msg, blockcache.Mode(s.Mode)))
		return
	}
	p := d.policy()
	writeJSON(w, http.StatusOK, progressLine{
		DirtyBlocks: d.cache.DirtyCount(), DirtyBytes: int64(d.cache.DirtyCount()) * blockcache.BlockSize,
		Message: msg, Settings: &p, Done: true,
	})
}

func (d *daemon) policy() policyView {
	return makePolicyView(d.cache.Mode(), d.dest.Policy(), d.cache.Settings(), d.promote)
}

// progressInterval is how often streaming replies report.
const progressInterval = 250 * time.Millisecond

// streamFlush runs FlushAll and streams progress lines until it ends, the
// client goes away or the daemon stops.
func (d *daemon) streamFlush(w http.ResponseWriter, r *http.Request, msg string) {
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	stopWatch := context.AfterFunc(d.ctx, cancel)
	defer stopWatch()

	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	enc := json.NewEncoder(w)
	start := time.Now()
	base := d.dest.Stats().DestagedBlocks
	line := func() progressLine {
		p := d.dest.Stats()
		dirty := d.cache.DirtyCount()
		l := progressLine{
			DirtyBlocks: dirty, DirtyBytes: int64(dirty) * blockcache.BlockSize,
			DestagedBytes: (p.DestagedBlocks - base) * blockcache.BlockSize,
			Rate:          p.BytesPerSec, Elapsed: time.Since(start).Seconds(),
		}
		d.noteFaults(&l, p)
		return l
	}
	send := func(l progressLine) {
		_ = enc.Encode(l)
		_ = rc.Flush()
	}
	first := line()
	first.Message = msg
	send(first)

	done := make(chan error, 1)
	go func() { done <- d.dest.FlushAll(ctx, func(flush.Progress) {}) }()
	tick := time.NewTicker(progressInterval)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
			send(line())
		case err := <-done:
			l := line()
			if err != nil {
				if d.ctx.Err() != nil {
					err = fmt.Errorf("the daemon is stopping: %w", err)
				}
				l.Error = err.Error()
			} else {
				l.Done = true
				p := d.policy()
				l.Settings = &p
			}
			send(l)
			return
		}
	}
}
