// The per-lcore L4 connection table: flow 5-tuple -> the backend chosen when
// the flow started, so existing flows keep their backend when the Maglev
// table changes (a backend added, drained or re-weighted).
//
// Thread: one FlowTable per lcore, touched only by its worker (no atomics,
// no locks). Control asks for counters or a sweep by message to the worker.
//
// Memory: everything is allocated once by the constructor: `capacity`
// 128-byte entries (two cache lines; the first holds what a lookup compares)
// plus a power-of-two bucket array of 8-byte heads, >= capacity. 1M entries
// cost ~136 MB per lcore, in 2 MiB-aligned blocks advised for transparent
// huge pages. Nothing is allocated, thrown or locked afterwards.
//
// Structure: a chained hash (Boost.Intrusive unordered_set over the entry
// array, power-of-two buckets, hash stored in the entry) plus one LRU list
// per timeout class (TCP SYN only, established, closing, closed, UDP,
// other). Every class has one fixed timeout, so each list ordered by last
// seen is also ordered by deadline: expire() pops from list tails and is
// exact, and a long-timeout entry never hides an expired short-timeout one.
//
// Time: `nowNs` is the caller's monotonic clock in nanoseconds and must not
// decrease between calls on one table (the lists rely on it). The table
// never reads a clock.
#pragma once

#include <boost/intrusive/list.hpp>
#include <boost/intrusive/unordered_set.hpp>

#include <cstddef>
#include <cstdint>
#include <memory>

#include "moat/l4/flow_types.h"

namespace moat::l4 {

// What the LB knows of a TCP connection. With DSR (and IPIP/GUE) it sees
// only client -> server packets, so "established" means the client sent an
// ACK without SYN (the third handshake packet or later).
enum class TcpState : uint8_t {
  kNone,         // not TCP
  kSynSeen,      // only SYNs so far
  kEstablished,  // an ACK without SYN seen
  kClosing,      // FIN seen from the client
  kClosed,       // RST seen from the client
};

// Timeout classes: one LRU list each, each with its own idle timeout.
enum class FlowClass : uint8_t {
  kTcpSyn,
  kTcpEstablished,
  kTcpClosing,
  kTcpClosed,
  kUdp,
  kOther,  // ICMP echo and any other protocol
};
inline constexpr size_t kFlowClassCount = 6;

// Idle timeouts per class: an entry expires when nowNs >= lastSeenNs +
// timeout of its class (exactly at the boundary).
struct FlowTimeouts {
  uint64_t tcpSynNs = 5'000'000'000;            // a SYN flood's half-open entries go fast
  uint64_t tcpEstablishedNs = 300'000'000'000;  // idle TCP keeps its backend for 5 min
  uint64_t tcpClosingNs = 10'000'000'000;       // FIN seen: the last ACKs and retransmits
  uint64_t tcpClosedNs = 2'000'000'000;         // RST seen: stray segments only
  uint64_t udpNs = 30'000'000'000;
  uint64_t otherNs = 10'000'000'000;

  uint64_t forClass(FlowClass c) const;
};

namespace flow_detail {
namespace bi = boost::intrusive;
// normal_link: no hook bookkeeping on unlink; membership is tracked by
// Flow::flowClass (kFree = on the free list).
using HashHook = bi::unordered_set_member_hook<bi::link_mode<bi::normal_link>, bi::store_hash<true>>;
using LruHook = bi::list_member_hook<bi::link_mode<bi::normal_link>>;
}  // namespace flow_detail

// One connection. A Flow* returned by the table stays valid until its entry
// is erased, found expired, reaped or evicted: any insert(), expire(),
// removeIf() or erase() call may end it (a find() of another key does not).
// Keep it for the packet at hand only, never across bursts.
struct alignas(64) Flow {
  // First cache line: what a bucket chain walk compares (stored hash, key).
  flow_detail::HashHook hashHook;  // owned by FlowTable (next in bucket + stored hash)
  FlowKey key{};
  uint32_t backendIndex = 0;  // index into the service's backends when chosen (a hint)
  uint32_t backendId = 0;     // stable backend id: check it against the current snapshot

  // Second cache line: read and written on a hit (class, LRU relink).
  uint32_t serviceIndex = 0;
  TcpState tcpState = TcpState::kNone;
  uint8_t flowClass = 0;  // FlowClass, or kFree; owned by FlowTable
  flow_detail::LruHook lruHook;  // owned by FlowTable
  uint64_t lastSeenNs = 0;       // set by find(), insert(), updateTcpState(), touch()
  uint64_t createdNs = 0;
  uint64_t packets = 0;  // counted by the caller (or touch())
  uint64_t bytes = 0;

  static constexpr uint8_t kFree = 0xff;
};
static_assert(sizeof(Flow) == 128, "two cache lines per entry");

struct FlowTableStats {
  uint64_t inserts = 0;
  uint64_t hits = 0;     // find() returned a live entry
  uint64_t misses = 0;   // find() found nothing live (absent or just expired)
  uint64_t evicted = 0;  // live entries dropped because the table was full: flows that
                         // lose their backend affinity if the Maglev table changed; should
                         // stay 0 in production (size the table or shorten timeouts)
  uint64_t expired = 0;  // entries dropped at their idle timeout (lazily or by expire())
  uint64_t removed = 0;  // erase() and removeIf()
  uint64_t duplicateInserts = 0;  // insert() of a live key: a caller bug, should read 0
  size_t size = 0;       // live entries now (expired ones not yet reaped included)
  size_t capacity = 0;
  size_t sizeByClass[kFlowClassCount] = {};
};

class FlowTable {
 public:
  // Start-up only: allocates and touches all memory. Throws
  // std::invalid_argument for capacity 0 (or one too large for the bucket
  // arithmetic) and std::bad_alloc. `seed` is mixed into the bucket index so
  // crafted 5-tuples cannot be aimed at one chain without finding full
  // 64-bit hashFlow collisions (draw it at random per table at start-up).
  FlowTable(size_t capacity, const FlowTimeouts& timeouts, uint64_t seed = 0);
  ~FlowTable();
  FlowTable(const FlowTable&) = delete;
  FlowTable& operator=(const FlowTable&) = delete;

  // The live entry for `key` (hash = hashFlow(key)), refreshed: lastSeenNs =
  // nowNs, moved to the head of its class list. Returns null when absent or
  // expired; an expired entry is removed (stats().expired) first. Cost: one
  // bucket chain walk (average < 1 entry compared at full load), O(1).
  Flow* find(const FlowKey& key, uint64_t hash, uint64_t nowNs);

  // Creates the entry for `key`, which should be absent (find() returned
  // null at this nowNs). If it is present after all, the live entry is
  // returned refreshed as find() would (stats().duplicateInserts) or, if
  // expired, replaced by a fresh one. Fields start zeroed except key,
  // createdNs = lastSeenNs = nowNs, and tcpState: kSynSeen for TCP (class
  // kTcpSyn), kNone otherwise; the caller sets the backend and should call
  // updateTcpState() with the first packet's flags. When full: reaps up to
  // kReapOnInsert expired entries from the class tails; if none, evicts the
  // live entry with the earliest deadline among the class tails
  // (stats().evicted) -- SYN-only entries go before established flows that
  // are younger than 295 s idle, which is what one wants under a SYN flood.
  // Never returns null. Cost O(1) (at most kReapOnInsert + 6 tails looked at).
  Flow* insert(const FlowKey& key, uint64_t hash, uint64_t nowNs);

  // Applies a client -> server TCP segment's flags (TCP header byte 13:
  // FIN 0x01, SYN 0x02, RST 0x04, ACK 0x10) and refreshes the entry:
  //   RST          -> kClosed (from any state)
  //   FIN          -> kClosing (unless closed)
  //   SYN w/o ACK  -> kSynSeen when closing or closed (the tuple is reused
  //                   by a new connection); otherwise unchanged (retransmit)
  //   ACK w/o SYN  -> kEstablished from kSynSeen (or from kNone)
  // A SYN+ACK (never client -> server) changes nothing. Non-TCP entries
  // only get their lastSeenNs refreshed. O(1).
  void updateTcpState(Flow& flow, uint8_t tcpFlags, uint64_t nowNs);

  // Refreshes lastSeenNs and LRU position and counts one packet of `bytes`.
  void touch(Flow& flow, uint32_t bytes, uint64_t nowNs);

  // Removes a live entry (stats().removed). `flow` must come from this table.
  void erase(Flow& flow);

  // Reaps expired entries from the class list tails, looking at no more
  // than `maxWork` entries in total: each one removed costs one unit, and
  // each list stops at its first live entry, which costs one more. Exact:
  // a call that returns fewer than maxWork - kFlowClassCount leaves nothing
  // expired behind. The starting class rotates per call so one class with a
  // long expired run cannot starve the rest. Returns entries removed
  // (stats().expired). Meant for the poll loop every few ms, maxWork ~ 256.
  size_t expire(uint64_t nowNs, size_t maxWork);

  // Calls fn(const Flow&) for every live entry (expired-but-unreaped ones
  // included). O(capacity): tests, metrics on an idle worker, never per
  // packet.
  template <class Fn>
  void forEach(Fn&& fn) const {
    for (size_t i = 0; i < capacity_; ++i) {
      if (entries_[i].flowClass != Flow::kFree) fn(static_cast<const Flow&>(entries_[i]));
    }
  }

  // Resumable sweep removing live entries for which pred(const Flow&) is
  // true -- e.g. "flows of backend id 7" after it left the pool, when the
  // service resets/drops such flows anyway and wants the memory back. Each
  // call looks at up to `maxWork` entry slots from an internal cursor over
  // the entry array (free slots count too: cost is O(maxWork), independent
  // of size) and returns true when the cursor wrapped: the whole array was
  // covered since the sweep started. Entries inserted behind the cursor
  // during a sweep are not visited (they were created after the decision
  // the sweep applies). Start a new sweep (or change predicates) with
  // resetSweep(). A full sweep in one call: maxWork = capacity().
  template <class Pred>
  bool removeIf(Pred&& pred, size_t maxWork) {
    for (size_t n = 0; n < maxWork; ++n) {
      if (sweepCursor_ == capacity_) {
        sweepCursor_ = 0;
        return true;
      }
      Flow& f = entries_[sweepCursor_++];
      if (f.flowClass != Flow::kFree && pred(static_cast<const Flow&>(f))) erase(f);
    }
    if (sweepCursor_ == capacity_) {
      sweepCursor_ = 0;
      return true;
    }
    return false;
  }
  void resetSweep() { sweepCursor_ = 0; }

  FlowTableStats stats() const;
  size_t size() const { return size_; }
  size_t capacity() const { return capacity_; }
  size_t bucketCount() const { return bucketCount_; }
  const FlowTimeouts& timeouts() const { return timeouts_; }

  static constexpr size_t kReapOnInsert = 8;

 private:
  // Hash of a stored entry (what boost would use to rehash; the table never
  // rehashes and always passes the precomputed hash, but it must agree).
  struct FlowHash {
    uint64_t seed = 0;
    size_t operator()(const Flow& f) const;
  };
  struct FlowEqual {
    bool operator()(const Flow& a, const Flow& b) const { return a.key == b.key; }
  };
  static uint64_t bucketHash(uint64_t hash, uint64_t seed);
  using HashSet = boost::intrusive::unordered_set<
      Flow,
      boost::intrusive::member_hook<Flow, flow_detail::HashHook, &Flow::hashHook>,
      boost::intrusive::hash<FlowHash>, boost::intrusive::equal<FlowEqual>,
      boost::intrusive::power_2_buckets<true>, boost::intrusive::store_hash<true>,
      boost::intrusive::compare_hash<true>, boost::intrusive::constant_time_size<false>>;
  using LruList = boost::intrusive::list<
      Flow, boost::intrusive::member_hook<Flow, flow_detail::LruHook, &Flow::lruHook>,
      boost::intrusive::constant_time_size<true>>;
  using FreeList = LruList;  // free entries reuse the LRU hook

  bool isExpired(const Flow& f, uint64_t nowNs) const;
  void moveToClass(Flow& f, FlowClass c);
  void release(Flow& f);  // unlink from hash + class list, back to the free list

  size_t capacity_ = 0;
  size_t bucketCount_ = 0;
  uint64_t seed_ = 0;
  FlowTimeouts timeouts_;
  uint64_t timeoutByClass_[kFlowClassCount] = {};
  // Both arrays come from allocHuge() (2 MiB aligned, transparent huge
  // pages requested: a 1M-entry table spans ~70k 4 KiB pages, far beyond
  // the TLB) and are released with freeHuge() in the destructor.
  Flow* entries_ = nullptr;
  HashSet::bucket_type* buckets_ = nullptr;
  std::unique_ptr<HashSet> set_;  // built over buckets_ (no allocation of its own)
  LruList lru_[kFlowClassCount];
  FreeList free_;
  size_t size_ = 0;
  size_t sweepCursor_ = 0;
  size_t expireNext_ = 0;  // class expire() starts with (rotates per call)
  FlowTableStats stats_;
};

}  // namespace moat::l4
