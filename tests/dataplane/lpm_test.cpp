// dataplane::LpmTable: the deny-prefix tables on rte_lpm / rte_lpm6 the
// packet engine hands to l4 (PrefixLookup). Checked against a brute-force
// longest-prefix reference. Needs the EAL (initEalForTests: --no-huge,
// --in-memory, no PCI); run as a user that may initialise it (root here).
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "moat/dataplane/packet_engine.h"

namespace moat::dataplane {
namespace {

constexpr uint32_t kMaxValue6 = (1u << 21) - 1;  // rte_lpm6 next-hop width

LpmPrefix v4(uint8_t a, uint8_t b, uint8_t c, uint8_t d, uint8_t len, uint32_t value) {
  LpmPrefix p{};
  p.addr[0] = a;
  p.addr[1] = b;
  p.addr[2] = c;
  p.addr[3] = d;
  p.ipVersion = 4;
  p.length = len;
  p.value = value;
  return p;
}

struct Ip6 {
  uint8_t b[16] = {};
};

// Eight 16-bit groups, e.g. {0x2001, 0xdb8, 0, 0, 0, 0, 0, 1}.
Ip6 ip6(std::initializer_list<uint16_t> groups) {
  Ip6 a;
  size_t i = 0;
  for (uint16_t g : groups) {
    a.b[i++] = static_cast<uint8_t>(g >> 8);
    a.b[i++] = static_cast<uint8_t>(g);
  }
  return a;
}

LpmPrefix v6(const Ip6& a, uint8_t len, uint32_t value) {
  LpmPrefix p{};
  std::memcpy(p.addr, a.b, 16);
  p.ipVersion = 6;
  p.length = len;
  p.value = value;
  return p;
}

uint32_t match4(const LpmTable& t, uint8_t a, uint8_t b, uint8_t c, uint8_t d) {
  const uint8_t addr[4] = {a, b, c, d};
  return t.match4(addr);
}

// Before the EAL exists, create() refuses with a reason. Only observable
// when this test runs first in the process (the default order); otherwise
// the EAL is already up and there is nothing to check.
TEST(LpmTableWithoutEal, CreateRefuses) {
  if (ealReady()) GTEST_SKIP() << "EAL already initialised in this process";
  std::string err;
  EXPECT_EQ(LpmTable::create({v4(10, 0, 0, 0, 8, 1)}, err), nullptr);
  EXPECT_NE(err.find("EAL"), std::string::npos) << err;
}

class LpmTableTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { ready_ = initEalForTests(err_); }
  void SetUp() override {
    ASSERT_TRUE(ready_) << "initEalForTests: " << err_;
    ASSERT_TRUE(ealReady());
  }

  static std::unique_ptr<LpmTable> make(const std::vector<LpmPrefix>& prefixes) {
    std::string err;
    auto t = LpmTable::create(prefixes, err);
    EXPECT_NE(t, nullptr) << err;
    return t;
  }

  static inline bool ready_ = false;
  static inline std::string err_;
};

TEST_F(LpmTableTest, EmptyTableMatchesNothing) {
  auto t = make({});
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->size(), 0u);
  EXPECT_EQ(match4(*t, 10, 0, 0, 1), 0u);
  EXPECT_EQ(match4(*t, 0, 0, 0, 0), 0u);
  EXPECT_EQ(t->match6(ip6({0x2001, 0xdb8, 0, 0, 0, 0, 0, 1}).b), 0u);
}

TEST_F(LpmTableTest, Ipv4LongestPrefixWins) {
  auto t = make({
      v4(10, 0, 0, 0, 8, 1),
      v4(10, 1, 0, 0, 16, 2),
      v4(10, 1, 2, 0, 24, 3),
      v4(10, 1, 2, 128, 25, 4),
      v4(10, 1, 2, 200, 32, 5),
      v4(255, 255, 255, 255, 32, 6),
      v4(192, 168, 0, 0, 16, 0xffffff),  // largest value accepted: 2^24 - 1
  });
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->size(), 7u);
  struct Row {
    uint8_t a, b, c, d;
    uint32_t want;
  };
  const Row rows[] = {
      {10, 200, 0, 1, 1},     {10, 1, 200, 1, 2},   {10, 1, 2, 1, 3},
      {10, 1, 2, 127, 3},     {10, 1, 2, 128, 4},   {10, 1, 2, 199, 4},
      {10, 1, 2, 200, 5},     {10, 1, 2, 201, 4},   {10, 1, 2, 255, 4},
      {10, 1, 3, 0, 2},       {11, 0, 0, 0, 0},     {9, 255, 255, 255, 0},
      {0, 0, 0, 10, 0},  // byte order: 10.0.0.0/8 is not 0.0.0.10
      {255, 255, 255, 255, 6}, {255, 255, 255, 254, 0}, {192, 168, 44, 1, 0xffffff},
  };
  for (const Row& r : rows) {
    EXPECT_EQ(match4(*t, r.a, r.b, r.c, r.d), r.want)
        << int{r.a} << "." << int{r.b} << "." << int{r.c} << "." << int{r.d};
  }
  // An IPv4-only table answers no IPv6 address.
  EXPECT_EQ(t->match6(ip6({0x0a01, 0x0203, 0, 0, 0, 0, 0, 0}).b), 0u);
}

TEST_F(LpmTableTest, Ipv4DefaultRouteCoversEverythingAndLosesToLonger) {
  {
    auto t = make({v4(0, 0, 0, 0, 0, 7), v4(128, 0, 0, 0, 1, 8), v4(10, 0, 0, 0, 8, 9)});
    ASSERT_NE(t, nullptr);
    EXPECT_EQ(match4(*t, 0, 0, 0, 0), 7u);
    EXPECT_EQ(match4(*t, 1, 2, 3, 4), 7u);
    EXPECT_EQ(match4(*t, 127, 255, 255, 255), 7u);
    EXPECT_EQ(match4(*t, 128, 0, 0, 0), 8u);
    EXPECT_EQ(match4(*t, 255, 255, 255, 255), 8u);
    EXPECT_EQ(match4(*t, 10, 9, 9, 9), 9u);
  }
  // /0 alone (it is stored as two /1 halves) covers both halves.
  auto only = make({v4(0, 0, 0, 0, 0, 3)});
  ASSERT_NE(only, nullptr);
  EXPECT_EQ(match4(*only, 0, 0, 0, 1), 3u);
  EXPECT_EQ(match4(*only, 200, 0, 0, 1), 3u);
}

TEST_F(LpmTableTest, Ipv6LongestPrefixWins) {
  const Ip6 doc = ip6({0x2001, 0xdb8, 0, 0, 0, 0, 0, 0});
  const Ip6 site = ip6({0x2001, 0xdb8, 1, 0, 0, 0, 0, 0});
  const Ip6 subnet = ip6({0x2001, 0xdb8, 1, 2, 0, 0, 0, 0});
  const Ip6 host = ip6({0x2001, 0xdb8, 1, 2, 0, 0, 0, 0x42});
  const Ip6 all1 = ip6({0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff});
  auto t = make({v6(doc, 32, 10), v6(site, 48, 11), v6(subnet, 64, 12), v6(host, 128, 13),
                 v6(all1, 128, 14)});
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->size(), 5u);
  struct Row {
    Ip6 a;
    uint32_t want;
  };
  const Row rows[] = {
      {ip6({0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 1}), 10},
      {ip6({0x2001, 0xdb8, 1, 0xffff, 0, 0, 0, 1}), 11},
      {ip6({0x2001, 0xdb8, 1, 2, 0xffff, 0, 0, 1}), 12},
      {ip6({0x2001, 0xdb8, 1, 2, 0, 0, 0, 0x43}), 12},
      {host, 13},
      {all1, 14},
      {ip6({0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xfffe}), 0},
      {ip6({0x2001, 0xdb9, 0, 0, 0, 0, 0, 0}), 0},
      {ip6({0, 0, 0, 0, 0, 0, 0, 0}), 0},
  };
  for (const Row& r : rows) EXPECT_EQ(t->match6(r.a.b), r.want);
  EXPECT_EQ(match4(*t, 10, 0, 0, 1), 0u) << "an IPv6-only table answers no IPv4 address";
}

// Each family's table costs ~64 MiB of EAL memory (rte_lpm and rte_lpm6 both
// allocate a 2^24-entry tbl24); initEalForTests reserves 512 MiB.
TEST_F(LpmTableTest, BothFamiliesInOneTable) {
  auto t = make({v4(10, 0, 0, 0, 8, 1), v6(ip6({0x2001, 0xdb8, 0, 0, 0, 0, 0, 0}), 32, 2)});
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(match4(*t, 10, 1, 2, 3), 1u);
  EXPECT_EQ(t->match6(ip6({0x2001, 0xdb8, 0, 0, 0, 0, 0, 1}).b), 2u);
  EXPECT_EQ(match4(*t, 11, 1, 2, 3), 0u);
}

TEST_F(LpmTableTest, Ipv6DefaultRoute) {
  auto t = make({v6(Ip6{}, 0, 20), v6(ip6({0xfd00, 0, 0, 0, 0, 0, 0, 0}), 8, 21)});
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->match6(Ip6{}.b), 20u);
  EXPECT_EQ(t->match6(ip6({0x2001, 0xdb8, 0, 0, 0, 0, 0, 1}).b), 20u);
  EXPECT_EQ(t->match6(ip6({0x8000, 0, 0, 0, 0, 0, 0, 0}).b), 20u);
  EXPECT_EQ(t->match6(ip6({0xffff, 0, 0, 0, 0, 0, 0, 1}).b), 20u);
  EXPECT_EQ(t->match6(ip6({0xfd12, 0, 0, 0, 0, 0, 0, 1}).b), 21u);
  EXPECT_EQ(match4(*t, 1, 2, 3, 4), 0u) << "IPv6 /0 says nothing about IPv4";
}

TEST_F(LpmTableTest, BadValuesAreRefused) {
  for (uint32_t value : {0u, 1u << 24, 0xffffffffu}) {
    SCOPED_TRACE(value);
    std::string err;
    EXPECT_EQ(LpmTable::create({v4(10, 0, 0, 0, 8, 1), v4(11, 0, 0, 0, 8, value)}, err), nullptr);
    EXPECT_FALSE(err.empty());
  }
}

TEST_F(LpmTableTest, ManyTablesComeAndGo) {
  // Each table gets its own EAL memzone name; freeing returns the memory.
  for (int i = 0; i < 32; ++i) {
    const uint32_t value = static_cast<uint32_t>(i + 1);
    if (i % 2 == 0) {
      auto t = make({v4(10, 0, 0, 0, 8, value)});
      ASSERT_NE(t, nullptr);
      EXPECT_EQ(match4(*t, 10, 1, 1, 1), value);
    } else {
      auto t = make({v6(ip6({0x2001, 0xdb8, 0, 0, 0, 0, 0, 0}), 32, value)});
      ASSERT_NE(t, nullptr);
      EXPECT_EQ(t->match6(ip6({0x2001, 0xdb8, 0, 0, 0, 0, 0, 1}).b), value);
    }
  }
}

// rte_lpm keeps 24 bits of next hop, rte_lpm6 only 21: create() refuses a
// larger IPv6 value rather than let DPDK truncate it.
TEST_F(LpmTableTest, Ipv6ValuesNeedAt21Bits) {
  const Ip6 net = ip6({0x2001, 0xdb8, 0, 0, 0, 0, 0, 0});
  const Ip6 addr = ip6({0x2001, 0xdb8, 0, 0, 0, 0, 0, 1});
  {
    auto t = make({v6(net, 32, kMaxValue6)});
    ASSERT_NE(t, nullptr);
    EXPECT_EQ(t->match6(addr.b), kMaxValue6);
  }
  std::string err;
  auto t = LpmTable::create({v6(net, 32, kMaxValue6 + 1)}, err);
  if (t != nullptr) {
    EXPECT_EQ(t->match6(addr.b), kMaxValue6 + 1) << "value truncated";
  } else {
    EXPECT_FALSE(err.empty());
  }
}

// Brute-force reference: per prefix length, masked address -> value (the
// last duplicate wins, as rte_lpm_add replaces a rule's next hop).
uint32_t mask4(uint32_t a, int len) { return len == 0 ? 0 : a & (0xffffffffu << (32 - len)); }

TEST_F(LpmTableTest, RandomIpv4PrefixesMatchBruteForce) {
  std::mt19937_64 rng(12345);
  std::vector<LpmPrefix> prefixes;
  std::map<uint32_t, uint32_t> byLen[33];
  std::vector<uint32_t> inside;  // addresses known to be in some prefix
  for (int i = 0; i < 10000; ++i) {
    const int len = (i % 2 == 0) ? 24 : 28;
    // Concentrate in 10.0.0.0/12 so /24s and /28s overlap often.
    const uint32_t a = mask4(0x0a000000u | static_cast<uint32_t>(rng() & 0x000fffffu), len);
    const uint32_t value = 1 + static_cast<uint32_t>(rng() % 0xfffffe);
    prefixes.push_back(v4(static_cast<uint8_t>(a >> 24), static_cast<uint8_t>(a >> 16),
                          static_cast<uint8_t>(a >> 8), static_cast<uint8_t>(a),
                          static_cast<uint8_t>(len), value));
    byLen[len][a] = value;
    inside.push_back(a | static_cast<uint32_t>(rng() & ((1u << (32 - len)) - 1)));
  }
  // A few short ones under everything.
  prefixes.push_back(v4(10, 0, 0, 0, 8, 77));
  byLen[8][0x0a000000u] = 77;
  prefixes.push_back(v4(10, 8, 0, 0, 13, 78));
  byLen[13][0x0a080000u] = 78;

  auto t = make(prefixes);
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->size(), prefixes.size());

  auto reference = [&](uint32_t a) -> uint32_t {
    for (int len = 32; len >= 0; --len) {
      auto it = byLen[len].find(mask4(a, len));
      if (it != byLen[len].end()) return it->second;
    }
    return 0;
  };
  std::vector<uint32_t> queries = inside;
  for (int i = 0; i < 20000; ++i) {
    queries.push_back(0x0a000000u | static_cast<uint32_t>(rng() & 0x00ffffffu));  // in 10/8
    queries.push_back(static_cast<uint32_t>(rng()));                               // anywhere
  }
  size_t mismatches = 0;
  for (uint32_t q : queries) {
    const uint8_t addr[4] = {static_cast<uint8_t>(q >> 24), static_cast<uint8_t>(q >> 16),
                             static_cast<uint8_t>(q >> 8), static_cast<uint8_t>(q)};
    const uint32_t want = reference(q);
    const uint32_t got = t->match4(addr);
    if (got != want && ++mismatches <= 10) {
      ADD_FAILURE() << std::hex << "address 0x" << q << ": got " << got << ", want " << want;
    }
  }
  EXPECT_EQ(mismatches, 0u);
}

TEST_F(LpmTableTest, RandomIpv6PrefixesMatchBruteForce) {
  std::mt19937_64 rng(6789);
  using Key = std::pair<uint64_t, uint64_t>;
  auto maskKey = [](const Ip6& a, int len) {
    uint64_t hi = 0, lo = 0;
    for (int i = 0; i < 8; ++i) hi = (hi << 8) | a.b[i];
    for (int i = 8; i < 16; ++i) lo = (lo << 8) | a.b[i];
    if (len <= 64) {
      hi = len == 0 ? 0 : hi & (~0ull << (64 - len));
      lo = 0;
    } else {
      lo = len == 128 ? lo : lo & (~0ull << (128 - len));
    }
    return Key{hi, lo};
  };
  auto masked = [&](Ip6 a, int len) {
    const Key k = maskKey(a, len);
    for (int i = 0; i < 8; ++i) a.b[i] = static_cast<uint8_t>(k.first >> (56 - 8 * i));
    for (int i = 0; i < 8; ++i) a.b[8 + i] = static_cast<uint8_t>(k.second >> (56 - 8 * i));
    return a;
  };
  auto random6 = [&] {
    // Inside 2001:db8::/32, few distinct values in the next bits: overlaps.
    const auto g2 = static_cast<uint16_t>(rng() % 16);
    const auto g3 = static_cast<uint16_t>(rng() % 64);
    Ip6 a = ip6({0x2001, 0xdb8, g2, g3, 0, 0, 0, 0});
    for (int i = 8; i < 16; ++i) a.b[i] = static_cast<uint8_t>(rng());
    return a;
  };
  const int lens[] = {40, 48, 56, 64, 100, 128};
  std::vector<LpmPrefix> prefixes;
  std::map<Key, uint32_t> byLen[129];
  std::vector<Ip6> queries;
  for (int i = 0; i < 2000; ++i) {
    const int len = lens[i % 6];
    const Ip6 a = masked(random6(), len);
    // rte_lpm6 keeps 21 bits of next hop (see Ipv6ValuesNeedAt21Bits).
    const uint32_t value = 1 + static_cast<uint32_t>(rng() % kMaxValue6);
    prefixes.push_back(v6(a, static_cast<uint8_t>(len), value));
    byLen[len][maskKey(a, len)] = value;
    Ip6 q = a;
    if (len < 128) q.b[15] ^= static_cast<uint8_t>(rng());  // same prefix, other host
    queries.push_back(q);
  }
  prefixes.push_back(v6(ip6({0x2001, 0xdb8, 0, 0, 0, 0, 0, 0}), 32, 99));
  byLen[32][maskKey(ip6({0x2001, 0xdb8, 0, 0, 0, 0, 0, 0}), 32)] = 99;

  auto t = make(prefixes);
  ASSERT_NE(t, nullptr);
  auto reference = [&](const Ip6& a) -> uint32_t {
    for (int len = 128; len >= 0; --len) {
      if (byLen[len].empty()) continue;
      auto it = byLen[len].find(maskKey(a, len));
      if (it != byLen[len].end()) return it->second;
    }
    return 0;
  };
  for (int i = 0; i < 5000; ++i) queries.push_back(random6());
  for (int i = 0; i < 1000; ++i) {
    Ip6 a;
    for (uint8_t& x : a.b) x = static_cast<uint8_t>(rng());
    queries.push_back(a);
  }
  size_t mismatches = 0;
  for (const Ip6& q : queries) {
    const uint32_t want = reference(q);
    const uint32_t got = t->match6(q.b);
    if (got != want && ++mismatches <= 10) {
      std::string hex;
      for (uint8_t x : q.b) {
        hex += "0123456789abcdef"[x >> 4];
        hex += "0123456789abcdef"[x & 15];
      }
      ADD_FAILURE() << hex << ": got " << got << ", want " << want;
    }
  }
  EXPECT_EQ(mismatches, 0u);
}

}  // namespace
}  // namespace moat::dataplane
