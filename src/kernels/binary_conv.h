// Binary 2-D convolution by xnor-popcount on packed bits (no MXNet types).
//
// Computes what the training layer QConv2D computes on ±1 inputs and ±1 weights: the input is
// binarized (bit = x >= 0, see bitpack.h), padded with -1 (or +1) *after* binarization, and
// convolved with sign(W) over K = C_in / groups * kernel_h * kernel_w taps per output; the ±1
// dot product is returned in one of the OutputMode conventions. All intermediate values are
// integers, so the result is exact.
//
// Packed weight layout (what pack_conv_weights writes and binary_conv2d reads):
//   [C_out][kernel_h][kernel_w][words_for_channels(C_in / groups)] uint32 words,
// i.e. the activation layout of bitpack.h applied to OIHW weights read as "NCHW" with
// N = C_out, C = C_in / groups: input channel c of group g's filter sits at bit c % 32 of word
// c / 32, tails masked to 0. Output channel o belongs to group o / (C_out / groups).
#ifndef BMXNET_KERNELS_BINARY_CONV_H_
#define BMXNET_KERNELS_BINARY_CONV_H_

#include <cstdint>

#include "kernels/bitpack.h"
#include "kernels/xnor_popcount.h"

namespace bmx {

// Geometry of one binary convolution. All fields must be positive except pad_* (>= 0); groups
// divides in_channels and out_channels; the dilated kernel fits the padded input.
struct ConvParams {
  int64_t batch = 1, in_channels = 1, in_h = 1, in_w = 1;
  int64_t out_channels = 1, kernel_h = 1, kernel_w = 1;
  int64_t stride_h = 1, stride_w = 1;
  int64_t pad_h = 0, pad_w = 0;
  int64_t dilate_h = 1, dilate_w = 1;
  int64_t groups = 1;
  bool pad_with_ones = false;  // padding value +1 instead of the default -1

  int64_t group_in_channels() const { return in_channels / groups; }
  int64_t group_out_channels() const { return out_channels / groups; }
  int64_t group_words() const { return words_for_channels(group_in_channels()); }
  int64_t fan_in() const { return group_in_channels() * kernel_h * kernel_w; }
  int64_t padded_h() const { return in_h + 2 * pad_h; }
  int64_t padded_w() const { return in_w + 2 * pad_w; }
  // 0 when the dilated kernel does not fit the padded input.
  int64_t out_h() const { return out_size(padded_h(), kernel_h, dilate_h, stride_h); }
  int64_t out_w() const { return out_size(padded_w(), kernel_w, dilate_w, stride_w); }
  // Words of the packed, padded input buffer binary_conv2d needs as scratch.
  int64_t packed_input_words() const {
    return batch * padded_h() * padded_w() * groups * group_words();
  }
  static int64_t out_size(int64_t padded, int64_t kernel, int64_t dilate, int64_t stride) {
    const int64_t extent = dilate * (kernel - 1) + 1;
    return padded < extent ? 0 : (padded - extent) / stride + 1;
  }
  // Words of the packed weights: out_channels * kernel_h * kernel_w * group_words().
  int64_t weight_words() const { return out_channels * kernel_h * kernel_w * group_words(); }
};

// w: float [out_channels][group_in_channels][kernel_h][kernel_w] (OIHW, latent weights, bit =
// w >= 0); out: the packed weight layout above, out_channels * kernel_h * kernel_w *
// words_for_channels(group_in_channels) words, fully overwritten.
void pack_conv_weights(const float* w, int64_t out_channels, int64_t group_in_channels,
                       int64_t kernel_h, int64_t kernel_w, uint32_t* out);

// x: float [batch][in_channels][in_h][in_w]; weights: packed layout above; scale: float
// [out_channels] (read only for kScaledDot); scratch: p.packed_input_words() words; out: float
// [batch][out_channels][out_h][out_w], fully overwritten.
void binary_conv2d(const float* x, const uint32_t* weights, const ConvParams& p, OutputMode mode,
                   const float* scale, uint32_t* scratch, float* out);

// The convolution alone, on an input already packed by
//   pack_nchw_padded(x, batch, in_channels, in_h, in_w, groups, pad_h, pad_w, pad_with_ones, ...).
void binary_conv2d_packed(const uint32_t* padded_input, const uint32_t* weights,
                          const ConvParams& p, OutputMode mode, const float* scale, float* out);

}  // namespace bmx

#endif  // BMXNET_KERNELS_BINARY_CONV_H_
