// A Config written back out as the JSON document parseConfig reads, and the
// difference between two configs in the same terms.
//
// Control-plane only (the admin API, the state store, reload logging): both
// functions allocate in proportion to the config, never block and never
// throw except std::bad_alloc. Strings that are not valid UTF-8 (which
// parseConfig never produces) are written with U+FFFD in place of the bad
// bytes rather than failing.
#pragma once

#include <string>
#include <vector>

#include "moat/control/config.h"

namespace moat::control {

// The full document for a config: every field, defaults included, in the
// same spelling and member order parseConfig accepts, so that
// parseConfig(configToJson(c)).config == c for every c parseConfig can
// produce. Optional objects whose presence switches a feature on (a pool's
// "tls", "healthCheck", "outlierDetection"; a listener's "geo"; "clientAuth")
// appear only when the feature is on. `pretty`: two-space indentation, else
// one line.
std::string configToJson(const Config& c, bool pretty = true);

struct ConfigDiffEntry {
  std::string path;     // spelled as ConfigError paths: "pools[0].backends[1].weight"
  std::string oldJson;  // compact JSON text of the old value; "" = added
  std::string newJson;  // compact JSON text of the new value; "" = removed
  bool operator==(const ConfigDiffEntry&) const = default;
};

// Structural diff of configToJson(before) and configToJson(after): objects
// are compared by key, arrays by index (so removing the first of three pools
// reads as pools[0] and pools[1] changed and pools[2] removed), and a value
// of a different type, or a scalar that differs, is one entry at its own
// path. Entries come in document order of `before`, members only in `after`
// last within their object. Empty when the configs are equal.
std::vector<ConfigDiffEntry> diffConfigs(const Config& before, const Config& after);

}  // namespace moat::control
