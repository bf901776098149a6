// moatd: the Moat appliance.
//
//   moatd                     run on the embedded default config
//   moatd --config FILE       run on FILE (SIGHUP re-reads it)
//   moatd --check FILE        validate FILE, print every error, exit
//   moatd --print-default-config
//
// Threads: the main thread owns configuration (load, validate, build and
// publish snapshots, reclaim old ones) and signals; one worker thread per
// configured worker runs the proxy. Signals are blocked in every thread and
// taken synchronously by the main thread.
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <string>
#include <thread>
#include <vector>

#include "moat/control/config.h"
#include "moat/control/snapshot.h"
#include "moat/l7/proxy.h"
#include "moat/l7/tls.h"
#include "moat/ratelimit/limiter.h"
#include "moat/waf/engine.h"

using namespace moat;

namespace {

// Minimum level printed: 0 debug, 1 info, 2 warn, 3 error (config logging.level).
int gLogLevel = 1;

int levelRank(const char* level) {
  if (std::strcmp(level, "debug") == 0) return 0;
  if (std::strcmp(level, "info") == 0) return 1;
  if (std::strcmp(level, "warn") == 0) return 2;
  return 3;
}

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

void usage() {
  std::fprintf(stderr,
               "usage: moatd [--config FILE] [--check FILE] [--print-default-config]\n"
               "  --config FILE          run with FILE (JSON, see docs/config.md); SIGHUP reloads it\n"
               "  --check FILE           validate FILE, print every error with its JSON path, exit\n"
               "  --print-default-config print the embedded default config and exit\n"
               "without --config, moatd runs the embedded default config.\n");
}

bool sameListeners(const control::Config& a, const control::Config& b) {
  if (a.listeners.size() != b.listeners.size() || a.workers != b.workers) return false;
  for (size_t i = 0; i < a.listeners.size(); ++i) {
    const auto& x = a.listeners[i];
    const auto& y = b.listeners[i];
    if (x.name != y.name || x.address != y.address || x.port != y.port ||
        x.protocol != y.protocol || x.proxyProtocol != y.proxyProtocol)
      return false;
  }
  return true;
}

std::string jsonString(const std::string& v) {
  std::string s = "\"";
  for (char ch : v) {
    auto c = static_cast<unsigned char>(ch);
    if (c == '"' || c == '\\') {
      s += '\\';
      s += ch;
    } else if (c < 0x20 || c >= 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      s += buf;
    } else {
      s += ch;
    }
  }
  return s + "\"";
}

std::string countersJson(const l7::WorkerReport& r) {
  const auto& c = r.counters;
  std::string s = "{\"config_version\":" + std::to_string(r.configVersion);
  auto add = [&](const char* k, uint64_t v) { s += std::string(",\"") + k + "\":" + std::to_string(v); };
  c.forEach(add);
  auto named = [&](const char* k, const std::map<std::string, l7::NamedCounters>& m) {
    s += std::string(",\"") + k + "\":{";
    bool first = true;
    for (const auto& [name, v] : m) {
      if (!first) s += ",";
      first = false;
      s += "\"" + name + "\":{\"requests\":" + std::to_string(v.requests) +
           ",\"errors_5xx\":" + std::to_string(v.errors) + "}";
    }
    s += "}";
  };
  named("listeners", r.listeners);
  named("routes", r.routes);
  named("backends", r.backends);
  s += ",\"rate_limit_rules\":{";
  bool first = true;
  for (const auto& [name, v] : r.rateLimitRules) {
    if (!first) s += ",";
    first = false;
    s += jsonString(name) + ":{\"checked\":" + std::to_string(v.checked) +
         ",\"limited\":" + std::to_string(v.limited) + "}";
  }
  s += "},\"rate_limit_top\":[";
  first = true;
  for (const auto& it : r.topOffenders) {
    if (!first) s += ",";
    first = false;
    s += "{\"rule\":" + jsonString(it.rule) + ",\"key\":" + jsonString(it.key) +
         ",\"refused\":" + std::to_string(it.count) + ",\"error\":" + std::to_string(it.error) + "}";
  }
  s += "]}";
  return s;
}

std::string rateLimitTableJson(const ratelimit::Table* t) {
  if (t == nullptr) return "";
  ratelimit::TableStats st = t->stats();
  return ",\"rate_limit_table\":{\"capacity\":" + std::to_string(t->capacity()) +
         ",\"bytes\":" + std::to_string(t->bytes()) + ",\"inserts\":" + std::to_string(st.inserts) +
         ",\"evictions_idle\":" + std::to_string(st.evictionsIdle) +
         ",\"evictions_active\":" + std::to_string(st.evictionsActive) +
         ",\"ghost_restores\":" + std::to_string(st.ghostRestores) +
         ",\"ghost_lost\":" + std::to_string(st.ghostLost) + "}";
}

// Counters of every worker plus the shared rate-limit table, one JSON object.
std::string statsJson(const l7::WorkerReport& r, const ratelimit::Table* t) {
  std::string s = countersJson(r);
  s.insert(s.size() - 1, rateLimitTableJson(t));
  return s;
}

l7::WorkerReport sumReports(const std::vector<std::unique_ptr<l7::Worker>>& workers) {
  l7::WorkerReport total;
  std::vector<std::vector<ratelimit::TopKeys::Item>> parts;
  for (const auto& w : workers) {
    l7::WorkerReport r = w->report();
    total.counters += r.counters;
    total.configVersion = std::max(total.configVersion, r.configVersion);
    for (const auto& [k, v] : r.listeners) {
      total.listeners[k].requests += v.requests;
      total.listeners[k].errors += v.errors;
    }
    for (const auto& [k, v] : r.routes) {
      total.routes[k].requests += v.requests;
      total.routes[k].errors += v.errors;
    }
    for (const auto& [k, v] : r.backends) {
      total.backends[k].requests += v.requests;
      total.backends[k].errors += v.errors;
    }
    for (const auto& [k, v] : r.rateLimitRules) {
      total.rateLimitRules[k].checked += v.checked;
      total.rateLimitRules[k].limited += v.limited;
    }
    parts.push_back(r.topOffenders);
  }
  total.topOffenders = ratelimit::TopKeys::merge(parts, 20);
  return total;
}

int openAccessLog(const std::string& where) {
  if (where.empty()) return -1;
  if (where == "-") return STDOUT_FILENO;
  int fd = ::open(where.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
  if (fd < 0) logLine("error", "access log " + where + ": " + strerror(errno) + "; logging off");
  return fd;
}

// Compiles the waf section (control thread; loads and compiles the rule files,
// seconds without the cache). Null with errors logged when it fails, or when
// the WAF is disabled (then `ok` stays true).
std::shared_ptr<const waf::Engine> compileWaf(const control::WafConfig& w, bool* ok) {
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


// Builds the TLS contexts the config asks for (control thread; reads the
// certificate, key, CA and OCSP files). Logs every error with its JSON path.
bool buildTlsSet(const control::Config& c, size_t workers,
                 const std::shared_ptr<const l7::TicketSecret>& tickets, l7::TlsSet* out,
                 const std::string& where) {
  std::vector<l7::TlsBuildError> errors;
  *out = l7::buildTls(c, workers, tickets, &errors);
  for (const auto& e : errors) logLine("error", where + ": " + e.toString());
  return errors.empty();
}

}  // namespace

int main(int argc, char** argv) {
  std::string configPath;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if ((a == "--check" || a == "--config") && i + 1 < argc) {
      std::string file = argv[++i];
      if (a == "--check") {
        control::ConfigResult r = control::loadConfigFile(file);
        for (const auto& e : r.errors) std::fprintf(stderr, "%s: %s\n", file.c_str(), e.toString().c_str());
        if (!r.errors.empty()) {
          std::fprintf(stderr, "%s: %zu error(s); config rejected\n", file.c_str(), r.errors.size());
          return 1;
        }
        bool ok = true;
        compileWaf(r.config->waf, &ok);
        if (!ok) {
          std::fprintf(stderr, "%s: waf rules rejected\n", file.c_str());
          return 1;
        }
        l7::TlsSet tls;
        std::vector<l7::TlsBuildError> tlsErrors;
        tls = l7::buildTls(*r.config, 1, l7::TicketSecret::random(), &tlsErrors);
        for (const auto& e : tlsErrors) std::fprintf(stderr, "%s: %s\n", file.c_str(), e.toString().c_str());
        if (!tlsErrors.empty()) {
          std::fprintf(stderr, "%s: TLS files rejected\n", file.c_str());
          return 1;
        }
        std::printf("%s: OK\n", file.c_str());
        return 0;
      }
      configPath = file;
    } else if (a == "--print-default-config") {
      std::fwrite(control::defaultConfigJson().data(), 1, control::defaultConfigJson().size(), stdout);
      return 0;
    } else if (a == "--help" || a == "-h") {
      usage();
      return 0;
    } else {
      usage();
      return 2;
    }
  }

  control::ConfigResult loaded = configPath.empty() ? control::parseConfig(control::defaultConfigJson())
                                                    : control::loadConfigFile(configPath);
  if (!loaded.errors.empty()) {
    for (const auto& e : loaded.errors) logLine("error", (configPath.empty() ? "default config" : configPath) + ": " + e.toString());
    logLine("error", "config rejected; not starting");
    return 1;
  }
  control::Config config = *loaded.config;
  gLogLevel = static_cast<int>(config.logging.level);

  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGTERM);
  sigaddset(&sigs, SIGHUP);
  sigaddset(&sigs, SIGUSR1);
  sigaddset(&sigs, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);

  unsigned ncpu = std::max(1u, std::thread::hardware_concurrency());
  size_t nworkers = config.workers == 0 ? ncpu : config.workers;
  uint64_t version = 1;
  control::SnapshotPublisher publisher(nworkers);
  bool wafOk = true;
  std::shared_ptr<const waf::Engine> wafEngine = compileWaf(config.waf, &wafOk);
  if (!wafOk) {
    logLine("error", "waf rules rejected; not starting");
    return 1;
  }
  // One ticket secret for the process: tickets survive reloads and resume
  // on any worker (listeners with ticketKeyFile use theirs).
  const std::shared_ptr<const l7::TicketSecret> ticketSecret = l7::TicketSecret::random();
  l7::TlsSet tls;
  if (!buildTlsSet(config, nworkers, ticketSecret, &tls, configPath.empty() ? "default config" : configPath)) {
    logLine("error", "TLS files rejected; not starting");
    return 1;
  }
  try {
    publisher.publish(control::buildSnapshot(config, version, wafEngine, tls.listeners, tls.pools));
  } catch (const std::exception& e) {
    logLine("error", std::string("config: ") + e.what());
    return 1;
  }
  int accessFd = openAccessLog(config.logging.accessLog);
  int wafAuditFd = -1;
  if (!config.waf.auditLog.empty()) {
    wafAuditFd = ::open(config.waf.auditLog.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
    if (wafAuditFd < 0) {
      logLine("error", "waf audit log " + config.waf.auditLog + ": " + strerror(errno) + "; audit log off");
    }
  }
  // One table for the process: its size is fixed at start, and its state
  // (every client's bucket) survives config reloads.
  std::unique_ptr<ratelimit::Table> rateTable;
  try {
    rateTable = std::make_unique<ratelimit::Table>(config.rateLimit.maxKeys);
  } catch (const std::exception& e) {
    logLine("error", std::string("rateLimit.maxKeys: cannot allocate the table: ") + e.what());
    return 1;
  }

  std::atomic<bool> stop{false};
  std::vector<std::unique_ptr<l7::Worker>> workers;
  for (size_t i = 0; i < nworkers; ++i) {
    l7::Worker::Options o;
    o.index = i;
    o.publisher = &publisher;
    o.accessLogFd = accessFd;
    o.rateLimitTable = rateTable.get();
    o.wafAuditFd = wafAuditFd;
    o.stop = &stop;
    std::string err;
    auto w = l7::Worker::create(o, err);
    if (!w) {
      logLine("error", "worker " + std::to_string(i) + ": " + err);
      return 1;
    }
    workers.push_back(std::move(w));
  }
  std::vector<std::thread> threads;
  for (size_t i = 0; i < nworkers; ++i) {
    threads.emplace_back([&, i] {
      cpu_set_t set;
      CPU_ZERO(&set);
      CPU_SET(static_cast<int>(i % ncpu), &set);
      pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
      std::string name = "moat-w" + std::to_string(i);
      pthread_setname_np(pthread_self(), name.c_str());
      workers[i]->run(5000);
    });
  }
  for (size_t i = 0; i < config.listeners.size(); ++i) {
    const auto& l = config.listeners[i];
    std::string what = l.name;
    if (tls.listeners[i]) what += ", https: " + tls.listeners[i]->describe();
    logLine("info", "listening on " + l.address + ":" + std::to_string(l.port) + " (" + what + ")");
  }
  for (size_t i = 0; i < config.pools.size(); ++i) {
    if (config.pools[i].tls.enabled && !config.pools[i].tls.verify) {
      logLine("warn", "pool " + config.pools[i].name + ": TLS to backends without certificate verification");
    }
  }
  logLine("info", "config version 1 (" + (configPath.empty() ? std::string("embedded default") : configPath) +
                      ") running on " + std::to_string(nworkers) + " worker(s)");

  timespec tick{0, 100 * 1000 * 1000};
  uint64_t nextOcspMs = 0;
  for (;;) {
    siginfo_t info;
    int sig = sigtimedwait(&sigs, &info, &tick);
    publisher.reclaim();
    // Stapled OCSP responses follow their files (checked about once a second).
    if (const auto nowMs = static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                               std::chrono::steady_clock::now().time_since_epoch())
                               .count());
        nowMs >= nextOcspMs) {
      nextOcspMs = nowMs + 1000;
      for (const auto& l : tls.listeners) {
        if (!l) continue;
        std::vector<std::string> warnings;
        if (l->refreshOcsp(&warnings) > 0) logLine("info", "ocsp: stapling a new response");
        for (const auto& w : warnings) logLine("warn", w);
      }
    }
    if (sig < 0) continue;
    if (sig == SIGINT || sig == SIGTERM) break;
    if (sig == SIGUSR1) {
      std::fprintf(stderr, "%s\n", statsJson(sumReports(workers), rateTable.get()).c_str());
      continue;
    }
    if (sig == SIGHUP) {
      if (configPath.empty()) {
        logLine("warn", "SIGHUP: running on the embedded default config; nothing to reload");
        continue;
      }
      control::ConfigResult r = control::loadConfigFile(configPath);
      if (!r.errors.empty()) {
        for (const auto& e : r.errors) logLine("error", "reload " + configPath + ": " + e.toString());
        logLine("error", "reload rejected; config version " + std::to_string(version) + " keeps running");
        continue;
      }
      if (r.config->rateLimit.maxKeys != config.rateLimit.maxKeys) {
        logLine("warn", "reload: rateLimit.maxKeys changes only on restart; keeping " +
                            std::to_string(config.rateLimit.maxKeys));
      }
      if (!sameListeners(config, *r.config)) {
        logLine("error", "reload rejected: listeners and workers cannot change without a restart; config version " +
                             std::to_string(version) + " keeps running");
        continue;
      }
      if (r.config->waf.auditLog != config.waf.auditLog) {
        logLine("warn", "reload: waf.auditLog changes only on restart");
      }
      // The rule set is compiled again only when the waf section changed;
      // compiling happens here, on the control thread, while workers go on
      // with the previous snapshot.
      std::shared_ptr<const waf::Engine> nextWaf = wafEngine;
      if (!(r.config->waf == config.waf)) {
        bool ok = true;
        nextWaf = compileWaf(r.config->waf, &ok);
        if (!ok) {
          logLine("error", "reload rejected: waf rules did not compile; config version " +
                               std::to_string(version) + " keeps running");
          continue;
        }
      }
      // Certificates and keys are read again on every reload (they may have
      // changed on disk under the same config); a broken one rejects the
      // reload and the running contexts keep serving.
      l7::TlsSet nextTls;
      if (!buildTlsSet(*r.config, nworkers, ticketSecret, &nextTls, "reload " + configPath)) {
        logLine("error", "reload rejected: TLS files; config version " + std::to_string(version) +
                             " keeps running");
        continue;
      }
      try {
        publisher.publish(
            control::buildSnapshot(*r.config, version + 1, nextWaf, nextTls.listeners, nextTls.pools));
      } catch (const std::exception& e) {
        logLine("error", std::string("reload rejected: ") + e.what());
        continue;
      }
      tls = std::move(nextTls);
      ++version;
      config = *r.config;
      wafEngine = nextWaf;
      gLogLevel = static_cast<int>(config.logging.level);
      logLine("info", "config version " + std::to_string(version) + " applied");
    }
  }
  logLine("info", "stopping: draining connections");
  stop.store(true);
  for (auto& t : threads) t.join();
  std::fprintf(stderr, "%s\n", statsJson(sumReports(workers), rateTable.get()).c_str());
  workers.clear();
  publisher.reclaim();
  logLine("info", "stopped");
  return 0;
}
