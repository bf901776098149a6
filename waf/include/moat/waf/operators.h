// ModSecurity v3 operators that are not regex or phrase matching: string
// comparisons (@contains @containsWord @beginsWith @endsWith @streq @within),
// integer comparisons (@eq @ge @gt @le @lt), address sets (@ipMatch
// @ipMatchFromFile), input validators (@validateByteRange
// @validateUrlEncoding @validateUtf8Encoding) and the constants
// (@unconditionalMatch @noMatch), with libmodsecurity v3's results, quirks
// included (each is named where the function is defined in operators.cpp).
//
// A CompiledOperator is compiled once by the control plane (arguments parsed: byte
// ranges into a 256-bit map, address lists into a CidrSet), then immutable and
// shared read-only by every worker through the config snapshot. match() and
// matchWithArgument() are pure: any thread, no locks, no exceptions, no
// syscalls, no allocation except `capture` growing (keep one per worker and
// its capacity is reused). Cost is O(value) for the validators and integer
// operators, O(value x argument) at worst for the substring searches, and one
// CidrSet lookup for @ipMatch.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "moat/waf/rules.h"  // OperatorKind

namespace moat::l4 {
class CidrSet;
}

namespace moat::waf {


// OperatorKind is the rule AST's (rules.h). This file implements the kinds
// listed by implementedHere(): contains containsWord beginsWith endsWith streq
// within eq ge gt le lt ipMatch ipMatchFromFile validateByteRange
// validateUrlEncoding validateUtf8Encoding unconditionalMatch noMatch.
bool implementedHere(OperatorKind kind);

// Name (without '@') to kind, ASCII case-insensitive like ModSecurity's lexer.
// nullopt for names this file does not implement (rx, pm, ...); the loader
// reports them with the rule's file and line.
std::optional<OperatorKind> operatorFromName(std::string_view name);

// Canonical ModSecurity spelling ("containsWord"); static storage. An
// out-of-range value gives "unknown".
std::string_view operatorName(OperatorKind kind);

// True for the kinds whose argument ModSecurity macro-expands per transaction
// (the six string operators and the five integer ones). For the others an
// argument containing "%{" is taken literally, as in ModSecurity.
bool operatorTakesMacros(OperatorKind kind);

class CompiledOperator {
 public:
  // Parses `argument` for `kind` and returns the compiled operator, or nullopt
  // with one line in `error` (when not null), e.g.
  //   @validateByteRange: "300" is not a byte
  //   @ipMatch: "10.0.0.300" is not an IPv4/IPv6 address or CIDR
  //   @ipMatchFromFile: /etc/x.txt:3: "foo" is not an IPv4/IPv6 address or CIDR
  // For kIpMatchFromFile the argument is the file path, already resolved by
  // the loader (ModSecurity resolves it against the rule file's directory);
  // this reads the file. Control plane only: allocates, may block on I/O.
  // An argument with "%{" for a kind where operatorTakesMacros() is true is
  // kept as text: the engine expands it and calls matchWithArgument().
  static std::optional<CompiledOperator> compile(OperatorKind kind, std::string_view argument,
                                         std::string* error);

  // Tests one (already transformed) value. `capture`, when not null, receives
  // what ModSecurity puts in TX:0 for this operator on a match (only
  // @contains sets it: the argument); otherwise it is left untouched.
  bool match(std::string_view value, std::string* capture = nullptr) const;

  // True when the argument holds a macro ("%{") that the engine must expand
  // and pass to matchWithArgument() instead of calling match().
  bool needsExpansion() const { return needsExpansion_; }

  OperatorKind kind() const { return kind_; }
  // The argument as written (the path for @ipMatchFromFile).
  const std::string& argument() const { return argument_; }

 private:
  CompiledOperator() = default;

  OperatorKind kind_ = OperatorKind::kNoMatch;
  bool needsExpansion_ = false;
  std::string argument_;
  std::array<uint64_t, 4> allowedBytes_{};  // @validateByteRange, bit per byte
  std::shared_ptr<const l4::CidrSet> ips_;  // @ipMatch, @ipMatchFromFile
};

// Evaluates `kind` against `value` with an argument supplied at run time (the
// macro-expanded text), with the same results as compiling that argument.
// Meant for the kinds where operatorTakesMacros() is true; for the argument-
// free kinds (validators, constants) the argument is ignored. For
// @ipMatch/@ipMatchFromFile/@validateByteRange, whose arguments are never
// expanded, it returns false. Same thread/cost/allocation notes as match().
bool matchWithArgument(OperatorKind kind, std::string_view value, std::string_view argument,
                       std::string* capture = nullptr);

}  // namespace moat::waf
