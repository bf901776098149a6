#include "moat/control/state_store.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <exception>
#include <nlohmann/json.hpp>
#include <string_view>

#include "moat/control/config_json.h"

namespace moat::control {

namespace {

using Json = nlohmann::ordered_json;

constexpr char kVersionsDir[] = "versions";
constexpr char kTempPrefix[] = ".tmp-";  // save()'s temporaries; never a version name
constexpr char kSuffix[] = ".json";
constexpr size_t kVersionDigits = 20;  // UINT64_MAX has 20 digits, so names sort numerically
// A stored document is at most a few MB (the API refuses bodies over 8 MiB);
// anything far larger is not ours and is not read into memory.
constexpr off_t kMaxFileBytes = 64 << 20;

std::string errnoText(int err) { return std::strerror(err); }

// mkdir -p with mode 0700 for what it creates.
bool makeDirs(const std::string& dir, std::string& err) {
  for (size_t pos = 1; pos <= dir.size(); ++pos) {
    if (pos != dir.size() && dir[pos] != '/') continue;
    const std::string prefix = dir.substr(0, pos);
    if (::mkdir(prefix.c_str(), 0700) == 0) continue;
    const int e = errno;
    struct stat st{};
    if (e == EEXIST && ::stat(prefix.c_str(), &st) == 0) {
      if (S_ISDIR(st.st_mode)) continue;
      err = "cannot create " + prefix + ": " + errnoText(ENOTDIR);
      return false;
    }
    // EACCES on an existing parent (e.g. "/var") is fine if it exists.
    if (::stat(prefix.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) continue;
    err = "cannot create " + prefix + ": " + errnoText(e);
    return false;
  }
  return true;
}

bool fsyncDir(const std::string& dir, std::string& err) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) {
    err = "cannot open " + dir + ": " + errnoText(errno);
    return false;
  }
  const bool ok = ::fsync(fd) == 0;
  const int e = errno;
  ::close(fd);
  if (!ok) err = "cannot fsync " + dir + ": " + errnoText(e);
  return ok;
}

// The version a file name stands for: exactly 20 digits and ".json".
std::optional<uint64_t> parseVersionName(std::string_view name) {
  const size_t suffixLen = sizeof kSuffix - 1;
  if (name.size() != kVersionDigits + suffixLen || name.substr(kVersionDigits) != kSuffix) {
    return std::nullopt;
  }
  uint64_t v = 0;
  const char* first = name.data();
  const char* last = first + kVersionDigits;
  if (std::any_of(first, last, [](char c) { return c < '0' || c > '9'; })) return std::nullopt;
  auto [ptr, ec] = std::from_chars(first, last, v);
  if (ec != std::errc() || ptr != last) return std::nullopt;  // beyond UINT64_MAX
  return v;
}

// Reads a whole file. ENOENT is reported through `missing` so callers can
// tell "absent" from "unreadable".
bool readFile(const std::string& path, std::string& out, std::string& err, bool* missing) {
  *missing = false;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int e = errno;
    *missing = e == ENOENT;
    err = "cannot open " + path + ": " + errnoText(e);
    return false;
  }
  struct stat st{};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size > kMaxFileBytes) {
    ::close(fd);
    err = path + ": not a regular file of at most " + std::to_string(kMaxFileBytes) + " bytes";
    return false;
  }
  out.clear();
  out.reserve(static_cast<size_t>(st.st_size));
  char buf[65536];
  while (true) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n > 0) {
      out.append(buf, static_cast<size_t>(n));
      if (out.size() > static_cast<size_t>(kMaxFileBytes)) break;
    } else if (n == 0) {
      break;
    } else if (errno != EINTR) {
      const int e = errno;
      ::close(fd);
      err = "cannot read " + path + ": " + errnoText(e);
      return false;
    }
  }
  ::close(fd);
  return true;
}

bool writeAll(int fd, const std::string& data) {
  size_t done = 0;
  while (done < data.size()) {
    const ssize_t n = ::write(fd, data.data() + done, data.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    done += static_cast<size_t>(n);
  }
  return true;
}

// Checks a version file's envelope. On success fills `meta` and, when given,
// `config` with the stored document; else sets err (without the path).
bool parseEnvelope(const std::string& text, uint64_t expected, StoredVersion& meta, Json* config,
                   std::string& err) {
  Json j = Json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) {
    err = "not valid JSON";
    return false;
  }
  if (!j.is_object()) {
    err = "not a JSON object";
    return false;
  }
  auto field = [&](const char* name, bool (Json::*is)() const noexcept) -> const Json* {
    auto it = j.find(name);
    if (it == j.end() || !((*it).*is)()) {
      err = std::string("missing or malformed \"") + name + "\"";
      return nullptr;
    }
    return &*it;
  };
  const Json* version = field("version", &Json::is_number_unsigned);
  if (version == nullptr) return false;
  if (version->get<uint64_t>() != expected) {
    err = "holds version " + std::to_string(version->get<uint64_t>()) + ", its name says " +
          std::to_string(expected);
    return false;
  }
  const Json* appliedAt = field("appliedAt", &Json::is_number_integer);
  const Json* source = appliedAt ? field("source", &Json::is_string) : nullptr;
  const Json* summary = source ? field("summary", &Json::is_string) : nullptr;
  const Json* doc = summary ? field("config", &Json::is_object) : nullptr;
  if (doc == nullptr) return false;
  if (appliedAt->is_number_unsigned() &&
      appliedAt->get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)) {
    err = "malformed \"appliedAt\"";
    return false;
  }
  meta.version = expected;
  meta.appliedAtUnix = appliedAt->get<int64_t>();
  meta.source = source->get<std::string>();
  meta.summary = summary->get<std::string>();
  if (config != nullptr) *config = *doc;
  return true;
}

}  // namespace

StateStore::StateStore(std::string dir, size_t keep)
    : dir_(std::move(dir)),
      versionsDir_(dir_ + "/" + kVersionsDir),
      keep_(std::max<size_t>(keep, 1)) {}

std::unique_ptr<StateStore> StateStore::open(const std::string& dir, std::string& err,
                                             size_t keep) {
  std::string d = dir;
  while (d.size() > 1 && d.back() == '/') d.pop_back();
  if (d.empty()) {
    err = "the state directory must not be empty";
    return nullptr;
  }
  std::unique_ptr<StateStore> store(new StateStore(d, keep));
  if (!makeDirs(store->dir_, err) || !makeDirs(store->versionsDir_, err)) return nullptr;
  if (::access(store->versionsDir_.c_str(), R_OK | W_OK | X_OK) != 0) {
    err = "cannot write " + store->versionsDir_ + ": " + errnoText(errno);
    return nullptr;
  }
  // Temporaries are only ever left by a save() that did not finish.
  if (DIR* dp = ::opendir(store->versionsDir_.c_str())) {
    while (const dirent* e = ::readdir(dp)) {
      if (std::strncmp(e->d_name, kTempPrefix, sizeof kTempPrefix - 1) == 0) {
        ::unlink((store->versionsDir_ + "/" + e->d_name).c_str());
      }
    }
    ::closedir(dp);
  }
  return store;
}

std::string StateStore::versionPath(uint64_t version) const {
  char name[kVersionDigits + sizeof kSuffix];
  std::snprintf(name, sizeof name, "%020llu%s", static_cast<unsigned long long>(version), kSuffix);
  return versionsDir_ + "/" + name;
}

bool StateStore::save(uint64_t version, const std::string& source, const std::string& summary,
                      const Config& config, std::string& err) {
  const std::string finalPath = versionPath(version);
  std::string text;
  try {
    Json j;
    j["version"] = version;
    j["appliedAt"] = static_cast<int64_t>(std::time(nullptr));
    j["source"] = source;
    j["summary"] = summary;
    j["config"] = Json::parse(configToJson(config, false));
    text = j.dump(2, ' ', false, Json::error_handler_t::replace) + "\n";
  } catch (const std::exception& e) {
    err = "cannot serialise version " + std::to_string(version) + ": " + e.what();
    return false;
  }

  std::string tmp = versionsDir_ + "/" + kTempPrefix + "XXXXXX";
  const int fd = ::mkostemp(tmp.data(), O_CLOEXEC);  // created 0600, O_EXCL
  if (fd < 0) {
    err = "cannot create a file in " + versionsDir_ + ": " + errnoText(errno);
    return false;
  }
  auto fail = [&](const char* what, int e) {
    err = std::string("cannot ") + what + " " + finalPath + ": " + errnoText(e);
    ::unlink(tmp.c_str());
    return false;
  };
  // fchmod: the umask could have taken bits away from mkostemp's 0600.
  if (::fchmod(fd, 0600) != 0 || !writeAll(fd, text) || ::fsync(fd) != 0) {
    const int e = errno;
    ::close(fd);
    return fail("write", e);
  }
  if (::close(fd) != 0) return fail("write", errno);
  if (::rename(tmp.c_str(), finalPath.c_str()) != 0) return fail("rename into", errno);
  if (!fsyncDir(versionsDir_, err)) return false;
  if (!prune(err)) {
    err = "version " + std::to_string(version) +
          " saved, but old versions were not removed: " + err;
    return false;
  }
  return true;
}

bool StateStore::versionNumbers(std::vector<uint64_t>& out, std::string& err) const {
  out.clear();
  DIR* dp = ::opendir(versionsDir_.c_str());
  if (dp == nullptr) {
    err = "cannot read " + versionsDir_ + ": " + errnoText(errno);
    return false;
  }
  errno = 0;
  while (const dirent* e = ::readdir(dp)) {
    if (auto v = parseVersionName(e->d_name)) out.push_back(*v);
    errno = 0;
  }
  const int e = errno;
  ::closedir(dp);
  if (e != 0) {
    err = "cannot read " + versionsDir_ + ": " + errnoText(e);
    return false;
  }
  std::sort(out.begin(), out.end());
  return true;
}

bool StateStore::prune(std::string& err) {
  std::vector<uint64_t> versions;
  if (!versionNumbers(versions, err)) return false;
  if (versions.size() <= keep_) return true;
  const size_t excess = versions.size() - keep_;
  for (size_t i = 0; i < excess; ++i) {
    const std::string path = versionPath(versions[i]);
    if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
      err = "cannot delete " + path + ": " + errnoText(errno);
      return false;
    }
  }
  return true;
}

std::vector<StoredVersion> StateStore::list(std::vector<std::string>* warnings) const {
  std::vector<StoredVersion> out;
  std::vector<uint64_t> versions;
  std::string err;
  if (!versionNumbers(versions, err)) {
    if (warnings != nullptr) warnings->push_back(err);
    return out;
  }
  for (auto it = versions.rbegin(); it != versions.rend(); ++it) {
    const std::string path = versionPath(*it);
    std::string text;
    bool missing = false;
    StoredVersion meta;
    if (!readFile(path, text, err, &missing)) {
      // Missing: deleted by a prune() since the directory was read.
      if (!missing && warnings != nullptr) warnings->push_back("skipping " + err);
      continue;
    }
    if (!parseEnvelope(text, *it, meta, nullptr, err)) {
      if (warnings != nullptr) warnings->push_back("skipping " + path + ": " + err);
      continue;
    }
    out.push_back(std::move(meta));
  }
  return out;
}

std::optional<Config> StateStore::load(uint64_t version, std::string& err) const {
  const std::string path = versionPath(version);
  std::string text;
  bool missing = false;
  if (!readFile(path, text, err, &missing)) {
    if (missing) err = "no stored version " + std::to_string(version) + " (" + path + ")";
    return std::nullopt;
  }
  StoredVersion meta;
  Json doc;
  if (!parseEnvelope(text, version, meta, &doc, err)) {
    err = path + ": " + err;
    return std::nullopt;
  }
  ConfigResult r = parseConfig(doc.dump(-1, ' ', false, Json::error_handler_t::replace));
  if (!r.config) {
    err = path + ": the stored config is invalid: " +
          (r.errors.empty() ? std::string("unknown error") : r.errors[0].toString());
    if (r.errors.size() > 1) err += " (and " + std::to_string(r.errors.size() - 1) + " more)";
    return std::nullopt;
  }
  return std::move(r.config);
}

std::optional<std::pair<uint64_t, Config>> StateStore::latest(
    std::vector<std::string>* warnings) const {
  for (const StoredVersion& v : list(warnings)) {
    std::string err;
    if (std::optional<Config> c = load(v.version, err)) {
      return std::make_pair(v.version, std::move(*c));
    }
    if (warnings != nullptr) warnings->push_back("skipping " + err);
  }
  return std::nullopt;
}

}  // namespace moat::control
