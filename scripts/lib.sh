# shellcheck shell=bash
# scripts/lib.sh: shared functions of the wbcache test and benchmark
# harnesses. Source it; it does not run anything by itself.
#
# Everything a harness creates (processes, FUSE mounts, loop devices, blkio
# cgroups, temporary directories) is registered here and torn
# down by wbc_cleanup, which wbc_install_traps runs on exit, on errors and on
# Ctrl-C / SIGTERM. Processes are only ever killed by the PID we started.

WBC_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WBC_CGROOT=${WBC_CGROOT:-/sys/fs/cgroup/blkio}

WBC_PIDS=()         # background processes we started
WBC_FUSE_MOUNTS=()  # FUSE mount points (wbcache, fuseceiling)
WBC_LOOPS=()        # loop devices
WBC_CGROUPS=()      # blkio cgroup directories
WBC_TMPDIRS=()      # removed unless WBC_KEEP=1
WBC_KEEP=${WBC_KEEP:-0}
WBC_CLEANED=0

log() { printf '%s %s\n' "$(date +%T)" "$*" >&2; }
warn() { printf '%s WARNING: %s\n' "$(date +%T)" "$*" >&2; }
die() {
	printf '%s FATAL: %s\n' "$(date +%T)" "$*" >&2
	exit 1
}

now_ns() { date +%s%N; }
# secs_since NS: seconds (3 decimals) since the now_ns value NS.
secs_since() { awk -v a="$1" -v b="$(date +%s%N)" 'BEGIN { printf "%.3f", (b - a) / 1e9 }'; }

# size_bytes 64M -> 67108864 (K, M, G, T suffixes in KiB units).
size_bytes() {
	local s=${1^^} m=1
	case $s in
	*K | *KIB) m=$((1 << 10)) ;;
	*M | *MIB) m=$((1 << 20)) ;;
	*G | *GIB) m=$((1 << 30)) ;;
	*T | *TIB) m=$((1 << 40)) ;;
	esac
	s=${s%IB}
	s=${s%[KMGTB]}
	[[ $s =~ ^[0-9]+$ ]] || die "bad size '$1'"
	echo $((s * m))
}

# usage [STATUS]: print the calling script's header (its comment from line
# 2 down to `set -uo pipefail`) and exit with STATUS (default 2).
usage() {
	sed -n '2,/^set -uo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
	exit "${1:-2}"
}

need_root() {
	[ "$(id -u)" = 0 ] || die "must run as root (FUSE mounts, losetup, cgroups)"
	[ -e /dev/fuse ] || die "/dev/fuse is missing"
}

need_tools() {
	local t missing=()
	for t in "$@"; do
		command -v "$t" >/dev/null || missing+=("$t")
	done
	[ ${#missing[@]} -eq 0 ] || die "missing tools: ${missing[*]} (apt-get install -y fio fuse3 e2fsprogs util-linux)"
}

# ---------------------------------------------------------------- cleanup

track_pid() { WBC_PIDS+=("$1"); }
# untrack ARRAY VALUE: remove VALUE from the registry array named ARRAY.
untrack() {
	local -n arr=$1
	local i
	for i in "${!arr[@]}"; do
		[ "${arr[i]}" = "$2" ] && unset 'arr[i]'
	done
	return 0
}
untrack_pid() { untrack WBC_PIDS "$1"; }
track_fuse() { WBC_FUSE_MOUNTS+=("$1"); }
track_loop() { WBC_LOOPS+=("$1"); }
untrack_loop() { untrack WBC_LOOPS "$1"; }
track_cgroup() { WBC_CGROUPS+=("$1"); }
track_tmpdir() { WBC_TMPDIRS+=("$1"); }

is_mounted() { awk -v m="$1" '$2 == m { f = 1 } END { exit !f }' /proc/mounts; }

# pid_alive PID: the process exists and is not a zombie.
pid_alive() {
	local st
	st=$(awk '/^State:/ { print $2 }' "/proc/$1/status" 2>/dev/null) || return 1
	[ -n "$st" ] && [ "$st" != Z ]
}

# stop_pid PID [SECS]: SIGTERM, wait up to SECS (default 10), then SIGKILL.
stop_pid() {
	local pid=$1 t=${2:-10} i
	pid_alive "$pid" || {
		wait "$pid" 2>/dev/null
		[ -n "${WBC_WRAP[$pid]:-}" ] && wbc_reap "$pid"
		return 0
	}
	kill -TERM "$pid" 2>/dev/null
	for ((i = 0; i < t * 10; i++)); do
		pid_alive "$pid" || break
		sleep 0.1
	done
	if pid_alive "$pid"; then
		warn "PID $pid ignored SIGTERM for ${t}s; sending SIGKILL"
		kill -KILL "$pid" 2>/dev/null
	fi
	wait "$pid" 2>/dev/null
	[ -n "${WBC_WRAP[$pid]:-}" ] && wbc_reap "$pid"
	return 0
}

WBC_FUSECTL_MOUNTED=0
# fuse_abort MNT: abort the FUSE connection of the mount at MNT through
# fusectl (mounted on /sys/fs/fuse/connections if needed): every request
# waiting on it fails with ENOTCONN, even if no daemon will ever answer.
fuse_abort() {
	local dev n
	dev=$(awk -v m="$1" '$5 == m { d = $3 } END { print d }' /proc/self/mountinfo)
	[ -n "$dev" ] || return 1
	n=${dev#*:}
	if ! awk '$2 == "/sys/fs/fuse/connections" { f = 1 } END { exit !f }' /proc/mounts; then
		mount -t fusectl fusectl /sys/fs/fuse/connections 2>/dev/null && WBC_FUSECTL_MOUNTED=1
	fi
	[ -e "/sys/fs/fuse/connections/$n/abort" ] || return 1
	echo 1 >"/sys/fs/fuse/connections/$n/abort"
}

# fuse_unmount MNT: unmount a FUSE mount, dead (ENOTCONN), alive, or hung
# (mounted, but nobody reads its requests: aborted first).
fuse_unmount() {
	local m=$1
	is_mounted "$m" || return 0
	if ! timeout -s KILL 3 stat -f "$m" >/dev/null 2>&1; then
		fuse_abort "$m" 2>/dev/null
	fi
	umount "$m" 2>/dev/null || fusermount3 -uz "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
	is_mounted "$m" && warn "could not unmount $m"
	return 0
}

loop_detach() { losetup -d "$1" 2>/dev/null || true; }

cgroup_remove() {
	local cg=$1 p
	[ -d "$cg" ] || return 0
	# Move any process left inside to the root group, then remove it.
	while read -r p; do
		echo "$p" >"$WBC_CGROOT/cgroup.procs" 2>/dev/null || true
	done <"$cg/cgroup.procs"
	rmdir "$cg" 2>/dev/null || warn "could not remove cgroup $cg"
}

wbc_cleanup() {
	[ "$WBC_CLEANED" = 1 ] && return 0
	WBC_CLEANED=1
	set +e
	local p m l c d
	for p in "${WBC_PIDS[@]}"; do
		[ -n "$p" ] && stop_pid "$p" 5
	done
	for l in "${WBC_LOOPS[@]}"; do loop_detach "$l"; done
	for m in "${WBC_FUSE_MOUNTS[@]}"; do fuse_unmount "$m"; done
	for c in "${WBC_CGROUPS[@]}"; do cgroup_remove "$c"; done
	[ "$WBC_FUSECTL_MOUNTED" = 1 ] && umount /sys/fs/fuse/connections 2>/dev/null
	for d in "${WBC_TMPDIRS[@]}"; do
		if [ "$WBC_KEEP" = 1 ]; then
			log "kept $d"
		else
			rm -rf "$d"
		fi
	done
	WBC_PIDS=() WBC_LOOPS=() WBC_FUSE_MOUNTS=() WBC_CGROUPS=() WBC_TMPDIRS=()
	return 0
}

wbc_install_traps() {
	trap 'rc=$?; wbc_cleanup; exit $rc' EXIT
	trap 'log "interrupted"; exit 130' INT
	trap 'log "terminated"; exit 143' TERM
	trap 'log "hangup"; exit 129' HUP
}

# mk_workdir PREFIX: make and register a temporary directory and set WORK
# to it (not printed: a $(...) subshell could not register it). The default
# parent is /var/tmp (a real disk: the cache and backing files must not
# live in a tmpfs, whose page cache behaves differently). WBC_TMP overrides
# it.
mk_workdir() {
	local parent=${WBC_TMP:-/var/tmp}
	mkdir -p "$parent"
	WORK=$(mktemp -d "$parent/$1.XXXXXX")
	track_tmpdir "$WORK"
}

# ---------------------------------------------------------------- building

# wbc_build DIR: build wbcache and wbcheck into DIR, set WBCACHE and WBCHECK.
# WBCACHE / WBCHECK in the environment name prebuilt binaries instead.
wbc_build() {
	local dir=$1
	mkdir -p "$dir"
	if [ -z "${WBCACHE:-}" ]; then
		(cd "$WBC_REPO" && go build -o "$dir/wbcache" ./cmd/wbcache) || die "go build ./cmd/wbcache failed"
		WBCACHE=$dir/wbcache
	fi
	if [ -z "${WBCHECK:-}" ]; then
		(cd "$WBC_REPO" && go build -o "$dir/wbcheck" ./cmd/wbcheck) || die "go build ./cmd/wbcheck failed"
		WBCHECK=$dir/wbcheck
	fi
	export WBCACHE WBCHECK
}

# wbc_builds_or_head ARRAY: the A/B scripts' builds (NAME=BINARY words in
# the array named ARRAY); when none were given, this tree's wbcache,
# built into $WORK/bin, as "head".
wbc_builds_or_head() {
	local -n builds_ref=$1
	if [ ${#builds_ref[@]} -eq 0 ]; then
		wbc_build "$WORK/bin"
		builds_ref=("head=$WBCACHE")
	fi
}

# ---------------------------------------------------------------- measuring

# cpu_ticks PID: user + system CPU time of PID, in clock ticks.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; }

# cpu_us_per TICKS N: TICKS of CPU time per one of N operations, in µs
# (0 when N is 0).
cpu_us_per() {
	awk -v d="$1" -v hz="$(getconf CLK_TCK)" -v n="$2" 'BEGIN { if (n > 0) printf "%.2f", d / hz / n * 1e6; else print 0 }'
}

# median: the median of the numbers on stdin (whitespace separated).
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }

# ---------------------------------------------------------------- daemon

# wbc_format CACHE BACKING CACHE_SIZE [extra format args...]
wbc_format() {
	local cache=$1 backing=$2 csize=$3
	shift 3
	"$WBCACHE" format --cache "$cache" --backing "$backing" --cache-size "$csize" --force "$@"
}

declare -A WBC_WRAP=() WBC_RCF=() WBC_DMNT=()

# wbc_start MNT CACHE BACKING LOG [mount flags...]: start `wbcache mount` in
# the background and set WBC_DPID. With WBC_DAEMON_CGROUP set, the daemon
# runs inside that blkio cgroup from its first instruction. A wrapper
# subshell (whose output goes to LOG) waits for the daemon and records its
# exit status, so that bash's "Killed" job notices land in LOG too.
# WBC_FUSE_URING (auto, on or off), when set, is passed as --fuse-uring,
# and WBC_FUSE_BATCH (auto or off) as --fuse-batch.
wbc_start() {
	local mnt=$1 cache=$2 backing=$3 logf=$4 cg=${WBC_DAEMON_CGROUP:-} pidf rcf i
	shift 4
	is_mounted "$mnt" || mkdir -p "$mnt"
	pidf=$(mktemp "${TMPDIR:-/tmp}/wbc-pid.XXXXXX")
	rcf=$pidf.rc
	rm -f "$pidf" "$rcf"
	WBC_DSTART=$(now_ns)
	(
		[ -n "$cg" ] && echo "$BASHPID" >"$cg/cgroup.procs"
		"$WBCACHE" mount --cache "$cache" --backing "$backing" ${WBC_FUSE_URING:+--fuse-uring "$WBC_FUSE_URING"} ${WBC_FUSE_BATCH:+--fuse-batch "$WBC_FUSE_BATCH"} "$@" "$mnt" &
		echo $! >"$pidf.tmp"
		mv "$pidf.tmp" "$pidf"
		rc=0
		wait $! || rc=$?
		echo $rc >"$rcf"
	) >>"$logf" 2>&1 &
	local wrap=$!
	for ((i = 0; i < 1000; i++)); do
		[ -s "$pidf" ] && break
		sleep 0.001
	done
	WBC_DPID=$(cat "$pidf")
	rm -f "$pidf"
	WBC_WRAP[$WBC_DPID]=$wrap
	WBC_RCF[$WBC_DPID]=$rcf
	WBC_DMNT[$WBC_DPID]=$mnt
	track_pid "$WBC_DPID"
	track_fuse "$mnt"
}

# wbc_reap PID: wait for the daemon's wrapper; returns the daemon's exit
# status (137 after kill -9). A daemon that does not go away within 15s of
# dying (a zombie whose thread sits in uninterruptible sleep, waiting for
# an answer from its own FUSE mount) is reported in WBC_STUCK (its thread
# stacks) and released by aborting its FUSE connection.
WBC_STUCK=
wbc_reap() {
	local pid=$1 w=${WBC_WRAP[$1]:-} rcf=${WBC_RCF[$1]:-} m=${WBC_DMNT[$1]:-} rc=0 i t
	WBC_STUCK=
	if [ -n "$w" ]; then
		for ((i = 0; i < 1500; i++)); do
			kill -0 "$w" 2>/dev/null || break
			sleep 0.01
		done
		if kill -0 "$w" 2>/dev/null && [ -d "/proc/$pid" ]; then
			WBC_STUCK="PID $pid state $(awk '/^State:/ { print $2 }' "/proc/$pid/status" 2>/dev/null)"
			for t in /proc/"$pid"/task/*; do
				WBC_STUCK+="; thread ${t##*/} $(awk '{ print $3 }' "$t/stat" 2>/dev/null): $(tr '\n' ' ' <"$t/stack" 2>/dev/null | cut -c1-300)"
			done
			warn "wbcache PID $pid did not go away after dying: $WBC_STUCK"
			if [ -n "$m" ]; then
				warn "aborting the FUSE connection of $m to release it"
				fuse_abort "$m"
			fi
		fi
		wait "$w" 2>/dev/null
	fi
	[ -n "$rcf" ] && [ -s "$rcf" ] && rc=$(cat "$rcf")
	rm -f "$rcf"
	unset "WBC_WRAP[$pid]" "WBC_RCF[$pid]" "WBC_DMNT[$pid]"
	untrack_pid "$pid"
	return "$rc"
}

# wbc_wait_ready LOG PID [TIMEOUT]: wait for the ready line. Returns 0 when
# ready (WBC_READY_SECS = seconds since wbc_start), 1 if the daemon exited
# first, 2 on timeout. Only ready lines after byte WBC_LOG_MARK count.
wbc_wait_ready() {
	local logf=$1 pid=$2 t=${3:-120} end
	end=$(($(date +%s) + t))
	while :; do
		if tail -c +"$((${WBC_LOG_MARK:-0} + 1))" "$logf" 2>/dev/null | grep -q '^wbcache: serving'; then
			WBC_READY_SECS=$(secs_since "$WBC_DSTART")
			return 0
		fi
		pid_alive "$pid" || return 1
		[ "$(date +%s)" -ge "$end" ] && return 2
		sleep 0.01
	done
}

# wbc_mount_ready MNT CACHE BACKING LOG [mount flags...]: start and wait.
wbc_mount_ready() {
	local mnt=$1 logf=$4 rc=0
	WBC_LOG_MARK=$(stat -c %s "$logf" 2>/dev/null || echo 0)
	wbc_start "$@"
	wbc_wait_ready "$logf" "$WBC_DPID" 120 || rc=$?
	if [ $rc -ne 0 ]; then
		warn "wbcache mount did not become ready (rc $rc); log tail:"
		tail -n 20 "$logf" >&2
		return 1
	fi
	[ -e "$mnt/disk" ] || {
		warn "ready line printed but $mnt/disk does not exist"
		return 1
	}
}

# wbc_stop PID MNT [SECS]: clean stop with SIGTERM; returns the daemon's
# exit status (99 if it had to be killed, 98 if the mount stayed behind).
wbc_stop() {
	local pid=$1 mnt=$2 t=${3:-120} i rc=0
	if ! pid_alive "$pid"; then
		wbc_reap "$pid" || rc=$?
		return $rc
	fi
	kill -TERM "$pid"
	for ((i = 0; i < t * 20; i++)); do
		pid_alive "$pid" || break
		sleep 0.05
	done
	if pid_alive "$pid"; then
		warn "wbcache (PID $pid) still running ${t}s after SIGTERM; killing it"
		kill -KILL "$pid"
		wbc_reap "$pid"
		fuse_unmount "$mnt"
		return 99
	fi
	wbc_reap "$pid" || rc=$?
	if is_mounted "$mnt"; then
		warn "wbcache exited ($rc) after SIGTERM but $mnt is still mounted"
		fuse_unmount "$mnt"
		[ $rc -eq 0 ] && rc=98
	fi
	return $rc
}

# ---------------------------------------------------------------- crash loops

# The crash loops are Go tests of the crashtest package (crashtest/doc.go);
# crashtest.sh, crashtest-ext4.sh and powercut.sh --real run them.

# crash_args ALLOWED ARGS...: translate the script options the crash loops
# share into -crash.* test flags in CRASH_ARGS. ALLOWED lists the options
# the calling script takes (" -n -s --quick ... "); -h/--help and any
# other option call the script's usage.
crash_args() {
	local allowed=$1
	shift
	CRASH_ARGS=()
	while [ $# -gt 0 ]; do
		if [[ $1 != -h && $1 != --help && $allowed != *" $1 "* ]]; then
			echo "unknown option: $1" >&2
			usage
		fi
		case $1 in
		-n) CRASH_ARGS+=("-crash.n=$2"); shift 2 ;;
		-s) CRASH_ARGS+=("-crash.seed=$2"); shift 2 ;;
		--size | --backing-size) CRASH_ARGS+=("-crash.size=$2"); shift 2 ;;
		--cache-size) CRASH_ARGS+=("-crash.cache-size=$2"); shift 2 ;;
		--variant) CRASH_ARGS+=("-crash.variant=$2"); shift 2 ;;
		--quick) CRASH_ARGS+=(-crash.quick); shift ;;
		--stop-on-failure) CRASH_ARGS+=(-crash.stop-on-failure); shift ;;
		--keep) CRASH_ARGS+=(-crash.keep); shift ;;
		--failures) CRASH_ARGS+=("-crash.failures=$2"); shift 2 ;;
		--) shift; CRASH_ARGS+=("-crash.powercut-args=$*"); break ;;
		-h | --help) usage 0 ;;
		esac
	done
}

# crash_loop TEST: run the Go test TEST of the crashtest package with
# CRASH_ARGS; its exit status is the loop's. WBCACHE, WBCHECK and
# WBCACHE_POWERCUT name prebuilt binaries, WBC_TMP the parent of the work
# directory, WBC_FUSE_URING the transport.
crash_loop() {
	need_root
	need_tools go
	(cd "$WBC_REPO" && go test -count=1 -timeout 0 -v -run "^$1\$" ./crashtest -args "${CRASH_ARGS[@]}")
}

# ---------------------------------------------------------------- emulated HDD

# hdd_up NAME FILE SIZE [IOPS] [BPS]: a loop device on FILE (created sparse
# when missing) and a blkio cgroup NAME throttling it to IOPS (default 200)
# and BPS (default 170M) for reads and writes. Sets HDD_LOOP, HDD_CG and
# HDD_MAJMIN. Processes must run inside HDD_CG (hdd_exec, or
# WBC_DAEMON_CGROUP=$HDD_CG for wbc_start), and only their O_DIRECT I/O is
# throttled: cgroup v1 attributes buffered writeback to the flusher thread.
hdd_up() {
	local name=$1 file=$2 size=$3 iops=${4:-200} bps=${5:-170M} dev f
	[ -d "$WBC_CGROOT" ] || die "cgroup v1 blkio controller not mounted at $WBC_CGROOT"
	bps=$(size_bytes "$bps")
	[ -e "$file" ] || truncate -s "$size" "$file"
	HDD_LOOP=$(losetup --find --show --direct-io=on "$file") || die "losetup failed"
	track_loop "$HDD_LOOP"
	dev=$(basename "$HDD_LOOP")
	HDD_MAJMIN=$(cat "/sys/block/$dev/dev")
	HDD_CG=$WBC_CGROOT/$name
	[ -d "$HDD_CG" ] && cgroup_remove "$HDD_CG"
	mkdir "$HDD_CG" || die "cannot create cgroup $HDD_CG"
	track_cgroup "$HDD_CG"
	for f in read_iops write_iops; do
		echo "$HDD_MAJMIN $iops" >"$HDD_CG/blkio.throttle.${f}_device"
	done
	for f in read_bps write_bps; do
		echo "$HDD_MAJMIN $bps" >"$HDD_CG/blkio.throttle.${f}_device"
	done
	log "emulated HDD: $HDD_LOOP ($HDD_MAJMIN) on $file, $iops IOPS, $((bps >> 20)) MiB/s, cgroup $HDD_CG"
}

# hdd_down: undo hdd_up (the file stays).
hdd_down() {
	[ -n "${HDD_CG:-}" ] && cgroup_remove "$HDD_CG"
	[ -n "${HDD_LOOP:-}" ] && {
		loop_detach "$HDD_LOOP"
		untrack_loop "$HDD_LOOP"
	}
	HDD_CG= HDD_LOOP=
}

# hdd_exec CGROUP CMD...: run CMD inside the blkio cgroup (foreground).
hdd_exec() {
	local cg=$1
	shift
	(
		echo "$BASHPID" >"$cg/cgroup.procs"
		exec "$@"
	)
}

# cg_serviced CGROUP MAJ:MIN: "READS WRITES" completed by the cgroup on it.
cg_serviced() {
	awk -v d="$2" '$1 == d && $2 == "Read" { r = $3 } $1 == d && $2 == "Write" { w = $3 } END { print r + 0, w + 0 }' \
		"$1/blkio.throttle.io_serviced" 2>/dev/null || echo "0 0"
}

# ------------------------------------------ a region dirtied at a density
# (drain-density.sh, stream-over-dirty.sh: builds side by side, alternating)

# dens_args REGION DENSITIES HELPLINES ARGS...: parse --region SIZE,
# --densities LIST, --rounds N and the binaries into region, densities,
# rounds and bins (defaults: REGION, DENSITIES, 1 round, no binary); -h
# prints lines HELPLINES (e.g. 2,23) of the calling script.
dens_args() {
	region=$1 densities=$2 rounds=1 bins=()
	local help=$3
	shift 3
	while [ $# -gt 0 ]; do
		case $1 in
		--region) region=$2; shift 2 ;;
		--densities) densities=$2; shift 2 ;;
		--rounds) rounds=$2; shift 2 ;;
		-h | --help) sed -n "${help}p" "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
		-*) die "unknown option $1 (see --help)" ;;
		*) bins+=("$1"); shift ;;
		esac
	done
}

# dens_setup PREFIX: a work directory, a wbcache built from this tree when
# no binary was given, and an emulated HDD four times the region; sets
# work, mnt, name, region_bytes and blocks. wbc_cleanup undoes it all.
dens_setup() {
	command -v fio >/dev/null || die "fio is not installed (apt-get install -y fio)"
	need_root
	wbc_install_traps
	mk_workdir "$1"
	work=$WORK
	if [ ${#bins[@]} -eq 0 ]; then
		go build -o "$work/wbcache" ./cmd/wbcache
		bins=("$work/wbcache")
	fi
	region_bytes=$(size_bytes "$region")
	blocks=$((region_bytes / 4096))
	mnt=$work/mnt
	mkdir -p "$mnt"
	name=$1-$$
	hdd_up "$name" "$work/hdd.img" "$((region_bytes * 4))" 200 170M
}

# dens_mount BIN [OPTION...]: a new cache twice the region over the HDD,
# mounted inside its throttle with write-back held back (watermarks
# 99/100, max dirty age 1h) and the options given; sets dpid.
dens_mount() {
	local bin=$1
	shift
	rm -f "$work/cache.img"
	"$bin" format --cache "$work/cache.img" --cache-size "$((region_bytes * 2 / 1048576))M" --backing "$HDD_LOOP" >/dev/null
	hdd_exec "$HDD_CG" "$bin" mount --cache "$work/cache.img" --backing "$HDD_LOOP" \
		--low-watermark 99 --high-watermark 100 --max-dirty-age 1h "$@" "$mnt" >"$work/daemon.log" 2>&1 &
	dpid=$!
	track_pid "$dpid"
	track_fuse "$mnt"
	for _ in $(seq 100); do grep -q serving "$work/daemon.log" && break; sleep 0.1; done
	grep -q serving "$work/daemon.log" || die "the daemon did not start: $(cat "$work/daemon.log")"
}

# dens_fill PERCENT: fio writes that share of the region's 4 KiB blocks
# once each, in random order (O_DIRECT, QD1).
dens_fill() {
	[ "$1" -gt 0 ] || return 0
	fio --name=fill --filename="$mnt/disk" --direct=1 --rw=randwrite --bs=4k --size="$region_bytes" \
		--number_ios=$((blocks * $1 / 100)) --ioengine=psync --randseed=7 --output=/dev/null
}

# dens_stop BIN: stop the daemon dens_mount started.
dens_stop() {
	"$1" stop "$mnt" >/dev/null
	wait "$dpid" || true
	untrack_pid "$dpid"
	dpid=
}

# dens_json FIELD: FIELD of the status JSON on stdin (0 if absent).
dens_json() { python3 -c 'import json,sys; print(json.load(sys.stdin).get(sys.argv[1], 0))' "$1"; }
