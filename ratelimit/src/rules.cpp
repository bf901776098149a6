#include "moat/ratelimit/rules.h"

#include <arpa/inet.h>

#include <charconv>
#include <cstring>

namespace moat::ratelimit {

namespace {

// Key spaces of the escalation machinery, apart from every rule's.
constexpr uint64_t kOffenseSeed = 0x6f6666656e736531ull;
constexpr uint64_t kPenaltySeed = 0x70656e616c747931ull;

char lower(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c + 32) : c; }

bool iequalsPrefixless(std::string_view a, std::string_view lowerB) {
  if (a.size() != lowerB.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (lower(a[i]) != lowerB[i]) return false;
  }
  return true;
}

std::string_view hostWithoutPort(std::string_view h) {
  if (!h.empty() && h.front() == '[') {
    size_t close = h.find(']');
    return close == std::string_view::npos ? h : h.substr(0, close + 1);
  }
  size_t colon = h.find(':');
  return colon == std::string_view::npos ? h : h.substr(0, colon);
}

// The address bits a rule counts: the client masked to the rule's prefix.
size_t maskedAddress(const l4::IpAddress& a, uint8_t v4Prefix, uint8_t v6Prefix, uint8_t* out) {
  uint8_t prefix = a.len == 4 ? v4Prefix : v6Prefix;
  for (size_t i = 0; i < a.len; ++i) {
    int bits = static_cast<int>(prefix) - static_cast<int>(i * 8);
    uint8_t m = bits >= 8 ? 0xff : bits <= 0 ? 0 : static_cast<uint8_t>(0xff << (8 - bits));
    out[i] = a.bytes[i] & m;
  }
  out[a.len] = a.len;  // family in the key: 0.0.0.0/32 vs ::/128 never collide
  return a.len + 1u;
}

struct Found {
  std::string_view name;
  std::string_view value;
  bool found = false;
};

bool takeFirst(void* ctx, std::string_view v) {
  auto* f = static_cast<Found*>(ctx);
  f->value = v;
  f->found = true;
  return true;
}

// Finds cookie `f->name` in one Cookie field ("a=1; b=2").
bool findCookie(void* ctx, std::string_view v) {
  auto* f = static_cast<Found*>(ctx);
  while (!v.empty()) {
    size_t semi = v.find(';');
    std::string_view pair = v.substr(0, semi);
    v = semi == std::string_view::npos ? std::string_view() : v.substr(semi + 1);
    while (!pair.empty() && (pair.front() == ' ' || pair.front() == '\t')) pair.remove_prefix(1);
    size_t eq = pair.find('=');
    if (eq == std::string_view::npos || pair.substr(0, eq) != f->name) continue;
    std::string_view val = pair.substr(eq + 1);
    while (!val.empty() && (val.back() == ' ' || val.back() == '\t')) val.remove_suffix(1);
    if (val.size() >= 2 && val.front() == '"' && val.back() == '"') val = val.substr(1, val.size() - 2);
    f->value = val;
    f->found = true;
    return true;
  }
  return false;
}

// The value a header- or cookie-keyed rule counts; false when absent (such a
// request is not counted by that rule, as AWS WAF does).
bool namedValue(const Rule& rule, const RequestInfo& req, std::string_view& out) {
  if (req.headers.forEach == nullptr) return false;
  Found f;
  f.name = rule.keyName;
  if (rule.key == KeyKind::kHeader) {
    req.headers.forEach(req.headers.ctx, rule.keyName, takeFirst, &f);
  } else {
    req.headers.forEach(req.headers.ctx, "cookie", findCookie, &f);
  }
  if (!f.found || f.value.empty()) return false;
  out = f.value;
  return true;
}

bool applies(const Rule& r, const RequestInfo& req) {
  if (!r.listeners.empty()) {
    bool hit = false;
    for (uint32_t l : r.listeners) hit = hit || l == req.listener;
    if (!hit) return false;
  }
  if (!r.hosts.empty()) {
    std::string_view h = hostWithoutPort(req.host);
    bool hit = false;
    for (const std::string& want : r.hosts) hit = hit || iequalsPrefixless(h, want);
    if (!hit) return false;
  }
  if (!r.pathPrefixes.empty()) {
    bool hit = false;
    for (const std::string& p : r.pathPrefixes) hit = hit || req.path.starts_with(p);
    if (!hit) return false;
  }
  return true;
}

bool ruleKey(const Rule& r, const RequestInfo& req, KeyHash& out) {
  uint8_t buf[17];
  switch (r.key) {
    case KeyKind::kIp: {
      if (req.client.len == 0) return false;
      size_t n = maskedAddress(req.client, r.v4Prefix, r.v6Prefix, buf);
      out = hashKey(r.seed, std::string_view(reinterpret_cast<char*>(buf), n));
      return true;
    }
    case KeyKind::kIpRoute: {
      if (req.client.len == 0) return false;
      size_t n = maskedAddress(req.client, r.v4Prefix, r.v6Prefix, buf);
      uint64_t routeSeed = hashKey(r.seed, req.route).lo;
      out = hashKey(routeSeed, std::string_view(reinterpret_cast<char*>(buf), n));
      return true;
    }
    case KeyKind::kHeader:
    case KeyKind::kCookie: {
      std::string_view v;
      if (!namedValue(r, req, v)) return false;
      out = hashKey(r.seed, v);
      return true;
    }
  }
  return false;
}

KeyHash clientKey(uint64_t seed, const l4::IpAddress& a) {
  uint8_t buf[17];
  size_t n = maskedAddress(a, 32, 64, buf);
  return hashKey(seed, std::string_view(reinterpret_cast<char*>(buf), n));
}

}  // namespace

bool operatorKey(const Rule& r, std::string_view text, KeyHash& out, std::string* err) {
  uint8_t buf[17];
  switch (r.key) {
    case KeyKind::kIp: {
      l4::IpAddress a;
      if (!l4::IpAddress::parse(text, a)) {
        if (err != nullptr) *err = "rule " + r.name + " counts client addresses; \"" + std::string(text) + "\" is not one";
        return false;
      }
      size_t n = maskedAddress(a, r.v4Prefix, r.v6Prefix, buf);
      out = hashKey(r.seed, std::string_view(reinterpret_cast<char*>(buf), n));
      return true;
    }
    case KeyKind::kIpRoute: {
      size_t at = text.rfind('@');
      l4::IpAddress a;
      if (at == std::string_view::npos || !l4::IpAddress::parse(text.substr(0, at), a)) {
        if (err != nullptr) *err = "rule " + r.name + " counts address and route: give ADDRESS@ROUTE";
        return false;
      }
      size_t n = maskedAddress(a, r.v4Prefix, r.v6Prefix, buf);
      uint64_t routeSeed = hashKey(r.seed, text.substr(at + 1)).lo;
      out = hashKey(routeSeed, std::string_view(reinterpret_cast<char*>(buf), n));
      return true;
    }
    case KeyKind::kHeader:
    case KeyKind::kCookie:
      out = hashKey(r.seed, text);
      return true;
  }
  return false;
}

namespace {

uint64_t ceilSeconds(uint64_t ns) { return (ns + 999'999'999) / 1'000'000'000; }

void appendNumber(std::string& out, uint64_t v) {
  char buf[24];
  auto [p, ec] = std::to_chars(buf, buf + sizeof buf, v);
  out.append(buf, static_cast<size_t>(p - buf));
}

}  // namespace

Verdict evaluate(const Rules& rules, Table& table, const RequestInfo& req, uint64_t nowNs) {
  Verdict v;
  if (!rules.enabled) return v;
  if (req.client.len != 0) {
    if (rules.allow.contains(req.client)) {
      v.allowListed = true;
      return v;
    }
    if (rules.deny.contains(req.client)) {
      v.action = Action::kDeny;
      return v;
    }
    if (rules.escalateAfter != 0) {
      if (uint64_t until = table.blockedUntil(clientKey(kPenaltySeed, req.client), nowNs)) {
        v.action = Action::kBanned;
        v.decision.retryAfterNs = until - nowNs;
        return v;
      }
    }
  }
  for (size_t i = 0; i < rules.rules.size() && i < kMaxRules; ++i) {
    const Rule& r = rules.rules[i];
    if (!applies(r, req)) continue;
    KeyHash k;
    if (!ruleKey(r, req, k)) continue;
    v.matched |= 1ull << i;
    Decision d = table.check(k, r.policy, nowNs);
    if (!d.allowed) {
      v.limited |= 1ull << i;
      if (r.dryRun) continue;
      if (v.action != Action::kLimit || d.retryAfterNs > v.decision.retryAfterNs) {
        v.action = Action::kLimit;
        v.rule = &r;
        v.decision = d;
      }
    } else if (r.headers && v.action == Action::kAllow &&
               (v.rule == nullptr || d.remaining < v.decision.remaining)) {
      v.rule = &r;
      v.decision = d;
    }
  }
  if (v.action == Action::kLimit && rules.escalateAfter != 0 && req.client.len != 0) {
    bool ban = rules.escalateAfter == 1;
    KeyHash offense = clientKey(kOffenseSeed, req.client);
    if (!ban) {
      Policy p;
      p.algorithm = Algorithm::kTokenBucket;
      p.limit = rules.escalateAfter - 1;
      p.burst = rules.escalateAfter - 1;
      p.periodNs = rules.cooldownNs;
      ban = !table.check(offense, p, nowNs).allowed;
    }
    if (ban) {
      table.reset(offense);
      table.block(clientKey(kPenaltySeed, req.client), nowNs + rules.cooldownNs);
      v.escalated = true;
    }
  }
  return v;
}

bool isBanned(const Rules& rules, const Table& table, const l4::IpAddress& client,
              uint64_t nowNs) {
  if (!rules.enabled || rules.escalateAfter == 0 || client.len == 0) return false;
  return table.blockedUntil(clientKey(kPenaltySeed, client), nowNs) != 0;
}

l4::IpAddress resolveClient(const l4::CidrSet& trusted, const l4::IpAddress& peer,
                            std::span<const std::string_view> xff, bool* invalid) {
  if (trusted.empty() || xff.empty() || !trusted.contains(peer)) return peer;
  l4::IpAddress cur = peer;
  for (size_t f = xff.size(); f-- > 0;) {
    std::string_view v = xff[f];
    while (!v.empty()) {
      size_t comma = v.rfind(',');
      std::string_view item = comma == std::string_view::npos ? v : v.substr(comma + 1);
      v = comma == std::string_view::npos ? std::string_view() : v.substr(0, comma);
      while (!item.empty() && (item.front() == ' ' || item.front() == '\t')) item.remove_prefix(1);
      while (!item.empty() && (item.back() == ' ' || item.back() == '\t')) item.remove_suffix(1);
      if (item.empty()) continue;  // "a,,b": empty list elements are allowed (RFC 9110 5.6.1)
      // Tolerate "[v6]:port" and "v4:port" as some proxies write them.
      if (item.front() == '[') {
        size_t close = item.find(']');
        if (close != std::string_view::npos) item = item.substr(1, close - 1);
      } else if (size_t colon = item.find(':');
                 colon != std::string_view::npos && item.find(':', colon + 1) == std::string_view::npos) {
        item = item.substr(0, colon);
      }
      l4::IpAddress a;
      if (!l4::IpAddress::parse(item, a)) {
        if (invalid != nullptr) *invalid = true;
        return cur;
      }
      if (!trusted.contains(a)) return a;
      cur = a;
    }
  }
  return cur;
}

size_t describeKey(const Rule& rule, const RequestInfo& req, char* out, size_t cap) {
  if (cap == 0) return 0;
  size_t n = 0;
  auto put = [&](std::string_view s) {
    for (char c : s) {
      if (n + 1 >= cap) break;
      out[n++] = (c >= 0x20 && c < 0x7f) ? c : '?';
    }
  };
  if (rule.key == KeyKind::kIp || rule.key == KeyKind::kIpRoute) {
    uint8_t masked[17];
    maskedAddress(req.client, rule.v4Prefix, rule.v6Prefix, masked);
    char text[INET6_ADDRSTRLEN] = {};
    if (req.client.len == 4) inet_ntop(AF_INET, masked, text, sizeof text);
    if (req.client.len == 16) inet_ntop(AF_INET6, masked, text, sizeof text);
    put(text);
    uint8_t prefix = req.client.len == 4 ? rule.v4Prefix : rule.v6Prefix;
    if (prefix != req.client.len * 8) {
      char num[8];
      auto [p, ec] = std::to_chars(num, num + sizeof num, prefix);
      put("/");
      put(std::string_view(num, static_cast<size_t>(p - num)));
    }
    if (rule.key == KeyKind::kIpRoute) {
      put(" route=");
      put(req.route);
    }
  } else {
    std::string_view v;
    put(rule.key == KeyKind::kHeader ? "header " : "cookie ");
    put(rule.keyName);
    put("=");
    if (namedValue(rule, req, v)) put(v.substr(0, 64));
  }
  out[n] = 0;
  return n;
}

void appendHeaders(const Verdict& v, std::string& out) {
  if (v.action == Action::kBanned) {
    out.append("Retry-After: ");
    appendNumber(out, ceilSeconds(v.decision.retryAfterNs));
    out.append("\r\n");
    return;
  }
  if (v.rule == nullptr || v.action == Action::kDeny) return;
  out.append("RateLimit-Policy: ").append(v.rule->policyField).append("\r\nRateLimit: \"");
  out.append(v.rule->name).append("\";r=");
  appendNumber(out, v.decision.remaining);
  out.append(";t=");
  appendNumber(out, ceilSeconds(v.decision.resetNs));
  out.append("\r\n");
  if (v.action == Action::kLimit) {
    uint64_t s = ceilSeconds(v.decision.retryAfterNs);
    out.append("Retry-After: ");
    appendNumber(out, s == 0 ? 1 : s);
    out.append("\r\n");
  }
}

}  // namespace moat::ratelimit
