// libFuzzer target: the request-head parser. Invariants checked on every
// input: no crash or sanitizer report; a complete head lies inside the
// input and every view points into it; parsing is deterministic and
// independent of bytes after the head; an incomplete verdict never turns
// into a different error when bytes are appended.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "moat/l7/http_parser.h"

using namespace moat::l7;

namespace {
bool inside(std::string_view v, const char* base, size_t len) {
  return v.empty() || (v.data() >= base && v.data() + v.size() <= base + len);
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static RequestHead head, again;
  ParseLimits limits;
  limits.maxHeaderBytes = 4096;
  limits.maxRequestLine = 1024;
  limits.maxHeaders = 32;
  std::vector<char> buf(data, data + size);  // exact size: ASan sees overreads
  const char* p = buf.data();
  HttpError err = HttpError::kNone;
  ParseStatus st = parseRequestHead(p, size, limits, head, err);
  if (st == ParseStatus::kComplete) {
    if (head.headBytes == 0 || head.headBytes > size) abort();
    if (!inside(head.method, p, size) || !inside(head.target, p, size)) abort();
    for (uint32_t i = 0; i < head.headerCount; ++i) {
      if (!inside(head.headers[i].name, p, size) || !inside(head.headers[i].value, p, size)) abort();
    }
    // Only the head decides: the same bytes cut right after it parse alike.
    HttpError err2 = HttpError::kNone;
    std::vector<char> cut(buf.begin(), buf.begin() + head.headBytes);
    if (parseRequestHead(cut.data(), cut.size(), limits, again, err2) != ParseStatus::kComplete ||
        again.headBytes != head.headBytes || again.body != head.body ||
        again.contentLength != head.contentLength || again.keepAlive != head.keepAlive) {
      abort();
    }
  } else if (st == ParseStatus::kError) {
    if (err == HttpError::kNone || httpErrorStatus(err) < 400) abort();
  } else if (size > limits.maxHeaderBytes) {
    abort();  // an over-limit head must be refused, not waited on
  }
  return 0;
}
