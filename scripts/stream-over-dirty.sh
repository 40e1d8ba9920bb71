#!/usr/bin/env bash
# scripts/stream-over-dirty.sh: a sequential stream over dirty blocks in
# mode writearound, on the emulated HDD (scripts/hdd.sh: a throttled loop
# device, 200 IOPS and 170 MiB/s). For each density and each wbcache
# binary given: a new cache over the HDD, mounted with write-back held
# back (watermarks 99/100, max dirty age 1h); fio writes that share of the
# region's 4 KiB blocks once each in random order (O_DIRECT, QD1); then
# `wbcache mode MNT writearound` starts (it saves the mode and drains the
# dirty blocks) and, half a second later, fio writes the region once in
# 1 MiB writes at QD8 (O_DIRECT, libaio) while the drain runs. Density 0
# is the bare HDD through FUSE: the same stream with nothing dirty. It
# prints one table row per run: dirty MiB, the stream's MiB/s and its p99
# completion latency, how long the mode change (the drain) took, and
# bypassed_over_dirty. Give two builds to compare them side by side in one
# run (they alternate).
#
# Usage: scripts/stream-over-dirty.sh [--region SIZE] [--densities LIST]
#                                     [--rounds N] [BIN...]
#   --region SIZE      region written at offset 0 (default 256M)
#   --densities LIST   comma-separated percentages (default 0,25,50,75)
#   --rounds N         rounds over everything (default 1)
#   BIN...             wbcache binaries (default: one built from this tree)
# Needs root, fio, losetup and the cgroup v1 blkio controller.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"
cd "$(dirname "$0")/.."

region=256M densities=0,25,50,75 rounds=1 bins=()
while [ $# -gt 0 ]; do
	case $1 in
	--region) region=$2; shift 2 ;;
	--densities) densities=$2; shift 2 ;;
	--rounds) rounds=$2; shift 2 ;;
	-h | --help) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	-*) die "unknown option $1 (see --help)" ;;
	*) bins+=("$1"); shift ;;
	esac
done
command -v fio >/dev/null || die "fio is not installed (apt-get install -y fio)"
work=$(mktemp -d /var/tmp/wbc-stream.XXXXXX)
if [ ${#bins[@]} -eq 0 ]; then
	go build -o "$work/wbcache" ./cmd/wbcache
	bins=("$work/wbcache")
fi
region_bytes=$(numfmt --from=iec "$region")
blocks=$((region_bytes / 4096))
mnt=$work/mnt
mkdir -p "$mnt"
name=wbc-stream-$$
dpid= mpid=
cleanup() {
	[ -z "$mpid" ] || { kill "$mpid" 2>/dev/null || true; wait "$mpid" 2>/dev/null || true; }
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

printf '| round | density | binary | dirty MiB | stream MiB/s | p99 ms | mode change s | runs over dirty |\n'
printf '|--:|--:|---|--:|--:|--:|--:|--:|\n'
for round in $(seq "$rounds"); do
	for dens in ${densities//,/ }; do
		for bin in "${bins[@]}"; do
			rm -f "$work/cache.img"
			"$bin" format --cache "$work/cache.img" --cache-size "$((region_bytes * 2 / 1048576))M" --backing "$HDD_LOOP" >/dev/null
			scripts/hdd.sh exec --name "$name" -- "$bin" mount --cache "$work/cache.img" --backing "$HDD_LOOP" \
				--low-watermark 99 --high-watermark 100 --max-dirty-age 1h "$mnt" >"$work/daemon.log" 2>&1 &
			dpid=$!
			for _ in $(seq 100); do grep -q serving "$work/daemon.log" && break; sleep 0.1; done
			grep -q serving "$work/daemon.log" || die "the daemon did not start: $(cat "$work/daemon.log")"
			if [ "$dens" -gt 0 ]; then
				fio --name=fill --filename="$mnt/disk" --direct=1 --rw=randwrite --bs=4k --size="$region_bytes" \
					--number_ios=$((blocks * dens / 100)) --ioengine=psync --randseed=7 --output=/dev/null
			fi
			dirty=$("$bin" status --json "$mnt" | json slots_dirty)
			t0=$(date +%s.%N)
			"$bin" mode "$mnt" writearound >/dev/null &
			mpid=$!
			sleep 0.5
			fio --name=stream --filename="$mnt/disk" --direct=1 --rw=write --bs=1m --iodepth=8 --ioengine=libaio \
				--size="$region_bytes" --output-format=json >"$work/stream.json"
			wait "$mpid"
			mpid=
			t1=$(date +%s.%N)
			over=$("$bin" status --json "$mnt" | json bypassed_over_dirty)
			"$bin" stop "$mnt" >/dev/null
			wait "$dpid" || true
			dpid=
			read -r bw p99 < <(python3 -c 'import json,sys
w = json.load(open(sys.argv[1]))["jobs"][0]["write"]
print(w["bw"] / 1024, w["clat_ns"]["percentile"]["99.000000"] / 1e6)' "$work/stream.json")
			awk -v r="$round" -v d="$dens" -v b="$(basename "$bin")" -v n="$dirty" -v t0="$t0" -v t1="$t1" \
				-v bw="$bw" -v p99="$p99" -v o="$over" 'BEGIN {
				printf "| %d | %d%% | %s | %.1f | %.1f | %.1f | %.2f | %d |\n", r, d, b, n * 4096 / 1048576, bw, p99, t1 - t0, o }'
		done
	done
done
