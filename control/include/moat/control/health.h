// Active health checks of pool backends (tcp, http, https).
//
// A HealthChecker owns one thread, "moat-health", that runs every check
// itself: non-blocking sockets (and OpenSSL over memory BIOs for https)
// driven by one poll() loop, at most one check in flight per target. Nothing
// here is reachable from a worker: the control thread hands targets in, reads
// statuses and drains transitions, and publishes what the balancer needs in
// its own snapshot. The balancer serves kUnknown backends; only kUnhealthy
// ones are taken out.
//
// Cost: one TCP connection per target every intervalMs (plus a full TLS
// handshake for https: no session resumption, so the certificate is checked
// every time). A loop turn is O(targets). Control-plane code: allocates, and
// only the constructor throws.
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "moat/control/config.h"

namespace moat::control {

enum class HealthState : uint8_t { kUnknown, kHealthy, kUnhealthy };

// "unknown", "healthy", "unhealthy". Static strings.
const char* toString(HealthState s);

struct HealthTarget {
  std::string pool;        // pool name
  std::string backendKey;  // "127.0.0.1:8081" / "[::1]:8081"
  sockaddr_storage addr{};
  socklen_t addrLen = 0;
  // `check.enabled` is not consulted: every target given is checked (the
  // caller passes only the enabled ones).
  HealthCheckConfig check;
  // kHttps only, normally the pool's `tls`: caFile ("" = the system store),
  // verify, sni (sent, and verified instead of the IP). enabled false (a pool
  // without tls): any certificate is accepted and no SNI is sent.
  UpstreamTlsConfig tls;
};

struct HealthStatus {
  std::string pool, backendKey;
  HealthState state = HealthState::kUnknown;
  uint32_t consecutivePasses = 0, consecutiveFailures = 0;
  uint64_t checks = 0, failures = 0, transitions = 0;
  // Outcome of the last completed check, for operators: "ok: 200 in 1.2 ms",
  // "ok: connected in 0.3 ms", "connect: Connection refused",
  // "timeout after 1000 ms", "status 503 not in 200-399",
  // "body does not contain \"ok\"", "tls: certificate verify failed: ...".
  std::string lastResult;
  int64_t lastCheckUnixMs = 0, lastChangeUnixMs = 0;  // 0 = never
};

struct HealthTransition {
  std::string pool, backendKey;
  HealthState from = HealthState::kUnknown, to = HealthState::kUnknown;
  std::string reason;  // lastResult of the check that made the change
};

// State machine per target: kUnknown -> kHealthy after `rise` consecutive
// passes, kUnknown -> kUnhealthy after `fall` consecutive failures, then
// kHealthy <-> kUnhealthy likewise. A check passes when (tcp) the connection
// is established, (http, https) the response status line parses strictly and
// its status is within [expectStatusMin, expectStatusMax] and, if
// bodyContains is set, the body read (at most 64 KiB of response in all)
// contains it. timeoutMs covers the whole check, connect included. The next
// check starts intervalMs * (1 + u) after the previous one completed, u
// uniform in [-jitterPct/100, +jitterPct/100] (at least 1 ms).
class HealthChecker {
 public:
  // Transitions kept for takeTransitions(); beyond this the oldest is
  // dropped and counted in droppedTransitions().
  static constexpr size_t kMaxQueuedTransitions = 1024;

  // Starts the "moat-health" thread. Throws std::system_error when an
  // eventfd or the thread cannot be created (start-up only).
  HealthChecker();
  // Stops and joins the thread; every socket of a check in flight is closed.
  // No other member may be running concurrently.
  ~HealthChecker();
  HealthChecker(const HealthChecker&) = delete;
  HealthChecker& operator=(const HealthChecker&) = delete;

  // Any thread. Replaces the set of targets. A target whose (pool,
  // backendKey, check, tls) is unchanged keeps its state, counters, schedule
  // and any check in flight; a new one starts kUnknown and is first checked
  // after a random delay in [0, intervalMs), so checks do not synchronise. A
  // removed target's check in flight has its socket closed. Its transitions
  // already queued stay queued.
  //
  // Reads CA files of https targets here, on the caller's thread (re-read on
  // every call); one that cannot be loaded makes each check of its targets
  // fail with the reason. Blocks until the checker thread has taken the set
  // in (one loop turn: that thread never waits on the network while a set is
  // pending), so statuses() afterwards lists exactly these targets.
  void setTargets(std::vector<HealthTarget> targets);

  // Any thread. A copy, in the order of the last setTargets() call.
  std::vector<HealthStatus> statuses() const;

  // Any thread. Drains the queued transitions, oldest first.
  std::vector<HealthTransition> takeTransitions();

  // Any thread. Transitions dropped because the queue was full (nobody
  // drained it for kMaxQueuedTransitions changes); should read 0.
  uint64_t droppedTransitions() const;

  // Any thread. +1 on every state transition of any target; once it has
  // moved, that transition is queued and notifyFd() is readable.
  uint64_t generation() const;

  // An eventfd (non-blocking), readable after a transition. The reader
  // drains it (read 8 bytes) and then calls takeTransitions() / statuses().
  // Owned by the checker; valid until its destruction.
  int notifyFd() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace moat::control
