// @rx / @pm matching on Hyperscan with PCRE2 confirmation; see patterns.h.
#include "moat/waf/patterns.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <hs/hs.h>
#include <openssl/evp.h>
#include <pcre2.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <unordered_map>
#include <unordered_set>

namespace moat::waf {
namespace {

using Mode = PatternSet::Mode;

// PCRE2 limits. match_limit bounds backtracking steps (interpreter and JIT);
// 100000 is far above what any CRS regex needs on a 64 KiB value yet keeps
// a catastrophic pattern to ~a millisecond. depth_limit bounds the
// interpreter's backtracking depth (JIT uses its stack, capped below).
constexpr uint32_t kPcreMatchLimit = 100000;
constexpr uint32_t kPcreDepthLimit = 10000;
constexpr size_t kJitStackStart = 32 * 1024;
constexpr size_t kJitStackMax = 512 * 1024;

constexpr uint32_t kPcreFlags = PCRE2_DOTALL | PCRE2_MULTILINE;
constexpr unsigned kHsRegexFlags = HS_FLAG_DOTALL | HS_FLAG_MULTILINE | HS_FLAG_SINGLEMATCH;
constexpr unsigned kHsPhraseFlags = HS_FLAG_CASELESS | HS_FLAG_SINGLEMATCH;
// Regexes at least this long are compiled alone before the full compile
// (see build()); every CRS 3.3.4 regex that is "too large" is > 4 KiB.
constexpr size_t kPrecheckBytes = 512;

// Bump when the cache file layout or the placement logic changes.
constexpr char kCacheFormat[] = "moat-waf-patterns-v1";
constexpr char kCacheMagic[8] = {'M', 'O', 'A', 'T', 'H', 'S', 'D', 'B'};

std::atomic<uint64_t> gSetSerial{1};

// ModSecurity's acmp (src/utils/acmp.cc) re-expressed over flat arrays, with
// its exact behaviour: single-hop fail links, signed pattern letters, the
// node's first-inserted spelling as the reported text.
struct AcTrie {
  struct Node {
    long letter = 0;
    int32_t parent = -1;
    int32_t fail = 0;
    int32_t oMatch = -1;
    uint32_t childBegin = 0;
    uint32_t childCount = 0;
    uint32_t phrase = 0;   // phrase that created the node (its text's source)
    uint32_t textLen = 0;  // C-string length of that phrase's prefix
    bool isLast = false;
  };
  std::vector<Node> nodes;  // nodes[0] is the root
  std::vector<long> childLetter;
  std::vector<int32_t> childNode;
  std::array<int32_t, 256> rootNext{};

  int32_t go(int32_t node, long letter) const {
    if (node == 0) return (letter >= 0 && letter < 256) ? rootNext[static_cast<size_t>(letter)] : -1;
    const Node& n = nodes[static_cast<size_t>(node)];
    for (uint32_t i = 0; i < n.childCount; ++i) {
      if (childLetter[n.childBegin + i] == letter) return childNode[n.childBegin + i];
    }
    return -1;
  }

  void build(const std::vector<std::string>& phrases) {
    std::vector<std::vector<std::pair<long, int32_t>>> kids(1);
    nodes.assign(1, Node{});
    for (uint32_t p = 0; p < phrases.size(); ++p) {
      const std::string& s = phrases[p];
      const size_t cLen = strnlen(s.data(), s.size());
      int32_t parent = 0;
      for (size_t i = 0; i < s.size(); ++i) {
        // acmp_strtoucs copies a (signed) char into a long; tolower() in the
        // C locale folds only A-Z and leaves negative values alone.
        long letter = static_cast<signed char>(s[i]);
        if (letter >= 'A' && letter <= 'Z') letter += 'a' - 'A';
        int32_t child = -1;
        for (auto& [l, n] : kids[static_cast<size_t>(parent)]) {
          if (l == letter) child = n;
        }
        if (child < 0) {
          child = static_cast<int32_t>(nodes.size());
          Node n;
          n.letter = letter;
          n.parent = parent;
          n.phrase = p;
          n.textLen = static_cast<uint32_t>(std::min(i + 1, cLen));
          nodes.push_back(n);
          kids.emplace_back();
          kids[static_cast<size_t>(parent)].emplace_back(letter, child);
        }
        if (i + 1 == s.size()) nodes[static_cast<size_t>(child)].isLast = true;
        parent = child;
      }
    }
    // Flatten children.
    rootNext.fill(-1);
    for (size_t n = 0; n < nodes.size(); ++n) {
      nodes[n].childBegin = static_cast<uint32_t>(childLetter.size());
      nodes[n].childCount = static_cast<uint32_t>(kids[n].size());
      for (auto& [l, c] : kids[n]) {
        childLetter.push_back(l);
        childNode.push_back(c);
        if (n == 0 && l >= 0 && l < 256) rootNext[static_cast<size_t>(l)] = c;
      }
    }
    // Fail links, level by level: child of parent->fail only (acmp's shortcut).
    std::vector<int32_t> level;
    for (uint32_t i = 0; i < nodes[0].childCount; ++i) level.push_back(childNode[i]);
    while (!level.empty()) {
      std::vector<int32_t> next;
      for (int32_t n : level) {
        Node& node = nodes[static_cast<size_t>(n)];
        node.fail = 0;
        if (node.parent != 0) {
          int32_t g = go(nodes[static_cast<size_t>(node.parent)].fail, node.letter);
          node.fail = g >= 0 ? g : 0;
        }
        for (uint32_t i = 0; i < node.childCount; ++i) next.push_back(childNode[node.childBegin + i]);
      }
      level.swap(next);
    }
    // Other matches: first is_last node on the fail chain.
    for (size_t n = 1; n < nodes.size(); ++n) {
      for (int32_t om = nodes[n].fail; om != 0; om = nodes[static_cast<size_t>(om)].fail) {
        if (nodes[static_cast<size_t>(om)].isLast) {
          nodes[n].oMatch = om;
          break;
        }
      }
    }
  }

  // acmp_process_quick(): the node whose text ModSecurity reports, or -1.
  int32_t match(std::string_view v) const {
    if (nodes.size() <= 1) return -1;
    int32_t node = 0;
    for (unsigned char ch : v) {
      long letter = ch;
      if (letter >= 'A' && letter <= 'Z') letter += 'a' - 'A';
      int32_t g = -1;
      while (g < 0) {
        g = go(node, letter);
        if (g >= 0 && nodes[static_cast<size_t>(g)].isLast) return g;
        if (node == 0) break;
        if (g < 0) node = nodes[static_cast<size_t>(node)].fail;
      }
      if (g >= 0) node = g;
      if (nodes[static_cast<size_t>(node)].oMatch >= 0) return node;
    }
    return -1;
  }
};

struct Entry {
  uint32_t id = 0;
  Mode mode = Mode::kUnknown;
  unsigned hsFlags = 0;  // flags used for the Hyperscan expression
  pcre2_code* code = nullptr;
  uint32_t captureCount = 0;
  std::string pattern;  // effective regex (".*" for empty)
  bool emptyRegex = false;  // Rx::evaluate returns true at once, no captures
  std::vector<std::string> phrases;
  AcTrie trie;
};

const char kEmptySubject[1] = {0};

std::string hexOf(const unsigned char* p, size_t n) {
  static const char* d = "0123456789abcdef";
  std::string s;
  for (size_t i = 0; i < n; ++i) {
    s.push_back(d[p[i] >> 4]);
    s.push_back(d[p[i] & 15]);
  }
  return s;
}

bool sha256(const std::vector<std::string_view>& parts, unsigned char out[32]) {
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  if (!ctx) return false;
  bool ok = EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr) == 1;
  for (auto p : parts) ok = ok && EVP_DigestUpdate(ctx, p.data(), p.size()) == 1;
  unsigned int len = 0;
  ok = ok && EVP_DigestFinal_ex(ctx, out, &len) == 1 && len == 32;
  EVP_MD_CTX_free(ctx);
  return ok;
}

template <typename T>
void putRaw(std::string& s, T v) {
  s.append(reinterpret_cast<const char*>(&v), sizeof v);
}

std::string pcreMessage(int code) {
  PCRE2_UCHAR buf[256];
  if (pcre2_get_error_message(code, buf, sizeof buf) < 0) return "unknown PCRE2 error";
  return reinterpret_cast<const char*>(buf);
}

// Hyperscan wants NUL-terminated patterns: escape every byte of a phrase that
// is not an ASCII letter or digit.
std::string escapeLiteral(std::string_view s) {
  std::string r;
  r.reserve(s.size() * 4);
  static const char* d = "0123456789abcdef";
  for (unsigned char c : s) {
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) {
      r.push_back(static_cast<char>(c));
    } else {
      r += "\\x";
      r.push_back(d[c >> 4]);
      r.push_back(d[c & 15]);
    }
  }
  return r;
}

// Flags Hyperscan accepts `pattern` with, starting from `base`; 0 if none
// (then `why` gets Hyperscan's message when non-null).
unsigned hsAccepts(const std::string& pattern, unsigned base, std::string* why = nullptr) {
  if (pattern.find('\0') != std::string::npos) {
    if (why) *why = "NUL byte in pattern";
    return 0;
  }
  for (unsigned flags : {base, base | HS_FLAG_ALLOWEMPTY}) {
    hs_expr_info_t* info = nullptr;
    hs_compile_error_t* err = nullptr;
    hs_error_t rc = hs_expression_info(pattern.c_str(), flags, &info, &err);
    if (err) {
      if (why && !(flags & HS_FLAG_ALLOWEMPTY)) *why = err->message ? err->message : "?";
      hs_free_compile_error(err);
    }
    if (rc == HS_SUCCESS) {
      free(info);  // allocated with the default misc allocator (malloc)
      return flags;
    }
  }
  return 0;
}

}  // namespace

struct PatternSet::Impl {
  std::vector<Entry> entries;
  std::unordered_map<uint32_t, uint32_t> byId;  // id -> entry index
  std::vector<uint32_t> alwaysRun;              // kPcreOnly and kPhrasesSlow
  std::vector<uint32_t> emptyMatches;           // ids matching ""
  hs_database_t* db = nullptr;
  uint32_t maxPairs = 1;
  uint64_t serial = 0;

  ~Impl() {
    if (db) hs_free_database(db);
    for (Entry& e : entries) {
      if (e.code) pcre2_code_free(e.code);
    }
  }
};

struct PatternScratch::Impl {
  hs_scratch_t* hs = nullptr;
  pcre2_jit_stack* jitStack = nullptr;
  pcre2_match_context* mctx = nullptr;
  pcre2_match_data* md = nullptr;
  uint32_t mdPairs = 0;
  std::vector<uint32_t> hits;
  std::vector<uint32_t> seen;
  uint32_t gen = 0;
  uint64_t preparedSerial = 0;
  bool ok = false;

  Impl() {
    jitStack = pcre2_jit_stack_create(kJitStackStart, kJitStackMax, nullptr);
    mctx = pcre2_match_context_create(nullptr);
    if (mctx) {
      pcre2_set_match_limit(mctx, kPcreMatchLimit);
      pcre2_set_depth_limit(mctx, kPcreDepthLimit);
      if (jitStack) pcre2_jit_stack_assign(mctx, nullptr, jitStack);
    }
    ok = mctx != nullptr && ensurePairs(Captures::kMax);
  }
  ~Impl() {
    if (hs) hs_free_scratch(hs);
    if (md) pcre2_match_data_free(md);
    if (mctx) pcre2_match_context_free(mctx);
    if (jitStack) pcre2_jit_stack_free(jitStack);
  }
  bool ensurePairs(uint32_t pairs) {
    if (md && mdPairs >= pairs) return true;
    pcre2_match_data* n = pcre2_match_data_create(pairs, nullptr);
    if (!n) return false;
    if (md) pcre2_match_data_free(md);
    md = n;
    mdPairs = pairs;
    return true;
  }
};

namespace {

// One PCRE2 run; >0 match, 0 no match (limits and errors counted).
int runPcre(const pcre2_code* code, std::string_view v, PatternScratch::Impl& s,
            PatternScratch& counters) {
  const char* data = v.data() ? v.data() : kEmptySubject;
  int rc = pcre2_match(code, reinterpret_cast<PCRE2_SPTR>(data), v.size(), 0, 0, s.md, s.mctx);
  if (rc >= 0) return rc == 0 ? 1 : rc;  // 0 = ovector too small: still a match
  if (rc == PCRE2_ERROR_NOMATCH) return 0;
  if (rc == PCRE2_ERROR_MATCHLIMIT || rc == PCRE2_ERROR_DEPTHLIMIT ||
      rc == PCRE2_ERROR_HEAPLIMIT || rc == PCRE2_ERROR_JIT_STACKLIMIT) {
    ++counters.pcreLimitHits;
  } else {
    ++counters.pcreErrors;
  }
  return 0;
}

// Searches like Regex::searchOneMatch: groups 0..rc-1 whose end is in range.
void fillCaptures(int rc, std::string_view v, const PatternScratch::Impl& s, Captures* c) {
  c->clear();
  const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(s.md);
  const size_t n = std::min<size_t>(static_cast<size_t>(rc), Captures::kMax);
  for (size_t i = 0; i < n; ++i) {
    PCRE2_SIZE b = ov[2 * i], e = ov[2 * i + 1];
    if (e > v.size() || b > e) continue;  // unset group (PCRE2_UNSET)
    c->group[i] = v.substr(b, e - b);
    c->setMask = static_cast<uint16_t>(c->setMask | (1u << i));
    c->count = static_cast<uint8_t>(i + 1);
  }
}

int onHsMatch(unsigned int id, unsigned long long, unsigned long long, unsigned int,
              void* ctx) {
  auto* s = static_cast<PatternScratch::Impl*>(ctx);
  if (s->seen[id] != s->gen) {
    s->seen[id] = s->gen;
    s->hits.push_back(id);
  }
  return 0;
}

}  // namespace

// ---------------------------------------------------------------------------
// PatternScratch

PatternScratch::PatternScratch() : impl_(std::make_unique<Impl>()) {}
PatternScratch::PatternScratch(const PatternSet& set) : PatternScratch() { prepare(set); }
PatternScratch::~PatternScratch() = default;
PatternScratch::PatternScratch(PatternScratch&&) noexcept = default;
PatternScratch& PatternScratch::operator=(PatternScratch&&) noexcept = default;

bool PatternScratch::prepare(const PatternSet& set) {
  Impl& s = *impl_;
  const PatternSet::Impl& p = *set.impl_;
  bool ok = s.ok;
  if (p.db && hs_alloc_scratch(p.db, &s.hs) != HS_SUCCESS) ok = false;
  if (!s.ensurePairs(p.maxPairs)) ok = false;
  const size_t n = p.entries.size();
  s.hits.reserve(n);
  s.seen.assign(std::max(s.seen.size(), n), 0);
  s.gen = 0;
  s.preparedSerial = p.serial;
  return ok;
}

// ---------------------------------------------------------------------------
// Regex

std::optional<Regex> Regex::compile(std::string_view pattern, std::string* error) {
  std::string_view eff = pattern.empty() ? std::string_view(".*") : pattern;
  int code = 0;
  PCRE2_SIZE off = 0;
  pcre2_code* c = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(eff.data()), eff.size(), kPcreFlags,
                                &code, &off, nullptr);
  if (!c) {
    if (error) *error = "PCRE2 error at offset " + std::to_string(off) + ": " + pcreMessage(code);
    return std::nullopt;
  }
  pcre2_jit_compile(c, PCRE2_JIT_COMPLETE);  // failure: interpreter, same results
  Regex r;
  r.code_ = c;
  return r;
}

Regex::~Regex() {
  if (code_) pcre2_code_free(static_cast<pcre2_code*>(code_));
}
Regex::Regex(Regex&& o) noexcept : code_(o.code_) { o.code_ = nullptr; }
Regex& Regex::operator=(Regex&& o) noexcept {
  if (this != &o) {
    if (code_) pcre2_code_free(static_cast<pcre2_code*>(code_));
    code_ = o.code_;
    o.code_ = nullptr;
  }
  return *this;
}

bool Regex::match(std::string_view value, PatternScratch& scratch, Captures* captures) const {
  auto* c = static_cast<const pcre2_code*>(code_);
  if (!c) return false;
  PatternScratch::Impl& s = *scratch.impl_;
  uint32_t cc = 0;
  pcre2_pattern_info(c, PCRE2_INFO_CAPTURECOUNT, &cc);
  if (!s.mctx || !s.ensurePairs(cc + 1)) {
    ++scratch.pcreErrors;
    return false;
  }
  int rc = runPcre(c, value, s, scratch);
  if (rc <= 0) return false;
  if (captures) fillCaptures(rc, value, s, captures);
  return true;
}

bool Regex::match(std::string_view value, std::vector<std::string>* captures) const {
  auto* c = static_cast<const pcre2_code*>(code_);
  if (!c) return false;
  pcre2_match_data* md = pcre2_match_data_create_from_pattern(c, nullptr);
  pcre2_match_context* mctx = pcre2_match_context_create(nullptr);
  int rc = -1;
  if (md && mctx) {
    pcre2_set_match_limit(mctx, kPcreMatchLimit);
    pcre2_set_depth_limit(mctx, kPcreDepthLimit);
    const char* data = value.data() ? value.data() : kEmptySubject;
    rc = pcre2_match(c, reinterpret_cast<PCRE2_SPTR>(data), value.size(), 0, 0, md, mctx);
  }
  if (rc >= 0 && captures) {
    captures->clear();
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
    const size_t n = std::min<size_t>(rc == 0 ? 1 : static_cast<size_t>(rc), Captures::kMax);
    for (size_t i = 0; i < n; ++i) {
      PCRE2_SIZE b = ov[2 * i], e = ov[2 * i + 1];
      captures->emplace_back(e > value.size() || b > e ? std::string_view()
                                                       : value.substr(b, e - b));
    }
  }
  if (mctx) pcre2_match_context_free(mctx);
  if (md) pcre2_match_data_free(md);
  return rc >= 0;
}

// ---------------------------------------------------------------------------
// PatternSet

PatternSet::PatternSet(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
PatternSet::~PatternSet() = default;

size_t PatternSet::size() const { return impl_->entries.size(); }

PatternSet::Mode PatternSet::mode(uint32_t id) const {
  auto it = impl_->byId.find(id);
  return it == impl_->byId.end() ? Mode::kUnknown : impl_->entries[it->second].mode;
}

namespace {

struct HsInput {
  std::vector<std::string> exprs;
  std::vector<unsigned> flags;
  std::vector<unsigned> ids;
};

HsInput hsInputFor(const std::vector<Entry>& entries) {
  HsInput in;
  for (uint32_t i = 0; i < entries.size(); ++i) {
    const Entry& e = entries[i];
    if (e.mode == Mode::kExact || e.mode == Mode::kPrefilter) {
      in.exprs.push_back(e.pattern);
      in.flags.push_back(e.hsFlags);
      in.ids.push_back(i);
    } else if (e.mode == Mode::kPhrases) {
      for (const std::string& p : e.phrases) {
        // Empty phrases and phrases with a byte >= 0x80 never match in acmp.
        if (p.empty() || std::any_of(p.begin(), p.end(), [](char c) { return c < 0; })) continue;
        in.exprs.push_back(escapeLiteral(p));
        in.flags.push_back(kHsPhraseFlags);
        in.ids.push_back(i);
      }
    }
  }
  return in;
}

// Demotes the entry whose expression Hyperscan refused in the full compile.
void demote(Entry& e, const std::string& message, std::vector<std::string>& notes) {
  if (message.find("empty") != std::string::npos && !(e.hsFlags & HS_FLAG_ALLOWEMPTY)) {
    e.hsFlags |= HS_FLAG_ALLOWEMPTY;
    return;
  }
  if (e.mode == Mode::kExact) {
    unsigned f = hsAccepts(e.pattern, kHsRegexFlags | HS_FLAG_PREFILTER);
    if (f) {
      e.mode = Mode::kPrefilter;
      e.hsFlags = f;
      notes.push_back("id " + std::to_string(e.id) + ": prefilter: " + message);
      return;
    }
  }
  e.mode = e.mode == Mode::kPhrases ? Mode::kPhrasesSlow : Mode::kPcreOnly;
  e.hsFlags = 0;
  notes.push_back("id " + std::to_string(e.id) +
                  (e.mode == Mode::kPcreOnly ? ": pcre-only: " : ": phrases-slow: ") + message);
}

std::string cacheKey(const std::vector<PatternSpec>& specs) {
  std::string buf;
  buf += kCacheFormat;
  buf.push_back('\0');
  buf += hs_version();
  buf.push_back('\0');
  hs_platform_info_t plat{};
  if (hs_populate_platform(&plat) == HS_SUCCESS) {
    putRaw(buf, static_cast<uint64_t>(plat.tune));
    putRaw(buf, static_cast<uint64_t>(plat.cpu_features));
  }
  putRaw(buf, static_cast<uint64_t>(specs.size()));
  for (const PatternSpec& s : specs) {
    putRaw(buf, s.id);
    putRaw(buf, static_cast<uint8_t>(s.kind));
    if (s.kind == PatternSpec::Kind::kRegex) {
      putRaw(buf, static_cast<uint64_t>(s.regex.size()));
      buf += s.regex;
    } else {
      putRaw(buf, static_cast<uint64_t>(s.phrases.size()));
      for (const std::string& p : s.phrases) {
        putRaw(buf, static_cast<uint64_t>(p.size()));
        buf += p;
      }
    }
  }
  unsigned char h[32];
  if (!sha256({buf}, h)) return {};
  return hexOf(h, 32);
}

// Cache file: magic | u32 entry count | u8 mode + u32 hs flags per entry |
// u64 db size | sha256(db) | serialized db.
bool loadCache(const std::string& path, std::vector<Entry>& entries, hs_database_t** db) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return false;
  std::string data((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  size_t pos = 0;
  auto take = [&](void* dst, size_t n) {
    if (data.size() - pos < n) return false;
    memcpy(dst, data.data() + pos, n);
    pos += n;
    return true;
  };
  char magic[8];
  uint32_t count = 0;
  if (!take(magic, 8) || memcmp(magic, kCacheMagic, 8) != 0 || !take(&count, 4) ||
      count != entries.size())
    return false;
  std::vector<std::pair<Mode, unsigned>> modes(count);
  for (auto& [m, fl] : modes) {
    uint8_t mb = 0;
    uint32_t flb = 0;
    if (!take(&mb, 1) || !take(&flb, 4)) return false;
    m = static_cast<Mode>(mb);
    fl = flb;
  }
  for (uint32_t i = 0; i < count; ++i) {
    bool phrase = entries[i].mode == Mode::kPhrases;
    Mode m = modes[i].first;
    bool ok = phrase ? (m == Mode::kPhrases || m == Mode::kPhrasesSlow)
                     : (m == Mode::kExact || m == Mode::kPrefilter || m == Mode::kPcreOnly);
    if (!ok) return false;
  }
  uint64_t dbLen = 0;
  unsigned char digest[32], actual[32];
  if (!take(&dbLen, 8) || !take(digest, 32) || data.size() - pos != dbLen) return false;
  std::string_view blob(data.data() + pos, dbLen);
  if (!sha256({blob}, actual) || memcmp(digest, actual, 32) != 0) return false;
  hs_database_t* d = nullptr;
  if (dbLen > 0 && hs_deserialize_database(blob.data(), blob.size(), &d) != HS_SUCCESS) return false;
  for (uint32_t i = 0; i < count; ++i) {
    entries[i].mode = modes[i].first;
    entries[i].hsFlags = modes[i].second;
  }
  *db = d;
  return true;
}

bool storeCache(const std::string& dir, const std::string& path,
                const std::vector<Entry>& entries, const hs_database_t* db) {
  std::string out(kCacheMagic, 8);
  putRaw(out, static_cast<uint32_t>(entries.size()));
  for (const Entry& e : entries) {
    putRaw(out, static_cast<uint8_t>(e.mode));
    putRaw(out, static_cast<uint32_t>(e.hsFlags));
  }
  char* bytes = nullptr;
  size_t len = 0;
  if (db && hs_serialize_database(db, &bytes, &len) != HS_SUCCESS) return false;
  std::string_view blob(bytes ? bytes : "", len);
  unsigned char digest[32];
  bool ok = sha256({blob}, digest);
  putRaw(out, static_cast<uint64_t>(len));
  out.append(reinterpret_cast<const char*>(digest), 32);
  out.append(blob);
  free(bytes);  // default misc allocator
  if (!ok) return false;
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  std::random_device rd;
  std::string tmp = path + ".tmp." + std::to_string(getpid()) + "." + std::to_string(rd());
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    if (!f) return false;
    f.write(out.data(), static_cast<std::streamsize>(out.size()));
    f.flush();
    if (!f) {
      f.close();
      std::filesystem::remove(tmp, ec);
      return false;
    }
  }
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    std::filesystem::remove(tmp, ec);
    return false;
  }
  return true;
}

}  // namespace

std::shared_ptr<const PatternSet> PatternSet::build(const std::vector<PatternSpec>& specs,
                                                    const std::string& cacheDir,
                                                    std::string* error, BuildStats* stats) {
  const auto t0 = std::chrono::steady_clock::now();
  BuildStats st;
  auto fail = [&](std::string msg) -> std::shared_ptr<const PatternSet> {
    if (error) *error = std::move(msg);
    return nullptr;
  };
  auto impl = std::make_unique<Impl>();
  impl->serial = gSetSerial.fetch_add(1);
  impl->entries.resize(specs.size());
  if (specs.size() >= UINT32_MAX) return fail("too many pattern specs");

  // 1. PCRE2 for every regex, acmp tries for every phrase list.
  for (uint32_t i = 0; i < specs.size(); ++i) {
    const PatternSpec& s = specs[i];
    Entry& e = impl->entries[i];
    e.id = s.id;
    if (!impl->byId.emplace(s.id, i).second) {
      return fail("pattern id " + std::to_string(s.id) + ": duplicate id");
    }
    if (s.kind == PatternSpec::Kind::kPhrases) {
      e.mode = Mode::kPhrases;
      e.phrases = s.phrases;
      e.trie.build(e.phrases);
      continue;
    }
    e.emptyRegex = s.regex.empty();
    e.pattern = e.emptyRegex ? ".*" : s.regex;
    int code = 0;
    PCRE2_SIZE off = 0;
    e.code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(e.pattern.data()), e.pattern.size(),
                           kPcreFlags, &code, &off, nullptr);
    if (!e.code) {
      return fail("pattern id " + std::to_string(s.id) + ": PCRE2 error at offset " +
                  std::to_string(off) + ": " + pcreMessage(code));
    }
    pcre2_jit_compile(e.code, PCRE2_JIT_COMPLETE);  // failure: interpreter, same results
    pcre2_pattern_info(e.code, PCRE2_INFO_CAPTURECOUNT, &e.captureCount);
    impl->maxPairs = std::max(impl->maxPairs, e.captureCount + 1);
    e.mode = Mode::kUnknown;  // placed below
  }

  // 2. The Hyperscan database: from the cache, or classified and compiled.
  std::string cachePath;
  if (!cacheDir.empty()) {
    std::string key = cacheKey(specs);
    if (!key.empty()) cachePath = (std::filesystem::path(cacheDir) / (key + ".hsdb")).string();
  }
  if (!cachePath.empty()) {
    std::error_code ec;
    if (std::filesystem::exists(cachePath, ec)) {
      if (loadCache(cachePath, impl->entries, &impl->db)) {
        st.cacheHit = true;
        for (const Entry& e : impl->entries) {
          const char* m = e.mode == Mode::kPrefilter    ? "prefilter"
                          : e.mode == Mode::kPcreOnly   ? "pcre-only"
                          : e.mode == Mode::kPhrasesSlow ? "phrases-slow"
                                                          : nullptr;
          if (m) st.notes.push_back("id " + std::to_string(e.id) + ": " + m + " (cached placement)");
        }
      } else {
        st.cacheRejected = true;
      }
    }
  }
  if (!st.cacheHit) {
    const auto hs0 = std::chrono::steady_clock::now();
    for (Entry& e : impl->entries) {
      if (e.mode != Mode::kUnknown) continue;
      std::string why, why2;
      if (unsigned f = hsAccepts(e.pattern, kHsRegexFlags, &why)) {
        e.mode = Mode::kExact;
        e.hsFlags = f;
      } else if (unsigned pf = hsAccepts(e.pattern, kHsRegexFlags | HS_FLAG_PREFILTER, &why2)) {
        e.mode = Mode::kPrefilter;
        e.hsFlags = pf;
        st.notes.push_back("id " + std::to_string(e.id) + ": prefilter: " + why);
      } else {
        e.mode = Mode::kPcreOnly;
        st.notes.push_back("id " + std::to_string(e.id) + ": pcre-only: " + why + " / " + why2);
      }
    }
    // Long regexes are the ones that hit Hyperscan's size limits ("Pattern is
    // too large"), which hs_expression_info cannot see. Compiling them alone
    // first (~3 s of CPU for the CRS) costs about what the failed full
    // compiles it avoids would, but names every such regex up front and keeps
    // the retry loop below for the rare error only the full compile sees.
    for (Entry& e : impl->entries) {
      for (int tries = 0; tries < 3 && (e.mode == Mode::kExact || e.mode == Mode::kPrefilter) &&
                          e.pattern.size() >= kPrecheckBytes;
           ++tries) {
        hs_database_t* one = nullptr;
        hs_compile_error_t* err = nullptr;
        hs_error_t rc = hs_compile(e.pattern.c_str(), e.hsFlags, HS_MODE_BLOCK, nullptr, &one, &err);
        std::string msg = err && err->message ? err->message : "";
        if (err) hs_free_compile_error(err);
        if (one) hs_free_database(one);
        if (rc == HS_SUCCESS) break;
        demote(e, msg, st.notes);
      }
    }
    // Full compile; an expression refused here (resource limits the parse-only
    // check cannot see) is demoted and the compile retried.
    for (size_t attempt = 0;; ++attempt) {
      HsInput in = hsInputFor(impl->entries);
      if (in.exprs.empty()) break;
      std::vector<const char*> ptrs;
      for (const std::string& x : in.exprs) ptrs.push_back(x.c_str());
      hs_compile_error_t* err = nullptr;
      hs_database_t* db = nullptr;
      ++st.hsCompileAttempts;
      hs_error_t rc = hs_compile_multi(ptrs.data(), in.flags.data(), in.ids.data(),
                                       static_cast<unsigned>(ptrs.size()), HS_MODE_BLOCK,
                                       nullptr, &db, &err);
      if (rc == HS_SUCCESS) {
        impl->db = db;
        break;
      }
      std::string msg = err && err->message ? err->message : "unknown Hyperscan error";
      int which = err ? err->expression : -1;
      if (err) hs_free_compile_error(err);
      if (which < 0 || static_cast<size_t>(which) >= in.ids.size() ||
          attempt > 3 * impl->entries.size()) {
        return fail("Hyperscan compile failed: " + msg);
      }
      demote(impl->entries[in.ids[static_cast<size_t>(which)]], msg, st.notes);
    }
    st.hsCompileMs =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - hs0).count();
    if (!cachePath.empty()) {
      st.cacheWritten = storeCache(cacheDir, cachePath, impl->entries, impl->db);
    }
  }

  // 3. Always-run list, empty-value answers, stats.
  PatternScratch::Impl tmp;
  if (!tmp.ok || !tmp.ensurePairs(impl->maxPairs)) return fail("PCRE2 allocation failed");
  PatternScratch counters;
  for (uint32_t i = 0; i < impl->entries.size(); ++i) {
    Entry& e = impl->entries[i];
    switch (e.mode) {
      case Mode::kExact: ++st.exact; break;
      case Mode::kPrefilter: ++st.prefilter; break;
      case Mode::kPcreOnly: ++st.pcreOnly; impl->alwaysRun.push_back(i); break;
      case Mode::kPhrases: ++st.phrases; break;
      case Mode::kPhrasesSlow: ++st.phrasesSlow; impl->alwaysRun.push_back(i); break;
      case Mode::kUnknown: break;
    }
    // acmp never matches an empty value; a regex matches "" as PCRE2 says.
    if (e.code && runPcre(e.code, std::string_view(), tmp, counters) > 0) {
      impl->emptyMatches.push_back(e.id);
    }
  }
  if (impl->db) hs_database_size(impl->db, &st.databaseBytes);
  st.compileMs =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  if (stats) *stats = st;
  return std::shared_ptr<const PatternSet>(new PatternSet(std::move(impl)));
}

void PatternSet::scan(std::string_view value, PatternScratch& scratch,
                      std::vector<uint32_t>& out) const {
  const Impl& p = *impl_;
  PatternScratch::Impl& s = *scratch.impl_;
  if (s.preparedSerial != p.serial) {
    ++scratch.prepares;
    scratch.prepare(*this);
  }
  if (value.empty()) {
    out.insert(out.end(), p.emptyMatches.begin(), p.emptyMatches.end());
    return;
  }
  if (++s.gen == 0) {
    std::fill(s.seen.begin(), s.seen.end(), 0);
    s.gen = 1;
  }
  s.hits.clear();
  bool hsOk = false;
  if (p.db && s.hs && value.size() <= UINT_MAX) {
    hsOk = hs_scan(p.db, value.data(), static_cast<unsigned>(value.size()), 0, s.hs, onHsMatch,
                   &s) == HS_SUCCESS;
  }
  if (p.db && !hsOk) {
    // Hyperscan unusable for this value: run everything the slow way.
    ++scratch.scanErrors;
    s.hits.clear();
    for (uint32_t i = 0; i < p.entries.size(); ++i) s.hits.push_back(i);
  } else {
    s.hits.insert(s.hits.end(), p.alwaysRun.begin(), p.alwaysRun.end());
  }
  std::sort(s.hits.begin(), s.hits.end());
  for (uint32_t idx : s.hits) {
    const Entry& e = p.entries[idx];
    bool hit = false;
    switch (e.mode) {
      case Mode::kExact:
        hit = hsOk || runPcre(e.code, value, s, scratch) > 0;
        break;
      case Mode::kPrefilter:
      case Mode::kPcreOnly:
        hit = runPcre(e.code, value, s, scratch) > 0;
        break;
      case Mode::kPhrases:
      case Mode::kPhrasesSlow:
        hit = e.trie.match(value) >= 0;
        break;
      case Mode::kUnknown:
        break;
    }
    if (hit) out.push_back(e.id);
  }
}

bool PatternSet::matchOne(uint32_t id, std::string_view value, PatternScratch& scratch,
                          Captures* captures) const {
  const Impl& p = *impl_;
  auto it = p.byId.find(id);
  if (it == p.byId.end()) return false;
  PatternScratch::Impl& s = *scratch.impl_;
  if (s.preparedSerial != p.serial) {
    ++scratch.prepares;
    scratch.prepare(*this);
  }
  const Entry& e = p.entries[it->second];
  if (e.emptyRegex) {
    if (captures) captures->clear();
    return true;
  }
  if (e.code) {
    int rc = runPcre(e.code, value, s, scratch);
    if (rc <= 0) return false;
    if (captures) fillCaptures(rc, value, s, captures);
    return true;
  }
  int32_t node = e.trie.match(value);
  if (node < 0) return false;
  if (captures) {
    const AcTrie::Node& n = e.trie.nodes[static_cast<size_t>(node)];
    captures->clear();
    captures->group[0] = std::string_view(e.phrases[n.phrase]).substr(0, n.textLen);
    captures->setMask = 1;
    captures->count = 1;
  }
  return true;
}

bool PatternSet::matchOne(uint32_t id, std::string_view value, PatternScratch& scratch,
                          std::vector<std::string>* captures) const {
  Captures c;
  if (!matchOne(id, value, scratch, captures ? &c : nullptr)) return false;
  if (captures) {
    captures->clear();
    for (size_t i = 0; i < c.count; ++i) captures->emplace_back(c.group[i]);
  }
  return true;
}

}  // namespace moat::waf
