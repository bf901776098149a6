// libFuzzer target: the L4 frame parser and every in-place rewrite.
// Properties: parseFrame never reads past the input (exact-size copy, so
// ASan sees overreads) and a kOk parse has offsets inside the frame; each
// rewrite on a parsed frame stays inside its buffer (head- and tailroom are
// part of one exact-size allocation) and, where the output is a packet the
// parser must accept (encapsulation, RST, echo reply, ARP reply, NA), it
// parses again. The first input byte picks the NIC checksum verdict.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "moat/l4/packet.h"
#include "moat/l4/rewrite.h"

using namespace moat::l4;

namespace {

constexpr uint32_t kRoom = 64;
const uint8_t kMac[6] = {2, 0, 0, 0, 0, 1};
const uint8_t kMac2[6] = {2, 0, 0, 0, 0, 2};
const uint8_t kIp[16] = {10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
const uint8_t kIp2[16] = {10, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2};

void checkParsed(const ParsedPacket& p, size_t size) {
  if (p.l3Offset > p.l4Offset || p.l4Offset > p.payloadOffset) abort();
  if (p.ipVersion != 0) {
    if (p.l3Offset + size_t{p.l3Len} > size) abort();
    if (p.payloadOffset + size_t{p.payloadLen} > p.l3Offset + size_t{p.l3Len}) abort();
  } else if (p.l4Offset > size) {
    abort();
  }
}

// Runs one rewrite on a fresh copy of the frame in an exact-size buffer.
template <typename Fn>
void runRewrite(const std::vector<uint8_t>& frame, const ParsedPacket& p, bool mustReparse, Fn fn) {
  std::vector<uint8_t> buf(kRoom + frame.size() + kRoom);
  std::memcpy(buf.data() + kRoom, frame.data(), frame.size());
  Frame f;
  f.data = buf.data() + kRoom;
  f.len = static_cast<uint32_t>(frame.size());
  f.headroom = kRoom;
  f.tailroom = kRoom;
  RewriteStatus st = fn(f, p);
  if (static_cast<size_t>(st) >= kRewriteStatusCount) abort();
  if (f.data - f.headroom != buf.data() || f.headroom + f.len + f.tailroom != buf.size()) abort();
  if (st != RewriteStatus::kOk) {
    if (std::memcmp(buf.data() + kRoom, frame.data(), frame.size()) != 0 || f.len != frame.size()) {
      abort();  // a refused rewrite must leave the frame unchanged
    }
    return;
  }
  std::vector<uint8_t> out(f.data, f.data + f.len);
  ParsedPacket q;
  ParseStatus ps = parseFrame(out.data(), static_cast<uint32_t>(out.size()), q);
  if (ps == ParseStatus::kOk) checkParsed(q, out.size());
  if (mustReparse && ps != ParseStatus::kOk) abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1 || size > 70000) return 0;
  Frame::RxChecksum rx = static_cast<Frame::RxChecksum>(data[0] % 3);
  std::vector<uint8_t> frame(data + 1, data + size);  // exact size
  ParsedPacket p;
  ParseStatus st = parseFrame(frame.empty() ? nullptr : frame.data(),
                              static_cast<uint32_t>(frame.size()), p, rx);
  if (static_cast<size_t>(st) >= kParseStatusCount) abort();
  if (st != ParseStatus::kOk) return 0;
  checkParsed(p, frame.size());
  if (rx == Frame::RxChecksum::kBad && p.ipVersion == 4) abort();
  // Rewrites assume a software-verified frame, like a frame the NIC passed.
  if (parseFrame(frame.data(), static_cast<uint32_t>(frame.size()), p) != ParseStatus::kOk) return 0;

  for (uint8_t ov : {4, 6}) {
    EncapParams e;
    e.outerVersion = ov;
    std::memcpy(e.outerSrc, kIp, 16);
    std::memcpy(e.outerDst, kIp2, 16);
    std::memcpy(e.srcMac, kMac, 6);
    std::memcpy(e.dstMac, kMac2, 6);
    e.keepVlan = ov == 6;
    e.mtu = 9000;
    runRewrite(frame, p, true, [&](Frame& f, const ParsedPacket& pp) {
      return encapIpip(f, pp, e, hashFlow(flowKeyOf(pp)));
    });
    runRewrite(frame, p, true, [&](Frame& f, const ParsedPacket& pp) {
      return encapGue(f, pp, e, hashFlow(flowKeyOf(pp)));
    });
  }
  runRewrite(frame, p, true,
             [](Frame& f, const ParsedPacket&) { return rewriteL2Dsr(f, kMac, kMac2); });
  runRewrite(frame, p, false, [](Frame& f, const ParsedPacket& pp) {
    return makeIcmpFragNeeded(f, pp, 1400, kIp, kMac);
  });
  runRewrite(frame, p, false, [](Frame& f, const ParsedPacket& pp) {
    return makeIcmpv6PacketTooBig(f, pp, 1280, kIp, kMac);
  });
  runRewrite(frame, p, true,
             [](Frame& f, const ParsedPacket& pp) { return makeArpReply(f, pp, kMac); });
  runRewrite(frame, p, true,
             [](Frame& f, const ParsedPacket& pp) { return makeNeighborAdvert(f, pp, kMac); });
  runRewrite(frame, p, true,
             [](Frame& f, const ParsedPacket& pp) { return makeTcpReset(f, pp, kMac); });
  runRewrite(frame, p, true,
             [](Frame& f, const ParsedPacket& pp) { return makeIcmpEchoReply(f, pp, kMac); });
  return 0;
}
