#include "moat/control/config.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstring>
#include <exception>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <unordered_map>
#include <utility>

#include "moat/l4/cidr.h"
#include "moat/l4/maglev.h"
#include "moat/ratelimit/limiter.h"

namespace moat::control {

namespace {

// ordered_json keeps object members in document order, so errors come out in
// the order an operator reads the file.
using Json = nlohmann::ordered_json;

constexpr int64_t kMaxWorkers = 256;
constexpr int64_t kMaxWeight = 1000;
constexpr int64_t kMaxIdlePerWorker = 10000;  // per backend per worker: bounds pooled sockets
constexpr int64_t kMinTimeoutMs = 1;
constexpr int64_t kMaxTimeoutMs = 3600000;
constexpr int64_t kMinHeaderBytes = 1024;
constexpr int64_t kMaxHeaderBytes = 1048576;
constexpr int64_t kMinRequestLine = 256;
constexpr int64_t kMaxHeadersLimit = 128;
// 4 MiB of uint32 per pool; larger tables buy nothing measurable.
constexpr int64_t kMaxMaglevTableSize = 1000003;
constexpr int64_t kMaxRateLimitKeys = 100000000;  // 2.8 GB of table: beyond that, shard
constexpr int64_t kMaxRateLimitPeriodS = 86400;
constexpr int64_t kMaxRateLimitCount = 1000000000;
constexpr int64_t kMaxRateLimitRules = 64;
// Health checks: at least 10 checks a second per backend would be a probe
// flood, and a check that may take a minute says nothing useful.
constexpr int64_t kMinCheckIntervalMs = 100;
constexpr int64_t kMaxCheckIntervalMs = 3600000;
constexpr int64_t kMinCheckTimeoutMs = 10;
constexpr int64_t kMaxCheckTimeoutMs = 60000;
constexpr int64_t kMaxRiseFall = 100;
constexpr int64_t kMaxJitterPct = 50;
constexpr int64_t kMaxConsecutiveFailures = 1000;
constexpr int64_t kMinEjectMs = 100;
constexpr int64_t kMaxBaseEjectMs = 3600000;
constexpr int64_t kMaxEjectMs = 86400000;  // one day: longer is an outage, not an outlier

std::string join(const std::string& path, std::string_view key) {
  return path.empty() ? std::string(key) : path + "." + std::string(key);
}

std::string indexed(const std::string& path, size_t i) {
  return path + "[" + std::to_string(i) + "]";
}

// JSON-style quoting; invalid UTF-8 (possible in a file name) is replaced, not thrown.
std::string jsonQuote(std::string_view s) {
  return Json(std::string(s)).dump(-1, ' ', false, Json::error_handler_t::replace);
}

const char* typeName(const Json& j) {
  switch (j.type()) {
    case Json::value_t::null: return "null";
    case Json::value_t::boolean: return "boolean";
    case Json::value_t::string: return "string";
    case Json::value_t::array: return "array";
    case Json::value_t::object: return "object";
    case Json::value_t::binary: return "binary";
    case Json::value_t::discarded: return "nothing";
    default: return "number";
  }
}

// Canonical text of an IP literal ("::0001" -> "::1"), or nullopt.
std::optional<std::string> canonicalIp(const std::string& text, bool* isV6) {
  unsigned char buf[sizeof(in6_addr)];
  char out[INET6_ADDRSTRLEN];
  if (inet_pton(AF_INET, text.c_str(), buf) == 1) {
    *isV6 = false;
    if (inet_ntop(AF_INET, buf, out, sizeof out) == nullptr) return std::nullopt;
    return std::string(out);
  }
  if (inet_pton(AF_INET6, text.c_str(), buf) == 1) {
    *isV6 = true;
    if (inet_ntop(AF_INET6, buf, out, sizeof out) == nullptr) return std::nullopt;
    return std::string(out);
  }
  return std::nullopt;
}

std::string hostPort(const std::string& address, bool isV6, uint16_t port) {
  return (isV6 ? "[" + address + "]" : address) + ":" + std::to_string(port);
}

// Tracks object keys while parsing to report duplicates, which nlohmann
// otherwise resolves silently (last one wins).
class DuplicateKeyFinder {
 public:
  explicit DuplicateKeyFinder(std::vector<ConfigError>* errors) : errors_(errors) {}

  bool operator()(int /*depth*/, Json::parse_event_t event, Json& parsed) {
    using E = Json::parse_event_t;
    switch (event) {
      case E::object_start:
      case E::array_start:
        frames_.push_back(Frame{event == E::array_start, 0, {}, {}});
        break;
      case E::key: {
        Frame& f = frames_.back();
        f.key = parsed.get<std::string>();
        if (!f.keys.insert(f.key).second) {
          errors_->push_back({childPath(), "duplicate field"});
        }
        break;
      }
      case E::object_end:
      case E::array_end:
        frames_.pop_back();
        valueDone();
        break;
      case E::value:
        valueDone();
        break;
    }
    return true;
  }

 private:
  struct Frame {
    bool isArray;
    size_t index;
    std::string key;
    std::set<std::string> keys;
  };

  void valueDone() {
    if (!frames_.empty() && frames_.back().isArray) ++frames_.back().index;
  }

  std::string childPath() const {
    std::string p;
    for (const Frame& f : frames_) p = f.isArray ? indexed(p, f.index) : join(p, f.key);
    return p;
  }

  std::vector<ConfigError>* errors_;
  std::vector<Frame> frames_;
};

class Validator {
 public:
  std::vector<ConfigError> errors;

  void run(const Json& root) {
    if (!root.is_object()) {
      wrongType(root, "", "an object");
      return;
    }
    prescanPoolNames(root);
    bool sawListeners = false;
    for (const auto& member : root.items()) {
      const std::string& key = member.key();
      const Json& v = member.value();
      if (key == "workers") {
        uintInRange(v, key, 0, kMaxWorkers, "", &config_.workers);
      } else if (key == "listeners") {
        sawListeners = true;
        listeners(v, key);
      } else if (key == "pools") {
        pools(v, key);
      } else if (key == "routes") {
        routes(v, key);
      } else if (key == "timeouts") {
        timeouts(v, key);
      } else if (key == "limits") {
        limits(v, key);
      } else if (key == "logging") {
        logging(v, key);
      } else if (key == "rateLimit") {
        rateLimit(v, key);
      } else if (key == "waf") {
        waf(v, key);
      } else if (key == "geo") {
        geo(v, key);
      } else if (key == "l4") {
        l4(v, key);
      } else {
        unknown(key, "workers, listeners, pools, routes, timeouts, limits, logging, rateLimit, "
                     "waf, geo, l4");
      }
    }
    if (!sawListeners) error("listeners", "missing required field");
    // Rules name listeners that must exist (checked once all are known).
    for (const auto& [path, name] : ruleListenerRefs_) {
      bool found = false;
      for (const ListenerConfig& l : config_.listeners) found = found || l.name == name;
      if (!found) error(path, "no listener named " + jsonQuote(name));
    }
    // Country lists need a database (geo may follow the listeners).
    if (config_.geo.sources.empty()) {
      if (!config_.l4.geoDeny.empty()) {
        error("l4.geoDeny", "needs geo.sources (a country database) to look countries up");
      }
      for (const std::string& path : geoCountryRefs_) {
        error(path, "needs geo.sources (a country database) to look countries up");
      }
    }
  }

  Config take() { return std::move(config_); }

 private:
  void error(std::string path, std::string message) {
    errors.push_back({std::move(path), std::move(message)});
  }

  void unknown(const std::string& path, const char* allowed) {
    error(path, std::string("unknown field (expected one of: ") + allowed + ")");
  }

  void wrongType(const Json& j, const std::string& path, const char* expected) {
    error(path, std::string("expected ") + expected + ", got " + typeName(j));
  }

  std::optional<std::string> string(const Json& j, const std::string& path) {
    if (!j.is_string()) {
      wrongType(j, path, "a string");
      return std::nullopt;
    }
    return j.get<std::string>();
  }

  // Integers only: 8080.0 and "8080" are rejected, as is true.
  bool isInteger(const Json& j, const std::string& path) {
    if (j.is_number_integer()) return true;
    if (j.is_number_float()) {
      error(path, "expected an integer, got " + j.dump());
    } else {
      wrongType(j, path, "an integer");
    }
    return false;
  }

  // Every range here is non-negative, so a negative integer is always out.
  static bool inRange(const Json& j, int64_t lo, int64_t hi) {
    if (!j.is_number_unsigned()) return false;
    uint64_t v = j.get<uint64_t>();
    return v >= static_cast<uint64_t>(lo) && v <= static_cast<uint64_t>(hi);
  }

  bool uintInRange(const Json& j, const std::string& path, int64_t lo, int64_t hi,
                   const char* unit, uint32_t* out) {
    if (!isInteger(j, path)) return false;
    if (!inRange(j, lo, hi)) {
      error(path, "must be " + std::to_string(lo) + ".." + std::to_string(hi) + unit + ", got " +
                      j.dump());
      return false;
    }
    *out = static_cast<uint32_t>(j.get<uint64_t>());
    return true;
  }

  std::optional<uint16_t> port(const Json& j, const std::string& path) {
    if (!isInteger(j, path)) return std::nullopt;
    if (!j.is_number_unsigned() || j.get<uint64_t>() < 1 || j.get<uint64_t>() > 65535) {
      error(path, j.dump() + " is not a port");
      return std::nullopt;
    }
    return static_cast<uint16_t>(j.get<uint64_t>());
  }

  // Returns the canonical form for duplicate detection.
  std::optional<std::string> address(const Json& j, const std::string& path, std::string* out,
                                     bool* isV6) {
    std::optional<std::string> s = string(j, path);
    if (!s) return std::nullopt;
    std::optional<std::string> canon = canonicalIp(*s, isV6);
    if (!canon) {
      error(path, jsonQuote(*s) +
                      " is not an IPv4 or IPv6 address literal (hostnames are not supported yet)");
      return std::nullopt;
    }
    *out = *s;
    return canon;
  }

  bool array(const Json& j, const std::string& path) {
    if (j.is_array()) return true;
    wrongType(j, path, "an array");
    return false;
  }

  bool object(const Json& j, const std::string& path) {
    if (j.is_object()) return true;
    wrongType(j, path, "an object");
    return false;
  }

  void prescanPoolNames(const Json& root) {
    auto it = root.find("pools");
    if (it == root.end() || !it->is_array()) return;
    for (const Json& p : *it) {
      if (!p.is_object()) continue;
      auto name = p.find("name");
      if (name != p.end() && name->is_string()) poolNames_.insert(name->get<std::string>());
    }
  }

  void listeners(const Json& j, const std::string& path) {
    if (!array(j, path)) return;
    if (j.empty()) error(path, "at least one listener is required");
    std::unordered_map<std::string, std::string> byEndpoint;  // canonical addr:port -> path
    std::unordered_map<std::string, std::string> byName;
    for (size_t i = 0; i < j.size(); ++i) {
      const std::string lp = indexed(path, i);
      const Json& l = j[i];
      if (!object(l, lp)) continue;
      ListenerConfig lc;
      std::optional<std::string> name;
      std::optional<std::string> canon;
      std::optional<uint16_t> p;
      bool isV6 = false;
      bool sawAddress = false;
      bool sawPort = false;
      bool sawTls = false;
      bool nameOk = true;
      for (const auto& m : l.items()) {
        const std::string fp = join(lp, m.key());
        if (m.key() == "name") {
          name = string(m.value(), fp);
          if (name && name->empty()) {
            error(fp, "must not be empty");
            name.reset();
          }
          nameOk = name.has_value();
        } else if (m.key() == "address") {
          sawAddress = true;
          canon = address(m.value(), fp, &lc.address, &isV6);
        } else if (m.key() == "port") {
          sawPort = true;
          p = port(m.value(), fp);
        } else if (m.key() == "protocol") {
          std::optional<std::string> s = string(m.value(), fp);
          if (s && *s == "https") {
            lc.protocol = ListenerProtocol::kHttps;
          } else if (s && *s != "http") {
            error(fp, "unknown protocol " + jsonQuote(*s) + " (allowed: http, https)");
          }
        } else if (m.key() == "proxyProtocol") {
          boolean(m.value(), fp, &lc.proxyProtocol);
        } else if (m.key() == "tls") {
          sawTls = true;
          listenerTls(m.value(), fp, &lc.tls);
        } else if (m.key() == "geo") {
          listenerGeo(m.value(), fp, &lc.geo);
        } else {
          unknown(fp, "name, address, port, protocol, proxyProtocol, tls, geo");
        }
      }
      if (lc.protocol == ListenerProtocol::kHttps && !sawTls) {
        error(join(lp, "tls"), "required for protocol \"https\" (certificates)");
      } else if (lc.protocol != ListenerProtocol::kHttps && sawTls) {
        error(join(lp, "tls"), "only for protocol \"https\"");
      }
      if (!sawAddress) error(join(lp, "address"), "missing required field");
      if (!sawPort) error(join(lp, "port"), "missing required field");
      if (canon && p) {
        lc.port = *p;
        std::string endpoint = hostPort(*canon, isV6, *p);
        auto [it, fresh] = byEndpoint.emplace(endpoint, lp);
        if (!fresh) error(lp, "duplicate listener " + endpoint + " (also " + it->second + ")");
        lc.name = name ? *name : hostPort(lc.address, isV6, *p);
      } else if (name) {
        lc.name = *name;
      }
      if (nameOk && !lc.name.empty()) {
        auto [it, fresh] = byName.emplace(lc.name, lp);
        if (!fresh) {
          error(name ? join(lp, "name") : lp,
                "duplicate listener name " + jsonQuote(lc.name) + " (also " + it->second + ")");
        }
      }
      config_.listeners.push_back(std::move(lc));
    }
  }

  // A header name as the proxy compares them: lowercase token characters.
  bool headerName(const Json& j, const std::string& path, std::string* out) {
    std::optional<std::string> s = string(j, path);
    if (!s) return false;
    if (s->empty()) {
      *out = "";
      return true;
    }
    std::string lower;
    for (char ch : *s) {
      const auto c = static_cast<unsigned char>(ch);
      if (!(std::isalnum(c) || c == '-' || c == '_')) {
        error(path, jsonQuote(*s) + " is not a header name (letters, digits, '-', '_')");
        return false;
      }
      lower.push_back(static_cast<char>(std::tolower(c)));
    }
    *out = lower;
    return true;
  }

  // The files named here are read and checked when the TLS contexts are
  // built (l7/tls.h), which reports errors with these same JSON paths.
  void listenerTls(const Json& j, const std::string& path, TlsListenerConfig* t) {
    if (!object(j, path)) return;
    bool sawCerts = false;
    for (const auto& m : j.items()) {
      const std::string fp = join(path, m.key());
      const Json& v = m.value();
      if (m.key() == "certificates") {
        sawCerts = true;
        if (!array(v, fp)) continue;
        if (v.empty()) error(fp, "at least one certificate is required");
        for (size_t i = 0; i < v.size(); ++i) {
          const std::string cp = indexed(fp, i);
          if (!object(v[i], cp)) continue;
          TlsCertificateConfig c;
          for (const auto& f : v[i].items()) {
            const std::string ffp = join(cp, f.key());
            if (f.key() == "cert") {
              if (auto x = string(f.value(), ffp)) c.cert = *x;
            } else if (f.key() == "key") {
              if (auto x = string(f.value(), ffp)) c.key = *x;
            } else if (f.key() == "ocsp") {
              if (auto x = string(f.value(), ffp)) c.ocsp = *x;
            } else {
              unknown(ffp, "cert, key, ocsp");
            }
          }
          if (c.cert.empty()) error(join(cp, "cert"), "missing required field");
          if (c.key.empty()) error(join(cp, "key"), "missing required field");
          t->certificates.push_back(std::move(c));
        }
      } else if (m.key() == "minVersion") {
        std::optional<std::string> s = string(v, fp);
        if (s && *s != "1.2" && *s != "1.3") {
          error(fp, "must be \"1.2\" or \"1.3\", got " + jsonQuote(*s) +
                        " (TLS 1.0 and 1.1 are not offered)");
        } else if (s) {
          t->allowTls12 = *s == "1.2";
        }
      } else if (m.key() == "ciphersuites") {
        if (auto x = string(v, fp)) t->ciphersuites = *x;
      } else if (m.key() == "ciphers") {
        if (auto x = string(v, fp)) t->ciphers = *x;
      } else if (m.key() == "groups") {
        if (auto x = string(v, fp)) t->groups = *x;
      } else if (m.key() == "alpn") {
        stringList(v, fp, &t->alpn, [&](const std::string& s, const std::string& ip) {
          if (s.empty() || s.size() > 255) {
            error(ip, "an ALPN protocol name is 1..255 bytes");
            return false;
          }
          if (s != "http/1.1" && s != "http/1.0") {
            error(ip, jsonQuote(s) + " is not a protocol this listener speaks (http/1.1, http/1.0)");
            return false;
          }
          return true;
        });
      } else if (m.key() == "sessionTickets") {
        boolean(v, fp, &t->sessionTickets);
      } else if (m.key() == "ticketKeyFile") {
        if (auto x = string(v, fp)) t->ticketKeyFile = *x;
      } else if (m.key() == "ticketRotateS") {
        uintInRange(v, fp, 60, 7 * 86400, " seconds", &t->ticketRotateS);
      } else if (m.key() == "clientAuth") {
        if (!object(v, fp)) continue;
        for (const auto& f : v.items()) {
          const std::string ffp = join(fp, f.key());
          if (f.key() == "caFile") {
            if (auto x = string(f.value(), ffp)) t->clientAuth.caFile = *x;
          } else if (f.key() == "required") {
            boolean(f.value(), ffp, &t->clientAuth.required);
          } else if (f.key() == "subjectHeader") {
            headerName(f.value(), ffp, &t->clientAuth.subjectHeader);
          } else {
            unknown(ffp, "caFile, required, subjectHeader");
          }
        }
        if (t->clientAuth.caFile.empty()) error(join(fp, "caFile"), "missing required field");
      } else {
        unknown(fp, "certificates, minVersion, ciphersuites, ciphers, groups, alpn, "
                    "sessionTickets, ticketKeyFile, ticketRotateS, clientAuth");
      }
    }
    if (!sawCerts) error(join(path, "certificates"), "missing required field");
  }

  void upstreamTls(const Json& j, const std::string& path, UpstreamTlsConfig* t) {
    if (!object(j, path)) return;
    t->enabled = true;
    for (const auto& m : j.items()) {
      const std::string fp = join(path, m.key());
      const Json& v = m.value();
      if (m.key() == "caFile") {
        if (auto x = string(v, fp)) t->caFile = *x;
      } else if (m.key() == "verify") {
        boolean(v, fp, &t->verify);
      } else if (m.key() == "sni") {
        if (auto x = string(v, fp)) {
          if (x->size() > 253) {
            error(fp, "a server name is at most 253 bytes");
          } else {
            t->sni = *x;
          }
        }
      } else {
        unknown(fp, "caFile, verify, sni");
      }
    }
  }

  void pools(const Json& j, const std::string& path) {
    if (!array(j, path)) return;
    std::unordered_map<std::string, std::string> byName;
    for (size_t i = 0; i < j.size(); ++i) {
      const std::string pp = indexed(path, i);
      const Json& p = j[i];
      if (!object(p, pp)) continue;
      PoolConfig pc;
      // Looked up ahead so the table-size check can sit at its own field.
      std::optional<BalanceAlgorithm> balance = BalanceAlgorithm::kRoundRobin;
      if (auto b = p.find("balance"); b != p.end()) balance = parseBalance(*b);
      size_t backendCount = 0;
      if (auto b = p.find("backends"); b != p.end() && b->is_array()) backendCount = b->size();
      bool sawName = false;
      bool sawTableSize = false;
      for (const auto& m : p.items()) {
        const std::string fp = join(pp, m.key());
        if (m.key() == "name") {
          sawName = true;
          std::optional<std::string> name = string(m.value(), fp);
          if (name && name->empty()) {
            error(fp, "must not be empty");
          } else if (name) {
            pc.name = *name;
            auto [it, fresh] = byName.emplace(*name, pp);
            if (!fresh) {
              error(fp, "duplicate pool name " + jsonQuote(*name) + " (also " + it->second + ")");
            }
          }
        } else if (m.key() == "balance") {
          std::optional<std::string> s = string(m.value(), fp);
          if (s && !balance) {
            error(fp, "unknown balance " + jsonQuote(*s) +
                          " (allowed: round_robin, least_connections, maglev)");
          }
          if (balance) pc.balance = *balance;
        } else if (m.key() == "maglevTableSize") {
          sawTableSize = true;
          tableSize(m.value(), fp, balance, backendCount, &pc.maglevTableSize);
        } else if (m.key() == "maxIdlePerWorker") {
          uintInRange(m.value(), fp, 0, kMaxIdlePerWorker, "", &pc.maxIdlePerWorker);
        } else if (m.key() == "backends") {
          backends(m.value(), fp, &pc.backends);
        } else if (m.key() == "tls") {
          upstreamTls(m.value(), fp, &pc.tls);
        } else if (m.key() == "healthCheck") {
          healthCheck(m.value(), fp, &pc.healthCheck);
        } else if (m.key() == "outlierDetection") {
          outlierDetection(m.value(), fp, &pc.outlierDetection);
        } else {
          unknown(fp, "name, balance, maglevTableSize, maxIdlePerWorker, backends, tls, "
                      "healthCheck, outlierDetection");
        }
      }
      if (!sawName) error(join(pp, "name"), "missing required field");
      if (!sawTableSize && balance == BalanceAlgorithm::kMaglev &&
          pc.maglevTableSize <= backendCount) {
        error(join(pp, "maglevTableSize"),
              "the default " + std::to_string(pc.maglevTableSize) +
                  " must be larger than the number of backends (" +
                  std::to_string(backendCount) + ")");
      }
      config_.pools.push_back(std::move(pc));
    }
  }

  static std::optional<BalanceAlgorithm> parseBalance(const Json& j) {
    if (!j.is_string()) return std::nullopt;
    const std::string& s = j.get_ref<const std::string&>();
    if (s == "round_robin") return BalanceAlgorithm::kRoundRobin;
    if (s == "least_connections") return BalanceAlgorithm::kLeastConnections;
    if (s == "maglev") return BalanceAlgorithm::kMaglev;
    return std::nullopt;
  }

  void tableSize(const Json& j, const std::string& path, std::optional<BalanceAlgorithm> balance,
                 size_t backendCount, uint32_t* out) {
    uint32_t size = 0;
    if (!uintInRange(j, path, 2, kMaxMaglevTableSize, "", &size)) return;
    if (!l4::isPrime(size)) {
      error(path, std::to_string(size) + " is not prime (try 65537)");
      return;
    }
    // Only a Maglev pool builds a table; other pools ignore the size.
    if (balance == BalanceAlgorithm::kMaglev && size <= backendCount) {
      error(path, std::to_string(size) + " must be larger than the number of backends (" +
                      std::to_string(backendCount) + ")");
      return;
    }
    *out = size;
  }

  void backends(const Json& j, const std::string& path, std::vector<BackendConfig>* out) {
    if (!array(j, path)) return;
    for (size_t i = 0; i < j.size(); ++i) {
      const std::string bp = indexed(path, i);
      const Json& b = j[i];
      if (!object(b, bp)) continue;
      BackendConfig bc;
      bool sawAddress = false;
      bool sawPort = false;
      for (const auto& m : b.items()) {
        const std::string fp = join(bp, m.key());
        if (m.key() == "address") {
          sawAddress = true;
          bool isV6 = false;
          address(m.value(), fp, &bc.address, &isV6);
        } else if (m.key() == "port") {
          sawPort = true;
          if (auto p = port(m.value(), fp)) bc.port = *p;
        } else if (m.key() == "weight") {
          uintInRange(m.value(), fp, 0, kMaxWeight, "", &bc.weight);
        } else if (m.key() == "drain") {
          boolean(m.value(), fp, &bc.drain);
        } else {
          unknown(fp, "address, port, weight, drain");
        }
      }
      if (!sawAddress) error(join(bp, "address"), "missing required field");
      if (!sawPort) error(join(bp, "port"), "missing required field");
      out->push_back(std::move(bc));
    }
  }

  // True if every byte is visible ASCII or UTF-8 (no space, no control
  // character): what may go into a request line or a header value unquoted.
  static bool visibleBytes(const std::string& s) {
    for (char ch : s) {
      const auto c = static_cast<unsigned char>(ch);
      if (c <= 0x20 || c == 0x7f) return false;
    }
    return true;
  }

  // 204, "204" or "200-399"; every status in 100..599.
  bool expectStatus(const Json& j, const std::string& path, HealthCheckConfig* h) {
    auto bad = [&] {
      error(path, "must be a status such as 204 or a range such as \"200-399\" (100..599), got " +
                      j.dump(-1, ' ', false, Json::error_handler_t::replace));
      return false;
    };
    auto inStatusRange = [](uint64_t v) { return v >= 100 && v <= 599; };
    if (j.is_number_unsigned()) {
      const uint64_t v = j.get<uint64_t>();
      if (!inStatusRange(v)) return bad();
      h->expectStatusMin = h->expectStatusMax = static_cast<uint32_t>(v);
      return true;
    }
    if (!j.is_string()) {
      if (j.is_number()) return bad();
      wrongType(j, path, "an integer or a string");
      return false;
    }
    const std::string& s = j.get_ref<const std::string&>();
    // Three digits, optionally "-" and three more: nothing else.
    auto digits3 = [&](size_t at, uint32_t* out) {
      if (at + 3 > s.size()) return false;
      uint32_t v = 0;
      for (size_t i = at; i < at + 3; ++i) {
        if (s[i] < '0' || s[i] > '9') return false;
        v = v * 10 + static_cast<uint32_t>(s[i] - '0');
      }
      *out = v;
      return inStatusRange(v);
    };
    uint32_t lo = 0, hi = 0;
    if (s.size() == 3 && digits3(0, &lo)) {
      hi = lo;
    } else if (!(s.size() == 7 && s[3] == '-' && digits3(0, &lo) && digits3(4, &hi) && lo <= hi)) {
      return bad();
    }
    h->expectStatusMin = lo;
    h->expectStatusMax = hi;
    return true;
  }

  // Present = enabled. timeoutMs <= intervalMs is checked after the members,
  // against the default of whichever one is absent.
  void healthCheck(const Json& j, const std::string& path, HealthCheckConfig* h) {
    if (!object(j, path)) return;
    h->enabled = true;
    bool intervalOk = true, timeoutOk = true, sawTimeout = false;
    for (const auto& m : j.items()) {
      const std::string fp = join(path, m.key());
      const Json& v = m.value();
      if (m.key() == "type") {
        std::optional<std::string> s = string(v, fp);
        if (!s) continue;
        if (*s == "tcp") {
          h->type = HealthCheckType::kTcp;
        } else if (*s == "http") {
          h->type = HealthCheckType::kHttp;
        } else if (*s == "https") {
          h->type = HealthCheckType::kHttps;
        } else {
          error(fp, "unknown type " + jsonQuote(*s) + " (allowed: tcp, http, https)");
        }
      } else if (m.key() == "intervalMs") {
        intervalOk = uintInRange(v, fp, kMinCheckIntervalMs, kMaxCheckIntervalMs, " ms",
                                 &h->intervalMs);
      } else if (m.key() == "timeoutMs") {
        sawTimeout = true;
        timeoutOk =
            uintInRange(v, fp, kMinCheckTimeoutMs, kMaxCheckTimeoutMs, " ms", &h->timeoutMs);
      } else if (m.key() == "rise") {
        uintInRange(v, fp, 1, kMaxRiseFall, "", &h->rise);
      } else if (m.key() == "fall") {
        uintInRange(v, fp, 1, kMaxRiseFall, "", &h->fall);
      } else if (m.key() == "jitterPct") {
        uintInRange(v, fp, 0, kMaxJitterPct, "%", &h->jitterPct);
      } else if (m.key() == "path") {
        std::optional<std::string> s = string(v, fp);
        if (s && (s->empty() || s->front() != '/' || !visibleBytes(*s))) {
          error(fp, "must start with \"/\" and hold no space or control character, got " +
                        jsonQuote(*s));
        } else if (s) {
          h->path = *s;
        }
      } else if (m.key() == "host") {
        std::optional<std::string> s = string(v, fp);
        if (s && !visibleBytes(*s)) {
          error(fp, jsonQuote(*s) + " is not a Host header value (no space or control character)");
        } else if (s) {
          h->host = *s;
        }
      } else if (m.key() == "expectStatus") {
        expectStatus(v, fp, h);
      } else if (m.key() == "bodyContains") {
        if (auto s = string(v, fp)) h->bodyContains = *s;
      } else {
        unknown(fp, "type, intervalMs, timeoutMs, rise, fall, jitterPct, path, host, "
                    "expectStatus, bodyContains");
      }
    }
    if (intervalOk && timeoutOk && h->timeoutMs > h->intervalMs) {
      const std::string interval = std::to_string(h->intervalMs);
      error(join(path, "timeoutMs"),
            sawTimeout ? "must be <= intervalMs (" + interval + "), got " +
                             std::to_string(h->timeoutMs)
                       : "the default " + std::to_string(h->timeoutMs) +
                             " must be <= intervalMs (" + interval + ")");
    }
  }

  // Present = enabled. maxEjectMs >= baseEjectMs is checked after the members.
  void outlierDetection(const Json& j, const std::string& path, OutlierDetectionConfig* o) {
    if (!object(j, path)) return;
    o->enabled = true;
    bool baseOk = true, maxOk = true, sawMax = false;
    for (const auto& m : j.items()) {
      const std::string fp = join(path, m.key());
      const Json& v = m.value();
      if (m.key() == "consecutiveFailures") {
        uintInRange(v, fp, 1, kMaxConsecutiveFailures, "", &o->consecutiveFailures);
      } else if (m.key() == "baseEjectMs") {
        baseOk = uintInRange(v, fp, kMinEjectMs, kMaxBaseEjectMs, " ms", &o->baseEjectMs);
      } else if (m.key() == "maxEjectMs") {
        sawMax = true;
        maxOk = uintInRange(v, fp, kMinEjectMs, kMaxEjectMs, " ms", &o->maxEjectMs);
      } else if (m.key() == "maxEjectPercent") {
        uintInRange(v, fp, 0, 100, "%", &o->maxEjectPercent);
      } else {
        unknown(fp, "consecutiveFailures, baseEjectMs, maxEjectMs, maxEjectPercent");
      }
    }
    if (baseOk && maxOk && o->maxEjectMs < o->baseEjectMs) {
      const std::string base = std::to_string(o->baseEjectMs);
      error(join(path, "maxEjectMs"),
            sawMax ? "must be >= baseEjectMs (" + base + "), got " + std::to_string(o->maxEjectMs)
                   : "the default " + std::to_string(o->maxEjectMs) +
                         " must be >= baseEjectMs (" + base + ")");
    }
  }

  // Present = enabled. Whether countries can be looked up is checked once the
  // top-level geo is known (run()).
  void listenerGeo(const Json& j, const std::string& path, GeoPolicyConfig* g) {
    if (!object(j, path)) return;
    g->enabled = true;
    for (const auto& m : j.items()) {
      const std::string fp = join(path, m.key());
      const Json& v = m.value();
      if (m.key() == "mode") {
        std::optional<std::string> s = string(v, fp);
        if (s && *s != "deny" && *s != "allow") {
          error(fp, "must be \"deny\" or \"allow\", got " + jsonQuote(*s));
        } else if (s) {
          g->allowMode = *s == "allow";
        }
      } else if (m.key() == "countries") {
        countryList(v, fp, &g->countries);
        if (!g->countries.empty()) geoCountryRefs_.push_back(fp);
      } else if (m.key() == "allowCidrs") {
        cidrList(v, fp, &g->allowCidrs);
      } else if (m.key() == "denyCidrs") {
        cidrList(v, fp, &g->denyCidrs);
      } else {
        unknown(fp, "mode, countries, allowCidrs, denyCidrs");
      }
    }
  }

  static std::optional<GeoSourceType> parseGeoSourceType(const Json& j) {
    if (!j.is_string()) return std::nullopt;
    const std::string& s = j.get_ref<const std::string&>();
    if (s == "zones") return GeoSourceType::kZones;
    if (s == "maxmind_csv") return GeoSourceType::kMaxmindCsv;
    if (s == "mmdb") return GeoSourceType::kMmdb;
    return std::nullopt;
  }

  // The files are only named here; the geo loader reads them and reports
  // unreadable ones with these same paths.
  void geo(const Json& j, const std::string& path) {
    if (!object(j, path)) return;
    for (const auto& m : j.items()) {
      const std::string fp = join(path, m.key());
      if (m.key() != "sources") {
        unknown(fp, "sources");
        continue;
      }
      const Json& v = m.value();
      if (!array(v, fp)) continue;
      for (size_t i = 0; i < v.size(); ++i) {
        const std::string sp = indexed(fp, i);
        if (!object(v[i], sp)) continue;
        // Looked up ahead so fields of another type are refused where they stand.
        std::optional<GeoSourceType> type;
        if (auto t = v[i].find("type"); t != v[i].end()) type = parseGeoSourceType(*t);
        const bool csv = type == GeoSourceType::kMaxmindCsv;
        GeoSourceConfig src;
        bool sawType = false;
        std::set<std::string> present;  // file fields given (possibly as "")
        for (const auto& f : v[i].items()) {
          const std::string ffp = join(sp, f.key());
          const std::string& k = f.key();
          if (k == "type") {
            sawType = true;
            std::optional<std::string> s = string(f.value(), ffp);
            if (s && !type) {
              error(ffp, "unknown type " + jsonQuote(*s) + " (allowed: zones, maxmind_csv, mmdb)");
            } else if (type) {
              src.type = *type;
            }
          } else if (k == "path" || k == "blocksIpv4" || k == "blocksIpv6" || k == "locations") {
            std::optional<std::string> s = string(f.value(), ffp);
            if (!s) continue;
            present.insert(k);
            const bool csvField = k != "path";
            if (type && csvField != csv) {
              error(ffp, csvField ? "only for type \"maxmind_csv\""
                                  : "only for type \"zones\" or \"mmdb\"");
              continue;
            }
            (k == "path"         ? src.path
             : k == "blocksIpv4" ? src.blocksIpv4
             : k == "blocksIpv6" ? src.blocksIpv6
                                 : src.locations) = *s;
          } else {
            unknown(ffp, "type, path, blocksIpv4, blocksIpv6, locations");
          }
        }
        auto required = [&](const char* k, const std::string& value) {
          if (!value.empty()) return;
          error(join(sp, k), present.count(k) ? "must not be empty" : "missing required field");
        };
        if (!sawType) {
          error(join(sp, "type"), "missing required field");
        } else if (csv) {
          if (src.blocksIpv4.empty() && src.blocksIpv6.empty()) {
            error(join(sp, "blocksIpv4"), "blocksIpv4 or blocksIpv6 (or both) is required");
          }
          required("locations", src.locations);
        } else if (type) {
          required("path", src.path);
        }
        config_.geo.sources.push_back(std::move(src));
      }
    }
  }

  // A list of MAC addresses is not needed; one "aa:bb:cc:dd:ee:ff".
  static bool isMac(const std::string& s) {
    if (s.size() != 17) return false;
    for (size_t i = 0; i < 17; ++i) {
      if (i % 3 == 2) {
        if (s[i] != ':') return false;
      } else if (!std::isxdigit(static_cast<unsigned char>(s[i]))) {
        return false;
      }
    }
    return true;
  }

  template <class E>
  bool enumField(const Json& v, const std::string& fp,
                 std::initializer_list<std::pair<const char*, E>> names, E* out) {
    std::optional<std::string> s = string(v, fp);
    if (!s) return false;
    std::string allowed;
    for (const auto& [n, e] : names) {
      if (*s == n) {
        *out = e;
        return true;
      }
      allowed += (allowed.empty() ? "" : ", ") + std::string(n);
    }
    error(fp, "unknown value " + jsonQuote(*s) + " (allowed: " + allowed + ")");
    return false;
  }

  void l4(const Json& j, const std::string& path) {
    if (!object(j, path)) return;
    L4Config& c = config_.l4;
    // The engine decides the services' default forwarding: read it first.
    if (auto e = j.find("engine"); e != j.end() && e->is_string() && *e == "dpdk") {
      c.engine = L4Engine::kDpdk;
    }
    for (const auto& m : j.items()) {
      const std::string fp = join(path, m.key());
      const Json& v = m.value();
      const std::string& k = m.key();
      if (k == "engine") {
        enumField<L4Engine>(v, fp, {{"uring", L4Engine::kUring}, {"dpdk", L4Engine::kDpdk}},
                            &c.engine);
      } else if (k == "localIpv4" || k == "localIpv6") {
        if (v.is_string() && v.get_ref<const std::string&>().empty()) continue;  // none
        std::string addr;
        bool isV6 = false;
        if (address(v, fp, &addr, &isV6)) {
          if (isV6 != (k == "localIpv6")) {
            error(fp, isV6 ? "must be an IPv4 address" : "must be an IPv6 address");
          } else {
            (k == "localIpv4" ? c.localIpv4 : c.localIpv6) = addr;
          }
        }
      } else if (k == "mtu") {
        uintInRange(v, fp, 576, 9000, " bytes", &c.mtu);
      } else if (k == "services") {
        l4Services(v, fp);
      } else if (k == "denyCidrs") {
        cidrList(v, fp, &c.denyCidrs);
      } else if (k == "geoDeny") {
        countryList(v, fp, &c.geoDeny);
      } else if (k == "synLimit") {
        if (!object(v, fp)) continue;
        for (const auto& f : v.items()) {
          const std::string ffp = join(fp, f.key());
          if (f.key() == "perSecond") {
            uintInRange(f.value(), ffp, 0, 10000000, "", &c.synLimit.perSecond);
          } else if (f.key() == "burst") {
            uintInRange(f.value(), ffp, 0, 10000000, "", &c.synLimit.burst);
          } else {
            unknown(ffp, "perSecond, burst");
          }
        }
      } else if (k == "flows") {
        if (!object(v, fp)) continue;
        for (const auto& f : v.items()) {
          const std::string ffp = join(fp, f.key());
          const std::string& fk = f.key();
          if (fk == "maxPerWorker") {
            uintInRange(f.value(), ffp, 1024, 64u << 20, "", &c.flows.maxPerWorker);
          } else if (fk == "synTimeoutS") {
            uintInRange(f.value(), ffp, 1, 3600, " s", &c.flows.synTimeoutS);
          } else if (fk == "establishedTimeoutS") {
            uintInRange(f.value(), ffp, 1, 604800, " s", &c.flows.establishedTimeoutS);
          } else if (fk == "closingTimeoutS") {
            uintInRange(f.value(), ffp, 1, 3600, " s", &c.flows.closingTimeoutS);
          } else if (fk == "udpTimeoutS") {
            uintInRange(f.value(), ffp, 1, 86400, " s", &c.flows.udpTimeoutS);
          } else {
            unknown(ffp, "maxPerWorker, synTimeoutS, establishedTimeoutS, closingTimeoutS, "
                         "udpTimeoutS");
          }
        }
      } else if (k == "neighbors") {
        if (!array(v, fp)) continue;
        for (size_t i = 0; i < v.size(); ++i) {
          const std::string np = indexed(fp, i);
          if (!object(v[i], np)) continue;
          L4NeighborConfig n;
          for (const auto& f : v[i].items()) {
            const std::string ffp = join(np, f.key());
            if (f.key() == "address") {
              bool isV6 = false;
              address(f.value(), ffp, &n.address, &isV6);
            } else if (f.key() == "mac") {
              std::optional<std::string> s = string(f.value(), ffp);
              if (s && !isMac(*s)) {
                error(ffp, jsonQuote(*s) + " is not a MAC address (such as \"02:00:00:00:00:01\")");
              } else if (s) {
                n.mac = *s;
              }
            } else {
              unknown(ffp, "address, mac");
            }
          }
          if (n.address.empty()) error(join(np, "address"), "missing required field");
          if (n.mac.empty()) error(join(np, "mac"), "missing required field");
          c.neighbors.push_back(std::move(n));
        }
      } else if (k == "dpdk") {
        dpdk(v, fp);
      } else {
        unknown(fp, "engine, localIpv4, localIpv6, mtu, services, denyCidrs, geoDeny, synLimit, "
                    "flows, neighbors, dpdk");
      }
    }
    // Packet modes need the DPDK engine, the proxy mode the socket engine.
    const bool dpdkEngine = c.engine == L4Engine::kDpdk;
    for (size_t i = 0; i < c.services.size(); ++i) {
      const L4ServiceConfig& s = c.services[i];
      const std::string sp = indexed(join(path, "services"), i);
      if (dpdkEngine && s.forwarding == L4Forwarding::kProxy) {
        error(join(sp, "forwarding"), "\"proxy\" needs l4.engine \"uring\" (packet engine: ipip, gue, dsr)");
      } else if (!dpdkEngine && s.forwarding != L4Forwarding::kProxy) {
        error(join(sp, "forwarding"), std::string("\"") + toString(s.forwarding) +
                                          "\" needs l4.engine \"dpdk\" (socket engine: proxy)");
      }
      if (dpdkEngine && s.forwarding != L4Forwarding::kProxy && c.localIpv4.empty() &&
          c.localIpv6.empty()) {
        error(join(path, "localIpv4"),
              "the packet engine needs the balancer's own address (ARP, ICMP, encapsulation)");
      }
    }
    if (dpdkEngine && c.dpdk.port.empty()) {
      error(join(join(path, "dpdk"), "port"), "the dpdk engine needs a port (PCI address or vdev)");
    }
  }

  void l4Services(const Json& j, const std::string& path) {
    if (!array(j, path)) return;
    std::unordered_map<std::string, std::string> byEndpoint, byName;
    for (size_t i = 0; i < j.size(); ++i) {
      const std::string sp = indexed(path, i);
      if (!object(j[i], sp)) continue;
      L4ServiceConfig sc;
      std::optional<std::string> canon;
      bool isV6 = false, sawAddress = false, sawPort = false, sawPool = false, sawFwd = false;
      for (const auto& f : j[i].items()) {
        const std::string fp = join(sp, f.key());
        const std::string& k = f.key();
        const Json& v = f.value();
        if (k == "name") {
          std::optional<std::string> s = string(v, fp);
          if (s && s->empty()) error(fp, "must not be empty");
          if (s) sc.name = *s;
        } else if (k == "address") {
          sawAddress = true;
          canon = address(v, fp, &sc.address, &isV6);
        } else if (k == "port") {
          sawPort = true;
          if (auto p = port(v, fp)) sc.port = *p;
        } else if (k == "protocol") {
          enumField<L4Protocol>(v, fp, {{"tcp", L4Protocol::kTcp}, {"udp", L4Protocol::kUdp}},
                                &sc.protocol);
        } else if (k == "pool") {
          sawPool = true;
          std::optional<std::string> s = string(v, fp);
          if (s && poolNames_.count(*s) == 0) error(fp, "no pool named " + jsonQuote(*s));
          if (s) sc.pool = *s;
        } else if (k == "forwarding") {
          sawFwd = true;
          enumField<L4Forwarding>(v, fp,
                                  {{"ipip", L4Forwarding::kIpip},
                                   {"gue", L4Forwarding::kGue},
                                   {"dsr", L4Forwarding::kDsr},
                                   {"proxy", L4Forwarding::kProxy}},
                                  &sc.forwarding);
        } else if (k == "guePort") {
          if (auto p = port(v, fp)) sc.guePort = *p;
        } else if (k == "onBackendDown") {
          enumField<L4BackendDown>(v, fp,
                                   {{"reset", L4BackendDown::kReset}, {"drop", L4BackendDown::kDrop}},
                                   &sc.onBackendDown);
        } else {
          unknown(fp, "name, address, port, protocol, pool, forwarding, guePort, onBackendDown");
        }
      }
      if (!sawAddress) error(join(sp, "address"), "missing required field");
      if (!sawPort) error(join(sp, "port"), "missing required field");
      if (!sawPool) error(join(sp, "pool"), "missing required field");
      if (!sawFwd) {
        // Default by engine (looked up first by l4()): the socket engine can only proxy.
        sc.forwarding = config_.l4.engine == L4Engine::kDpdk ? L4Forwarding::kIpip
                                                             : L4Forwarding::kProxy;
      }
      if (canon && sc.port != 0) {
        const std::string ep = std::string(toString(sc.protocol)) + "/" + hostPort(*canon, isV6, sc.port);
        if (sc.name.empty()) sc.name = std::string(toString(sc.protocol)) + "/" + hostPort(sc.address, isV6, sc.port);
        auto [it, fresh] = byEndpoint.emplace(ep, sp);
        if (!fresh) error(sp, "same address, protocol and port as " + it->second);
      }
      if (!sc.name.empty()) {
        auto [it, fresh] = byName.emplace(sc.name, sp);
        if (!fresh) error(join(sp, "name"), "duplicate service name " + jsonQuote(sc.name) + " (also " + it->second + ")");
      }
      config_.l4.services.push_back(std::move(sc));
    }
  }

  void dpdk(const Json& j, const std::string& path) {
    if (!object(j, path)) return;
    DpdkConfig& d = config_.l4.dpdk;
    for (const auto& m : j.items()) {
      const std::string fp = join(path, m.key());
      const Json& v = m.value();
      const std::string& k = m.key();
      if (k == "lcores") {
        if (!array(v, fp)) continue;
        d.lcores.clear();
        std::set<uint32_t> seen;
        for (size_t i = 0; i < v.size(); ++i) {
          uint32_t lc = 0;
          if (!uintInRange(v[i], indexed(fp, i), 0, 1023, "", &lc)) continue;
          if (!seen.insert(lc).second) error(indexed(fp, i), "duplicate lcore " + std::to_string(lc));
          d.lcores.push_back(lc);
        }
        if (v.empty()) error(fp, "at least one worker lcore is required");
      } else if (k == "mainLcore") {
        uintInRange(v, fp, 0, 1023, "", &d.mainLcore);
      } else if (k == "noHuge") {
        boolean(v, fp, &d.noHuge);
      } else if (k == "memoryMb") {
        uintInRange(v, fp, 0, 1u << 20, " MiB", &d.memoryMb);
      } else if (k == "port") {
        if (std::optional<std::string> s = string(v, fp)) d.port = *s;
      } else if (k == "eal") {
        stringList(v, fp, &d.eal, [](const std::string&, const std::string&) { return true; });
      } else if (k == "exceptionTap") {
        std::optional<std::string> s = string(v, fp);
        if (s && s->size() > 15) error(fp, "an interface name has at most 15 characters");
        else if (s) d.exceptionTap = *s;
      } else if (k == "rxDescriptors") {
        uintInRange(v, fp, 64, 16384, "", &d.rxDescriptors);
      } else if (k == "txDescriptors") {
        uintInRange(v, fp, 64, 16384, "", &d.txDescriptors);
      } else if (k == "mbufsPerLcore") {
        uintInRange(v, fp, 1024, 1u << 22, "", &d.mbufsPerLcore);
      } else if (k == "burst") {
        uintInRange(v, fp, 1, 256, "", &d.burst);
      } else if (k == "txDrainUs") {
        uintInRange(v, fp, 1, 100000, " us", &d.txDrainUs);
      } else {
        unknown(fp, "lcores, mainLcore, noHuge, memoryMb, port, eal, exceptionTap, rxDescriptors, "
                    "txDescriptors, mbufsPerLcore, burst, txDrainUs");
      }
    }
    for (size_t i = 0; i < d.lcores.size(); ++i) {
      if (d.lcores[i] == d.mainLcore) {
        error(indexed(join(path, "lcores"), i), "lcore " + std::to_string(d.mainLcore) +
                                                    " is the main lcore (mainLcore)");
      }
    }
  }

  void routes(const Json& j, const std::string& path) {
    if (!array(j, path)) return;
    std::unordered_map<std::string, std::string> seen;  // host + '\n' + prefix -> path
    for (size_t i = 0; i < j.size(); ++i) {
      const std::string rp = indexed(path, i);
      const Json& r = j[i];
      if (!object(r, rp)) continue;
      RouteConfig rc;
      bool sawPool = false;
      bool keyOk = true;
      for (const auto& m : r.items()) {
        const std::string fp = join(rp, m.key());
        if (m.key() == "host") {
          std::optional<std::string> h = string(m.value(), fp);
          if (!h) {
            keyOk = false;
            continue;
          }
          for (char& c : *h) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
          rc.host = std::move(*h);
        } else if (m.key() == "pathPrefix") {
          std::optional<std::string> s = string(m.value(), fp);
          if (s && (s->empty() || s->front() != '/')) {
            error(fp, "must start with \"/\", got " + jsonQuote(*s));
            keyOk = false;
          } else if (s) {
            rc.pathPrefix = *s;
          } else {
            keyOk = false;
          }
        } else if (m.key() == "pool") {
          sawPool = true;
          std::optional<std::string> s = string(m.value(), fp);
          if (s && poolNames_.count(*s) == 0) error(fp, "no pool named " + jsonQuote(*s));
          if (s) rc.pool = *s;
        } else if (m.key() == "waf") {
          boolean(m.value(), fp, &rc.waf);
        } else {
          unknown(fp, "host, pathPrefix, pool, waf");
        }
      }
      if (!sawPool) error(join(rp, "pool"), "missing required field");
      if (keyOk) {
        std::string host = rc.host == "*" ? std::string() : rc.host;
        auto [it, fresh] = seen.emplace(host + "\n" + rc.pathPrefix, rp);
        if (!fresh) {
          error(rp, "duplicate route for host " + jsonQuote(host.empty() ? "*" : host) +
                        " and pathPrefix " + jsonQuote(rc.pathPrefix) + " (also " + it->second +
                        ")");
        }
      }
      config_.routes.push_back(std::move(rc));
    }
  }

  void timeouts(const Json& j, const std::string& path) {
    if (!object(j, path)) return;
    TimeoutsConfig& t = config_.timeouts;
    for (const auto& m : j.items()) {
      const std::string fp = join(path, m.key());
      uint32_t* field = m.key() == "connectMs"            ? &t.connectMs
                        : m.key() == "requestHeaderMs"    ? &t.requestHeaderMs
                        : m.key() == "idleMs"             ? &t.idleMs
                        : m.key() == "upstreamResponseMs" ? &t.upstreamResponseMs
                                                          : nullptr;
      if (field == nullptr) {
        unknown(fp, "connectMs, requestHeaderMs, idleMs, upstreamResponseMs");
      } else {
        uintInRange(m.value(), fp, kMinTimeoutMs, kMaxTimeoutMs, " ms", field);
      }
    }
  }

  void limits(const Json& j, const std::string& path) {
    if (!object(j, path)) return;
    LimitsConfig& l = config_.limits;
    // maxRequestLine is bounded by maxHeaderBytes wherever either appears.
    int64_t lineMax = kMaxHeaderBytes;
    const char* lineMaxWhat = "";
    if (auto h = j.find("maxHeaderBytes"); h == j.end()) {
      lineMax = l.maxHeaderBytes;
      lineMaxWhat = " (the default maxHeaderBytes)";
    } else if (h->is_number_integer() && inRange(*h, kMinHeaderBytes, kMaxHeaderBytes)) {
      lineMax = h->get<int64_t>();
      lineMaxWhat = " (maxHeaderBytes)";
    }
    for (const auto& m : j.items()) {
      const std::string fp = join(path, m.key());
      if (m.key() == "maxHeaderBytes") {
        uintInRange(m.value(), fp, kMinHeaderBytes, kMaxHeaderBytes, " bytes", &l.maxHeaderBytes);
      } else if (m.key() == "maxRequestLine") {
        std::string unit = std::string(" bytes") + lineMaxWhat;
        uintInRange(m.value(), fp, kMinRequestLine, lineMax, unit.c_str(), &l.maxRequestLine);
      } else if (m.key() == "maxHeaders") {
        uintInRange(m.value(), fp, 1, kMaxHeadersLimit, "", &l.maxHeaders);
      } else {
        unknown(fp, "maxHeaderBytes, maxRequestLine, maxHeaders");
      }
    }
  }

  void logging(const Json& j, const std::string& path) {
    if (!object(j, path)) return;
    for (const auto& m : j.items()) {
      const std::string fp = join(path, m.key());
      if (m.key() == "level") {
        std::optional<std::string> s = string(m.value(), fp);
        if (!s) continue;
        if (*s == "debug") {
          config_.logging.level = LogLevel::kDebug;
        } else if (*s == "info") {
          config_.logging.level = LogLevel::kInfo;
        } else if (*s == "warn") {
          config_.logging.level = LogLevel::kWarn;
        } else if (*s == "error") {
          config_.logging.level = LogLevel::kError;
        } else {
          error(fp, "unknown log level " + jsonQuote(*s) + " (allowed: debug, info, warn, error)");
        }
      } else if (m.key() == "accessLog") {
        if (auto s = string(m.value(), fp)) config_.logging.accessLog = *s;
      } else {
        unknown(fp, "level, accessLog");
      }
    }
  }

  bool boolean(const Json& j, const std::string& path, bool* out) {
    if (!j.is_boolean()) {
      wrongType(j, path, "true or false");
      return false;
    }
    *out = j.get<bool>();
    return true;
  }

  bool count64(const Json& j, const std::string& path, int64_t lo, int64_t hi, uint64_t* out) {
    if (!isInteger(j, path)) return false;
    if (!inRange(j, lo, hi)) {
      error(path, "must be " + std::to_string(lo) + ".." + std::to_string(hi) + ", got " +
                      j.dump());
      return false;
    }
    *out = j.get<uint64_t>();
    return true;
  }

  // An array of strings, each checked by `check` (which reports its own error).
  template <class Check>
  void stringList(const Json& j, const std::string& path, std::vector<std::string>* out,
                  Check&& check) {
    if (!array(j, path)) return;
    out->clear();
    for (size_t i = 0; i < j.size(); ++i) {
      const std::string ip = indexed(path, i);
      std::optional<std::string> s = string(j[i], ip);
      if (s && check(*s, ip)) out->push_back(std::move(*s));
    }
  }

  // ISO 3166-1 alpha-2 codes, stored uppercase.
  void countryList(const Json& j, const std::string& path, std::vector<std::string>* out) {
    stringList(j, path, out, [&](const std::string& s, const std::string& ip) {
      auto letter = [](char c) { return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z'); };
      if (s.size() == 2 && letter(s[0]) && letter(s[1])) return true;
      error(ip, jsonQuote(s) + " is not an ISO 3166-1 alpha-2 country code (such as \"DE\")");
      return false;
    });
    for (std::string& c : *out) {
      for (char& ch : c) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
    }
  }

  void cidrList(const Json& j, const std::string& path, std::vector<std::string>* out) {
    stringList(j, path, out, [&](const std::string& s, const std::string& ip) {
      l4::CidrSet probe;
      std::string err;
      if (probe.add(s, &err)) return true;
      error(ip, err);
      return false;
    });
  }

  void waf(const Json& j, const std::string& path) {
    if (!object(j, path)) return;
    WafConfig& w = config_.waf;
    auto anyString = [](const std::string&, const std::string&) { return true; };
    for (const auto& m : j.items()) {
      const std::string fp = join(path, m.key());
      const Json& v = m.value();
      if (m.key() == "enabled") {
        boolean(v, fp, &w.enabled);
      } else if (m.key() == "mode") {
        std::optional<std::string> s = string(v, fp);
        if (s && *s != "block" && *s != "detect") {
          error(fp, "must be \"block\" or \"detect\", got " + jsonQuote(*s));
        } else if (s) {
          w.detectOnly = *s == "detect";
        }
      } else if (m.key() == "paranoia") {
        uintInRange(v, fp, 1, 4, "", &w.paranoia);
      } else if (m.key() == "inboundThreshold") {
        uintInRange(v, fp, 0, 100000, "", &w.inboundThreshold);
      } else if (m.key() == "outboundThreshold") {
        uintInRange(v, fp, 0, 100000, "", &w.outboundThreshold);
      } else if (m.key() == "setup") {
        if (auto s = string(v, fp)) w.setup = *s;
      } else if (m.key() == "rules") {
        stringList(v, fp, &w.rules, anyString);
        if (w.rules.empty()) error(fp, "at least one rule file or directory");
      } else if (m.key() == "unicodeMap") {
        if (auto s = string(v, fp)) w.unicodeMap = *s;
      } else if (m.key() == "requestBodyLimit") {
        uintInRange(v, fp, 0, 262144, " bytes", &w.requestBodyLimit);
      } else if (m.key() == "bodyLimitAction") {
        std::optional<std::string> s = string(v, fp);
        if (s && *s != "reject" && *s != "inspect") {
          error(fp, "must be \"reject\" or \"inspect\", got " + jsonQuote(*s));
        } else if (s) {
          w.bodyLimitReject = *s == "reject";
        }
      } else if (m.key() == "cacheDir") {
        if (auto s = string(v, fp)) w.cacheDir = *s;
      } else if (m.key() == "auditLog") {
        if (auto s = string(v, fp)) w.auditLog = *s;
      } else if (m.key() == "disableRules") {
        if (!array(v, fp)) continue;
        w.disableRules.clear();
        for (size_t i = 0; i < v.size(); ++i) {
          uint32_t id = 0;
          if (uintInRange(v[i], indexed(fp, i), 1, 999999999, "", &id)) w.disableRules.push_back(id);
        }
      } else if (m.key() == "excludeTargets") {
        if (!array(v, fp)) continue;
        w.excludeTargets.clear();
        for (size_t i = 0; i < v.size(); ++i) {
          const std::string ip = indexed(fp, i);
          if (!object(v[i], ip)) continue;
          WafTargetExclusion x;
          bool sawRule = false, sawTarget = false;
          for (const auto& e : v[i].items()) {
            const std::string ep = join(ip, e.key());
            if (e.key() == "rule") {
              sawRule = uintInRange(e.value(), ep, 1, 999999999, "", &x.rule);
            } else if (e.key() == "target") {
              std::optional<std::string> t = string(e.value(), ep);
              if (t && (t->empty() || t->find_first_of(" \t\"',|") != std::string::npos)) {
                error(ep, "one variable such as ARGS:password, got " + jsonQuote(*t));
              } else if (t) {
                x.target = *t;
                sawTarget = true;
              }
            } else {
              unknown(ep, "rule, target");
            }
          }
          if (!sawRule) error(join(ip, "rule"), "missing required field");
          if (!sawTarget) error(join(ip, "target"), "missing required field");
          if (sawRule && sawTarget) w.excludeTargets.push_back(std::move(x));
        }
      } else {
        unknown(fp,
                "enabled, mode, paranoia, inboundThreshold, outboundThreshold, setup, rules, "
                "unicodeMap, requestBodyLimit, bodyLimitAction, cacheDir, auditLog, disableRules, "
                "excludeTargets");
      }
    }
  }

  void rateLimit(const Json& j, const std::string& path) {
    if (!object(j, path)) return;
    RateLimitConfig& rl = config_.rateLimit;
    for (const auto& m : j.items()) {
      const std::string fp = join(path, m.key());
      if (m.key() == "enabled") {
        boolean(m.value(), fp, &rl.enabled);
      } else if (m.key() == "maxKeys") {
        uintInRange(m.value(), fp, 1, kMaxRateLimitKeys, "", &rl.maxKeys);
      } else if (m.key() == "trustedProxies") {
        cidrList(m.value(), fp, &rl.trustedProxies);
      } else if (m.key() == "allow") {
        cidrList(m.value(), fp, &rl.allow);
      } else if (m.key() == "deny") {
        cidrList(m.value(), fp, &rl.deny);
      } else if (m.key() == "escalation") {
        if (!object(m.value(), fp)) continue;
        for (const auto& e : m.value().items()) {
          const std::string ep = join(fp, e.key());
          if (e.key() == "after") {
            uintInRange(e.value(), ep, 0, 1000000, "", &rl.escalateAfter);
          } else if (e.key() == "cooldownS") {
            uintInRange(e.value(), ep, 1, kMaxRateLimitPeriodS, " s", &rl.escalateCooldownS);
          } else {
            unknown(ep, "after, cooldownS");
          }
        }
      } else if (m.key() == "rules") {
        rateLimitRules(m.value(), fp);
      } else {
        unknown(fp, "enabled, maxKeys, trustedProxies, allow, deny, escalation, rules");
      }
    }
  }

  void rateLimitRules(const Json& j, const std::string& path) {
    std::vector<RateLimitRuleConfig>& rules = config_.rateLimit.rules;
    rules.clear();
    if (!array(j, path)) return;
    if (j.size() > static_cast<size_t>(kMaxRateLimitRules)) {
      error(path, "at most " + std::to_string(kMaxRateLimitRules) + " rules");
      return;
    }
    std::unordered_map<std::string, std::string> byName;
    for (size_t i = 0; i < j.size(); ++i) {
      const std::string rp = indexed(path, i);
      const Json& r = j[i];
      if (!object(r, rp)) continue;
      RateLimitRuleConfig rc;
      bool sawName = false;
      for (const auto& m : r.items()) {
        const std::string fp = join(rp, m.key());
        const Json& v = m.value();
        if (m.key() == "name") {
          sawName = true;
          std::optional<std::string> s = string(v, fp);
          if (!s) continue;
          bool ok = !s->empty() && s->size() <= 64;
          for (char c : *s) ok = ok && (std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.');
          if (!ok) {
            error(fp, jsonQuote(*s) + " is not a rule name (1-64 of A-Z a-z 0-9 _ - .)");
            continue;
          }
          rc.name = *s;
          auto [it, fresh] = byName.emplace(*s, rp);
          if (!fresh) error(fp, "duplicate rule name " + jsonQuote(*s) + " (also " + it->second + ")");
        } else if (m.key() == "algorithm") {
          std::optional<std::string> s = string(v, fp);
          if (s && *s == "token_bucket") {
            rc.algorithm = RateLimitAlgorithm::kTokenBucket;
          } else if (s && *s == "sliding_window") {
            rc.algorithm = RateLimitAlgorithm::kSlidingWindow;
          } else if (s) {
            error(fp, "unknown algorithm " + jsonQuote(*s) + " (allowed: token_bucket, sliding_window)");
          }
        } else if (m.key() == "limit") {
          count64(v, fp, 1, kMaxRateLimitCount, &rc.limit);
        } else if (m.key() == "periodS") {
          uintInRange(v, fp, 1, kMaxRateLimitPeriodS, " s", &rc.periodS);
        } else if (m.key() == "burst") {
          count64(v, fp, 1, kMaxRateLimitCount, &rc.burst);
        } else if (m.key() == "key") {
          std::optional<std::string> s = string(v, fp);
          if (!s) continue;
          auto named = [&](std::string_view prefix, RateLimitKey k) {
            if (s->rfind(prefix, 0) != 0) return false;
            std::string n = s->substr(prefix.size());
            bool ok = !n.empty();
            for (char& c : n) {
              ok = ok && c > 0x20 && c < 0x7f && std::string_view("()<>@,;:\\\"/[]?={}").find(c) == std::string_view::npos;
              if (k == RateLimitKey::kHeader) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
            }
            if (!ok) {
              error(fp, jsonQuote(*s) + ": the name after \"" + std::string(prefix) + "\" is not a token");
            } else {
              rc.key = k;
              rc.keyName = n;
            }
            return true;
          };
          if (*s == "ip") {
            rc.key = RateLimitKey::kIp;
          } else if (*s == "ip_route") {
            rc.key = RateLimitKey::kIpRoute;
          } else if (!named("header:", RateLimitKey::kHeader) && !named("cookie:", RateLimitKey::kCookie)) {
            error(fp, "unknown key " + jsonQuote(*s) + " (allowed: ip, ip_route, header:NAME, cookie:NAME)");
          }
        } else if (m.key() == "ipv4Prefix") {
          uintInRange(v, fp, 1, 32, "", &rc.ipv4Prefix);
        } else if (m.key() == "ipv6Prefix") {
          uintInRange(v, fp, 1, 128, "", &rc.ipv6Prefix);
        } else if (m.key() == "listeners") {
          stringList(v, fp, &rc.listeners, [&](const std::string& s, const std::string& ip) {
            ruleListenerRefs_.emplace_back(ip, s);
            return true;
          });
        } else if (m.key() == "hosts") {
          stringList(v, fp, &rc.hosts, [&](const std::string& s, const std::string& ip) {
            if (s.empty()) {
              error(ip, "must not be empty");
              return false;
            }
            return true;
          });
          for (std::string& h : rc.hosts) {
            for (char& c : h) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
          }
        } else if (m.key() == "pathPrefixes") {
          stringList(v, fp, &rc.pathPrefixes, [&](const std::string& s, const std::string& ip) {
            if (s.empty() || s.front() != '/') {
              error(ip, "must start with \"/\", got " + jsonQuote(s));
              return false;
            }
            return true;
          });
        } else if (m.key() == "dryRun") {
          boolean(v, fp, &rc.dryRun);
        } else if (m.key() == "headers") {
          boolean(v, fp, &rc.headers);
        } else {
          unknown(fp, "name, algorithm, limit, periodS, burst, key, ipv4Prefix, ipv6Prefix, "
                      "listeners, hosts, pathPrefixes, dryRun, headers");
        }
      }
      if (!sawName) error(join(rp, "name"), "missing required field");
      if (rc.algorithm == RateLimitAlgorithm::kSlidingWindow) {
        if (rc.limit > ratelimit::kMaxSlidingWindowLimit) {
          error(join(rp, "limit"), "a sliding window counts at most " +
                                       std::to_string(ratelimit::kMaxSlidingWindowLimit) +
                                       " requests");
        }
        if (r.contains("burst")) error(join(rp, "burst"), "only a token bucket has a burst");
      }
      rules.push_back(std::move(rc));
    }
  }

  Config config_;
  std::set<std::string> poolNames_;
  std::vector<std::pair<std::string, std::string>> ruleListenerRefs_;  // path, listener name
  std::vector<std::string> geoCountryRefs_;  // paths of non-empty listeners[].geo.countries
};

}  // namespace

ConfigResult parseConfig(std::string_view json) {
  ConfigResult result;
  try {
    Json root;
    std::vector<ConfigError> duplicates;
    try {
      root = Json::parse(json.begin(), json.end(), DuplicateKeyFinder(&duplicates));
    } catch (const Json::parse_error& e) {
      result.errors.push_back(
          {"", "invalid JSON at byte " + std::to_string(e.byte) + ": " + e.what()});
      return result;
    }
    result.errors = std::move(duplicates);
    Validator v;
    v.run(root);
    result.errors.insert(result.errors.end(), v.errors.begin(), v.errors.end());
    if (result.errors.empty()) result.config = v.take();
  } catch (const std::exception& e) {
    result.config.reset();
    result.errors.push_back({"", std::string("internal error while reading config: ") + e.what()});
  } catch (...) {
    result.config.reset();
    result.errors.push_back({"", "internal error while reading config"});
  }
  return result;
}

ConfigResult loadConfigFile(const std::string& path) {
  ConfigResult result;
  try {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      int err = errno;
      result.errors.push_back({"", "cannot open config file " + jsonQuote(path) + ": " +
                                       std::strerror(err)});
      return result;
    }
    std::string text;
    char buf[65536];
    while (true) {
      ssize_t n = ::read(fd, buf, sizeof buf);
      if (n > 0) {
        text.append(buf, static_cast<size_t>(n));
      } else if (n == 0) {
        break;
      } else if (errno != EINTR) {
        int err = errno;
        ::close(fd);
        result.errors.push_back({"", "cannot read config file " + jsonQuote(path) + ": " +
                                         std::strerror(err)});
        return result;
      }
    }
    ::close(fd);
    return parseConfig(text);
  } catch (const std::exception& e) {
    result.errors.push_back({"", "cannot read config file " + jsonQuote(path) + ": " + e.what()});
  }
  return result;
}

const char* toString(BalanceAlgorithm a) {
  switch (a) {
    case BalanceAlgorithm::kRoundRobin: return "round_robin";
    case BalanceAlgorithm::kLeastConnections: return "least_connections";
    case BalanceAlgorithm::kMaglev: return "maglev";
  }
  return "unknown";
}

const char* toString(ListenerProtocol p) {
  switch (p) {
    case ListenerProtocol::kHttp: return "http";
    case ListenerProtocol::kHttps: return "https";
  }
  return "unknown";
}

const char* toString(RateLimitAlgorithm a) {
  switch (a) {
    case RateLimitAlgorithm::kTokenBucket: return "token_bucket";
    case RateLimitAlgorithm::kSlidingWindow: return "sliding_window";
  }
  return "unknown";
}

const char* toString(HealthCheckType t) {
  switch (t) {
    case HealthCheckType::kTcp: return "tcp";
    case HealthCheckType::kHttp: return "http";
    case HealthCheckType::kHttps: return "https";
  }
  return "unknown";
}

const char* toString(GeoSourceType t) {
  switch (t) {
    case GeoSourceType::kZones: return "zones";
    case GeoSourceType::kMaxmindCsv: return "maxmind_csv";
    case GeoSourceType::kMmdb: return "mmdb";
  }
  return "unknown";
}

const char* toString(L4Engine e) { return e == L4Engine::kDpdk ? "dpdk" : "uring"; }
const char* toString(L4Protocol p) { return p == L4Protocol::kUdp ? "udp" : "tcp"; }
const char* toString(L4Forwarding f) {
  switch (f) {
    case L4Forwarding::kIpip: return "ipip";
    case L4Forwarding::kGue: return "gue";
    case L4Forwarding::kDsr: return "dsr";
    case L4Forwarding::kProxy: return "proxy";
  }
  return "?";
}
const char* toString(L4BackendDown d) { return d == L4BackendDown::kDrop ? "drop" : "reset"; }

const char* toString(LogLevel l) {
  switch (l) {
    case LogLevel::kDebug: return "debug";
    case LogLevel::kInfo: return "info";
    case LogLevel::kWarn: return "warn";
    case LogLevel::kError: return "error";
  }
  return "unknown";
}

}  // namespace moat::control
