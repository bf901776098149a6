#include "moat/l4/syn_limiter.h"

#include <limits>
#include <stdexcept>

namespace moat::l4 {

namespace {

constexpr uint64_t kUnitsPerToken = 1'000'000'000;  // 1 token = 1e9 units: refill is rate * ns

uint64_t loadBe(const uint8_t* p, int n) {
  uint64_t v = 0;
  for (int i = 0; i < n; ++i) v = (v << 8) | p[i];
  return v;
}

uint64_t fmix64(uint64_t k) {
  k ^= k >> 33;
  k *= 0xff51afd7ed558ccdULL;
  k ^= k >> 33;
  k *= 0xc4ceb9fe1a85ec53ULL;
  k ^= k >> 33;
  return k;
}

// The top `len` bits of a `width`-bit value set.
uint64_t prefixMask(unsigned len, unsigned width) {
  if (len == 0) return 0;
  uint64_t all = width == 64 ? ~uint64_t{0} : (uint64_t{1} << width) - 1;
  return (all << (width - len)) & all;
}

}  // namespace

// 40 bytes. version == 0: never used (there is no deletion, so an empty
// slot ends a probe sequence).
struct SynLimiter::Slot {
  uint64_t k0 = 0, k1 = 0;  // masked source prefix (IPv4: k0 = address, k1 = 0)
  uint64_t lastNs = 0;      // time of the last check; the refill is computed from it
  uint64_t units = 0;       // tokens * 1e9 at lastNs
  uint8_t version = 0;
};

SynLimiter::SynLimiter(const SynLimiterConfig& config) : config_(config) {
  if (config.ratePerSec == 0) throw std::invalid_argument("syn limiter: ratePerSec must be > 0");
  if (config.burst == 0) throw std::invalid_argument("syn limiter: burst must be > 0");
  if (config.capacity == 0) throw std::invalid_argument("syn limiter: capacity must be > 0");
  if (config.v4PrefixLen > 32 || config.v6PrefixLen > 128) {
    throw std::invalid_argument("syn limiter: prefix length out of range");
  }
  constexpr uint64_t kMax = std::numeric_limits<uint64_t>::max();
  if (config.burst > kMax / 2 / kUnitsPerToken) {
    throw std::invalid_argument("syn limiter: burst too large");
  }
  fullUnits_ = config.burst * kUnitsPerToken;
  if (config.ratePerSec > kMax - 2 * fullUnits_) {
    throw std::invalid_argument("syn limiter: ratePerSec too large");
  }
  // Ceiling: after fillNs_ any bucket is full again, and elapsed (clamped to
  // fillNs_) * rate < fullUnits_ + rate, so units + refill < 2 * fullUnits_ +
  // rate cannot overflow (checked above).
  fillNs_ = (fullUnits_ + config.ratePerSec - 1) / config.ratePerSec;

  size_t cap = 1;
  while (cap < config.capacity) {
    if (cap > (std::numeric_limits<size_t>::max() >> 1)) {
      throw std::invalid_argument("syn limiter: capacity too large");
    }
    cap <<= 1;
  }
  mask_ = cap - 1;
  if (config_.maxProbes == 0) config_.maxProbes = 1;
  if (config_.maxProbes > cap) config_.maxProbes = static_cast<uint32_t>(cap);

  maskV4_ = prefixMask(config.v4PrefixLen, 32);
  unsigned hiLen = config.v6PrefixLen > 64 ? 64 : config.v6PrefixLen;
  maskV6Hi_ = prefixMask(hiLen, 64);
  maskV6Lo_ = prefixMask(config.v6PrefixLen - hiLen, 64);

  slots_ = std::make_unique<Slot[]>(cap);  // value-initialised: every slot empty
}

SynLimiter::~SynLimiter() = default;

bool SynLimiter::allow(const uint8_t addr[16], uint8_t ipVersion, uint64_t nowNs) {
  uint64_t k0, k1;
  if (ipVersion == 4) {
    k0 = loadBe(addr, 4) & maskV4_;
    k1 = 0;
  } else if (ipVersion == 6) {
    k0 = loadBe(addr, 8) & maskV6Hi_;
    k1 = loadBe(addr + 8, 8) & maskV6Lo_;
  } else {
    ++stats_.limited;
    return false;
  }

  uint64_t h = fmix64(k0 ^ config_.seed);
  h = fmix64(h ^ k1 ^ (uint64_t{ipVersion} << 56));

  Slot* found = nullptr;
  Slot* victim = nullptr;
  for (uint32_t i = 0; i < config_.maxProbes; ++i) {
    Slot& s = slots_[(h + i) & mask_];
    if (s.version == 0) {  // end of this probe sequence: the source is new
      victim = &s;
      break;
    }
    if (s.version == ipVersion && s.k0 == k0 && s.k1 == k1) {
      found = &s;
      break;
    }
    if (victim == nullptr || s.lastNs < victim->lastNs) victim = &s;
  }

  const uint64_t rate = config_.ratePerSec;
  if (found == nullptr) {
    // victim is never null here: maxProbes >= 1.
    if (victim->version == 0) {
      ++stats_.newSources;
    } else {
      uint64_t idle = nowNs > victim->lastNs ? nowNs - victim->lastNs : 0;
      bool full = idle >= fillNs_ || victim->units + idle * rate >= fullUnits_;
      ++(full ? stats_.evictionsIdle : stats_.evictionsActive);
      ++stats_.newSources;
    }
    victim->k0 = k0;
    victim->k1 = k1;
    victim->version = ipVersion;
    victim->lastNs = nowNs;
    victim->units = fullUnits_ - kUnitsPerToken;  // a new source starts with a full bucket
    ++stats_.allowed;
    return true;
  }

  if (nowNs > found->lastNs) {
    uint64_t elapsed = nowNs - found->lastNs;
    if (elapsed >= fillNs_) {
      found->units = fullUnits_;
    } else {
      uint64_t u = found->units + elapsed * rate;  // < 2 * fullUnits_ + rate: no overflow
      found->units = u > fullUnits_ ? fullUnits_ : u;
    }
    found->lastNs = nowNs;
  }
  if (found->units >= kUnitsPerToken) {
    found->units -= kUnitsPerToken;
    ++stats_.allowed;
    return true;
  }
  ++stats_.limited;
  return false;
}

}  // namespace moat::l4
