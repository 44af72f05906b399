#include "kernels/group_conv.h"

#include <algorithm>
#include <cstring>

#include "kernels/conv_isa.h"

namespace bmx {

void group_conv(const float* x, const float* weight, const GroupConvParams& p, float* out,
                ThreadBuffers<float>* buffers) {
  const IsaKernels& isa = active_kernels();
  ThreadBuffers<float> call_buffers;
  if (buffers == nullptr) buffers = &call_buffers;
  const int64_t cg = p.group_in(), og = p.group_out(), out_h = p.out_h(), out_w = p.out_w();
  const int64_t pixels = out_h * out_w, wp = p.padded_w();
  const int64_t taps = cg * p.kernel_h * p.kernel_w;
  // The last pixels of an image that oneDNN's kernel sums in pairs of chains (group_conv.h).
  const int64_t short_block = pixels % 16;
  const int64_t paired_from = short_block >= 1 && short_block <= 8 ? pixels - short_block
                                                                    : pixels;
  // Items: bands of output rows of one group of one image, enough for the threads to share.
  const int64_t planes = p.batch * p.groups;
  const int threads = threads_for(8.0 * planes * og * taps * pixels, planes * out_h);
  const int64_t bands = std::min(out_h, (4 * threads + planes - 1) / planes);
  const int64_t band_rows = (out_h + bands - 1) / bands;
  // Per thread: the band's input rows of the group's channels with the zero padding around them.
  const int64_t band_in_rows = (band_rows - 1) * p.stride_h + p.kernel_h;
  buffers->reserve(threads, cg * band_in_rows * wp);
  parallel_for(threads, planes * bands, [&](int64_t item, int thread) {
    const int64_t plane = item / bands, band = item % bands;
    const int64_t b = plane / p.groups, g = plane % p.groups;
    const int64_t y0 = band * band_rows, y1 = std::min(out_h, y0 + band_rows);
    if (y0 >= y1) return;
    const int64_t first = y0 * p.stride_h - p.pad_h, rows = (y1 - 1 - y0) * p.stride_h + p.kernel_h;
    float* padded = buffers->get(thread);
    for (int64_t c = 0; c < cg; ++c) {
      const float* src = x + ((b * p.in_channels + g * cg + c) * p.in_h) * p.in_w;
      for (int64_t r = 0; r < rows; ++r) {
        float* dst = padded + (c * band_in_rows + r) * wp;
        const int64_t iy = first + r;
        if (iy < 0 || iy >= p.in_h) {
          std::fill(dst, dst + wp, 0.0f);
          continue;
        }
        std::fill(dst, dst + p.pad_w, 0.0f);
        std::memcpy(dst + p.pad_w, src + iy * p.in_w, p.in_w * sizeof(float));
        std::fill(dst + p.pad_w + p.in_w, dst + wp, 0.0f);
      }
    }
    GroupConvRowArgs args;
    args.channel_stride = band_in_rows * wp;
    args.row_stride = wp;
    args.channels = cg;
    args.kernel_h = p.kernel_h;
    args.kernel_w = p.kernel_w;
    args.stride_w = p.stride_w;
    args.weight = weight + g * og * taps;
    args.out_channels = og;
    args.full_channels = og - og % 6;
    args.out_w = out_w;
    args.out_channel_stride = pixels;
    float* plane_out = out + (b * p.out_channels + g * og) * pixels;
    for (int64_t oy = y0; oy < y1; ++oy) {
      args.in = padded + (oy - y0) * p.stride_h * wp;
      args.paired_from = std::min(out_w, std::max<int64_t>(0, paired_from - oy * out_w));
      args.out = plane_out + oy * out_w;
      isa.group_conv_row(args);
    }
  });
}

}  // namespace bmx
