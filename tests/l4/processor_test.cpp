// The L4 packet processor, packet in / packet out: each case builds a frame
// with PacketBuilder, hands it to Processor::handle() (as the DPDK lcore loop
// would, after beginBurst), and checks the verdict, the bytes that leave
// (re-parsed, checksums recomputed by the builder's reference code), and
// exactly which counters moved.
//
// Setup: hand-built l4::Tables (what control/ publishes), a NeighborTable
// with static MACs for the backends (one backend left unresolved), and a
// fake LcoreContext that records emitted frames (ARP requests).
#include "moat/l4/processor.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "moat/l4/maglev.h"
#include "moat/l4/packet.h"
#include "moat/l4/pick.h"
#include "moat/l4/rewrite.h"
#include "packet_builder.h"

namespace moat::l4 {
namespace {

using namespace moat::l4::testing;
using dataplane::Verdict;

constexpr uint64_t kSec = 1'000'000'000;
constexpr uint64_t kT0 = 1000 * kSec;

const Mac kPortMac{0x02, 0xbb, 0, 0, 0, 0x01};
const Mac kClientMac{0x02, 0xaa, 0, 0, 0, 0x01};  // the router towards clients
const Mac kBroadcast{0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
const Ip4 kVip4{10, 0, 0, 100};
const Ip4 kLocal4{10, 0, 0, 1};
const Ip4 kClient4{198, 51, 100, 7};
const Ip4 kClient4b{198, 51, 100, 8};
const Ip6 kVip6 = ip6({0xfd00, 0, 0, 0, 0, 0, 0, 0x100});
const Ip6 kLocal6 = ip6({0xfd00, 0, 0, 0, 0, 0, 0, 1});
const Ip6 kClient6 = ip6({0x2001, 0xdb8, 0, 0, 0, 0, 0, 7});

// Backends: ids deliberately differ from their index in any service.
struct BackendSpec {
  uint32_t id;
  uint8_t ipVersion;
  Ip6 addr;  // IPv4 in [0..3]
  Mac mac;   // static neighbour entry (unless unresolved)
};
Ip6 v4in16(Ip4 a) {
  Ip6 r{};
  std::memcpy(r.data(), a.data(), 4);
  return r;
}
const BackendSpec kB1{11, 4, v4in16({10, 1, 0, 1}), {0x02, 0xcc, 0, 0, 0, 0x11}};
const BackendSpec kB2{12, 4, v4in16({10, 1, 0, 2}), {0x02, 0xcc, 0, 0, 0, 0x12}};
const BackendSpec kB3{13, 4, v4in16({10, 1, 0, 3}), {0x02, 0xcc, 0, 0, 0, 0x13}};
const BackendSpec kB6{14, 6, ip6({0xfd00, 1, 0, 0, 0, 0, 0, 1}), {0x02, 0xcc, 0, 0, 0, 0x14}};
const BackendSpec kUnresolved{19, 4, v4in16({10, 1, 0, 9}), {0x02, 0xcc, 0, 0, 0, 0x19}};

// Service ports on kVip4 (kVip6 has tcp/80 only).
constexpr uint16_t kPortIpip = 80;   // tcp, ipip, B1 B2 B3
constexpr uint16_t kPortDns = 53;    // udp, gue, B1 B2
constexpr uint16_t kPortDsr = 81;    // tcp, dsr, B1
constexpr uint16_t kPortUnres = 82;  // tcp, ipip, only the unresolved backend
constexpr uint16_t kPortEmpty = 83;  // tcp, ipip, no backend accepts new flows
constexpr uint16_t kGuePort = 7000;  // not the 6080 default: the processor must use svc.guePort
constexpr uint32_t kMaglevSize = 1009;

struct SvcSpec {
  Protocol protocol;
  uint8_t ipVersion;
  Ip6 vip;
  uint16_t port;
  Forwarding forwarding;
  std::vector<BackendSpec> backends;
};

// Builds a service the way control/ does: backends flattened, slotById by
// id, Maglev over the backends that accept new flows.
Service makeService(const SvcSpec& s) {
  Service svc;
  svc.name = "svc" + std::to_string(s.port);
  svc.protocol = s.protocol;
  std::memcpy(svc.vip, s.vip.data(), 16);
  svc.ipVersion = s.ipVersion;
  svc.port = s.port;
  svc.forwarding = s.forwarding;
  svc.guePort = kGuePort;
  for (const BackendSpec& bs : s.backends) {
    Backend b;
    b.id = bs.id;
    b.ipVersion = bs.ipVersion;
    std::memcpy(b.addr, bs.addr.data(), 16);
    b.key = "backend" + std::to_string(bs.id);
    svc.backends.push_back(b);
  }
  return svc;
}

// Recomputes slotById and the Maglev table after backends changed.
void rebuild(Service& svc) {
  svc.slotById.clear();
  std::vector<MaglevBackend> mb;
  for (size_t i = 0; i < svc.backends.size(); ++i) {
    const Backend& b = svc.backends[i];
    if (b.id >= svc.slotById.size()) svc.slotById.resize(b.id + 1, -1);
    svc.slotById[b.id] = static_cast<int32_t>(i);
    mb.push_back({b.key, b.acceptsNew && b.inService ? 1u : 0u});
  }
  svc.maglev = buildMaglevTable(mb, kMaglevSize);
}

Tables makeTables() {
  Tables t;
  const SvcSpec specs[] = {
      {Protocol::kTcp, 4, v4in16(kVip4), kPortIpip, Forwarding::kIpip, {kB1, kB2, kB3}},
      {Protocol::kUdp, 4, v4in16(kVip4), kPortDns, Forwarding::kGue, {kB1, kB2}},
      {Protocol::kTcp, 4, v4in16(kVip4), kPortDsr, Forwarding::kDsr, {kB1}},
      {Protocol::kTcp, 4, v4in16(kVip4), kPortUnres, Forwarding::kIpip, {kUnresolved}},
      {Protocol::kTcp, 4, v4in16(kVip4), kPortEmpty, Forwarding::kIpip, {kB1}},
      {Protocol::kTcp, 6, kVip6, kPortIpip, Forwarding::kIpip, {kB6, kB1}},
  };
  for (const SvcSpec& s : specs) {
    t.services.push_back(makeService(s));
    rebuild(t.services.back());
  }
  t.services[4].backends[0].acceptsNew = false;  // drained: nothing takes new flows
  rebuild(t.services[4]);
  t.mtu = 1500;
  std::memcpy(t.localIpv4, kLocal4.data(), 4);
  std::memcpy(t.localIpv6, kLocal6.data(), 16);
  t.hasLocalIpv6 = true;
  t.buildIndex();
  return t;
}

Service& serviceOf(Tables& t, uint8_t ipVersion, uint16_t port) {
  for (Service& s : t.services) {
    if (s.ipVersion == ipVersion && s.port == port) return s;
  }
  ADD_FAILURE() << "no service " << int{ipVersion} << "/" << port;
  return t.services[0];
}

// Records what the processor emits (ARP requests, neighbour solicitations).
class FakeLcore final : public dataplane::LcoreContext {
 public:
  bool emit(const uint8_t* bytes, uint32_t len) override {
    emitted.emplace_back(bytes, bytes + len);
    return true;
  }
  uint32_t lcoreId() const override { return 1; }
  uint32_t workerIndex() const override { return 0; }
  const uint8_t* portMac() const override { return kPortMac.data(); }
  std::vector<Bytes> emitted;
};

// Answers like the engine's rte_lpm table would.
class FakeLookup final : public PrefixLookup {
 public:
  static constexpr uint32_t kCountry = ('F' << 8) | 'R';
  uint32_t match4(const uint8_t a[4]) const override {
    if (a[0] == 192 && a[1] == 0 && a[2] == 2) return kDenyCidr;  // 192.0.2.0/24
    if (a[0] == 203 && a[1] == 0 && a[2] == 113) return kCountry;  // 203.0.113.0/24
    return 0;
  }
  uint32_t match6(const uint8_t a[16]) const override {
    return a[0] == 0x20 && a[1] == 0x01 && a[2] == 0x0d && a[3] == 0xb8 && a[4] == 0x0b ? kCountry
                                                                                         : 0;
  }
};

std::map<std::string, uint64_t> counterMap(const ProcessorCounters& c) {
  std::map<std::string, uint64_t> m;
  c.forEach([&](const char* name, uint64_t v) { m[name] = v; });
  for (size_t i = 0; i < c.parse.size(); ++i) {
    m[std::string("parse_") + toString(static_cast<ParseStatus>(i))] = c.parse[i];
  }
  return m;
}

ParsedPacket mustParse(const Bytes& b) {
  ParsedPacket p;
  Bytes copy(b);
  const ParseStatus s = parseFrame(copy.data(), static_cast<uint32_t>(copy.size()), p);
  EXPECT_EQ(s, ParseStatus::kOk) << toString(s);
  return p;
}

Bytes slice(const Bytes& b, size_t from, size_t n) {
  if (from > b.size()) return {};
  n = std::min(n, b.size() - from);
  return Bytes(b.begin() + static_cast<long>(from), b.begin() + static_cast<long>(from + n));
}
Bytes tail(const Bytes& b, size_t from) { return slice(b, from, b.size()); }

// IPv4 header and L4 checksums of a frame the processor sent, recomputed
// with the builder's reference code.
void expectChecksumsValid(const Bytes& f) {
  const ParsedPacket p = mustParse(f);
  if (p.ipVersion == 4) {
    EXPECT_EQ(refChecksum(slice(f, p.l3Offset, p.l4Offset - p.l3Offset)), 0) << "IPv4 header";
  }
  if (p.ipVersion == 0 || p.isFragment) return;
  const Bytes l4 = slice(f, p.l4Offset, p.l3Offset + p.l3Len - p.l4Offset);
  if (p.proto == kProtoUdp && p.ipVersion == 4 && get16(l4, 6) == 0) return;  // none
  if (p.proto == kProtoTcp || p.proto == kProtoUdp || p.proto == kProtoIcmp ||
      p.proto == kProtoIcmpv6) {
    EXPECT_EQ(refL4Checksum(p.ipVersion, p.src, p.dst, p.proto, l4), 0) << "L4 checksum";
  }
}

bool sameBytes(const uint8_t* a, const uint8_t* b, size_t n) { return std::memcmp(a, b, n) == 0; }

PacketBuilder fromClient4(Ip4 src = kClient4, Ip4 dst = kVip4) {
  return PacketBuilder().eth(kClientMac, kPortMac).ipv4(src, dst);
}
PacketBuilder fromClient6(Ip6 src = kClient6, Ip6 dst = kVip6) {
  return PacketBuilder().eth(kClientMac, kPortMac).ipv6(src, dst);
}

FlowKey keyOf(const Bytes& frame) { return flowKeyOf(mustParse(frame)); }

// One packet-in / packet-out row: `moved` lists every counter expected to
// rise by exactly one ("frames" is implied); every other counter must stay.
struct Case {
  const char* name;
  Bytes in;
  Verdict verdict;
  std::vector<std::string> moved;
  std::function<void(const Bytes& in, const Bytes& out)> check;  // may be empty
};

class ProcessorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    tablesA_ = makeTables();
    current_ = &tablesA_;
    for (const BackendSpec& b : {kB1, kB2, kB3, kB6}) {
      ASSERT_TRUE(neighbors_.setStatic(b.addr.data(), b.ipVersion, b.mac.data()));
    }
    proc_ = makeProcessor(ProcessorOptions{});
    now_ = kT0;
    proc_->beginBurst(now_);
  }

  std::unique_ptr<Processor> makeProcessor(ProcessorOptions o) {
    o.maxFlows = 1024;
    return std::make_unique<Processor>(
        o,
        [this](uint64_t* version) {
          *version = version_;
          return current_;
        },
        &neighbors_, &lcore_);
  }

  // Publishes `t` (as control does: new pointer, version + 1); the
  // processor picks it up at its next burst.
  void publish(const Tables* t) {
    current_ = t;
    ++version_;
    advance(1000);
  }
  void advance(uint64_t ns) {
    now_ += ns;
    proc_->beginBurst(now_);
  }

  // Runs one frame; returns the bytes after the verdict.
  Bytes run(const Bytes& in, Verdict* verdict, Processor* p = nullptr) {
    TestFrame tf(in, 128, 128);
    *verdict = (p != nullptr ? p : proc_.get())->handle(tf.frame);
    EXPECT_TRUE(tf.consistent());
    return tf.bytes();
  }

  void runCase(const Case& c, Processor* p = nullptr) {
    SCOPED_TRACE(c.name);
    Processor& proc = p != nullptr ? *p : *proc_;
    const auto before = counterMap(proc.counters());
    Verdict v;
    const Bytes out = run(c.in, &v, &proc);
    EXPECT_EQ(v, c.verdict);
    auto after = counterMap(proc.counters());
    EXPECT_EQ(after["frames"], before.at("frames") + 1);
    for (const auto& [name, value] : after) {
      if (name == "frames") continue;
      const bool expected =
          std::find(c.moved.begin(), c.moved.end(), name) != c.moved.end();
      EXPECT_EQ(value - before.at(name), expected ? 1u : 0u) << "counter " << name;
    }
    for (const std::string& name : c.moved) EXPECT_TRUE(after.count(name)) << "no counter " << name;
    if (v == Verdict::kTx && c.verdict == Verdict::kTx) expectChecksumsValid(out);
    if (v == Verdict::kToKernel || v == Verdict::kDrop) {
      EXPECT_EQ(out, c.in) << "frame changed";
    }
    if (c.check) c.check(c.in, out);
  }

  // The backend Maglev gives a new flow of `frame` in `t`.
  static const Backend* expectedBackend(const Tables& t, const Bytes& frame) {
    const ParsedPacket p = mustParse(frame);
    const Service* svc = t.findService(p.dst, p.ipVersion, p.proto, p.dstPort);
    EXPECT_NE(svc, nullptr);
    return svc != nullptr ? pickBackend(*svc, flowKeyOf(p)) : nullptr;
  }

  static const BackendSpec& specOf(uint32_t id) {
    for (const BackendSpec* b : {&kB1, &kB2, &kB3, &kB6, &kUnresolved}) {
      if (b->id == id) return *b;
    }
    ADD_FAILURE() << "no backend " << id;
    return kB1;
  }

  // A TCP SYN from kClient4 to svc port whose new flow goes to backend `id`
  // in `t` (searching client ports from 20000).
  static Bytes synTo(const Tables& t, uint16_t port, uint32_t id, uint16_t* clientPort,
                     uint16_t startPort = 20000) {
    for (uint16_t cp = startPort; cp < startPort + 5000; ++cp) {
      Bytes f = fromClient4().tcp(cp, port, kTcpSyn, 5000).build();
      const Backend* b = expectedBackend(t, f);
      if (b != nullptr && b->id == id) {
        *clientPort = cp;
        return f;
      }
    }
    ADD_FAILURE() << "no client port maps to backend " << id;
    return {};
  }

  // Checks an IPIP frame to backend `spec` carrying `inner` (an IP packet)
  // byte for byte.
  static void expectIpip(const Bytes& out, const BackendSpec& spec, const Bytes& innerL3) {
    const ParsedPacket o = mustParse(out);
    EXPECT_TRUE(sameBytes(o.dstMac, spec.mac.data(), 6)) << "dst MAC = backend's";
    EXPECT_TRUE(sameBytes(o.srcMac, kPortMac.data(), 6)) << "src MAC = port's";
    EXPECT_EQ(o.ipVersion, spec.ipVersion);
    EXPECT_EQ(o.proto, innerL3[0] >> 4 == 4 ? kProtoIpip : kProtoIpv6);
    const size_t n = spec.ipVersion == 4 ? 4 : 16;
    EXPECT_TRUE(sameBytes(o.src, spec.ipVersion == 4 ? kLocal4.data() : kLocal6.data(), n))
        << "outer src = local address";
    EXPECT_TRUE(sameBytes(o.dst, spec.addr.data(), n)) << "outer dst = backend";
    EXPECT_EQ(tail(out, o.l4Offset), innerL3) << "inner packet byte-identical";
  }

  Tables tablesA_;
  const Tables* current_ = nullptr;
  uint64_t version_ = 1;
  NeighborTable neighbors_{64};
  FakeLcore lcore_;
  std::unique_ptr<Processor> proc_;
  uint64_t now_ = 0;
};

Bytes l3of(const Bytes& frame) { return tail(frame, 14); }

// ---------------------------------------------------------------------------
// ARP / NDP

TEST_F(ProcessorTest, ArpAndNdp) {
  const Ip4 asker{10, 0, 0, 50};
  const Case cases[] = {
      {"arp_request_for_vip",
       PacketBuilder().eth(kClientMac, kBroadcast).arp(1, kClientMac, asker, {}, kVip4).build(),
       Verdict::kTx,
       {"arp_replies"},
       [&](const Bytes&, const Bytes& out) {
         const ParsedPacket o = mustParse(out);
         EXPECT_EQ(o.ipVersion, 0);
         EXPECT_EQ(o.arpOp, 2);
         EXPECT_TRUE(sameBytes(o.dstMac, kClientMac.data(), 6));
         EXPECT_TRUE(sameBytes(o.srcMac, kPortMac.data(), 6));
         EXPECT_TRUE(sameBytes(o.arpSha, kPortMac.data(), 6)) << "VIP is at the port MAC";
         EXPECT_TRUE(sameBytes(o.arpSpa, kVip4.data(), 4));
         EXPECT_TRUE(sameBytes(o.arpTha, kClientMac.data(), 6));
         EXPECT_TRUE(sameBytes(o.arpTpa, asker.data(), 4));
       }},
      {"arp_request_for_local_address_goes_to_kernel",
       PacketBuilder().eth(kClientMac, kBroadcast).arp(1, kClientMac, asker, {}, kLocal4).build(),
       Verdict::kToKernel,
       {"to_kernel"},
       nullptr},
      {"arp_reply_untracked_sender_not_learned",
       PacketBuilder().eth(kClientMac, kPortMac)
           .arp(2, kClientMac, asker, kPortMac, kLocal4)
           .build(),
       Verdict::kToKernel,
       {"to_kernel"},
       nullptr},
      {"ns_for_ipv6_vip",
       fromClient6(kClient6, ip6({0xff02, 0, 0, 0, 0, 1, 0xff00, 0x100}))
           .ttl(255)
           .icmp(135, 0)
           .payload([] {
             Bytes b(kVip6.begin(), kVip6.end());
             b.insert(b.end(), {1, 1});
             b.insert(b.end(), kClientMac.begin(), kClientMac.end());
             return b;
           }())
           .build(),
       Verdict::kTx,
       {"ndp_adverts"},
       [&](const Bytes&, const Bytes& out) {
         const ParsedPacket o = mustParse(out);
         EXPECT_EQ(o.proto, kProtoIcmpv6);
         EXPECT_EQ(o.icmpType, 136);
         EXPECT_EQ(o.ttl, 255);
         EXPECT_TRUE(sameBytes(o.src, kVip6.data(), 16));
         EXPECT_TRUE(sameBytes(o.dst, kClient6.data(), 16));
         EXPECT_TRUE(sameBytes(o.ndpTarget, kVip6.data(), 16));
         EXPECT_EQ(o.ndpFlags, 0x60) << "solicited + override";
         ASSERT_TRUE(o.hasNdpLladdr);
         EXPECT_TRUE(sameBytes(o.ndpLladdr, kPortMac.data(), 6));
         EXPECT_TRUE(sameBytes(o.dstMac, kClientMac.data(), 6));
       }},
      {"ns_for_other_address_goes_to_kernel",
       fromClient6(kClient6, kLocal6)
           .ttl(255)
           .icmp(135, 0)
           .payload(Bytes(kLocal6.begin(), kLocal6.end()))
           .build(),
       Verdict::kToKernel,
       {"to_kernel"},
       nullptr},
  };
  for (const Case& c : cases) runCase(c);
  EXPECT_EQ(proc_->flows().size(), 0u);
}

TEST_F(ProcessorTest, ArpReplyFromTrackedNextHopIsLearned) {
  const Ip4 gw{10, 0, 0, 254};
  const Mac gwMac{0x02, 0xdd, 0, 0, 0, 0xfe};
  ASSERT_TRUE(neighbors_.needsResolve(v4in16(gw).data(), 4, now_));
  runCase({"arp_reply_from_tracked",
           PacketBuilder().eth(gwMac, kPortMac).arp(2, gwMac, gw, kPortMac, kLocal4).build(),
           Verdict::kToKernel,
           {"neighbors_learned", "to_kernel"},
           nullptr});
  uint8_t mac[6];
  ASSERT_TRUE(neighbors_.lookup(v4in16(gw).data(), 4, mac));
  EXPECT_TRUE(sameBytes(mac, gwMac.data(), 6));
  // The same reply again changes nothing.
  runCase({"arp_reply_repeat",
           PacketBuilder().eth(gwMac, kPortMac).arp(2, gwMac, gw, kPortMac, kLocal4).build(),
           Verdict::kToKernel,
           {"to_kernel"},
           nullptr});
}

// ---------------------------------------------------------------------------
// Forwarding

TEST_F(ProcessorTest, TcpSynThenAckFollowTheSameBackendOverIpip) {
  const Bytes syn = fromClient4().df().tcp(40000, kPortIpip, kTcpSyn, 5000).build();
  const Backend* want = expectedBackend(tablesA_, syn);
  ASSERT_NE(want, nullptr);
  const BackendSpec& spec = specOf(want->id);
  runCase({"syn", syn, Verdict::kTx, {"vip_packets", "new_flows", "encap_ipip", "sw_checksums"},
           [&](const Bytes& in, const Bytes& out) { expectIpip(out, spec, l3of(in)); }});
  EXPECT_EQ(proc_->flows().size(), 1u);
  const Bytes ack =
      fromClient4().df().tcp(40000, kPortIpip, kTcpAck, 5001, 777).payload(Bytes(100, 0x5a))
          .build();
  runCase({"ack", ack, Verdict::kTx, {"vip_packets", "flow_hits", "encap_ipip", "sw_checksums"},
           [&](const Bytes& in, const Bytes& out) { expectIpip(out, spec, l3of(in)); }});
  EXPECT_EQ(proc_->flows().size(), 1u);
  // The flow records the backend by id and by index into the service.
  const Service& svc = serviceOf(tablesA_, 4, kPortIpip);
  proc_->flows().forEach([&](const Flow& f) {
    EXPECT_EQ(f.key, keyOf(syn));
    EXPECT_EQ(f.backendId, want->id);
    EXPECT_EQ(f.backendIndex, static_cast<uint32_t>(want - svc.backends.data()));
    EXPECT_EQ(f.tcpState, TcpState::kEstablished);
    EXPECT_EQ(f.packets, 2u);
  });
}

TEST_F(ProcessorTest, MidstreamAckWithoutStateGetsMaglevBackend) {
  const Bytes ack = fromClient4().tcp(40001, kPortIpip, kTcpAck, 5001, 1).build();
  const BackendSpec& spec = specOf(expectedBackend(tablesA_, ack)->id);
  runCase({"midstream", ack, Verdict::kTx,
           {"vip_packets", "new_flows", "midstream_flows", "encap_ipip", "sw_checksums"},
           [&](const Bytes& in, const Bytes& out) { expectIpip(out, spec, l3of(in)); }});
}

TEST_F(ProcessorTest, UdpGueAndDsr) {
  const Bytes dns = fromClient4().udp(5353, kPortDns).payload(Bytes(40, 0x11)).build();
  const BackendSpec& dnsBackend = specOf(expectedBackend(tablesA_, dns)->id);
  const Bytes dsr = fromClient4().tcp(40002, kPortDsr, kTcpSyn).build();
  const Case cases[] = {
      {"udp_gue", dns, Verdict::kTx, {"vip_packets", "new_flows", "encap_gue", "sw_checksums"},
       [&](const Bytes& in, const Bytes& out) {
         const ParsedPacket o = mustParse(out);
         EXPECT_TRUE(sameBytes(o.dstMac, dnsBackend.mac.data(), 6));
         EXPECT_TRUE(sameBytes(o.srcMac, kPortMac.data(), 6));
         EXPECT_EQ(o.ipVersion, 4);
         EXPECT_EQ(o.proto, kProtoUdp);
         EXPECT_TRUE(sameBytes(o.src, kLocal4.data(), 4));
         EXPECT_TRUE(sameBytes(o.dst, dnsBackend.addr.data(), 4));
         EXPECT_EQ(o.dstPort, kGuePort) << "the service's GUE port";
         EXPECT_GE(o.srcPort, 49152);
         // GUE header: version 0, C 0, hlen 0, proto 4 (IPv4 inner).
         EXPECT_EQ(slice(out, o.payloadOffset, 4), (Bytes{0, kProtoIpip, 0, 0}));
         EXPECT_EQ(tail(out, o.payloadOffset + 4), l3of(in));
       }},
      {"tcp_dsr_only_macs_change", dsr, Verdict::kTx, {"vip_packets", "new_flows", "dsr_forwarded"},
       [&](const Bytes& in, const Bytes& out) {
         ASSERT_EQ(out.size(), in.size());
         EXPECT_TRUE(sameBytes(out.data(), kB1.mac.data(), 6));
         EXPECT_TRUE(sameBytes(out.data() + 6, kPortMac.data(), 6));
         EXPECT_EQ(tail(out, 12), tail(in, 12));
       }},
  };
  for (const Case& c : cases) runCase(c);
  // The UDP flow is remembered: a second datagram is a hit.
  runCase({"udp_second", dns, Verdict::kTx,
           {"vip_packets", "flow_hits", "encap_gue", "sw_checksums"},
           nullptr});
}

TEST_F(ProcessorTest, Ipv6VipWithIpv6AndIpv4Backends) {
  // Client ports whose flows go to the v6 backend and to the v4 backend.
  bool seen6 = false, seen4 = false;
  for (uint16_t cp = 30000; cp < 30200 && !(seen6 && seen4); ++cp) {
    const Bytes syn = fromClient6().tcp(cp, kPortIpip, kTcpSyn).build();
    const Backend* b = expectedBackend(tablesA_, syn);
    ASSERT_NE(b, nullptr);
    if ((b->ipVersion == 6 && seen6) || (b->ipVersion == 4 && seen4)) continue;
    (b->ipVersion == 6 ? seen6 : seen4) = true;
    const BackendSpec& spec = specOf(b->id);
    // An IPv6 outer header has no checksum: nothing computed in software.
    std::vector<std::string> moved{"vip_packets", "new_flows", "encap_ipip"};
    if (b->ipVersion == 4) moved.push_back("sw_checksums");
    runCase({b->ipVersion == 6 ? "v6_in_v6" : "v6_in_v4", syn, Verdict::kTx, moved,
             [&](const Bytes& in, const Bytes& out) { expectIpip(out, spec, l3of(in)); }});
  }
  EXPECT_TRUE(seen6 && seen4);
}

// ---------------------------------------------------------------------------
// Config changes: stickiness, removal, health

TEST_F(ProcessorTest, ExistingFlowKeepsItsBackendWhenMaglevChanges) {
  uint16_t cp = 0;
  const Bytes syn = synTo(tablesA_, kPortIpip, kB2.id, &cp);
  runCase({"syn_to_b2", syn, Verdict::kTx,
           {"vip_packets", "new_flows", "encap_ipip", "sw_checksums"},
           [&](const Bytes& in, const Bytes& out) { expectIpip(out, kB2, l3of(in)); }});

  // B2 drained: still in the pool and healthy, but out of the Maglev table.
  Tables b = makeTables();
  Service& svc = serviceOf(b, 4, kPortIpip);
  svc.backends[static_cast<size_t>(svc.slotById[kB2.id])].acceptsNew = false;
  rebuild(svc);
  publish(&b);

  const Bytes ack = fromClient4().tcp(cp, kPortIpip, kTcpAck, 5001, 1).build();
  runCase({"ack_sticks_to_b2", ack, Verdict::kTx,
           {"vip_packets", "flow_hits", "encap_ipip", "sw_checksums"},
           [&](const Bytes& in, const Bytes& out) { expectIpip(out, kB2, l3of(in)); }});

  // A new flow that table A sent to B2 follows table B.
  uint16_t cp2 = 0;
  const Bytes syn2 = synTo(tablesA_, kPortIpip, kB2.id, &cp2, cp + 1);
  const Backend* now = expectedBackend(b, syn2);
  ASSERT_NE(now, nullptr);
  EXPECT_NE(now->id, kB2.id);
  const BackendSpec& nowSpec = specOf(now->id);
  runCase({"new_flow_follows_new_table", syn2, Verdict::kTx,
           {"vip_packets", "new_flows", "encap_ipip", "sw_checksums"},
           [&](const Bytes& in, const Bytes& out) { expectIpip(out, nowSpec, l3of(in)); }});

  proc_->onControl({dataplane::ControlMessage::Type::kPublishStats, 0});
  EXPECT_EQ(proc_->report().tablesVersion, version_);
  EXPECT_EQ(proc_->report().counters.newFlows, 2u);
}

enum class Gone { kRemoved, kUnhealthy };

struct DownCase {
  const char* name;
  Gone how;
  BackendDown onDown;
  Verdict verdict;
  const char* counter;
};

TEST_F(ProcessorTest, FlowWhoseBackendIsGoneIsResetOrDropped) {
  const DownCase cases[] = {
      {"removed_reset", Gone::kRemoved, BackendDown::kReset, Verdict::kTx, "backend_down_resets"},
      {"removed_drop", Gone::kRemoved, BackendDown::kDrop, Verdict::kDrop, "backend_down_drops"},
      {"unhealthy_reset", Gone::kUnhealthy, BackendDown::kReset, Verdict::kTx,
       "backend_down_resets"},
      {"unhealthy_drop", Gone::kUnhealthy, BackendDown::kDrop, Verdict::kDrop,
       "backend_down_drops"},
  };
  uint16_t nextPort = 21000;
  for (const DownCase& dc : cases) {
    SCOPED_TRACE(dc.name);
    publish(&tablesA_);
    uint16_t cp = 0;
    const Bytes syn = synTo(tablesA_, kPortIpip, kB3.id, &cp, nextPort);
    nextPort = static_cast<uint16_t>(cp + 1);
    Verdict v;
    run(syn, &v);
    ASSERT_EQ(v, Verdict::kTx);
    const size_t flowsBefore = proc_->flows().size();

    Tables b = makeTables();
    Service& svc = serviceOf(b, 4, kPortIpip);
    svc.onBackendDown = dc.onDown;
    if (dc.how == Gone::kRemoved) {
      svc.backends.erase(svc.backends.begin() + svc.slotById[kB3.id]);
    } else {
      svc.backends[static_cast<size_t>(svc.slotById[kB3.id])].inService = false;
    }
    rebuild(svc);
    if (dc.how == Gone::kRemoved) {
      ASSERT_EQ(svc.backendById(kB3.id), nullptr);
    }
    publish(&b);

    const Bytes ack = fromClient4().tcp(cp, kPortIpip, kTcpAck, 5001, 424242).build();
    runCase({dc.name, ack, dc.verdict, {"vip_packets", "flow_hits", dc.counter},
             [&](const Bytes&, const Bytes& out) {
               if (dc.verdict != Verdict::kTx) return;
               const ParsedPacket o = mustParse(out);
               EXPECT_TRUE(sameBytes(o.dstMac, kClientMac.data(), 6));
               EXPECT_TRUE(sameBytes(o.srcMac, kPortMac.data(), 6));
               EXPECT_EQ(o.proto, kProtoTcp);
               EXPECT_TRUE(sameBytes(o.src, kVip4.data(), 4));
               EXPECT_TRUE(sameBytes(o.dst, kClient4.data(), 4));
               EXPECT_EQ(o.srcPort, kPortIpip);
               EXPECT_EQ(o.dstPort, cp);
               EXPECT_EQ(o.tcpFlags, kTcpRst);
               EXPECT_EQ(o.tcpSeq, 424242u) << "seq = the segment's ack";
             }});
    EXPECT_EQ(proc_->flows().size(), flowsBefore - 1) << "the flow is forgotten";
    publish(&tablesA_);  // `b` dies with this iteration
  }
}

TEST_F(ProcessorTest, DrainedBackendKeepsItsFlows) {
  uint16_t cp = 0;
  const Bytes syn = synTo(tablesA_, kPortIpip, kB1.id, &cp);
  Verdict v;
  run(syn, &v);
  ASSERT_EQ(v, Verdict::kTx);
  Tables b = makeTables();
  Service& svc = serviceOf(b, 4, kPortIpip);
  svc.backends[static_cast<size_t>(svc.slotById[kB1.id])].acceptsNew = false;
  rebuild(svc);
  publish(&b);
  runCase({"drained_flow_continues", fromClient4().tcp(cp, kPortIpip, kTcpAck, 5001, 1).build(),
           Verdict::kTx, {"vip_packets", "flow_hits", "encap_ipip", "sw_checksums"},
           [&](const Bytes& in, const Bytes& out) { expectIpip(out, kB1, l3of(in)); }});
}

// ---------------------------------------------------------------------------
// Drops and answers before any flow

TEST_F(ProcessorTest, VerdictsWithoutForwarding) {
  Bytes payload1460(1460, 0x42);
  const Case cases[] = {
      {"vip_port_without_service", fromClient4().tcp(40000, 9999, kTcpSyn).build(), Verdict::kDrop,
       {"vip_packets", "vip_other_dropped"}, nullptr},
      {"vip_udp_port_without_service", fromClient4().udp(40000, 80).build(), Verdict::kDrop,
       {"vip_packets", "vip_other_dropped"}, nullptr},
      {"vip_other_proto", fromClient4().proto(47).payload(Bytes(20, 0)).build(), Verdict::kDrop,
       {"vip_packets", "vip_other_dropped"}, nullptr},
      {"not_a_vip", fromClient4(kClient4, kLocal4).tcp(40000, 22, kTcpSyn).build(),
       Verdict::kToKernel, {"to_kernel"}, nullptr},
      {"not_a_vip_v6", fromClient6(kClient6, kLocal6).tcp(40000, 22, kTcpSyn).build(),
       Verdict::kToKernel, {"to_kernel"}, nullptr},
      {"non_first_fragment", fromClient4().tcp(40000, kPortIpip, kTcpAck).payload(Bytes(64, 0))
                                 .fragment(64, false).build(),
       Verdict::kDrop, {"vip_packets", "fragments_dropped"}, nullptr},
      {"non_first_fragment_v6", fromClient6().ext(Ext::kFragment, 8, 64, false)
                                    .udp(1, 2).payload(Bytes(64, 0)).build(),
       Verdict::kDrop, {"vip_packets", "fragments_dropped"}, nullptr},
      {"no_backend_syn_gets_rst", fromClient4().tcp(40000, kPortEmpty, kTcpSyn, 9000).build(),
       Verdict::kTx, {"vip_packets", "no_backend"},
       [](const Bytes&, const Bytes& out) {
         const ParsedPacket o = mustParse(out);
         EXPECT_EQ(o.proto, kProtoTcp);
         EXPECT_TRUE(sameBytes(o.src, kVip4.data(), 4));
         EXPECT_TRUE(sameBytes(o.dst, kClient4.data(), 4));
         EXPECT_EQ(o.srcPort, kPortEmpty);
         EXPECT_EQ(o.dstPort, 40000);
         EXPECT_EQ(o.tcpFlags, kTcpRst | kTcpAck);
         EXPECT_EQ(o.tcpAck, 9001u);
         EXPECT_TRUE(sameBytes(o.dstMac, kClientMac.data(), 6));
       }},
      {"no_backend_rst_not_answered", fromClient4().tcp(40000, kPortEmpty, kTcpRst).build(),
       Verdict::kDrop, {"vip_packets", "no_backend"}, nullptr},
      {"ping_vip", fromClient4().icmp(8, 0, 0x12340007).payload(Bytes{1, 2, 3, 4, 5}).build(),
       Verdict::kTx, {"vip_packets", "echo_replies"},
       [](const Bytes& in, const Bytes& out) {
         const ParsedPacket o = mustParse(out);
         EXPECT_EQ(o.proto, kProtoIcmp);
         EXPECT_EQ(o.icmpType, 0);
         EXPECT_EQ(o.icmpId, 0x1234);
         EXPECT_EQ(o.icmpSeq, 7);
         EXPECT_TRUE(sameBytes(o.src, kVip4.data(), 4));
         EXPECT_TRUE(sameBytes(o.dst, kClient4.data(), 4));
         EXPECT_TRUE(sameBytes(o.dstMac, kClientMac.data(), 6));
         EXPECT_TRUE(sameBytes(o.srcMac, kPortMac.data(), 6));
         EXPECT_EQ(tail(out, o.payloadOffset), tail(in, in.size() - 5));
       }},
      {"ping_vip6", fromClient6().icmp(128, 0, 0x00090001).payload(Bytes{9, 8, 7}).build(),
       Verdict::kTx, {"vip_packets", "echo_replies"},
       [](const Bytes&, const Bytes& out) {
         const ParsedPacket o = mustParse(out);
         EXPECT_EQ(o.icmpType, 129);
         EXPECT_EQ(o.icmpId, 9);
         EXPECT_EQ(o.icmpSeq, 1);
         EXPECT_TRUE(sameBytes(o.src, kVip6.data(), 16));
         EXPECT_TRUE(sameBytes(o.dst, kClient6.data(), 16));
       }},
      {"too_big_with_df", fromClient4().df().tcp(40003, kPortIpip, kTcpSyn).payload(payload1460)
                              .build(),
       Verdict::kTx, {"vip_packets", "new_flows", "too_big_sent"},
       [](const Bytes& in, const Bytes& out) {
         const ParsedPacket o = mustParse(out);
         EXPECT_EQ(o.proto, kProtoIcmp);
         EXPECT_EQ(o.icmpType, 3);
         EXPECT_EQ(o.icmpCode, 4);
         EXPECT_EQ(o.icmpMtu, 1500u - kIpipOverheadV4);
         EXPECT_TRUE(sameBytes(o.src, kVip4.data(), 4));
         EXPECT_TRUE(sameBytes(o.dst, kClient4.data(), 4));
         EXPECT_TRUE(sameBytes(o.dstMac, kClientMac.data(), 6));
         ASSERT_TRUE(o.hasInner);
         EXPECT_EQ(o.inner, keyOf(in));
       }},
      {"too_big_v6", fromClient6().tcp(40004, kPortIpip, kTcpSyn).payload(Bytes(1440, 0)).build(),
       Verdict::kTx, {"vip_packets", "new_flows", "too_big_sent"},
       [&](const Bytes& in, const Bytes& out) {
         const ParsedPacket o = mustParse(out);
         EXPECT_EQ(o.proto, kProtoIcmpv6);
         EXPECT_EQ(o.icmpType, 2);
         const Backend* b = expectedBackend(tablesA_, in);
         ASSERT_NE(b, nullptr);
         EXPECT_EQ(o.icmpMtu, 1500u - (b->ipVersion == 4 ? kIpipOverheadV4 : kIpipOverheadV6));
         EXPECT_TRUE(sameBytes(o.src, kVip6.data(), 16));
         ASSERT_TRUE(o.hasInner);
         EXPECT_EQ(o.inner, keyOf(in));
       }},
      {"too_big_without_df_dropped", fromClient4().tcp(40005, kPortIpip, kTcpSyn)
                                         .payload(payload1460).build(),
       Verdict::kDrop, {"vip_packets", "new_flows", "rewrite_errors"}, nullptr},
  };
  for (const Case& c : cases) runCase(c);
}

TEST_F(ProcessorTest, MalformedFramesAreCountedByReason) {
  struct Bad {
    const char* name;
    Bytes in;
    ParseStatus status;
    Verdict verdict;
  };
  const Bad cases[] = {
      {"truncated_ethernet", Bytes(10, 0), ParseStatus::kTruncatedEthernet, Verdict::kDrop},
      {"qinq", fromClient4().vlan(1, 0x88a8).vlan(2).tcp(1, 80, kTcpSyn).build(),
       ParseStatus::kVlanQinq, Verdict::kDrop},
      {"bad_ipv4_checksum", fromClient4().tcp(1, 80, kTcpSyn).badIpChecksum().build(),
       ParseStatus::kIpv4BadChecksum, Verdict::kDrop},
      {"ipv4_total_length_past_frame", fromClient4().tcp(1, 80, kTcpSyn).ipLengthDelta(8).build(),
       ParseStatus::kBadIpv4TotalLength, Verdict::kDrop},
      {"frame_shorter_than_ip_length",
       fromClient4().tcp(1, 80, kTcpSyn).truncateAt(14 + 30).build(),
       ParseStatus::kBadIpv4TotalLength, Verdict::kDrop},
      {"truncated_tcp", fromClient4().proto(6).payload(Bytes(10, 0)).build(),
       ParseStatus::kTruncatedTcp, Verdict::kDrop},
      {"tcp_data_offset_4", fromClient4().tcp(1, 80, kTcpSyn).tcpDataOffset(4).build(),
       ParseStatus::kBadTcpOffset, Verdict::kDrop},
      {"udp_length_7", fromClient4().udp(1, 53).udpLength(7).build(), ParseStatus::kBadUdpLength,
       Verdict::kDrop},
      {"truncated_arp", PacketBuilder().eth(kClientMac, kBroadcast)
                            .arp(1, kClientMac, kClient4, {}, kVip4).truncateAt(30).build(),
       ParseStatus::kTruncatedArp, Verdict::kDrop},
      {"icmp_error_without_quote", fromClient4().icmp(3, 4, 1400).build(),
       ParseStatus::kBadIcmpInner, Verdict::kDrop},
      {"lldp_to_kernel", PacketBuilder().eth(kClientMac, kPortMac).etherType(0x88cc)
                             .proto(0).payload(Bytes(46, 0)).build(),
       ParseStatus::kUnsupportedEthertype, Verdict::kToKernel},
  };
  for (const Bad& b : cases) {
    std::vector<std::string> moved{"parse_errors", std::string("parse_") + toString(b.status)};
    if (b.verdict == Verdict::kToKernel) moved.push_back("to_kernel");
    runCase({b.name, b.in, b.verdict, moved, nullptr});
  }
  EXPECT_EQ(proc_->flows().size(), 0u);
}

TEST_F(ProcessorTest, NicReportedBadChecksumIsCountedApart) {
  const Bytes in = fromClient4().tcp(1, 80, kTcpSyn).build();  // checksum actually fine
  TestFrame tf(in);
  tf.frame.rxIpChecksum = Frame::RxChecksum::kBad;
  EXPECT_EQ(proc_->handle(tf.frame), Verdict::kDrop);
  EXPECT_EQ(proc_->counters().badChecksumDropped, 1u);
  EXPECT_EQ(proc_->counters().parse[static_cast<size_t>(ParseStatus::kIpv4BadChecksum)], 1u);
  EXPECT_EQ(proc_->counters().vipPackets, 0u);
}

// ---------------------------------------------------------------------------
// Deny lists

TEST_F(ProcessorTest, DenyListsDropBeforeAnyState) {
  Tables denied = makeTables();
  std::string err;
  ASSERT_TRUE(denied.denyCidrs.add("192.0.2.0/24", &err)) << err;
  ASSERT_TRUE(denied.denyCidrs.add("2001:db8:0:1::/64", &err)) << err;
  denied.denyCidrs.seal();
  ASSERT_TRUE(denied.denyGeo.add("203.0.113.0/24", &err)) << err;
  denied.denyGeo.seal();
  Tables lpm = makeTables();
  lpm.denyLookup = std::make_shared<FakeLookup>();
  // With an LPM table the CidrSets are not consulted.
  ASSERT_TRUE(lpm.denyCidrs.add("198.51.100.0/24", &err)) << err;
  lpm.denyCidrs.seal();

  const Ip4 cidrSrc{192, 0, 2, 9};
  const Ip4 geoSrc{203, 0, 113, 9};
  struct DenyCase {
    const char* name;
    const Tables* tables;
    Bytes in;
    std::vector<std::string> moved;
    Verdict verdict;
  };
  const DenyCase cases[] = {
      {"cidrset_cidr", &denied, fromClient4(cidrSrc).tcp(1, kPortIpip, kTcpSyn).build(),
       {"denied_cidr"}, Verdict::kDrop},
      {"cidrset_cidr_v6", &denied,
       fromClient6(ip6({0x2001, 0xdb8, 0, 1, 0, 0, 0, 5})).tcp(1, kPortIpip, kTcpSyn).build(),
       {"denied_cidr"}, Verdict::kDrop},
      {"cidrset_geo", &denied, fromClient4(geoSrc).udp(1, kPortDns).build(), {"denied_geo"},
       Verdict::kDrop},
      {"cidrset_deny_applies_to_ping", &denied, fromClient4(geoSrc).icmp(8, 0, 1).build(),
       {"denied_geo"}, Verdict::kDrop},
      {"cidrset_allowed", &denied, fromClient4().tcp(1, kPortIpip, kTcpSyn).build(),
       {"vip_packets", "new_flows", "encap_ipip", "sw_checksums"}, Verdict::kTx},
      {"lpm_cidr", &lpm, fromClient4(cidrSrc).tcp(2, kPortIpip, kTcpSyn).build(), {"denied_cidr"},
       Verdict::kDrop},
      {"lpm_country", &lpm, fromClient4(geoSrc).tcp(2, kPortIpip, kTcpSyn).build(),
       {"denied_geo"}, Verdict::kDrop},
      {"lpm_country_v6", &lpm,
       fromClient6(ip6({0x2001, 0xdb8, 0x0b00, 0, 0, 0, 0, 1})).tcp(2, kPortIpip, kTcpSyn).build(),
       {"denied_geo"}, Verdict::kDrop},
      {"lpm_miss_ignores_cidrsets", &lpm, fromClient4().tcp(2, kPortIpip, kTcpSyn).build(),
       {"vip_packets", "new_flows", "encap_ipip", "sw_checksums"}, Verdict::kTx},
  };
  for (const DenyCase& dc : cases) {
    publish(dc.tables);
    const size_t flowsBefore = proc_->flows().stats().size;
    runCase({dc.name, dc.in, dc.verdict, dc.moved, nullptr});
    EXPECT_EQ(proc_->flows().stats().size, flowsBefore + (dc.verdict == Verdict::kTx ? 1 : 0))
        << dc.name << ": denied packets create no flow";
  }
  publish(&tablesA_);
}

// ---------------------------------------------------------------------------
// SYN limit

TEST_F(ProcessorTest, SynLimiterDropsThirdSynFromOneSource) {
  ProcessorOptions o;
  o.synLimit = true;
  o.syn.burst = 2;
  o.syn.ratePerSec = 1;
  o.syn.capacity = 64;
  auto proc = makeProcessor(o);
  proc->beginBurst(now_);
  const std::vector<std::string> fwd{"vip_packets", "new_flows", "encap_ipip", "sw_checksums"};
  const Case cases[] = {
      {"syn1", fromClient4().tcp(1001, kPortIpip, kTcpSyn).build(), Verdict::kTx, fwd, nullptr},
      {"syn2", fromClient4().tcp(1002, kPortIpip, kTcpSyn).build(), Verdict::kTx, fwd, nullptr},
      {"syn3_limited", fromClient4().tcp(1003, kPortIpip, kTcpSyn).build(), Verdict::kDrop,
       {"vip_packets", "syn_limited"}, nullptr},
      {"udp_new_flow_limited_too", fromClient4().udp(1004, kPortDns).build(), Verdict::kDrop,
       {"vip_packets", "syn_limited"}, nullptr},
      {"existing_flow_not_limited", fromClient4().tcp(1001, kPortIpip, kTcpAck, 1001, 1).build(),
       Verdict::kTx, {"vip_packets", "flow_hits", "encap_ipip", "sw_checksums"}, nullptr},
      {"other_source_passes", fromClient4(kClient4b).tcp(1001, kPortIpip, kTcpSyn).build(),
       Verdict::kTx, fwd, nullptr},
  };
  for (const Case& c : cases) runCase(c, proc.get());
  EXPECT_EQ(proc->flows().size(), 3u);
}

// ---------------------------------------------------------------------------
// Next-hop resolution

TEST_F(ProcessorTest, UnresolvedBackendSendsOneArpRequestPerSecond) {
  const Bytes syn = fromClient4().tcp(40000, kPortUnres, kTcpSyn).build();
  runCase({"first", syn, Verdict::kDrop,
           {"vip_packets", "new_flows", "neighbor_unresolved", "arp_requests_sent"}, nullptr});
  ASSERT_EQ(lcore_.emitted.size(), 1u);
  const Bytes& arp = lcore_.emitted[0];
  EXPECT_EQ(arp.size(), kArpFrameLen);
  const ParsedPacket a = mustParse(arp);
  EXPECT_EQ(a.ipVersion, 0);
  EXPECT_EQ(a.arpOp, 1);
  EXPECT_TRUE(sameBytes(a.dstMac, kBroadcast.data(), 6));
  EXPECT_TRUE(sameBytes(a.srcMac, kPortMac.data(), 6));
  EXPECT_TRUE(sameBytes(a.arpSha, kPortMac.data(), 6));
  EXPECT_TRUE(sameBytes(a.arpSpa, kLocal4.data(), 4));
  EXPECT_TRUE(sameBytes(a.arpTpa, kUnresolved.addr.data(), 4));

  advance(kSec / 2);
  runCase({"retransmit_within_1s", syn, Verdict::kDrop,
           {"vip_packets", "flow_hits", "neighbor_unresolved"}, nullptr});
  EXPECT_EQ(lcore_.emitted.size(), 1u);

  // The backend answers; the next retransmit goes through.
  runCase({"arp_reply", PacketBuilder().eth(kUnresolved.mac, kPortMac)
                            .arp(2, kUnresolved.mac, {10, 1, 0, 9}, kPortMac, kLocal4).build(),
           Verdict::kToKernel, {"neighbors_learned", "to_kernel"}, nullptr});
  runCase({"after_learning", syn, Verdict::kTx,
           {"vip_packets", "flow_hits", "encap_ipip", "sw_checksums"},
           [&](const Bytes& in, const Bytes& out) { expectIpip(out, kUnresolved, l3of(in)); }});
  EXPECT_EQ(lcore_.emitted.size(), 1u);
}

TEST_F(ProcessorTest, UnresolvedBackendRequestRepeatsAfterInterval) {
  const Bytes syn = fromClient4().tcp(40000, kPortUnres, kTcpSyn).build();
  Verdict v;
  run(syn, &v);
  EXPECT_EQ(lcore_.emitted.size(), 1u);
  advance(kSec + 1);
  run(syn, &v);
  EXPECT_EQ(v, Verdict::kDrop);
  EXPECT_EQ(lcore_.emitted.size(), 2u);
  EXPECT_EQ(proc_->counters().arpRequestsSent, 2u);
}

// ---------------------------------------------------------------------------
// ICMP errors from the client's path

TEST_F(ProcessorTest, FragNeededAboutAKnownFlowGoesToItsBackend) {
  uint16_t cp = 0;
  const Bytes syn = synTo(tablesA_, kPortIpip, kB3.id, &cp);
  Verdict v;
  run(syn, &v);
  ASSERT_EQ(v, Verdict::kTx);
  // Switch to tables where Maglev would send this tuple elsewhere: only the
  // flow table knows B3.
  Tables b = makeTables();
  Service& svc = serviceOf(b, 4, kPortIpip);
  svc.backends[static_cast<size_t>(svc.slotById[kB3.id])].acceptsNew = false;
  rebuild(svc);
  publish(&b);

  const Ip4 router{192, 0, 2, 1};
  const Bytes reply = PacketBuilder().noEth().ipv4(kVip4, kClient4).df()
                          .tcp(kPortIpip, cp, kTcpAck, 1, 5001).payload(Bytes(1400, 0)).buildL3();
  const Bytes icmp = fromClient4(router).icmp(3, 4, 1400)
                         .payload(Bytes(reply.begin(), reply.begin() + 28)).build();
  runCase({"frag_needed_to_b3", icmp, Verdict::kTx,
           {"vip_packets", "icmp_to_backend", "encap_ipip", "sw_checksums"},
           [&](const Bytes& in, const Bytes& out) { expectIpip(out, kB3, l3of(in)); }});

  // About a flow on a port with no service: dropped.
  const Bytes other = PacketBuilder().noEth().ipv4(kVip4, kClient4).tcp(9999, cp, kTcpAck)
                          .buildL3();
  runCase({"about_unknown_service",
           fromClient4(router).icmp(3, 4, 1400).payload(Bytes(other.begin(), other.begin() + 28))
               .build(),
           Verdict::kDrop, {"vip_packets", "icmp_errors_dropped"}, nullptr});
}

// ---------------------------------------------------------------------------
// Bursts and control messages

TEST_F(ProcessorTest, HandleBurstDecidesEveryFrame) {
  TestFrame a(fromClient4().tcp(1, kPortIpip, kTcpSyn).build());
  TestFrame b(fromClient4(kClient4, kLocal4).tcp(1, 22, kTcpSyn).build());
  TestFrame c(fromClient4().tcp(1, 9999, kTcpSyn).build());
  dataplane::Frame frames[3] = {a.frame, b.frame, c.frame};
  Verdict verdicts[3] = {Verdict::kDrop, Verdict::kDrop, Verdict::kTx};
  proc_->handleBurst(frames, verdicts, 3);
  EXPECT_EQ(verdicts[0], Verdict::kTx);
  EXPECT_EQ(verdicts[1], Verdict::kToKernel);
  EXPECT_EQ(verdicts[2], Verdict::kDrop);
  EXPECT_EQ(proc_->counters().frames, 3u);
  EXPECT_EQ(frames[0].len, a.frame.len + kIpipOverheadV4) << "frame rewritten in place";
}

TEST_F(ProcessorTest, ClearFlowsEmptiesTheTable) {
  Verdict v;
  for (uint16_t cp = 1; cp <= 5; ++cp) {
    run(fromClient4().tcp(cp, kPortIpip, kTcpSyn).build(), &v);
    ASSERT_EQ(v, Verdict::kTx);
  }
  EXPECT_EQ(proc_->flows().size(), 5u);
  proc_->onControl({dataplane::ControlMessage::Type::kClearFlows, 0});
  EXPECT_EQ(proc_->flows().size(), 0u);
  EXPECT_EQ(proc_->counters().controlClears, 1u);
  // The next packet of a cleared flow is a new flow again.
  runCase({"after_clear", fromClient4().tcp(1, kPortIpip, kTcpAck, 1001, 1).build(), Verdict::kTx,
           {"vip_packets", "new_flows", "midstream_flows", "encap_ipip", "sw_checksums"}, nullptr});
}

TEST_F(ProcessorTest, ReportIsPublishedOnControlAndStop) {
  Verdict v;
  run(fromClient4().tcp(1, kPortIpip, kTcpSyn).build(), &v);
  EXPECT_EQ(proc_->report().counters.frames, 0u) << "nothing published yet";
  proc_->onStop();
  const ProcessorReport r = proc_->report();
  EXPECT_EQ(r.counters.frames, 1u);
  EXPECT_EQ(r.counters.newFlows, 1u);
  EXPECT_EQ(r.flows.size, 1u);
  EXPECT_EQ(r.tablesVersion, version_);
}

TEST(Processor, NoTablesYetSendsEverythingToTheKernel) {
  NeighborTable n(8);
  FakeLcore lcore;
  ProcessorOptions o;
  o.maxFlows = 16;
  Processor proc(o, [](uint64_t* v) -> const Tables* {
    *v = 0;
    return nullptr;
  }, &n, &lcore);
  proc.beginBurst(kT0);
  TestFrame f(fromClient4().tcp(1, kPortIpip, kTcpSyn).build());
  EXPECT_EQ(proc.handle(f.frame), Verdict::kToKernel);
  EXPECT_EQ(proc.flows().size(), 0u);
}

}  // namespace
}  // namespace moat::l4
