// moat-bench options: command line, target URL, source-address spread and
// request mixes. Everything here runs once at start on the main thread; it
// allocates freely and reports every bad input as a message naming the
// argument (or the mix file entry) at fault.
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>

#include <cstdint>
#include <string>
#include <vector>

namespace moat::bench {

struct Target {
  bool tls = false;
  std::string host;         // as written in the URL (no brackets)
  uint16_t port = 0;
  std::string path = "/";   // origin-form, with query
  std::string hostHeader;   // host[:port] as the Host header carries it
  sockaddr_storage addr{};  // resolved once at start
  socklen_t addrLen = 0;
};

// Parses http[s]://HOST[:PORT][/PATH] and resolves HOST (a literal or a name,
// first address). False with `err` set ("moat-bench: bad URL ...: ...").
bool parseUrl(const std::string& url, Target& out, std::string& err);

// One kind of request in a mix. `wire` is the request bytes as sent.
struct MixEntry {
  std::string method = "GET";
  std::string target = "/";
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
  uint32_t weight = 1;
  std::string wire;
  bool head = false;  // HEAD: the response carries no body
};

// A request mix: entries picked by weight (see pick()).
struct Mix {
  std::vector<MixEntry> entries;
  std::vector<uint32_t> cumulative;  // running sum of weights
  uint64_t totalWeight = 0;
  // Entry for a uniform 64-bit random number; O(log entries).
  const MixEntry& pick(uint64_t rnd) const;
};

// Loads a mix file: a JSON array of objects
//   {"method": "GET", "target": "/p?q=1", "headers": {"Name": "value"},
//    "body": "...", "weight": 3}
// (only "target" is required; weight 1..1000000, default 1). Every entry is
// checked like the request line and header rules moat itself enforces
// (token method, origin-form target without spaces or controls, header names
// tokens, values without CR/LF/NUL). Errors name the file and entry index.
bool loadMix(const std::string& path, Mix& out, std::string& err);

// Builds each entry's wire bytes: request line, Host, the entry's headers,
// then `extraHeaders`, Content-Length when there is a body, and
// "Connection: close" when `closeEach`.
void finalizeMix(Mix& mix, const Target& t, const std::vector<std::pair<std::string, std::string>>& extraHeaders,
                 bool closeEach);

// Source-address spread: connections bind round robin to the addresses of a
// CIDR (IPv4 only, at most /8 .. /32), skipping the network's .0 and
// broadcast-like .255 host parts only when the prefix is shorter than /31.
struct SourceSpread {
  uint32_t base = 0;   // host order, first usable address
  uint32_t count = 0;  // 0 = no spread
  uint32_t addressAt(uint64_t i) const;  // host order
};
bool parseSourceCidr(const std::string& cidr, SourceSpread& out, std::string& err);

enum class TlsMode : uint8_t { kKeepAlive, kHandshake, kResume };

struct Options {
  std::string url;
  Target target;
  uint32_t connections = 16;
  uint32_t threads = 1;
  double durationS = 10;
  bool durationSet = false;  // -d given (with -n it caps the run)
  uint64_t requests = 0;  // 0 = run for durationS
  double warmupS = 0;
  uint32_t pipeline = 1;
  double rate = 0;  // 0 = closed loop
  double timeoutS = 5;
  bool closeEach = false;  // http: one connection per request
  TlsMode tlsMode = TlsMode::kKeepAlive;
  std::string caFile;  // verify the server against it (default: no verification)
  std::string sni;     // default: the URL host when it is a name
  SourceSpread source;
  std::string mixFile;
  std::string method = "GET";
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;
  bool json = false;
  int progress = -1;  // -1 = when stderr is a terminal
  Mix mix;
};

// Parses argv into `out`. Returns 0 to run, 1 when --help was printed, 2 on
// a usage error (message in `err`).
int parseOptions(int argc, char** argv, Options& out, std::string& err);
const char* usageText();

}  // namespace moat::bench
