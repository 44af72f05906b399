// The inner loop shared by binary convolution and binary dense: counting mismatching bits
// (popcount of a XOR w) between packed activation vectors and packed weight vectors.
//
// A "vector" need not be contiguous: it is a list of segments (runs of 32-bit words at fixed
// offsets from a base pointer), which is how a convolution window looks in a padded NHWC buffer.
// Both operands must have their tail bits masked to 0 so that they never count as mismatches.
//
// The kernel is picked once per process (select_mismatch_kernel): a portable one and, on x86-64,
// the same code compiled for the POPCNT instruction when the CPU has it. SIMD kernels (AVX2,
// AVX-512 VPOPCNTDQ) slot in as further MismatchKernel implementations.
#ifndef BMXNET_KERNELS_XNOR_POPCOUNT_H_
#define BMXNET_KERNELS_XNOR_POPCOUNT_H_

#include <cstdint>

namespace bmx {

// `words` words starting at act_offset (from an activation base pointer) meet `words` words
// starting at weight_offset (from a weight row).
struct Segment {
  int64_t act_offset;
  int64_t weight_offset;
  int64_t words;
};

// counts[o * n_act + a] = number of differing bits between activation vector a (segments taken
// from acts[a]) and weight vector o (segments taken from weights + o * weight_stride), for
// a < n_act, o < n_weights.
using MismatchKernel = void (*)(const uint32_t* const* acts, int64_t n_act,
                                const uint32_t* weights, int64_t weight_stride, int64_t n_weights,
                                const Segment* segments, int64_t n_segments, int32_t* counts);

// What a binary layer returns for a dot product over K = `fan_in` ±1 taps with `mismatches`
// differing bits (dot = K - 2 * mismatches): the training layers' three output conventions.
enum class OutputMode {
  kAgreements,  // (dot + K) / 2 = K - mismatches: the number of agreeing bits (offset=True)
  kDot,         // dot (offset=False)
  kScaledDot,   // dot * scale[output channel] (scaling=True)
};

inline float binary_output(int32_t mismatches, int64_t fan_in, OutputMode mode, float scale) {
  switch (mode) {
    case OutputMode::kAgreements: return static_cast<float>(fan_in - mismatches);
    case OutputMode::kDot: return static_cast<float>(fan_in - 2 * static_cast<int64_t>(mismatches));
    default: return static_cast<float>(fan_in - 2 * static_cast<int64_t>(mismatches)) * scale;
  }
}

// The fastest kernel this CPU runs; chosen once, thread-safe.
MismatchKernel select_mismatch_kernel();

// Name of the kernel select_mismatch_kernel() returns ("portable", "popcnt"), for reports.
const char* mismatch_kernel_name();

}  // namespace bmx

#endif  // BMXNET_KERNELS_XNOR_POPCOUNT_H_
