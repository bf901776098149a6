// Tests for the ModSecurity rule loader (waf/src/rule_parser.cpp): the rule
// language in small pieces, error reporting, and the real OWASP CRS 3.3 as
// Debian installs it (skipped when the modsecurity-crs package is absent).
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "moat/waf/rules.h"

namespace moat::waf {
namespace {

namespace fs = std::filesystem;

constexpr char kCrsRules[] = "/usr/share/modsecurity-crs/rules";
constexpr char kCrsSetupDir[] = "/etc/modsecurity/crs";

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

std::string joinErrors(const std::vector<LoadError>& errors) {
  std::string out;
  for (const auto& e : errors) out += e.file + ":" + std::to_string(e.line) + ": " + e.message + "\n";
  return out;
}

RuleSet mustLoad(std::string_view text, const std::string& baseDir = ".") {
  std::vector<LoadError> errors;
  auto rs = loadRuleText(text, "test.conf", baseDir, &errors);
  EXPECT_TRUE(rs.has_value()) << joinErrors(errors);
  EXPECT_TRUE(errors.empty()) << joinErrors(errors);
  return rs ? std::move(*rs) : RuleSet{};
}

// Loads text expected to fail; returns the errors.
std::vector<LoadError> mustFail(std::string_view text, const std::string& baseDir = ".") {
  std::vector<LoadError> errors;
  auto rs = loadRuleText(text, "test.conf", baseDir, &errors);
  EXPECT_FALSE(rs.has_value());
  EXPECT_FALSE(errors.empty());
  return errors;
}

// The single error of a failing load must be at file:line and mention `needle`.
void expectError(std::string_view text, int line, const std::string& needle,
                 const std::string& baseDir = ".") {
  auto errors = mustFail(text, baseDir);
  ASSERT_EQ(errors.size(), 1u) << joinErrors(errors);
  EXPECT_EQ(errors[0].file, "test.conf");
  EXPECT_EQ(errors[0].line, line) << errors[0].message;
  EXPECT_NE(errors[0].message.find(needle), std::string::npos)
      << "message: " << errors[0].message << "\nwanted: " << needle;
}

const SetVar& setVarAt(const RuleLink& link, size_t i) {
  return std::get<SetVar>(link.effects.at(i));
}

std::string literalOf(const MacroString& m) {
  std::string out;
  for (const auto& p : m.parts) {
    if (p.ref) {
      out += "${" + std::string(toString(p.ref->variable));
      if (!p.ref->key.empty()) out += "." + p.ref->key;
      out += "}";
    } else {
      out += p.literal;
    }
  }
  return out;
}

class TempDir {
 public:
  TempDir() {
    path_ = fs::temp_directory_path() /
            ("moat_rule_parser_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter_++));
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  std::string write(const std::string& rel, std::string_view content) const {
    fs::path p = path_ / rel;
    fs::create_directories(p.parent_path());
    std::ofstream(p, std::ios::binary) << content;
    return p.string();
  }
  std::string path() const { return path_.string(); }

 private:
  static inline int counter_ = 0;
  fs::path path_;
};

// ---------------------------------------------------------------------------
// Lexing and quoting
// ---------------------------------------------------------------------------

TEST(RuleParserLexing, QuotedOperatorKeepsRegexBackslashes) {
  // Apache drops the backslash only before the quote char and before '\'.
  auto rs = mustLoad(R"(SecRule ARGS "@rx a\"b\d+\.\\\\x" "id:1,phase:2,pass")");
  ASSERT_EQ(rs.rules.size(), 1u);
  EXPECT_EQ(rs.rules[0].links[0].op.argument, R"(a"b\d+\.\\x)");
  EXPECT_EQ(rs.rules[0].links[0].op.kind, OperatorKind::kRx);
}

TEST(RuleParserLexing, SingleQuotedArgumentsAndUnquotedTokens) {
  auto rs = mustLoad("SecRule REQUEST_URI '@contains a\"b' 'id:2,pass'\n"
                     "SecRule ARGS foo\\\\bar \"id:3,pass\"\n");
  ASSERT_EQ(rs.rules.size(), 2u);
  EXPECT_EQ(rs.rules[0].links[0].op.kind, OperatorKind::kContains);
  EXPECT_EQ(rs.rules[0].links[0].op.argument, "a\"b");
  EXPECT_EQ(rs.rules[1].links[0].op.argument, "foo\\bar");  // unquoted: only \\ collapses
}

TEST(RuleParserLexing, DefaultOperatorIsRxAndNegation) {
  auto rs = mustLoad("SecRule ARGS \"^abc$\" \"id:1,pass\"\n"
                     "SecRule ARGS \"!^abc$\" \"id:2,pass\"\n"
                     "SecRule ARGS \"!@streq x y\" \"id:3,pass\"\n"
                     "SecRule ARGS \"! @within a b\" \"id:4,pass\"\n");
  ASSERT_EQ(rs.rules.size(), 4u);
  EXPECT_EQ(rs.rules[0].links[0].op.kind, OperatorKind::kRx);
  EXPECT_FALSE(rs.rules[0].links[0].op.negated);
  EXPECT_EQ(rs.rules[0].links[0].op.argument, "^abc$");
  EXPECT_TRUE(rs.rules[1].links[0].op.negated);
  EXPECT_EQ(rs.rules[1].links[0].op.argument, "^abc$");
  EXPECT_EQ(rs.rules[2].links[0].op.kind, OperatorKind::kStreq);
  EXPECT_TRUE(rs.rules[2].links[0].op.negated);
  EXPECT_EQ(rs.rules[2].links[0].op.argument, "x y");
  EXPECT_EQ(rs.rules[3].links[0].op.kind, OperatorKind::kWithin);
  EXPECT_TRUE(rs.rules[3].links[0].op.negated);
}

TEST(RuleParserLexing, ContinuationCommentsBlankLinesAndCrlf) {
  auto rs = mustLoad("# comment\r\n"
                     "\r\n"
                     "   # indented comment\n"
                     "SecRule ARGS \"@rx a\" \\\r\n"
                     "    \"id:10,\\\n"
                     "    phase:1,\\\n"
                     "    pass\"\n"
                     "SecMarker END\n");
  ASSERT_EQ(rs.rules.size(), 1u);
  EXPECT_EQ(rs.rules[0].links[0].line, 4);
  EXPECT_EQ(rs.rules[0].phase, Phase::kRequestHeaders);
  ASSERT_EQ(rs.markers.size(), 1u);
  EXPECT_EQ(rs.markers[0].line, 8);
}

TEST(RuleParserLexing, ActionValuesWithCommasQuotesAndEscapes) {
  auto rs = mustLoad(R"(SecRule ARGS "@rx x" "id:5,phase:2,block,msg:'a, b \'c\' d',logdata:'%{MATCHED_VAR}, x',tag:'t1',tag:t2")");
  ASSERT_EQ(rs.rules.size(), 1u);
  const Rule& r = rs.rules[0];
  EXPECT_EQ(r.msg.text, "a, b 'c' d");
  EXPECT_FALSE(r.msg.hasMacros());
  EXPECT_EQ(literalOf(r.logdata), "${MATCHED_VAR}, x");
  ASSERT_EQ(r.tags.size(), 2u);
  EXPECT_EQ(r.tags[0].text, "t1");
  EXPECT_EQ(r.tags[1].text, "t2");
  EXPECT_EQ(r.disruptive, Disruptive::kBlock);
}

// ---------------------------------------------------------------------------
// Variables, operators, actions
// ---------------------------------------------------------------------------

TEST(RuleParserVariables, ListWithExclusionsCountsAndSelectors) {
  auto rs = mustLoad(
      "SecRule REQUEST_COOKIES|!REQUEST_COOKIES:/__utm/|REQUEST_COOKIES_NAMES|ARGS_NAMES|ARGS|"
      "XML:/*|&REQUEST_HEADERS:Content-Length|tx:'/LEAKAGE\\\\\\/ERRORS/'|HTTP_User-Agent "
      "\"@rx x\" \"id:1,pass\"");
  ASSERT_EQ(rs.rules.size(), 1u);
  const auto& v = rs.rules[0].links[0].variables;
  ASSERT_EQ(v.size(), 9u);
  EXPECT_EQ(v[0].name, VariableName::kRequestCookies);
  EXPECT_EQ(v[0].selectorKind, SelectorKind::kNone);
  EXPECT_EQ(v[1].name, VariableName::kRequestCookies);
  EXPECT_TRUE(v[1].exclude);
  EXPECT_EQ(v[1].selectorKind, SelectorKind::kRegex);
  EXPECT_EQ(v[1].selector, "__utm");
  EXPECT_EQ(v[2].name, VariableName::kRequestCookiesNames);
  EXPECT_EQ(v[3].name, VariableName::kArgsNames);
  EXPECT_EQ(v[4].name, VariableName::kArgs);
  EXPECT_EQ(v[5].name, VariableName::kXml);
  EXPECT_EQ(v[5].selectorKind, SelectorKind::kLiteral);  // "/*" is XPath, not a regex
  EXPECT_EQ(v[5].selector, "/*");
  EXPECT_TRUE(v[6].count);
  EXPECT_EQ(v[6].selector, "Content-Length");
  EXPECT_EQ(v[7].name, VariableName::kTx);  // case-insensitive name
  EXPECT_EQ(v[7].selectorKind, SelectorKind::kRegex);
  EXPECT_EQ(v[7].selector, "LEAKAGE\\/ERRORS");
  EXPECT_EQ(v[8].name, VariableName::kRequestHeaders);  // HTTP_x alias
  EXPECT_EQ(v[8].selector, "User-Agent");
}

TEST(RuleParserVariables, ScalarsRejectSelectorsAndCount) {
  expectError("SecRule REQUEST_URI:foo \"@rx x\" \"id:1,pass\"", 1, "not a collection");
  expectError("SecRule &REQUEST_URI \"@rx x\" \"id:1,pass\"", 1, "'&'");
  expectError("SecRule !&ARGS:x \"@rx x\" \"id:1,pass\"", 1, "not both");
}

TEST(RuleParserOperators, ArgumentsArePreparedPerKind) {
  auto rs = mustLoad(
      "SecRule ARGS \"@pm foo  bar baz\" \"id:1,pass\"\n"
      "SecRule REMOTE_ADDR \"@ipMatch 127.0.0.1, 10.0.0.0/8,::1\" \"id:2,pass\"\n"
      "SecRule ARGS \"@validateByteRange 9,10,13,32-126\" \"id:3,pass\"\n"
      "SecRule TX:x \"@ge %{tx.threshold}\" \"id:4,pass\"\n"
      "SecRule TX:x \"@lt 5\" \"id:5,pass\"\n"
      "SecRule ARGS \"@detectSQLi\" \"id:6,pass\"\n"
      "SecRule ARGS \"@rx ^%{tx.allowed}$|a%{2,3}\" \"id:7,pass\"\n"
      "SecRule REQUEST_HEADERS:Host \"!@endsWith .%{request_headers.host}\" \"id:8,pass\"\n"
      "SecRule ARGS \"@PMF f.data\" \"id:9,pass\"\n"
      "SecRule ARGS \"@pm |41 42|c \\\\:d\" \"id:10,pass\"\n",
      [] {
        static TempDir dir;
        dir.write("f.data", "# comment\n\n  one phrase  \r\n#x\ntwo\n");
        return dir.path();
      }());
  ASSERT_EQ(rs.rules.size(), 10u);
  EXPECT_EQ(rs.rules[0].links[0].op.phrases, (std::vector<std::string>{"foo", "bar", "baz"}));
  EXPECT_EQ(rs.rules[1].links[0].op.phrases,
            (std::vector<std::string>{"127.0.0.1", "10.0.0.0/8", "::1"}));
  EXPECT_EQ(rs.rules[2].links[0].op.kind, OperatorKind::kValidateByteRange);
  EXPECT_EQ(literalOf(rs.rules[3].links[0].op.expandable), "${TX.threshold}");
  EXPECT_FALSE(rs.rules[4].links[0].op.expandable.hasMacros());
  EXPECT_EQ(rs.rules[5].links[0].op.kind, OperatorKind::kDetectSqli);
  // In a regex, %{2,3} names no variable and stays literal.
  EXPECT_EQ(literalOf(rs.rules[6].links[0].op.expandable), "^${TX.allowed}$|a%{2,3}");
  EXPECT_EQ(literalOf(rs.rules[7].links[0].op.expandable), ".${REQUEST_HEADERS.host}");
  EXPECT_EQ(rs.rules[8].links[0].op.kind, OperatorKind::kPmFromFile);
  EXPECT_EQ(rs.rules[8].links[0].op.phrases, (std::vector<std::string>{"one phrase", "two"}));
  EXPECT_EQ(rs.rules[9].links[0].op.phrases, (std::vector<std::string>{"ABc", ":d"}));
}

TEST(RuleParserOperators, BadArguments) {
  expectError("SecRule ARGS \"@eq abc\" \"id:1,pass\"", 1, "@eq compares numbers");
  expectError("SecRule ARGS \"@detectSQLi x\" \"id:1,pass\"", 1, "takes no argument");
  expectError("SecRule ARGS \"@pm\" \"id:1,pass\"", 1, "needs an argument");
  expectError("SecRule ARGS \"@ipMatch 300.1.1.1\" \"id:1,pass\"", 1, "not an IP address");
  expectError("SecRule ARGS \"@validateByteRange 1-300\" \"id:1,pass\"", 1, "@validateByteRange");
  expectError("SecRule ARGS \"@inspectFile /bin/x\" \"id:1,pass\"", 1, "not supported");
  expectError("SecRule ARGS \"@streq %{nosuch.var}\" \"id:1,pass\"", 1, "unknown variable in macro");
}

TEST(RuleParserActions, SetVarForms) {
  auto rs = mustLoad(
      "SecAction \"id:1,phase:1,pass,nolog,setvar:tx.a=1,setvar:'tx.b=+%{tx.c}',"
      "setvar:tx.d=-5,setvar:!tx.e,setvar:tx.f,setvar:'ip.%{rule.id}-x=%{MATCHED_VAR}',"
      "setvar:'tx.g= spaced value',setvar:'TX.h='\"");
  ASSERT_EQ(rs.rules.size(), 1u);
  const RuleLink& l = rs.rules[0].links[0];
  ASSERT_EQ(l.effects.size(), 8u);
  EXPECT_EQ(setVarAt(l, 0).op, SetVarOp::kSet);
  EXPECT_EQ(setVarAt(l, 0).collection, VariableName::kTx);
  EXPECT_EQ(setVarAt(l, 0).key.text, "a");
  EXPECT_EQ(setVarAt(l, 0).value.text, "1");
  EXPECT_EQ(setVarAt(l, 1).op, SetVarOp::kIncrement);
  EXPECT_EQ(literalOf(setVarAt(l, 1).value), "${TX.c}");
  EXPECT_EQ(setVarAt(l, 2).op, SetVarOp::kDecrement);
  EXPECT_EQ(setVarAt(l, 2).value.text, "5");
  EXPECT_EQ(setVarAt(l, 3).op, SetVarOp::kDelete);
  EXPECT_EQ(setVarAt(l, 3).key.text, "e");
  EXPECT_EQ(setVarAt(l, 4).op, SetVarOp::kSet);  // no '=': set to 1, as ModSecurity does
  EXPECT_EQ(setVarAt(l, 4).value.text, "1");
  EXPECT_EQ(setVarAt(l, 5).collection, VariableName::kIp);
  EXPECT_EQ(literalOf(setVarAt(l, 5).key), "${RULE.id}-x");
  EXPECT_EQ(literalOf(setVarAt(l, 5).value), "${MATCHED_VAR}");
  EXPECT_EQ(setVarAt(l, 6).value.text, "spaced value");  // leading blanks dropped
  EXPECT_EQ(setVarAt(l, 7).value.text, "");
  EXPECT_TRUE(rs.rules[0].isSecAction);
  EXPECT_EQ(l.op.kind, OperatorKind::kUnconditionalMatch);
  EXPECT_EQ(l.log, std::optional<bool>(false));
}

TEST(RuleParserActions, MetadataFlowAndStateActions) {
  auto rs = mustLoad(
      "SecRule ARGS \"@rx x\" \"id:7,phase:response,deny,status:403,capture,multiMatch,"
      "t:none,t:LOWERCASE,t:urlDecodeUni,severity:'CRITICAL',ver:'OWASP_CRS/3.3.4',rev:2,"
      "maturity:9,accuracy:8,auditlog,log,skip:2,"
      "expirevar:'ip.flag=%{tx.duration}',initcol:ip=%{remote_addr}_%{tx.ua_hash},"
      "setenv:X=1,ctl:ruleEngine=DetectionOnly,ctl:auditLogParts=+E,"
      "ctl:ruleRemoveTargetById=942100-942199;ARGS:pwd,ctl:ruleRemoveByTag=attack-sqli,"
      "ctl:requestBodyProcessor=JSON\"\n"
      "SecRule ARGS \"@rx y\" \"id:8,phase:logging,allow:phase,severity:4\"\n"
      "SecRule ARGS \"@rx y\" \"id:9,phase:request,redirect:'http://%{request_headers.host}/'\"\n");
  ASSERT_EQ(rs.rules.size(), 3u);
  const Rule& r = rs.rules[0];
  EXPECT_EQ(r.phase, Phase::kResponseBody);
  EXPECT_EQ(r.disruptive, Disruptive::kDeny);
  EXPECT_EQ(r.status, std::optional<uint16_t>(403));
  EXPECT_EQ(r.severity, std::optional<Severity>(Severity::kCritical));
  EXPECT_EQ(r.ver, "OWASP_CRS/3.3.4");
  EXPECT_EQ(r.rev, "2");
  EXPECT_EQ(r.maturity, std::optional<uint8_t>(9));
  EXPECT_EQ(r.accuracy, std::optional<uint8_t>(8));
  EXPECT_EQ(r.skip, 2u);
  const RuleLink& l = r.links[0];
  EXPECT_TRUE(l.capture);
  EXPECT_TRUE(l.multiMatch);
  EXPECT_TRUE(l.transformationsReset);
  EXPECT_EQ(l.transformations, (std::vector<std::string>{"lowercase", "urlDecodeUni"}));
  EXPECT_EQ(l.log, std::optional<bool>(true));
  EXPECT_EQ(l.auditLog, std::optional<bool>(true));
  ASSERT_EQ(l.effects.size(), 8u);
  const auto& ev = std::get<ExpireVar>(l.effects[0]);
  EXPECT_EQ(ev.collection, VariableName::kIp);
  EXPECT_EQ(ev.key.text, "flag");
  EXPECT_EQ(literalOf(ev.seconds), "${TX.duration}");
  const auto& ic = std::get<InitCol>(l.effects[1]);
  EXPECT_EQ(ic.collection, VariableName::kIp);
  EXPECT_EQ(literalOf(ic.key), "${REMOTE_ADDR}_${TX.ua_hash}");
  EXPECT_EQ(std::get<SetEnv>(l.effects[2]).name.text, "X");
  EXPECT_EQ(std::get<Ctl>(l.effects[3]).kind, CtlKind::kRuleEngine);
  EXPECT_EQ(std::get<Ctl>(l.effects[3]).value, "DetectionOnly");
  EXPECT_EQ(std::get<Ctl>(l.effects[4]).value, "+E");
  const auto& rt = std::get<Ctl>(l.effects[5]);
  EXPECT_EQ(rt.kind, CtlKind::kRuleRemoveTargetById);
  ASSERT_EQ(rt.ids.size(), 1u);
  EXPECT_EQ(rt.ids[0].first, 942100u);
  EXPECT_EQ(rt.ids[0].last, 942199u);
  ASSERT_TRUE(rt.target.has_value());
  EXPECT_EQ(rt.target->name, VariableName::kArgs);
  EXPECT_EQ(rt.target->selector, "pwd");
  EXPECT_EQ(std::get<Ctl>(l.effects[6]).pattern, "attack-sqli");
  EXPECT_EQ(std::get<Ctl>(l.effects[7]).kind, CtlKind::kRequestBodyProcessor);
  EXPECT_EQ(rs.rules[1].phase, Phase::kLogging);
  EXPECT_EQ(rs.rules[1].disruptive, Disruptive::kAllow);
  EXPECT_EQ(rs.rules[1].allowScope, AllowScope::kPhase);
  EXPECT_EQ(rs.rules[1].severity, std::optional<Severity>(Severity::kWarning));
  EXPECT_EQ(rs.rules[2].phase, Phase::kRequestBody);
  EXPECT_EQ(rs.rules[2].disruptive, Disruptive::kRedirect);
  EXPECT_EQ(literalOf(rs.rules[2].redirectUrl), "http://${REQUEST_HEADERS.host}/");
}

TEST(RuleParserActions, BadValues) {
  expectError("SecRule ARGS \"@rx x\" \"id:1,severity:SEVERE\"", 1, "severity");
  expectError("SecRule ARGS \"@rx x\" \"id:1,t:rot13\"", 1, "unknown transformation");
  expectError("SecRule ARGS \"@rx x\" \"id:1,ctl:ruleEngine=Maybe\"", 1, "ctl:ruleEngine");
  expectError("SecRule ARGS \"@rx x\" \"id:1,ctl:noSuchThing=1\"", 1, "ctl");
  expectError("SecRule ARGS \"@rx x\" \"id:1,setvar:nocollection\"", 1, "COLLECTION.name");
  expectError("SecRule ARGS \"@rx x\" \"id:1,setvar:args.x=1\"", 1, "writable collection");
  expectError("SecRule ARGS \"@rx x\" \"id:1,pass:yes\"", 1, "takes no value");
  expectError("SecRule ARGS \"@rx x\" \"id:1,msg\"", 1, "needs a value");
  expectError("SecRule ARGS \"@rx x\" \"id:1,exec:/bin/sh\"", 1, "not supported");
  expectError("SecRule ARGS \"@rx x\" \"id:1,msg:'%{nosuch}'\"", 1, "unknown variable in macro");
  expectError("SecRule ARGS \"@rx x\" \"id:1,msg:'a\\x'\"", 1, "invalid escape");
  expectError("SecRule ARGS \"@rx x\" \"id:0\"", 1, "rule id");
}

// ---------------------------------------------------------------------------
// Chains, markers, defaults, exclusions
// ---------------------------------------------------------------------------

TEST(RuleParserChains, LinksCarryTheirOwnMatchingParts) {
  auto rs = mustLoad(
      "SecRule REQUEST_METHOD \"@streq POST\" \"id:1,phase:2,block,t:none,msg:'m',chain\"\n"
      "  SecRule &REQUEST_HEADERS:Content-Length \"@eq 0\" \"t:lowercase,capture,chain\"\n"
      "    SecRule TX:x \"@rx y\" \"setvar:'tx.score=+%{tx.critical_anomaly_score}',nolog\"\n"
      "SecRule ARGS \"@rx z\" \"id:2,pass\"\n");
  ASSERT_EQ(rs.rules.size(), 2u);
  const Rule& r = rs.rules[0];
  ASSERT_EQ(r.links.size(), 3u);
  EXPECT_EQ(r.links[1].variables[0].name, VariableName::kRequestHeaders);
  EXPECT_TRUE(r.links[1].variables[0].count);
  EXPECT_EQ(r.links[1].op.kind, OperatorKind::kEq);
  EXPECT_TRUE(r.links[1].capture);
  EXPECT_EQ(r.links[1].transformations, std::vector<std::string>{"lowercase"});
  EXPECT_EQ(r.links[1].line, 2);
  EXPECT_EQ(r.links[2].line, 3);
  EXPECT_EQ(setVarAt(r.links[2], 0).op, SetVarOp::kIncrement);
  EXPECT_EQ(rs.rules[1].links.size(), 1u);
}

TEST(RuleParserChains, Errors) {
  expectError("SecRule ARGS \"@rx a\" \"id:1,pass\"\n"
              "SecRule ARGS \"@rx b\" \"id:2,pass,chain\"\n",
              2, "no SecRule follows before the end of the file");
  expectError("SecRule ARGS \"@rx a\" \"id:1,pass,chain\"\n"
              "SecRule ARGS \"@rx b\" \"id:2\"\n",
              2, "action 'id' is not allowed in a chained rule");
  expectError("SecRule ARGS \"@rx a\" \"id:1,pass,chain\"\n"
              "SecMarker X\n",
              1, "followed by SecMarker");
}

TEST(RuleParserMarkers, SkipAfterResolvesToMarkerPosition) {
  auto rs = mustLoad("SecRule ARGS \"@rx a\" \"id:1,pass,skipAfter:END-X\"\n"
                     "SecRule ARGS \"@rx b\" \"id:2,pass\"\n"
                     "SecMarker \"END-X\"\n"
                     "SecRule ARGS \"@rx c\" \"id:3,pass,skipAfter:4\"\n"
                     "SecRule ARGS \"@rx c\" \"id:4,pass\"\n"
                     "SecMarker END-Y\n");
  ASSERT_EQ(rs.markers.size(), 2u);
  EXPECT_EQ(rs.markers[0].name, "END-X");
  EXPECT_EQ(rs.markers[0].ruleIndex, 2u);
  EXPECT_EQ(rs.markers[1].ruleIndex, 4u);
  ASSERT_TRUE(rs.rules[0].skipAfter.has_value());
  EXPECT_EQ(rs.rules[0].skipAfter->resumeIndex, 2u);
  ASSERT_TRUE(rs.rules[2].skipAfter.has_value());
  EXPECT_EQ(rs.rules[2].skipAfter->resumeIndex, 4u);  // skipAfter a rule id: after that rule
}

TEST(RuleParserMarkers, SkipAfterUnknownOrEarlierMarkerIsAnError) {
  expectError("SecRule ARGS \"@rx a\" \"id:1,pass,skipAfter:NOPE\"\n", 1, "skipAfter:NOPE");
  expectError("SecMarker BACK\nSecRule ARGS \"@rx a\" \"id:1,pass,skipAfter:BACK\"\n", 2,
              "skipAfter:BACK");
}

TEST(RuleParserDefaults, PerPhaseDefaultActions) {
  auto rs = mustLoad("SecDefaultAction \"phase:1,log,auditlog,pass\"\n"
                     "SecDefaultAction \"phase:2,nolog,deny,status:403,t:lowercase\"\n"
                     "SecRule ARGS \"@rx a\" \"id:1,phase:1,block\"\n"
                     "SecRule ARGS \"@rx a\" \"id:2,block\"\n"
                     "SecRule ARGS \"@rx a\" \"id:3,phase:3,block\"\n");
  ASSERT_EQ(rs.defaultActions.size(), 2u);
  EXPECT_EQ(rs.defaultActions[1].disruptive, Disruptive::kDeny);
  EXPECT_EQ(rs.defaultActions[1].transformations, std::vector<std::string>{"lowercase"});
  EXPECT_EQ(rs.rules[0].defaultActionIndex, 0);
  EXPECT_EQ(rs.rules[1].defaultActionIndex, 1);
  EXPECT_EQ(rs.rules[2].defaultActionIndex, -1);
  expectError("SecDefaultAction \"phase:2,id:5,pass\"", 1, "not allowed in SecDefaultAction");
  expectError("SecDefaultAction \"pass\"", 1, "must specify a phase");
  expectError("SecDefaultAction \"phase:2,log\"", 1, "disruptive");
}

TEST(RuleParserExclusions, RemoveAndUpdateAffectOnlyEarlierRules) {
  auto rs = mustLoad(
      "SecRule ARGS \"@rx a\" \"id:100,pass,tag:'attack-sqli',msg:'SQL thing'\"\n"
      "SecRule ARGS \"@rx a\" \"id:101,pass,tag:'attack-xss'\"\n"
      "SecRule ARGS \"@rx a\" \"id:102,pass\"\n"
      "SecRule ARGS \"@rx a\" \"id:103,pass\"\n"
      "SecRuleRemoveById 102-102 \"999\"\n"
      "SecRuleRemoveByTag \"xss$\"\n"
      "SecRuleUpdateTargetById 100 \"!ARGS:foo|REQUEST_HEADERS:X\"\n"
      "SecRuleUpdateTargetById 100 \"!ARGS:foo\"\n"
      "SecRuleUpdateTargetById 103 ARGS_NAMES ARGS\n"
      "SecRuleUpdateActionById 100 \"t:none,deny,status:404,tag:extra\"\n"
      "SecRule ARGS \"@rx a\" \"id:102,pass,tag:'attack-xss'\"\n"  // redefined after removal
      "SecRuleRemoveByMsg \"^SQL\"\n");
  std::vector<uint32_t> ids;
  for (const auto& r : rs.rules) ids.push_back(r.id);
  EXPECT_EQ(ids, (std::vector<uint32_t>{103, 102}));
  const Rule* r103 = findRule(rs, 103);
  ASSERT_NE(r103, nullptr);
  ASSERT_EQ(r103->links[0].variables.size(), 1u);
  EXPECT_EQ(r103->links[0].variables[0].name, VariableName::kArgsNames);
  EXPECT_EQ(rs.warnings.size(), 0u);

  auto rs2 = mustLoad(
      "SecRule ARGS \"@rx a\" \"id:100,pass,tag:'attack-sqli'\"\n"
      "SecRuleUpdateTargetById 100 \"!ARGS:foo|REQUEST_HEADERS:X\"\n"
      "SecRuleUpdateTargetByTag \"attack-sqli\" \"!ARGS:foo\"\n"
      "SecRuleUpdateActionById 100 \"t:none,deny,status:404,tag:extra,t:lowercase\"\n"
      "SecRuleRemoveById 555\n");
  ASSERT_EQ(rs2.rules.size(), 1u);
  const Rule& r = rs2.rules[0];
  ASSERT_EQ(r.links[0].variables.size(), 3u);  // the repeated !ARGS:foo is not added twice
  EXPECT_TRUE(r.links[0].variables[1].exclude);
  EXPECT_EQ(r.links[0].variables[2].name, VariableName::kRequestHeaders);
  EXPECT_EQ(r.disruptive, Disruptive::kDeny);
  EXPECT_EQ(r.status, std::optional<uint16_t>(404));
  EXPECT_EQ(r.tags.size(), 2u);
  EXPECT_EQ(r.links[0].transformations, std::vector<std::string>{"lowercase"});
  ASSERT_EQ(rs2.warnings.size(), 1u);  // removing an id nobody defined
  EXPECT_EQ(rs2.warnings[0].line, 5);
}

TEST(RuleParserSettings, EngineDirectivesAreRecorded) {
  auto rs = mustLoad("SecRuleEngine DetectionOnly\n"
                     "secrequestbodyaccess On\n"
                     "SecCollectionTimeout 600\n"
                     "SecComponentSignature \"OWASP_CRS/3.3.4\"\n"
                     "SecResponseBodyMimeType text/plain text/html\n");
  ASSERT_EQ(rs.settings.size(), 4u);
  EXPECT_EQ(rs.settings[0].name, "SecRuleEngine");
  EXPECT_EQ(rs.settings[0].args, std::vector<std::string>{"DetectionOnly"});
  EXPECT_EQ(rs.settings[1].name, "SecRequestBodyAccess");
  EXPECT_EQ(rs.settings[2].args, std::vector<std::string>{"600"});
  EXPECT_EQ(rs.settings[3].args.size(), 2u);
  EXPECT_EQ(rs.componentSignatures, std::vector<std::string>{"OWASP_CRS/3.3.4"});
  expectError("SecRuleEngine Sometimes\n", 1, "SecRuleEngine");
  expectError("SecCollectionTimeout\n", 1, "takes 1 argument");
  expectError("SecFrobnicate On\n", 1, "unknown directive");
  expectError("<IfModule security2_module>\n", 1, "unsupported directive");
  expectError("SecRuleScript /x.lua\n", 1, "not supported");
}

TEST(RuleParserInclude, GlobRelativeToIncludingFile) {
  TempDir dir;
  dir.write("main.conf", "Include sub/*.conf\nIncludeOptional nothing/*.conf\n");
  dir.write("sub/b.conf", "SecRule ARGS \"@pmFromFile ../words.data\" \"id:2,pass\"\n");
  dir.write("sub/a.conf", "SecRule ARGS \"@rx a\" \"id:1,pass\"\n");
  dir.write("words.data", "alpha\nbeta\n");
  std::vector<LoadError> errors;
  auto rs = loadRuleFiles({dir.path() + "/main.conf"}, &errors);
  ASSERT_TRUE(rs) << joinErrors(errors);
  ASSERT_EQ(rs->rules.size(), 2u);
  EXPECT_EQ(rs->rules[0].id, 1u);  // sub/a.conf before sub/b.conf
  EXPECT_EQ(rs->rules[1].links[0].op.phrases, (std::vector<std::string>{"alpha", "beta"}));
  EXPECT_EQ(rs->files.size(), 4u);  // main, a, b, words.data

  dir.write("loop.conf", "Include loop.conf\n");
  errors.clear();
  EXPECT_FALSE(loadRuleFiles({dir.path() + "/loop.conf"}, &errors));
  ASSERT_FALSE(errors.empty());
  EXPECT_NE(errors[0].message.find("cycle"), std::string::npos) << joinErrors(errors);

  errors.clear();
  EXPECT_FALSE(loadRuleFiles({dir.path() + "/none.conf"}, &errors));
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_EQ(errors[0].line, 0);

  errors.clear();
  EXPECT_FALSE(loadRuleFiles({dir.path() + "/sub"}, &errors));
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_NE(errors[0].message.find("is a directory"), std::string::npos);

  dir.write("missing.conf", "\nInclude does-not-exist.conf\n");
  errors.clear();
  EXPECT_FALSE(loadRuleFiles({dir.path() + "/missing.conf"}, &errors));
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_EQ(errors[0].line, 2);
  EXPECT_NE(errors[0].message.find("not found"), std::string::npos);
}

TEST(RuleParserHash, ContentHashFollowsContent) {
  auto a = mustLoad("SecRule ARGS \"@rx a\" \"id:1,pass\"\n");
  auto b = mustLoad("SecRule ARGS \"@rx a\" \"id:1,pass\"\n");
  auto c = mustLoad("SecRule ARGS \"@rx b\" \"id:1,pass\"\n");
  EXPECT_EQ(contentHashHex(a).size(), 64u);
  EXPECT_EQ(contentHashHex(a), contentHashHex(b));
  EXPECT_NE(contentHashHex(a), contentHashHex(c));
}

// ---------------------------------------------------------------------------
// Error reporting: file and line
// ---------------------------------------------------------------------------

TEST(RuleParserErrors, EachReportsFileAndLine) {
  expectError("\n\nSecRule ARGS \"@nosuch x\" \"id:1,pass\"\n", 3, "unknown operator '@nosuch'");
  expectError("# c\nSecRule ARGS \"@rx x\" \"id:1,pass,frobnicate\"\n", 2,
              "unknown action 'frobnicate'");
  expectError("SecRule ARGS|NOT_A_VARIABLE \"@rx x\" \"id:1,pass\"\n", 1,
              "unknown variable 'NOT_A_VARIABLE'");
  expectError("SecRule ARGS \"@rx x\" \"id:1,pass\"\nSecRule ARGS \"@rx x\" \"id:2,pass\n", 2,
              "unterminated quoted string");
  expectError("SecRule ARGS \"@pmFromFile no-such.data\" \"id:1,pass\"\n", 1,
              "cannot read data file");
  expectError("SecRule ARGS \"@rx x\" \"id:1,phase:6\"\n", 1, "phase");
  expectError("SecRule ARGS \"@rx x\" \"id:1,phase:2,pass\"\n"
              "SecRule ARGS \"@rx x\" \"id:1,phase:2,pass\"\n",
              2, "duplicate rule id 1");
  expectError("SecRule ARGS \"@rx x\" \"phase:2,pass\"\n", 1, "no id");
  expectError("SecRule ARGS \"@rx x\"\n", 1, "no id");
  expectError("SecRule ARGS \"@rx x\" \"id:1\" extra\n", 1, "takes 2 to 3 argument");
}

TEST(RuleParserErrors, ContinuationLinesReportTheStartLineAndThePreciseLine) {
  const char* text =
      "# line 1\n"
      "\n"
      "SecRule ARGS \"@rx x\" \\\n"  // line 3: the directive starts here
      "    \"id:1,\\\n"
      "    phase:2,\\\n"
      "    frobnicate,\\\n"  // line 6: the bad action
      "    pass\"\n"
      "SecRule ARGS \"@nosuch\" \"id:2\"\n";  // line 8
  auto errors = mustFail(text);
  ASSERT_EQ(errors.size(), 2u) << joinErrors(errors);
  EXPECT_EQ(errors[0].line, 3);
  EXPECT_NE(errors[0].message.find("(on line 6)"), std::string::npos) << errors[0].message;
  EXPECT_EQ(errors[1].line, 8);
}

TEST(RuleParserErrors, UnterminatedQuoteInsideContinuation) {
  auto errors = mustFail("SecRule ARGS \"@rx x\" \\\n  \"id:1,\\\n  pass\n");
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_EQ(errors[0].line, 1);
  EXPECT_NE(errors[0].message.find("opened on line 2"), std::string::npos) << errors[0].message;
}

TEST(RuleParserErrors, BrokenChainHeadDoesNotCascade) {
  // The head's actions never close their quote; its chained rule must not be
  // reported again as a rule without id.
  expectError("SecRule ARGS \"@rx a\" \"id:1,pass,chain\n"
              "    SecRule ARGS \"@rx b\" \"t:none\"\n"
              "SecRule ARGS \"@rx c\" \"id:2,pass\"\n",
              1, "unterminated quoted string");
  // A broken link drops the whole chain, once.
  auto errors = mustFail("SecRule ARGS \"@rx a\" \"id:1,pass,chain\"\n"
                         "    SecRule ARGS \"@nosuch b\" \"chain\"\n"
                         "    SecRule ARGS \"@rx b\"\n"
                         "SecRule ARGS \"@rx c\" \"id:2,pass\"\n");
  ASSERT_EQ(errors.size(), 1u) << joinErrors(errors);
  EXPECT_EQ(errors[0].line, 2);
}

TEST(RuleParserErrors, CommentSwallowingADirectiveIsReported) {
  expectError("# SecRule ARGS \"@rx x\" \\\nSecRule ARGS \"@rx y\" \"id:1,pass\"\n", 2,
              "continues the comment on line 1");
  // Commented-out multi-line rules (as in the CRS) are fine.
  mustLoad("#SecRule ARGS \"@rx x\" \\\n#   \"id:1,\\\n#   pass\"\n");
}

TEST(RuleParserErrors, BackslashFollowedByWhitespace) {
  auto errors = mustFail("SecRule ARGS \"@rx x\" \\ \n    \"id:1,pass\"\n");
  ASSERT_FALSE(errors.empty());
  EXPECT_EQ(errors[0].line, 1);
  EXPECT_NE(errors[0].message.find("trailing whitespace"), std::string::npos);
}

TEST(RuleParserErrors, ManyErrorsAreCapped) {
  std::string text;
  for (int i = 0; i < 300; ++i) text += "SecFrobnicate " + std::to_string(i) + "\n";
  std::vector<LoadError> errors;
  EXPECT_FALSE(loadRuleText(text, "test.conf", ".", &errors));
  EXPECT_EQ(errors.size(), kMaxLoadErrors + 1);
  EXPECT_FALSE(loadRuleText(text, "test.conf", ".", nullptr));  // errors may be dropped
}

// ---------------------------------------------------------------------------
// The real OWASP CRS as Debian ships it
// ---------------------------------------------------------------------------

// Debian's order (owasp-crs.load): setup, 900 exclusions, rules/*.conf, 999 exclusions.
std::vector<std::string> crsFiles() {
  std::vector<std::string> files = {std::string(kCrsSetupDir) + "/crs-setup.conf",
                                    std::string(kCrsSetupDir) +
                                        "/REQUEST-900-EXCLUSION-RULES-BEFORE-CRS.conf"};
  std::vector<std::string> rules;
  for (const auto& e : fs::directory_iterator(kCrsRules)) {
    if (e.path().extension() == ".conf") rules.push_back(e.path().string());
  }
  std::sort(rules.begin(), rules.end());
  files.insert(files.end(), rules.begin(), rules.end());
  files.push_back(std::string(kCrsSetupDir) + "/RESPONSE-999-EXCLUSION-RULES-AFTER-CRS.conf");
  return files;
}

// Independent count: `id:NNN` (after a quote, comma or blank) outside comment lines.
size_t countIdsByScan(const std::vector<std::string>& files) {
  size_t n = 0;
  for (const auto& f : files) {
    std::ifstream in(f);
    std::string line;
    while (std::getline(in, line)) {
      size_t first = line.find_first_not_of(" \t");
      if (first == std::string::npos || line[first] == '#') continue;
      for (size_t at = line.find("id:"); at != std::string::npos; at = line.find("id:", at + 1)) {
        bool startsWord = at == 0 || std::string_view(" \t\"',").find(line[at - 1]) != std::string_view::npos;
        size_t digit = at + 3 + (at + 3 < line.size() && line[at + 3] == '\'' ? 1 : 0);
        if (startsWord && digit < line.size() && line[digit] >= '0' && line[digit] <= '9') ++n;
      }
    }
  }
  return n;
}

size_t countDataLines(const std::string& file) {
  std::ifstream in(file);
  std::string line;
  size_t n = 0;
  while (std::getline(in, line)) {
    size_t first = line.find_first_not_of(" \t\r");
    if (first != std::string::npos && line[first] != '#') ++n;
  }
  return n;
}

class CrsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!fs::exists(kCrsRules) || !fs::exists(std::string(kCrsSetupDir) + "/crs-setup.conf")) return;
    files_ = crsFiles();
    auto start = std::chrono::steady_clock::now();
    ruleSet_ = loadRuleFiles(files_, &errors_);
    auto ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start);
    if (ruleSet_) {
      std::printf("[ CRS      ] %zu files read, %zu rules, %zu markers, %zu settings in %.1f ms; "
                  "sha256 %s\n",
                  ruleSet_->files.size(), ruleSet_->rules.size(), ruleSet_->markers.size(),
                  ruleSet_->settings.size(), ms.count(), contentHashHex(*ruleSet_).c_str());
    }
  }
  static void TearDownTestSuite() { ruleSet_.reset(); }

  void SetUp() override {
    if (files_.empty()) GTEST_SKIP() << "OWASP CRS not installed (apt install modsecurity-crs)";
    ASSERT_TRUE(ruleSet_.has_value()) << joinErrors(errors_);
  }

  const Rule& rule(uint32_t id) {
    const Rule* r = findRule(*ruleSet_, id);
    EXPECT_NE(r, nullptr) << "rule " << id;
    static const Rule kEmpty{};
    return r ? *r : kEmpty;
  }

  static inline std::vector<std::string> files_;
  static inline std::optional<RuleSet> ruleSet_;
  static inline std::vector<LoadError> errors_;
};

TEST_F(CrsTest, LoadsWithoutErrorsAndEveryIdIsARule) {
  EXPECT_TRUE(errors_.empty()) << joinErrors(errors_);
  EXPECT_TRUE(ruleSet_->warnings.empty()) << joinErrors(ruleSet_->warnings);
  EXPECT_EQ(ruleSet_->rules.size(), countIdsByScan(files_));
  EXPECT_GT(ruleSet_->rules.size(), 600u);
  EXPECT_GE(ruleSet_->markers.size(), 40u);
  EXPECT_EQ(ruleSet_->componentSignatures, std::vector<std::string>{"OWASP_CRS/3.3.4"});
  ASSERT_EQ(ruleSet_->defaultActions.size(), 2u);
  EXPECT_EQ(ruleSet_->defaultActions[0].phase, Phase::kRequestHeaders);
  EXPECT_EQ(ruleSet_->defaultActions[1].phase, Phase::kRequestBody);
  EXPECT_EQ(ruleSet_->defaultActions[1].disruptive, Disruptive::kPass);
  bool timeout = false;
  for (const auto& s : ruleSet_->settings) {
    timeout = timeout || (s.name == "SecCollectionTimeout" && s.args == std::vector<std::string>{"600"});
  }
  EXPECT_TRUE(timeout);
}

TEST_F(CrsTest, LoadingThroughDebiansIncludeFileGivesTheSameRules) {
  const std::string load = "/usr/share/modsecurity-crs/owasp-crs.load";
  if (!fs::exists(load)) GTEST_SKIP() << load << " absent";
  std::vector<LoadError> errors;
  auto rs = loadRuleFiles({load}, &errors);
  ASSERT_TRUE(rs) << joinErrors(errors);
  ASSERT_EQ(rs->rules.size(), ruleSet_->rules.size());
  for (size_t i = 0; i < rs->rules.size(); ++i) EXPECT_EQ(rs->rules[i].id, ruleSet_->rules[i].id);
}

TEST_F(CrsTest, Rule942100IsLibinjectionOnTheUsualTargets) {
  const Rule& r = rule(942100);
  ASSERT_EQ(r.links.size(), 1u);
  const RuleLink& l = r.links[0];
  EXPECT_EQ(l.op.kind, OperatorKind::kDetectSqli);
  EXPECT_FALSE(l.op.negated);
  ASSERT_EQ(l.variables.size(), 8u);
  EXPECT_EQ(l.variables[0].name, VariableName::kRequestCookies);
  EXPECT_TRUE(l.variables[1].exclude);
  EXPECT_EQ(l.variables[1].selectorKind, SelectorKind::kRegex);
  EXPECT_EQ(l.variables[1].selector, "__utm");
  EXPECT_EQ(l.variables[2].name, VariableName::kRequestCookiesNames);
  EXPECT_EQ(l.variables[3].name, VariableName::kRequestHeaders);
  EXPECT_EQ(l.variables[3].selector, "User-Agent");
  EXPECT_EQ(l.variables[4].selector, "Referer");
  EXPECT_EQ(l.variables[5].name, VariableName::kArgsNames);
  EXPECT_EQ(l.variables[6].name, VariableName::kArgs);
  EXPECT_EQ(l.variables[7].name, VariableName::kXml);
  EXPECT_TRUE(l.transformationsReset);
  EXPECT_EQ(l.transformations,
            (std::vector<std::string>{"utf8toUnicode", "urlDecodeUni", "removeNulls"}));
  EXPECT_TRUE(l.capture);
  EXPECT_TRUE(l.multiMatch);
  EXPECT_EQ(r.phase, Phase::kRequestBody);
  EXPECT_EQ(r.disruptive, Disruptive::kBlock);
  EXPECT_EQ(r.severity, std::optional<Severity>(Severity::kCritical));
  EXPECT_EQ(r.msg.text, "SQL Injection Attack Detected via libinjection");
  EXPECT_EQ(literalOf(r.logdata),
            "Matched Data: ${TX.0} found within ${MATCHED_VAR_NAME}: ${MATCHED_VAR}");
  EXPECT_EQ(r.tags.size(), 8u);
  ASSERT_EQ(l.effects.size(), 2u);
  const SetVar& sv = setVarAt(l, 0);
  EXPECT_EQ(sv.collection, VariableName::kTx);
  EXPECT_EQ(sv.key.text, "anomaly_score_pl1");
  EXPECT_EQ(sv.op, SetVarOp::kIncrement);
  EXPECT_EQ(literalOf(sv.value), "${TX.critical_anomaly_score}");
}

TEST_F(CrsTest, Rule920350IsARegexOnHost) {
  const Rule& r = rule(920350);
  const RuleLink& l = r.links.at(0);
  EXPECT_EQ(l.op.kind, OperatorKind::kRx);
  EXPECT_EQ(l.op.argument, R"(^[\d.:]+$)");
  ASSERT_EQ(l.variables.size(), 1u);
  EXPECT_EQ(l.variables[0].name, VariableName::kRequestHeaders);
  EXPECT_EQ(l.variables[0].selector, "Host");
}

TEST_F(CrsTest, Rule949110IsTheInboundBlockingEvaluation) {
  const Rule& r = rule(949110);
  EXPECT_EQ(r.phase, Phase::kRequestBody);
  EXPECT_EQ(r.disruptive, Disruptive::kDeny);
  EXPECT_EQ(r.links.at(0).op.kind, OperatorKind::kGe);
  EXPECT_EQ(literalOf(r.links[0].op.expandable), "${TX.inbound_anomaly_score_threshold}");
  EXPECT_EQ(literalOf(r.msg), "Inbound Anomaly Score Exceeded (Total Score: ${TX.ANOMALY_SCORE})");
}

TEST_F(CrsTest, Rule920180HasItsChainLinks) {
  const Rule& r = rule(920180);
  ASSERT_EQ(r.links.size(), 4u);
  EXPECT_EQ(r.links[0].op.kind, OperatorKind::kWithin);
  EXPECT_TRUE(r.links[0].op.negated);
  EXPECT_EQ(r.links[0].op.argument, "HTTP/2 HTTP/2.0");
  EXPECT_EQ(r.links[1].variables.at(0).name, VariableName::kRequestMethod);
  EXPECT_EQ(r.links[1].op.kind, OperatorKind::kStreq);
  EXPECT_EQ(r.links[1].op.argument, "POST");
  EXPECT_TRUE(r.links[2].variables.at(0).count);
  EXPECT_EQ(r.links[2].variables[0].selector, "Content-Length");
  EXPECT_EQ(r.links[2].op.kind, OperatorKind::kEq);
  EXPECT_EQ(r.links[3].variables.at(0).selector, "Transfer-Encoding");
  ASSERT_EQ(r.links[3].effects.size(), 1u);
  EXPECT_EQ(setVarAt(r.links[3], 0).op, SetVarOp::kIncrement);
  EXPECT_EQ(literalOf(setVarAt(r.links[3], 0).value), "${TX.warning_anomaly_score}");
  EXPECT_EQ(r.links[3].line, r.links[0].line + 21);  // the last SecRule of the chain
}

TEST_F(CrsTest, InitializationRulesSetTheirVariables) {
  const Rule& r901001 = rule(901001);
  EXPECT_EQ(r901001.phase, Phase::kRequestHeaders);
  EXPECT_EQ(r901001.disruptive, Disruptive::kDeny);
  EXPECT_EQ(r901001.status, std::optional<uint16_t>(500));
  EXPECT_TRUE(r901001.links.at(0).variables.at(0).count);
  EXPECT_EQ(r901001.links[0].variables[0].selector, "crs_setup_version");

  const Rule& r901100 = rule(901100);
  ASSERT_EQ(r901100.links.at(0).effects.size(), 1u);
  EXPECT_EQ(setVarAt(r901100.links[0], 0).key.text, "inbound_anomaly_score_threshold");
  EXPECT_EQ(setVarAt(r901100.links[0], 0).op, SetVarOp::kSet);
  EXPECT_EQ(setVarAt(r901100.links[0], 0).value.text, "5");

  const Rule& r901200 = rule(901200);
  EXPECT_TRUE(r901200.isSecAction);
  EXPECT_GE(r901200.links.at(0).effects.size(), 8u);

  // 901318-ish: the tx.ua_hash / ip collection setup uses macros in initcol.
  bool sawInitcol = false;
  for (const auto& r : ruleSet_->rules) {
    for (const auto& l : r.links) {
      for (const auto& e : l.effects) {
        if (const auto* ic = std::get_if<InitCol>(&e); ic && ic->collection == VariableName::kIp) {
          sawInitcol = true;
          EXPECT_EQ(literalOf(ic->key), "${REMOTE_ADDR}_${TX.ua_hash}");
        }
      }
    }
  }
  EXPECT_TRUE(sawInitcol);
}

TEST_F(CrsTest, PmFromFileLoadsTheDataFile) {
  const Rule& r = rule(913100);
  const Operator& op = r.links.at(0).op;
  EXPECT_EQ(op.kind, OperatorKind::kPmFromFile);
  ASSERT_EQ(op.dataFiles.size(), 1u);
  EXPECT_EQ(op.dataFiles[0], std::string(kCrsRules) + "/scanners-user-agents.data");
  EXPECT_EQ(op.phrases.size(), countDataLines(op.dataFiles[0]));
  auto has = [&](const std::string& p) {
    return std::find(op.phrases.begin(), op.phrases.end(), p) != op.phrases.end();
  };
  EXPECT_TRUE(has("(hydra)"));
  EXPECT_TRUE(has("advanced email extractor"));
  for (const auto& p : op.phrases) EXPECT_NE(p[0], '#');

  // php-errors.data has "started with '\\0'": ModSecurity's pm decoding gives '\0'.
  bool found = false;
  for (const auto& rr : ruleSet_->rules) {
    for (const auto& p : rr.links[0].op.phrases) {
      found = found || p == "Cannot access property started with '\\0'";
    }
  }
  EXPECT_TRUE(found);
}

TEST_F(CrsTest, BackslashesFollowApacheQuoting) {
  // 920 "abnormal escapes" is written "(?:^|[^\\\\])\\\\[cdeghijklmpqwxyz123456789]".
  bool found = false;
  for (const auto& r : ruleSet_->rules) {
    if (r.links[0].op.argument == R"((?:^|[^\\])\\[cdeghijklmpqwxyz123456789])") found = true;
  }
  EXPECT_TRUE(found);
  // 980 counts TX:'/LEAKAGE\\\/ERRORS/' -> regex LEAKAGE\/ERRORS.
  found = false;
  for (const auto& r : ruleSet_->rules) {
    for (const auto& l : r.links) {
      for (const auto& v : l.variables) {
        found = found || (v.count && v.selectorKind == SelectorKind::kRegex &&
                          v.selector == R"(LEAKAGE\/ERRORS)");
      }
    }
  }
  EXPECT_TRUE(found);
}

TEST_F(CrsTest, SkipAfterTargetsResolveToTheirMarkers) {
  size_t resolved = 0;
  for (size_t i = 0; i < ruleSet_->rules.size(); ++i) {
    const Rule& r = ruleSet_->rules[i];
    if (!r.skipAfter) continue;
    ++resolved;
    EXPECT_GT(r.skipAfter->resumeIndex, i);
    bool markerThere = false;
    for (const auto& m : ruleSet_->markers) {
      markerThere = markerThere || (m.name == r.skipAfter->target &&
                                    m.ruleIndex == r.skipAfter->resumeIndex);
    }
    EXPECT_TRUE(markerThere) << "rule " << r.id << " skipAfter:" << r.skipAfter->target;
  }
  EXPECT_GT(resolved, 200u);
  // Rules of a phase that uses SecDefaultAction point at it.
  EXPECT_EQ(rule(942100).defaultActionIndex, 1);
}

TEST_F(CrsTest, HashIsStableAcrossLoads) {
  std::vector<LoadError> errors;
  auto again = loadRuleFiles(files_, &errors);
  ASSERT_TRUE(again) << joinErrors(errors);
  EXPECT_EQ(contentHashHex(*again), contentHashHex(*ruleSet_));
  EXPECT_EQ(again->files, ruleSet_->files);
}

}  // namespace
}  // namespace moat::waf
