// libFuzzer target: every WAF transformation on attacker-controlled bytes.
// The first byte picks the transformation. Properties: no crash or sanitizer
// report; the result does not depend on what the output buffer held before;
// "changed" is exactly "output differs from input"; decoders never grow
// their input.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "moat/waf/transform.h"

using namespace moat::waf;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  auto t = static_cast<Transform>(data[0] % kTransformCount);
  std::string in(reinterpret_cast<const char*>(data + 1), size - 1);
  std::string a, b = "stale contents of a reused buffer";
  bool ca = applyTransform(t, in, a, nullptr);
  bool cb = applyTransform(t, in, b, nullptr);
  if (a != b || ca != cb) abort();
  if (t != Transform::kNone && ca != (a != in)) abort();
  switch (t) {
    case Transform::kUrlDecode: case Transform::kUrlDecodeUni: case Transform::kHtmlEntityDecode:
    case Transform::kJsDecode: case Transform::kCssDecode: case Transform::kRemoveNulls:
    case Transform::kRemoveWhitespace: case Transform::kCompressWhitespace:
    case Transform::kRemoveComments: case Transform::kNormalizePath:
    case Transform::kNormalizePathWin: case Transform::kBase64Decode: case Transform::kHexDecode:
    case Transform::kTrim:
      if (a.size() > in.size()) abort();
      break;
    default:
      break;
  }
  return 0;
}
