#include "kernels/group_conv.h"

#include <algorithm>

#include "kernels/conv_isa.h"

namespace bmx {
namespace {

// The input rows of a band, one per (channel, padded row), each split into stride_w phases: the
// phase q holds the padded columns q, q + stride_w, ..., so tap column kx of output ox lies at
// phase kx % stride_w, index ox + kx / stride_w, and every tap reads consecutive outputs from
// consecutive floats.
struct RowLayout {
  int64_t phase_w, row_stride, channel_stride;

  RowLayout(const GroupConvParams& p, int64_t rows) {
    phase_w = (p.in_w + 2 * p.pad_w + p.stride_w - 1) / p.stride_w;
    row_stride = p.stride_w * phase_w;
    channel_stride = rows * row_stride;
  }
};

// Tap offsets (from the band's first output row at output column 0) and weights [og][taps] in
// the order of p.order.
void order_taps(const GroupConvParams& p, const RowLayout& layout, const float* weight,
                GroupConvScratch* s) {
  const int64_t cg = p.group_in(), taps = p.taps(), kernel = p.kernel_h * p.kernel_w;
  s->taps.resize(taps);
  s->weights.resize(p.out_channels * taps);
  std::vector<int64_t>& order = s->taps;  // first the weight index of each tap
  int64_t t = 0;
  // kGemm's (c, ky, kx) is the direct order with blocks of one channel.
  const int64_t block = p.order == SumOrder::kDirect ? std::max<int64_t>(p.block, 1) : 1;
  for (int64_t c0 = 0; c0 < cg; c0 += block) {
    const int64_t c1 = std::min(cg, c0 + block);
    for (int64_t ky = 0; ky < p.kernel_h; ++ky) {
      for (int64_t kx = 0; kx < p.kernel_w; ++kx) {
        for (int64_t c = c0; c < c1; ++c) order[t++] = c * kernel + ky * p.kernel_w + kx;
      }
    }
  }
  for (int64_t o = 0; o < p.out_channels; ++o) {
    for (t = 0; t < taps; ++t) s->weights[o * taps + t] = weight[o * taps + order[t]];
  }
  for (t = 0; t < taps; ++t) {
    const int64_t c = order[t] / kernel, ky = order[t] % kernel / p.kernel_w;
    const int64_t kx = order[t] % p.kernel_w;
    order[t] = c * layout.channel_stride + ky * layout.row_stride +
               kx % p.stride_w * layout.phase_w + kx / p.stride_w;
  }
}

}  // namespace

void group_conv(const float* x, const float* weight, const GroupConvParams& p, float* out,
                GroupConvScratch* scratch) {
  const IsaKernels& isa = active_kernels();
  GroupConvScratch call_scratch;
  if (scratch == nullptr) scratch = &call_scratch;
  const int64_t cg = p.group_in(), og = p.group_out(), out_h = p.out_h(), out_w = p.out_w();
  const int64_t pixels = out_h * out_w, taps = p.taps();
  // kGemm: the last pixels of an image that oneDNN's kernel sums in pairs of chains.
  const int64_t short_block = pixels % 16;
  const int64_t paired_from =
      p.order == SumOrder::kGemm && short_block >= 1 && short_block <= 8 ? pixels - short_block
                                                                          : pixels;
  // Items: bands of output rows of one group of one image, enough for the threads to share.
  const int64_t planes = p.batch * p.groups;
  const int threads = threads_for(8.0 * planes * og * taps * pixels, planes * out_h);
  const int64_t bands = std::min(out_h, (4 * threads + planes - 1) / planes);
  const int64_t band_rows = (out_h + bands - 1) / bands;
  const int64_t band_in_rows = (band_rows - 1) * p.stride_h + p.kernel_h;
  const RowLayout layout(p, band_in_rows);
  order_taps(p, layout, weight, scratch);
  // Per thread: the band's input rows of the group's channels, zero padding around them.
  // (+ 8: a partial vector of outputs reads up to 8 floats past the last row)
  scratch->rows.reserve(threads, cg * layout.channel_stride + 8);
  const int64_t sw = p.stride_w;
  parallel_for(threads, planes * bands, [&](int64_t item, int thread) {
    const int64_t plane = item / bands, band = item % bands;
    const int64_t b = plane / p.groups, g = plane % p.groups;
    const int64_t y0 = band * band_rows, y1 = std::min(out_h, y0 + band_rows);
    if (y0 >= y1) return;
    const int64_t first = y0 * p.stride_h - p.pad_h, rows = (y1 - 1 - y0) * p.stride_h + p.kernel_h;
    float* padded = scratch->rows.get(thread);
    for (int64_t c = 0; c < cg; ++c) {
      const float* src = x + ((b * p.in_channels + g * cg + c) * p.in_h) * p.in_w;
      for (int64_t r = 0; r < rows; ++r) {
        float* dst = padded + c * layout.channel_stride + r * layout.row_stride;
        const int64_t iy = first + r;
        if (iy < 0 || iy >= p.in_h) {
          std::fill(dst, dst + layout.row_stride, 0.0f);
          continue;
        }
        const float* line = src + iy * p.in_w;
        if (sw == 1) {
          std::fill(dst, dst + p.pad_w, 0.0f);
          std::copy(line, line + p.in_w, dst + p.pad_w);
          std::fill(dst + p.pad_w + p.in_w, dst + layout.row_stride, 0.0f);
          continue;
        }
        for (int64_t q = 0; q < sw; ++q) {
          // phase[i] = line[q + i * sw - pad_w] for i in [lo, hi), padding around
          float* phase = dst + q * layout.phase_w;
          const int64_t lo =
              std::min(layout.phase_w, std::max<int64_t>(0, (p.pad_w - q + sw - 1) / sw));
          const int64_t hi =
              std::max(lo, std::min(layout.phase_w, (p.in_w + p.pad_w - q + sw - 1) / sw));
          std::fill(phase, phase + lo, 0.0f);
          const float* from = line + q + lo * sw - p.pad_w;
          for (int64_t i = 0; i < hi - lo; ++i) phase[lo + i] = from[i * sw];
          std::fill(phase + hi, phase + layout.phase_w, 0.0f);
        }
      }
    }
    GroupConvRowArgs args;
    args.taps = scratch->taps.data();
    args.tap_count = taps;
    args.weight = scratch->weights.data() + g * og * taps;
    args.out_channels = og;
    args.full_channels = p.order == SumOrder::kGemm ? og - og % 6 : og;
    args.out_w = out_w;
    args.out_channel_stride = pixels;
    float* plane_out = out + (b * p.out_channels + g * og) * pixels;
    for (int64_t oy = y0; oy < y1; ++oy) {
      args.in = padded + (oy - y0) * p.stride_h * layout.row_stride;
      args.paired_from = std::min(out_w, std::max<int64_t>(0, paired_from - oy * out_w));
      args.out = plane_out + oy * out_w;
      isa.group_conv_row(args);
    }
  });
}

}  // namespace bmx
