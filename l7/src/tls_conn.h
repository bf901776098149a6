// One TLS connection driven through memory BIOs (internal to l7/).
//
// The proxy's event loop owns the socket: received ciphertext is fed in with
// feed(), plaintext comes out of read(); plaintext goes in with write() and
// the records to send come out of takeOut(). OpenSSL never touches the
// socket, so nothing blocks and io_uring keeps doing the I/O. The handshake
// runs inside read()/write() as bytes arrive.
//
// Thread: the owning worker only. Lifetime: created at accept (server) or
// connect (client), deleted with the connection; holds a reference to the
// TlsListener/TlsUpstream it came from. Cost: one SSL object (~2-5 KB plus
// buffers). Failure: read()/write() return kError; error() says why.
#pragma once

#include <sys/socket.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "moat/l7/tls.h"

typedef struct ssl_st SSL;

namespace moat::l7 {

class TlsConn {
 public:
  enum : int { kError = -1, kClosed = -2 };

  // Server side of an https listener, for worker `worker`. Null when OpenSSL
  // cannot allocate.
  static std::unique_ptr<TlsConn> server(std::shared_ptr<const TlsListener> l, size_t worker);
  // Client side towards a backend at `addr` (its IP is verified when the
  // pool sets no SNI name).
  static std::unique_ptr<TlsConn> client(std::shared_ptr<const TlsUpstream> u, size_t worker,
                                         const sockaddr_storage& addr);
  ~TlsConn();
  TlsConn(const TlsConn&) = delete;
  TlsConn& operator=(const TlsConn&) = delete;

  // Received ciphertext (copied into the read BIO).
  void feed(const char* p, size_t n);
  // Advances the handshake and decrypts up to `cap` bytes into `out`.
  // Returns bytes (> 0), 0 when more input is needed, kClosed after the
  // peer's close_notify, kError on a fatal error.
  int read(char* out, size_t cap);
  // Encrypts up to n bytes. Returns bytes taken (> 0), 0 while the handshake
  // waits for the peer, kError on a fatal error.
  int write(const char* p, size_t n);
  // Ciphertext waiting to be sent (handshake messages, alerts, records).
  size_t pendingOut() const;
  // Moves up to cap bytes of it into out; returns how many.
  size_t takeOut(char* out, size_t cap);
  // Queues a close_notify alert (sent with the next takeOut).
  void shutdown();

  bool handshakeDone() const { return done_; }
  // True exactly once, on the call that saw the handshake complete.
  bool takeHandshakeEvent() {
    const bool e = done_ && !reported_;
    reported_ = reported_ || done_;
    return e;
  }
  bool resumed() const;
  // The verified client certificate's subject (RFC 2253), "" when the
  // client sent none. Valid after the handshake.
  std::string peerSubject() const;
  const std::string& error() const { return error_; }

 private:
  TlsConn() = default;
  SSL* ssl_ = nullptr;
  std::shared_ptr<const TlsListener> listener_;
  std::shared_ptr<const TlsUpstream> upstream_;
  bool done_ = false;
  bool reported_ = false;
  std::string error_;
};

}  // namespace moat::l7
