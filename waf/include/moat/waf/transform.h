// ModSecurity transformation functions (the `t:` actions of SecRule) as used by
// the OWASP Core Rule Set 3.3.4, with libmodsecurity v3's byte-for-byte
// behaviour, including its quirks (the CRS regression suite was judged against
// ModSecurity v3.0.9; where a transformation CRS does not use is plainly broken
// there, the current v3 behaviour is followed instead and the function's
// comment in transform.cpp says so).
//
// Everything here except UnicodeMap::load runs on the request path: the
// functions are pure (no locks, no exceptions, no syscalls), read their input
// once, and write into a caller-owned std::string whose capacity is reused, so
// a worker that keeps its buffers allocates nothing once they have grown to the
// largest value seen. Cost is linear in the input for every transformation.
// sha1 and md5 go through OpenSSL's EVP interface with a per-thread context.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace moat::waf {

// One ModSecurity transformation. The rule loader maps `t:name` to a value with
// transformFromName and keeps a flat array of them per rule.
enum class Transform : uint8_t {
  kNone,                // identity (the loader gives t:none its reset meaning)
  kLowercase,           // ASCII A-Z to a-z
  kUppercase,           // ASCII a-z to A-Z
  kUrlDecode,           // %HH and '+'; invalid escapes kept as they are
  kUrlDecodeUni,        // urlDecode plus IIS %uHHHH (unicode map, full width)
  kUrlEncode,           // all but [A-Za-z0-9*] to %hh, ' ' to '+'
  kHtmlEntityDecode,    // &#DDD; &#xHH; &quot; &amp; &lt; &gt; &nbsp; (';' optional)
  kJsDecode,            // \xHH \uHHHH \OOO \n \t ...
  kCssDecode,           // \H..HHHHHH (1-6 hex digits), \<newline>, \C
  kCmdLine,             // Windows/Unix shell normalisation, lowercases
  kCompressWhitespace,  // runs of isspace() to one ' '
  kRemoveWhitespace,    // drops isspace(), 0xa0 and 0xc2
  kRemoveNulls,         // drops 0x00
  kReplaceNulls,        // 0x00 to ' '
  kRemoveComments,      // drops /* */ and <!-- -->, cuts at -- and #
  kRemoveCommentsChar,  // drops the markers /* */ <!-- --> -- # only
  kReplaceComments,     // /* ... */ to one ' '
  kNormalizePath,       // resolves ./ ../ and // (alias normalisePath)
  kNormalizePathWin,    // same after '\' to '/' (alias normalisePathWin)
  kBase64Decode,        // strict RFC 4648; any invalid byte gives ""
  kBase64DecodeExt,     // forgiving: skips invalid bytes, accepts -_ too
  kBase64Encode,        // RFC 4648 with padding
  kHexDecode,           // pairs of hex digits to bytes
  kHexEncode,           // bytes to lowercase hex
  kSqlHexDecode,        // 0xHHHH... runs to bytes
  kEscapeSeqDecode,     // ANSI C escapes \n \xHH \OOO ...
  kUtf8ToUnicode,       // multi-byte UTF-8 sequences to %uHHHH
  kLength,              // decimal byte count
  kSha1,                // raw 20-byte SHA-1 digest
  kMd5,                 // raw 16-byte MD5 digest
  kTrim,                // isspace() at both ends
  kTrimLeft,
  kTrimRight,
  kParityEven7bit,  // bit 7 set so that the byte has even parity
  kParityOdd7bit,   // bit 7 set so that the byte has odd parity
  kParityZero7bit,  // bit 7 cleared
};

inline constexpr size_t kTransformCount = static_cast<size_t>(Transform::kParityZero7bit) + 1;

// Name to transformation, ASCII case-insensitive as ModSecurity's parser is
// (`urldecodeuni` == `urlDecodeUni`). Takes the name without the `t:` prefix.
// Returns nullopt for an unknown name so the loader can report it with the
// rule's file and line. Both spellings normalise/normalize are accepted.
std::optional<Transform> transformFromName(std::string_view name);

// Canonical ModSecurity spelling ("urlDecodeUni", "normalizePath", ...). The
// view points at static storage. An out-of-range value gives "unknown".
std::string_view transformName(Transform t);

// The code page table ModSecurity loads with SecUnicodeMapFile (CRS sets code
// page 20127, US-ASCII): for each UCS-2 code point, the single byte that
// t:urlDecodeUni writes for a %uHHHH escape. Built once by the control plane,
// immutable afterwards, so one instance can be shared read-only by all workers
// (through the config snapshot) without synchronisation.
class UnicodeMap {
 public:
  // Reads a unicode.mapping file: blocks made of a header line whose first
  // token is the decimal code page number (an optional description follows,
  // e.g. "20127 (US-ASCII)"; headers without a number, like "(MAC - Roman)",
  // name pages that can never be selected) and lines of whitespace-separated
  // "hhhh:hh" pairs (code point : byte, hexadecimal). Blank lines are ignored.
  // As in ModSecurity, U+002E, U+3002, U+FF0E and U+FF61 map to '.' unless the
  // file says otherwise, and a later pair for the same code point wins.
  //
  // Control plane only: reads the file and allocates (~128 KiB). On failure
  // returns nullopt and, when `error` is not null, stores one line such as
  // "/etc/moat/unicode.mapping:37: malformed mapping 'zz:41' (want hhhh:hh)"
  // or "...: code page 20127 not found". The whole file is checked, not only
  // the selected page; codePage must be positive.
  static std::optional<UnicodeMap> load(const std::string& path, int codePage, std::string* error);

  // The byte for `codePoint`, or -1 when the page does not map it (then
  // urlDecodeUni falls back to the low byte). Any thread, O(1).
  int lookup(uint32_t codePoint) const {
    return codePoint < table_.size() ? table_[codePoint] : -1;
  }

  int codePage() const { return codePage_; }

 private:
  UnicodeMap() = default;

  std::vector<int16_t> table_;  // 65536 entries, -1 = unmapped, else 0..255
  int codePage_ = 0;
};

// Applies one transformation: `out` receives the result (its old contents are
// discarded, its capacity reused), and the return value says whether the
// result differs from `in` -- ModSecurity's "changed" test, which decides
// whether multiMatch looks at the value again. `map` matters only to
// urlDecodeUni; null means "no SecUnicodeMapFile", as in ModSecurity.
//
// Any thread, reentrant. `in` must not point into `out`. Never fails: input is
// untrusted and every byte sequence has a defined result. The only allocation
// is `out` growing (to at most 4x the input for utf8toUnicode, 3x for
// urlEncode, 2x for hexEncode, 4/3x for base64Encode, else the input size),
// plus, for sha1/md5, the one small block OpenSSL 3.0 allocates per digest.
// If OpenSSL cannot
// provide the digest (e.g. MD5 under a FIPS-only provider) `out` is left empty.
bool applyTransform(Transform t, std::string_view in, std::string& out, const UnicodeMap* map);

// False only when `t` certainly leaves `in` unchanged, found by one cheap
// pass over the bytes (no '%' or '+' for urlDecode, no '&' for
// htmlEntityDecode, no upper case for lowercase...); true when unsure.
// applyTransforms uses it to skip the copy and compare of no-op steps, which
// are most steps on benign values. Thread-safe, no allocation.
bool transformMayChange(Transform t, std::string_view in);

// The same question asked of a summary of the value's bytes: byteClasses()
// makes one pass over the value and records which kinds of byte it holds
// (upper case, '%' or '+', '&', '\\', NUL, bytes >= 0x80, control
// whitespace, "  "); transformMayChangeClasses() then answers for any
// transformation without looking at the bytes again. A value scanned under
// several transformation chains pays the pass once. Same answers as
// transformMayChange, or more conservative (true). Thread-safe, no allocation.
uint32_t byteClasses(std::string_view in);
bool transformMayChangeClasses(Transform t, uint32_t classes);

// Two buffers that a chain of transformations ping-pongs between. Keep one per
// worker (or per request) and reuse it; it is not shareable between threads.
struct TransformScratch {
  std::string a;
  std::string b;
};

// Runs `chain` in order over `in` (ModSecurity applies t:none at load time by
// dropping the transformations before it, so here kNone is just identity).
// Calls onChanged(Transform, std::string_view value) after every step that
// changed the value; those values plus `in` itself are exactly what multiMatch
// tests. Returns the final value: `in` itself when no step changed anything,
// else a view into `scratch`, valid until `scratch` is next used. Same cost and
// failure notes as applyTransform; `in` must not point into `scratch`.
// `inClasses`: byteClasses(in) when the caller has it (kClassesUnknown
// otherwise); the classes of each changed value are computed afresh.
inline constexpr uint32_t kClassesUnknown = UINT32_MAX;

template <typename OnChanged>
std::string_view applyTransforms(std::span<const Transform> chain, std::string_view in,
                                 const UnicodeMap* map, TransformScratch& scratch,
                                 OnChanged&& onChanged, uint32_t inClasses = kClassesUnknown) {
  std::string_view current = in;
  uint32_t classes = inClasses;
  std::string* next = &scratch.a;
  std::string* spare = &scratch.b;
  for (Transform t : chain) {
    if (t == Transform::kNone) continue;
    if (classes == kClassesUnknown) classes = byteClasses(current);
    if (!transformMayChangeClasses(t, classes)) continue;
    if (applyTransform(t, current, *next, map)) {
      current = *next;
      classes = kClassesUnknown;
      onChanged(t, current);
      std::swap(next, spare);  // never write into the buffer `current` views
    }
  }
  return current;
}

inline std::string_view applyTransforms(std::span<const Transform> chain, std::string_view in,
                                        const UnicodeMap* map, TransformScratch& scratch,
                                        uint32_t inClasses = kClassesUnknown) {
  return applyTransforms(chain, in, map, scratch, [](Transform, std::string_view) {}, inClasses);
}

}  // namespace moat::waf
