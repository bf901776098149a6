// Request-body processors with libmodsecurity v3's observable behaviour, as
// far as the OWASP CRS 3.3.4 rules can see it: URL-encoded forms and query
// strings, multipart/form-data with ModSecurity's strictness flags, JSON
// flattened to ARGS names ("json.a.b", "json.arr.array_0"), and a minimal XML
// well-formedness check that exposes the concatenated text (what XML:/* gives).
// Where we knowingly differ from ModSecurity the function's comment says so.
//
// Threading: every function is pure and reentrant; call it from the worker
// that owns the request. Nothing blocks, nothing throws on bad input (the
// standard library may still throw std::bad_alloc), no syscalls. Results go
// into a caller-owned BodyResult whose vectors keep their capacity across
// reset(); the strings inside them are allocated per argument, so a body costs
// O(number of arguments) small allocations. Every parser is linear in the
// processed bytes (JSON and XML also bounded in nesting by BodyLimits).
//
// Size limit: each function processes at most limits.max_body_bytes bytes of
// the body and reports kTruncated when it cut the input; the engine decides
// whether that means reject (SecRequestBodyLimitAction Reject) or inspect the
// first N bytes (ProcessPartial). A cut body is parsed as if it ended there,
// so multipart/JSON/XML will usually also set reqbody_error.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace moat::waf {

using BodyArg = std::pair<std::string, std::string>;  // (name, value)

enum class BodyStatus : uint8_t {
  kComplete,   // the whole body was processed
  kTruncated,  // only the first max_body_bytes bytes were processed
};

struct BodyLimits {
  // Bytes processed at most (SecRequestBodyLimit / SecRequestBodyNoFilesLimit
  // is the engine's business; this is just "look at no more than N").
  size_t max_body_bytes = 13107200;  // CRS/modsecurity.conf default, 12.5 MiB
  // JSON/XML nesting; deeper input sets reqbody_error. 512 keeps a hostile
  // "[[[[..." body cheap and is far beyond what real APIs send.
  uint32_t max_depth = 512;
  // File parts after which MULTIPART_FILE_LIMIT_EXCEEDED is set
  // (SecUploadFileLimit; ModSecurity's default is 100). 0 = no limit.
  uint32_t max_files = 100;
};

// ModSecurity's MULTIPART_* variables, each 0/1 (v3.0.9 semantics: unmatched
// is never 2). strictError() is MULTIPART_STRICT_ERROR.
struct MultipartFlags {
  bool error = false;  // internal "parse failed" flag, feeds strict error
  bool unmatched_boundary = false;
  bool boundary_quoted = false;
  bool boundary_whitespace = false;
  bool data_before = false;
  bool data_after = false;
  bool header_folding = false;
  bool lf_line = false;
  bool crlf_line = false;  // only used for crlfLfLines()
  bool missing_semicolon = false;
  bool invalid_quoting = false;
  bool invalid_part = false;
  bool invalid_header_folding = false;
  bool file_limit_exceeded = false;

  // MULTIPART_STRICT_ERROR exactly as ModSecurity ORs it (CRLF-only and
  // unmatched_boundary are not part of it).
  bool strictError() const {
    return error || boundary_quoted || boundary_whitespace || data_before || data_after ||
           header_folding || lf_line || missing_semicolon || invalid_quoting || invalid_part ||
           invalid_header_folding || file_limit_exceeded;
  }
  // MULTIPART_CRLF_LF_LINES: both line-ending styles seen.
  bool crlfLfLines() const { return crlf_line && lf_line; }
};

// Everything the processors produce. One per worker, reset() per request.
struct BodyResult {
  std::vector<BodyArg> args;      // ARGS_POST (or ARGS_GET) in body order
  size_t args_combined_size = 0;  // ARGS_COMBINED_SIZE contribution: sum of
                                  // decoded name + value lengths

  bool urlencoded_error = false;  // URLENCODED_ERROR: a '%' without two hex digits
  bool reqbody_error = false;     // REQBODY_ERROR
  std::string reqbody_error_msg;  // REQBODY_ERROR_MSG; first error only. Multipart
                                  // messages are ModSecurity's word for word.

  // multipart/form-data only. Deviations: v3 keys FILES by filename (we key
  // by field name, as v2 and the CRS docs do); MULTIPART_NAME/FILENAME keep
  // only the last value in v3, we keep all (the engine can take back()).
  MultipartFlags multipart;
  std::vector<BodyArg> files;                               // FILES: field name -> filename
  std::vector<std::string> files_names;                     // FILES_NAMES: field names
  std::vector<std::pair<std::string, size_t>> files_sizes;  // FILES_SIZES: name -> bytes
  size_t files_combined_size = 0;                           // FILES_COMBINED_SIZE
  std::vector<BodyArg> multipart_part_headers;              // MULTIPART_PART_HEADERS:
                                                            // part name -> "Name: value"
  std::vector<std::string> multipart_names;                 // every C-D name= seen (MULTIPART_NAME)
  std::vector<std::string> multipart_filenames;  // every C-D filename= (MULTIPART_FILENAME)

  // XML only: all text and CDATA of the document in order (XML:/*).
  std::string xml_text;
  // XML only: every attribute value, decoded, in document order (XML://@*).
  std::vector<std::string> xml_attributes;

  // Clears every field; vector capacity is kept.
  void reset();
};

// application/x-www-form-urlencoded body or a query string (without '?').
// Splits on '&', then on the first '='; names and values are URL-decoded the
// way ModSecurity decodes ARGS ('+' -> ' ', %HH, invalid %-escapes kept as
// is, setting urlencoded_error). As in ModSecurity v3, an empty segment
// ("a=1&&b=2") gives the argument ("", ""), a single trailing '&' gives
// nothing; "=v" gives name ""; "a" gives value "". Deviation: v3's split
// appends the '&' to the last segment when the input ends in one ("a=1&" ->
// value "1&"); we give "1". Appends to out.args and out.args_combined_size (does not reset),
// so the engine can feed ARGS_GET and ARGS_POST into separate results or one.
BodyStatus parseUrlEncoded(std::string_view body, const BodyLimits& limits, BodyResult& out);

// multipart/form-data. content_type is the whole Content-Type header value;
// the boundary is taken from it with ModSecurity's checks. Sets the multipart
// flags, ARGS_POST for form fields, FILES* for parts with a non-empty
// filename (file contents are counted, not stored). Any hard parse error sets
// reqbody_error with ModSecurity's message and multipart.error.
BodyStatus parseMultipart(std::string_view content_type, std::string_view body,
                          const BodyLimits& limits, BodyResult& out);

// application/json. Flattens scalars into args with ModSecurity v3 names:
// object members "json.a.b", array elements "json.arr.array_0", nested arrays
// "json.arr.array_0.array_1", empty object key "empty-key", a top-level
// scalar "json". Values: strings unescaped to UTF-8, numbers as written,
// true/false, null as "". An empty body is not an error (as in ModSecurity).
// Messages start "JSON parsing error: " (the text after it is ours, not
// yajl's). Invalid JSON or nesting over limits.max_depth sets
// reqbody_error with a message; arguments found before the error are kept.
BodyStatus parseJson(std::string_view body, const BodyLimits& limits, BodyResult& out);

// text/xml, application/xml. Well-formedness only: one root element, tags
// balanced, attributes quoted, only the five predefined entities and
// character references (a DOCTYPE is skipped, never interpreted; any other
// entity is an error, so nothing external is ever loaded). Fills xml_text
// with all text/CDATA content concatenated; malformed input sets
// reqbody_error ("XML parsing error: ..." ; the detail is ours, not
// libxml2's) and removes what this call appended to xml_text.
BodyStatus parseXml(std::string_view body, const BodyLimits& limits, BodyResult& out);

}  // namespace moat::waf
