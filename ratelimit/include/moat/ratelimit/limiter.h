// Per-client rate limiting: a fixed-size table of buckets shared by every
// worker, exact across workers, in bounded memory.
//
// Why one shared table rather than a shard per worker: a client's requests
// must be counted in one place whatever worker its connections land on, and
// keys are not only the peer address (X-Forwarded-For behind trusted proxies,
// header and cookie keys), so steering connections by peer address cannot
// route every key to one worker. The table is set-associative: a key hashes
// to one 256-byte set of kWays entries guarded by a one-word spin lock held
// for a few dozen instructions; different keys almost never share a set, so
// workers do not contend unless they hammer the very same client. See
// docs/BENCHMARKS.md for ns per check with 1 and 2 workers.
//
// State per key is 24 bytes (a tag and two words); bytes per tracked key,
// counting set headers and the eviction ghost slot, is sizeof(Set)/kWays.
// Time is passed in by the caller (nanoseconds on any monotonic clock), so
// tests drive it exactly.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace moat::ratelimit {

enum class Algorithm : uint8_t {
  // Token bucket (as GCRA: one "theoretical arrival time" per key, refilled
  // lazily from elapsed time, exact rational arithmetic).
  kTokenBucket,
  // AWS WAF style limit over a trailing window, computed as the sliding
  // window counter (previous window weighted by its overlap + current).
  kSlidingWindow,
};

// One rule's arithmetic. Immutable; built by the control side.
struct Policy {
  Algorithm algorithm = Algorithm::kTokenBucket;
  uint64_t limit = 2000;          // requests per period (refill amount)
  uint64_t periodNs = 300'000'000'000;  // 5 minutes
  uint64_t burst = 2000;          // bucket capacity (token bucket only)
};

// Largest limit the sliding window can count (20-bit counters).
inline constexpr uint64_t kMaxSlidingWindowLimit = (1u << 20) - 2;

// A key's 128-bit identity: hash of (rule identity, key bytes). Collisions
// between two live keys need equal set index and equal 64-bit tag.
struct KeyHash {
  uint64_t lo = 0;  // picks the set
  uint64_t hi = 0;  // tag within the set
};
KeyHash hashKey(uint64_t ruleSeed, std::string_view keyBytes);

struct Decision {
  bool allowed = false;
  uint64_t remaining = 0;     // requests still allowed right now after this one
  uint64_t resetNs = 0;       // until the quota is whole again (RateLimit "t")
  uint64_t retryAfterNs = 0;  // denied only: until one request would pass
};

struct TableStats {
  uint64_t inserts = 0;          // new keys tracked
  uint64_t evictionsIdle = 0;    // victim was already whole: forgetting it is free
  uint64_t evictionsActive = 0;  // victim still owed time; kept in the set's ghost slot
  uint64_t ghostRestores = 0;    // an evicted key came back and got its state back
  uint64_t ghostLost = 0;        // a less indebted active victim that the ghost could not keep
};

class Table {
 public:
  static constexpr size_t kWays = 9;  // live entries per set (+1 ghost)

  // Sized for `maxKeys` live keys (rounded up to whole sets). Allocates once;
  // throws std::bad_alloc / std::invalid_argument (maxKeys == 0) at start-up.
  explicit Table(size_t maxKeys);
  ~Table();
  Table(const Table&) = delete;
  Table& operator=(const Table&) = delete;

  // Any thread, concurrently. Charges `cost` requests to `key` under
  // `policy` at time `nowNs` if allowed; a denied request charges nothing.
  // No allocation, no syscall; takes the key's set lock for ~20-60 ns.
  Decision check(const KeyHash& key, const Policy& policy, uint64_t nowNs, uint32_t cost = 1);

  // Any thread. What check() would say, without charging.
  Decision peek(const KeyHash& key, const Policy& policy, uint64_t nowNs) const;

  // Any thread. Forgets a key (an operator's "reset"); true if it was tracked.
  bool reset(const KeyHash& key);

  // Penalty marks: `key` is refused until `untilNs` (repeat offenders).
  // Stored in the same table under their own key space.
  void block(const KeyHash& key, uint64_t untilNs);
  // The end of `key`'s penalty, or 0 when it is not blocked at nowNs.
  uint64_t blockedUntil(const KeyHash& key, uint64_t nowNs) const;

  size_t capacity() const { return sets_ * kWays; }  // live keys
  size_t bytes() const;                               // memory held by the table
  size_t trackedKeys(uint64_t nowNs) const;           // O(capacity): control side only
  TableStats stats() const;

  struct Set;

 private:
  Set* setFor(const KeyHash& key) const;
  size_t sets_ = 0;
  Set* data_ = nullptr;
  struct Stats {
    std::atomic<uint64_t> inserts{0}, evictionsIdle{0}, evictionsActive{0}, ghostRestores{0},
        ghostLost{0};
  };
  mutable Stats stats_;
};

// The most refused keys seen by one worker: a Space-Saving summary (Metwally
// et al.) of fixed size. Owned by one worker; merged by the control side.
class TopKeys {
 public:
  static constexpr size_t kSize = 32;
  struct Item {
    uint64_t hash = 0;
    uint64_t count = 0;  // upper bound; exact while the key stayed in the summary
    uint64_t error = 0;  // count - error is a lower bound
    std::string rule;
    std::string key;  // printable
  };
  // Worker thread. May allocate while the summary fills up; afterwards only
  // reassigns strings of existing items (capacity is reused).
  void add(uint64_t hash, std::string_view rule, std::string_view key);
  const std::vector<Item>& items() const { return items_; }
  // Control side: merges summaries and keeps the `n` largest.
  static std::vector<Item> merge(const std::vector<std::vector<Item>>& parts, size_t n);

 private:
  std::vector<Item> items_;
};

}  // namespace moat::ratelimit
