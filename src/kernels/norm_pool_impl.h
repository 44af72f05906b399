// BatchNorm -> ReLU -> max pooling of a band of one channel plane (norm_pool.h), written once in
// plain loops and compiled by each conv_isa_*.cc for its instruction set: included inside that
// file's target pragma and its own namespace, under the rules of conv_isa_impl.h (no std::
// templates; no include guard). Not a public header.
//
// Exactness: the normalization keeps oneDNN's three roundings (the library is built with
// -ffp-contract=off, so no fused multiply-add even where the set has one). After the ReLU every
// value is +0.0 or positive and none is NaN (a NaN fails y > 0 and becomes 0), so the maxima
// may be taken in any order and grouping: the pooling below is free to go row-wise and
// column-wise in whatever order vectorizes.

namespace norm_impl {

using bmx::NormPoolArgs;
using bmx::NormPoolParams;

inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }
inline float max_f(float a, float b) { return b > a ? b : a; }

// out[i] = relu((x[i] - mean) * scale + beta), each operation rounded to float.
inline void norm_relu(const float* __restrict x, int64_t n, float mean, float scale, float beta,
                      float* __restrict out) {
  for (int64_t i = 0; i < n; ++i) {
    const float centered = x[i] - mean;
    const float scaled = centered * scale;
    const float y = scaled + beta;
    out[i] = y > 0.0f ? y : 0.0f;
  }
}

// out[i] = max(a[i], b[i]).
inline void max_rows(const float* __restrict a, const float* __restrict b, int64_t n,
                     float* __restrict out) {
  for (int64_t i = 0; i < n; ++i) out[i] = max_f(a[i], b[i]);
}

// acc[i] = max(acc[i], row[i]).
inline void max_into(float* __restrict acc, const float* __restrict row, int64_t n) {
  for (int64_t i = 0; i < n; ++i) acc[i] = max_f(acc[i], row[i]);
}

// The maximum of row[x0 .. x1) and 0: a window clipped by the padding (which never wins), or
// of padding only (0, possible only when pad >= kernel).
inline float clipped_max(const float* row, int64_t x0, int64_t x1) {
  float best = 0.0f;
  for (int64_t x = x0; x < x1; ++x) best = max_f(best, row[x]);
  return best;
}

// The maxima over the windows of one row of row maxima (w floats) into out_w outputs.
inline void pool_columns(const float* __restrict row, int64_t w, const NormPoolParams& p,
                         float* __restrict dst) {
  const int64_t out_w = p.out_w();
  if (p.kernel_w == 2 && p.stride_w == 2 && p.pad_w == 0) {  // transitions: 2x2/2
    for (int64_t ox = 0; ox < out_w; ++ox) dst[ox] = max_f(row[2 * ox], row[2 * ox + 1]);
    return;
  }
  // Any other window: the windows that lie inside the row vectorize (the stem's 3x3/2, pad 1,
  // has all but the first inside); the others are clipped one by one.
  const int64_t kw = p.kernel_w, sw = p.stride_w, pw = p.pad_w;
  int64_t ox = 0;
  for (; ox < out_w && ox * sw - pw < 0; ++ox) {
    dst[ox] = clipped_max(row, 0, min64(ox * sw - pw + kw, w));
  }
  int64_t inside_end = ox;
  while (inside_end < out_w && inside_end * sw - pw + kw <= w) ++inside_end;
  if (kw == 3 && sw == 2) {  // the stem's: a constant stride vectorizes
    const float* first = row + ox * 2 - pw;
    for (int64_t o = 0; o < inside_end - ox; ++o) {
      dst[ox + o] = max_f(max_f(first[2 * o], first[2 * o + 1]), first[2 * o + 2]);
    }
  } else {
    for (int64_t o = ox; o < inside_end; ++o) {
      const float* win = row + o * sw - pw;
      float best = win[0];
      for (int64_t x = 1; x < kw; ++x) best = max_f(best, win[x]);
      dst[o] = best;
    }
  }
  for (ox = inside_end; ox < out_w; ++ox) {
    dst[ox] = clipped_max(row, max64(ox * sw - pw, 0), min64(ox * sw - pw + kw, w));
  }
}

inline void norm_relu_pool_rows(const NormPoolArgs& a) {
  const NormPoolParams& p = *a.params;
  const int64_t h = p.in_h, w = p.in_w, out_w = p.out_w();
  const int64_t kh = p.kernel_h, sh = p.stride_h, ph = p.pad_h;
  if (kh == 1 && p.kernel_w == 1 && sh == 1 && p.stride_w == 1 && ph == 0 && p.pad_w == 0) {
    // BatchNorm -> ReLU alone (a 1x1 window): straight into the output rows.
    norm_relu(a.x + a.out_row_begin * w, (a.out_row_end - a.out_row_begin) * w, a.mean,
              a.scale, a.beta, a.out + a.out_row_begin * out_w);
    return;
  }
  // The input rows the band's windows cover, normalized once each.
  const int64_t first = max64(a.out_row_begin * sh - ph, 0);
  const int64_t last = min64((a.out_row_end - 1) * sh - ph + kh, h);
  if (first < last) norm_relu(a.x + first * w, (last - first) * w, a.mean, a.scale, a.beta,
                              a.normalized);
  float* const window_max = a.normalized + (last > first ? last - first : 0) * w;
  for (int64_t oy = a.out_row_begin; oy < a.out_row_end; ++oy) {
    const int64_t y0 = max64(oy * sh - ph, 0), y1 = min64(oy * sh - ph + kh, h);
    float* dst = a.out + oy * out_w;
    if (y0 >= y1) {  // a window of padding only (possible only when pad >= kernel)
      for (int64_t ox = 0; ox < out_w; ++ox) dst[ox] = 0.0f;
      continue;
    }
    const float* row = a.normalized + (y0 - first) * w;
    if (y1 - y0 > 1) {
      max_rows(row, row + w, w, window_max);
      for (int64_t y = y0 + 2; y < y1; ++y) {
        max_into(window_max, a.normalized + (y - first) * w, w);
      }
      row = window_max;
    }
    pool_columns(row, w, p, dst);
  }
}

}  // namespace norm_impl
