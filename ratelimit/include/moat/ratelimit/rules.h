// Rate-limit rules as a worker evaluates them: which rules apply to a
// request, what key each one counts, and the verdict.
//
// Rules are built by the control side into the config snapshot (immutable,
// shared read-only by workers). evaluate() runs on a worker for every request
// before the WAF: no allocation, no exceptions; its only shared state is the
// Table, whose sets it locks briefly.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "moat/l4/cidr.h"
#include "moat/ratelimit/limiter.h"

namespace moat::ratelimit {

enum class KeyKind : uint8_t { kIp, kIpRoute, kHeader, kCookie };

inline constexpr size_t kMaxRules = 64;  // rule masks in Verdict are 64-bit

struct Rule {
  std::string name;
  Policy policy;
  uint64_t seed = 0;  // hash of name and arithmetic: a changed rule starts fresh
  KeyKind key = KeyKind::kIp;
  std::string keyName;  // header name (lowercase) or cookie name
  uint8_t v4Prefix = 32, v6Prefix = 64;
  std::vector<uint32_t> listeners;        // listener indexes; empty = all
  std::vector<std::string> hosts;         // lowercase, no port; empty = all
  std::vector<std::string> pathPrefixes;  // empty = all
  bool dryRun = false;
  bool headers = false;  // RateLimit headers on allowed responses
  std::string policyField;  // `"name";q=LIMIT;w=SECONDS` for RateLimit-Policy
};

struct Rules {
  bool enabled = false;
  std::vector<Rule> rules;  // at most kMaxRules
  l4::CidrSet trustedProxies, allow, deny;
  uint32_t escalateAfter = 0;  // 0 = no escalation
  uint64_t cooldownNs = 0;
};

// Reads one request header's value by lowercase name ("" if absent); for the
// Cookie header, every Cookie field joined is not needed: each is offered in
// turn through forEachCookieHeader.
struct RequestHeaders {
  const void* ctx = nullptr;
  // Calls fn(value) for each field named `lowerName`, in order; stops when
  // fn returns true. Returns whether any call returned true.
  bool (*forEach)(const void* ctx, std::string_view lowerName, bool (*fn)(void*, std::string_view),
                  void* fnCtx) = nullptr;
};

struct RequestInfo {
  uint32_t listener = 0;
  std::string_view host;   // Host as received (any case, may carry :port)
  std::string_view path;   // origin-form path (with query)
  std::string_view route;  // route name
  l4::IpAddress client;
  RequestHeaders headers;
};

enum class Action : uint8_t {
  kAllow,
  kLimit,   // 429: a rule ran out
  kDeny,    // 403: client in the deny list
  kBanned,  // 429: client escalated to the penalty box
};

struct Verdict {
  Action action = Action::kAllow;
  const Rule* rule = nullptr;  // kLimit: the rule with the longest wait; kAllow: the
                               // rule with headers=true and the fewest remaining
  Decision decision;
  uint64_t matched = 0;     // bit i: rules[i] applied (a key was found)
  uint64_t limited = 0;     // bit i: rules[i] refused (enforced or dry run)
  bool allowListed = false;
  bool escalated = false;   // this refusal put the client in the penalty box
};

// Worker. The verdict for one request; charges every applicable rule that
// admits it. Cost: one Table::check per applicable rule plus the scope tests.
Verdict evaluate(const Rules& rules, Table& table, const RequestInfo& req, uint64_t nowNs);

// Control side (the admin API's "read / reset a key"). The table key rule `r`
// counts for an operator-given key: a client address for ip rules ("ip" as
// an address: masked to the rule's prefix), "ADDRESS@ROUTE" for ip_route
// rules, the header or cookie value otherwise. False with `err` set when the
// text does not fit the rule's key kind.
bool operatorKey(const Rule& r, std::string_view text, KeyHash& out, std::string* err);

// Worker. True if `client` sits in the penalty box (check at accept: the
// connection is closed before any byte is read).
bool isBanned(const Rules& rules, const Table& table, const l4::IpAddress& client,
              uint64_t nowNs);

// Worker. The client address for rate limiting: the peer, or, when the peer
// is a trusted proxy, the right-most X-Forwarded-For entry not itself
// trusted. `xff` are the X-Forwarded-For field values in order. Sets
// *invalid when a trusted hop wrote something that is not an address (the
// last trusted hop is then used).
l4::IpAddress resolveClient(const l4::CidrSet& trusted, const l4::IpAddress& peer,
                            std::span<const std::string_view> xff, bool* invalid);

// Printable form of the key `rule` counts for `req` (for top offenders and
// logs): "203.0.113.7", "2001:db8::/64", "x-api-key=abc...". Writes at most
// cap-1 bytes plus NUL into out; returns the length. No allocation.
size_t describeKey(const Rule& rule, const RequestInfo& req, char* out, size_t cap);

// Appends RateLimit-Policy and RateLimit fields (IETF draft
// draft-ietf-httpapi-ratelimit-headers) and, when refused, Retry-After, each
// ending in CRLF. Reuses out's capacity.
void appendHeaders(const Verdict& v, std::string& out);

}  // namespace moat::ratelimit
