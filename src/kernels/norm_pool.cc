#include "kernels/norm_pool.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/conv_isa.h"

namespace bmx {
namespace {

// One channel plane: normalize and rectify it into `normalized` (ReLU first: the pooled maximum
// of rectified values equals the rectified maximum, and every value is then >= 0, so padding,
// -inf in MXNet, never wins), then pool separably: the maximum over a window's rows into `rows`,
// then over its columns. A 1x1 window (BatchNorm -> ReLU alone) writes straight to `out`.
void plane(const float* x, float mean, float scale, float beta, const NormPoolParams& p,
           float* normalized, float* rows, float* out) {
  const int64_t h = p.in_h, w = p.in_w, n = h * w;
  const bool identity = p.kernel_h == 1 && p.kernel_w == 1 && p.stride_h == 1 &&
                        p.stride_w == 1 && p.pad_h == 0 && p.pad_w == 0;
  if (identity) normalized = out;
  if (!p.normalize) {
    for (int64_t i = 0; i < n; ++i) normalized[i] = x[i] > 0.0f ? x[i] : 0.0f;
  } else {
    for (int64_t i = 0; i < n; ++i) {
      // Separate roundings, as oneDNN computes it (the library is built with -ffp-contract=off).
      const float centered = x[i] - mean;
      const float scaled = centered * scale;
      const float y = scaled + beta;
      normalized[i] = y > 0.0f ? y : 0.0f;
    }
  }
  if (identity) return;
  const int64_t out_h = p.out_h(), out_w = p.out_w();
  for (int64_t oy = 0; oy < out_h; ++oy) {
    const int64_t y0 = std::max<int64_t>(oy * p.stride_h - p.pad_h, 0);
    const int64_t y1 = std::min<int64_t>(oy * p.stride_h - p.pad_h + p.kernel_h, h);
    const float* first = normalized + y0 * w;
    for (int64_t xx = 0; xx < w; ++xx) rows[xx] = first[xx];
    for (int64_t yy = y0 + 1; yy < y1; ++yy) {
      const float* row = normalized + yy * w;
      for (int64_t xx = 0; xx < w; ++xx) rows[xx] = row[xx] > rows[xx] ? row[xx] : rows[xx];
    }
    float* dst = out + oy * out_w;
    if (p.kernel_w == 2 && p.stride_w == 2 && p.pad_w == 0) {
      for (int64_t ox = 0; ox < out_w; ++ox) {
        const float a = rows[2 * ox], b = rows[2 * ox + 1];
        dst[ox] = b > a ? b : a;
      }
      continue;
    }
    for (int64_t ox = 0; ox < out_w; ++ox) {
      const int64_t x0 = std::max<int64_t>(ox * p.stride_w - p.pad_w, 0);
      const int64_t x1 = std::min<int64_t>(ox * p.stride_w - p.pad_w + p.kernel_w, w);
      float best = rows[x0];
      for (int64_t xx = x0 + 1; xx < x1; ++xx) best = rows[xx] > best ? rows[xx] : best;
      dst[ox] = best;
    }
  }
}

}  // namespace

void norm_relu_pool(const float* x, const float* gamma, const float* beta, const float* mean,
                    const float* var, const NormPoolParams& p, float* out,
                    ThreadBuffers<float>* buffers) {
  ThreadBuffers<float> call_buffers;
  if (buffers == nullptr) buffers = &call_buffers;
  const int64_t planes = p.batch * p.channels;
  const int64_t in_plane = p.in_h * p.in_w, out_plane = p.out_h() * p.out_w();
  const int threads = threads_for_floats(static_cast<double>(planes) * in_plane, planes);
  // Per thread: the normalized plane, then a row of window maxima.
  buffers->reserve(threads, in_plane + p.in_w);
  parallel_for(threads, planes, [&](int64_t i, int thread) {
    const int64_t c = i % p.channels;
    float* normalized = buffers->get(thread);
    if (!p.normalize) {
      plane(x + i * in_plane, 0.0f, 1.0f, 0.0f, p, normalized, normalized + in_plane,
            out + i * out_plane);
      return;
    }
    const float g = p.fix_gamma ? 1.0f : gamma[c];
    const float scale = batchnorm_scale(g, var[c], p.eps);
    plane(x + i * in_plane, mean[c], scale, beta[c], p, normalized, normalized + in_plane,
          out + i * out_plane);
  });
}

}  // namespace bmx
