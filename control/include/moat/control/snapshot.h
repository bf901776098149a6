// The runtime form of a Config, and its publication to workers.
//
// A Snapshot is built once on the control thread (allocates, resolves
// addresses, fills Maglev tables), then never changes. Workers read the
// current one through SnapshotPublisher::acquire() once per loop turn and
// keep no pointer into it past that turn; an old snapshot is freed only after
// every worker has acquired a newer one (quiescent-state based reclamation,
// as DPDK's rte_rcu_qsbr).
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "moat/control/config.h"
#include "moat/l4/cidr.h"
#include "moat/l4/service.h"
#include "moat/ratelimit/rules.h"

namespace moat::waf {
class Engine;  // moat/waf/engine.h; moat_control does not link the WAF
}
namespace moat::l7 {
class TlsListener;  // moat/l7/tls.h; built by the app with the l7 library
class TlsUpstream;
}

namespace moat::control {

class GeoDb;  // moat/control/geo.h

// Passive health of one backend (outlier detection), shared by every worker
// and the control thread. Workers write it after each response that went to
// the backend (relaxed atomics; the success path only reads unless a failure
// streak is open, so the line stays shared in the common case); the control
// thread reads it about every 100 ms and ejects the backend when the streak
// reaches outlierDetection.consecutiveFailures. Owned by the control side's
// registry for the life of the process (never freed while workers run), so a
// worker may keep the pointer past the snapshot that gave it.
struct alignas(64) PassiveHealth {
  std::atomic<uint32_t> consecutiveFailures{0};  // connect errors, timeouts and 5xx in a row
  std::atomic<uint64_t> failures{0};              // all failures seen (counter)
};

// What a snapshot is built from besides the config: runtime state the
// control thread owns (compiled WAF, TLS contexts, health, geo data).
struct SnapshotInputs {
  uint64_t configVersion = 0;  // 0: same as the publication version
  std::shared_ptr<const waf::Engine> waf;
  std::vector<std::shared_ptr<const l7::TlsListener>> tlsListeners;
  std::vector<std::shared_ptr<const l7::TlsUpstream>> tlsPools;
  // "pool/backendKey" of backends out of service (unhealthy or ejected):
  // they take no new requests, like drained ones.
  std::vector<std::string> outOfService;
  // Passive-health slot of a backend (by backend key, shared by every pool
  // listing it); null = none. Asked only for pools with outlier detection.
  std::function<PassiveHealth*(const std::string&)> passiveSlot;
  std::shared_ptr<const GeoDb> geo;
  // The packet engine's LPM tables for l4 deny prefixes; null = none (the
  // CidrSets in l4::Tables answer instead).
  std::function<std::shared_ptr<const l4::PrefixLookup>(const std::vector<l4::DenyPrefix>&)>
      makeDenyLookup;
};

// Fills `out` from an IPv4 or IPv6 literal (as validated by parseConfig) and
// a port. Returns false if the literal does not parse. No allocation.
bool toSocketAddress(const std::string& address, uint16_t port, sockaddr_storage& out,
                     socklen_t& len);

// A backend's identity across snapshots, health checks, counters and the
// admin API: "10.0.0.1:80", "[fd00::1]:80" (the address as configured).
std::string backendKey(const BackendConfig& b);

// A small number that names a backend key for the life of the process (ids
// are never reused), so per-worker flow tables can remember a flow's backend
// across snapshots. Control side: takes a lock, allocates.
uint32_t stableBackendId(const std::string& key);

struct BackendRuntime {
  std::string key;  // "127.0.0.1:8081" / "[::1]:8081": identity across snapshots
  sockaddr_storage addr{};
  socklen_t addrLen = 0;
  uint32_t weight = 1;        // effective: 0 when drained or out of service
  uint32_t configWeight = 1;  // as configured
  bool drained = false;
  bool outOfService = false;  // health checks or outlier detection took it out
  PassiveHealth* passive = nullptr;  // null: the pool has no outlier detection
};

// Geo policy of one listener, compiled: CIDR lists sealed, countries sorted.
struct ListenerGeoRuntime {
  bool enabled = false;
  bool allowMode = false;           // only `countries` pass
  std::vector<uint16_t> countries;  // packed codes (see geo.h), sorted
  l4::CidrSet allow, deny;
};

struct PoolRuntime {
  std::string name;
  BalanceAlgorithm balance = BalanceAlgorithm::kRoundRobin;
  std::vector<BackendRuntime> backends;
  std::vector<uint32_t> maglevTable;  // backend indexes; kMaglev only
  std::vector<uint32_t> rrSequence;   // smooth weighted round-robin order
};

struct RouteRuntime {
  std::string name;        // "host/prefix" for counters and logs
  std::string host;        // lowercase; empty = any host
  std::string pathPrefix;  // starts with '/'
  uint32_t pool = 0;       // index into Snapshot::pools
  bool waf = true;         // inspect with Snapshot::waf (when set)
};

struct Snapshot {
  uint64_t version = 0;        // publication sequence: grows with every publish
  uint64_t configVersion = 0;  // the config version it runs (health changes keep it)
  uint64_t builtNs = 0;        // CLOCK_MONOTONIC when built (just before publication)
  Config config;
  std::vector<PoolRuntime> pools;
  std::vector<RouteRuntime> routes;  // exact hosts first, then longest prefix first
  ratelimit::Rules rateLimit;
  // The compiled WAF rule set, null when waf.enabled is false. Compiled by
  // the control thread; reused across reloads that leave the waf section
  // unchanged. Immutable, read by every worker.
  std::shared_ptr<const waf::Engine> waf;
  // TLS contexts per listener (null for http) and per pool (null without
  // tls), built on the control thread from this config's files: a reload
  // re-reads certificates and keys. Connections hold their own reference.
  std::vector<std::shared_ptr<const l7::TlsListener>> tlsListeners;
  std::vector<std::shared_ptr<const l7::TlsUpstream>> tlsPools;
  // Country data (null without geo.sources) and each listener's policy.
  std::shared_ptr<const GeoDb> geo;
  std::vector<ListenerGeoRuntime> listenerGeo;
  // L4 services (both engines).
  l4::Tables l4;

  // Route for a request. `host` may carry a port and any case; no
  // allocation. Returns null when nothing matches.
  const RouteRuntime* matchRoute(std::string_view host, std::string_view path) const;
};

// The rate-limit rules of a validated config (also used by tests).
ratelimit::Rules buildRateLimitRules(const Config& config);

// Builds the runtime snapshot from a validated config. Throws
// std::runtime_error only for conditions validation cannot see.
std::unique_ptr<const Snapshot> buildSnapshot(
    const Config& config, uint64_t version, std::shared_ptr<const waf::Engine> waf = nullptr,
    std::vector<std::shared_ptr<const l7::TlsListener>> tlsListeners = {},
    std::vector<std::shared_ptr<const l7::TlsUpstream>> tlsPools = {});
std::unique_ptr<const Snapshot> buildSnapshot(const Config& config, uint64_t version,
                                              const SnapshotInputs& inputs);

class SnapshotPublisher {
 public:
  explicit SnapshotPublisher(size_t workers);
  ~SnapshotPublisher();

  // Control thread. Makes `next` current and retires the previous one.
  // Wakes every registered worker so it picks the new snapshot up now.
  void publish(std::unique_ptr<const Snapshot> next);
  // Control thread. Frees retired snapshots that no worker can still use;
  // returns how many remain retired.
  size_t reclaim();
  // Control thread. Current snapshot; valid until the next publish().
  const Snapshot* current() const { return current_.load(std::memory_order_acquire); }

  // Worker thread `worker`, once per loop turn: returns the snapshot to use
  // for this turn and records that every older one is no longer in use.
  const Snapshot* acquire(size_t worker) {
    const Snapshot* s = current_.load(std::memory_order_acquire);
    seen_[worker].version.store(s->version, std::memory_order_release);
    return s;
  }
  // Worker thread: the worker has exited and holds nothing.
  void goOffline(size_t worker) {
    seen_[worker].version.store(UINT64_MAX, std::memory_order_release);
  }
  // Worker start-up: an eventfd that publish() writes to.
  void registerWakeFd(size_t worker, int eventFd);

  size_t workers() const { return workers_; }

 private:
  struct alignas(64) Seen {
    std::atomic<uint64_t> version{0};
    std::atomic<int> wakeFd{-1};
  };
  size_t workers_;
  std::unique_ptr<Seen[]> seen_;
  std::atomic<const Snapshot*> current_{nullptr};
  std::mutex mu_;  // control side only
  std::vector<std::unique_ptr<const Snapshot>> owned_;  // current + retired
};

}  // namespace moat::control
