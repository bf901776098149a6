// The L4 5-tuple shared by the parser, the per-core flow table and Maglev.
//
// Light header (no allocation, nothing heavy included): any stage may include
// it. A FlowKey is plain bytes: 40 bytes, no implicit padding, every byte
// defined (value-initialise it: `FlowKey k{};`), so it can be compared with
// memcmp and hashed as raw words.
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

namespace moat::l4 {

struct FlowKey {
  uint8_t src[16] = {};   // IPv4 in src[0..3] (network order), rest zero
  uint8_t dst[16] = {};   // same layout as src
  uint16_t srcPort = 0;   // host order; 0 for protocols without ports
  uint16_t dstPort = 0;   // host order; 0 for protocols without ports
  uint8_t proto = 0;      // IP protocol number (6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6)
  uint8_t ipVersion = 0;  // 4 or 6
  uint8_t reserved[2] = {};  // explicit padding: always zero

  // Same flow seen from the other direction (addresses and ports swapped).
  FlowKey reversed() const {
    FlowKey r = *this;
    std::memcpy(r.src, dst, 16);
    std::memcpy(r.dst, src, 16);
    r.srcPort = dstPort;
    r.dstPort = srcPort;
    return r;
  }

  // Byte-wise equality; relies on `reserved` staying zero.
  bool operator==(const FlowKey& o) const { return std::memcmp(this, &o, sizeof(FlowKey)) == 0; }
  bool operator!=(const FlowKey& o) const { return !(*this == o); }
};

static_assert(sizeof(FlowKey) == 40, "FlowKey must have no implicit padding");
static_assert(std::has_unique_object_representations_v<FlowKey>);
static_assert(std::is_trivially_copyable_v<FlowKey>);

namespace flow_detail {
inline uint64_t loadLe64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);  // one load (a byte loop here compiled to eight under GCC 12)
  if constexpr (std::endian::native == std::endian::big) v = __builtin_bswap64(v);
  return v;
}
inline uint64_t rotl64(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
inline uint64_t fmix64(uint64_t k) {  // MurmurHash3 finaliser: full avalanche
  k ^= k >> 33;
  k *= 0xff51afd7ed558ccdULL;
  k ^= k >> 33;
  k *= 0xc4ceb9fe1a85ec53ULL;
  k ^= k >> 33;
  return k;
}
}  // namespace flow_detail

// 64-bit hash of a FlowKey. Cost: 5 word loads and ~25 integer ops, no
// branches, no table. Deliberately a portable multiply-mix hash, not CRC32C:
// the value must be identical on every build and every machine (two load
// balancers, or one restarted, must agree so Maglev keeps sending a flow to
// the same backend), and CRC32C would depend on -msse4.2 / ARM CRC
// availability and gives only 32 bits. Not keyed: not meant to resist an
// attacker choosing keys to collide (the flow table bounds its probes).
inline uint64_t hashFlow(const FlowKey& k) {
  using namespace flow_detail;
  const uint8_t* p = reinterpret_cast<const uint8_t*>(&k);
  uint64_t h = 0x243f6a8885a308d3ULL ^ sizeof(FlowKey);
  for (size_t i = 0; i < sizeof(FlowKey); i += 8) {
    uint64_t w = loadLe64(p + i);
    w *= 0x87c37b91114253d5ULL;
    w = rotl64(w, 31);
    w *= 0x4cf5ad432745937fULL;
    h ^= w;
    h = rotl64(h, 27) * 5 + 0x52dce729;
  }
  return fmix64(h);
}

// Convenience for tests and control code: an IPv4 key from host-order
// addresses (10.0.0.1 == 0x0a000001).
inline FlowKey makeFlowKeyV4(uint32_t src, uint32_t dst, uint16_t srcPort, uint16_t dstPort,
                             uint8_t proto) {
  FlowKey k{};
  for (int i = 0; i < 4; ++i) {
    k.src[i] = static_cast<uint8_t>(src >> (24 - 8 * i));
    k.dst[i] = static_cast<uint8_t>(dst >> (24 - 8 * i));
  }
  k.srcPort = srcPort;
  k.dstPort = dstPort;
  k.proto = proto;
  k.ipVersion = 4;
  return k;
}

}  // namespace moat::l4
