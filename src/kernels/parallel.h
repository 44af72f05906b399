// Work splitting over OpenMP threads, and per-thread scratch that a caller keeps between calls
// (no MXNet types).
//
// parallel_for runs a single-thread job without entering an OpenMP region at all: libgomp
// allocates (and frees) a team for every region of one thread, while a team of two or more is
// kept and reused by the next region of the same size. So a steady-state call allocates nothing.
// Not for use inside the SIMD translation units (conv_isa_*.cc, see conv_isa_impl.h).
#ifndef BMXNET_KERNELS_PARALLEL_H_
#define BMXNET_KERNELS_PARALLEL_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace bmx {

// body(item, thread) for item in [0, items), split statically over `threads` threads; thread is
// the OpenMP thread number, in [0, threads).
template <typename Body>
void parallel_for(int threads, int64_t items, const Body& body) {
#ifdef _OPENMP
  if (threads > 1 && items > 1) {
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t item = 0; item < items; ++item) body(item, omp_get_thread_num());
    return;
  }
#endif
  for (int64_t item = 0; item < items; ++item) body(item, 0);
}

// One buffer per thread of a parallel_for, grown before the region, never shrunk.
template <typename T>
class ThreadBuffers {
 public:
  // Makes buffers 0 .. threads - 1 hold at least `count` values each (allocates only to grow).
  void reserve(int threads, int64_t count) {
    if (buffers_.size() < static_cast<size_t>(threads)) buffers_.resize(threads);
    for (int t = 0; t < threads; ++t) {
      if (buffers_[t].size() < static_cast<size_t>(count)) buffers_[t].resize(count);
    }
  }
  T* get(int thread) { return buffers_[thread].data(); }

 private:
  std::vector<std::vector<T>> buffers_;
};

}  // namespace bmx

#endif  // BMXNET_KERNELS_PARALLEL_H_
