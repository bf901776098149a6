// The io_uring L4 proxy against real sockets on 127.0.0.1 and ::1: echo
// backends on threads, the worker on its own thread, Tables built by hand.
// Waits are bounded polls for a condition, never timing assertions.
#include "moat/l4/sock_proxy.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <future>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "moat/l4/maglev.h"
#include "moat/l4/pick.h"

namespace moat::l4 {
namespace {

using namespace std::chrono_literals;

// Polls `pred` every 5 ms for up to ~10 s.
template <class Pred>
bool waitFor(Pred pred) {
  for (int i = 0; i < 2000; ++i) {
    if (pred()) return true;
    std::this_thread::sleep_for(5ms);
  }
  return pred();
}

struct Addr {
  sockaddr_storage ss{};
  socklen_t len = 0;
  int family() const { return ss.ss_family; }
  uint16_t port() const {
    return ntohs(family() == AF_INET ? reinterpret_cast<const sockaddr_in*>(&ss)->sin_port
                                     : reinterpret_cast<const sockaddr_in6*>(&ss)->sin6_port);
  }
  const sockaddr* sa() const { return reinterpret_cast<const sockaddr*>(&ss); }
  std::string key() const {
    char buf[INET6_ADDRSTRLEN] = {};
    if (family() == AF_INET) {
      inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in*>(&ss)->sin_addr, buf, sizeof(buf));
      return std::string(buf) + ":" + std::to_string(port());
    }
    inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_in6*>(&ss)->sin6_addr, buf, sizeof(buf));
    return "[" + std::string(buf) + "]:" + std::to_string(port());
  }
};

Addr loopback(int family, uint16_t port) {
  Addr a;
  if (family == AF_INET) {
    auto* s = reinterpret_cast<sockaddr_in*>(&a.ss);
    s->sin_family = AF_INET;
    s->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    s->sin_port = htons(port);
    a.len = sizeof(sockaddr_in);
  } else {
    auto* s = reinterpret_cast<sockaddr_in6*>(&a.ss);
    s->sin6_family = AF_INET6;
    s->sin6_addr = in6addr_loopback;
    s->sin6_port = htons(port);
    a.len = sizeof(sockaddr_in6);
  }
  return a;
}

Addr localOf(int fd) {
  Addr a;
  a.len = sizeof(a.ss);
  getsockname(fd, reinterpret_cast<sockaddr*>(&a.ss), &a.len);
  return a;
}

// A loopback address with a port nobody uses right now (bound, then freed).
Addr freeAddr(int family, int type) {
  int fd = socket(family, type, 0);
  Addr a = loopback(family, 0);
  EXPECT_EQ(bind(fd, a.sa(), a.len), 0);
  Addr out = localOf(fd);
  close(fd);
  return out;
}

void setRecvTimeout(int fd) {
  timeval tv{};
  tv.tv_sec = 10;
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
}

bool writeAll(int fd, const char* p, size_t n) {
  while (n > 0) {
    ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

// Reads up to and including '\n'. Empty on EOF or error.
std::string readLine(int fd) {
  std::string s;
  char ch;
  for (;;) {
    ssize_t n = recv(fd, &ch, 1, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n != 1) return s;
    s.push_back(ch);
    if (ch == '\n') return s;
  }
}

// Reads until the stream ends: 0 on EOF, else the errno (ECONNRESET, ...).
int readToEnd(int fd, std::string* out = nullptr) {
  char buf[65536];
  for (;;) {
    ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n > 0) {
      if (out != nullptr) out->append(buf, static_cast<size_t>(n));
      continue;
    }
    if (n == 0) return 0;
    if (errno == EINTR) continue;
    return errno;
  }
}

// TCP backend: greets each connection with "<key>\n", echoes what it reads,
// and answers "bye\n" after the client's EOF before closing.
class TcpBackend {
 public:
  explicit TcpBackend(int family = AF_INET) {
    lfd_ = socket(family, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(lfd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    Addr a = loopback(family, 0);
    EXPECT_EQ(bind(lfd_, a.sa(), a.len), 0);
    EXPECT_EQ(listen(lfd_, 512), 0);
    addr = localOf(lfd_);
    key = addr.key();
    acceptor_ = std::thread([this] { acceptLoop(); });
  }
  ~TcpBackend() {
    stopping_ = true;
    shutdown(lfd_, SHUT_RDWR);
    acceptor_.join();
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (int fd : fds_) shutdown(fd, SHUT_RDWR);
    }
    for (auto& t : conns_) t.join();
    close(lfd_);
  }

  Addr addr;
  std::string key;
  std::atomic<int> accepted{0};

 private:
  void acceptLoop() {
    for (;;) {
      int fd = accept(lfd_, nullptr, nullptr);
      if (fd < 0) {
        if (stopping_) return;
        continue;
      }
      ++accepted;
      std::lock_guard<std::mutex> lock(mu_);
      fds_.push_back(fd);
      conns_.emplace_back([this, fd] { serve(fd); });
    }
  }
  void serve(int fd) {
    std::string hello = key + "\n";
    if (writeAll(fd, hello.data(), hello.size())) {
      std::vector<char> buf(65536);
      for (;;) {
        ssize_t n = recv(fd, buf.data(), buf.size(), 0);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) break;
        if (n == 0) {
          writeAll(fd, "bye\n", 4);
          break;
        }
        if (!writeAll(fd, buf.data(), static_cast<size_t>(n))) break;
      }
    }
    std::lock_guard<std::mutex> lock(mu_);
    // Closed under the lock so that the destructor never shuts down a
    // descriptor number that was reused.
    for (int& f : fds_) {
      if (f == fd) f = -1;
    }
    close(fd);
  }

  int lfd_ = -1;
  std::atomic<bool> stopping_{false};
  std::thread acceptor_;
  std::mutex mu_;
  std::vector<int> fds_;
  std::vector<std::thread> conns_;
};

// UDP backend: answers each datagram with "<key>:<payload>".
class UdpBackend {
 public:
  UdpBackend() {
    fd_ = socket(AF_INET, SOCK_DGRAM, 0);
    Addr a = loopback(AF_INET, 0);
    EXPECT_EQ(bind(fd_, a.sa(), a.len), 0);
    addr = localOf(fd_);
    key = addr.key();
    thread_ = std::thread([this] { loop(); });
  }
  ~UdpBackend() {
    stopping_ = true;
    thread_.join();
    close(fd_);
  }
  Addr addr;
  std::string key;
  std::atomic<int> received{0};

 private:
  void loop() {
    char buf[2048];
    while (!stopping_) {
      pollfd p{fd_, POLLIN, 0};
      if (poll(&p, 1, 20) <= 0) continue;
      sockaddr_storage from{};
      socklen_t fl = sizeof(from);
      ssize_t n = recvfrom(fd_, buf, sizeof(buf), 0, reinterpret_cast<sockaddr*>(&from), &fl);
      if (n < 0) continue;
      ++received;
      std::string reply = key + ":" + std::string(buf, static_cast<size_t>(n));
      sendto(fd_, reply.data(), reply.size(), 0, reinterpret_cast<sockaddr*>(&from), fl);
    }
  }
  int fd_ = -1;
  std::atomic<bool> stopping_{false};
  std::thread thread_;
};

struct BackendSpec {
  uint32_t id = 0;
  Addr addr;
  uint32_t weight = 1;
  bool inService = true;
};

Service makeService(Protocol proto, const Addr& listen, const std::vector<BackendSpec>& specs,
                    BackendDown onDown = BackendDown::kReset) {
  Service s;
  s.name = "svc";
  s.protocol = proto;
  s.forwarding = Forwarding::kProxy;
  s.onBackendDown = onDown;
  s.listen = listen.ss;
  s.listenLen = listen.len;
  s.port = listen.port();
  if (listen.family() == AF_INET) {
    s.ipVersion = 4;
    std::memcpy(s.vip, &reinterpret_cast<const sockaddr_in*>(&listen.ss)->sin_addr, 4);
  } else {
    s.ipVersion = 6;
    std::memcpy(s.vip, &reinterpret_cast<const sockaddr_in6*>(&listen.ss)->sin6_addr, 16);
  }
  uint32_t maxId = 0;
  for (const BackendSpec& spec : specs) {
    Backend b;
    b.id = spec.id;
    b.key = spec.addr.key();
    b.port = spec.addr.port();
    b.sa = spec.addr.ss;
    b.saLen = spec.addr.len;
    if (spec.addr.family() == AF_INET) {
      b.ipVersion = 4;
      std::memcpy(b.addr, &reinterpret_cast<const sockaddr_in*>(&spec.addr.ss)->sin_addr, 4);
    } else {
      b.ipVersion = 6;
      std::memcpy(b.addr, &reinterpret_cast<const sockaddr_in6*>(&spec.addr.ss)->sin6_addr, 16);
    }
    b.inService = spec.inService;
    b.acceptsNew = spec.inService && spec.weight > 0;
    s.backends.push_back(b);
    maxId = std::max(maxId, spec.id);
  }
  std::vector<MaglevBackend> mb;
  for (size_t i = 0; i < s.backends.size(); ++i) {
    mb.push_back({s.backends[i].key, s.backends[i].acceptsNew ? specs[i].weight : 0});
  }
  s.maglev = buildMaglevTable(mb);
  s.slotById.assign(specs.empty() ? 0 : maxId + 1, -1);
  for (size_t i = 0; i < s.backends.size(); ++i) {
    s.slotById[s.backends[i].id] = static_cast<int32_t>(i);
  }
  return s;
}

Tables tablesWith(std::vector<Service> services) {
  Tables t;
  t.services = std::move(services);
  t.denyCidrs.seal();
  t.denyGeo.seal();
  return t;
}

// Runs one SockWorker on a thread; Tables published here stay alive until
// the test ends.
class Proxy {
 public:
  static SockWorker::Options smallOptions() {
    SockWorker::Options o;
    o.maxTcpFlows = 256;
    o.maxUdpFlows = 64;
    o.udpBuffers = 256;
    o.udpSendSlots = 256;
    return o;
  }

  // The worker is created on its own thread: the task that creates an
  // io_uring gets interrupted (EINTR from syscalls with a timeout) when the
  // ring is torn down, which would disturb the test's client calls.
  explicit Proxy(Tables first, SockWorker::Options o = smallOptions()) {
    publish(std::move(first));
    o.acquire = [this] { return current_.load(); };
    o.registerWakeFd = [this](int fd) { wakeFd_.store(fd); };
    o.stop = &stop_;
    std::promise<std::string> created;
    std::future<std::string> result = created.get_future();
    thread_ = std::thread([this, o, &created] {
      std::string err;
      std::unique_ptr<SockWorker> w = SockWorker::create(o, err);
      SockWorker* raw = w.get();
      worker_ = std::move(w);
      created.set_value(raw != nullptr ? std::string() : err);
      if (raw != nullptr) raw->run(2000);
    });
    const std::string err = result.get();
    EXPECT_TRUE(worker_ != nullptr) << err;
  }
  ~Proxy() { stop(); }

  bool ok() const { return worker_ != nullptr; }

  void publish(Tables t) {
    all_.push_back(std::make_unique<Tables>(std::move(t)));
    current_.store(all_.back().get());
    wake();
  }
  // Publishes and waits until the worker has taken the new Tables.
  void switchTo(Tables t) {
    const uint64_t before = report().counters.configSwitches;
    publish(std::move(t));
    EXPECT_TRUE(waitFor([&] { return report().counters.configSwitches > before; }));
  }
  const Tables& current() const { return *current_.load(); }
  const Service& service(size_t i = 0) const { return current().services[i]; }

  SockReport report() const { return worker_->report(); }

  void stop() {
    if (!thread_.joinable()) return;
    stop_ = true;
    wake();
    thread_.join();
  }

 private:
  void wake() {
    const int fd = wakeFd_.load();
    if (fd < 0) return;
    uint64_t one = 1;
    ssize_t n = write(fd, &one, sizeof(one));
    (void)n;
  }

  std::vector<std::unique_ptr<Tables>> all_;
  std::atomic<const Tables*> current_{nullptr};
  std::atomic<int> wakeFd_{-1};
  std::atomic<bool> stop_{false};
  std::unique_ptr<SockWorker> worker_;
  std::thread thread_;
};

// A connected client socket, bound first so that its source port (and so
// its backend) is known; `local` receives that address.
int connectTcp(const Addr& vip, Addr* local = nullptr) {
  int fd = socket(vip.family(), SOCK_STREAM, 0);
  setRecvTimeout(fd);
  Addr any = loopback(vip.family(), 0);
  EXPECT_EQ(bind(fd, any.sa(), any.len), 0);
  if (local != nullptr) *local = localOf(fd);
  if (connect(fd, vip.sa(), vip.len) != 0) {
    ADD_FAILURE() << "connect to " << vip.key() << ": " << strerror(errno);
  }
  return fd;
}

std::string expectedBackend(const Service& svc, const Addr& client) {
  FlowKey k;
  EXPECT_TRUE(sockFlowKey(svc, client.sa(), client.len, k));
  const Backend* b = pickBackend(svc, k);
  return b == nullptr ? std::string() : b->key;
}

// ---------------------------------------------------------------------------

TEST(PickBackend, IsTheMaglevEntryOfTheFlowHash) {
  Addr vip = loopback(AF_INET, 80);
  std::vector<BackendSpec> specs;
  for (uint32_t i = 0; i < 5; ++i) specs.push_back({i + 1, loopback(AF_INET, 9000 + i)});
  Service s = makeService(Protocol::kTcp, vip, specs);
  for (uint16_t port = 1000; port < 1100; ++port) {
    FlowKey k = makeFlowKeyV4(0x7f000001, 0x7f000001, port, 80, 6);
    const Backend* b = pickBackend(s, k);
    ASSERT_NE(b, nullptr);
    EXPECT_EQ(b, &s.backends[s.maglev[hashFlow(k) % s.maglev.size()]]);
  }
  Service empty = makeService(Protocol::kTcp, vip, {{1, loopback(AF_INET, 9000), 0}});
  EXPECT_TRUE(empty.maglev.empty());
  EXPECT_EQ(pickBackend(empty, FlowKey{}), nullptr);
}

TEST(SockFlowKey, CarriesClientAndVip) {
  Addr vip = loopback(AF_INET, 443);
  Service s = makeService(Protocol::kUdp, vip, {});
  Addr client = loopback(AF_INET, 5555);
  FlowKey k;
  ASSERT_TRUE(sockFlowKey(s, client.sa(), client.len, k));
  EXPECT_EQ(k, makeFlowKeyV4(0x7f000001, 0x7f000001, 5555, 443, 17));
  sockaddr_storage unix{};
  unix.ss_family = AF_UNIX;
  EXPECT_FALSE(sockFlowKey(s, reinterpret_cast<sockaddr*>(&unix), sizeof(unix), k));
}

TEST(SockProxyTcp, EchoesFourMiBBothWays) {
  TcpBackend be;
  Addr vip = freeAddr(AF_INET, SOCK_STREAM);
  Proxy proxy(tablesWith({makeService(Protocol::kTcp, vip, {{1, be.addr}})}));
  ASSERT_TRUE(proxy.ok());

  std::string data(4u << 20, '\0');
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>((i * 131 + i / 7) & 0xff);
  int fd = connectTcp(vip);
  std::thread writer([&] {
    EXPECT_TRUE(writeAll(fd, data.data(), data.size()));
    shutdown(fd, SHUT_WR);
  });
  std::string got;
  EXPECT_EQ(readToEnd(fd, &got), 0);
  writer.join();
  close(fd);
  const std::string want = be.key + "\n" + data + "bye\n";
  ASSERT_EQ(got.size(), want.size());
  EXPECT_TRUE(got == want);

  EXPECT_TRUE(waitFor([&] { return proxy.report().counters.tcpActive == 0; }));
  proxy.stop();
  SockReport r = proxy.report();
  EXPECT_EQ(r.counters.tcpAccepted, 1u);
  EXPECT_EQ(r.counters.bytesClientToBackend, data.size());
  EXPECT_EQ(r.counters.bytesBackendToClient, want.size());
  EXPECT_EQ(r.counters.tcpErrors, 0u);
  EXPECT_EQ(r.backends[be.key].flows, 1u);
  EXPECT_EQ(r.backends[be.key].active, 0u);
}

TEST(SockProxyTcp, HalfCloseLetsTheBackendAnswerAfterEof) {
  TcpBackend be;
  Addr vip = freeAddr(AF_INET, SOCK_STREAM);
  Proxy proxy(tablesWith({makeService(Protocol::kTcp, vip, {{1, be.addr}})}));
  ASSERT_TRUE(proxy.ok());
  int fd = connectTcp(vip);
  EXPECT_EQ(readLine(fd), be.key + "\n");
  ASSERT_TRUE(writeAll(fd, "hello\n", 6));
  EXPECT_EQ(readLine(fd), "hello\n");
  shutdown(fd, SHUT_WR);  // the backend only says bye after this EOF
  std::string rest;
  EXPECT_EQ(readToEnd(fd, &rest), 0);
  EXPECT_EQ(rest, "bye\n");
  close(fd);
  EXPECT_TRUE(waitFor([&] {
    auto c = proxy.report().counters;
    return c.tcpActive == 0 && c.tcpHalfCloses == 1;
  }));
}

TEST(SockProxyTcp, BackendIsTheOnePickBackendChooses) {
  TcpBackend b1, b2, b3;
  Addr vip = freeAddr(AF_INET, SOCK_STREAM);
  Proxy proxy(tablesWith(
      {makeService(Protocol::kTcp, vip, {{1, b1.addr}, {2, b2.addr}, {3, b3.addr}})}));
  ASSERT_TRUE(proxy.ok());
  std::set<std::string> seen;
  for (int i = 0; i < 30; ++i) {
    Addr local;
    int fd = connectTcp(vip, &local);
    const std::string got = readLine(fd);
    close(fd);
    const std::string want = expectedBackend(proxy.service(), local) + "\n";
    EXPECT_EQ(got, want) << "client " << local.key() << " errno " << errno;
    seen.insert(got);
  }
  EXPECT_GE(seen.size(), 2u);  // 30 clients on 3 backends: all on one is ~1e-14
}

TEST(SockProxyTcp, ClientsSpreadByWeight) {
  TcpBackend b1, b2, b3;
  Addr vip = freeAddr(AF_INET, SOCK_STREAM);
  Proxy proxy(tablesWith(
      {makeService(Protocol::kTcp, vip, {{1, b1.addr, 1}, {2, b2.addr, 1}, {3, b3.addr, 2}})}));
  ASSERT_TRUE(proxy.ok());
  constexpr int kClients = 400;
  for (int i = 0; i < kClients; ++i) {
    int fd = connectTcp(vip);
    EXPECT_FALSE(readLine(fd).empty());
    close(fd);
  }
  SockReport r;
  EXPECT_TRUE(waitFor([&] {
    r = proxy.report();
    return r.counters.tcpAccepted == kClients && r.counters.tcpActive == 0;
  }));
  // Expected 100 / 100 / 200; bounds are > 5 standard deviations wide.
  EXPECT_GT(r.backends[b1.key].flows, 50u);
  EXPECT_LT(r.backends[b1.key].flows, 150u);
  EXPECT_GT(r.backends[b2.key].flows, 50u);
  EXPECT_LT(r.backends[b2.key].flows, 150u);
  EXPECT_GT(r.backends[b3.key].flows, 140u);
  EXPECT_LT(r.backends[b3.key].flows, 260u);
  EXPECT_EQ(r.backends[b1.key].flows + r.backends[b2.key].flows + r.backends[b3.key].flows,
            static_cast<uint64_t>(kClients));
}

TEST(SockProxyTcp, NewTablesKeepExistingFlowsAndSteerNewOnes) {
  TcpBackend b1, b2;
  Addr vip = freeAddr(AF_INET, SOCK_STREAM);
  Proxy proxy(tablesWith({makeService(Protocol::kTcp, vip, {{1, b1.addr}, {2, b2.addr}})}));
  ASSERT_TRUE(proxy.ok());
  int fd = connectTcp(vip);
  const std::string first = readLine(fd);
  ASSERT_TRUE(first == b1.key + "\n" || first == b2.key + "\n") << first;
  const bool onB1 = first == b1.key + "\n";
  TcpBackend& mine = onB1 ? b1 : b2;
  TcpBackend& other = onB1 ? b2 : b1;

  // Drain the flow's backend: still in service, no new flows.
  std::vector<BackendSpec> specs{{1, b1.addr, onB1 ? 0u : 1u}, {2, b2.addr, onB1 ? 1u : 0u}};
  proxy.switchTo(tablesWith({makeService(Protocol::kTcp, vip, specs)}));

  ASSERT_TRUE(writeAll(fd, "still here\n", 11));
  EXPECT_EQ(readLine(fd), "still here\n");
  for (int i = 0; i < 10; ++i) {
    int fd2 = connectTcp(vip);
    EXPECT_EQ(readLine(fd2), other.key + "\n");
    close(fd2);
  }
  ASSERT_TRUE(writeAll(fd, "and now\n", 8));
  EXPECT_EQ(readLine(fd), "and now\n");
  close(fd);
  EXPECT_EQ(mine.accepted.load(), 1);
  SockReport r = proxy.report();
  EXPECT_EQ(r.counters.configSwitches, 1u);
  EXPECT_EQ(r.counters.tcpResetBackendDown, 0u);
}

// Connects one client and returns it with the backend it landed on.
int connectAndIdentify(const Addr& vip, TcpBackend& b1, TcpBackend& b2, bool* onB1) {
  int fd = connectTcp(vip);
  const std::string first = readLine(fd);
  EXPECT_TRUE(first == b1.key + "\n" || first == b2.key + "\n") << first;
  *onB1 = first == b1.key + "\n";
  return fd;
}

TEST(SockProxyTcp, RemovedBackendResetsItsFlows) {
  TcpBackend b1, b2;
  Addr vip = freeAddr(AF_INET, SOCK_STREAM);
  Proxy proxy(tablesWith({makeService(Protocol::kTcp, vip, {{1, b1.addr}, {2, b2.addr}})}));
  ASSERT_TRUE(proxy.ok());
  bool onB1 = false;
  int fd = connectAndIdentify(vip, b1, b2, &onB1);
  // The flow's backend leaves the pool; the other stays.
  BackendSpec keep = onB1 ? BackendSpec{2, b2.addr} : BackendSpec{1, b1.addr};
  proxy.switchTo(tablesWith({makeService(Protocol::kTcp, vip, {keep})}));
  EXPECT_EQ(readToEnd(fd), ECONNRESET);
  close(fd);
  EXPECT_TRUE(waitFor([&] {
    auto c = proxy.report().counters;
    return c.tcpResetBackendDown == 1 && c.tcpActive == 0;
  }));
}

TEST(SockProxyTcp, UnhealthyBackendWithDropClosesWithoutReset) {
  TcpBackend b1, b2;
  Addr vip = freeAddr(AF_INET, SOCK_STREAM);
  Proxy proxy(tablesWith({makeService(Protocol::kTcp, vip, {{1, b1.addr}, {2, b2.addr}},
                                      BackendDown::kDrop)}));
  ASSERT_TRUE(proxy.ok());
  bool onB1 = false;
  int fd = connectAndIdentify(vip, b1, b2, &onB1);
  std::vector<BackendSpec> specs{{1, b1.addr}, {2, b2.addr}};
  specs[onB1 ? 0 : 1].inService = false;
  proxy.switchTo(
      tablesWith({makeService(Protocol::kTcp, vip, specs, BackendDown::kDrop)}));
  EXPECT_EQ(readToEnd(fd), 0);
  close(fd);
  EXPECT_TRUE(waitFor([&] {
    auto c = proxy.report().counters;
    return c.tcpDroppedBackendDown == 1 && c.tcpActive == 0;
  }));
  EXPECT_EQ(proxy.report().counters.tcpResetBackendDown, 0u);
}

TEST(SockProxyTcp, DeniedCidrIsClosedAndCounted) {
  TcpBackend be;
  Addr vip = freeAddr(AF_INET, SOCK_STREAM);
  Tables t = tablesWith({makeService(Protocol::kTcp, vip, {{1, be.addr}})});
  t.denyCidrs = CidrSet();
  std::string err;
  ASSERT_TRUE(t.denyCidrs.add("127.0.0.1/32", &err)) << err;
  t.denyCidrs.seal();
  Proxy proxy(std::move(t));
  ASSERT_TRUE(proxy.ok());
  int fd = connectTcp(vip);
  std::string got;
  readToEnd(fd, &got);  // EOF, never the backend's greeting
  EXPECT_EQ(got, "");
  close(fd);
  EXPECT_TRUE(waitFor([&] { return proxy.report().counters.tcpDeniedCidr == 1; }));
  EXPECT_EQ(be.accepted.load(), 0);
}

TEST(SockProxyTcp, DeniedGeoIsClosedAndCounted) {
  TcpBackend be;
  Addr vip = freeAddr(AF_INET, SOCK_STREAM);
  Tables t = tablesWith({makeService(Protocol::kTcp, vip, {{1, be.addr}})});
  t.denyGeo = CidrSet();
  std::string err;
  ASSERT_TRUE(t.denyGeo.add("127.0.0.0/8", &err)) << err;
  t.denyGeo.seal();
  Proxy proxy(std::move(t));
  ASSERT_TRUE(proxy.ok());
  int fd = connectTcp(vip);
  readToEnd(fd);
  close(fd);
  EXPECT_TRUE(waitFor([&] { return proxy.report().counters.tcpDeniedGeo == 1; }));
  EXPECT_EQ(be.accepted.load(), 0);
}

TEST(SockProxyTcp, NoBackendResets) {
  Addr vip = freeAddr(AF_INET, SOCK_STREAM);
  Proxy proxy(tablesWith(
      {makeService(Protocol::kTcp, vip, {{1, freeAddr(AF_INET, SOCK_STREAM), 0}})}));
  ASSERT_TRUE(proxy.ok());
  int fd = connectTcp(vip);
  EXPECT_EQ(readToEnd(fd), ECONNRESET);
  close(fd);
  EXPECT_TRUE(waitFor([&] { return proxy.report().counters.tcpNoBackend == 1; }));
}

TEST(SockProxyTcp, RefusedConnectResetsClient) {
  Addr vip = freeAddr(AF_INET, SOCK_STREAM);
  Addr dead = freeAddr(AF_INET, SOCK_STREAM);  // nobody listens there
  Proxy proxy(tablesWith({makeService(Protocol::kTcp, vip, {{1, dead}})}));
  ASSERT_TRUE(proxy.ok());
  int fd = connectTcp(vip);
  EXPECT_EQ(readToEnd(fd), ECONNRESET);
  close(fd);
  EXPECT_TRUE(waitFor([&] {
    auto c = proxy.report().counters;
    return c.tcpConnectErrors == 1 && c.tcpActive == 0;
  }));
}

TEST(SockProxyTcp, ConnectTimeoutResetsClient) {
  // A backend whose accept queue is full: the kernel drops further SYNs, so
  // connecting to it hangs until the proxy gives up.
  int lfd = socket(AF_INET, SOCK_STREAM, 0);
  Addr any = loopback(AF_INET, 0);
  ASSERT_EQ(bind(lfd, any.sa(), any.len), 0);
  ASSERT_EQ(listen(lfd, 0), 0);
  Addr stuck = localOf(lfd);
  std::vector<int> fillers;
  for (int i = 0; i < 3; ++i) {
    int f = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    connect(f, stuck.sa(), stuck.len);
    fillers.push_back(f);
  }
  Addr vip = freeAddr(AF_INET, SOCK_STREAM);
  SockWorker::Options o = Proxy::smallOptions();
  o.connectTimeoutMs = 100;
  Proxy proxy(tablesWith({makeService(Protocol::kTcp, vip, {{1, stuck}})}), o);
  ASSERT_TRUE(proxy.ok());
  int fd = connectTcp(vip);
  EXPECT_EQ(readToEnd(fd), ECONNRESET);
  close(fd);
  EXPECT_TRUE(waitFor([&] {
    auto c = proxy.report().counters;
    return c.tcpConnectTimeouts == 1 && c.tcpActive == 0;
  }));
  for (int f : fillers) close(f);
  close(lfd);
}

TEST(SockProxyTcp, FullPoolResets) {
  TcpBackend be;
  Addr vip = freeAddr(AF_INET, SOCK_STREAM);
  SockWorker::Options o = Proxy::smallOptions();
  o.maxTcpFlows = 1;
  Proxy proxy(tablesWith({makeService(Protocol::kTcp, vip, {{1, be.addr}})}), o);
  ASSERT_TRUE(proxy.ok());
  int fd = connectTcp(vip);
  EXPECT_EQ(readLine(fd), be.key + "\n");
  int fd2 = connectTcp(vip);
  EXPECT_EQ(readToEnd(fd2), ECONNRESET);
  close(fd2);
  EXPECT_TRUE(waitFor([&] { return proxy.report().counters.tcpPoolFull == 1; }));
  close(fd);
}

TEST(SockProxyTcp, Ipv6) {
  TcpBackend be(AF_INET6);
  Addr vip = freeAddr(AF_INET6, SOCK_STREAM);
  Proxy proxy(tablesWith({makeService(Protocol::kTcp, vip, {{1, be.addr}})}));
  ASSERT_TRUE(proxy.ok());
  Addr local;
  int fd = connectTcp(vip, &local);
  EXPECT_EQ(readLine(fd), be.key + "\n");
  EXPECT_EQ(expectedBackend(proxy.service(), local), be.key);
  ASSERT_TRUE(writeAll(fd, "six\n", 4));
  EXPECT_EQ(readLine(fd), "six\n");
  shutdown(fd, SHUT_WR);
  std::string rest;
  EXPECT_EQ(readToEnd(fd, &rest), 0);
  EXPECT_EQ(rest, "bye\n");
  close(fd);
}

TEST(SockProxyTcp, StopResetsFlowsLeftAfterDrain) {
  TcpBackend be;
  Addr vip = freeAddr(AF_INET, SOCK_STREAM);
  Proxy proxy(tablesWith({makeService(Protocol::kTcp, vip, {{1, be.addr}})}));
  ASSERT_TRUE(proxy.ok());
  int fd = connectTcp(vip);
  EXPECT_EQ(readLine(fd), be.key + "\n");
  proxy.stop();  // the flow stays idle through the 2 s drain
  EXPECT_EQ(readToEnd(fd), ECONNRESET);
  close(fd);
  EXPECT_EQ(proxy.report().counters.tcpActive, 0u);
}

// ---- UDP --------------------------------------------------------------------

struct UdpClient {
  int fd = -1;
  Addr local;
  UdpClient() {
    fd = socket(AF_INET, SOCK_DGRAM, 0);
    setRecvTimeout(fd);
    Addr a = loopback(AF_INET, 0);
    EXPECT_EQ(bind(fd, a.sa(), a.len), 0);
    local = localOf(fd);
  }
  ~UdpClient() { close(fd); }
  // Sends `msg` to vip and returns the reply and its source.
  std::string ask(const Addr& vip, const std::string& msg, Addr* from = nullptr) {
    EXPECT_EQ(sendto(fd, msg.data(), msg.size(), 0, vip.sa(), vip.len),
              static_cast<ssize_t>(msg.size()));
    char buf[2048];
    Addr src;
    src.len = sizeof(src.ss);
    ssize_t n;
    do {
      src.len = sizeof(src.ss);
      n = recvfrom(fd, buf, sizeof(buf), 0, reinterpret_cast<sockaddr*>(&src.ss), &src.len);
    } while (n < 0 && errno == EINTR);
    if (from != nullptr) *from = src;
    return n < 0 ? std::string() : std::string(buf, static_cast<size_t>(n));
  }
};

TEST(SockProxyUdp, RequestResponseKeepsTheClientsBackend) {
  UdpBackend b1, b2, b3;
  Addr vip = freeAddr(AF_INET, SOCK_DGRAM);
  Proxy proxy(tablesWith(
      {makeService(Protocol::kUdp, vip, {{1, b1.addr}, {2, b2.addr}, {3, b3.addr}})}));
  ASSERT_TRUE(proxy.ok());
  std::set<std::string> seen;
  for (int c = 0; c < 8; ++c) {
    UdpClient client;
    const std::string want = expectedBackend(proxy.service(), client.local);
    for (int i = 0; i < 5; ++i) {
      Addr from;
      const std::string msg = "q" + std::to_string(i);
      EXPECT_EQ(client.ask(vip, msg, &from), want + ":" + msg);
      EXPECT_EQ(from.key(), vip.key());  // the reply comes from the VIP
    }
    seen.insert(want);
  }
  EXPECT_TRUE(waitFor([&] {
    auto c = proxy.report().counters;
    return c.udpFlowsCreated == 8 && c.udpDatagramsIn == 40 && c.udpDatagramsOut == 40;
  }));
  SockReport r = proxy.report();
  EXPECT_EQ(r.counters.udpFlowsActive, 8u);
  EXPECT_EQ(r.counters.bytesClientToBackend, 8u * 5u * 2u);
  uint64_t flows = 0;
  for (auto& [k, v] : r.backends) flows += v.flows;
  EXPECT_EQ(flows, 8u);
}

TEST(SockProxyUdp, IdleFlowsExpire) {
  UdpBackend be;
  Addr vip = freeAddr(AF_INET, SOCK_DGRAM);
  SockWorker::Options o = Proxy::smallOptions();
  o.udpIdleMs = 100;
  Proxy proxy(tablesWith({makeService(Protocol::kUdp, vip, {{1, be.addr}})}), o);
  ASSERT_TRUE(proxy.ok());
  UdpClient client;
  EXPECT_EQ(client.ask(vip, "a"), be.key + ":a");
  EXPECT_TRUE(waitFor([&] {
    auto c = proxy.report().counters;
    return c.udpFlowsExpired == 1 && c.udpFlowsActive == 0;
  }));
  EXPECT_EQ(client.ask(vip, "b"), be.key + ":b");
  EXPECT_TRUE(waitFor([&] { return proxy.report().counters.udpFlowsCreated == 2; }));
}

TEST(SockProxyUdp, EvictsTheLeastRecentFlowWhenFull) {
  UdpBackend be;
  Addr vip = freeAddr(AF_INET, SOCK_DGRAM);
  SockWorker::Options o = Proxy::smallOptions();
  o.maxUdpFlows = 2;
  Proxy proxy(tablesWith({makeService(Protocol::kUdp, vip, {{1, be.addr}})}), o);
  ASSERT_TRUE(proxy.ok());
  UdpClient a, b, c;
  EXPECT_EQ(a.ask(vip, "1"), be.key + ":1");
  EXPECT_EQ(b.ask(vip, "2"), be.key + ":2");
  EXPECT_EQ(c.ask(vip, "3"), be.key + ":3");  // evicts a's flow
  EXPECT_EQ(b.ask(vip, "4"), be.key + ":4");  // b keeps its flow
  EXPECT_TRUE(waitFor([&] {
    auto r = proxy.report().counters;
    return r.udpFlowsEvicted == 1 && r.udpFlowsCreated == 3 && r.udpFlowsActive == 2;
  }));
}

TEST(SockProxyUdp, RemovedBackendDropsTheFlowAndDeniedClientsAreCounted) {
  UdpBackend b1, b2;
  Addr vip = freeAddr(AF_INET, SOCK_DGRAM);
  Proxy proxy(tablesWith({makeService(Protocol::kUdp, vip, {{1, b1.addr}, {2, b2.addr}})}));
  ASSERT_TRUE(proxy.ok());
  UdpClient client;
  const std::string first = client.ask(vip, "x");
  const bool onB1 = first == b1.key + ":x";
  ASSERT_TRUE(onB1 || first == b2.key + ":x") << first;
  BackendSpec keep = onB1 ? BackendSpec{2, b2.addr} : BackendSpec{1, b1.addr};
  proxy.switchTo(tablesWith({makeService(Protocol::kUdp, vip, {keep})}));
  EXPECT_TRUE(waitFor([&] { return proxy.report().counters.udpFlowsBackendDown == 1; }));
  EXPECT_EQ(client.ask(vip, "y"), keep.addr.key() + ":y");  // a new flow, new backend

  Tables denied = tablesWith({makeService(Protocol::kUdp, vip, {keep})});
  std::string err;
  denied.denyCidrs = CidrSet();
  ASSERT_TRUE(denied.denyCidrs.add("127.0.0.0/8", &err)) << err;
  denied.denyCidrs.seal();
  proxy.switchTo(std::move(denied));
  UdpClient other;  // a new client: the deny list applies to new flows
  const char msg[] = "z";
  sendto(other.fd, msg, 1, 0, vip.sa(), vip.len);
  EXPECT_TRUE(waitFor([&] { return proxy.report().counters.udpDenied == 1; }));
}

}  // namespace
}  // namespace moat::l4
