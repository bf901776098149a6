// rte_lpm / rte_lpm6 behind dataplane::LpmTable (see packet_engine.h).
//
// Built on the control thread (rte_*_create allocates from EAL memory),
// immutable once built, read by every lcore; freed on the control thread
// when the snapshot holding it is reclaimed. Lookups are DPDK's: one or two
// table reads for IPv4 (DIR-24-8), a few for IPv6.
#include <rte_errno.h>
#include <rte_lpm.h>
#include <rte_lpm6.h>
#include <rte_memory.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <string>

#include "moat/dataplane/packet_engine.h"

namespace moat::dataplane {

struct LpmTable::Impl {
  rte_lpm* v4 = nullptr;
  rte_lpm6* v6 = nullptr;
  size_t size = 0;
};

namespace {
std::atomic<uint32_t> gLpmSeq{0};
}

std::unique_ptr<LpmTable> LpmTable::create(const std::vector<LpmPrefix>& prefixes, std::string& err) {
  if (!ealReady()) {
    err = "the EAL is not initialised (LPM tables live in its memory)";
    return nullptr;
  }
  auto impl = std::make_unique<Impl>();
  uint32_t n4 = 0, n6 = 0, tbl8v4 = 0, tbl8v6 = 0;
  for (const LpmPrefix& p : prefixes) {
    // Next-hop widths: rte_lpm keeps 24 bits, rte_lpm6 only 21 (it would
    // silently truncate a larger value).
    const uint32_t limit = p.ipVersion == 4 ? (1u << 24) : (1u << 21);
    if (p.value == 0 || p.value >= limit) {
      err = p.ipVersion == 4 ? "IPv4 prefix value must be 1..2^24-1"
                             : "IPv6 prefix value must be 1..2^21-1";
      return nullptr;
    }
    if (p.ipVersion == 4) {
      ++n4;
      if (p.length > 24) ++tbl8v4;
    } else {
      ++n6;
      tbl8v6 += p.length > 24 ? (p.length - 24 + 7) / 8 : 0;
    }
  }
  const uint32_t seq = gLpmSeq.fetch_add(1);
  if (n4 > 0) {
    rte_lpm_config cfg{};
    cfg.max_rules = std::max<uint32_t>(n4, 16);
    cfg.number_tbl8s = std::max<uint32_t>(tbl8v4 + 16, 256);
    const std::string name = "moat_deny4_" + std::to_string(seq);
    impl->v4 = rte_lpm_create(name.c_str(), SOCKET_ID_ANY, &cfg);
    if (impl->v4 == nullptr) {
      err = "rte_lpm_create: " + std::string(rte_strerror(rte_errno));
      return nullptr;
    }
  }
  if (n6 > 0) {
    rte_lpm6_config cfg{};
    cfg.max_rules = std::max<uint32_t>(n6, 16);
    cfg.number_tbl8s = std::max<uint32_t>(tbl8v6 + 64, 256);
    const std::string name = "moat_deny6_" + std::to_string(seq);
    impl->v6 = rte_lpm6_create(name.c_str(), SOCKET_ID_ANY, &cfg);
    if (impl->v6 == nullptr) {
      err = "rte_lpm6_create: " + std::string(rte_strerror(rte_errno));
      if (impl->v4 != nullptr) rte_lpm_free(impl->v4);
      return nullptr;
    }
  }
  std::unique_ptr<LpmTable> t(new LpmTable(impl.release()));
  for (const LpmPrefix& p : prefixes) {
    int rc;
    if (p.ipVersion == 4) {
      const uint32_t ip = (uint32_t{p.addr[0]} << 24) | (uint32_t{p.addr[1]} << 16) |
                          (uint32_t{p.addr[2]} << 8) | p.addr[3];
      rc = rte_lpm_add(t->impl_->v4, ip, p.length == 0 ? 1 : p.length, p.value);
      // rte_lpm has no /0: two /1 halves cover everything.
      if (rc == 0 && p.length == 0) rc = rte_lpm_add(t->impl_->v4, 0x80000000u, 1, p.value);
    } else {
      rc = rte_lpm6_add(t->impl_->v6, p.addr, p.length == 0 ? 1 : p.length, p.value);
      if (rc == 0 && p.length == 0) {
        uint8_t upper[16] = {0x80};
        rc = rte_lpm6_add(t->impl_->v6, upper, 1, p.value);
      }
    }
    if (rc < 0) {
      err = "adding a deny prefix to the LPM table failed: " + std::string(rte_strerror(-rc));
      return nullptr;
    }
    ++t->impl_->size;
  }
  return t;
}

LpmTable::LpmTable(Impl* impl) : impl_(impl) {}

LpmTable::~LpmTable() {
  if (impl_->v4 != nullptr) rte_lpm_free(impl_->v4);
  if (impl_->v6 != nullptr) rte_lpm6_free(impl_->v6);
  delete impl_;
}

uint32_t LpmTable::match4(const uint8_t addr[4]) const {
  if (impl_->v4 == nullptr) return 0;
  const uint32_t ip = (uint32_t{addr[0]} << 24) | (uint32_t{addr[1]} << 16) |
                      (uint32_t{addr[2]} << 8) | addr[3];
  uint32_t hop = 0;
  return rte_lpm_lookup(impl_->v4, ip, &hop) == 0 ? hop : 0;
}

uint32_t LpmTable::match6(const uint8_t addr[16]) const {
  if (impl_->v6 == nullptr) return 0;
  uint32_t hop = 0;
  return rte_lpm6_lookup(impl_->v6, addr, &hop) == 0 ? hop : 0;
}

size_t LpmTable::size() const { return impl_->size; }

}  // namespace moat::dataplane
