#!/usr/bin/env bash
# scripts/crashtest.sh: the kill -9 loop with fio verify state
# (docs/design.md §2.1, §2.3, §2.4, §2.6). It runs the Go test
# TestKill9Loop of the crashtest package (crashtest/doc.go). Each
# iteration:
#
#   1. (re)start `wbcache mount` on a sparse cache file and backing file
#      with the variant's settings;
#   2. fio writes random blocks (4k-64k bssplit, some fsyncs, sometimes a
#      sequential 128k-1M stream) with 2-4 jobs on disjoint ranges,
#      --verify=crc32c --do_verify=0 --verify_state_save=1, and the daemon
#      is killed with kill -9 through fio's trigger (libaio at QD 4-32: fio
#      saves its verify state, stops its jobs and runs the kill) or from
#      outside after 0.5-3.5 s (psync at QD 1, writes in flight);
#   3. variant recovery: kill -9 the daemon again while it starts up, 1-3
#      times;
#   4. restart (the daemon must clean up the dead mount itself);
#   5. fio --verify_only=1 --verify_state_load=1 --verify_fatal=1: every
#      write fio saw complete must read back;
#   6. sometimes `wbcache flush` or `wbcache detach`, then fio verifies the
#      backing file ALONE;
#   7. SIGTERM (clean stop) and `wbcache check --cache --backing` (exit 0),
#      or, sometimes, go on to the next crash without a clean stop.
#
# Usage: scripts/crashtest.sh [options]
#   -n N               iterations (default 20)
#   -s SEED            random seed (default: time based, printed)
#   --size SIZE        backing file size (default 2G; --quick 512M)
#   --cache-size SIZE  cache file size (default 256M; --quick 64M)
#   --variant V        plain | heavy-destage | checkpoint | recovery |
#                      mode-switch | drain-around | all (rotates through
#                      every variant)
#                      (default plain)
#   --quick            small sizes and short write phases (CI smoke)
#   --stop-on-failure  stop at the first failure (default: record it and
#                      go on)
#   --keep             keep the work directory (kept anyway on failure)
#   --failures DIR     where failed iterations and the images of the first
#                      one are saved (default WORK/failures)
# Environment: WBCACHE = a prebuilt binary (default: go build), WBC_TMP =
# parent of the work directory (default /var/tmp), WBC_FUSE_URING = the
# FUSE transport (--fuse-uring).
# The same run by hand: go test -v -run '^TestKill9Loop$' ./crashtest
#   -args -crash.n=20 -crash.variant=all ... (crashtest/flags_test.go).
# Exit status: 0 when every iteration passed, 1 otherwise.
set -uo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"

crash_args " -n -s --size --cache-size --variant --quick --stop-on-failure --keep --failures " "$@"
CRASH_ARGS=(-crash.n=20 -crash.variant=plain "${CRASH_ARGS[@]}")
crash_loop TestKill9Loop
