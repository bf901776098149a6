// Request-body processors; see body.h for the contract. Behaviour follows
// libmodsecurity v3 (src/request_body_processor/multipart.cc, json.cc and
// Transaction::extractArguments); deviations are marked "Deviation:".
#include "moat/waf/body.h"
#include "ascii.h"

#include <algorithm>
#include <cstring>

namespace moat::waf {

namespace {

// ModSecurity's multipart line buffer (MULTIPART_BUF_SIZE); part header lines
// of this length or more are rejected as it rejects them.
constexpr size_t kMultipartBufSize = 4096;
// ModSecurity rejects a Content-Type header longer than this.
constexpr size_t kMaxContentTypeLength = 1024;

int hexValue(unsigned char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

bool isSpace(unsigned char c) {  // C isspace() in the "C" locale
  return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r';
}

using detail::iequals;
using detail::lowerAscii;

// urldecode_nonstrict: '+' to ' ', %HH decoded, anything else kept; a '%'
// not followed by two hex digits sets invalid (URLENCODED_ERROR).
void urlDecodeArg(std::string_view in, std::string& out, bool& invalid) {
  out.clear();
  out.reserve(in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    const char c = in[i];
    if (c == '+') {
      out.push_back(' ');
    } else if (c == '%') {
      const int hi = i + 2 < in.size() ? hexValue(static_cast<unsigned char>(in[i + 1])) : -1;
      const int lo = i + 2 < in.size() ? hexValue(static_cast<unsigned char>(in[i + 2])) : -1;
      if (hi >= 0 && lo >= 0) {
        out.push_back(static_cast<char>(hi * 16 + lo));
        i += 2;
      } else {
        invalid = true;
        out.push_back(c);
      }
    } else {
      out.push_back(c);
    }
  }
}

BodyStatus applyLimit(std::string_view& body, const BodyLimits& limits) {
  if (body.size() > limits.max_body_bytes) {
    body = body.substr(0, limits.max_body_bytes);
    return BodyStatus::kTruncated;
  }
  return BodyStatus::kComplete;
}

void setError(BodyResult& out, std::string_view msg) {
  if (out.reqbody_error) return;  // first error wins, as in ModSecurity
  out.reqbody_error = true;
  out.reqbody_error_msg.assign(msg);
}

void appendUtf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

// ---------------------------------------------------------------- multipart

// RFC 2045 token characters (Multipart::is_token_char).
bool isTokenChar(unsigned char c) {
  if (c <= 32 || c >= 127) return false;
  switch (c) {
    case '(':
    case ')':
    case '<':
    case '>':
    case '@':
    case ',':
    case ';':
    case ':':
    case '\\':
    case '"':
    case '/':
    case '[':
    case ']':
    case '?':
    case '=':
      return false;
    default:
      return true;
  }
}

// RFC 2046 boundary characters; space allowed but not last.
bool boundaryCharactersValid(std::string_view b) {
  for (size_t i = 0; i < b.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(b[i]);
    const bool ok = (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
                    (c == ' ' && i + 1 < b.size()) || c == '\'' || c == '(' || c == ')' ||
                    c == '+' || c == '_' || c == ',' || c == '-' || c == '.' || c == '/' ||
                    c == ':' || c == '=' || c == '?';
    if (!ok) return false;
  }
  return true;
}

// Multipart::count_boundary_params: occurrences of "boundary" (any case)
// with an '=' somewhere after them.
int countBoundaryParams(std::string_view s) {
  int count = 0;
  constexpr std::string_view kWord = "boundary";
  for (size_t i = 0; i + kWord.size() <= s.size(); ++i) {
    if (!iequals(s.substr(i, kWord.size()), kWord)) continue;
    i += kWord.size();
    if (s.find('=', i) != std::string_view::npos) ++count;
    --i;
  }
  return count;
}

// Multipart::init. Returns false (error already recorded) when the
// Content-Type is unusable.
bool extractBoundary(std::string_view ct, BodyResult& out, std::string_view& boundary) {
  MultipartFlags& f = out.multipart;
  auto fail = [&](std::string_view msg) {
    f.error = true;
    setError(out, msg);
    return false;
  };
  if (ct.empty()) return fail("Multipart: Content-Type header not available.");
  if (ct.size() > kMaxContentTypeLength)
    return fail("Multipart: Invalid boundary in C-T (length).");
  constexpr std::string_view kMime = "multipart/form-data";
  if (ct.size() < kMime.size() || !iequals(ct.substr(0, kMime.size()), kMime)) {
    return fail("Multipart: Invalid MIME type.");
  }
  if (countBoundaryParams(ct) > 1) return fail("Multipart: Multiple boundary parameters in C-T.");

  const size_t bpos = ct.find("boundary");  // case-sensitive, as ModSecurity
  if (bpos == std::string_view::npos) {
    if (countBoundaryParams(ct) > 0)
      return fail("Multipart: Invalid boundary in C-T (case sensitivity).");
    return fail("Multipart: Boundary not found in C-T.");
  }
  bool seenSemicolon = false;
  for (size_t i = kMime.size(); i < bpos; ++i) {
    const unsigned char c = static_cast<unsigned char>(ct[i]);
    if (isSpace(c)) continue;
    if (!seenSemicolon && c == ';') {
      seenSemicolon = true;
    } else {
      return fail("Multipart: Invalid boundary in C-T (malformed).");
    }
  }
  if (!seenSemicolon) f.missing_semicolon = true;

  const size_t eq = ct.find('=', bpos + 8);
  if (eq == std::string_view::npos) return fail("Multipart: Invalid boundary in C-T (malformed).");
  for (size_t i = bpos + 8; i < eq; ++i) {
    if (isSpace(static_cast<unsigned char>(ct[i]))) {
      f.boundary_whitespace = true;
    } else {
      return fail("Multipart: Invalid boundary in C-T (parameter name).");
    }
  }
  std::string_view b = ct.substr(eq + 1);
  if (!b.empty() && isSpace(static_cast<unsigned char>(b[0]))) f.boundary_whitespace = true;
  if (b.size() >= 2 && b.front() == '"' && b.back() == '"') {
    b = b.substr(1, b.size() - 2);
    f.boundary_quoted = true;
  } else if ((!b.empty() && b.front() == '"') || (b.size() >= 2 && b.back() == '"')) {
    return fail("Multipart: Invalid boundary in C-T (quote).");
  }
  // Deviation: ModSecurity silently accepts an empty boundary here and then
  // fails later in odd ways; we reject it up front.
  if (b.empty()) return fail("Multipart: Invalid boundary in C-T (empty).");
  if (countBoundaryParams(b) != 0) return fail("Multipart: Invalid boundary in C-T (content).");
  if (!boundaryCharactersValid(b)) return fail("Multipart: Invalid boundary in C-T (characters).");
  boundary = b;
  return true;
}

struct PartHeader {
  std::string name;
  std::string value;
};

struct Part {
  std::vector<PartHeader> headers;
  std::string name;
  std::string filename;
  bool is_file = false;
  bool headers_done = false;
  size_t data_start = 0;  // offset in body of the first data byte
};

const PartHeader* findHeader(const Part& p, std::string_view name) {
  for (const PartHeader& h : p.headers) {
    if (iequals(h.name, name)) return &h;
  }
  return nullptr;
}

// Multipart::parse_content_disposition. Returns 1 or a negative code that
// ModSecurity would report in "Invalid Content-Disposition header (rc)".
int parseContentDisposition(std::string_view v, Part& part, BodyResult& out) {
  constexpr std::string_view kFormData = "form-data";
  if (v.substr(0, kFormData.size()) != kFormData) return -1;
  size_t p = kFormData.size();
  const size_t n = v.size();
  auto ws = [&] {
    while (p < n && (v[p] == '\t' || v[p] == ' ')) ++p;
  };
  ws();
  if (p == n) return 1;
  if (v[p] != ';') return -2;
  ++p;
  while (p < n) {
    ws();
    if (p == n) return -3;
    size_t start = p;
    while (p < n && v[p] != '=' && v[p] != '\t' && v[p] != ' ') ++p;
    if (p == n) return -4;
    std::string_view pname = v.substr(start, p - start);
    ws();
    if (p == n) return -5;
    if (v[p] != '=') return -13;
    ++p;
    ws();
    if (p == n) return -6;
    std::string value;
    if (v[p] == '"' || v[p] == '\'') {
      const char quote = v[p];
      if (quote == '\'') out.multipart.invalid_quoting = true;
      ++p;
      if (p == n) return -7;
      bool closed = false;
      while (p < n) {
        if (v[p] == '\\') {
          if (p + 1 == n) return -8;
          // Only the quote and '\' can be escaped; other escapes are kept
          // verbatim (IE sends them).
          if (v[p + 1] == quote || v[p + 1] == '\\') ++p;
        } else if (v[p] == quote) {
          closed = true;
          break;
        }
        value.push_back(v[p++]);
      }
      // Deviation: ModSecurity reads past the end of an unterminated quoted
      // value; we report it as improper quoting.
      if (!closed) return -7;
      ++p;  // closing quote
    } else {
      start = p;
      while (p < n && isTokenChar(static_cast<unsigned char>(v[p]))) ++p;
      value.assign(v.substr(start, p - start));
    }

    if (pname == "name") {
      if (value.find('\'') != std::string::npos) out.multipart.invalid_quoting = true;
      out.multipart_names.push_back(value);
      if (!part.name.empty()) return -14;
      part.name = std::move(value);
    } else if (pname == "filename") {
      if (value.find('\'') != std::string::npos) out.multipart.invalid_quoting = true;
      out.multipart_filenames.push_back(value);
      if (!part.filename.empty()) return -15;
      part.filename = std::move(value);
    } else {
      return -11;
    }

    if (p < n) {
      ws();
      if (p == n) return 1;
      if (v[p] != ';') {
        if (v[p - 1] == '\'' || v[p - 1] == '"') out.multipart.invalid_quoting = true;
        return -12;
      }
      ++p;
    }
  }
  return 1;
}

class MultipartParser {
 public:
  MultipartParser(std::string_view body, std::string_view boundary, const BodyLimits& limits,
                  BodyResult& out)
      : body_(body), boundary_(boundary), limits_(limits), out_(out), f_(out.multipart) {}

  void run() {
    size_t pos = 0;
    while (pos < body_.size()) {
      const size_t nl = body_.find('\n', pos);
      if (nl == std::string_view::npos) break;  // unterminated tail: see finish()
      const std::string_view line = body_.substr(pos, nl + 1 - pos);
      if (!processLine(line, pos)) return;
      pos = nl + 1;
      if (complete_) {
        if (pos < body_.size()) f_.data_after = true;
        return;
      }
    }
    finish(pos);
  }

 private:
  static std::string_view chomp(std::string_view s) {
    while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.remove_suffix(1);
    return s;
  }

  bool fail(std::string_view msg) {
    f_.error = true;
    setError(out_, msg);
    return false;
  }

  // One line including its '\n'; offset is where it starts in body_.
  bool processLine(std::string_view line, size_t offset) {
    // ModSecurity tests boundary-ness on the C string, i.e. up to a NUL.
    std::string_view cline = line.substr(0, std::min(line.size(), line.find('\0')));
    if (cline.size() > 3 && cline[0] == '-' && cline[1] == '-') {
      if (cline.size() >= boundary_.size() + 2 && cline.substr(2, boundary_.size()) == boundary_) {
        std::string_view rest = cline.substr(2 + boundary_.size());
        bool isFinal = false;
        if (rest.size() >= 2 && rest[0] == '-' && rest[1] == '-') {
          isFinal = true;
          rest.remove_prefix(2);
        }
        if (rest == "\r\n" || rest == "\n") {
          if (rest.size() == 1) {
            f_.lf_line = true;
          } else {
            f_.crlf_line = true;
          }
          closePart(offset);
          if (!isFinal) openPart(offset + line.size());
          if (isFinal) complete_ = true;
          ++boundaryCount_;
          return true;
        }
        return fail("Multipart: Invalid boundary: " + std::string(line));
      }
      if (f_.boundary_quoted && cline.size() >= boundary_.size() + 3 && cline[2] == '"' &&
          cline.substr(3, boundary_.size()) == boundary_) {
        return fail("Multipart: Invalid boundary (quotes).");
      }
      size_t p = 2;
      while (p < cline.size() && isSpace(static_cast<unsigned char>(cline[p]))) ++p;
      if (p != 2 && cline.substr(p, boundary_.size()) == boundary_) {
        return fail("Multipart: Invalid boundary (whitespace).");
      }
      f_.unmatched_boundary = true;
    } else {
      // Deviation: ModSecurity scans only the first 4 KiB chunk of a line.
      for (size_t i = 0; i + 1 < line.size(); ++i) {
        if (line[i] == '-' && line[i + 1] == '-' &&
            line.substr(i + 2, boundary_.size()) == boundary_) {
          f_.unmatched_boundary = true;
          break;
        }
      }
    }

    if (!inPart_) {
      f_.data_before = true;
      return true;
    }
    if (!part_.headers_done) return processHeaderLine(line, offset);
    return true;  // part data: taken positionally in closePart()
  }

  bool processHeaderLine(std::string_view line, size_t offset) {
    if (line.size() >= kMultipartBufSize) {
      return fail("Multipart: Part header line over " + std::to_string(kMultipartBufSize) +
                  " bytes long");
    }
    if (line.find('\0') != std::string_view::npos) {
      return fail("Multipart: Nul byte in part headers.");
    }
    if (line.size() > 1 && line[line.size() - 2] == '\r') {
      f_.crlf_line = true;
    } else {
      f_.lf_line = true;
    }
    if (line == "\r\n" || line == "\n") return endOfHeaders(offset + line.size());

    // Deviation: ModSecurity v3 computes the errors below but, through a
    // false-vs-negative return value mix-up, does not act on them (the part
    // is then skipped as invalid). We treat them as the errors they are.
    if (isSpace(static_cast<unsigned char>(line[0]))) {
      f_.header_folding = true;
      size_t p = 0;
      while (p < line.size() && isSpace(static_cast<unsigned char>(line[p]))) {
        if (line[p] != '\t' && line[p] != ' ') f_.invalid_header_folding = true;
        ++p;
      }
      if (part_.headers.empty()) return fail("Multipart: Invalid part header (folding error).");
      std::string& v = part_.headers.back().value;
      v.push_back(' ');
      v.append(chomp(line.substr(p)));
      if (v.size() > kMultipartBufSize) return fail("Multipart: Part header too long.");
      return true;
    }
    const size_t colon = line.find(':');
    if (colon == std::string_view::npos) {
      return fail("Multipart: Invalid part header (colon missing): " + std::string(line));
    }
    if (colon == 0) return fail("Multipart: Invalid part header (header name missing).");
    std::string_view name = line.substr(0, colon);
    size_t p = colon + 1;
    while (p < line.size() && (line[p] == '\t' || line[p] == ' ')) ++p;
    if (findHeader(part_, name) != nullptr) {
      return fail("Multipart: Duplicate part header: " + std::string(name) + ".");
    }
    part_.headers.push_back({std::string(name), std::string(chomp(line.substr(p)))});
    return true;
  }

  bool endOfHeaders(size_t dataStart) {
    const PartHeader* cd = findHeader(part_, "Content-Disposition");
    if (cd == nullptr) return fail("Multipart: Part missing Content-Disposition header.");
    const int rc = parseContentDisposition(cd->value, part_, out_);
    if (rc < 0) {
      return fail("Multipart: Invalid Content-Disposition header (" + std::to_string(rc) +
                  "): " + cd->value);
    }
    if (part_.name.empty())
      return fail("Multipart: Content-Disposition header missing name field.");
    if (!part_.filename.empty()) {
      // A crude parser would not have seen the filename we did
      // (e.g. "filename =x").
      if (cd->value.find("filename=") == std::string::npos) {
        return fail("Multipart: Invalid Content-Disposition header (filename).");
      }
      part_.is_file = true;
      ++files_;
      if (limits_.max_files != 0 && files_ > limits_.max_files) f_.file_limit_exceeded = true;
    }
    for (const PartHeader& h : part_.headers) {
      out_.multipart_part_headers.emplace_back(part_.name, h.name + ": " + h.value);
    }
    part_.headers_done = true;
    part_.data_start = dataStart;
    return true;
  }

  void openPart(size_t) {
    part_ = Part{};
    inPart_ = true;
  }

  // boundaryStart: offset of the boundary line that ends the current part.
  void closePart(size_t boundaryStart) {
    if (!inPart_) return;
    inPart_ = false;
    if (!part_.headers_done || part_.name.empty()) {
      f_.invalid_part = true;
      return;
    }
    // The part's data is everything between its headers and the boundary
    // line, minus the line ending that belongs to the boundary (what
    // ModSecurity's two-byte "reserve" achieves).
    std::string_view data = body_.substr(part_.data_start, boundaryStart - part_.data_start);
    if (!data.empty() && data.back() == '\n') {
      data.remove_suffix(1);
      if (!data.empty() && data.back() == '\r') data.remove_suffix(1);
    }
    // Deviation: ModSecurity v3 drops the line breaks inside a multi-line
    // form field (its reserve is overwritten); we keep them, as v2 does.
    if (part_.is_file) {
      out_.files.emplace_back(part_.name, part_.filename);
      out_.files_names.push_back(part_.name);
      out_.files_sizes.emplace_back(part_.name, data.size());
      out_.files_combined_size += data.size();
    } else {
      out_.args_combined_size += part_.name.size() + data.size();
      out_.args.emplace_back(std::move(part_.name), std::string(data));
    }
  }

  // Multipart::multipart_complete: an unterminated final boundary is
  // accepted; anything else unfinished is "Final boundary missing".
  void finish(size_t tailStart) {
    if (body_.empty() || complete_) return;
    if (boundaryCount_ == 0) {
      setError(out_, "Multipart: No boundaries found in payload.");
      return;
    }
    std::string_view tail = body_.substr(tailStart);
    if (tail.size() == boundary_.size() + 4 && tail.substr(0, 2) == "--" &&
        tail.substr(2, boundary_.size()) == boundary_ &&
        tail.substr(2 + boundary_.size()) == "--") {
      closePart(tailStart);
      complete_ = true;
      return;
    }
    setError(out_, "Multipart: Final boundary missing.");
  }

  std::string_view body_;
  std::string_view boundary_;
  const BodyLimits& limits_;
  BodyResult& out_;
  MultipartFlags& f_;
  Part part_;
  bool inPart_ = false;
  bool complete_ = false;
  size_t boundaryCount_ = 0;
  uint32_t files_ = 0;
};

// --------------------------------------------------------------------- JSON

class JsonParser {
 public:
  JsonParser(std::string_view in, const BodyLimits& limits, BodyResult& out)
      : s_(in), limits_(limits), out_(out) {}

  void run() {
    if (s_.empty()) return;  // ModSecurity: no error for an empty body
    ws();
    if (pos_ == s_.size()) return error("premature EOF");
    if (!value()) return;
    ws();
    if (pos_ != s_.size()) return error("trailing garbage");
  }

 private:
  struct Container {
    bool is_array;
    size_t path_len;   // path_ length before this container's segment
    uint64_t counter;  // array element index
  };

  void error(std::string_view what) {
    if (out_.reqbody_error) return;
    setError(out_, "JSON parsing error: offset " + std::to_string(pos_) + ": " + std::string(what));
  }

  void ws() {
    while (pos_ < s_.size() &&
           (s_[pos_] == ' ' || s_[pos_] == '\t' || s_[pos_] == '\n' || s_[pos_] == '\r')) {
      ++pos_;
    }
  }

  // json.h getCurrentKey(): the name a new value or container gets.
  std::string_view currentKey() {
    if (stack_.empty()) return "json";
    if (!haveKey_ || key_.empty()) {
      haveKey_ = false;
      return stack_.back().is_array ? std::string_view() : std::string_view("empty-key");
    }
    haveKey_ = false;
    return key_;
  }

  // path_ holds the rendering of every open container ("json." /
  // "json.arr.array_3" ...) up to the innermost one, whose array counter is
  // appended at emission time.
  void emit(std::string_view value) {
    std::string name;
    if (stack_.empty()) {
      name = "json";
    } else {
      name = path_;
      Container& c = stack_.back();
      if (c.is_array) {
        name += ".array_";
        name += std::to_string(c.counter);
        ++c.counter;
      } else {
        name += '.';
        name += currentKey();
      }
    }
    out_.args_combined_size += name.size() + value.size();
    out_.args.emplace_back(std::move(name), std::string(value));
  }

  bool open(bool isArray) {
    if (stack_.size() >= limits_.max_depth) {
      error("nesting deeper than " + std::to_string(limits_.max_depth));
      return false;
    }
    const size_t before = path_.size();
    if (!stack_.empty()) {
      Container& parent = stack_.back();
      if (parent.is_array) {
        path_ += ".array_";
        path_ += std::to_string(parent.counter);
      } else {
        path_ += '.';
      }
    }
    path_ += currentKey();
    stack_.push_back({isArray, before, 0});
    return true;
  }

  void close() {
    path_.resize(stack_.back().path_len);
    stack_.pop_back();
    if (!stack_.empty() && stack_.back().is_array) ++stack_.back().counter;
  }

  bool literal(std::string_view word) {
    if (s_.substr(pos_, word.size()) != word) {
      error("invalid literal");
      return false;
    }
    pos_ += word.size();
    return true;
  }

  bool number() {
    const size_t start = pos_;
    if (pos_ < s_.size() && s_[pos_] == '-') ++pos_;
    auto digits = [&] {
      const size_t d = pos_;
      while (pos_ < s_.size() && s_[pos_] >= '0' && s_[pos_] <= '9') ++pos_;
      return pos_ - d;
    };
    if (pos_ < s_.size() && s_[pos_] == '0') {
      ++pos_;
    } else if (digits() == 0) {
      error("malformed number");
      return false;
    }
    if (pos_ < s_.size() && s_[pos_] == '.') {
      ++pos_;
      if (digits() == 0) {
        error("malformed number, a digit is required after the decimal point");
        return false;
      }
    }
    if (pos_ < s_.size() && (s_[pos_] == 'e' || s_[pos_] == 'E')) {
      ++pos_;
      if (pos_ < s_.size() && (s_[pos_] == '+' || s_[pos_] == '-')) ++pos_;
      if (digits() == 0) {
        error("malformed number, a digit is required after the exponent");
        return false;
      }
    }
    emit(s_.substr(start, pos_ - start));
    return true;
  }

  bool hex4(uint32_t& v) {
    if (pos_ + 4 > s_.size()) return false;
    v = 0;
    for (int i = 0; i < 4; ++i) {
      const int h = hexValue(static_cast<unsigned char>(s_[pos_ + i]));
      if (h < 0) return false;
      v = v * 16 + static_cast<uint32_t>(h);
    }
    pos_ += 4;
    return true;
  }

  // Parses a string at s_[pos_] == '"' into str.
  bool string(std::string& str) {
    str.clear();
    ++pos_;
    while (pos_ < s_.size()) {
      const unsigned char c = static_cast<unsigned char>(s_[pos_]);
      if (c == '"') {
        ++pos_;
        return true;
      }
      if (c < 0x20) {
        error("invalid char in json text");
        return false;
      }
      if (c != '\\') {
        str.push_back(static_cast<char>(c));
        ++pos_;
        continue;
      }
      if (++pos_ == s_.size()) break;
      const char e = s_[pos_++];
      switch (e) {
        case '"':
          str.push_back('"');
          break;
        case '\\':
          str.push_back('\\');
          break;
        case '/':
          str.push_back('/');
          break;
        case 'b':
          str.push_back('\b');
          break;
        case 'f':
          str.push_back('\f');
          break;
        case 'n':
          str.push_back('\n');
          break;
        case 'r':
          str.push_back('\r');
          break;
        case 't':
          str.push_back('\t');
          break;
        case 'u': {
          uint32_t cp = 0;
          if (!hex4(cp)) {
            error("invalid (non-hex) character occurs after '\\u' inside string");
            return false;
          }
          if (cp >= 0xD800 && cp <= 0xDBFF && s_.substr(pos_, 2) == "\\u") {
            const size_t save = pos_;
            pos_ += 2;
            uint32_t lo = 0;
            if (hex4(lo) && lo >= 0xDC00 && lo <= 0xDFFF) {
              cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            } else {
              pos_ = save;
            }
          }
          appendUtf8(str, cp);
          break;
        }
        default:
          error("inside a JSON string, a backslash must be followed by a valid escape");
          return false;
      }
    }
    error("premature EOF inside string");
    return false;
  }

  // Iterative over containers so hostile nesting cannot blow the C stack.
  bool value() {
    std::string scratch;
    enum class Want { kValue, kAfterValue };
    Want want = Want::kValue;
    for (;;) {
      ws();
      if (pos_ == s_.size()) {
        error("premature EOF");
        return false;
      }
      const char c = s_[pos_];
      if (want == Want::kValue) {
        if (c == '{') {
          ++pos_;
          if (!open(false)) return false;
          ws();
          if (pos_ < s_.size() && s_[pos_] == '}') {
            ++pos_;
            close();
            want = Want::kAfterValue;
          } else if (!memberKey()) {
            return false;
          }
          if (want == Want::kAfterValue && stack_.empty()) return true;
          continue;
        }
        if (c == '[') {
          ++pos_;
          if (!open(true)) return false;
          ws();
          if (pos_ < s_.size() && s_[pos_] == ']') {
            ++pos_;
            close();
            want = Want::kAfterValue;
            if (stack_.empty()) return true;
          }
          continue;
        }
        bool ok = false;
        if (c == '"') {
          ok = string(scratch);
          if (ok) emit(scratch);
        } else if (c == 't') {
          ok = literal("true");
          if (ok) emit("true");
        } else if (c == 'f') {
          ok = literal("false");
          if (ok) emit("false");
        } else if (c == 'n') {
          ok = literal("null");
          if (ok) emit("");
        } else if (c == '-' || (c >= '0' && c <= '9')) {
          ok = number();
        } else {
          error("invalid char in json text");
        }
        if (!ok) return false;
        if (stack_.empty()) return true;
        want = Want::kAfterValue;
        continue;
      }
      // After a value inside a container: ',' or the closing bracket.
      Container& top = stack_.back();
      if (c == ',') {
        ++pos_;
        if (!top.is_array && !memberKey()) return false;
        want = Want::kValue;
        continue;
      }
      if (c == (top.is_array ? ']' : '}')) {
        ++pos_;
        close();
        if (stack_.empty()) return true;
        continue;
      }
      error(top.is_array ? "after array element, I expect ',' or ']'"
                         : "after key and value, inside map, I expect ',' or '}'");
      return false;
    }
  }

  // "key" ':' inside an object; leaves the key for the next value.
  bool memberKey() {
    ws();
    if (pos_ == s_.size() || s_[pos_] != '"') {
      error("invalid object key (must be a string)");
      return false;
    }
    if (!string(key_)) return false;
    haveKey_ = true;
    ws();
    if (pos_ == s_.size() || s_[pos_] != ':') {
      error("object key and value must be separated by a colon (':')");
      return false;
    }
    ++pos_;
    return true;
  }

  std::string_view s_;
  size_t pos_ = 0;
  const BodyLimits& limits_;
  BodyResult& out_;
  std::vector<Container> stack_;
  std::string path_;
  std::string key_;
  bool haveKey_ = false;
};

// ---------------------------------------------------------------------- XML

bool isNameStart(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':' || c >= 0x80;
}
bool isNameChar(unsigned char c) {
  return isNameStart(c) || (c >= '0' && c <= '9') || c == '-' || c == '.';
}

class XmlParser {
 public:
  XmlParser(std::string_view in, const BodyLimits& limits, BodyResult& out)
      : s_(in), limits_(limits), out_(out) {}

  bool run() {
    bool seenRoot = false;
    while (pos_ < s_.size()) {
      if (s_[pos_] != '<') {
        // Text.
        const size_t lt = std::min(s_.find('<', pos_), s_.size());
        if (stack_.empty()) {
          for (size_t i = pos_; i < lt; ++i) {
            if (!isSpace(static_cast<unsigned char>(s_[i])))
              return fail("content outside the root element");
          }
          pos_ = lt;
        } else if (!text(lt)) {
          return false;
        }
        continue;
      }
      std::string_view rest = s_.substr(pos_);
      if (rest.starts_with("<!--")) {
        const size_t end = s_.find("-->", pos_ + 4);
        if (end == std::string_view::npos) return fail("unterminated comment");
        pos_ = end + 3;
      } else if (rest.starts_with("<?")) {
        const size_t end = s_.find("?>", pos_ + 2);
        if (end == std::string_view::npos) return fail("unterminated processing instruction");
        pos_ = end + 2;
      } else if (rest.starts_with("<![CDATA[")) {
        if (stack_.empty()) return fail("CDATA outside the root element");
        const size_t end = s_.find("]]>", pos_ + 9);
        if (end == std::string_view::npos) return fail("unterminated CDATA section");
        out_.xml_text.append(s_.substr(pos_ + 9, end - pos_ - 9));
        pos_ = end + 3;
      } else if (rest.starts_with("<!DOCTYPE")) {
        if (seenRoot || !stack_.empty()) return fail("DOCTYPE after the root element");
        if (!skipDoctype()) return false;
      } else if (rest.starts_with("</")) {
        if (!endTag()) return false;
      } else {
        if (stack_.empty() && seenRoot) return fail("extra content at the end of the document");
        seenRoot = true;
        if (!startTag()) return false;
      }
    }
    if (!stack_.empty()) return fail("premature end of data, tag not closed");
    if (!seenRoot) return fail("document is empty");
    return true;
  }

 private:
  bool fail(std::string_view what) {
    setError(out_, "XML parsing error: offset " + std::to_string(pos_) + ": " + std::string(what));
    return false;
  }

  // Decodes text up to end into xml_text, expanding references.
  bool text(size_t end) {
    while (pos_ < end) {
      const char c = s_[pos_];
      if (c == '&') {
        if (!reference(out_.xml_text)) return false;
      } else {
        out_.xml_text.push_back(c);
        ++pos_;
      }
    }
    return true;
  }

  // Only the five predefined entities and character references: nothing
  // declared in a DTD is ever expanded, so no external entity can load.
  bool reference(std::string& sink) {
    const size_t semi = s_.find(';', pos_);
    if (semi == std::string_view::npos || semi - pos_ > 16)
      return fail("malformed entity reference");
    const std::string_view ent = s_.substr(pos_ + 1, semi - pos_ - 1);
    if (ent == "lt")
      sink.push_back('<');
    else if (ent == "gt")
      sink.push_back('>');
    else if (ent == "amp")
      sink.push_back('&');
    else if (ent == "apos")
      sink.push_back('\'');
    else if (ent == "quot")
      sink.push_back('"');
    else if (ent.size() >= 2 && ent[0] == '#') {
      uint32_t cp = 0;
      const bool hex = ent[1] == 'x';
      const std::string_view digits = ent.substr(hex ? 2 : 1);
      if (digits.empty()) return fail("malformed character reference");
      for (char d : digits) {
        const int v =
            hex ? hexValue(static_cast<unsigned char>(d)) : ((d >= '0' && d <= '9') ? d - '0' : -1);
        if (v < 0) return fail("malformed character reference");
        cp = cp * (hex ? 16 : 10) + static_cast<uint32_t>(v);
        if (cp > 0x10FFFF) return fail("character reference out of range");
      }
      if (cp == 0 || (cp >= 0xD800 && cp <= 0xDFFF)) return fail("invalid character reference");
      appendUtf8(sink, cp);
    } else {
      return fail("entity '" + std::string(ent) + "' not defined");
    }
    pos_ = semi + 1;
    return true;
  }

  std::string_view name() {
    const size_t start = pos_;
    if (pos_ >= s_.size() || !isNameStart(static_cast<unsigned char>(s_[pos_]))) return {};
    while (pos_ < s_.size() && isNameChar(static_cast<unsigned char>(s_[pos_]))) ++pos_;
    return s_.substr(start, pos_ - start);
  }

  void ws() {
    while (pos_ < s_.size() && isSpace(static_cast<unsigned char>(s_[pos_]))) ++pos_;
  }

  bool startTag() {
    ++pos_;  // '<'
    const std::string_view tag = name();
    if (tag.empty()) return fail("invalid element name");
    if (stack_.size() >= limits_.max_depth) {
      return fail("nesting deeper than " + std::to_string(limits_.max_depth));
    }
    attrNames_.clear();
    for (;;) {
      const size_t before = pos_;
      ws();
      if (pos_ >= s_.size()) return fail("unterminated start tag");
      if (s_[pos_] == '>') {
        ++pos_;
        stack_.push_back(tag);
        return true;
      }
      if (s_.substr(pos_, 2) == "/>") {
        pos_ += 2;
        return true;
      }
      if (pos_ == before) return fail("attributes must be separated by whitespace");
      const std::string_view attr = name();
      if (attr.empty()) return fail("invalid attribute name");
      if (std::find(attrNames_.begin(), attrNames_.end(), attr) != attrNames_.end()) {
        return fail("attribute redefined");
      }
      attrNames_.push_back(attr);
      ws();
      if (pos_ >= s_.size() || s_[pos_] != '=') return fail("attribute without value");
      ++pos_;
      ws();
      if (pos_ >= s_.size() || (s_[pos_] != '"' && s_[pos_] != '\'')) {
        return fail("attribute value must be quoted");
      }
      const char q = s_[pos_++];
      // Attribute values are not in XML:/* (text only) but are what
      // XML://@* selects: collected decoded in xml_attributes.
      std::string& value = out_.xml_attributes.emplace_back();
      while (pos_ < s_.size() && s_[pos_] != q) {
        if (s_[pos_] == '<') return fail("'<' in attribute value");
        if (s_[pos_] == '&') {
          if (!reference(value)) return false;
        } else {
          value.push_back(s_[pos_]);
          ++pos_;
        }
      }
      if (pos_ >= s_.size()) return fail("unterminated attribute value");
      ++pos_;
    }
  }

  bool endTag() {
    pos_ += 2;
    const std::string_view tag = name();
    ws();
    if (pos_ >= s_.size() || s_[pos_] != '>') return fail("malformed end tag");
    ++pos_;
    if (stack_.empty() || stack_.back() != tag) return fail("opening and ending tag mismatch");
    stack_.pop_back();
    return true;
  }

  // Skips <!DOCTYPE ...> including an internal subset, without interpreting
  // any declaration in it.
  bool skipDoctype() {
    int bracket = 0;
    char quote = 0;
    for (size_t i = pos_ + 9; i < s_.size(); ++i) {
      const char c = s_[i];
      if (quote != 0) {
        if (c == quote) quote = 0;
      } else if (c == '"' || c == '\'') {
        quote = c;
      } else if (c == '[') {
        ++bracket;
      } else if (c == ']') {
        --bracket;
      } else if (c == '>' && bracket <= 0) {
        pos_ = i + 1;
        return true;
      }
    }
    return fail("unterminated DOCTYPE");
  }

  std::string_view s_;
  size_t pos_ = 0;
  const BodyLimits& limits_;
  BodyResult& out_;
  std::vector<std::string_view> stack_;
  std::vector<std::string_view> attrNames_;
  std::string scratch_;
};

}  // namespace

void BodyResult::reset() {
  args.clear();
  args_combined_size = 0;
  urlencoded_error = false;
  reqbody_error = false;
  reqbody_error_msg.clear();
  multipart = MultipartFlags{};
  files.clear();
  files_names.clear();
  files_sizes.clear();
  files_combined_size = 0;
  multipart_part_headers.clear();
  multipart_names.clear();
  multipart_filenames.clear();
  xml_text.clear();
  xml_attributes.clear();
}

BodyStatus parseUrlEncoded(std::string_view body, const BodyLimits& limits, BodyResult& out) {
  const BodyStatus status = applyLimit(body, limits);
  size_t pos = 0;
  // Like ModSecurity's getline-based split: an empty segment between two
  // '&' is an argument ("", ""), a single trailing '&' adds nothing.
  while (pos < body.size()) {
    size_t amp = body.find('&', pos);
    if (amp == std::string_view::npos) amp = body.size();
    const std::string_view seg = body.substr(pos, amp - pos);
    pos = amp + 1;
    const size_t eq = seg.find('=');
    std::string name;
    std::string value;
    if (eq == std::string_view::npos) {
      urlDecodeArg(seg, name, out.urlencoded_error);
    } else {
      urlDecodeArg(seg.substr(0, eq), name, out.urlencoded_error);
      urlDecodeArg(seg.substr(eq + 1), value, out.urlencoded_error);
    }
    out.args_combined_size += name.size() + value.size();
    out.args.emplace_back(std::move(name), std::move(value));
  }
  return status;
}

BodyStatus parseMultipart(std::string_view content_type, std::string_view body,
                          const BodyLimits& limits, BodyResult& out) {
  const BodyStatus status = applyLimit(body, limits);
  std::string_view boundary;
  if (!extractBoundary(content_type, out, boundary)) return status;
  MultipartParser parser(body, boundary, limits, out);
  parser.run();
  return status;
}

BodyStatus parseJson(std::string_view body, const BodyLimits& limits, BodyResult& out) {
  const BodyStatus status = applyLimit(body, limits);
  JsonParser parser(body, limits, out);
  parser.run();
  return status;
}

BodyStatus parseXml(std::string_view body, const BodyLimits& limits, BodyResult& out) {
  const BodyStatus status = applyLimit(body, limits);
  const size_t textStart = out.xml_text.size();
  const size_t attrStart = out.xml_attributes.size();
  XmlParser parser(body, limits, out);
  if (!parser.run()) {
    out.xml_text.resize(textStart);
    out.xml_attributes.resize(attrStart);
  }
  return status;
}

}  // namespace moat::waf
