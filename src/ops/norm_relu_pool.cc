// bmx_norm_relu_pool: BatchNorm (inference, running statistics) -> ReLU -> max pooling, one pass.
//
// Inputs: data float32 (N, C, H, W); gamma, beta, moving_mean, moving_var float32 (C,), the
// BatchNorm's parameters as they are. Attributes: eps, fix_gamma (as BatchNorm), kernel, stride,
// pad (as Pooling with pool_type='max' and the 'valid' convention). Output float32
// (N, C, H_out, W_out). Equals MXNet's BatchNorm -> relu -> Pooling on a plain NCHW input bit for
// bit (kernels/norm_pool.h). With norm=False only data is an input: relu -> Pooling (QuickNet's
// transitions, where MXNet's pooling on plain NCHW is slow).
#include <vector>

#include "kernels/norm_pool.h"
#include "ops/op_util.h"

using mxnet::ext::MXDType;
using mxnet::ext::MXReturnValue;
using mxnet::ext::MXTensor;
using mxnet::ext::OpResource;

namespace {

constexpr const char* kOp = "bmx_norm_relu_pool";
constexpr int64_t kMaxWindow = 4096;
constexpr const char* kInputs[] = {"data", "gamma", "beta", "moving_mean", "moving_var"};

struct NormPoolAttrs {
  int64_t kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w;
  float eps;
  bool fix_gamma, norm;
};

bool parse(const bmx::ops::Attrs& attrs, NormPoolAttrs* a) {
  using namespace bmx::ops;
  if (!check_attr_names(kOp, attrs, {"kernel", "stride", "pad", "eps", "fix_gamma", "norm"}))
    return false;
  if (!require_attrs(kOp, attrs, {"kernel"}, "")) return false;
  if (!read_pair(kOp, attrs, "kernel", 1, 1, kMaxWindow, &a->kernel_h, &a->kernel_w) ||
      !read_pair(kOp, attrs, "stride", 1, 1, kMaxWindow, &a->stride_h, &a->stride_w) ||
      !read_pair(kOp, attrs, "pad", 0, 0, kMaxWindow, &a->pad_h, &a->pad_w) ||
      !read_bool(kOp, attrs, "fix_gamma", false, &a->fix_gamma) ||
      !read_bool(kOp, attrs, "norm", true, &a->norm))
    return false;
  if (a->pad_h >= a->kernel_h || a->pad_w >= a->kernel_w) {
    MX_ERROR_MSG << kOp << ": pad (" << a->pad_h << ", " << a->pad_w << ") must be smaller than "
                 << "the kernel (" << a->kernel_h << ", " << a->kernel_w << ")";
    return false;
  }
  if (!read_eps(kOp, attrs, "eps", 1e-5f, &a->eps)) return false;
  return true;
}

bmx::NormPoolParams params(const NormPoolAttrs& a, const std::vector<int64_t>& shape) {
  bmx::NormPoolParams p;
  p.batch = shape[0];
  p.channels = shape[1];
  p.in_h = shape[2];
  p.in_w = shape[3];
  p.kernel_h = a.kernel_h;
  p.kernel_w = a.kernel_w;
  p.stride_h = a.stride_h;
  p.stride_w = a.stride_w;
  p.pad_h = a.pad_h;
  p.pad_w = a.pad_w;
  p.eps = a.eps;
  p.fix_gamma = a.fix_gamma;
  p.normalize = a.norm;
  return p;
}

MXReturnValue parse_attrs(const bmx::ops::Attrs& attrs, int* num_in, int* num_out) {
  NormPoolAttrs a;
  if (!parse(attrs, &a)) return mxnet::ext::MX_FAIL;
  *num_in = a.norm ? 5 : 1;
  *num_out = 1;
  return mxnet::ext::MX_SUCCESS;
}

MXReturnValue infer_type(const bmx::ops::Attrs& attrs, std::vector<int>* in_types,
                         std::vector<int>* out_types) {
  return bmx::ops::all_float32(kOp, kInputs, in_types, out_types) ? mxnet::ext::MX_SUCCESS
                                                                   : mxnet::ext::MX_FAIL;
}

MXReturnValue infer_shape(const bmx::ops::Attrs& attrs, bmx::ops::Shapes* in_shapes,
                          bmx::ops::Shapes* out_shapes) {
  using namespace bmx::ops;
  NormPoolAttrs a;
  if (!parse(attrs, &a)) return mxnet::ext::MX_FAIL;
  if (!check_known_nchw(kOp, *in_shapes)) return mxnet::ext::MX_FAIL;
  const auto& s = (*in_shapes)[0];
  for (size_t i = 1; i < in_shapes->size(); ++i) {
    if (!assign_or_check_shape(kOp, in_shapes, i, kInputs[i], {s[1]}, "(C,), one per channel"))
      return mxnet::ext::MX_FAIL;
  }
  const bmx::NormPoolParams p = params(a, {s[0], s[1], s[2], s[3]});
  if (p.out_h() < 1 || p.out_w() < 1) {
    MX_ERROR_MSG << kOp << ": the pooling window (" << a.kernel_h << ", " << a.kernel_w
                 << ") with pad (" << a.pad_h << ", " << a.pad_w << ") does not fit data shape "
                 << shape_str(s);
    return mxnet::ext::MX_FAIL;
  }
  (*out_shapes)[0] = {s[0], s[1], static_cast<unsigned int>(p.out_h()),
                      static_cast<unsigned int>(p.out_w())};
  return mxnet::ext::MX_SUCCESS;
}

// One graph node's BatchNorm -> ReLU -> pooling: its attributes and its threads' buffers.
class NormPoolState : public bmx::ops::OpState {
 public:
  explicit NormPoolState(const NormPoolAttrs& a) : a_(a) {}

  // inputs[0]: data [N][C][H][W]; inputs[1..4] (norm=True only): gamma, beta, moving_mean,
  // moving_var [C]; outputs[0]: [N][C][H_out][W_out]; all float32.
  MXReturnValue Forward(std::vector<MXTensor>* inputs, std::vector<MXTensor>* outputs,
                        const OpResource& res) override {
    bmx::ops::forget_reported_errors();
    MXTensor& x = (*inputs)[0];
    const float* norm[4] = {nullptr, nullptr, nullptr, nullptr};  // gamma, beta, mean, var
    for (size_t i = 1; a_.norm && i < 5; ++i) norm[i - 1] = (*inputs)[i].data<float>();
    bmx::norm_relu_pool(x.data<float>(), norm[0], norm[1], norm[2], norm[3], params(a_, x.shape),
                        (*outputs)[0].data<float>(), &buffers_);
    return mxnet::ext::MX_SUCCESS;
  }

 private:
  const NormPoolAttrs a_;
  bmx::ThreadBuffers<float> buffers_;
};

MXReturnValue create_state(const bmx::ops::Attrs& attrs, const mxnet::ext::MXContext& ctx,
                           const bmx::ops::Shapes& in_shapes, const std::vector<int> in_types,
                           mxnet::ext::CustomStatefulOp** state) {
  NormPoolAttrs a;
  if (!parse(attrs, &a)) return mxnet::ext::MX_FAIL;
  *state = mxnet::ext::CustomStatefulOp::create<NormPoolState>(a);
  return mxnet::ext::MX_SUCCESS;
}

}  // namespace

REGISTER_OP(bmx_norm_relu_pool)
    .setParseAttrs(parse_attrs)
    .setInferType(infer_type)
    .setInferShape(infer_shape)
    .setCreateOpState(create_state, "cpu");
