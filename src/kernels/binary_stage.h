// A run of binary dense / improvement units computed in one buffer (no MXNet types): MeliusNet's
// and BinaryDenseNet's stages without a BatchNorm, concat, slice or add between the convolutions.
//
// Unit i sees the first c_i channels of the stage's output buffer, binarizes them through
// per-channel thresholds (a BatchNorm folded in: bit = thr_sign[c] * x >= thr_bias[c]) and
// convolves them with its packed weights (binary_conv.h layout, `growth` output channels, same
// padding, stride 1). A dense unit appends its outputs as channels c_i .. c_i + growth
// (c_{i+1} = c_i + growth: DenseBlock's concat); an improvement unit adds them to channels
// c_i - growth .. c_i (c_{i+1} = c_i: ImprovementBlock). The stage input fills channels 0 .. c_0.
#ifndef BMXNET_KERNELS_BINARY_STAGE_H_
#define BMXNET_KERNELS_BINARY_STAGE_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#include "kernels/binary_conv.h"

namespace bmx {

struct StageUnit {
  bool improvement;           // false: dense (append), true: improvement (add)
  const uint32_t* weights;    // [growth][kernel_h][kernel_w][words_for_channels(c_i)]
  const float* thr_sign;      // [c_i], each +1, -1 or 0
  const float* thr_bias;      // [c_i]
};

struct StageParams {
  int64_t batch = 1, in_channels = 1, height = 1, width = 1;
  int64_t growth = 1, kernel_h = 1, kernel_w = 1, dilate_h = 1, dilate_w = 1;
  bool pad_with_ones = false;
  OutputMode mode = OutputMode::kAgreements;

  // Channels unit `units[0..i)` leave in the buffer, i.e. the input width of unit i.
  static int64_t channels_before(int64_t in_channels, int64_t growth,
                                 const std::vector<bool>& improvement, size_t i);
  // The convolution of a unit with `channels` input channels (same padding, stride 1).
  ConvParams unit_conv(int64_t channels) const;
};

// Words of scratch binary_stage needs for units whose widest input has max_channels channels.
int64_t stage_scratch_words(const StageParams& s, int64_t max_channels);

// What binary_stage keeps between calls for a caller that runs the same stage again: each
// unit's ConvCache (binary_conv.h; its owner calls forget_weights() on the unit whose weights may
// have changed) and the packing buffers the units share.
struct StageCache {
  std::vector<ConvCache> units;
  ThreadBuffers<uint32_t> thread_buffers;
};

// x: float [batch][in_channels][height][width]; out: float [batch][out_channels][height][width]
// with out_channels = in_channels + growth * (number of dense units), fully overwritten; cache:
// kept by the caller between calls, or null.
void binary_stage(const float* x, const StageParams& s, const std::vector<StageUnit>& units,
                  uint32_t* scratch, float* out, StageCache* cache = nullptr);

}  // namespace bmx

#endif  // BMXNET_KERNELS_BINARY_STAGE_H_
