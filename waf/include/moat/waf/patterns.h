// Pattern matching for the WAF's @rx, @pm and @pmFromFile operators, with
// libmodsecurity v3.0.9's results:
//   @rx  PCRE with DOTALL | MULTILINE (no UTF, caseless only through (?i)); a
//        match anywhere in the value (bytes, NUL allowed); captures are the
//        set groups 0..9 of the first match (TX:0..TX:9). An empty pattern
//        matches everything and captures nothing (Rx::evaluate returns true
//        before matching); an empty pattern given to Regex (a macro that
//        expanded to "") is ".*", as in ModSecurity's Regex class. A PCRE2
//        limit hit is "no match", as a negative pcre result is in ModSecurity
//        (whose effective match limit is PCRE's default, 10^7, vs our 10^5).
//   @pm  ASCII-caseless phrase match with ModSecurity's own Aho-Corasick
//        matcher (acmp.cc), quirks included: (a) a node's fail link is only
//        looked up in its parent's fail node, not further down the fail chain,
//        so some occurrences are missed (phrases {"abxz","bq","xy"} do not
//        match "abxy"; in CRS 3.3.4 sql-errors.data's "Error" does not match
//        "You have an error in your SQL syntax"); (b) a phrase byte >= 0x80 is stored as a
//        negative letter and can never match; (c) empty phrases are ignored;
//        (d) TX:0 is the *rule's* spelling of the matcher state at the first
//        position where a phrase ends -- the longest phrase prefix found, as
//        spelled by the first phrase inserted with that prefix -- not the bytes
//        of the value. We reproduce all four.
//
// The control plane builds one immutable PatternSet per config snapshot: every
// spec goes into ONE Hyperscan block-mode database (exact when Hyperscan takes
// the regex, HS_FLAG_PREFILTER + PCRE2 confirmation when only prefiltering
// works, PCRE2 alone on every scan when neither does; phrases as caseless
// escaped literals, confirmed with the acmp-faithful matcher). Workers share
// the set read-only and each owns one PatternScratch.
//
// Threading: PatternSet is immutable after build(); scan() and matchOne() may
// run concurrently from any number of threads, each with its own
// PatternScratch. A PatternScratch is owned by one thread at a time.
// Failure: build() reports errors through its `error` string and returns
// nullptr; scan()/matchOne() never throw and never fail -- a PCRE2 resource
// limit hit or internal match error counts as "no match" and bumps a counter
// in the scratch (what ModSecurity does with a negative pcre return code).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace moat::waf {

struct PatternSpec {
  // Caller's id, unique within one PatternSet; reported by scan() and taken
  // by matchOne().
  uint32_t id = 0;
  enum class Kind : uint8_t { kRegex, kPhrases } kind = Kind::kRegex;
  // kRegex: PCRE syntax as written in the rule (after the rule file's own
  // unquoting). Empty matches every value and captures nothing.
  std::string regex;
  // kPhrases: the phrases, already decoded (@pm's |hex| escapes, one phrase
  // per @pmFromFile line). Order matters for TX:0's spelling (quirk d).
  std::vector<std::string> phrases;
};

// What build() did; for logs and counters. Counts are specs, not phrases.
struct BuildStats {
  size_t exact = 0;      // regexes Hyperscan matches exactly
  size_t prefilter = 0;  // regexes prefiltered by Hyperscan, confirmed by PCRE2
  size_t pcreOnly = 0;   // regexes run with PCRE2 on every non-empty scan
                         // (production: should stay a handful; each costs a
                         // full PCRE2 run per value)
  size_t phrases = 0;    // phrase specs (Hyperscan literals + acmp confirm)
  size_t phrasesSlow = 0;  // phrase specs Hyperscan refused (acmp every scan;
                           // expected 0)
  bool cacheHit = false;       // the Hyperscan database came from cacheDir
  bool cacheRejected = false;  // a cache file existed but was corrupt or
                               // mismatched; it was ignored and rewritten
  bool cacheWritten = false;   // a new cache file was stored
  size_t databaseBytes = 0;    // hs_database_size(), 0 when no database
  double compileMs = 0;        // wall time of the whole build()
  double hsCompileMs = 0;      // of which Hyperscan placement + compile
  unsigned hsCompileAttempts = 0;  // full compiles (1 + demotions forced by
                                   // errors the per-pattern check misses)
  // One line per regex Hyperscan refused or only prefilters, with its
  // reason ("id 7: prefilter: Possessive quantifiers are not supported.");
  // on a cache hit the reason is "(cached placement)".
  std::vector<std::string> notes;
};

// Captures of one match: group[i] valid when isSet(i). Views point into the
// scanned value (regexes) or into the PatternSet (phrases: the rule's
// spelling), so they live as long as both. ModSecurity stores TX:i only for
// set groups -- an unset group leaves TX:i as it was.
struct Captures {
  static constexpr size_t kMax = 10;  // TX:0..TX:9
  std::array<std::string_view, kMax> group{};
  uint16_t setMask = 0;
  uint8_t count = 0;  // 1 + highest set group index kept (<= kMax)
  bool isSet(size_t i) const { return i < kMax && (setMask >> i) & 1u; }
  void clear() { setMask = 0; count = 0; }
};

class PatternSet;
class Regex;

// Per-thread scratch: a Hyperscan scratch, a PCRE2 JIT stack + match context +
// match data, and the hit bookkeeping of one scan. Create it on the control
// plane (allocates); prepare() it for every new PatternSet before the first
// scan (also allocates; if you forget, the first scan()/matchOne() does it and
// bumps `prepares`). Not thread-safe: one thread uses it at a time. It holds
// no reference to any set; a set must outlive every scan running with it (the
// config snapshot's quiescent-point release gives that).
class PatternScratch {
 public:
  PatternScratch();
  explicit PatternScratch(const PatternSet& set);  // = PatternScratch() + prepare(set)
  ~PatternScratch();
  PatternScratch(PatternScratch&&) noexcept;
  PatternScratch& operator=(PatternScratch&&) noexcept;
  PatternScratch(const PatternScratch&) = delete;
  PatternScratch& operator=(const PatternScratch&) = delete;

  // Grows everything to fit `set` (hs_alloc_scratch keeps what is big enough).
  // Control plane or snapshot switch: allocates. Returns false only when
  // Hyperscan or PCRE2 cannot allocate (then scans see no Hyperscan matches
  // and count `scanErrors`).
  bool prepare(const PatternSet& set);

  // Counters, bumped by the owner thread only; read them from that thread or
  // after it stopped.
  uint64_t pcreLimitHits = 0;  // PCRE2 match/depth/heap/JIT-stack limit hit,
                               // counted as no match (production: ~0; a steady
                               // rate means someone probes for ReDoS)
  uint64_t pcreErrors = 0;     // other negative PCRE2 results (expected 0)
  uint64_t scanErrors = 0;     // hs_scan failures (expected 0)
  uint64_t prepares = 0;       // implicit prepare() on the hot path (expected
                               // 0 when the worker prepares on snapshot switch)

  struct Impl;  // opaque; defined in patterns.cpp

 private:
  friend class PatternSet;
  friend class Regex;
  std::unique_ptr<Impl> impl_;
};

// A standalone PCRE2 regex (JIT, same flags and limits as @rx) for @rx
// arguments that contain macros and so are compiled per transaction.
// compile() allocates; match() allocates only when the scratch's match data
// is smaller than this regex's group count. Immutable: match() is safe from
// many threads, each with its own scratch.
class Regex {
 public:
  // nullopt and `error` set (PCRE2's message and offset) when PCRE2 rejects it.
  static std::optional<Regex> compile(std::string_view pattern, std::string* error);
  ~Regex();
  Regex(Regex&&) noexcept;
  Regex& operator=(Regex&&) noexcept;
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // True when `value` matches; `captures` (optional) gets the first match's
  // groups 0..9, views into `value`.
  bool match(std::string_view value, PatternScratch& scratch, Captures* captures) const;
  // Convenience without a scratch: allocates match data and a match context
  // per call (same limits; a limit hit is "no match" but is not counted), and
  // copies set groups into `captures` (unset ones become ""). Any thread.
  bool match(std::string_view value, std::vector<std::string>* captures) const;

 private:
  Regex() = default;
  void* code_ = nullptr;  // pcre2_code_8*
};

// Immutable compiled set, shared read-only by all worker threads.
class PatternSet {
 public:
  // Compiles `specs` (see the file comment for how each is placed). Every
  // regex is also compiled with PCRE2 (JIT) for confirmation and captures.
  // Errors (nullptr returned, `*error` set, nothing written to the cache): a
  // regex PCRE2 rejects ("pattern id 7: PCRE2 error at offset 3: ..."),
  // duplicate ids, a Hyperscan compile failure that demotion cannot fix.
  // cacheDir non-empty: the serialized database is loaded from / stored at
  // cacheDir/<sha256 of format version, hs_version(), host platform, every
  // spec>.hsdb (temp file + rename; created directories as needed); a corrupt
  // or mismatched file is ignored, rewritten and reported in stats; a write
  // failure is not an error (stats->cacheWritten stays false). The cache dir
  // is trusted local storage: a file that passes the checks (magic, layout,
  // SHA-256 of the database, hs_deserialize_database) is used as is.
  // Control plane only: allocates, blocks (disk; CRS 3.3.4 on one core: 20-30 s
  // cold, ~60 ms from the cache -- PCRE2 JIT and tries are always rebuilt).
  // `error` and `stats` may be nullptr.
  static std::shared_ptr<const PatternSet> build(const std::vector<PatternSpec>& specs,
                                                 const std::string& cacheDir,
                                                 std::string* error, BuildStats* stats);
  ~PatternSet();
  PatternSet(const PatternSet&) = delete;
  PatternSet& operator=(const PatternSet&) = delete;

  // Appends to `out` the id of every spec that matches `value`, each at most
  // once, in spec order; exact (prefilter hits confirmed, PCRE2-only specs
  // run, phrase hits confirmed with the acmp-faithful matcher). Any thread
  // with its own scratch; no allocation once `out` has capacity for size()
  // ids and the scratch is prepared. Cost: one Hyperscan pass + one PCRE2 run
  // per prefilter hit and per PCRE2-only spec + O(value) per phrase hit.
  void scan(std::string_view value, PatternScratch& scratch,
            std::vector<uint32_t>& out) const;

  // Runs spec `id` alone (PCRE2, or the acmp matcher) and fills `captures`
  // (optional) with the first match's groups 0..9 (phrases: group 0 only).
  // False when it does not match or `id` is unknown. Same threading and
  // allocation rules as scan(); cost one PCRE2 run or one O(value) pass.
  bool matchOne(uint32_t id, std::string_view value, PatternScratch& scratch,
                Captures* captures) const;
  // Convenience for control-plane code and tests: copies the captures into
  // strings (unset groups become ""; at most 10 entries). Allocates.
  bool matchOne(uint32_t id, std::string_view value, PatternScratch& scratch,
                std::vector<std::string>* captures) const;
  // Match only, no captures.
  bool matchOne(uint32_t id, std::string_view value, PatternScratch& scratch) const {
    return matchOne(id, value, scratch, static_cast<Captures*>(nullptr));
  }

  size_t size() const;  // number of specs
  // How spec `id` is run; for tests and diagnostics.
  enum class Mode : uint8_t { kExact, kPrefilter, kPcreOnly, kPhrases, kPhrasesSlow, kUnknown };
  Mode mode(uint32_t id) const;

  struct Impl;  // opaque; defined in patterns.cpp

 private:
  friend class PatternScratch;
  explicit PatternSet(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace moat::waf
