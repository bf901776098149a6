// The on-disk store of applied config versions: save/list/load/latest, the
// keep limit, corrupt files, modes and atomic writes. Each test works in its
// own mkdtemp directory.
#include "moat/control/state_store.h"

#include <dirent.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace moat::control {
namespace {

class StateStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/moat-state-test-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    root_ = tmpl;
    dir_ = root_ + "/state";  // absent: open() creates it
  }
  void TearDown() override { std::filesystem::remove_all(root_); }

  std::unique_ptr<StateStore> open(size_t keep = StateStore::kDefaultKeep) {
    std::string err;
    std::unique_ptr<StateStore> s = StateStore::open(dir_, err, keep);
    EXPECT_NE(s, nullptr) << err;
    return s;
  }

  // A config that differs per version (the first backend's weight).
  static Config configFor(uint64_t version) {
    ConfigResult r = parseConfig(defaultConfigJson());
    Config c = *r.config;
    c.pools[0].backends[0].weight = static_cast<uint32_t>(version % 1000);
    return c;
  }

  static void save(StateStore& s, uint64_t version) {
    std::string err;
    ASSERT_TRUE(s.save(version, "api", "PUT /api/v1/config #" + std::to_string(version),
                       configFor(version), err))
        << err;
  }

  std::string versionFile(uint64_t version) const {
    char name[32];
    std::snprintf(name, sizeof name, "%020llu.json", static_cast<unsigned long long>(version));
    return dir_ + "/versions/" + name;
  }

  std::vector<std::string> versionsDirEntries() const {
    std::vector<std::string> names;
    for (const auto& e : std::filesystem::directory_iterator(dir_ + "/versions")) {
      names.push_back(e.path().filename().string());
    }
    std::sort(names.begin(), names.end());
    return names;
  }

  static std::vector<uint64_t> numbers(const std::vector<StoredVersion>& v) {
    std::vector<uint64_t> out;
    for (const StoredVersion& s : v) out.push_back(s.version);
    return out;
  }

  static void overwrite(const std::string& path, const std::string& text) {
    std::ofstream out(path, std::ios::trunc);
    out << text;
  }

  std::string root_;
  std::string dir_;
};

TEST_F(StateStoreTest, SaveListLoadLatest) {
  auto store = open();
  ASSERT_NE(store, nullptr);
  EXPECT_EQ(store->dir(), dir_);
  EXPECT_TRUE(store->list().empty());
  EXPECT_FALSE(store->latest().has_value());

  const int64_t before = std::time(nullptr);
  for (uint64_t v : {1, 2, 3}) save(*store, v);
  const int64_t after = std::time(nullptr);

  std::vector<std::string> warnings;
  std::vector<StoredVersion> list = store->list(&warnings);
  EXPECT_TRUE(warnings.empty());
  ASSERT_EQ(numbers(list), (std::vector<uint64_t>{3, 2, 1}));  // newest first
  EXPECT_EQ(list[0].source, "api");
  EXPECT_EQ(list[0].summary, "PUT /api/v1/config #3");
  EXPECT_GE(list[0].appliedAtUnix, before);
  EXPECT_LE(list[0].appliedAtUnix, after);

  std::string err;
  std::optional<Config> two = store->load(2, err);
  ASSERT_TRUE(two.has_value()) << err;
  EXPECT_TRUE(*two == configFor(2));
  EXPECT_FALSE(*two == configFor(3));

  auto latest = store->latest();
  ASSERT_TRUE(latest.has_value());
  EXPECT_EQ(latest->first, 3u);
  EXPECT_TRUE(latest->second == configFor(3));

  EXPECT_FALSE(store->load(4, err).has_value());
  EXPECT_NE(err.find("no stored version 4"), std::string::npos) << err;

  // A second store on the same directory (moatd's next start) sees it all.
  store.reset();
  auto reopened = open();
  ASSERT_NE(reopened, nullptr);
  EXPECT_EQ(numbers(reopened->list()), (std::vector<uint64_t>{3, 2, 1}));
}

TEST_F(StateStoreTest, FileHoldsTheEnvelopeAndTheFullDocument) {
  auto store = open();
  ASSERT_NE(store, nullptr);
  save(*store, 7);
  std::ifstream in(versionFile(7));
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  for (const char* member : {R"("version": 7)", R"("appliedAt": )", R"("source": "api")",
                             R"("summary": "PUT /api/v1/config #7")", R"("config": {)"}) {
    EXPECT_NE(text.find(member), std::string::npos) << member << "\n" << text;
  }
  // Defaults are stored too: the version does not depend on this build's defaults.
  EXPECT_NE(text.find(R"("maglevTableSize": 65537)"), std::string::npos) << text;
}

TEST_F(StateStoreTest, SavingAVersionAgainReplacesIt) {
  auto store = open();
  ASSERT_NE(store, nullptr);
  save(*store, 5);
  std::string err;
  ASSERT_TRUE(store->save(5, "rollback", "again", configFor(9), err)) << err;
  std::vector<StoredVersion> list = store->list();
  ASSERT_EQ(list.size(), 1u);
  EXPECT_EQ(list[0].source, "rollback");
  EXPECT_TRUE(*store->load(5, err) == configFor(9));
}

TEST_F(StateStoreTest, KeepsOnlyTheNewest) {
  auto store = open(/*keep=*/3);
  ASSERT_NE(store, nullptr);
  for (uint64_t v = 1; v <= 5; ++v) save(*store, v);
  EXPECT_EQ(numbers(store->list()), (std::vector<uint64_t>{5, 4, 3}));
  EXPECT_FALSE(std::filesystem::exists(versionFile(1)));
  EXPECT_FALSE(std::filesystem::exists(versionFile(2)));
  std::string err;
  EXPECT_FALSE(store->load(1, err).has_value());
  // By number, not by age: saving an old number keeps the three highest.
  save(*store, 2);
  EXPECT_EQ(numbers(store->list()), (std::vector<uint64_t>{5, 4, 3}));
  // Large numbers sort numerically (20 digits).
  save(*store, 18446744073709551615ull);
  EXPECT_EQ(numbers(store->list()), (std::vector<uint64_t>{18446744073709551615ull, 5, 4}));
}

TEST_F(StateStoreTest, DefaultKeepIsAHundred) {
  auto store = open();
  ASSERT_NE(store, nullptr);
  for (uint64_t v = 1; v <= 102; ++v) save(*store, v);
  std::vector<StoredVersion> list = store->list();
  ASSERT_EQ(list.size(), 100u);
  EXPECT_EQ(list.front().version, 102u);
  EXPECT_EQ(list.back().version, 3u);
}

TEST_F(StateStoreTest, CorruptFilesAreSkippedWithAWarning) {
  auto store = open();
  ASSERT_NE(store, nullptr);
  for (uint64_t v : {1, 2, 3, 4}) save(*store, v);
  overwrite(versionFile(4), "{\"version\": 4, \"appliedAt\": 1, \"sour");  // truncated
  overwrite(versionFile(2), R"({"version": 9, "appliedAt": 1, "source": "api", "summary": "",
                               "config": {}})");  // number does not match its name
  // Envelope fine, config invalid: listed, but neither loadable nor latest.
  overwrite(versionFile(3), R"({"version": 3, "appliedAt": 1, "source": "api", "summary": "",
                               "config": {"workers": 1}})");
  overwrite(dir_ + "/versions/notes.txt", "not a version");  // other names are ignored

  std::vector<std::string> warnings;
  EXPECT_EQ(numbers(store->list(&warnings)), (std::vector<uint64_t>{3, 1}));
  ASSERT_EQ(warnings.size(), 2u);
  EXPECT_NE(warnings[0].find(versionFile(4)), std::string::npos) << warnings[0];
  EXPECT_NE(warnings[0].find("not valid JSON"), std::string::npos) << warnings[0];
  EXPECT_NE(warnings[1].find(versionFile(2)), std::string::npos) << warnings[1];
  EXPECT_NE(warnings[1].find("holds version 9"), std::string::npos) << warnings[1];

  std::string err;
  EXPECT_FALSE(store->load(3, err).has_value());
  EXPECT_NE(err.find("listeners: missing required field"), std::string::npos) << err;
  EXPECT_FALSE(store->load(4, err).has_value());
  EXPECT_NE(err.find("not valid JSON"), std::string::npos) << err;

  warnings.clear();
  auto latest = store->latest(&warnings);
  ASSERT_TRUE(latest.has_value());
  EXPECT_EQ(latest->first, 1u);
  EXPECT_TRUE(latest->second == configFor(1));
  ASSERT_EQ(warnings.size(), 3u);  // 4 and 2 from the listing, 3 from loading
  EXPECT_NE(warnings[2].find(versionFile(3)), std::string::npos) << warnings[2];

  // Nothing readable at all: no latest, no crash.
  overwrite(versionFile(1), "");
  overwrite(versionFile(3), "[]");
  EXPECT_FALSE(store->latest().has_value());
}

TEST_F(StateStoreTest, ModesAre0700And0600) {
  const mode_t oldMask = ::umask(0);  // nothing taken away: the modes must be explicit
  auto store = open();
  ASSERT_NE(store, nullptr);
  save(*store, 1);
  ::umask(oldMask);
  struct stat st{};
  ASSERT_EQ(::stat(dir_.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0700u);
  ASSERT_EQ(::stat((dir_ + "/versions").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0700u);
  ASSERT_EQ(::stat(versionFile(1).c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  EXPECT_TRUE(S_ISREG(st.st_mode));
}

TEST_F(StateStoreTest, MissingParentsAreCreated) {
  dir_ = root_ + "/a/b/state/";  // trailing '/' is dropped
  auto store = open();
  ASSERT_NE(store, nullptr);
  EXPECT_EQ(store->dir(), root_ + "/a/b/state");
  struct stat st{};
  ASSERT_EQ(::stat((root_ + "/a").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);
}

TEST_F(StateStoreTest, WritesAreAtomicAndLeaveNoTemporaries) {
  auto store = open(/*keep=*/2);
  ASSERT_NE(store, nullptr);
  for (uint64_t v = 1; v <= 4; ++v) save(*store, v);
  EXPECT_EQ(versionsDirEntries(),
            (std::vector<std::string>{"00000000000000000003.json", "00000000000000000004.json"}));

  // A temporary left by a crash mid-save is neither listed nor kept.
  overwrite(dir_ + "/versions/.tmp-crashed", "{\"version\": 5, \"appl");
  EXPECT_EQ(numbers(store->list()), (std::vector<uint64_t>{4, 3}));
  store.reset();
  store = open(2);
  ASSERT_NE(store, nullptr);
  EXPECT_EQ(versionsDirEntries(),
            (std::vector<std::string>{"00000000000000000003.json", "00000000000000000004.json"}));
}

TEST_F(StateStoreTest, OpenFailsWithAReason) {
  const std::string file = root_ + "/plain-file";
  overwrite(file, "x");
  std::string err;
  EXPECT_EQ(StateStore::open(file + "/state", err), nullptr);
  EXPECT_EQ(err, "cannot create " + file + ": Not a directory");
  err.clear();
  EXPECT_EQ(StateStore::open(file, err), nullptr);
  EXPECT_EQ(err, "cannot create " + file + ": Not a directory");
  EXPECT_EQ(StateStore::open("", err), nullptr);
  EXPECT_FALSE(err.empty());
}

TEST_F(StateStoreTest, SaveFailsWhenTheDirectoryIsGone) {
  auto store = open();
  ASSERT_NE(store, nullptr);
  std::filesystem::remove_all(dir_);
  std::string err;
  EXPECT_FALSE(store->save(1, "api", "", configFor(1), err));
  EXPECT_NE(err.find(dir_ + "/versions"), std::string::npos) << err;
  std::vector<std::string> warnings;
  EXPECT_TRUE(store->list(&warnings).empty());
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_FALSE(store->latest().has_value());
}

}  // namespace
}  // namespace moat::control
