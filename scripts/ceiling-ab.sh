#!/usr/bin/env bash
# scripts/ceiling-ab.sh: wbcache writeback against the FUSE ceiling
# (../shared/bench/fuseceiling), measured alternately in one run, for the
# 4 KiB random-write QD32 target: each round runs the same fio job against
# the ceiling, then against each wbcache build on a freshly formatted cache
# (so every round pays the same cold-cache costs), and the script prints
# every round and the medians, as IOPS and as a share of the ceiling, and
# for each wbcache build the daemon's CPU time (user + system, from
# /proc/PID/stat) during the fio run per write completed, and the write
# requests the disk under WBC_TMP served from the start of the run to
# the end of the unmount (from /sys/dev/block/MAJ:MIN/stat, after a
# sync), with their average size: how well the cache file's dirty pages
# were laid out in runs.
#
# The backing device is a plain sparse file (what is measured is the
# write path into the cache, which never waits for the HDD here), the
# ceiling serves a sparse file of its own, both under WBC_TMP.
#
# Usage: scripts/ceiling-ab.sh [options] [NAME=WBCACHE_BINARY ...]
#   -n ROUNDS          rounds (default 5)
#   --runtime SECS     seconds per fio run (default 6)
#   --cache-size SIZE  wbcache cache size (default 512M)
#   --region SIZE      fio region at offset 0 (default 128M)
#   --qd N             iodepth (default 32)
#   --format-args ARGS extra `wbcache format` arguments (e.g. "--journal 8M")
#   --fuse-uring MODE  wbcache's FUSE transport: on (default: FUSE over
#                      io_uring, turning on the fuse module's enable_uring
#                      parameter), auto or off (/dev/fuse); "" passes no
#                      flag (for NAME=BINARY wrapper scripts that choose)
# Without NAME=BINARY arguments it builds this tree's wbcache ("head").
# Environment: FUSECEILING_SRC (default REPO/../shared/bench/fuseceiling),
# WBC_TMP (default /var/tmp).
# Exit status: 0 if every run completed, 1 otherwise.
set -uo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"

WBC_FUSE_URING=${WBC_FUSE_URING-on}
rounds=5 runtime=6 csize=512M region=128M qd=32 fargs='' builds=()
while [ $# -gt 0 ]; do
	case $1 in
	-n) rounds=$2; shift 2 ;;
	--runtime) runtime=$2; shift 2 ;;
	--cache-size) csize=$2; shift 2 ;;
	--region) region=$2; shift 2 ;;
	--qd) qd=$2; shift 2 ;;
	--format-args) fargs=$2; shift 2 ;;
	--fuse-uring) WBC_FUSE_URING=$2; shift 2 ;;
	-h | --help) usage 0 ;;
	-*) echo "unknown option: $1" >&2; usage ;;
	*=*) builds+=("$1"); shift ;;
	*) echo "expected NAME=BINARY, got: $1" >&2; usage ;;
	esac
done

need_root
need_tools fio fusermount3 go python3
wbc_install_traps
mk_workdir wbc-ab
wbc_builds_or_head builds
CEIL_SRC=${FUSECEILING_SRC:-$WBC_REPO/../shared/bench/fuseceiling}
[ -f "$CEIL_SRC/main.go" ] || die "fuseceiling source not found in $CEIL_SRC (set FUSECEILING_SRC)"
(cd "$CEIL_SRC" && go build -o "$WORK/fuseceiling" .) || die "building fuseceiling failed"

truncate -s 4G "$WORK/ceiling.img" "$WORK/backing.img"
mkdir -p "$WORK/ceil" "$WORK/mnt"
"$WORK/fuseceiling" "$WORK/ceil" "$WORK/ceiling.img" >"$WORK/ceiling.log" 2>&1 &
track_pid $!
track_fuse "$WORK/ceil"
for ((i = 0; i < 100; i++)); do
	[ -e "$WORK/ceil/disk" ] && break
	sleep 0.05
done
[ -e "$WORK/ceil/disk" ] || die "fuseceiling did not mount"

# run_fio FILE: print the write IOPS of one run (empty on failure).
# run_fio FILE: prints the IOPS and the writes completed.
run_fio() {
	fio --name=ab --filename="$1" --direct=1 --rw=randwrite --bs=4k --ioengine=libaio \
		--iodepth="$qd" --offset=0 --size="$region" --runtime="$runtime" --time_based \
		--randrepeat=0 --output-format=json 2>>"$WORK/fio.err" |
		python3 -c 'import json, sys; w = json.load(sys.stdin)["jobs"][0]["write"]; print(int(w["iops"]), w["total_ios"])' 2>/dev/null
}

# disk_writes: write requests and sectors the disk under WORK has served.
devstat=/sys/dev/block/$(stat -c '%Hd:%Ld' "$WORK")/stat
disk_writes() { awk '{ print $5, $7 }' "$devstat" 2>/dev/null || echo 0 0; }

declare -A cpu=() dreq=() dsize=()

declare -A res=()
names=(ceiling)
failed=0
for b in "${builds[@]}"; do names+=("${b%%=*}"); done
log "ceiling-ab: $rounds rounds, randwrite 4k QD$qd over $region for ${runtime}s; cache $csize ${fargs:+($fargs)}${WBC_FUSE_URING:+; --fuse-uring $WBC_FUSE_URING}"
for ((r = 1; r <= rounds; r++)); do
	read -r v _ < <(run_fio "$WORK/ceil/disk")
	[ -n "$v" ] || { warn "fio against the ceiling failed"; failed=1; }
	res[ceiling]+=" ${v:-0}"
	line="round $r: ceiling ${v:-fail}"
	for b in "${builds[@]}"; do
		name=${b%%=*} WBCACHE=${b#*=}
		rm -f "$WORK/cache.img"
		# shellcheck disable=SC2086 # format args are words
		wbc_format "$WORK/cache.img" "$WORK/backing.img" "$csize" $fargs >/dev/null || die "$name: format failed"
		wbc_mount_ready "$WORK/mnt" "$WORK/cache.img" "$WORK/backing.img" "$WORK/$name.log" || die "$name: mount failed"
		sync
		read -r w0 s0 < <(disk_writes)
		t0=$(cpu_ticks "$WBC_DPID")
		read -r v ios < <(run_fio "$WORK/mnt/disk")
		t1=$(cpu_ticks "$WBC_DPID")
		[ -n "$v" ] || { warn "fio against $name failed"; failed=1; }
		cpu[$name]+=" $(cpu_us_per $((t1 - t0)) "${ios:-0}")"
		wbc_stop "$WBC_DPID" "$WORK/mnt" >/dev/null || warn "$name: unclean stop"
		read -r w1 s1 < <(disk_writes)
		dreq[$name]+=" $((w1 - w0))"
		dsize[$name]+=" $(awk -v r=$((w1 - w0)) -v s=$((s1 - s0)) 'BEGIN { if (r > 0) printf "%.0f", s * 512 / r / 1024; else print 0 }')"
		res[$name]+=" ${v:-0}"
		line+=", $name ${v:-fail}"
	done
	log "$line"
done

ceil=$(echo "${res[ceiling]}" | median)
echo
echo "| target | IOPS per round | median | of ceiling | daemon CPU per write, median (per round) | disk write requests, median (KiB each, median) |"
echo "|---|---|--:|--:|---|---|"
for n in "${names[@]}"; do
	m=$(echo "${res[$n]}" | median)
	pct=$(awk -v a="$m" -v b="$ceil" 'BEGIN { if (b > 0) printf "%.0f%%", 100 * a / b; else print "-" }')
	c=- d=-
	[ -n "${cpu[$n]:-}" ] && c="$(echo "${cpu[$n]}" | median) µs ($(echo "${cpu[$n]}" | sed 's/^ //'))"
	[ -n "${dreq[$n]:-}" ] && d="$(echo "${dreq[$n]}" | median) ($(echo "${dsize[$n]}" | median))"
	echo "| $n |${res[$n]} | $m | $pct | $c | $d |"
done
exit $failed
