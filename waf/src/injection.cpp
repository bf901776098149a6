// Tokenizing SQL injection and XSS detectors (see injection.h for the
// contract: pure, any thread, no allocation, O(n), never fails).
//
// ---------------------------------------------------------------------------
// SQL injection
// ---------------------------------------------------------------------------
// A request value is spliced into some SQL statement by the application, most
// often inside a string literal ('...' or "...") or as a bare number. We do not
// know which, so the value is tokenized three times: as is, as if an opening '
// came before it, and as if an opening " did (in a quote context the first
// token is the string the value closes; when the value never closes it, the
// whole value stays inside the literal and that context is harmless).
//
// Token classes (one character each; they also make up the fingerprint):
//   s string literal        n number / NULL / TRUE / FALSE   v @var or @@var
//   b bareword, `ident`     f known function, only when '(' follows
//   E statement verb (SELECT INSERT UPDATE DELETE DROP CREATE ALTER TRUNCATE)
//   U UNION (ALL|DISTINCT)  k other keyword (FROM SET TABLE DATABASE ...)
//   C clause (WHERE HAVING LIMIT INTO [OUTFILE] ORDER BY GROUP BY)
//   T T-SQL / admin verb (EXEC WAITFOR [DELAY] DECLARE SHUTDOWN)
//   & logical (AND OR XOR && ||)  = comparison (= <> != < <= LIKE IN IS [NOT] ...)
//   o other operator        , ( ) ;   c comment reaching the end of input
//   ? anything else
// Whitespace, control bytes and comments that are followed by more code are
// skipped (so 1/**/UNION/**/SELECT reads as 1 UNION SELECT); MySQL's /*! ...*/
// executable comment markers are dropped and their body tokenized.
//
// Folding, on the fly as tokens arrive: multi-word keywords merge (UNION ALL,
// ORDER BY, GROUP BY, WAITFOR DELAY, IS NOT, NOT LIKE, AND NOT, INTO OUTFILE,
// SELECT DISTINCT), unary signs before a value disappear (-1 is n), and
// arithmetic between numbers collapses (2010-01-01 and 1+2*3 are one n).
// Tokens are produced lazily, only as far as the grammar looks (usually two
// or three for text); at most kMaxRawTokens are read per context and
// kMaxFolded kept, so an attack behind a long benign prefix is out of view.
//
// Grammar (judge()): the stream is an attack when
//   * a value (s, n; v, or b and name=value more strictly) is followed, after
//     any closing parentheses, by a tail:
//       - a logical operator, then a function call, a statement, a server
//         variable, '(' opening an expression, or a value that is compared
//         or computed on ("' OR 1=1", "1 AND 2>1", "' or x like '%");
//         after a string also a bare number or a string the application's
//         own quote will close ("' or 1", "1' and '1");
//       - UNION SELECT; ';' then a statement; a clause with an operand
//         (ORDER BY 1, HAVING 1=1, INTO OUTFILE '..'); a T-SQL verb;
//       - after a string only: a comment (admin'--), an operator or '(' then
//         a call or subquery ('+sleep(5)+', x' (select ..) '), or '=' then a
//         value that ends the input or is followed by AND/OR/comment (x'='x);
//   * the stream starts with a statement: SELECT with *, a column list or
//     FROM table, DROP/CREATE/ALTER/TRUNCATE TABLE, INSERT INTO, UPDATE x SET,
//     DELETE FROM x WHERE, UNION SELECT, EXEC xp_.../EXEC('..'), WAITFOR
//     DELAY '..', DECLARE @x, SHUTDOWN, or @@version alone;
//   * a time/file/error-based function (sleep benchmark pg_sleep load_file
//     extractvalue updatexml ...) is called with an argument at the start or
//     in an expression position anywhere in the kept tokens:
//     if(1=1,sleep(5),0). Those names followed by "(5" are never prose.
// Plain text does not match: "1 or 2 items" lacks a comparison, "select your
// size" lacks a column list, "O'Reilly" closes a string but nothing SQL-like
// follows it. Known false positives: a quote right before and/or plus a
// number or a quoted word ("the word 'or' is"), "select x from y" as prose.

// ---------------------------------------------------------------------------
// XSS
// ---------------------------------------------------------------------------
// A tolerant HTML scanner. Every '<' is examined: "<!--", "<![CDATA[",
// "<!ENTITY", "</script" and tags whose name (namespace prefix dropped) is one
// that runs or loads code (script iframe object svg style link meta base ...)
// match at once; any other tag has its attributes parsed and matches on an
// event handler (on + letters, then '='), a URL value whose scheme is
// javascript:/vbscript:/livescript: or data: with an HTML/XML/SVG/script type
// (read past whitespace, control bytes and character references, so
// "jav&#x09;ascript:" counts), a style value with expr(ession)/script:/
// behavior/-moz-binding, formaction, or action on form/isindex; also
// "<?import". The value is also treated as the tail of an attribute value
// (unquoted, '...' and "...") whose attributes are then parsed the same way
// (only when it contains '=': an added attribute needs one), and as a URL on
// its own. "a < b", "<3", "x<y" and "<bob@example.com>" are no tags or
// harmless ones; attribute names that are English words (once, only,
// online, ...) are not handlers. Known false positive: text starting with
// "javascript:" (a book title) reads as a javascript: URL.
// Work: each '<' starts a tag parse that stops at the next '<' outside a
// quoted value, and the text scan resumes there, so bytes are revisited a
// bounded number of times; the three attribute contexts are one pass each.

#include "moat/waf/injection.h"

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>

namespace moat::waf {
namespace {

// ---- shared character helpers ---------------------------------------------

constexpr char lowerAscii(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c + 32) : c; }
constexpr bool isDigit(char c) { return c >= '0' && c <= '9'; }
constexpr bool isAlpha(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
constexpr bool isHex(char c) {
  return isDigit(c) || (lowerAscii(c) >= 'a' && lowerAscii(c) <= 'f');
}
constexpr bool isHigh(char c) { return static_cast<unsigned char>(c) >= 0x80; }
// Bytes SQL and HTML both skip as blank: ASCII whitespace, other controls, DEL.
constexpr bool isBlank(char c) {
  return static_cast<unsigned char>(c) <= 0x20 || static_cast<unsigned char>(c) == 0x7f;
}

// Case-insensitive "s starts at i with `lit`" (lit lowercase).
bool startsWithAt(std::string_view s, size_t i, std::string_view lit) {
  if (s.size() - std::min(i, s.size()) < lit.size()) return false;
  for (size_t k = 0; k < lit.size(); ++k)
    if (lowerAscii(s[i + k]) != lit[k]) return false;
  return true;
}

// ===========================================================================
// SQL
// ===========================================================================

// Keyword identities the folding and grammar look at; most words only need a
// class.
enum class Kw : uint8_t {
  kNone,
  kAll,
  kBy,
  kDelay,
  kDelete,
  kDistinct,
  kDrop,
  kDumpfile,
  kExec,
  kFrom,
  kGroup,
  kInsert,
  kInto,
  kIs,
  kLike,
  kNot,
  kObject,
  kOrder,
  kOutfile,
  kSelect,
  kSet,
  kShutdown,
  kSounds,
  kUpdate,
  kWaitfor,
  kDeclare,
  kCreate,
  kAlter,
  kTruncate,
  kUnion,
};

// Token flags.
constexpr uint8_t kFlagStrongFunc = 1;      // time/file/error-based function
constexpr uint8_t kFlagStar = 2;            // the '*' operator
constexpr uint8_t kFlagProc = 4;            // bareword naming an xp_/sp_ procedure
constexpr uint8_t kFlagCmpWord = 8;         // comparison spelt as a word (LIKE, IN, ...)
constexpr uint8_t kFlagUnary = 16;          // an operator that may be a sign: - + ~ ! NOT
constexpr uint8_t kFlagSysVar = 32;         // @@name, a server variable
constexpr uint8_t kFlagOpen = 64;           // string literal the input leaves open
constexpr uint8_t kFlagDoubleQuoted = 128;  // string literal in "..."

struct KeywordEntry {
  std::string_view name;  // lowercase
  char type;
  Kw kw;
  uint8_t flags;
};

// Sorted by name (checked by static_assert below) for the first-letter index. Our own
// selection: the words an injection needs, not every reserved word; a word
// missing here is a bareword, which the grammar treats as an ordinary value.
constexpr KeywordEntry kKeywords[] = {
    {"all", 'b', Kw::kAll, 0},
    {"alter", 'E', Kw::kAlter, 0},
    {"analyse", 'f', Kw::kNone, 0},
    {"and", '&', Kw::kNone, 0},
    {"ascii", 'f', Kw::kNone, 0},
    {"benchmark", 'f', Kw::kNone, kFlagStrongFunc},
    {"between", '=', Kw::kNone, kFlagCmpWord},
    {"bin", 'f', Kw::kNone, 0},
    {"by", 'b', Kw::kBy, 0},
    {"cast", 'f', Kw::kNone, 0},
    {"char", 'f', Kw::kNone, 0},
    {"chr", 'f', Kw::kNone, 0},
    {"coalesce", 'f', Kw::kNone, 0},
    {"concat", 'f', Kw::kNone, 0},
    {"concat_ws", 'f', Kw::kNone, 0},
    {"convert", 'f', Kw::kNone, 0},
    {"count", 'f', Kw::kNone, 0},
    {"create", 'E', Kw::kCreate, 0},
    {"database", 'k', Kw::kObject, 0},
    {"db_name", 'f', Kw::kNone, 0},
    {"dbms_lock.sleep", 'f', Kw::kNone, kFlagStrongFunc},
    {"dbms_pipe.receive_message", 'f', Kw::kNone, kFlagStrongFunc},
    {"declare", 'T', Kw::kDeclare, 0},
    {"delay", 'b', Kw::kDelay, 0},
    {"delete", 'E', Kw::kDelete, 0},
    {"distinct", 'b', Kw::kDistinct, 0},
    {"div", 'o', Kw::kNone, 0},
    {"drop", 'E', Kw::kDrop, 0},
    {"dumpfile", 'b', Kw::kDumpfile, 0},
    {"elt", 'f', Kw::kNone, 0},
    {"exec", 'T', Kw::kExec, 0},
    {"execute", 'T', Kw::kExec, 0},
    {"exists", 'f', Kw::kNone, 0},
    {"exp", 'f', Kw::kNone, 0},
    {"extractvalue", 'f', Kw::kNone, kFlagStrongFunc},
    {"false", 'n', Kw::kNone, 0},
    {"floor", 'f', Kw::kNone, 0},
    {"from", 'k', Kw::kFrom, 0},
    {"glob", '=', Kw::kNone, kFlagCmpWord},
    {"group", 'b', Kw::kGroup, 0},
    {"group_concat", 'f', Kw::kNone, 0},
    {"having", 'C', Kw::kNone, 0},
    {"hex", 'f', Kw::kNone, 0},
    {"if", 'f', Kw::kNone, 0},
    {"ifnull", 'f', Kw::kNone, 0},
    {"in", '=', Kw::kNone, kFlagCmpWord},
    {"insert", 'E', Kw::kInsert, 0},
    {"into", 'C', Kw::kInto, 0},
    {"is", '=', Kw::kIs, kFlagCmpWord},
    {"isnull", 'f', Kw::kNone, 0},
    {"json_extract", 'f', Kw::kNone, 0},
    {"length", 'f', Kw::kNone, 0},
    {"like", '=', Kw::kLike, kFlagCmpWord},
    {"limit", 'C', Kw::kNone, 0},
    {"load_file", 'f', Kw::kNone, kFlagStrongFunc},
    {"lower", 'f', Kw::kNone, 0},
    {"make_set", 'f', Kw::kNone, 0},
    {"md5", 'f', Kw::kNone, 0},
    {"mid", 'f', Kw::kNone, 0},
    {"mod", 'o', Kw::kNone, 0},
    {"name_const", 'f', Kw::kNone, kFlagStrongFunc},
    {"not", 'o', Kw::kNot, kFlagUnary},
    {"null", 'n', Kw::kNone, 0},
    {"nullif", 'f', Kw::kNone, 0},
    {"or", '&', Kw::kNone, 0},
    {"ord", 'f', Kw::kNone, 0},
    {"order", 'b', Kw::kOrder, 0},
    {"outfile", 'b', Kw::kOutfile, 0},
    {"pg_read_file", 'f', Kw::kNone, kFlagStrongFunc},
    {"pg_sleep", 'f', Kw::kNone, kFlagStrongFunc},
    {"procedure", 'C', Kw::kObject, 0},
    {"rand", 'f', Kw::kNone, 0},
    {"randomblob", 'f', Kw::kNone, kFlagStrongFunc},
    {"regexp", '=', Kw::kLike, kFlagCmpWord},
    {"rlike", '=', Kw::kLike, kFlagCmpWord},
    {"row", 'f', Kw::kNone, 0},
    {"schema", 'f', Kw::kNone, 0},
    {"select", 'E', Kw::kSelect, 0},
    {"set", 'k', Kw::kSet, 0},
    {"sha1", 'f', Kw::kNone, 0},
    {"shutdown", 'T', Kw::kShutdown, 0},
    {"sleep", 'f', Kw::kNone, kFlagStrongFunc},
    {"sounds", 'b', Kw::kSounds, 0},
    {"substr", 'f', Kw::kNone, 0},
    {"substring", 'f', Kw::kNone, 0},
    {"sys_eval", 'f', Kw::kNone, kFlagStrongFunc},
    {"sys_exec", 'f', Kw::kNone, kFlagStrongFunc},
    {"table", 'k', Kw::kObject, 0},
    {"true", 'n', Kw::kNone, 0},
    {"truncate", 'E', Kw::kTruncate, 0},
    {"unhex", 'f', Kw::kNone, 0},
    {"union", 'U', Kw::kUnion, 0},
    {"update", 'E', Kw::kUpdate, 0},
    {"updatexml", 'f', Kw::kNone, kFlagStrongFunc},
    {"upper", 'f', Kw::kNone, 0},
    {"user", 'f', Kw::kNone, 0},
    {"user_name", 'f', Kw::kNone, 0},
    {"utl_http.request", 'f', Kw::kNone, kFlagStrongFunc},
    {"utl_inaddr.get_host_address", 'f', Kw::kNone, kFlagStrongFunc},
    {"version", 'f', Kw::kNone, 0},
    {"view", 'k', Kw::kObject, 0},
    {"waitfor", 'T', Kw::kWaitfor, 0},
    {"where", 'C', Kw::kNone, 0},
    {"xor", '&', Kw::kNone, 0},
    {"xp_cmdshell", 'f', Kw::kNone, kFlagStrongFunc},
};

constexpr bool keywordsSorted() {
  for (size_t i = 1; i < std::size(kKeywords); ++i)
    if (!(kKeywords[i - 1].name < kKeywords[i].name)) return false;
  return true;
}
static_assert(keywordsSorted(), "kKeywords must stay sorted for kLetterStart");

// Longest keyword we store; longer words are barewords without a lookup.
constexpr size_t kMaxKeywordLen = 32;

// kKeywords index by first letter: entries [kLetterStart[c], kLetterStart[c+1])
// begin with 'a' + c. Built at compile time.
constexpr std::array<uint8_t, 27> kLetterStart = [] {
  std::array<uint8_t, 27> start{};
  size_t e = 0;
  for (int c = 0; c < 26; ++c) {
    start[c] = static_cast<uint8_t>(e);
    while (e < std::size(kKeywords) && kKeywords[e].name[0] == 'a' + c) ++e;
  }
  start[26] = static_cast<uint8_t>(e);
  return start;
}();
static_assert(kLetterStart[26] == std::size(kKeywords), "every keyword starts with a-z");

// Exact lookup of a lowercase word; a handful of length compares per word.
const KeywordEntry* findKeyword(std::string_view lower) {
  const char c0 = lower.empty() ? '\0' : lower[0];
  if (c0 < 'a' || c0 > 'z') return nullptr;
  for (int e = kLetterStart[c0 - 'a']; e < kLetterStart[c0 - 'a' + 1]; ++e) {
    const std::string_view name = kKeywords[e].name;
    if (name.size() == lower.size() && std::memcmp(name.data(), lower.data(), name.size()) == 0)
      return &kKeywords[e];
  }
  return nullptr;
}

struct Token {
  char type = '\0';
  Kw kw = Kw::kNone;
  uint8_t flags = 0;
};

// Why these caps: an injection shows its shape in its first handful of tokens
// (libinjection-style detectors look at five); 48 raw tokens leaves room for
// parentheses, unary signs and folded arithmetic, and bounds the work spent on
// long benign text at a few dozen tokens per context.
constexpr int kMaxRawTokens = 48;
constexpr int kMaxFolded = 16;
constexpr int kFingerprintLen = 5;

enum class SqlContext : uint8_t { kAsIs, kSingleQuote, kDoubleQuote };

// One context's tokenizer. Produces raw tokens one at a time; next() returns
// false at the end of input.
class SqlLexer {
 public:
  SqlLexer(std::string_view s, size_t start) : s_(s), pos_(start) {}

  bool next(Token& tok) {
    for (;;) {
      skipBlank();
      if (pos_ >= s_.size()) return false;
      const char c = s_[pos_];
      const char d = pos_ + 1 < s_.size() ? s_[pos_ + 1] : '\0';
      tok = Token{};
      // Comments.
      if ((c == '-' && d == '-' &&
           (pos_ + 2 >= s_.size() || isBlank(s_[pos_ + 2]) || s_[pos_ + 2] == '-' ||
            s_[pos_ + 2] == '+')) ||
          (c == '#' && !(isAlpha(d) || isDigit(d)))) {
        lineComment();
        if (atEnd()) return emit(tok, 'c');
        continue;
      }
      if (c == '/' && d == '*') {
        if (pos_ + 2 < s_.size() && s_[pos_ + 2] == '!') {  // MySQL /*!50000 code */
          pos_ += 3;
          while (pos_ < s_.size() && isDigit(s_[pos_])) ++pos_;
          continue;
        }
        const size_t close = s_.find("*/", pos_ + 2);
        pos_ = close == std::string_view::npos ? s_.size() : close + 2;
        if (atEnd()) return emit(tok, 'c');
        continue;
      }
      if (c == '*' && d == '/') {  // end of a /*! block
        pos_ += 2;
        continue;
      }
      if (c == '\'' || c == '"') {
        ++pos_;
        if (!skipString(c)) tok.flags = kFlagOpen;
        if (c == '"') tok.flags |= kFlagDoubleQuoted;
        return emit(tok, 's');
      }
      if (c == '`') {
        const size_t close = s_.find('`', pos_ + 1);
        pos_ = close == std::string_view::npos ? s_.size() : close + 1;
        return emit(tok, 'b');
      }
      if (isDigit(c) || (c == '.' && isDigit(d))) {
        number();
        return emit(tok, 'n');
      }
      if (c == '@') {
        ++pos_;
        if (pos_ < s_.size() && s_[pos_] == '@') {
          ++pos_;
          tok.flags = kFlagSysVar;
        }
        if (pos_ < s_.size() && (s_[pos_] == '\'' || s_[pos_] == '"' || s_[pos_] == '`')) {
          const char q = s_[pos_++];
          skipString(q);
        } else {
          while (pos_ < s_.size() && isWordChar(s_[pos_])) ++pos_;
        }
        return emit(tok, 'v');
      }
      if (isAlpha(c) || c == '_' || c == '$' || isHigh(c)) return word(tok);
      ++pos_;
      switch (c) {
        case '(': return emit(tok, '(');
        case ')': return emit(tok, ')');
        case ',': return emit(tok, ',');
        case ';': return emit(tok, ';');
        case '=':
          if (pos_ < s_.size() && s_[pos_] == '=') ++pos_;
          return emit(tok, '=');
        case '<':
          if (pos_ < s_.size() && s_[pos_] == '<') {
            ++pos_;
            return emit(tok, 'o');
          }
          if (pos_ < s_.size() && (s_[pos_] == '=' || s_[pos_] == '>')) {
            ++pos_;
            if (pos_ < s_.size() && s_[pos_ - 1] == '=' && s_[pos_] == '>') ++pos_;  // <=>
          }
          return emit(tok, '=');
        case '>':
          if (pos_ < s_.size() && s_[pos_] == '>') {
            ++pos_;
            return emit(tok, 'o');
          }
          if (pos_ < s_.size() && s_[pos_] == '=') ++pos_;
          return emit(tok, '=');
        case '!':
          if (pos_ < s_.size() && s_[pos_] == '=') {
            ++pos_;
            return emit(tok, '=');
          }
          tok.flags = kFlagUnary;
          return emit(tok, 'o');
        case ':':
          if (pos_ < s_.size() && s_[pos_] == '=') {
            ++pos_;
            return emit(tok, '=');
          }
          if (pos_ < s_.size() && s_[pos_] == ':') {
            ++pos_;
            return emit(tok, 'o');
          }  // PostgreSQL cast
          return emit(tok, '?');
        case '&':
          if (pos_ < s_.size() && s_[pos_] == '&') {
            ++pos_;
            return emit(tok, '&');
          }
          return emit(tok, 'o');
        case '|':
          if (pos_ < s_.size() && s_[pos_] == '|') {
            ++pos_;
            return emit(tok, '&');
          }
          return emit(tok, 'o');
        case '*': tok.flags = kFlagStar; return emit(tok, 'o');
        case '+':
        case '-':
        case '~': tok.flags = kFlagUnary; return emit(tok, 'o');
        case '/':
        case '%':
        case '^': return emit(tok, 'o');
        default: return emit(tok, '?');
      }
    }
  }

  // For function detection: is the next code byte '(' (blanks and closed
  // comments skipped)?
  bool nextIsParen() const {
    size_t p = pos_;
    for (;;) {
      while (p < s_.size() && isBlank(s_[p])) ++p;
      if (p + 1 < s_.size() && s_[p] == '/' && s_[p + 1] == '*') {
        const size_t close = s_.find("*/", p + 2);
        if (close == std::string_view::npos) return false;
        p = close + 2;
        continue;
      }
      return p < s_.size() && s_[p] == '(';
    }
  }

  // Skips a quoted string body whose opening quote `q` is already consumed:
  // backslash escapes and doubled quotes stay inside. Returns false when the
  // input ends first.
  bool skipString(char q) {
    while (pos_ < s_.size()) {
      const char c = s_[pos_];
      if (c == '\\') {
        pos_ += 2;
        continue;
      }
      ++pos_;
      if (c == q) {
        if (pos_ < s_.size() && s_[pos_] == q) {
          ++pos_;
          continue;
        }
        return true;
      }
    }
    pos_ = s_.size();
    return false;
  }

 private:
  static constexpr bool isWordChar(char c) {
    return isAlpha(c) || isDigit(c) || c == '_' || c == '$' || c == '.' || isHigh(c);
  }
  static bool emit(Token& tok, char type) {
    tok.type = type;
    return true;
  }
  void skipBlank() {
    while (pos_ < s_.size() && isBlank(s_[pos_])) ++pos_;
  }
  bool atEnd() {
    skipBlank();
    return pos_ >= s_.size();
  }
  void lineComment() {
    while (pos_ < s_.size() && s_[pos_] != '\n' && s_[pos_] != '\r') ++pos_;
  }
  void number() {
    const size_t n = s_.size();
    if (s_[pos_] == '0' && pos_ + 2 < n &&
        (lowerAscii(s_[pos_ + 1]) == 'x' || lowerAscii(s_[pos_ + 1]) == 'b') &&
        isHex(s_[pos_ + 2])) {
      pos_ += 2;
      while (pos_ < n && isHex(s_[pos_])) ++pos_;
      return;
    }
    while (pos_ < n && isDigit(s_[pos_])) ++pos_;
    if (pos_ < n && s_[pos_] == '.') {
      ++pos_;
      while (pos_ < n && isDigit(s_[pos_])) ++pos_;
    }
    if (pos_ + 1 < n && lowerAscii(s_[pos_]) == 'e' &&
        (isDigit(s_[pos_ + 1]) ||
         ((s_[pos_ + 1] == '+' || s_[pos_ + 1] == '-') && pos_ + 2 < n && isDigit(s_[pos_ + 2])))) {
      pos_ += 2;
      while (pos_ < n && isDigit(s_[pos_])) ++pos_;
    }
  }
  bool word(Token& tok) {
    const size_t begin = pos_;
    while (pos_ < s_.size() && isWordChar(s_[pos_])) ++pos_;
    const size_t len = pos_ - begin;
    // N'..', X'..', B'..', E'..' literal prefixes: one string token.
    if (len == 1 && pos_ < s_.size() && s_[pos_] == '\'') {
      const char p = lowerAscii(s_[begin]);
      if (p == 'n' || p == 'x' || p == 'b' || p == 'e') {
        ++pos_;
        skipString('\'');
        return emit(tok, 's');
      }
    }
    tok.type = 'b';
    if (len <= kMaxKeywordLen) {
      char buf[kMaxKeywordLen];
      for (size_t i = 0; i < len; ++i) buf[i] = lowerAscii(s_[begin + i]);
      const std::string_view lower(buf, len);
      if (const KeywordEntry* e = findKeyword(lower)) {
        tok.type = e->type;
        tok.kw = e->kw;
        tok.flags = e->flags;
        if (tok.type == 'f' && !nextIsParen()) {
          tok.type = 'b';
          tok.flags = 0;
        }
      }
      if (tok.type == 'b') {
        // master..xp_cmdshell, sp_executesql, dbo.sp_x: stored procedures.
        const size_t dot = lower.rfind('.');
        const std::string_view last = dot == std::string_view::npos ? lower : lower.substr(dot + 1);
        if (last.starts_with("xp_") || last.starts_with("sp_")) tok.flags = kFlagProc;
      }
    }
    return true;
  }

  std::string_view s_;
  size_t pos_;
};

// The folded token stream of one context, produced lazily: the grammar asks
// for the class at index i and only as many tokens as that needs are lexed
// (one more than i, because folding may still rewrite or drop the newest
// token). Benign text is thus usually dismissed after two or three tokens.
class TokenStream {
 public:
  TokenStream(std::string_view s, SqlContext ctx) : lex_(s, 0) {
    if (ctx != SqlContext::kAsIs) {
      const char q = ctx == SqlContext::kSingleQuote ? '\'' : '"';
      quote_ = q;
      // A value that never closes the literal stays inside it: harmless here.
      if (s.find(q) == std::string_view::npos || !lex_.skipString(q)) return;
      push(Token{'s', Kw::kNone, 0});
    }
    valid_ = true;
  }

  bool valid() const { return valid_; }
  // The context's quote ('\0' as is).
  char quote() const { return quote_; }

  // Class at i; '\0' past the real end, '~' past the kept tokens (unknown).
  char at(int i) {
    fill(i);
    return i < n_ ? t_[i].type : (truncated_ ? '~' : '\0');
  }
  Kw kw(int i) {
    fill(i);
    return i < n_ ? t_[i].kw : Kw::kNone;
  }
  uint8_t flags(int i) {
    fill(i);
    return i < n_ ? t_[i].flags : 0;
  }

 private:
  void fill(int i) {
    Token tok;
    while (!done_ && n_ <= i + 1) {
      if (raw_ == kMaxRawTokens || !lex_.next(tok)) {
        truncated_ = raw_ == kMaxRawTokens;
        done_ = true;
        return;
      }
      ++raw_;
      push(tok);
    }
  }

  void push(const Token& tok);

  SqlLexer lex_;
  std::array<Token, kMaxFolded> t_{};
  int n_ = 0;
  int raw_ = 0;
  char quote_ = '\0';
  bool valid_ = false;
  bool done_ = false;
  bool truncated_ = false;  // more tokens followed than were read or kept
};

constexpr bool isOneOf(char c, std::string_view set) {
  return c != '\0' && set.find(c) != std::string_view::npos;
}

// Folds `tok` into the stream: only the newest kept token is ever rewritten
// or dropped.
void TokenStream::push(const Token& tok) {
  if (n_ > 0) {
    Token& prev = t_[n_ - 1];
    // Multi-word keywords.
    if (prev.kw == Kw::kUnion && (tok.kw == Kw::kAll || tok.kw == Kw::kDistinct)) return;
    if (prev.kw == Kw::kSelect && (tok.kw == Kw::kAll || tok.kw == Kw::kDistinct)) return;
    if ((prev.kw == Kw::kOrder || prev.kw == Kw::kGroup) && tok.kw == Kw::kBy) {
      prev.type = 'C';
      return;
    }
    if (prev.kw == Kw::kWaitfor && tok.kw == Kw::kDelay) return;
    if (prev.kw == Kw::kInto && (tok.kw == Kw::kOutfile || tok.kw == Kw::kDumpfile)) return;
    if (prev.kw == Kw::kIs && tok.kw == Kw::kNot) return;
    if (prev.kw == Kw::kSounds && tok.kw == Kw::kLike) {
      prev = tok;
      return;
    }
    if (prev.kw == Kw::kNot && (tok.flags & kFlagCmpWord)) {
      prev = tok;
      return;
    }
    if (prev.type == '&' && tok.kw == Kw::kNot) return;
    // Arithmetic between numbers: n o n -> n.
    if (tok.type == 'n' && prev.type == 'o' && n_ >= 2 && t_[n_ - 2].type == 'n') {
      --n_;
      return;
    }
  }
  // Unary sign or NOT before an operand.
  if (tok.type == 'o' && (tok.flags & kFlagUnary) &&
      (n_ == 0 || isOneOf(t_[n_ - 1].type, "o&=(,;CUEkT")))
    return;
  if (n_ == kMaxFolded) {
    truncated_ = true;
    done_ = true;
    return;
  }
  t_[n_++] = tok;
}

// ---- grammar ----------------------------------------------------------------

// Is the string literal at i quoted like the context (any quote as is)?
bool sameQuote(TokenStream& f, int i) {
  return f.quote() == '\0' || ((f.flags(i) & kFlagDoubleQuoted) != 0) == (f.quote() == '"');
}

// A time/file/error-based function called with a real argument at i:
// sleep(5), load_file('/etc/passwd'); not "Sleep(ing) well".
bool strongCall(TokenStream& f, int i) {
  return f.at(i) == 'f' && (f.flags(i) & kFlagStrongFunc) && f.at(i + 1) == '(' &&
         isOneOf(f.at(i + 2), "nsvfE(");
}

// A statement starting at i (the start of input, after '(' or after ';').
bool statementAt(TokenStream& f, int i) {
  const char c = f.at(i);
  if (c == 'E') {
    switch (f.kw(i)) {
      case Kw::kSelect: {
        const char a = f.at(i + 1);
        const char b = f.at(i + 2);
        if (a == 'o' && (f.flags(i + 1) & kFlagStar))
          return b == ',' || b == 'c' || f.kw(i + 2) == Kw::kFrom;
        if (a == 'f' || a == 'v') return true;
        if (a == '(' && b == 'E') return true;
        if (a == 'n' || a == 's') return isOneOf(b, ",kcU;");
        if (a == 'b') {
          if (b == ',') return true;
          if (b == 'k' && f.kw(i + 2) == Kw::kFrom && f.at(i + 3) == 'b')
            return f.at(i + 4) == '\0' || isOneOf(f.at(i + 4), "C;c)&U,");
        }
        return false;
      }
      case Kw::kDrop:
      case Kw::kCreate:
      case Kw::kAlter:
      case Kw::kTruncate: return f.kw(i + 1) == Kw::kObject;
      case Kw::kInsert: return f.at(i + 1) == 'C' && f.kw(i + 1) == Kw::kInto;
      case Kw::kDelete:
        return f.kw(i + 1) == Kw::kFrom && f.at(i + 2) == 'b' &&
               (f.at(i + 3) == '\0' || isOneOf(f.at(i + 3), "C;c"));
      case Kw::kUpdate: return f.at(i + 1) == 'b' && f.kw(i + 2) == Kw::kSet;
      default: return false;
    }
  }
  if (c == 'U') return isOneOf(f.at(i + 1), "E(");
  if (c == 'T') {
    const char a = f.at(i + 1);
    switch (f.kw(i)) {
      case Kw::kExec:
        if (a == '(') return isOneOf(f.at(i + 2), "svE");  // exec('sel'+'ect ...'), exec(@sql)
        return a == 's' || a == 'v' || (a == 'b' && (f.flags(i + 1) & kFlagProc));
      case Kw::kWaitfor: return a == 's' || a == 'n';
      case Kw::kDeclare: return a == 'v';
      case Kw::kShutdown: return a == '\0' || a == ';' || a == 'c';
      default: return false;
    }
  }
  if (c == 'f') return strongCall(f, i);
  return false;
}

// What may follow a logical operator at j to make `value AND ...` an attack.
bool logicTail(TokenStream& f, int j, bool afterString) {
  const char c = f.at(j);
  const char next = f.at(j + 1);
  switch (c) {
    case 'f':
    case 'E': return true;
    case '(':  // (1=1, (select, ((, not "2 and (optionally) 3"
      return isOneOf(next, "nsvfE(") || (next == 'b' && isOneOf(f.at(j + 2), "=o"));
    case 'v':  // @@version, @a:=1; not "5 or @bob"
      return (f.flags(j) & kFlagSysVar) || isOneOf(next, "=o");
    case 'n':
      if (afterString) return next == '\0' || isOneOf(next, "=oc);&UC~");
      return isOneOf(next, "=ocUC");
    case 's':
      // x' AND 'x (the application's own quote closes the last literal).
      // Only a literal in the context's own quote: {"a":"x' or"} is no attack.
      if ((f.flags(j) & kFlagOpen) && next == '\0' && sameQuote(f, j)) return true;
      return isOneOf(next, "=o") || (afterString && next == 'c');
    case 'b': return next == '=';
    default: return false;
  }
}

// Tail after a leading value ending at i-1. `afterString`: the value was a
// string literal (stronger evidence: the input closed a quote).
bool valueTail(TokenStream& f, int i, bool afterString) {
  while (f.at(i) == ')') ++i;
  const char c = f.at(i);
  const char a = f.at(i + 1);
  switch (c) {
    case '&': return logicTail(f, i + 1, afterString);
    case 'U': return isOneOf(a, "E(");
    case ';': return (afterString && a == 'c') || statementAt(f, i + 1);
    case 'c': return afterString;
    case 'C':
      if (isOneOf(a, "nvf(s")) return true;
      return a == 'b' && (f.at(i + 2) == '\0' || isOneOf(f.at(i + 2), "=c,C;"));
    case 'T': return statementAt(f, i);
    case 'f': return strongCall(f, i);  // 1 sleep(5), x' sleep(5) '
    case 'o':
      if (a == 'f' && (afterString || (f.flags(i + 1) & kFlagStrongFunc))) return true;
      return a == '(' && f.at(i + 2) == 'E';
    case '(': return afterString && a == 'E';  // x' (select ...) '
    case '=':
      if (a == '(' && f.at(i + 2) == 'E') return true;
      if (!afterString || !isOneOf(a, "sn")) return false;
      if (isOneOf(f.at(i + 2), "&c;")) return true;  // x'='x' --
      // x'='x: at the end, a literal must be left open in the context's quote.
      return f.at(i + 2) == '\0' &&
             (a == 'n' || ((f.flags(i + 1) & kFlagOpen) && sameQuote(f, i + 1)));
    default: return false;
  }
}

// A time/file/error-based call anywhere in the kept tokens, in an expression
// position: if(1=1,sleep(5),0), x' || pg_sleep(5) ||'.
bool strongCallInExpression(TokenStream& f) {
  for (int i = 0; i < kMaxFolded && f.at(i) != '\0' && f.at(i) != '~'; ++i)
    if (strongCall(f, i) && (i == 0 || isOneOf(f.at(i - 1), "(,&=o;E"))) return true;
  return false;
}

bool judgeShape(TokenStream& f, SqlContext ctx);

// Cheap pre-check for strongCallInExpression: is some '(' preceded, past
// blanks, by a letter (sleep (5)) or by '/' (sleep/**/(5))? The function names
// it looks for all end in a letter; "Mozilla/5.0 (Windows" has no such '('.
// One pass over the input.
bool mayHoldCall(std::string_view s) {
  for (size_t p = s.find('('); p != std::string_view::npos; p = s.find('(', p + 1)) {
    size_t q = p;
    while (q > 0 && isBlank(s[q - 1])) --q;
    if (q > 0 && (isAlpha(s[q - 1]) || s[q - 1] == '/')) return true;
  }
  return false;
}

// `mayCall`: some '(' follows a name (see mayHoldCall; without one there is
// no call to find,
// and the scan, which lexes all kept tokens, is skipped).
bool judge(TokenStream& f, SqlContext ctx, bool mayCall) {
  if (!f.valid() || f.at(0) == '\0') return false;
  return judgeShape(f, ctx) || (mayCall && strongCallInExpression(f));
}

bool judgeShape(TokenStream& f, SqlContext ctx) {
  if (ctx != SqlContext::kAsIs) return valueTail(f, 1, true);
  switch (f.at(0)) {
    case 's':
      // 'a' = 'b' as is compares two literals; '1'='1 (left open for the
      // application's quote to close) is the tautology.
      if (f.at(1) == '=')
        return f.at(2) == 's' && (f.flags(2) & kFlagOpen) && f.at(3) == '\0' &&
               ((f.flags(0) ^ f.flags(2)) & kFlagDoubleQuoted) == 0;
      return valueTail(f, 1, true);
    case 'v':
      if ((f.flags(0) & kFlagSysVar) && (f.at(1) == '\0' || f.at(1) == 'c'))
        return true;  // @@version
      return valueTail(f, 1, false);
    case 'n': return valueTail(f, 1, false);
    case ')': return valueTail(f, 0, false);
    case 'b': {
      // A word is weak evidence of a value: only the clearest tails count.
      // name=value as one string (a whole query string or cookie header).
      if (f.at(1) == '=' && (f.at(2) == 'n' || f.at(2) == 's'))
        return valueTail(f, 3, f.at(2) == 's');
      int i = 1;
      while (f.at(i) == ')') ++i;
      const char c = f.at(i);
      if (c == 'U') return isOneOf(f.at(i + 1), "E(");
      if (c == ';') return statementAt(f, i + 1);
      if (c == '&') {
        const char v = f.at(i + 1);
        if (v == 'f') return true;
        if (v == '(') return f.at(i + 2) == 'E';
        return (v == 'n' || v == 's') && f.at(i + 2) == '=';
      }
      return false;
    }
    case ';': return statementAt(f, 1);
    case '(': {
      int i = 1;
      while (f.at(i) == '(') ++i;
      return f.at(i) == 'E' && statementAt(f, i);
    }
    default: return statementAt(f, 0);
  }
}

void writeFingerprint(TokenStream& f, SqlContext ctx, std::string* out) {
  if (out == nullptr) return;
  out->clear();
  if (ctx == SqlContext::kSingleQuote) out->push_back('\'');
  if (ctx == SqlContext::kDoubleQuote) out->push_back('"');
  for (int i = 0; i < kFingerprintLen; ++i) {
    const char c = f.at(i);
    if (c == '\0' || c == '~') break;
    out->push_back(c);
  }
}

// ===========================================================================
// HTML
// ===========================================================================

// Reads the significant characters of an attribute value the way a URL parser
// sees them: character references decoded (&#106; &#x6A; &colon; &tab;
// &newline;, ';' optional), then blanks and control bytes dropped, ASCII
// lowercased. next() returns '\0' at the end of the value.
class UrlReader {
 public:
  explicit UrlReader(std::string_view v) : v_(v) {}

  char next() {
    while (pos_ < v_.size()) {
      char c = v_[pos_];
      if (c == '&') {
        c = reference();
      } else {
        ++pos_;
      }
      if (isBlank(c)) continue;
      return lowerAscii(c);
    }
    return '\0';
  }

 private:
  // Decodes a character reference at pos_ (which is '&'); returns the byte it
  // stands for, or '&' itself (consuming only it) when it is not one we know.
  char reference() {
    const size_t start = pos_;
    size_t p = pos_ + 1;
    if (p < v_.size() && v_[p] == '#') {
      ++p;
      const bool hex = p < v_.size() && lowerAscii(v_[p]) == 'x';
      if (hex) ++p;
      uint32_t code = 0;
      const size_t digitsStart = p;
      while (p < v_.size() && (hex ? isHex(v_[p]) : isDigit(v_[p]))) {
        const char d = lowerAscii(v_[p]);
        if (code < 0x110000)
          code =
              code * (hex ? 16 : 10) + static_cast<uint32_t>(isDigit(d) ? d - '0' : d - 'a' + 10);
        ++p;
      }
      if (p != digitsStart) {
        if (p < v_.size() && v_[p] == ';') ++p;
        pos_ = p;
        return code < 0x80 ? static_cast<char>(code) : '\x80';
      }
    } else {
      static constexpr struct {
        std::string_view name;
        char value;
      } kNamed[] = {
          {"colon", ':'}, {"tab", '\t'}, {"newline", '\n'}, {"lpar", '('}, {"sol", '/'},
      };
      for (const auto& e : kNamed) {
        if (startsWithAt(v_, p, e.name)) {
          p += e.name.size();
          if (p < v_.size() && v_[p] == ';') ++p;
          pos_ = p;
          return e.value;
        }
      }
    }
    pos_ = start + 1;
    return '&';
  }

  std::string_view v_;
  size_t pos_ = 0;
};

// Does the value, read as a URL, start with `lit` (lowercase, no blanks)?
bool urlStartsWith(UrlReader& r, std::string_view lit) {
  for (char want : lit)
    if (r.next() != want) return false;
  return true;
}

bool isDangerousUrl(std::string_view value) {
  // Cheap reject: every scheme we look for has a ':'; values without one (or
  // an entity that could spell it) are plain.
  if (value.find(':') == std::string_view::npos && value.find('&') == std::string_view::npos)
    return false;
  for (std::string_view scheme : {"javascript:", "vbscript:", "livescript:"}) {
    UrlReader r(value);
    if (urlStartsWith(r, scheme)) return true;
  }
  UrlReader r(value);
  if (!urlStartsWith(r, "data:")) return false;
  // data: with a type that a browser renders as a document or runs as script.
  char type[24];
  size_t n = 0;
  for (char c = r.next(); c != '\0' && c != ';' && c != ',' && n < sizeof(type); c = r.next())
    type[n++] = c;
  const std::string_view t(type, n);
  return t.starts_with("text/html") || t.starts_with("text/xml") || t.starts_with("image/svg") ||
         t.starts_with("application/") || t.starts_with("text/javascript") ||
         t.starts_with("text/vbscript");
}

// Case-insensitive substring search (needle lowercase). O(h * needle).
bool containsNoCase(std::string_view h, std::string_view needle) {
  if (needle.size() > h.size()) return false;
  for (size_t i = 0; i + needle.size() <= h.size(); ++i)
    if (startsWithAt(h, i, needle)) return true;
  return false;
}

bool isDangerousStyle(std::string_view value) {
  // "expr" rather than "expression": IE accepted expr/**/ession(...).
  return containsNoCase(value, "expr") || containsNoCase(value, "script:") ||
         containsNoCase(value, "behavior") || containsNoCase(value, "binding");
}

// Attribute names: "on" followed only by letters is an event handler, except
// for a few English words a sentence in an unquoted context may contain.
bool isEventHandlerName(std::string_view name) {
  if (name.size() < 4 || lowerAscii(name[0]) != 'o' || lowerAscii(name[1]) != 'n') return false;
  for (size_t i = 2; i < name.size(); ++i)
    if (!isAlpha(name[i])) return false;
  static constexpr std::string_view kEnglish[] = {"once",    "ones",   "only",   "onto",    "onion",
                                                  "onions",  "online", "onward", "onwards", "onset",
                                                  "ongoing", "onsite", "onboard"};
  for (std::string_view w : kEnglish)
    if (name.size() == w.size() && startsWithAt(name, 0, w)) return false;
  return true;
}

bool equalsNoCase(std::string_view a, std::string_view lowerB) {
  return a.size() == lowerB.size() && startsWithAt(a, 0, lowerB);
}

enum class TagKind : uint8_t { kUnknown, kOther, kForm };

// Tags that run or load code (or redirect, restyle, rebase the page) whatever
// their attributes.
bool isDangerousTagName(std::string_view name) {
  static constexpr std::string_view kTags[] = {
      "script",  "iframe", "frame", "frameset", "object",  "embed",    "applet",
      "svg",     "math",   "style", "link",     "meta",    "base",     "import",
      "isindex", "xss",    "layer", "ilayer",   "bgsound", "vmlframe",
  };
  for (std::string_view t : kTags)
    if (equalsNoCase(name, t)) return true;
  return false;
}

constexpr bool isAttrSeparator(char c) { return isBlank(c) || c == '/'; }

// Parses attributes from pos until '>' or the end of input. Stops early (and
// reports no match) at a '<' outside a quoted value so that the caller's text
// scan, which resumes at that '<', sees every byte at most a bounded number of
// times. `stop` gets the position where parsing ended.
bool attributesDangerous(std::string_view s, size_t pos, TagKind tag, size_t* stop) {
  const size_t n = s.size();
  for (;;) {
    while (pos < n && isAttrSeparator(s[pos])) ++pos;
    if (pos >= n || s[pos] == '>' || s[pos] == '<') break;
    const size_t nameBegin = pos;
    ++pos;  // the first name byte may be anything, '=' included
    while (pos < n && !isAttrSeparator(s[pos]) && s[pos] != '>' && s[pos] != '=' && s[pos] != '<')
      ++pos;
    const std::string_view name = s.substr(nameBegin, pos - nameBegin);
    size_t p = pos;
    while (p < n && isBlank(s[p])) ++p;
    if (p >= n || s[p] != '=') continue;  // attribute without a value
    ++p;
    while (p < n && isBlank(s[p])) ++p;
    if (isEventHandlerName(name)) {
      *stop = p;
      return true;
    }
    std::string_view value;
    if (p < n && (s[p] == '"' || s[p] == '\'' || s[p] == '`')) {  // ` quotes for old IE
      const char q = s[p];
      const size_t close = s.find(q, p + 1);
      const size_t end = close == std::string_view::npos ? n : close;
      value = s.substr(p + 1, end - p - 1);
      pos = close == std::string_view::npos ? n : close + 1;
    } else {
      const size_t begin = p;
      while (p < n && !isBlank(s[p]) && s[p] != '>' && s[p] != '<') ++p;
      value = s.substr(begin, p - begin);
      pos = p;
    }
    if (isDangerousUrl(value)) {
      *stop = pos;
      return true;
    }
    if (equalsNoCase(name, "style") && isDangerousStyle(value)) {
      *stop = pos;
      return true;
    }
    if (equalsNoCase(name, "formaction") ||
        (tag == TagKind::kForm && equalsNoCase(name, "action"))) {
      *stop = pos;
      return true;
    }
  }
  *stop = pos;
  return false;
}

// Scans text context: every '<'.
bool textDangerous(std::string_view s) {
  const size_t n = s.size();
  size_t pos = 0;
  while (pos < n) {
    const size_t lt = s.find('<', pos);
    if (lt == std::string_view::npos) return false;
    size_t p = lt + 1;
    pos = p;
    if (p >= n) return false;
    if (s[p] == '!') {
      if (startsWithAt(s, p, "!--") || startsWithAt(s, p, "![cdata[") ||
          startsWithAt(s, p, "!entity"))
        return true;
      continue;
    }
    if (startsWithAt(s, p, "?import")) return true;  // IE's <?import implementation=...>
    bool closing = false;
    if (s[p] == '/') {
      closing = true;
      ++p;
    }
    if (p >= n || !isAlpha(s[p])) continue;
    const size_t nameBegin = p;
    while (p < n && !isAttrSeparator(s[p]) && s[p] != '>' && s[p] != '<') ++p;
    std::string_view name = s.substr(nameBegin, p - nameBegin);
    if (const size_t colon = name.rfind(':'); colon != std::string_view::npos)
      name.remove_prefix(colon + 1);
    if (closing) {
      if (equalsNoCase(name, "script") || equalsNoCase(name, "style")) return true;
      pos = p;
      continue;
    }
    if (isDangerousTagName(name)) return true;
    const bool form = equalsNoCase(name, "form") || equalsNoCase(name, "isindex");
    size_t stop = p;
    if (attributesDangerous(s, p, form ? TagKind::kForm : TagKind::kOther, &stop)) return true;
    pos = std::max(stop, p);
  }
  return false;
}

// The input as the rest of an attribute value: find where the value ends in
// that context, then parse what follows as attributes of the same tag.
bool attributeContextDangerous(std::string_view s, char quote) {
  size_t end;
  if (quote == '\0') {
    end = 0;
    while (end < s.size() && !isBlank(s[end]) && s[end] != '>') ++end;
  } else {
    end = s.find(quote);
    if (end == std::string_view::npos) return false;
    ++end;
  }
  if (end >= s.size() || s[end] == '>') return false;  // text after '>' is textDangerous's
  size_t stop = end;
  return attributesDangerous(s, end, TagKind::kUnknown, &stop);
}

}  // namespace

bool detectSqli(std::string_view input, std::string* fingerprint) {
  const bool mayCall = mayHoldCall(input);
  for (SqlContext ctx : {SqlContext::kAsIs, SqlContext::kSingleQuote, SqlContext::kDoubleQuote}) {
    TokenStream f(input, ctx);
    if (judge(f, ctx, mayCall)) {
      writeFingerprint(f, ctx, fingerprint);
      return true;
    }
  }
  return false;
}

bool detectXss(std::string_view input) {
  if (isDangerousUrl(input)) return true;
  if (textDangerous(input)) return true;
  // Breaking out of an attribute value only matters with an attribute value
  // to add, which needs '='.
  if (input.find('=') == std::string_view::npos) return false;
  for (char quote : {'\0', '\'', '"'})
    if (attributeContextDangerous(input, quote)) return true;
  return false;
}

}  // namespace moat::waf
