#include "moat/l7/proxy_protocol.h"

#include <arpa/inet.h>

#include <cstring>
#include <string_view>

namespace moat::l7 {

namespace {

constexpr unsigned char kV2Sig[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                      0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};

ProxyHeaderStatus fail(ProxyHeader& out, const char* why) {
  out.error = why;
  return ProxyHeaderStatus::kError;
}

bool parsePort(std::string_view s, uint16_t& port) {
  if (s.empty() || s.size() > 5 || (s.size() > 1 && s[0] == '0')) return false;
  uint32_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + static_cast<uint32_t>(c - '0');
  }
  if (v > 65535) return false;
  port = static_cast<uint16_t>(v);
  return true;
}

ProxyHeaderStatus parseV1(const char* data, size_t len, ProxyHeader& out) {
  const char* crlf = nullptr;
  for (size_t i = 0; i + 1 < len && i + 2 <= kMaxProxyHeaderV1; ++i) {
    if (data[i] == '\r' && data[i + 1] == '\n') {
      crlf = data + i;
      break;
    }
  }
  if (crlf == nullptr) {
    return len >= kMaxProxyHeaderV1 ? fail(out, "PROXY v1 line longer than 107 bytes")
                                    : ProxyHeaderStatus::kIncomplete;
  }
  std::string_view line(data, static_cast<size_t>(crlf - data));
  out.length = line.size() + 2;
  std::string_view f[6];
  size_t n = 0;
  while (!line.empty() && n < 6) {
    size_t sp = line.find(' ');
    f[n++] = line.substr(0, sp);
    if (sp == std::string_view::npos) {
      line = {};
    } else {
      line.remove_prefix(sp + 1);
      if (line.empty()) return fail(out, "PROXY v1 line ends in a space");
    }
  }
  if (!line.empty()) return fail(out, "PROXY v1 line has too many fields");
  if (n >= 2 && f[1] == "UNKNOWN") {
    out.hasAddress = false;
    return ProxyHeaderStatus::kDone;
  }
  if (n != 6) return fail(out, "PROXY v1 line needs 6 fields");
  int family = f[1] == "TCP4" ? AF_INET : f[1] == "TCP6" ? AF_INET6 : 0;
  if (family == 0) return fail(out, "PROXY v1 protocol is not TCP4, TCP6 or UNKNOWN");
  char buf[64];
  uint8_t dst[16];
  for (int i = 2; i <= 3; ++i) {
    if (f[i].empty() || f[i].size() >= sizeof buf) return fail(out, "PROXY v1 bad address");
    std::memcpy(buf, f[i].data(), f[i].size());
    buf[f[i].size()] = 0;
    if (inet_pton(family, buf, i == 2 ? out.src : dst) != 1) return fail(out, "PROXY v1 bad address");
  }
  uint16_t dport = 0;
  if (!parsePort(f[4], out.srcPort) || !parsePort(f[5], dport)) return fail(out, "PROXY v1 bad port");
  out.srcLen = family == AF_INET ? 4 : 16;
  out.hasAddress = true;
  return ProxyHeaderStatus::kDone;
}

ProxyHeaderStatus parseV2(const unsigned char* p, size_t len, ProxyHeader& out) {
  if (len < 16) return ProxyHeaderStatus::kIncomplete;
  if ((p[12] >> 4) != 2) return fail(out, "PROXY v2 version is not 2");
  unsigned cmd = p[12] & 0x0F;
  if (cmd > 1) return fail(out, "PROXY v2 command is not LOCAL or PROXY");
  size_t body = (static_cast<size_t>(p[14]) << 8) | p[15];
  if (len < 16 + body) return ProxyHeaderStatus::kIncomplete;
  out.length = 16 + body;
  if (cmd == 0) {  // LOCAL: health check from the proxy itself
    out.hasAddress = false;
    return ProxyHeaderStatus::kDone;
  }
  unsigned family = p[13] >> 4, transport = p[13] & 0x0F;
  if (family == 1) {  // AF_INET: src, dst, sport, dport
    if (body < 12) return fail(out, "PROXY v2 IPv4 block too short");
    std::memcpy(out.src, p + 16, 4);
    out.srcLen = 4;
    out.srcPort = static_cast<uint16_t>((p[24] << 8) | p[25]);
  } else if (family == 2) {
    if (body < 36) return fail(out, "PROXY v2 IPv6 block too short");
    std::memcpy(out.src, p + 16, 16);
    out.srcLen = 16;
    out.srcPort = static_cast<uint16_t>((p[48] << 8) | p[49]);
  } else {
    out.hasAddress = false;  // UNSPEC or AF_UNIX: keep the peer
    return ProxyHeaderStatus::kDone;
  }
  if (transport != 1 && transport != 2) {
    out.hasAddress = false;
    return ProxyHeaderStatus::kDone;
  }
  out.hasAddress = true;
  return ProxyHeaderStatus::kDone;
}

}  // namespace

ProxyHeaderStatus parseProxyHeader(const char* data, size_t len, ProxyHeader& out) {
  out = ProxyHeader{};
  if (len == 0) return ProxyHeaderStatus::kIncomplete;
  const auto* p = reinterpret_cast<const unsigned char*>(data);
  size_t sigLen = len < 12 ? len : 12;
  if (std::memcmp(p, kV2Sig, sigLen) == 0) {
    return len < 12 ? ProxyHeaderStatus::kIncomplete : parseV2(p, len, out);
  }
  static constexpr std::string_view kV1 = "PROXY ";
  size_t v1Len = len < kV1.size() ? len : kV1.size();
  if (std::memcmp(data, kV1.data(), v1Len) == 0) {
    return len < kV1.size() ? ProxyHeaderStatus::kIncomplete : parseV1(data, len, out);
  }
  return fail(out, "connection did not start with a PROXY protocol header");
}

}  // namespace moat::l7
