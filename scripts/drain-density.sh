#!/usr/bin/env bash
# scripts/drain-density.sh: how fast a sparse drain runs on the emulated
# HDD (scripts/hdd.sh: a throttled loop device, 200 IOPS and 170 MiB/s).
# For each density and each wbcache binary given: a new cache over the
# HDD, mounted with write-back held back (watermarks 99/100, max dirty age
# 1h), fio writes that share of the region's 4 KiB blocks once each in
# random order (O_DIRECT, QD1), then `wbcache flush` is timed. First it
# measures the HDD's sequential write rate (fio, 1 MiB writes at QD8 for
# 3 s, inside the throttle): the loop queue may split 1 MiB requests and
# the throttle counts each part, so it can be below the throttle's byte
# rate (100-172 MiB/s measured on 2026-12-05). It prints
# one table row per run: dirty MiB, drain seconds, MiB/s of dirty data and
# of the region the drain covers (region MiB / drain seconds), each as a
# share of that sequential rate, and destage_gap_read_blocks.
# Give two builds to compare them side by side in one run (they alternate).
#
# Usage: scripts/drain-density.sh [--region SIZE] [--densities LIST]
#                                 [--rounds N] [BIN...]
#   --region SIZE      region written at offset 0 (default 128M)
#   --densities LIST   comma-separated percentages (default 25,100)
#   --rounds N         rounds over everything (default 1)
#   BIN...             wbcache binaries (default: one built from this tree)
# Needs root, fio, losetup and the cgroup v1 blkio controller.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"
cd "$(dirname "$0")/.."

dens_args 128M 25,100 2,18 "$@"
dens_setup wbc-drain

seqbw=$(hdd_exec "$HDD_CG" fio --name=seq --filename="$HDD_LOOP" --direct=1 --rw=write --bs=1m \
	--iodepth=8 --ioengine=libaio --runtime=3 --time_based --size="$region_bytes" --output-format=json |
	python3 -c 'import json,sys; print(json.load(sys.stdin)["jobs"][0]["write"]["bw"] / 1024)')
printf 'emulated HDD sequential write rate (fio, 1 MiB writes at QD8, 3 s): %.1f MiB/s\n\n' "$seqbw"
printf '| round | density | binary | dirty MiB | drain s | dirty MiB/s | of sequential | region MiB/s | of sequential | gap blocks read |\n'
printf '|--:|--:|---|--:|--:|--:|--:|--:|--:|--:|\n'
for round in $(seq "$rounds"); do
	for dens in ${densities//,/ }; do
		for bin in "${bins[@]}"; do
			dens_mount "$bin" --seq-cutoff 0
			dens_fill "$dens"
			dirty=$("$bin" status --json "$mnt" | dens_json slots_dirty)
			t0=$(date +%s.%N)
			"$bin" flush "$mnt" >/dev/null
			t1=$(date +%s.%N)
			gap=$("$bin" status --json "$mnt" | dens_json destage_gap_read_blocks)
			dens_stop "$bin"
			awk -v r="$round" -v d="$dens" -v b="$(basename "$bin")" -v n="$dirty" -v t0="$t0" -v t1="$t1" -v g="$gap" \
				-v reg="$((region_bytes / 1048576))" -v seq="$seqbw" 'BEGIN {
				s = t1 - t0; mib = n * 4096 / 1048576
				printf "| %d | %d%% | %s | %.1f | %.2f | %.2f | %.0f%% | %.1f | %.0f%% | %d |\n", r, d, b, mib, s, mib / s, 100 * mib / s / seq, reg / s, 100 * reg / s / seq, g }'
		done
	done
done
