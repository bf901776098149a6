// Unit tests for the strict HTTP/1.1 parser and the chunked validator.
//
// Every input is copied into an exactly-sized heap buffer, so under ASan any
// read past `len` fails the test. Rejections are checked at every prefix too:
// a prefix may be incomplete or fail with the same error, never anything else.
#include "moat/l7/http_parser.h"

#include <gtest/gtest.h>

#include <cstring>
#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <vector>

namespace moat::l7 {
namespace {

using ::testing::AssertionFailure;
using ::testing::AssertionResult;
using ::testing::AssertionSuccess;

const char* statusName(ParseStatus s) {
  switch (s) {
    case ParseStatus::kComplete: return "kComplete";
    case ParseStatus::kIncomplete: return "kIncomplete";
    case ParseStatus::kError: return "kError";
  }
  return "?";
}

// An exact-size copy of the input; the parsed head points into it.
struct ReqParse {
  std::unique_ptr<char[]> buf;
  size_t len = 0;
  RequestHead head;
  HttpError err = HttpError::kNone;
  ParseStatus status = ParseStatus::kError;
};

struct RespParse {
  std::unique_ptr<char[]> buf;
  size_t len = 0;
  ResponseHead head;
  HttpError err = HttpError::kNone;
  ParseStatus status = ParseStatus::kError;
};

std::unique_ptr<char[]> exactCopy(std::string_view s) {
  auto p = std::make_unique<char[]>(s.size() == 0 ? 1 : s.size());
  if (!s.empty()) std::memcpy(p.get(), s.data(), s.size());
  return p;
}

std::unique_ptr<ReqParse> parseReq(std::string_view s, const ParseLimits& limits = {}) {
  auto r = std::make_unique<ReqParse>();
  r->buf = exactCopy(s);
  r->len = s.size();
  r->status = parseRequestHead(r->buf.get(), r->len, limits, r->head, r->err);
  return r;
}

std::unique_ptr<RespParse> parseResp(std::string_view s, bool head = false,
                                     const ParseLimits& limits = {}) {
  auto r = std::make_unique<RespParse>();
  r->buf = exactCopy(s);
  r->len = s.size();
  r->status = parseResponseHead(r->buf.get(), r->len, limits, head, r->head, r->err);
  return r;
}

// Full input fails with `want`; every prefix is incomplete or fails with `want`.
AssertionResult reqFails(std::string_view s, HttpError want, const ParseLimits& limits = {}) {
  auto full = parseReq(s, limits);
  if (full->status != ParseStatus::kError || full->err != want) {
    return AssertionFailure() << "full input: " << statusName(full->status) << " / "
                              << httpErrorText(full->err) << ", want " << httpErrorText(want);
  }
  for (size_t k = 0; k < s.size(); ++k) {
    auto p = parseReq(s.substr(0, k), limits);
    const bool ok = p->status == ParseStatus::kIncomplete ||
                    (p->status == ParseStatus::kError && p->err == want);
    if (!ok) {
      return AssertionFailure() << "prefix " << k << ": " << statusName(p->status) << " / "
                                << httpErrorText(p->err);
    }
  }
  return AssertionSuccess();
}

AssertionResult respFails(std::string_view s, HttpError want, bool head = false) {
  auto full = parseResp(s, head);
  if (full->status != ParseStatus::kError || full->err != want) {
    return AssertionFailure() << "full input: " << statusName(full->status) << " / "
                              << httpErrorText(full->err) << ", want " << httpErrorText(want);
  }
  for (size_t k = 0; k < s.size(); ++k) {
    auto p = parseResp(s.substr(0, k), head);
    const bool ok = p->status == ParseStatus::kIncomplete ||
                    (p->status == ParseStatus::kError && p->err == want);
    if (!ok) return AssertionFailure() << "prefix " << k << ": " << statusName(p->status);
  }
  return AssertionSuccess();
}

// Every strict prefix is kIncomplete, the whole head is kComplete.
AssertionResult reqCompletesOnlyAtEnd(std::string_view s) {
  for (size_t k = 0; k < s.size(); ++k) {
    auto p = parseReq(s.substr(0, k));
    if (p->status != ParseStatus::kIncomplete) {
      return AssertionFailure() << "prefix " << k << ": " << statusName(p->status) << " / "
                                << httpErrorText(p->err);
    }
  }
  auto full = parseReq(s);
  if (full->status != ParseStatus::kComplete) {
    return AssertionFailure() << "full: " << statusName(full->status) << " / "
                              << httpErrorText(full->err);
  }
  if (full->head.headBytes != s.size()) return AssertionFailure() << "headBytes";
  return AssertionSuccess();
}

std::string withHost(std::string_view requestLine, std::string_view fields = "") {
  std::string s(requestLine);
  s += "\r\nHost: example.com\r\n";
  s += fields;
  s += "\r\n";
  return s;
}

// ---------------------------------------------------------------------------
// Requests: accepted input

TEST(HttpRequest, SimpleGet) {
  const std::string s = "GET /index.html?q=1 HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n\r\n";
  auto r = parseReq(s);
  ASSERT_EQ(r->status, ParseStatus::kComplete);
  EXPECT_EQ(r->head.method, "GET");
  EXPECT_EQ(r->head.target, "/index.html?q=1");
  EXPECT_EQ(r->head.versionMinor, 1);
  EXPECT_EQ(r->head.host, "example.com");
  ASSERT_EQ(r->head.headerCount, 2u);
  EXPECT_EQ(r->head.headers[0].name, "Host");
  EXPECT_EQ(r->head.headers[1].name, "Accept");
  EXPECT_EQ(r->head.headers[1].value, "*/*");
  EXPECT_EQ(r->head.body, BodyKind::kNone);
  EXPECT_TRUE(r->head.keepAlive);
  EXPECT_FALSE(r->head.expectContinue);
  EXPECT_FALSE(r->head.upgrade);
  EXPECT_EQ(r->head.headBytes, s.size());
  EXPECT_EQ(r->err, HttpError::kNone);
}

TEST(HttpRequest, ViewsPointIntoCallerBuffer) {
  auto r = parseReq(withHost("GET / HTTP/1.1"));
  ASSERT_EQ(r->status, ParseStatus::kComplete);
  EXPECT_EQ(r->head.method.data(), r->buf.get());
  EXPECT_EQ(r->head.target.data(), r->buf.get() + 4);
}

TEST(HttpRequest, ValueOwsTrimmedInnerSpaceKept) {
  auto r = parseReq(withHost("GET / HTTP/1.1", "X-A: \t a  b \t \r\nX-B:\r\nX-C:   \r\n"));
  ASSERT_EQ(r->status, ParseStatus::kComplete);
  EXPECT_EQ(r->head.headers[1].value, "a  b");
  EXPECT_EQ(r->head.headers[2].value, "");
  EXPECT_EQ(r->head.headers[3].value, "");
}

TEST(HttpRequest, ObsTextInValueAccepted) {
  auto r = parseReq(withHost("GET / HTTP/1.1", "X-Name: caf\xc3\xa9 \x80\xff\r\n"));
  ASSERT_EQ(r->status, ParseStatus::kComplete);
  EXPECT_EQ(r->head.headers[1].value, "caf\xc3\xa9 \x80\xff");
}

TEST(HttpRequest, NameCaseKeptAndMatchedCaseInsensitively) {
  auto r = parseReq("GET / HTTP/1.1\r\nhOsT: a.example\r\ncontent-LENGTH: 3\r\n\r\n");
  ASSERT_EQ(r->status, ParseStatus::kComplete);
  EXPECT_EQ(r->head.headers[0].name, "hOsT");
  EXPECT_EQ(r->head.host, "a.example");
  EXPECT_EQ(r->head.body, BodyKind::kContentLength);
  EXPECT_EQ(r->head.contentLength, 3u);
}

TEST(HttpRequest, PostWithContentLength) {
  const std::string head = withHost("POST /submit HTTP/1.1", "Content-Length: 5\r\n");
  const std::string s = head + "hello";
  auto r = parseReq(s);
  ASSERT_EQ(r->status, ParseStatus::kComplete);
  EXPECT_EQ(r->head.body, BodyKind::kContentLength);
  EXPECT_EQ(r->head.contentLength, 5u);
  EXPECT_EQ(r->head.headBytes, head.size());
  EXPECT_EQ(std::string_view(r->buf.get() + r->head.headBytes, 5), "hello");
}

TEST(HttpRequest, ContentLengthZeroIsContentLengthBody) {
  auto r = parseReq(withHost("POST / HTTP/1.1", "Content-Length: 0\r\n"));
  ASSERT_EQ(r->status, ParseStatus::kComplete);
  EXPECT_EQ(r->head.body, BodyKind::kContentLength);
  EXPECT_EQ(r->head.contentLength, 0u);
}

TEST(HttpRequest, ContentLengthMaxDigitsAndOws) {
  auto r = parseReq(withHost("POST / HTTP/1.1", "Content-Length:  999999999999999999 \r\n"));
  ASSERT_EQ(r->status, ParseStatus::kComplete);
  EXPECT_EQ(r->head.contentLength, 999999999999999999ull);
}

TEST(HttpRequest, ChunkedRequest) {
  auto r = parseReq(withHost("POST / HTTP/1.1", "Transfer-Encoding: chunked\r\n"));
  ASSERT_EQ(r->status, ParseStatus::kComplete);
  EXPECT_EQ(r->head.body, BodyKind::kChunked);
}

TEST(HttpRequest, ChunkedSpellingVariantsAccepted) {
  for (const char* te : {"Chunked", "CHUNKED", "chunked ", "\tchunked", " chunked\t"}) {
    auto r = parseReq(withHost("POST / HTTP/1.1", std::string("Transfer-Encoding:") + te + "\r\n"));
    EXPECT_EQ(r->status, ParseStatus::kComplete) << te;
    EXPECT_EQ(r->head.body, BodyKind::kChunked) << te;
  }
}

TEST(HttpRequest, PipelinedRequests) {
  const std::string first = withHost("POST /a HTTP/1.1", "Content-Length: 3\r\n") + "abc";
  const std::string second = withHost("GET /b HTTP/1.1");
  const std::string all = first + second;
  auto r = parseReq(all);
  ASSERT_EQ(r->status, ParseStatus::kComplete);
  EXPECT_EQ(r->head.target, "/a");
  const size_t next = r->head.headBytes + r->head.contentLength;
  EXPECT_EQ(next, first.size());
  RequestHead h2;
  HttpError err = HttpError::kNone;
  ASSERT_EQ(parseRequestHead(r->buf.get() + next, all.size() - next, {}, h2, err),
            ParseStatus::kComplete);
  EXPECT_EQ(h2.target, "/b");
  EXPECT_EQ(h2.headBytes, second.size());
}

TEST(HttpRequest, PipelinedBodylessRequestsBackToBack) {
  const std::string one = withHost("GET /1 HTTP/1.1");
  const std::string all = one + withHost("GET /2 HTTP/1.1");
  auto r = parseReq(all);
  ASSERT_EQ(r->status, ParseStatus::kComplete);
  EXPECT_EQ(r->head.headBytes, one.size());
  RequestHead h2;
  HttpError err;
  ASSERT_EQ(parseRequestHead(r->buf.get() + r->head.headBytes, all.size() - r->head.headBytes,
                             {}, h2, err),
            ParseStatus::kComplete);
  EXPECT_EQ(h2.target, "/2");
}

TEST(HttpRequest, Http10WithoutHostAndKeepAliveDefaults) {
  auto r = parseReq("GET / HTTP/1.0\r\n\r\n");
  ASSERT_EQ(r->status, ParseStatus::kComplete);
  EXPECT_EQ(r->head.versionMinor, 0);
  EXPECT_FALSE(r->head.keepAlive);
  EXPECT_EQ(r->head.host, "");
  auto k = parseReq("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n");
  ASSERT_EQ(k->status, ParseStatus::kComplete);
  EXPECT_TRUE(k->head.keepAlive);
}

TEST(HttpRequest, ConnectionTokens) {
  auto c = parseReq(withHost("GET / HTTP/1.1", "Connection: foo, CLOSE\r\n"));
  ASSERT_EQ(c->status, ParseStatus::kComplete);
  EXPECT_FALSE(c->head.keepAlive);
  // Repeated Connection fields combine; close wins over keep-alive.
  auto r = parseReq("GET / HTTP/1.0\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n");
  ASSERT_EQ(r->status, ParseStatus::kComplete);
  EXPECT_FALSE(r->head.keepAlive);
  auto k = parseReq(withHost("GET / HTTP/1.1", "Connection: keep-alive\r\n"));
  EXPECT_TRUE(k->head.keepAlive);
  // A token that merely contains "close" is not close.
  auto n = parseReq(withHost("GET / HTTP/1.1", "Connection: closed\r\n"));
  EXPECT_TRUE(n->head.keepAlive);
}

TEST(HttpRequest, UpgradeNeedsConnectionTokenAndUpgradeField) {
  auto u = parseReq(withHost("GET /ws HTTP/1.1", "Connection: keep-alive, Upgrade\r\n"
                                                 "Upgrade: websocket\r\n"));
  ASSERT_EQ(u->status, ParseStatus::kComplete);
  EXPECT_TRUE(u->head.upgrade);
  auto noField = parseReq(withHost("GET /ws HTTP/1.1", "Connection: upgrade\r\n"));
  EXPECT_FALSE(noField->head.upgrade);
  auto noToken = parseReq(withHost("GET /ws HTTP/1.1", "Upgrade: websocket\r\n"));
  EXPECT_FALSE(noToken->head.upgrade);
}

TEST(HttpRequest, ExpectContinue) {
  auto e = parseReq(withHost("POST / HTTP/1.1", "Expect: 100-Continue\r\nContent-Length: 1\r\n"));
  ASSERT_EQ(e->status, ParseStatus::kComplete);
  EXPECT_TRUE(e->head.expectContinue);
  auto other = parseReq(withHost("POST / HTTP/1.1", "Expect: 100-continuex\r\n"));
  EXPECT_FALSE(other->head.expectContinue);
  // RFC 9110 10.1.1: ignored in HTTP/1.0.
  auto old = parseReq("POST / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n");
  ASSERT_EQ(old->status, ParseStatus::kComplete);
  EXPECT_FALSE(old->head.expectContinue);
}

TEST(HttpRequest, TargetForms) {
  auto abs = parseReq(withHost("GET http://example.com/x?y HTTP/1.1"));
  ASSERT_EQ(abs->status, ParseStatus::kComplete);
  EXPECT_EQ(abs->head.target, "http://example.com/x?y");
  auto conn = parseReq(withHost("CONNECT example.com:443 HTTP/1.1"));
  ASSERT_EQ(conn->status, ParseStatus::kComplete);
  EXPECT_EQ(conn->head.target, "example.com:443");
  auto v6 = parseReq(withHost("CONNECT [::1]:8443 HTTP/1.1"));
  EXPECT_EQ(v6->status, ParseStatus::kComplete);
  auto star = parseReq(withHost("OPTIONS * HTTP/1.1"));
  ASSERT_EQ(star->status, ParseStatus::kComplete);
  EXPECT_EQ(star->head.target, "*");
  auto ext = parseReq(withHost("PURGE /x HTTP/1.1"));  // any token method
  EXPECT_EQ(ext->status, ParseStatus::kComplete);
}

TEST(HttpRequest, IncompleteAtEverySplitThenComplete) {
  EXPECT_TRUE(reqCompletesOnlyAtEnd(withHost("GET / HTTP/1.1")));
  EXPECT_FALSE(reqCompletesOnlyAtEnd(withHost("GET / HTTP/1.1", "X : y\r\n")));  // harness
  EXPECT_TRUE(reqCompletesOnlyAtEnd(withHost(
      "POST /upload HTTP/1.1", "Content-Length: 10\r\nConnection: close\r\nX-E:\r\n")));
  EXPECT_TRUE(reqCompletesOnlyAtEnd("GET / HTTP/1.0\r\n\r\n"));
  EXPECT_TRUE(reqCompletesOnlyAtEnd(withHost("CONNECT a:1 HTTP/1.1")));
}

TEST(HttpRequest, EmptyInputIsIncomplete) {
  RequestHead h;
  HttpError err = HttpError::kBadChunk;
  EXPECT_EQ(parseRequestHead(nullptr, 0, {}, h, err), ParseStatus::kIncomplete);
  EXPECT_EQ(err, HttpError::kNone);
}

TEST(HttpRequest, ParserResetsOutBetweenCalls) {
  RequestHead h;
  HttpError err;
  const std::string a = withHost("POST / HTTP/1.1", "Content-Length: 4\r\nConnection: close\r\n");
  ASSERT_EQ(parseRequestHead(a.data(), a.size(), {}, h, err), ParseStatus::kComplete);
  const std::string b = withHost("GET / HTTP/1.1");
  ASSERT_EQ(parseRequestHead(b.data(), b.size(), {}, h, err), ParseStatus::kComplete);
  EXPECT_EQ(h.body, BodyKind::kNone);
  EXPECT_EQ(h.contentLength, 0u);
  EXPECT_TRUE(h.keepAlive);
  EXPECT_EQ(h.headerCount, 1u);
}

// ---------------------------------------------------------------------------
// Requests: request line rejections

TEST(HttpRequestReject, LeadingEmptyLines) {
  EXPECT_TRUE(reqFails("\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", HttpError::kBadRequestLine));
  EXPECT_TRUE(reqFails("\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", HttpError::kBadRequestLine));
}

TEST(HttpRequestReject, MethodNotToken) {
  EXPECT_TRUE(reqFails(withHost("G(T / HTTP/1.1"), HttpError::kBadMethod));
  EXPECT_TRUE(reqFails(withHost("GE\x01T / HTTP/1.1"), HttpError::kBadMethod));
  EXPECT_TRUE(reqFails(withHost(" GET / HTTP/1.1"), HttpError::kBadRequestLine));
  EXPECT_TRUE(reqFails(withHost("GET\t/ HTTP/1.1"), HttpError::kBadMethod));
}

TEST(HttpRequestReject, BinaryGarbageFailsBeforeLineEnd) {
  // A TLS ClientHello on the plain port: rejected without waiting for a LF.
  auto r = parseReq(std::string_view("\x16\x03\x01\x02\x00", 5));
  EXPECT_EQ(r->status, ParseStatus::kError);
  EXPECT_EQ(r->err, HttpError::kBadMethod);
}

TEST(HttpRequestReject, MalformedRequestLines) {
  EXPECT_TRUE(reqFails("GET\r\nHost: a\r\n\r\n", HttpError::kBadRequestLine));
  EXPECT_TRUE(reqFails("GET /\r\n\r\n", HttpError::kBadRequestLine));  // HTTP/0.9
  EXPECT_TRUE(reqFails(withHost("GET / HTTP/1.1 "), HttpError::kBadRequestLine));
  EXPECT_TRUE(reqFails(withHost("GET / http/1.1"), HttpError::kBadRequestLine));
  EXPECT_TRUE(reqFails(withHost("GET / HTTP/1.1x"), HttpError::kBadRequestLine));
  EXPECT_TRUE(reqFails(withHost("GET / HTTP/1"), HttpError::kBadRequestLine));
  EXPECT_TRUE(reqFails(withHost("GET / HTTP/1.10"), HttpError::kBadRequestLine));
  EXPECT_TRUE(reqFails(withHost("GET /  HTTP/1.1"), HttpError::kBadRequestLine));
  EXPECT_EQ(httpErrorStatus(HttpError::kBadRequestLine), 400);
}

TEST(HttpRequestReject, BadTargets) {
  EXPECT_TRUE(reqFails(withHost("GET  / HTTP/1.1"), HttpError::kBadTarget));  // empty target
  EXPECT_TRUE(reqFails(withHost("GET /a\x7f HTTP/1.1"), HttpError::kBadTarget));
  EXPECT_TRUE(reqFails(withHost("GET /a\x01 HTTP/1.1"), HttpError::kBadTarget));
  EXPECT_TRUE(reqFails(withHost("GET /caf\xc3\xa9 HTTP/1.1"), HttpError::kBadTarget));
  EXPECT_TRUE(reqFails(withHost("GET /a\tb HTTP/1.1"), HttpError::kBadTarget));
  EXPECT_TRUE(reqFails(withHost("GET /a#frag HTTP/1.1"), HttpError::kBadTarget));
  EXPECT_TRUE(reqFails(withHost("GET index.html HTTP/1.1"), HttpError::kBadTarget));
  EXPECT_TRUE(reqFails(withHost("GET * HTTP/1.1"), HttpError::kBadTarget));
  EXPECT_TRUE(reqFails(withHost("CONNECT /x HTTP/1.1"), HttpError::kBadTarget));
  EXPECT_TRUE(reqFails(withHost("CONNECT example.com HTTP/1.1"), HttpError::kBadTarget));
  EXPECT_TRUE(reqFails(withHost("CONNECT example.com:44a HTTP/1.1"), HttpError::kBadTarget));
  EXPECT_TRUE(reqFails(withHost("CONNECT u@example.com:443 HTTP/1.1"), HttpError::kBadTarget));
  EXPECT_TRUE(reqFails(withHost("GET 1http://a/ HTTP/1.1"), HttpError::kBadTarget));
}

TEST(HttpRequestReject, UnsupportedVersionsAre505) {
  EXPECT_TRUE(reqFails(withHost("GET / HTTP/2.0"), HttpError::kBadVersion));
  EXPECT_TRUE(reqFails(withHost("GET / HTTP/1.2"), HttpError::kBadVersion));
  EXPECT_TRUE(reqFails(withHost("GET / HTTP/0.9"), HttpError::kBadVersion));
  EXPECT_TRUE(reqFails(withHost("GET / HTTP/3.0"), HttpError::kBadVersion));
  EXPECT_EQ(httpErrorStatus(HttpError::kBadVersion), 505);
}

// ---------------------------------------------------------------------------
// Requests: line endings and field syntax

TEST(HttpRequestReject, BareLF) {
  EXPECT_TRUE(reqFails("GET / HTTP/1.1\nHost: a\r\n\r\n", HttpError::kBareLF));
  EXPECT_TRUE(reqFails("GET / HTTP/1.1\r\nHost: a\n\r\n", HttpError::kBareLF));
  EXPECT_TRUE(reqFails("GET / HTTP/1.1\r\nHost: a\r\n\n", HttpError::kBareLF));
  EXPECT_TRUE(reqFails("GET / HTTP/1.1\r\nHost: a\r\nX: a\nb\r\n\r\n", HttpError::kBareLF));
}

TEST(HttpRequestReject, BareCR) {
  EXPECT_TRUE(reqFails("GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n", HttpError::kBareCR));
  EXPECT_TRUE(reqFails("GET / HTTP/1.1\r\nHost: a\r\nX\r: b\r\n\r\n", HttpError::kBareCR));
  EXPECT_TRUE(reqFails("GET / HTTP/1.1\rHost: a\r\n\r\n", HttpError::kBareCR));
  EXPECT_TRUE(reqFails("GET /\r HTTP/1.1\r\nHost: a\r\n\r\n", HttpError::kBareCR));
  EXPECT_TRUE(reqFails("GET / HTTP/1.1\r\nHost: a\r\n\r\r\n", HttpError::kBareCR));
}

TEST(HttpRequestReject, ObsFold) {
  EXPECT_TRUE(reqFails("GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n", HttpError::kObsFold));
  EXPECT_TRUE(reqFails("GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n\tb\r\n\r\n", HttpError::kObsFold));
  // Whitespace before the first field is the same smuggling vector.
  EXPECT_TRUE(reqFails("GET / HTTP/1.1\r\n Host: a\r\n\r\n", HttpError::kObsFold));
}

TEST(HttpRequestReject, BadHeaderNames) {
  EXPECT_TRUE(reqFails(withHost("GET / HTTP/1.1", "X-A : b\r\n"), HttpError::kBadHeaderName));
  EXPECT_TRUE(reqFails(withHost("GET / HTTP/1.1", "X-A\t: b\r\n"), HttpError::kBadHeaderName));
  EXPECT_TRUE(reqFails(withHost("GET / HTTP/1.1", ": b\r\n"), HttpError::kBadHeaderName));
  EXPECT_TRUE(reqFails(withHost("GET / HTTP/1.1", "NoColon\r\n"), HttpError::kBadHeaderName));
  EXPECT_TRUE(reqFails(withHost("GET / HTTP/1.1", "X(A): b\r\n"), HttpError::kBadHeaderName));
  EXPECT_TRUE(reqFails(withHost("GET / HTTP/1.1", "X\xc3\xa9: b\r\n"),
                       HttpError::kBadHeaderName));
  // "Transfer-Encoding : chunked" must not be skipped as an unknown field.
  EXPECT_TRUE(reqFails(withHost("POST / HTTP/1.1", "Transfer-Encoding : chunked\r\n"),
                       HttpError::kBadHeaderName));
}

TEST(HttpRequestReject, ControlBytesInValues) {
  EXPECT_TRUE(reqFails(withHost("GET / HTTP/1.1", std::string("X: a\0b\r\n", 8)),
                       HttpError::kBadHeaderValue));
  EXPECT_TRUE(reqFails(withHost("GET / HTTP/1.1", "X: a\x01\r\n"), HttpError::kBadHeaderValue));
  EXPECT_TRUE(reqFails(withHost("GET / HTTP/1.1", "X: a\x7f\r\n"), HttpError::kBadHeaderValue));
  EXPECT_TRUE(reqFails(withHost("GET / HTTP/1.1", "X: \x1b[0m\r\n"), HttpError::kBadHeaderValue));
  EXPECT_TRUE(reqFails(withHost("POST / HTTP/1.1", "Transfer-Encoding: chunked\x0b\r\n"),
                       HttpError::kBadHeaderValue));
}

// ---------------------------------------------------------------------------
// Requests: Host

TEST(HttpRequestReject, MissingHostIn11) {
  EXPECT_TRUE(reqFails("GET / HTTP/1.1\r\nAccept: */*\r\n\r\n", HttpError::kMissingHost));
  EXPECT_EQ(httpErrorStatus(HttpError::kMissingHost), 400);
}

TEST(HttpRequestReject, RepeatedHost) {
  EXPECT_TRUE(reqFails("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
                       HttpError::kConflictingHost));
  EXPECT_TRUE(reqFails("GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n",
                       HttpError::kConflictingHost));
  EXPECT_TRUE(reqFails("GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n",
                       HttpError::kConflictingHost));
}

TEST(HttpRequestReject, HostWithNonAuthorityBytes) {
  EXPECT_TRUE(reqFails("GET / HTTP/1.1\r\nHost: a b\r\n\r\n", HttpError::kBadHeaderValue));
  EXPECT_TRUE(reqFails("GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", HttpError::kBadHeaderValue));
  EXPECT_TRUE(reqFails("GET / HTTP/1.1\r\nHost: u@a\r\n\r\n", HttpError::kBadHeaderValue));
  auto ok = parseReq("GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n");
  EXPECT_EQ(ok->status, ParseStatus::kComplete);
  EXPECT_EQ(ok->head.host, "[::1]:8080");
}

// ---------------------------------------------------------------------------
// Requests: Content-Length

TEST(HttpRequestReject, ContentLengthSyntax) {
  for (const char* v : {"+5", "-5", "5 5", "0x5", "5a", "", "1e3", "5.0", "\"5\""}) {
    EXPECT_TRUE(reqFails(withHost("POST / HTTP/1.1", std::string("Content-Length: ") + v + "\r\n"),
                         HttpError::kBadContentLength))
        << v;
  }
}

TEST(HttpRequestReject, ContentLengthTooManyDigits) {
  EXPECT_TRUE(reqFails(withHost("POST / HTTP/1.1", "Content-Length: 1000000000000000000\r\n"),
                       HttpError::kBadContentLength));
  EXPECT_TRUE(reqFails(withHost("POST / HTTP/1.1", "Content-Length: 99999999999999999999999\r\n"),
                       HttpError::kBadContentLength));
}

TEST(HttpRequestReject, ContentLengthListed) {
  EXPECT_TRUE(reqFails(withHost("POST / HTTP/1.1", "Content-Length: 5, 5\r\n"),
                       HttpError::kConflictingContentLength));
  EXPECT_TRUE(reqFails(withHost("POST / HTTP/1.1", "Content-Length: 5,6\r\n"),
                       HttpError::kConflictingContentLength));
}

TEST(HttpRequestReject, ContentLengthRepeatedEvenIfEqual) {
  EXPECT_TRUE(reqFails(withHost("POST / HTTP/1.1", "Content-Length: 5\r\nContent-Length: 5\r\n"),
                       HttpError::kConflictingContentLength));
  EXPECT_TRUE(reqFails(withHost("POST / HTTP/1.1", "Content-Length: 5\r\ncontent-length: 6\r\n"),
                       HttpError::kConflictingContentLength));
}

// ---------------------------------------------------------------------------
// Requests: Transfer-Encoding

TEST(HttpRequestReject, OtherCodingsAre501) {
  for (const char* v : {"gzip, chunked", "gzip", "identity", "xchunked", "chunkedx",
                        "deflate,chunked"}) {
    EXPECT_TRUE(reqFails(withHost("POST / HTTP/1.1", std::string("Transfer-Encoding: ") + v +
                                                         "\r\n"),
                         HttpError::kUnsupportedTransferCoding))
        << v;
  }
  EXPECT_EQ(httpErrorStatus(HttpError::kUnsupportedTransferCoding), 501);
}

TEST(HttpRequestReject, ChunkedNotFinalOrRepeated) {
  for (const char* v : {"chunked, gzip", "chunked, chunked", "chunked,", ",chunked", "",
                        "chunked,,", "chunked;q=1", "\"chunked\"", "chunked chunked"}) {
    EXPECT_TRUE(reqFails(withHost("POST / HTTP/1.1", std::string("Transfer-Encoding: ") + v +
                                                         "\r\n"),
                         HttpError::kBadTransferEncoding))
        << '"' << v << '"';
  }
}

TEST(HttpRequestReject, RepeatedTransferEncodingFieldsCombine) {
  EXPECT_TRUE(reqFails(withHost("POST / HTTP/1.1",
                                "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n"),
                       HttpError::kBadTransferEncoding));
  EXPECT_TRUE(reqFails(withHost("POST / HTTP/1.1",
                                "Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n"),
                       HttpError::kBadTransferEncoding));
  EXPECT_TRUE(reqFails(withHost("POST / HTTP/1.1",
                                "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n"),
                       HttpError::kUnsupportedTransferCoding));
}

TEST(HttpRequestReject, ContentLengthAndTransferEncoding) {
  EXPECT_TRUE(reqFails(withHost("POST / HTTP/1.1",
                                "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n"),
                       HttpError::kContentLengthAndChunked));
  EXPECT_TRUE(reqFails(withHost("POST / HTTP/1.1",
                                "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n"),
                       HttpError::kContentLengthAndChunked));
  EXPECT_EQ(httpErrorStatus(HttpError::kContentLengthAndChunked), 400);
}

TEST(HttpRequestReject, TransferEncodingInHttp10) {
  EXPECT_TRUE(reqFails("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
                       HttpError::kTransferEncodingHttp10));
}

// ---------------------------------------------------------------------------
// Requests: limits

TEST(HttpRequestLimits, RequestLineAtLimitAccepted) {
  ParseLimits l;
  l.maxRequestLine = 64;
  std::string line = "GET /";
  line += std::string(64 - line.size() - std::string_view(" HTTP/1.1\r\n").size(), 'a');
  line += " HTTP/1.1";
  ASSERT_EQ(line.size() + 2, 64u);
  auto r = parseReq(line + "\r\nHost: a\r\n\r\n", l);
  EXPECT_EQ(r->status, ParseStatus::kComplete);
}

TEST(HttpRequestLimits, RequestLineOverLimitIs414) {
  ParseLimits l;
  l.maxRequestLine = 64;
  std::string line = "GET /" + std::string(64 - 5 - 11 + 1, 'a') + " HTTP/1.1";
  ASSERT_EQ(line.size() + 2, 65u);
  EXPECT_TRUE(reqFails(line + "\r\nHost: a\r\n\r\n", HttpError::kUriTooLong, l));
  // Incomplete: 64 bytes and no LF yet is already too long.
  auto r = parseReq(std::string("GET /") + std::string(59, 'a'), l);
  EXPECT_EQ(r->status, ParseStatus::kError);
  EXPECT_EQ(r->err, HttpError::kUriTooLong);
  auto shorter = parseReq(std::string("GET /") + std::string(58, 'a'), l);
  EXPECT_EQ(shorter->status, ParseStatus::kIncomplete);
  EXPECT_EQ(httpErrorStatus(HttpError::kUriTooLong), 414);
}

TEST(HttpRequestLimits, HeadAtLimitAccepted) {
  ParseLimits l;
  l.maxHeaderBytes = 100;
  std::string s = "GET / HTTP/1.1\r\nHost: a\r\nX: ";
  s += std::string(100 - s.size() - 4, 'v');
  s += "\r\n\r\n";
  ASSERT_EQ(s.size(), 100u);
  auto r = parseReq(s, l);
  EXPECT_EQ(r->status, ParseStatus::kComplete);
}

TEST(HttpRequestLimits, HeadOverLimitIs431EvenIncomplete) {
  ParseLimits l;
  l.maxHeaderBytes = 100;
  std::string s = "GET / HTTP/1.1\r\nHost: a\r\nX: ";
  s += std::string(100 - s.size() - 3, 'v');
  s += "\r\n\r\n";
  ASSERT_EQ(s.size(), 101u);
  EXPECT_TRUE(reqFails(s, HttpError::kHeadersTooLarge, l));
  auto partial = parseReq(s.substr(0, 100), l);  // 100 bytes, head not finished
  EXPECT_EQ(partial->status, ParseStatus::kError);
  EXPECT_EQ(partial->err, HttpError::kHeadersTooLarge);
  EXPECT_EQ(httpErrorStatus(HttpError::kHeadersTooLarge), 431);
}

TEST(HttpRequestLimits, TooManyHeaders) {
  ParseLimits l;
  l.maxHeaders = 3;
  auto ok = parseReq(withHost("GET / HTTP/1.1", "A: 1\r\nB: 2\r\n"), l);
  EXPECT_EQ(ok->status, ParseStatus::kComplete);
  EXPECT_TRUE(reqFails(withHost("GET / HTTP/1.1", "A: 1\r\nB: 2\r\nC: 3\r\n"),
                       HttpError::kTooManyHeaders, l));
  EXPECT_EQ(httpErrorStatus(HttpError::kTooManyHeaders), 431);
}

TEST(HttpRequestLimits, MaxHeadersCappedByArray) {
  ParseLimits l;
  l.maxHeaders = 100000;
  std::string fields;
  for (uint32_t i = 0; i + 1 < kMaxHeaderFields; ++i) fields += "X: y\r\n";
  auto ok = parseReq(withHost("GET / HTTP/1.1", fields), l);
  ASSERT_EQ(ok->status, ParseStatus::kComplete);
  EXPECT_EQ(ok->head.headerCount, kMaxHeaderFields);
  EXPECT_TRUE(reqFails(withHost("GET / HTTP/1.1", fields + "X: y\r\n"),
                       HttpError::kTooManyHeaders, l));
}

// ---------------------------------------------------------------------------
// Responses

TEST(HttpResponse, OkWithContentLength) {
  const std::string head = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX: y\r\n\r\n";
  auto r = parseResp(head + "hi");
  ASSERT_EQ(r->status, ParseStatus::kComplete);
  EXPECT_EQ(r->head.status, 200);
  EXPECT_EQ(r->head.versionMinor, 1);
  EXPECT_EQ(r->head.reason, "OK");
  EXPECT_EQ(r->head.body, BodyKind::kContentLength);
  EXPECT_EQ(r->head.contentLength, 2u);
  EXPECT_EQ(r->head.headerCount, 2u);
  EXPECT_EQ(r->head.headBytes, head.size());
  EXPECT_TRUE(r->head.keepAlive);
}

TEST(HttpResponse, ReasonOptional) {
  auto a = parseResp("HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n");
  ASSERT_EQ(a->status, ParseStatus::kComplete);
  EXPECT_EQ(a->head.reason, "");
  auto b = parseResp("HTTP/1.1 404 \r\nContent-Length: 0\r\n\r\n");
  ASSERT_EQ(b->status, ParseStatus::kComplete);
  EXPECT_EQ(b->head.status, 404);
  EXPECT_EQ(b->head.reason, "");
  auto c = parseResp("HTTP/1.1 599 Some \tOdd \xe9 Reason\r\nContent-Length: 0\r\n\r\n");
  ASSERT_EQ(c->status, ParseStatus::kComplete);
  EXPECT_EQ(c->head.reason, "Some \tOdd \xe9 Reason");
}

TEST(HttpResponse, BadStatusLines) {
  for (const char* s : {"HTTP/1.1 20 OK\r\n\r\n", "HTTP/1.1 2000 OK\r\n\r\n",
                        "HTTP/1.1 099 X\r\n\r\n", "HTTP/2.0 200 OK\r\n\r\n", "http/1.1 200\r\n\r\n",
                        "HTTP/1.1  200 OK\r\n\r\n", "HTTP/1.1 200OK\r\n\r\n", "HTTP/1.1\r\n\r\n",
                        "\r\nHTTP/1.1 200 OK\r\n\r\n", "HTTP/1.1 2x0 OK\r\n\r\n",
                        "HTTP/1.1 200 O\x01K\r\n\r\n", "ICY 200 OK\r\n\r\n"}) {
    EXPECT_TRUE(respFails(s, HttpError::kBadStatusLine)) << s;
  }
  EXPECT_EQ(httpErrorStatus(HttpError::kBadStatusLine), 502);
}

TEST(HttpResponse, NoBodyForHeadAnd1xx204And304) {
  auto head = parseResp("HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n", /*head=*/true);
  ASSERT_EQ(head->status, ParseStatus::kComplete);
  EXPECT_EQ(head->head.body, BodyKind::kNone);
  EXPECT_TRUE(head->head.keepAlive);
  for (const char* s : {"HTTP/1.1 100 Continue\r\n\r\n", "HTTP/1.1 101 Switching\r\n\r\n",
                        "HTTP/1.1 204 No Content\r\n\r\n",
                        "HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
                        "HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n"}) {
    auto r = parseResp(s);
    ASSERT_EQ(r->status, ParseStatus::kComplete) << s;
    EXPECT_EQ(r->head.body, BodyKind::kNone) << s;
  }
}

TEST(HttpResponse, ChunkedAndCodings) {
  auto c = parseResp("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
  ASSERT_EQ(c->status, ParseStatus::kComplete);
  EXPECT_EQ(c->head.body, BodyKind::kChunked);
  EXPECT_TRUE(c->head.keepAlive);
  auto g = parseResp("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n");
  ASSERT_EQ(g->status, ParseStatus::kComplete);
  EXPECT_EQ(g->head.body, BodyKind::kChunked);
  auto split = parseResp("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n"
                         "Transfer-Encoding: chunked\r\n\r\n");
  ASSERT_EQ(split->status, ParseStatus::kComplete);
  EXPECT_EQ(split->head.body, BodyKind::kChunked);
}

TEST(HttpResponse, TransferEncodingNotEndingInChunkedRunsUntilClose) {
  for (const char* te : {"gzip", "chunked, gzip"}) {
    auto r = parseResp(std::string("HTTP/1.1 200 OK\r\nTransfer-Encoding: ") + te + "\r\n\r\n");
    ASSERT_EQ(r->status, ParseStatus::kComplete) << te;
    EXPECT_EQ(r->head.body, BodyKind::kUntilClose) << te;
    EXPECT_FALSE(r->head.keepAlive) << te;
  }
}

TEST(HttpResponse, BadTransferEncoding) {
  EXPECT_TRUE(respFails("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
                        HttpError::kBadTransferEncoding));
  EXPECT_TRUE(respFails("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip,,chunked\r\n\r\n",
                        HttpError::kBadTransferEncoding));
  EXPECT_TRUE(respFails("HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                        HttpError::kTransferEncodingHttp10));
}

TEST(HttpResponse, NoLengthRunsUntilClose) {
  auto r = parseResp("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n");
  ASSERT_EQ(r->status, ParseStatus::kComplete);
  EXPECT_EQ(r->head.body, BodyKind::kUntilClose);
  EXPECT_FALSE(r->head.keepAlive);
}

TEST(HttpResponse, FramingConflictsRejected) {
  EXPECT_TRUE(respFails("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n"
                        "\r\n",
                        HttpError::kContentLengthAndChunked));
  EXPECT_TRUE(respFails("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
                        HttpError::kConflictingContentLength));
  EXPECT_TRUE(respFails("HTTP/1.1 200 OK\r\nContent-Length: -3\r\n\r\n",
                        HttpError::kBadContentLength));
  // Even where no body follows, a contradictory head is refused.
  EXPECT_TRUE(respFails("HTTP/1.1 304 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
                        HttpError::kConflictingContentLength));
}

TEST(HttpResponse, KeepAliveFromVersionAndConnection) {
  auto old = parseResp("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n");
  ASSERT_EQ(old->status, ParseStatus::kComplete);
  EXPECT_FALSE(old->head.keepAlive);
  auto oldKa = parseResp("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n");
  ASSERT_EQ(oldKa->status, ParseStatus::kComplete);
  EXPECT_EQ(oldKa->head.versionMinor, 0);
  EXPECT_TRUE(oldKa->head.keepAlive);
  auto close = parseResp("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
  EXPECT_FALSE(close->head.keepAlive);
}

TEST(HttpResponse, SameFieldStrictness) {
  EXPECT_TRUE(respFails("HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n", HttpError::kObsFold));
  EXPECT_TRUE(respFails("HTTP/1.1 200 OK\nX: a\r\n\r\n", HttpError::kBareLF));
  EXPECT_TRUE(respFails("HTTP/1.1 200 OK\r\nX: a\r\n\n", HttpError::kBareLF));
  EXPECT_TRUE(respFails("HTTP/1.1 200 OK\r\nX : a\r\n\r\n", HttpError::kBadHeaderName));
  EXPECT_TRUE(respFails("HTTP/1.1 200 OK\r\nX: \x7f\r\n\r\n", HttpError::kBadHeaderValue));
  EXPECT_TRUE(respFails("HTTP/1.1 200 OK\r\nX: a\rb\r\n\r\n", HttpError::kBareCR));
}

TEST(HttpResponse, IncompleteAtEverySplit) {
  const std::string s = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Y: z\r\n\r\n";
  for (size_t k = 0; k < s.size(); ++k) {
    EXPECT_EQ(parseResp(s.substr(0, k))->status, ParseStatus::kIncomplete) << k;
  }
  auto r = parseResp(s);
  ASSERT_EQ(r->status, ParseStatus::kComplete);
  EXPECT_EQ(r->head.headBytes, s.size());
}

TEST(HttpResponse, HeadTooLarge) {
  ParseLimits l;
  l.maxHeaderBytes = 40;
  auto r = parseResp("HTTP/1.1 200 OK\r\nX: " + std::string(30, 'a'), false, l);
  EXPECT_EQ(r->status, ParseStatus::kError);
  EXPECT_EQ(r->err, HttpError::kHeadersTooLarge);
}

// ---------------------------------------------------------------------------
// Error mapping

TEST(HttpErrors, StatusDefaultsTo400) {
  for (HttpError e : {HttpError::kBadRequestLine, HttpError::kBadMethod, HttpError::kBadTarget,
                      HttpError::kBadHeaderName, HttpError::kBadHeaderValue, HttpError::kObsFold,
                      HttpError::kBareCR, HttpError::kBareLF, HttpError::kBadContentLength,
                      HttpError::kConflictingContentLength, HttpError::kBadTransferEncoding,
                      HttpError::kConflictingHost, HttpError::kTransferEncodingHttp10,
                      HttpError::kBadChunk}) {
    EXPECT_EQ(httpErrorStatus(e), 400) << httpErrorText(e);
  }
}

TEST(HttpErrors, TextsAreDistinctAndNonEmpty) {
  std::set<std::string> seen;
  for (int i = 0; i <= static_cast<int>(HttpError::kBadStatusLine); ++i) {
    const char* t = httpErrorText(static_cast<HttpError>(i));
    ASSERT_NE(t, nullptr);
    EXPECT_GT(std::strlen(t), 3u);
    EXPECT_TRUE(seen.insert(t).second) << "duplicate text: " << t;
  }
  EXPECT_STREQ(httpErrorText(HttpError::kContentLengthAndChunked),
               "Content-Length and Transfer-Encoding together");
}

// ---------------------------------------------------------------------------
// Chunked decoder

struct FeedOutcome {
  ChunkedDecoder::Result result = ChunkedDecoder::Result::kNeedMore;
  size_t consumed = 0;  // total over all calls
  uint64_t payload = 0;
};

// Feeds `s` cut at `cuts` (ascending offsets), each piece in its own
// exactly-sized buffer. Stops at the first kDone or kError.
FeedOutcome feedPieces(std::string_view s, const std::vector<size_t>& cuts) {
  ChunkedDecoder d;
  FeedOutcome out;
  size_t from = 0;
  for (size_t i = 0; i <= cuts.size(); ++i) {
    const size_t to = i < cuts.size() ? cuts[i] : s.size();
    auto piece = exactCopy(s.substr(from, to - from));
    size_t used = 0;
    out.result = d.feed(piece.get(), to - from, used);
    out.consumed += used;
    if (out.result != ChunkedDecoder::Result::kNeedMore) break;
    if (used != to - from) {
      out.result = ChunkedDecoder::Result::kError;  // contract broken: flag it
      break;
    }
    from = to;
  }
  out.payload = d.payloadBytes();
  return out;
}

// `body` is a complete chunked body; "NEXT" is appended to check `consumed`.
AssertionResult chunkedValidEverySplit(std::string_view body, uint64_t payload) {
  const std::string s = std::string(body) + "NEXT";
  std::vector<std::vector<size_t>> plans;
  plans.push_back({});
  for (size_t k = 0; k <= s.size(); ++k) plans.push_back({k});
  std::vector<size_t> bytewise;
  for (size_t k = 1; k < s.size(); ++k) bytewise.push_back(k);
  plans.push_back(bytewise);
  for (const auto& plan : plans) {
    const FeedOutcome o = feedPieces(s, plan);
    if (o.result != ChunkedDecoder::Result::kDone || o.consumed != body.size() ||
        o.payload != payload) {
      return AssertionFailure() << "plan with " << plan.size() << " cuts"
                                << (plan.size() == 1 ? " at " + std::to_string(plan[0]) : "")
                                << ": result " << static_cast<int>(o.result) << " consumed "
                                << o.consumed << " payload " << o.payload;
    }
  }
  return AssertionSuccess();
}

AssertionResult chunkedInvalidEverySplit(std::string_view s) {
  std::vector<std::vector<size_t>> plans;
  for (size_t k = 0; k <= s.size(); ++k) plans.push_back({k});
  std::vector<size_t> bytewise;
  for (size_t k = 1; k < s.size(); ++k) bytewise.push_back(k);
  plans.push_back(bytewise);
  for (const auto& plan : plans) {
    const FeedOutcome o = feedPieces(s, plan);
    if (o.result != ChunkedDecoder::Result::kError) {
      return AssertionFailure() << "not rejected; result " << static_cast<int>(o.result);
    }
  }
  return AssertionSuccess();
}

ChunkedDecoder::Result feedAll(ChunkedDecoder& d, std::string_view s, size_t& consumed) {
  auto buf = exactCopy(s);
  return d.feed(buf.get(), s.size(), consumed);
}

TEST(Chunked, SimpleBody) {
  ChunkedDecoder d;
  size_t used = 0;
  const std::string body = "5\r\nhello\r\n0\r\n\r\n";
  EXPECT_EQ(feedAll(d, body + "GET /", used), ChunkedDecoder::Result::kDone);
  EXPECT_EQ(used, body.size());
  EXPECT_EQ(d.payloadBytes(), 5u);
}

TEST(Chunked, ValidVectorsAtEverySplit) {
  EXPECT_TRUE(chunkedValidEverySplit("0\r\n\r\n", 0));
  EXPECT_TRUE(chunkedValidEverySplit("5\r\nhello\r\n0\r\n\r\n", 5));
  EXPECT_TRUE(chunkedValidEverySplit("a\r\n0123456789\r\nA\r\n0123456789\r\n0\r\n\r\n", 20));
  EXPECT_TRUE(chunkedValidEverySplit("1F\r\n" + std::string(31, 'x') + "\r\n000\r\n\r\n", 31));
  EXPECT_TRUE(chunkedValidEverySplit("3\r\n\r\n\r\r\n0\r\n\r\n", 3));  // CRLF-like payload
  EXPECT_TRUE(chunkedValidEverySplit("3;a=b;c\r\nabc\r\n0;last=\"q \\\" ;x\"\r\n\r\n", 3));
  EXPECT_TRUE(chunkedValidEverySplit("2\r\nhi\r\n0\r\nX-Sum: 1\r\nX-T:\tv w \r\n\r\n", 2));
}

TEST(Chunked, ExtensionsAccepted) {
  for (const char* s : {"1;a\r\nx\r\n0\r\n\r\n", "1;a=b\r\nx\r\n0\r\n\r\n",
                        "1;a=\"\"\r\nx\r\n0\r\n\r\n", "1;a=\"x\\\\y\";b=1;c\r\nx\r\n0\r\n\r\n",
                        "1;name=\"\xe9\tz\"\r\nx\r\n0\r\n\r\n"}) {
    EXPECT_TRUE(chunkedValidEverySplit(s, 1)) << s;
  }
}

TEST(Chunked, ExtensionsRejected) {
  for (const char* s : {"1 ;a\r\nx\r\n0\r\n\r\n", "1; a\r\nx\r\n0\r\n\r\n",
                        "1;a =b\r\nx\r\n0\r\n\r\n", "1;a= b\r\nx\r\n0\r\n\r\n",
                        "1;=b\r\nx\r\n0\r\n\r\n", "1;a=\r\nx\r\n0\r\n\r\n",
                        "1;\r\nx\r\n0\r\n\r\n", "1;a=b c\r\nx\r\n0\r\n\r\n",
                        "1;a=\"x\"y\r\nx\r\n0\r\n\r\n", "1;a=\"x\r\nx\r\n0\r\n\r\n",
                        "1;a=\"\x01\"\r\nx\r\n0\r\n\r\n", "1;a\x7f\r\nx\r\n0\r\n\r\n"}) {
    EXPECT_TRUE(chunkedInvalidEverySplit(s)) << s;
  }
}

TEST(Chunked, BadSizes) {
  for (const char* s : {"-1\r\n", "0x10\r\nxxxxxxxxxxxxxxxx\r\n0\r\n\r\n", " 5\r\nhello\r\n",
                        "5 \r\nhello\r\n", "+5\r\nhello\r\n", "g\r\n", "\r\n0\r\n\r\n",
                        "5\t\r\nhello\r\n", ";a\r\n"}) {
    EXPECT_TRUE(chunkedInvalidEverySplit(s)) << s;
  }
}

TEST(Chunked, SizeOverflowRejected) {
  EXPECT_TRUE(chunkedInvalidEverySplit("fffffffffffffffff\r\n"));     // 17 digits
  EXPECT_TRUE(chunkedInvalidEverySplit("00000000000000001\r\nx\r\n"));  // 17 digits, small
  // 16 digits is the largest allowed size: framing is fine, data pending.
  ChunkedDecoder d;
  size_t used = 0;
  EXPECT_EQ(feedAll(d, "ffffffffffffffff\r\nabc", used), ChunkedDecoder::Result::kNeedMore);
  EXPECT_EQ(used, 21u);
  EXPECT_EQ(d.payloadBytes(), 3u);
}

TEST(Chunked, LineEndingsStrict) {
  EXPECT_TRUE(chunkedInvalidEverySplit("5\nhello\r\n0\r\n\r\n"));    // bare LF after size
  EXPECT_TRUE(chunkedInvalidEverySplit("5\r\nhello\n0\r\n\r\n"));    // bare LF after data
  EXPECT_TRUE(chunkedInvalidEverySplit("5\r\nhelloX\r\n0\r\n\r\n"));  // data overrun
  EXPECT_TRUE(chunkedInvalidEverySplit("5\r\nhell\r\n0\r\n\r\n"));    // data shorter than size
  EXPECT_TRUE(chunkedInvalidEverySplit("5\r\nhello\r\r0\r\n\r\n"));
  EXPECT_TRUE(chunkedInvalidEverySplit("5\r\nhelloX\n0\r\n\r\n"));  // X where CR belongs
  EXPECT_TRUE(chunkedInvalidEverySplit("5\r\nhello\n\n0\r\n\r\n"));
  EXPECT_TRUE(chunkedInvalidEverySplit("5\rhello\r\n0\r\n\r\n"));
  EXPECT_TRUE(chunkedInvalidEverySplit("0\r\n\n"));                  // bare LF at the end
  EXPECT_TRUE(chunkedInvalidEverySplit("0\r\n\rX"));
}

TEST(Chunked, TrailersRejected) {
  EXPECT_TRUE(chunkedInvalidEverySplit("0\r\nX: a\r\n b\r\n\r\n"));   // obs-fold
  EXPECT_TRUE(chunkedInvalidEverySplit("0\r\n X: a\r\n\r\n"));
  EXPECT_TRUE(chunkedInvalidEverySplit("0\r\nNoColon\r\n\r\n"));
  EXPECT_TRUE(chunkedInvalidEverySplit("0\r\nX : a\r\n\r\n"));
  EXPECT_TRUE(chunkedInvalidEverySplit("0\r\n: a\r\n\r\n"));
  EXPECT_TRUE(chunkedInvalidEverySplit("0\r\nX: a\nY: b\r\n\r\n"));   // bare LF
  EXPECT_TRUE(chunkedInvalidEverySplit(std::string("0\r\nX: a\0\r\n\r\n", 12)));
  EXPECT_TRUE(chunkedInvalidEverySplit("0\r\nX: a\rb\r\n\r\n"));
}

TEST(Chunked, TrailerSectionCap) {
  // Trailer section = field lines + final CRLF; exactly the cap is accepted.
  const size_t cap = ChunkedDecoder::kMaxTrailerBytes;
  const std::string prefix = "0\r\nX: ";
  const size_t fill = cap - 3 /*"X: "*/ - 2 /*CRLF*/ - 2 /*final CRLF*/;
  const std::string atCap = prefix + std::string(fill, 'v') + "\r\n\r\n";
  ChunkedDecoder d;
  size_t used = 0;
  EXPECT_EQ(feedAll(d, atCap, used), ChunkedDecoder::Result::kDone);
  EXPECT_EQ(used, atCap.size());
  ChunkedDecoder d2;
  const std::string over = prefix + std::string(fill + 1, 'v') + "\r\n\r\n";
  EXPECT_EQ(feedAll(d2, over, used), ChunkedDecoder::Result::kError);
}

TEST(Chunked, SizeLineCap) {
  const size_t cap = ChunkedDecoder::kMaxSizeLineBytes;
  // "1;a=" + value + CRLF == cap bytes.
  const std::string atCap = "1;a=" + std::string(cap - 6, 'v') + "\r\nx\r\n0\r\n\r\n";
  ChunkedDecoder d;
  size_t used = 0;
  EXPECT_EQ(feedAll(d, atCap, used), ChunkedDecoder::Result::kDone);
  ChunkedDecoder d2;
  const std::string over = "1;a=" + std::string(cap - 5, 'v') + "\r\nx\r\n0\r\n\r\n";
  EXPECT_EQ(feedAll(d2, over, used), ChunkedDecoder::Result::kError);
  // The cap is per line: many long-ish extension lines in a row are fine.
  std::string many;
  for (int i = 0; i < 4; ++i) many += "1;a=" + std::string(cap - 6, 'v') + "\r\nx\r\n";
  many += "0\r\n\r\n";
  std::vector<size_t> bytewise;
  for (size_t k = 1; k < many.size(); ++k) bytewise.push_back(k);
  const FeedOutcome o = feedPieces(many, bytewise);
  EXPECT_EQ(o.result, ChunkedDecoder::Result::kDone);
  EXPECT_EQ(o.consumed, many.size());
  EXPECT_EQ(o.payload, 4u);
}

TEST(Chunked, ErrorReportsOffsetAndStaysDead) {
  ChunkedDecoder d;
  size_t used = 99;
  EXPECT_EQ(feedAll(d, "5\r\nhello\r\nZ", used), ChunkedDecoder::Result::kError);
  EXPECT_EQ(used, 10u);  // offset of 'Z'
  EXPECT_EQ(feedAll(d, "0\r\n\r\n", used), ChunkedDecoder::Result::kError);
  EXPECT_EQ(used, 0u);
}

TEST(Chunked, FeedAfterDoneAndReset) {
  ChunkedDecoder d;
  size_t used = 0;
  ASSERT_EQ(feedAll(d, "1\r\na\r\n0\r\n\r\n", used), ChunkedDecoder::Result::kDone);
  EXPECT_EQ(feedAll(d, "1\r\n", used), ChunkedDecoder::Result::kDone);
  EXPECT_EQ(used, 0u);
  d.reset();
  EXPECT_EQ(d.payloadBytes(), 0u);
  EXPECT_EQ(feedAll(d, "2\r\nab\r\n0\r\n\r\n", used), ChunkedDecoder::Result::kDone);
  EXPECT_EQ(d.payloadBytes(), 2u);
}

TEST(Chunked, EmptyFeedNeedsMore) {
  ChunkedDecoder d;
  size_t used = 7;
  EXPECT_EQ(d.feed(nullptr, 0, used), ChunkedDecoder::Result::kNeedMore);
  EXPECT_EQ(used, 0u);
}

TEST(Chunked, PayloadCountsBytesSeenSoFar) {
  ChunkedDecoder d;
  size_t used = 0;
  EXPECT_EQ(feedAll(d, "10\r\n0123", used), ChunkedDecoder::Result::kNeedMore);
  EXPECT_EQ(d.payloadBytes(), 4u);
  EXPECT_EQ(feedAll(d, "456789abcdef\r\n0\r\n\r\n", used), ChunkedDecoder::Result::kDone);
  EXPECT_EQ(d.payloadBytes(), 16u);
}

}  // namespace
}  // namespace moat::l7
