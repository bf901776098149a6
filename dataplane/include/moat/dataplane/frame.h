// One Ethernet frame in a packet buffer with head- and tailroom: the only
// packet type the l4 stage sees. The DPDK engine maps an rte_mbuf (single
// segment) onto a Frame before calling into l4 and writes data/len back
// after; tests map a plain byte array. Light header: no DPDK, no allocation.
//
// Defined at the engine seam so dataplane/ can hand frames up without
// knowing l4. Thread: a Frame belongs to the worker processing it, for one burst.
#pragma once

#include <cstdint>

namespace moat::dataplane {

struct Frame {
  uint8_t* data = nullptr;  // first byte of the Ethernet header
  uint32_t len = 0;         // bytes from data
  uint32_t headroom = 0;    // writable bytes before data
  uint32_t tailroom = 0;    // writable bytes after data + len
  // What the NIC said about the IPv4 header checksum on receive (kUnknown
  // when the port has no such offload: the parser then checks it itself).
  enum class RxChecksum : uint8_t { kUnknown, kGood, kBad };
  RxChecksum rxIpChecksum = RxChecksum::kUnknown;

  // Grows the frame at the front by n bytes (encapsulation). Returns the new
  // start, or null (frame unchanged) when the headroom is too small.
  uint8_t* prepend(uint32_t n) {
    if (n > headroom) return nullptr;
    data -= n;
    headroom -= n;
    len += n;
    return data;
  }
  // Removes n bytes at the front. Returns false (unchanged) if n > len.
  bool trimFront(uint32_t n) {
    if (n > len) return false;
    data += n;
    headroom += n;
    len -= n;
    return true;
  }
  // Grows at the end by n bytes; returns the first new byte or null.
  uint8_t* append(uint32_t n) {
    if (n > tailroom) return nullptr;
    uint8_t* p = data + len;
    tailroom -= n;
    len += n;
    return p;
  }
  // Shrinks to n bytes (n <= len), e.g. to cut an ICMP quote.
  void truncate(uint32_t n) {
    if (n < len) {
      tailroom += len - n;
      len = n;
    }
  }
};

}  // namespace moat::l4
