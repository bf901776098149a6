#include "moat/control/health.h"

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509_vfy.h>
#include <poll.h>
#include <pthread.h>
#include <strings.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <random>
#include <string_view>
#include <system_error>
#include <thread>
#include <unordered_map>
#include <utility>

namespace moat::control {

const char* toString(HealthState s) {
  switch (s) {
    case HealthState::kUnknown:
      return "unknown";
    case HealthState::kHealthy:
      return "healthy";
    case HealthState::kUnhealthy:
      return "unhealthy";
  }
  return "unknown";
}

namespace {

// The most response bytes (head and body) read per check; what is read by
// then is judged as if the server had closed.
constexpr size_t kMaxResponseBytes = 64 * 1024;
// Longest the loop sleeps with nothing due (it is woken for any change).
constexpr int64_t kMaxSleepUs = 60'000'000;

int64_t steadyUs() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

int64_t unixMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string errnoText(const char* what, int err) {
  return std::string(what) + ": " + std::strerror(err);
}

// The first queued OpenSSL error's reason (or `fallback`); clears the queue.
std::string sslErrorText(const char* fallback) {
  unsigned long e = ERR_get_error();
  std::string s = fallback;
  if (e != 0) {
    const char* reason = ERR_reason_error_string(e);
    if (reason != nullptr) {
      s = reason;
    } else {
      char buf[256];
      ERR_error_string_n(e, buf, sizeof(buf));
      s = buf;
    }
  }
  ERR_clear_error();
  return s;
}

using SslCtxPtr = std::shared_ptr<SSL_CTX>;

// A client context for https checks, or why there is none. Built on the
// caller's thread of setTargets (loading caFile is file I/O).
struct TlsClient {
  SslCtxPtr ctx;
  std::string error;  // set iff ctx is null: the reason every check fails with
};

// A pool without `tls` (enabled false) accepts any certificate, as config.h
// documents for kHttps checks.
bool verifies(const UpstreamTlsConfig& tls) { return tls.enabled && tls.verify; }

TlsClient makeTlsClient(const UpstreamTlsConfig& tls) {
  ERR_clear_error();
  SSL_CTX* raw = SSL_CTX_new(TLS_client_method());
  if (raw == nullptr) return {nullptr, "tls: SSL_CTX_new: " + sslErrorText("out of memory")};
  SslCtxPtr ctx(raw, SSL_CTX_free);
  SSL_CTX_set_min_proto_version(raw, TLS1_2_VERSION);
  SSL_CTX_set_options(raw, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_TICKET);
  SSL_CTX_set_session_cache_mode(raw, SSL_SESS_CACHE_OFF);
  static const unsigned char kAlpn[] = "\x08http/1.1";
  SSL_CTX_set_alpn_protos(raw, kAlpn, sizeof(kAlpn) - 1);
  if (!verifies(tls)) {
    SSL_CTX_set_verify(raw, SSL_VERIFY_NONE, nullptr);
    return {std::move(ctx), ""};
  }
  if (!tls.caFile.empty()) {
    if (SSL_CTX_load_verify_locations(raw, tls.caFile.c_str(), nullptr) != 1) {
      return {nullptr,
              "tls: cannot load caFile " + tls.caFile + ": " + sslErrorText("no certificate")};
    }
  } else if (SSL_CTX_set_default_verify_paths(raw) != 1) {
    return {nullptr, "tls: no system CA store: " + sslErrorText("unknown error")};
  }
  SSL_CTX_set_verify(raw, SSL_VERIFY_PEER, nullptr);
  return {std::move(ctx), ""};
}

// A target as handed to the checker thread: with its TLS context.
struct Spec {
  HealthTarget target;
  TlsClient tls;
};

// Visible, non-space ASCII only: nothing that could split the request.
bool isRequestToken(std::string_view s) {
  for (char c : s) {
    auto u = static_cast<unsigned char>(c);
    if (u <= 0x20 || u >= 0x7f) return false;
  }
  return !s.empty();
}

std::string formatMs(int64_t us) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.1f", static_cast<double>(us) / 1000.0);
  return buf;
}

// Up to 40 bytes of `s` with anything unprintable as '?': safe to log.
std::string printable(std::string_view s) {
  std::string out(s.substr(0, 40));
  for (char& c : out) {
    auto u = static_cast<unsigned char>(c);
    if (u < 0x20 || u >= 0x7f) c = '?';
  }
  return out;
}

// "HTTP/1.x NNN" followed by the end of the line or a space. Returns the
// status, or -1.
int parseStatusLine(std::string_view line) {
  if (line.size() < 12 || line.substr(0, 7) != "HTTP/1.") return -1;
  if (line[7] < '0' || line[7] > '9' || line[8] != ' ') return -1;
  if (line[9] < '1' || line[9] > '5' || line[10] < '0' || line[10] > '9' || line[11] < '0' ||
      line[11] > '9') {
    return -1;
  }
  if (line.size() > 12 && line[12] != ' ') return -1;
  return (line[9] - '0') * 100 + (line[10] - '0') * 10 + (line[11] - '0');
}

enum class Verdict : uint8_t { kNeedMore, kPass, kFail };

struct Judgement {
  Verdict verdict = Verdict::kNeedMore;
  int status = 0;
  std::string reason;  // kFail only
};

// Judges the response read so far. `ended`: nothing more will be read (the
// peer closed, or kMaxResponseBytes were read).
Judgement judgeResponse(const std::string& resp, bool ended, const HealthCheckConfig& check) {
  const size_t headEnd = resp.find("\r\n\r\n");
  if (headEnd == std::string::npos) {
    if (resp.size() >= kMaxResponseBytes) return {Verdict::kFail, 0, "response head over 64 KiB"};
    if (!ended) return {};
    return {Verdict::kFail, 0,
            resp.empty() ? "connection closed without a response"
                         : "connection closed inside the response head"};
  }
  const std::string_view head(resp.data(), headEnd + 2);  // every line with its CRLF
  const size_t lineEnd = head.find("\r\n");
  const int status = parseStatusLine(head.substr(0, lineEnd));
  if (status < 0) {
    return {Verdict::kFail, 0,
            "malformed status line \"" + printable(head.substr(0, lineEnd)) + "\""};
  }
  // Content-Length, when present, ends the body; otherwise the close does.
  bool haveLength = false;
  uint64_t length = 0;
  for (size_t pos = lineEnd + 2; pos < head.size();) {
    size_t eol = head.find("\r\n", pos);
    std::string_view line = head.substr(pos, eol - pos);
    pos = eol + 2;
    constexpr std::string_view kName = "content-length:";
    if (line.size() < kName.size() || strncasecmp(line.data(), kName.data(), kName.size()) != 0) {
      continue;
    }
    std::string_view v = line.substr(kName.size());
    while (!v.empty() && (v.front() == ' ' || v.front() == '\t')) v.remove_prefix(1);
    while (!v.empty() && (v.back() == ' ' || v.back() == '\t')) v.remove_suffix(1);
    uint64_t n = 0;
    bool ok = !v.empty() && v.size() <= 15;
    for (char c : v) {
      if (c < '0' || c > '9') ok = false;
      n = n * 10 + static_cast<uint64_t>(c - '0');
    }
    if (!ok || (haveLength && n != length)) {
      return {Verdict::kFail, status, "invalid Content-Length \"" + printable(v) + "\""};
    }
    haveLength = true;
    length = n;
  }
  const size_t bodyStart = headEnd + 4;
  const bool noBody = status < 200 || status == 204 || status == 304;
  std::string_view body(resp.data() + bodyStart, resp.size() - bodyStart);
  if (noBody) {
    body = {};
  } else if (haveLength && body.size() >= length) {
    body = body.substr(0, static_cast<size_t>(length));
  } else if (!ended && resp.size() < kMaxResponseBytes) {
    return {};
  }
  if (static_cast<uint32_t>(status) < check.expectStatusMin ||
      static_cast<uint32_t>(status) > check.expectStatusMax) {
    return {Verdict::kFail, status,
            "status " + std::to_string(status) + " not in " +
                std::to_string(check.expectStatusMin) + "-" +
                std::to_string(check.expectStatusMax)};
  }
  if (!check.bodyContains.empty() && body.find(check.bodyContains) == std::string_view::npos) {
    return {Verdict::kFail, status, "body does not contain \"" + check.bodyContains + "\""};
  }
  return {Verdict::kPass, status, ""};
}

enum class Phase : uint8_t { kIdle, kConnecting, kExchanging };

// One target and its check in flight. Owned and touched by the checker
// thread only.
struct Probe {
  HealthTarget target;
  TlsClient tls;
  HealthStatus status;
  size_t index = 0;  // position in Impl::probes and Impl::published
  int64_t nextDueUs = 0;

  // The check in flight (phase != kIdle); reset by endCheck().
  Phase phase = Phase::kIdle;
  int fd = -1;
  SSL* ssl = nullptr;  // https: over memory BIOs, so OpenSSL never touches fd
  int64_t startUs = 0, deadlineUs = 0;
  std::string request;         // http(s): the whole request
  bool requestQueued = false;  // https: request handed to SSL_write
  std::string out;             // bytes owed to the socket (request or TLS records)
  size_t outSent = 0;
  std::string response;        // plaintext response read so far

  Probe() = default;
  Probe(const Probe&) = delete;
  Probe& operator=(const Probe&) = delete;
  ~Probe() { endCheck(); }

  // Closes the socket and frees the check's buffers.
  void endCheck() {
    if (ssl != nullptr) SSL_free(ssl);
    ssl = nullptr;
    if (fd >= 0) ::close(fd);
    fd = -1;
    phase = Phase::kIdle;
    requestQueued = false;
    request.clear();
    request.shrink_to_fit();
    out.clear();
    out.shrink_to_fit();
    outSent = 0;
    response.clear();
    response.shrink_to_fit();
  }
};

std::string identity(const HealthTarget& t) {
  std::string k = t.pool;
  k.push_back('\0');
  k += t.backendKey;
  return k;
}

bool sameTarget(const HealthTarget& a, const HealthTarget& b) {
  return a.pool == b.pool && a.backendKey == b.backendKey && a.check == b.check && a.tls == b.tls;
}

}  // namespace

struct HealthChecker::Impl {
  int wakeFd = -1;    // eventfd: setTargets / stop -> checker thread
  int notifyFd = -1;  // eventfd: checker thread -> reader, after a transition
  std::atomic<uint64_t> generation{0};

  mutable std::mutex mu;
  std::condition_variable applied;  // signalled when appliedSeq advances
  // Guarded by mu.
  bool stop = false;
  bool pendingSet = false;
  std::vector<Spec> pending;
  uint64_t requestedSeq = 0, appliedSeq = 0;
  std::vector<HealthStatus> published;  // parallel to probes
  std::deque<HealthTransition> transitions;
  uint64_t dropped = 0;

  // Checker thread only.
  std::vector<std::unique_ptr<Probe>> probes;
  std::mt19937_64 rng{std::random_device{}()};
  std::vector<pollfd> pollFds;
  std::vector<size_t> pollOwners;  // probe index of pollFds[i], i >= 1

  std::thread thread;

  void wake() const {
    uint64_t one = 1;
    ssize_t r = ::write(wakeFd, &one, sizeof(one));
    (void)r;  // EAGAIN: the counter is saturated, so the thread wakes anyway
  }

  void run();
  void apply(std::vector<Spec> specs, int64_t nowUs);
  void startCheck(Probe& p, int64_t nowUs);
  void onConnected(Probe& p, int64_t nowUs);
  void onEvents(Probe& p, short revents, int64_t nowUs);
  bool driveTls(Probe& p, bool* closed, int64_t nowUs);
  bool flushOut(Probe& p, int64_t nowUs);
  void finish(Probe& p, bool pass, std::string reason, int64_t nowUs);
  int64_t nextDelayUs(const HealthCheckConfig& c);
};

int64_t HealthChecker::Impl::nextDelayUs(const HealthCheckConfig& c) {
  const double interval = static_cast<double>(std::max<uint32_t>(c.intervalMs, 1)) * 1000.0;
  const double j = static_cast<double>(std::min<uint32_t>(c.jitterPct, 100)) / 100.0;
  double u = 0;
  if (j > 0) u = std::uniform_real_distribution<double>(-j, j)(rng);
  return std::max<int64_t>(static_cast<int64_t>(interval * (1.0 + u)), 1000);
}

void HealthChecker::Impl::apply(std::vector<Spec> specs, int64_t nowUs) {
  std::unordered_multimap<std::string, size_t> old;
  old.reserve(probes.size());
  for (size_t i = 0; i < probes.size(); ++i) old.emplace(identity(probes[i]->target), i);

  std::vector<std::unique_ptr<Probe>> next;
  next.reserve(specs.size());
  for (Spec& s : specs) {
    std::unique_ptr<Probe> p;
    auto [lo, hi] = old.equal_range(identity(s.target));
    for (auto it = lo; it != hi; ++it) {
      if (probes[it->second] && sameTarget(probes[it->second]->target, s.target)) {
        p = std::move(probes[it->second]);
        break;
      }
    }
    if (p) {
      // Unchanged: keeps state, schedule and check in flight; takes the
      // freshly loaded TLS context for its next checks (an SSL in flight
      // holds its own reference to the old one).
      p->tls = std::move(s.tls);
    } else {
      p = std::make_unique<Probe>();
      p->target = std::move(s.target);
      p->tls = std::move(s.tls);
      p->status.pool = p->target.pool;
      p->status.backendKey = p->target.backendKey;
      const uint64_t interval = std::max<uint32_t>(p->target.check.intervalMs, 1);
      const auto first = std::uniform_int_distribution<uint64_t>(0, interval * 1000 - 1)(rng);
      p->nextDueUs = nowUs + static_cast<int64_t>(first);
    }
    p->index = next.size();
    next.push_back(std::move(p));
  }
  probes = std::move(next);  // removed probes are destroyed here: sockets closed
}

void HealthChecker::Impl::run() {
  pthread_setname_np(pthread_self(), "moat-health");
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(mu);
      if (stop) break;
      if (pendingSet) {
        std::vector<Spec> specs = std::move(pending);
        pending.clear();
        pendingSet = false;
        const uint64_t seq = requestedSeq;
        lock.unlock();
        apply(std::move(specs), steadyUs());
        std::vector<HealthStatus> snapshot;
        snapshot.reserve(probes.size());
        for (const auto& p : probes) snapshot.push_back(p->status);
        lock.lock();
        published = std::move(snapshot);
        appliedSeq = seq;
        applied.notify_all();
        continue;  // look for stop / another set before any I/O
      }
    }

    int64_t now = steadyUs();
    int64_t wakeAt = now + kMaxSleepUs;
    for (auto& pp : probes) {
      Probe& p = *pp;
      if (p.phase != Phase::kIdle && now >= p.deadlineUs) {
        finish(p, false,
               "timeout after " + std::to_string(std::max<uint32_t>(p.target.check.timeoutMs, 1)) +
                   " ms",
               now);
      }
      if (p.phase == Phase::kIdle && now >= p.nextDueUs) startCheck(p, now);
      wakeAt = std::min(wakeAt, p.phase == Phase::kIdle ? p.nextDueUs : p.deadlineUs);
    }

    pollFds.clear();
    pollOwners.clear();
    pollFds.push_back({wakeFd, POLLIN, 0});
    pollOwners.push_back(0);
    for (const auto& pp : probes) {
      if (pp->phase == Phase::kIdle) continue;
      short events = POLLIN;
      if (pp->phase == Phase::kConnecting || pp->outSent < pp->out.size()) events |= POLLOUT;
      pollFds.push_back({pp->fd, events, 0});
      pollOwners.push_back(pp->index);
    }
    const int64_t waitUs = std::max<int64_t>(wakeAt - now, 0);
    const int timeoutMs = static_cast<int>((waitUs + 999) / 1000);  // round up: never spin
    const int n = ::poll(pollFds.data(), pollFds.size(), timeoutMs);
    if (n <= 0) continue;  // timeout, or EINTR

    if (pollFds[0].revents != 0) {
      uint64_t v;
      ssize_t r = ::read(wakeFd, &v, sizeof(v));
      (void)r;
    }
    now = steadyUs();
    for (size_t i = 1; i < pollFds.size(); ++i) {
      if (pollFds[i].revents == 0) continue;
      Probe& p = *probes[pollOwners[i]];
      // Still the same check: nothing else runs between poll() and here.
      if (p.phase != Phase::kIdle && p.fd == pollFds[i].fd) onEvents(p, pollFds[i].revents, now);
    }
  }
  probes.clear();  // closes every socket in flight
}

void HealthChecker::Impl::startCheck(Probe& p, int64_t nowUs) {
  const HealthTarget& t = p.target;
  p.startUs = nowUs;
  p.deadlineUs = nowUs + static_cast<int64_t>(std::max<uint32_t>(t.check.timeoutMs, 1)) * 1000;
  if (t.check.type != HealthCheckType::kTcp) {
    const std::string& host = t.check.host.empty() ? t.backendKey : t.check.host;
    if (t.check.path.empty() || t.check.path[0] != '/' || !isRequestToken(t.check.path)) {
      return finish(p, false, "invalid path \"" + printable(t.check.path) + "\"", nowUs);
    }
    if (!isRequestToken(host)) {
      return finish(p, false, "invalid host \"" + printable(host) + "\"", nowUs);
    }
    if (t.check.type == HealthCheckType::kHttps && !p.tls.ctx) {
      return finish(p, false, p.tls.error, nowUs);
    }
  }
  const int family = t.addr.ss_family;
  if (t.addrLen == 0 || t.addrLen > sizeof(t.addr) || (family != AF_INET && family != AF_INET6)) {
    return finish(p, false, "no address", nowUs);
  }
  p.fd = ::socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (p.fd < 0) return finish(p, false, errnoText("socket", errno), nowUs);
  p.phase = Phase::kConnecting;
  if (::connect(p.fd, reinterpret_cast<const sockaddr*>(&t.addr), t.addrLen) == 0) {
    return onConnected(p, nowUs);
  }
  if (errno != EINPROGRESS) finish(p, false, errnoText("connect", errno), nowUs);
}

void HealthChecker::Impl::onConnected(Probe& p, int64_t nowUs) {
  const HealthCheckConfig& c = p.target.check;
  if (c.type == HealthCheckType::kTcp) {
    return finish(p, true, "ok: connected in " + formatMs(steadyUs() - p.startUs) + " ms", nowUs);
  }
  p.phase = Phase::kExchanging;
  const std::string& host = c.host.empty() ? p.target.backendKey : c.host;
  p.request = "GET " + c.path + " HTTP/1.1\r\nHost: " + host +
              "\r\nUser-Agent: moat-health/1\r\nConnection: close\r\n\r\n";
  if (c.type == HealthCheckType::kHttp) {
    p.out = p.request;
    flushOut(p, nowUs);
    return;
  }
  ERR_clear_error();
  p.ssl = SSL_new(p.tls.ctx.get());
  BIO* rbio = BIO_new(BIO_s_mem());
  BIO* wbio = BIO_new(BIO_s_mem());
  if (p.ssl == nullptr || rbio == nullptr || wbio == nullptr) {
    BIO_free(rbio);
    BIO_free(wbio);
    return finish(p, false, "tls: " + sslErrorText("out of memory"), nowUs);
  }
  BIO_set_mem_eof_return(rbio, -1);  // empty = "wait for more"; the socket tells EOF
  SSL_set_bio(p.ssl, rbio, wbio);
  SSL_set_connect_state(p.ssl);
  const UpstreamTlsConfig& tls = p.target.tls;
  if (tls.enabled && !tls.sni.empty()) {
    SSL_set_tlsext_host_name(p.ssl, tls.sni.c_str());
    if (verifies(tls)) SSL_set1_host(p.ssl, tls.sni.c_str());
  } else if (verifies(tls)) {
    X509_VERIFY_PARAM* vp = SSL_get0_param(p.ssl);
    if (p.target.addr.ss_family == AF_INET) {
      const auto* a = reinterpret_cast<const sockaddr_in*>(&p.target.addr);
      X509_VERIFY_PARAM_set1_ip(vp, reinterpret_cast<const unsigned char*>(&a->sin_addr), 4);
    } else {
      const auto* a = reinterpret_cast<const sockaddr_in6*>(&p.target.addr);
      X509_VERIFY_PARAM_set1_ip(vp, reinterpret_cast<const unsigned char*>(&a->sin6_addr), 16);
    }
  }
  bool closed = false;
  if (driveTls(p, &closed, nowUs)) flushOut(p, nowUs);
}

// Advances the TLS state machine over what the read BIO holds: handshake,
// then the request, then plaintext into p.response; queues whatever TLS
// records it produced into p.out. Returns false when the check finished.
// Sets *closed when the server sent close_notify.
bool HealthChecker::Impl::driveTls(Probe& p, bool* closed, int64_t nowUs) {
  ERR_clear_error();
  if (!SSL_is_init_finished(p.ssl)) {
    const int r = SSL_do_handshake(p.ssl);
    if (r != 1) {
      const int e = SSL_get_error(p.ssl, r);
      if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) {
        const long v = SSL_get_verify_result(p.ssl);
        std::string reason =
            v != X509_V_OK
                ? std::string("tls: certificate verify failed: ") + X509_verify_cert_error_string(v)
                : "tls: " + sslErrorText("handshake failed");
        ERR_clear_error();
        finish(p, false, std::move(reason), nowUs);
        return false;
      }
    }
  }
  if (SSL_is_init_finished(p.ssl)) {
    if (!p.requestQueued) {
      // A memory BIO takes everything: one call queues the whole request.
      if (SSL_write(p.ssl, p.request.data(), static_cast<int>(p.request.size())) <= 0) {
        finish(p, false, "tls: write: " + sslErrorText("failed"), nowUs);
        return false;
      }
      p.requestQueued = true;
    }
    char buf[16384];
    while (p.response.size() < kMaxResponseBytes) {
      const size_t room = std::min(sizeof(buf), kMaxResponseBytes - p.response.size());
      const int r = SSL_read(p.ssl, buf, static_cast<int>(room));
      if (r > 0) {
        p.response.append(buf, static_cast<size_t>(r));
        continue;
      }
      const int e = SSL_get_error(p.ssl, r);
      if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) break;
      if (e == SSL_ERROR_ZERO_RETURN) {
        *closed = true;
        break;
      }
      finish(p, false, "tls: read: " + sslErrorText("failed"), nowUs);
      return false;
    }
  }
  BIO* wbio = SSL_get_wbio(p.ssl);
  char rec[16384];
  while (BIO_ctrl_pending(wbio) > 0) {
    const int n = BIO_read(wbio, rec, sizeof(rec));
    if (n <= 0) break;
    p.out.append(rec, static_cast<size_t>(n));
  }
  return true;
}

// Writes what p.out still owes to the socket, without blocking. Returns false
// when the check finished (a send error).
bool HealthChecker::Impl::flushOut(Probe& p, int64_t nowUs) {
  while (p.outSent < p.out.size()) {
    const ssize_t n =
        ::send(p.fd, p.out.data() + p.outSent, p.out.size() - p.outSent, MSG_NOSIGNAL);
    if (n > 0) {
      p.outSent += static_cast<size_t>(n);
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      return true;  // POLLOUT is asked for while bytes are owed
    } else {
      finish(p, false, errnoText("send", n < 0 ? errno : EPIPE), nowUs);
      return false;
    }
  }
  p.out.clear();
  p.outSent = 0;
  return true;
}

void HealthChecker::Impl::onEvents(Probe& p, short revents, int64_t nowUs) {
  if (p.phase == Phase::kConnecting) {
    int err = 0;
    socklen_t len = sizeof(err);
    if (::getsockopt(p.fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
    if (err != 0) return finish(p, false, errnoText("connect", err), nowUs);
    if ((revents & POLLOUT) != 0) return onConnected(p, nowUs);
    if ((revents & (POLLERR | POLLHUP)) != 0) {
      return finish(p, false, "connect: connection closed", nowUs);
    }
    return;
  }

  if ((revents & POLLOUT) != 0 && !flushOut(p, nowUs)) return;

  // Read what the socket has: plaintext straight into the response, TLS
  // records into the read BIO.
  bool closed = false;
  int readErr = 0;
  char buf[16384];
  for (;;) {
    if (p.ssl == nullptr && p.response.size() >= kMaxResponseBytes) break;
    const size_t room =
        p.ssl != nullptr ? sizeof(buf)
                         : std::min(sizeof(buf), kMaxResponseBytes - p.response.size());
    const ssize_t n = ::recv(p.fd, buf, room, 0);
    if (n > 0) {
      if (p.ssl != nullptr) {
        BIO_write(SSL_get_rbio(p.ssl), buf, static_cast<int>(n));
        if (!driveTls(p, &closed, nowUs)) return;
        if (closed || p.response.size() >= kMaxResponseBytes) break;
      } else {
        p.response.append(buf, static_cast<size_t>(n));
      }
    } else if (n == 0) {
      closed = true;
      break;
    } else if (errno == EINTR) {
      continue;
    } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
      break;
    } else {
      // e.g. ECONNRESET right after a complete response: judge what arrived.
      readErr = errno;
      closed = true;
      break;
    }
  }
  if (p.ssl != nullptr && !SSL_is_init_finished(p.ssl)) {
    if (closed) {
      return finish(p, false,
                    readErr != 0 ? errnoText("tls: recv", readErr)
                                 : "tls: connection closed during the handshake",
                    nowUs);
    }
    flushOut(p, nowUs);
    return;
  }
  const bool ended = closed || p.response.size() >= kMaxResponseBytes;
  Judgement j = judgeResponse(p.response, ended, p.target.check);
  switch (j.verdict) {
    case Verdict::kNeedMore:
      if (p.ssl != nullptr) flushOut(p, nowUs);
      return;
    case Verdict::kPass:
      return finish(p, true,
                    "ok: " + std::to_string(j.status) + " in " + formatMs(steadyUs() - p.startUs) +
                        " ms",
                    nowUs);
    case Verdict::kFail:
      if (readErr != 0 && j.status == 0) return finish(p, false, errnoText("recv", readErr), nowUs);
      return finish(p, false, std::move(j.reason), nowUs);
  }
}

void HealthChecker::Impl::finish(Probe& p, bool pass, std::string reason, int64_t nowUs) {
  p.endCheck();
  p.nextDueUs = nowUs + nextDelayUs(p.target.check);
  HealthStatus& s = p.status;
  const int64_t wallMs = unixMs();
  const HealthState from = s.state;
  const uint32_t rise = std::max<uint32_t>(p.target.check.rise, 1);
  const uint32_t fall = std::max<uint32_t>(p.target.check.fall, 1);
  ++s.checks;
  s.lastCheckUnixMs = wallMs;
  if (pass) {
    ++s.consecutivePasses;
    s.consecutiveFailures = 0;
    if (s.state != HealthState::kHealthy && s.consecutivePasses >= rise) {
      s.state = HealthState::kHealthy;
    }
  } else {
    ++s.failures;
    ++s.consecutiveFailures;
    s.consecutivePasses = 0;
    if (s.state != HealthState::kUnhealthy && s.consecutiveFailures >= fall) {
      s.state = HealthState::kUnhealthy;
    }
  }
  const bool changed = s.state != from;
  if (changed) {
    ++s.transitions;
    s.lastChangeUnixMs = wallMs;
  }
  s.lastResult = std::move(reason);

  std::lock_guard<std::mutex> lock(mu);
  if (p.index < published.size()) published[p.index] = s;
  if (!changed) return;
  if (transitions.size() >= kMaxQueuedTransitions) {
    transitions.pop_front();
    ++dropped;
  }
  transitions.push_back({s.pool, s.backendKey, from, s.state, s.lastResult});
  // Signal first, count second: whoever sees the new generation also finds
  // the fd readable and the transition queued.
  uint64_t one = 1;
  ssize_t r = ::write(notifyFd, &one, sizeof(one));
  (void)r;  // EAGAIN: saturated, still readable
  generation.fetch_add(1, std::memory_order_release);
}

HealthChecker::HealthChecker() : impl_(std::make_unique<Impl>()) {
  impl_->wakeFd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (impl_->wakeFd < 0) throw std::system_error(errno, std::generic_category(), "eventfd");
  impl_->notifyFd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (impl_->notifyFd < 0) {
    const int err = errno;
    ::close(impl_->wakeFd);
    throw std::system_error(err, std::generic_category(), "eventfd");
  }
  try {
    impl_->thread = std::thread([impl = impl_.get()] { impl->run(); });
  } catch (...) {
    ::close(impl_->wakeFd);
    ::close(impl_->notifyFd);
    throw;
  }
}

HealthChecker::~HealthChecker() {
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    impl_->stop = true;
  }
  impl_->wake();
  impl_->thread.join();
  ::close(impl_->wakeFd);
  ::close(impl_->notifyFd);
}

void HealthChecker::setTargets(std::vector<HealthTarget> targets) {
  // One context per distinct (caFile, verifies): a CA file is read once per call.
  std::map<std::pair<std::string, bool>, TlsClient> contexts;
  std::vector<Spec> specs;
  specs.reserve(targets.size());
  for (HealthTarget& t : targets) {
    Spec s;
    if (t.check.type == HealthCheckType::kHttps) {
      auto key = std::make_pair(verifies(t.tls) ? t.tls.caFile : std::string(), verifies(t.tls));
      auto it = contexts.find(key);
      if (it == contexts.end()) it = contexts.emplace(key, makeTlsClient(t.tls)).first;
      s.tls = it->second;
    }
    s.target = std::move(t);
    specs.push_back(std::move(s));
  }
  std::unique_lock<std::mutex> lock(impl_->mu);
  impl_->pending = std::move(specs);
  impl_->pendingSet = true;
  const uint64_t seq = ++impl_->requestedSeq;
  impl_->wake();
  impl_->applied.wait(lock, [&] { return impl_->appliedSeq >= seq || impl_->stop; });
}

std::vector<HealthStatus> HealthChecker::statuses() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->published;
}

std::vector<HealthTransition> HealthChecker::takeTransitions() {
  std::lock_guard<std::mutex> lock(impl_->mu);
  std::vector<HealthTransition> out(std::make_move_iterator(impl_->transitions.begin()),
                                    std::make_move_iterator(impl_->transitions.end()));
  impl_->transitions.clear();
  return out;
}

uint64_t HealthChecker::droppedTransitions() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->dropped;
}

uint64_t HealthChecker::generation() const {
  return impl_->generation.load(std::memory_order_acquire);
}

int HealthChecker::notifyFd() const { return impl_->notifyFd; }

}  // namespace moat::control
