// HDR-style latency histogram for moat-bench.
//
// Log-linear buckets over nanoseconds: values below 2^kSubBits land in their
// own bucket (exact); above, each power of two is split into 2^(kSubBits-1)
// linear sub-buckets, so any recorded value is reported within 1/2^(kSubBits-1)
// (0.8% with kSubBits = 8) of the truth. Covers 0 .. 2^63 ns.
//
// Thread: one owner records; merge() combines per-thread histograms after the
// threads have stopped. record() is O(1), no allocation (the bucket array is
// allocated once, ~30 KiB).
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

namespace moat::bench {

class Histogram {
 public:
  static constexpr int kSubBits = 8;
  static constexpr uint64_t kSubCount = uint64_t{1} << kSubBits;  // 256
  static constexpr uint64_t kHalf = kSubCount / 2;                // 128 sub-buckets per octave

  Histogram() : buckets_(bucketCount(), 0) {}

  void record(uint64_t v) {
    ++buckets_[indexOf(v)];
    ++count_;
    sum_ += v;
    if (v > max_) max_ = v;
    if (v < min_) min_ = v;
  }

  void merge(const Histogram& o) {
    for (size_t i = 0; i < buckets_.size(); ++i) buckets_[i] += o.buckets_[i];
    count_ += o.count_;
    sum_ += o.sum_;
    max_ = std::max(max_, o.max_);
    min_ = std::min(min_, o.min_);
  }

  void reset() {
    std::fill(buckets_.begin(), buckets_.end(), 0);
    count_ = 0;
    sum_ = 0;
    max_ = 0;
    min_ = UINT64_MAX;
  }

  uint64_t count() const { return count_; }
  uint64_t max() const { return max_; }
  uint64_t min() const { return count_ == 0 ? 0 : min_; }
  double mean() const { return count_ == 0 ? 0.0 : static_cast<double>(sum_) / static_cast<double>(count_); }

  // The smallest recorded-bucket value v such that at least p% of the
  // samples are <= v (nearest rank), reported as the bucket's midpoint and
  // clamped to [min, max]. p in [0, 100]; 0 samples -> 0.
  uint64_t percentile(double p) const {
    if (count_ == 0) return 0;
    double want = p / 100.0 * static_cast<double>(count_);
    uint64_t rank = static_cast<uint64_t>(want);
    if (static_cast<double>(rank) < want) ++rank;
    if (rank == 0) rank = 1;
    uint64_t seen = 0;
    for (size_t i = 0; i < buckets_.size(); ++i) {
      seen += buckets_[i];
      if (seen >= rank) {
        uint64_t lo = lowOf(i), hi = highOf(i);
        uint64_t mid = lo + (hi - lo) / 2;
        return std::clamp(mid, min(), max_);
      }
    }
    return max_;
  }

  // Bucket layout, exposed for tests.
  static size_t indexOf(uint64_t v) {
    if (v < kSubCount) return static_cast<size_t>(v);
    int msb = 63 - __builtin_clzll(v);          // >= kSubBits
    int shift = msb - (kSubBits - 1);           // keep kSubBits top bits
    uint64_t sub = (v >> shift) - kHalf;        // 0 .. kHalf-1
    return static_cast<size_t>(kSubCount + static_cast<uint64_t>(shift - 1) * kHalf + sub);
  }
  static uint64_t lowOf(size_t i) {
    if (i < kSubCount) return i;
    uint64_t k = i - kSubCount;
    int shift = static_cast<int>(k / kHalf) + 1;
    return (kHalf + k % kHalf) << shift;
  }
  static uint64_t highOf(size_t i) {
    if (i < kSubCount) return i;
    uint64_t k = i - kSubCount;
    int shift = static_cast<int>(k / kHalf) + 1;
    return ((kHalf + k % kHalf + 1) << shift) - 1;
  }
  static size_t bucketCount() { return indexOf(UINT64_MAX) + 1; }

 private:
  std::vector<uint64_t> buckets_;
  uint64_t count_ = 0;
  uint64_t sum_ = 0;
  uint64_t max_ = 0;
  uint64_t min_ = UINT64_MAX;
};

}  // namespace moat::bench
