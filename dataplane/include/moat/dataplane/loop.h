// The socket engine seam: one event loop per worker thread.
//
// Today the only implementation is io_uring (src/uring_loop.cpp); nothing
// above dataplane/ includes liburing. A worker owns exactly one Loop and calls
// every method from its own thread only; none of them block, allocate or
// throw after create(). Operations complete by calling Completion::fn on the
// same thread from inside runOnce().
//
// Lifetime rule: a Completion must stay alive until its final event arrives
// (IoEvent::more == false). Owners count their in-flight operations and free
// themselves only when that count reaches zero (see l7/src/proxy.cpp).
#pragma once

#include <sys/socket.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace moat::dataplane {

struct IoEvent {
  int32_t res = 0;        // >= 0: bytes, fd or 0; < 0: -errno
  bool more = false;      // a multishot operation will complete again
  int32_t bufferId = -1;  // provided buffer holding received bytes, or -1
};

struct Completion {
  void (*fn)(Completion* self, const IoEvent& ev) = nullptr;
  void* owner = nullptr;
};

// The parts of one datagram received by recvMsgMultishot, located inside
// its provided buffer (pointers valid until the buffer is released).
struct RecvMsgView {
  const sockaddr* name = nullptr;  // sender address
  socklen_t nameLen = 0;
  char* payload = nullptr;
  uint32_t payloadLen = 0;
  bool truncated = false;  // the datagram or its address did not fit: drop it
};

struct LoopOptions {
  uint32_t ringEntries = 4096;   // submission queue size
  uint32_t bufferCount = 4096;   // provided receive buffers (power of two)
  uint32_t bufferSize = 16384;   // bytes per provided buffer
  // Buffers the owner fills itself (acquireBuffer), e.g. with plaintext that
  // TLS decrypted; same size and id space as the provided ones. Memory is
  // reserved at create() and touched only when used.
  uint32_t localBufferCount = 4096;
};

struct LoopStats {
  uint64_t submitCalls = 0;       // io_uring_enter calls (batching: completions / this)
  uint64_t completions = 0;       // CQEs dispatched
  uint64_t sqFullFlushes = 0;     // SQ filled up between turns and was flushed early
  uint64_t recvNoBuffers = 0;     // receives that found the buffer ring empty (-ENOBUFS)
  uint64_t localNoBuffers = 0;    // acquireBuffer found every local buffer in use
};

class Loop {
 public:
  // Creates the ring and registers the provided-buffer ring. On failure
  // returns null and sets `err` (e.g. "io_uring_queue_init: Operation not
  // permitted"). Allocates: call at worker start only.
  static std::unique_ptr<Loop> create(const LoopOptions& opts, std::string& err);
  ~Loop();
  Loop(const Loop&) = delete;
  Loop& operator=(const Loop&) = delete;

  // Must be called once, from the thread that will run the loop, before any
  // other method: the ring is bound to that thread (SINGLE_ISSUER).
  bool bindToThisThread(std::string& err);

  // Multishot accept: one completion per accepted socket (res = new fd,
  // non-blocking, close-on-exec). The peer address is read with getpeername
  // only when the owner needs it.
  void acceptMultishot(int listenFd, Completion* c);
  // Multishot receive into provided buffers: each completion carries a
  // bufferId (see bufferData) that the owner must release with
  // releaseBuffer. res == 0 means the peer closed; -ENOBUFS means the buffer
  // ring ran dry (re-arm after releasing buffers).
  void recvMultishot(int fd, Completion* c);
  void send(int fd, const void* data, size_t len, Completion* c);
  // Gather send; `msg` and the memory it points to must live until completion.
  void sendMsg(int fd, const msghdr* msg, Completion* c);
  void connect(int fd, const sockaddr* addr, socklen_t len, Completion* c);
  // Cancels every operation on fd (they complete with -ECANCELED). `c` gets
  // the cancel's own completion.
  void cancelFd(int fd, Completion* c);
  // Cancels the operation whose completion is `target` (e.g. a multishot
  // receive, to apply back-pressure). The target's final event follows.
  void cancel(Completion* target, Completion* c);
  // Arms one read of 8 bytes on an eventfd (used to wake the loop).
  void readEventFd(int fd, uint64_t* value, Completion* c);

  // One-shot poll: completes once fd is ready for `events` (POLLIN,
  // POLLOUT; errors and hang-ups always wake it); res = the ready mask.
  void pollOnce(int fd, uint32_t events, Completion* c);
  // Moves up to len bytes from fdIn to fdOut inside the kernel (one of them
  // must be a pipe): zero copy for socket -> pipe -> socket. Always
  // non-blocking (SPLICE_F_NONBLOCK | SPLICE_F_MOVE; sockets must be
  // O_NONBLOCK): res = bytes moved, 0 = end of file on fdIn, -EAGAIN when
  // nothing could move (poll, then retry). The kernel runs every splice on
  // an io-wq thread: one thread hop per call, never a blocked thread.
  void splice(int fdIn, int fdOut, uint32_t len, Completion* c);
  // Multishot recvmsg into provided buffers, for datagram sockets: one
  // completion per datagram, sender address included. `msg` is a template
  // (only msg_namelen and msg_controllen are used) that must live until the
  // final completion. Locate the parts with parseRecvMsg; release the buffer
  // as for recvMultishot.
  void recvMsgMultishot(int fd, const msghdr* msg, Completion* c);
  // Splits a recvMsgMultishot completion's buffer. False when the event
  // carries no valid datagram (no buffer, or too short). O(1).
  bool parseRecvMsg(const msghdr* msg, const IoEvent& ev, RecvMsgView& out) const;

  // Takes a free local buffer (one holder) for the owner to fill; it goes
  // back to the local pool, not the kernel, on its last release. Returns -1
  // when all are in use (counted in LoopStats::localNoBuffers): the caller
  // retries after releasing some. O(1), no allocation.
  int32_t acquireBuffer();

  // Pointer to the bytes of a provided or local buffer (valid until released).
  char* bufferData(int32_t bufferId) const;
  uint32_t bufferSize() const;
  // Reference counting: a buffer may be held by the receive side (bytes not
  // parsed yet) and by a pending send at once. Acquire adds a holder; the
  // buffer returns to the kernel when the last holder releases it.
  void retainBuffer(int32_t bufferId);
  void releaseBuffer(int32_t bufferId);

  // Submits queued operations, waits up to timeoutMs for at least one
  // completion and dispatches all that are ready. Returns completions seen.
  int runOnce(int timeoutMs);
  // The same with a nanosecond bound, for callers that keep their own
  // sub-millisecond timers (e.g. moat-bench's open-loop send schedule).
  int runOnceNs(uint64_t timeoutNs);

  // CLOCK_MONOTONIC, refreshed once per runOnce (cheap to call).
  uint64_t nowMs() const;
  uint64_t nowNs() const;
  const LoopStats& stats() const;

  struct Impl;

 private:
  explicit Loop(Impl* impl);
  Impl* impl_;
};

}  // namespace moat::dataplane
