// L4 virtual services as both engines run them: the DPDK packet processor
// and the io_uring socket proxy. Built by the control thread into the config
// snapshot (control/snapshot.h, Snapshot::l4), immutable afterwards, read by
// every worker for the length of one burst / loop turn.
#pragma once

#include <sys/socket.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "moat/l4/cidr.h"

namespace moat::l4 {

enum class Protocol : uint8_t { kTcp, kUdp };
// How a packet for a VIP reaches its backend. The three packet modes need
// the DPDK engine and a backend that answers the client directly (DSR);
// kProxy is the io_uring engine's socket proxy (the backend sees the proxy).
enum class Forwarding : uint8_t { kIpip, kGue, kDsr, kProxy };
// What happens to an existing flow whose backend left the pool or failed its
// health checks: a TCP reset to the client (UDP: dropped), or a silent drop.
enum class BackendDown : uint8_t { kReset, kDrop };

// One backend of a service, flattened for the packet path.
struct Backend {
  uint32_t id = 0;  // stable for the process life (same address = same id); flows keep it
  std::string key;  // "10.0.0.1:80", as in the pool
  uint8_t addr[16] = {};  // IPv4 in the first 4 bytes
  uint8_t ipVersion = 4;
  uint16_t port = 0;        // proxy mode connects here; packet modes keep the VIP port
  sockaddr_storage sa{};    // addr + port, for the socket engine
  socklen_t saLen = 0;
  bool inService = true;    // false: unhealthy or ejected -> its flows are reset or dropped
  bool acceptsNew = true;   // false also when drained or weight 0 (its flows stay)
};

struct Service {
  std::string name;
  Protocol protocol = Protocol::kTcp;
  uint8_t vip[16] = {};
  uint8_t ipVersion = 4;
  uint16_t port = 0;
  sockaddr_storage listen{};  // VIP + port (socket engine)
  socklen_t listenLen = 0;
  Forwarding forwarding = Forwarding::kIpip;
  uint16_t guePort = 6080;
  BackendDown onBackendDown = BackendDown::kReset;
  std::vector<Backend> backends;
  // Maglev table over backends accepting new flows: entries index
  // `backends`. Empty = no backend for new flows.
  std::vector<uint32_t> maglev;
  // Backend id -> index into `backends`, -1 when absent. Size: max id + 1.
  std::vector<int32_t> slotById;

  // The backend with stable id `id`, or null (removed). No allocation.
  const Backend* backendById(uint32_t id) const {
    if (id >= slotById.size() || slotById[id] < 0) return nullptr;
    return &backends[static_cast<size_t>(slotById[id])];
  }
};

// A prefix of a packet-level deny list.
struct DenyPrefix {
  uint8_t addr[16] = {};
  uint8_t ipVersion = 4;
  uint8_t length = 0;
  uint16_t country = 0;  // packed code (control/geo.h) when from l4.geoDeny; 0 = a CIDR
};

// Longest-prefix match over the deny prefixes, built on the control thread
// by the packet engine (rte_lpm / rte_lpm6 in dataplane/) and read by every
// lcore. match() answers 0 for no match, kDenyCidr for a denyCidrs prefix,
// else the packed country code. One virtual call per packet.
class PrefixLookup {
 public:
  static constexpr uint32_t kDenyCidr = 1;
  virtual ~PrefixLookup() = default;
  virtual uint32_t match4(const uint8_t addr[4]) const = 0;
  virtual uint32_t match6(const uint8_t addr[16]) const = 0;
};

// (VIP, protocol, port) -> index into Tables::services, for the packet
// engine's per-packet lookup.
struct VipKey {
  uint8_t addr[16] = {};
  uint16_t port = 0;  // host order
  uint8_t proto = 0;  // 6 or 17
  uint8_t ipVersion = 0;
};

struct Tables {
  std::vector<Service> services;
  // Sorted by (ipVersion, addr, proto, port); built by buildIndex().
  std::vector<std::pair<VipKey, uint32_t>> vipIndex;
  // Distinct VIP addresses (ipVersion, addr), sorted: ARP / NDP / ping.
  std::vector<VipKey> vipAddresses;
  // Socket engine, checked at accept / a new client's first datagram:
  CidrSet denyCidrs;  // l4.denyCidrs
  CidrSet denyGeo;    // every range of an l4.geoDeny country, as prefixes
  // Packet engine (rte_lpm / rte_lpm6): both lists as one set of prefixes.
  std::vector<DenyPrefix> denyPrefixes;
  // Built from denyPrefixes by the packet engine (SnapshotInputs::
  // makeDenyLookup); null on the socket engine and in tests without EAL,
  // where the CidrSets above answer instead.
  std::shared_ptr<const PrefixLookup> denyLookup;
  uint32_t mtu = 1500;
  uint8_t localIpv4[4] = {};
  uint8_t localIpv6[16] = {};
  bool hasLocalIpv6 = false;

  // Control side, after `services` is final: fills vipIndex and vipAddresses.
  void buildIndex();
  // Packet path: the service for a destination, or null. Binary search, no
  // allocation. `addr` holds 4 or 16 bytes per ipVersion.
  const Service* findService(const uint8_t* addr, uint8_t ipVersion, uint8_t proto,
                             uint16_t port) const;
  // True if `addr` is a VIP of any service (or proto/port).
  bool isVipAddress(const uint8_t* addr, uint8_t ipVersion) const;
};

}  // namespace moat::l4
