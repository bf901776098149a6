#include "moat/waf/body.h"

#include <gtest/gtest.h>

#include <string>

namespace moat::waf {
namespace {

using Args = std::vector<BodyArg>;

BodyResult url(std::string_view body, BodyLimits limits = {}) {
  BodyResult r;
  parseUrlEncoded(body, limits, r);
  return r;
}

// ------------------------------------------------------------ url-encoded

TEST(UrlEncoded, SplitsAndDecodes) {
  BodyResult r = url("a=1&b=hello+world&c=%41%42&d=%zz%4&e");
  EXPECT_EQ(r.args,
            (Args{{"a", "1"}, {"b", "hello world"}, {"c", "AB"}, {"d", "%zz%4"}, {"e", ""}}));
  EXPECT_EQ(r.args_combined_size, 2u + 12u + 3u + 6u + 1u);
  EXPECT_FALSE(r.reqbody_error);
  EXPECT_TRUE(r.urlencoded_error);
  EXPECT_FALSE(url("a=%41").urlencoded_error);
  EXPECT_TRUE(url("a=%4").urlencoded_error);
  EXPECT_TRUE(url("a%=1").urlencoded_error);
}

TEST(UrlEncoded, EmptyNamesSegmentsAndExtraEquals) {
  BodyResult r = url("=v&&x=a=b&%3d=%26&");
  EXPECT_EQ(r.args, (Args{{"", "v"}, {"", ""}, {"x", "a=b"}, {"=", "&"}}));
}

TEST(UrlEncoded, NamesDecodedToo) {
  BodyResult r = url("a%20b+c=1");
  EXPECT_EQ(r.args, (Args{{"a b c", "1"}}));
}

TEST(UrlEncoded, AppendsAcrossCalls) {
  BodyResult r;
  parseUrlEncoded("q=1", {}, r);
  parseUrlEncoded("p=2", {}, r);
  EXPECT_EQ(r.args, (Args{{"q", "1"}, {"p", "2"}}));
  EXPECT_EQ(r.args_combined_size, 4u);
}

TEST(UrlEncoded, Truncation) {
  BodyLimits l;
  l.max_body_bytes = 5;
  BodyResult r;
  EXPECT_EQ(parseUrlEncoded("a=1&bb=22", l, r), BodyStatus::kTruncated);
  EXPECT_EQ(r.args, (Args{{"a", "1"}, {"b", ""}}));
  r.reset();
  EXPECT_EQ(parseUrlEncoded("a=1", l, r), BodyStatus::kComplete);
}

TEST(UrlEncoded, EmptyBody) {
  EXPECT_TRUE(url("").args.empty());
  EXPECT_EQ(url("&").args, (Args{{"", ""}}));
  EXPECT_EQ(url("&&").args, (Args{{"", ""}, {"", ""}}));
  EXPECT_EQ(url("a&").args, (Args{{"a", ""}}));
}

// -------------------------------------------------------------- multipart

constexpr std::string_view kCt = "multipart/form-data; boundary=XyZ";

BodyResult mp(std::string_view ct, std::string_view body, BodyLimits limits = {}) {
  BodyResult r;
  parseMultipart(ct, body, limits, r);
  return r;
}

const std::string kGood =
    "--XyZ\r\n"
    "Content-Disposition: form-data; name=\"a\"\r\n"
    "\r\n"
    "1\r\n"
    "--XyZ\r\n"
    "Content-Disposition: form-data; name=\"text\"\r\n"
    "\r\n"
    "line1\r\nline2\r\n"
    "--XyZ\r\n"
    "Content-Disposition: form-data; name=\"up\"; filename=\"x.php\"\r\n"
    "Content-Type: application/octet-stream\r\n"
    "\r\n"
    "<?php ?>\r\n"
    "--XyZ--\r\n";

TEST(Multipart, NormalBody) {
  BodyResult r = mp(kCt, kGood);
  EXPECT_FALSE(r.reqbody_error) << r.reqbody_error_msg;
  EXPECT_FALSE(r.multipart.strictError());
  EXPECT_FALSE(r.multipart.unmatched_boundary);
  EXPECT_FALSE(r.multipart.crlfLfLines());
  EXPECT_EQ(r.args, (Args{{"a", "1"}, {"text", "line1\r\nline2"}}));
  EXPECT_EQ(r.args_combined_size, 2u + 4u + 12u);
  EXPECT_EQ(r.files, (Args{{"up", "x.php"}}));
  EXPECT_EQ(r.files_names, (std::vector<std::string>{"up"}));
  ASSERT_EQ(r.files_sizes.size(), 1u);
  EXPECT_EQ(r.files_sizes[0].second, 8u);
  EXPECT_EQ(r.files_combined_size, 8u);
  EXPECT_EQ(r.multipart_names, (std::vector<std::string>{"a", "text", "up"}));
  EXPECT_EQ(r.multipart_filenames, (std::vector<std::string>{"x.php"}));
  ASSERT_EQ(r.multipart_part_headers.size(), 4u);
  EXPECT_EQ(r.multipart_part_headers[3], (BodyArg{"up", "Content-Type: application/octet-stream"}));
  EXPECT_EQ(r.multipart_part_headers[0],
            (BodyArg{"a", "Content-Disposition: form-data; name=\"a\""}));
}

TEST(Multipart, FinalBoundaryWithoutNewlineIsFine) {
  std::string b = kGood.substr(0, kGood.size() - 2);
  BodyResult r = mp(kCt, b);
  EXPECT_FALSE(r.reqbody_error) << r.reqbody_error_msg;
  EXPECT_EQ(r.files.size(), 1u);
}

TEST(Multipart, BoundaryQuoted) {
  BodyResult r = mp("multipart/form-data; boundary=\"XyZ\"", kGood);
  EXPECT_TRUE(r.multipart.boundary_quoted);
  EXPECT_TRUE(r.multipart.strictError());
  EXPECT_FALSE(r.reqbody_error);
  EXPECT_EQ(r.args.size(), 2u);
}

TEST(Multipart, BoundaryQuotedUsedWithQuotesInBody) {
  BodyResult r = mp("multipart/form-data; boundary=\"XyZ\"", "--\"XyZ\"\r\n");
  EXPECT_TRUE(r.reqbody_error);
  EXPECT_EQ(r.reqbody_error_msg, "Multipart: Invalid boundary (quotes).");
}

TEST(Multipart, BoundaryPartiallyQuotedIsError) {
  BodyResult r = mp("multipart/form-data; boundary=\"XyZ", kGood);
  EXPECT_TRUE(r.reqbody_error);
  EXPECT_TRUE(r.multipart.strictError());
  EXPECT_EQ(r.reqbody_error_msg, "Multipart: Invalid boundary in C-T (quote).");
}

TEST(Multipart, BoundaryWhitespace) {
  BodyResult r = mp("multipart/form-data; boundary =XyZ", kGood);
  EXPECT_TRUE(r.multipart.boundary_whitespace);
  EXPECT_TRUE(r.multipart.strictError());
  EXPECT_FALSE(r.reqbody_error);
}

TEST(Multipart, WhitespaceBeforeBoundaryInBody) {
  BodyResult r = mp(kCt, "-- XyZ\r\n");
  EXPECT_TRUE(r.reqbody_error);
  EXPECT_EQ(r.reqbody_error_msg, "Multipart: Invalid boundary (whitespace).");
}

TEST(Multipart, MissingSemicolon) {
  BodyResult r = mp("multipart/form-data boundary=XyZ", kGood);
  EXPECT_TRUE(r.multipart.missing_semicolon);
  EXPECT_TRUE(r.multipart.strictError());
}

TEST(Multipart, ContentTypeErrors) {
  EXPECT_EQ(mp("", kGood).reqbody_error_msg, "Multipart: Content-Type header not available.");
  EXPECT_EQ(mp("text/plain; boundary=XyZ", kGood).reqbody_error_msg,
            "Multipart: Invalid MIME type.");
  EXPECT_EQ(mp("multipart/form-data; boundary=a; boundary=b", kGood).reqbody_error_msg,
            "Multipart: Multiple boundary parameters in C-T.");
  EXPECT_EQ(mp("multipart/form-data; BOUNDARY=XyZ", kGood).reqbody_error_msg,
            "Multipart: Invalid boundary in C-T (case sensitivity).");
  EXPECT_EQ(mp("multipart/form-data", kGood).reqbody_error_msg,
            "Multipart: Boundary not found in C-T.");
  EXPECT_EQ(mp("multipart/form-data; boundary=XyZ; charset=utf-8", kGood).reqbody_error_msg,
            "Multipart: Invalid boundary in C-T (characters).");
  EXPECT_EQ(mp("multipart/form-data; x; boundary=XyZ", kGood).reqbody_error_msg,
            "Multipart: Invalid boundary in C-T (malformed).");
  EXPECT_TRUE(mp("multipart/form-data; boundary=XyZ", kGood).multipart.error == false);
}

TEST(Multipart, DataBefore) {
  BodyResult r = mp(kCt, "preamble\r\n" + kGood);
  EXPECT_TRUE(r.multipart.data_before);
  EXPECT_TRUE(r.multipart.strictError());
  EXPECT_FALSE(r.reqbody_error);
}

TEST(Multipart, DataAfter) {
  BodyResult r = mp(kCt, kGood + "trailing");
  EXPECT_TRUE(r.multipart.data_after);
  EXPECT_TRUE(r.multipart.strictError());
  EXPECT_EQ(r.args.size(), 2u);
}

TEST(Multipart, HeaderFolding) {
  BodyResult r = mp(kCt,
                    "--XyZ\r\n"
                    "Content-Disposition: form-data;\r\n"
                    " name=\"a\"\r\n"
                    "\r\n"
                    "1\r\n"
                    "--XyZ--\r\n");
  EXPECT_TRUE(r.multipart.header_folding);
  EXPECT_FALSE(r.multipart.invalid_header_folding);
  EXPECT_TRUE(r.multipart.strictError());
  EXPECT_FALSE(r.reqbody_error) << r.reqbody_error_msg;
  EXPECT_EQ(r.args, (Args{{"a", "1"}}));
}

TEST(Multipart, InvalidHeaderFolding) {
  BodyResult r = mp(kCt,
                    "--XyZ\r\n"
                    "Content-Disposition: form-data;\r\n"
                    "\v name=\"a\"\r\n"
                    "\r\n"
                    "1\r\n"
                    "--XyZ--\r\n");
  EXPECT_TRUE(r.multipart.header_folding);
  EXPECT_TRUE(r.multipart.invalid_header_folding);
  EXPECT_TRUE(r.multipart.strictError());
}

TEST(Multipart, LfLineOnly) {
  BodyResult r = mp(kCt,
                    "--XyZ\n"
                    "Content-Disposition: form-data; name=\"a\"\n"
                    "\n"
                    "1\n"
                    "--XyZ--\n");
  EXPECT_TRUE(r.multipart.lf_line);
  EXPECT_FALSE(r.multipart.crlfLfLines());
  EXPECT_TRUE(r.multipart.strictError());
  EXPECT_EQ(r.args, (Args{{"a", "1"}}));
}

TEST(Multipart, MixedLineEndings) {
  BodyResult r = mp(kCt,
                    "--XyZ\r\n"
                    "Content-Disposition: form-data; name=\"a\"\n"
                    "\r\n"
                    "1\r\n"
                    "--XyZ--\r\n");
  EXPECT_TRUE(r.multipart.crlfLfLines());
  EXPECT_TRUE(r.multipart.lf_line);
}

TEST(Multipart, InvalidQuotingSingleQuotes) {
  BodyResult r = mp(kCt,
                    "--XyZ\r\n"
                    "Content-Disposition: form-data; name='a'\r\n"
                    "\r\n"
                    "1\r\n"
                    "--XyZ--\r\n");
  EXPECT_TRUE(r.multipart.invalid_quoting);
  EXPECT_TRUE(r.multipart.strictError());
  EXPECT_EQ(r.args, (Args{{"a", "1"}}));
}

TEST(Multipart, InvalidQuotingJunkAfterQuote) {
  BodyResult r = mp(kCt,
                    "--XyZ\r\n"
                    "Content-Disposition: form-data; name=\"a\"x\r\n"
                    "\r\n"
                    "1\r\n"
                    "--XyZ--\r\n");
  EXPECT_TRUE(r.multipart.invalid_quoting);
  EXPECT_TRUE(r.reqbody_error);
  EXPECT_EQ(r.reqbody_error_msg.rfind("Multipart: Invalid Content-Disposition header (-12)", 0),
            0u);
}

TEST(Multipart, InvalidPartNoHeadersEnd) {
  BodyResult r = mp(kCt,
                    "--XyZ\r\n"
                    "--XyZ\r\n"
                    "Content-Disposition: form-data; name=\"a\"\r\n"
                    "\r\n"
                    "1\r\n"
                    "--XyZ--\r\n");
  EXPECT_TRUE(r.multipart.invalid_part);
  EXPECT_TRUE(r.multipart.strictError());
  EXPECT_EQ(r.args, (Args{{"a", "1"}}));
}

TEST(Multipart, UnmatchedBoundary) {
  BodyResult r = mp(kCt,
                    "--XyZ\r\n"
                    "Content-Disposition: form-data; name=\"a\"\r\n"
                    "\r\n"
                    "--Other\r\n"
                    "x --XyZ inside\r\n"
                    "--XyZ--\r\n");
  EXPECT_TRUE(r.multipart.unmatched_boundary);
  EXPECT_FALSE(r.multipart.strictError());  // not part of STRICT_ERROR
  EXPECT_EQ(r.args, (Args{{"a", "--Other\r\nx --XyZ inside"}}));
}

TEST(Multipart, MissingFinalBoundary) {
  BodyResult r = mp(kCt,
                    "--XyZ\r\n"
                    "Content-Disposition: form-data; name=\"a\"\r\n"
                    "\r\n"
                    "1\r\n");
  EXPECT_TRUE(r.reqbody_error);
  EXPECT_EQ(r.reqbody_error_msg, "Multipart: Final boundary missing.");
  EXPECT_TRUE(r.args.empty());
}

TEST(Multipart, NoBoundaryAtAll) {
  BodyResult r = mp(kCt, "just data\r\n");
  EXPECT_TRUE(r.reqbody_error);
  EXPECT_EQ(r.reqbody_error_msg, "Multipart: No boundaries found in payload.");
  EXPECT_TRUE(r.multipart.data_before);
}

TEST(Multipart, BoundaryWithJunkIsError) {
  BodyResult r = mp(kCt, "--XyZjunk\r\n");
  EXPECT_TRUE(r.reqbody_error);
  EXPECT_TRUE(r.multipart.error);
  EXPECT_TRUE(r.multipart.strictError());
}

TEST(Multipart, FileLimitExceeded) {
  std::string body;
  for (int i = 0; i < 3; ++i) {
    body += "--XyZ\r\nContent-Disposition: form-data; name=\"f" + std::to_string(i) +
            "\"; filename=\"a.txt\"\r\n\r\nabc\r\n";
  }
  body += "--XyZ--\r\n";
  BodyLimits l;
  l.max_files = 2;
  BodyResult r = mp(kCt, body, l);
  EXPECT_TRUE(r.multipart.file_limit_exceeded);
  EXPECT_TRUE(r.multipart.strictError());
  EXPECT_EQ(r.files.size(), 3u);
  EXPECT_EQ(r.files_combined_size, 9u);
  l.max_files = 3;
  EXPECT_FALSE(mp(kCt, body, l).multipart.file_limit_exceeded);
}

TEST(Multipart, HeaderErrors) {
  auto err = [](std::string_view headers) {
    return mp(kCt, "--XyZ\r\n" + std::string(headers) + "\r\n1\r\n--XyZ--\r\n").reqbody_error_msg;
  };
  EXPECT_EQ(err("Content-Type: text/plain\r\n"),
            "Multipart: Part missing Content-Disposition header.");
  EXPECT_EQ(err("Content-Disposition: form-data\r\n"),
            "Multipart: Content-Disposition header missing name field.");
  EXPECT_EQ(err("Content-Disposition: attachment; name=a\r\n"),
            "Multipart: Invalid Content-Disposition header (-1): attachment; name=a");
  EXPECT_EQ(err("Content-Disposition: form-data; name=a; foo=b\r\n"),
            "Multipart: Invalid Content-Disposition header (-11): form-data; name=a; foo=b");
  EXPECT_EQ(err("Content-Disposition: form-data; name=a; name=b\r\n"),
            "Multipart: Invalid Content-Disposition header (-14): form-data; name=a; name=b");
  EXPECT_EQ(err("Content-Disposition: form-data; name=a; filename =b\r\n"),
            "Multipart: Invalid Content-Disposition header (filename).");
  EXPECT_EQ(err("no colon\r\n"), "Multipart: Invalid part header (colon missing): no colon\r\n");
  EXPECT_EQ(err(" folded first\r\n"), "Multipart: Invalid part header (folding error).");
  EXPECT_EQ(err("Content-Disposition: form-data; name=a\r\ncontent-disposition: x\r\n"),
            "Multipart: Duplicate part header: content-disposition.");
  EXPECT_EQ(err(std::string("X-A: a\0b\r\n", 10)), "Multipart: Nul byte in part headers.");
  EXPECT_EQ(err("X-Long: " + std::string(5000, 'a') + "\r\n"),
            "Multipart: Part header line over 4096 bytes long");
}

TEST(Multipart, EmptyFilenameIsFormField) {
  BodyResult r = mp(kCt,
                    "--XyZ\r\n"
                    "Content-Disposition: form-data; name=\"a\"; filename=\"\"\r\n"
                    "\r\n"
                    "v\r\n"
                    "--XyZ--\r\n");
  EXPECT_TRUE(r.files.empty());
  EXPECT_EQ(r.args, (Args{{"a", "v"}}));
}

TEST(Multipart, EscapedQuoteInName) {
  BodyResult r = mp(kCt,
                    "--XyZ\r\n"
                    "Content-Disposition: form-data; name=\"a\\\"b\"\r\n"
                    "\r\n"
                    "v\r\n"
                    "--XyZ--\r\n");
  EXPECT_FALSE(r.reqbody_error) << r.reqbody_error_msg;
  EXPECT_EQ(r.args, (Args{{"a\"b", "v"}}));
}

TEST(Multipart, Truncated) {
  BodyLimits l;
  l.max_body_bytes = 20;
  BodyResult r;
  EXPECT_EQ(parseMultipart(kCt, kGood, l, r), BodyStatus::kTruncated);
  EXPECT_TRUE(r.reqbody_error);
}

// ------------------------------------------------------------------- JSON

BodyResult json(std::string_view body, BodyLimits limits = {}) {
  BodyResult r;
  parseJson(body, limits, r);
  return r;
}

TEST(Json, FlatObject) {
  BodyResult r = json(R"({"a":"x","b":1.5e3,"c":true,"d":false,"e":null})");
  EXPECT_FALSE(r.reqbody_error) << r.reqbody_error_msg;
  EXPECT_EQ(r.args, (Args{{"json.a", "x"},
                          {"json.b", "1.5e3"},
                          {"json.c", "true"},
                          {"json.d", "false"},
                          {"json.e", ""}}));
  EXPECT_EQ(r.args_combined_size, (6u + 1) + (6u + 5) + (6u + 4) + (6u + 5) + (6u + 0));
}

TEST(Json, NestingAndArrays) {
  BodyResult r = json(R"({"a":{"b":{"c":"d"}},"arr":[1,[2,3],{"k":"v"},[]],"z":"w"})");
  EXPECT_FALSE(r.reqbody_error) << r.reqbody_error_msg;
  EXPECT_EQ(r.args, (Args{{"json.a.b.c", "d"},
                          {"json.arr.array_0", "1"},
                          {"json.arr.array_1.array_0", "2"},
                          {"json.arr.array_1.array_1", "3"},
                          {"json.arr.array_2.k", "v"},
                          {"json.z", "w"}}));
}

TEST(Json, TopLevelArrayAndScalar) {
  EXPECT_EQ(json(R"(["x",{"a":1}])").args, (Args{{"json.array_0", "x"}, {"json.array_1.a", "1"}}));
  EXPECT_EQ(json(R"("s")").args, (Args{{"json", "s"}}));
  EXPECT_TRUE(json("{}").args.empty());
  EXPECT_FALSE(json("{}").reqbody_error);
}

TEST(Json, EmptyKey) {
  EXPECT_EQ(json(R"({"":1,"o":{"":{"x":2}}})").args,
            (Args{{"json.empty-key", "1"}, {"json.o.empty-key.x", "2"}}));
}

TEST(Json, StringEscapes) {
  EXPECT_EQ(json(R"({"k\"":"a\nb\u0041\u00e9\ud83d\ude00\/"})").args,
            (Args{{"json.k\"", "a\nbA\xc3\xa9\xf0\x9f\x98\x80/"}}));
}

TEST(Json, Invalid) {
  EXPECT_FALSE(json("").reqbody_error);
  for (std::string_view bad :
       {" ", "{", "{\"a\"}", "{\"a\":}", "[1,]", "[1 2]", "{\"a\":1,}", "tru", "01", "1.", "\"abc",
        "{\"a\":\"\\q\"}", "{a:1}", "[1]x", "\"a\x01\""}) {
    BodyResult r = json(bad);
    EXPECT_TRUE(r.reqbody_error) << bad;
    EXPECT_EQ(r.reqbody_error_msg.rfind("JSON parsing error: ", 0), 0u) << bad;
  }
}

TEST(Json, KeepsArgsBeforeError) {
  BodyResult r = json(R"({"a":1,"b":)");
  EXPECT_TRUE(r.reqbody_error);
  EXPECT_EQ(r.args, (Args{{"json.a", "1"}}));
}

TEST(Json, DepthLimit) {
  BodyLimits l;
  l.max_depth = 3;
  EXPECT_FALSE(json("[[[1]]]", l).reqbody_error);
  BodyResult r = json("[[[[1]]]]", l);
  EXPECT_TRUE(r.reqbody_error);
  EXPECT_NE(r.reqbody_error_msg.find("nesting deeper than 3"), std::string::npos);
  // Hostile depth with the default limit must not recurse.
  std::string deep(1000000, '[');
  EXPECT_TRUE(json(deep).reqbody_error);
}

TEST(Json, Truncated) {
  BodyLimits l;
  l.max_body_bytes = 8;
  BodyResult r;
  EXPECT_EQ(parseJson(R"({"a":"bcdefg"})", l, r), BodyStatus::kTruncated);
  EXPECT_TRUE(r.reqbody_error);
}

// -------------------------------------------------------------------- XML

BodyResult xml(std::string_view body, BodyLimits limits = {}) {
  BodyResult r;
  parseXml(body, limits, r);
  return r;
}

TEST(Xml, TextConcatenated) {
  BodyResult r =
      xml("<?xml version=\"1.0\"?>\n<!-- c -->\n<a x=\"1\" y='&lt;'><b>one</b>"
          "<c/><![CDATA[<two>]]>&amp;&#65;&#x42;</a>\n");
  EXPECT_FALSE(r.reqbody_error) << r.reqbody_error_msg;
  EXPECT_EQ(r.xml_text, "one<two>&AB");
}

TEST(Xml, DoctypeSkippedEntitiesNeverExpanded) {
  BodyResult r = xml("<!DOCTYPE a [<!ENTITY xxe SYSTEM \"file:///etc/passwd\">]><a>&xxe;</a>");
  EXPECT_TRUE(r.reqbody_error);
  EXPECT_NE(r.reqbody_error_msg.find("entity 'xxe' not defined"), std::string::npos);
  EXPECT_TRUE(r.xml_text.empty());
  EXPECT_FALSE(xml("<!DOCTYPE a><a>t</a>").reqbody_error);
}

TEST(Xml, Malformed) {
  for (std::string_view bad :
       {"", "text", "<a>", "<a></b>", "<a><b></a></b>", "<a x=1/>", "<a x=\"1\"y=\"2\"/>",
        "<a x=\"1\" x=\"2\"/>", "<a/><b/>", "<a>&bogus;</a>", "<a>&#xZZ;</a>", "<a><!-- x</a>",
        "<a><![CDATA[x</a>", "<a x=\"<\"/>", "<a/>junk", "<1a/>"}) {
    BodyResult r = xml(bad);
    EXPECT_TRUE(r.reqbody_error) << bad;
    EXPECT_TRUE(r.xml_text.empty()) << bad;
  }
}

TEST(Xml, DepthLimit) {
  BodyLimits l;
  l.max_depth = 2;
  EXPECT_FALSE(xml("<a><b/></a>", l).reqbody_error);
  EXPECT_FALSE(xml("<a><b>x</b></a>", l).reqbody_error);
  EXPECT_TRUE(xml("<a><b><c/></b></a>", l).reqbody_error);
}

// Deterministic garbage through every parser: must not crash or trip
// ASan/UBSan, whatever it sets.
TEST(BodyGarbage, NoCrashes) {
  uint32_t x = 12345;
  auto next = [&x] {
    x = x * 1103515245u + 12345u;
    return static_cast<char>((x >> 16) & 0xff);
  };
  static constexpr char kAlphabet[] = "-XyZ\r\n\"';=:{}[],<>/&%!?abc \t\0\\";
  const std::string alphabet(kAlphabet, sizeof(kAlphabet) - 1);
  for (int iter = 0; iter < 3000; ++iter) {
    std::string s;
    const size_t n = static_cast<size_t>(next()) & 0x7f;
    for (size_t i = 0; i < n; ++i) {
      const char c = next();
      s.push_back((c & 1) ? alphabet[static_cast<unsigned char>(c) % alphabet.size()] : c);
    }
    if (iter % 2 == 0) s = "--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n" + s;
    BodyResult r;
    parseUrlEncoded(s, {}, r);
    parseMultipart(kCt, s, {}, r);
    parseMultipart("multipart/form-data; boundary=\"" + s.substr(0, 8) + "\"", s, {}, r);
    parseJson(s, {}, r);
    parseXml(s, {}, r);
  }
}

TEST(BodyResult, ResetClearsEverything) {
  BodyResult r = mp(kCt, "preamble\r\n" + kGood);
  r.xml_text = "x";
  r.reset();
  EXPECT_TRUE(r.args.empty());
  EXPECT_FALSE(r.multipart.strictError());
  EXPECT_FALSE(r.reqbody_error);
  EXPECT_TRUE(r.files.empty());
  EXPECT_TRUE(r.multipart_part_headers.empty());
  EXPECT_TRUE(r.xml_text.empty());
  EXPECT_EQ(r.files_combined_size, 0u);
}

}  // namespace
}  // namespace moat::waf
