package main

import (
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"runtime"
)

// startPprof serves Go's profiler on the loopback address in
// WBCACHE_PPROF (for example 127.0.0.1:6060) when that variable is set:
// a developer's tool for finding where the daemon spends its time.
func startPprof(log *slog.Logger) {
	addr := os.Getenv("WBCACHE_PPROF")
	if addr == "" {
		return
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil || (host != "127.0.0.1" && host != "localhost" && host != "::1") {
		log.Warn("WBCACHE_PPROF must be a loopback host:port; profiler not started", "addr", addr)
		return
	}
	// Contended locks and blocking waits are sampled too (the mutex and
	// block profiles), at rates low enough to leave the daemon's speed
	// nearly as it is.
	runtime.SetMutexProfileFraction(100)
	runtime.SetBlockProfileRate(100_000)
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	go func() {
		if err := http.ListenAndServe(addr, mux); err != nil {
			log.Warn("profiler stopped", "err", err)
		}
	}()
}
