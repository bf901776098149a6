#include "admin_api.h"

#include "l4_engines.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <chrono>
#include <cstring>
#include <ctime>
#include <functional>
#include <nlohmann/json.hpp>
#include <openssl/evp.h>

#include "moat/control/config_json.h"
#include "moat/ratelimit/rules.h"

namespace moat::app {

namespace {

using nlohmann::json;
using control::AdminRequest;
using control::AdminResponse;

AdminResponse reply(int status, const json& body) {
  AdminResponse r;
  r.status = status;
  r.body = body.dump();
  return r;
}

AdminResponse fail(int status, const std::string& msg) { return reply(status, json{{"error", msg}}); }

AdminResponse failErrors(int status, const std::string& msg, const std::vector<control::ConfigError>& errors) {
  json e = json::array();
  for (const auto& x : errors) e.push_back({{"path", x.path}, {"message", x.message}});
  return reply(status, json{{"error", msg}, {"errors", e}});
}

std::string rfc3339(int64_t unix) {
  time_t t = static_cast<time_t>(unix);
  tm g;
  gmtime_r(&t, &g);
  char buf[32];
  strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &g);
  return buf;
}

// "10.0.0.5:80" / "[::1]:80" -> comparable (family, bytes, port).
bool parseBackendKey(const std::string& text, std::string& addrOut, uint16_t& port) {
  std::string addr;
  std::string portText;
  if (!text.empty() && text[0] == '[') {
    size_t close = text.find(']');
    if (close == std::string::npos || close + 1 >= text.size() || text[close + 1] != ':') return false;
    addr = text.substr(1, close - 1);
    portText = text.substr(close + 2);
  } else {
    size_t colon = text.rfind(':');
    if (colon == std::string::npos || text.find(':') != colon) return false;
    addr = text.substr(0, colon);
    portText = text.substr(colon + 1);
  }
  if (portText.empty() || portText.size() > 5 ||
      portText.find_first_not_of("0123456789") != std::string::npos)
    return false;
  unsigned long p = std::stoul(portText);
  if (p == 0 || p > 65535) return false;
  port = static_cast<uint16_t>(p);
  unsigned char buf[16];
  if (inet_pton(AF_INET, addr.c_str(), buf) != 1 && inet_pton(AF_INET6, addr.c_str(), buf) != 1) return false;
  addrOut = addr;
  return true;
}

bool sameAddress(const std::string& a, const std::string& b) {
  unsigned char x[16] = {}, y[16] = {};
  int fa = inet_pton(AF_INET, a.c_str(), x) == 1 ? 4 : (inet_pton(AF_INET6, a.c_str(), x) == 1 ? 6 : 0);
  int fb = inet_pton(AF_INET, b.c_str(), y) == 1 ? 4 : (inet_pton(AF_INET6, b.c_str(), y) == 1 ? 6 : 0);
  return fa != 0 && fa == fb && std::memcmp(x, y, fa == 4 ? 4 : 16) == 0;
}

json parseBody(const AdminRequest& req, std::string& err) {
  if (req.body.empty()) {
    err = "request body is empty; expected a JSON document";
    return json();
  }
  try {
    return json::parse(req.body);
  } catch (const json::parse_error& e) {
    err = std::string("malformed JSON: ") + e.what();
    return json();
  }
}

std::vector<std::string> splitPath(const std::string& path) {
  std::vector<std::string> out;
  size_t i = 1;
  while (i <= path.size()) {
    size_t j = path.find('/', i);
    if (j == std::string::npos) j = path.size();
    out.push_back(path.substr(i, j - i));
    i = j + 1;
  }
  return out;
}

}  // namespace

nlohmann::json AdminApi::l4Status() const {
  const control::L4Config& c = app_.config().l4;
  json j = {{"engine", control::toString(c.engine)}, {"services", json::array()}};
  for (const auto& s : c.services) {
    j["services"].push_back({{"name", s.name}, {"address", s.address}, {"port", s.port},
                             {"protocol", control::toString(s.protocol)}, {"pool", s.pool},
                             {"forwarding", control::toString(s.forwarding)}});
  }
  if (app_.packetEngine) {
    const dataplane::PortInfo pi = app_.packetEngine->portInfo();
    j["port"] = {{"device", c.dpdk.port}, {"driver", pi.driver}, {"mac", pi.mac}, {"linkUp", pi.linkUp},
                 {"speedMbps", pi.linkSpeedMbps}, {"queues", pi.queues}, {"rss", pi.rss},
                 {"offloads", pi.offloads}, {"software", pi.softwareFallbacks},
                 {"exceptionTap", pi.exceptionTap ? c.dpdk.exceptionTap : ""}};
    const l4::ProcessorReport r = l4PacketReport(app_);
    json counters = json::object();
    r.counters.forEach([&](const char* name, uint64_t v) { counters[name] = v; });
    j["counters"] = counters;
    j["flows"] = {{"size", r.flows.size}, {"capacity", r.flows.capacity}, {"evicted", r.flows.evicted},
                  {"expired", r.flows.expired}};
  } else if (!app_.sockWorkers.empty()) {
    l4::SockCounters sc;
    for (const auto& w : app_.sockWorkers) sc += w->report().counters;
    json counters = json::object();
    sc.forEach([&](const char* name, uint64_t v) { counters[name] = v; });
    j["counters"] = counters;
  }
  return j;
}

std::string AdminApi::metrics() {
  l7::WorkerReport r = sumReports(app_.workers);
  std::string s;
  s.reserve(16384);
  auto family = [&](const char* name, const char* type, const char* help) {
    s += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " " + type + "\n";
  };
  auto esc = [](const std::string& v) {
    std::string o;
    for (char c : v) {
      if (c == '\\' || c == '"') o += '\\';
      if (c == '\n') {
        o += "\\n";
        continue;
      }
      o += c;
    }
    return o;
  };
  auto sample = [&](const std::string& name, const std::string& labels, uint64_t v) {
    s += name;
    if (!labels.empty()) s += "{" + labels + "}";
    s += " " + std::to_string(v) + "\n";
  };
  family("moat_config_version", "gauge", "Config version the appliance runs.");
  sample("moat_config_version", "", app_.version());
  family("moat_workers", "gauge", "Worker threads.");
  sample("moat_workers", "", app_.workerCount());
  family("moat_uptime_seconds", "gauge", "Seconds since start.");
  sample("moat_uptime_seconds", "", static_cast<uint64_t>(time(nullptr) - app_.startedUnix()));
  family("moat_config_rejected_total", "counter", "Config changes refused (nothing changed).");
  sample("moat_config_rejected_total", "", app_.rejectedConfigs());
  // Every worker counter, one family each (gauges named as such).
  r.counters.forEach([&](const char* name, uint64_t v) {
    std::string n = std::string("moat_") + name;
    bool gauge = std::strcmp(name, "connections_active") == 0;
    if (!gauge) n += "_total";
    family(n.c_str(), gauge ? "gauge" : "counter", "Proxy counter (see l7/include/moat/l7/proxy.h).");
    sample(n, "", v);
  });
  family("moat_request_duration_seconds", "histogram", "Request latency, head received to response done.");
  {
    uint64_t cum = 0, count = 0;
    for (uint64_t b : r.latency.buckets) count += b;
    for (size_t i = 0; i < l7::kLatencyBucketsMs.size(); ++i) {
      cum += r.latency.buckets[i];
      char le[32];
      std::snprintf(le, sizeof le, "%g", static_cast<double>(l7::kLatencyBucketsMs[i]) / 1000.0);
      sample("moat_request_duration_seconds_bucket", std::string("le=\"") + le + "\"", cum);
    }
    sample("moat_request_duration_seconds_bucket", "le=\"+Inf\"", count);
    char sum[64];
    std::snprintf(sum, sizeof sum, "%.3f", static_cast<double>(r.latency.sumMs) / 1000.0);
    s += std::string("moat_request_duration_seconds_sum ") + sum + "\n";
    sample("moat_request_duration_seconds_count", "", count);
  }
  family("moat_listener_requests_total", "counter", "Requests per listener.");
  for (const auto& [k, v] : r.listeners) sample("moat_listener_requests_total", "listener=\"" + esc(k) + "\"", v.requests);
  family("moat_listener_errors_5xx_total", "counter", "5xx answers per listener.");
  for (const auto& [k, v] : r.listeners) sample("moat_listener_errors_5xx_total", "listener=\"" + esc(k) + "\"", v.errors);
  family("moat_route_requests_total", "counter", "Requests per route.");
  for (const auto& [k, v] : r.routes) sample("moat_route_requests_total", "route=\"" + esc(k) + "\"", v.requests);
  family("moat_backend_requests_total", "counter", "Requests sent per backend.");
  for (const auto& [k, v] : r.backends) sample("moat_backend_requests_total", "backend=\"" + esc(k) + "\"", v.requests);
  family("moat_backend_errors_total", "counter", "Failed exchanges per backend (connect errors, timeouts, 5xx).");
  for (const auto& [k, v] : r.backends) sample("moat_backend_errors_total", "backend=\"" + esc(k) + "\"", v.errors);
  std::string up, health, ej;
  for (const auto& p : app_.config().pools) {
    for (const auto& b : p.backends) {
      std::string key = control::backendKey(b);
      std::string st = app_.backendHealth(p.name, key, nullptr);
      std::string lab = "pool=\"" + esc(p.name) + "\",backend=\"" + esc(key) + "\"";
      bool isUp = !b.drain && b.weight > 0 && st != "unhealthy" && st != "ejected";
      up += "moat_backend_up{" + lab + "} " + (isUp ? "1" : "0") + "\n";
      for (const char* state : {"unknown", "healthy", "unhealthy", "ejected"}) {
        health += "moat_backend_health{" + lab + ",state=\"" + state + "\"} " + (st == state ? "1" : "0") + "\n";
      }
      auto it = app_.ejections().find(p.name + "/" + key);
      ej += "moat_backend_ejections_total{" + lab + "} " +
            std::to_string(it == app_.ejections().end() ? 0 : it->second.total) + "\n";
    }
  }
  {
    s += "# HELP moat_backend_up 1 when the backend takes new requests (not drained, unhealthy or ejected).\n"
         "# TYPE moat_backend_up gauge\n" + up;
    s += "# HELP moat_backend_health Health per backend: 1 for the state it is in.\n# TYPE moat_backend_health gauge\n" + health;
    s += "# HELP moat_backend_ejections_total Outlier-detection ejections per backend.\n"
         "# TYPE moat_backend_ejections_total counter\n" + ej;
  }
  family("moat_config_switch_lag_max_seconds", "gauge",
         "Worst delay between a config snapshot's build and a worker running it.");
  {
    char v[32];
    std::snprintf(v, sizeof v, "%.6f", static_cast<double>(r.switchLagMaxUs) / 1e6);
    s += std::string("moat_config_switch_lag_max_seconds ") + v + "\n";
  }
  family("moat_health_transitions_total", "counter", "Backend health transitions (active checks and outlier detection).");
  sample("moat_health_transitions_total", "", app_.healthTransitions());
  family("moat_waf_rule_matches_total", "counter", "WAF rule matches per rule id.");
  for (const auto& [id, n] : r.wafRules) sample("moat_waf_rule_matches_total", "rule=\"" + std::to_string(id) + "\"", n);
  family("moat_ratelimit_checked_total", "counter", "Requests a rate-limit rule applied to.");
  for (const auto& [k, v] : r.rateLimitRules) sample("moat_ratelimit_checked_total", "rule=\"" + esc(k) + "\"", v.checked);
  family("moat_ratelimit_limited_total", "counter", "Requests a rate-limit rule refused (or would have, in dry run).");
  for (const auto& [k, v] : r.rateLimitRules) sample("moat_ratelimit_limited_total", "rule=\"" + esc(k) + "\"", v.limited);
  family("moat_geo_blocked_by_country_total", "counter", "Requests refused by a geo policy, per country.");
  for (const auto& [k, v] : r.geoBlocked) sample("moat_geo_blocked_by_country_total", "country=\"" + esc(k) + "\"", v);
  family("moat_geo_ranges", "gauge", "Address ranges in the geo database.");
  sample("moat_geo_ranges", "", app_.geo() != nullptr && app_.geo()->db() ? app_.geo()->db()->entries() : 0);
  family("moat_geo_load_errors_total", "counter", "Geo source loads that failed (previous data kept).");
  sample("moat_geo_load_errors_total", "", app_.geo() != nullptr ? app_.geo()->loadErrors() : 0);
  // L4: the packet engine (per-lcore processors, engine, port) or the
  // socket twin, whichever runs.
  if (app_.packetEngine) {
    const l4::ProcessorReport l4r = l4PacketReport(app_);
    l4r.counters.forEach([&](const char* name, uint64_t v) {
      const std::string n = std::string("moat_l4_") + name + "_total";
      family(n.c_str(), "counter", "L4 packet processor (sum over lcores); see l4/include/moat/l4/processor.h.");
      sample(n, "", v);
    });
    family("moat_l4_parse_errors_by_reason_total", "counter", "Malformed frames dropped, by reason.");
    for (size_t i = 0; i < l4r.counters.parse.size(); ++i) {
      if (i == 0) continue;
      sample("moat_l4_parse_errors_by_reason_total",
             std::string("reason=\"") + l4::toString(static_cast<l4::ParseStatus>(i)) + "\"", l4r.counters.parse[i]);
    }
    family("moat_l4_flows", "gauge", "Connection-table entries in use (sum over lcores).");
    sample("moat_l4_flows", "", l4r.flows.size);
    family("moat_l4_flows_capacity", "gauge", "Connection-table entries (sum over lcores).");
    sample("moat_l4_flows_capacity", "", l4r.flows.capacity);
    family("moat_l4_flows_evicted_total", "counter", "Live flows evicted because a table was full.");
    sample("moat_l4_flows_evicted_total", "", l4r.flows.evicted);
    family("moat_l4_flows_expired_total", "counter", "Flows expired at their idle timeout.");
    sample("moat_l4_flows_expired_total", "", l4r.flows.expired);
    dataplane::PacketEngineCounters ec;
    for (uint32_t i = 0; i < app_.packetEngine->workers(); ++i) ec += app_.packetEngine->counters(i);
    ec.forEach([&](const char* name, uint64_t v) {
      const std::string n = std::string("moat_dpdk_") + name + "_total";
      family(n.c_str(), "counter", "DPDK engine (sum over lcores); see dataplane/include/moat/dataplane/packet_engine.h.");
      sample(n, "", v);
    });
    const dataplane::PortInfo pi = app_.packetEngine->portInfo();
    family("moat_dpdk_link_up", "gauge", "Data port link state (1 up).");
    sample("moat_dpdk_link_up", "", pi.linkUp ? 1 : 0);
    family("moat_dpdk_rx_missed_total", "counter", "Frames the NIC dropped for lack of RX descriptors.");
    sample("moat_dpdk_rx_missed_total", "", pi.imissed);
  }
  if (!app_.sockWorkers.empty()) {
    l4::SockCounters sc;
    std::map<std::string, l4::BackendFlowCounters> byBackend;
    for (const auto& w : app_.sockWorkers) {
      l4::SockReport r4 = w->report();
      sc += r4.counters;
      for (const auto& [k, v] : r4.backends) byBackend[k] += v;
    }
    sc.forEach([&](const char* name, uint64_t v) {
      const std::string n = std::string("moat_l4_sock_") + name + "_total";
      family(n.c_str(), "counter", "L4 socket proxy (sum over workers); see l4/include/moat/l4/sock_proxy.h.");
      sample(n, "", v);
    });
    family("moat_l4_sock_backend_flows_total", "counter", "Flows given to each backend by the L4 socket proxy.");
    for (const auto& [k, v] : byBackend) sample("moat_l4_sock_backend_flows_total", "backend=\"" + esc(k) + "\"", v.flows);
  }
  family("moat_admin_unauthorized_total", "counter", "Admin API requests refused for a missing or wrong token.");
  sample("moat_admin_unauthorized_total", "", unauthorized_);
  if (app_.rateTable) {
    ratelimit::TableStats st = app_.rateTable->stats();
    family("moat_ratelimit_table_capacity", "gauge", "Keys the rate-limit table holds.");
    sample("moat_ratelimit_table_capacity", "", app_.rateTable->capacity());
    family("moat_ratelimit_table_evictions_total", "counter", "Rate-limit keys evicted (idle or active).");
    sample("moat_ratelimit_table_evictions_total", "reason=\"idle\"", st.evictionsIdle);
    sample("moat_ratelimit_table_evictions_total", "reason=\"active\"", st.evictionsActive);
  }
  return s;
}

AdminApi::AdminApi(Appliance& app, std::string token) : app_(app), token_(std::move(token)) {
  using Params = std::map<std::string, std::string>;

  // Applies a modified document: parsed and validated like a PUT.
  auto applyDoc = [=, this](const json& doc, const std::string& source, const std::string& summary,
                      int okStatus) -> AdminResponse {
    control::ConfigResult parsed = control::parseConfig(doc.dump());
    if (!parsed.errors.empty()) return failErrors(400, "config rejected", parsed.errors);
    ApplyResult r = app_.apply(*parsed.config, source, summary);
    if (!r.ok) return failErrors(r.status, r.error, r.errors);
    return reply(okStatus, json{{"version", r.version}});
  };
  auto currentDoc = [=, this]() { return json::parse(control::configToJson(app_.config(), false)); };
  auto poolIndex = [=, this](const std::string& name) -> int {
    const auto& pools = app_.config().pools;
    for (size_t i = 0; i < pools.size(); ++i) {
      if (pools[i].name == name) return static_cast<int>(i);
    }
    return -1;
  };
  auto backendIndex = [=, this](int pool, const std::string& keyText) -> int {
    std::string addr;
    uint16_t port = 0;
    if (!parseBackendKey(keyText, addr, port)) return -2;
    const auto& bs = app_.config().pools[static_cast<size_t>(pool)].backends;
    for (size_t i = 0; i < bs.size(); ++i) {
      if (bs[i].port == port && sameAddress(bs[i].address, addr)) return static_cast<int>(i);
    }
    return -1;
  };
  auto poolJson = [=, this](const control::PoolConfig& p) {
    json backends = json::array();
    for (const auto& b : p.backends) {
      std::string key = control::backendKey(b);
      std::string last;
      std::string health = app_.backendHealth(p.name, key, &last);
      backends.push_back({{"address", b.address}, {"port", b.port}, {"key", key}, {"weight", b.weight},
                          {"drain", b.drain}, {"health", health}, {"lastCheck", last}});
    }
    return json{{"name", p.name}, {"balance", control::toString(p.balance)}, {"backends", backends}};
  };
  // Resolves {pool} and {backend}; on failure `err` is the answer.
  auto findBackend = [=, this](const Params& p, int& pi, int& bi, AdminResponse& err) {
    pi = poolIndex(p.at("pool"));
    if (pi < 0) {
      err = fail(404, "no pool named " + p.at("pool"));
      return false;
    }
    bi = backendIndex(pi, p.at("backend"));
    if (bi == -2) {
      err = fail(400, "\"" + p.at("backend") + "\" is not ADDRESS:PORT ([ADDRESS]:PORT for IPv6)");
      return false;
    }
    if (bi < 0) {
      err = fail(404, "pool " + p.at("pool") + " has no backend " + p.at("backend"));
      return false;
    }
    return true;
  };
  auto ruleByName = [=, this](const std::string& name) -> const ratelimit::Rule* {
    const control::Snapshot* s = app_.publisher().current();
    for (const auto& r : s->rateLimit.rules) {
      if (r.name == name) return &r;
    }
    return nullptr;
  };

  auto add = [this](const char* method, const char* pattern, Route::Fn fn) {
    routes_.push_back(Route{method, pattern, splitPath(pattern), std::move(fn)});
  };

  add("GET", "/metrics", [=, this](const AdminRequest&, const Params&) {
    AdminResponse r;
    r.contentType = "text/plain; version=0.0.4; charset=utf-8";
    r.body = metrics();
    return r;
  });
  add("GET", "/api/v1/openapi.json", [=, this](const AdminRequest&, const Params&) {
    AdminResponse r;
    r.body = kOpenApiJson;
    return r;
  });
  add("GET", "/api/v1/status", [=, this](const AdminRequest&, const Params&) {
    json listeners = json::array();
    for (const auto& l : app_.config().listeners) {
      listeners.push_back({{"name", l.name}, {"address", l.address}, {"port", l.port},
                           {"protocol", control::toString(l.protocol)}});
    }
    json pools = json::array();
    for (const auto& p : app_.config().pools) pools.push_back(poolJson(p));
    json geo = {{"entries", 0}, {"sources", json::array()}};
    if (app_.geo() != nullptr) {
      geo["entries"] = app_.geo()->db() ? app_.geo()->db()->entries() : 0;
      for (const auto& st : app_.geo()->status()) {
        geo["sources"].push_back({{"type", st.type}, {"path", st.path},
                                  {"loadedAt", st.loadedAtUnix != 0 ? rfc3339(st.loadedAtUnix) : ""},
                                  {"entries", st.entries}, {"error", st.error}});
      }
    }
    return reply(200, json{{"version", app_.version()},
                           {"uptimeS", static_cast<int64_t>(time(nullptr)) - app_.startedUnix()},
                           {"startedAt", rfc3339(app_.startedUnix())},
                           {"workers", app_.workerCount()},
                           {"listeners", listeners},
                           {"pools", pools},
                           {"geo", geo},
                           {"l4", l4Status()}});
  });
  add("GET", "/api/v1/config", [=, this](const AdminRequest&, const Params&) {
    AdminResponse r;
    r.body = control::configToJson(app_.config(), true);
    r.headers.emplace_back("Moat-Config-Version", std::to_string(app_.version()));
    return r;
  });
  add("PUT", "/api/v1/config", [=, this](const AdminRequest& rq, const Params&) {
    control::ConfigResult parsed = control::parseConfig(rq.body);
    if (!parsed.errors.empty()) return failErrors(400, "config rejected", parsed.errors);
    ApplyResult r = app_.apply(*parsed.config, "api", "PUT /api/v1/config");
    if (!r.ok) return failErrors(r.status, r.error, r.errors);
    return reply(200, json{{"version", r.version}});
  });
  add("POST", "/api/v1/config/validate", [=, this](const AdminRequest& rq, const Params&) {
    control::ConfigResult parsed = control::parseConfig(rq.body);
    json errors = json::array();
    json diff = json::array();
    std::vector<control::ConfigError> errs = parsed.errors;
    if (errs.empty()) {
      errs = app_.check(*parsed.config);
      for (const auto& d : control::diffConfigs(app_.config(), *parsed.config)) {
        json e = {{"path", d.path}};
        if (!d.oldJson.empty()) e["old"] = json::parse(d.oldJson);
        if (!d.newJson.empty()) e["new"] = json::parse(d.newJson);
        diff.push_back(e);
      }
    }
    for (const auto& e : errs) errors.push_back({{"path", e.path}, {"message", e.message}});
    return reply(200, json{{"valid", errs.empty()}, {"errors", errors}, {"diff", diff}});
  });
  add("GET", "/api/v1/config/versions", [=, this](const AdminRequest&, const Params&) {
    json versions = json::array();
    if (app_.store() != nullptr) {
      for (const auto& v : app_.store()->list()) {
        versions.push_back({{"version", v.version}, {"appliedAt", rfc3339(v.appliedAtUnix)},
                            {"source", v.source}, {"summary", v.summary}});
      }
    }
    return reply(200, json{{"current", app_.version()}, {"versions", versions}});
  });
  // A stored version named by the {version} parameter; on failure `e` is
  // the answer (400 not a number, 404 unknown).
  auto storedVersion = [this](const Params& p, control::Config& out, AdminResponse& e) {
    const std::string& v = p.at("version");
    if (v.empty() || v.size() > 19 || v.find_first_not_of("0123456789") != std::string::npos) {
      e = fail(400, "\"" + v + "\" is not a version number");
      return false;
    }
    if (app_.store() == nullptr) {
      e = fail(404, "no state directory: versions are not kept");
      return false;
    }
    std::string err;
    auto c = app_.store()->load(std::stoull(v), err);
    if (!c) {
      e = fail(404, "version " + v + ": " + err);
      return false;
    }
    out = std::move(*c);
    return true;
  };
  add("GET", "/api/v1/config/versions/{version}", [=, this](const AdminRequest&, const Params& p) {
    control::Config c;
    AdminResponse e;
    if (!storedVersion(p, c, e)) return e;
    AdminResponse r;
    r.body = control::configToJson(c, true);
    return r;
  });
  add("POST", "/api/v1/config/rollback/{version}", [=, this](const AdminRequest&, const Params& p) {
    control::Config c;
    AdminResponse e;
    if (!storedVersion(p, c, e)) return e;
    const std::string& v = p.at("version");
    ApplyResult r = app_.apply(c, "rollback", "rollback to version " + v);
    if (!r.ok) return failErrors(r.status, r.error, r.errors);
    return reply(200, json{{"version", r.version}, {"rolledBackTo", std::stoull(v)}});
  });
  add("GET", "/api/v1/pools", [=, this](const AdminRequest&, const Params&) {
    json pools = json::array();
    for (const auto& p : app_.config().pools) pools.push_back(poolJson(p));
    return reply(200, json{{"pools", pools}});
  });
  add("POST", "/api/v1/pools/{pool}/backends", [=, this](const AdminRequest& rq, const Params& p) {
    int pi = poolIndex(p.at("pool"));
    if (pi < 0) return fail(404, "no pool named " + p.at("pool"));
    std::string err;
    json body = parseBody(rq, err);
    if (!err.empty()) return fail(400, err);
    if (!body.is_object()) return fail(400, "expected an object {\"address\", \"port\", \"weight\"}");
    if (body.contains("address") && body["address"].is_string() && body.contains("port") &&
        body["port"].is_number_unsigned()) {
      for (const auto& b : app_.config().pools[static_cast<size_t>(pi)].backends) {
        if (b.port == body["port"].get<uint64_t>() && sameAddress(b.address, body["address"].get<std::string>()))
          return fail(409, "pool " + p.at("pool") + " already has backend " + control::backendKey(b));
      }
    }
    json doc = currentDoc();
    doc["pools"][static_cast<size_t>(pi)]["backends"].push_back(body);
    return applyDoc(doc, "api", "add backend to pool " + p.at("pool"), 201);
  });
  add("DELETE", "/api/v1/pools/{pool}/backends/{backend}", [=, this](const AdminRequest&, const Params& p) {
    int pi, bi;
    AdminResponse e;
    if (!findBackend(p, pi, bi, e)) return e;
    json doc = currentDoc();
    doc["pools"][static_cast<size_t>(pi)]["backends"].erase(static_cast<size_t>(bi));
    return applyDoc(doc, "api", "remove backend " + p.at("backend") + " from pool " + p.at("pool"), 200);
  });
  auto setDrain = [=, this](const Params& p, bool drain) {
    int pi, bi;
    AdminResponse e;
    if (!findBackend(p, pi, bi, e)) return e;
    json doc = currentDoc();
    doc["pools"][static_cast<size_t>(pi)]["backends"][static_cast<size_t>(bi)]["drain"] = drain;
    return applyDoc(doc, "api",
                    std::string(drain ? "drain" : "enable") + " backend " + p.at("backend") + " of pool " + p.at("pool"),
                    200);
  };
  add("POST", "/api/v1/pools/{pool}/backends/{backend}/drain",
      [=, this](const AdminRequest&, const Params& p) { return setDrain(p, true); });
  add("POST", "/api/v1/pools/{pool}/backends/{backend}/enable",
      [=, this](const AdminRequest&, const Params& p) { return setDrain(p, false); });
  add("PUT", "/api/v1/pools/{pool}/backends/{backend}/weight", [=, this](const AdminRequest& rq, const Params& p) {
    int pi, bi;
    AdminResponse e;
    if (!findBackend(p, pi, bi, e)) return e;
    std::string err;
    json body = parseBody(rq, err);
    if (!err.empty()) return fail(400, err);
    if (!body.is_object() || !body.contains("weight")) return fail(400, "expected {\"weight\": N}");
    json doc = currentDoc();
    doc["pools"][static_cast<size_t>(pi)]["backends"][static_cast<size_t>(bi)]["weight"] = body["weight"];
    return applyDoc(doc, "api", "weight of backend " + p.at("backend") + " of pool " + p.at("pool"), 200);
  });
  add("GET", "/api/v1/waf", [=, this](const AdminRequest&, const Params&) {
    json doc = currentDoc()["waf"];
    return reply(200, json{{"enabled", doc["enabled"]},
                           {"mode", doc["mode"]},
                           {"paranoia", doc["paranoia"]},
                           {"disableRules", doc["disableRules"]},
                           {"excludeTargets", doc["excludeTargets"]}});
  });
  add("PATCH", "/api/v1/waf", [=, this](const AdminRequest& rq, const Params&) {
    std::string err;
    json body = parseBody(rq, err);
    if (!err.empty()) return fail(400, err);
    if (!body.is_object()) return fail(400, "expected an object with enabled, mode, paranoia, disableRules or excludeTargets");
    json doc = currentDoc();
    std::string what;
    for (auto it = body.begin(); it != body.end(); ++it) {
      const std::string& k = it.key();
      if (k != "enabled" && k != "mode" && k != "paranoia" && k != "disableRules" && k != "excludeTargets")
        return fail(400, "waf." + k + ": not settable here (use PUT /api/v1/config)");
      doc["waf"][k] = it.value();
      what += (what.empty() ? "" : ", ") + k;
    }
    return applyDoc(doc, "api", "waf: " + what, 200);
  });
  add("GET", "/api/v1/ratelimit/rules", [=, this](const AdminRequest&, const Params&) {
    return reply(200, json{{"rules", currentDoc()["rateLimit"]["rules"]}});
  });
  add("POST", "/api/v1/ratelimit/rules", [=, this](const AdminRequest& rq, const Params&) {
    std::string err;
    json body = parseBody(rq, err);
    if (!err.empty()) return fail(400, err);
    if (!body.is_object()) return fail(400, "expected one rule object");
    std::string name = body.contains("name") && body["name"].is_string() ? body["name"].get<std::string>() : "default";
    for (const auto& r : app_.config().rateLimit.rules) {
      if (r.name == name) return fail(409, "a rate-limit rule named " + name + " exists");
    }
    json doc = currentDoc();
    doc["rateLimit"]["rules"].push_back(body);
    return applyDoc(doc, "api", "add rate-limit rule " + name, 201);
  });
  add("DELETE", "/api/v1/ratelimit/rules/{name}", [=, this](const AdminRequest&, const Params& p) {
    const auto& rules = app_.config().rateLimit.rules;
    for (size_t i = 0; i < rules.size(); ++i) {
      if (rules[i].name != p.at("name")) continue;
      json doc = currentDoc();
      doc["rateLimit"]["rules"].erase(i);
      return applyDoc(doc, "api", "remove rate-limit rule " + p.at("name"), 200);
    }
    return fail(404, "no rate-limit rule named " + p.at("name"));
  });
  auto keyOf = [=, this](const Params& p, const ratelimit::Rule*& rule, ratelimit::KeyHash& kh, AdminResponse& e) {
    rule = ruleByName(p.at("rule"));
    if (rule == nullptr) {
      e = fail(404, "no rate-limit rule named " + p.at("rule"));
      return false;
    }
    if (!app_.rateTable) {
      e = fail(404, "rate limiting is off");
      return false;
    }
    std::string err;
    if (!ratelimit::operatorKey(*rule, p.at("key"), kh, &err)) {
      e = fail(400, err);
      return false;
    }
    return true;
  };
  add("GET", "/api/v1/ratelimit/keys/{rule}/{key}", [=, this](const AdminRequest&, const Params& p) {
    const ratelimit::Rule* rule = nullptr;
    ratelimit::KeyHash kh;
    AdminResponse e;
    if (!keyOf(p, rule, kh, e)) return e;
    uint64_t nowNs = static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                               std::chrono::steady_clock::now().time_since_epoch())
                                               .count());
    // peek() answers for a hypothetical next request: what is left now is
    // one more than it reports when that request would pass.
    ratelimit::Decision d = app_.rateTable->peek(kh, rule->policy, nowNs);
    const uint64_t remaining = d.allowed ? d.remaining + 1 : 0;
    const uint64_t full = rule->policy.algorithm == ratelimit::Algorithm::kTokenBucket ? rule->policy.burst
                                                                                       : rule->policy.limit;
    bool blocked = app_.rateTable->blockedUntil(kh, nowNs) > nowNs;
    bool tracked = remaining < full || blocked;
    return reply(200, json{{"rule", rule->name}, {"key", p.at("key")}, {"tracked", tracked},
                           {"remaining", remaining}, {"limit", rule->policy.limit},
                           {"resetS", (d.resetNs + 999999999) / 1000000000}, {"blocked", blocked}});
  });
  add("DELETE", "/api/v1/ratelimit/keys/{rule}/{key}", [=, this](const AdminRequest&, const Params& p) {
    const ratelimit::Rule* rule = nullptr;
    ratelimit::KeyHash kh;
    AdminResponse e;
    if (!keyOf(p, rule, kh, e)) return e;
    bool was = app_.rateTable->reset(kh);
    logLine("info", "ratelimit: key " + p.at("key") + " of rule " + rule->name + " reset by the admin API");
    return reply(200, json{{"reset", was}});
  });
  add("GET", "/api/v1/ratelimit/top", [=, this](const AdminRequest&, const Params&) {
    l7::WorkerReport r = sumReports(app_.workers);
    json top = json::array();
    for (const auto& it : r.topOffenders) top.push_back({{"rule", it.rule}, {"key", it.key}, {"refused", it.count}});
    return reply(200, json{{"top", top}});
  });
  add("PUT", "/api/v1/tls/listeners/{listener}/certificates/{index}", [=, this](const AdminRequest& rq, const Params& p) {
    const auto& ls = app_.config().listeners;
    int li = -1;
    for (size_t i = 0; i < ls.size(); ++i) {
      if (ls[i].name == p.at("listener")) li = static_cast<int>(i);
    }
    if (li < 0) return fail(404, "no listener named " + p.at("listener"));
    if (ls[static_cast<size_t>(li)].protocol != control::ListenerProtocol::kHttps)
      return fail(409, "listener " + p.at("listener") + " is not https (the protocol changes only on restart)");
    const std::string& idxText = p.at("index");
    if (idxText.empty() || idxText.size() > 3 || idxText.find_first_not_of("0123456789") != std::string::npos)
      return fail(400, "\"" + idxText + "\" is not a certificate index");
    size_t idx = std::stoul(idxText);
    size_t count = ls[static_cast<size_t>(li)].tls.certificates.size();
    if (idx > count) return fail(404, "certificate index " + idxText + " past the end (" + std::to_string(count) + ")");
    std::string err;
    json body = parseBody(rq, err);
    if (!err.empty()) return fail(400, err);
    if (!body.is_object() || !body.contains("cert") || !body.contains("key") || !body["cert"].is_string() ||
        !body["key"].is_string())
      return fail(400, "expected {\"cert\": PEM, \"key\": PEM}");
    if (app_.store() == nullptr) return fail(409, "no state directory to keep uploaded certificates in");
    // Files named by content: a new upload never overwrites what a running
    // version uses, so a rejected upload changes nothing.
    std::string certPem = body["cert"].get<std::string>();
    std::string keyPem = body["key"].get<std::string>();
    unsigned char md[32];
    unsigned int mdLen = 0;
    std::string both = certPem + keyPem;
    EVP_Digest(both.data(), both.size(), md, &mdLen, EVP_sha256(), nullptr);
    char hex[17];
    for (int i = 0; i < 8; ++i) std::snprintf(hex + 2 * i, 3, "%02x", md[i]);
    std::string dir = app_.store()->dir() + "/certs";
    ::mkdir(dir.c_str(), 0700);
    std::string stem = p.at("listener");
    for (char& c : stem) {
      if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '-') c = '_';
    }
    std::string base = dir + "/" + stem + "-" + hex;
    auto writeFile = [=, this](const std::string& file, const std::string& data) {
      std::string tmp = file + ".tmp";
      int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
      if (fd < 0) return false;
      bool ok = ::write(fd, data.data(), data.size()) == static_cast<ssize_t>(data.size()) && ::fsync(fd) == 0;
      ::close(fd);
      return ok && ::rename(tmp.c_str(), file.c_str()) == 0;
    };
    if (!writeFile(base + ".crt", certPem) || !writeFile(base + ".key", keyPem))
      return fail(500, "cannot write certificate files under " + dir + ": " + strerror(errno));
    json doc = currentDoc();
    json cert = {{"cert", base + ".crt"}, {"key", base + ".key"}};
    auto& certs = doc["listeners"][static_cast<size_t>(li)]["tls"]["certificates"];
    if (body.contains("ocsp") && body["ocsp"].is_string() && !body["ocsp"].get<std::string>().empty()) {
      // A DER OCSP response to staple, sent as base64.
      std::string b64 = body["ocsp"].get<std::string>();
      std::string der((b64.size() / 4 + 1) * 3, '\0');
      int n = b64.size() % 4 == 0 ? EVP_DecodeBlock(reinterpret_cast<unsigned char*>(der.data()),
                                                    reinterpret_cast<const unsigned char*>(b64.data()),
                                                    static_cast<int>(b64.size()))
                                  : -1;
      if (n <= 0) return fail(400, "ocsp: not base64");
      size_t pad = b64.size() >= 2 ? (b64[b64.size() - 1] == '=') + (b64[b64.size() - 2] == '=') : 0;
      der.resize(static_cast<size_t>(n) - pad);
      if (!writeFile(base + ".ocsp", der)) return fail(500, "cannot write " + base + ".ocsp: " + strerror(errno));
      cert["ocsp"] = base + ".ocsp";
    } else if (idx < count && certs[idx].contains("ocsp")) {
      cert["ocsp"] = certs[idx]["ocsp"];
    }
    if (idx == count) certs.push_back(cert);
    else certs[idx] = cert;
    return applyDoc(doc, "api", "certificate " + idxText + " of listener " + p.at("listener"), 200);
  });
  add("DELETE", "/api/v1/tls/listeners/{listener}/certificates/{index}", [=, this](const AdminRequest&, const Params& p) {
    const auto& ls = app_.config().listeners;
    for (size_t i = 0; i < ls.size(); ++i) {
      if (ls[i].name != p.at("listener")) continue;
      const std::string& idxText = p.at("index");
      if (idxText.empty() || idxText.size() > 3 || idxText.find_first_not_of("0123456789") != std::string::npos)
        return fail(400, "\"" + idxText + "\" is not a certificate index");
      size_t idx = std::stoul(idxText);
      if (idx >= ls[i].tls.certificates.size()) return fail(404, "no certificate " + idxText);
      if (ls[i].tls.certificates.size() == 1) return fail(409, "an https listener keeps at least one certificate");
      json doc = currentDoc();
      doc["listeners"][i]["tls"]["certificates"].erase(idx);
      return applyDoc(doc, "api", "remove certificate " + idxText + " of listener " + p.at("listener"), 200);
    }
    return fail(404, "no listener named " + p.at("listener"));
  });
  add("POST", "/api/v1/geo/reload", [=, this](const AdminRequest&, const Params&) {
    if (app_.geo() == nullptr) return fail(404, "no geo sources configured");
    app_.reloadGeo();
    json sources = json::array();
    for (const auto& st : app_.geo()->status()) {
      sources.push_back({{"type", st.type}, {"path", st.path},
                         {"loadedAt", st.loadedAtUnix != 0 ? rfc3339(st.loadedAtUnix) : ""},
                         {"entries", st.entries}, {"error", st.error}});
    }
    return reply(200, json{{"entries", app_.geo()->db() ? app_.geo()->db()->entries() : 0}, {"sources", sources}});
  });
  add("GET", "/api/v1/geo/lookup/{address}", [=, this](const AdminRequest&, const Params& p) {
    l4::IpAddress a;
    if (!l4::IpAddress::parse(p.at("address"), a)) return fail(400, "\"" + p.at("address") + "\" is not an IP address");
    std::string country;
    if (app_.geo() != nullptr && app_.geo()->db()) {
      control::Country c = app_.geo()->db()->lookup(a.bytes, a.len);
      if (c != 0) country = control::countryString(c);
    }
    return reply(200, json{{"address", p.at("address")}, {"country", country}});
  });

}

std::vector<std::pair<std::string, std::string>> AdminApi::routes() const {
  std::vector<std::pair<std::string, std::string>> out{{"GET", "/healthz"}, {"GET", "/readyz"}};
  for (const auto& r : routes_) out.emplace_back(r.method, r.path);
  return out;
}

AdminResponse AdminApi::handle(const AdminRequest& req) {
  const std::string& path = req.path;
  if ((path == "/healthz" || path == "/readyz") && req.method != "GET") {
    AdminResponse r = fail(405, req.method + " is not allowed on " + path + " (allowed: GET)");
    r.headers.emplace_back("Allow", "GET");
    return r;
  }
  if (path == "/healthz" && req.method == "GET") return reply(200, json{{"status", "ok"}});
  if (path == "/readyz" && req.method == "GET") {
    bool ready = app_.ready();
    return reply(ready ? 200 : 503, json{{"ready", ready}, {"version", app_.version()}});
  }
  // Everything else needs the bearer token.
  {
    std::string auth = req.header("authorization");
    std::string given;
    if (auth.size() > 7 && strncasecmp(auth.c_str(), "Bearer ", 7) == 0) given = auth.substr(7);
    if (!control::secretEquals(given, token_)) {
      ++unauthorized_;
      AdminResponse r = fail(401, "missing or invalid bearer token");
      r.headers.emplace_back("WWW-Authenticate", "Bearer realm=\"moat\"");
      return r;
    }
  }

  // Match: decode each segment, then find the route; a known path with
  // another method is 405 with Allow.
  std::vector<std::string> raw = splitPath(path);
  std::vector<std::string> segs;
  for (const auto& r : raw) {
    std::string d;
    if (!control::percentDecode(r, d)) return fail(400, "malformed percent-encoding in the path");
    segs.push_back(d);
  }
  std::string allow;
  for (const auto& rt : routes_) {
    if (rt.pattern.size() != segs.size()) continue;
    std::map<std::string, std::string> params;
    bool match = true;
    for (size_t i = 0; i < segs.size() && match; ++i) {
      const std::string& pat = rt.pattern[i];
      if (pat.size() > 2 && pat.front() == '{' && pat.back() == '}') {
        if (segs[i].empty()) match = false;
        else params[pat.substr(1, pat.size() - 2)] = segs[i];
      } else if (pat != segs[i]) {
        match = false;
      }
    }
    if (!match) continue;
    if (rt.method == req.method) {
      AdminResponse r = rt.fn(req, params);
      if (r.status >= 400) ++apiErrors_;
      return r;
    }
    allow += (allow.empty() ? "" : ", ") + rt.method;
  }
  if (!allow.empty()) {
    AdminResponse r = fail(405, req.method + " is not allowed on " + path + " (allowed: " + allow + ")");
    r.headers.emplace_back("Allow", allow);
    return r;
  }
  return fail(404, "no such route: " + req.method + " " + path);
}

}  // namespace moat::app
