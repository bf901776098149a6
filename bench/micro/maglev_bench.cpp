// Maglev backend choice for a new flow: ns per pickBackend() (hashFlow over
// the 40-byte FlowKey + one table index + the bounds check), what both L4
// engines run once per new flow; and the control-plane cost of building the
// table when a pool changes.
//
// Table size: kDefaultMaglevTableSize (65537, the product default, 256 KiB:
// fits in L2), plus the largest size the config accepts (1000003, ~4 MiB:
// misses L2) for 1000 backends. Flows are drawn from 64Ki precomputed keys
// spread over client addresses and ports, so slots are hit in random order.
//
//   build/release/bench/moat-micro --benchmark_filter=Maglev
#include <benchmark/benchmark.h>

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "moat/l4/flow_types.h"
#include "moat/l4/maglev.h"
#include "moat/l4/pick.h"
#include "moat/l4/service.h"

using namespace moat::l4;

namespace {

// Backend identities as the control plane spells them ("10.1.x.y:8080").
std::vector<std::string> backendKeys(size_t n) {
  std::vector<std::string> keys;
  keys.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "10.1.%zu.%zu:8080", i / 250, i % 250 + 1);
    keys.emplace_back(buf);
  }
  return keys;
}

std::vector<MaglevBackend> maglevBackends(const std::vector<std::string>& keys) {
  std::vector<MaglevBackend> mb;
  mb.reserve(keys.size());
  for (const auto& k : keys) mb.push_back({k, 1});
  return mb;
}

// A TCP service with `n` equal-weight backends, as control/snapshot.cpp
// builds it (only the fields pickBackend reads matter here).
Service service(size_t n, uint32_t tableSize) {
  Service s;
  s.name = "bench";
  const std::vector<std::string> keys = backendKeys(n);
  for (size_t i = 0; i < n; ++i) {
    Backend b;
    b.id = static_cast<uint32_t>(i);
    b.key = keys[i];
    s.backends.push_back(std::move(b));
  }
  s.maglev = buildMaglevTable(maglevBackends(keys), tableSize);
  return s;
}

// New flows to one VIP:443 from many clients and source ports.
constexpr size_t kFlows = 1u << 16;  // power of two: the index is a mask
std::vector<FlowKey> flows() {
  std::vector<FlowKey> keys(kFlows);
  for (size_t i = 0; i < kFlows; ++i) {
    const uint32_t x = static_cast<uint32_t>(i * 0x9E3779B1u);
    keys[i] = makeFlowKeyV4(0xc6330000u + (x >> 16), 0xcb007101u,
                            static_cast<uint16_t>(1024 + (x & 0xefff)), 443, 6);
  }
  return keys;
}

}  // namespace

// Args: {backends, table size}.
static void BM_MaglevPick(benchmark::State& state) {
  const Service svc =
      service(static_cast<size_t>(state.range(0)), static_cast<uint32_t>(state.range(1)));
  if (svc.maglev.size() != static_cast<size_t>(state.range(1))) {
    state.SkipWithError("maglev table was not built");
    return;
  }
  const std::vector<FlowKey> keys = flows();
  size_t i = 0;
  for (auto _ : state) {
    const Backend* b = pickBackend(svc, keys[i++ & (kFlows - 1)]);
    benchmark::DoNotOptimize(b);
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()));
}
BENCHMARK(BM_MaglevPick)
    ->ArgNames({"backends", "table"})
    ->Args({16, kDefaultMaglevTableSize})
    ->Args({1000, kDefaultMaglevTableSize})
    ->Args({1000, 1000003});

// hashFlow alone, to split the pick into hash and table access.
static void BM_MaglevHashFlow(benchmark::State& state) {
  const std::vector<FlowKey> keys = flows();
  size_t i = 0;
  for (auto _ : state) {
    uint64_t h = hashFlow(keys[i++ & (kFlows - 1)]);
    benchmark::DoNotOptimize(h);
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()));
}
BENCHMARK(BM_MaglevHashFlow);

// Control plane: one table build (permutations + fill + the result vector,
// which is the function's own allocation) for `backends` at the default size.
static void BM_MaglevBuild(benchmark::State& state) {
  const std::vector<std::string> keys = backendKeys(static_cast<size_t>(state.range(0)));
  const std::vector<MaglevBackend> mb = maglevBackends(keys);
  for (auto _ : state) {
    std::vector<uint32_t> table = buildMaglevTable(mb, kDefaultMaglevTableSize);
    benchmark::DoNotOptimize(table.data());
    benchmark::ClobberMemory();
  }
  state.counters["table"] = kDefaultMaglevTableSize;
}
BENCHMARK(BM_MaglevBuild)
    ->ArgName("backends")
    ->Arg(16)
    ->Arg(100)
    ->Arg(1000)
    ->Unit(benchmark::kMicrosecond);
