// moat-bench worker: one thread, one io_uring loop (dataplane::Loop), its
// share of the connections, driving requests closed-loop or open-loop.
//
// Thread: a Worker is built on the main thread, then run() is called on its
// own thread and owns everything inside; the main thread only reads the
// relaxed atomic counters in Stats (progress line) while it runs and the
// histogram after join. Memory: per connection, one receive buffer that grows
// to the largest response head plus the in-flight ring; nothing per request
// on the plain path (request bytes are built once in the mix).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "histogram.h"
#include "options.h"

namespace moat::bench {

struct Stats {
  std::atomic<uint64_t> requests{0};  // responses completed in the measured window
  std::atomic<uint64_t> bytes{0};     // response bytes (head + body) in the window
  std::atomic<uint64_t> status[5]{};  // 1xx..5xx
  std::atomic<uint64_t> errConnect{0};   // connect() failed or was refused
  std::atomic<uint64_t> errTls{0};       // TLS handshake or record failure
  std::atomic<uint64_t> errTimeout{0};   // a request got no full response in --timeout
  std::atomic<uint64_t> errClosed{0};    // peer closed or reset with requests in flight
  std::atomic<uint64_t> errParse{0};     // response that is not valid HTTP/1.1
  std::atomic<uint64_t> fullHandshakes{0};
  std::atomic<uint64_t> resumedHandshakes{0};
  std::atomic<uint64_t> connects{0};     // TCP connections established (all phases)
  Histogram latencyNs;                   // owner thread only until join
  std::string lastConnectError;          // owner thread only until join
};

// Shared by all workers for one run; set before the threads start.
struct RunClock {
  uint64_t startNs = 0;         // CLOCK_MONOTONIC when sending begins
  uint64_t measureStartNs = 0;  // start + warm-up
  uint64_t endNs = 0;           // measureStart + duration (UINT64_MAX with -n)
  uint64_t requestLimit = 0;    // -n; 0 = none
  std::atomic<uint64_t> measured{0};  // requests measured so far, all workers (-n)
  std::atomic<uint64_t> limitReachedNs{0};  // when the -n'th request completed
  std::atomic<bool> stop{false};      // set by SIGINT or when -n is reached
};

class Worker {
 public:
  // `firstConn` is this worker's first global connection index and `conns`
  // how many it owns (for source-address and open-loop phase spreading).
  Worker(const Options& opts, RunClock& clock, uint32_t index, uint32_t firstConn, uint32_t conns);
  ~Worker();
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  // Thread body. False with `err` when the worker could not start (io_uring,
  // TLS context); request-level failures are counted in stats() instead.
  bool run(std::string& err);
  Stats& stats();

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace moat::bench
