// ModSecurity rule language loader: see moat/waf/rules.h for the contract.
//
// Layout of this file, bottom-up:
//   tables      names of variables, operators, actions, transformations, directives
//   lexing      physical lines -> logical lines (Apache continuation rules) -> tokens
//               (Apache ap_getword_conf quoting) -> name:value lists (ModSecurity's
//               msre_parse_generic, used for both target and action lists)
//   parsing     macros, variables, operators (+ data files), actions
//   Loader      directive semantics: chains, SecRuleRemove*/SecRuleUpdate*,
//               markers, defaults, includes, and the final resolution pass
#include "moat/waf/rules.h"
#include "ascii.h"

#include <arpa/inet.h>
#include <glob.h>
#include <openssl/evp.h>
#include <regex.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cerrno>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <sstream>
#include <string>
#include <system_error>
#include <unordered_map>
#include <vector>

namespace moat::waf {
namespace {

namespace fs = std::filesystem;

// ---------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------

bool isSpace(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

using detail::iequals;
using detail::lowerAscii;

bool istartsWith(std::string_view s, std::string_view prefix) {
  return s.size() >= prefix.size() && iequals(s.substr(0, prefix.size()), prefix);
}

std::string_view trim(std::string_view s) {
  size_t b = 0, e = s.size();
  while (b < e && isSpace(s[b])) ++b;
  while (e > b && isSpace(s[e - 1])) --e;
  return s.substr(b, e - b);
}

// Decimal digits only (no sign), value <= max.
std::optional<uint64_t> parseUnsigned(std::string_view s, uint64_t max) {
  if (s.empty() || s.size() > 19) return std::nullopt;
  uint64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return std::nullopt;
    v = v * 10 + static_cast<uint64_t>(c - '0');
  }
  if (v > max) return std::nullopt;
  return v;
}

bool isInteger(std::string_view s) {
  if (!s.empty() && (s[0] == '-' || s[0] == '+')) s.remove_prefix(1);
  return parseUnsigned(s, UINT64_MAX / 10).has_value();
}

std::string quoteForMessage(std::string_view s) {
  constexpr size_t kMax = 80;
  std::string out = "'";
  out.append(s.substr(0, kMax));
  if (s.size() > kMax) out += "...";
  out += "'";
  return out;
}

std::vector<std::string> splitOnWhitespace(std::string_view s) {
  std::vector<std::string> out;
  size_t i = 0;
  while (i < s.size()) {
    while (i < s.size() && isSpace(s[i])) ++i;
    size_t b = i;
    while (i < s.size() && !isSpace(s[i])) ++i;
    if (i > b) out.emplace_back(s.substr(b, i - b));
  }
  return out;
}

std::vector<std::string_view> splitOn(std::string_view s, char sep) {
  std::vector<std::string_view> out;
  size_t b = 0;
  for (;;) {
    size_t e = s.find(sep, b);
    out.push_back(s.substr(b, e == std::string_view::npos ? std::string_view::npos : e - b));
    if (e == std::string_view::npos) break;
    b = e + 1;
  }
  return out;
}

// ---------------------------------------------------------------------------
// Tables
// ---------------------------------------------------------------------------

struct VariableInfo {
  std::string_view name;
  VariableName id;
  bool collection;
};

using V = VariableName;
constexpr VariableInfo kVariables[] = {
    {"ARGS", V::kArgs, true},
    {"ARGS_GET", V::kArgsGet, true},
    {"ARGS_POST", V::kArgsPost, true},
    {"ARGS_NAMES", V::kArgsNames, true},
    {"ARGS_GET_NAMES", V::kArgsGetNames, true},
    {"ARGS_POST_NAMES", V::kArgsPostNames, true},
    {"REQUEST_HEADERS", V::kRequestHeaders, true},
    {"REQUEST_HEADERS_NAMES", V::kRequestHeadersNames, true},
    {"REQUEST_COOKIES", V::kRequestCookies, true},
    {"REQUEST_COOKIES_NAMES", V::kRequestCookiesNames, true},
    {"RESPONSE_HEADERS", V::kResponseHeaders, true},
    {"RESPONSE_HEADERS_NAMES", V::kResponseHeadersNames, true},
    {"FILES", V::kFiles, true},
    {"FILES_NAMES", V::kFilesNames, true},
    {"FILES_SIZES", V::kFilesSizes, true},
    {"FILES_TMPNAMES", V::kFilesTmpNames, true},
    {"MULTIPART_PART_HEADERS", V::kMultipartPartHeaders, true},
    {"MATCHED_VARS", V::kMatchedVars, true},
    {"MATCHED_VARS_NAMES", V::kMatchedVarsNames, true},
    {"XML", V::kXml, true},
    {"GEO", V::kGeo, true},
    {"ENV", V::kEnv, true},
    {"RULE", V::kRule, true},
    {"TX", V::kTx, true},
    {"IP", V::kIp, true},
    {"GLOBAL", V::kGlobal, true},
    {"SESSION", V::kSession, true},
    {"USER", V::kUser, true},
    {"RESOURCE", V::kResource, true},
    {"ARGS_COMBINED_SIZE", V::kArgsCombinedSize, false},
    {"FILES_COMBINED_SIZE", V::kFilesCombinedSize, false},
    {"REQUEST_URI", V::kRequestUri, false},
    {"REQUEST_URI_RAW", V::kRequestUriRaw, false},
    {"REQUEST_FILENAME", V::kRequestFilename, false},
    {"REQUEST_BASENAME", V::kRequestBasename, false},
    {"REQUEST_LINE", V::kRequestLine, false},
    {"REQUEST_METHOD", V::kRequestMethod, false},
    {"REQUEST_PROTOCOL", V::kRequestProtocol, false},
    {"QUERY_STRING", V::kQueryString, false},
    {"REQUEST_BODY", V::kRequestBody, false},
    {"REQUEST_BODY_LENGTH", V::kRequestBodyLength, false},
    {"FULL_REQUEST", V::kFullRequest, false},
    {"FULL_REQUEST_LENGTH", V::kFullRequestLength, false},
    {"PATH_INFO", V::kPathInfo, false},
    {"REMOTE_ADDR", V::kRemoteAddr, false},
    {"REMOTE_HOST", V::kRemoteHost, false},
    {"REMOTE_PORT", V::kRemotePort, false},
    {"REMOTE_USER", V::kRemoteUser, false},
    {"SERVER_ADDR", V::kServerAddr, false},
    {"SERVER_NAME", V::kServerName, false},
    {"SERVER_PORT", V::kServerPort, false},
    {"AUTH_TYPE", V::kAuthType, false},
    {"UNIQUE_ID", V::kUniqueId, false},
    {"REQBODY_ERROR", V::kReqbodyError, false},
    {"REQBODY_ERROR_MSG", V::kReqbodyErrorMsg, false},
    {"REQBODY_PROCESSOR", V::kReqbodyProcessor, false},
    {"REQBODY_PROCESSOR_ERROR", V::kReqbodyProcessorError, false},
    {"REQBODY_PROCESSOR_ERROR_MSG", V::kReqbodyProcessorErrorMsg, false},
    {"INBOUND_DATA_ERROR", V::kInboundDataError, false},
    {"OUTBOUND_DATA_ERROR", V::kOutboundDataError, false},
    {"URLENCODED_ERROR", V::kUrlencodedError, false},
    {"MULTIPART_STRICT_ERROR", V::kMultipartStrictError, false},
    {"MULTIPART_UNMATCHED_BOUNDARY", V::kMultipartUnmatchedBoundary, false},
    {"MULTIPART_BOUNDARY_QUOTED", V::kMultipartBoundaryQuoted, false},
    {"MULTIPART_BOUNDARY_WHITESPACE", V::kMultipartBoundaryWhitespace, false},
    {"MULTIPART_DATA_BEFORE", V::kMultipartDataBefore, false},
    {"MULTIPART_DATA_AFTER", V::kMultipartDataAfter, false},
    {"MULTIPART_HEADER_FOLDING", V::kMultipartHeaderFolding, false},
    {"MULTIPART_LF_LINE", V::kMultipartLfLine, false},
    {"MULTIPART_CRLF_LF_LINES", V::kMultipartCrlfLfLines, false},
    {"MULTIPART_MISSING_SEMICOLON", V::kMultipartMissingSemicolon, false},
    {"MULTIPART_INVALID_QUOTING", V::kMultipartInvalidQuoting, false},
    {"MULTIPART_INVALID_PART", V::kMultipartInvalidPart, false},
    {"MULTIPART_INVALID_HEADER_FOLDING", V::kMultipartInvalidHeaderFolding, false},
    {"MULTIPART_FILE_LIMIT_EXCEEDED", V::kMultipartFileLimitExceeded, false},
    {"MULTIPART_FILENAME", V::kMultipartFilename, false},
    {"MULTIPART_NAME", V::kMultipartName, false},
    {"RESPONSE_BODY", V::kResponseBody, false},
    {"RESPONSE_STATUS", V::kResponseStatus, false},
    {"RESPONSE_PROTOCOL", V::kResponseProtocol, false},
    {"RESPONSE_CONTENT_LENGTH", V::kResponseContentLength, false},
    {"RESPONSE_CONTENT_TYPE", V::kResponseContentType, false},
    {"STATUS_LINE", V::kStatusLine, false},
    {"MATCHED_VAR", V::kMatchedVar, false},
    {"MATCHED_VAR_NAME", V::kMatchedVarName, false},
    {"HIGHEST_SEVERITY", V::kHighestSeverity, false},
    {"DURATION", V::kDuration, false},
    {"TIME", V::kTime, false},
    {"TIME_DAY", V::kTimeDay, false},
    {"TIME_EPOCH", V::kTimeEpoch, false},
    {"TIME_HOUR", V::kTimeHour, false},
    {"TIME_MIN", V::kTimeMin, false},
    {"TIME_MON", V::kTimeMon, false},
    {"TIME_SEC", V::kTimeSec, false},
    {"TIME_WDAY", V::kTimeWday, false},
    {"TIME_YEAR", V::kTimeYear, false},
    {"SESSIONID", V::kSessionId, false},
    {"USERID", V::kUserId, false},
    {"WEBAPPID", V::kWebAppId, false},
    {"MODSEC_BUILD", V::kModsecBuild, false},
};

const VariableInfo* findVariable(std::string_view name) {
  for (const auto& v : kVariables) {
    if (iequals(v.name, name)) return &v;
  }
  return nullptr;
}

const VariableInfo& variableInfo(VariableName id) {
  // Indexed once (the engine asks for names on every match): enumerators
  // are small integers; any not in the table maps to the first entry.
  static const std::array<const VariableInfo*, 256> byId = [] {
    std::array<const VariableInfo*, 256> t{};
    t.fill(&kVariables[0]);
    for (const auto& v : kVariables) t[static_cast<uint8_t>(v.id)] = &v;
    return t;
  }();
  return *byId[static_cast<uint8_t>(id)];
}

// Collections setvar / expirevar / initcol may write.
bool isWritableCollection(VariableName v) {
  return v == V::kTx || v == V::kIp || v == V::kGlobal || v == V::kSession || v == V::kUser ||
         v == V::kResource;
}

enum class ArgPolicy : uint8_t { kNone, kOptional, kRequired };

struct OperatorInfo {
  std::string_view name;
  OperatorKind kind;
  ArgPolicy arg;
  bool macros;  // argument is macro-expanded at run time
};

using O = OperatorKind;
constexpr OperatorInfo kOperators[] = {
    {"rx", O::kRx, ArgPolicy::kOptional, true},
    {"pm", O::kPm, ArgPolicy::kRequired, false},
    {"pmFromFile", O::kPmFromFile, ArgPolicy::kRequired, false},
    {"pmf", O::kPmFromFile, ArgPolicy::kRequired, false},
    {"contains", O::kContains, ArgPolicy::kOptional, true},
    {"containsWord", O::kContainsWord, ArgPolicy::kOptional, true},
    {"beginsWith", O::kBeginsWith, ArgPolicy::kOptional, true},
    {"endsWith", O::kEndsWith, ArgPolicy::kOptional, true},
    {"streq", O::kStreq, ArgPolicy::kOptional, true},
    {"strmatch", O::kStrmatch, ArgPolicy::kRequired, true},
    {"within", O::kWithin, ArgPolicy::kOptional, true},
    {"eq", O::kEq, ArgPolicy::kRequired, true},
    {"ge", O::kGe, ArgPolicy::kRequired, true},
    {"gt", O::kGt, ArgPolicy::kRequired, true},
    {"le", O::kLe, ArgPolicy::kRequired, true},
    {"lt", O::kLt, ArgPolicy::kRequired, true},
    {"ipMatch", O::kIpMatch, ArgPolicy::kRequired, false},
    {"ipMatchFromFile", O::kIpMatchFromFile, ArgPolicy::kRequired, false},
    {"ipMatchF", O::kIpMatchFromFile, ArgPolicy::kRequired, false},
    {"validateByteRange", O::kValidateByteRange, ArgPolicy::kRequired, false},
    {"validateUrlEncoding", O::kValidateUrlEncoding, ArgPolicy::kNone, false},
    {"validateUtf8Encoding", O::kValidateUtf8Encoding, ArgPolicy::kNone, false},
    {"detectSQLi", O::kDetectSqli, ArgPolicy::kNone, false},
    {"detectXSS", O::kDetectXss, ArgPolicy::kNone, false},
    {"unconditionalMatch", O::kUnconditionalMatch, ArgPolicy::kNone, false},
    {"noMatch", O::kNoMatch, ArgPolicy::kNone, false},
    {"geoLookup", O::kGeoLookup, ArgPolicy::kNone, false},
    {"rbl", O::kRbl, ArgPolicy::kRequired, false},
};

// Operators ModSecurity has that Moat deliberately does not run.
constexpr std::string_view kUnsupportedOperators[] = {
    "inspectFile", "fuzzyHash",      "gsbLookup", "rsub",     "validateDTD",
    "validateSchema", "validateHash", "verifyCC",  "verifyCPF", "verifySSN",
};

constexpr std::string_view kTransformations[] = {
    "base64Decode",    "base64DecodeExt",  "base64Encode",   "cmdLine",
    "compressWhitespace", "cssDecode",     "escapeSeqDecode", "hexDecode",
    "hexEncode",       "htmlEntityDecode", "jsDecode",       "length",
    "lowercase",       "md5",              "none",           "normalisePath",
    "normalizePath",   "normalisePathWin", "normalizePathWin", "parityEven7bit",
    "parityOdd7bit",   "parityZero7bit",   "removeComments", "removeCommentsChar",
    "removeNulls",     "removeWhitespace", "replaceComments", "replaceNulls",
    "sha1",            "sqlHexDecode",     "trim",           "trimLeft",
    "trimRight",       "uppercase",        "urlDecode",      "urlDecodeUni",
    "urlEncode",       "utf8toUnicode",
};

constexpr std::string_view kActions[] = {
    "accuracy", "allow", "auditlog", "block", "capture", "chain", "ctl", "deny",
    "drop", "expirevar", "id", "initcol", "log", "logdata", "maturity", "msg",
    "multiMatch", "noauditlog", "nolog", "pass", "phase", "redirect", "rev", "setenv",
    "setvar", "severity", "skip", "skipAfter", "status", "t", "tag", "ver",
};

constexpr std::string_view kUnsupportedActions[] = {
    "append", "deprecatevar", "exec", "pause", "prepend", "proxy", "sanitiseArg",
    "sanitiseMatched", "sanitiseMatchedBytes", "sanitiseRequestHeader",
    "sanitiseResponseHeader", "setsid", "setuid", "setrsc", "xmlns",
};

constexpr std::string_view kSeverities[] = {
    "EMERGENCY", "ALERT", "CRITICAL", "ERROR", "WARNING", "NOTICE", "INFO", "DEBUG",
};

struct CtlInfo {
  std::string_view name;
  CtlKind kind;
};
constexpr CtlInfo kCtls[] = {
    {"ruleEngine", CtlKind::kRuleEngine},
    {"requestBodyAccess", CtlKind::kRequestBodyAccess},
    {"requestBodyProcessor", CtlKind::kRequestBodyProcessor},
    {"requestBodyLimit", CtlKind::kRequestBodyLimit},
    {"forceRequestBodyVariable", CtlKind::kForceRequestBodyVariable},
    {"responseBodyAccess", CtlKind::kResponseBodyAccess},
    {"responseBodyLimit", CtlKind::kResponseBodyLimit},
    {"auditEngine", CtlKind::kAuditEngine},
    {"auditLogParts", CtlKind::kAuditLogParts},
    {"debugLogLevel", CtlKind::kDebugLogLevel},
    {"ruleRemoveById", CtlKind::kRuleRemoveById},
    {"ruleRemoveByTag", CtlKind::kRuleRemoveByTag},
    {"ruleRemoveByMsg", CtlKind::kRuleRemoveByMsg},
    {"ruleRemoveTargetById", CtlKind::kRuleRemoveTargetById},
    {"ruleRemoveTargetByTag", CtlKind::kRuleRemoveTargetByTag},
    {"ruleRemoveTargetByMsg", CtlKind::kRuleRemoveTargetByMsg},
};

// Engine directives kept as Settings. `values` lists the accepted words
// ('|'-separated, case-insensitive); "#" means a decimal number; "" = any.
struct SettingInfo {
  std::string_view name;
  uint8_t minArgs, maxArgs;
  std::string_view values;
};
constexpr SettingInfo kSettings[] = {
    {"SecRuleEngine", 1, 1, "On|Off|DetectionOnly"},
    {"SecRequestBodyAccess", 1, 1, "On|Off"},
    {"SecResponseBodyAccess", 1, 1, "On|Off"},
    {"SecRequestBodyLimit", 1, 1, "#"},
    {"SecRequestBodyNoFilesLimit", 1, 1, "#"},
    {"SecRequestBodyInMemoryLimit", 1, 1, "#"},
    {"SecRequestBodyLimitAction", 1, 1, "Reject|ProcessPartial"},
    {"SecRequestBodyJsonDepthLimit", 1, 1, "#"},
    {"SecResponseBodyLimit", 1, 1, "#"},
    {"SecResponseBodyLimitAction", 1, 1, "Reject|ProcessPartial"},
    {"SecResponseBodyMimeType", 1, 255, ""},
    {"SecResponseBodyMimeTypesClear", 0, 0, ""},
    {"SecArgumentSeparator", 1, 1, ""},
    {"SecArgumentsLimit", 1, 1, "#"},
    {"SecCookieFormat", 1, 1, "0|1"},
    {"SecCookieV0Separator", 1, 1, ""},
    {"SecCollectionTimeout", 1, 1, "#"},
    {"SecPcreMatchLimit", 1, 1, "#"},
    {"SecPcreMatchLimitRecursion", 1, 1, "#"},
    {"SecAuditEngine", 1, 1, "On|Off|RelevantOnly"},
    {"SecAuditLog", 1, 2, ""},
    {"SecAuditLog2", 1, 1, ""},
    {"SecAuditLogParts", 1, 1, ""},
    {"SecAuditLogRelevantStatus", 1, 1, ""},
    {"SecAuditLogType", 1, 1, "Serial|Concurrent|HTTPS"},
    {"SecAuditLogFormat", 1, 1, "JSON|Native"},
    {"SecAuditLogStorageDir", 1, 1, ""},
    {"SecAuditLogDirMode", 1, 1, ""},
    {"SecAuditLogFileMode", 1, 1, ""},
    {"SecDebugLog", 1, 1, ""},
    {"SecDebugLogLevel", 1, 1, "#"},
    {"SecDataDir", 1, 1, ""},
    {"SecTmpDir", 1, 1, ""},
    {"SecUploadDir", 1, 1, ""},
    {"SecUploadFileLimit", 1, 1, "#"},
    {"SecUploadFileMode", 1, 1, ""},
    {"SecUploadKeepFiles", 1, 1, "On|Off|RelevantOnly"},
    {"SecTmpSaveUploadedFiles", 1, 1, "On|Off"},
    {"SecUnicodeMapFile", 1, 2, ""},
    {"SecUnicodeCodePage", 1, 1, "#"},
    {"SecGeoLookupDb", 1, 1, ""},
    {"SecHttpBlKey", 1, 1, ""},
    {"SecServerSignature", 1, 1, ""},
    {"SecStatusEngine", 1, 1, "On|Off"},
    {"SecWebAppId", 1, 1, ""},
    {"SecSensorId", 1, 1, ""},
    {"SecXmlExternalEntity", 1, 1, "On|Off"},
    {"SecInterceptOnError", 1, 1, "On|Off"},
    {"SecConnEngine", 1, 1, "On|Off|DetectionOnly"},
    {"SecRuleInheritance", 1, 1, "On|Off"},
    {"SecStreamInBodyInspection", 1, 1, "On|Off"},
    {"SecStreamOutBodyInspection", 1, 1, "On|Off"},
    {"SecContentInjection", 1, 1, "On|Off"},
    {"SecDisableBackendCompression", 1, 1, "On|Off"},
    {"SecRulePerfTime", 1, 1, "#"},
    {"SecReadStateLimit", 1, 1, "#"},
    {"SecWriteStateLimit", 1, 1, "#"},
    {"SecConnReadStateLimit", 1, 2, ""},
    {"SecConnWriteStateLimit", 1, 2, ""},
    {"SecGuardianLog", 1, 1, ""},
    {"SecChrootDir", 1, 1, ""},
};

// Directives that exist but load code or rules from elsewhere: refused.
constexpr std::string_view kUnsupportedDirectives[] = {
    "SecRuleScript", "SecRemoteRules", "SecRemoteRulesFailAction", "SecCacheTransformations",
    "SecHashEngine", "SecHashKey",     "SecHashParam",  "SecHashMethodRx",
    "SecHashMethodPm", "SecGsbLookupDb",
};

template <typename Table>
std::string_view canonicalName(const Table& table, std::string_view name) {
  for (std::string_view n : table) {
    if (iequals(n, name)) return n;
  }
  return {};
}

bool wordInList(std::string_view word, std::string_view list) {
  for (std::string_view w : splitOn(list, '|')) {
    if (iequals(w, word)) return true;
  }
  return false;
}

// ---------------------------------------------------------------------------
// Lexing: logical lines and Apache tokens
// ---------------------------------------------------------------------------

struct LogicalLine {
  std::string text;
  int firstLine = 0;
  // (offset in text where a physical line starts, its 1-based number)
  std::vector<std::pair<size_t, int>> starts;

  int lineAt(size_t offset) const {
    int line = firstLine;
    for (const auto& [off, num] : starts) {
      if (off > offset) break;
      line = num;
    }
    return line;
  }
};

// One argument of a directive, after Apache's quoting rules.
struct Token {
  std::string text;
  size_t rawStart = 0;  // offset in the logical line of text[0]'s source
  // Indexes in `text` whose character followed a backslash that was dropped.
  std::vector<uint32_t> dropped;
  bool quoted = false;

  size_t rawOffset(size_t index) const {
    size_t before = static_cast<size_t>(
        std::upper_bound(dropped.begin(), dropped.end(), static_cast<uint32_t>(index)) -
        dropped.begin());
    return rawStart + index + before;
  }
};

// Apache ap_getword_conf: returns false (and the offset) on an unterminated quote.
bool tokenize(const std::string& line, std::vector<Token>& out, size_t* badQuoteAt) {
  size_t i = 0, n = line.size();
  for (;;) {
    while (i < n && isSpace(line[i])) ++i;
    if (i >= n) return true;
    Token tok;
    char quote = line[i];
    if (quote == '"' || quote == '\'') {
      tok.quoted = true;
      size_t start = i;
      ++i;
      tok.rawStart = i;
      bool closed = false;
      while (i < n) {
        char c = line[i];
        if (c == '\\' && i + 1 < n && (line[i + 1] == quote || line[i + 1] == '\\')) {
          tok.dropped.push_back(static_cast<uint32_t>(tok.text.size()));
          tok.text += line[i + 1];
          i += 2;
        } else if (c == quote) {
          closed = true;
          ++i;
          break;
        } else {
          tok.text += c;
          ++i;
        }
      }
      if (!closed) {
        *badQuoteAt = start;
        return false;
      }
    } else {
      tok.rawStart = i;
      while (i < n && !isSpace(line[i])) {
        if (line[i] == '\\' && i + 1 < n && line[i + 1] == '\\') {
          tok.dropped.push_back(static_cast<uint32_t>(tok.text.size()));
          tok.text += '\\';
          i += 2;
        } else {
          tok.text += line[i];
          ++i;
        }
      }
    }
    out.push_back(std::move(tok));
  }
}

// One `name[:value]` of a target or action list (ModSecurity msre_parse_generic).
struct NameValue {
  std::string name;
  std::optional<std::string> value;
  bool quoted = false;
  size_t nameAt = 0, valueAt = 0;  // indexes in the parsed text
};

struct ListError {
  size_t at = 0;
  std::string message;
};

std::optional<ListError> splitList(std::string_view s, std::vector<NameValue>& out) {
  auto sep = [](char c) { return c == ',' || c == '|'; };
  size_t p = 0, n = s.size();
  while (p < n) {
    while (p < n && isSpace(s[p])) ++p;
    if (p >= n) break;
    NameValue nv;
    nv.nameAt = p;
    while (p < n && !sep(s[p]) && s[p] != ':' && !isSpace(s[p])) ++p;
    nv.name = std::string(s.substr(nv.nameAt, p - nv.nameAt));
    if (p >= n || s[p] != ':') {
      out.push_back(std::move(nv));
      while (p < n && isSpace(s[p])) ++p;
      if (p >= n) break;
      if (sep(s[p])) {
        ++p;
        continue;
      }
      return ListError{p, std::string("unexpected character '") + s[p] + "' (missing ','?)"};
    }
    ++p;  // ':'
    nv.valueAt = p;
    if (p >= n || sep(s[p])) {  // "name:" is a name without value
      out.push_back(std::move(nv));
      if (p < n) ++p;
      continue;
    }
    std::string value;
    if (s[p] == '\'') {
      size_t open = p;
      nv.quoted = true;
      nv.valueAt = ++p;
      bool closed = false;
      while (p < n) {
        if (s[p] == '\\') {
          if (p + 1 >= n || (s[p + 1] != '\'' && s[p + 1] != '\\')) {
            return ListError{p, "invalid escape in single-quoted value: only \\' and \\\\ are "
                                "allowed (ModSecurity rejects others)"};
          }
          value += s[p + 1];
          p += 2;
        } else if (s[p] == '\'') {
          closed = true;
          ++p;
          break;
        } else {
          value += s[p++];
        }
      }
      if (!closed) return ListError{open, "missing closing single quote"};
    } else {
      size_t b = p;
      while (p < n && !sep(s[p]) && !isSpace(s[p])) ++p;
      value = std::string(s.substr(b, p - b));
    }
    nv.value = std::move(value);
    out.push_back(std::move(nv));
    while (p < n && (isSpace(s[p]) || sep(s[p]))) ++p;
  }
  return std::nullopt;
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

// Where a directive came from, to turn offsets into file:line errors.
struct Site {
  const std::string* file = nullptr;
  const LogicalLine* line = nullptr;
};

class ErrorSink {
 public:
  explicit ErrorSink(std::vector<LoadError>* out) : out_(out) {}

  void add(std::string file, int line, std::string message) {
    ++count_;
    if (count_ > kMaxLoadErrors) {
      if (count_ == kMaxLoadErrors + 1 && out_ != nullptr) {
        out_->push_back({"", 0, "too many errors; further errors not reported"});
      }
      return;
    }
    if (out_ != nullptr) out_->push_back({std::move(file), line, std::move(message)});
  }
  size_t count() const { return count_; }

 private:
  std::vector<LoadError>* out_;
  size_t count_ = 0;
};

// Reports errors for one token of a directive; `index` is an index into
// token->text (shifted by `shift`), mapped back to the physical line.
struct Reporter {
  ErrorSink* sink = nullptr;
  Site site;
  const Token* token = nullptr;
  size_t shift = 0;

  void operator()(size_t index, const std::string& message) const {
    int first = site.line->firstLine;
    int line = first;
    if (token != nullptr) line = site.line->lineAt(token->rawOffset(index + shift));
    std::string text = message;
    if (line != first) text += " (on line " + std::to_string(line) + ")";
    sink->add(*site.file, first, std::move(text));
  }
  Reporter shifted(size_t by) const {
    Reporter r = *this;
    r.shift += by;
    return r;
  }
};

// ---------------------------------------------------------------------------
// Macros
// ---------------------------------------------------------------------------

void appendLiteral(MacroString& m, std::string_view text) {
  if (text.empty()) return;
  if (!m.parts.empty() && !m.parts.back().ref) {
    m.parts.back().literal.append(text);
  } else {
    m.parts.push_back({std::string(text), std::nullopt});
  }
}

// Splits %{NAME} / %{NAME.key} references out of `text`. With lenient set
// (regex operands), a reference that does not name a variable stays literal as
// ModSecurity leaves it; otherwise it is an error.
std::optional<MacroString> parseMacros(std::string_view text, bool lenient, const Reporter& rep) {
  MacroString m;
  m.text = std::string(text);
  size_t p = 0;
  bool ok = true;
  while (p < text.size()) {
    size_t open = text.find("%{", p);
    if (open == std::string_view::npos) break;
    size_t close = text.find('}', open + 2);
    if (close == std::string_view::npos) break;
    appendLiteral(m, text.substr(p, open - p));
    std::string_view inner = text.substr(open + 2, close - open - 2);
    size_t dot = inner.find('.');
    std::string_view name = inner.substr(0, dot);
    std::string_view key = dot == std::string_view::npos ? std::string_view{} : inner.substr(dot + 1);
    const VariableInfo* var = findVariable(name);
    std::string problem;
    if (var == nullptr) {
      problem = "unknown variable in macro %{" + std::string(inner) + "}";
    } else if (!var->collection && dot != std::string_view::npos) {
      problem = "macro %{" + std::string(inner) + "}: " + std::string(var->name) +
                " is not a collection and takes no key";
    } else if (var->collection && key.empty()) {
      problem = "macro %{" + std::string(inner) + "} needs a key, e.g. %{" +
                std::string(var->name) + ".name}";
    }
    if (problem.empty()) {
      m.parts.push_back({"", MacroRef{var->id, std::string(key)}});
    } else if (lenient) {
      appendLiteral(m, text.substr(open, close + 1 - open));
    } else {
      rep(open, problem);
      ok = false;
    }
    p = close + 1;
  }
  appendLiteral(m, text.substr(std::min(p, text.size())));
  if (!ok) return std::nullopt;
  return m;
}

// ---------------------------------------------------------------------------
// Variables
// ---------------------------------------------------------------------------

bool sameVariable(const Variable& a, const Variable& b) {
  return a.name == b.name && a.exclude == b.exclude && a.count == b.count &&
         a.selectorKind == b.selectorKind && iequals(a.selector, b.selector);
}

std::optional<Variable> makeVariable(const NameValue& nv, const Reporter& rep) {
  std::string_view name = nv.name;
  Variable v;
  if (!name.empty() && (name[0] == '!' || name[0] == '&')) {
    (name[0] == '!' ? v.exclude : v.count) = true;
    name.remove_prefix(1);
  }
  if (!name.empty() && (name[0] == '!' || name[0] == '&')) {
    rep(nv.nameAt, "a target takes '!' or '&', not both: " + quoteForMessage(nv.name));
    return std::nullopt;
  }
  if (name.empty()) {
    rep(nv.nameAt, "empty target name");
    return std::nullopt;
  }
  std::optional<std::string> selector = nv.value;
  const VariableInfo* info = nullptr;
  if (istartsWith(name, "HTTP_") && name.size() > 5 && !selector) {
    // ModSecurity: HTTP_<name> is REQUEST_HEADERS:<name>.
    info = findVariable("REQUEST_HEADERS");
    selector = std::string(name.substr(5));
  } else {
    info = findVariable(name);
  }
  if (info == nullptr) {
    rep(nv.nameAt, "unknown variable " + quoteForMessage(name));
    return std::nullopt;
  }
  v.name = info->id;
  if (selector && !selector->empty()) {
    if (!info->collection) {
      rep(nv.nameAt, std::string(info->name) + " is not a collection and takes no ':selector'");
      return std::nullopt;
    }
    const std::string& s = *selector;
    if (s.size() > 2 && s.front() == '/' && s.back() == '/') {
      v.selectorKind = SelectorKind::kRegex;
      v.selector = s.substr(1, s.size() - 2);
    } else {
      v.selectorKind = SelectorKind::kLiteral;
      v.selector = s;
    }
  }
  if (v.count && !info->collection) {
    rep(nv.nameAt, "'&' counts members of a collection; " + std::string(info->name) +
                       " is not one");
    return std::nullopt;
  }
  return v;
}

bool parseVariables(std::string_view text, std::vector<Variable>& out, const Reporter& rep) {
  std::vector<NameValue> items;
  if (auto err = splitList(text, items)) {
    rep(err->at, "in target list: " + err->message);
    return false;
  }
  if (items.empty()) {
    rep(0, "empty target list");
    return false;
  }
  bool ok = true;
  for (const auto& nv : items) {
    if (auto v = makeVariable(nv, rep)) {
      out.push_back(std::move(*v));
    } else {
      ok = false;
    }
  }
  return ok;
}

// ---------------------------------------------------------------------------
// Operator arguments and data files
// ---------------------------------------------------------------------------

// ModSecurity's parse_pm_content: optional surrounding double quotes, |hex|
// byte runs and the escapes \: \; \\ \". Returns nullopt where ModSecurity
// falls back to the undecoded text (empty content, unsupported escape).
std::optional<std::string> decodePmContent(std::string_view in, bool stripQuotes) {
  size_t off = 0;
  while (off < in.size() && isSpace(in[off])) ++off;
  std::string_view parm = in.substr(off);
  if (stripQuotes && parm.size() >= 2 && parm.front() == '"' && parm.back() == '"') {
    parm = parm.substr(1, parm.size() - 2);
  }
  if (parm.empty()) return std::nullopt;
  std::string out;
  bool bin = false, esc = false, converted = false;
  std::string hex;
  for (char c : parm) {
    if (c == '|') {
      bin = !bin;
    } else if (!esc && c == '\\') {
      esc = true;
    } else if (bin) {
      if (std::isxdigit(static_cast<unsigned char>(c))) {
        hex += c;
        if (hex.size() == 2) {
          out += static_cast<char>(std::stoi(hex, nullptr, 16));
          hex.clear();
          converted = true;
        }
      }
    } else if (esc) {
      if (c != ':' && c != ';' && c != '\\' && c != '"') return std::nullopt;
      out += c;
      esc = false;
      converted = true;
    } else {
      out += c;
    }
  }
  if (!converted) return std::string(parm);
  return out;
}

// "a.b.c.d[/n]" or IPv6 "x::y[/n]".
bool validIpEntry(std::string_view entry) {
  std::string addr(entry);
  int maxPrefix = 32;
  std::optional<uint64_t> prefix;
  size_t slash = addr.find('/');
  if (slash != std::string::npos) {
    prefix = parseUnsigned(std::string_view(addr).substr(slash + 1), 128);
    if (!prefix) return false;
    addr.resize(slash);
  }
  unsigned char buf[16];
  if (inet_pton(AF_INET, addr.c_str(), buf) == 1) {
    maxPrefix = 32;
  } else if (inet_pton(AF_INET6, addr.c_str(), buf) == 1) {
    maxPrefix = 128;
  } else {
    return false;
  }
  return !prefix || *prefix <= static_cast<uint64_t>(maxPrefix);
}

// "9,10,13,32-126": single bytes or ranges, 0..255.
bool validByteRange(std::string_view arg) {
  for (std::string_view part : splitOn(arg, ',')) {
    part = trim(part);
    size_t dash = part.find('-');
    auto lo = parseUnsigned(trim(part.substr(0, dash)), 255);
    if (!lo) return false;
    if (dash != std::string_view::npos) {
      auto hi = parseUnsigned(trim(part.substr(dash + 1)), 255);
      if (!hi || *hi < *lo) return false;
    }
  }
  return true;
}

// ---------------------------------------------------------------------------
// Actions
// ---------------------------------------------------------------------------

// Everything an action list may say, before it is known whether the list
// belongs to a rule, a chained rule, SecDefaultAction or SecRuleUpdateActionById.
struct ParsedActions {
  std::optional<uint32_t> id;
  std::optional<Phase> phase;
  std::optional<Disruptive> disruptive;
  AllowScope allowScope = AllowScope::kTransaction;
  MacroString redirectUrl;
  std::optional<uint16_t> status;
  std::optional<MacroString> msg, logdata;
  std::vector<MacroString> tags;
  std::optional<Severity> severity;
  std::optional<std::string> ver, rev;
  std::optional<uint8_t> maturity, accuracy;
  std::optional<uint32_t> skip;
  std::optional<std::string> skipAfter;
  bool chain = false;

  std::vector<std::string> transformations;
  bool transformationsReset = false;
  bool capture = false, multiMatch = false;
  std::optional<bool> log, auditLog;
  std::vector<SideEffect> effects;

  // Every action seen (canonical name, index of its name in the list text),
  // so the caller can refuse those not allowed where the list appears.
  std::vector<std::pair<std::string_view, size_t>> seen;
};

// Splits "col.key" where the collection is literal and the key may hold macros.
bool parseCollectionKey(std::string_view text, size_t at, VariableName* collection,
                        MacroString* key, const Reporter& rep, std::string_view action) {
  size_t dot = text.find('.');
  size_t macro = text.find("%{");
  if (dot == std::string_view::npos || (macro != std::string_view::npos && macro < dot)) {
    rep(at, std::string(action) + ": expected COLLECTION.name, got " + quoteForMessage(text));
    return false;
  }
  const VariableInfo* info = findVariable(text.substr(0, dot));
  if (info == nullptr || !isWritableCollection(info->id)) {
    rep(at, std::string(action) + ": " + quoteForMessage(text.substr(0, dot)) +
                " is not a writable collection (TX, IP, GLOBAL, SESSION, USER, RESOURCE)");
    return false;
  }
  if (dot + 1 >= text.size()) {
    rep(at, std::string(action) + ": empty variable name in " + quoteForMessage(text));
    return false;
  }
  *collection = info->id;
  auto k = parseMacros(text.substr(dot + 1), false, rep.shifted(at + dot + 1));
  if (!k) return false;
  *key = std::move(*k);
  return true;
}

std::optional<SetVar> parseSetVar(std::string_view v, size_t at, const Reporter& rep) {
  SetVar sv;
  size_t eq = v.find('=');
  std::string_view name = v.substr(0, eq);
  size_t nameAt = at;
  if (!name.empty() && name[0] == '!') {
    if (eq != std::string_view::npos) {
      rep(at, "setvar: '!' deletes a variable and cannot be combined with '='");
      return std::nullopt;
    }
    sv.op = SetVarOp::kDelete;
    name.remove_prefix(1);
    ++nameAt;
  }
  if (!parseCollectionKey(name, nameAt, &sv.collection, &sv.key, rep, "setvar")) {
    return std::nullopt;
  }
  if (sv.op == SetVarOp::kDelete) return sv;
  std::string_view value = "1";
  size_t valueAt = at;
  if (eq != std::string_view::npos) {
    value = v.substr(eq + 1);
    valueAt = at + eq + 1;
    while (!value.empty() && isSpace(value[0])) {
      value.remove_prefix(1);
      ++valueAt;
    }
    if (!value.empty() && (value[0] == '+' || value[0] == '-')) {
      sv.op = value[0] == '+' ? SetVarOp::kIncrement : SetVarOp::kDecrement;
      value.remove_prefix(1);
      ++valueAt;
    }
  }
  auto m = parseMacros(value, false, rep.shifted(valueAt));
  if (!m) return std::nullopt;
  sv.value = std::move(*m);
  return sv;
}

std::vector<IdRange> parseIdRanges(std::string_view text, bool* ok) {
  std::vector<IdRange> out;
  *ok = true;
  for (std::string_view part : splitOn(text, ',')) {
    for (const std::string& word : splitOnWhitespace(part)) {
      std::string_view w = word;
      size_t dash = w.find('-');
      auto first = parseUnsigned(w.substr(0, dash), UINT32_MAX);
      auto last = dash == std::string_view::npos ? first : parseUnsigned(w.substr(dash + 1), UINT32_MAX);
      if (!first || !last || *last < *first) {
        *ok = false;
        return {};
      }
      out.push_back({static_cast<uint32_t>(*first), static_cast<uint32_t>(*last)});
    }
  }
  if (out.empty()) *ok = false;
  return out;
}

std::optional<Ctl> parseCtl(std::string_view v, size_t at, const Reporter& rep) {
  size_t eq = v.find('=');
  if (eq == std::string_view::npos) {
    rep(at, "ctl: expected name=value, got " + quoteForMessage(v));
    return std::nullopt;
  }
  std::string_view name = v.substr(0, eq);
  std::string_view value = v.substr(eq + 1);
  const CtlInfo* info = nullptr;
  for (const auto& c : kCtls) {
    if (iequals(c.name, name)) info = &c;
  }
  if (info == nullptr) {
    rep(at, "ctl: unknown or unsupported option " + quoteForMessage(name));
    return std::nullopt;
  }
  Ctl ctl;
  ctl.kind = info->kind;
  ctl.name = std::string(info->name);
  ctl.value = std::string(value);
  auto bad = [&](std::string_view expected) {
    rep(at, "ctl:" + ctl.name + ": expected " + std::string(expected) + ", got " +
                quoteForMessage(value));
    return std::nullopt;
  };
  switch (info->kind) {
    case CtlKind::kRuleEngine:
      if (!wordInList(value, "On|Off|DetectionOnly")) return bad("On, Off or DetectionOnly");
      break;
    case CtlKind::kRequestBodyAccess:
    case CtlKind::kResponseBodyAccess:
    case CtlKind::kForceRequestBodyVariable:
      if (!wordInList(value, "On|Off|true|false|1|0")) return bad("On or Off");
      break;
    case CtlKind::kRequestBodyProcessor:
      if (!wordInList(value, "URLENCODED|MULTIPART|XML|JSON")) {
        return bad("URLENCODED, MULTIPART, XML or JSON");
      }
      break;
    case CtlKind::kRequestBodyLimit:
    case CtlKind::kResponseBodyLimit:
      if (!parseUnsigned(value, UINT32_MAX)) return bad("a number of bytes");
      break;
    case CtlKind::kDebugLogLevel:
      if (!parseUnsigned(value, 9)) return bad("0..9");
      break;
    case CtlKind::kAuditEngine:
      if (!wordInList(value, "On|Off|RelevantOnly")) return bad("On, Off or RelevantOnly");
      break;
    case CtlKind::kAuditLogParts: {
      std::string_view parts = value;
      if (!parts.empty() && (parts[0] == '+' || parts[0] == '-')) parts.remove_prefix(1);
      bool ok = !parts.empty();
      for (char c : parts) ok = ok && ((c >= 'A' && c <= 'K') || c == 'Z');
      if (!ok) return bad("audit log parts such as ABIJDEFHZ, optionally after + or -");
      break;
    }
    case CtlKind::kRuleRemoveById: {
      bool ok = false;
      ctl.ids = parseIdRanges(value, &ok);
      if (!ok) return bad("a rule id or range such as 1000-1999");
      break;
    }
    case CtlKind::kRuleRemoveByTag:
    case CtlKind::kRuleRemoveByMsg:
      if (value.empty()) return bad("a pattern");
      ctl.pattern = std::string(value);
      break;
    case CtlKind::kRuleRemoveTargetById:
    case CtlKind::kRuleRemoveTargetByTag:
    case CtlKind::kRuleRemoveTargetByMsg: {
      size_t semi = value.find(';');
      if (semi == std::string_view::npos || semi == 0 || semi + 1 >= value.size()) {
        return bad(info->kind == CtlKind::kRuleRemoveTargetById ? "ID;TARGET" : "PATTERN;TARGET");
      }
      std::string_view spec = value.substr(0, semi);
      if (info->kind == CtlKind::kRuleRemoveTargetById) {
        bool ok = false;
        ctl.ids = parseIdRanges(spec, &ok);
        if (!ok) return bad("a rule id or range before ';'");
      } else {
        ctl.pattern = std::string(spec);
      }
      std::vector<Variable> targets;
      size_t targetAt = at + eq + 1 + semi + 1;
      if (!parseVariables(value.substr(semi + 1), targets, rep.shifted(targetAt))) {
        return std::nullopt;
      }
      if (targets.size() != 1) return bad("exactly one target after ';'");
      ctl.target = std::move(targets[0]);
      break;
    }
  }
  return ctl;
}

std::optional<Severity> parseSeverity(std::string_view v) {
  if (auto n = parseUnsigned(v, 7)) return static_cast<Severity>(*n);
  for (size_t i = 0; i < std::size(kSeverities); ++i) {
    if (iequals(kSeverities[i], v)) return static_cast<Severity>(i);
  }
  return std::nullopt;
}

std::optional<Phase> parsePhase(std::string_view v) {
  if (auto n = parseUnsigned(v, 5); n && *n >= 1) return static_cast<Phase>(*n);
  if (iequals(v, "request")) return Phase::kRequestBody;
  if (iequals(v, "response")) return Phase::kResponseBody;
  if (iequals(v, "logging")) return Phase::kLogging;
  return std::nullopt;
}

// Parses one action list. Reports every problem it finds; returns nullopt if
// there was any. `*sawChain` is set when a `chain` action is present even if
// the list is otherwise broken, so the caller can keep the chain structure.
std::optional<ParsedActions> parseActions(std::string_view text, const Reporter& rep,
                                          bool* sawChain) {
  ParsedActions a;
  std::vector<NameValue> items;
  if (auto err = splitList(text, items)) {
    rep(err->at, "in action list: " + err->message);
    for (const auto& nv : items) *sawChain = *sawChain || iequals(nv.name, "chain");
    return std::nullopt;
  }
  bool ok = true;
  for (const auto& nv : items) {
    const size_t at = nv.nameAt, vat = nv.valueAt;
    std::string_view name = canonicalName(kActions, nv.name);
    if (name.empty()) {
      if (nv.name.empty()) {
        rep(at, "empty action name");
      } else if (!canonicalName(kUnsupportedActions, nv.name).empty()) {
        rep(at, "action " + quoteForMessage(nv.name) + " is not supported");
      } else {
        rep(at, "unknown action " + quoteForMessage(nv.name));
      }
      ok = false;
      continue;
    }
    a.seen.emplace_back(name, at);
    const bool flag = name == "pass" || name == "block" || name == "deny" || name == "drop" ||
                      name == "chain" || name == "capture" || name == "multiMatch" ||
                      name == "log" || name == "nolog" || name == "auditlog" ||
                      name == "noauditlog";
    if (flag) {
      if (nv.value) {
        rep(vat, "action '" + std::string(name) + "' takes no value");
        ok = false;
        continue;
      }
    } else if (!nv.value && name != "allow") {
      rep(at, "action '" + std::string(name) + "' needs a value");
      ok = false;
      continue;
    }
    const std::string value = nv.value.value_or("");
    auto fail = [&](const std::string& what) {
      rep(vat, std::string(name) + ": " + what + ", got " + quoteForMessage(value));
      ok = false;
    };
    auto macro = [&]() -> std::optional<MacroString> {
      auto m = parseMacros(value, false, rep.shifted(vat));
      if (!m) ok = false;
      return m;
    };
    if (name == "id") {
      auto id = parseUnsigned(value, INT32_MAX);
      if (!id || *id == 0) {
        fail("expected a rule id 1..2147483647");
        continue;
      }
      a.id = static_cast<uint32_t>(*id);
    } else if (name == "phase") {
      auto ph = parsePhase(value);
      if (!ph) {
        fail("expected 1..5, request, response or logging");
        continue;
      }
      a.phase = *ph;
    } else if (name == "pass") {
      a.disruptive = Disruptive::kPass;
    } else if (name == "block") {
      a.disruptive = Disruptive::kBlock;
    } else if (name == "deny") {
      a.disruptive = Disruptive::kDeny;
    } else if (name == "drop") {
      a.disruptive = Disruptive::kDrop;
    } else if (name == "allow") {
      if (!nv.value) {
        a.allowScope = AllowScope::kTransaction;
      } else if (iequals(value, "phase")) {
        a.allowScope = AllowScope::kPhase;
      } else if (iequals(value, "request")) {
        a.allowScope = AllowScope::kRequest;
      } else {
        fail("expected nothing, 'phase' or 'request'");
        continue;
      }
      a.disruptive = Disruptive::kAllow;
    } else if (name == "redirect") {
      if (auto m = macro()) {
        a.disruptive = Disruptive::kRedirect;
        a.redirectUrl = std::move(*m);
      }
    } else if (name == "status") {
      auto st = parseUnsigned(value, 999);
      if (!st || *st < 100) {
        fail("expected an HTTP status 100..999");
        continue;
      }
      a.status = static_cast<uint16_t>(*st);
    } else if (name == "chain") {
      a.chain = true;
    } else if (name == "capture") {
      a.capture = true;
    } else if (name == "multiMatch") {
      a.multiMatch = true;
    } else if (name == "log" || name == "nolog") {
      a.log = name == "log";
    } else if (name == "auditlog" || name == "noauditlog") {
      a.auditLog = name == "auditlog";
    } else if (name == "t") {
      std::string_view t = canonicalName(kTransformations, value);
      if (t.empty()) {
        rep(vat, "unknown transformation " + quoteForMessage(value));
        ok = false;
        continue;
      }
      if (t == "none") {
        a.transformations.clear();
        a.transformationsReset = true;
      } else {
        a.transformations.emplace_back(t);
      }
    } else if (name == "setvar") {
      if (auto sv = parseSetVar(value, vat, rep)) {
        a.effects.emplace_back(std::move(*sv));
      } else {
        ok = false;
      }
    } else if (name == "expirevar") {
      ExpireVar ev;
      size_t eq = value.find('=');
      std::string_view lhs = std::string_view(value).substr(0, eq);
      std::string_view secs = eq == std::string::npos ? "1" : std::string_view(value).substr(eq + 1);
      auto s = parseMacros(secs, false, rep.shifted(vat + (eq == std::string::npos ? 0 : eq + 1)));
      if (!parseCollectionKey(lhs, vat, &ev.collection, &ev.key, rep, "expirevar") || !s) {
        ok = false;
        continue;
      }
      ev.seconds = std::move(*s);
      a.effects.emplace_back(std::move(ev));
    } else if (name == "initcol") {
      InitCol ic;
      size_t eq = value.find('=');
      const VariableInfo* info =
          eq == std::string::npos ? nullptr : findVariable(std::string_view(value).substr(0, eq));
      if (info == nullptr || !isWritableCollection(info->id) || info->id == V::kTx) {
        fail("expected COLLECTION=key with IP, GLOBAL, SESSION, USER or RESOURCE");
        continue;
      }
      auto k = parseMacros(std::string_view(value).substr(eq + 1), false, rep.shifted(vat + eq + 1));
      if (!k) {
        ok = false;
        continue;
      }
      ic.collection = info->id;
      ic.key = std::move(*k);
      a.effects.emplace_back(std::move(ic));
    } else if (name == "setenv") {
      size_t eq = value.find('=');
      std::string_view n = std::string_view(value).substr(0, eq);
      std::string_view val = eq == std::string::npos ? "1" : std::string_view(value).substr(eq + 1);
      auto mn = parseMacros(n, false, rep.shifted(vat));
      auto mv = parseMacros(val, false, rep.shifted(vat + (eq == std::string::npos ? 0 : eq + 1)));
      if (n.empty()) {
        fail("expected NAME=value");
        continue;
      }
      if (!mn || !mv) {
        ok = false;
        continue;
      }
      a.effects.emplace_back(SetEnv{std::move(*mn), std::move(*mv)});
    } else if (name == "ctl") {
      if (auto c = parseCtl(value, vat, rep)) {
        a.effects.emplace_back(std::move(*c));
      } else {
        ok = false;
      }
    } else if (name == "msg") {
      if (auto m = macro()) a.msg = std::move(*m);
    } else if (name == "logdata") {
      if (auto m = macro()) a.logdata = std::move(*m);
    } else if (name == "tag") {
      if (auto m = macro()) a.tags.push_back(std::move(*m));
    } else if (name == "severity") {
      auto s = parseSeverity(value);
      if (!s) {
        fail("expected 0..7 or EMERGENCY, ALERT, CRITICAL, ERROR, WARNING, NOTICE, INFO, DEBUG");
        continue;
      }
      a.severity = *s;
    } else if (name == "ver") {
      a.ver = value;
    } else if (name == "rev") {
      a.rev = value;
    } else if (name == "maturity" || name == "accuracy") {
      auto n = parseUnsigned(value, 9);
      if (!n || *n == 0) {
        fail("expected 1..9");
        continue;
      }
      (name == "maturity" ? a.maturity : a.accuracy) = static_cast<uint8_t>(*n);
    } else if (name == "skip") {
      auto n = parseUnsigned(value, UINT32_MAX);
      if (!n || *n == 0) {
        fail("expected a positive number of rules");
        continue;
      }
      a.skip = static_cast<uint32_t>(*n);
    } else if (name == "skipAfter") {
      if (value.empty()) {
        fail("expected a marker name");
        continue;
      }
      a.skipAfter = value;
    }
  }
  *sawChain = *sawChain || a.chain;
  if (!ok) return std::nullopt;
  return a;
}

// Reports every action in `a` whose name is in `forbidden`; returns false if any.
template <size_t N>
bool refuseActions(const ParsedActions& a, const std::string_view (&forbidden)[N],
                   const Reporter& rep, std::string_view where) {
  bool ok = true;
  for (const auto& [name, at] : a.seen) {
    if (std::find(std::begin(forbidden), std::end(forbidden), name) != std::end(forbidden)) {
      rep(at, "action '" + std::string(name) + "' is not allowed " + std::string(where));
      ok = false;
    }
  }
  return ok;
}

// Actions ModSecurity accepts only on the first rule of a chain.
constexpr std::string_view kHeadOnlyActions[] = {
    "id",   "phase",    "pass",     "block",   "deny", "drop", "allow", "redirect",
    "status", "msg",    "logdata",  "tag",     "severity", "ver", "rev", "maturity",
    "accuracy", "skip", "skipAfter",
};

// SecDefaultAction gives the phase, disruptive action, transformations and
// logging flags; metadata, flow and state changes are refused.
constexpr std::string_view kNotInDefaultAction[] = {
    "id",       "msg",  "logdata",   "tag",    "severity",  "ver",     "rev",
    "maturity", "accuracy", "chain", "skip",   "skipAfter", "setvar",  "expirevar",
    "initcol",  "setenv", "ctl",     "capture", "multiMatch",
};

constexpr std::string_view kNotInUpdateAction[] = {"id", "phase", "chain"};

// ---------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------

bool readFile(const std::string& path, std::string* out, std::string* error) {
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    *error = "is a directory";
    return false;
  }
  errno = 0;
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    // strerror() is not thread-safe; the category message is.
    *error = errno != 0 ? std::generic_category().message(errno) : std::string("cannot open");
    return false;
  }
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) {
    *error = "read error";
    return false;
  }
  *out = ss.str();
  return true;
}

std::string resolvePath(std::string_view path, const std::string& baseDir) {
  fs::path p{std::string(path)};
  if (p.is_absolute() || baseDir.empty()) return p.lexically_normal().string();
  return (fs::path(baseDir) / p).lexically_normal().string();
}

std::string dirOf(const std::string& file) {
  fs::path parent = fs::path(file).parent_path();
  return parent.empty() ? std::string(".") : parent.string();
}

struct HashCtx {
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx{EVP_MD_CTX_new(), &EVP_MD_CTX_free};
  bool ok = false;

  HashCtx() {
    static constexpr std::string_view kFormat = "moat-waf-rules-v1";
    ok = ctx && EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) == 1;
    update(kFormat);
  }
  void update(std::string_view bytes) {
    ok = ok && EVP_DigestUpdate(ctx.get(), bytes.data(), bytes.size()) == 1;
  }
  void addFile(std::string_view path, std::string_view content) {
    uint64_t sizes[2] = {path.size(), content.size()};
    update(std::string_view(reinterpret_cast<const char*>(sizes), sizeof sizes));
    update(path);
    update(content);
  }
  bool finish(std::array<uint8_t, 32>* out) {
    unsigned int len = 0;
    ok = ok && EVP_DigestFinal_ex(ctx.get(), out->data(), &len) == 1 && len == out->size();
    return ok;
  }
};

// ---------------------------------------------------------------------------
// Loader
// ---------------------------------------------------------------------------

// One load: feed it files or text in order, then call finish() once.
class Loader {
 public:
  explicit Loader(std::vector<LoadError>* errors) : errors_(errors) {}

  void loadTopLevel(const std::string& path) {
    std::string content, why;
    if (!readFile(path, &content, &why)) {
      errors_.add(path, 0, "cannot read rule file: " + why);
      return;
    }
    std::error_code ec;
    includeStack_.push_back(fs::weakly_canonical(path, ec).string());
    loadText(content, path, dirOf(path), 0);
    includeStack_.pop_back();
  }

  void loadText(std::string_view text, const std::string& name, const std::string& baseDir,
                int depth) {
    noteFile(name, text);
    if (text.substr(0, 3) == "\xEF\xBB\xBF") text.remove_prefix(3);
    std::vector<LogicalLine> lines = splitLines(text, name);
    for (const LogicalLine& ll : lines) {
      if (errors_.count() > kMaxLoadErrors) return;
      processLine(ll, name, baseDir, depth);
    }
    if (chainHead_ || discardChain_) {
      if (chainHead_) {
        const Rule& head = rules_[*chainHead_].rule;
        errors_.add(head.links.back().file, head.links.back().line,
                    "rule " + std::to_string(head.id) +
                        " ends with 'chain' but no SecRule follows before the end of the file");
        dropRule(*chainHead_);
      }
      chainHead_.reset();
      discardChain_ = false;
    }
  }

  std::optional<RuleSet> finish() {
    RuleSet out;
    // Compact: drop removed rules, map marker positions onto the survivors.
    std::vector<uint32_t> aliveBefore(rules_.size() + 1, 0);
    for (size_t i = 0; i < rules_.size(); ++i) {
      aliveBefore[i + 1] = aliveBefore[i] + (rules_[i].removed ? 0 : 1);
    }
    for (auto& p : rules_) {
      if (!p.removed) out.rules.push_back(std::move(p.rule));
    }
    for (auto& m : markers_) {
      m.marker.ruleIndex = aliveBefore[m.before];
      out.markers.push_back(std::move(m.marker));
    }
    for (size_t i = 0; i < out.rules.size(); ++i) {
      Rule& r = out.rules[i];
      if (!r.skipAfter) continue;
      const std::string& target = r.skipAfter->target;
      bool found = false;
      for (const Marker& m : out.markers) {
        if (m.name == target && m.ruleIndex > i) {
          r.skipAfter->resumeIndex = m.ruleIndex;
          found = true;
          break;
        }
      }
      if (!found) {
        auto id = parseUnsigned(target, UINT32_MAX);
        for (size_t j = i + 1; id && j < out.rules.size() && !found; ++j) {
          if (out.rules[j].id == *id) {
            r.skipAfter->resumeIndex = static_cast<uint32_t>(j + 1);
            found = true;
          }
        }
      }
      if (!found) {
        errors_.add(r.links[0].file, r.links[0].line,
                    "skipAfter:" + target + " in rule " + std::to_string(r.id) +
                        ": no SecMarker (or rule id) of that name is defined after the rule");
      }
    }
    if (!hash_.finish(&out.contentHash)) errors_.add("", 0, "SHA-256 computation failed");
    if (errors_.count() > 0) return std::nullopt;
    out.defaultActions = std::move(defaults_);
    out.settings = std::move(settings_);
    out.componentSignatures = std::move(signatures_);
    out.files = std::move(files_);
    out.warnings = std::move(warnings_);
    return out;
  }

 private:
  struct PendingRule {
    Rule rule;
    bool removed = false;
  };
  struct PendingMarker {
    Marker marker;
    size_t before = 0;  // rules_.size() when defined
  };
  struct Directive {
    const std::string* file;
    const std::string* baseDir;
    const LogicalLine* line;
    std::vector<Token> tokens;
    int depth;

    const std::string& name() const { return tokens[0].text; }
    size_t argCount() const { return tokens.size() - 1; }
    const Token& arg(size_t i) const { return tokens[i + 1]; }
  };

  void noteFile(const std::string& name, std::string_view content) {
    files_.push_back(name);
    hash_.addFile(name, content);
  }

  // Physical -> logical lines, the way Apache httpd reads configuration.
  std::vector<LogicalLine> splitLines(std::string_view text, const std::string& file) {
    std::vector<LogicalLine> out;
    LogicalLine cur;
    bool open = false;
    int lineNo = 0;
    size_t pos = 0;
    auto flush = [&]() {
      open = false;
      std::string_view t = trim(cur.text);
      if (t.empty()) return;
      if (t[0] == '#') {
        // A comment ending in '\' swallows the next line: say so rather than
        // silently losing a directive the way Apache would.
        for (size_t k = 1; k < cur.starts.size(); ++k) {
          size_t b = cur.starts[k].first;
          size_t e = k + 1 < cur.starts.size() ? cur.starts[k + 1].first : cur.text.size();
          std::string_view piece = trim(std::string_view(cur.text).substr(b, e - b));
          if (!piece.empty() && piece[0] != '#') {
            errors_.add(file, cur.starts[k].second,
                        "this line continues the comment on line " +
                            std::to_string(cur.starts[k - 1].second) +
                            " (which ends with '\\'), so it would be ignored");
            break;
          }
        }
        return;
      }
      out.push_back(std::move(cur));
    };
    while (pos < text.size()) {
      size_t nl = text.find('\n', pos);
      std::string_view phys = text.substr(pos, nl == std::string_view::npos ? nl : nl - pos);
      pos = nl == std::string_view::npos ? text.size() : nl + 1;
      ++lineNo;
      if (!phys.empty() && phys.back() == '\r') phys.remove_suffix(1);
      if (!open) {
        cur = LogicalLine{};
        cur.firstLine = lineNo;
        open = true;
      }
      cur.starts.emplace_back(cur.text.size(), lineNo);
      bool continues = !phys.empty() && phys.back() == '\\' &&
                       (phys.size() < 2 || phys[phys.size() - 2] != '\\');
      if (continues) {
        cur.text.append(phys.substr(0, phys.size() - 1));
        continue;
      }
      std::string_view stripped = phys;
      while (!stripped.empty() && isSpace(stripped.back())) stripped.remove_suffix(1);
      std::string_view lead = trim(cur.text.empty() ? phys : std::string_view(cur.text));
      if (stripped.size() < phys.size() && !stripped.empty() && stripped.back() == '\\' &&
          (stripped.size() < 2 || stripped[stripped.size() - 2] != '\\') &&
          !lead.empty() && lead[0] != '#') {
        errors_.add(file, lineNo,
                    "'\\' followed by trailing whitespace: this is not a line continuation "
                    "(remove the whitespace)");
      }
      cur.text.append(phys);
      flush();
    }
    if (open) flush();
    return out;
  }

  void processLine(const LogicalLine& ll, const std::string& file, const std::string& baseDir,
                   int depth) {
    Directive d{&file, &baseDir, &ll, {}, depth};
    size_t badQuote = 0;
    if (!tokenize(ll.text, d.tokens, &badQuote)) {
      int line = ll.lineAt(badQuote);
      std::string msg = "unterminated quoted string";
      if (line != ll.firstLine) msg += " (opened on line " + std::to_string(line) + ")";
      errors_.add(file, ll.firstLine, msg);
      // The broken directive may have been (part of) a chain. A chain that
      // was open cannot be trusted any more; and if this looks like a rule
      // saying "chain", swallow its links rather than report each as a rule
      // without id.
      if (chainHead_) dropRule(*chainHead_);
      chainHead_.reset();
      std::string_view t = trim(ll.text);
      discardChain_ = (istartsWith(t, "SecRule") || istartsWith(t, "SecAction")) &&
                      ll.text.find("chain") != std::string::npos;
      return;
    }
    if (d.tokens.empty()) return;
    const std::string& name = d.name();
    const bool isRule = iequals(name, "SecRule") || iequals(name, "SecAction");
    if ((chainHead_ || discardChain_) && !isRule) {
      if (chainHead_) {
        const Rule& head = rules_[*chainHead_].rule;
        errors_.add(head.links.back().file, head.links.back().line,
                    "rule " + std::to_string(head.id) + " ends with 'chain' but is followed by " +
                        name + " (line " + std::to_string(ll.firstLine) + ") instead of a SecRule");
        dropRule(*chainHead_);
      }
      chainHead_.reset();
      discardChain_ = false;
    }
    if (iequals(name, "SecRule")) return secRule(d, false);
    if (iequals(name, "SecAction")) return secRule(d, true);
    if (iequals(name, "SecMarker")) return secMarker(d);
    if (iequals(name, "SecDefaultAction")) return secDefaultAction(d);
    if (iequals(name, "SecComponentSignature")) {
      if (checkArgs(d, 1, 1)) signatures_.push_back(d.arg(0).text);
      return;
    }
    if (iequals(name, "SecRuleRemoveById")) return secRuleRemoveById(d);
    if (iequals(name, "SecRuleRemoveByTag")) return secRuleRemoveByPattern(d, true);
    if (iequals(name, "SecRuleRemoveByMsg")) return secRuleRemoveByPattern(d, false);
    if (iequals(name, "SecRuleUpdateTargetById")) return secRuleUpdateTarget(d, 0);
    if (iequals(name, "SecRuleUpdateTargetByTag")) return secRuleUpdateTarget(d, 1);
    if (iequals(name, "SecRuleUpdateTargetByMsg")) return secRuleUpdateTarget(d, 2);
    if (iequals(name, "SecRuleUpdateActionById")) return secRuleUpdateAction(d);
    if (iequals(name, "Include")) return include(d, false);
    if (iequals(name, "IncludeOptional")) return include(d, true);
    for (const auto& s : kSettings) {
      if (iequals(s.name, name)) return setting(d, s);
    }
    if (!canonicalName(kUnsupportedDirectives, name).empty()) {
      return error(d, "directive " + name + " is not supported");
    }
    if (istartsWith(name, "Sec")) return error(d, "unknown directive " + quoteForMessage(name));
    error(d, "unsupported directive " + quoteForMessage(name) +
                 ": only ModSecurity directives and Include are understood here");
  }

  void error(const Directive& d, const std::string& message) {
    errors_.add(*d.file, d.line->firstLine, message);
  }

  void warn(const Directive& d, const std::string& message) {
    warnings_.push_back({*d.file, d.line->firstLine, message});
  }

  Reporter reporter(const Directive& d, const Token* token) {
    return Reporter{&errors_, Site{d.file, d.line}, token, 0};
  }

  bool checkArgs(const Directive& d, size_t min, size_t max) {
    size_t n = d.argCount();
    if (n >= min && n <= max) return true;
    std::string expected = min == max ? std::to_string(min)
                                      : std::to_string(min) + " to " + std::to_string(max);
    error(d, d.name() + " takes " + expected + " argument(s), got " + std::to_string(n));
    return false;
  }

  void dropRule(size_t index) {
    PendingRule& p = rules_[index];
    if (p.removed) return;
    p.removed = true;
    auto it = idIndex_.find(p.rule.id);
    if (it != idIndex_.end() && it->second == index) idIndex_.erase(it);
  }

  // --- SecRule / SecAction -------------------------------------------------

  bool parseOperator(const Directive& d, const Token& tok, Operator& op) {
    Reporter rep = reporter(d, &tok);
    std::string_view text = tok.text;
    size_t p = 0;
    if (!text.empty() && isSpace(text[0])) {
      size_t q = 0;
      while (q < text.size() && isSpace(text[q])) ++q;
      if (q < text.size() && (text[q] == '@' || text[q] == '!')) {
        rep(0, "operator starts with whitespace; ModSecurity would read the whole string as a "
               "regular expression");
        return false;
      }
    }
    if (!text.empty() && text[0] == '!') {
      op.negated = true;
      ++p;
      while (p < text.size() && isSpace(text[p])) ++p;
    }
    const OperatorInfo* info = &kOperators[0];
    size_t argAt = p;
    if (p < text.size() && text[p] == '@') {
      size_t e = p + 1;
      while (e < text.size() && !isSpace(text[e])) ++e;
      std::string_view name = text.substr(p + 1, e - p - 1);
      info = nullptr;
      for (const auto& o : kOperators) {
        if (iequals(o.name, name)) {
          info = &o;
          break;
        }
      }
      if (info == nullptr) {
        if (!canonicalName(kUnsupportedOperators, name).empty()) {
          rep(p, "operator '@" + std::string(name) + "' is not supported");
        } else {
          rep(p, "unknown operator '@" + std::string(name) + "'");
        }
        return false;
      }
      while (e < text.size() && isSpace(text[e])) ++e;
      argAt = e;
    }
    op.kind = info->kind;
    op.argument = std::string(text.substr(argAt));
    const std::string opName = "@" + std::string(toString(op.kind));
    if (info->arg == ArgPolicy::kNone && !op.argument.empty()) {
      rep(argAt, opName + " takes no argument, got " + quoteForMessage(op.argument));
      return false;
    }
    if (info->arg == ArgPolicy::kRequired && trim(op.argument).empty()) {
      rep(p, opName + " needs an argument");
      return false;
    }
    if (info->macros) {
      auto m = parseMacros(op.argument, op.kind == O::kRx, rep.shifted(argAt));
      if (!m) return false;
      op.expandable = std::move(*m);
    }
    switch (op.kind) {
      case O::kEq: case O::kGe: case O::kGt: case O::kLe: case O::kLt:
        if (!op.expandable.hasMacros() && !isInteger(trim(op.argument))) {
          rep(argAt, opName + " compares numbers; " + quoteForMessage(op.argument) +
                         " is neither a number nor a macro");
          return false;
        }
        break;
      case O::kPm: {
        std::string decoded = decodePmContent(op.argument, true).value_or(op.argument);
        op.phrases = splitOnWhitespace(decoded);
        break;
      }
      case O::kPmFromFile:
      case O::kIpMatchFromFile:
        return loadDataFiles(d, op, rep.shifted(argAt));
      case O::kIpMatch:
        for (std::string_view entry : splitOn(op.argument, ',')) {
          entry = trim(entry);
          if (!validIpEntry(entry)) {
            rep(argAt, "@ipMatch: " + quoteForMessage(entry) + " is not an IP address or CIDR block");
            return false;
          }
          op.phrases.emplace_back(entry);
        }
        break;
      case O::kValidateByteRange:
        if (!validByteRange(op.argument)) {
          rep(argAt, "@validateByteRange: expected byte values or ranges such as 1-255, got " +
                         quoteForMessage(op.argument));
          return false;
        }
        break;
      default:
        break;
    }
    return true;
  }

  bool loadDataFiles(const Directive& d, Operator& op, const Reporter& rep) {
    const bool ip = op.kind == O::kIpMatchFromFile;
    const std::string opName = "@" + std::string(toString(op.kind));
    for (const std::string& name : splitOnWhitespace(op.argument)) {
      if (istartsWith(name, "http://") || istartsWith(name, "https://")) {
        rep(0, opName + ": remote data files are not supported: " + quoteForMessage(name));
        return false;
      }
      std::string path = resolvePath(name, *d.baseDir);
      auto cached = dataFiles_.find(path);
      if (cached == dataFiles_.end()) {
        std::string content, why;
        if (!readFile(path, &content, &why)) {
          rep(0, opName + ": cannot read data file " + quoteForMessage(path) + ": " + why);
          return false;
        }
        noteFile(path, content);
        cached = dataFiles_.emplace(path, std::move(content)).first;
      }
      op.dataFiles.push_back(path);
      int lineNo = 0;
      for (std::string_view line : splitOn(cached->second, '\n')) {
        ++lineNo;
        std::string entry(line);
        if (!ip) entry = decodePmContent(line, false).value_or(entry);
        std::string_view t = trim(entry);
        if (t.empty() || t[0] == '#') continue;
        if (ip && !validIpEntry(t)) {
          rep(0, opName + ": " + path + ":" + std::to_string(lineNo) + ": " + quoteForMessage(t) +
                     " is not an IP address or CIDR block");
          return false;
        }
        op.phrases.emplace_back(t);
      }
    }
    return true;
  }

  void secRule(const Directive& d, bool isAction) {
    const bool asLink = chainHead_.has_value() || discardChain_;
    RuleLink link;
    link.file = *d.file;
    link.line = d.line->firstLine;
    bool ok = true;
    const Token* actionsTok = nullptr;
    if (isAction) {
      if (!checkArgs(d, 1, 1)) ok = false;
      else actionsTok = &d.arg(0);
      link.op.kind = O::kUnconditionalMatch;
    } else {
      if (!checkArgs(d, 2, 3)) {
        ok = false;
      } else {
        ok = parseVariables(d.arg(0).text, link.variables, reporter(d, &d.arg(0))) && ok;
        ok = parseOperator(d, d.arg(1), link.op) && ok;
        if (d.argCount() == 3) actionsTok = &d.arg(2);
      }
    }
    ParsedActions acts;
    bool sawChain = false;
    if (actionsTok != nullptr) {
      Reporter rep = reporter(d, actionsTok);
      auto parsed = parseActions(actionsTok->text, rep, &sawChain);
      if (parsed) {
        acts = std::move(*parsed);
        if (asLink) ok = refuseActions(acts, kHeadOnlyActions, rep, "in a chained rule (only in the "
                                                                    "first rule of a chain)") && ok;
      } else {
        ok = false;
      }
    }
    link.transformations = std::move(acts.transformations);
    link.transformationsReset = acts.transformationsReset;
    link.capture = acts.capture;
    link.multiMatch = acts.multiMatch;
    link.log = acts.log;
    link.auditLog = acts.auditLog;
    link.effects = std::move(acts.effects);

    if (asLink) {
      if (ok && chainHead_) rules_[*chainHead_].rule.links.push_back(std::move(link));
      if (!ok && chainHead_) {
        dropRule(*chainHead_);  // a chain missing a link must not run
        chainHead_.reset();
        discardChain_ = true;
      }
      if (!sawChain) {
        chainHead_.reset();
        discardChain_ = false;
      }
      return;
    }

    if (ok && !acts.id) {
      error(d, std::string(isAction ? "SecAction" : "SecRule") + " has no id action");
      ok = false;
    }
    if (ok) {
      auto dup = idIndex_.find(*acts.id);
      if (dup != idIndex_.end()) {
        const RuleLink& other = rules_[dup->second].rule.links[0];
        error(d, "duplicate rule id " + std::to_string(*acts.id) + " (first defined at " +
                     other.file + ":" + std::to_string(other.line) + ")");
        ok = false;
      }
    }
    if (!ok) {
      discardChain_ = sawChain;
      return;
    }
    Rule r;
    r.id = *acts.id;
    r.phase = acts.phase.value_or(Phase::kRequestBody);
    r.isSecAction = isAction;
    r.disruptive = acts.disruptive.value_or(Disruptive::kNone);
    r.allowScope = acts.allowScope;
    r.redirectUrl = std::move(acts.redirectUrl);
    r.status = acts.status;
    if (acts.msg) r.msg = std::move(*acts.msg);
    if (acts.logdata) r.logdata = std::move(*acts.logdata);
    r.tags = std::move(acts.tags);
    r.severity = acts.severity;
    r.ver = acts.ver.value_or("");
    r.rev = acts.rev.value_or("");
    r.maturity = acts.maturity;
    r.accuracy = acts.accuracy;
    r.skip = acts.skip.value_or(0);
    if (acts.skipAfter) r.skipAfter = SkipAfter{*acts.skipAfter, 0};
    r.defaultActionIndex = currentDefault_[static_cast<size_t>(r.phase)];
    r.links.push_back(std::move(link));
    idIndex_[r.id] = rules_.size();
    rules_.push_back({std::move(r), false});
    if (acts.chain) chainHead_ = rules_.size() - 1;
  }

  // --- Other rule directives -----------------------------------------------

  void secMarker(const Directive& d) {
    if (!checkArgs(d, 1, 1)) return;
    if (d.arg(0).text.empty()) return error(d, "SecMarker needs a name");
    markers_.push_back({Marker{d.arg(0).text, 0, *d.file, d.line->firstLine}, rules_.size()});
  }

  void secDefaultAction(const Directive& d) {
    if (!checkArgs(d, 1, 1)) return;
    Reporter rep = reporter(d, &d.arg(0));
    bool sawChain = false;
    auto acts = parseActions(d.arg(0).text, rep, &sawChain);
    if (!acts) return;
    bool ok = refuseActions(*acts, kNotInDefaultAction, rep, "in SecDefaultAction");
    if (!acts->phase) {
      error(d, "SecDefaultAction must specify a phase");
      ok = false;
    }
    if (!acts->disruptive || *acts->disruptive == Disruptive::kBlock) {
      error(d, "SecDefaultAction must specify a disruptive action (pass, deny, drop, allow, "
               "redirect)");
      ok = false;
    }
    if (!ok) return;
    DefaultAction da;
    da.phase = *acts->phase;
    da.disruptive = *acts->disruptive;
    da.allowScope = acts->allowScope;
    da.redirectUrl = std::move(acts->redirectUrl);
    da.status = acts->status;
    da.transformations = std::move(acts->transformations);
    da.transformationsReset = acts->transformationsReset;
    da.log = acts->log;
    da.auditLog = acts->auditLog;
    da.file = *d.file;
    da.line = d.line->firstLine;
    currentDefault_[static_cast<size_t>(da.phase)] = static_cast<int32_t>(defaults_.size());
    defaults_.push_back(std::move(da));
  }

  std::optional<std::vector<IdRange>> idArgs(const Directive& d, size_t from, size_t to) {
    std::vector<IdRange> ids;
    for (size_t i = from; i < to; ++i) {
      bool ok = false;
      auto part = parseIdRanges(d.arg(i).text, &ok);
      if (!ok) {
        error(d, d.name() + ": expected rule ids or ranges such as 1000-1999, got " +
                     quoteForMessage(d.arg(i).text));
        return std::nullopt;
      }
      ids.insert(ids.end(), part.begin(), part.end());
    }
    return ids;
  }

  static bool inRanges(const std::vector<IdRange>& ids, uint32_t id) {
    return std::any_of(ids.begin(), ids.end(), [id](const IdRange& r) { return r.contains(id); });
  }

  // ModSecurity matches SecRuleRemoveByTag / ...ByMsg patterns with PCRE; a
  // POSIX extended regex covers the plain words and alternations used in
  // practice. Search semantics (unanchored), case-sensitive, as ModSecurity.
  class Pattern {
   public:
    Pattern() = default;
    Pattern(const Pattern&) = delete;
    Pattern& operator=(const Pattern&) = delete;
    ~Pattern() {
      if (compiled_) regfree(&re_);
    }
    std::string compile(const std::string& pattern) {
      int rc = regcomp(&re_, pattern.c_str(), REG_EXTENDED | REG_NOSUB);
      if (rc == 0) {
        compiled_ = true;
        return {};
      }
      char buf[256];
      regerror(rc, &re_, buf, sizeof buf);
      return buf;
    }
    bool search(const std::string& text) const {
      return compiled_ && regexec(&re_, text.c_str(), 0, nullptr, 0) == 0;
    }

   private:
    regex_t re_{};
    bool compiled_ = false;
  };

  bool compilePattern(const Directive& d, const std::string& pattern, Pattern* out) {
    std::string why = out->compile(pattern);
    if (why.empty()) return true;
    error(d, d.name() + ": invalid pattern " + quoteForMessage(pattern) + ": " + why);
    return false;
  }

  static bool ruleMatchesPattern(const Rule& r, const Pattern& re, bool byTag) {
    if (!byTag) return re.search(r.msg.text);
    return std::any_of(r.tags.begin(), r.tags.end(),
                       [&](const MacroString& t) { return re.search(t.text); });
  }

  void secRuleRemoveById(const Directive& d) {
    if (!checkArgs(d, 1, 255)) return;
    auto ids = idArgs(d, 0, d.argCount());
    if (!ids) return;
    size_t removed = 0;
    for (size_t i = 0; i < rules_.size(); ++i) {
      if (!rules_[i].removed && inRanges(*ids, rules_[i].rule.id)) {
        dropRule(i);
        ++removed;
      }
    }
    if (removed == 0) warn(d, "SecRuleRemoveById removed nothing: no such rule defined before it");
  }

  void secRuleRemoveByPattern(const Directive& d, bool byTag) {
    if (!checkArgs(d, 1, 255)) return;
    for (size_t a = 0; a < d.argCount(); ++a) {
      Pattern re;
      if (!compilePattern(d, d.arg(a).text, &re)) return;
      size_t removed = 0;
      for (size_t i = 0; i < rules_.size(); ++i) {
        if (!rules_[i].removed && ruleMatchesPattern(rules_[i].rule, re, byTag)) {
          dropRule(i);
          ++removed;
        }
      }
      if (removed == 0) {
        warn(d, d.name() + " " + quoteForMessage(d.arg(a).text) +
                    " removed nothing: no matching rule defined before it");
      }
    }
  }

  // by: 0 = id, 1 = tag, 2 = msg.
  void secRuleUpdateTarget(const Directive& d, int by) {
    if (!checkArgs(d, 2, 3)) return;
    std::optional<std::vector<IdRange>> ids;
    Pattern re;
    if (by == 0) {
      ids = idArgs(d, 0, 1);
      if (!ids) return;
    } else if (!compilePattern(d, d.arg(0).text, &re)) {
      return;
    }
    std::vector<Variable> targets;
    if (!parseVariables(d.arg(1).text, targets, reporter(d, &d.arg(1)))) return;
    std::optional<Variable> replaced;
    if (d.argCount() == 3) {
      std::vector<Variable> r;
      if (!parseVariables(d.arg(2).text, r, reporter(d, &d.arg(2)))) return;
      if (r.size() != 1) return error(d, d.name() + ": the target to replace must be a single target");
      replaced = r[0];
    }
    size_t matched = 0, replacedCount = 0;
    for (auto& p : rules_) {
      if (p.removed) continue;
      bool hit = by == 0 ? inRanges(*ids, p.rule.id) : ruleMatchesPattern(p.rule, re, by == 1);
      if (!hit) continue;
      ++matched;
      std::vector<Variable>& vars = p.rule.links[0].variables;
      if (replaced) {
        auto it = std::find_if(vars.begin(), vars.end(),
                               [&](const Variable& v) { return sameVariable(v, *replaced); });
        if (it == vars.end()) continue;
        ++replacedCount;
        it = vars.erase(it);
        vars.insert(it, targets.begin(), targets.end());
        continue;
      }
      for (const Variable& t : targets) {
        bool present = std::any_of(vars.begin(), vars.end(),
                                   [&](const Variable& v) { return sameVariable(v, t); });
        if (!present) vars.push_back(t);
      }
    }
    if (matched == 0) {
      warn(d, d.name() + " " + quoteForMessage(d.arg(0).text) +
                  " changed nothing: no matching rule defined before it");
    } else if (replaced && replacedCount == 0) {
      warn(d, d.name() + ": no matching rule has the target " + quoteForMessage(d.arg(2).text));
    }
  }

  void secRuleUpdateAction(const Directive& d) {
    if (!checkArgs(d, 2, 2)) return;
    auto id = parseUnsigned(d.arg(0).text, INT32_MAX);
    if (!id) return error(d, "SecRuleUpdateActionById: expected a rule id, got " +
                                 quoteForMessage(d.arg(0).text));
    Reporter rep = reporter(d, &d.arg(1));
    bool sawChain = false;
    auto acts = parseActions(d.arg(1).text, rep, &sawChain);
    if (!acts) return;
    if (!refuseActions(*acts, kNotInUpdateAction, rep, "in SecRuleUpdateActionById")) return;
    auto it = idIndex_.find(static_cast<uint32_t>(*id));
    if (it == idIndex_.end()) {
      return warn(d, "SecRuleUpdateActionById " + d.arg(0).text +
                         " changed nothing: no such rule defined before it");
    }
    // ModSecurity's merge: single-valued actions are replaced, lists appended.
    Rule& r = rules_[it->second].rule;
    if (acts->disruptive) {
      r.disruptive = *acts->disruptive;
      r.allowScope = acts->allowScope;
      r.redirectUrl = std::move(acts->redirectUrl);
    }
    if (acts->status) r.status = acts->status;
    if (acts->msg) r.msg = std::move(*acts->msg);
    if (acts->logdata) r.logdata = std::move(*acts->logdata);
    for (auto& t : acts->tags) r.tags.push_back(std::move(t));
    if (acts->severity) r.severity = acts->severity;
    if (acts->ver) r.ver = *acts->ver;
    if (acts->rev) r.rev = *acts->rev;
    if (acts->maturity) r.maturity = acts->maturity;
    if (acts->accuracy) r.accuracy = acts->accuracy;
    if (acts->skip) r.skip = *acts->skip;
    if (acts->skipAfter) r.skipAfter = SkipAfter{*acts->skipAfter, 0};
    RuleLink& head = r.links[0];
    if (acts->transformationsReset) {
      head.transformations = std::move(acts->transformations);
      head.transformationsReset = true;
    } else {
      for (auto& t : acts->transformations) head.transformations.push_back(std::move(t));
    }
    head.capture = head.capture || acts->capture;
    head.multiMatch = head.multiMatch || acts->multiMatch;
    if (acts->log) head.log = acts->log;
    if (acts->auditLog) head.auditLog = acts->auditLog;
    for (auto& e : acts->effects) head.effects.push_back(std::move(e));
  }

  // --- Include and settings ------------------------------------------------

  void include(const Directive& d, bool optional) {
    if (!checkArgs(d, 1, 1)) return;
    if (d.depth + 1 > kMaxIncludeDepth) {
      return error(d, "Include nested deeper than " + std::to_string(kMaxIncludeDepth) +
                          " levels (an include cycle?)");
    }
    std::string pattern = resolvePath(d.arg(0).text, *d.baseDir);
    std::vector<std::string> paths;
    if (pattern.find_first_of("*?[") != std::string::npos) {
      glob_t g{};
      int rc = glob(pattern.c_str(), 0, nullptr, &g);
      if (rc == 0) {
        for (size_t i = 0; i < g.gl_pathc; ++i) paths.emplace_back(g.gl_pathv[i]);
      }
      globfree(&g);
      if (rc != 0 && rc != GLOB_NOMATCH) return error(d, "Include: cannot expand " + pattern);
      if (paths.empty() && !optional) {
        return error(d, "Include: no file matches " + quoteForMessage(pattern) +
                            " (use IncludeOptional if that is expected)");
      }
    } else {
      std::error_code ec;
      if (fs::is_directory(pattern, ec)) {
        for (const auto& e : fs::directory_iterator(pattern, ec)) {
          if (e.is_regular_file(ec)) paths.push_back(e.path().string());
        }
      } else if (fs::exists(pattern, ec)) {
        paths.push_back(pattern);
      } else if (!optional) {
        return error(d, "Include: file not found: " + quoteForMessage(pattern));
      }
    }
    std::sort(paths.begin(), paths.end());  // Apache includes in byte order
    for (const std::string& path : paths) {
      std::error_code ec;
      std::string canonical = fs::weakly_canonical(path, ec).string();
      if (std::find(includeStack_.begin(), includeStack_.end(), canonical) != includeStack_.end()) {
        error(d, "Include cycle: " + path + " is already being loaded");
        continue;
      }
      std::string content, why;
      if (!readFile(path, &content, &why)) {
        error(d, "Include: cannot read " + quoteForMessage(path) + ": " + why);
        continue;
      }
      includeStack_.push_back(canonical);
      loadText(content, path, dirOf(path), d.depth + 1);
      includeStack_.pop_back();
    }
  }

  void setting(const Directive& d, const SettingInfo& info) {
    if (!checkArgs(d, info.minArgs, info.maxArgs)) return;
    Setting s{std::string(info.name), {}, *d.file, d.line->firstLine};
    for (size_t i = 0; i < d.argCount(); ++i) s.args.push_back(d.arg(i).text);
    if (!info.values.empty() && !s.args.empty()) {
      const std::string& v = s.args[0];
      bool ok = info.values == "#" ? parseUnsigned(v, UINT64_MAX / 10).has_value()
                                   : wordInList(v, info.values);
      if (!ok) {
        std::string expected = info.values == "#" ? std::string("a number")
                                                  : "one of " + std::string(info.values);
        return error(d, s.name + ": expected " + expected + ", got " + quoteForMessage(v));
      }
    }
    settings_.push_back(std::move(s));
  }

  ErrorSink errors_;
  HashCtx hash_;
  std::vector<PendingRule> rules_;
  std::unordered_map<uint32_t, size_t> idIndex_;  // live rules only
  std::vector<PendingMarker> markers_;
  std::vector<DefaultAction> defaults_;
  int32_t currentDefault_[6] = {-1, -1, -1, -1, -1, -1};  // by phase number
  std::vector<Setting> settings_;
  std::vector<std::string> signatures_;
  std::vector<std::string> files_;
  std::vector<LoadError> warnings_;
  std::unordered_map<std::string, std::string> dataFiles_;
  std::vector<std::string> includeStack_;
  // Chain state: the head waiting for its next link, or (discardChain_) a
  // broken head whose links are parsed for errors and then dropped.
  std::optional<size_t> chainHead_;
  bool discardChain_ = false;
};

}  // namespace

// ---------------------------------------------------------------------------
// Public API
// ---------------------------------------------------------------------------

std::string_view toString(VariableName name) { return variableInfo(name).name; }

bool isCollection(VariableName name) { return variableInfo(name).collection; }

std::string_view toString(OperatorKind kind) {
  for (const auto& o : kOperators) {
    if (o.kind == kind) return o.name;
  }
  return "?";
}

bool MacroString::hasMacros() const {
  return std::any_of(parts.begin(), parts.end(), [](const Part& p) { return p.ref.has_value(); });
}

std::optional<RuleSet> loadRuleFiles(const std::vector<std::string>& paths,
                                     std::vector<LoadError>* errors) {
  Loader loader(errors);
  for (const std::string& path : paths) loader.loadTopLevel(path);
  return loader.finish();
}

std::optional<RuleSet> loadRuleText(std::string_view text, std::string_view virtualFileName,
                                    const std::string& baseDir, std::vector<LoadError>* errors) {
  Loader loader(errors);
  loader.loadText(text, std::string(virtualFileName), baseDir, 0);
  return loader.finish();
}

std::string contentHashHex(const RuleSet& ruleSet) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(64);
  for (uint8_t b : ruleSet.contentHash) {
    out += kHex[b >> 4];
    out += kHex[b & 0xF];
  }
  return out;
}

const Rule* findRule(const RuleSet& ruleSet, uint32_t id) {
  for (const Rule& r : ruleSet.rules) {
    if (r.id == id) return &r;
  }
  return nullptr;
}

}  // namespace moat::waf
