#!/usr/bin/env bash
# scripts/powercut.sh: the power-cut harnesses (docs/design.md §2.2, §2.3, §2.4).
#
# Two modes:
#
# Model mode (the default) drives the engine's randomized model test,
# blockcache TestModelCrashRecovery, for many seeds and cycles. It runs the
# real engine (journal, checkpoints, destager steps, discards, mode
# switches) on the in-memory crash device of device/, which tracks synced
# vs. unsynced writes. Each cycle arms a crash at a random later device
# operation (in the middle of writes, syncs, discards, checkpoints,
# destages), then half the time simulates a power cut (every unsynced 4 KiB
# write of the SSD and HDD images is randomly kept, dropped or torn at
# 512 B) and half the time a process crash (unsynced writes survive, as in
# the page cache), reopens the cache (recovery) and checks every block
# against a model: it must read as its newest durable version or a newer
# acknowledged one, never older, never torn across versions (except blocks
# written in place on the backing device, which a power cut may tear as it
# would the bare disk), never another block's data; clean cached blocks
# must equal the backing device. Each round is one run of the test binary
# with WBC_MODEL_SEED=BASE+4*r (the test runs seeds BASE+4r+1 .. BASE+4r+4
# in parallel) and WBC_MODEL_CYCLES=CYCLES per seed.
#
# Real mode (--real) pulls power cuts under the real daemon on real kernel
# paths, with cmd/wbcache-powercut: its FUSE filesystem serves the cache
# and backing files with the kernel page cache above it (wbcache's shared
# mapping of the journal, O_DIRECT on the backing file) and holds every
# write that no fsync of its file covered in memory, per 512-byte sector.
# Each round starts that filesystem and `wbcache mount` on its files
# (recovery), reads every block of the disk and checks it against the
# writers' exact bookkeeping, writes with 8 O_DIRECT writers that fsync now
# and then, then kills the daemon with kill -9 and cuts the power (each
# unsynced sector kept or dropped at random; the page cache above is lost),
# in one of three orders. After the last round: a restart, a check, a
# clean stop and `wbcache check`. Needs root and /dev/fuse. It runs the Go
# test TestPowerCutLoop of the crashtest package (crashtest/doc.go), which
# runs `wbcache-powercut run`.
#
# Usage: scripts/powercut.sh [options]
#   -n ROUNDS      rounds (default 10; --quick 2; real mode 20, --quick 6)
#   -s SEED        base seed (default: time based, printed)
#   --quick        a short run (CI smoke): model 2 rounds of 300 cycles; real
#                  6 rounds, 256M disk, 32M cache, write phases of 0.5-1.5 s
# Model mode only:
#   -c CYCLES      crash cycles per seed (default 2500; --quick 300)
#   --race         build the test binary with -race (slower, ~10x)
#   --run REGEX    tests to run (default ^TestModelCrashRecovery(Hot)?$: both the
#                  spread-out and the hot, rewrite-in-place mix)
#   --timeout DUR  per round (default 30m)
# Real mode:
#   --real               run the real daemon (see above)
#   --backing-size SIZE  the disk (default 512M)
#   --cache-size SIZE    the cache (default 128M: a quarter of the disk, so
#                        that it fills, evicts and reuses slots; give more
#                        than the disk, e.g. 640M, for a cache that never
#                        evicts)
#   --keep               keep the work directory when the run fails
#   --stop-on-failure    stop after the first round that fails
#   -- ARGS...           more options for `wbcache-powercut run` (see its --help)
#   WBC_TMP is the parent of the work directory, WBC_FUSE_URING is passed to
#   wbcache mount as --fuse-uring, WBCACHE and WBCACHE_POWERCUT name
#   prebuilt binaries.
# Reproduce a model failure: WBC_MODEL_SEED=<base> WBC_MODEL_CYCLES=<cycles> \
#   go test ./blockcache -run '^TestModelCrashRecovery(Hot)?$' -v
# Reproduce a real-mode run: the same -s SEED and sizes (up to timing), or
#   go test -v -run '^TestPowerCutLoop$' ./crashtest -args -crash.seed=SEED ...
# Exit status: 0 when every round passed, 1 otherwise.
set -uo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"

# Real mode is the Go test TestPowerCutLoop of the crashtest package.
for a in "$@"; do
	[ "$a" = -- ] && break
	if [ "$a" = --real ]; then
		args=()
		rounds=20
		for b in "$@"; do
			[ "$b" = --quick ] && rounds=6
			[ "$b" = --real ] || args+=("$b")
		done
		crash_args " -n -s --quick --backing-size --cache-size --keep --stop-on-failure -- " "${args[@]}"
		CRASH_ARGS=("-crash.n=$rounds" "${CRASH_ARGS[@]}")
		crash_loop TestPowerCutLoop
		exit $?
	fi
done

rounds= cycles= seed= race=0 quick=0 run='^TestModelCrashRecovery(Hot)?$' tmo=30m
while [ $# -gt 0 ]; do
	case $1 in
	-n) rounds=$2; shift 2 ;;
	-c) cycles=$2; shift 2 ;;
	-s) seed=$2; shift 2 ;;
	--race) race=1; shift ;;
	--quick) quick=1; shift ;;
	--run) run=$2; shift 2 ;;
	--timeout) tmo=$2; shift 2 ;;
	-h | --help) usage 0 ;;
	*) echo "unknown option: $1 (--backing-size, --cache-size, --keep, --stop-on-failure and -- ARGS need --real)" >&2; usage ;;
	esac
done
if [ "$quick" = 1 ]; then
	rounds=${rounds:-2} cycles=${cycles:-300}
else
	rounds=${rounds:-10} cycles=${cycles:-2500}
fi
[ -n "$seed" ] || seed=$(($(date +%s) % 1000000 * 10))

need_tools go
wbc_install_traps
mk_workdir wbc-powercut
bin=$WORK/blockcache.test
flags=()
[ "$race" = 1 ] && flags+=(-race)
log "powercut: building the blockcache test binary${flags[*]:+ (${flags[*]})}"
(cd "$WBC_REPO" && go test -c "${flags[@]}" -o "$bin" ./blockcache) || die "go test -c ./blockcache failed"

log "powercut: $rounds rounds of $run (4 seeds, and 2 for the hot variant) x $cycles cycles, base seed $seed"
fails=0 passed=0 start=$(now_ns)
declare -a FAILS=()
for ((r = 0; r < rounds; r++)); do
	base=$((seed + 4 * r))
	out=$WORK/round-$r.log
	rc=0
	(cd "$WBC_REPO/blockcache" && WBC_MODEL_SEED=$base WBC_MODEL_CYCLES=$cycles \
		"$bin" -test.run "$run" -test.count=1 -test.v -test.timeout "$tmo") >"$out" 2>&1 || rc=$?
	if [ $rc -ne 0 ]; then
		fails=$((fails + 1))
		keep=/var/tmp/wbc-powercut-fail-$base.log
		cp "$out" "$keep"
		FAILS+=("round $r (WBC_MODEL_SEED=$base WBC_MODEL_CYCLES=$cycles): exit $rc -> $keep")
		log "FAIL round $r, seed base $base: log saved to $keep"
	else
		passed=$((passed + 1))
		log "round $((r + 1))/$rounds: seeds $((base + 1))-$((base + 4)), ok"
	fi
done

echo
echo "=== powercut summary (model test $run, base seed $seed) ==="
printf '  %-22s %s\n' "rounds:" "$rounds ($passed passed)"
printf '  %-22s %s\n' "crash cycles:" "$cycles per seed, 4 seeds a round and 2 of the hot variant with the default --run (about half power cuts dropping/tearing unsynced writes, half process crashes)"
printf '  %-22s %s\n' "time:" "$(secs_since "$start")s"
printf '  %-22s %s\n' "failures:" "$fails"
for f in "${FAILS[@]}"; do echo "  - $f"; done
echo
[ "$fails" -eq 0 ]
