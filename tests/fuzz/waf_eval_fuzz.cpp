// libFuzzer target: WAF evaluation of arbitrary requests. The input is a raw
// HTTP/1.x request (request line, header lines, blank line, body; LF or
// CRLF), split without validation so that any bytes reach the engine: the
// proxy's parser is stricter, but the offline evaluator (moat-waf) and future
// callers hand the engine what they have.
// The rules are a small CRS-like set that runs every engine path the CRS
// uses: the pure phase-1 prefix, per-value setvar with captures and macros,
// chains over TX with regex selectors, exclusions, pattern groups and their
// hit summaries, multiMatch, @pm, @detectSQLi/@detectXSS, body processors
// switched by ctl, counts and a blocking score.
// Properties: no crash, hang or sanitizer report; a transaction object reused
// for a second evaluation gives the same verdict as its first one and as a
// fresh transaction (no state leaks between requests).
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "moat/waf/engine.h"

using namespace moat::waf;

namespace {

constexpr const char* kRules = R"RULES(
SecAction "id:1,phase:1,pass,nolog,setvar:tx.crit=5,setvar:'tx.restricted=/proxy/ /lock-token/ /x-evil/',setvar:tx.score=0"
SecRule &TX:paranoia "@eq 0" "id:2,phase:1,pass,nolog,setvar:tx.paranoia=1"
SecRule REQUEST_HEADERS:User-Agent "@rx ^.*$" "id:3,phase:1,pass,nolog,t:none,t:sha1,t:hexEncode,setvar:tx.ua=%{MATCHED_VAR}"
SecRule REQUEST_HEADERS:Content-Type "@rx (?i)json" "id:4,phase:1,pass,nolog,ctl:requestBodyProcessor=JSON"
SecRule REQUEST_HEADERS:Content-Type "@rx (?i)xml" "id:5,phase:1,pass,nolog,ctl:requestBodyProcessor=XML"
SecRule ARGS_GET:nocheck "@streq 1" "id:6,phase:1,pass,nolog,ctl:ruleRemoveTargetById=20;ARGS:q,ctl:ruleRemoveById=24"
SecRule REQUEST_HEADERS_NAMES "@rx ^.*$" "id:10,phase:2,pass,capture,t:none,t:lowercase,setvar:'tx.header_name_%{tx.0}=/%{tx.0}/',chain"
  SecRule TX:/^header_name_/ "@within %{tx.restricted}" "setvar:tx.score=+%{tx.crit}"
SecRule ARGS|ARGS_NAMES|REQUEST_COOKIES|!REQUEST_COOKIES:/__utm/|REQUEST_COOKIES_NAMES|XML:/* "@rx (?i)union\s+select" "id:20,phase:2,pass,capture,t:none,t:urlDecodeUni,setvar:tx.score=+%{tx.crit},setvar:tx.last=%{tx.0}"
SecRule ARGS|ARGS_NAMES|REQUEST_COOKIES|!REQUEST_COOKIES:/__utm/|REQUEST_COOKIES_NAMES|XML:/* "@rx <script" "id:21,phase:2,pass,t:none,t:urlDecodeUni,t:htmlEntityDecode,t:lowercase,setvar:tx.score=+%{tx.crit}"
SecRule ARGS|ARGS_NAMES|REQUEST_COOKIES|REQUEST_COOKIES_NAMES "@pm select insert drop" "id:22,phase:2,pass,t:none,t:urlDecodeUni,t:lowercase,setvar:tx.score=+1"
SecRule ARGS "@detectSQLi" "id:23,phase:2,pass,t:none,t:urlDecodeUni,setvar:tx.score=+%{tx.crit}"
SecRule ARGS|REQUEST_HEADERS:Referer "@detectXSS" "id:24,phase:2,pass,t:none,t:urlDecodeUni,t:htmlEntityDecode,setvar:tx.score=+%{tx.crit}"
SecRule REQUEST_URI|ARGS "@rx (?:^|/)\.\.(?:/|$)" "id:25,phase:2,pass,multiMatch,t:none,t:utf8toUnicode,t:urlDecodeUni,t:removeNulls,t:cmdLine,setvar:tx.score=+%{tx.crit}"
SecRule ARGS "!@rx ^[\w\s.,-]*$" "id:26,phase:2,pass,t:none,setvar:tx.odd=+1"
SecRule FILES_NAMES|FILES "@rx \.php$" "id:27,phase:2,pass,setvar:tx.score=+%{tx.crit}"
SecRule REQBODY_ERROR "!@eq 0" "id:28,phase:2,pass,setvar:tx.score=+%{tx.crit}"
SecRule MULTIPART_STRICT_ERROR "!@eq 0" "id:29,phase:2,pass,setvar:tx.score=+%{tx.crit}"
SecRule REQUEST_BODY "@contains evil" "id:30,phase:2,pass,setvar:tx.score=+1"
SecRule ARGS:/^id_/ "@validateByteRange 48-57" "id:31,phase:2,pass,setvar:tx.score=+1"
SecRule REQUEST_LINE|REQUEST_FILENAME|REQUEST_BASENAME|QUERY_STRING "@rx \x00" "id:32,phase:2,pass,t:none,t:urlDecode,setvar:tx.score=+1"
SecRule &ARGS "@gt 20" "id:33,phase:2,pass,setvar:tx.score=+1"
SecRule TX:/MULTIPART_HEADERS_CONTENT_TYPES_*/ "!@rx ^text/plain" "id:34,phase:2,pass,log"
SecRule MATCHED_VARS "@rx ." "id:35,phase:2,pass,nolog"
SecRule TX:/score/ "@gt 0" "id:90,phase:2,pass,log,msg:'score %{tx.score} %{MATCHED_VAR_NAME}'"
SecRule TX:SCORE "@ge 10" "id:99,phase:2,deny,status:403,msg:'blocked'"
)RULES";

std::shared_ptr<const Engine> engine() {
  static std::shared_ptr<const Engine> e = [] {
    EngineOptions opt;
    opt.extraDirectives = kRules;
    std::vector<std::string> errors, warnings;
    auto c = Engine::compile(opt, &errors, &warnings, nullptr);
    if (!c) abort();  // the embedded rules must compile
    return c;
  }();
  return e;
}

std::string_view nextLine(std::string_view& in) {
  const size_t nl = in.find('\n');
  std::string_view line = in.substr(0, nl);
  in = nl == std::string_view::npos ? std::string_view() : in.substr(nl + 1);
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  return line;
}

struct Summary {
  std::vector<uint32_t> ids;
  int score = 0;
  bool intervene = false;
  uint16_t status = 0;
  bool operator==(const Summary&) const = default;
};

Summary summarize(const Verdict& v) {
  Summary s;
  for (const auto& m : v.matched) s.ids.push_back(m.id);
  s.score = v.anomalyScore;
  s.intervene = v.intervene;
  s.status = v.status;
  return s;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  RequestView r;
  std::string_view line = nextLine(in);
  const size_t sp1 = line.find(' ');
  r.method = line.substr(0, sp1);
  if (sp1 != std::string_view::npos) {
    std::string_view rest = line.substr(sp1 + 1);
    const size_t sp2 = rest.rfind(' ');
    r.target = rest.substr(0, sp2);
    if (sp2 != std::string_view::npos) r.protocol = rest.substr(sp2 + 1);
  }
  while (!in.empty()) {
    std::string_view h = nextLine(in);
    if (h.empty()) break;
    const size_t colon = h.find(':');
    std::string_view name = h.substr(0, colon);
    std::string_view value = colon == std::string_view::npos ? std::string_view() : h.substr(colon + 1);
    while (!value.empty() && (value.front() == ' ' || value.front() == '\t')) value.remove_prefix(1);
    r.headers.emplace_back(name, value);
  }
  r.body = in;

  const auto e = engine();
  static Transaction reused;  // carries state from earlier inputs: must not matter
  const Summary first = summarize(reused.evaluate(*e, r));
  const Summary second = summarize(reused.evaluate(*e, r));
  Transaction fresh;
  const Summary third = summarize(fresh.evaluate(*e, r));
  if (!(first == second) || !(first == third)) abort();
  return 0;
}
