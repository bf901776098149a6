// Geo lookup cost over a full-size country table: ns per GeoDb::lookup() for
// random client addresses, IPv4, IPv4-mapped IPv6 and IPv6, plus the time a
// full reload takes on the control thread.
//
// The table is synthetic but of real size (GeoLite2-Country holds ~300k IPv4
// and ~100k IPv6 networks over ~250 countries): 300k IPv4 and 100k IPv6
// prefixes, lengths spread as in the real data, written as 250 ipdeny-style
// <cc>.zone files in a temporary directory and loaded through GeoLoader.
// Random addresses mostly miss the CPU caches, as a busy listener's clients
// do; the *Hot variants repeat 256 addresses to show the cached cost.
//
//   geo_bench --benchmark_filter=Geo
#include <benchmark/benchmark.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "moat/control/geo.h"

using namespace moat::control;

namespace {

constexpr int kCountries = 250;
constexpr int kV4Prefixes = 300'000;
constexpr int kV6Prefixes = 100'000;
constexpr size_t kAddresses = 1 << 20;  // lookups cycle through these

std::string countryName(int i) {
  return {static_cast<char>('a' + i / 26), static_cast<char>('a' + i % 26)};
}

// Prefix lengths roughly as in GeoLite2-Country: mostly /24../18 for IPv4
// (covering about half the space), /32../48 for IPv6.
int v4Len(std::mt19937_64& rng) {
  int r = static_cast<int>(rng() % 100);
  if (r < 50) return 24;
  if (r < 75) return 23 - static_cast<int>(rng() % 2);
  if (r < 96) return 21 - static_cast<int>(rng() % 4);
  return 17 - static_cast<int>(rng() % 2);
}

int v6Len(std::mt19937_64& rng) {
  int r = static_cast<int>(rng() % 100);
  if (r < 40) return 32;
  if (r < 50) return 29 + static_cast<int>(rng() % 3);
  return 33 + static_cast<int>(rng() % 16);
}

template <class U>
struct Pfx {
  U addr;
  int len;
};

// `count` pairwise disjoint prefixes drawn from gen(), in random order: like
// the real lists, in which no network overlaps another. A candidate that
// overlaps one already kept is dropped.
template <class U, class Gen>
std::vector<Pfx<U>> disjoint(std::mt19937_64& rng, size_t count, Gen gen) {
  std::vector<Pfx<U>> kept;
  auto last = [](const Pfx<U>& p) {
    return static_cast<U>(p.addr | (p.len == 0 ? ~U(0) : ~U(0) >> p.len));
  };
  for (int round = 0; kept.size() < count; ++round) {
    if (round == 50) std::abort();  // the lengths leave no room for `count` prefixes
    std::vector<Pfx<U>> all = kept;
    for (size_t i = 0; i < (count - kept.size()) * 5 / 4 + 16; ++i) all.push_back(gen());
    std::sort(all.begin(), all.end(), [](const Pfx<U>& a, const Pfx<U>& b) {
      return a.addr != b.addr ? a.addr < b.addr : a.len < b.len;
    });
    kept.clear();
    for (const Pfx<U>& p : all) {
      if (!kept.empty() && p.addr <= last(kept.back()))
        continue;  // inside (or equal to) the previous one
      kept.push_back(p);
    }
  }
  std::shuffle(kept.begin(), kept.end(), rng);
  kept.resize(count);
  return kept;
}

struct Fixture {
  std::string dir;
  std::unique_ptr<GeoLoader> loader;
  std::shared_ptr<const GeoDb> db;
  std::vector<std::array<uint8_t, 4>> v4;
  std::vector<std::array<uint8_t, 16>> mapped, v6;
  std::vector<std::array<uint8_t, 16>> v6Prefixes;  // for addresses that hit

  Fixture() {
    char tmpl[] = "/tmp/moat-geo-bench-XXXXXX";
    if (::mkdtemp(tmpl) == nullptr) std::abort();
    dir = tmpl;
    std::mt19937_64 rng(7);
    std::vector<std::string> files(kCountries);
    char buf[64];
    for (auto [a, len] : disjoint<uint32_t>(rng, kV4Prefixes, [&] {
           int len = v4Len(rng);
           uint32_t x = (1u << 24) +
                        static_cast<uint32_t>(rng() % (223u << 24));  // 1.0.0.0 .. 223.255.255.255
           return Pfx<uint32_t>{x & (~0u << (32 - len)), len};
         })) {
      std::snprintf(buf, sizeof buf, "%u.%u.%u.%u/%d\n", a >> 24, (a >> 16) & 255, (a >> 8) & 255,
                    a & 255, len);
      files[rng() % kCountries] += buf;
    }
    for (auto [hi, len] : disjoint<uint64_t>(rng, kV6Prefixes, [&] {
           int len = v6Len(rng);
           uint64_t x = (0x2ull << 60) | (rng() >> 4);  // 2000::/4
           return Pfx<uint64_t>{x & (~0ull << (64 - len)), len};
         })) {
      std::array<uint8_t, 16> b{};
      for (int k = 0; k < 8; ++k) b[k] = static_cast<uint8_t>(hi >> (56 - 8 * k));
      v6Prefixes.push_back(b);
      std::snprintf(buf, sizeof buf, "%x:%x:%x:%x::/%d\n", static_cast<unsigned>(hi >> 48),
                    static_cast<unsigned>((hi >> 32) & 0xffff),
                    static_cast<unsigned>((hi >> 16) & 0xffff), static_cast<unsigned>(hi & 0xffff),
                    len);
      files[rng() % kCountries] += buf;
    }
    for (int i = 0; i < kCountries; ++i) {
      std::ofstream(dir + "/" + countryName(i) + ".zone") << "# synthetic\n" << files[i];
    }
    GeoSourceConfig src;
    src.type = GeoSourceType::kZones;
    src.path = dir;
    loader = std::make_unique<GeoLoader>(std::vector<GeoSourceConfig>{src});
    std::vector<std::string> errors;
    db = loader->reload(&errors);
    if (!errors.empty()) {
      std::fprintf(stderr, "geo_bench: %s\n", errors[0].c_str());
      std::abort();
    }
    for (size_t i = 0; i < kAddresses; ++i) {
      uint32_t a = static_cast<uint32_t>(rng());
      v4.push_back({static_cast<uint8_t>(a >> 24), static_cast<uint8_t>(a >> 16),
                    static_cast<uint8_t>(a >> 8), static_cast<uint8_t>(a)});
      std::array<uint8_t, 16> m{};
      m[10] = m[11] = 0xff;
      std::copy(v4.back().begin(), v4.back().end(), m.begin() + 12);
      mapped.push_back(m);
      // Half inside a listed prefix (random host bits), half anywhere in 2000::/3.
      std::array<uint8_t, 16> b = v6Prefixes[rng() % v6Prefixes.size()];
      uint64_t r1 = rng(), r2 = rng();
      if (i % 2 == 0) {
        for (int k = 6; k < 16; ++k)
          b[k] = static_cast<uint8_t>((k < 8 ? r1 >> (8 * k) : r2 >> (8 * (k - 8))));
      } else {
        for (int k = 0; k < 16; ++k)
          b[k] = static_cast<uint8_t>(k < 8 ? r1 >> (8 * k) : r2 >> (8 * (k - 8)));
        b[0] = static_cast<uint8_t>(0x20 | (b[0] & 0x1f));
      }
      v6.push_back(b);
    }
  }
  ~Fixture() {
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  }
};

Fixture& fixture() {
  static Fixture f;
  return f;
}

void tableCounters(benchmark::State& state, const GeoDb& db, size_t hits, size_t n) {
  state.counters["ranges"] = static_cast<double>(db.entries());
  state.counters["MB"] = static_cast<double>(db.bytes()) / 1e6;
  state.counters["hit%"] = n != 0 ? 100.0 * static_cast<double>(hits) / static_cast<double>(n) : 0;
}

template <size_t N>
void lookupLoop(benchmark::State& state, const std::vector<std::array<uint8_t, N>>& addrs,
                size_t mask) {
  const GeoDb& db = *fixture().db;
  size_t i = 0, hits = 0;
  for (auto _ : state) {
    Country c = db.lookup(addrs[i & mask].data(), N);
    benchmark::DoNotOptimize(c);
    hits += c != 0;
    ++i;
  }
  tableCounters(state, db, hits, i);
}

}  // namespace

static void BM_GeoLookupV4(benchmark::State& state) {
  lookupLoop(state, fixture().v4, kAddresses - 1);
}
BENCHMARK(BM_GeoLookupV4);

static void BM_GeoLookupV4Mapped(benchmark::State& state) {
  lookupLoop(state, fixture().mapped, kAddresses - 1);
}
BENCHMARK(BM_GeoLookupV4Mapped);

static void BM_GeoLookupV6(benchmark::State& state) {
  lookupLoop(state, fixture().v6, kAddresses - 1);
}
BENCHMARK(BM_GeoLookupV6);

static void BM_GeoLookupV4Hot(benchmark::State& state) { lookupLoop(state, fixture().v4, 255); }
BENCHMARK(BM_GeoLookupV4Hot);

static void BM_GeoLookupV6Hot(benchmark::State& state) { lookupLoop(state, fixture().v6, 255); }
BENCHMARK(BM_GeoLookupV6Hot);

// Control thread: re-reading and merging all 250 files (what a change of a
// source costs). Reported in ms.
static void BM_GeoReloadFullTable(benchmark::State& state) {
  Fixture& f = fixture();
  for (auto _ : state) {
    auto db = f.loader->reload(nullptr);
    benchmark::DoNotOptimize(db.get());
  }
  tableCounters(state, *f.db, 0, 0);
}
BENCHMARK(BM_GeoReloadFullTable)->Unit(benchmark::kMillisecond)->Iterations(5);
