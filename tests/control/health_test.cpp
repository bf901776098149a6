// HealthChecker (control/health.h) against servers this test runs itself on
// 127.0.0.1: plain sockets, and OpenSSL with a CA and leaf made here. Every
// wait is a bounded polling loop on a condition; nothing asserts on timing.
#include "moat/control/health.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace moat::control {
namespace {

using namespace std::chrono_literals;
namespace fs = std::filesystem;

// Long enough for a loaded machine under sanitizers; only a failing test
// waits this long.
constexpr auto kWaitLimit = 15s;

bool waitFor(const std::function<bool()>& cond) {
  const auto deadline = std::chrono::steady_clock::now() + kWaitLimit;
  while (!cond()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(5ms);
  }
  return true;
}

std::string httpResponse(int status, const std::string& body) {
  return "HTTP/1.1 " + std::to_string(status) + " X\r\nContent-Length: " +
         std::to_string(body.size()) + "\r\n\r\n" + body;
}

// ---- certificates ------------------------------------------------------------

struct Pki {
  EVP_PKEY* key = nullptr;
  X509* cert = nullptr;
  Pki() = default;
  Pki(const Pki&) = delete;
  Pki& operator=(const Pki&) = delete;
  ~Pki() {
    X509_free(cert);
    EVP_PKEY_free(key);
  }
};

void addExt(X509* x, X509* issuer, int nid, const char* value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, x, nullptr, nullptr, 0);
  X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value);
  ASSERT_NE(ext, nullptr) << value;
  X509_add_ext(x, ext, -1);
  X509_EXTENSION_free(ext);
}

// A P-256 certificate for `cn`: self-signed CA when issuer is null, else a
// leaf for `sans` signed by issuer.
void makeCert(Pki& out, const char* cn, long serial, const Pki* issuer, const char* sans) {
  out.key = EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256");
  ASSERT_NE(out.key, nullptr);
  out.cert = X509_new();
  X509* x = out.cert;
  X509_set_version(x, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(x), serial);
  X509_gmtime_adj(X509_getm_notBefore(x), -3600);
  X509_gmtime_adj(X509_getm_notAfter(x), 86400);
  X509_set_pubkey(x, out.key);
  X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>(cn), -1, -1, 0);
  X509* issuerCert = issuer != nullptr ? issuer->cert : x;
  X509_set_issuer_name(x, X509_get_subject_name(issuerCert));
  if (issuer == nullptr) {
    addExt(x, x, NID_basic_constraints, "critical,CA:TRUE");
    addExt(x, x, NID_key_usage, "critical,keyCertSign,cRLSign");
  } else {
    addExt(x, issuerCert, NID_basic_constraints, "critical,CA:FALSE");
    addExt(x, issuerCert, NID_subject_alt_name, sans);
  }
  ASSERT_GT(X509_sign(x, issuer != nullptr ? issuer->key : out.key, EVP_sha256()), 0);
}

struct TempDir {
  fs::path dir;
  TempDir() {
    char tmpl[] = "/tmp/moat-health-test-XXXXXX";
    const char* d = mkdtemp(tmpl);
    if (d != nullptr) dir = d;
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  ~TempDir() {
    std::error_code ec;
    if (!dir.empty()) fs::remove_all(dir, ec);
  }
  std::string writePem(const std::string& name, X509* x) const {
    std::string path = (dir / name).string();
    FILE* f = std::fopen(path.c_str(), "w");
    if (f != nullptr) {
      PEM_write_X509(f, x);
      std::fclose(f);
    }
    return path;
  }
};

// ---- a test server -------------------------------------------------------------

// Listens on 127.0.0.1 (an ephemeral port) in its own thread. kRespond: reads
// a request head, answers with the current response and closes (or, with
// keepOpen, waits up to 10 s for the client to close first). kHang: accepts
// and never answers; counts connections the client closed. kRespond handles
// one connection at a time; every blocking call has a socket timeout (2 s,
// 10 s with keepOpen).
class TestServer {
 public:
  enum class Mode { kRespond, kHang };

  explicit TestServer(Mode mode, SSL_CTX* tls = nullptr) : mode_(mode), tls_(tls) {
    listenFd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    ::setsockopt(listenFd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::bind(listenFd_, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
    EXPECT_EQ(::listen(listenFd_, 64), 0);
    socklen_t len = sizeof(a);
    ::getsockname(listenFd_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    thread_ = std::thread([this] { run(); });
  }
  TestServer(const TestServer&) = delete;
  TestServer& operator=(const TestServer&) = delete;
  ~TestServer() {
    stop_ = true;
    thread_.join();
    ::close(listenFd_);
  }

  uint16_t port() const { return port_; }
  void setResponse(std::string raw) {
    std::lock_guard<std::mutex> lock(mu_);
    response_ = std::move(raw);
  }
  void setKeepOpen(bool v) { keepOpen_ = v; }
  // Request heads read; counted before the response is chosen and sent, so
  // a check that saw a response is always counted.
  int requests() const { return requests_; }
  int accepted() const { return accepted_; }
  int closedByClient() const { return closedByClient_; }
  std::string lastRequest() const {
    std::lock_guard<std::mutex> lock(mu_);
    return lastRequest_;
  }
  std::string lastSni() const {
    std::lock_guard<std::mutex> lock(mu_);
    return lastSni_;
  }

 private:
  void run() {
    // A write to a client that already left must not kill the test: SIGPIPE
    // from this thread's own writes stays pending (blocked) instead. The
    // checker's thread is not covered, so a SIGPIPE from it would still show.
    sigset_t pipe;
    sigemptyset(&pipe);
    sigaddset(&pipe, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe, nullptr);
    std::vector<int> hung;
    while (!stop_) {
      std::vector<pollfd> fds{{listenFd_, POLLIN, 0}};
      for (int fd : hung) fds.push_back({fd, POLLIN, 0});
      if (::poll(fds.data(), fds.size(), 20) <= 0) continue;
      for (size_t i = 1; i < fds.size(); ++i) {
        if (fds[i].revents == 0) continue;
        char buf[4096];
        ssize_t n = ::recv(fds[i].fd, buf, sizeof(buf), MSG_DONTWAIT);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)) {
          ++closedByClient_;
          ::close(fds[i].fd);
          hung.erase(std::find(hung.begin(), hung.end(), fds[i].fd));
        }
      }
      if ((fds[0].revents & POLLIN) == 0) continue;
      int fd = ::accept4(listenFd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) continue;
      ++accepted_;
      if (mode_ == Mode::kHang) {
        hung.push_back(fd);
        continue;
      }
      timeval tv{keepOpen_ ? 10 : 2, 0};
      ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
      ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
      serve(fd);
      ::close(fd);
    }
    for (int fd : hung) ::close(fd);
  }

  void serve(int fd) {
    SSL* ssl = nullptr;
    if (tls_ != nullptr) {
      ssl = SSL_new(tls_);
      SSL_set_fd(ssl, fd);
      if (SSL_accept(ssl) != 1) {  // e.g. the checker rejected our certificate
        SSL_free(ssl);
        ERR_clear_error();
        return;
      }
      const char* sni = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
      std::lock_guard<std::mutex> lock(mu_);
      lastSni_ = sni != nullptr ? sni : "";
    }
    auto readSome = [&](char* b, size_t cap) -> long {
      return ssl != nullptr ? SSL_read(ssl, b, static_cast<int>(cap)) : ::recv(fd, b, cap, 0);
    };
    std::string req;
    char buf[4096];
    while (req.find("\r\n\r\n") == std::string::npos && req.size() < 65536) {
      long n = readSome(buf, sizeof(buf));
      if (n <= 0) break;
      req.append(buf, static_cast<size_t>(n));
    }
    std::string resp;
    {
      std::lock_guard<std::mutex> lock(mu_);
      lastRequest_ = req;
      resp = response_;
      ++requests_;
    }
    size_t off = 0;
    while (off < resp.size()) {
      long n = ssl != nullptr
                   ? SSL_write(ssl, resp.data() + off, static_cast<int>(resp.size() - off))
                   : ::send(fd, resp.data() + off, resp.size() - off, MSG_NOSIGNAL);
      if (n <= 0) break;
      off += static_cast<size_t>(n);
    }
    if (keepOpen_) {
      while (readSome(buf, sizeof(buf)) > 0) {
      }
    }
    if (ssl != nullptr) {
      SSL_shutdown(ssl);
      SSL_free(ssl);
      ERR_clear_error();
    }
  }

  const Mode mode_;
  SSL_CTX* const tls_;
  int listenFd_ = -1;
  uint16_t port_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<bool> keepOpen_{false};
  std::atomic<int> requests_{0}, accepted_{0}, closedByClient_{0};
  mutable std::mutex mu_;
  std::string response_ = httpResponse(200, "ok");
  std::string lastRequest_, lastSni_;
  std::thread thread_;
};

// ---- helpers -------------------------------------------------------------------

HealthTarget target(const std::string& pool, uint16_t port, HealthCheckType type) {
  HealthTarget t;
  t.pool = pool;
  t.backendKey = "127.0.0.1:" + std::to_string(port);
  auto* a = reinterpret_cast<sockaddr_in*>(&t.addr);
  a->sin_family = AF_INET;
  a->sin_port = htons(port);
  a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  t.addrLen = sizeof(sockaddr_in);
  t.check.enabled = true;
  t.check.type = type;
  t.check.intervalMs = 50;
  t.check.timeoutMs = 2000;
  t.check.rise = 1;
  t.check.fall = 1;
  return t;
}

std::optional<HealthStatus> statusOf(const HealthChecker& hc, const HealthTarget& t) {
  for (const HealthStatus& s : hc.statuses()) {
    if (s.pool == t.pool && s.backendKey == t.backendKey) return s;
  }
  return std::nullopt;
}

HealthState stateOf(const HealthChecker& hc, const HealthTarget& t) {
  auto s = statusOf(hc, t);
  return s ? s->state : HealthState::kUnknown;
}

// Waits until `t` is in `state`; on failure reports its last status.
::testing::AssertionResult reaches(const HealthChecker& hc, const HealthTarget& t,
                                   HealthState state) {
  if (waitFor([&] { return stateOf(hc, t) == state; })) return ::testing::AssertionSuccess();
  auto s = statusOf(hc, t);
  return ::testing::AssertionFailure()
         << t.pool << "/" << t.backendKey << " never became " << toString(state) << "; now "
         << (s ? toString(s->state) : "absent") << ", last result \""
         << (s ? s->lastResult : "") << "\"";
}

// A port nothing listens on for the whole test: bound, never listening, so
// connecting to it is refused and nobody else can take it meanwhile.
struct ClosedPort {
  int fd = -1;
  uint16_t port = 0;
  ClosedPort() {
    fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
    socklen_t len = sizeof(a);
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
    port = ntohs(a.sin_port);
  }
  ClosedPort(const ClosedPort&) = delete;
  ClosedPort& operator=(const ClosedPort&) = delete;
  ~ClosedPort() { ::close(fd); }
};

bool readable(int fd) {
  pollfd p{fd, POLLIN, 0};
  return ::poll(&p, 1, 0) == 1 && (p.revents & POLLIN) != 0;
}

bool startsWith(const std::string& s, const std::string& prefix) {
  return s.compare(0, prefix.size(), prefix) == 0;
}

// ---- tcp -----------------------------------------------------------------------

TEST(HealthState, Names) {
  EXPECT_STREQ(toString(HealthState::kUnknown), "unknown");
  EXPECT_STREQ(toString(HealthState::kHealthy), "healthy");
  EXPECT_STREQ(toString(HealthState::kUnhealthy), "unhealthy");
}

TEST(HealthTcp, PassesWhenThePortAccepts) {
  TestServer server(TestServer::Mode::kRespond);
  HealthChecker hc;
  HealthTarget t = target("p", server.port(), HealthCheckType::kTcp);
  hc.setTargets({t});
  ASSERT_TRUE(reaches(hc, t, HealthState::kHealthy));
  auto s = statusOf(hc, t);
  ASSERT_TRUE(s);
  EXPECT_TRUE(startsWith(s->lastResult, "ok: connected in ")) << s->lastResult;
  EXPECT_GE(s->checks, 1u);
  EXPECT_EQ(s->failures, 0u);
  EXPECT_GT(s->lastCheckUnixMs, 0);
  EXPECT_GT(s->lastChangeUnixMs, 0);
}

TEST(HealthTcp, FailsOnAClosedPort) {
  ClosedPort closed;
  HealthChecker hc;
  HealthTarget t = target("p", closed.port, HealthCheckType::kTcp);
  hc.setTargets({t});
  ASSERT_TRUE(reaches(hc, t, HealthState::kUnhealthy));
  auto s = statusOf(hc, t);
  ASSERT_TRUE(s);
  EXPECT_EQ(s->lastResult, "connect: Connection refused");
  EXPECT_GE(s->failures, 1u);
  EXPECT_EQ(s->consecutivePasses, 0u);
}

// ---- http ----------------------------------------------------------------------

TEST(HealthHttp, StatusInRangePassesAndSendsTheSpecifiedRequest) {
  TestServer server(TestServer::Mode::kRespond);
  server.setResponse(httpResponse(204, ""));
  HealthChecker hc;
  HealthTarget t = target("p", server.port(), HealthCheckType::kHttp);
  t.check.path = "/healthz?full=1";
  HealthTarget named = target("q", server.port(), HealthCheckType::kHttp);
  named.check.host = "backend.example";
  hc.setTargets({t});
  ASSERT_TRUE(reaches(hc, t, HealthState::kHealthy));
  EXPECT_TRUE(startsWith(statusOf(hc, t)->lastResult, "ok: 204 in "))
      << statusOf(hc, t)->lastResult;
  EXPECT_EQ(server.lastRequest(), "GET /healthz?full=1 HTTP/1.1\r\nHost: " + t.backendKey +
                                      "\r\nUser-Agent: moat-health/1\r\nConnection: close\r\n\r\n");

  hc.setTargets({named});
  ASSERT_TRUE(reaches(hc, named, HealthState::kHealthy));
  EXPECT_EQ(server.lastRequest(),
            "GET / HTTP/1.1\r\nHost: backend.example\r\nUser-Agent: moat-health/1\r\n"
            "Connection: close\r\n\r\n");
}

TEST(HealthHttp, StatusOutOfRangeFails) {
  TestServer server(TestServer::Mode::kRespond);
  server.setResponse(httpResponse(503, "down"));
  HealthChecker hc;
  HealthTarget t = target("p", server.port(), HealthCheckType::kHttp);
  HealthTarget expect5xx = target("q", server.port(), HealthCheckType::kHttp);
  expect5xx.check.expectStatusMin = 500;
  expect5xx.check.expectStatusMax = 503;
  hc.setTargets({t, expect5xx});
  ASSERT_TRUE(reaches(hc, t, HealthState::kUnhealthy));
  EXPECT_EQ(statusOf(hc, t)->lastResult, "status 503 not in 200-399");
  ASSERT_TRUE(reaches(hc, expect5xx, HealthState::kHealthy));
  EXPECT_TRUE(startsWith(statusOf(hc, expect5xx)->lastResult, "ok: 503 in "));
}

TEST(HealthHttp, MalformedStatusLineFails) {
  TestServer server(TestServer::Mode::kRespond);
  server.setResponse("HTTP/1.1 20 OK\r\nContent-Length: 0\r\n\r\n");
  HealthChecker hc;
  HealthTarget t = target("p", server.port(), HealthCheckType::kHttp);
  hc.setTargets({t});
  ASSERT_TRUE(reaches(hc, t, HealthState::kUnhealthy));
  EXPECT_EQ(statusOf(hc, t)->lastResult, "malformed status line \"HTTP/1.1 20 OK\"");
}

TEST(HealthHttp, BodyContains) {
  TestServer server(TestServer::Mode::kRespond);
  server.setResponse(httpResponse(200, "status: all good"));
  HealthChecker hc;
  HealthTarget good = target("good", server.port(), HealthCheckType::kHttp);
  good.check.bodyContains = "all good";
  HealthTarget bad = target("bad", server.port(), HealthCheckType::kHttp);
  bad.check.bodyContains = "ready";
  hc.setTargets({good, bad});
  ASSERT_TRUE(reaches(hc, good, HealthState::kHealthy));
  ASSERT_TRUE(reaches(hc, bad, HealthState::kUnhealthy));
  EXPECT_EQ(statusOf(hc, bad)->lastResult, "body does not contain \"ready\"");
}

// The server keeps the connection open after its response: the check must
// end on Content-Length, not wait for the close (it would time out).
TEST(HealthHttp, ContentLengthEndsTheResponseWithoutAClose) {
  TestServer server(TestServer::Mode::kRespond);
  server.setKeepOpen(true);
  server.setResponse(httpResponse(200, "fine"));
  HealthChecker hc;
  HealthTarget t = target("p", server.port(), HealthCheckType::kHttp);
  t.check.bodyContains = "fine";
  // The server holds on for 10 s: a check waiting for the close times out.
  t.check.timeoutMs = 5000;
  hc.setTargets({t});
  ASSERT_TRUE(reaches(hc, t, HealthState::kHealthy));
  EXPECT_TRUE(startsWith(statusOf(hc, t)->lastResult, "ok: 200 in "));
}

TEST(HealthHttp, ServerThatNeverAnswersTimesOut) {
  TestServer server(TestServer::Mode::kHang);
  HealthChecker hc;
  HealthTarget t = target("p", server.port(), HealthCheckType::kHttp);
  t.check.timeoutMs = 100;
  hc.setTargets({t});
  ASSERT_TRUE(reaches(hc, t, HealthState::kUnhealthy));
  EXPECT_EQ(statusOf(hc, t)->lastResult, "timeout after 100 ms");
  // The timed-out check's socket was closed.
  EXPECT_TRUE(waitFor([&] { return server.closedByClient() >= 1; }));
}

// ---- state machine and transitions -----------------------------------------------

TEST(HealthTransitions, RiseAndFallInOrder) {
  TestServer server(TestServer::Mode::kRespond);
  HealthChecker hc;
  HealthTarget t = target("web", server.port(), HealthCheckType::kHttp);
  t.check.rise = 2;
  t.check.fall = 3;
  hc.setTargets({t});
  EXPECT_EQ(hc.generation(), 0u);

  ASSERT_TRUE(reaches(hc, t, HealthState::kHealthy));
  EXPECT_GE(server.requests(), 2);  // no earlier than `rise` passes
  auto s = statusOf(hc, t);
  EXPECT_GE(s->consecutivePasses, 2u);
  EXPECT_EQ(s->transitions, 1u);

  server.setResponse(httpResponse(503, "maintenance"));
  // Every request counted from here on was answered 503.
  const int requestsBefore = server.requests();
  ASSERT_TRUE(reaches(hc, t, HealthState::kUnhealthy));
  EXPECT_GE(server.requests() - requestsBefore, 3);  // no earlier than `fall` failures
  s = statusOf(hc, t);
  EXPECT_GE(s->consecutiveFailures, 3u);
  EXPECT_EQ(s->consecutivePasses, 0u);
  EXPECT_EQ(s->lastResult, "status 503 not in 200-399");

  server.setResponse(httpResponse(200, "ok"));
  ASSERT_TRUE(reaches(hc, t, HealthState::kHealthy));
  s = statusOf(hc, t);
  EXPECT_EQ(s->transitions, 3u);
  EXPECT_GE(s->failures, 3u);
  EXPECT_EQ(hc.generation(), 3u);

  std::vector<HealthTransition> tr = hc.takeTransitions();
  ASSERT_EQ(tr.size(), 3u);
  EXPECT_EQ(tr[0].from, HealthState::kUnknown);
  EXPECT_EQ(tr[0].to, HealthState::kHealthy);
  EXPECT_EQ(tr[1].from, HealthState::kHealthy);
  EXPECT_EQ(tr[1].to, HealthState::kUnhealthy);
  EXPECT_EQ(tr[1].reason, "status 503 not in 200-399");
  EXPECT_EQ(tr[2].from, HealthState::kUnhealthy);
  EXPECT_EQ(tr[2].to, HealthState::kHealthy);
  EXPECT_TRUE(startsWith(tr[2].reason, "ok: 200 in ")) << tr[2].reason;
}

TEST(HealthTransitions, TakeTransitionsDrainsAndNotifyFdSignals) {
  TestServer server(TestServer::Mode::kRespond);
  ClosedPort closed;
  HealthChecker hc;
  EXPECT_FALSE(readable(hc.notifyFd()));
  HealthTarget up = target("pool-a", server.port(), HealthCheckType::kTcp);
  HealthTarget down = target("pool-b", closed.port, HealthCheckType::kTcp);
  down.check.fall = 2;
  hc.setTargets({up, down});
  ASSERT_TRUE(waitFor([&] { return hc.generation() >= 2; }));
  EXPECT_TRUE(readable(hc.notifyFd()));
  uint64_t count = 0;
  ASSERT_EQ(::read(hc.notifyFd(), &count, sizeof(count)), static_cast<ssize_t>(sizeof(count)));
  EXPECT_GE(count, 1u);
  EXPECT_FALSE(readable(hc.notifyFd()));

  std::vector<HealthTransition> tr = hc.takeTransitions();
  ASSERT_EQ(tr.size(), 2u);
  const HealthTransition* a = tr[0].pool == "pool-a" ? &tr[0] : &tr[1];
  const HealthTransition* b = tr[0].pool == "pool-a" ? &tr[1] : &tr[0];
  EXPECT_EQ(a->pool, "pool-a");
  EXPECT_EQ(a->backendKey, up.backendKey);
  EXPECT_EQ(a->from, HealthState::kUnknown);
  EXPECT_EQ(a->to, HealthState::kHealthy);
  EXPECT_TRUE(startsWith(a->reason, "ok: connected in ")) << a->reason;
  EXPECT_EQ(b->pool, "pool-b");
  EXPECT_EQ(b->backendKey, down.backendKey);
  EXPECT_EQ(b->from, HealthState::kUnknown);
  EXPECT_EQ(b->to, HealthState::kUnhealthy);
  EXPECT_EQ(b->reason, "connect: Connection refused");

  // Drained; steady states make no more transitions.
  EXPECT_TRUE(hc.takeTransitions().empty());
  EXPECT_EQ(hc.droppedTransitions(), 0u);
  EXPECT_EQ(hc.generation(), 2u);
}

// ---- setTargets ----------------------------------------------------------------

TEST(HealthSetTargets, KeepsUnchangedTargetsAndDropsRemovedOnes) {
  TestServer server(TestServer::Mode::kRespond);
  HealthChecker hc;
  HealthTarget kept = target("kept", server.port(), HealthCheckType::kHttp);
  HealthTarget removed = target("removed", server.port(), HealthCheckType::kHttp);
  HealthTarget changed = target("changed", server.port(), HealthCheckType::kHttp);
  hc.setTargets({kept, removed, changed});
  ASSERT_TRUE(reaches(hc, kept, HealthState::kHealthy));
  ASSERT_TRUE(reaches(hc, changed, HealthState::kHealthy));
  const uint64_t keptChecks = statusOf(hc, kept)->checks;

  // The new and the changed target cannot become healthy for minutes (rise
  // 100 at 1 s intervals), so their "unknown" below is not a race.
  HealthTarget changed2 = changed;
  changed2.check.path = "/other";
  changed2.check.intervalMs = 1000;
  changed2.check.rise = 100;
  HealthTarget added = target("added", server.port(), HealthCheckType::kHttp);
  added.check.intervalMs = 1000;
  added.check.rise = 100;
  hc.setTargets({added, changed2, kept});

  std::vector<HealthStatus> st = hc.statuses();
  ASSERT_EQ(st.size(), 3u);  // in the order given, "removed" gone
  EXPECT_EQ(st[0].pool, "added");
  EXPECT_EQ(st[0].state, HealthState::kUnknown);
  EXPECT_EQ(st[0].transitions, 0u);
  EXPECT_EQ(st[1].pool, "changed");  // a changed check starts over
  EXPECT_EQ(st[1].state, HealthState::kUnknown);
  EXPECT_EQ(st[1].transitions, 0u);
  EXPECT_EQ(st[2].pool, "kept");  // state and counters carried over
  EXPECT_EQ(st[2].state, HealthState::kHealthy);
  EXPECT_GE(st[2].checks, keptChecks);
  EXPECT_EQ(st[2].transitions, 1u);

  // "kept" goes on being checked.
  EXPECT_TRUE(waitFor([&] { return statusOf(hc, kept)->checks > keptChecks + 2; }));
  EXPECT_FALSE(statusOf(hc, removed));

  hc.setTargets({});
  EXPECT_TRUE(hc.statuses().empty());
}

TEST(HealthSetTargets, RemovingATargetMidCheckClosesItsSocket) {
  TestServer server(TestServer::Mode::kHang);
  HealthChecker hc;
  HealthTarget t = target("p", server.port(), HealthCheckType::kHttp);
  t.check.timeoutMs = 60000;  // the first check (within 50 ms) stays in flight
  hc.setTargets({t});
  ASSERT_TRUE(waitFor([&] { return server.accepted() >= 1; }));
  EXPECT_EQ(server.closedByClient(), 0);
  hc.setTargets({});
  EXPECT_TRUE(waitFor([&] { return server.closedByClient() >= 1; }));
}

TEST(HealthSetTargets, DestructorClosesChecksInFlight) {
  TestServer server(TestServer::Mode::kHang);
  {
    HealthChecker hc;
    HealthTarget t = target("p", server.port(), HealthCheckType::kHttp);
    t.check.timeoutMs = 60000;
    hc.setTargets({t});
    ASSERT_TRUE(waitFor([&] { return server.accepted() >= 1; }));
  }
  EXPECT_TRUE(waitFor([&] { return server.closedByClient() >= 1; }));
}

// ---- https ---------------------------------------------------------------------

class HealthHttps : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_FALSE(dir_.dir.empty());
    makeCert(ca_, "Moat Health Test CA", 1, nullptr, nullptr);
    makeCert(otherCa_, "Some Other CA", 2, nullptr, nullptr);
    makeCert(leaf_, "backend", 3, &ca_, "IP:127.0.0.1,DNS:backend.test");
    caFile_ = dir_.writePem("ca.pem", ca_.cert);
    otherCaFile_ = dir_.writePem("other-ca.pem", otherCa_.cert);
    serverCtx_ = SSL_CTX_new(TLS_server_method());
    ASSERT_NE(serverCtx_, nullptr);
    ASSERT_EQ(SSL_CTX_use_certificate(serverCtx_, leaf_.cert), 1);
    ASSERT_EQ(SSL_CTX_use_PrivateKey(serverCtx_, leaf_.key), 1);
    server_ = std::make_unique<TestServer>(TestServer::Mode::kRespond, serverCtx_);
    server_->setResponse(httpResponse(200, "secure ok"));
  }
  void TearDown() override {
    server_.reset();
    SSL_CTX_free(serverCtx_);
  }

  HealthTarget httpsTarget(const std::string& pool, const std::string& caFile,
                           const std::string& sni = "") {
    HealthTarget t = target(pool, server_->port(), HealthCheckType::kHttps);
    t.tls.enabled = true;
    t.tls.caFile = caFile;
    t.tls.verify = true;
    t.tls.sni = sni;
    t.check.bodyContains = "secure ok";
    return t;
  }

  TempDir dir_;
  Pki ca_, otherCa_, leaf_;
  std::string caFile_, otherCaFile_;
  SSL_CTX* serverCtx_ = nullptr;
  std::unique_ptr<TestServer> server_;
};

TEST_F(HealthHttps, PassesWhenVerifiedAgainstTheTestCa) {
  HealthChecker hc;
  HealthTarget byIp = httpsTarget("by-ip", caFile_);
  hc.setTargets({byIp});
  ASSERT_TRUE(reaches(hc, byIp, HealthState::kHealthy));
  EXPECT_TRUE(startsWith(statusOf(hc, byIp)->lastResult, "ok: 200 in "));
  EXPECT_EQ(server_->lastSni(), "");

  HealthTarget byName = httpsTarget("by-name", caFile_, "backend.test");
  hc.setTargets({byName});
  ASSERT_TRUE(reaches(hc, byName, HealthState::kHealthy));
  EXPECT_EQ(server_->lastSni(), "backend.test");
}

TEST_F(HealthHttps, FailsWithTheWrongCaOrName) {
  HealthChecker hc;
  HealthTarget wrongCa = httpsTarget("wrong-ca", otherCaFile_);
  HealthTarget wrongName = httpsTarget("wrong-name", caFile_, "other.test");
  HealthTarget missingCa = httpsTarget("missing-ca", (dir_.dir / "nope.pem").string());
  hc.setTargets({wrongCa, wrongName, missingCa});
  ASSERT_TRUE(reaches(hc, wrongCa, HealthState::kUnhealthy));
  ASSERT_TRUE(reaches(hc, wrongName, HealthState::kUnhealthy));
  ASSERT_TRUE(reaches(hc, missingCa, HealthState::kUnhealthy));
  EXPECT_TRUE(startsWith(statusOf(hc, wrongCa)->lastResult, "tls: certificate verify failed: "))
      << statusOf(hc, wrongCa)->lastResult;
  EXPECT_EQ(statusOf(hc, wrongName)->lastResult,
            "tls: certificate verify failed: hostname mismatch");
  EXPECT_TRUE(startsWith(statusOf(hc, missingCa)->lastResult, "tls: cannot load caFile "))
      << statusOf(hc, missingCa)->lastResult;
}

TEST_F(HealthHttps, WithoutVerificationAnyCertificatePasses) {
  HealthChecker hc;
  HealthTarget noVerify = httpsTarget("no-verify", otherCaFile_);
  noVerify.tls.verify = false;
  HealthTarget poolWithoutTls = httpsTarget("pool-without-tls", otherCaFile_, "other.test");
  poolWithoutTls.tls.enabled = false;  // config.h: kHttps then accepts any certificate
  hc.setTargets({noVerify, poolWithoutTls});
  ASSERT_TRUE(reaches(hc, noVerify, HealthState::kHealthy));
  ASSERT_TRUE(reaches(hc, poolWithoutTls, HealthState::kHealthy));
}

}  // namespace
}  // namespace moat::control
