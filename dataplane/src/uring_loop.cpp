// io_uring implementation of moat::dataplane::Loop.
//
// One ring per worker thread, set up with SINGLE_ISSUER | DEFER_TASKRUN when
// the kernel has them (falls back to COOP_TASKRUN, then plain). Received data
// lands in one provided-buffer ring per loop; buffers are reference counted
// so that body bytes can be forwarded straight from the receive buffer.
#include <fcntl.h>
#include <liburing.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <ctime>
#include <vector>

#include "moat/dataplane/loop.h"

namespace moat::dataplane {

namespace {
constexpr uint16_t kBufferGroup = 0;
}

// Precise (vDSO, ~20 ns) rather than COARSE (4 ms ticks): read once per
// runOnce, and rate limiting needs sub-millisecond refill arithmetic.
uint64_t monotonicNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000 + static_cast<uint64_t>(ts.tv_nsec);
}

struct Loop::Impl {
  io_uring ring{};
  io_uring_buf_ring* bufRing = nullptr;
  size_t bufRingBytes = 0;
  char* bufMem = nullptr;
  size_t bufMemBytes = 0;
  uint32_t bufCount = 0;
  uint32_t bufSize = 0;
  uint32_t bufMask = 0;
  std::vector<uint16_t> refs;  // holders per buffer (provided, then local)
  std::vector<int32_t> localFree;  // free local buffer ids (>= bufCount)
  uint64_t nowNs = 0;
  bool disabled = false;  // created with R_DISABLED; enabled by bindToThisThread
  LoopStats stats;

  io_uring_sqe* sqe() {
    io_uring_sqe* s = io_uring_get_sqe(&ring);
    if (s == nullptr) {
      // SQ full between turns: flush what is queued and retry. Counted;
      // sized so that this is rare (ringEntries).
      ++stats.sqFullFlushes;
      io_uring_submit(&ring);
      s = io_uring_get_sqe(&ring);
    }
    return s;  // non-null: the SQ was just emptied
  }

  void recycle(int32_t bid) {
    io_uring_buf_ring_add(bufRing, bufMem + static_cast<size_t>(bid) * bufSize, bufSize,
                          static_cast<unsigned short>(bid), static_cast<int>(bufMask), 0);
    io_uring_buf_ring_advance(bufRing, 1);
  }
};

Loop::Loop(Impl* impl) : impl_(impl) {}

Loop::~Loop() {
  if (impl_ == nullptr) return;
  io_uring_queue_exit(&impl_->ring);
  if (impl_->bufRing != nullptr) munmap(impl_->bufRing, impl_->bufRingBytes);
  if (impl_->bufMem != nullptr) munmap(impl_->bufMem, impl_->bufMemBytes);
  delete impl_;
}

std::unique_ptr<Loop> Loop::create(const LoopOptions& opts, std::string& err) {
  if (opts.bufferCount == 0 || (opts.bufferCount & (opts.bufferCount - 1)) != 0 ||
      opts.bufferCount > 32768) {
    err = "bufferCount must be a power of two <= 32768";
    return nullptr;
  }
  auto* impl = new Impl();
  std::unique_ptr<Loop> loop(new Loop(impl));

  io_uring_params p{};
  // SINGLE_ISSUER binds the ring to the task that enables it: start
  // disabled so that the worker thread, not its creator, is that task
  // (see bindToThisThread).
  p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_SUBMIT_ALL |
            IORING_SETUP_R_DISABLED;
  int rc = io_uring_queue_init_params(opts.ringEntries, &impl->ring, &p);
  if (rc == 0) impl->disabled = true;
  if (rc == -EINVAL) {
    p = io_uring_params{};
    p.flags = IORING_SETUP_COOP_TASKRUN | IORING_SETUP_SUBMIT_ALL;
    rc = io_uring_queue_init_params(opts.ringEntries, &impl->ring, &p);
  }
  if (rc == -EINVAL) {
    p = io_uring_params{};
    rc = io_uring_queue_init_params(opts.ringEntries, &impl->ring, &p);
  }
  if (rc < 0) {
    err = std::string("io_uring_queue_init: ") + strerror(-rc);
    loop->impl_ = nullptr;
    delete impl;
    return nullptr;
  }

  impl->bufCount = opts.bufferCount;
  impl->bufSize = opts.bufferSize;
  impl->bufMask = io_uring_buf_ring_mask(opts.bufferCount);
  impl->bufRingBytes = sizeof(io_uring_buf) * opts.bufferCount;
  void* ringMem = mmap(nullptr, impl->bufRingBytes, PROT_READ | PROT_WRITE,
                       MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
  // Provided buffers first, then the local ones (acquireBuffer) in the same
  // mapping, so bufferData is one multiply for both.
  impl->bufMemBytes =
      (static_cast<size_t>(opts.bufferCount) + opts.localBufferCount) * opts.bufferSize;
  void* dataMem = mmap(nullptr, impl->bufMemBytes, PROT_READ | PROT_WRITE,
                       MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
  if (ringMem == MAP_FAILED || dataMem == MAP_FAILED) {
    err = std::string("mmap of receive buffers: ") + strerror(errno);
    if (ringMem != MAP_FAILED) munmap(ringMem, impl->bufRingBytes);
    if (dataMem != MAP_FAILED) munmap(dataMem, impl->bufMemBytes);
    return nullptr;  // ~Loop cleans the ring
  }
  impl->bufRing = static_cast<io_uring_buf_ring*>(ringMem);
  impl->bufMem = static_cast<char*>(dataMem);
  io_uring_buf_ring_init(impl->bufRing);
  io_uring_buf_reg reg{};
  reg.ring_addr = reinterpret_cast<uint64_t>(impl->bufRing);
  reg.ring_entries = opts.bufferCount;
  reg.bgid = kBufferGroup;
  rc = io_uring_register_buf_ring(&impl->ring, &reg, 0);
  if (rc < 0) {
    err = std::string("io_uring_register_buf_ring: ") + strerror(-rc);
    return nullptr;
  }
  impl->refs.assign(static_cast<size_t>(opts.bufferCount) + opts.localBufferCount, 0);
  impl->localFree.reserve(opts.localBufferCount);
  for (uint32_t i = opts.localBufferCount; i-- > 0;) {
    impl->localFree.push_back(static_cast<int32_t>(opts.bufferCount + i));
  }
  for (uint32_t i = 0; i < opts.bufferCount; ++i) {
    io_uring_buf_ring_add(impl->bufRing, impl->bufMem + static_cast<size_t>(i) * opts.bufferSize,
                          opts.bufferSize, static_cast<unsigned short>(i),
                          static_cast<int>(impl->bufMask), static_cast<int>(i));
  }
  io_uring_buf_ring_advance(impl->bufRing, static_cast<int>(opts.bufferCount));
  impl->nowNs = monotonicNs();
  return loop;
}

bool Loop::bindToThisThread(std::string& err) {
  if (!impl_->disabled) return true;
  // liburing 2.3 declares io_uring_enable_rings but does not export it.
  long rc = syscall(__NR_io_uring_register, impl_->ring.ring_fd, IORING_REGISTER_ENABLE_RINGS,
                    nullptr, 0);
  if (rc < 0) {
    err = std::string("io_uring_register(ENABLE_RINGS): ") + strerror(errno);
    return false;
  }
  impl_->disabled = false;
  return true;
}

void Loop::acceptMultishot(int listenFd, Completion* c) {
  io_uring_sqe* s = impl_->sqe();
  io_uring_prep_multishot_accept(s, listenFd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
  io_uring_sqe_set_data(s, c);
}

void Loop::recvMultishot(int fd, Completion* c) {
  io_uring_sqe* s = impl_->sqe();
  io_uring_prep_recv_multishot(s, fd, nullptr, 0, 0);
  s->flags |= IOSQE_BUFFER_SELECT;
  s->buf_group = kBufferGroup;
  io_uring_sqe_set_data(s, c);
}

void Loop::send(int fd, const void* data, size_t len, Completion* c) {
  io_uring_sqe* s = impl_->sqe();
  io_uring_prep_send(s, fd, data, len, MSG_NOSIGNAL);
  io_uring_sqe_set_data(s, c);
}

void Loop::sendMsg(int fd, const msghdr* msg, Completion* c) {
  io_uring_sqe* s = impl_->sqe();
  io_uring_prep_sendmsg(s, fd, msg, MSG_NOSIGNAL);
  io_uring_sqe_set_data(s, c);
}

void Loop::connect(int fd, const sockaddr* addr, socklen_t len, Completion* c) {
  io_uring_sqe* s = impl_->sqe();
  io_uring_prep_connect(s, fd, addr, len);
  io_uring_sqe_set_data(s, c);
}

void Loop::cancelFd(int fd, Completion* c) {
  io_uring_sqe* s = impl_->sqe();
  io_uring_prep_cancel_fd(s, fd, IORING_ASYNC_CANCEL_ALL);
  io_uring_sqe_set_data(s, c);
}

void Loop::cancel(Completion* target, Completion* c) {
  io_uring_sqe* s = impl_->sqe();
  io_uring_prep_cancel(s, target, 0);
  io_uring_sqe_set_data(s, c);
}

void Loop::readEventFd(int fd, uint64_t* value, Completion* c) {
  io_uring_sqe* s = impl_->sqe();
  io_uring_prep_read(s, fd, value, sizeof(*value), 0);
  io_uring_sqe_set_data(s, c);
}

void Loop::pollOnce(int fd, uint32_t events, Completion* c) {
  io_uring_sqe* s = impl_->sqe();
  io_uring_prep_poll_add(s, fd, events);
  io_uring_sqe_set_data(s, c);
}

void Loop::splice(int fdIn, int fdOut, uint32_t len, Completion* c) {
  io_uring_sqe* s = impl_->sqe();
  io_uring_prep_splice(s, fdIn, -1, fdOut, -1, len, SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
  io_uring_sqe_set_data(s, c);
}

void Loop::recvMsgMultishot(int fd, const msghdr* msg, Completion* c) {
  io_uring_sqe* s = impl_->sqe();
  // The kernel only reads the template; liburing's prototype is not const.
  io_uring_prep_recvmsg_multishot(s, fd, const_cast<msghdr*>(msg), 0);
  s->flags |= IOSQE_BUFFER_SELECT;
  s->buf_group = kBufferGroup;
  io_uring_sqe_set_data(s, c);
}

bool Loop::parseRecvMsg(const msghdr* msg, const IoEvent& ev, RecvMsgView& out) const {
  if (ev.bufferId < 0 || ev.res < 0) return false;
  char* buf = bufferData(ev.bufferId);
  auto* m = const_cast<msghdr*>(msg);
  io_uring_recvmsg_out* o = io_uring_recvmsg_validate(buf, ev.res, m);
  if (o == nullptr) return false;
  out.name = static_cast<const sockaddr*>(io_uring_recvmsg_name(o));
  out.nameLen = o->namelen < msg->msg_namelen ? o->namelen : msg->msg_namelen;
  out.payload = static_cast<char*>(io_uring_recvmsg_payload(o, m));
  out.payloadLen = io_uring_recvmsg_payload_length(o, ev.res, m);
  out.truncated = (o->flags & MSG_TRUNC) != 0 || o->namelen > msg->msg_namelen;
  return true;
}

char* Loop::bufferData(int32_t bufferId) const {
  return impl_->bufMem + static_cast<size_t>(bufferId) * impl_->bufSize;
}

uint32_t Loop::bufferSize() const { return impl_->bufSize; }

void Loop::retainBuffer(int32_t bufferId) { ++impl_->refs[static_cast<size_t>(bufferId)]; }

void Loop::releaseBuffer(int32_t bufferId) {
  uint16_t& r = impl_->refs[static_cast<size_t>(bufferId)];
  if (r > 1) {
    --r;
    return;
  }
  r = 0;
  if (static_cast<uint32_t>(bufferId) >= impl_->bufCount) {
    impl_->localFree.push_back(bufferId);
    return;
  }
  impl_->recycle(bufferId);
}

int32_t Loop::acquireBuffer() {
  if (impl_->localFree.empty()) {
    ++impl_->stats.localNoBuffers;
    return -1;
  }
  const int32_t id = impl_->localFree.back();
  impl_->localFree.pop_back();
  impl_->refs[static_cast<size_t>(id)] = 1;
  return id;
}

int Loop::runOnce(int timeoutMs) {
  return runOnceNs(timeoutMs <= 0 ? 0 : static_cast<uint64_t>(timeoutMs) * 1000000);
}

int Loop::runOnceNs(uint64_t timeoutNs) {
  Impl& im = *impl_;
  __kernel_timespec ts{};
  ts.tv_sec = static_cast<long long>(timeoutNs / 1000000000);
  ts.tv_nsec = static_cast<long long>(timeoutNs % 1000000000);
  io_uring_cqe* cqe = nullptr;
  ++im.stats.submitCalls;
  int rc = io_uring_submit_and_wait_timeout(&im.ring, &cqe, 1, &ts, nullptr);
  im.nowNs = monotonicNs();
  (void)rc;  // timeouts, signals and errors alike: dispatch whatever is ready
  int seen = 0;
  for (;;) {
    unsigned head;
    unsigned n = 0;
    io_uring_for_each_cqe(&im.ring, head, cqe) {
      ++n;
      auto* c = static_cast<Completion*>(io_uring_cqe_get_data(cqe));
      if (c == nullptr || c->fn == nullptr) continue;
      IoEvent ev;
      ev.res = cqe->res;
      ev.more = (cqe->flags & IORING_CQE_F_MORE) != 0;
      if (cqe->flags & IORING_CQE_F_BUFFER) {
        ev.bufferId = static_cast<int32_t>(cqe->flags >> IORING_CQE_BUFFER_SHIFT);
        im.refs[static_cast<size_t>(ev.bufferId)] = 1;
      } else if (ev.res == -ENOBUFS) {
        ++im.stats.recvNoBuffers;
      }
      c->fn(c, ev);
    }
    io_uring_cq_advance(&im.ring, n);
    seen += static_cast<int>(n);
    if (n == 0) break;
    // Handlers may have queued work whose completions are already due
    // (DEFER_TASKRUN runs task work on enter): loop once more without waiting.
    if (io_uring_cq_ready(&im.ring) == 0) break;
  }
  im.stats.completions += static_cast<uint64_t>(seen);
  return seen;
}

uint64_t Loop::nowMs() const { return impl_->nowNs / 1000000; }
uint64_t Loop::nowNs() const { return impl_->nowNs; }
const LoopStats& Loop::stats() const { return impl_->stats; }

}  // namespace moat::dataplane
