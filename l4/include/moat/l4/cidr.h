// Sets of IPv4 and IPv6 prefixes (allow, deny and trusted-proxy lists, geo
// prefixes on the socket engine).
//
// Built on the control side (allocates), sealed, then read-only and shared by
// every worker through the config snapshot. A lookup costs one binary search
// per distinct prefix length present (typically a handful) and never
// allocates.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace moat::l4 {

struct IpAddress {
  uint8_t bytes[16] = {};
  uint8_t len = 0;  // 4 or 16; 0 = none

  // Parses an IPv4 or IPv6 literal (no brackets, no zone). IPv4-mapped IPv6
  // addresses become IPv4.
  static bool parse(std::string_view text, IpAddress& out);
  // From raw bytes (4 or 16); an IPv4-mapped IPv6 address becomes IPv4.
  static IpAddress fromBytes(const uint8_t* b, size_t len);
  std::string toString() const;
};

class CidrSet {
 public:
  // Adds "10.0.0.0/8", "2001:db8::/32" or a bare address (a host route).
  // Bits below the prefix must be zero ("10.0.0.1/8" is refused: it is
  // almost always a typo). Returns false and sets `err` on bad input.
  bool add(std::string_view cidr, std::string* err);
  // Sorts and deduplicates; call once after the last add() and before
  // contains(). Cost O(n log n).
  void seal();

  // True if any prefix covers the address. Thread-safe once sealed.
  bool contains(const IpAddress& a) const;

  bool empty() const { return count_ == 0; }
  size_t size() const { return count_; }

 private:
  struct V6 {
    uint64_t hi, lo;
    bool operator<(const V6& o) const { return hi != o.hi ? hi < o.hi : lo < o.lo; }
    bool operator==(const V6& o) const { return hi == o.hi && lo == o.lo; }
  };
  std::vector<uint32_t> v4_[33];
  std::vector<V6> v6_[129];
  std::vector<uint8_t> v4Lens_, v6Lens_;  // prefix lengths present, longest first
  size_t count_ = 0;
};

}  // namespace moat::l4
