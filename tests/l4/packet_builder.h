// Test-only builder for Ethernet frames (allocates; never used on the hot
// path). Fluent: PacketBuilder().eth(..).vlan(..).ipv4(..).tcp(..)
// .payload(..).build() gives a frame with correct lengths and checksums,
// computed here with deliberately simple reference code (refChecksum) that
// shares nothing with l4/src. Corruption knobs apply after the checksums:
// the frame is wrong only where asked.
#pragma once

#include <array>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <optional>
#include <vector>

#include "moat/l4/frame.h"

namespace moat::l4::testing {

using Bytes = std::vector<uint8_t>;
using Mac = std::array<uint8_t, 6>;
using Ip4 = std::array<uint8_t, 4>;
using Ip6 = std::array<uint8_t, 16>;

inline Ip6 ip6(std::initializer_list<uint16_t> groups) {  // full 8 groups, e.g. {0x2001,0xdb8,0,0,0,0,0,1}
  Ip6 a{};
  size_t i = 0;
  for (uint16_t g : groups) {
    a[i++] = static_cast<uint8_t>(g >> 8);
    a[i++] = static_cast<uint8_t>(g);
  }
  return a;
}

// RFC 1071 reference: sum of big-endian 16-bit words, odd byte padded.
inline uint16_t refChecksum(const Bytes& b) {
  uint64_t s = 0;
  for (size_t i = 0; i < b.size(); i += 2) {
    s += uint32_t{b[i]} << 8;
    if (i + 1 < b.size()) s += b[i + 1];
  }
  while (s >> 16) s = (s & 0xffff) + (s >> 16);
  return static_cast<uint16_t>(~s);
}
// L4 checksum with pseudo-header (none for ICMPv4, proto 1); `l4` with its
// checksum field as it is: a correct packet gives 0 here.
inline uint16_t refL4Checksum(int ipVersion, const uint8_t* src, const uint8_t* dst, uint8_t proto,
                              const Bytes& l4) {
  Bytes all;
  if (proto != 1) {
    size_t n = ipVersion == 4 ? 4 : 16;
    all.insert(all.end(), src, src + n);
    all.insert(all.end(), dst, dst + n);
    if (ipVersion == 4) {
      all.push_back(0);
      all.push_back(proto);
      all.push_back(static_cast<uint8_t>(l4.size() >> 8));
      all.push_back(static_cast<uint8_t>(l4.size()));
    } else {
      uint32_t n32 = static_cast<uint32_t>(l4.size());
      all.push_back(static_cast<uint8_t>(n32 >> 24));
      all.push_back(static_cast<uint8_t>(n32 >> 16));
      all.push_back(static_cast<uint8_t>(n32 >> 8));
      all.push_back(static_cast<uint8_t>(n32));
      all.push_back(0);
      all.push_back(0);
      all.push_back(0);
      all.push_back(proto);
    }
  }
  all.insert(all.end(), l4.begin(), l4.end());
  return refChecksum(all);
}

inline void put16(Bytes& b, size_t at, uint16_t v) {
  b[at] = static_cast<uint8_t>(v >> 8);
  b[at + 1] = static_cast<uint8_t>(v);
}
inline void push16(Bytes& b, uint16_t v) {
  b.push_back(static_cast<uint8_t>(v >> 8));
  b.push_back(static_cast<uint8_t>(v));
}
inline void push32(Bytes& b, uint32_t v) {
  push16(b, static_cast<uint16_t>(v >> 16));
  push16(b, static_cast<uint16_t>(v));
}
inline uint16_t get16(const Bytes& b, size_t at) {
  return static_cast<uint16_t>((b[at] << 8) | b[at + 1]);
}
inline uint32_t get32(const Bytes& b, size_t at) {
  return (uint32_t{get16(b, at)} << 16) | get16(b, at + 2);
}

enum class Ext : uint8_t { kHopByHop = 0, kRouting = 43, kFragment = 44, kDestOpts = 60, kAh = 51 };

class PacketBuilder {
 public:
  PacketBuilder& eth(Mac src, Mac dst) {
    srcMac_ = src;
    dstMac_ = dst;
    return *this;
  }
  PacketBuilder& noEth() {  // build() gives the IP packet only (ICMP quotes)
    noEth_ = true;
    return *this;
  }
  PacketBuilder& vlan(uint16_t id, uint16_t tpid = 0x8100) {
    vlans_.push_back({tpid, id});
    return *this;
  }
  PacketBuilder& etherType(uint16_t t) {  // overrides the L3-derived type
    etherType_ = t;
    return *this;
  }
  PacketBuilder& ipv4(Ip4 src, Ip4 dst) {
    ipVersion_ = 4;
    std::memcpy(src_.data(), src.data(), 4);
    std::memcpy(dst_.data(), dst.data(), 4);
    return *this;
  }
  PacketBuilder& ipv6(Ip6 src, Ip6 dst) {
    ipVersion_ = 6;
    src_ = src;
    dst_ = dst;
    return *this;
  }
  PacketBuilder& ttl(uint8_t t) {
    ttl_ = t;
    return *this;
  }
  PacketBuilder& tos(uint8_t t) {
    tos_ = t;
    return *this;
  }
  PacketBuilder& df(bool on = true) {
    df_ = on;
    return *this;
  }
  PacketBuilder& ipId(uint16_t id) {
    ipId_ = id;
    return *this;
  }
  PacketBuilder& ipv4Options(Bytes opts) {  // padded to 4 bytes here
    while (opts.size() % 4) opts.push_back(0);
    options_ = std::move(opts);
    return *this;
  }
  // IPv4 fragment: offset in bytes (multiple of 8), more-fragments flag.
  PacketBuilder& fragment(uint16_t offsetBytes, bool mf) {
    fragOffset_ = offsetBytes;
    mf_ = mf;
    return *this;
  }
  // IPv6 extension header; `len` total bytes (multiple of 8; AH multiple of
  // 4). For kFragment: fragOffset / mf used, len ignored.
  PacketBuilder& ext(Ext kind, size_t len = 8, uint16_t fragOffsetBytes = 0, bool mf = false) {
    exts_.push_back({kind, kind == Ext::kFragment ? 8 : len, fragOffsetBytes, mf});
    return *this;
  }
  PacketBuilder& proto(uint8_t p) {  // IP protocol with no L4 built here
    proto_ = p;
    return *this;
  }
  PacketBuilder& tcp(uint16_t sport, uint16_t dport, uint8_t flags, uint32_t seq = 1000,
                     uint32_t ack = 0, Bytes options = {}) {
    proto_ = 6;
    l4_.clear();
    push16(l4_, sport);
    push16(l4_, dport);
    push32(l4_, seq);
    push32(l4_, ack);
    while (options.size() % 4) options.push_back(1);  // NOP padding
    l4_.push_back(static_cast<uint8_t>(((20 + options.size()) / 4) << 4));
    l4_.push_back(flags);
    push16(l4_, 65535);  // window
    push16(l4_, 0);      // checksum
    push16(l4_, 0);      // urgent
    l4_.insert(l4_.end(), options.begin(), options.end());
    return *this;
  }
  PacketBuilder& udp(uint16_t sport, uint16_t dport) {
    proto_ = 17;
    l4_.clear();
    push16(l4_, sport);
    push16(l4_, dport);
    push16(l4_, 0);  // length: build()
    push16(l4_, 0);
    return *this;
  }
  // ICMP (IPv4) or ICMPv6 (IPv6) header; `rest` is the 4 bytes after the
  // checksum (id/seq, MTU, NA flags...). Quotes, targets: payload().
  PacketBuilder& icmp(uint8_t type, uint8_t code, uint32_t rest = 0) {
    proto_ = ipVersion_ == 6 ? 58 : 1;
    l4_.clear();
    l4_.push_back(type);
    l4_.push_back(code);
    push16(l4_, 0);
    push32(l4_, rest);
    return *this;
  }
  PacketBuilder& arp(uint16_t op, Mac sha, Ip4 spa, Mac tha, Ip4 tpa) {
    arp_ = true;
    l3raw_.clear();
    push16(l3raw_, 1);
    push16(l3raw_, 0x0800);
    l3raw_.push_back(6);
    l3raw_.push_back(4);
    push16(l3raw_, op);
    l3raw_.insert(l3raw_.end(), sha.begin(), sha.end());
    l3raw_.insert(l3raw_.end(), spa.begin(), spa.end());
    l3raw_.insert(l3raw_.end(), tha.begin(), tha.end());
    l3raw_.insert(l3raw_.end(), tpa.begin(), tpa.end());
    return *this;
  }
  PacketBuilder& payload(const Bytes& b) {
    payload_.insert(payload_.end(), b.begin(), b.end());
    return *this;
  }
  PacketBuilder& l2Padding(size_t n) {  // bytes after the IP packet
    l2pad_ = n;
    return *this;
  }

  // Corruption knobs.
  PacketBuilder& ipLengthDelta(int d) {  // IPv4 total length / IPv6 payload length
    ipLenDelta_ = d;
    return *this;
  }
  PacketBuilder& ihl(uint8_t words) {
    ihlOverride_ = words;
    return *this;
  }
  PacketBuilder& ipVersionNibble(uint8_t v) {
    versionOverride_ = v;
    return *this;
  }
  PacketBuilder& badIpChecksum() {
    badIpCsum_ = true;
    return *this;
  }
  PacketBuilder& udpLength(uint16_t n) {
    udpLenOverride_ = n;
    return *this;
  }
  PacketBuilder& tcpDataOffset(uint8_t words) {
    tcpDoffOverride_ = words;
    return *this;
  }
  PacketBuilder& truncateAt(size_t n) {
    truncate_ = n;
    return *this;
  }

  // The IP packet (or ARP body), with lengths and checksums.
  Bytes buildL3() const {
    if (arp_) return l3raw_;
    Bytes l4 = l4_;
    l4.insert(l4.end(), payload_.begin(), payload_.end());
    if (proto_ == 17 && l4.size() >= 8) put16(l4, 4, static_cast<uint16_t>(l4.size()));
    bool nonFirst = (ipVersion_ == 4 && fragOffset_ != 0);
    for (const ExtHdr& e : exts_) nonFirst |= e.kind == Ext::kFragment && e.fragOffset != 0;
    if (!l4_.empty() && !nonFirst) {
      size_t at = proto_ == 6 ? 16 : proto_ == 17 ? 6 : 2;
      uint16_t c = refL4Checksum(ipVersion_, src_.data(), dst_.data(), proto_, l4);
      if (proto_ == 17 && c == 0) c = 0xffff;
      put16(l4, at, c);
    }
    if (udpLenOverride_) put16(l4, 4, *udpLenOverride_);
    if (tcpDoffOverride_) l4[12] = static_cast<uint8_t>((*tcpDoffOverride_ << 4) | (l4[12] & 0x0f));
    Bytes ip;
    if (ipVersion_ == 4) {
      size_t hl = 20 + options_.size();
      ip.push_back(static_cast<uint8_t>(0x40 | (hl / 4)));
      ip.push_back(tos_);
      push16(ip, static_cast<uint16_t>(hl + l4.size() + ipLenDelta_));
      push16(ip, ipId_);
      push16(ip, static_cast<uint16_t>((df_ ? 0x4000 : 0) | (mf_ ? 0x2000 : 0) | (fragOffset_ / 8)));
      ip.push_back(ttl_);
      ip.push_back(proto_);
      push16(ip, 0);
      ip.insert(ip.end(), src_.begin(), src_.begin() + 4);
      ip.insert(ip.end(), dst_.begin(), dst_.begin() + 4);
      ip.insert(ip.end(), options_.begin(), options_.end());
      if (ihlOverride_) ip[0] = static_cast<uint8_t>(0x40 | *ihlOverride_);
      Bytes hdr(ip.begin(), ip.begin() + hl);
      uint16_t c = refChecksum(hdr);
      put16(ip, 10, badIpCsum_ ? static_cast<uint16_t>(c ^ 0x0101) : c);
    } else {
      Bytes exts;
      for (size_t i = 0; i < exts_.size(); ++i) {
        const ExtHdr& e = exts_[i];
        uint8_t next = i + 1 < exts_.size() ? static_cast<uint8_t>(exts_[i + 1].kind) : proto_;
        size_t start = exts.size();
        exts.resize(start + e.len, 0);
        exts[start] = next;
        if (e.kind == Ext::kFragment) {
          put16(exts, start + 2, static_cast<uint16_t>(e.fragOffset | (e.mf ? 1 : 0)));
          exts[start + 7] = 0x42;  // id
        } else if (e.kind == Ext::kAh) {
          exts[start + 1] = static_cast<uint8_t>(e.len / 4 - 2);
        } else {
          exts[start + 1] = static_cast<uint8_t>(e.len / 8 - 1);
          if (e.kind != Ext::kRouting) {  // one PadN option fills the header
            exts[start + 2] = 1;
            exts[start + 3] = static_cast<uint8_t>(e.len - 4);
          }
        }
      }
      uint8_t first = exts_.empty() ? proto_ : static_cast<uint8_t>(exts_[0].kind);
      push32(ip, (6u << 28) | (uint32_t{tos_} << 20) | 0x12345);
      push16(ip, static_cast<uint16_t>(exts.size() + l4.size() + ipLenDelta_));
      ip.push_back(first);
      ip.push_back(ttl_);
      ip.insert(ip.end(), src_.begin(), src_.end());
      ip.insert(ip.end(), dst_.begin(), dst_.end());
      ip.insert(ip.end(), exts.begin(), exts.end());
    }
    if (versionOverride_) ip[0] = static_cast<uint8_t>((*versionOverride_ << 4) | (ip[0] & 0x0f));
    ip.insert(ip.end(), l4.begin(), l4.end());
    return ip;
  }

  Bytes build() const {
    Bytes f;
    if (!noEth_) {
      f.insert(f.end(), dstMac_.begin(), dstMac_.end());
      f.insert(f.end(), srcMac_.begin(), srcMac_.end());
      for (const Tag& t : vlans_) {
        push16(f, t.tpid);
        push16(f, t.id);
      }
      uint16_t type = arp_ ? 0x0806 : ipVersion_ == 6 ? 0x86dd : 0x0800;
      push16(f, etherType_ ? *etherType_ : type);
    }
    Bytes l3 = buildL3();
    f.insert(f.end(), l3.begin(), l3.end());
    f.resize(f.size() + l2pad_, 0);
    if (truncate_ && *truncate_ < f.size()) f.resize(*truncate_);
    return f;
  }

 private:
  struct Tag {
    uint16_t tpid, id;
  };
  struct ExtHdr {
    Ext kind;
    size_t len;
    uint16_t fragOffset;
    bool mf;
  };
  Mac srcMac_{0x02, 0, 0, 0, 0, 0x01};
  Mac dstMac_{0x02, 0, 0, 0, 0, 0x02};
  bool noEth_ = false;
  std::vector<Tag> vlans_;
  std::optional<uint16_t> etherType_;
  int ipVersion_ = 4;
  Ip6 src_{}, dst_{};
  uint8_t ttl_ = 64, tos_ = 0;
  bool df_ = false, mf_ = false;
  uint16_t ipId_ = 0x1234, fragOffset_ = 0;
  Bytes options_;
  std::vector<ExtHdr> exts_;
  uint8_t proto_ = 0;
  Bytes l4_, payload_, l3raw_;
  bool arp_ = false;
  size_t l2pad_ = 0;
  int ipLenDelta_ = 0;
  std::optional<uint8_t> ihlOverride_, versionOverride_, tcpDoffOverride_;
  std::optional<uint16_t> udpLenOverride_;
  bool badIpCsum_ = false;
  std::optional<size_t> truncate_;
};

// Owns a buffer with head- and tailroom and a Frame over it. Not copyable
// (the Frame points into the buffer).
class TestFrame {
 public:
  explicit TestFrame(const Bytes& bytes, uint32_t headroom = 128, uint32_t tailroom = 128)
      : buf_(headroom + bytes.size() + tailroom, 0xee) {
    std::memcpy(buf_.data() + headroom, bytes.data(), bytes.size());
    frame.data = buf_.data() + headroom;
    frame.len = static_cast<uint32_t>(bytes.size());
    frame.headroom = headroom;
    frame.tailroom = tailroom;
  }
  TestFrame(const TestFrame&) = delete;
  TestFrame& operator=(const TestFrame&) = delete;

  Bytes bytes() const { return Bytes(frame.data, frame.data + frame.len); }
  // The frame's invariants against the buffer still hold.
  bool consistent() const {
    return frame.data - frame.headroom == buf_.data() &&
           frame.headroom + frame.len + frame.tailroom == buf_.size();
  }

  Frame frame;

 private:
  Bytes buf_;
};

}  // namespace moat::l4::testing
