// The AVX-512 instruction set with VPOPCNTDQ: 16 output pixels per zmm register and a popcount
// instruction per 32-bit lane. A tile is 4 vectors (64 pixels) x 6 output channels: 24
// accumulators, 4 activation vectors and the weight broadcast fill the 32 zmm registers, each
// activation vector serves 6 channels and each broadcast weight word 64 pixels.
#include <cstdint>
#include <cstring>

#include "kernels/binary_conv.h"
#include "kernels/conv_isa.h"
#include "kernels/norm_pool.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

namespace bmx {
namespace {
namespace avx512_isa {

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512vpopcntdq")

// 16 pixels' words: one compare into a mask and one masked OR per channel.
#define BMX_ISA_HAS_PACK16 1
template <bool kThresholds>
inline void pack16(const float* x, int64_t channel_stride, int bits, const float* sign,
                   const float* bias, uint32_t* dst) {
  __m512i acc = _mm512_setzero_si512();
  for (int b = 0; b < bits; ++b, x += channel_stride) {
    const __m512 v = _mm512_loadu_ps(x);
    // _CMP_GE_OQ: false for NaN, as x >= t in C++.
    const __mmask16 set =
        kThresholds ? _mm512_cmp_ps_mask(_mm512_mul_ps(v, _mm512_set1_ps(sign[b])),
                                         _mm512_set1_ps(bias[b]), _CMP_GE_OQ)
                    : _mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_GE_OQ);
    acc = _mm512_mask_or_epi32(acc, set, acc, _mm512_set1_epi32(static_cast<int>(1u << b)));
  }
  _mm512_storeu_si512(dst, acc);
}

#include "kernels/conv_isa_impl.h"
#include "kernels/norm_pool_impl.h"

constexpr int kVectors = 4;
constexpr int kLanes = 16 * kVectors;
constexpr int kChannels = 6;
static_assert(kLanes <= kMaxTileLanes, "the planar buffer's slack must cover a tile");

// Named accumulators (GCC keeps an array of 24 zmm accumulators on the stack): channel p of the
// tile adds into acc<p>0 .. acc<p>3; channels past P compile away.
#define BMX_CHANNEL_STEP(p)                                                                   \
  if (P > p) {                                                                                \
    const __m512i w = _mm512_set1_epi32(static_cast<int>(a.weights[p * a.words + k]));      \
    acc##p##0 = _mm512_add_epi32(acc##p##0, _mm512_popcnt_epi32(_mm512_xor_si512(x0, w)));  \
    acc##p##1 = _mm512_add_epi32(acc##p##1, _mm512_popcnt_epi32(_mm512_xor_si512(x1, w)));  \
    acc##p##2 = _mm512_add_epi32(acc##p##2, _mm512_popcnt_epi32(_mm512_xor_si512(x2, w)));  \
    acc##p##3 = _mm512_add_epi32(acc##p##3, _mm512_popcnt_epi32(_mm512_xor_si512(x3, w)));  \
  }
#define BMX_CHANNEL_STORE(p)                                                     \
  if (P > p) {                                                                   \
    _mm512_storeu_si512(a.counts + p * kLanes + 0, acc##p##0);                  \
    _mm512_storeu_si512(a.counts + p * kLanes + 16, acc##p##1);                 \
    _mm512_storeu_si512(a.counts + p * kLanes + 32, acc##p##2);                 \
    _mm512_storeu_si512(a.counts + p * kLanes + 48, acc##p##3);                 \
  }
#define BMX_CHANNEL_ZERO(p) \
  __m512i acc##p##0 = zero, acc##p##1 = zero, acc##p##2 = zero, acc##p##3 = zero;

template <int P>
inline void tile(const TileArgs& a) {
  static_assert(kVectors == 4 && P <= 6, "the named accumulators cover 6 x 4 vectors");
  const __m512i zero = _mm512_setzero_si512();
  BMX_CHANNEL_ZERO(0) BMX_CHANNEL_ZERO(1) BMX_CHANNEL_ZERO(2)
  BMX_CHANNEL_ZERO(3) BMX_CHANNEL_ZERO(4) BMX_CHANNEL_ZERO(5)
  for (int64_t k = 0; k < a.words; ++k) {
    const uint32_t* x = a.act + a.offsets[k];
    const __m512i x0 = _mm512_loadu_si512(x);
    const __m512i x1 = _mm512_loadu_si512(x + 16);
    const __m512i x2 = _mm512_loadu_si512(x + 32);
    const __m512i x3 = _mm512_loadu_si512(x + 48);
    BMX_CHANNEL_STEP(0) BMX_CHANNEL_STEP(1) BMX_CHANNEL_STEP(2)
    BMX_CHANNEL_STEP(3) BMX_CHANNEL_STEP(4) BMX_CHANNEL_STEP(5)
  }
  BMX_CHANNEL_STORE(0) BMX_CHANNEL_STORE(1) BMX_CHANNEL_STORE(2)
  BMX_CHANNEL_STORE(3) BMX_CHANNEL_STORE(4) BMX_CHANNEL_STORE(5)
}

#undef BMX_CHANNEL_STEP
#undef BMX_CHANNEL_STORE
#undef BMX_CHANNEL_ZERO

void tile_any(const TileArgs& a) {
  switch (a.channels) {
    case 1: tile<1>(a); break;
    case 2: tile<2>(a); break;
    case 3: tile<3>(a); break;
    case 4: tile<4>(a); break;
    case 5: tile<5>(a); break;
    default: tile<6>(a); break;
  }
}

// Writes a tile straight from its 16-lane count vectors with masked stores: the lanes of one
// vector that fall on one output row are consecutive in the output too, so each (vector, row)
// piece is one masked store at the address of the vector's lane 0 shifted to that row. Tiles with
// a post-op take the generic path (compiled for AVX-512 too).
void finish(const FinishArgs& f) {
  if (f.pixel_stride != 1 || f.lanes != kLanes || f.post.active()) {
    impl::finish(f);
    return;
  }
  struct Piece {
    int vector;
    __mmask16 mask;
    int64_t offset;  // output index of the vector's lane 0, as if the row continued
  };
  Piece pieces[kLanes];
  int n = 0;
  for (int v = 0; v < kVectors; ++v) {
    const int64_t q0 = f.first_lane + 16 * v;
    int64_t y = q0 / f.plane_w, x = q0 % f.plane_w;
    for (int lane = 0; lane < 16 && y < f.out_h;) {
      const int run = static_cast<int>(f.plane_w - x < 16 - lane ? f.plane_w - x : 16 - lane);
      const int valid = static_cast<int>(x < f.out_w ? (f.out_w - x < run ? f.out_w - x : run) : 0);
      if (valid > 0) {
        pieces[n].vector = v;
        pieces[n].mask = static_cast<__mmask16>(((1u << valid) - 1u) << lane);
        pieces[n].offset = y * f.out_w + x - lane;
        ++n;
      }
      lane += run;
      ++y;
      x = 0;
    }
  }
  const __m512i fan_in = _mm512_set1_epi32(static_cast<int>(f.fan_in));
  for (int c = 0; c < f.channels; ++c) {
    float* out = f.out + c * f.channel_stride;
    const float* addend = f.addend == nullptr ? nullptr : f.addend + c * f.channel_stride;
    __m512 values[kVectors];
    for (int v = 0; v < kVectors; ++v) {
      const __m512i counts = _mm512_loadu_si512(f.counts + c * kLanes + 16 * v);
      if (f.mode == OutputMode::kAgreements) {
        values[v] = _mm512_cvtepi32_ps(_mm512_sub_epi32(fan_in, counts));
      } else {
        values[v] = _mm512_cvtepi32_ps(
            _mm512_sub_epi32(fan_in, _mm512_add_epi32(counts, counts)));
        if (f.mode == OutputMode::kScaledDot) {
          values[v] = _mm512_mul_ps(values[v], _mm512_set1_ps(f.scale[c]));
        }
      }
    }
    for (int i = 0; i < n; ++i) {
      float* at = out + pieces[i].offset;
      __m512 value = values[pieces[i].vector];
      if (addend != nullptr) {
        value = _mm512_add_ps(_mm512_maskz_loadu_ps(pieces[i].mask, addend + pieces[i].offset),
                              value);
      }
      _mm512_mask_storeu_ps(at, pieces[i].mask, value);
    }
  }
}

#pragma GCC pop_options

}  // namespace avx512_isa
}  // namespace

const IsaKernels* avx512_kernels() {
  static const IsaKernels kernels{"avx512-vpopcntdq", avx512_isa::kLanes, avx512_isa::kChannels,
                                  1, nullptr, avx512_isa::tile_any, avx512_isa::impl::pack,
                                  avx512_isa::impl::pack_span, avx512_isa::finish,
                                  avx512_isa::norm_impl::norm_relu_pool_rows,
                                  // every AVX-512 CPU has AVX2 and FMA
                                  avx2_kernels()->group_conv_row};
  return &kernels;
}

}  // namespace bmx

#else

namespace bmx {
const IsaKernels* avx512_kernels() { return nullptr; }
}  // namespace bmx

#endif
