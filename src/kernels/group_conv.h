// A float convolution with few input channels per group (MeliusNet's stems: 3, then 8 and 4 per
// group), summed in the order MXNet 1.9.1 sums it on this machine, faster and in plain NCHW (no
// MXNet types).
//
// MXNet runs these through oneDNN, whose sums this reproduces exactly in two orders (measured
// against MXNet on AVX2, tests/test_group_conv.py):
//   - kGemm: fewer than 8 input channels per group in plain NCHW become oneDNN's gemm convolution
//     ("gemm:jit", about 1.3 multiply-adds a cycle here): per image and group, im2col, then an
//     sgemm whose AVX2 kernel takes 16 pixels x 6 output channels at a time. Per output of image
//     pixel m (of M = out_h * out_w) and group channel j (of og), over the taps k = (input
//     channel, kernel row, kernel column) in that order, zero padding taken as values, from +0:
//     j < og - og % 6 (full 6-channel blocks): one fused multiply-add chain, except the last
//     r = M % 16 pixels when 1 <= r <= 8, which sum even and odd k in two fused chains added at
//     the end; j >= og - og % 6 (the channel tail): even and odd k in two chains of separately
//     rounded products and sums, added at the end.
//   - kDirect: oneDNN's direct AVX2 kernel ("jit:avx2", blocked layout): one fused chain over
//     input channel blocks of `block` (8 with AVX2), then kernel row, kernel column, channel in
//     the block. Padding taps add nothing (a product with zero leaves the chain, which never
//     holds -0, as it is).
// Other machines' oneDNN may sum otherwise: the converter uses this only where it equals MXNet's
// Convolution bit for bit on probes (bmxnet_ext/inference/packed.py, GroupedConv2D).
#ifndef BMXNET_KERNELS_GROUP_CONV_H_
#define BMXNET_KERNELS_GROUP_CONV_H_

#include <cstdint>
#include <vector>

#include "kernels/parallel.h"

namespace bmx {

enum class SumOrder { kGemm = 0, kDirect = 1 };

struct GroupConvParams {
  int64_t batch = 1, in_channels = 1, in_h = 1, in_w = 1, out_channels = 1, groups = 1;
  int64_t kernel_h = 1, kernel_w = 1, stride_h = 1, stride_w = 1, pad_h = 0, pad_w = 0;
  SumOrder order = SumOrder::kGemm;
  int64_t block = 8;  // kDirect's input channel block

  int64_t out_h() const { return (in_h + 2 * pad_h - kernel_h) / stride_h + 1; }
  int64_t out_w() const { return (in_w + 2 * pad_w - kernel_w) / stride_w + 1; }
  int64_t group_in() const { return in_channels / groups; }
  int64_t group_out() const { return out_channels / groups; }
  int64_t taps() const { return group_in() * kernel_h * kernel_w; }
};

// What a caller that runs the layer again keeps: the threads' input rows, the tap offsets and
// the weights in tap order (grown, never shrunk).
struct GroupConvScratch {
  ThreadBuffers<float> rows;
  std::vector<int64_t> taps;
  std::vector<float> weights;
};

// x: float [batch][in_channels][in_h][in_w]; weight: float [out_channels][in_channels / groups]
// [kernel_h][kernel_w]; out: float [batch][out_channels][out_h][out_w], fully overwritten (plain
// NCHW). scratch: kept by a caller that runs the layer again, or null.
void group_conv(const float* x, const float* weight, const GroupConvParams& p, float* out,
                GroupConvScratch* scratch = nullptr);

}  // namespace bmx

#endif  // BMXNET_KERNELS_GROUP_CONV_H_
