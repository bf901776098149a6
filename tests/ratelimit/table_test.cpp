// The bucket table with an injected clock: exact admission counts.
#include "moat/ratelimit/limiter.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cstdio>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

using namespace moat::ratelimit;

namespace {

constexpr uint64_t kSec = 1'000'000'000;

Policy bucket(uint64_t limit, uint64_t periodS, uint64_t burst = 0) {
  Policy p;
  p.algorithm = Algorithm::kTokenBucket;
  p.limit = limit;
  p.periodNs = periodS * kSec;
  p.burst = burst == 0 ? limit : burst;
  return p;
}

Policy window(uint64_t limit, uint64_t periodS) {
  Policy p;
  p.algorithm = Algorithm::kSlidingWindow;
  p.limit = limit;
  p.periodNs = periodS * kSec;
  return p;
}

KeyHash key(uint64_t i) { return hashKey(42, std::string_view(reinterpret_cast<char*>(&i), sizeof i)); }

uint64_t admitted(Table& t, const KeyHash& k, const Policy& p, uint64_t now, int n) {
  uint64_t ok = 0;
  for (int i = 0; i < n; ++i) ok += t.check(k, p, now).allowed ? 1 : 0;
  return ok;
}

}  // namespace

TEST(TokenBucket, DefaultPolicyAdmitsABurstOf2000ThenRefuses) {
  Table t(1000);
  Policy p = bucket(2000, 300);
  for (uint64_t i = 0; i < 2000; ++i) {
    Decision d = t.check(key(1), p, 5 * kSec);
    ASSERT_TRUE(d.allowed) << i;
    EXPECT_EQ(d.remaining, 1999 - i);
  }
  Decision d = t.check(key(1), p, 5 * kSec);
  EXPECT_FALSE(d.allowed);
  EXPECT_EQ(d.remaining, 0u);
  EXPECT_EQ(d.retryAfterNs, 150'000'000u);  // 300 s / 2000
  EXPECT_EQ(d.resetNs, 300 * kSec);
}

TEST(TokenBucket, RefillsOneTokenPerIntervalExactly) {
  Table t(1000);
  Policy p = bucket(10, 60);  // one token per 6 s
  EXPECT_EQ(admitted(t, key(1), p, 0, 20), 10u);
  EXPECT_FALSE(t.check(key(1), p, 6 * kSec - 1).allowed);
  EXPECT_TRUE(t.check(key(1), p, 6 * kSec).allowed);
  EXPECT_FALSE(t.check(key(1), p, 6 * kSec).allowed);
  // After a full period the bucket is whole again, and no fuller.
  EXPECT_EQ(admitted(t, key(1), p, 600 * kSec, 20), 10u);
}

TEST(TokenBucket, RefusedRequestsChargeNothing) {
  Table t(1000);
  Policy p = bucket(10, 60);
  EXPECT_EQ(admitted(t, key(1), p, 0, 10), 10u);
  EXPECT_EQ(admitted(t, key(1), p, 3 * kSec, 1000), 0u);
  EXPECT_TRUE(t.check(key(1), p, 6 * kSec).allowed);
}

TEST(TokenBucket, SteadyRateAtTheLimitIsNeverRefused) {
  Table t(1000);
  Policy p = bucket(2000, 300);
  uint64_t interval = 150'000'000;
  for (uint64_t i = 0; i < 10000; ++i) ASSERT_TRUE(t.check(key(2), p, i * interval).allowed) << i;
}

TEST(TokenBucket, DoubleRateGetsBurstPlusRefill) {
  Table t(1000);
  Policy p = bucket(100, 10);  // 10 per second, burst 100
  uint64_t ok = 0;
  for (uint64_t ms = 0; ms < 20000; ms += 50) ok += t.check(key(3), p, ms * 1'000'000).allowed ? 1 : 0;
  // 400 attempts over 19.95 s at 20/s: the burst of 100 plus 10/s of refill.
  EXPECT_EQ(ok, 100u + 199u);
}

TEST(TokenBucket, FractionalIntervalsAreExact) {
  Table t(1000);
  Policy p = bucket(7, 1);  // 1/7 s per token: not a whole number of ns
  uint64_t ok = 0;
  for (uint64_t ms = 0; ms <= 10000; ++ms) ok += t.check(key(4), p, ms * 1'000'000).allowed ? 1 : 0;
  EXPECT_EQ(ok, 7u + 70u);
}

TEST(TokenBucket, BurstSmallerThanLimit) {
  Table t(1000);
  Policy p = bucket(10, 10, 3);  // 1 per second, at most 3 at once
  EXPECT_EQ(admitted(t, key(5), p, 0, 10), 3u);
  EXPECT_EQ(admitted(t, key(5), p, kSec, 10), 1u);
  EXPECT_EQ(admitted(t, key(5), p, 100 * kSec, 10), 3u);
}

TEST(TokenBucket, RetryAfterIsExact) {
  Table t(1000);
  Policy p = bucket(7, 3, 5);
  for (uint64_t now = 0; now < 20 * kSec; now += 37'000'000) {
    Decision d = t.check(key(6), p, now);
    if (d.allowed) continue;
    ASSERT_GT(d.retryAfterNs, 0u);
    EXPECT_FALSE(t.peek(key(6), p, now + d.retryAfterNs - 1).allowed);
    EXPECT_TRUE(t.peek(key(6), p, now + d.retryAfterNs).allowed);
  }
}

TEST(SlidingWindow, CountsOverTheTrailingWindow) {
  Table t(1000);
  Policy p = window(10, 60);
  EXPECT_EQ(admitted(t, key(7), p, 1 * kSec, 20), 10u);
  // Start of the next window: the previous one still weighs in fully.
  EXPECT_EQ(admitted(t, key(7), p, 60 * kSec, 20), 0u);
  // Half way: floor(10 * 30/60) = 5 of the previous window remain.
  EXPECT_EQ(admitted(t, key(7), p, 90 * kSec, 20), 5u);
  // Next window: previous = 5, full overlap.
  EXPECT_EQ(admitted(t, key(7), p, 120 * kSec, 20), 5u);
  // Two idle windows later everything is forgotten.
  EXPECT_EQ(admitted(t, key(7), p, 300 * kSec, 20), 10u);
}

TEST(SlidingWindow, EdgesOfTheWindow) {
  Table t(1000);
  Policy p = window(4, 60);
  EXPECT_EQ(admitted(t, key(8), p, 60 * kSec - 1, 10), 4u);  // last ns of window 0
  EXPECT_EQ(admitted(t, key(8), p, 60 * kSec, 10), 0u);      // first ns of window 1
  // Overlap 15 s of 60: floor(4 * 15/60) = 1 counted, 3 admitted.
  EXPECT_EQ(admitted(t, key(8), p, 105 * kSec, 10), 3u);
}

TEST(SlidingWindow, RetryAfterIsExact) {
  Table t(1000);
  Policy p = window(9, 10);
  for (uint64_t now = 0; now < 60 * kSec; now += 97'000'000) {
    Decision d = t.check(key(9), p, now);
    if (d.allowed) continue;
    EXPECT_FALSE(t.peek(key(9), p, now + d.retryAfterNs - 1).allowed) << now;
    EXPECT_TRUE(t.peek(key(9), p, now + d.retryAfterNs).allowed) << now;
  }
}

TEST(Table, KeysAreIndependent) {
  Table t(1000);
  Policy p = bucket(3, 60);
  for (uint64_t k = 0; k < 100; ++k) EXPECT_EQ(admitted(t, key(k), p, 0, 5), 3u);
}

TEST(Table, ResetForgetsAKey) {
  Table t(1000);
  Policy p = bucket(3, 60);
  EXPECT_EQ(admitted(t, key(1), p, 0, 5), 3u);
  EXPECT_TRUE(t.reset(key(1)));
  EXPECT_FALSE(t.reset(key(1)));
  EXPECT_EQ(admitted(t, key(1), p, 0, 5), 3u);
}

TEST(Table, BlockUntil) {
  Table t(1000);
  t.block(key(1), 10 * kSec);
  EXPECT_EQ(t.blockedUntil(key(1), 5 * kSec), 10 * kSec);
  EXPECT_EQ(t.blockedUntil(key(1), 10 * kSec), 0u);
  EXPECT_EQ(t.blockedUntil(key(2), 5 * kSec), 0u);
}

TEST(Table, BytesPerKeyAtMost64) {
  Table t(1'000'000);
  EXPECT_GE(t.capacity(), 1'000'000u);
  EXPECT_LE(static_cast<double>(t.bytes()) / static_cast<double>(t.capacity()), 64.0);
  EXPECT_LE(t.bytes(), 1'000'000u * 64);
}

// One set only (capacity kWays): eviction order is observable.
TEST(Table, EvictionSparesTheIndebtedKey) {
  Table t(Table::kWays);
  ASSERT_EQ(t.capacity(), Table::kWays);
  Policy p = bucket(10, 60);
  KeyHash abuser = key(1000);
  EXPECT_EQ(admitted(t, abuser, p, 0, 50), 10u);
  // Many light clients pass through: each would evict the least indebted.
  for (uint64_t k = 0; k < 10000; ++k) ASSERT_TRUE(t.check(key(k + 5000), p, kSec).allowed);
  EXPECT_FALSE(t.check(abuser, p, 2 * kSec).allowed);
  EXPECT_GT(t.stats().evictionsActive + t.stats().evictionsIdle, 9000u);
}

TEST(Table, GhostSlotRemembersAnEvictedDebtor) {
  Table t(Table::kWays);
  Policy p = bucket(10, 60);
  KeyHash abuser = key(1000);
  EXPECT_EQ(admitted(t, abuser, p, 0, 10), 10u);  // owes 60 s
  // Nine heavier debtors push it out of the live entries.
  for (uint64_t k = 0; k < Table::kWays; ++k) {
    Policy heavy = bucket(10, 600);
    EXPECT_EQ(admitted(t, key(k), heavy, 0, 10), 10u);
  }
  EXPECT_EQ(t.stats().evictionsActive, 1u);
  EXPECT_FALSE(t.check(abuser, p, kSec).allowed);
  EXPECT_EQ(t.stats().ghostRestores, 1u);
}

TEST(Table, TenMillionClientsInAMillionKeysStayBoundedAndTheAbuserStaysLimited) {
  Table t(1'000'000);
  Policy p = bucket(2000, 300);
  KeyHash abuser = key(~0ull);
  EXPECT_EQ(admitted(t, abuser, p, 0, 3000), 2000u);
  auto rss = [] {
    std::ifstream f("/proc/self/statm");
    size_t size = 0, resident = 0;
    f >> size >> resident;
    return resident * 4096;
  };
  size_t before = rss();
  uint64_t now = kSec;
  for (uint64_t i = 0; i < 10'000'000; ++i) {
    t.check(key(i), p, now);
    if (i % 1000 == 0) now += 1'000'000;  // 10 M clients over ~10 s
  }
  size_t grown = rss() - before;
  EXPECT_LE(grown, t.bytes() + (8u << 20)) << "RSS grew " << grown << " for a " << t.bytes()
                                           << "-byte table";
  // Exactly the tokens that refilled since t=0 (one per 150 ms), not a
  // fresh bucket of 2000.
  EXPECT_EQ(admitted(t, abuser, p, now, 3000), now / 150'000'000);
  TableStats st = t.stats();
  EXPECT_GT(st.evictionsIdle + st.evictionsActive, 8'000'000u);
  EXPECT_LE(t.trackedKeys(now), t.capacity());
  std::printf("10M keys: %zu bytes, %.1f bytes/key, evictions idle %llu active %llu\n", t.bytes(),
              static_cast<double>(t.bytes()) / static_cast<double>(t.capacity()),
              static_cast<unsigned long long>(st.evictionsIdle),
              static_cast<unsigned long long>(st.evictionsActive));
}

TEST(Table, ConcurrentWorkersOnOneKeyAreExact) {
  Table t(10000);
  Policy p = bucket(5000, 300);
  std::atomic<uint64_t> ok{0};
  std::vector<std::thread> threads;
  for (int w = 0; w < 4; ++w) {
    threads.emplace_back([&] { ok += admitted(t, key(1), p, kSec, 20000); });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(ok.load(), 5000u);
}

TEST(Table, ConcurrentWorkersOnManyKeysAreExact) {
  Table t(100000);
  Policy p = bucket(7, 300);
  std::atomic<uint64_t> ok{0};
  std::vector<std::thread> threads;
  for (int w = 0; w < 4; ++w) {
    threads.emplace_back([&] {
      for (uint64_t k = 0; k < 2000; ++k) ok += admitted(t, key(k), p, kSec, 3);
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(ok.load(), 2000u * 7);
}

TEST(TopKeys, SpaceSavingKeepsTheHeaviest) {
  TopKeys top;
  for (int round = 0; round < 100; ++round) {
    top.add(1, "r", "heavy");
    top.add(2, "r", "second");
    if (round % 2 == 0) top.add(2, "r", "second");
    for (uint64_t k = 0; k < 10; ++k) top.add(1000 + round * 10 + k, "r", "noise");
  }
  auto merged = TopKeys::merge({top.items()}, 2);
  ASSERT_EQ(merged.size(), 2u);
  EXPECT_EQ(merged[0].key, "second");
  EXPECT_EQ(merged[0].count, 150u);
  EXPECT_EQ(merged[1].key, "heavy");
  EXPECT_EQ(merged[1].count, 100u);
}

TEST(TopKeys, MergeSumsAcrossWorkers) {
  TopKeys a, b;
  for (int i = 0; i < 5; ++i) a.add(7, "r", "k7");
  for (int i = 0; i < 3; ++i) b.add(7, "r", "k7");
  b.add(8, "r", "k8");
  auto m = TopKeys::merge({a.items(), b.items()}, 10);
  ASSERT_EQ(m.size(), 2u);
  EXPECT_EQ(m[0].count, 8u);
  EXPECT_EQ(m[1].key, "k8");
}
