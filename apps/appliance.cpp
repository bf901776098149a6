#include "appliance.h"

#include "l4_engines.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>

#include "moat/waf/engine.h"

namespace moat::app {

int gLogLevel = 1;

namespace {

int levelRank(const char* level) {
  if (std::strcmp(level, "debug") == 0) return 0;
  if (std::strcmp(level, "info") == 0) return 1;
  if (std::strcmp(level, "warn") == 0) return 2;
  return 3;
}

int64_t monoMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

}  // namespace

void logLine(const char* level, const std::string& msg) {
  if (levelRank(level) < gLogLevel) return;
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  tm t;
  gmtime_r(&ts.tv_sec, &t);
  char buf[32];
  strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &t);
  std::fprintf(stderr, "%s moatd %s: %s\n", buf, level, msg.c_str());
  std::fflush(stderr);
}

std::shared_ptr<const waf::Engine> compileWaf(const control::WafConfig& w, bool* ok,
                                              std::vector<std::string>* errorsOut) {
  *ok = true;
  if (!w.enabled) return nullptr;
  waf::EngineOptions opt;
  if (!w.setup.empty()) opt.ruleFiles.push_back(w.setup);
  opt.ruleFiles.insert(opt.ruleFiles.end(), w.rules.begin(), w.rules.end());
  opt.preamble = waf::crsPreamble(static_cast<int>(w.paranoia), static_cast<int>(w.inboundThreshold),
                                  static_cast<int>(w.outboundThreshold));
  for (uint32_t id : w.disableRules) opt.extraDirectives += "SecRuleRemoveById " + std::to_string(id) + "\n";
  for (const auto& x : w.excludeTargets) {
    opt.extraDirectives += "SecRuleUpdateTargetById " + std::to_string(x.rule) + " \"!" + x.target + "\"\n";
  }
  opt.mode = w.detectOnly ? waf::EngineMode::kDetectionOnly : waf::EngineMode::kOn;
  opt.requestBodyLimit = w.requestBodyLimit;
  opt.bodyLimitAction = w.bodyLimitReject ? waf::BodyLimitAction::kReject : waf::BodyLimitAction::kProcessPartial;
  opt.unicodeMapPath = w.unicodeMap;
  opt.cacheDir = w.cacheDir;
  std::vector<std::string> errors, warnings;
  waf::CompileStats st;
  auto engine = waf::Engine::compile(opt, &errors, &warnings, &st);
  for (const auto& m : warnings) logLine("warn", "waf: " + m);
  if (!engine) {
    for (const auto& m : errors) logLine("error", "waf: " + m);
    if (errorsOut != nullptr) *errorsOut = errors;
    *ok = false;
    return nullptr;
  }
  char buf[256];
  std::snprintf(buf, sizeof(buf),
                "waf: %zu rules, %zu patterns in %zu Hyperscan groups, paranoia %u, %s; load %.0f ms, "
                "compile %.0f ms%s",
                st.rules, st.patternLinks, st.patternGroups, w.paranoia,
                w.detectOnly ? "detect only" : "blocking", st.loadMs, st.compileMs,
                st.cacheHit ? " (cache hit)" : "");
  logLine("info", buf);
  return engine;
}

l7::WorkerReport sumReports(const std::vector<std::unique_ptr<l7::Worker>>& workers) {
  l7::WorkerReport total;
  std::vector<std::vector<ratelimit::TopKeys::Item>> parts;
  for (const auto& w : workers) {
    l7::WorkerReport r = w->report();
    total.counters += r.counters;
    total.latency += r.latency;
    total.switchLagMaxUs = std::max(total.switchLagMaxUs, r.switchLagMaxUs);
    total.configVersion = std::max(total.configVersion, r.configVersion);
    auto addNamed = [](std::map<std::string, l7::NamedCounters>& to, const std::map<std::string, l7::NamedCounters>& from) {
      for (const auto& [k, v] : from) {
        to[k].requests += v.requests;
        to[k].errors += v.errors;
      }
    };
    addNamed(total.listeners, r.listeners);
    addNamed(total.routes, r.routes);
    addNamed(total.backends, r.backends);
    for (const auto& [k, v] : r.rateLimitRules) {
      total.rateLimitRules[k].checked += v.checked;
      total.rateLimitRules[k].limited += v.limited;
    }
    for (const auto& [k, v] : r.geoBlocked) total.geoBlocked[k] += v;
    for (const auto& [k, v] : r.wafRules) total.wafRules[k] += v;
    parts.push_back(r.topOffenders);
  }
  total.topOffenders = ratelimit::TopKeys::merge(parts, 20);
  return total;
}

std::vector<control::ConfigError> restartOnlyChanges(const control::Config& a, const control::Config& b) {
  std::vector<control::ConfigError> out;
  if (a.workers != b.workers) out.push_back({"workers", "changes only on restart"});
  if (a.listeners.size() != b.listeners.size()) {
    out.push_back({"listeners", "listeners cannot be added or removed without a restart"});
  } else {
    for (size_t i = 0; i < a.listeners.size(); ++i) {
      const auto& x = a.listeners[i];
      const auto& y = b.listeners[i];
      if (x.name != y.name || x.address != y.address || x.port != y.port || x.protocol != y.protocol ||
          x.proxyProtocol != y.proxyProtocol) {
        out.push_back({"listeners[" + std::to_string(i) + "]",
                       "name, address, port, protocol and proxyProtocol change only on restart"});
      }
    }
  }
  if (a.rateLimit.maxKeys != b.rateLimit.maxKeys) {
    out.push_back({"rateLimit.maxKeys", "changes only on restart (the table is sized at start)"});
  }
  if (a.waf.auditLog != b.waf.auditLog) out.push_back({"waf.auditLog", "changes only on restart"});
  if (a.logging.accessLog != b.logging.accessLog) out.push_back({"logging.accessLog", "changes only on restart"});
  // L4: the engine, its ports and lcores, and table sizes are set up once.
  if (a.l4.engine != b.l4.engine) out.push_back({"l4.engine", "changes only on restart"});
  if (!(a.l4.dpdk == b.l4.dpdk)) out.push_back({"l4.dpdk", "changes only on restart (EAL, ports, lcores)"});
  // Each worker's flow table and SYN limiter are built once, at start.
  if (!(a.l4.flows == b.l4.flows)) out.push_back({"l4.flows", "changes only on restart (tables are sized at start)"});
  if (!(a.l4.synLimit == b.l4.synLimit)) out.push_back({"l4.synLimit", "changes only on restart"});
  // The socket engine listens on each proxied VIP: that set is fixed at start.
  if (a.l4.engine == control::L4Engine::kUring) {
    auto endpoints = [](const control::Config& c) {
      std::vector<std::string> v;
      for (const auto& s : c.l4.services) {
        v.push_back(std::string(control::toString(s.protocol)) + "/" + s.address + "/" + std::to_string(s.port));
      }
      std::sort(v.begin(), v.end());
      return v;
    };
    if (endpoints(a) != endpoints(b)) {
      out.push_back({"l4.services", "on the uring engine, VIP addresses, ports and protocols change only on restart "
                                    "(backends, weights and deny lists change live)"});
    }
  }
  return out;
}

Appliance::Appliance(const Options& o, control::Config initial, uint64_t initialVersion,
                     std::shared_ptr<const waf::Engine> waf, l7::TlsSet tls,
                     std::shared_ptr<const l7::TicketSecret> tickets)
    : opts_(o),
      config_(std::move(initial)),
      version_(initialVersion),
      waf_(std::move(waf)),
      tls_(std::move(tls)),
      tickets_(std::move(tickets)),
      publisher_(o.workers + o.l4Workers) {
  startedUnix_ = static_cast<int64_t>(time(nullptr));
  startedMonoMs_ = monoMs();
}

control::PassiveHealth* Appliance::passiveSlot(const std::string& backendKey) {
  auto& slot = passive_[backendKey];
  if (!slot) slot = std::make_unique<control::PassiveHealth>();
  return slot.get();
}

std::vector<std::string> Appliance::outOfService() const {
  std::vector<std::string> out;
  for (const auto& st : health_.statuses()) {
    if (st.state == control::HealthState::kUnhealthy) out.push_back(st.pool + "/" + st.backendKey);
  }
  for (const auto& [id, e] : ejections_) {
    if (e.ejected) out.push_back(id);
  }
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

bool Appliance::publishCurrent(std::string& err) {
  control::SnapshotInputs in;
  in.configVersion = version_;
  in.waf = waf_;
  in.tlsListeners = tls_.listeners;
  in.tlsPools = tls_.pools;
  in.outOfService = outOfService();
  in.passiveSlot = [this](const std::string& k) { return passiveSlot(k); };
  in.geo = geoDb_;
  in.makeDenyLookup = makeDenyLookup;
  try {
    publisher_.publish(control::buildSnapshot(config_, ++publishSeq_, in));
  } catch (const std::exception& e) {
    err = e.what();
    return false;
  }
  lastOutOfService_ = in.outOfService;
  return true;
}

void Appliance::setHealthTargets() {
  std::vector<control::HealthTarget> targets;
  for (const auto& p : config_.pools) {
    if (!p.healthCheck.enabled) continue;
    for (const auto& b : p.backends) {
      control::HealthTarget t;
      t.pool = p.name;
      if (!control::toSocketAddress(b.address, b.port, t.addr, t.addrLen)) continue;
      t.backendKey = control::backendKey(b);
      t.check = p.healthCheck;
      t.tls = p.tls;
      targets.push_back(std::move(t));
    }
  }
  health_.setTargets(std::move(targets));
}

void Appliance::rebuildGeo() {
  geoWatch_.reset();
  geo_.reset();
  geoDb_.reset();
  if (config_.geo.sources.empty()) return;
  geo_ = std::make_unique<control::GeoLoader>(config_.geo.sources);
  std::vector<std::string> errors;
  geoDb_ = geo_->reload(&errors);
  ++geoReloads_;
  for (const auto& e : errors) logLine("error", "geo: " + e);
  geoWatch_ = std::make_unique<control::GeoWatcher>(config_.geo.sources);
  if (geoDb_) logLine("info", "geo: " + std::to_string(geoDb_->entries()) + " ranges loaded");
}

void Appliance::reloadGeo() {
  if (!geo_) return;
  std::vector<std::string> errors;
  auto next = geo_->reload(&errors);
  ++geoReloads_;
  for (const auto& e : errors) logLine("error", "geo: " + e + " (previous data of this source stays in force)");
  if (next != geoDb_) {
    geoDb_ = next;
    std::string err;
    if (!publishCurrent(err)) logLine("error", "geo: publishing failed: " + err);
    else logLine("info", "geo: reloaded, " + std::to_string(geoDb_ ? geoDb_->entries() : 0) + " ranges");
  }
}

bool Appliance::start(std::string& err) {
  rebuildGeo();
  setHealthTargets();
  if (!publishCurrent(err)) return false;
  return true;
}

std::vector<control::ConfigError> Appliance::check(const control::Config& next) {
  std::vector<control::ConfigError> errors = restartOnlyChanges(config_, next);
  if (!errors.empty()) return errors;
  if (!(next.waf == config_.waf)) {
    bool ok = true;
    std::vector<std::string> wafErrors;
    compileWaf(next.waf, &ok, &wafErrors);
    if (!ok) {
      for (auto& e : wafErrors) errors.push_back({"waf", e});
      if (wafErrors.empty()) errors.push_back({"waf", "rules did not compile"});
    }
  }
  std::vector<l7::TlsBuildError> tlsErrors;
  l7::buildTls(next, 1, tickets_, &tlsErrors);
  for (const auto& e : tlsErrors) errors.push_back({e.path, e.message});
  return errors;
}

ApplyResult Appliance::apply(const control::Config& next, const std::string& source, const std::string& summary) {
  ApplyResult r;
  r.errors = restartOnlyChanges(config_, next);
  if (!r.errors.empty()) {
    r.status = 409;
    r.error = "the change needs a restart";
    ++rejectedConfigs_;
    return r;
  }
  // The rule set is compiled again only when the waf section changed;
  // workers go on with the previous snapshot meanwhile.
  std::shared_ptr<const waf::Engine> nextWaf = waf_;
  if (!(next.waf == config_.waf)) {
    bool ok = true;
    std::vector<std::string> wafErrors;
    nextWaf = compileWaf(next.waf, &ok, &wafErrors);
    if (!ok) {
      r.status = 400;
      r.error = "waf rules did not compile";
      for (auto& e : wafErrors) r.errors.push_back({"waf", e});
      ++rejectedConfigs_;
      return r;
    }
  }
  // Certificates and keys are read again on every apply.
  std::vector<l7::TlsBuildError> tlsErrors;
  l7::TlsSet nextTls = l7::buildTls(next, opts_.workers, tickets_, &tlsErrors);
  if (!tlsErrors.empty()) {
    r.status = 400;
    r.error = "TLS files rejected";
    for (const auto& e : tlsErrors) r.errors.push_back({e.path, e.message});
    ++rejectedConfigs_;
    return r;
  }
  // Commit: keep the old state to restore if publication fails.
  control::Config prevConfig = config_;
  auto prevWaf = waf_;
  l7::TlsSet prevTls = tls_;
  bool geoChanged = !(next.geo == config_.geo);
  config_ = next;
  waf_ = nextWaf;
  tls_ = std::move(nextTls);
  ++version_;
  if (geoChanged) rebuildGeo();
  std::string err;
  if (!publishCurrent(err)) {
    config_ = prevConfig;
    waf_ = prevWaf;
    tls_ = std::move(prevTls);
    --version_;
    if (geoChanged) rebuildGeo();
    r.status = 400;
    r.error = err;
    r.errors.push_back({"", err});
    ++rejectedConfigs_;
    return r;
  }
  setHealthTargets();
  applyStaticNeighbors(*this, config_);
  gLogLevel = static_cast<int>(config_.logging.level);
  if (opts_.store != nullptr) {
    std::string serr;
    if (!opts_.store->save(version_, source, summary, config_, serr)) {
      logLine("error", "state: config version " + std::to_string(version_) + " not persisted: " + serr);
    }
  }
  logLine("info", "config version " + std::to_string(version_) + " applied (" + source + ": " + summary + ")");
  r.ok = true;
  r.version = version_;
  return r;
}

std::string Appliance::backendHealth(const std::string& pool, const std::string& key, std::string* lastCheck) const {
  auto it = ejections_.find(pool + "/" + key);
  bool ejected = it != ejections_.end() && it->second.ejected;
  std::string state = "unknown";
  for (const auto& st : health_.statuses()) {
    if (st.pool == pool && st.backendKey == key) {
      state = control::toString(st.state);
      if (lastCheck != nullptr) *lastCheck = st.lastResult;
    }
  }
  if (ejected) return "ejected";
  return state;
}

std::vector<int> Appliance::wakeFds() const {
  std::vector<int> fds{health_.notifyFd()};
  if (geoWatch_ && geoWatch_->fd() >= 0) fds.push_back(geoWatch_->fd());
  return fds;
}

void Appliance::tick() {
  const int64_t now = monoMs();
  publisher_.reclaim();
  // Active health: log transitions.
  for (const auto& t : health_.takeTransitions()) {
    ++healthTransitions_;
    logLine(t.to == control::HealthState::kUnhealthy ? "warn" : "info",
            "health: pool " + t.pool + " backend " + t.backendKey + " " + control::toString(t.from) + " -> " +
                control::toString(t.to) + " (" + t.reason + ")");
  }
  // Passive health (outlier detection).
  for (const auto& p : config_.pools) {
    if (!p.outlierDetection.enabled) continue;
    const auto& od = p.outlierDetection;
    size_t ejectedNow = 0;
    for (const auto& b : p.backends) {
      const std::string key = control::backendKey(b);
      auto it = ejections_.find(p.name + "/" + key);
      if (it != ejections_.end() && it->second.ejected) ++ejectedNow;
    }
    const size_t maxEjected =
        od.maxEjectPercent == 0 ? 0 : std::max<size_t>(1, p.backends.size() * od.maxEjectPercent / 100);
    for (const auto& b : p.backends) {
      const std::string key = control::backendKey(b);
      const std::string id = p.name + "/" + key;
      Ejection& e = ejections_[id];
      control::PassiveHealth* slot = passiveSlot(key);
      if (e.ejected) {
        if (now >= e.untilMs) {
          e.ejected = false;
          --ejectedNow;
          slot->consecutiveFailures.store(0, std::memory_order_relaxed);
          ++healthTransitions_;
          logLine("info", "outlier: pool " + p.name + " backend " + key + " back in service after ejection");
        }
        continue;
      }
      // A backend that stayed in for a full max ejection time starts its
      // back-off from the base again.
      if (e.times > 0 && now - e.lastEjectMs > static_cast<int64_t>(od.maxEjectMs) * 2) e.times = 0;
      uint32_t streak = slot->consecutiveFailures.load(std::memory_order_relaxed);
      if (streak < od.consecutiveFailures || ejectedNow >= maxEjected) continue;
      uint64_t ms = od.baseEjectMs;
      for (uint32_t i = 0; i < e.times && ms < od.maxEjectMs; ++i) ms *= 2;
      ms = std::min<uint64_t>(ms, od.maxEjectMs);
      e.ejected = true;
      e.untilMs = now + static_cast<int64_t>(ms);
      e.lastEjectMs = now;
      ++e.times;
      ++e.total;
      ++ejectedNow;
      ++healthTransitions_;
      slot->consecutiveFailures.store(0, std::memory_order_relaxed);
      logLine("warn", "outlier: pool " + p.name + " backend " + key + " ejected for " + std::to_string(ms) +
                          " ms after " + std::to_string(streak) + " failures in a row");
    }
  }
  if (outOfService() != lastOutOfService_) {
    std::string err;
    if (!publishCurrent(err)) logLine("error", "health: publishing failed: " + err);
  }
  // Geo files: reload ~200 ms after the last change (editors write in steps).
  if (geoWatch_ && geoWatch_->pending()) geoPendingMs_ = now + 200;
  if (geoPendingMs_ != 0 && now >= geoPendingMs_) {
    geoPendingMs_ = 0;
    reloadGeo();
  }
  // Stapled OCSP responses follow their files (about once a second).
  if (now >= nextOcspMs_) {
    nextOcspMs_ = now + 1000;
    for (const auto& l : tls_.listeners) {
      if (!l) continue;
      std::vector<std::string> warnings;
      if (l->refreshOcsp(&warnings) > 0) logLine("info", "ocsp: stapling a new response");
      for (const auto& w : warnings) logLine("warn", w);
    }
  }
}

}  // namespace moat::app
