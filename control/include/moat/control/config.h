// Moat's configuration document: one JSON object, parsed and validated here.
//
// Control-plane only: allocates and may throw internally, never called from a
// worker. Every validation problem is reported with its JSON path so an
// operator can fix all of them in one go; a document with any error yields no
// Config at all (nothing starts, nothing changes).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "moat/l4/service.h"

namespace moat::control {

enum class ListenerProtocol : uint8_t { kHttp, kHttps };

// One certificate of an https listener. SNI names come from the
// certificate's subjectAltName DNS entries (its CN when it has none).
struct TlsCertificateConfig {
  std::string cert;  // PEM: leaf first, then its chain
  std::string key;   // PEM private key matching the leaf
  std::string ocsp;  // DER OCSP response to staple, re-read when it changes; "" = none
  bool operator==(const TlsCertificateConfig&) const = default;
};

// Client-certificate verification (mTLS) on an https listener.
struct TlsClientAuthConfig {
  std::string caFile;   // PEM CAs that client certificates must chain to; "" = off
  bool required = true;  // false: a client without a certificate is let in
  // Request header carrying the verified subject (RFC 2253) to the backend;
  // any value the client sent in it is removed. "" = not passed on.
  std::string subjectHeader = "x-client-cert-subject";  // lowercase
  bool operator==(const TlsClientAuthConfig&) const = default;
};

// TLS termination for an https listener (see docs/TLS.md).
struct TlsListenerConfig {
  std::vector<TlsCertificateConfig> certificates;  // first = default certificate
  bool allowTls12 = false;   // "minVersion": "1.3" (default) or "1.2"
  std::string ciphersuites;  // TLS 1.3 suites, OpenSSL syntax; "" = OpenSSL's default
  std::string ciphers;       // TLS 1.2 suites; "" = ECDHE with AEAD only
  std::string groups = "X25519:P-256";
  std::vector<std::string> alpn{"http/1.1"};
  bool sessionTickets = true;
  std::string ticketKeyFile;    // >= 32 bytes shared by instances; "" = random per start
  uint32_t ticketRotateS = 3600;  // a ticket key encrypts for this long, decrypts for twice
  TlsClientAuthConfig clientAuth;
  bool operator==(const TlsListenerConfig&) const = default;
};

// TLS from the proxy to a pool's backends.
struct UpstreamTlsConfig {
  bool enabled = false;
  std::string caFile;  // PEM CAs to verify backends against; "" = the system store
  bool verify = true;  // false: any certificate is accepted (logged at start)
  std::string sni;     // server name sent and verified; "" = none, verify the IP
  bool operator==(const UpstreamTlsConfig&) const = default;
};
enum class BalanceAlgorithm : uint8_t { kRoundRobin, kLeastConnections, kMaglev };
enum class LogLevel : uint8_t { kDebug, kInfo, kWarn, kError };

// Per-listener country filter ("geo": {...}), answered from the tables the
// top-level geo.sources build. Order of checks: allowCidrs (pass), denyCidrs
// (block), then the client's country against `countries`.
struct GeoPolicyConfig {
  bool enabled = false;    // true when the "geo" object is present
  bool allowMode = false;  // "mode": "deny" (default) or "allow": only listed countries
                           // pass, a client whose country is unknown is blocked
  std::vector<std::string> countries;   // ISO 3166-1 alpha-2, stored uppercase
  std::vector<std::string> allowCidrs;  // always let through (checked first)
  std::vector<std::string> denyCidrs;   // always blocked (checked second)
  bool operator==(const GeoPolicyConfig&) const = default;
};

struct ListenerConfig {
  std::string name;     // unique; defaults to "<address>:<port>" ("[<v6>]:<port>" for IPv6)
  std::string address;  // IPv4 or IPv6 literal
  uint16_t port = 0;
  ListenerProtocol protocol = ListenerProtocol::kHttp;
  // Expect a PROXY protocol v1/v2 header first on every connection; accepted
  // only from rateLimit.trustedProxies (others are closed and counted).
  bool proxyProtocol = false;
  TlsListenerConfig tls;  // protocol https only
  GeoPolicyConfig geo;    // needs Config::geo.sources when it lists countries
  bool operator==(const ListenerConfig&) const = default;
};

struct BackendConfig {
  std::string address;  // IPv4 or IPv6 literal
  uint16_t port = 0;
  uint32_t weight = 1;  // 0..1000; 0 = takes no new requests
  // Operator drain: no new requests, in-flight ones finish. Kept apart from
  // weight so enabling the backend again restores its share.
  bool drain = false;
  bool operator==(const BackendConfig&) const = default;
};

enum class HealthCheckType : uint8_t { kTcp, kHttp, kHttps };

// Active health checks of every backend of a pool ("healthCheck": {...}).
// A backend starts unknown, becomes healthy after `rise` passes in a row and
// unhealthy after `fall` failures in a row. The http(s)-only fields are
// accepted (and validated) for tcp too, and then ignored.
struct HealthCheckConfig {
  using HealthCheckType = ::moat::control::HealthCheckType;  // also spelled as a member
  bool enabled = false;  // true when the "healthCheck" object is present
  HealthCheckType type = HealthCheckType::kHttp;
  uint32_t intervalMs = 2000;  // 100..3600000
  uint32_t timeoutMs = 1000;   // 10..60000 and <= intervalMs
  uint32_t rise = 2;           // 1..100
  uint32_t fall = 3;           // 1..100
  uint32_t jitterPct = 10;     // 0..50: each interval is randomised by +-jitterPct%
  std::string path = "/";      // http(s) request target: starts with '/', no CR, LF or space
  std::string host;            // http(s) Host header; "" = the backend's address
  // http(s): a status in [min, max] passes. "expectStatus": "200-399", "204" or 204.
  uint32_t expectStatusMin = 200;
  uint32_t expectStatusMax = 399;
  std::string bodyContains;  // http(s): the body must contain this; "" = not checked
  // kHttps uses the pool's `tls` (caFile, verify, sni) when it has one, else
  // accepts any certificate.
  bool operator==(const HealthCheckConfig&) const = default;
};

// Passive checks ("outlierDetection": {...}): a backend whose requests fail
// `consecutiveFailures` times in a row (connect failure or a 5xx) is ejected
// for baseEjectMs, doubling on each further ejection up to maxEjectMs.
struct OutlierDetectionConfig {
  bool enabled = false;              // true when the "outlierDetection" object is present
  uint32_t consecutiveFailures = 5;  // 1..1000
  uint32_t baseEjectMs = 30000;      // 100..3600000
  uint32_t maxEjectMs = 300000;      // baseEjectMs..86400000
  uint32_t maxEjectPercent = 50;     // 0..100: never more than this share of a pool's backends
  bool operator==(const OutlierDetectionConfig&) const = default;
};

struct PoolConfig {
  std::string name;  // unique, referenced by routes
  BalanceAlgorithm balance = BalanceAlgorithm::kRoundRobin;
  uint32_t maglevTableSize = 65537;  // prime, only used by kMaglev
  uint32_t maxIdlePerWorker = 64;    // idle keep-alive connections kept per backend per worker
  UpstreamTlsConfig tls;             // "tls": {...} present = TLS to every backend
  std::vector<BackendConfig> backends;  // may be empty: requests get 503
  HealthCheckConfig healthCheck;
  OutlierDetectionConfig outlierDetection;
  bool operator==(const PoolConfig&) const = default;
};

struct RouteConfig {
  std::string host;        // "" or "*" = any host; else exact, case-insensitive, port ignored
  std::string pathPrefix = "/";
  std::string pool;        // name of a pool
  bool waf = true;         // run the WAF on this route (when waf.enabled)
  bool operator==(const RouteConfig&) const = default;
};

struct TimeoutsConfig {
  uint32_t connectMs = 2000;           // upstream TCP connect
  uint32_t requestHeaderMs = 10000;    // client must send a full head within this
  uint32_t idleMs = 60000;             // client keep-alive idle
  uint32_t upstreamResponseMs = 30000; // upstream must start answering within this
  bool operator==(const TimeoutsConfig&) const = default;
};

struct LimitsConfig {
  uint32_t maxHeaderBytes = 32768;
  uint32_t maxRequestLine = 8192;
  uint32_t maxHeaders = 100;
  bool operator==(const LimitsConfig&) const = default;
};

struct LoggingConfig {
  LogLevel level = LogLevel::kInfo;
  std::string accessLog = "-";  // "-" stdout, "" off, else a file path
  bool operator==(const LoggingConfig&) const = default;
};

enum class RateLimitAlgorithm : uint8_t { kTokenBucket, kSlidingWindow };
enum class RateLimitKey : uint8_t { kIp, kIpRoute, kHeader, kCookie };

struct RateLimitRuleConfig {
  std::string name = "default";  // unique; shown in headers, counters and logs
  RateLimitAlgorithm algorithm = RateLimitAlgorithm::kTokenBucket;
  uint64_t limit = 2000;  // requests per period
  uint32_t periodS = 300;
  uint64_t burst = 0;     // token bucket capacity; 0 = limit
  RateLimitKey key = RateLimitKey::kIp;
  std::string keyName;    // header name (lowercase) or cookie name
  uint32_t ipv4Prefix = 32;
  uint32_t ipv6Prefix = 64;
  std::vector<std::string> listeners;     // empty = all
  std::vector<std::string> hosts;         // lowercase; empty = all
  std::vector<std::string> pathPrefixes;  // empty = all
  bool dryRun = false;    // count and log, never refuse
  bool headers = false;   // RateLimit headers on allowed responses too
  bool operator==(const RateLimitRuleConfig&) const = default;
};

struct RateLimitConfig {
  bool enabled = true;
  uint32_t maxKeys = 1000000;  // fixed at start (changing it needs a restart)
  std::vector<std::string> trustedProxies;  // CIDRs allowed to set X-Forwarded-For / PROXY
  std::vector<std::string> allow;           // CIDRs never limited
  std::vector<std::string> deny;            // CIDRs always refused (403)
  uint32_t escalateAfter = 0;        // 429s within escalateCooldownS that ban a client; 0 = off
  uint32_t escalateCooldownS = 600;  // how long a banned client's connections are dropped
  std::vector<RateLimitRuleConfig> rules{RateLimitRuleConfig{}};  // default: 2000 / 5 min / IP
  bool operator==(const RateLimitConfig&) const = default;
};

// The WAF: a ModSecurity rule set (normally Debian's OWASP CRS) compiled by
// moatd's control thread. See docs/WAF.md.
struct WafTargetExclusion {
  uint32_t rule = 0;
  std::string target;  // e.g. "ARGS:password", "REQUEST_COOKIES:/^_ga/"
  bool operator==(const WafTargetExclusion&) const = default;
};

struct WafConfig {
  bool enabled = false;
  bool detectOnly = false;  // "mode": "block" (default) or "detect"
  uint32_t paranoia = 1;    // CRS paranoia level 1-4
  uint32_t inboundThreshold = 0;   // 0 = as the setup file says (CRS: 5)
  uint32_t outboundThreshold = 0;  // 0 = as the setup file says (CRS: 4)
  std::string setup = "/etc/modsecurity/crs/crs-setup.conf";  // "" = none
  std::vector<std::string> rules{"/usr/share/modsecurity-crs/rules"};  // files or dirs
  std::string unicodeMap;   // unicode.mapping for t:urlDecodeUni; "" = none
  uint32_t requestBodyLimit = 131072;  // body bytes inspected (<= 262144)
  bool bodyLimitReject = true;         // "bodyLimitAction": "reject" (413) or "inspect"
  std::string cacheDir = "/var/cache/moat/waf";  // compiled databases; "" = no cache
  std::string auditLog;                // JSON lines of matched requests; "" = off
  std::vector<uint32_t> disableRules;  // rule ids removed (SecRuleRemoveById)
  std::vector<WafTargetExclusion> excludeTargets;  // SecRuleUpdateTargetById id "!target"

  bool operator==(const WafConfig&) const = default;
};

enum class GeoSourceType : uint8_t { kZones, kMaxmindCsv, kMmdb };

// One country database. The files are read when the geo tables are built (at
// start, on reload and on POST /api/v1/geo/reload), not by parseConfig.
struct GeoSourceConfig {
  using GeoSourceType = ::moat::control::GeoSourceType;  // also spelled as a member
  GeoSourceType type = GeoSourceType::kZones;  // "zones", "maxmind_csv", "mmdb"; required
  std::string path;        // zones: directory of <cc>.zone files; mmdb: the .mmdb file
  std::string blocksIpv4;  // maxmind_csv: GeoLite2-Country-Blocks-IPv4.csv ("" if blocksIpv6 set)
  std::string blocksIpv6;  // maxmind_csv: GeoLite2-Country-Blocks-IPv6.csv ("" if blocksIpv4 set)
  std::string locations;   // maxmind_csv: GeoLite2-Country-Locations-en.csv (required)
  bool operator==(const GeoSourceConfig&) const = default;
};

struct GeoConfig {
  std::vector<GeoSourceConfig> sources;  // later sources win where prefixes overlap
  bool operator==(const GeoConfig&) const = default;
};

// ---- L4: packet-level load balancing (docs/L4.md) ----------------------

enum class L4Engine : uint8_t { kUring, kDpdk };
using L4Protocol = l4::Protocol;
using L4Forwarding = l4::Forwarding;
using L4BackendDown = l4::BackendDown;

// One virtual service: traffic for (address, protocol, port) goes to a
// backend of `pool` chosen by Maglev on the client's 5-tuple.
struct L4ServiceConfig {
  std::string name;     // unique; default "tcp/10.0.0.1:80" ("tcp/[v6]:80")
  std::string address;  // the VIP (IPv4 or IPv6 literal)
  uint16_t port = 0;
  L4Protocol protocol = L4Protocol::kTcp;
  std::string pool;     // a pools[] name; the pool's backends, weights and health
  L4Forwarding forwarding = L4Forwarding::kIpip;
  uint16_t guePort = 6080;  // gue: UDP destination port on the backend
  L4BackendDown onBackendDown = L4BackendDown::kReset;
  bool operator==(const L4ServiceConfig&) const = default;
};

struct L4FlowConfig {
  uint32_t maxPerWorker = 1048576;  // connection table entries per worker (restart-only)
  uint32_t synTimeoutS = 5;          // only a SYN seen
  uint32_t establishedTimeoutS = 300;
  uint32_t closingTimeoutS = 10;     // after FIN or RST
  uint32_t udpTimeoutS = 30;
  bool operator==(const L4FlowConfig&) const = default;
};

struct L4SynLimitConfig {
  uint32_t perSecond = 0;  // new connections per second per source; 0 = off
  uint32_t burst = 0;      // 0 = perSecond
  bool operator==(const L4SynLimitConfig&) const = default;
};

struct L4NeighborConfig {
  std::string address;  // next hop (a backend) IPv4 or IPv6
  std::string mac;      // "02:00:00:00:00:01"
  bool operator==(const L4NeighborConfig&) const = default;
};

// The DPDK engine (restart-only: EAL and ports are set up once).
struct DpdkConfig {
  std::vector<uint32_t> lcores{1};  // worker lcores: one RX/TX queue pair each
  uint32_t mainLcore = 0;           // runs moatd's control thread
  bool noHuge = false;              // --no-huge (tests, VMs without hugepages)
  uint32_t memoryMb = 0;            // -m; 0 = EAL default (with noHuge: 256)
  std::string port;                 // PCI address "0000:3b:00.0" or a vdev "net_af_packet0,iface=eth1"
  std::vector<std::string> eal;     // more EAL arguments, passed as they are
  // Exception path: frames that are not for an L4 VIP go to the kernel
  // through a TAP interface of this name (L7 VIPs, ssh, ...). "" = dropped
  // (counted).
  std::string exceptionTap = "moat0";
  uint32_t rxDescriptors = 1024;
  uint32_t txDescriptors = 1024;
  uint32_t mbufsPerLcore = 8192;
  uint32_t burst = 32;      // RX burst size (1..256)
  uint32_t txDrainUs = 100; // a partial TX batch waits at most this long
  bool operator==(const DpdkConfig&) const = default;
};

struct L4Config {
  L4Engine engine = L4Engine::kUring;  // restart-only
  std::string localIpv4;  // the balancer's own address: outer source, ARP, ICMP
  std::string localIpv6;  // same for IPv6 ("" = no IPv6 encapsulation)
  uint32_t mtu = 1500;    // of the backend-side link: bigger encapsulated packets get ICMP
  std::vector<L4ServiceConfig> services;
  std::vector<std::string> denyCidrs;  // dropped before any state is made
  std::vector<std::string> geoDeny;    // countries (needs geo.sources), dropped likewise
  L4SynLimitConfig synLimit;
  L4FlowConfig flows;
  std::vector<L4NeighborConfig> neighbors;  // static next-hop MACs; others learned (ARP/NDP)
  DpdkConfig dpdk;
  bool operator==(const L4Config&) const = default;
};

struct Config {
  uint32_t workers = 0;  // 0 = one per online CPU
  std::vector<ListenerConfig> listeners;
  std::vector<PoolConfig> pools;
  std::vector<RouteConfig> routes;  // first match in specificity order, see docs/config.md
  TimeoutsConfig timeouts;
  LimitsConfig limits;
  LoggingConfig logging;
  RateLimitConfig rateLimit;
  WafConfig waf;
  GeoConfig geo;
  L4Config l4;
  bool operator==(const Config&) const = default;
};

struct ConfigError {
  std::string path;     // JSON path, e.g. "pools[0].backends[2].port"
  std::string message;  // e.g. "70000 is not a port"
  std::string toString() const { return path.empty() ? message : path + ": " + message; }
  bool operator==(const ConfigError&) const = default;
};

struct ConfigResult {
  std::optional<Config> config;     // set iff errors is empty
  std::vector<ConfigError> errors;  // every problem found, in document order
};

// Parses and validates a JSON document. Unknown fields are errors (typos must
// not pass silently). Never throws.
ConfigResult parseConfig(std::string_view json);

// Reads FILE and parses it; an unreadable file is one error with an empty path.
ConfigResult loadConfigFile(const std::string& path);

// The embedded default: one listener on 127.0.0.1:8080 routing everything to
// pool "demo" with backends 127.0.0.1:8081 and 127.0.0.1:8082 (the demo
// backends `moatd --demo` starts).
std::string_view defaultConfigJson();

// Names as spelled in the JSON document ("round_robin", "http", "info").
const char* toString(BalanceAlgorithm a);
const char* toString(ListenerProtocol p);
const char* toString(LogLevel l);
const char* toString(RateLimitAlgorithm a);
const char* toString(HealthCheckType t);
const char* toString(GeoSourceType t);
const char* toString(L4Engine e);
const char* toString(L4Protocol p);
const char* toString(L4Forwarding f);
const char* toString(L4BackendDown d);

}  // namespace moat::control
