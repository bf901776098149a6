// Geo tables: zone directories, MaxMind CSV and MaxMind DB sources, merging
// (more specific wins, later source wins), keeping the last good data of a
// source that fails, and the inotify watcher. Every test writes its own small
// files in a fresh temporary directory; the .mmdb file is produced by a tiny
// writer below (Debian ships no MaxMind DB test file).
#include "moat/control/geo.h"

#include <arpa/inet.h>
#include <maxminddb.h>
#include <poll.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

namespace moat::control {
namespace {

namespace fs = std::filesystem;

class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/moat-geo-test-XXXXXX";
    char* p = ::mkdtemp(tmpl);
    EXPECT_NE(p, nullptr);
    path_ = p != nullptr ? p : "/tmp";
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

void writeFile(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f << text;
  ASSERT_TRUE(f.good()) << path;
}

Country cc(const char* s) { return packCountry(s[0], s[1]); }

// Country of a textual address ("10.1.2.3", "2001:db8::1", "::ffff:1.2.3.4").
std::string countryOf(const GeoDb& db, const std::string& addr) {
  uint8_t b[16];
  if (inet_pton(AF_INET, addr.c_str(), b) == 1) return countryString(db.lookup(b, 4));
  if (inet_pton(AF_INET6, addr.c_str(), b) == 1) return countryString(db.lookup(b, 16));
  ADD_FAILURE() << "bad address in test: " << addr;
  return "?";
}

GeoSourceConfig zones(const std::string& dir) {
  GeoSourceConfig s;
  s.type = GeoSourceType::kZones;
  s.path = dir;
  return s;
}

GeoSourceConfig mmdb(const std::string& file) {
  GeoSourceConfig s;
  s.type = GeoSourceType::kMmdb;
  s.path = file;
  return s;
}

std::shared_ptr<const GeoDb> loadOk(GeoLoader& loader) {
  std::vector<std::string> errors;
  auto db = loader.reload(&errors);
  EXPECT_TRUE(errors.empty()) << errors[0];
  EXPECT_NE(db, nullptr);
  return db;
}

TEST(Geo, CountryPacking) {
  EXPECT_EQ(packCountry('D', 'E'), ('D' << 8) | 'E');
  EXPECT_EQ(packCountry('d', 'e'), packCountry('D', 'E'));
  EXPECT_EQ(packCountry('1', 'E'), 0);
  EXPECT_EQ(packCountry('D', ' '), 0);
  EXPECT_EQ(countryString(packCountry('f', 'R')), "FR");
  EXPECT_EQ(countryString(0), "");
}

TEST(Geo, EmptyDbAnswersUnknown) {
  GeoLoader loader({});
  ASSERT_NE(loader.db(), nullptr);
  EXPECT_EQ(countryOf(*loader.db(), "1.2.3.4"), "");
  auto db = loadOk(loader);
  EXPECT_EQ(db->entries(), 0u);
  EXPECT_EQ(countryOf(*db, "2001:db8::1"), "");
  uint8_t junk[5] = {1, 2, 3, 4, 5};
  EXPECT_EQ(db->lookup(junk, 5), 0);
}

TEST(Geo, ZonesV4AndV6WithComments) {
  TempDir t;
  writeFile(t / "de.zone",
            "# ipdeny style\n"
            "10.0.0.0/8\n"
            "\n"
            "  192.0.2.0/24   # trailing comment\r\n"
            "2001:db8::/32\n"
            "198.51.100.7\n");  // a bare address: a host prefix
  writeFile(t / "fr.zone", "11.0.0.0/16\n2001:db9::/48\n");
  GeoLoader loader({zones(t.path())});
  auto db = loadOk(loader);
  EXPECT_EQ(countryOf(*db, "10.0.0.0"), "DE");
  EXPECT_EQ(countryOf(*db, "10.255.255.255"), "DE");
  EXPECT_EQ(countryOf(*db, "9.255.255.255"), "");
  EXPECT_EQ(countryOf(*db, "11.0.0.0"), "FR");
  EXPECT_EQ(countryOf(*db, "11.0.200.1"), "FR");
  EXPECT_EQ(countryOf(*db, "11.1.0.0"), "");
  EXPECT_EQ(countryOf(*db, "192.0.2.77"), "DE");
  EXPECT_EQ(countryOf(*db, "198.51.100.7"), "DE");
  EXPECT_EQ(countryOf(*db, "198.51.100.8"), "");
  EXPECT_EQ(countryOf(*db, "2001:db8:ffff::1"), "DE");
  EXPECT_EQ(countryOf(*db, "2001:db9::1"), "FR");
  EXPECT_EQ(countryOf(*db, "2001:db9:1::1"), "");
  EXPECT_EQ(countryOf(*db, "::1"), "");
  EXPECT_EQ(db->entries(), 6u);
  EXPECT_GT(db->bytes(), 0u);

  auto st = loader.status();
  ASSERT_EQ(st.size(), 1u);
  EXPECT_EQ(st[0].type, "zones");
  EXPECT_EQ(st[0].path, t.path());
  EXPECT_EQ(st[0].entries, 6u);
  EXPECT_GT(st[0].loadedAtUnix, 0);
  EXPECT_EQ(st[0].error, "");
  EXPECT_EQ(loader.loadErrors(), 0u);
}

// First and last addresses of ranges, and of the address spaces.
TEST(Geo, ZoneRangeEdges) {
  TempDir t;
  writeFile(
      t / "fr.zone",
      "11.0.0.0/16\n0.0.0.0/32\n255.255.255.255/32\nffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128\n");
  GeoLoader loader({zones(t.path())});
  auto db = loadOk(loader);
  EXPECT_EQ(countryOf(*db, "11.0.0.0"), "FR");
  EXPECT_EQ(countryOf(*db, "11.0.255.255"), "FR");
  EXPECT_EQ(countryOf(*db, "10.255.255.255"), "");
  EXPECT_EQ(countryOf(*db, "0.0.0.0"), "FR");
  EXPECT_EQ(countryOf(*db, "0.0.0.1"), "");
  EXPECT_EQ(countryOf(*db, "255.255.255.255"), "FR");
  EXPECT_EQ(countryOf(*db, "255.255.255.254"), "");
  EXPECT_EQ(countryOf(*db, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"), "FR");
  EXPECT_EQ(countryOf(*db, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe"), "");
}

TEST(Geo, ZoneFileNamesInAnyCase) {
  TempDir t;
  writeFile(t / "DE.zone", "10.0.0.0/8\n");
  writeFile(t / "fR.ZONE", "11.0.0.0/8\n");
  writeFile(t / "deu.zone", "12.0.0.0/8\n");     // not a 2-letter code: ignored
  writeFile(t / "d1.zone", "13.0.0.0/8\n");      // not letters: ignored
  writeFile(t / "README", "not a zone file\n");  // ignored
  writeFile(t / "it.zone.tmp", "14.0.0.0/8\n");  // an editor's temp file: ignored
  GeoLoader loader({zones(t.path() + "/")});
  auto db = loadOk(loader);
  EXPECT_EQ(countryOf(*db, "10.1.1.1"), "DE");
  EXPECT_EQ(countryOf(*db, "11.1.1.1"), "FR");
  EXPECT_EQ(countryOf(*db, "12.1.1.1"), "");
  EXPECT_EQ(countryOf(*db, "13.1.1.1"), "");
  EXPECT_EQ(countryOf(*db, "14.1.1.1"), "");
}

TEST(Geo, Ipv4MappedIpv6UsesIpv4Table) {
  TempDir t;
  // A v4-mapped prefix in a zone file lands in the IPv4 table too.
  writeFile(t / "de.zone", "10.0.0.0/8\n::ffff:172.16.0.0/108\n");
  GeoLoader loader({zones(t.path())});
  auto db = loadOk(loader);
  EXPECT_EQ(countryOf(*db, "::ffff:10.9.8.7"), "DE");
  EXPECT_EQ(countryOf(*db, "::ffff:11.9.8.7"), "");
  EXPECT_EQ(countryOf(*db, "172.16.3.4"), "DE");
  EXPECT_EQ(countryOf(*db, "::ffff:172.16.3.4"), "DE");
  EXPECT_EQ(countryOf(*db, "::10.9.8.7"), "");  // IPv4-compatible is plain IPv6
  auto p = db->prefixesOf(cc("DE"));
  EXPECT_EQ(p, (std::vector<std::string>{"10.0.0.0/8", "172.16.0.0/12"}));
}

TEST(Geo, MoreSpecificPrefixWinsWithinASource) {
  TempDir t;
  writeFile(t / "us.zone", "10.0.0.0/8\n2001:db8::/32\n");
  writeFile(t / "de.zone", "10.1.0.0/16\n10.1.2.0/24 # nested, same country\n2001:db8:1::/48\n");
  writeFile(t / "fr.zone", "10.1.2.128/25\n");
  GeoLoader loader({zones(t.path())});
  auto db = loadOk(loader);
  EXPECT_EQ(countryOf(*db, "10.0.0.1"), "US");
  EXPECT_EQ(countryOf(*db, "10.1.0.1"), "DE");
  EXPECT_EQ(countryOf(*db, "10.1.2.1"), "DE");
  EXPECT_EQ(countryOf(*db, "10.1.2.200"), "FR");
  EXPECT_EQ(countryOf(*db, "10.1.3.0"), "DE");
  EXPECT_EQ(countryOf(*db, "10.2.0.0"), "US");
  EXPECT_EQ(countryOf(*db, "10.255.255.255"), "US");
  EXPECT_EQ(countryOf(*db, "2001:db8::1"), "US");
  EXPECT_EQ(countryOf(*db, "2001:db8:1::1"), "DE");
  EXPECT_EQ(countryOf(*db, "2001:db8:2::1"), "US");
  // The /8 is cut around the /16, the /16 around the /25.
  EXPECT_EQ(db->prefixesOf(cc("FR")), (std::vector<std::string>{"10.1.2.128/25"}));
  EXPECT_EQ(db->prefixesOf(cc("DE")),
            (std::vector<std::string>{"10.1.0.0/23", "10.1.2.0/25", "10.1.3.0/24", "10.1.4.0/22",
                                      "10.1.8.0/21", "10.1.16.0/20", "10.1.32.0/19", "10.1.64.0/18",
                                      "10.1.128.0/17", "2001:db8:1::/48"}));
}

TEST(Geo, LaterSourceWinsOnOverlap) {
  TempDir a, b;
  writeFile(a / "de.zone", "10.1.0.0/16\n2001:db8::/32\n");
  writeFile(b / "fr.zone", "10.0.0.0/8\n2001:db8:5::/48\n");
  {
    GeoLoader loader({zones(a.path()), zones(b.path())});
    auto db = loadOk(loader);
    // b is later: its less specific /8 still wins over a's /16.
    EXPECT_EQ(countryOf(*db, "10.1.0.1"), "FR");
    EXPECT_EQ(countryOf(*db, "2001:db8:5::1"), "FR");
    EXPECT_EQ(countryOf(*db, "2001:db8:6::1"), "DE");
    EXPECT_EQ(countryOf(*db, "2001:db8::"), "DE");
    EXPECT_EQ(db->prefixesOf(cc("DE")),
              (std::vector<std::string>{
                  "2001:db8::/46", "2001:db8:4::/48", "2001:db8:6::/47", "2001:db8:8::/45",
                  "2001:db8:10::/44", "2001:db8:20::/43", "2001:db8:40::/42", "2001:db8:80::/41",
                  "2001:db8:100::/40", "2001:db8:200::/39", "2001:db8:400::/38",
                  "2001:db8:800::/37", "2001:db8:1000::/36", "2001:db8:2000::/35",
                  "2001:db8:4000::/34", "2001:db8:8000::/33"}));
  }
  {
    GeoLoader loader({zones(b.path()), zones(a.path())});
    auto db = loadOk(loader);
    EXPECT_EQ(countryOf(*db, "10.1.0.1"), "DE");
    EXPECT_EQ(countryOf(*db, "10.2.0.1"), "FR");
    EXPECT_EQ(countryOf(*db, "2001:db8:5::1"), "DE");
  }
}

TEST(Geo, MaxmindCsvWithQuotesAndRegisteredCountry) {
  TempDir t;
  writeFile(t / "GeoLite2-Country-Locations-en.csv",
            "geoname_id,locale_code,continent_code,continent_name,country_iso_code,country_name,"
            "is_in_european_union\r\n"
            "2921044,en,EU,Europe,DE,Germany,1\r\n"
            "3017382,en,EU,Europe,\"FR\",\"France\",1\r\n"
            "1835841,en,AS,Asia,KR,\"Korea, Republic of\",0\r\n"
            "6255148,en,EU,Europe,,,0\r\n"  // a continent: no country
            "6252001,en,NA,\"North America\",US,\"The \"\"States\"\"\",0\r\n");
  writeFile(
      t / "GeoLite2-Country-Blocks-IPv4.csv",
      "\xEF\xBB\xBFnetwork,geoname_id,registered_country_geoname_id,represented_country_geoname_id,"
      "is_anonymous_proxy,is_satellite_provider\n"
      "1.0.0.0/24,2921044,2921044,,0,0\n"
      "\"1.0.1.0/24\",\"1835841\",\"1835841\",\"\",\"0\",\"0\"\n"
      "1.0.2.0/24,,3017382,,0,0\n"         // no country: the registered one
      "1.0.3.0/24,6255148,6252001,,0,0\n"  // a continent: the registered one
      "1.0.4.0/24,,,,1,0\n");              // anonymous proxy: unknown
  writeFile(t / "GeoLite2-Country-Blocks-IPv6.csv",
            "network,geoname_id,registered_country_geoname_id,represented_country_geoname_id,"
            "is_anonymous_proxy,is_satellite_provider\n"
            "2001:db8::/32,6252001,6252001,,0,0\n");
  GeoSourceConfig s;
  s.type = GeoSourceType::kMaxmindCsv;
  s.blocksIpv4 = t / "GeoLite2-Country-Blocks-IPv4.csv";
  s.blocksIpv6 = t / "GeoLite2-Country-Blocks-IPv6.csv";
  s.locations = t / "GeoLite2-Country-Locations-en.csv";
  GeoLoader loader({s});
  auto db = loadOk(loader);
  EXPECT_EQ(countryOf(*db, "1.0.0.1"), "DE");
  EXPECT_EQ(countryOf(*db, "1.0.1.1"), "KR");
  EXPECT_EQ(countryOf(*db, "1.0.2.1"), "FR");
  EXPECT_EQ(countryOf(*db, "1.0.3.1"), "US");
  EXPECT_EQ(countryOf(*db, "1.0.4.1"), "");
  EXPECT_EQ(countryOf(*db, "2001:db8::1"), "US");
  EXPECT_EQ(loader.status()[0].type, "maxmind_csv");
  EXPECT_EQ(loader.status()[0].path, s.blocksIpv4 + "," + s.blocksIpv6 + "," + s.locations);

  // Only one blocks file is fine.
  s.blocksIpv6.clear();
  GeoLoader v4only({s});
  db = loadOk(v4only);
  EXPECT_EQ(countryOf(*db, "1.0.0.1"), "DE");
  EXPECT_EQ(countryOf(*db, "2001:db8::1"), "");
}

TEST(Geo, MaxmindCsvErrorsNameFileAndLine) {
  TempDir t;
  writeFile(t / "loc.csv", "geoname_id,country_iso_code\n1,DE\n");
  writeFile(t / "b4.csv",
            "network,geoname_id,registered_country_geoname_id\n1.0.0.0/24,1,1\n\"1.0.1.0/24,1,1\n");
  GeoSourceConfig s;
  s.type = GeoSourceType::kMaxmindCsv;
  s.blocksIpv4 = t / "b4.csv";
  s.locations = t / "loc.csv";
  GeoLoader loader({s});
  std::vector<std::string> errors;
  loader.reload(&errors);
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_EQ(errors[0], t / "b4.csv" + ":3: unterminated quoted field");

  writeFile(t / "b4.csv", "network,geoname_id\n1.0.0.0/24,1\n");
  errors.clear();
  loader.reload(&errors);
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_EQ(errors[0],
            t / "b4.csv" + ":1: no \"registered_country_geoname_id\" column in the header");

  writeFile(t / "b4.csv", "network,geoname_id,registered_country_geoname_id\n1.0.0.0/24,x1,1\n");
  errors.clear();
  loader.reload(&errors);
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_EQ(errors[0], t / "b4.csv" + ":2: \"x1\" is not a geoname id");

  writeFile(t / "b4.csv", "network,geoname_id,registered_country_geoname_id\n1.0.0.1/24,1,1\n");
  errors.clear();
  loader.reload(&errors);
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_EQ(errors[0], t / "b4.csv" + ":2: \"1.0.0.1/24\" has bits set beyond the /24 prefix");
  EXPECT_EQ(loader.loadErrors(), 4u);
  EXPECT_EQ(loader.db()->entries(), 0u);
}

TEST(Geo, BadLineKeepsPreviousDataOfThatSource) {
  TempDir a, b;
  writeFile(a / "de.zone", "10.0.0.0/8\n");
  writeFile(b / "fr.zone", "11.0.0.0/8\n");
  GeoLoader loader({zones(a.path()), zones(b.path())});
  auto first = loadOk(loader);
  EXPECT_EQ(countryOf(*first, "10.0.0.1"), "DE");

  writeFile(a / "de.zone", "10.0.0.0/8\n# fine so far\n10.0.0.300/8\n12.0.0.0/8\n");
  writeFile(b / "fr.zone", "11.0.0.0/8\n13.0.0.0/8\n");  // the good source still updates
  std::vector<std::string> errors;
  auto db = loader.reload(&errors);
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_EQ(errors[0], a / "de.zone" + ":3: \"10.0.0.300/8\" is not a CIDR prefix");
  EXPECT_EQ(db, loader.db());
  EXPECT_EQ(countryOf(*db, "10.0.0.1"), "DE");
  EXPECT_EQ(countryOf(*db, "12.0.0.1"), "");  // nothing of the bad file is used
  EXPECT_EQ(countryOf(*db, "13.0.0.1"), "FR");
  EXPECT_EQ(countryOf(*first, "13.0.0.1"), "");  // an old db never changes
  EXPECT_EQ(loader.loadErrors(), 1u);
  auto st = loader.status();
  EXPECT_EQ(st[0].error, errors[0]);
  EXPECT_EQ(st[0].entries, 1u);
  EXPECT_GT(st[0].loadedAtUnix, 0);
  EXPECT_EQ(st[1].error, "");

  for (const char* bad : {"10.0.0.0/33", "10.0.0.0/", "10.0.0.0/-1", "10.0.0.0/8x",
                          "2001:db8::/129", "2001:db8::/abc", "garbage", "10.0.0.0 /8"}) {
    writeFile(a / "de.zone", std::string(bad) + "\n");
    errors.clear();
    loader.reload(&errors);
    ASSERT_EQ(errors.size(), 1u) << bad;
    EXPECT_EQ(errors[0], a / "de.zone" + ":1: \"" + bad + "\" is not a CIDR prefix");
  }
  writeFile(a / "de.zone", "2001:db8::1/32\n");
  errors.clear();
  loader.reload(&errors);
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_EQ(errors[0], a / "de.zone" + ":1: \"2001:db8::1/32\" has bits set beyond the /32 prefix");
  EXPECT_EQ(countryOf(*loader.db(), "10.0.0.1"), "DE");

  // Fixed: the source is in force again.
  writeFile(a / "de.zone", "12.0.0.0/8\n");
  db = loadOk(loader);
  EXPECT_EQ(countryOf(*db, "10.0.0.1"), "");
  EXPECT_EQ(countryOf(*db, "12.0.0.1"), "DE");
  EXPECT_EQ(loader.status()[0].error, "");
}

TEST(Geo, FailedFirstLoadHasNoData) {
  TempDir t;
  writeFile(t / "de.zone", "10.0.0.0/8\nnope\n");
  GeoLoader loader({zones(t.path())});
  std::vector<std::string> errors;
  auto db = loader.reload(&errors);
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_EQ(errors[0], t / "de.zone" + ":2: \"nope\" is not a CIDR prefix");
  EXPECT_EQ(db->entries(), 0u);
  EXPECT_EQ(loader.status()[0].loadedAtUnix, 0);
  EXPECT_EQ(loader.status()[0].entries, 0u);
}

TEST(Geo, MissingOrUnreadableFileKeepsPreviousData) {
  TempDir t;
  fs::create_directory(t / "zones");
  writeFile(t / "zones/de.zone", "10.0.0.0/8\n");
  writeFile(t / "loc.csv", "geoname_id,country_iso_code\n1,FR\n");
  writeFile(t / "b4.csv", "network,geoname_id,registered_country_geoname_id\n11.0.0.0/8,1,\n");
  GeoSourceConfig csv;
  csv.type = GeoSourceType::kMaxmindCsv;
  csv.blocksIpv4 = t / "b4.csv";
  csv.locations = t / "loc.csv";
  GeoLoader loader({zones(t / "zones"), csv});
  loadOk(loader);

  fs::remove(t / "loc.csv");
  fs::rename(t / "zones", t / "zones.old");
  std::vector<std::string> errors;
  auto db = loader.reload(&errors);
  ASSERT_EQ(errors.size(), 2u);
  EXPECT_EQ(errors[0], t / "zones" + ": cannot open directory: No such file or directory");
  EXPECT_EQ(errors[1], t / "loc.csv" + ": cannot open: No such file or directory");
  EXPECT_EQ(countryOf(*db, "10.0.0.1"), "DE");
  EXPECT_EQ(countryOf(*db, "11.0.0.1"), "FR");

  // An empty zones directory is refused too (a half-done sync, most likely).
  fs::create_directory(t / "zones");
  errors.clear();
  db = loader.reload(&errors);
  ASSERT_EQ(errors.size(), 2u);
  EXPECT_EQ(errors[0], t / "zones" + ": no <cc>.zone files");

  if (::geteuid() != 0) {  // root reads anything
    writeFile(t / "zones/de.zone", "12.0.0.0/8\n");
    ::chmod((t / "zones/de.zone").c_str(), 0);
    errors.clear();
    db = loader.reload(&errors);
    ASSERT_EQ(errors.size(), 2u);
    EXPECT_EQ(errors[0], t / "zones/de.zone" + ": cannot open: Permission denied");
    EXPECT_EQ(countryOf(*db, "10.0.0.1"), "DE");
  }
  EXPECT_EQ(countryOf(*db, "11.0.0.1"), "FR");

  // Unreadable whatever the user: a "zone file" that is a directory.
  fs::remove(t / "zones/de.zone");
  fs::create_directory(t / "zones/de.zone");
  uint64_t failedBefore = loader.loadErrors();
  errors.clear();
  db = loader.reload(&errors);
  ASSERT_EQ(errors.size(), 2u);
  EXPECT_EQ(errors[0], t / "zones/de.zone" + ": cannot read: Is a directory");
  EXPECT_EQ(countryOf(*db, "10.0.0.1"), "DE");
  EXPECT_EQ(loader.loadErrors(), failedBefore + 2);  // one per failed source

  errors.clear();
  GeoLoader missing({mmdb(t / "none.mmdb")});
  missing.reload(&errors);
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_EQ(errors[0].rfind(t / "none.mmdb" + ": ", 0), 0u) << errors[0];
}

bool waitReadable(int fd) {
  pollfd p{fd, POLLIN, 0};
  return ::poll(&p, 1, 2000) == 1;
}

TEST(Geo, WatcherSeesRewriteAndRenameReplace) {
  TempDir t;
  fs::create_directory(t / "zones");
  writeFile(t / "zones/de.zone", "10.0.0.0/8\n");
  writeFile(t / "country.mmdb", "x");
  GeoWatcher w({zones(t / "zones"), mmdb(t / "country.mmdb")});
  ASSERT_GE(w.fd(), 0);
  EXPECT_FALSE(w.pending());

  writeFile(t / "zones/de.zone", "11.0.0.0/8\n");  // rewritten in place
  ASSERT_TRUE(waitReadable(w.fd()));
  EXPECT_TRUE(w.pending());
  EXPECT_FALSE(w.pending());  // drained

  writeFile(t / "zones/.de.zone.swp", "x");  // not a zone file
  writeFile(t / "unrelated.txt", "x");       // not a source file
  ASSERT_TRUE(waitReadable(w.fd()));
  EXPECT_FALSE(w.pending());

  writeFile(t / "country.mmdb.tmp", "y");  // write then rename over
  EXPECT_FALSE(w.pending());
  fs::rename(t / "country.mmdb.tmp", t / "country.mmdb");
  ASSERT_TRUE(waitReadable(w.fd()));
  EXPECT_TRUE(w.pending());

  writeFile(t / "zones/FR.zone", "12.0.0.0/8\n");  // a new country
  ASSERT_TRUE(waitReadable(w.fd()));
  EXPECT_TRUE(w.pending());

  // The whole directory swapped by rename: seen, and followed afterwards.
  fs::create_directory(t / "zones.new");
  writeFile(t / "zones.new/de.zone", "13.0.0.0/8\n");
  EXPECT_FALSE(w.pending());
  fs::rename(t / "zones", t / "zones.old");
  fs::rename(t / "zones.new", t / "zones");
  ASSERT_TRUE(waitReadable(w.fd()));
  EXPECT_TRUE(w.pending());
  writeFile(t / "zones.old/de.zone", "14.0.0.0/8\n");  // no longer the source
  EXPECT_FALSE(w.pending());
  writeFile(t / "zones/de.zone", "15.0.0.0/8\n");
  ASSERT_TRUE(waitReadable(w.fd()));
  EXPECT_TRUE(w.pending());

  GeoWatcher none({});
  EXPECT_EQ(none.fd(), -1);
  EXPECT_FALSE(none.pending());
}

TEST(Geo, PrefixesOfRoundTrips) {
  TempDir a, b;
  writeFile(a / "de.zone",
            "10.0.0.0/8\n10.1.0.0/16\n192.0.2.0/25\n192.0.2.128/25\n2001:db8::/32\n");
  writeFile(a / "fr.zone", "10.1.2.0/23\n198.51.100.0/24\n2001:db8:ff00::/40\n::/0\n");
  GeoLoader first({zones(a.path())});
  auto db = loadOk(first);
  for (const char* c : {"DE", "FR"}) {
    std::string text;
    for (const std::string& p : db->prefixesOf(cc(c))) text += p + "\n";
    writeFile(b / (std::string(c) + ".zone"), text);
  }
  // Adjacent prefixes of one country come back joined.
  auto de = db->prefixesOf(cc("DE"));
  EXPECT_NE(std::find(de.begin(), de.end(), "192.0.2.0/24"), de.end());
  EXPECT_EQ(db->prefixesOf(cc("US")), std::vector<std::string>{});
  EXPECT_EQ(db->prefixesOf(0), std::vector<std::string>{});

  GeoLoader second({zones(b.path())});
  auto again = loadOk(second);
  EXPECT_EQ(again->entries(), db->entries());
  for (const char* c : {"DE", "FR"})
    EXPECT_EQ(again->prefixesOf(cc(c)), db->prefixesOf(cc(c))) << c;
  for (const char* addr :
       {"10.0.0.0", "10.1.1.255", "10.1.2.0", "10.1.3.255", "10.1.4.0", "10.255.255.255",
        "11.0.0.0", "192.0.2.200", "198.51.100.1", "2001:db8::", "2001:db8:ff00::1",
        "2001:db8:ffff::1", "2001:db9::", "::", "ffff::1"}) {
    EXPECT_EQ(countryOf(*again, addr), countryOf(*db, addr)) << addr;
  }
  EXPECT_EQ(countryOf(*db, "ffff::1"), "FR");
  EXPECT_EQ(countryOf(*db, "2001:db8:ff00::1"), "FR");
}

// Random nested and overlapping prefixes in two sources against a plain
// reference: the longest matching prefix of the last source that has one.
TEST(Geo, MatchesReferenceOnRandomPrefixes) {
  struct P {
    std::string text;
    std::vector<bool> bits;  // the prefix's bits
    std::string country;
  };
  std::mt19937_64 rng(1234);
  const char* countries[] = {"DE", "FR", "US", "JP"};
  auto bitsOf = [](const uint8_t* b, size_t n) {
    std::vector<bool> v;
    for (size_t i = 0; i < n * 8; ++i) v.push_back((b[i / 8] >> (7 - i % 8)) & 1);
    return v;
  };
  // Addresses crowd into a small space (10.0.0.0/14, 2001:db8::/46) so that
  // prefixes nest, overlap across sources and cross index buckets.
  auto randomV4 = [&] { return (10u << 24) | static_cast<uint32_t>(rng() & 0x3ffff); };
  auto randomV6 = [&] {
    uint8_t b[16] = {0x20, 0x01, 0x0d, 0xb8};
    uint64_t r = rng(), r2 = rng();
    b[4] = static_cast<uint8_t>(r & 3);
    for (int i = 5; i < 16; ++i)
      b[i] = static_cast<uint8_t>((i < 12 ? r >> (8 * (i - 4)) : r2 >> (8 * (i - 12))));
    return std::array<uint8_t, 16>{b[0], b[1], b[2],  b[3],  b[4],  b[5],  b[6],  b[7],
                                   b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]};
  };
  TempDir t;
  std::vector<std::vector<P>> sources(2);
  std::vector<GeoSourceConfig> cfg;
  for (size_t s = 0; s < sources.size(); ++s) {
    std::string dir = t / ("src" + std::to_string(s));
    fs::create_directory(dir);
    cfg.push_back(zones(dir));
    std::map<std::string, std::string> files;
    std::set<std::string> seen;
    for (int i = 0; i < 400; ++i) {
      P p;
      p.country = countries[rng() % 4];
      char text[INET6_ADDRSTRLEN];
      if (i % 2 == 0) {
        int len = 12 + static_cast<int>(rng() % 21);
        uint32_t a = randomV4() & (len == 0 ? 0 : ~0u << (32 - len));
        uint8_t b[4] = {static_cast<uint8_t>(a >> 24), static_cast<uint8_t>(a >> 16),
                        static_cast<uint8_t>(a >> 8), static_cast<uint8_t>(a)};
        inet_ntop(AF_INET, b, text, sizeof text);
        p.text = std::string(text) + "/" + std::to_string(len);
        p.bits = bitsOf(b, 4);
        p.bits.resize(static_cast<size_t>(len));
      } else {
        int len = 28 + static_cast<int>(rng() % 101);
        auto b = randomV6();
        for (int k = len; k < 128; ++k)
          b[static_cast<size_t>(k / 8)] &= static_cast<uint8_t>(~(0x80 >> (k % 8)));
        inet_ntop(AF_INET6, b.data(), text, sizeof text);
        p.text = std::string(text) + "/" + std::to_string(len);
        p.bits = bitsOf(b.data(), 16);
        p.bits.resize(static_cast<size_t>(len));
      }
      if (!seen.insert(p.text).second) continue;  // one country per prefix in a source
      files[p.country] += p.text + "\n";
      sources[s].push_back(p);
    }
    for (const auto& [c, text] : files) writeFile(dir + "/" + c + ".zone", text);
  }
  GeoLoader loader(cfg);
  auto db = loadOk(loader);

  auto reference = [&](const uint8_t* b, size_t n) -> std::string {
    std::vector<bool> bits = bitsOf(b, n);
    for (size_t s = sources.size(); s-- > 0;) {
      const P* best = nullptr;
      for (const P& p : sources[s]) {
        bool v6 = p.text.find(':') != std::string::npos;
        if (v6 != (n == 16)) continue;
        if (!std::equal(p.bits.begin(), p.bits.end(), bits.begin())) continue;
        if (best == nullptr || p.bits.size() > best->bits.size()) best = &p;
      }
      if (best != nullptr) return best->country;
    }
    return "";
  };
  // Random addresses, and the edges of every prefix.
  std::vector<std::vector<uint8_t>> probes;
  for (int i = 0; i < 3000; ++i) {
    uint32_t a = randomV4();
    probes.push_back({static_cast<uint8_t>(a >> 24), static_cast<uint8_t>(a >> 16),
                      static_cast<uint8_t>(a >> 8), static_cast<uint8_t>(a)});
    auto b = randomV6();
    probes.emplace_back(b.begin(), b.end());
  }
  for (const auto& src : sources) {
    for (const P& p : src) {
      size_t n = p.text.find(':') != std::string::npos ? 16 : 4;
      for (int edge = 0; edge < 2; ++edge) {
        std::vector<uint8_t> b(n, 0);
        for (size_t k = 0; k < n * 8; ++k) {
          bool bit = k < p.bits.size() ? p.bits[k] : edge == 1;
          if (bit) b[k / 8] |= static_cast<uint8_t>(0x80 >> (k % 8));
        }
        probes.push_back(b);
        // One past each edge.
        std::vector<uint8_t> c = b;
        if (edge == 1) {
          for (size_t k = n; k-- > 0;)
            if (++c[k] != 0) break;
        } else {
          for (size_t k = n; k-- > 0;)
            if (c[k]-- != 0) break;
        }
        probes.push_back(c);
      }
    }
  }
  size_t known = 0;
  for (const auto& b : probes) {
    std::string want = reference(b.data(), b.size());
    known += !want.empty();
    char text[INET6_ADDRSTRLEN];
    inet_ntop(b.size() == 4 ? AF_INET : AF_INET6, b.data(), text, sizeof text);
    ASSERT_EQ(countryString(db->lookup(b.data(), b.size())), want) << text;
  }
  EXPECT_GT(known, probes.size() / 4);  // the probes do hit prefixes

  // And the same table comes back from prefixesOf().
  TempDir again;
  for (const char* c : countries) {
    std::string text;
    for (const std::string& p : db->prefixesOf(cc(c))) text += p + "\n";
    writeFile(again / (std::string(c) + ".zone"), text);
  }
  GeoLoader reloaded({zones(again.path())});
  auto db2 = loadOk(reloaded);
  EXPECT_EQ(db2->entries(), db->entries());
  for (const auto& b : probes)
    ASSERT_EQ(db2->lookup(b.data(), b.size()), db->lookup(b.data(), b.size()));
}

// ---- a tiny MaxMind DB writer (https://maxmind.github.io/MaxMind-DB/) ------

// Data-section encoding: a control byte (type << 5 | size), extended types
// (> 7) as type 0 plus a byte holding type - 7.
class MmdbData {
 public:
  std::string bytes;

  void control(int type, size_t size) {
    uint8_t first = static_cast<uint8_t>((type <= 7 ? type : 0) << 5);
    std::string ext;
    if (size < 29) {
      first |= static_cast<uint8_t>(size);
    } else if (size < 285) {
      first |= 29;
      ext.push_back(static_cast<char>(size - 29));
    } else {
      first |= 30;
      size -= 285;
      ext.push_back(static_cast<char>(size >> 8));
      ext.push_back(static_cast<char>(size & 0xff));
    }
    bytes.push_back(static_cast<char>(first));
    if (type > 7) bytes.push_back(static_cast<char>(type - 7));
    bytes += ext;
  }
  MmdbData& str(const std::string& s) {
    control(2, s.size());
    bytes += s;
    return *this;
  }
  MmdbData& uint(int type, uint64_t v) {  // 5 uint16, 6 uint32, 9 uint64
    std::string be;
    for (; v != 0; v >>= 8) be.insert(be.begin(), static_cast<char>(v & 0xff));
    control(type, be.size());
    bytes += be;
    return *this;
  }
  MmdbData& map(size_t pairs) {
    control(7, pairs);
    return *this;
  }
  MmdbData& array(size_t n) {
    control(11, n);
    return *this;
  }
};

// A binary trie of records, 24-bit, written as an IPv6 (or IPv4) tree.
class MmdbWriter {
 public:
  explicit MmdbWriter(int ipVersion) : ipVersion_(ipVersion), nodes_(1) {}

  // A data record; returns its id for insert().
  size_t record(const MmdbData& d) {
    offsets_.push_back(data_.size());
    data_ += d.bytes;
    return offsets_.size() - 1;
  }
  // "1.2.3.0/24" (placed under ::/96 in an IPv6 tree) or "2001:db8::/32".
  void insert(const std::string& cidr, size_t rec) {
    auto [bits, len] = parse(cidr);
    *slot(bits, len) = Rec{Rec::kData, rec};
  }
  // Points prefix (e.g. ::ffff:0:0/96) at the node of the ::/96 subtree, as
  // MaxMind's writer does.
  void aliasIpv4(const std::string& cidr) {
    auto [bits, len] = parse(cidr);
    std::vector<bool> zero(96, false);
    size_t v4 = nodeAt(zero, 96);
    *slot(bits, len) = Rec{Rec::kNode, v4};
  }

  std::string build() const {
    std::string out;
    size_t n = nodes_.size();
    auto value = [&](const Rec& r) -> uint32_t {
      switch (r.kind) {
        case Rec::kNode:
          return static_cast<uint32_t>(r.v);
        case Rec::kData:
          return static_cast<uint32_t>(n + 16 + offsets_[r.v]);
        default:
          return static_cast<uint32_t>(n);
      }
    };
    for (const Node& node : nodes_) {
      for (const Rec& r : {node.left, node.right}) {
        uint32_t v = value(r);
        out.push_back(static_cast<char>(v >> 16));
        out.push_back(static_cast<char>(v >> 8));
        out.push_back(static_cast<char>(v));
      }
    }
    out += std::string(16, '\0');
    out += data_;
    out += "\xAB\xCD\xEFMaxMind.com";
    MmdbData m;
    m.map(9);
    m.str("node_count").uint(6, n);
    m.str("record_size").uint(5, 24);
    m.str("ip_version").uint(5, static_cast<uint64_t>(ipVersion_));
    m.str("database_type").str("Moat-Test-Country");
    m.str("languages").array(1).str("en");
    m.str("binary_format_major_version").uint(5, 2);
    m.str("binary_format_minor_version").uint(5, 0);
    m.str("build_epoch").uint(9, 1700000000);
    m.str("description").map(1).str("en").str("Moat geo_test database");
    out += m.bytes;
    return out;
  }

 private:
  struct Rec {
    enum Kind { kEmpty, kNode, kData } kind = kEmpty;
    size_t v = 0;
  };
  struct Node {
    Rec left, right;
  };

  std::pair<std::vector<bool>, int> parse(const std::string& cidr) const {
    size_t slash = cidr.find('/');
    std::string addr = cidr.substr(0, slash);
    int len = std::stoi(cidr.substr(slash + 1));
    uint8_t b[16] = {};
    std::vector<bool> bits;
    if (inet_pton(AF_INET, addr.c_str(), b) == 1) {
      if (ipVersion_ == 6) {
        bits.assign(96, false);
        len += 96;
      }
      for (int i = 0; i < 32; ++i) bits.push_back((b[i / 8] >> (7 - i % 8)) & 1);
    } else {
      EXPECT_EQ(inet_pton(AF_INET6, addr.c_str(), b), 1) << cidr;
      for (int i = 0; i < 128; ++i) bits.push_back((b[i / 8] >> (7 - i % 8)) & 1);
    }
    return {bits, len};
  }
  // The node at depth `len` along `bits`, creating nodes on the way.
  size_t nodeAt(const std::vector<bool>& bits, int len) {
    size_t node = 0;
    for (int i = 0; i < len; ++i) {
      Rec& r = bits[static_cast<size_t>(i)] ? nodes_[node].right : nodes_[node].left;
      if (r.kind != Rec::kNode) {
        EXPECT_EQ(r.kind, Rec::kEmpty) << "a prefix inside a data record";
        nodes_.push_back(Node{});
        // nodes_ may have moved: look the record up again.
        Rec& again = bits[static_cast<size_t>(i)] ? nodes_[node].right : nodes_[node].left;
        again = Rec{Rec::kNode, nodes_.size() - 1};
      }
      node = (bits[static_cast<size_t>(i)] ? nodes_[node].right : nodes_[node].left).v;
    }
    return node;
  }
  Rec* slot(const std::vector<bool>& bits, int len) {
    size_t parent = nodeAt(bits, len - 1);
    return bits[static_cast<size_t>(len - 1)] ? &nodes_[parent].right : &nodes_[parent].left;
  }

  int ipVersion_;
  std::vector<Node> nodes_;
  std::vector<size_t> offsets_;
  std::string data_;
};

MmdbData countryRecord(const char* key, const char* iso) {
  MmdbData d;
  d.map(1).str(key).map(2).str("geoname_id").uint(6, 42).str("iso_code").str(iso);
  return d;
}

TEST(Geo, MmdbIpv6TreeWithIpv4Subtree) {
  TempDir t;
  MmdbWriter w(6);
  size_t de = w.record(countryRecord("country", "DE"));
  MmdbData regOnly;  // no "country": the registered country counts
  regOnly.map(2)
      .str("continent")
      .map(1)
      .str("code")
      .str("EU")
      .str("registered_country")
      .map(1)
      .str("iso_code")
      .str("FR");
  size_t fr = w.record(regOnly);
  MmdbData none;  // neither: unknown
  none.map(1).str("continent").map(1).str("code").str("EU");
  size_t unknown = w.record(none);
  size_t us = w.record(countryRecord("country", "US"));
  w.insert("1.0.0.0/24", de);
  w.insert("1.0.1.0/24", fr);
  w.insert("1.0.2.0/23", unknown);
  w.insert("128.0.0.0/1", us);
  w.insert("2001:db8::/32", fr);
  w.insert("2a00::/12", de);
  w.insert("2a10::/16", us);
  w.aliasIpv4("::ffff:0:0/96");
  w.aliasIpv4("2002::/16");
  writeFile(t / "c.mmdb", w.build());

  // libmaxminddb itself agrees with the file.
  MMDB_s raw;
  ASSERT_EQ(MMDB_open((t / "c.mmdb").c_str(), MMDB_MODE_MMAP, &raw), MMDB_SUCCESS);
  int gai = 0, merr = 0;
  MMDB_lookup_result_s res = MMDB_lookup_string(&raw, "::ffff:1.0.0.9", &gai, &merr);
  EXPECT_TRUE(res.found_entry);
  MMDB_close(&raw);

  GeoLoader loader({mmdb(t / "c.mmdb")});
  auto db = loadOk(loader);
  EXPECT_EQ(countryOf(*db, "1.0.0.9"), "DE");
  EXPECT_EQ(countryOf(*db, "::ffff:1.0.0.9"), "DE");
  EXPECT_EQ(countryOf(*db, "1.0.1.9"), "FR");
  EXPECT_EQ(countryOf(*db, "1.0.2.9"), "");
  EXPECT_EQ(countryOf(*db, "1.0.4.9"), "");
  EXPECT_EQ(countryOf(*db, "200.1.2.3"), "US");
  EXPECT_EQ(countryOf(*db, "2001:db8::1"), "FR");
  EXPECT_EQ(countryOf(*db, "2a0f:1::1"), "DE");
  EXPECT_EQ(countryOf(*db, "2a10::1"), "US");
  EXPECT_EQ(countryOf(*db, "2a11::1"), "");
  EXPECT_EQ(countryOf(*db, "2002:100:1::1"), "");  // the 6to4 alias is not copied into IPv6
  EXPECT_EQ(db->entries(), 6u);                    // IPv4 read once, aliases skipped
  EXPECT_EQ(db->prefixesOf(cc("DE")), (std::vector<std::string>{"1.0.0.0/24", "2a00::/12"}));
  EXPECT_EQ(loader.status()[0].type, "mmdb");

  // Later zones override the mmdb.
  fs::create_directory(t / "z");
  writeFile(t / "z/it.zone", "1.0.0.128/25\n");
  GeoLoader both({mmdb(t / "c.mmdb"), zones(t / "z")});
  db = loadOk(both);
  EXPECT_EQ(countryOf(*db, "1.0.0.9"), "DE");
  EXPECT_EQ(countryOf(*db, "1.0.0.200"), "IT");

  // A truncated file is refused and the previous data stays.
  std::string whole = w.build();
  writeFile(t / "c.mmdb", whole.substr(0, whole.size() / 2));
  std::vector<std::string> errors;
  db = loader.reload(&errors);
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_EQ(errors[0].rfind(t / "c.mmdb" + ": ", 0), 0u) << errors[0];
  EXPECT_EQ(countryOf(*db, "1.0.0.9"), "DE");
}

TEST(Geo, MmdbIpv4Tree) {
  TempDir t;
  MmdbWriter w(4);
  size_t jp = w.record(countryRecord("country", "jp"));  // lowercase in the data: stored uppercase
  w.insert("203.0.113.0/24", jp);
  w.insert("0.0.0.0/8", jp);
  writeFile(t / "v4.mmdb", w.build());
  GeoLoader loader({mmdb(t / "v4.mmdb")});
  auto db = loadOk(loader);
  EXPECT_EQ(countryOf(*db, "203.0.113.5"), "JP");
  EXPECT_EQ(countryOf(*db, "0.1.2.3"), "JP");
  EXPECT_EQ(countryOf(*db, "203.0.114.5"), "");
  EXPECT_EQ(countryOf(*db, "2001:db8::1"), "");
  EXPECT_EQ(db->entries(), 2u);
}

}  // namespace
}  // namespace moat::control
