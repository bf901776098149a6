// Small HTTP/1.1 types shared by the parser, the proxy and (later) the WAF.
// Header-only, includes nothing heavy.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace moat::l7 {

// Why a message was refused. Each maps to one status (httpErrorStatus) and one
// short text (httpErrorText) used in the error body, the log and the counters.
enum class HttpError : uint8_t {
  kNone = 0,
  kBadRequestLine,         // 400: not METHOD SP target SP HTTP/1.x CRLF
  kBadMethod,              // 400: method is not a token
  kBadTarget,              // 400: empty target or a byte outside the URI set
  kBadVersion,             // 505 for HTTP/2+ style versions, 400 otherwise
  kUriTooLong,             // 414: request line longer than the limit
  kHeadersTooLarge,        // 431: header section longer than the limit
  kTooManyHeaders,         // 431: more header fields than the limit
  kBadHeaderName,          // 400: empty name, non-token byte, space before colon
  kBadHeaderValue,         // 400: NUL / control byte in a value
  kObsFold,                // 400: a line starting with SP or HTAB (obs-fold)
  kBareCR,                 // 400: CR not followed by LF
  kBareLF,                 // 400: LF without CR
  kBadContentLength,       // 400: not 1*DIGIT, or overflows
  kConflictingContentLength,  // 400: Content-Length repeated or listed
  kContentLengthAndChunked,   // 400: both Content-Length and Transfer-Encoding
  kBadTransferEncoding,       // 400: chunked not last / repeated / empty element
  kUnsupportedTransferCoding, // 501: a coding other than chunked
  kMissingHost,               // 400: HTTP/1.1 request without Host
  kConflictingHost,           // 400: Host repeated
  kTransferEncodingHttp10,    // 400: Transfer-Encoding in an HTTP/1.0 message
  kBadChunk,                  // 400: bad chunk size line, overflow, bad CRLF
  kBadStatusLine,             // 502 (response side): not HTTP/1.x NNN reason
};

enum class BodyKind : uint8_t {
  kNone,           // no body (GET without length, HEAD response, 1xx/204/304)
  kContentLength,  // exactly contentLength bytes follow the head
  kChunked,        // chunked framing, ended by the zero chunk and trailers
  kUntilClose,     // response only: body runs until the upstream closes
};

enum class ParseStatus : uint8_t { kComplete, kIncomplete, kError };

struct HeaderField {
  std::string_view name;   // as received (case kept)
  std::string_view value;  // leading/trailing OWS trimmed
};

struct ParseLimits {
  uint32_t maxRequestLine = 8192;   // bytes incl. CRLF; over -> kUriTooLong
  uint32_t maxHeaderBytes = 32768;  // whole head incl. request line; over -> kHeadersTooLarge
  uint32_t maxHeaders = 100;        // fields; over -> kTooManyHeaders (<= kMaxHeaderFields)
};

inline constexpr uint32_t kMaxHeaderFields = 128;

// Status code to answer with when a request fails to parse.
int httpErrorStatus(HttpError e);
// Short, specific, stable text ("Content-Length and Transfer-Encoding together").
const char* httpErrorText(HttpError e);

}  // namespace moat::l7
