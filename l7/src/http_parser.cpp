// Strict HTTP/1.1 head parser and chunked validator (RFC 9112 / RFC 9110).
//
// Design: one pass over the head, one memchr per line to find its LF, one
// table lookup per byte to classify it. Every check that can decide the
// framing (Content-Length, Transfer-Encoding) rejects anything ambiguous,
// because an ambiguity the proxy tolerates is one the upstream may read
// differently (request smuggling).
#include "moat/l7/http_parser.h"

#include <algorithm>
#include <array>
#include <cstring>

namespace moat::l7 {
namespace {

// Byte classes. One lookup per byte; bits may combine.
enum : uint8_t {
  kTchar = 1 << 0,      // RFC 9110 token character
  kVchar = 1 << 1,      // 0x21-0x7E: request-target bytes
  kFieldByte = 1 << 2,  // field-value byte: HTAB, SP, VCHAR, obs-text (0x80-0xFF)
  kHexDigit = 1 << 3,   // 0-9 A-F a-f
  kHostByte = 1 << 4,   // Host: reg-name / IP-literal / port bytes
  kQdtext = 1 << 5,     // quoted-string text: HTAB SP 0x21 0x23-0x5B 0x5D-0x7E obs-text
};

constexpr bool oneOf(int c, std::string_view set) {
  for (char s : set) {
    if (c == static_cast<unsigned char>(s)) return true;
  }
  return false;
}

constexpr std::array<uint8_t, 256> makeClassTable() {
  std::array<uint8_t, 256> t{};
  for (int c = 0; c < 256; ++c) {
    const bool alpha = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
    const bool digit = c >= '0' && c <= '9';
    uint8_t v = 0;
    if (alpha || digit || oneOf(c, "!#$%&'*+-.^_`|~")) v |= kTchar;
    if (c >= 0x21 && c <= 0x7E) v |= kVchar;
    if (c == '\t' || c == ' ' || (c >= 0x21 && c <= 0x7E) || c >= 0x80) v |= kFieldByte;
    if (digit || (c >= 'A' && c <= 'F') || (c >= 'a' && c <= 'f')) v |= kHexDigit;
    if (alpha || digit || oneOf(c, "-._~!$&'()*+,;=:[]%")) v |= kHostByte;
    if (c == '\t' || c == ' ' || c == 0x21 || (c >= 0x23 && c <= 0x5B) ||
        (c >= 0x5D && c <= 0x7E) || c >= 0x80) {
      v |= kQdtext;
    }
    t[static_cast<size_t>(c)] = v;
  }
  return t;
}

constexpr std::array<uint8_t, 256> kClass = makeClassTable();

inline bool hasClass(char c, uint8_t cls) {
  return (kClass[static_cast<unsigned char>(c)] & cls) != 0;
}

inline bool isOws(char c) { return c == ' ' || c == '\t'; }

inline char lowerAscii(char c) {
  return (c >= 'A' && c <= 'Z') ? static_cast<char>(c | 0x20) : c;
}

// `lower` must be lowercase already.
bool equalsLower(std::string_view s, std::string_view lower) {
  if (s.size() != lower.size()) return false;
  for (size_t i = 0; i < s.size(); ++i) {
    if (lowerAscii(s[i]) != lower[i]) return false;
  }
  return true;
}

std::string_view trimOws(std::string_view v) {
  while (!v.empty() && isOws(v.front())) v.remove_prefix(1);
  while (!v.empty() && isOws(v.back())) v.remove_suffix(1);
  return v;
}

bool isToken(std::string_view v) {
  if (v.empty()) return false;
  for (char c : v) {
    if (!hasClass(c, kTchar)) return false;
  }
  return true;
}

// Calls fn(element) for each comma-separated, OWS-trimmed element (elements
// may be empty). Returns false as soon as fn does.
template <class Fn>
bool forEachListElement(std::string_view v, Fn&& fn) {
  for (;;) {
    const size_t comma = v.find(',');
    if (!fn(trimOws(v.substr(0, comma)))) return false;
    if (comma == std::string_view::npos) return true;
    v.remove_prefix(comma + 1);
  }
}

inline ParseStatus fail(HttpError& err, HttpError why) {
  err = why;
  return ParseStatus::kError;
}

// What the header fields say about framing and connection handling. Filled
// field by field; conflicts are reported as soon as the second field shows up.
struct FieldInfo {
  bool request = true;
  bool http10 = false;
  bool hasContentLength = false;
  uint64_t contentLength = 0;
  bool hasTransferEncoding = false;
  bool chunkedSeen = false;   // some TE element was "chunked"
  bool chunkedFinal = false;  // the last TE element so far is "chunked"
  uint32_t hostCount = 0;
  std::string_view host;
  bool connClose = false;
  bool connKeepAlive = false;
  bool connUpgrade = false;
  bool hasUpgrade = false;
  bool expectContinue = false;

  HttpError apply(const HeaderField& f);
  HttpError applyContentLength(std::string_view v);
  HttpError applyTransferEncoding(std::string_view v);
  HttpError applyHost(std::string_view v);
  void applyConnection(std::string_view v);
};

HttpError FieldInfo::apply(const HeaderField& f) {
  // Dispatch on length first: most fields are none of these and cost one switch.
  switch (f.name.size()) {
    case 4:
      if (request && equalsLower(f.name, "host")) return applyHost(f.value);
      break;
    case 6:
      // RFC 9110 10.1.1: a 100-continue expectation in HTTP/1.0 is ignored.
      if (request && !http10 && equalsLower(f.name, "expect") &&
          equalsLower(f.value, "100-continue")) {
        expectContinue = true;
      }
      break;
    case 7:
      if (equalsLower(f.name, "upgrade")) hasUpgrade = true;
      break;
    case 10:
      if (equalsLower(f.name, "connection")) applyConnection(f.value);
      break;
    case 14:
      if (equalsLower(f.name, "content-length")) return applyContentLength(f.value);
      break;
    case 17:
      if (equalsLower(f.name, "transfer-encoding")) return applyTransferEncoding(f.value);
      break;
    default:
      break;
  }
  return HttpError::kNone;
}

HttpError FieldInfo::applyContentLength(std::string_view v) {
  if (hasContentLength) return HttpError::kConflictingContentLength;
  if (hasTransferEncoding) return HttpError::kContentLengthAndChunked;
  hasContentLength = true;
  // A list ("5, 5") is refused even when all members agree: some peers take
  // the first, some the last, some the sum of digits.
  if (v.find(',') != std::string_view::npos) return HttpError::kConflictingContentLength;
  if (v.empty() || v.size() > 18) return HttpError::kBadContentLength;  // 18 digits < 2^63
  uint64_t n = 0;
  for (char c : v) {
    if (c < '0' || c > '9') return HttpError::kBadContentLength;
    n = n * 10 + static_cast<uint64_t>(c - '0');
  }
  contentLength = n;
  return HttpError::kNone;
}

HttpError FieldInfo::applyTransferEncoding(std::string_view v) {
  // RFC 9112 6.1: TE in an HTTP/1.0 message means faulty framing.
  if (http10) return HttpError::kTransferEncodingHttp10;
  if (hasContentLength) return HttpError::kContentLengthAndChunked;
  hasTransferEncoding = true;
  // Repeated TE fields concatenate into one list, so the state carries over.
  HttpError result = HttpError::kNone;
  forEachListElement(v, [&](std::string_view el) {
    if (el.empty() || !isToken(el)) {
      result = HttpError::kBadTransferEncoding;
      return false;
    }
    const bool chunked = equalsLower(el, "chunked");
    if (request) {
      // Requests: exactly one "chunked", last, nothing before or after it.
      if (chunkedSeen) {
        result = HttpError::kBadTransferEncoding;
        return false;
      }
      if (!chunked) {
        result = HttpError::kUnsupportedTransferCoding;
        return false;
      }
    } else if (chunked && chunkedSeen) {
      result = HttpError::kBadTransferEncoding;  // chunked applied twice
      return false;
    }
    chunkedSeen = chunkedSeen || chunked;
    chunkedFinal = chunked;
    return true;
  });
  return result;
}

HttpError FieldInfo::applyHost(std::string_view v) {
  if (++hostCount > 1) return HttpError::kConflictingHost;
  // Host routes the request: only authority bytes, so no SP, '/', '@', '?'.
  for (char c : v) {
    if (!hasClass(c, kHostByte)) return HttpError::kBadHeaderValue;
  }
  host = v;
  return HttpError::kNone;
}

void FieldInfo::applyConnection(std::string_view v) {
  forEachListElement(v, [&](std::string_view el) {
    if (equalsLower(el, "close")) {
      connClose = true;
    } else if (equalsLower(el, "keep-alive")) {
      connKeepAlive = true;
    } else if (equalsLower(el, "upgrade")) {
      connUpgrade = true;
    }
    return true;
  });
}

bool keepAliveFor(const FieldInfo& info) {
  if (info.connClose) return false;
  return info.http10 ? info.connKeepAlive : true;
}

// Splits and validates one field line [b, e) (CRLF excluded, first byte is
// not SP/HTAB). Cost: one table lookup per byte.
HttpError parseFieldLine(const char* b, const char* e, HeaderField& f) {
  const char* p = b;
  while (p < e && hasClass(*p, kTchar)) ++p;
  if (p == e) return HttpError::kBadHeaderName;  // no colon
  if (*p == '\r') return HttpError::kBareCR;
  if (*p != ':' || p == b) return HttpError::kBadHeaderName;  // SP before colon / empty name
  f.name = std::string_view(b, static_cast<size_t>(p - b));
  ++p;
  while (p < e && isOws(*p)) ++p;
  const char* v = p;
  for (; p < e; ++p) {
    if (!hasClass(*p, kFieldByte)) {
      return *p == '\r' ? HttpError::kBareCR : HttpError::kBadHeaderValue;
    }
  }
  const char* ve = e;
  while (ve > v && isOws(ve[-1])) --ve;
  f.value = std::string_view(v, static_cast<size_t>(ve - v));
  return HttpError::kNone;
}

// Parses field lines from `pos` through the empty line. On kComplete `headEnd`
// is the offset just past the final CRLF. Lines are validated as soon as they
// are complete, so a bad field fails even before the head is whole.
ParseStatus parseFields(const char* data, size_t len, size_t pos, size_t headCap,
                        uint32_t maxFields, HeaderField* headers, uint32_t& count,
                        FieldInfo& info, size_t& headEnd, HttpError& err) {
  const size_t cap = std::min(len, headCap);
  for (;;) {
    const char* lf = nullptr;
    if (pos < cap) lf = static_cast<const char*>(std::memchr(data + pos, '\n', cap - pos));
    if (lf == nullptr) {
      // No LF within the limit: either more bytes may come, or the head is
      // already too large whatever comes next.
      return len >= headCap ? fail(err, HttpError::kHeadersTooLarge) : ParseStatus::kIncomplete;
    }
    const char* b = data + pos;
    if (lf == b || lf[-1] != '\r') return fail(err, HttpError::kBareLF);
    const char* e = lf - 1;
    pos = static_cast<size_t>(lf - data) + 1;
    if (e == b) {
      headEnd = pos;
      return ParseStatus::kComplete;
    }
    if (isOws(*b)) return fail(err, HttpError::kObsFold);
    if (count >= maxFields) return fail(err, HttpError::kTooManyHeaders);
    HeaderField& f = headers[count];
    HttpError why = parseFieldLine(b, e, f);
    if (why == HttpError::kNone) why = info.apply(f);
    if (why != HttpError::kNone) return fail(err, why);
    ++count;
  }
}

// authority-form (CONNECT): host ":" port, port 1*5DIGIT, host non-empty.
bool isAuthorityForm(std::string_view t) {
  const size_t colon = t.rfind(':');
  if (colon == std::string_view::npos || colon == 0) return false;
  const std::string_view port = t.substr(colon + 1);
  if (port.empty() || port.size() > 5) return false;
  for (char c : port) {
    if (c < '0' || c > '9') return false;
  }
  for (char c : t.substr(0, colon)) {
    if (!hasClass(c, kHostByte)) return false;
  }
  return true;
}

// absolute-form: scheme ":" ...; scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ).
bool isAbsoluteForm(std::string_view t) {
  const size_t colon = t.find(':');
  if (colon == std::string_view::npos || colon == 0) return false;
  for (size_t i = 0; i < colon; ++i) {
    const char c = t[i];
    const bool alpha = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
    if (!alpha && (i == 0 || !((c >= '0' && c <= '9') || c == '+' || c == '-' || c == '.'))) {
      return false;
    }
  }
  return true;
}

// Checks the method of a request line that has no LF yet, so garbage (a TLS
// hello, binary noise) fails at once instead of after maxRequestLine bytes.
// Only bytes that are an error in every completion are refused.
HttpError checkPartialMethod(const char* data, size_t len) {
  if (data[0] == ' ') return HttpError::kBadRequestLine;
  for (size_t i = 0; i < len; ++i) {
    const char c = data[i];
    if (c == ' ' || c == '\r') return HttpError::kNone;
    if (!hasClass(c, kTchar)) return HttpError::kBadMethod;
  }
  return HttpError::kNone;
}

// Request line [b, e), CRLF excluded.
HttpError parseRequestLine(const char* b, const char* e, RequestHead& out) {
  const char* p = b;
  while (p < e && hasClass(*p, kTchar)) ++p;
  if (p == e) return HttpError::kBadRequestLine;  // "GET" alone
  if (*p != ' ') return *p == '\r' ? HttpError::kBareCR : HttpError::kBadMethod;
  if (p == b) return HttpError::kBadRequestLine;  // empty method
  out.method = std::string_view(b, static_cast<size_t>(p - b));

  const char* t = ++p;
  const char* sp = static_cast<const char*>(std::memchr(t, ' ', static_cast<size_t>(e - t)));
  if (sp == nullptr) {
    // "GET /" (HTTP/0.9) or a control byte hiding the separator.
    for (const char* q = t; q < e; ++q) {
      if (*q == '\r') return HttpError::kBareCR;
    }
    return HttpError::kBadRequestLine;
  }
  if (sp == t) return HttpError::kBadTarget;  // two SPs: empty target
  for (const char* q = t; q < sp; ++q) {
    if (!hasClass(*q, kVchar) || *q == '#') {  // no fragment in a request-target
      return *q == '\r' ? HttpError::kBareCR : HttpError::kBadTarget;
    }
  }
  out.target = std::string_view(t, static_cast<size_t>(sp - t));

  const std::string_view ver(sp + 1, static_cast<size_t>(e - sp - 1));
  if (ver == "HTTP/1.1") {
    out.versionMinor = 1;
  } else if (ver == "HTTP/1.0") {
    out.versionMinor = 0;
  } else if (ver.size() == 8 && ver.substr(0, 5) == "HTTP/" && ver[5] >= '0' && ver[5] <= '9' &&
             ver[6] == '.' && ver[7] >= '0' && ver[7] <= '9') {
    return HttpError::kBadVersion;  // well-formed but not 1.0/1.1: 505
  } else {
    return ver.find('\r') != std::string_view::npos ? HttpError::kBareCR
                                                    : HttpError::kBadRequestLine;
  }

  const std::string_view target = out.target;
  if (out.method == "CONNECT") {
    if (!isAuthorityForm(target)) return HttpError::kBadTarget;
  } else if (target == "*") {
    if (out.method != "OPTIONS") return HttpError::kBadTarget;
  } else if (target[0] != '/' && !isAbsoluteForm(target)) {
    return HttpError::kBadTarget;
  }
  return HttpError::kNone;
}

// Status line [b, e), CRLF excluded: HTTP/1.x SP 3DIGIT [SP reason].
HttpError parseStatusLine(const char* b, const char* e, ResponseHead& out) {
  const std::string_view line(b, static_cast<size_t>(e - b));
  if (line.size() < 12 || line.substr(0, 7) != "HTTP/1." || (line[7] != '0' && line[7] != '1') ||
      line[8] != ' ') {
    return HttpError::kBadStatusLine;
  }
  out.versionMinor = static_cast<uint8_t>(line[7] - '0');
  int status = 0;
  for (size_t i = 9; i < 12; ++i) {
    const char c = line[i];
    if (c < '0' || c > '9') return HttpError::kBadStatusLine;
    status = status * 10 + (c - '0');
  }
  if (status < 100) return HttpError::kBadStatusLine;
  out.status = status;
  if (line.size() == 12) return HttpError::kNone;  // "HTTP/1.1 200" without reason
  if (line[12] != ' ') return HttpError::kBadStatusLine;
  const std::string_view reason = line.substr(13);
  for (char c : reason) {
    if (!hasClass(c, kFieldByte)) {
      return c == '\r' ? HttpError::kBareCR : HttpError::kBadStatusLine;
    }
  }
  out.reason = reason;
  return HttpError::kNone;
}

}  // namespace

ParseStatus parseRequestHead(const char* data, size_t len, const ParseLimits& limits,
                             RequestHead& out, HttpError& err) {
  err = HttpError::kNone;
  // Reset field by field: assigning RequestHead{} would copy ~4 KiB of headers.
  out.method = {};
  out.target = {};
  out.versionMinor = 1;
  out.headerCount = 0;
  out.body = BodyKind::kNone;
  out.contentLength = 0;
  out.host = {};
  out.keepAlive = true;
  out.expectContinue = false;
  out.upgrade = false;
  out.headBytes = 0;
  if (len == 0) return ParseStatus::kIncomplete;
  if (data[0] == '\r' || data[0] == '\n') return fail(err, HttpError::kBadRequestLine);

  const size_t headCap = limits.maxHeaderBytes;
  const size_t lineCap = std::min<size_t>(limits.maxRequestLine, headCap);
  const char* lf = static_cast<const char*>(std::memchr(data, '\n', std::min(len, lineCap)));
  if (lf == nullptr) {
    if (len >= lineCap) {
      return fail(err, lineCap == limits.maxRequestLine ? HttpError::kUriTooLong
                                                        : HttpError::kHeadersTooLarge);
    }
    const HttpError early = checkPartialMethod(data, len);
    return early == HttpError::kNone ? ParseStatus::kIncomplete : fail(err, early);
  }
  if (lf[-1] != '\r') return fail(err, HttpError::kBareLF);  // lf > data: data[0] != '\n'
  HttpError why = parseRequestLine(data, lf - 1, out);
  if (why != HttpError::kNone) return fail(err, why);

  FieldInfo info;
  info.request = true;
  info.http10 = out.versionMinor == 0;
  const uint32_t maxFields = std::min(limits.maxHeaders, kMaxHeaderFields);
  size_t headEnd = 0;
  const ParseStatus st =
      parseFields(data, len, static_cast<size_t>(lf - data) + 1, headCap, maxFields,
                  out.headers, out.headerCount, info, headEnd, err);
  if (st != ParseStatus::kComplete) return st;

  if (!info.http10 && info.hostCount == 0) return fail(err, HttpError::kMissingHost);
  if (info.hasTransferEncoding) {
    out.body = BodyKind::kChunked;  // apply() refused every TE but a lone final chunked
  } else if (info.hasContentLength) {
    out.body = BodyKind::kContentLength;
    out.contentLength = info.contentLength;
  }
  out.host = info.host;
  out.keepAlive = keepAliveFor(info);
  out.expectContinue = info.expectContinue;
  out.upgrade = info.connUpgrade && info.hasUpgrade;
  out.headBytes = static_cast<uint32_t>(headEnd);
  return ParseStatus::kComplete;
}

ParseStatus parseResponseHead(const char* data, size_t len, const ParseLimits& limits,
                              bool requestMethodHead, ResponseHead& out, HttpError& err) {
  err = HttpError::kNone;
  out.status = 0;
  out.versionMinor = 1;
  out.reason = {};
  out.headerCount = 0;
  out.body = BodyKind::kNone;
  out.contentLength = 0;
  out.keepAlive = true;
  out.headBytes = 0;
  if (len == 0) return ParseStatus::kIncomplete;
  if (data[0] != 'H') return fail(err, HttpError::kBadStatusLine);  // incl. leading CRLF

  const size_t headCap = limits.maxHeaderBytes;
  const char* lf =
      static_cast<const char*>(std::memchr(data, '\n', std::min(len, headCap)));
  if (lf == nullptr) {
    return len >= headCap ? fail(err, HttpError::kHeadersTooLarge) : ParseStatus::kIncomplete;
  }
  if (lf[-1] != '\r') return fail(err, HttpError::kBareLF);
  HttpError why = parseStatusLine(data, lf - 1, out);
  if (why != HttpError::kNone) return fail(err, why);

  FieldInfo info;
  info.request = false;
  info.http10 = out.versionMinor == 0;
  const uint32_t maxFields = std::min(limits.maxHeaders, kMaxHeaderFields);
  size_t headEnd = 0;
  const ParseStatus st =
      parseFields(data, len, static_cast<size_t>(lf - data) + 1, headCap, maxFields,
                  out.headers, out.headerCount, info, headEnd, err);
  if (st != ParseStatus::kComplete) return st;

  const int s = out.status;
  if (requestMethodHead || (s >= 100 && s < 200) || s == 204 || s == 304) {
    out.body = BodyKind::kNone;
  } else if (info.hasTransferEncoding) {
    // RFC 9112 6.3: chunked not final means the body ends at close.
    out.body = info.chunkedFinal ? BodyKind::kChunked : BodyKind::kUntilClose;
  } else if (info.hasContentLength) {
    out.body = BodyKind::kContentLength;
    out.contentLength = info.contentLength;
  } else {
    out.body = BodyKind::kUntilClose;
  }
  out.keepAlive = keepAliveFor(info) && out.body != BodyKind::kUntilClose;
  out.headBytes = static_cast<uint32_t>(headEnd);
  return ParseStatus::kComplete;
}

int httpErrorStatus(HttpError e) {
  switch (e) {
    case HttpError::kUriTooLong:
      return 414;
    case HttpError::kHeadersTooLarge:
    case HttpError::kTooManyHeaders:
      return 431;
    case HttpError::kUnsupportedTransferCoding:
      return 501;
    case HttpError::kBadVersion:
      return 505;
    case HttpError::kBadStatusLine:
      return 502;
    default:
      return 400;
  }
}

const char* httpErrorText(HttpError e) {
  switch (e) {
    case HttpError::kNone: return "no error";
    case HttpError::kBadRequestLine: return "malformed request line";
    case HttpError::kBadMethod: return "invalid method";
    case HttpError::kBadTarget: return "invalid request target";
    case HttpError::kBadVersion: return "unsupported HTTP version";
    case HttpError::kUriTooLong: return "request line too long";
    case HttpError::kHeadersTooLarge: return "header section too large";
    case HttpError::kTooManyHeaders: return "too many header fields";
    case HttpError::kBadHeaderName: return "invalid header field name";
    case HttpError::kBadHeaderValue: return "invalid header field value";
    case HttpError::kObsFold: return "obsolete line folding";
    case HttpError::kBareCR: return "bare CR";
    case HttpError::kBareLF: return "bare LF";
    case HttpError::kBadContentLength: return "invalid Content-Length";
    case HttpError::kConflictingContentLength: return "repeated or listed Content-Length";
    case HttpError::kContentLengthAndChunked:
      return "Content-Length and Transfer-Encoding together";
    case HttpError::kBadTransferEncoding: return "invalid Transfer-Encoding";
    case HttpError::kUnsupportedTransferCoding: return "unsupported transfer coding";
    case HttpError::kMissingHost: return "missing Host";
    case HttpError::kConflictingHost: return "repeated Host";
    case HttpError::kTransferEncodingHttp10: return "Transfer-Encoding in HTTP/1.0";
    case HttpError::kBadChunk: return "invalid chunked framing";
    case HttpError::kBadStatusLine: return "malformed status line";
  }
  return "unknown error";
}

ChunkedDecoder::Result ChunkedDecoder::feed(const char* data, size_t len, size_t& consumed) {
  consumed = 0;
  if (state_ == State::kDone) return Result::kDone;
  if (state_ == State::kError) return Result::kError;

  size_t i = 0;
  auto bad = [&]() {
    state_ = State::kError;
    consumed = i;
    return Result::kError;
  };
  while (i < len) {
    if (state_ == State::kData) {
      // Payload is opaque: skip it in one step.
      const uint64_t take = std::min<uint64_t>(remaining_, len - i);
      i += static_cast<size_t>(take);
      remaining_ -= take;
      payload_ += take;
      if (remaining_ == 0) state_ = State::kDataCR;
      continue;
    }
    const char c = data[i];
    if (state_ <= State::kSizeLF) {
      if (++lineBytes_ > kMaxSizeLineBytes) return bad();
    } else if (state_ >= State::kTrailerStart) {
      if (++trailerBytes_ > kMaxTrailerBytes) return bad();
    }
    switch (state_) {
      case State::kSize:
        if (hasClass(c, kHexDigit)) {
          if (sizeDigits_ == kMaxSizeDigits) return bad();  // 17th digit: would overflow
          const uint64_t d = c <= '9' ? static_cast<uint64_t>(c - '0')
                                      : static_cast<uint64_t>((c | 0x20) - 'a' + 10);
          size_ = (size_ << 4) | d;
          ++sizeDigits_;
        } else if (sizeDigits_ > 0 && c == ';') {
          state_ = State::kExtNameStart;  // no BWS before ';': strict
        } else if (sizeDigits_ > 0 && c == '\r') {
          state_ = State::kSizeLF;
        } else {
          return bad();
        }
        break;
      case State::kExtNameStart:
        if (!hasClass(c, kTchar)) return bad();
        state_ = State::kExtName;
        break;
      case State::kExtName:
        if (c == '=') {
          state_ = State::kExtValueStart;
        } else if (c == ';') {
          state_ = State::kExtNameStart;
        } else if (c == '\r') {
          state_ = State::kSizeLF;
        } else if (!hasClass(c, kTchar)) {
          return bad();
        }
        break;
      case State::kExtValueStart:
        if (c == '"') {
          state_ = State::kExtQuoted;
        } else if (hasClass(c, kTchar)) {
          state_ = State::kExtToken;
        } else {
          return bad();
        }
        break;
      case State::kExtToken:
        if (c == ';') {
          state_ = State::kExtNameStart;
        } else if (c == '\r') {
          state_ = State::kSizeLF;
        } else if (!hasClass(c, kTchar)) {
          return bad();
        }
        break;
      case State::kExtQuoted:
        if (c == '"') {
          state_ = State::kExtAfterQuoted;
        } else if (c == '\\') {
          state_ = State::kExtQuotedEscape;
        } else if (!hasClass(c, kQdtext)) {
          return bad();
        }
        break;
      case State::kExtQuotedEscape:
        if (!hasClass(c, kFieldByte)) return bad();  // quoted-pair: HTAB SP VCHAR obs-text
        state_ = State::kExtQuoted;
        break;
      case State::kExtAfterQuoted:
        if (c == ';') {
          state_ = State::kExtNameStart;
        } else if (c == '\r') {
          state_ = State::kSizeLF;
        } else {
          return bad();
        }
        break;
      case State::kSizeLF:
        if (c != '\n') return bad();
        if (size_ == 0) {
          state_ = State::kTrailerStart;
        } else {
          remaining_ = size_;
          state_ = State::kData;
        }
        size_ = 0;
        sizeDigits_ = 0;
        lineBytes_ = 0;
        break;
      case State::kDataCR:
        if (c != '\r') return bad();
        state_ = State::kDataLF;
        break;
      case State::kDataLF:
        if (c != '\n') return bad();
        state_ = State::kSize;
        break;
      case State::kTrailerStart:
        if (c == '\r') {
          state_ = State::kFinalLF;
        } else if (hasClass(c, kTchar)) {
          state_ = State::kTrailerName;  // SP/HTAB here would be obs-fold: refused
        } else {
          return bad();
        }
        break;
      case State::kTrailerName:
        if (c == ':') {
          state_ = State::kTrailerValue;
        } else if (!hasClass(c, kTchar)) {
          return bad();
        }
        break;
      case State::kTrailerValue:
        if (c == '\r') {
          state_ = State::kTrailerLF;
        } else if (!hasClass(c, kFieldByte)) {
          return bad();
        }
        break;
      case State::kTrailerLF:
        if (c != '\n') return bad();
        state_ = State::kTrailerStart;
        break;
      case State::kFinalLF:
        if (c != '\n') return bad();
        state_ = State::kDone;
        consumed = i + 1;
        return Result::kDone;
      case State::kData:
      case State::kDone:
      case State::kError:
        return bad();  // unreachable: handled above
    }
    ++i;
  }
  consumed = len;
  return Result::kNeedMore;
}

}  // namespace moat::l7
