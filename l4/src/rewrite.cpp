// In-place rewrites; see rewrite.h for the contract of each function.
//
// Every function validates what it needs from `p` and the frame bounds
// before its first write, so a refused rewrite leaves the frame unchanged.
// Caller-supplied addresses are copied to locals first: they may point into
// the frame being rewritten.
#include "moat/l4/rewrite.h"

#include <cstring>

namespace moat::l4 {

namespace {

inline void put16(uint8_t* p, uint16_t v) {
  p[0] = static_cast<uint8_t>(v >> 8);
  p[1] = static_cast<uint8_t>(v);
}
inline void put32(uint8_t* p, uint32_t v) {
  p[0] = static_cast<uint8_t>(v >> 24);
  p[1] = static_cast<uint8_t>(v >> 16);
  p[2] = static_cast<uint8_t>(v >> 8);
  p[3] = static_cast<uint8_t>(v);
}
inline uint16_t get16(const uint8_t* p) { return static_cast<uint16_t>((p[0] << 8) | p[1]); }

inline uint32_t fold(uint64_t s) {
  while (s >> 16) s = (s & 0xffff) + (s >> 16);
  return static_cast<uint32_t>(s);
}

// The frame must hold the whole IP packet p describes (contract check: a
// violated contract is refused, never a wild write).
bool frameHoldsPacket(const Frame& f, const ParsedPacket& p) {
  return f.data != nullptr && f.len >= uint32_t{p.l3Offset} + p.l3Len && p.l3Offset >= 14;
}

// Sets the frame to exactly n bytes, growing into the tailroom if needed.
bool resizeTo(Frame& f, uint32_t n) {
  if (n > f.len) return f.append(n - f.len) != nullptr;
  f.truncate(n);
  return true;
}
bool canResizeTo(const Frame& f, uint32_t n) { return n <= f.len || n - f.len <= f.tailroom; }

void setReplyMacs(uint8_t* eth, const uint8_t dst[6], const uint8_t src[6]) {
  std::memcpy(eth, dst, 6);
  std::memcpy(eth + 6, src, 6);
}

bool ipv4Multicast(const uint8_t* a) { return a[0] >= 224 && a[0] <= 239; }
bool ipv4Broadcast(const uint8_t* a) { return a[0] == 255 && a[1] == 255 && a[2] == 255 && a[3] == 255; }
// Not a single host: 0/8, 127/8, multicast, class E (incl. broadcast).
bool ipv4NotUnicastSource(const uint8_t* a) { return a[0] == 0 || a[0] == 127 || a[0] >= 224; }
bool ipv6Multicast(const uint8_t* a) { return a[0] == 0xff; }
bool ipv6Unspecified(const uint8_t* a) {
  for (int i = 0; i < 16; ++i) {
    if (a[i] != 0) return false;
  }
  return true;
}
bool icmpv4IsError(uint8_t type) {
  return type == 3 || type == 4 || type == 5 || type == 11 || type == 12;
}

// Fibonacci hashing: the top bits of flowHash * 2^64/phi depend on every
// input bit, so even a weak caller hash spreads ports and flow labels.
inline uint64_t spread(uint64_t flowHash) { return flowHash * 0x9e3779b97f4a7c15ULL; }

RewriteStatus encap(Frame& f, const ParsedPacket& p, const EncapParams& e, uint64_t flowHash,
                    bool gue) {
  if ((p.ipVersion != 4 && p.ipVersion != 6) || (e.outerVersion != 4 && e.outerVersion != 6) ||
      !frameHoldsPacket(f, p)) {
    return RewriteStatus::kUnsupported;
  }
  const uint32_t inner = p.l3Len;
  const uint32_t ipHdr = e.outerVersion == 4 ? 20 : 40;
  const uint32_t extra = gue ? 12 : 0;  // UDP + GUE header
  const uint32_t outerTotal = ipHdr + extra + inner;
  if (outerTotal > e.mtu) {
    return (p.ipVersion == 6 || p.dontFragment) ? RewriteStatus::kTooBig
                                                : RewriteStatus::kFragmentationNeeded;
  }
  const bool vlanOut = e.keepVlan && p.hasVlan;
  const uint32_t l2New = vlanOut ? 18 : 14;
  const uint32_t front = l2New + ipHdr + extra;  // bytes before the inner packet
  const uint32_t grow = front - p.l3Offset;      // > 0: front >= 34 > 18
  if (grow > f.headroom) return RewriteStatus::kNoHeadroom;

  uint8_t srcMac[6], dstMac[6], osrc[16], odst[16];
  std::memcpy(srcMac, e.srcMac, 6);
  std::memcpy(dstMac, e.dstMac, 6);
  std::memcpy(osrc, e.outerSrc, 16);
  std::memcpy(odst, e.outerDst, 16);
  const uint8_t innerProto = p.ipVersion == 4 ? kProtoIpip : kProtoIpv6;

  f.truncate(uint32_t{p.l3Offset} + inner);  // drop Ethernet padding
  uint8_t* d = f.prepend(grow);
  setReplyMacs(d, dstMac, srcMac);
  uint32_t o = 12;
  if (vlanOut) {
    put16(d + 12, kEtherTypeVlan);
    put16(d + 14, p.vlanTci);
    o = 16;
  }
  put16(d + o, e.outerVersion == 4 ? kEtherTypeIpv4 : kEtherTypeIpv6);
  uint8_t* ip = d + l2New;
  const uint8_t outerProto = gue ? kProtoUdp : innerProto;
  if (e.outerVersion == 4) {
    ip[0] = 0x45;
    ip[1] = p.tos;
    put16(ip + 2, static_cast<uint16_t>(outerTotal));
    put16(ip + 4, p.ipVersion == 4 ? static_cast<uint16_t>(p.fragId) : 0);
    put16(ip + 6, (p.ipVersion == 6 || p.dontFragment) ? 0x4000 : 0);
    ip[8] = e.ttl;
    ip[9] = outerProto;
    std::memcpy(ip + 12, osrc, 4);
    std::memcpy(ip + 16, odst, 4);
    storeChecksum(ip + 10, ipv4HeaderChecksum(ip, 20));
  } else {
    uint32_t label = static_cast<uint32_t>(spread(flowHash) >> 44);  // 20 bits
    put32(ip, (6u << 28) | (uint32_t{p.tos} << 20) | label);
    put16(ip + 4, static_cast<uint16_t>(extra + inner));
    ip[6] = outerProto;
    ip[7] = e.ttl;
    std::memcpy(ip + 8, osrc, 16);
    std::memcpy(ip + 24, odst, 16);
  }
  if (gue) {
    uint8_t* udp = ip + ipHdr;
    put16(udp, static_cast<uint16_t>(0xc000 | (spread(flowHash) >> 50)));  // 49152 + 14 bits
    put16(udp + 2, e.gueDstPort);
    put16(udp + 4, static_cast<uint16_t>(extra + inner));
    put16(udp + 6, 0);
    udp[8] = 0;  // ver 0, C 0, hlen 0
    udp[9] = innerProto;
    udp[10] = 0;
    udp[11] = 0;
    if (e.outerVersion == 6) setL4Checksum(6, osrc, odst, kProtoUdp, udp, extra + inner);
  }
  return RewriteStatus::kOk;
}

}  // namespace

const char* toString(RewriteStatus s) {
  switch (s) {
    case RewriteStatus::kOk: return "ok";
    case RewriteStatus::kNoHeadroom: return "no_headroom";
    case RewriteStatus::kNoTailroom: return "no_tailroom";
    case RewriteStatus::kTooBig: return "too_big";
    case RewriteStatus::kFragmentationNeeded: return "fragmentation_needed";
    case RewriteStatus::kUnsupported: return "unsupported";
    case RewriteStatus::kSuppressed: return "suppressed";
  }
  return "unknown";
}

uint32_t checksumPartial(const uint8_t* p, size_t n, uint32_t sum) {
  uint64_t s = sum;
  size_t i = 0;
  for (; i + 1 < n; i += 2) s += get16(p + i);
  if (i < n) s += uint32_t{p[i]} << 8;
  return fold(s);
}

uint16_t checksumFinish(uint32_t sum) { return static_cast<uint16_t>(~fold(sum)); }

uint16_t ipv4HeaderChecksum(const uint8_t* hdr, size_t ihlBytes) {
  uint32_t s = checksumPartial(hdr, 10);
  s = checksumPartial(hdr + 12, ihlBytes - 12, s);
  return checksumFinish(s);
}

uint16_t l4Checksum(uint8_t ipVersion, const uint8_t* src, const uint8_t* dst, uint8_t proto,
                    const uint8_t* l4, uint32_t l4Len) {
  uint32_t s = 0;
  if (proto != kProtoIcmp) {
    size_t alen = ipVersion == 4 ? 4 : 16;
    s = checksumPartial(src, alen);
    s = checksumPartial(dst, alen, s);
    s = fold(uint64_t{s} + proto + (l4Len >> 16) + (l4Len & 0xffff));
  }
  return checksumFinish(checksumPartial(l4, l4Len, s));
}

bool setL4Checksum(uint8_t ipVersion, const uint8_t* src, const uint8_t* dst, uint8_t proto,
                   uint8_t* l4, uint32_t l4Len) {
  uint32_t at;
  switch (proto) {
    case kProtoTcp: at = 16; break;
    case kProtoUdp: at = 6; break;
    case kProtoIcmp:
    case kProtoIcmpv6: at = 2; break;
    default: return false;
  }
  if (l4Len < at + 2) return false;
  put16(l4 + at, 0);
  uint16_t c = l4Checksum(ipVersion, src, dst, proto, l4, l4Len);
  if (proto == kProtoUdp && c == 0) c = 0xffff;
  storeChecksum(l4 + at, c);
  return true;
}

uint16_t checksumUpdate16(uint16_t oldChecksum, uint16_t oldWord, uint16_t newWord) {
  uint64_t s = uint32_t{static_cast<uint16_t>(~oldChecksum)} +
               uint32_t{static_cast<uint16_t>(~oldWord)} + newWord;
  return static_cast<uint16_t>(~fold(s));
}

uint16_t checksumUpdateBytes(uint16_t oldChecksum, const uint8_t* oldBytes,
                             const uint8_t* newBytes, size_t n) {
  uint64_t s = static_cast<uint16_t>(~oldChecksum);
  for (size_t i = 0; i + 1 < n; i += 2) {
    s += static_cast<uint16_t>(~get16(oldBytes + i));
    s += get16(newBytes + i);
  }
  return static_cast<uint16_t>(~fold(s));
}

RewriteStatus encapIpip(Frame& f, const ParsedPacket& p, const EncapParams& e, uint64_t flowHash) {
  return encap(f, p, e, flowHash, false);
}

RewriteStatus encapGue(Frame& f, const ParsedPacket& p, const EncapParams& e, uint64_t flowHash) {
  return encap(f, p, e, flowHash, true);
}

RewriteStatus encapIpip(Frame& f, const ParsedPacket& p, const uint8_t outerSrc[16],
                        const uint8_t outerDst[16], uint8_t outerVersion, const uint8_t srcMac[6],
                        const uint8_t dstMac[6], uint16_t mtu, bool keepVlan) {
  EncapParams e;
  e.outerVersion = outerVersion;
  std::memcpy(e.outerSrc, outerSrc, outerVersion == 4 ? 4 : 16);
  std::memcpy(e.outerDst, outerDst, outerVersion == 4 ? 4 : 16);
  std::memcpy(e.srcMac, srcMac, 6);
  std::memcpy(e.dstMac, dstMac, 6);
  e.mtu = mtu;
  e.keepVlan = keepVlan;
  return encap(f, p, e, hashFlow(flowKeyOf(p)), false);
}

RewriteStatus rewriteL2Dsr(Frame& f, const uint8_t srcMac[6], const uint8_t dstMac[6]) {
  if (f.data == nullptr || f.len < 14) return RewriteStatus::kUnsupported;
  uint8_t s[6], d[6];
  std::memcpy(s, srcMac, 6);
  std::memcpy(d, dstMac, 6);
  setReplyMacs(f.data, d, s);
  return RewriteStatus::kOk;
}

RewriteStatus makeIcmpFragNeeded(Frame& f, const ParsedPacket& p, uint16_t mtu,
                                 const uint8_t ourIp[4], const uint8_t ourMac[6]) {
  if (p.ipVersion != 4 || !frameHoldsPacket(f, p)) return RewriteStatus::kUnsupported;
  if ((p.isFragment && !p.isFirstFragment) || (p.proto == kProtoIcmp && icmpv4IsError(p.icmpType)) ||
      ipv4Multicast(p.dst) || ipv4Broadcast(p.dst) || (p.dstMac[0] & 1) ||
      ipv4NotUnicastSource(p.src)) {
    return RewriteStatus::kSuppressed;
  }
  const uint32_t ihl = uint32_t{p.l4Offset} - p.l3Offset;
  const uint32_t body = p.l3Len - ihl;
  const uint32_t quote = ihl + (body < 8 ? body : 8);
  const uint32_t newLen = p.l3Offset + 28 + quote;
  if (!canResizeTo(f, newLen)) return RewriteStatus::kNoTailroom;
  uint8_t ip4[4], mac[6];
  std::memcpy(ip4, ourIp, 4);
  std::memcpy(mac, ourMac, 6);
  resizeTo(f, newLen);
  uint8_t* d = f.data;
  std::memmove(d + p.l3Offset + 28, d + p.l3Offset, quote);
  setReplyMacs(d, p.srcMac, mac);
  uint8_t* ip = d + p.l3Offset;
  ip[0] = 0x45;
  ip[1] = 0xc0;  // precedence "internetwork control", as Linux sends ICMP errors
  put16(ip + 2, static_cast<uint16_t>(28 + quote));
  put32(ip + 4, 0);
  ip[8] = 64;
  ip[9] = kProtoIcmp;
  std::memcpy(ip + 12, ip4, 4);
  std::memcpy(ip + 16, p.src, 4);
  storeChecksum(ip + 10, ipv4HeaderChecksum(ip, 20));
  uint8_t* icmp = ip + 20;
  icmp[0] = 3;
  icmp[1] = 4;
  put16(icmp + 4, 0);
  put16(icmp + 6, mtu);
  setL4Checksum(4, ip + 12, ip + 16, kProtoIcmp, icmp, 8 + quote);
  return RewriteStatus::kOk;
}

RewriteStatus makeIcmpv6PacketTooBig(Frame& f, const ParsedPacket& p, uint32_t mtu,
                                     const uint8_t ourIp[16], const uint8_t ourMac[6]) {
  if (p.ipVersion != 6 || !frameHoldsPacket(f, p)) return RewriteStatus::kUnsupported;
  const bool icmpHeaderSeen = p.proto == kProtoIcmpv6 && !(p.isFragment && !p.isFirstFragment) &&
                              p.payloadOffset != p.l4Offset;
  if ((icmpHeaderSeen && p.icmpType < 128) || ipv6Multicast(p.src) || ipv6Unspecified(p.src)) {
    return RewriteStatus::kSuppressed;
  }
  constexpr uint32_t kMaxQuote = 1280 - 48;  // IPv6 minimum MTU minus our headers
  const uint32_t quote = p.l3Len < kMaxQuote ? p.l3Len : kMaxQuote;
  const uint32_t newLen = p.l3Offset + 48 + quote;
  if (!canResizeTo(f, newLen)) return RewriteStatus::kNoTailroom;
  uint8_t ip6[16], mac[6];
  std::memcpy(ip6, ourIp, 16);
  std::memcpy(mac, ourMac, 6);
  resizeTo(f, newLen);
  uint8_t* d = f.data;
  std::memmove(d + p.l3Offset + 48, d + p.l3Offset, quote);
  setReplyMacs(d, p.srcMac, mac);
  uint8_t* ip = d + p.l3Offset;
  put32(ip, 6u << 28);
  put16(ip + 4, static_cast<uint16_t>(8 + quote));
  ip[6] = kProtoIcmpv6;
  ip[7] = 64;
  std::memcpy(ip + 8, ip6, 16);
  std::memcpy(ip + 24, p.src, 16);
  uint8_t* icmp = ip + 40;
  icmp[0] = 2;
  icmp[1] = 0;
  put32(icmp + 4, mtu);
  setL4Checksum(6, ip + 8, ip + 24, kProtoIcmpv6, icmp, 8 + quote);
  return RewriteStatus::kOk;
}

RewriteStatus makeArpReply(Frame& f, const ParsedPacket& p, const uint8_t ourMac[6]) {
  if (p.ipVersion != 0 || p.etherType != kEtherTypeArp || p.arpOp != 1 || f.data == nullptr ||
      f.len < uint32_t{p.l3Offset} + 28 || p.l3Offset < 14) {
    return RewriteStatus::kUnsupported;
  }
  uint8_t mac[6];
  std::memcpy(mac, ourMac, 6);
  f.truncate(uint32_t{p.l3Offset} + 28);
  uint8_t* d = f.data;
  setReplyMacs(d, p.srcMac, mac);
  uint8_t* a = d + p.l3Offset;
  put16(a + 6, 2);
  std::memcpy(a + 8, mac, 6);
  std::memcpy(a + 14, p.arpTpa, 4);
  std::memcpy(a + 18, p.arpSha, 6);
  std::memcpy(a + 24, p.arpSpa, 4);
  return RewriteStatus::kOk;
}

uint32_t writeArpRequest(uint8_t* buf, uint32_t cap, const uint8_t srcMac[6],
                         const uint8_t srcIp[4], const uint8_t targetIp[4]) {
  if (buf == nullptr || cap < kArpFrameLen) return 0;
  uint8_t mac[6], sip[4], tip[4];
  std::memcpy(mac, srcMac, 6);
  std::memcpy(sip, srcIp, 4);
  std::memcpy(tip, targetIp, 4);
  std::memset(buf, 0, kArpFrameLen);
  std::memset(buf, 0xff, 6);
  std::memcpy(buf + 6, mac, 6);
  put16(buf + 12, kEtherTypeArp);
  uint8_t* a = buf + 14;
  put16(a, 1);
  put16(a + 2, kEtherTypeIpv4);
  a[4] = 6;
  a[5] = 4;
  put16(a + 6, 1);
  std::memcpy(a + 8, mac, 6);
  std::memcpy(a + 14, sip, 4);
  // tha stays zero
  std::memcpy(a + 24, tip, 4);
  return kArpFrameLen;
}

RewriteStatus makeNeighborAdvert(Frame& f, const ParsedPacket& p, const uint8_t ourMac[6]) {
  if (p.ipVersion != 6 || p.proto != kProtoIcmpv6 || p.icmpType != 135 || p.isFragment ||
      p.payloadOffset == p.l4Offset || !frameHoldsPacket(f, p)) {
    return RewriteStatus::kUnsupported;
  }
  const uint32_t newLen = p.l3Offset + 40 + 32;
  if (!canResizeTo(f, newLen)) return RewriteStatus::kNoTailroom;
  uint8_t mac[6];
  std::memcpy(mac, ourMac, 6);
  const bool dad = ipv6Unspecified(p.src);
  static constexpr uint8_t kAllNodes[16] = {0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
  static constexpr uint8_t kAllNodesMac[6] = {0x33, 0x33, 0, 0, 0, 1};
  resizeTo(f, newLen);
  uint8_t* d = f.data;
  setReplyMacs(d, dad ? kAllNodesMac : (p.hasNdpLladdr ? p.ndpLladdr : p.srcMac), mac);
  uint8_t* ip = d + p.l3Offset;
  put32(ip, 6u << 28);
  put16(ip + 4, 32);
  ip[6] = kProtoIcmpv6;
  ip[7] = 255;
  std::memcpy(ip + 8, p.ndpTarget, 16);
  std::memcpy(ip + 24, dad ? kAllNodes : p.src, 16);
  uint8_t* na = ip + 40;
  na[0] = 136;
  na[1] = 0;
  na[4] = static_cast<uint8_t>((dad ? 0 : 0x40) | 0x20);  // S (unless DAD), O
  na[5] = na[6] = na[7] = 0;
  std::memcpy(na + 8, p.ndpTarget, 16);
  na[24] = 2;  // target link-layer address option, 1 x 8 bytes
  na[25] = 1;
  std::memcpy(na + 26, mac, 6);
  setL4Checksum(6, ip + 8, ip + 24, kProtoIcmpv6, na, 32);
  return RewriteStatus::kOk;
}

uint32_t writeNeighborSolicit(uint8_t* buf, uint32_t cap, const uint8_t srcMac[6],
                              const uint8_t srcIp6[16], const uint8_t targetIp6[16]) {
  if (buf == nullptr || cap < kNeighborSolicitLen) return 0;
  uint8_t mac[6], sip[16], tip[16];
  std::memcpy(mac, srcMac, 6);
  std::memcpy(sip, srcIp6, 16);
  std::memcpy(tip, targetIp6, 16);
  std::memset(buf, 0, kNeighborSolicitLen);
  // Solicited-node multicast ff02::1:ffXX:XXXX (RFC 4291 2.7.1) and its MAC
  // 33:33:ff:XX:XX:XX (RFC 2464 7).
  uint8_t group[16] = {0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, tip[13], tip[14], tip[15]};
  const uint8_t groupMac[6] = {0x33, 0x33, 0xff, tip[13], tip[14], tip[15]};
  setReplyMacs(buf, groupMac, mac);
  put16(buf + 12, kEtherTypeIpv6);
  uint8_t* ip = buf + 14;
  put32(ip, 6u << 28);
  put16(ip + 4, 32);
  ip[6] = kProtoIcmpv6;
  ip[7] = 255;
  std::memcpy(ip + 8, sip, 16);
  std::memcpy(ip + 24, group, 16);
  uint8_t* ns = ip + 40;
  ns[0] = 135;
  std::memcpy(ns + 8, tip, 16);
  ns[24] = 1;  // source link-layer address option
  ns[25] = 1;
  std::memcpy(ns + 26, mac, 6);
  setL4Checksum(6, ip + 8, ip + 24, kProtoIcmpv6, ns, 32);
  return kNeighborSolicitLen;
}

RewriteStatus makeTcpReset(Frame& f, const ParsedPacket& p, const uint8_t ourMac[6]) {
  if ((p.ipVersion != 4 && p.ipVersion != 6) || p.proto != kProtoTcp || !p.hasPorts ||
      p.isFragment || !frameHoldsPacket(f, p)) {
    return RewriteStatus::kUnsupported;
  }
  if (p.tcpFlags & kTcpRst) return RewriteStatus::kSuppressed;
  uint32_t seq, ack;
  uint8_t flags;
  if (p.tcpFlags & kTcpAck) {
    seq = p.tcpAck;
    ack = 0;
    flags = kTcpRst;
  } else {
    seq = 0;
    ack = p.tcpSeq + p.payloadLen + ((p.tcpFlags & kTcpSyn) ? 1 : 0) +
          ((p.tcpFlags & kTcpFin) ? 1 : 0);
    flags = kTcpRst | kTcpAck;
  }
  const uint32_t ipHdr = p.ipVersion == 4 ? 20 : 40;
  const uint32_t newLen = p.l3Offset + ipHdr + 20;  // <= f.len: the segment had both
  uint8_t mac[6];
  std::memcpy(mac, ourMac, 6);
  f.truncate(newLen);
  uint8_t* d = f.data;
  setReplyMacs(d, p.srcMac, mac);
  uint8_t* ip = d + p.l3Offset;
  const uint8_t* rsrc;
  const uint8_t* rdst;
  if (p.ipVersion == 4) {
    ip[0] = 0x45;
    ip[1] = 0;
    put16(ip + 2, 40);
    put16(ip + 4, 0);
    put16(ip + 6, 0x4000);
    ip[8] = 64;
    ip[9] = kProtoTcp;
    std::memcpy(ip + 12, p.dst, 4);
    std::memcpy(ip + 16, p.src, 4);
    storeChecksum(ip + 10, ipv4HeaderChecksum(ip, 20));
    rsrc = ip + 12;
    rdst = ip + 16;
  } else {
    put32(ip, 6u << 28);
    put16(ip + 4, 20);
    ip[6] = kProtoTcp;
    ip[7] = 64;
    std::memcpy(ip + 8, p.dst, 16);
    std::memcpy(ip + 24, p.src, 16);
    rsrc = ip + 8;
    rdst = ip + 24;
  }
  uint8_t* tcp = ip + ipHdr;
  put16(tcp, p.dstPort);
  put16(tcp + 2, p.srcPort);
  put32(tcp + 4, seq);
  put32(tcp + 8, ack);
  tcp[12] = 5 << 4;
  tcp[13] = flags;
  put16(tcp + 14, 0);  // window
  put16(tcp + 18, 0);  // urgent pointer
  setL4Checksum(p.ipVersion, rsrc, rdst, kProtoTcp, tcp, 20);
  return RewriteStatus::kOk;
}

RewriteStatus makeIcmpEchoReply(Frame& f, const ParsedPacket& p, const uint8_t ourMac[6]) {
  const bool v4 = p.ipVersion == 4 && p.proto == kProtoIcmp && p.icmpType == 8;
  const bool v6 = p.ipVersion == 6 && p.proto == kProtoIcmpv6 && p.icmpType == 128;
  if ((!v4 && !v6) || p.isFragment || p.payloadOffset == p.l4Offset || !frameHoldsPacket(f, p)) {
    return RewriteStatus::kUnsupported;
  }
  if (v4 ? (ipv4Multicast(p.dst) || ipv4Broadcast(p.dst)) : ipv6Multicast(p.dst)) {
    return RewriteStatus::kSuppressed;
  }
  const uint32_t ipHdr = v4 ? 20 : 40;
  const uint32_t oldHdr = uint32_t{p.l4Offset} - p.l3Offset;  // with options / extensions
  const uint32_t icmpLen = p.l3Len - oldHdr;
  uint8_t mac[6];
  std::memcpy(mac, ourMac, 6);
  uint8_t* d = f.data;
  uint8_t* ip = d + p.l3Offset;
  if (oldHdr != ipHdr) std::memmove(ip + ipHdr, d + p.l4Offset, icmpLen);
  f.truncate(p.l3Offset + ipHdr + icmpLen);
  setReplyMacs(d, p.srcMac, mac);
  uint8_t* icmp = ip + ipHdr;
  if (v4) {
    ip[0] = 0x45;
    ip[1] = p.tos;
    put16(ip + 2, static_cast<uint16_t>(ipHdr + icmpLen));
    put16(ip + 4, static_cast<uint16_t>(p.fragId));
    put16(ip + 6, 0);
    ip[8] = 64;
    ip[9] = kProtoIcmp;
    std::memcpy(ip + 12, p.dst, 4);
    std::memcpy(ip + 16, p.src, 4);
    storeChecksum(ip + 10, ipv4HeaderChecksum(ip, 20));
  } else {
    put32(ip, (6u << 28) | (uint32_t{p.tos} << 20));
    put16(ip + 4, static_cast<uint16_t>(icmpLen));
    ip[6] = kProtoIcmpv6;
    ip[7] = 64;
    std::memcpy(ip + 8, p.dst, 16);
    std::memcpy(ip + 24, p.src, 16);
  }
  // Type changes 8 -> 0 / 128 -> 129; the swapped pseudo-header sums the
  // same, so an incremental update keeps a (wrong) request checksum wrong.
  const uint16_t oldWord = get16(icmp);
  icmp[0] = v4 ? 0 : 129;
  storeChecksum(icmp + 2, checksumUpdate16(get16(icmp + 2), oldWord, get16(icmp)));
  return RewriteStatus::kOk;
}

}  // namespace moat::l4
