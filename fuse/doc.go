// Package fuse serves a [Backend] (the wbcache block store) as a single
// virtual file, MOUNTPOINT/disk, through the Linux FUSE protocol, using
// go-fuse's raw API.
//
// # What is served
//
// The mount holds one fixed directory (inode 1) with:
//
//   - disk: a regular file whose size is Backend.Size() and never changes.
//     Mode 0600, owned by the user that mounted it (0644 with
//     Options.AllowOther). Every READ, WRITE, FSYNC and FALLOCATE on it is
//     forwarded to the Backend; nothing is cached in the kernel.
//   - stats: present only when Options.Stats is set. Read-only (0400, or
//     0444 with AllowOther). Its content is produced by Options.Stats when
//     the file is opened and stays fixed for that open file (a snapshot per
//     file handle); stat(2) reports its size as 0, as procfs files do.
//
// Nothing else exists: other names give ENOENT and attempts to create,
// remove, rename or link entries give EPERM.
//
// # Errno choices
//
//   - READ at or past the end returns 0 bytes (EOF); a READ that crosses
//     the end is cut short there, as for a regular file.
//   - WRITE starting at or past the end fails with ENOSPC; a WRITE that
//     crosses the end is cut short there (the caller sees a short write and
//     ENOSPC on the next one). This is what a Linux block device does.
//   - SETATTR with a size other than the current one (truncate, ftruncate,
//     open with O_TRUNC) fails with EINVAL, as ftruncate does on a block
//     device: the size is fixed by the backing device. Truncating to the
//     current size succeeds. chmod, chown and utimes are accepted and kept
//     in memory for the life of the mount (they are not persisted).
//   - FSYNC calls Backend.Sync. The datasync bit is ignored: fsync and
//     fdatasync are both a full durability barrier. A loop device on the
//     file sends its flushes (REQ_PREFLUSH/FUA) as FSYNC.
//   - FLUSH (sent on every close) returns OK without syncing: close is not
//     a durability point.
//   - FALLOCATE: PUNCH_HOLE|KEEP_SIZE (how a loop device sends discard) and
//     ZERO_RANGE (with or without KEEP_SIZE) call Backend.Discard over the
//     range clipped to the size, so it reads as zeros afterwards. Plain
//     allocation (mode 0 or KEEP_SIZE) within the size is a successful
//     no-op. Anything that would change the size, and any other mode, fails
//     with EOPNOTSUPP, which fallocate(1), loop devices and mkfs handle.
//   - FSYNC, FSYNCDIR, FLUSH and FALLOCATE never answer ENOSYS: the kernel
//     would then stop sending them for the whole mount and later fsyncs
//     would silently "succeed".
//   - Backend errors: a wrapped syscall.Errno from a short list that means
//     the same thing to the caller (EIO, EINVAL, ENOSPC, EDQUOT, EROFS,
//     EPERM, EACCES, EFBIG, EOPNOTSUPP, ENOMEM, EBUSY, ENXIO) is passed on,
//     as are fs.ErrInvalid (EINVAL) and fs.ErrPermission (EPERM). Everything
//     else, including ENOSYS and short transfers, becomes EIO and is logged
//     (at most one log line per second, with a count of the suppressed ones).
//
// # Mount options and why
//
//   - Open replies FOPEN_DIRECT_IO | FOPEN_PARALLEL_DIRECT_WRITES for disk:
//     no kernel page cache (whose dirty pages would die with the daemon),
//     any offset and length work even without O_DIRECT, and the kernel does
//     not serialise writes to the file on the inode lock.
//   - CAP_ASYNC_DIO is requested: without it libaio/io_uring O_DIRECT I/O is
//     run synchronously, one request at a time per submitter.
//   - The kernel writeback cache stays off (CAP_WRITEBACK_CACHE is disabled
//     explicitly): an acknowledged write must have reached the Backend.
//   - MaxWrite and MaxReadAhead are 1 MiB (the kernel's largest request);
//     MaxBackground is 128 so deep async queues reach the Backend.
//   - default_permissions makes the kernel check the mode bits above; without
//     allow_other only the mounting user can use the mount at all.
//   - Locks are not forwarded (the kernel handles them locally); xattrs and
//     READDIRPLUS are off (nothing to serve).
//   - go-fuse's splice reply path is off: replies are in-memory buffers, and
//     splice would only add a pipe round trip (and, for 1 MiB replies, log a
//     trySplice error on every read when /proc/sys/fs/pipe-max-size is 1 MiB),
//     so Mount leaves that system-wide setting alone.
//   - As root the filesystem is mounted with mount(2) directly and a failure
//     is reported as is; otherwise mount(2) is tried and fusermount is the
//     fallback.
//
// # Transports
//
// Requests reach the daemon one of three ways, chosen by Options.IOUring
// and Options.UnbatchedDev:
//
//   - /dev/fuse read through io_uring (the default where FUSE over
//     io_uring is not asked for; package internal/uring): after INIT, threads
//     of the daemon's own (one per CPU) read requests from clones of the
//     connection's descriptor and send the replies through io_uring, a
//     reply and the next read together, many per io_uring_enter(2). Each
//     read waits behind an exclusive poll, so a request wakes one thread.
//     go-fuse keeps one reader (MaxInflightRequestBytes 1), which answers
//     INIT and the few requests it wins. Where io_uring cannot do this
//     (before Linux 5.11, or io_uring disabled) go-fuse reads, as below.
//     Requests that may wait for a slow device ([Waiter]) are answered on
//     goroutines, as through the ring.
//   - /dev/fuse read by go-fuse (UnbatchedDev, Debug, or no io_uring;
//     beside the io_uring threads, with all its readers, where FUSE over
//     io_uring was asked for at INIT but could not be set up):
//     go-fuse's readers read requests and write replies, one read(2) and
//     one writev(2) per request, each request answered on the goroutine
//     that read it.
//   - FUSE over io_uring (Linux 6.14+, the fuse module's enable_uring
//     parameter; package internal/uring, which calls the same rawFS
//     handlers as go-fuse does): after INIT, ring threads register
//     buffers for every queue (one per possible CPU; 2 threads per
//     queue, 64 entries in all, at least 2 per thread), and the kernel
//     hands a request to an entry of the queue of the submitting CPU. A
//     thread answers and fetches the next request with one
//     COMMIT_AND_FETCH, many per io_uring_enter(2), and polls its ring
//     for 20µs before it sleeps. Reads and writes the Backend says may
//     wait for a slow device ([Waiter]) are answered on their own
//     goroutines; everything else on the ring thread. go-fuse still
//     mounts, answers INIT, and serves FORGET and INTERRUPT, which the
//     kernel keeps sending through /dev/fuse. Once the kernel has agreed
//     to io_uring at INIT it holds every request until all queues have
//     entries, so Mount asks for it only after creating a test ring, and a
//     failed setup withdraws (a REGISTER for a queue that does not exist
//     makes the kernel fall back to /dev/fuse). Each ring entry needs a
//     MaxWrite (1 MiB) payload buffer: 64 MiB of address space (4 MiB
//     per CPU beyond 16 CPUs), resident only as far as requests have
//     touched it. A daemon killed
//     while serving through io_uring leaves its mount answering
//     ECONNABORTED rather than ENOTCONN (ECANCELED for a request that
//     raced the teardown); [CleanupStale] takes all three as dead.
//
// Debug (go-fuse's request trace) implies /dev/fuse read by go-fuse in
// IOUringAuto mode.
//
// options.go builds the go-fuse mount options, transport.go chooses the
// transport and starts the ring or the /dev/fuse threads, server.go mounts
// and serves.
//
// # Errors
//
// Mount's errors say what broke, never which command-line flag to pass
// (that is the command's to say): they wrap ErrDeadMount (a dead mount is
// in the way: CleanupStale), ErrRingUnavailable (IOUringOn, and FUSE over
// io_uring cannot be used), ErrRingStuck (the kernel agreed to io_uring
// but the ring can be neither set up nor withdrawn) or ErrDevBatch (the
// /dev/fuse threads passed the probe but could not start on the mounted
// connection, which go-fuse's single reader would then serve one request
// at a time), or the error of the mount itself.
//
// # Lifecycle
//
// [Mount] returns once the kernel has initialised the connection (and,
// with io_uring, once the ring entries are registered or the /dev/fuse
// threads are ready). Handlers run
// concurrently, with no lock held across Backend calls. [Server.Unmount] unmounts; if the mount is busy (open
// files, a loop device on it) it is detached lazily instead: it disappears
// from the namespace at once and the connection ends when the last user
// goes away. [Server.Wait] returns when the connection has ended, whoever
// unmounted. After the daemon is killed, its mount point is left answering
// ENOTCONN (statfs at once; stat within a second, as the root directory's
// attributes are cached for only 1 s while disk's are cached for a day);
// [CleanupStale] detaches such a dead mount so the next Mount can proceed.
package fuse
