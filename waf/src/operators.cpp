#include "moat/waf/operators.h"

#include <climits>
#include <cstring>
#include <fstream>

#include "moat/l4/cidr.h"

// Reference: libmodsecurity v3, src/operators/*.cc and src/utils/msc_tree.c.
// Written from their observable behaviour; each reproduced quirk is named in
// the comment of the function that reproduces it, and each deliberate
// difference says why.

namespace moat::waf {

namespace {

using u8 = unsigned char;

u8 byteAt(std::string_view s, size_t i) { return static_cast<u8>(s[i]); }

// C isspace() in the "C" locale, as strtol/stoi skip it.
bool isSpace(u8 c) { return c == ' ' || (c >= '\t' && c <= '\r'); }
bool isDigit(u8 c) { return c >= '0' && c <= '9'; }
bool isHex(u8 c) { return isDigit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }
bool isAsciiLetter(u8 c) { return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z'); }
u8 toLowerAscii(u8 c) { return (c >= 'A' && c <= 'Z') ? static_cast<u8>(c + 32) : c; }

bool equalsIgnoreCase(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (toLowerAscii(byteAt(a, i)) != toLowerAscii(byteAt(b, i))) return false;
  }
  return true;
}

std::string_view trimSpaces(std::string_view s) {
  while (!s.empty() && isSpace(byteAt(s, 0))) s.remove_prefix(1);
  while (!s.empty() && isSpace(byteAt(s, s.size() - 1))) s.remove_suffix(1);
  return s;
}

// strtoll-style scan shared by both integer flavours: leading isspace(),
// optional sign, decimal digits up to the first non-digit (or NUL: ModSecurity
// hands the C string over, so an embedded NUL ends the number anyway).
struct ScannedInt {
  bool hasDigits = false;
  bool overflow = false;  // magnitude beyond long long
  long long value = 0;    // saturated at LLONG_MIN / LLONG_MAX, as glibc strtoll
};

ScannedInt scanInt(std::string_view s) {
  ScannedInt r;
  size_t i = 0;
  while (i < s.size() && isSpace(byteAt(s, i))) ++i;
  bool negative = false;
  if (i < s.size() && (s[i] == '+' || s[i] == '-')) {
    negative = s[i] == '-';
    ++i;
  }
  unsigned long long magnitude = 0;
  const unsigned long long limit =
      negative ? static_cast<unsigned long long>(LLONG_MAX) + 1 : LLONG_MAX;
  for (; i < s.size() && isDigit(byteAt(s, i)); ++i) {
    r.hasDigits = true;
    if (r.overflow) continue;
    const unsigned digit = byteAt(s, i) - '0';
    if (magnitude > (limit - digit) / 10) {
      r.overflow = true;
      continue;
    }
    magnitude = magnitude * 10 + digit;
  }
  if (r.overflow) {
    r.value = negative ? LLONG_MIN : LLONG_MAX;
  } else if (negative) {
    r.value = magnitude == static_cast<unsigned long long>(LLONG_MAX) + 1
                  ? LLONG_MIN
                  : -static_cast<long long>(magnitude);
  } else {
    r.value = static_cast<long long>(magnitude);
  }
  return r;
}

// @eq parses both sides with std::stoi inside try/catch: no digits
// (invalid_argument) or a value outside int (out_of_range) both become 0. So
// "abc" @eq 0 and "99999999999" @eq 0 are true.
int stoiOrZero(std::string_view s) {
  const ScannedInt r = scanInt(s);
  if (!r.hasDigits || r.overflow || r.value < INT_MIN || r.value > INT_MAX) return 0;
  return static_cast<int>(r.value);
}

// @ge @gt @le @lt use atoll() instead: no digits gives 0, overflow saturates.
long long atollLike(std::string_view s) {
  const ScannedInt r = scanInt(s);
  return r.hasDigits ? r.value : 0;
}

// ModSecurity's containsWord: a match of the argument counts when the bytes
// either side (if any) are not ASCII letters. Digits, '_' and non-ASCII bytes
// are all boundaries (v2 treated alphanumerics and '_' as word bytes; v3 does
// not). An empty argument matches anything, an empty value nothing (v3 checks
// the argument first).
bool containsWord(std::string_view value, std::string_view word) {
  if (word.empty()) return true;
  if (value.empty()) return false;
  size_t pos = value.find(word);
  while (pos != std::string_view::npos) {
    const size_t end = pos + word.size();
    const bool leftOk = pos == 0 || !isAsciiLetter(byteAt(value, pos - 1));
    const bool rightOk = end == value.size() || !isAsciiLetter(byteAt(value, end));
    if (leftOk && rightOk) return true;
    pos = value.find(word, pos + 1);
  }
  return false;
}

// ModSecurity's validate_url_encoding: every '%' needs two more bytes, both
// hex digits. A '%' with fewer than two bytes after it is "not enough
// characters"; the empty value never matches.
bool invalidUrlEncoding(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    if (s[i] != '%') {
      ++i;
      continue;
    }
    if (i + 2 >= s.size()) return true;
    if (!isHex(byteAt(s, i + 1)) || !isHex(byteAt(s, i + 2))) return true;
    i += 3;
  }
  return false;
}

// Length of the UTF-8 character at `p` (at most `left` bytes), or 0 when
// ModSecurity's detect_utf8_character reports an error: a truncated sequence,
// a continuation byte that is not 10xxxxxx, a lead byte 0x80-0xBF or
// 0xF8-0xFF, a lead byte 0xF5-0xF7 (beyond U+10FFFF), an encoded surrogate
// (U+D800-U+DFFF) or an overlong form. Like ModSecurity, a 4-byte sequence led
// by 0xF4 is not checked against U+10FFFF, so F4 90 80 80 (U+110000) passes.
size_t utf8CharLength(const u8* p, size_t left) {
  const u8 c = p[0];
  if ((c & 0x80) == 0) return 1;
  size_t len;
  uint32_t cp;
  if ((c & 0xE0) == 0xC0) {
    len = 2;
    cp = c & 0x1F;
  } else if ((c & 0xF0) == 0xE0) {
    len = 3;
    cp = c & 0x0F;
  } else if ((c & 0xF8) == 0xF0) {
    if (c >= 0xF5) return 0;
    len = 4;
    cp = c & 0x07;
  } else {
    return 0;
  }
  if (left < len) return 0;
  for (size_t k = 1; k < len; ++k) {
    if ((p[k] & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (p[k] & 0x3F);
  }
  if (cp >= 0xD800 && cp <= 0xDFFF) return 0;
  static constexpr uint32_t kMinForLength[5] = {0, 0, 0x80, 0x800, 0x10000};
  if (cp < kMinForLength[len]) return 0;
  return len;
}

bool invalidUtf8(std::string_view s) {
  const u8* p = reinterpret_cast<const u8*>(s.data());
  size_t i = 0;
  while (i < s.size()) {
    const size_t n = utf8CharLength(p + i, s.size() - i);
    if (n == 0) return true;
    i += n;
  }
  return false;
}

// The operators whose only input besides the value is a text argument.
bool matchText(OperatorKind kind, std::string_view value, std::string_view arg,
               std::string* capture) {
  switch (kind) {
    case OperatorKind::kContains:
      // std::string::find: the empty argument matches at 0. TX:0 gets the
      // argument, not the surrounding text.
      if (value.find(arg) == std::string_view::npos) return false;
      if (capture != nullptr) capture->assign(arg);
      return true;
    case OperatorKind::kContainsWord:
      return containsWord(value, arg);
    case OperatorKind::kBeginsWith:
      return value.size() >= arg.size() && value.substr(0, arg.size()) == arg;
    case OperatorKind::kEndsWith:
      return value.size() >= arg.size() && value.substr(value.size() - arg.size()) == arg;
    case OperatorKind::kStreq:
      return value == arg;
    case OperatorKind::kWithin:
      // The value is searched for in the argument as one substring: "ET P"
      // is within "GET POST", and an empty value is within anything.
      // Difference: ModSecurity searches with the value's c_str(), so a value
      // with a NUL byte is cut there ("GET\0x" within "GET POST" is true);
      // here the whole value must occur, which closes that bypass.
      if (value.empty()) return true;
      return arg.find(value) != std::string_view::npos;
    case OperatorKind::kEq:
      return stoiOrZero(value) == stoiOrZero(arg);
    case OperatorKind::kGe:
      return atollLike(value) >= atollLike(arg);
    case OperatorKind::kGt:
      return atollLike(value) > atollLike(arg);
    case OperatorKind::kLe:
      return atollLike(value) <= atollLike(arg);
    case OperatorKind::kLt:
      return atollLike(value) < atollLike(arg);
    default:
      return false;
  }
}

bool matchArgumentFree(OperatorKind kind, std::string_view value) {
  switch (kind) {
    case OperatorKind::kValidateUrlEncoding:
      return invalidUrlEncoding(value);
    case OperatorKind::kValidateUtf8Encoding:
      return invalidUtf8(value);
    case OperatorKind::kUnconditionalMatch:
      return true;
    default:  // kNoMatch, and kinds with a compiled argument
      return false;
  }
}

bool isArgumentFree(OperatorKind kind) {
  return kind == OperatorKind::kValidateUrlEncoding ||
         kind == OperatorKind::kValidateUtf8Encoding || kind == OperatorKind::kUnconditionalMatch ||
         kind == OperatorKind::kNoMatch;
}

// "N" or "N-M" with N, M in 0..255, surrounding spaces allowed. ModSecurity
// takes std::stoi of each side (so "1x" is 1) and ignores errors (an item it
// cannot parse is silently dropped, and a lone number above 255 writes past
// its table); here every malformed item is refused instead.
bool parseByte(std::string_view text, int& out) {
  text = trimSpaces(text);
  if (text.empty() || text.size() > 8) return false;
  int v = 0;
  for (char ch : text) {
    if (!isDigit(static_cast<u8>(ch))) return false;
    v = v * 10 + (ch - '0');
  }
  out = v;
  return true;
}

bool parseByteRanges(std::string_view arg, std::array<uint64_t, 4>& bits, std::string* error) {
  auto fail = [&](std::string msg) {
    if (error != nullptr) *error = "@validateByteRange: " + msg;
    return false;
  };
  if (trimSpaces(arg).empty()) return fail("empty argument (want e.g. \"1-255\")");
  size_t start = 0;
  while (start <= arg.size()) {
    size_t comma = arg.find(',', start);
    if (comma == std::string_view::npos) comma = arg.size();
    const std::string_view item = arg.substr(start, comma - start);
    const size_t dash = item.find('-');
    int lo = 0;
    int hi = 0;
    const std::string_view loText = dash == std::string_view::npos ? item : item.substr(0, dash);
    const std::string_view hiText = dash == std::string_view::npos ? item : item.substr(dash + 1);
    if (!parseByte(loText, lo)) {
      return fail("\"" + std::string(trimSpaces(loText)) + "\" is not a number");
    }
    if (!parseByte(hiText, hi)) {
      return fail("\"" + std::string(trimSpaces(hiText)) + "\" is not a number");
    }
    if (lo > 255) return fail("\"" + std::string(trimSpaces(loText)) + "\" is not a byte");
    if (hi > 255) return fail("\"" + std::string(trimSpaces(hiText)) + "\" is not a byte");
    if (lo > hi) {
      return fail("range \"" + std::string(trimSpaces(item)) + "\" has its start after its end");
    }
    for (int b = lo; b <= hi; ++b) bits[b >> 6] |= uint64_t{1} << (b & 63);
    start = comma + 1;
  }
  return true;
}

// One comma-separated list of addresses / CIDRs into `set`, as msc_tree's
// add_ip_from_param (strtok on ',', so empty items are skipped). Host bits
// under the prefix are cleared, as the radix tree does ("10.0.0.1/8" means
// 10.0.0.0/8). Spaces around items are tolerated (ModSecurity would refuse
// them). `where` prefixes the error ("@ipMatch" or "path:line").
bool addAddressList(std::string_view list, l4::CidrSet& set, const std::string& where,
                    std::string* error) {
  size_t start = 0;
  while (start <= list.size()) {
    size_t comma = list.find(',', start);
    if (comma == std::string_view::npos) comma = list.size();
    const std::string_view item = trimSpaces(list.substr(start, comma - start));
    start = comma + 1;
    if (item.empty()) continue;
    auto fail = [&] {
      if (error != nullptr) {
        *error = where + ": \"" + std::string(item) + "\" is not an IPv4/IPv6 address or CIDR";
      }
      return false;
    };
    const size_t slash = item.find('/');
    const std::string_view addrText = item.substr(0, slash);
    l4::IpAddress addr;
    if (!l4::IpAddress::parse(addrText, addr)) return fail();
    const bool writtenAsV6 = addrText.find(':') != std::string_view::npos;
    int prefix = addr.len == 4 ? 32 : 128;
    if (slash != std::string_view::npos) {
      const std::string_view p = item.substr(slash + 1);
      if (p.empty() || p.size() > 3) return fail();
      prefix = 0;
      for (char ch : p) {
        if (!isDigit(static_cast<u8>(ch))) return fail();
        prefix = prefix * 10 + (ch - '0');
      }
      if (prefix > (writtenAsV6 ? 128 : 32)) return fail();
      // An IPv4-mapped IPv6 prefix (::ffff:a.b.c.d/N) comes back as IPv4.
      if (writtenAsV6 && addr.len == 4) {
        if (prefix < 96) return fail();
        prefix -= 96;
      }
    }
    const int bits = addr.len * 8;
    for (int b = prefix; b < bits; ++b) {
      addr.bytes[b / 8] &= static_cast<uint8_t>(~(0x80u >> (b % 8)));
    }
    std::string err;
    if (!set.add(addr.toString() + "/" + std::to_string(prefix), &err)) {
      if (error != nullptr) *error = where + ": \"" + std::string(item) + "\": " + err;
      return false;
    }
  }
  return true;
}

}  // namespace

namespace {
constexpr OperatorKind kImplemented[] = {
    OperatorKind::kContains,          OperatorKind::kContainsWord,
    OperatorKind::kBeginsWith,        OperatorKind::kEndsWith,
    OperatorKind::kStreq,             OperatorKind::kWithin,
    OperatorKind::kEq,                OperatorKind::kGe,
    OperatorKind::kGt,                OperatorKind::kLe,
    OperatorKind::kLt,                OperatorKind::kIpMatch,
    OperatorKind::kIpMatchFromFile,   OperatorKind::kValidateByteRange,
    OperatorKind::kValidateUrlEncoding, OperatorKind::kValidateUtf8Encoding,
    OperatorKind::kUnconditionalMatch, OperatorKind::kNoMatch,
};
}  // namespace

bool implementedHere(OperatorKind kind) {
  for (OperatorKind k : kImplemented) {
    if (k == kind) return true;
  }
  return false;
}

std::optional<OperatorKind> operatorFromName(std::string_view name) {
  for (OperatorKind kind : kImplemented) {
    if (equalsIgnoreCase(name, operatorName(kind))) return kind;
  }
  if (equalsIgnoreCase(name, "ipMatchF")) return OperatorKind::kIpMatchFromFile;
  return std::nullopt;
}

std::string_view operatorName(OperatorKind kind) {
  switch (kind) {
    case OperatorKind::kContains:
      return "contains";
    case OperatorKind::kContainsWord:
      return "containsWord";
    case OperatorKind::kBeginsWith:
      return "beginsWith";
    case OperatorKind::kEndsWith:
      return "endsWith";
    case OperatorKind::kStreq:
      return "streq";
    case OperatorKind::kWithin:
      return "within";
    case OperatorKind::kEq:
      return "eq";
    case OperatorKind::kGe:
      return "ge";
    case OperatorKind::kGt:
      return "gt";
    case OperatorKind::kLe:
      return "le";
    case OperatorKind::kLt:
      return "lt";
    case OperatorKind::kIpMatch:
      return "ipMatch";
    case OperatorKind::kIpMatchFromFile:
      return "ipMatchFromFile";
    case OperatorKind::kValidateByteRange:
      return "validateByteRange";
    case OperatorKind::kValidateUrlEncoding:
      return "validateUrlEncoding";
    case OperatorKind::kValidateUtf8Encoding:
      return "validateUtf8Encoding";
    case OperatorKind::kUnconditionalMatch:
      return "unconditionalMatch";
    case OperatorKind::kNoMatch:
      return "noMatch";
    default:
      break;
  }
  return "unknown";
}

bool operatorTakesMacros(OperatorKind kind) {
  switch (kind) {
    case OperatorKind::kContains:
    case OperatorKind::kContainsWord:
    case OperatorKind::kBeginsWith:
    case OperatorKind::kEndsWith:
    case OperatorKind::kStreq:
    case OperatorKind::kWithin:
    case OperatorKind::kEq:
    case OperatorKind::kGe:
    case OperatorKind::kGt:
    case OperatorKind::kLe:
    case OperatorKind::kLt:
      return true;
    default:
      return false;
  }
}

std::optional<CompiledOperator> CompiledOperator::compile(OperatorKind kind, std::string_view argument,
                                          std::string* error) {
  if (!implementedHere(kind)) {
    if (error != nullptr) *error = "@" + std::string(toString(kind)) + ": not a scalar operator";
    return std::nullopt;
  }
  CompiledOperator op;
  op.kind_ = kind;
  op.argument_.assign(argument);
  op.needsExpansion_ = operatorTakesMacros(kind) && argument.find("%{") != std::string_view::npos;
  switch (kind) {
    case OperatorKind::kValidateByteRange:
      if (!parseByteRanges(argument, op.allowedBytes_, error)) return std::nullopt;
      break;
    case OperatorKind::kIpMatch: {
      auto set = std::make_shared<l4::CidrSet>();
      if (!addAddressList(argument, *set, "@ipMatch", error)) return std::nullopt;
      set->seal();  // size() counts only after seal()
      if (set->empty()) {
        if (error != nullptr) *error = "@ipMatch: empty address list";
        return std::nullopt;
      }
      op.ips_ = std::move(set);
      break;
    }
    case OperatorKind::kIpMatchFromFile: {
      // One or more comma-separated entries per line; blank lines and lines
      // starting with '#' are skipped (ModSecurity would reject a comment).
      // https:// sources, which ModSecurity can download, are not supported.
      std::ifstream in{std::string(argument)};
      if (!in.is_open()) {
        if (error != nullptr) {
          *error = "@ipMatchFromFile: cannot open \"" + std::string(argument) + "\"";
        }
        return std::nullopt;
      }
      auto set = std::make_shared<l4::CidrSet>();
      std::string line;
      size_t lineNo = 0;
      while (std::getline(in, line)) {
        ++lineNo;
        const std::string_view t = trimSpaces(line);
        if (t.empty() || t[0] == '#') continue;
        const std::string where =
            "@ipMatchFromFile: " + std::string(argument) + ":" + std::to_string(lineNo);
        if (!addAddressList(t, *set, where, error)) return std::nullopt;
      }
      if (in.bad()) {
        if (error != nullptr) {
          *error = "@ipMatchFromFile: read error on \"" + std::string(argument) + "\"";
        }
        return std::nullopt;
      }
      set->seal();  // an empty file gives an operator that never matches
      op.ips_ = std::move(set);
      break;
    }
    default:
      break;
  }
  return op;
}

bool CompiledOperator::match(std::string_view value, std::string* capture) const {
  switch (kind_) {
    case OperatorKind::kValidateByteRange:
      // Matches when any byte is outside the allowed set.
      for (size_t i = 0; i < value.size(); ++i) {
        const u8 b = byteAt(value, i);
        if ((allowedBytes_[b >> 6] & (uint64_t{1} << (b & 63))) == 0) return true;
      }
      return false;
    case OperatorKind::kIpMatch:
    case OperatorKind::kIpMatchFromFile: {
      // A value that is not an address literal never matches (ModSecurity's
      // tree lookup fails and the operator returns false).
      l4::IpAddress addr;
      if (!l4::IpAddress::parse(value, addr)) return false;
      return ips_ != nullptr && ips_->contains(addr);
    }
    default:
      if (isArgumentFree(kind_)) return matchArgumentFree(kind_, value);
      return matchText(kind_, value, argument_, capture);
  }
}

bool matchWithArgument(OperatorKind kind, std::string_view value, std::string_view argument,
                       std::string* capture) {
  if (operatorTakesMacros(kind)) return matchText(kind, value, argument, capture);
  if (isArgumentFree(kind)) return matchArgumentFree(kind, value);
  return false;  // ipMatch / ipMatchFromFile / validateByteRange: compile instead
}

}  // namespace moat::waf
