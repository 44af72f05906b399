// BatchNorm (inference) -> ReLU -> max pooling in one pass over the input (no MXNet types): the
// float tail of MeliusNet's stem and the head of its transitions, which otherwise run as three
// MXNet operators (and MXNet's BatchNorm is slow on plain NCHW input).
//
// Bit-exact with MXNet 1.9.1's BatchNorm on a plain NCHW input (oneDNN's formula:
// s = gamma / sqrt(var + eps), y = (x - mean) * s + beta, each operation rounded to float, no
// fused multiply-add), followed by ReLU and max pooling (which commute exactly). The converter
// checks the equality on a probe before it uses this (bmxnet_ext/fusion.py).
#ifndef BMXNET_KERNELS_NORM_POOL_H_
#define BMXNET_KERNELS_NORM_POOL_H_

#include <cmath>
#include <cstdint>

#include "kernels/parallel.h"

namespace bmx {

// BatchNorm's per-channel factor as oneDNN rounds it: gamma / sqrt(var + eps) in float.
inline float batchnorm_scale(float gamma, float var, float eps) {
  return gamma / std::sqrt(var + eps);
}

struct NormPoolParams {
  int64_t batch = 1, channels = 1, in_h = 1, in_w = 1;
  int64_t kernel_h = 1, kernel_w = 1, stride_h = 1, stride_w = 1, pad_h = 0, pad_w = 0;
  float eps = 1e-5f;
  bool fix_gamma = false;  // gamma taken as 1 (BatchNorm(scale=False))
  bool normalize = true;   // false: no BatchNorm (gamma, beta, mean, var unused, may be null)

  // MXNet's "valid" pooling convention; 0 when the window does not fit.
  int64_t out_h() const { return out_size(in_h, kernel_h, stride_h, pad_h); }
  int64_t out_w() const { return out_size(in_w, kernel_w, stride_w, pad_w); }
  static int64_t out_size(int64_t in, int64_t kernel, int64_t stride, int64_t pad) {
    return in + 2 * pad < kernel ? 0 : (in + 2 * pad - kernel) / stride + 1;
  }
};

// x: float [batch][channels][in_h][in_w]; gamma, beta, mean, var: float [channels] (read only
// with p.normalize);
// out: float [batch][channels][out_h][out_w], fully overwritten. Padding never wins a max (it is
// -inf, as in MXNet); a window of padding only gives 0 (after ReLU). buffers: the threads'
// scratch, kept by a caller that runs the layer again, or null.
void norm_relu_pool(const float* x, const float* gamma, const float* beta, const float* mean,
                    const float* var, const NormPoolParams& p, float* out,
                    ThreadBuffers<float>* buffers = nullptr);

}  // namespace bmx

#endif  // BMXNET_KERNELS_NORM_POOL_H_
