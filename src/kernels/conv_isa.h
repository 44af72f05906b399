// The per-instruction-set pieces of binary convolution (no MXNet types): packing floats into the
// planar bit layout, the register-blocked xnor-popcount tile, and writing a tile's counts out.
// binary_conv.cc drives them; isa.cc picks the set for the active instruction set.
//
// Planar packed input (one image; what the tiles read):
//   [words][phase_h][phase_w][plane_h][plane_w] uint32, words = groups * ceil(C / groups / 32).
// Word j holds channels g * C/groups + 32 * jj ... (+31) of group g = j / group_words,
// jj = j % group_words, bit b = channel 32 * jj + b of the group (LSB first, tail bits 0), bit 1
// iff the (thresholded) input is >= 0. Plane (j, rh, rw) row i, column k holds padded pixel
// (i * stride_h + rh, k * stride_w + rw) of the input padded with the pad value (-1: all bits 0,
// +1: the valid bits set); positions past the padded input hold the pad value too. Splitting the
// strides into phases makes the input of consecutive output pixels consecutive words for every
// kernel tap: output pixel (y, x) is lane q = y * plane_w + x, and tap (ky, kx) of word jj reads
// plane (jj, ky*dilate_h % stride_h, kx*dilate_w % stride_w) at
// q + (ky*dilate_h / stride_h) * plane_w + kx*dilate_w / stride_w. Lanes with x >= out_w are
// computed and discarded.
#ifndef BMXNET_KERNELS_CONV_ISA_H_
#define BMXNET_KERNELS_CONV_ISA_H_

#include <cstdint>

#include "kernels/xnor_popcount.h"

namespace bmx {

struct ConvParams;
struct NormPoolParams;

// One register tile: `lanes` consecutive lanes (output pixels) x up to max_channels output
// channels.
struct TileArgs {
  const uint32_t* act;      // packed input at the tile's first lane (group's first word plane)
  const int64_t* offsets;   // per weight word k < words: its activation words start at act + offsets[k]
  int64_t words;            // weight words per output channel
  const uint32_t* weights;  // prepared weights of the tile's first channel; channel c starts
                            // c * words * weight_expansion words later
  int channels;             // 1 .. max_channels
  int32_t* counts;          // out: [channels][lanes] numbers of differing bits
};

// Packs input rows [row_begin, row_end) of the words [word_begin, word_end) of one image into
// the planar layout above (the first and the last band also write the padding rows).
struct PackArgs {
  const float* x;            // the image: channel c, row y, column x at x[c * channel_stride + y * in_w + x]
  int64_t channel_stride;    // in_h * in_w for a dense NCHW tensor
  const float* thr_sign;     // optional per input channel (with thr_bias): bit = thr_sign[c] * x >= thr_bias[c]
  const float* thr_bias;     //   (thr_sign in {1, -1, 0}); null: bit = x >= 0
  const ConvParams* params;
  int64_t word_begin, word_end;
  int64_t row_begin, row_end;
  uint32_t* image;           // the image's planar words
  uint32_t* word_scratch;    // (row_end - row_begin) * in_w words
};

// Writes (or adds) a tile's outputs, skipping the lanes past the output's width or height.
struct FinishArgs {
  const int32_t* counts;     // [channels][lanes]
  int channels, lanes;
  int64_t first_lane;        // lane index q of counts[c][0]
  int64_t plane_w, out_h, out_w;
  float* out;                // the tile's first channel at output pixel (0, 0)
  int64_t channel_stride;    // floats between output channels
  int64_t pixel_stride;      // floats between consecutive output pixels (y * out_w + x order)
  OutputMode mode;
  int64_t fan_in;
  const float* scale;        // the tile's first channel's scale (kScaledDot only)
  PostOp post;               // from the tile's first channel
  const float* addend;       // null, or out = addend + value (same layout as out; may be out)
};

// Output rows [out_row_begin, out_row_end) of one channel plane of norm_relu_pool (norm_pool.h):
// BatchNorm with the channel's statistics, ReLU, max pooling.
struct NormPoolArgs {
  const float* x;            // the input plane, in_h x in_w
  float mean, scale, beta;   // y = (x - mean) * scale + beta; scale = gamma / sqrt(var + eps)
  const NormPoolParams* params;
  int64_t out_row_begin, out_row_end;
  float* normalized;         // scratch: (in_h + 1) * in_w floats
  float* out;                // the output plane, out_h x out_w
};

struct GroupConvRowArgs {
  const float* in;           // the row's input: tap t of output ox at in[taps[t] + ox]
  const int64_t* taps;       // the taps in summation order (group_conv.h)
  int64_t tap_count;
  const float* weight;       // the group's weights [out_channels][tap_count], in tap order
  int64_t out_channels;      // of the group
  int64_t full_channels;     // channels j < full_channels sum as one chain (group_conv.h)
  int64_t out_w;
  int64_t paired_from;       // outputs ox >= paired_from lie in the image's short last block
  float* out;                // channel j, output ox at out[j * out_channel_stride + ox]
  int64_t out_channel_stride;
};

struct IsaKernels {
  const char* name;          // kernel_name() of this set
  int lanes;                 // lanes per tile
  int max_channels;          // channels per tile
  int weight_expansion;      // prepared words per packed weight word
  // Writes weights (count words) in the tile's prepared form (count * weight_expansion words);
  // null: the tile reads the packed weights as they are.
  void (*prepare_weights)(const uint32_t* weights, int64_t count, uint32_t* prepared);
  void (*tile)(const TileArgs& args);
  void (*pack)(const PackArgs& args);
  // The bit rule of bitpack.h for a span of pixels, vectorized for the set (conv_isa_impl.h):
  // dst[i * dst_stride] = the word of `bits` (1 .. 32) channels of pixel i < count, channel b
  // of pixel i at x[b * channel_stride + i * pixel_stride]; with sign (and bias) non-null, bit =
  // sign[b] * x >= bias[b] instead of x >= 0. Every packer of the library calls this.
  void (*pack_span)(const float* x, int64_t channel_stride, int64_t pixel_stride, int bits,
                    const float* sign, const float* bias, int64_t count, uint32_t* dst,
                    int64_t dst_stride);
  void (*finish)(const FinishArgs& args);
  void (*norm_relu_pool)(const NormPoolArgs& args);
  // One output row of one group of group_conv.h, all of the group's output channels.
  void (*group_conv_row)(const GroupConvRowArgs& args);
};

// The sets; avx2/avx512 only when compiled for x86-64 (null otherwise). Call only on a CPU that
// supports them (isa.cc checks).
const IsaKernels& scalar_kernels();
const IsaKernels* avx2_kernels();
const IsaKernels* avx512_kernels();

// The set of the active instruction set (isa.h).
const IsaKernels& active_kernels();

// Everything the tiles of one convolution need, after its input was packed (binary_conv.cc).
struct TileJob {
  const ConvParams* params;
  const uint32_t* packed;     // the planar input of image 0; image b starts b * image_words later
  const uint32_t* weights;    // prepared weights ([out_channels][words] x weight_expansion)
  int64_t words;              // weight words per output channel
  const int64_t* offsets;     // per weight word, into a group's planes (see TileArgs)
  // Output: image b, channel o, pixel (y, x) at
  // out[b * out_batch_stride + o * out_channel_stride + (y * out_w + x) * out_pixel_stride].
  float* out;
  int64_t out_batch_stride, out_channel_stride, out_pixel_stride;
  OutputMode mode;
  const float* scale;
  PostOp post;
  // null, or every output is addend + value, addend laid out as out (it may be out itself).
  const float* addend;
};

// Computes every tile of `job` with the kernels of `isa` on up to `threads` threads.
void run_tiles(const IsaKernels& isa, const TileJob& job, int threads);

// The threads worth using for `work` (in binary MACs) split into `items` independent pieces: at
// most num_threads() (parallel.h), and 1 for small work.
int threads_for(double work, int64_t items);

// The threads worth using for work that streams `floats` floats (packing, BatchNorm, pooling,
// copies) split into `items` pieces: one float costs about as much time as 64 binary MACs (packing
// a float into a bit, or normalizing and pooling it, takes about a cycle with AVX2, where the
// tiles do ~128 MACs a cycle).
int threads_for_floats(double floats, int64_t items);

}  // namespace bmx

#endif  // BMXNET_KERNELS_CONV_ISA_H_
