// Per-source new-connection rate limit for the packet engine: a token bucket
// per client source prefix, checked when a packet would create a flow (a TCP
// SYN, a new UDP flow) before the flow table is touched.
//
// Thread: one SynLimiter per lcore, used only by its worker (no atomics, no
// locks). RSS hashes a source to one lcore, so a per-lcore limit is exact per
// source. Bounded memory: a fixed open-addressing table allocated once at
// construction; a new source that finds no free slot among its probes
// replaces the probed entry updated longest ago (counted), so a flood of
// spoofed sources costs memory nothing and costs real clients at worst a
// fresh bucket (a full burst) -- never a wrong refusal.
//
// Time is the caller's (nanoseconds on any monotonic clock, non-decreasing
// per limiter); the limiter never reads a clock.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

namespace moat::l4 {

struct SynLimiterConfig {
  uint64_t ratePerSec = 200;  // new flows per second per source, refill rate (> 0)
  uint64_t burst = 400;       // bucket size: new flows a quiet source may open at once (> 0)
  // Sources are grouped by prefix: an IPv6 client usually owns a /64, so
  // limiting single /128s would let one host rotate addresses freely.
  uint8_t v4PrefixLen = 32;   // 0..32
  uint8_t v6PrefixLen = 64;   // 0..128
  size_t capacity = 65536;    // tracked sources; rounded up to a power of two
  uint32_t maxProbes = 8;     // slots looked at per check (1..capacity)
  // Mixed into the slot hash so an outsider cannot aim sources at one probe
  // window (draw it at random at start-up; 0 is allowed, e.g. in tests).
  uint64_t seed = 0;
};

struct SynLimiterStats {
  uint64_t allowed = 0;          // checks that passed
  uint64_t limited = 0;          // checks refused: the caller drops the packet (counted there too)
  uint64_t newSources = 0;       // a source (prefix) got a slot
  uint64_t evictionsIdle = 0;    // victim's bucket was already full: forgetting it changes nothing
  uint64_t evictionsActive = 0;  // victim still owed tokens and will get a full burst if it
                                 // comes back; > 0 in production means the table is too small
                                 // for the sources seen (or a spoofed-source flood)
};

class SynLimiter {
 public:
  // Start-up only: allocates the table (capacity * 40 bytes) once. Throws
  // std::invalid_argument for a zero rate, burst or capacity, a prefix
  // length out of range, or a burst (> ~9.2e9) or rate too large for the
  // 64-bit token arithmetic.
  explicit SynLimiter(const SynLimiterConfig& config);
  ~SynLimiter();
  SynLimiter(const SynLimiter&) = delete;
  SynLimiter& operator=(const SynLimiter&) = delete;

  // Owning worker only. Takes one token from the bucket of the source
  // prefix of `addr` (IPv4: addr[0..3], the other bytes are ignored; IPv6:
  // all 16) and returns true, or returns false (nothing taken) when the
  // bucket is empty. An unsupported ipVersion (not 4 or 6) is refused
  // (counted as limited). Cost: one hash, at most maxProbes 40-byte slots
  // read; no allocation.
  bool allow(const uint8_t addr[16], uint8_t ipVersion, uint64_t nowNs);

  const SynLimiterStats& stats() const { return stats_; }
  size_t capacity() const { return mask_ + 1; }

  struct Slot;

 private:
  SynLimiterConfig config_;
  uint64_t fillNs_ = 0;     // ns to refill an empty bucket completely
  uint64_t fullUnits_ = 0;  // burst in token-units (1 token = 1e9 units)
  uint64_t maskV4_ = 0;     // prefix masks on the address words (big-endian value order)
  uint64_t maskV6Hi_ = 0, maskV6Lo_ = 0;
  size_t mask_ = 0;
  std::unique_ptr<Slot[]> slots_;
  SynLimiterStats stats_;
};

}  // namespace moat::l4
