#include "kernels/xnor_popcount.h"

#include <cstring>

#if defined(__GNUC__)
#define BMX_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define BMX_ALWAYS_INLINE inline
#endif

namespace bmx {
namespace {

// Register tile: kTileActs activation vectors x kTileWeights weight vectors accumulate at once,
// so each loaded word is used kTileWeights (resp. kTileActs) times. 4 x 4 fits the 16
// general-purpose registers of x86-64 with the accumulators partly in L1, which measured best.
#ifndef BMX_TILE_ACTS
#define BMX_TILE_ACTS 4
#endif
#ifndef BMX_TILE_WEIGHTS
#define BMX_TILE_WEIGHTS 4
#endif
constexpr int kTileActs = BMX_TILE_ACTS;
constexpr int kTileWeights = BMX_TILE_WEIGHTS;

BMX_ALWAYS_INLINE uint64_t load64(const uint32_t* p) {
  uint64_t v;
  std::memcpy(&v, p, sizeof v);  // unaligned-safe; one mov on x86
  return v;
}

BMX_ALWAYS_INLINE int popcount64(uint64_t v) {
#if defined(__GNUC__)
  return __builtin_popcountll(v);
#else
  v = v - ((v >> 1) & 0x5555555555555555ULL);
  v = (v & 0x3333333333333333ULL) + ((v >> 2) & 0x3333333333333333ULL);
  v = (v + (v >> 4)) & 0x0F0F0F0F0F0F0F0FULL;
  return static_cast<int>((v * 0x0101010101010101ULL) >> 56);
#endif
}

// counts[o * count_stride + a] for a < P, o < O.
template <int P, int O>
BMX_ALWAYS_INLINE void mismatch_tile(const uint32_t* const* acts, const uint32_t* weights,
                                     int64_t weight_stride, const Segment* segments,
                                     int64_t n_segments, int32_t* counts, int64_t count_stride) {
  uint64_t acc[O][P] = {};
  for (int64_t s = 0; s < n_segments; ++s) {
    const Segment seg = segments[s];
    const uint32_t* a[P];
    const uint32_t* w[O];
    for (int p = 0; p < P; ++p) a[p] = acts[p] + seg.act_offset;
    for (int o = 0; o < O; ++o) w[o] = weights + o * weight_stride + seg.weight_offset;
    int64_t i = 0;
    for (; i + 2 <= seg.words; i += 2) {  // two words at a time: one 64-bit popcount
      uint64_t av[P];
      for (int p = 0; p < P; ++p) av[p] = load64(a[p] + i);
      for (int o = 0; o < O; ++o) {
        const uint64_t wv = load64(w[o] + i);
        for (int p = 0; p < P; ++p) acc[o][p] += popcount64(av[p] ^ wv);
      }
    }
    if (i < seg.words) {
      for (int o = 0; o < O; ++o) {
        for (int p = 0; p < P; ++p) acc[o][p] += popcount64(a[p][i] ^ w[o][i]);
      }
    }
  }
  for (int o = 0; o < O; ++o) {
    for (int p = 0; p < P; ++p) counts[o * count_stride + p] = static_cast<int32_t>(acc[o][p]);
  }
}

// All n_act x n_weights pairs: full tiles, then single rows / columns for the remainders.
BMX_ALWAYS_INLINE void mismatch_all(const uint32_t* const* acts, int64_t n_act,
                                    const uint32_t* weights, int64_t weight_stride,
                                    int64_t n_weights, const Segment* segments,
                                    int64_t n_segments, int32_t* counts) {
  int64_t o = 0;
  for (; o + kTileWeights <= n_weights; o += kTileWeights) {
    const uint32_t* w = weights + o * weight_stride;
    int64_t a = 0;
    for (; a + kTileActs <= n_act; a += kTileActs) {
      mismatch_tile<kTileActs, kTileWeights>(acts + a, w, weight_stride, segments, n_segments,
                                             counts + o * n_act + a, n_act);
    }
    for (; a < n_act; ++a) {
      mismatch_tile<1, kTileWeights>(acts + a, w, weight_stride, segments, n_segments,
                                     counts + o * n_act + a, n_act);
    }
  }
  for (; o < n_weights; ++o) {
    const uint32_t* w = weights + o * weight_stride;
    int64_t a = 0;
    for (; a + kTileActs <= n_act; a += kTileActs) {
      mismatch_tile<kTileActs, 1>(acts + a, w, weight_stride, segments, n_segments,
                                  counts + o * n_act + a, n_act);
    }
    for (; a < n_act; ++a) {
      mismatch_tile<1, 1>(acts + a, w, weight_stride, segments, n_segments,
                          counts + o * n_act + a, n_act);
    }
  }
}

void mismatch_portable(const uint32_t* const* acts, int64_t n_act, const uint32_t* weights,
                       int64_t weight_stride, int64_t n_weights, const Segment* segments,
                       int64_t n_segments, int32_t* counts) {
  mismatch_all(acts, n_act, weights, weight_stride, n_weights, segments, n_segments, counts);
}

#if defined(__x86_64__) && defined(__GNUC__)
#define BMX_HAVE_POPCNT_KERNEL 1
// The same loops compiled for the POPCNT instruction (the portable build targets baseline
// x86-64, where a popcount is a library call).
__attribute__((target("popcnt"))) void mismatch_popcnt(
    const uint32_t* const* acts, int64_t n_act, const uint32_t* weights, int64_t weight_stride,
    int64_t n_weights, const Segment* segments, int64_t n_segments, int32_t* counts) {
  mismatch_all(acts, n_act, weights, weight_stride, n_weights, segments, n_segments, counts);
}
#endif

struct Choice {
  MismatchKernel kernel;
  const char* name;
};

Choice choose() {
#ifdef BMX_HAVE_POPCNT_KERNEL
  __builtin_cpu_init();
  if (__builtin_cpu_supports("popcnt")) return {mismatch_popcnt, "popcnt"};
#endif
  return {mismatch_portable, "portable"};
}

const Choice& chosen() {
  static const Choice choice = choose();  // thread-safe initialization (C++11)
  return choice;
}

}  // namespace

MismatchKernel select_mismatch_kernel() { return chosen().kernel; }

const char* mismatch_kernel_name() { return chosen().name; }

}  // namespace bmx
