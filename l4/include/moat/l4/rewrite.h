// In-place packet rewrites for the L4 load balancer: IPIP / GUE
// encapsulation towards a backend, L2 DSR, and the replies the balancer
// builds itself (ICMP frag-needed / packet-too-big, ARP, neighbour
// advertisement, TCP RST, echo reply), plus Internet checksums.
//
// Thread: any; every function works only on the frame / buffer it is given.
// Cost: O(bytes touched); the only full-packet passes are the IPv6 GUE UDP
// checksum and the ICMP error checksums. No allocation, no exceptions.
//
// Contract for every function taking (Frame&, const ParsedPacket&): `p` is
// the kOk result of parseFrame on this frame's current bytes. On any status
// other than kOk the frame is unchanged. On kOk the frame holds a complete
// Ethernet frame (same VLAN tag as received unless said otherwise) with
// correct lengths and checksums; Ethernet padding is dropped (the NIC pads).
#pragma once

#include <cstddef>
#include <cstdint>

#include "moat/l4/frame.h"
#include "moat/l4/packet.h"

namespace moat::l4 {

enum class RewriteStatus : uint8_t {
  kOk = 0,
  kNoHeadroom,      // frame headroom smaller than the added headers
  kNoTailroom,      // reply longer than the frame and its tailroom
  kTooBig,          // encapsulated packet > mtu and inner is IPv6 or IPv4 with DF:
                    // answer with makeIcmpFragNeeded / makeIcmpv6PacketTooBig
  kFragmentationNeeded,  // > mtu, inner IPv4 without DF: cannot split a frame in
                         // place; the processor drops and counts it
  kUnsupported,     // packet of the wrong kind for this rewrite (not IP, not TCP,
                    // not an echo request, a fragment, ...)
  kSuppressed,      // the RFCs forbid this reply (RST to a RST, ICMP error about
                    // an ICMP error / to a multicast or unspecified source, ...)
};
inline constexpr size_t kRewriteStatusCount =
    static_cast<size_t>(RewriteStatus::kSuppressed) + 1;
// snake_case counter name, e.g. "no_headroom".
const char* toString(RewriteStatus s);

// ---------------------------------------------------------------------------
// Checksums. Values are returned as host-order numbers to be stored
// big-endian (storeChecksum). All are RFC 1071 ones' complement sums.

// Ones' complement partial sum of n bytes (odd n padded with a zero byte),
// added to `sum`. Only the last chunk of a multi-part sum may be odd-sized.
uint32_t checksumPartial(const uint8_t* p, size_t n, uint32_t sum = 0);
// Folds a partial sum and complements it: the value to store.
uint16_t checksumFinish(uint32_t sum);
// IPv4 header checksum of `ihlBytes` header bytes; the checksum field
// (bytes 10-11) is skipped, so it need not be zeroed first.
uint16_t ipv4HeaderChecksum(const uint8_t* hdr, size_t ihlBytes);
// TCP / UDP / ICMPv6 checksum with the pseudo-header (RFC 793, 768, 8200
// 8.1), or plain ICMPv4 (proto 1: no pseudo-header). `l4` holds the whole
// L4 segment with its checksum field zeroed. Addresses are 4 or 16 bytes
// per ipVersion. For UDP a result of 0 must be sent as 0xffff
// (setL4Checksum does that).
uint16_t l4Checksum(uint8_t ipVersion, const uint8_t* src, const uint8_t* dst, uint8_t proto,
                    const uint8_t* l4, uint32_t l4Len);
// Zeroes the checksum field of the TCP/UDP/ICMP/ICMPv6 segment at `l4`,
// computes it and stores it. Returns false for another proto (unchanged).
bool setL4Checksum(uint8_t ipVersion, const uint8_t* src, const uint8_t* dst, uint8_t proto,
                   uint8_t* l4, uint32_t l4Len);
// RFC 1624 incremental update (eqn. 3: HC' = ~(~HC + ~m + m')): the new
// checksum after a 16-bit word changed from oldWord to newWord.
uint16_t checksumUpdate16(uint16_t oldChecksum, uint16_t oldWord, uint16_t newWord);
// Same for n bytes (n even, 16-bit aligned within the checksummed data)
// changing from oldBytes to newBytes, e.g. a 4- or 16-byte address.
uint16_t checksumUpdateBytes(uint16_t oldChecksum, const uint8_t* oldBytes,
                             const uint8_t* newBytes, size_t n);
inline void storeChecksum(uint8_t* at, uint16_t v) {
  at[0] = static_cast<uint8_t>(v >> 8);
  at[1] = static_cast<uint8_t>(v);
}

// ---------------------------------------------------------------------------
// Encapsulation towards a backend.

// Per-backend encapsulation settings; the config snapshot can hold one per
// backend (immutable, shared by workers).
struct EncapParams {
  uint8_t outerVersion = 4;  // 4 or 6; any inner/outer combination works
  uint8_t outerSrc[16] = {};  // IPv4 in [0..3]; the balancer's tunnel source
  uint8_t outerDst[16] = {};  // the backend
  uint8_t srcMac[6] = {};     // our port
  uint8_t dstMac[6] = {};     // next hop towards the backend
  bool keepVlan = false;      // keep the received 802.1Q tag, else drop it
  uint16_t mtu = 1500;        // max outer IP packet (L3 bytes, no Ethernet)
  uint8_t ttl = 64;           // outer TTL / hop limit
  uint16_t gueDstPort = 6080;  // encapGue only
};

// Bytes encapsulation adds in front of the inner IP packet.
inline constexpr uint32_t kIpipOverheadV4 = 20;
inline constexpr uint32_t kIpipOverheadV6 = 40;
inline constexpr uint32_t kGueOverheadV4 = 20 + 8 + 4;  // IPv4 + UDP + GUE header
inline constexpr uint32_t kGueOverheadV6 = 40 + 8 + 4;

// IP-in-IP: [Ethernet][outer IPv4 proto 4/41 | outer IPv6 next header 4/41]
// [inner IP packet, byte-identical]. Outer TOS / traffic class copied from
// the inner (DSCP and ECN); outer IPv4 DF = inner DF (set for an IPv6
// inner), id = inner id (0 for IPv6 inner); outer IPv6 flow label =
// top 20 bits of flowHash * 0x9e3779b97f4a7c15 so ECMP spreads flows. Needs headroom outer header
// size minus 4 if a VLAN tag is dropped.
RewriteStatus encapIpip(Frame& f, const ParsedPacket& p, const EncapParams& e, uint64_t flowHash);

// GUE (draft-ietf-intarea-gue variant 0): [Ethernet][outer IP proto 17]
// [UDP src port 49152 + top 14 bits of flowHash * 0x9e3779b97f4a7c15 (the
// backend NIC's RSS spreads flows; the same flow keeps its port),
// dst e.gueDstPort][GUE: ver 0, C 0, hlen 0, proto_ctype 4/41, flags 0]
// [inner IP packet]. UDP checksum 0 for an IPv4 outer (RFC 768), computed
// over the whole packet for an IPv6 outer (RFC 8200 8.1).
RewriteStatus encapGue(Frame& f, const ParsedPacket& p, const EncapParams& e, uint64_t flowHash);

// Positional form of encapIpip (flow label from hashFlow(flowKeyOf(p))).
RewriteStatus encapIpip(Frame& f, const ParsedPacket& p, const uint8_t outerSrc[16],
                        const uint8_t outerDst[16], uint8_t outerVersion, const uint8_t srcMac[6],
                        const uint8_t dstMac[6], uint16_t mtu = 1500, bool keepVlan = false);

// L2 direct server return: only the MAC addresses change. kUnsupported if
// the frame is shorter than an Ethernet header.
RewriteStatus rewriteL2Dsr(Frame& f, const uint8_t srcMac[6], const uint8_t dstMac[6]);

// ---------------------------------------------------------------------------
// Replies built in place from the received frame. Ethernet: dst = the
// frame's source MAC, src = ourMac, VLAN tag kept.

// ICMPv4 type 3 code 4 to the sender of an IPv4 packet that is too big:
// IPv4 (src ourIp, TTL 64, TOS 0xc0) + ICMP (next-hop MTU `mtu`, which
// should be the link MTU minus the encapsulation overhead) + quote of the
// original IP header (with options) and its first 8 payload bytes.
// kSuppressed for ICMP errors, non-first fragments, multicast/broadcast
// destinations and non-unicast sources (RFC 1122 3.2.2).
RewriteStatus makeIcmpFragNeeded(Frame& f, const ParsedPacket& p, uint16_t mtu,
                                 const uint8_t ourIp[4], const uint8_t ourMac[6]);
// ICMPv6 type 2 to the sender of an IPv6 packet that is too big: quote as
// much of the packet as keeps the reply within 1280 bytes (RFC 4443 3.2).
// kSuppressed for ICMPv6 errors and multicast / unspecified sources.
RewriteStatus makeIcmpv6PacketTooBig(Frame& f, const ParsedPacket& p, uint32_t mtu,
                                     const uint8_t ourIp[16], const uint8_t ourMac[6]);

// ARP request -> reply "tpa is at ourMac" (the caller checked tpa is ours).
// kUnsupported unless p is an ARP request.
RewriteStatus makeArpReply(Frame& f, const ParsedPacket& p, const uint8_t ourMac[6]);
inline constexpr uint32_t kArpFrameLen = 60;  // 42 bytes + zero padding to the Ethernet minimum
// Writes a broadcast ARP request "who has targetIp, tell srcIp". Returns
// kArpFrameLen, or 0 if cap is smaller.
uint32_t writeArpRequest(uint8_t* buf, uint32_t cap, const uint8_t srcMac[6],
                         const uint8_t srcIp[4], const uint8_t targetIp[4]);

// NS for one of our addresses -> NA (RFC 4861 7.2.4): IPv6 src = target,
// dst = NS source (S=1) or ff02::1 if the source is unspecified (DAD, S=0),
// O=1, R=0, target link-layer option = ourMac, hop limit 255. The caller
// checked the target is ours. kUnsupported unless p is an NS.
RewriteStatus makeNeighborAdvert(Frame& f, const ParsedPacket& p, const uint8_t ourMac[6]);
inline constexpr uint32_t kNeighborSolicitLen = 14 + 40 + 32;
// Writes an NS for targetIp6 to its solicited-node multicast address and
// MAC, with a source link-layer option. Returns kNeighborSolicitLen, or 0 if
// cap is smaller.
uint32_t writeNeighborSolicit(uint8_t* buf, uint32_t cap, const uint8_t srcMac[6],
                              const uint8_t srcIp6[16], const uint8_t targetIp6[16]);

// TCP segment from a client -> RST back to it (RFC 793 "Reset Generation"):
// if the segment had ACK, seq = its ack and flags RST; else seq 0,
// ack = seq + payload + SYN + FIN and flags RST|ACK. Addresses and ports
// swapped, no options / IP options / extension headers, no payload, TTL 64.
// kSuppressed for a RST; kUnsupported for non-TCP or fragments.
RewriteStatus makeTcpReset(Frame& f, const ParsedPacket& p, const uint8_t ourMac[6]);

// ICMP echo request (v4 type 8 / v6 type 128) -> echo reply, same id, seq
// and data; addresses swapped, TTL 64; IP options / extension headers are
// removed. kUnsupported for anything else or a fragment; kSuppressed for a
// multicast/broadcast destination (the reply source must be unicast).
RewriteStatus makeIcmpEchoReply(Frame& f, const ParsedPacket& p, const uint8_t ourMac[6]);

}  // namespace moat::l4
