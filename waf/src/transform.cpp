#include "moat/waf/transform.h"

#include <openssl/evp.h>

#include <array>
#include <cerrno>
#include <charconv>
#include <climits>
#include <cstring>
#include <fstream>
#include <iterator>
#include <sstream>

// Reference: libmodsecurity v3, src/actions/transformations/*.cc, src/utils/
// (decode.cc, base64.cc, string.h) and others/mbedtls/base64.c. The code here
// is written from their observable behaviour; comments name each ModSecurity
// quirk that is reproduced on purpose, because rules (and CRS's regression
// tests) were tuned against it.

namespace moat::waf {

namespace {

using u8 = unsigned char;

u8 byteAt(std::string_view s, size_t i) { return static_cast<u8>(s[i]); }

// ModSecurity's view of the input is a NUL-terminated buffer and several
// decoders peek one byte past the end; this returns that terminator.
u8 peek(std::string_view s, size_t i) { return i < s.size() ? static_cast<u8>(s[i]) : 0; }

// C isspace() in the "C" locale (ModSecurity never calls setlocale).
bool isSpace(u8 c) { return c == ' ' || (c >= '\t' && c <= '\r'); }
bool isHex(u8 c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}
bool isDigit(u8 c) { return c >= '0' && c <= '9'; }
bool isOctal(u8 c) { return c >= '0' && c <= '7'; }
bool isAlnum(u8 c) { return isDigit(c) || ((c | 0x20) >= 'a' && (c | 0x20) <= 'z'); }
u8 toLowerAscii(u8 c) { return (c >= 'A' && c <= 'Z') ? static_cast<u8>(c + 32) : c; }
u8 toUpperAscii(u8 c) { return (c >= 'a' && c <= 'z') ? static_cast<u8>(c - 32) : c; }

// ModSecurity's xsingle2c/x2c: exact for hex digits, and deterministic garbage
// (arithmetic modulo 256) for anything else -- hexDecode relies on the latter.
u8 hexDigitValue(u8 c) {
  return c >= 'A' ? static_cast<u8>((c & 0xdf) - 'A' + 10) : static_cast<u8>(c - '0');
}
u8 hexPair(u8 hi, u8 lo) { return static_cast<u8>(hexDigitValue(hi) * 16 + hexDigitValue(lo)); }

// strtol(digits, nullptr, base) truncated to a byte, as the entity decoders do:
// strtol saturates at LONG_MAX on overflow, whose low byte is 0xff.
u8 strtolByte(std::string_view digits, unsigned base) {
  constexpr unsigned long long kMax = LONG_MAX;
  unsigned long long v = 0;
  for (char ch : digits) {
    const unsigned long long d = hexDigitValue(static_cast<u8>(ch));
    if (v > (kMax - d) / base) return 0xff;
    v = v * base + d;
  }
  return static_cast<u8>(v & 0xff);
}

// Output cursor over a std::string pre-sized to an upper bound; finish() trims
// it to what was written. Keeps the per-byte loop free of capacity checks.
class Writer {
 public:
  Writer(std::string& out, size_t bound) : out_(out) {
    out_.resize(bound);
    p_ = out_.data();
  }
  void put(u8 c) { *p_++ = static_cast<char>(c); }
  void put(std::string_view s) {
    std::memcpy(p_, s.data(), s.size());
    p_ += s.size();
  }
  void unput() { --p_; }
  void finish() { out_.resize(static_cast<size_t>(p_ - out_.data())); }

 private:
  std::string& out_;
  char* p_;
};

bool differs(std::string_view in, const std::string& out) {
  if (in.size() != out.size()) return true;
  return !in.empty() && std::memcmp(in.data(), out.data(), in.size()) != 0;
}

// ---------------------------------------------------------------- case, nulls

void mapBytes(std::string_view in, std::string& out, u8 (*f)(u8)) {
  Writer w(out, in.size());
  for (size_t i = 0; i < in.size(); ++i) w.put(f(byteAt(in, i)));
  w.finish();
}

void removeNulls(std::string_view in, std::string& out) {
  Writer w(out, in.size());
  for (char c : in) {
    if (c != '\0') w.put(static_cast<u8>(c));
  }
  w.finish();
}

// ---------------------------------------------------------------- url decoding

// src/utils/decode.cc urldecode_nonstrict_inplace: a '%' not followed by two
// hex digits is kept literally; '+' is a space.
void urlDecode(std::string_view in, std::string& out) {
  const size_t n = in.size();
  Writer w(out, n);
  size_t i = 0;
  while (i < n) {
    const u8 c = byteAt(in, i);
    if (c == '%' && i + 2 < n && isHex(byteAt(in, i + 1)) && isHex(byteAt(in, i + 2))) {
      w.put(hexPair(byteAt(in, i + 1), byteAt(in, i + 2)));
      i += 3;
    } else {
      w.put(c == '+' ? ' ' : c);
      ++i;
    }
  }
  w.finish();
}

// url_decode_uni.cc. %uHHHH (u or U): the unicode map's byte when it has one,
// else the low byte, plus 0x20 for full-width ASCII U+FF01..U+FF5E. A %u with
// fewer than four hex digits after it is copied ("%u" and the rest go through
// the normal rules), as is an invalid %HH.
void urlDecodeUni(std::string_view in, std::string& out, const UnicodeMap* map) {
  const size_t n = in.size();
  Writer w(out, n);
  size_t i = 0;
  while (i < n) {
    const u8 c = byteAt(in, i);
    if (c != '%') {
      w.put(c == '+' ? ' ' : c);
      ++i;
      continue;
    }
    if (i + 1 < n && (in[i + 1] == 'u' || in[i + 1] == 'U')) {
      if (i + 5 < n && isHex(byteAt(in, i + 2)) && isHex(byteAt(in, i + 3)) &&
          isHex(byteAt(in, i + 4)) && isHex(byteAt(in, i + 5))) {
        const u8 hi = hexPair(byteAt(in, i + 2), byteAt(in, i + 3));
        const u8 lo = hexPair(byteAt(in, i + 4), byteAt(in, i + 5));
        const int mapped = map != nullptr ? map->lookup((uint32_t{hi} << 8) | lo) : -1;
        if (mapped >= 0) {
          w.put(static_cast<u8>(mapped));
        } else if (hi == 0xff && lo > 0x00 && lo < 0x5f) {
          w.put(static_cast<u8>(lo + 0x20));
        } else {
          w.put(lo);
        }
        i += 6;
      } else {
        w.put(c);
        w.put(byteAt(in, i + 1));
        i += 2;
      }
      continue;
    }
    if (i + 2 < n && isHex(byteAt(in, i + 1)) && isHex(byteAt(in, i + 2))) {
      w.put(hexPair(byteAt(in, i + 1), byteAt(in, i + 2)));
      i += 3;
    } else {
      w.put(c);
      ++i;
    }
  }
  w.finish();
}

// url_encode.cc: ' ' becomes '+'; '*', digits and ASCII letters stay; every
// other byte becomes %hh (lowercase hex).
void urlEncode(std::string_view in, std::string& out) {
  Writer w(out, in.size() * 3);
  for (char ch : in) {
    const u8 c = static_cast<u8>(ch);
    if (c == ' ') {
      w.put('+');
    } else if (c == '*' || isAlnum(c)) {
      w.put(c);
    } else {
      w.put('%');
      w.put(static_cast<u8>("0123456789abcdef"[c >> 4]));
      w.put(static_cast<u8>("0123456789abcdef"[c & 0x0f]));
    }
  }
  w.finish();
}

// ---------------------------------------------------------------- entity/escape decoding

// html_entity_decode.cc (v3.0.x): numeric entities keep only the low byte of
// the value; the ';' is optional; only quot, amp, lt, gt and nbsp are known
// (whole-name, case-insensitive match). Anything else is copied.
bool namedEntity(std::string_view name, u8* out) {
  struct Entry {
    std::string_view name;
    u8 ch;
  };
  static constexpr Entry kEntities[] = {
      {"quot", '"'}, {"amp", '&'}, {"lt", '<'}, {"gt", '>'}, {"nbsp", 0xa0},
  };
  for (const Entry& e : kEntities) {
    if (e.name.size() != name.size()) continue;
    bool same = true;
    for (size_t k = 0; k < name.size() && same; ++k) {
      same = toLowerAscii(static_cast<u8>(name[k])) == static_cast<u8>(e.name[k]);
    }
    if (same) {
      *out = e.ch;
      return true;
    }
  }
  return false;
}

void htmlEntityDecode(std::string_view in, std::string& out) {
  const size_t n = in.size();
  Writer w(out, n);
  size_t i = 0;
  while (i < n) {
    size_t copy = 1;  // raw bytes to copy when no entity is decoded here
    if (in[i] == '&' && i + 1 < n) {
      size_t j = i + 1;
      if (in[j] == '#') {
        copy = 2;
        if (j + 1 < n) {
          ++j;
          unsigned base = 10;
          if (in[j] == 'x' || in[j] == 'X') {
            copy = 3;
            base = 16;
            ++j;
          }
          if (j < n) {
            const size_t k = j;
            while (j < n && (base == 16 ? isHex(byteAt(in, j)) : isDigit(byteAt(in, j)))) ++j;
            if (j > k) {
              w.put(strtolByte(in.substr(k, j - k), base));
              i = (j < n && in[j] == ';') ? j + 1 : j;
              continue;
            }
          }
        }
      } else {
        const size_t k = j;
        while (j < n && isAlnum(byteAt(in, j))) ++j;
        if (j > k) {
          u8 decoded = 0;
          if (namedEntity(in.substr(k, j - k), &decoded)) {
            w.put(decoded);
            i = (j < n && in[j] == ';') ? j + 1 : j;
            continue;
          }
          copy = j - k + 1;  // '&' and the unknown name; ';' follows as text
        }
      }
    }
    for (size_t z = 0; z < copy && i < n; ++z) w.put(byteAt(in, i++));
  }
  w.finish();
}

// Reads up to three octal digits starting at `start` (the caller saw one).
// Returns how many were taken.
size_t octalRun(std::string_view in, size_t start, char buf[4]) {
  size_t j = 0;
  while (start + j < in.size() && j < 3) {
    buf[j] = in[start + j];
    ++j;
    if (!isOctal(peek(in, start + j))) break;
  }
  buf[j] = '\0';
  return j;
}

u8 simpleEscape(u8 c) {
  switch (c) {
    case 'a':
      return '\a';
    case 'b':
      return '\b';
    case 'f':
      return '\f';
    case 'n':
      return '\n';
    case 'r':
      return '\r';
    case 't':
      return '\t';
    case 'v':
      return '\v';
    default:
      return c;
  }
}

// js_decode.cc: \uHHHH keeps the low byte (+0x20 for full-width ASCII, lower
// case 'u' only), \xHH (lower case 'x' only), \OOO up to three octal digits but
// never above \377, \C drops the backslash. A trailing '\' stays.
void jsDecode(std::string_view in, std::string& out) {
  const size_t n = in.size();
  Writer w(out, n);
  size_t i = 0;
  while (i < n) {
    if (in[i] != '\\') {
      w.put(byteAt(in, i++));
      continue;
    }
    if (i + 5 < n && in[i + 1] == 'u' && isHex(byteAt(in, i + 2)) && isHex(byteAt(in, i + 3)) &&
        isHex(byteAt(in, i + 4)) && isHex(byteAt(in, i + 5))) {
      u8 c = hexPair(byteAt(in, i + 4), byteAt(in, i + 5));
      if (c > 0x00 && c < 0x5f && (in[i + 2] == 'f' || in[i + 2] == 'F') &&
          (in[i + 3] == 'f' || in[i + 3] == 'F')) {
        c = static_cast<u8>(c + 0x20);
      }
      w.put(c);
      i += 6;
    } else if (i + 3 < n && in[i + 1] == 'x' && isHex(byteAt(in, i + 2)) &&
               isHex(byteAt(in, i + 3))) {
      w.put(hexPair(byteAt(in, i + 2), byteAt(in, i + 3)));
      i += 4;
    } else if (i + 1 < n && isOctal(byteAt(in, i + 1))) {
      char buf[4];
      size_t j = octalRun(in, i + 1, buf);
      if (j == 3 && buf[0] > '3') j = 2;  // keep the value within one byte
      w.put(strtolByte(std::string_view(buf, j), 8));
      i += 1 + j;
    } else if (i + 1 < n) {
      w.put(simpleEscape(byteAt(in, i + 1)));
      i += 2;
    } else {
      w.put(byteAt(in, i++));  // lone trailing backslash
    }
  }
  w.finish();
}

// escape_seq_decode.cc: ANSI C escapes. Unlike jsDecode, \xHH takes x or X,
// octal values above \377 wrap to their low byte, and an unknown \C gives C.
void escapeSeqDecode(std::string_view in, std::string& out) {
  const size_t n = in.size();
  Writer w(out, n);
  size_t i = 0;
  while (i < n) {
    if (in[i] != '\\' || i + 1 >= n) {
      w.put(byteAt(in, i++));
      continue;
    }
    const u8 next = byteAt(in, i + 1);
    int c = -1;
    switch (next) {
      case 'a':
      case 'b':
      case 'f':
      case 'n':
      case 'r':
      case 't':
      case 'v':
        c = simpleEscape(next);
        break;
      case '\\':
      case '?':
      case '\'':
      case '"':
        c = next;
        break;
      default:
        break;
    }
    if (c != -1) {
      i += 2;
    } else if (next == 'x' || next == 'X') {
      if (i + 3 < n && isHex(byteAt(in, i + 2)) && isHex(byteAt(in, i + 3))) {
        c = hexPair(byteAt(in, i + 2), byteAt(in, i + 3));
        i += 4;
      }
    } else if (isOctal(next)) {
      char buf[4];
      const size_t j = octalRun(in, i + 1, buf);
      c = strtolByte(std::string_view(buf, j), 8);  // up to 0777: low byte
      i += 1 + j;
    }
    if (c == -1) {
      w.put(next);  // unrecognised: drop the backslash
      i += 2;
    } else {
      w.put(static_cast<u8>(c));
    }
  }
  w.finish();
}

// css_decode.cc: '\' + 1..6 hex digits gives one byte -- the last two digits
// (one digit: its value), with the full-width ASCII fix-up (+0x20 for FFxx)
// for 4 digits, for 5 starting with 0 and for 6 starting with 00 -- and then
// one whitespace byte is swallowed. '\' + newline vanishes; '\' + other gives
// that byte; a trailing '\' vanishes.
void cssDecode(std::string_view in, std::string& out) {
  const size_t n = in.size();
  Writer w(out, n);
  size_t i = 0;
  while (i < n) {
    if (in[i] != '\\') {
      w.put(byteAt(in, i++));
      continue;
    }
    if (i + 1 >= n) {
      ++i;  // continuation to nothing
      continue;
    }
    ++i;  // skip the backslash
    size_t j = 0;
    while (j < 6 && i + j < n && isHex(byteAt(in, i + j))) ++j;
    if (j == 0) {
      if (in[i] != '\n') w.put(byteAt(in, i));
      ++i;
      continue;
    }
    u8 c;
    bool fullCheck = false;
    if (j == 1) {
      c = hexDigitValue(byteAt(in, i));
    } else {
      c = hexPair(byteAt(in, i + j - 2), byteAt(in, i + j - 1));
      fullCheck =
          j == 4 || (j == 5 && in[i] == '0') || (j == 6 && in[i] == '0' && in[i + 1] == '0');
    }
    if (fullCheck && c > 0x00 && c < 0x5f && (in[i + j - 3] == 'f' || in[i + j - 3] == 'F') &&
        (in[i + j - 4] == 'f' || in[i + j - 4] == 'F')) {
      c = static_cast<u8>(c + 0x20);
    }
    w.put(c);
    if (i + j < n && isSpace(byteAt(in, i + j))) ++j;
    i += j;
  }
  w.finish();
}

// ---------------------------------------------------------------- whitespace, shell

// cmd_line.cc: drop \ " ' ^; turn runs of space , ; \t \r \n into one space;
// drop a space right before / or (; lowercase everything else (ASCII).
void cmdLine(std::string_view in, std::string& out) {
  Writer w(out, in.size());
  bool space = false;
  for (char ch : in) {
    const u8 c = static_cast<u8>(ch);
    switch (c) {
      case '"':
      case '\'':
      case '\\':
      case '^':
        break;
      case ' ':
      case ',':
      case ';':
      case '\t':
      case '\r':
      case '\n':
        if (!space) {
          w.put(' ');
          space = true;
        }
        break;
      case '/':
      case '(':
        if (space) w.unput();  // the last byte written is that space
        space = false;
        w.put(c);
        break;
      default:
        w.put(toLowerAscii(c));
        space = false;
        break;
    }
  }
  w.finish();
}

// compress_whitespace.cc (v3 uses isspace only; v2 also folded 0xa0).
void compressWhitespace(std::string_view in, std::string& out) {
  Writer w(out, in.size());
  bool inSpace = false;
  for (char ch : in) {
    const u8 c = static_cast<u8>(ch);
    if (isSpace(c)) {
      if (!inSpace) w.put(' ');
      inSpace = true;
    } else {
      w.put(c);
      inSpace = false;
    }
  }
  w.finish();
}

// remove_whitespace.cc (v3.0.x): isspace, NBSP 0xa0 and also 0xc2, the lead
// byte of UTF-8 U+00A0 -- which damages other UTF-8 sequences; kept as is.
void removeWhitespace(std::string_view in, std::string& out) {
  Writer w(out, in.size());
  for (char ch : in) {
    const u8 c = static_cast<u8>(ch);
    if (!isSpace(c) && c != 0xa0 && c != 0xc2) w.put(c);
  }
  w.finish();
}

void trim(std::string_view in, std::string& out, bool left, bool right) {
  size_t b = 0;
  size_t e = in.size();
  if (left) {
    while (b < e && isSpace(byteAt(in, b))) ++b;
  }
  if (right) {
    while (e > b && isSpace(byteAt(in, e - 1))) --e;
  }
  out.assign(in.substr(b, e - b));
}

// ---------------------------------------------------------------- comments

bool startsAt(std::string_view in, size_t i, std::string_view token) {
  return in.size() - i >= token.size() && in.compare(i, token.size(), token) == 0;
}

// remove_comments.cc: /* ... */ and <!-- ... --> vanish (either closer ends
// either comment), an unterminated comment becomes one space, and "--" or '#'
// outside a comment cuts the rest of the value. v3.0.x copied the byte after a
// closer without looking at it (so "/**//**/" kept "/**/" and a closer at the
// very end emitted a NUL); this follows the fixed behaviour that ModSecurity's
// regression file transformations/removeComments.json expects. CRS 3.3.4 does
// not use removeComments.
void removeComments(std::string_view in, std::string& out) {
  const size_t n = in.size();
  Writer w(out, n + 1);
  bool inComment = false;
  size_t i = 0;
  while (i < n) {
    if (!inComment) {
      if (startsAt(in, i, "/*")) {
        inComment = true;
        i += 2;
      } else if (startsAt(in, i, "<!--")) {
        inComment = true;
        i += 4;
      } else if (startsAt(in, i, "--") || in[i] == '#') {
        break;
      } else {
        w.put(byteAt(in, i++));
      }
    } else if (startsAt(in, i, "*/")) {
      inComment = false;
      i += 2;
    } else if (startsAt(in, i, "-->")) {
      inComment = false;
      i += 3;
    } else {
      ++i;
    }
  }
  if (inComment) w.put(' ');
  w.finish();
}

// remove_comments_char.cc: deletes only the markers /* */ <!-- --> -- #.
void removeCommentsChar(std::string_view in, std::string& out) {
  const size_t n = in.size();
  Writer w(out, n);
  size_t i = 0;
  while (i < n) {
    if (startsAt(in, i, "/*") || startsAt(in, i, "*/")) {
      i += 2;
    } else if (startsAt(in, i, "<!--")) {
      i += 4;
    } else if (startsAt(in, i, "-->")) {
      i += 3;
    } else if (startsAt(in, i, "--")) {
      i += 2;
    } else if (in[i] == '#') {
      i += 1;
    } else {
      w.put(byteAt(in, i++));
    }
  }
  w.finish();
}

// replace_comments.cc: each /* ... */ becomes one space; an unterminated one
// becomes a trailing space.
void replaceComments(std::string_view in, std::string& out) {
  const size_t n = in.size();
  Writer w(out, n + 1);
  bool inComment = false;
  size_t i = 0;
  while (i < n) {
    if (!inComment) {
      if (startsAt(in, i, "/*")) {
        inComment = true;
        i += 2;
      } else {
        w.put(byteAt(in, i++));
      }
    } else if (startsAt(in, i, "*/")) {
      inComment = false;
      i += 2;
      w.put(' ');
    } else {
      ++i;
    }
  }
  if (inComment) w.put(' ');
  w.finish();
}

// ---------------------------------------------------------------- paths

// normalise_path.cc normalize_path_inplace, run over a copy of the input: a
// single forward pass that drops "./", resolves "../" against what has been
// written, squeezes "//", never climbs above the root of an absolute path,
// keeps unresolvable "../" of a relative path, and keeps a trailing '/' only
// if the input had one -- even the root's: "/.." gives "", "/../" gives "/". With `win`, '\' counts
// as '/' and is rewritten -- but, as in ModSecurity, only the current and next byte are rewritten
// per step, so in a run of three or more backslashes one may survive.
void normalizePath(std::string_view in, std::string& out, bool win) {
  out.assign(in);
  if (out.empty()) return;
  char* buf = out.data();
  const ptrdiff_t end = static_cast<ptrdiff_t>(out.size()) - 1;
  const auto isSep = [win](char c) { return c == '/' || (win && c == '\\'); };
  const bool relative = !isSep(buf[0]);
  const bool trailing = isSep(buf[end]);
  bool hitRoot = false;
  bool done = false;
  ptrdiff_t src = 0;
  ptrdiff_t dst = 0;

  while (!done && src <= end && dst <= end) {
    if (win) {
      if (buf[src] == '\\') buf[src] = '/';
      if (src < end && buf[src + 1] == '\\') buf[src + 1] = '/';
    }
    bool skipCopy = false;
    if (src == end) done = true;
    if (done || buf[src + 1] == '/') {
      // At the end of a path segment: normalise it.
      if (src != end && buf[src] == '/') {
        // empty segment; the copy step squeezes the slashes
      } else if (buf[src] == '.') {
        if (dst > 0 && buf[dst - 1] == '.') {
          // ".." segment
          if (relative && (hitRoot || dst - 2 <= 0)) {
            hitRoot = true;  // nothing left to remove: keep the "..".
          } else {
            dst -= 3;
            while (dst > 0 && buf[dst] != '/') --dst;
            if (dst <= 0) {
              hitRoot = true;
              dst = 0;
              if (!relative && src == end) ++dst;  // keep the root slash
            }
            if (done) {
              skipCopy = true;
            } else {
              ++src;
            }
          }
        } else if (dst == 0) {
          // "./" at the start of a relative path
          if (done) {
            skipCopy = true;
          } else {
            ++src;
          }
        } else if (buf[dst - 1] == '/') {
          // "/./"
          if (done) {
            skipCopy = true;
          } else {
            --dst;
            ++src;
          }
        }
      } else if (dst > 0) {
        hitRoot = false;  // a regular segment
      }
    }
    if (skipCopy) continue;

    if (buf[src] == '/') {
      while (src < end && isSep(buf[src + 1])) ++src;  // last of a run of slashes
      if (relative && dst == 0) {
        ++src;  // a relative result never starts with '/'
        continue;
      }
    }
    buf[dst++] = buf[src++];
  }
  if (!trailing && dst > 0 && buf[dst - 1] == '/') --dst;
  out.resize(static_cast<size_t>(dst));
}

// ---------------------------------------------------------------- base64

// others/mbedtls/base64.c (the copy bundled with ModSecurity v3.0.x) decode
// table: 127 = invalid, 64 = '='.
constexpr std::array<u8, 128> kB64Dec = [] {
  std::array<u8, 128> t{};
  for (auto& v : t) v = 127;
  constexpr std::string_view kAlphabet =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  for (size_t i = 0; i < kAlphabet.size(); ++i)
    t[static_cast<u8>(kAlphabet[i])] = static_cast<u8>(i);
  t['='] = 64;
  return t;
}();

// base64Decode = Utils::Base64::decode = mbedtls_base64_decode over
// strlen(value) bytes: the value stops at its first NUL; spaces are allowed
// only before a line end or at the very end, CR LF and LF anywhere; at most two
// '=' and nothing but them after the first. Any other byte makes the whole
// result empty (ModSecurity ignores mbedtls' error and keeps length 0). Only
// complete 4-character groups produce output, so an unpadded tail of 2 or 3
// characters is silently dropped.
void base64Decode(std::string_view in, std::string& out) {
  const size_t nul = in.find('\0');
  const std::string_view s = nul == std::string_view::npos ? in : in.substr(0, nul);
  const size_t slen = s.size();
  out.clear();

  size_t digits = 0;
  unsigned equals = 0;
  for (size_t i = 0; i < slen; ++i) {
    size_t spaces = 0;
    while (i < slen && s[i] == ' ') {
      ++i;
      ++spaces;
    }
    if (i == slen) break;
    if (slen - i >= 2 && s[i] == '\r' && s[i + 1] == '\n') continue;
    if (s[i] == '\n') continue;
    const u8 c = byteAt(s, i);
    if (spaces != 0) return;
    if (c == '=' && ++equals > 2) return;
    if (c > 127 || kB64Dec[c] == 127) return;
    if (kB64Dec[c] < 64 && equals != 0) return;
    ++digits;
  }
  if (digits == 0) return;

  Writer w(out, slen);
  unsigned keep = 3;  // bytes of the current group still wanted; each '=' drops one
  unsigned inGroup = 0;
  uint32_t acc = 0;
  for (size_t i = 0; i < slen; ++i) {
    const u8 c = byteAt(s, i);
    if (c == '\r' || c == '\n' || c == ' ') continue;
    if (kB64Dec[c] == 64) --keep;
    acc = (acc << 6) | (kB64Dec[c] & 0x3f);
    if (++inGroup == 4) {
      inGroup = 0;
      if (keep > 0) w.put(static_cast<u8>(acc >> 16));
      if (keep > 1) w.put(static_cast<u8>(acc >> 8));
      if (keep > 2) w.put(static_cast<u8>(acc));
    }
  }
  w.finish();
}

// base64DecodeExt = Utils::Base64::decode_forgiven: every byte outside the
// alphabet (which here also has '-' = 62 and '_' = 63) is skipped; '=' is
// skipped too (it does not restart the 4-digit grouping), except that a '='
// not followed by another '=' when the digit count is 4k+1 empties the result
// (so any run of '=' there does). Whole bytes of a partial group are kept. Quirk kept: the
// end-of-input check compares the last digit's *value* with '=' (61), so input whose last digit is
// '9' and which has 4k+1 digits also yields "".
void base64DecodeExt(std::string_view in, std::string& out) {
  constexpr std::array<int8_t, 256> kRev = [] {
    std::array<int8_t, 256> t{};
    for (auto& v : t) v = -2;
    t['\t'] = t['\n'] = t['\r'] = t[' '] = -1;
    constexpr std::string_view kAlphabet =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for (size_t i = 0; i < kAlphabet.size(); ++i) {
      t[static_cast<u8>(kAlphabet[i])] = static_cast<int8_t>(i);
    }
    t['-'] = 62;
    t['_'] = 63;
    return t;
  }();
  constexpr int kPad = '=';

  const size_t n = in.size();
  Writer w(out, n);
  unsigned digits = 0;
  int last = 0;  // ModSecurity's `ch`: '=' itself, else the table value of the last byte
  u8 partial = 0;
  for (size_t i = 0; i < n; ++i) {
    const u8 c = byteAt(in, i);
    if (c == kPad) {
      last = kPad;
      if (peek(in, i + 1) != '=' && digits % 4 == 1) {
        out.clear();
        return;
      }
      continue;
    }
    last = kRev[c];
    if (last < 0) continue;
    const u8 v = static_cast<u8>(last);
    switch (digits % 4) {
      case 0:
        partial = static_cast<u8>(v << 2);
        break;
      case 1:
        w.put(static_cast<u8>(partial | (v >> 4)));
        partial = static_cast<u8>(v << 4);
        break;
      case 2:
        w.put(static_cast<u8>(partial | (v >> 2)));
        partial = static_cast<u8>(v << 6);
        break;
      default:
        w.put(static_cast<u8>(partial | v));
        break;
    }
    ++digits;
  }
  if (last == kPad && digits % 4 == 1) {
    out.clear();
    return;
  }
  w.finish();
}

void base64Encode(std::string_view in, std::string& out) {
  constexpr std::string_view kAlphabet =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  const size_t n = in.size();
  Writer w(out, (n + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 3 <= n; i += 3) {
    const uint32_t v =
        (uint32_t{byteAt(in, i)} << 16) | (uint32_t{byteAt(in, i + 1)} << 8) | byteAt(in, i + 2);
    w.put(static_cast<u8>(kAlphabet[(v >> 18) & 0x3f]));
    w.put(static_cast<u8>(kAlphabet[(v >> 12) & 0x3f]));
    w.put(static_cast<u8>(kAlphabet[(v >> 6) & 0x3f]));
    w.put(static_cast<u8>(kAlphabet[v & 0x3f]));
  }
  if (i < n) {
    const uint32_t v =
        (uint32_t{byteAt(in, i)} << 16) | (i + 1 < n ? uint32_t{byteAt(in, i + 1)} << 8 : 0);
    w.put(static_cast<u8>(kAlphabet[(v >> 18) & 0x3f]));
    w.put(static_cast<u8>(kAlphabet[(v >> 12) & 0x3f]));
    w.put(i + 1 < n ? static_cast<u8>(kAlphabet[(v >> 6) & 0x3f]) : u8{'='});
    w.put('=');
  }
  w.finish();
}

// ---------------------------------------------------------------- hex

// hex_decode.cc: every pair becomes one byte (non-hex digits give ModSecurity's
// x2c garbage rather than an error); an odd last byte is dropped.
void hexDecode(std::string_view in, std::string& out) {
  Writer w(out, in.size() / 2);
  for (size_t i = 0; i + 1 < in.size(); i += 2) w.put(hexPair(byteAt(in, i), byteAt(in, i + 1)));
  w.finish();
}

constexpr std::string_view kHexLower = "0123456789abcdef";

void hexEncode(std::string_view in, std::string& out) {
  Writer w(out, in.size() * 2);
  for (char ch : in) {
    const u8 c = static_cast<u8>(ch);
    w.put(static_cast<u8>(kHexLower[c >> 4]));
    w.put(static_cast<u8>(kHexLower[c & 0x0f]));
  }
  w.finish();
}

// sql_hex_decode.cc (current v3; v3.0.x copied the byte after each run
// unexamined and lost the last input byte): "0x"/"0X" followed by at least one
// hex pair becomes the bytes of all the pairs that follow; an odd last digit
// stays as text.
void sqlHexDecode(std::string_view in, std::string& out) {
  const size_t n = in.size();
  Writer w(out, n);
  size_t i = 0;
  while (i < n) {
    if (i + 3 < n && in[i] == '0' && (in[i + 1] == 'x' || in[i + 1] == 'X') &&
        isHex(byteAt(in, i + 2)) && isHex(byteAt(in, i + 3))) {
      i += 2;
      do {
        w.put(hexPair(byteAt(in, i), byteAt(in, i + 1)));
        i += 2;
      } while (i + 1 < n && isHex(byteAt(in, i)) && isHex(byteAt(in, i + 1)));
    } else {
      w.put(byteAt(in, i++));
    }
  }
  w.finish();
}

// ---------------------------------------------------------------- utf8toUnicode

// utf8_to_unicode.cc. A valid 2-, 3- or 4-byte sequence becomes "%u" and its
// code point in lowercase hex, at least four digits. Reproduced quirks: NUL
// bytes are dropped; a lead byte whose continuation bytes are wrong or missing
// is dropped (its followers are then copied one by one); continuation bytes and
// 0xf8-0xff on their own are copied; after an overlong form or a surrogate
// (U+D800-DFFF) the lead byte is appended again; a 0xf5-0xf7 lead is written
// raw before whatever its sequence produces.
void utf8ToUnicode(std::string_view in, std::string& out) {
  const size_t n = in.size();
  Writer w(out, n * 4);
  const auto cont = [&](size_t k) { return (peek(in, k) & 0xc0) == 0x80; };
  const auto putCodePoint = [&](uint32_t cp) {
    char buf[8];
    const auto res = std::to_chars(buf, buf + sizeof buf, cp, 16);
    const size_t len = static_cast<size_t>(res.ptr - buf);
    w.put('%');
    w.put('u');
    for (size_t pad = len; pad < 4; ++pad) w.put('0');
    w.put(std::string_view(buf, len));
  };

  size_t i = 0;
  while (i < n) {
    const u8 c = byteAt(in, i);
    size_t seqLen = 0;  // 0: not a valid multi-byte sequence
    uint32_t cp = 0;
    if (c < 0x80) {
      if (c != 0) w.put(c);
    } else if ((c & 0xe0) == 0xc0) {
      if (cont(i + 1)) {
        seqLen = 2;
        cp = (uint32_t{c & 0x1fu} << 6) | (peek(in, i + 1) & 0x3fu);
      }
    } else if ((c & 0xf0) == 0xe0) {
      if (cont(i + 1) && cont(i + 2)) {
        seqLen = 3;
        cp = (uint32_t{c & 0x0fu} << 12) | (uint32_t{peek(in, i + 1) & 0x3fu} << 6) |
             (peek(in, i + 2) & 0x3fu);
      }
    } else if ((c & 0xf8) == 0xf0) {
      if (c >= 0xf5) w.put(c);
      if (cont(i + 1) && cont(i + 2) && cont(i + 3)) {
        seqLen = 4;
        cp = (uint32_t{c & 0x07u} << 18) | (uint32_t{peek(in, i + 1) & 0x3fu} << 12) |
             (uint32_t{peek(in, i + 2) & 0x3fu} << 6) | (peek(in, i + 3) & 0x3fu);
      }
    } else {
      w.put(c);
    }
    if (seqLen > 0) {
      putCodePoint(cp);
      if (cp >= 0xd800 && cp <= 0xdfff) w.put(c);
      if ((seqLen == 4 && cp < 0x10000) || (seqLen == 3 && cp < 0x800) ||
          (seqLen == 2 && cp < 0x80)) {
        w.put(c);
      }
    }
    i += seqLen > 0 ? seqLen : 1;
  }
  w.finish();
}

// ---------------------------------------------------------------- digests, misc

void length(std::string_view in, std::string& out) {
  char buf[24];
  const auto res = std::to_chars(buf, buf + sizeof buf, in.size());
  out.assign(buf, res.ptr);
}

// One fetched EVP_MD per process (fetching is a locked provider lookup, so it
// is done once) and one EVP_MD_CTX per thread and algorithm, kept for reuse.
struct ThreadDigestCtx {
  EVP_MD_CTX* ctx = nullptr;
  ThreadDigestCtx() = default;
  ThreadDigestCtx(const ThreadDigestCtx&) = delete;
  ThreadDigestCtx& operator=(const ThreadDigestCtx&) = delete;
  ~ThreadDigestCtx() { EVP_MD_CTX_free(ctx); }
};

void digest(std::string_view in, std::string& out, bool sha1) {
  static EVP_MD* const kSha1 = EVP_MD_fetch(nullptr, "SHA1", nullptr);
  static EVP_MD* const kMd5 = EVP_MD_fetch(nullptr, "MD5", nullptr);
  thread_local ThreadDigestCtx sha1Ctx;
  thread_local ThreadDigestCtx md5Ctx;

  out.clear();
  EVP_MD* md = sha1 ? kSha1 : kMd5;
  ThreadDigestCtx& holder = sha1 ? sha1Ctx : md5Ctx;
  if (md == nullptr) return;
  if (holder.ctx == nullptr) holder.ctx = EVP_MD_CTX_new();
  if (holder.ctx == nullptr) return;
  unsigned char buf[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (EVP_DigestInit_ex2(holder.ctx, md, nullptr) != 1 ||
      EVP_DigestUpdate(holder.ctx, in.data(), in.size()) != 1 ||
      EVP_DigestFinal_ex(holder.ctx, buf, &len) != 1) {
    return;
  }
  out.assign(reinterpret_cast<const char*>(buf), len);
}

// parity_*_7bit.cc: the parity is computed over all 8 bits of the input byte.
u8 parityEven(u8 c) {
  return (__builtin_popcount(c) & 1) ? static_cast<u8>(c | 0x80) : static_cast<u8>(c & 0x7f);
}
u8 parityOdd(u8 c) {
  return (__builtin_popcount(c) & 1) ? static_cast<u8>(c & 0x7f) : static_cast<u8>(c | 0x80);
}
u8 parityZero(u8 c) { return static_cast<u8>(c & 0x7f); }

// ---------------------------------------------------------------- names

struct NameEntry {
  std::string_view name;
  Transform t;
};

// Canonical spellings first (transformName uses the first entry for a value).
constexpr NameEntry kNames[] = {
    {"none", Transform::kNone},
    {"lowercase", Transform::kLowercase},
    {"uppercase", Transform::kUppercase},
    {"urlDecode", Transform::kUrlDecode},
    {"urlDecodeUni", Transform::kUrlDecodeUni},
    {"urlEncode", Transform::kUrlEncode},
    {"htmlEntityDecode", Transform::kHtmlEntityDecode},
    {"jsDecode", Transform::kJsDecode},
    {"cssDecode", Transform::kCssDecode},
    {"cmdLine", Transform::kCmdLine},
    {"compressWhitespace", Transform::kCompressWhitespace},
    {"removeWhitespace", Transform::kRemoveWhitespace},
    {"removeNulls", Transform::kRemoveNulls},
    {"replaceNulls", Transform::kReplaceNulls},
    {"removeComments", Transform::kRemoveComments},
    {"removeCommentsChar", Transform::kRemoveCommentsChar},
    {"replaceComments", Transform::kReplaceComments},
    {"normalizePath", Transform::kNormalizePath},
    {"normalizePathWin", Transform::kNormalizePathWin},
    {"base64Decode", Transform::kBase64Decode},
    {"base64DecodeExt", Transform::kBase64DecodeExt},
    {"base64Encode", Transform::kBase64Encode},
    {"hexDecode", Transform::kHexDecode},
    {"hexEncode", Transform::kHexEncode},
    {"sqlHexDecode", Transform::kSqlHexDecode},
    {"escapeSeqDecode", Transform::kEscapeSeqDecode},
    {"utf8toUnicode", Transform::kUtf8ToUnicode},
    {"length", Transform::kLength},
    {"sha1", Transform::kSha1},
    {"md5", Transform::kMd5},
    {"trim", Transform::kTrim},
    {"trimLeft", Transform::kTrimLeft},
    {"trimRight", Transform::kTrimRight},
    {"parityEven7bit", Transform::kParityEven7bit},
    {"parityOdd7bit", Transform::kParityOdd7bit},
    {"parityZero7bit", Transform::kParityZero7bit},
    // aliases
    {"normalisePath", Transform::kNormalizePath},
    {"normalisePathWin", Transform::kNormalizePathWin},
};

bool equalsIgnoreCase(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (toLowerAscii(static_cast<u8>(a[i])) != toLowerAscii(static_cast<u8>(b[i]))) return false;
  }
  return true;
}

// ---------------------------------------------------------------- unicode map file

// Parses 1-8 hex digits; false on anything else.
bool parseHex(std::string_view s, uint32_t* v) {
  if (s.empty() || s.size() > 8) return false;
  uint32_t r = 0;
  for (char ch : s) {
    const u8 c = static_cast<u8>(ch);
    if (!isHex(c)) return false;
    r = (r << 4) | hexDigitValue(c);
  }
  *v = r;
  return true;
}

void setError(std::string* error, const std::string& path, size_t line, const std::string& msg) {
  if (error == nullptr) return;
  std::ostringstream os;
  os << path;
  if (line > 0) os << ':' << line;
  os << ": " << msg;
  *error = os.str();
}

}  // namespace

std::optional<Transform> transformFromName(std::string_view name) {
  for (const NameEntry& e : kNames) {
    if (equalsIgnoreCase(e.name, name)) return e.t;
  }
  return std::nullopt;
}

std::string_view transformName(Transform t) {
  for (const NameEntry& e : kNames) {
    if (e.t == t) return e.name;
  }
  return "unknown";
}

std::optional<UnicodeMap> UnicodeMap::load(const std::string& path, int codePage,
                                           std::string* error) {
  if (codePage <= 0) {
    setError(error, path, 0, "code page must be positive, got " + std::to_string(codePage));
    return std::nullopt;
  }
  std::ifstream file(path, std::ios::in | std::ios::binary);
  if (!file) {
    setError(error, path, 0, std::string("cannot open: ") + std::strerror(errno));
    return std::nullopt;
  }
  const std::string text{std::istreambuf_iterator<char>(file), std::istreambuf_iterator<char>()};
  if (file.bad()) {
    setError(error, path, 0, "read error");
    return std::nullopt;
  }

  UnicodeMap map;
  map.codePage_ = codePage;
  map.table_.assign(65536, -1);
  // ModSecurity seeds these (RFC 3490 section 3.1 full stops) before reading.
  for (uint32_t cp : {0x002eu, 0x3002u, 0xff0eu, 0xff61u}) map.table_[cp] = 0x2e;

  bool seenHeader = false;
  bool selected = false;  // inside the (first) block of the wanted code page
  bool found = false;
  size_t lineNo = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t eol = text.find('\n', pos);
    if (eol == std::string::npos) eol = text.size();
    const std::string_view line(text.data() + pos, eol - pos);
    pos = eol + 1;
    ++lineNo;

    // Tokenise on C whitespace (covers a CR before the LF).
    bool first = true;
    bool mappingLine = false;
    size_t i = 0;
    while (i < line.size()) {
      while (i < line.size() && isSpace(byteAt(line, i))) ++i;
      if (i == line.size()) break;
      size_t j = i;
      while (j < line.size() && !isSpace(byteAt(line, j))) ++j;
      const std::string_view tok = line.substr(i, j - i);
      i = j;

      if (first) {
        first = false;
        mappingLine = tok.find(':') != std::string_view::npos;
        if (!mappingLine) {
          // Header: "<decimal code page> [description]" or "(description)".
          seenHeader = true;
          if (tok.front() == '(') {
            selected = false;
          } else {
            int page = 0;
            const auto res = std::from_chars(tok.data(), tok.data() + tok.size(), page);
            if (res.ec != std::errc() || res.ptr != tok.data() + tok.size()) {
              setError(
                  error, path, lineNo,
                  "expected a code page number or hhhh:hh pairs, got '" + std::string(tok) + "'");
              return std::nullopt;
            }
            // Like ModSecurity, only the first block of the wanted page counts.
            selected = page == codePage && !found;
            found = found || selected;
          }
          break;  // the rest of a header line is description
        }
        if (!seenHeader) {
          setError(error, path, lineNo, "mapping line before any code page header");
          return std::nullopt;
        }
      }

      const size_t colon = tok.find(':');
      uint32_t cp = 0;
      uint32_t byte = 0;
      if (colon == std::string_view::npos || !parseHex(tok.substr(0, colon), &cp) ||
          !parseHex(tok.substr(colon + 1), &byte)) {
        setError(error, path, lineNo,
                 "malformed mapping '" + std::string(tok) + "' (want hhhh:hh)");
        return std::nullopt;
      }
      if (cp > 0xffff || byte > 0xff) {
        setError(
            error, path, lineNo,
            "mapping '" + std::string(tok) + "' out of range (code point <= ffff, byte <= ff)");
        return std::nullopt;
      }
      if (selected) map.table_[cp] = static_cast<int16_t>(byte);
    }
  }
  if (!found) {
    setError(error, path, 0, "code page " + std::to_string(codePage) + " not found");
    return std::nullopt;
  }
  return map;
}

namespace {

enum : uint32_t {
  kClsUpper = 1u << 0,      // 'A'..'Z'
  kClsPctPlus = 1u << 1,    // '%' '+'
  kClsAmp = 1u << 2,        // '&'
  kClsBackslash = 1u << 3,  // '\\'
  kClsNul = 1u << 4,        // 0
  kClsHigh = 1u << 5,       // >= 0x80 (covers 0xa0 and 0xc2)
  kClsCtrlWs = 1u << 6,     // '\t'..'\r'
  kClsSpace = 1u << 7,      // ' '
  kClsDoubleSpace = 1u << 8,  // "  "
};

constexpr std::array<uint8_t, 256> makeClassTable() {
  std::array<uint8_t, 256> t{};
  for (int c = 0; c < 256; ++c) {
    uint32_t m = 0;
    if (c >= 'A' && c <= 'Z') m |= kClsUpper;
    if (c == '%' || c == '+') m |= kClsPctPlus;
    if (c == '&') m |= kClsAmp;
    if (c == '\\') m |= kClsBackslash;
    if (c == 0) m |= kClsNul;
    if (c >= 0x80) m |= kClsHigh;
    if (c >= '\t' && c <= '\r') m |= kClsCtrlWs;
    if (c == ' ') m |= kClsSpace;
    t[static_cast<size_t>(c)] = static_cast<uint8_t>(m);
  }
  return t;
}
constexpr std::array<uint8_t, 256> kClassTable = makeClassTable();

}  // namespace

uint32_t byteClasses(std::string_view in) {
  const u8* p = reinterpret_cast<const u8*>(in.data());
  const size_t n = in.size();
  uint32_t m = 0;
  uint32_t dbl = 0;
  for (size_t i = 0; i < n; ++i) {
    m |= kClassTable[p[i]];
    dbl |= (i > 0 && p[i] == ' ' && p[i - 1] == ' ') ? 1u : 0u;
  }
  return m | (dbl != 0 ? uint32_t{kClsDoubleSpace} : 0u);
}

bool transformMayChangeClasses(Transform t, uint32_t c) {
  switch (t) {
    case Transform::kNone:
      return false;
    case Transform::kLowercase:
      return (c & kClsUpper) != 0;
    case Transform::kUrlDecode:
    case Transform::kUrlDecodeUni:
      return (c & kClsPctPlus) != 0;
    case Transform::kHtmlEntityDecode:
      return (c & kClsAmp) != 0;
    case Transform::kJsDecode:
    case Transform::kCssDecode:
      return (c & kClsBackslash) != 0;
    case Transform::kRemoveNulls:
    case Transform::kReplaceNulls:
      return (c & kClsNul) != 0;
    case Transform::kUtf8ToUnicode:
      return (c & (kClsNul | kClsHigh)) != 0;
    case Transform::kCompressWhitespace:
      return (c & (kClsCtrlWs | kClsDoubleSpace)) != 0;
    case Transform::kRemoveWhitespace:
      return (c & (kClsSpace | kClsCtrlWs | kClsHigh)) != 0;
    default:
      return true;
  }
}

bool transformMayChange(Transform t, std::string_view in) {
  return transformMayChangeClasses(t, byteClasses(in));
}

bool applyTransform(Transform t, std::string_view in, std::string& out, const UnicodeMap* map) {
  switch (t) {
    case Transform::kNone:
      out.assign(in);
      return false;
    case Transform::kLowercase:
      mapBytes(in, out, toLowerAscii);
      break;
    case Transform::kUppercase:
      mapBytes(in, out, toUpperAscii);
      break;
    case Transform::kUrlDecode:
      urlDecode(in, out);
      break;
    case Transform::kUrlEncode:
      urlEncode(in, out);
      break;
    case Transform::kUrlDecodeUni:
      urlDecodeUni(in, out, map);
      break;
    case Transform::kHtmlEntityDecode:
      htmlEntityDecode(in, out);
      break;
    case Transform::kJsDecode:
      jsDecode(in, out);
      break;
    case Transform::kCssDecode:
      cssDecode(in, out);
      break;
    case Transform::kCmdLine:
      cmdLine(in, out);
      break;
    case Transform::kCompressWhitespace:
      compressWhitespace(in, out);
      break;
    case Transform::kRemoveWhitespace:
      removeWhitespace(in, out);
      break;
    case Transform::kRemoveNulls:
      removeNulls(in, out);
      break;
    case Transform::kReplaceNulls:
      mapBytes(in, out, [](u8 c) { return c == 0 ? u8{' '} : c; });
      break;
    case Transform::kRemoveComments:
      removeComments(in, out);
      break;
    case Transform::kRemoveCommentsChar:
      removeCommentsChar(in, out);
      break;
    case Transform::kReplaceComments:
      replaceComments(in, out);
      break;
    case Transform::kNormalizePath:
      normalizePath(in, out, false);
      break;
    case Transform::kNormalizePathWin:
      normalizePath(in, out, true);
      break;
    case Transform::kBase64Decode:
      base64Decode(in, out);
      break;
    case Transform::kBase64DecodeExt:
      base64DecodeExt(in, out);
      break;
    case Transform::kBase64Encode:
      base64Encode(in, out);
      break;
    case Transform::kHexDecode:
      hexDecode(in, out);
      break;
    case Transform::kHexEncode:
      hexEncode(in, out);
      break;
    case Transform::kSqlHexDecode:
      sqlHexDecode(in, out);
      break;
    case Transform::kEscapeSeqDecode:
      escapeSeqDecode(in, out);
      break;
    case Transform::kUtf8ToUnicode:
      utf8ToUnicode(in, out);
      break;
    case Transform::kLength:
      length(in, out);
      break;
    case Transform::kSha1:
      digest(in, out, true);
      break;
    case Transform::kMd5:
      digest(in, out, false);
      break;
    case Transform::kTrim:
      trim(in, out, true, true);
      break;
    case Transform::kTrimLeft:
      trim(in, out, true, false);
      break;
    case Transform::kTrimRight:
      trim(in, out, false, true);
      break;
    case Transform::kParityEven7bit:
      mapBytes(in, out, parityEven);
      break;
    case Transform::kParityOdd7bit:
      mapBytes(in, out, parityOdd);
      break;
    case Transform::kParityZero7bit:
      mapBytes(in, out, parityZero);
      break;
    default:
      // Not a Transform value (memory corruption or a bad cast): pass through.
      out.assign(in);
      return false;
  }
  return differs(in, out);
}

}  // namespace moat::waf
