// TLS for the L7 proxy: what the control thread builds from the config.
//
// A TlsListener is everything one https listener needs to terminate TLS,
// built once per config version on the control thread: the certificate and
// key files are read and checked there (a broken file or a key that does not
// match its certificate is an error naming the JSON path and the file), and
// then one OpenSSL context set is made per worker, so that no OpenSSL object
// is shared between workers on the hot path (OpenSSL 3 serialises threads on
// shared contexts). A TlsUpstream is the same for a pool that speaks TLS to
// its backends. Both are immutable after build() except for the stapled OCSP
// responses, which refreshOcsp() swaps atomically. Connections keep the
// object alive (shared_ptr) for as long as they use it, so a reload never
// cuts an established connection.
//
// Session tickets: every worker, and every instance given the same
// ticketKeyFile, derives the same ticket keys from one secret (TicketSecret)
// and the current rotation period, with no shared mutable state: a ticket
// issued by one worker resumes on any other. A key encrypts for one period
// and still decrypts during the next.
//
// Nothing here includes OpenSSL headers; l7/src/tls_conn.h holds the
// per-connection side used by the proxy.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "moat/control/config.h"

namespace moat::l7 {

struct TlsBuildError {
  std::string path;     // JSON path, e.g. "listeners[0].tls.certificates[1].key"
  std::string message;  // e.g. "/etc/moat/a.key: key does not match the certificate"
  std::string toString() const { return path.empty() ? message : path + ": " + message; }
};

// The secret ticket keys are derived from. Created once per process (random,
// or read from a file so that several instances share it).
class TicketSecret {
 public:
  // 48 random bytes. Never fails on Linux (getrandom).
  static std::shared_ptr<const TicketSecret> random();
  // The first 48 bytes of `path` (at least 32 needed). Null with err set.
  static std::shared_ptr<const TicketSecret> fromFile(const std::string& path, std::string& err);
  const std::string& bytes() const { return bytes_; }

 private:
  std::string bytes_;
};

class TlsListener {
 public:
  // Reads and checks every file the listener config names and builds one
  // context set per worker. `path` is the listener's JSON path
  // ("listeners[0]"). Returns null and appends to errors on failure.
  // Control thread only; allocates and does file I/O.
  static std::shared_ptr<TlsListener> build(const control::TlsListenerConfig& cfg,
                                            const std::string& path, size_t workers,
                                            std::shared_ptr<const TicketSecret> tickets,
                                            std::vector<TlsBuildError>* errors);
  ~TlsListener();
  TlsListener(const TlsListener&) = delete;
  TlsListener& operator=(const TlsListener&) = delete;

  // Control thread, about once a second: re-reads each OCSP response file
  // whose modification time or size changed and publishes it to the
  // handshakes that follow. A file that cannot be read keeps the previous
  // response and is reported in `warnings`. Returns how many were replaced.
  size_t refreshOcsp(std::vector<std::string>* warnings) const;

  // SNI names served (exact and "*.suffix"), for logs: "a.test, *.b.test".
  std::string describe() const;

  struct Impl;
  Impl* impl() const { return impl_; }

 private:
  explicit TlsListener(Impl* impl);
  Impl* impl_;
};

class TlsUpstream {
 public:
  // Builds the client contexts for a pool's backends (`path`: "pools[2]").
  static std::shared_ptr<TlsUpstream> build(const control::UpstreamTlsConfig& cfg,
                                            const std::string& path, size_t workers,
                                            std::vector<TlsBuildError>* errors);
  ~TlsUpstream();
  TlsUpstream(const TlsUpstream&) = delete;
  TlsUpstream& operator=(const TlsUpstream&) = delete;

  struct Impl;
  Impl* impl() const { return impl_; }

 private:
  explicit TlsUpstream(Impl* impl);
  Impl* impl_;
};

// The TLS objects of one config: per listener (null for http) and per pool
// (null without tls), indexed like Config::listeners and Config::pools.
struct TlsSet {
  std::vector<std::shared_ptr<const TlsListener>> listeners;
  std::vector<std::shared_ptr<const TlsUpstream>> pools;
};

// Builds every TLS object `config` asks for. Errors carry JSON paths.
// Control thread (moatd start, --check and every reload).
TlsSet buildTls(const control::Config& config, size_t workers,
                const std::shared_ptr<const TicketSecret>& tickets,
                std::vector<TlsBuildError>* errors);

}  // namespace moat::l7
