#include "options.h"

#include <arpa/inet.h>
#include <netdb.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

namespace moat::bench {
namespace {

bool isTchar(unsigned char c) {
  if (std::isalnum(c)) return true;
  return std::strchr("!#$%&'*+-.^_`|~", c) != nullptr && c != 0;
}

bool isToken(const std::string& s) {
  if (s.empty()) return false;
  return std::all_of(s.begin(), s.end(), [](char c) { return isTchar(static_cast<unsigned char>(c)); });
}

// Header values: visible ASCII, SP, HTAB and obs-text; no CR, LF, NUL or
// other controls (what moat's own parser accepts).
bool isFieldValue(const std::string& s) {
  for (unsigned char c : s) {
    if (c == '\t') continue;
    if (c < 0x20 || c == 0x7f) return false;
  }
  return true;
}

// Origin-form or asterisk: starts with '/', no SP, controls or '#'.
bool isOriginTarget(const std::string& s) {
  if (s.empty() || s[0] != '/') return false;
  for (unsigned char c : s) {
    if (c <= 0x20 || c == 0x7f || c == '#') return false;
  }
  return true;
}

bool parseNumber(const char* name, const std::string& v, double lo, double hi, double& out, std::string& err) {
  char* end = nullptr;
  errno = 0;
  double d = std::strtod(v.c_str(), &end);
  if (v.empty() || end == nullptr || *end != '\0' || errno != 0 || !std::isfinite(d) || d < lo || d > hi) {
    std::ostringstream o;
    o << "moat-bench: " << name << " " << v << ": need a number in [" << lo << ", " << hi << "]";
    err = o.str();
    return false;
  }
  out = d;
  return true;
}

template <typename T>
bool parseInt(const char* name, const std::string& v, uint64_t lo, uint64_t hi, T& out, std::string& err) {
  char* end = nullptr;
  errno = 0;
  unsigned long long n = std::strtoull(v.c_str(), &end, 10);
  if (v.empty() || v[0] == '-' || end == nullptr || *end != '\0' || errno != 0 || n < lo || n > hi) {
    err = "moat-bench: " + std::string(name) + " " + v + ": need an integer in [" + std::to_string(lo) + ", " +
          std::to_string(hi) + "]";
    return false;
  }
  out = static_cast<T>(n);
  return true;
}

bool splitHeader(const std::string& h, std::pair<std::string, std::string>& out, std::string& err) {
  size_t colon = h.find(':');
  if (colon == std::string::npos) {
    err = "moat-bench: header '" + h + "': need 'Name: value'";
    return false;
  }
  std::string name = h.substr(0, colon);
  std::string value = h.substr(colon + 1);
  size_t b = value.find_first_not_of(" \t");
  value = b == std::string::npos ? "" : value.substr(b);
  while (!value.empty() && (value.back() == ' ' || value.back() == '\t')) value.pop_back();
  if (!isToken(name)) {
    err = "moat-bench: header '" + h + "': the name is not an HTTP token";
    return false;
  }
  if (!isFieldValue(value)) {
    err = "moat-bench: header '" + h + "': the value holds control bytes";
    return false;
  }
  out = {name, value};
  return true;
}

bool iequals(const std::string& a, const char* b) {
  return a.size() == std::strlen(b) &&
         std::equal(a.begin(), a.end(), b, [](char x, char y) { return std::tolower(x) == std::tolower(y); });
}

}  // namespace

bool parseUrl(const std::string& url, Target& out, std::string& err) {
  auto bad = [&](const std::string& why) {
    err = "moat-bench: bad URL '" + url + "': " + why;
    return false;
  };
  std::string rest;
  if (url.rfind("http://", 0) == 0) {
    out.tls = false;
    rest = url.substr(7);
  } else if (url.rfind("https://", 0) == 0) {
    out.tls = true;
    rest = url.substr(8);
  } else {
    return bad("need http:// or https://");
  }
  size_t slash = rest.find('/');
  std::string authority = rest.substr(0, slash);
  out.path = slash == std::string::npos ? "/" : rest.substr(slash);
  if (!isOriginTarget(out.path)) return bad("the path holds spaces, controls or '#'");
  if (authority.empty()) return bad("no host");
  if (authority.find('@') != std::string::npos) return bad("user info is not supported");
  std::string portText;
  if (authority[0] == '[') {
    size_t close = authority.find(']');
    if (close == std::string::npos) return bad("unclosed '[' in the host");
    out.host = authority.substr(1, close - 1);
    if (close + 1 < authority.size()) {
      if (authority[close + 1] != ':') return bad("junk after ']'");
      portText = authority.substr(close + 2);
    }
  } else {
    size_t colon = authority.rfind(':');
    out.host = authority.substr(0, colon);
    if (colon != std::string::npos) portText = authority.substr(colon + 1);
    if (out.host.find(':') != std::string::npos) return bad("an IPv6 host needs brackets");
  }
  if (out.host.empty()) return bad("no host");
  out.port = out.tls ? 443 : 80;
  if (!portText.empty() || (authority.back() == ':')) {
    uint16_t p = 0;
    std::string e;
    if (!parseInt("port", portText, 1, 65535, p, e)) return bad("the port must be 1..65535");
    out.port = p;
  }
  out.hostHeader = authority;

  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  addrinfo* res = nullptr;
  std::string port = std::to_string(out.port);
  int rc = getaddrinfo(out.host.c_str(), port.c_str(), &hints, &res);
  if (rc != 0 || res == nullptr) return bad(std::string("cannot resolve the host: ") + gai_strerror(rc));
  std::memcpy(&out.addr, res->ai_addr, res->ai_addrlen);
  out.addrLen = res->ai_addrlen;
  freeaddrinfo(res);
  return true;
}

const MixEntry& Mix::pick(uint64_t rnd) const {
  if (entries.size() == 1) return entries[0];
  uint64_t x = rnd % totalWeight;
  auto it = std::upper_bound(cumulative.begin(), cumulative.end(), x);
  return entries[static_cast<size_t>(it - cumulative.begin())];
}

bool loadMix(const std::string& path, Mix& out, std::string& err) {
  std::ifstream f(path);
  if (!f) {
    err = "moat-bench: mix file " + path + ": " + std::strerror(errno);
    return false;
  }
  nlohmann::json doc;
  try {
    doc = nlohmann::json::parse(f);
  } catch (const std::exception& e) {
    err = "moat-bench: mix file " + path + ": not valid JSON: " + e.what();
    return false;
  }
  if (!doc.is_array() || doc.empty()) {
    err = "moat-bench: mix file " + path + ": need a non-empty JSON array of requests";
    return false;
  }
  out = Mix{};
  for (size_t i = 0; i < doc.size(); ++i) {
    const auto& e = doc[i];
    std::string where = "moat-bench: mix file " + path + ": entry " + std::to_string(i) + ": ";
    if (!e.is_object()) {
      err = where + "need an object";
      return false;
    }
    MixEntry m;
    for (auto it = e.begin(); it != e.end(); ++it) {
      const std::string& k = it.key();
      const auto& v = it.value();
      if (k == "method") {
        if (!v.is_string() || !isToken(v.get<std::string>())) {
          err = where + "\"method\" must be an HTTP token";
          return false;
        }
        m.method = v.get<std::string>();
      } else if (k == "target") {
        if (!v.is_string() || !isOriginTarget(v.get<std::string>())) {
          err = where + "\"target\" must be a string starting with '/' without spaces, controls or '#'";
          return false;
        }
        m.target = v.get<std::string>();
      } else if (k == "headers") {
        if (!v.is_object()) {
          err = where + "\"headers\" must be an object of name: value strings";
          return false;
        }
        for (auto h = v.begin(); h != v.end(); ++h) {
          if (!h.value().is_string() || !isToken(h.key()) || !isFieldValue(h.value().get<std::string>())) {
            err = where + "header \"" + h.key() + "\": need a token name and a string value without CR, LF or NUL";
            return false;
          }
          if (iequals(h.key(), "content-length") || iequals(h.key(), "transfer-encoding") ||
              iequals(h.key(), "host")) {
            err = where + "header \"" + h.key() + "\" is set by moat-bench itself";
            return false;
          }
          m.headers.emplace_back(h.key(), h.value().get<std::string>());
        }
      } else if (k == "body") {
        if (!v.is_string()) {
          err = where + "\"body\" must be a string";
          return false;
        }
        m.body = v.get<std::string>();
      } else if (k == "weight") {
        if (!v.is_number_unsigned() || v.get<uint64_t>() < 1 || v.get<uint64_t>() > 1000000) {
          err = where + "\"weight\" must be an integer in [1, 1000000]";
          return false;
        }
        m.weight = v.get<uint32_t>();
      } else {
        err = where + "unknown key \"" + k + "\" (method, target, headers, body, weight)";
        return false;
      }
    }
    if (!e.contains("target")) {
      err = where + "\"target\" is required";
      return false;
    }
    out.entries.push_back(std::move(m));
  }
  return true;
}

void finalizeMix(Mix& mix, const Target& t, const std::vector<std::pair<std::string, std::string>>& extraHeaders,
                 bool closeEach) {
  mix.cumulative.clear();
  mix.totalWeight = 0;
  for (auto& m : mix.entries) {
    std::string w;
    w.reserve(128 + m.body.size());
    w += m.method;
    w += ' ';
    w += m.target;
    w += " HTTP/1.1\r\nHost: ";
    w += t.hostHeader;
    w += "\r\n";
    bool ua = false;
    auto add = [&](const std::pair<std::string, std::string>& h) {
      if (iequals(h.first, "user-agent")) ua = true;
      w += h.first;
      w += ": ";
      w += h.second;
      w += "\r\n";
    };
    for (const auto& h : m.headers) add(h);
    for (const auto& h : extraHeaders) add(h);
    if (!ua) w += "User-Agent: moat-bench\r\n";
    if (!m.body.empty() || m.method == "POST" || m.method == "PUT" || m.method == "PATCH") {
      w += "Content-Length: " + std::to_string(m.body.size()) + "\r\n";
    }
    if (closeEach) w += "Connection: close\r\n";
    w += "\r\n";
    w += m.body;
    m.wire = std::move(w);
    m.head = m.method == "HEAD";
    mix.totalWeight += m.weight;
    mix.cumulative.push_back(static_cast<uint32_t>(mix.totalWeight));
  }
}

uint32_t SourceSpread::addressAt(uint64_t i) const { return base + static_cast<uint32_t>(i % count); }

bool parseSourceCidr(const std::string& cidr, SourceSpread& out, std::string& err) {
  size_t slash = cidr.find('/');
  std::string addr = cidr.substr(0, slash);
  uint32_t len = 32;
  if (slash != std::string::npos) {
    std::string e;
    if (!parseInt("prefix", cidr.substr(slash + 1), 8, 32, len, e)) {
      err = "moat-bench: --source " + cidr + ": the prefix length must be 8..32";
      return false;
    }
  }
  in_addr a{};
  if (inet_pton(AF_INET, addr.c_str(), &a) != 1) {
    err = "moat-bench: --source " + cidr + ": need an IPv4 CIDR such as 127.1.0.0/16";
    return false;
  }
  uint32_t host = ntohl(a.s_addr);
  uint32_t mask = len == 32 ? 0xffffffffu : ~((uint32_t{1} << (32 - len)) - 1);
  uint32_t net = host & mask;
  uint64_t size = uint64_t{1} << (32 - len);
  if (len < 31) {
    out.base = net + 1;
    out.count = static_cast<uint32_t>(size - 2);
  } else {
    out.base = net;
    out.count = static_cast<uint32_t>(size);
  }
  return true;
}

const char* usageText() {
  return "usage: moat-bench [options] http[s]://HOST[:PORT][/PATH]\n"
         "  -c, --connections N   connections in all (default 16), spread over threads\n"
         "  -t, --threads N       threads, one io_uring loop each (default 1)\n"
         "  -d, --duration SEC    measured time (default 10)\n"
         "  -n, --requests N      stop after N measured requests instead\n"
         "  -w, --warmup SEC      run this long first without recording (default 0)\n"
         "  -p, --pipeline N      requests in flight per connection (default 1)\n"
         "  -R, --rate RPS        open loop at this total rate; latency counts from each\n"
         "                        request's intended send time (coordinated omission corrected)\n"
         "      --timeout SEC     per-request timeout (default 5)\n"
         "      --close           one connection per request (Connection: close)\n"
         "      --tls-mode M      https: keepalive (default), handshake (a new full\n"
         "                        handshake per request) or resume (a new resumed one)\n"
         "      --cafile FILE     verify the server certificate against FILE (default: no check)\n"
         "      --sni NAME        server name to send (default: the URL host if a name)\n"
         "      --source CIDR     bind connections round robin to addresses of CIDR\n"
         "                        (e.g. 127.1.0.0/16: many client addresses on loopback)\n"
         "      --mix FILE        request mix: JSON array of {method, target, headers, body, weight}\n"
         "  -m, --method M        method when there is no mix (default GET)\n"
         "      --body STRING     request body when there is no mix\n"
         "  -H, --header 'N: V'   extra header on every request (repeatable)\n"
         "      --json            print the result as one JSON object on stdout\n"
         "      --progress, --no-progress   live line on stderr (default: when a terminal)\n"
         "  -h, --help\n";
}

int parseOptions(int argc, char** argv, Options& o, std::string& err) {
  std::vector<std::string> args(argv + 1, argv + argc);
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    auto value = [&](std::string& v) {
      if (i + 1 >= args.size()) {
        err = "moat-bench: " + a + " needs a value";
        return false;
      }
      v = args[++i];
      return true;
    };
    std::string v;
    if (a == "-h" || a == "--help") {
      return 1;
    } else if (a == "-c" || a == "--connections") {
      if (!value(v) || !parseInt(a.c_str(), v, 1, 1000000, o.connections, err)) return 2;
    } else if (a == "-t" || a == "--threads") {
      if (!value(v) || !parseInt(a.c_str(), v, 1, 256, o.threads, err)) return 2;
    } else if (a == "-d" || a == "--duration") {
      if (!value(v) || !parseNumber(a.c_str(), v, 0.001, 86400, o.durationS, err)) return 2;
      o.durationSet = true;
    } else if (a == "-n" || a == "--requests") {
      if (!value(v) || !parseInt(a.c_str(), v, 1, UINT64_MAX / 2, o.requests, err)) return 2;
    } else if (a == "-w" || a == "--warmup") {
      if (!value(v) || !parseNumber(a.c_str(), v, 0, 3600, o.warmupS, err)) return 2;
    } else if (a == "-p" || a == "--pipeline") {
      if (!value(v) || !parseInt(a.c_str(), v, 1, 1024, o.pipeline, err)) return 2;
    } else if (a == "-R" || a == "--rate") {
      if (!value(v) || !parseNumber(a.c_str(), v, 0.001, 1e9, o.rate, err)) return 2;
    } else if (a == "--timeout") {
      if (!value(v) || !parseNumber(a.c_str(), v, 0.001, 3600, o.timeoutS, err)) return 2;
    } else if (a == "--close") {
      o.closeEach = true;
    } else if (a == "--tls-mode") {
      if (!value(v)) return 2;
      if (v == "keepalive") o.tlsMode = TlsMode::kKeepAlive;
      else if (v == "handshake") o.tlsMode = TlsMode::kHandshake;
      else if (v == "resume") o.tlsMode = TlsMode::kResume;
      else {
        err = "moat-bench: --tls-mode " + v + ": need keepalive, handshake or resume";
        return 2;
      }
    } else if (a == "--cafile") {
      if (!value(o.caFile)) return 2;
    } else if (a == "--sni") {
      if (!value(o.sni)) return 2;
    } else if (a == "--source") {
      if (!value(v) || !parseSourceCidr(v, o.source, err)) return 2;
    } else if (a == "--mix") {
      if (!value(o.mixFile)) return 2;
    } else if (a == "-m" || a == "--method") {
      if (!value(o.method)) return 2;
      if (!isToken(o.method)) {
        err = "moat-bench: method '" + o.method + "' is not an HTTP token";
        return 2;
      }
    } else if (a == "--body") {
      if (!value(o.body)) return 2;
    } else if (a == "-H" || a == "--header") {
      std::pair<std::string, std::string> h;
      if (!value(v) || !splitHeader(v, h, err)) return 2;
      if (iequals(h.first, "content-length") || iequals(h.first, "transfer-encoding") ||
          iequals(h.first, "host") || iequals(h.first, "connection")) {
        err = "moat-bench: header " + h.first + " is set by moat-bench itself";
        return 2;
      }
      o.headers.push_back(std::move(h));
    } else if (a == "--json") {
      o.json = true;
    } else if (a == "--progress") {
      o.progress = 1;
    } else if (a == "--no-progress") {
      o.progress = 0;
    } else if (!a.empty() && a[0] == '-') {
      err = "moat-bench: unknown option " + a;
      return 2;
    } else if (o.url.empty()) {
      o.url = a;
    } else {
      err = "moat-bench: more than one URL (" + o.url + ", " + a + ")";
      return 2;
    }
  }
  if (o.url.empty()) {
    err = "moat-bench: no URL";
    return 2;
  }
  if (!parseUrl(o.url, o.target, err)) return 2;
  if (o.threads > o.connections) o.threads = o.connections;
  if (o.tlsMode != TlsMode::kKeepAlive && !o.target.tls) {
    err = "moat-bench: --tls-mode needs an https:// URL (use --close for new plain connections)";
    return 2;
  }
  if (o.tlsMode != TlsMode::kKeepAlive) o.closeEach = true;
  if (o.closeEach && o.pipeline > 1) {
    err = "moat-bench: --pipeline needs keep-alive connections (not --close or --tls-mode handshake/resume)";
    return 2;
  }
  if (!o.mixFile.empty()) {
    if (!o.body.empty() || o.method != "GET") {
      err = "moat-bench: --mix sets methods and bodies; drop -m/--body";
      return 2;
    }
    if (!loadMix(o.mixFile, o.mix, err)) return 2;
  } else {
    MixEntry m;
    m.method = o.method;
    m.target = o.target.path;
    m.body = o.body;
    o.mix.entries.push_back(std::move(m));
  }
  if (o.sni.empty()) {
    in6_addr tmp{};
    if (inet_pton(AF_INET, o.target.host.c_str(), &tmp) != 1 && inet_pton(AF_INET6, o.target.host.c_str(), &tmp) != 1) {
      o.sni = o.target.host;
    }
  }
  if (o.source.count != 0 && o.target.addr.ss_family != AF_INET) {
    err = "moat-bench: --source needs an IPv4 target";
    return 2;
  }
  finalizeMix(o.mix, o.target, o.headers, o.closeEach);
  return 0;
}

}  // namespace moat::bench
