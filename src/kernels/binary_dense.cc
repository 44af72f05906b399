#include "kernels/binary_dense.h"

#include <algorithm>
#include <vector>

#include "kernels/binary_conv.h"
#include "kernels/conv_isa.h"
#include "kernels/parallel.h"

namespace bmx {
namespace {

// The geometry of the dense layer as a convolution: a 1 x batch image of in_units channels.
ConvParams as_conv(int64_t batch, int64_t in_units, int64_t units) {
  ConvParams p;
  p.in_channels = in_units;
  p.in_w = batch;
  p.out_channels = units;
  return p;
}

}  // namespace

void pack_dense_weights(const float* w, int64_t units, int64_t in_units, uint32_t* out) {
  // A row of K values is one 1x1 "pixel" of K channels.
  pack_nchw(w, units, in_units, 1, 1, out);
}

int64_t dense_scratch_words(int64_t batch, int64_t in_units) {
  return as_conv(batch, in_units, 1).packed_input_words();
}

void binary_dense(const float* x, const uint32_t* weights, int64_t batch, int64_t in_units,
                  int64_t units, OutputMode mode, const float* scale, uint32_t* scratch,
                  float* out, ConvCache* cache) {
  const IsaKernels& isa = active_kernels();
  ConvCache call_cache;
  if (cache == nullptr) cache = &call_cache;
  const ConvParams p = as_conv(batch, in_units, units);
  const int64_t words = words_for_channels(in_units);
  // The planar layout of conv_isa.h: word j of row r at scratch[j * batch + r].
  const int pack_threads = threads_for_floats(static_cast<double>(batch) * in_units, words);
  parallel_for(pack_threads, words, [&](int64_t j, int) {
    const int bits = static_cast<int>(std::min(kWordBits, in_units - j * kWordBits));
    isa.pack_span(x + j * kWordBits, 1, in_units, bits, nullptr, nullptr, batch,
                  scratch + j * batch, 1);
  });
  std::fill(scratch + words * batch, scratch + p.packed_input_words(), 0u);

  TileJob job;
  job.params = &p;
  job.packed = scratch;
  job.weights = cache->weights(isa, weights, units * words);
  job.words = words;
  job.offsets = cache->offsets(p);  // word j of every row: j * batch
  job.out = out;
  job.out_batch_stride = 0;
  job.out_channel_stride = 1;
  job.out_pixel_stride = units;
  job.mode = mode;
  job.scale = scale;
  job.addend = nullptr;
  const int64_t tiles = ((batch + isa.lanes - 1) / isa.lanes) *
                        ((units + isa.max_channels - 1) / isa.max_channels);
  run_tiles(isa, job, threads_for(static_cast<double>(batch) * units * in_units, tiles));
}

}  // namespace bmx
