// ASCII case helpers shared by the WAF sources (internal, not installed).
// Locale-free, allocation-free, safe from any thread.
#pragma once

#include <string_view>

namespace moat::waf::detail {

inline char lowerAscii(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c + 32) : c; }

// Case-insensitive equality of ASCII text (other bytes compare exactly).
inline bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (lowerAscii(a[i]) != lowerAscii(b[i])) return false;
  }
  return true;
}

}  // namespace moat::waf::detail
