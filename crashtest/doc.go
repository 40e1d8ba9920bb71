// Package crashtest owns the one lifecycle of the processes, mounts and
// loop devices that the crash tests of wbcache create, and the crash loops
// themselves (in its tests).
//
// The library part (this package) starts a process and follows it
// (Procs.Start, Child), starts the daemon `wbcache mount` and waits for its
// ready line (Procs.StartDaemon, Daemon.WaitReady), kills it with SIGKILL
// and reaps it, releasing a daemon that does not go away by aborting its
// FUSE connection through /sys/fs/fuse/connections/N/abort (Daemon.Kill9),
// stops it cleanly (Daemon.Stop: exit 0 and the mount gone), attaches and
// detaches loop devices (Procs.AttachLoop) and builds the commands once
// (Build). Everything is registered with a Procs and undone by
// Procs.Cleanup, in order: processes by the PID we started (wbcache first:
// it may serve from another process's files), then mounts in reverse
// order, then loop devices. Nothing is ever killed by name.
//
// The tests are the crash loops of docs/design.md §4, run as root with
// /dev/fuse (they skip loudly otherwise):
//
//   - TestKill9Loop: kill -9 of the daemon during fio writes, fio verify
//     state after the restart, `wbcache check`, flush or detach and then
//     the backing file verified alone (§2.1, §2.3, §2.4, §2.6);
//   - TestExt4Loop: ext4 on a loop device over the disk, fsync'd files,
//     kill -9, fsck.ext4 -n -f clean and every committed file intact;
//   - TestLoseCacheExt4Loop: the same ext4 stack over a cache mounted
//     with --writeback-order ordered and write-back running all the time;
//     the consistent point T is read from `wbcache status --json`
//     (writeback_order.consistent_unix_nano), then kill -9 and the cache
//     file deleted: the backing file alone must hold an ext4 that fsck
//     passes with every change committed before T (issue 15). Each round
//     formats a new cache over the backing file the round before checked,
//     so the files accumulate and every round re-checks the earlier ones;
//     a failed round starts over on a new file system (made on the backing
//     file itself, with no cache in front);
//   - TestPowerCutLoop: power cuts under the real daemon with
//     `wbcache-powercut run` (§2.2, §2.3).
//
// TestExt4Loop and TestLoseCacheExt4Loop share their stack (ext4Rig:
// format, daemon, loop devices, ext4 mounts, `wbcheck write` and kill,
// journal replay and fsck, `wbcheck verify`).
//
// Without flags each runs a short smoke run; -crash.n, -crash.seed,
// -crash.variant, -crash.quick and the other -crash.* flags (flags_test.go)
// make them long. scripts/crashtest.sh, crashtest-ext4.sh,
// crashtest-losecache.sh and powercut.sh --real are thin wrappers around
// them.
package crashtest
