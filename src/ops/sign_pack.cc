// bmx_sign_pack: float32 NCHW activations -> int32 bit words [N, H, W, ceil(C/32)], bit = x >= 0.
// The int32 words carry the raw bits of kernels/bitpack.h's uint32 words.
#include <limits>

#include "kernels/bitpack.h"
#include "ops/op_util.h"

using mxnet::ext::MXDType;
using mxnet::ext::MXReturnValue;
using mxnet::ext::MXTensor;
using mxnet::ext::OpResource;

namespace {

constexpr const char* kOp = "bmx_sign_pack";

MXReturnValue parse_attrs(const bmx::ops::Attrs& attrs, int* num_in, int* num_out) {
  *num_in = 1;
  *num_out = 1;
  return bmx::ops::check_attr_names(kOp, attrs, {}) ? mxnet::ext::MX_SUCCESS
                                                    : mxnet::ext::MX_FAIL;
}

MXReturnValue infer_type(const bmx::ops::Attrs& attrs, std::vector<int>* in_types,
                         std::vector<int>* out_types) {
  if (!bmx::ops::check_dtype(kOp, *in_types, 0, "data", MXDType::kFloat32))
    return mxnet::ext::MX_FAIL;
  (*out_types)[0] = MXDType::kInt32;
  return mxnet::ext::MX_SUCCESS;
}

MXReturnValue infer_shape(const bmx::ops::Attrs& attrs, bmx::ops::Shapes* in_shapes,
                          bmx::ops::Shapes* out_shapes) {
  if (!bmx::ops::check_rank(kOp, *in_shapes, 0, "data", 4, "N, C, H, W"))
    return mxnet::ext::MX_FAIL;
  const auto& s = (*in_shapes)[0];
  if (s[1] == 0) {
    MX_ERROR_MSG << kOp << ": input 'data' must have at least one channel, got shape "
                 << bmx::ops::shape_str(s);
    return mxnet::ext::MX_FAIL;
  }
  (*out_shapes)[0] = {s[0], s[2], s[3],
                      static_cast<unsigned int>(bmx::words_for_channels(s[1]))};
  return mxnet::ext::MX_SUCCESS;
}

// Nothing to keep between calls; stateful as every bmx_* op is, so that a call allocates
// nothing (ops/stateful_call.cc).
class SignPackState : public bmx::ops::OpState {
 public:
  // inputs[0]: data [N][C][H][W] float32; outputs[0]: [N][H][W][words] int32.
  MXReturnValue Forward(std::vector<MXTensor>* inputs, std::vector<MXTensor>* outputs,
                        const OpResource& res) override {
    bmx::ops::forget_reported_errors();
    MXTensor& x = (*inputs)[0];
    bmx::pack_nchw(x.data<float>(), x.shape[0], x.shape[1], x.shape[2], x.shape[3],
                   reinterpret_cast<uint32_t*>((*outputs)[0].data<int32_t>()));
    return mxnet::ext::MX_SUCCESS;
  }
};

MXReturnValue create_state(const bmx::ops::Attrs& attrs, const mxnet::ext::MXContext& ctx,
                           const bmx::ops::Shapes& in_shapes, const std::vector<int> in_types,
                           mxnet::ext::CustomStatefulOp** state) {
  if (!bmx::ops::check_attr_names(kOp, attrs, {})) return mxnet::ext::MX_FAIL;
  *state = mxnet::ext::CustomStatefulOp::create<SignPackState>();
  return mxnet::ext::MX_SUCCESS;
}

}  // namespace

REGISTER_OP(bmx_sign_pack)
    .setParseAttrs(parse_attrs)
    .setInferType(infer_type)
    .setInferShape(infer_shape)
    .setCreateOpState(create_state, "cpu");
