// The admin listener: a small HTTP/1.1 server for the REST control API.
//
// Control thread only. Single-threaded and poll-driven: the owner adds the
// server's descriptors to its own poll() set (pollFds) and hands the results
// back (dispatch); complete requests go to the handler on that same thread.
// Sockets are non-blocking, so a slow or stalled client never blocks the
// control thread; a connection idle for 30 s or slower than that to send a
// request is closed. Optional TLS (OpenSSL 3, TLS 1.2+) with optional client
// certificates. Requests are strict: Content-Length bodies only (no chunked
// uploads: 411), heads up to 16 KiB, bodies up to Options::maxBody (413).
#pragma once

#include <poll.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace moat::control {

struct AdminRequest {
  std::string method;  // "GET"
  std::string target;  // as sent: "/api/v1/pools/web/backends/%5B%3A%3A1%5D%3A80?x=1"
  std::string path;    // target without the query, not decoded
  std::string query;   // after '?', not decoded
  std::vector<std::pair<std::string, std::string>> headers;  // names lowercase
  std::string body;
  std::string peer;     // "127.0.0.1:40312"
  std::string clientSubject;  // verified client certificate subject (TLS with clientCaFile)

  // First header with that (lowercase) name, or "".
  std::string header(const std::string& name) const;
};

struct AdminResponse {
  int status = 200;
  std::string contentType = "application/json";
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;  // extra headers
};

struct AdminServerOptions {
  std::string address = "127.0.0.1";  // IPv4 or IPv6 literal
  uint16_t port = 9900;                // 0: an ephemeral port (tests); see port()
  std::string certFile;                // PEM; with keyFile: serve HTTPS
  std::string keyFile;
  std::string clientCaFile;            // PEM CAs: require a client certificate chaining to one
  size_t maxBody = 8 << 20;
};

class AdminServer {
 public:
  using Handler = std::function<AdminResponse(const AdminRequest&)>;

  // Binds and listens. Refuses (null, err set) a non-loopback address without
  // TLS: the API changes the whole appliance and carries a bearer token.
  static std::unique_ptr<AdminServer> open(const AdminServerOptions& opts, Handler handler,
                                           std::string& err);
  ~AdminServer();
  AdminServer(const AdminServer&) = delete;
  AdminServer& operator=(const AdminServer&) = delete;

  // Appends the listening socket and every connection to `fds`; returns how
  // many were added. Call dispatch() with the same entries after poll().
  size_t pollFds(std::vector<pollfd>& fds) const;
  // Accepts, reads, answers and closes as `fds` (the entries pollFds added,
  // starting at `first`) say; then closes connections idle too long.
  void dispatch(const std::vector<pollfd>& fds, size_t first, size_t count);

  uint16_t port() const;  // the bound port (useful with port 0)
  bool tls() const;
  uint64_t requests() const;  // answered so far
  uint64_t badRequests() const;  // 400/411/413/431 answered by the server itself

 private:
  struct Impl;
  explicit AdminServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Percent-decodes one path segment ("%5B%3A%3A1%5D%3A80" -> "[::1]:80").
// False when an escape is malformed or decodes to a NUL, '/' is kept as is.
bool percentDecode(const std::string& in, std::string& out);

// Constant-time equality of two secrets (the length is not secret).
bool secretEquals(const std::string& a, const std::string& b);

}  // namespace moat::control
