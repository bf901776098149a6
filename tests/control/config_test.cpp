#include "moat/control/config.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "moat/control/config_json.h"

namespace moat::control {
namespace {

constexpr const char* kListener = R"("listeners": [{"address": "127.0.0.1", "port": 8080}])";

// A valid document with one listener plus `rest` (more top-level members).
std::string doc(const std::string& rest = "") {
  return std::string("{") + kListener + (rest.empty() ? "" : ", " + rest) + "}";
}

std::string dump(const ConfigResult& r) {
  std::string s;
  for (const ConfigError& e : r.errors) s += "  " + e.toString() + "\n";
  return s;
}

// Exactly one error, at `path`, whose message contains `text`.
void expectError(const std::string& json, const std::string& path, const std::string& text) {
  SCOPED_TRACE(json);
  ConfigResult r = parseConfig(json);
  EXPECT_FALSE(r.config.has_value());
  ASSERT_EQ(r.errors.size(), 1u) << dump(r);
  EXPECT_EQ(r.errors[0].path, path) << dump(r);
  EXPECT_NE(r.errors[0].message.find(text), std::string::npos) << dump(r);
}

Config expectValid(const std::string& json) {
  SCOPED_TRACE(json);
  ConfigResult r = parseConfig(json);
  EXPECT_TRUE(r.errors.empty()) << dump(r);
  EXPECT_TRUE(r.config.has_value());
  return r.config.value_or(Config{});
}

std::string pool(const std::string& body) { return R"("pools": [)" + body + "]"; }

// ---- valid documents -------------------------------------------------------

TEST(ConfigDefault, ParsesWithZeroErrors) {
  ConfigResult r = parseConfig(defaultConfigJson());
  ASSERT_TRUE(r.errors.empty()) << dump(r);
  ASSERT_TRUE(r.config.has_value());
  const Config& c = *r.config;
  EXPECT_EQ(c.workers, 0u);
  ASSERT_EQ(c.listeners.size(), 1u);
  EXPECT_EQ(c.listeners[0].name, "public");
  EXPECT_EQ(c.listeners[0].address, "127.0.0.1");
  EXPECT_EQ(c.listeners[0].port, 8080);
  ASSERT_EQ(c.pools.size(), 1u);
  EXPECT_EQ(c.pools[0].name, "demo");
  EXPECT_EQ(c.pools[0].balance, BalanceAlgorithm::kRoundRobin);
  ASSERT_EQ(c.pools[0].backends.size(), 2u);
  EXPECT_EQ(c.pools[0].backends[0].port, 8081);
  EXPECT_EQ(c.pools[0].backends[1].port, 8082);
  ASSERT_EQ(c.routes.size(), 1u);
  EXPECT_EQ(c.routes[0].pool, "demo");
  EXPECT_EQ(c.routes[0].pathPrefix, "/");
  EXPECT_EQ(c.timeouts.connectMs, TimeoutsConfig{}.connectMs);
  EXPECT_EQ(c.timeouts.upstreamResponseMs, TimeoutsConfig{}.upstreamResponseMs);
  EXPECT_EQ(c.limits.maxHeaderBytes, LimitsConfig{}.maxHeaderBytes);
  EXPECT_EQ(c.logging.accessLog, "-");
}

std::filesystem::path exampleFile() {
  if (const char* src = std::getenv("MOAT_SOURCE_DIR")) {
    return std::filesystem::path(src) / "examples" / "moat.json";
  }
  return std::filesystem::path(__FILE__).parent_path() / ".." / ".." / "examples" / "moat.json";
}

TEST(ConfigExample, ExampleFileParses) {
  ConfigResult r = loadConfigFile(exampleFile().string());
  ASSERT_TRUE(r.errors.empty()) << exampleFile() << "\n" << dump(r);
  const Config& c = *r.config;
  ASSERT_EQ(c.listeners.size(), 3u);
  EXPECT_TRUE(c.listeners[1].proxyProtocol);
  ASSERT_EQ(c.rateLimit.rules.size(), 4u);
  EXPECT_EQ(c.rateLimit.rules[1].algorithm, RateLimitAlgorithm::kSlidingWindow);
  EXPECT_EQ(c.rateLimit.rules[2].key, RateLimitKey::kHeader);
  EXPECT_EQ(c.rateLimit.rules[2].keyName, "x-api-key");
  EXPECT_EQ(c.rateLimit.escalateAfter, 100u);
  ASSERT_EQ(c.pools.size(), 3u);
  EXPECT_EQ(c.pools[0].balance, BalanceAlgorithm::kRoundRobin);
  EXPECT_EQ(c.pools[1].balance, BalanceAlgorithm::kLeastConnections);
  EXPECT_EQ(c.pools[2].balance, BalanceAlgorithm::kMaglev);
  EXPECT_GE(c.routes.size(), 3u);
}

TEST(ConfigValid, MinimalDocumentGetsDefaults) {
  Config c = expectValid(doc());
  ASSERT_EQ(c.listeners.size(), 1u);
  EXPECT_EQ(c.listeners[0].name, "127.0.0.1:8080");
  EXPECT_EQ(c.listeners[0].protocol, ListenerProtocol::kHttp);
  EXPECT_TRUE(c.pools.empty());
  EXPECT_TRUE(c.routes.empty());
  EXPECT_EQ(c.workers, 0u);
  EXPECT_EQ(c.timeouts.idleMs, 60000u);
  EXPECT_EQ(c.limits.maxHeaders, 100u);
  EXPECT_EQ(c.logging.level, LogLevel::kInfo);
  EXPECT_TRUE(c.rateLimit.enabled);
  ASSERT_EQ(c.rateLimit.rules.size(), 1u);
  EXPECT_EQ(c.rateLimit.rules[0].name, "default");
  EXPECT_EQ(c.rateLimit.rules[0].limit, 2000u);
  EXPECT_EQ(c.rateLimit.rules[0].periodS, 300u);
  EXPECT_EQ(c.rateLimit.maxKeys, 1000000u);
}

TEST(ConfigValid, Ipv6ListenerDefaultNameIsBracketed) {
  Config c = expectValid(R"({"listeners": [{"address": "::1", "port": 80}]})");
  EXPECT_EQ(c.listeners[0].name, "[::1]:80");
}

TEST(ConfigValid, FieldsAreStored) {
  Config c = expectValid(doc(R"("workers": 256,
    "pools": [{"name": "p", "balance": "maglev", "maglevTableSize": 251,
               "backends": [{"address": "::1", "port": 65535, "weight": 1000},
                            {"address": "10.0.0.1", "port": 1, "weight": 0}]}],
    "routes": [{"host": "Example.COM", "pathPrefix": "/api/", "pool": "p"},
               {"pool": "p"}],
    "timeouts": {"connectMs": 1, "requestHeaderMs": 3600000, "idleMs": 5,
                 "upstreamResponseMs": 6},
    "limits": {"maxHeaderBytes": 1024, "maxRequestLine": 1024, "maxHeaders": 128},
    "logging": {"level": "debug", "accessLog": ""})"));
  EXPECT_EQ(c.workers, 256u);
  const PoolConfig& p = c.pools.at(0);
  EXPECT_EQ(p.balance, BalanceAlgorithm::kMaglev);
  EXPECT_EQ(p.maglevTableSize, 251u);
  EXPECT_EQ(p.backends.at(0).address, "::1");
  EXPECT_EQ(p.backends.at(0).port, 65535);
  EXPECT_EQ(p.backends.at(0).weight, 1000u);
  EXPECT_EQ(p.backends.at(1).weight, 0u);
  EXPECT_EQ(c.routes.at(0).host, "example.com");
  EXPECT_EQ(c.routes.at(0).pathPrefix, "/api/");
  EXPECT_EQ(c.routes.at(1).host, "");
  EXPECT_EQ(c.routes.at(1).pathPrefix, "/");
  EXPECT_EQ(c.timeouts.connectMs, 1u);
  EXPECT_EQ(c.timeouts.requestHeaderMs, 3600000u);
  EXPECT_EQ(c.timeouts.idleMs, 5u);
  EXPECT_EQ(c.timeouts.upstreamResponseMs, 6u);
  EXPECT_EQ(c.limits.maxHeaderBytes, 1024u);
  EXPECT_EQ(c.limits.maxRequestLine, 1024u);
  EXPECT_EQ(c.limits.maxHeaders, 128u);
  EXPECT_EQ(c.logging.level, LogLevel::kDebug);
  EXPECT_EQ(c.logging.accessLog, "");
}

TEST(ConfigValid, NonMaglevPoolIgnoresSmallTableSize) {
  expectValid(doc(pool(R"({"name": "p", "maglevTableSize": 3,
      "backends": [{"address": "10.0.0.1", "port": 1}, {"address": "10.0.0.2", "port": 1},
                   {"address": "10.0.0.3", "port": 1}]})")));
}

// ---- syntax ------------------------------------------------------------------

TEST(ConfigSyntax, InvalidJsonIsOneErrorWithBytePosition) {
  ConfigResult r = parseConfig(R"({"workers": 1,, })");
  ASSERT_EQ(r.errors.size(), 1u) << dump(r);
  EXPECT_EQ(r.errors[0].path, "");
  EXPECT_NE(r.errors[0].message.find("byte 15"), std::string::npos) << dump(r);
  EXPECT_NE(r.errors[0].message.find("parse error"), std::string::npos) << dump(r);
  EXPECT_FALSE(r.config.has_value());
}

TEST(ConfigSyntax, EmptyDocument) {
  expectError("", "", "invalid JSON");
}

TEST(ConfigSyntax, TopLevelMustBeObject) {
  expectError("[1, 2]", "", "expected an object, got array");
}

TEST(ConfigSyntax, DuplicateKey) {
  expectError(R"({"listeners": [{"address": "127.0.0.1", "port": 80, "port": 81}]})",
              "listeners[0].port", "duplicate field");
}

TEST(ConfigSyntax, DeeplyNestedDocumentDoesNotCrash) {
  std::string deep = std::string(5000, '[') + std::string(5000, ']');
  expectError(deep, "", "expected an object, got array");
}

// ---- types -------------------------------------------------------------------

TEST(ConfigTypes, StringGotNumber) {
  expectError(R"({"listeners": [{"address": 5, "port": 80}]})", "listeners[0].address",
              "expected a string, got number");
}

TEST(ConfigTypes, IntegerGotString) {
  expectError(doc(R"("workers": "4")"), "workers", "expected an integer, got string");
}

TEST(ConfigTypes, IntegerGotFraction) {
  expectError(R"({"listeners": [{"address": "127.0.0.1", "port": 80.5}]})",
              "listeners[0].port", "expected an integer, got 80.5");
}

TEST(ConfigTypes, IntegerGotBoolean) {
  expectError(doc(R"("workers": true)"), "workers", "expected an integer, got boolean");
}

TEST(ConfigTypes, ArrayGotObject) {
  expectError(doc(R"("pools": {})"), "pools", "expected an array, got object");
}

TEST(ConfigTypes, ObjectGotNull) {
  expectError(doc(R"("timeouts": null)"), "timeouts", "expected an object, got null");
}

TEST(ConfigTypes, ArrayElementGotString) {
  expectError(doc(R"("routes": ["/"])"), "routes[0]", "expected an object, got string");
}

// ---- required fields ---------------------------------------------------------

TEST(ConfigRequired, ListenersMissing) {
  expectError(R"({"workers": 1})", "listeners", "missing required field");
}

TEST(ConfigRequired, ListenersEmpty) {
  expectError(R"({"listeners": []})", "listeners", "at least one listener is required");
}

TEST(ConfigRequired, ListenerAddress) {
  expectError(R"({"listeners": [{"port": 80}]})", "listeners[0].address",
              "missing required field");
}

TEST(ConfigRequired, ListenerPort) {
  expectError(R"({"listeners": [{"address": "127.0.0.1"}]})", "listeners[0].port",
              "missing required field");
}

TEST(ConfigRequired, PoolName) {
  expectError(doc(pool(R"({"backends": []})")), "pools[0].name", "missing required field");
}

TEST(ConfigRequired, BackendAddress) {
  expectError(doc(pool(R"({"name": "p", "backends": [{"port": 1}]})")),
              "pools[0].backends[0].address", "missing required field");
}

TEST(ConfigRequired, BackendPort) {
  expectError(doc(pool(R"({"name": "p", "backends": [{"address": "10.0.0.1"}]})")),
              "pools[0].backends[0].port", "missing required field");
}

TEST(ConfigRequired, RoutePool) {
  expectError(doc(R"("routes": [{"host": "*"}])"), "routes[0].pool", "missing required field");
}

TEST(ConfigPools, MaxIdlePerWorker) {
  ConfigResult r = parseConfig(R"({"listeners": [{"address": "127.0.0.1", "port": 80}],
    "pools": [{"name": "p", "maxIdlePerWorker": 0}, {"name": "q"}]})");
  ASSERT_TRUE(r.errors.empty());
  EXPECT_EQ(r.config->pools[0].maxIdlePerWorker, 0u);
  EXPECT_EQ(r.config->pools[1].maxIdlePerWorker, 64u);
  r = parseConfig(R"({"listeners": [{"address": "127.0.0.1", "port": 80}],
    "pools": [{"name": "p", "maxIdlePerWorker": 10001}]})");
  ASSERT_EQ(r.errors.size(), 1u);
  EXPECT_EQ(r.errors[0].path, "pools[0].maxIdlePerWorker");
}

// ---- unknown fields ----------------------------------------------------------

TEST(ConfigUnknown, TopLevel) {
  expectError(doc(R"("worker": 1)"), "worker", "unknown field");
}

TEST(ConfigUnknown, Listener) {
  expectError(R"({"listeners": [{"address": "127.0.0.1", "port": 80, "ssl": true}]})",
              "listeners[0].ssl", "unknown field");
}

// ---- TLS -----------------------------------------------------------------------

TEST(ConfigTls, HttpsListenerParses) {
  ConfigResult r = parseConfig(R"({"listeners": [{"address": "127.0.0.1", "port": 443,
      "protocol": "https", "tls": {"certificates": [{"cert": "/c.pem", "key": "/k.pem",
      "ocsp": "/o.der"}], "minVersion": "1.2", "alpn": ["http/1.1"], "sessionTickets": false,
      "ticketRotateS": 600, "clientAuth": {"caFile": "/ca.pem", "required": false,
      "subjectHeader": "X-Client-DN"}}}]})");
  ASSERT_TRUE(r.errors.empty()) << r.errors[0].toString();
  const ListenerConfig& l = r.config->listeners[0];
  EXPECT_EQ(l.protocol, ListenerProtocol::kHttps);
  ASSERT_EQ(l.tls.certificates.size(), 1u);
  EXPECT_EQ(l.tls.certificates[0].ocsp, "/o.der");
  EXPECT_TRUE(l.tls.allowTls12);
  EXPECT_FALSE(l.tls.sessionTickets);
  EXPECT_EQ(l.tls.ticketRotateS, 600u);
  EXPECT_FALSE(l.tls.clientAuth.required);
  EXPECT_EQ(l.tls.clientAuth.subjectHeader, "x-client-dn");  // compared lowercase
}

TEST(ConfigTls, HttpsNeedsCertificates) {
  expectError(R"({"listeners": [{"address": "127.0.0.1", "port": 443, "protocol": "https"}]})",
              "listeners[0].tls", "required for protocol \"https\"");
  expectError(R"({"listeners": [{"address": "127.0.0.1", "port": 443, "protocol": "https",
      "tls": {"certificates": []}}]})",
              "listeners[0].tls.certificates", "at least one certificate is required");
  expectError(R"({"listeners": [{"address": "127.0.0.1", "port": 443, "protocol": "https",
      "tls": {"certificates": [{"cert": "/c.pem"}]}}]})",
              "listeners[0].tls.certificates[0].key", "missing required field");
}

TEST(ConfigTls, TlsOnlyOnHttps) {
  expectError(R"({"listeners": [{"address": "127.0.0.1", "port": 80,
      "tls": {"certificates": [{"cert": "/c.pem", "key": "/k.pem"}]}}]})",
              "listeners[0].tls", "only for protocol \"https\"");
}

TEST(ConfigTls, OldVersionsAndOtherProtocolsRefused) {
  expectError(R"({"listeners": [{"address": "127.0.0.1", "port": 443, "protocol": "https",
      "tls": {"certificates": [{"cert": "/c.pem", "key": "/k.pem"}], "minVersion": "1.1"}}]})",
              "listeners[0].tls.minVersion", "TLS 1.0 and 1.1 are not offered");
  expectError(R"({"listeners": [{"address": "127.0.0.1", "port": 443, "protocol": "https",
      "tls": {"certificates": [{"cert": "/c.pem", "key": "/k.pem"}], "alpn": ["h2"]}}]})",
              "listeners[0].tls.alpn[0]", "not a protocol this listener speaks");
  expectError(R"({"listeners": [{"address": "127.0.0.1", "port": 443, "protocol": "https",
      "tls": {"certificates": [{"cert": "/c.pem", "key": "/k.pem"}],
      "clientAuth": {"required": true}}}]})",
              "listeners[0].tls.clientAuth.caFile", "missing required field");
}

TEST(ConfigTls, PoolTls) {
  ConfigResult r = parseConfig(doc(pool(
      R"({"name": "p", "tls": {"caFile": "/ca.pem", "sni": "b.test", "verify": false}})")));
  ASSERT_TRUE(r.errors.empty()) << r.errors[0].toString();
  EXPECT_TRUE(r.config->pools[0].tls.enabled);
  EXPECT_FALSE(r.config->pools[0].tls.verify);
  EXPECT_EQ(r.config->pools[0].tls.sni, "b.test");
  ConfigResult plain = parseConfig(doc(pool(R"({"name": "p"})")));
  ASSERT_TRUE(plain.errors.empty());
  EXPECT_FALSE(plain.config->pools[0].tls.enabled);
  expectError(doc(pool(R"({"name": "p", "tls": {"ca": "/ca.pem"}})")), "pools[0].tls.ca",
              "unknown field");
}

TEST(ConfigUnknown, Pool) {
  expectError(doc(pool(R"({"name": "p", "algorithm": "maglev"})")), "pools[0].algorithm",
              "unknown field");
}

TEST(ConfigUnknown, Backend) {
  expectError(doc(pool(R"({"name": "p", "backends": [{"address": "::1", "port": 1, "w": 1}]})")),
              "pools[0].backends[0].w", "unknown field");
}

TEST(ConfigUnknown, Route) {
  expectError(doc(R"("pools": [{"name": "p"}], "routes": [{"pool": "p", "path": "/"}])"),
              "routes[0].path", "unknown field");
}

TEST(ConfigUnknown, TimeoutsLimitsLogging) {
  expectError(doc(R"("timeouts": {"readMs": 1})"), "timeouts.readMs", "unknown field");
  expectError(doc(R"("limits": {"maxBody": 1})"), "limits.maxBody", "unknown field");
  expectError(doc(R"("logging": {"format": "json"})"), "logging.format", "unknown field");
}

// ---- addresses and ports -----------------------------------------------------

TEST(ConfigAddress, HostnameRejected) {
  expectError(R"({"listeners": [{"address": "localhost", "port": 80}]})",
              "listeners[0].address", "hostnames are not supported");
}

TEST(ConfigAddress, BadLiterals) {
  expectError(R"({"listeners": [{"address": "256.0.0.1", "port": 80}]})",
              "listeners[0].address", "\"256.0.0.1\" is not an IPv4 or IPv6 address literal");
  expectError(doc(pool(R"({"name": "p", "backends": [{"address": "[::1]", "port": 1}]})")),
              "pools[0].backends[0].address", "is not an IPv4 or IPv6 address literal");
}

TEST(ConfigPort, TooLarge) {
  ConfigResult r = parseConfig(
      doc(pool(R"({"name": "p", "backends": [{"address": "10.0.0.1", "port": 1},
          {"address": "10.0.0.2", "port": 2}, {"address": "10.0.0.3", "port": 70000}]})")));
  ASSERT_EQ(r.errors.size(), 1u) << dump(r);
  EXPECT_EQ(r.errors[0].path, "pools[0].backends[2].port");
  EXPECT_EQ(r.errors[0].message, "70000 is not a port");
  EXPECT_EQ(r.errors[0].toString(), "pools[0].backends[2].port: 70000 is not a port");
}

TEST(ConfigPort, ZeroAndNegative) {
  expectError(R"({"listeners": [{"address": "127.0.0.1", "port": 0}]})", "listeners[0].port",
              "0 is not a port");
  expectError(R"({"listeners": [{"address": "127.0.0.1", "port": -1}]})", "listeners[0].port",
              "-1 is not a port");
  expectError(R"({"listeners": [{"address": "127.0.0.1", "port": 18446744073709551615}]})",
              "listeners[0].port", "18446744073709551615 is not a port");
}

// ---- duplicates --------------------------------------------------------------

TEST(ConfigDuplicate, ListenerEndpoint) {
  expectError(R"({"listeners": [{"name": "a", "address": "::1", "port": 80},
                                {"name": "b", "address": "0:0::1", "port": 80}]})",
              "listeners[1]", "duplicate listener [::1]:80 (also listeners[0])");
}

TEST(ConfigDuplicate, ListenerName) {
  expectError(R"({"listeners": [{"name": "a", "address": "127.0.0.1", "port": 80},
                                {"name": "a", "address": "127.0.0.1", "port": 81}]})",
              "listeners[1].name", "duplicate listener name \"a\" (also listeners[0])");
}

TEST(ConfigDuplicate, PoolName) {
  expectError(doc(R"("pools": [{"name": "p"}, {"name": "q"}, {"name": "p"}])"), "pools[2].name",
              "duplicate pool name \"p\" (also pools[0])");
}

TEST(ConfigDuplicate, RouteSameHostAndPrefix) {
  expectError(doc(R"("pools": [{"name": "p"}], "routes": [
                     {"host": "A.example", "pathPrefix": "/x", "pool": "p"},
                     {"host": "a.example", "pathPrefix": "/x", "pool": "p"}])"),
              "routes[1]", "duplicate route");
}

TEST(ConfigDuplicate, RouteEmptyHostEqualsStar) {
  expectError(doc(R"("pools": [{"name": "p"}], "routes": [
                     {"pool": "p"}, {"host": "*", "pathPrefix": "/", "pool": "p"}])"),
              "routes[1]", "(also routes[0])");
}

// ---- references and enumerations -------------------------------------------

TEST(ConfigReference, RouteToUnknownPool) {
  expectError(doc(R"("pools": [{"name": "p"}], "routes": [{"pool": "x"}])"), "routes[0].pool",
              "no pool named \"x\"");
}

TEST(ConfigReference, RouteMayPrecedePools) {
  expectValid(doc(R"("routes": [{"pool": "p"}], "pools": [{"name": "p"}])"));
}

TEST(ConfigEnum, UnknownBalance) {
  expectError(doc(pool(R"({"name": "p", "balance": "random"})")), "pools[0].balance",
              "unknown balance \"random\" (allowed: round_robin, least_connections, maglev)");
}

TEST(ConfigEnum, UnknownProtocol) {
  expectError(R"({"listeners": [{"address": "127.0.0.1", "port": 80, "protocol": "h2"}]})",
              "listeners[0].protocol", "unknown protocol \"h2\" (allowed: http, https)");
}

TEST(ConfigEnum, UnknownLogLevel) {
  expectError(doc(R"("logging": {"level": "verbose"})"), "logging.level",
              "unknown log level \"verbose\" (allowed: debug, info, warn, error)");
}

// ---- ranges ------------------------------------------------------------------

TEST(ConfigRange, Weight) {
  expectError(doc(pool(R"({"name": "p", "backends": [{"address": "::1", "port": 1,
                                                        "weight": 1001}]})")),
              "pools[0].backends[0].weight", "must be 0..1000, got 1001");
}

TEST(ConfigRange, MaglevTableSizeNotPrime) {
  expectError(doc(pool(R"({"name": "p", "balance": "maglev", "maglevTableSize": 65536})")),
              "pools[0].maglevTableSize", "65536 is not prime");
}

TEST(ConfigRange, MaglevTableSizeNotLargerThanBackends) {
  expectError(doc(pool(R"({"name": "p", "balance": "maglev", "maglevTableSize": 3,
      "backends": [{"address": "10.0.0.1", "port": 1}, {"address": "10.0.0.2", "port": 1},
                   {"address": "10.0.0.3", "port": 1}]})")),
              "pools[0].maglevTableSize", "3 must be larger than the number of backends (3)");
}

TEST(ConfigRange, MaglevTableSizeTooLarge) {
  expectError(doc(pool(R"({"name": "p", "balance": "maglev", "maglevTableSize": 4294967291})")),
              "pools[0].maglevTableSize", "must be 2..1000003");
}

TEST(ConfigRange, Timeouts) {
  for (const char* field : {"connectMs", "requestHeaderMs", "idleMs", "upstreamResponseMs"}) {
    std::string f = field;
    expectError(doc(R"("timeouts": {")" + f + R"(": 0})"), "timeouts." + f,
                "must be 1..3600000 ms, got 0");
    expectError(doc(R"("timeouts": {")" + f + R"(": 3600001})"), "timeouts." + f,
                "must be 1..3600000 ms, got 3600001");
  }
}

TEST(ConfigRange, MaxHeaderBytes) {
  expectError(doc(R"("limits": {"maxHeaderBytes": 1023, "maxRequestLine": 256})"),
              "limits.maxHeaderBytes", "must be 1024..1048576 bytes, got 1023");
  expectError(doc(R"("limits": {"maxHeaderBytes": 1048577})"), "limits.maxHeaderBytes",
              "must be 1024..1048576 bytes, got 1048577");
}

TEST(ConfigRange, MaxRequestLine) {
  expectError(doc(R"("limits": {"maxRequestLine": 255})"), "limits.maxRequestLine",
              "must be 256..32768 bytes (the default maxHeaderBytes), got 255");
  // Bounded by maxHeaderBytes even when that comes later in the object.
  expectError(doc(R"("limits": {"maxRequestLine": 4096, "maxHeaderBytes": 2048})"),
              "limits.maxRequestLine", "must be 256..2048 bytes (maxHeaderBytes), got 4096");
}

TEST(ConfigRange, MaxHeaders) {
  expectError(doc(R"("limits": {"maxHeaders": 0})"), "limits.maxHeaders", "must be 1..128");
  expectError(doc(R"("limits": {"maxHeaders": 129})"), "limits.maxHeaders", "got 129");
}

TEST(ConfigRange, Workers) {
  expectError(doc(R"("workers": 257)"), "workers", "must be 0..256, got 257");
  expectError(doc(R"("workers": -1)"), "workers", "must be 0..256, got -1");
}

TEST(ConfigRange, PathPrefixMustStartWithSlash) {
  expectError(doc(R"("pools": [{"name": "p"}], "routes": [{"pathPrefix": "api", "pool": "p"}])"),
              "routes[0].pathPrefix", "must start with \"/\"");
  expectError(doc(R"("pools": [{"name": "p"}], "routes": [{"pathPrefix": "", "pool": "p"}])"),
              "routes[0].pathPrefix", "must start with \"/\"");
}

// ---- health checks, outlier detection, drain ------------------------------------

TEST(ConfigHealth, FieldsAreStored) {
  Config c = expectValid(doc(pool(R"({"name": "p",
      "backends": [{"address": "10.0.0.1", "port": 80, "drain": true},
                   {"address": "10.0.0.2", "port": 80}],
      "healthCheck": {"type": "https", "intervalMs": 500, "timeoutMs": 500, "rise": 1,
                      "fall": 100, "jitterPct": 0, "path": "/healthz?full=1",
                      "host": "app.test", "expectStatus": "204", "bodyContains": "ok"},
      "outlierDetection": {"consecutiveFailures": 1, "baseEjectMs": 100,
                           "maxEjectMs": 100, "maxEjectPercent": 0}})")));
  const PoolConfig& p = c.pools.at(0);
  EXPECT_TRUE(p.backends.at(0).drain);
  EXPECT_FALSE(p.backends.at(1).drain);
  const HealthCheckConfig& h = p.healthCheck;
  EXPECT_TRUE(h.enabled);
  EXPECT_EQ(h.type, HealthCheckType::kHttps);
  EXPECT_EQ(h.intervalMs, 500u);
  EXPECT_EQ(h.timeoutMs, 500u);
  EXPECT_EQ(h.rise, 1u);
  EXPECT_EQ(h.fall, 100u);
  EXPECT_EQ(h.jitterPct, 0u);
  EXPECT_EQ(h.path, "/healthz?full=1");
  EXPECT_EQ(h.host, "app.test");
  EXPECT_EQ(h.expectStatusMin, 204u);
  EXPECT_EQ(h.expectStatusMax, 204u);
  EXPECT_EQ(h.bodyContains, "ok");
  const OutlierDetectionConfig& o = p.outlierDetection;
  EXPECT_TRUE(o.enabled);
  EXPECT_EQ(o.consecutiveFailures, 1u);
  EXPECT_EQ(o.baseEjectMs, 100u);
  EXPECT_EQ(o.maxEjectMs, 100u);
  EXPECT_EQ(o.maxEjectPercent, 0u);
}

TEST(ConfigHealth, AbsentMeansOffAndEmptyObjectMeansDefaults) {
  Config off = expectValid(doc(pool(R"({"name": "p"})")));
  EXPECT_EQ(off.pools[0].healthCheck, HealthCheckConfig{});
  EXPECT_EQ(off.pools[0].outlierDetection, OutlierDetectionConfig{});
  EXPECT_FALSE(off.pools[0].healthCheck.enabled);

  Config on = expectValid(doc(pool(R"({"name": "p", "healthCheck": {}, "outlierDetection": {}})")));
  HealthCheckConfig h;
  h.enabled = true;
  EXPECT_EQ(on.pools[0].healthCheck, h);
  EXPECT_EQ(on.pools[0].healthCheck.type, HealthCheckType::kHttp);
  OutlierDetectionConfig o;
  o.enabled = true;
  EXPECT_EQ(on.pools[0].outlierDetection, o);
}

TEST(ConfigHealth, ExpectStatusForms) {
  auto parsed = [](const std::string& v) {
    return expectValid(doc(pool(R"({"name": "p", "healthCheck": {"expectStatus": )" + v + "}}")))
        .pools[0]
        .healthCheck;
  };
  HealthCheckConfig range = parsed(R"("200-299")");
  EXPECT_EQ(range.expectStatusMin, 200u);
  EXPECT_EQ(range.expectStatusMax, 299u);
  HealthCheckConfig one = parsed("301");
  EXPECT_EQ(one.expectStatusMin, 301u);
  EXPECT_EQ(one.expectStatusMax, 301u);
  for (const char* bad : {R"("2xx")", R"("399-200")", R"("200-")", R"(" 200")", R"("")", "600",
                          "99", "200.0", "-200", R"("200-600")"}) {
    expectError(doc(pool(std::string(R"({"name": "p", "healthCheck": {"expectStatus": )") + bad +
                         "}}")),
                "pools[0].healthCheck.expectStatus", "must be a status such as 204");
  }
  expectError(doc(pool(R"({"name": "p", "healthCheck": {"expectStatus": [200]}})")),
              "pools[0].healthCheck.expectStatus", "expected an integer or a string, got array");
}

TEST(ConfigHealth, BadType) {
  expectError(doc(pool(R"({"name": "p", "healthCheck": {"type": "udp"}})")),
              "pools[0].healthCheck.type", "unknown type \"udp\" (allowed: tcp, http, https)");
  expectError(doc(pool(R"({"name": "p", "healthCheck": {"type": 1}})")),
              "pools[0].healthCheck.type", "expected a string, got number");
  expectError(doc(pool(R"({"name": "p", "healthCheck": true})")), "pools[0].healthCheck",
              "expected an object, got boolean");
  expectError(doc(pool(R"({"name": "p", "outlierDetection": []})")),
              "pools[0].outlierDetection", "expected an object, got array");
  expectError(doc(pool(R"({"name": "p", "backends": [{"address": "::1", "port": 1,
      "drain": "yes"}]})")),
              "pools[0].backends[0].drain", "expected true or false, got string");
}

TEST(ConfigHealth, TimeoutMustNotExceedInterval) {
  expectError(doc(pool(R"({"name": "p", "healthCheck": {"intervalMs": 1000, "timeoutMs": 1001}})")),
              "pools[0].healthCheck.timeoutMs", "must be <= intervalMs (1000), got 1001");
  // Order does not matter, and the default timeout (1000) counts too.
  expectError(doc(pool(R"({"name": "p", "healthCheck": {"timeoutMs": 3000}})")),
              "pools[0].healthCheck.timeoutMs", "must be <= intervalMs (2000), got 3000");
  expectError(doc(pool(R"({"name": "p", "healthCheck": {"intervalMs": 500}})")),
              "pools[0].healthCheck.timeoutMs", "the default 1000 must be <= intervalMs (500)");
  // An out-of-range value is one error, not two.
  expectError(doc(pool(R"({"name": "p", "healthCheck": {"intervalMs": 50, "timeoutMs": 100}})")),
              "pools[0].healthCheck.intervalMs", "must be 100..3600000 ms, got 50");
}

TEST(ConfigHealth, Ranges) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {R"("intervalMs": 3600001)", "intervalMs"}, {R"("timeoutMs": 9)", "timeoutMs"},
      {R"("rise": 0)", "rise"},                   {R"("fall": 101)", "fall"},
      {R"("jitterPct": 51)", "jitterPct"},
  };
  for (const auto& [field, name] : cases) {
    expectError(doc(pool(R"({"name": "p", "healthCheck": {)" + field + "}}")),
                "pools[0].healthCheck." + name, "must be ");
  }
  expectError(doc(pool(R"({"name": "p", "healthCheck": {"path": "healthz"}})")),
              "pools[0].healthCheck.path", "must start with \"/\"");
  expectError(doc(pool(R"({"name": "p", "healthCheck": {"path": "/a b"}})")),
              "pools[0].healthCheck.path", "no space or control character");
  expectError(doc(pool(R"({"name": "p", "healthCheck": {"path": "/a\r\nX-Evil: 1"}})")),
              "pools[0].healthCheck.path", "no space or control character");
  expectError(doc(pool(R"({"name": "p", "healthCheck": {"host": "a\nb"}})")),
              "pools[0].healthCheck.host", "is not a Host header value");
  expectError(doc(pool(R"({"name": "p", "healthCheck": {"interval": 1000}})")),
              "pools[0].healthCheck.interval", "unknown field");
  expectError(doc(pool(R"({"name": "p", "healthCheck": {"enabled": true}})")),
              "pools[0].healthCheck.enabled", "unknown field");
}

TEST(ConfigOutlier, MaxEjectNotBelowBase) {
  expectError(doc(pool(R"({"name": "p", "outlierDetection": {"baseEjectMs": 5000,
      "maxEjectMs": 4999}})")),
              "pools[0].outlierDetection.maxEjectMs", "must be >= baseEjectMs (5000), got 4999");
  expectError(doc(pool(R"({"name": "p", "outlierDetection": {"baseEjectMs": 400000}})")),
              "pools[0].outlierDetection.maxEjectMs",
              "the default 300000 must be >= baseEjectMs (400000)");
  expectError(doc(pool(R"({"name": "p", "outlierDetection": {"maxEjectMs": 86400001}})")),
              "pools[0].outlierDetection.maxEjectMs", "must be 100..86400000 ms");
  expectError(doc(pool(R"({"name": "p", "outlierDetection": {"consecutiveFailures": 0}})")),
              "pools[0].outlierDetection.consecutiveFailures", "must be 1..1000");
  expectError(doc(pool(R"({"name": "p", "outlierDetection": {"maxEjectPercent": 101}})")),
              "pools[0].outlierDetection.maxEjectPercent", "must be 0..100%");
  expectError(doc(pool(R"({"name": "p", "outlierDetection": {"baseEjectMs": 99}})")),
              "pools[0].outlierDetection.baseEjectMs", "must be 100..3600000 ms");
}

// ---- geo -------------------------------------------------------------------------

constexpr const char* kZones = R"("geo": {"sources": [{"type": "zones", "path": "/var/lib/geo"}]})";

std::string geoListener(const std::string& geo) {
  return R"({"listeners": [{"address": "127.0.0.1", "port": 8080, "geo": )" + geo + "}]";
}

TEST(ConfigGeo, FieldsAreStored) {
  Config c = expectValid(geoListener(R"({"mode": "allow", "countries": ["de", "Fr", "US"],
      "allowCidrs": ["10.0.0.0/8"], "denyCidrs": ["192.0.2.0/24", "2001:db8::/32"]})") + R"(,
      "geo": {"sources": [
        {"type": "maxmind_csv", "blocksIpv4": "/g/b4.csv", "locations": "/g/loc.csv"},
        {"type": "mmdb", "path": "/g/country.mmdb"},
        {"type": "zones", "path": "/g/zones"}]}})");
  const GeoPolicyConfig& g = c.listeners.at(0).geo;
  EXPECT_TRUE(g.enabled);
  EXPECT_TRUE(g.allowMode);
  EXPECT_EQ(g.countries, (std::vector<std::string>{"DE", "FR", "US"}));
  EXPECT_EQ(g.allowCidrs, (std::vector<std::string>{"10.0.0.0/8"}));
  EXPECT_EQ(g.denyCidrs, (std::vector<std::string>{"192.0.2.0/24", "2001:db8::/32"}));
  ASSERT_EQ(c.geo.sources.size(), 3u);
  EXPECT_EQ(c.geo.sources[0].type, GeoSourceType::kMaxmindCsv);
  EXPECT_EQ(c.geo.sources[0].blocksIpv4, "/g/b4.csv");
  EXPECT_EQ(c.geo.sources[0].blocksIpv6, "");
  EXPECT_EQ(c.geo.sources[0].locations, "/g/loc.csv");
  EXPECT_EQ(c.geo.sources[1].type, GeoSourceType::kMmdb);
  EXPECT_EQ(c.geo.sources[1].path, "/g/country.mmdb");
  EXPECT_EQ(c.geo.sources[2].type, GeoSourceConfig::GeoSourceType::kZones);

  Config plain = expectValid(doc());
  EXPECT_FALSE(plain.listeners[0].geo.enabled);
  EXPECT_TRUE(plain.geo.sources.empty());
  // Only CIDR lists: no database needed; deny is the default mode.
  Config cidrOnly = expectValid(geoListener(R"({"denyCidrs": ["192.0.2.0/24"]})") + "}");
  EXPECT_TRUE(cidrOnly.listeners[0].geo.enabled);
  EXPECT_FALSE(cidrOnly.listeners[0].geo.allowMode);
}

TEST(ConfigGeo, BadCountryCode) {
  for (const char* bad : {"DEU", "D", "", "1A", "D-"}) {
    expectError(geoListener(std::string(R"({"countries": ["DE", ")") + bad + "\"]}") + ", " +
                    kZones + "}",
                "listeners[0].geo.countries[1]", "is not an ISO 3166-1 alpha-2 country code");
  }
  expectError(geoListener(R"({"countries": "DE"})") + ", " + kZones + "}",
              "listeners[0].geo.countries", "expected an array, got string");
}

TEST(ConfigGeo, CountriesNeedSources) {
  expectError(geoListener(R"({"countries": ["DE"]})") + "}", "listeners[0].geo.countries",
              "needs geo.sources");
  expectError(geoListener(R"({"countries": ["DE"]})") + R"(, "geo": {"sources": []}})",
              "listeners[0].geo.countries", "needs geo.sources");
  // geo may come before or after the listeners.
  expectValid(std::string("{") + kZones + ", " + geoListener(R"({"countries": ["DE"]})").substr(1) +
              "}");
}

TEST(ConfigGeo, PolicyErrors) {
  expectError(geoListener(R"({"mode": "block"})") + "}", "listeners[0].geo.mode",
              "must be \"deny\" or \"allow\"");
  expectError(geoListener(R"({"allowCidrs": ["10.0.0.1/8"]})") + "}",
              "listeners[0].geo.allowCidrs[0]", "");
  expectError(geoListener(R"({"country": ["DE"]})") + "}", "listeners[0].geo.country",
              "unknown field");
}

TEST(ConfigGeo, SourceErrors) {
  auto src = [](const std::string& s) { return doc(R"("geo": {"sources": [)" + s + "]}"); };
  expectError(src(R"({"type": "ip2location", "path": "/x"})"), "geo.sources[0].type",
              "unknown type \"ip2location\" (allowed: zones, maxmind_csv, mmdb)");
  expectError(src(R"({"path": "/x"})"), "geo.sources[0].type", "missing required field");
  expectError(src(R"({"type": "zones"})"), "geo.sources[0].path", "missing required field");
  expectError(src(R"({"type": "mmdb", "path": ""})"), "geo.sources[0].path", "must not be empty");
  expectError(src(R"({"type": "maxmind_csv", "blocksIpv6": "/b6.csv"})"),
              "geo.sources[0].locations", "missing required field");
  expectError(src(R"({"type": "maxmind_csv", "locations": "/l.csv"})"),
              "geo.sources[0].blocksIpv4", "blocksIpv4 or blocksIpv6");
  expectError(src(R"({"type": "maxmind_csv", "path": "/x", "blocksIpv4": "/b4.csv",
      "locations": "/l.csv"})"),
              "geo.sources[0].path", "only for type \"zones\" or \"mmdb\"");
  expectError(src(R"({"type": "zones", "path": "/x", "locations": "/l.csv"})"),
              "geo.sources[0].locations", "only for type \"maxmind_csv\"");
  expectError(src(R"({"type": "zones", "path": "/x", "file": "/y"})"), "geo.sources[0].file",
              "unknown field");
  expectError(doc(R"("geo": {"source": []})"), "geo.source", "unknown field");
  expectError(doc(R"("geo": [])"), "geo", "expected an object, got array");
}

// ---- configToJson and diffConfigs ---------------------------------------------------

// Every field of every section given a value other than its default.
constexpr const char* kEverything = R"({
  "workers": 3,
  "listeners": [
    {"name": "plain", "address": "0.0.0.0", "port": 80, "protocol": "http",
     "proxyProtocol": true,
     "geo": {"mode": "allow", "countries": ["de", "AT"], "allowCidrs": ["10.0.0.0/8"],
             "denyCidrs": ["2001:db8::/32"]}},
    {"address": "::", "port": 443, "protocol": "https",
     "tls": {"certificates": [{"cert": "/c1.pem", "key": "/k1.pem", "ocsp": "/o1.der"},
                              {"cert": "/c2.pem", "key": "/k2.pem"}],
             "minVersion": "1.2", "ciphersuites": "TLS_AES_128_GCM_SHA256",
             "ciphers": "ECDHE-RSA-AES128-GCM-SHA256", "groups": "P-384",
             "alpn": ["http/1.0", "http/1.1"], "sessionTickets": false,
             "ticketKeyFile": "/ticket.key", "ticketRotateS": 600,
             "clientAuth": {"caFile": "/ca.pem", "required": false, "subjectHeader": "X-DN"}},
     "geo": {"denyCidrs": ["192.0.2.0/24"]}}
  ],
  "pools": [
    {"name": "web", "balance": "maglev", "maglevTableSize": 251, "maxIdlePerWorker": 7,
     "backends": [{"address": "10.0.0.1", "port": 8081, "weight": 3, "drain": true},
                  {"address": "fd00::1", "port": 8082, "weight": 0}],
     "tls": {"caFile": "/up-ca.pem", "verify": false, "sni": "web.internal"},
     "healthCheck": {"type": "https", "intervalMs": 5000, "timeoutMs": 700, "rise": 4,
                     "fall": 6, "jitterPct": 20, "path": "/health", "host": "web.internal",
                     "expectStatus": "200-204", "bodyContains": "up"},
     "outlierDetection": {"consecutiveFailures": 9, "baseEjectMs": 1000, "maxEjectMs": 60000,
                          "maxEjectPercent": 25}},
    {"name": "tcp", "balance": "least_connections",
     "healthCheck": {"type": "tcp", "expectStatus": 204}}
  ],
  "routes": [{"host": "Example.com", "pathPrefix": "/api/", "pool": "web", "waf": false},
             {"pool": "tcp"}],
  "timeouts": {"connectMs": 1, "requestHeaderMs": 2, "idleMs": 3, "upstreamResponseMs": 4},
  "limits": {"maxHeaderBytes": 4096, "maxRequestLine": 1024, "maxHeaders": 10},
  "logging": {"level": "error", "accessLog": "/var/log/moat.log"},
  "rateLimit": {
    "enabled": false, "maxKeys": 5000, "trustedProxies": ["10.1.0.0/16"],
    "allow": ["127.0.0.1"], "deny": ["203.0.113.0/24"],
    "escalation": {"after": 50, "cooldownS": 60},
    "rules": [
      {"name": "burst", "algorithm": "token_bucket", "limit": 10, "periodS": 1, "burst": 20,
       "key": "header:X-Api-Key", "ipv4Prefix": 24, "ipv6Prefix": 48,
       "listeners": ["plain"], "hosts": ["API.example.com"], "pathPrefixes": ["/login"],
       "dryRun": true, "headers": true},
      {"name": "window", "algorithm": "sliding_window", "limit": 100, "periodS": 60,
       "key": "cookie:Session"},
      {"name": "route", "key": "ip_route"}
    ]
  },
  "waf": {"enabled": true, "mode": "detect", "paranoia": 3, "inboundThreshold": 10,
          "outboundThreshold": 8, "setup": "", "rules": ["/r1.conf", "/r2"],
          "unicodeMap": "/unicode.mapping", "requestBodyLimit": 1000,
          "bodyLimitAction": "inspect", "cacheDir": "", "auditLog": "/audit.jsonl",
          "disableRules": [920350, 942100],
          "excludeTargets": [{"rule": 942100, "target": "ARGS:password"},
                             {"rule": 941100, "target": "REQUEST_COOKIES:/^_ga/"}]},
  "geo": {"sources": [
    {"type": "zones", "path": "/geo/zones"},
    {"type": "maxmind_csv", "blocksIpv4": "/geo/b4.csv", "blocksIpv6": "/geo/b6.csv",
     "locations": "/geo/loc.csv"},
    {"type": "mmdb", "path": "/geo/c.mmdb"}]},
  "l4": {"engine": "dpdk", "localIpv4": "10.9.0.1", "localIpv6": "fd00:9::1", "mtu": 9000,
         "services": [{"name": "web", "address": "10.9.0.100", "port": 80, "protocol": "tcp",
                       "pool": "web", "forwarding": "gue", "guePort": 7000, "onBackendDown": "drop"},
                      {"address": "fd00:9::100", "port": 53, "protocol": "udp", "pool": "tcp",
                       "forwarding": "dsr"}],
         "denyCidrs": ["198.51.100.0/24"], "geoDeny": ["cn"],
         "synLimit": {"perSecond": 100, "burst": 300},
         "flows": {"maxPerWorker": 4096, "synTimeoutS": 3, "establishedTimeoutS": 60,
                   "closingTimeoutS": 5, "udpTimeoutS": 20},
         "neighbors": [{"address": "10.9.0.11", "mac": "02:00:00:00:00:0b"}],
         "dpdk": {"lcores": [2, 3], "mainLcore": 1, "noHuge": true, "memoryMb": 512,
                  "port": "0000:3b:00.0", "eal": ["--log-level=*:info"], "exceptionTap": "",
                  "rxDescriptors": 2048, "txDescriptors": 512, "mbufsPerLcore": 4096,
                  "burst": 64, "txDrainUs": 50}}
})";

void expectRoundTrip(const Config& c) {
  for (bool pretty : {true, false}) {
    const std::string text = configToJson(c, pretty);
    SCOPED_TRACE(text);
    ConfigResult r = parseConfig(text);
    ASSERT_TRUE(r.errors.empty()) << dump(r);
    EXPECT_TRUE(*r.config == c);
    EXPECT_EQ(configToJson(*r.config, pretty), text);  // and stable
    EXPECT_EQ(text.find('\n') != std::string::npos, pretty);
  }
}

TEST(ConfigJson, DefaultRoundTrips) {
  ConfigResult r = parseConfig(defaultConfigJson());
  ASSERT_TRUE(r.config.has_value()) << dump(r);
  expectRoundTrip(*r.config);
  // Defaults are written out, not left implicit.
  const std::string text = configToJson(*r.config, false);
  for (const char* member : {R"("maglevTableSize":65537)", R"("drain":false)", R"("waf":{)",
                             R"("geo":{"sources":[]})", R"("escalation":{"after":0)"}) {
    EXPECT_NE(text.find(member), std::string::npos) << member << "\n" << text;
  }
  // Features switched on by their object's presence are absent when off.
  EXPECT_EQ(text.find("healthCheck"), std::string::npos);
  EXPECT_EQ(text.find("outlierDetection"), std::string::npos);
  EXPECT_EQ(text.find("\"tls\""), std::string::npos);
}

TEST(ConfigJson, EveryFieldRoundTrips) {
  Config c = expectValid(kEverything);
  // Each section really differs from its default, so the round trip covers it.
  const ListenerConfig& https = c.listeners.at(1);
  EXPECT_TRUE(https.tls.allowTls12);
  EXPECT_EQ(https.tls.certificates.size(), 2u);
  EXPECT_EQ(https.tls.clientAuth.subjectHeader, "x-dn");
  EXPECT_TRUE(c.listeners[0].geo.allowMode);
  EXPECT_EQ(c.listeners[0].geo.countries, (std::vector<std::string>{"DE", "AT"}));
  EXPECT_TRUE(c.listeners[1].geo.enabled);
  const PoolConfig& web = c.pools.at(0);
  EXPECT_TRUE(web.backends.at(0).drain);
  EXPECT_TRUE(web.tls.enabled);
  EXPECT_EQ(web.healthCheck.expectStatusMax, 204u);
  EXPECT_TRUE(web.outlierDetection.enabled);
  EXPECT_EQ(c.pools.at(1).healthCheck.type, HealthCheckType::kTcp);
  EXPECT_NE(c.timeouts, TimeoutsConfig{});
  EXPECT_NE(c.limits, LimitsConfig{});
  EXPECT_NE(c.logging, LoggingConfig{});
  ASSERT_EQ(c.rateLimit.rules.size(), 3u);
  EXPECT_EQ(c.rateLimit.rules[0].keyName, "x-api-key");
  EXPECT_EQ(c.rateLimit.rules[0].burst, 20u);
  EXPECT_EQ(c.rateLimit.rules[1].keyName, "Session");
  EXPECT_EQ(c.waf.excludeTargets.size(), 2u);
  EXPECT_EQ(c.geo.sources.size(), 3u);
  EXPECT_EQ(c.l4.engine, L4Engine::kDpdk);
  ASSERT_EQ(c.l4.services.size(), 2u);
  EXPECT_EQ(c.l4.services[1].name, "udp/[fd00:9::100]:53");
  EXPECT_EQ(c.l4.services[0].forwarding, L4Forwarding::kGue);
  EXPECT_EQ(c.l4.geoDeny, (std::vector<std::string>{"CN"}));
  EXPECT_NE(c.l4.dpdk, DpdkConfig{});

  expectRoundTrip(c);
}

TEST(ConfigJson, ExampleFileRoundTrips) {
  ConfigResult r = loadConfigFile(exampleFile().string());
  ASSERT_TRUE(r.config.has_value()) << dump(r);
  expectRoundTrip(*r.config);
}

TEST(ConfigJson, ConfigsCompareByValue) {
  Config a = expectValid(kEverything);
  Config b = expectValid(kEverything);
  EXPECT_TRUE(a == b);
  b.pools[0].healthCheck.bodyContains = "down";
  EXPECT_FALSE(a == b);
  b = a;
  b.geo.sources[1].blocksIpv6.clear();
  EXPECT_FALSE(a == b);
}

Config twoPools() {
  Config c = expectValid(std::string(defaultConfigJson()));
  PoolConfig api;
  api.name = "api";
  api.backends.push_back(BackendConfig{"10.0.0.9", 9000, 1, false});
  c.pools.push_back(api);
  return c;
}

TEST(ConfigDiff, EqualConfigsHaveNoDiff) {
  EXPECT_TRUE(diffConfigs(twoPools(), twoPools()).empty());
}

TEST(ConfigDiff, ChangedWeight) {
  Config before = twoPools();
  Config after = before;
  after.pools[0].backends[1].weight = 2;
  const std::vector<ConfigDiffEntry> want = {{"pools[0].backends[1].weight", "1", "2"}};
  EXPECT_EQ(diffConfigs(before, after), want);
}

TEST(ConfigDiff, AddedBackend) {
  Config before = twoPools();
  Config after = before;
  after.pools[0].backends.push_back(BackendConfig{"10.0.0.5", 80, 2, false});
  const std::vector<ConfigDiffEntry> want = {
      {"pools[0].backends[2]", "",
       R"({"address":"10.0.0.5","port":80,"weight":2,"drain":false})"}};
  EXPECT_EQ(diffConfigs(before, after), want);
}

TEST(ConfigDiff, RemovedPool) {
  Config before = twoPools();
  Config after = before;
  after.pools.pop_back();
  const std::vector<ConfigDiffEntry> want = {
      {"pools[1]",
       R"({"name":"api","balance":"round_robin","maglevTableSize":65537,"maxIdlePerWorker":64,)"
       R"("backends":[{"address":"10.0.0.9","port":9000,"weight":1,"drain":false}]})",
       ""}};
  EXPECT_EQ(diffConfigs(before, after), want);
}

TEST(ConfigDiff, SeveralChangesInDocumentOrder) {
  Config before = twoPools();
  Config after = before;
  after.waf.paranoia = 2;
  after.pools[1].healthCheck.enabled = true;  // an object that appears
  after.pools[0].backends[0].drain = true;
  after.listeners[0].port = 8443;
  const std::vector<ConfigDiffEntry> diff = diffConfigs(before, after);
  std::vector<std::string> paths;
  for (const ConfigDiffEntry& e : diff) paths.push_back(e.path);
  EXPECT_EQ(paths, (std::vector<std::string>{"listeners[0].port", "pools[0].backends[0].drain",
                                             "pools[1].healthCheck", "waf.paranoia"}));
  ASSERT_EQ(diff.size(), 4u);
  EXPECT_EQ(diff[1].oldJson, "false");
  EXPECT_EQ(diff[1].newJson, "true");
  EXPECT_EQ(diff[2].oldJson, "");
  EXPECT_EQ(diff[2].newJson.rfind(R"({"type":"http","intervalMs":2000,)", 0), 0u) << diff[2].newJson;
  // And back: the object is removed.
  const std::vector<ConfigDiffEntry> back = diffConfigs(after, before);
  ASSERT_EQ(back.size(), 4u);
  EXPECT_EQ(back[2].path, "pools[1].healthCheck");
  EXPECT_EQ(back[2].newJson, "");
}

// ---- many errors -------------------------------------------------------------

TEST(ConfigMulti, EveryErrorInDocumentOrder) {
  ConfigResult r = parseConfig(R"({
    "workers": 999,
    "listeners": [
      {"address": "localhost", "port": 70000, "colour": "red"},
      {"name": "x", "address": "10.0.0.1"}
    ],
    "pools": [
      {"name": "p", "balance": "fastest", "backends": [
        {"address": "10.0.0.1", "port": 0, "weight": 5000},
        {"port": "80"}
      ]},
      {"name": "p", "balance": "maglev", "maglevTableSize": 100}
    ],
    "routes": [
      {"host": "*", "pathPrefix": "nope", "pool": "missing"}
    ],
    "timeouts": {"connectMs": 0},
    "limits": {"maxHeaders": 1000},
    "logging": {"level": "loud", "accessLog": 1}
  })");
  EXPECT_FALSE(r.config.has_value());
  const std::vector<std::pair<std::string, std::string>> want = {
      {"workers", "must be 0..256"},
      {"listeners[0].address", "hostnames are not supported"},
      {"listeners[0].port", "70000 is not a port"},
      {"listeners[0].colour", "unknown field"},
      {"listeners[1].port", "missing required field"},
      {"pools[0].balance", "unknown balance"},
      {"pools[0].backends[0].port", "0 is not a port"},
      {"pools[0].backends[0].weight", "must be 0..1000"},
      {"pools[0].backends[1].port", "expected an integer, got string"},
      {"pools[0].backends[1].address", "missing required field"},
      {"pools[1].name", "duplicate pool name"},
      {"pools[1].maglevTableSize", "100 is not prime"},
      {"routes[0].pathPrefix", "must start with \"/\""},
      {"routes[0].pool", "no pool named \"missing\""},
      {"timeouts.connectMs", "must be 1..3600000"},
      {"limits.maxHeaders", "must be 1..128"},
      {"logging.level", "unknown log level"},
      {"logging.accessLog", "expected a string, got number"},
  };
  ASSERT_EQ(r.errors.size(), want.size()) << dump(r);
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ(r.errors[i].path, want[i].first) << i << "\n" << dump(r);
    EXPECT_NE(r.errors[i].message.find(want[i].second), std::string::npos)
        << i << "\n" << dump(r);
  }
}

// ---- files -------------------------------------------------------------------

TEST(ConfigFile, MissingFileIsOneError) {
  const std::string path = "/nonexistent/moat-config-test.json";
  ConfigResult r = loadConfigFile(path);
  ASSERT_EQ(r.errors.size(), 1u) << dump(r);
  EXPECT_EQ(r.errors[0].path, "");
  EXPECT_NE(r.errors[0].message.find(path), std::string::npos) << dump(r);
  EXPECT_NE(r.errors[0].message.find(std::strerror(ENOENT)), std::string::npos) << dump(r);
  EXPECT_FALSE(r.config.has_value());
}

TEST(ConfigFile, DirectoryIsOneError) {
  ConfigResult r = loadConfigFile("/");
  ASSERT_EQ(r.errors.size(), 1u) << dump(r);
  EXPECT_EQ(r.errors[0].path, "");
  EXPECT_NE(r.errors[0].message.find(std::strerror(EISDIR)), std::string::npos) << dump(r);
}

TEST(ConfigFile, ReadsAndValidates) {
  std::filesystem::path p = std::filesystem::temp_directory_path() /
                            ("moat-config-test-" + std::to_string(::getpid()) + ".json");
  {
    std::ofstream out(p);
    out << doc(R"("workers": 300)");
  }
  ConfigResult r = loadConfigFile(p.string());
  std::filesystem::remove(p);
  ASSERT_EQ(r.errors.size(), 1u) << dump(r);
  EXPECT_EQ(r.errors[0].path, "workers");
}

TEST(ConfigNames, ToString) {
  EXPECT_STREQ(toString(BalanceAlgorithm::kRoundRobin), "round_robin");
  EXPECT_STREQ(toString(BalanceAlgorithm::kLeastConnections), "least_connections");
  EXPECT_STREQ(toString(BalanceAlgorithm::kMaglev), "maglev");
  EXPECT_STREQ(toString(ListenerProtocol::kHttp), "http");
  EXPECT_STREQ(toString(LogLevel::kWarn), "warn");
  EXPECT_STREQ(toString(HealthCheckType::kTcp), "tcp");
  EXPECT_STREQ(toString(HealthCheckType::kHttps), "https");
  EXPECT_STREQ(toString(GeoSourceType::kMaxmindCsv), "maxmind_csv");
  EXPECT_STREQ(toString(GeoSourceType::kMmdb), "mmdb");
  EXPECT_EQ((ConfigError{"", "bad"}).toString(), "bad");
}

// ---- l4 -------------------------------------------------------------------------------

std::string withL4(const std::string& l4) {
  return R"({"listeners": [{"address": "127.0.0.1", "port": 8080}],
             "pools": [{"name": "p", "backends": [{"address": "10.0.0.1", "port": 80}]}],
             "routes": [{"pool": "p"}], "l4": )" + l4 + "}";
}

TEST(ConfigL4, DefaultsAndSocketEngine) {
  Config c = expectValid(withL4(R"({"services": [{"address": "127.0.0.1", "port": 9000, "pool": "p"}]})"));
  EXPECT_EQ(c.l4.engine, L4Engine::kUring);
  ASSERT_EQ(c.l4.services.size(), 1u);
  EXPECT_EQ(c.l4.services[0].forwarding, L4Forwarding::kProxy);  // the socket engine's only mode
  EXPECT_EQ(c.l4.services[0].name, "tcp/127.0.0.1:9000");
  EXPECT_EQ(c.l4.services[0].onBackendDown, L4BackendDown::kReset);
}

TEST(ConfigL4, ErrorsCarryPaths) {
  struct Case {
    const char* l4;
    const char* path;
    const char* contains;
  } cases[] = {
      {R"({"engine": "xdp"})", "l4.engine", "allowed: uring, dpdk"},
      {R"({"services": [{"address": "10.0.0.9", "port": 80, "pool": "p", "forwarding": "ipip"}]})",
       "l4.services[0].forwarding", "needs l4.engine \"dpdk\""},
      {R"({"engine": "dpdk", "localIpv4": "10.0.0.1", "dpdk": {"port": "net_null0"},
           "services": [{"address": "10.0.0.9", "port": 80, "pool": "p", "forwarding": "proxy"}]})",
       "l4.services[0].forwarding", "needs l4.engine \"uring\""},
      {R"({"engine": "dpdk", "dpdk": {"port": "net_null0"},
           "services": [{"address": "10.0.0.9", "port": 80, "pool": "p"}]})",
       "l4.localIpv4", "own address"},
      {R"({"engine": "dpdk", "localIpv4": "10.0.0.1"})", "l4.dpdk.port", "needs a port"},
      {R"({"services": [{"address": "10.0.0.9", "port": 80, "pool": "nope"}]})", "l4.services[0].pool",
       "no pool named"},
      {R"({"services": [{"address": "10.0.0.9", "port": 80, "pool": "p"},
                        {"address": "10.0.0.9", "port": 80, "pool": "p"}]})",
       "l4.services[1]", "same address, protocol and port"},
      {R"({"services": [{"port": 80, "pool": "p"}]})", "l4.services[0].address", "missing"},
      {R"({"localIpv4": "fd00::1"})", "l4.localIpv4", "must be an IPv4 address"},
      {R"({"neighbors": [{"address": "10.0.0.2", "mac": "02:00:00:00:00"}]})", "l4.neighbors[0].mac",
       "not a MAC address"},
      {R"({"geoDeny": ["DE"]})", "l4.geoDeny", "needs geo.sources"},
      {R"({"geoDeny": ["Germany"]})", "l4.geoDeny[0]", "ISO 3166-1"},
      {R"({"denyCidrs": ["10.0.0.1/8"]})", "l4.denyCidrs[0]", ""},
      {R"({"dpdk": {"lcores": [0]}})", "l4.dpdk.lcores[0]", "main lcore"},
      {R"({"dpdk": {"burst": 0}})", "l4.dpdk.burst", "1..256"},
      {R"({"flows": {"maxPerWorker": 10}})", "l4.flows.maxPerWorker", "1024.."},
      {R"({"mtu": 100})", "l4.mtu", "576..9000"},
      {R"({"bogus": 1})", "l4.bogus", "unknown field"},
  };
  for (const Case& k : cases) {
    SCOPED_TRACE(k.l4);
    ConfigResult r = parseConfig(withL4(k.l4));
    ASSERT_FALSE(r.errors.empty());
    bool found = false;
    for (const ConfigError& e : r.errors) {
      found = found || (e.path == k.path && e.message.find(k.contains) != std::string::npos);
    }
    EXPECT_TRUE(found) << dump(r);
  }
}

}  // namespace
}  // namespace moat::control
