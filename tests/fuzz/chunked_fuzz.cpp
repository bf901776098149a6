// libFuzzer target: the streaming chunked-body validator. The first byte
// picks a split point; feeding the rest whole or in two pieces must give the
// same verdict and the same end offset (framing never depends on how the
// network cut the stream), and consumed never exceeds what was fed.
#include <cstdint>
#include <cstdlib>
#include <vector>

#include "moat/l7/http_parser.h"

using moat::l7::ChunkedDecoder;

namespace {
// Returns the verdict and sets `end` to the total bytes consumed.
ChunkedDecoder::Result feedAll(const std::vector<char>& in, size_t split, size_t& end) {
  ChunkedDecoder d;
  size_t off = 0;
  end = 0;
  const size_t cuts[2] = {split, in.size()};
  for (size_t c : cuts) {
    if (c < off) continue;
    std::vector<char> piece(in.begin() + static_cast<long>(off), in.begin() + static_cast<long>(c));
    size_t consumed = 0;
    ChunkedDecoder::Result r = d.feed(piece.data(), piece.size(), consumed);
    if (consumed > piece.size()) abort();
    end += consumed;
    if (r != ChunkedDecoder::Result::kNeedMore) return r;
    if (consumed != piece.size()) abort();  // kNeedMore takes everything
    off = c;
  }
  return ChunkedDecoder::Result::kNeedMore;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  std::vector<char> in(data + 1, data + size);
  size_t split = in.empty() ? 0 : data[0] % (in.size() + 1);
  size_t endWhole = 0, endSplit = 0;
  ChunkedDecoder::Result whole = feedAll(in, in.size(), endWhole);
  ChunkedDecoder::Result parts = feedAll(in, split, endSplit);
  if (whole != parts) abort();
  if (whole == ChunkedDecoder::Result::kDone && endWhole != endSplit) abort();
  return 0;
}
