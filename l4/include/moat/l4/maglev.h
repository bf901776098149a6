// Maglev consistent hashing (Eisenbud et al., NSDI 2016) with weights.
//
// The control plane builds the table (cost O(tableSize * log) per build, with
// allocation: never on a worker's hot path); a worker looks a flow up with one
// array index: table[hash % size]. Tables are immutable once built and shared
// read-only by every worker through the config snapshot.
#pragma once

#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

namespace moat::l4 {

inline constexpr uint32_t kDefaultMaglevTableSize = 65537;

struct MaglevBackend {
  std::string_view key;  // stable identity, e.g. "10.0.0.1:80"; drives the permutation
  uint32_t weight = 1;   // relative share; 0 means "gets no entries"
};

bool isPrime(uint32_t n);

// Fills a table of `tableSize` entries (must be prime, > number of backends)
// with indexes into `backends`. Shares follow the weights (within ~1% at the
// default size); removing one backend moves few entries that did not point at
// it. Returns an empty vector when no backend has a non-zero weight.
// Throws std::invalid_argument for a non-prime or too small table size.
std::vector<uint32_t> buildMaglevTable(std::span<const MaglevBackend> backends,
                                       uint32_t tableSize = kDefaultMaglevTableSize);

// 64-bit hash used both to build permutations and to pick a table slot for a
// flow key (client address bytes). Stable across runs and builds.
uint64_t maglevHash(const void* data, size_t len, uint64_t seed);

}  // namespace moat::l4
