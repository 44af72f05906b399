#include "kernels/norm_pool.h"

#include <algorithm>

#include "kernels/conv_isa.h"

namespace bmx {

void norm_relu_pool(const float* x, const float* gamma, const float* beta, const float* mean,
                    const float* var, const NormPoolParams& p, float* out,
                    ThreadBuffers<float>* buffers) {
  const IsaKernels& isa = active_kernels();
  ThreadBuffers<float> call_buffers;
  if (buffers == nullptr) buffers = &call_buffers;
  const int64_t planes = p.batch * p.channels, out_h = p.out_h();
  const int64_t in_plane = p.in_h * p.in_w, out_plane = out_h * p.out_w();
  // Items are bands of output rows of a plane: whole planes, unless there are too few planes
  // for the threads to share (a batch of one narrow map).
  const int threads = threads_for_floats(static_cast<double>(planes) * in_plane, planes * out_h);
  const int64_t bands = std::min(out_h, (4 * threads + planes - 1) / planes);
  const int64_t band_rows = (out_h + bands - 1) / bands;
  // Per thread: the band's normalized input rows (at most the plane), then a row of maxima.
  buffers->reserve(threads, in_plane + p.in_w);
  parallel_for(threads, planes * bands, [&](int64_t item, int thread) {
    const int64_t i = item / bands, band = item % bands, c = i % p.channels;
    NormPoolArgs args;
    args.x = x + i * in_plane;
    // Without a BatchNorm: (x - 0) * 1 + 0 is x for every float (-0 aside, which the ReLU
    // makes 0 either way), so the ReLU alone is computed exactly.
    args.mean = p.normalize ? mean[c] : 0.0f;
    args.scale = p.normalize ? batchnorm_scale(p.fix_gamma ? 1.0f : gamma[c], var[c], p.eps)
                             : 1.0f;
    args.beta = p.normalize ? beta[c] : 0.0f;
    args.params = &p;
    args.out_row_begin = band * band_rows;
    args.out_row_end = std::min(out_h, args.out_row_begin + band_rows);
    args.normalized = buffers->get(thread);
    args.out = out + i * out_plane;
    if (args.out_row_begin < args.out_row_end) isa.norm_relu_pool(args);
  });
}

}  // namespace bmx
