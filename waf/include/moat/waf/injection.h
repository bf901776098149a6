// Moat's own tokenizing detectors behind ModSecurity's @detectSQLi and
// @detectXSS operators. They follow the idea of libinjection (tokenize the
// value the way the interpreter would, fold the token stream, judge its shape)
// but the token classes, folding rules, grammar and keyword lists are our own;
// the fingerprint is in Moat's notation, not libinjection's.
//
// Both functions are pure: any thread, no locks, no exceptions, no syscalls and
// no allocation (detectSqli assigns to `fingerprint` only when it returns true
// and the pointer is non-null). Cost is O(n) in the input length with bounded
// work per byte: the SQL tokenizer looks at the first few dozen tokens of each
// of its three contexts, the HTML scanner visits each byte a small constant
// number of times. Any byte sequence is valid input; nothing fails.
//
// The inputs are values after the rule's transformations (for CRS 942100 and
// 941100: t:utf8toUnicode,t:urlDecodeUni,t:removeNulls), one request field at
// a time (an argument value or name, a cookie, a header).
#pragma once

#include <string>
#include <string_view>

namespace moat::waf {

// True when `input` reads as an SQL injection: tokenized as SQL as it is, as if
// it followed an opening single quote, and as if it followed an opening double
// quote, one of those token streams has the shape of an attack (a string or
// number closed off and followed by a logical operator and a comparison,
// UNION SELECT, a stacked statement, comment truncation after a closed string,
// a time/file/error-based function call...). When it returns true and
// `fingerprint` is non-null, *fingerprint gets the context quote (' or ", none
// for "as is") followed by up to five folded token classes, e.g. "'s&n=n"
// (classes are listed in injection.cpp). `fingerprint` is untouched otherwise.
bool detectSqli(std::string_view input, std::string* fingerprint = nullptr);

// True when `input` would run script if reflected into an HTML page: in text
// (a tag that runs or loads code, an on* event handler attribute, a
// javascript:/vbscript:/data:text/html URL, <!-- or CDATA tricks, </script),
// or in an attribute value that is unquoted, single- or double-quoted (the
// input then breaks out and adds an event handler), or as a URL on its own.
bool detectXss(std::string_view input);

}  // namespace moat::waf
