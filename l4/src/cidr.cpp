#include "moat/l4/cidr.h"

#include <arpa/inet.h>

#include <algorithm>
#include <charconv>
#include <cstring>

namespace moat::l4 {

namespace {

uint32_t v4Word(const uint8_t* b) {
  return (static_cast<uint32_t>(b[0]) << 24) | (static_cast<uint32_t>(b[1]) << 16) |
         (static_cast<uint32_t>(b[2]) << 8) | b[3];
}

uint64_t beWord(const uint8_t* b) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = (v << 8) | b[i];
  return v;
}

uint32_t mask4(unsigned len) { return len == 0 ? 0 : ~0u << (32 - len); }

void mask6(unsigned len, uint64_t& hi, uint64_t& lo) {
  if (len <= 64) {
    hi &= len == 0 ? 0 : ~0ull << (64 - len);
    lo = 0;
  } else {
    lo &= ~0ull << (128 - len);
  }
}

}  // namespace

IpAddress IpAddress::fromBytes(const uint8_t* b, size_t len) {
  IpAddress a;
  static constexpr uint8_t kMapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  if (len == 16 && std::memcmp(b, kMapped, 12) == 0) {
    std::memcpy(a.bytes, b + 12, 4);
    a.len = 4;
  } else if (len == 4 || len == 16) {
    std::memcpy(a.bytes, b, len);
    a.len = static_cast<uint8_t>(len);
  }
  return a;
}

bool IpAddress::parse(std::string_view text, IpAddress& out) {
  char buf[INET6_ADDRSTRLEN + 1];
  if (text.empty() || text.size() >= sizeof(buf)) return false;
  std::memcpy(buf, text.data(), text.size());
  buf[text.size()] = 0;
  uint8_t b[16];
  if (inet_pton(AF_INET, buf, b) == 1) {
    out = fromBytes(b, 4);
    return true;
  }
  if (inet_pton(AF_INET6, buf, b) == 1) {
    out = fromBytes(b, 16);
    return true;
  }
  return false;
}

std::string IpAddress::toString() const {
  char buf[INET6_ADDRSTRLEN] = {};
  if (len == 4) inet_ntop(AF_INET, bytes, buf, sizeof(buf));
  if (len == 16) inet_ntop(AF_INET6, bytes, buf, sizeof(buf));
  return buf;
}

bool CidrSet::add(std::string_view cidr, std::string* err) {
  auto fail = [&](const std::string& m) {
    if (err != nullptr) *err = "\"" + std::string(cidr) + "\": " + m;
    return false;
  };
  std::string_view addr = cidr;
  int len = -1;
  if (size_t slash = cidr.find('/'); slash != std::string_view::npos) {
    addr = cidr.substr(0, slash);
    std::string_view ls = cidr.substr(slash + 1);
    auto [p, ec] = std::from_chars(ls.data(), ls.data() + ls.size(), len);
    if (ec != std::errc() || p != ls.data() + ls.size() || ls.empty()) {
      return fail("prefix length is not a number");
    }
  }
  // Reject v4-mapped v6 text so "::ffff:0:0/96" is not silently a v4 /96.
  uint8_t raw[16];
  std::string a(addr);
  bool v6 = a.find(':') != std::string::npos;
  if (inet_pton(v6 ? AF_INET6 : AF_INET, a.c_str(), raw) != 1) {
    return fail(v6 ? "not an IPv6 address" : "not an IPv4 address");
  }
  if (!v6) {
    if (len < 0) len = 32;
    if (len > 32) return fail("an IPv4 prefix length is 0-32");
    uint32_t w = v4Word(raw);
    if ((w & ~mask4(static_cast<unsigned>(len))) != 0) {
      return fail("address has bits set beyond the /" + std::to_string(len) + " prefix");
    }
    v4_[len].push_back(w);
  } else {
    if (len < 0) len = 128;
    if (len > 128) return fail("an IPv6 prefix length is 0-128");
    uint64_t hi = beWord(raw), lo = beWord(raw + 8), mh = hi, ml = lo;
    mask6(static_cast<unsigned>(len), mh, ml);
    if (mh != hi || ml != lo) {
      return fail("address has bits set beyond the /" + std::to_string(len) + " prefix");
    }
    v6_[len].push_back(V6{hi, lo});
  }
  return true;
}

void CidrSet::seal() {
  count_ = 0;
  v4Lens_.clear();
  v6Lens_.clear();
  for (int l = 32; l >= 0; --l) {
    auto& v = v4_[l];
    std::sort(v.begin(), v.end());
    v.erase(std::unique(v.begin(), v.end()), v.end());
    if (!v.empty()) v4Lens_.push_back(static_cast<uint8_t>(l));
    count_ += v.size();
  }
  for (int l = 128; l >= 0; --l) {
    auto& v = v6_[l];
    std::sort(v.begin(), v.end());
    v.erase(std::unique(v.begin(), v.end()), v.end());
    if (!v.empty()) v6Lens_.push_back(static_cast<uint8_t>(l));
    count_ += v.size();
  }
}

bool CidrSet::contains(const IpAddress& a) const {
  if (a.len == 4) {
    uint32_t w = v4Word(a.bytes);
    for (uint8_t l : v4Lens_) {
      if (std::binary_search(v4_[l].begin(), v4_[l].end(), w & mask4(l))) return true;
    }
  } else if (a.len == 16) {
    for (uint8_t l : v6Lens_) {
      uint64_t hi = beWord(a.bytes), lo = beWord(a.bytes + 8);
      mask6(l, hi, lo);
      if (std::binary_search(v6_[l].begin(), v6_[l].end(), V6{hi, lo})) return true;
    }
  }
  return false;
}

}  // namespace moat::l4
