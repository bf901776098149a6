// The DPDK poll-mode engine seam: EAL, one port, one RX/TX queue pair per
// worker lcore, an exception path to the kernel through a TAP device, and a
// run-to-completion loop per lcore that hands bursts of frames to a handler
// written above the seam (l4's packet processor). Nothing here exposes DPDK
// types; src/dpdk_engine.cpp is the only file that includes rte_*.h (with
// src/dpdk_lpm.cpp for the prefix tables).
//
// Threads: create(), start(), stop(), report() and the control ring's send
// side are called from the control thread (moatd's main thread, which is the
// EAL main lcore). Handlers run on their own lcore only.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "moat/dataplane/frame.h"

namespace moat::dataplane {

struct PacketEngineOptions {
  std::string programName = "moatd";
  std::vector<uint32_t> lcores{1};  // worker lcores, one queue pair each
  uint32_t mainLcore = 0;
  bool noHuge = false;
  uint32_t memoryMb = 0;            // 0: EAL default (256 with noHuge)
  std::string port;                 // PCI address or vdev spec ("net_af_packet0,iface=veth0")
  std::vector<std::string> eal;     // extra EAL arguments
  std::string exceptionTap;         // TAP interface for the kernel path; "" = none
  uint32_t rxDescriptors = 1024;
  uint32_t txDescriptors = 1024;
  uint32_t mbufsPerLcore = 8192;
  uint32_t burst = 32;
  uint32_t txDrainUs = 100;
};

// What a handler decides for one frame.
enum class Verdict : uint8_t {
  kDrop,      // freed (the handler counted why)
  kTx,        // out of the data port (possibly rewritten in place)
  kToKernel,  // out of the exception TAP (or dropped and counted without one)
};

// Messages from the control thread to one lcore, read between bursts.
struct ControlMessage {
  enum class Type : uint8_t { kClearFlows, kPublishStats } type = Type::kClearFlows;
  uint64_t arg = 0;
};

// Per-lcore services the engine offers a handler.
class LcoreContext {
 public:
  virtual ~LcoreContext() = default;
  // Sends a new frame (an ARP request, a neighbour solicitation) out of the
  // data port: the bytes are copied into a fresh buffer. Returns false (and
  // counts) when no buffer is free. Meant for control-rate traffic.
  virtual bool emit(const uint8_t* bytes, uint32_t len) = 0;
  virtual uint32_t lcoreId() const = 0;
  virtual uint32_t workerIndex() const = 0;
  // MAC address of the data port.
  virtual const uint8_t* portMac() const = 0;
};

// Implemented above the seam (l4::PacketProcessor). One instance per lcore,
// created on the control thread, then used by that lcore only.
class BurstHandler {
 public:
  virtual ~BurstHandler() = default;
  // Once per burst (also for empty polls, at most every ~100 µs): load the
  // current config snapshot, run timers. `nowNs` is CLOCK_MONOTONIC-based.
  virtual void beginBurst(uint64_t nowNs) = 0;
  // Decides every frame of a burst; frames may be rewritten in place
  // (data/len changed within head- and tailroom). No allocation, no locks.
  virtual void handleBurst(Frame* frames, Verdict* verdicts, uint32_t n) = 0;
  virtual void onControl(const ControlMessage& m) = 0;
  // The lcore is about to leave its loop.
  virtual void onStop() = 0;
};

// Engine counters per lcore (and summed), declared once.
#define MOAT_PACKET_ENGINE_COUNTERS(X)                                                    \
  X(rxPackets, "rx_packets")                                                           \
  X(rxBytes, "rx_bytes")                                                               \
  X(rxBursts, "rx_bursts")               /* non-empty bursts: rxPackets / this = fill */ \
  X(emptyPolls, "empty_polls")                                                         \
  X(txPackets, "tx_packets")                                                           \
  X(txBytes, "tx_bytes")                                                               \
  X(txDropped, "tx_dropped")             /* TX queue full: the NIC is the bottleneck */ \
  X(dropped, "dropped")                  /* handler verdict kDrop */                   \
  X(rxMultiSegment, "rx_multi_segment")  /* chained mbufs (jumbo): dropped */          \
  X(toKernel, "to_kernel")               /* frames sent to the exception TAP */        \
  X(toKernelDropped, "to_kernel_dropped") /* no TAP, or its queue was full */           \
  X(fromKernel, "from_kernel")           /* frames the kernel sent out through us */   \
  X(emitted, "emitted")                  /* frames the handler made (ARP, NS) */        \
  X(emitNoBuffer, "emit_no_buffer")      /* mempool empty when emitting */             \
  X(rxIpChecksumBad, "rx_ip_checksum_bad") /* NIC flagged a bad IPv4 checksum */        \
  X(controlMessages, "control_messages")

struct PacketEngineCounters {
#define MOAT_PE_FIELD(f, n) uint64_t f = 0;
  MOAT_PACKET_ENGINE_COUNTERS(MOAT_PE_FIELD)
#undef MOAT_PE_FIELD
  PacketEngineCounters& operator+=(const PacketEngineCounters& o) {
#define MOAT_PE_ADD(f, n) f += o.f;
    MOAT_PACKET_ENGINE_COUNTERS(MOAT_PE_ADD)
#undef MOAT_PE_ADD
    return *this;
  }
  template <class Fn>
  void forEach(Fn&& fn) const {
#define MOAT_PE_VISIT(f, n) fn(n, f);
    MOAT_PACKET_ENGINE_COUNTERS(MOAT_PE_VISIT)
#undef MOAT_PE_VISIT
  }
};

struct PortInfo {
  std::string driver;      // "net_af_packet", "net_ice", ...
  std::string mac;         // "02:..."
  bool linkUp = false;
  uint32_t linkSpeedMbps = 0;
  uint32_t queues = 0;     // RX/TX queue pairs in use
  bool rss = false;        // RSS configured (symmetric key)
  std::string offloads;    // offloads in use, e.g. "rx_ipv4_cksum,tx_ipv4_cksum"
  std::string softwareFallbacks;  // what is done in software because the port lacks it
  bool exceptionTap = false;
  uint64_t imissed = 0;    // frames the NIC dropped for lack of RX descriptors
  uint64_t ierrors = 0;
};

class PacketEngine {
 public:
  // Initialises the EAL (once per process), probes the port and the TAP,
  // configures queues, RSS and offloads, starts the port. Calls
  // makeHandler(workerIndex, ctx) for each lcore on this thread. Returns
  // null with `err` set on failure (e.g. "port net_af_packet0: no such
  // device"). Blocking, allocates.
  static std::unique_ptr<PacketEngine> create(
      const PacketEngineOptions& opts,
      const std::function<std::unique_ptr<BurstHandler>(uint32_t worker, LcoreContext& ctx)>&
          makeHandler,
      std::string& err);
  ~PacketEngine();  // stops the lcores if running and closes the ports
  PacketEngine(const PacketEngine&) = delete;
  PacketEngine& operator=(const PacketEngine&) = delete;

  // Launches the worker loops on their lcores (rte_eal_remote_launch).
  void start();
  // Asks every loop to leave and waits for them (the handler's onStop runs
  // on its lcore). Idempotent.
  void stop();

  // Control thread: queues a message for one worker (false when its ring
  // is full).
  bool send(uint32_t worker, const ControlMessage& m);

  uint32_t workers() const;
  // Counters as the lcores last published them (about every 100 ms).
  PacketEngineCounters counters(uint32_t worker) const;
  PortInfo portInfo() const;  // reads the link state now

  struct Impl;

 private:
  explicit PacketEngine(Impl* impl);
  Impl* impl_;
};

// True once the EAL was initialised in this process (by create() or by
// initEalForTests()).
bool ealReady();
// For unit tests that need EAL memory (the LPM tables): --no-huge, no PCI,
// one lcore, in memory. Returns false with err on failure.
bool initEalForTests(std::string& err);

// The packet engine's deny-prefix tables on rte_lpm / rte_lpm6, built on the
// control thread. Memory: DPDK's DIR-24-8 tables take 64 MiB per family up
// front (more with long prefixes), and a config change builds the new table
// while the old one still serves: size l4.dpdk.memoryMb for two of each. `country` = 0 entries answer PrefixLookup-style kDenyCidr
// (1), else the country code. Needs the EAL; returns null with err otherwise.
struct LpmPrefix {
  uint8_t addr[16];
  uint8_t ipVersion;
  uint8_t length;
  uint32_t value;  // answered on match: IPv4 1..2^24-1, IPv6 1..2^21-1 (rte_lpm6 keeps 21 bits)
};
class LpmTable {
 public:
  static std::unique_ptr<LpmTable> create(const std::vector<LpmPrefix>& prefixes, std::string& err);
  ~LpmTable();
  uint32_t match4(const uint8_t addr[4]) const;   // 0 = no match
  uint32_t match6(const uint8_t addr[16]) const;  // 0 = no match
  size_t size() const;

  struct Impl;

 private:
  explicit LpmTable(Impl* impl);
  Impl* impl_;
};

}  // namespace moat::dataplane
