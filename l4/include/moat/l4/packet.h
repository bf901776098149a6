// Parser for the Ethernet frames the L4 load balancer sees: one optional
// 802.1Q tag, ARP, IPv4 (options, fragments), IPv6 (bounded extension-header
// walk), TCP, UDP, ICMP and ICMPv6 (errors with their quoted inner 5-tuple,
// echo, neighbour discovery).
//
// Thread: any; parseFrame is a pure function of its input. Cost: O(number of
// headers), no allocation, no exceptions. It never reads outside
// [data, data + len) whatever the bytes are. Every rejected frame gets one
// specific ParseStatus so the processor can count it (toString gives the
// counter name).
//
// Decisions (what the LB accepts):
//  - QinQ (802.1ad 0x88a8, or a second 0x8100 tag) is refused: kVlanQinq.
//  - The IPv4 header checksum is verified in software (20-60 bytes, cheap)
//    unless the NIC already did (Frame::rxIpChecksum kGood: trusted; kBad:
//    refused without looking): a bad one is kIpv4BadChecksum. TCP/UDP/ICMP checksums are NOT verified:
//    the backend (or the NIC) does that for forwarded traffic.
//  - Ethernet padding after the IP packet is allowed and ignored (l3Len says
//    where the IP packet ends); an IP length longer than the frame is refused.
//  - Non-first fragments are accepted with hasPorts = false; a first
//    fragment must hold the whole L4 header (RFC 1858 tiny fragments are
//    refused as truncated_tcp / truncated_udp ...), and an IPv4 TCP fragment
//    at offset 8 (RFC 1858 overlap) or one ending past 65535 is refused.
//  - IPv6 extension headers walked: hop-by-hop (first only), routing,
//    fragment, destination options, AH; at most kMaxIpv6ExtHeaders. ESP,
//    "no next header" and anything unknown end the walk: proto is that
//    value, hasPorts = false. Jumbograms are refused.
//  - ICMP errors (v4 types 3, 11, 12; v6 types 1-4) must quote a parsable
//    inner IP header and, for TCP/UDP, its ports; otherwise kBadIcmpInner.
//  - NDP (NS 135 / NA 136) must have hop limit 255, code 0, a whole target
//    and well-formed options (RFC 4861 7.1): otherwise kBadNdp.
#pragma once

#include <cstddef>
#include <cstdint>

#include "moat/l4/flow_types.h"
#include "moat/l4/frame.h"

namespace moat::l4 {

// One value per reason to refuse a frame. Keep toString() in sync; the names
// are counter names ("parse_<name>" in the stats) and never change meaning.
enum class ParseStatus : uint8_t {
  kOk = 0,
  kTruncatedEthernet,     // < 14 bytes
  kTruncatedVlan,         // 802.1Q tag cut
  kVlanQinq,              // stacked tags / 802.1ad: not supported
  kUnsupportedEthertype,  // not IPv4 / IPv6 / ARP (LLDP, MPLS, ...)
  kTruncatedArp,          // < 28 bytes of ARP
  kBadArp,                // not Ethernet/IPv4 ARP, or op not request/reply
  kTruncatedIpv4,         // < 20 bytes of IPv4 header
  kBadIpv4Version,        // ethertype 0x0800, version nibble != 4
  kBadIpv4Ihl,            // ihl < 5, or header longer than the frame
  kBadIpv4TotalLength,    // total length < ihl*4 or > bytes in the frame
  kIpv4BadChecksum,       // header checksum wrong
  kBadIpv4Fragment,       // RFC 1858 overlap or fragment ending past 65535
  kTruncatedIpv6,         // < 40 bytes of IPv6 header
  kBadIpv6Version,        // ethertype 0x86dd, version nibble != 6
  kBadIpv6PayloadLength,  // payload length > bytes in the frame, or jumbogram
  kBadIpv6Ext,            // extension header cut, or hop-by-hop not first
  kTooManyIpv6Ext,        // more than kMaxIpv6ExtHeaders
  kTruncatedTcp,          // < 20 bytes of TCP
  kBadTcpOffset,          // data offset < 5 or beyond the IP packet
  kTruncatedUdp,          // < 8 bytes of UDP
  kBadUdpLength,          // UDP length < 8 or beyond the IP packet
  kTruncatedIcmp,         // < 8 bytes of ICMP
  kTruncatedIcmpv6,       // < 8 bytes of ICMPv6
  kBadIcmpInner,          // ICMP error whose quoted packet cannot be parsed
  kBadNdp,                // malformed neighbour solicitation / advertisement
};
inline constexpr size_t kParseStatusCount = static_cast<size_t>(ParseStatus::kBadNdp) + 1;

// snake_case name, e.g. "truncated_ethernet"; "unknown" for out-of-range.
const char* toString(ParseStatus s);

inline constexpr uint16_t kEtherTypeIpv4 = 0x0800;
inline constexpr uint16_t kEtherTypeIpv6 = 0x86dd;
inline constexpr uint16_t kEtherTypeArp = 0x0806;
inline constexpr uint16_t kEtherTypeVlan = 0x8100;
inline constexpr uint16_t kEtherTypeQinq = 0x88a8;

inline constexpr uint8_t kProtoIcmp = 1;
inline constexpr uint8_t kProtoIpip = 4;  // IPv4 in IP
inline constexpr uint8_t kProtoTcp = 6;
inline constexpr uint8_t kProtoUdp = 17;
inline constexpr uint8_t kProtoIpv6 = 41;  // IPv6 in IP
inline constexpr uint8_t kProtoIcmpv6 = 58;

inline constexpr uint8_t kTcpFin = 0x01;
inline constexpr uint8_t kTcpSyn = 0x02;
inline constexpr uint8_t kTcpRst = 0x04;
inline constexpr uint8_t kTcpPsh = 0x08;
inline constexpr uint8_t kTcpAck = 0x10;
inline constexpr uint8_t kTcpUrg = 0x20;

inline constexpr int kMaxIpv6ExtHeaders = 8;

// Result of parseFrame. Plain data (no pointers): stays valid however the
// frame is later modified, but offsets describe the frame as parsed. All
// fields are zero unless the parsed headers set them; fields of a status
// other than kOk are partial and must not be used.
struct ParsedPacket {
  // L2
  uint8_t dstMac[6];
  uint8_t srcMac[6];
  uint16_t etherType;  // after the VLAN tag
  uint16_t vlanTci;    // whole tag control info (PCP, DEI, id); 0 = untagged
  uint16_t vlan;       // VLAN id (12 bits); 0 = none (or priority tag)
  bool hasVlan;

  // L3 (ipVersion 0 for ARP: then l3Offset is where ARP starts)
  uint8_t ipVersion;     // 4, 6, or 0 for ARP
  uint8_t proto;         // final upper-layer protocol (after IPv6 ext headers)
  uint8_t ttl;           // TTL / hop limit
  uint8_t tos;           // IPv4 TOS / IPv6 traffic class (DSCP + ECN)
  bool dontFragment;     // IPv4 DF; always false for IPv6
  bool isFragment;       // IPv4 MF/offset, or IPv6 fragment header with MF/offset
  bool isFirstFragment;  // isFragment && offset 0: carries the L4 header
  uint16_t fragOffset;   // in bytes
  uint32_t fragId;       // IPv4 id (16 bits) or IPv6 fragment id
  uint16_t l3Offset;     // 14, or 18 with a VLAN tag
  uint16_t l4Offset;     // first byte after the IP header and extensions
  uint16_t payloadOffset;  // first byte after the L4 header (= l4Offset if no L4 header)
  uint32_t l3Len;          // IP packet length (IPv4 total length / 40 + IPv6 payload length)
  uint8_t numIpv6Ext;      // extension headers walked
  uint8_t src[16];         // IPv4 in src[0..3], network order
  uint8_t dst[16];

  // L4
  bool hasPorts;     // TCP/UDP header present (not a non-first fragment)
  uint16_t srcPort;  // host order
  uint16_t dstPort;
  uint8_t tcpFlags;  // FIN..CWR (low 8 flag bits)
  uint32_t tcpSeq;   // host order
  uint32_t tcpAck;
  uint16_t tcpWindow;
  uint32_t payloadLen;  // bytes after the L4 header in this packet (fragment)

  // ICMP / ICMPv6
  uint8_t icmpType;
  uint8_t icmpCode;
  uint16_t icmpId;    // echo request/reply identifier
  uint16_t icmpSeq;   // echo sequence
  uint32_t icmpMtu;   // v4 frag-needed next-hop MTU (16 bits) / v6 packet-too-big MTU
  bool hasInner;      // ICMP error with a parsed quote
  uint16_t innerOffset;  // frame offset of the quoted IP header
  // The quoted packet's 5-tuple as quoted: src is whoever sent the original
  // packet (usually our VIP or a backend), so the flow to look up is
  // inner.reversed(). Ports are 0 if the quote is a non-first fragment or
  // not TCP/UDP.
  FlowKey inner;

  // ARP (Ethernet/IPv4 only)
  uint16_t arpOp;  // 1 request, 2 reply
  uint8_t arpSha[6];
  uint8_t arpSpa[4];
  uint8_t arpTha[6];
  uint8_t arpTpa[4];

  // NDP (ICMPv6 135 / 136)
  uint8_t ndpTarget[16];
  uint8_t ndpFlags;     // NA: R 0x80, S 0x40, O 0x20
  bool hasNdpLladdr;    // NS: source link-layer option; NA: target link-layer option
  uint8_t ndpLladdr[6];
};

// Parses one frame. `out` is fully overwritten (zeroed first). Returns kOk
// or the first reason the frame is refused. Never reads out of bounds; len
// may be anything, data may be null when len == 0. `rxIpChecksum` is what
// the NIC said about the (outer) IPv4 header checksum.
ParseStatus parseFrame(const uint8_t* data, uint32_t len, ParsedPacket& out,
                       Frame::RxChecksum rxIpChecksum = Frame::RxChecksum::kUnknown);
inline ParseStatus parseFrame(const Frame& f, ParsedPacket& out) {
  return parseFrame(f.data, f.len, out, f.rxIpChecksum);
}

// The packet's flow: addresses, ports (0 without ports), proto, version.
// Meaningful for a kOk IPv4/IPv6 packet; a zero key for ARP.
FlowKey flowKeyOf(const ParsedPacket& p);

}  // namespace moat::l4
