// libFuzzer target: the response-head parser (what backends send). The
// first byte says whether the request was HEAD.
#include <cstdint>
#include <cstdlib>
#include <vector>

#include "moat/l7/http_parser.h"

using namespace moat::l7;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  static ResponseHead head;
  ParseLimits limits;
  limits.maxHeaderBytes = 4096;
  std::vector<char> buf(data + 1, data + size);
  HttpError err = HttpError::kNone;
  ParseStatus st = parseResponseHead(buf.data(), buf.size(), limits, (data[0] & 1) != 0, head, err);
  if (st == ParseStatus::kComplete) {
    if (head.headBytes == 0 || head.headBytes > buf.size()) abort();
    if (head.status < 100 || head.status > 999) abort();
    if ((data[0] & 1) != 0 && head.body != BodyKind::kNone) abort();  // HEAD: never a body
  } else if (st == ParseStatus::kError && err == HttpError::kNone) {
    abort();
  }
  return 0;
}
