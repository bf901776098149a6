#include "moat/control/admin_server.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <list>

namespace moat::control {

namespace {

constexpr size_t kMaxHead = 16 * 1024;
constexpr int64_t kIdleMs = 30000;

int64_t nowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

const char* reason(int status) {
  switch (status) {
    case 200: return "OK";
    case 201: return "Created";
    case 204: return "No Content";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 409: return "Conflict";
    case 411: return "Length Required";
    case 413: return "Content Too Large";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
    default: return "Status";
  }
}

std::string errorJson(const std::string& msg) {
  std::string s = "{\"error\":\"";
  for (char c : msg) {
    if (c == '"' || c == '\\') s += '\\';
    s += c;
  }
  return s + "\"}";
}

bool isLoopback(const sockaddr_storage& ss) {
  if (ss.ss_family == AF_INET) {
    const auto* a = reinterpret_cast<const sockaddr_in*>(&ss);
    return (ntohl(a->sin_addr.s_addr) >> 24) == 127;
  }
  const auto* a = reinterpret_cast<const sockaddr_in6*>(&ss);
  return IN6_IS_ADDR_LOOPBACK(&a->sin6_addr);
}

std::string peerString(const sockaddr_storage& ss) {
  char buf[INET6_ADDRSTRLEN] = {0};
  if (ss.ss_family == AF_INET) {
    const auto* a = reinterpret_cast<const sockaddr_in*>(&ss);
    inet_ntop(AF_INET, &a->sin_addr, buf, sizeof buf);
    return std::string(buf) + ":" + std::to_string(ntohs(a->sin_port));
  }
  const auto* a = reinterpret_cast<const sockaddr_in6*>(&ss);
  inet_ntop(AF_INET6, &a->sin6_addr, buf, sizeof buf);
  return "[" + std::string(buf) + "]:" + std::to_string(ntohs(a->sin6_port));
}

std::string opensslError() {
  unsigned long e = ERR_get_error();
  if (e == 0) return "unknown OpenSSL error";
  char buf[256];
  ERR_error_string_n(e, buf, sizeof buf);
  ERR_clear_error();
  return buf;
}

bool tokenChar(unsigned char c) {
  return std::isalnum(c) || std::strchr("!#$%&'*+-.^_`|~", c) != nullptr;
}

}  // namespace

std::string AdminRequest::header(const std::string& name) const {
  for (const auto& [k, v] : headers) {
    if (k == name) return v;
  }
  return "";
}

bool percentDecode(const std::string& in, std::string& out) {
  out.clear();
  for (size_t i = 0; i < in.size(); ++i) {
    char c = in[i];
    if (c != '%') {
      out += c;
      continue;
    }
    if (i + 2 >= in.size() || !std::isxdigit(static_cast<unsigned char>(in[i + 1])) ||
        !std::isxdigit(static_cast<unsigned char>(in[i + 2]))) {
      return false;
    }
    int v = std::stoi(in.substr(i + 1, 2), nullptr, 16);
    if (v == 0) return false;
    out += static_cast<char>(v);
    i += 2;
  }
  return true;
}

bool secretEquals(const std::string& a, const std::string& b) {
  if (a.size() != b.size() || a.empty()) return false;
  return CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

struct AdminServer::Impl {
  struct Conn {
    int fd = -1;
    SSL* ssl = nullptr;
    bool handshakeDone = false;
    std::string in;
    std::string out;
    size_t outOff = 0;
    bool closeAfterWrite = false;
    bool wantWrite = false;  // TLS: the last operation asked for POLLOUT
    int64_t lastActiveMs = 0;
    std::string peer;
    std::string subject;
  };

  AdminServerOptions opts;
  Handler handler;
  int listenFd = -1;
  uint16_t boundPort = 0;
  SSL_CTX* ctx = nullptr;
  std::list<Conn> conns;
  uint64_t served = 0;
  uint64_t refused = 0;

  ~Impl() {
    for (auto& c : conns) closeConn(c);
    if (listenFd >= 0) ::close(listenFd);
    if (ctx != nullptr) SSL_CTX_free(ctx);
  }

  static void closeConn(Conn& c) {
    if (c.ssl != nullptr) {
      if (c.handshakeDone) SSL_shutdown(c.ssl);
      SSL_free(c.ssl);
      c.ssl = nullptr;
    }
    if (c.fd >= 0) ::close(c.fd);
    c.fd = -1;
  }

  void accept() {
    for (int n = 0; n < 64; ++n) {
      sockaddr_storage ss{};
      socklen_t len = sizeof ss;
      int fd = ::accept4(listenFd, reinterpret_cast<sockaddr*>(&ss), &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) return;
      if (conns.size() >= 256) {  // bounded: the admin API is not a public service
        ::close(fd);
        ++refused;
        continue;
      }
      int one = 1;
      setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      Conn c;
      c.fd = fd;
      c.lastActiveMs = nowMs();
      c.peer = peerString(ss);
      if (ctx != nullptr) {
        c.ssl = SSL_new(ctx);
        if (c.ssl == nullptr || SSL_set_fd(c.ssl, fd) != 1) {
          if (c.ssl != nullptr) SSL_free(c.ssl);
          ::close(fd);
          continue;
        }
        SSL_set_accept_state(c.ssl);
      }
      conns.push_back(std::move(c));
    }
  }

  // After an SSL call returned `r` <= 0 (or a handshake step != 1): true
  // when it only has to wait for the socket (wantWrite says which way),
  // false when the session is finished or broken.
  static bool sslWouldBlock(Conn& c, int r) {
    int e = SSL_get_error(c.ssl, r);
    c.wantWrite = e == SSL_ERROR_WANT_WRITE;
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return true;
    ERR_clear_error();
    return false;
  }

  // Reads what is there. False: the connection is finished (closed or broken).
  bool readSome(Conn& c) {
    char buf[16384];
    for (;;) {
      if (c.ssl != nullptr) {
        if (!c.handshakeDone) {
          int r = SSL_do_handshake(c.ssl);
          if (r != 1) return sslWouldBlock(c, r);
          c.handshakeDone = true;
          if (X509* cert = SSL_get1_peer_certificate(c.ssl)) {
            char name[512];
            X509_NAME_oneline(X509_get_subject_name(cert), name, sizeof name);
            c.subject = name;
            X509_free(cert);
          }
        }
        int r = SSL_read(c.ssl, buf, sizeof buf);
        if (r <= 0) return sslWouldBlock(c, r);
        c.in.append(buf, static_cast<size_t>(r));
      } else {
        ssize_t r = ::recv(c.fd, buf, sizeof buf, 0);
        if (r == 0) return false;
        if (r < 0) return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
        c.in.append(buf, static_cast<size_t>(r));
      }
      c.lastActiveMs = nowMs();
      if (c.in.size() > kMaxHead + opts.maxBody + 1024) return true;  // parse() refuses it
    }
  }

  // Writes pending output. False: broken.
  bool writeSome(Conn& c) {
    while (c.outOff < c.out.size()) {
      size_t left = c.out.size() - c.outOff;
      if (c.ssl != nullptr) {
        int r = SSL_write(c.ssl, c.out.data() + c.outOff, static_cast<int>(std::min<size_t>(left, 1 << 20)));
        if (r <= 0) return sslWouldBlock(c, r);
        c.outOff += static_cast<size_t>(r);
      } else {
        ssize_t r = ::send(c.fd, c.out.data() + c.outOff, left, MSG_NOSIGNAL);
        if (r < 0) return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
        c.outOff += static_cast<size_t>(r);
      }
      c.lastActiveMs = nowMs();
    }
    c.out.clear();
    c.outOff = 0;
    c.wantWrite = false;
    return true;
  }

  void respond(Conn& c, const AdminResponse& r, bool keepAlive) {
    std::string s = "HTTP/1.1 " + std::to_string(r.status) + " " + reason(r.status) + "\r\n";
    s += "Content-Type: " + r.contentType + "\r\n";
    s += "Content-Length: " + std::to_string(r.body.size()) + "\r\n";
    s += "Cache-Control: no-store\r\n";
    for (const auto& [k, v] : r.headers) s += k + ": " + v + "\r\n";
    if (!keepAlive) s += "Connection: close\r\n";
    s += "\r\n";
    s += r.body;
    c.out += s;
    if (!keepAlive) c.closeAfterWrite = true;
    ++served;
  }

  void refuse(Conn& c, int status, const std::string& msg) {
    AdminResponse r;
    r.status = status;
    r.body = errorJson(msg);
    ++refused;
    respond(c, r, false);
    c.in.clear();
  }

  // Parses and answers every complete request in c.in (pipelining allowed).
  void parse(Conn& c) {
    while (!c.closeAfterWrite) {
      size_t headEnd = c.in.find("\r\n\r\n");
      if (headEnd == std::string::npos) {
        if (c.in.size() > kMaxHead) refuse(c, 431, "request head over 16384 bytes");
        return;
      }
      if (headEnd > kMaxHead) {
        refuse(c, 431, "request head over 16384 bytes");
        return;
      }
      AdminRequest req;
      req.peer = c.peer;
      req.clientSubject = c.subject;
      size_t lineEnd = c.in.find("\r\n");
      std::string line = c.in.substr(0, lineEnd);
      size_t sp1 = line.find(' ');
      size_t sp2 = sp1 == std::string::npos ? std::string::npos : line.find(' ', sp1 + 1);
      if (sp1 == std::string::npos || sp2 == std::string::npos || line.find(' ', sp2 + 1) != std::string::npos) {
        refuse(c, 400, "malformed request line");
        return;
      }
      req.method = line.substr(0, sp1);
      req.target = line.substr(sp1 + 1, sp2 - sp1 - 1);
      std::string version = line.substr(sp2 + 1);
      if (version != "HTTP/1.1" && version != "HTTP/1.0") {
        refuse(c, 400, "unsupported protocol version");
        return;
      }
      if (req.method.empty() || !std::all_of(req.method.begin(), req.method.end(), [](char ch) {
            return std::isupper(static_cast<unsigned char>(ch));
          })) {
        refuse(c, 400, "malformed method");
        return;
      }
      if (req.target.empty() || req.target[0] != '/') {
        refuse(c, 400, "request target must be an absolute path");
        return;
      }
      for (char ch : req.target) {
        if (static_cast<unsigned char>(ch) <= 0x20 || static_cast<unsigned char>(ch) >= 0x7f) {
          refuse(c, 400, "request target has a control or non-ASCII byte");
          return;
        }
      }
      size_t q = req.target.find('?');
      req.path = req.target.substr(0, q);
      if (q != std::string::npos) req.query = req.target.substr(q + 1);
      bool keepAlive = version == "HTTP/1.1";
      long long contentLength = -1;
      size_t pos = lineEnd + 2;
      while (pos < headEnd) {
        size_t e = c.in.find("\r\n", pos);
        std::string h = c.in.substr(pos, e - pos);
        pos = e + 2;
        size_t colon = h.find(':');
        if (colon == 0 || colon == std::string::npos) {
          refuse(c, 400, "malformed header line");
          return;
        }
        std::string name = h.substr(0, colon);
        for (char& ch : name) {
          if (!tokenChar(static_cast<unsigned char>(ch))) {
            refuse(c, 400, "malformed header name");
            return;
          }
          ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
        }
        std::string value = h.substr(colon + 1);
        while (!value.empty() && (value.front() == ' ' || value.front() == '\t')) value.erase(0, 1);
        while (!value.empty() && (value.back() == ' ' || value.back() == '\t')) value.pop_back();
        for (char ch : value) {
          if ((static_cast<unsigned char>(ch) < 0x20 && ch != '\t') || ch == 0x7f) {
            refuse(c, 400, "control byte in a header value");
            return;
          }
        }
        if (name == "content-length") {
          if (value.empty() || value.size() > 12 ||
              !std::all_of(value.begin(), value.end(), [](char ch) { return std::isdigit(static_cast<unsigned char>(ch)); })) {
            refuse(c, 400, "malformed Content-Length");
            return;
          }
          long long v = std::stoll(value);
          if (contentLength >= 0 && v != contentLength) {
            refuse(c, 400, "conflicting Content-Length headers");
            return;
          }
          contentLength = v;
        } else if (name == "transfer-encoding") {
          refuse(c, 411, "chunked or other transfer codings are not accepted; send Content-Length");
          return;
        } else if (name == "connection") {
          std::string v = value;
          std::transform(v.begin(), v.end(), v.begin(), [](unsigned char ch) { return std::tolower(ch); });
          if (v.find("close") != std::string::npos) keepAlive = false;
          if (v.find("keep-alive") != std::string::npos && version == "HTTP/1.0") keepAlive = true;
        }
        req.headers.emplace_back(std::move(name), std::move(value));
      }
      if (contentLength > static_cast<long long>(opts.maxBody)) {
        refuse(c, 413, "body over " + std::to_string(opts.maxBody) + " bytes");
        return;
      }
      size_t bodyLen = contentLength < 0 ? 0 : static_cast<size_t>(contentLength);
      if (c.in.size() < headEnd + 4 + bodyLen) return;  // wait for the rest
      req.body = c.in.substr(headEnd + 4, bodyLen);
      c.in.erase(0, headEnd + 4 + bodyLen);
      AdminResponse resp;
      try {
        resp = handler(req);
      } catch (const std::exception& e) {
        resp.status = 500;
        resp.body = errorJson(std::string("internal error: ") + e.what());
      }
      respond(c, resp, keepAlive);
    }
  }
};

AdminServer::AdminServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
AdminServer::~AdminServer() = default;

std::unique_ptr<AdminServer> AdminServer::open(const AdminServerOptions& opts, Handler handler,
                                               std::string& err) {
  auto impl = std::make_unique<Impl>();
  impl->opts = opts;
  impl->handler = std::move(handler);
  sockaddr_storage ss{};
  socklen_t len = 0;
  if (inet_pton(AF_INET, opts.address.c_str(), &reinterpret_cast<sockaddr_in*>(&ss)->sin_addr) == 1) {
    auto* a = reinterpret_cast<sockaddr_in*>(&ss);
    a->sin_family = AF_INET;
    a->sin_port = htons(opts.port);
    len = sizeof(sockaddr_in);
  } else if (inet_pton(AF_INET6, opts.address.c_str(), &reinterpret_cast<sockaddr_in6*>(&ss)->sin6_addr) == 1) {
    auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
    a->sin6_family = AF_INET6;
    a->sin6_port = htons(opts.port);
    len = sizeof(sockaddr_in6);
  } else {
    err = "admin address " + opts.address + " is not an IPv4 or IPv6 literal";
    return nullptr;
  }
  bool tls = !opts.certFile.empty() || !opts.keyFile.empty();
  if (tls && (opts.certFile.empty() || opts.keyFile.empty())) {
    err = "admin TLS needs both a certificate and a key file";
    return nullptr;
  }
  if (!opts.clientCaFile.empty() && !tls) {
    err = "admin client-certificate auth needs TLS (a certificate and a key)";
    return nullptr;
  }
  if (!tls && !isLoopback(ss)) {
    err = "refusing to serve the admin API on non-loopback address " + opts.address +
          " without TLS (give --admin-cert and --admin-key, or bind 127.0.0.1)";
    return nullptr;
  }
  if (tls) {
    impl->ctx = SSL_CTX_new(TLS_server_method());
    if (impl->ctx == nullptr) {
      err = "admin TLS: " + opensslError();
      return nullptr;
    }
    SSL_CTX_set_min_proto_version(impl->ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(impl->ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION | SSL_OP_CIPHER_SERVER_PREFERENCE);
    SSL_CTX_set_cipher_list(impl->ctx, "ECDHE+AESGCM:ECDHE+CHACHA20");
    if (SSL_CTX_use_certificate_chain_file(impl->ctx, opts.certFile.c_str()) != 1) {
      err = "admin TLS certificate " + opts.certFile + ": " + opensslError();
      return nullptr;
    }
    if (SSL_CTX_use_PrivateKey_file(impl->ctx, opts.keyFile.c_str(), SSL_FILETYPE_PEM) != 1) {
      err = "admin TLS key " + opts.keyFile + ": " + opensslError();
      return nullptr;
    }
    if (SSL_CTX_check_private_key(impl->ctx) != 1) {
      err = "admin TLS key " + opts.keyFile + " does not match certificate " + opts.certFile;
      return nullptr;
    }
    if (!opts.clientCaFile.empty()) {
      if (SSL_CTX_load_verify_locations(impl->ctx, opts.clientCaFile.c_str(), nullptr) != 1) {
        err = "admin client CA " + opts.clientCaFile + ": " + opensslError();
        return nullptr;
      }
      SSL_CTX_set_verify(impl->ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
    }
  }
  int fd = ::socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    err = std::string("admin socket: ") + strerror(errno);
    return nullptr;
  }
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0 || ::listen(fd, 64) != 0) {
    err = "admin listener " + opts.address + ":" + std::to_string(opts.port) + ": " + strerror(errno);
    ::close(fd);
    return nullptr;
  }
  sockaddr_storage bound{};
  socklen_t blen = sizeof bound;
  getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &blen);
  impl->boundPort = ntohs(bound.ss_family == AF_INET ? reinterpret_cast<sockaddr_in*>(&bound)->sin_port
                                                      : reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port);
  impl->listenFd = fd;
  return std::unique_ptr<AdminServer>(new AdminServer(std::move(impl)));
}

size_t AdminServer::pollFds(std::vector<pollfd>& fds) const {
  size_t n = 0;
  fds.push_back(pollfd{impl_->listenFd, POLLIN, 0});
  ++n;
  for (const auto& c : impl_->conns) {
    short ev = POLLIN;
    if (!c.out.empty() || c.wantWrite) ev |= POLLOUT;
    fds.push_back(pollfd{c.fd, ev, 0});
    ++n;
  }
  return n;
}

void AdminServer::dispatch(const std::vector<pollfd>& fds, size_t first, size_t count) {
  Impl& m = *impl_;
  if (count == 0) return;
  // Connections in pollFds order; accept() appends new ones after them.
  auto it = m.conns.begin();
  std::vector<std::list<Impl::Conn>::iterator> order;
  for (size_t i = 1; i < count && it != m.conns.end(); ++i, ++it) order.push_back(it);
  for (size_t i = 0; i < order.size(); ++i) {
    auto cit = order[i];
    Impl::Conn& c = *cit;
    short re = fds[first + 1 + i].revents;
    bool ok = true;
    if ((re & (POLLIN | POLLHUP | POLLERR)) != 0 || (c.wantWrite && (re & POLLOUT) != 0)) {
      ok = m.readSome(c);
      if (!c.closeAfterWrite) m.parse(c);
    }
    // A peer that half-closed after its request still gets the answer.
    if (!c.out.empty()) ok = m.writeSome(c) && ok;
    bool idle = nowMs() - c.lastActiveMs > kIdleMs;
    if (!ok || idle || (c.closeAfterWrite && c.out.empty())) {
      Impl::closeConn(c);
      m.conns.erase(cit);
    }
  }
  if ((fds[first].revents & POLLIN) != 0) m.accept();
}

uint16_t AdminServer::port() const { return impl_->boundPort; }
bool AdminServer::tls() const { return impl_->ctx != nullptr; }
uint64_t AdminServer::requests() const { return impl_->served; }
uint64_t AdminServer::badRequests() const { return impl_->refused; }

}  // namespace moat::control
