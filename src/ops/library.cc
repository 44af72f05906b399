// The library's one initialize() gate: MXNet calls it on mx.library.load with its version number.
#include "kernels/isa.h"
#include "kernels/parallel.h"
#include "mxnet/lib_api.h"

using mxnet::ext::MXReturnValue;

MXReturnValue initialize(int version) {
  if (version >= 10900 && version < 20000) return mxnet::ext::MX_SUCCESS;
  MX_ERROR_MSG << "libbmxnet_ops.so was built for MXNet 1.9.x but was loaded into MXNet version "
               << version << "; install mxnet 1.9.1 and rebuild bmxnet_ext (pip install .)";
  return mxnet::ext::MX_FAIL;
}

// For reports and tests (ctypes): the inner loop the ops run, e.g. "avx512-vpopcntdq". The op
// library and the Cython bindings each choose on their own, from the same CPU and BMXNET_ISA.
extern "C" const char* bmx_kernel_name() { return bmx::kernel_name(); }

// For tests and benchmarks (ctypes): makes the op library's kernels use the path named "scalar",
// "avx2" or "avx512" (falling back as BMXNET_ISA does) and returns the name of the path that was
// active before; null, changing nothing, for any other name.
extern "C" const char* bmx_set_isa(const char* name) {
  bmx::Isa requested;
  if (name == nullptr || !bmx::parse_isa(name, &requested)) return nullptr;
  const bmx::Isa previous = bmx::active_isa();
  bmx::set_isa(requested);
  return bmx::isa_name(previous);
}

// For bmxnet_ext.kernels.set_num_threads (ctypes): the op library keeps its own thread pool
// (src/kernels/parallel.h), as the Cython bindings do. n <= 0 returns to OMP_NUM_THREADS (or the
// CPU count); returns the previous count.
extern "C" int bmx_set_num_threads(int n) { return bmx::set_num_threads(n); }

// The most threads an operator uses.
extern "C" int bmx_num_threads() { return bmx::num_threads(); }

// For tests (ctypes): how many jobs the op library's pool has run on more than one thread.
extern "C" int64_t bmx_pool_jobs() { return bmx::pool_jobs(); }
