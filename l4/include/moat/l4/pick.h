// Backend choice for a new flow, shared by both engines: the DPDK packet
// processor and the io_uring socket proxy call the same function with the
// same 5-tuple, so a client lands on the same backend whichever engine runs.
//
// Any thread; reads only the immutable Service; no allocation, no branches
// beyond the empty check. Cost: one hashFlow (~25 integer ops) and one
// array index.
#pragma once

#include <cstdint>

#include "moat/l4/flow_types.h"
#include "moat/l4/service.h"

namespace moat::l4 {

// The backend for a flow whose key hashes to `hash` (= hashFlow(key)), or
// null when the service has no backend accepting new flows.
inline const Backend* pickBackendByHash(const Service& svc, uint64_t hash) {
  if (svc.maglev.empty()) return nullptr;
  const uint32_t idx = svc.maglev[hash % svc.maglev.size()];
  // The control plane builds maglev over `backends`: an index past the end
  // is a build bug; refuse the flow rather than read out of bounds.
  if (idx >= svc.backends.size()) return nullptr;
  return &svc.backends[idx];
}

// The backend for a NEW flow. `k` is the flow as the client sent it:
// FlowKey{client addr, VIP addr, client port, VIP port, proto (6/17),
// ipVersion}, ports in host order, the rest zero. Existing flows keep the
// backend they were given (flow tables), whatever this returns later.
inline const Backend* pickBackend(const Service& svc, const FlowKey& k) {
  return pickBackendByHash(svc, hashFlow(k));
}

}  // namespace moat::l4
