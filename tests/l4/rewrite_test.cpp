#include "moat/l4/rewrite.h"

#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "moat/l4/packet.h"
#include "packet_builder.h"

namespace moat::l4 {
namespace {

using namespace moat::l4::testing;

const Mac kClientMac{0x02, 0xaa, 0, 0, 0, 0x01};
const Mac kLbMac{0x02, 0xbb, 0, 0, 0, 0x02};
const Mac kNextHopMac{0x02, 0xcc, 0, 0, 0, 0x03};
const Ip4 kClient4{198, 51, 100, 7};
const Ip4 kVip4{203, 0, 113, 10};
const Ip4 kLb4{10, 0, 0, 1};
const Ip4 kBackend4{10, 0, 1, 20};
const Ip6 kClient6 = ip6({0x2001, 0xdb8, 0, 0, 0, 0, 0, 7});
const Ip6 kVip6 = ip6({0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 10});
const Ip6 kLb6 = ip6({0xfd00, 0, 0, 0, 0, 0, 0, 1});
const Ip6 kBackend6 = ip6({0xfd00, 0, 0, 1, 0, 0, 0, 20});

PacketBuilder v4() { return PacketBuilder().eth(kClientMac, kLbMac).ipv4(kClient4, kVip4); }
PacketBuilder v6() { return PacketBuilder().eth(kClientMac, kLbMac).ipv6(kClient6, kVip6); }

ParsedPacket mustParse(const Bytes& b) {
  ParsedPacket p;
  Bytes copy(b);
  ParseStatus s = parseFrame(copy.data(), static_cast<uint32_t>(copy.size()), p);
  EXPECT_EQ(s, ParseStatus::kOk) << toString(s);
  return p;
}

Bytes slice(const Bytes& b, size_t from, size_t n) {
  return Bytes(b.begin() + static_cast<long>(from), b.begin() + static_cast<long>(from + n));
}

// Independent checks of a rewritten frame: IPv4 header checksum and the L4
// checksum (TCP/UDP/ICMP/ICMPv6) recomputed with the test's reference code.
void expectChecksumsValid(const Bytes& f, const ParsedPacket& p) {
  if (p.ipVersion == 4) {
    size_t ihl = p.l4Offset - p.l3Offset;
    EXPECT_EQ(refChecksum(slice(f, p.l3Offset, ihl)), 0) << "IPv4 header checksum";
  }
  if (p.ipVersion == 0 || p.isFragment) return;
  Bytes l4 = slice(f, p.l4Offset, p.l3Offset + p.l3Len - p.l4Offset);
  if (p.proto == kProtoUdp && p.ipVersion == 4 && get16(l4, 6) == 0) return;  // no checksum
  if (p.proto == kProtoTcp || p.proto == kProtoUdp || p.proto == kProtoIcmp ||
      p.proto == kProtoIcmpv6) {
    EXPECT_EQ(refL4Checksum(p.ipVersion, p.src, p.dst, p.proto, l4), 0) << "L4 checksum";
  }
}

EncapParams params(uint8_t outerVersion) {
  EncapParams e;
  e.outerVersion = outerVersion;
  if (outerVersion == 4) {
    std::memcpy(e.outerSrc, kLb4.data(), 4);
    std::memcpy(e.outerDst, kBackend4.data(), 4);
  } else {
    std::memcpy(e.outerSrc, kLb6.data(), 16);
    std::memcpy(e.outerDst, kBackend6.data(), 16);
  }
  std::memcpy(e.srcMac, kLbMac.data(), 6);
  std::memcpy(e.dstMac, kNextHopMac.data(), 6);
  return e;
}

// ---------------------------------------------------------------- checksums

TEST(Checksum, MatchesReferenceAndIncrementalMatchesFull) {
  uint64_t rng = 12345;
  auto next = [&rng] {
    rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
    return static_cast<uint32_t>(rng >> 33);
  };
  for (int iter = 0; iter < 500; ++iter) {
    Bytes b(2 + next() % 300);
    for (uint8_t& x : b) x = static_cast<uint8_t>(next());
    EXPECT_EQ(checksumFinish(checksumPartial(b.data(), b.size())), refChecksum(b));
    if (b.size() % 2) b.push_back(0);
    // Store the checksum in the first word, change another word, update.
    b[0] = b[1] = 0;
    uint16_t c = refChecksum(b);
    put16(b, 0, c);
    if (b.size() < 4) continue;
    size_t at = 2 + 2 * (next() % (b.size() / 2 - 1));
    uint16_t oldWord = get16(b, at);
    uint16_t newWord = static_cast<uint16_t>(next());
    put16(b, at, newWord);
    uint16_t inc = checksumUpdate16(c, oldWord, newWord);
    put16(b, 0, inc);
    EXPECT_EQ(refChecksum(b), 0) << "incremental update must give a valid sum";
  }
}

TEST(Checksum, UpdateBytesForAnAddressChange) {
  Bytes f = v4().tcp(1, 2, kTcpAck).payload({1, 2, 3}).build();
  ParsedPacket p = mustParse(f);
  uint8_t* tcp = f.data() + p.l4Offset;
  uint16_t old = get16(f, p.l4Offset + 16);
  uint8_t newDst[4] = {10, 9, 8, 7};
  uint16_t updated = checksumUpdateBytes(old, f.data() + 30, newDst, 4);
  std::memcpy(f.data() + 30, newDst, 4);
  storeChecksum(tcp + 16, updated);
  storeChecksum(f.data() + 24, ipv4HeaderChecksum(f.data() + 14, 20));
  ParsedPacket q = mustParse(f);
  expectChecksumsValid(f, q);
}

TEST(Checksum, SetL4ChecksumAllProtocols) {
  for (Bytes f : {v4().tcp(1, 2, 0).payload({1}).build(), v4().udp(1, 2).payload({1, 2, 3}).build(),
                  v4().icmp(8, 0, 7).payload({1, 2, 3}).build(), v6().udp(9, 9).build(),
                  v6().tcp(1, 2, 0).build(), v6().icmp(128, 0, 1).payload({5}).build()}) {
    ParsedPacket p = mustParse(f);
    uint32_t n = p.l3Offset + p.l3Len - p.l4Offset;
    // Scribble the checksum, then recompute.
    f[p.l4Offset + (p.proto == kProtoTcp ? 16 : p.proto == kProtoUdp ? 6 : 2)] ^= 0x5a;
    ASSERT_TRUE(setL4Checksum(p.ipVersion, p.src, p.dst, p.proto, f.data() + p.l4Offset, n));
    expectChecksumsValid(f, p);
  }
  uint8_t junk[20] = {};
  EXPECT_FALSE(setL4Checksum(4, junk, junk, 47, junk, 20));
}

TEST(RewriteStatusNames, Unique) {
  std::vector<std::string> names;
  for (size_t i = 0; i < kRewriteStatusCount; ++i) {
    std::string n = toString(static_cast<RewriteStatus>(i));
    EXPECT_NE(n, "unknown");
    for (const std::string& m : names) EXPECT_NE(n, m);
    names.push_back(n);
  }
}

// ---------------------------------------------------------------- encapsulation

struct EncapCase {
  const char* name;
  Bytes frame;
  uint8_t outerVersion;
  bool gue;
  bool keepVlan;
};

std::vector<EncapCase> encapCases() {
  Bytes data(300, 0x33);
  Bytes t4 = v4().tos(0xb9).df().tcp(40000, 443, kTcpAck).payload(data).build();
  Bytes t4nodf = v4().udp(5000, 53).payload(data).build();
  Bytes t6 = v6().tos(0x2e).ext(Ext::kDestOpts).tcp(40000, 443, kTcpAck).payload(data).build();
  Bytes t4vlan = v4().vlan(42).df().tcp(1, 443, kTcpSyn).build();
  Bytes t6padded = v6().icmp(128, 0, 1).l2Padding(12).build();
  std::vector<EncapCase> out;
  for (bool gue : {false, true}) {
    for (uint8_t ov : {4, 6}) {
      out.push_back({"tcp4", t4, ov, gue, false});
      out.push_back({"udp4_nodf", t4nodf, ov, gue, false});
      out.push_back({"tcp6_ext", t6, ov, gue, false});
      out.push_back({"vlan_dropped", t4vlan, ov, gue, false});
      out.push_back({"vlan_kept", t4vlan, ov, gue, true});
      out.push_back({"padded", t6padded, ov, gue, false});
    }
  }
  return out;
}

TEST(Encap, OuterHeadersCorrectInnerByteIdentical) {
  const uint64_t hash = 0x0123456789abcdefULL;
  for (const EncapCase& c : encapCases()) {
    SCOPED_TRACE(std::string(c.name) + (c.gue ? " gue" : " ipip") + " outer v" +
                 std::to_string(c.outerVersion));
    ParsedPacket in = mustParse(c.frame);
    Bytes innerIp = slice(c.frame, in.l3Offset, in.l3Len);
    TestFrame tf(c.frame);
    EncapParams e = params(c.outerVersion);
    e.keepVlan = c.keepVlan;
    RewriteStatus s = c.gue ? encapGue(tf.frame, in, e, hash) : encapIpip(tf.frame, in, e, hash);
    ASSERT_EQ(s, RewriteStatus::kOk) << toString(s);
    ASSERT_TRUE(tf.consistent());
    Bytes out = tf.bytes();
    ParsedPacket o = mustParse(out);
    EXPECT_EQ(0, std::memcmp(o.dstMac, kNextHopMac.data(), 6));
    EXPECT_EQ(0, std::memcmp(o.srcMac, kLbMac.data(), 6));
    EXPECT_EQ(o.hasVlan, c.keepVlan && in.hasVlan);
    if (o.hasVlan) {
      EXPECT_EQ(o.vlan, in.vlan);
    }
    EXPECT_EQ(o.ipVersion, c.outerVersion);
    EXPECT_EQ(o.ttl, 64);
    EXPECT_EQ(o.tos, in.tos);
    uint32_t overhead = (c.outerVersion == 4 ? 20u : 40u) + (c.gue ? 12u : 0u);
    EXPECT_EQ(o.l3Len, in.l3Len + overhead);
    EXPECT_EQ(out.size(), o.l3Offset + o.l3Len) << "no padding left";
    EXPECT_EQ(0, std::memcmp(o.src, c.outerVersion == 4 ? kLb4.data() : kLb6.data(),
                             c.outerVersion == 4 ? 4 : 16));
    EXPECT_EQ(0, std::memcmp(o.dst, c.outerVersion == 4 ? kBackend4.data() : kBackend6.data(),
                             c.outerVersion == 4 ? 4 : 16));
    const uint8_t innerProto = in.ipVersion == 4 ? kProtoIpip : kProtoIpv6;
    if (c.outerVersion == 4) {
      EXPECT_EQ(o.dontFragment, in.ipVersion == 6 || in.dontFragment);
    } else {
      EXPECT_EQ(get32(out, o.l3Offset) & 0xfffff, (hash * 0x9e3779b97f4a7c15ULL) >> 44)
          << "flow label";
    }
    size_t innerAt;
    if (c.gue) {
      ASSERT_EQ(o.proto, kProtoUdp);
      EXPECT_EQ(o.dstPort, 6080);
      EXPECT_GE(o.srcPort, 49152);
      Bytes udp = slice(out, o.l4Offset, 12);
      EXPECT_EQ(get16(udp, 4), 12 + in.l3Len);
      EXPECT_EQ(udp[8], 0) << "GUE ver 0, C 0, hlen 0";
      EXPECT_EQ(udp[9], innerProto);
      EXPECT_EQ(get16(udp, 10), 0);
      if (c.outerVersion == 4) {
        EXPECT_EQ(get16(udp, 6), 0);
      } else {
        EXPECT_NE(get16(udp, 6), 0);
      }
      innerAt = o.l4Offset + 12u;
    } else {
      ASSERT_EQ(o.proto, innerProto);
      EXPECT_EQ(o.payloadOffset, o.l4Offset) << "IPIP: inner packet is opaque payload";
      innerAt = o.l4Offset;
    }
    expectChecksumsValid(out, o);
    EXPECT_EQ(slice(out, innerAt, out.size() - innerAt), innerIp) << "inner byte-identical";
    // The inner packet decapsulated like the kernel would parses to the same flow.
    Bytes decap = slice(out, 0, 12);
    push16(decap, in.ipVersion == 4 ? kEtherTypeIpv4 : kEtherTypeIpv6);
    decap.insert(decap.end(), innerIp.begin(), innerIp.end());
    EXPECT_EQ(flowKeyOf(mustParse(decap)), flowKeyOf(in));
  }
}

TEST(Encap, GueSourcePortSpreadsWithHash) {
  Bytes f = v4().tcp(1, 2, 0).build();
  ParsedPacket p = mustParse(f);
  std::vector<uint16_t> ports;
  for (uint64_t h : {0ULL, 1ULL, 0xffffULL, 0x10000ULL, 0xdeadbeefcafef00dULL}) {
    TestFrame tf(f);
    ASSERT_EQ(encapGue(tf.frame, p, params(4), h), RewriteStatus::kOk);
    ParsedPacket o = mustParse(tf.bytes());
    EXPECT_GE(o.srcPort, 49152);
    for (uint16_t q : ports) EXPECT_NE(q, o.srcPort);
    ports.push_back(o.srcPort);
  }
}

TEST(Encap, HeadroomAndMtu) {
  Bytes data(1440, 0);
  Bytes big4df = v4().df().tcp(1, 2, kTcpAck).payload(data).build();  // 1480-byte IP packet
  Bytes big4 = v4().tcp(1, 2, kTcpAck).payload(data).build();
  Bytes big6 = v6().tcp(1, 2, kTcpAck).payload(Bytes(1420, 0)).build();  // 1480
  Bytes small = v4().vlan(9).df().tcp(1, 2, kTcpAck).build();
  struct Row {
    const char* name;
    const Bytes& frame;
    uint8_t outer;
    bool gue;
    uint32_t headroom;
    uint16_t mtu;
    RewriteStatus want;
  } rows[] = {
      {"fits_exactly", big4df, 4, false, 128, 1500, RewriteStatus::kOk},
      {"df_too_big", big4df, 6, false, 128, 1500, RewriteStatus::kTooBig},
      {"df_gue_too_big", big4df, 4, true, 128, 1500, RewriteStatus::kTooBig},
      {"no_df_too_big", big4, 4, true, 128, 1500, RewriteStatus::kFragmentationNeeded},
      {"v6_too_big", big6, 4, false, 128, 1499, RewriteStatus::kTooBig},
      {"v6_fits", big6, 4, false, 128, 1500, RewriteStatus::kOk},
      {"headroom_exact_vlan_dropped", small, 4, false, 16, 1500, RewriteStatus::kOk},
      {"headroom_short", small, 4, false, 15, 1500, RewriteStatus::kNoHeadroom},
      {"gue6_headroom_exact", small, 6, true, 48, 1500, RewriteStatus::kOk},
      {"gue6_headroom_short", small, 6, true, 47, 1500, RewriteStatus::kNoHeadroom},
  };
  for (const Row& r : rows) {
    SCOPED_TRACE(r.name);
    ParsedPacket p = mustParse(r.frame);
    TestFrame tf(r.frame, r.headroom, 0);
    EncapParams e = params(r.outer);
    e.mtu = r.mtu;
    RewriteStatus s = r.gue ? encapGue(tf.frame, p, e, 7) : encapIpip(tf.frame, p, e, 7);
    EXPECT_EQ(s, r.want) << toString(s);
    if (s != RewriteStatus::kOk) {
      EXPECT_EQ(tf.bytes(), r.frame) << "refused rewrite leaves the frame unchanged";
    } else {
      expectChecksumsValid(tf.bytes(), mustParse(tf.bytes()));
    }
  }
}

TEST(Encap, PositionalFormMatchesParams) {
  Bytes f = v6().udp(1, 2).payload({1, 2, 3}).build();
  ParsedPacket p = mustParse(f);
  TestFrame a(f), b(f);
  EncapParams e = params(4);
  ASSERT_EQ(encapIpip(a.frame, p, e, hashFlow(flowKeyOf(p))), RewriteStatus::kOk);
  ASSERT_EQ(encapIpip(b.frame, p, kLb4.data(), kBackend4.data(), 4, kLbMac.data(),
                      kNextHopMac.data()),
            RewriteStatus::kOk);
  EXPECT_EQ(a.bytes(), b.bytes());
}

TEST(Encap, RefusesArp) {
  Bytes f = PacketBuilder().arp(1, kClientMac, kClient4, Mac{}, kLb4).build();
  ParsedPacket p = mustParse(f);
  TestFrame tf(f);
  EXPECT_EQ(encapIpip(tf.frame, p, params(4), 0), RewriteStatus::kUnsupported);
}

TEST(L2Dsr, OnlyMacsChange) {
  Bytes f = v4().vlan(5).tcp(1, 2, kTcpAck).payload({1, 2}).build();
  TestFrame tf(f);
  ASSERT_EQ(rewriteL2Dsr(tf.frame, kLbMac.data(), kNextHopMac.data()), RewriteStatus::kOk);
  Bytes out = tf.bytes();
  EXPECT_EQ(slice(out, 0, 6), Bytes(kNextHopMac.begin(), kNextHopMac.end()));
  EXPECT_EQ(slice(out, 6, 6), Bytes(kLbMac.begin(), kLbMac.end()));
  EXPECT_EQ(slice(out, 12, out.size() - 12), slice(f, 12, f.size() - 12));
  Frame tiny;
  uint8_t buf[10] = {};
  tiny.data = buf;
  tiny.len = 10;
  EXPECT_EQ(rewriteL2Dsr(tiny, kLbMac.data(), kNextHopMac.data()), RewriteStatus::kUnsupported);
}

// ---------------------------------------------------------------- ICMP errors

TEST(IcmpFragNeeded, QuotesHeaderAndEightBytes) {
  for (bool options : {false, true}) {
    SCOPED_TRACE(options ? "with IP options" : "plain");
    PacketBuilder b = v4().vlan(11).df().tcp(40000, 443, kTcpAck).payload(Bytes(1460, 0x77));
    if (options) b.ipv4Options({0x94, 4, 0, 0});
    Bytes f = b.build();
    ParsedPacket in = mustParse(f);
    uint32_t ihl = in.l4Offset - in.l3Offset;
    Bytes quote = slice(f, in.l3Offset, ihl + 8);
    TestFrame tf(f);
    ASSERT_EQ(makeIcmpFragNeeded(tf.frame, in, 1480, kLb4.data(), kLbMac.data()),
              RewriteStatus::kOk);
    Bytes out = tf.bytes();
    ParsedPacket o = mustParse(out);
    EXPECT_EQ(out.size(), 18u + 20 + 8 + quote.size());
    EXPECT_EQ(o.vlan, 11);
    EXPECT_EQ(0, std::memcmp(o.dstMac, kClientMac.data(), 6));
    EXPECT_EQ(0, std::memcmp(o.srcMac, kLbMac.data(), 6));
    EXPECT_EQ(o.proto, kProtoIcmp);
    EXPECT_EQ(o.icmpType, 3);
    EXPECT_EQ(o.icmpCode, 4);
    EXPECT_EQ(o.icmpMtu, 1480u);
    EXPECT_EQ(0, std::memcmp(o.src, kLb4.data(), 4));
    EXPECT_EQ(0, std::memcmp(o.dst, kClient4.data(), 4));
    ASSERT_TRUE(o.hasInner);
    EXPECT_EQ(o.inner, flowKeyOf(in));
    EXPECT_EQ(slice(out, o.innerOffset, quote.size()), quote);
    expectChecksumsValid(out, o);
  }
}

TEST(IcmpFragNeeded, SuppressedCases) {
  Bytes quote = PacketBuilder().noEth().ipv4(kVip4, kClient4).tcp(1, 2, 0).buildL3();
  struct Row {
    const char* name;
    Bytes frame;
    RewriteStatus want;
  } rows[] = {
      {"icmp_error", v4().df().icmp(3, 1).payload(quote).build(), RewriteStatus::kSuppressed},
      {"nonfirst_fragment", v4().proto(17).payload(Bytes(64, 0)).fragment(1480, false).build(),
       RewriteStatus::kSuppressed},
      {"multicast_dst", PacketBuilder().ipv4(kClient4, Ip4{239, 1, 1, 1}).udp(1, 2).build(),
       RewriteStatus::kSuppressed},
      {"zero_src", PacketBuilder().ipv4(Ip4{0, 0, 0, 0}, kVip4).udp(1, 2).build(),
       RewriteStatus::kSuppressed},
      {"echo_request_ok", v4().icmp(8, 0).payload(Bytes(100, 0)).build(), RewriteStatus::kOk},
      {"ipv6", v6().udp(1, 2).build(), RewriteStatus::kUnsupported},
  };
  for (const Row& r : rows) {
    SCOPED_TRACE(r.name);
    ParsedPacket p = mustParse(r.frame);
    TestFrame tf(r.frame);
    EXPECT_EQ(makeIcmpFragNeeded(tf.frame, p, 1400, kLb4.data(), kLbMac.data()), r.want);
    if (r.want != RewriteStatus::kOk) {
      EXPECT_EQ(tf.bytes(), r.frame);
    }
  }
}

TEST(IcmpFragNeeded, ShortPacketUsesTailroom) {
  Bytes f = v4().udp(1, 2).build();  // 28-byte IP packet; reply needs 28 + 28
  ParsedPacket p = mustParse(f);
  {
    TestFrame tf(f, 128, 27);
    EXPECT_EQ(makeIcmpFragNeeded(tf.frame, p, 1400, kLb4.data(), kLbMac.data()),
              RewriteStatus::kNoTailroom);
    EXPECT_EQ(tf.bytes(), f);
  }
  TestFrame tf(f, 128, 28);
  ASSERT_EQ(makeIcmpFragNeeded(tf.frame, p, 1400, kLb4.data(), kLbMac.data()), RewriteStatus::kOk);
  ASSERT_TRUE(tf.consistent());
  ParsedPacket o = mustParse(tf.bytes());
  EXPECT_EQ(o.inner, flowKeyOf(p));
  expectChecksumsValid(tf.bytes(), o);
}

TEST(Icmpv6PacketTooBig, QuoteFillsTo1280) {
  struct Row {
    const char* name;
    Bytes frame;
    size_t replyL3;
  } rows[] = {
      {"big", v6().ext(Ext::kDestOpts).tcp(40000, 443, kTcpAck).payload(Bytes(1400, 9)).build(),
       1280},
      {"small", v6().udp(1, 2).payload(Bytes(100, 9)).build(), 48 + 40 + 108},
  };
  for (const Row& r : rows) {
    SCOPED_TRACE(r.name);
    ParsedPacket in = mustParse(r.frame);
    TestFrame tf(r.frame);
    ASSERT_EQ(makeIcmpv6PacketTooBig(tf.frame, in, 1452, kVip6.data(), kLbMac.data()),
              RewriteStatus::kOk);
    Bytes out = tf.bytes();
    ParsedPacket o = mustParse(out);
    EXPECT_EQ(o.l3Len, r.replyL3);
    EXPECT_EQ(o.icmpType, 2);
    EXPECT_EQ(o.icmpMtu, 1452u);
    EXPECT_EQ(o.ttl, 64);
    EXPECT_EQ(0, std::memcmp(o.dst, kClient6.data(), 16));
    EXPECT_EQ(0, std::memcmp(o.src, kVip6.data(), 16));
    ASSERT_TRUE(o.hasInner);
    EXPECT_EQ(o.inner, flowKeyOf(in));
    EXPECT_EQ(slice(out, 14 + 48, r.replyL3 - 48), slice(r.frame, 14, r.replyL3 - 48));
    expectChecksumsValid(out, o);
  }
}

TEST(Icmpv6PacketTooBig, SuppressedCases) {
  Bytes quote = PacketBuilder().noEth().ipv6(kVip6, kClient6).udp(1, 2).buildL3();
  Bytes err = v6().icmp(1, 0).payload(quote).build();
  Bytes mcastSrc = PacketBuilder().ipv6(ip6({0xff02, 0, 0, 0, 0, 0, 0, 1}), kVip6).udp(1, 2).build();
  Bytes unspec = PacketBuilder().ipv6(Ip6{}, kVip6).udp(1, 2).build();
  for (const Bytes* f : {&err, &mcastSrc, &unspec}) {
    ParsedPacket p = mustParse(*f);
    TestFrame tf(*f);
    EXPECT_EQ(makeIcmpv6PacketTooBig(tf.frame, p, 1280, kVip6.data(), kLbMac.data()),
              RewriteStatus::kSuppressed);
    EXPECT_EQ(tf.bytes(), *f);
  }
  Bytes small = v6().udp(1, 2).build();
  ParsedPacket p = mustParse(small);
  TestFrame tf(small, 128, 47);
  EXPECT_EQ(makeIcmpv6PacketTooBig(tf.frame, p, 1280, kVip6.data(), kLbMac.data()),
            RewriteStatus::kNoTailroom);
}

// ---------------------------------------------------------------- ARP / NDP

TEST(Arp, ReplyAndRequest) {
  const Mac bcast{0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
  Bytes f = PacketBuilder().eth(kClientMac, bcast).vlan(3).arp(1, kClientMac, kClient4, Mac{}, kLb4)
                .l2Padding(18)
                .build();
  ParsedPacket in = mustParse(f);
  TestFrame tf(f);
  ASSERT_EQ(makeArpReply(tf.frame, in, kLbMac.data()), RewriteStatus::kOk);
  Bytes out = tf.bytes();
  EXPECT_EQ(out.size(), 18u + 28);
  ParsedPacket o = mustParse(out);
  EXPECT_EQ(o.arpOp, 2);
  EXPECT_EQ(o.vlan, 3);
  EXPECT_EQ(0, std::memcmp(o.dstMac, kClientMac.data(), 6));
  EXPECT_EQ(0, std::memcmp(o.srcMac, kLbMac.data(), 6));
  EXPECT_EQ(0, std::memcmp(o.arpSha, kLbMac.data(), 6));
  EXPECT_EQ(0, std::memcmp(o.arpSpa, kLb4.data(), 4));
  EXPECT_EQ(0, std::memcmp(o.arpTha, kClientMac.data(), 6));
  EXPECT_EQ(0, std::memcmp(o.arpTpa, kClient4.data(), 4));
  // A reply is not answered.
  TestFrame again(out);
  EXPECT_EQ(makeArpReply(again.frame, o, kLbMac.data()), RewriteStatus::kUnsupported);

  uint8_t buf[kArpFrameLen];
  EXPECT_EQ(writeArpRequest(buf, kArpFrameLen - 1, kLbMac.data(), kLb4.data(), kClient4.data()), 0u);
  ASSERT_EQ(writeArpRequest(buf, kArpFrameLen, kLbMac.data(), kLb4.data(), kClient4.data()),
            kArpFrameLen);
  ParsedPacket r = mustParse(Bytes(buf, buf + kArpFrameLen));
  EXPECT_EQ(r.arpOp, 1);
  EXPECT_EQ(0, std::memcmp(r.dstMac, bcast.data(), 6));
  EXPECT_EQ(0, std::memcmp(r.arpSha, kLbMac.data(), 6));
  EXPECT_EQ(0, std::memcmp(r.arpSpa, kLb4.data(), 4));
  EXPECT_EQ(0, std::memcmp(r.arpTpa, kClient4.data(), 4));
  EXPECT_EQ(Bytes(r.arpTha, r.arpTha + 6), Bytes(6, 0));
}

Bytes nsBody(const Ip6& target, bool sllao) {
  Bytes b(target.begin(), target.end());
  if (sllao) {
    b.push_back(1);
    b.push_back(1);
    b.insert(b.end(), kClientMac.begin(), kClientMac.end());
  }
  return b;
}

TEST(Ndp, AdvertAnswersSolicit) {
  const Mac otherMac{0x02, 0xdd, 0, 0, 0, 9};
  struct Row {
    const char* name;
    Bytes frame;
    uint32_t tailroom;
    RewriteStatus want;
    bool dad;
  } rows[] = {
      {"with_sllao", PacketBuilder().eth(otherMac, kLbMac).ipv6(kClient6, kVip6).ttl(255)
                         .icmp(135, 0).payload(nsBody(kVip6, true)).build(),
       0, RewriteStatus::kOk, false},
      {"no_sllao_needs_tailroom", PacketBuilder().eth(otherMac, kLbMac).ipv6(kClient6, kVip6)
                                      .ttl(255).icmp(135, 0).payload(nsBody(kVip6, false)).build(),
       8, RewriteStatus::kOk, false},
      {"no_sllao_no_tailroom", PacketBuilder().eth(otherMac, kLbMac).ipv6(kClient6, kVip6)
                                   .ttl(255).icmp(135, 0).payload(nsBody(kVip6, false)).build(),
       7, RewriteStatus::kNoTailroom, false},
      {"dad", PacketBuilder().eth(otherMac, kLbMac).ipv6(Ip6{}, kVip6).ttl(255).icmp(135, 0)
                  .payload(nsBody(kVip6, false)).build(),
       8, RewriteStatus::kOk, true},
  };
  for (const Row& r : rows) {
    SCOPED_TRACE(r.name);
    ParsedPacket in = mustParse(r.frame);
    TestFrame tf(r.frame, 128, r.tailroom);
    ASSERT_EQ(makeNeighborAdvert(tf.frame, in, kLbMac.data()), r.want);
    if (r.want != RewriteStatus::kOk) {
      EXPECT_EQ(tf.bytes(), r.frame);
      continue;
    }
    Bytes out = tf.bytes();
    ParsedPacket o = mustParse(out);
    EXPECT_EQ(out.size(), 14u + 72);
    EXPECT_EQ(o.icmpType, 136);
    EXPECT_EQ(o.ttl, 255);
    EXPECT_EQ(o.ndpFlags, r.dad ? 0x20 : 0x60);
    EXPECT_EQ(0, std::memcmp(o.ndpTarget, kVip6.data(), 16));
    ASSERT_TRUE(o.hasNdpLladdr);
    EXPECT_EQ(0, std::memcmp(o.ndpLladdr, kLbMac.data(), 6));
    EXPECT_EQ(0, std::memcmp(o.src, kVip6.data(), 16));
    if (r.dad) {
      const Ip6 allNodes = ip6({0xff02, 0, 0, 0, 0, 0, 0, 1});
      EXPECT_EQ(0, std::memcmp(o.dst, allNodes.data(), 16));
      EXPECT_EQ(o.dstMac[0], 0x33);
    } else {
      EXPECT_EQ(0, std::memcmp(o.dst, kClient6.data(), 16));
      const Mac& want = in.hasNdpLladdr ? kClientMac : otherMac;
      EXPECT_EQ(0, std::memcmp(o.dstMac, want.data(), 6));
    }
    expectChecksumsValid(out, o);
  }
  // Not an NS.
  Bytes echo = v6().icmp(128, 0).build();
  TestFrame tf(echo);
  EXPECT_EQ(makeNeighborAdvert(tf.frame, mustParse(echo), kLbMac.data()),
            RewriteStatus::kUnsupported);
}

TEST(Ndp, WriteSolicit) {
  Ip6 target = ip6({0xfd00, 0, 0, 0, 0, 0, 0xab12, 0x3456});
  uint8_t buf[kNeighborSolicitLen];
  EXPECT_EQ(writeNeighborSolicit(buf, kNeighborSolicitLen - 1, kLbMac.data(), kLb6.data(),
                                 target.data()),
            0u);
  ASSERT_EQ(writeNeighborSolicit(buf, kNeighborSolicitLen, kLbMac.data(), kLb6.data(), target.data()),
            kNeighborSolicitLen);
  Bytes out(buf, buf + kNeighborSolicitLen);
  ParsedPacket o = mustParse(out);
  EXPECT_EQ(o.icmpType, 135);
  EXPECT_EQ(0, std::memcmp(o.ndpTarget, target.data(), 16));
  ASSERT_TRUE(o.hasNdpLladdr);
  EXPECT_EQ(0, std::memcmp(o.ndpLladdr, kLbMac.data(), 6));
  Ip6 group = ip6({0xff02, 0, 0, 0, 0, 1, 0xff12, 0x3456});
  EXPECT_EQ(0, std::memcmp(o.dst, group.data(), 16));
  const uint8_t groupMac[6] = {0x33, 0x33, 0xff, 0x12, 0x34, 0x56};
  EXPECT_EQ(0, std::memcmp(o.dstMac, groupMac, 6));
  expectChecksumsValid(out, o);
}

// ---------------------------------------------------------------- TCP RST

TEST(TcpReset, Rfc793Generation) {
  struct Row {
    const char* name;
    Bytes frame;
    RewriteStatus want;
    uint32_t seq, ack;
    uint8_t flags;
  } rows[] = {
      {"syn", v4().tcp(40000, 443, kTcpSyn, 1000).build(), RewriteStatus::kOk, 0, 1001,
       kTcpRst | kTcpAck},
      {"syn_with_data", v4().tcp(40000, 443, kTcpSyn, 1000).payload(Bytes(10, 1)).build(),
       RewriteStatus::kOk, 0, 1011, kTcpRst | kTcpAck},
      {"fin_no_ack", v4().tcp(40000, 443, kTcpFin, 0xffffffff).build(), RewriteStatus::kOk, 0, 0,
       kTcpRst | kTcpAck},
      {"ack_data", v4().ipv4Options({1, 1, 1, 1}).tcp(40000, 443, kTcpAck | kTcpPsh, 5, 777,
                                                        {1, 1, 1, 1}).payload(Bytes(50, 2)).build(),
       RewriteStatus::kOk, 777, 0, kTcpRst},
      {"v6_ext_ack", v6().ext(Ext::kDestOpts).tcp(40000, 443, kTcpAck, 5, 9).build(),
       RewriteStatus::kOk, 9, 0, kTcpRst},
      {"v6_syn", v6().vlan(4).tcp(40000, 443, kTcpSyn, 41).build(), RewriteStatus::kOk, 0, 42,
       kTcpRst | kTcpAck},
      {"rst", v4().tcp(40000, 443, kTcpRst).build(), RewriteStatus::kSuppressed, 0, 0, 0},
      {"udp", v4().udp(1, 2).build(), RewriteStatus::kUnsupported, 0, 0, 0},
      {"fragment", v4().tcp(1, 2, kTcpAck).payload(Bytes(40, 0)).fragment(0, true).build(),
       RewriteStatus::kUnsupported, 0, 0, 0},
  };
  for (const Row& r : rows) {
    SCOPED_TRACE(r.name);
    ParsedPacket in = mustParse(r.frame);
    TestFrame tf(r.frame);
    ASSERT_EQ(makeTcpReset(tf.frame, in, kLbMac.data()), r.want);
    if (r.want != RewriteStatus::kOk) {
      EXPECT_EQ(tf.bytes(), r.frame);
      continue;
    }
    Bytes out = tf.bytes();
    ParsedPacket o = mustParse(out);
    EXPECT_EQ(out.size(), in.l3Offset + (in.ipVersion == 4 ? 40u : 60u));
    EXPECT_EQ(o.vlan, in.vlan);
    EXPECT_EQ(0, std::memcmp(o.dstMac, kClientMac.data(), 6));
    EXPECT_EQ(0, std::memcmp(o.srcMac, kLbMac.data(), 6));
    EXPECT_EQ(flowKeyOf(o), flowKeyOf(in).reversed());
    EXPECT_EQ(o.tcpSeq, r.seq);
    EXPECT_EQ(o.tcpAck, r.ack);
    EXPECT_EQ(o.tcpFlags, r.flags);
    EXPECT_EQ(o.payloadLen, 0u);
    EXPECT_EQ(o.numIpv6Ext, 0);
    expectChecksumsValid(out, o);
  }
}

// ---------------------------------------------------------------- echo

TEST(EchoReply, V4AndV6) {
  Bytes data{1, 2, 3, 4, 5, 6, 7};
  struct Row {
    const char* name;
    Bytes frame;
    RewriteStatus want;
  } rows[] = {
      {"v4", v4().icmp(8, 0, 0x00110022).payload(data).l2Padding(9).build(), RewriteStatus::kOk},
      {"v4_options", v4().ipv4Options({0x94, 4, 0, 0}).icmp(8, 0, 0x00110022).payload(data).build(),
       RewriteStatus::kOk},
      {"v6", v6().icmp(128, 0, 0x00110022).payload(data).build(), RewriteStatus::kOk},
      {"v6_ext", v6().ext(Ext::kHopByHop).ext(Ext::kDestOpts, 16).icmp(128, 0, 0x00110022)
                     .payload(data).build(),
       RewriteStatus::kOk},
      {"v4_reply", v4().icmp(0, 0, 1).build(), RewriteStatus::kUnsupported},
      {"v4_broadcast", PacketBuilder().ipv4(kClient4, Ip4{255, 255, 255, 255}).icmp(8, 0, 1).build(),
       RewriteStatus::kSuppressed},
      {"v6_multicast", PacketBuilder().ipv6(kClient6, ip6({0xff02, 0, 0, 0, 0, 0, 0, 1}))
                           .icmp(128, 0, 1).build(),
       RewriteStatus::kSuppressed},
  };
  for (const Row& r : rows) {
    SCOPED_TRACE(r.name);
    ParsedPacket in = mustParse(r.frame);
    TestFrame tf(r.frame);
    ASSERT_EQ(makeIcmpEchoReply(tf.frame, in, kLbMac.data()), r.want);
    if (r.want != RewriteStatus::kOk) {
      EXPECT_EQ(tf.bytes(), r.frame);
      continue;
    }
    Bytes out = tf.bytes();
    ParsedPacket o = mustParse(out);
    EXPECT_EQ(out.size(), o.l3Offset + o.l3Len);
    EXPECT_EQ(o.l4Offset, o.l3Offset + (o.ipVersion == 4 ? 20 : 40)) << "options removed";
    EXPECT_EQ(o.icmpType, o.ipVersion == 4 ? 0 : 129);
    EXPECT_EQ(o.icmpId, 0x11);
    EXPECT_EQ(o.icmpSeq, 0x22);
    EXPECT_EQ(o.ttl, 64);
    EXPECT_EQ(slice(out, o.payloadOffset, o.payloadLen), data);
    EXPECT_EQ(flowKeyOf(o), flowKeyOf(in).reversed());
    EXPECT_EQ(0, std::memcmp(o.dstMac, kClientMac.data(), 6));
    expectChecksumsValid(out, o);
  }
}

}  // namespace
}  // namespace moat::l4
