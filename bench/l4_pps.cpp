// moat-l4-pps: packets per second per lcore and cycles per packet of the L4
// packet path (docs/BENCHMARKS.md, "L4 packet rate"), with in-memory devices
// so no NIC is the limit.
//
//   moat-l4-pps --mode engine    [--syn] [--forwarding ipip|gue|dsr] [--seconds 5]
//   moat-l4-pps --mode processor [--syn] [--forwarding ipip|gue|dsr] [--seconds 5]
//
// --mode engine: the whole DPDK engine loop on one worker lcore
//   (PacketEngine over the net_ring PMD, --no-huge, no exception TAP). The
//   ring PMD's default device ("net_ring0") uses the same rte_ring as a
//   queue's TX and RX ring (drivers/net/ring/rte_eth_ring.c,
//   eth_dev_ring_create: one 1024-slot ring per queue pair), so what the lcore
//   transmits it receives again. The burst handler is a Recycler around a real
//   l4::Processor: it injects --inflight frames through LcoreContext::emit()
//   on its first turn; after the processor decided a burst it puts every frame
//   back to a fresh 60-byte client packet (64 on the wire with the FCS) and
//   forces kTx, so the same mbufs circulate for the whole run.
// --mode processor: no EAL. Processor::beginBurst + handleBurst over frames
//   in plain memory (mbuf-sized buffers, 128 bytes of headroom), restored the
//   same way: the L4 logic alone.
//
// Traffic: one VIP tcp/80 with 16 backends (Maglev, 65537 slots), static
// neighbours. Established (default): --flows client connections (ACK
// segments) cycled in order; after the first pass every packet is a flow
// table hit. --syn: every packet is a SYN from a fresh (source address,
// port): a new flow each, so with a 1M-entry flow table every insert past
// the first million evicts (steady state of a SYN flood without the SYN
// limiter, which stays off here).
//
// Measures (after --warmup seconds, over --seconds):
//  - Mpps wall: packets / wall time. On a shared machine the lcore's thread
//    may lose its CPU; Mpps per CPU-second (packets / the worker thread's CPU
//    time) is what a dedicated core would do.
//  - cycles/packet: the worker thread's CPU time x TSC Hz / packets (all of
//    the lcore's work: PMD RX/TX, engine loop, processor, restore);
//    processor cycles/packet from rdtsc around Processor::beginBurst +
//    handleBurst per burst; restore cycles/packet the Recycler's own cost.
//    Bursts whose rdtsc delta exceeds kPreemptedBurstCycles (the thread was
//    descheduled inside them) are left out of both and counted.
//  - --noop: the Recycler without a processor (engine + restore only), so
//    the processor's share is the difference.
//
// Threads: main() is the control thread (EAL main lcore in engine mode); the
// Recycler runs on the worker lcore and publishes its sums through relaxed
// atomics once per burst (single writer). Allocation only at start-up.
#include <pthread.h>
#include <time.h>
#if defined(__x86_64__) || defined(__i386__)
#include <x86intrin.h>
#endif

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "moat/dataplane/packet_engine.h"
#include "moat/l4/frame.h"
#include "moat/l4/maglev.h"
#include "moat/l4/neighbors.h"
#include "moat/l4/processor.h"
#include "moat/l4/service.h"

namespace moat::bench {
namespace {

using dataplane::Verdict;
using l4::Frame;

// ---------------------------------------------------------------------------
// Clocks.

inline uint64_t readTsc() {
#if defined(__x86_64__) || defined(__i386__)
  return __rdtsc();
#else
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC_RAW, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1'000'000'000u + static_cast<uint64_t>(ts.tv_nsec);
#endif
}

uint64_t clockNs(clockid_t id) {
  timespec ts;
  clock_gettime(id, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1'000'000'000u + static_cast<uint64_t>(ts.tv_nsec);
}

// TSC ticks per second against CLOCK_MONOTONIC_RAW over ~200 ms (start-up).
double calibrateTscHz() {
  const uint64_t n0 = clockNs(CLOCK_MONOTONIC_RAW), t0 = readTsc();
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  const uint64_t n1 = clockNs(CLOCK_MONOTONIC_RAW), t1 = readTsc();
  return static_cast<double>(t1 - t0) * 1e9 / static_cast<double>(n1 - n0);
}

// A burst of 32 frames takes well under 200k cycles even with every flow
// lookup missing the caches; a larger rdtsc delta means the thread was
// descheduled (shared machine) and the sample is left out.
constexpr uint64_t kPreemptedBurstCycles = 1'000'000;

// ---------------------------------------------------------------------------
// Client frames: Ethernet + IPv4 + TCP (20 bytes, no options) = 54 bytes,
// padded to the 60-byte Ethernet minimum (64 with the FCS). Templates are
// 64 bytes so a restore is one fixed-size copy.

constexpr uint32_t kFrameLen = 60;
constexpr uint32_t kTemplateBytes = 64;
constexpr uint32_t kHeadroom = 128;          // RTE_PKTMBUF_HEADROOM
constexpr uint32_t kBufferBytes = 128 + 2048;  // RTE_MBUF_DEFAULT_BUF_SIZE
constexpr uint32_t kIpOff = 14, kTcpOff = 34;
constexpr uint32_t kVip = 0xc0000201;        // 192.0.2.1
constexpr uint32_t kLocalIp = 0x0a000001;    // 10.0.0.1, the tunnel source
constexpr uint32_t kBackendNet = 0x0a000100; // 10.0.1.1 ... 10.0.1.16
constexpr uint32_t kClientNet = 0x64400000;  // 100.64.0.0/10
constexpr uint16_t kVipPort = 80;
constexpr uint32_t kBackends = 16;
constexpr uint8_t kTcpSyn = 0x02, kTcpAck = 0x10;

struct alignas(64) Template {
  uint8_t b[kTemplateBytes] = {};
};

void put16(uint8_t* p, uint16_t v) {
  p[0] = static_cast<uint8_t>(v >> 8);
  p[1] = static_cast<uint8_t>(v);
}
void put32(uint8_t* p, uint32_t v) {
  put16(p, static_cast<uint16_t>(v >> 16));
  put16(p + 2, static_cast<uint16_t>(v));
}
uint16_t get16(const uint8_t* p) { return static_cast<uint16_t>((p[0] << 8) | p[1]); }

uint16_t fold(uint64_t s) {
  while (s >> 16) s = (s & 0xffff) + (s >> 16);
  return static_cast<uint16_t>(s);
}
uint64_t sum16(const uint8_t* p, uint32_t n) {
  uint64_t s = 0;
  for (uint32_t i = 0; i + 1 < n; i += 2) s += get16(p + i);
  if (n & 1) s += uint32_t{p[n - 1]} << 8;
  return s;
}

Template makeClientFrame(uint32_t srcIp, uint16_t srcPort, uint8_t tcpFlags) {
  Template t;
  uint8_t* f = t.b;
  const uint8_t dstMac[6] = {0x02, 0, 0, 0, 0, 0x02};  // the balancer
  const uint8_t srcMac[6] = {0x02, 0, 0, 0, 0, 0x01};  // the router
  std::memcpy(f, dstMac, 6);
  std::memcpy(f + 6, srcMac, 6);
  put16(f + 12, 0x0800);
  uint8_t* ip = f + kIpOff;
  ip[0] = 0x45;
  put16(ip + 2, 40);
  put16(ip + 4, 0x1234);
  put16(ip + 6, 0x4000);  // DF
  ip[8] = 64;
  ip[9] = 6;
  put32(ip + 12, srcIp);
  put32(ip + 16, kVip);
  put16(ip + 10, static_cast<uint16_t>(~fold(sum16(ip, 20))));
  uint8_t* tcp = f + kTcpOff;
  put16(tcp, srcPort);
  put16(tcp + 2, kVipPort);
  put32(tcp + 4, 1000);
  put32(tcp + 8, tcpFlags & kTcpAck ? 2000 : 0);
  tcp[12] = 5 << 4;
  tcp[13] = tcpFlags;
  put16(tcp + 14, 65535);
  uint64_t s = sum16(tcp, 20) + sum16(ip + 12, 8) + 6 + 20;  // pseudo-header
  put16(tcp + 16, static_cast<uint16_t>(~fold(s)));
  return t;
}

// RFC 1624 (eqn. 3) incremental update: HC' = ~(~HC + ~m + m') per word.
uint16_t csumReplace(uint16_t hc, const uint16_t* oldWords, const uint16_t* newWords, int n) {
  uint64_t s = static_cast<uint16_t>(~hc);
  for (int i = 0; i < n; ++i) s += static_cast<uint16_t>(~oldWords[i]) + uint64_t{newWords[i]};
  return static_cast<uint16_t>(~fold(s));
}

// What the Recycler writes back into each frame: the next of `flows`
// prebuilt ACK segments (established), or the SYN template with a fresh
// (source address, port) and both checksums updated (syn). Owned by the
// worker (lcore or main thread); no allocation after construction.
class Traffic {
 public:
  Traffic(bool syn, uint32_t flows) : syn_(syn) {
    if (syn_) {
      templates_.push_back(makeClientFrame(kClientNet, 1024, kTcpSyn));
    } else {
      templates_.reserve(flows);
      for (uint32_t i = 0; i < flows; ++i) {
        templates_.push_back(makeClientFrame(kClientNet + 1 + (i >> 10), static_cast<uint16_t>(1024 + (i & 1023)),
                                             kTcpAck));
      }
    }
  }

  // Puts `f` back to a fresh client frame at the buffer's original place
  // (kHeadroom from its start), whatever the processor did to it.
  void restore(Frame& f) {
    uint8_t* base = f.data - f.headroom;
    const uint32_t total = f.headroom + f.len + f.tailroom;
    f.data = base + kHeadroom;
    f.headroom = kHeadroom;
    f.len = kFrameLen;
    f.tailroom = total - kHeadroom - kFrameLen;
    f.rxIpChecksum = Frame::RxChecksum::kUnknown;
    if (!syn_) {
      std::memcpy(f.data, templates_[next_].b, kTemplateBytes);
      if (++next_ == templates_.size()) next_ = 0;
      return;
    }
    std::memcpy(f.data, templates_[0].b, kTemplateBytes);
    // 2^22 addresses x 2^14 ports: unique for 2^36 packets.
    const uint64_t c = fresh_++;
    const uint32_t src = kClientNet | static_cast<uint32_t>((c >> 14) & 0x3fffff);
    const uint16_t port = static_cast<uint16_t>(1024 + (c & 0x3fff));
    const uint16_t oldW[3] = {static_cast<uint16_t>(kClientNet >> 16), static_cast<uint16_t>(kClientNet), 1024};
    const uint16_t newW[3] = {static_cast<uint16_t>(src >> 16), static_cast<uint16_t>(src), port};
    uint8_t* ip = f.data + kIpOff;
    uint8_t* tcp = f.data + kTcpOff;
    put32(ip + 12, src);
    put16(tcp, port);
    put16(ip + 10, csumReplace(get16(ip + 10), oldW, newW, 2));
    put16(tcp + 16, csumReplace(get16(tcp + 16), oldW, newW, 3));
  }

  const uint8_t* firstTemplate() const { return templates_[0].b; }

 private:
  bool syn_;
  std::vector<Template> templates_;
  size_t next_ = 0;
  uint64_t fresh_ = 0;
};

// ---------------------------------------------------------------------------
// The service under test.

struct Setup {
  l4::Tables tables;
  l4::NeighborTable neighbors{64};
};

std::unique_ptr<Setup> makeSetup(l4::Forwarding fwd) {
  auto s = std::make_unique<Setup>();
  l4::Service svc;
  svc.name = "bench";
  svc.protocol = l4::Protocol::kTcp;
  put32(svc.vip, kVip);
  svc.ipVersion = 4;
  svc.port = kVipPort;
  svc.forwarding = fwd;
  std::vector<l4::MaglevBackend> mb;
  for (uint32_t i = 0; i < kBackends; ++i) {
    l4::Backend b;
    b.id = i;
    const uint32_t addr = kBackendNet + 1 + i;
    b.key = std::to_string(addr >> 24) + "." + std::to_string((addr >> 16) & 0xff) + "." +
            std::to_string((addr >> 8) & 0xff) + "." + std::to_string(addr & 0xff) + ":80";
    put32(b.addr, addr);
    b.ipVersion = 4;
    b.port = kVipPort;
    svc.backends.push_back(b);
    svc.slotById.push_back(static_cast<int32_t>(i));
    const uint8_t mac[6] = {0x02, 0, 0, 0, 0x01, static_cast<uint8_t>(i + 1)};
    s->neighbors.setStatic(b.addr, 4, mac);
  }
  for (const l4::Backend& b : svc.backends) mb.push_back({b.key, 1});
  svc.maglev = l4::buildMaglevTable(mb);
  s->tables.services.push_back(std::move(svc));
  s->tables.buildIndex();
  s->tables.mtu = 1500;
  put32(s->tables.localIpv4, kLocalIp);
  return s;
}

std::unique_ptr<l4::Processor> makeProcessor(Setup& s, size_t maxFlows, dataplane::LcoreContext* ctx) {
  l4::ProcessorOptions o;
  o.maxFlows = maxFlows;
  o.seed = 0x5eed;
  const l4::Tables* t = &s.tables;
  return std::make_unique<l4::Processor>(
      o,
      [t](uint64_t* version) {
        *version = 1;
        return t;
      },
      &s.neighbors, ctx);
}

// ---------------------------------------------------------------------------
// Sums one worker accumulates; read by main() between runs or through the
// atomics below while running.

struct Sums {
  uint64_t packets = 0;          // frames handled (all bursts)
  uint64_t sampledPackets = 0;   // frames in bursts whose timings were kept
  uint64_t processorCycles = 0;  // Processor::beginBurst + handleBurst, sampled bursts
  uint64_t restoreCycles = 0;    // Traffic::restore, sampled bursts
  uint64_t bursts = 0;
  uint64_t preemptedBursts = 0;  // left out: descheduled inside
  uint64_t notTx = 0;            // processor verdicts other than kTx (should read 0)
};

struct PublishedSums {
  std::atomic<uint64_t> packets{0}, sampledPackets{0}, processorCycles{0}, restoreCycles{0}, bursts{0},
      preemptedBursts{0}, notTx{0};
  void store(const Sums& s) {
    packets.store(s.packets, std::memory_order_relaxed);
    sampledPackets.store(s.sampledPackets, std::memory_order_relaxed);
    processorCycles.store(s.processorCycles, std::memory_order_relaxed);
    restoreCycles.store(s.restoreCycles, std::memory_order_relaxed);
    bursts.store(s.bursts, std::memory_order_relaxed);
    preemptedBursts.store(s.preemptedBursts, std::memory_order_relaxed);
    notTx.store(s.notTx, std::memory_order_relaxed);
  }
  Sums load() const {
    Sums s;
    s.packets = packets.load(std::memory_order_relaxed);
    s.sampledPackets = sampledPackets.load(std::memory_order_relaxed);
    s.processorCycles = processorCycles.load(std::memory_order_relaxed);
    s.restoreCycles = restoreCycles.load(std::memory_order_relaxed);
    s.bursts = bursts.load(std::memory_order_relaxed);
    s.preemptedBursts = preemptedBursts.load(std::memory_order_relaxed);
    s.notTx = notTx.load(std::memory_order_relaxed);
    return s;
  }
};

Sums operator-(const Sums& a, const Sums& b) {
  Sums d;
  d.packets = a.packets - b.packets;
  d.sampledPackets = a.sampledPackets - b.sampledPackets;
  d.processorCycles = a.processorCycles - b.processorCycles;
  d.restoreCycles = a.restoreCycles - b.restoreCycles;
  d.bursts = a.bursts - b.bursts;
  d.preemptedBursts = a.preemptedBursts - b.preemptedBursts;
  d.notTx = a.notTx - b.notTx;
  return d;
}

// One burst through the processor (or none: --noop) and back to fresh
// frames. Shared by both modes. No allocation.
class BurstRunner {
 public:
  BurstRunner(l4::Processor* p, Traffic traffic) : p_(p), traffic_(std::move(traffic)) {}

  void restoreAll(Frame* frames, uint32_t n) {
    for (uint32_t i = 0; i < n; ++i) traffic_.restore(frames[i]);
  }

  // `beginCycles`: rdtsc spent in Processor::beginBurst for this burst.
  void run(uint64_t beginCycles, Frame* frames, Verdict* verdicts, uint32_t n) {
    const uint64_t t0 = readTsc();
    if (p_ != nullptr) {
      p_->handleBurst(frames, verdicts, n);
    } else {
      for (uint32_t i = 0; i < n; ++i) verdicts[i] = Verdict::kTx;
    }
    const uint64_t t1 = readTsc();
    for (uint32_t i = 0; i < n; ++i) {
      s_.notTx += verdicts[i] != Verdict::kTx;
      verdicts[i] = Verdict::kTx;  // keep every buffer circulating
    }
    restoreAll(frames, n);
    const uint64_t t2 = readTsc();
    s_.packets += n;
    ++s_.bursts;
    if (t2 - t0 + beginCycles < kPreemptedBurstCycles) {
      s_.sampledPackets += n;
      s_.processorCycles += t1 - t0 + beginCycles;
      s_.restoreCycles += t2 - t1;
    } else {
      ++s_.preemptedBursts;
    }
  }

  const Sums& sums() const { return s_; }
  const uint8_t* firstFrame() const { return traffic_.firstTemplate(); }

 private:
  l4::Processor* p_;
  Traffic traffic_;
  Sums s_;
};

// ---------------------------------------------------------------------------
// Options and output.

struct Options {
  std::string mode = "processor";
  bool syn = false;
  uint32_t flows = 1024;
  double seconds = 5;
  double warmup = 2;
  std::string forwarding = "ipip";
  bool json = false;
  bool noop = false;
  uint32_t inflight = 768;  // the ring PMD's ring holds 1023
  uint32_t burst = 32;
  uint32_t lcore = 1;
  size_t maxFlows = 1 << 20;
};

[[noreturn]] void usage(const char* msg) {
  if (msg != nullptr) std::fprintf(stderr, "moat-l4-pps: %s\n", msg);
  std::fprintf(stderr,
               "usage: moat-l4-pps [--mode engine|processor] [--syn] [--flows N] [--seconds S]\n"
               "                   [--warmup S] [--forwarding ipip|gue|dsr] [--noop] [--json]\n"
               "                   [--inflight N] [--burst N] [--lcore N] [--max-flows N]\n");
  std::exit(2);
}

Options parseArgs(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage(("missing value for " + a).c_str());
      return argv[++i];
    };
    if (a == "--mode") {
      o.mode = value();
    } else if (a == "--syn") {
      o.syn = true;
    } else if (a == "--flows") {
      o.flows = static_cast<uint32_t>(std::stoul(value()));
    } else if (a == "--seconds") {
      o.seconds = std::stod(value());
    } else if (a == "--warmup") {
      o.warmup = std::stod(value());
    } else if (a == "--forwarding") {
      o.forwarding = value();
    } else if (a == "--json") {
      o.json = true;
    } else if (a == "--noop") {
      o.noop = true;
    } else if (a == "--inflight") {
      o.inflight = static_cast<uint32_t>(std::stoul(value()));
    } else if (a == "--burst") {
      o.burst = static_cast<uint32_t>(std::stoul(value()));
    } else if (a == "--lcore") {
      o.lcore = static_cast<uint32_t>(std::stoul(value()));
    } else if (a == "--max-flows") {
      o.maxFlows = std::stoul(value());
    } else if (a == "-h" || a == "--help") {
      usage(nullptr);
    } else {
      usage(("unknown argument " + a).c_str());
    }
  }
  if (o.mode != "engine" && o.mode != "processor") usage("--mode is engine or processor");
  if (o.forwarding != "ipip" && o.forwarding != "gue" && o.forwarding != "dsr") usage("bad --forwarding");
  if (o.flows == 0 || o.burst == 0 || o.burst > 256 || o.inflight < o.burst || o.seconds <= 0) {
    usage("need --flows > 0, 0 < --burst <= 256, --inflight >= --burst, --seconds > 0");
  }
  return o;
}

l4::Forwarding forwardingOf(const std::string& s) {
  return s == "gue" ? l4::Forwarding::kGue : s == "dsr" ? l4::Forwarding::kDsr : l4::Forwarding::kIpip;
}

struct Result {
  Sums window;               // over the measured window
  double wallSeconds = 0;
  double cpuSeconds = 0;     // the worker thread's CPU time in the window
  double tscHz = 0;
  l4::ProcessorCounters proc;  // whole run (engine: as last published)
  l4::FlowTableStats flows;
  uint64_t evictedInWindow = 0;
  uint64_t newFlowsInWindow = 0;
  dataplane::PacketEngineCounters engine;  // engine mode, whole run
};

void print(const Options& o, const Result& r) {
  const double pkts = static_cast<double>(r.window.packets);
  const double sampled = static_cast<double>(std::max<uint64_t>(r.window.sampledPackets, 1));
  const double mppsWall = pkts / r.wallSeconds / 1e6;
  const double mppsCpu = r.cpuSeconds > 0 ? pkts / r.cpuSeconds / 1e6 : 0;
  const double cyclesPerPacket = pkts > 0 ? r.cpuSeconds * r.tscHz / pkts : 0;
  const double procCpp = static_cast<double>(r.window.processorCycles) / sampled;
  const double restoreCpp = static_cast<double>(r.window.restoreCycles) / sampled;
  // What the lcore would do without the bench's own restore work.
  const double mppsNoRestore = cyclesPerPacket > restoreCpp ? r.tscHz / (cyclesPerPacket - restoreCpp) / 1e6 : 0;
  const char* traffic = o.syn ? "syn" : "established";
  if (o.json) {
    std::printf(
        "{\"mode\":\"%s\",\"traffic\":\"%s\",\"forwarding\":\"%s\",\"noop\":%s,\"flows\":%u,\"max_flows\":%zu,"
        "\"burst\":%u,\"inflight\":%u,\"seconds\":%.3f,\"packets\":%" PRIu64 ",\"mpps_wall\":%.3f,"
        "\"cpu_seconds\":%.3f,\"mpps_per_cpu_second\":%.3f,\"cycles_per_packet\":%.1f,"
        "\"processor_cycles_per_packet\":%.1f,\"restore_cycles_per_packet\":%.1f,"
        "\"mpps_per_cpu_second_without_restore\":%.3f,\"tsc_hz\":%.0f,\"bursts\":%" PRIu64
        ",\"preempted_bursts\":%" PRIu64 ",\"not_tx\":%" PRIu64 ",\"flow_hits\":%" PRIu64 ",\"new_flows\":%" PRIu64
        ",\"new_flows_in_window\":%" PRIu64 ",\"evicted_in_window\":%" PRIu64 ",\"flows_live\":%zu",
        o.mode.c_str(), traffic, o.forwarding.c_str(), o.noop ? "true" : "false", o.flows, o.maxFlows, o.burst,
        o.inflight, r.wallSeconds, r.window.packets, mppsWall, r.cpuSeconds, mppsCpu, cyclesPerPacket, procCpp,
        restoreCpp, mppsNoRestore, r.tscHz, r.window.bursts, r.window.preemptedBursts, r.window.notTx,
        r.proc.flowHits, r.proc.newFlows, r.newFlowsInWindow, r.evictedInWindow, r.flows.size);
    if (o.mode == "engine") {
      std::printf(",\"engine\":{");
      bool first = true;
      r.engine.forEach([&](const char* name, uint64_t v) {
        std::printf("%s\"%s\":%" PRIu64, first ? "" : ",", name, v);
        first = false;
      });
      std::printf("}");
    }
    std::printf(",\"processor\":{");
    bool first = true;
    r.proc.forEach([&](const char* name, uint64_t v) {
      if (v == 0) return;
      std::printf("%s\"%s\":%" PRIu64, first ? "" : ",", name, v);
      first = false;
    });
    std::printf("}}\n");
    return;
  }
  std::printf("moat-l4-pps: mode %s, %s, %s%s, burst %u, %u frames in flight\n", o.mode.c_str(), traffic,
              o.forwarding.c_str(), o.noop ? " (no-op: restore only, no processor)" : "", o.burst, o.inflight);
  if (!o.syn) std::printf("  flows cycled          %u\n", o.flows);
  std::printf("  TSC                   %.3f GHz\n", r.tscHz / 1e9);
  std::printf("  window                %.2f s wall, %.2f s on CPU (%.0f%%)\n", r.wallSeconds, r.cpuSeconds,
              100 * r.cpuSeconds / r.wallSeconds);
  std::printf("  packets               %" PRIu64 "\n", r.window.packets);
  std::printf("  Mpps wall             %.3f\n", mppsWall);
  std::printf("  Mpps per CPU-second   %.3f\n", mppsCpu);
  std::printf("  cycles/packet         %.1f   (lcore total: CPU time x TSC Hz / packets)\n", cyclesPerPacket);
  std::printf("    processor           %.1f   (rdtsc around beginBurst + handleBurst)\n", procCpp);
  std::printf("    restore (bench)     %.1f\n", restoreCpp);
  std::printf("  Mpps/CPU-s w/o restore %.3f\n", mppsNoRestore);
  std::printf("  bursts                %" PRIu64 " (%" PRIu64 " left out: descheduled inside)\n", r.window.bursts,
              r.window.preemptedBursts);
  if (!o.noop) {
    std::printf("  verdicts not kTx      %" PRIu64 "\n", r.window.notTx);
    std::printf("  flow hits / new flows %" PRIu64 " / %" PRIu64 " (whole run)\n", r.proc.flowHits, r.proc.newFlows);
    std::printf("  in window: new flows  %" PRIu64 ", evicted %" PRIu64 "; live flows %zu of %zu\n",
                r.newFlowsInWindow, r.evictedInWindow, r.flows.size, r.flows.capacity);
  }
  if (o.mode == "engine") {
    std::printf("  engine: rx %" PRIu64 " tx %" PRIu64 " tx_dropped %" PRIu64 " dropped %" PRIu64
                " emitted %" PRIu64 " empty_polls %" PRIu64 "\n",
                r.engine.rxPackets, r.engine.txPackets, r.engine.txDropped, r.engine.dropped, r.engine.emitted,
                r.engine.emptyPolls);
  }
}

// ---------------------------------------------------------------------------
// --mode processor: one thread, frames in plain memory.

int runProcessor(const Options& o, double tscHz) {
  auto setup = makeSetup(forwardingOf(o.forwarding));
  std::unique_ptr<l4::Processor> proc = o.noop ? nullptr : makeProcessor(*setup, o.maxFlows, nullptr);
  BurstRunner runner(proc.get(), Traffic(o.syn, o.flows));

  // mbuf-like buffers, 64-byte aligned, cycled in order like the ring's.
  const uint32_t nframes = (o.inflight + o.burst - 1) / o.burst * o.burst;
  std::vector<uint8_t> memory(size_t{nframes} * kBufferBytes + 64);
  uint8_t* base = memory.data() + (64 - reinterpret_cast<uintptr_t>(memory.data()) % 64) % 64;
  std::vector<Frame> frames(nframes);
  for (uint32_t i = 0; i < nframes; ++i) {
    Frame& f = frames[i];
    f.data = base + size_t{i} * kBufferBytes + kHeadroom;
    f.headroom = kHeadroom;
    f.len = 0;
    f.tailroom = kBufferBytes - kHeadroom;
  }
  runner.restoreAll(frames.data(), nframes);
  std::vector<Verdict> verdicts(o.burst);

  auto runFor = [&](double seconds) {
    const uint64_t end = clockNs(CLOCK_MONOTONIC) + static_cast<uint64_t>(seconds * 1e9);
    uint32_t at = 0;
    for (;;) {
      const uint64_t now = clockNs(CLOCK_MONOTONIC);  // the engine reads it once per loop turn too
      if (now >= end) break;
      for (int k = 0; k < 64; ++k) {  // 64 bursts between deadline checks
        const uint64_t b0 = readTsc();
        if (proc) proc->beginBurst(now);
        const uint64_t b1 = readTsc();
        runner.run(b1 - b0, &frames[at], verdicts.data(), o.burst);
        at += o.burst;
        if (at == nframes) at = 0;
      }
    }
  };

  runFor(o.warmup);
  const Sums s0 = runner.sums();
  const l4::ProcessorCounters c0 = proc ? proc->counters() : l4::ProcessorCounters{};
  const l4::FlowTableStats f0 = proc ? proc->flows().stats() : l4::FlowTableStats{};
  const uint64_t w0 = clockNs(CLOCK_MONOTONIC), cpu0 = clockNs(CLOCK_THREAD_CPUTIME_ID);
  runFor(o.seconds);
  const uint64_t w1 = clockNs(CLOCK_MONOTONIC), cpu1 = clockNs(CLOCK_THREAD_CPUTIME_ID);

  Result r;
  r.window = runner.sums() - s0;
  r.wallSeconds = static_cast<double>(w1 - w0) / 1e9;
  r.cpuSeconds = static_cast<double>(cpu1 - cpu0) / 1e9;
  r.tscHz = tscHz;
  if (proc) {
    r.proc = proc->counters();
    r.flows = proc->flows().stats();
    r.newFlowsInWindow = r.proc.newFlows - c0.newFlows;
    r.evictedInWindow = r.flows.evicted - f0.evicted;
  }
  print(o, r);
  return 0;
}

// ---------------------------------------------------------------------------
// --mode engine: the DPDK engine loop on one worker lcore over net_ring0.

// The burst handler the engine runs: the processor plus the restore. Lives
// on the worker lcore (created on the control thread); `published` is read
// by main() while it runs.
class Recycler final : public dataplane::BurstHandler {
 public:
  Recycler(std::unique_ptr<l4::Processor> p, Traffic traffic, dataplane::LcoreContext& ctx, uint32_t inject)
      : proc_(std::move(p)), runner_(proc_.get(), std::move(traffic)), ctx_(ctx), inject_(inject) {}

  void beginBurst(uint64_t nowNs) override {
    if (!injected_) {
      // First turn on the lcore: put the frames in flight. emit() copies
      // them into fresh mbufs queued to the port (= the ring we read).
      injected_ = true;
      thread_ = pthread_self();
      for (uint32_t i = 0; i < inject_; ++i) {
        if (!ctx_.emit(runner_.firstFrame(), kFrameLen)) break;
      }
      threadKnown.store(true, std::memory_order_release);
    }
    const uint64_t t0 = readTsc();
    if (proc_) proc_->beginBurst(nowNs);
    pendingBeginCycles_ = readTsc() - t0;
  }

  void handleBurst(dataplane::Frame* frames, Verdict* verdicts, uint32_t n) override {
    runner_.run(pendingBeginCycles_, frames, verdicts, n);
    published.store(runner_.sums());
  }
  void onControl(const dataplane::ControlMessage& m) override {
    if (proc_) proc_->onControl(m);
  }
  void onStop() override {
    if (proc_) proc_->onStop();
    published.store(runner_.sums());
  }

  const l4::Processor* processor() const { return proc_.get(); }
  pthread_t thread() const { return thread_; }

  PublishedSums published;
  std::atomic<bool> threadKnown{false};

 private:
  std::unique_ptr<l4::Processor> proc_;
  BurstRunner runner_;
  dataplane::LcoreContext& ctx_;
  uint32_t inject_;
  bool injected_ = false;
  pthread_t thread_{};
  uint64_t pendingBeginCycles_ = 0;  // beginBurst's rdtsc share (empty polls overwrite it)
};

int runEngine(const Options& o, double tscHz) {
  auto setup = makeSetup(forwardingOf(o.forwarding));
  dataplane::PacketEngineOptions eo;
  eo.programName = "moat-l4-pps";
  eo.lcores = {o.lcore};
  eo.mainLcore = o.lcore == 0 ? 1 : 0;
  eo.noHuge = true;
  eo.memoryMb = 512;
  eo.port = "net_ring0";
  eo.burst = o.burst;
  Recycler* recycler = nullptr;
  std::string err;
  auto engine = dataplane::PacketEngine::create(
      eo,
      [&](uint32_t, dataplane::LcoreContext& ctx) -> std::unique_ptr<dataplane::BurstHandler> {
        auto p = o.noop ? nullptr : makeProcessor(*setup, o.maxFlows, &ctx);
        auto h = std::make_unique<Recycler>(std::move(p), Traffic(o.syn, o.flows), ctx, o.inflight);
        recycler = h.get();
        return h;
      },
      err);
  if (!engine) {
    std::fprintf(stderr, "moat-l4-pps: %s\n", err.c_str());
    return 1;
  }
  engine->start();
  while (!recycler->threadKnown.load(std::memory_order_acquire)) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  clockid_t workerClock;
  if (pthread_getcpuclockid(recycler->thread(), &workerClock) != 0) {
    std::fprintf(stderr, "moat-l4-pps: pthread_getcpuclockid failed\n");
    return 1;
  }
  auto report = [&]() { return recycler->processor() ? recycler->processor()->report() : l4::ProcessorReport{}; };

  std::this_thread::sleep_for(std::chrono::duration<double>(o.warmup));
  const l4::ProcessorReport rep0 = report();
  const Sums s0 = recycler->published.load();
  const uint64_t w0 = clockNs(CLOCK_MONOTONIC), cpu0 = clockNs(workerClock);
  std::this_thread::sleep_for(std::chrono::duration<double>(o.seconds));
  const Sums s1 = recycler->published.load();
  const uint64_t w1 = clockNs(CLOCK_MONOTONIC), cpu1 = clockNs(workerClock);
  const l4::ProcessorReport rep1 = report();  // published every ~100 ms: approximate window
  engine->stop();

  Result r;
  r.window = s1 - s0;
  r.wallSeconds = static_cast<double>(w1 - w0) / 1e9;
  r.cpuSeconds = static_cast<double>(cpu1 - cpu0) / 1e9;
  r.tscHz = tscHz;
  const l4::ProcessorReport fin = report();
  r.proc = fin.counters;
  r.flows = fin.flows;
  r.newFlowsInWindow = rep1.counters.newFlows - rep0.counters.newFlows;
  r.evictedInWindow = rep1.flows.evicted - rep0.flows.evicted;
  r.engine = engine->counters(0);
  print(o, r);
  return 0;
}

}  // namespace
}  // namespace moat::bench

int main(int argc, char** argv) {
  using namespace moat::bench;
  const Options o = parseArgs(argc, argv);
  const double tscHz = calibrateTscHz();
  return o.mode == "engine" ? runEngine(o, tscHz) : runProcessor(o, tscHz);
}
