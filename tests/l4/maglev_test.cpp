#include "moat/l4/maglev.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace moat::l4 {
namespace {

constexpr uint32_t kSize = kDefaultMaglevTableSize;

// Owns the key strings the MaglevBackend views point into.
struct Backends {
  std::vector<std::string> keys;
  std::vector<MaglevBackend> list;

  explicit Backends(size_t n, uint32_t weight = 1) {
    keys.reserve(n);
    for (size_t i = 0; i < n; ++i) {
      keys.push_back("10.0." + std::to_string(i / 256) + "." + std::to_string(i % 256) + ":80");
    }
    for (const std::string& k : keys) list.push_back({k, weight});
  }
};

std::vector<size_t> counts(const std::vector<uint32_t>& table, size_t n) {
  std::vector<size_t> c(n, 0);
  for (uint32_t idx : table) {
    EXPECT_LT(idx, n);
    if (idx < n) ++c[idx];
  }
  return c;
}

TEST(MaglevIsPrime, SmallAndLargeCases) {
  EXPECT_FALSE(isPrime(0));
  EXPECT_FALSE(isPrime(1));
  EXPECT_TRUE(isPrime(2));
  EXPECT_TRUE(isPrime(3));
  EXPECT_FALSE(isPrime(4));
  EXPECT_TRUE(isPrime(5));
  EXPECT_FALSE(isPrime(9));
  EXPECT_FALSE(isPrime(25));
  EXPECT_FALSE(isPrime(49));
  EXPECT_TRUE(isPrime(251));
  EXPECT_TRUE(isPrime(65537));
  EXPECT_FALSE(isPrime(65536));
  EXPECT_FALSE(isPrime(65535));
  EXPECT_TRUE(isPrime(655373));
  EXPECT_FALSE(isPrime(65537u * 3u));
  EXPECT_TRUE(isPrime(4294967291u));   // largest 32-bit prime
  EXPECT_FALSE(isPrime(4294967295u));  // 3 * 5 * 17 * 257 * 65537
  EXPECT_FALSE(isPrime(65521u * 65519u));  // product of two large primes
}

TEST(MaglevHash, DeterministicAndSeedSensitive) {
  const std::string key = "10.0.0.1:80";
  EXPECT_EQ(maglevHash(key.data(), key.size(), 1), maglevHash(key.data(), key.size(), 1));
  EXPECT_NE(maglevHash(key.data(), key.size(), 1), maglevHash(key.data(), key.size(), 2));
  const std::string other = "10.0.0.2:80";
  EXPECT_NE(maglevHash(key.data(), key.size(), 1), maglevHash(other.data(), other.size(), 1));
  // Every length 0..16 (exercises the tail path) hashes differently.
  const std::string longKey = "0123456789abcdef";
  std::vector<uint64_t> seen;
  for (size_t len = 0; len <= longKey.size(); ++len) {
    seen.push_back(maglevHash(longKey.data(), len, 7));
  }
  std::sort(seen.begin(), seen.end());
  EXPECT_EQ(std::adjacent_find(seen.begin(), seen.end()), seen.end());
}

TEST(MaglevTable, EqualBackendsGetSharesWithinOnePercentOfEachOther) {
  Backends b(100);
  auto start = std::chrono::steady_clock::now();
  std::vector<uint32_t> table = buildMaglevTable(b.list, kSize);
  auto elapsed = std::chrono::steady_clock::now() - start;
  ASSERT_EQ(table.size(), kSize);
  std::vector<size_t> c = counts(table, 100);
  auto [mn, mx] = std::minmax_element(c.begin(), c.end());
  ASSERT_GT(*mn, 0u);
  EXPECT_LE(static_cast<double>(*mx) / static_cast<double>(*mn) - 1.0, 0.01)
      << "min " << *mn << " max " << *mx;
  // Generous bound (sanitizer builds are slow); an optimised build takes ~1 ms.
  EXPECT_LT(std::chrono::duration_cast<std::chrono::milliseconds>(elapsed).count(), 500);
}

TEST(MaglevTable, RemovingOneOfHundredMovesAtMostOnePercentOfOtherEntries) {
  Backends all(100);
  const std::vector<uint32_t> before = buildMaglevTable(all.list, kSize);
  // Every one of the 100 possible removals (worst observed: ~0.66%).
  for (size_t removed = 0; removed < all.list.size(); ++removed) {
    std::vector<MaglevBackend> rest;
    for (size_t i = 0; i < all.list.size(); ++i) {
      if (i != removed) rest.push_back(all.list[i]);
    }
    const std::vector<uint32_t> after = buildMaglevTable(rest, kSize);
    ASSERT_EQ(after.size(), kSize);
    size_t kept = 0;
    size_t moved = 0;
    for (size_t s = 0; s < kSize; ++s) {
      if (before[s] == removed) continue;
      ++kept;
      if (all.list[before[s]].key != rest[after[s]].key) ++moved;
    }
    double fraction = static_cast<double>(moved) / static_cast<double>(kept);
    EXPECT_LE(fraction, 0.01) << "removed " << removed << ": moved " << moved << " of " << kept;
  }
}

TEST(MaglevTable, WeightsOneToTwoGiveSharesOneToTwo) {
  Backends b(2);
  b.list[1].weight = 2;
  std::vector<size_t> c = counts(buildMaglevTable(b.list, kSize), 2);
  double ratio = static_cast<double>(c[1]) / static_cast<double>(c[0]);
  EXPECT_NEAR(ratio, 2.0, 0.02) << c[0] << " vs " << c[1];
}

TEST(MaglevTable, MixedWeightsAcrossManyBackendsAreProportional) {
  Backends b(100);
  uint64_t total = 0;
  for (size_t i = 0; i < b.list.size(); ++i) {
    b.list[i].weight = static_cast<uint32_t>(1 + i % 5);  // 1..5
    total += b.list[i].weight;
  }
  std::vector<size_t> c = counts(buildMaglevTable(b.list, kSize), 100);
  for (size_t i = 0; i < c.size(); ++i) {
    double expected = static_cast<double>(kSize) * b.list[i].weight / static_cast<double>(total);
    EXPECT_NEAR(static_cast<double>(c[i]) / expected, 1.0, 0.01) << "backend " << i;
  }
}

TEST(MaglevTable, DeterministicForSameInput) {
  Backends b(50);
  b.list[3].weight = 7;
  EXPECT_EQ(buildMaglevTable(b.list, kSize), buildMaglevTable(b.list, kSize));
  Backends again(50);  // fresh key storage, same content
  again.list[3].weight = 7;
  EXPECT_EQ(buildMaglevTable(b.list, kSize), buildMaglevTable(again.list, kSize));
}

TEST(MaglevTable, ZeroWeightBackendGetsNoEntries) {
  Backends b(3);
  b.list[1].weight = 0;
  std::vector<size_t> c = counts(buildMaglevTable(b.list, kSize), 3);
  EXPECT_EQ(c[1], 0u);
  EXPECT_EQ(c[0] + c[2], kSize);
  EXPECT_LE(std::max(c[0], c[2]) - std::min(c[0], c[2]), 1u);
}

TEST(MaglevTable, AllZeroWeightsGiveEmptyTable) {
  Backends b(3, 0);
  EXPECT_TRUE(buildMaglevTable(b.list, kSize).empty());
}

TEST(MaglevTable, SingleBackendFillsEverything) {
  Backends b(1);
  std::vector<uint32_t> table = buildMaglevTable(b.list, kSize);
  ASSERT_EQ(table.size(), kSize);
  EXPECT_TRUE(std::all_of(table.begin(), table.end(), [](uint32_t i) { return i == 0; }));
}

TEST(MaglevTable, EmptyInputGivesEmptyTable) {
  EXPECT_TRUE(buildMaglevTable({}, kSize).empty());
}

TEST(MaglevTable, SmallPrimeTableIsFull) {
  Backends b(3);
  std::vector<uint32_t> table = buildMaglevTable(b.list, 7);
  ASSERT_EQ(table.size(), 7u);
  std::vector<size_t> c = counts(table, 3);
  for (size_t n : c) EXPECT_GE(n, 2u);
}

TEST(MaglevTable, NonPrimeSizeThrows) {
  Backends b(3);
  EXPECT_THROW(buildMaglevTable(b.list, 65536), std::invalid_argument);
  EXPECT_THROW(buildMaglevTable(b.list, 0), std::invalid_argument);
  EXPECT_THROW(buildMaglevTable(b.list, 1), std::invalid_argument);
}

TEST(MaglevTable, SizeNotLargerThanBackendCountThrows) {
  Backends b(3);
  EXPECT_THROW(buildMaglevTable(b.list, 3), std::invalid_argument);
  EXPECT_THROW(buildMaglevTable(b.list, 2), std::invalid_argument);
  EXPECT_NO_THROW(buildMaglevTable(b.list, 5));
}

}  // namespace
}  // namespace moat::l4
