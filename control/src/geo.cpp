#include "moat/control/geo.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <maxminddb.h>
#include <strings.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <ctime>
#include <iterator>
#include <string_view>
#include <unordered_map>
#include <utility>

namespace moat::control {

namespace {

// GCC/Clang 128-bit integer: IPv6 arithmetic in one value. __extension__
// keeps -Wpedantic quiet.
__extension__ using U128 = unsigned __int128;

template <class U>
constexpr int kBits = sizeof(U) * 8;

template <class U>
struct Prefix {
  U addr;
  uint8_t len;
  Country c;
};

// [first, last], inclusive: the range ending at the top address needs no
// wider type.
template <class U>
struct Range {
  U first, last;
  Country c;
};

template <class U>
U hostMask(unsigned len) {
  return len >= static_cast<unsigned>(kBits<U>) ? U(0) : static_cast<U>(~U(0) >> len);
}

template <class U>
int ctz(U v) {
  if constexpr (sizeof(U) == 4) {
    return v == 0 ? 32 : __builtin_ctz(v);
  } else {
    uint64_t lo = static_cast<uint64_t>(v), hi = static_cast<uint64_t>(v >> 64);
    if (lo != 0) return __builtin_ctzll(lo);
    return hi != 0 ? 64 + __builtin_ctzll(hi) : 128;
  }
}

// One source's prefixes as parsed, before flattening.
struct Parsed {
  std::vector<Prefix<uint32_t>> v4;
  std::vector<Prefix<U128>> v6;
};

// One source's (or the merge's) flat ranges: sorted, non-overlapping.
struct Flat {
  std::vector<Range<uint32_t>> v4;
  std::vector<Range<U128>> v6;
  size_t size() const { return v4.size() + v6.size(); }
};

constexpr U128 kMappedPrefix = static_cast<U128>(0xffff) << 32;  // ::ffff:0:0/96

// Adds an IPv6 prefix; one inside ::ffff:0:0/96 is stored as the IPv4 prefix
// it aliases, since lookups of IPv4-mapped addresses use the IPv4 table.
void addV6(Parsed& p, U128 addr, unsigned len, Country c) {
  if (len >= 96 && (addr >> 32) == (kMappedPrefix >> 32)) {
    p.v4.push_back({static_cast<uint32_t>(addr), static_cast<uint8_t>(len - 96), c});
  } else {
    p.v6.push_back({addr, static_cast<uint8_t>(len), c});
  }
}

uint32_t v4Word(const uint8_t* b) {
  return (static_cast<uint32_t>(b[0]) << 24) | (static_cast<uint32_t>(b[1]) << 16) |
         (static_cast<uint32_t>(b[2]) << 8) | b[3];
}

U128 v6Word(const uint8_t* b) {
  U128 v = 0;
  for (int i = 0; i < 16; ++i) v = (v << 8) | b[i];
  return v;
}

// Parses "a.b.c.d/n", "x::/n" or a bare address (a host prefix) into `p`.
// "" on success, else why not.
std::string parsePrefix(std::string_view text, Country c, Parsed& p) {
  std::string_view addr = text;
  int len = -1;
  if (size_t slash = text.find('/'); slash != std::string_view::npos) {
    addr = text.substr(0, slash);
    std::string_view ls = text.substr(slash + 1);
    unsigned u = 0;
    auto [end, ec] = std::from_chars(ls.data(), ls.data() + ls.size(), u);
    len = ls.empty() || ec != std::errc() || end != ls.data() + ls.size() || u > 128
              ? 1000
              : static_cast<int>(u);
  }
  char buf[INET6_ADDRSTRLEN + 1];
  uint8_t raw[16];
  bool v6 = addr.find(':') != std::string_view::npos;
  bool ok = !addr.empty() && addr.size() < sizeof(buf);
  if (ok) {
    std::memcpy(buf, addr.data(), addr.size());
    buf[addr.size()] = 0;
    ok = inet_pton(v6 ? AF_INET6 : AF_INET, buf, raw) == 1;
  }
  int maxLen = v6 ? 128 : 32;
  if (len < 0) len = maxLen;
  if (!ok || len > maxLen) return "\"" + std::string(text) + "\" is not a CIDR prefix";
  auto hostBits = [&] {
    return "\"" + std::string(text) + "\" has bits set beyond the /" + std::to_string(len) +
           " prefix";
  };
  if (!v6) {
    uint32_t w = v4Word(raw);
    if ((w & hostMask<uint32_t>(static_cast<unsigned>(len))) != 0) return hostBits();
    p.v4.push_back({w, static_cast<uint8_t>(len), c});
  } else {
    U128 w = v6Word(raw);
    if ((w & hostMask<U128>(static_cast<unsigned>(len))) != 0) return hostBits();
    addV6(p, w, static_cast<unsigned>(len), c);
  }
  return "";
}

// Appends [first, last] of country c, joining it to the previous range when
// they touch and agree. Ranges arrive in address order.
template <class U>
void append(std::vector<Range<U>>& out, U first, U last, Country c) {
  if (c == 0) return;
  if (!out.empty() && out.back().c == c && out.back().last != static_cast<U>(~U(0)) &&
      out.back().last + 1 == first) {
    out.back().last = last;
  } else {
    out.push_back({first, last, c});
  }
}

// Prefixes of one source -> flat ranges in which a more specific prefix wins
// over the ones containing it; of equal prefixes, the last one listed wins.
// Prefixes nest or are disjoint, so one sweep with a stack of the open
// (containing) prefixes paints every address once. O(n log n).
template <class U>
std::vector<Range<U>> flatten(std::vector<Prefix<U>> prefixes) {
  std::stable_sort(prefixes.begin(), prefixes.end(), [](const Prefix<U>& a, const Prefix<U>& b) {
    return a.addr != b.addr ? a.addr < b.addr : a.len < b.len;
  });
  struct Open {
    U last;
    Country c;
  };
  std::vector<Range<U>> out;
  std::vector<Open> open;
  U cursor = 0;       // first address not painted yet
  bool done = false;  // the top address has been painted: cursor is meaningless
  auto closeTop = [&] {
    Open o = open.back();
    open.pop_back();
    if (done || cursor > o.last) return;
    append(out, cursor, o.last, o.c);
    if (o.last == static_cast<U>(~U(0))) {
      done = true;
    } else {
      cursor = o.last + 1;
    }
  };
  for (const Prefix<U>& p : prefixes) {
    while (!open.empty() && open.back().last < p.addr) closeTop();
    if (!open.empty() && cursor < p.addr)
      append(out, cursor, static_cast<U>(p.addr - 1), open.back().c);
    cursor = p.addr;
    open.push_back({static_cast<U>(p.addr | hostMask<U>(p.len)), p.c});
  }
  while (!open.empty()) closeTop();
  return out;
}

// `newer` painted over `older`: both flat; the result is flat. O(n).
template <class U>
std::vector<Range<U>> overlay(const std::vector<Range<U>>& older,
                              const std::vector<Range<U>>& newer) {
  if (older.empty()) return newer;
  if (newer.empty()) return older;
  std::vector<Range<U>> pieces;  // the parts of `older` that `newer` leaves uncovered
  size_t k = 0;
  for (const Range<U>& a : older) {
    while (k < newer.size() && newer[k].last < a.first) ++k;
    U cur = a.first;
    bool left = true;  // [cur, a.last] still uncovered
    for (size_t j = k; j < newer.size() && newer[j].first <= a.last; ++j) {
      if (newer[j].first > cur) pieces.push_back({cur, static_cast<U>(newer[j].first - 1), a.c});
      if (newer[j].last >= a.last) {
        left = false;
        break;
      }
      cur = newer[j].last + 1;
    }
    if (left) pieces.push_back({cur, a.last, a.c});
  }
  std::vector<Range<U>> merged;
  merged.reserve(pieces.size() + newer.size());
  std::merge(pieces.begin(), pieces.end(), newer.begin(), newer.end(), std::back_inserter(merged),
             [](const Range<U>& x, const Range<U>& y) { return x.first < y.first; });
  std::vector<Range<U>> out;
  out.reserve(merged.size());
  for (const Range<U>& r : merged) append(out, r.first, r.last, r.c);
  return out;
}

// ---- files ----------------------------------------------------------------

std::string errnoText(int e) { return std::strerror(e); }

// Whole file into `out`; "" on success, else "FILE: why".
std::string readFile(const std::string& path, std::string& out) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return path + ": cannot open: " + errnoText(errno);
  out.clear();
  struct stat st {};
  if (::fstat(fd, &st) == 0 && st.st_size > 0) out.reserve(static_cast<size_t>(st.st_size));
  char buf[65536];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n > 0) {
      out.append(buf, static_cast<size_t>(n));
    } else if (n == 0) {
      break;
    } else if (errno != EINTR) {
      int e = errno;
      ::close(fd);
      return path + ": cannot read: " + errnoText(e);
    }
  }
  ::close(fd);
  return "";
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t' || s.front() == '\r'))
    s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r'))
    s.remove_suffix(1);
  return s;
}

// Calls fn(lineNumber, line) for every line (without its '\n'); stops at the
// first non-empty string fn returns and gives it back.
template <class Fn>
std::string forEachLine(std::string_view text, Fn fn) {
  if (text.substr(0, 3) == "\xEF\xBB\xBF") text.remove_prefix(3);  // UTF-8 BOM
  size_t lineNo = 0;
  while (!text.empty()) {
    size_t nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    text.remove_prefix(nl == std::string_view::npos ? text.size() : nl + 1);
    std::string err = fn(++lineNo, line);
    if (!err.empty()) return err;
  }
  return "";
}

std::string at(const std::string& path, size_t line, const std::string& msg) {
  return path + ":" + std::to_string(line) + ": " + msg;
}

// "de.zone", "DE.Zone": the country; else 0.
Country zoneFileCountry(std::string_view name) {
  if (name.size() != 7 || strncasecmp(name.data() + 2, ".zone", 5) != 0) return 0;
  return packCountry(name[0], name[1]);
}

// ipdeny layout: a directory of <cc>.zone files, one prefix a line.
std::string loadZones(const std::string& dirPath, Parsed& p) {
  DIR* d = ::opendir(dirPath.c_str());
  if (d == nullptr) return dirPath + ": cannot open directory: " + errnoText(errno);
  std::vector<std::string> names;
  while (const dirent* e = ::readdir(d)) {
    if (zoneFileCountry(e->d_name) != 0) names.emplace_back(e->d_name);
  }
  ::closedir(d);
  if (names.empty()) return dirPath + ": no <cc>.zone files";
  std::sort(names.begin(), names.end());  // a prefix listed in two files: the later name wins
  std::string text;
  for (const std::string& name : names) {
    std::string path = dirPath + (dirPath.ends_with('/') ? "" : "/") + name;
    if (std::string err = readFile(path, text); !err.empty()) return err;
    Country c = zoneFileCountry(name);
    std::string err = forEachLine(text, [&](size_t lineNo, std::string_view line) -> std::string {
      if (size_t hash = line.find('#'); hash != std::string_view::npos) line = line.substr(0, hash);
      line = trim(line);
      if (line.empty()) return "";
      std::string e = parsePrefix(line, c, p);
      return e.empty() ? e : at(path, lineNo, e);
    });
    if (!err.empty()) return err;
  }
  return "";
}

// One CSV record from one line (RFC 4180 quoting: "a,b" and "say ""hi""";
// a quoted field cannot span lines). "" on success.
std::string splitCsv(std::string_view line, std::vector<std::string>& fields) {
  fields.clear();
  size_t i = 0;
  for (;;) {
    std::string& f = fields.emplace_back();
    if (i < line.size() && line[i] == '"') {
      ++i;
      for (;;) {
        if (i >= line.size()) return "unterminated quoted field";
        if (line[i] == '"') {
          if (i + 1 < line.size() && line[i + 1] == '"') {
            f.push_back('"');
            i += 2;
            continue;
          }
          ++i;
          break;
        }
        f.push_back(line[i++]);
      }
      if (i < line.size() && line[i] != ',') return "unexpected text after a quoted field";
    } else {
      size_t comma = line.find(',', i);
      size_t end = comma == std::string_view::npos ? line.size() : comma;
      f.assign(trim(line.substr(i, end - i)));
      i = end;
    }
    if (i >= line.size()) return "";
    ++i;  // the comma
  }
}

// A CSV file with a header line: calls row(lineNo, fields) for every record
// after it, with `cols` set to the index of each wanted column.
template <class Fn>
std::string forEachCsvRow(const std::string& path, const std::vector<std::string_view>& wanted,
                          std::vector<size_t>& cols, Fn row) {
  std::string text;
  if (std::string err = readFile(path, text); !err.empty()) return err;
  std::vector<std::string> fields;
  bool header = true;
  std::string err = forEachLine(text, [&](size_t lineNo, std::string_view line) -> std::string {
    if (trim(line).empty()) return "";
    if (std::string e = splitCsv(line, fields); !e.empty()) return at(path, lineNo, e);
    if (header) {
      header = false;
      cols.clear();
      for (std::string_view w : wanted) {
        auto it = std::find(fields.begin(), fields.end(), w);
        if (it == fields.end())
          return at(path, lineNo, "no \"" + std::string(w) + "\" column in the header");
        cols.push_back(static_cast<size_t>(it - fields.begin()));
      }
      return "";
    }
    for (size_t c : cols) {
      if (c >= fields.size()) {
        return at(path, lineNo,
                  "expected at least " + std::to_string(c + 1) + " fields, found " +
                      std::to_string(fields.size()));
      }
    }
    std::string e = row(fields);
    return e.empty() ? e : at(path, lineNo, e);
  });
  if (err.empty() && header) return path + ": empty file (no header line)";
  return err;
}

// A geoname id field: "" (none) or digits. "" on success.
std::string parseGeonameId(const std::string& f, uint64_t& id) {
  id = 0;
  if (f.empty()) return "";
  auto [end, ec] = std::from_chars(f.data(), f.data() + f.size(), id);
  if (ec != std::errc() || end != f.data() + f.size()) return "\"" + f + "\" is not a geoname id";
  return "";
}

std::string loadMaxmindCsv(const GeoSourceConfig& cfg, Parsed& p) {
  if (cfg.locations.empty()) return "maxmind_csv source: no locations file";
  std::unordered_map<uint64_t, Country> countryOf;
  std::vector<size_t> cols;
  std::string err = forEachCsvRow(cfg.locations, {"geoname_id", "country_iso_code"}, cols,
                                  [&](const std::vector<std::string>& f) -> std::string {
                                    uint64_t id;
                                    if (std::string e = parseGeonameId(f[cols[0]], id); !e.empty())
                                      return e;
                                    const std::string& iso = f[cols[1]];
                                    if (iso.empty() || id == 0)
                                      return "";  // a continent: no country
                                    Country c =
                                        iso.size() == 2 ? packCountry(iso[0], iso[1]) : Country{0};
                                    if (c == 0) return "\"" + iso + "\" is not a country code";
                                    countryOf[id] = c;
                                    return "";
                                  });
  if (!err.empty()) return err;
  for (const std::string* blocks : {&cfg.blocksIpv4, &cfg.blocksIpv6}) {
    if (blocks->empty()) continue;
    err = forEachCsvRow(*blocks, {"network", "geoname_id", "registered_country_geoname_id"}, cols,
                        [&](const std::vector<std::string>& f) -> std::string {
                          uint64_t id, registered;
                          if (std::string e = parseGeonameId(f[cols[1]], id); !e.empty()) return e;
                          if (std::string e = parseGeonameId(f[cols[2]], registered); !e.empty())
                            return e;
                          Country c = 0;
                          if (auto it = countryOf.find(id); id != 0 && it != countryOf.end())
                            c = it->second;
                          if (auto it = countryOf.find(registered);
                              c == 0 && registered != 0 && it != countryOf.end()) {
                            c = it->second;
                          }
                          if (c == 0) return "";  // anonymous proxy, satellite: no country
                          return parsePrefix(f[cols[0]], c, p);
                        });
    if (!err.empty()) return err;
  }
  if (cfg.blocksIpv4.empty() && cfg.blocksIpv6.empty())
    return cfg.locations + ": maxmind_csv source has no blocks file";
  return "";
}

// Country of an MMDB data record: country.iso_code, else
// registered_country.iso_code; 0 if neither. "" on success.
std::string mmdbCountry(MMDB_entry_s entry, Country& c) {
  c = 0;
  for (const char* key : {"country", "registered_country"}) {
    MMDB_entry_data_s d{};
    int s = MMDB_get_value(&entry, &d, key, "iso_code", static_cast<const char*>(nullptr));
    if (s == MMDB_LOOKUP_PATH_DOES_NOT_MATCH_DATA_ERROR || s == MMDB_INVALID_LOOKUP_PATH_ERROR)
      continue;
    if (s != MMDB_SUCCESS) return std::string("bad data record: ") + MMDB_strerror(s);
    if (d.has_data && d.type == MMDB_DATA_TYPE_UTF8_STRING && d.data_size == 2) {
      c = packCountry(d.utf8_string[0], d.utf8_string[1]);
      if (c != 0) return "";
    }
  }
  return "";
}

// Walks the whole search tree of a MaxMind DB. In an IPv6 tree the IPv4
// space is the subtree at ::/96; the aliases MaxMind's writer adds for it
// (::ffff:0:0/96, 2001::/32, 2002::/16 point at the same node) are skipped so
// the IPv4 data is read once, into the IPv4 table.
std::string loadMmdb(const std::string& path, Parsed& p) {
  MMDB_s db{};
  int s = MMDB_open(path.c_str(), MMDB_MODE_MMAP, &db);
  if (s != MMDB_SUCCESS) {
    std::string why = MMDB_strerror(s);
    if (s == MMDB_IO_ERROR || s == MMDB_FILE_OPEN_ERROR)
      why += std::string(": ") + errnoText(errno);
    return path + ": " + why;
  }
  struct Closer {
    MMDB_s* db;
    ~Closer() { MMDB_close(db); }
  } closer{&db};
  const uint32_t nodeCount = db.metadata.node_count;
  const bool v6 = db.metadata.ip_version == 6;
  const unsigned depth = v6 ? 128 : 32;
  auto fail = [&](const std::string& m) { return path + ": " + m; };
  if (!v6 && db.metadata.ip_version != 4) return fail("ip_version is neither 4 nor 6");

  // The IPv4 subtree: follow 96 zero bits from the root.
  constexpr uint64_t kNone = ~0ull;
  uint64_t ipv4Start = kNone;
  if (v6) {
    uint64_t node = 0;
    unsigned d = 0;
    for (; d < 96 && node < nodeCount; ++d) {
      MMDB_search_node_s n{};
      if (MMDB_read_node(&db, static_cast<uint32_t>(node), &n) != MMDB_SUCCESS) break;
      if (n.left_record_type != MMDB_RECORD_TYPE_SEARCH_NODE) break;
      node = n.left_record;
    }
    if (d == 96) ipv4Start = node;
  }

  std::unordered_map<uint32_t, Country> byOffset;  // many leaves share one record
  auto emit = [&](U128 addr, unsigned len, MMDB_entry_s entry) -> std::string {
    Country c;
    if (auto it = byOffset.find(entry.offset); it != byOffset.end()) {
      c = it->second;
    } else {
      if (std::string e = mmdbCountry(entry, c); !e.empty()) return e;
      byOffset.emplace(entry.offset, c);
    }
    if (c == 0) return "";
    if (!v6) {
      p.v4.push_back({static_cast<uint32_t>(addr), static_cast<uint8_t>(len), c});
    } else if ((addr >> 32) == 0 && len >= 96) {  // inside ::/96: IPv4
      p.v4.push_back({static_cast<uint32_t>(addr), static_cast<uint8_t>(len - 96), c});
    } else {
      if (len < 96 && addr == 0) {
        p.v4.push_back({0, 0, c});  // covers ::/96, so every IPv4 address
      }
      addV6(p, addr, len, c);
    }
    return "";
  };

  struct Item {
    uint32_t node;
    unsigned depth;
    U128 path;
  };
  std::vector<Item> stack{{0, 0, 0}};
  // A well-formed tree visits each node once; shared subtrees other than the
  // skipped aliases could make the walk exponential, so stop early.
  uint64_t visits = 0, maxVisits = 2ull * nodeCount + 16;
  while (!stack.empty()) {
    Item it = stack.back();
    stack.pop_back();
    if (++visits > maxVisits) return fail("search tree is not a tree (shared subtrees)");
    MMDB_search_node_s n{};
    if (int rs = MMDB_read_node(&db, it.node, &n); rs != MMDB_SUCCESS) {
      return fail("node " + std::to_string(it.node) + ": " + MMDB_strerror(rs));
    }
    for (int bit = 1; bit >= 0; --bit) {  // right pushed first: left is walked first
      uint64_t rec = bit ? n.right_record : n.left_record;
      uint8_t type = bit ? n.right_record_type : n.left_record_type;
      unsigned childDepth = it.depth + 1;
      U128 childPath = it.path | (static_cast<U128>(bit) << (depth - childDepth));
      switch (type) {
        case MMDB_RECORD_TYPE_EMPTY:
          break;
        case MMDB_RECORD_TYPE_SEARCH_NODE:
          if (childDepth >= depth)
            return fail("search tree deeper than " + std::to_string(depth) + " bits");
          if (rec == ipv4Start && !(childDepth == 96 && childPath == 0)) break;  // an alias
          stack.push_back({static_cast<uint32_t>(rec), childDepth, childPath});
          break;
        case MMDB_RECORD_TYPE_DATA:
          if (std::string e =
                  emit(childPath, childDepth, bit ? n.right_record_entry : n.left_record_entry);
              !e.empty()) {
            return fail(e);
          }
          break;
        default:
          return fail("corrupt search tree at node " + std::to_string(it.node));
      }
    }
  }
  return "";
}

std::string loadSource(const GeoSourceConfig& cfg, Parsed& p) {
  switch (cfg.type) {
    case GeoSourceType::kZones:
      return loadZones(cfg.path, p);
    case GeoSourceType::kMaxmindCsv:
      return loadMaxmindCsv(cfg, p);
    case GeoSourceType::kMmdb:
      return loadMmdb(cfg.path, p);
  }
  return "unknown geo source type";
}

std::string statusPath(const GeoSourceConfig& cfg) {
  if (cfg.type != GeoSourceType::kMaxmindCsv) return cfg.path;
  std::string out;
  for (const std::string* f : {&cfg.blocksIpv4, &cfg.blocksIpv6, &cfg.locations}) {
    if (f->empty()) continue;
    if (!out.empty()) out += ",";
    out += *f;
  }
  return out;
}

template <class U>
void appendCidrs(U first, U last, std::vector<std::string>& out) {
  for (;;) {
    unsigned len = static_cast<unsigned>(kBits<U> - ctz(first));
    while ((first | hostMask<U>(len)) > last) ++len;
    uint8_t b[16];
    char text[INET6_ADDRSTRLEN];
    if constexpr (sizeof(U) == 4) {
      uint32_t be = htonl(first);
      std::memcpy(b, &be, 4);
      inet_ntop(AF_INET, b, text, sizeof text);
    } else {
      for (int i = 0; i < 16; ++i) b[i] = static_cast<uint8_t>(first >> (8 * (15 - i)));
      inet_ntop(AF_INET6, b, text, sizeof text);
    }
    out.push_back(std::string(text) + "/" + std::to_string(len));
    U end = first | hostMask<U>(len);
    if (end >= last) return;
    first = end + 1;
  }
}

}  // namespace

std::string countryString(Country c) {
  if (c == 0) return "";
  return std::string{static_cast<char>(c >> 8), static_cast<char>(c & 0xff)};
}

// ---- GeoDb ----------------------------------------------------------------

// Parallel arrays: the searched starts are dense (4 or 16 bytes a range), the
// ends and countries are read once per lookup. index[k] is the first range
// starting at or above k << (bits - 16), for k in [0, 65536]: a lookup
// searches only the ranges starting in its address's top-16-bit bucket (and
// the one before), ~6 entries instead of ~400k. 256 KiB a family.
struct GeoDb::Tables {
  std::vector<uint32_t> v4First, v4Last;
  std::vector<Country> v4Country;
  std::vector<uint32_t> v4Index;
  std::vector<U128> v6First, v6Last;
  std::vector<Country> v6Country;
  std::vector<uint32_t> v6Index;
};

namespace {

// Index of the last element <= key, or -1. Branch-free halving: the loop
// runs log2(n) times whatever the data, and compiles to cmov.
constexpr size_t kIndexSize = 65537;

template <class U>
ptrdiff_t lastNotAbove(const U* a, size_t n, U key) {
  if (n == 0 || key < a[0]) return -1;
  const U* base = a;
  while (n > 1) {
    size_t half = n / 2;
    base = base[half] <= key ? base + half : base;
    n -= half;
  }
  return base - a;
}

template <class U>
Country find(const std::vector<U>& first, const std::vector<U>& last,
             const std::vector<Country>& country, const std::vector<uint32_t>& index, U a) {
  if (first.empty()) return 0;
  size_t bucket = static_cast<size_t>(a >> (kBits<U> - 16));
  size_t lo = index[bucket], hi = index[bucket + 1];
  size_t base =
      lo > 0 ? lo - 1 : 0;  // a range starting in an earlier bucket may reach into this one
  ptrdiff_t i = lastNotAbove(first.data() + base, hi - base, a);
  if (i < 0) return 0;
  size_t at = base + static_cast<size_t>(i);
  return a <= last[at] ? country[at] : 0;
}

template <class U>
std::vector<uint32_t> buildIndex(const std::vector<U>& first) {
  std::vector<uint32_t> index(kIndexSize);
  size_t i = 0;
  for (size_t k = 0; k < index.size(); ++k) {
    U bucketStart = k < 65536 ? static_cast<U>(static_cast<U>(k) << (kBits<U> - 16)) : U(0);
    while (i < first.size() && (k == 65536 || first[i] < bucketStart)) ++i;
    index[k] = static_cast<uint32_t>(i);
  }
  return index;
}

}  // namespace

GeoDb::GeoDb() : t_(std::make_unique<Tables>()) {}
GeoDb::~GeoDb() = default;

Country GeoDb::lookup(const uint8_t* addr, size_t len) const {
  static constexpr uint8_t kMapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  if (len == 16 && std::memcmp(addr, kMapped, 12) == 0) {
    addr += 12;
    len = 4;
  }
  const Tables& t = *t_;
  if (len == 4) return find(t.v4First, t.v4Last, t.v4Country, t.v4Index, v4Word(addr));
  if (len == 16) return find(t.v6First, t.v6Last, t.v6Country, t.v6Index, v6Word(addr));
  return 0;
}

size_t GeoDb::entries() const { return t_->v4First.size() + t_->v6First.size(); }

size_t GeoDb::bytes() const {
  const Tables& t = *t_;
  return t.v4First.capacity() * sizeof(uint32_t) + t.v4Last.capacity() * sizeof(uint32_t) +
         t.v4Country.capacity() * sizeof(Country) + t.v6First.capacity() * sizeof(U128) +
         t.v6Last.capacity() * sizeof(U128) + t.v6Country.capacity() * sizeof(Country) +
         (t.v4Index.capacity() + t.v6Index.capacity()) * sizeof(uint32_t);
}

std::vector<std::string> GeoDb::prefixesOf(Country c) const {
  std::vector<std::string> out;
  if (c == 0) return out;
  for (size_t i = 0; i < t_->v4First.size(); ++i) {
    if (t_->v4Country[i] == c) appendCidrs(t_->v4First[i], t_->v4Last[i], out);
  }
  for (size_t i = 0; i < t_->v6First.size(); ++i) {
    if (t_->v6Country[i] == c) appendCidrs(t_->v6First[i], t_->v6Last[i], out);
  }
  return out;
}

// ---- GeoLoader ------------------------------------------------------------

struct GeoLoader::State {
  struct Source {
    GeoSourceConfig cfg;
    Flat data;  // last good parse
    int64_t loadedAtUnix = 0;
    std::string error;
  };
  std::vector<Source> sources;
  std::shared_ptr<const GeoDb> db = std::make_shared<const GeoDb>();
  uint64_t loadErrors = 0;
};

GeoLoader::GeoLoader(std::vector<GeoSourceConfig> sources) : s_(std::make_unique<State>()) {
  for (GeoSourceConfig& c : sources) s_->sources.push_back({std::move(c), {}, 0, {}});
}

GeoLoader::~GeoLoader() = default;

std::shared_ptr<const GeoDb> GeoLoader::reload(std::vector<std::string>* errors) {
  Flat merged;
  for (State::Source& src : s_->sources) {
    Parsed p;
    std::string err = loadSource(src.cfg, p);
    if (err.empty()) {
      src.data.v4 = flatten(std::move(p.v4));
      src.data.v6 = flatten(std::move(p.v6));
      src.loadedAtUnix = static_cast<int64_t>(::time(nullptr));
      src.error.clear();
    } else {
      src.error = err;
      ++s_->loadErrors;
      if (errors != nullptr) errors->push_back(std::move(err));
    }
    merged.v4 = overlay(merged.v4, src.data.v4);
    merged.v6 = overlay(merged.v6, src.data.v6);
  }
  auto db = std::make_shared<GeoDb>();
  GeoDb::Tables& t = *db->t_;
  t.v4First.reserve(merged.v4.size());
  t.v4Last.reserve(merged.v4.size());
  t.v4Country.reserve(merged.v4.size());
  for (const auto& r : merged.v4) {
    t.v4First.push_back(r.first);
    t.v4Last.push_back(r.last);
    t.v4Country.push_back(r.c);
  }
  t.v6First.reserve(merged.v6.size());
  t.v6Last.reserve(merged.v6.size());
  t.v6Country.reserve(merged.v6.size());
  for (const auto& r : merged.v6) {
    t.v6First.push_back(r.first);
    t.v6Last.push_back(r.last);
    t.v6Country.push_back(r.c);
  }
  if (!t.v4First.empty()) t.v4Index = buildIndex(t.v4First);
  if (!t.v6First.empty()) t.v6Index = buildIndex(t.v6First);
  s_->db = std::move(db);
  return s_->db;
}

std::shared_ptr<const GeoDb> GeoLoader::db() const { return s_->db; }

std::vector<GeoSourceStatus> GeoLoader::status() const {
  std::vector<GeoSourceStatus> out;
  for (const State::Source& src : s_->sources) {
    GeoSourceStatus st;
    st.type = toString(src.cfg.type);
    st.path = statusPath(src.cfg);
    st.loadedAtUnix = src.loadedAtUnix;
    st.entries = src.data.size();
    st.error = src.error;
    out.push_back(std::move(st));
  }
  return out;
}

uint64_t GeoLoader::loadErrors() const { return s_->loadErrors; }

// ---- GeoWatcher -----------------------------------------------------------

namespace {

constexpr uint32_t kDirEvents = IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_CREATE |
                                IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR;

std::string stripSlashes(std::string p) {
  while (p.size() > 1 && p.back() == '/') p.pop_back();
  return p;
}

// ("/a/b", "c") for "/a/b/c"; (".", "c") for "c"; ("/", "c") for "/c".
std::pair<std::string, std::string> splitPath(const std::string& path) {
  std::string p = stripSlashes(path);
  size_t slash = p.rfind('/');
  if (slash == std::string::npos) return {".", p};
  return {slash == 0 ? "/" : p.substr(0, slash), p.substr(slash + 1)};
}

}  // namespace

struct GeoWatcher::Watches {
  struct Dir {
    std::string path;
    int wd = -1;
    bool zones = false;              // a zones directory: any <cc>.zone counts
    std::vector<std::string> names;  // files of interest in it
    std::vector<size_t>
        zoneChildren;  // zones directories in it (indices), re-watched when replaced
  };
  std::vector<Dir> dirs;

  size_t dirIndex(const std::string& path) {
    for (size_t i = 0; i < dirs.size(); ++i) {
      if (dirs[i].path == path) return i;
    }
    dirs.push_back(Dir{path, -1, false, {}, {}});
    return dirs.size() - 1;
  }
};

GeoWatcher::GeoWatcher(const std::vector<GeoSourceConfig>& sources)
    : w_(std::make_unique<Watches>()) {
  if (sources.empty()) return;
  auto& dirs = w_->dirs;
  for (const GeoSourceConfig& s : sources) {
    if (s.type == GeoSourceType::kZones) {
      if (s.path.empty()) continue;
      size_t z = w_->dirIndex(stripSlashes(s.path));
      dirs[z].zones = true;
      auto [parent, name] = splitPath(s.path);
      size_t pi = w_->dirIndex(parent);
      dirs[pi].names.push_back(name);
      dirs[pi].zoneChildren.push_back(z);
    } else {
      std::vector<const std::string*> files{&s.path};
      if (s.type == GeoSourceType::kMaxmindCsv)
        files = {&s.blocksIpv4, &s.blocksIpv6, &s.locations};
      for (const std::string* f : files) {
        if (f->empty()) continue;
        auto [parent, name] = splitPath(*f);
        w_->dirs[w_->dirIndex(parent)].names.push_back(name);
      }
    }
  }
  if (dirs.empty()) return;
  fd_ = ::inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  if (fd_ < 0) return;
  // A directory missing now is not watched (a zones directory is picked up
  // again when it appears in its parent).
  for (auto& d : dirs) d.wd = ::inotify_add_watch(fd_, d.path.c_str(), kDirEvents);
}

GeoWatcher::~GeoWatcher() {
  if (fd_ >= 0) ::close(fd_);
}

int GeoWatcher::fd() const { return fd_; }

bool GeoWatcher::pending() {
  if (fd_ < 0) return false;
  bool relevant = false;
  alignas(inotify_event) char buf[8192];
  for (;;) {
    ssize_t n = ::read(fd_, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;  // EAGAIN: drained
    for (char* p = buf; p < buf + n;) {
      const auto* ev = reinterpret_cast<const inotify_event*>(p);
      p += sizeof(inotify_event) + ev->len;
      if (ev->mask & IN_Q_OVERFLOW) {
        relevant = true;  // events were lost: assume the worst
        continue;
      }
      std::string_view name = ev->len > 0 ? std::string_view(ev->name) : std::string_view();
      for (auto& d : w_->dirs) {
        if (d.wd != ev->wd) continue;
        if (ev->mask & IN_IGNORED) {
          d.wd = -1;
          if (d.zones) relevant = true;
          continue;
        }
        if (ev->mask & (IN_DELETE_SELF | IN_MOVE_SELF)) {
          if (d.zones) relevant = true;
          continue;
        }
        if (name.empty()) continue;
        if (d.zones && zoneFileCountry(name) != 0) relevant = true;
        if (std::find(d.names.begin(), d.names.end(), name) != d.names.end()) relevant = true;
        for (size_t zi : d.zoneChildren) {
          auto& z = w_->dirs[zi];
          if (splitPath(z.path).second != name || !(ev->mask & (IN_CREATE | IN_MOVED_TO))) continue;
          int wd = ::inotify_add_watch(fd_, z.path.c_str(), kDirEvents);
          if (z.wd >= 0 && wd != z.wd) ::inotify_rm_watch(fd_, z.wd);
          z.wd = wd;
        }
      }
    }
  }
  return relevant;
}

}  // namespace moat::control
