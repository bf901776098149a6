// The L4 socket proxy worker (see sock_proxy.h).
//
// Threading: everything below runs on the worker's thread except create()
// (any thread, before run) and report() (any thread, under reportMu).
//
// TCP flow life: accept -> deny / pick / pool checks -> non-blocking connect
// through the loop (deadline on a FIFO list: every flow has the same
// timeout) -> two directions, each a small state machine with at most one
// operation in flight:
//   poll(src, IN) -> splice(src -> pipe) -> splice(pipe -> dst) [-> poll(dst,
//   OUT) -> splice(pipe -> dst)] -> splice(src -> pipe) ...
// A flow frees its slot only when its in-flight count is zero: closing first
// cancels what waits (polls, connect) and lets the non-blocking splices end.
//
// UDP flow life: first datagram from a client (listener, address, port) ->
// deny / pick -> a connected socket to the backend with a multishot receive
// armed; datagrams go out through a fixed pool of send slots, each holding
// its receive buffer until its send completes. Flows sit on an LRU list
// (head = most recent) that idle expiry and eviction take from the tail.
#include "moat/l4/sock_proxy.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <vector>

#include "moat/dataplane/loop.h"
#include "moat/l4/pick.h"

namespace moat::l4 {

using dataplane::Completion;
using dataplane::IoEvent;
using dataplane::Loop;

namespace {

// Bytes per splice and per pipe: one 64 KiB pipe per direction bounds what
// a flow holds in the kernel between its two sockets.
constexpr uint32_t kPipeBytes = 65536;
constexpr uint32_t kNone = UINT32_MAX;
// Empty pipes kept for reuse, so a warm worker makes no pipe2() per flow.
constexpr size_t kPipeCacheMax = 1024;
// Room in a UDP receive buffer before the payload: io_uring_recvmsg_out
// (16 bytes) and the sender address (sockaddr_in6, 28 bytes), rounded up.
constexpr uint32_t kRecvMsgHeadroom = 64;

union SockAddr {
  sockaddr sa;
  sockaddr_in v4;
  sockaddr_in6 v6;
};

// Closing with SO_LINGER {on, 0} makes the kernel send RST instead of FIN.
void setLingerZero(int fd) {
  linger l{};
  l.l_onoff = 1;
  l.l_linger = 0;
  setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
}

void closeWithReset(int fd) {
  setLingerZero(fd);
  ::close(fd);
}

void setNoDelay(int fd) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

bool sameEndpoint(const Service& s, Protocol proto, const uint8_t* vip, uint8_t ipVersion,
                  uint16_t port) {
  return s.protocol == proto && s.ipVersion == ipVersion && s.port == port &&
         std::memcmp(s.vip, vip, 16) == 0;
}

std::string endpointText(const Service& s) {
  char buf[INET6_ADDRSTRLEN] = {};
  inet_ntop(s.ipVersion == 6 ? AF_INET6 : AF_INET, s.vip, buf, sizeof(buf));
  std::string out = s.protocol == Protocol::kTcp ? "tcp " : "udp ";
  if (s.ipVersion == 6) {
    out.append("[").append(buf).append("]");
  } else {
    out.append(buf);
  }
  return out.append(":").append(std::to_string(s.port));
}

// Opens a listener for `s`. Returns -1 and sets err on failure.
int openListener(const Service& s, std::string& err) {
  const int family = s.listen.ss_family;
  const bool tcp = s.protocol == Protocol::kTcp;
  auto fail = [&](const char* what, int fd) {
    err = endpointText(s) + ": " + what + ": " + std::strerror(errno);
    if (fd >= 0) ::close(fd);
    return -1;
  };
  if (family != AF_INET && family != AF_INET6) {
    errno = EAFNOSUPPORT;
    return fail("listen address", -1);
  }
  int fd = ::socket(family, (tcp ? SOCK_STREAM : SOCK_DGRAM) | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return fail("socket", -1);
  int one = 1;
  if (tcp && setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0) {
    return fail("SO_REUSEADDR", fd);
  }
  if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0) {
    return fail("SO_REUSEPORT", fd);
  }
  if (family == AF_INET6 && setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one)) < 0) {
    return fail("IPV6_V6ONLY", fd);
  }
  if (::bind(fd, reinterpret_cast<const sockaddr*>(&s.listen), s.listenLen) < 0) {
    return fail("bind", fd);
  }
  if (tcp && ::listen(fd, 4096) < 0) return fail("listen", fd);
  return fd;
}

}  // namespace

bool sockFlowKey(const Service& svc, const sockaddr* peer, socklen_t peerLen, FlowKey& out) {
  out = FlowKey{};
  if (peer->sa_family == AF_INET && peerLen >= sizeof(sockaddr_in)) {
    const auto* a = reinterpret_cast<const sockaddr_in*>(peer);
    std::memcpy(out.src, &a->sin_addr, 4);
    out.srcPort = ntohs(a->sin_port);
  } else if (peer->sa_family == AF_INET6 && peerLen >= sizeof(sockaddr_in6)) {
    const auto* a = reinterpret_cast<const sockaddr_in6*>(peer);
    std::memcpy(out.src, &a->sin6_addr, 16);
    out.srcPort = ntohs(a->sin6_port);
  } else {
    return false;
  }
  std::memcpy(out.dst, svc.vip, 16);
  out.dstPort = svc.port;
  out.proto = svc.protocol == Protocol::kTcp ? 6 : 17;
  out.ipVersion = svc.ipVersion;
  return true;
}

// ---------------------------------------------------------------------------

struct Listener {
  SockWorker::Impl* w = nullptr;
  uint32_t index = 0;
  int fd = -1;
  Protocol protocol = Protocol::kTcp;
  uint8_t vip[16] = {};
  uint8_t ipVersion = 4;
  uint16_t port = 0;
  int32_t svc = -1;  // index into the current Tables' services; -1: none
  bool armed = false;
  bool starved = false;  // receive ended on -ENOBUFS / accept on an error: re-armed after the turn
  Completion c;
  msghdr msgTemplate{};  // UDP: what recvMsgMultishot reserves per datagram
};

// One direction of a TCP flow: src socket -> pipe -> dst socket.
struct TcpDir {
  enum class Op : uint8_t { kNone, kPollIn, kSpliceIn, kSpliceOut, kPollOut };
  Completion c;
  int pipeR = -1;
  int pipeW = -1;
  uint32_t inPipe = 0;  // bytes read from src, not yet written to dst
  Op op = Op::kNone;
  bool done = false;  // src reached EOF and dst was shut down for writing
  uint64_t bytes = 0;  // written to dst
};

struct TcpFlow {
  enum class State : uint8_t { kFree, kConnecting, kOpen, kClosing };
  SockWorker::Impl* w = nullptr;
  uint32_t index = 0;
  State state = State::kFree;
  uint8_t inflight = 0;  // operations whose final completion is due
  bool timerLinked = false;
  uint32_t listener = 0;
  uint32_t backendId = 0;
  int client = -1;
  int backend = -1;
  TcpDir up;    // client -> backend
  TcpDir down;  // backend -> client
  Completion connectC;
  uint64_t deadlineMs = 0;
  TcpFlow* timerPrev = nullptr;
  TcpFlow* timerNext = nullptr;
  SockAddr backendSa{};  // the connect target, alive until connect completes
  socklen_t backendSaLen = 0;
};

struct UdpFlow {
  enum class State : uint8_t { kFree, kActive, kClosing };
  SockWorker::Impl* w = nullptr;
  uint32_t index = 0;
  State state = State::kFree;
  bool recvArmed = false;
  bool starved = false;
  uint16_t inflight = 0;  // the receive + sends on fd
  uint32_t listener = 0;
  uint32_t backendId = 0;
  int fd = -1;  // connected to the backend
  uint64_t hash = 0;
  FlowKey key{};
  SockAddr client{};
  socklen_t clientLen = 0;
  uint64_t lastMs = 0;
  uint32_t hashNext = kNone;
  uint32_t lruPrev = kNone;
  uint32_t lruNext = kNone;
  Completion recvC;
};

// A UDP datagram on its way out; holds its receive buffer until the send
// completes.
struct SendSlot {
  SockWorker::Impl* w = nullptr;
  uint32_t index = 0;
  Completion c;
  int32_t buffer = -1;
  uint32_t flow = kNone;  // client -> backend sends: the flow whose fd is used
  bool toClient = false;
  msghdr msg{};
  iovec iov{};
  SockAddr addr{};
};

struct SockWorker::Impl {
  Options opts;
  std::unique_ptr<Loop> loop;
  const Tables* tables = nullptr;
  bool stopping = false;
  uint64_t now = 0;  // loop clock (ms) as of the last runOnce; set once per turn
  uint64_t nextReportMs = 0;
  SockCounters c;

  std::vector<Listener> listeners;  // fixed at create (addresses stay put)

  std::unique_ptr<TcpFlow[]> tcp;
  std::vector<uint32_t> tcpFree;
  TcpFlow* timerHead = nullptr;  // connecting flows, oldest first
  TcpFlow* timerTail = nullptr;
  struct Pipe {
    int r, w;
  };
  std::vector<Pipe> pipeCache;

  std::unique_ptr<UdpFlow[]> udp;
  uint32_t udpSlots = 0;  // maxUdpFlows + room for flows still closing
  std::vector<uint32_t> udpFree;
  std::vector<uint32_t> buckets;  // hash -> first flow index (kNone)
  uint64_t bucketMask = 0;
  uint32_t lruHead = kNone;
  uint32_t lruTail = kNone;
  std::vector<uint32_t> starvedFlows;  // capacity udpSlots: never grows

  std::unique_ptr<SendSlot[]> slots;
  std::vector<uint32_t> slotFree;

  // Per backend id: flows given / still open. Grown at a Tables switch only.
  std::vector<BackendFlowCounters> backendFlows;

  int wakeFd = -1;
  uint64_t wakeValue = 0;
  Completion wakeC;
  Completion ignoreC;  // completions nobody waits for (cancels)

  mutable std::mutex reportMu;
  SockReport published;

  // ---- tables ---------------------------------------------------------------
  void switchTables(const Tables* t) {
    const bool first = tables == nullptr;
    tables = t;
    if (!first) ++c.configSwitches;
    size_t maxId = 0;
    for (const Service& s : t->services) maxId = std::max(maxId, s.slotById.size());
    if (backendFlows.size() < maxId) backendFlows.resize(maxId);
    for (Listener& l : listeners) {
      l.svc = -1;
      for (size_t i = 0; i < t->services.size(); ++i) {
        const Service& s = t->services[i];
        if (s.forwarding == Forwarding::kProxy &&
            sameEndpoint(s, l.protocol, l.vip, l.ipVersion, l.port)) {
          l.svc = static_cast<int32_t>(i);
          break;
        }
      }
    }
    if (first) return;
    // Flows whose backend left the pool or failed: off the per-packet path,
    // once per new Tables; O(pool size).
    if (c.tcpActive > 0) {
      for (uint32_t i = 0; i < opts.maxTcpFlows; ++i) {
        TcpFlow* f = &tcp[i];
        if (f->state != TcpFlow::State::kConnecting && f->state != TcpFlow::State::kOpen) continue;
        const Service* s = serviceOf(f->listener);
        const Backend* b = s != nullptr ? s->backendById(f->backendId) : nullptr;
        if (b != nullptr && b->inService) continue;
        if (s != nullptr && s->onBackendDown == BackendDown::kDrop) {
          ++c.tcpDroppedBackendDown;
          closeTcp(f, false, false);
        } else {
          ++c.tcpResetBackendDown;
          closeTcp(f, true, false);
        }
      }
    }
    if (c.udpFlowsActive > 0) {
      for (uint32_t i = 0; i < udpSlots; ++i) {
        UdpFlow* f = &udp[i];
        if (f->state != UdpFlow::State::kActive) continue;
        const Service* s = serviceOf(f->listener);
        const Backend* b = s != nullptr ? s->backendById(f->backendId) : nullptr;
        if (b != nullptr && b->inService) continue;
        ++c.udpFlowsBackendDown;
        closeUdp(f);
      }
    }
  }

  const Service* serviceOf(uint32_t listener) const {
    const int32_t s = listeners[listener].svc;
    return s < 0 ? nullptr : &tables->services[static_cast<size_t>(s)];
  }

  // True if the client is on a deny list; counts under the matching list.
  bool denied(const sockaddr* peer, uint64_t& cidrCounter, uint64_t& geoCounter) {
    if (tables->denyCidrs.empty() && tables->denyGeo.empty()) return false;
    IpAddress ip;
    if (peer->sa_family == AF_INET) {
      ip = IpAddress::fromBytes(
          reinterpret_cast<const uint8_t*>(&reinterpret_cast<const sockaddr_in*>(peer)->sin_addr),
          4);
    } else {
      ip = IpAddress::fromBytes(
          reinterpret_cast<const uint8_t*>(&reinterpret_cast<const sockaddr_in6*>(peer)->sin6_addr),
          16);
    }
    if (!tables->denyCidrs.empty() && tables->denyCidrs.contains(ip)) {
      ++cidrCounter;
      return true;
    }
    if (!tables->denyGeo.empty() && tables->denyGeo.contains(ip)) {
      ++geoCounter;
      return true;
    }
    return false;
  }

  void flowStarted(uint32_t backendId) {
    BackendFlowCounters& b = backendFlows[backendId];
    ++b.flows;
    ++b.active;
  }
  void flowEnded(uint32_t backendId) {
    if (backendId < backendFlows.size() && backendFlows[backendId].active > 0) {
      --backendFlows[backendId].active;
    }
  }

  // ---- TCP ------------------------------------------------------------------
  static void onAccept(Completion* comp, const IoEvent& ev) {
    auto* l = static_cast<Listener*>(comp->owner);
    Impl* w = l->w;
    if (!ev.more) l->armed = false;
    if (ev.res >= 0) {
      w->newTcp(*l, ev.res);
    } else if (ev.res != -ECANCELED && !w->stopping) {
      ++w->c.tcpAcceptErrors;
    }
    if (!l->armed && !w->stopping && l->fd >= 0) {
      if (ev.res < 0) {
        l->starved = true;  // e.g. EMFILE: retry after the turn, not in a tight loop
      } else {
        w->armAccept(*l);
      }
    }
  }

  void armAccept(Listener& l) {
    l.armed = true;
    l.starved = false;
    loop->acceptMultishot(l.fd, &l.c);
  }

  bool takePipe(TcpDir& d) {
    if (!pipeCache.empty()) {
      d.pipeR = pipeCache.back().r;
      d.pipeW = pipeCache.back().w;
      pipeCache.pop_back();
      return true;
    }
    int p[2];
    if (::pipe2(p, O_NONBLOCK | O_CLOEXEC) < 0) return false;
    // 64 KiB is the usual default; ask anyway (fails harmlessly when the
    // user is over pipe-user-pages-soft: the pipe keeps its size).
    (void)fcntl(p[1], F_SETPIPE_SZ, static_cast<int>(kPipeBytes));
    d.pipeR = p[0];
    d.pipeW = p[1];
    return true;
  }

  void givePipe(TcpDir& d) {
    if (d.pipeR < 0) return;
    if (d.inPipe == 0 && pipeCache.size() < kPipeCacheMax) {
      pipeCache.push_back({d.pipeR, d.pipeW});
    } else {
      ::close(d.pipeR);
      ::close(d.pipeW);
    }
    d.pipeR = d.pipeW = -1;
  }

  void newTcp(Listener& l, int fd) {
    ++c.tcpAccepted;
    if (stopping) {
      ::close(fd);
      return;
    }
    SockAddr peer{};
    socklen_t peerLen = sizeof(peer);
    const Service* svc = serviceOf(l.index);
    FlowKey key;
    if (::getpeername(fd, &peer.sa, &peerLen) < 0 || svc == nullptr ||
        !sockFlowKey(*svc, &peer.sa, peerLen, key)) {
      // Client already gone, or the service left the Tables.
      if (svc == nullptr) {
        ++c.tcpNoBackend;
      } else {
        ++c.tcpErrors;
      }
      closeWithReset(fd);
      return;
    }
    if (denied(&peer.sa, c.tcpDeniedCidr, c.tcpDeniedGeo)) {
      ::close(fd);
      return;
    }
    const Backend* b = pickBackend(*svc, key);
    if (b == nullptr) {
      ++c.tcpNoBackend;
      closeWithReset(fd);
      return;
    }
    if (tcpFree.empty()) {
      ++c.tcpPoolFull;
      closeWithReset(fd);
      return;
    }
    TcpFlow* f = &tcp[tcpFree.back()];
    f->up = TcpDir{};
    f->down = TcpDir{};
    f->up.c = {&Impl::onUpEvent, f};
    f->down.c = {&Impl::onDownEvent, f};
    if (!takePipe(f->up) || !takePipe(f->down) || b->saLen > sizeof(SockAddr) ||
        (f->backend = ::socket(b->sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)) <
            0) {
      ++c.tcpErrors;  // out of fds (or a malformed backend address)
      givePipe(f->up);
      givePipe(f->down);
      f->backend = -1;
      closeWithReset(fd);
      return;
    }
    tcpFree.pop_back();
    ++c.tcpActive;
    f->client = fd;
    f->listener = l.index;
    f->backendId = b->id;
    flowStarted(b->id);
    setNoDelay(fd);
    setNoDelay(f->backend);
    std::memcpy(&f->backendSa, &b->sa, b->saLen);
    f->backendSaLen = b->saLen;
    f->state = TcpFlow::State::kConnecting;
    f->deadlineMs = loop->nowMs() + opts.connectTimeoutMs;
    timerLink(f);
    ++f->inflight;
    loop->connect(f->backend, &f->backendSa.sa, f->backendSaLen, &f->connectC);
  }

  void timerLink(TcpFlow* f) {
    f->timerPrev = timerTail;
    f->timerNext = nullptr;
    if (timerTail != nullptr) {
      timerTail->timerNext = f;
    } else {
      timerHead = f;
    }
    timerTail = f;
    f->timerLinked = true;
  }

  void timerUnlink(TcpFlow* f) {
    if (!f->timerLinked) return;
    if (f->timerPrev != nullptr) {
      f->timerPrev->timerNext = f->timerNext;
    } else {
      timerHead = f->timerNext;
    }
    if (f->timerNext != nullptr) {
      f->timerNext->timerPrev = f->timerPrev;
    } else {
      timerTail = f->timerPrev;
    }
    f->timerPrev = f->timerNext = nullptr;
    f->timerLinked = false;
  }

  static void onConnect(Completion* comp, const IoEvent& ev) {
    auto* f = static_cast<TcpFlow*>(comp->owner);
    Impl* w = f->w;
    --f->inflight;
    if (f->state == TcpFlow::State::kClosing) {
      if (f->inflight == 0) w->finishTcp(f);
      return;
    }
    w->timerUnlink(f);
    if (ev.res < 0) {
      ++w->c.tcpConnectErrors;
      w->closeTcp(f, true, false);
      return;
    }
    f->state = TcpFlow::State::kOpen;
    w->pollIn(f, f->up, f->client);
    w->pollIn(f, f->down, f->backend);
  }

  void pollIn(TcpFlow* f, TcpDir& d, int src) {
    d.op = TcpDir::Op::kPollIn;
    ++f->inflight;
    loop->pollOnce(src, POLLIN, &d.c);
  }
  void spliceIn(TcpFlow* f, TcpDir& d, int src) {
    d.op = TcpDir::Op::kSpliceIn;
    ++f->inflight;
    loop->splice(src, d.pipeW, kPipeBytes, &d.c);
  }
  void spliceOut(TcpFlow* f, TcpDir& d, int dst) {
    d.op = TcpDir::Op::kSpliceOut;
    ++f->inflight;
    loop->splice(d.pipeR, dst, d.inPipe, &d.c);
  }
  void pollOut(TcpFlow* f, TcpDir& d, int dst) {
    d.op = TcpDir::Op::kPollOut;
    ++f->inflight;
    loop->pollOnce(dst, POLLOUT, &d.c);
  }

  static void onUpEvent(Completion* comp, const IoEvent& ev) {
    auto* f = static_cast<TcpFlow*>(comp->owner);
    f->w->onDirEvent(f, f->up, f->down, f->client, f->backend, ev);
  }
  static void onDownEvent(Completion* comp, const IoEvent& ev) {
    auto* f = static_cast<TcpFlow*>(comp->owner);
    f->w->onDirEvent(f, f->down, f->up, f->backend, f->client, ev);
  }

  void onDirEvent(TcpFlow* f, TcpDir& d, TcpDir& other, int src, int dst, const IoEvent& ev) {
    --f->inflight;
    const TcpDir::Op op = d.op;
    d.op = TcpDir::Op::kNone;
    if (f->state == TcpFlow::State::kClosing) {
      if (op == TcpDir::Op::kSpliceIn && ev.res > 0) d.inPipe = static_cast<uint32_t>(ev.res);
      if (f->inflight == 0) finishTcp(f);
      return;
    }
    switch (op) {
      case TcpDir::Op::kPollIn:
        if (ev.res < 0) return tcpFailed(f);
        return spliceIn(f, d, src);
      case TcpDir::Op::kSpliceIn:
        if (ev.res == -EAGAIN) return pollIn(f, d, src);
        if (ev.res < 0) return tcpFailed(f);
        if (ev.res == 0) {
          // EOF from src: pass the FIN on and keep the other direction.
          d.done = true;
          ::shutdown(dst, SHUT_WR);
          if (other.done) return closeTcp(f, false, false);
          ++c.tcpHalfCloses;
          return;
        }
        d.inPipe = static_cast<uint32_t>(ev.res);
        return spliceOut(f, d, dst);
      case TcpDir::Op::kSpliceOut:
        if (ev.res == -EAGAIN) return pollOut(f, d, dst);
        if (ev.res <= 0) return tcpFailed(f);
        d.inPipe -= static_cast<uint32_t>(ev.res);
        d.bytes += static_cast<uint64_t>(ev.res);
        if (d.inPipe > 0) return spliceOut(f, d, dst);
        // Bulk transfers usually have more queued: read again before
        // paying for a poll (an -EAGAIN falls back to polling).
        return spliceIn(f, d, src);
      case TcpDir::Op::kPollOut:
        if (ev.res < 0) return tcpFailed(f);
        return spliceOut(f, d, dst);
      case TcpDir::Op::kNone:
        return;
    }
  }

  // A socket error (reset, broken pipe) on either side: reset both.
  void tcpFailed(TcpFlow* f) {
    ++c.tcpErrors;
    closeTcp(f, true, true);
  }

  void closeTcp(TcpFlow* f, bool resetClient, bool resetBackend) {
    if (f->state == TcpFlow::State::kClosing || f->state == TcpFlow::State::kFree) return;
    f->state = TcpFlow::State::kClosing;
    timerUnlink(f);
    if (resetClient) setLingerZero(f->client);
    if (resetBackend) setLingerZero(f->backend);
    if (f->inflight == 0) return finishTcp(f);
    // Polls and connects wait for ever: cancel them. Splices are
    // non-blocking and end on their own.
    loop->cancelFd(f->client, &ignoreC);
    loop->cancelFd(f->backend, &ignoreC);
  }

  void finishTcp(TcpFlow* f) {
    ::close(f->client);
    ::close(f->backend);
    f->client = f->backend = -1;
    givePipe(f->up);
    givePipe(f->down);
    c.bytesClientToBackend += f->up.bytes;
    c.bytesBackendToClient += f->down.bytes;
    flowEnded(f->backendId);
    f->state = TcpFlow::State::kFree;
    --c.tcpActive;
    tcpFree.push_back(f->index);
  }

  void expireConnects() {
    while (timerHead != nullptr && timerHead->deadlineMs <= now) {
      ++c.tcpConnectTimeouts;
      closeTcp(timerHead, true, false);  // unlinks it
    }
  }

  // ---- UDP ------------------------------------------------------------------
  void armListenerRecv(Listener& l) {
    l.armed = true;
    l.starved = false;
    loop->recvMsgMultishot(l.fd, &l.msgTemplate, &l.c);
  }

  static void onListenerRecv(Completion* comp, const IoEvent& ev) {
    auto* l = static_cast<Listener*>(comp->owner);
    Impl* w = l->w;
    if (!ev.more) l->armed = false;
    if (ev.bufferId >= 0) w->onDatagram(*l, ev);
    if (!l->armed && !w->stopping) {
      if (ev.res == -ENOBUFS) {
        l->starved = true;  // buffers come back as sends complete
      } else {
        w->armListenerRecv(*l);
      }
    }
  }

  UdpFlow* findUdp(uint64_t hash, const FlowKey& key) {
    for (uint32_t i = buckets[hash & bucketMask]; i != kNone; i = udp[i].hashNext) {
      UdpFlow* f = &udp[i];
      if (f->hash == hash && f->key == key) return f;
    }
    return nullptr;
  }

  void lruUnlink(UdpFlow* f) {
    if (f->lruPrev != kNone) {
      udp[f->lruPrev].lruNext = f->lruNext;
    } else {
      lruHead = f->lruNext;
    }
    if (f->lruNext != kNone) {
      udp[f->lruNext].lruPrev = f->lruPrev;
    } else {
      lruTail = f->lruPrev;
    }
    f->lruPrev = f->lruNext = kNone;
  }

  void lruPushFront(UdpFlow* f) {
    f->lruPrev = kNone;
    f->lruNext = lruHead;
    if (lruHead != kNone) {
      udp[lruHead].lruPrev = f->index;
    } else {
      lruTail = f->index;
    }
    lruHead = f->index;
  }

  void touch(UdpFlow* f) {
    f->lastMs = loop->nowMs();
    if (lruHead == f->index) return;
    lruUnlink(f);
    lruPushFront(f);
  }

  void onDatagram(Listener& l, const IoEvent& ev) {
    dataplane::RecvMsgView v;
    if (stopping || !loop->parseRecvMsg(&l.msgTemplate, ev, v)) {
      loop->releaseBuffer(ev.bufferId);
      return;
    }
    ++c.udpDatagramsIn;
    const Service* svc = serviceOf(l.index);
    FlowKey key;
    if (v.truncated || v.payloadLen > opts.udpMaxDatagram) {
      ++c.udpTruncated;
    } else if (svc == nullptr) {
      ++c.udpNoBackend;
    } else if (sockFlowKey(*svc, v.name, v.nameLen, key)) {
      const uint64_t hash = hashFlow(key);
      UdpFlow* f = findUdp(hash, key);
      if (f == nullptr) f = newUdp(l, *svc, key, hash, v);
      if (f != nullptr) {
        touch(f);
        SendSlot* s = takeSlot();
        if (s == nullptr) {
          ++c.udpSendErrors;
        } else {
          s->buffer = ev.bufferId;
          s->flow = f->index;
          s->toClient = false;
          ++f->inflight;
          loop->send(f->fd, v.payload, v.payloadLen, &s->c);
          return;  // the slot releases the buffer
        }
      }
    }
    loop->releaseBuffer(ev.bufferId);
  }

  UdpFlow* newUdp(Listener& l, const Service& svc, const FlowKey& key, uint64_t hash,
                  const dataplane::RecvMsgView& v) {
    if (denied(v.name, c.udpDenied, c.udpDenied)) return nullptr;
    const Backend* b = pickBackendByHash(svc, hash);
    if (b == nullptr) {
      ++c.udpNoBackend;
      return nullptr;
    }
    if (c.udpFlowsActive >= opts.maxUdpFlows && lruTail != kNone) {
      ++c.udpFlowsEvicted;
      closeUdp(&udp[lruTail]);
    }
    if (udpFree.empty()) {
      ++c.udpPoolFull;
      return nullptr;
    }
    if (b->saLen > sizeof(SockAddr) || v.nameLen > sizeof(SockAddr)) {
      ++c.udpSendErrors;
      return nullptr;
    }
    int fd = ::socket(b->sa.ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    // Connecting a UDP socket only sets its peer: it does not block.
    if (fd < 0 || ::connect(fd, reinterpret_cast<const sockaddr*>(&b->sa), b->saLen) < 0) {
      ++c.udpSendErrors;
      if (fd >= 0) ::close(fd);
      return nullptr;
    }
    UdpFlow* f = &udp[udpFree.back()];
    udpFree.pop_back();
    f->state = UdpFlow::State::kActive;
    f->fd = fd;
    f->listener = l.index;
    f->backendId = b->id;
    f->hash = hash;
    f->key = key;
    std::memcpy(&f->client, v.name, v.nameLen);
    f->clientLen = v.nameLen;
    f->lastMs = loop->nowMs();
    f->hashNext = buckets[hash & bucketMask];
    buckets[hash & bucketMask] = f->index;
    lruPushFront(f);
    f->starved = false;
    ++c.udpFlowsCreated;
    ++c.udpFlowsActive;
    flowStarted(b->id);
    armFlowRecv(f);
    return f;
  }

  void armFlowRecv(UdpFlow* f) {
    f->recvArmed = true;
    ++f->inflight;
    loop->recvMultishot(f->fd, &f->recvC);
  }

  static void onFlowRecv(Completion* comp, const IoEvent& ev) {
    auto* f = static_cast<UdpFlow*>(comp->owner);
    Impl* w = f->w;
    if (!ev.more) {
      f->recvArmed = false;
      --f->inflight;
    }
    if (f->state != UdpFlow::State::kActive) {
      if (ev.bufferId >= 0) w->loop->releaseBuffer(ev.bufferId);
      if (f->inflight == 0 && f->state == UdpFlow::State::kClosing) w->finishUdp(f);
      return;
    }
    if (ev.bufferId >= 0) {
      w->replyToClient(f, ev);
    } else if (ev.res < 0 && ev.res != -ENOBUFS && ev.res != -ECANCELED) {
      ++w->c.udpBackendErrors;  // e.g. ICMP port unreachable: the flow stays
    }
    if (!f->recvArmed && !w->stopping) {
      if (ev.res == -ENOBUFS) {
        if (!f->starved) {
          f->starved = true;
          w->starvedFlows.push_back(f->index);  // capacity udpSlots: no allocation
        }
      } else {
        w->armFlowRecv(f);
      }
    }
  }

  void replyToClient(UdpFlow* f, const IoEvent& ev) {
    const uint32_t len = static_cast<uint32_t>(ev.res);
    if (len > opts.udpMaxDatagram) {
      ++c.udpTruncated;
      loop->releaseBuffer(ev.bufferId);
      return;
    }
    SendSlot* s = takeSlot();
    if (s == nullptr) {
      ++c.udpSendErrors;
      loop->releaseBuffer(ev.bufferId);
      return;
    }
    touch(f);
    s->buffer = ev.bufferId;
    s->flow = kNone;  // the listener outlives every send
    s->toClient = true;
    std::memcpy(&s->addr, &f->client, f->clientLen);
    s->iov.iov_base = loop->bufferData(ev.bufferId);
    s->iov.iov_len = len;
    s->msg = msghdr{};
    s->msg.msg_name = &s->addr;
    s->msg.msg_namelen = f->clientLen;
    s->msg.msg_iov = &s->iov;
    s->msg.msg_iovlen = 1;
    loop->sendMsg(listeners[f->listener].fd, &s->msg, &s->c);
  }

  SendSlot* takeSlot() {
    if (slotFree.empty()) return nullptr;
    SendSlot* s = &slots[slotFree.back()];
    slotFree.pop_back();
    return s;
  }

  static void onSendDone(Completion* comp, const IoEvent& ev) {
    auto* s = static_cast<SendSlot*>(comp->owner);
    Impl* w = s->w;
    w->loop->releaseBuffer(s->buffer);
    s->buffer = -1;
    if (ev.res < 0) {
      ++w->c.udpSendErrors;
    } else if (s->toClient) {
      ++w->c.udpDatagramsOut;
      w->c.bytesBackendToClient += static_cast<uint64_t>(ev.res);
    } else {
      w->c.bytesClientToBackend += static_cast<uint64_t>(ev.res);
    }
    if (s->flow != kNone) {
      UdpFlow* f = &w->udp[s->flow];
      --f->inflight;
      if (f->inflight == 0 && f->state == UdpFlow::State::kClosing) w->finishUdp(f);
      s->flow = kNone;
    }
    w->slotFree.push_back(s->index);
  }

  // Leaves the table at once (a new datagram from the client makes a new
  // flow); the slot is reusable when the last operation on fd has ended.
  void closeUdp(UdpFlow* f) {
    if (f->state != UdpFlow::State::kActive) return;
    f->state = UdpFlow::State::kClosing;
    uint32_t* p = &buckets[f->hash & bucketMask];
    while (*p != f->index) p = &udp[*p].hashNext;
    *p = f->hashNext;
    f->hashNext = kNone;
    lruUnlink(f);
    --c.udpFlowsActive;
    flowEnded(f->backendId);
    if (f->inflight == 0) return finishUdp(f);
    loop->cancelFd(f->fd, &ignoreC);
  }

  void finishUdp(UdpFlow* f) {
    ::close(f->fd);
    f->fd = -1;
    f->state = UdpFlow::State::kFree;
    udpFree.push_back(f->index);
  }

  void expireUdp() {
    while (lruTail != kNone && udp[lruTail].lastMs + opts.udpIdleMs <= now) {
      ++c.udpFlowsExpired;
      closeUdp(&udp[lruTail]);
    }
  }

  void rearmStarved() {
    for (Listener& l : listeners) {
      if (!l.starved || l.armed || stopping || l.fd < 0) continue;
      if (l.protocol == Protocol::kTcp) {
        armAccept(l);
      } else {
        armListenerRecv(l);
      }
    }
    for (uint32_t i : starvedFlows) {
      UdpFlow* f = &udp[i];
      const bool was = f->starved;
      f->starved = false;
      if (was && f->state == UdpFlow::State::kActive && !f->recvArmed && !stopping) {
        armFlowRecv(f);
      }
    }
    starvedFlows.clear();
  }

  // ---- loop -----------------------------------------------------------------
  static void onWake(Completion* comp, const IoEvent&) {
    auto* w = static_cast<Impl*>(comp->owner);
    if (w->wakeFd >= 0) w->loop->readEventFd(w->wakeFd, &w->wakeValue, &w->wakeC);
  }
  static void onIgnore(Completion*, const IoEvent&) {}

  void publishReport() {
    std::lock_guard<std::mutex> lock(reportMu);
    c.loopWaits = loop->stats().submitCalls;
    c.loopCompletions = loop->stats().completions;
    c.recvNoBuffers = loop->stats().recvNoBuffers;
    published.counters = c;
    published.backends.clear();
    if (tables == nullptr) return;
    for (const Service& s : tables->services) {
      for (const Backend& b : s.backends) {
        if (b.id < backendFlows.size()) published.backends[b.key] = backendFlows[b.id];
      }
    }
  }

  void turn(int timeoutMs) {
    const Tables* t = opts.acquire();
    const bool switched = t != tables;
    if (switched) switchTables(t);
    loop->runOnce(timeoutMs);
    now = loop->nowMs();
    expireConnects();
    expireUdp();
    rearmStarved();
    // A switch publishes at once: operators (and tests) can see when the
    // worker has taken new Tables.
    if (switched || now >= nextReportMs) {
      nextReportMs = now + 1000;
      publishReport();
    }
  }

  bool busy() const {
    if (c.tcpActive > 0 || udpFree.size() != udpSlots || slotFree.size() != opts.udpSendSlots) {
      return true;
    }
    for (const Listener& l : listeners) {
      if (l.armed) return true;
    }
    return false;
  }
};

// ---------------------------------------------------------------------------

SockWorker::SockWorker(Impl* impl) : impl_(impl) {}

SockWorker::~SockWorker() {
  if (impl_ == nullptr) return;
  Impl& im = *impl_;
  // The ring goes first (it cancels whatever is still in flight), then the
  // descriptors and objects its operations pointed at.
  im.loop.reset();
  for (Listener& l : im.listeners) {
    if (l.fd >= 0) ::close(l.fd);
  }
  if (im.tcp) {
    for (uint32_t i = 0; i < im.opts.maxTcpFlows; ++i) {
      TcpFlow& f = im.tcp[i];
      if (f.state == TcpFlow::State::kFree) continue;
      if (f.client >= 0) ::close(f.client);
      if (f.backend >= 0) ::close(f.backend);
      for (TcpDir* d : {&f.up, &f.down}) {
        if (d->pipeR >= 0) ::close(d->pipeR);
        if (d->pipeW >= 0) ::close(d->pipeW);
      }
    }
  }
  if (im.udp) {
    for (uint32_t i = 0; i < im.udpSlots; ++i) {
      if (im.udp[i].fd >= 0) ::close(im.udp[i].fd);
    }
  }
  for (auto& p : im.pipeCache) {
    ::close(p.r);
    ::close(p.w);
  }
  if (im.wakeFd >= 0) ::close(im.wakeFd);
  delete impl_;
}

std::unique_ptr<SockWorker> SockWorker::create(const Options& opts, std::string& err) {
  if (!opts.acquire || opts.stop == nullptr) {
    err = "SockWorker: acquire and stop are required";
    return nullptr;
  }
  if (opts.maxTcpFlows == 0 || opts.maxUdpFlows == 0 || opts.udpSendSlots == 0) {
    err = "SockWorker: maxTcpFlows, maxUdpFlows and udpSendSlots must be > 0";
    return nullptr;
  }
  auto* impl = new Impl();
  std::unique_ptr<SockWorker> w(new SockWorker(impl));
  Impl& im = *impl;
  im.opts = opts;

  dataplane::LoopOptions lo;
  lo.bufferCount = opts.udpBuffers;
  lo.bufferSize = opts.udpMaxDatagram + kRecvMsgHeadroom;
  lo.localBufferCount = 0;  // TCP splices; UDP forwards received buffers as they are
  im.loop = Loop::create(lo, err);
  if (!im.loop) return nullptr;

  const Tables* t = opts.acquire();
  im.listeners.reserve(t->services.size());
  for (const Service& s : t->services) {
    if (s.forwarding != Forwarding::kProxy) continue;
    bool dup = false;
    for (const Listener& l : im.listeners) {
      dup |= sameEndpoint(s, l.protocol, l.vip, l.ipVersion, l.port);
    }
    if (dup) continue;
    Listener& l = im.listeners.emplace_back();
    l.w = impl;
    l.index = static_cast<uint32_t>(im.listeners.size() - 1);
    l.protocol = s.protocol;
    std::memcpy(l.vip, s.vip, 16);
    l.ipVersion = s.ipVersion;
    l.port = s.port;
    l.fd = openListener(s, err);
    if (l.fd < 0) return nullptr;
    if (s.protocol == Protocol::kTcp) {
      l.c = {&Impl::onAccept, &l};
    } else {
      l.c = {&Impl::onListenerRecv, &l};
      l.msgTemplate.msg_namelen = sizeof(sockaddr_in6);
      l.msgTemplate.msg_controllen = 0;
    }
  }
  im.switchTables(t);

  im.tcp.reset(new TcpFlow[opts.maxTcpFlows]);
  im.tcpFree.reserve(opts.maxTcpFlows);
  for (uint32_t i = opts.maxTcpFlows; i-- > 0;) {
    TcpFlow& f = im.tcp[i];
    f.w = impl;
    f.index = i;
    f.connectC = {&Impl::onConnect, &f};
    im.tcpFree.push_back(i);
  }
  im.pipeCache.reserve(kPipeCacheMax);

  // Closing flows keep their slot until their operations end: an eighth
  // more slots lets eviction start a new flow at once.
  im.udpSlots = opts.maxUdpFlows + opts.maxUdpFlows / 8 + 16;
  im.udp.reset(new UdpFlow[im.udpSlots]);
  im.udpFree.reserve(im.udpSlots);
  for (uint32_t i = im.udpSlots; i-- > 0;) {
    UdpFlow& f = im.udp[i];
    f.w = impl;
    f.index = i;
    f.recvC = {&Impl::onFlowRecv, &f};
    im.udpFree.push_back(i);
  }
  size_t nb = 1;
  while (nb < static_cast<size_t>(im.udpSlots) * 2) nb <<= 1;
  im.buckets.assign(nb, kNone);
  im.bucketMask = nb - 1;
  im.starvedFlows.reserve(im.udpSlots);

  im.slots.reset(new SendSlot[opts.udpSendSlots]);
  im.slotFree.reserve(opts.udpSendSlots);
  for (uint32_t i = opts.udpSendSlots; i-- > 0;) {
    SendSlot& s = im.slots[i];
    s.w = impl;
    s.index = i;
    s.c = {&Impl::onSendDone, &s};
    im.slotFree.push_back(i);
  }

  im.ignoreC = {&Impl::onIgnore, nullptr};
  im.wakeC = {&Impl::onWake, impl};
  im.wakeFd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (im.wakeFd < 0) {
    err = std::string("eventfd: ") + std::strerror(errno);
    return nullptr;
  }
  if (opts.registerWakeFd) opts.registerWakeFd(im.wakeFd);
  im.now = im.loop->nowMs();
  im.publishReport();
  return w;
}

void SockWorker::run(uint32_t drainMs) {
  Impl& im = *impl_;
  std::string err;
  if (!im.loop->bindToThisThread(err)) {
    std::fprintf(stderr, "moatd: l4 worker %zu: %s\n", im.opts.index, err.c_str());
    std::abort();
  }
  im.loop->readEventFd(im.wakeFd, &im.wakeValue, &im.wakeC);
  for (Listener& l : im.listeners) {
    if (l.protocol == Protocol::kTcp) {
      im.armAccept(l);
    } else {
      im.armListenerRecv(l);
    }
  }
  while (!im.opts.stop->load(std::memory_order_relaxed)) im.turn(100);

  // Drain: leave the SO_REUSEPORT groups (other workers keep serving), end
  // the UDP flows (their replies would need the closed listener), let TCP
  // flows finish.
  im.stopping = true;
  for (Listener& l : im.listeners) {
    if (l.protocol == Protocol::kTcp) ::shutdown(l.fd, SHUT_RDWR);
    if (l.armed) im.loop->cancelFd(l.fd, &im.ignoreC);
  }
  for (uint32_t i = 0; i < im.udpSlots; ++i) im.closeUdp(&im.udp[i]);
  const uint64_t deadline = im.now + drainMs;
  while (im.c.tcpActive > 0 && im.now < deadline) im.turn(20);
  for (uint32_t i = 0; i < im.opts.maxTcpFlows; ++i) im.closeTcp(&im.tcp[i], true, true);
  // Every operation still in flight ends quickly now (cancelled or
  // non-blocking); bounded anyway.
  for (int i = 0; i < 200 && im.busy(); ++i) im.turn(10);
  for (Listener& l : im.listeners) {
    if (l.fd >= 0 && !l.armed) {
      ::close(l.fd);
      l.fd = -1;
    }
  }
  if (im.opts.registerWakeFd) im.opts.registerWakeFd(-1);
  im.publishReport();
}

SockReport SockWorker::report() const {
  std::lock_guard<std::mutex> lock(impl_->reportMu);
  return impl_->published;
}

size_t SockWorker::listenerCount() const { return impl_->listeners.size(); }

}  // namespace moat::l4
