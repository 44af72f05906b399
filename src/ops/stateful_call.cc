// lib_api's entry for the forward and backward of a stateful operator, replaced so that a call
// allocates nothing: MXNet's src/lib_api.cc builds four std::vectors (and a shape vector per
// tensor) on every call; this one fills the tensor lists kept in our state (ops/op_util.h).
// CMakeLists.txt compiles lib_api.cc with its own definition renamed to
// bmx_lib_api_stateful_compute, which serves every call this one does not (sparse tensors, a
// state whose lists are in use).
#include "ops/op_util.h"

using mxnet::ext::CustomStatefulOp;
using mxnet::ext::MXContext;
using mxnet::ext::MXDType;
using mxnet::ext::MXTensor;

extern "C" int bmx_lib_api_stateful_compute(
    int is_forward, void* state_op, const int64_t** inshapes, int* indims, void** indata,
    int* intypes, size_t* inIDs, const char** indev_type, int* indev_id, int num_in,
    const int64_t** outshapes, int* outdims, void** outdata, int* outtypes, size_t* outIDs,
    const char** outdev_type, int* outdev_id, int num_out, mxnet::ext::xpu_malloc_t cpu_malloc,
    void* cpu_alloc, mxnet::ext::xpu_malloc_t gpu_malloc, void* gpu_alloc, void* stream,
    mxnet::ext::sparse_malloc_t sparse_malloc, void* sparse_alloc, int* instypes,
    int* outstypes, void** in_indices, void** out_indices, void** in_indptr, void** out_indptr,
    int64_t* in_indices_shapes, int64_t* out_indices_shapes, int64_t* in_indptr_shapes,
    int64_t* out_indptr_shapes, void* rng_cpu_states, void* rng_gpu_states);

namespace {

// Fills `tensors` (kept between calls: no allocation once they have the count and ranks).
void fill(std::vector<MXTensor>* tensors, int count, const int64_t** shapes, const int* dims,
          void** data, const int* types, const size_t* ids, const char** dev_types,
          const int* dev_ids) {
  tensors->resize(count);
  for (int i = 0; i < count; ++i) {
    (*tensors)[i].setTensor(data[i], static_cast<MXDType>(types[i]), shapes[i], dims[i], ids[i],
                            MXContext(dev_types[i], dev_ids[i]), mxnet::ext::kDefaultStorage);
  }
}

bool all_dense(const int* storage_types, int count) {
  for (int i = 0; i < count; ++i) {
    if (storage_types[i] != 0) return false;
  }
  return true;
}

}  // namespace

extern "C" int _opCallFStatefulCompute(
    int is_forward, void* state_op, const int64_t** inshapes, int* indims, void** indata,
    int* intypes, size_t* inIDs, const char** indev_type, int* indev_id, int num_in,
    const int64_t** outshapes, int* outdims, void** outdata, int* outtypes, size_t* outIDs,
    const char** outdev_type, int* outdev_id, int num_out, mxnet::ext::xpu_malloc_t cpu_malloc,
    void* cpu_alloc, mxnet::ext::xpu_malloc_t gpu_malloc, void* gpu_alloc, void* stream,
    mxnet::ext::sparse_malloc_t sparse_malloc, void* sparse_alloc, int* instypes,
    int* outstypes, void** in_indices, void** out_indices, void** in_indptr, void** out_indptr,
    int64_t* in_indices_shapes, int64_t* out_indices_shapes, int64_t* in_indptr_shapes,
    int64_t* out_indptr_shapes, void* rng_cpu_states, void* rng_gpu_states) {
  auto* state = dynamic_cast<bmx::ops::OpState*>(static_cast<CustomStatefulOp*>(state_op));
  // MXNet orders the calls of one state (it writes the state's engine variable); the flag only
  // guards against a caller that does not.
  if (state == nullptr || !all_dense(instypes, num_in) || !all_dense(outstypes, num_out) ||
      state->in_call.exchange(true)) {
    return bmx_lib_api_stateful_compute(
        is_forward, state_op, inshapes, indims, indata, intypes, inIDs, indev_type, indev_id,
        num_in, outshapes, outdims, outdata, outtypes, outIDs, outdev_type, outdev_id, num_out,
        cpu_malloc, cpu_alloc, gpu_malloc, gpu_alloc, stream, sparse_malloc, sparse_alloc,
        instypes, outstypes, in_indices, out_indices, in_indptr, out_indptr, in_indices_shapes,
        out_indices_shapes, in_indptr_shapes, out_indptr_shapes, rng_cpu_states,
        rng_gpu_states);
  }
  fill(&state->call_inputs, num_in, inshapes, indims, indata, intypes, inIDs, indev_type,
       indev_id);
  fill(&state->call_outputs, num_out, outshapes, outdims, outdata, outtypes, outIDs, outdev_type,
       outdev_id);
  const mxnet::ext::OpResource res(cpu_malloc, cpu_alloc, gpu_malloc, gpu_alloc, stream,
                                   sparse_malloc, sparse_alloc, rng_cpu_states, rng_gpu_states);
  const mxnet::ext::MXReturnValue result =
      is_forward ? state->Forward(&state->call_inputs, &state->call_outputs, res)
                 : state->Backward(&state->call_inputs, &state->call_outputs, res);
  state->in_call.store(false);
  return result;
}
