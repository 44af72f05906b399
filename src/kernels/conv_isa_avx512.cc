// The AVX-512 instruction set with VPOPCNTDQ: 16 output pixels per zmm register and a popcount
// instruction per 32-bit lane. A tile is 4 vectors (64 pixels) x 6 output channels: 24
// accumulators, 4 activation vectors and the weight broadcast fill the 32 zmm registers, each
// activation vector serves 6 channels and each broadcast weight word 64 pixels.
#include <cstdint>
#include <cstring>

#include "kernels/binary_conv.h"
#include "kernels/conv_isa.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

namespace bmx {
namespace {
namespace avx512_isa {

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512vpopcntdq")

#include "kernels/conv_isa_impl.h"

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

#pragma GCC pop_options

}  // namespace avx512_isa
}  // namespace

const IsaKernels* avx512_kernels() {
  static const IsaKernels kernels{"avx512-vpopcntdq", avx512_isa::kLanes, avx512_isa::kChannels,
                                  1, nullptr, avx512_isa::tile_any, avx512_isa::impl::pack,
                                  avx512_isa::impl::finish};
  return &kernels;
}

}  // namespace bmx

#else

namespace bmx {
const IsaKernels* avx512_kernels() { return nullptr; }
}  // namespace bmx

#endif
