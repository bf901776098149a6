#include "moat/l4/flow_table.h"

#include <sys/mman.h>

#include <cassert>
#include <cstdlib>
#include <limits>
#include <new>
#include <stdexcept>

namespace moat::l4 {

namespace {

constexpr uint8_t kProtoTcp = 6;
constexpr uint8_t kProtoUdp = 17;

constexpr uint8_t kTcpFin = 0x01;
constexpr uint8_t kTcpSyn = 0x02;
constexpr uint8_t kTcpRst = 0x04;
constexpr uint8_t kTcpAck = 0x10;

FlowClass classify(uint8_t proto, TcpState s) {
  if (proto == kProtoTcp) {
    switch (s) {
      case TcpState::kNone:
      case TcpState::kSynSeen:
        return FlowClass::kTcpSyn;
      case TcpState::kEstablished:
        return FlowClass::kTcpEstablished;
      case TcpState::kClosing:
        return FlowClass::kTcpClosing;
      case TcpState::kClosed:
        return FlowClass::kTcpClosed;
    }
    return FlowClass::kTcpSyn;
  }
  return proto == kProtoUdp ? FlowClass::kUdp : FlowClass::kOther;
}

// The bucket hash handed to boost, standing in for the key during a lookup.
struct PrecomputedHash {
  size_t hash;
  size_t operator()(const FlowKey&) const { return hash; }
};
struct KeyEqual {
  bool operator()(const FlowKey& k, const Flow& f) const { return k == f.key; }
  bool operator()(const Flow& f, const FlowKey& k) const { return k == f.key; }
};

constexpr size_t kHugePage = size_t{2} << 20;

// Start-up only: `bytes` rounded up to whole 2 MiB pages, 2 MiB aligned,
// with transparent huge pages requested (best effort: without THP the
// memory is ordinary pages). Throws std::bad_alloc.
void* allocHuge(size_t bytes) {
  size_t rounded = (bytes + kHugePage - 1) / kHugePage * kHugePage;
  void* p = std::aligned_alloc(kHugePage, rounded);
  if (p == nullptr) throw std::bad_alloc();
#ifdef MADV_HUGEPAGE
  (void)madvise(p, rounded, MADV_HUGEPAGE);
#endif
  return p;
}

}  // namespace

uint64_t FlowTimeouts::forClass(FlowClass c) const {
  switch (c) {
    case FlowClass::kTcpSyn:
      return tcpSynNs;
    case FlowClass::kTcpEstablished:
      return tcpEstablishedNs;
    case FlowClass::kTcpClosing:
      return tcpClosingNs;
    case FlowClass::kTcpClosed:
      return tcpClosedNs;
    case FlowClass::kUdp:
      return udpNs;
    case FlowClass::kOther:
      return otherNs;
  }
  return otherNs;
}

uint64_t FlowTable::bucketHash(uint64_t hash, uint64_t seed) {
  // MurmurHash3 finaliser over the seeded hash: a few multiplies.
  uint64_t k = hash ^ seed;
  k ^= k >> 33;
  k *= 0xff51afd7ed558ccdULL;
  k ^= k >> 33;
  k *= 0xc4ceb9fe1a85ec53ULL;
  k ^= k >> 33;
  return k;
}

size_t FlowTable::FlowHash::operator()(const Flow& f) const {
  return static_cast<size_t>(bucketHash(hashFlow(f.key), seed));
}

FlowTable::FlowTable(size_t capacity, const FlowTimeouts& timeouts, uint64_t seed)
    : capacity_(capacity), seed_(seed), timeouts_(timeouts) {
  static_assert(sizeof(size_t) == 8, "bucket hashes are 64-bit");
  if (capacity == 0) throw std::invalid_argument("flow table: capacity must be > 0");
  if (capacity > (std::numeric_limits<size_t>::max() >> 8) / sizeof(Flow)) {
    throw std::invalid_argument("flow table: capacity too large");
  }
  bucketCount_ = 1;
  while (bucketCount_ < capacity) bucketCount_ <<= 1;
  for (size_t c = 0; c < kFlowClassCount; ++c) {
    timeoutByClass_[c] = timeouts.forClass(static_cast<FlowClass>(c));
  }

  // Constructed in place: every byte written now, so no page fault later
  // on a worker's hot path.
  void* entryMem = allocHuge(capacity * sizeof(Flow));
  void* bucketMem = nullptr;
  try {
    bucketMem = allocHuge(bucketCount_ * sizeof(HashSet::bucket_type));
  } catch (...) {
    std::free(entryMem);
    throw;
  }
  entries_ = static_cast<Flow*>(entryMem);
  buckets_ = static_cast<HashSet::bucket_type*>(bucketMem);
  for (size_t i = 0; i < capacity; ++i) new (&entries_[i]) Flow();
  for (size_t i = 0; i < bucketCount_; ++i) new (&buckets_[i]) HashSet::bucket_type();
  try {
    set_ = std::make_unique<HashSet>(HashSet::bucket_traits(buckets_, bucketCount_),
                                     FlowHash{seed}, FlowEqual{});
  } catch (...) {
    std::free(entryMem);
    std::free(bucketMem);
    throw;
  }
  for (size_t i = 0; i < capacity; ++i) {
    entries_[i].flowClass = Flow::kFree;
    free_.push_back(entries_[i]);
  }
}

FlowTable::~FlowTable() {
  // Hooks are normal_link: nothing to unlink. Flow and bucket destructors
  // do nothing that matters, so the memory is simply released.
  set_.reset();
  for (size_t c = 0; c < kFlowClassCount; ++c) lru_[c].clear();
  free_.clear();
  std::free(entries_);
  std::free(buckets_);
}

bool FlowTable::isExpired(const Flow& f, uint64_t nowNs) const {
  return nowNs >= f.lastSeenNs && nowNs - f.lastSeenNs >= timeoutByClass_[f.flowClass];
}

void FlowTable::moveToClass(Flow& f, FlowClass c) {
  uint8_t to = static_cast<uint8_t>(c);
  LruList& from = lru_[f.flowClass];
  if (to == f.flowClass) {
    from.splice(from.begin(), from, from.iterator_to(f));  // O(1)
    return;
  }
  from.erase(from.iterator_to(f));
  f.flowClass = to;
  lru_[to].push_front(f);
}

void FlowTable::release(Flow& f) {
  assert(f.flowClass != Flow::kFree);
  // erase(iterator) unlinks from the singly linked bucket: it walks that
  // bucket's chain (average < 1 other entry).
  set_->erase(set_->iterator_to(f));
  lru_[f.flowClass].erase(lru_[f.flowClass].iterator_to(f));
  f.flowClass = Flow::kFree;
  free_.push_front(f);
  --size_;
}

Flow* FlowTable::find(const FlowKey& key, uint64_t hash, uint64_t nowNs) {
  auto it = set_->find(key, PrecomputedHash{bucketHash(hash, seed_)}, KeyEqual{});
  if (it == set_->end()) {
    ++stats_.misses;
    return nullptr;
  }
  Flow& f = *it;
  if (isExpired(f, nowNs)) {
    release(f);
    ++stats_.expired;
    ++stats_.misses;
    return nullptr;
  }
  f.lastSeenNs = nowNs;
  LruList& l = lru_[f.flowClass];
  l.splice(l.begin(), l, l.iterator_to(f));
  ++stats_.hits;
  return &f;
}

Flow* FlowTable::insert(const FlowKey& key, uint64_t hash, uint64_t nowNs) {
  const uint64_t bh = bucketHash(hash, seed_);
  HashSet::insert_commit_data commit;
  auto check = set_->insert_unique_check(key, PrecomputedHash{bh}, KeyEqual{}, commit);
  if (!check.second) {
    Flow& old = *check.first;
    if (!isExpired(old, nowNs)) {
      ++stats_.duplicateInserts;
      old.lastSeenNs = nowNs;
      LruList& l = lru_[old.flowClass];
      l.splice(l.begin(), l, l.iterator_to(old));
      return &old;
    }
    release(old);
    ++stats_.expired;
  }
  // The commit data is only the hash (the entry goes to its bucket's head),
  // so it stays valid while other entries are reaped or evicted below.
  commit.hash = bh;

  if (free_.empty()) {
    size_t reaped = 0;
    for (size_t c = 0; c < kFlowClassCount && reaped < kReapOnInsert; ++c) {
      while (reaped < kReapOnInsert && !lru_[c].empty() && isExpired(lru_[c].back(), nowNs)) {
        release(lru_[c].back());
        ++stats_.expired;
        ++reaped;
      }
    }
    if (reaped == 0) {
      // Full of live entries: evict the one closest to its deadline. The
      // table is full and capacity > 0, so some list is non-empty.
      Flow* victim = nullptr;
      uint64_t best = std::numeric_limits<uint64_t>::max();
      for (size_t c = 0; c < kFlowClassCount; ++c) {
        if (lru_[c].empty()) continue;
        Flow& t = lru_[c].back();
        uint64_t deadline = t.lastSeenNs + timeoutByClass_[c];
        if (deadline < t.lastSeenNs) deadline = std::numeric_limits<uint64_t>::max();
        if (victim == nullptr || deadline < best) {
          victim = &t;
          best = deadline;
        }
      }
      release(*victim);
      ++stats_.evicted;
    }
  }

  Flow& f = free_.front();
  free_.pop_front();
  f.key = key;
  f.backendIndex = 0;
  f.backendId = 0;
  f.serviceIndex = 0;
  f.tcpState = key.proto == kProtoTcp ? TcpState::kSynSeen : TcpState::kNone;
  f.flowClass = static_cast<uint8_t>(classify(key.proto, f.tcpState));
  f.lastSeenNs = nowNs;
  f.createdNs = nowNs;
  f.packets = 0;
  f.bytes = 0;
  set_->insert_unique_commit(f, commit);
  lru_[f.flowClass].push_front(f);
  ++size_;
  ++stats_.inserts;
  return &f;
}

void FlowTable::updateTcpState(Flow& f, uint8_t tcpFlags, uint64_t nowNs) {
  assert(f.flowClass != Flow::kFree);
  f.lastSeenNs = nowNs;
  if (f.key.proto != kProtoTcp) {
    moveToClass(f, static_cast<FlowClass>(f.flowClass));
    return;
  }
  TcpState s = f.tcpState;
  const bool syn = (tcpFlags & kTcpSyn) != 0;
  const bool ack = (tcpFlags & kTcpAck) != 0;
  if (tcpFlags & kTcpRst) {
    s = TcpState::kClosed;
  } else if (tcpFlags & kTcpFin) {
    if (s != TcpState::kClosed) s = TcpState::kClosing;
  } else if (syn && !ack) {
    if (s == TcpState::kClosing || s == TcpState::kClosed) s = TcpState::kSynSeen;
  } else if (ack && !syn) {
    if (s == TcpState::kSynSeen || s == TcpState::kNone) s = TcpState::kEstablished;
  }
  f.tcpState = s;
  moveToClass(f, classify(kProtoTcp, s));
}

void FlowTable::touch(Flow& f, uint32_t bytes, uint64_t nowNs) {
  assert(f.flowClass != Flow::kFree);
  f.lastSeenNs = nowNs;
  ++f.packets;
  f.bytes += bytes;
  LruList& l = lru_[f.flowClass];
  l.splice(l.begin(), l, l.iterator_to(f));
}

void FlowTable::erase(Flow& f) {
  release(f);
  ++stats_.removed;
}

size_t FlowTable::expire(uint64_t nowNs, size_t maxWork) {
  size_t work = 0, removed = 0;
  // Start at a rotating class so a long run of expired entries in one
  // class cannot starve the others across calls.
  for (size_t i = 0; i < kFlowClassCount && work < maxWork; ++i) {
    LruList& l = lru_[(expireNext_ + i) % kFlowClassCount];
    while (work < maxWork && !l.empty()) {
      ++work;
      Flow& t = l.back();
      if (!isExpired(t, nowNs)) break;
      release(t);
      ++removed;
    }
  }
  expireNext_ = (expireNext_ + 1) % kFlowClassCount;
  stats_.expired += removed;
  return removed;
}

FlowTableStats FlowTable::stats() const {
  FlowTableStats s = stats_;
  s.size = size_;
  s.capacity = capacity_;
  for (size_t c = 0; c < kFlowClassCount; ++c) s.sizeByClass[c] = lru_[c].size();
  return s;
}

}  // namespace moat::l4
