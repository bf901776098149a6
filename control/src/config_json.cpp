#include "moat/control/config_json.h"

#include <algorithm>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>

namespace moat::control {

namespace {

// ordered_json: members come out in the order written below, which follows
// docs/config.md, so a GET of the config reads like the documentation.
using Json = nlohmann::ordered_json;

std::string dumpJson(const Json& j, int indent) {
  return j.dump(indent, ' ', false, Json::error_handler_t::replace);
}

Json strings(const std::vector<std::string>& v) {
  Json a = Json::array();
  for (const std::string& s : v) a.push_back(s);
  return a;
}

Json listenerTlsJson(const TlsListenerConfig& t) {
  Json j;
  Json certs = Json::array();
  for (const TlsCertificateConfig& c : t.certificates) {
    certs.push_back(Json{{"cert", c.cert}, {"key", c.key}, {"ocsp", c.ocsp}});
  }
  j["certificates"] = std::move(certs);
  j["minVersion"] = t.allowTls12 ? "1.2" : "1.3";
  j["ciphersuites"] = t.ciphersuites;
  j["ciphers"] = t.ciphers;
  j["groups"] = t.groups;
  j["alpn"] = strings(t.alpn);
  j["sessionTickets"] = t.sessionTickets;
  j["ticketKeyFile"] = t.ticketKeyFile;
  j["ticketRotateS"] = t.ticketRotateS;
  // parseConfig requires caFile whenever clientAuth is present.
  if (!t.clientAuth.caFile.empty()) {
    j["clientAuth"] = Json{{"caFile", t.clientAuth.caFile},
                           {"required", t.clientAuth.required},
                           {"subjectHeader", t.clientAuth.subjectHeader}};
  }
  return j;
}

Json listenerJson(const ListenerConfig& l) {
  Json j;
  j["name"] = l.name;
  j["address"] = l.address;
  j["port"] = l.port;
  j["protocol"] = toString(l.protocol);
  j["proxyProtocol"] = l.proxyProtocol;
  // parseConfig refuses "tls" on an http listener.
  if (l.protocol == ListenerProtocol::kHttps) j["tls"] = listenerTlsJson(l.tls);
  if (l.geo.enabled) {
    j["geo"] = Json{{"mode", l.geo.allowMode ? "allow" : "deny"},
                    {"countries", strings(l.geo.countries)},
                    {"allowCidrs", strings(l.geo.allowCidrs)},
                    {"denyCidrs", strings(l.geo.denyCidrs)}};
  }
  return j;
}

Json expectStatusJson(const HealthCheckConfig& h) {
  if (h.expectStatusMin == h.expectStatusMax) return Json(h.expectStatusMin);
  return Json(std::to_string(h.expectStatusMin) + "-" + std::to_string(h.expectStatusMax));
}

Json poolJson(const PoolConfig& p) {
  Json j;
  j["name"] = p.name;
  j["balance"] = toString(p.balance);
  j["maglevTableSize"] = p.maglevTableSize;
  j["maxIdlePerWorker"] = p.maxIdlePerWorker;
  Json backends = Json::array();
  for (const BackendConfig& b : p.backends) {
    backends.push_back(Json{
        {"address", b.address}, {"port", b.port}, {"weight", b.weight}, {"drain", b.drain}});
  }
  j["backends"] = std::move(backends);
  if (p.tls.enabled) {
    j["tls"] = Json{{"caFile", p.tls.caFile}, {"verify", p.tls.verify}, {"sni", p.tls.sni}};
  }
  if (p.healthCheck.enabled) {
    const HealthCheckConfig& h = p.healthCheck;
    j["healthCheck"] = Json{{"type", toString(h.type)},
                            {"intervalMs", h.intervalMs},
                            {"timeoutMs", h.timeoutMs},
                            {"rise", h.rise},
                            {"fall", h.fall},
                            {"jitterPct", h.jitterPct},
                            {"path", h.path},
                            {"host", h.host},
                            {"expectStatus", expectStatusJson(h)},
                            {"bodyContains", h.bodyContains}};
  }
  if (p.outlierDetection.enabled) {
    const OutlierDetectionConfig& o = p.outlierDetection;
    j["outlierDetection"] = Json{{"consecutiveFailures", o.consecutiveFailures},
                                 {"baseEjectMs", o.baseEjectMs},
                                 {"maxEjectMs", o.maxEjectMs},
                                 {"maxEjectPercent", o.maxEjectPercent}};
  }
  return j;
}

std::string rateLimitKeyText(const RateLimitRuleConfig& r) {
  switch (r.key) {
    case RateLimitKey::kIp: return "ip";
    case RateLimitKey::kIpRoute: return "ip_route";
    case RateLimitKey::kHeader: return "header:" + r.keyName;
    case RateLimitKey::kCookie: return "cookie:" + r.keyName;
  }
  return "ip";
}

Json rateLimitRuleJson(const RateLimitRuleConfig& r) {
  Json j;
  j["name"] = r.name;
  j["algorithm"] = toString(r.algorithm);
  j["limit"] = r.limit;
  j["periodS"] = r.periodS;
  // burst 0 means "= limit" and cannot be written (1..); a sliding window
  // refuses the field altogether.
  if (r.algorithm == RateLimitAlgorithm::kTokenBucket && r.burst != 0) j["burst"] = r.burst;
  j["key"] = rateLimitKeyText(r);
  j["ipv4Prefix"] = r.ipv4Prefix;
  j["ipv6Prefix"] = r.ipv6Prefix;
  j["listeners"] = strings(r.listeners);
  j["hosts"] = strings(r.hosts);
  j["pathPrefixes"] = strings(r.pathPrefixes);
  j["dryRun"] = r.dryRun;
  j["headers"] = r.headers;
  return j;
}

Json rateLimitJson(const RateLimitConfig& rl) {
  Json j;
  j["enabled"] = rl.enabled;
  j["maxKeys"] = rl.maxKeys;
  j["trustedProxies"] = strings(rl.trustedProxies);
  j["allow"] = strings(rl.allow);
  j["deny"] = strings(rl.deny);
  j["escalation"] = Json{{"after", rl.escalateAfter}, {"cooldownS", rl.escalateCooldownS}};
  Json rules = Json::array();
  for (const RateLimitRuleConfig& r : rl.rules) rules.push_back(rateLimitRuleJson(r));
  j["rules"] = std::move(rules);
  return j;
}

Json wafJson(const WafConfig& w) {
  Json j;
  j["enabled"] = w.enabled;
  j["mode"] = w.detectOnly ? "detect" : "block";
  j["paranoia"] = w.paranoia;
  j["inboundThreshold"] = w.inboundThreshold;
  j["outboundThreshold"] = w.outboundThreshold;
  j["setup"] = w.setup;
  j["rules"] = strings(w.rules);
  j["unicodeMap"] = w.unicodeMap;
  j["requestBodyLimit"] = w.requestBodyLimit;
  j["bodyLimitAction"] = w.bodyLimitReject ? "reject" : "inspect";
  j["cacheDir"] = w.cacheDir;
  j["auditLog"] = w.auditLog;
  Json disable = Json::array();
  for (uint32_t id : w.disableRules) disable.push_back(id);
  j["disableRules"] = std::move(disable);
  Json exclude = Json::array();
  for (const WafTargetExclusion& x : w.excludeTargets) {
    exclude.push_back(Json{{"rule", x.rule}, {"target", x.target}});
  }
  j["excludeTargets"] = std::move(exclude);
  return j;
}

Json geoJson(const GeoConfig& g) {
  Json sources = Json::array();
  for (const GeoSourceConfig& s : g.sources) {
    Json j;
    j["type"] = toString(s.type);
    if (s.type == GeoSourceType::kMaxmindCsv) {
      j["blocksIpv4"] = s.blocksIpv4;
      j["blocksIpv6"] = s.blocksIpv6;
      j["locations"] = s.locations;
    } else {
      j["path"] = s.path;
    }
    sources.push_back(std::move(j));
  }
  return Json{{"sources", std::move(sources)}};
}

Json l4Json(const L4Config& c) {
  Json j;
  j["engine"] = toString(c.engine);
  j["localIpv4"] = c.localIpv4;
  j["localIpv6"] = c.localIpv6;
  j["mtu"] = c.mtu;
  Json services = Json::array();
  for (const L4ServiceConfig& s : c.services) {
    services.push_back(Json{{"name", s.name},
                            {"address", s.address},
                            {"port", s.port},
                            {"protocol", toString(s.protocol)},
                            {"pool", s.pool},
                            {"forwarding", toString(s.forwarding)},
                            {"guePort", s.guePort},
                            {"onBackendDown", toString(s.onBackendDown)}});
  }
  j["services"] = std::move(services);
  j["denyCidrs"] = strings(c.denyCidrs);
  j["geoDeny"] = strings(c.geoDeny);
  j["synLimit"] = Json{{"perSecond", c.synLimit.perSecond}, {"burst", c.synLimit.burst}};
  j["flows"] = Json{{"maxPerWorker", c.flows.maxPerWorker},
                    {"synTimeoutS", c.flows.synTimeoutS},
                    {"establishedTimeoutS", c.flows.establishedTimeoutS},
                    {"closingTimeoutS", c.flows.closingTimeoutS},
                    {"udpTimeoutS", c.flows.udpTimeoutS}};
  Json neighbors = Json::array();
  for (const L4NeighborConfig& n : c.neighbors) {
    neighbors.push_back(Json{{"address", n.address}, {"mac", n.mac}});
  }
  j["neighbors"] = std::move(neighbors);
  Json lcores = Json::array();
  for (uint32_t l : c.dpdk.lcores) lcores.push_back(l);
  j["dpdk"] = Json{{"lcores", std::move(lcores)},
                   {"mainLcore", c.dpdk.mainLcore},
                   {"noHuge", c.dpdk.noHuge},
                   {"memoryMb", c.dpdk.memoryMb},
                   {"port", c.dpdk.port},
                   {"eal", strings(c.dpdk.eal)},
                   {"exceptionTap", c.dpdk.exceptionTap},
                   {"rxDescriptors", c.dpdk.rxDescriptors},
                   {"txDescriptors", c.dpdk.txDescriptors},
                   {"mbufsPerLcore", c.dpdk.mbufsPerLcore},
                   {"burst", c.dpdk.burst},
                   {"txDrainUs", c.dpdk.txDrainUs}};
  return j;
}

Json toJson(const Config& c) {
  Json j;
  j["workers"] = c.workers;
  Json listeners = Json::array();
  for (const ListenerConfig& l : c.listeners) listeners.push_back(listenerJson(l));
  j["listeners"] = std::move(listeners);
  Json pools = Json::array();
  for (const PoolConfig& p : c.pools) pools.push_back(poolJson(p));
  j["pools"] = std::move(pools);
  Json routes = Json::array();
  for (const RouteConfig& r : c.routes) {
    routes.push_back(
        Json{{"host", r.host}, {"pathPrefix", r.pathPrefix}, {"pool", r.pool}, {"waf", r.waf}});
  }
  j["routes"] = std::move(routes);
  j["timeouts"] = Json{{"connectMs", c.timeouts.connectMs},
                       {"requestHeaderMs", c.timeouts.requestHeaderMs},
                       {"idleMs", c.timeouts.idleMs},
                       {"upstreamResponseMs", c.timeouts.upstreamResponseMs}};
  j["limits"] = Json{{"maxHeaderBytes", c.limits.maxHeaderBytes},
                     {"maxRequestLine", c.limits.maxRequestLine},
                     {"maxHeaders", c.limits.maxHeaders}};
  j["logging"] = Json{{"level", toString(c.logging.level)}, {"accessLog", c.logging.accessLog}};
  j["rateLimit"] = rateLimitJson(c.rateLimit);
  j["waf"] = wafJson(c.waf);
  j["geo"] = geoJson(c.geo);
  j["l4"] = l4Json(c.l4);
  return j;
}

std::string joinPath(const std::string& path, const std::string& key) {
  return path.empty() ? key : path + "." + key;
}

std::string indexPath(const std::string& path, size_t i) {
  return path + "[" + std::to_string(i) + "]";
}

void diff(const Json& a, const Json& b, const std::string& path,
          std::vector<ConfigDiffEntry>& out) {
  if (a.is_object() && b.is_object()) {
    for (const auto& m : a.items()) {
      auto it = b.find(m.key());
      if (it == b.end()) {
        out.push_back({joinPath(path, m.key()), dumpJson(m.value(), -1), ""});
      } else {
        diff(m.value(), *it, joinPath(path, m.key()), out);
      }
    }
    for (const auto& m : b.items()) {
      if (!a.contains(m.key())) {
        out.push_back({joinPath(path, m.key()), "", dumpJson(m.value(), -1)});
      }
    }
  } else if (a.is_array() && b.is_array()) {
    const size_t common = std::min(a.size(), b.size());
    for (size_t i = 0; i < common; ++i) diff(a[i], b[i], indexPath(path, i), out);
    for (size_t i = common; i < a.size(); ++i) {
      out.push_back({indexPath(path, i), dumpJson(a[i], -1), ""});
    }
    for (size_t i = common; i < b.size(); ++i) {
      out.push_back({indexPath(path, i), "", dumpJson(b[i], -1)});
    }
  } else if (a != b) {
    out.push_back({path, dumpJson(a, -1), dumpJson(b, -1)});
  }
}

}  // namespace

std::string configToJson(const Config& c, bool pretty) {
  return dumpJson(toJson(c), pretty ? 2 : -1);
}

std::vector<ConfigDiffEntry> diffConfigs(const Config& before, const Config& after) {
  std::vector<ConfigDiffEntry> out;
  diff(toJson(before), toJson(after), "", out);
  return out;
}

}  // namespace moat::control
