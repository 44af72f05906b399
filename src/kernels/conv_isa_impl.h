// Packing and output writing of binary convolution, written once with GCC vector extensions and
// compiled by each conv_isa_*.cc for its instruction set (include it inside that file's target
// pragma and its own namespace: the compiler then vectorizes it for the set). Not a public header.
//
// No std:: templates below: an instantiation compiled inside a SIMD target region is a weak symbol
// the linker may pick for baseline code too, which would then run SIMD instructions on a CPU
// without them. Everything here lives in the including file's own namespace instead.
// (No include guard: each conv_isa_*.cc includes it once, inside its own namespace, after
// including <cstring>, binary_conv.h and conv_isa.h itself.)

namespace impl {

using bmx::ConvParams;
using bmx::FinishArgs;
using bmx::OutputMode;
using bmx::PackArgs;

inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }
inline void fill_words(uint32_t* dst, int64_t n, uint32_t value) {
  for (int64_t i = 0; i < n; ++i) dst[i] = value;
}

typedef float F32x16 __attribute__((vector_size(64)));
typedef int32_t I32x16 __attribute__((vector_size(64)));

#ifndef BMX_ISA_HAS_PACK16
// The words of 16 consecutive pixels (see pack_span). An instruction set may bring its own
// (define BMX_ISA_HAS_PACK16 and pack16 before including this file).
template <bool kThresholds>
inline void pack16(const float* x, int64_t channel_stride, int bits, const float* sign,
                   const float* bias, uint32_t* dst) {
  I32x16 acc = {};
  for (int b = 0; b < bits; ++b, x += channel_stride) {
    F32x16 v;
    std::memcpy(&v, x, sizeof v);
    const I32x16 set = kThresholds ? (v * sign[b] >= bias[b]) : (v >= 0.0f);
    acc |= set & static_cast<int32_t>(1u << b);
  }
  std::memcpy(dst, &acc, sizeof acc);
}
#endif

// The bit rule of bitpack.h, written once: dst[i * dst_stride] = the word of `bits` channels at
// pixel i < count, channel b of pixel i at x[b * channel_stride + i * pixel_stride]: bit = x >= 0,
// or sign[b] * x >= bias[b] with thresholds (exact: sign is +1, -1 or 0; NaN compares false,
// i.e. -1); bits past `bits` are 0. Contiguous pixels go 16 at a time through pack16, the last
// vector overlapping the one before instead of falling back to scalar code.
template <bool kThresholds>
inline void pack_span_as(const float* x, int64_t channel_stride, int64_t pixel_stride, int bits,
                         const float* sign, const float* bias, int64_t count, uint32_t* dst,
                         int64_t dst_stride) {
  if (count < 16 || pixel_stride != 1) {
    for (int64_t i = 0; i < count; ++i) {
      uint32_t word = 0;
      for (int b = 0; b < bits; ++b) {
        const float v = x[b * channel_stride + i * pixel_stride];
        const bool set = kThresholds ? (v * sign[b] >= bias[b]) : (v >= 0.0f);
        word |= set ? (1u << b) : 0u;
      }
      dst[i * dst_stride] = word;
    }
    return;
  }
  for (int64_t i = 0;; i += 16) {
    if (i + 16 > count) i = count - 16;
    if (dst_stride == 1) {
      pack16<kThresholds>(x + i, channel_stride, bits, sign, bias, dst + i);
    } else {
      uint32_t words[16];
      pack16<kThresholds>(x + i, channel_stride, bits, sign, bias, words);
      for (int l = 0; l < 16; ++l) dst[(i + l) * dst_stride] = words[l];
    }
    if (i + 16 >= count) break;
  }
}

inline void pack_span(const float* x, int64_t channel_stride, int64_t pixel_stride, int bits,
                      const float* sign, const float* bias, int64_t count, uint32_t* dst,
                      int64_t dst_stride) {
  if (sign != nullptr) {
    pack_span_as<true>(x, channel_stride, pixel_stride, bits, sign, bias, count, dst, dst_stride);
  } else {
    pack_span_as<false>(x, channel_stride, pixel_stride, bits, sign, bias, count, dst,
                        dst_stride);
  }
}

template <bool kThresholds>
void pack_words(const PackArgs& a) {
  const ConvParams& p = *a.params;
  const int64_t group_words = p.group_words(), group_channels = p.group_in_channels();
  const int64_t sh = p.stride_h, sw = p.stride_w;
  const int64_t plane_h = p.plane_h(), plane_w = p.plane_w(), plane = p.plane_words();
  const int64_t in_h = p.in_h, in_w = p.in_w, pad_h = p.pad_h, pad_w = p.pad_w;
  uint32_t* packed = a.word_scratch;  // one word per input pixel of the band, before padding
  const int64_t rows = a.row_end - a.row_begin;
  // The padded rows of this band: its input rows, and the padding above / below the image when
  // it is the first / last band (down to the end of the planes).
  const int64_t first = a.row_begin == 0 ? 0 : a.row_begin + pad_h;
  const int64_t last = a.row_end == in_h ? plane_h * sh : a.row_end + pad_h;
  for (int64_t j = a.word_begin; j < a.word_end; ++j) {
    const int64_t g = j / group_words, jj = j % group_words;
    const int64_t c0 = g * group_channels + jj * bmx::kWordBits;
    const int bits = static_cast<int>(min64(bmx::kWordBits, group_channels - jj * bmx::kWordBits));
    const uint32_t pad = p.pad_with_ones ? bmx::low_bits_mask(bits) : 0u;
    // A band of a channel plane is contiguous: pack it as one span of pixels, then pad.
    pack_span_as<kThresholds>(a.x + c0 * a.channel_stride + a.row_begin * in_w, a.channel_stride,
                              1, bits, kThresholds ? a.thr_sign + c0 : nullptr,
                              kThresholds ? a.thr_bias + c0 : nullptr, rows * in_w, packed, 1);
    uint32_t* planes = a.image + j * sh * sw * plane;
    if (sh == 1 && sw == 1) {
      for (int64_t yp = first; yp < last; ++yp) {
        uint32_t* dst = planes + yp * plane_w;
        const int64_t y = yp - pad_h;
        if (y < 0 || y >= in_h) {
          fill_words(dst, plane_w, pad);
          continue;
        }
        fill_words(dst, pad_w, pad);
        std::memcpy(dst + pad_w, packed + (y - a.row_begin) * in_w, in_w * sizeof(uint32_t));
        fill_words(dst + pad_w + in_w, plane_w - pad_w - in_w, pad);
      }
      continue;
    }
    // Padded pixel (yp, xp) goes to phase plane (yp % sh, xp % sw) at (yp / sh, xp / sw).
    for (int64_t yp = first; yp < last; ++yp) {
      const int64_t y = yp - pad_h;
      const bool row_inside = y >= 0 && y < in_h;
      for (int64_t xp = 0; xp < plane_w * sw; ++xp) {
        const int64_t x = xp - pad_w;
        const bool inside = row_inside && x >= 0 && x < in_w;
        planes[((yp % sh) * sw + xp % sw) * plane + (yp / sh) * plane_w + xp / sw] =
            inside ? packed[(y - a.row_begin) * in_w + x] : pad;
      }
    }
  }
}

inline void pack(const PackArgs& a) {
  if (a.thr_sign != nullptr) {
    pack_words<true>(a);
  } else {
    pack_words<false>(a);
  }
}

// One output channel's PostOp.
struct ChannelPost {
  bool relu, norm;
  float mean, scale, beta;
};

// dst[i * stride] = (addend[i * stride] +) the output of counts[i] (after the post-op), i < n.
template <OutputMode kMode, bool kAdd, bool kContiguous, bool kPost>
inline void emit(const int32_t* counts, int64_t n, int32_t fan_in, float scale,
                 const ChannelPost& post, const float* addend, float* dst, int64_t stride) {
  for (int64_t i = 0; i < n; ++i) {
    float v;
    if (kMode == OutputMode::kAgreements) {
      v = static_cast<float>(fan_in - counts[i]);
    } else if (kMode == OutputMode::kDot) {
      v = static_cast<float>(fan_in - 2 * counts[i]);
    } else {
      v = static_cast<float>(fan_in - 2 * counts[i]) * scale;
    }
    if (kPost) {
      if (post.relu) v = v > 0.0f ? v : 0.0f;
      if (post.norm) {
        const float centered = v - post.mean;  // separate roundings (-ffp-contract=off)
        const float scaled = centered * post.scale;
        v = scaled + post.beta;
      }
    }
    const int64_t at = kContiguous ? i : i * stride;
    dst[at] = kAdd ? addend[at] + v : v;
  }
}

// A tile's lanes as runs of pixels of one output row: worked out once per tile, not per channel
// (the divisions cost more than a channel's outputs).
struct LaneRun {
  int64_t lane, valid, at;
};
constexpr int kMaxLaneRuns = 64;  // a run has at least one lane; tiles have at most 32

template <OutputMode kMode, bool kAdd, bool kContiguous, bool kPost>
void finish_as(const FinishArgs& f) {
  const int32_t fan_in = static_cast<int32_t>(f.fan_in);
  LaneRun runs[kMaxLaneRuns];
  int count = 0;
  int64_t lane = 0, q = f.first_lane;
  while (lane < f.lanes && count < kMaxLaneRuns) {
    const int64_t y = q / f.plane_w, x = q % f.plane_w;
    if (y >= f.out_h) break;
    const int64_t run = min64(f.plane_w - x, f.lanes - lane);
    runs[count++] = {lane, max64(0, min64(run, f.out_w - x)), (y * f.out_w + x) * f.pixel_stride};
    lane += run;
    q += run;
  }
  for (int c = 0; c < f.channels; ++c) {
    const int32_t* src = f.counts + c * f.lanes;
    float* out = f.out + c * f.channel_stride;
    const float* addend = kAdd ? f.addend + c * f.channel_stride : nullptr;
    const float scale = kMode == OutputMode::kScaledDot ? f.scale[c] : 1.0f;
    ChannelPost post = {f.post.relu, f.post.scale != nullptr, 0.0f, 1.0f, 0.0f};
    if (post.norm) {
      post.mean = f.post.mean[c];
      post.scale = f.post.scale[c];
      post.beta = f.post.beta[c];
    }
    for (int r = 0; r < count; ++r) {
      emit<kMode, kAdd, kContiguous, kPost>(src + runs[r].lane, runs[r].valid, fan_in, scale,
                                            post, kAdd ? addend + runs[r].at : nullptr,
                                            out + runs[r].at, f.pixel_stride);
    }
  }
}

template <OutputMode kMode, bool kPost>
void finish_post(const FinishArgs& f) {
  const bool contiguous = f.pixel_stride == 1;
  if (f.addend != nullptr) {
    contiguous ? finish_as<kMode, true, true, kPost>(f) : finish_as<kMode, true, false, kPost>(f);
  } else {
    contiguous ? finish_as<kMode, false, true, kPost>(f)
               : finish_as<kMode, false, false, kPost>(f);
  }
}

template <OutputMode kMode>
void finish_mode(const FinishArgs& f) {
  f.post.active() ? finish_post<kMode, true>(f) : finish_post<kMode, false>(f);
}

inline void finish(const FinishArgs& f) {
  switch (f.mode) {
    case OutputMode::kAgreements: finish_mode<OutputMode::kAgreements>(f); break;
    case OutputMode::kDot: finish_mode<OutputMode::kDot>(f); break;
    default: finish_mode<OutputMode::kScaledDot>(f); break;
  }
}

}  // namespace impl

