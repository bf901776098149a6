// Frame parser; see packet.h for the accepted shapes and the decisions.
//
// Every read goes through a bounds check against an explicit end offset
// (`end` is the end of the IP packet once known, before that the frame);
// helpers read big-endian fields by byte so unaligned input is fine.
#include "moat/l4/packet.h"

#include <cstring>

namespace moat::l4 {

namespace {

inline uint16_t be16(const uint8_t* p) { return static_cast<uint16_t>((p[0] << 8) | p[1]); }
inline uint32_t be32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | p[3];
}

constexpr uint8_t kExtHopByHop = 0;
constexpr uint8_t kExtRouting = 43;
constexpr uint8_t kExtFragment = 44;
constexpr uint8_t kExtAh = 51;
constexpr uint8_t kExtDestOpts = 60;

bool ipv4HeaderChecksumOk(const uint8_t* h, uint32_t n) {
  uint32_t sum = 0;
  for (uint32_t i = 0; i < n; i += 2) sum += be16(h + i);
  while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
  return sum == 0xffff;
}

bool isIcmpv4Error(uint8_t type) { return type == 3 || type == 11 || type == 12; }
bool isIcmpv6Error(uint8_t type) { return type >= 1 && type <= 4; }
bool protoHasPorts(uint8_t proto) { return proto == kProtoTcp || proto == kProtoUdp; }

struct Ipv6Walk {
  uint8_t proto = 0;
  uint32_t l4 = 0;  // offset after the last extension header
  uint8_t count = 0;
  bool fragment = false;
  bool firstFragment = false;
  uint16_t fragOffset = 0;
  uint32_t fragId = 0;
};

// Walks IPv6 extension headers starting at `off` (just after the fixed
// header) up to `end`. Stops at the first non-extension protocol or at a
// non-first fragment (what follows is not a header).
ParseStatus walkIpv6Ext(const uint8_t* d, uint32_t off, uint32_t end, uint8_t next, Ipv6Walk& w) {
  w.proto = next;
  for (;;) {
    if (next != kExtHopByHop && next != kExtRouting && next != kExtFragment && next != kExtAh &&
        next != kExtDestOpts) {
      break;
    }
    if (next == kExtHopByHop && w.count != 0) return ParseStatus::kBadIpv6Ext;
    if (w.count == kMaxIpv6ExtHeaders) return ParseStatus::kTooManyIpv6Ext;
    if (end - off < 8) return ParseStatus::kBadIpv6Ext;
    const uint8_t* h = d + off;
    uint32_t hlen;
    if (next == kExtFragment) {
      hlen = 8;
    } else if (next == kExtAh) {
      hlen = (uint32_t{h[1]} + 2) * 4;
    } else {
      hlen = (uint32_t{h[1]} + 1) * 8;
    }
    if (end - off < hlen) return ParseStatus::kBadIpv6Ext;
    ++w.count;
    uint8_t after = h[0];
    if (next == kExtFragment) {
      uint16_t offMf = be16(h + 2);
      uint16_t fragOff = static_cast<uint16_t>(offMf & 0xfff8);
      bool more = (offMf & 1) != 0;
      if (fragOff != 0 || more) {
        w.fragment = true;
        w.fragOffset = fragOff;
        w.fragId = be32(h + 4);
        w.firstFragment = fragOff == 0;
      }
      if (fragOff != 0) {  // the rest is payload continuation, not headers
        off += hlen;
        w.proto = after;
        w.l4 = off;
        return ParseStatus::kOk;
      }
    }
    off += hlen;
    next = after;
    w.proto = next;
  }
  w.l4 = off;
  return ParseStatus::kOk;
}

// Parses the IP packet quoted by an ICMP error at [off, end): an IP header
// of `version` and the first 4 bytes of its L4 header when TCP/UDP. The
// quote is normally cut, so the inner length fields are not checked.
bool parseInner(const uint8_t* d, uint32_t off, uint32_t end, uint8_t version, FlowKey& k) {
  k = FlowKey{};
  k.ipVersion = version;
  uint32_t l4;
  bool ports;
  if (version == 4) {
    if (end - off < 20) return false;
    const uint8_t* h = d + off;
    if ((h[0] >> 4) != 4) return false;
    uint32_t ihl = uint32_t{h[0] & 0x0fu} * 4;
    if (ihl < 20 || end - off < ihl) return false;
    k.proto = h[9];
    std::memcpy(k.src, h + 12, 4);
    std::memcpy(k.dst, h + 16, 4);
    l4 = off + ihl;
    ports = (be16(h + 6) & 0x1fff) == 0;  // not a non-first fragment
  } else {
    if (end - off < 40) return false;
    const uint8_t* h = d + off;
    if ((h[0] >> 4) != 6) return false;
    std::memcpy(k.src, h + 8, 16);
    std::memcpy(k.dst, h + 24, 16);
    Ipv6Walk w;
    if (walkIpv6Ext(d, off + 40, end, h[6], w) != ParseStatus::kOk) return false;
    k.proto = w.proto;
    l4 = w.l4;
    ports = !(w.fragment && !w.firstFragment);
  }
  if (ports && protoHasPorts(k.proto)) {
    if (end - l4 < 4) return false;
    k.srcPort = be16(d + l4);
    k.dstPort = be16(d + l4 + 2);
  }
  return true;
}

ParseStatus parseArp(const uint8_t* d, uint32_t off, uint32_t len, ParsedPacket& out) {
  if (len - off < 28) return ParseStatus::kTruncatedArp;
  const uint8_t* a = d + off;
  if (be16(a) != 1 || be16(a + 2) != kEtherTypeIpv4 || a[4] != 6 || a[5] != 4) {
    return ParseStatus::kBadArp;
  }
  out.arpOp = be16(a + 6);
  if (out.arpOp != 1 && out.arpOp != 2) return ParseStatus::kBadArp;
  std::memcpy(out.arpSha, a + 8, 6);
  std::memcpy(out.arpSpa, a + 14, 4);
  std::memcpy(out.arpTha, a + 18, 6);
  std::memcpy(out.arpTpa, a + 24, 4);
  out.l4Offset = static_cast<uint16_t>(off + 28);
  out.payloadOffset = out.l4Offset;
  return ParseStatus::kOk;
}

// NS/NA body at [off, end): 4 bytes flags/reserved after the ICMPv6 header
// start, target, options (RFC 4861 4.3, 4.4, 4.6).
ParseStatus parseNdp(const uint8_t* d, uint32_t off, uint32_t end, ParsedPacket& out) {
  if (out.ttl != 255 || out.icmpCode != 0 || end - off < 24) return ParseStatus::kBadNdp;
  if (out.icmpType == 136) out.ndpFlags = d[off + 4];
  std::memcpy(out.ndpTarget, d + off + 8, 16);
  uint8_t wanted = out.icmpType == 135 ? 1 : 2;  // source / target link-layer address
  uint32_t o = off + 24;
  while (o < end) {
    if (end - o < 2) return ParseStatus::kBadNdp;
    uint32_t olen = uint32_t{d[o + 1]} * 8;
    if (olen == 0 || end - o < olen) return ParseStatus::kBadNdp;
    if (d[o] == wanted && olen >= 8 && !out.hasNdpLladdr) {
      out.hasNdpLladdr = true;
      std::memcpy(out.ndpLladdr, d + o + 2, 6);
    }
    o += olen;
  }
  return ParseStatus::kOk;
}

// L4 at [off, end) for out.proto. `first` is false for a non-first fragment.
ParseStatus parseL4(const uint8_t* d, uint32_t off, uint32_t end, ParsedPacket& out) {
  out.l4Offset = static_cast<uint16_t>(off);
  out.payloadOffset = static_cast<uint16_t>(off);
  out.payloadLen = end - off;
  if (out.isFragment && !out.isFirstFragment) return ParseStatus::kOk;
  const uint8_t* h = d + off;
  uint32_t avail = end - off;
  uint32_t hlen = 0;
  switch (out.proto) {
    case kProtoTcp: {
      if (avail < 20) return ParseStatus::kTruncatedTcp;
      hlen = uint32_t{static_cast<uint8_t>(h[12] >> 4)} * 4;
      if (hlen < 20 || hlen > avail) return ParseStatus::kBadTcpOffset;
      out.hasPorts = true;
      out.srcPort = be16(h);
      out.dstPort = be16(h + 2);
      out.tcpSeq = be32(h + 4);
      out.tcpAck = be32(h + 8);
      out.tcpFlags = h[13];
      out.tcpWindow = be16(h + 14);
      break;
    }
    case kProtoUdp: {
      if (avail < 8) return ParseStatus::kTruncatedUdp;
      uint32_t ulen = be16(h + 4);
      // A first fragment carries only part of the datagram UDP length covers.
      if (ulen < 8 || (!out.isFragment && ulen > avail)) return ParseStatus::kBadUdpLength;
      hlen = 8;
      out.hasPorts = true;
      out.srcPort = be16(h);
      out.dstPort = be16(h + 2);
      if (!out.isFragment) end = off + ulen;  // bytes past UDP length are ignored
      break;
    }
    case kProtoIcmp:
    case kProtoIcmpv6: {
      bool v6 = out.proto == kProtoIcmpv6;
      if (v6 != (out.ipVersion == 6)) return ParseStatus::kOk;  // ICMP over the wrong IP: opaque
      if (avail < 8) return v6 ? ParseStatus::kTruncatedIcmpv6 : ParseStatus::kTruncatedIcmp;
      hlen = 8;
      out.icmpType = h[0];
      out.icmpCode = h[1];
      bool echo = v6 ? (h[0] == 128 || h[0] == 129) : (h[0] == 8 || h[0] == 0);
      if (echo) {
        out.icmpId = be16(h + 4);
        out.icmpSeq = be16(h + 6);
      }
      if (out.isFragment) break;  // a fragmented quote / NDP message is not parsed
      if (v6 ? isIcmpv6Error(h[0]) : isIcmpv4Error(h[0])) {
        if (!v6 && h[0] == 3 && h[1] == 4) out.icmpMtu = be16(h + 6);
        if (v6 && h[0] == 2) out.icmpMtu = be32(h + 4);
        if (!parseInner(d, off + 8, end, out.ipVersion, out.inner)) return ParseStatus::kBadIcmpInner;
        out.hasInner = true;
        out.innerOffset = static_cast<uint16_t>(off + 8);
      } else if (v6 && (h[0] == 135 || h[0] == 136)) {
        ParseStatus s = parseNdp(d, off, end, out);
        if (s != ParseStatus::kOk) return s;
      }
      break;
    }
    default:
      return ParseStatus::kOk;  // opaque upper layer (GRE, ESP, SCTP, ...)
  }
  out.payloadOffset = static_cast<uint16_t>(off + hlen);
  out.payloadLen = end - (off + hlen);
  return ParseStatus::kOk;
}

ParseStatus parseIpv4(const uint8_t* d, uint32_t off, uint32_t len, ParsedPacket& out,
                      Frame::RxChecksum rx) {
  if (len - off < 20) return ParseStatus::kTruncatedIpv4;
  const uint8_t* h = d + off;
  if ((h[0] >> 4) != 4) return ParseStatus::kBadIpv4Version;
  uint32_t ihl = uint32_t{h[0] & 0x0fu} * 4;
  if (ihl < 20 || ihl > len - off) return ParseStatus::kBadIpv4Ihl;
  uint32_t total = be16(h + 2);
  if (total < ihl || total > len - off) return ParseStatus::kBadIpv4TotalLength;
  if (rx == Frame::RxChecksum::kBad ||
      (rx == Frame::RxChecksum::kUnknown && !ipv4HeaderChecksumOk(h, ihl))) {
    return ParseStatus::kIpv4BadChecksum;
  }
  out.ipVersion = 4;
  out.tos = h[1];
  out.l3Len = total;
  uint16_t flagsOff = be16(h + 6);
  out.dontFragment = (flagsOff & 0x4000) != 0;
  bool more = (flagsOff & 0x2000) != 0;
  out.fragOffset = static_cast<uint16_t>((flagsOff & 0x1fff) * 8);
  out.fragId = be16(h + 4);
  out.isFragment = more || out.fragOffset != 0;
  out.isFirstFragment = out.isFragment && out.fragOffset == 0;
  out.ttl = h[8];
  out.proto = h[9];
  std::memcpy(out.src, h + 12, 4);
  std::memcpy(out.dst, h + 16, 4);
  if (out.isFragment) {
    if (uint32_t{out.fragOffset} + (total - ihl) > 65535) return ParseStatus::kBadIpv4Fragment;
    if (out.fragOffset == 8 && out.proto == kProtoTcp) return ParseStatus::kBadIpv4Fragment;
  }
  return parseL4(d, off + ihl, off + total, out);
}

ParseStatus parseIpv6(const uint8_t* d, uint32_t off, uint32_t len, ParsedPacket& out) {
  if (len - off < 40) return ParseStatus::kTruncatedIpv6;
  const uint8_t* h = d + off;
  if ((h[0] >> 4) != 6) return ParseStatus::kBadIpv6Version;
  uint32_t plen = be16(h + 4);
  if (40 + plen > len - off) return ParseStatus::kBadIpv6PayloadLength;
  out.ipVersion = 6;
  out.tos = static_cast<uint8_t>(((h[0] & 0x0f) << 4) | (h[1] >> 4));
  out.l3Len = 40 + plen;
  out.ttl = h[7];
  std::memcpy(out.src, h + 8, 16);
  std::memcpy(out.dst, h + 24, 16);
  uint32_t end = off + 40 + plen;
  // Payload length 0 with a hop-by-hop header is a jumbogram (RFC 2675).
  if (plen == 0 && h[6] == kExtHopByHop) return ParseStatus::kBadIpv6PayloadLength;
  Ipv6Walk w;
  ParseStatus s = walkIpv6Ext(d, off + 40, end, h[6], w);
  if (s != ParseStatus::kOk) return s;
  out.proto = w.proto;
  out.numIpv6Ext = w.count;
  out.isFragment = w.fragment;
  out.isFirstFragment = w.firstFragment;
  out.fragOffset = w.fragOffset;
  out.fragId = w.fragId;
  return parseL4(d, w.l4, end, out);
}

}  // namespace

const char* toString(ParseStatus s) {
  switch (s) {
    case ParseStatus::kOk: return "ok";
    case ParseStatus::kTruncatedEthernet: return "truncated_ethernet";
    case ParseStatus::kTruncatedVlan: return "truncated_vlan";
    case ParseStatus::kVlanQinq: return "vlan_qinq";
    case ParseStatus::kUnsupportedEthertype: return "unsupported_ethertype";
    case ParseStatus::kTruncatedArp: return "truncated_arp";
    case ParseStatus::kBadArp: return "bad_arp";
    case ParseStatus::kTruncatedIpv4: return "truncated_ipv4";
    case ParseStatus::kBadIpv4Version: return "bad_ipv4_version";
    case ParseStatus::kBadIpv4Ihl: return "bad_ipv4_ihl";
    case ParseStatus::kBadIpv4TotalLength: return "bad_ipv4_total_length";
    case ParseStatus::kIpv4BadChecksum: return "ipv4_bad_checksum";
    case ParseStatus::kBadIpv4Fragment: return "bad_ipv4_fragment";
    case ParseStatus::kTruncatedIpv6: return "truncated_ipv6";
    case ParseStatus::kBadIpv6Version: return "bad_ipv6_version";
    case ParseStatus::kBadIpv6PayloadLength: return "bad_ipv6_payload_length";
    case ParseStatus::kBadIpv6Ext: return "bad_ipv6_ext";
    case ParseStatus::kTooManyIpv6Ext: return "too_many_ipv6_ext";
    case ParseStatus::kTruncatedTcp: return "truncated_tcp";
    case ParseStatus::kBadTcpOffset: return "bad_tcp_offset";
    case ParseStatus::kTruncatedUdp: return "truncated_udp";
    case ParseStatus::kBadUdpLength: return "bad_udp_length";
    case ParseStatus::kTruncatedIcmp: return "truncated_icmp";
    case ParseStatus::kTruncatedIcmpv6: return "truncated_icmpv6";
    case ParseStatus::kBadIcmpInner: return "bad_icmp_inner";
    case ParseStatus::kBadNdp: return "bad_ndp";
  }
  return "unknown";
}

ParseStatus parseFrame(const uint8_t* data, uint32_t len, ParsedPacket& out,
                       Frame::RxChecksum rxIpChecksum) {
  out = ParsedPacket{};
  if (len < 14) return ParseStatus::kTruncatedEthernet;
  std::memcpy(out.dstMac, data, 6);
  std::memcpy(out.srcMac, data + 6, 6);
  uint16_t type = be16(data + 12);
  uint32_t off = 14;
  if (type == kEtherTypeQinq) return ParseStatus::kVlanQinq;
  if (type == kEtherTypeVlan) {
    if (len < 18) return ParseStatus::kTruncatedVlan;
    out.hasVlan = true;
    out.vlanTci = be16(data + 14);
    out.vlan = out.vlanTci & 0x0fff;
    type = be16(data + 16);
    off = 18;
    if (type == kEtherTypeVlan || type == kEtherTypeQinq) return ParseStatus::kVlanQinq;
  }
  out.etherType = type;
  out.l3Offset = static_cast<uint16_t>(off);
  // Offsets fit uint16_t: headers end before 18 + 40 + 8 * 2048 + 60 bytes.
  switch (type) {
    case kEtherTypeIpv4: return parseIpv4(data, off, len, out, rxIpChecksum);
    case kEtherTypeIpv6: return parseIpv6(data, off, len, out);
    case kEtherTypeArp: return parseArp(data, off, len, out);
    default: return ParseStatus::kUnsupportedEthertype;
  }
}

FlowKey flowKeyOf(const ParsedPacket& p) {
  FlowKey k{};
  if (p.ipVersion != 4 && p.ipVersion != 6) return k;
  size_t n = p.ipVersion == 4 ? 4 : 16;
  std::memcpy(k.src, p.src, n);
  std::memcpy(k.dst, p.dst, n);
  k.srcPort = p.srcPort;
  k.dstPort = p.dstPort;
  k.proto = p.proto;
  k.ipVersion = p.ipVersion;
  return k;
}

}  // namespace moat::l4
