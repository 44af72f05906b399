// bmx_grouped_conv2d: a float convolution with few input channels per group, equal bit for bit
// to MXNet 1.9.1's Convolution where oneDNN sums it in the order the attribute `order` names
// (kernels/group_conv.h; the converter checks the equality on probes before it uses this).
//
// Inputs: data float32 (N, C, H, W); weight float32 (num_filter, C / num_group, kh, kw), as
// Convolution's. Attributes: kernel, stride, pad, num_filter, num_group (as Convolution; no bias,
// no dilation); order "gemm" (default) or "direct", block (direct's input channel block, 8).
// Output float32 (N, num_filter, H_out, W_out) in plain NCHW.
#include <string>
#include <vector>

#include "kernels/group_conv.h"
#include "ops/op_util.h"

using mxnet::ext::MXDType;
using mxnet::ext::MXReturnValue;
using mxnet::ext::MXTensor;
using mxnet::ext::OpResource;

namespace {

constexpr const char* kOp = "bmx_grouped_conv2d";
constexpr int64_t kMaxWindow = 4096;
constexpr int64_t kMaxChannels = 1 << 20;
constexpr const char* kInputs[] = {"data", "weight"};

struct GroupedConvAttrs {
  int64_t kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, num_filter, num_group, block;
  bmx::SumOrder order;
};

bool read_order(const bmx::ops::Attrs& attrs, bmx::SumOrder* order) {
  const auto it = attrs.find("order");
  const std::string value = it == attrs.end() ? "gemm" : it->second;
  if (value != "gemm" && value != "direct") {
    MX_ERROR_MSG << kOp << ": order must be 'gemm' or 'direct', got '" << value << "'";
    return false;
  }
  *order = value == "gemm" ? bmx::SumOrder::kGemm : bmx::SumOrder::kDirect;
  return true;
}

bool parse(const bmx::ops::Attrs& attrs, GroupedConvAttrs* a) {
  using namespace bmx::ops;
  if (!check_attr_names(kOp, attrs,
                        {"kernel", "stride", "pad", "num_filter", "num_group", "order", "block"}))
    return false;
  if (!require_attrs(kOp, attrs, {"kernel", "num_filter"}, "")) return false;
  return read_pair(kOp, attrs, "kernel", 1, 1, kMaxWindow, &a->kernel_h, &a->kernel_w) &&
         read_pair(kOp, attrs, "stride", 1, 1, kMaxWindow, &a->stride_h, &a->stride_w) &&
         read_pair(kOp, attrs, "pad", 0, 0, kMaxWindow, &a->pad_h, &a->pad_w) &&
         read_int(kOp, attrs, "num_filter", 1, 1, kMaxChannels, &a->num_filter) &&
         read_int(kOp, attrs, "num_group", 1, 1, kMaxChannels, &a->num_group) &&
         read_int(kOp, attrs, "block", 8, 1, kMaxChannels, &a->block) &&
         read_order(attrs, &a->order);
}

bmx::GroupConvParams params(const GroupedConvAttrs& a, const std::vector<int64_t>& shape) {
  bmx::GroupConvParams p;
  p.batch = shape[0];
  p.in_channels = shape[1];
  p.in_h = shape[2];
  p.in_w = shape[3];
  p.out_channels = a.num_filter;
  p.groups = a.num_group;
  p.kernel_h = a.kernel_h;
  p.kernel_w = a.kernel_w;
  p.stride_h = a.stride_h;
  p.stride_w = a.stride_w;
  p.pad_h = a.pad_h;
  p.pad_w = a.pad_w;
  p.order = a.order;
  p.block = a.block;
  return p;
}

MXReturnValue parse_attrs(const bmx::ops::Attrs& attrs, int* num_in, int* num_out) {
  GroupedConvAttrs a;
  if (!parse(attrs, &a)) return mxnet::ext::MX_FAIL;
  *num_in = 2;
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
  GroupedConvAttrs a;
  if (!parse(attrs, &a)) return mxnet::ext::MX_FAIL;
  if (!check_known_nchw(kOp, *in_shapes)) return mxnet::ext::MX_FAIL;
  const auto& s = (*in_shapes)[0];
  if (s[1] % a.num_group != 0 || a.num_filter % a.num_group != 0) {
    MX_ERROR_MSG << kOp << ": num_group=" << a.num_group << " must divide the input channels ("
                 << s[1] << ") and num_filter (" << a.num_filter << ")";
    return mxnet::ext::MX_FAIL;
  }
  const std::vector<unsigned int> weight = {
      static_cast<unsigned int>(a.num_filter), static_cast<unsigned int>(s[1] / a.num_group),
      static_cast<unsigned int>(a.kernel_h), static_cast<unsigned int>(a.kernel_w)};
  if (!assign_or_check_shape(kOp, in_shapes, 1, "weight", weight,
                             "(num_filter, C / num_group, kh, kw)"))
    return mxnet::ext::MX_FAIL;
  if (s[2] + 2 * a.pad_h < a.kernel_h || s[3] + 2 * a.pad_w < a.kernel_w) {
    MX_ERROR_MSG << kOp << ": the kernel (" << a.kernel_h << ", " << a.kernel_w << ") with pad ("
                 << a.pad_h << ", " << a.pad_w << ") does not fit data shape " << shape_str(s);
    return mxnet::ext::MX_FAIL;
  }
  const bmx::GroupConvParams p = params(a, {s[0], s[1], s[2], s[3]});
  (*out_shapes)[0] = {s[0], static_cast<unsigned int>(a.num_filter),
                      static_cast<unsigned int>(p.out_h()), static_cast<unsigned int>(p.out_w())};
  return mxnet::ext::MX_SUCCESS;
}

// One graph node's convolution: its attributes and its scratch.
class GroupedConvState : public bmx::ops::OpState {
 public:
  explicit GroupedConvState(const GroupedConvAttrs& a) : a_(a) {}

  MXReturnValue Forward(std::vector<MXTensor>* inputs, std::vector<MXTensor>* outputs,
                        const OpResource& res) override {
    bmx::ops::forget_reported_errors();
    MXTensor& x = (*inputs)[0];
    bmx::group_conv(x.data<float>(), (*inputs)[1].data<float>(), params(a_, x.shape),
                    (*outputs)[0].data<float>(), &scratch_);
    return mxnet::ext::MX_SUCCESS;
  }

 private:
  const GroupedConvAttrs a_;
  bmx::GroupConvScratch scratch_;
};

MXReturnValue create_state(const bmx::ops::Attrs& attrs, const mxnet::ext::MXContext& ctx,
                           const bmx::ops::Shapes& in_shapes, const std::vector<int> in_types,
                           mxnet::ext::CustomStatefulOp** state) {
  GroupedConvAttrs a;
  if (!parse(attrs, &a)) return mxnet::ext::MX_FAIL;
  *state = mxnet::ext::CustomStatefulOp::create<GroupedConvState>(a);
  return mxnet::ext::MX_SUCCESS;
}

}  // namespace

REGISTER_OP(bmx_grouped_conv2d)
    .setParseAttrs(parse_attrs)
    .setInferType(infer_type)
    .setInferShape(infer_shape)
    .setCreateOpState(create_state, "cpu");
