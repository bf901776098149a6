// Strict HTTP/1.1 message-head parser (RFC 9112) and chunked-body validator.
//
// Zero-copy: every string_view in a parsed head points into the caller's
// buffer, which must outlive the head. No allocation, no exceptions; safe to
// call from a worker's hot path. Not thread-safe per object; one per worker.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "moat/l7/http_types.h"

namespace moat::l7 {

struct RequestHead {
  std::string_view method;
  std::string_view target;
  uint8_t versionMinor = 1;  // HTTP/1.<versionMinor>; only 0 and 1 accepted
  HeaderField headers[kMaxHeaderFields];
  uint32_t headerCount = 0;

  BodyKind body = BodyKind::kNone;
  uint64_t contentLength = 0;   // valid when body == kContentLength
  std::string_view host;        // Host header value (empty if absent in 1.0)
  bool keepAlive = true;        // after Connection tokens and version defaults
  bool expectContinue = false;  // Expect: 100-continue
  bool upgrade = false;         // Connection: upgrade + Upgrade present
  uint32_t headBytes = 0;       // bytes of the head incl. the final CRLF
};

struct ResponseHead {
  int status = 0;
  uint8_t versionMinor = 1;
  std::string_view reason;
  HeaderField headers[kMaxHeaderFields];
  uint32_t headerCount = 0;

  BodyKind body = BodyKind::kNone;
  uint64_t contentLength = 0;
  bool keepAlive = true;
  uint32_t headBytes = 0;
};

// Parses a request head at the start of [data, data+len).
// kIncomplete: no full head yet (and no limit exceeded): read more and call
//   again with the whole buffer (parsing restarts; heads are small).
// kError: `err` says why; the connection must answer httpErrorStatus(err)
//   and close.
// kComplete: `out` filled; the body (if any) starts at data + out.headBytes.
// Rules: CL + TE together, repeated/listed/signed CL, TE other than a final
//   single "chunked", TE in HTTP/1.0, obs-fold, bare CR, bare LF, control
//   bytes, missing/duplicate Host in 1.1 are all errors. Leading empty lines
//   before the request line are NOT accepted. A listed Content-Length ("5, 5")
//   is kConflictingContentLength; a Host value with bytes outside an authority
//   (SP, '/', '@', ...) is kBadHeaderValue; a '#' in the target is kBadTarget.
//   A request line whose method is already invalid fails before its LF arrives.
// Cost: one memchr per line plus one table lookup per byte; O(len) per call.
ParseStatus parseRequestHead(const char* data, size_t len, const ParseLimits& limits,
                             RequestHead& out, HttpError& err);

// Parses a response head. `requestMethodHead` and the status decide whether a
// body follows (HEAD, 1xx, 204, 304 have none). Without CL or TE the body
// runs until close. Same strictness as requests; errors map to 502.
// TE may list other codings if chunked is final (kChunked); TE not ending in
// chunked gives kUntilClose; chunked twice, CL + TE, or TE in an HTTP/1.0
// response are errors (even for HEAD/1xx/204/304, which carry no body).
// kUntilClose always sets keepAlive = false.
ParseStatus parseResponseHead(const char* data, size_t len, const ParseLimits& limits,
                              bool requestMethodHead, ResponseHead& out, HttpError& err);

// Streaming validator of a chunked body. Bytes pass through unchanged (the
// proxy forwards them raw); the decoder checks the framing strictly and says
// where the message ends. Chunk sizes are 1*HEXDIG (max 16 digits, no
// overflow), extensions must be `;name[=token|quoted-string]`, lines end in
// CRLF, trailers are header fields. No allocation. On kError the caller
// reports HttpError::kBadChunk.
class ChunkedDecoder {
 public:
  enum class Result : uint8_t { kNeedMore, kDone, kError };

  // Feeds the next bytes. `consumed` is how many belong to this body: all of
  // them for kNeedMore, up to and including the final CRLF for kDone (bytes
  // after that belong to the next message). After kError the stream is dead
  // and `consumed` is the offset of the offending byte within this call.
  // Feeding a finished decoder returns kDone with consumed = 0.
  // Cost: O(len); chunk data is skipped in bulk, framing bytes one by one.
  Result feed(const char* data, size_t len, size_t& consumed);

  // Total payload bytes (sum of chunk sizes) seen so far.
  uint64_t payloadBytes() const { return payload_; }
  void reset() { *this = ChunkedDecoder{}; }

  static constexpr uint32_t kMaxSizeDigits = 16;       // 16 hex digits fill a uint64
  static constexpr uint32_t kMaxSizeLineBytes = 4096;  // size line incl. extensions and CRLF
  static constexpr uint32_t kMaxTrailerBytes = 8192;   // trailer section incl. final CRLF

 private:
  enum class State : uint8_t {
    kSize,             // chunk-size hex digits
    kExtNameStart,     // after ';': first tchar of an extension name
    kExtName,          // extension name tchars
    kExtValueStart,    // after '=': token or quoted-string
    kExtToken,         // token extension value
    kExtQuoted,        // inside a quoted-string
    kExtQuotedEscape,  // after a backslash in a quoted-string
    kExtAfterQuoted,   // after the closing quote: ';' or CR
    kSizeLF,           // CR of the size line seen, LF must follow
    kData,             // chunk payload
    kDataCR,           // CR after payload
    kDataLF,           // LF after payload
    kTrailerStart,     // start of a trailer line or of the final CRLF
    kTrailerName,      // trailer field-name tchars
    kTrailerValue,     // trailer field-value bytes
    kTrailerLF,        // LF ending a trailer line
    kFinalLF,          // LF of the final empty line
    kDone,
    kError
  };
  State state_ = State::kSize;
  uint8_t sizeDigits_ = 0;
  uint64_t size_ = 0;        // chunk size being parsed
  uint64_t remaining_ = 0;   // payload bytes left in the current chunk
  uint64_t payload_ = 0;
  uint32_t trailerBytes_ = 0;
  uint32_t lineBytes_ = 0;   // bytes of the current size line
};

}  // namespace moat::l7
