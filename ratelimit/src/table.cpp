// The shared bucket table. See limiter.h for the design; this file holds the
// arithmetic (GCRA with exact rational refill, the sliding window counter) and
// the set-associative storage with eviction that never hands an indebted key
// a fresh bucket while the set can remember it.
#include <sys/mman.h>

#include <algorithm>
#include <cstring>
#include <new>
#include <stdexcept>

#include "moat/ratelimit/limiter.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace moat::ratelimit {

namespace {

__extension__ using u128 = unsigned __int128;

constexpr uint64_t kBlockMarker = ~0ull;
constexpr uint64_t kCountMask = (1u << 20) - 1;
constexpr uint64_t kIdxMask = (1u << 24) - 1;

constexpr uint64_t kMul1 = 0x9E3779B185EBCA87ull;
constexpr uint64_t kMul2 = 0xC2B2AE3D27D4EB4Full;

uint64_t mix(uint64_t h) {
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdull;
  h ^= h >> 33;
  h *= 0xc4ceb9fe1a85ec53ull;
  h ^= h >> 33;
  return h;
}

uint64_t rotl(uint64_t v, int r) { return (v << r) | (v >> (64 - r)); }

inline void cpuRelax() {
#if defined(__x86_64__)
  _mm_pause();
#endif
}


}  // namespace

KeyHash hashKey(uint64_t ruleSeed, std::string_view keyBytes) {
  // Two independent word-at-a-time lanes; not cryptographic (a client can
  // only choose which set its own keys land in).
  uint64_t a = ruleSeed ^ (keyBytes.size() * kMul1);
  uint64_t b = rotl(ruleSeed, 29) ^ 0x6a09e667f3bcc909ull;
  const auto* p = reinterpret_cast<const unsigned char*>(keyBytes.data());
  size_t n = keyBytes.size(), i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t k;
    std::memcpy(&k, p + i, 8);
    a = rotl(a ^ (k * kMul1), 27) * kMul2 + 0x52dce729;
    b = rotl(b ^ (k * kMul2), 31) * kMul1 + 0x38495ab5;
  }
  uint64_t tail = 0;
  for (size_t j = 0; i + j < n; ++j) tail |= static_cast<uint64_t>(p[i + j]) << (8 * j);
  a ^= tail * kMul1;
  b ^= tail * kMul2;
  return KeyHash{mix(a ^ rotl(b, 17)), mix(b ^ rotl(a, 41)) | 1};
}

struct Entry {
  uint64_t tag = 0;  // KeyHash::hi (odd); 0 = empty
  uint64_t a = 0;    // when the entry is as good as forgotten (ns)
  uint64_t b = 0;    // token bucket: fraction of tat; window: packed counters
};

struct alignas(64) Table::Set {
  std::atomic<uint32_t> lock{0};
  uint32_t pad[3] = {};
  Entry live[kWays];
  Entry ghost;  // the most indebted entry evicted from this set
};
static_assert(sizeof(Table::Set) == 256, "a set is four cache lines");

namespace {

class SetLock {
 public:
  explicit SetLock(Table::Set* s) : s_(s) {
    for (;;) {
      if (s_->lock.exchange(1, std::memory_order_acquire) == 0) return;
      while (s_->lock.load(std::memory_order_relaxed) != 0) cpuRelax();
    }
  }
  ~SetLock() { s_->lock.store(0, std::memory_order_release); }
  SetLock(const SetLock&) = delete;
  SetLock& operator=(const SetLock&) = delete;

 private:
  Table::Set* s_;
};

template <class Wide>
Decision tokenBucketIn(Entry* e, const Policy& p, uint64_t now, uint32_t cost, bool charge,
                       uint64_t baseA, uint64_t baseB) {
  Decision d;
  const uint64_t q = p.periodNs / p.limit, r = p.periodNs % p.limit;
  const Wide frac = static_cast<Wide>(baseB) + static_cast<Wide>(cost) * r;
  // One request (the common cost) carries at most one whole ns: no division.
  const uint64_t carry = cost == 1 ? (frac >= p.limit ? 1 : 0) : static_cast<uint64_t>(frac / p.limit);
  const uint64_t newA = baseA + cost * q + carry;
  const uint64_t newB = static_cast<uint64_t>(frac - static_cast<Wide>(carry) * p.limit);
  const Wide ahead = static_cast<Wide>(newA - now) * p.limit + newB;
  const Wide cap = static_cast<Wide>(p.burst) * p.periodNs;
  if (ahead <= cap) {
    d.allowed = true;
    d.remaining = static_cast<uint64_t>((cap - ahead) / p.periodNs);
    d.resetNs = (newA - now) + (newB != 0 ? 1 : 0);  // ceil(ahead / limit)
    if (charge && e != nullptr) {
      e->a = newA;  // a == now with b != 0 still counts as owed (see tokenBucket)
      e->b = newB;
    }
  } else {
    d.allowed = false;
    d.remaining = 0;
    const Wide over = ahead - cap;
    d.retryAfterNs = static_cast<uint64_t>((over + p.limit - 1) / p.limit);
    d.resetNs = (baseA - now) + (baseB != 0 ? 1 : 0);
  }
  return d;
}

// Token bucket as GCRA. The theoretical arrival time is tat = a + b/limit ns;
// one request advances it by T = period/limit ns; a request is allowed when
// the advanced tat is at most burst*T ahead of now. The arithmetic is in
// "scaled" units (ns * limit) so T is the integer `period`: exact for any
// limit. 64-bit when burst*period leaves headroom (every realistic rule:
// 2000 per 5 min is 6e14 of 9.2e18), else 128-bit (~4x slower divisions).
Decision tokenBucket(Entry* e, const Policy& p, uint64_t now, uint32_t cost, bool charge) {
  uint64_t baseA = now, baseB = 0;
  if (e != nullptr && (e->a > now || (e->a == now && e->b != 0)) && e->b < p.limit) {
    baseA = e->a;
    baseB = e->b;
  }
  uint64_t cap = 0, step = 0;
  const bool narrow = !__builtin_mul_overflow(p.burst, p.periodNs, &cap) && cap < (1ull << 61) &&
                      !__builtin_mul_overflow(uint64_t{cost} + 1, p.periodNs, &step) &&
                      step < (1ull << 61) && p.limit < (1ull << 31);
  return narrow ? tokenBucketIn<uint64_t>(e, p, now, cost, charge, baseA, baseB)
                : tokenBucketIn<u128>(e, p, now, cost, charge, baseA, baseB);
}

// Largest overlap (ns of the previous window still inside the trailing
// window) at which floor(prev * overlap / W) <= budget.
uint64_t maxOverlap(uint64_t prev, uint64_t budget, uint64_t w) {
  if (prev == 0) return w;
  const u128 m = (static_cast<u128>(budget + 1) * w + prev - 1) / prev;  // ceil
  return m == 0 ? 0 : static_cast<uint64_t>(std::min<u128>(m - 1, w));
}

// Sliding window counter: estimate = floor(prev * overlap / W) + cur, where
// overlap is how much of the previous fixed window the trailing window still
// covers. b packs [window index:24][prev:20][cur:20].
Decision slidingWindow(Entry* e, const Policy& p, uint64_t now, uint32_t cost, bool charge) {
  Decision d;
  const uint64_t w = p.periodNs, idx = now / w, into = now % w, overlap = w - into;
  uint64_t prev = 0, cur = 0;
  if (e != nullptr && e->a > now && e->b != kBlockMarker) {
    const uint64_t sidx = e->b >> 40;
    const uint64_t sprev = (e->b >> 20) & kCountMask, scur = e->b & kCountMask;
    if (sidx == (idx & kIdxMask)) {
      prev = sprev;
      cur = scur;
    } else if (((sidx + 1) & kIdxMask) == (idx & kIdxMask)) {
      prev = scur;
    }
  }
  const uint64_t est = static_cast<uint64_t>(static_cast<u128>(prev) * overlap / w) + cur;
  if (est + cost <= p.limit) {
    d.allowed = true;
    cur = std::min<uint64_t>(cur + cost, kCountMask);
    d.remaining = p.limit - (est + cost);
    if (charge && e != nullptr) {
      e->a = (idx + 2) * w;
      e->b = ((idx & kIdxMask) << 40) | (prev << 20) | cur;
    }
  } else {
    d.allowed = false;
    if (cost > p.limit) {
      d.retryAfterNs = 2 * w - into;
    } else if (cur + cost <= p.limit) {
      const uint64_t m = maxOverlap(prev, p.limit - cur - cost, w);
      d.retryAfterNs = m >= overlap ? 0 : overlap - m;
    } else {
      const uint64_t m = maxOverlap(cur, p.limit - cost, w);
      d.retryAfterNs = overlap + (w - m);
    }
  }
  d.resetNs = cur != 0 ? overlap + w : (prev != 0 ? overlap : 0);
  return d;
}

Decision evaluate(Entry* e, const Policy& p, uint64_t now, uint32_t cost, bool charge) {
  return p.algorithm == Algorithm::kTokenBucket ? tokenBucket(e, p, now, cost, charge)
                                                : slidingWindow(e, p, now, cost, charge);
}

}  // namespace

Table::Table(size_t maxKeys) {
  if (maxKeys == 0) throw std::invalid_argument("rate-limit table needs at least one key");
  sets_ = (maxKeys + kWays - 1) / kWays;
  // Anonymous mapping: zero pages, committed only as sets are touched.
  void* p = mmap(nullptr, bytes(), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) throw std::bad_alloc();
  // Transparent huge pages: a check touches one random set of a table far
  // larger than the TLB reaches with 4 KB pages. Advisory; ignored if THP
  // is off.
  madvise(p, bytes(), MADV_HUGEPAGE);
  data_ = static_cast<Set*>(p);
}

Table::~Table() { munmap(data_, bytes()); }

size_t Table::bytes() const { return sets_ * sizeof(Set); }

Table::Set* Table::setFor(const KeyHash& key) const {
  // Lemire's multiply-shift range reduction: no power-of-two rounding.
  return data_ + static_cast<size_t>((static_cast<u128>(key.lo) * sets_) >> 64);
}

Decision Table::check(const KeyHash& key, const Policy& policy, uint64_t nowNs, uint32_t cost) {
  Set* s = setFor(key);
  SetLock lk(s);
  Entry* hit = nullptr;
  Entry* empty = nullptr;
  Entry* victim = nullptr;
  for (Entry& e : s->live) {
    if (e.tag == key.hi) {
      hit = &e;
      break;
    }
    if (e.tag == 0) {
      if (empty == nullptr) empty = &e;
    } else if (victim == nullptr || e.a < victim->a) {
      victim = &e;
    }
  }
  if (hit != nullptr) return evaluate(hit, policy, nowNs, cost, true);

  // A miss: the key may be remembered in the ghost slot.
  Entry fresh{key.hi, 0, 0};
  if (s->ghost.tag == key.hi) {
    if (s->ghost.a > nowNs) {
      fresh = s->ghost;
      stats_.ghostRestores.fetch_add(1, std::memory_order_relaxed);
    }
    s->ghost = Entry{};
  }
  Decision d = evaluate(&fresh, policy, nowNs, cost, true);
  if (!d.allowed && fresh.a <= nowNs) return d;  // nothing worth remembering
  Entry* slot = empty;
  if (slot == nullptr) {
    slot = victim;
    if (victim->a <= nowNs) {
      stats_.evictionsIdle.fetch_add(1, std::memory_order_relaxed);
    } else {
      stats_.evictionsActive.fetch_add(1, std::memory_order_relaxed);
      if (s->ghost.tag == 0 || s->ghost.a <= nowNs || victim->a > s->ghost.a) {
        if (s->ghost.tag != 0 && s->ghost.a > nowNs) {
          stats_.ghostLost.fetch_add(1, std::memory_order_relaxed);
        }
        s->ghost = *victim;
      } else {
        stats_.ghostLost.fetch_add(1, std::memory_order_relaxed);
      }
    }
  }
  *slot = fresh;
  stats_.inserts.fetch_add(1, std::memory_order_relaxed);
  return d;
}

Decision Table::peek(const KeyHash& key, const Policy& policy, uint64_t nowNs) const {
  Set* s = setFor(key);
  SetLock lk(s);
  Entry copy{};
  for (const Entry& e : s->live) {
    if (e.tag == key.hi) copy = e;
  }
  if (copy.tag == 0 && s->ghost.tag == key.hi) copy = s->ghost;
  return evaluate(copy.tag != 0 ? &copy : nullptr, policy, nowNs, 1, false);
}

bool Table::reset(const KeyHash& key) {
  Set* s = setFor(key);
  SetLock lk(s);
  bool found = false;
  for (Entry& e : s->live) {
    if (e.tag == key.hi) {
      e = Entry{};
      found = true;
    }
  }
  if (s->ghost.tag == key.hi) {
    s->ghost = Entry{};
    found = true;
  }
  return found;
}

void Table::block(const KeyHash& key, uint64_t untilNs) {
  Set* s = setFor(key);
  SetLock lk(s);
  Entry* slot = nullptr;
  for (Entry& e : s->live) {
    if (e.tag == key.hi) {
      slot = &e;
      break;
    }
  }
  if (slot == nullptr) {
    for (Entry& e : s->live) {
      if (e.tag == 0) {
        slot = &e;
        break;
      }
      if (slot == nullptr || e.a < slot->a) slot = &e;
    }
    if (slot->tag != 0) {
      // A penalty mark outranks whatever it displaces; keep that in the ghost
      // if it still matters more than what the ghost holds.
      if (s->ghost.tag == 0 || slot->a > s->ghost.a) s->ghost = *slot;
      stats_.evictionsActive.fetch_add(1, std::memory_order_relaxed);
    }
    stats_.inserts.fetch_add(1, std::memory_order_relaxed);
  }
  *slot = Entry{key.hi, untilNs, kBlockMarker};
}

uint64_t Table::blockedUntil(const KeyHash& key, uint64_t nowNs) const {
  Set* s = setFor(key);
  SetLock lk(s);
  auto until = [&](const Entry& e) { return e.b == kBlockMarker && e.a > nowNs ? e.a : 0; };
  for (const Entry& e : s->live) {
    if (e.tag == key.hi) return until(e);
  }
  return s->ghost.tag == key.hi ? until(s->ghost) : 0;
}

size_t Table::trackedKeys(uint64_t nowNs) const {
  size_t n = 0;
  for (size_t i = 0; i < sets_; ++i) {
    Set* s = data_ + i;
    SetLock lk(s);
    for (const Entry& e : s->live) n += (e.tag != 0 && e.a > nowNs) ? 1 : 0;
  }
  return n;
}

TableStats Table::stats() const {
  TableStats t;
  t.inserts = stats_.inserts.load(std::memory_order_relaxed);
  t.evictionsIdle = stats_.evictionsIdle.load(std::memory_order_relaxed);
  t.evictionsActive = stats_.evictionsActive.load(std::memory_order_relaxed);
  t.ghostRestores = stats_.ghostRestores.load(std::memory_order_relaxed);
  t.ghostLost = stats_.ghostLost.load(std::memory_order_relaxed);
  return t;
}

// ---- TopKeys ----------------------------------------------------------------

void TopKeys::add(uint64_t hash, std::string_view rule, std::string_view key) {
  Item* min = nullptr;
  for (Item& it : items_) {
    if (it.hash == hash) {
      ++it.count;
      return;
    }
    if (min == nullptr || it.count < min->count) min = &it;
  }
  if (items_.size() < kSize) {
    items_.push_back(Item{hash, 1, 0, std::string(rule), std::string(key)});
    return;
  }
  min->hash = hash;
  min->error = min->count;
  ++min->count;
  min->rule.assign(rule);
  min->key.assign(key);
}

std::vector<TopKeys::Item> TopKeys::merge(const std::vector<std::vector<Item>>& parts, size_t n) {
  std::vector<Item> all;
  for (const auto& part : parts) {
    for (const Item& it : part) {
      auto same = std::find_if(all.begin(), all.end(),
                               [&](const Item& x) { return x.hash == it.hash; });
      if (same == all.end()) {
        all.push_back(it);
      } else {
        same->count += it.count;
        same->error += it.error;
      }
    }
  }
  std::sort(all.begin(), all.end(), [](const Item& x, const Item& y) {
    return x.count != y.count ? x.count > y.count : x.key < y.key;
  });
  if (all.size() > n) all.resize(n);
  return all;
}

}  // namespace moat::ratelimit
