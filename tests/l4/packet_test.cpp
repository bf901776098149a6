#include "moat/l4/packet.h"

#include <gtest/gtest.h>

#include <cstring>
#include <set>
#include <string>
#include <vector>

#include "packet_builder.h"

namespace moat::l4 {
namespace {

using namespace moat::l4::testing;

const Mac kClientMac{0x02, 0xaa, 0, 0, 0, 0x01};
const Mac kLbMac{0x02, 0xbb, 0, 0, 0, 0x02};
const Ip4 kClient4{198, 51, 100, 7};
const Ip4 kVip4{203, 0, 113, 10};
const Ip6 kClient6 = ip6({0x2001, 0xdb8, 0, 0, 0, 0, 0, 7});
const Ip6 kVip6 = ip6({0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 10});

PacketBuilder v4() { return PacketBuilder().eth(kClientMac, kLbMac).ipv4(kClient4, kVip4); }
PacketBuilder v6() { return PacketBuilder().eth(kClientMac, kLbMac).ipv6(kClient6, kVip6); }

// Parses from an exact-size heap copy so ASan flags any read past the end.
ParseStatus parse(const Bytes& b, ParsedPacket& p) {
  std::vector<uint8_t> copy(b);
  return parseFrame(copy.empty() ? nullptr : copy.data(), static_cast<uint32_t>(copy.size()), p);
}

// Offsets of a kOk parse stay inside the frame and in order.
void expectConsistent(const ParsedPacket& p, size_t len) {
  EXPECT_LE(p.l3Offset, p.l4Offset);
  EXPECT_LE(p.l4Offset, p.payloadOffset);
  if (p.ipVersion != 0) {
    EXPECT_LE(p.l3Offset + p.l3Len, len);
    EXPECT_LE(p.payloadOffset + p.payloadLen, p.l3Offset + p.l3Len);
  } else {
    EXPECT_LE(p.l4Offset, len);
  }
}

TEST(ParsePacket, TcpIpv4ExactFields) {
  Bytes b = v4().ttl(57).tos(0x28).df().ipId(0x4242).tcp(40000, 443, kTcpSyn | 0x40, 0x01020304, 0x0a0b0c0d)
                .payload({1, 2, 3, 4, 5})
                .build();
  ParsedPacket p;
  ASSERT_EQ(parse(b, p), ParseStatus::kOk);
  EXPECT_EQ(0, std::memcmp(p.srcMac, kClientMac.data(), 6));
  EXPECT_EQ(0, std::memcmp(p.dstMac, kLbMac.data(), 6));
  EXPECT_EQ(p.etherType, kEtherTypeIpv4);
  EXPECT_FALSE(p.hasVlan);
  EXPECT_EQ(p.vlan, 0);
  EXPECT_EQ(p.ipVersion, 4);
  EXPECT_EQ(p.proto, kProtoTcp);
  EXPECT_EQ(p.ttl, 57);
  EXPECT_EQ(p.tos, 0x28);
  EXPECT_TRUE(p.dontFragment);
  EXPECT_FALSE(p.isFragment);
  EXPECT_EQ(p.fragId, 0x4242u);
  EXPECT_EQ(p.l3Offset, 14);
  EXPECT_EQ(p.l4Offset, 34);
  EXPECT_EQ(p.payloadOffset, 54);
  EXPECT_EQ(p.payloadLen, 5u);
  EXPECT_EQ(p.l3Len, 45u);
  EXPECT_EQ(0, std::memcmp(p.src, kClient4.data(), 4));
  EXPECT_EQ(0, std::memcmp(p.dst, kVip4.data(), 4));
  EXPECT_TRUE(p.hasPorts);
  EXPECT_EQ(p.srcPort, 40000);
  EXPECT_EQ(p.dstPort, 443);
  EXPECT_EQ(p.tcpFlags, kTcpSyn | 0x40);
  EXPECT_EQ(p.tcpSeq, 0x01020304u);
  EXPECT_EQ(p.tcpAck, 0x0a0b0c0du);
  EXPECT_EQ(p.tcpWindow, 65535);
  EXPECT_FALSE(p.hasInner);
  FlowKey k = flowKeyOf(p);
  EXPECT_EQ(k, makeFlowKeyV4(0xc6336407, 0xcb00710a, 40000, 443, kProtoTcp));
}

// One row per accepted shape: what the parser must report.
struct OkCase {
  const char* name;
  Bytes frame;
  uint8_t ipVersion;
  uint8_t proto;
  uint16_t l3Offset;
  uint16_t l4Offset;
  bool hasPorts;
  uint16_t srcPort, dstPort;
  bool isFragment, isFirstFragment;
  uint16_t vlan;
  uint8_t numExt;
};

std::vector<OkCase> okCases() {
  Bytes data(100, 0x5a);
  return {
      {"tcp4", v4().tcp(1, 2, kTcpAck).build(), 4, 6, 14, 34, true, 1, 2, false, false, 0, 0},
      {"tcp4_options", v4().tcp(1, 2, kTcpSyn, 7, 0, {2, 4, 5, 0xb4, 1, 3, 3, 7}).build(), 4, 6, 14,
       34, true, 1, 2, false, false, 0, 0},
      {"tcp4_vlan", v4().vlan(100).tcp(1, 2, kTcpAck).build(), 4, 6, 18, 38, true, 1, 2, false,
       false, 100, 0},
      {"tcp4_ip_options", v4().ipv4Options({0x94, 4, 0, 0, 1, 1, 1, 0}).tcp(3, 4, 0).build(), 4, 6,
       14, 42, true, 3, 4, false, false, 0, 0},
      {"tcp4_l2_padding", v4().tcp(1, 2, kTcpAck).l2Padding(6).build(), 4, 6, 14, 34, true, 1, 2,
       false, false, 0, 0},
      {"udp4", v4().udp(5353, 53).payload(data).build(), 4, 17, 14, 34, true, 5353, 53, false, false,
       0, 0},
      {"udp4_first_fragment", v4().udp(9, 10).payload(data).fragment(0, true).build(), 4, 17, 14,
       34, true, 9, 10, true, true, 0, 0},
      {"udp4_nonfirst_fragment", v4().proto(17).payload(data).fragment(1480, false).build(), 4, 17,
       14, 34, false, 0, 0, true, false, 0, 0},
      {"gre4_opaque", v4().proto(47).payload(data).build(), 4, 47, 14, 34, false, 0, 0, false, false,
       0, 0},
      {"icmp4_echo", v4().icmp(8, 0, 0x00070001).payload(data).build(), 4, 1, 14, 34, false, 0, 0,
       false, false, 0, 0},
      {"tcp6", v6().tcp(1000, 80, kTcpSyn).build(), 6, 6, 14, 54, true, 1000, 80, false, false, 0,
       0},
      {"udp6_vlan", v6().vlan(7).udp(1, 2).build(), 6, 17, 18, 58, true, 1, 2, false, false, 7, 0},
      {"tcp6_all_ext", v6().ext(Ext::kHopByHop).ext(Ext::kDestOpts, 16).ext(Ext::kRouting, 24)
                           .ext(Ext::kAh, 12).ext(Ext::kDestOpts).tcp(5, 6, kTcpAck).build(),
       6, 6, 14, 54 + 8 + 16 + 24 + 12 + 8, true, 5, 6, false, false, 0, 5},
      {"udp6_first_fragment", v6().ext(Ext::kFragment, 8, 0, true).udp(7, 8).payload(data).build(),
       6, 17, 14, 62, true, 7, 8, true, true, 0, 1},
      {"udp6_nonfirst_fragment",
       v6().ext(Ext::kFragment, 8, 1232, false).proto(17).payload(data).build(), 6, 17, 14, 62,
       false, 0, 0, true, false, 0, 1},
      {"tcp6_atomic_fragment", v6().ext(Ext::kFragment, 8, 0, false).tcp(1, 2, 0).build(), 6, 6,
       14, 62, true, 1, 2, false, false, 0, 1},
      {"esp6_opaque", v6().proto(50).payload(data).build(), 6, 50, 14, 54, false, 0, 0, false,
       false, 0, 0},
      {"no_next_header6", v6().ext(Ext::kDestOpts).proto(59).build(), 6, 59, 14, 62, false, 0, 0,
       false, false, 0, 1},
      {"icmp6_echo", v6().icmp(128, 0, 0x00090002).payload(data).build(), 6, 58, 14, 54, false, 0,
       0, false, false, 0, 0},
      {"eight_ext", [] {
         PacketBuilder b = v6();
         for (int i = 0; i < 8; ++i) b.ext(Ext::kDestOpts);
         return b.udp(1, 2).build();
       }(),
       6, 17, 14, 54 + 64, true, 1, 2, false, false, 0, 8},
  };
}

TEST(ParsePacket, AcceptedShapes) {
  for (const OkCase& c : okCases()) {
    SCOPED_TRACE(c.name);
    ParsedPacket p;
    ASSERT_EQ(parse(c.frame, p), ParseStatus::kOk) << toString(parse(c.frame, p));
    EXPECT_EQ(p.ipVersion, c.ipVersion);
    EXPECT_EQ(p.proto, c.proto);
    EXPECT_EQ(p.l3Offset, c.l3Offset);
    EXPECT_EQ(p.l4Offset, c.l4Offset);
    EXPECT_EQ(p.hasPorts, c.hasPorts);
    EXPECT_EQ(p.srcPort, c.srcPort);
    EXPECT_EQ(p.dstPort, c.dstPort);
    EXPECT_EQ(p.isFragment, c.isFragment);
    EXPECT_EQ(p.isFirstFragment, c.isFirstFragment);
    EXPECT_EQ(p.vlan, c.vlan);
    EXPECT_EQ(p.hasVlan, c.vlan != 0);
    EXPECT_EQ(p.numIpv6Ext, c.numExt);
    expectConsistent(p, c.frame.size());
  }
}

TEST(ParsePacket, FragmentFieldsAndPaddingIgnored) {
  ParsedPacket p;
  ASSERT_EQ(parse(v4().proto(6).payload(Bytes(64, 1)).fragment(1480, true).build(), p),
            ParseStatus::kOk);
  EXPECT_EQ(p.fragOffset, 1480);
  EXPECT_EQ(p.payloadLen, 64u);
  ASSERT_EQ(parse(v6().ext(Ext::kFragment, 8, 2048, true).proto(6).payload(Bytes(16, 1)).build(), p),
            ParseStatus::kOk);
  EXPECT_EQ(p.fragOffset, 2048);
  EXPECT_EQ(p.fragId, 0x42u);
  ASSERT_EQ(parse(v4().udp(1, 2).payload({9, 9}).l2Padding(20).build(), p), ParseStatus::kOk);
  EXPECT_EQ(p.l3Len, 30u);
  EXPECT_EQ(p.payloadLen, 2u);
  // UDP length shorter than the IP payload: trailing bytes are not payload.
  ASSERT_EQ(parse(v4().udp(1, 2).payload({9, 9, 9, 9}).udpLength(10).build(), p), ParseStatus::kOk);
  EXPECT_EQ(p.payloadLen, 2u);
}

TEST(ParsePacket, Ipv6FieldsAndTrafficClass) {
  ParsedPacket p;
  ASSERT_EQ(parse(v6().tos(0xb8).ttl(33).udp(1, 2).payload({1, 2, 3}).build(), p), ParseStatus::kOk);
  EXPECT_EQ(p.tos, 0xb8);
  EXPECT_EQ(p.ttl, 33);
  EXPECT_EQ(p.l3Len, 40u + 8 + 3);
  EXPECT_EQ(0, std::memcmp(p.src, kClient6.data(), 16));
  EXPECT_EQ(0, std::memcmp(p.dst, kVip6.data(), 16));
  FlowKey k = flowKeyOf(p);
  EXPECT_EQ(k.ipVersion, 6);
  EXPECT_EQ(0, std::memcmp(k.dst, kVip6.data(), 16));
  EXPECT_EQ(k.srcPort, 1);
}

TEST(ParsePacket, Icmpv4ErrorsCarryInnerTuple) {
  // A backend's reply VIP:443 -> client:40000 hit a router that answers
  // "fragmentation needed, MTU 1400" to the VIP.
  Bytes inner = PacketBuilder().noEth().ipv4(kVip4, kClient4).df().tcp(443, 40000, kTcpAck)
                    .payload(Bytes(1000, 0))
                    .buildL3();
  for (uint8_t type : {3, 11, 12}) {
    SCOPED_TRACE(int{type});
    Ip4 router{192, 0, 2, 1};
    Bytes quote(inner.begin(), inner.begin() + 28);
    Bytes b = PacketBuilder().eth(kClientMac, kLbMac).ipv4(router, kVip4)
                  .icmp(type, type == 3 ? 4 : 0, type == 3 ? 1400 : 0)
                  .payload(quote)
                  .build();
    ParsedPacket p;
    ASSERT_EQ(parse(b, p), ParseStatus::kOk);
    EXPECT_EQ(p.icmpType, type);
    ASSERT_TRUE(p.hasInner);
    EXPECT_EQ(p.innerOffset, 14 + 20 + 8);
    EXPECT_EQ(p.inner, makeFlowKeyV4(0xcb00710a, 0xc6336407, 443, 40000, kProtoTcp));
    EXPECT_EQ(p.icmpMtu, type == 3 ? 1400u : 0u);
    EXPECT_EQ(p.inner.reversed(), makeFlowKeyV4(0xc6336407, 0xcb00710a, 40000, 443, kProtoTcp));
  }
}

TEST(ParsePacket, Icmpv6PacketTooBigCarriesInnerTuple) {
  Bytes inner = PacketBuilder().noEth().ipv6(kVip6, kClient6).ext(Ext::kDestOpts).udp(53, 5353)
                    .payload(Bytes(1400, 0))
                    .buildL3();
  Bytes quote(inner.begin(), inner.begin() + 1232);
  Bytes b = v6().icmp(2, 0, 1280).payload(quote).build();
  ParsedPacket p;
  ASSERT_EQ(parse(b, p), ParseStatus::kOk);
  EXPECT_EQ(p.icmpType, 2);
  EXPECT_EQ(p.icmpMtu, 1280u);
  ASSERT_TRUE(p.hasInner);
  EXPECT_EQ(p.inner.ipVersion, 6);
  EXPECT_EQ(p.inner.proto, kProtoUdp);
  EXPECT_EQ(p.inner.srcPort, 53);
  EXPECT_EQ(p.inner.dstPort, 5353);
  EXPECT_EQ(0, std::memcmp(p.inner.src, kVip6.data(), 16));
}

TEST(ParsePacket, EchoFields) {
  ParsedPacket p;
  ASSERT_EQ(parse(v4().icmp(8, 0, 0x12340005).payload({1, 2}).build(), p), ParseStatus::kOk);
  EXPECT_EQ(p.icmpId, 0x1234);
  EXPECT_EQ(p.icmpSeq, 5);
  EXPECT_EQ(p.payloadLen, 2u);
  ASSERT_EQ(parse(v6().icmp(129, 0, 0x00010002).build(), p), ParseStatus::kOk);
  EXPECT_EQ(p.icmpType, 129);
  EXPECT_EQ(p.icmpId, 1);
  EXPECT_EQ(p.icmpSeq, 2);
}

Bytes ndpBody(const Ip6& target, uint8_t optType, bool withOpt) {
  Bytes b(target.begin(), target.end());
  if (withOpt) {
    b.push_back(optType);
    b.push_back(1);
    b.insert(b.end(), kClientMac.begin(), kClientMac.end());
  }
  return b;
}

TEST(ParsePacket, NeighborDiscovery) {
  Ip6 target = kVip6;
  ParsedPacket p;
  ASSERT_EQ(parse(v6().ttl(255).icmp(135, 0).payload(ndpBody(target, 1, true)).build(), p),
            ParseStatus::kOk);
  EXPECT_EQ(p.icmpType, 135);
  EXPECT_EQ(0, std::memcmp(p.ndpTarget, target.data(), 16));
  ASSERT_TRUE(p.hasNdpLladdr);
  EXPECT_EQ(0, std::memcmp(p.ndpLladdr, kClientMac.data(), 6));
  // NS without the option (DAD) and with an unrelated option first.
  ASSERT_EQ(parse(v6().ttl(255).icmp(135, 0).payload(ndpBody(target, 1, false)).build(), p),
            ParseStatus::kOk);
  EXPECT_FALSE(p.hasNdpLladdr);
  Bytes mixed = ndpBody(target, 14, true);  // nonce option, then SLLAO
  Bytes sllao = ndpBody(target, 1, true);
  mixed.insert(mixed.end(), sllao.begin() + 16, sllao.end());
  ASSERT_EQ(parse(v6().ttl(255).icmp(135, 0).payload(mixed).build(), p), ParseStatus::kOk);
  EXPECT_TRUE(p.hasNdpLladdr);
  // NA with target link-layer option; flags kept.
  ASSERT_EQ(parse(v6().ttl(255).icmp(136, 0, 0x60000000).payload(ndpBody(target, 2, true)).build(),
                  p),
            ParseStatus::kOk);
  EXPECT_EQ(p.ndpFlags, 0x60);
  EXPECT_TRUE(p.hasNdpLladdr);
  // An NA's source link-layer option is not its target address.
  ASSERT_EQ(parse(v6().ttl(255).icmp(136, 0).payload(ndpBody(target, 1, true)).build(), p),
            ParseStatus::kOk);
  EXPECT_FALSE(p.hasNdpLladdr);
}

TEST(ParsePacket, Arp) {
  Ip4 lb{10, 0, 0, 1};
  Bytes b = PacketBuilder().eth(kClientMac, Mac{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
                .arp(1, kClientMac, kClient4, Mac{}, lb)
                .l2Padding(18)
                .build();
  ParsedPacket p;
  ASSERT_EQ(parse(b, p), ParseStatus::kOk);
  EXPECT_EQ(p.ipVersion, 0);
  EXPECT_EQ(p.etherType, kEtherTypeArp);
  EXPECT_EQ(p.arpOp, 1);
  EXPECT_EQ(0, std::memcmp(p.arpSha, kClientMac.data(), 6));
  EXPECT_EQ(0, std::memcmp(p.arpSpa, kClient4.data(), 4));
  EXPECT_EQ(0, std::memcmp(p.arpTpa, lb.data(), 4));
  EXPECT_EQ(flowKeyOf(p), FlowKey{});
}

struct BadCase {
  const char* name;
  Bytes frame;
  ParseStatus want;
};

std::vector<BadCase> badCases() {
  Ip6 t = kVip6;
  Bytes tcpQuote = PacketBuilder().noEth().ipv4(kVip4, kClient4).tcp(443, 1, 0).buildL3();
  Bytes nine(PacketBuilder().noEth().ipv6(kVip6, kClient6).udp(1, 2).buildL3());
  PacketBuilder nineExt = v6();
  for (int i = 0; i < 9; ++i) nineExt.ext(Ext::kDestOpts);
  return {
      {"empty", {}, ParseStatus::kTruncatedEthernet},
      {"13_bytes", Bytes(13, 0), ParseStatus::kTruncatedEthernet},
      {"vlan_cut", v4().vlan(5).tcp(1, 2, 0).truncateAt(16).build(), ParseStatus::kTruncatedVlan},
      {"qinq_88a8", v4().vlan(5, 0x88a8).vlan(6).tcp(1, 2, 0).build(), ParseStatus::kVlanQinq},
      {"qinq_double_8100", v4().vlan(5).vlan(6).tcp(1, 2, 0).build(), ParseStatus::kVlanQinq},
      {"lldp", v4().etherType(0x88cc).tcp(1, 2, 0).build(), ParseStatus::kUnsupportedEthertype},
      {"arp_cut", PacketBuilder().arp(1, kClientMac, kClient4, Mac{}, kVip4).truncateAt(41).build(),
       ParseStatus::kTruncatedArp},
      {"arp_op3", PacketBuilder().arp(3, kClientMac, kClient4, Mac{}, kVip4).build(),
       ParseStatus::kBadArp},
      {"ipv4_cut", v4().tcp(1, 2, 0).truncateAt(33).build(), ParseStatus::kTruncatedIpv4},
      {"ipv4_version6", v4().ipVersionNibble(6).tcp(1, 2, 0).build(), ParseStatus::kBadIpv4Version},
      {"ipv4_ihl4", v4().ihl(4).tcp(1, 2, 0).build(), ParseStatus::kBadIpv4Ihl},
      {"ipv4_ihl_past_end", v4().ihl(15).proto(6).build(), ParseStatus::kBadIpv4Ihl},
      {"ipv4_len_short", v4().tcp(1, 2, 0).ipLengthDelta(-21).build(),
       ParseStatus::kBadIpv4TotalLength},
      {"ipv4_len_long", v4().tcp(1, 2, 0).ipLengthDelta(1).build(),
       ParseStatus::kBadIpv4TotalLength},
      {"ipv4_checksum", v4().tcp(1, 2, 0).badIpChecksum().build(), ParseStatus::kIpv4BadChecksum},
      {"ipv4_frag_overlap", v4().proto(6).payload(Bytes(8, 0)).fragment(8, false).build(),
       ParseStatus::kBadIpv4Fragment},
      {"ipv4_frag_past_64k", v4().proto(17).payload(Bytes(100, 0)).fragment(65528, false).build(),
       ParseStatus::kBadIpv4Fragment},
      {"ipv6_cut", v6().tcp(1, 2, 0).truncateAt(53).build(), ParseStatus::kTruncatedIpv6},
      {"ipv6_version4", v6().ipVersionNibble(4).tcp(1, 2, 0).build(), ParseStatus::kBadIpv6Version},
      {"ipv6_len_long", v6().tcp(1, 2, 0).ipLengthDelta(1).build(),
       ParseStatus::kBadIpv6PayloadLength},
      {"ipv6_jumbo", v6().ext(Ext::kHopByHop).udp(1, 2).ipLengthDelta(-16).build(),
       ParseStatus::kBadIpv6PayloadLength},
      {"ipv6_ext_cut", v6().ext(Ext::kDestOpts, 16).udp(1, 2).ipLengthDelta(-20).build(),
       ParseStatus::kBadIpv6Ext},
      {"ipv6_hbh_not_first", v6().ext(Ext::kDestOpts).ext(Ext::kHopByHop).udp(1, 2).build(),
       ParseStatus::kBadIpv6Ext},
      {"ipv6_nine_ext", nineExt.udp(1, 2).build(), ParseStatus::kTooManyIpv6Ext},
      {"tcp_cut", v4().tcp(1, 2, 0).ipLengthDelta(-1).truncateAt(53).build(),
       ParseStatus::kTruncatedTcp},
      {"tcp_first_fragment_tiny", v4().proto(6).payload(Bytes(16, 0)).fragment(0, true).build(),
       ParseStatus::kTruncatedTcp},
      {"tcp_doff4", v4().tcp(1, 2, 0).tcpDataOffset(4).build(), ParseStatus::kBadTcpOffset},
      {"tcp_doff_past_end", v4().tcp(1, 2, 0).tcpDataOffset(6).build(), ParseStatus::kBadTcpOffset},
      {"udp_cut", v6().proto(17).payload(Bytes(7, 0)).build(), ParseStatus::kTruncatedUdp},
      {"udp_len7", v4().udp(1, 2).udpLength(7).build(), ParseStatus::kBadUdpLength},
      {"udp_len_past_end", v4().udp(1, 2).payload({1}).udpLength(10).build(),
       ParseStatus::kBadUdpLength},
      {"icmp_cut", v4().proto(1).payload(Bytes(7, 0)).build(), ParseStatus::kTruncatedIcmp},
      {"icmp6_cut", v6().proto(58).payload(Bytes(7, 0)).build(), ParseStatus::kTruncatedIcmpv6},
      {"icmp_error_no_quote", v4().icmp(3, 1).build(), ParseStatus::kBadIcmpInner},
      {"icmp_error_quote_without_ports",
       v4().icmp(11, 0).payload(Bytes(tcpQuote.begin(), tcpQuote.begin() + 22)).build(),
       ParseStatus::kBadIcmpInner},
      {"icmp_error_v6_quote", v4().icmp(3, 3).payload(nine).build(), ParseStatus::kBadIcmpInner},
      {"icmp6_error_v4_quote", v6().icmp(1, 4).payload(tcpQuote).build(),
       ParseStatus::kBadIcmpInner},
      {"ns_hop_limit_64", v6().ttl(64).icmp(135, 0).payload(ndpBody(t, 1, true)).build(),
       ParseStatus::kBadNdp},
      {"ns_code_1", v6().ttl(255).icmp(135, 1).payload(ndpBody(t, 1, true)).build(),
       ParseStatus::kBadNdp},
      {"ns_no_target", v6().ttl(255).icmp(135, 0).payload(Bytes(15, 0)).build(),
       ParseStatus::kBadNdp},
      {"ns_zero_option_len",
       v6().ttl(255).icmp(135, 0).payload([&] {
         Bytes b = ndpBody(t, 1, true);
         b[17] = 0;
         return b;
       }()).build(),
       ParseStatus::kBadNdp},
      {"ns_option_past_end",
       v6().ttl(255).icmp(135, 0).payload([&] {
         Bytes b = ndpBody(t, 1, true);
         b[17] = 2;
         return b;
       }()).build(),
       ParseStatus::kBadNdp},
  };
}

TEST(ParsePacket, RefusedShapes) {
  for (const BadCase& c : badCases()) {
    SCOPED_TRACE(c.name);
    ParsedPacket p;
    ParseStatus s = parse(c.frame, p);
    EXPECT_EQ(s, c.want) << "got " << toString(s) << " want " << toString(c.want);
  }
}

TEST(ParsePacket, EveryStatusHasAUniqueName) {
  std::set<std::string> names;
  for (size_t i = 0; i < kParseStatusCount; ++i) {
    std::string n = toString(static_cast<ParseStatus>(i));
    EXPECT_NE(n, "unknown");
    for (char ch : n) EXPECT_TRUE((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '_') << n;
    names.insert(n);
  }
  EXPECT_EQ(names.size(), kParseStatusCount);
  EXPECT_STREQ(toString(static_cast<ParseStatus>(kParseStatusCount)), "unknown");
}

// Frames whose every byte belongs to some header or length-covered payload:
// any cut gives a refusal (never kOk with stale offsets, never a read past
// the end under ASan).
std::vector<std::pair<const char*, Bytes>> sweepFrames() {
  Bytes quote = PacketBuilder().noEth().ipv6(kVip6, kClient6).ext(Ext::kRouting, 24).tcp(443, 9, 0)
                    .buildL3();
  return {
      {"tcp4_opts", v4().vlan(3).ipv4Options({1, 1, 1, 1}).tcp(1, 2, kTcpSyn, 1, 0, {2, 4, 5, 0xb4})
                        .payload({1, 2, 3})
                        .build()},
      {"tcp6_ext", v6().ext(Ext::kHopByHop).ext(Ext::kRouting, 24).ext(Ext::kFragment, 8, 0, true)
                       .ext(Ext::kAh, 16).ext(Ext::kDestOpts, 16).tcp(1, 2, kTcpAck, 5, 6, {1, 1, 1, 1})
                       .payload({7, 7})
                       .build()},
      {"icmp6_ptb", v6().icmp(2, 0, 1400).payload(Bytes(quote.begin(), quote.begin() + 40 + 24 + 8))
                        .build()},
      {"ns", v6().ttl(255).icmp(135, 0).payload(ndpBody(kVip6, 1, true)).build()},
      {"arp", PacketBuilder().arp(2, kClientMac, kClient4, kLbMac, kVip4).build()},
      {"udp4", v4().udp(1, 2).payload({1, 2, 3}).build()},
  };
}

TEST(ParsePacket, EveryTruncationIsRefused) {
  for (const auto& [name, frame] : sweepFrames()) {
    SCOPED_TRACE(name);
    ParsedPacket p;
    ASSERT_EQ(parse(frame, p), ParseStatus::kOk);
    for (size_t cut = 0; cut < frame.size(); ++cut) {
      Bytes part(frame.begin(), frame.begin() + cut);
      EXPECT_NE(parse(part, p), ParseStatus::kOk) << "cut at " << cut;
    }
  }
}

TEST(ParsePacket, RandomCorruptionNeverCrashes) {
  uint64_t rng = 0x9e3779b97f4a7c15ULL;
  auto next = [&rng] {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
  };
  std::vector<Bytes> seeds;
  for (auto& [name, f] : sweepFrames()) seeds.push_back(f);
  for (const OkCase& c : okCases()) seeds.push_back(c.frame);
  for (int iter = 0; iter < 20000; ++iter) {
    Bytes b = seeds[next() % seeds.size()];
    int flips = 1 + static_cast<int>(next() % 4);
    for (int i = 0; i < flips; ++i) b[next() % b.size()] ^= static_cast<uint8_t>(1 + next() % 255);
    if (next() % 4 == 0) b.resize(next() % (b.size() + 1));
    ParsedPacket p;
    if (parse(b, p) == ParseStatus::kOk) expectConsistent(p, b.size());
  }
}

TEST(ParsePacket, NicChecksumVerdict) {
  Bytes good = v4().tcp(1, 2, 0).build();
  Bytes bad = v4().tcp(1, 2, 0).badIpChecksum().build();
  ParsedPacket p;
  EXPECT_EQ(parseFrame(good.data(), static_cast<uint32_t>(good.size()), p, Frame::RxChecksum::kBad),
            ParseStatus::kIpv4BadChecksum);
  EXPECT_EQ(parseFrame(bad.data(), static_cast<uint32_t>(bad.size()), p, Frame::RxChecksum::kGood),
            ParseStatus::kOk);
  TestFrame tf(bad);
  EXPECT_EQ(parseFrame(tf.frame, p), ParseStatus::kIpv4BadChecksum);
  // The NIC verdict is about IPv4 only.
  Bytes six = v6().tcp(1, 2, 0).build();
  EXPECT_EQ(parseFrame(six.data(), static_cast<uint32_t>(six.size()), p, Frame::RxChecksum::kBad),
            ParseStatus::kOk);
}

TEST(FlowKey, EqualityReverseAndHash) {
  FlowKey a = makeFlowKeyV4(0x0a000001, 0x0a000002, 1234, 80, kProtoTcp);
  FlowKey b = a;
  EXPECT_EQ(a, b);
  EXPECT_EQ(hashFlow(a), hashFlow(b));
  FlowKey r = a.reversed();
  EXPECT_EQ(r.srcPort, 80);
  EXPECT_EQ(r.dstPort, 1234);
  EXPECT_EQ(r.src[3], 2);
  EXPECT_NE(r, a);
  EXPECT_EQ(r.reversed(), a);
  EXPECT_NE(hashFlow(r), hashFlow(a));
  // Pinned: the hash must not change between builds or machines (Maglev
  // agreement between balancers).
  EXPECT_EQ(hashFlow(a), 0x5e6f4761cd23b7f8ULL);
  // Every field matters.
  std::set<uint64_t> hashes{hashFlow(a)};
  FlowKey c = a;
  c.srcPort++;
  hashes.insert(hashFlow(c));
  c = a;
  c.proto = kProtoUdp;
  hashes.insert(hashFlow(c));
  c = a;
  c.ipVersion = 6;
  hashes.insert(hashFlow(c));
  c = a;
  c.dst[15] = 1;
  hashes.insert(hashFlow(c));
  EXPECT_EQ(hashes.size(), 5u);
  // Spread: low bits of sequential ports look uniform.
  int buckets[16] = {};
  for (uint16_t port = 0; port < 16000; ++port) {
    c = a;
    c.srcPort = port;
    buckets[hashFlow(c) & 15]++;
  }
  for (int n : buckets) EXPECT_NEAR(n, 1000, 150);
}

}  // namespace
}  // namespace moat::l4
