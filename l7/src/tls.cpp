// TLS contexts (tls.h) and connections (tls_conn.h) on OpenSSL 3.
//
// Control thread: build() reads each file once, checks it, and parses it
// again per worker so every worker has its own SSL_CTX, X509 and EVP_PKEY
// objects. Worker threads: only their own contexts, through the callbacks
// below (SNI, ALPN, OCSP, session tickets), which read immutable data or an
// atomic shared_ptr.
#include "moat/l7/tls.h"

#include <openssl/bio.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <netinet/in.h>
#include <sys/random.h>
#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <ctime>
#include <fstream>
#include <map>
#include <sstream>
#include <unordered_map>

#include "tls_conn.h"

namespace moat::l7 {
namespace {

// TLS 1.2 suites when the listener names none: forward secrecy and AEAD only.
constexpr const char* kDefaultTls12Ciphers =
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305";

// The reason of the last OpenSSL error on this thread, and clears the queue
// (a stale entry would be blamed on the next connection).
std::string sslError(const char* fallback) {
  unsigned long last = 0;
  for (unsigned long e; (e = ERR_get_error()) != 0;) last = e;
  if (last == 0) return fallback;
  const char* r = ERR_reason_error_string(last);
  return r != nullptr ? std::string(r) : std::string(fallback);
}

bool readFile(const std::string& path, std::string& out, std::string& err) {
  std::ifstream f(path, std::ios::binary);
  if (!f) {
    err = path + ": " + std::strerror(errno);
    return false;
  }
  std::ostringstream ss;
  ss << f.rdbuf();
  out = ss.str();
  return true;
}

struct X509Free {
  void operator()(X509* x) const { X509_free(x); }
};
struct PkeyFree {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
struct ChainFree {
  void operator()(STACK_OF(X509) * s) const { sk_X509_pop_free(s, X509_free); }
};
using X509Ptr = std::unique_ptr<X509, X509Free>;
using PkeyPtr = std::unique_ptr<EVP_PKEY, PkeyFree>;
using ChainPtr = std::unique_ptr<STACK_OF(X509), ChainFree>;

// Every certificate in a PEM buffer, in order.
std::vector<X509Ptr> parseCerts(const std::string& pem) {
  std::vector<X509Ptr> out;
  BIO* b = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
  if (b == nullptr) return out;
  while (X509* x = PEM_read_bio_X509(b, nullptr, nullptr, nullptr)) out.emplace_back(x);
  BIO_free(b);
  ERR_clear_error();  // the loop ends on a "no start line" error
  return out;
}

PkeyPtr parseKey(const std::string& pem) {
  BIO* b = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
  if (b == nullptr) return nullptr;
  PkeyPtr k(PEM_read_bio_PrivateKey(b, nullptr, nullptr, nullptr));
  BIO_free(b);
  return k;
}

std::string lowerAscii(std::string_view s) {
  std::string o(s);
  for (char& c : o) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
  return o;
}

// SNI names of a certificate: its subjectAltName DNS entries, else its CN.
std::vector<std::string> certNames(X509* x) {
  std::vector<std::string> names;
  auto* sans = static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(x, NID_subject_alt_name, nullptr, nullptr));
  if (sans != nullptr) {
    for (int i = 0; i < sk_GENERAL_NAME_num(sans); ++i) {
      const GENERAL_NAME* g = sk_GENERAL_NAME_value(sans, i);
      if (g->type != GEN_DNS) continue;
      const ASN1_STRING* s = g->d.dNSName;
      names.push_back(lowerAscii(std::string_view(
          reinterpret_cast<const char*>(ASN1_STRING_get0_data(s)), static_cast<size_t>(ASN1_STRING_length(s)))));
    }
    GENERAL_NAMES_free(sans);
  }
  if (names.empty()) {
    X509_NAME* subj = X509_get_subject_name(x);
    const int idx = X509_NAME_get_index_by_NID(subj, NID_commonName, -1);
    if (idx >= 0) {
      const ASN1_STRING* s = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subj, idx));
      names.push_back(lowerAscii(std::string_view(
          reinterpret_cast<const char*>(ASN1_STRING_get0_data(s)), static_cast<size_t>(ASN1_STRING_length(s)))));
    }
  }
  std::sort(names.begin(), names.end());
  names.erase(std::unique(names.begin(), names.end()), names.end());
  return names;
}

// HMAC-SHA256(key, label || be64(n)).
bool deriveKey(const std::string& secret, const char* label, uint64_t n, unsigned char out[32]) {
  unsigned char msg[64];
  const size_t ll = std::strlen(label);
  std::memcpy(msg, label, ll);
  for (int i = 0; i < 8; ++i) msg[ll + static_cast<size_t>(i)] = static_cast<unsigned char>(n >> (56 - 8 * i));
  size_t outLen = 0;
  return EVP_Q_mac(nullptr, "HMAC", nullptr, "SHA256", nullptr, secret.data(), secret.size(), msg,
                   ll + 8, out, 32, &outLen) != nullptr &&
         outLen == 32;
}

}  // namespace

// ---- ticket secret ---------------------------------------------------------

std::shared_ptr<const TicketSecret> TicketSecret::random() {
  auto t = std::make_shared<TicketSecret>();
  t->bytes_.resize(48);
  size_t got = 0;
  while (got < t->bytes_.size()) {
    const ssize_t n = getrandom(t->bytes_.data() + got, t->bytes_.size() - got, 0);
    if (n > 0) got += static_cast<size_t>(n);
  }
  return t;
}

std::shared_ptr<const TicketSecret> TicketSecret::fromFile(const std::string& path, std::string& err) {
  std::string data;
  if (!readFile(path, data, err)) return nullptr;
  if (data.size() < 32) {
    err = path + ": " + std::to_string(data.size()) + " bytes; a ticket key file needs at least 32";
    return nullptr;
  }
  auto t = std::make_shared<TicketSecret>();
  t->bytes_ = data.substr(0, 48);
  return t;
}

// ---- listener ----------------------------------------------------------------

namespace {

struct OcspSlot {
  std::string path;
  std::atomic<std::shared_ptr<const std::string>> response;
  // Control thread only: what the file looked like when last read.
  mutable time_t mtime = 0;
  mutable long mtimeNs = 0;
  mutable off_t size = -1;
};

}  // namespace

// One worker's contexts: one SSL_CTX per certificate group (the certificates
// that share a set of SNI names; an ECDSA and an RSA certificate for the
// same names sit in one context, and OpenSSL picks by the client's signature
// algorithms). Only that worker's thread uses them.
struct WorkerTls {
  struct Leaf {
    X509* leaf;       // owned by the context
    OcspSlot* ocsp;   // null: nothing to staple
  };
  // Ticket keys of the last two rotation periods used, derived on first use
  // (two HMACs; OpenSSL 3 fetches the algorithm on every EVP_Q_mac call).
  struct TicketKeys {
    uint64_t period = UINT64_MAX;
    unsigned char aes[32];
    unsigned char mac[32];
  };
  const TlsListener::Impl* owner = nullptr;
  std::vector<SSL_CTX*> ctxs;  // [0] = default; owned
  std::vector<Leaf> leaves;
  TicketKeys ticketKeys[2];
  uint32_t ticketNext = 0;  // which slot a new period replaces
  WorkerTls() = default;
  WorkerTls(const WorkerTls&) = delete;
  WorkerTls& operator=(const WorkerTls&) = delete;
  ~WorkerTls() {
    for (SSL_CTX* c : ctxs) SSL_CTX_free(c);
    OPENSSL_cleanse(ticketKeys, sizeof(ticketKeys));
  }
};

struct TlsListener::Impl {
  control::TlsListenerConfig cfg;
  std::shared_ptr<const TicketSecret> tickets;
  std::string ticketTag;  // 8 bytes naming the secret in every ticket
  std::string alpnWire;
  std::unordered_map<std::string, uint32_t> exact;     // name -> group
  std::unordered_map<std::string, uint32_t> wildcard;  // "b.test" for "*.b.test" -> group
  std::vector<std::vector<std::string>> groupNames;
  std::vector<std::unique_ptr<OcspSlot>> ocsp;  // per certificate
  std::vector<std::unique_ptr<WorkerTls>> workers;

  uint32_t groupFor(std::string_view name) const {
    if (name.empty() || name.size() > 253) return 0;
    std::string n = lowerAscii(name);
    if (n.back() == '.') n.pop_back();
    if (auto it = exact.find(n); it != exact.end()) return it->second;
    const size_t dot = n.find('.');
    if (dot != std::string::npos && dot > 0) {
      if (auto it = wildcard.find(n.substr(dot + 1)); it != wildcard.end()) return it->second;
    }
    return 0;
  }
};

namespace {

WorkerTls* workerOf(SSL* ssl) {
  return static_cast<WorkerTls*>(SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl)));
}

int onServerName(SSL* ssl, int* /*alert*/, void* /*arg*/) {
  WorkerTls* w = workerOf(ssl);
  const char* name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
  if (w == nullptr || name == nullptr) return SSL_TLSEXT_ERR_OK;  // default certificate
  const uint32_t g = w->owner->groupFor(name);
  if (g != 0 && g < w->ctxs.size()) SSL_set_SSL_CTX(ssl, w->ctxs[g]);
  return SSL_TLSEXT_ERR_OK;
}

// RFC 7301: no protocol in common is a fatal no_application_protocol alert.
int onAlpn(SSL* ssl, const unsigned char** out, unsigned char* outLen, const unsigned char* in,
           unsigned int inLen, void* /*arg*/) {
  WorkerTls* w = workerOf(ssl);
  if (w == nullptr) return SSL_TLSEXT_ERR_ALERT_FATAL;
  const std::string& ours = w->owner->alpnWire;
  unsigned char* sel = nullptr;
  if (SSL_select_next_proto(&sel, outLen, reinterpret_cast<const unsigned char*>(ours.data()),
                            static_cast<unsigned int>(ours.size()), in, inLen) != OPENSSL_NPN_NEGOTIATED) {
    return SSL_TLSEXT_ERR_ALERT_FATAL;
  }
  *out = sel;
  return SSL_TLSEXT_ERR_OK;
}

int onOcspStatus(SSL* ssl, void* /*arg*/) {
  WorkerTls* w = workerOf(ssl);
  X509* leaf = SSL_get_certificate(ssl);
  if (w == nullptr || leaf == nullptr) return SSL_TLSEXT_ERR_NOACK;
  for (const auto& l : w->leaves) {
    if (l.leaf != leaf || l.ocsp == nullptr) continue;
    std::shared_ptr<const std::string> r = l.ocsp->response.load(std::memory_order_acquire);
    if (!r || r->empty()) return SSL_TLSEXT_ERR_NOACK;
    void* copy = OPENSSL_memdup(r->data(), r->size());
    if (copy == nullptr) return SSL_TLSEXT_ERR_NOACK;
    SSL_set_tlsext_status_ocsp_resp(ssl, copy, static_cast<long>(r->size()));
    return SSL_TLSEXT_ERR_OK;
  }
  return SSL_TLSEXT_ERR_NOACK;
}

// Session tickets (RFC 5077 format as OpenSSL writes it): the key name is
// the secret's tag plus the rotation period, so any worker (or instance with
// the same secret) finds the keys by derivation. Returns 1 (use), 2 (use and
// issue a fresh ticket: always on TLS 1.3, and for a key from the previous
// period), 0 (unknown: full handshake), -1 (error).
int onTicketKey(SSL* ssl, unsigned char keyName[16], unsigned char* iv, EVP_CIPHER_CTX* cctx,
                EVP_MAC_CTX* hctx, int enc) {
  WorkerTls* w = workerOf(ssl);
  if (w == nullptr) return -1;  // w: this worker's own state (thread-confined)
  const TlsListener::Impl& l = *w->owner;
  const uint64_t period = static_cast<uint64_t>(std::time(nullptr)) / l.cfg.ticketRotateS;
  uint64_t use = period;
  int result = 1;
  if (enc == 0) {
    if (std::memcmp(keyName, l.ticketTag.data(), 8) != 0) return 0;
    uint64_t p = 0;
    for (int i = 0; i < 8; ++i) p = (p << 8) | keyName[8 + i];
    if (p == period) {
      // TLS 1.3 clients should not reuse a ticket (RFC 8446 C.4): issue a
      // fresh one on every resumption, as OpenSSL's own server does.
      result = SSL_version(ssl) == TLS1_3_VERSION ? 2 : 1;
    } else if (p + 1 == period) {
      result = 2;
    } else {
      return 0;  // expired (or from the future): full handshake
    }
    use = p;
  }
  WorkerTls::TicketKeys* keys = nullptr;
  for (auto& k : w->ticketKeys) {
    if (k.period == use) keys = &k;
  }
  if (keys == nullptr) {
    keys = &w->ticketKeys[w->ticketNext];
    w->ticketNext ^= 1u;
    const std::string& secret = l.tickets->bytes();
    keys->period = UINT64_MAX;
    if (!deriveKey(secret, "moat ticket aes", use, keys->aes) ||
        !deriveKey(secret, "moat ticket hmac", use, keys->mac)) {
      return -1;
    }
    keys->period = use;
  }
  unsigned char* aes = keys->aes;
  OSSL_PARAM params[3];
  params[0] = OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, keys->mac, sizeof(keys->mac));
  params[1] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, const_cast<char*>("SHA256"), 0);
  params[2] = OSSL_PARAM_construct_end();
  if (enc == 1) {
    std::memcpy(keyName, l.ticketTag.data(), 8);
    for (int i = 0; i < 8; ++i) keyName[8 + i] = static_cast<unsigned char>(use >> (56 - 8 * i));
    if (RAND_bytes(iv, 16) <= 0) return -1;
    if (EVP_EncryptInit_ex(cctx, EVP_aes_256_cbc(), nullptr, aes, iv) != 1) return -1;
  } else {
    if (EVP_DecryptInit_ex(cctx, EVP_aes_256_cbc(), nullptr, aes, iv) != 1) return -1;
  }
  if (EVP_MAC_CTX_set_params(hctx, params) != 1) return -1;
  return result;
}

struct LoadedCert {
  std::string certPem;
  std::string keyPem;
  std::vector<std::string> names;
  uint32_t group = 0;
};

}  // namespace

TlsListener::TlsListener(Impl* impl) : impl_(impl) {}
TlsListener::~TlsListener() { delete impl_; }

std::shared_ptr<TlsListener> TlsListener::build(const control::TlsListenerConfig& cfg,
                                                const std::string& path, size_t workers,
                                                std::shared_ptr<const TicketSecret> tickets,
                                                std::vector<TlsBuildError>* errors) {
  const size_t before = errors->size();
  auto fail = [&](std::string p, std::string m) { errors->push_back({std::move(p), std::move(m)}); };
  auto impl = std::make_unique<Impl>();
  impl->cfg = cfg;
  const std::string tp = path + ".tls";
  if (cfg.certificates.empty()) {
    fail(tp + ".certificates", "at least one certificate is required");
    return nullptr;
  }
  // Ticket secret: the listener's own file, else the process-wide one.
  if (!cfg.ticketKeyFile.empty()) {
    std::string err;
    tickets = TicketSecret::fromFile(cfg.ticketKeyFile, err);
    if (!tickets) fail(tp + ".ticketKeyFile", err);
  }
  if (!tickets) tickets = TicketSecret::random();
  impl->tickets = tickets;
  {
    unsigned char tag[32];
    deriveKey(tickets->bytes(), "moat ticket name", 0, tag);
    impl->ticketTag.assign(reinterpret_cast<const char*>(tag), 8);
  }
  for (const std::string& p : cfg.alpn) {
    impl->alpnWire.push_back(static_cast<char>(p.size()));
    impl->alpnWire.append(p);
  }

  // Read and check every certificate and key once.
  std::vector<LoadedCert> certs(cfg.certificates.size());
  std::map<std::vector<std::string>, uint32_t> groupByNames;
  std::map<std::pair<uint32_t, int>, size_t> keyTypeSeen;  // (group, key type) -> cert
  for (size_t i = 0; i < cfg.certificates.size(); ++i) {
    const auto& cc = cfg.certificates[i];
    const std::string cp = tp + ".certificates[" + std::to_string(i) + "]";
    LoadedCert& lc = certs[i];
    std::string err;
    if (!readFile(cc.cert, lc.certPem, err)) {
      fail(cp + ".cert", err);
      continue;
    }
    if (!readFile(cc.key, lc.keyPem, err)) {
      fail(cp + ".key", err);
      continue;
    }
    std::vector<X509Ptr> chain = parseCerts(lc.certPem);
    if (chain.empty()) {
      fail(cp + ".cert", cc.cert + ": no PEM certificate in the file");
      continue;
    }
    PkeyPtr key = parseKey(lc.keyPem);
    if (!key) {
      fail(cp + ".key", cc.key + ": no PEM private key in the file (" + sslError("unreadable") + ")");
      continue;
    }
    if (X509_check_private_key(chain[0].get(), key.get()) != 1) {
      ERR_clear_error();
      fail(cp, "key " + cc.key + " does not match certificate " + cc.cert);
      continue;
    }
    lc.names = certNames(chain[0].get());
    if (lc.names.empty()) {
      fail(cp + ".cert", cc.cert + ": the certificate names no host (no DNS subjectAltName, no CN)");
      continue;
    }
    auto [it, fresh] = groupByNames.emplace(lc.names, static_cast<uint32_t>(impl->groupNames.size()));
    if (fresh) impl->groupNames.push_back(lc.names);
    lc.group = it->second;
    const int type = EVP_PKEY_get_base_id(key.get());
    auto [kt, freshType] = keyTypeSeen.emplace(std::make_pair(lc.group, type), i);
    if (!freshType) {
      fail(cp, "certificates[" + std::to_string(kt->second) +
                   "] already serves the same names with the same key type");
      continue;
    }
    auto slot = std::make_unique<OcspSlot>();
    slot->path = cc.ocsp;
    impl->ocsp.push_back(std::move(slot));
  }
  std::string caPem;
  if (!cfg.clientAuth.caFile.empty()) {
    std::string err;
    if (!readFile(cfg.clientAuth.caFile, caPem, err)) {
      fail(tp + ".clientAuth.caFile", err);
    } else if (parseCerts(caPem).empty()) {
      fail(tp + ".clientAuth.caFile", cfg.clientAuth.caFile + ": no PEM certificate in the file");
    }
  }
  if (errors->size() != before) return nullptr;

  // Names -> group (first certificate naming a host wins).
  for (uint32_t g = 0; g < impl->groupNames.size(); ++g) {
    for (const std::string& n : impl->groupNames[g]) {
      if (n.size() > 2 && n[0] == '*' && n[1] == '.') {
        impl->wildcard.emplace(n.substr(2), g);
      } else {
        impl->exact.emplace(n, g);
      }
    }
  }

  // Stapled responses, read now (a missing file is an error at start).
  for (size_t i = 0; i < impl->ocsp.size(); ++i) {
    OcspSlot& s = *impl->ocsp[i];
    if (s.path.empty()) continue;
    std::string data;
    std::string err;
    struct stat st {};
    if (::stat(s.path.c_str(), &st) != 0 || !readFile(s.path, data, err)) {
      fail(tp + ".certificates[" + std::to_string(i) + "].ocsp", s.path + ": " + std::strerror(errno));
      continue;
    }
    s.mtime = st.st_mtim.tv_sec;
    s.mtimeNs = st.st_mtim.tv_nsec;
    s.size = st.st_size;
    s.response.store(std::make_shared<const std::string>(std::move(data)));
  }
  if (errors->size() != before) return nullptr;

  // One context set per worker.
  const size_t groups = impl->groupNames.size();
  for (size_t wi = 0; wi < workers; ++wi) {
    auto w = std::make_unique<WorkerTls>();
    w->owner = impl.get();
    for (size_t g = 0; g < groups; ++g) {
      SSL_CTX* ctx = SSL_CTX_new(TLS_server_method());
      if (ctx == nullptr) {
        fail(tp, "SSL_CTX_new: " + sslError("out of memory"));
        return nullptr;
      }
      w->ctxs.push_back(ctx);
      SSL_CTX_set_app_data(ctx, w.get());
      SSL_CTX_set_min_proto_version(ctx, cfg.allowTls12 ? TLS1_2_VERSION : TLS1_3_VERSION);
      SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION);
      uint64_t opts = SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE;
      if (!cfg.sessionTickets) opts |= SSL_OP_NO_TICKET;
      SSL_CTX_set_options(ctx, opts);
      // Stateless resumption only: tickets carry the session, no server cache.
      SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
      static const unsigned char kSidCtx[] = "moat";
      SSL_CTX_set_session_id_context(ctx, kSidCtx, sizeof(kSidCtx) - 1);
      SSL_CTX_set_num_tickets(ctx, cfg.sessionTickets ? 1 : 0);
      // 0-RTT stays off (max_early_data 0): early data can be replayed.
      SSL_CTX_set_max_early_data(ctx, 0);
      if (!cfg.ciphersuites.empty() && SSL_CTX_set_ciphersuites(ctx, cfg.ciphersuites.c_str()) != 1) {
        fail(tp + ".ciphersuites", "no usable TLS 1.3 suite in " + cfg.ciphersuites);
        ERR_clear_error();
        return nullptr;
      }
      const std::string& c12 = cfg.ciphers.empty() ? std::string(kDefaultTls12Ciphers) : cfg.ciphers;
      if (SSL_CTX_set_cipher_list(ctx, c12.c_str()) != 1) {
        fail(tp + ".ciphers", "no usable TLS 1.2 cipher in " + c12);
        ERR_clear_error();
        return nullptr;
      }
      if (SSL_CTX_set1_groups_list(ctx, cfg.groups.c_str()) != 1) {
        fail(tp + ".groups", "unknown group in " + cfg.groups + " (e.g. X25519:P-256)");
        ERR_clear_error();
        return nullptr;
      }
      SSL_CTX_set_tlsext_servername_callback(ctx, onServerName);
      if (!impl->alpnWire.empty()) SSL_CTX_set_alpn_select_cb(ctx, onAlpn, nullptr);
      SSL_CTX_set_tlsext_status_cb(ctx, onOcspStatus);
      if (cfg.sessionTickets) SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, onTicketKey);
      if (!caPem.empty()) {
        X509_STORE* store = SSL_CTX_get_cert_store(ctx);
        STACK_OF(X509_NAME)* names = sk_X509_NAME_new_null();
        for (auto& ca : parseCerts(caPem)) {
          X509_STORE_add_cert(store, ca.get());
          if (names != nullptr) sk_X509_NAME_push(names, X509_NAME_dup(X509_get_subject_name(ca.get())));
        }
        if (names != nullptr) SSL_CTX_set_client_CA_list(ctx, names);
        SSL_CTX_set_verify(ctx,
                           SSL_VERIFY_PEER | (cfg.clientAuth.required ? SSL_VERIFY_FAIL_IF_NO_PEER_CERT : 0),
                           nullptr);
        SSL_CTX_set_verify_depth(ctx, 8);
      }
    }
    for (size_t i = 0; i < certs.size(); ++i) {
      std::vector<X509Ptr> chainCerts = parseCerts(certs[i].certPem);
      PkeyPtr key = parseKey(certs[i].keyPem);
      ChainPtr chain(sk_X509_new_null());
      for (size_t k = 1; k < chainCerts.size(); ++k) sk_X509_push(chain.get(), chainCerts[k].release());
      SSL_CTX* ctx = w->ctxs[certs[i].group];
      if (!key || chainCerts.empty() ||
          SSL_CTX_use_cert_and_key(ctx, chainCerts[0].get(), key.get(), chain.get(), 1) != 1) {
        fail(tp + ".certificates[" + std::to_string(i) + "]",
             "OpenSSL refused the certificate and key: " + sslError("unknown error"));
        return nullptr;
      }
      OcspSlot* slot = impl->ocsp[i]->path.empty() ? nullptr : impl->ocsp[i].get();
      w->leaves.push_back({chainCerts[0].get(), slot});  // the context holds a reference
    }
    impl->workers.push_back(std::move(w));
  }
  return std::shared_ptr<TlsListener>(new TlsListener(impl.release()));
}

size_t TlsListener::refreshOcsp(std::vector<std::string>* warnings) const {
  size_t replaced = 0;
  for (const auto& sp : impl_->ocsp) {
    OcspSlot& s = *sp;
    if (s.path.empty()) continue;
    struct stat st {};
    if (::stat(s.path.c_str(), &st) != 0) {
      if (warnings != nullptr) {
        warnings->push_back("ocsp " + s.path + ": " + std::strerror(errno) + "; stapling the previous response");
      }
      continue;
    }
    if (st.st_mtim.tv_sec == s.mtime && st.st_mtim.tv_nsec == s.mtimeNs && st.st_size == s.size) continue;
    std::string data;
    std::string err;
    if (!readFile(s.path, data, err)) {
      if (warnings != nullptr) warnings->push_back("ocsp " + err + "; stapling the previous response");
      continue;
    }
    s.mtime = st.st_mtim.tv_sec;
    s.mtimeNs = st.st_mtim.tv_nsec;
    s.size = st.st_size;
    s.response.store(std::make_shared<const std::string>(std::move(data)), std::memory_order_release);
    ++replaced;
  }
  return replaced;
}

std::string TlsListener::describe() const {
  std::string out;
  for (const auto& g : impl_->groupNames) {
    for (const auto& n : g) {
      if (!out.empty()) out += ", ";
      out += n;
    }
  }
  return out;
}

// ---- upstream ----------------------------------------------------------------

struct TlsUpstream::Impl {
  control::UpstreamTlsConfig cfg;
  std::vector<SSL_CTX*> ctxs;  // per worker
  ~Impl() {
    for (SSL_CTX* c : ctxs) SSL_CTX_free(c);
  }
};

TlsUpstream::TlsUpstream(Impl* impl) : impl_(impl) {}
TlsUpstream::~TlsUpstream() { delete impl_; }

std::shared_ptr<TlsUpstream> TlsUpstream::build(const control::UpstreamTlsConfig& cfg,
                                                const std::string& path, size_t workers,
                                                std::vector<TlsBuildError>* errors) {
  auto impl = std::make_unique<Impl>();
  impl->cfg = cfg;
  std::string caPem;
  if (!cfg.caFile.empty()) {
    std::string err;
    if (!readFile(cfg.caFile, caPem, err)) {
      errors->push_back({path + ".tls.caFile", err});
      return nullptr;
    }
    if (parseCerts(caPem).empty()) {
      errors->push_back({path + ".tls.caFile", cfg.caFile + ": no PEM certificate in the file"});
      return nullptr;
    }
  }
  static const unsigned char kAlpn[] = "\x08http/1.1";
  for (size_t wi = 0; wi < workers; ++wi) {
    SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == nullptr) {
      errors->push_back({path + ".tls", "SSL_CTX_new: " + sslError("out of memory")});
      return nullptr;
    }
    impl->ctxs.push_back(ctx);
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_TICKET);
    SSL_CTX_set_cipher_list(ctx, kDefaultTls12Ciphers);
    SSL_CTX_set_alpn_protos(ctx, kAlpn, sizeof(kAlpn) - 1);
    if (cfg.verify) {
      if (!caPem.empty()) {
        X509_STORE* store = SSL_CTX_get_cert_store(ctx);
        for (auto& ca : parseCerts(caPem)) X509_STORE_add_cert(store, ca.get());
      } else if (SSL_CTX_set_default_verify_paths(ctx) != 1) {
        errors->push_back({path + ".tls", "no system CA store: " + sslError("unknown")});
        return nullptr;
      }
      SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
    } else {
      SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, nullptr);
    }
  }
  return std::shared_ptr<TlsUpstream>(new TlsUpstream(impl.release()));
}

TlsSet buildTls(const control::Config& config, size_t workers,
                const std::shared_ptr<const TicketSecret>& tickets,
                std::vector<TlsBuildError>* errors) {
  TlsSet set;
  set.listeners.resize(config.listeners.size());
  set.pools.resize(config.pools.size());
  for (size_t i = 0; i < config.listeners.size(); ++i) {
    const auto& l = config.listeners[i];
    if (l.protocol != control::ListenerProtocol::kHttps) continue;
    set.listeners[i] = TlsListener::build(l.tls, "listeners[" + std::to_string(i) + "]", workers,
                                          tickets, errors);
  }
  for (size_t i = 0; i < config.pools.size(); ++i) {
    const auto& p = config.pools[i];
    if (!p.tls.enabled) continue;
    set.pools[i] = TlsUpstream::build(p.tls, "pools[" + std::to_string(i) + "]", workers, errors);
  }
  return set;
}

// ---- connections -------------------------------------------------------------

namespace {

bool attachBios(SSL* ssl) {
  BIO* rbio = BIO_new(BIO_s_mem());
  BIO* wbio = BIO_new(BIO_s_mem());
  if (rbio == nullptr || wbio == nullptr) {
    BIO_free(rbio);
    BIO_free(wbio);
    return false;
  }
  // An empty read BIO means "wait for more", not end of file.
  BIO_set_mem_eof_return(rbio, -1);
  SSL_set_bio(ssl, rbio, wbio);
  return true;
}

}  // namespace

std::unique_ptr<TlsConn> TlsConn::server(std::shared_ptr<const TlsListener> l, size_t worker) {
  const auto& workers = l->impl()->workers;
  if (worker >= workers.size()) return nullptr;
  SSL* ssl = SSL_new(workers[worker]->ctxs[0]);
  if (ssl == nullptr || !attachBios(ssl)) {
    SSL_free(ssl);
    ERR_clear_error();
    return nullptr;
  }
  SSL_set_accept_state(ssl);
  std::unique_ptr<TlsConn> c(new TlsConn());
  c->ssl_ = ssl;
  c->listener_ = std::move(l);
  return c;
}

std::unique_ptr<TlsConn> TlsConn::client(std::shared_ptr<const TlsUpstream> u, size_t worker,
                                         const sockaddr_storage& addr) {
  const auto& ctxs = u->impl()->ctxs;
  if (worker >= ctxs.size()) return nullptr;
  SSL* ssl = SSL_new(ctxs[worker]);
  if (ssl == nullptr || !attachBios(ssl)) {
    SSL_free(ssl);
    ERR_clear_error();
    return nullptr;
  }
  SSL_set_connect_state(ssl);
  const control::UpstreamTlsConfig& cfg = u->impl()->cfg;
  if (!cfg.sni.empty()) {
    SSL_set_tlsext_host_name(ssl, cfg.sni.c_str());
    if (cfg.verify) SSL_set1_host(ssl, cfg.sni.c_str());
  } else if (cfg.verify) {
    X509_VERIFY_PARAM* vp = SSL_get0_param(ssl);
    if (addr.ss_family == AF_INET) {
      const auto* a = reinterpret_cast<const sockaddr_in*>(&addr);
      X509_VERIFY_PARAM_set1_ip(vp, reinterpret_cast<const unsigned char*>(&a->sin_addr), 4);
    } else if (addr.ss_family == AF_INET6) {
      const auto* a = reinterpret_cast<const sockaddr_in6*>(&addr);
      X509_VERIFY_PARAM_set1_ip(vp, reinterpret_cast<const unsigned char*>(&a->sin6_addr), 16);
    }
  }
  std::unique_ptr<TlsConn> c(new TlsConn());
  c->ssl_ = ssl;
  c->upstream_ = std::move(u);
  return c;
}

TlsConn::~TlsConn() { SSL_free(ssl_); }

void TlsConn::feed(const char* p, size_t n) {
  BIO_write(SSL_get_rbio(ssl_), p, static_cast<int>(n));
}

int TlsConn::read(char* out, size_t cap) {
  const int n = SSL_read(ssl_, out, static_cast<int>(cap));
  if (!done_ && SSL_is_init_finished(ssl_)) done_ = true;
  if (n > 0) return n;
  switch (SSL_get_error(ssl_, n)) {
    case SSL_ERROR_WANT_READ:
    case SSL_ERROR_WANT_WRITE:
      return 0;
    case SSL_ERROR_ZERO_RETURN:
      return kClosed;
    default: {
      if (error_.empty()) {  // the first failure is the cause; later calls only repeat it
        error_ = sslError("connection failed");
        const long vr = SSL_get_verify_result(ssl_);
        if (vr != X509_V_OK && upstream_ != nullptr) {
          error_ += std::string(" (") + X509_verify_cert_error_string(vr) + ")";
        }
      }
      ERR_clear_error();
      return kError;
    }
  }
}

int TlsConn::write(const char* p, size_t n) {
  const int w = SSL_write(ssl_, p, static_cast<int>(n));
  if (!done_ && SSL_is_init_finished(ssl_)) done_ = true;
  if (w > 0) return w;
  switch (SSL_get_error(ssl_, w)) {
    case SSL_ERROR_WANT_READ:
    case SSL_ERROR_WANT_WRITE:
      return 0;
    default:
      if (error_.empty()) error_ = sslError("connection failed");
      ERR_clear_error();
      return kError;
  }
}

size_t TlsConn::pendingOut() const { return BIO_ctrl_pending(SSL_get_wbio(ssl_)); }

size_t TlsConn::takeOut(char* out, size_t cap) {
  const int n = BIO_read(SSL_get_wbio(ssl_), out, static_cast<int>(cap));
  return n > 0 ? static_cast<size_t>(n) : 0;
}

void TlsConn::shutdown() {
  if (done_) SSL_shutdown(ssl_);
  ERR_clear_error();
}

bool TlsConn::resumed() const { return SSL_session_reused(ssl_) == 1; }

std::string TlsConn::peerSubject() const {
  X509* c = SSL_get0_peer_certificate(ssl_);
  if (c == nullptr || SSL_get_verify_result(ssl_) != X509_V_OK) return {};
  BIO* b = BIO_new(BIO_s_mem());
  if (b == nullptr) return {};
  X509_NAME_print_ex(b, X509_get_subject_name(c), 0, XN_FLAG_RFC2253);
  char* data = nullptr;
  const long len = BIO_get_mem_data(b, &data);
  std::string s(data, static_cast<size_t>(len > 0 ? len : 0));
  BIO_free(b);
  return s;
}

}  // namespace moat::l7
