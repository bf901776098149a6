#include "moat/l4/neighbors.h"

#include <cstring>
#include <limits>
#include <stdexcept>
#include <thread>

namespace moat::l4 {

namespace {

constexpr uint64_t kStateEmpty = 0;
constexpr uint64_t kStateClaimed = 1;  // low two bits; the upper 62 hold the key's tag
constexpr uint64_t kStateReady = 2;

constexpr uint64_t kMacMask = (uint64_t{1} << 48) - 1;
constexpr uint64_t kValid = uint64_t{1} << 48;
constexpr uint64_t kStatic = uint64_t{1} << 49;

constexpr uint64_t kNever = std::numeric_limits<uint64_t>::max();

// How long a creator waits for another thread that claimed a slot for the
// same key to publish it: the claimer is a handful of stores away, so this
// only runs out if that thread was preempted mid-claim.
constexpr int kClaimSpins = 4096;

inline void cpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield" ::: "memory");
#endif
}

uint64_t fmix64(uint64_t k) {
  k ^= k >> 33;
  k *= 0xff51afd7ed558ccdULL;
  k ^= k >> 33;
  k *= 0xc4ceb9fe1a85ec53ULL;
  k ^= k >> 33;
  return k;
}

struct Key {
  uint8_t addr[16] = {};
  uint8_t version = 0;
};

bool makeKey(const uint8_t ip[16], uint8_t version, Key& k) {
  if (version == 4) {
    std::memcpy(k.addr, ip, 4);
  } else if (version == 6) {
    std::memcpy(k.addr, ip, 16);
  } else {
    return false;
  }
  k.version = version;
  return true;
}

uint64_t hashKey(const Key& k) {
  uint64_t w0, w1;
  std::memcpy(&w0, k.addr, 8);
  std::memcpy(&w1, k.addr + 8, 8);
  return fmix64(w0 ^ fmix64(w1 ^ (uint64_t{k.version} * 0x9e3779b97f4a7c15ULL)));
}

uint64_t packMac(const uint8_t mac[6]) {
  uint64_t v = 0;
  for (int i = 5; i >= 0; --i) v = (v << 8) | mac[i];
  return v;
}

void unpackMac(uint64_t v, uint8_t mac[6]) {
  for (int i = 0; i < 6; ++i) mac[i] = static_cast<uint8_t>(v >> (8 * i));
}

}  // namespace

// One cache line per slot so writers of different next hops do not share
// lines (and readers of a hot gateway entry are not disturbed by learning
// on its neighbours).
struct alignas(64) NeighborTable::Slot {
  std::atomic<uint64_t> state{kStateEmpty};
  // Written once by the creator between its claim and the ready store;
  // read only after an acquire load saw ready. Never changes afterwards.
  uint8_t addr[16] = {};
  uint8_t version = 0;
  std::atomic<uint64_t> value{0};            // MAC | kValid | kStatic
  std::atomic<uint64_t> learnedNs{0};        // when the MAC was last confirmed
  std::atomic<uint64_t> lastRequestNs{kNever};  // last resolve request handed out
};

NeighborTable::NeighborTable(size_t capacity, uint64_t resolveIntervalNs, uint64_t staleNs,
                             uint32_t maxProbes)
    : resolveIntervalNs_(resolveIntervalNs), staleNs_(staleNs) {
  if (capacity == 0) throw std::invalid_argument("neighbor table: capacity must be > 0");
  size_t cap = 1;
  while (cap < capacity) {
    if (cap > (std::numeric_limits<size_t>::max() >> 8)) {
      throw std::invalid_argument("neighbor table: capacity too large");
    }
    cap <<= 1;
  }
  mask_ = cap - 1;
  maxProbes_ = maxProbes == 0 ? 1 : maxProbes;
  if (maxProbes_ > cap) maxProbes_ = static_cast<uint32_t>(cap);
  slots_ = std::make_unique<Slot[]>(cap);
}

NeighborTable::~NeighborTable() = default;

NeighborTable::Slot* NeighborTable::locate(const uint8_t ip[16], uint8_t ipVersion, Mode mode,
                                           bool* busy) const {
  if (busy != nullptr) *busy = false;
  Key k;
  if (!makeKey(ip, ipVersion, k)) return nullptr;
  const uint64_t h = hashKey(k);
  const uint64_t tag = h >> 2;
  const uint64_t claimed = (tag << 2) | kStateClaimed;
  const uint64_t ready = (tag << 2) | kStateReady;

  for (uint32_t i = 0; i < maxProbes_; ++i) {
    Slot& s = slots_[(h + i) & mask_];
    uint64_t st = s.state.load(std::memory_order_acquire);
    if (st == kStateEmpty) {
      // No deletion: the key is not further along its probe sequence.
      if (mode == Mode::kFind) return nullptr;
      uint64_t expected = kStateEmpty;
      if (s.state.compare_exchange_strong(expected, claimed, std::memory_order_acq_rel,
                                          std::memory_order_acquire)) {
        std::memcpy(s.addr, k.addr, 16);
        s.version = k.version;
        s.value.store(0, std::memory_order_relaxed);
        s.learnedNs.store(0, std::memory_order_relaxed);
        s.lastRequestNs.store(kNever, std::memory_order_relaxed);
        s.state.store(ready, std::memory_order_release);
        counters_.entries.fetch_add(1, std::memory_order_relaxed);
        return &s;
      }
      st = expected;  // another thread claimed it first: look at what it holds
    }
    if ((st & 3) == kStateClaimed) {
      if (st != claimed || mode == Mode::kFind) continue;  // another key, or not ours to wait on
      // Possibly our key, being created by another thread: wait for it.
      for (int spin = 0; spin < kClaimSpins && st == claimed; ++spin) {
        cpuRelax();
        st = s.state.load(std::memory_order_acquire);
      }
      if (st == claimed) {
        if (busy != nullptr) *busy = true;
        return nullptr;
      }
    }
    if (st == ready && s.version == k.version && std::memcmp(s.addr, k.addr, 16) == 0) return &s;
  }
  if (mode == Mode::kCreate) counters_.tableFull.fetch_add(1, std::memory_order_relaxed);
  return nullptr;
}

bool NeighborTable::lookup(const uint8_t ip[16], uint8_t ipVersion, uint8_t mac[6]) const {
  const Slot* s = locate(ip, ipVersion, Mode::kFind, nullptr);
  if (s == nullptr) return false;
  uint64_t v = s->value.load(std::memory_order_acquire);
  if ((v & kValid) == 0) return false;
  unpackMac(v, mac);
  return true;
}

LearnResult NeighborTable::learn(const uint8_t ip[16], uint8_t ipVersion, const uint8_t mac[6],
                                 uint64_t nowNs) {
  if (ipVersion != 4 && ipVersion != 6) return LearnResult::kBadVersion;
  Slot* s = locate(ip, ipVersion, Mode::kFind, nullptr);
  if (s == nullptr) {
    counters_.ignoredUnknown.fetch_add(1, std::memory_order_relaxed);
    return LearnResult::kUnknown;
  }
  const uint64_t next = (packMac(mac) & kMacMask) | kValid;
  uint64_t old = s->value.load(std::memory_order_acquire);
  for (;;) {
    if (old & kStatic) {
      counters_.ignoredStatic.fetch_add(1, std::memory_order_relaxed);
      return LearnResult::kStatic;
    }
    if (old == next) {
      s->learnedNs.store(nowNs, std::memory_order_relaxed);
      return LearnResult::kUnchanged;
    }
    // A CAS, not a store: a setStatic() racing with us must win.
    if (s->value.compare_exchange_weak(old, next, std::memory_order_release,
                                       std::memory_order_acquire)) {
      break;
    }
  }
  s->learnedNs.store(nowNs, std::memory_order_relaxed);
  counters_.learned.fetch_add(1, std::memory_order_relaxed);
  if (old & kValid) counters_.macChanged.fetch_add(1, std::memory_order_relaxed);
  return LearnResult::kUpdated;
}

bool NeighborTable::setStatic(const uint8_t ip[16], uint8_t ipVersion, const uint8_t mac[6]) {
  if (ipVersion != 4 && ipVersion != 6) return false;
  Slot* s = nullptr;
  for (;;) {
    bool busy = false;
    s = locate(ip, ipVersion, Mode::kCreate, &busy);
    if (s != nullptr) break;
    if (!busy) return false;  // full (counted)
    std::this_thread::yield();  // control side: another thread is mid-claim of this key
  }
  s->value.store((packMac(mac) & kMacMask) | kValid | kStatic, std::memory_order_release);
  return true;
}

bool NeighborTable::needsResolve(const uint8_t ip[16], uint8_t ipVersion, uint64_t nowNs) {
  // Busy (another thread is creating this very entry right now): that
  // thread's own call decides; answering false here keeps one request.
  Slot* s = locate(ip, ipVersion, Mode::kCreate, nullptr);
  if (s == nullptr) return false;
  uint64_t v = s->value.load(std::memory_order_acquire);
  if (v & kStatic) return false;
  if (v & kValid) {
    if (staleNs_ == 0) return false;
    uint64_t learned = s->learnedNs.load(std::memory_order_relaxed);
    if (nowNs < learned || nowNs - learned < staleNs_) return false;
  }
  uint64_t last = s->lastRequestNs.load(std::memory_order_relaxed);
  if (last != kNever && (nowNs < last || nowNs - last < resolveIntervalNs_)) return false;
  if (!s->lastRequestNs.compare_exchange_strong(last, nowNs, std::memory_order_relaxed)) {
    return false;  // another thread won this interval
  }
  counters_.resolveRequests.fetch_add(1, std::memory_order_relaxed);
  return true;
}

NeighborStats NeighborTable::stats() const {
  NeighborStats s;
  s.learned = counters_.learned.load(std::memory_order_relaxed);
  s.macChanged = counters_.macChanged.load(std::memory_order_relaxed);
  s.ignoredStatic = counters_.ignoredStatic.load(std::memory_order_relaxed);
  s.ignoredUnknown = counters_.ignoredUnknown.load(std::memory_order_relaxed);
  s.resolveRequests = counters_.resolveRequests.load(std::memory_order_relaxed);
  s.tableFull = counters_.tableFull.load(std::memory_order_relaxed);
  s.entries = counters_.entries.load(std::memory_order_relaxed);
  return s;
}

}  // namespace moat::l4
