package main

import (
	"encoding/json"
	"net/http"
	"time"

	"github.com/wbcache/wbcache/blockcache"
)

// handleStop asks the daemon to stop (as SIGTERM does; with force=1 also
// as a second signal does) and streams what the stop is doing until the
// cache is closed. The last line has the dirty blocks left in the cache.
func (d *daemon) handleStop(w http.ResponseWriter, r *http.Request) {
	if r.URL.Query().Get("force") != "" {
		d.forceStop()
	}
	d.requestStop()
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	enc := json.NewEncoder(w)
	send := func(l progressLine) {
		_ = enc.Encode(l)
		_ = rc.Flush()
	}
	start := time.Now()
	tick := time.NewTicker(progressInterval)
	defer tick.Stop()
	last := ""
	for {
		select {
		case <-d.closed:
			l := progressLine{DirtyBlocks: d.closedDirty, DirtyBytes: int64(d.closedDirty) * blockcache.BlockSize,
				Elapsed: time.Since(start).Seconds(), Done: d.stopErr == nil}
			if d.stopErr != nil {
				l.Error = d.stopErr.Error()
			}
			send(l)
			return
		case <-r.Context().Done():
			return
		case <-tick.C:
		}
		// The first tick comes after the stop has begun.
		if p := d.stopping(); p != last && p != "" {
			dirty := d.cache.DirtyCount()
			send(progressLine{DirtyBlocks: dirty, DirtyBytes: int64(dirty) * blockcache.BlockSize,
				Elapsed: time.Since(start).Seconds(), Message: p})
			last = p
		}
	}
}
