#include "moat/l4/maglev.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>

namespace moat::l4 {

namespace {

// Seeds for the two permutation hashes (offset and skip). Arbitrary odd
// constants; changing them reshuffles every table, so they are fixed forever.
constexpr uint64_t kOffsetSeed = 0x6d6f61742d6f6666ULL;  // "moat-off"
constexpr uint64_t kSkipSeed = 0x6d6f61742d736b70ULL;    // "moat-skp"

constexpr uint64_t kMul1 = 0x9e3779b97f4a7c15ULL;  // 2^64 / golden ratio
constexpr uint64_t kMul2 = 0xc2b2ae3d27d4eb4fULL;
constexpr uint64_t kMul3 = 0x165667b19e3779f9ULL;

constexpr uint64_t rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

// Final avalanche: every input bit affects every output bit with ~1/2
// probability (the splitmix64 finaliser constants).
constexpr uint64_t finalize(uint64_t h) {
  h ^= h >> 30;
  h *= 0xbf58476d1ce4e5b9ULL;
  h ^= h >> 27;
  h *= 0x94d049bb133111ebULL;
  h ^= h >> 31;
  return h;
}

uint64_t load64(const unsigned char* p) {
  uint64_t v;
  std::memcpy(&v, p, sizeof v);  // host byte order; see note in maglevHash
  return v;
}

}  // namespace

bool isPrime(uint32_t n) {
  if (n < 2) return false;
  if (n % 2 == 0) return n == 2;
  if (n % 3 == 0) return n == 3;
  // Trial division by 6k +- 1: at most ~11k iterations for 32-bit n.
  for (uint64_t d = 5; d * d <= n; d += 6) {
    if (n % d == 0 || n % (d + 2) == 0) return false;
  }
  return true;
}

// Word-at-a-time multiply/rotate mix with a strong finaliser. Not
// cryptographic: a client can steer its own flows, which only moves its own
// traffic. Little-endian hosts only are supported by Moat, so reading words in
// host order keeps the value stable across runs and builds.
uint64_t maglevHash(const void* data, size_t len, uint64_t seed) {
  const auto* p = static_cast<const unsigned char*>(data);
  uint64_t h = seed ^ (static_cast<uint64_t>(len) * kMul1);
  size_t i = 0;
  for (; i + 8 <= len; i += 8) {
    uint64_t k = load64(p + i) * kMul2;
    k = rotl(k, 31) * kMul1;
    h = rotl(h ^ k, 27) * kMul3 + 0x52dce729;
  }
  if (i < len) {
    uint64_t tail = 0;
    for (size_t j = 0; i + j < len; ++j) tail |= static_cast<uint64_t>(p[i + j]) << (8 * j);
    tail *= kMul2;
    h ^= rotl(tail, 31) * kMul1;
  }
  return finalize(h ^ rotl(h, 17));
}

// Weighted Maglev population.
//
// Each backend with weight > 0 walks its own permutation of the slots
// (offset + k * skip mod M, a full cycle because M is prime and 1 <= skip <
// M). Filling goes in rounds, as in the paper, but a backend gets a turn in a
// round only when it has earned one: every round adds `weight` to its credit,
// and each turn costs `maxWeight` credit (Katran's approach). With equal
// weights this is exactly the original algorithm; otherwise the number of
// slots each backend claims is proportional to its weight to within one slot
// (claims only stop when the table is full mid-round).
//
// Cost: O(M log M) permutation steps for equal weights (the coupon-collector
// tail), plus O(rounds * backends) credit bookkeeping. 100 backends at
// M = 65537 take about a millisecond. Allocates O(M + N). Control plane only.
std::vector<uint32_t> buildMaglevTable(std::span<const MaglevBackend> backends,
                                       uint32_t tableSize) {
  if (!isPrime(tableSize)) {
    throw std::invalid_argument("maglev table size " + std::to_string(tableSize) +
                                " is not prime");
  }
  if (tableSize <= backends.size()) {
    throw std::invalid_argument("maglev table size " + std::to_string(tableSize) +
                                " must be larger than the number of backends (" +
                                std::to_string(backends.size()) + ")");
  }

  struct Walker {
    uint32_t index;   // into `backends`
    uint32_t weight;  // > 0
    uint64_t offset;  // current slot of the permutation
    uint64_t skip;
    uint64_t credit = 0;
  };
  const uint64_t m = tableSize;
  std::vector<Walker> walkers;
  walkers.reserve(backends.size());
  uint32_t maxWeight = 0;
  for (size_t i = 0; i < backends.size(); ++i) {
    const MaglevBackend& b = backends[i];
    if (b.weight == 0) continue;
    uint64_t offset = maglevHash(b.key.data(), b.key.size(), kOffsetSeed) % m;
    uint64_t skip = maglevHash(b.key.data(), b.key.size(), kSkipSeed) % (m - 1) + 1;
    walkers.push_back({static_cast<uint32_t>(i), b.weight, offset, skip});
    maxWeight = std::max(maxWeight, b.weight);
  }
  if (walkers.empty()) return {};

  constexpr uint32_t kEmpty = std::numeric_limits<uint32_t>::max();
  std::vector<uint32_t> table(tableSize, kEmpty);
  uint64_t filled = 0;
  while (true) {
    for (Walker& w : walkers) {
      w.credit += w.weight;
      while (w.credit >= maxWeight) {
        w.credit -= maxWeight;
        // Next unclaimed slot in this backend's permutation. Terminates: the
        // permutation visits every slot and at least one is still empty.
        while (table[w.offset] != kEmpty) {
          w.offset += w.skip;
          if (w.offset >= m) w.offset -= m;
        }
        table[w.offset] = w.index;
        if (++filled == m) return table;
      }
    }
  }
}

}  // namespace moat::l4
