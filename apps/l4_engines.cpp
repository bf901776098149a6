#include "l4_engines.h"

#include <openssl/rand.h>
#include <pthread.h>
#include <sched.h>

#include <cstring>

namespace moat::app {

namespace {

bool needsL4(const control::Config& c) {
  return c.l4.engine == control::L4Engine::kDpdk || !c.l4.services.empty();
}

uint64_t randomSeed() {
  uint64_t s = 0;
  RAND_bytes(reinterpret_cast<unsigned char*>(&s), sizeof(s));
  return s;
}

// rte_lpm / rte_lpm6 as the processor's PrefixLookup.
class LpmLookup final : public l4::PrefixLookup {
 public:
  explicit LpmLookup(std::unique_ptr<dataplane::LpmTable> t) : t_(std::move(t)) {}
  uint32_t match4(const uint8_t addr[4]) const override { return t_->match4(addr); }
  uint32_t match6(const uint8_t addr[16]) const override { return t_->match6(addr); }

 private:
  std::unique_ptr<dataplane::LpmTable> t_;
};

bool parseMac(const std::string& s, uint8_t out[6]) {
  unsigned v[6];
  if (std::sscanf(s.c_str(), "%x:%x:%x:%x:%x:%x", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5]) != 6) return false;
  for (int i = 0; i < 6; ++i) out[i] = static_cast<uint8_t>(v[i]);
  return true;
}

l4::ProcessorOptions processorOptions(const control::Config& c) {
  l4::ProcessorOptions o;
  o.maxFlows = c.l4.flows.maxPerWorker;
  o.timeouts.tcpSynNs = uint64_t{c.l4.flows.synTimeoutS} * 1000000000u;
  o.timeouts.tcpEstablishedNs = uint64_t{c.l4.flows.establishedTimeoutS} * 1000000000u;
  o.timeouts.tcpClosingNs = uint64_t{c.l4.flows.closingTimeoutS} * 1000000000u;
  o.timeouts.tcpClosedNs = std::min<uint64_t>(o.timeouts.tcpClosingNs, 2000000000u);
  o.timeouts.udpNs = uint64_t{c.l4.flows.udpTimeoutS} * 1000000000u;
  if (c.l4.synLimit.perSecond != 0) {
    o.synLimit = true;
    o.syn.ratePerSec = c.l4.synLimit.perSecond;
    o.syn.burst = c.l4.synLimit.burst != 0 ? c.l4.synLimit.burst : c.l4.synLimit.perSecond;
    o.syn.seed = randomSeed();
  }
  o.seed = randomSeed();
  return o;
}

}  // namespace

size_t l4SlotCount(const control::Config& c, size_t nworkers) {
  if (!needsL4(c)) return 0;
  return c.l4.engine == control::L4Engine::kDpdk ? c.l4.dpdk.lcores.size() : nworkers;
}

void applyStaticNeighbors(Appliance& a, const control::Config& c) {
  if (!a.neighbors) return;
  for (const control::L4NeighborConfig& n : c.l4.neighbors) {
    l4::IpAddress ip;
    uint8_t mac[6];
    if (!l4::IpAddress::parse(n.address, ip) || !parseMac(n.mac, mac)) continue;  // validated
    uint8_t ip16[16] = {};
    std::memcpy(ip16, ip.bytes, ip.len);
    a.neighbors->setStatic(ip16, ip.len == 4 ? 4 : 6, mac);
  }
}

bool prepareL4(Appliance& a, const control::Config& c, size_t firstSlot, std::string& err) {
  if (!needsL4(c) || c.l4.engine != control::L4Engine::kDpdk) return true;
  const control::DpdkConfig& d = c.l4.dpdk;
  dataplane::PacketEngineOptions o;
  o.lcores = d.lcores;
  o.mainLcore = d.mainLcore;
  o.noHuge = d.noHuge;
  o.memoryMb = d.memoryMb;
  o.port = d.port;
  o.eal = d.eal;
  o.exceptionTap = d.exceptionTap;
  o.rxDescriptors = d.rxDescriptors;
  o.txDescriptors = d.txDescriptors;
  o.mbufsPerLcore = d.mbufsPerLcore;
  o.burst = d.burst;
  o.txDrainUs = d.txDrainUs;
  a.neighbors = std::make_unique<l4::NeighborTable>(4096);
  applyStaticNeighbors(a, c);
  const l4::ProcessorOptions po = processorOptions(c);
  control::SnapshotPublisher* pub = &a.publisher();
  l4::NeighborTable* nb = a.neighbors.get();
  std::vector<l4::Processor*>* procs = &a.processors;
  try {
    a.packetEngine = dataplane::PacketEngine::create(
        o,
        [&](uint32_t worker, dataplane::LcoreContext& ctx) -> std::unique_ptr<dataplane::BurstHandler> {
          const size_t slot = firstSlot + worker;
          l4::ProcessorOptions wo = po;
          wo.seed ^= worker * 0x9e3779b97f4a7c15ULL;
          auto p = std::make_unique<l4::Processor>(
              wo,
              [pub, slot](uint64_t* version) {
                const control::Snapshot* s = pub->acquire(slot);
                *version = s->version;
                return &s->l4;
              },
              nb, &ctx);
          procs->push_back(p.get());
          return p;
        },
        err);
  } catch (const std::exception& e) {
    err = std::string("l4 flow tables: ") + e.what();
    return false;
  }
  if (!a.packetEngine) return false;
  a.makeDenyLookup = [](const std::vector<l4::DenyPrefix>& prefixes) -> std::shared_ptr<const l4::PrefixLookup> {
    std::vector<dataplane::LpmPrefix> lp;
    lp.reserve(prefixes.size());
    for (const l4::DenyPrefix& p : prefixes) {
      dataplane::LpmPrefix x{};
      std::memcpy(x.addr, p.addr, 16);
      x.ipVersion = p.ipVersion;
      x.length = p.length;
      x.value = p.country != 0 ? p.country : l4::PrefixLookup::kDenyCidr;
      lp.push_back(x);
    }
    std::string e;
    auto t = dataplane::LpmTable::create(lp, e);
    if (!t) throw std::runtime_error("l4 deny tables: " + e);
    return std::make_shared<LpmLookup>(std::move(t));
  };
  return true;
}

bool startL4(Appliance& a, const control::Config& c, size_t firstSlot, size_t nworkers,
             const std::atomic<bool>* stop, std::vector<std::thread>& threads, std::string& err) {
  if (!needsL4(c)) return true;
  if (c.l4.engine == control::L4Engine::kDpdk) {
    a.packetEngine->start();
    const dataplane::PortInfo pi = a.packetEngine->portInfo();
    logLine("info", "l4: dpdk port " + c.l4.dpdk.port + " (" + pi.driver + ", " + pi.mac + ", link " +
                        (pi.linkUp ? "up" : "down") + ", " + std::to_string(pi.queues) + " queue(s), rss " +
                        (pi.rss ? "symmetric" : "off") + ", offloads [" + pi.offloads + "], software [" +
                        pi.softwareFallbacks + "]" + (pi.exceptionTap ? ", exception tap " + c.l4.dpdk.exceptionTap : "") +
                        ") on " + std::to_string(a.packetEngine->workers()) + " lcore(s)");
    return true;
  }
  control::SnapshotPublisher* pub = &a.publisher();
  for (size_t i = 0; i < nworkers; ++i) {
    const size_t slot = firstSlot + i;
    l4::SockWorker::Options o;
    o.index = i;
    o.acquire = [pub, slot] { return &pub->acquire(slot)->l4; };
    o.registerWakeFd = [pub, slot](int fd) { pub->registerWakeFd(slot, fd); };
    o.stop = stop;
    o.udpIdleMs = c.l4.flows.udpTimeoutS * 1000;
    o.connectTimeoutMs = c.timeouts.connectMs;
    auto w = l4::SockWorker::create(o, err);
    if (!w) {
      err = "l4 socket worker " + std::to_string(i) + ": " + err;
      return false;
    }
    a.sockWorkers.push_back(std::move(w));
  }
  const unsigned ncpu = std::max(1u, std::thread::hardware_concurrency());
  for (size_t i = 0; i < nworkers; ++i) {
    l4::SockWorker* w = a.sockWorkers[i].get();
    threads.emplace_back([w, i, ncpu, pub, slot = firstSlot + i] {
      cpu_set_t set;
      CPU_ZERO(&set);
      CPU_SET(static_cast<int>(i % ncpu), &set);
      pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
      const std::string name = "moat-l4-" + std::to_string(i);
      pthread_setname_np(pthread_self(), name.c_str());
      w->run(5000);
      pub->goOffline(slot);
    });
  }
  for (const auto& s : c.l4.services) {
    logLine("info", std::string("l4: ") + control::toString(s.protocol) + " service " + s.name + " -> pool " + s.pool +
                        " (uring proxy)");
  }
  return true;
}

void stopL4(Appliance& a, size_t firstSlot) {
  if (a.packetEngine) {
    a.packetEngine->stop();
    for (size_t i = 0; i < a.packetEngine->workers(); ++i) a.publisher().goOffline(firstSlot + i);
  }
}

l4::ProcessorReport l4PacketReport(const Appliance& a) {
  l4::ProcessorReport sum;
  for (const l4::Processor* p : a.processors) {
    l4::ProcessorReport r = p->report();
    sum.counters += r.counters;
    sum.flows.inserts += r.flows.inserts;
    sum.flows.hits += r.flows.hits;
    sum.flows.misses += r.flows.misses;
    sum.flows.evicted += r.flows.evicted;
    sum.flows.expired += r.flows.expired;
    sum.flows.removed += r.flows.removed;
    sum.flows.size += r.flows.size;
    sum.flows.capacity += r.flows.capacity;
    sum.syn.allowed += r.syn.allowed;
    sum.syn.limited += r.syn.limited;
  }
  return sum;
}

}  // namespace moat::app
