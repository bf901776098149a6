// The running appliance as the control thread sees it: the applied config
// and its version history, the compiled WAF, TLS contexts, health and geo
// state, the workers, and the one path every change goes through (apply).
//
// Control thread only (moatd's main thread): nothing here is locked, and
// nothing here runs on a worker. Workers see the result only through
// published snapshots.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "moat/control/config.h"
#include "moat/control/geo.h"
#include "moat/control/health.h"
#include "moat/control/snapshot.h"
#include "moat/control/state_store.h"
#include "moat/dataplane/packet_engine.h"
#include "moat/l4/neighbors.h"
#include "moat/l4/processor.h"
#include "moat/l4/sock_proxy.h"
#include "moat/l7/proxy.h"
#include "moat/l7/tls.h"
#include "moat/ratelimit/limiter.h"

namespace moat::waf {
class Engine;
}

namespace moat::app {

void logLine(const char* level, const std::string& msg);
extern int gLogLevel;

struct ApplyResult {
  bool ok = false;
  int status = 200;  // HTTP status for the API: 400 invalid, 409 needs a restart
  std::string error;
  std::vector<control::ConfigError> errors;
  uint64_t version = 0;
};

// Outlier-detection state of one backend of one pool.
struct Ejection {
  bool ejected = false;
  int64_t untilMs = 0;
  uint32_t times = 0;         // ejections in the current streak (back-off exponent)
  int64_t lastEjectMs = 0;
  uint64_t total = 0;         // ejections ever
};

class Appliance {
 public:
  struct Options {
    std::string configPath;  // "" = embedded default
    size_t workers = 1;
    size_t l4Workers = 0;  // snapshot readers past the L7 workers (L4 engines' lcores / threads)
    control::StateStore* store = nullptr;  // null: no persistence
  };

  Appliance(const Options& o, control::Config initial, uint64_t initialVersion,
            std::shared_ptr<const waf::Engine> waf, l7::TlsSet tls,
            std::shared_ptr<const l7::TicketSecret> tickets);

  // Validates, compiles (WAF, TLS, geo), publishes and persists `next` as
  // the next version. A rejected config changes nothing. `source` is
  // "startup", "file", "api" or "rollback"; `summary` says what changed.
  ApplyResult apply(const control::Config& next, const std::string& source, const std::string& summary);

  // Structural checks apply() would make on top of parseConfig (restart-only
  // changes, WAF rules, TLS files), without changing anything.
  std::vector<control::ConfigError> check(const control::Config& next);

  // Publishes the first snapshot (version already set). False on failure.
  bool start(std::string& err);

  // Every ~100 ms: health transitions, outlier ejections, geo file changes,
  // OCSP refresh, snapshot reclamation.
  void tick();
  // Descriptors tick() wants woken for (health notify, geo inotify).
  std::vector<int> wakeFds() const;

  // Reloads geo sources now; returns what status() shows.
  void reloadGeo();

  const control::Config& config() const { return config_; }
  uint64_t version() const { return version_; }
  control::SnapshotPublisher& publisher() { return publisher_; }
  control::StateStore* store() { return opts_.store; }
  const control::GeoLoader* geo() const { return geo_.get(); }
  control::HealthChecker& health() { return health_; }
  const std::map<std::string, Ejection>& ejections() const { return ejections_; }
  int64_t startedUnix() const { return startedUnix_; }
  int64_t startedMonoMs() const { return startedMonoMs_; }
  size_t workerCount() const { return opts_.workers; }
  bool ready() const { return ready_; }
  void setReady(bool r) { ready_ = r; }
  uint64_t healthTransitions() const { return healthTransitions_; }
  uint64_t rejectedConfigs() const { return rejectedConfigs_; }
  uint64_t geoReloads() const { return geoReloads_; }

  // Health of one backend of a pool as the API shows it.
  std::string backendHealth(const std::string& pool, const std::string& key, std::string* lastCheck) const;

  std::vector<std::unique_ptr<l7::Worker>> workers;
  std::unique_ptr<ratelimit::Table> rateTable;
  // L4: one of the two engines runs (l4.engine). Owned here so the API and
  // /metrics can read their reports; started and stopped by moatd.
  std::unique_ptr<l4::NeighborTable> neighbors;  // shared by the lcores; outlives the engine
  std::vector<std::unique_ptr<l4::SockWorker>> sockWorkers;
  std::unique_ptr<dataplane::PacketEngine> packetEngine;
  std::vector<l4::Processor*> processors;  // one per lcore, owned by packetEngine
  // Set by moatd on the packet engine: builds the LPM deny tables.
  std::function<std::shared_ptr<const l4::PrefixLookup>(const std::vector<l4::DenyPrefix>&)> makeDenyLookup;

 private:
  bool publishCurrent(std::string& err);
  control::PassiveHealth* passiveSlot(const std::string& backendKey);
  void setHealthTargets();
  void rebuildGeo();
  std::vector<std::string> outOfService() const;

  Options opts_;
  control::Config config_;
  uint64_t version_ = 0;
  uint64_t publishSeq_ = 0;
  std::shared_ptr<const waf::Engine> waf_;
  l7::TlsSet tls_;
  std::shared_ptr<const l7::TicketSecret> tickets_;
  control::SnapshotPublisher publisher_;
  control::HealthChecker health_;
  std::unique_ptr<control::GeoLoader> geo_;
  std::unique_ptr<control::GeoWatcher> geoWatch_;
  std::shared_ptr<const control::GeoDb> geoDb_;
  int64_t geoPendingMs_ = 0;  // debounce: reload at this time
  std::map<std::string, std::unique_ptr<control::PassiveHealth>> passive_;  // by backend key; never erased
  std::map<std::string, Ejection> ejections_;  // by "pool/key"
  std::vector<std::string> lastOutOfService_;
  int64_t startedUnix_ = 0;
  int64_t startedMonoMs_ = 0;
  int64_t nextOcspMs_ = 0;
  bool ready_ = false;
  uint64_t healthTransitions_ = 0;
  uint64_t rejectedConfigs_ = 0;
  uint64_t geoReloads_ = 0;
};

// Whether two configs differ only in what a running moatd can change.
// Returns the first restart-only difference as an error, or nothing.
std::vector<control::ConfigError> restartOnlyChanges(const control::Config& a, const control::Config& b);

// Every worker's counters summed (top offenders merged).
l7::WorkerReport sumReports(const std::vector<std::unique_ptr<l7::Worker>>& workers);

// Compiles the waf section; null with errors when it fails or when the WAF
// is off (then *ok stays true).
std::shared_ptr<const waf::Engine> compileWaf(const control::WafConfig& w, bool* ok,
                                              std::vector<std::string>* errors = nullptr);

}  // namespace moat::app
