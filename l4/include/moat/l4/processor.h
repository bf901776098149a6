// The L4 packet processor: what one DPDK lcore does with each frame.
//
//   parse -> ARP / NDP for our addresses -> deny lists (LPM) -> VIP lookup
//   -> flow table (existing flows keep their backend) or Maglev (new flows,
//   SYN rate limit) -> next-hop MAC -> IPIP / GUE / L2 DSR rewrite -> TX
//
// Frames that are not for a VIP (the host's own traffic, L7 VIPs) go to the
// kernel through the engine's exception TAP. One Processor per lcore,
// created on the control thread, then used only by its lcore (its flow
// table and SYN limiter are that lcore's own); the neighbour table is shared
// by every lcore. Per packet: no allocation, no locks, no exceptions.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>

#include "moat/dataplane/packet_engine.h"
#include "moat/l4/flow_table.h"
#include "moat/l4/neighbors.h"
#include "moat/l4/packet.h"
#include "moat/l4/service.h"
#include "moat/l4/syn_limiter.h"

namespace moat::l4 {

// Counters of one processor, declared once: X(field, "name").
#define MOAT_L4_COUNTERS(X)                                                                \
  X(frames, "frames")                                                                    \
  X(parseErrors, "parse_errors")            /* malformed frames: see parse_<reason> */     \
  X(arpReplies, "arp_replies")              /* ARP requests for a VIP or our address */    \
  X(ndpAdverts, "ndp_adverts")              /* neighbour solicitations answered */         \
  X(neighborsLearned, "neighbors_learned")  /* ARP / NA seen from a next hop */            \
  X(toKernel, "to_kernel")                  /* not for an L4 VIP: the host's traffic */    \
  X(vipPackets, "vip_packets")              /* packets for a VIP */                        \
  X(flowHits, "flow_hits")                  /* packets of a known flow */                  \
  X(newFlows, "new_flows")                  /* flows given a backend by Maglev */          \
  X(midstreamFlows, "midstream_flows")      /* TCP non-SYN with no state: Maglev picked */ \
  X(deniedCidr, "denied_cidr")              /* l4.denyCidrs: dropped before any state */   \
  X(deniedGeo, "denied_geo")                /* l4.geoDeny: dropped before any state */     \
  X(synLimited, "syn_limited")              /* new flow over the source's SYN rate */      \
  X(noBackend, "no_backend")                /* VIP with no backend for new flows */        \
  X(backendDownResets, "backend_down_resets") /* flow's backend gone: RST sent */          \
  X(backendDownDrops, "backend_down_drops")   /* flow's backend gone: dropped */           \
  X(fragmentsDropped, "fragments_dropped")  /* non-first fragments for a VIP (no ports) */ \
  X(vipOtherDropped, "vip_other_dropped")   /* VIP address, no such service (port/proto) */ \
  X(neighborUnresolved, "neighbor_unresolved") /* next hop MAC unknown: dropped */         \
  X(arpRequestsSent, "arp_requests_sent")                                                \
  X(neighborSolicitsSent, "neighbor_solicits_sent")                                      \
  X(encapIpip, "encap_ipip")                                                             \
  X(encapGue, "encap_gue")                                                               \
  X(dsrForwarded, "dsr_forwarded")                                                       \
  X(swChecksums, "sw_checksums")            /* outer checksums done in software */         \
  X(tooBigSent, "too_big_sent")             /* ICMP frag-needed / PTB to a client */       \
  X(icmpToBackend, "icmp_to_backend")       /* client ICMP errors sent to the flow's backend */ \
  X(icmpErrorsDropped, "icmp_errors_dropped") /* ICMP errors for no service / no live backend */          \
  X(echoReplies, "echo_replies")            /* pings to a VIP answered */                  \
  X(rewriteErrors, "rewrite_errors")        /* no headroom, fragmentation needed, ... */   \
  X(badChecksumDropped, "bad_checksum_dropped") /* NIC said the IPv4 checksum is bad */   \
  X(controlClears, "control_clears")        /* flow table cleared by the control plane */

struct ProcessorCounters {
#define MOAT_L4_FIELD(f, n) uint64_t f = 0;
  MOAT_L4_COUNTERS(MOAT_L4_FIELD)
#undef MOAT_L4_FIELD
  std::array<uint64_t, kParseStatusCount> parse{};  // by ParseStatus
  ProcessorCounters& operator+=(const ProcessorCounters& o) {
#define MOAT_L4_ADD(f, n) f += o.f;
    MOAT_L4_COUNTERS(MOAT_L4_ADD)
#undef MOAT_L4_ADD
    for (size_t i = 0; i < parse.size(); ++i) parse[i] += o.parse[i];
    return *this;
  }
  template <class Fn>
  void forEach(Fn&& fn) const {
#define MOAT_L4_VISIT(f, n) fn(n, f);
    MOAT_L4_COUNTERS(MOAT_L4_VISIT)
#undef MOAT_L4_VISIT
  }
};

struct ProcessorReport {
  ProcessorCounters counters;
  FlowTableStats flows;
  SynLimiterStats syn;
  uint64_t tablesVersion = 0;  // publication count of the tables in use
};

struct ProcessorOptions {
  size_t maxFlows = 1 << 20;
  FlowTimeouts timeouts;
  bool synLimit = false;
  SynLimiterConfig syn;
  uint64_t seed = 0;  // flow-table bucket seed (random per process)
};

class Processor final : public dataplane::BurstHandler {
 public:
  // Control thread. `acquire` is called once per burst on the lcore and
  // returns the tables to use for it (valid until the next call) with a
  // number that changes when they do. `neighbors` is shared by all lcores
  // and outlives the processor. Allocates the flow table (throws
  // std::bad_alloc / std::invalid_argument like FlowTable).
  using Acquire = std::function<const Tables*(uint64_t* version)>;
  Processor(const ProcessorOptions& o, Acquire acquire, NeighborTable* neighbors,
            dataplane::LcoreContext* ctx);

  void beginBurst(uint64_t nowNs) override;
  void handleBurst(dataplane::Frame* frames, dataplane::Verdict* verdicts, uint32_t n) override;
  void onControl(const dataplane::ControlMessage& m) override;
  void onStop() override;

  // One frame (tests call this directly; handleBurst loops over it).
  dataplane::Verdict handle(Frame& f);

  // Any thread: counters as of the last publication (every ~100 ms and at
  // stop).
  ProcessorReport report() const;
  // The lcore's own view (tests, same thread).
  const ProcessorCounters& counters() const { return c_; }
  const FlowTable& flows() const { return flows_; }

 private:
  dataplane::Verdict handleIp(Frame& f, const ParsedPacket& p);
  dataplane::Verdict handleVip(Frame& f, const ParsedPacket& p, const Service& svc);
  dataplane::Verdict handleIcmpError(Frame& f, const ParsedPacket& p);
  dataplane::Verdict forward(Frame& f, const ParsedPacket& p, const Service& svc, const Backend& b,
                             uint64_t hash);
  void publish();

  ProcessorOptions opts_;
  Acquire acquire_;
  NeighborTable* neighbors_;
  dataplane::LcoreContext* ctx_;
  const Tables* t_ = nullptr;
  uint64_t tablesVersion_ = 0;
  uint64_t now_ = 0;
  uint64_t lastPublish_ = 0;
  uint64_t lastExpire_ = 0;
  FlowTable flows_;
  std::unique_ptr<SynLimiter> syn_;
  ProcessorCounters c_;
  uint8_t mac_[6] = {};

  // Publication to the control thread: the lcore takes this lock once per
  // ~100 ms to copy its counters; report() takes it to read them.
  mutable std::mutex pubMu_;
  ProcessorReport published_;
};

}  // namespace moat::l4
