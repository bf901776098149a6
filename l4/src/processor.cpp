#include "moat/l4/processor.h"

#include <cstring>

#include "moat/l4/pick.h"
#include "moat/l4/rewrite.h"

namespace moat::l4 {

using dataplane::Verdict;

namespace {

constexpr uint64_t kPublishEveryNs = 100'000'000;
constexpr uint64_t kExpireEveryNs = 1'000'000;  // reap a little every millisecond
constexpr size_t kExpireWork = 64;

bool isTcpSyn(const ParsedPacket& p) {
  return p.proto == kProtoTcp && (p.tcpFlags & kTcpSyn) != 0 && (p.tcpFlags & kTcpAck) == 0;
}

}  // namespace

Processor::Processor(const ProcessorOptions& o, Acquire acquire, NeighborTable* neighbors,
                     dataplane::LcoreContext* ctx)
    : opts_(o),
      acquire_(std::move(acquire)),
      neighbors_(neighbors),
      ctx_(ctx),
      flows_(o.maxFlows, o.timeouts, o.seed) {
  if (o.synLimit) syn_ = std::make_unique<SynLimiter>(o.syn);
  if (ctx_ != nullptr) std::memcpy(mac_, ctx_->portMac(), 6);
}

void Processor::beginBurst(uint64_t nowNs) {
  now_ = nowNs;
  uint64_t version = 0;
  t_ = acquire_(&version);
  tablesVersion_ = version;
  if (nowNs - lastExpire_ >= kExpireEveryNs) {
    flows_.expire(nowNs, kExpireWork);
    lastExpire_ = nowNs;
  }
  if (nowNs - lastPublish_ >= kPublishEveryNs) {
    publish();
    lastPublish_ = nowNs;
  }
}

void Processor::handleBurst(dataplane::Frame* frames, Verdict* verdicts, uint32_t n) {
  for (uint32_t i = 0; i < n; ++i) verdicts[i] = handle(frames[i]);
}

void Processor::onControl(const dataplane::ControlMessage& m) {
  if (m.type == dataplane::ControlMessage::Type::kClearFlows) {
    flows_.removeIf([](const Flow&) { return true; }, SIZE_MAX);
    ++c_.controlClears;
  } else {
    publish();
  }
}

void Processor::onStop() { publish(); }

void Processor::publish() {
  std::lock_guard<std::mutex> lock(pubMu_);
  published_.counters = c_;
  published_.flows = flows_.stats();
  if (syn_) published_.syn = syn_->stats();
  published_.tablesVersion = tablesVersion_;
}

ProcessorReport Processor::report() const {
  std::lock_guard<std::mutex> lock(pubMu_);
  return published_;
}

Verdict Processor::handle(Frame& f) {
  ++c_.frames;
  ParsedPacket p;
  const ParseStatus st = parseFrame(f, p);
  if (st != ParseStatus::kOk) {
    ++c_.parseErrors;
    ++c_.parse[static_cast<size_t>(st)];
    if (st == ParseStatus::kIpv4BadChecksum && f.rxIpChecksum == Frame::RxChecksum::kBad) {
      ++c_.badChecksumDropped;
    }
    // Protocols we do not parse (LLDP, ...) are the host's business.
    return st == ParseStatus::kUnsupportedEthertype ? (++c_.toKernel, Verdict::kToKernel)
                                                    : Verdict::kDrop;
  }
  if (t_ == nullptr) {  // no snapshot yet: the host's business
    ++c_.toKernel;
    return Verdict::kToKernel;
  }
  if (p.ipVersion == 0) {  // ARP
    if (neighbors_ != nullptr) {
      uint8_t ip16[16] = {};
      std::memcpy(ip16, p.arpSpa, 4);
      if (neighbors_->learn(ip16, 4, p.arpSha, now_) == LearnResult::kUpdated) ++c_.neighborsLearned;
    }
    if (p.arpOp == 1 && t_->isVipAddress(p.arpTpa, 4)) {
      if (makeArpReply(f, p, mac_) == RewriteStatus::kOk) {
        ++c_.arpReplies;
        return Verdict::kTx;
      }
      ++c_.rewriteErrors;
      return Verdict::kDrop;
    }
    ++c_.toKernel;
    return Verdict::kToKernel;
  }
  return handleIp(f, p);
}

Verdict Processor::handleIp(Frame& f, const ParsedPacket& p) {
  const Tables& t = *t_;
  // Neighbour discovery for VIPs, and learning next hops from NS / NA.
  if (p.proto == kProtoIcmpv6 && (p.icmpType == 135 || p.icmpType == 136)) {
    if (neighbors_ != nullptr && p.hasNdpLladdr) {
      const uint8_t* ip = p.icmpType == 136 ? p.ndpTarget : p.src;
      bool unspecified = true;
      for (int i = 0; i < 16; ++i) unspecified = unspecified && ip[i] == 0;
      if (!unspecified && neighbors_->learn(ip, 6, p.ndpLladdr, now_) == LearnResult::kUpdated) ++c_.neighborsLearned;
    }
    if (p.icmpType == 135 && t.isVipAddress(p.ndpTarget, 6)) {
      if (makeNeighborAdvert(f, p, mac_) == RewriteStatus::kOk) {
        ++c_.ndpAdverts;
        return Verdict::kTx;
      }
      ++c_.rewriteErrors;
      return Verdict::kDrop;
    }
    ++c_.toKernel;
    return Verdict::kToKernel;
  }
  // Deny lists, before any state: LPM on the packet engine, else CidrSets.
  if (t.denyLookup) {
    const uint32_t m = p.ipVersion == 4 ? t.denyLookup->match4(p.src) : t.denyLookup->match6(p.src);
    if (m != 0) {
      ++(m == PrefixLookup::kDenyCidr ? c_.deniedCidr : c_.deniedGeo);
      return Verdict::kDrop;
    }
  } else if (!t.denyCidrs.empty() || !t.denyGeo.empty()) {
    const IpAddress a = IpAddress::fromBytes(p.src, p.ipVersion == 4 ? 4 : 16);
    if (t.denyCidrs.contains(a)) {
      ++c_.deniedCidr;
      return Verdict::kDrop;
    }
    if (t.denyGeo.contains(a)) {
      ++c_.deniedGeo;
      return Verdict::kDrop;
    }
  }
  if (!t.isVipAddress(p.dst, p.ipVersion)) {
    ++c_.toKernel;
    return Verdict::kToKernel;
  }
  ++c_.vipPackets;
  if (p.proto == kProtoTcp || p.proto == kProtoUdp) {
    if (!p.hasPorts) {
      ++c_.fragmentsDropped;
      return Verdict::kDrop;
    }
    const Service* svc = t.findService(p.dst, p.ipVersion, p.proto, p.dstPort);
    if (svc == nullptr) {
      ++c_.vipOtherDropped;
      return Verdict::kDrop;
    }
    return handleVip(f, p, *svc);
  }
  if ((p.proto == kProtoIcmp && p.icmpType == 8) || (p.proto == kProtoIcmpv6 && p.icmpType == 128)) {
    if (makeIcmpEchoReply(f, p, mac_) == RewriteStatus::kOk) {
      ++c_.echoReplies;
      return Verdict::kTx;
    }
    ++c_.rewriteErrors;
    return Verdict::kDrop;
  }
  if (p.hasInner) return handleIcmpError(f, p);
  ++c_.vipOtherDropped;
  return Verdict::kDrop;
}

// A router on the client's path says our VIP's packets are too big (or
// unreachable): the backend that owns the flow must hear it (it sends the
// replies), so it follows the flow's encapsulation.
Verdict Processor::handleIcmpError(Frame& f, const ParsedPacket& p) {
  // The quote is a packet the backend sent from the VIP to the client.
  const FlowKey flow = p.inner.reversed();
  const Service* svc = t_->findService(flow.dst, flow.ipVersion, flow.proto, flow.dstPort);
  if (svc == nullptr) {
    ++c_.icmpErrorsDropped;
    return Verdict::kDrop;
  }
  const uint64_t hash = hashFlow(flow);
  Flow* fl = flows_.find(flow, hash, now_);
  const Backend* b = fl != nullptr ? svc->backendById(fl->backendId) : pickBackendByHash(*svc, hash);
  if (b == nullptr || !b->inService) {
    ++c_.icmpErrorsDropped;
    return Verdict::kDrop;
  }
  ++c_.icmpToBackend;
  return forward(f, p, *svc, *b, hash);
}

Verdict Processor::handleVip(Frame& f, const ParsedPacket& p, const Service& svc) {
  const FlowKey key = flowKeyOf(p);
  const uint64_t hash = hashFlow(key);
  Flow* fl = flows_.find(key, hash, now_);
  const Backend* b = nullptr;
  if (fl != nullptr) {
    ++c_.flowHits;
    b = svc.backendById(fl->backendId);
    if (b == nullptr || !b->inService) {
      // The backend left the pool or failed its health checks.
      flows_.erase(*fl);
      if (svc.onBackendDown == BackendDown::kReset && p.proto == kProtoTcp &&
          makeTcpReset(f, p, mac_) == RewriteStatus::kOk) {
        ++c_.backendDownResets;
        return Verdict::kTx;
      }
      ++c_.backendDownDrops;
      return Verdict::kDrop;
    }
  } else {
    const bool syn = isTcpSyn(p);
    if (syn_ && (syn || p.proto == kProtoUdp) && !syn_->allow(p.src, p.ipVersion, now_)) {
      ++c_.synLimited;
      return Verdict::kDrop;
    }
    b = pickBackendByHash(svc, hash);
    if (b == nullptr) {
      ++c_.noBackend;
      if (p.proto == kProtoTcp && makeTcpReset(f, p, mac_) == RewriteStatus::kOk) return Verdict::kTx;
      return Verdict::kDrop;
    }
    if (p.proto == kProtoTcp && !syn) ++c_.midstreamFlows;
    ++c_.newFlows;
    fl = flows_.insert(key, hash, now_);
    if (fl != nullptr) {
      fl->backendId = b->id;
      fl->backendIndex = static_cast<uint32_t>(b - svc.backends.data());
      fl->serviceIndex = static_cast<uint32_t>(&svc - t_->services.data());
    }
  }
  if (fl != nullptr) {
    if (p.proto == kProtoTcp) flows_.updateTcpState(*fl, p.tcpFlags, now_);
    flows_.touch(*fl, f.len, now_);
  }
  return forward(f, p, svc, *b, hash);
}

Verdict Processor::forward(Frame& f, const ParsedPacket& p, const Service& svc, const Backend& b,
                           uint64_t hash) {
  const Tables& t = *t_;
  uint8_t dstMac[6];
  uint8_t ip16[16] = {};
  std::memcpy(ip16, b.addr, b.ipVersion == 4 ? 4 : 16);
  if (neighbors_ == nullptr || !neighbors_->lookup(ip16, b.ipVersion, dstMac)) {
    ++c_.neighborUnresolved;
    if (neighbors_ != nullptr && ctx_ != nullptr && neighbors_->needsResolve(ip16, b.ipVersion, now_)) {
      uint8_t buf[128];
      if (b.ipVersion == 4) {
        const uint32_t len = writeArpRequest(buf, sizeof(buf), mac_, t.localIpv4, b.addr);
        if (len != 0 && ctx_->emit(buf, len)) ++c_.arpRequestsSent;
      } else if (t.hasLocalIpv6) {
        const uint32_t len = writeNeighborSolicit(buf, sizeof(buf), mac_, t.localIpv6, b.addr);
        if (len != 0 && ctx_->emit(buf, len)) ++c_.neighborSolicitsSent;
      }
    }
    return Verdict::kDrop;
  }
  RewriteStatus st;
  if (svc.forwarding == Forwarding::kDsr) {
    st = rewriteL2Dsr(f, mac_, dstMac);
    if (st == RewriteStatus::kOk) {
      ++c_.dsrForwarded;
      return Verdict::kTx;
    }
  } else {
    EncapParams e;
    e.outerVersion = b.ipVersion;
    if (b.ipVersion == 4) {
      std::memcpy(e.outerSrc, t.localIpv4, 4);
    } else {
      std::memcpy(e.outerSrc, t.localIpv6, 16);
    }
    std::memcpy(e.outerDst, b.addr, 16);
    std::memcpy(e.srcMac, mac_, 6);
    std::memcpy(e.dstMac, dstMac, 6);
    e.mtu = static_cast<uint16_t>(t.mtu);
    e.gueDstPort = svc.guePort;
    const bool gue = svc.forwarding == Forwarding::kGue;
    st = gue ? encapGue(f, p, e, hash) : encapIpip(f, p, e, hash);
    if (st == RewriteStatus::kOk) {
      ++(gue ? c_.encapGue : c_.encapIpip);
      // Outer checksums written in software: the IPv4 header, or the UDP
      // checksum GUE needs over an IPv6 outer (IPIP over IPv6 has none).
      if (b.ipVersion == 4 || gue) ++c_.swChecksums;
      return Verdict::kTx;
    }
    if (st == RewriteStatus::kTooBig) {
      // Tell the client the largest packet that fits once encapsulated.
      const uint32_t overhead = (gue ? (b.ipVersion == 4 ? kGueOverheadV4 : kGueOverheadV6)
                                     : (b.ipVersion == 4 ? kIpipOverheadV4 : kIpipOverheadV6));
      const uint32_t mtu = t.mtu - overhead;
      RewriteStatus r = RewriteStatus::kUnsupported;
      if (p.ipVersion == 4) {
        r = makeIcmpFragNeeded(f, p, static_cast<uint16_t>(mtu), p.dst, mac_);
      } else {
        r = makeIcmpv6PacketTooBig(f, p, mtu < 1280 ? 1280 : mtu, p.dst, mac_);
      }
      if (r == RewriteStatus::kOk) {
        ++c_.tooBigSent;
        return Verdict::kTx;
      }
    }
  }
  ++c_.rewriteErrors;
  return Verdict::kDrop;
}

}  // namespace moat::l4
