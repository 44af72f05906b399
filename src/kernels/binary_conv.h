// Binary 2-D convolution by xnor-popcount on packed bits (no MXNet types).
//
// Computes what the training layer QConv2D computes on ±1 inputs and ±1 weights: the input is
// binarized (bit = x >= 0, see bitpack.h; optionally through per-channel thresholds that fold a
// BatchNorm in), padded with -1 (or +1) *after* binarization, and convolved with sign(W) over
// K = C_in / groups * kernel_h * kernel_w taps per output; the ±1 dot product is returned in one of
// the OutputMode conventions. All intermediate values are integers, so the result is exact.
//
// Packed weight layout (what pack_conv_weights writes and the kernels read directly):
//   [C_out][kernel_h][kernel_w][words_for_channels(C_in / groups)] uint32 words,
// i.e. the activation layout of bitpack.h applied to OIHW weights read as "NCHW" with
// N = C_out, C = C_in / groups: input channel c of group g's filter sits at bit c % 32 of word
// c / 32, tails masked to 0. Output channel o belongs to group o / (C_out / groups). The kernels
// broadcast one weight word against 16 (AVX-512) or 8 (AVX2) output pixels at a time, so this
// row-per-channel order is already the order they read.
//
// The input is packed once per call into the planar layout of conv_isa.h (scratch memory);
// output pixels sit in vector lanes, output channels in registers (conv_isa_*.cc). Work is split
// over the kernels' threads (at most num_threads() of parallel.h, i.e. OMP_NUM_THREADS) by output
// tiles when the layer is large enough for threads to pay.
#ifndef BMXNET_KERNELS_BINARY_CONV_H_
#define BMXNET_KERNELS_BINARY_CONV_H_

#include <array>
#include <cstdint>
#include <vector>

#include "kernels/bitpack.h"
#include "kernels/parallel.h"
#include "kernels/xnor_popcount.h"

namespace bmx {

struct IsaKernels;

// Lanes of the widest tile: the planar buffer ends with this many words of slack so that a
// tile's last lanes may read past the last plane.
constexpr int64_t kMaxTileLanes = 64;

// Geometry of one binary convolution. All fields must be positive except pad_* (>= 0); groups
// divides in_channels and out_channels; the dilated kernel fits the padded input.
struct ConvParams {
  int64_t batch = 1, in_channels = 1, in_h = 1, in_w = 1;
  int64_t out_channels = 1, kernel_h = 1, kernel_w = 1;
  int64_t stride_h = 1, stride_w = 1;
  int64_t pad_h = 0, pad_w = 0;
  int64_t dilate_h = 1, dilate_w = 1;
  int64_t groups = 1;
  bool pad_with_ones = false;  // padding value +1 instead of the default -1

  int64_t group_in_channels() const { return in_channels / groups; }
  int64_t group_out_channels() const { return out_channels / groups; }
  int64_t group_words() const { return words_for_channels(group_in_channels()); }
  int64_t fan_in() const { return group_in_channels() * kernel_h * kernel_w; }
  int64_t padded_h() const { return in_h + 2 * pad_h; }
  int64_t padded_w() const { return in_w + 2 * pad_w; }
  // 0 when the dilated kernel does not fit the padded input.
  int64_t out_h() const { return out_size(padded_h(), kernel_h, dilate_h, stride_h); }
  int64_t out_w() const { return out_size(padded_w(), kernel_w, dilate_w, stride_w); }
  static int64_t out_size(int64_t padded, int64_t kernel, int64_t dilate, int64_t stride) {
    const int64_t extent = dilate * (kernel - 1) + 1;
    return padded < extent ? 0 : (padded - extent) / stride + 1;
  }
  // The planar packed input (conv_isa.h): one plane per word and stride phase.
  int64_t plane_h() const { return (padded_h() + stride_h - 1) / stride_h; }
  int64_t plane_w() const { return (padded_w() + stride_w - 1) / stride_w; }
  int64_t plane_words() const { return plane_h() * plane_w(); }
  int64_t image_words() const {
    return groups * group_words() * stride_h * stride_w * plane_words();
  }
  // Words of scratch binary_conv2d needs: the planar input of the whole batch plus slack.
  int64_t packed_input_words() const { return batch * image_words() + kMaxTileLanes; }
  // Words of the packed weights: out_channels * kernel_h * kernel_w * group_words().
  int64_t weight_words() const { return out_channels * kernel_h * kernel_w * group_words(); }
};

// w: float [out_channels][group_in_channels][kernel_h][kernel_w] (OIHW, latent weights, bit =
// w >= 0); out: the packed weight layout above, out_channels * kernel_h * kernel_w *
// words_for_channels(group_in_channels) words, fully overwritten.
void pack_conv_weights(const float* w, int64_t out_channels, int64_t group_in_channels,
                       int64_t kernel_h, int64_t kernel_w, uint32_t* out);

// Where the input comes from: image b, channel c, row y, column x at
// data[b * batch_stride + c * in_h * in_w + y * in_w + x] (batch_stride >= in_channels * in_h *
// in_w; larger when the input is the first channels of a wider tensor). With thresholds, the bit of
// channel c is thr_sign[c] * x >= thr_bias[c] instead of x >= 0 (thr_sign in {+1, -1, 0}).
struct ConvInput {
  const float* data = nullptr;
  int64_t batch_stride = 0;
  const float* thr_sign = nullptr;
  const float* thr_bias = nullptr;
};

// Where the output goes: image b, channel o, pixel (y, x) at
// data[b * batch_stride + o * out_h * out_w + y * out_w + x], written, or (accumulate) added to,
// or (addend non-null) written as addend + value with addend laid out as data. scale: float
// [out_channels], read only for kScaledDot. post: an epilogue on each value before the addition
// (conv_isa.h), its pointers per output channel.
struct ConvOutput {
  float* data = nullptr;
  int64_t batch_stride = 0;
  OutputMode mode = OutputMode::kAgreements;
  const float* scale = nullptr;
  bool accumulate = false;
  const float* addend = nullptr;
  PostOp post;
};

// What binary_conv2d (and binary_dense) derive from the geometry and from the weights, kept by a
// caller that runs the same layer again (an operator's state), so that a steady-state call
// prepares and allocates nothing: the word offsets of the tiles (rebuilt when the geometry
// changes) and the weights in the tile's prepared form (rebuilt when the instruction set or the
// weights' address changes). The cache cannot see the weights' contents change in place: its
// owner must call forget_weights() when they may have. One call at a time.
class ConvCache {
 public:
  void forget_weights() { prepared_from_ = nullptr; }

  // The offsets of TileArgs for p (conv_isa.h).
  const int64_t* offsets(const ConvParams& p);
  // `weights` (count words) as isa's tiles read them: themselves, or prepared once.
  const uint32_t* weights(const IsaKernels& isa, const uint32_t* weights, int64_t count);

 private:
  std::vector<int64_t> offsets_;
  std::array<int64_t, 9> offsets_key_{};  // the geometry offsets_ were computed for
  std::vector<uint32_t> prepared_;
  const IsaKernels* prepared_isa_ = nullptr;
  const uint32_t* prepared_from_ = nullptr;
};

// The memory a binary convolution works in. packed is required; cache and thread_buffers may be
// null, and are then allocated for the call.
struct ConvWorkspace {
  uint32_t* packed = nullptr;                        // p.packed_input_words() words
  ConvCache* cache = nullptr;
  ThreadBuffers<uint32_t>* thread_buffers = nullptr;  // packing scratch of each thread
};

// The convolution.
void binary_conv2d(const ConvInput& in, const uint32_t* weights, const ConvParams& p,
                   const ConvOutput& out, const ConvWorkspace& work);

// The plain form: x float [batch][in_channels][in_h][in_w]; weights packed as above; scale float
// [out_channels] (read only for kScaledDot); scratch: p.packed_input_words() words; out: float
// [batch][out_channels][out_h][out_w], fully overwritten.
void binary_conv2d(const float* x, const uint32_t* weights, const ConvParams& p, OutputMode mode,
                   const float* scale, uint32_t* scratch, float* out);

}  // namespace bmx

#endif  // BMXNET_KERNELS_BINARY_CONV_H_
