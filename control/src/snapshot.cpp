#include "moat/control/snapshot.h"

#include <arpa/inet.h>
#include <strings.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <ctime>
#include <map>
#include <mutex>
#include <stdexcept>

#include "moat/control/geo.h"
#include "moat/l4/maglev.h"

namespace moat::control {

namespace {

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && strncasecmp(a.data(), b.data(), a.size()) == 0;
}

std::string_view stripPort(std::string_view host) {
  if (!host.empty() && host.front() == '[') {
    size_t close = host.find(']');
    return close == std::string_view::npos ? host : host.substr(0, close + 1);
  }
  size_t colon = host.rfind(':');
  if (colon != std::string_view::npos && host.find(':') == colon) return host.substr(0, colon);
  return host;
}

// Smooth weighted round robin (as NGINX): spreads heavy backends out instead
// of sending them runs of consecutive requests.
std::vector<uint32_t> smoothRoundRobin(const std::vector<BackendRuntime>& backends) {
  uint64_t total = 0;
  for (const auto& b : backends) total += b.weight;
  std::vector<uint32_t> seq;
  if (total == 0) return seq;
  seq.reserve(total);
  std::vector<int64_t> current(backends.size(), 0);
  for (uint64_t n = 0; n < total; ++n) {
    size_t best = 0;
    for (size_t i = 0; i < backends.size(); ++i) {
      current[i] += backends[i].weight;
      if (current[i] > current[best]) best = i;
    }
    current[best] -= static_cast<int64_t>(total);
    seq.push_back(static_cast<uint32_t>(best));
  }
  return seq;
}

}  // namespace

uint32_t stableBackendId(const std::string& key) {
  static std::mutex mu;
  static std::map<std::string, uint32_t> ids;
  std::lock_guard<std::mutex> lock(mu);
  auto [it, fresh] = ids.emplace(key, static_cast<uint32_t>(ids.size()));
  return it->second;
}

namespace {

// "10.0.0.0/8" -> prefix; false when it does not parse.
bool parsePrefix(const std::string& text, l4::DenyPrefix* out) {
  size_t slash = text.find('/');
  std::string addr = slash == std::string::npos ? text : text.substr(0, slash);
  l4::IpAddress ip;
  if (!l4::IpAddress::parse(addr, ip)) return false;
  int len = ip.len == 4 ? 32 : 128;
  if (slash != std::string::npos) {
    try {
      len = std::stoi(text.substr(slash + 1));
    } catch (...) {
      return false;
    }
  }
  if (len < 0 || len > (ip.len == 4 ? 32 : 128)) return false;
  std::memcpy(out->addr, ip.bytes, ip.len);
  out->ipVersion = ip.len == 4 ? 4 : 6;
  out->length = static_cast<uint8_t>(len);
  return true;
}

void buildL4(const Config& config, const SnapshotInputs& inputs, const Snapshot& snap, l4::Tables* t) {
  const L4Config& c = config.l4;
  t->mtu = c.mtu;
  if (!c.localIpv4.empty()) inet_pton(AF_INET, c.localIpv4.c_str(), t->localIpv4);
  if (!c.localIpv6.empty()) t->hasLocalIpv6 = inet_pton(AF_INET6, c.localIpv6.c_str(), t->localIpv6) == 1;
  std::string err;
  for (const std::string& cidr : c.denyCidrs) {
    if (!t->denyCidrs.add(cidr, &err)) throw std::runtime_error("l4.denyCidrs: " + err);
    l4::DenyPrefix p;
    if (parsePrefix(cidr, &p)) t->denyPrefixes.push_back(p);
  }
  if (inputs.geo) {
    for (const std::string& cc : c.geoDeny) {
      const Country country = packCountry(cc[0], cc[1]);
      for (const std::string& prefix : inputs.geo->prefixesOf(country)) {
        l4::DenyPrefix p;
        if (!parsePrefix(prefix, &p)) continue;
        p.country = country;
        t->denyPrefixes.push_back(p);
        t->denyGeo.add(prefix, &err);
      }
    }
  }
  t->denyCidrs.seal();
  t->denyGeo.seal();
  if (inputs.makeDenyLookup && !t->denyPrefixes.empty()) t->denyLookup = inputs.makeDenyLookup(t->denyPrefixes);
  for (const L4ServiceConfig& sc : c.services) {
    l4::Service s;
    s.name = sc.name;
    s.protocol = sc.protocol;
    s.port = sc.port;
    s.forwarding = sc.forwarding;
    s.guePort = sc.guePort;
    s.onBackendDown = sc.onBackendDown;
    if (!toSocketAddress(sc.address, sc.port, s.listen, s.listenLen)) {
      throw std::runtime_error("bad l4 service address " + sc.address);
    }
    if (s.listen.ss_family == AF_INET6) {
      s.ipVersion = 6;
      std::memcpy(s.vip, &reinterpret_cast<const sockaddr_in6&>(s.listen).sin6_addr, 16);
    } else {
      std::memcpy(s.vip, &reinterpret_cast<const sockaddr_in&>(s.listen).sin_addr, 4);
    }
    uint32_t tableSize = l4::kDefaultMaglevTableSize;
    const PoolRuntime* pool = nullptr;
    for (size_t i = 0; i < config.pools.size(); ++i) {
      if (config.pools[i].name == sc.pool) {
        pool = &snap.pools[i];
        tableSize = config.pools[i].maglevTableSize;
      }
    }
    if (pool == nullptr) throw std::runtime_error("l4 service " + sc.name + ": no pool " + sc.pool);
    uint32_t maxId = 0;
    for (size_t i = 0; i < pool->backends.size(); ++i) {
      const BackendRuntime& br = pool->backends[i];
      l4::Backend b;
      b.id = stableBackendId(br.key);
      b.key = br.key;
      b.sa = br.addr;
      b.saLen = br.addrLen;
      if (br.addr.ss_family == AF_INET6) {
        const auto& a6 = reinterpret_cast<const sockaddr_in6&>(br.addr);
        b.ipVersion = 6;
        std::memcpy(b.addr, &a6.sin6_addr, 16);
        b.port = ntohs(a6.sin6_port);
      } else {
        const auto& a4 = reinterpret_cast<const sockaddr_in&>(br.addr);
        b.ipVersion = 4;
        std::memcpy(b.addr, &a4.sin_addr, 4);
        b.port = ntohs(a4.sin_port);
      }
      b.inService = !br.outOfService;
      b.acceptsNew = br.weight > 0;  // 0 when drained, out of service or configured 0
      maxId = std::max(maxId, b.id);
      s.backends.push_back(std::move(b));
    }
    s.slotById.assign(s.backends.empty() ? 0 : maxId + 1, -1);
    std::vector<l4::MaglevBackend> mb;
    for (size_t i = 0; i < s.backends.size(); ++i) {
      s.slotById[s.backends[i].id] = static_cast<int32_t>(i);
      mb.push_back({s.backends[i].key, s.backends[i].acceptsNew ? pool->backends[i].weight : 0u});
    }
    s.maglev = l4::buildMaglevTable(mb, tableSize);
    t->services.push_back(std::move(s));
  }
  t->buildIndex();
}

}  // namespace

std::string backendKey(const BackendConfig& b) {
  return b.address.find(':') != std::string::npos ? "[" + b.address + "]:" + std::to_string(b.port)
                                                   : b.address + ":" + std::to_string(b.port);
}

bool toSocketAddress(const std::string& address, uint16_t port, sockaddr_storage& out,
                     socklen_t& len) {
  out = sockaddr_storage{};
  if (address.find(':') != std::string::npos) {
    auto* a6 = reinterpret_cast<sockaddr_in6*>(&out);
    a6->sin6_family = AF_INET6;
    a6->sin6_port = htons(port);
    len = sizeof(sockaddr_in6);
    return inet_pton(AF_INET6, address.c_str(), &a6->sin6_addr) == 1;
  }
  auto* a4 = reinterpret_cast<sockaddr_in*>(&out);
  a4->sin_family = AF_INET;
  a4->sin_port = htons(port);
  len = sizeof(sockaddr_in);
  return inet_pton(AF_INET, address.c_str(), &a4->sin_addr) == 1;
}

const RouteRuntime* Snapshot::matchRoute(std::string_view host, std::string_view path) const {
  std::string_view h = stripPort(host);
  for (const RouteRuntime& r : routes) {
    if (!r.host.empty() && !iequals(r.host, h)) continue;
    if (path.substr(0, r.pathPrefix.size()) == r.pathPrefix) return &r;
  }
  return nullptr;
}

ratelimit::Rules buildRateLimitRules(const Config& config) {
  const RateLimitConfig& rc = config.rateLimit;
  ratelimit::Rules out;
  out.enabled = rc.enabled && (!rc.rules.empty() || !rc.deny.empty());
  auto fill = [](l4::CidrSet& set, const std::vector<std::string>& list) {
    for (const std::string& c : list) {
      std::string err;
      if (!set.add(c, &err)) throw std::runtime_error("rateLimit: " + err);
    }
    set.seal();
  };
  fill(out.trustedProxies, rc.trustedProxies);
  fill(out.allow, rc.allow);
  fill(out.deny, rc.deny);
  out.escalateAfter = rc.escalateAfter;
  out.cooldownNs = uint64_t{rc.escalateCooldownS} * 1'000'000'000;
  for (const RateLimitRuleConfig& c : rc.rules) {
    ratelimit::Rule r;
    r.name = c.name;
    r.policy.algorithm = c.algorithm == RateLimitAlgorithm::kTokenBucket
                             ? ratelimit::Algorithm::kTokenBucket
                             : ratelimit::Algorithm::kSlidingWindow;
    r.policy.limit = c.limit;
    r.policy.periodNs = uint64_t{c.periodS} * 1'000'000'000;
    r.policy.burst = c.burst != 0 ? c.burst : c.limit;
    // The seed names the rule and its arithmetic: editing a rule's numbers
    // starts its keys afresh rather than reinterpreting old state.
    std::string identity = c.name + "\n" + toString(c.algorithm) + "\n" +
                           std::to_string(c.limit) + "/" + std::to_string(c.periodS) + "/" +
                           std::to_string(r.policy.burst) + "\n" + std::to_string(static_cast<int>(c.key)) +
                           c.keyName + "/" + std::to_string(c.ipv4Prefix) + "/" + std::to_string(c.ipv6Prefix);
    r.seed = ratelimit::hashKey(0x726c2d73656564ull, identity).lo;
    switch (c.key) {
      case RateLimitKey::kIp: r.key = ratelimit::KeyKind::kIp; break;
      case RateLimitKey::kIpRoute: r.key = ratelimit::KeyKind::kIpRoute; break;
      case RateLimitKey::kHeader: r.key = ratelimit::KeyKind::kHeader; break;
      case RateLimitKey::kCookie: r.key = ratelimit::KeyKind::kCookie; break;
    }
    r.keyName = c.keyName;
    r.v4Prefix = static_cast<uint8_t>(c.ipv4Prefix);
    r.v6Prefix = static_cast<uint8_t>(c.ipv6Prefix);
    for (const std::string& name : c.listeners) {
      for (size_t i = 0; i < config.listeners.size(); ++i) {
        if (config.listeners[i].name == name) r.listeners.push_back(static_cast<uint32_t>(i));
      }
    }
    r.hosts = c.hosts;
    r.pathPrefixes = c.pathPrefixes;
    r.dryRun = c.dryRun;
    r.headers = c.headers;
    r.policyField = "\"" + c.name + "\";q=" + std::to_string(c.limit) + ";w=" +
                    std::to_string(c.periodS);
    out.rules.push_back(std::move(r));
  }
  return out;
}

std::unique_ptr<const Snapshot> buildSnapshot(
    const Config& config, uint64_t version, std::shared_ptr<const waf::Engine> waf,
    std::vector<std::shared_ptr<const l7::TlsListener>> tlsListeners,
    std::vector<std::shared_ptr<const l7::TlsUpstream>> tlsPools) {
  SnapshotInputs in;
  in.waf = std::move(waf);
  in.tlsListeners = std::move(tlsListeners);
  in.tlsPools = std::move(tlsPools);
  return buildSnapshot(config, version, in);
}

std::unique_ptr<const Snapshot> buildSnapshot(const Config& config, uint64_t version,
                                              const SnapshotInputs& inputs) {
  auto snap = std::make_unique<Snapshot>();
  snap->version = version;
  snap->configVersion = inputs.configVersion == 0 ? version : inputs.configVersion;
  snap->config = config;
  auto waf = inputs.waf;
  auto tlsListeners = inputs.tlsListeners;
  auto tlsPools = inputs.tlsPools;
  for (const PoolConfig& pc : config.pools) {
    PoolRuntime pr;
    pr.name = pc.name;
    pr.balance = pc.balance;
    for (const BackendConfig& bc : pc.backends) {
      BackendRuntime br;
      if (!toSocketAddress(bc.address, bc.port, br.addr, br.addrLen))
        throw std::runtime_error("bad backend address " + bc.address);
      br.key = backendKey(bc);
      const std::string id = pc.name + "/" + br.key;
      br.configWeight = bc.weight;
      br.drained = bc.drain;
      br.outOfService = std::find(inputs.outOfService.begin(), inputs.outOfService.end(), id) !=
                        inputs.outOfService.end();
      br.weight = (br.drained || br.outOfService) ? 0 : bc.weight;
      if (pc.outlierDetection.enabled && inputs.passiveSlot) br.passive = inputs.passiveSlot(br.key);
      pr.backends.push_back(std::move(br));
    }
    if (pr.balance == BalanceAlgorithm::kMaglev) {
      std::vector<l4::MaglevBackend> mb;
      for (const auto& b : pr.backends) mb.push_back({b.key, b.weight});
      pr.maglevTable = l4::buildMaglevTable(mb, pc.maglevTableSize);
    }
    pr.rrSequence = smoothRoundRobin(pr.backends);
    snap->pools.push_back(std::move(pr));
  }
  for (const RouteConfig& rc : config.routes) {
    RouteRuntime rr;
    rr.host = (rc.host == "*") ? std::string() : rc.host;
    std::transform(rr.host.begin(), rr.host.end(), rr.host.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    rr.pathPrefix = rc.pathPrefix;
    rr.waf = rc.waf;
    rr.name = (rr.host.empty() ? std::string("*") : rr.host) + rr.pathPrefix;
    for (size_t i = 0; i < config.pools.size(); ++i) {
      if (config.pools[i].name == rc.pool) rr.pool = static_cast<uint32_t>(i);
    }
    snap->routes.push_back(std::move(rr));
  }
  snap->rateLimit = buildRateLimitRules(config);
  snap->waf = std::move(waf);
  tlsListeners.resize(config.listeners.size());
  tlsPools.resize(config.pools.size());
  for (size_t i = 0; i < config.listeners.size(); ++i) {
    if (config.listeners[i].protocol == ListenerProtocol::kHttps && !tlsListeners[i]) {
      throw std::runtime_error("listener " + config.listeners[i].name + " has no TLS contexts");
    }
  }
  for (size_t i = 0; i < config.pools.size(); ++i) {
    if (config.pools[i].tls.enabled && !tlsPools[i]) {
      throw std::runtime_error("pool " + config.pools[i].name + " has no TLS contexts");
    }
  }
  snap->tlsListeners = std::move(tlsListeners);
  snap->tlsPools = std::move(tlsPools);
  snap->geo = inputs.geo;
  for (const ListenerConfig& lc : config.listeners) {
    ListenerGeoRuntime g;
    g.enabled = lc.geo.enabled;
    g.allowMode = lc.geo.allowMode;
    for (const std::string& cc : lc.geo.countries) {
      if (cc.size() == 2) {
        g.countries.push_back(static_cast<uint16_t>((static_cast<unsigned char>(cc[0]) << 8) |
                                                    static_cast<unsigned char>(cc[1])));
      }
    }
    std::sort(g.countries.begin(), g.countries.end());
    std::string err;
    for (const auto& c : lc.geo.allowCidrs) {
      if (!g.allow.add(c, &err)) throw std::runtime_error("listener " + lc.name + " geo.allowCidrs: " + err);
    }
    for (const auto& c : lc.geo.denyCidrs) {
      if (!g.deny.add(c, &err)) throw std::runtime_error("listener " + lc.name + " geo.denyCidrs: " + err);
    }
    g.allow.seal();
    g.deny.seal();
    snap->listenerGeo.push_back(std::move(g));
  }
  buildL4(config, inputs, *snap, &snap->l4);
  // Specific host before any-host; within each, longest prefix first; ties
  // keep document order.
  std::stable_sort(snap->routes.begin(), snap->routes.end(),
                   [](const RouteRuntime& a, const RouteRuntime& b) {
                     if (a.host.empty() != b.host.empty()) return !a.host.empty();
                     return a.pathPrefix.size() > b.pathPrefix.size();
                   });
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  snap->builtNs = static_cast<uint64_t>(ts.tv_sec) * 1000000000u + static_cast<uint64_t>(ts.tv_nsec);
  return snap;
}

SnapshotPublisher::SnapshotPublisher(size_t workers)
    : workers_(workers), seen_(std::make_unique<Seen[]>(workers)) {}

SnapshotPublisher::~SnapshotPublisher() = default;

void SnapshotPublisher::registerWakeFd(size_t worker, int eventFd) {
  seen_[worker].wakeFd.store(eventFd, std::memory_order_release);
}

void SnapshotPublisher::publish(std::unique_ptr<const Snapshot> next) {
  std::lock_guard<std::mutex> lock(mu_);
  current_.store(next.get(), std::memory_order_release);
  owned_.push_back(std::move(next));
  for (size_t i = 0; i < workers_; ++i) {
    int fd = seen_[i].wakeFd.load(std::memory_order_acquire);
    if (fd >= 0) {
      uint64_t one = 1;
      ssize_t n = ::write(fd, &one, sizeof(one));
      (void)n;  // EAGAIN means a wake-up is already pending: fine
    }
  }
}

size_t SnapshotPublisher::reclaim() {
  std::lock_guard<std::mutex> lock(mu_);
  uint64_t minSeen = UINT64_MAX;
  for (size_t i = 0; i < workers_; ++i) {
    minSeen = std::min(minSeen, seen_[i].version.load(std::memory_order_acquire));
  }
  const Snapshot* cur = current_.load(std::memory_order_acquire);
  // A retired snapshot with version v is unused once every worker has
  // acquired a version > v: it never looks at v again.
  std::erase_if(owned_, [&](const std::unique_ptr<const Snapshot>& s) {
    return s.get() != cur && s->version < minSeen;
  });
  return owned_.size() - 1;
}

}  // namespace moat::control
