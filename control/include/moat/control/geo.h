// Country-of-address tables for geo blocking, built from the geo.sources of
// the config (ipdeny-style zone directories, MaxMind CSV, MaxMind DB files).
//
// GeoLoader parses the sources on the control thread (allocates, reads files,
// may take a second for a full-size database) and merges them into a GeoDb:
// flat, sorted, non-overlapping address ranges, each with a country. The GeoDb
// is immutable once built and reaches workers through the config snapshot; a
// lookup is a binary search that never allocates, locks or throws.
// GeoWatcher tells the control thread when a source file has changed.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "moat/control/config.h"

namespace moat::control {

// Packed ISO 3166-1 alpha-2 code: ('D' << 8) | 'E'. Always uppercase; 0 means
// unknown (no source lists the address).
using Country = uint16_t;

// 0 unless both are ASCII letters (any case).
inline Country packCountry(char a, char b) {
  auto up = [](char c) -> int {
    if (c >= 'a' && c <= 'z') return c - 'a' + 'A';
    return c >= 'A' && c <= 'Z' ? c : 0;
  };
  int x = up(a), y = up(b);
  return x != 0 && y != 0 ? static_cast<Country>((x << 8) | y) : Country{0};
}

// "DE"; "" for 0.
std::string countryString(Country c);

// The merged country table. Built by GeoLoader, then never changed; shared by
// workers through the snapshot (any thread may call the const members).
class GeoDb {
 public:
  GeoDb();  // empty: every lookup answers 0
  ~GeoDb();
  GeoDb(const GeoDb&) = delete;
  GeoDb& operator=(const GeoDb&) = delete;

  // Country of a raw network-order address, 0 if unknown. len 4 or 16 (any
  // other length answers 0); an IPv4-mapped IPv6 address (::ffff:a.b.c.d) is
  // looked up in the IPv4 table. Hot path: no allocation, no locks, no
  // syscall; a 64K-entry index on the top 16 address bits, then an O(log n)
  // binary search over the ranges starting in that slot (bench/geo_bench.cpp:
  // ~25 ns IPv4, ~60 ns IPv6 with a cold cache at 400k ranges).
  Country lookup(const uint8_t* addr, size_t len) const;

  size_t entries() const;  // ranges held (both families); adjacent ranges of one country are merged
  size_t bytes() const;    // heap memory of the tables

  // Every address of country `c` as the fewest CIDR prefixes ("10.0.0.0/8",
  // "2001:db8::/32"), IPv4 first, each family in address order. Adjacent
  // prefixes of one country come back aggregated ("10.0.0.0/25" and
  // "10.0.0.128/25" as "10.0.0.0/24"). Control side: allocates.
  std::vector<std::string> prefixesOf(Country c) const;

 private:
  struct Tables;  // geo.cpp
  friend class GeoLoader;
  std::unique_ptr<Tables> t_;
};

// One source as last loaded, for the status API.
struct GeoSourceStatus {
  std::string type;          // "zones", "maxmind_csv", "mmdb"
  std::string path;          // zones dir / mmdb file; maxmind_csv: its files, comma-separated
  int64_t loadedAtUnix = 0;  // last successful load; 0 = never
  size_t entries = 0;        // ranges of the data in force (after last successful load)
  std::string error;         // why the last attempt failed; "" when it succeeded
};

// Reads the sources and keeps the last good parse of each. Control thread
// only (not thread-safe); the GeoDb it hands out may go anywhere.
class GeoLoader {
 public:
  explicit GeoLoader(std::vector<GeoSourceConfig> sources);
  ~GeoLoader();
  GeoLoader(const GeoLoader&) = delete;
  GeoLoader& operator=(const GeoLoader&) = delete;

  // Re-reads every source (blocking file I/O). A source that fails (missing
  // or unreadable file, bad line, a zones directory with no <cc>.zone file)
  // keeps its previous good data in force (none on first load), counts in
  // loadErrors() and appends one error to *errors (may be null), the first
  // problem found: "FILE:LINE: message", e.g.
  //   /x/de.zone:3: "10.0.0.300/8" is not a CIDR prefix
  // or "FILE: message" when no line is at fault. Later sources win on overlap;
  // within one source, more specific prefixes win over less specific ones.
  // Returns the merged db, never null (also kept: db()).
  std::shared_ptr<const GeoDb> reload(std::vector<std::string>* errors);

  // The db of the last reload(); an empty one before the first. Never null.
  std::shared_ptr<const GeoDb> db() const;
  std::vector<GeoSourceStatus> status() const;  // one per source, config order
  uint64_t loadErrors() const;                  // failed source loads since construction

 private:
  struct State;  // geo.cpp
  std::unique_ptr<State> s_;
};

// inotify on the directories the sources live in: a zones directory itself
// (and its parent, so a directory swapped by rename is followed), the parent
// directory of every file (so that write-then-rename, cp and rm all show).
// Control thread only.
class GeoWatcher {
 public:
  explicit GeoWatcher(const std::vector<GeoSourceConfig>& sources);  // fd -1 when no sources
  ~GeoWatcher();
  GeoWatcher(const GeoWatcher&) = delete;
  GeoWatcher& operator=(const GeoWatcher&) = delete;

  // Non-blocking inotify descriptor to poll for readability; -1 when there
  // is nothing to watch or inotify failed. Owned: closed by the destructor.
  int fd() const;

  // Drains every queued event without blocking; true if any concerns a source
  // file (a <cc>.zone in a zones directory, a configured file, a watched
  // directory itself). The caller then waits ~200 ms for the writer to finish
  // (more events may come; drain them too) and calls GeoLoader::reload().
  bool pending();

 private:
  struct Watches;  // geo.cpp
  int fd_ = -1;
  std::unique_ptr<Watches> w_;
};

}  // namespace moat::control
