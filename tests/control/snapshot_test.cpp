// Snapshot building (routes, balancing tables) and quiescent-state
// reclamation of old snapshots.
#include "moat/control/snapshot.h"

#include "moat/control/geo.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include <atomic>
#include <thread>

namespace moat::control {
namespace {

Config twoPoolConfig() {
  ConfigResult r = parseConfig(R"({
    "listeners": [{"address": "127.0.0.1", "port": 8080}],
    "pools": [
      {"name": "web", "balance": "round_robin", "backends": [
        {"address": "10.0.0.1", "port": 80, "weight": 1},
        {"address": "10.0.0.2", "port": 80, "weight": 3}]},
      {"name": "api", "balance": "maglev", "maglevTableSize": 251, "backends": [
        {"address": "::1", "port": 81}]}
    ],
    "routes": [
      {"host": "*", "pathPrefix": "/", "pool": "web"},
      {"host": "*", "pathPrefix": "/api", "pool": "api"},
      {"host": "Shop.Example", "pathPrefix": "/", "pool": "api"}
    ]})");
  EXPECT_TRUE(r.errors.empty()) << (r.errors.empty() ? "" : r.errors[0].toString());
  return *r.config;
}

TEST(Snapshot, RoutesMatchSpecificHostThenLongestPrefix) {
  auto s = buildSnapshot(twoPoolConfig(), 1);
  const RouteRuntime* r = s->matchRoute("shop.example:8080", "/api/x");
  ASSERT_NE(r, nullptr);
  EXPECT_EQ(r->host, "shop.example");
  r = s->matchRoute("other", "/api/x");
  ASSERT_NE(r, nullptr);
  EXPECT_EQ(r->pathPrefix, "/api");
  EXPECT_EQ(s->pools[r->pool].name, "api");
  r = s->matchRoute("other", "/index.html");
  ASSERT_NE(r, nullptr);
  EXPECT_EQ(s->pools[r->pool].name, "web");
}

TEST(Snapshot, NoRouteWhenNothingMatches) {
  ConfigResult cr = parseConfig(R"({
    "listeners": [{"address": "127.0.0.1", "port": 8080}],
    "pools": [{"name": "p", "backends": []}],
    "routes": [{"host": "a.example", "pathPrefix": "/x", "pool": "p"}]})");
  ASSERT_TRUE(cr.errors.empty());
  auto s = buildSnapshot(*cr.config, 1);
  EXPECT_EQ(s->matchRoute("b.example", "/x"), nullptr);
  EXPECT_EQ(s->matchRoute("a.example", "/y"), nullptr);
  EXPECT_NE(s->matchRoute("A.EXAMPLE", "/x/1"), nullptr);
}

TEST(Snapshot, SmoothWeightedRoundRobinFollowsWeights) {
  auto s = buildSnapshot(twoPoolConfig(), 1);
  const PoolRuntime& web = s->pools[0];
  ASSERT_EQ(web.rrSequence.size(), 4u);
  int counts[2] = {0, 0};
  for (uint32_t b : web.rrSequence) ++counts[b];
  EXPECT_EQ(counts[0], 1);
  EXPECT_EQ(counts[1], 3);
  // Smooth (NGINX's algorithm): the light backend is interleaved, not last.
  EXPECT_EQ(web.rrSequence, (std::vector<uint32_t>{1, 0, 1, 1}));
}

TEST(Snapshot, MaglevTableAndAddresses) {
  auto s = buildSnapshot(twoPoolConfig(), 7);
  EXPECT_EQ(s->version, 7u);
  const PoolRuntime& api = s->pools[1];
  EXPECT_EQ(api.maglevTable.size(), 251u);
  EXPECT_EQ(api.backends[0].key, "[::1]:81");
  EXPECT_EQ(api.backends[0].addr.ss_family, AF_INET6);
  EXPECT_EQ(s->pools[0].backends[1].key, "10.0.0.2:80");
  EXPECT_TRUE(s->pools[0].maglevTable.empty());
}

Config l4Config() {
  ConfigResult r = parseConfig(R"({
    "listeners": [{"address": "127.0.0.1", "port": 8080}],
    "pools": [{"name": "p", "backends": [{"address": "10.0.0.1", "port": 80},
                                          {"address": "10.0.0.2", "port": 80},
                                          {"address": "10.0.0.3", "port": 80, "drain": true}]}],
    "routes": [{"pool": "p"}],
    "l4": {"engine": "dpdk", "localIpv4": "10.0.0.254", "dpdk": {"port": "net_null0"},
           "denyCidrs": ["192.0.2.0/24"],
           "services": [{"address": "10.0.0.100", "port": 80, "pool": "p", "forwarding": "ipip"}]}
  })");
  EXPECT_TRUE(r.errors.empty());
  return *r.config;
}

// Health (out of service) and drain feed the L4 Maglev table: the backend
// keeps its stable id (flows find it) but gets no new flows; out of service
// it is also marked so its flows are reset.
TEST(Snapshot, L4ServiceFollowsHealthAndDrain) {
  SnapshotInputs in;
  in.outOfService = {"p/10.0.0.2:80"};
  auto s = buildSnapshot(l4Config(), 1, in);
  ASSERT_EQ(s->l4.services.size(), 1u);
  const l4::Service& svc = s->l4.services[0];
  ASSERT_EQ(svc.backends.size(), 3u);
  EXPECT_TRUE(svc.backends[0].inService && svc.backends[0].acceptsNew);
  EXPECT_FALSE(svc.backends[1].inService);
  EXPECT_FALSE(svc.backends[1].acceptsNew);
  EXPECT_TRUE(svc.backends[2].inService);  // drained: flows stay
  EXPECT_FALSE(svc.backends[2].acceptsNew);
  for (uint32_t idx : svc.maglev) EXPECT_EQ(idx, 0u);  // only the healthy, undrained one
  EXPECT_EQ(svc.backendById(svc.backends[1].id), &svc.backends[1]);
  EXPECT_EQ(stableBackendId("10.0.0.2:80"), svc.backends[1].id);
  // The VIP index and deny prefixes.
  const uint8_t vip[4] = {10, 0, 0, 100};
  EXPECT_EQ(s->l4.findService(vip, 4, 6, 80), &svc);
  EXPECT_EQ(s->l4.findService(vip, 4, 17, 80), nullptr);
  EXPECT_TRUE(s->l4.isVipAddress(vip, 4));
  ASSERT_EQ(s->l4.denyPrefixes.size(), 1u);
  EXPECT_EQ(s->l4.denyPrefixes[0].length, 24);
  // Back in service: Maglev spreads over the two undrained backends again.
  auto s2 = buildSnapshot(l4Config(), 2, SnapshotInputs{});
  bool saw[2] = {false, false};
  for (uint32_t idx : s2->l4.services[0].maglev) {
    ASSERT_LT(idx, 2u);
    saw[idx] = true;
  }
  EXPECT_TRUE(saw[0] && saw[1]);
}

// l4.geoDeny: every range of the country becomes a packet-level deny prefix
// (LPM on the DPDK engine) and a CidrSet entry (socket engine), tagged with
// the country so drops are counted as geo.
TEST(Snapshot, L4GeoDenyPrefixesComeFromTheGeoData) {
  char dir[] = "/tmp/moat-snap-geo-XXXXXX";
  ASSERT_NE(mkdtemp(dir), nullptr);
  {
    std::ofstream(std::string(dir) + "/zz.zone") << "192.0.2.0/24\n198.51.100.0/25\n2001:db8::/32\n";
    std::ofstream(std::string(dir) + "/yy.zone") << "203.0.113.0/24\n";
  }
  GeoSourceConfig src;
  src.type = GeoSourceType::kZones;
  src.path = dir;
  GeoLoader loader({src});
  std::vector<std::string> errors;
  SnapshotInputs in;
  in.geo = loader.reload(&errors);
  ASSERT_TRUE(errors.empty());
  Config c = l4Config();
  c.geo.sources = {src};
  c.l4.geoDeny = {"ZZ"};
  auto s = buildSnapshot(c, 1, in);
  size_t geo = 0;
  for (const l4::DenyPrefix& p : s->l4.denyPrefixes) {
    if (p.country == 0) continue;
    ++geo;
    EXPECT_EQ(p.country, packCountry('Z', 'Z'));
  }
  EXPECT_EQ(geo, 3u);
  l4::IpAddress a;
  ASSERT_TRUE(l4::IpAddress::parse("192.0.2.77", a));
  EXPECT_TRUE(s->l4.denyGeo.contains(a));
  ASSERT_TRUE(l4::IpAddress::parse("198.51.100.200", a));
  EXPECT_FALSE(s->l4.denyGeo.contains(a));  // outside the /25
  ASSERT_TRUE(l4::IpAddress::parse("203.0.113.1", a));
  EXPECT_FALSE(s->l4.denyGeo.contains(a));  // YY is not denied
  ASSERT_TRUE(l4::IpAddress::parse("2001:db8::5", a));
  EXPECT_TRUE(s->l4.denyGeo.contains(a));
  std::filesystem::remove_all(dir);
}

TEST(SnapshotPublisher, OldSnapshotLivesUntilEveryWorkerMovedOn) {
  SnapshotPublisher pub(2);
  pub.publish(buildSnapshot(twoPoolConfig(), 1));
  EXPECT_EQ(pub.acquire(0)->version, 1u);
  EXPECT_EQ(pub.acquire(1)->version, 1u);
  pub.publish(buildSnapshot(twoPoolConfig(), 2));
  EXPECT_EQ(pub.reclaim(), 1u);  // both workers may still use version 1
  EXPECT_EQ(pub.acquire(0)->version, 2u);
  EXPECT_EQ(pub.reclaim(), 1u);  // worker 1 has not passed a quiescent point
  EXPECT_EQ(pub.acquire(1)->version, 2u);
  EXPECT_EQ(pub.reclaim(), 0u);
  EXPECT_EQ(pub.current()->version, 2u);
}

TEST(SnapshotPublisher, OfflineWorkerDoesNotHoldReclamation) {
  SnapshotPublisher pub(2);
  pub.publish(buildSnapshot(twoPoolConfig(), 1));
  pub.acquire(0);
  pub.goOffline(1);
  pub.publish(buildSnapshot(twoPoolConfig(), 2));
  pub.acquire(0);
  EXPECT_EQ(pub.reclaim(), 0u);
}

// Workers acquiring concurrently with publications always see a complete
// snapshot whose version never goes backwards (run under TSan/ASan in the
// debug preset).
TEST(SnapshotPublisher, ConcurrentAcquireSeesMonotonicVersions) {
  SnapshotPublisher pub(2);
  pub.publish(buildSnapshot(twoPoolConfig(), 1));
  std::atomic<bool> stop{false};
  std::atomic<int> regressions{0};
  std::vector<std::thread> ts;
  for (size_t w = 0; w < 2; ++w) {
    ts.emplace_back([&, w] {
      uint64_t last = 0;
      while (!stop.load()) {
        const Snapshot* s = pub.acquire(w);
        if (s->version < last || s->pools.size() != 2) ++regressions;
        last = s->version;
      }
      pub.goOffline(w);
    });
  }
  for (uint64_t v = 2; v < 200; ++v) {
    pub.publish(buildSnapshot(twoPoolConfig(), v));
    pub.reclaim();
  }
  stop.store(true);
  for (auto& t : ts) t.join();
  EXPECT_EQ(regressions.load(), 0);
  EXPECT_EQ(pub.reclaim(), 0u);
}

}  // namespace
}  // namespace moat::control
