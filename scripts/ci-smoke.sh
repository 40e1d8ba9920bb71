#!/usr/bin/env bash
# scripts/ci-smoke.sh: a short run of every harness, for CI (a few minutes).
# The four crash loops are the Go tests of crashtest/ (TestKill9Loop,
# TestExt4Loop, TestLoseCacheExt4Loop, TestPowerCutLoop), run through
# their scripts:
#   crashtest.sh --quick -n 6 --variant all   (each kill -9 variant once,
#                                             FUSE over io_uring where the
#                                             kernel has it; then -n 2 over
#                                             /dev/fuse)
#   crashtest-ext4.sh --quick -n 2            (io_uring where available)
#   crashtest-losecache.sh --quick -n 2       (ordered write-back, the
#                                             cache file deleted)
#   powercut.sh --quick                       (2 rounds x 6 seeds x 300 cycles)
#   powercut.sh --real --quick                (6 power cuts under the real
#                                             daemon, 256M disk, 32M cache)
#   bench.sh --quick                          (every target and job, 1 s each)
#   bench.sh --steady --density --quick       (the steady-state sequence and
#                                             one dirty density, 1 s jobs)
#   ceiling-ab.sh -n 1 --runtime 1            (one alternating round)
# Exits non-zero if any of them fails. Needs root, /dev/fuse, fio, losetup,
# mkfs.ext4 and the cgroup v1 blkio controller; without root or /dev/fuse
# it runs only the model power-cut harness (which needs neither) and says so.
#
# Environment: WBC_SMOKE_SEED (default: time based, printed) seeds every
# harness; WBC_SMOKE_OUT keeps the bench report there (default: a temporary
# directory, removed); WBC_TMP as for the harnesses.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

seed=${WBC_SMOKE_SEED:-$(($(date +%s) % 100000))}
wbc_install_traps
mk_workdir wbc-smoke
log "ci-smoke: seed $seed"
start=$(now_ns)

full=1
if [ "$(id -u)" != 0 ] || [ ! -e /dev/fuse ]; then
	warn "not root or no /dev/fuse: SKIPPING the FUSE harnesses (crashtest, crashtest-ext4, crashtest-losecache, powercut --real, bench)"
	full=0
fi
if [ "$full" = 1 ]; then
	wbc_build "$WORK/bin" # the harnesses reuse these binaries
fi

declare -a NAMES=() RESULTS=()
step() { # NAME CMD...
	local name=$1 t0 rc=0
	shift
	log "=== $name: $*"
	t0=$(now_ns)
	"$@" || rc=$?
	NAMES+=("$name")
	RESULTS+=("$(printf 'exit %d in %ss' "$rc" "$(secs_since "$t0")")")
	[ $rc -eq 0 ] || log "=== $name FAILED (exit $rc)"
	return 0
}

# The crash loops run over both FUSE transports: io_uring where the kernel
# has it (Linux 6.14+ with CONFIG_FUSE_IO_URING), and /dev/fuse.
ring=on
if [ ! -e /sys/module/fuse/parameters/enable_uring ]; then
	warn "this kernel has no FUSE over io_uring: the crash loops run over /dev/fuse only"
	ring=off
fi
if [ "$full" = 1 ]; then
	step crashtest-$ring env WBC_FUSE_URING=$ring scripts/crashtest.sh --quick -n 6 --variant all -s "$seed" --failures "$WORK/crash-failures"
	step crashtest-off env WBC_FUSE_URING=off scripts/crashtest.sh --quick -n 2 --variant all -s "$((seed + 1))" --failures "$WORK/crash-failures-off"
	step crashtest-ext4-$ring env WBC_FUSE_URING=$ring scripts/crashtest-ext4.sh --quick -n 2 -s "$seed" --failures "$WORK/ext4-failures"
	step crashtest-losecache env WBC_FUSE_URING=$ring scripts/crashtest-losecache.sh --quick -n 2 -s "$seed" --failures "$WORK/losecache-failures"
fi
step powercut scripts/powercut.sh --quick -s "$((seed * 10))"
if [ "$full" = 1 ]; then
	step powercut-real scripts/powercut.sh --real --quick -s "$seed"
	if [ -d "${WBC_CGROOT}" ]; then
		step bench scripts/bench.sh --quick --out "${WBC_SMOKE_OUT:-$WORK/bench}"
		step bench-steady scripts/bench.sh --steady --density --quick --out "${WBC_SMOKE_OUT:-$WORK/bench}/steady"
	else
		warn "no cgroup v1 blkio controller at $WBC_CGROOT: SKIPPING bench"
	fi
	if [ -f "${FUSECEILING_SRC:-../shared/bench/fuseceiling}/main.go" ]; then
		step ceiling-ab scripts/ceiling-ab.sh -n 1 --runtime 1
	else
		warn "no fuseceiling source (FUSECEILING_SRC): SKIPPING ceiling-ab"
	fi
fi

echo
echo "=== ci-smoke summary (seed $seed, $(secs_since "$start")s) ==="
bad=0
for i in "${!NAMES[@]}"; do
	printf '  %-16s %s\n' "${NAMES[i]}" "${RESULTS[i]}"
	[[ ${RESULTS[i]} == "exit 0 "* ]] || bad=1
done
if [ $bad -ne 0 ]; then
	# Keep failure artifacts for inspection.
	WBC_KEEP=1
	echo "  FAILED: artifacts kept in $WORK"
fi
exit $bad
