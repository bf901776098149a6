#include "moat/waf/transform.h"

#include <gtest/gtest.h>

#include <cstdlib>

#include <atomic>
#include <cstdio>
#include <fstream>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

// Cases marked "[name.json]" are translated from ModSecurity's regression files
// (owasp-modsecurity/secrules-language-tests, transformations/<name>.json, as
// run by ModSecurity v3's test/unit). Their "\u0000" inputs become real NUL
// bytes here, as the harness's json2bin does. The other cases follow from
// libmodsecurity v3's source (src/actions/transformations/*.cc).

namespace moat::waf {
namespace {

using namespace std::string_literals;

// ../shared beside the repository (data, never copied in); MOAT_SHARED_DIR
// overrides.
const std::string kMappingFileStorage = [] {
  if (const char* dir = std::getenv("MOAT_SHARED_DIR")) return std::string(dir) + "/data/unicode.mapping";
  return std::string(MOAT_SOURCE_DIR_FOR_TESTS) + "/../shared/data/unicode.mapping";
}();
const char* const kMappingFile = kMappingFileStorage.c_str();

struct Result {
  std::string out;
  bool changed;
};

Result run(Transform t, std::string_view in, const UnicodeMap* map = nullptr) {
  Result r{"stale contents", false};
  r.changed = applyTransform(t, in, r.out, map);
  return r;
}

std::string hex(std::string_view s) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string h;
  for (char c : s) {
    h += kDigits[static_cast<unsigned char>(c) >> 4];
    h += kDigits[static_cast<unsigned char>(c) & 15];
  }
  return h;
}

// Checks output and the "changed" flag; prints bytes in hex on failure. A
// function (not a macro body) keeps this large test file quick to compile.
void check(int line, Transform t, const std::string& in, const std::string& want, bool changed) {
  const Result r = run(t, in);
  EXPECT_EQ(hex(r.out), hex(want))
      << "line " << line << ": " << transformName(t) << " of \"" << in << "\"";
  EXPECT_EQ(r.changed, changed) << "line " << line << ": " << transformName(t) << " of \"" << in
                                << "\"";
}
#define EXPECT_TF(t, in, want, changed) check(__LINE__, (t), (in), (want), (changed))

std::vector<std::string> gTempFiles;

std::string writeTemp(const std::string& name, const std::string& content) {
  std::string path = ::testing::TempDir() + "moat_transform_test_" + name;
  std::ofstream(path, std::ios::binary) << content;
  gTempFiles.push_back(path);
  return path;
}

class TempFileCleanup : public ::testing::Environment {
 public:
  void TearDown() override {
    for (const std::string& p : gTempFiles) std::remove(p.c_str());
  }
};
const auto* const kCleanup = ::testing::AddGlobalTestEnvironment(new TempFileCleanup);

// ---------------------------------------------------------------- names

TEST(TransformName, EveryCrs334NameResolves) {
  // grep -ho 't:[a-zA-Z0-9]*' over CRS 3.3.4's rules (t:alert was a comment).
  const char* kCrs[] = {"base64Decode",
                        "base64decode",
                        "cmdLine",
                        "compressWhitespace",
                        "cssDecode",
                        "hexEncode",
                        "htmlEntityDecode",
                        "jsDecode",
                        "length",
                        "lowercase",
                        "none",
                        "normalisePath",
                        "normalizePath",
                        "normalizePathWin",
                        "removeNulls",
                        "removeWhitespace",
                        "replaceComments",
                        "sha1",
                        "urlDecode",
                        "urlDecodeUni",
                        "utf8toUnicode"};
  for (const char* name : kCrs) EXPECT_TRUE(transformFromName(name).has_value()) << name;
}

TEST(TransformName, CaseInsensitiveAndAliases) {
  EXPECT_EQ(transformFromName("urlDecodeUni"), Transform::kUrlDecodeUni);
  EXPECT_EQ(transformFromName("URLDECODEUNI"), Transform::kUrlDecodeUni);
  EXPECT_EQ(transformFromName("urldecodeuni"), Transform::kUrlDecodeUni);
  EXPECT_EQ(transformFromName("normalisePath"), Transform::kNormalizePath);
  EXPECT_EQ(transformFromName("normalizePath"), Transform::kNormalizePath);
  EXPECT_EQ(transformFromName("normalisePathWin"), Transform::kNormalizePathWin);
  EXPECT_EQ(transformFromName("normalizepathwin"), Transform::kNormalizePathWin);
  EXPECT_EQ(transformFromName("utf8toUnicode"), Transform::kUtf8ToUnicode);
  EXPECT_EQ(transformFromName("sha1"), Transform::kSha1);
  EXPECT_EQ(transformFromName("parityEven7bit"), Transform::kParityEven7bit);
  EXPECT_EQ(transformFromName("urlEncode"), Transform::kUrlEncode);
}

TEST(TransformName, UnknownNamesAreRejected) {
  EXPECT_FALSE(transformFromName(""));
  EXPECT_FALSE(transformFromName("t:none"));
  EXPECT_FALSE(transformFromName("urlDecodeUnicode"));
  EXPECT_FALSE(transformFromName("urlDecodeUn"));
  EXPECT_FALSE(transformFromName("alert"));
  EXPECT_FALSE(transformFromName("none "));
}

TEST(TransformName, CanonicalNamesRoundTrip) {
  for (size_t i = 0; i < kTransformCount; ++i) {
    const auto t = static_cast<Transform>(i);
    const std::string_view name = transformName(t);
    EXPECT_NE(name, "unknown") << i;
    EXPECT_EQ(transformFromName(name), t) << name;
  }
  EXPECT_EQ(transformName(Transform::kNormalizePath), "normalizePath");
  EXPECT_EQ(transformName(static_cast<Transform>(kTransformCount)), "unknown");
}

// ---------------------------------------------------------------- simple byte maps

TEST(Transform, None) {
  EXPECT_TF(Transform::kNone, "", "", false);
  EXPECT_TF(Transform::kNone, "Te%41st\0x"s, "Te%41st\0x"s, false);
}

TEST(Transform, LowercaseUppercase) {
  EXPECT_TF(Transform::kLowercase, "", "", false);
  EXPECT_TF(Transform::kLowercase, "testcase", "testcase", false);
  EXPECT_TF(Transform::kLowercase, "TestCase", "testcase", true);
  EXPECT_TF(Transform::kLowercase, "A\0B\xC4\xD6"s, "a\0b\xC4\xD6"s, true);  // ASCII only
  EXPECT_TF(Transform::kUppercase, "TestCase", "TESTCASE", true);
  EXPECT_TF(Transform::kUppercase, "ABC-1", "ABC-1", false);
  EXPECT_TF(Transform::kUppercase, "\xE4z"s, "\xE4Z"s, true);
}

TEST(Transform, RemoveAndReplaceNulls) {
  EXPECT_TF(Transform::kRemoveNulls, "", "", false);
  EXPECT_TF(Transform::kRemoveNulls, "TestCase", "TestCase", false);
  EXPECT_TF(Transform::kRemoveNulls, "Test\0Case"s, "TestCase", true);
  EXPECT_TF(Transform::kRemoveNulls, "\0\0Test\0\0Case\0\0"s, "TestCase", true);
  EXPECT_TF(Transform::kReplaceNulls, "", "", false);
  EXPECT_TF(Transform::kReplaceNulls, "TestCase", "TestCase", false);
  EXPECT_TF(Transform::kReplaceNulls, "Test\0Case"s, "Test Case", true);
  EXPECT_TF(Transform::kReplaceNulls, "\0Test\0\0Case\0"s, " Test  Case ", true);
}

TEST(Transform, Parity) {  // [parityEven7bit.json] [parityOdd7bit.json]
  EXPECT_TF(Transform::kParityEven7bit, "", "", false);
  EXPECT_TF(Transform::kParityEven7bit, "cefijloqrtwx03569ABDGHKMNPSUVYZ",
            "cefijloqrtwx03569ABDGHKMNPSUVYZ", false);
  EXPECT_TF(Transform::kParityEven7bit, "abc0\0"s,
            "\xE1\xE2"
            "c0\0"s,
            true);
  EXPECT_TF(Transform::kParityOdd7bit, "abdghkmnpsuvyz12478CEFIJLOQRTW",
            "abdghkmnpsuvyz12478CEFIJLOQRTW", false);
  EXPECT_TF(Transform::kParityOdd7bit, "abc0\0"s, "ab\xE3\xB0\x80"s, true);
  EXPECT_TF(Transform::kParityZero7bit, "abc", "abc", false);
  EXPECT_TF(Transform::kParityZero7bit, "\xE1\xE2\x63\xFF"s, "abc\x7F"s, true);
}

// ---------------------------------------------------------------- urlDecode

TEST(Transform, UrlDecode) {  // the [urlDecodeUni.json] cases that apply without %u
  const Transform t = Transform::kUrlDecode;
  EXPECT_TF(t, "", "", false);
  EXPECT_TF(t, "TestCase", "TestCase", false);
  EXPECT_TF(t, "Test\0Case"s, "Test\0Case"s, false);
  EXPECT_TF(t, "Test+Case", "Test Case", true);
  EXPECT_TF(t, "%41%42%43", "ABC", true);
  EXPECT_TF(t, "%4a%4A", "JJ", true);
  EXPECT_TF(t, "%+", "% ", true);
  EXPECT_TF(t, "%%20", "% ", true);
  EXPECT_TF(t, "%0g%20", "%0g ", true);
  EXPECT_TF(t, "%0%20", "%0 ", true);
  EXPECT_TF(t, "%g0%20", "%g0 ", true);
  EXPECT_TF(t, "%g%20", "%g ", true);
  // Invalid or truncated escapes stay as they are.
  EXPECT_TF(t, "%0%1%2%3%4%5%6%7%8%9%0%a%b%c%d%e%f", "%0%1%2%3%4%5%6%7%8%9%0%a%b%c%d%e%f", false);
  EXPECT_TF(t, "%g0%g1%ga%gf", "%g0%g1%ga%gf", false);
  EXPECT_TF(t, "%", "%", false);
  EXPECT_TF(t, "%0", "%0", false);
  EXPECT_TF(t, "%%", "%%", false);
  EXPECT_TF(t, "%0g", "%0g", false);
  EXPECT_TF(t, "%gg", "%gg", false);
  // No %u support in plain urlDecode.
  EXPECT_TF(t, "%u0041", "%u0041", false);
  // %2B decodes to a literal '+', which is not turned into a space again.
  EXPECT_TF(t, "%2B+", "+ ", true);
}

TEST(Transform, UrlDecodeAllBytes) {  // [urlDecodeUni.json] "+%00%01...%ff"
  std::string in = "+";
  std::string want = " ";
  for (int b = 0; b < 256; ++b) {
    char buf[4];
    std::snprintf(buf, sizeof buf, "%%%02x", b);
    in += buf;
    want += static_cast<char>(b);
  }
  EXPECT_TF(Transform::kUrlDecode, in, want, true);
  EXPECT_TF(Transform::kUrlDecodeUni, in, want, true);
}

TEST(Transform, UrlDecodeUniWithoutMap) {  // [urlDecodeUni.json]
  const Transform t = Transform::kUrlDecodeUni;
  EXPECT_TF(t, "", "", false);
  EXPECT_TF(t, "TestCase", "TestCase", false);
  EXPECT_TF(t, "Test\0Case"s, "Test\0Case"s, false);
  EXPECT_TF(t, "Test+Case", "Test Case", true);
  EXPECT_TF(t, "%u0041%U0042%u0063", "ABc", true);
  // Without a map only the low byte survives ...
  EXPECT_TF(t, "%u1141%u0100%u00e9", "A\0\xE9"s, true);
  // ... except full-width ASCII U+FF01..U+FF5E, which maps to '!'..'~'.
  EXPECT_TF(t, "%uff01%uFF21%uff5e", "!A~", true);
  EXPECT_TF(t, "%uff00%uff5f%uff7f%uffff", "\x00\x5f\x7f\xff"s, true);
  EXPECT_TF(t, "%%u0020", "% ", true);
  EXPECT_TF(t, "%0g%u0020", "%0g ", true);
  EXPECT_TF(t, "%u%u0020", "%u ", true);
  EXPECT_TF(t, "%u0%u0020", "%u0 ", true);
  EXPECT_TF(t, "%u00%u0020", "%u00 ", true);
  EXPECT_TF(t, "%u000%u0020", "%u000 ", true);
  EXPECT_TF(t, "%u000g%u0020", "%u000g ", true);
  EXPECT_TF(t, "%u", "%u", false);
  EXPECT_TF(t, "%u004", "%u004", false);
  EXPECT_TF(t, "%u%41", "%uA", true);  // "%u" copied, then %41 decoded
  EXPECT_TF(t, "%", "%", false);
  EXPECT_TF(t, "%gg", "%gg", false);
  EXPECT_TF(t, "%+", "% ", true);
}

TEST(Transform, UrlDecodeUniFullWidthRange) {  // [urlDecodeUni.json] %uff01..%uff5e
  std::string in;
  std::string want;
  for (int lo = 0x01; lo <= 0x5e; ++lo) {
    char buf[8];
    std::snprintf(buf, sizeof buf, "%%uff%02x", lo);
    in += buf;
    want += static_cast<char>(lo + 0x20);
  }
  EXPECT_TF(Transform::kUrlDecodeUni, in, want, true);
}

TEST(Transform, UrlEncode) {  // [urlEncode.json]
  const Transform t = Transform::kUrlEncode;
  EXPECT_TF(t, "", "", false);
  EXPECT_TF(t, "TestCase", "TestCase", false);
  EXPECT_TF(t, "Test Case", "Test+Case", true);
  EXPECT_TF(t, "% ", "%25+", true);
  EXPECT_TF(t, "%0g ", "%250g+", true);
  EXPECT_TF(t, "%%", "%25%25", true);
  EXPECT_TF(t, " !\"#$%&'()*+,-./09:;<=>?@AZ[\\]^_`az{|}~\x7f",
            "+%21%22%23%24%25%26%27%28%29*%2b%2c%2d%2e%2f09%3a%3b%3c%3d%3e%3f%40AZ%5b%5c%5d%5e%5f"
            "%60az%7b%7c%7d%7e%7f",
            true);
  EXPECT_TF(t, "TestCase09*", "TestCase09*", false);
  EXPECT_TF(t, "a-b_c.d~e", "a%2db%5fc%2ed%7ee", true);  // only [A-Za-z0-9*] are kept
  EXPECT_TF(t, "\0\xFF+%"s, "%00%ff%2b%25", true);
  EXPECT_EQ(run(Transform::kUrlDecode, run(t, "x=1&y=<a b>").out).out, "x=1&y=<a b>");
}

// ---------------------------------------------------------------- unicode map

class UnicodeMapFile : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!std::ifstream(kMappingFile)) {
      GTEST_SKIP() << kMappingFile << " is absent; unicode map tests need ModSecurity's "
                   << "unicode.mapping there";
    }
  }
};

TEST_F(UnicodeMapFile, LoadsCodePage20127) {
  std::string error;
  const auto map = UnicodeMap::load(kMappingFile, 20127, &error);
  ASSERT_TRUE(map.has_value()) << error;
  EXPECT_EQ(map->codePage(), 20127);
  EXPECT_EQ(map->lookup(0x00a0), ' ');
  EXPECT_EQ(map->lookup(0x00e9), 'e');
  EXPECT_EQ(map->lookup(0x0100), 'A');
  EXPECT_EQ(map->lookup(0x2018), '\'');
  EXPECT_EQ(map->lookup(0x2122), 'T');
  EXPECT_EQ(map->lookup(0xff01), '!');
  EXPECT_EQ(map->lookup(0xff5e), '~');
  EXPECT_EQ(map->lookup(0x3002), '.');  // ModSecurity's built-in full stops
  EXPECT_EQ(map->lookup(0xff61), '.');
  EXPECT_EQ(map->lookup(0x1141), -1);
  EXPECT_EQ(map->lookup(0x0041), -1);
  EXPECT_EQ(map->lookup(0x10000), -1);
}

TEST_F(UnicodeMapFile, OtherCodePagesDiffer) {
  std::string error;
  const auto map = UnicodeMap::load(kMappingFile, 1252, &error);
  ASSERT_TRUE(map.has_value()) << error;
  EXPECT_EQ(map->lookup(0x00e9), -1);  // Latin-1 itself in 1252
  EXPECT_EQ(map->lookup(0x0100), 'A');
}

TEST_F(UnicodeMapFile, UrlDecodeUniUsesTheMap) {
  std::string error;
  const auto map = UnicodeMap::load(kMappingFile, 20127, &error);
  ASSERT_TRUE(map.has_value()) << error;
  const auto runMap = [&](std::string_view in) { return run(Transform::kUrlDecodeUni, in, &*map); };
  EXPECT_EQ(runMap("%u00e9t%u00E9").out, "ete");
  EXPECT_EQ(runMap("%u2018or%u2019").out, "'or'");
  EXPECT_EQ(runMap("%uff1cscript%uff1e").out, "<script>");
  EXPECT_EQ(runMap("%u3002").out, ".");
  EXPECT_EQ(runMap("%u00a0").out, " ");
  // Not in the map: low byte / full-width rule as without a map.
  EXPECT_EQ(runMap("%u1141%uff60").out, "A`");
  EXPECT_EQ(runMap("%u0041").out, "A");
  EXPECT_TRUE(runMap("%u0041").changed);
  EXPECT_FALSE(runMap("abc").changed);
  // Without a map the same input keeps Latin-1 bytes.
  EXPECT_EQ(run(Transform::kUrlDecodeUni, "%u00e9%u00a0").out, "\xE9\xA0"s);
}

TEST(UnicodeMap, MissingFileIsAnError) {
  std::string error;
  EXPECT_FALSE(UnicodeMap::load("/nonexistent/dir/unicode.mapping", 20127, &error));
  EXPECT_NE(error.find("/nonexistent/dir/unicode.mapping"), std::string::npos) << error;
  EXPECT_NE(error.find("cannot open"), std::string::npos) << error;
  EXPECT_FALSE(UnicodeMap::load("/nonexistent/dir/unicode.mapping", 20127, nullptr));
}

TEST(UnicodeMap, SmallFileDefaultsAndOverrides) {
  const std::string path =
      writeTemp("small.mapping",
                "(MAC - Roman)\r\n\r\n"
                "1250  (ANSI - Central Europe)\n00e9:45 0041:42\n\n"
                "20127 (US-ASCII)\r\n00e9:65 002e:2f 3002:21\r\n00E8:65\n\n"
                "20127 (second block is ignored, as in ModSecurity)\n00e9:58\n");
  std::string error;
  const auto map = UnicodeMap::load(path, 20127, &error);
  ASSERT_TRUE(map.has_value()) << error;
  EXPECT_EQ(map->lookup(0x00e9), 'e');
  EXPECT_EQ(map->lookup(0x00e8), 'e');   // mappings may span several lines
  EXPECT_EQ(map->lookup(0x0041), -1);    // 1250's pair is not ours
  EXPECT_EQ(map->lookup(0x002e), 0x2f);  // the file overrides a built-in
  EXPECT_EQ(map->lookup(0x3002), '!');
  EXPECT_EQ(map->lookup(0xff0e), '.');  // built-in kept
  const auto other = UnicodeMap::load(path, 1250, &error);
  ASSERT_TRUE(other.has_value()) << error;
  EXPECT_EQ(other->lookup(0x0041), 'B');
  // A copy is an independent, equally usable value.
  const UnicodeMap copy = *map;
  EXPECT_EQ(copy.lookup(0x00e9), 'e');
}

TEST(UnicodeMap, BadLinesAreReportedWithFileAndLine) {
  std::string error;
  const std::string bad = writeTemp("bad.mapping", "20127 (US-ASCII)\n00a0:20 zz:41\n");
  EXPECT_FALSE(UnicodeMap::load(bad, 20127, &error));
  EXPECT_EQ(error, bad + ":2: malformed mapping 'zz:41' (want hhhh:hh)");

  const std::string noColon = writeTemp("nocolon.mapping", "1252\n0100:41 0101\n");
  EXPECT_FALSE(UnicodeMap::load(noColon, 1252, &error));
  EXPECT_EQ(error, noColon + ":2: malformed mapping '0101' (want hhhh:hh)");

  const std::string range = writeTemp("range.mapping", "20127\n\n10000:41\n");
  EXPECT_FALSE(UnicodeMap::load(range, 20127, &error));
  EXPECT_NE(error.find(range + ":3: mapping '10000:41' out of range"), std::string::npos) << error;

  const std::string byte = writeTemp("byte.mapping", "20127\n0041:100\n");
  EXPECT_FALSE(UnicodeMap::load(byte, 20127, &error));
  EXPECT_NE(error.find(byte + ":2:"), std::string::npos) << error;

  const std::string early = writeTemp("early.mapping", "0041:41\n20127\n");
  EXPECT_FALSE(UnicodeMap::load(early, 20127, &error));
  EXPECT_EQ(error, early + ":1: mapping line before any code page header");

  const std::string header = writeTemp("header.mapping", "20127\n0041:41\n12x7 (junk)\n");
  EXPECT_FALSE(UnicodeMap::load(header, 20127, &error));
  EXPECT_EQ(error, header + ":3: expected a code page number or hhhh:hh pairs, got '12x7'");
}

TEST(UnicodeMap, CodePageMustExistAndBePositive) {
  std::string error;
  const std::string path = writeTemp("pages.mapping", "1250\n0041:41\n");
  EXPECT_FALSE(UnicodeMap::load(path, 20127, &error));
  EXPECT_EQ(error, path + ": code page 20127 not found");
  EXPECT_FALSE(UnicodeMap::load(path, 0, &error));
  EXPECT_NE(error.find("code page must be positive"), std::string::npos) << error;
  const std::string empty = writeTemp("empty.mapping", "");
  EXPECT_FALSE(UnicodeMap::load(empty, 20127, &error));
  EXPECT_EQ(error, empty + ": code page 20127 not found");
}

// ---------------------------------------------------------------- htmlEntityDecode

TEST(Transform, HtmlEntityDecode) {  // [htmlEntityDecode.json]
  const Transform t = Transform::kHtmlEntityDecode;
  EXPECT_TF(t, "", "", false);
  EXPECT_TF(t, "TestCase", "TestCase", false);
  EXPECT_TF(t, "Test\0Case"s, "Test\0Case"s, false);
  EXPECT_TF(t, "&#x0;&#X0;&#x20;&#X20;&#0;&#32;\0&#100;&quot;&amp;&lt;&gt;&nbsp;"s,
            "\0\0  \0 \0d\"&<>\xA0"s, true);
  // The semicolon is optional.
  EXPECT_TF(t, "&#x0&#X0&#x20&#X20&#0&#32\0&#100&quot&amp&lt&gt&nbsp"s, "\0\0  \0 \0d\"&<>\xA0"s,
            true);
  EXPECT_TF(t, "&#xg;&#Xg;&#xg0;&#X2g;&#a;\0&#a2;&#3a&#a00;&#1a0;&#10a;&foo;"s,
            "&#xg;&#Xg;&#xg0;\x02g;&#a;\0&#a2;\x03"
            "a&#a00;\x01"
            "a0;\na;&foo;"s,
            true);
  EXPECT_TF(t, "&#xg&#Xg&#xg0&#X2g&#a\0&#a2&#3a&#a00&#1a0&#10a&foo"s,
            "&#xg&#Xg&#xg0\x02g&#a\0&#a2\x03"
            "a&#a00\x01"
            "a0\na&foo"s,
            true);
}

TEST(Transform, HtmlEntityDecodeEdges) {
  const Transform t = Transform::kHtmlEntityDecode;
  EXPECT_TF(t, "&LT;script&GT;", "<script>", true);  // names are case-insensitive
  EXPECT_TF(t, "&ltest;", "&ltest;", false);         // whole name must match (v3.0.x)
  EXPECT_TF(t, "&apos;&copy;", "&apos;&copy;", false);
  EXPECT_TF(t, "&#65&#x42;C", "ABC", true);
  EXPECT_TF(t, "&#321;&#x141;", "AA", true);                  // only the low byte is kept
  EXPECT_TF(t, "&#99999999999999999999999;", "\xFF"s, true);  // strtol saturates
  EXPECT_TF(t, "&", "&", false);
  EXPECT_TF(t, "&#", "&#", false);
  EXPECT_TF(t, "&#x", "&#x", false);
  EXPECT_TF(t, "&;&&amp;", "&;&&", true);
  EXPECT_TF(t, "a&b", "a&b", false);
  EXPECT_TF(t, "&amp;lt;", "&lt;", true);  // one pass only
}

// ---------------------------------------------------------------- jsDecode

TEST(Transform, JsDecode) {  // [jsDecode.json]
  const Transform t = Transform::kJsDecode;
  EXPECT_TF(t, "", "", false);
  EXPECT_TF(t, "TestCase", "TestCase", false);
  EXPECT_TF(t, "Test\0Case"s, "Test\0Case"s, false);
  EXPECT_TF(t, "\\a\\b\\f\\n\\r\\t\\v\\?\\'\\\"\\0\\12\\123\\x00\\xff\\u0021\\uff01",
            "\a\b\f\n\r\t\v?'\"\0\nS\0\xFF!!"s, true);
  EXPECT_TF(t, "\\a\\b\\f\\n\\r\\t\\v\0\\?\\'\\\"\\0\\12\\123\\x00\\xff\\u0021\\uff01"s,
            "\a\b\f\n\r\t\v\0?'\"\0\nS\0\xFF!!"s, true);
  EXPECT_TF(t, "\\8\\9\\666\\u00ag\\u00ga\\u0zaa\\uz0aa\\xag\\xga\\0123\\u00a",
            "8966u00agu00gau0zaauz0aaxagxga\n3u00a", true);
  EXPECT_TF(t, "\\x", "x", true);
  EXPECT_TF(t, "\\x\\x0", "xx0", true);
  EXPECT_TF(t, "\\x\\x0\0"s, "xx0\0"s, true);
  EXPECT_TF(t, "\\u", "u", true);
  EXPECT_TF(t, "\\u\\u0", "uu0", true);
  EXPECT_TF(t, "\\u\\u0\\u01", "uu0u01", true);
  EXPECT_TF(t, "\\u\\u0\\u01\\u012", "uu0u01u012", true);
  EXPECT_TF(t, "\\u\\u0\\u01\\u012\0"s, "uu0u01u012\0"s, true);
  EXPECT_TF(t, "\\", "\\", false);
  EXPECT_TF(t, "\\\\0", "\\0", true);
}

TEST(Transform, JsDecodeEdges) {
  const Transform t = Transform::kJsDecode;
  EXPECT_TF(t, "\\U0041\\X41", "U0041X41", true);  // only lower-case u and x
  EXPECT_TF(t, "\\u0141\\uFF3c", "A\\", true);     // low byte; full width +0x20
  EXPECT_TF(t, "\\uff00\\uff5f", "\x00\x5f"s, true);
  EXPECT_TF(t, "\\377\\400",
            "\xFF"
            " 0"s,
            true);  // \400 would overflow: \40 then '0'
  EXPECT_TF(t, "\\1234", "S4", true);
  EXPECT_TF(t, "abc\\", "abc\\", false);
}

// ---------------------------------------------------------------- cssDecode

TEST(Transform, CssDecode) {  // [cssDecode.json]
  const Transform t = Transform::kCssDecode;
  EXPECT_TF(t, "", "", false);
  EXPECT_TF(t, "TestCase", "TestCase", false);
  EXPECT_TF(t, "Test\0Case"s, "Test\0Case"s, false);
  EXPECT_TF(t,
            "test\\a\\b\\f\\n\\r\\t\\v\\?\\'\\\"\\0\\12\\123\\1234\\12345\\123456\\ff01\\ff5e"
            "\\\n\\0  string",
            "test\n\x0b\x0fnrtv?'\"\0\x12#4EV!~\0 string"s, true);
  EXPECT_TF(t, "test\\", "test", true);
  EXPECT_TF(t, "\\1A\\1 A\\1234567\\123456 7\\1x\\1 x",
            "\x1a\x01"
            "AV7V7\x01x\x01x"s,
            true);
}

TEST(Transform, CssDecodeFullWidth) {
  const Transform t = Transform::kCssDecode;
  EXPECT_TF(t, "\\ff3c", "\\", true);     // 4 digits: full-width check
  EXPECT_TF(t, "\\0ff3c", "\\", true);    // 5 digits starting with 0
  EXPECT_TF(t, "\\00ff3c", "\\", true);   // 6 digits starting with 00
  EXPECT_TF(t, "\\1ff3c", "<", true);     // 5 digits, no check: last two only
  EXPECT_TF(t, "\\ff60", "\x60"s, true);  // outside FF01..FF5E
  EXPECT_TF(t, "a\\\nb", "ab", true);     // escaped newline vanishes
  EXPECT_TF(t, "\\41\tB", "AB", true);    // one whitespace after an escape is eaten
  EXPECT_TF(t, "\\41  B", "A B", true);
  EXPECT_TF(t, "\\g", "g", true);
}

// ---------------------------------------------------------------- cmdLine, whitespace

TEST(Transform, CmdLine) {
  const Transform t = Transform::kCmdLine;
  EXPECT_TF(t, "", "", false);
  EXPECT_TF(t, "ls -la", "ls -la", false);
  EXPECT_TF(t, "\"c\"^a't", "cat", true);
  EXPECT_TF(t, "C:\\WINDOWS\\System32\\CMD.EXE /c DIR", "c:windowssystem32cmd.exe/c dir", true);
  EXPECT_TF(t, "a,b;c\t\td\r\ne", "a b c d e", true);
  EXPECT_TF(t, "echo  (x)", "echo(x)", true);
  EXPECT_TF(t, "cat ,; /etc/passwd", "cat/etc/passwd", true);
  EXPECT_TF(t, "  ls", " ls", true);
  EXPECT_TF(t, "a ' b", "a b", true);         // removed chars do not end a space run
  EXPECT_TF(t, "a\vb\fc", "a\vb\fc", false);  // \v and \f are not in the set
  EXPECT_TF(t, "W\\h^o\"a'm\"I", "whoami", true);
  EXPECT_TF(t, "\xC4X"s, "\xC4x"s, true);
}

TEST(Transform, CompressWhitespace) {  // [compressWhitespace.json]
  const Transform t = Transform::kCompressWhitespace;
  EXPECT_TF(t, "", "", false);
  EXPECT_TF(t, "TestCase", "TestCase", false);
  EXPECT_TF(t, "Test\0Case"s, "Test\0Case"s, false);
  EXPECT_TF(t, "Test Case", "Test Case", false);
  EXPECT_TF(t, "  Test  \t   Case  ", " Test Case ", true);
  EXPECT_TF(t,
            "This is a   test case with a tab \t, vtab \x0b, newline \n, return \r, formfeed \f, "
            "and a NUL\0 in it with a CRLF at the end.\r\n"s,
            "This is a test case with a tab , vtab , newline , return , formfeed , and a NUL\0 in "
            "it with a CRLF at the end. "s,
            true);
  EXPECT_TF(t, "a\tb", "a b", true);
  EXPECT_TF(t,
            "a\xA0\xA0"
            "b"s,
            "a\xA0\xA0"
            "b"s,
            false);  // v3: NBSP is not whitespace here
}

TEST(Transform, RemoveWhitespace) {
  const Transform t = Transform::kRemoveWhitespace;
  EXPECT_TF(t, "", "", false);
  EXPECT_TF(t, "TestCase", "TestCase", false);
  EXPECT_TF(t, " a\tb\nc\vd\fe\rf g ", "abcdefg", true);
  EXPECT_TF(t,
            "a\xA0"
            "b\xC2"
            "c"s,
            "abc", true);                    // NBSP and 0xc2 go too
  EXPECT_TF(t, "\xC2\xA9"s, "\xA9"s, true);  // ... even inside other UTF-8
  EXPECT_TF(t, "Test\0Case"s, "Test\0Case"s, false);
}

TEST(Transform, Trim) {  // [trim.json]
  EXPECT_TF(Transform::kTrim, "", "", false);
  EXPECT_TF(Transform::kTrim, "TestCase", "TestCase", false);
  EXPECT_TF(Transform::kTrim, "Test\0Case"s, "Test\0Case"s, false);
  EXPECT_TF(Transform::kTrim, "    TestCase", "TestCase", true);
  EXPECT_TF(Transform::kTrim, "TestCase    ", "TestCase", true);
  EXPECT_TF(Transform::kTrim, "    Test   Case    ", "Test   Case", true);
  EXPECT_TF(Transform::kTrim, "    Test \0 Case    "s, "Test \0 Case"s, true);
  EXPECT_TF(Transform::kTrim, " \t   Test \0 Case \t  \t   \r\n  "s, "Test \0 Case"s, true);
  EXPECT_TF(Transform::kTrim, " \t\r\n\v\f", "", true);
  EXPECT_TF(Transform::kTrim, "\xA0x\xA0"s, "\xA0x\xA0"s, false);
  EXPECT_TF(Transform::kTrimLeft, "  Test Case  ", "Test Case  ", true);
  EXPECT_TF(Transform::kTrimLeft, "Test Case  ", "Test Case  ", false);
  EXPECT_TF(Transform::kTrimRight, "  Test Case \t\r\n", "  Test Case", true);
  EXPECT_TF(Transform::kTrimRight, "  Test Case", "  Test Case", false);
  EXPECT_TF(Transform::kTrimRight, "\0 "s, "\0"s, true);
}

// ---------------------------------------------------------------- comments

TEST(Transform, RemoveComments) {  // [removeComments.json]
  const Transform t = Transform::kRemoveComments;
  EXPECT_TF(t, "", "", false);
  EXPECT_TF(t, "TestCase", "TestCase", false);
  EXPECT_TF(t, "Test\0Case"s, "Test\0Case"s, false);
  EXPECT_TF(t, "/* TestCase */", "", true);
  EXPECT_TF(t, "/*TestCase*/", "", true);
  EXPECT_TF(t, "/* TestCase*/", "", true);
  EXPECT_TF(t, "/*TestCase */", "", true);
  EXPECT_TF(t, "Before/* TestCase */After", "BeforeAfter", true);
  EXPECT_TF(t, "Before TestCase */ After", "Before TestCase */ After", false);
  EXPECT_TF(t, "/* Test\nCase */", "", true);
  EXPECT_TF(t, "/* Test\r\nCase */", "", true);
  EXPECT_TF(t, "/* Test\rCase */", "", true);
  EXPECT_TF(t, "/*Before/* Test\r\nCase ", " ", true);
  EXPECT_TF(t, "Before /* Test\nCase ", "Before  ", true);
  EXPECT_TF(t, "Before/* T*/ /* e */ /* s */ /* t */\r\nCase ", "Before   \r\nCase ", true);
  EXPECT_TF(t, "Before /* */ ops */ Test\nCase ", "Before  ops */ Test\nCase ", true);
  EXPECT_TF(t, "/*Test\r\nCase */After", "After", true);
  EXPECT_TF(t, "Test\nCase /**/ After", "Test\nCase  After", true);
  EXPECT_TF(t, "Test\r\nCase */After", "Test\r\nCase */After", false);
  EXPECT_TF(t, "Test/*\nCase */ After", "Test After", true);
  EXPECT_TF(t, "SELECT/**//**/UNION", "SELECTUNION", true);
  EXPECT_TF(t, "foo<!-- comment 1 --><!-- comment 2 -->bar", "foobar", true);
}

TEST(Transform, RemoveCommentsLineComments) {
  const Transform t = Transform::kRemoveComments;
  EXPECT_TF(t, "SELECT 1 -- comment", "SELECT 1 ", true);  // rest of value dropped
  EXPECT_TF(t, "id=1#x", "id=1", true);
  EXPECT_TF(t, "#", "", true);
  EXPECT_TF(t, "a-b", "a-b", false);
  EXPECT_TF(t, "a/*b*/#c", "a", true);
  EXPECT_TF(t, "a<!--b*/c", "ac", true);  // either closer ends either comment
}

TEST(Transform, RemoveCommentsChar) {
  const Transform t = Transform::kRemoveCommentsChar;
  EXPECT_TF(t, "", "", false);
  EXPECT_TF(t, "TestCase", "TestCase", false);
  EXPECT_TF(t, "UNION/**/SELECT", "UNIONSELECT", true);
  EXPECT_TF(t, "/*x*/<!--y-->a--b#c", "xyabc", true);
  EXPECT_TF(t, "-/*-", "--", true);  // markers are matched once, left to right
  EXPECT_TF(t, "a-b*c/d", "a-b*c/d", false);
}

TEST(Transform, ReplaceComments) {  // [replaceComments.json]
  const Transform t = Transform::kReplaceComments;
  EXPECT_TF(t, "", "", false);
  EXPECT_TF(t, "TestCase", "TestCase", false);
  EXPECT_TF(t, "Test\0Case"s, "Test\0Case"s, false);
  EXPECT_TF(t, "/* TestCase */", " ", true);
  EXPECT_TF(t, "/*TestCase*/", " ", true);
  EXPECT_TF(t, "/* TestCase*/", " ", true);
  EXPECT_TF(t, "/*TestCase */", " ", true);
  EXPECT_TF(t, "Before/* TestCase */After", "Before After", true);
  EXPECT_TF(t, "Before /* TestCase */ After", "Before   After", true);
  EXPECT_TF(t, "/* Test\nCase */", " ", true);
  EXPECT_TF(t, "/* Test\r\nCase */", " ", true);
  EXPECT_TF(t, "/* Test\rCase */", " ", true);
  EXPECT_TF(t, "Before/* Test\r\nCase ", "Before ", true);
  EXPECT_TF(t, "Before /* Test\nCase ", "Before  ", true);
  EXPECT_TF(t, "Test\r\nCase */After", "Test\r\nCase */After", false);
  EXPECT_TF(t, "Test\nCase */ After", "Test\nCase */ After", false);
  EXPECT_TF(t, "UNI/**/ON SEL/*x*/ECT", "UNI ON SEL ECT", true);
  EXPECT_TF(t, "a -- b # c", "a -- b # c", false);
}

// ---------------------------------------------------------------- paths

TEST(Transform, NormalizePath) {  // [normalisePath.json]
  const Transform t = Transform::kNormalizePath;
  EXPECT_TF(t, "", "", false);
  EXPECT_TF(t, "/foo/bar/baz", "/foo/bar/baz", false);
  EXPECT_TF(t, "/foo/bar\0/baz"s, "/foo/bar\0/baz"s, false);
  EXPECT_TF(t, "x", "x", false);
  EXPECT_TF(t, ".", "", true);
  EXPECT_TF(t, "./", "", true);
  EXPECT_TF(t, "./..", "..", true);
  EXPECT_TF(t, "./../", "../", true);
  EXPECT_TF(t, "..", "..", false);
  EXPECT_TF(t, "../", "../", false);
  EXPECT_TF(t, "../.", "..", true);
  EXPECT_TF(t, ".././", "../", true);
  EXPECT_TF(t, "../..", "../..", false);
  EXPECT_TF(t, "../../", "../../", false);
  EXPECT_TF(t, "/dir/foo//bar", "/dir/foo/bar", true);
  EXPECT_TF(t, "dir/foo//bar/", "dir/foo/bar/", true);
  EXPECT_TF(t, "dir/../foo", "foo", true);
  EXPECT_TF(t, "dir/../../foo", "../foo", true);
  EXPECT_TF(t, "dir/./.././../../foo/bar", "../../foo/bar", true);
  EXPECT_TF(t, "dir/./.././../../foo/bar/.", "../../foo/bar", true);
  EXPECT_TF(t, "dir/./.././../../foo/bar/./", "../../foo/bar/", true);
  EXPECT_TF(t, "dir/./.././../../foo/bar/..", "../../foo", true);
  EXPECT_TF(t, "dir/./.././../../foo/bar/../", "../../foo/", true);
  EXPECT_TF(t, "dir/./.././../../foo/bar/", "../../foo/bar/", true);
  EXPECT_TF(t, "dir//.//..//.//..//..//foo//bar", "../../foo/bar", true);
  EXPECT_TF(t, "dir//.//..//.//..//..//foo//bar//", "../../foo/bar/", true);
  EXPECT_TF(t, "dir/subdir/subsubdir/subsubsubdir/../../..", "dir", true);
  EXPECT_TF(t, "dir/./subdir/./subsubdir/./subsubsubdir/../../..", "dir", true);
  EXPECT_TF(t, "dir/./subdir/../subsubdir/../subsubsubdir/..", "dir", true);
  EXPECT_TF(t, "/dir/./subdir/../subsubdir/../subsubsubdir/../", "/dir/", true);
  EXPECT_TF(t, "/./.././../../../../../../../\0/../etc/./passwd"s, "/etc/passwd", true);
}

TEST(Transform, NormalizePathEdges) {
  const Transform t = Transform::kNormalizePath;
  EXPECT_TF(t, "/", "/", false);
  EXPECT_TF(t, "//", "/", true);
  // Never above the root -- but ModSecurity then drops the lone root slash too,
  // because the input had no trailing slash.
  EXPECT_TF(t, "/..", "", true);
  EXPECT_TF(t, "/../", "/", true);
  EXPECT_TF(t, "/../../etc/passwd", "/etc/passwd", true);
  EXPECT_TF(t, "/a/b/../../../c", "/c", true);
  EXPECT_TF(t, "a/b/..", "a", true);
  EXPECT_TF(t, "/a./b", "/a./b", false);
  EXPECT_TF(t, "/a\\..\\b", "/a\\..\\b", false);  // backslash is a plain byte here
  EXPECT_TF(t, "/index.php/../admin/", "/admin/", true);
}

TEST(Transform, NormalizePathWin) {  // [normalisePathWin.json]
  const Transform t = Transform::kNormalizePathWin;
  EXPECT_TF(t, "", "", false);
  EXPECT_TF(t, "\\foo\\bar\\baz", "/foo/bar/baz", true);
  EXPECT_TF(t, "\\foo\\bar\0\\baz"s, "/foo/bar\0/baz"s, true);
  EXPECT_TF(t, "x", "x", false);
  EXPECT_TF(t, ".", "", true);
  EXPECT_TF(t, ".\\", "", true);
  EXPECT_TF(t, ".\\..", "..", true);
  EXPECT_TF(t, ".\\..\\", "../", true);
  EXPECT_TF(t, "..", "..", false);
  EXPECT_TF(t, "..\\", "../", true);
  EXPECT_TF(t, "..\\.", "..", true);
  EXPECT_TF(t, "..\\.\\", "../", true);
  EXPECT_TF(t, "..\\..", "../..", true);
  EXPECT_TF(t, "..\\..\\", "../../", true);
  EXPECT_TF(t, "\\dir\\foo\\\\bar", "/dir/foo/bar", true);
  EXPECT_TF(t, "dir\\foo\\\\bar\\", "dir/foo/bar/", true);
  EXPECT_TF(t, "dir\\..\\foo", "foo", true);
  EXPECT_TF(t, "dir\\..\\..\\foo", "../foo", true);
  EXPECT_TF(t, "dir\\.\\..\\.\\..\\..\\foo\\bar", "../../foo/bar", true);
  EXPECT_TF(t, "dir\\.\\..\\.\\..\\..\\foo\\bar\\.", "../../foo/bar", true);
  EXPECT_TF(t, "dir\\.\\..\\.\\..\\..\\foo\\bar\\.\\", "../../foo/bar/", true);
  EXPECT_TF(t, "dir\\.\\..\\.\\..\\..\\foo\\bar\\..", "../../foo", true);
  EXPECT_TF(t, "dir\\.\\..\\.\\..\\..\\foo\\bar\\..\\", "../../foo/", true);
  EXPECT_TF(t, "dir\\.\\..\\.\\..\\..\\foo\\bar\\", "../../foo/bar/", true);
  EXPECT_TF(t, "dir\\\\.\\\\..\\\\.\\\\..\\\\..\\\\foo\\\\bar", "../../foo/bar", true);
  EXPECT_TF(t, "dir\\\\.\\\\..\\\\.\\\\..\\\\..\\\\foo\\\\bar\\\\", "../../foo/bar/", true);
  EXPECT_TF(t, "dir\\subdir\\subsubdir\\subsubsubdir\\..\\..\\..", "dir", true);
  EXPECT_TF(t, "dir\\.\\subdir\\.\\subsubdir\\.\\subsubsubdir\\..\\..\\..", "dir", true);
  EXPECT_TF(t, "dir\\.\\subdir\\..\\subsubdir\\..\\subsubsubdir\\..", "dir", true);
  EXPECT_TF(t, "\\dir\\.\\subdir\\..\\subsubdir\\..\\subsubsubdir\\..\\", "/dir/", true);
  EXPECT_TF(t, "\\.\\..\\.\\..\\..\\..\\..\\..\\..\\..\\\0\\..\\etc\\.\\passwd"s, "/etc/passwd",
            true);
  EXPECT_TF(t, "/mixed\\sep/..\\x", "/mixed/x", true);
}

// ---------------------------------------------------------------- base64

TEST(Transform, Base64Decode) {  // [base64Decode.json]
  const Transform t = Transform::kBase64Decode;
  EXPECT_TF(t, "", "", false);
  EXPECT_TF(t, "VGVzdENhc2U=", "TestCase", true);
  EXPECT_TF(t, "VGVzdENhc2Ux", "TestCase1", true);
  EXPECT_TF(t, "VGVzdENhc2UxMg==", "TestCase12", true);
  EXPECT_TF(t, "VGVzdABDYXNl", "Test\0Case"s, true);
  EXPECT_TF(t, "VGVzdENhc2U=\0VGVzdENhc2U="s, "TestCase", true);  // stops at the NUL
}

TEST(Transform, Base64DecodeStrictness) {
  const Transform t = Transform::kBase64Decode;
  // Any invalid byte empties the result (v3 ignores mbedtls' error code).
  EXPECT_TF(t, "VGVz!dA==", "", true);
  EXPECT_TF(t, "VGVzdENhc2U=VGVzdENhc2U=", "", true);  // data after padding
  EXPECT_TF(t, "QQ===", "", true);                     // three '='
  EXPECT_TF(t, "VGVz dA==", "", true);                 // space inside a line
  EXPECT_TF(t, "VGVzdA\r==", "", true);                // lone CR
  EXPECT_TF(t, "VGVzdA==\xC3"s, "", true);
  EXPECT_TF(t, "eyJwIjoieHh-IiwiYWxnIjoibm9uZSJ9", "", true);  // '-' is not in the alphabet
  // Line breaks anywhere, spaces before a line end or at the end, are fine.
  EXPECT_TF(t, "VGVz\r\ndA==", "Test", true);
  EXPECT_TF(t, "VGVz\ndA==\n", "Test", true);
  EXPECT_TF(t, "VGVzdA==   ", "Test", true);
  EXPECT_TF(t, "VGVz  \ndA==", "Test", true);
  EXPECT_TF(t, "QQ==", "A", true);
  // Only whole 4-digit groups decode: an unpadded tail is dropped.
  EXPECT_TF(t, "VGVzdA", "Tes", true);
  EXPECT_TF(t, "QQ", "", true);
  EXPECT_TF(t, "=", "", true);
  EXPECT_TF(t, "   ", "", true);
}

TEST(Transform, Base64DecodeExt) {  // [base64DecodeExt.json]
  const Transform t = Transform::kBase64DecodeExt;
  EXPECT_TF(t, "", "", false);
  EXPECT_TF(t, "VGVzdENhc2U=", "TestCase", true);
  EXPECT_TF(t, "VGVzdENhc2Ux", "TestCase1", true);
  EXPECT_TF(t, "VGVzdENhc2UxMg==", "TestCase12", true);
  EXPECT_TF(t, "P.HNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==", "<script>alert(1)</script>", true);
  EXPECT_TF(t, "VGVzdABDYXNl", "Test\0Case"s, true);
  EXPECT_TF(t, "dzBzV==YWxlcnQoMSk=", "", true);
  EXPECT_TF(t, "eyJwIjoieHh-IiwiYWxnIjoibm9uZSIsInR5cCI6IkpXVCJ9",
            "{\"p\":\"xx~\",\"alg\":\"none\",\"typ\":\"JWT\"}", true);
}

TEST(Transform, Base64DecodeExtForgiveness) {
  const Transform t = Transform::kBase64DecodeExt;
  EXPECT_TF(t, "VGVz!dA==", "Test", true);  // invalid bytes skipped
  EXPECT_TF(t, "VG Vz\tdA\r\n", "Test", true);
  // No NUL cut-off, and '=' does not restart the grouping, so the second
  // value decodes misaligned.
  EXPECT_TF(t, "VGVzdENhc2U=\0VGVz"s, "TestCase\x15\x19\x5c"s, true);
  EXPECT_TF(t, "QQ", "A", true);  // whole bytes of a partial group kept
  EXPECT_TF(t, "QUFBQQ", "AAAA", true);
  EXPECT_TF(t, "_-8", "\xFF\xEF"s, true);  // URL-safe alphabet
  EXPECT_TF(t, "QUFBQ=", "", true);        // '=' after one digit of a group
  EXPECT_TF(t, "QUFBQ==", "", true);       // (the last '=' of a run decides)
  EXPECT_TF(t, "QUFBQQ==", "AAAA", true);
  EXPECT_TF(t, "QUFB9", "", true);  // quirk: last digit '9' (61 == '=')
  EXPECT_TF(t, "QUFBA", "AAA", true);
}

TEST(Transform, Base64Encode) {
  const Transform t = Transform::kBase64Encode;
  EXPECT_TF(t, "", "", false);
  EXPECT_TF(t, "TestCase", "VGVzdENhc2U=", true);
  EXPECT_TF(t, "TestCase1", "VGVzdENhc2Ux", true);
  EXPECT_TF(t, "TestCase12", "VGVzdENhc2UxMg==", true);
  EXPECT_TF(t, "Test\0Case"s, "VGVzdABDYXNl", true);
  EXPECT_TF(t, "\xFF\xEF\xBE"s, "/+++", true);
  const Result enc = run(t, "\x01\x02\x03\xFE\xFF"s);
  EXPECT_EQ(run(Transform::kBase64Decode, enc.out).out, "\x01\x02\x03\xFE\xFF"s);
}

// ---------------------------------------------------------------- hex

TEST(Transform, HexDecode) {  // [hexDecode.json]
  const Transform t = Transform::kHexDecode;
  EXPECT_TF(t, "", "", false);
  EXPECT_TF(t, "5465737443617365", "TestCase", true);
  EXPECT_TF(t, "546573740043617365", "Test\0Case"s, true);
  // Non-hex digits give ModSecurity's x2c arithmetic ('0z' -> 0x23), an odd
  // trailing digit is dropped.
  EXPECT_TF(t, "01234567890a0z01234567890a", "\x01#Eg\x89\n#\x01#Eg\x89\n"s, true);
  EXPECT_TF(t, "01234567890az", "\x01#Eg\x89\n"s, true);
  EXPECT_TF(t, "01234567890a0", "\x01#Eg\x89\n"s, true);
  EXPECT_TF(t, "4", "", true);
  EXPECT_TF(t, "4a4A", "JJ", true);
}

TEST(Transform, HexEncode) {
  const Transform t = Transform::kHexEncode;
  EXPECT_TF(t, "", "", false);
  EXPECT_TF(t, "TestCase", "5465737443617365", true);
  EXPECT_TF(t, "Test\0Case"s, "546573740043617365", true);
  EXPECT_TF(t, "\x00\x7f\x80\xff"s, "007f80ff", true);
}

TEST(Transform, SqlHexDecode) {  // [sqlHexDecode.json]
  const Transform t = Transform::kSqlHexDecode;
  EXPECT_TF(t, "0x414243", "ABC", true);
  EXPECT_TF(t, "ABC", "ABC", false);
  EXPECT_TF(t, "00x414243", "0ABC", true);
  EXPECT_TF(t, "0xz0x414243", "0xzABC", true);
  EXPECT_TF(t, "0x4142430x434241", "ABCCBA", true);
  EXPECT_TF(t, "0x4142430x0x434241", "ABC0xCBA", true);
  EXPECT_TF(t, "", "", false);
  EXPECT_TF(t, "0X41424", "AB4", true);  // odd digit stays as text
  EXPECT_TF(t, "0x4", "0x4", false);
  EXPECT_TF(t, "0x", "0x", false);
  EXPECT_TF(t, "SELECT 0x61646d696e", "SELECT admin", true);
}

// ---------------------------------------------------------------- escapeSeqDecode

TEST(Transform, EscapeSeqDecode) {  // [escapeSeqDecode.json]
  const Transform t = Transform::kEscapeSeqDecode;
  EXPECT_TF(t, "", "", false);
  EXPECT_TF(t, "TestCase", "TestCase", false);
  EXPECT_TF(t, "Test\0Case"s, "Test\0Case"s, false);
  EXPECT_TF(t, "\\a\\b\\f\\n\\r\\t\\v\\?\\'\\\"\\0\\12\\123\\x00\\xff",
            "\a\b\f\n\r\t\v?'\"\0\nS\0\xFF"s, true);
  EXPECT_TF(t, "\\a\\b\\f\\n\\r\\t\\v\0\\?\\'\\\"\\0\\12\\123\\x00\\xff"s,
            "\a\b\f\n\r\t\v\0?'\"\0\nS\0\xFF"s, true);
  EXPECT_TF(t, "\\8\\9\\666\\xag\\xga\\0123", "89\xB6xagxga\n3"s, true);  // \666 wraps
  EXPECT_TF(t, "\\x", "x", true);
  EXPECT_TF(t, "\\x\\x0", "xx0", true);
  EXPECT_TF(t, "\\x\\x0\0"s, "xx0\0"s, true);
  EXPECT_TF(t, "\\0", "\0"s, true);
  EXPECT_TF(t, "\\01", "\x01"s, true);
  EXPECT_TF(t, "\\012", "\n", true);
  EXPECT_TF(t, "\\", "\\", false);
  EXPECT_TF(t, "\\\0"s, "\0"s, true);
  EXPECT_TF(t, "\\X41\\\\", "A\\", true);  // upper-case X accepted here
}

// ---------------------------------------------------------------- utf8toUnicode

TEST(Transform, Utf8ToUnicode) {  // [utf8toUnicode.json]
  const Transform t = Transform::kUtf8ToUnicode;
  EXPECT_TF(t, "", "", false);
  EXPECT_TF(t, "TestCase", "TestCase", false);
  // The JSON file's inputs are Latin-1 text re-encoded as UTF-8, e.g. U+00D0.
  EXPECT_TF(t, "\xC3\x90\xC2\x80 \xC3\x97\xC2\xB4"s, "%u00d0%u0080 %u00d7%u00b4", true);
  EXPECT_TF(t, "caf\xC3\xA9"s, "caf%u00e9", true);
  EXPECT_TF(t,
            "\xE2\x82\xAC"
            "5"s,
            "%u20ac5", true);
  EXPECT_TF(t, "\xF0\x9F\x98\x80"s, "%u1f600", true);
  EXPECT_TF(t, "\xEF\xBC\x9C"s, "%uff1c", true);
}

TEST(Transform, Utf8ToUnicodeQuirks) {
  const Transform t = Transform::kUtf8ToUnicode;
  EXPECT_TF(t, "Test\0Case"s, "TestCase", true);  // NUL bytes vanish
  EXPECT_TF(t, "\xC3("s, "(", true);              // bad continuation: lead dropped
  EXPECT_TF(t, "\xE2\x82("s, "\x82("s, true);
  EXPECT_TF(t, "a\xC3"s, "a", true);                              // truncated at the end
  EXPECT_TF(t, "\x80\xBF\xF8\xFF"s, "\x80\xBF\xF8\xFF"s, false);  // copied as is
  EXPECT_TF(t, "\xC0\x80"s, "%u0000\xC0"s, true);                 // overlong: lead byte appended
  EXPECT_TF(t, "\xC1\xBF"s, "%u007f\xC1"s, true);
  EXPECT_TF(t, "\xE0\x80\xAF"s, "%u002f\xE0"s, true);
  EXPECT_TF(t, "\xF0\x80\x80\xAF"s, "%u002f\xF0"s, true);
  EXPECT_TF(t, "\xED\xA0\x80"s, "%ud800\xED"s, true);        // surrogate: lead byte appended
  EXPECT_TF(t, "\xF5\x80\x80\x80"s, "\xF5%u140000"s, true);  // beyond U+10FFFF
  EXPECT_TF(t,
            "\xF5"
            "A"s,
            "\xF5"
            "A"s,
            false);
  EXPECT_TF(t, "\xF4\x8F\xBF\xBF"s, "%u10ffff", true);
}

// ---------------------------------------------------------------- length, digests

TEST(Transform, Length) {
  EXPECT_TF(Transform::kLength, "", "0", true);
  EXPECT_TF(Transform::kLength, "TestCase", "8", true);
  EXPECT_TF(Transform::kLength, "Test\0Case"s, "9", true);
  EXPECT_TF(Transform::kLength, "1", "1", false);  // same text: not "changed"
  EXPECT_TF(Transform::kLength, std::string(12345, 'x'), "12345", true);
}

TEST(Transform, Sha1) {  // [sha1.json] (its bytes checked with sha1sum), FIPS 180 vectors
  EXPECT_EQ(hex(run(Transform::kSha1, "").out), "da39a3ee5e6b4b0d3255bfef95601890afd80709");
  EXPECT_EQ(hex(run(Transform::kSha1, "abc").out), "a9993e364706816aba3e25717850c26c9cd0d89d");
  const Result r = run(Transform::kSha1, "TestCase");
  EXPECT_EQ(hex(r.out), "a70ce38389e318bd2be18a0111c6dc76bd2cd9ed");
  EXPECT_TRUE(r.changed);
  EXPECT_EQ(run(Transform::kSha1, "\0\x01\x02\x03\x04\x05\x06\x07\b"s).out.size(), 20u);
}

TEST(Transform, Md5) {  // RFC 1321 vectors
  const Result empty = run(Transform::kMd5, "");
  EXPECT_EQ(hex(empty.out), "d41d8cd98f00b204e9800998ecf8427e");
  EXPECT_TRUE(empty.changed);
  EXPECT_EQ(hex(run(Transform::kMd5, "abc").out), "900150983cd24fb0d6963f7d28e17f72");
  EXPECT_EQ(hex(run(Transform::kMd5, "message digest").out), "f96b697d7cb7938d525a2f31aaf161d0");
  EXPECT_EQ(hex(run(Transform::kMd5, "TestCase").out), "c9aba2c3e60126169e80e9a26ba273c1");
  EXPECT_EQ(run(Transform::kMd5, "Test\0Case"s).out.size(), 16u);
}

TEST(Transform, DigestsFromManyThreads) {
  // Each thread gets its own OpenSSL context; the fetched algorithms are shared.
  std::atomic<int> bad{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&bad] {
      std::string out;
      for (int i = 0; i < 200; ++i) {
        applyTransform(Transform::kSha1, "abc", out, nullptr);
        if (hex(out) != "a9993e364706816aba3e25717850c26c9cd0d89d") ++bad;
        applyTransform(Transform::kMd5, "abc", out, nullptr);
        if (hex(out) != "900150983cd24fb0d6963f7d28e17f72") ++bad;
      }
    });
  }
  for (std::thread& th : threads) th.join();
  EXPECT_EQ(bad.load(), 0);
}

// ---------------------------------------------------------------- chains, buffers

TEST(TransformChain, CrsStyleChain) {
  const Transform chain[] = {
      Transform::kNone,     Transform::kUrlDecodeUni, Transform::kHtmlEntityDecode,
      Transform::kJsDecode, Transform::kCssDecode,    Transform::kRemoveNulls,
      Transform::kLowercase};
  TransformScratch scratch;
  std::vector<std::pair<Transform, std::string>> seen;
  const std::string in = "%3Cscript%3E&#x61;lert(\\x31)%00</SCRIPT>";
  const std::string_view out = applyTransforms(
      chain, in, nullptr, scratch,
      [&](Transform t, std::string_view v) { seen.emplace_back(t, std::string(v)); });
  EXPECT_EQ(out, "<script>alert(1)</script>");
  ASSERT_EQ(seen.size(), 5u);  // css decode changed nothing
  EXPECT_EQ(seen[0].first, Transform::kUrlDecodeUni);
  EXPECT_EQ(seen[0].second, "<script>&#x61;lert(\\x31)\0</SCRIPT>"s);
  EXPECT_EQ(seen[1].first, Transform::kHtmlEntityDecode);
  EXPECT_EQ(seen[2].first, Transform::kJsDecode);
  EXPECT_EQ(seen[3].first, Transform::kRemoveNulls);
  EXPECT_EQ(seen[4].first, Transform::kLowercase);
  EXPECT_EQ(seen[4].second, out);
}

TEST(TransformChain, UnchangedValueIsReturnedAsIs) {
  const Transform chain[] = {Transform::kUrlDecodeUni, Transform::kLowercase};
  TransformScratch scratch;
  const std::string in = "plain text";
  const std::string_view out = applyTransforms(chain, in, nullptr, scratch);
  EXPECT_EQ(out.data(), in.data());
  EXPECT_EQ(applyTransforms({}, in, nullptr, scratch).data(), in.data());
}

TEST(TransformChain, Sha1HexEncodeLikeCrs901318) {
  const Transform chain[] = {Transform::kNone, Transform::kSha1, Transform::kHexEncode};
  TransformScratch scratch;
  EXPECT_EQ(applyTransforms(chain, "abc", nullptr, scratch),
            "a9993e364706816aba3e25717850c26c9cd0d89d");
}

TEST(TransformChain, ManyStepsAlternateBuffers) {
  // Each step must read the previous result, never the buffer it writes.
  const Transform chain[] = {Transform::kBase64Encode, Transform::kHexEncode,
                             Transform::kHexDecode,    Transform::kBase64Decode,
                             Transform::kUppercase,    Transform::kLowercase};
  TransformScratch scratch;
  EXPECT_EQ(applyTransforms(chain, "Round Trip", nullptr, scratch), "round trip");
}

TEST(TransformBuffers, SteadyStateReusesOutputCapacity) {
  std::string out;
  out.reserve(256);
  const char* data = out.data();
  const std::string inputs[] = {"%41%42", "a+b+c", std::string(200, '%'), "x"};
  for (int round = 0; round < 3; ++round) {
    for (const std::string& in : inputs) {
      applyTransform(Transform::kUrlDecodeUni, in, out, nullptr);
      applyTransform(Transform::kHtmlEntityDecode, in, out, nullptr);
      applyTransform(Transform::kCmdLine, in, out, nullptr);
      applyTransform(Transform::kHexEncode, "abc", out, nullptr);
      EXPECT_EQ(out.data(), data);
    }
  }
}

TEST(TransformBuffers, OldOutputContentsAreReplaced) {
  std::string out = "previous value that is long";
  EXPECT_FALSE(applyTransform(Transform::kLowercase, "abc", out, nullptr));
  EXPECT_EQ(out, "abc");
  EXPECT_TRUE(applyTransform(Transform::kTrim, " abc ", out, nullptr));
  EXPECT_EQ(out, "abc");
}

TEST(TransformChain, NoOpPrecheckNeverHidesAChange) {
  // transformMayChange lets applyTransforms skip a step; it must never say
  // "no change" for an input the step would change. Checked for every
  // transformation over fixed cases and pseudo-random strings built from the
  // bytes the decoders react to.
  const std::string alphabet = std::string("aZ09 \t\n\r\v\f%+&#;x\\u/.*-'\"<>!") +
                               std::string(1, '\0') + "\xa0\xc2\xc3\xff\x80";
  std::vector<std::string> inputs = {"", "plain", "Upper", "a%41", "a+b", "&amp;", "\\x41",
                                     "a  b", "a\tb", " ", "  ", std::string("a\0b", 3),
                                     "caf\xc3\xa9", "\xa0", "/a/./b//c/../d", "x/*y*/z"};
  uint32_t seed = 12345;
  for (int i = 0; i < 4000; ++i) {
    std::string s;
    seed = seed * 1103515245u + 12345u;
    const size_t len = (seed >> 16) % 12;
    for (size_t k = 0; k < len; ++k) {
      seed = seed * 1103515245u + 12345u;
      s += alphabet[(seed >> 16) % alphabet.size()];
    }
    inputs.push_back(std::move(s));
  }
  size_t skipped = 0;
  for (int ti = 0; ti <= static_cast<int>(Transform::kParityZero7bit); ++ti) {
    const auto t = static_cast<Transform>(ti);
    for (const auto& in : inputs) {
      if (transformMayChange(t, in)) continue;
      ++skipped;
      const Result r = run(t, in);
      EXPECT_FALSE(r.changed) << "transform " << ti << " on " << hex(in);
      EXPECT_EQ(r.out, in) << "transform " << ti << " on " << hex(in);
    }
  }
  EXPECT_GT(skipped, 1000u);  // the precheck does skip work
}

}  // namespace
}  // namespace moat::waf
