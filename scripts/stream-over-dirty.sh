#!/usr/bin/env bash
# scripts/stream-over-dirty.sh: a sequential stream over dirty blocks in
# a mode other than writeback, on the emulated HDD (scripts/hdd.sh: a
# throttled loop device, 200 IOPS and 170 MiB/s). For each density, mode
# and wbcache binary given: a new cache over the HDD, mounted with
# write-back held back (watermarks 99/100, max dirty age 1h); fio writes
# that share of the region's 4 KiB blocks once each in random order
# (O_DIRECT, QD1); then `wbcache mode MNT MODE` starts (it saves the mode
# and drains the dirty blocks) and, half a second later, fio writes the
# region once in 1 MiB writes at QD8 (O_DIRECT, libaio) while the drain
# runs. Density 0 in mode none (or writearound) is the bare HDD through
# FUSE: the same stream with nothing dirty. It prints one table row per
# run: dirty MiB, the stream's MiB/s, its p99 completion latency and how
# long it took, how long the mode change (the drain) took from its
# start, bypassed_over_dirty, and what write-back did meanwhile: dirty
# blocks written back, blocks read from the HDD to fill gaps, and pinned
# blocks the stream claimed from it (so left unwritten); and the requests
# the HDD served from the mode change's start until both ended (reads,
# writes, flushes, from /sys/block/LOOP/stat). Give two
# builds to compare them side by side in one run (they alternate).
#
# Usage: scripts/stream-over-dirty.sh [--region SIZE] [--densities LIST]
#                                     [--modes LIST] [--rounds N] [BIN...]
#   --region SIZE      region written at offset 0 (default 256M)
#   --densities LIST   comma-separated percentages (default 0,25,50,75)
#   --modes LIST       comma-separated modes (default writearound)
#   --rounds N         rounds over everything (default 1)
#   BIN...             wbcache binaries (default: one built from this tree)
# Needs root, fio, losetup and the cgroup v1 blkio controller.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"
cd "$(dirname "$0")/.."

modes=writearound args=()
while [ $# -gt 0 ]; do
	case $1 in
	--modes) modes=$2; shift 2 ;;
	*) args+=("$1"); shift ;;
	esac
done
dens_args 256M 0,25,50,75 2,24 "${args[@]}"
dens_setup wbc-stream

printf '| round | density | mode | binary | dirty MiB | stream MiB/s | p99 ms | stream s | mode change s | runs over dirty | written back MiB | gap reads MiB | claimed MiB | HDD reads | HDD writes | HDD flushes |\n'
printf '|--:|--:|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n'
for round in $(seq "$rounds"); do
	for dens in ${densities//,/ }; do
		for mode in ${modes//,/ }; do
			for bin in "${bins[@]}"; do
				dens_mount "$bin"
				dens_fill "$dens"
				dirty=$("$bin" status --json "$mnt" | dens_json slots_dirty)
				rm -f "$work/mode.end"
				read -r -a io0 <"/sys/block/$(basename "$HDD_LOOP")/stat"
				t0=$(date +%s.%N)
				("$bin" mode "$mnt" "$mode" >/dev/null && date +%s.%N >"$work/mode.end") &
				mpid=$!
				track_pid "$mpid"
				sleep 0.5
				fio --name=stream --filename="$mnt/disk" --direct=1 --rw=write --bs=1m --iodepth=8 --ioengine=libaio \
					--size="$region_bytes" --output-format=json >"$work/stream.json"
				t1=$(date +%s.%N)
				wait "$mpid"
				untrack_pid "$mpid"
				t2=$(cat "$work/mode.end")
				read -r -a io1 <"/sys/block/$(basename "$HDD_LOOP")/stat"
				hreads=$((io1[0] - io0[0])) hwrites=$((io1[4] - io0[4])) hflush=$((io1[15] - io0[15]))
				"$bin" status --json "$mnt" >"$work/status.json"
				read -r over back gap claimed < <(for f in bypassed_over_dirty destaged_blocks destage_gap_read_blocks destage_blocks_claimed; do
					dens_json "$f" <"$work/status.json"
				done | xargs)
				dens_stop "$bin"
				read -r bw p99 < <(python3 -c 'import json,sys
w = json.load(open(sys.argv[1]))["jobs"][0]["write"]
print(w["bw"] / 1024, w["clat_ns"]["percentile"]["99.000000"] / 1e6)' "$work/stream.json")
				awk -v r="$round" -v d="$dens" -v m="$mode" -v b="$(basename "$bin")" -v n="$dirty" -v t0="$t0" -v t1="$t1" \
					-v t2="$t2" -v bw="$bw" -v p99="$p99" -v o="$over" -v wb="$back" -v gr="$gap" -v cl="$claimed" \
					-v hr="$hreads" -v hw="$hwrites" -v hf="$hflush" 'BEGIN {
					mib = 4096 / 1048576
					printf "| %d | %d%% | %s | %s | %.1f | %.1f | %.1f | %.2f | %.2f | %d | %.1f | %.1f | %.1f | %d | %d | %d |\n", r, d, m, b, n * mib, bw, p99, t1 - t0 - 0.5, t2 - t0, o, wb * mib, gr * mib, cl * mib, hr, hw, hf }'
			done
		done
	done
done
