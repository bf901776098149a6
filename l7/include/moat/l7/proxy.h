// The HTTP/1.1 reverse proxy worker: one per core, shared-nothing.
//
// A Worker owns one dataplane::Loop, its own SO_REUSEPORT listening sockets,
// its client and upstream connections, its upstream keep-alive pools and its
// counters. Connections never migrate between workers. run() blocks the
// calling thread until stop is requested.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "moat/control/config.h"
#include "moat/control/snapshot.h"
#include "moat/ratelimit/limiter.h"

namespace moat::l7 {

// Counters a worker keeps, declared once (Envoy's ALL_*_STATS style): each
// entry is X(field, "json_name") with a comment saying what it should read in
// production. Summing, reporting and JSON output are generated from the list.
#define MOAT_PROXY_COUNTERS(X)                                                        \
  X(connectionsAccepted, "connections_accepted")                                     \
  X(connectionsActive, "connections_active")     /* gauge */                         \
  X(requests, "requests")                        /* heads parsed, routed or refused */ \
  X(responses2xx, "responses_2xx")                                                   \
  X(responses3xx, "responses_3xx")                                                   \
  X(responses4xx, "responses_4xx")                                                   \
  X(responses5xx, "responses_5xx")                                                   \
  X(parseErrors, "parse_errors")      /* 400/414/431/501/505: ~0 with real clients */ \
  X(noRoute, "no_route")              /* 404 from routing: a config gap */            \
  X(noBackend, "no_backend")          /* 503: pool empty or all weights 0 */          \
  X(upstreamConnectErrors, "upstream_connect_errors")     /* 502: refused/unreachable */ \
  X(upstreamConnectTimeouts, "upstream_connect_timeouts") /* 504 before connect */    \
  X(upstreamResponseTimeouts, "upstream_response_timeouts") /* 504 waiting */         \
  X(upstreamProtocolErrors, "upstream_protocol_errors")   /* 502: bad response */     \
  X(upstreamResets, "upstream_resets")       /* backend closed mid-exchange */        \
  X(upstreamRetries, "upstream_retries")     /* stale pooled connection retried */    \
  X(upstreamReused, "upstream_reused")       /* requests on a pooled connection */    \
  X(upstreamConnects, "upstream_connects")   /* new upstream connections */           \
  X(upstreamIdleClosed, "upstream_idle_closed") /* pool at maxIdlePerWorker */        \
  X(clientTimeouts, "client_timeouts")       /* 408 sent (header or body) */          \
  X(clientAborts, "client_aborts")           /* client left before the response */    \
  X(backpressurePauses, "backpressure_pauses") /* receive paused: peer is slow */     \
  X(bytesIn, "bytes_in")                     /* client side */                        \
  X(bytesOut, "bytes_out")                                                           \
  X(configSwitches, "config_switches")       /* snapshots picked up */                \
  X(accessLogDropped, "access_log_dropped")  /* lines dropped: sink too slow */       \
  X(loopWaits, "loop_waits")                 /* io_uring_enter calls */               \
  X(loopCompletions, "loop_completions")     /* completions / waits = batching */     \
  X(recvNoBuffers, "recv_no_buffers")        /* buffer ring ran dry: raise count */ \
  X(rateLimited, "rate_limited")             /* 429 sent: a rule ran out */            \
  X(rateLimitDryRun, "rate_limit_dry_run")   /* dry-run rules that would have refused */ \
  X(rateLimitDenyListed, "rate_limit_deny_listed") /* 403: client in rateLimit.deny */  \
  X(rateLimitBanned, "rate_limit_banned")    /* 429 to a client in the penalty box */   \
  X(rateLimitBannedConnections, "rate_limit_banned_connections") /* closed at accept */ \
  X(rateLimitEscalations, "rate_limit_escalations") /* clients put in the penalty box */ \
  X(xffInvalid, "xff_invalid")  /* trusted hop wrote a non-address in X-Forwarded-For */ \
  X(proxyProtocolRefused, "proxy_protocol_refused") /* PROXY listener, untrusted peer */ \
  X(proxyProtocolErrors, "proxy_protocol_errors")   /* malformed PROXY header: closed */ \
  X(wafInspected, "waf_inspected")           /* requests the WAF evaluated */          \
  X(wafBlocked, "waf_blocked")               /* refused by a WAF rule (403 or as set) */ \
  X(wafDetected, "waf_detected")             /* detect mode: would have been refused */ \
  X(wafBodyErrors, "waf_body_errors")        /* body the processor could not parse */   \
  X(wafBodyLimit, "waf_body_limit")          /* body over waf.requestBodyLimit */       \
  X(wafRuleMatches, "waf_rule_matches")      /* rules that matched (any action) */      \
  X(wafAuditDropped, "waf_audit_dropped")    /* audit lines dropped: sink too slow */ \
  X(tlsHandshakes, "tls_handshakes")         /* client handshakes completed */          \
  X(tlsResumed, "tls_resumed")               /* of which resumed (session ticket) */    \
  X(tlsHandshakeErrors, "tls_handshake_errors") /* refused or broken before the end */ \
  X(tlsErrors, "tls_errors")                 /* fatal TLS errors after the handshake */ \
  X(tlsClientCerts, "tls_client_certs")      /* verified client certificates (mTLS) */  \
  X(upstreamTlsHandshakes, "upstream_tls_handshakes") /* TLS sessions to backends */    \
  X(upstreamTlsErrors, "upstream_tls_errors") /* 502: backend TLS failed or unverified */ \
  X(geoBlocked, "geo_blocked")               /* 403 from a listener's geo policy */

struct ProxyCounters {
#define MOAT_COUNTER_FIELD(field, name) uint64_t field = 0;
  MOAT_PROXY_COUNTERS(MOAT_COUNTER_FIELD)
#undef MOAT_COUNTER_FIELD

  ProxyCounters& operator+=(const ProxyCounters& o) {
#define MOAT_COUNTER_ADD(field, name) field += o.field;
    MOAT_PROXY_COUNTERS(MOAT_COUNTER_ADD)
#undef MOAT_COUNTER_ADD
    return *this;
  }

  // Calls fn(jsonName, value) for every counter, in declaration order.
  template <class Fn>
  void forEach(Fn&& fn) const {
#define MOAT_COUNTER_VISIT(field, name) fn(name, field);
    MOAT_PROXY_COUNTERS(MOAT_COUNTER_VISIT)
#undef MOAT_COUNTER_VISIT
  }
};

struct NamedCounters {
  uint64_t requests = 0;
  uint64_t errors = 0;  // 5xx answered
};

struct RateLimitRuleCounters {
  uint64_t checked = 0;  // requests the rule applied to
  uint64_t limited = 0;  // of which refused (or, in dry run, would have been)
};

// Request latency (head received to response done), milliseconds, in
// Prometheus-style cumulative-free buckets: buckets[i] counts requests with
// latency <= kLatencyBucketsMs[i] (and > the previous bound); the last slot
// counts the rest.
inline constexpr std::array<uint64_t, 13> kLatencyBucketsMs{1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000};
struct LatencyHistogram {
  std::array<uint64_t, kLatencyBucketsMs.size() + 1> buckets{};
  uint64_t sumMs = 0;
  LatencyHistogram& operator+=(const LatencyHistogram& o) {
    for (size_t i = 0; i < buckets.size(); ++i) buckets[i] += o.buckets[i];
    sumMs += o.sumMs;
    return *this;
  }
};

struct WorkerReport {
  ProxyCounters counters;
  LatencyHistogram latency;
  std::map<std::string, uint64_t> geoBlocked;  // by country ("unknown" when none)
  std::map<uint32_t, uint64_t> wafRules;         // matches by WAF rule id
  // Worst delay between a snapshot's build and this worker running it (µs).
  uint64_t switchLagMaxUs = 0;
  std::map<std::string, NamedCounters> listeners, routes, backends;
  std::map<std::string, RateLimitRuleCounters> rateLimitRules;
  std::vector<ratelimit::TopKeys::Item> topOffenders;  // this worker's most refused keys
  uint64_t configVersion = 0;
};

// Opens a non-blocking SO_REUSEPORT listening socket. Returns -1 and sets err.
int openListener(const control::ListenerConfig& l, std::string& err);

class Worker {
 public:
  struct Options {
    size_t index = 0;
    control::SnapshotPublisher* publisher = nullptr;
    int accessLogFd = -1;  // -1: off
    // Shared by every worker; outlives them. Null: rate limiting is off.
    ratelimit::Table* rateLimitTable = nullptr;
    int wafAuditFd = -1;  // JSON lines of requests with WAF matches; -1: off
    const std::atomic<bool>* stop = nullptr;
  };

  // Opens this worker's listeners for the current snapshot and sets up its
  // loop. Returns null with `err` set on failure (e.g. "127.0.0.1:80: bind:
  // Permission denied"). Call from the thread that will run() it or before.
  static std::unique_ptr<Worker> create(const Options& opts, std::string& err);
  ~Worker();

  // Runs until *stop is true, then closes listeners and lets in-flight
  // requests finish (up to drainMs), then returns.
  void run(uint32_t drainMs);

  // Any thread: the counters as of the worker's last publication (~1 s).
  WorkerReport report() const;

  struct Impl;

 private:
  explicit Worker(Impl* impl);
  Impl* impl_;
};

}  // namespace moat::l7
