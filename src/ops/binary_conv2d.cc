// bmx_binary_conv2d: binary 2-D convolution of float32 NCHW data with packed int32 weights.
//
// Inputs: data float32 (N, C, H, W); weight int32 (num_filter, kh, kw, ceil(C/num_group/32)),
// the layout of kernels/binary_conv.h (the raw bits of its uint32 words); scale float32
// (num_filter,) only with scaling=True; threshold_sign and threshold_bias float32 (C,) only with
// thresholds=True. The op binarizes data itself (bit = x >= 0, or with thresholds
// threshold_sign[c] * x >= threshold_bias[c]: a BatchNorm before the sign folded in, see
// bmxnet_ext.converter), pads it with pad_value (-1 by default) and returns float32
// (N, num_filter, H_out, W_out) in the convention of the training layer QConv2D: (dot + K) / 2,
// dot (offset=False) or dot * scale.
//
// An epilogue (the float layers after a binary convolution in QuickNet's residual block, in one
// pass over the output): post_relu=True applies ReLU; post_norm=True then an inference BatchNorm
// whose norm_gamma, norm_beta, norm_mean and norm_var float32 (num_filter,) inputs follow the
// others (attributes eps, fix_gamma as BatchNorm; bit-exact with MXNet's BatchNorm on plain
// NCHW); residual=True returns data + that (the output must have data's shape).
#include <climits>
#include <string>
#include <vector>

#include "kernels/binary_conv.h"
#include "kernels/norm_pool.h"
#include "ops/op_util.h"

using mxnet::ext::MXDType;
using mxnet::ext::MXReturnValue;
using mxnet::ext::MXTensor;
using mxnet::ext::OpResource;

namespace {

constexpr const char* kOp = "bmx_binary_conv2d";
constexpr int64_t kMaxWindow = 4096;      // kernel, stride, dilate and pad sizes
constexpr int64_t kMaxChannels = 1 << 20;  // num_filter, in_channels, num_group

struct ConvAttrs {
  int64_t kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilate_h, dilate_w;
  int64_t num_filter, in_channels, num_group;
  bool offset, scaling, thresholds;
  int pad_value;
  bool post_relu, post_norm, fix_gamma, residual;
  float eps;
};

bool parse(const bmx::ops::Attrs& attrs, ConvAttrs* a) {
  using namespace bmx::ops;
  if (!check_attr_names(kOp, attrs,
                        {"kernel", "num_filter", "in_channels", "stride", "pad", "dilate",
                         "num_group", "offset", "scaling", "pad_value", "thresholds",
                         "post_relu", "post_norm", "eps", "fix_gamma", "residual"}))
    return false;
  if (!require_attrs(kOp, attrs, {"kernel", "num_filter", "in_channels"},
                     "(the packed weight shape is (num_filter, kernel_h, kernel_w, "
                     "ceil(in_channels / num_group / 32)))"))
    return false;
  if (!read_pair(kOp, attrs, "kernel", 1, 1, kMaxWindow, &a->kernel_h, &a->kernel_w) ||
      !read_pair(kOp, attrs, "stride", 1, 1, kMaxWindow, &a->stride_h, &a->stride_w) ||
      !read_pair(kOp, attrs, "pad", 0, 0, kMaxWindow, &a->pad_h, &a->pad_w) ||
      !read_pair(kOp, attrs, "dilate", 1, 1, kMaxWindow, &a->dilate_h, &a->dilate_w) ||
      !read_int(kOp, attrs, "num_filter", 1, 1, kMaxChannels, &a->num_filter) ||
      !read_int(kOp, attrs, "in_channels", 1, 1, kMaxChannels, &a->in_channels) ||
      !read_int(kOp, attrs, "num_group", 1, 1, kMaxChannels, &a->num_group) ||
      !read_bool(kOp, attrs, "offset", true, &a->offset) ||
      !read_bool(kOp, attrs, "scaling", false, &a->scaling) ||
      !read_bool(kOp, attrs, "thresholds", false, &a->thresholds) ||
      !read_unit_sign(kOp, attrs, "pad_value", -1, &a->pad_value) ||
      !read_bool(kOp, attrs, "post_relu", false, &a->post_relu) ||
      !read_bool(kOp, attrs, "post_norm", false, &a->post_norm) ||
      !read_bool(kOp, attrs, "fix_gamma", false, &a->fix_gamma) ||
      !read_bool(kOp, attrs, "residual", false, &a->residual) ||
      !read_eps(kOp, attrs, "eps", 1e-5f, &a->eps))
    return false;
  if (a->in_channels % a->num_group != 0 || a->num_filter % a->num_group != 0) {
    MX_ERROR_MSG << kOp << ": num_group=" << a->num_group << " must divide in_channels="
                 << a->in_channels << " and num_filter=" << a->num_filter;
    return false;
  }
  return true;
}

// The kernel's parameters for data of shape (n, c, h, w).
bmx::ConvParams conv_params(const ConvAttrs& a, int64_t n, int64_t c, int64_t h, int64_t w) {
  bmx::ConvParams p;
  p.batch = n;
  p.in_channels = c;
  p.in_h = h;
  p.in_w = w;
  p.out_channels = a.num_filter;
  p.kernel_h = a.kernel_h;
  p.kernel_w = a.kernel_w;
  p.stride_h = a.stride_h;
  p.stride_w = a.stride_w;
  p.pad_h = a.pad_h;
  p.pad_w = a.pad_w;
  p.dilate_h = a.dilate_h;
  p.dilate_w = a.dilate_w;
  p.groups = a.num_group;
  p.pad_with_ones = a.pad_value > 0;
  return p;
}

std::vector<unsigned int> weight_shape(const ConvAttrs& a) {
  return {static_cast<unsigned int>(a.num_filter), static_cast<unsigned int>(a.kernel_h),
          static_cast<unsigned int>(a.kernel_w),
          static_cast<unsigned int>(bmx::words_for_channels(a.in_channels / a.num_group))};
}

MXReturnValue parse_attrs(const bmx::ops::Attrs& attrs, int* num_in, int* num_out) {
  ConvAttrs a;
  if (!parse(attrs, &a)) return mxnet::ext::MX_FAIL;
  *num_in = 2 + (a.scaling ? 1 : 0) + (a.thresholds ? 2 : 0) + (a.post_norm ? 4 : 0);
  *num_out = 1;
  return mxnet::ext::MX_SUCCESS;
}

// Positions of the optional inputs.
size_t scale_input(const ConvAttrs& a) { return 2; }
size_t threshold_input(const ConvAttrs& a) { return a.scaling ? 3 : 2; }
size_t norm_input(const ConvAttrs& a) { return threshold_input(a) + (a.thresholds ? 2 : 0); }
constexpr const char* kNormInputs[] = {"norm_gamma", "norm_beta", "norm_mean", "norm_var"};

MXReturnValue infer_type(const bmx::ops::Attrs& attrs, std::vector<int>* in_types,
                         std::vector<int>* out_types) {
  using bmx::ops::assign_or_check_dtype;
  ConvAttrs a;
  if (!parse(attrs, &a)) return mxnet::ext::MX_FAIL;
  const size_t t = threshold_input(a);
  if (!assign_or_check_dtype(kOp, in_types, 0, "data", MXDType::kFloat32) ||
      !assign_or_check_dtype(kOp, in_types, 1, "weight", MXDType::kInt32) ||
      (a.scaling &&
       !assign_or_check_dtype(kOp, in_types, scale_input(a), "scale", MXDType::kFloat32)) ||
      (a.thresholds &&
       (!assign_or_check_dtype(kOp, in_types, t, "threshold_sign", MXDType::kFloat32) ||
        !assign_or_check_dtype(kOp, in_types, t + 1, "threshold_bias", MXDType::kFloat32))))
    return mxnet::ext::MX_FAIL;
  for (size_t i = 0; a.post_norm && i < 4; ++i) {
    if (!assign_or_check_dtype(kOp, in_types, norm_input(a) + i, kNormInputs[i],
                               MXDType::kFloat32))
      return mxnet::ext::MX_FAIL;
  }
  (*out_types)[0] = MXDType::kFloat32;
  return mxnet::ext::MX_SUCCESS;
}

MXReturnValue infer_shape(const bmx::ops::Attrs& attrs, bmx::ops::Shapes* in_shapes,
                          bmx::ops::Shapes* out_shapes) {
  using namespace bmx::ops;
  ConvAttrs a;
  if (!parse(attrs, &a)) return mxnet::ext::MX_FAIL;
  // The weight (and scale) shapes follow from the attributes alone, so symbolic graphs with
  // weight variables infer them.
  if (!assign_or_check_shape(kOp, in_shapes, 1, "weight", weight_shape(a),
                             "(num_filter, kernel_h, kernel_w, ceil(in_channels / num_group / "
                             "32)) packed int32 words") ||
      (a.scaling && !assign_or_check_shape(kOp, in_shapes, scale_input(a), "scale",
                                           {static_cast<unsigned int>(a.num_filter)},
                                           "(num_filter,)")))
    return mxnet::ext::MX_FAIL;
  const std::vector<unsigned int> per_channel = {static_cast<unsigned int>(a.in_channels)};
  if (a.thresholds &&
      (!assign_or_check_shape(kOp, in_shapes, threshold_input(a), "threshold_sign", per_channel,
                              "(in_channels,)") ||
       !assign_or_check_shape(kOp, in_shapes, threshold_input(a) + 1, "threshold_bias",
                              per_channel, "(in_channels,)")))
    return mxnet::ext::MX_FAIL;
  const std::vector<unsigned int> per_filter = {static_cast<unsigned int>(a.num_filter)};
  for (size_t i = 0; a.post_norm && i < 4; ++i) {
    if (!assign_or_check_shape(kOp, in_shapes, norm_input(a) + i, kNormInputs[i], per_filter,
                               "(num_filter,)"))
      return mxnet::ext::MX_FAIL;
  }
  if (!check_rank(kOp, *in_shapes, 0, "data", 4, "N, C, H, W")) return mxnet::ext::MX_FAIL;
  const auto& s = (*in_shapes)[0];
  if (dim_is_empty_or_unknown(s[0])) {
    MX_ERROR_MSG << kOp << ": input 'data' must have a known, non-empty batch dimension, got "
                 << "shape " << shape_str(s);
    return mxnet::ext::MX_FAIL;
  }
  if (s[1] != a.in_channels) {
    MX_ERROR_MSG << kOp << ": input 'data' has " << s[1] << " channels but in_channels="
                 << a.in_channels << " (the channel count the weights were packed for); got "
                 << "shape " << shape_str(s);
    return mxnet::ext::MX_FAIL;
  }
  if (dim_is_empty_or_unknown(s[2]) || dim_is_empty_or_unknown(s[3])) {
    MX_ERROR_MSG << kOp << ": input 'data' must have known, non-zero height and width, got "
                 << "shape " << shape_str(s);
    return mxnet::ext::MX_FAIL;
  }
  const bmx::ConvParams p = conv_params(a, s[0], s[1], s[2], s[3]);
  if (p.out_h() < 1 || p.out_w() < 1) {
    MX_ERROR_MSG << kOp << ": the kernel (" << a.kernel_h << ", " << a.kernel_w
                 << ") dilated by (" << a.dilate_h << ", " << a.dilate_w
                 << ") does not fit the padded input (" << p.padded_h() << ", " << p.padded_w()
                 << ") of data shape " << shape_str(s) << " with pad (" << a.pad_h << ", "
                 << a.pad_w << ")";
    return mxnet::ext::MX_FAIL;
  }
  // Counts are 32-bit integers: K must stay below 2^31.
  if (static_cast<double>(p.fan_in()) >= 2147483648.0) {
    MX_ERROR_MSG << kOp << ": fan-in in_channels / num_group * kernel_h * kernel_w = "
                 << p.fan_in() << " is too large (at most 2^31 - 1)";
    return mxnet::ext::MX_FAIL;
  }
  // The packed input lives in scratch memory from MXNet, whose allocator takes an int size.
  // (Sizes in double: absurd shapes must not overflow the check itself.)
  const double scratch_bytes =
      4.0 * (static_cast<double>(p.batch) * p.groups * p.group_words() * p.stride_h *
                 p.stride_w * p.plane_h() * p.plane_w() + bmx::kMaxTileLanes);
  if (scratch_bytes > INT_MAX) {
    MX_ERROR_MSG << kOp << ": data shape " << shape_str(s) << " with pad (" << a.pad_h << ", "
                 << a.pad_w << ") is too large: its packed input needs " << scratch_bytes
                 << " bytes, at most " << INT_MAX << " are supported; split the batch";
    return mxnet::ext::MX_FAIL;
  }
  (*out_shapes)[0] = {s[0], static_cast<unsigned int>(a.num_filter),
                      static_cast<unsigned int>(p.out_h()), static_cast<unsigned int>(p.out_w())};
  if (a.residual && (*out_shapes)[0] != s) {
    MX_ERROR_MSG << kOp << ": residual=True adds the input to the output, but the output shape "
                 << shape_str((*out_shapes)[0]) << " differs from data shape " << shape_str(s);
    return mxnet::ext::MX_FAIL;
  }
  return mxnet::ext::MX_SUCCESS;
}

// One graph node's convolution: its attributes, and what it keeps from the weights and
// thresholds it validated (bmx::ops::ConstantInput) for the next call.
class ConvState : public bmx::ops::OpState {
 public:
  explicit ConvState(const ConvAttrs& a)
      : a_(a), norm_scale_(a.post_norm ? a.num_filter : 0) {}

  // inputs[0]: data [N][C][H][W] float32; inputs[1]: weight [num_filter][kh][kw][words] int32;
  // then scale [num_filter] float32 (scaling=True only); then threshold_sign [C] and
  // threshold_bias [C] float32 (thresholds=True only); then norm_gamma, norm_beta, norm_mean,
  // norm_var [num_filter] float32 (post_norm=True only); outputs[0]: [N][num_filter][H_out][W_out]
  // float32.
  MXReturnValue Forward(std::vector<MXTensor>* inputs, std::vector<MXTensor>* outputs,
                        const OpResource& res) override {
    bmx::ops::forget_reported_errors();
    MXTensor& x = (*inputs)[0];
    const bmx::ConvParams p = conv_params(a_, x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
    if (!validate_constants(*inputs, p)) return mxnet::ext::MX_FAIL;
    bmx::ConvWorkspace work;
    work.packed = bmx::ops::alloc_scratch(kOp, res, p.packed_input_words(), "the packed input");
    if (work.packed == nullptr) return mxnet::ext::MX_FAIL;
    work.cache = &cache_;
    work.thread_buffers = &thread_buffers_;
    bmx::ConvInput in;
    in.data = x.data<float>();
    in.batch_stride = p.in_channels * p.in_h * p.in_w;
    if (a_.thresholds) {
      in.thr_sign = (*inputs)[threshold_input(a_)].data<float>();
      in.thr_bias = (*inputs)[threshold_input(a_) + 1].data<float>();
    }
    bmx::ConvOutput out;
    out.data = (*outputs)[0].data<float>();
    out.batch_stride = p.out_channels * p.out_h() * p.out_w();
    out.mode = bmx::ops::output_mode(a_.scaling, a_.offset);
    out.scale = a_.scaling ? (*inputs)[scale_input(a_)].data<float>() : nullptr;
    out.addend = a_.residual ? in.data : nullptr;
    out.post.relu = a_.post_relu;
    if (a_.post_norm) {
      const size_t n = norm_input(a_);
      const float* gamma = (*inputs)[n].data<float>();
      const float* var = (*inputs)[n + 3].data<float>();
      for (int64_t o = 0; o < a_.num_filter; ++o) {
        norm_scale_[o] = bmx::batchnorm_scale(a_.fix_gamma ? 1.0f : gamma[o], var[o], a_.eps);
      }
      out.post.scale = norm_scale_.data();
      out.post.beta = (*inputs)[n + 1].data<float>();
      out.post.mean = (*inputs)[n + 2].data<float>();
    }
    bmx::binary_conv2d(in, weights(*inputs), p, out, work);
    return mxnet::ext::MX_SUCCESS;
  }

 private:
  static const uint32_t* weights(std::vector<MXTensor>& inputs) {
    return reinterpret_cast<const uint32_t*>(inputs[1].data<int32_t>());
  }

  // Checks the weights and threshold signs unless they are the ones checked last time.
  bool validate_constants(std::vector<MXTensor>& inputs, const bmx::ConvParams& p) {
    if (!weight_.unchanged(inputs[1])) {
      cache_.forget_weights();
      if (!bmx::tail_bits_clear(weights(inputs), p.out_channels * p.kernel_h * p.kernel_w,
                                p.group_in_channels())) {
        MX_ERROR_MSG << kOp << ": input 'weight' has bits set past in_channels / num_group = "
                     << p.group_in_channels() << " channels: it was packed for another channel "
                     << "count";
        return false;
      }
      weight_.remember(inputs[1]);
    }
    if (a_.thresholds && !threshold_sign_.unchanged(inputs[threshold_input(a_)])) {
      const MXTensor& sign = inputs[threshold_input(a_)];
      if (!bmx::ops::check_threshold_signs(kOp, "threshold_sign",
                                           static_cast<const float*>(sign.data_ptr),
                                           p.in_channels))
        return false;
      threshold_sign_.remember(sign);
    }
    return true;
  }

  const ConvAttrs a_;
  bmx::ops::ConstantInput weight_, threshold_sign_;
  bmx::ConvCache cache_;
  bmx::ThreadBuffers<uint32_t> thread_buffers_;
  std::vector<float> norm_scale_;  // the epilogue's BatchNorm factors, one per filter
};

MXReturnValue create_state(const bmx::ops::Attrs& attrs, const mxnet::ext::MXContext& ctx,
                           const bmx::ops::Shapes& in_shapes, const std::vector<int> in_types,
                           mxnet::ext::CustomStatefulOp** state) {
  ConvAttrs a;
  if (!parse(attrs, &a)) return mxnet::ext::MX_FAIL;
  *state = mxnet::ext::CustomStatefulOp::create<ConvState>(a);
  return mxnet::ext::MX_SUCCESS;
}

}  // namespace

REGISTER_OP(bmx_binary_conv2d)
    .setParseAttrs(parse_attrs)
    .setInferType(infer_type)
    .setInferShape(infer_shape)
    .setCreateOpState(create_state, "cpu");
