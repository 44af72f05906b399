#include "kernels/binary_conv.h"

#include <algorithm>
#include <vector>

namespace bmx {
namespace {

// Output pixels and output channels handled per kernel call: the activation windows of a pixel
// block and the weights of a channel block stay in L1/L2 while every pair is counted.
constexpr int64_t kPixelBlock = 64;
constexpr int64_t kChannelBlock = 64;

// The window of one output pixel as runs of words: one run per kernel tap (group_words words),
// merged where consecutive taps are adjacent in both the padded input and the weights (groups
// == 1 with dilate_w == 1 makes a whole kernel row one run).
std::vector<Segment> window_segments(const ConvParams& p) {
  const int64_t group_words = p.group_words();
  const int64_t pixel_words = p.groups * group_words;
  std::vector<Segment> segments;
  for (int64_t ky = 0; ky < p.kernel_h; ++ky) {
    for (int64_t kx = 0; kx < p.kernel_w; ++kx) {
      const Segment next{(ky * p.dilate_h * p.padded_w() + kx * p.dilate_w) * pixel_words,
                         (ky * p.kernel_w + kx) * group_words, group_words};
      if (!segments.empty()) {
        Segment& last = segments.back();
        if (last.act_offset + last.words == next.act_offset &&
            last.weight_offset + last.words == next.weight_offset) {
          last.words += next.words;
          continue;
        }
      }
      segments.push_back(next);
    }
  }
  return segments;
}

}  // namespace

void pack_conv_weights(const float* w, int64_t out_channels, int64_t group_in_channels,
                       int64_t kernel_h, int64_t kernel_w, uint32_t* out) {
  // OIHW read as NCHW packs to [O][kh][kw][words]: exactly the layout the kernel reads.
  pack_nchw(w, out_channels, group_in_channels, kernel_h, kernel_w, out);
}

void binary_conv2d(const float* x, const uint32_t* weights, const ConvParams& p, OutputMode mode,
                   const float* scale, uint32_t* scratch, float* out) {
  pack_nchw_padded(x, p.batch, p.in_channels, p.in_h, p.in_w, p.groups, p.pad_h, p.pad_w,
                   p.pad_with_ones, scratch);
  binary_conv2d_packed(scratch, weights, p, mode, scale, out);
}

void binary_conv2d_packed(const uint32_t* padded_input, const uint32_t* weights,
                          const ConvParams& p, OutputMode mode, const float* scale, float* out) {
  const MismatchKernel kernel = select_mismatch_kernel();
  const std::vector<Segment> segments = window_segments(p);
  const int64_t group_words = p.group_words();
  const int64_t pixel_words = p.groups * group_words;
  const int64_t image_words = p.padded_h() * p.padded_w() * pixel_words;
  const int64_t weight_stride = p.kernel_h * p.kernel_w * group_words;
  const int64_t out_w = p.out_w();
  const int64_t pixels = p.out_h() * out_w;
  const int64_t group_out = p.group_out_channels();
  const int64_t fan_in = p.fan_in();

  std::vector<const uint32_t*> acts(kPixelBlock);
  std::vector<int32_t> counts(kPixelBlock * kChannelBlock);
  for (int64_t b = 0; b < p.batch; ++b) {
    for (int64_t g = 0; g < p.groups; ++g) {
      const uint32_t* image = padded_input + b * image_words + g * group_words;
      const uint32_t* group_weights = weights + g * group_out * weight_stride;
      for (int64_t q0 = 0; q0 < pixels; q0 += kPixelBlock) {
        const int64_t n_pixels = std::min(kPixelBlock, pixels - q0);
        for (int64_t i = 0; i < n_pixels; ++i) {
          const int64_t oy = (q0 + i) / out_w, ox = (q0 + i) % out_w;
          acts[i] = image + (oy * p.stride_h * p.padded_w() + ox * p.stride_w) * pixel_words;
        }
        for (int64_t o0 = 0; o0 < group_out; o0 += kChannelBlock) {
          const int64_t n_channels = std::min(kChannelBlock, group_out - o0);
          kernel(acts.data(), n_pixels, group_weights + o0 * weight_stride, weight_stride,
                 n_channels, segments.data(), static_cast<int64_t>(segments.size()),
                 counts.data());
          for (int64_t o = 0; o < n_channels; ++o) {
            const int64_t oc = g * group_out + o0 + o;
            const float s = mode == OutputMode::kScaledDot ? scale[oc] : 1.0f;
            float* dst = out + (b * p.out_channels + oc) * pixels + q0;
            const int32_t* src = counts.data() + o * n_pixels;
            for (int64_t i = 0; i < n_pixels; ++i) dst[i] = binary_output(src[i], fan_in, mode, s);
          }
        }
      }
    }
  }
}

}  // namespace bmx
