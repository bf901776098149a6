#include "worker.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <queue>
#include <ctime>
#include <vector>

#include "moat/dataplane/loop.h"
#include "moat/l7/http_parser.h"

namespace moat::bench {

using dataplane::Completion;
using dataplane::IoEvent;
using dataplane::Loop;

namespace {

constexpr uint64_t kSec = 1000000000ULL;
constexpr uint64_t kReconnectDelayNs = 10 * 1000000ULL;  // after a failed connect
constexpr uint64_t kTimeoutScanNs = 10 * 1000000ULL;

struct InFlight {
  uint64_t startNs = 0;  // latency origin: intended (open loop), connect (new conn) or send time
  uint64_t sentNs = 0;   // when the bytes were queued (timeouts count from here)
  const MixEntry* entry = nullptr;
};

enum class ConnState : uint8_t { kIdle, kConnecting, kHandshaking, kReady, kClosing };

struct Conn {
  Worker::Impl* w = nullptr;
  uint32_t index = 0;   // within the worker
  uint32_t global = 0;  // across workers
  int fd = -1;
  ConnState state = ConnState::kIdle;
  uint32_t pendingOps = 0;  // io_uring operations whose final completion is pending
  bool recvArmed = false;
  bool sendBusy = false;
  bool failed = false;      // the session ended in an error (no quiet reconnect accounting)
  Completion connectC, recvC, sendC, cancelC;

  SSL* ssl = nullptr;
  BIO* rbio = nullptr;  // owned by ssl
  BIO* wbio = nullptr;

  // Send side: either a pointer into an immutable mix entry (plain, nothing
  // queued) or the `sending` buffer; `out` collects what comes next.
  const char* sendPtr = nullptr;
  size_t sendLen = 0;
  std::string sending;
  std::string out;

  // Receive side: unparsed plaintext.
  std::string in;

  // Requests in flight, oldest first (ring of opts.pipeline entries).
  std::vector<InFlight> ring;
  uint32_t head = 0, count = 0;

  // Current response.
  bool haveHead = false;
  int status = 0;
  l7::BodyKind body = l7::BodyKind::kNone;
  uint64_t remaining = 0;
  bool keepAlive = true;
  uint64_t respBytes = 0;
  l7::ChunkedDecoder chunked;

  uint64_t sessionStartNs = 0;  // connect issued (latency origin for new-connection modes)
  uint64_t nextDueNs = 0;       // open loop: intended time of the next request
  uint64_t timerFor = 0;        // due time a heap entry exists for (0 = none)
  uint32_t sessionRequests = 0; // requests sent on this connection
};

struct TimerEntry {
  uint64_t due;
  uint32_t conn;
  bool operator>(const TimerEntry& o) const { return due > o.due; }
};

}  // namespace

struct Worker::Impl {
  const Options& o;
  RunClock& clock;
  uint32_t index;
  uint32_t firstConn;
  Stats stats;
  std::unique_ptr<Loop> loop;
  std::vector<Conn> conns;
  SSL_CTX* ctx = nullptr;
  SSL_SESSION* session = nullptr;  // latest ticket, for --tls-mode resume
  std::priority_queue<TimerEntry, std::vector<TimerEntry>, std::greater<TimerEntry>> timers;
  l7::ResponseHead scratch;
  l7::ParseLimits limits;
  uint64_t rng;
  uint64_t intervalNs = 0;  // open loop: per-connection request interval
  uint64_t sourceCounter = 0;
  bool stopping = false;
  // Time of the current loop turn (Loop::nowNs, refreshed after each wait):
  // every completion handler reloads it first, so latency never carries the
  // previous turn's wait.
  uint64_t now = 0;
  char plain[16384];

  Impl(const Options& opts, RunClock& c, uint32_t idx, uint32_t first, uint32_t n)
      : o(opts), clock(c), index(idx), firstConn(first), conns(n) {
    rng = 0x9e3779b97f4a7c15ULL * (idx + 1);
    for (uint32_t i = 0; i < n; ++i) {
      Conn& k = conns[i];
      k.w = this;
      k.index = i;
      k.global = first + i;
      k.ring.resize(o.pipeline);
      k.connectC = {&onConnect, &k};
      k.recvC = {&onRecv, &k};
      k.sendC = {&onSend, &k};
      k.cancelC = {&onCancel, &k};
    }
  }

  ~Impl() {
    for (auto& k : conns) {
      if (k.ssl != nullptr) SSL_free(k.ssl);
      if (k.fd >= 0) ::close(k.fd);
    }
    if (session != nullptr) SSL_SESSION_free(session);
    if (ctx != nullptr) SSL_CTX_free(ctx);
  }

  uint64_t nextRandom() {  // xorshift64*
    rng ^= rng >> 12;
    rng ^= rng << 25;
    rng ^= rng >> 27;
    return rng * 2685821657736338717ULL;
  }

  bool measuring(uint64_t t) const { return t >= clock.measureStartNs && t < clock.endNs; }

  // ---- TLS ---------------------------------------------------------------

  // Keeps a copy of the newest ticket: the connection's own session object
  // is marked not resumable when that SSL is freed without a close_notify
  // (how benchmark connections end), so it must not be the one reused.
  static int onNewSession(SSL* ssl, SSL_SESSION* sess) {
    auto* self = static_cast<Impl*>(SSL_get_app_data(ssl));
    if (self == nullptr || self->o.tlsMode != TlsMode::kResume) return 0;
    SSL_SESSION* copy = SSL_SESSION_dup(sess);
    if (copy == nullptr) return 0;
    if (self->session != nullptr) SSL_SESSION_free(self->session);
    self->session = copy;
    return 0;  // OpenSSL keeps its reference to `sess`
  }

  bool makeTlsContext(std::string& err) {
    ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == nullptr) {
      err = "moat-bench: SSL_CTX_new failed";
      return false;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    static const unsigned char alpn[] = {8, 'h', 't', 't', 'p', '/', '1', '.', '1'};
    SSL_CTX_set_alpn_protos(ctx, alpn, sizeof(alpn));
    if (!o.caFile.empty()) {
      if (SSL_CTX_load_verify_locations(ctx, o.caFile.c_str(), nullptr) != 1) {
        err = "moat-bench: --cafile " + o.caFile + ": cannot load CA certificates";
        return false;
      }
      SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
    } else {
      SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, nullptr);
    }
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(ctx, &onNewSession);
    return true;
  }

  // ---- connection lifecycle ----------------------------------------------

  void open(Conn& k) {
    k.fd = ::socket(o.target.addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (k.fd < 0) {
      noteConnectError(k, errno);
      return;
    }
    int one = 1;
    setsockopt(k.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (o.source.count != 0) {
      setsockopt(k.fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
      sockaddr_in src{};
      src.sin_family = AF_INET;
      src.sin_addr.s_addr = htonl(o.source.addressAt(index + sourceCounter * o.threads));
      ++sourceCounter;
      if (::bind(k.fd, reinterpret_cast<sockaddr*>(&src), sizeof(src)) != 0) {
        int e = errno;
        ::close(k.fd);
        k.fd = -1;
        noteConnectError(k, e);
        return;
      }
    }
    k.state = ConnState::kConnecting;
    k.sessionStartNs = now;
    k.sessionRequests = 0;
    k.failed = false;
    k.haveHead = false;
    k.in.clear();
    k.out.clear();
    k.sendLen = 0;
    k.count = 0;
    k.head = 0;
    ++k.pendingOps;
    loop->connect(k.fd, reinterpret_cast<const sockaddr*>(&o.target.addr), o.target.addrLen, &k.connectC);
  }

  void noteConnectError(Conn& k, int e) {
    stats.errConnect.fetch_add(1, std::memory_order_relaxed);
    stats.lastConnectError = std::strerror(e);
    k.state = ConnState::kIdle;
    armTimer(k, now + kReconnectDelayNs);
  }

  static void onConnect(Completion* c, const IoEvent& ev) {
    Conn& k = *static_cast<Conn*>(c->owner);
    k.w->now = k.w->loop->nowNs();  // this turn's clock, not the previous one
    Impl& w = *k.w;
    --k.pendingOps;
    if (k.state == ConnState::kClosing) {  // cancelled by a stop or a timeout
      w.maybeFinishClose(k);
      return;
    }
    if (ev.res < 0) {
      w.stats.errConnect.fetch_add(1, std::memory_order_relaxed);
      w.stats.lastConnectError = std::strerror(-ev.res);
      k.failed = true;
      w.beginClose(k);
      return;
    }
    w.stats.connects.fetch_add(1, std::memory_order_relaxed);
    if (w.stopping) {
      w.beginClose(k);
      return;
    }
    k.recvArmed = true;
    ++k.pendingOps;
    w.loop->recvMultishot(k.fd, &k.recvC);
    if (w.o.target.tls) {
      k.state = ConnState::kHandshaking;
      k.ssl = SSL_new(w.ctx);
      k.rbio = BIO_new(BIO_s_mem());
      k.wbio = BIO_new(BIO_s_mem());
      SSL_set_bio(k.ssl, k.rbio, k.wbio);
      SSL_set_app_data(k.ssl, &w);
      if (!w.o.sni.empty()) SSL_set_tlsext_host_name(k.ssl, w.o.sni.c_str());
      if (w.o.tlsMode == TlsMode::kResume && w.session != nullptr) SSL_set_session(k.ssl, w.session);
      SSL_set_connect_state(k.ssl);
      w.driveHandshake(k);
    } else {
      k.state = ConnState::kReady;
      w.pump(k);
    }
  }

  // Shuts the socket down so every pending operation completes, cancels
  // them, and closes the fd once the last one has (see finishClose).
  void beginClose(Conn& k) {
    if (k.state == ConnState::kClosing || k.fd < 0) {
      maybeFinishClose(k);
      return;
    }
    k.state = ConnState::kClosing;
    ::shutdown(k.fd, SHUT_RDWR);
    ++k.pendingOps;
    loop->cancelFd(k.fd, &k.cancelC);
  }

  static void onCancel(Completion* c, const IoEvent&) {
    Conn& k = *static_cast<Conn*>(c->owner);
    k.w->now = k.w->loop->nowNs();  // this turn's clock, not the previous one
    --k.pendingOps;
    k.w->maybeFinishClose(k);
  }

  void maybeFinishClose(Conn& k) {
    if (k.pendingOps != 0 || k.fd < 0) return;
    ::close(k.fd);
    k.fd = -1;
    if (k.ssl != nullptr) {
      SSL_free(k.ssl);
      k.ssl = nullptr;
      k.rbio = k.wbio = nullptr;
    }
    k.state = ConnState::kIdle;
    k.sendBusy = false;
    k.recvArmed = false;
    k.sendLen = 0;
    k.count = 0;
    if (stopping) return;
    if (k.failed && k.sessionRequests == 0) {
      armTimer(k, now + kReconnectDelayNs);  // connect or handshake failed: back off
    } else if (intervalNs != 0) {
      pump(k);  // open loop: reopen now if a request is due, else at its time
    } else {
      open(k);
    }
  }

  // Requests in flight are lost: count them once each under `kind`.
  void failInFlight(Conn& k, std::atomic<uint64_t>& kind) {
    if (k.count != 0) kind.fetch_add(k.count, std::memory_order_relaxed);
    k.count = 0;
    k.failed = true;
    beginClose(k);
  }

  // ---- sending -----------------------------------------------------------

  // Issues as many requests as the mode allows now; arms a timer for the
  // next open-loop one. Opens the connection first when it is idle.
  void pump(Conn& k) {
    if (stopping) return;
    if (intervalNs != 0) {
      if (k.nextDueNs > now) {
        armTimer(k, k.nextDueNs);
        return;
      }
    }
    if (k.state == ConnState::kIdle) {
      open(k);
      return;
    }
    if (k.state != ConnState::kReady) return;
    if (o.closeEach && k.sessionRequests != 0) return;
    uint32_t depth = o.closeEach ? 1 : o.pipeline;
    while (k.count < depth) {
      uint64_t origin;
      if (intervalNs != 0) {
        if (k.nextDueNs > now) {
          armTimer(k, k.nextDueNs);
          break;
        }
        origin = k.nextDueNs;
        k.nextDueNs += intervalNs;
      } else {
        origin = (o.closeEach && k.sessionRequests == 0) ? k.sessionStartNs : now;
      }
      const MixEntry& e = o.mix.pick(nextRandom());
      InFlight& f = k.ring[(k.head + k.count) % depth];
      f.startNs = origin;
      f.sentNs = now;
      f.entry = &e;
      ++k.count;
      ++k.sessionRequests;
      queueBytes(k, e.wire.data(), e.wire.size());
      if (o.closeEach) break;
    }
    flush(k);
  }

  void queueBytes(Conn& k, const char* p, size_t n) {
    if (k.ssl != nullptr) {
      int r = SSL_write(k.ssl, p, static_cast<int>(n));
      if (r <= 0) {
        stats.errTls.fetch_add(1, std::memory_order_relaxed);
        failInFlight(k, stats.errClosed);
        return;
      }
      drainTls(k);
    } else if (!k.sendBusy && k.sendLen == 0 && k.out.empty()) {
      k.sendPtr = p;  // immutable mix bytes: no copy
      k.sendLen = n;
    } else {
      k.out.append(p, n);
    }
  }

  void drainTls(Conn& k) {
    char buf[16384];
    int n;
    while ((n = BIO_read(k.wbio, buf, sizeof(buf))) > 0) k.out.append(buf, static_cast<size_t>(n));
  }

  void flush(Conn& k) {
    if (k.sendBusy || k.fd < 0 || k.state == ConnState::kClosing) return;
    if (k.sendLen == 0) {
      if (k.out.empty()) return;
      k.sending.swap(k.out);
      k.out.clear();
      k.sendPtr = k.sending.data();
      k.sendLen = k.sending.size();
    }
    k.sendBusy = true;
    ++k.pendingOps;
    loop->send(k.fd, k.sendPtr, k.sendLen, &k.sendC);
  }

  static void onSend(Completion* c, const IoEvent& ev) {
    Conn& k = *static_cast<Conn*>(c->owner);
    k.w->now = k.w->loop->nowNs();  // this turn's clock, not the previous one
    Impl& w = *k.w;
    --k.pendingOps;
    k.sendBusy = false;
    if (k.state == ConnState::kClosing) {
      w.maybeFinishClose(k);
      return;
    }
    if (ev.res <= 0) {
      w.failInFlight(k, w.stats.errClosed);
      return;
    }
    size_t sent = static_cast<size_t>(ev.res);
    k.sendPtr += sent;
    k.sendLen -= std::min(sent, k.sendLen);
    w.flush(k);
  }

  // ---- receiving ---------------------------------------------------------

  static void onRecv(Completion* c, const IoEvent& ev) {
    Conn& k = *static_cast<Conn*>(c->owner);
    k.w->now = k.w->loop->nowNs();  // this turn's clock, not the previous one
    Impl& w = *k.w;
    if (!ev.more) {
      --k.pendingOps;
      k.recvArmed = false;
    }
    if (ev.bufferId >= 0) {
      if (k.state != ConnState::kClosing && ev.res > 0) {
        w.onBytes(k, w.loop->bufferData(ev.bufferId), static_cast<size_t>(ev.res));
      }
      w.loop->releaseBuffer(ev.bufferId);
    }
    if (k.state == ConnState::kClosing) {
      w.maybeFinishClose(k);
      return;
    }
    if (ev.res == 0) {  // peer closed
      w.onEof(k);
      return;
    }
    if (ev.res < 0) {
      if (ev.res == -ENOBUFS) {  // buffer ring ran dry: re-arm
        if (!ev.more && k.fd >= 0) {
          k.recvArmed = true;
          ++k.pendingOps;
          w.loop->recvMultishot(k.fd, &k.recvC);
        }
        return;
      }
      if (k.state == ConnState::kHandshaking) w.stats.errTls.fetch_add(1, std::memory_order_relaxed);
      w.failInFlight(k, w.stats.errClosed);
      return;
    }
    if (!ev.more && k.state != ConnState::kClosing && k.fd >= 0) {  // multishot ended early
      k.recvArmed = true;
      ++k.pendingOps;
      w.loop->recvMultishot(k.fd, &k.recvC);
    }
  }

  void onEof(Conn& k) {
    if (k.state == ConnState::kHandshaking) {
      stats.errTls.fetch_add(1, std::memory_order_relaxed);
      k.failed = true;
      beginClose(k);
      return;
    }
    if (k.haveHead && k.body == l7::BodyKind::kUntilClose && k.count != 0) {
      completeResponse(k);  // close-delimited body ends here
      if (k.state != ConnState::kClosing) beginClose(k);
      return;
    }
    if (k.count != 0) {
      failInFlight(k, stats.errClosed);
      return;
    }
    beginClose(k);  // idle keep-alive connection closed by the server: reopen quietly
  }

  void driveHandshake(Conn& k) {
    int r = SSL_do_handshake(k.ssl);
    drainTls(k);
    if (r == 1) {
      if (SSL_session_reused(k.ssl)) stats.resumedHandshakes.fetch_add(1, std::memory_order_relaxed);
      else stats.fullHandshakes.fetch_add(1, std::memory_order_relaxed);
      k.state = ConnState::kReady;
      pump(k);  // queues the request and flushes with the last handshake flight
      if (k.state == ConnState::kReady) flush(k);
      return;
    }
    int e = SSL_get_error(k.ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
      flush(k);
      return;
    }
    stats.errTls.fetch_add(1, std::memory_order_relaxed);
    ERR_clear_error();
    k.failed = true;
    flush(k);
    beginClose(k);
  }

  void onBytes(Conn& k, const char* p, size_t n) {
    if (k.ssl == nullptr) {
      consume(k, p, n);
      return;
    }
    BIO_write(k.rbio, p, static_cast<int>(n));
    if (k.state == ConnState::kHandshaking) {
      driveHandshake(k);
      if (k.state != ConnState::kReady) return;
    }
    for (;;) {
      int r = SSL_read(k.ssl, plain, sizeof(plain));
      if (r > 0) {
        consume(k, plain, static_cast<size_t>(r));
        if (k.state != ConnState::kReady) return;
        continue;
      }
      int e = SSL_get_error(k.ssl, r);
      if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) break;
      if (e == SSL_ERROR_ZERO_RETURN) {
        onEof(k);
        return;
      }
      ERR_clear_error();
      stats.errTls.fetch_add(1, std::memory_order_relaxed);
      failInFlight(k, stats.errClosed);
      return;
    }
    drainTls(k);  // session tickets, key updates
    flush(k);
  }

  // Parses responses out of plaintext bytes: in place while nothing is
  // buffered, so a whole response in one read is never copied.
  void consume(Conn& k, const char* p, size_t n) {
    if (!k.in.empty()) {
      k.in.append(p, n);
      size_t used = parse(k, k.in.data(), k.in.size());
      if (k.state == ConnState::kClosing || k.fd < 0) return;
      k.in.erase(0, used);
    } else {
      size_t used = parse(k, p, n);
      if (k.state == ConnState::kClosing || k.fd < 0) return;
      if (used < n) k.in.assign(p + used, n - used);
    }
  }

  // Returns bytes consumed; may close the connection.
  size_t parse(Conn& k, const char* p, size_t n) {
    size_t off = 0;
    while (off < n || (k.haveHead && k.body == l7::BodyKind::kNone)) {
      if (k.count == 0) {
        if (off < n) {  // bytes nobody asked for
          stats.errParse.fetch_add(1, std::memory_order_relaxed);
          k.failed = true;
          beginClose(k);
        }
        return n;
      }
      if (!k.haveHead) {
        l7::HttpError err;
        const InFlight& f = k.ring[k.head];
        auto st = l7::parseResponseHead(p + off, n - off, limits, f.entry->head, scratch, err);
        if (st == l7::ParseStatus::kIncomplete) return off;
        if (st == l7::ParseStatus::kError) {
          failInFlight(k, stats.errParse);
          return n;
        }
        off += scratch.headBytes;
        k.respBytes = scratch.headBytes;
        if (scratch.status >= 100 && scratch.status < 200 && scratch.status != 101) continue;  // interim
        k.haveHead = true;
        k.status = scratch.status;
        k.body = scratch.body;
        k.remaining = scratch.contentLength;
        k.keepAlive = scratch.keepAlive;
        k.chunked.reset();
      }
      switch (k.body) {
        case l7::BodyKind::kNone:
          break;
        case l7::BodyKind::kContentLength: {
          size_t take = static_cast<size_t>(std::min<uint64_t>(k.remaining, n - off));
          off += take;
          k.remaining -= take;
          k.respBytes += take;
          if (k.remaining != 0) return off;
          break;
        }
        case l7::BodyKind::kChunked: {
          size_t used = 0;
          auto r = k.chunked.feed(p + off, n - off, used);
          if (r == l7::ChunkedDecoder::Result::kError) {
            failInFlight(k, stats.errParse);
            return n;
          }
          off += used;
          k.respBytes += used;
          if (r == l7::ChunkedDecoder::Result::kNeedMore) return off;
          break;
        }
        case l7::BodyKind::kUntilClose:
          k.respBytes += n - off;
          return n;  // ends at EOF (onEof)
      }
      completeResponse(k);
      if (k.state != ConnState::kReady) return n;
    }
    return off;
  }

  void completeResponse(Conn& k) {
    uint32_t depth = o.closeEach ? 1 : o.pipeline;
    const InFlight f = k.ring[k.head];
    k.head = (k.head + 1) % depth;
    --k.count;
    k.haveHead = false;
    if (measuring(now) && !clock.stop.load(std::memory_order_relaxed)) {
      stats.requests.fetch_add(1, std::memory_order_relaxed);
      stats.bytes.fetch_add(k.respBytes, std::memory_order_relaxed);
      int cls = k.status / 100;
      if (cls >= 1 && cls <= 5) stats.status[cls - 1].fetch_add(1, std::memory_order_relaxed);
      stats.latencyNs.record(now > f.startNs ? now - f.startNs : 0);
      if (clock.requestLimit != 0) {
        uint64_t m = clock.measured.fetch_add(1, std::memory_order_relaxed) + 1;
        if (m >= clock.requestLimit) {
          uint64_t zero = 0;
          clock.limitReachedNs.compare_exchange_strong(zero, now);
          clock.stop.store(true, std::memory_order_relaxed);
        }
      }
    }
    if (!k.keepAlive || o.closeEach) {
      if (k.count != 0) failInFlight(k, stats.errClosed);  // pipelined behind a close
      else beginClose(k);
      return;
    }
    pump(k);
  }

  // ---- timers ------------------------------------------------------------

  void armTimer(Conn& k, uint64_t due) {
    if (k.timerFor == due) return;
    k.timerFor = due;
    timers.push({due, k.index});
  }

  void runTimers() {
    while (!timers.empty() && timers.top().due <= now) {
      TimerEntry t = timers.top();
      timers.pop();
      Conn& k = conns[t.conn];
      if (k.timerFor != t.due) continue;  // superseded
      k.timerFor = 0;
      if (k.state == ConnState::kIdle || k.state == ConnState::kReady) pump(k);
    }
  }

  void scanTimeouts() {
    uint64_t limit = static_cast<uint64_t>(o.timeoutS * 1e9);
    for (auto& k : conns) {
      if (k.state == ConnState::kClosing || k.state == ConnState::kIdle) continue;
      bool late = false;
      if (k.count != 0) late = now - k.ring[k.head].sentNs > limit;
      else if (k.state == ConnState::kConnecting || k.state == ConnState::kHandshaking)
        late = now - k.sessionStartNs > limit;
      if (!late) continue;
      if (k.count != 0) {
        failInFlight(k, stats.errTimeout);
      } else {
        stats.errTimeout.fetch_add(1, std::memory_order_relaxed);
        k.failed = true;
        beginClose(k);
      }
    }
  }

  bool run(std::string& err) {
    dataplane::LoopOptions lo;  // 4096 x 16 KiB provided buffers; no local ones (nothing to fill)
    lo.localBufferCount = 0;
    loop = Loop::create(lo, err);
    if (!loop) return false;
    if (!loop->bindToThisThread(err)) return false;
    if (o.target.tls && !makeTlsContext(err)) return false;
    // Everyone starts at clock.startNs, so no worker's connections get ahead.
    for (;;) {
      loop->runOnceNs(0);
      now = loop->nowNs();
      if (now >= clock.startNs) break;
      uint64_t left = clock.startNs - now;
      timespec ts{static_cast<time_t>(left / kSec), static_cast<long>(left % kSec)};
      nanosleep(&ts, nullptr);
    }
    uint32_t total = o.connections;
    if (o.rate > 0) {
      intervalNs = static_cast<uint64_t>(static_cast<double>(total) / o.rate * 1e9);
      if (intervalNs == 0) intervalNs = 1;
    }
    // Connections start together; open-loop ones are phased across the
    // interval so the aggregate schedule is smooth.
    for (auto& k : conns) {
      k.nextDueNs = clock.startNs + (intervalNs == 0 ? 0 : intervalNs * k.global / total);
      pump(k);
    }
    uint64_t nextScan = now + kTimeoutScanNs;
    for (;;) {
      uint64_t wait = 100 * 1000000ULL;
      if (!timers.empty()) wait = timers.top().due > now ? std::min(wait, timers.top().due - now) : 0;
      if (clock.endNs > now) wait = std::min(wait, clock.endNs - now);
      loop->runOnceNs(wait);
      now = loop->nowNs();
      runTimers();
      if (now >= nextScan) {
        scanTimeouts();
        nextScan = now + kTimeoutScanNs;
      }
      if (now >= clock.endNs || clock.stop.load(std::memory_order_relaxed)) break;
    }
    // Stop: no new requests; close every connection and wait (bounded) for
    // their operations to finish so no Completion outlives this worker.
    stopping = true;
    for (auto& k : conns) {
      if (k.fd >= 0) beginClose(k);
    }
    uint64_t deadline = now + 2 * kSec;
    for (;;) {
      bool busy = false;
      for (auto& k : conns) busy |= k.fd >= 0;
      if (!busy || now >= deadline) break;
      loop->runOnceNs(10 * 1000000ULL);
      now = loop->nowNs();
    }
    return true;
  }
};

Worker::Worker(const Options& opts, RunClock& clock, uint32_t index, uint32_t firstConn, uint32_t conns)
    : impl_(std::make_unique<Impl>(opts, clock, index, firstConn, conns)) {}
Worker::~Worker() = default;
bool Worker::run(std::string& err) { return impl_->run(err); }
Stats& Worker::stats() { return impl_->stats; }

}  // namespace moat::bench
