// Work splitting over the kernels' own thread pool, and per-thread scratch that a caller keeps
// between calls (no MXNet types).
//
// parallel_for hands a job's items out in chunks from an atomic counter to the calling thread
// and to up to threads - 1 pool workers, so a thread that runs slowly (another process on its
// core) simply takes fewer chunks, and a worker that wakes late finds the job already done. The
// pool (parallel.cc) has N - 1 workers for num_threads() = N, started on first use; they spin a
// few microseconds after a job (the next layer's job usually follows at once) and then sleep on a
// condition variable, so an idle pool costs nothing. A dispatch allocates nothing. A call made
// while the pool runs another caller's job (MXNet's threaded engine may run two operators at
// once; Python threads may call the bindings at once) or from inside a job runs alone on its
// calling thread: never a deadlock, never a nested dispatch. A child process forked after the
// pool started gets a fresh pool on first use. When a caller had to wait long for a worker the
// system had taken off its core (another process keeps the cores busy), the pool runs jobs on
// their callers alone for a while (50 ms) before it tries its workers again: two threads then
// cost about what one does instead of a time slice per job.
//
// Results do not depend on the thread count as long as each item writes its own outputs.
#ifndef BMXNET_KERNELS_PARALLEL_H_
#define BMXNET_KERNELS_PARALLEL_H_

#include <cstddef>
#include <cstdint>
#include <vector>

namespace bmx {

// The most threads a kernel uses (the calling thread included): set_num_threads(n) once called
// with n >= 1; else the first entry of OMP_NUM_THREADS when it is a positive number (the variable
// users set for MXNet too, read once); else the CPUs this process may run on.
int num_threads();

// Makes num_threads() return n (clamped to [1, kMaxThreads]), or with n <= 0 the environment's
// count again. Returns the previous num_threads(). The pool grows on its next job if needed, and
// tries its workers again at once if it had been running jobs alone (below).
int set_num_threads(int n);

constexpr int kMaxThreads = 256;

// How many jobs the pool has run on more than one thread so far (a worker may or may not have
// joined each): for tests that must know a layer was split.
int64_t pool_jobs();

namespace detail {
// Runs fn(body, begin, end, slot) over chunks [begin, end) covering [0, items) exactly once, on
// the calling thread (slot 0) and up to threads - 1 pool workers (slots 1 .. threads - 1).
using ChunkFn = void (*)(const void* body, int64_t begin, int64_t end, int slot);
void run_parallel(int threads, int64_t items, ChunkFn fn, const void* body);
}  // namespace detail

// body(item, slot) for item in [0, items), each exactly once, on up to `threads` threads; slot
// identifies the thread running the item, in [0, threads) (for ThreadBuffers).
template <typename Body>
void parallel_for(int threads, int64_t items, const Body& body) {
  if (threads > 1 && items > 1) {
    detail::run_parallel(
        threads, items,
        [](const void* b, int64_t begin, int64_t end, int slot) {
          const Body& run = *static_cast<const Body*>(b);
          for (int64_t item = begin; item < end; ++item) run(item, slot);
        },
        &body);
    return;
  }
  for (int64_t item = 0; item < items; ++item) body(item, 0);
}

// One buffer per thread slot of a parallel_for, grown before the job, never shrunk.
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
