#include "moat/l4/neighbors.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <thread>
#include <vector>

namespace moat::l4 {
namespace {

constexpr uint64_t kSec = 1'000'000'000;
constexpr uint64_t kT0 = 777 * kSec;

struct Ip {
  uint8_t b[16] = {};
};

Ip v4(uint32_t a) {
  Ip x;
  x.b[0] = static_cast<uint8_t>(a >> 24);
  x.b[1] = static_cast<uint8_t>(a >> 16);
  x.b[2] = static_cast<uint8_t>(a >> 8);
  x.b[3] = static_cast<uint8_t>(a);
  return x;
}

Ip v6(uint16_t last) {
  Ip x;
  x.b[0] = 0x20;
  x.b[1] = 0x01;
  x.b[2] = 0x0d;
  x.b[3] = 0xb8;
  x.b[14] = static_cast<uint8_t>(last >> 8);
  x.b[15] = static_cast<uint8_t>(last);
  return x;
}

struct Mac {
  uint8_t b[6] = {};
  bool operator==(const Mac& o) const { return std::memcmp(b, o.b, 6) == 0; }
};

Mac mac(uint8_t last) { return Mac{{0x02, 0x00, 0x5e, 0x10, 0x00, last}}; }

TEST(NeighborTable, ResolveLearnLookup) {
  NeighborTable t(64);
  Ip gw = v4(0x0a000001);
  Mac out;
  EXPECT_FALSE(t.lookup(gw.b, 4, out.b));
  EXPECT_EQ(t.stats().entries, 0u);  // lookup never creates
  EXPECT_TRUE(t.needsResolve(gw.b, 4, kT0));
  EXPECT_EQ(t.stats().entries, 1u);
  EXPECT_FALSE(t.lookup(gw.b, 4, out.b));  // tracked, no MAC yet
  EXPECT_EQ(t.learn(gw.b, 4, mac(1).b, kT0 + 1000), LearnResult::kUpdated);
  ASSERT_TRUE(t.lookup(gw.b, 4, out.b));
  EXPECT_EQ(out, mac(1));
  EXPECT_FALSE(t.needsResolve(gw.b, 4, kT0 + 10 * kSec));  // resolved
  EXPECT_EQ(t.learn(gw.b, 4, mac(1).b, kT0 + 2000), LearnResult::kUnchanged);
  EXPECT_EQ(t.learn(gw.b, 4, mac(2).b, kT0 + 3000), LearnResult::kUpdated);
  ASSERT_TRUE(t.lookup(gw.b, 4, out.b));
  EXPECT_EQ(out, mac(2));
  NeighborStats s = t.stats();
  EXPECT_EQ(s.learned, 2u);
  EXPECT_EQ(s.macChanged, 1u);
  EXPECT_EQ(s.resolveRequests, 1u);
}

TEST(NeighborTable, UnsolicitedRepliesAreIgnored) {
  NeighborTable t(64);
  EXPECT_EQ(t.learn(v4(0x0a000009).b, 4, mac(9).b, kT0), LearnResult::kUnknown);
  Mac out;
  EXPECT_FALSE(t.lookup(v4(0x0a000009).b, 4, out.b));
  EXPECT_EQ(t.stats().ignoredUnknown, 1u);
  EXPECT_EQ(t.stats().entries, 0u);
  EXPECT_EQ(t.learn(v4(1).b, 5, mac(9).b, kT0), LearnResult::kBadVersion);
}

TEST(NeighborTable, StaticEntriesWinOverLearning) {
  NeighborTable t(64);
  Ip gw = v6(1);
  ASSERT_TRUE(t.setStatic(gw.b, 6, mac(7).b));
  EXPECT_EQ(t.learn(gw.b, 6, mac(8).b, kT0), LearnResult::kStatic);
  Mac out;
  ASSERT_TRUE(t.lookup(gw.b, 6, out.b));
  EXPECT_EQ(out, mac(7));
  EXPECT_FALSE(t.needsResolve(gw.b, 6, kT0));  // never resolved
  EXPECT_EQ(t.stats().ignoredStatic, 1u);
  // A learned entry becomes static when configured.
  Ip b = v6(2);
  ASSERT_TRUE(t.needsResolve(b.b, 6, kT0));
  ASSERT_EQ(t.learn(b.b, 6, mac(1).b, kT0), LearnResult::kUpdated);
  ASSERT_TRUE(t.setStatic(b.b, 6, mac(2).b));
  ASSERT_TRUE(t.lookup(b.b, 6, out.b));
  EXPECT_EQ(out, mac(2));
  EXPECT_EQ(t.learn(b.b, 6, mac(3).b, kT0), LearnResult::kStatic);
  EXPECT_FALSE(t.setStatic(b.b, 0, mac(2).b));
}

TEST(NeighborTable, ResolveIsRateLimitedPerAddress) {
  NeighborTable t(64);  // one request per second per address
  Ip a = v4(0xc0000201), b = v4(0xc0000202);
  EXPECT_TRUE(t.needsResolve(a.b, 4, kT0));
  EXPECT_FALSE(t.needsResolve(a.b, 4, kT0));
  EXPECT_TRUE(t.needsResolve(b.b, 4, kT0));  // independent
  EXPECT_FALSE(t.needsResolve(a.b, 4, kT0 + kSec - 1));
  EXPECT_TRUE(t.needsResolve(a.b, 4, kT0 + kSec));
  EXPECT_FALSE(t.needsResolve(a.b, 4, kT0 + kSec));
  EXPECT_FALSE(t.needsResolve(a.b, 4, kT0));  // a clock behind: no request
  EXPECT_EQ(t.stats().resolveRequests, 3u);
}

TEST(NeighborTable, ResolveWorksFromTimeZero) {
  NeighborTable t(8);
  Ip a = v4(1);
  EXPECT_TRUE(t.needsResolve(a.b, 4, 0));
  EXPECT_FALSE(t.needsResolve(a.b, 4, 1));
}

TEST(NeighborTable, StaleLearnedEntriesAreReResolvedButStillUsed) {
  NeighborTable t(64, kSec, 30 * kSec);
  Ip a = v4(0x0a000002);
  ASSERT_TRUE(t.needsResolve(a.b, 4, kT0));
  ASSERT_EQ(t.learn(a.b, 4, mac(4).b, kT0 + kSec), LearnResult::kUpdated);
  EXPECT_FALSE(t.needsResolve(a.b, 4, kT0 + 31 * kSec - 1));
  EXPECT_TRUE(t.needsResolve(a.b, 4, kT0 + 31 * kSec));
  EXPECT_FALSE(t.needsResolve(a.b, 4, kT0 + 31 * kSec + 1));  // interval still applies
  Mac out;
  ASSERT_TRUE(t.lookup(a.b, 4, out.b));
  EXPECT_EQ(out, mac(4));
  // The same MAC confirmed again: fresh, no request.
  ASSERT_EQ(t.learn(a.b, 4, mac(4).b, kT0 + 32 * kSec), LearnResult::kUnchanged);
  EXPECT_FALSE(t.needsResolve(a.b, 4, kT0 + 40 * kSec));
}

TEST(NeighborTable, VersionsAndTrailingBytes) {
  NeighborTable t(64);
  Ip a = v4(0x0a000001);
  Ip junk = a;
  junk.b[12] = 0xaa;  // ignored for IPv4
  ASSERT_TRUE(t.setStatic(a.b, 4, mac(1).b));
  Mac out;
  ASSERT_TRUE(t.lookup(junk.b, 4, out.b));
  EXPECT_EQ(out, mac(1));
  EXPECT_FALSE(t.lookup(a.b, 6, out.b));  // same bytes as IPv6: another address
  EXPECT_FALSE(t.lookup(a.b, 0, out.b));
  EXPECT_FALSE(t.needsResolve(a.b, 7, kT0));
}

TEST(NeighborTable, FullTableIsBoundedAndCounted) {
  NeighborTable t(4, kSec, 0, 4);
  ASSERT_EQ(t.capacity(), 4u);
  for (uint32_t i = 0; i < 4; ++i) ASSERT_TRUE(t.needsResolve(v4(100 + i).b, 4, kT0)) << i;
  EXPECT_FALSE(t.needsResolve(v4(200).b, 4, kT0));
  EXPECT_FALSE(t.setStatic(v4(201).b, 4, mac(1).b));
  EXPECT_EQ(t.stats().tableFull, 2u);
  EXPECT_EQ(t.stats().entries, 4u);
  // Existing entries still work.
  ASSERT_EQ(t.learn(v4(102).b, 4, mac(2).b, kT0), LearnResult::kUpdated);
  Mac out;
  ASSERT_TRUE(t.lookup(v4(102).b, 4, out.b));
  EXPECT_EQ(out, mac(2));
  Mac none;
  EXPECT_FALSE(t.lookup(v4(200).b, 4, none.b));
  EXPECT_THROW(NeighborTable(0), std::invalid_argument);
}

// Many entries, small probe window: every created entry stays findable.
TEST(NeighborTable, ManyEntries) {
  NeighborTable t(1024);
  for (uint32_t i = 0; i < 700; ++i) {
    if (!t.setStatic(v4(0x0a000000 + i).b, 4, mac(static_cast<uint8_t>(i)).b)) {
      ADD_FAILURE() << "no slot for " << i;
    }
  }
  for (uint32_t i = 0; i < 700; ++i) {
    Mac out;
    ASSERT_TRUE(t.lookup(v4(0x0a000000 + i).b, 4, out.b)) << i;
    EXPECT_EQ(out, mac(static_cast<uint8_t>(i)));
  }
  EXPECT_EQ(t.stats().entries, 700u);
}

// A MAC whose bytes are tied together: a torn mix of two writes would break
// the relation (bytes of different `seed` values cannot satisfy it).
Mac patterned(uint32_t seed) {
  Mac m;
  uint8_t b = static_cast<uint8_t>(seed);
  uint8_t c = static_cast<uint8_t>(seed >> 8);
  m.b[0] = b;
  m.b[1] = c;
  m.b[2] = static_cast<uint8_t>(b ^ 0x5a);
  m.b[3] = static_cast<uint8_t>(c ^ 0xa5);
  m.b[4] = static_cast<uint8_t>(b + c);
  m.b[5] = static_cast<uint8_t>(b * 3 + 1);
  return m;
}
bool consistent(const Mac& m) { return patterned(m.b[0] | (uint32_t{m.b[1]} << 8)) == m; }

TEST(NeighborTable, ConcurrentCreationMakesOneEntryAndOneRequestPerAddress) {
  constexpr int kThreads = 4;
  constexpr uint32_t kKeys = 2000;
  NeighborTable t(8192);
  std::atomic<int> ready{0};
  std::atomic<uint64_t> trues{0};
  std::vector<std::thread> threads;
  for (int th = 0; th < kThreads; ++th) {
    threads.emplace_back([&, th] {
      ready.fetch_add(1);
      while (ready.load() < kThreads) {
      }
      uint64_t mine = 0;
      for (uint32_t i = 0; i < kKeys; ++i) {
        // Threads walk the keys in different orders so they collide often.
        uint32_t k = (th & 1) ? i : kKeys - 1 - i;
        if (t.needsResolve(v4(0x0a000000 + k).b, 4, kT0)) ++mine;
      }
      trues.fetch_add(mine);
    });
  }
  for (std::thread& th : threads) th.join();
  EXPECT_EQ(trues.load(), kKeys);
  NeighborStats s = t.stats();
  EXPECT_EQ(s.entries, kKeys);  // no key got two slots
  EXPECT_EQ(s.resolveRequests, kKeys);
  EXPECT_EQ(s.tableFull, 0u);
}

TEST(NeighborTable, ConcurrentLearnAndLookupNeverTearAMac) {
  constexpr int kThreads = 4;  // 2 learning, 2 looking up (and resolving)
  constexpr uint32_t kKeys = 16;
  NeighborTable t(256);
  for (uint32_t k = 0; k < kKeys; ++k) ASSERT_TRUE(t.needsResolve(v4(0x0a000000 + k).b, 4, kT0));
  ASSERT_TRUE(t.learn(v4(0x0a000000).b, 4, patterned(1).b, kT0) == LearnResult::kUpdated);
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> torn{0}, reads{0};
  std::vector<std::thread> threads;
  for (int th = 0; th < kThreads; ++th) {
    threads.emplace_back([&, th] {
      uint32_t x = 0x9e3779b9u * static_cast<uint32_t>(th + 1);
      for (int i = 0; i < 200'000 && !stop.load(std::memory_order_relaxed); ++i) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        Ip ip = v4(0x0a000000 + x % kKeys);
        if (th < 2) {
          Mac m = patterned(x >> 8);
          t.learn(ip.b, 4, m.b, kT0 + static_cast<uint64_t>(i));
        } else {
          Mac m;
          if (t.lookup(ip.b, 4, m.b)) {
            reads.fetch_add(1, std::memory_order_relaxed);
            if (!consistent(m)) torn.fetch_add(1, std::memory_order_relaxed);
          }
          t.needsResolve(ip.b, 4, kT0 + static_cast<uint64_t>(i));
        }
      }
    });
  }
  for (std::thread& th : threads) th.join();
  EXPECT_EQ(torn.load(), 0u);
  EXPECT_GT(reads.load(), 0u);
  // A static entry set while learners run stays static.
  EXPECT_TRUE(t.setStatic(v4(0x0a000001).b, 4, patterned(77).b));
  EXPECT_EQ(t.learn(v4(0x0a000001).b, 4, patterned(78).b, kT0), LearnResult::kStatic);
  Mac out;
  ASSERT_TRUE(t.lookup(v4(0x0a000001).b, 4, out.b));
  EXPECT_EQ(out, patterned(77));
}

TEST(NeighborTable, SetStaticRacingLearnAlwaysEndsStatic) {
  for (int round = 0; round < 50; ++round) {
    NeighborTable t(16);
    Ip a = v4(0x0a0000ff);
    ASSERT_TRUE(t.needsResolve(a.b, 4, kT0));
    std::atomic<bool> go{false};
    std::thread learner([&] {
      while (!go.load()) {
      }
      for (uint32_t i = 0; i < 2000; ++i) t.learn(a.b, 4, patterned(i).b, kT0 + i);
    });
    go.store(true);
    ASSERT_TRUE(t.setStatic(a.b, 4, patterned(0xbeef).b));
    learner.join();
    Mac out;
    ASSERT_TRUE(t.lookup(a.b, 4, out.b));
    EXPECT_EQ(out, patterned(0xbeef)) << "round " << round;
  }
}

}  // namespace
}  // namespace moat::l4
