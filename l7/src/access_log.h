// JSON-lines access log formatting. Worker thread only; appends to a buffer
// the worker flushes once per loop turn (no syscall per request).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace moat::l7 {

struct AccessRecord {
  std::string_view time;  // RFC 3339 UTC, refreshed once per second
  std::string_view client;
  std::string_view method;
  std::string_view target;
  std::string_view host;
  int status = 0;
  uint64_t bytesIn = 0, bytesOut = 0;
  std::string_view upstream;  // backend key or ""
  std::string_view route;
  uint64_t durationMs = 0, upstreamMs = 0;
  std::string_view requestId;
  std::string_view error;  // why the proxy answered itself (400/408/5xx), else ""
  std::string_view rateLimit;  // rule that refused, "dry-run:<rule>", "banned", else ""
  std::string_view waf;        // "blocked:<rule id>", "detected:<rule id>", else ""
  std::string_view geo;        // country refused by the geo policy ("CN", "unknown"), else ""
};

// Appends one line (with '\n'). Escapes per RFC 8259; bytes >= 0x80 that are
// not valid UTF-8 are written as \u00XX so the line is always valid JSON.
void appendAccessLine(std::string& out, const AccessRecord& r);
void appendJsonString(std::string& out, std::string_view s);

}  // namespace moat::l7
