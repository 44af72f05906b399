#include "kernels/binary_stage.h"

#include <algorithm>
#include <cstring>

#include "kernels/conv_isa.h"
#include "kernels/parallel.h"

namespace bmx {
namespace {

// The most stage buffer one pass of the units works on (about an L2 cache).
constexpr int64_t kChunkBytes = 2 << 20;

}  // namespace

int64_t StageParams::channels_before(int64_t in_channels, int64_t growth,
                                     const std::vector<bool>& improvement, size_t i) {
  int64_t channels = in_channels;
  for (size_t u = 0; u < i; ++u) channels += improvement[u] ? 0 : growth;
  return channels;
}

ConvParams StageParams::unit_conv(int64_t channels) const {
  ConvParams p;
  p.batch = batch;
  p.in_channels = channels;
  p.in_h = height;
  p.in_w = width;
  p.out_channels = growth;
  p.kernel_h = kernel_h;
  p.kernel_w = kernel_w;
  p.dilate_h = dilate_h;
  p.dilate_w = dilate_w;
  p.pad_h = dilate_h * (kernel_h - 1) / 2;
  p.pad_w = dilate_w * (kernel_w - 1) / 2;
  p.pad_with_ones = pad_with_ones;
  return p;
}

int64_t stage_scratch_words(const StageParams& s, int64_t max_channels) {
  return s.unit_conv(max_channels).packed_input_words();
}

void binary_stage(const float* x, const StageParams& s, const std::vector<StageUnit>& units,
                  uint32_t* scratch, float* out, StageCache* cache) {
  StageCache call_cache;
  if (cache == nullptr) cache = &call_cache;
  if (cache->units.size() < units.size()) cache->units.resize(units.size());
  int64_t out_channels = s.in_channels;
  for (const StageUnit& u : units) out_channels += u.improvement ? 0 : s.growth;
  const int64_t plane = s.height * s.width;
  const int64_t copies = s.batch * s.in_channels;
  const int threads = threads_for_floats(static_cast<double>(copies) * plane, copies);
  parallel_for(threads, copies, [&](int64_t i, int) {
    const int64_t b = i / s.in_channels, c = i % s.in_channels;
    std::memcpy(out + (b * out_channels + c) * plane, x + i * plane, sizeof(float) * plane);
  });
  // Images go through all units in chunks whose part of the buffer stays within kChunkBytes:
  // each unit reads what the units before it wrote, from cache rather than memory when the chunk
  // fits (MeliusNet22's first stage holds 4 MB per image at 224x224, 32 MB at batch 8).
  const int64_t image_floats = out_channels * plane;
  const int64_t chunk = std::max<int64_t>(
      1, std::min<int64_t>(s.batch, kChunkBytes / (sizeof(float) * image_floats)));
  for (int64_t first = 0; first < s.batch; first += chunk) {
    StageParams part = s;
    part.batch = std::min(chunk, s.batch - first);
    float* const images = out + first * image_floats;
    int64_t channels = s.in_channels;
    for (size_t i = 0; i < units.size(); ++i) {
      const StageUnit& u = units[i];
      const ConvParams p = part.unit_conv(channels);
      ConvInput in;
      in.data = images;
      in.batch_stride = image_floats;
      in.thr_sign = u.thr_sign;
      in.thr_bias = u.thr_bias;
      ConvOutput o;
      o.batch_stride = image_floats;
      o.mode = s.mode;
      // The whole input is packed before the first output is written, so an improvement unit
      // may add into channels it reads.
      o.data = images + (u.improvement ? channels - s.growth : channels) * plane;
      o.accumulate = u.improvement;
      ConvWorkspace work;
      work.packed = scratch;
      work.cache = &cache->units[i];
      work.thread_buffers = &cache->thread_buffers;
      binary_conv2d(in, u.weights, p, o, work);
      channels += u.improvement ? 0 : s.growth;
    }
  }
}

}  // namespace bmx
