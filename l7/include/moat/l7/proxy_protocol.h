// PROXY protocol (HAProxy's spec, versions 1 and 2): the header a trusted
// load balancer in front of Moat sends first on a connection to say who the
// client really is.
//
// Pure parsing, no allocation; the worker calls it on the first bytes of a
// connection of a listener with "proxyProtocol": true, and only believes it
// when the peer is a trusted proxy (rateLimit.trustedProxies).
#pragma once

#include <cstddef>
#include <cstdint>

namespace moat::l7 {

enum class ProxyHeaderStatus : uint8_t { kIncomplete, kDone, kError };

struct ProxyHeader {
  // False for "PROXY UNKNOWN" (v1) and the LOCAL command or an unsupported
  // family (v2): the connection's own peer address stands.
  bool hasAddress = false;
  uint8_t srcLen = 0;  // 4 or 16
  uint8_t src[16] = {};
  uint16_t srcPort = 0;
  size_t length = 0;  // bytes the header occupied (kDone)
  const char* error = nullptr;  // kError: a short reason
};

// Parses a header at the start of data[0..len). kIncomplete: send more
// (never for more than 107 bytes of v1 or 16+65535 of v2, so callers bound
// what they hold with kMaxProxyHeader).
ProxyHeaderStatus parseProxyHeader(const char* data, size_t len, ProxyHeader& out);

inline constexpr size_t kMaxProxyHeaderV1 = 107;
inline constexpr size_t kMaxProxyHeader = 16 + 65535;

}  // namespace moat::l7
