// The AVX2 instruction set: 8 output pixels per ymm register, popcount by table lookup. AVX2 has
// no popcount instruction: each byte of a XOR w is split into nibbles and vpshufb looks up the
// nibbles' bit counts in a 16-entry table. Since (a ^ w) & 0x0F = (a & 0x0F) ^ (w & 0x0F), the
// nibbles of the activations are split once per word and those of the weights once per call
// (prepare_weights), leaving xor, lookup and add per nibble. Byte counts are summed into 32-bit
// lanes every 31 words, before a byte can overflow.
#include <cstdint>
#include <cstring>

#include "kernels/binary_conv.h"
#include "kernels/conv_isa.h"
#include "kernels/group_conv.h"
#include "kernels/norm_pool.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

namespace bmx {
namespace {
namespace avx2_isa {

#pragma GCC push_options
#pragma GCC target("avx2,fma")

// 16 pixels' words as two vectors of 8: compare, keep the channel's bit, OR it in. (GCC lowers
// the generic 16-float vectors of conv_isa_impl.h to scalar code for AVX2.)
#define BMX_ISA_HAS_PACK16 1
template <bool kThresholds>
inline void pack16(const float* x, int64_t channel_stride, int bits, const float* sign,
                   const float* bias, uint32_t* dst) {
  __m256i acc0 = _mm256_setzero_si256(), acc1 = _mm256_setzero_si256();
  for (int b = 0; b < bits; ++b, x += channel_stride) {
    __m256 v0 = _mm256_loadu_ps(x), v1 = _mm256_loadu_ps(x + 8);
    __m256 threshold = _mm256_setzero_ps();
    if (kThresholds) {
      const __m256 s = _mm256_set1_ps(sign[b]);
      v0 = _mm256_mul_ps(v0, s);
      v1 = _mm256_mul_ps(v1, s);
      threshold = _mm256_set1_ps(bias[b]);
    }
    // _CMP_GE_OQ: false for NaN, as x >= t in C++.
    const __m256i bit = _mm256_set1_epi32(static_cast<int>(1u << b));
    const __m256i set0 = _mm256_castps_si256(_mm256_cmp_ps(v0, threshold, _CMP_GE_OQ));
    const __m256i set1 = _mm256_castps_si256(_mm256_cmp_ps(v1, threshold, _CMP_GE_OQ));
    acc0 = _mm256_or_si256(acc0, _mm256_and_si256(set0, bit));
    acc1 = _mm256_or_si256(acc1, _mm256_and_si256(set1, bit));
  }
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), acc0);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + 8), acc1);
}

#include "kernels/conv_isa_impl.h"
#include "kernels/norm_pool_impl.h"

// group_conv_impl.h's rows, V (1 or 2) vectors of 8 outputs at a time: the chains of up to 6 full
// channels (V = 2: 12 accumulators, enough to cover the latency of the fused multiply-adds), then
// the tail channels' two chains of rounded products and sums, one channel at a time. Named
// accumulators, as in tile() below: GCC keeps arrays of them on the stack.
#define BMX_ISA_HAS_GROUP_CONV_VEC 1
#define BMX_GROUP_CHAIN(c)                                                  \
  if (C > c) {                                                              \
    const __m256 wc = _mm256_broadcast_ss(w + c * taps + k);                \
    acc##c##_0 = _mm256_fmadd_ps(x0, wc, acc##c##_0);                       \
    if (V > 1) acc##c##_1 = _mm256_fmadd_ps(x1, wc, acc##c##_1);            \
  }
#define BMX_GROUP_STORE(c)                                                  \
  if (C > c) {                                                              \
    store_outputs(out + c * a.out_channel_stride, acc##c##_0, count);        \
    if (V > 1) _mm256_storeu_ps(out + c * a.out_channel_stride + 8, acc##c##_1); \
  }

// The first `count` (1 .. 8) lanes of v to out.
inline void store_outputs(float* out, __m256 v, int count) {
  if (count == 8) {
    _mm256_storeu_ps(out, v);
    return;
  }
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  _mm256_maskstore_ps(out, _mm256_cmpgt_epi32(_mm256_set1_epi32(count), lane), v);
}
// V = 2: 16 outputs; V = 1: the first `count` of 8 (lanes past them read the scratch's slack).
template <int V, int C>
inline void group_chains(const GroupConvRowArgs& a, const float* in, const float* w,
                         int64_t taps, float* out, int count) {
  const __m256 zero = _mm256_setzero_ps();
  __m256 acc0_0 = zero, acc0_1 = zero, acc1_0 = zero, acc1_1 = zero, acc2_0 = zero,
         acc2_1 = zero, acc3_0 = zero, acc3_1 = zero, acc4_0 = zero, acc4_1 = zero,
         acc5_0 = zero, acc5_1 = zero;
  for (int64_t k = 0; k < taps; ++k) {
    const float* at = in + a.taps[k];
    const __m256 x0 = _mm256_loadu_ps(at);
    const __m256 x1 = V > 1 ? _mm256_loadu_ps(at + 8) : zero;
    BMX_GROUP_CHAIN(0) BMX_GROUP_CHAIN(1) BMX_GROUP_CHAIN(2)
    BMX_GROUP_CHAIN(3) BMX_GROUP_CHAIN(4) BMX_GROUP_CHAIN(5)
  }
  BMX_GROUP_STORE(0) BMX_GROUP_STORE(1) BMX_GROUP_STORE(2)
  BMX_GROUP_STORE(3) BMX_GROUP_STORE(4) BMX_GROUP_STORE(5)
}
#undef BMX_GROUP_CHAIN
#undef BMX_GROUP_STORE

template <int V>
inline void group_pairs(const GroupConvRowArgs& a, const float* in, const float* w,
                        float* out, int count) {
  // `next` takes the next tap, then the two swap: even and odd taps alternate between them.
  const __m256 zero = _mm256_setzero_ps();
  __m256 next0 = zero, next1 = zero, other0 = zero, other1 = zero;
  for (int64_t k = 0; k < a.tap_count; ++k) {
    const float* at = in + a.taps[k];
    const __m256 wk = _mm256_broadcast_ss(w + k);
    const __m256 sum0 = _mm256_add_ps(next0, _mm256_mul_ps(_mm256_loadu_ps(at), wk));
    next0 = other0;
    other0 = sum0;
    if (V > 1) {
      const __m256 sum1 = _mm256_add_ps(next1, _mm256_mul_ps(_mm256_loadu_ps(at + 8), wk));
      next1 = other1;
      other1 = sum1;
    }
  }
  store_outputs(out, _mm256_add_ps(next0, other0), count);
  if (V > 1) _mm256_storeu_ps(out + 8, _mm256_add_ps(next1, other1));
}

template <int V>
inline void group_conv_vec(const GroupConvRowArgs& a, int64_t ox, int count) {
  const int64_t taps = a.tap_count;
  const float* in = a.in + ox;
  int64_t j = 0;
  for (; j + 6 <= a.full_channels; j += 6) {
    group_chains<V, 6>(a, in, a.weight + j * taps, taps, a.out + j * a.out_channel_stride + ox,
                       count);
  }
  const float* w = a.weight + j * taps;
  float* out = a.out + j * a.out_channel_stride + ox;
  switch (a.full_channels - j) {
    case 1: group_chains<V, 1>(a, in, w, taps, out, count); break;
    case 2: group_chains<V, 2>(a, in, w, taps, out, count); break;
    case 3: group_chains<V, 3>(a, in, w, taps, out, count); break;
    case 4: group_chains<V, 4>(a, in, w, taps, out, count); break;
    case 5: group_chains<V, 5>(a, in, w, taps, out, count); break;
    default: break;
  }
  for (j = a.full_channels; j < a.out_channels; ++j) {
    group_pairs<V>(a, in, a.weight + j * taps, a.out + j * a.out_channel_stride + ox, count);
  }
}

#include "kernels/group_conv_impl.h"

// A tile is one vector of 8 pixels x 8 output channels: 8 byte counters, the activation's two
// nibble vectors, two weight broadcasts, the table and a temporary fit the 16 ymm registers
// (two vectors of pixels x 4 channels would need more and spill).
constexpr int kLanes = 8;
constexpr int kChannels = 8;
constexpr int64_t kFlushWords = 31;  // 31 words x at most 8 per byte < 256

// prepared[2k] = low nibbles, prepared[2k + 1] = high nibbles of weight word k.
void prepare_weights(const uint32_t* weights, int64_t count, uint32_t* prepared) {
  for (int64_t i = 0; i < count; ++i) {
    prepared[2 * i] = weights[i] & 0x0F0F0F0Fu;
    prepared[2 * i + 1] = (weights[i] >> 4) & 0x0F0F0F0Fu;
  }
}

inline __m256i sum_bytes_to_lanes(__m256i bytes) {
  const __m256i pairs = _mm256_maddubs_epi16(bytes, _mm256_set1_epi8(1));
  return _mm256_madd_epi16(pairs, _mm256_set1_epi16(1));
}

// Named counters (arrays of them end up on the stack); channels past P compile away.
#define BMX_CHANNEL_STEP(p)                                                                    \
  if (P > p) {                                                                                 \
    const uint32_t* w = a.weights + p * weight_stride + 2 * k;                                \
    const __m256i lo_w = _mm256_xor_si256(lo, _mm256_set1_epi32(static_cast<int>(w[0])));    \
    const __m256i hi_w = _mm256_xor_si256(hi, _mm256_set1_epi32(static_cast<int>(w[1])));    \
    bytes##p = _mm256_add_epi8(bytes##p, _mm256_shuffle_epi8(table, lo_w));                  \
    bytes##p = _mm256_add_epi8(bytes##p, _mm256_shuffle_epi8(table, hi_w));                  \
  }
#define BMX_CHANNEL_FLUSH(p) \
  if (P > p) total##p = _mm256_add_epi32(total##p, sum_bytes_to_lanes(bytes##p));
#define BMX_CHANNEL_STORE(p) \
  if (P > p) _mm256_storeu_si256(reinterpret_cast<__m256i*>(a.counts + p * kLanes), total##p);

template <int P>
inline void tile(const TileArgs& a) {
  static_assert(P <= 8, "the named counters cover 8 channels");
  const __m256i table = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                         0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
  const __m256i nibble = _mm256_set1_epi8(0x0F);
  const __m256i zero = _mm256_setzero_si256();
  __m256i total0 = zero, total1 = zero, total2 = zero, total3 = zero;
  __m256i total4 = zero, total5 = zero, total6 = zero, total7 = zero;
  const int64_t weight_stride = 2 * a.words;
  for (int64_t k0 = 0; k0 < a.words; k0 += kFlushWords) {
    const int64_t k1 = k0 + kFlushWords < a.words ? k0 + kFlushWords : a.words;
    __m256i bytes0 = zero, bytes1 = zero, bytes2 = zero, bytes3 = zero;
    __m256i bytes4 = zero, bytes5 = zero, bytes6 = zero, bytes7 = zero;
    for (int64_t k = k0; k < k1; ++k) {
      const __m256i word =
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.act + a.offsets[k]));
      const __m256i lo = _mm256_and_si256(word, nibble);
      const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(word, 4), nibble);
      BMX_CHANNEL_STEP(0) BMX_CHANNEL_STEP(1) BMX_CHANNEL_STEP(2) BMX_CHANNEL_STEP(3)
      BMX_CHANNEL_STEP(4) BMX_CHANNEL_STEP(5) BMX_CHANNEL_STEP(6) BMX_CHANNEL_STEP(7)
    }
    BMX_CHANNEL_FLUSH(0) BMX_CHANNEL_FLUSH(1) BMX_CHANNEL_FLUSH(2) BMX_CHANNEL_FLUSH(3)
    BMX_CHANNEL_FLUSH(4) BMX_CHANNEL_FLUSH(5) BMX_CHANNEL_FLUSH(6) BMX_CHANNEL_FLUSH(7)
  }
  BMX_CHANNEL_STORE(0) BMX_CHANNEL_STORE(1) BMX_CHANNEL_STORE(2) BMX_CHANNEL_STORE(3)
  BMX_CHANNEL_STORE(4) BMX_CHANNEL_STORE(5) BMX_CHANNEL_STORE(6) BMX_CHANNEL_STORE(7)
}

#undef BMX_CHANNEL_STEP
#undef BMX_CHANNEL_FLUSH
#undef BMX_CHANNEL_STORE

void tile_any(const TileArgs& a) {
  switch (a.channels) {
    case 1: tile<1>(a); break;
    case 2: tile<2>(a); break;
    case 3: tile<3>(a); break;
    case 4: tile<4>(a); break;
    case 5: tile<5>(a); break;
    case 6: tile<6>(a); break;
    case 7: tile<7>(a); break;
    default: tile<8>(a); break;
  }
}

#pragma GCC pop_options

}  // namespace avx2_isa
}  // namespace

const IsaKernels* avx2_kernels() {
  static const IsaKernels kernels{"avx2-vpshufb", avx2_isa::kLanes, avx2_isa::kChannels, 2,
                                  avx2_isa::prepare_weights, avx2_isa::tile_any,
                                  avx2_isa::impl::pack, avx2_isa::impl::pack_span,
                                  avx2_isa::impl::finish,
                                  avx2_isa::norm_impl::norm_relu_pool_rows,
                                 avx2_isa::group_impl::group_conv_row};
  return &kernels;
}

}  // namespace bmx

#else

namespace bmx {
const IsaKernels* avx2_kernels() { return nullptr; }
}  // namespace bmx

#endif
