// WAF engine: rule logic on small inline rule sets, then the real CRS.
#include "moat/waf/engine.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <string>
#include <vector>

namespace moat::waf {
namespace {

std::shared_ptr<const Engine> compileText(const std::string& rules,
                                          std::optional<EngineMode> mode = std::nullopt,
                                          std::vector<std::string>* errorsOut = nullptr) {
  EngineOptions opt;
  opt.extraDirectives = rules;
  opt.mode = mode;
  std::vector<std::string> errors, warnings;
  auto e = Engine::compile(opt, &errors, &warnings, nullptr);
  if (errorsOut != nullptr) *errorsOut = errors;
  if (e == nullptr && errorsOut == nullptr) {
    for (const auto& s : errors) ADD_FAILURE() << s;
  }
  return e;
}

struct Req {
  std::string method = "GET";
  std::string target = "/";
  std::vector<std::pair<std::string, std::string>> headers = {{"Host", "example.com"}};
  std::string body;
  RequestView view() const {
    RequestView v;
    v.method = method;
    v.target = target;
    v.protocol = "HTTP/1.1";
    for (const auto& [k, val] : headers) v.headers.emplace_back(k, val);
    v.body = body;
    v.requestId = "test-1";
    return v;
  }
};

std::vector<uint32_t> ids(const Verdict& v) {
  std::vector<uint32_t> out;
  for (const auto& m : v.matched) out.push_back(m.id);
  return out;
}

TEST(WafEngine, ChainSetvarMacroAndDeny) {
  auto e = compileText(R"(
SecAction "id:1,phase:1,pass,nolog,setvar:tx.threshold=5"
SecRule ARGS "@rx attack" "id:10,phase:2,pass,msg:'found %{MATCHED_VAR_NAME}',setvar:tx.score=+3"
SecRule ARGS_NAMES "@streq evil" "id:11,phase:2,pass,chain"
  SecRule ARGS:evil "@contains x" "setvar:tx.score=+3"
SecRule TX:SCORE "@ge %{tx.threshold}" "id:20,phase:2,deny,status:406,msg:'score %{tx.score}'"
)");
  ASSERT_TRUE(e);
  Transaction t;
  Req r;
  r.target = "/?q=attack&evil=xyz";
  const Verdict& v = t.evaluate(*e, r.view());
  EXPECT_EQ(ids(v), (std::vector<uint32_t>{10, 11, 20}));
  EXPECT_TRUE(v.intervene);
  EXPECT_EQ(v.status, 406);
  EXPECT_EQ(v.ruleId, 20u);
  EXPECT_EQ(v.matched[0].msg, "found ARGS:q");
  EXPECT_EQ(v.matched[2].msg, "score 6");
  EXPECT_EQ(t.tx("score"), "6");

  // Chain not completed: evil present but its value has no x -> only 10.
  r.target = "/?q=attack&evil=abc";
  const Verdict& v2 = t.evaluate(*e, r.view());
  EXPECT_EQ(ids(v2), (std::vector<uint32_t>{10}));
  EXPECT_FALSE(v2.intervene);
}

TEST(WafEngine, DetectionOnlyNeverIntervenes) {
  auto e = compileText(R"(SecRule ARGS "@rx x" "id:1,phase:1,deny")", EngineMode::kDetectionOnly);
  ASSERT_TRUE(e);
  Transaction t;
  Req r;
  r.target = "/?a=x";
  const Verdict& v = t.evaluate(*e, r.view());
  EXPECT_FALSE(v.intervene);
  EXPECT_TRUE(v.wouldIntervene);
  EXPECT_EQ(v.ruleId, 1u);
}

TEST(WafEngine, SkipAfterMarkerAndSkip) {
  auto e = compileText(R"(
SecRule REQUEST_METHOD "@streq GET" "id:1,phase:1,pass,nolog,skipAfter:END"
SecAction "id:2,phase:1,pass,log"
SecMarker END
SecAction "id:3,phase:1,pass,log,skip:1"
SecAction "id:4,phase:1,pass,log"
SecAction "id:5,phase:1,pass,log"
)");
  ASSERT_TRUE(e);
  Transaction t;
  Req r;
  EXPECT_EQ(ids(t.evaluate(*e, r.view())), (std::vector<uint32_t>{3, 5}));
  r.method = "POST";
  EXPECT_EQ(ids(t.evaluate(*e, r.view())), (std::vector<uint32_t>{2, 3, 5}));
}

TEST(WafEngine, RuntimeCtlRemovesRulesAndTargets) {
  auto e = compileText(R"(
SecRule REQUEST_FILENAME "@beginsWith /admin" "id:1,phase:1,pass,nolog,ctl:ruleRemoveById=100,ctl:ruleRemoveTargetById=101;ARGS:password"
SecRule ARGS "@rx drop" "id:100,phase:2,pass,log"
SecRule ARGS "@rx drop" "id:101,phase:2,pass,log"
)");
  ASSERT_TRUE(e);
  Transaction t;
  Req r;
  r.target = "/admin/login?password=drop";
  EXPECT_TRUE(ids(t.evaluate(*e, r.view())).empty());
  r.target = "/admin/login?user=drop";
  EXPECT_EQ(ids(t.evaluate(*e, r.view())), (std::vector<uint32_t>{101}));
  r.target = "/shop?password=drop";  // the ctl rule did not run: both match
  EXPECT_EQ(ids(t.evaluate(*e, r.view())), (std::vector<uint32_t>{100, 101}));
}

TEST(WafEngine, SelectorsExclusionsAndCounts) {
  auto e = compileText(R"(
SecRule ARGS|!ARGS:safe "@rx bad" "id:1,phase:2,pass,log"
SecRule ARGS:/^id_/ "@rx ^[0-9]+$" "id:2,phase:2,pass,log"
SecRule &ARGS "@eq 3" "id:3,phase:2,pass,log"
SecRule &REQUEST_HEADERS:X-Missing "@eq 0" "id:4,phase:1,pass,log"
SecRule REQUEST_COOKIES:session "@streq abc" "id:5,phase:1,pass,log"
)");
  ASSERT_TRUE(e);
  Transaction t;
  Req r;
  r.target = "/?safe=bad&ID_X=42&other=fine";
  r.headers.emplace_back("Cookie", "theme=dark; session=abc");
  EXPECT_EQ(ids(t.evaluate(*e, r.view())), (std::vector<uint32_t>{4, 5, 2, 3}));
  r.target = "/?other=bad";
  EXPECT_EQ(ids(t.evaluate(*e, r.view())), (std::vector<uint32_t>{4, 5, 1}));
}

TEST(WafEngine, CaptureAndTransformations) {
  auto e = compileText(R"(
SecRule ARGS:q "@rx (s\w+)t" "id:1,phase:2,pass,log,capture,t:lowercase,t:urlDecodeUni,setvar:tx.got=%{tx.1}"
SecRule ARGS:n "@rx ^$" "id:2,phase:2,pass,log,t:removeWhitespace"
)");
  ASSERT_TRUE(e);
  Transaction t;
  Req r;
  r.target = "/?q=SCRIPT&n=%20%20";
  const Verdict& v = t.evaluate(*e, r.view());
  EXPECT_EQ(ids(v), (std::vector<uint32_t>{1, 2}));
  EXPECT_EQ(t.tx("got"), "scrip");
  EXPECT_EQ(t.tx("0"), "script");
}

TEST(WafEngine, MultiMatchSeesEveryStage) {
  // The decoded value has no "%27", the raw one has: only multiMatch sees both.
  auto e = compileText(R"(
SecRule ARGS "@rx %27" "id:1,phase:2,pass,log,t:urlDecode,multiMatch"
SecRule ARGS "@rx %27" "id:2,phase:2,pass,log,t:urlDecode"
)");
  ASSERT_TRUE(e);
  Transaction t;
  Req r;
  r.method = "POST";
  r.headers.emplace_back("Content-Type", "application/x-www-form-urlencoded");
  r.body = "a=%2527";  // ARGS value "%27", urlDecode -> "'"
  EXPECT_EQ(ids(t.evaluate(*e, r.view())), (std::vector<uint32_t>{1}));
}

TEST(WafEngine, SetvarRunsOncePerMatchedValueCtlOncePerFullMatch) {
  // As ModSecurity v3: setvar per matched value with that value's MATCHED_VAR
  // and captures (two args -> scored twice, one TX key per header name);
  // multiMatch counts each matching stage; ctl on a chain starter runs only
  // when the whole chain matched.
  auto e = compileText(R"(
SecRule ARGS "@rx attack" "id:10,phase:2,pass,nolog,setvar:tx.score=+5"
SecRule REQUEST_HEADERS_NAMES "@rx ^x-(.*)$" "id:11,phase:1,pass,nolog,capture,t:lowercase,setvar:'tx.h_%{tx.1}=/%{tx.1}/',setvar:tx.hcount=+1"
SecRule ARGS:m "@rx a" "id:12,phase:2,pass,nolog,t:lowercase,multiMatch,setvar:tx.stages=+1"
SecRule ARGS:c "@rx ." "id:13,phase:2,pass,nolog,chain,setvar:tx.starter=+1,ctl:ruleRemoveById=20"
  SecRule ARGS:c "@streq never" "t:none"
SecRule ARGS:c "@rx ." "id:20,phase:2,pass,log"
)");
  ASSERT_TRUE(e);
  Transaction t;
  Req r;
  r.target = "/?a=attack1&b=attack2&z=ok&m=A&c=v";
  r.headers.emplace_back("X-One", "1");
  r.headers.emplace_back("X-Two", "2");
  const Verdict& v = t.evaluate(*e, r.view());
  EXPECT_EQ(t.tx("score"), "10");
  EXPECT_EQ(t.tx("hcount"), "2");
  EXPECT_EQ(t.tx("h_one"), "/one/");
  EXPECT_EQ(t.tx("h_two"), "/two/");
  // "A" fails, its lowercase stage "a" matches: one stage.
  EXPECT_EQ(t.tx("stages"), "1");
  // The starter matched (its setvar ran) but the chain did not: no ctl, so
  // rule 20 still runs.
  EXPECT_EQ(t.tx("starter"), "1");
  EXPECT_EQ(ids(v), (std::vector<uint32_t>{20}));

  r.target = "/?m=aa";  // raw "aa" matches and lowercase changes nothing
  t.evaluate(*e, r.view());
  EXPECT_EQ(t.tx("stages"), "1");
  r.target = "/?m=Aa";  // raw matches, and so does the lowercased stage
  t.evaluate(*e, r.view());
  EXPECT_EQ(t.tx("stages"), "2");
}

TEST(WafEngine, EmptyCollectionsAndTxLookups) {
  // A link whose targets are all empty collections has no value to test, so
  // even a negated operator does not match; TX:Name finds tx.name whatever
  // the case it is written in.
  auto e = compileText(R"(
SecAction "id:1,phase:1,pass,nolog,setvar:tx.MixedCase=7"
SecRule ARGS|REQUEST_COOKIES "!@rx zzz" "id:10,phase:2,pass,log"
SecRule ARGS_NAMES|XML:/* "@rx ." "id:11,phase:2,pass,log"
SecRule TX:mixedcase "@eq 7" "id:12,phase:2,pass,log"
SecRule TX:MIXEDCASE|!TX:mixedCase "@eq 7" "id:13,phase:2,pass,log"
SecRule &TX:MixedCase "@eq 1" "id:14,phase:2,pass,log"
)");
  ASSERT_TRUE(e);
  Transaction t;
  Req r;
  EXPECT_EQ(ids(t.evaluate(*e, r.view())), (std::vector<uint32_t>{12, 14}));
  r.target = "/?a=b";
  EXPECT_EQ(ids(t.evaluate(*e, r.view())), (std::vector<uint32_t>{10, 11, 12, 14}));
  r.target = "/";
  r.headers.emplace_back("Cookie", "c=d");
  EXPECT_EQ(ids(t.evaluate(*e, r.view())), (std::vector<uint32_t>{10, 12, 14}));
}

TEST(WafEngine, PlainWordRegexSelectorsMatchAsPcreDoes) {
  // /^word/ and /word/ selectors are matched without PCRE2 (caseless prefix
  // and substring; a trailing "c*" may match nothing, so /NAME_B*/ finds
  // every key holding "name_"); a key with a newline still gets PCRE2's
  // multiline '^'.
  auto e = compileText(R"(
SecRule ARGS_NAMES "@rx ." "id:1,phase:1,pass,nolog,capture,setvar:'tx.header_name_%{tx.0}=1'"
SecRule TX:/^HEADER_NAME_/ "@eq 1" "id:10,phase:2,pass,log,chain"
SecRule MATCHED_VARS_NAMES "@rx header_name_b$" "t:none"
SecRule ARGS:/^Id_/ "@rx ." "id:11,phase:2,pass,log"
SecRule ARGS|!ARGS:/utm/ "@rx x" "id:12,phase:2,pass,log"
SecRule TX:/HEADER_NAME_B*/ "@eq 1" "id:13,phase:2,pass,log"
)");
  ASSERT_TRUE(e);
  Transaction t;
  Req r;
  r.target = "/?b=1";
  EXPECT_EQ(ids(t.evaluate(*e, r.view())), (std::vector<uint32_t>{10, 13}));
  r.target = "/?ID_x=1&k=x";
  EXPECT_EQ(ids(t.evaluate(*e, r.view())), (std::vector<uint32_t>{11, 12, 13}));
  r.target = "/?a_UTM_b=x";  // the only x is excluded (caseless substring)
  EXPECT_EQ(ids(t.evaluate(*e, r.view())), (std::vector<uint32_t>{13}));
  r.target = "/?zz%0aid_=1";  // "zz\nid_": multiline '^' matches after LF
  EXPECT_EQ(ids(t.evaluate(*e, r.view())), (std::vector<uint32_t>{11, 13}));
  r.target = "/?zzid_=1";
  EXPECT_EQ(ids(t.evaluate(*e, r.view())), (std::vector<uint32_t>{13}));
  r.target = "/";
  EXPECT_TRUE(ids(t.evaluate(*e, r.view())).empty());
}

TEST(WafEngine, GroupHitSummarySkipsOnlyWhatCannotMatch) {
  // Rules 10-12 share one pattern group (same chain, phase and targets).
  // A link is failed from the group's summary only when no value hit its
  // pattern; exclusions still apply to the values that did hit, negated
  // operators never use the summary, and a scalar set mid-phase
  // (ctl:requestBodyProcessor) is seen by later rules.
  auto e = compileText(R"(
SecRule ARGS|REQUEST_HEADERS "@rx alpha" "id:10,phase:2,pass,log"
SecRule ARGS|REQUEST_HEADERS "@rx beta" "id:11,phase:2,pass,log"
SecRule ARGS|REQUEST_HEADERS "!@rx gamma" "id:12,phase:2,pass,log"
SecRule ARGS|!ARGS:skip|REQUEST_HEADERS "@rx delta" "id:13,phase:2,pass,log"
SecAction "id:14,phase:2,pass,nolog,ctl:requestBodyProcessor=JSON"
SecRule REQBODY_PROCESSOR "@rx JSON" "id:15,phase:2,pass,log"
)");
  ASSERT_TRUE(e);
  Transaction t;
  Req r;
  r.target = "/?a=alpha&skip=delta";
  const Verdict& v = t.evaluate(*e, r.view());
  EXPECT_EQ(ids(v), (std::vector<uint32_t>{10, 12, 15}));
  EXPECT_GT(t.counters().summarySkips, 0u);
  r.target = "/?a=beta&b=delta";
  r.headers.emplace_back("X-G", "gamma");
  EXPECT_EQ(ids(t.evaluate(*e, r.view())), (std::vector<uint32_t>{11, 12, 13, 15}));
}

TEST(WafEngine, PurePrefixRunsOnceAndMatchesRunningIt) {
  // Rules 1-2 read and write only TX: compile() runs them once and every
  // transaction starts after them with their TX, log and MATCHED_VAR. Rule 3
  // reads the request, so the prefix ends there.
  const std::string rules = R"(
SecAction "id:1,phase:1,pass,nolog,setvar:tx.a=1"
SecRule &TX:b "@eq 0" "id:2,phase:1,pass,log,msg:'b unset %{tx.a}',setvar:tx.b=%{tx.a}"
SecRule REQUEST_HEADERS:X "@rx y" "id:3,phase:1,pass,log,setvar:tx.a=+5"
SecRule TX:a "@eq 6" "id:4,phase:2,pass,log"
SecRule TX:b "@eq 1" "id:5,phase:2,pass,log,msg:'%{MATCHED_VAR_NAME}'"
)";
  auto e = compileText(rules);
  ASSERT_TRUE(e);
  EXPECT_EQ(e->stats().purePrefixRules, 2u);
  Transaction t;
  Req r;
  for (int round = 0; round < 2; ++round) {
    const Verdict& v = t.evaluate(*e, r.view());
    ASSERT_EQ(ids(v), (std::vector<uint32_t>{2, 5}));
    EXPECT_EQ(v.matched[0].msg, "b unset 1");
    EXPECT_EQ(v.matched[1].msg, "TX:b");
    EXPECT_EQ(t.tx("a"), "1");
  }
  r.headers.emplace_back("X", "y");
  EXPECT_EQ(ids(t.evaluate(*e, r.view())), (std::vector<uint32_t>{2, 3, 4, 5}));
  EXPECT_EQ(t.tx("a"), "6");

  // A TX-only deny that fires (CRS 901001 without crs-setup.conf) is not
  // folded into a prefix: it blocks, or is reported in detection-only mode.
  const std::string deny = R"(
SecRule &TX:crs_setup_version "@eq 0" "id:901001,phase:1,deny,status:500,log"
)";
  auto d = compileText(deny);
  ASSERT_TRUE(d);
  EXPECT_EQ(d->stats().purePrefixRules, 0u);
  const Verdict& v = t.evaluate(*d, r.view());
  EXPECT_TRUE(v.intervene);
  EXPECT_EQ(v.status, 500);
}

TEST(WafEngine, FoldedRulesReplayTheirCompileTimeOutcome) {
  // After the prefix (rule 1), rules 3 and 8 read only TX keys nothing later
  // writes: their outcome is fixed at compile time (3 matches and skips
  // rule 4; 8 matches and denies). Rule 5 reads a key the request-dependent
  // rule 2 writes, so it is evaluated. A ctl that removes one of a folded
  // rule's targets makes it evaluated again (and then it cannot match).
  const std::string rules = R"(
SecAction "id:1,phase:1,pass,nolog,setvar:tx.level=1,setvar:tx.block=1"
SecRule REQUEST_HEADERS:X "@rx ." "id:2,phase:1,pass,nolog,setvar:tx.dyn=1"
SecRule TX:level "@lt 2" "id:3,phase:1,pass,nolog,skipAfter:END"
SecRule ARGS "@rx ." "id:4,phase:1,pass,log"
SecMarker END
SecRule &TX:dyn "@eq 1" "id:5,phase:2,pass,nolog,setvar:tx.seen=1"
SecRule TX:seen "@eq 1" "id:6,phase:2,pass,log"
SecRule ARGS:nofold "@rx ." "id:7,phase:2,pass,nolog,ctl:ruleRemoveTargetById=8;TX:block"
SecRule TX:block "@eq 1" "id:8,phase:2,deny,status:403,nolog"
)";
  auto e = compileText(rules);
  ASSERT_TRUE(e);
  EXPECT_EQ(e->stats().purePrefixRules, 1u);
  EXPECT_EQ(e->stats().foldedRules, 2u);
  Transaction t;
  Req r;
  r.target = "/?a=1";
  const Verdict& v1 = t.evaluate(*e, r.view());
  EXPECT_TRUE(ids(v1).empty());  // rule 4 skipped
  EXPECT_TRUE(v1.intervene);
  EXPECT_EQ(v1.status, 403);
  EXPECT_EQ(v1.ruleId, 8u);
  EXPECT_EQ(t.counters().foldedRules, 2u);
  r.target = "/?a=1&nofold=1";
  EXPECT_FALSE(t.evaluate(*e, r.view()).intervene);
  r.target = "/";
  r.headers.emplace_back("X", "y");
  const Verdict& v3 = t.evaluate(*e, r.view());
  EXPECT_EQ(ids(v3), (std::vector<uint32_t>{6}));
  EXPECT_TRUE(v3.intervene);

  auto d = compileText(rules, EngineMode::kDetectionOnly);
  ASSERT_TRUE(d);
  const Verdict& v4 = t.evaluate(*d, r.view());
  EXPECT_FALSE(v4.intervene);
  EXPECT_TRUE(v4.wouldIntervene);
  EXPECT_EQ(v4.ruleId, 8u);
}

TEST(WafEngine, BodyProcessors) {
  auto e = compileText(R"(
SecRule ARGS:json.user.name "@streq bob" "id:1,phase:2,pass,log"
SecRule XML:/* "@contains hello" "id:2,phase:2,pass,log"
SecRule XML://@* "@streq attr" "id:3,phase:2,pass,log"
SecRule REQUEST_BODY "@contains a=" "id:4,phase:2,pass,log"
SecRule REQBODY_ERROR "!@eq 0" "id:5,phase:2,pass,log"
SecRule REQBODY_PROCESSOR "@streq JSON" "id:6,phase:1,pass,log"
)");
  ASSERT_TRUE(e);
  Transaction t;
  Req r;
  r.method = "POST";
  r.headers.emplace_back("Content-Type", "application/json");
  r.body = R"({"user":{"name":"bob"}})";
  EXPECT_EQ(ids(t.evaluate(*e, r.view())), (std::vector<uint32_t>{6, 1}));
  r.headers.back().second = "text/xml";
  r.body = R"(<a x="attr">hello</a>)";
  EXPECT_EQ(ids(t.evaluate(*e, r.view())), (std::vector<uint32_t>{2, 3}));
  r.headers.back().second = "application/x-www-form-urlencoded";
  r.body = "a=1";
  EXPECT_EQ(ids(t.evaluate(*e, r.view())), (std::vector<uint32_t>{4}));
  r.headers.back().second = "application/json";
  r.body = "{broken";
  const Verdict& v = t.evaluate(*e, r.view());
  EXPECT_EQ(ids(v), (std::vector<uint32_t>{6, 5}));
  EXPECT_TRUE(v.bodyError);
}

TEST(WafEngine, BodyLimitRejectsOrInspectsPrefix) {
  EngineOptions opt;
  opt.extraDirectives = R"(SecRule ARGS:a "@rx x" "id:1,phase:2,pass,log")";
  opt.requestBodyLimit = 8;
  auto e = Engine::compile(opt, nullptr, nullptr, nullptr);
  ASSERT_TRUE(e);
  Transaction t;
  Req r;
  r.method = "POST";
  r.headers.emplace_back("Content-Type", "application/x-www-form-urlencoded");
  r.body = "a=x&b=0123456789";
  const Verdict& v = t.evaluate(*e, r.view());
  EXPECT_TRUE(v.intervene);
  EXPECT_EQ(v.status, 413);
  EXPECT_EQ(t.counters().bodyLimitRejected, 1u);
  opt.bodyLimitAction = BodyLimitAction::kProcessPartial;
  auto p = Engine::compile(opt, nullptr, nullptr, nullptr);
  ASSERT_TRUE(p);
  const Verdict& v2 = t.evaluate(*p, r.view());
  EXPECT_FALSE(v2.intervene);
  EXPECT_EQ(ids(v2), (std::vector<uint32_t>{1}));
  EXPECT_EQ(t.counters().bodyLimitPartial, 1u);
}

TEST(WafEngine, ScanCacheAnswersRulesSharingAChain) {
  auto e = compileText(R"(
SecRule ARGS "@rx alpha" "id:1,phase:2,pass,log,t:lowercase"
SecRule ARGS "@rx beta" "id:2,phase:2,pass,log,t:lowercase"
SecRule ARGS "@pm gamma delta" "id:3,phase:2,pass,log,t:lowercase"
)");
  ASSERT_TRUE(e);
  EXPECT_EQ(e->stats().patternGroups, 1u);
  Transaction t;
  Req r;
  r.target = "/?a=ALPHA&b=Delta";
  EXPECT_EQ(ids(t.evaluate(*e, r.view())), (std::vector<uint32_t>{1, 3}));
  // Two values scanned once each; the other four checks were lookups.
  EXPECT_EQ(t.counters().valuesScanned, 2u);
  EXPECT_EQ(t.counters().scanCacheHits, 4u);
}

TEST(WafEngine, BadRulesAreReportedWithFileAndLine) {
  std::vector<std::string> errors;
  auto e = compileText("SecRule ARGS \"@rx (unclosed\" \"id:1,phase:2,pass\"\n", std::nullopt,
                       &errors);
  EXPECT_FALSE(e);
  ASSERT_FALSE(errors.empty());
  EXPECT_NE(errors[0].find("missing closing parenthesis"), std::string::npos) << errors[0];
  EXPECT_NE(errors[0].find(":1: rule 1: "), std::string::npos) << errors[0];
  errors.clear();
  e = compileText("SecRule ARGS \"@rx a\" \"id:1,phase:2,pass,t:noSuchThing\"\n", std::nullopt,
                  &errors);
  EXPECT_FALSE(e);
  ASSERT_FALSE(errors.empty());
  EXPECT_NE(errors[0].find(":1:"), std::string::npos) << errors[0];
}

// The real OWASP CRS as Debian installs it.
constexpr const char* kCrsRules = "/usr/share/modsecurity-crs/rules";
constexpr const char* kCrsSetup = "/etc/modsecurity/crs/crs-setup.conf";

std::shared_ptr<const Engine> crs(int paranoia) {
  EngineOptions opt;
  opt.ruleFiles = {kCrsSetup, kCrsRules};
  opt.preamble = crsPreamble(paranoia, 0, 0);
  std::vector<std::string> errors;
  auto e = Engine::compile(opt, &errors, nullptr, nullptr);
  for (const auto& s : errors) ADD_FAILURE() << s;
  return e;
}

TEST(WafEngineCrs, BlocksAttacksAndPassesBenignAtParanoia1) {
  if (!std::filesystem::exists(kCrsRules) || !std::filesystem::exists(kCrsSetup)) {
    GTEST_SKIP() << "modsecurity-crs is not installed";
  }
  auto e = crs(1);
  ASSERT_TRUE(e);
  EXPECT_GT(e->stats().rules, 500u);
  Transaction t;
  Req r;
  r.headers = {{"Host", "shop.example"},
               {"User-Agent", "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0"},
               {"Accept", "text/html,application/xhtml+xml"},
               {"Accept-Language", "en-US,en;q=0.5"}};
  r.target = "/search?q=blue+shoes&page=2";
  const Verdict& ok = t.evaluate(*e, r.view());
  EXPECT_FALSE(ok.intervene) << auditJson(r.view(), ok, e->mode());
  EXPECT_EQ(ok.anomalyScore, 0);

  r.target = "/search?q=1%27%20UNION%20SELECT%20password%20FROM%20users--";
  const Verdict& sqli = t.evaluate(*e, r.view());
  EXPECT_TRUE(sqli.intervene);
  EXPECT_EQ(sqli.status, 403);
  EXPECT_EQ(sqli.ruleId, 949110u);
  EXPECT_GE(sqli.anomalyScore, 5);
  const auto got = ids(sqli);
  EXPECT_NE(std::find(got.begin(), got.end(), 942100u), got.end());

  r.target = "/?file=../../../../etc/passwd";
  const Verdict& lfi = t.evaluate(*e, r.view());
  EXPECT_TRUE(lfi.intervene);
  const auto lfiIds = ids(lfi);
  EXPECT_NE(std::find(lfiIds.begin(), lfiIds.end(), 930120u), lfiIds.end());
}


// Engine::patternGroupOf (benchmarks and diagnostics): links with the same
// chain, phase and targets share one database; other chains or targets get
// their own; non-pattern rules and unknown ids have none.
TEST(WafEngine, PatternGroupOfReportsTheSharedDatabaseAndChain) {
  auto e = compileText(R"(
SecRule ARGS "@rx foo" "id:1,phase:2,t:none,t:lowercase,pass"
SecRule ARGS "@pm bar baz" "id:2,phase:2,t:none,t:lowercase,pass"
SecRule ARGS "@rx qux" "id:3,phase:2,t:none,t:urlDecode,pass"
SecRule REQUEST_HEADERS "@rx foo" "id:4,phase:2,t:none,t:lowercase,pass"
SecRule ARGS "@streq x" "id:5,phase:2,pass"
)");
  ASSERT_NE(e, nullptr);
  Engine::PatternGroupView g1, g2, g3, g4, none;
  ASSERT_TRUE(e->patternGroupOf(1, g1));
  ASSERT_TRUE(e->patternGroupOf(2, g2));
  ASSERT_TRUE(e->patternGroupOf(3, g3));
  ASSERT_TRUE(e->patternGroupOf(4, g4));
  EXPECT_EQ(g1.patterns, g2.patterns);
  EXPECT_NE(g1.patterns, g3.patterns);
  EXPECT_NE(g1.patterns, g4.patterns);
  EXPECT_EQ(g1.chain, std::vector<Transform>{Transform::kLowercase});
  EXPECT_EQ(g3.chain, std::vector<Transform>{Transform::kUrlDecode});
  EXPECT_EQ(g1.patternIds.size(), 2u);
  EXPECT_EQ(g3.patternIds.size(), 1u);
  // The database really holds those patterns: "BAZ" lowercased hits rule 2's.
  PatternScratch scratch(*g1.patterns);
  std::vector<uint32_t> hits;
  g1.patterns->scan("xx baz yy", scratch, hits);
  ASSERT_EQ(hits.size(), 1u);
  EXPECT_EQ(hits[0], g2.patternId);
  EXPECT_NE(g1.patternId, g2.patternId);
  EXPECT_FALSE(e->patternGroupOf(5, none));
  EXPECT_FALSE(e->patternGroupOf(999, none));
}

}  // namespace
}  // namespace moat::waf
