// bmx_binary_stage: a run of binary dense / improvement units (MeliusNet, BinaryDenseNet) in one
// operator, each unit's BatchNorm folded into per-channel thresholds and its output written where
// it goes in the stage's output (kernels/binary_stage.h).
//
// Attributes: in_channels (C0), growth (filters of every unit), units (a string of 'd' (dense:
// concat) and 'i' (improvement: add to the last `growth` channels), one letter per unit), kernel,
// dilate (same padding: pad = dilate * (kernel - 1) / 2, stride 1), offset, pad_value.
// Inputs: data float32 (N, C0, H, W), then per unit i with C_i input channels: weight int32
// (growth, kh, kw, ceil(C_i / 32)), threshold_sign float32 (C_i,), threshold_bias float32 (C_i,).
// Output: float32 (N, C0 + growth * number of 'd' units, H, W).
#include <algorithm>
#include <climits>
#include <string>
#include <vector>

#include "kernels/binary_stage.h"
#include "ops/op_util.h"

using mxnet::ext::MXDType;
using mxnet::ext::MXReturnValue;
using mxnet::ext::MXTensor;
using mxnet::ext::OpResource;

namespace {

constexpr const char* kOp = "bmx_binary_stage";
constexpr int64_t kMaxWindow = 4096;
constexpr int64_t kMaxChannels = 1 << 20;
constexpr size_t kMaxUnits = 1024;
constexpr int kInputsPerUnit = 3;

struct StageAttrs {
  int64_t in_channels, growth, kernel_h, kernel_w, dilate_h, dilate_w;
  std::vector<bool> improvement;  // per unit
  bool offset;
  int pad_value;

  int64_t channels_before(size_t unit) const {
    return bmx::StageParams::channels_before(in_channels, growth, improvement, unit);
  }
  int64_t out_channels() const { return channels_before(improvement.size()); }
};

bool parse(const bmx::ops::Attrs& attrs, StageAttrs* a) {
  using namespace bmx::ops;
  if (!check_attr_names(kOp, attrs, {"in_channels", "growth", "units", "kernel", "dilate",
                                     "offset", "pad_value"}))
    return false;
  if (!require_attrs(kOp, attrs, {"in_channels", "growth", "units"}, "")) return false;
  if (!read_int(kOp, attrs, "in_channels", 1, 1, kMaxChannels, &a->in_channels) ||
      !read_int(kOp, attrs, "growth", 1, 1, kMaxChannels, &a->growth) ||
      !read_pair(kOp, attrs, "kernel", 3, 1, kMaxWindow, &a->kernel_h, &a->kernel_w) ||
      !read_pair(kOp, attrs, "dilate", 1, 1, kMaxWindow, &a->dilate_h, &a->dilate_w) ||
      !read_bool(kOp, attrs, "offset", true, &a->offset) ||
      !read_unit_sign(kOp, attrs, "pad_value", -1, &a->pad_value))
    return false;
  const std::string& units = attrs.at("units");
  a->improvement.clear();
  for (char letter : units) {
    if (letter != 'd' && letter != 'i') {
      a->improvement.clear();
      break;
    }
    a->improvement.push_back(letter == 'i');
  }
  if (a->improvement.empty() || a->improvement.size() > kMaxUnits) {
    MX_ERROR_MSG << kOp << ": attribute units='" << units << "' must be 1 to " << kMaxUnits
                 << " letters, each 'd' (dense unit) or 'i' (improvement unit)";
    return false;
  }
  for (size_t i = 0; i < a->improvement.size(); ++i) {
    if (a->improvement[i] && a->channels_before(i) < a->growth) {
      MX_ERROR_MSG << kOp << ": unit " << i << " improves the last growth=" << a->growth
                   << " channels but its input has only " << a->channels_before(i);
      return false;
    }
  }
  if (a->out_channels() > kMaxChannels) {
    MX_ERROR_MSG << kOp << ": the stage grows to " << a->out_channels() << " channels, at most "
                 << kMaxChannels << " are supported";
    return false;
  }
  if ((a->dilate_h * (a->kernel_h - 1)) % 2 != 0 || (a->dilate_w * (a->kernel_w - 1)) % 2 != 0) {
    MX_ERROR_MSG << kOp << ": kernel (" << a->kernel_h << ", " << a->kernel_w << ") dilated by ("
                 << a->dilate_h << ", " << a->dilate_w << ") has no same padding: the units "
                 << "must keep height and width";
    return false;
  }
  return true;
}

bmx::StageParams stage_params(const StageAttrs& a, const std::vector<int64_t>& shape) {
  bmx::StageParams s;
  s.batch = shape[0];
  s.in_channels = a.in_channels;
  s.height = shape[2];
  s.width = shape[3];
  s.growth = a.growth;
  s.kernel_h = a.kernel_h;
  s.kernel_w = a.kernel_w;
  s.dilate_h = a.dilate_h;
  s.dilate_w = a.dilate_w;
  s.pad_with_ones = a.pad_value > 0;
  s.mode = a.offset ? bmx::OutputMode::kAgreements : bmx::OutputMode::kDot;
  return s;
}

std::string input_name(size_t index) {
  static const char* kinds[kInputsPerUnit] = {"weight", "threshold_sign", "threshold_bias"};
  if (index == 0) return "data";
  return "unit " + std::to_string((index - 1) / kInputsPerUnit) + " " +
         kinds[(index - 1) % kInputsPerUnit];
}

MXReturnValue parse_attrs(const bmx::ops::Attrs& attrs, int* num_in, int* num_out) {
  StageAttrs a;
  if (!parse(attrs, &a)) return mxnet::ext::MX_FAIL;
  *num_in = static_cast<int>(1 + kInputsPerUnit * a.improvement.size());
  *num_out = 1;
  return mxnet::ext::MX_SUCCESS;
}

MXReturnValue infer_type(const bmx::ops::Attrs& attrs, std::vector<int>* in_types,
                         std::vector<int>* out_types) {
  for (size_t i = 0; i < in_types->size(); ++i) {
    const bool weight = i > 0 && (i - 1) % kInputsPerUnit == 0;
    if (!bmx::ops::assign_or_check_dtype(kOp, in_types, i, input_name(i).c_str(),
                                         weight ? MXDType::kInt32 : MXDType::kFloat32))
      return mxnet::ext::MX_FAIL;
  }
  (*out_types)[0] = MXDType::kFloat32;
  return mxnet::ext::MX_SUCCESS;
}

MXReturnValue infer_shape(const bmx::ops::Attrs& attrs, bmx::ops::Shapes* in_shapes,
                          bmx::ops::Shapes* out_shapes) {
  using namespace bmx::ops;
  StageAttrs a;
  if (!parse(attrs, &a)) return mxnet::ext::MX_FAIL;
  for (size_t u = 0; u < a.improvement.size(); ++u) {
    const auto c = static_cast<unsigned int>(a.channels_before(u));
    const size_t first = 1 + kInputsPerUnit * u;
    if (!assign_or_check_shape(
            kOp, in_shapes, first, input_name(first).c_str(),
            {static_cast<unsigned int>(a.growth), static_cast<unsigned int>(a.kernel_h),
             static_cast<unsigned int>(a.kernel_w),
             static_cast<unsigned int>(bmx::words_for_channels(c))},
            "(growth, kernel_h, kernel_w, ceil(unit input channels / 32)) packed int32 words") ||
        !assign_or_check_shape(kOp, in_shapes, first + 1, input_name(first + 1).c_str(), {c},
                               "(unit input channels,)") ||
        !assign_or_check_shape(kOp, in_shapes, first + 2, input_name(first + 2).c_str(), {c},
                               "(unit input channels,)"))
      return mxnet::ext::MX_FAIL;
  }
  if (!check_known_nchw(kOp, *in_shapes)) return mxnet::ext::MX_FAIL;
  const auto& s = (*in_shapes)[0];
  if (s[1] != a.in_channels) {
    MX_ERROR_MSG << kOp << ": input 'data' has " << s[1] << " channels but in_channels="
                 << a.in_channels << "; got shape " << shape_str(s);
    return mxnet::ext::MX_FAIL;
  }
  const bmx::StageParams p = stage_params(a, {s[0], s[1], s[2], s[3]});
  const double out_bytes = 4.0 * p.batch * a.out_channels() * p.height * p.width;
  const double scratch_bytes =
      4.0 * (static_cast<double>(p.batch) * bmx::words_for_channels(a.out_channels()) *
                 (p.height + 2 * p.dilate_h * (p.kernel_h - 1) / 2) *
                 (p.width + 2 * p.dilate_w * (p.kernel_w - 1) / 2) + bmx::kMaxTileLanes);
  if (out_bytes > 4.0 * INT_MAX || scratch_bytes > INT_MAX) {
    MX_ERROR_MSG << kOp << ": data shape " << shape_str(s) << " is too large for a stage growing "
                 << "to " << a.out_channels() << " channels; split the batch";
    return mxnet::ext::MX_FAIL;
  }
  if (static_cast<double>(a.out_channels()) * a.kernel_h * a.kernel_w >= 2147483648.0) {
    MX_ERROR_MSG << kOp << ": the units' fan-in is too large (at most 2^31 - 1)";
    return mxnet::ext::MX_FAIL;
  }
  (*out_shapes)[0] = {s[0], static_cast<unsigned int>(a.out_channels()), s[2], s[3]};
  return mxnet::ext::MX_SUCCESS;
}

// One graph node's stage: its attributes, and per unit what it keeps from the weights and
// thresholds it validated (bmx::ops::ConstantInput) for the next call.
class StageState : public bmx::ops::OpState {
 public:
  explicit StageState(const StageAttrs& a)
      : a_(a), units_(a.improvement.size()), weights_(a.improvement.size()),
        threshold_signs_(a.improvement.size()) {
    for (size_t u = 0; u < units_.size(); ++u) {
      units_[u].improvement = a.improvement[u];
      widest_ = std::max(widest_, a.channels_before(u));
    }
    cache_.units.resize(units_.size());
  }

  // inputs[0]: data [N][C0][H][W] float32; per unit u, inputs[1 + 3u]: weight
  // [growth][kh][kw][words(C_u)] int32, inputs[2 + 3u], inputs[3 + 3u]: threshold sign and bias
  // [C_u] float32; outputs[0]: [N][C0 + growth * dense units][H][W] float32.
  MXReturnValue Forward(std::vector<MXTensor>* inputs, std::vector<MXTensor>* outputs,
                        const OpResource& res) override {
    bmx::ops::forget_reported_errors();
    MXTensor& x = (*inputs)[0];
    const bmx::StageParams p = stage_params(a_, x.shape);
    for (size_t u = 0; u < units_.size(); ++u) {
      const size_t first = 1 + kInputsPerUnit * u;
      bmx::StageUnit& unit = units_[u];
      unit.weights = reinterpret_cast<const uint32_t*>((*inputs)[first].data<int32_t>());
      unit.thr_sign = (*inputs)[first + 1].data<float>();
      unit.thr_bias = (*inputs)[first + 2].data<float>();
      if (!validate_unit(u, *inputs)) return mxnet::ext::MX_FAIL;
    }
    uint32_t* scratch = bmx::ops::alloc_scratch(kOp, res, bmx::stage_scratch_words(p, widest_),
                                                "the packed input");
    if (scratch == nullptr) return mxnet::ext::MX_FAIL;
    bmx::binary_stage(x.data<float>(), p, units_, scratch, (*outputs)[0].data<float>(), &cache_);
    return mxnet::ext::MX_SUCCESS;
  }

 private:
  // Checks unit u's weights and threshold signs unless they are the ones checked last time.
  bool validate_unit(size_t u, std::vector<MXTensor>& inputs) {
    const size_t first = 1 + kInputsPerUnit * u;
    const int64_t c = a_.channels_before(u);
    if (!weights_[u].unchanged(inputs[first])) {
      cache_.units[u].forget_weights();
      if (!bmx::tail_bits_clear(units_[u].weights, a_.growth * a_.kernel_h * a_.kernel_w, c)) {
        MX_ERROR_MSG << kOp << ": input '" << input_name(first) << "' has bits set past its "
                     << c << " input channels: it was packed for another channel count";
        return false;
      }
      weights_[u].remember(inputs[first]);
    }
    if (!threshold_signs_[u].unchanged(inputs[first + 1])) {
      if (!bmx::ops::check_threshold_signs(kOp, input_name(first + 1), units_[u].thr_sign, c))
        return false;
      threshold_signs_[u].remember(inputs[first + 1]);
    }
    return true;
  }

  const StageAttrs a_;
  std::vector<bmx::StageUnit> units_;
  std::vector<bmx::ops::ConstantInput> weights_, threshold_signs_;
  int64_t widest_ = 0;
  bmx::StageCache cache_;
};

MXReturnValue create_state(const bmx::ops::Attrs& attrs, const mxnet::ext::MXContext& ctx,
                           const bmx::ops::Shapes& in_shapes, const std::vector<int> in_types,
                           mxnet::ext::CustomStatefulOp** state) {
  StageAttrs a;
  if (!parse(attrs, &a)) return mxnet::ext::MX_FAIL;
  *state = mxnet::ext::CustomStatefulOp::create<StageState>(a);
  return mxnet::ext::MX_SUCCESS;
}

}  // namespace

REGISTER_OP(bmx_binary_stage)
    .setParseAttrs(parse_attrs)
    .setInferType(infer_type)
    .setInferShape(infer_shape)
    .setCreateOpState(create_state, "cpu");
