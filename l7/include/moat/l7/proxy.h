// The HTTP/1.1 reverse proxy worker: one per core, shared-nothing.
//
// A Worker owns one dataplane::Loop, its own SO_REUSEPORT listening sockets,
// its client and upstream connections, its upstream keep-alive pools and its
// counters. Connections never migrate between workers. run() blocks the
// calling thread until stop is requested.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "moat/control/config.h"
#include "moat/control/snapshot.h"

namespace moat::l7 {

// Counters a worker keeps; summed across workers for reporting. Each says
// what it should read in production.
struct ProxyCounters {
  uint64_t connectionsAccepted = 0;
  uint64_t connectionsActive = 0;       // gauge
  uint64_t requests = 0;                // heads parsed and routed or refused
  uint64_t responses2xx = 0, responses3xx = 0, responses4xx = 0, responses5xx = 0;
  uint64_t parseErrors = 0;             // 400/414/431/501/505 sent: should be ~0 with real clients
  uint64_t noRoute = 0;                 // 404 from routing: config gap
  uint64_t noBackend = 0;               // 503: pool empty or all weights 0
  uint64_t upstreamConnectErrors = 0;   // 502: backend refused / unreachable
  uint64_t upstreamConnectTimeouts = 0; // 504 before connect
  uint64_t upstreamResponseTimeouts = 0;// 504 while waiting for the backend
  uint64_t upstreamProtocolErrors = 0;  // 502: malformed response from a backend
  uint64_t upstreamResets = 0;          // backend closed mid-exchange
  uint64_t upstreamRetries = 0;         // stale keep-alive connection retried once
  uint64_t upstreamReused = 0;          // requests sent on a pooled connection
  uint64_t upstreamConnects = 0;        // new upstream connections
  uint64_t upstreamIdleClosed = 0;      // reusable connection closed: pool at maxIdlePerWorker
  uint64_t clientTimeouts = 0;          // 408 (header) or idle close
  uint64_t clientAborts = 0;            // client closed before the response ended
  uint64_t backpressurePauses = 0;      // receive paused because the peer is slow
  uint64_t bytesIn = 0, bytesOut = 0;   // client side
  uint64_t configSwitches = 0;          // snapshots picked up
  uint64_t accessLogDropped = 0;        // lines dropped: log sink too slow
  uint64_t loopWaits = 0;               // io_uring_enter calls: completions / this = batching
  uint64_t loopCompletions = 0;         // completions handled
  uint64_t recvNoBuffers = 0;           // receives that found no provided buffer (raise bufferCount)
};

struct NamedCounters {
  uint64_t requests = 0;
  uint64_t errors = 0;  // 5xx answered
};

struct WorkerReport {
  ProxyCounters counters;
  std::map<std::string, NamedCounters> listeners, routes, backends;
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
