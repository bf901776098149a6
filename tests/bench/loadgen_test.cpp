// moat-bench's pieces that need no network: the latency histogram, URL and
// option parsing, source-address spread, request mixes and their wire bytes.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "loadgen/histogram.h"
#include "loadgen/options.h"
#include "moat/l7/http_parser.h"

using namespace moat::bench;

namespace {

TEST(Histogram, BucketsTileTheRangeWithoutGaps) {
  for (size_t i = 0; i + 1 < Histogram::bucketCount(); ++i) {
    ASSERT_EQ(Histogram::highOf(i) + 1, Histogram::lowOf(i + 1)) << i;
  }
  EXPECT_EQ(Histogram::highOf(Histogram::bucketCount() - 1), UINT64_MAX);
  for (uint64_t v : std::vector<uint64_t>{0, 1, 255, 256, 257, 1000, 123456789, (uint64_t{1} << 40) + 17, UINT64_MAX}) {
    size_t i = Histogram::indexOf(v);
    EXPECT_LE(Histogram::lowOf(i), v);
    EXPECT_GE(Histogram::highOf(i), v);
  }
}

TEST(Histogram, PercentilesWithinOnePercentOfExactRanks) {
  std::mt19937_64 rng(7);
  std::lognormal_distribution<double> d(11.0, 1.0);  // ~60 us median, long tail, in ns
  std::vector<uint64_t> xs;
  Histogram h;
  for (int i = 0; i < 200000; ++i) {
    uint64_t v = static_cast<uint64_t>(d(rng));
    xs.push_back(v);
    h.record(v);
  }
  std::sort(xs.begin(), xs.end());
  for (double p : {50.0, 90.0, 99.0, 99.9}) {
    uint64_t exact = xs[static_cast<size_t>(p / 100.0 * static_cast<double>(xs.size())) - 1];
    double got = static_cast<double>(h.percentile(p));
    EXPECT_NEAR(got, static_cast<double>(exact), 0.01 * static_cast<double>(exact)) << p;
  }
  EXPECT_EQ(h.percentile(100), xs.back());
  EXPECT_EQ(h.max(), xs.back());
  EXPECT_EQ(h.min(), xs.front());
}

TEST(Histogram, SmallValuesAreExactAndMergeAddsUp) {
  Histogram a, b;
  for (uint64_t v = 1; v <= 100; ++v) a.record(v);
  for (uint64_t v = 101; v <= 200; ++v) b.record(v);
  EXPECT_EQ(a.percentile(50), 50u);
  a.merge(b);
  EXPECT_EQ(a.count(), 200u);
  EXPECT_EQ(a.percentile(50), 100u);
  EXPECT_EQ(a.percentile(100), 200u);
  EXPECT_DOUBLE_EQ(a.mean(), 100.5);
  Histogram empty;
  EXPECT_EQ(empty.percentile(99), 0u);
}

TEST(Url, ParsesSchemesPortsPathsAndIpv6) {
  Target t;
  std::string err;
  ASSERT_TRUE(parseUrl("http://127.0.0.1:8080/a/b?c=d", t, err)) << err;
  EXPECT_FALSE(t.tls);
  EXPECT_EQ(t.port, 8080);
  EXPECT_EQ(t.path, "/a/b?c=d");
  EXPECT_EQ(t.hostHeader, "127.0.0.1:8080");
  ASSERT_TRUE(parseUrl("https://127.0.0.1", t, err)) << err;
  EXPECT_TRUE(t.tls);
  EXPECT_EQ(t.port, 443);
  EXPECT_EQ(t.path, "/");
  ASSERT_TRUE(parseUrl("http://[::1]:81/", t, err)) << err;
  EXPECT_EQ(t.host, "::1");
  EXPECT_EQ(t.addr.ss_family, AF_INET6);
  for (const char* bad : {"ftp://x/", "http://", "http://127.0.0.1:0/", "http://127.0.0.1:70000/", "http://::1/",
                          "http://[::1/", "http://u@127.0.0.1/", "http://127.0.0.1/a b", "http://127.0.0.1/#f"}) {
    EXPECT_FALSE(parseUrl(bad, t, err)) << bad;
    EXPECT_NE(err.find("bad URL"), std::string::npos) << err;
  }
}

TEST(Source, SpreadSkipsNetworkAndBroadcastAndWraps) {
  SourceSpread s;
  std::string err;
  ASSERT_TRUE(parseSourceCidr("127.1.0.0/16", s, err)) << err;
  EXPECT_EQ(s.count, 65534u);
  EXPECT_EQ(s.addressAt(0), 0x7f010001u);
  EXPECT_EQ(s.addressAt(65533), 0x7f01fffeu);
  EXPECT_EQ(s.addressAt(65534), 0x7f010001u);
  ASSERT_TRUE(parseSourceCidr("127.0.0.9/32", s, err));
  EXPECT_EQ(s.count, 1u);
  EXPECT_EQ(s.addressAt(5), 0x7f000009u);
  EXPECT_FALSE(parseSourceCidr("127.0.0.0/7", s, err));
  EXPECT_FALSE(parseSourceCidr("::1/128", s, err));
  EXPECT_FALSE(parseSourceCidr("127.0.0.0/x", s, err));
}

std::string writeTemp(const std::string& text) {
  char name[] = "/tmp/moat-mix-XXXXXX";
  int fd = mkstemp(name);
  std::FILE* f = fdopen(fd, "w");
  std::fputs(text.c_str(), f);
  std::fclose(f);
  return name;
}

TEST(Mix, WeightsPickEntriesInProportion) {
  std::string path = writeTemp(R"([{"target": "/a", "weight": 3}, {"target": "/b"}, {"target": "/c", "weight": 6}])");
  Mix m;
  std::string err;
  ASSERT_TRUE(loadMix(path, m, err)) << err;
  std::remove(path.c_str());
  Target t;
  ASSERT_TRUE(parseUrl("http://127.0.0.1:1/", t, err));
  finalizeMix(m, t, {}, false);
  ASSERT_EQ(m.totalWeight, 10u);
  int counts[3] = {0, 0, 0};
  for (uint64_t r = 0; r < 1000; ++r) counts[&m.pick(r) - m.entries.data()]++;
  EXPECT_EQ(counts[0], 300);
  EXPECT_EQ(counts[1], 100);
  EXPECT_EQ(counts[2], 600);
}

TEST(Mix, WireBytesAreOneValidRequestEach) {
  std::string path = writeTemp(R"([{"method": "POST", "target": "/p?x=1", "headers": {"X-A": "1"}, "body": "abc"},
                                   {"method": "HEAD", "target": "/h"}, {"target": "/g", "headers": {"User-Agent": "u"}}])");
  Mix m;
  std::string err;
  ASSERT_TRUE(loadMix(path, m, err)) << err;
  std::remove(path.c_str());
  Target t;
  ASSERT_TRUE(parseUrl("http://127.0.0.1:8080/", t, err));
  finalizeMix(m, t, {{"X-Run", "9"}}, true);
  moat::l7::ParseLimits limits;
  for (const auto& e : m.entries) {
    auto head = std::make_unique<moat::l7::RequestHead>();
    moat::l7::HttpError herr;
    ASSERT_EQ(moat::l7::parseRequestHead(e.wire.data(), e.wire.size(), limits, *head, herr),
              moat::l7::ParseStatus::kComplete)
        << e.wire;
    EXPECT_EQ(head->method, e.method);
    EXPECT_EQ(head->target, e.target);
    EXPECT_EQ(head->host, "127.0.0.1:8080");
    EXPECT_FALSE(head->keepAlive);  // closeEach: Connection: close
    EXPECT_EQ(e.wire.size(), head->headBytes + e.body.size());
    EXPECT_NE(e.wire.find("X-Run: 9\r\n"), std::string::npos);
  }
  EXPECT_EQ(m.entries[0].wire.substr(m.entries[0].wire.size() - 3), "abc");
  EXPECT_TRUE(m.entries[1].head);
  EXPECT_NE(m.entries[2].wire.find("User-Agent: u\r\n"), std::string::npos);
  EXPECT_EQ(m.entries[2].wire.find("moat-bench"), std::string::npos);  // the mix's own UA wins
}

TEST(Options, DefaultsAndErrors) {
  auto parse = [](std::vector<std::string> args, Options& o, std::string& err) {
    std::vector<char*> argv{const_cast<char*>("moat-bench")};
    for (auto& a : args) argv.push_back(a.data());
    return parseOptions(static_cast<int>(argv.size()), argv.data(), o, err);
  };
  {
    Options o;
    std::string err;
    ASSERT_EQ(parse({"http://127.0.0.1:1/x"}, o, err), 0) << err;
    EXPECT_EQ(o.connections, 16u);
    EXPECT_EQ(o.mix.entries.size(), 1u);
    EXPECT_EQ(o.mix.entries[0].target, "/x");
  }
  {
    Options o;
    std::string err;
    ASSERT_EQ(parse({"-c", "3", "-t", "8", "--tls-mode", "resume", "https://localhost:1/"}, o, err), 0) << err;
    EXPECT_EQ(o.threads, 3u);  // never more threads than connections
    EXPECT_TRUE(o.closeEach);  // resumed handshakes need new connections
    EXPECT_EQ(o.sni, "localhost");
  }
  struct Bad {
    std::vector<std::string> args;
    const char* why;
  };
  for (const Bad& b : std::vector<Bad>{{{"-c", "0", "http://127.0.0.1:1/"}, "-c 0"},
                                       {{"-R", "-5", "http://127.0.0.1:1/"}, "-R -5"},
                                       {{"-d", "abc", "http://127.0.0.1:1/"}, "-d abc"},
                                       {{"-H", "Host: x", "http://127.0.0.1:1/"}, "set by moat-bench"},
                                       {{"-H", "Bad Name: x", "http://127.0.0.1:1/"}, "not an HTTP token"},
                                       {{"--tls-mode", "fast", "https://127.0.0.1:1/"}, "keepalive, handshake or resume"},
                                       {{"http://127.0.0.1:1/", "http://127.0.0.1:2/"}, "more than one URL"},
                                       {{"-c"}, "needs a value"},
                                       {{}, "no URL"}}) {
    Options o;
    std::string err;
    EXPECT_EQ(parse(b.args, o, err), 2) << b.why;
    EXPECT_NE(err.find(b.why), std::string::npos) << err;
  }
  Options o;
  std::string err;
  EXPECT_EQ(parse({"--help"}, o, err), 1);
}

}  // namespace
