// libFuzzer target: the config document parser and validator. Never throws,
// never crashes; a document it accepts builds a runtime snapshot.
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "moat/control/config.h"
#include "moat/control/snapshot.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view doc(reinterpret_cast<const char*>(data), size);
  moat::control::ConfigResult r = moat::control::parseConfig(doc);
  if (r.config.has_value() == !r.errors.empty()) abort();
  bool needsTls = false;  // TLS contexts come from files (l7/tls.h), not fuzzed here
  if (r.config) {
    for (const auto& l : r.config->listeners) {
      needsTls = needsTls || l.protocol == moat::control::ListenerProtocol::kHttps;
    }
    for (const auto& p : r.config->pools) needsTls = needsTls || p.tls.enabled;
  }
  if (r.config && !needsTls) {
    auto snap = moat::control::buildSnapshot(*r.config, 1);
    if (snap->pools.size() != r.config->pools.size()) abort();
  }
  return 0;
}
