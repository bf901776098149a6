#include "moat/l4/syn_limiter.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <stdexcept>

namespace moat::l4 {
namespace {

constexpr uint64_t kSec = 1'000'000'000;
constexpr uint64_t kT0 = 1000 * kSec;  // arbitrary start: time need not begin at 0

struct Addr {
  uint8_t b[16] = {};
};

Addr v4(uint8_t a, uint8_t b, uint8_t c, uint8_t d) {
  Addr x;
  x.b[0] = a;
  x.b[1] = b;
  x.b[2] = c;
  x.b[3] = d;
  return x;
}

// 2001:db8:<net>::<host>
Addr v6(uint16_t net, uint16_t host) {
  Addr x;
  x.b[0] = 0x20;
  x.b[1] = 0x01;
  x.b[2] = 0x0d;
  x.b[3] = 0xb8;
  x.b[4] = static_cast<uint8_t>(net >> 8);
  x.b[5] = static_cast<uint8_t>(net);
  x.b[14] = static_cast<uint8_t>(host >> 8);
  x.b[15] = static_cast<uint8_t>(host);
  return x;
}

SynLimiterConfig config(uint64_t rate, uint64_t burst) {
  SynLimiterConfig c;
  c.ratePerSec = rate;
  c.burst = burst;
  c.capacity = 1024;
  return c;
}

// Number of allowed checks out of n at one instant.
int allowedAt(SynLimiter& l, const Addr& a, uint8_t ver, uint64_t now, int n) {
  int ok = 0;
  for (int i = 0; i < n; ++i) ok += l.allow(a.b, ver, now) ? 1 : 0;
  return ok;
}

TEST(SynLimiter, NewSourceGetsExactlyTheBurst) {
  SynLimiter l(config(10, 5));
  Addr a = v4(192, 0, 2, 1);
  EXPECT_EQ(allowedAt(l, a, 4, kT0, 8), 5);
  EXPECT_EQ(l.stats().allowed, 5u);
  EXPECT_EQ(l.stats().limited, 3u);
  EXPECT_EQ(l.stats().newSources, 1u);
}

TEST(SynLimiter, RefillsAtTheRateToTheNanosecond) {
  SynLimiter l(config(10, 5));  // one token per 100 ms
  Addr a = v4(192, 0, 2, 1);
  ASSERT_EQ(allowedAt(l, a, 4, kT0, 5), 5);
  EXPECT_FALSE(l.allow(a.b, 4, kT0 + 100'000'000 - 1));  // 1 ns short of a token
  EXPECT_TRUE(l.allow(a.b, 4, kT0 + 100'000'000));       // refill is cumulative: exact
  EXPECT_FALSE(l.allow(a.b, 4, kT0 + 100'000'000));
  EXPECT_TRUE(l.allow(a.b, 4, kT0 + 200'000'000));
}

TEST(SynLimiter, RefillNeverExceedsTheBurst) {
  SynLimiter l(config(10, 5));
  Addr a = v4(192, 0, 2, 1);
  ASSERT_EQ(allowedAt(l, a, 4, kT0, 5), 5);
  EXPECT_EQ(allowedAt(l, a, 4, kT0 + 3600 * kSec, 10), 5);  // an hour later: still 5
  EXPECT_EQ(allowedAt(l, a, 4, kT0 + 3600 * kSec + 250'000'000, 10), 2);
}

TEST(SynLimiter, FractionalRatesAccumulate) {
  // A token every 333.33 ms; burst 2 so checks 1 ms apart never hit the cap.
  SynLimiter l(config(3, 2));
  Addr a = v4(198, 51, 100, 7);
  ASSERT_EQ(allowedAt(l, a, 4, kT0, 2), 2);
  EXPECT_FALSE(l.allow(a.b, 4, kT0 + 333'333'333));  // 0.999999999 tokens
  EXPECT_TRUE(l.allow(a.b, 4, kT0 + 333'333'334));
  // Three tokens per second exactly over many seconds.
  int ok = 0;
  for (uint64_t ms = 1; ms <= 10'000; ++ms) ok += l.allow(a.b, 4, kT0 + 333'333'334 + ms * 1'000'000);
  EXPECT_EQ(ok, 30);
}

TEST(SynLimiter, TimeGoingBackwardsGrantsNothing) {
  SynLimiter l(config(10, 1));
  Addr a = v4(192, 0, 2, 1);
  ASSERT_TRUE(l.allow(a.b, 4, kT0));
  EXPECT_FALSE(l.allow(a.b, 4, kT0 - 10 * kSec));
  EXPECT_FALSE(l.allow(a.b, 4, kT0 + 50'000'000));
  EXPECT_TRUE(l.allow(a.b, 4, kT0 + 100'000'000));
}

TEST(SynLimiter, SourcesAreIndependent) {
  SynLimiter l(config(1, 2));
  Addr a = v4(192, 0, 2, 1), b = v4(192, 0, 2, 2);
  EXPECT_EQ(allowedAt(l, a, 4, kT0, 5), 2);
  EXPECT_EQ(allowedAt(l, b, 4, kT0, 5), 2);
  EXPECT_EQ(allowedAt(l, a, 4, kT0, 1), 0);
  EXPECT_EQ(l.stats().newSources, 2u);
}

TEST(SynLimiter, V4IgnoresTrailingBytesAndDiffersFromV6) {
  SynLimiter l(config(1, 1));
  Addr a = v4(10, 1, 2, 3);
  Addr junk = a;
  junk.b[9] = 0xff;  // bytes past the IPv4 address play no part
  ASSERT_TRUE(l.allow(a.b, 4, kT0));
  EXPECT_FALSE(l.allow(junk.b, 4, kT0));
  // The same 16 bytes read as IPv6 are another source.
  EXPECT_TRUE(l.allow(a.b, 6, kT0));
}

TEST(SynLimiter, V6SourcesShareTheirSlash64) {
  SynLimiter l(config(1, 2));
  EXPECT_TRUE(l.allow(v6(1, 1).b, 6, kT0));
  EXPECT_TRUE(l.allow(v6(1, 2).b, 6, kT0));   // same /64, other host: same bucket
  EXPECT_FALSE(l.allow(v6(1, 3).b, 6, kT0));
  EXPECT_TRUE(l.allow(v6(2, 1).b, 6, kT0));   // next /64: own bucket
}

TEST(SynLimiter, ConfigurablePrefixLengths) {
  SynLimiterConfig c = config(1, 1);
  c.v4PrefixLen = 24;
  c.v6PrefixLen = 128;
  SynLimiter l(c);
  EXPECT_TRUE(l.allow(v4(192, 0, 2, 1).b, 4, kT0));
  EXPECT_FALSE(l.allow(v4(192, 0, 2, 200).b, 4, kT0));  // same /24
  EXPECT_TRUE(l.allow(v4(192, 0, 3, 1).b, 4, kT0));
  EXPECT_TRUE(l.allow(v6(1, 1).b, 6, kT0));
  EXPECT_TRUE(l.allow(v6(1, 2).b, 6, kT0));  // /128: every address its own
  EXPECT_FALSE(l.allow(v6(1, 2).b, 6, kT0));

  c.v4PrefixLen = 0;  // one bucket for all of IPv4
  SynLimiter all(c);
  EXPECT_TRUE(all.allow(v4(1, 2, 3, 4).b, 4, kT0));
  EXPECT_FALSE(all.allow(v4(200, 2, 3, 4).b, 4, kT0));
}

TEST(SynLimiter, UnknownVersionRefusedAndCounted) {
  SynLimiter l(config(1, 1));
  Addr a = v4(10, 0, 0, 1);
  EXPECT_FALSE(l.allow(a.b, 0, kT0));
  EXPECT_FALSE(l.allow(a.b, 5, kT0));
  EXPECT_EQ(l.stats().limited, 2u);
  EXPECT_EQ(l.stats().newSources, 0u);
}

TEST(SynLimiter, TablePressureEvictsOldestAndNeverRefusesWrongly) {
  SynLimiterConfig c = config(1, 3);
  c.capacity = 16;
  c.maxProbes = 4;
  SynLimiter l(c);
  ASSERT_EQ(l.capacity(), 16u);
  // 10k distinct sources, each one check: every one is allowed (a new or
  // forgotten source always gets a bucket), memory stays 16 slots.
  for (uint32_t i = 0; i < 10'000; ++i) {
    Addr a = v4(10, static_cast<uint8_t>(i >> 16), static_cast<uint8_t>(i >> 8),
                static_cast<uint8_t>(i));
    ASSERT_TRUE(l.allow(a.b, 4, kT0 + i));
  }
  const SynLimiterStats& s = l.stats();
  EXPECT_EQ(s.allowed, 10'000u);
  EXPECT_EQ(s.newSources, 10'000u);
  EXPECT_EQ(s.evictionsActive + s.evictionsIdle, 10'000u - 16u);
  EXPECT_GT(s.evictionsActive, 0u);  // they all still owed tokens (1 s refill)
}

TEST(SynLimiter, EvictionPrefersTheLongestIdleSlot) {
  SynLimiterConfig c = config(1, 2);
  c.capacity = 2;
  c.maxProbes = 2;
  SynLimiter l(c);
  Addr a = v4(10, 0, 0, 1), b = v4(10, 0, 0, 2), d = v4(10, 0, 0, 3);
  ASSERT_TRUE(l.allow(a.b, 4, kT0));
  ASSERT_TRUE(l.allow(b.b, 4, kT0 + 1));
  ASSERT_TRUE(l.allow(a.b, 4, kT0 + 2));  // a: bucket now empty, most recent
  ASSERT_FALSE(l.allow(a.b, 4, kT0 + 3));
  // d needs a slot: b (last seen kT0 + 1) goes, a keeps its empty bucket.
  ASSERT_TRUE(l.allow(d.b, 4, kT0 + 10 * kSec));
  EXPECT_EQ(l.stats().evictionsIdle, 1u);  // b's bucket had refilled by then
  EXPECT_EQ(l.stats().evictionsActive, 0u);
  EXPECT_FALSE(l.allow(a.b, 4, kT0 + 3));
}

TEST(SynLimiter, IdleEvictionIsCountedAsIdle) {
  SynLimiterConfig c = config(1, 2);
  c.capacity = 1;
  c.maxProbes = 1;
  SynLimiter l(c);
  ASSERT_TRUE(l.allow(v4(10, 0, 0, 1).b, 4, kT0));
  ASSERT_TRUE(l.allow(v4(10, 0, 0, 2).b, 4, kT0 + 1));  // victim owed a token
  EXPECT_EQ(l.stats().evictionsActive, 1u);
  ASSERT_TRUE(l.allow(v4(10, 0, 0, 3).b, 4, kT0 + 1 + kSec));  // victim refilled exactly
  EXPECT_EQ(l.stats().evictionsIdle, 1u);
}

TEST(SynLimiter, RejectsBadConfig) {
  EXPECT_THROW(SynLimiter(config(0, 1)), std::invalid_argument);
  EXPECT_THROW(SynLimiter(config(1, 0)), std::invalid_argument);
  EXPECT_THROW(SynLimiter(config(1, 20'000'000'000ULL)), std::invalid_argument);
  SynLimiterConfig c = config(1, 1);
  c.v4PrefixLen = 33;
  EXPECT_THROW(SynLimiter{c}, std::invalid_argument);
  c = config(1, 1);
  c.v6PrefixLen = 129;
  EXPECT_THROW(SynLimiter{c}, std::invalid_argument);
  c = config(1, 1);
  c.capacity = 0;
  EXPECT_THROW(SynLimiter{c}, std::invalid_argument);
  c = config(1, 1);
  c.capacity = 1000;
  EXPECT_EQ(SynLimiter{c}.capacity(), 1024u);
}

TEST(SynLimiter, HugeRateAndBurstDoNotOverflow) {
  SynLimiter l(config(1'000'000'000, 4'000'000'000ULL));
  Addr a = v4(10, 0, 0, 1);
  EXPECT_TRUE(l.allow(a.b, 4, kT0));
  EXPECT_TRUE(l.allow(a.b, 4, kT0 + 1'000'000ULL * kSec));  // a long idle: clamps to full
}

}  // namespace
}  // namespace moat::l4
