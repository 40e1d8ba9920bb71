#!/usr/bin/env bash
# scripts/bench.sh: side-by-side benchmark of wbcache against its baselines,
# in one run, on an emulated HDD (a loop device throttled by a cgroup v1
# blkio group to about 200 IOPS / 170 MiB/s, see scripts/hdd.sh) and an
# "SSD" (files on the machine's own disk, under WBC_TMP or /var/tmp).
#
# Targets (each runs every job of testdata/fio/[0-9]*.fio):
#   hdd               the bare emulated HDD (fio inside the throttled cgroup)
#   ssd               a raw file on the SSD
#   fuseceiling       ../shared/bench/fuseceiling: the simplest fast one-file
#                     FUSE passthrough, over a file on the SSD: the ceiling
#                     FUSE itself puts on wbcache (skipped, loudly, if absent)
#   none              wbcache mode none: FUSE pass-through to the HDD
#   writeback         wbcache, SSD cache file in front of the emulated HDD
#   writethrough      (the daemon runs inside the throttled cgroup; it opens
#   writearound        the HDD O_DIRECT, so its HDD I/O is throttled)
#   writeback-cutoff0 writeback with --seq-cutoff 0, only the 1 MiB
#                     sequential write job: the sequential cutoff's effect
#                     (compare with writeback, which has the default 4M)
#
# Per wbcache run: `wbcache flush` before each job (untimed), then the job,
# then a timed `wbcache flush` (the drain time column); status counters
# before/after give the hit ratio, dirty data left and bypassed writes; the
# sustained and sequential write jobs are sampled every 0.5 s (dirty share,
# destage rate) for the cache-filling/draining plots. Before the read-hit
# job its region is pre-warmed: read twice with 256k random reads (for
# writeback, ssd and fuseceiling first written with 256k random writes and
# an fsync, and flushed; for writethrough and writearound after one 4k
# write + fsync: wbcache promotes nothing while a write it sent around the
# cache is unsynced on the HDD).
#
# Output: a markdown table on stdout and in OUT/results.md, PNG plots in
# OUT (cmd/wbcache-bench draws them with gonum.org/v1/plot), raw fio JSON,
# iops logs and status samples in OUT/raw.
#
# Steady state (--steady, --density; scripts/bench-steady.sh): instead of
# the job files, targets fuseceiling, none and writeback run on one mount
# each, without flushes in between, over one region at offset 0 (1 GiB,
# 2 GiB cache): 4k randwrite QD1, 4k randwrite QD32, 4k randread QD32,
# 1M sequential write QD8, 4k write+fsync QD1 (--steady), then a timed
# `wbcache flush`; and (--density) for each density a fresh cache whose
# region is first dirtied to that share with 4k random writes, then the
# 1M sequential write QD8, writeback and none alternately. One table
# each, on stdout and in OUT/steady.md.
#
# Usage: scripts/bench.sh [options]
#   --quick              1 s jobs (2 s sustained), 2G HDD, 32M cache (CI);
#                        with --steady/--density: 1 s jobs, 128M region,
#                        256M cache, density 50 only
#   --steady             run the steady-state sequence
#   --density            run the dirty-density sequence
#   --region SIZE        steady/density region (default 1G)
#   --densities LIST     density percentages (default 0,25,50,75,100)
#   --runtime SECS       seconds per job (default 6; steady/density 5)
#   --sustain SECS       seconds for the sustained job (default 15)
#   --hdd-size SIZE      emulated HDD size (default 8G)
#   --cache-size SIZE    wbcache cache file size (default 512M, at most
#                        HDD/16 so the sustained region is 4x the cache;
#                        steady/density 2G)
#   --targets LIST       comma-separated subset of the targets above
#   --jobs REGEX         only job files whose name matches REGEX
#   --out DIR            output directory (default /var/tmp/wbc-bench-DATE)
#   --iops N / --bps B   emulated HDD limits (default 200 / 170M)
#   --keep               keep the work directory (images, logs)
#   --fuse-uring MODE    wbcache's FUSE transport: on (default: FUSE over
#                        io_uring, turning on the fuse module's enable_uring
#                        parameter), auto or off (/dev/fuse); "" passes
#                        no flag
# Environment: WBCACHE / WBCHECK = prebuilt binaries, WBC_TMP = parent of
# the work directory (the "SSD"; default /var/tmp), FUSECEILING_SRC =
# fuseceiling source directory (default REPO/../shared/bench/fuseceiling).
# Exit status: 0 if every job ran, 1 if any failed.
set -uo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"

WBC_FUSE_URING=${WBC_FUSE_URING-on}
quick=0 runtime= sustain= hdd_size= csize= targets_opt= jobs_re=. out= iops=200 bps=170M
steady=0 density=0 region= densities=
while [ $# -gt 0 ]; do
	case $1 in
	--quick) quick=1; shift ;;
	--steady) steady=1; shift ;;
	--density) density=1; shift ;;
	--region) region=$2; shift 2 ;;
	--densities) densities=$2; shift 2 ;;
	--runtime) runtime=$2; shift 2 ;;
	--sustain) sustain=$2; shift 2 ;;
	--hdd-size) hdd_size=$2; shift 2 ;;
	--cache-size) csize=$2; shift 2 ;;
	--targets) targets_opt=$2; shift 2 ;;
	--jobs) jobs_re=$2; shift 2 ;;
	--out) out=$2; shift 2 ;;
	--iops) iops=$2; shift 2 ;;
	--bps) bps=$2; shift 2 ;;
	--keep) WBC_KEEP=1; shift ;;
	--fuse-uring) WBC_FUSE_URING=$2; shift 2 ;;
	-h | --help) usage 0 ;;
	*) echo "unknown option: $1" >&2; usage ;;
	esac
done
STEADY=$((steady || density))
if [ "$STEADY" = 1 ] && [ "$quick" = 1 ]; then
	runtime=${runtime:-1} hdd_size=${hdd_size:-2G} csize=${csize:-256M} region=${region:-128M} densities=${densities:-50}
elif [ "$STEADY" = 1 ]; then
	runtime=${runtime:-5} hdd_size=${hdd_size:-8G} csize=${csize:-2G} region=${region:-1G} densities=${densities:-0,25,50,75,100}
elif [ "$quick" = 1 ]; then
	runtime=${runtime:-1} sustain=${sustain:-2} hdd_size=${hdd_size:-2G} csize=${csize:-32M} logms=100 sample=0.25
else
	runtime=${runtime:-6} sustain=${sustain:-15} hdd_size=${hdd_size:-8G} csize=${csize:-512M} logms=250 sample=0.5
fi
out=${out:-/var/tmp/wbc-bench-$(date +%Y%m%d-%H%M%S)}

need_root
need_tools fio losetup fusermount3 awk go
HB=$(size_bytes "$hdd_size")
CB=$(size_bytes "$csize")
if [ "$STEADY" = 1 ]; then
	RB=$(size_bytes "$region")
	[ "$RB" -gt 0 ] && [ $((RB % (1 << 20))) -eq 0 ] || die "--region $region: want a whole number of MiB, e.g. 1G"
	[ "$RB" -le "$HB" ] || die "--region $region is larger than the emulated HDD ($hdd_size): raise --hdd-size"
	[ "$RB" -le "$CB" ] || warn "--region $region is larger than the cache ($csize): the steady jobs then measure a full cache"
	[[ $densities =~ ^[0-9]+(,[0-9]+)*$ ]] || die "--densities '$densities': want comma-separated percentages, e.g. 0,25,50,75,100"
	for d in ${densities//,/ }; do
		[ "$d" -le 100 ] || die "--densities: $d is above 100 (percent of the region)"
	done
fi
wbc_install_traps
mk_workdir wbc-bench
wbc_build "$WORK/bin"
if [ "$STEADY" = 0 ]; then
	(cd "$WBC_REPO/cmd/wbcache-bench" && go build -o "$WORK/bin/wbcache-bench" .) || die "building cmd/wbcache-bench failed"
	BENCH=$WORK/bin/wbcache-bench
fi

CEIL_SRC=${FUSECEILING_SRC:-$WBC_REPO/../shared/bench/fuseceiling}
CEIL_BIN=
if [ -f "$CEIL_SRC/main.go" ]; then
	if (cd "$CEIL_SRC" && go build -o "$WORK/bin/fuseceiling" .); then
		CEIL_BIN=$WORK/bin/fuseceiling
	else
		warn "######## building fuseceiling in $CEIL_SRC failed: SKIPPING the fuseceiling target ########"
	fi
else
	warn "######## $CEIL_SRC not found: SKIPPING the fuseceiling target (set FUSECEILING_SRC) ########"
fi

RAW=$out/raw
mkdir -p "$RAW"
rm -f "$RAW"/*

# The cgroup name carries our PID: a second bench running at the same time
# must not take over (or remove) ours.
hdd_up "wbc-bench-$$" "$WORK/hdd.img" "$hdd_size" "$iops" "$bps"
CACHE=$WORK/cache.img
MNT=$WORK/mnt
CEIL_MNT=$WORK/ceil
mkdir -p "$MNT" "$CEIL_MNT"
truncate -s "$hdd_size" "$WORK/ssd-raw.img" "$WORK/ceiling.img"
POLICY="--low-watermark 10 --high-watermark 50 --max-dirty-age 30s --workers 2 --promote-after 1"
errors=0

# ------------------------------------------------------------ shared helpers
note() { printf 'note\t-\t-\t%s\n' "$*" >>"$RAW/meta.tsv"; }

# select_targets TARGET...: TARGETS = those of the list that --targets
# names (all without it) and that can run here.
select_targets() {
	local t
	TARGETS=()
	for t in "$@"; do
		if [ -n "$targets_opt" ] && [[ ",$targets_opt," != *",$t,"* ]]; then continue; fi
		if [ "$t" = fuseceiling ] && [ -z "$CEIL_BIN" ]; then continue; fi
		TARGETS+=("$t")
	done
	[ ${#TARGETS[@]} -gt 0 ] || die "no target to run: --targets '$targets_opt' names none of: $*"
}

wbc_flush_quiet() { timeout 900 "$WBCACHE" flush "$MNT" >/dev/null 2>&1 || warn "wbcache flush failed"; }

# status_vals: "slots dirty used destaged writes hits misses bypassed"
status_vals() {
	"$WBCACHE" status "$MNT" --json 2>/dev/null |
		"$WBCHECK" json - slots slots_dirty slots_used destaged_blocks writes read_hits read_misses bypassed 2>/dev/null ||
		echo "0 0 0 0 0 0 0 0"
}

# check_throttle TARGET READS WRITES: the cgroup must still be ours and
# must have seen the target's HDD I/O, or the numbers are not an HDD's.
check_throttle() {
	if [ ! -d "$HDD_CG" ] || ! grep -q "^$HDD_MAJMIN $iops\b" "$HDD_CG/blkio.throttle.write_iops_device" 2>/dev/null; then
		errors=$((errors + 1))
		warn "the blkio cgroup $HDD_CG or its throttle rule for $HDD_MAJMIN is gone: $1 ran unthrottled"
		note "INVALID: $1 ran without the HDD throttle (cgroup $HDD_CG removed or changed)"
	elif [ $(($2 + $3)) -eq 0 ]; then
		errors=$((errors + 1))
		warn "the blkio cgroup throttled no I/O of $1: its HDD I/O escaped the throttle"
		note "INVALID: $1 ran without the HDD throttle (no I/O counted in $HDD_CG)"
	fi
}

# wbc_up TARGET MODE [mount flags...]: format the cache afresh and mount
# wbcache over the emulated HDD, the daemon inside the throttled cgroup
# (WBC_DPID). Returns 1 (counted as an error) if either step fails.
wbc_up() {
	local t=$1 mode=$2
	shift 2
	log "target $t: format + mount (mode $mode $*)"
	if ! wbc_format "$CACHE" "$HDD_LOOP" "$csize" >"$RAW/format-$t.log" 2>&1; then
		errors=$((errors + 1))
		warn "wbcache format failed: $(cat "$RAW/format-$t.log")"
		return 1
	fi
	WBC_IO0=$(cg_serviced "$HDD_CG" "$HDD_MAJMIN")
	# shellcheck disable=SC2086
	if ! WBC_DAEMON_CGROUP=$HDD_CG wbc_mount_ready "$MNT" "$CACHE" "$HDD_LOOP" "$RAW/daemon-$t.log" --mode "$mode" $POLICY "$@"; then
		errors=$((errors + 1))
		note "wbcache mount for $t failed"
		return 1
	fi
}

# wbc_down TARGET: stop the daemon wbc_up started, record the HDD I/O the
# cgroup counted meanwhile and check that the throttle saw it.
wbc_down() {
	local t=$1 rc=0 io1 r w
	wbc_stop "$WBC_DPID" "$MNT" 300 || rc=$?
	if [ $rc -ne 0 ]; then
		errors=$((errors + 1))
		note "wbcache ($t) exited $rc after SIGTERM"
	fi
	io1=$(cg_serviced "$HDD_CG" "$HDD_MAJMIN")
	r=$(($(echo "$io1" | cut -d' ' -f1) - $(echo "$WBC_IO0" | cut -d' ' -f1)))
	w=$(($(echo "$io1" | cut -d' ' -f2) - $(echo "$WBC_IO0" | cut -d' ' -f2)))
	printf 'hddio\t-\t%s\t%s\t%s\n' "$t" "$r" "$w" >>"$RAW/meta.tsv"
	check_throttle "$t" "$r" "$w"
}

# ceil_up: serve $WORK/ceiling.img through fuseceiling as $CEIL_MNT/disk
# (CEIL_PID). Returns 1 (counted as an error) if it does not come up.
ceil_up() {
	log "target fuseceiling: $CEIL_BIN $CEIL_MNT $WORK/ceiling.img"
	"$CEIL_BIN" "$CEIL_MNT" "$WORK/ceiling.img" >>"$RAW/fuseceiling.log" 2>&1 &
	CEIL_PID=$!
	track_pid "$CEIL_PID"
	track_fuse "$CEIL_MNT"
	local i
	for ((i = 0; i < 500; i++)); do
		is_mounted "$CEIL_MNT" && [ -e "$CEIL_MNT/disk" ] && return 0
		sleep 0.01
	done
	errors=$((errors + 1))
	note "fuseceiling did not mount"
	return 1
}

ceil_down() {
	stop_pid "$CEIL_PID" 10
	untrack_pid "$CEIL_PID"
	fuse_unmount "$CEIL_MNT"
}

if [ "$STEADY" = 1 ]; then
	# shellcheck source=scripts/bench-steady.sh
	. "$(dirname "$0")/bench-steady.sh"
	steady_main
	exit $?
fi

# ------------------------------------------------------------ job files
[ $((4 * CB)) -le $((HB / 4)) ] || warn "cache $csize is larger than HDD/16: the sustained job's region is less than 4x the cache"
# Regions of the disk (offsets in bytes).
export WBC_RUNTIME=$runtime WBC_RAMP=0 WBC_LOG_MSEC=$logms WBC_SUSTAIN_RUNTIME=$sustain
export WBC_HOT_OFF=0 WBC_HOT_SIZE=$((CB / 4))
export WBC_HIT_OFF=$((CB / 4)) WBC_HIT_SIZE=$((CB / 8))
export WBC_SEQ_OFF=$((HB / 8)) WBC_SEQ_SIZE=$((HB / 4))
export WBC_BIG_OFF=$((HB * 3 / 8)) WBC_BIG_SIZE=$((HB / 4))
export WBC_MISS_OFF=$((HB * 5 / 8)) WBC_MISS_SIZE=$((HB * 3 / 8))

# ------------------------------------------------------------ lists
ALL_TARGETS=(hdd ssd fuseceiling none writeback writethrough writearound writeback-cutoff0)
declare -A TDESC=(
	[hdd]="bare emulated HDD: loop device throttled to $iops IOPS / $bps by blkio (fio inside the cgroup)"
	[ssd]="raw file on the SSD (the machine's disk), no FUSE"
	[fuseceiling]="trivial go-fuse passthrough (shared/bench/fuseceiling) over a file on the SSD: the FUSE ceiling"
	[none]="wbcache mode none: FUSE pass-through to the emulated HDD"
	[writeback]="wbcache writeback, $csize cache file on the SSD, emulated HDD behind (seq-cutoff 4M)"
	[writethrough]="wbcache writethrough"
	[writearound]="wbcache writearound"
	[writeback-cutoff0]="wbcache writeback with --seq-cutoff 0 (never bypass; sequential write job only)"
)
select_targets "${ALL_TARGETS[@]}"
: >"$RAW/targets.txt"
fuse_note=""
[ -n "${WBC_FUSE_URING:-}" ] && fuse_note=" [wbcache --fuse-uring $WBC_FUSE_URING]"
for t in "${TARGETS[@]}"; do
	d=${TDESC[$t]}
	case $t in none | write*) d+=$fuse_note ;; esac
	printf '%s\t%s\n' "$t" "$d" >>"$RAW/targets.txt"
done

JOBFILES=()
: >"$RAW/workloads.txt"
for f in "$WBC_REPO"/testdata/fio/[0-9]*.fio; do
	wl=$(basename "$f" .fio)
	wl=${wl#[0-9][0-9]-}
	[[ $wl =~ $jobs_re ]] || continue
	JOBFILES+=("$f")
	printf '%s\t%s\n' "$wl" "$(sed -n 's/^; \{0,1\}//p' "$f" | tr '\n' ' ' | sed 's/ *$//')" >>"$RAW/workloads.txt"
done
[ ${#JOBFILES[@]} -gt 0 ] || die "no job files match '$jobs_re'"

note "$(uname -r), $(nproc) CPUs, $(fio --version); jobs ${runtime}s each (sustained ${sustain}s), time_based; HDD $hdd_size, cache $csize"
note "emulated HDD: loop device with --direct-io=on, blkio throttle $iops IOPS and $bps per direction; its queue splits I/O above 512 KiB (128 segments of 4 KiB pages), and each part counts as one I/O, so 1 MiB requests run at 100-170 MiB/s"
note "regions: hot $((WBC_HOT_SIZE >> 20)) MiB at 0 (random writes, mixed, fsync); hit $((WBC_HIT_SIZE >> 20)) MiB (pre-warmed); sequential $((WBC_SEQ_SIZE >> 20)) MiB; sustained $((WBC_BIG_SIZE >> 20)) MiB ($((WBC_BIG_SIZE / CB))x the cache); miss $((WBC_MISS_SIZE >> 20)) MiB untouched"
note "pre-warming: writeback, ssd, fuseceiling: 256k random writes over the hit region + fsync + flush, then two 256k random read passes; writethrough, writearound: one 4k write + fsync (wbcache promotes nothing while any write it sent around the cache is unsynced on the HDD), then the two read passes"
note "ssd and fuseceiling read sparse files: reads of never-written regions (the miss job) do no device I/O there"

# ------------------------------------------------------------ job helpers
# run_fio JOBFILE TARGET FILE INCGROUP
run_fio() {
	local f=$1 t=$2 file=$3 incg=$4 wl rc=0
	wl=$(basename "$f" .fio)
	wl=${wl#[0-9][0-9]-}
	local cmd=(env WBC_FILE="$file" fio --output-format=json --output="$RAW/$wl@$t.json"
		--write_iops_log="$RAW/$wl@$t" "$f")
	if [ "$incg" = 1 ]; then
		hdd_exec "$HDD_CG" "${cmd[@]}" >"$RAW/$wl@$t.out" 2>&1 || rc=$?
	else
		"${cmd[@]}" >"$RAW/$wl@$t.out" 2>&1 || rc=$?
	fi
	if [ $rc -ne 0 ]; then
		errors=$((errors + 1))
		warn "fio $wl on $t exited $rc: $(tail -n 3 "$RAW/$wl@$t.out" | tr '\n' ' ')"
		note "fio $wl on $t FAILED (exit $rc)"
	fi
	local iops
	iops=$("$WBCHECK" json "$RAW/$wl@$t.json" jobs.0.write.iops jobs.0.read.iops 2>/dev/null | awk '{ printf "%.0f", $1 + $2 }')
	log "  $wl on $t: ${iops:-?} IOPS"
}

# prewarm FILE WRITE(0/1) FLUSH(0/1): optionally write the hit region (so
# that reads of it do real I/O), flush, then read it twice.
prewarm() {
	local file=$1 base=(fio --filename="$1" --direct=1 --ioengine=libaio --iodepth=16 --bs=256k
		--offset="$WBC_HIT_OFF" --size="$WBC_HIT_SIZE" --fallocate=none)
	# end_fsync: wbcache promotes nothing while a write it sent around the
	# cache to the HDD is not yet synced (a clean copy must match durable
	# HDD data), so the write pass ends with an fsync.
	if [ "$2" = 1 ]; then
		"${base[@]}" --name=prewarm-write --rw=randwrite --end_fsync=1 >/dev/null 2>&1 || warn "prewarm write failed"
	else
		# One 4k write + fsync: earlier jobs' unsynced writes to the HDD
		# would keep wbcache from promoting anything.
		fio --name=prewarm-sync --filename="$file" --direct=1 --rw=write --bs=4k --size=4k \
			--offset="$WBC_HIT_OFF" --end_fsync=1 --fallocate=none >/dev/null 2>&1 || warn "prewarm fsync failed"
	fi
	[ "$3" = 1 ] && wbc_flush_quiet
	"${base[@]}" --name=prewarm-read --rw=randread --loops=2 >/dev/null 2>&1 || warn "prewarm read failed"
}

# sampler TSV PHASEFILE: status samples until killed.
sampler() {
	local tsv=$1 pf=$2 t0 c=
	trap '[ -n "$c" ] && kill $c 2>/dev/null; exit 0' TERM
	t0=$(now_ns)
	while :; do
		printf '%s\t%s\t%s\n' "$(secs_since "$t0")" "$(cat "$pf" 2>/dev/null)" "$(status_vals | tr ' ' '\t')" >>"$tsv"
		sleep "$sample" &
		c=$!
		wait $c
	done
}

# run_wbcache TARGET MODE [extra mount flags]
run_wbcache() {
	local t=$1 mode=$2 f wl before after sampled spid pf t0 secs dirty
	shift 2
	wbc_up "$t" "$mode" "$@" || return
	for f in "${JOBFILES[@]}"; do
		wl=$(basename "$f" .fio)
		wl=${wl#[0-9][0-9]-}
		[ "$t" = writeback-cutoff0 ] && [[ $wl != seqwrite* ]] && continue
		# (Only writeback gets the write pass: in the other modes writes go
		# to the HDD, slowly; reads alone promote the region there.)
		if [[ $wl == *hit* ]] && [ "$mode" != none ]; then
			if [ "$mode" = writeback ]; then prewarm "$MNT/disk" 1 1; else prewarm "$MNT/disk" 0 1; fi
		fi
		wbc_flush_quiet
		read -r -a before <<<"$(status_vals)"
		sampled=0
		if [[ $wl == sustained* || $wl == seqwrite* ]]; then
			sampled=1
			pf=$WORK/phase
			echo run >"$pf"
			sampler "$RAW/status-$wl@$t.tsv" "$pf" &
			spid=$!
			track_pid "$spid"
		fi
		run_fio "$f" "$t" "$MNT/disk" 0
		read -r -a after <<<"$(status_vals)"
		dirty=$((after[1] * 4096))
		printf 'hits\t%s\t%s\t%s\t%s\n' "$wl" "$t" $((after[5] - before[5])) $((after[6] - before[6])) >>"$RAW/meta.tsv"
		printf 'dirty\t%s\t%s\t%s\n' "$wl" "$t" "$dirty" >>"$RAW/meta.tsv"
		[[ $wl == seqwrite* ]] && printf 'bypassed\t%s\t%s\t%s\n' "$wl" "$t" $((after[7] - before[7])) >>"$RAW/meta.tsv"
		[ "$sampled" = 1 ] && echo drain >"$pf"
		t0=$(now_ns)
		wbc_flush_quiet
		secs=$(secs_since "$t0")
		printf 'drain\t%s\t%s\t%s\t%s\n' "$wl" "$t" "$secs" "$dirty" >>"$RAW/meta.tsv"
		[ "$dirty" -gt 0 ] && log "  drained $((dirty >> 20)) MiB in ${secs}s"
		if [ "$sampled" = 1 ]; then
			sleep "$sample"
			stop_pid "$spid" 2
			untrack_pid "$spid"
		fi
	done
	wbc_down "$t"
}

# ------------------------------------------------------------ run
log "bench: targets ${TARGETS[*]}; ${#JOBFILES[@]} jobs of ${runtime}s; results in $out${WBC_FUSE_URING:+; wbcache --fuse-uring $WBC_FUSE_URING}"
start=$(now_ns)
for t in "${TARGETS[@]}"; do
	case $t in
	hdd)
		log "target hdd: $HDD_LOOP in cgroup $HDD_CG"
		io0=$(cg_serviced "$HDD_CG" "$HDD_MAJMIN")
		for f in "${JOBFILES[@]}"; do run_fio "$f" hdd "$HDD_LOOP" 1; done
		io1=$(cg_serviced "$HDD_CG" "$HDD_MAJMIN")
		r=$(($(echo "$io1" | cut -d' ' -f1) - $(echo "$io0" | cut -d' ' -f1)))
		w=$(($(echo "$io1" | cut -d' ' -f2) - $(echo "$io0" | cut -d' ' -f2)))
		printf 'hddio\t-\thdd\t%s\t%s\n' "$r" "$w" >>"$RAW/meta.tsv"
		check_throttle hdd "$r" "$w"
		;;
	ssd)
		log "target ssd: $WORK/ssd-raw.img"
		for f in "${JOBFILES[@]}"; do
			[[ $f == *hit* ]] && prewarm "$WORK/ssd-raw.img" 1 0
			run_fio "$f" ssd "$WORK/ssd-raw.img" 0
		done
		;;
	fuseceiling)
		ceil_up && for f in "${JOBFILES[@]}"; do
			[[ $f == *hit* ]] && prewarm "$CEIL_MNT/disk" 1 0
			run_fio "$f" fuseceiling "$CEIL_MNT/disk" 0
		done
		ceil_down
		;;
	none | writeback | writethrough | writearound) run_wbcache "$t" "$t" --seq-cutoff 4M ;;
	writeback-cutoff0) run_wbcache "$t" writeback --seq-cutoff 0 ;;
	esac
done
log "bench: all runs done in $(secs_since "$start")s; writing the report"
echo
"$BENCH" report --raw "$RAW" --out "$out" --title "wbcache benchmark ($(date '+%Y-%m-%d %H:%M'), $(hostname))" || {
	errors=$((errors + 1))
	warn "wbcache-bench report failed"
}
echo
log "report: $out/results.md; plots: $out/*.png; raw data: $RAW"
[ "$errors" -eq 0 ] || warn "$errors errors (see notes above)"
[ "$errors" -eq 0 ]
