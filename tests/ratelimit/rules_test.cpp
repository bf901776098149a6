// Rule evaluation: scopes, keys, IPv6 aggregation, trusted proxies, lists,
// dry run, escalation and the response fields.
#include "moat/ratelimit/rules.h"

#include <gtest/gtest.h>

#include <string>
#include <utility>
#include <vector>

#include "moat/control/config.h"
#include "moat/control/snapshot.h"

using namespace moat;
using namespace moat::ratelimit;

namespace {

constexpr uint64_t kSec = 1'000'000'000;

struct Req {
  std::vector<std::pair<std::string, std::string>> headers;
  RequestInfo info;

  explicit Req(const char* ip, std::string_view path = "/", std::string_view host = "example.com") {
    EXPECT_TRUE(l4::IpAddress::parse(ip, info.client)) << ip;
    info.path = path;
    info.host = host;
    info.route = "*/";
    info.headers.ctx = this;
    info.headers.forEach = [](const void* ctx, std::string_view name,
                              bool (*fn)(void*, std::string_view), void* fnCtx) {
      for (const auto& [n, v] : static_cast<const Req*>(ctx)->headers) {
        if (n == name && fn(fnCtx, v)) return true;
      }
      return false;
    };
  }
  Req& header(std::string n, std::string v) {
    headers.emplace_back(std::move(n), std::move(v));
    return *this;
  }
};

Rules rulesFrom(const std::string& rateLimitJson) {
  std::string doc = R"({"listeners":[{"name":"web","address":"127.0.0.1","port":8080},
                                      {"name":"api","address":"127.0.0.1","port":8081}],
                        "rateLimit":)" + rateLimitJson + "}";
  control::ConfigResult r = control::parseConfig(doc);
  for (const auto& e : r.errors) ADD_FAILURE() << e.toString();
  return control::buildRateLimitRules(*r.config);
}

int admitted(const Rules& rules, Table& t, const RequestInfo& ri, uint64_t now, int n) {
  int ok = 0;
  for (int i = 0; i < n; ++i) ok += evaluate(rules, t, ri, now).action == Action::kAllow ? 1 : 0;
  return ok;
}

}  // namespace

TEST(Rules, DefaultIsTwoThousandPerFiveMinutesPerIp) {
  control::ConfigResult r = control::parseConfig(
      R"({"listeners":[{"address":"127.0.0.1","port":8080}]})");
  ASSERT_TRUE(r.config);
  Rules rules = control::buildRateLimitRules(*r.config);
  ASSERT_TRUE(rules.enabled);
  ASSERT_EQ(rules.rules.size(), 1u);
  Table t(1000);
  Req a("192.0.2.1"), b("192.0.2.2");
  EXPECT_EQ(admitted(rules, t, a.info, kSec, 2500), 2000);
  EXPECT_EQ(admitted(rules, t, b.info, kSec, 10), 10);
  Verdict v = evaluate(rules, t, a.info, kSec);
  EXPECT_EQ(v.action, Action::kLimit);
  std::string h;
  appendHeaders(v, h);
  EXPECT_EQ(h, "RateLimit-Policy: \"default\";q=2000;w=300\r\nRateLimit: \"default\";r=0;t=300\r\n"
               "Retry-After: 1\r\n");
}

TEST(Rules, Ipv6ClientsAggregateToTheirPrefix) {
  Rules rules = rulesFrom(R"({"rules":[{"name":"r","limit":3,"periodS":60}]})");
  Table t(1000);
  Req a("2001:db8:1:2::1"), b("2001:db8:1:2:ffff::9"), c("2001:db8:1:3::1");
  EXPECT_EQ(admitted(rules, t, a.info, 0, 2), 2);
  EXPECT_EQ(admitted(rules, t, b.info, 0, 5), 1);  // same /64: shares the bucket
  EXPECT_EQ(admitted(rules, t, c.info, 0, 5), 3);  // next /64: its own
  Rules wide = rulesFrom(R"({"rules":[{"name":"r","limit":3,"periodS":60,"ipv6Prefix":48}]})");
  Table t2(1000);
  EXPECT_EQ(admitted(wide, t2, a.info, 0, 2), 2);
  EXPECT_EQ(admitted(wide, t2, c.info, 0, 5), 1);
}

TEST(Rules, Ipv4PrefixAggregation) {
  Rules rules = rulesFrom(R"({"rules":[{"name":"r","limit":2,"periodS":60,"ipv4Prefix":24}]})");
  Table t(1000);
  Req a("198.51.100.1"), b("198.51.100.200"), c("198.51.101.1");
  EXPECT_EQ(admitted(rules, t, a.info, 0, 1), 1);
  EXPECT_EQ(admitted(rules, t, b.info, 0, 5), 1);
  EXPECT_EQ(admitted(rules, t, c.info, 0, 5), 2);
  char buf[64];
  describeKey(rules.rules[0], b.info, buf, sizeof buf);
  EXPECT_STREQ(buf, "198.51.100.0/24");
}

TEST(Rules, ScopesByListenerHostAndPath) {
  Rules rules = rulesFrom(R"({"rules":[{"name":"login","limit":1,"periodS":60,
      "listeners":["api"],"hosts":["Shop.Example"],"pathPrefixes":["/login"]}]})");
  Table t(1000);
  Req in("192.0.2.1", "/login?x=1", "shop.example:8081");
  in.info.listener = 1;
  EXPECT_EQ(admitted(rules, t, in.info, 0, 3), 1);
  Req otherPath("192.0.2.1", "/home", "shop.example");
  otherPath.info.listener = 1;
  EXPECT_EQ(admitted(rules, t, otherPath.info, 0, 3), 3);
  Req otherHost("192.0.2.1", "/login", "blog.example");
  otherHost.info.listener = 1;
  EXPECT_EQ(admitted(rules, t, otherHost.info, 0, 3), 3);
  Req otherListener("192.0.2.1", "/login", "shop.example");
  otherListener.info.listener = 0;
  EXPECT_EQ(admitted(rules, t, otherListener.info, 0, 3), 3);
}

TEST(Rules, HeaderAndCookieKeys) {
  Rules rules = rulesFrom(R"({"rules":[{"name":"k","limit":2,"periodS":60,"key":"header:X-Api-Key"},
                                       {"name":"s","limit":1,"periodS":60,"key":"cookie:sid"}]})");
  Table t(1000);
  Req a("192.0.2.1"), b("192.0.2.2"), none("192.0.2.3");
  a.header("x-api-key", "alpha");
  b.header("x-api-key", "alpha");  // another address, same key: one bucket
  EXPECT_EQ(admitted(rules, t, a.info, 0, 1), 1);
  EXPECT_EQ(admitted(rules, t, b.info, 0, 5), 1);
  EXPECT_EQ(admitted(rules, t, none.info, 0, 5), 5);  // no key: the rule does not apply
  Req c1("192.0.2.4"), c2("192.0.2.5");
  c1.header("cookie", "theme=dark; sid=abc").header("x-api-key", "c1");
  c2.header("cookie", "sid=abc").header("x-api-key", "c2");
  EXPECT_EQ(admitted(rules, t, c1.info, 0, 1), 1);
  Verdict v = evaluate(rules, t, c2.info, 0);
  EXPECT_EQ(v.action, Action::kLimit);
  ASSERT_NE(v.rule, nullptr);
  EXPECT_EQ(v.rule->name, "s");
  char buf[64];
  describeKey(*v.rule, c2.info, buf, sizeof buf);
  EXPECT_STREQ(buf, "cookie sid=abc");
}

TEST(Rules, IpPlusRouteCountsRoutesApart) {
  Rules rules = rulesFrom(R"({"rules":[{"name":"r","limit":1,"periodS":60,"key":"ip_route"}]})");
  Table t(1000);
  Req a("192.0.2.1"), b("192.0.2.1");
  a.info.route = "*/a";
  b.info.route = "*/b";
  EXPECT_EQ(admitted(rules, t, a.info, 0, 3), 1);
  EXPECT_EQ(admitted(rules, t, b.info, 0, 3), 1);
}

TEST(Rules, MostRestrictiveRuleWins) {
  Rules rules = rulesFrom(R"({"rules":[{"name":"wide","limit":100,"periodS":60,"headers":true},
                                       {"name":"narrow","limit":3,"periodS":60,"headers":true}]})");
  Table t(1000);
  Req a("192.0.2.1");
  Verdict first = evaluate(rules, t, a.info, 0);
  ASSERT_EQ(first.action, Action::kAllow);
  ASSERT_NE(first.rule, nullptr);
  EXPECT_EQ(first.rule->name, "narrow");  // fewest remaining goes in the headers
  EXPECT_EQ(first.decision.remaining, 2u);
  std::string h;
  appendHeaders(first, h);
  EXPECT_EQ(h, "RateLimit-Policy: \"narrow\";q=3;w=60\r\nRateLimit: \"narrow\";r=2;t=20\r\n");
  EXPECT_EQ(admitted(rules, t, a.info, 0, 10), 2);
  Verdict v = evaluate(rules, t, a.info, 0);
  EXPECT_EQ(v.rule->name, "narrow");
  EXPECT_EQ(v.matched, 3u);
  EXPECT_EQ(v.limited, 2u);
}

TEST(Rules, DryRunCountsButNeverRefuses) {
  Rules rules = rulesFrom(R"({"rules":[{"name":"r","limit":2,"periodS":60,"dryRun":true}]})");
  Table t(1000);
  Req a("192.0.2.1");
  int limitedBits = 0;
  for (int i = 0; i < 5; ++i) {
    Verdict v = evaluate(rules, t, a.info, 0);
    EXPECT_EQ(v.action, Action::kAllow);
    limitedBits += static_cast<int>(v.limited & 1);
  }
  EXPECT_EQ(limitedBits, 3);
}

TEST(Rules, AllowAndDenyLists) {
  Rules rules = rulesFrom(R"({"allow":["10.0.0.0/8"],"deny":["203.0.113.0/24","2001:db8:bad::/48"],
                              "rules":[{"name":"r","limit":1,"periodS":60}]})");
  Table t(1000);
  Req ok("10.1.2.3"), bad("203.0.113.9"), bad6("2001:db8:bad:1::5"), plain("192.0.2.1");
  EXPECT_EQ(admitted(rules, t, ok.info, 0, 50), 50);
  EXPECT_TRUE(evaluate(rules, t, ok.info, 0).allowListed);
  EXPECT_EQ(evaluate(rules, t, bad.info, 0).action, Action::kDeny);
  EXPECT_EQ(evaluate(rules, t, bad6.info, 0).action, Action::kDeny);
  EXPECT_EQ(admitted(rules, t, plain.info, 0, 5), 1);
}

TEST(Rules, DisabledLimitsNothing) {
  Rules rules = rulesFrom(R"({"enabled":false,"rules":[{"name":"r","limit":1,"periodS":60}]})");
  Table t(1000);
  Req a("192.0.2.1");
  EXPECT_EQ(admitted(rules, t, a.info, 0, 10), 10);
}

TEST(Rules, RepeatOffendersAreBannedForTheCooldown) {
  Rules rules = rulesFrom(R"({"escalation":{"after":3,"cooldownS":100},
                              "rules":[{"name":"r","limit":1,"periodS":1}]})");
  Table t(1000);
  Req a("192.0.2.1"), b("192.0.2.2");
  EXPECT_EQ(evaluate(rules, t, a.info, 0).action, Action::kAllow);
  EXPECT_FALSE(evaluate(rules, t, a.info, 0).escalated);  // 429 #1
  EXPECT_FALSE(evaluate(rules, t, a.info, 0).escalated);  // 429 #2
  Verdict third = evaluate(rules, t, a.info, 0);          // 429 #3: banned
  EXPECT_EQ(third.action, Action::kLimit);
  EXPECT_TRUE(third.escalated);
  EXPECT_TRUE(isBanned(rules, t, a.info.client, 50 * kSec));
  EXPECT_FALSE(isBanned(rules, t, b.info.client, 50 * kSec));
  // Even with tokens back, a banned client is refused until the cooldown ends.
  Verdict banned = evaluate(rules, t, a.info, 50 * kSec);
  EXPECT_EQ(banned.action, Action::kBanned);
  std::string h;
  appendHeaders(banned, h);
  EXPECT_EQ(h, "Retry-After: 50\r\n");
  EXPECT_FALSE(isBanned(rules, t, a.info.client, 100 * kSec));
  EXPECT_EQ(evaluate(rules, t, a.info, 100 * kSec).action, Action::kAllow);
}

TEST(ResolveClient, PeerUnlessTrusted) {
  l4::CidrSet trusted;
  ASSERT_TRUE(trusted.add("10.0.0.0/8", nullptr));
  ASSERT_TRUE(trusted.add("::1", nullptr));
  trusted.seal();
  auto resolve = [&](const char* peer, std::vector<std::string_view> xff, bool* invalid = nullptr) {
    l4::IpAddress p;
    EXPECT_TRUE(l4::IpAddress::parse(peer, p));
    return resolveClient(trusted, p, xff, invalid).toString();
  };
  // Untrusted peer: its XFF is ignored.
  EXPECT_EQ(resolve("192.0.2.1", {"198.51.100.7"}), "192.0.2.1");
  // Trusted peer: right-most untrusted entry.
  EXPECT_EQ(resolve("10.0.0.1", {"198.51.100.7"}), "198.51.100.7");
  EXPECT_EQ(resolve("10.0.0.1", {"1.1.1.1, 198.51.100.7, 10.2.3.4"}), "198.51.100.7");
  // A spoofed left part cannot win over the address a trusted hop saw.
  EXPECT_EQ(resolve("10.0.0.1", {"203.0.113.66", "198.51.100.7"}), "198.51.100.7");
  // Only trusted hops: the left-most of them.
  EXPECT_EQ(resolve("10.0.0.1", {"10.9.9.9, 10.8.8.8"}), "10.9.9.9");
  // Ports and brackets as some proxies write them.
  EXPECT_EQ(resolve("::1", {"[2001:db8::7]:4711"}), "2001:db8::7");
  EXPECT_EQ(resolve("::1", {"198.51.100.7:4711"}), "198.51.100.7");
  bool invalid = false;
  EXPECT_EQ(resolve("10.0.0.1", {"198.51.100.7, garbage, 10.2.3.4"}, &invalid), "10.2.3.4");
  EXPECT_TRUE(invalid);
  EXPECT_EQ(resolve("10.0.0.1", {}), "10.0.0.1");
}

TEST(RulesConfig, ErrorsNameTheField) {
  auto errors = [](const std::string& rl) {
    std::string doc = R"({"listeners":[{"address":"127.0.0.1","port":8080}],"rateLimit":)" + rl + "}";
    std::string all;
    for (const auto& e : control::parseConfig(doc).errors) all += e.toString() + "\n";
    return all;
  };
  EXPECT_NE(errors(R"({"rules":[{"name":"a","limit":0}]})").find("rateLimit.rules[0].limit: must be 1.."),
            std::string::npos);
  EXPECT_NE(errors(R"({"rules":[{"name":"a"},{"name":"a"}]})").find("rateLimit.rules[1].name: duplicate rule name"),
            std::string::npos);
  EXPECT_NE(errors(R"({"rules":[{"name":"a","key":"header:"}]})").find("rateLimit.rules[0].key"),
            std::string::npos);
  EXPECT_NE(errors(R"({"rules":[{"name":"a","key":"geo"}]})").find("unknown key \"geo\""),
            std::string::npos);
  EXPECT_NE(errors(R"({"deny":["10.0.0.1/8"]})").find("rateLimit.deny[0]: \"10.0.0.1/8\": address has bits set"),
            std::string::npos);
  EXPECT_NE(errors(R"({"trustedProxies":["nope"]})").find("rateLimit.trustedProxies[0]"),
            std::string::npos);
  EXPECT_NE(errors(R"({"rules":[{"name":"a","listeners":["ghost"]}]})").find("rateLimit.rules[0].listeners[0]: no listener named \"ghost\""),
            std::string::npos);
  EXPECT_NE(errors(R"({"rules":[{"name":"a","algorithm":"sliding_window","limit":2000000}]})").find("a sliding window counts at most"),
            std::string::npos);
  EXPECT_NE(errors(R"({"rules":[{"name":"a","burst":5,"algorithm":"sliding_window"}]})").find("only a token bucket has a burst"),
            std::string::npos);
  EXPECT_NE(errors(R"({"rule":[]})").find("rateLimit.rule: unknown field"), std::string::npos);
  EXPECT_EQ(errors(R"({"rules":[]})"), "");
}
