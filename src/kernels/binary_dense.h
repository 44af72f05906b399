// Binary fully connected layer by xnor-popcount on packed bits (no MXNet types).
//
// Computes what the training layer QDense computes on ±1 inputs and ±1 weights: each of the
// `batch` input rows of K = in_units values is binarized (bit = x >= 0) and its ±1 dot product
// with each of the `units` rows of sign(W) is returned in an OutputMode convention. Exact.
// It runs on the binary convolution's tiles: the rows are the pixels of a 1 x batch image with
// in_units channels, convolved with units 1 x 1 filters.
//
// Packed weight layout (what pack_dense_weights writes and binary_dense reads):
//   [units][words_for_channels(in_units)] uint32 words; input k of a row sits at bit k % 32 of
// word k / 32, tails masked to 0.
#ifndef BMXNET_KERNELS_BINARY_DENSE_H_
#define BMXNET_KERNELS_BINARY_DENSE_H_

#include <cstdint>

#include "kernels/binary_conv.h"
#include "kernels/bitpack.h"
#include "kernels/xnor_popcount.h"

namespace bmx {

// w: float [units][in_units] (latent weights, bit = w >= 0); out: units *
// words_for_channels(in_units) words, fully overwritten.
void pack_dense_weights(const float* w, int64_t units, int64_t in_units, uint32_t* out);

// Words of scratch binary_dense needs.
int64_t dense_scratch_words(int64_t batch, int64_t in_units);

// x: float [batch][in_units]; weights: packed layout above; scale: float [units] (read only for
// kScaledDot); scratch: dense_scratch_words(batch, in_units) words; out: float [batch][units];
// cache: kept by a caller that runs the layer again (binary_conv.h), or null.
void binary_dense(const float* x, const uint32_t* weights, int64_t batch, int64_t in_units,
                  int64_t units, OutputMode mode, const float* scale, uint32_t* scratch,
                  float* out, ConvCache* cache = nullptr);

}  // namespace bmx

#endif  // BMXNET_KERNELS_BINARY_DENSE_H_
