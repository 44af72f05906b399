#include "kernels/binary_conv.h"

#include <algorithm>
#include <array>
#include <vector>

#include "kernels/conv_isa.h"
#include "kernels/parallel.h"

namespace bmx {
namespace {

// A thread must get at least this much work (in binary MACs, ~1-3 us on one core) to pay off:
// handing a job to a spinning pool worker costs well under a microsecond, waking a sleeping one
// a system call of a microsecond or two (parallel.cc). The caller starts at once and a worker
// that comes late finds less to do, so erring small costs little.
constexpr double kMinWorkPerThread = 1e6;

// Tiles keep their counts on the stack.
constexpr int kMaxTileChannels = 8;

}  // namespace

const int64_t* ConvCache::offsets(const ConvParams& p) {
  // Offset of weight word k = (ky * kernel_w + kx) * group_words + jj from a lane's position in
  // its group's first plane (conv_isa.h).
  const std::array<int64_t, 9> key = {p.kernel_h, p.kernel_w, p.dilate_h,  p.dilate_w,
                                    p.stride_h, p.stride_w, p.plane_h(), p.plane_w(),
                                    p.group_words()};
  if (key == offsets_key_) return offsets_.data();
  const int64_t phases = p.stride_h * p.stride_w;
  offsets_.clear();
  for (int64_t ky = 0; ky < p.kernel_h; ++ky) {
    const int64_t dy = ky * p.dilate_h;
    for (int64_t kx = 0; kx < p.kernel_w; ++kx) {
      const int64_t dx = kx * p.dilate_w;
      const int64_t phase = (dy % p.stride_h) * p.stride_w + dx % p.stride_w;
      const int64_t shift = (dy / p.stride_h) * p.plane_w() + dx / p.stride_w;
      for (int64_t jj = 0; jj < p.group_words(); ++jj) {
        offsets_.push_back((jj * phases + phase) * p.plane_words() + shift);
      }
    }
  }
  offsets_key_ = key;
  return offsets_.data();
}

const uint32_t* ConvCache::weights(const IsaKernels& isa, const uint32_t* weights,
                                   int64_t count) {
  if (isa.prepare_weights == nullptr) return weights;
  if (prepared_isa_ != &isa || prepared_from_ != weights ||
      prepared_.size() != static_cast<size_t>(count * isa.weight_expansion)) {
    prepared_.resize(count * isa.weight_expansion);
    isa.prepare_weights(weights, count, prepared_.data());
    prepared_isa_ = &isa;
    prepared_from_ = weights;
  }
  return prepared_.data();
}

int threads_for_floats(double floats, int64_t items) { return threads_for(64 * floats, items); }

int threads_for(double work, int64_t items) {
  const double useful = std::min<double>(work / kMinWorkPerThread, static_cast<double>(items));
  return std::max(1, std::min(num_threads(), static_cast<int>(useful)));
}

void run_tiles(const IsaKernels& isa, const TileJob& job, int threads) {
  const ConvParams& p = *job.params;
  const int64_t lanes = isa.lanes, group_out = p.group_out_channels();
  const int64_t tiles = (p.out_h() * p.plane_w() + lanes - 1) / lanes;
  const int64_t blocks = (group_out + isa.max_channels - 1) / isa.max_channels;
  const int64_t group_words = p.group_words() * p.stride_h * p.stride_w * p.plane_words();
  const int64_t weight_row = job.words * isa.weight_expansion;
  const int64_t items = p.batch * p.groups * tiles * blocks;
  const int64_t out_h = p.out_h(), out_w = p.out_w(), plane_w = p.plane_w();
  // Consecutive items share their activations (channel blocks vary fastest), so a static split
  // keeps each thread's activations in its own cache.
  parallel_for(threads, items, [&](int64_t item, int) {
    const int64_t block = item % blocks;
    const int64_t tile = (item / blocks) % tiles;
    const int64_t g = (item / blocks / tiles) % p.groups;
    const int64_t b = item / blocks / tiles / p.groups;
    const int64_t first = g * group_out + block * isa.max_channels;
    const int channels = static_cast<int>(
        std::min<int64_t>(isa.max_channels, group_out - block * isa.max_channels));
    int32_t counts[kMaxTileLanes * kMaxTileChannels];
    TileArgs args;
    args.act = job.packed + b * p.image_words() + g * group_words + tile * lanes;
    args.offsets = job.offsets;
    args.words = job.words;
    args.weights = job.weights + first * weight_row;
    args.channels = channels;
    args.counts = counts;
    isa.tile(args);
    FinishArgs out;
    out.counts = counts;
    out.channels = channels;
    out.lanes = isa.lanes;
    out.first_lane = tile * lanes;
    out.plane_w = plane_w;
    out.out_h = out_h;
    out.out_w = out_w;
    out.out = job.out + b * job.out_batch_stride + first * job.out_channel_stride;
    out.channel_stride = job.out_channel_stride;
    out.pixel_stride = job.out_pixel_stride;
    out.mode = job.mode;
    out.fan_in = p.fan_in();
    out.scale = job.scale == nullptr ? nullptr : job.scale + first;
    out.post = job.post;
    if (out.post.scale != nullptr) {
      out.post.mean += first;
      out.post.scale += first;
      out.post.beta += first;
    }
    out.addend = job.addend == nullptr
                     ? nullptr
                     : job.addend + (out.out - job.out);  // the same position in the addend
    isa.finish(out);
  });
}

void pack_conv_weights(const float* w, int64_t out_channels, int64_t group_in_channels,
                       int64_t kernel_h, int64_t kernel_w, uint32_t* out) {
  // OIHW read as NCHW packs to [O][kh][kw][words]: exactly the layout the kernel reads.
  pack_nchw(w, out_channels, group_in_channels, kernel_h, kernel_w, out);
}

void binary_conv2d(const ConvInput& in, const uint32_t* weights, const ConvParams& p,
                   const ConvOutput& out, const ConvWorkspace& work) {
  const IsaKernels& isa = active_kernels();
  static_assert(kMaxTileChannels >= 6, "tiles hold up to 6 channels");
  ConvCache call_cache;
  ThreadBuffers<uint32_t> call_buffers;
  ConvCache& cache = work.cache != nullptr ? *work.cache : call_cache;
  ThreadBuffers<uint32_t>& buffers =
      work.thread_buffers != nullptr ? *work.thread_buffers : call_buffers;
  uint32_t* const scratch = work.packed;
  const int64_t words = p.groups * p.group_words();
  const int64_t image_words = p.image_words();

  // 1. The planar packed input, one (image, word, band of rows) per item: bands only where
  // there are fewer words than threads could share.
  const int pack_threads =
      threads_for_floats(static_cast<double>(p.batch) * p.in_channels * p.in_h * p.in_w,
                         p.batch * words * p.in_h);
  const int64_t bands =
      std::min<int64_t>(p.in_h, (4 * pack_threads + p.batch * words - 1) / (p.batch * words));
  const int64_t band_rows = (p.in_h + bands - 1) / bands;
  buffers.reserve(pack_threads, band_rows * p.in_w);
  parallel_for(pack_threads, p.batch * words * bands, [&](int64_t item, int thread) {
    const int64_t band = item % bands, j = (item / bands) % words, b = item / bands / words;
    PackArgs args;
    args.x = in.data + b * in.batch_stride;
    args.channel_stride = p.in_h * p.in_w;
    args.thr_sign = in.thr_sign;
    args.thr_bias = in.thr_bias;
    args.params = &p;
    args.word_begin = j;
    args.word_end = j + 1;
    args.row_begin = band * band_rows;
    args.row_end = std::min(p.in_h, args.row_begin + band_rows);
    args.image = scratch + b * image_words;
    args.word_scratch = buffers.get(thread);
    if (args.row_begin < args.row_end) isa.pack(args);
  });
  std::fill(scratch + p.batch * image_words, scratch + p.packed_input_words(), 0u);

  // 2. The tiles, on the weights in the tile's form.
  TileJob job;
  job.params = &p;
  job.packed = scratch;
  job.weights = cache.weights(isa, weights, p.weight_words());
  job.words = p.kernel_h * p.kernel_w * p.group_words();
  job.offsets = cache.offsets(p);
  job.out = out.data;
  job.out_batch_stride = out.batch_stride;
  job.out_channel_stride = p.out_h() * p.out_w();
  job.out_pixel_stride = 1;
  job.mode = out.mode;
  job.scale = out.scale;
  job.post = out.post;
  job.addend = out.addend != nullptr ? out.addend : out.accumulate ? out.data : nullptr;
  const double macs = static_cast<double>(p.batch) * p.out_channels * p.out_h() * p.out_w() *
                      p.fan_in();
  const int64_t tiles = p.batch * p.groups * ((p.out_h() * p.plane_w() + isa.lanes - 1) /
                                              isa.lanes) *
                        ((p.group_out_channels() + isa.max_channels - 1) / isa.max_channels);
  run_tiles(isa, job, threads_for(macs, tiles));
}

void binary_conv2d(const float* x, const uint32_t* weights, const ConvParams& p, OutputMode mode,
                   const float* scale, uint32_t* scratch, float* out) {
  ConvInput in;
  in.data = x;
  in.batch_stride = p.in_channels * p.in_h * p.in_w;
  ConvOutput o;
  o.data = out;
  o.batch_stride = p.out_channels * p.out_h() * p.out_w();
  o.mode = mode;
  o.scale = scale;
  ConvWorkspace work;
  work.packed = scratch;
  binary_conv2d(in, weights, p, o, work);
}

}  // namespace bmx
