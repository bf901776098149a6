// moat-bench: the bundled HTTP/1.1 and HTTPS load generator.
//
//   moat-bench [-c CONNS] [-t THREADS] [-d SEC | -n N] [-R RPS] [--json] URL
//
// Each thread runs one io_uring loop (the dataplane Loop seam, like moatd's
// workers) over its share of the connections. Closed loop: every connection
// keeps --pipeline requests in flight. Open loop (-R): each connection sends
// on a fixed schedule and latency is measured from when a request was due,
// not from when it could be sent, so a stalled server shows up in the
// percentiles instead of hiding (coordinated omission). Responses are parsed
// with Moat's own strict parser (Content-Length, chunked, close-delimited).
// See `moat-bench --help` and docs/BENCHMARKS.md.
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "loadgen/options.h"
#include "loadgen/worker.h"

using namespace moat::bench;

namespace {

RunClock* gClock = nullptr;

void onSignal(int) {
  if (gClock != nullptr) gClock->stop.store(true, std::memory_order_relaxed);
}

uint64_t monoNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ULL + static_cast<uint64_t>(ts.tv_nsec);
}

double cpuSeconds(const timeval& tv) { return static_cast<double>(tv.tv_sec) + static_cast<double>(tv.tv_usec) / 1e6; }

// One blocking connect (2 s bound) before the run, so a wrong port or a
// down server is a clear error instead of a run full of connect errors.
bool probe(const Options& o, std::string& err) {
  int fd = ::socket(o.target.addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    err = std::string("socket: ") + std::strerror(errno);
    return false;
  }
  if (o.source.count != 0) {
    sockaddr_in src{};
    src.sin_family = AF_INET;
    src.sin_addr.s_addr = htonl(o.source.addressAt(0));
    if (::bind(fd, reinterpret_cast<sockaddr*>(&src), sizeof(src)) != 0) {
      char a[INET_ADDRSTRLEN];
      inet_ntop(AF_INET, &src.sin_addr, a, sizeof(a));
      err = std::string("cannot bind source address ") + a + ": " + std::strerror(errno);
      ::close(fd);
      return false;
    }
  }
  int rc = ::connect(fd, reinterpret_cast<const sockaddr*>(&o.target.addr), o.target.addrLen);
  if (rc != 0 && errno == EINPROGRESS) {
    pollfd p{fd, POLLOUT, 0};
    rc = ::poll(&p, 1, 2000);
    if (rc == 0) {
      errno = ETIMEDOUT;
      rc = -1;
    } else if (rc > 0) {
      int soerr = 0;
      socklen_t len = sizeof(soerr);
      getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len);
      errno = soerr;
      rc = soerr == 0 ? 0 : -1;
    }
  }
  if (rc != 0) {
    err = "cannot connect to " + o.target.hostHeader + ": " + std::strerror(errno);
    ::close(fd);
    return false;
  }
  ::close(fd);
  return true;
}

struct Totals {
  uint64_t requests = 0, bytes = 0, status[5] = {}, errConnect = 0, errTls = 0, errTimeout = 0, errClosed = 0,
           errParse = 0, full = 0, resumed = 0;
};

Totals sum(const std::vector<std::unique_ptr<Worker>>& ws) {
  Totals t;
  for (const auto& w : ws) {
    Stats& s = w->stats();
    auto ld = [](const std::atomic<uint64_t>& a) { return a.load(std::memory_order_relaxed); };
    t.requests += ld(s.requests);
    t.bytes += ld(s.bytes);
    for (int i = 0; i < 5; ++i) t.status[i] += ld(s.status[i]);
    t.errConnect += ld(s.errConnect);
    t.errTls += ld(s.errTls);
    t.errTimeout += ld(s.errTimeout);
    t.errClosed += ld(s.errClosed);
    t.errParse += ld(s.errParse);
    t.full += ld(s.fullHandshakes);
    t.resumed += ld(s.resumedHandshakes);
  }
  return t;
}

double us(uint64_t ns) { return static_cast<double>(ns) / 1000.0; }

}  // namespace

int main(int argc, char** argv) {
  Options o;
  std::string err;
  int rc = parseOptions(argc, argv, o, err);
  if (rc == 1) {
    std::fputs(usageText(), stdout);
    return 0;
  }
  if (rc != 0) {
    std::fprintf(stderr, "%s\n(moat-bench --help for usage)\n", err.c_str());
    return 2;
  }
  if (!probe(o, err)) {
    std::fprintf(stderr, "moat-bench: %s\n", err.c_str());
    return 1;
  }
  bool progress = o.progress == 1 || (o.progress == -1 && isatty(STDERR_FILENO));

  RunClock clock;
  gClock = &clock;
  struct sigaction sa {};
  sa.sa_handler = onSignal;
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  signal(SIGPIPE, SIG_IGN);

  uint64_t start = monoNs() + 20 * 1000000ULL;  // threads are up by then
  clock.startNs = start;
  clock.measureStartNs = start + static_cast<uint64_t>(o.warmupS * 1e9);
  clock.requestLimit = o.requests;
  if (o.requests != 0 && !o.durationSet) clock.endNs = UINT64_MAX;
  else clock.endNs = clock.measureStartNs + static_cast<uint64_t>(o.durationS * 1e9);

  std::vector<std::unique_ptr<Worker>> workers;
  uint32_t first = 0;
  for (uint32_t i = 0; i < o.threads; ++i) {
    uint32_t n = o.connections / o.threads + (i < o.connections % o.threads ? 1 : 0);
    workers.push_back(std::make_unique<Worker>(o, clock, i, first, n));
    first += n;
  }
  std::vector<std::string> errs(o.threads);
  std::vector<std::thread> threads;
  for (uint32_t i = 0; i < o.threads; ++i) {
    threads.emplace_back([&, i] {
      if (!workers[i]->run(errs[i])) clock.stop.store(true, std::memory_order_relaxed);
    });
  }

  // CPU time of this process over the measured window only.
  rusage ru0{}, ru1{};
  bool haveRu0 = false;
  uint64_t lastReq = 0, lastAt = monoNs();
  for (;;) {
    uint64_t now = monoNs();
    if (!haveRu0 && now >= clock.measureStartNs) {
      getrusage(RUSAGE_SELF, &ru0);
      haveRu0 = true;
    }
    if (clock.stop.load(std::memory_order_relaxed) || now >= clock.endNs) break;
    uint64_t next = std::min<uint64_t>(clock.endNs, haveRu0 ? now + 1000000000ULL : clock.measureStartNs);
    next = std::min<uint64_t>(next, now + 1000000000ULL);
    uint64_t sleepNs = next > now ? std::min<uint64_t>(next - now, 100 * 1000000ULL) : 0;
    timespec ts{static_cast<time_t>(sleepNs / 1000000000ULL), static_cast<long>(sleepNs % 1000000000ULL)};
    nanosleep(&ts, nullptr);
    now = monoNs();
    if (progress && now - lastAt >= 1000000000ULL) {
      Totals t = sum(workers);
      uint64_t errors = t.errConnect + t.errTls + t.errTimeout + t.errClosed + t.errParse;
      double rate = static_cast<double>(t.requests - lastReq) * 1e9 / static_cast<double>(now - lastAt);
      double el = now > clock.measureStartNs ? static_cast<double>(now - clock.measureStartNs) / 1e9 : 0;
      std::fprintf(stderr, "\r%s %6.1fs  %10.0f req/s  %12llu requests  %llu errors   ",
                   now < clock.measureStartNs ? "warm-up" : "running", el, rate,
                   static_cast<unsigned long long>(t.requests), static_cast<unsigned long long>(errors));
      lastReq = t.requests;
      lastAt = now;
    }
  }
  uint64_t stopAt = monoNs();
  getrusage(RUSAGE_SELF, &ru1);
  for (auto& t : threads) t.join();
  if (progress) std::fputs("\r\033[K", stderr);
  for (const auto& e : errs) {
    if (!e.empty()) {
      std::fprintf(stderr, "moat-bench: %s\n", e.c_str());
      return 1;
    }
  }
  if (!haveRu0) ru0 = ru1;

  Totals t = sum(workers);
  Histogram h;
  std::string lastConnectError;
  for (auto& w : workers) {
    h.merge(w->stats().latencyNs);
    if (!w->stats().lastConnectError.empty()) lastConnectError = w->stats().lastConnectError;
  }
  uint64_t endAt = clock.limitReachedNs.load() != 0 ? clock.limitReachedNs.load() : std::min(stopAt, clock.endNs);
  double seconds = endAt > clock.measureStartNs ? static_cast<double>(endAt - clock.measureStartNs) / 1e9 : 0;
  double rps = seconds > 0 ? static_cast<double>(t.requests) / seconds : 0;
  double cpuUser = cpuSeconds(ru1.ru_utime) - cpuSeconds(ru0.ru_utime);
  double cpuSys = cpuSeconds(ru1.ru_stime) - cpuSeconds(ru0.ru_stime);

  if (o.json) {
    nlohmann::json j;
    j["url"] = o.url;
    j["mode"] = o.rate > 0 ? "open" : "closed";
    j["target_rate"] = o.rate;
    j["connections"] = o.connections;
    j["threads"] = o.threads;
    j["pipeline"] = o.pipeline;
    j["duration_s"] = seconds;
    j["requests"] = t.requests;
    j["rps"] = rps;
    j["bytes"] = t.bytes;
    j["latency_us"] = {{"mean", h.mean() / 1000.0}, {"p50", us(h.percentile(50))},     {"p90", us(h.percentile(90))},
                       {"p99", us(h.percentile(99))}, {"p99_9", us(h.percentile(99.9))}, {"max", us(h.max())}};
    j["status"] = {{"1xx", t.status[0]}, {"2xx", t.status[1]}, {"3xx", t.status[2]}, {"4xx", t.status[3]},
                   {"5xx", t.status[4]}};
    j["errors"] = {{"connect", t.errConnect}, {"tls", t.errTls},     {"timeout", t.errTimeout},
                   {"closed", t.errClosed},   {"parse", t.errParse}};
    j["tls"] = {{"full_handshakes", t.full}, {"resumed_handshakes", t.resumed}};
    j["cpu_s"] = {{"user", cpuUser}, {"sys", cpuSys}};
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("%s: %s loop, %u connections, %u threads%s\n", o.url.c_str(), o.rate > 0 ? "open" : "closed",
                o.connections, o.threads, o.rate > 0 ? (", target " + std::to_string(static_cast<uint64_t>(o.rate)) + " req/s").c_str() : "");
    std::printf("  %llu requests in %.2f s: %.0f req/s, %.2f MB/s\n", static_cast<unsigned long long>(t.requests),
                seconds, rps, seconds > 0 ? static_cast<double>(t.bytes) / seconds / 1e6 : 0.0);
    std::printf("  latency us: mean %.1f  p50 %.1f  p90 %.1f  p99 %.1f  p99.9 %.1f  max %.1f%s\n", h.mean() / 1000.0,
                us(h.percentile(50)), us(h.percentile(90)), us(h.percentile(99)), us(h.percentile(99.9)),
                us(h.max()), o.rate > 0 ? "  (from intended send times)" : "");
    std::printf("  status: 1xx %llu  2xx %llu  3xx %llu  4xx %llu  5xx %llu\n",
                static_cast<unsigned long long>(t.status[0]), static_cast<unsigned long long>(t.status[1]),
                static_cast<unsigned long long>(t.status[2]), static_cast<unsigned long long>(t.status[3]),
                static_cast<unsigned long long>(t.status[4]));
    std::printf("  errors: connect %llu  tls %llu  timeout %llu  closed %llu  parse %llu\n",
                static_cast<unsigned long long>(t.errConnect), static_cast<unsigned long long>(t.errTls),
                static_cast<unsigned long long>(t.errTimeout), static_cast<unsigned long long>(t.errClosed),
                static_cast<unsigned long long>(t.errParse));
    if (o.target.tls) {
      std::printf("  tls: %llu full handshakes, %llu resumed\n", static_cast<unsigned long long>(t.full),
                  static_cast<unsigned long long>(t.resumed));
    }
    std::printf("  cpu: %.2f s user, %.2f s sys (%.1f us per request)\n", cpuUser, cpuSys,
                t.requests ? (cpuUser + cpuSys) * 1e6 / static_cast<double>(t.requests) : 0.0);
  }
  if (t.requests == 0 && t.errConnect != 0) {
    std::fprintf(stderr, "moat-bench: no request completed: connect failed (%s)\n", lastConnectError.c_str());
    return 1;
  }
  return 0;
}
