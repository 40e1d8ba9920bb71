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

region=128M densities=25,100 rounds=1 bins=()
while [ $# -gt 0 ]; do
	case $1 in
	--region) region=$2; shift 2 ;;
	--densities) densities=$2; shift 2 ;;
	--rounds) rounds=$2; shift 2 ;;
	-h | --help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	-*) die "unknown option $1 (see --help)" ;;
	*) bins+=("$1"); shift ;;
	esac
done
command -v fio >/dev/null || die "fio is not installed (apt-get install -y fio)"
work=$(mktemp -d /var/tmp/wbc-drain.XXXXXX)
if [ ${#bins[@]} -eq 0 ]; then
	go build -o "$work/wbcache" ./cmd/wbcache
	bins=("$work/wbcache")
fi
region_bytes=$(numfmt --from=iec "$region")
blocks=$((region_bytes / 4096))
mnt=$work/mnt
mkdir -p "$mnt"
name=wbc-drain-$$
dpid=
cleanup() {
	if [ -n "$dpid" ]; then
		umount "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null || true
		kill "$dpid" 2>/dev/null || true
		wait "$dpid" 2>/dev/null || true
	fi
	scripts/hdd.sh down --name "$name" --rm >/dev/null 2>&1 || true
	rm -rf "$work"
}
trap cleanup EXIT
eval "$(scripts/hdd.sh up --name "$name" --file "$work/hdd.img" --size "$((region_bytes * 4 / 1048576))M")"

json() { python3 -c 'import json,sys; print(json.load(sys.stdin).get(sys.argv[1], 0))' "$1"; }

seqbw=$(scripts/hdd.sh exec --name "$name" -- fio --name=seq --filename="$HDD_LOOP" --direct=1 --rw=write --bs=1m \
	--iodepth=8 --ioengine=libaio --runtime=3 --time_based --size="$region_bytes" --output-format=json |
	python3 -c 'import json,sys; print(json.load(sys.stdin)["jobs"][0]["write"]["bw"] / 1024)')
printf 'emulated HDD sequential write rate (fio, 1 MiB writes at QD8, 3 s): %.1f MiB/s\n\n' "$seqbw"
printf '| round | density | binary | dirty MiB | drain s | dirty MiB/s | of sequential | region MiB/s | of sequential | gap blocks read |\n'
printf '|--:|--:|---|--:|--:|--:|--:|--:|--:|--:|\n'
for round in $(seq "$rounds"); do
	for dens in ${densities//,/ }; do
		for bin in "${bins[@]}"; do
			rm -f "$work/cache.img"
			"$bin" format --cache "$work/cache.img" --cache-size "$((region_bytes * 2 / 1048576))M" --backing "$HDD_LOOP" >/dev/null
			scripts/hdd.sh exec --name "$name" -- "$bin" mount --cache "$work/cache.img" --backing "$HDD_LOOP" \
				--low-watermark 99 --high-watermark 100 --max-dirty-age 1h --seq-cutoff 0 "$mnt" >"$work/daemon.log" 2>&1 &
			dpid=$!
			for _ in $(seq 100); do grep -q serving "$work/daemon.log" && break; sleep 0.1; done
			grep -q serving "$work/daemon.log" || die "the daemon did not start: $(cat "$work/daemon.log")"
			fio --name=fill --filename="$mnt/disk" --direct=1 --rw=randwrite --bs=4k --size="$region_bytes" \
				--number_ios=$((blocks * dens / 100)) --ioengine=psync --randseed=7 --output=/dev/null
			dirty=$("$bin" status --json "$mnt" | json slots_dirty)
			t0=$(date +%s.%N)
			"$bin" flush "$mnt" >/dev/null
			t1=$(date +%s.%N)
			gap=$("$bin" status --json "$mnt" | json destage_gap_read_blocks)
			"$bin" stop "$mnt" >/dev/null
			wait "$dpid" || true
			dpid=
			awk -v r="$round" -v d="$dens" -v b="$(basename "$bin")" -v n="$dirty" -v t0="$t0" -v t1="$t1" -v g="$gap" \
				-v reg="$((region_bytes / 1048576))" -v seq="$seqbw" 'BEGIN {
				s = t1 - t0; mib = n * 4096 / 1048576
				printf "| %d | %d%% | %s | %.1f | %.2f | %.2f | %.0f%% | %.1f | %.0f%% | %d |\n", r, d, b, mib, s, mib / s, 100 * mib / s / seq, reg / s, 100 * reg / s / seq, g }'
		done
	done
done
