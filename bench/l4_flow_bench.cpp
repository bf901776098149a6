// Per-lcore L4 flow table cost with 1M entries (one lcore's default
// capacity): ns per lookup of a live flow ("hit"), per lookup of an absent
// flow ("miss"), and per new flow on a full table (lookup miss + insert
// evicting the entry closest to its deadline). Plus the SYN limiter check.
// Single thread: the table belongs to one lcore. Hashing the key included.
//
//   build/release/bench/moat-l4-flow-bench
#include <benchmark/benchmark.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "moat/l4/flow_table.h"
#include "moat/l4/flow_types.h"
#include "moat/l4/syn_limiter.h"

using namespace moat::l4;

namespace {

constexpr size_t kEntries = 1'000'000;
constexpr uint64_t kT0 = 1'000'000'000'000;

FlowKey keyOf(uint64_t i) {
  // Spread over sources and ports like real clients to one VIP.
  return makeFlowKeyV4(0x0a000000u + static_cast<uint32_t>(i >> 12), 0xc0000201u,
                       static_cast<uint16_t>(1024 + (i & 0xfff)), 443, 6);
}

// Keys visited in a scrambled order so lookups miss the CPU caches as they
// would with real traffic over a 1M-flow table.
std::vector<FlowKey> scrambledKeys(size_t n, uint64_t offset) {
  std::vector<FlowKey> keys(n);
  for (size_t i = 0; i < n; ++i) keys[i] = keyOf(offset + (i * 0x9E3779B1u) % n);
  return keys;
}

// A full table of established flows, built once.
FlowTable& fullTable() {
  static std::unique_ptr<FlowTable> t = [] {
    auto table = std::make_unique<FlowTable>(kEntries, FlowTimeouts{}, 0x5eed);
    for (size_t i = 0; i < kEntries; ++i) {
      FlowKey k = keyOf(i);
      Flow* f = table->insert(k, hashFlow(k), kT0);
      f->backendId = static_cast<uint32_t>(i % 64);
      table->updateTcpState(*f, 0x10, kT0);
    }
    return table;
  }();
  return *t;
}

}  // namespace

static void BM_FlowLookupHit(benchmark::State& state) {
  FlowTable& t = fullTable();
  static const std::vector<FlowKey> keys = scrambledKeys(kEntries, 0);
  size_t i = 0;
  uint64_t now = kT0;
  for (auto _ : state) {
    const FlowKey& k = keys[i];
    if (++i == keys.size()) i = 0;
    Flow* f = t.find(k, hashFlow(k), ++now);
    benchmark::DoNotOptimize(f);
  }
  state.counters["bytes_per_entry"] =
      static_cast<double>(sizeof(Flow)) +
      static_cast<double>(t.bucketCount() * sizeof(void*)) / static_cast<double>(t.capacity());
}
BENCHMARK(BM_FlowLookupHit);

static void BM_FlowLookupMiss(benchmark::State& state) {
  FlowTable& t = fullTable();
  static const std::vector<FlowKey> keys = scrambledKeys(kEntries, 1ull << 40);
  size_t i = 0;
  uint64_t now = kT0;
  for (auto _ : state) {
    const FlowKey& k = keys[i];
    if (++i == keys.size()) i = 0;
    benchmark::DoNotOptimize(t.find(k, hashFlow(k), ++now));
  }
}
BENCHMARK(BM_FlowLookupMiss);

// Every iteration is a new flow on a full table: find (miss), insert (one
// live entry evicted), first-packet state update.
static void BM_FlowInsertEvict(benchmark::State& state) {
  FlowTable t(kEntries, FlowTimeouts{}, 0x5eed);
  uint64_t now = kT0;
  uint64_t next = 0;
  for (; next < kEntries; ++next) {
    FlowKey k = keyOf(next);
    t.updateTcpState(*t.insert(k, hashFlow(k), now), 0x10, now);
  }
  for (auto _ : state) {
    FlowKey k = keyOf(next++);
    uint64_t h = hashFlow(k);
    ++now;
    Flow* f = t.find(k, h, now);
    if (f == nullptr) f = t.insert(k, h, now);
    t.updateTcpState(*f, 0x02, now);
    benchmark::DoNotOptimize(f);
  }
  state.counters["evicted"] = static_cast<double>(t.stats().evicted);
}
BENCHMARK(BM_FlowInsertEvict);

// Reaping: the poll loop's expire() over a table whose flows all timed out.
static void BM_FlowExpire256(benchmark::State& state) {
  FlowTable t(kEntries, FlowTimeouts{}, 1);
  uint64_t now = kT0;
  uint64_t next = 0;
  for (auto _ : state) {
    state.PauseTiming();
    while (t.size() < 4096) {
      FlowKey k = keyOf(next++);
      t.insert(k, hashFlow(k), now);  // SYN only: 5 s timeout
    }
    now += 10'000'000'000;
    state.ResumeTiming();
    benchmark::DoNotOptimize(t.expire(now, 256));
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()) * 256);
}
BENCHMARK(BM_FlowExpire256);

static void BM_SynLimiterAllow(benchmark::State& state) {
  SynLimiterConfig c;
  c.ratePerSec = 1'000'000'000;
  c.burst = 1'000'000'000;
  c.capacity = 65536;
  SynLimiter l(c);
  uint8_t addr[16] = {10, 0, 0, 0};
  uint64_t now = kT0;
  uint32_t i = 0;
  for (auto _ : state) {
    ++i;
    addr[2] = static_cast<uint8_t>(i >> 8);
    addr[3] = static_cast<uint8_t>(i);
    benchmark::DoNotOptimize(l.allow(addr, 4, ++now));
  }
}
BENCHMARK(BM_SynLimiterAllow);
