// WAF engine: compile (control plane) and Transaction::evaluate (worker).
// See engine.h for the contract. ModSecurity v3 behaviour reproduced here is
// named where it is implemented; where we differ on purpose the comment says
// so.
#include "moat/waf/engine.h"
#include "ascii.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cstring>
#include <ctime>
#include <deque>
#include <filesystem>
#include <unordered_map>

#include "moat/waf/body.h"
#include "moat/waf/injection.h"
#include "moat/waf/operators.h"
#include "moat/waf/patterns.h"
#include "moat/waf/transform.h"

namespace moat::waf {
namespace {

constexpr uint32_t kNoValueId = UINT32_MAX;

using detail::iequals;
using detail::lowerAscii;

std::string lowered(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = lowerAscii(c);
  return out;
}

std::string memberName(VariableName v, std::string_view key);  // below

// Hash of a collection key (Coll): a word-at-a-time mix; keys are short
// ASCII names.
uint32_t keyHash(std::string_view k) {
  uint64_t h = 0x9E3779B97F4A7C15ull ^ k.size();
  size_t i = 0;
  for (; i + 8 <= k.size(); i += 8) {
    uint64_t w;
    std::memcpy(&w, k.data() + i, 8);
    h = (h ^ w) * 0xff51afd7ed558ccdull;
    h ^= h >> 32;
  }
  uint64_t w = 0;
  std::memcpy(&w, k.data() + i, k.size() - i);
  h = (h ^ w) * 0xc4ceb9fe1a85ec53ull;
  h ^= h >> 29;
  return static_cast<uint32_t>(h);
}

// ModSecurity's atoi-like conversion for setvar arithmetic: leading
// whitespace, optional sign, digits; anything else ends the number.
long long toInt(std::string_view s) {
  size_t i = 0;
  while (i < s.size() && (s[i] == ' ' || s[i] == '\t')) ++i;
  bool neg = false;
  if (i < s.size() && (s[i] == '-' || s[i] == '+')) neg = s[i++] == '-';
  long long v = 0;
  for (; i < s.size() && s[i] >= '0' && s[i] <= '9'; ++i) {
    if (v < (1LL << 55)) v = v * 10 + (s[i] - '0');
  }
  return neg ? -v : v;
}

// %XX decoding without '+' (ModSecurity's uri_decode for REQUEST_URI and
// REQUEST_FILENAME); invalid escapes are kept.
std::string uriDecode(std::string_view in) {
  auto hex = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  std::string out;
  out.reserve(in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    if (in[i] == '%' && i + 2 < in.size()) {
      const int h = hex(in[i + 1]), l = hex(in[i + 2]);
      if (h >= 0 && l >= 0) {
        out.push_back(static_cast<char>(h * 16 + l));
        i += 2;
        continue;
      }
    }
    out.push_back(in[i]);
  }
  return out;
}

// A small PCRE2 wrapper for the regexes that are not rule patterns: target
// selectors (ARGS:/^id_/), ctl:ruleRemoveByTag patterns and @rx arguments
// built from macros at run time. Compiled caseless where ModSecurity does.
class Pcre {
 public:
  static std::shared_ptr<Pcre> compile(std::string_view pattern, bool caseless, std::string* error) {
    int err = 0;
    PCRE2_SIZE off = 0;
    uint32_t flags = PCRE2_DOTALL | PCRE2_MULTILINE | (caseless ? PCRE2_CASELESS : 0u);
    pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                                     flags, &err, &off, nullptr);
    if (code == nullptr) {
      if (error != nullptr) {
        PCRE2_UCHAR buf[256];
        pcre2_get_error_message(err, buf, sizeof(buf));
        *error = "regex /" + std::string(pattern) + "/: " + reinterpret_cast<char*>(buf) +
                 " at offset " + std::to_string(off);
      }
      return nullptr;
    }
    pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);
    auto p = std::make_shared<Pcre>();
    p->code_ = code;
    p->mctx_ = pcre2_match_context_create(nullptr);
    pcre2_set_match_limit(p->mctx_, 100000);
    pcre2_set_depth_limit(p->mctx_, 10000);
    return p;
  }
  ~Pcre() {
    if (code_ != nullptr) pcre2_code_free(code_);
    if (mctx_ != nullptr) pcre2_match_context_free(mctx_);
  }
  // Search anywhere in `s`. captures (optional) gets groups 0..9.
  bool search(std::string_view s, std::vector<std::string>* captures = nullptr) const {
    // One match data block per thread, reused: enough for groups 0..15.
    struct MatchData {
      pcre2_match_data* md = pcre2_match_data_create(16, nullptr);
      ~MatchData() { pcre2_match_data_free(md); }
    };
    thread_local MatchData tl;
    pcre2_match_data* md = tl.md;
    const char* p = s.data() != nullptr ? s.data() : "";
    const int rc = pcre2_match(code_, reinterpret_cast<PCRE2_SPTR>(p), s.size(), 0, 0, md, mctx_);
    const bool ok = rc >= 0;
    if (ok && captures != nullptr) {
      captures->clear();
      PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
      const int n = std::min(rc == 0 ? 10 : rc, 10);
      for (int i = 0; i < n; ++i) {
        if (ov[2 * i] == PCRE2_UNSET) {
          captures->emplace_back();
        } else {
          captures->emplace_back(p + ov[2 * i], ov[2 * i + 1] - ov[2 * i]);
        }
      }
    }
    return ok;
  }

 private:
  pcre2_code* code_ = nullptr;
  pcre2_match_context* mctx_ = nullptr;
};

enum class OpClass : uint8_t {
  kPattern,     // @rx without macros, @pm, @pmFromFile: in a PatternSet
  kRxMacro,     // @rx whose pattern holds macros: compiled per transaction
  kScalar,      // CompiledOperator
  kSqli,
  kXss,
  kGeoLookup,
  kRbl,
};

struct TargetC {
  Variable var;
  std::shared_ptr<Pcre> selectorRegex;  // for SelectorKind::kRegex
  // A regex selector that is a plain word, optionally anchored with '^'
  // (CRS: /__utm/, /^HEADER_NAME_/), is matched without PCRE2: an ASCII
  // caseless substring or prefix test on `fastLiteral` (lower case), which
  // is what the caseless PCRE2 search does on such a pattern. A key holding
  // CR or LF (where multiline '^' could also match) still goes to PCRE2.
  enum class Fast : uint8_t { kNo, kPrefix, kSubstring } fast = Fast::kNo;
  std::string fastLiteral;
  std::string countName;  // "&ARGS:foo", MATCHED_VAR_NAME of a `&` target
  uint32_t selectorHash = 0;            // keyHash(lowerSelector)
  std::string lowerSelector;            // kLiteral, lower case: TX and the other
                                        // mutable collections store keys so
};

// Classifies a regex selector for TargetC::fast.
void classifySelector(TargetC& t) {
  std::string_view re = t.var.selector;
  TargetC::Fast kind = TargetC::Fast::kSubstring;
  if (!re.empty() && re.front() == '^') {
    kind = TargetC::Fast::kPrefix;
    re.remove_prefix(1);
  }
  // A trailing word character with '*' or '?' may match nothing, so a
  // search for the rest finds the same keys (/MULTIPART_HEADERS_CONTENT_TYPES_*/).
  const auto isWord = [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
  };
  while (re.size() >= 2 && (re.back() == '*' || re.back() == '?') && isWord(re[re.size() - 2]) &&
         (re.size() < 3 || re[re.size() - 3] != '\\')) {
    re.remove_suffix(2);
  }
  if (re.empty()) return;
  for (char c : re) {
    const bool word = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                      c == '_' || c == '-';
    if (!word) return;
  }
  t.fast = kind;
  t.fastLiteral = lowered(re);
}

// Patterns are grouped into Hyperscan databases by everything that decides
// which values they can ever be asked about: transformation chain, phase,
// the link's target list, and the rule's CRS paranoia level (1 or higher,
// from its paranoia-level/N tag). A value is scanned with a group only when
// a rule of that group asks about it, so a header value is never run
// through the argument-only SQL-injection regexes, phase 3/4 rules (not
// run) never cost a scan, and at paranoia level 1 the patterns of skipped
// level 2-4 rules are never scanned. Grouping never changes a result.
bool paranoiaAboveOne(const Rule& rule) {
  constexpr std::string_view kTag = "paranoia-level/";
  for (const auto& t : rule.tags) {
    const std::string_view v = t.text;
    if (v.size() == kTag.size() + 1 && v.substr(0, kTag.size()) == kTag) return v.back() > '1';
  }
  return false;
}

std::string groupKey(const std::string& chainKey, const Rule& rule, const RuleLink& link) {
  std::vector<std::string> vars;
  for (const Variable& v : link.variables) {
    if (v.exclude) continue;
    vars.push_back(std::to_string(static_cast<int>(v.name)) + ":" +
                   std::to_string(static_cast<int>(v.selectorKind)) + ":" +
                   (v.count ? "&" : "") + v.selector);
  }
  std::sort(vars.begin(), vars.end());
  vars.erase(std::unique(vars.begin(), vars.end()), vars.end());
  std::string key = chainKey + "#" + std::to_string(static_cast<int>(rule.phase)) +
                    (paranoiaAboveOne(rule) ? "#pl2+" : "#pl1");
  for (const auto& v : vars) key += "#" + v;
  return key;
}

struct LinkC {
  const RuleLink* link = nullptr;
  uint32_t ruleIndex = 0;
  std::vector<Transform> chain;
  uint32_t chainId = 0;
  uint32_t groupId = 0;  // the PatternSet holding this link's pattern (see groupKey)
  OpClass opClass = OpClass::kScalar;
  uint32_t patternId = 0;  // global link index, the id in its group's PatternSet
  std::optional<CompiledOperator> scalar;
  std::vector<TargetC> targets;     // non-excluded targets
  std::vector<TargetC> exclusions;  // `!` targets
  bool hasOtherEffects = false;     // setenv or ctl (run after a full match)
  // Every target is a request collection that may be empty (ARGS, cookies,
  // FILES, XML...; no `&` counts): when all of emptyMask's collections are
  // empty in this transaction the link has no value, so it cannot match and
  // is failed without walking its targets.
  bool skippableWhenEmpty = false;
  uint32_t emptyMask = 0;
  // Non-negated pattern link without multiMatch in a group whose values are
  // fixed for a phase (groupStable): when the group's per-phase hit summary
  // (the union of the hits over every value of its targets) lacks this
  // link's pattern, no value can match and the link fails without walking
  // its targets. Exclusions and ctl target removals only remove values, so
  // the summary over all values is a superset and the test is exact.
  bool useSummary = false;
};

// Whether the values of target v stay fixed within a phase (request data,
// not TX, MATCHED_VARS, ENV or clocks): only then may a group's hit summary
// stand in for walking them. Scalars set mid-phase (ctl:requestBodyProcessor)
// invalidate the summaries (TxState::valueGen).
bool stableWithinPhase(const Variable& v) {
  if (v.count) return false;
  switch (v.name) {
    case VariableName::kTx:
    case VariableName::kIp:
    case VariableName::kGlobal:
    case VariableName::kSession:
    case VariableName::kUser:
    case VariableName::kResource:
    case VariableName::kMatchedVar:
    case VariableName::kMatchedVarName:
    case VariableName::kMatchedVars:
    case VariableName::kMatchedVarsNames:
    case VariableName::kDuration:
    case VariableName::kHighestSeverity:
    case VariableName::kEnv:
    case VariableName::kRule:
    case VariableName::kGeo: return false;
    default: return true;
  }
}

// Bit of a request collection that can be empty (see LinkC::emptyMask), or
// -1 for anything else (headers, scalars, TX...).
int emptyClassBit(VariableName v) {
  switch (v) {
    case VariableName::kArgs:
    case VariableName::kArgsNames: return 0;
    case VariableName::kArgsGet:
    case VariableName::kArgsGetNames: return 1;
    case VariableName::kArgsPost:
    case VariableName::kArgsPostNames: return 2;
    case VariableName::kRequestCookies:
    case VariableName::kRequestCookiesNames: return 3;
    case VariableName::kFiles: return 4;
    case VariableName::kFilesNames: return 5;
    case VariableName::kFilesSizes: return 6;
    case VariableName::kMultipartPartHeaders: return 7;
    case VariableName::kXml: return 8;
    default: return -1;
  }
}

struct RuleC {
  const Rule* rule = nullptr;
  uint32_t firstLink = 0;  // index into EngineImpl::links
  uint32_t linkCount = 0;
  Disruptive disruptive = Disruptive::kPass;  // resolved (block -> default)
  uint16_t status = 403;
  bool log = true;
  std::vector<std::string> tags;  // literal text, for ruleRemoveByTag
};

}  // namespace

class EngineImpl {
 public:
  RuleSet ruleSet;
  std::vector<RuleC> rules;  // parallel to ruleSet.rules
  std::vector<LinkC> links;
  std::vector<std::vector<uint32_t>> byPhase = std::vector<std::vector<uint32_t>>(6);
  std::vector<std::vector<Transform>> chains;  // chainId -> transformations
  std::vector<std::shared_ptr<const PatternSet>> groups;  // chainId -> db (may be null)
  // Per group: a pattern link standing for the group's targets and chain
  // (every link of a group has the same ones, see groupKey), or UINT32_MAX
  // when the group's values are not fixed within a phase (no summary).
  std::vector<uint32_t> groupRep;
  // The rule loop's hot data, apart from the big RuleC/LinkC/TargetC
  // structs so that a rule failed by its first link's empty-collection or
  // summary test costs two small sequential loads, not three cache misses
  // (measured: the loop was bound on those misses).
  struct RuleHot {
    uint32_t firstLink = 0, linkCount = 0;
  };
  struct LinkHot {
    static constexpr uint8_t kSkippableWhenEmpty = 1, kUseSummary = 2;
    uint32_t groupId = 0;
    uint32_t emptyMask = 0;
    uint8_t flags = 0;
  };
  std::vector<RuleHot> ruleHot;  // parallel to rules
  std::vector<LinkHot> linkHot;  // parallel to links

  // The pure prefix of phase 1. CRS starts every transaction with ~60 rules
  // that read and write only TX and constants (crs-setup's SecActions,
  // 901xxx defaults: "&TX:x @eq 0 -> setvar tx.x=default"); their outcome is
  // the same for every request, so compile() runs them once and evaluate()
  // starts from the result: the TX variables, position and log they left.
  // A rule is pure (rulePure) when it has no skip:N, every
  // link's operator is a plain scalar one over TX targets (or none), and its
  // setvars, macros and messages touch only TX, MATCHED_VAR(_NAME) and RULE.
  struct Prefix {
    size_t pos = 0;  // index into byPhase[1] of the first rule left to run
    std::vector<std::pair<std::string, std::string>> tx;
    std::vector<MatchedRule> matched;
    int highestSeverity = 255;
    std::string matchedVar, matchedVarName;
    uint64_t ruleMatches = 0;
  };
  std::vector<uint8_t> rulePure;  // parallel to rules
  std::optional<Prefix> prefix;

  // Folded rules: after the prefix, a pure rule with no setvar, not logged,
  // whose TX reads are all keys that nothing after the prefix writes (CRS:
  // "TX:EXECUTING_PARANOIA_LEVEL @lt 2 -> skipAfter", the exclusion-package
  // switches) has the same outcome in every transaction. compile() evaluates
  // it once against the prefix's TX; the rule loop then only replays the
  // outcome (no match, or match: MATCHED_VAR, severity, skipAfter, its
  // disruptive action). Not used when a ctl removed targets in this
  // transaction (that could change what the rule sees).
  static constexpr uint8_t kNotFolded = 0, kFoldedNoMatch = 1, kFoldedMatch = 2;
  std::vector<uint8_t> fold;                                      // parallel to rules
  std::vector<std::pair<std::string, std::string>> foldMatched;  // MATCHED_VAR, _NAME
  std::optional<UnicodeMap> unicodeMap;
  EngineMode mode = EngineMode::kOn;
  bool requestBodyAccess = true;
  size_t requestBodyLimit = 13107200;
  BodyLimitAction bodyLimitAction = BodyLimitAction::kReject;
  CompileStats stats;

  const UnicodeMap* map() const { return unicodeMap ? &*unicodeMap : nullptr; }
};

namespace {

std::optional<EngineMode> parseMode(std::string_view s) {
  if (iequals(s, "On")) return EngineMode::kOn;
  if (iequals(s, "DetectionOnly")) return EngineMode::kDetectionOnly;
  if (iequals(s, "Off")) return EngineMode::kOff;
  return std::nullopt;
}

std::vector<std::string> expandPaths(const std::vector<std::string>& in,
                                     std::vector<std::string>* errors) {
  std::vector<std::string> out;
  for (const auto& p : in) {
    std::error_code ec;
    if (std::filesystem::is_directory(p, ec)) {
      std::vector<std::string> files;
      for (const auto& e : std::filesystem::directory_iterator(p, ec)) {
        if (e.path().extension() == ".conf") files.push_back(e.path().string());
      }
      std::sort(files.begin(), files.end());
      if (files.empty() && errors != nullptr) errors->push_back(p + ": no *.conf files");
      out.insert(out.end(), files.begin(), files.end());
    } else {
      out.push_back(p);
    }
  }
  return out;
}


}  // namespace

std::string_view toString(EngineMode mode) {
  switch (mode) {
    case EngineMode::kOn: return "On";
    case EngineMode::kDetectionOnly: return "DetectionOnly";
    case EngineMode::kOff: return "Off";
  }
  return "On";
}

std::string crsPreamble(int paranoia, int inboundThreshold, int outboundThreshold) {
  std::string s;
  if (paranoia > 0) {
    s += "SecAction \"id:900000,phase:1,nolog,pass,t:none,setvar:tx.paranoia_level=" +
         std::to_string(paranoia) + "\"\n";
    s += "SecAction \"id:900001,phase:1,nolog,pass,t:none,setvar:tx.executing_paranoia_level=" +
         std::to_string(paranoia) + "\"\n";
  }
  if (inboundThreshold > 0 || outboundThreshold > 0) {
    s += "SecAction \"id:900110,phase:1,nolog,pass,t:none";
    if (inboundThreshold > 0) {
      s += ",setvar:tx.inbound_anomaly_score_threshold=" + std::to_string(inboundThreshold);
    }
    if (outboundThreshold > 0) {
      s += ",setvar:tx.outbound_anomaly_score_threshold=" + std::to_string(outboundThreshold);
    }
    s += "\"\n";
  }
  return s;
}

namespace {

bool pureMacro(const MacroString& m) {
  for (const auto& p : m.parts) {
    if (!p.ref) continue;
    const VariableName v = p.ref->variable;
    if (v != VariableName::kTx && v != VariableName::kMatchedVar &&
        v != VariableName::kMatchedVarName && v != VariableName::kRule) {
      return false;
    }
  }
  return true;
}

// See EngineImpl::Prefix.
bool rulePure(const EngineImpl& e, const RuleC& rc) {
  const Rule& r = *rc.rule;
  // A disruptive rule may be in the prefix only if it does not fire there
  // (precomputePurePrefix gives up when one does).
  if (r.skip != 0) return false;
  if (!pureMacro(r.msg) || !pureMacro(r.logdata)) return false;
  for (uint32_t li = 0; li < rc.linkCount; ++li) {
    const LinkC& lc = e.links[rc.firstLink + li];
    if (lc.opClass != OpClass::kScalar || lc.link->multiMatch) return false;
    if (!pureMacro(lc.link->op.expandable)) return false;
    for (const auto* list : {&lc.targets, &lc.exclusions}) {
      for (const TargetC& t : *list) {
        if (t.var.name != VariableName::kTx) return false;
      }
    }
    for (const SideEffect& fx : lc.link->effects) {
      const auto* sv = std::get_if<SetVar>(&fx);
      if (sv == nullptr || sv->collection != VariableName::kTx) return false;
      if (!pureMacro(sv->key) || !pureMacro(sv->value)) return false;
    }
  }
  return true;
}

void precomputePurePrefix(EngineImpl& e);  // after the Evaluator
void foldConstantRules(EngineImpl& e);     // after the Evaluator

}  // namespace

Engine::Engine(std::unique_ptr<EngineImpl> impl) : impl_(std::move(impl)) {}
Engine::~Engine() = default;
const CompileStats& Engine::stats() const { return impl_->stats; }
EngineMode Engine::mode() const { return impl_->mode; }

bool Engine::patternGroupOf(uint32_t ruleId, PatternGroupView& out) const {
  const EngineImpl& im = *impl_;
  for (const LinkC& l : im.links) {
    if (l.opClass != OpClass::kPattern || im.ruleSet.rules[l.ruleIndex].id != ruleId) continue;
    if (l.groupId >= im.groups.size() || !im.groups[l.groupId]) return false;
    out.patterns = im.groups[l.groupId];
    out.chain = l.chain;
    out.patternId = l.patternId;
    out.patternIds.clear();
    for (const LinkC& o : im.links) {
      if (o.opClass == OpClass::kPattern && o.groupId == l.groupId) out.patternIds.push_back(o.patternId);
    }
    return true;
  }
  return false;
}

std::shared_ptr<const Engine> Engine::compile(const EngineOptions& options,
                                              std::vector<std::string>* errors,
                                              std::vector<std::string>* warnings,
                                              CompileStats* statsOut) {
  auto fail = [&](std::string msg) {
    if (errors != nullptr) errors->push_back(std::move(msg));
  };
  const auto t0 = std::chrono::steady_clock::now();
  auto impl = std::make_unique<EngineImpl>();
  impl->requestBodyLimit = options.requestBodyLimit;
  impl->bodyLimitAction = options.bodyLimitAction;

  // Load: the files up to and including the setup, the preamble, the rest,
  // then the extra directives. The loader takes one list of files; the
  // in-memory parts are loaded as separate texts and concatenated in order.
  // Because SecRuleRemove*/UpdateTarget* only affect rules defined before
  // them, and the preamble and extras hold only SecAction/exclusions, the
  // pieces are loaded together by writing them as one text that Includes
  // the files.
  std::vector<std::string> loadErrors;
  const std::vector<std::string> files = expandPaths(options.ruleFiles, &loadErrors);
  for (auto& e : loadErrors) fail(e);
  if (!loadErrors.empty()) return nullptr;
  std::string text;
  // The first file is the setup (crs-setup.conf) when there is more than one.
  size_t setupCount = files.size() > 1 ? 1 : 0;
  auto quote = [](const std::string& p) {
    std::string q = "\"";
    for (char c : p) {
      if (c == '"' || c == '\\') q += '\\';
      q += c;
    }
    return q + "\"";
  };
  for (size_t i = 0; i < setupCount; ++i) text += "Include " + quote(files[i]) + "\n";
  text += options.preamble;
  if (!text.empty() && text.back() != '\n') text += '\n';
  for (size_t i = setupCount; i < files.size(); ++i) text += "Include " + quote(files[i]) + "\n";
  text += options.extraDirectives;
  if (!text.empty() && text.back() != '\n') text += '\n';

  std::vector<LoadError> errs;
  auto rs = loadRuleText(text, "<moat waf config>", std::filesystem::current_path().string(), &errs);
  if (!rs) {
    for (const auto& e : errs) {
      fail((e.file.empty() ? std::string() : e.file + ":" + std::to_string(e.line) + ": ") +
           e.message);
    }
    return nullptr;
  }
  impl->ruleSet = std::move(*rs);
  RuleSet& set = impl->ruleSet;
  if (warnings != nullptr) {
    for (const auto& w : set.warnings) {
      warnings->push_back(w.file + ":" + std::to_string(w.line) + ": " + w.message);
    }
  }
  const auto t1 = std::chrono::steady_clock::now();

  // Engine settings.
  std::string unicodePath = options.unicodeMapPath;
  int codePage = options.unicodeCodePage;
  for (const auto& s : set.settings) {
    const std::string where = s.file + ":" + std::to_string(s.line) + ": ";
    if (iequals(s.name, "SecRuleEngine") && !s.args.empty()) {
      auto m = parseMode(s.args[0]);
      if (m) impl->mode = *m;
    } else if (iequals(s.name, "SecRequestBodyAccess") && !s.args.empty()) {
      impl->requestBodyAccess = iequals(s.args[0], "On");
    } else if (iequals(s.name, "SecRequestBodyLimit") && !s.args.empty()) {
      impl->requestBodyLimit = static_cast<size_t>(toInt(s.args[0]));
    } else if (iequals(s.name, "SecRequestBodyLimitAction") && !s.args.empty()) {
      impl->bodyLimitAction = iequals(s.args[0], "ProcessPartial")
                                  ? BodyLimitAction::kProcessPartial
                                  : BodyLimitAction::kReject;
    } else if (iequals(s.name, "SecUnicodeMapFile") && !s.args.empty()) {
      if (unicodePath.empty()) {
        unicodePath = s.args[0];
        if (s.args.size() > 1) codePage = static_cast<int>(toInt(s.args[1]));
      }
    } else if (warnings != nullptr) {
      warnings->push_back(where + s.name + " is accepted but has no effect in Moat");
    }
  }
  if (options.mode) impl->mode = *options.mode;
  if (!unicodePath.empty()) {
    std::string err;
    impl->unicodeMap = UnicodeMap::load(unicodePath, codePage, &err);
    if (!impl->unicodeMap) {
      fail(err);
      return nullptr;
    }
  }

  // Compile every rule link.
  std::unordered_map<std::string, uint32_t> chainIds, groupIds;
  std::vector<std::vector<PatternSpec>> specs;  // groupId -> patterns
  bool ok = true;
  impl->rules.resize(set.rules.size());
  for (uint32_t ri = 0; ri < set.rules.size(); ++ri) {
    const Rule& rule = set.rules[ri];
    RuleC& rc = impl->rules[ri];
    rc.rule = &rule;
    rc.firstLink = static_cast<uint32_t>(impl->links.size());
    rc.linkCount = static_cast<uint32_t>(rule.links.size());
    const DefaultAction* def =
        rule.defaultActionIndex >= 0 ? &set.defaultActions[rule.defaultActionIndex] : nullptr;
    Disruptive d = rule.disruptive;
    if (d == Disruptive::kNone || d == Disruptive::kBlock) {
      d = def != nullptr ? def->disruptive : Disruptive::kPass;
      if (d == Disruptive::kBlock || d == Disruptive::kNone) d = Disruptive::kPass;
    }
    rc.disruptive = d;
    rc.status = rule.status.value_or(def != nullptr && def->status ? *def->status : 403);
    const RuleLink& l0 = rule.links.front();
    rc.log = l0.log.value_or(def != nullptr && def->log ? *def->log : true);
    for (const auto& t : rule.tags) rc.tags.push_back(t.text);
    impl->byPhase[static_cast<size_t>(rule.phase)].push_back(ri);

    for (const RuleLink& link : rule.links) {
      LinkC lc;
      lc.link = &link;
      for (const SideEffect& fx : link.effects) {
        if (!std::holds_alternative<SetVar>(fx)) lc.hasOtherEffects = true;
      }
      lc.ruleIndex = ri;
      const uint32_t linkIndex = static_cast<uint32_t>(impl->links.size());
      const std::string where = link.file + ":" + std::to_string(link.line) + ": rule " +
                                std::to_string(rule.id) + ": ";
      // Transformations: the default action's first unless t:none reset them.
      std::vector<std::string> names;
      if (!link.transformationsReset && def != nullptr && &link == &rule.links.front()) {
        names = def->transformations;
      }
      names.insert(names.end(), link.transformations.begin(), link.transformations.end());
      std::string key;
      for (const auto& n : names) {
        auto t = transformFromName(n);
        if (!t) {
          fail(where + "transformation t:" + n + " is not implemented");
          ok = false;
          continue;
        }
        if (*t == Transform::kNone) continue;
        lc.chain.push_back(*t);
        key += std::to_string(static_cast<int>(*t)) + ",";
      }
      auto [it, inserted] = chainIds.try_emplace(key, static_cast<uint32_t>(impl->chains.size()));
      if (inserted) impl->chains.push_back(lc.chain);
      lc.chainId = it->second;
      auto [git, gnew] = groupIds.try_emplace(groupKey(key, rule, link),
                                              static_cast<uint32_t>(specs.size()));
      if (gnew) specs.emplace_back();
      lc.groupId = git->second;
      lc.patternId = linkIndex;
      // Targets.
      for (const Variable& v : link.variables) {
        TargetC tc;
        tc.var = v;
        if (v.selectorKind == SelectorKind::kLiteral) {
          tc.lowerSelector = lowered(v.selector);
          tc.selectorHash = keyHash(tc.lowerSelector);
        }
        if (v.selectorKind == SelectorKind::kRegex) {
          std::string err;
          tc.selectorRegex = Pcre::compile(v.selector, true, &err);
          if (!tc.selectorRegex) {
            fail(where + err);
            ok = false;
            continue;
          }
          classifySelector(tc);
        }
        if (v.count) tc.countName = "&" + memberName(v.name, v.selector);
        (v.exclude ? lc.exclusions : lc.targets).push_back(std::move(tc));
      }
      lc.skippableWhenEmpty = !lc.targets.empty();
      for (const TargetC& t : lc.targets) {
        const int bit = emptyClassBit(t.var.name);
        if (bit < 0 || t.var.count) {
          lc.skippableWhenEmpty = false;
          break;
        }
        lc.emptyMask |= 1u << bit;
      }
      // Operator.
      const Operator& op = link.op;
      switch (op.kind) {
        case OperatorKind::kRx:
          if (op.expandable.hasMacros()) {
            lc.opClass = OpClass::kRxMacro;
          } else {
            // Checked alone first so that an error names the rule's file
            // and line (the group build would only name the pattern id).
            std::string err;
            if (!Pcre::compile(op.argument, false, &err)) {
              fail(where + err);
              ok = false;
              break;
            }
            lc.opClass = OpClass::kPattern;
            PatternSpec ps;
            ps.id = linkIndex;
            ps.kind = PatternSpec::Kind::kRegex;
            ps.regex = op.argument;
            specs[lc.groupId].push_back(std::move(ps));
            ++impl->stats.patternLinks;
          }
          break;
        case OperatorKind::kPm:
        case OperatorKind::kPmFromFile: {
          lc.opClass = OpClass::kPattern;
          PatternSpec ps;
          ps.id = linkIndex;
          ps.kind = PatternSpec::Kind::kPhrases;
          ps.phrases = op.phrases;
          specs[lc.groupId].push_back(std::move(ps));
          ++impl->stats.patternLinks;
          break;
        }
        case OperatorKind::kDetectSqli: lc.opClass = OpClass::kSqli; break;
        case OperatorKind::kDetectXss: lc.opClass = OpClass::kXss; break;
        case OperatorKind::kGeoLookup: lc.opClass = OpClass::kGeoLookup; break;
        case OperatorKind::kRbl: lc.opClass = OpClass::kRbl; break;
        default: {
          std::string err;
          std::string_view arg = op.argument;
          std::string path;
          if (op.kind == OperatorKind::kIpMatchFromFile && !op.dataFiles.empty()) {
            path = op.dataFiles.front();
            arg = path;
          }
          lc.scalar = CompiledOperator::compile(op.kind, arg, &err);
          if (!lc.scalar) {
            fail(where + err);
            ok = false;
          }
          lc.opClass = OpClass::kScalar;
        }
      }
      impl->links.push_back(std::move(lc));
    }
  }
  if (!ok) return nullptr;
  // Hit summaries (LinkC::useSummary): a group qualifies when its targets
  // are all fixed within a phase.
  impl->groupRep.assign(specs.size(), UINT32_MAX);
  {
    std::vector<uint8_t> unstable(specs.size(), 0);
    for (uint32_t li = 0; li < impl->links.size(); ++li) {
      const LinkC& lc = impl->links[li];
      if (lc.opClass != OpClass::kPattern) continue;
      bool stable = !lc.targets.empty();
      for (const TargetC& t : lc.targets) stable = stable && stableWithinPhase(t.var);
      if (!stable) unstable[lc.groupId] = 1;
      if (impl->groupRep[lc.groupId] == UINT32_MAX) impl->groupRep[lc.groupId] = li;
    }
    for (size_t g = 0; g < specs.size(); ++g) {
      if (unstable[g]) impl->groupRep[g] = UINT32_MAX;
    }
    for (LinkC& lc : impl->links) {
      lc.useSummary = lc.opClass == OpClass::kPattern && !lc.link->op.negated &&
                      !lc.link->multiMatch && impl->groupRep[lc.groupId] != UINT32_MAX;
      EngineImpl::LinkHot h;
      h.groupId = lc.groupId;
      h.emptyMask = lc.emptyMask;
      h.flags = static_cast<uint8_t>((lc.skippableWhenEmpty ? EngineImpl::LinkHot::kSkippableWhenEmpty : 0) |
                                     (lc.useSummary ? EngineImpl::LinkHot::kUseSummary : 0));
      impl->linkHot.push_back(h);
    }
    for (const RuleC& rc : impl->rules) impl->ruleHot.push_back({rc.firstLink, rc.linkCount});
  }
  impl->rulePure.assign(impl->rules.size(), 0);
  for (size_t ri = 0; ri < impl->rules.size(); ++ri) {
    impl->rulePure[ri] = rulePure(*impl, impl->rules[ri]) ? 1 : 0;
  }
  impl->stats.rules = set.rules.size();
  impl->stats.links = impl->links.size();

  // One PatternSet per group (groupKey).
  impl->groups.resize(specs.size());
  bool allCached = true;
  for (size_t c = 0; c < specs.size(); ++c) {
    if (specs[c].empty()) continue;
    std::string err;
    BuildStats bs{};
    impl->groups[c] = PatternSet::build(specs[c], options.cacheDir, &err, &bs);
    if (!impl->groups[c]) {
      fail("pattern group " + std::to_string(c) + ": " + err);
      return nullptr;
    }
    ++impl->stats.patternGroups;
    impl->stats.hsExact += bs.exact;
    impl->stats.hsPrefilter += bs.prefilter;
    impl->stats.pcreOnly += bs.pcreOnly;
    impl->stats.phraseLists += bs.phrases;
    allCached = allCached && bs.cacheHit;
  }
  impl->stats.cacheHit = allCached && impl->stats.patternGroups > 0;
  precomputePurePrefix(*impl);
  foldConstantRules(*impl);
  const auto t2 = std::chrono::steady_clock::now();
  impl->stats.loadMs = std::chrono::duration<double, std::milli>(t1 - t0).count();
  impl->stats.compileMs = std::chrono::duration<double, std::milli>(t2 - t1).count();
  impl->stats.contentHash = contentHashHex(set);
  if (statsOut != nullptr) *statsOut = impl->stats;
  return std::shared_ptr<const Engine>(new Engine(std::move(impl)));
}

// ---------------------------------------------------------------------------
// Transaction

namespace {

struct Member {
  std::string_view key;
  std::string_view value;
  uint32_t vid = kNoValueId;      // value's id for the scan cache
  uint32_t nameVid = kNoValueId;  // the key's id (for *_NAMES targets)
};

struct ScanEntry {
  std::string transformed;
  bool identity = false;  // the chain changed nothing: transformed is empty, use the value
  // Scans of this transformed value, one per group asked so far (a chain
  // feeds a few groups; the list is short and searched linearly). Entries
  // and their vectors are reused across transactions.
  struct GroupHits {
    uint32_t group = 0;
    std::vector<uint32_t> hits;  // sorted pattern ids
  };
  std::vector<GroupHits> groups;
  uint32_t groupsUsed = 0;
};

// A mutable collection (TX, IP, ...): insertion-ordered entries with lower
// case keys, plus an open-addressing index so that a lookup is one hash and
// one compare (CRS keeps ~80 TX variables and looks them up ~300 times a
// request; the linear search showed). Entries and their strings are reused
// across transactions (the first `n` are live), so a steady worker does not
// allocate here. Owned by one transaction; not thread-safe.
class Coll {
 public:
  size_t size() const { return n_; }
  const std::pair<std::string, std::string>& operator[](size_t i) const { return items_[i]; }

  void clear() {
    n_ = 0;
    std::fill(slots_.begin(), slots_.end(), 0);
  }

  std::string* get(std::string_view key) { return get(key, hash(key)); }
  // With the key's hash() precomputed (TargetC::selectorHash).
  std::string* get(std::string_view key, uint32_t h) {
    if (slots_.empty()) return nullptr;
    const size_t mask = slots_.size() - 1;
    for (size_t i = h & mask;; i = (i + 1) & mask) {
      const uint64_t sl = slots_[i];
      if (sl == 0) return nullptr;
      if (static_cast<uint32_t>(sl >> 32) != h) continue;
      auto& it = items_[static_cast<uint32_t>(sl) - 1];
      if (it.first == key) return &it.second;
    }
  }

  static uint32_t hash(std::string_view k) { return keyHash(k); }

  void set(std::string_view key, std::string_view value) {
    if (std::string* v = get(key)) {
      v->assign(value);
      return;
    }
    if (n_ == items_.size()) items_.emplace_back();
    auto& it = items_[n_++];
    it.first.assign(key);
    it.second.assign(value);
    if (slots_.size() < 2 * n_) {
      rebuild();
    } else {
      place(n_ - 1);
    }
  }

  void erase(std::string_view key) {
    size_t w = 0;
    for (size_t r = 0; r < n_; ++r) {
      if (items_[r].first == key) continue;
      if (w != r) std::swap(items_[w], items_[r]);
      ++w;
    }
    if (w == n_) return;
    n_ = w;
    rebuild();
  }

 private:
  void place(size_t idx) {
    const size_t mask = slots_.size() - 1;
    const uint32_t h = hash(items_[idx].first);
    size_t i = h & mask;
    while (slots_[i] != 0) i = (i + 1) & mask;
    slots_[i] = (uint64_t{h} << 32) | static_cast<uint32_t>(idx + 1);
  }
  void rebuild() {
    size_t cap = slots_.empty() ? 128 : slots_.size();
    while (cap < 2 * n_) cap *= 2;
    slots_.assign(cap, 0);
    for (size_t i = 0; i < n_; ++i) place(i);
  }

  std::vector<std::pair<std::string, std::string>> items_;
  size_t n_ = 0;
  std::vector<uint64_t> slots_;  // hash << 32 | (index + 1); 0 = empty
};

}  // namespace

struct TxState {
  // Request-derived storage; deque keeps references stable.
  std::deque<std::string> arena;
  std::string_view keep(std::string s) {
    arena.push_back(std::move(s));
    return arena.back();
  }
  uint32_t nextVid = 0;

  std::vector<Member> headers, cookies, argsGet, argsPost, files, filesNames, filesSizes,
      multipartHeaders, env;
  std::array<std::string_view, 256> scalars{};
  std::array<uint32_t, 256> scalarVids{};
  std::array<bool, 256> scalarSet{};

  // Mutable collections: TX and the (transaction-local) persistent ones.
  Coll tx, ip, global, session, user, resource;

  // Matching state of the current rule.
  std::string matchedVar, matchedVarName;
  // name, value; the first matchedVarsCount entries are current (strings
  // reused across rules: clearing them per rule freed and reallocated).
  std::vector<std::pair<std::string, std::string>> matchedVars;
  size_t matchedVarsCount = 0;
  std::vector<std::string> captures;

  // Scan cache index: scanSlot[vid * chains + chainId] = 1 + index into
  // scans, 0 = not yet. Value ids are dense and per transaction.
  std::vector<uint32_t> scanSlot;
  size_t slotsDirty = 0;  // scanSlot[0, slotsDirty) may be non-zero
  // byteClasses(value) + 1 per value id, 0 = not computed yet: a value goes
  // through up to one chain per cached transformation chain, and each asks
  // which transformations could change it. Cleared like scanSlot.
  std::vector<uint32_t> vidClasses;
  size_t vidClassesDirty = 0;
  // Values the current link matched, in order, with the captures each
  // produced; setvar replays once per entry (ModSecurity v3 semantics).
  // Entries and their strings are reused across links (capacity kept).
  struct PendingMatch {
    std::string name, value;
    uint32_t capFirst = 0, capCount = 0;
  };
  std::vector<PendingMatch> newMatches;
  size_t newMatchCount = 0;
  std::vector<std::string> pendingCaps;
  size_t pendingCapCount = 0;
  std::vector<ScanEntry> scans;
  size_t scansUsed = 0;
  TransformScratch tscratch;
  std::string tmp, tmp2;
  // Reused buffers for macro keys, setvar keys/values and operator arguments.
  std::string macroKey, setvarKey, setvarValue, opArg;
  // One pattern scratch per group (chain id): a Hyperscan scratch prepared
  // for one database is re-prepared when used with another, which costs far
  // more than the scan. Sized on the first evaluate() with an engine.
  std::vector<PatternScratch> pscratch;
  const EngineImpl* scratchFor = nullptr;
  uint32_t presentMask = 0;  // see Evaluator::runPhase / LinkC::emptyMask
  // Group hit summaries (LinkC::useSummary): summaryGen[g] == valueGen when
  // summaryHits[g] (sorted pattern ids) is current. valueGen moves at every
  // phase start and whenever a scalar is set, so a summary never outlives
  // the values it was computed from.
  uint64_t valueGen = 1;
  std::vector<uint64_t> summaryGen;  // per group
  // Bit per pattern id (= link index, unique across groups): set when some
  // value of the link's group hit it; current for every group whose
  // summaryGen == valueGen (cleared whole when valueGen moves: hitBitsGen).
  std::vector<uint64_t> hitBits;
  uint64_t hitBitsGen = 0;
  std::vector<uint32_t> tmpHits;
  BodyResult body, query;

  // Runtime ctl state.
  std::vector<IdRange> removedIds;
  std::vector<std::shared_ptr<Pcre>> removedTags;
  struct TargetRemoval {
    IdRange ids;
    std::shared_ptr<Pcre> tag;  // ByTag when set
    Variable target;
  };
  std::vector<TargetRemoval> removedTargets;
  std::optional<EngineMode> modeOverride;
  std::string bodyProcessor;  // ctl:requestBodyProcessor, upper case
  bool bodyAccess = true;
  bool forceBodyVariable = false;  // ctl:forceRequestBodyVariable=On

  int highestSeverity = 255;
  std::chrono::steady_clock::time_point start;
  Verdict verdict;
  EngineCounters counters;
  const EngineImpl* eng = nullptr;
  const RequestView* req = nullptr;
  std::string scratchNum[4];
};

namespace {

Coll* mutableCollection(TxState& s, VariableName v) {
  switch (v) {
    case VariableName::kTx: return &s.tx;
    case VariableName::kIp: return &s.ip;
    case VariableName::kGlobal: return &s.global;
    case VariableName::kSession: return &s.session;
    case VariableName::kUser: return &s.user;
    case VariableName::kResource: return &s.resource;
    default: return nullptr;
  }
}

std::string* collGet(Coll& c, std::string_view lowerKey) { return c.get(lowerKey); }

const std::vector<Member>* requestCollection(const TxState& s, VariableName v) {
  switch (v) {
    case VariableName::kRequestHeaders:
    case VariableName::kRequestHeadersNames: return &s.headers;
    case VariableName::kRequestCookies:
    case VariableName::kRequestCookiesNames: return &s.cookies;
    case VariableName::kArgsGet:
    case VariableName::kArgsGetNames: return &s.argsGet;
    case VariableName::kArgsPost:
    case VariableName::kArgsPostNames: return &s.argsPost;
    case VariableName::kFiles: return &s.files;
    case VariableName::kFilesNames: return &s.filesNames;
    case VariableName::kFilesSizes: return &s.filesSizes;
    case VariableName::kMultipartPartHeaders: return &s.multipartHeaders;
    case VariableName::kEnv: return &s.env;
    default: return nullptr;
  }
}

bool isNamesVariable(VariableName v) {
  return v == VariableName::kArgsNames || v == VariableName::kArgsGetNames ||
         v == VariableName::kArgsPostNames || v == VariableName::kRequestHeadersNames ||
         v == VariableName::kRequestCookiesNames || v == VariableName::kMatchedVarsNames;
}

bool selectorMatches(const TargetC& t, std::string_view key) {
  switch (t.var.selectorKind) {
    case SelectorKind::kNone: return true;
    case SelectorKind::kLiteral: return iequals(t.var.selector, key);
    case SelectorKind::kRegex: {
      const std::string_view lit = t.fastLiteral;
      if (t.fast == TargetC::Fast::kSubstring) {
        if (key.size() < lit.size()) return false;
        for (size_t i = 0; i + lit.size() <= key.size(); ++i) {
          if (iequals(key.substr(i, lit.size()), lit)) return true;
        }
        return false;
      }
      if (t.fast == TargetC::Fast::kPrefix) {
        if (key.size() >= lit.size() && iequals(key.substr(0, lit.size()), lit)) return true;
        bool multiline = false;
        for (char c : key) multiline = multiline || c == '\n' || c == '\r';
        if (!multiline) return false;
      }
      return t.selectorRegex && t.selectorRegex->search(key);
    }
  }
  return false;
}

bool sameFamily(VariableName a, VariableName b) { return a == b; }

// A variable member's name, built only when something matched it.
struct VarRef {
  VariableName var;
  std::string_view key;  // "" for scalars
  const char* fixed = nullptr;  // a literal name instead ("XML:/*")
  void appendTo(std::string& out) const;
};

// The names ModSecurity prints in MATCHED_VAR_NAME.
std::string memberName(VariableName v, std::string_view key) {
  std::string n(toString(v));
  if (!key.empty()) {
    n += ':';
    n += key;
  }
  return n;
}

void setScalar(TxState& s, VariableName v, std::string_view value) {
  const size_t i = static_cast<size_t>(v);
  s.scalars[i] = value;
  s.scalarVids[i] = s.nextVid++;
  s.scalarSet[i] = true;
  ++s.valueGen;
}

void setScalarOwned(TxState& s, VariableName v, std::string value) {
  setScalar(s, v, s.keep(std::move(value)));
}

void VarRef::appendTo(std::string& out) const {
  if (fixed != nullptr) {
    out += fixed;
    return;
  }
  out += toString(var);
  if (!key.empty()) {
    out += ':';
    out += key;
  }
}

class Evaluator {
 public:
  Evaluator(TxState& s, const EngineImpl& e) : s_(s), e_(e) {}

  EngineMode mode() const { return s_.modeOverride.value_or(e_.mode); }

  // ---- macros ----
  std::string expand(const MacroString& m, const Rule* rule) {
    if (!m.hasMacros()) return m.text;
    std::string out;
    expandInto(m, rule, out);
    return out;
  }

  // Appends the expansion of `m` to `out` (no allocation once `out` has
  // grown to fit: the hot path passes reused buffers).
  void expandInto(const MacroString& m, const Rule* rule, std::string& out) {
    for (const auto& p : m.parts) {
      if (!p.ref) {
        out += p.literal;
        continue;
      }
      resolveMacro(*p.ref, rule, out);
    }
  }

  void resolveMacro(const MacroRef& r, const Rule* rule, std::string& out) {
    if (Coll* c = mutableCollection(s_, r.variable)) {
      std::string& key = s_.macroKey;
      key.assign(r.key);
      for (char& ch : key) ch = lowerAscii(ch);
      if (const std::string* v = collGet(*c, key)) out += *v;
      return;
    }
    switch (r.variable) {
      case VariableName::kRule:
        if (rule == nullptr) return;
        if (iequals(r.key, "id")) {
          out += std::to_string(rule->id);
        } else if (iequals(r.key, "msg")) {
          out += expand(rule->msg, rule);
        } else if (iequals(r.key, "logdata")) {
          out += expand(rule->logdata, rule);
        } else if (iequals(r.key, "severity")) {
          if (rule->severity) out += std::to_string(static_cast<int>(*rule->severity));
        } else if (iequals(r.key, "ver")) {
          out += rule->ver;
        } else if (iequals(r.key, "rev")) {
          out += rule->rev;
        }
        return;
      case VariableName::kMatchedVar: out += s_.matchedVar; return;
      case VariableName::kMatchedVarName: out += s_.matchedVarName; return;
      default: break;
    }
    // Any other variable: its first value (with the key as a selector).
    TargetC t;
    t.var.name = r.variable;
    if (!r.key.empty()) {
      t.var.selectorKind = SelectorKind::kLiteral;
      t.var.selector = r.key;
    }
    bool done = false;
    forEachValue(t, nullptr, nullptr, [&](const VarRef&, std::string_view value, uint32_t) {
      if (!done) out += value;
      done = true;
    });
  }

  // ---- values ----
  // Calls f(name, value, vid) for every value of target t, minus what the
  // link's exclusions and the runtime target removals take out.
  template <typename F>
  void forEachValue(const TargetC& t, const std::vector<TargetC>* exclusions, const RuleC* rule,
                    F&& f) {
    auto excluded = [&](std::string_view key) {
      if (exclusions != nullptr) {
        for (const TargetC& x : *exclusions) {
          if (sameFamily(x.var.name, t.var.name) && selectorMatches(x, key)) return true;
        }
      }
      if (rule != nullptr && !s_.removedTargets.empty()) {
        for (const auto& r : s_.removedTargets) {
          if (r.target.name != t.var.name) continue;
          bool applies = false;
          if (r.tag) {
            for (const auto& tag : rule->tags) applies = applies || r.tag->search(tag);
          } else {
            applies = r.ids.contains(rule->rule->id);
          }
          if (!applies) continue;
          TargetC x;
          x.var = r.target;
          if (x.var.selectorKind == SelectorKind::kRegex) {
            x.selectorRegex = Pcre::compile(x.var.selector, true, nullptr);
          }
          if (selectorMatches(x, key)) return true;
        }
      }
      return false;
    };
    const VariableName v = t.var.name;
    auto members = [&](const std::vector<Member>& list, bool names) {
      for (const Member& m : list) {
        if (!selectorMatches(t, m.key) || excluded(m.key)) continue;
        if (names) {
          f(VarRef{v, m.key}, m.key, m.nameVid);
        } else {
          f(VarRef{v, m.key}, m.value, m.vid);
        }
      }
    };
    switch (v) {
      case VariableName::kArgs:
        members(s_.argsGet, false);
        members(s_.argsPost, false);
        return;
      case VariableName::kArgsNames:
        members(s_.argsGet, true);
        members(s_.argsPost, true);
        return;
      case VariableName::kXml:
        // Two XPath expressions are understood, the ones CRS uses: "/*"
        // (all text content) and "//@*" (every attribute value). Any other
        // selector gives the text, as the loader accepted it.
        if (s_.verdict.bodyProcessor == "XML" && !s_.verdict.bodyError) {
          if (t.var.selector == "//@*") {
            for (const std::string& a : s_.body.xml_attributes) f(VarRef{v, {}, "XML://@*"}, a, kNoValueId);
          } else {
            f(VarRef{v, {}, "XML:/*"}, s_.body.xml_text, kNoValueId);
          }
        }
        return;
      case VariableName::kMatchedVars:
      case VariableName::kMatchedVarsNames: {
        const bool names = v == VariableName::kMatchedVarsNames;
        for (size_t i = 0; i < s_.matchedVarsCount; ++i) {
          const auto& [n, val] = s_.matchedVars[i];
          if (!selectorMatches(t, n) || excluded(n)) continue;
          f(VarRef{v, n}, names ? std::string_view(n) : std::string_view(val), kNoValueId);
        }
        return;
      }
      case VariableName::kGeo:
      case VariableName::kRule:
        return;
      default: break;
    }
    if (Coll* c = mutableCollection(s_, v)) {
      if (t.var.selectorKind == SelectorKind::kLiteral) {
        // TX:name: keys are stored in lower case and unique, so one exact
        // lookup replaces a case-insensitive pass over every TX entry (CRS
        // asks TX:EXECUTING_PARANOIA_LEVEL and friends ~100 times a request).
        if (const std::string* val = c->get(t.lowerSelector, t.selectorHash)) {
          if (!excluded(t.lowerSelector)) f(VarRef{v, t.lowerSelector}, *val, kNoValueId);
        }
        return;
      }
      // Copy: the callback may run setvar... it does not (operators only), but
      // be safe against reallocation by iterating indices.
      for (size_t i = 0; i < c->size(); ++i) {
        const auto& [k, val] = (*c)[i];
        if (!selectorMatches(t, k) || excluded(k)) continue;
        f(VarRef{v, k}, val, kNoValueId);
      }
      return;
    }
    if (const std::vector<Member>* list = requestCollection(s_, v)) {
      members(*list, isNamesVariable(v));
      return;
    }
    // Scalars.
    if (v == VariableName::kMatchedVar) {
      f(VarRef{v, {}}, s_.matchedVar, kNoValueId);
      return;
    }
    if (v == VariableName::kMatchedVarName) {
      f(VarRef{v, {}}, s_.matchedVarName, kNoValueId);
      return;
    }
    if (v == VariableName::kDuration) {
      const auto us = std::chrono::duration_cast<std::chrono::microseconds>(
                          std::chrono::steady_clock::now() - s_.start)
                          .count();
      s_.scratchNum[0] = std::to_string(us);
      f(VarRef{v, {}}, s_.scratchNum[0], kNoValueId);
      return;
    }
    if (v == VariableName::kHighestSeverity) {
      s_.scratchNum[1] = std::to_string(s_.highestSeverity);
      f(VarRef{v, {}}, s_.scratchNum[1], kNoValueId);
      return;
    }
    // Scalars always have a value, "" when nothing set them: ModSecurity
    // v3's anchored variables behave so (a negated operator on an unset
    // REQBODY_PROCESSOR matches, which CRS 901340 relies on).
    const size_t idx = static_cast<size_t>(v);
    if (idx < s_.scalarSet.size() && s_.scalarSet[idx]) {
      f(VarRef{v, {}}, s_.scalars[idx], s_.scalarVids[idx]);
    } else {
      f(VarRef{v, {}}, std::string_view(), kNoValueId);
    }
  }

  size_t countValues(const TargetC& t, const std::vector<TargetC>* exclusions, const RuleC* rule) {
    size_t n = 0;
    forEachValue(t, exclusions, rule, [&](const VarRef&, std::string_view, uint32_t) { ++n; });
    return n;
  }

  // ---- operators ----
  // The scan-cache entry for (vid, chain): the transformed value, and the
  // Hyperscan hits when scanned.
  ScanEntry& entryFor(uint32_t vid, uint32_t chainId, std::string_view value) {
    const size_t chains = e_.chains.size();
    const size_t slot = size_t{vid} * chains + chainId;
    if (slot >= s_.scanSlot.size()) s_.scanSlot.resize((size_t{s_.nextVid} + 64) * chains, 0);
    if (s_.scanSlot[slot] != 0) {
      ++s_.counters.scanCacheHits;
      return s_.scans[s_.scanSlot[slot] - 1];
    }
    s_.scanSlot[slot] = static_cast<uint32_t>(s_.scansUsed + 1);
    s_.slotsDirty = std::max(s_.slotsDirty, slot + 1);
    if (s_.scansUsed == s_.scans.size()) s_.scans.emplace_back();
    ScanEntry& e = s_.scans[s_.scansUsed++];
    e.groupsUsed = 0;
    if (vid >= s_.vidClasses.size()) s_.vidClasses.resize(size_t{s_.nextVid} + 64, 0);
    uint32_t& cls = s_.vidClasses[vid];
    if (cls == 0) {
      cls = byteClasses(value) + 1;
      s_.vidClassesDirty = std::max<size_t>(s_.vidClassesDirty, size_t{vid} + 1);
    }
    std::string_view out =
        applyTransforms(e_.chains[chainId], value, e_.map(), s_.tscratch, cls - 1);
    e.identity = out.data() == value.data() && out.size() == value.size();
    if (e.identity) {
      e.transformed.clear();
    } else {
      e.transformed.assign(out);
    }
    return e;
  }

  // The hits of group g on one cached transformed value, scanning it the
  // first time it is asked.
  const std::vector<uint32_t>& groupHits(uint32_t g, std::string_view transformed,
                                         ScanEntry& entry) {
    for (uint32_t i = 0; i < entry.groupsUsed; ++i) {
      if (entry.groups[i].group == g) return entry.groups[i].hits;
    }
    if (entry.groupsUsed == entry.groups.size()) entry.groups.emplace_back();
    ScanEntry::GroupHits& gh = entry.groups[entry.groupsUsed++];
    gh.group = g;
    gh.hits.clear();
    e_.groups[g]->scan(transformed, s_.pscratch[g], gh.hits);
    std::sort(gh.hits.begin(), gh.hits.end());
    ++s_.counters.valuesScanned;
    return gh.hits;
  }

  // Whether any value of group g's targets (LinkC::useSummary) has a hit for
  // pattern id `pid`; computes the group's summary once per valueGen.
  bool summaryHas(uint32_t g, uint32_t pid) {
    if (s_.summaryGen.size() != e_.groups.size()) {
      s_.summaryGen.assign(e_.groups.size(), 0);
      s_.hitBits.assign((e_.links.size() + 63) / 64, 0);
      s_.hitBitsGen = 0;
    }
    if (s_.hitBitsGen != s_.valueGen) {
      std::fill(s_.hitBits.begin(), s_.hitBits.end(), 0);
      s_.hitBitsGen = s_.valueGen;
    }
    if (s_.summaryGen[g] != s_.valueGen) {
      s_.summaryGen[g] = s_.valueGen;
      auto mark = [&](const std::vector<uint32_t>& hits) {
        for (uint32_t h : hits) s_.hitBits[h >> 6] |= uint64_t{1} << (h & 63);
      };
      const LinkC& rep = e_.links[e_.groupRep[g]];
      for (const TargetC& t : rep.targets) {
        forEachValue(t, nullptr, nullptr, [&](const VarRef&, std::string_view value, uint32_t vid) {
          if (vid != kNoValueId) {
            ScanEntry& entry = entryFor(vid, rep.chainId, value);
            const std::string_view tv = entry.identity ? value : std::string_view(entry.transformed);
            mark(groupHits(g, tv, entry));
          } else {
            const std::string_view tv = applyTransforms(rep.chain, value, e_.map(), s_.tscratch);
            s_.tmpHits.clear();
            e_.groups[g]->scan(tv, s_.pscratch[g], s_.tmpHits);
            ++s_.counters.valuesScanned;
            mark(s_.tmpHits);
          }
        });
      }
    }
    return (s_.hitBits[pid >> 6] >> (pid & 63)) & 1u;
  }

  bool patternMatch(const LinkC& lc, std::string_view transformed, ScanEntry* entry,
                    std::vector<std::string>* captures) {
    const PatternSet& ps = *e_.groups[lc.groupId];
    if (entry != nullptr && captures == nullptr) {
      const auto& hits = groupHits(lc.groupId, transformed, *entry);
      return std::binary_search(hits.begin(), hits.end(), lc.patternId);
    }
    ++s_.counters.directMatches;
    return ps.matchOne(lc.patternId, transformed, s_.pscratch[lc.groupId], captures);
  }

  // Runs the link's operator on one already-transformed value.
  bool runOperator(const LinkC& lc, const Rule& rule, std::string_view value, ScanEntry* entry,
                   bool wantCapture) {
    const Operator& op = lc.link->op;
    bool m = false;
    switch (lc.opClass) {
      case OpClass::kPattern:
        if (wantCapture && !op.negated) {
          m = patternMatch(lc, value, entry, nullptr);
          if (m) patternMatch(lc, value, nullptr, &s_.captures);
        } else {
          m = patternMatch(lc, value, entry, nullptr);
        }
        break;
      case OpClass::kRxMacro: {
        const std::string pattern = expand(op.expandable, &rule);
        auto re = Pcre::compile(pattern, false, nullptr);
        m = re && re->search(value, wantCapture ? &s_.captures : nullptr);
        break;
      }
      case OpClass::kScalar:
        if (lc.scalar->needsExpansion()) {
          std::string& arg = s_.opArg;
          arg.clear();
          expandInto(op.expandable, &rule, arg);
          s_.tmp2.clear();
          m = matchWithArgument(lc.scalar->kind(), value, arg, wantCapture ? &s_.tmp2 : nullptr);
        } else {
          s_.tmp2.clear();
          m = lc.scalar->match(value, wantCapture ? &s_.tmp2 : nullptr);
        }
        if (m && wantCapture && !s_.tmp2.empty()) {
          s_.captures.clear();
          s_.captures.push_back(s_.tmp2);
        }
        break;
      case OpClass::kSqli: {
        std::string fp;
        m = detectSqli(value, &fp);
        if (m && wantCapture) {
          s_.captures.clear();
          s_.captures.push_back(fp);
        }
        break;
      }
      case OpClass::kXss:
        m = detectXss(value);
        break;
      case OpClass::kGeoLookup:
        ++s_.counters.geoLookupUnavailable;
        m = false;
        break;
      case OpClass::kRbl:
        ++s_.counters.rblUnavailable;
        m = false;
        break;
    }
    return op.negated ? !m : m;
  }

  // Evaluates one link over all its target values. Returns whether any
  // value matched; records MATCHED_VAR(S) and captures.
  bool evalLink(const LinkC& lc, const RuleC& rc) {
    // (runPhase has already applied the LinkHot tests: empty collections
    // and the group's hit summary.)
    const RuleLink& link = *lc.link;
    const Rule& rule = *rc.rule;
    bool any = false;
    s_.newMatchCount = 0;
    s_.pendingCapCount = 0;
    auto record = [&](const VarRef& name, std::string_view v) {
      if (s_.newMatchCount == s_.newMatches.size()) s_.newMatches.emplace_back();
      auto& pm = s_.newMatches[s_.newMatchCount++];
      pm.name.clear();
      name.appendTo(pm.name);
      pm.value.assign(v);
      pm.capFirst = static_cast<uint32_t>(s_.pendingCapCount);
      pm.capCount = 0;
      if (link.capture) {
        for (size_t i = 0; i < s_.captures.size() && i < 10; ++i) {
          if (s_.pendingCapCount == s_.pendingCaps.size()) s_.pendingCaps.emplace_back();
          s_.pendingCaps[s_.pendingCapCount++].assign(s_.captures[i]);
          ++pm.capCount;
        }
      }
    };
    auto onValue = [&](const VarRef& name, std::string_view value, uint32_t vid) {
      bool m = false;
      std::string_view transformed;
      if (link.multiMatch) {
        // The operator sees the value before any transformation and after
        // every transformation that changed it (ModSecurity's multiMatch);
        // each of those that matches is one match (one setvar round).
        if (runOperator(lc, rule, value, nullptr, link.capture)) {
          any = true;
          record(name, value);
        }
        applyTransforms(lc.chain, value, e_.map(), s_.tscratch,
                        [&](Transform, std::string_view v) {
                          if (runOperator(lc, rule, v, nullptr, link.capture)) {
                            any = true;
                            record(name, v);
                          }
                        });
        return;
      }
      ScanEntry* entry = nullptr;
      if (vid != kNoValueId) {
        entry = &entryFor(vid, lc.chainId, value);
        transformed = entry->identity ? value : std::string_view(entry->transformed);
      } else {
        transformed = applyTransforms(lc.chain, value, e_.map(), s_.tscratch);
        if (transformed.data() != value.data()) {
          s_.tmp.assign(transformed);
          transformed = s_.tmp;
        }
      }
      m = runOperator(lc, rule, transformed, entry, link.capture);
      if (m) {
        any = true;
        record(name, transformed);
      }
    };
    if (lc.targets.empty()) {
      // SecAction (no targets): the operator runs once on nothing.
      if (runOperator(lc, rule, std::string_view(), nullptr, false)) any = true;
    }
    for (const TargetC& t : lc.targets) {
      if (t.var.count) {
        const size_t n = countValues(t, &lc.exclusions, &rc);
        char num[24];
        const auto res = std::to_chars(num, num + sizeof(num), n);
        s_.scratchNum[2].assign(num, res.ptr);
        onValue(VarRef{t.var.name, {}, t.countName.c_str()}, s_.scratchNum[2], kNoValueId);
        continue;
      }
      // Copy values of mutable collections first: forEachValue hands out
      // views into TX, and nothing below writes TX, so views are stable.
      forEachValue(t, &lc.exclusions, &rc, onValue);
    }
    if (!any) return false;
    // ModSecurity v3 runs a link's setvars once per matched value, right
    // after that value matched, with MATCHED_VAR and TX:0-9 set from it (so
    // a rule matching two arguments scores twice, and 920450 records every
    // restricted header). They run here, after the whole target walk,
    // because the walk hands out views into TX that a setvar could move.
    if (s_.newMatchCount == 0) {
      runSetvars(link, rule);  // SecAction: once
      return true;
    }
    for (size_t k = 0; k < s_.newMatchCount; ++k) {
      const auto& pm = s_.newMatches[k];
      s_.matchedVarName = pm.name;
      s_.matchedVar = pm.value;
      if (s_.matchedVarsCount == s_.matchedVars.size()) s_.matchedVars.emplace_back();
      auto& mv = s_.matchedVars[s_.matchedVarsCount++];
      mv.first.assign(pm.name);
      mv.second.assign(pm.value);
      for (uint32_t i = 0; i < pm.capCount; ++i) {
        const char digit = static_cast<char>('0' + i);
        const std::string& cap = s_.pendingCaps[pm.capFirst + i];
        s_.tx.set(std::string_view(&digit, 1), cap);
      }
      runSetvars(link, rule);
    }
    return true;
  }

  // ---- actions ----
  // setvar actions of one link (per matched value, from evalLink).
  void runSetvars(const RuleLink& link, const Rule& rule) {
    for (const SideEffect& fx : link.effects) {
      if (const auto* sv = std::get_if<SetVar>(&fx)) {
        Coll* c = mutableCollection(s_, sv->collection);
        if (c == nullptr) continue;
        // Key and value go through reused buffers: CRS runs ~100 setvars a
        // request (901200 alone sets 20), and allocating per setvar showed.
        std::string& key = s_.setvarKey;
        key.clear();
        expandInto(sv->key, &rule, key);
        for (char& ch : key) ch = lowerAscii(ch);
        std::string& val = s_.setvarValue;
        val.clear();
        expandInto(sv->value, &rule, val);
        switch (sv->op) {
          case SetVarOp::kSet:
            c->set(key, val);
            break;
          case SetVarOp::kIncrement:
          case SetVarOp::kDecrement: {
            std::string* cur = collGet(*c, key);
            const long long base = cur != nullptr ? toInt(*cur) : 0;
            const long long amount = toInt(val);
            const long long r = sv->op == SetVarOp::kIncrement ? base + amount : base - amount;
            char num[24];
            const auto res = std::to_chars(num, num + sizeof(num), r);
            const std::string_view text(num, static_cast<size_t>(res.ptr - num));
            if (cur != nullptr) {
              cur->assign(text);
            } else {
              c->set(key, text);
            }
            break;
          }
          case SetVarOp::kDelete:
            c->erase(key);
            break;
        }
      }
    }
  }

  // The other actions of one link (setenv, ctl): once, after the whole
  // chain matched, as ModSecurity v3 runs them.
  void runEffects(const RuleLink& link, const Rule& rule) {
    for (const SideEffect& fx : link.effects) {
      if (std::holds_alternative<SetVar>(fx)) continue;
      if (const auto* se = std::get_if<SetEnv>(&fx)) {
        std::string_view n = s_.keep(expand(se->name, &rule));
        std::string_view v = s_.keep(expand(se->value, &rule));
        s_.env.push_back(Member{n, v, kNoValueId});
      } else if (const auto* ctl = std::get_if<Ctl>(&fx)) {
        runCtl(*ctl, rule);
      }
      // ExpireVar / InitCol: collections live for one transaction in Moat,
      // so expiry and initialisation have nothing to do.
    }
  }

  void runCtl(const Ctl& ctl, const Rule& rule) {
    switch (ctl.kind) {
      case CtlKind::kRuleEngine: s_.modeOverride = parseMode(ctl.value); break;
      case CtlKind::kRequestBodyAccess: s_.bodyAccess = iequals(ctl.value, "On"); break;
      case CtlKind::kRequestBodyProcessor: {
        std::string v = ctl.value;
        for (char& c : v) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
        s_.bodyProcessor = v;
        setScalarOwned(s_, VariableName::kReqbodyProcessor, std::move(v));
        break;
      }
      case CtlKind::kForceRequestBodyVariable:
        s_.forceBodyVariable = iequals(ctl.value, "On");
        break;
      case CtlKind::kRuleRemoveById:
        s_.removedIds.insert(s_.removedIds.end(), ctl.ids.begin(), ctl.ids.end());
        break;
      case CtlKind::kRuleRemoveByTag:
        if (auto re = Pcre::compile(ctl.pattern, false, nullptr)) s_.removedTags.push_back(re);
        break;
      case CtlKind::kRuleRemoveTargetById:
        if (ctl.target) {
          for (const auto& r : ctl.ids) s_.removedTargets.push_back({r, nullptr, *ctl.target});
        }
        break;
      case CtlKind::kRuleRemoveTargetByTag:
        if (ctl.target) {
          if (auto re = Pcre::compile(ctl.pattern, false, nullptr)) {
            s_.removedTargets.push_back({IdRange{}, re, *ctl.target});
          }
        }
        break;
      default:
        // audit/debug log switches, response settings: nothing to change.
        (void)rule;
        break;
    }
  }

  bool removed(const RuleC& rc) const {
    if (s_.removedIds.empty() && s_.removedTags.empty()) return false;
    const uint32_t id = rc.rule->id;
    for (const auto& r : s_.removedIds) {
      if (r.contains(id)) return true;
    }
    for (const auto& re : s_.removedTags) {
      for (const auto& t : rc.tags) {
        if (re->search(t)) return true;
      }
    }
    return false;
  }

  // Runs one phase. Returns false when evaluation must stop (intervention or
  // allow for the whole transaction).
  // Pure-prefix support (EngineImpl::prefix): runPhase starts at startPos_;
  // with pureOnly_ set it stops before the first rule not marked pure there
  // and records that position in stoppedAt_.
  size_t startPos_ = 0;
  const std::vector<uint8_t>* pureOnly_ = nullptr;
  size_t stoppedAt_ = SIZE_MAX;

  bool runPhase(int phase) {
    // Which possibly-empty request collections have members (LinkC::emptyMask);
    // fixed for the phase: the body processor runs between phases.
    ++s_.valueGen;  // the body processor ran between phases: new values
    s_.presentMask = 0;
    const auto mark = [&](bool nonEmpty, int bit) {
      if (nonEmpty) s_.presentMask |= 1u << bit;
    };
    mark(!s_.argsGet.empty() || !s_.argsPost.empty(), 0);
    mark(!s_.argsGet.empty(), 1);
    mark(!s_.argsPost.empty(), 2);
    mark(!s_.cookies.empty(), 3);
    mark(!s_.files.empty(), 4);
    mark(!s_.filesNames.empty(), 5);
    mark(!s_.filesSizes.empty(), 6);
    mark(!s_.multipartHeaders.empty(), 7);
    mark(s_.verdict.bodyProcessor == "XML" && !s_.verdict.bodyError, 8);
    const auto& list = e_.byPhase[static_cast<size_t>(phase)];
    uint32_t skip = 0;
    if (pureOnly_ != nullptr) stoppedAt_ = list.size();
    for (size_t pos = startPos_; pos < list.size(); ++pos) {
      if (mode() == EngineMode::kOff) return false;
      const RuleC& rc = e_.rules[list[pos]];
      if (skip > 0) {
        --skip;
        continue;
      }
      if (pureOnly_ != nullptr && !(*pureOnly_)[list[pos]]) {
        stoppedAt_ = pos;
        return true;
      }
      if (removed(rc)) continue;
      const EngineImpl::RuleHot rh = e_.ruleHot[list[pos]];
      s_.matchedVarsCount = 0;
      bool matched = true;
      const uint8_t fold = e_.fold.empty() ? EngineImpl::kNotFolded : e_.fold[list[pos]];
      if (fold != EngineImpl::kNotFolded && s_.removedTargets.empty()) {
        ++s_.counters.foldedRules;
        if (fold == EngineImpl::kFoldedNoMatch) continue;
        const auto& fm = e_.foldMatched[list[pos]];
        s_.matchedVar.assign(fm.first);
        s_.matchedVarName.assign(fm.second);
      } else {
      for (uint32_t li = 0; li < rh.linkCount; ++li) {
        const uint32_t k = rh.firstLink + li;
        const EngineImpl::LinkHot& h = e_.linkHot[k];
        if ((h.flags & EngineImpl::LinkHot::kSkippableWhenEmpty) != 0 &&
            (h.emptyMask & s_.presentMask) == 0) {
          matched = false;
          break;
        }
        if ((h.flags & EngineImpl::LinkHot::kUseSummary) != 0 && !summaryHas(h.groupId, k)) {
          ++s_.counters.summarySkips;
          matched = false;
          break;
        }
        if (!evalLink(e_.links[k], rc)) {
          matched = false;
          break;
        }
      }
      }
      if (!matched) continue;
      const Rule& rule = *rc.rule;
      for (uint32_t li = rc.linkCount; li-- > 0;) {
        const LinkC& lc = e_.links[rc.firstLink + li];
        if (lc.hasOtherEffects) runEffects(*lc.link, rule);
      }
      ++s_.counters.ruleMatches;
      if (rule.severity) {
        s_.highestSeverity = std::min(s_.highestSeverity, static_cast<int>(*rule.severity));
      }
      if (rc.log && rule.id != 0) {
        MatchedRule mr;
        mr.id = rule.id;
        mr.msg = expand(rule.msg, &rule);
        mr.data = expand(rule.logdata, &rule);
        mr.matchedVar = s_.matchedVarName;
        mr.hasSeverity = rule.severity.has_value();
        mr.severity = rule.severity.value_or(Severity::kNotice);
        mr.phase = static_cast<uint8_t>(phase);
        s_.verdict.matched.push_back(std::move(mr));
      }
      if (rule.skipAfter) {
        const uint32_t resume = rule.skipAfter->resumeIndex;
        auto it = std::lower_bound(list.begin(), list.end(), resume);
        pos = static_cast<size_t>(it - list.begin()) - 1;  // loop adds one
      } else if (rule.skip > 0) {
        skip = rule.skip;
      }
      switch (rc.disruptive) {
        case Disruptive::kDeny:
        case Disruptive::kDrop:
        case Disruptive::kRedirect: {
          const uint16_t status = rc.disruptive == Disruptive::kDeny
                                      ? rc.status
                                      : (rc.disruptive == Disruptive::kRedirect ? 302 : 0);
          if (mode() == EngineMode::kOn) {
            s_.verdict.intervene = true;
            s_.verdict.status = status;
            s_.verdict.ruleId = rule.id;
            return false;
          }
          if (!s_.verdict.wouldIntervene) {
            s_.verdict.wouldIntervene = true;
            s_.verdict.ruleId = rule.id;
            s_.verdict.status = status;
          }
          break;
        }
        case Disruptive::kAllow:
          if (mode() == EngineMode::kOn) {
            s_.verdict.allowed = true;
            if (rule.allowScope == AllowScope::kPhase) return true;  // next phase runs
            return false;
          }
          break;
        default: break;
      }
    }
    return true;
  }

 private:
  TxState& s_;
  const EngineImpl& e_;
};

void precomputePurePrefix(EngineImpl& e) {
  e.prefix.reset();
  if (e.mode == EngineMode::kOff) return;
  TxState s;
  s.start = std::chrono::steady_clock::now();
  s.eng = &e;
  Evaluator ev(s, e);
  ev.pureOnly_ = &e.rulePure;
  const bool okp = ev.runPhase(1);
  // A disruptive action fired (a missing crs-setup.conf trips 901001): the
  // verdict depends on the mode at run time; leave it all to evaluate().
  if (!okp || s.verdict.intervene || s.verdict.wouldIntervene || s.verdict.allowed) return;
  if (ev.stoppedAt_ == 0 || ev.stoppedAt_ == SIZE_MAX) return;
  EngineImpl::Prefix p;
  p.pos = ev.stoppedAt_;
  for (size_t i = 0; i < s.tx.size(); ++i) p.tx.push_back(s.tx[i]);
  p.matched = s.verdict.matched;
  p.highestSeverity = s.highestSeverity;
  p.matchedVar = s.matchedVar;
  p.matchedVarName = s.matchedVarName;
  p.ruleMatches = s.counters.ruleMatches;
  e.stats.purePrefixRules = p.pos;
  e.prefix = std::move(p);
}

void foldConstantRules(EngineImpl& e) {
  e.fold.assign(e.rules.size(), EngineImpl::kNotFolded);
  e.foldMatched.assign(e.rules.size(), {});
  if (!e.prefix || e.mode == EngineMode::kOff) return;
  // TX keys written by any rule that can run after the prefix (any phase-1
  // rule from the prefix end on, every phase-2 rule), pure or not: a key
  // written there may hold a request-dependent value, or be written or not
  // depending on the request's path through skipAfter.
  std::vector<std::string> written;
  // Keys built with macros are known by their fixed start ("header_name_"
  // for tx.header_name_%{tx.0}; %{rule.id} resolved), any key with it.
  std::vector<std::string> writtenPrefixes;
  bool writesUnknown = false;  // a setvar key that starts with a macro
  const auto& p1 = e.byPhase[1];
  const auto& p2 = e.byPhase[2];
  auto scanWrites = [&](uint32_t ri) {
    const RuleC& rc = e.rules[ri];
    for (uint32_t li = 0; li < rc.linkCount; ++li) {
      const LinkC& lc = e.links[rc.firstLink + li];
      if (lc.link->capture) {
        for (char d = '0'; d <= '9'; ++d) written.emplace_back(1, d);
      }
      for (const SideEffect& fx : lc.link->effects) {
        const auto* sv = std::get_if<SetVar>(&fx);
        if (sv == nullptr || sv->collection != VariableName::kTx) continue;
        if (sv->key.hasMacros()) {
          std::string prefix;
          for (const auto& part : sv->key.parts) {
            if (!part.ref) {
              prefix += lowered(part.literal);
            } else if (part.ref->variable == VariableName::kRule && iequals(part.ref->key, "id")) {
              prefix += std::to_string(rc.rule->id);
            } else {
              break;
            }
          }
          if (prefix.empty()) writesUnknown = true;
          writtenPrefixes.push_back(std::move(prefix));
        } else {
          written.push_back(lowered(sv->key.text));
        }
      }
    }
  };
  for (size_t pos = e.prefix->pos; pos < p1.size(); ++pos) scanWrites(p1[pos]);
  for (uint32_t ri : p2) scanWrites(ri);
  if (writesUnknown) return;
  std::sort(written.begin(), written.end());
  const auto isWritten = [&](const std::string& k) {
    if (std::binary_search(written.begin(), written.end(), k)) return true;
    for (const std::string& pre : writtenPrefixes) {
      if (k.compare(0, pre.size(), pre) == 0) return true;
    }
    return false;
  };
  // Whether every TX read of rule rc is an exact key nobody writes later.
  const auto readsConstant = [&](const RuleC& rc) {
    for (uint32_t li = 0; li < rc.linkCount; ++li) {
      const LinkC& lc = e.links[rc.firstLink + li];
      if (!lc.link->effects.empty() || lc.link->capture) return false;
      for (const auto* list : {&lc.targets, &lc.exclusions}) {
        for (const TargetC& t : *list) {
          if (t.var.selectorKind != SelectorKind::kLiteral || isWritten(t.lowerSelector)) return false;
        }
      }
      for (const auto& part : lc.link->op.expandable.parts) {
        if (!part.ref) continue;
        if (part.ref->variable != VariableName::kTx || isWritten(lowered(part.ref->key))) return false;
      }
    }
    return true;
  };
  TxState s;
  s.start = std::chrono::steady_clock::now();
  s.eng = &e;
  Evaluator ev(s, e);
  auto consider = [&](uint32_t ri) {
    const RuleC& rc = e.rules[ri];
    if (!e.rulePure[ri] || rc.log || !readsConstant(rc)) return;
    // Evaluate against the prefix's TX (fresh state per rule).
    s.tx.clear();
    for (const auto& [k, v] : e.prefix->tx) s.tx.set(k, v);
    s.matchedVar.clear();
    s.matchedVarName.clear();
    bool matched = true;
    for (uint32_t li = 0; li < rc.linkCount && matched; ++li) {
      matched = ev.evalLink(e.links[rc.firstLink + li], rc);
    }
    e.fold[ri] = matched ? EngineImpl::kFoldedMatch : EngineImpl::kFoldedNoMatch;
    if (matched) e.foldMatched[ri] = {s.matchedVar, s.matchedVarName};
  };
  for (size_t pos = e.prefix->pos; pos < p1.size(); ++pos) consider(p1[pos]);
  for (uint32_t ri : p2) consider(ri);
  size_t n = 0;
  for (uint8_t f : e.fold) n += f != EngineImpl::kNotFolded ? 1 : 0;
  e.stats.foldedRules = n;
}

void addMembers(TxState& s, std::vector<Member>& out, const std::vector<BodyArg>& args) {
  for (const auto& [k, v] : args) {
    out.push_back(Member{k, v, s.nextVid, s.nextVid + 1});
    s.nextVid += 2;
  }
}

// Cookie header(s) split ModSecurity v3's way: on ';', leading whitespace of
// each pair dropped, name up to the first '='.
void parseCookies(TxState& s, std::string_view header) {
  size_t p = 0;
  while (p <= header.size()) {
    size_t e = header.find(';', p);
    if (e == std::string_view::npos) e = header.size();
    std::string_view pair = header.substr(p, e - p);
    while (!pair.empty() && (pair.front() == ' ' || pair.front() == '\t')) pair.remove_prefix(1);
    if (!pair.empty()) {
      const size_t eq = pair.find('=');
      std::string_view name = pair.substr(0, eq);
      std::string_view value = eq == std::string_view::npos ? std::string_view() : pair.substr(eq + 1);
      s.cookies.push_back(Member{name, value, s.nextVid, s.nextVid + 1});
      s.nextVid += 2;
    }
    p = e + 1;
  }
}

std::string_view headerValue(const RequestView& r, std::string_view name) {
  for (const auto& [k, v] : r.headers) {
    if (iequals(k, name)) return v;
  }
  return {};
}

// The body processor chosen from Content-Type before phase 1: ModSecurity
// picks URLENCODED and MULTIPART itself, and JSON / XML through the rules
// 200000 / 200001 of its recommended configuration, which Moat applies
// built in. A ctl:requestBodyProcessor in phase 1 overrides it.
std::string defaultProcessor(const RequestView& r) {
  const std::string ct = lowered(headerValue(r, "Content-Type"));
  if (ct.rfind("application/x-www-form-urlencoded", 0) == 0) return "URLENCODED";
  if (ct.rfind("multipart/form-data", 0) == 0) return "MULTIPART";
  if (ct.rfind("application/json", 0) == 0 ||
      (ct.find("+json") != std::string::npos && ct.rfind("application/", 0) == 0)) {
    return "JSON";
  }
  if (ct.rfind("text/xml", 0) == 0 || ct.rfind("application/xml", 0) == 0 ||
      (ct.find("+xml") != std::string::npos && ct.rfind("application/", 0) == 0)) {
    return "XML";
  }
  return "";
}

void fillRequest(TxState& s, const RequestView& r) {
  s.bodyProcessor = defaultProcessor(r);
  if (!s.bodyProcessor.empty()) {
    setScalarOwned(s, VariableName::kReqbodyProcessor, s.bodyProcessor);
  }
  for (const auto& [k, v] : r.headers) {
    s.headers.push_back(Member{k, v, s.nextVid, s.nextVid + 1});
    s.nextVid += 2;
    if (iequals(k, "Cookie")) parseCookies(s, v);
  }
  setScalar(s, VariableName::kRequestMethod, r.method);
  setScalar(s, VariableName::kRequestProtocol, r.protocol);
  setScalar(s, VariableName::kRequestUriRaw, r.target);
  setScalarOwned(s, VariableName::kRequestLine,
                 std::string(r.method) + " " + std::string(r.target) + " " + std::string(r.protocol));
  // Absolute-form targets lose scheme and authority in REQUEST_URI.
  std::string_view target = r.target;
  if (!target.empty() && target.front() != '/') {
    const size_t scheme = target.find("://");
    if (scheme != std::string_view::npos) {
      const size_t slash = target.find('/', scheme + 3);
      target = slash == std::string_view::npos ? std::string_view("/") : target.substr(slash);
    }
  }
  const size_t q = target.find('?');
  std::string_view path = target.substr(0, q);
  std::string_view query = q == std::string_view::npos ? std::string_view() : target.substr(q + 1);
  setScalarOwned(s, VariableName::kRequestUri, uriDecode(target));
  std::string filename = uriDecode(path);
  const size_t slash = filename.find_last_of("/\\");
  setScalarOwned(s, VariableName::kRequestBasename,
                 slash == std::string::npos ? filename : filename.substr(slash + 1));
  setScalarOwned(s, VariableName::kRequestFilename, std::move(filename));
  setScalar(s, VariableName::kQueryString, query);
  setScalar(s, VariableName::kPathInfo, "");
  setScalar(s, VariableName::kRemoteAddr, r.remoteAddr);
  setScalar(s, VariableName::kRemoteHost, r.remoteAddr);
  setScalarOwned(s, VariableName::kRemotePort, std::to_string(r.remotePort));
  setScalar(s, VariableName::kServerAddr, r.serverAddr);
  setScalarOwned(s, VariableName::kServerPort, std::to_string(r.serverPort));
  std::string_view host = headerValue(r, "Host");
  setScalar(s, VariableName::kServerName, host.substr(0, host.rfind(':') == std::string_view::npos
                                                           ? host.size()
                                                           : host.rfind(':')));
  setScalar(s, VariableName::kUniqueId, r.requestId);
  std::string_view auth = headerValue(r, "Authorization");
  setScalar(s, VariableName::kAuthType, auth.substr(0, auth.find(' ')));
  setScalar(s, VariableName::kRemoteUser, "");
  // Query string arguments.
  s.query.reset();
  if (!query.empty()) parseUrlEncoded(query, BodyLimits{}, s.query);
  addMembers(s, s.argsGet, s.query.args);
  // Time.
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  localtime_r(&now, &tm);
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%02d:%02d:%02d", tm.tm_hour, tm.tm_min, tm.tm_sec);
  setScalarOwned(s, VariableName::kTime, buf);
  setScalarOwned(s, VariableName::kTimeEpoch, std::to_string(static_cast<long long>(now)));
  setScalarOwned(s, VariableName::kTimeYear, std::to_string(tm.tm_year + 1900));
  setScalarOwned(s, VariableName::kTimeMon, std::to_string(tm.tm_mon + 1));
  setScalarOwned(s, VariableName::kTimeDay, std::to_string(tm.tm_mday));
  setScalarOwned(s, VariableName::kTimeHour, std::to_string(tm.tm_hour));
  setScalarOwned(s, VariableName::kTimeMin, std::to_string(tm.tm_min));
  setScalarOwned(s, VariableName::kTimeSec, std::to_string(tm.tm_sec));
  setScalarOwned(s, VariableName::kTimeWday, std::to_string(tm.tm_wday));
  setScalar(s, VariableName::kWebAppId, "default");
  setScalar(s, VariableName::kModsecBuild, "030009");
  // Request body size and full request. REQUEST_BODY is filled after phase 1
  // (processBody), once the processor is known.
  setScalarOwned(s, VariableName::kRequestBodyLength, std::to_string(r.body.size()));
  std::string full = std::string(r.method) + " " + std::string(r.target) + " " +
                     std::string(r.protocol) + "\n";
  for (const auto& [k, v] : r.headers) {
    full.append(k).append(": ").append(v).append("\n");
  }
  full += "\n";
  full.append(r.body);
  setScalarOwned(s, VariableName::kFullRequestLength, std::to_string(full.size()));
  setScalarOwned(s, VariableName::kFullRequest, std::move(full));
}

std::string_view flag(bool b) { return b ? "1" : "0"; }

void processBody(TxState& s, const EngineImpl& e, const RequestView& r) {
  Verdict& v = s.verdict;
  const std::string proc = s.bodyProcessor;
  BodyLimits limits;
  limits.max_body_bytes = e.requestBodyLimit;
  std::string_view body = r.body;
  bool over = r.bodyTruncated || body.size() > e.requestBodyLimit;
  if (over) {
    v.bodyLimitExceeded = true;
    setScalar(s, VariableName::kInboundDataError, "1");
    if (e.bodyLimitAction == BodyLimitAction::kReject) {
      ++s.counters.bodyLimitRejected;
    } else {
      ++s.counters.bodyLimitPartial;
      if (body.size() > e.requestBodyLimit) body = body.substr(0, e.requestBodyLimit);
    }
  } else {
    setScalar(s, VariableName::kInboundDataError, "0");
  }
  s.body.reset();
  // REQUEST_BODY holds the raw body for URL-encoded bodies, or for any body
  // when ctl:forceRequestBodyVariable=On (CRS 901340 sets it when no
  // processor applies), as ModSecurity documents it and as the CRS
  // regression tests expect (944xxx must not fire on multipart bodies).
  // libmodsecurity 3.0.9 sets it for every processor, unlike its docs; the
  // CRS byte-range rules 920272/920273 then fire on JSON and multipart bodies
  // there and not here (docs/WAF.md).
  if (!body.empty() && s.bodyAccess && (proc == "URLENCODED" || s.forceBodyVariable)) {
    setScalar(s, VariableName::kRequestBody, body);
  }
  if (!s.bodyAccess || body.empty() || proc.empty()) {
    if (!proc.empty()) {
      setScalarOwned(s, VariableName::kReqbodyProcessor, proc);
      v.bodyProcessor = s.scalars[static_cast<size_t>(VariableName::kReqbodyProcessor)];
    }
    setScalar(s, VariableName::kReqbodyError, "0");
    setScalar(s, VariableName::kReqbodyProcessorError, "0");
    setScalarOwned(s, VariableName::kArgsCombinedSize, std::to_string(s.query.args_combined_size));
    return;
  }
  if (proc == "URLENCODED") {
    parseUrlEncoded(body, limits, s.body);
  } else if (proc == "MULTIPART") {
    parseMultipart(headerValue(r, "Content-Type"), body, limits, s.body);
  } else if (proc == "JSON") {
    parseJson(body, limits, s.body);
  } else if (proc == "XML") {
    parseXml(body, limits, s.body);
  }
  setScalarOwned(s, VariableName::kReqbodyProcessor, proc);
  v.bodyProcessor = s.scalars[static_cast<size_t>(VariableName::kReqbodyProcessor)];
  addMembers(s, s.argsPost, s.body.args);
  v.bodyError = s.body.reqbody_error;
  if (v.bodyError) ++s.counters.bodyErrors;
  setScalar(s, VariableName::kReqbodyError, flag(s.body.reqbody_error));
  setScalar(s, VariableName::kReqbodyProcessorError, flag(s.body.reqbody_error));
  setScalar(s, VariableName::kReqbodyErrorMsg, s.body.reqbody_error_msg);
  setScalar(s, VariableName::kReqbodyProcessorErrorMsg, s.body.reqbody_error_msg);
  setScalar(s, VariableName::kUrlencodedError,
            flag(s.body.urlencoded_error || s.query.urlencoded_error));
  setScalarOwned(s, VariableName::kArgsCombinedSize,
                 std::to_string(s.query.args_combined_size + s.body.args_combined_size));
  if (proc == "MULTIPART") {
    const MultipartFlags& f = s.body.multipart;
    setScalar(s, VariableName::kMultipartStrictError, flag(f.strictError()));
    setScalar(s, VariableName::kMultipartUnmatchedBoundary, flag(f.unmatched_boundary));
    setScalar(s, VariableName::kMultipartBoundaryQuoted, flag(f.boundary_quoted));
    setScalar(s, VariableName::kMultipartBoundaryWhitespace, flag(f.boundary_whitespace));
    setScalar(s, VariableName::kMultipartDataBefore, flag(f.data_before));
    setScalar(s, VariableName::kMultipartDataAfter, flag(f.data_after));
    setScalar(s, VariableName::kMultipartHeaderFolding, flag(f.header_folding));
    setScalar(s, VariableName::kMultipartLfLine, flag(f.lf_line));
    setScalar(s, VariableName::kMultipartCrlfLfLines, flag(f.crlfLfLines()));
    setScalar(s, VariableName::kMultipartMissingSemicolon, flag(f.missing_semicolon));
    setScalar(s, VariableName::kMultipartInvalidQuoting, flag(f.invalid_quoting));
    setScalar(s, VariableName::kMultipartInvalidPart, flag(f.invalid_part));
    setScalar(s, VariableName::kMultipartInvalidHeaderFolding, flag(f.invalid_header_folding));
    setScalar(s, VariableName::kMultipartFileLimitExceeded, flag(f.file_limit_exceeded));
    if (!s.body.multipart_names.empty()) {
      setScalar(s, VariableName::kMultipartName, s.body.multipart_names.back());
    }
    if (!s.body.multipart_filenames.empty()) {
      setScalar(s, VariableName::kMultipartFilename, s.body.multipart_filenames.back());
    }
    addMembers(s, s.files, s.body.files);
    for (const auto& n : s.body.files_names) {
      s.filesNames.push_back(Member{n, n, s.nextVid, s.nextVid});
      ++s.nextVid;
    }
    for (const auto& [n, size] : s.body.files_sizes) {
      s.filesSizes.push_back(Member{n, s.keep(std::to_string(size)), s.nextVid, s.nextVid + 1});
      s.nextVid += 2;
    }
    addMembers(s, s.multipartHeaders, s.body.multipart_part_headers);
    setScalarOwned(s, VariableName::kFilesCombinedSize, std::to_string(s.body.files_combined_size));
  }
}

}  // namespace

Transaction::Transaction() : state_(std::make_unique<TxState>()) {}
Transaction::~Transaction() = default;
const EngineCounters& Transaction::counters() const { return state_->counters; }

std::optional<std::string> Transaction::tx(std::string_view key) const {
  if (const std::string* v = collGet(state_->tx, lowered(key))) return *v;
  return std::nullopt;
}

const Verdict& Transaction::evaluate(const Engine& engine, const RequestView& request) {
  TxState& s = *state_;
  const EngineImpl& e = engine.impl();
  // Reset per-transaction state (capacities kept).
  s.arena.clear();
  s.nextVid = 0;
  for (auto* v : {&s.headers, &s.cookies, &s.argsGet, &s.argsPost, &s.files, &s.filesNames,
                  &s.filesSizes, &s.multipartHeaders, &s.env}) {
    v->clear();
  }
  s.scalarSet.fill(false);
  for (auto* c : {&s.tx, &s.ip, &s.global, &s.session, &s.user, &s.resource}) c->clear();
  s.matchedVar.clear();
  s.matchedVarName.clear();
  s.matchedVarsCount = 0;
  s.captures.clear();
  // Only the slots the last transaction wrote (the vector keeps the size of
  // the largest request seen; clearing all of it cost a big memset a request).
  std::fill(s.scanSlot.begin(), s.scanSlot.begin() + static_cast<std::ptrdiff_t>(s.slotsDirty), 0u);
  s.slotsDirty = 0;
  std::fill(s.vidClasses.begin(), s.vidClasses.begin() + static_cast<std::ptrdiff_t>(s.vidClassesDirty), 0u);
  s.vidClassesDirty = 0;
  s.scansUsed = 0;
  s.removedIds.clear();
  s.removedTags.clear();
  s.removedTargets.clear();
  s.modeOverride.reset();
  s.bodyProcessor.clear();
  s.bodyAccess = e.requestBodyAccess;
  s.forceBodyVariable = false;
  s.highestSeverity = 255;
  s.verdict = Verdict{};
  s.start = std::chrono::steady_clock::now();
  s.eng = &e;
  s.req = &request;
  ++s.counters.transactions;
  if (e.mode == EngineMode::kOff) return s.verdict;

  if (s.scratchFor != &e) {
    // First evaluation with this engine (a new snapshot): size the scratch
    // space for every group. Allocates, once per engine per worker.
    s.pscratch.clear();
    s.pscratch.resize(e.groups.size());
    for (size_t g = 0; g < e.groups.size(); ++g) {
      if (e.groups[g]) s.pscratch[g].prepare(*e.groups[g]);
    }
    s.scratchFor = &e;
  }
  fillRequest(s, request);
  Evaluator ev(s, e);
  if (e.prefix) {
    // Start after the pure prefix with the state it leaves (identical to
    // running it: see EngineImpl::Prefix).
    const EngineImpl::Prefix& p = *e.prefix;
    for (const auto& [k, v] : p.tx) s.tx.set(k, v);
    s.verdict.matched = p.matched;
    s.highestSeverity = p.highestSeverity;
    s.matchedVar = p.matchedVar;
    s.matchedVarName = p.matchedVarName;
    s.counters.ruleMatches += p.ruleMatches;
    ev.startPos_ = p.pos;
  }
  bool go = ev.runPhase(1);
  ev.startPos_ = 0;
  if (go) {
    processBody(s, e, request);
    if (s.verdict.bodyLimitExceeded && e.bodyLimitAction == BodyLimitAction::kReject) {
      if (ev.mode() == EngineMode::kOn) {
        s.verdict.intervene = true;
        s.verdict.status = 413;
        go = false;
      } else {
        s.verdict.wouldIntervene = true;
        s.verdict.status = 413;
      }
    }
  }
  if (go) ev.runPhase(2);
  if (const std::string* a = collGet(s.tx, "anomaly_score")) {
    s.verdict.anomalyScore = static_cast<int>(toInt(*a));
  }
  if (const std::string* a = collGet(s.tx, "inbound_anomaly_score")) {
    s.verdict.anomalyScore = std::max(s.verdict.anomalyScore, static_cast<int>(toInt(*a)));
  }
  if (s.verdict.intervene) ++s.counters.interventions;
  if (s.verdict.wouldIntervene) ++s.counters.detectOnlyInterventions;
  uint64_t limitHits = 0;
  for (const auto& ps : s.pscratch) limitHits += ps.pcreLimitHits;
  s.counters.pcreLimitHits = limitHits;
  return s.verdict;
}

namespace {
void jsonEscape(std::string& out, std::string_view s) {
  static const char* hex = "0123456789abcdef";
  for (unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20 || c >= 0x7f) {
          out += "\\u00";
          out += hex[c >> 4];
          out += hex[c & 15];
        } else {
          out += static_cast<char>(c);
        }
    }
  }
}
}  // namespace

std::string auditJson(const RequestView& r, const Verdict& v, EngineMode mode) {
  std::string o = "{\"request_id\":\"";
  jsonEscape(o, r.requestId);
  o += "\",\"client\":\"";
  jsonEscape(o, r.remoteAddr);
  o += "\",\"client_port\":" + std::to_string(r.remotePort) + ",\"method\":\"";
  jsonEscape(o, r.method);
  o += "\",\"uri\":\"";
  jsonEscape(o, r.target);
  o += "\",\"anomaly_score\":" + std::to_string(v.anomalyScore) + ",\"action\":\"";
  if (v.intervene) {
    o += "blocked";
  } else if (v.wouldIntervene) {
    o += "detected";
  } else if (v.allowed) {
    o += "allowed";
  } else {
    o += "passed";
  }
  o += "\",\"status\":" + std::to_string(v.status) + ",\"rule\":" + std::to_string(v.ruleId) +
       ",\"mode\":\"" + std::string(toString(mode)) + "\",\"rules\":[";
  bool first = true;
  for (const auto& m : v.matched) {
    if (!first) o += ',';
    first = false;
    o += "{\"id\":" + std::to_string(m.id) + ",\"msg\":\"";
    jsonEscape(o, m.msg);
    o += "\",\"data\":\"";
    jsonEscape(o, m.data.size() > 512 ? std::string_view(m.data).substr(0, 512) : m.data);
    o += "\",\"var\":\"";
    jsonEscape(o, m.matchedVar);
    o += "\"}";
  }
  o += "]}";
  return o;
}

}  // namespace moat::waf
