// TLS contexts and connections (l7/tls.h, l7/src/tls_conn.h) without sockets:
// certificates are made here with OpenSSL, and a client TlsConn and a server
// TlsConn exchange their bytes in memory, exactly as the proxy pumps them.
#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "moat/l7/tls.h"
#include "tls_conn.h"

namespace moat::l7 {
namespace {

namespace fs = std::filesystem;

struct Files {
  fs::path dir;
  Files() {
    char tmpl[] = "/tmp/moat-tls-test-XXXXXX";
    dir = mkdtemp(tmpl);
  }
  ~Files() { fs::remove_all(dir); }
  std::string path(const std::string& name) const { return (dir / name).string(); }
  void write(const std::string& name, const std::string& data) const {
    std::ofstream(path(name), std::ios::binary) << data;
  }
};

std::string pemOf(X509* x) {
  BIO* b = BIO_new(BIO_s_mem());
  PEM_write_bio_X509(b, x);
  char* d = nullptr;
  long n = BIO_get_mem_data(b, &d);
  std::string s(d, static_cast<size_t>(n));
  BIO_free(b);
  return s;
}

std::string pemOf(EVP_PKEY* k) {
  BIO* b = BIO_new(BIO_s_mem());
  PEM_write_bio_PrivateKey(b, k, nullptr, nullptr, 0, nullptr, nullptr);
  char* d = nullptr;
  long n = BIO_get_mem_data(b, &d);
  std::string s(d, static_cast<size_t>(n));
  BIO_free(b);
  return s;
}

// A self-signed P-256 certificate for `sans` ("DNS:a.test,DNS:*.b.test");
// writes <name>.pem and <name>.key.
void makeCert(const Files& f, const std::string& name, const std::string& cn, const std::string& sans) {
  EVP_PKEY* key = EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256");
  ASSERT_NE(key, nullptr);
  X509* x = X509_new();
  X509_set_version(x, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(x), static_cast<long>(std::hash<std::string>{}(name) & 0x7fffffff));
  X509_gmtime_adj(X509_getm_notBefore(x), -60);
  X509_gmtime_adj(X509_getm_notAfter(x), 86400);
  X509_set_pubkey(x, key);
  X509_NAME* n = X509_get_subject_name(x);
  X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1, 0);
  X509_set_issuer_name(x, n);
  if (!sans.empty()) {
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, x, x, nullptr, nullptr, 0);
    X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, NID_subject_alt_name, sans.c_str());
    ASSERT_NE(ext, nullptr);
    X509_add_ext(x, ext, -1);
    X509_EXTENSION_free(ext);
  }
  X509V3_CTX bctx;
  X509V3_set_ctx_nodb(&bctx);
  X509V3_set_ctx(&bctx, x, x, nullptr, nullptr, 0);
  X509_EXTENSION* bc = X509V3_EXT_conf_nid(nullptr, &bctx, NID_basic_constraints, "critical,CA:TRUE");
  X509_add_ext(x, bc, -1);
  X509_EXTENSION_free(bc);
  ASSERT_GT(X509_sign(x, key, EVP_sha256()), 0);
  f.write(name + ".pem", pemOf(x));
  f.write(name + ".key", pemOf(key));
  X509_free(x);
  EVP_PKEY_free(key);
}

control::TlsListenerConfig listenerConfig(const Files& f, std::initializer_list<std::string> names) {
  control::TlsListenerConfig c;
  for (const auto& n : names) c.certificates.push_back({f.path(n + ".pem"), f.path(n + ".key"), ""});
  return c;
}

// Moves bytes both ways until neither side has anything to send.
void pump(TlsConn& a, TlsConn& b, std::string* aPlain, std::string* bPlain) {
  char buf[16384];
  for (int round = 0; round < 20; ++round) {
    bool moved = false;
    for (auto [from, to, plain] : {std::tuple{&a, &b, bPlain}, std::tuple{&b, &a, aPlain}}) {
      while (from->pendingOut() > 0) {
        size_t n = from->takeOut(buf, sizeof(buf));
        to->feed(buf, n);
        moved = true;
      }
      for (;;) {
        int r = to->read(buf, sizeof(buf));
        if (r <= 0) break;
        if (plain != nullptr) plain->append(buf, static_cast<size_t>(r));
      }
    }
    if (!moved) return;
  }
}

struct Pair {
  std::shared_ptr<TlsListener> listener;
  std::shared_ptr<TlsUpstream> upstream;
  std::unique_ptr<TlsConn> server, client;
};

// A client that trusts `caName`.pem and asks for `sni`, against a listener.
Pair connect(const Files& f, const control::TlsListenerConfig& lc, const std::string& caName,
             const std::string& sni) {
  Pair p;
  std::vector<TlsBuildError> errors;
  p.listener = TlsListener::build(lc, "listeners[0]", 1, TicketSecret::random(), &errors);
  EXPECT_TRUE(errors.empty()) << errors[0].toString();
  control::UpstreamTlsConfig uc;
  uc.enabled = true;
  uc.caFile = f.path(caName + ".pem");
  uc.sni = sni;
  p.upstream = TlsUpstream::build(uc, "pools[0]", 1, &errors);
  EXPECT_TRUE(errors.empty()) << errors[0].toString();
  if (!p.listener || !p.upstream) return p;
  p.server = TlsConn::server(p.listener, 0);
  sockaddr_storage addr{};
  p.client = TlsConn::client(p.upstream, 0, addr);
  return p;
}

TEST(TlsBuild, NamesComeFromSubjectAltNames) {
  Files f;
  makeCert(f, "def", "default.test", "");
  makeCert(f, "ab", "ignored-cn", "DNS:a.test,DNS:*.b.test");
  std::vector<TlsBuildError> errors;
  auto l = TlsListener::build(listenerConfig(f, {"def", "ab"}), "listeners[0]", 2, TicketSecret::random(),
                              &errors);
  ASSERT_NE(l, nullptr);
  EXPECT_EQ(l->describe(), "default.test, *.b.test, a.test");
}

TEST(TlsBuild, KeyThatDoesNotMatchIsAnErrorWithPathAndFiles) {
  Files f;
  makeCert(f, "one", "one.test", "DNS:one.test");
  makeCert(f, "two", "two.test", "DNS:two.test");
  control::TlsListenerConfig c;
  c.certificates.push_back({f.path("one.pem"), f.path("two.key"), ""});
  std::vector<TlsBuildError> errors;
  EXPECT_EQ(TlsListener::build(c, "listeners[3]", 1, TicketSecret::random(), &errors), nullptr);
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_EQ(errors[0].path, "listeners[3].tls.certificates[0]");
  EXPECT_NE(errors[0].message.find("does not match"), std::string::npos) << errors[0].message;
  EXPECT_NE(errors[0].message.find(f.path("two.key")), std::string::npos);
}

TEST(TlsBuild, BrokenAndMissingFilesAreErrors) {
  Files f;
  makeCert(f, "one", "one.test", "DNS:one.test");
  f.write("broken.pem", "-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n");
  control::TlsListenerConfig c;
  c.certificates.push_back({f.path("broken.pem"), f.path("one.key"), ""});
  c.certificates.push_back({f.path("missing.pem"), f.path("one.key"), ""});
  std::vector<TlsBuildError> errors;
  EXPECT_EQ(TlsListener::build(c, "listeners[0]", 1, TicketSecret::random(), &errors), nullptr);
  ASSERT_EQ(errors.size(), 2u);
  EXPECT_EQ(errors[0].path, "listeners[0].tls.certificates[0].cert");
  EXPECT_NE(errors[0].message.find("no PEM certificate"), std::string::npos);
  EXPECT_EQ(errors[1].path, "listeners[0].tls.certificates[1].cert");
  EXPECT_NE(errors[1].message.find("No such file"), std::string::npos);
}

TEST(TlsBuild, BadCipherListAndGroupsAreErrors) {
  Files f;
  makeCert(f, "one", "one.test", "DNS:one.test");
  auto c = listenerConfig(f, {"one"});
  c.groups = "X25519:NoSuchCurve";
  std::vector<TlsBuildError> errors;
  EXPECT_EQ(TlsListener::build(c, "listeners[0]", 1, TicketSecret::random(), &errors), nullptr);
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_EQ(errors[0].path, "listeners[0].tls.groups");
  c.groups = "X25519";
  c.ciphers = "NOT-A-CIPHER";
  errors.clear();
  EXPECT_EQ(TlsListener::build(c, "listeners[0]", 1, TicketSecret::random(), &errors), nullptr);
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_EQ(errors[0].path, "listeners[0].tls.ciphers");
}

TEST(TlsConnTest, HandshakeAndDataBothWays) {
  Files f;
  makeCert(f, "a", "a.test", "DNS:a.test");
  Pair p = connect(f, listenerConfig(f, {"a"}), "a", "a.test");
  ASSERT_TRUE(p.server && p.client);
  const std::string req = "GET / HTTP/1.1\r\nHost: a.test\r\n\r\n";
  EXPECT_EQ(p.client->write(req.data(), req.size()), 0);  // starts the handshake
  std::string atServer, atClient;
  pump(*p.client, *p.server, &atClient, &atServer);
  ASSERT_TRUE(p.client->handshakeDone()) << p.client->error();
  ASSERT_TRUE(p.server->handshakeDone()) << p.server->error();
  EXPECT_TRUE(p.server->takeHandshakeEvent());
  EXPECT_FALSE(p.server->takeHandshakeEvent());  // once
  EXPECT_EQ(p.client->write(req.data(), req.size()), static_cast<int>(req.size()));
  pump(*p.client, *p.server, &atClient, &atServer);
  EXPECT_EQ(atServer, req);
  const std::string resp = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
  EXPECT_EQ(p.server->write(resp.data(), resp.size()), static_cast<int>(resp.size()));
  pump(*p.client, *p.server, &atClient, &atServer);
  EXPECT_EQ(atClient, resp);
  EXPECT_FALSE(p.server->resumed());
  EXPECT_EQ(p.server->peerSubject(), "");  // no client certificate
  // close_notify reads as kClosed on the other side.
  p.client->shutdown();
  char buf[64];
  while (p.client->pendingOut() > 0) p.server->feed(buf, p.client->takeOut(buf, sizeof(buf)));
  EXPECT_EQ(p.server->read(buf, sizeof(buf)), TlsConn::kClosed);
}

TEST(TlsConnTest, SniPicksTheCertificateTheClientVerifies) {
  Files f;
  makeCert(f, "def", "default.test", "DNS:default.test");
  makeCert(f, "wild", "wild", "DNS:*.b.test");
  auto lc = listenerConfig(f, {"def", "wild"});
  // Trusting only the wildcard certificate: x.b.test verifies, which it can
  // only if the server chose that certificate by SNI.
  Pair ok = connect(f, lc, "wild", "x.b.test");
  ok.client->write("x", 1);
  pump(*ok.client, *ok.server, nullptr, nullptr);
  EXPECT_TRUE(ok.client->handshakeDone()) << ok.client->error();
  // A wildcard covers one label only: y.x.b.test gets the default
  // certificate, which the client does not trust.
  Pair deep = connect(f, lc, "wild", "y.x.b.test");
  deep.client->write("x", 1);
  pump(*deep.client, *deep.server, nullptr, nullptr);
  EXPECT_FALSE(deep.client->handshakeDone());
  EXPECT_NE(deep.client->error().find("certificate verify failed"), std::string::npos)
      << deep.client->error();
}

TEST(TlsConnTest, GarbageClientHelloIsAFatalError) {
  Files f;
  makeCert(f, "a", "a.test", "DNS:a.test");
  std::vector<TlsBuildError> errors;
  auto l = TlsListener::build(listenerConfig(f, {"a"}), "listeners[0]", 1, TicketSecret::random(), &errors);
  ASSERT_NE(l, nullptr);
  auto s = TlsConn::server(l, 0);
  const std::string junk = "GET / HTTP/1.1\r\nHost: a.test\r\n\r\n";  // plaintext HTTP on TLS
  s->feed(junk.data(), junk.size());
  char buf[256];
  EXPECT_EQ(s->read(buf, sizeof(buf)), TlsConn::kError);
  EXPECT_FALSE(s->error().empty());
  EXPECT_FALSE(s->handshakeDone());
  // A worker index the listener was not built for gets no session.
  EXPECT_EQ(TlsConn::server(l, 5), nullptr);
}

}  // namespace
}  // namespace moat::l7
