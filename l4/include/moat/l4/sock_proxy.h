// The L4 socket proxy: the io_uring engine's twin of the DPDK balancer.
//
// On machines without a DPDK NIC, every L4 service with
// Forwarding::kProxy runs here as a TCP and UDP proxy on the same VIP, with
// the same Maglev table and the same backend choice for the same client
// 5-tuple (pick.h). The backend sees the proxy's address, not the client's.
//
// One SockWorker per core, shared-nothing: it owns one dataplane::Loop, its
// own SO_REUSEPORT listening sockets (the kernel spreads clients between
// workers), its flows and its counters. Flows never migrate.
//
// TCP bytes move socket -> pipe -> socket with io_uring splice (zero copy,
// one 64 KiB pipe per direction); UDP datagrams go through a per-client
// connected socket to the backend, replies are sent back from the listening
// socket (source = the VIP).
#pragma once

#include <sys/socket.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>

#include "moat/l4/flow_types.h"
#include "moat/l4/service.h"

namespace moat::l4 {

// Counters a SockWorker keeps, declared once: X(field, "json_name"), with
// what each should read in production.
#define MOAT_SOCK_PROXY_COUNTERS(X)                                                         \
  X(tcpAccepted, "tcp_accepted")                 /* connections taken from a listener */   \
  X(tcpAcceptErrors, "tcp_accept_errors")       /* accept failed (EMFILE...); ~0 */        \
  X(tcpActive, "tcp_active")                     /* gauge: flows holding a pool slot */     \
  X(tcpDeniedCidr, "tcp_denied_cidr")            /* closed at accept: l4.denyCidrs */       \
  X(tcpDeniedGeo, "tcp_denied_geo")              /* closed at accept: l4.geoDeny */         \
  X(tcpNoBackend, "tcp_no_backend")              /* RST: Maglev table empty */              \
  X(tcpPoolFull, "tcp_pool_full")                /* RST: maxTcpFlows reached; ~0 */         \
  X(tcpConnectErrors, "tcp_connect_errors")      /* RST: backend refused/unreachable */     \
  X(tcpConnectTimeouts, "tcp_connect_timeouts")  /* RST: no answer in connectTimeoutMs */   \
  X(tcpResetBackendDown, "tcp_reset_backend_down") /* flows cut: backend left/unhealthy */  \
  X(tcpDroppedBackendDown, "tcp_dropped_backend_down") /* same, onBackendDown kDrop */      \
  X(tcpHalfCloses, "tcp_half_closes")            /* one side sent FIN, other kept going */ \
  X(tcpErrors, "tcp_errors")                     /* flows ended by a socket error/reset */  \
  X(bytesClientToBackend, "bytes_client_to_backend") /* TCP (ended flows) + UDP */          \
  X(bytesBackendToClient, "bytes_backend_to_client")                                      \
  X(udpFlowsCreated, "udp_flows_created")                                                  \
  X(udpFlowsActive, "udp_flows_active")          /* gauge */                                \
  X(udpFlowsExpired, "udp_flows_expired")        /* idle for udpIdleMs */                   \
  X(udpFlowsEvicted, "udp_flows_evicted")        /* LRU evicted at maxUdpFlows; ~0 */       \
  X(udpFlowsBackendDown, "udp_flows_backend_down") /* dropped: backend left/unhealthy */   \
  X(udpDatagramsIn, "udp_datagrams_in")          /* from clients */                         \
  X(udpDatagramsOut, "udp_datagrams_out")        /* back to clients */                      \
  X(udpDenied, "udp_denied")                     /* datagrams from denied clients */        \
  X(udpNoBackend, "udp_no_backend")              /* datagrams dropped: no backend */        \
  X(udpPoolFull, "udp_pool_full")                /* dropped: every flow slot closing; ~0 */ \
  X(udpTruncated, "udp_truncated")               /* over udpMaxDatagram: dropped */         \
  X(udpSendErrors, "udp_send_errors")            /* send failed or no send slot free */     \
  X(udpBackendErrors, "udp_backend_errors")      /* ICMP errors on a backend socket */      \
  X(configSwitches, "config_switches")           /* new Tables picked up */                 \
  X(loopWaits, "loop_waits")                     /* io_uring_enter calls */                 \
  X(loopCompletions, "loop_completions")         /* completions / waits = batching */       \
  X(recvNoBuffers, "recv_no_buffers")            /* UDP buffer ring ran dry */

struct SockCounters {
#define MOAT_SOCK_COUNTER_FIELD(field, name) uint64_t field = 0;
  MOAT_SOCK_PROXY_COUNTERS(MOAT_SOCK_COUNTER_FIELD)
#undef MOAT_SOCK_COUNTER_FIELD

  SockCounters& operator+=(const SockCounters& o) {
#define MOAT_SOCK_COUNTER_ADD(field, name) field += o.field;
    MOAT_SOCK_PROXY_COUNTERS(MOAT_SOCK_COUNTER_ADD)
#undef MOAT_SOCK_COUNTER_ADD
    return *this;
  }

  // Calls fn(jsonName, value) for every counter, in declaration order.
  template <class Fn>
  void forEach(Fn&& fn) const {
#define MOAT_SOCK_COUNTER_VISIT(field, name) fn(name, field);
    MOAT_SOCK_PROXY_COUNTERS(MOAT_SOCK_COUNTER_VISIT)
#undef MOAT_SOCK_COUNTER_VISIT
  }
};

struct BackendFlowCounters {
  uint64_t flows = 0;   // TCP + UDP flows given to this backend since start
  uint64_t active = 0;  // of which still open
  BackendFlowCounters& operator+=(const BackendFlowCounters& o) {
    flows += o.flows;
    active += o.active;
    return *this;
  }
};

struct SockReport {
  SockCounters counters;
  // By Backend::key, for the backends of the Tables in use at publication
  // (a removed backend drops out of the map).
  std::map<std::string, BackendFlowCounters> backends;
};

// The FlowKey the socket engine hands to pickBackend for a client of `svc`:
// {peer address, svc.vip, peer port, svc.port, 6 or 17, svc.ipVersion}.
// False if `peer` is neither AF_INET nor AF_INET6. No allocation.
bool sockFlowKey(const Service& svc, const sockaddr* peer, socklen_t peerLen, FlowKey& out);

class SockWorker {
 public:
  struct Options {
    size_t index = 0;
    // Called once at create() and once per loop turn, on the calling
    // thread; returns the tables to use until the next call. Never null.
    std::function<const Tables*()> acquire;
    // Called at create() with an eventfd the control side writes to after
    // publishing new Tables, and with -1 at the end of run() (the fd is
    // closed by the destructor: stop writing to it). May be empty.
    std::function<void(int)> registerWakeFd;
    const std::atomic<bool>* stop = nullptr;
    uint32_t maxTcpFlows = 65536;  // per worker, preallocated; full -> RST (tcp_pool_full)
    uint32_t maxUdpFlows = 65536;  // per worker, preallocated, LRU-evicted (counted)
    uint32_t udpIdleMs = 30000;
    uint32_t connectTimeoutMs = 2000;
    // Largest UDP datagram relayed (bigger ones are dropped, udp_truncated);
    // sizes the receive buffers (udpBuffers of them).
    uint32_t udpMaxDatagram = 9216;
    uint32_t udpBuffers = 2048;    // power of two
    uint32_t udpSendSlots = 4096;  // UDP sends in flight at once; more -> dropped (counted)
  };

  // Opens one listener per kProxy service of the first acquired Tables
  // (TCP: SO_REUSEPORT + listen; UDP: SO_REUSEPORT bound socket; IPv6 ones
  // IPV6_V6ONLY) and sets up the loop; preallocates the flow pools.
  // Returns null with `err` set on failure (e.g. "udp 10.0.0.1:53: bind:
  // Cannot assign requested address"). Allocates; any thread. The listen
  // set is fixed here: later Tables change backends, Maglev and deny lists.
  static std::unique_ptr<SockWorker> create(const Options& opts, std::string& err);
  ~SockWorker();
  SockWorker(const SockWorker&) = delete;
  SockWorker& operator=(const SockWorker&) = delete;

  // Runs the loop on the calling thread until *stop; then closes the
  // listeners and UDP flows, lets TCP flows finish for up to drainMs,
  // resets what is left and returns. Call once.
  void run(uint32_t drainMs);

  // Any thread: the counters as of the worker's last publication (about
  // every second, right after it takes new Tables, and when run() returns).
  // Allocates (copies the map).
  SockReport report() const;

  // Number of listeners opened at create() (TCP + UDP).
  size_t listenerCount() const;

  struct Impl;

 private:
  explicit SockWorker(Impl* impl);
  Impl* impl_;
};

}  // namespace moat::l4
