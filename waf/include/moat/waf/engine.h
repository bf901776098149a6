// The WAF engine: runs a loaded RuleSet (normally the OWASP CRS 3.3.4 from
// Debian's files) against HTTP requests, with libmodsecurity v3's semantics
// as far as the CRS can observe them, and Hyperscan doing the pattern work.
//
// Two objects:
//  - Engine: compiled once per rule configuration by the control plane
//    (Engine::compile), immutable afterwards and shared read-only by every
//    worker through the config snapshot (std::shared_ptr<const Engine>).
//    Compiling groups every @rx / @pm / @pmFromFile pattern by its
//    transformation chain into one Hyperscan database per chain (PatternSet),
//    compiles the scalar operators, resolves defaults; with a cache directory
//    the Hyperscan databases are loaded from disk when the patterns are the
//    same. Control plane only: allocates, reads files, may take seconds.
//  - Transaction: one per worker, reused for every request the worker
//    evaluates (its buffers keep their capacity). evaluate() runs phase 1
//    (request headers), the request body processor, then phase 2 (request
//    body), in rule order, with chains, skip/skipAfter, setvar, ctl, capture,
//    macro expansion, multiMatch and the disruptive actions. Not thread-safe;
//    never blocks, never throws on hostile input, no syscalls except reading
//    the clock once per evaluation.
//
// Pattern evaluation: the first time a rule needs value V transformed by chain
// C, V is transformed once and scanned once with C's database; the set of
// pattern ids that matched is remembered for the rest of the transaction, so
// every other rule with a pattern on (V, C) is answered by a lookup. Values
// that change during the transaction (TX, MATCHED_VAR...) are matched
// directly. Captures are taken with PCRE2 only for rules that capture.
//
// Deliberate differences from ModSecurity v3 are listed in waf/README.md; the
// main ones: persistent collections (IP, SESSION, USER, GLOBAL, RESOURCE) live
// for one transaction only; @geoLookup and @rbl never match (counted);
// response phases (3, 4) and the logging phase (5) are not run yet.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "moat/waf/patterns.h"
#include "moat/waf/rules.h"
#include "moat/waf/transform.h"

namespace moat::waf {

class EngineImpl;
struct TxState;

enum class EngineMode : uint8_t { kOn, kDetectionOnly, kOff };
std::string_view toString(EngineMode mode);  // "On", "DetectionOnly", "Off"

enum class BodyLimitAction : uint8_t { kReject, kProcessPartial };

struct EngineOptions {
  // Rule files in load order: the setup file(s) first, then the rules. A
  // directory entry means its *.conf files in sorted order.
  std::vector<std::string> ruleFiles;
  // Extra directives loaded after ruleFiles (exclusions written in Moat's own
  // config end up here: SecRuleRemoveById, SecRuleUpdateTargetById...).
  std::string extraDirectives;
  // Directives loaded after the setup and before the rules, e.g. the
  // paranoia level SecAction (see crsPreamble()).
  std::string preamble;
  // Overrides SecRuleEngine from the files when set.
  std::optional<EngineMode> mode;
  // Request body handling (SecRequestBodyLimit / ...LimitAction).
  size_t requestBodyLimit = 13107200;
  BodyLimitAction bodyLimitAction = BodyLimitAction::kReject;
  // urlDecodeUni's map (SecUnicodeMapFile); empty = none.
  std::string unicodeMapPath;
  int unicodeCodePage = 20127;
  // Directory for compiled Hyperscan databases; empty = no cache.
  std::string cacheDir;
};

// Directives that set the CRS knobs the way Moat's config names them:
// tx.paranoia_level (and executing level), anomaly thresholds. Meant for
// EngineOptions::preamble, i.e. after crs-setup.conf and before the rules.
// paranoia 0 / thresholds 0 mean "leave what the setup file says".
std::string crsPreamble(int paranoia, int inboundThreshold, int outboundThreshold);

struct CompileStats {
  size_t rules = 0;           // rules (chains count once)
  size_t links = 0;           // rule links (chained rules count each)
  size_t patternLinks = 0;    // links whose operator is @rx / @pm / @pmFromFile
  size_t patternGroups = 0;   // Hyperscan databases (per chain, phase, targets, paranoia band)
  size_t hsExact = 0, hsPrefilter = 0, pcreOnly = 0, phraseLists = 0;
  size_t foldedRules = 0;     // later TX-only rules whose outcome is fixed at
                              // compile (engine.cpp EngineImpl::fold)
  size_t purePrefixRules = 0; // phase-1 rules run once at compile (TX-only
                              // defaults, see engine.cpp EngineImpl::Prefix)
  bool cacheHit = false;      // every database came from the cache
  double loadMs = 0, compileMs = 0;
  std::string contentHash;    // of the rule files (hex)
};

class Engine {
 public:
  // Loads the files and compiles. On failure returns nullptr and appends each
  // problem (file:line: message) to *errors. Warnings (directives that changed
  // nothing, engine settings Moat does not apply) go to *warnings.
  static std::shared_ptr<const Engine> compile(const EngineOptions& options,
                                               std::vector<std::string>* errors,
                                               std::vector<std::string>* warnings,
                                               CompileStats* stats);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  const CompileStats& stats() const;
  EngineMode mode() const;

  // Diagnostics and benchmarks, never the hot path: the Hyperscan group that
  // scans rule `ruleId`'s first @rx/@pm link, and the transformations applied
  // to a value before that scan (the unit of work a transaction does once per
  // value and group). False when the rule is unknown or has no such link.
  // O(links); allocates the chain copy.
  struct PatternGroupView {
    std::shared_ptr<const PatternSet> patterns;
    std::vector<Transform> chain;
    uint32_t patternId = 0;            // this rule's pattern in `patterns` (a scan hit id)
    std::vector<uint32_t> patternIds;  // ids of every link sharing this database (PatternSet::mode)
  };
  bool patternGroupOf(uint32_t ruleId, PatternGroupView& out) const;
  const EngineImpl& impl() const { return *impl_; }

 private:
  explicit Engine(std::unique_ptr<EngineImpl> impl);
  std::unique_ptr<EngineImpl> impl_;
};

// What evaluate() needs to know of one request. Every view must stay valid
// for the duration of the evaluate() call only.
struct RequestView {
  std::string_view method;    // "GET"
  std::string_view target;    // request-target as received ("/a?b=c")
  std::string_view protocol;  // "HTTP/1.1"
  std::vector<std::pair<std::string_view, std::string_view>> headers;  // in order, as received
  std::string_view body;      // complete (or truncated, see bodyTruncated)
  bool bodyTruncated = false; // the proxy stopped buffering at the limit
  std::string_view remoteAddr = "127.0.0.1";
  uint16_t remotePort = 0;
  std::string_view serverAddr = "127.0.0.1";
  uint16_t serverPort = 80;
  std::string_view requestId;  // UNIQUE_ID
};

struct MatchedRule {
  uint32_t id = 0;
  std::string msg;        // expanded
  std::string data;       // logdata, expanded
  std::string matchedVar; // MATCHED_VAR_NAME of the (last) match, e.g. "ARGS:q"
  Severity severity = Severity::kNotice;
  bool hasSeverity = false;
  uint8_t phase = 2;
};

struct Verdict {
  bool intervene = false;   // the request must not go on (mode On only)
  uint16_t status = 0;      // HTTP status to answer with (403 for deny)
  uint32_t ruleId = 0;      // the rule that intervened (or would have, in detection-only)
  bool wouldIntervene = false;  // a disruptive action fired in DetectionOnly mode
  bool allowed = false;     // an allow action ended evaluation
  int anomalyScore = 0;     // TX:ANOMALY_SCORE (CRS inbound score) at the end
  std::vector<MatchedRule> matched;  // logged rules, in the order they matched
  // Body processing.
  std::string_view bodyProcessor;  // "URLENCODED", "MULTIPART", "JSON", "XML" or ""
  bool bodyError = false;          // REQBODY_ERROR
  bool bodyLimitExceeded = false;
};

// Per-worker evaluation counters (plain, owned by the worker; the worker
// publishes copies).
struct EngineCounters {
  uint64_t transactions = 0;
  uint64_t interventions = 0;
  uint64_t detectOnlyInterventions = 0;
  uint64_t ruleMatches = 0;
  uint64_t valuesScanned = 0;   // (value, chain) Hyperscan scans
  uint64_t scanCacheHits = 0;   // pattern checks answered from a previous scan
  uint64_t directMatches = 0;   // pattern checks run without the scan cache
  uint64_t foldedRules = 0;     // rules answered by their compile-time outcome
  uint64_t summarySkips = 0;    // pattern links failed from their group's hit
                                // summary without walking their values
  uint64_t pcreLimitHits = 0;
  uint64_t geoLookupUnavailable = 0;
  uint64_t rblUnavailable = 0;
  uint64_t bodyErrors = 0;
  uint64_t bodyLimitRejected = 0;
  uint64_t bodyLimitPartial = 0;
};

class Transaction {
 public:
  Transaction();
  ~Transaction();
  Transaction(const Transaction&) = delete;
  Transaction& operator=(const Transaction&) = delete;

  // Runs phases 1 and 2 over `request`. The result stays valid until the next
  // evaluate(). Cost: proportional to the request size times the number of
  // distinct transformation chains that touch each value, plus the rule
  // logic of the rules that match or need no pattern.
  const Verdict& evaluate(const Engine& engine, const RequestView& request);

  const EngineCounters& counters() const;
  // TX variable lookup after evaluate() (tests, audit): lowercase key.
  std::optional<std::string> tx(std::string_view key) const;

 private:
  std::unique_ptr<TxState> state_;
};

// One JSON line (no trailing newline) describing a transaction for the audit
// log: request id, client, method, URI, matched rules (id, msg, data, var),
// anomaly score, action ("blocked", "detected", "allowed", "passed").
std::string auditJson(const RequestView& request, const Verdict& verdict, EngineMode mode);

}  // namespace moat::waf
