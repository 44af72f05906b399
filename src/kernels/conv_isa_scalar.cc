// The scalar instruction set: one 32-bit word per popcount (the popcnt instruction where the CPU
// has it, else the portable bit-twiddling count), the baseline every x86-64 CPU and every other
// architecture runs.
#include <cstdint>
#include <cstring>

#include "kernels/binary_conv.h"
#include "kernels/conv_isa.h"
#include "kernels/group_conv.h"
#include "kernels/norm_pool.h"

namespace bmx {
namespace {
namespace scalar_isa {

#include "kernels/conv_isa_impl.h"
#include "kernels/norm_pool_impl.h"
#include "kernels/group_conv_impl.h"

// Output pixels x output channels per tile: 4 x 4 counters stay in general-purpose registers.
constexpr int kLanes = 4;
constexpr int kChannels = 4;

inline uint32_t popcount_portable(uint32_t v) {
  v = v - ((v >> 1) & 0x55555555u);
  v = (v & 0x33333333u) + ((v >> 2) & 0x33333333u);
  v = (v + (v >> 4)) & 0x0F0F0F0Fu;
  return (v * 0x01010101u) >> 24;
}

template <int P>
inline void tile_portable(const TileArgs& a) {
  uint32_t acc[P][kLanes] = {};
  for (int64_t k = 0; k < a.words; ++k) {
    const uint32_t* x = a.act + a.offsets[k];
    for (int p = 0; p < P; ++p) {
      const uint32_t w = a.weights[p * a.words + k];
      for (int l = 0; l < kLanes; ++l) acc[p][l] += popcount_portable(x[l] ^ w);
    }
  }
  for (int p = 0; p < P; ++p) {
    for (int l = 0; l < kLanes; ++l) a.counts[p * kLanes + l] = static_cast<int32_t>(acc[p][l]);
  }
}

void tile_portable_any(const TileArgs& a) {
  switch (a.channels) {
    case 1: tile_portable<1>(a); break;
    case 2: tile_portable<2>(a); break;
    case 3: tile_portable<3>(a); break;
    default: tile_portable<4>(a); break;
  }
}

#if defined(__x86_64__) && defined(__GNUC__)
#define BMX_HAVE_POPCNT_TILE 1
#pragma GCC push_options
#pragma GCC target("popcnt")

template <int P>
inline void tile_popcnt(const TileArgs& a) {
  uint32_t acc[P][kLanes] = {};
  for (int64_t k = 0; k < a.words; ++k) {
    const uint32_t* x = a.act + a.offsets[k];
    for (int p = 0; p < P; ++p) {
      const uint32_t w = a.weights[p * a.words + k];
      for (int l = 0; l < kLanes; ++l) acc[p][l] += __builtin_popcount(x[l] ^ w);
    }
  }
  for (int p = 0; p < P; ++p) {
    for (int l = 0; l < kLanes; ++l) a.counts[p * kLanes + l] = static_cast<int32_t>(acc[p][l]);
  }
}

void tile_popcnt_any(const TileArgs& a) {
  switch (a.channels) {
    case 1: tile_popcnt<1>(a); break;
    case 2: tile_popcnt<2>(a); break;
    case 3: tile_popcnt<3>(a); break;
    default: tile_popcnt<4>(a); break;
  }
}

#pragma GCC pop_options
#endif

}  // namespace scalar_isa
}  // namespace

const IsaKernels& scalar_kernels() {
#ifdef BMX_HAVE_POPCNT_TILE
  __builtin_cpu_init();
  static const IsaKernels popcnt{"scalar-popcnt", scalar_isa::kLanes, scalar_isa::kChannels, 1,
                                 nullptr, scalar_isa::tile_popcnt_any, scalar_isa::impl::pack,
                                 scalar_isa::impl::pack_span, scalar_isa::impl::finish,
                                 scalar_isa::norm_impl::norm_relu_pool_rows,
                                 scalar_isa::group_impl::group_conv_row};
  if (__builtin_cpu_supports("popcnt")) return popcnt;
#endif
  static const IsaKernels portable{"scalar-portable", scalar_isa::kLanes, scalar_isa::kChannels,
                                   1, nullptr, scalar_isa::tile_portable_any,
                                   scalar_isa::impl::pack, scalar_isa::impl::pack_span,
                                   scalar_isa::impl::finish,
                                   scalar_isa::norm_impl::norm_relu_pool_rows,
                                 scalar_isa::group_impl::group_conv_row};
  return portable;
}

}  // namespace bmx
