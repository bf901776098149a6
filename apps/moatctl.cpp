// moatctl: command-line client of moatd's REST admin API (docs/CONTROL_API.md),
// plus three offline verbs that need no running API:
//
//   moatctl validate FILE   validate a config document (moatd --check without
//                           compiling WAF rules or loading certificates)
//   moatctl reload PID      ask a running moatd to re-read its config (SIGHUP)
//   moatctl stats PID       ask a running moatd to print its counters (SIGUSR1)
//
// Every other verb is one or two blocking HTTP/1.1 requests (https with
// OpenSSL when the URL says so) to --url, with the bearer token from --token,
// --token-file, MOAT_TOKEN, MOAT_TOKEN_FILE or /var/lib/moat/admin.token, the
// first that is set. Output is aligned tables; --json prints the server's answer as
// it came. Exit codes:
//   0 success
//   1 the server refused (an HTTP status >= 400, or an invalid document):
//     "moatctl: <status> <error>", then every validation error as "  path: message"
//   2 bad usage: unknown verb or option, bad argument, unreadable local file
//   3 the server could not be reached or did not answer in HTTP within --timeout
//
// Single-threaded; every wait (connect, TLS handshake, send, receive) is
// bounded by one --timeout deadline for the whole request.
#include <CLI/CLI.hpp>
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <nlohmann/json.hpp>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "moat/control/config.h"

namespace {

// Ordered, so re-printed values (diffs, a filtered pool list) keep the server's member order.
using json = nlohmann::ordered_json;

constexpr int kExitOk = 0;
constexpr int kExitApi = 1;
constexpr int kExitUsage = 2;
constexpr int kExitConnect = 3;

constexpr const char* kDefaultUrl = "http://127.0.0.1:9900";
constexpr const char* kDefaultTokenFile = "/var/lib/moat/admin.token";
// Largest answer head / body accepted. The server caps request bodies at
// 8 MiB; answers (a config document, /metrics) are far below these.
constexpr size_t kMaxHead = 64 * 1024;
constexpr size_t kMaxBody = 256u << 20;

// Every failure leaves through this exception; main() prints "moatctl: "
// + what() and each detail line indented, and exits with exitCode.
struct Failure : std::runtime_error {
  Failure(int code, const std::string& message, std::vector<std::string> detailLines = {})
      : std::runtime_error(message), exitCode(code), details(std::move(detailLines)) {}
  int exitCode;
  std::vector<std::string> details;
};

std::string errnoText(int err) { return std::strerror(err); }

// Server-provided text is printed to a terminal: control characters become
// '?' so an answer cannot move the cursor or change colours.
std::string printable(std::string_view s) {
  std::string out(s);
  for (char& c : out) {
    auto u = static_cast<unsigned char>(c);
    if (u < 0x20 || u == 0x7f) c = '?';
  }
  return out;
}

std::string readFile(const std::string& path, const char* what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Failure(kExitUsage, std::string("cannot read ") + what + " " + path + ": " + errnoText(errno));
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) throw Failure(kExitUsage, std::string("cannot read ") + what + " " + path + ": " + errnoText(errno));
  return ss.str();
}

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

std::string trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return std::string(s);
}

// One path segment, percent-encoded: everything but unreserved characters and
// ':' (so "10.0.0.5:80" stays readable in logs) is escaped; "[::1]:80" becomes
// "%5B::1%5D:80", a header value "a/b" becomes "a%2Fb". "." and ".." are
// escaped whole so no server or proxy can treat them as dot segments.
std::string encodeSegment(std::string_view s) {
  static const char kHex[] = "0123456789ABCDEF";
  bool dots = s == "." || s == "..";
  std::string out;
  for (unsigned char c : s) {
    bool keep = std::isalnum(c) || c == '-' || c == '_' || c == '~' || c == ':' || (c == '.' && !dots);
    if (keep) {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  return out;
}

std::string base64(std::string_view in) {
  static const char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((in.size() + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 2 < in.size(); i += 3) {
    uint32_t v = (uint32_t(uint8_t(in[i])) << 16) | (uint32_t(uint8_t(in[i + 1])) << 8) | uint8_t(in[i + 2]);
    out += kAlphabet[v >> 18];
    out += kAlphabet[(v >> 12) & 63];
    out += kAlphabet[(v >> 6) & 63];
    out += kAlphabet[v & 63];
  }
  if (i < in.size()) {
    uint32_t v = uint32_t(uint8_t(in[i])) << 16;
    if (i + 1 < in.size()) v |= uint32_t(uint8_t(in[i + 1])) << 8;
    out += kAlphabet[v >> 18];
    out += kAlphabet[(v >> 12) & 63];
    out += i + 1 < in.size() ? kAlphabet[(v >> 6) & 63] : '=';
    out += '=';
  }
  return out;
}

bool isIpLiteral(const std::string& host) {
  unsigned char buf[sizeof(in6_addr)];
  return inet_pton(AF_INET, host.c_str(), buf) == 1 || inet_pton(AF_INET6, host.c_str(), buf) == 1;
}

// ---------------------------------------------------------------- output

// A table printed with columns aligned (two spaces apart, the last column
// not padded). Cells are made printable; widths count UTF-8 code points.
class Table {
 public:
  explicit Table(std::vector<std::string> header) : rows_{std::move(header)} {}
  void add(std::vector<std::string> row) {
    for (auto& c : row) c = printable(c);
    rows_.push_back(std::move(row));
  }
  size_t size() const { return rows_.size() - 1; }
  void print() const {
    std::vector<size_t> width;
    for (const auto& r : rows_) {
      if (width.size() < r.size()) width.resize(r.size(), 0);
      for (size_t i = 0; i < r.size(); ++i) width[i] = std::max(width[i], displayWidth(r[i]));
    }
    for (const auto& r : rows_) {
      std::string line;
      for (size_t i = 0; i < r.size(); ++i) {
        line += r[i];
        if (i + 1 < r.size()) line.append(width[i] - displayWidth(r[i]) + 2, ' ');
      }
      while (!line.empty() && line.back() == ' ') line.pop_back();
      std::printf("%s\n", line.c_str());
    }
  }

 private:
  static size_t displayWidth(const std::string& s) {
    size_t n = 0;
    for (unsigned char c : s) n += (c & 0xC0) != 0x80;
    return n;
  }
  std::vector<std::vector<std::string>> rows_;
};

// A member as table text: strings as they are, other values as compact JSON,
// absent or null as "-".
std::string text(const json& obj, const char* key) {
  if (!obj.is_object()) return "-";
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return "-";
  if (it->is_string()) return it->get<std::string>();
  return it->dump();
}

const json& member(const json& obj, const char* key) {
  static const json kNull;
  if (!obj.is_object()) return kNull;
  auto it = obj.find(key);
  return it == obj.end() ? kNull : *it;
}

const json& arrayMember(const json& obj, const char* key) {
  static const json kEmpty = json::array();
  const json& v = member(obj, key);
  return v.is_array() ? v : kEmpty;
}

std::string joinList(const json& arr, const char* sep = ", ") {
  std::string out;
  for (const auto& v : arr) {
    if (!out.empty()) out += sep;
    out += v.is_string() ? v.get<std::string>() : v.dump();
  }
  return out;
}

std::string duration(int64_t s) {
  if (s < 0) return "-";
  int64_t d = s / 86400, h = s / 3600 % 24, m = s / 60 % 60, sec = s % 60;
  char buf[64];
  if (d > 0) {
    std::snprintf(buf, sizeof buf, "%lldd %lldh %02lldm", (long long)d, (long long)h, (long long)m);
  } else if (h > 0) {
    std::snprintf(buf, sizeof buf, "%lldh %02lldm", (long long)h, (long long)m);
  } else if (m > 0) {
    std::snprintf(buf, sizeof buf, "%lldm %02llds", (long long)m, (long long)sec);
  } else {
    std::snprintf(buf, sizeof buf, "%llds", (long long)sec);
  }
  return buf;
}

void printRaw(const std::string& body) {
  std::fwrite(body.data(), 1, body.size(), stdout);
  if (!body.empty() && body.back() != '\n') std::fputc('\n', stdout);
}

// ---------------------------------------------------------------- URL

struct Url {
  bool https = false;
  std::string host;      // without brackets
  uint16_t port = 0;
  std::string basePath;  // "" or "/prefix" (no trailing '/')
  std::string text;      // as given, for messages
};

// http[s]://HOST[:PORT][/PREFIX]; HOST may be a name, an IPv4 literal or
// [IPv6]. No user info, query or fragment.
Url parseUrl(const std::string& s) {
  Url u;
  u.text = s;
  std::string rest;
  std::string ls = lower(s.substr(0, 8));
  if (ls.rfind("http://", 0) == 0) {
    rest = s.substr(7);
  } else if (ls.rfind("https://", 0) == 0) {
    u.https = true;
    rest = s.substr(8);
  } else {
    throw Failure(kExitUsage, "--url " + s + ": must start with http:// or https://");
  }
  size_t slash = rest.find('/');
  std::string authority = rest.substr(0, slash);
  u.basePath = slash == std::string::npos ? "" : rest.substr(slash);
  while (!u.basePath.empty() && u.basePath.back() == '/') u.basePath.pop_back();
  if (authority.find('@') != std::string::npos || u.basePath.find_first_of("?#") != std::string::npos ||
      authority.find_first_of("?#") != std::string::npos) {
    throw Failure(kExitUsage, "--url " + s + ": user info, query and fragment are not supported");
  }
  std::string portText;
  if (!authority.empty() && authority[0] == '[') {
    size_t close = authority.find(']');
    if (close == std::string::npos) throw Failure(kExitUsage, "--url " + s + ": missing ']'");
    u.host = authority.substr(1, close - 1);
    std::string after = authority.substr(close + 1);
    if (!after.empty()) {
      if (after[0] != ':') throw Failure(kExitUsage, "--url " + s + ": junk after ']'");
      portText = after.substr(1);
    }
  } else {
    size_t colon = authority.find(':');
    u.host = authority.substr(0, colon);
    if (colon != std::string::npos) portText = authority.substr(colon + 1);
  }
  if (u.host.empty()) throw Failure(kExitUsage, "--url " + s + ": no host");
  if (portText.empty()) {
    u.port = u.https ? 443 : 80;
  } else {
    char* end = nullptr;
    unsigned long p = std::strtoul(portText.c_str(), &end, 10);
    if (*end != 0 || p == 0 || p > 65535 || !std::isdigit(static_cast<unsigned char>(portText[0]))) {
      throw Failure(kExitUsage, "--url " + s + ": \"" + portText + "\" is not a port");
    }
    u.port = static_cast<uint16_t>(p);
  }
  return u;
}

// ---------------------------------------------------------------- HTTP client

struct Globals {
  std::string url = kDefaultUrl;
  std::string tokenFile = kDefaultTokenFile;
  std::string token;
  bool json = false;
  double timeoutS = 30;
  std::string caFile, certFile, keyFile;
  bool tokenFileGiven = false;  // --token-file or MOAT_TOKEN_FILE, not the default
};

struct HttpResponse {
  int status = 0;
  std::string reason;
  std::vector<std::pair<std::string, std::string>> headers;  // names lowercase
  std::string body;

  std::string header(const std::string& name) const {
    for (const auto& [k, v] : headers)
      if (k == name) return v;
    return "";
  }
  bool ok() const { return status >= 200 && status < 300; }
};

// --json output of a successful call: the body as it came.
int printAnswer(const HttpResponse& r) {
  printRaw(r.body);
  return kExitOk;
}

std::string opensslErrors() {
  std::string out;
  while (unsigned long e = ERR_get_error()) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    if (!out.empty()) out += "; ";
    out += buf;
  }
  return out.empty() ? "unknown TLS error" : out;
}

// One connection for one request ("Connection: close"). Blocking from the
// caller's view; internally non-blocking with poll() so a single deadline
// covers connect, handshake, send and receive. Throws Failure(kExitConnect)
// on any transport problem, Failure(kExitUsage) on bad local TLS files.
class Connection {
 public:
  Connection(const Url& url, const Globals& g)
      : url_(url), g_(g),
        deadline_(std::chrono::steady_clock::now() +
                  std::chrono::milliseconds(static_cast<int64_t>(g.timeoutS * 1000))) {}
  ~Connection() {
    if (ssl_ != nullptr) SSL_free(ssl_);
    if (ctx_ != nullptr) SSL_CTX_free(ctx_);
    if (fd_ >= 0) ::close(fd_);
  }
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  void open() {
    if (url_.https) prepareTls();  // local file problems first: exit 2, not 3
    connectTcp();
    if (url_.https) handshake();
  }

  void writeAll(std::string_view data) {
    while (!data.empty()) {
      if (ssl_ != nullptr) {
        size_t n = 0;
        int r = SSL_write_ex(ssl_, data.data(), data.size(), &n);
        if (r == 1) {
          data.remove_prefix(n);
          continue;
        }
        int e = SSL_get_error(ssl_, r);
        if (e == SSL_ERROR_WANT_READ) wait(POLLIN, "sending the request");
        else if (e == SSL_ERROR_WANT_WRITE) wait(POLLOUT, "sending the request");
        else fail("sending the request: " + (e == SSL_ERROR_SYSCALL ? errnoText(errno) : opensslErrors()) + certHint());
      } else {
        ssize_t n = ::send(fd_, data.data(), data.size(), MSG_NOSIGNAL);
        if (n > 0) {
          data.remove_prefix(static_cast<size_t>(n));
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
          wait(POLLOUT, "sending the request");
        } else if (n < 0 && errno == EINTR) {
          continue;
        } else {
          fail("sending the request: " + errnoText(errno));
        }
      }
    }
  }

  // Appends what arrives to `buf`; false at the end of the stream.
  bool readMore(std::string& buf) {
    char chunk[16384];
    for (;;) {
      if (ssl_ != nullptr) {
        size_t n = 0;
        int r = SSL_read_ex(ssl_, chunk, sizeof chunk, &n);
        if (r == 1) {
          buf.append(chunk, n);
          return true;
        }
        int e = SSL_get_error(ssl_, r);
        if (e == SSL_ERROR_ZERO_RETURN) return false;
        if (e == SSL_ERROR_WANT_READ) wait(POLLIN, "waiting for the answer");
        else if (e == SSL_ERROR_WANT_WRITE) wait(POLLOUT, "waiting for the answer");
        else if (e == SSL_ERROR_SYSCALL && errno == 0) return false;
        else fail("reading the answer: " + (e == SSL_ERROR_SYSCALL ? errnoText(errno) : opensslErrors()) + certHint());
      } else {
        ssize_t n = ::recv(fd_, chunk, sizeof chunk, 0);
        if (n > 0) {
          buf.append(chunk, static_cast<size_t>(n));
          return true;
        }
        if (n == 0) return false;
        if (errno == EAGAIN || errno == EWOULDBLOCK) wait(POLLIN, "waiting for the answer");
        else if (errno != EINTR) fail("reading the answer: " + errnoText(errno));
      }
    }
  }

  [[noreturn]] void fail(const std::string& what) const {
    throw Failure(kExitConnect, url_.text + ": " + what);
  }

 private:
  // TLS 1.3 servers refuse a missing client certificate after the handshake,
  // so it shows up as a reset or an alert on the first request.
  std::string certHint() const {
    return g_.certFile.empty() ? " (if the server requires a client certificate: --cert/--key)" : "";
  }

  int remainingMs() const {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline_ - std::chrono::steady_clock::now());
    return static_cast<int>(std::max<int64_t>(0, left.count()));
  }

  void wait(short events, const char* doing) {
    for (;;) {
      int ms = remainingMs();
      if (ms == 0) fail(std::string("timed out ") + doing + " (--timeout " + timeoutText() + " s)");
      pollfd p{fd_, events, 0};
      int r = ::poll(&p, 1, ms);
      if (r > 0) return;
      if (r < 0 && errno != EINTR) fail(std::string("poll: ") + errnoText(errno));
    }
  }

  std::string timeoutText() const {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%g", g_.timeoutS);
    return buf;
  }

  void connectTcp() {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* res = nullptr;
    std::string port = std::to_string(url_.port);
    int rc = ::getaddrinfo(url_.host.c_str(), port.c_str(), &hints, &res);
    if (rc != 0) {
      throw Failure(kExitConnect, "cannot connect to " + url_.text + ": cannot resolve " + url_.host + ": " +
                                      (rc == EAI_SYSTEM ? errnoText(errno) : gai_strerror(rc)));
    }
    std::vector<std::string> tried;
    for (addrinfo* a = res; a != nullptr; a = a->ai_next) {
      int err = tryConnect(a);
      if (err == 0) break;
      char host[NI_MAXHOST] = "?";
      ::getnameinfo(a->ai_addr, a->ai_addrlen, host, sizeof host, nullptr, 0, NI_NUMERICHOST);
      std::string where = a->ai_family == AF_INET6 ? "[" + std::string(host) + "]" : std::string(host);
      tried.push_back(where + ":" + port + ": " +
                      (err == ETIMEDOUT ? "timed out (--timeout " + timeoutText() + " s)" : errnoText(err)));
    }
    ::freeaddrinfo(res);
    if (fd_ < 0) {
      std::string msg = "cannot connect to " + url_.text + ": ";
      if (tried.size() == 1) {
        msg += tried[0].substr(tried[0].find(": ") + 2);
      } else {
        for (size_t i = 0; i < tried.size(); ++i) msg += (i ? "; " : "") + tried[i];
      }
      throw Failure(kExitConnect, msg);
    }
  }

  // 0 and fd_ set on success, else the errno.
  int tryConnect(const addrinfo* a) {
    int fd = ::socket(a->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return errno;
    int err = 0;
    if (::connect(fd, a->ai_addr, a->ai_addrlen) != 0) {
      err = errno;
      if (err == EINPROGRESS) {
        pollfd p{fd, POLLOUT, 0};
        int r;
        do {
          r = ::poll(&p, 1, remainingMs());
        } while (r < 0 && errno == EINTR);
        if (r == 0) {
          err = ETIMEDOUT;
        } else if (r < 0) {
          err = errno;
        } else {
          socklen_t len = sizeof err;
          if (::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
        }
      }
    }
    if (err != 0) {
      ::close(fd);
      return err;
    }
    fd_ = fd;
    return 0;
  }

  void prepareTls() {
    ctx_ = SSL_CTX_new(TLS_client_method());
    if (ctx_ == nullptr) throw Failure(kExitUsage, "TLS: " + opensslErrors());
    SSL_CTX_set_min_proto_version(ctx_, TLS1_2_VERSION);
    // The answer is framed by Content-Length or chunked encoding; a peer that
    // closes without close_notify after a complete answer is not an error.
    SSL_CTX_set_options(ctx_, SSL_OP_IGNORE_UNEXPECTED_EOF);
    if (!g_.caFile.empty()) {
      if (SSL_CTX_load_verify_locations(ctx_, g_.caFile.c_str(), nullptr) != 1) {
        throw Failure(kExitUsage, "--cacert " + g_.caFile + ": " + opensslErrors());
      }
    } else if (SSL_CTX_set_default_verify_paths(ctx_) != 1) {
      throw Failure(kExitUsage, "TLS: cannot load the system CA store: " + opensslErrors());
    }
    SSL_CTX_set_verify(ctx_, SSL_VERIFY_PEER, nullptr);
    if (!g_.certFile.empty()) {
      const std::string& key = g_.keyFile.empty() ? g_.certFile : g_.keyFile;
      if (SSL_CTX_use_certificate_chain_file(ctx_, g_.certFile.c_str()) != 1) {
        throw Failure(kExitUsage, "--cert " + g_.certFile + ": " + opensslErrors());
      }
      if (SSL_CTX_use_PrivateKey_file(ctx_, key.c_str(), SSL_FILETYPE_PEM) != 1) {
        throw Failure(kExitUsage, "--key " + key + ": " + opensslErrors());
      }
      if (SSL_CTX_check_private_key(ctx_) != 1) {
        throw Failure(kExitUsage, "--key " + key + " does not match --cert " + g_.certFile);
      }
    } else if (!g_.keyFile.empty()) {
      throw Failure(kExitUsage, "--key needs --cert");
    }
  }

  void handshake() {
    ssl_ = SSL_new(ctx_);
    if (ssl_ == nullptr || SSL_set_fd(ssl_, fd_) != 1) fail("TLS: " + opensslErrors());
    if (isIpLiteral(url_.host)) {
      X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl_), url_.host.c_str());
    } else {
      SSL_set_tlsext_host_name(ssl_, url_.host.c_str());
      SSL_set1_host(ssl_, url_.host.c_str());
    }
    static const unsigned char kAlpn[] = "\x08http/1.1";
    SSL_set_alpn_protos(ssl_, kAlpn, sizeof kAlpn - 1);
    for (;;) {
      ERR_clear_error();
      errno = 0;
      int r = SSL_connect(ssl_);
      if (r == 1) return;
      int e = SSL_get_error(ssl_, r);
      if (e == SSL_ERROR_WANT_READ) {
        wait(POLLIN, "in the TLS handshake");
      } else if (e == SSL_ERROR_WANT_WRITE) {
        wait(POLLOUT, "in the TLS handshake");
      } else {
        long v = SSL_get_verify_result(ssl_);
        if (v == X509_V_ERR_HOSTNAME_MISMATCH || v == X509_V_ERR_IP_ADDRESS_MISMATCH) {
          fail("TLS handshake failed: the server certificate is not for " + url_.host + " (" +
               X509_verify_cert_error_string(v) + ")");
        }
        if (v != X509_V_OK) {
          fail(std::string("TLS handshake failed: server certificate not trusted: ") +
               X509_verify_cert_error_string(v) + (g_.caFile.empty() ? " (give its CA with --cacert)" : ""));
        }
        if (e == SSL_ERROR_SYSCALL) {
          fail("TLS handshake failed: " + (errno != 0 ? errnoText(errno) : std::string("connection closed")));
        }
        fail("TLS handshake failed: " + opensslErrors());
      }
    }
  }

  const Url& url_;
  const Globals& g_;
  std::chrono::steady_clock::time_point deadline_;
  int fd_ = -1;
  SSL_CTX* ctx_ = nullptr;
  SSL* ssl_ = nullptr;
};

// Reads one HTTP/1.x answer: head, then a body framed by chunked encoding,
// Content-Length, or the end of the stream.
HttpResponse readResponse(Connection& c, const std::string& method) {
  std::string buf;
  HttpResponse r;
  size_t headEnd;
  for (;;) {  // skips 1xx interim answers
    while ((headEnd = buf.find("\r\n\r\n")) == std::string::npos) {
      if (buf.size() > kMaxHead) c.fail("answer head larger than 64 KiB");
      if (!c.readMore(buf)) {
        c.fail(buf.empty() ? "connection closed without an answer (https server behind an http:// URL?)"
                           : "connection closed in the middle of the answer head");
      }
    }
    std::string head = buf.substr(0, headEnd);
    buf.erase(0, headEnd + 4);
    size_t eol = head.find("\r\n");
    std::string statusLine = head.substr(0, eol);
    if (statusLine.rfind("HTTP/1.", 0) != 0 || statusLine.size() < 12 || statusLine[8] != ' ' ||
        !std::isdigit(static_cast<unsigned char>(statusLine[9])) ||
        !std::isdigit(static_cast<unsigned char>(statusLine[10])) ||
        !std::isdigit(static_cast<unsigned char>(statusLine[11]))) {
      c.fail("not an HTTP answer: \"" + printable(statusLine.substr(0, 60)) + "\"");
    }
    r.status = std::stoi(statusLine.substr(9, 3));
    r.reason = statusLine.size() > 13 ? statusLine.substr(13) : "";
    r.headers.clear();
    size_t pos = eol == std::string::npos ? head.size() : eol + 2;
    while (pos < head.size()) {
      size_t end = head.find("\r\n", pos);
      if (end == std::string::npos) end = head.size();
      std::string line = head.substr(pos, end - pos);
      size_t colon = line.find(':');
      if (colon != std::string::npos) r.headers.emplace_back(lower(trim(line.substr(0, colon))), trim(line.substr(colon + 1)));
      pos = end + 2;
    }
    if (r.status >= 200) break;
  }
  if (method == "HEAD" || r.status == 204 || r.status == 304) return r;

  if (lower(r.header("transfer-encoding")).find("chunked") != std::string::npos) {
    size_t pos = 0;
    for (;;) {
      size_t eol = buf.find("\r\n", pos);
      if (eol == std::string::npos) {
        if (!c.readMore(buf)) c.fail("connection closed in the middle of the answer");
        continue;
      }
      char* end = nullptr;
      std::string sizeText = buf.substr(pos, eol - pos);
      unsigned long long size = std::strtoull(sizeText.c_str(), &end, 16);
      if (end == sizeText.c_str() || size > kMaxBody || r.body.size() + size > kMaxBody) {
        c.fail("bad chunk size in the answer");
      }
      if (size == 0) {
        // Trailer fields until an empty line; the end of the stream also ends them.
        size_t t = eol + 2;
        for (;;) {
          size_t e = buf.find("\r\n", t);
          if (e == std::string::npos) {
            if (!c.readMore(buf)) break;
            continue;
          }
          if (e == t) break;
          t = e + 2;
        }
        break;
      }
      while (buf.size() < eol + 2 + size + 2) {
        if (!c.readMore(buf)) c.fail("connection closed in the middle of the answer");
      }
      r.body.append(buf, eol + 2, size);
      pos = eol + 2 + size + 2;
    }
    return r;
  }
  std::string cl = r.header("content-length");
  if (!cl.empty()) {
    char* end = nullptr;
    unsigned long long n = std::strtoull(cl.c_str(), &end, 10);
    if (*end != 0 || n > kMaxBody) c.fail("bad Content-Length \"" + printable(cl) + "\"");
    while (buf.size() < n) {
      if (!c.readMore(buf)) c.fail("connection closed after " + std::to_string(buf.size()) + " of " + cl + " body bytes");
    }
    buf.resize(n);
    r.body = std::move(buf);
    return r;
  }
  while (c.readMore(buf)) {
    if (buf.size() > kMaxBody) c.fail("answer body larger than 256 MiB");
  }
  r.body = std::move(buf);
  return r;
}

class Client {
 public:
  explicit Client(const Globals& g) : g_(g), url_(parseUrl(g.url)) { loadToken(); }

  // One request; `path` is already encoded and starts with '/'. Throws
  // Failure(kExitConnect) when the server cannot be reached.
  HttpResponse send(const std::string& method, const std::string& path, const std::string* body = nullptr,
                    const char* accept = "application/json") {
    Connection c(url_, g_);
    c.open();
    std::string hostHeader = url_.host.find(':') != std::string::npos ? "[" + url_.host + "]" : url_.host;
    if (url_.port != (url_.https ? 443 : 80)) hostHeader += ":" + std::to_string(url_.port);
    std::string req = method + " " + url_.basePath + path + " HTTP/1.1\r\n";
    req += "Host: " + hostHeader + "\r\n";
    req += "User-Agent: moatctl\r\n";
    req += std::string("Accept: ") + accept + "\r\n";
    if (!token_.empty()) req += "Authorization: Bearer " + token_ + "\r\n";
    req += "Connection: close\r\n";
    if (body != nullptr) {
      req += "Content-Type: application/json\r\n";
      req += "Content-Length: " + std::to_string(body->size()) + "\r\n";
    }
    req += "\r\n";
    if (body != nullptr) req += *body;
    c.writeAll(req);
    return readResponse(c, method);
  }

  // A request whose 2xx answer is JSON. A status >= 400 throws
  // Failure(kExitApi) with the server's error and validation errors (and,
  // with --json, prints the answer to stdout first).
  json call(const std::string& method, const std::string& path, const std::string* body, HttpResponse* raw) {
    HttpResponse r = send(method, path, body);
    if (!r.ok()) throw apiFailure(r);
    json j = json::parse(r.body, nullptr, false);
    if (j.is_discarded()) {
      throw Failure(kExitApi, std::to_string(r.status) + " answer from " + url_.text + " is not JSON: \"" +
                                  printable(r.body.substr(0, 80)) + "\"");
    }
    if (raw != nullptr) *raw = std::move(r);
    return j;
  }

  Failure apiFailure(const HttpResponse& r) const {
    if (g_.json && !r.body.empty()) printRaw(r.body);
    json j = json::parse(r.body, nullptr, false);
    std::string msg;
    std::vector<std::string> details;
    if (j.is_object() && member(j, "error").is_string()) {
      msg = member(j, "error").get<std::string>();
      for (const auto& e : arrayMember(j, "errors")) {
        std::string path = text(e, "path");
        std::string m = text(e, "message");
        details.push_back(printable(path.empty() || path == "-" ? m : path + ": " + m));
      }
    } else {
      msg = r.reason;
      std::string first = trim(r.body.substr(0, r.body.find('\n')));
      if (!first.empty()) msg += (msg.empty() ? "" : ": ") + first.substr(0, 200);
    }
    if (r.status == 401 && !tokenNote_.empty()) details.push_back("(" + tokenNote_ + ")");
    return Failure(kExitApi, std::to_string(r.status) + " " + printable(msg), std::move(details));
  }

  const Globals& globals() const { return g_; }

 private:
  void loadToken() {
    if (!g_.token.empty()) {
      token_ = trim(g_.token);
    } else {
      std::ifstream in(g_.tokenFile, std::ios::binary);
      if (!in) {
        std::string why = "cannot read token file " + g_.tokenFile + ": " + errnoText(errno);
        if (g_.tokenFileGiven) throw Failure(kExitUsage, why);
        tokenNote_ = "no token sent: " + why + "; use --token-file, MOAT_TOKEN_FILE or MOAT_TOKEN";
        return;
      }
      std::ostringstream ss;
      ss << in.rdbuf();
      token_ = trim(ss.str());
      if (token_.empty()) tokenNote_ = "no token sent: token file " + g_.tokenFile + " is empty";
    }
    for (char c : token_) {
      if (static_cast<unsigned char>(c) <= 0x20 || static_cast<unsigned char>(c) >= 0x7f) {
        throw Failure(kExitUsage, "the token contains characters that cannot go in an HTTP header");
      }
    }
  }

  Globals g_;
  Url url_;
  std::string token_;
  std::string tokenNote_;  // why no token is sent; shown with a 401
};

// ---------------------------------------------------------------- arguments

// ADDR:PORT as a backend key: "10.0.0.5:80" or "[::1]:80" (the address in
// canonical form, so "[0:0::1]:80" names the same backend as "[::1]:80").
struct BackendArg {
  std::string address;  // canonical, no brackets
  uint16_t port = 0;
  std::string key() const {
    return address.find(':') != std::string::npos ? "[" + address + "]:" + std::to_string(port)
                                                   : address + ":" + std::to_string(port);
  }
};

BackendArg parseBackend(const std::string& s) {
  std::string addr, port;
  if (!s.empty() && s[0] == '[') {
    size_t close = s.find(']');
    if (close == std::string::npos || close + 1 >= s.size() || s[close + 1] != ':') {
      throw Failure(kExitUsage, "\"" + s + "\" is not ADDR:PORT (IPv6: [ADDR]:PORT)");
    }
    addr = s.substr(1, close - 1);
    port = s.substr(close + 2);
  } else {
    size_t colon = s.rfind(':');
    if (colon == std::string::npos || s.find(':') != colon) {
      throw Failure(kExitUsage, "\"" + s + "\" is not ADDR:PORT (IPv6: [ADDR]:PORT)");
    }
    addr = s.substr(0, colon);
    port = s.substr(colon + 1);
  }
  BackendArg b;
  unsigned char bin[sizeof(in6_addr)];
  char canon[INET6_ADDRSTRLEN];
  if (inet_pton(AF_INET, addr.c_str(), bin) == 1) {
    inet_ntop(AF_INET, bin, canon, sizeof canon);
  } else if (inet_pton(AF_INET6, addr.c_str(), bin) == 1) {
    inet_ntop(AF_INET6, bin, canon, sizeof canon);
  } else {
    throw Failure(kExitUsage, "\"" + addr + "\" is not an IPv4 or IPv6 address literal");
  }
  b.address = canon;
  char* end = nullptr;
  unsigned long p = std::strtoul(port.c_str(), &end, 10);
  if (port.empty() || *end != 0 || p == 0 || p > 65535 || !std::isdigit(static_cast<unsigned char>(port[0]))) {
    throw Failure(kExitUsage, "\"" + port + "\" is not a port");
  }
  b.port = static_cast<uint16_t>(p);
  return b;
}

void requireNonEmpty(const std::string& v, const char* name) {
  if (v.empty()) throw Failure(kExitUsage, std::string(name) + " must not be empty");
}

// ---------------------------------------------------------------- verbs

void printPools(const json& pools, const std::string& only) {
  Table t({"POOL", "BALANCE", "BACKEND", "WEIGHT", "STATE", "HEALTH", "LAST CHECK"});
  for (const auto& p : pools) {
    std::string name = text(p, "name");
    if (!only.empty() && name != only) continue;
    const json& backends = arrayMember(p, "backends");
    if (backends.empty()) t.add({name, text(p, "balance"), "(none)", "", "", "", ""});
    for (const auto& b : backends) {
      std::string key = text(b, "key");
      if (key == "-") {
        std::string a = text(b, "address");
        key = (a.find(':') != std::string::npos ? "[" + a + "]" : a) + ":" + text(b, "port");
      }
      bool drain = member(b, "drain").is_boolean() && member(b, "drain").get<bool>();
      t.add({name, text(p, "balance"), key, text(b, "weight"), drain ? "draining" : "active", text(b, "health"),
             text(b, "lastCheck")});
    }
  }
  t.print();
}

void printGeo(const json& geo) {
  std::printf("geo: %s entries\n", text(geo, "entries").c_str());
  const json& sources = arrayMember(geo, "sources");
  if (sources.empty()) return;
  Table t({"SOURCE", "PATH", "ENTRIES", "LOADED AT", "ERROR"});
  for (const auto& s : sources) {
    t.add({text(s, "type"), text(s, "path"), text(s, "entries"), text(s, "loadedAt"), text(s, "error")});
  }
  t.print();
}

int cmdStatus(Client& c) {
  HttpResponse raw;
  json j = c.call("GET", "/api/v1/status", nullptr, &raw);
  if (c.globals().json) return printAnswer(raw);
  int64_t up = member(j, "uptimeS").is_number_integer() ? member(j, "uptimeS").get<int64_t>() : -1;
  std::printf("config version %s, up %s (since %s), %s workers\n\n", text(j, "version").c_str(),
              duration(up).c_str(), printable(text(j, "startedAt")).c_str(), text(j, "workers").c_str());
  Table l({"LISTENER", "ADDRESS", "PORT", "PROTOCOL"});
  for (const auto& x : arrayMember(j, "listeners")) {
    l.add({text(x, "name"), text(x, "address"), text(x, "port"), text(x, "protocol")});
  }
  l.print();
  std::printf("\n");
  printPools(arrayMember(j, "pools"), "");
  if (member(j, "geo").is_object()) {
    std::printf("\n");
    printGeo(member(j, "geo"));
  }
  return kExitOk;
}

int cmdHealth(Client& c) {
  HttpResponse h = c.send("GET", "/healthz");
  if (!h.ok()) throw c.apiFailure(h);
  HttpResponse r = c.send("GET", "/readyz");
  if (c.globals().json) printRaw(r.body);
  json j = json::parse(r.body, nullptr, false);
  bool ready = r.ok() && member(j, "ready").is_boolean() && member(j, "ready").get<bool>();
  if (!ready) {
    std::string why = text(j, "reason");
    throw Failure(kExitApi, std::to_string(r.status) + " not ready" + (why != "-" ? ": " + printable(why) : ""));
  }
  if (!c.globals().json) std::printf("alive, ready at config version %s\n", text(j, "version").c_str());
  return kExitOk;
}

int cmdConfigGet(Client& c, const std::string& out) {
  HttpResponse r = c.send("GET", "/api/v1/config");
  if (!r.ok()) throw c.apiFailure(r);
  std::string version = r.header("moat-config-version");
  if (out.empty()) {
    printRaw(r.body);
    return kExitOk;
  }
  // Written next to the target and renamed, so a failure never leaves half a document.
  std::string tmp = out + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    if (!f) throw Failure(kExitUsage, "cannot write " + tmp + ": " + errnoText(errno));
    f << r.body;
    if (!r.body.empty() && r.body.back() != '\n') f << '\n';
    f.flush();
    if (!f) throw Failure(kExitUsage, "cannot write " + tmp + ": " + errnoText(errno));
  }
  if (std::rename(tmp.c_str(), out.c_str()) != 0) {
    int err = errno;
    std::remove(tmp.c_str());
    throw Failure(kExitUsage, "cannot write " + out + ": " + errnoText(err));
  }
  std::fprintf(stderr, "moatctl: wrote %s (config version %s)\n", out.c_str(),
               version.empty() ? "?" : printable(version).c_str());
  return kExitOk;
}

int printVersion(Client& c, const HttpResponse& raw, const json& j, const std::string& what) {
  if (c.globals().json) return printAnswer(raw);
  std::printf("%s: config version %s\n", printable(what).c_str(), text(j, "version").c_str());
  return kExitOk;
}

int cmdConfigApply(Client& c, const std::string& file) {
  std::string body = readFile(file, "config file");
  HttpResponse raw;
  json j = c.call("PUT", "/api/v1/config", &body, &raw);
  return printVersion(c, raw, j, "applied " + file);
}

std::string diffLine(const json& d) {
  bool hasOld = d.is_object() && d.contains("old");
  bool hasNew = d.is_object() && d.contains("new");
  std::string path = text(d, "path");
  if (hasOld && hasNew) return "~ " + path + ": " + member(d, "old").dump() + " -> " + member(d, "new").dump();
  if (hasNew) return "+ " + path + ": " + member(d, "new").dump();
  if (hasOld) return "- " + path + ": " + member(d, "old").dump();
  return "? " + path;
}

int cmdConfigValidate(Client& c, const std::string& file) {
  std::string body = readFile(file, "config file");
  HttpResponse raw;
  json j = c.call("POST", "/api/v1/config/validate", &body, &raw);
  if (c.globals().json) printRaw(raw.body);
  const json& diff = arrayMember(j, "diff");
  bool valid = member(j, "valid").is_boolean() && member(j, "valid").get<bool>();
  if (!valid) {
    std::vector<std::string> details;
    for (const auto& e : arrayMember(j, "errors")) {
      std::string path = text(e, "path");
      std::string m = text(e, "message");
      details.push_back(printable(path.empty() || path == "-" ? m : path + ": " + m));
    }
    throw Failure(kExitApi,
                  file + " is not valid (" + std::to_string(details.size()) + (details.size() == 1 ? " error)" : " errors)"),
                  details);
  }
  if (c.globals().json) return kExitOk;
  if (diff.empty()) {
    std::printf("%s: valid, same as the running config\n", file.c_str());
  } else {
    std::printf("%s: valid, %zu difference%s from the running config:\n", file.c_str(), diff.size(),
                diff.size() == 1 ? "" : "s");
    for (const auto& d : diff) std::printf("  %s\n", printable(diffLine(d)).c_str());
  }
  return kExitOk;
}

int cmdConfigVersions(Client& c) {
  HttpResponse raw;
  json j = c.call("GET", "/api/v1/config/versions", nullptr, &raw);
  if (c.globals().json) return printAnswer(raw);
  std::string current = text(j, "current");
  Table t({"", "VERSION", "APPLIED AT", "SOURCE", "SUMMARY"});
  for (const auto& v : arrayMember(j, "versions")) {
    std::string ver = text(v, "version");
    t.add({ver == current ? "*" : "", ver, text(v, "appliedAt"), text(v, "source"), text(v, "summary")});
  }
  t.print();
  return kExitOk;
}

int cmdConfigShow(Client& c, uint64_t version) {
  HttpResponse r = c.send("GET", "/api/v1/config/versions/" + std::to_string(version));
  if (!r.ok()) throw c.apiFailure(r);
  printRaw(r.body);
  return kExitOk;
}

int cmdConfigRollback(Client& c, uint64_t version) {
  HttpResponse raw;
  json j = c.call("POST", "/api/v1/config/rollback/" + std::to_string(version), nullptr, &raw);
  if (c.globals().json) return printAnswer(raw);
  std::printf("rolled back to version %s: config version %s\n", text(j, "rolledBackTo").c_str(),
              text(j, "version").c_str());
  return kExitOk;
}

int cmdBackendsList(Client& c, const std::string& pool) {
  HttpResponse raw;
  json j = c.call("GET", "/api/v1/pools", nullptr, &raw);
  const json& pools = arrayMember(j, "pools");
  if (!pool.empty()) {
    auto it = std::find_if(pools.begin(), pools.end(), [&](const json& p) { return text(p, "name") == pool; });
    if (it == pools.end()) throw Failure(kExitApi, "no pool named \"" + printable(pool) + "\"");
    if (c.globals().json) {
      printRaw(json{{"pools", json::array({*it})}}.dump(2));
      return kExitOk;
    }
  }
  if (c.globals().json) return printAnswer(raw);
  printPools(pools, pool);
  return kExitOk;
}

std::string backendPath(const std::string& pool, const BackendArg& b) {
  return "/api/v1/pools/" + encodeSegment(pool) + "/backends/" + encodeSegment(b.key());
}

int cmdBackendsAdd(Client& c, const std::string& pool, const std::string& addr, std::optional<int64_t> weight) {
  requireNonEmpty(pool, "POOL");
  BackendArg b = parseBackend(addr);
  json req = {{"address", b.address}, {"port", b.port}};
  if (weight) req["weight"] = *weight;
  std::string body = req.dump();
  HttpResponse raw;
  json j = c.call("POST", "/api/v1/pools/" + encodeSegment(pool) + "/backends", &body, &raw);
  return printVersion(c, raw, j, "added " + b.key() + " to pool " + pool);
}

int cmdBackendsRemove(Client& c, const std::string& pool, const std::string& addr) {
  requireNonEmpty(pool, "POOL");
  BackendArg b = parseBackend(addr);
  HttpResponse raw;
  json j = c.call("DELETE", backendPath(pool, b), nullptr, &raw);
  return printVersion(c, raw, j, "removed " + b.key() + " from pool " + pool);
}

int cmdBackendsDrain(Client& c, const std::string& pool, const std::string& addr, bool drain) {
  requireNonEmpty(pool, "POOL");
  BackendArg b = parseBackend(addr);
  HttpResponse raw;
  json j = c.call("POST", backendPath(pool, b) + (drain ? "/drain" : "/enable"), nullptr, &raw);
  return printVersion(c, raw, j,
                      drain ? "draining " + b.key() + " in pool " + pool + " (requests in flight finish)"
                            : "enabled " + b.key() + " in pool " + pool);
}

int cmdBackendsWeight(Client& c, const std::string& pool, const std::string& addr, int64_t weight) {
  requireNonEmpty(pool, "POOL");
  BackendArg b = parseBackend(addr);
  std::string body = json{{"weight", weight}}.dump();
  HttpResponse raw;
  json j = c.call("PUT", backendPath(pool, b) + "/weight", &body, &raw);
  return printVersion(c, raw, j, "weight of " + b.key() + " in pool " + pool + " set to " + std::to_string(weight));
}

int cmdWafShow(Client& c) {
  HttpResponse raw;
  json j = c.call("GET", "/api/v1/waf", nullptr, &raw);
  if (c.globals().json) return printAnswer(raw);
  Table t({"SETTING", "VALUE"});
  t.add({"enabled", text(j, "enabled")});
  t.add({"mode", text(j, "mode")});
  t.add({"paranoia", text(j, "paranoia")});
  const json& disabled = arrayMember(j, "disableRules");
  t.add({"disableRules", disabled.empty() ? "(none)" : joinList(disabled)});
  const json& excl = arrayMember(j, "excludeTargets");
  if (excl.empty()) t.add({"excludeTargets", "(none)"});
  for (size_t i = 0; i < excl.size(); ++i) {
    t.add({i == 0 ? "excludeTargets" : "", "rule " + text(excl[i], "rule") + " skips " + text(excl[i], "target")});
  }
  t.print();
  return kExitOk;
}

int cmdWafSet(Client& c, const std::string& mode, std::optional<int64_t> paranoia, const std::string& enabled) {
  json patch = json::object();
  if (!mode.empty()) patch["mode"] = mode;
  if (paranoia) patch["paranoia"] = *paranoia;
  if (!enabled.empty()) patch["enabled"] = enabled == "true";
  if (patch.empty()) throw Failure(kExitUsage, "waf set: give at least one of --mode, --paranoia, --enabled");
  std::string what = "waf";
  for (const auto& [k, v] : patch.items()) what += " " + k + "=" + (v.is_string() ? v.get<std::string>() : v.dump());
  std::string body = patch.dump();
  HttpResponse raw;
  json j = c.call("PATCH", "/api/v1/waf", &body, &raw);
  return printVersion(c, raw, j, what);
}

// Reads the WAF settings, adds (exclude) or removes (include) one rule id in
// disableRules or one {rule, target} in excludeTargets, and PATCHes that list
// back. Not atomic against another client changing the same list between the
// two requests (the API has no conditional PATCH).
int cmdWafExclude(Client& c, uint32_t rule, const std::string& target, bool exclude) {
  json cur = c.call("GET", "/api/v1/waf", nullptr, nullptr);
  json patch = json::object();
  bool changed = false;
  auto sameRule = [&](const json& v) { return v.is_number_integer() && v.get<int64_t>() == int64_t(rule); };
  std::string what;
  if (target.empty()) {
    json list = arrayMember(cur, "disableRules");
    bool present = std::any_of(list.begin(), list.end(), sameRule);
    if (exclude && !present) {
      list.push_back(rule);
      changed = true;
    } else if (!exclude && present) {
      list.erase(std::remove_if(list.begin(), list.end(), sameRule), list.end());
      changed = true;
    }
    patch["disableRules"] = list;
    what = exclude ? (changed ? "rule " + std::to_string(rule) + " disabled"
                              : "rule " + std::to_string(rule) + " is already disabled")
                   : (changed ? "rule " + std::to_string(rule) + " enabled again"
                              : "rule " + std::to_string(rule) + " is not disabled");
  } else {
    json list = arrayMember(cur, "excludeTargets");
    auto same = [&](const json& v) { return sameRule(member(v, "rule")) && text(v, "target") == target; };
    bool present = std::any_of(list.begin(), list.end(), same);
    if (exclude && !present) {
      list.push_back({{"rule", rule}, {"target", target}});
      changed = true;
    } else if (!exclude && present) {
      list.erase(std::remove_if(list.begin(), list.end(), same), list.end());
      changed = true;
    }
    patch["excludeTargets"] = list;
    std::string r = "rule " + std::to_string(rule);
    what = exclude ? (changed ? r + " no longer inspects " + target : r + " already skips " + target)
                   : (changed ? r + " inspects " + target + " again" : r + " has no exclusion for " + target);
  }
  if (!changed) {
    if (c.globals().json) printRaw(json{{"changed", false}}.dump());
    else std::printf("%s; nothing changed\n", printable(what).c_str());
    return kExitOk;
  }
  std::string body = patch.dump();
  HttpResponse raw;
  json j = c.call("PATCH", "/api/v1/waf", &body, &raw);
  return printVersion(c, raw, j, what);
}

std::string ruleMatch(const json& r) {
  std::string out;
  auto add = [&](const char* label, const char* key) {
    const json& v = arrayMember(r, key);
    if (v.empty()) return;
    if (!out.empty()) out += " ";
    out += std::string(label) + "=" + joinList(v, ",");
  };
  add("listeners", "listeners");
  add("hosts", "hosts");
  add("paths", "pathPrefixes");
  return out.empty() ? "all" : out;
}

int cmdRateLimitRules(Client& c) {
  HttpResponse raw;
  json j = c.call("GET", "/api/v1/ratelimit/rules", nullptr, &raw);
  if (c.globals().json) return printAnswer(raw);
  Table t({"NAME", "KEY", "LIMIT", "PERIOD", "BURST", "ALGORITHM", "MATCH", "FLAGS"});
  for (const auto& r : arrayMember(j, "rules")) {
    std::string flags;
    if (member(r, "dryRun") == json(true)) flags += "dry-run";
    if (member(r, "headers") == json(true)) flags += flags.empty() ? "headers" : ",headers";
    std::string period = text(r, "periodS");
    t.add({text(r, "name"), text(r, "key"), text(r, "limit"), period == "-" ? "-" : period + " s", text(r, "burst"),
           text(r, "algorithm"), ruleMatch(r), flags});
  }
  t.print();
  return kExitOk;
}

int cmdRateLimitAdd(Client& c, const std::string& file) {
  std::string body = readFile(file, "rule file");
  json rule = json::parse(body, nullptr, false);
  std::string name = rule.is_object() && member(rule, "name").is_string() ? member(rule, "name").get<std::string>() : "";
  HttpResponse raw;
  json j = c.call("POST", "/api/v1/ratelimit/rules", &body, &raw);
  return printVersion(c, raw, j, name.empty() ? "added the rule" : "added rule " + name);
}

int cmdRateLimitRemove(Client& c, const std::string& name) {
  requireNonEmpty(name, "NAME");
  HttpResponse raw;
  json j = c.call("DELETE", "/api/v1/ratelimit/rules/" + encodeSegment(name), nullptr, &raw);
  return printVersion(c, raw, j, "removed rule " + name);
}

std::string keyPath(const std::string& rule, const std::string& key) {
  requireNonEmpty(rule, "RULE");
  requireNonEmpty(key, "KEY");
  return "/api/v1/ratelimit/keys/" + encodeSegment(rule) + "/" + encodeSegment(key);
}

int cmdRateLimitGet(Client& c, const std::string& rule, const std::string& key) {
  HttpResponse raw;
  json j = c.call("GET", keyPath(rule, key), nullptr, &raw);
  if (c.globals().json) return printAnswer(raw);
  Table t({"RULE", "KEY", "TRACKED", "REMAINING", "LIMIT", "RESET", "BLOCKED"});
  std::string reset = text(j, "resetS");
  t.add({text(j, "rule"), text(j, "key"), text(j, "tracked"), text(j, "remaining"), text(j, "limit"),
         reset == "-" ? "-" : reset + " s", text(j, "blocked")});
  t.print();
  return kExitOk;
}

int cmdRateLimitReset(Client& c, const std::string& rule, const std::string& key) {
  HttpResponse raw;
  json j = c.call("DELETE", keyPath(rule, key), nullptr, &raw);
  if (c.globals().json) return printAnswer(raw);
  bool reset = member(j, "reset").is_boolean() && member(j, "reset").get<bool>();
  std::printf(reset ? "%s: state of %s forgotten\n" : "%s: %s had no state; nothing changed\n",
              printable(rule).c_str(), printable(key).c_str());
  return kExitOk;
}

int cmdRateLimitTop(Client& c) {
  HttpResponse raw;
  json j = c.call("GET", "/api/v1/ratelimit/top", nullptr, &raw);
  if (c.globals().json) return printAnswer(raw);
  Table t({"RULE", "KEY", "REFUSED"});
  for (const auto& x : arrayMember(j, "top")) t.add({text(x, "rule"), text(x, "key"), text(x, "refused")});
  if (t.size() == 0) {
    std::printf("no key has been refused\n");
    return kExitOk;
  }
  t.print();
  return kExitOk;
}

std::string certPath(const std::string& listener, uint32_t index) {
  requireNonEmpty(listener, "LISTENER");
  return "/api/v1/tls/listeners/" + encodeSegment(listener) + "/certificates/" + std::to_string(index);
}

int cmdTlsPut(Client& c, const std::string& listener, uint32_t index, const std::string& certFile,
              const std::string& keyFile, const std::string& ocspFile) {
  json req = {{"cert", readFile(certFile, "certificate")}, {"key", readFile(keyFile, "key")}};
  if (!ocspFile.empty()) req["ocsp"] = base64(readFile(ocspFile, "OCSP response"));
  std::string body = req.dump();
  HttpResponse raw;
  json j = c.call("PUT", certPath(listener, index), &body, &raw);
  return printVersion(c, raw, j, "certificate " + std::to_string(index) + " of listener " + listener + " stored");
}

int cmdTlsDelete(Client& c, const std::string& listener, uint32_t index) {
  HttpResponse raw;
  json j = c.call("DELETE", certPath(listener, index), nullptr, &raw);
  return printVersion(c, raw, j, "certificate " + std::to_string(index) + " of listener " + listener + " removed");
}

int cmdGeoReload(Client& c) {
  HttpResponse raw;
  json j = c.call("POST", "/api/v1/geo/reload", nullptr, &raw);
  if (c.globals().json) return printAnswer(raw);
  printGeo(j);
  return kExitOk;
}

int cmdGeoLookup(Client& c, const std::string& addr) {
  requireNonEmpty(addr, "ADDR");
  HttpResponse raw;
  json j = c.call("GET", "/api/v1/geo/lookup/" + encodeSegment(addr), nullptr, &raw);
  if (c.globals().json) return printAnswer(raw);
  std::string country = text(j, "country");
  std::printf("%s  %s\n", printable(text(j, "address")).c_str(),
              country.empty() || country == "-" ? "(unknown)" : printable(country).c_str());
  return kExitOk;
}

int cmdGet(Client& c, const std::string& path, const char* accept) {
  HttpResponse r = c.send("GET", path, nullptr, accept);
  if (!r.ok()) throw c.apiFailure(r);
  printRaw(r.body);
  return kExitOk;
}

// ---------------------------------------------------------------- offline verbs

int cmdValidateOffline(const std::string& file) {
  auto r = moat::control::loadConfigFile(file);
  for (const auto& e : r.errors) std::fprintf(stderr, "%s: %s\n", file.c_str(), e.toString().c_str());
  if (!r.errors.empty()) return kExitApi;
  std::printf("%s: OK\n", file.c_str());
  return kExitOk;
}

int cmdSignal(const std::string& pidText, bool reload) {
  char* end = nullptr;
  long pid = std::strtol(pidText.c_str(), &end, 10);
  if (end == pidText.c_str() || *end != 0 || pid <= 0) {
    throw Failure(kExitUsage, pidText + " is not a process id");
  }
  if (kill(static_cast<pid_t>(pid), reload ? SIGHUP : SIGUSR1) != 0) {
    throw Failure(kExitApi, "signal " + std::to_string(pid) + ": " + errnoText(errno));
  }
  return kExitOk;
}

}  // namespace

int main(int argc, char** argv) {
  // A server closing early must show up as an error from send(), not kill us.
  ::signal(SIGPIPE, SIG_IGN);

  Globals g;
  CLI::App app{"moatctl: control a running moatd through its REST admin API (docs/CONTROL_API.md)"};
  app.fallthrough();  // global options may also follow the verb
  app.require_subcommand(1);
  app.add_option("--url", g.url, "Admin API base URL")->envname("MOAT_URL")->capture_default_str();
  // The token's sources are taken in this order: --token, --token-file,
  // MOAT_TOKEN, MOAT_TOKEN_FILE, the default file (the command line beats
  // the environment), so they are not CLI11 envname()s.
  auto* tokenFileOpt = app.add_option("--token-file", g.tokenFile,
                                      "File holding the bearer token (env MOAT_TOKEN_FILE; default " +
                                          std::string(kDefaultTokenFile) + ")");
  auto* tokenOpt =
      app.add_option("--token", g.token, "The bearer token itself (env MOAT_TOKEN; visible in ps: prefer a file)");
  app.add_flag("--json", g.json, "Print the server's JSON answer as it came");
  app.add_option("--timeout", g.timeoutS, "Seconds allowed for each request (connect to last byte)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--cacert", g.caFile, "PEM CAs to verify an https server (default: the system store)")
      ->check(CLI::ExistingFile);
  app.add_option("--cert", g.certFile, "PEM client certificate for https (mTLS)")->check(CLI::ExistingFile);
  app.add_option("--key", g.keyFile, "PEM key of --cert (default: in the --cert file)")->check(CLI::ExistingFile);

  // Each leaf verb registers what it runs; after parsing, the parsed leaf runs.
  std::vector<std::pair<CLI::App*, std::function<int(Client&)>>> online;
  std::vector<std::pair<CLI::App*, std::function<int()>>> offline;

  // Argument storage for every verb (only one verb is parsed per run).
  std::string pool, addr, file, out, name, rule, key, listener, certFile, keyFile, ocspFile, mode, enabled, target,
      pidText;
  uint64_t version = 0;
  uint32_t index = 0, ruleId = 0;
  int64_t weight = 0, paranoia = 0;

  auto* status = app.add_subcommand("status", "Version, uptime, listeners, pools and backend health, geo");
  online.emplace_back(status, [&](Client& c) { return cmdStatus(c); });
  auto* health = app.add_subcommand("health", "Liveness and readiness probes (/healthz, /readyz)");
  online.emplace_back(health, [&](Client& c) { return cmdHealth(c); });

  auto* config = app.add_subcommand("config", "The configuration document and its versions");
  config->require_subcommand(1);
  auto* cget = config->add_subcommand("get", "Print (or save) the running config document");
  cget->add_option("-o,--output", out, "Write it to FILE instead");
  online.emplace_back(cget, [&](Client& c) { return cmdConfigGet(c, out); });
  auto* capply = config->add_subcommand("apply", "Replace the running config with FILE (a new version)");
  capply->add_option("FILE", file, "Config document")->required();
  online.emplace_back(capply, [&](Client& c) { return cmdConfigApply(c, file); });
  auto* cvalidate = config->add_subcommand("validate", "Check FILE on the server and diff it against the running config");
  cvalidate->add_option("FILE", file, "Config document")->required();
  online.emplace_back(cvalidate, [&](Client& c) { return cmdConfigValidate(c, file); });
  auto* cversions = config->add_subcommand("versions", "Stored config versions, newest first");
  online.emplace_back(cversions, [&](Client& c) { return cmdConfigVersions(c); });
  auto* cshow = config->add_subcommand("show", "Print the document of a stored version");
  cshow->add_option("VERSION", version, "Version number")->required();
  online.emplace_back(cshow, [&](Client& c) { return cmdConfigShow(c, version); });
  auto* croll = config->add_subcommand("rollback", "Apply a stored version again (as a new version)");
  croll->add_option("VERSION", version, "Version number")->required();
  online.emplace_back(croll, [&](Client& c) { return cmdConfigRollback(c, version); });

  auto* backends = app.add_subcommand("backends", "Pools and their backends");
  backends->require_subcommand(1);
  auto* blist = backends->add_subcommand("list", "Backends with weight, drain state and health");
  blist->add_option("POOL", pool, "Only this pool");
  online.emplace_back(blist, [&](Client& c) { return cmdBackendsList(c, pool); });
  auto* badd = backends->add_subcommand("add", "Add a backend to a pool");
  badd->add_option("POOL", pool)->required();
  badd->add_option("BACKEND", addr, "ADDR:PORT: 10.0.0.5:80 or [fd00::5]:80")->required();
  auto* weightOpt = badd->add_option("--weight", weight, "Weight 0..1000 (server default 1)");
  online.emplace_back(badd, [&](Client& c) {
    return cmdBackendsAdd(c, pool, addr, weightOpt->count() ? std::optional<int64_t>(weight) : std::nullopt);
  });
  auto* bremove = backends->add_subcommand("remove", "Remove a backend from a pool");
  bremove->add_option("POOL", pool)->required();
  bremove->add_option("BACKEND", addr, "ADDR:PORT")->required();
  online.emplace_back(bremove, [&](Client& c) { return cmdBackendsRemove(c, pool, addr); });
  auto* bdrain = backends->add_subcommand("drain", "No new requests to a backend; requests in flight finish");
  bdrain->add_option("POOL", pool)->required();
  bdrain->add_option("BACKEND", addr, "ADDR:PORT")->required();
  online.emplace_back(bdrain, [&](Client& c) { return cmdBackendsDrain(c, pool, addr, true); });
  auto* benable = backends->add_subcommand("enable", "Undo drain");
  benable->add_option("POOL", pool)->required();
  benable->add_option("BACKEND", addr, "ADDR:PORT")->required();
  online.emplace_back(benable, [&](Client& c) { return cmdBackendsDrain(c, pool, addr, false); });
  auto* bweight = backends->add_subcommand("weight", "Set a backend's weight");
  bweight->add_option("POOL", pool)->required();
  bweight->add_option("BACKEND", addr, "ADDR:PORT")->required();
  bweight->add_option("N", weight, "Weight 0..1000")->required();
  online.emplace_back(bweight, [&](Client& c) { return cmdBackendsWeight(c, pool, addr, weight); });

  auto* waf = app.add_subcommand("waf", "WAF settings");
  waf->require_subcommand(1);
  auto* wshow = waf->add_subcommand("show", "Enabled, mode, paranoia, disabled rules and target exclusions");
  online.emplace_back(wshow, [&](Client& c) { return cmdWafShow(c); });
  auto* wset = waf->add_subcommand("set", "Change enabled, mode or paranoia");
  wset->add_option("--mode", mode, "block or detect")->check(CLI::IsMember({"block", "detect"}));
  auto* paranoiaOpt = wset->add_option("--paranoia", paranoia, "CRS paranoia level 1..4");
  wset->add_option("--enabled", enabled, "true or false")->check(CLI::IsMember({"true", "false"}));
  online.emplace_back(wset, [&](Client& c) {
    return cmdWafSet(c, mode, paranoiaOpt->count() ? std::optional<int64_t>(paranoia) : std::nullopt, enabled);
  });
  auto* wexclude = waf->add_subcommand("exclude", "Disable RULE, or with --target stop RULE inspecting T");
  wexclude->add_option("RULE", ruleId, "Rule id")->required();
  wexclude->add_option("--target", target, "e.g. ARGS:password or REQUEST_COOKIES:/^_ga/");
  online.emplace_back(wexclude, [&](Client& c) { return cmdWafExclude(c, ruleId, target, true); });
  auto* winclude = waf->add_subcommand("include", "Undo exclude");
  winclude->add_option("RULE", ruleId, "Rule id")->required();
  winclude->add_option("--target", target, "The exclusion's target");
  online.emplace_back(winclude, [&](Client& c) { return cmdWafExclude(c, ruleId, target, false); });

  auto* rl = app.add_subcommand("ratelimit", "Rate-limit rules and key state");
  rl->require_subcommand(1);
  auto* rrules = rl->add_subcommand("rules", "List the rules");
  online.emplace_back(rrules, [&](Client& c) { return cmdRateLimitRules(c); });
  auto* radd = rl->add_subcommand("add", "Add the rule in FILE (one rule object, config syntax)");
  radd->add_option("FILE", file)->required();
  online.emplace_back(radd, [&](Client& c) { return cmdRateLimitAdd(c, file); });
  auto* rremove = rl->add_subcommand("remove", "Remove a rule");
  rremove->add_option("NAME", name)->required();
  online.emplace_back(rremove, [&](Client& c) { return cmdRateLimitRemove(c, name); });
  auto* rget = rl->add_subcommand("get", "State of KEY (client IP, header or cookie value) under RULE");
  rget->add_option("RULE", rule)->required();
  rget->add_option("KEY", key)->required();
  online.emplace_back(rget, [&](Client& c) { return cmdRateLimitGet(c, rule, key); });
  auto* rreset = rl->add_subcommand("reset", "Forget KEY's state under RULE");
  rreset->add_option("RULE", rule)->required();
  rreset->add_option("KEY", key)->required();
  online.emplace_back(rreset, [&](Client& c) { return cmdRateLimitReset(c, rule, key); });
  auto* rtop = rl->add_subcommand("top", "Keys refused most");
  online.emplace_back(rtop, [&](Client& c) { return cmdRateLimitTop(c); });

  auto* tls = app.add_subcommand("tls", "Certificates of https listeners");
  tls->require_subcommand(1);
  auto* tput = tls->add_subcommand("put", "Replace certificate INDEX of LISTENER (INDEX = count appends)");
  tput->add_option("LISTENER", listener)->required();
  tput->add_option("INDEX", index)->required();
  tput->add_option("CERT", certFile, "PEM: leaf, then chain")->required()->check(CLI::ExistingFile);
  tput->add_option("KEY", keyFile, "PEM private key")->required()->check(CLI::ExistingFile);
  tput->add_option("--ocsp", ocspFile, "DER OCSP response to staple")->check(CLI::ExistingFile);
  online.emplace_back(tput,
                      [&](Client& c) { return cmdTlsPut(c, listener, index, certFile, keyFile, ocspFile); });
  auto* tdel = tls->add_subcommand("delete", "Remove certificate INDEX of LISTENER");
  tdel->add_option("LISTENER", listener)->required();
  tdel->add_option("INDEX", index)->required();
  online.emplace_back(tdel, [&](Client& c) { return cmdTlsDelete(c, listener, index); });

  auto* geo = app.add_subcommand("geo", "Geo database");
  geo->require_subcommand(1);
  auto* greload = geo->add_subcommand("reload", "Re-read the geo sources");
  online.emplace_back(greload, [&](Client& c) { return cmdGeoReload(c); });
  auto* glookup = geo->add_subcommand("lookup", "Country of an address");
  glookup->add_option("ADDR", addr)->required();
  online.emplace_back(glookup, [&](Client& c) { return cmdGeoLookup(c, addr); });

  auto* metrics = app.add_subcommand("metrics", "Counters (Prometheus text)");
  online.emplace_back(metrics, [&](Client& c) { return cmdGet(c, "/metrics", "text/plain"); });
  auto* openapi = app.add_subcommand("openapi", "The API's OpenAPI document");
  online.emplace_back(openapi, [&](Client& c) { return cmdGet(c, "/api/v1/openapi.json", "application/json"); });

  auto* validate = app.add_subcommand("validate", "Offline: validate a config FILE (no WAF compile, no TLS files)");
  validate->add_option("FILE", file)->required();
  offline.emplace_back(validate, [&] { return cmdValidateOffline(file); });
  auto* reload = app.add_subcommand("reload", "Offline: send SIGHUP to moatd PID (re-read its config file)");
  reload->add_option("PID", pidText)->required();
  offline.emplace_back(reload, [&] { return cmdSignal(pidText, true); });
  auto* stats = app.add_subcommand("stats", "Offline: send SIGUSR1 to moatd PID (print counters)");
  stats->add_option("PID", pidText)->required();
  offline.emplace_back(stats, [&] { return cmdSignal(pidText, false); });

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? kExitOk : kExitUsage;
  }
  if (tokenOpt->count() == 0 && tokenFileOpt->count() == 0) {
    if (const char* t = std::getenv("MOAT_TOKEN"); t != nullptr && *t != 0) {
      g.token = t;
    } else if (const char* f = std::getenv("MOAT_TOKEN_FILE"); f != nullptr && *f != 0) {
      g.tokenFile = f;
      g.tokenFileGiven = true;
    }
  }
  if (tokenFileOpt->count() > 0) g.tokenFileGiven = true;
  if (tokenOpt->count() > 0 && g.token.empty()) {
    std::fprintf(stderr, "moatctl: --token is empty\n");
    return kExitUsage;
  }

  try {
    for (auto& [sub, run] : offline) {
      if (sub->parsed()) return run();
    }
    for (auto& [sub, run] : online) {
      if (!sub->parsed()) continue;
      Client client(g);
      int rc = run(client);
      std::fflush(stdout);
      return rc;
    }
  } catch (const Failure& f) {
    std::fflush(stdout);
    std::fprintf(stderr, "moatctl: %s\n", f.what());
    for (const auto& d : f.details) std::fprintf(stderr, "  %s\n", d.c_str());
    return f.exitCode;
  } catch (const std::exception& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "moatctl: %s\n", e.what());
    return kExitApi;
  }
  std::fprintf(stderr, "moatctl: no verb given (try --help)\n");
  return kExitUsage;
}
