#include "moat/l4/flow_table.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <new>
#include <random>
#include <set>
#include <stdexcept>
#include <unordered_map>
#include <utility>
#include <vector>

// Counts plain operator new calls so a test can prove the table does not
// allocate after construction. (One test binary per file: replacing the
// global operator here affects only this binary.)
namespace {
std::atomic<uint64_t> gNewCalls{0};
}  // namespace

void* operator new(size_t n) {
  gNewCalls.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
// GCC cannot see that the new above is malloc and flags the free below.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, size_t) noexcept { std::free(p); }
#pragma GCC diagnostic pop

namespace moat::l4 {
namespace {

constexpr uint64_t kMs = 1'000'000;
constexpr uint64_t kSec = 1'000'000'000;
constexpr uint64_t kT0 = 5000 * kSec;

constexpr uint8_t kFin = 0x01, kSyn = 0x02, kRst = 0x04, kPsh = 0x08, kAck = 0x10;

FlowKey tcpKey(uint32_t i) { return makeFlowKeyV4(0x0a000000 + i, 0xc0000201, 40000 + (i & 0xff), 443, 6); }
FlowKey udpKey(uint32_t i) { return makeFlowKeyV4(0x0a000000 + i, 0xc0000201, 5353, 53, 17); }
FlowKey icmpKey(uint32_t i) { return makeFlowKeyV4(0x0a000000 + i, 0xc0000201, 0, 77, 1); }

FlowTimeouts distinctTimeouts() {
  FlowTimeouts t;
  t.tcpSynNs = 5 * kSec;
  t.tcpEstablishedNs = 300 * kSec;
  t.tcpClosingNs = 10 * kSec;
  t.tcpClosedNs = 2 * kSec;
  t.udpNs = 30 * kSec;
  t.otherNs = 7 * kSec;
  return t;
}

Flow* findKey(FlowTable& t, const FlowKey& k, uint64_t now) { return t.find(k, hashFlow(k), now); }
Flow* insertKey(FlowTable& t, const FlowKey& k, uint64_t now) { return t.insert(k, hashFlow(k), now); }

TEST(FlowTable, InsertFindHitMiss) {
  FlowTable t(16, FlowTimeouts{});
  EXPECT_EQ(t.capacity(), 16u);
  EXPECT_EQ(t.bucketCount(), 16u);
  FlowKey a = tcpKey(1), b = tcpKey(2);
  EXPECT_EQ(findKey(t, a, kT0), nullptr);
  Flow* f = insertKey(t, a, kT0);
  ASSERT_NE(f, nullptr);
  f->backendId = 42;
  f->backendIndex = 3;
  f->serviceIndex = 9;
  Flow* g = findKey(t, a, kT0 + kMs);
  ASSERT_EQ(g, f);
  EXPECT_EQ(g->backendId, 42u);
  EXPECT_EQ(g->lastSeenNs, kT0 + kMs);
  EXPECT_EQ(g->createdNs, kT0);
  EXPECT_EQ(findKey(t, b, kT0), nullptr);
  // The reversed tuple is another flow.
  EXPECT_EQ(findKey(t, a.reversed(), kT0), nullptr);

  FlowTableStats s = t.stats();
  EXPECT_EQ(s.inserts, 1u);
  EXPECT_EQ(s.hits, 1u);
  EXPECT_EQ(s.misses, 3u);
  EXPECT_EQ(s.size, 1u);
  EXPECT_EQ(s.capacity, 16u);
  EXPECT_EQ(s.sizeByClass[static_cast<size_t>(FlowClass::kTcpSyn)], 1u);
}

TEST(FlowTable, NewEntriesStartClean) {
  FlowTable t(4, FlowTimeouts{});
  Flow* f = insertKey(t, tcpKey(1), kT0);
  f->backendId = 7;
  f->packets = 100;
  f->bytes = 1000;
  t.erase(*f);
  Flow* u = insertKey(t, udpKey(1), kT0 + 1);  // reuses the freed entry
  EXPECT_EQ(u->backendId, 0u);
  EXPECT_EQ(u->packets, 0u);
  EXPECT_EQ(u->bytes, 0u);
  EXPECT_EQ(u->tcpState, TcpState::kNone);
  EXPECT_EQ(u->flowClass, static_cast<uint8_t>(FlowClass::kUdp));
  EXPECT_EQ(insertKey(t, tcpKey(2), kT0)->tcpState, TcpState::kSynSeen);
  EXPECT_EQ(insertKey(t, icmpKey(2), kT0)->flowClass, static_cast<uint8_t>(FlowClass::kOther));
  EXPECT_EQ(t.stats().removed, 1u);
}

TEST(FlowTable, BucketCountIsPowerOfTwoAtLeastCapacity) {
  EXPECT_EQ(FlowTable(1, FlowTimeouts{}).bucketCount(), 1u);
  EXPECT_EQ(FlowTable(1000, FlowTimeouts{}).bucketCount(), 1024u);
  EXPECT_EQ(FlowTable(1024, FlowTimeouts{}).bucketCount(), 1024u);
  EXPECT_THROW(FlowTable(0, FlowTimeouts{}), std::invalid_argument);
}

TEST(FlowTable, TouchCountsPackets) {
  FlowTable t(4, FlowTimeouts{});
  Flow* f = insertKey(t, udpKey(1), kT0);
  t.touch(*f, 100, kT0 + 1);
  t.touch(*f, 60, kT0 + 2);
  EXPECT_EQ(f->packets, 2u);
  EXPECT_EQ(f->bytes, 160u);
  EXPECT_EQ(f->lastSeenNs, kT0 + 2);
}

TEST(FlowTable, EvictsLeastRecentlySeenWhenFull) {
  FlowTable t(4, FlowTimeouts{});
  for (uint32_t i = 1; i <= 4; ++i) insertKey(t, udpKey(i), kT0 + i);
  ASSERT_NE(findKey(t, udpKey(1), kT0 + 5), nullptr);  // 1 becomes most recent
  insertKey(t, udpKey(5), kT0 + 6);                    // evicts 2
  EXPECT_EQ(t.stats().evicted, 1u);
  EXPECT_EQ(findKey(t, udpKey(2), kT0 + 7), nullptr);
  insertKey(t, udpKey(6), kT0 + 8);  // evicts 3
  EXPECT_EQ(findKey(t, udpKey(3), kT0 + 9), nullptr);
  for (uint32_t i : {1u, 4u, 5u, 6u}) EXPECT_NE(findKey(t, udpKey(i), kT0 + 10), nullptr) << i;
  EXPECT_EQ(t.size(), 4u);
  EXPECT_EQ(t.stats().evicted, 2u);
  EXPECT_EQ(t.stats().expired, 0u);
}

TEST(FlowTable, EvictionTakesTheEarliestDeadlineAcrossClasses) {
  FlowTable t(2, distinctTimeouts());
  Flow* est = insertKey(t, tcpKey(1), kT0);
  t.updateTcpState(*est, kAck, kT0);           // deadline kT0 + 300 s
  insertKey(t, tcpKey(2), kT0 + 10 * kSec);    // SYN only: deadline kT0 + 15 s
  insertKey(t, tcpKey(3), kT0 + 11 * kSec);    // full: the younger SYN entry goes
  EXPECT_EQ(t.stats().evicted, 1u);
  EXPECT_EQ(findKey(t, tcpKey(2), kT0 + 12 * kSec), nullptr);
  EXPECT_NE(findKey(t, tcpKey(1), kT0 + 12 * kSec), nullptr);
}

TEST(FlowTable, FullTableReapsExpiredBeforeEvicting) {
  FlowTable t(3, distinctTimeouts());
  insertKey(t, udpKey(1), kT0);                     // expires at +30 s
  insertKey(t, tcpKey(2), kT0);                     // SYN: expires at +5 s
  Flow* e = insertKey(t, tcpKey(3), kT0);
  t.updateTcpState(*e, kAck, kT0);
  insertKey(t, udpKey(4), kT0 + 5 * kSec);  // the SYN entry has just expired
  FlowTableStats s = t.stats();
  EXPECT_EQ(s.evicted, 0u);
  EXPECT_EQ(s.expired, 1u);
  EXPECT_NE(findKey(t, udpKey(1), kT0 + 5 * kSec), nullptr);
  EXPECT_NE(findKey(t, tcpKey(3), kT0 + 5 * kSec), nullptr);
}

// Each class expires exactly at lastSeen + its timeout, lazily on find().
TEST(FlowTable, ExpiryPerStateAtExactBoundaries) {
  const FlowTimeouts to = distinctTimeouts();
  struct Case {
    const char* name;
    FlowKey key;
    std::vector<uint8_t> flags;  // applied at insert time
    uint64_t timeout;
  };
  const Case cases[] = {
      {"syn", tcpKey(1), {kSyn}, to.tcpSynNs},
      {"established", tcpKey(2), {kSyn, kAck}, to.tcpEstablishedNs},
      {"closing", tcpKey(3), {kSyn, kAck, kFin | kAck}, to.tcpClosingNs},
      {"closed", tcpKey(4), {kSyn, kAck, kRst}, to.tcpClosedNs},
      {"udp", udpKey(5), {}, to.udpNs},
      {"other", icmpKey(6), {}, to.otherNs},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    FlowTable t(8, to);
    Flow* f = insertKey(t, c.key, kT0);
    for (uint8_t fl : c.flags) t.updateTcpState(*f, fl, kT0);
    // One ns before the deadline: alive, and refreshed by the hit.
    ASSERT_NE(findKey(t, c.key, kT0 + c.timeout - 1), nullptr);
    const uint64_t seen = kT0 + c.timeout - 1;
    ASSERT_NE(findKey(t, c.key, seen + c.timeout - 1), nullptr);
    const uint64_t seen2 = seen + c.timeout - 1;
    EXPECT_EQ(findKey(t, c.key, seen2 + c.timeout), nullptr);  // exactly at the deadline
    FlowTableStats s = t.stats();
    EXPECT_EQ(s.expired, 1u);
    EXPECT_EQ(s.size, 0u);
    EXPECT_EQ(s.misses, 1u);
  }
}

TEST(FlowTable, TcpStateTransitions) {
  struct Step {
    uint8_t flags;
    TcpState expect;
  };
  struct Case {
    const char* name;
    std::vector<Step> steps;
  };
  using S = TcpState;
  const Case cases[] = {
      {"handshake", {{kSyn, S::kSynSeen}, {kAck, S::kEstablished}, {kAck | kPsh, S::kEstablished}}},
      {"syn retransmit", {{kSyn, S::kSynSeen}, {kSyn, S::kSynSeen}}},
      {"mid-flow pickup", {{kAck, S::kEstablished}}},
      {"fin then acks", {{kAck, S::kEstablished}, {kFin | kAck, S::kClosing}, {kAck, S::kClosing}}},
      {"rst from any", {{kSyn, S::kSynSeen}, {kRst, S::kClosed}}},
      {"rst after fin", {{kAck, S::kEstablished}, {kFin, S::kClosing}, {kRst | kAck, S::kClosed}}},
      {"fin after rst", {{kRst, S::kClosed}, {kFin, S::kClosed}, {kAck, S::kClosed}}},
      {"reuse after close", {{kAck, S::kEstablished}, {kRst, S::kClosed}, {kSyn, S::kSynSeen},
                             {kAck, S::kEstablished}}},
      {"reuse after fin", {{kAck, S::kEstablished}, {kFin, S::kClosing}, {kSyn, S::kSynSeen}}},
      {"syn on established", {{kAck, S::kEstablished}, {kSyn, S::kEstablished}}},
      {"syn+ack ignored", {{kSyn, S::kSynSeen}, {kSyn | kAck, S::kSynSeen}}},
      {"no flags", {{kSyn, S::kSynSeen}, {0, S::kSynSeen}}},
  };
  const FlowTimeouts to = distinctTimeouts();
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    FlowTable t(4, to);
    Flow* f = insertKey(t, tcpKey(1), kT0);
    uint64_t now = kT0;
    for (const Step& s : c.steps) {
      now += kMs;
      t.updateTcpState(*f, s.flags, now);
      EXPECT_EQ(f->tcpState, s.expect) << "flags " << int{s.flags};
      EXPECT_EQ(f->lastSeenNs, now);
      FlowTableStats st = t.stats();
      size_t cls = f->flowClass;
      ASSERT_LT(cls, kFlowClassCount);
      EXPECT_EQ(st.sizeByClass[cls], 1u);
    }
  }
}

TEST(FlowTable, StateChangeMovesTheDeadline) {
  FlowTable t(4, distinctTimeouts());
  Flow* f = insertKey(t, tcpKey(1), kT0);
  t.updateTcpState(*f, kAck, kT0 + kSec);  // established: 300 s from now
  EXPECT_NE(findKey(t, tcpKey(1), kT0 + 100 * kSec), nullptr);
  f = findKey(t, tcpKey(1), kT0 + 100 * kSec);
  t.updateTcpState(*f, kFin | kAck, kT0 + 100 * kSec);  // closing: 10 s
  EXPECT_EQ(t.expire(kT0 + 110 * kSec - 1, 100), 0u);
  EXPECT_EQ(t.expire(kT0 + 110 * kSec, 100), 1u);
  EXPECT_EQ(t.size(), 0u);
}

TEST(FlowTable, UdpStateUpdatesOnlyRefresh) {
  FlowTable t(4, distinctTimeouts());
  Flow* f = insertKey(t, udpKey(1), kT0);
  t.updateTcpState(*f, kRst, kT0 + kSec);
  EXPECT_EQ(f->tcpState, TcpState::kNone);
  EXPECT_EQ(f->flowClass, static_cast<uint8_t>(FlowClass::kUdp));
  EXPECT_EQ(f->lastSeenNs, kT0 + kSec);
}

TEST(FlowTable, ExpireIsExactPerClassAndBounded) {
  FlowTable t(64, distinctTimeouts());
  // 10 established (300 s) and 10 UDP (30 s) at kT0, then 10 SYN entries
  // at kT0 .. kT0+9 ms (5 s).
  for (uint32_t i = 10; i < 20; ++i) t.updateTcpState(*insertKey(t, tcpKey(i), kT0), kAck, kT0);
  for (uint32_t i = 0; i < 10; ++i) insertKey(t, udpKey(i), kT0);
  for (uint32_t i = 0; i < 10; ++i) insertKey(t, tcpKey(i), kT0 + i * kMs);
  // An established entry at the tail of its list does not hide SYN ones.
  EXPECT_EQ(t.expire(kT0 + 5 * kSec + 4 * kMs, 1000), 5u);  // SYN 0..4 exactly
  EXPECT_EQ(t.size(), 25u);
  // Bounded: at most maxWork entries looked at.
  EXPECT_LE(t.expire(kT0 + 31 * kSec, 3), 3u);
  size_t total = 0;
  for (int i = 0; i < 100 && t.size() > 10; ++i) total += t.expire(kT0 + 31 * kSec, 3);
  EXPECT_EQ(t.size(), 10u);  // only the established ones remain
  EXPECT_EQ(t.stats().expired, 20u);
  EXPECT_EQ(t.expire(kT0 + 31 * kSec, 1000), 0u);
  EXPECT_EQ(t.stats().sizeByClass[static_cast<size_t>(FlowClass::kTcpEstablished)], 10u);
  EXPECT_EQ(t.expire(kT0 + 300 * kSec, 1000), 10u);
  EXPECT_EQ(t.size(), 0u);
}

TEST(FlowTable, ExpireRotatesSoNoClassStarves) {
  FlowTable t(64, distinctTimeouts());
  for (uint32_t i = 0; i < 20; ++i) insertKey(t, tcpKey(i), kT0);  // SYN class (first)
  insertKey(t, udpKey(1), kT0);                                    // UDP class
  // With maxWork 1 per call the UDP entry goes within kFlowClassCount calls
  // even though 20 expired SYN entries come first.
  for (size_t i = 0; i < kFlowClassCount; ++i) t.expire(kT0 + 60 * kSec, 1);
  EXPECT_EQ(t.stats().sizeByClass[static_cast<size_t>(FlowClass::kUdp)], 0u);
}

TEST(FlowTable, RemoveIfIsResumableAndBounded) {
  FlowTable t(100, FlowTimeouts{});
  for (uint32_t i = 0; i < 60; ++i) insertKey(t, tcpKey(i), kT0)->backendId = i % 3;
  auto ofBackend1 = [](const Flow& f) { return f.backendId == 1; };
  EXPECT_FALSE(t.removeIf(ofBackend1, 30));  // 30 of 100 slots looked at
  size_t afterFirst = t.size();
  EXPECT_LT(afterFirst, 60u);
  EXPECT_GT(afterFirst, 40u);
  EXPECT_FALSE(t.removeIf(ofBackend1, 30));
  EXPECT_FALSE(t.removeIf(ofBackend1, 30));
  EXPECT_TRUE(t.removeIf(ofBackend1, 30));  // cursor reached the end: sweep complete
  EXPECT_EQ(t.size(), 40u);
  EXPECT_EQ(t.stats().removed, 20u);
  size_t left1 = 0;
  t.forEach([&](const Flow& f) { left1 += f.backendId == 1; });
  EXPECT_EQ(left1, 0u);
  // Full sweep in one call.
  EXPECT_TRUE(t.removeIf([](const Flow& f) { return f.backendId == 2; }, t.capacity()));
  EXPECT_EQ(t.size(), 20u);
  // resetSweep restarts from the beginning.
  EXPECT_FALSE(t.removeIf([](const Flow&) { return false; }, 10));
  t.resetSweep();
  EXPECT_TRUE(t.removeIf([](const Flow&) { return true; }, 1000));
  EXPECT_EQ(t.size(), 0u);
}

TEST(FlowTable, DuplicateInsertReturnsTheLiveEntry) {
  FlowTable t(4, distinctTimeouts());
  Flow* f = insertKey(t, udpKey(1), kT0);
  f->backendId = 5;
  Flow* g = insertKey(t, udpKey(1), kT0 + kSec);
  EXPECT_EQ(g, f);
  EXPECT_EQ(g->backendId, 5u);
  EXPECT_EQ(t.stats().duplicateInserts, 1u);
  EXPECT_EQ(t.size(), 1u);
  // An expired duplicate is replaced by a fresh entry.
  Flow* h = insertKey(t, udpKey(1), kT0 + 100 * kSec);
  EXPECT_EQ(h->backendId, 0u);
  EXPECT_EQ(h->createdNs, kT0 + 100 * kSec);
  EXPECT_EQ(t.size(), 1u);
  EXPECT_EQ(t.stats().expired, 1u);
}

TEST(FlowTable, ForEachSeesLiveEntries) {
  FlowTable t(16, FlowTimeouts{});
  for (uint32_t i = 0; i < 5; ++i) insertKey(t, udpKey(i), kT0);
  t.erase(*findKey(t, udpKey(2), kT0));
  std::set<uint32_t> seen;
  t.forEach([&](const Flow& f) { seen.insert(f.key.src[3]); });
  EXPECT_EQ(seen, (std::set<uint32_t>{0, 1, 3, 4}));
}

TEST(FlowTable, CollidingBucketsStillResolveByKey) {
  FlowTable big(8, FlowTimeouts{}, 12345);  // a non-zero seed
  for (uint32_t i = 0; i < 8; ++i) insertKey(big, tcpKey(i), kT0)->backendId = 100 + i;
  for (uint32_t i = 0; i < 8; ++i) {
    Flow* f = findKey(big, tcpKey(i), kT0 + 1);
    ASSERT_NE(f, nullptr);
    EXPECT_EQ(f->backendId, 100 + i);
  }
  // Same 64-bit hash passed for two keys (a forced collision): still apart.
  FlowTable c(4, FlowTimeouts{});
  c.insert(tcpKey(1), 77, kT0)->backendId = 1;
  c.insert(tcpKey(2), 77, kT0)->backendId = 2;
  EXPECT_EQ(c.find(tcpKey(1), 77, kT0)->backendId, 1u);
  EXPECT_EQ(c.find(tcpKey(2), 77, kT0)->backendId, 2u);
  c.erase(*c.find(tcpKey(1), 77, kT0));
  EXPECT_EQ(c.find(tcpKey(1), 77, kT0), nullptr);
  EXPECT_EQ(c.find(tcpKey(2), 77, kT0)->backendId, 2u);
  FlowTable t(1, FlowTimeouts{});  // capacity 1, one bucket
  insertKey(t, tcpKey(1), kT0);
  insertKey(t, tcpKey(2), kT0);  // evicts
  EXPECT_EQ(findKey(t, tcpKey(1), kT0), nullptr);
  EXPECT_NE(findKey(t, tcpKey(2), kT0), nullptr);
}

TEST(FlowTable, NoAllocationAfterConstruction) {
  uint64_t atStart = gNewCalls.load();
  FlowTable t(4096, distinctTimeouts());
  ASSERT_GT(gNewCalls.load(), atStart);  // the hook works: construction allocates
  std::mt19937_64 rng(7);
  uint64_t now = kT0;
  uint64_t before = gNewCalls.load();
  for (int i = 0; i < 50'000; ++i) {
    now += rng() % (50 * kMs);
    FlowKey k = tcpKey(static_cast<uint32_t>(rng() % 8192));
    Flow* f = findKey(t, k, now);
    if (f == nullptr) f = insertKey(t, k, now);
    t.updateTcpState(*f, (rng() & 1) ? kAck : kSyn, now);
    t.touch(*f, 64, now);
    if (i % 100 == 0) t.expire(now, 64);
    if (i % 1000 == 0) t.removeIf([](const Flow& x) { return x.backendId == 1; }, 256);
  }
  EXPECT_EQ(gNewCalls.load(), before);
  EXPECT_GT(t.stats().evicted + t.stats().expired, 0u);
}

// Reference model of the whole policy (expiry, per-class LRU, reaping and
// earliest-deadline eviction, rotation in expire()) over small key ids.
class Model {
 public:
  Model(size_t cap, const FlowTimeouts& to) : cap_(cap) {
    for (size_t c = 0; c < kFlowClassCount; ++c) timeout_[c] = to.forClass(static_cast<FlowClass>(c));
  }
  struct E {
    uint64_t lastSeen, seq;
    size_t cls;
    TcpState st;
    uint32_t backend;
  };
  std::unordered_map<uint32_t, E> m;
  uint64_t evicted = 0, expired = 0;

  bool expiredAt(const E& e, uint64_t now) const { return now - e.lastSeen >= timeout_[e.cls]; }
  void touchE(uint32_t id, E& e, uint64_t now) {
    lru_[e.cls].erase({e.seq, id});
    e.lastSeen = now;
    e.seq = ++seq_;
    lru_[e.cls].insert({e.seq, id});
  }
  void setClass(uint32_t id, E& e, size_t cls) {
    lru_[e.cls].erase({e.seq, id});
    e.cls = cls;
    lru_[e.cls].insert({e.seq, id});
  }
  void remove(uint32_t id) {
    E& e = m.at(id);
    lru_[e.cls].erase({e.seq, id});
    m.erase(id);
  }
  // Returns the backend or -1.
  int64_t find(uint32_t id, uint64_t now) {
    auto it = m.find(id);
    if (it == m.end()) return -1;
    if (expiredAt(it->second, now)) {
      remove(id);
      ++expired;
      return -1;
    }
    touchE(id, it->second, now);
    return it->second.backend;
  }
  void insert(uint32_t id, bool tcp, bool udp, uint32_t backend, uint64_t now) {
    if (m.size() == cap_) {
      size_t reaped = 0;
      for (size_t c = 0; c < kFlowClassCount && reaped < FlowTable::kReapOnInsert; ++c) {
        while (reaped < FlowTable::kReapOnInsert && !lru_[c].empty() &&
               expiredAt(m.at(lru_[c].begin()->second), now)) {
          remove(lru_[c].begin()->second);
          ++expired;
          ++reaped;
        }
      }
      if (reaped == 0) {
        int64_t victim = -1;
        uint64_t best = 0;
        for (size_t c = 0; c < kFlowClassCount; ++c) {
          if (lru_[c].empty()) continue;
          uint32_t vid = lru_[c].begin()->second;
          uint64_t d = m.at(vid).lastSeen + timeout_[c];
          if (victim < 0 || d < best) {
            victim = vid;
            best = d;
          }
        }
        remove(static_cast<uint32_t>(victim));
        ++evicted;
      }
    }
    E e{now, ++seq_, 0, tcp ? TcpState::kSynSeen : TcpState::kNone, backend};
    e.cls = static_cast<size_t>(tcp ? FlowClass::kTcpSyn : udp ? FlowClass::kUdp : FlowClass::kOther);
    m[id] = e;
    lru_[e.cls].insert({e.seq, id});
  }
  void setState(uint32_t id, TcpState st) {
    E& e = m.at(id);
    e.st = st;
    size_t cls = e.cls;
    switch (st) {
      case TcpState::kNone:
      case TcpState::kSynSeen: cls = static_cast<size_t>(FlowClass::kTcpSyn); break;
      case TcpState::kEstablished: cls = static_cast<size_t>(FlowClass::kTcpEstablished); break;
      case TcpState::kClosing: cls = static_cast<size_t>(FlowClass::kTcpClosing); break;
      case TcpState::kClosed: cls = static_cast<size_t>(FlowClass::kTcpClosed); break;
    }
    setClass(id, e, cls);
  }
  size_t expire(uint64_t now, size_t maxWork) {
    size_t work = 0, removed = 0;
    for (size_t i = 0; i < kFlowClassCount && work < maxWork; ++i) {
      auto& l = lru_[(next_ + i) % kFlowClassCount];
      while (work < maxWork && !l.empty()) {
        ++work;
        uint32_t id = l.begin()->second;
        if (!expiredAt(m.at(id), now)) break;
        remove(id);
        ++removed;
      }
    }
    next_ = (next_ + 1) % kFlowClassCount;
    expired += removed;
    return removed;
  }

 private:
  size_t cap_;
  uint64_t timeout_[kFlowClassCount] = {};
  uint64_t seq_ = 0;
  size_t next_ = 0;
  std::set<std::pair<uint64_t, uint32_t>> lru_[kFlowClassCount];  // oldest first
};

// Keys for a model id: a mix of TCP, UDP and ICMP.
FlowKey keyFor(uint32_t id) {
  switch (id % 5) {
    case 0:
    case 1:
    case 2: return tcpKey(id);
    case 3: return udpKey(id);
    default: return icmpKey(id);
  }
}

FlowTableStats runDifferential(size_t capacity, uint32_t keySpace, int ops, uint64_t seed,
                               uint64_t maxStepNs) {
  FlowTimeouts to = distinctTimeouts();
  FlowTable t(capacity, to, seed);
  Model model(capacity, to);
  std::mt19937_64 rng(seed);
  uint64_t now = kT0;
  const uint8_t flagChoices[] = {kSyn, kAck, kAck | kPsh, kFin | kAck, kRst, kSyn | kAck, 0};
  for (int op = 0; op < ops; ++op) {
    now += rng() % maxStepNs;
    uint32_t id = static_cast<uint32_t>(rng() % keySpace);
    FlowKey k = keyFor(id);
    uint64_t r = rng() % 100;
    if (r < 85) {  // a packet: find, else insert; then a state update
      Flow* f = findKey(t, k, now);
      int64_t want = model.find(id, now);
      EXPECT_EQ(f != nullptr, want >= 0) << "op " << op << " id " << id;
      if ((f != nullptr) != (want >= 0)) return t.stats();
      if (f == nullptr) {
        uint32_t backend = static_cast<uint32_t>(rng() % 1000);
        f = insertKey(t, k, now);
        f->backendId = backend;
        model.insert(id, k.proto == 6, k.proto == 17, backend, now);
      } else {
        EXPECT_EQ(f->backendId, static_cast<uint64_t>(want)) << "op " << op;
      }
      uint8_t fl = flagChoices[rng() % std::size(flagChoices)];
      t.updateTcpState(*f, fl, now);
      model.touchE(id, model.m.at(id), now);
      if (k.proto == 6) model.setState(id, f->tcpState);
    } else if (r < 92) {  // connection ends by our decision
      Flow* f = findKey(t, k, now);
      int64_t want = model.find(id, now);
      EXPECT_EQ(f != nullptr, want >= 0) << "op " << op;
      if ((f != nullptr) != (want >= 0)) return t.stats();
      if (f != nullptr) {
        t.erase(*f);
        model.remove(id);
      }
    } else {
      size_t work = static_cast<size_t>(rng() % 16);
      EXPECT_EQ(t.expire(now, work), model.expire(now, work)) << "op " << op;
    }
    EXPECT_EQ(t.size(), model.m.size()) << "op " << op;
    if (t.size() != model.m.size()) return t.stats();
  }
  FlowTableStats s = t.stats();
  EXPECT_EQ(s.evicted, model.evicted);
  EXPECT_EQ(s.expired, model.expired);
  EXPECT_EQ(s.duplicateInserts, 0u);
  size_t live = 0;
  t.forEach([&](const Flow& f) {
    ++live;
    (void)f;
  });
  EXPECT_EQ(live, model.m.size());
  return s;
}

// Small table, heavy churn: eviction, reaping and expiry all exercised.
TEST(FlowTable, DifferentialAgainstModelUnderPressure) {
  // Mostly eviction (entries touched every ~6 s).
  FlowTableStats a = runDifferential(64, 256, 100'000, 1, 200 * kMs);
  EXPECT_GT(a.evicted, 1000u);
  // Mostly expiry and reaping on insert (entries touched every ~100 s).
  FlowTableStats b = runDifferential(200, 300, 100'000, 2, 700 * kMs);
  EXPECT_GT(b.expired, 1000u);
  // Both.
  FlowTableStats c = runDifferential(100, 150, 100'000, 4, 100 * kMs);
  EXPECT_GT(c.evicted, 1000u);
  EXPECT_GT(c.expired, 1000u);
}

// 1M entries as on a real lcore, random keys, ~200k ops without
// eviction: lookups, expiry and state against the model.
TEST(FlowTable, MillionEntrySmokeAgainstModel) {
  FlowTableStats s = runDifferential(1'000'000, 150'000, 200'000, 3, 2 * kMs);
  EXPECT_EQ(s.evicted, 0u);
  EXPECT_GT(s.expired, 10'000u);
  EXPECT_GT(s.hits, 10'000u);
}

}  // namespace
}  // namespace moat::l4
