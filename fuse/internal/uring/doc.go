// Package uring serves a go-fuse RawFileSystem, whose connection go-fuse
// has mounted and initialised, through io_uring, in one of two ways: FUSE
// over io_uring (Linux 6.14+, fs/fuse/dev_uring.c), or /dev/fuse read and
// answered through io_uring (Linux 5.11+: exclusive polls came in 5.9,
// waits with a timeout in 5.11).
//
// # FUSE over io_uring
//
// After INIT, the transport registers ring entries (a header buffer and a
// payload buffer each) for every queue — one queue per possible CPU — and
// the kernel then sends requests by completing those entries instead of
// through read(2) on /dev/fuse; a ring thread answers and fetches the next
// request with one COMMIT_AND_FETCH command. Many requests are answered
// per system call and nobody sleeps in read(2), which is where the
// /dev/fuse transport spends most of its time. FORGET and INTERRUPT still
// come through /dev/fuse, which go-fuse keeps serving.
//
// # Reading /dev/fuse through io_uring
//
// Through /dev/fuse a server reads each request with read(2) and sends
// each reply with write(2): two system calls per request, which on a VM
// cost about 1.1 µs each before they do anything. StartDev runs threads
// of its own instead (one per CPU), each with a clone of the connection's
// descriptor (FUSE_DEV_IOC_CLONE, non-blocking) and an io_uring. A
// thread keeps slots (request buffers) in flight; for each it queues a
// poll of the descriptor and, linked to it, the read of a request. Once
// it has answered, the reply's write, the next poll and the next read go
// in, linked in that order, with those of its other slots, in one
// io_uring_enter. Where the kernel has IOSQE_CQE_SKIP_SUCCESS (5.17+)
// the write and the poll complete silently unless they fail, so that a
// thread at QD1 enters the kernel once per request, not twice.
//
//   - The poll waits as an exclusive waiter (EPOLLEXCLUSIVE): a request
//     that arrives wakes the first waiting slot. A read queued alone would
//     wait in io_uring's own poll, which every arriving request wakes, for
//     every slot of every thread: at QD1 that cost 62 µs of daemon CPU
//     per write against 47 through go-fuse's readers.
//   - A woken poll stays in the wait queue until its thread runs it (the
//     connection's wakeups pass no event mask, so io_uring cannot take it
//     off in the wakeup), and the wakeups of requests that come meanwhile
//     stop at it too. The poll then reads one request, and the others
//     wait for the next poll to be queued: one that is queued when a
//     request is already waiting completes at once. A thread queues one
//     whenever it answers, and when it hands a request to a goroutine
//     (which holds that slot) a spare slot takes its place: otherwise a
//     request could wait behind a read of the backing device
//     (TestSlowReadsHoldNoOthers). While a thread answers a request
//     itself (an fsync, say), requests whose wakeup stopped at one of its
//     polls wait until it has.
//   - go-fuse keeps one reader (MaxInflightRequestBytes 1, set by the
//     fuse package): it answers INIT before the threads start, and after
//     that the requests it wins as one exclusive waiter among the
//     threads' slots (6% of them at QD1, in a run with 2 threads of 8
//     slots).
//   - FORGET, BATCH_FORGET, INTERRUPT and NOTIFY_REPLY get no reply. The
//     tree is fixed, so there is nothing to forget; an interrupted
//     request is answered when it finishes.
//   - A request's header and op struct are copied aside; the reply's
//     payload is written over the write's data or the LOOKUP's name, or
//     at the buffer's start, with its header just before it, so that one
//     write sends both.
//   - The connection's end completes the polls (EPOLLERR) and fails the
//     reads with ENODEV (ECONNABORTED if it was aborted); a thread stops
//     once every slot's read and reply has ended.
//
// # What it owns
//
//   - ioring.go: a minimal io_uring, only what the transport needs.
//   - wire.go: the FUSE-over-io_uring wire format and the FUSE opcodes,
//     which go-fuse does not export.
//   - server.go, thread.go: the ring threads, two per queue, and their
//     entries; withdrawing from io_uring when setup fails.
//   - entry.go, dispatch.go: turning a ring entry into a call of the
//     RawFileSystem and its answer back into the entry. go-fuse's own
//     request parser (ProtocolServer) is not used: it allocates a request
//     per call and wants the request as one byte stream, while a ring
//     entry keeps the header, the op struct and the payload apart; the
//     ring path neither allocates nor copies payloads per request.
//   - dev.go: the /dev/fuse threads, their slots, and probeDev.
//   - offload.go: answering requests that may wait for a slow device on
//     goroutines, for both kinds of thread.
//   - api.go: what the fuse package uses (Config, Start, StartDev, Server,
//     Probe, ProbeDev).
//
// # Invariants
//
//   - Once the kernel has agreed to io_uring at INIT it holds every request
//     until all queues have entries. Start therefore either registers
//     entries for every queue, or withdraws the connection from io_uring (a
//     REGISTER for a queue that does not exist makes the kernel fall back
//     to /dev/fuse) before it returns an error.
//   - A ring thread stays on its OS thread (DEFER_TASKRUN: the kernel hands
//     completions to the thread that submitted the commands) and is the
//     only one that submits to its ring.
//   - Buffers the kernel still knows (entries registered and not completed
//     by the connection's teardown, or /dev/fuse reads and replies still
//     queued) are never unmapped.
//   - Every entry has at most one command queued, so the submission queue
//     (entries + 1, for the wake-up read) never overflows; a /dev/fuse
//     slot has at most three (reply, poll, read), and its ring room for
//     3 × slots + 1.
package uring
