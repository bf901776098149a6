// libFuzzer target: the PROXY protocol header parser. Properties: a header
// that parses takes no more bytes than given and a v1 header no more than
// 107; every prefix of a parsed header is "incomplete", never a different
// verdict (a header split by the network parses the same).
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "moat/l7/proxy_protocol.h"

using namespace moat::l7;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::vector<char> buf(data, data + size);  // exact-size copy: ASan sees overreads
  ProxyHeader h;
  ProxyHeaderStatus st = parseProxyHeader(buf.data(), buf.size(), h);
  if (st == ProxyHeaderStatus::kError && h.error == nullptr) abort();
  if (st != ProxyHeaderStatus::kDone) return 0;
  if (h.length == 0 || h.length > size) abort();
  if (size > 0 && data[0] == 'P' && h.length > kMaxProxyHeaderV1) abort();
  if (h.hasAddress && h.srcLen != 4 && h.srcLen != 16) abort();
  for (size_t cut = 0; cut < h.length; cut += 1 + cut / 4) {
    std::vector<char> part(data, data + cut);
    ProxyHeader p;
    if (parseProxyHeader(part.data(), part.size(), p) != ProxyHeaderStatus::kIncomplete) abort();
  }
  ProxyHeader again;
  std::vector<char> exact(data, data + h.length);
  if (parseProxyHeader(exact.data(), exact.size(), again) != ProxyHeaderStatus::kDone ||
      again.length != h.length || again.hasAddress != h.hasAddress ||
      std::memcmp(again.src, h.src, sizeof h.src) != 0) {
    abort();
  }
  return 0;
}
