// What a binary layer returns for a ±1 dot product computed by xnor-popcount: counting the
// mismatching bits (popcount of a XOR w) between packed activations and packed weights, with tail
// bits masked to 0 on both sides so that they never count. The counting loops themselves are the
// per-instruction-set tiles of conv_isa.h.
#ifndef BMXNET_KERNELS_XNOR_POPCOUNT_H_
#define BMXNET_KERNELS_XNOR_POPCOUNT_H_

#include <cstdint>

namespace bmx {

// The training layers' three output conventions for a dot product over K = `fan_in` ±1 taps
// with `mismatches` differing bits (dot = K - 2 * mismatches).
enum class OutputMode {
  kAgreements,  // (dot + K) / 2 = K - mismatches: the number of agreeing bits (offset=True)
  kDot,         // dot (offset=False)
  kScaledDot,   // dot * scale[output channel] (scaling=True)
};

// An epilogue applied to each output value v (after its OutputMode): v = max(v, 0) with relu;
// then, with scale non-null, inference BatchNorm v = (v - mean[o]) * scale[o] + beta[o], each
// operation rounded to float (as norm_pool.h: bit-exact with MXNet's BatchNorm on plain NCHW);
// scale[o] = batchnorm_scale(gamma[o], var[o], eps) of norm_pool.h. The pointers start at output
// channel 0 of whatever they are handed to (a tile's first channel in FinishArgs).
struct PostOp {
  bool relu = false;
  const float* mean = nullptr;
  const float* scale = nullptr;
  const float* beta = nullptr;
  bool active() const { return relu || scale != nullptr; }
};

inline float binary_output(int32_t mismatches, int64_t fan_in, OutputMode mode, float scale) {
  switch (mode) {
    case OutputMode::kAgreements: return static_cast<float>(fan_in - mismatches);
    case OutputMode::kDot: return static_cast<float>(fan_in - 2 * static_cast<int64_t>(mismatches));
    default: return static_cast<float>(fan_in - 2 * static_cast<int64_t>(mismatches)) * scale;
  }
}

}  // namespace bmx

#endif  // BMXNET_KERNELS_XNOR_POPCOUNT_H_
