// moatd: the Moat appliance.
//
//   moatd                     run on the embedded default config
//   moatd --config FILE       run on FILE (SIGHUP applies it again as a new version)
//   moatd --check FILE        validate FILE, print every error, exit
//   moatd --print-default-config
//
// Threads: the main thread is the control plane: it owns configuration
// (validate, build and publish snapshots, persist versions), serves the
// admin REST API (poll-driven, docs/CONTROL_API.md), follows health checks
// and geo files, and takes signals through a signalfd. The health checker
// has its own thread; one worker thread per configured worker runs the
// proxy. Signals are blocked in every thread.
#include <fcntl.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "admin_api.h"
#include "appliance.h"
#include "l4_engines.h"
#include "moat/control/admin_server.h"
#include "moat/control/config.h"
#include "moat/control/config_json.h"
#include "moat/control/snapshot.h"
#include "moat/control/state_store.h"
#include "moat/l7/proxy.h"
#include "moat/l7/tls.h"
#include "moat/ratelimit/limiter.h"
#include "moat/waf/engine.h"

using namespace moat;
using app::logLine;

namespace {

void usage() {
  std::fprintf(stderr,
               "usage: moatd [options]\n"
               "  --config FILE          bootstrap config (JSON, see docs/config.md); SIGHUP applies it again\n"
               "  --check FILE           validate FILE, print every error with its JSON path, exit\n"
               "  --print-default-config print the embedded default config and exit\n"
               "  --list-routes          print the admin API's routes (METHOD PATH) and exit\n"
               "  --state-dir DIR        applied config versions, admin token, uploaded certificates\n"
               "                         (default /var/lib/moat); a restart resumes the newest version\n"
               "                         unless the bootstrap config changed since the last start\n"
               "  --admin ADDR:PORT|off  admin REST API listener (default 127.0.0.1:9900)\n"
               "  --admin-token-file F   bearer token (default STATE_DIR/admin.token, created if absent)\n"
               "  --admin-cert F --admin-key F   serve the admin API over TLS (required off loopback)\n"
               "  --admin-client-ca F    require admin clients to present a certificate from these CAs\n"
               "without --config, moatd bootstraps from the embedded default config.\n");
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

int openAccessLog(const std::string& where) {
  if (where.empty()) return -1;
  if (where == "-") return STDOUT_FILENO;
  int fd = ::open(where.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
  if (fd < 0) logLine("error", "access log " + where + ": " + strerror(errno) + "; logging off");
  return fd;
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


std::string sha256Hex(const std::string& data) {
  unsigned char md[32];
  unsigned int n = 0;
  EVP_Digest(data.data(), data.size(), md, &n, EVP_sha256(), nullptr);
  std::string out;
  char b[3];
  for (unsigned i = 0; i < n; ++i) {
    std::snprintf(b, sizeof b, "%02x", md[i]);
    out += b;
  }
  return out;
}

bool readFile(const std::string& path, std::string& out) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return false;
  std::stringstream ss;
  ss << f.rdbuf();
  out = ss.str();
  return true;
}

// The admin token: read from `path`, or created there (0600, 32 random
// bytes as hex) when absent. Empty with `err` set on failure.
std::string loadOrCreateToken(const std::string& path, std::string& err) {
  std::string tok;
  if (readFile(path, tok)) {
    while (!tok.empty() && (tok.back() == '\n' || tok.back() == '\r' || tok.back() == ' ')) tok.pop_back();
    if (tok.size() < 16) {
      err = "admin token file " + path + " holds fewer than 16 characters";
      return "";
    }
    struct stat st{};
    if (::stat(path.c_str(), &st) == 0 && (st.st_mode & 077) != 0) {
      logLine("warn", "admin token file " + path + " is readable by group or others (chmod 600 it)");
    }
    return tok;
  }
  unsigned char raw[32];
  if (RAND_bytes(raw, sizeof raw) != 1) {
    err = "cannot generate an admin token";
    return "";
  }
  char hex[65];
  for (int i = 0; i < 32; ++i) std::snprintf(hex + 2 * i, 3, "%02x", raw[i]);
  tok.assign(hex, 64);
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) {
    err = "cannot create admin token file " + path + ": " + strerror(errno);
    return "";
  }
  std::string line = tok + "\n";
  bool ok = ::write(fd, line.data(), line.size()) == static_cast<ssize_t>(line.size()) && ::fsync(fd) == 0;
  ::close(fd);
  if (!ok) {
    err = "cannot write admin token file " + path;
    return "";
  }
  logLine("info", "admin token created in " + path + " (mode 0600)");
  return tok;
}

bool splitHostPort(const std::string& s, std::string& host, uint16_t& port) {
  size_t colon = s.rfind(':');
  if (colon == std::string::npos) return false;
  host = s.substr(0, colon);
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  std::string p = s.substr(colon + 1);
  if (p.empty() || p.size() > 5 || p.find_first_not_of("0123456789") != std::string::npos) return false;
  unsigned long v = std::stoul(p);
  if (v > 65535) return false;
  port = static_cast<uint16_t>(v);
  return !host.empty();
}

}  // namespace

int main(int argc, char** argv) {
  std::string configPath;
  std::string stateDir = "/var/lib/moat";
  std::string adminAddr = "127.0.0.1:9900";
  std::string tokenFile, adminCert, adminKey, adminClientCa;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&](std::string& out) {
      if (i + 1 >= argc) {
        usage();
        std::exit(2);
      }
      out = argv[++i];
    };
    if (a == "--check") {
      std::string file;
      value(file);
      control::ConfigResult r = control::loadConfigFile(file);
      for (const auto& e : r.errors) std::fprintf(stderr, "%s: %s\n", file.c_str(), e.toString().c_str());
      if (!r.errors.empty()) {
        std::fprintf(stderr, "%s: %zu error(s); config rejected\n", file.c_str(), r.errors.size());
        return 1;
      }
      bool ok = true;
      app::compileWaf(r.config->waf, &ok);
      if (!ok) {
        std::fprintf(stderr, "%s: waf rules rejected\n", file.c_str());
        return 1;
      }
      std::vector<l7::TlsBuildError> tlsErrors;
      l7::TlsSet tls = l7::buildTls(*r.config, 1, l7::TicketSecret::random(), &tlsErrors);
      for (const auto& e : tlsErrors) std::fprintf(stderr, "%s: %s\n", file.c_str(), e.toString().c_str());
      if (!tlsErrors.empty()) {
        std::fprintf(stderr, "%s: TLS files rejected\n", file.c_str());
        return 1;
      }
      std::printf("%s: OK\n", file.c_str());
      return 0;
    } else if (a == "--config") {
      value(configPath);
    } else if (a == "--state-dir") {
      value(stateDir);
    } else if (a == "--admin") {
      value(adminAddr);
    } else if (a == "--admin-token-file") {
      value(tokenFile);
    } else if (a == "--admin-cert") {
      value(adminCert);
    } else if (a == "--admin-key") {
      value(adminKey);
    } else if (a == "--admin-client-ca") {
      value(adminClientCa);
    } else if (a == "--list-routes") {
      // The admin API's route table, one "METHOD PATH" a line.
      control::Config c = *control::parseConfig(control::defaultConfigJson()).config;
      app::Appliance::Options o;
      app::Appliance dummy(o, c, 1, nullptr, l7::TlsSet{}, nullptr);
      app::AdminApi api(dummy, "unused-token-unused");
      for (const auto& [m, path] : api.routes()) std::printf("%s %s\n", m.c_str(), path.c_str());
      return 0;
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

  // The bootstrap document: --config FILE or the embedded default.
  std::string bootstrapText;
  const std::string where = configPath.empty() ? std::string("embedded default") : configPath;
  if (configPath.empty()) {
    bootstrapText = std::string(control::defaultConfigJson());
  } else if (!readFile(configPath, bootstrapText)) {
    logLine("error", configPath + ": cannot read: " + strerror(errno) + "; not starting");
    return 1;
  }
  control::ConfigResult loaded = control::parseConfig(bootstrapText);
  if (!loaded.errors.empty()) {
    for (const auto& e : loaded.errors) logLine("error", where + ": " + e.toString());
    logLine("error", "config rejected; not starting");
    return 1;
  }
  control::Config config = *loaded.config;

  // Versions: resume the newest applied one unless the bootstrap changed.
  std::string err;
  std::unique_ptr<control::StateStore> store = control::StateStore::open(stateDir, err);
  if (!store) {
    logLine("error", "state directory: " + err + "; not starting (give --state-dir)");
    return 1;
  }
  const std::string bootHash = sha256Hex(bootstrapText);
  const std::string bootHashFile = stateDir + "/bootstrap.sha256";
  std::string lastBootHash;
  readFile(bootHashFile, lastBootHash);
  while (!lastBootHash.empty() && lastBootHash.back() == '\n') lastBootHash.pop_back();
  uint64_t version = 1;
  std::string startSource = "startup";
  std::vector<std::string> storeWarnings;
  auto latest = store->latest(&storeWarnings);
  for (const auto& w : storeWarnings) logLine("warn", "state: " + w);
  bool resumed = false;
  if (latest && lastBootHash == bootHash) {
    version = latest->first;
    config = latest->second;
    resumed = true;
    logLine("info", "resuming config version " + std::to_string(version) + " from " + stateDir);
  } else {
    if (latest) {
      version = latest->first + 1;
      logLine("info", where + " changed since the last start: it becomes config version " + std::to_string(version));
    }
  }
  app::gLogLevel = static_cast<int>(config.logging.level);

  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGTERM);
  sigaddset(&sigs, SIGHUP);
  sigaddset(&sigs, SIGUSR1);
  sigaddset(&sigs, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);
  int sigFd = signalfd(-1, &sigs, SFD_NONBLOCK | SFD_CLOEXEC);

  unsigned ncpu = std::max(1u, std::thread::hardware_concurrency());
  size_t nworkers = config.workers == 0 ? ncpu : config.workers;
  bool wafOk = true;
  std::shared_ptr<const waf::Engine> wafEngine = app::compileWaf(config.waf, &wafOk);
  if (!wafOk) {
    logLine("error", "waf rules rejected; not starting");
    return 1;
  }
  // One ticket secret for the process: tickets survive reloads and resume
  // on any worker (listeners with ticketKeyFile use theirs).
  const std::shared_ptr<const l7::TicketSecret> ticketSecret = l7::TicketSecret::random();
  l7::TlsSet tls;
  if (!buildTlsSet(config, nworkers, ticketSecret, &tls, where)) {
    logLine("error", "TLS files rejected; not starting");
    return 1;
  }
  app::Appliance::Options aopts;
  aopts.configPath = configPath;
  aopts.workers = nworkers;
  const size_t l4Slots = app::l4SlotCount(config, nworkers);
  aopts.l4Workers = l4Slots;
  aopts.store = store.get();
  app::Appliance appliance(aopts, config, version, wafEngine, tls, ticketSecret);
  // The packet engine (EAL, port, LPM builder) must exist before the first
  // snapshot is built: its deny tables live in EAL memory.
  if (!app::prepareL4(appliance, config, nworkers, err)) {
    logLine("error", "l4: " + err + "; not starting");
    return 1;
  }
  if (!appliance.start(err)) {
    logLine("error", "config: " + err);
    return 1;
  }
  if (!resumed) {
    if (!store->save(version, startSource, "bootstrap from " + where, config, err)) {
      logLine("error", "state: " + err + "; not starting");
      return 1;
    }
    std::string tmp = bootHashFile + ".tmp";
    int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd >= 0) {
      std::string line = bootHash + "\n";
      bool ok = ::write(fd, line.data(), line.size()) == static_cast<ssize_t>(line.size());
      ::fsync(fd);
      ::close(fd);
      if (ok) ::rename(tmp.c_str(), bootHashFile.c_str());
    }
  }

  // Admin API.
  std::unique_ptr<control::AdminServer> admin;
  std::unique_ptr<app::AdminApi> api;
  if (adminAddr != "off") {
    control::AdminServerOptions ao;
    if (!splitHostPort(adminAddr, ao.address, ao.port)) {
      logLine("error", "--admin " + adminAddr + ": expected ADDRESS:PORT or off");
      return 1;
    }
    ao.certFile = adminCert;
    ao.keyFile = adminKey;
    ao.clientCaFile = adminClientCa;
    std::string token = loadOrCreateToken(tokenFile.empty() ? stateDir + "/admin.token" : tokenFile, err);
    if (token.empty()) {
      logLine("error", err + "; not starting");
      return 1;
    }
    api = std::make_unique<app::AdminApi>(appliance, token);
    admin = control::AdminServer::open(ao, [&](const control::AdminRequest& r) { return api->handle(r); }, err);
    if (!admin) {
      logLine("error", err + "; not starting");
      return 1;
    }
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
  // (every client's bucket) survives config changes.
  try {
    appliance.rateTable = std::make_unique<ratelimit::Table>(config.rateLimit.maxKeys);
  } catch (const std::exception& e) {
    logLine("error", std::string("rateLimit.maxKeys: cannot allocate the table: ") + e.what());
    return 1;
  }

  std::atomic<bool> stop{false};
  auto& workers = appliance.workers;
  for (size_t i = 0; i < nworkers; ++i) {
    l7::Worker::Options o;
    o.index = i;
    o.publisher = &appliance.publisher();
    o.accessLogFd = accessFd;
    o.rateLimitTable = appliance.rateTable.get();
    o.wafAuditFd = wafAuditFd;
    o.stop = &stop;
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
  if (!app::startL4(appliance, config, nworkers, nworkers, &stop, threads, err)) {
    logLine("error", err + "; not starting");
    stop.store(true);
    for (auto& t : threads) t.join();
    return 1;
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
  if (admin) {
    logLine("info", std::string("admin API on ") + (admin->tls() ? "https://" : "http://") + adminAddr.substr(0, adminAddr.rfind(':')) +
                        ":" + std::to_string(admin->port()) + "/api/v1");
  }
  appliance.setReady(true);
  logLine("info", "config version " + std::to_string(appliance.version()) + " (" +
                      (resumed ? "resumed from " + stateDir : where) + ") running on " +
                      std::to_string(nworkers) + " worker(s)");

  std::vector<pollfd> fds;
  for (;;) {
    fds.clear();
    fds.push_back(pollfd{sigFd, POLLIN, 0});
    for (int fd : appliance.wakeFds()) fds.push_back(pollfd{fd, POLLIN, 0});
    size_t adminFirst = fds.size();
    size_t adminCount = admin ? admin->pollFds(fds) : 0;
    int n = ::poll(fds.data(), fds.size(), 100);
    if (n > 0 && admin) admin->dispatch(fds, adminFirst, adminCount);
    appliance.tick();
    if ((fds[0].revents & POLLIN) == 0) continue;
    signalfd_siginfo si{};
    if (::read(sigFd, &si, sizeof si) != static_cast<ssize_t>(sizeof si)) continue;
    int sig = static_cast<int>(si.ssi_signo);
    if (sig == SIGINT || sig == SIGTERM) break;
    if (sig == SIGUSR1) {
      std::fprintf(stderr, "%s\n", statsJson(app::sumReports(workers), appliance.rateTable.get()).c_str());
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
        logLine("error", "reload rejected; config version " + std::to_string(appliance.version()) + " keeps running");
        continue;
      }
      app::ApplyResult res = appliance.apply(*r.config, "file", "SIGHUP: " + configPath);
      if (!res.ok) {
        for (const auto& e : res.errors) logLine("error", "reload " + configPath + ": " + e.toString());
        logLine("error", "reload rejected: " + res.error + "; config version " +
                             std::to_string(appliance.version()) + " keeps running");
      }
    }
  }
  logLine("info", "stopping: draining connections");
  appliance.setReady(false);
  admin.reset();
  stop.store(true);
  for (auto& t : threads) t.join();
  app::stopL4(appliance, nworkers);
  std::fprintf(stderr, "%s\n", statsJson(app::sumReports(workers), appliance.rateTable.get()).c_str());
  workers.clear();
  appliance.sockWorkers.clear();
  appliance.processors.clear();
  appliance.packetEngine.reset();
  appliance.publisher().reclaim();
  ::close(sigFd);
  logLine("info", "stopped");
  return 0;
}
