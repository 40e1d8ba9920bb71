// Package uring is the FUSE-over-io_uring transport (Linux 6.14+,
// fs/fuse/dev_uring.c) for a go-fuse RawFileSystem whose connection go-fuse
// has mounted and initialised.
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
//   - api.go: what the fuse package uses (Config, Start, Server, Probe).
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
//     by the connection's teardown) are never unmapped.
//   - Every entry has at most one command queued, so the submission queue
//     (entries + 1, for the wake-up read) never overflows.
package uring
