#!/usr/bin/env bash
# scripts/lockwait-ab.sh: how long the daemon's goroutines wait for each
# other's locks per write, through FUSE, with N synchronous writers: for
# each wbcache build in turn, round after round, a fresh cache, a mount
# with the Go profiler on (WBCACHE_PPROF), a warm-up, then fio with N jobs
# of 4 KiB O_DIRECT random writes (psync, one write in flight per job)
# while the daemon's mutex profile is taken over the same seconds
# (/debug/pprof/mutex?seconds=S, a delta). The script prints per build
# and round the IOPS, the engine's lock wait per write (the delay of the
# profile's stacks through package blockcache, over the writes the cache
# counted in that window), its contentions per thousand writes and the
# daemon's CPU time per write (user + system, from /proc/PID/stat), then
# the medians.
#
# The mutex profile samples one contention in 100 and scales it up
# (cmd/wbcache/pprof.go), so small figures are rough; compare builds
# within one run.
#
# Usage: scripts/lockwait-ab.sh [options] NAME=WBCACHE_BINARY ...
#   -n ROUNDS          rounds (default 3)
#   --jobs N           fio jobs, each one synchronous writer (default 16)
#   --runtime SECS     seconds measured per run (default 6)
#   --cache-size SIZE  cache size (default 2G)
#   --region SIZE      fio region at offset 0 (default 128M)
#   --fuse-uring MODE  FUSE transport: on, auto or off (default on)
# Without NAME=BINARY arguments it builds this tree's wbcache ("head").
# Environment: WBC_TMP (default /var/tmp), WBC_PPROF_PORT (default 16060).
# Exit status: 0 if every run completed, 1 otherwise.
set -uo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"

WBC_FUSE_URING=${WBC_FUSE_URING-on}
rounds=3 jobs=16 runtime=6 csize=2G region=128M builds=()
port=${WBC_PPROF_PORT:-16060}
while [ $# -gt 0 ]; do
	case $1 in
	-n) rounds=$2; shift 2 ;;
	--jobs) jobs=$2; shift 2 ;;
	--runtime) runtime=$2; shift 2 ;;
	--cache-size) csize=$2; shift 2 ;;
	--region) region=$2; shift 2 ;;
	--fuse-uring) WBC_FUSE_URING=$2; shift 2 ;;
	-h | --help) usage 0 ;;
	-*) echo "unknown option: $1" >&2; usage ;;
	*=*) builds+=("$1"); shift ;;
	*) echo "expected NAME=BINARY, got: $1" >&2; usage ;;
	esac
done
[[ $rounds =~ ^[1-9][0-9]*$ && $jobs =~ ^[1-9][0-9]*$ && $runtime =~ ^[1-9][0-9]*$ ]] ||
	die "-n, --jobs and --runtime take positive whole numbers"

need_root
need_tools fio go python3 curl
wbc_install_traps
mk_workdir wbc-lockwait
wbc_builds_or_head builds
truncate -s 4G "$WORK/backing.img"
mkdir -p "$WORK/mnt"

# run_fio SECS: print the write IOPS of N synchronous writers (empty on failure).
run_fio() {
	fio --name=lw --filename="$WORK/mnt/disk" --direct=1 --rw=randwrite --bs=4k --ioengine=psync \
		--numjobs="$jobs" --group_reporting --offset=0 --size="$region" --runtime="$1" --time_based \
		--randrepeat=0 --output-format=json 2>>"$WORK/fio.err" |
		python3 -c 'import json, sys; print(int(json.load(sys.stdin)["jobs"][0]["write"]["iops"]))' 2>/dev/null
}

writes() { python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["writes"])' "$WORK/mnt/stats" 2>/dev/null; }

# profile_sum FILE INDEX [UNIT]: the profile's sum for sample INDEX (delay
# in UNIT, or contentions) over the stacks that pass through the cache
# engine (package blockcache): the waits for the engine's own locks, not
# the FUSE library's (through /dev/fuse its request readers take turns on
# a lock of their own).
profile_sum() {
	go tool pprof -top -nodefraction=0 -sample_index="$2" ${3:+-unit="$3"} -focus='wbcache/blockcache' "$1" 2>/dev/null |
		sed -n 's/^Showing nodes accounting for \([0-9.]*\)[a-z]*,.*/\1/p' | head -n 1
}

declare -A iops=() wait=() cont=() cpu=()
failed=0
log "lockwait-ab: $rounds rounds, $jobs synchronous 4k random writers over $region for ${runtime}s; cache $csize${WBC_FUSE_URING:+; --fuse-uring $WBC_FUSE_URING}"
for ((r = 1; r <= rounds; r++)); do
	line="round $r:"
	for b in "${builds[@]}"; do
		name=${b%%=*} WBCACHE=${b#*=}
		rm -f "$WORK/cache.img" "$WORK/mutex.pb.gz"
		wbc_format "$WORK/cache.img" "$WORK/backing.img" "$csize" >/dev/null || die "$name: format failed"
		export WBCACHE_PPROF=127.0.0.1:$port
		wbc_mount_ready "$WORK/mnt" "$WORK/cache.img" "$WORK/backing.img" "$WORK/$name.log" || die "$name: mount failed"
		unset WBCACHE_PPROF
		run_fio 2 >/dev/null # warm-up: the first writes into a fresh cache
		w0=$(writes)
		t0=$(cpu_ticks "$WBC_DPID")
		curl -sf -o "$WORK/mutex.pb.gz" "http://127.0.0.1:$port/debug/pprof/mutex?seconds=$runtime" &
		cpid=$!
		v=$(run_fio "$runtime")
		wait "$cpid" || warn "$name: the mutex profile could not be fetched"
		w1=$(writes)
		t1=$(cpu_ticks "$WBC_DPID")
		wbc_stop "$WBC_DPID" "$WORK/mnt" >/dev/null || warn "$name: unclean stop"
		n=$((${w1:-0} - ${w0:-0}))
		d=$(profile_sum "$WORK/mutex.pb.gz" delay ns)
		c=$(profile_sum "$WORK/mutex.pb.gz" contentions)
		if [ -z "$v" ] || [ "$n" -le 0 ] || [ -z "$d" ] || [ -z "$c" ]; then
			warn "$name: round $r failed (IOPS '${v:-}', writes $n, delay '${d:-}')"
			failed=1
			continue
		fi
		per=$(awk -v d="$d" -v n="$n" 'BEGIN { printf "%.0f", d / n }')
		iops[$name]+=" $v"
		wait[$name]+=" $per"
		cont[$name]+=" $(awk -v c="$c" -v n="$n" 'BEGIN { printf "%.2f", 1000 * c / n }')"
		cpu[$name]+=" $(cpu_us_per $((t1 - t0)) "$n")"
		line+=" $name $v IOPS, $per ns wait/write;"
	done
	log "$line"
done

echo
echo "| build | IOPS, median (per round) | engine lock wait per write, median (per round) | contentions per 1,000 writes, median | daemon CPU per write, median (per round) |"
echo "|---|---|---|---|---|"
for b in "${builds[@]}"; do
	n=${b%%=*}
	[ -n "${iops[$n]:-}" ] || { echo "| $n | failed | | | |"; continue; }
	echo "| $n | $(echo "${iops[$n]}" | median) (${iops[$n]# }) | $(echo "${wait[$n]}" | median) ns (${wait[$n]# }) | $(echo "${cont[$n]}" | median) | $(echo "${cpu[$n]}" | median) µs (${cpu[$n]# }) |"
done
exit $failed
