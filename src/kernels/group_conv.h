// A grouped float convolution with few input channels per group (MeliusNet's grouped stem: 4 per
// group), summed in the order MXNet 1.9.1 sums it, at a good rate (no MXNet types).
//
// MXNet runs such a convolution on plain NCHW as oneDNN's gemm convolution ("gemm:jit"): per
// image and group, im2col then an sgemm whose AVX2 kernel takes 16 output pixels x 6 output
// channels at a time, about 1.3 multiply-adds a cycle here. Its sums are reproduced exactly
// (measured against MXNet, tests/test_group_conv.py), per output of image pixel m (of M = out_h *
// out_w) and group channel j (of og):
//   - every sum runs over k = (input channel, kernel row, kernel column) in that order, with the
//     input's zero padding taken as values, starting from +0;
//   - j < og - og % 6 (the kernel's full 6-channel blocks): one fused multiply-add chain, except
//     the last r = M % 16 pixels when 1 <= r <= 8, which sum even and odd k in two fused chains
//     and add the two at the end;
//   - j >= og - og % 6 (the channel tail): even and odd k in two chains of separately rounded
//     products and sums, added at the end.
// Other machines' oneDNN may sum otherwise: the converter uses this only where it equals MXNet's
// Convolution bit for bit on a probe (bmxnet_ext/inference/packed.py, GroupedConv2D).
#ifndef BMXNET_KERNELS_GROUP_CONV_H_
#define BMXNET_KERNELS_GROUP_CONV_H_

#include <cstdint>

#include "kernels/parallel.h"

namespace bmx {

struct GroupConvParams {
  int64_t batch = 1, in_channels = 1, in_h = 1, in_w = 1, out_channels = 1, groups = 1;
  int64_t kernel_h = 1, kernel_w = 1, stride_h = 1, stride_w = 1, pad_h = 0, pad_w = 0;

  int64_t out_h() const { return (in_h + 2 * pad_h - kernel_h) / stride_h + 1; }
  int64_t out_w() const { return (in_w + 2 * pad_w - kernel_w) / stride_w + 1; }
  int64_t group_in() const { return in_channels / groups; }
  int64_t group_out() const { return out_channels / groups; }
  // The padded width of a group's input rows in the kernels' scratch.
  int64_t padded_w() const { return in_w + 2 * pad_w; }
};

// x: float [batch][in_channels][in_h][in_w]; weight: float [out_channels][in_channels / groups]
// [kernel_h][kernel_w]; out: float [batch][out_channels][out_h][out_w], fully overwritten (plain
// NCHW). buffers: the threads' scratch, kept by a caller that runs the layer again, or null.
void group_conv(const float* x, const float* weight, const GroupConvParams& p, float* out,
                ThreadBuffers<float>* buffers = nullptr);

}  // namespace bmx

#endif  // BMXNET_KERNELS_GROUP_CONV_H_
