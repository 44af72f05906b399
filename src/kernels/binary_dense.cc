#include "kernels/binary_dense.h"

#include <algorithm>
#include <vector>

#include "kernels/binary_conv.h"
#include "kernels/conv_isa.h"

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

// The planar layout of conv_isa.h for rows of x: word j of row r at out[j * batch + r].
void pack_rows(const float* x, int64_t batch, int64_t in_units, int64_t begin, int64_t end,
               uint32_t* out) {
  for (int64_t j = begin; j < end; ++j) {
    const int64_t bits = std::min(kWordBits, in_units - j * kWordBits);
    for (int64_t r = 0; r < batch; ++r) {
      const float* row = x + r * in_units + j * kWordBits;
      uint32_t word = 0;
      // NaN compares false: bit 0, i.e. -1, as the training quantizers do.
      for (int64_t b = 0; b < bits; ++b) word |= row[b] >= 0.0f ? (1u << b) : 0u;
      out[j * batch + r] = word;
    }
  }
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
                  float* out) {
  const IsaKernels& isa = active_kernels();
  const ConvParams p = as_conv(batch, in_units, units);
  const int64_t words = words_for_channels(in_units);
  const int pack_threads = threads_for_floats(static_cast<double>(batch) * in_units, words);
#pragma omp parallel for schedule(static) num_threads(pack_threads) if (pack_threads > 1)
  for (int64_t j = 0; j < words; ++j) pack_rows(x, batch, in_units, j, j + 1, scratch);
  std::fill(scratch + words * batch, scratch + p.packed_input_words(), 0u);

  std::vector<uint32_t> prepared;
  if (isa.prepare_weights != nullptr) {
    prepared.resize(units * words * isa.weight_expansion);
    isa.prepare_weights(weights, units * words, prepared.data());
  }
  std::vector<int64_t> offsets(words);
  for (int64_t j = 0; j < words; ++j) offsets[j] = j * batch;
  TileJob job;
  job.params = &p;
  job.packed = scratch;
  job.weights = prepared.empty() ? weights : prepared.data();
  job.words = words;
  job.offsets = offsets.data();
  job.out = out;
  job.out_batch_stride = 0;
  job.out_channel_stride = 1;
  job.out_pixel_stride = units;
  job.mode = mode;
  job.scale = scale;
  job.accumulate = false;
  const int64_t tiles = ((batch + isa.lanes - 1) / isa.lanes) *
                        ((units + isa.max_channels - 1) / isa.max_channels);
  run_tiles(isa, job, threads_for(static_cast<double>(batch) * units * in_units, tiles));
}

}  // namespace bmx
