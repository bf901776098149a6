// Starting and stopping moatd's L4 engines (l4.engine): the DPDK packet
// engine with one l4::Processor per lcore, or io_uring socket workers
// (l4::SockWorker) on threads. Control thread only.
//
// Snapshot slots: both engines read the config snapshot through the
// appliance's publisher, in slots [firstSlot, firstSlot + l4SlotCount).
#pragma once

#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "appliance.h"

namespace moat::app {

// How many publisher slots the L4 engines of `c` need (0 = no L4).
size_t l4SlotCount(const control::Config& c, size_t nworkers);

// Before the first snapshot is published: on the DPDK engine, initialises
// the EAL, sets up the port, the TAP and the per-lcore processors, and
// installs the LPM builder (appliance.makeDenyLookup). Nothing to do for
// the socket engine. False with err on failure.
bool prepareL4(Appliance& a, const control::Config& c, size_t firstSlot, std::string& err);

// After the first snapshot: launches the lcores, or creates the socket
// workers (listening on every proxied VIP) and their threads.
bool startL4(Appliance& a, const control::Config& c, size_t firstSlot, size_t nworkers,
             const std::atomic<bool>* stop, std::vector<std::thread>& threads, std::string& err);

// After the stop flag is set (socket workers leave on it): stops the lcores.
void stopL4(Appliance& a, size_t firstSlot);

// Static next-hop MACs of the config into the neighbour table (start and
// every applied config).
void applyStaticNeighbors(Appliance& a, const control::Config& c);

// Sum of every lcore's last published report.
l4::ProcessorReport l4PacketReport(const Appliance& a);

}  // namespace moat::app
