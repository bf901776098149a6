// HTTP/1.1 reverse proxy worker on the socket engine.
//
// Threading: everything in this file runs on the worker's own thread, except
// Worker::report() (mutex-protected copy) and the SnapshotPublisher calls.
//
// Data flow: bytes arrive in the loop's provided buffers (RecvChunk). A
// request or response head is parsed in place when it sits in one buffer
// (the common case) and from a per-connection assembly string otherwise; the
// rewritten head goes out from a per-connection string; body bytes are
// forwarded straight from the receive buffers (Segment holds a buffer
// reference) and never copied or fully buffered. A connection's receive is
// paused (its multishot receive cancelled) when its peer's send queue or its
// own unparsed queue grows past a few buffers: that is the back-pressure.
//
// TLS (https listeners, pools with tls): the Endpoint carries a TlsConn.
// Ciphertext received into a provided buffer is fed to OpenSSL and the buffer
// released at once; the plaintext lands in local loop buffers (acquireBuffer)
// that the receive queue holds exactly as it holds provided ones, so the
// parser and the body forwarding do not know about TLS. On the send side the
// plaintext queue (sq) is encrypted into a ciphertext queue (cq) of local
// buffers that the socket sends; sq keeps its back-pressure role because only
// a few buffers of ciphertext are produced ahead of the socket.
//
// Lifetime: a connection object is freed (returned to the worker's free list)
// only when it is closed and none of its io_uring operations is in flight
// (Endpoint::inflight == 0).
#include "moat/l7/proxy.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <strings.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <boost/intrusive/list.hpp>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <algorithm>
#include <random>
#include <unordered_map>

#include "access_log.h"
#include "moat/control/geo.h"
#include "moat/waf/engine.h"
#include "moat/dataplane/loop.h"
#include "moat/l4/cidr.h"
#include "moat/l4/maglev.h"
#include "moat/ratelimit/rules.h"
#include "moat/l7/http_parser.h"
#include "moat/l7/proxy_protocol.h"
#include "tls_conn.h"

namespace moat::l7 {

namespace bi = boost::intrusive;
using dataplane::Completion;
using dataplane::IoEvent;
using dataplane::Loop;

namespace {

// A receive queue holding more buffers than this pauses receiving: the
// consumer (parser or the peer's send) is behind.
constexpr size_t kMaxHeldBuffers = 8;
// A send queue longer than this pauses the producer's receive.
constexpr size_t kMaxQueuedSegments = 16;
constexpr size_t kMaxIov = 16;
// Ciphertext buffers produced ahead of the socket (TLS endpoints).
constexpr size_t kMaxCipherSegments = 4;

// FIFO with power-of-two capacity. Grows (allocates) only past its
// high-water mark; objects are pooled, so steady state allocates nothing.
template <class T>
class RingQueue {
 public:
  bool empty() const { return head_ == tail_; }
  size_t size() const { return tail_ - head_; }
  T& front() { return buf_[head_ & mask_]; }
  T& at(size_t i) { return buf_[(head_ + i) & mask_]; }
  void push(const T& v) {
    if (size() == cap_) grow();
    buf_[tail_++ & mask_] = v;
  }
  void pop() { ++head_; }
  void clear() { head_ = tail_ = 0; }

 private:
  void grow() {
    size_t ncap = cap_ == 0 ? 8 : cap_ * 2;
    auto nb = std::make_unique<T[]>(ncap);
    size_t n = size();
    for (size_t i = 0; i < n; ++i) nb[i] = at(i);
    buf_ = std::move(nb);
    cap_ = ncap;
    mask_ = ncap - 1;
    head_ = 0;
    tail_ = n;
  }
  std::unique_ptr<T[]> buf_;
  size_t cap_ = 0, mask_ = 0, head_ = 0, tail_ = 0;
};

struct RecvChunk {
  int32_t bid;
  uint32_t off;
  uint32_t len;
};

// Bytes to send: either a slice of a provided receive buffer (bid >= 0,
// released after the send) or of a string owned by the connection.
struct Segment {
  const char* data;
  uint32_t len;
  int32_t bid;
};

enum class TimerKind : uint8_t {
  kNone,
  kClientIdle,
  kClientHeader,
  kClientBody,
  kUpstreamConnect,
  kUpstreamResponse,
  kUpstreamIdle,
  kCount
};

using AutoHook = bi::list_member_hook<bi::link_mode<bi::auto_unlink>>;

struct Endpoint {
  int fd = -1;
  Completion recvC, sendC, auxC;
  bool recvArmed = false;
  bool cancelPending = false;
  bool paused = false;
  bool sendInFlight = false;
  bool eof = false;
  uint32_t sentOff = 0;
  uint32_t iovSegments = 0;
  RingQueue<RecvChunk> rq;
  RingQueue<Segment> sq;
  int inflight = 0;
  // TLS only: the session, the ciphertext queue the socket sends (sentOff
  // then applies to cq, plainOff to sq), and whether close_notify is queued.
  std::unique_ptr<TlsConn> tls;
  RingQueue<Segment> cq;
  uint32_t plainOff = 0;
  bool tlsShut = false;
  bool tlsFailed = false;  // fatal TLS error: the owner closes the connection
  bool tlsStarved = false;  // plaintext left in the session: no local buffer was free
  iovec iov[kMaxIov];
  msghdr msg{};
};

struct BackendState;
struct UpstreamConn;

struct ClientConn {
  Worker::Impl* w = nullptr;
  Endpoint ep;
  AutoHook timerHook;
  uint64_t deadline = 0;
  TimerKind timer = TimerKind::kNone;
  uint32_t listener = 0;
  char ip[INET6_ADDRSTRLEN] = {};
  uint8_t ipBytes[16] = {};
  uint8_t ipLen = 0;
  uint16_t peerPort = 0;
  l4::IpAddress peer;
  bool awaitProxyHeader = false;  // PROXY listener: header not seen yet
  enum class State : uint8_t { kReadingHead, kProxying, kClosing } state = State::kReadingHead;
  bool closed = false;
  bool closeAfterFlush = false;
  bool inFree = false;

  // Current exchange.
  UpstreamConn* up = nullptr;
  BackendState* backend = nullptr;
  BodyKind reqBody = BodyKind::kNone;
  uint64_t reqRemaining = 0;
  ChunkedDecoder reqDec;
  bool reqDone = true;
  bool keepAlive = true;
  bool reqIsHead = false;
  uint8_t reqMinor = 1;
  bool retryable = false;
  bool retried = false;
  bool respHeadDone = false;
  bool respDone = false;
  bool respStarted = false;
  bool upstreamReusable = false;
  BodyKind respBody = BodyKind::kNone;
  uint64_t respRemaining = 0;
  ChunkedDecoder respDec;
  int status = 0;

  std::string reqHeadOut;   // rewritten request head (kept for one retry)
  std::string respHeadOut;  // rewritten response head or error response
  std::string rlHeaders;    // RateLimit fields for this response ("" = none)
  std::string assembly;     // head spanning several receive buffers
  std::string logMethod, logTarget, logHost, logRoute, requestId;
  std::string tlsSubject;    // verified client certificate (mTLS), "" = none
  std::string logRateLimit;  // rule that refused (or would have, in dry run)
  std::string logGeo;        // country refused by the listener's geo policy
  std::string logWaf;        // "blocked:<id>" / "detected:<id>"
  NamedCounters* routeCounters = nullptr;  // per-worker, keyed by route name; never freed
  uint64_t startMs = 0, upStartMs = 0, upEndMs = 0, reqBytesIn = 0, reqBytesOut = 0;
};

struct UpstreamConn {
  Worker::Impl* w = nullptr;
  Endpoint ep;
  AutoHook timerHook;
  AutoHook idleHook;
  uint64_t deadline = 0;
  TimerKind timer = TimerKind::kNone;
  BackendState* backend = nullptr;
  ClientConn* client = nullptr;
  bool connecting = false;
  bool closed = false;
  bool reused = false;
  bool inFree = false;
  std::string assembly;
};

using IdleList = bi::list<UpstreamConn, bi::member_hook<UpstreamConn, AutoHook, &UpstreamConn::idleHook>,
                          bi::constant_time_size<false>>;

struct BackendState {
  std::string key;
  sockaddr_storage addr{};
  socklen_t addrLen = 0;
  uint32_t active = 0;  // requests in flight from this worker (least connections)
  uint32_t weight = 1;
  uint32_t maxIdle = 0;     // from the pool config (largest, if in several pools)
  uint32_t idleCount = 0;   // length of `idle`
  IdleList idle;
  NamedCounters counters;
  std::shared_ptr<const TlsUpstream> tls;  // pool speaks TLS to this backend; null = plain
  // Outlier detection's shared streak counter (control-owned, outlives every
  // snapshot); null when no pool of this backend has outlier detection.
  control::PassiveHealth* passive = nullptr;
};

template <class C>
using TimerList =
    bi::list<C, bi::member_hook<C, AutoHook, &C::timerHook>, bi::constant_time_size<false>>;

struct ListenerState {
  int fd = -1;
  uint32_t index = 0;
  std::string name;
  Completion acceptC;
  bool armed = false;
  NamedCounters counters;
};

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && strncasecmp(a.data(), b.data(), a.size()) == 0;
}

// Hop-by-hop fields never forwarded (RFC 9110 7.6.1), plus the forwarding
// fields the proxy rewrites itself. Transfer-Encoding is kept: bodies are
// forwarded with their framing unchanged.
bool isDroppedRequestHeader(std::string_view n) {
  switch (n.size()) {
    case 2: return iequals(n, "te");
    case 7: return iequals(n, "upgrade");
    case 10: return iequals(n, "connection") || iequals(n, "keep-alive");
    case 12: return iequals(n, "x-request-id");
    case 15: return iequals(n, "x-forwarded-for");
    case 16: return iequals(n, "proxy-connection");
    case 17: return iequals(n, "x-forwarded-proto");
    default: return false;
  }
}

bool isDroppedResponseHeader(std::string_view n) {
  switch (n.size()) {
    case 2: return iequals(n, "te");
    case 7: return iequals(n, "upgrade");
    case 10: return iequals(n, "connection") || iequals(n, "keep-alive");
    case 16: return iequals(n, "proxy-connection");
    default: return false;
  }
}

// The field names listed in a head's Connection headers (hop-by-hop, RFC
// 9110 7.6.1), collected once per head so that filtering the other fields is
// linear. A head listing more than kMax tokens sets `overflow` and lookups
// then re-scan the Connection headers themselves (rare, never wrong).
struct ConnectionTokens {
  static constexpr size_t kMax = 16;
  std::string_view tokens[kMax];
  size_t count = 0;
  bool overflow = false;

  // Calls fn(token) for each token of every Connection header until fn
  // returns true; returns whether it did.
  template <class Head, class Fn>
  static bool forEachToken(const Head& h, Fn&& fn) {
    for (uint32_t i = 0; i < h.headerCount; ++i) {
      if (!iequals(h.headers[i].name, "connection")) continue;
      std::string_view v = h.headers[i].value;
      while (!v.empty()) {
        size_t comma = v.find(',');
        std::string_view tok = v.substr(0, comma);
        while (!tok.empty() && (tok.front() == ' ' || tok.front() == '\t')) tok.remove_prefix(1);
        while (!tok.empty() && (tok.back() == ' ' || tok.back() == '\t')) tok.remove_suffix(1);
        if (!tok.empty() && fn(tok)) return true;
        if (comma == std::string_view::npos) break;
        v.remove_prefix(comma + 1);
      }
    }
    return false;
  }

  template <class Head>
  void collect(const Head& h) {
    count = 0;
    overflow = false;
    forEachToken(h, [this](std::string_view tok) {
      if (count < kMax) tokens[count++] = tok;
      else overflow = true;
      return false;
    });
  }

  template <class Head>
  bool contains(const Head& h, std::string_view name) const {
    for (size_t i = 0; i < count; ++i) {
      if (iequals(tokens[i], name)) return true;
    }
    if (!overflow) return false;
    return forEachToken(h, [name](std::string_view tok) { return iequals(tok, name); });
  }
};

bool validRequestId(std::string_view v) {
  if (v.empty() || v.size() > 128) return false;
  for (unsigned char c : v) {
    if (!(std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == ':')) return false;
  }
  return true;
}

const char* reasonPhrase(int status) {
  switch (status) {
    case 400: return "Bad Request";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 408: return "Request Timeout";
    case 414: return "URI Too Long";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    default: return "Error";
  }
}

}  // namespace

int openListener(const control::ListenerConfig& l, std::string& err) {
  std::string where = l.name + " (" + l.address + ":" + std::to_string(l.port) + ")";
  sockaddr_storage ss{};
  socklen_t len = 0;
  if (!control::toSocketAddress(l.address, l.port, ss, len)) {
    err = where + ": not an IP address";
    return -1;
  }
  int family = ss.ss_family;
  int fd = ::socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    err = where + ": socket: " + strerror(errno);
    return -1;
  }
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
  if (family == AF_INET6) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
  if (::bind(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0) {
    err = where + ": bind: " + strerror(errno);
    ::close(fd);
    return -1;
  }
  if (::listen(fd, 4096) != 0) {
    err = where + ": listen: " + strerror(errno);
    ::close(fd);
    return -1;
  }
  return fd;
}

struct Worker::Impl {
  Options opts;
  std::unique_ptr<Loop> loop;
  const control::Snapshot* snap = nullptr;
  std::vector<ListenerState> listeners;
  std::unordered_map<std::string, std::unique_ptr<BackendState>> backends;
  std::vector<std::vector<BackendState*>> poolBackends;  // per snapshot pool
  std::vector<uint32_t> rrCursor;
  std::vector<ClientConn*> freeClients;
  std::vector<UpstreamConn*> freeUpstreams;
  // Every connection object ever allocated (live or free): shutdown closes
  // the live ones and the destructor deletes them all.
  std::vector<std::unique_ptr<ClientConn>> allClients;
  std::vector<std::unique_ptr<UpstreamConn>> allUpstreams;
  TimerList<ClientConn> clientTimers[static_cast<size_t>(TimerKind::kCount)];
  TimerList<UpstreamConn> upTimers[static_cast<size_t>(TimerKind::kCount)];
  std::vector<ClientConn*> starved;  // receive ran out of buffers; re-arm later
  std::vector<UpstreamConn*> starvedUp;
  // TLS connections whose decrypted bytes found no free local buffer.
  std::vector<ClientConn*> tlsStarvedClients;
  std::vector<UpstreamConn*> tlsStarvedUps;
  RequestHead reqHead;
  ResponseHead respHead;
  ConnectionTokens connTokens;
  ParseLimits limits;
  ProxyCounters c;
  std::unordered_map<std::string, NamedCounters> routeCounters;  // node-stable
  std::vector<NamedCounters*> routeCounterPtr;  // per snapshot route index
  std::unordered_map<std::string, RateLimitRuleCounters> rlCounters;  // node-stable, by name
  std::vector<RateLimitRuleCounters*> rlCounterPtr;  // per snapshot rule index
  ratelimit::TopKeys topOffenders;
  std::string_view xffValues[8];
  std::string logBuf;
  // WAF: one transaction object per worker (buffers reused), the request
  // body assembled for inspection, and pending audit lines.
  waf::Transaction wafTx;
  std::string wafAssembly;
  std::string wafBody;
  std::string auditBuf;
  char timeStr[32] = {};
  time_t timeStrSec = 0;
  uint64_t rng[2];
  int wakeFd = -1;
  uint64_t wakeValue = 0;
  Completion wakeC;
  bool stopping = false;
  uint64_t nextReportMs = 0;
  mutable std::mutex reportMu;
  WorkerReport published;
  LatencyHistogram latency;
  uint64_t switchLagMaxUs = 0;  // worst snapshot build-to-use delay seen
  // Per country (0 = unknown); at most one entry per country, so it stops
  // allocating after the first refusal from each.
  std::unordered_map<uint16_t, uint64_t> geoBlocked;
  std::unordered_map<uint32_t, uint64_t> wafRuleHits;  // per rule id (bounded by the rule set)

  // ---- helpers -----------------------------------------------------------
  uint64_t now() const { return loop->nowMs(); }

  void armRecv(Endpoint& ep) {
    if (ep.recvArmed || ep.eof || ep.fd < 0 || ep.paused) return;
    loop->recvMultishot(ep.fd, &ep.recvC);
    ep.recvArmed = true;
    ++ep.inflight;
  }

  void pauseRecv(Endpoint& ep) {
    if (ep.paused) return;
    ep.paused = true;
    ++c.backpressurePauses;
    if (ep.recvArmed && !ep.cancelPending) {
      ep.cancelPending = true;
      ++ep.inflight;
      loop->cancel(&ep.recvC, &ep.auxC);
    }
  }

  void resumeRecv(Endpoint& ep) {
    if (!ep.paused) return;
    ep.paused = false;
    armRecv(ep);
  }

  // Drops `n` bytes from the front of the receive queue, releasing buffers
  // that become empty.
  void consume(Endpoint& ep, size_t n) {
    while (n > 0 && !ep.rq.empty()) {
      RecvChunk& ch = ep.rq.front();
      size_t take = n < ch.len ? n : ch.len;
      ch.off += static_cast<uint32_t>(take);
      ch.len -= static_cast<uint32_t>(take);
      n -= take;
      if (ch.len == 0) {
        loop->releaseBuffer(ch.bid);
        ep.rq.pop();
      }
    }
  }

  // Contiguous view of the unparsed bytes, up to `limit` + 1 bytes.
  std::string_view headView(Endpoint& ep, std::string& assembly, size_t limit) {
    RecvChunk& f = ep.rq.front();
    if (ep.rq.size() == 1) return {loop->bufferData(f.bid) + f.off, f.len};
    assembly.clear();
    for (size_t i = 0; i < ep.rq.size() && assembly.size() <= limit; ++i) {
      RecvChunk& ch = ep.rq.at(i);
      assembly.append(loop->bufferData(ch.bid) + ch.off, ch.len);
    }
    return assembly;
  }

  void releaseSegments(Endpoint& ep) {
    for (RingQueue<Segment>* q : {&ep.sq, &ep.cq}) {
      while (!q->empty()) {
        if (q->front().bid >= 0) loop->releaseBuffer(q->front().bid);
        q->pop();
      }
    }
    ep.sentOff = 0;
    ep.plainOff = 0;
  }

  void resetEndpoint(Endpoint& ep) {
    for (size_t i = 0; i < ep.rq.size(); ++i) loop->releaseBuffer(ep.rq.at(i).bid);
    ep.rq.clear();
    releaseSegments(ep);
    ep.fd = -1;
    ep.recvArmed = ep.cancelPending = ep.paused = ep.sendInFlight = ep.eof = false;
    ep.inflight = 0;
    ep.tls.reset();
    ep.tlsShut = ep.tlsFailed = ep.tlsStarved = false;
  }

  // Nothing left to send: no plaintext queued and, with TLS, no ciphertext.
  static bool drained(const Endpoint& ep) { return ep.sq.empty() && ep.cq.empty(); }

  // TLS: moves the session's pending output (handshake messages, alerts,
  // records) into local buffers on cq. False when no buffer was free (the
  // rest stays in the session; the next flush retries).
  bool tlsTakeOut(Endpoint& ep) {
    TlsConn& t = *ep.tls;
    while (t.pendingOut() > 0) {
      const int32_t bid = loop->acquireBuffer();
      if (bid < 0) return false;
      char* p = loop->bufferData(bid);
      const size_t n = t.takeOut(p, loop->bufferSize());
      ep.cq.push(Segment{p, static_cast<uint32_t>(n), bid});
    }
    return true;
  }

  // TLS: encrypts queued plaintext while the ciphertext queue is short.
  // False on a fatal TLS error (t.error() says which).
  bool tlsEncrypt(Endpoint& ep) {
    TlsConn& t = *ep.tls;
    while (!ep.sq.empty() && ep.cq.size() < kMaxCipherSegments) {
      Segment& seg = ep.sq.front();
      const int n = t.write(seg.data + ep.plainOff, seg.len - ep.plainOff);
      if (n == TlsConn::kError) return false;
      if (n == 0) break;  // handshake still running
      ep.plainOff += static_cast<uint32_t>(n);
      if (ep.plainOff == seg.len) {
        if (seg.bid >= 0) loop->releaseBuffer(seg.bid);
        ep.sq.pop();
        ep.plainOff = 0;
      }
      if (!tlsTakeOut(ep)) return true;
    }
    tlsTakeOut(ep);
    return true;
  }

  // TLS: decrypts what the session holds into local buffers on rq. Returns
  // false on a fatal TLS error; sets eof on the peer's close_notify.
  bool tlsDecrypt(Endpoint& ep) {
    for (;;) {
      const int32_t bid = loop->acquireBuffer();
      if (bid < 0) {
        ep.tlsStarved = true;  // the owner retries on a later turn (turn())
        return true;
      }
      const int n = ep.tls->read(loop->bufferData(bid), loop->bufferSize());
      if (n > 0) {
        ep.rq.push(RecvChunk{bid, 0, static_cast<uint32_t>(n)});
        continue;
      }
      loop->releaseBuffer(bid);
      if (n == TlsConn::kClosed) ep.eof = true;
      return n != TlsConn::kError;
    }
  }

  void queue(Endpoint& ep, const char* data, size_t len, int32_t bid) {
    if (len == 0) return;
    if (bid >= 0) loop->retainBuffer(bid);
    ep.sq.push(Segment{data, static_cast<uint32_t>(len), bid});
  }

  // Sends what is queued (one send in flight at a time). With TLS, first
  // encrypts plaintext into cq; a TLS failure there is left for the owner
  // to see (TlsConn::error() non-empty, tlsFailed()).
  void flush(Endpoint& ep) {
    if (ep.fd < 0) return;
    if (ep.tls != nullptr && !tlsEncrypt(ep)) ep.tlsFailed = true;
    RingQueue<Segment>& q = ep.tls != nullptr ? ep.cq : ep.sq;
    if (ep.sendInFlight || q.empty()) return;
    size_t n = q.size() < kMaxIov ? q.size() : kMaxIov;
    for (size_t i = 0; i < n; ++i) {
      Segment& s = q.at(i);
      uint32_t off = i == 0 ? ep.sentOff : 0;
      ep.iov[i].iov_base = const_cast<char*>(s.data + off);
      ep.iov[i].iov_len = s.len - off;
    }
    ep.msg = msghdr{};
    ep.msg.msg_iov = ep.iov;
    ep.msg.msg_iovlen = n;
    ep.sendInFlight = true;
    ++ep.inflight;
    loop->sendMsg(ep.fd, &ep.msg, &ep.sendC);
  }

  // Consumes `res` sent bytes from the send queue.
  void sent(Endpoint& ep, size_t res) {
    RingQueue<Segment>& q = ep.tls != nullptr ? ep.cq : ep.sq;
    while (res > 0 && !q.empty()) {
      Segment& s = q.front();
      size_t avail = s.len - ep.sentOff;
      if (res >= avail) {
        res -= avail;
        ep.sentOff = 0;
        if (s.bid >= 0) loop->releaseBuffer(s.bid);
        q.pop();
      } else {
        ep.sentOff += static_cast<uint32_t>(res);
        res = 0;
      }
    }
  }

  template <class C>
  void armTimer(C* conn, TimerKind kind, uint32_t ms) {
    conn->timerHook.unlink();
    conn->timer = kind;
    conn->deadline = now() + ms;
    if constexpr (std::is_same_v<C, ClientConn>) {
      clientTimers[static_cast<size_t>(kind)].push_back(*conn);
    } else {
      upTimers[static_cast<size_t>(kind)].push_back(*conn);
    }
  }

  template <class C>
  void disarmTimer(C* conn) {
    conn->timerHook.unlink();
    conn->timer = TimerKind::kNone;
  }

  const char* wallTime() {
    timespec ts;
    clock_gettime(CLOCK_REALTIME_COARSE, &ts);
    if (ts.tv_sec != timeStrSec) {
      timeStrSec = ts.tv_sec;
      tm t;
      gmtime_r(&ts.tv_sec, &t);
      strftime(timeStr, sizeof(timeStr), "%Y-%m-%dT%H:%M:%SZ", &t);
    }
    return timeStr;
  }

  uint64_t nextRandom() {
    uint64_t s1 = rng[0];
    const uint64_t s0 = rng[1];
    rng[0] = s0;
    s1 ^= s1 << 23;
    rng[1] = s1 ^ s0 ^ (s1 >> 17) ^ (s0 >> 26);
    return rng[1] + s0;
  }

  void newRequestId(std::string& out) {
    static const char kHex[] = "0123456789abcdef";
    out.resize(32);
    uint64_t a = nextRandom(), b = nextRandom();
    for (int i = 0; i < 16; ++i) {
      out[static_cast<size_t>(i)] = kHex[(a >> (i * 4)) & 15];
      out[static_cast<size_t>(16 + i)] = kHex[(b >> (i * 4)) & 15];
    }
  }

  // ---- snapshot ----------------------------------------------------------
  void switchSnapshot(const control::Snapshot* s) {
    const bool first = snap == nullptr;
    snap = s;
    ++c.configSwitches;
    if (!first && s->builtNs != 0) {  // how long after its build this worker runs it
      timespec ts;
      clock_gettime(CLOCK_MONOTONIC, &ts);
      const uint64_t nowNs = static_cast<uint64_t>(ts.tv_sec) * 1000000000u + static_cast<uint64_t>(ts.tv_nsec);
      const uint64_t lagUs = nowNs > s->builtNs ? (nowNs - s->builtNs) / 1000 : 0;
      switchLagMaxUs = std::max(switchLagMaxUs, lagUs);
    }
    const auto& cfg = s->config;
    limits.maxHeaderBytes = cfg.limits.maxHeaderBytes;
    limits.maxRequestLine = cfg.limits.maxRequestLine;
    limits.maxHeaders = cfg.limits.maxHeaders;
    routeCounterPtr.clear();
    for (const auto& r : s->routes) routeCounterPtr.push_back(&routeCounters[r.name]);
    rlCounterPtr.clear();
    for (const auto& r : s->rateLimit.rules) rlCounterPtr.push_back(&rlCounters[r.name]);
    poolBackends.assign(s->pools.size(), {});
    rrCursor.assign(s->pools.size(), static_cast<uint32_t>(opts.index));
    std::unordered_map<std::string, bool> live;
    for (auto& [key, st] : backends) st->maxIdle = 0;
    for (size_t p = 0; p < s->pools.size(); ++p) {
      const std::shared_ptr<const TlsUpstream>& tls =
          p < s->tlsPools.size() ? s->tlsPools[p] : std::shared_ptr<const TlsUpstream>();
      for (const auto& b : s->pools[p].backends) {
        // A TLS pool's connections are its own: keyed apart from plain ones.
        const std::string mapKey = tls ? "tls:" + s->pools[p].name + "/" + b.key : b.key;
        auto& st = backends[mapKey];
        if (!st) {
          st = std::make_unique<BackendState>();
          st->key = b.key;
          st->addr = b.addr;
          st->addrLen = b.addrLen;
        }
        if (st->tls != tls) {
          // New TLS settings (a reload): pooled connections used the old ones.
          while (!st->idle.empty()) closeUpstream(&st->idle.front());
          st->tls = tls;
        }
        st->weight = b.weight;
        if (b.passive != nullptr) st->passive = b.passive;
        st->maxIdle = std::max(st->maxIdle, cfg.pools[p].maxIdlePerWorker);
        poolBackends[p].push_back(st.get());
        live[mapKey] = true;
      }
    }
    // Backends no longer configured: close their idle connections; requests
    // in flight finish on them (their state object stays).
    for (auto& [key, st] : backends) {
      if (live.count(key) != 0) continue;
      while (!st->idle.empty()) closeUpstream(&st->idle.front());
    }
  }

  BackendState* pickBackend(uint32_t poolIndex, const ClientConn* cc) {
    const control::PoolRuntime& pool = snap->pools[poolIndex];
    const auto& states = poolBackends[poolIndex];
    if (states.empty()) return nullptr;
    switch (pool.balance) {
      case control::BalanceAlgorithm::kMaglev: {
        if (pool.maglevTable.empty()) return nullptr;
        uint64_t h = l4::maglevHash(cc->ipBytes, cc->ipLen, 0);
        return states[pool.maglevTable[h % pool.maglevTable.size()]];
      }
      case control::BalanceAlgorithm::kLeastConnections: {
        BackendState* best = nullptr;
        uint32_t start = rrCursor[poolIndex]++;
        for (size_t i = 0; i < states.size(); ++i) {
          BackendState* b = states[(start + i) % states.size()];
          if (b->weight == 0) continue;
          // active/weight compared without division.
          if (best == nullptr ||
              static_cast<uint64_t>(b->active) * best->weight <
                  static_cast<uint64_t>(best->active) * b->weight) {
            best = b;
          }
        }
        return best;
      }
      case control::BalanceAlgorithm::kRoundRobin:
      default: {
        if (pool.rrSequence.empty()) return nullptr;
        uint32_t i = rrCursor[poolIndex]++ % static_cast<uint32_t>(pool.rrSequence.size());
        return states[pool.rrSequence[i]];
      }
    }
  }

  // ---- allocation --------------------------------------------------------
  ClientConn* allocClient() {
    ClientConn* cc;
    if (!freeClients.empty()) {
      cc = freeClients.back();
      freeClients.pop_back();
    } else {
      cc = new ClientConn();
      allClients.emplace_back(cc);
      cc->w = this;
      cc->ep.recvC = {&Impl::onClientRecv, cc};
      cc->ep.sendC = {&Impl::onClientSend, cc};
      cc->ep.auxC = {&Impl::onClientAux, cc};
    }
    cc->inFree = false;
    cc->closed = false;
    cc->closeAfterFlush = false;
    cc->state = ClientConn::State::kReadingHead;
    cc->up = nullptr;
    cc->backend = nullptr;
    cc->reqDone = true;
    cc->respHeadDone = cc->respDone = cc->respStarted = false;
    cc->keepAlive = true;
    cc->tlsSubject.clear();
    return cc;
  }

  UpstreamConn* allocUpstream() {
    UpstreamConn* u;
    if (!freeUpstreams.empty()) {
      u = freeUpstreams.back();
      freeUpstreams.pop_back();
    } else {
      u = new UpstreamConn();
      allUpstreams.emplace_back(u);
      u->w = this;
      u->ep.recvC = {&Impl::onUpRecv, u};
      u->ep.sendC = {&Impl::onUpSend, u};
      u->ep.auxC = {&Impl::onUpAux, u};
    }
    u->inFree = false;
    u->closed = false;
    u->connecting = false;
    u->reused = false;
    u->client = nullptr;
    u->backend = nullptr;
    return u;
  }

  void maybeFreeClient(ClientConn* cc) {
    if (!cc->closed || cc->ep.inflight > 0 || cc->inFree) return;
    resetEndpoint(cc->ep);
    cc->inFree = true;
    freeClients.push_back(cc);
  }

  void maybeFreeUpstream(UpstreamConn* u) {
    if (!u->closed || u->ep.inflight > 0 || u->inFree) return;
    resetEndpoint(u->ep);
    u->inFree = true;
    freeUpstreams.push_back(u);
  }

  // ---- closing -----------------------------------------------------------
  static void shutdownFd(Endpoint& ep) {
    if (ep.fd < 0) return;
    // shutdown completes the pending multishot receive (res 0) and fails
    // pending sends; io_uring holds its own file reference, so closing the
    // descriptor number right after is safe.
    ::shutdown(ep.fd, SHUT_RDWR);
    ::close(ep.fd);
    ep.fd = -1;
  }

  // Takes u out of its backend's idle pool, if it is there.
  static void leaveIdle(UpstreamConn* u) {
    if (!u->idleHook.is_linked()) return;
    u->idleHook.unlink();
    --u->backend->idleCount;
  }

  void closeUpstream(UpstreamConn* u) {
    if (u->closed) return;
    u->closed = true;
    disarmTimer(u);
    leaveIdle(u);
    if (u->client != nullptr && u->client->up == u) u->client->up = nullptr;
    u->client = nullptr;
    shutdownFd(u->ep);
    maybeFreeUpstream(u);
  }

  // Ends the current exchange's hold on the backend (least-connections
  // accounting) exactly once.
  void releaseBackend(ClientConn* cc) {
    if (cc->backend != nullptr) {
      --cc->backend->active;
      cc->backend = nullptr;
    }
  }

  void closeClient(ClientConn* cc) {
    if (cc->closed) return;
    cc->closed = true;
    disarmTimer(cc);
    if (cc->up != nullptr) closeUpstream(cc->up);
    releaseBackend(cc);
    shutdownFd(cc->ep);
    --c.connectionsActive;
    maybeFreeClient(cc);
  }

  // ---- access log and counters -------------------------------------------
  void account(ClientConn* cc, int status, std::string_view error = {}) {
    cc->status = status;
    if (status < 300) ++c.responses2xx;
    else if (status < 400) ++c.responses3xx;
    else if (status < 500) ++c.responses4xx;
    else ++c.responses5xx;
    if (cc->backend != nullptr && cc->backend->passive != nullptr) {
      control::PassiveHealth* p = cc->backend->passive;
      if (status >= 500 || status == 0) {
        p->consecutiveFailures.fetch_add(1, std::memory_order_relaxed);
        p->failures.fetch_add(1, std::memory_order_relaxed);
      } else if (p->consecutiveFailures.load(std::memory_order_relaxed) != 0) {
        p->consecutiveFailures.store(0, std::memory_order_relaxed);
      }
    }
    {
      const uint64_t ms = now() - cc->startMs;
      size_t i = 0;
      while (i < kLatencyBucketsMs.size() && ms > kLatencyBucketsMs[i]) ++i;
      ++latency.buckets[i];
      latency.sumMs += ms;
    }
    ListenerState& l = listeners[cc->listener];
    ++l.counters.requests;
    if (status >= 500) ++l.counters.errors;
    if (cc->routeCounters != nullptr) {
      ++cc->routeCounters->requests;
      if (status >= 500) ++cc->routeCounters->errors;
    }
    if (opts.accessLogFd < 0) return;
    if (logBuf.size() > (1u << 20)) {
      ++c.accessLogDropped;
      return;
    }
    AccessRecord r;
    r.time = wallTime();
    r.client = cc->ip;
    r.method = cc->logMethod;
    r.target = cc->logTarget;
    r.host = cc->logHost;
    r.status = status;
    r.bytesIn = cc->reqBytesIn;
    r.bytesOut = cc->reqBytesOut;
    r.upstream = cc->backend != nullptr ? std::string_view(cc->backend->key) : std::string_view();
    r.route = cc->logRoute;
    r.durationMs = now() - cc->startMs;
    r.upstreamMs = cc->upStartMs != 0 ? (cc->upEndMs != 0 ? cc->upEndMs : now()) - cc->upStartMs : 0;
    r.requestId = cc->requestId;
    r.error = error;
    r.rateLimit = cc->logRateLimit;
    r.waf = cc->logWaf;
    r.geo = cc->logGeo;
    appendAccessLine(logBuf, r);
  }

  // Writes buf whole to fd (blocking file write, EINTR retried), then empties
  // it. A short write that fails counts one drop in `dropped`; the rest of
  // the batch is discarded rather than retried on the hot path.
  static void writeBatch(int fd, std::string& buf, uint64_t& dropped) {
    size_t off = 0;
    while (off < buf.size()) {
      ssize_t n = ::write(fd, buf.data() + off, buf.size() - off);
      if (n <= 0) {
        if (n < 0 && errno == EINTR) continue;
        ++dropped;
        break;
      }
      off += static_cast<size_t>(n);
    }
    buf.clear();
  }

  void flushAccessLog() {
    if (!auditBuf.empty() && opts.wafAuditFd >= 0) writeBatch(opts.wafAuditFd, auditBuf, c.wafAuditDropped);
    if (logBuf.empty() || opts.accessLogFd < 0) return;
    writeBatch(opts.accessLogFd, logBuf, c.accessLogDropped);
  }

  // ---- error responses ---------------------------------------------------
  // Answers the current request with `status` and a one-line body. The
  // connection closes afterwards when `close` is set or the request body
  // was not fully read.
  void sendError(ClientConn* cc, int status, std::string_view text, bool close,
                 std::string_view extraHeaders = {}) {
    if (cc->respStarted) {  // part of a response is out: only closing is honest
      ++c.clientAborts;
      closeClient(cc);
      return;
    }
    if (cc->up != nullptr) closeUpstream(cc->up);
    cc->upEndMs = now();
    account(cc, status, text);
    releaseBackend(cc);
    bool closing = close || !cc->reqDone || !cc->keepAlive;
    std::string& o = cc->respHeadOut;
    o.clear();
    o.append("HTTP/1.1 ").append(std::to_string(status)).append(" ").append(reasonPhrase(status));
    o.append("\r\nContent-Type: text/plain\r\nContent-Length: ");
    o.append(std::to_string(text.size() + 1));
    if (!cc->requestId.empty()) o.append("\r\nX-Request-Id: ").append(cc->requestId);
    if (closing) o.append("\r\nConnection: close");
    o.append("\r\n").append(extraHeaders).append("\r\n").append(text).append("\n");
    cc->reqBytesOut += o.size();
    c.bytesOut += o.size();
    queue(cc->ep, o.data(), o.size(), -1);
    flush(cc->ep);
    cc->respStarted = true;
    if (closing) {
      cc->closeAfterFlush = true;
      cc->state = ClientConn::State::kClosing;
      pauseRecv(cc->ep);
      disarmTimer(cc);
      closeWhenDrained(cc);
    } else {
      cc->state = ClientConn::State::kReadingHead;
      // The error body lives in respHeadOut: wait for it to be sent before
      // the next request may reuse the string (see onClientSend).
    }
  }

  // ---- client side -------------------------------------------------------
  void onAccept(ListenerState& l, const IoEvent& ev) {
    if (!ev.more) l.armed = false;
    if (ev.res >= 0) {
      int fd = ev.res;
      if (stopping) {
        ::close(fd);
      } else {
        newClient(fd, l.index);
      }
    }
    if (!l.armed && !stopping && l.fd >= 0) {
      loop->acceptMultishot(l.fd, &l.acceptC);
      l.armed = true;
    }
  }

  void newClient(int fd, uint32_t listener) {
    ClientConn* cc = allocClient();
    cc->ep.fd = fd;
    cc->listener = listener;
    ++c.connectionsAccepted;
    ++c.connectionsActive;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    sockaddr_storage ss{};
    socklen_t sl = sizeof(ss);
    cc->ip[0] = 0;
    cc->ipLen = 0;
    if (getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &sl) == 0) {
      if (ss.ss_family == AF_INET) {
        auto* a = reinterpret_cast<sockaddr_in*>(&ss);
        inet_ntop(AF_INET, &a->sin_addr, cc->ip, sizeof(cc->ip));
        memcpy(cc->ipBytes, &a->sin_addr, 4);
        cc->ipLen = 4;
        cc->peerPort = ntohs(a->sin_port);
      } else if (ss.ss_family == AF_INET6) {
        auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
        inet_ntop(AF_INET6, &a->sin6_addr, cc->ip, sizeof(cc->ip));
        memcpy(cc->ipBytes, &a->sin6_addr, 16);
        cc->ipLen = 16;
        cc->peerPort = ntohs(a->sin6_port);
      }
    }
    cc->peer = l4::IpAddress::fromBytes(cc->ipBytes, cc->ipLen);
    cc->awaitProxyHeader = false;
    if (listener < snap->config.listeners.size() &&
        snap->config.listeners[listener].proxyProtocol) {
      if (!snap->rateLimit.trustedProxies.contains(cc->peer)) {
        ++c.proxyProtocolRefused;  // only a trusted proxy may say who the client is
        closeClient(cc);
        return;
      }
      cc->awaitProxyHeader = true;
    }
    if (opts.rateLimitTable != nullptr &&
        ratelimit::isBanned(snap->rateLimit, *opts.rateLimitTable, cc->peer, loop->nowNs())) {
      // A banned client: drop before reading a byte (the L4 drop list on
      // DPDK; on sockets the handshake is already paid, nothing more is).
      ++c.rateLimitBannedConnections;
      closeClient(cc);
      return;
    }
    if (listener < snap->tlsListeners.size() && snap->tlsListeners[listener] != nullptr) {
      cc->ep.tls = TlsConn::server(snap->tlsListeners[listener], opts.index);
      if (cc->ep.tls == nullptr) {
        ++c.tlsHandshakeErrors;
        closeClient(cc);
        return;
      }
      cc->tlsSubject.clear();
      // The handshake and the first request head share the header timeout.
      armRecv(cc->ep);
      armTimer(cc, TimerKind::kClientHeader, snap->config.timeouts.requestHeaderMs);
      return;
    }
    armRecv(cc->ep);
    armTimer(cc, TimerKind::kClientIdle, snap->config.timeouts.idleMs);
  }


  // Common bookkeeping of a receive completion. Returns false when the
  // event carried nothing further to process.
  bool recvEvent(Endpoint& ep, const IoEvent& ev, bool closed, uint64_t* bytesIn) {
    if (!ev.more) {
      ep.recvArmed = false;
      --ep.inflight;
    }
    if (ev.bufferId >= 0) {
      if (closed || ev.res <= 0) {
        loop->releaseBuffer(ev.bufferId);
      } else if (ep.tls != nullptr) {
        // Ciphertext: into the session, buffer back to the kernel at once.
        ep.tls->feed(loop->bufferData(ev.bufferId), static_cast<size_t>(ev.res));
        loop->releaseBuffer(ev.bufferId);
        if (bytesIn != nullptr) *bytesIn += static_cast<uint64_t>(ev.res);
        if (!tlsDecrypt(ep)) ep.tlsFailed = true;
        flush(ep);  // handshake replies, session tickets, alerts
      } else {
        ep.rq.push(RecvChunk{ev.bufferId, 0, static_cast<uint32_t>(ev.res)});
        if (bytesIn != nullptr) *bytesIn += static_cast<uint64_t>(ev.res);
      }
    } else if (ev.res == 0) {
      ep.eof = true;
    }
    return !closed;
  }

  static void onClientRecv(Completion* comp, const IoEvent& ev) {
    auto* cc = static_cast<ClientConn*>(comp->owner);
    Impl* w = cc->w;
    uint64_t before = cc->reqBytesIn;
    if (!w->recvEvent(cc->ep, ev, cc->closed, &cc->reqBytesIn)) {
      w->maybeFreeClient(cc);
      return;
    }
    w->c.bytesIn += cc->reqBytesIn - before;
    if (cc->ep.tls != nullptr && !w->tlsClientProgress(cc)) return;
    if (cc->ep.tlsStarved) {
      cc->ep.tlsStarved = false;
      w->tlsStarvedClients.push_back(cc);
    }
    if (ev.res < 0 && ev.res != -ECANCELED && ev.res != -ENOBUFS) {
      // Connection reset or similar: nothing can be answered.
      if (cc->state == ClientConn::State::kProxying) ++w->c.clientAborts;
      w->closeClient(cc);
      return;
    }
    if (!cc->ep.recvArmed && !cc->ep.eof && !cc->ep.paused) {
      if (ev.res == -ENOBUFS) {
        w->starved.push_back(cc);
      } else {
        w->armRecv(cc->ep);
      }
    }
    w->processClient(cc);
  }

  // After TLS input on a client connection: counts a completed handshake
  // (and takes the verified client certificate), or ends the connection on
  // a fatal TLS error after sending whatever alert the session produced.
  // Returns false when the connection is closing.
  bool tlsClientProgress(ClientConn* cc) {
    TlsConn& t = *cc->ep.tls;
    if (cc->ep.tlsFailed) {
      if (!t.handshakeDone()) {
        ++c.tlsHandshakeErrors;
      } else {
        ++c.tlsErrors;
      }
      if (snap->config.logging.level == control::LogLevel::kDebug) {
        std::fprintf(stderr, "moatd debug: TLS from %s failed: %s\n", cc->ip, t.error().c_str());
      }
      cc->state = ClientConn::State::kClosing;
      cc->closeAfterFlush = true;
      cc->ep.tlsShut = true;  // no close_notify after a fatal alert
      pauseRecv(cc->ep);
      disarmTimer(cc);
      if (cc->up != nullptr) closeUpstream(cc->up);
      releaseBackend(cc);
      if (drained(cc->ep) || cc->ep.fd < 0) closeClient(cc);
      return false;
    }
    if (t.takeHandshakeEvent()) {
      ++c.tlsHandshakes;
      if (t.resumed()) ++c.tlsResumed;
      cc->tlsSubject = t.peerSubject();
      if (!cc->tlsSubject.empty()) ++c.tlsClientCerts;
    }
    return true;
  }

  // Closes a connection that is done once everything queued is sent; with
  // TLS, after a close_notify alert.
  void closeWhenDrained(ClientConn* cc) {
    if (!cc->ep.sq.empty()) return;
    if (cc->ep.tls != nullptr && !cc->ep.tlsShut && cc->ep.tls->handshakeDone()) {
      cc->ep.tlsShut = true;
      cc->ep.tls->shutdown();
      flush(cc->ep);
    }
    if (drained(cc->ep)) closeClient(cc);
  }

  static void onClientSend(Completion* comp, const IoEvent& ev) {
    auto* cc = static_cast<ClientConn*>(comp->owner);
    Impl* w = cc->w;
    cc->ep.sendInFlight = false;
    --cc->ep.inflight;
    if (cc->closed) {
      w->maybeFreeClient(cc);
      return;
    }
    if (ev.res < 0) {
      ++w->c.clientAborts;
      w->closeClient(cc);
      return;
    }
    w->sent(cc->ep, static_cast<size_t>(ev.res));
    w->flush(cc->ep);
    if (cc->closeAfterFlush) {
      w->closeWhenDrained(cc);
      return;
    }
    if (cc->up != nullptr && cc->ep.sq.size() < kMaxQueuedSegments / 2) {
      w->resumeRecv(cc->up->ep);
    }
    if (cc->ep.sq.empty() && cc->state == ClientConn::State::kReadingHead) {
      w->processClient(cc);
    }
  }

  static void onClientAux(Completion* comp, const IoEvent&) {
    auto* cc = static_cast<ClientConn*>(comp->owner);
    --cc->ep.inflight;
    cc->ep.cancelPending = false;
    cc->w->maybeFreeClient(cc);
  }

  void processClient(ClientConn* cc) {
    for (;;) {
      if (cc->closed) return;
      switch (cc->state) {
        case ClientConn::State::kReadingHead:
          // An error response still being sent owns respHeadOut.
          if (cc->respStarted && !cc->ep.sq.empty()) return;
          if (cc->ep.rq.empty()) {
            if (cc->ep.eof) {
              closeClient(cc);
              return;
            }
            if (cc->timer != TimerKind::kClientIdle) {
              armTimer(cc, TimerKind::kClientIdle, snap->config.timeouts.idleMs);
            }
            resumeRecv(cc->ep);
            return;
          }
          if (!parseRequest(cc)) return;
          break;
        case ClientConn::State::kProxying:
          if (!cc->reqDone) forwardRequestBody(cc);
          if (cc->closed) return;
          if (cc->ep.eof && !cc->reqDone) {
            ++c.clientAborts;
            closeClient(cc);
            return;
          }
          // Pipelined requests wait in the receive queue; bound it.
          if (cc->reqDone && cc->ep.rq.size() >= kMaxHeldBuffers) pauseRecv(cc->ep);
          return;
        case ClientConn::State::kClosing:
          return;
      }
    }
  }

  // Parses and dispatches the next request head. Returns true when a
  // request was dispatched and the state machine should continue.
  // The PROXY protocol header a trusted proxy sends first. Returns true when
  // it was consumed and parsing should go on.
  bool parseProxyPreamble(ClientConn* cc) {
    std::string_view v = headView(cc->ep, cc->assembly, kMaxProxyHeader);
    ProxyHeader ph;
    switch (parseProxyHeader(v.data(), v.size(), ph)) {
      case ProxyHeaderStatus::kIncomplete:
        if (cc->timer != TimerKind::kClientHeader) {
          armTimer(cc, TimerKind::kClientHeader, snap->config.timeouts.requestHeaderMs);
        }
        if (cc->ep.eof) {
          closeClient(cc);
          return false;
        }
        resumeRecv(cc->ep);
        return false;
      case ProxyHeaderStatus::kError:
        ++c.proxyProtocolErrors;
        if (snap->config.logging.level == control::LogLevel::kDebug) {
          fprintf(stderr, "moatd debug: PROXY header from %s refused: %s\n", cc->ip, ph.error);
        }
        closeClient(cc);
        return false;
      case ProxyHeaderStatus::kDone:
        break;
    }
    consume(cc->ep, ph.length);
    cc->awaitProxyHeader = false;
    if (ph.hasAddress) {
      std::memcpy(cc->ipBytes, ph.src, ph.srcLen);
      cc->ipLen = ph.srcLen;
      inet_ntop(ph.srcLen == 4 ? AF_INET : AF_INET6, ph.src, cc->ip, sizeof(cc->ip));
      cc->peerPort = ph.srcPort;
      cc->peer = l4::IpAddress::fromBytes(cc->ipBytes, cc->ipLen);
      if (opts.rateLimitTable != nullptr &&
          ratelimit::isBanned(snap->rateLimit, *opts.rateLimitTable, cc->peer, loop->nowNs())) {
        ++c.rateLimitBannedConnections;
        closeClient(cc);
        return false;
      }
    }
    return true;
  }

  bool parseRequest(ClientConn* cc) {
    if (cc->awaitProxyHeader) return parseProxyPreamble(cc);
    std::string_view v = headView(cc->ep, cc->assembly, limits.maxHeaderBytes);
    RequestHead& h = reqHead;
    HttpError err = HttpError::kNone;
    ParseStatus st = parseRequestHead(v.data(), v.size(), limits, h, err);
    if (st == ParseStatus::kIncomplete) {
      if (cc->timer != TimerKind::kClientHeader) {
        armTimer(cc, TimerKind::kClientHeader, snap->config.timeouts.requestHeaderMs);
      }
      if (cc->ep.eof) {
        closeClient(cc);
        return false;
      }
      if (cc->ep.rq.size() >= kMaxHeldBuffers * 4) {
        // Cannot happen within limits (the parser reports 431 first); guard
        // against a pathological split into tiny reads.
        sendError(cc, 431, "request header section too large", true);
        return false;
      }
      resumeRecv(cc->ep);
      return false;
    }
    if (st == ParseStatus::kComplete && !wafBodyReady(cc, h)) {
      // The WAF inspects the body before anything goes upstream: wait for it
      // (up to waf.requestBodyLimit bytes) under the header timeout.
      if (cc->timer != TimerKind::kClientHeader) {
        armTimer(cc, TimerKind::kClientHeader, snap->config.timeouts.requestHeaderMs);
      }
      if (cc->ep.eof) {
        closeClient(cc);
        return false;
      }
      resumeRecv(cc->ep);
      return false;
    }
    ++c.requests;
    cc->startMs = now();
    cc->upStartMs = cc->upEndMs = 0;
    cc->reqBytesOut = 0;
    cc->respStarted = false;
    cc->logRoute.clear();
    cc->routeCounters = nullptr;
    cc->requestId.clear();
    if (st == ParseStatus::kError) {
      ++c.parseErrors;
      cc->logMethod.clear();
      cc->logTarget.clear();
      cc->logHost.clear();
      cc->reqDone = false;  // unknown framing: the connection must close
      sendError(cc, httpErrorStatus(err), httpErrorText(err), true);
      return false;
    }
    cc->reqBytesIn = h.headBytes;
    cc->logMethod.assign(h.method);
    cc->logTarget.assign(h.target);
    cc->logHost.assign(h.host);
    for (uint32_t i = 0; i < h.headerCount; ++i) {
      if (iequals(h.headers[i].name, "x-request-id") && validRequestId(h.headers[i].value)) {
        cc->requestId.assign(h.headers[i].value);
        break;
      }
    }
    if (cc->requestId.empty()) newRequestId(cc->requestId);
    cc->keepAlive = h.keepAlive;
    cc->reqIsHead = h.method == "HEAD";
    cc->reqMinor = h.versionMinor;
    cc->reqBody = h.body;
    cc->reqRemaining = h.contentLength;
    cc->reqDec.reset();
    cc->reqDone = h.body == BodyKind::kNone ||
                  (h.body == BodyKind::kContentLength && h.contentLength == 0);
    cc->retryable = h.body == BodyKind::kNone;
    cc->retried = false;
    cc->respHeadDone = cc->respDone = false;
    cc->state = ClientConn::State::kProxying;

    std::string_view path = h.target;
    if (!path.empty() && path.front() != '/') {  // absolute-form: path after authority
      size_t scheme = path.find("://");
      size_t slash = scheme == std::string_view::npos ? std::string_view::npos
                                                       : path.find('/', scheme + 3);
      path = slash == std::string_view::npos ? std::string_view("/") : path.substr(slash);
    }
    const control::RouteRuntime* route = snap->matchRoute(h.host, path);
    if (route == nullptr) {
      ++c.noRoute;
      consume(cc->ep, h.headBytes);
      sendError(cc, 404, "no route for this host and path", false);
      return !cc->closed && cc->state == ClientConn::State::kReadingHead;
    }
    cc->logRoute.assign(route->name);
    cc->routeCounters = routeCounterPtr[static_cast<size_t>(route - snap->routes.data())];
    cc->rlHeaders.clear();
    cc->logRateLimit.clear();
    cc->logWaf.clear();
    cc->logGeo.clear();
    if (cc->listener < snap->listenerGeo.size() && snap->listenerGeo[cc->listener].enabled &&
        !admitGeo(cc, h, snap->listenerGeo[cc->listener])) {
      return !cc->closed && cc->state == ClientConn::State::kReadingHead;
    }
    if (opts.rateLimitTable != nullptr && snap->rateLimit.enabled &&
        !admitRateLimit(cc, h, path, *route)) {
      return !cc->closed && cc->state == ClientConn::State::kReadingHead;
    }
    if (snap->waf != nullptr && route->waf && !admitWaf(cc, h)) {
      return !cc->closed && cc->state == ClientConn::State::kReadingHead;
    }
    BackendState* b = pickBackend(route->pool, cc);
    if (b == nullptr) {
      ++c.noBackend;
      consume(cc->ep, h.headBytes);
      sendError(cc, 503, "no usable backend in pool \"" + snap->pools[route->pool].name + "\"",
                false);
      return !cc->closed && cc->state == ClientConn::State::kReadingHead;
    }

    // Rewritten head: hop-by-hop fields dropped, forwarding fields set.
    connTokens.collect(h);
    // mTLS listeners pass the verified client subject in their header and
    // drop any copy the client sent.
    std::string_view subjectHeader;
    if (cc->ep.tls != nullptr && cc->listener < snap->config.listeners.size()) {
      const auto& ca = snap->config.listeners[cc->listener].tls.clientAuth;
      if (!ca.caFile.empty()) subjectHeader = ca.subjectHeader;
    }
    std::string& o = cc->reqHeadOut;
    o.clear();
    o.append(h.method).append(" ").append(h.target);
    o.append(h.versionMinor == 0 ? " HTTP/1.0\r\n" : " HTTP/1.1\r\n");
    std::string_view priorXff;
    bool multipleXff = false;
    for (uint32_t i = 0; i < h.headerCount; ++i) {
      const HeaderField& f = h.headers[i];
      if (iequals(f.name, "x-forwarded-for")) {
        if (!priorXff.empty()) multipleXff = true;
        if (!multipleXff) priorXff = f.value;
        continue;
      }
      if (isDroppedRequestHeader(f.name) || connTokens.contains(h, f.name)) continue;
      if (!subjectHeader.empty() && iequals(f.name, subjectHeader)) continue;  // only ours
      o.append(f.name).append(": ").append(f.value).append("\r\n");
    }
    if (!subjectHeader.empty() && !cc->tlsSubject.empty()) {
      o.append(subjectHeader).append(": ").append(cc->tlsSubject).append("\r\n");
    }
    o.append("X-Forwarded-For: ");
    if (multipleXff) {
      for (uint32_t i = 0; i < h.headerCount; ++i) {
        if (iequals(h.headers[i].name, "x-forwarded-for")) o.append(h.headers[i].value).append(", ");
      }
    } else if (!priorXff.empty()) {
      o.append(priorXff).append(", ");
    }
    o.append(cc->ip).append(cc->ep.tls != nullptr ? "\r\nX-Forwarded-Proto: https\r\nX-Request-Id: "
                                                  : "\r\nX-Forwarded-Proto: http\r\nX-Request-Id: ");
    o.append(cc->requestId).append("\r\n\r\n");
    consume(cc->ep, h.headBytes);

    disarmTimer(cc);
    cc->backend = b;
    ++b->active;
    ++b->counters.requests;
    if (!attachUpstream(cc, b, false)) return false;
    forwardRequestBody(cc);
    return false;  // the exchange continues on completions
  }

  // ---- WAF ----------------------------------------------------------------
  // Bytes received and not yet consumed.
  static size_t bufferedBytes(Endpoint& ep) {
    size_t n = 0;
    for (size_t i = 0; i < ep.rq.size(); ++i) n += ep.rq.at(i).len;
    return n;
  }

  // Contiguous copy of the first `n` buffered bytes (or all there are).
  std::string_view assembleBuffered(Endpoint& ep, size_t n) {
    wafAssembly.clear();
    for (size_t i = 0; i < ep.rq.size() && wafAssembly.size() < n; ++i) {
      const RecvChunk& ch = ep.rq.at(i);
      wafAssembly.append(loop->bufferData(ch.bid) + ch.off,
                         std::min<size_t>(ch.len, n - wafAssembly.size()));
    }
    return wafAssembly;
  }

  // True when the request can be evaluated now: no WAF on its route, no
  // body, or enough of the body buffered (all of it, or the inspection limit,
  // or the receive queue is as full as it may get). Pure: parseRequest runs
  // again from the start when more bytes arrive.
  bool wafBodyReady(ClientConn* cc, const RequestHead& h) {
    if (snap->waf == nullptr || h.body == BodyKind::kNone) return true;
    if (h.body == BodyKind::kContentLength && h.contentLength == 0) return true;
    const control::RouteRuntime* route = snap->matchRoute(h.host, routePath(h.target));
    if (route == nullptr || !route->waf) return true;
    if (cc->ep.rq.size() >= kMaxHeldBuffers * 4 - 1) return true;  // inspect what is here
    const control::WafConfig& w = snap->config.waf;
    const size_t have = bufferedBytes(cc->ep) - h.headBytes;
    if (h.body == BodyKind::kContentLength) {
      if (h.contentLength > w.requestBodyLimit && w.bodyLimitReject) return true;  // 413
      return have >= std::min<uint64_t>(h.contentLength, w.requestBodyLimit);
    }
    // Chunked: ready once the body ends or its payload passes the limit.
    const std::string_view all = assembleBuffered(cc->ep, h.headBytes + have);
    ChunkedDecoder d;
    size_t consumed = 0;
    const auto r = d.feed(all.data() + h.headBytes, all.size() - h.headBytes, consumed);
    return r != ChunkedDecoder::Result::kNeedMore || d.payloadBytes() > w.requestBodyLimit;
  }

  static std::string_view routePath(std::string_view target) {
    if (!target.empty() && target.front() != '/') {
      size_t scheme = target.find("://");
      size_t slash = scheme == std::string_view::npos ? std::string_view::npos
                                                       : target.find('/', scheme + 3);
      return slash == std::string_view::npos ? std::string_view("/") : target.substr(slash);
    }
    return target;
  }

  // Chunk payload of `framed` (chunked coding already checked or cut short),
  // at most `limit` bytes into out; true when it was cut.
  static bool dechunk(std::string_view framed, size_t limit, std::string& out) {
    out.clear();
    size_t p = 0;
    while (p < framed.size()) {
      size_t eol = framed.find("\r\n", p);
      if (eol == std::string_view::npos) return true;
      uint64_t size = 0;
      size_t i = p;
      for (; i < eol && std::isxdigit(static_cast<unsigned char>(framed[i])); ++i) {
        const char ch = framed[i];
        size = size * 16 + static_cast<uint64_t>(ch <= '9' ? ch - '0' : (ch | 0x20) - 'a' + 10);
        if (size > (uint64_t{1} << 40)) return true;
      }
      if (size == 0) return false;
      p = eol + 2;
      const size_t take = static_cast<size_t>(std::min<uint64_t>(size, framed.size() - p));
      if (out.size() + take > limit) {
        out.append(framed.substr(p, limit - out.size()));
        return true;
      }
      out.append(framed.substr(p, take));
      if (take < size) return true;
      p += take + 2;
    }
    return true;
  }

  // Runs the WAF over the request (head, and body as buffered). Returns false
  // when the request was answered here (refused); the connection then closes,
  // since the body was not read to its end.
  bool admitWaf(ClientConn* cc, const RequestHead& h) {
    const control::WafConfig& w = snap->config.waf;
    waf::RequestView rv;
    rv.method = h.method;
    rv.target = h.target;
    rv.protocol = h.versionMinor == 0 ? "HTTP/1.0" : "HTTP/1.1";
    for (uint32_t i = 0; i < h.headerCount; ++i) {
      rv.headers.emplace_back(h.headers[i].name, h.headers[i].value);
    }
    if (h.body == BodyKind::kContentLength && h.contentLength > 0) {
      const size_t want = static_cast<size_t>(std::min<uint64_t>(h.contentLength, w.requestBodyLimit));
      const std::string_view all = assembleBuffered(cc->ep, h.headBytes + want);
      rv.body = all.size() > h.headBytes ? all.substr(h.headBytes) : std::string_view();
      rv.bodyTruncated = h.contentLength > rv.body.size();
    } else if (h.body == BodyKind::kChunked) {
      const std::string_view all = assembleBuffered(cc->ep, bufferedBytes(cc->ep));
      rv.bodyTruncated = dechunk(all.substr(h.headBytes), w.requestBodyLimit, wafBody);
      rv.body = wafBody;
    }
    rv.remoteAddr = cc->ip;
    rv.remotePort = cc->peerPort;
    rv.serverPort = cc->listener < snap->config.listeners.size()
                        ? snap->config.listeners[cc->listener].port
                        : 0;
    rv.requestId = cc->requestId;
    const waf::Verdict& v = wafTx.evaluate(*snap->waf, rv);
    ++c.wafInspected;
    c.wafRuleMatches += v.matched.size();
    for (const auto& m : v.matched) ++wafRuleHits[m.id];  // one entry per rule id ever matched
    if (v.bodyError) ++c.wafBodyErrors;
    if (v.bodyLimitExceeded) ++c.wafBodyLimit;
    if (!v.matched.empty() && opts.wafAuditFd >= 0) {
      if (auditBuf.size() > (1u << 20)) {
        ++c.wafAuditDropped;
      } else {
        auditBuf += waf::auditJson(rv, v, snap->waf->mode());
        auditBuf += '\n';
      }
    }
    if (v.wouldIntervene) {
      ++c.wafDetected;
      cc->logWaf = "detected:" + std::to_string(v.ruleId);
    }
    if (!v.intervene) return true;
    ++c.wafBlocked;
    cc->logWaf = "blocked:" + std::to_string(v.ruleId);
    consume(cc->ep, h.headBytes);
    if (v.status == 0) {  // drop
      account(cc, 0, "dropped by the web application firewall");
      closeClient(cc);
      return false;
    }
    sendError(cc, v.status, "request refused by the web application firewall (rule " +
                                std::to_string(v.ruleId) + ", request id " + cc->requestId + ")",
              true);
    return false;
  }

  // Geo policy of the listener, before rate limiting. The client is the
  // connection's peer (or PROXY source), or the X-Forwarded-For hop that
  // rateLimit.trustedProxies vouch for. CIDR allow beats CIDR deny beats the
  // country rule. Returns false when the request was answered here (403).
  // Cost: a few binary searches; no allocation.
  bool admitGeo(ClientConn* cc, const RequestHead& h, const control::ListenerGeoRuntime& g) {
    l4::IpAddress client = cc->peer;
    const ratelimit::Rules& rules = snap->rateLimit;
    if (!rules.trustedProxies.empty()) {
      size_t n = 0;
      for (uint32_t i = 0; i < h.headerCount && n < std::size(xffValues); ++i) {
        if (iequals(h.headers[i].name, "x-forwarded-for")) xffValues[n++] = h.headers[i].value;
      }
      bool invalid = false;
      client = ratelimit::resolveClient(rules.trustedProxies, cc->peer,
                                        std::span<const std::string_view>(xffValues, n), &invalid);
    }
    if (g.allow.contains(client)) return true;
    uint16_t country = snap->geo != nullptr ? snap->geo->lookup(client.bytes, client.len) : 0;
    bool blocked = g.deny.contains(client);
    if (!blocked) {
      bool listed = country != 0 && std::binary_search(g.countries.begin(), g.countries.end(), country);
      blocked = g.allowMode ? !listed : listed;
    }
    if (!blocked) return true;
    ++c.geoBlocked;
    ++geoBlocked[country];
    cc->logGeo = country != 0 ? control::countryString(country) : std::string("unknown");
    consume(cc->ep, h.headBytes);
    sendError(cc, 403, "request refused by the geo policy of this listener (country " + cc->logGeo + ")",
              false);
    return false;
  }

  // Rate limiting, before any backend work. Returns false when the request
  // was answered here (403/429); the head is then consumed.
  bool admitRateLimit(ClientConn* cc, const RequestHead& h, std::string_view path,
                      const control::RouteRuntime& route) {
    const ratelimit::Rules& rules = snap->rateLimit;
    ratelimit::RequestInfo ri;
    ri.listener = cc->listener;
    ri.host = h.host;
    ri.path = path;
    ri.route = route.name;
    ri.client = cc->peer;
    if (!rules.trustedProxies.empty()) {
      size_t n = 0;
      for (uint32_t i = 0; i < h.headerCount && n < std::size(xffValues); ++i) {
        if (iequals(h.headers[i].name, "x-forwarded-for")) xffValues[n++] = h.headers[i].value;
      }
      bool invalid = false;
      ri.client = ratelimit::resolveClient(rules.trustedProxies, cc->peer,
                                           std::span<const std::string_view>(xffValues, n), &invalid);
      if (invalid) ++c.xffInvalid;
    }
    ri.headers.ctx = &h;
    ri.headers.forEach = [](const void* ctx, std::string_view name,
                            bool (*fn)(void*, std::string_view), void* fnCtx) {
      const auto* head = static_cast<const RequestHead*>(ctx);
      for (uint32_t i = 0; i < head->headerCount; ++i) {
        if (iequals(head->headers[i].name, name) && fn(fnCtx, head->headers[i].value)) return true;
      }
      return false;
    };
    ratelimit::Verdict v = ratelimit::evaluate(rules, *opts.rateLimitTable, ri, loop->nowNs());
    for (size_t i = 0; i < rules.rules.size() && i < rlCounterPtr.size(); ++i) {
      if ((v.matched >> i & 1) == 0) continue;
      ++rlCounterPtr[i]->checked;
      if ((v.limited >> i & 1) == 0) continue;
      ++rlCounterPtr[i]->limited;
      if (rules.rules[i].dryRun) {
        ++c.rateLimitDryRun;
        if (cc->logRateLimit.empty()) cc->logRateLimit.append("dry-run:").append(rules.rules[i].name);
      }
    }
    if (v.escalated) ++c.rateLimitEscalations;
    switch (v.action) {
      case ratelimit::Action::kAllow:
        ratelimit::appendHeaders(v, cc->rlHeaders);
        return true;
      case ratelimit::Action::kDeny:
        ++c.rateLimitDenyListed;
        consume(cc->ep, h.headBytes);
        sendError(cc, 403, "client address is denied", false);
        return false;
      case ratelimit::Action::kBanned:
      case ratelimit::Action::kLimit: {
        if (v.action == ratelimit::Action::kBanned) {
          ++c.rateLimitBanned;
          cc->logRateLimit.assign("banned");
        } else {
          ++c.rateLimited;
          cc->logRateLimit.assign(v.rule->name);
          char key[128];
          size_t n = ratelimit::describeKey(*v.rule, ri, key, sizeof key);
          ratelimit::KeyHash kh = ratelimit::hashKey(v.rule->seed, std::string_view(key, n));
          topOffenders.add(kh.lo, v.rule->name, std::string_view(key, n));
        }
        ratelimit::appendHeaders(v, cc->rlHeaders);
        consume(cc->ep, h.headBytes);
        sendError(cc, 429,
                  v.action == ratelimit::Action::kBanned
                      ? std::string_view("client is banned for repeated rate-limit violations")
                      : std::string_view("rate limit exceeded"),
                  false, cc->rlHeaders);
        return false;
      }
    }
    return true;
  }

  // Gives the request an upstream connection: a pooled one if possible.
  bool attachUpstream(ClientConn* cc, BackendState* b, bool forceNew) {
    UpstreamConn* u = nullptr;
    if (!forceNew) {
      while (!b->idle.empty()) {
        UpstreamConn* cand = &b->idle.front();
        leaveIdle(cand);
        if (cand->ep.eof || !cand->ep.rq.empty()) {
          closeUpstream(cand);
          continue;
        }
        u = cand;
        break;
      }
    }
    cc->upStartMs = now();
    if (u != nullptr) {
      ++c.upstreamReused;
      u->reused = true;
      u->client = cc;
      cc->up = u;
      armTimer(u, TimerKind::kUpstreamResponse, snap->config.timeouts.upstreamResponseMs);
    } else {
      int fd = ::socket(b->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
      if (fd < 0) {
        ++c.upstreamConnectErrors;
        ++b->counters.errors;
        sendError(cc, 502, "backend " + b->key + ": socket: " + strerror(errno), false);
        return false;
      }
      int one = 1;
      setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
      u = allocUpstream();
      u->ep.fd = fd;
      if (b->tls != nullptr) {
        u->ep.tls = TlsConn::client(b->tls, opts.index, b->addr);
        if (u->ep.tls == nullptr) {
          ::close(fd);
          u->ep.fd = -1;
          u->closed = true;
          maybeFreeUpstream(u);
          ++c.upstreamTlsErrors;
          ++b->counters.errors;
          sendError(cc, 502, "backend " + b->key + ": TLS session could not be created", false);
          return false;
        }
      }
      u->backend = b;
      u->client = cc;
      u->connecting = true;
      cc->up = u;
      ++c.upstreamConnects;
      ++u->ep.inflight;
      loop->connect(fd, reinterpret_cast<const sockaddr*>(&b->addr), b->addrLen, &u->ep.auxC);
      armTimer(u, TimerKind::kUpstreamConnect, snap->config.timeouts.connectMs);
    }
    queue(u->ep, cc->reqHeadOut.data(), cc->reqHeadOut.size(), -1);
    if (!u->connecting) flush(u->ep);
    return true;
  }

  void forwardRequestBody(ClientConn* cc) {
    UpstreamConn* u = cc->up;
    if (u == nullptr) return;
    Endpoint& src = cc->ep;
    while (!cc->reqDone && !src.rq.empty()) {
      RecvChunk& ch = src.rq.front();
      const char* p = loop->bufferData(ch.bid) + ch.off;
      size_t take = 0;
      if (cc->reqBody == BodyKind::kContentLength) {
        take = ch.len < cc->reqRemaining ? ch.len : cc->reqRemaining;
        cc->reqRemaining -= take;
        if (cc->reqRemaining == 0) cc->reqDone = true;
      } else {
        ChunkedDecoder::Result r = cc->reqDec.feed(p, ch.len, take);
        if (r == ChunkedDecoder::Result::kError) {
          ++c.parseErrors;
          closeUpstream(u);
          sendError(cc, 400, httpErrorText(HttpError::kBadChunk), true);
          return;
        }
        if (r == ChunkedDecoder::Result::kDone) cc->reqDone = true;
      }
      queue(u->ep, p, take, ch.bid);
      consume(src, take);
    }
    if (!u->connecting) flush(u->ep);
    if (!cc->reqDone) {
      // Re-armed on progress: the timeout bounds silence, not upload time.
      armTimer(cc, TimerKind::kClientBody, snap->config.timeouts.requestHeaderMs);
      if (u->ep.sq.size() >= kMaxQueuedSegments) pauseRecv(src);
    } else if (cc->timer == TimerKind::kClientBody) {
      disarmTimer(cc);
    }
  }

  // ---- upstream side -----------------------------------------------------
  static void onUpAux(Completion* comp, const IoEvent& ev) {
    auto* u = static_cast<UpstreamConn*>(comp->owner);
    Impl* w = u->w;
    --u->ep.inflight;
    if (!u->connecting) {  // a cancel's completion
      u->ep.cancelPending = false;
      w->maybeFreeUpstream(u);
      return;
    }
    u->connecting = false;
    if (u->closed) {
      w->maybeFreeUpstream(u);
      return;
    }
    if (ev.res < 0) {
      ++w->c.upstreamConnectErrors;
      w->upstreamFailed(u, std::string("connect to backend ") + u->backend->key +
                               " failed: " + strerror(-ev.res), false);
      return;
    }
    w->armRecv(u->ep);
    w->flush(u->ep);
    if (u->client != nullptr) {
      w->armTimer(u, TimerKind::kUpstreamResponse, w->snap->config.timeouts.upstreamResponseMs);
    }
  }

  static void onUpSend(Completion* comp, const IoEvent& ev) {
    auto* u = static_cast<UpstreamConn*>(comp->owner);
    Impl* w = u->w;
    u->ep.sendInFlight = false;
    --u->ep.inflight;
    if (u->closed) {
      w->maybeFreeUpstream(u);
      return;
    }
    if (ev.res < 0) {
      w->upstreamFailed(u, std::string("sending to backend ") + u->backend->key +
                               " failed: " + strerror(-ev.res), true);
      return;
    }
    w->sent(u->ep, static_cast<size_t>(ev.res));
    w->flush(u->ep);
    ClientConn* cc = u->client;
    if (cc != nullptr && u->ep.sq.size() < kMaxQueuedSegments / 2) {
      w->resumeRecv(cc->ep);
      if (!cc->reqDone) w->forwardRequestBody(cc);
    }
  }

  static void onUpRecv(Completion* comp, const IoEvent& ev) {
    auto* u = static_cast<UpstreamConn*>(comp->owner);
    Impl* w = u->w;
    if (!w->recvEvent(u->ep, ev, u->closed, nullptr)) {
      w->maybeFreeUpstream(u);
      return;
    }
    if (u->ep.tls != nullptr) {
      if (u->ep.tlsFailed) {
        ++w->c.upstreamTlsErrors;
        w->upstreamFailed(u, "TLS to backend " + u->backend->key + " failed: " + u->ep.tls->error(),
                          false);
        return;
      }
      if (u->ep.tls->takeHandshakeEvent()) ++w->c.upstreamTlsHandshakes;
      if (u->ep.tlsStarved) {
        u->ep.tlsStarved = false;
        w->tlsStarvedUps.push_back(u);
      }
    }
    if (ev.res < 0 && ev.res != -ECANCELED && ev.res != -ENOBUFS) {
      w->upstreamFailed(u, std::string("backend ") + u->backend->key + " failed: " +
                               strerror(-ev.res), true);
      return;
    }
    // Re-arm first: a receive cancelled for back-pressure may end after the
    // exchange finished and the connection went back to the pool.
    if (!u->ep.recvArmed && !u->ep.eof && !u->ep.paused) {
      if (ev.res == -ENOBUFS) {
        w->starvedUp.push_back(u);
      } else {
        w->armRecv(u->ep);
      }
    }
    if (u->client == nullptr) {
      // Idle pooled connection: the backend closed it or sent stray bytes.
      if (u->ep.eof || !u->ep.rq.empty()) w->closeUpstream(u);
      return;
    }
    w->processUpstream(u);
  }

  // The upstream connection failed. Retries once on a fresh connection when
  // a pooled connection died before answering a request without a body (the
  // backend closed it while we picked it); otherwise answers 502.
  void upstreamFailed(UpstreamConn* u, const std::string& why, bool protocol) {
    ClientConn* cc = u->client;
    bool wasReused = u->reused;
    closeUpstream(u);
    if (cc == nullptr) return;
    cc->up = nullptr;
    if (cc->respHeadDone || cc->respStarted) {
      ++c.upstreamResets;
      ++c.clientAborts;
      closeClient(cc);
      return;
    }
    if (wasReused && cc->retryable && !cc->retried && cc->backend != nullptr) {
      cc->retried = true;
      ++c.upstreamRetries;
      attachUpstream(cc, cc->backend, true);
      return;
    }
    if (protocol) ++c.upstreamResets;
    if (cc->backend != nullptr) ++cc->backend->counters.errors;
    sendError(cc, 502, why, false);
  }

  void processUpstream(UpstreamConn* u) {
    ClientConn* cc = u->client;
    while (!cc->respHeadDone) {
      if (u->ep.rq.empty()) {
        if (u->ep.eof) {
          upstreamFailed(u, "backend " + u->backend->key + " closed the connection before responding",
                         true);
        }
        return;
      }
      std::string_view v = headView(u->ep, u->assembly, limits.maxHeaderBytes);
      ResponseHead& h = respHead;
      HttpError err = HttpError::kNone;
      ParseStatus st = parseResponseHead(v.data(), v.size(), limits, cc->reqIsHead, h, err);
      if (st == ParseStatus::kIncomplete) {
        if (u->ep.eof) {
          upstreamFailed(u, "backend " + u->backend->key + " closed the connection mid-header",
                         true);
        }
        return;
      }
      if (st == ParseStatus::kError) {
        ++c.upstreamProtocolErrors;
        cc->retryable = false;
        upstreamFailed(u, "invalid response from backend " + u->backend->key + ": " +
                              httpErrorText(err), false);
        return;
      }
      if (h.status >= 100 && h.status < 200) {
        if (h.status == 101) {  // upgrades are not offered upstream (Upgrade is dropped)
          ++c.upstreamProtocolErrors;
          cc->retryable = false;
          upstreamFailed(u, "backend " + u->backend->key + " switched protocols unasked", false);
          return;
        }
        // Interim response: 100 Continue goes to HTTP/1.1 clients (they may
        // be waiting for it before sending the body); other 1xx (103 Early
        // Hints) are informational and dropped.
        consume(u->ep, h.headBytes);
        if (h.status == 100 && cc->reqMinor >= 1) {
          static constexpr std::string_view k100 = "HTTP/1.1 100 Continue\r\n\r\n";
          queue(cc->ep, k100.data(), k100.size(), -1);
          flush(cc->ep);
        }
        continue;
      }
      cc->status = h.status;
      cc->respBody = h.body;
      cc->respRemaining = h.contentLength;
      cc->respDec.reset();
      cc->upstreamReusable = h.keepAlive && h.body != BodyKind::kUntilClose && cc->reqMinor == 1;
      if (h.body == BodyKind::kUntilClose || cc->ep.eof) cc->keepAlive = false;
      connTokens.collect(h);
      std::string& o = cc->respHeadOut;
      o.clear();
      o.append("HTTP/1.1 ").append(std::to_string(h.status)).append(" ").append(h.reason);
      o.append("\r\n");
      for (uint32_t i = 0; i < h.headerCount; ++i) {
        const HeaderField& f = h.headers[i];
        if (isDroppedResponseHeader(f.name) || connTokens.contains(h, f.name)) continue;
        o.append(f.name).append(": ").append(f.value).append("\r\n");
      }
      if (!cc->keepAlive) o.append("Connection: close\r\n");
      o.append(cc->rlHeaders);
      o.append("\r\n");
      consume(u->ep, h.headBytes);
      cc->respHeadDone = true;
      cc->respStarted = true;
      cc->respDone = h.body == BodyKind::kNone ||
                     (h.body == BodyKind::kContentLength && h.contentLength == 0);
      cc->reqBytesOut += o.size();
      c.bytesOut += o.size();
      queue(cc->ep, o.data(), o.size(), -1);
    }
    // Body bytes.
    while (!cc->respDone && !u->ep.rq.empty()) {
      RecvChunk& ch = u->ep.rq.front();
      const char* p = loop->bufferData(ch.bid) + ch.off;
      size_t take = 0;
      if (cc->respBody == BodyKind::kContentLength) {
        take = ch.len < cc->respRemaining ? ch.len : cc->respRemaining;
        cc->respRemaining -= take;
        if (cc->respRemaining == 0) cc->respDone = true;
      } else if (cc->respBody == BodyKind::kChunked) {
        ChunkedDecoder::Result r = cc->respDec.feed(p, ch.len, take);
        if (r == ChunkedDecoder::Result::kError) {
          ++c.upstreamProtocolErrors;
          flush(cc->ep);
          upstreamFailed(u, "bad chunked body from backend", false);
          return;
        }
        if (r == ChunkedDecoder::Result::kDone) cc->respDone = true;
      } else {
        take = ch.len;
      }
      cc->reqBytesOut += take;
      c.bytesOut += take;
      queue(cc->ep, p, take, ch.bid);
      consume(u->ep, take);
    }
    if (!cc->respDone && u->ep.eof) {
      if (cc->respBody == BodyKind::kUntilClose) {
        cc->respDone = true;
        cc->upstreamReusable = false;
      } else {
        ++c.upstreamResets;
        flush(cc->ep);
        cc->closeAfterFlush = true;
        cc->keepAlive = false;
        closeUpstream(u);
        cc->up = nullptr;
        account(cc, cc->status);
        releaseBackend(cc);
        cc->state = ClientConn::State::kClosing;
        closeWhenDrained(cc);
        return;
      }
    }
    flush(cc->ep);
    if (cc->respDone) {
      finishExchange(cc);
      return;
    }
    armTimer(u, TimerKind::kUpstreamResponse, snap->config.timeouts.upstreamResponseMs);
    if (cc->ep.sq.size() >= kMaxQueuedSegments) pauseRecv(u->ep);
  }

  void finishExchange(ClientConn* cc) {
    UpstreamConn* u = cc->up;
    cc->upEndMs = now();
    account(cc, cc->status);
    BackendState* b = cc->backend;
    releaseBackend(cc);
    cc->up = nullptr;
    if (u != nullptr) {
      u->client = nullptr;
      bool reusable = cc->upstreamReusable && cc->reqDone && u->ep.rq.empty() && !u->ep.eof &&
                      !u->closed && !stopping;
      if (reusable && b != nullptr && b->idleCount >= b->maxIdle) {
        ++c.upstreamIdleClosed;
        reusable = false;
      }
      if (reusable && b != nullptr) {
        u->reused = false;
        b->idle.push_front(*u);
        ++b->idleCount;
        resumeRecv(u->ep);  // watches for the backend closing the idle connection
        armTimer(u, TimerKind::kUpstreamIdle, snap->config.timeouts.idleMs);
      } else {
        closeUpstream(u);
      }
    }
    if (!cc->reqDone || !cc->keepAlive || stopping) {
      cc->closeAfterFlush = true;
      cc->state = ClientConn::State::kClosing;
      closeWhenDrained(cc);
      return;
    }
    cc->state = ClientConn::State::kReadingHead;
    resumeRecv(cc->ep);
    // respHeadOut is still queued; the next request is parsed once the
    // client's queue drains (onClientSend), so it can reuse the strings.
    if (cc->ep.sq.empty()) processClient(cc);
  }

  // ---- timers ------------------------------------------------------------
  void expireTimers() {
    uint64_t t = now();
    for (size_t k = 1; k < static_cast<size_t>(TimerKind::kCount); ++k) {
      auto& cl = clientTimers[k];
      while (!cl.empty() && cl.front().deadline <= t) {
        ClientConn* cc = &cl.front();
        disarmTimer(cc);
        clientTimeout(cc, static_cast<TimerKind>(k));
      }
      auto& ul = upTimers[k];
      while (!ul.empty() && ul.front().deadline <= t) {
        UpstreamConn* u = &ul.front();
        disarmTimer(u);
        upstreamTimeout(u, static_cast<TimerKind>(k));
      }
    }
  }

  void clientTimeout(ClientConn* cc, TimerKind k) {
    if (k == TimerKind::kClientIdle) {
      closeClient(cc);
      return;
    }
    ++c.clientTimeouts;
    if (cc->ep.tls != nullptr && !cc->ep.tls->handshakeDone()) {
      ++c.tlsHandshakeErrors;  // no TLS session to carry a 408 in
      closeClient(cc);
      return;
    }
    cc->reqDone = false;
    sendError(cc, 408, k == TimerKind::kClientHeader ? "request header timeout"
                                                     : "request body timeout", true);
  }

  void upstreamTimeout(UpstreamConn* u, TimerKind k) {
    ClientConn* cc = u->client;
    if (k == TimerKind::kUpstreamIdle || cc == nullptr) {
      closeUpstream(u);
      return;
    }
    std::string key = u->backend->key;
    closeUpstream(u);
    cc->up = nullptr;
    if (cc->backend != nullptr) ++cc->backend->counters.errors;
    if (k == TimerKind::kUpstreamConnect) {
      ++c.upstreamConnectTimeouts;
      sendError(cc, 504, "connect to backend " + key + " timed out", false);
    } else {
      ++c.upstreamResponseTimeouts;
      sendError(cc, 504, "backend " + key + " did not respond within " +
                             std::to_string(snap->config.timeouts.upstreamResponseMs) + " ms",
                false);
    }
  }

  // ---- loop --------------------------------------------------------------
  static void onAcceptC(Completion* comp, const IoEvent& ev) {
    auto* l = static_cast<ListenerState*>(comp->owner);
    currentWorker->onAccept(*l, ev);
  }

  static void onWake(Completion* comp, const IoEvent&) {
    auto* w = static_cast<Impl*>(comp->owner);
    if (w->wakeFd >= 0) w->loop->readEventFd(w->wakeFd, &w->wakeValue, &w->wakeC);
  }

  static thread_local Impl* currentWorker;

  void publishReport() {
    std::lock_guard<std::mutex> lock(reportMu);
    c.loopWaits = loop->stats().submitCalls;
    c.loopCompletions = loop->stats().completions;
    c.recvNoBuffers = loop->stats().recvNoBuffers;
    published.counters = c;
    published.configVersion = snap->configVersion;
    published.latency = latency;
    published.switchLagMaxUs = switchLagMaxUs;
    for (const auto& [id, n] : wafRuleHits) published.wafRules[id] = n;
    for (const auto& [cc, n] : geoBlocked) published.geoBlocked[control::countryString(cc)] = n;
    for (auto& l : listeners) published.listeners[l.name] = l.counters;
    for (auto& [k, v] : routeCounters) published.routes[k] = v;
    for (auto& [k, v] : backends) published.backends[k] = v->counters;
    for (auto& [k, v] : rlCounters) published.rateLimitRules[k] = v;
    published.topOffenders = topOffenders.items();
  }

  // Decrypts what TLS sessions kept for lack of a local buffer, now that
  // the turn's completions have released some. A connection closed (and
  // maybe reused) since is skipped: its session and flag were reset.
  void retryTlsStarved() {
    auto cs = std::move(tlsStarvedClients);
    tlsStarvedClients.clear();
    for (ClientConn* cc : cs) {
      if (cc->closed || cc->ep.tls == nullptr) continue;
      if (!tlsDecrypt(cc->ep)) cc->ep.tlsFailed = true;
      flush(cc->ep);
      if (!tlsClientProgress(cc)) continue;
      if (cc->ep.tlsStarved) {
        cc->ep.tlsStarved = false;
        tlsStarvedClients.push_back(cc);
      }
      if (!cc->ep.rq.empty() || cc->ep.eof) processClient(cc);
    }
    auto us = std::move(tlsStarvedUps);
    tlsStarvedUps.clear();
    for (UpstreamConn* u : us) {
      if (u->closed || u->ep.tls == nullptr) continue;
      if (!tlsDecrypt(u->ep)) {
        ++c.upstreamTlsErrors;
        upstreamFailed(u, "TLS to backend " + u->backend->key + " failed: " + u->ep.tls->error(), false);
        continue;
      }
      flush(u->ep);
      if (u->ep.tlsStarved) {
        u->ep.tlsStarved = false;
        tlsStarvedUps.push_back(u);
      }
      if (u->client != nullptr && (!u->ep.rq.empty() || u->ep.eof)) processUpstream(u);
    }
  }

  void turn(int timeoutMs) {
    const control::Snapshot* s = opts.publisher->acquire(opts.index);
    if (s != snap) switchSnapshot(s);
    loop->runOnce(timeoutMs);
    expireTimers();
    if (!tlsStarvedClients.empty() || !tlsStarvedUps.empty()) retryTlsStarved();
    if (!starved.empty() || !starvedUp.empty()) {
      auto cs = std::move(starved);
      starved.clear();
      for (ClientConn* cc : cs) {
        if (!cc->closed) armRecv(cc->ep);
      }
      auto us = std::move(starvedUp);
      starvedUp.clear();
      for (UpstreamConn* u : us) {
        if (!u->closed) armRecv(u->ep);
      }
    }
    flushAccessLog();
    if (now() >= nextReportMs) {
      nextReportMs = now() + 1000;
      publishReport();
    }
  }
};

thread_local Worker::Impl* Worker::Impl::currentWorker = nullptr;

Worker::Worker(Impl* impl) : impl_(impl) {}

Worker::~Worker() {
  if (impl_ == nullptr) return;
  for (auto& l : impl_->listeners) {
    if (l.fd >= 0) ::close(l.fd);
  }
  if (impl_->wakeFd >= 0) ::close(impl_->wakeFd);
  // The ring goes first (it cancels whatever is still in flight), then the
  // connection objects its completions pointed at.
  impl_->loop.reset();
  for (auto& cc : impl_->allClients) cc->timerHook.unlink();
  for (auto& u : impl_->allUpstreams) {
    u->timerHook.unlink();
    if (u->idleHook.is_linked()) Impl::leaveIdle(u.get());
  }
  delete impl_;
}

std::unique_ptr<Worker> Worker::create(const Options& opts, std::string& err) {
  auto* impl = new Impl();
  std::unique_ptr<Worker> w(new Worker(impl));
  impl->opts = opts;
  dataplane::LoopOptions lo;
  impl->loop = Loop::create(lo, err);
  if (!impl->loop) return nullptr;
  impl->switchSnapshot(opts.publisher->acquire(opts.index));
  const auto& ls = impl->snap->config.listeners;
  impl->listeners.resize(ls.size());
  for (size_t i = 0; i < ls.size(); ++i) {
    ListenerState& l = impl->listeners[i];
    l.index = static_cast<uint32_t>(i);
    l.name = ls[i].name;
    l.fd = openListener(ls[i], err);
    if (l.fd < 0) return nullptr;
    l.acceptC = {&Impl::onAcceptC, &l};
  }
  impl->wakeFd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  impl->wakeC = {&Impl::onWake, impl};
  std::random_device rd;
  impl->rng[0] = (static_cast<uint64_t>(rd()) << 32) ^ rd() ^ opts.index;
  impl->rng[1] = (static_cast<uint64_t>(rd()) << 32) ^ rd() ^ 0x9e3779b97f4a7c15ull;
  impl->logBuf.reserve(1 << 16);
  return w;
}

void Worker::run(uint32_t drainMs) {
  Impl& im = *impl_;
  Impl::currentWorker = &im;
  std::string err;
  if (!im.loop->bindToThisThread(err)) {
    std::fprintf(stderr, "moatd: worker %zu: %s\n", im.opts.index, err.c_str());
    std::abort();
  }
  if (im.wakeFd >= 0) {
    im.opts.publisher->registerWakeFd(im.opts.index, im.wakeFd);
    im.loop->readEventFd(im.wakeFd, &im.wakeValue, &im.wakeC);
  }
  for (auto& l : im.listeners) {
    im.loop->acceptMultishot(l.fd, &l.acceptC);
    l.armed = true;
  }
  while (!im.opts.stop->load(std::memory_order_relaxed)) im.turn(100);

  // Drain: stop accepting, finish requests in flight, close idle clients.
  im.stopping = true;
  for (auto& l : im.listeners) {
    if (l.fd >= 0) {
      ::shutdown(l.fd, SHUT_RDWR);
      ::close(l.fd);
      l.fd = -1;
    }
  }
  uint64_t deadline = im.now() + drainMs;
  while (im.c.connectionsActive > 0 && im.now() < deadline) {
    auto& idle = im.clientTimers[static_cast<size_t>(TimerKind::kClientIdle)];
    while (!idle.empty()) im.closeClient(&idle.front());
    im.turn(20);
  }
  // Past the drain deadline: close what is left, pooled upstreams included,
  // and let their operations complete so nothing is left in flight.
  for (auto& cc : im.allClients) {
    if (!cc->inFree) im.closeClient(cc.get());
  }
  for (auto& u : im.allUpstreams) {
    if (!u->inFree) im.closeUpstream(u.get());
  }
  for (int i = 0; i < 50; ++i) {
    bool busy = false;
    for (auto& cc : im.allClients) busy |= !cc->inFree;
    for (auto& u : im.allUpstreams) busy |= !u->inFree;
    if (!busy) break;
    im.turn(10);
  }
  im.opts.publisher->registerWakeFd(im.opts.index, -1);
  im.publishReport();
  im.opts.publisher->goOffline(im.opts.index);
  Impl::currentWorker = nullptr;
}

WorkerReport Worker::report() const {
  std::lock_guard<std::mutex> lock(impl_->reportMu);
  return impl_->published;
}

}  // namespace moat::l7
