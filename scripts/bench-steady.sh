# shellcheck shell=bash
# scripts/bench-steady.sh: the steady-state sequences of scripts/bench.sh
# (--steady, --density). bench.sh sources it after its setup (binaries,
# emulated HDD, option checks) and calls steady_main; it uses bench.sh's
# helpers (wbc_up, wbc_down, ceil_up, ceil_down, status_vals,
# wbc_flush_quiet, note, select_targets) and settings (RB, runtime,
# densities, steady, density, RAW, out, MNT, CEIL_MNT).
#
# A fresh cache hides cliffs: a real one holds dirty blocks from earlier
# work when the next job starts. --steady runs five jobs in order on one
# mount per target, with nothing flushed in between, all over the same
# region at offset 0, then times the drain of what is left dirty.
# --density isolates one of those states: the region dirtied to a given
# share with 4 KiB random writes, then the 1 MiB sequential write.
# Records go to RAW/steady.tsv, RAW/drain.tsv and RAW/density.tsv (one
# line per fio run); steady_report turns them into OUT/steady.md.

# The sequence, in order: name|label|fio options (4 KiB jobs report IOPS,
# the 1 MiB job MiB/s).
STEADY_JOBS=(
	"randwrite-4k-qd1|4 KiB randwrite QD1|--rw=randwrite --bs=4k --iodepth=1"
	"randwrite-4k-qd32|4 KiB randwrite QD32|--rw=randwrite --bs=4k --iodepth=32"
	"randread-4k-qd32|4 KiB randread QD32|--rw=randread --bs=4k --iodepth=32"
	"seqwrite-1m-qd8|1 MiB sequential write QD8|--rw=write --bs=1m --iodepth=8"
	"write-fsync-4k-qd1|4 KiB write + fsync QD1|--rw=randwrite --bs=4k --iodepth=1 --fsync=1"
)
SEQ_OPTS="--rw=write --bs=1m --iodepth=8"

# region_fio NAME TARGET FILE [fio options...]: one fio job over the region
# (offset 0, RB bytes), JSON output in RAW/NAME@TARGET.json.
region_fio() {
	local name=$1 t=$2 file=$3 rc=0
	shift 3
	fio --name="$name" --filename="$file" --direct=1 --ioengine=libaio --fallocate=none \
		--randrepeat=0 --offset=0 --size="$RB" --percentile_list=50:99 \
		--output-format=json --output="$RAW/$name@$t.json" "$@" >"$RAW/$name@$t.out" 2>&1 || rc=$?
	if [ $rc -ne 0 ]; then
		errors=$((errors + 1))
		warn "fio $name on $t exited $rc: $(tail -n 3 "$RAW/$name@$t.out" | tr '\n' ' ')"
		note "fio $name on $t FAILED (exit $rc)"
	fi
	return $rc
}

# fio_result JSON DIR: "IOPS BYTES_PER_S P99_NS IOS" of direction DIR
# (read or write); p99 is the completion latency (clat), and for a job
# with --fsync the fsync's latency is added, since a write counts once
# its fsync returns. Zeros if the run left no result.
fio_result() {
	local j=$1 d=$2 v p s=0
	v=$("$WBCHECK" json "$j" "jobs.0.$d.iops" "jobs.0.$d.bw_bytes" "jobs.0.$d.total_ios" 2>/dev/null) || {
		echo "0 0 0 0"
		return
	}
	p=$("$WBCHECK" json "$j" "jobs.0.$d.clat_ns.percentile" 2>/dev/null | sed -n 's/.*"99\.0*":\([0-9.e+]*\).*/\1/p')
	if [ "$("$WBCHECK" json "$j" jobs.0.sync.total_ios 2>/dev/null || echo 0)" != 0 ]; then
		s=$("$WBCHECK" json "$j" jobs.0.sync.lat_ns.percentile 2>/dev/null | sed -n 's/.*"99\.0*":\([0-9.e+]*\).*/\1/p')
	fi
	echo "$v" | awk -v p="${p:-0}" -v s="${s:-0}" '{ printf "%.0f %.0f %.0f %d\n", $1, $2, p + s, $3 }'
}

# timed_fio NAME TARGET FILE OPTS: a time-based region_fio run; sets
# FIO_RES to fio_result's fields (not a subshell: errors must count).
timed_fio() {
	local name=$1 t=$2 file=$3 opts=$4 d=write
	[[ $opts == *--rw=*read* ]] && d=read
	# shellcheck disable=SC2086 # OPTS are words
	region_fio "$name" "$t" "$file" --time_based --runtime="$runtime" $opts
	FIO_RES=$(fio_result "$RAW/$name@$t.json" "$d")
}

# steady_sequence TARGET FILE WBC(0/1): the five jobs on one mount. With
# WBC=1 the cache's dirty bytes and bypassed writes are recorded per job.
steady_sequence() {
	local t=$1 file=$2 wbc=$3 job name label opts before after dirty byp
	for job in "${STEADY_JOBS[@]}"; do
		IFS='|' read -r name label opts <<<"$job"
		read -r -a before <<<"$([ "$wbc" = 1 ] && status_vals || echo "0 0 0 0 0 0 0 0")"
		timed_fio "$name" "$t" "$file" "$opts"
		read -r -a after <<<"$([ "$wbc" = 1 ] && status_vals || echo "0 0 0 0 0 0 0 0")"
		dirty=$((after[1] * 4096)) byp=$((after[7] - before[7]))
		printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$t" "${FIO_RES// /$'\t'}" "$dirty" "$byp" \
			$((after[5] - before[5])) $((after[6] - before[6])) >>"$RAW/steady.tsv"
		log "  $name on $t: $(steady_line "$FIO_RES"); dirty $((dirty >> 20)) MiB"
	done
}

# steady_line "IOPS BPS P99NS IOS": a log line's summary.
steady_line() {
	echo "$1" | awk '{ printf "%d IOPS, %.1f MiB/s, p99 %.2f ms", $1, $2 / 1048576, $3 / 1e6 }'
}

# steady_drain TARGET: time `wbcache flush` of what the sequence left dirty.
steady_drain() {
	local t=$1 v t0 secs dirty
	read -r -a v <<<"$(status_vals)"
	dirty=$((v[1] * 4096))
	t0=$(now_ns)
	wbc_flush_quiet
	secs=$(secs_since "$t0")
	printf '%s\t%s\t%s\n' "$t" "$dirty" "$secs" >>"$RAW/drain.tsv"
	log "  drain on $t: $((dirty >> 20)) MiB in ${secs}s"
}

# steady_target TARGET: mount once, run the sequence, drain, unmount.
steady_target() {
	local t=$1
	case $t in
	fuseceiling)
		ceil_up && steady_sequence "$t" "$CEIL_MNT/disk" 0
		ceil_down
		;;
	none | writeback)
		wbc_up "$t" "$t" --seq-cutoff 4M || return
		steady_sequence "$t" "$MNT/disk" 1
		[ "$t" = writeback ] && steady_drain "$t"
		wbc_down "$t"
		;;
	esac
}

# predirty PCT: dirty PCT% of the region's 4 KiB blocks, each once (fio's
# random map hands out every block of the region once before repeating).
predirty() {
	local blocks=$((RB / 4096 * $1 / 100)) t0
	[ "$blocks" -gt 0 ] || return 0
	t0=$(now_ns)
	region_fio "dirty-$1" writeback "$MNT/disk" --rw=randwrite --bs=4k --iodepth=32 --io_size=$((blocks * 4096))
	log "  dirtied $blocks blocks ($1% of the region) in $(secs_since "$t0")s"
}

# density_one PCT TARGET: a fresh cache (writeback: dirtied to PCT% of
# the region first; none has no cache to dirty), then the 1 MiB
# sequential write.
density_one() {
	local pct=$1 t=$2 before after
	wbc_up "$t-$pct" "$t" --seq-cutoff 4M || return
	[ "$t" = writeback ] && predirty "$pct"
	read -r -a before <<<"$(status_vals)"
	timed_fio "seqwrite-1m-qd8-d$pct" "$t" "$MNT/disk" "$SEQ_OPTS"
	read -r -a after <<<"$(status_vals)"
	printf '%s\t%s\t%s\t%s\t%s\n' "$pct" "$t" "$((before[1] * 4096))" "${FIO_RES// /$'\t'}" \
		"$((after[7] - before[7]))" >>"$RAW/density.tsv"
	log "  ${pct}% dirty, $t: $(steady_line "$FIO_RES"); $((before[1] * 4096 >> 20)) MiB dirty at start"
	wbc_down "$t-$pct"
}

# density_all: for each density, each target in turn (alternating, so
# none and writeback see the same load on a shared machine).
density_all() {
	local pct t
	for pct in ${densities//,/ }; do
		for t in "${TARGETS[@]}"; do
			[ "$t" = fuseceiling ] || density_one "$pct" "$t"
		done
	done
}

steady_notes() {
	local commit
	commit=$(git -C "$WBC_REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
	[ -n "$(git -C "$WBC_REPO" status --porcelain --untracked-files=no 2>/dev/null)" ] && commit+=" (with uncommitted changes)"
	note "commit $commit; $(uname -r), $(nproc) CPUs, $(awk '/MemTotal/ { printf "%.0f", $2 / 1048576 }' /proc/meminfo) GiB RAM, $(fio --version)"
	note "emulated HDD: $hdd_size loop device (--direct-io=on), blkio throttle $iops IOPS and $bps per direction; the loop queue can split 1 MiB requests in two, so they run at 100-170 MiB/s"
	note "region $((RB >> 20)) MiB at offset 0 for every job; cache $csize on the SSD (WBC_TMP); wbcache policy $POLICY --seq-cutoff 4M${WBC_FUSE_URING:+, --fuse-uring $WBC_FUSE_URING}; fuseceiling serves a sparse file on the SSD"
	note "jobs ${runtime}s each, time_based, fio libaio --direct=1; p99 is fio's completion latency (clat); for the write + fsync job the write's p99 plus the fsync's p99"
}

steady_main() {
	select_targets fuseceiling none writeback
	[ "$density" = 1 ] && [[ " ${TARGETS[*]} " != *" writeback "* ]] && die "--density needs the writeback target"
	: >"$RAW/steady.tsv"
	: >"$RAW/drain.tsv"
	: >"$RAW/density.tsv"
	steady_notes
	LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
	log "bench: steady state: targets ${TARGETS[*]}; region $region, cache $csize, ${runtime}s jobs; results in $out"
	local start t
	start=$(now_ns)
	if [ "$steady" = 1 ]; then
		for t in "${TARGETS[@]}"; do steady_target "$t"; done
	fi
	[ "$density" = 1 ] && density_all
	note "load average (1, 5, 15 min): $LOAD0 at the start, $(cut -d' ' -f1-3 /proc/loadavg) at the end; all runs took $(secs_since "$start")s"
	echo
	steady_report | tee "$out/steady.md"
	echo
	log "report: $out/steady.md; raw data: $RAW"
	[ "$errors" -eq 0 ] || warn "$errors errors (see notes above)"
	[ "$errors" -eq 0 ]
}

# ------------------------------------------------------------ report

# Number formatting shared by the report's awk programs: commas(),
# ms() (nanoseconds to milliseconds), rate() (IOPS, or bytes/s as MiB/s),
# ratio() and cell() ("VALUE (p99 MS ms)").
AWK_FMT='
function commas(n,   s, r) {
	s = sprintf("%.0f", n); r = ""
	while (length(s) > 3) { r = "," substr(s, length(s) - 2) r; s = substr(s, 1, length(s) - 3) }
	return s r
}
function ms(ns,   m) {
	m = ns / 1e6
	if (m < 1) return sprintf("%.3f", m)
	if (m < 10) return sprintf("%.2f", m)
	if (m < 100) return sprintf("%.1f", m)
	return commas(m)
}
function rate(iops, bps, mib) { if (!mib) return commas(iops); bps /= 1048576; return bps < 10 ? sprintf("%.1f", bps) : commas(bps) }
function ratio(a, b,   x) {
	if (a == "" || b <= 0) return "-"
	x = a / b
	return x >= 10 ? commas(x) "×" : x >= 0.01 ? sprintf("%.2f×", x) : "<0.01×"
}
function cell(v, p99) { return v == "" ? "-" : v " (p99 " ms(p99) " ms)" }
'

# steady_table: the sequence's table from RAW/steady.tsv and the drain
# line from RAW/drain.tsv.
steady_table() {
	local job name label opts jobs=""
	for job in "${STEADY_JOBS[@]}"; do
		IFS='|' read -r name label opts <<<"$job"
		jobs+="$name|$label;"
	done
	awk -F'\t' -v jobs="$jobs" -v region="$((RB >> 20))" "$AWK_FMT"'
	FILENAME ~ /steady.tsv$/ {
		v[$1, $2] = ($1 ~ /1m/ ? $4 : $3); r[$1, $2] = rate($3, $4, $1 ~ /1m/); p[$1, $2] = $5; d[$1, $2] = $7
		if ($2 == "writeback" && $1 ~ /1m/ && $6 > 0) byp = sprintf("%.0f%%", 100 * $8 / $6)
		if ($2 == "writeback" && $1 ~ /read/ && $9 + $10 > 0) hit = sprintf("%.0f%%", 100 * $9 / ($9 + $10))
		next
	}
	{ dt[$1] = $2; ds[$1] = $3 }
	END {
		print "| # | job | fuseceiling | none | writeback | writeback / none | writeback / ceiling | p99 writeback / none | dirty after (writeback) |"
		print "|--:|---|--:|--:|--:|--:|--:|--:|--:|"
		n = split(jobs, js, ";")
		for (i = 1; i < n; i++) {
			split(js[i], f, "|"); j = f[1]
			unit = (j ~ /1m/) ? "MiB/s" : "IOPS"
			c = j SUBSEP "fuseceiling"; o = j SUBSEP "none"; w = j SUBSEP "writeback"
			printf "| %d | %s (%s) | %s | %s | %s | %s | %s | %s | %s |\n", i, f[2], unit,
				cell(r[c], p[c]), cell(r[o], p[o]), cell(r[w], p[w]),
				ratio(v[w], v[o]), ratio(v[w], v[c]), ratio(p[w], p[o]),
				(w in d) ? commas(d[w] / 1048576) " MiB" : "-"
		}
		if ("writeback" in dt) {
			s = ds["writeback"]
			printf "\nDrain after job 5 (writeback, timed `wbcache flush`): %s MiB in %.1f s", commas(dt["writeback"] / 1048576), s
			if (s > 0) printf " = %.1f MiB/s", dt["writeback"] / 1048576 / s
			print "."
		}
		if (byp != "") print "\nWrite requests of the 1 MiB job that bypassed the cache (writeback): " byp "."
		if (hit != "") print "\nReads of the 4 KiB randread job served from the cache (writeback): " hit "; the rest went to the HDD. The write jobs before it are timed, so how much of the region they covered depends on the machine."
	}' "$RAW/steady.tsv" "$RAW/drain.tsv"
}

# density_table: the density sequence's table from RAW/density.tsv.
density_table() {
	awk -F'\t' "$AWK_FMT"'
	{ k = $1 SUBSEP $2; pct[$1] = 1; b[k] = $5; r[k] = rate($4, $5, 1); p[k] = $6; ios[k] = $7; byp[k] = $8; d0[k] = $3 }
	END {
		print "| region dirtied first | writeback MiB/s | dirty at start | bypassed | none MiB/s | writeback / none | p99 writeback / none |"
		print "|--:|--:|--:|--:|--:|--:|--:|"
		n = 0
		for (x in pct) order[++n] = x + 0
		for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (order[j] < order[i]) { t = order[i]; order[i] = order[j]; order[j] = t }
		for (i = 1; i <= n; i++) {
			w = order[i] SUBSEP "writeback"; o = order[i] SUBSEP "none"
			printf "| %d%% | %s | %s | %s | %s | %s | %s |\n", order[i], cell(r[w], p[w]),
				(w in d0) ? commas(d0[w] / 1048576) " MiB" : "-",
				(ios[w] > 0) ? sprintf("%.0f%%", 100 * byp[w] / ios[w]) : "-",
				cell(r[o], p[o]), ratio(b[w], b[o]), ratio(p[w], p[o])
		}
	}' "$RAW/density.tsv"
}

# steady_report: OUT/steady.md (also printed).
steady_report() {
	echo "# wbcache steady state ($(date '+%Y-%m-%d %H:%M'), $(hostname))"
	if [ -s "$RAW/steady.tsv" ]; then
		echo
		echo "## Sequence: one mount per target, jobs in this order, nothing flushed in between"
		echo
		steady_table
	fi
	if [ -s "$RAW/density.tsv" ]; then
		echo
		echo "## 1 MiB sequential write QD8 after dirtying a share of the region with 4 KiB random writes"
		echo
		echo "A fresh cache for each row; mode none has no cache to dirty, so its runs repeat the same job."
		echo
		density_table
	fi
	echo
	echo "Cells: IOPS (4 KiB jobs) or MiB/s (1 MiB jobs), with fio's p99 latency. \"bypassed\": share of the"
	echo "sequential job's write requests that went around the cache (sequential cutoff)."
	echo
	echo "## Notes"
	echo
	awk -F'\t' '$1 == "note" { print "- " $4 }' "$RAW/meta.tsv"
	awk -F'\t' '$1 == "hddio" { l = l (l ? ", " : "") $3 " " $4 "/" $5 } END { if (l) print "- HDD I/Os the blkio throttle counted (reads/writes): " l }' "$RAW/meta.tsv"
}
