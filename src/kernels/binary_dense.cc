#include "kernels/binary_dense.h"

#include <algorithm>
#include <vector>

namespace bmx {
namespace {

// Rows and units per kernel call (see binary_conv.cc).
constexpr int64_t kRowBlock = 64;
constexpr int64_t kUnitBlock = 64;

}  // namespace

void pack_dense_weights(const float* w, int64_t units, int64_t in_units, uint32_t* out) {
  pack_dense_input(w, units, in_units, out);
}

void pack_dense_input(const float* x, int64_t rows, int64_t in_units, uint32_t* out) {
  // A row of K values is one 1x1 "pixel" of K channels.
  pack_nchw(x, rows, in_units, 1, 1, out);
}

void binary_dense(const float* x, const uint32_t* weights, int64_t batch, int64_t in_units,
                  int64_t units, OutputMode mode, const float* scale, uint32_t* scratch,
                  float* out) {
  pack_dense_input(x, batch, in_units, scratch);
  binary_dense_packed(scratch, weights, batch, in_units, units, mode, scale, out);
}

void binary_dense_packed(const uint32_t* x, const uint32_t* weights, int64_t batch,
                         int64_t in_units, int64_t units, OutputMode mode, const float* scale,
                         float* out) {
  const MismatchKernel kernel = select_mismatch_kernel();
  const int64_t words = words_for_channels(in_units);
  const Segment row{0, 0, words};
  std::vector<const uint32_t*> acts(kRowBlock);
  std::vector<int32_t> counts(kRowBlock * kUnitBlock);
  for (int64_t r0 = 0; r0 < batch; r0 += kRowBlock) {
    const int64_t n_rows = std::min(kRowBlock, batch - r0);
    for (int64_t i = 0; i < n_rows; ++i) acts[i] = x + (r0 + i) * words;
    for (int64_t u0 = 0; u0 < units; u0 += kUnitBlock) {
      const int64_t n_units = std::min(kUnitBlock, units - u0);
      kernel(acts.data(), n_rows, weights + u0 * words, words, n_units, &row, 1, counts.data());
      for (int64_t u = 0; u < n_units; ++u) {
        const float s = mode == OutputMode::kScaledDot ? scale[u0 + u] : 1.0f;
        for (int64_t i = 0; i < n_rows; ++i) {
          out[(r0 + i) * units + u0 + u] = binary_output(counts[u * n_rows + i], in_units, mode, s);
        }
      }
    }
  }
}

}  // namespace bmx
