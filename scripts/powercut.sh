#!/usr/bin/env bash
# scripts/powercut.sh: the power-cut harness (DESIGN.md §2.2, §2.3, §2.4).
#
# A real power cut cannot be pulled from a script, so this drives the
# engine's randomized model test, blockcache TestModelCrashRecovery, for
# many seeds and cycles. It runs the real engine (journal, checkpoints,
# destager steps, discards, mode switches) on the in-memory crash device
# of device/, which tracks synced vs. unsynced writes. Each cycle arms a
# crash at a random later device operation (in the middle of writes,
# syncs, discards, checkpoints, destages), then half the time simulates a
# power cut (every unsynced 4 KiB write of the SSD and HDD images is
# randomly kept, dropped or torn at 512 B) and half the time a process
# crash (unsynced writes survive, as in the page cache), reopens the cache
# (recovery) and checks every block against a model: it must read as its
# newest durable version or a newer acknowledged one, never older, never
# torn across versions (except blocks written in place on the backing
# device, which a power cut may tear as it would the bare disk), never
# another block's data; clean cached blocks must equal the backing device.
#
# Each round is one run of the test binary with WBC_MODEL_SEED=BASE+4*r
# (the test runs seeds BASE+4r+1 .. BASE+4r+4 in parallel) and
# WBC_MODEL_CYCLES=CYCLES per seed.
#
# Usage: scripts/powercut.sh [options]
#   -n ROUNDS      rounds (default 10; --quick 2)
#   -c CYCLES      crash cycles per seed (default 2500; --quick 300)
#   -s SEED        base seed (default: time based, printed)
#   --race         build the test binary with -race (slower, ~10x)
#   --quick        2 rounds of 300 cycles (CI smoke)
#   --run REGEX    tests to run (default ^TestModelCrashRecovery(Hot)?$: both the
#                  spread-out and the hot, rewrite-in-place mix)
#   --timeout DUR  per round (default 30m)
# Reproduce a failure: WBC_MODEL_SEED=<base> WBC_MODEL_CYCLES=<cycles> \
#   go test ./blockcache -run '^TestModelCrashRecovery(Hot)?$' -v
# Exit status: 0 when every round passed, 1 otherwise.
set -uo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"

usage() {
	sed -n '2,/^set -uo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
	exit "${1:-2}"
}

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
	*) echo "unknown option: $1" >&2; usage ;;
	esac
done
if [ "$quick" = 1 ]; then
	rounds=${rounds:-2} cycles=${cycles:-300}
else
	rounds=${rounds:-10} cycles=${cycles:-2500}
fi
[ -n "$seed" ] || seed=$(($(date +%s) % 1000000 * 10))

need_tools go awk
wbc_install_traps
mk_workdir wbc-powercut
bin=$WORK/blockcache.test
flags=()
[ "$race" = 1 ] && flags+=(-race)
log "powercut: building the blockcache test binary${flags[*]:+ (${flags[*]})}"
(cd "$WBC_REPO" && go test -c "${flags[@]}" -o "$bin" ./blockcache) || die "go test -c ./blockcache failed"

log "powercut: $rounds rounds of $run (4 seeds, and 2 for the hot variant) x $cycles cycles, base seed $seed"
fails=0 seeds_run=0 cycles_run=0 start=$(now_ns)
declare -a FAILS=()
declare -A OPS=()
for ((r = 0; r < rounds; r++)); do
	base=$((seed + 4 * r))
	out=$WORK/round-$r.log
	rc=0
	(cd "$WBC_REPO/blockcache" && WBC_MODEL_SEED=$base WBC_MODEL_CYCLES=$cycles \
		"$bin" -test.run "$run" -test.count=1 -test.v -test.timeout "$tmo") >"$out" 2>&1 || rc=$?
	n=$(grep -c 'cycles [0-9]* ops' "$out")
	seeds_run=$((seeds_run + n))
	c=$(awk '/cycles [0-9]+ ops/ { for (i = 1; i <= NF; i++) if ($i == "cycles") s += $(i + 1) } END { print s + 0 }' "$out")
	cycles_run=$((cycles_run + c))
	# ops map[checkpoint:39 destage:126 ...]
	while read -r k v; do
		OPS[$k]=$((${OPS[$k]:-0} + v))
	done < <(grep -o 'ops map\[[^]]*\]' "$out" | sed 's/ops map\[//; s/\]//' | tr ' ' '\n' | tr ':' ' ')
	if [ $rc -ne 0 ] || grep -q -- '--- FAIL' "$out"; then
		fails=$((fails + 1))
		keep=/var/tmp/wbc-powercut-fail-$base.log
		cp "$out" "$keep"
		FAILS+=("round $r (WBC_MODEL_SEED=$base WBC_MODEL_CYCLES=$cycles): $(grep -m1 -E 'Fatalf|Error|panic|FAIL:|model_test.go:[0-9]+: cycle' "$out" | head -c 300) -> $keep")
		log "FAIL round $r, seed base $base: log saved to $keep"
	else
		log "round $((r + 1))/$rounds: seeds $((base + 1))-$((base + 4)), $c cycles, ok"
	fi
done

echo
echo "=== powercut summary (model test $run, base seed $seed) ==="
printf '  %-22s %s\n' "rounds:" "$rounds ($seeds_run seeds that finished)"
printf '  %-22s %s\n' "crash cycles:" "$cycles_run (about half power cuts dropping/tearing unsynced writes, half process crashes)"
printf '  %-22s %s\n' "operations:" "$(for k in $(printf '%s\n' "${!OPS[@]}" | sort); do printf '%s %s  ' "$k" "${OPS[$k]}"; done)"
printf '  %-22s %s\n' "time:" "$(secs_since "$start")s"
printf '  %-22s %s\n' "failures:" "$fails"
for f in "${FAILS[@]}"; do echo "  - $f"; done
echo
[ "$fails" -eq 0 ]
