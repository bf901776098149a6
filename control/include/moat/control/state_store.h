// Applied config versions kept on disk, so the admin API can list and roll
// back to them and moatd can start from the last applied config.
//
// Layout: <dir>/versions/<version as 20 digits>.json, each a JSON object
// {"version": N, "appliedAt": unix seconds, "source": "...", "summary": "...",
//  "config": <the configToJson document>}, mode 0600, in directories created
// 0700. Existing directories keep the mode they have.
//
// Control thread only: every call does blocking file I/O (save() also fsyncs
// twice, typically a few milliseconds on a local disk) and allocates. Calls
// on one StateStore must not overlap; one directory must have one StateStore
// per process. Failures are returned, never thrown (std::bad_alloc aside).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "moat/control/config.h"

namespace moat::control {

struct StoredVersion {
  uint64_t version = 0;
  int64_t appliedAtUnix = 0;  // seconds since the epoch, when save() ran
  std::string source;         // "startup", "file", "api", "rollback"
  std::string summary;        // e.g. "PUT /api/v1/config"
  bool operator==(const StoredVersion&) const = default;
};

class StateStore {
 public:
  // How many versions are kept by default (the API promises the last 100).
  static constexpr size_t kDefaultKeep = 100;

  // Opens `dir` and its "versions" subdirectory, creating missing ones (and
  // missing parents) with mode 0700, and removes temporary files a crash in
  // save() may have left. `keep` (at least 1) versions survive each save().
  // Returns null and sets err on failure ("cannot create /x: Permission denied").
  static std::unique_ptr<StateStore> open(const std::string& dir, std::string& err,
                                          size_t keep = kDefaultKeep);

  // Persists one applied version atomically: the file is written under a
  // temporary name in the same directory, fsynced, renamed into place and
  // the directory fsynced, so after a crash it is either complete or absent.
  // Saving an existing version replaces it. Then deletes all but the newest
  // `keep` versions (by number). False + err on any failure; when only the
  // clean-up failed the version is saved and err says so.
  bool save(uint64_t version, const std::string& source, const std::string& summary,
            const Config& config, std::string& err);

  // Every stored version, newest first. Reads each file's envelope but does
  // not validate its config (load() does). Unreadable or corrupt files are
  // skipped, each with one line in `warnings` naming the file.
  std::vector<StoredVersion> list(std::vector<std::string>* warnings = nullptr) const;

  // One version's config, parsed and validated with parseConfig; nullopt and
  // err when the version is absent, its file corrupt or its config invalid.
  std::optional<Config> load(uint64_t version, std::string& err) const;

  // The newest version whose config loads, or nullopt when there is none;
  // every version skipped on the way adds a line to `warnings`.
  std::optional<std::pair<uint64_t, Config>> latest(
      std::vector<std::string>* warnings = nullptr) const;

  // The directory as given to open() (without a trailing '/'). Lives as long
  // as the store.
  const std::string& dir() const { return dir_; }

 private:
  StateStore(std::string dir, size_t keep);

  std::string versionPath(uint64_t version) const;
  // Version numbers of the files in versions/ whose names have the right
  // form, ascending. False + err when the directory cannot be read.
  bool versionNumbers(std::vector<uint64_t>& out, std::string& err) const;
  bool prune(std::string& err);

  std::string dir_;
  std::string versionsDir_;
  size_t keep_;
};

}  // namespace moat::control
