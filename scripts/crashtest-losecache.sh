#!/usr/bin/env bash
# scripts/crashtest-losecache.sh: ext4 on wbcache with ordered write-back,
# then the cache device is lost: the backing file alone must hold a good
# ext4 with every change committed before the daemon's consistent point
# (issue 15; docs/design.md §4). It runs the Go test TestLoseCacheExt4Loop
# of the crashtest package (crashtest/doc.go).
#
# Once: mkfs.ext4 on the backing file itself. Each round:
#   1. `wbcache format` of a new cache file over the backing file;
#      `wbcache mount --writeback-order ordered` with write-back running
#      all the time (low watermark 0, max dirty age 0-2 s, random per
#      round);
#      losetup --direct-io=on on MOUNTPOINT/disk; mount the ext4 (no
#      discard);
#   2. `wbcheck write` creates, replaces, appends to, moves and deletes
#      files, recording each change in a manifest on ANOTHER file system
#      with its commit time, only after its fsyncs returned;
#   3. at a random moment: read writeback_order.consistent_unix_nano (T)
#      from `wbcache status --json`, kill -9 the daemon, umount -l the
#      ext4, losetup -d, remove the dead mount, DELETE THE CACHE FILE;
#   4. the backing file alone on a loop device: mount + umount (journal
#      replay), `fsck.ext4 -n -f` must exit 0; mount read-only and
#      `wbcheck verify --before T`: every change committed before T (or
#      before the round's start, whichever is later) is there, or a later
#      state of it; a delete committed before T stayed deleted;
#   5. the next round goes on with that file system and manifest (so it
#      re-checks every file of the rounds before); after a failed round it
#      starts on a new file system.
# A round that ends with ordering suspended (no consistent point promised)
# is not checked and does not count (up to 2N+1 rounds run to check N).
# A status without writeback_order (a wbcache without ordered write-back)
# fails the run with a message that says so.
#
# Usage: scripts/crashtest-losecache.sh [options]
#   -n N               rounds to check (default 20)
#   -s SEED            random seed (default: time based, printed)
#   --size SIZE        backing file = ext4 size (default 2G; --quick 1G)
#   --cache-size SIZE  cache file size (default 256M; --quick 64M)
#   --quick            small sizes, short write phases (CI smoke)
#   --stop-on-failure  stop at the first failure
#   --keep             keep the work directory (kept anyway on failure,
#                      with the backing file, manifests and logs)
#   --failures DIR     also copy the logs and manifest of each failed
#                      round to DIR/round-N, with the backing file as the
#                      kill left it (backing-at-kill.img)
# Environment: WBCACHE / WBCHECK = prebuilt binaries, WBC_TMP = parent of
# the work directory (default /var/tmp), WBC_FUSE_URING = the transport.
# The same run by hand: go test -v -run '^TestLoseCacheExt4Loop$'
#   ./crashtest -args -crash.n=20 ... (crashtest/flags_test.go).
# Exit status: 0 when every round passed, 1 otherwise.
set -uo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"

crash_args " -n -s --size --cache-size --quick --stop-on-failure --keep --failures " "$@"
CRASH_ARGS=(-crash.n=20 "${CRASH_ARGS[@]}")
crash_loop TestLoseCacheExt4Loop
