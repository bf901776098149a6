// moat-bench: the bundled HTTP/1.1 load generator (closed loop, keep-alive).
//
//   moat-bench [-c CONNS] [-d SECONDS] [-n REQUESTS] http://HOST:PORT/PATH
//
// Thin for now (the moat-bench issue grows it: io_uring, open loop with
// coordinated-omission correction, TLS, request mixes). One thread, epoll,
// N keep-alive connections each with one request in flight; responses are
// parsed with Moat's own strict parser. Prints throughput, latency
// percentiles (log-linear histogram, ~1% resolution) and errors by class.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "moat/l7/http_parser.h"

namespace {

using Clock = std::chrono::steady_clock;

struct Histogram {  // microseconds, 64 octaves x 64 linear sub-buckets
  std::array<uint64_t, 64 * 64> b{};
  uint64_t count = 0, max = 0;
  void add(uint64_t us) {
    ++count;
    if (us > max) max = us;
    int oct = us < 64 ? 0 : 63 - __builtin_clzll(us) - 5;
    uint64_t sub = us >> oct;
    ++b[static_cast<size_t>(oct * 64) + (sub & 63)];
  }
  uint64_t percentile(double p) const {
    uint64_t want = static_cast<uint64_t>(std::ceil(p / 100.0 * static_cast<double>(count)));
    uint64_t seen = 0;
    for (size_t i = 0; i < b.size(); ++i) {
      seen += b[i];
      if (seen >= want && b[i] != 0) {
        // Bucket i holds values whose top bits are `sub` (32..63 above the
        // first octave) shifted left by `oct`: report the bucket's low edge.
        size_t oct = i / 64, sub = i % 64;
        return static_cast<uint64_t>(sub) << oct;
      }
    }
    return max;
  }
};

struct Conn {
  int fd = -1;
  std::string in;
  Clock::time_point sent;
  bool busy = false;
};

int usage() {
  std::fprintf(stderr, "usage: moat-bench [-c CONNS] [-d SECONDS] [-n REQUESTS] http://HOST:PORT/PATH\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  int conns = 16;
  double seconds = 5;
  uint64_t limit = 0;
  std::string url;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "-c" && i + 1 < argc) conns = std::atoi(argv[++i]);
    else if (a == "-d" && i + 1 < argc) seconds = std::atof(argv[++i]);
    else if (a == "-n" && i + 1 < argc) limit = std::strtoull(argv[++i], nullptr, 10);
    else if (a.rfind("http://", 0) == 0) url = a;
    else return usage();
  }
  if (url.empty() || conns <= 0) return usage();
  std::string rest = url.substr(7);
  size_t slash = rest.find('/');
  std::string hostport = rest.substr(0, slash);
  std::string path = slash == std::string::npos ? "/" : rest.substr(slash);
  size_t colon = hostport.rfind(':');
  std::string host = hostport.substr(0, colon);
  int port = colon == std::string::npos ? 80 : std::atoi(hostport.c_str() + colon + 1);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(static_cast<uint16_t>(port));
  if (inet_pton(AF_INET, host.c_str(), &sa.sin_addr) != 1 || port <= 0 || port > 65535) {
    std::fprintf(stderr, "moat-bench: %s: need an IPv4 literal and a port\n", url.c_str());
    return 2;
  }
  std::string req = "GET " + path + " HTTP/1.1\r\nHost: " + hostport + "\r\nUser-Agent: moat-bench\r\n\r\n";

  int ep = epoll_create1(0);
  std::vector<Conn> cs(static_cast<size_t>(conns));
  uint64_t connectErrors = 0, parseErrors = 0, non2xx = 0, done = 0;
  Histogram h;
  auto send = [&](Conn& c) {
    c.sent = Clock::now();
    c.busy = true;
    if (::send(c.fd, req.data(), req.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(req.size())) {
      c.busy = false;
    }
  };
  for (size_t i = 0; i < cs.size(); ++i) {
    Conn& c = cs[i];
    c.fd = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(c.fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0) {
      std::fprintf(stderr, "moat-bench: connect %s: %s\n", hostport.c_str(), strerror(errno));
      return 1;
    }
    int one = 1;
    setsockopt(c.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = i;
    epoll_ctl(ep, EPOLL_CTL_ADD, c.fd, &ev);
  }
  auto start = Clock::now();
  auto end = start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
  for (auto& c : cs) send(c);
  moat::l7::ParseLimits limits;
  auto* head = new moat::l7::ResponseHead();
  char buf[65536];
  std::vector<epoll_event> evs(static_cast<size_t>(conns));
  bool stopping = false;
  while (true) {
    if (!stopping && (Clock::now() >= end || (limit != 0 && done >= limit))) stopping = true;
    bool anyBusy = false;
    for (auto& c : cs) anyBusy |= c.busy;
    if (stopping && !anyBusy) break;
    int n = epoll_wait(ep, evs.data(), conns, 100);
    for (int k = 0; k < n; ++k) {
      Conn& c = cs[evs[static_cast<size_t>(k)].data.u64];
      ssize_t r = recv(c.fd, buf, sizeof(buf), 0);
      if (r <= 0) {
        ++connectErrors;
        close(c.fd);
        c.busy = false;
        c.fd = socket(AF_INET, SOCK_STREAM, 0);
        if (!stopping && connect(c.fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) == 0) {
          epoll_event ev{};
          ev.events = EPOLLIN;
          ev.data.u64 = static_cast<uint64_t>(&c - cs.data());
          epoll_ctl(ep, EPOLL_CTL_ADD, c.fd, &ev);
          send(c);
        }
        continue;
      }
      c.in.append(buf, static_cast<size_t>(r));
      moat::l7::HttpError err;
      auto st = moat::l7::parseResponseHead(c.in.data(), c.in.size(), limits, false, *head, err);
      if (st == moat::l7::ParseStatus::kIncomplete) continue;
      if (st == moat::l7::ParseStatus::kError || head->body != moat::l7::BodyKind::kContentLength) {
        ++parseErrors;  // only Content-Length bodies are supported by this thin client
        c.in.clear();
        c.busy = false;
        continue;
      }
      size_t total = head->headBytes + head->contentLength;
      if (c.in.size() < total) continue;
      if (head->status < 200 || head->status >= 300) ++non2xx;
      c.in.erase(0, total);
      ++done;
      h.add(static_cast<uint64_t>(
          std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - c.sent).count()));
      c.busy = false;
      if (!stopping) send(c);
    }
  }
  double el = std::chrono::duration<double>(Clock::now() - start).count();
  std::printf("requests %llu in %.2f s: %.0f req/s\n", static_cast<unsigned long long>(done), el,
              static_cast<double>(done) / el);
  std::printf("latency us: p50 %llu  p90 %llu  p99 %llu  p99.9 %llu  max %llu\n",
              static_cast<unsigned long long>(h.percentile(50)),
              static_cast<unsigned long long>(h.percentile(90)),
              static_cast<unsigned long long>(h.percentile(99)),
              static_cast<unsigned long long>(h.percentile(99.9)),
              static_cast<unsigned long long>(h.max));
  std::printf("errors: connect/closed %llu  parse %llu  non-2xx %llu\n",
              static_cast<unsigned long long>(connectErrors),
              static_cast<unsigned long long>(parseErrors), static_cast<unsigned long long>(non2xx));
  delete head;
  return 0;
}
