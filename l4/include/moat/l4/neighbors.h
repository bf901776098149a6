// IP -> MAC for next hops (backends, gateways), shared by every lcore: any
// worker may receive the ARP reply or neighbour advertisement, every worker
// needs the answer.
//
// Thread: all methods may be called from any thread concurrently; no locks,
// no allocation after construction, no syscalls. Design:
//  - Fixed-capacity open-addressing array (linear probing, no deletion:
//    next hops are few and long-lived; size the table for backends +
//    gateways with headroom, e.g. 4x).
//  - A slot's key (address + version) is published once through a 64-bit
//    state word: a creator CASes it empty -> claimed(tag), writes the key,
//    then stores ready(tag) with release. Readers acquire the state before
//    reading the key, and a key never changes after that. A slot seen
//    claimed is skipped by readers; a creator seeing the same key being
//    claimed by another thread stops (that thread is creating it).
//  - The value (MAC, valid, static) is one 64-bit atomic: a reader gets the
//    whole MAC or none of it, never a torn mix of two updates. Learning
//    CASes it so a concurrent setStatic() always wins.
//  - Learned time and last resolve-request time are separate atomics (only
//    advisory: staleness and rate limiting).
//
// Only addresses the table already tracks are learned: an entry is created
// by setStatic() (configuration) or needsResolve() (a worker wanted the
// address), so unsolicited ARP replies cannot fill the table.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>

namespace moat::l4 {

enum class LearnResult : uint8_t {
  kUpdated,        // MAC stored (new or changed)
  kUnchanged,      // same MAC as before (learned time refreshed)
  kStatic,         // entry is configured: learning never overwrites it
  kUnknown,        // address not tracked: ignored (unsolicited reply)
  kBadVersion,     // ipVersion not 4 or 6
};

struct NeighborStats {
  uint64_t learned = 0;        // kUpdated
  uint64_t macChanged = 0;     // of those, a valid MAC replaced by another (failover or spoof)
  uint64_t ignoredStatic = 0;  // kStatic
  uint64_t ignoredUnknown = 0; // kUnknown: unsolicited replies, normal in small numbers
  uint64_t resolveRequests = 0;  // needsResolve() returned true: ARP requests / NS sent
  uint64_t tableFull = 0;      // an address could not get a slot: raise capacity; should be 0
  size_t entries = 0;          // slots in use
};

class NeighborTable {
 public:
  // Start-up only. Capacity is rounded up to a power of two (>= 1); a key
  // is looked for in at most `maxProbes` consecutive slots. `resolveIntervalNs`
  // spaces resolve requests per address; `staleNs` (0 = never) makes a
  // learned (not static) MAC due for re-resolution after that age, while
  // lookups keep using it. Throws std::invalid_argument for capacity 0.
  explicit NeighborTable(size_t capacity, uint64_t resolveIntervalNs = 1'000'000'000,
                         uint64_t staleNs = 0, uint32_t maxProbes = 32);
  ~NeighborTable();
  NeighborTable(const NeighborTable&) = delete;
  NeighborTable& operator=(const NeighborTable&) = delete;

  // Any thread. Copies the MAC of `ip` (IPv4: ip[0..3], the rest ignored;
  // IPv6: 16 bytes) into `mac` and returns true if one is known. Wait-free:
  // a hash, at most maxProbes state loads, one 64-bit value load.
  bool lookup(const uint8_t ip[16], uint8_t ipVersion, uint8_t mac[6]) const;

  // Any thread. Records a MAC seen in an ARP reply / neighbour
  // advertisement for an address the table tracks.
  LearnResult learn(const uint8_t ip[16], uint8_t ipVersion, const uint8_t mac[6], uint64_t nowNs);

  // Control side (any thread). Pins `ip` to `mac`; creates the entry if
  // needed. Returns false only when the table is full or the version is bad.
  bool setStatic(const uint8_t ip[16], uint8_t ipVersion, const uint8_t mac[6]);

  // Any thread, on a lookup() miss (or periodically for staleness). True
  // when the caller should emit an ARP request / neighbour solicitation
  // for `ip` now: the address has no MAC (or a stale learned one) and no
  // request went out in the last resolveIntervalNs, across all threads --
  // exactly one caller wins per interval (CAS on the entry's request time).
  // Creates the entry on first call. False when the table is full.
  bool needsResolve(const uint8_t ip[16], uint8_t ipVersion, uint64_t nowNs);

  NeighborStats stats() const;
  size_t capacity() const { return mask_ + 1; }

  struct Slot;

 private:
  enum class Mode { kFind, kCreate };
  // The ready slot for the key, or null (bad version, absent). kCreate
  // claims a free slot when absent and returns null only when full
  // (counted) or when another thread is creating the same key and did not
  // publish it within a short spin (*busy = true). const: kFind never
  // writes; kCreate writes only slots (the pointee of slots_).
  Slot* locate(const uint8_t ip[16], uint8_t ipVersion, Mode mode, bool* busy) const;

  size_t mask_ = 0;
  uint32_t maxProbes_ = 0;
  uint64_t resolveIntervalNs_ = 0;
  uint64_t staleNs_ = 0;
  std::unique_ptr<Slot[]> slots_;
  struct Counters {
    std::atomic<uint64_t> learned{0}, macChanged{0}, ignoredStatic{0}, ignoredUnknown{0},
        resolveRequests{0}, tableFull{0};
    std::atomic<size_t> entries{0};
  };
  mutable Counters counters_;
};

}  // namespace moat::l4
