#!/usr/bin/env bash
# scripts/crashtest-ext4.sh: ext4 on a loop device on MOUNTPOINT/disk,
# files written and fsync'd, kill -9 of the daemon, and after the restart
# fsck must be clean and every file recorded as durable must be intact
# (docs/design.md §2.1 through a real file system). It runs the Go test
# TestExt4Loop of the crashtest package (crashtest/doc.go).
#
# Once: format a cache, start `wbcache mount`, losetup --direct-io=on on
# MOUNTPOINT/disk, mkfs.ext4. Each iteration:
#   1. mount the ext4 (a third of the time with -o discard, which reaches
#      wbcache as fallocate(PUNCH_HOLE));
#   2. `wbcheck write` creates, replaces (write temp + fsync + rename +
#      fsync dir) and deletes files, recording each committed change in a
#      manifest on ANOTHER file system only after the fsyncs returned;
#   3. kill -9 the daemon at a random moment: the loop device fails every
#      I/O, ext4 aborts, wbcheck stops at its first I/O error;
#   4. umount -l the ext4, losetup -d;
#   5. restart the daemon (it removes the dead mount itself), losetup again;
#   6. mount + umount once (ext4 replays its journal), then
#      `fsck.ext4 -n -f` must exit 0;
#   7. mount and `wbcheck verify --resolve`: every committed file has its
#      recorded content, every committed delete stayed deleted, files of
#      all earlier iterations included.
# Every 4th iteration (and the last) the daemon is also stopped cleanly
# (SIGTERM) and `wbcache check` must pass.
#
# Usage: scripts/crashtest-ext4.sh [options]
#   -n N               iterations (default 10)
#   -s SEED            random seed (default: time based, printed)
#   --size SIZE        backing file = ext4 size (default 2G; --quick 1G)
#   --cache-size SIZE  cache file size (default 256M; --quick 64M)
#   --quick            small sizes, short write phases (CI smoke)
#   --stop-on-failure  stop at the first failure
#   --keep             keep the work directory (kept anyway on failure,
#                      with the cache, backing, manifest and logs)
#   --failures DIR     also copy the logs and manifest of each failed
#                      iteration to DIR/iteration-N
# Environment: WBCACHE / WBCHECK = prebuilt binaries, WBC_TMP = parent of
# the work directory (default /var/tmp), WBC_FUSE_URING = the transport.
# The same run by hand: go test -v -run '^TestExt4Loop$' ./crashtest
#   -args -crash.n=10 ... (crashtest/flags_test.go).
# Exit status: 0 when every iteration passed, 1 otherwise.
set -uo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"

crash_args " -n -s --size --cache-size --quick --stop-on-failure --keep --failures " "$@"
CRASH_ARGS=(-crash.n=10 "${CRASH_ARGS[@]}")
crash_loop TestExt4Loop
