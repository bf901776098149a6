// DPDK implementation of moat::dataplane::PacketEngine (packet_engine.h).
//
// Layout (after DPDK's examples/l3fwd): the data port gets one RX and one TX
// queue per worker lcore; so does the exception TAP. Mbuf pools are made per
// NUMA socket of the worker lcores. Each lcore runs loop() to completion:
//
//   RX burst from the port -> frames -> handler -> TX buffer / TAP buffer
//   RX burst from the TAP  -> straight to the port's TX buffer
//   TX buffers flushed when a burst's worth is queued or txDrainUs passed
//   control ring drained, counters published every ~100 ms
//
// The EAL is initialised once per process (create() or initEalForTests())
// with --in-memory (--no-shconf with --no-huge), so nothing is left under
// /var/run/dpdk and several processes may run side by side (tests).
#include <rte_common.h>
#include <rte_cycles.h>
#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_ethdev.h>
#include <rte_launch.h>
#include <rte_lcore.h>
#include <rte_log.h>
#include <rte_malloc.h>
#include <rte_mbuf.h>
#include <rte_mempool.h>
#include <rte_ring.h>
#include <rte_bus.h>
#include <rte_dev.h>
#include <time.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "moat/dataplane/packet_engine.h"

namespace moat::dataplane {

namespace {

std::atomic<bool> gEalReady{false};
std::mutex gEalMu;
// rte_eal_init keeps pointers into argv for the life of the process.
std::vector<std::string>* gEalArgs = nullptr;

constexpr uint32_t kMaxBurst = 256;
constexpr uint32_t kTxBufferSize = 512;
constexpr uint64_t kPublishEveryNs = 100'000'000;

// A symmetric Toeplitz key (the 0x6d5a pattern): hash(src, dst) ==
// hash(dst, src), so both directions of a flow, and every packet of one
// client, land on the same queue and lcore.
constexpr uint8_t kSymmetricRssKey[52] = {
    0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d,
    0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a,
    0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d,
    0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a};

uint64_t monoNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000u + static_cast<uint64_t>(ts.tv_nsec);
}

std::string macString(const rte_ether_addr& a) {
  char buf[18];
  snprintf(buf, sizeof(buf), "%02x:%02x:%02x:%02x:%02x:%02x", a.addr_bytes[0], a.addr_bytes[1],
           a.addr_bytes[2], a.addr_bytes[3], a.addr_bytes[4], a.addr_bytes[5]);
  return buf;
}

bool initEal(std::vector<std::string> args, std::string& err) {
  std::lock_guard<std::mutex> lock(gEalMu);
  if (gEalReady.load()) {
    err = "the EAL is already initialised in this process (one packet engine per process)";
    return false;
  }
  // rte_eal_init may permute argv and keeps pointers into the strings:
  // they live in a process-wide holder (once per process).
  gEalArgs = new std::vector<std::string>(std::move(args));
  static std::vector<char*> argv;
  for (std::string& a : *gEalArgs) argv.push_back(a.data());
  argv.push_back(nullptr);
  const int rc = rte_eal_init(static_cast<int>(gEalArgs->size()), argv.data());
  if (rc < 0) {
    err = "rte_eal_init: " + std::string(rte_strerror(rte_errno));
    return false;
  }
  gEalReady.store(true);
  return true;
}

}  // namespace

bool ealReady() { return gEalReady.load(); }

bool initEalForTests(std::string& err) {
  if (gEalReady.load()) return true;
  // 512 MiB: an rte_lpm and an rte_lpm6 table take 64 MiB each up front.
  return initEal({"moat-test", "-l", "0", "--no-huge", "-m", "512", "--no-pci", "--no-shconf",
                  "--log-level=*:error"},
                 err);
}

// ---------------------------------------------------------------------------

namespace {

struct alignas(64) PublishedCounters {
#define MOAT_PE_ATOMIC(f, n) std::atomic<uint64_t> f{0};
  MOAT_PACKET_ENGINE_COUNTERS(MOAT_PE_ATOMIC)
#undef MOAT_PE_ATOMIC
};

struct TxBuffer {
  std::array<rte_mbuf*, kTxBufferSize> pkts{};
  uint32_t count = 0;
};

}  // namespace

struct Lcore;

struct PacketEngine::Impl {
  PacketEngineOptions opts;
  uint16_t port = 0;
  uint16_t tap = UINT16_MAX;  // none
  rte_ether_addr mac{};
  std::string driver;
  bool rss = false;
  std::string offloads, fallbacks;
  bool rxIpChecksum = false;
  uint32_t queues = 0;
  std::vector<rte_mempool*> poolBySocket;  // indexed by socket id
  std::vector<std::unique_ptr<Lcore>> lcores;
  std::atomic<bool> stopFlag{false};
  bool running = false;
  bool portStarted = false, tapStarted = false;
};

struct Lcore final : LcoreContext {
  PacketEngine::Impl* engine = nullptr;
  uint32_t index = 0;
  uint32_t lcore = 0;
  uint16_t queue = 0;
  rte_mempool* pool = nullptr;
  rte_ring* control = nullptr;
  std::unique_ptr<BurstHandler> handler;
  PacketEngineCounters c;
  PublishedCounters published;
  TxBuffer portTx, tapTx;

  bool emit(const uint8_t* bytes, uint32_t len) override {
    rte_mbuf* m = rte_pktmbuf_alloc(pool);
    if (m == nullptr) {
      ++c.emitNoBuffer;
      return false;
    }
    char* p = rte_pktmbuf_append(m, static_cast<uint16_t>(len));
    if (p == nullptr) {
      rte_pktmbuf_free(m);
      ++c.emitNoBuffer;
      return false;
    }
    std::memcpy(p, bytes, len);
    ++c.emitted;
    queueTx(portTx, m, engine->port);
    return true;
  }
  uint32_t lcoreId() const override { return lcore; }
  uint32_t workerIndex() const override { return index; }
  const uint8_t* portMac() const override { return engine->mac.addr_bytes; }

  void flush(TxBuffer& b, uint16_t port) {
    if (b.count == 0) return;
    uint16_t sent = 0;
    // A few retries when the queue is momentarily full, then drop.
    for (int tries = 0; tries < 4 && sent < b.count; ++tries) {
      sent = static_cast<uint16_t>(
          sent + rte_eth_tx_burst(port, queue, b.pkts.data() + sent, static_cast<uint16_t>(b.count - sent)));
    }
    c.txPackets += sent;
    if (sent < b.count) {
      c.txDropped += b.count - sent;
      rte_pktmbuf_free_bulk(b.pkts.data() + sent, b.count - sent);
    }
    b.count = 0;
  }

  void queueTx(TxBuffer& b, rte_mbuf* m, uint16_t port) {
    if (&b == &portTx) c.txBytes += rte_pktmbuf_pkt_len(m);
    b.pkts[b.count++] = m;
    if (b.count == b.pkts.size()) flush(b, port);
  }

  void publish() {
#define MOAT_PE_STORE(f, n) published.f.store(c.f, std::memory_order_relaxed);
    MOAT_PACKET_ENGINE_COUNTERS(MOAT_PE_STORE)
#undef MOAT_PE_STORE
  }

  int loop();
};

namespace {
int lcoreMain(void* arg) { return static_cast<Lcore*>(arg)->loop(); }
}  // namespace

int Lcore::loop() {
  PacketEngine::Impl& e = *engine;
  const uint32_t burst = std::min<uint32_t>(e.opts.burst, kMaxBurst);
  const uint64_t drainNs = uint64_t{e.opts.txDrainUs} * 1000;
  std::array<rte_mbuf*, kMaxBurst> rx{};
  std::array<Frame, kMaxBurst> frames{};
  std::array<Verdict, kMaxBurst> verdicts{};
  uint64_t lastDrain = monoNs();
  uint64_t lastPublish = lastDrain;
  while (!e.stopFlag.load(std::memory_order_relaxed)) {
    const uint64_t now = monoNs();
    handler->beginBurst(now);
    const uint16_t n = rte_eth_rx_burst(e.port, queue, rx.data(), static_cast<uint16_t>(burst));
    if (n == 0) {
      ++c.emptyPolls;
    } else {
      ++c.rxBursts;
      c.rxPackets += n;
      uint32_t k = 0;  // frames handed to the handler
      std::array<rte_mbuf*, kMaxBurst> owned{};
      for (uint16_t i = 0; i < n; ++i) {
        rte_mbuf* m = rx[i];
        c.rxBytes += rte_pktmbuf_pkt_len(m);
        if (m->nb_segs != 1) {
          ++c.rxMultiSegment;
          rte_pktmbuf_free(m);
          continue;
        }
        Frame& f = frames[k];
        f.data = rte_pktmbuf_mtod(m, uint8_t*);
        f.len = rte_pktmbuf_data_len(m);
        f.headroom = rte_pktmbuf_headroom(m);
        f.tailroom = rte_pktmbuf_tailroom(m);
        f.rxIpChecksum = Frame::RxChecksum::kUnknown;
        if (e.rxIpChecksum) {
          const uint64_t fl = m->ol_flags & RTE_MBUF_F_RX_IP_CKSUM_MASK;
          if (fl == RTE_MBUF_F_RX_IP_CKSUM_GOOD) f.rxIpChecksum = Frame::RxChecksum::kGood;
          if (fl == RTE_MBUF_F_RX_IP_CKSUM_BAD) {
            f.rxIpChecksum = Frame::RxChecksum::kBad;
            ++c.rxIpChecksumBad;
          }
        }
        owned[k++] = m;
      }
      handler->handleBurst(frames.data(), verdicts.data(), k);
      for (uint32_t i = 0; i < k; ++i) {
        rte_mbuf* m = owned[i];
        const Frame& f = frames[i];
        switch (verdicts[i]) {
          case Verdict::kDrop:
            ++c.dropped;
            rte_pktmbuf_free(m);
            break;
          case Verdict::kTx:
            m->data_off = static_cast<uint16_t>(f.data - static_cast<uint8_t*>(m->buf_addr));
            m->data_len = static_cast<uint16_t>(f.len);
            m->pkt_len = f.len;
            m->ol_flags = 0;
            queueTx(portTx, m, e.port);
            break;
          case Verdict::kToKernel:
            if (e.tap == UINT16_MAX) {
              ++c.toKernelDropped;
              rte_pktmbuf_free(m);
            } else {
              ++c.toKernel;
              queueTx(tapTx, m, e.tap);
            }
            break;
        }
      }
      if (portTx.count >= burst) flush(portTx, e.port);
      if (tapTx.count >= burst) flush(tapTx, e.tap);
    }
    // The kernel's frames (replies of the host, its ARP) go out as they are.
    if (e.tap != UINT16_MAX) {
      const uint16_t t = rte_eth_rx_burst(e.tap, queue, rx.data(), static_cast<uint16_t>(burst));
      for (uint16_t i = 0; i < t; ++i) {
        ++c.fromKernel;
        queueTx(portTx, rx[i], e.port);
      }
    }
    if (now - lastDrain >= drainNs) {
      flush(portTx, e.port);
      if (e.tap != UINT16_MAX) flush(tapTx, e.tap);
      lastDrain = now;
      ControlMessage* msg = nullptr;
      while (rte_ring_dequeue(control, reinterpret_cast<void**>(&msg)) == 0) {
        ++c.controlMessages;
        handler->onControl(*msg);
        delete msg;  // allocated by the control thread; control-rate only
      }
    }
    if (now - lastPublish >= kPublishEveryNs) {
      publish();
      lastPublish = now;
    }
  }
  flush(portTx, e.port);
  if (e.tap != UINT16_MAX) flush(tapTx, e.tap);
  handler->onStop();
  publish();
  return 0;
}

// ---------------------------------------------------------------------------

namespace {

bool setupPort(uint16_t port, uint16_t queues, const PacketEngineOptions& o,
               const std::vector<rte_mempool*>& poolPerQueue, bool wantRss, bool* rssOut,
               bool* rxCksumOut, std::string* offloads, std::string* fallbacks, std::string& err) {
  rte_eth_dev_info info{};
  int rc = rte_eth_dev_info_get(port, &info);
  if (rc != 0) {
    err = "rte_eth_dev_info_get: " + std::string(rte_strerror(-rc));
    return false;
  }
  if (queues > info.max_rx_queues || queues > info.max_tx_queues) {
    err = std::string(info.driver_name) + " offers " + std::to_string(info.max_rx_queues) + " RX / " +
          std::to_string(info.max_tx_queues) + " TX queues, " + std::to_string(queues) + " needed (one per lcore)";
    return false;
  }
  rte_eth_conf conf{};
  const uint64_t wantHf = RTE_ETH_RSS_IP | RTE_ETH_RSS_TCP | RTE_ETH_RSS_UDP;
  const uint64_t hf = wantHf & info.flow_type_rss_offloads;
  if (wantRss && queues > 1 && hf != 0) {
    conf.rxmode.mq_mode = RTE_ETH_MQ_RX_RSS;
    conf.rx_adv_conf.rss_conf.rss_key = const_cast<uint8_t*>(kSymmetricRssKey);
    conf.rx_adv_conf.rss_conf.rss_key_len =
        info.hash_key_size != 0 ? std::min<uint8_t>(info.hash_key_size, sizeof(kSymmetricRssKey)) : 40;
    conf.rx_adv_conf.rss_conf.rss_hf = hf;
    *rssOut = true;
  } else if (wantRss && queues > 1) {
    *fallbacks += "rss(driver spreads queues itself),";
  }
  if (info.rx_offload_capa & RTE_ETH_RX_OFFLOAD_IPV4_CKSUM) {
    conf.rxmode.offloads |= RTE_ETH_RX_OFFLOAD_IPV4_CKSUM;
    *rxCksumOut = true;
    *offloads += "rx_ipv4_cksum,";
  } else if (wantRss) {
    *fallbacks += "rx_ipv4_cksum(verified in software),";
  }
  if (info.tx_offload_capa & RTE_ETH_TX_OFFLOAD_MBUF_FAST_FREE) {
    conf.txmode.offloads |= RTE_ETH_TX_OFFLOAD_MBUF_FAST_FREE;
    *offloads += "tx_mbuf_fast_free,";
  }
  rc = rte_eth_dev_configure(port, queues, queues, &conf);
  if (rc != 0) {
    err = "rte_eth_dev_configure: " + std::string(rte_strerror(-rc));
    return false;
  }
  uint16_t rxd = static_cast<uint16_t>(o.rxDescriptors), txd = static_cast<uint16_t>(o.txDescriptors);
  rte_eth_dev_adjust_nb_rx_tx_desc(port, &rxd, &txd);
  const int socket = rte_eth_dev_socket_id(port);
  for (uint16_t q = 0; q < queues; ++q) {
    rte_eth_rxconf rxc = info.default_rxconf;
    rxc.offloads = conf.rxmode.offloads;
    rc = rte_eth_rx_queue_setup(port, q, rxd, socket < 0 ? SOCKET_ID_ANY : static_cast<unsigned>(socket),
                                &rxc, poolPerQueue[q]);
    if (rc != 0) {
      err = "rte_eth_rx_queue_setup: " + std::string(rte_strerror(-rc));
      return false;
    }
    rte_eth_txconf txc = info.default_txconf;
    txc.offloads = conf.txmode.offloads;
    rc = rte_eth_tx_queue_setup(port, q, txd, socket < 0 ? SOCKET_ID_ANY : static_cast<unsigned>(socket), &txc);
    if (rc != 0) {
      err = "rte_eth_tx_queue_setup: " + std::string(rte_strerror(-rc));
      return false;
    }
  }
  rc = rte_eth_dev_start(port);
  if (rc != 0) {
    err = "rte_eth_dev_start: " + std::string(rte_strerror(-rc));
    return false;
  }
  // VIP traffic is addressed to our MAC, but DSR peers and the exception
  // path need every frame on the segment the kernel would have seen.
  rte_eth_promiscuous_enable(port);
  return true;
}

}  // namespace

std::unique_ptr<PacketEngine> PacketEngine::create(
    const PacketEngineOptions& o,
    const std::function<std::unique_ptr<BurstHandler>(uint32_t, LcoreContext&)>& makeHandler,
    std::string& err) {
  if (o.lcores.empty()) {
    err = "no worker lcores";
    return nullptr;
  }
  if (o.port.empty()) {
    err = "no port (PCI address or vdev)";
    return nullptr;
  }
  const uint32_t queues = static_cast<uint32_t>(o.lcores.size());
  std::string lcoreList = std::to_string(o.mainLcore);
  for (uint32_t l : o.lcores) lcoreList += "," + std::to_string(l);
  std::vector<std::string> args{o.programName, "-l", lcoreList, "--main-lcore",
                                std::to_string(o.mainLcore), "--log-level=*:warning"};
  // No runtime files: --in-memory with hugepages; --no-huge implies legacy
  // memory, which --in-memory refuses, so there --no-shconf does the job.
  if (o.noHuge) {
    args.push_back("--no-huge");
    args.push_back("--no-shconf");
  } else {
    args.push_back("--in-memory");
  }
  if (o.memoryMb != 0 || o.noHuge) {
    args.push_back("-m");
    args.push_back(std::to_string(o.memoryMb != 0 ? o.memoryMb : 256));
  }
  std::string portSpec = o.port;
  const bool vdev = portSpec.rfind("net_", 0) == 0;
  if (vdev) {
    // af_packet takes its queue count as a device argument.
    if (portSpec.rfind("net_af_packet", 0) == 0 && portSpec.find("qpairs=") == std::string::npos) {
      portSpec += ",qpairs=" + std::to_string(queues);
    }
    args.push_back("--vdev=" + portSpec);
    args.push_back("--no-pci");
  } else {
    args.push_back("-a");
    args.push_back(portSpec);
  }
  for (const std::string& a : o.eal) args.push_back(a);
  if (!initEal(args, err)) return nullptr;

  std::unique_ptr<PacketEngine> engine(new PacketEngine(new Impl));
  Impl& e = *engine->impl_;
  e.opts = o;
  e.queues = queues;
  const std::string portName = portSpec.substr(0, portSpec.find(','));
  if (rte_eth_dev_get_port_by_name(portName.c_str(), &e.port) != 0) {
    err = "port " + portName + ": no such device (for a PCI NIC: bound to vfio-pci? see hw/README.md)";
    return nullptr;
  }
  rte_eth_dev_info info{};
  rte_eth_dev_info_get(e.port, &info);
  e.driver = info.driver_name != nullptr ? info.driver_name : "?";
  rte_eth_macaddr_get(e.port, &e.mac);

  // Mempools, one per NUMA socket that has a worker lcore.
  std::vector<rte_mempool*> poolPerQueue(queues, nullptr);
  std::map<int, uint32_t> lcoresPerSocket;
  for (uint32_t l : o.lcores) {
    if (!rte_lcore_is_enabled(l)) {
      err = "lcore " + std::to_string(l) + " is not enabled";
      return nullptr;
    }
    ++lcoresPerSocket[static_cast<int>(rte_lcore_to_socket_id(l))];
  }
  std::map<int, rte_mempool*> pools;
  for (const auto& [socket, count] : lcoresPerSocket) {
    // Per lcore: its own working set plus both rings' descriptors (port and TAP).
    const uint32_t n = count * (o.mbufsPerLcore + 2 * (o.rxDescriptors + o.txDescriptors) + kTxBufferSize * 2);
    const std::string name = "moat_mbuf_s" + std::to_string(socket);
    rte_mempool* mp = rte_pktmbuf_pool_create(name.c_str(), n, 256, 0, RTE_MBUF_DEFAULT_BUF_SIZE, socket);
    if (mp == nullptr) {
      err = "rte_pktmbuf_pool_create (" + std::to_string(n) + " mbufs on socket " + std::to_string(socket) +
            "): " + rte_strerror(rte_errno) + " (more memory: l4.dpdk.memoryMb, or hugepages)";
      return nullptr;
    }
    pools[socket] = mp;
  }
  for (uint32_t i = 0; i < queues; ++i) poolPerQueue[i] = pools[static_cast<int>(rte_lcore_to_socket_id(o.lcores[i]))];

  if (!setupPort(e.port, static_cast<uint16_t>(queues), o, poolPerQueue, true, &e.rss, &e.rxIpChecksum, &e.offloads,
                 &e.fallbacks, err)) {
    err = "port " + portName + ": " + err;
    return nullptr;
  }
  e.portStarted = true;
  e.fallbacks += "tx_checksums(outer headers written in software),";

  if (!o.exceptionTap.empty()) {
    const std::string tapSpec = "net_tap_moat,iface=" + o.exceptionTap + ",mac=" + macString(e.mac);
    int rc = rte_dev_probe(tapSpec.c_str());
    if (rc != 0) {
      err = "exception TAP " + o.exceptionTap + ": rte_dev_probe: " + rte_strerror(-rc);
      return nullptr;
    }
    if (rte_eth_dev_get_port_by_name("net_tap_moat", &e.tap) != 0) {
      err = "exception TAP " + o.exceptionTap + ": probed but not found";
      return nullptr;
    }
    bool rss = false, ck = false;
    std::string off, fb;
    if (!setupPort(e.tap, static_cast<uint16_t>(queues), o, poolPerQueue, false, &rss, &ck, &off, &fb, err)) {
      err = "exception TAP " + o.exceptionTap + ": " + err;
      return nullptr;
    }
    e.tapStarted = true;
  }

  for (uint32_t i = 0; i < queues; ++i) {
    auto lc = std::make_unique<Lcore>();
    lc->engine = &e;
    lc->index = i;
    lc->lcore = o.lcores[i];
    lc->queue = static_cast<uint16_t>(i);
    lc->pool = poolPerQueue[i];
    const std::string ringName = "moat_ctl_" + std::to_string(i);
    lc->control = rte_ring_create(ringName.c_str(), 64, static_cast<int>(rte_lcore_to_socket_id(lc->lcore)),
                                  RING_F_SP_ENQ | RING_F_SC_DEQ);
    if (lc->control == nullptr) {
      err = "rte_ring_create: " + std::string(rte_strerror(rte_errno));
      return nullptr;
    }
    lc->handler = makeHandler(i, *lc);
    if (!lc->handler) {
      err = "no handler for worker " + std::to_string(i);
      return nullptr;
    }
    e.lcores.push_back(std::move(lc));
  }
  return engine;
}

PacketEngine::PacketEngine(Impl* impl) : impl_(impl) {}

PacketEngine::~PacketEngine() {
  stop();
  Impl& e = *impl_;
  if (e.portStarted) {
    rte_eth_dev_stop(e.port);
    rte_eth_dev_close(e.port);
  }
  if (e.tapStarted) {
    rte_eth_dev_stop(e.tap);
    rte_eth_dev_close(e.tap);
  }
  for (auto& lc : e.lcores) {
    ControlMessage* msg = nullptr;
    while (lc->control != nullptr && rte_ring_dequeue(lc->control, reinterpret_cast<void**>(&msg)) == 0) delete msg;
    if (lc->control != nullptr) rte_ring_free(lc->control);
  }
  delete impl_;
}

void PacketEngine::start() {
  Impl& e = *impl_;
  if (e.running) return;
  e.stopFlag.store(false);
  for (auto& lc : e.lcores) rte_eal_remote_launch(lcoreMain, lc.get(), lc->lcore);
  e.running = true;
}

void PacketEngine::stop() {
  Impl& e = *impl_;
  if (!e.running) return;
  e.stopFlag.store(true);
  for (auto& lc : e.lcores) rte_eal_wait_lcore(lc->lcore);
  e.running = false;
}

bool PacketEngine::send(uint32_t worker, const ControlMessage& m) {
  Impl& e = *impl_;
  if (worker >= e.lcores.size()) return false;
  auto* msg = new ControlMessage(m);
  if (rte_ring_enqueue(e.lcores[worker]->control, msg) != 0) {
    delete msg;
    return false;
  }
  return true;
}

uint32_t PacketEngine::workers() const { return static_cast<uint32_t>(impl_->lcores.size()); }

PacketEngineCounters PacketEngine::counters(uint32_t worker) const {
  PacketEngineCounters out;
  if (worker >= impl_->lcores.size()) return out;
  const PublishedCounters& p = impl_->lcores[worker]->published;
#define MOAT_PE_LOAD(f, n) out.f = p.f.load(std::memory_order_relaxed);
  MOAT_PACKET_ENGINE_COUNTERS(MOAT_PE_LOAD)
#undef MOAT_PE_LOAD
  return out;
}

PortInfo PacketEngine::portInfo() const {
  const Impl& e = *impl_;
  PortInfo p;
  p.driver = e.driver;
  p.mac = macString(e.mac);
  rte_eth_link link{};
  if (rte_eth_link_get_nowait(e.port, &link) == 0) {
    p.linkUp = link.link_status == RTE_ETH_LINK_UP;
    p.linkSpeedMbps = link.link_speed == RTE_ETH_SPEED_NUM_UNKNOWN ? 0 : link.link_speed;
  }
  p.queues = e.queues;
  p.rss = e.rss;
  p.offloads = e.offloads;
  p.softwareFallbacks = e.fallbacks;
  p.exceptionTap = e.tap != UINT16_MAX;
  rte_eth_stats st{};
  if (rte_eth_stats_get(e.port, &st) == 0) {
    p.imissed = st.imissed;
    p.ierrors = st.ierrors;
  }
  return p;
}

}  // namespace moat::dataplane
