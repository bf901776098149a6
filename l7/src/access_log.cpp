#include "access_log.h"

namespace moat::l7 {

void appendJsonString(std::string& out, std::string_view s) {
  static const char kHex[] = "0123456789abcdef";
  out.push_back('"');
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') {
      out.push_back('\\');
      out.push_back(static_cast<char>(c));
    } else if (c < 0x20 || c >= 0x7f) {
      // Control bytes and non-ASCII are escaped byte-wise: request targets
      // are bytes, not text, and the log must stay valid JSON whatever came in.
      out.append("\\u00");
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 15]);
    } else {
      out.push_back(static_cast<char>(c));
    }
  }
  out.push_back('"');
}

void appendAccessLine(std::string& out, const AccessRecord& r) {
  out.append("{\"time\":");
  appendJsonString(out, r.time);
  out.append(",\"client\":");
  appendJsonString(out, r.client);
  out.append(",\"method\":");
  appendJsonString(out, r.method);
  out.append(",\"target\":");
  appendJsonString(out, r.target);
  out.append(",\"host\":");
  appendJsonString(out, r.host);
  out.append(",\"status\":");
  out.append(std::to_string(r.status));
  out.append(",\"bytes_in\":");
  out.append(std::to_string(r.bytesIn));
  out.append(",\"bytes_out\":");
  out.append(std::to_string(r.bytesOut));
  out.append(",\"upstream\":");
  appendJsonString(out, r.upstream);
  out.append(",\"route\":");
  appendJsonString(out, r.route);
  out.append(",\"duration_ms\":");
  out.append(std::to_string(r.durationMs));
  out.append(",\"upstream_ms\":");
  out.append(std::to_string(r.upstreamMs));
  out.append(",\"request_id\":");
  appendJsonString(out, r.requestId);
  if (!r.rateLimit.empty()) {
    out.append(",\"rate_limit\":");
    appendJsonString(out, r.rateLimit);
  }
  if (!r.geo.empty()) {
    out.append(",\"geo\":");
    appendJsonString(out, r.geo);
  }
  if (!r.waf.empty()) {
    out.append(",\"waf\":");
    appendJsonString(out, r.waf);
  }
  if (!r.error.empty()) {
    out.append(",\"error\":");
    appendJsonString(out, r.error);
  }
  out.append("}\n");
}

}  // namespace moat::l7
