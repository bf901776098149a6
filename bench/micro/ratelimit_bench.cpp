// Rate-limit admission cost: ns per check with the key already tracked
// ("hit"), with a new key that must be inserted, evicting ("miss"), and the
// full rule evaluation a worker runs per request; 1 and 2 threads.
//
//   build/release/bench/moat-micro --benchmark_filter=RateLimit
#include <benchmark/benchmark.h>

#include <atomic>
#include <cstring>
#include <memory>
#include <vector>

#include "moat/ratelimit/limiter.h"
#include "moat/ratelimit/rules.h"

using namespace moat::ratelimit;

namespace {

constexpr uint64_t kSec = 1'000'000'000;

Policy generous() {
  Policy p;  // never runs out during a benchmark: every check is an admission
  p.limit = 1'000'000'000;
  p.burst = 1'000'000'000;
  p.periodNs = 300 * kSec;
  return p;
}

KeyHash keyOf(uint64_t i) {
  return hashKey(7, std::string_view(reinterpret_cast<const char*>(&i), sizeof i));
}

// One table shared by the benchmark's threads, as by moatd's workers.
Table& sharedTable() {
  static Table t(1'000'000);
  return t;
}

uint64_t clockNs(uint64_t i) { return kSec + i; }

}  // namespace

// Each thread hammers its own tracked key (the common case: clients are
// many, each in its own set). Hashing the key is included.
static void BM_RateLimitCheckHit(benchmark::State& state) {
  Table& t = sharedTable();
  Policy p = generous();
  uint64_t id = 1000 + static_cast<uint64_t>(state.thread_index());
  uint64_t n = 0;
  for (auto _ : state) {
    KeyHash k = keyOf(id);
    benchmark::DoNotOptimize(t.check(k, p, clockNs(++n)));
  }
  state.counters["bytes_per_key"] = benchmark::Counter(
      static_cast<double>(t.bytes()) / static_cast<double>(t.capacity()),
      benchmark::Counter::kAvgThreads);
}
BENCHMARK(BM_RateLimitCheckHit)->Threads(1)->Threads(2)->UseRealTime();

// Every thread on the same key: the worst case, one client's connections
// spread over workers all contending for one set lock.
static void BM_RateLimitCheckHitSameKey(benchmark::State& state) {
  Table& t = sharedTable();
  Policy p = generous();
  uint64_t n = 0;
  for (auto _ : state) benchmark::DoNotOptimize(t.check(keyOf(1), p, clockNs(++n)));
}
BENCHMARK(BM_RateLimitCheckHitSameKey)->Threads(1)->Threads(2)->UseRealTime();

// Tracked keys drawn from 500k clients: cache misses dominate, as in
// production with many clients.
static void BM_RateLimitCheckHitManyClients(benchmark::State& state) {
  Table& t = sharedTable();
  Policy p = generous();
  static std::atomic<bool> filled{false};
  if (state.thread_index() == 0 && !filled.exchange(true)) {
    for (uint64_t i = 0; i < 500'000; ++i) t.check(keyOf(1'000'000 + i), p, kSec);
  }
  uint64_t x = 0x9e3779b97f4a7c15ull * (static_cast<uint64_t>(state.thread_index()) + 1);
  uint64_t n = 0;
  for (auto _ : state) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    benchmark::DoNotOptimize(t.check(keyOf(1'000'000 + x % 500'000), p, clockNs(++n)));
  }
}
BENCHMARK(BM_RateLimitCheckHitManyClients)->Threads(1)->Threads(2)->UseRealTime();

// A never-seen key each time: insert, evicting an idle entry once the table
// is full (it fills within the first million iterations).
static void BM_RateLimitCheckMiss(benchmark::State& state) {
  static Table t(1'000'000);
  Policy p;
  p.limit = 2000;
  p.burst = 2000;
  p.periodNs = 300 * kSec;
  static std::atomic<uint64_t> next{1ull << 40};
  uint64_t n = 0;
  for (auto _ : state) {
    uint64_t id = next.fetch_add(1, std::memory_order_relaxed);
    benchmark::DoNotOptimize(t.check(keyOf(id), p, kSec * 1000 + (++n)));
  }
}
BENCHMARK(BM_RateLimitCheckMiss)->Threads(1)->Threads(2)->UseRealTime();

// What a worker runs per request with the default rule: scope tests, the
// client key (masked address), the check, the verdict.
static void BM_RateLimitEvaluateDefaultRule(benchmark::State& state) {
  static Rules rules = [] {
    Rules r;
    r.enabled = true;
    Rule rule;
    rule.name = "default";
    rule.policy = generous();
    rule.seed = 99;
    r.rules.push_back(rule);
    return r;
  }();
  Table& t = sharedTable();
  RequestInfo ri;
  ri.path = "/index.html";
  ri.host = "example.com";
  moat::l4::IpAddress::parse(state.thread_index() == 0 ? "198.51.100.7" : "198.51.100.8", ri.client);
  uint64_t n = 0;
  for (auto _ : state) benchmark::DoNotOptimize(evaluate(rules, t, ri, clockNs(++n)));
}
BENCHMARK(BM_RateLimitEvaluateDefaultRule)->Threads(1)->Threads(2)->UseRealTime();
