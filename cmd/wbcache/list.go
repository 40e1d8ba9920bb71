package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"text/tabwriter"
	"time"

	"github.com/wbcache/wbcache/fuse"
)

const listAbout = `
Lists the wbcache caches running on this host: mount point, state, daemon
pid, mode, dirty bytes and cache path.

The daemons are found in two places. The control sockets
(/run/wbcache/*.sock, $TMPDIR/wbcache-UID/*.sock) are a registry that
already exists: one per daemon, removed when it exits, and a socket left
by a killed daemon refuses connections, so it is skipped. A socket reaches
a daemon also while it stops with its mount lazily detached (waiting for
a loop device), when the mount no longer shows. The kernel's mount table
(/proc/self/mountinfo, type fuse.wbcache, source = the cache path) adds
the mounts whose socket this user cannot reach (another user's daemon:
mode and dirty bytes then come from MOUNTPOINT/stats if readable) and the
dead mounts left by a killed daemon.

States: serving; stopping (waiting for the mount's last user, or closing);
dead (the daemon was killed: 'wbcache mount' there recovers the cache);
unreachable (a live mount whose daemon this user may not ask); hung (the
mount did not answer within a second: its daemon is stuck, or was killed
with a thread left waiting in the kernel; 'umount -l MOUNTPOINT' detaches
it).`

// listEntry is one cache in 'wbcache list'.
type listEntry struct {
	Mountpoint string `json:"mountpoint"`
	State      string `json:"state"` // serving, stopping, dead, unreachable or hung
	PID        int    `json:"pid,omitempty"`
	Mode       string `json:"mode,omitempty"`
	DirtyBytes int64  `json:"dirty_bytes"`
	Cache      string `json:"cache"`
	Stopping   string `json:"stopping,omitempty"`
}

func runList(args []string, out io.Writer) error {
	f := newFlags("list", "wbcache list [--json]", listAbout, out)
	asJSON := f.Bool("json", false, "print a JSON array")
	_, err := f.parseArgs(args)
	if err != nil {
		return err
	}
	entries, err := listCaches()
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		return enc.Encode(entries)
	}
	if len(entries) == 0 {
		fmt.Fprintln(out, "no wbcache cache is mounted on this host")
		return nil
	}
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "MOUNTPOINT\tSTATE\tPID\tMODE\tDIRTY\tCACHE")
	for _, e := range entries {
		pid, mode, dirty := "-", "-", "-"
		if e.PID != 0 {
			pid = fmt.Sprint(e.PID)
		}
		if e.Mode != "" {
			mode, dirty = e.Mode, formatSize(e.DirtyBytes)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", e.Mountpoint, e.State, pid, mode, dirty, e.Cache)
	}
	return tw.Flush()
}

// listCaches finds the running daemons through their control sockets, then
// adds the wbcache mounts none of them serves. Sorted by mount point.
func listCaches() ([]listEntry, error) {
	found := map[string]listEntry{}
	for _, st := range socketDaemons() {
		found[st.Mountpoint] = entryFromStatus(st)
	}
	mounts, err := fuse.Mounts()
	if err != nil {
		return nil, fmt.Errorf("listing mounts: %w", err)
	}
	for _, m := range mounts {
		if _, ok := found[m.MountPoint]; ok {
			continue
		}
		found[m.MountPoint] = entryFromMount(m)
	}
	entries := make([]listEntry, 0, len(found))
	for _, e := range found {
		entries = append(entries, e)
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].Mountpoint < entries[j].Mountpoint })
	return entries, nil
}

// socketDaemons asks every control socket this user can reach for its
// status; sockets that do not answer (left by a killed daemon) are
// skipped.
func socketDaemons() []Status {
	var out []Status
	for _, dir := range socketDirs() {
		socks, _ := filepath.Glob(filepath.Join(dir, "*.sock"))
		for _, sock := range socks {
			cl := newControlClient("", sock)
			cl.hc.Timeout = 2 * time.Second
			raw, err := cl.get("/status")
			if err != nil {
				continue
			}
			var st Status
			if json.Unmarshal(raw, &st) == nil && st.Mountpoint != "" {
				out = append(out, st)
			}
		}
	}
	return out
}

func entryFromStatus(st Status) listEntry {
	e := listEntry{Mountpoint: st.Mountpoint, State: "serving", PID: st.PID, Mode: st.Mode,
		DirtyBytes: st.DirtyBytes, Cache: st.Cache, Stopping: st.Stopping}
	if st.Stopping != "" {
		e.State = "stopping"
	}
	return e
}

// entryFromMount describes a wbcache mount whose daemon no reachable
// control socket speaks for. It asks the mount itself (statfs, then
// MOUNTPOINT/stats), but waits at most mountAnswerTime for each: a FUSE
// request to a daemon that has stopped answering (stuck, or killed with a
// thread left in the kernel) blocks, unkillable, until the connection is
// aborted, and list must not hang on another user's broken mount.
func entryFromMount(m fuse.MountRecord) listEntry {
	e := listEntry{Mountpoint: m.MountPoint, State: "hung", Cache: m.Source}
	var alive bool
	if !within(mountAnswerTime, func() { alive = fuse.Alive(m.MountPoint) }) {
		return e
	}
	if !alive {
		e.State = "dead"
		return e
	}
	var b []byte
	var err error
	if !within(mountAnswerTime, func() { b, err = os.ReadFile(filepath.Join(m.MountPoint, "stats")) }) {
		return e
	}
	var st Status
	if err == nil && json.Unmarshal(b, &st) == nil && st.Mountpoint != "" {
		return entryFromStatus(st)
	}
	e.State = "unreachable"
	return e
}

// mountAnswerTime bounds how long list waits for a mount to answer.
const mountAnswerTime = time.Second

// within runs f and waits up to d for it to return; false if it did not
// (f then goes on in the background, and must only set what the caller
// reads after a true).
func within(d time.Duration, f func()) bool {
	done := make(chan struct{})
	go func() {
		f()
		close(done)
	}()
	select {
	case <-done:
		return true
	case <-time.After(d):
		return false
	}
}

// daemonByPID finds the daemon with the given pid among those this user
// can reach.
func daemonByPID(pid int) (Status, bool) {
	for _, st := range socketDaemons() {
		if st.PID == pid {
			return st, true
		}
	}
	return Status{}, false
}
