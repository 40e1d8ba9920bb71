#!/usr/bin/env bash
# scripts/crashtest-ext4.sh: ext4 on a loop device on MOUNTPOINT/disk,
# files written and fsync'd, kill -9 of the daemon, and after the restart
# fsck must be clean and every file recorded as durable must be intact
# (docs/design.md §2.1 through a real file system: every write acknowledged
# before a completed fsync must survive a process crash).
#
# Once: format a cache, start `wbcache mount`, losetup --direct-io=on on
# MOUNTPOINT/disk, mkfs.ext4. Each iteration:
#   1. mount the ext4 (sometimes with -o discard, which reaches wbcache as
#      fallocate(PUNCH_HOLE));
#   2. `wbcheck write` creates, replaces (write temp + fsync + rename +
#      fsync dir) and deletes files; it appends "C name sha256 size" to a
#      manifest on ANOTHER file system, and fsyncs the manifest, only after
#      the file's fsync and its directory's fsync returned (pending changes
#      are recorded first, so either state is accepted for them);
#   3. kill -9 the daemon at a random moment: the loop device now fails
#      every I/O, ext4 aborts, wbcheck stops at its first I/O error;
#   4. umount -l the ext4, losetup -d;
#   5. restart the daemon (it removes the dead mount itself), losetup again;
#   6. mount + umount once: ext4 replays its own journal (a crashed ext4
#      is not "clean" until its journal is replayed, and fsck -n may not
#      replay it), then `fsck.ext4 -n -f` must exit 0;
#   7. mount and `wbcheck verify --resolve`: every committed file has its
#      recorded content (or a pending new one), every committed delete
#      stayed deleted. Files from all earlier iterations are checked too.
# Every few iterations the daemon is also stopped cleanly (SIGTERM) and
# `wbcache check` must pass.
#
# Usage: scripts/crashtest-ext4.sh [options]
#   -n N               iterations (default 10)
#   -s SEED            random seed (default: time based, printed)
#   --size SIZE        backing file = ext4 size (default 2G; --quick 1G)
#   --cache-size SIZE  cache file size (default 256M; --quick 64M)
#   --quick            small sizes, short write phases (CI smoke)
#   --stop-on-failure  stop at the first failure
#   --keep             keep the work directory
#   --failures DIR     where failure logs go (default /var/tmp/wbc-ext4-failures-SEED);
#                      after a failure the work directory (cache, backing,
#                      manifest) is kept too
# Environment: WBCACHE / WBCHECK = prebuilt binaries, WBC_TMP = parent of
# the work directory (default /var/tmp).
# Exit status: 0 when every iteration passed, 1 otherwise.
set -uo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"

usage() {
	sed -n '2,/^set -uo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
	exit "${1:-2}"
}

iters=10 seed= size= csize= quick=0 stop_on_fail=0 faildir=
while [ $# -gt 0 ]; do
	case $1 in
	-n) iters=$2; shift 2 ;;
	-s) seed=$2; shift 2 ;;
	--size) size=$2; shift 2 ;;
	--cache-size) csize=$2; shift 2 ;;
	--quick) quick=1; shift ;;
	--stop-on-failure) stop_on_fail=1; shift ;;
	--keep) WBC_KEEP=1; shift ;;
	--failures) faildir=$2; shift 2 ;;
	-h | --help) usage 0 ;;
	*) echo "unknown option: $1" >&2; usage ;;
	esac
done
[ -n "$seed" ] || seed=$(($(date +%s) % 1000000))
if [ "$quick" = 1 ]; then
	size=${size:-1G} csize=${csize:-64M}
else
	size=${size:-2G} csize=${csize:-256M}
fi
faildir=${faildir:-/var/tmp/wbc-ext4-failures-$seed}

need_root
need_tools losetup mkfs.ext4 fsck.ext4 fusermount3 awk
wbc_install_traps
mk_workdir wbc-ext4
wbc_build "$WORK/bin"
RANDOM=$seed

CACHE=$WORK/cache.img
BACKING=$WORK/backing.img
MNT=$WORK/mnt
FS=$WORK/fs
MANIFEST=$WORK/manifest
LOGS=$WORK/logs
mkdir -p "$MNT" "$FS" "$LOGS"
truncate -s "$size" "$BACKING"
# Keep the live files well inside the file system.
budget=$(($(size_bytes "$size") / 4))
MOUNT_ARGS="--mode writeback --low-watermark 10 --high-watermark 50 --max-dirty-age 30s --workers 2 --seq-cutoff 4M"

fails=0 files_verified=0 bytes_verified=0 fscks=0 checks=0 ops_total=0 discard_runs=0
declare -a FAILS=() READY_TIMES=() RECOVERY_SECS=()
DPID= LOOP= it=0

fail() {
	fails=$((fails + 1))
	FAILS+=("iteration $it: $*")
	log "FAIL (iteration $it): $*"
	mkdir -p "$faildir/iter-$it"
	cp -r "$LOGS/." "$faildir/iter-$it/" 2>/dev/null
	cp "$MANIFEST" "$faildir/iter-$it/manifest" 2>/dev/null
	# Keep the work directory: its cache and backing files (wbcache knows a
	# backing file by its inode, so copies would not mount) and the logs.
	WBC_KEEP=1
	if [ "$stop_on_fail" = 1 ]; then
		summary
		exit 1
	fi
}

start_daemon() { # TAG
	# shellcheck disable=SC2086
	if ! wbc_mount_ready "$MNT" "$CACHE" "$BACKING" "$LOGS/daemon-$1.log" $MOUNT_ARGS; then
		DPID=
		return 1
	fi
	DPID=$WBC_DPID
}

loop_up() {
	LOOP=$(losetup --find --show --direct-io=on "$MNT/disk") || {
		LOOP=
		return 1
	}
	track_loop "$LOOP"
}

loop_down() {
	[ -n "$LOOP" ] || return 0
	loop_detach "$LOOP"
	untrack_loop "$LOOP"
	LOOP=
}

fs_mount() { # [OPTIONS]
	local o=${1:-}
	mount -t ext4 ${o:+-o "$o"} "$LOOP" "$FS" 2>"$LOGS/mount.err" || return 1
	track_fs "$FS"
}

fs_umount() {
	is_mounted "$FS" || return 0
	umount "$FS" 2>>"$LOGS/mount.err" || return 1
	untrack_fs "$FS"
}

summary() {
	echo
	echo "=== crashtest-ext4 summary (seed $seed, ext4 of $size on wbcache, cache $csize) ==="
	printf '  %-30s %s\n' "iterations:" "$done_iters of $iters"
	printf '  %-30s %s\n' "file operations committed:" "$ops_total (creates/replaces/deletes, each after fsync)"
	printf '  %-30s %s\n' "files verified:" "$files_verified in total over all verify runs ($((bytes_verified >> 20)) MiB)"
	printf '  %-30s %s\n' "fsck.ext4 -n -f runs:" "$fscks"
	printf '  %-30s %s\n' "iterations mounted -o discard:" "$discard_runs"
	printf '  %-30s %s\n' "clean stops + wbcache check:" "$checks"
	printf '  %-30s %s\n' "failures:" "$fails"
	if [ ${#READY_TIMES[@]} -gt 0 ]; then
		printf '  %-30s p50 %ss  p99 %ss  (n=%d)\n' "time to ready after crash:" \
			"$(printf '%s\n' "${READY_TIMES[@]}" | percentile 50)" "$(printf '%s\n' "${READY_TIMES[@]}" | percentile 99)" ${#READY_TIMES[@]}
	fi
	if [ ${#RECOVERY_SECS[@]} -gt 0 ]; then
		printf '  %-30s p50 %ss  p99 %ss  (n=%d)\n' "recovery_seconds (status):" \
			"$(printf '%s\n' "${RECOVERY_SECS[@]}" | percentile 50)" "$(printf '%s\n' "${RECOVERY_SECS[@]}" | percentile 99)" ${#RECOVERY_SECS[@]}
	fi
	for f in "${FAILS[@]}"; do echo "  - $f"; done
	[ "$fails" -gt 0 ] && echo "  logs of failed iterations under $faildir; images in $WORK (kept)"
	echo
}

# ------------------------------------------------------------------ setup
log "crashtest-ext4: seed $seed, $iters iterations, ext4 of $size, cache $csize, work dir $WORK"
wbc_format "$CACHE" "$BACKING" "$csize" >"$LOGS/format.log" 2>&1 || {
	cat "$LOGS/format.log" >&2
	die "wbcache format failed"
}
start_daemon first || die "wbcache mount failed"
loop_up || die "losetup on $MNT/disk failed"
mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0,nodiscard "$LOOP" >"$LOGS/mkfs.log" 2>&1 || {
	cat "$LOGS/mkfs.log" >&2
	die "mkfs.ext4 failed"
}
done_iters=0

for ((it = 1; it <= iters; it++)); do
	rm -f "$LOGS"/*
	opts=
	if [ $((RANDOM % 3)) -eq 0 ]; then
		opts=discard
		discard_runs=$((discard_runs + 1))
	fi
	if ! fs_mount "$opts"; then
		fail "mount of the ext4 failed: $(cat "$LOGS/mount.err")"
		break
	fi
	mkdir -p "$FS/data"

	# 2+3. write and kill.
	if [ "$quick" = 1 ]; then ms=$(rand_between 500 1500); else ms=$(rand_between 500 5000); fi
	"$WBCHECK" write --dir "$FS/data" --manifest "$MANIFEST" --seed "$((seed * 1000 + it))" \
		--duration 120s --budget "$budget" >"$LOGS/write.out" 2>&1 &
	wpid=$!
	track_pid "$wpid"
	sleep "$(awk -v m="$ms" 'BEGIN { printf "%.3f", m / 1000 }')"
	if ! pid_alive "$wpid"; then
		fail "wbcheck write ended before the kill: $(cat "$LOGS/write.out")"
	fi
	wbc_kill "$DPID"
	DPID=
	[ -n "$WBC_STUCK" ] && fail "after kill -9 the daemon did not go away (released by aborting its FUSE connection): $WBC_STUCK"
	# wbcheck stops at its first I/O error.
	for ((k = 0; k < 300; k++)); do
		pid_alive "$wpid" || break
		sleep 0.1
	done
	if pid_alive "$wpid"; then
		warn "wbcheck write still running 30s after the kill; killing it"
		kill -KILL "$wpid" 2>/dev/null
	fi
	wrc=0
	wait "$wpid" 2>/dev/null || wrc=$?
	untrack_pid "$wpid"
	case $wrc in
	0 | 2) ;;
	*) fail "wbcheck write exited $wrc: $(tail -n 3 "$LOGS/write.out" | tr '\n' ' ')" ;;
	esac
	n=$(sed -n 's/.* after \([0-9]*\) operations.*/\1/p; s/^wbcheck write: \([0-9]*\) operations.*/\1/p' "$LOGS/write.out" | head -1)
	ops_total=$((ops_total + ${n:-0}))

	# 4. drop the dead stack.
	umount -l "$FS" 2>/dev/null
	untrack_fs "$FS"
	loop_down

	# 5. restart.
	if ! start_daemon restart; then
		if is_mounted "$MNT"; then
			fail "wbcache mount failed after kill -9 with the dead mount still present (it must clean it up itself)"
			fuse_unmount "$MNT"
			start_daemon restart2 || {
				fail "wbcache mount failed after kill -9"
				break
			}
		else
			fail "wbcache mount failed after kill -9"
			break
		fi
	fi
	READY_TIMES+=("$WBC_READY_SECS")
	if wbc_status_json "$MNT" "$LOGS/status.json"; then
		rs=$(jget "$LOGS/status.json" recovery_seconds)
		[ -n "$rs" ] && RECOVERY_SECS+=("$(awk -v r="$rs" 'BEGIN { printf "%.4f", r }')")
	fi
	loop_up || {
		fail "losetup on $MNT/disk failed after the restart"
		break
	}

	# 6. replay ext4's journal, then fsck -n -f.
	if ! fs_mount ""; then
		fail "mounting the crashed ext4 (journal replay) failed: $(cat "$LOGS/mount.err")"
		break
	fi
	fs_umount || fail "umount after the journal replay failed"
	frc=0
	fsck.ext4 -n -f "$LOOP" >"$LOGS/fsck.log" 2>&1 || frc=$?
	fscks=$((fscks + 1))
	if [ $frc -ne 0 ]; then
		fail "fsck.ext4 -n -f exited $frc: $(grep -v '^e2fsck\|^Pass\|^$' "$LOGS/fsck.log" | head -5 | tr '\n' ' ')"
	fi

	# 7. every recorded file intact.
	if ! fs_mount ""; then
		fail "mount after fsck failed: $(cat "$LOGS/mount.err")"
		break
	fi
	vrc=0
	"$WBCHECK" verify --dir "$FS/data" --manifest "$MANIFEST" --resolve >"$LOGS/verify.out" 2>&1 || vrc=$?
	line=$(grep '^wbcheck verify:' "$LOGS/verify.out")
	nf=$(echo "$line" | awk '{ print $3 }')
	nb=$(echo "$line" | sed -n 's/.*(\([0-9]*\) bytes).*/\1/p')
	files_verified=$((files_verified + ${nf:-0}))
	bytes_verified=$((bytes_verified + ${nb:-0}))
	if [ $vrc -ne 0 ]; then
		fail "wbcheck verify: $(grep -m5 PROBLEM "$LOGS/verify.out" | tr '\n' ' ')"
	fi
	fs_umount || fail "umount of the ext4 failed: $(cat "$LOGS/mount.err")"

	# Sometimes a clean stop + offline check.
	post=crash
	if [ $((it % 4)) -eq 0 ] || [ "$it" -eq "$iters" ]; then
		post="clean stop + check"
		loop_down
		src=0
		wbc_stop "$DPID" "$MNT" 120 || src=$?
		DPID=
		[ $src -eq 0 ] || fail "daemon exited $src after SIGTERM"
		crc=0
		"$WBCACHE" check --cache "$CACHE" --backing "$BACKING" >"$LOGS/check.log" 2>&1 || crc=$?
		checks=$((checks + 1))
		[ $crc -eq 0 ] || fail "wbcache check exited $crc: $(head -c 500 "$LOGS/check.log" | tr '\n' ' ')"
		if [ "$it" -lt "$iters" ]; then
			start_daemon clean-restart || {
				fail "wbcache mount failed after a clean stop"
				break
			}
			loop_up || {
				fail "losetup failed"
				break
			}
		fi
	fi
	done_iters=$it
	log "iter $it/$iters: ${opts:-no discard}, kill at ${ms}ms, ${n:-0} ops, ready ${WBC_READY_SECS}s, fsck rc $frc, $line; $post; failures so far $fails"
done

summary
[ "$fails" -eq 0 ]
