// Strict HTTP/1.1 parser cost: ns per message head (request: a browser GET
// and a small API POST; response: a typical 200 head), and the chunked-body
// validator over large and small chunks. Single thread: a parser runs on the
// worker that owns the connection. The whole head is in the buffer, as on
// the common path where one read() brings the full head.
//
// bytes/s counts the head (RequestHead::headBytes) or the chunked body;
// items/s counts messages.
//
//   build/release/bench/moat-micro --benchmark_filter=Http
#include <benchmark/benchmark.h>

#include <cstdio>
#include <string>
#include <string_view>

#include "moat/l7/http_parser.h"

using namespace moat::l7;

namespace {

// Firefox on a product page: 9 header fields, 431 bytes.
constexpr std::string_view kBrowserGet =
    "GET /products/shoes?color=blue&size=42 HTTP/1.1\r\n"
    "Host: shop.example.com\r\n"
    "User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0\r\n"
    "Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n"
    "Accept-Language: en-US,en;q=0.5\r\n"
    "Accept-Encoding: gzip, deflate, br\r\n"
    "Referer: https://shop.example.com/\r\n"
    "Connection: keep-alive\r\n"
    "Cookie: session=4f9a1c2e7b; theme=dark\r\n"
    "Upgrade-Insecure-Requests: 1\r\n"
    "\r\n";

// A JSON API call with a Content-Length body (the body follows the head in
// the buffer, as it would after one read; only the head is parsed).
constexpr std::string_view kApiPost =
    "POST /api/v1/orders HTTP/1.1\r\n"
    "Host: api.example.com\r\n"
    "User-Agent: example-sdk/2.3.1\r\n"
    "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiI0MiJ9.c2lnbmF0dXJl\r\n"
    "Content-Type: application/json\r\n"
    "Accept: application/json\r\n"
    "Content-Length: 35\r\n"
    "\r\n"
    "{\"sku\":\"SHOE-42-BLUE\",\"quantity\":2}";

// An origin's answer to the GET above.
constexpr std::string_view kResponse =
    "HTTP/1.1 200 OK\r\n"
    "Date: Tue, 12 Mar 2024 10:15:42 GMT\r\n"
    "Server: nginx\r\n"
    "Content-Type: text/html; charset=utf-8\r\n"
    "Content-Length: 51234\r\n"
    "Cache-Control: private, max-age=0\r\n"
    "ETag: \"5f3c-61a2b9e4c1d80\"\r\n"
    "Vary: Accept-Encoding\r\n"
    "Connection: keep-alive\r\n"
    "\r\n";

// A chunked body: `chunks` chunks of `chunkBytes` payload bytes each, then
// the last chunk and an empty trailer section. Built once per benchmark.
std::string chunkedBody(size_t chunks, size_t chunkBytes) {
  char size[32];
  std::snprintf(size, sizeof size, "%zx\r\n", chunkBytes);
  std::string s;
  for (size_t i = 0; i < chunks; ++i) {
    s += size;
    s.append(chunkBytes, 'x');
    s += "\r\n";
  }
  s += "0\r\n\r\n";
  return s;
}

void reportBytes(benchmark::State& state, size_t bytesPerItem) {
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()));
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * bytesPerItem));
  state.counters["bytes"] = static_cast<double>(bytesPerItem);
}

}  // namespace

// Runs a request head through parseRequestHead; the head struct (~4 KiB of
// header slots) is reused across iterations as a connection reuses it.
static void requestHead(benchmark::State& state, std::string_view msg) {
  const ParseLimits limits;
  RequestHead head;
  HttpError err = HttpError::kNone;
  if (parseRequestHead(msg.data(), msg.size(), limits, head, err) != ParseStatus::kComplete) {
    state.SkipWithError((std::string("request does not parse: ") + httpErrorText(err)).c_str());
    return;
  }
  const size_t headBytes = head.headBytes;
  for (auto _ : state) {
    ParseStatus st = parseRequestHead(msg.data(), msg.size(), limits, head, err);
    benchmark::DoNotOptimize(st);
    benchmark::DoNotOptimize(head.headerCount);
    benchmark::ClobberMemory();
  }
  reportBytes(state, headBytes);
  state.counters["headers"] = static_cast<double>(head.headerCount);
}

static void BM_HttpParseRequestBrowserGet(benchmark::State& state) {
  requestHead(state, kBrowserGet);
}
BENCHMARK(BM_HttpParseRequestBrowserGet);

static void BM_HttpParseRequestApiPost(benchmark::State& state) { requestHead(state, kApiPost); }
BENCHMARK(BM_HttpParseRequestApiPost);

// Response head to a GET (not HEAD): body framed by Content-Length.
static void BM_HttpParseResponseHead(benchmark::State& state) {
  const ParseLimits limits;
  ResponseHead head;
  HttpError err = HttpError::kNone;
  const std::string_view msg = kResponse;
  if (parseResponseHead(msg.data(), msg.size(), limits, false, head, err) !=
      ParseStatus::kComplete) {
    state.SkipWithError((std::string("response does not parse: ") + httpErrorText(err)).c_str());
    return;
  }
  const size_t headBytes = head.headBytes;
  for (auto _ : state) {
    ParseStatus st = parseResponseHead(msg.data(), msg.size(), limits, false, head, err);
    benchmark::DoNotOptimize(st);
    benchmark::DoNotOptimize(head.headerCount);
    benchmark::ClobberMemory();
  }
  reportBytes(state, headBytes);
  state.counters["headers"] = static_cast<double>(head.headerCount);
}
BENCHMARK(BM_HttpParseResponseHead);

// Validates a whole chunked body in one feed(). Args: {chunks, chunk bytes}.
// 4 x 4 KiB: payload skipped in bulk, framing is a small share; 64 x 16 B:
// framing dominates (chatty streaming APIs, server-sent events).
static void BM_HttpChunkedDecode(benchmark::State& state) {
  const std::string body =
      chunkedBody(static_cast<size_t>(state.range(0)), static_cast<size_t>(state.range(1)));
  ChunkedDecoder dec;
  size_t consumed = 0;
  if (dec.feed(body.data(), body.size(), consumed) != ChunkedDecoder::Result::kDone ||
      consumed != body.size()) {
    state.SkipWithError("chunked body does not validate");
    return;
  }
  for (auto _ : state) {
    dec.reset();
    ChunkedDecoder::Result r = dec.feed(body.data(), body.size(), consumed);
    benchmark::DoNotOptimize(r);
    benchmark::DoNotOptimize(consumed);
    benchmark::ClobberMemory();
  }
  reportBytes(state, body.size());
}
BENCHMARK(BM_HttpChunkedDecode)->Args({4, 4096})->Args({64, 16});
