// moat-waf: the WAF engine offline, for rule authors and CI.
//
//   moat-waf --rules DIR --setup FILE --paranoia N REQUEST_FILE...
//
// Reads raw HTTP/1.x requests from files and prints one JSON line per file:
// {"file":..., "rules":[ids], "score":N, "verdict":"pass"|"block"|"detect",
//  "status":N, "us":median, "us_p99":p99}. The request reader is lenient on
// purpose (it must evaluate the malformed requests that rule tests send);
// moatd's own parser is strict and would refuse some of them first.
// Exit code: 0, or 2 for bad usage / rules that do not load (errors on stderr).
#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "moat/waf/engine.h"

namespace {

struct RawRequest {
  std::string method, target, protocol;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
};

bool ieq(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(a[i])) !=
        std::tolower(static_cast<unsigned char>(b[i]))) {
      return false;
    }
  }
  return true;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r')) s.remove_suffix(1);
  return s;
}

// Lenient HTTP/1.x request reader: request line split at the first and last
// space, "Name: value" header lines (LF or CRLF), body by Transfer-Encoding
// chunked, else Content-Length, else the rest of the file.
RawRequest parseRaw(const std::string& data) {
  RawRequest r;
  size_t headEnd = data.find("\r\n\r\n");
  size_t bodyStart;
  if (headEnd != std::string::npos) {
    bodyStart = headEnd + 4;
  } else if ((headEnd = data.find("\n\n")) != std::string::npos) {
    bodyStart = headEnd + 2;
  } else {
    headEnd = data.size();
    bodyStart = data.size();
  }
  std::string_view head(data.data(), headEnd);
  size_t lineEnd = head.find('\n');
  std::string_view line = trim(head.substr(0, lineEnd));
  const size_t sp1 = line.find(' ');
  const size_t sp2 = line.rfind(' ');
  if (sp1 == std::string_view::npos) {
    r.method = line;
  } else if (sp2 == sp1) {
    r.method = line.substr(0, sp1);
    r.target = line.substr(sp1 + 1);
    r.protocol = "HTTP/0.9";
  } else {
    r.method = line.substr(0, sp1);
    r.target = trim(line.substr(sp1 + 1, sp2 - sp1 - 1));
    r.protocol = line.substr(sp2 + 1);
  }
  size_t p = lineEnd == std::string_view::npos ? head.size() : lineEnd + 1;
  while (p < head.size()) {
    size_t e = head.find('\n', p);
    if (e == std::string_view::npos) e = head.size();
    std::string_view l = head.substr(p, e - p);
    if (!l.empty() && l.back() == '\r') l.remove_suffix(1);
    p = e + 1;
    if (l.empty()) continue;
    if ((l.front() == ' ' || l.front() == '\t') && !r.headers.empty()) {
      r.headers.back().second += " ";
      r.headers.back().second += trim(l);
      continue;
    }
    const size_t colon = l.find(':');
    if (colon == std::string_view::npos) {
      r.headers.emplace_back(std::string(trim(l)), "");
    } else {
      r.headers.emplace_back(std::string(trim(l.substr(0, colon))),
                             std::string(trim(l.substr(colon + 1))));
    }
  }
  std::string_view rest(data.data() + std::min(bodyStart, data.size()),
                        data.size() - std::min(bodyStart, data.size()));
  bool chunked = false;
  long long length = -1;
  for (const auto& [k, v] : r.headers) {
    if (ieq(k, "Transfer-Encoding") && v.find("chunked") != std::string::npos) chunked = true;
    if (ieq(k, "Content-Length")) length = std::atoll(v.c_str());
  }
  if (chunked) {
    // Transfer-Encoding overrides Content-Length, and a server in front must
    // drop Content-Length before passing the request on (RFC 9112 6.1/6.3):
    // the WAF sees what that server forwards. (moatd refuses such a request
    // outright as a smuggling attempt.)
    std::erase_if(r.headers, [](const auto& h) { return ieq(h.first, "Content-Length"); });
    size_t q = 0;
    while (q < rest.size()) {
      size_t e = rest.find('\n', q);
      if (e == std::string_view::npos) break;
      const unsigned long n = std::strtoul(std::string(rest.substr(q, e - q)).c_str(), nullptr, 16);
      q = e + 1;
      if (n == 0) break;
      r.body.append(rest.substr(q, std::min<size_t>(n, rest.size() - q)));
      q += n;
      if (q < rest.size() && rest[q] == '\r') ++q;
      if (q < rest.size() && rest[q] == '\n') ++q;
    }
  } else if (length >= 0) {
    r.body = rest.substr(0, std::min<size_t>(static_cast<size_t>(length), rest.size()));
  } else {
    r.body = rest;
  }
  return r;
}

std::string readFile(const std::string& path, bool* ok) {
  std::ifstream in(path, std::ios::binary);
  *ok = in.is_open();
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"moat-waf: evaluate raw HTTP requests against a ModSecurity rule set"};
  std::vector<std::string> rules;
  std::string setup = "/etc/modsecurity/crs/crs-setup.conf";
  int paranoia = 1;
  std::string mode = "On";
  bool crsTestMode = false;
  int repeat = 1;
  std::string cacheDir;
  std::string unicodeMap;
  bool showMatches = false;
  std::vector<std::string> files;
  app.add_option("--rules", rules, "rule directory or file (repeatable), loaded after --setup")
      ->required();
  app.add_option("--setup", setup, "setup file loaded first (crs-setup.conf); '' for none");
  app.add_option("--paranoia", paranoia, "CRS paranoia level 1-4")->check(CLI::Range(1, 4));
  app.add_option("--mode", mode, "On | DetectionOnly")->check(CLI::IsMember({"On", "DetectionOnly"}));
  app.add_flag("--crs-test-mode", crsTestMode,
               "as the CRS project runs its tests: detection-only, thresholds 5/4, "
               "tx.combined_file_sizes=65535");
  app.add_option("--repeat", repeat, "evaluate each request N times; report median and p99")
      ->check(CLI::Range(1, 1000000));
  app.add_option("--cache", cacheDir, "directory for compiled Hyperscan databases");
  app.add_option("--unicode-map", unicodeMap, "unicode.mapping for t:urlDecodeUni (code page 20127)");
  app.add_flag("--matches", showMatches, "add each matched rule's msg, data and variable");
  app.add_option("requests", files, "raw HTTP request files");
  CLI11_PARSE(app, argc, argv);

  moat::waf::EngineOptions opt;
  if (!setup.empty()) opt.ruleFiles.push_back(setup);
  opt.ruleFiles.insert(opt.ruleFiles.end(), rules.begin(), rules.end());
  opt.preamble = moat::waf::crsPreamble(paranoia, crsTestMode ? 5 : 0, crsTestMode ? 4 : 0);
  if (crsTestMode) {
    opt.preamble +=
        "SecAction \"id:900130,phase:1,nolog,pass,t:none,setvar:tx.combined_file_sizes=65535\"\n";
    opt.mode = moat::waf::EngineMode::kDetectionOnly;
  } else {
    opt.mode = mode == "On" ? moat::waf::EngineMode::kOn : moat::waf::EngineMode::kDetectionOnly;
  }
  opt.cacheDir = cacheDir;
  opt.unicodeMapPath = unicodeMap;
  std::vector<std::string> errors, warnings;
  moat::waf::CompileStats stats;
  auto engine = moat::waf::Engine::compile(opt, &errors, &warnings, &stats);
  if (!engine) {
    for (const auto& e : errors) std::fprintf(stderr, "moat-waf: %s\n", e.c_str());
    return 2;
  }
  std::fprintf(stderr,
               "moat-waf: %zu rules, %zu pattern links in %zu groups (%zu exact, %zu prefilter, "
               "%zu pcre-only), %zu pure-prefix and %zu folded rules, load %.1f ms, compile %.1f ms%s\n",
               stats.rules, stats.patternLinks, stats.patternGroups, stats.hsExact,
               stats.hsPrefilter, stats.pcreOnly, stats.purePrefixRules, stats.foldedRules, stats.loadMs,
               stats.compileMs, stats.cacheHit ? " (cache hit)" : "");

  moat::waf::Transaction tx;
  std::vector<double> times;
  int rc = 0;
  for (const auto& f : files) {
    bool ok = false;
    const std::string data = readFile(f, &ok);
    if (!ok) {
      std::fprintf(stderr, "moat-waf: cannot read %s\n", f.c_str());
      rc = 2;
      continue;
    }
    const RawRequest raw = parseRaw(data);
    moat::waf::RequestView view;
    view.method = raw.method;
    view.target = raw.target;
    view.protocol = raw.protocol;
    for (const auto& [k, v] : raw.headers) view.headers.emplace_back(k, v);
    view.body = raw.body;
    view.remotePort = 40000;
    view.requestId = f;
    times.clear();
    const moat::waf::Verdict* verdict = nullptr;
    moat::waf::EngineCounters before{};
    for (int i = 0; i < repeat; ++i) {
      before = tx.counters();
      const auto t0 = std::chrono::steady_clock::now();
      verdict = &tx.evaluate(*engine, view);
      const auto t1 = std::chrono::steady_clock::now();
      times.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
    }
    std::sort(times.begin(), times.end());
    const double median = times[times.size() / 2];
    const double p99 = times[std::min(times.size() - 1, times.size() * 99 / 100)];
    std::vector<uint32_t> ids;
    for (const auto& m : verdict->matched) ids.push_back(m.id);
    std::sort(ids.begin(), ids.end());
    ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
    std::string line = "{\"file\":\"";
    for (char c : f) {
      if (c == '"' || c == '\\') line += '\\';
      line += c;
    }
    line += "\",\"rules\":[";
    for (size_t i = 0; i < ids.size(); ++i) {
      if (i) line += ',';
      line += std::to_string(ids[i]);
    }
    const char* v = verdict->intervene ? "block" : (verdict->wouldIntervene ? "detect" : "pass");
    char tail[200];
    std::snprintf(tail, sizeof(tail), "],\"score\":%d,\"verdict\":\"%s\",\"status\":%u,\"us\":%.1f,\"us_p99\":%.1f",
                  verdict->anomalyScore, v, verdict->status, median, p99);
    line += tail;
    // Work done by the last evaluation: Hyperscan scans of (value, chain),
    // pattern checks answered by them, and checks run one by one.
    const auto& after = tx.counters();
    std::snprintf(tail, sizeof(tail), ",\"scans\":%llu,\"scan_hits\":%llu,\"direct\":%llu,\"summary_skips\":%llu",
                  static_cast<unsigned long long>(after.valuesScanned - before.valuesScanned),
                  static_cast<unsigned long long>(after.scanCacheHits - before.scanCacheHits),
                  static_cast<unsigned long long>(after.directMatches - before.directMatches),
                  static_cast<unsigned long long>(after.summarySkips - before.summarySkips));
    line += tail;
    if (showMatches) {
      const std::string audit = moat::waf::auditJson(view, *verdict, engine->mode());
      line += ",\"audit\":" + audit;
    }
    line += "}";
    std::printf("%s\n", line.c_str());
  }
  return rc;
}
