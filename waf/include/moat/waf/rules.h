// Loader for the ModSecurity rule language, as far as the OWASP Core Rule Set
// 3.3 uses it, producing a typed AST that the WAF engine compiles.
//
// Control plane only: loading reads files, allocates freely and takes a few tens
// of milliseconds for the whole CRS; never call it from a worker. Every function
// here is reentrant (no global state) and may run on any thread. A RuleSet is a
// plain value that owns all its strings: build it once, compile it, then drop it
// or keep it read-only; nothing in it points back into loader state.
//
// The text is read the way Debian's engine (Apache httpd + mod_security2) reads
// it, because that is what the CRS is written and tested against:
//  - a line ending in a single `\` continues on the next line (the backslash
//    and newline are removed, the next line's indentation is kept). Errors
//    name the line where the directive starts, and add "(on line N)" when the
//    offending text is further down. A comment ending in `\` would swallow the
//    next line in Apache: that is reported rather than repeated;
//  - arguments are split on whitespace; in a quoted argument (`"` or `'`) only
//    `\\` and `\<quote>` lose their backslash, and in an unquoted one only `\\`.
//    Every other backslash is kept, so `"@rx \d+\""` gives the pattern `\d+"`
//    and `"@rx [a-z]:\\\\inetpub"` gives `[a-z]:\\inetpub`;
//  - inside the variable and action lists a value may be single-quoted, where
//    `\'` and `\\` are the only escapes (anything else after `\` is an error);
//    an unquoted value ends at `,`, `|` or whitespace.
// Directive, variable, operator, action and transformation names are
// case-insensitive, as in ModSecurity; the AST holds canonical spellings.
//
// SecRuleRemoveById/ByTag/ByMsg and SecRuleUpdateTargetBy*/ActionById are
// applied while loading and, as in ModSecurity, affect only rules defined
// before them. Their tag/msg patterns are POSIX extended regexes searched
// unanchored (ModSecurity uses PCRE; the plain words used in practice match the
// same). SecDefaultAction applies per phase, to rules defined after it.
//
// Anything the loader does not understand is an error naming the file and
// line: nothing is skipped silently.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

namespace moat::waf {

struct LoadError {
  std::string file;  // path as given or as resolved by Include; "" for whole-load problems
  int line = 0;      // 1-based line where the directive starts; 0 = the file as a whole
  std::string message;
};

// At most this many errors are collected per load; the rest are dropped and a
// final "too many errors" entry says so.
inline constexpr size_t kMaxLoadErrors = 100;

// Include nesting deeper than this is an error (it is almost surely a cycle).
inline constexpr int kMaxIncludeDepth = 16;

enum class Phase : uint8_t {
  kRequestHeaders = 1,
  kRequestBody = 2,   // also written "request"
  kResponseHeaders = 3,
  kResponseBody = 4,  // also written "response"
  kLogging = 5,       // also written "logging"
};

// Every variable (target) name the loader accepts. Collections take an
// optional `:selector` and the `&` count prefix; scalars take neither.
enum class VariableName : uint8_t {
  // Collections.
  kArgs, kArgsGet, kArgsPost, kArgsNames, kArgsGetNames, kArgsPostNames,
  kRequestHeaders, kRequestHeadersNames, kRequestCookies, kRequestCookiesNames,
  kResponseHeaders, kResponseHeadersNames,
  kFiles, kFilesNames, kFilesSizes, kFilesTmpNames, kMultipartPartHeaders,
  kMatchedVars, kMatchedVarsNames, kXml, kGeo, kEnv, kRule,
  kTx, kIp, kGlobal, kSession, kUser, kResource,
  // Scalars: request.
  kArgsCombinedSize, kFilesCombinedSize, kRequestUri, kRequestUriRaw, kRequestFilename,
  kRequestBasename, kRequestLine, kRequestMethod, kRequestProtocol, kQueryString,
  kRequestBody, kRequestBodyLength, kFullRequest, kFullRequestLength, kPathInfo,
  kRemoteAddr, kRemoteHost, kRemotePort, kRemoteUser, kServerAddr, kServerName, kServerPort,
  kAuthType, kUniqueId,
  // Scalars: body processing results.
  kReqbodyError, kReqbodyErrorMsg, kReqbodyProcessor, kReqbodyProcessorError,
  kReqbodyProcessorErrorMsg, kInboundDataError, kOutboundDataError, kUrlencodedError,
  kMultipartStrictError, kMultipartUnmatchedBoundary, kMultipartBoundaryQuoted,
  kMultipartBoundaryWhitespace, kMultipartDataBefore, kMultipartDataAfter,
  kMultipartHeaderFolding, kMultipartLfLine, kMultipartCrlfLfLines,
  kMultipartMissingSemicolon, kMultipartInvalidQuoting, kMultipartInvalidPart,
  kMultipartInvalidHeaderFolding, kMultipartFileLimitExceeded, kMultipartFilename,
  kMultipartName,
  // Scalars: response.
  kResponseBody, kResponseStatus, kResponseProtocol, kResponseContentLength,
  kResponseContentType, kStatusLine,
  // Scalars: matching state, time, engine.
  kMatchedVar, kMatchedVarName, kHighestSeverity, kDuration, kTime, kTimeDay, kTimeEpoch,
  kTimeHour, kTimeMin, kTimeMon, kTimeSec, kTimeWday, kTimeYear, kSessionId, kUserId,
  kWebAppId, kModsecBuild,
};

// Canonical ModSecurity spelling, e.g. "REQUEST_COOKIES_NAMES".
std::string_view toString(VariableName name);
bool isCollection(VariableName name);

// A reference inside a macro: %{MATCHED_VAR}, %{tx.0}, %{REQUEST_HEADERS.host}.
struct MacroRef {
  VariableName variable = VariableName::kTx;
  std::string key;  // text after the first '.', as written; "" for %{MATCHED_VAR}-style scalars
};

// A string that may contain %{...} macros, split once at load so the engine
// expands it by concatenation. ModSecurity looks collection keys up
// case-insensitively; keys are kept as written.
struct MacroString {
  struct Part {
    std::string literal;         // used when !ref
    std::optional<MacroRef> ref;
  };
  std::string text;          // the whole string as written (after quoting rules)
  std::vector<Part> parts;   // in order; empty when text is empty
  bool hasMacros() const;
};

enum class SelectorKind : uint8_t { kNone, kLiteral, kRegex };

// One entry of a target list, e.g. `!REQUEST_COOKIES:/__utm/` or `&ARGS:foo`.
struct Variable {
  VariableName name = VariableName::kArgs;
  SelectorKind selectorKind = SelectorKind::kNone;
  std::string selector;  // key, XPath (XML) or regex body without the slashes
  bool exclude = false;  // `!`: remove matching members from the other targets
  bool count = false;    // `&`: the number of members instead of their values
};

enum class OperatorKind : uint8_t {
  kRx, kPm, kPmFromFile, kContains, kContainsWord, kBeginsWith, kEndsWith, kStreq,
  kStrmatch, kWithin, kEq, kGe, kGt, kLe, kLt, kIpMatch, kIpMatchFromFile,
  kValidateByteRange, kValidateUrlEncoding, kValidateUtf8Encoding, kDetectSqli,
  kDetectXss, kUnconditionalMatch, kNoMatch, kGeoLookup, kRbl,
};

std::string_view toString(OperatorKind kind);  // "rx", "pmFromFile", ...

struct Operator {
  OperatorKind kind = OperatorKind::kRx;
  bool negated = false;  // written "!@name ..."
  // Parameter after the operator name (leading whitespace removed). Regex
  // patterns are not compiled or checked here: the matcher's compiler does it.
  std::string argument;
  // The argument with macros split out, for operators that expand them at run
  // time (rx, contains, containsWord, beginsWith, endsWith, streq, strmatch,
  // within, eq, ge, gt, le, lt). Empty parts for the others. In a regex,
  // %{...} that does not name a known variable stays literal, as ModSecurity does.
  MacroString expandable;
  // kPm: the phrases of the argument; kPmFromFile: every phrase line of the
  // data files (trimmed, no blank or '#' lines); both after ModSecurity's
  // |hex| and \-escape decoding. kIpMatch / kIpMatchFromFile: the addresses or
  // CIDR blocks, validated.
  std::vector<std::string> phrases;
  std::vector<std::string> dataFiles;  // resolved paths read, for the *FromFile kinds
};

enum class SetVarOp : uint8_t {
  kSet,        // col.key=value, or col.key alone (value "1")
  kIncrement,  // col.key=+amount
  kDecrement,  // col.key=-amount (ModSecurity clamps the result at 0)
  kDelete,     // !col.key
};

// setvar:'tx.%{rule.id}-x=+%{tx.critical_anomaly_score}'
struct SetVar {
  VariableName collection = VariableName::kTx;  // kTx, kIp, kGlobal, kSession, kUser or kResource
  MacroString key;
  SetVarOp op = SetVarOp::kSet;
  MacroString value;  // kSet: the value; kIncrement / kDecrement: the amount without sign
};

// expirevar:'ip.reput_block_flag=%{tx.reput_block_duration}'
struct ExpireVar {
  VariableName collection = VariableName::kIp;
  MacroString key;
  MacroString seconds;
};

// initcol:ip=%{remote_addr}_%{tx.ua_hash}
struct InitCol {
  VariableName collection = VariableName::kIp;
  MacroString key;
};

// setenv:name=value
struct SetEnv {
  MacroString name;
  MacroString value;
};

struct IdRange {
  uint32_t first = 0, last = 0;  // inclusive
  bool contains(uint32_t id) const { return id >= first && id <= last; }
};

enum class CtlKind : uint8_t {
  kRuleEngine, kRequestBodyAccess, kRequestBodyProcessor, kRequestBodyLimit,
  kForceRequestBodyVariable, kResponseBodyAccess, kResponseBodyLimit, kAuditEngine,
  kAuditLogParts, kDebugLogLevel, kRuleRemoveById, kRuleRemoveByTag, kRuleRemoveByMsg,
  kRuleRemoveTargetById, kRuleRemoveTargetByTag, kRuleRemoveTargetByMsg,
};

// ctl:name=value. Values of the engine switches are validated (On/Off, body
// processor names, audit parts, numbers) but kept as written.
struct Ctl {
  CtlKind kind = CtlKind::kRuleEngine;
  std::string name;   // canonical, e.g. "ruleRemoveTargetById"
  std::string value;  // everything after '='
  std::vector<IdRange> ids;        // kRuleRemoveById, kRuleRemoveTargetById
  std::string pattern;             // k*ByTag / k*ByMsg: the regex matched against tags / msg
  std::optional<Variable> target;  // kRuleRemoveTarget*: the target to drop
};

// Non-disruptive actions that change state, in the order written: the order
// matters (a setvar may read what an earlier one wrote).
using SideEffect = std::variant<SetVar, ExpireVar, InitCol, SetEnv, Ctl>;

enum class Disruptive : uint8_t {
  kNone,   // not given: inherit from the SecDefaultAction in force
  kPass, kBlock, kDeny, kDrop, kAllow, kRedirect,
};
enum class AllowScope : uint8_t { kTransaction, kPhase, kRequest };  // allow, allow:phase, allow:request

enum class Severity : uint8_t {
  kEmergency = 0, kAlert, kCritical, kError, kWarning, kNotice, kInfo, kDebug,
};

// The matching part of one SecRule (or SecAction): the rule itself or one of
// the rules chained to it.
struct RuleLink {
  std::vector<Variable> variables;  // empty for SecAction
  Operator op;                      // kUnconditionalMatch for SecAction
  // Transformation names in canonical spelling, after the last t:none. Names
  // are checked against ModSecurity's list, not implemented here.
  std::vector<std::string> transformations;
  bool transformationsReset = false;  // t:none present: do not inherit SecDefaultAction's
  bool capture = false;
  bool multiMatch = false;
  std::optional<bool> log;       // log / nolog; nullopt = inherit
  std::optional<bool> auditLog;  // auditlog / noauditlog; nullopt = inherit
  std::vector<SideEffect> effects;
  std::string file;
  int line = 0;
};

struct SkipAfter {
  std::string target;        // marker name (or rule id) as written
  uint32_t resumeIndex = 0;  // index in RuleSet::rules of the first rule to run next
};

struct Rule {
  uint32_t id = 0;
  Phase phase = Phase::kRequestBody;  // 2 when not written
  bool isSecAction = false;
  Disruptive disruptive = Disruptive::kNone;
  AllowScope allowScope = AllowScope::kTransaction;  // for kAllow
  MacroString redirectUrl;                           // for kRedirect
  std::optional<uint16_t> status;
  MacroString msg, logdata;
  std::vector<MacroString> tags;
  std::optional<Severity> severity;
  std::string ver, rev;
  std::optional<uint8_t> maturity, accuracy;  // 1..9
  uint32_t skip = 0;                          // skip:N
  std::optional<SkipAfter> skipAfter;         // resolved and validated at load
  // Index into RuleSet::defaultActions of the SecDefaultAction for this rule's
  // phase that was in force where the rule was defined; -1 = none (ModSecurity
  // then uses "phase:2,log,auditlog,pass").
  int32_t defaultActionIndex = -1;
  // links[0] is this rule's own variables/operator/transformations/effects;
  // links[1..] are the rules chained to it, in order. All must match.
  std::vector<RuleLink> links;
};

// SecMarker: skipAfter resumes at rules[ruleIndex] (== rules.size() when the
// marker is last).
struct Marker {
  std::string name;
  uint32_t ruleIndex = 0;
  std::string file;
  int line = 0;
};

// SecDefaultAction "phase:N,<disruptive>,...".
struct DefaultAction {
  Phase phase = Phase::kRequestBody;
  Disruptive disruptive = Disruptive::kPass;
  AllowScope allowScope = AllowScope::kTransaction;
  MacroString redirectUrl;
  std::optional<uint16_t> status;
  std::vector<std::string> transformations;
  bool transformationsReset = false;
  std::optional<bool> log, auditLog;
  std::string file;
  int line = 0;
};

// Engine configuration directives (SecRuleEngine, SecRequestBodyAccess,
// SecCollectionTimeout, ...), kept as written for the engine to apply or
// refuse. The name is canonical; arguments are after quoting rules.
struct Setting {
  std::string name;
  std::vector<std::string> args;
  std::string file;
  int line = 0;
};

struct RuleSet {
  // In definition order, after SecRuleRemove* / SecRuleUpdate* were applied.
  std::vector<Rule> rules;
  std::vector<Marker> markers;  // in definition order
  std::vector<DefaultAction> defaultActions;
  std::vector<Setting> settings;
  std::vector<std::string> componentSignatures;  // SecComponentSignature
  // Every file read (rule files, includes, data files) in the order read; a
  // data file used by several rules is read and listed once.
  std::vector<std::string> files;
  // SHA-256 over a format tag and, for each file above in order, its path and
  // content: a key for caching whatever is compiled from this RuleSet.
  std::array<uint8_t, 32> contentHash{};
  // Directives that were valid but changed nothing, e.g. SecRuleRemoveById
  // naming no rule defined before it (the classic misplaced exclusion).
  std::vector<LoadError> warnings;
};

// Loads the files in order as one configuration (as if each were Included in
// turn). Relative Include / data file paths resolve against the directory of
// the file that names them. On success returns the RuleSet; on any error
// returns nullopt and appends every error found (up to kMaxLoadErrors) to
// *errors when errors is not null. Blocks on file I/O.
std::optional<RuleSet> loadRuleFiles(const std::vector<std::string>& paths,
                                     std::vector<LoadError>* errors);

// Same for rules held in memory (tests, pushed configs). virtualFileName names
// the text in errors and in the hash; Include and data files resolve against
// baseDir.
std::optional<RuleSet> loadRuleText(std::string_view text, std::string_view virtualFileName,
                                    const std::string& baseDir, std::vector<LoadError>* errors);

// Lowercase hex of RuleSet::contentHash (64 characters).
std::string contentHashHex(const RuleSet& ruleSet);

// Linear search by id; nullptr when absent. The pointer lives as long as the
// RuleSet is neither destroyed nor modified.
const Rule* findRule(const RuleSet& ruleSet, uint32_t id);

}  // namespace moat::waf
