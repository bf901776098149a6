#include "moat/l4/service.h"

#include <algorithm>
#include <cstring>

namespace moat::l4 {

namespace {

int compareAddr(const VipKey& a, const uint8_t* addr, uint8_t ipVersion) {
  if (a.ipVersion != ipVersion) return a.ipVersion < ipVersion ? -1 : 1;
  return std::memcmp(a.addr, addr, ipVersion == 4 ? 4 : 16);
}

int compareKey(const VipKey& a, const uint8_t* addr, uint8_t ipVersion, uint8_t proto, uint16_t port) {
  if (int c = compareAddr(a, addr, ipVersion); c != 0) return c;
  if (a.proto != proto) return a.proto < proto ? -1 : 1;
  if (a.port != port) return a.port < port ? -1 : 1;
  return 0;
}

}  // namespace

void Tables::buildIndex() {
  vipIndex.clear();
  vipAddresses.clear();
  for (uint32_t i = 0; i < services.size(); ++i) {
    const Service& s = services[i];
    VipKey k;
    std::memcpy(k.addr, s.vip, 16);
    k.port = s.port;
    k.proto = s.protocol == Protocol::kTcp ? 6 : 17;
    k.ipVersion = s.ipVersion;
    vipIndex.emplace_back(k, i);
    VipKey a = k;
    a.port = 0;
    a.proto = 0;
    vipAddresses.push_back(a);
  }
  auto less = [](const VipKey& a, const VipKey& b) {
    return compareKey(a, b.addr, b.ipVersion, b.proto, b.port) < 0;
  };
  std::sort(vipIndex.begin(), vipIndex.end(),
            [&](const auto& a, const auto& b) { return less(a.first, b.first); });
  std::sort(vipAddresses.begin(), vipAddresses.end(), less);
  vipAddresses.erase(std::unique(vipAddresses.begin(), vipAddresses.end(),
                                 [](const VipKey& a, const VipKey& b) {
                                   return a.ipVersion == b.ipVersion && std::memcmp(a.addr, b.addr, 16) == 0;
                                 }),
                     vipAddresses.end());
}

const Service* Tables::findService(const uint8_t* addr, uint8_t ipVersion, uint8_t proto,
                                   uint16_t port) const {
  size_t lo = 0, hi = vipIndex.size();
  while (lo < hi) {
    const size_t mid = (lo + hi) / 2;
    const int c = compareKey(vipIndex[mid].first, addr, ipVersion, proto, port);
    if (c == 0) return &services[vipIndex[mid].second];
    if (c < 0) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return nullptr;
}

bool Tables::isVipAddress(const uint8_t* addr, uint8_t ipVersion) const {
  size_t lo = 0, hi = vipAddresses.size();
  while (lo < hi) {
    const size_t mid = (lo + hi) / 2;
    const int c = compareAddr(vipAddresses[mid], addr, ipVersion);
    if (c == 0) return true;
    if (c < 0) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return false;
}

}  // namespace moat::l4
