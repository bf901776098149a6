// WAF cost on the real OWASP CRS (Debian's /usr/share/modsecurity-crs with
// /etc/modsecurity/crs/crs-setup.conf, paranoia level 1):
//  - BM_WafGroupScan: ns per PatternSet::scan() of one benign value against
//    one pattern group (one Hyperscan database plus PCRE2 confirmation of
//    prefilter hits), the unit of work the engine does once per (value,
//    transformation chain, group). The value is transformed by the group's
//    chain once, before timing: the scan alone is measured.
//  - BM_WafEvaluateBenignGet: ns per Transaction::evaluate() of a benign
//    browser GET through the whole engine (phases 1 and 2: argument and
//    header parsing, transformations, every group scan, the rule logic).
// Single thread: a worker owns its scratch and its Transaction.
//
// The groups are the engine's own (Engine::patternGroupOf): the database
// holding a given rule's pattern, as a transaction scans it.
//
// Cold start compiles Hyperscan databases (the full CRS: ~10 s on one core).
// They are cached in $MOAT_MICRO_WAF_CACHE, default
// <temp dir>/moat-micro-waf-cache; later runs load them in ~0.1 s.
//
//   build/release/bench/moat-micro --benchmark_filter=Waf
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "moat/waf/engine.h"
#include "moat/waf/patterns.h"
#include "moat/waf/rules.h"
#include "moat/waf/transform.h"

using namespace moat::waf;

namespace {

constexpr const char* kCrsRules = "/usr/share/modsecurity-crs/rules";
constexpr const char* kCrsSetup = "/etc/modsecurity/crs/crs-setup.conf";
constexpr int kParanoia = 1;

// A search box argument (the value of ARGS:q, already URL-decoded): 60 bytes.
constexpr std::string_view kQueryArg =
    "blue trail running shoes for women size 42 waterproof in red";
// A Facebook in-app browser User-Agent: 304 bytes.
constexpr std::string_view kUserAgent =
    "Mozilla/5.0 (Linux; Android 14; SM-S918B Build/UP1A.231005.007; wv) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Version/4.0 Chrome/120.0.6099.144 Mobile Safari/537.36 "
    "[FB_IAB/FB4A;FBAV/444.0.0.31.110;FBBV/535563213;FBDM/{density=2.625,width=1080,height=2340};"
    "FBLC/en_US;FBBD/samsung;FBPN/com.facebook.katana;]";

std::string cacheDir() {
  if (const char* env = std::getenv("MOAT_MICRO_WAF_CACHE"); env != nullptr && *env != '\0') {
    return env;
  }
  std::error_code ec;
  const auto tmp = std::filesystem::temp_directory_path(ec);
  return ((ec ? std::filesystem::path("/tmp") : tmp) / "moat-micro-waf-cache").string();
}

// Empty when the CRS is installed, else why the WAF benchmarks are skipped.
std::string crsMissing() {
  std::error_code ec;
  if (!std::filesystem::is_directory(kCrsRules, ec)) {
    return std::string("OWASP CRS not installed: ") + kCrsRules +
           " is missing (Debian package modsecurity-crs)";
  }
  if (!std::filesystem::is_regular_file(kCrsSetup, ec)) {
    return std::string("OWASP CRS setup missing: ") + kCrsSetup;
  }
  return {};
}

struct LoadedEngine {
  std::shared_ptr<const Engine> engine;
  std::string error;
};

// The full CRS at paranoia 1, as moatd compiles it (appliance.cpp), once.
const LoadedEngine& crsEngine() {
  static const LoadedEngine e = [] {
    LoadedEngine out;
    out.error = crsMissing();
    if (!out.error.empty()) return out;
    EngineOptions opt;
    opt.ruleFiles = {kCrsSetup, kCrsRules};
    opt.preamble = crsPreamble(kParanoia, 0, 0);
    opt.cacheDir = cacheDir();
    std::vector<std::string> errors;
    out.engine = Engine::compile(opt, &errors, nullptr, nullptr);
    if (!out.engine) {
      out.error = "CRS engine does not compile: " + (errors.empty() ? "" : errors[0]);
    }
    return out;
  }();
  return e;
}

struct Group {
  std::shared_ptr<const PatternSet> set;
  std::vector<Transform> chain;
  std::string label;  // "942140: 16 patterns (14 exact, 2 prefilter, ...)"
  std::string error;
};

// The engine's own pattern group holding rule `ruleId`'s first pattern
// link (Engine::patternGroupOf), looked up once per process.
const Group& groupOf(uint32_t ruleId) {
  static std::map<uint32_t, Group> groups;
  auto [it, inserted] = groups.try_emplace(ruleId);
  Group& g = it->second;
  if (!inserted) return g;
  const LoadedEngine& le = crsEngine();
  if (!le.engine) {
    g.error = le.error;
    return g;
  }
  Engine::PatternGroupView view;
  if (!le.engine->patternGroupOf(ruleId, view)) {
    g.error = "CRS has no rule " + std::to_string(ruleId) + " with a pattern operator";
    return g;
  }
  g.set = view.patterns;
  g.chain = view.chain;
  size_t modes[6] = {};
  for (uint32_t id : view.patternIds) {
    const auto m = static_cast<size_t>(g.set->mode(id));
    if (m < 6) ++modes[m];
  }
  g.label = std::to_string(ruleId) + ": " + std::to_string(g.set->size()) + " patterns (" +
            std::to_string(modes[0]) + " exact, " + std::to_string(modes[1]) + " prefilter, " +
            std::to_string(modes[2]) + " pcre, " + std::to_string(modes[3] + modes[4]) +
            " phrase lists)";
  return g;
}

}  // namespace

// One scan of `value` with rule `ruleId`'s group. Counters: patterns in the
// group, hits (0 for these benign values: no PCRE2 confirmation runs).
static void BM_WafGroupScan(benchmark::State& state, uint32_t ruleId, std::string_view value) {
  const Group& g = groupOf(ruleId);
  if (!g.set) {
    state.SkipWithError(g.error.c_str());
    return;
  }
  PatternScratch scratch(*g.set);  // prepared: the scan does not allocate
  TransformScratch ts;
  const std::string transformed(applyTransforms(g.chain, value, nullptr, ts));
  std::vector<uint32_t> hits;
  hits.reserve(g.set->size());
  for (auto _ : state) {
    hits.clear();
    g.set->scan(transformed, scratch, hits);
    benchmark::DoNotOptimize(hits.data());
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()));
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * transformed.size()));
  state.counters["bytes"] = static_cast<double>(transformed.size());
  state.counters["patterns"] = static_cast<double>(g.set->size());
  state.counters["hits"] = static_cast<double>(hits.size());
  if (scratch.scanErrors != 0 || scratch.prepares != 0) {
    state.SkipWithError("scan errors or implicit prepare in the timing loop");
  }
  state.SetLabel(g.label);
}
// SQL injection, PL1, ARGS... under t:urlDecodeUni (942140, 942160, ...).
BENCHMARK_CAPTURE(BM_WafGroupScan, sqli_args_q60, 942140u, kQueryArg);
// XSS, PL1, ARGS... under the six-step decode chain (941190, 941200, ...).
BENCHMARK_CAPTURE(BM_WafGroupScan, xss_args_q60, 941190u, kQueryArg);
// Unix command injection, PL1, ARGS..., no transformation (932100, 932105, ...).
BENCHMARK_CAPTURE(BM_WafGroupScan, rce_args_q60, 932100u, kQueryArg);
// XSS on ARGS + Referer + User-Agent (941120, 941140, 941160, 941170).
BENCHMARK_CAPTURE(BM_WafGroupScan, xss_ua300, 941120u, kUserAgent);
// Scanner User-Agent phrase list (@pmFromFile scanners-user-agents.data).
BENCHMARK_CAPTURE(BM_WafGroupScan, scanner_ua300, 913100u, kUserAgent);
// Java attacks on every header, t:lowercase (944100, 944110, 944120).
BENCHMARK_CAPTURE(BM_WafGroupScan, java_headers_ua300, 944100u, kUserAgent);

// The browser GET of http_parse_bench.cpp, as the proxy hands it to the WAF.
static void BM_WafEvaluateBenignGet(benchmark::State& state) {
  const LoadedEngine& le = crsEngine();
  if (!le.engine) {
    state.SkipWithError(le.error.c_str());
    return;
  }
  RequestView req;
  req.method = "GET";
  req.target = "/products/shoes?color=blue&size=42";
  req.protocol = "HTTP/1.1";
  req.headers = {
      {"Host", "shop.example.com"},
      {"User-Agent", "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0"},
      {"Accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"},
      {"Accept-Language", "en-US,en;q=0.5"},
      {"Accept-Encoding", "gzip, deflate, br"},
      {"Referer", "https://shop.example.com/"},
      {"Connection", "keep-alive"},
      {"Cookie", "session=4f9a1c2e7b; theme=dark"},
      {"Upgrade-Insecure-Requests", "1"},
  };
  req.remoteAddr = "198.51.100.7";
  req.remotePort = 51234;
  req.serverAddr = "203.0.113.10";
  req.serverPort = 443;
  // Wire size of the head, for bytes/s.
  size_t bytes = req.method.size() + 1 + req.target.size() + 1 + req.protocol.size() + 2 + 2;
  for (const auto& [name, value] : req.headers) bytes += name.size() + 2 + value.size() + 2;

  Transaction tx;  // one per worker; first evaluate() grows its buffers
  const Verdict& first = tx.evaluate(*le.engine, req);
  if (first.intervene || first.anomalyScore != 0) {
    state.SkipWithError("the benign GET is not benign to the CRS (anomaly score > 0)");
    return;
  }
  const EngineCounters before = tx.counters();
  for (auto _ : state) {
    const Verdict& v = tx.evaluate(*le.engine, req);
    benchmark::DoNotOptimize(&v);
    benchmark::ClobberMemory();
  }
  const EngineCounters& after = tx.counters();
  const double n = static_cast<double>(after.transactions - before.transactions);
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()));
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * bytes));
  state.counters["bytes"] = static_cast<double>(bytes);
  if (n > 0) {
    state.counters["scans"] = static_cast<double>(after.valuesScanned - before.valuesScanned) / n;
    state.counters["cached"] = static_cast<double>(after.scanCacheHits - before.scanCacheHits) / n;
  }
  state.SetLabel(le.engine->stats().cacheHit ? "CRS PL1, databases from cache"
                                             : "CRS PL1, databases compiled");
}
BENCHMARK(BM_WafEvaluateBenignGet)->Unit(benchmark::kMicrosecond);
