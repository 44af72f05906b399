// bmx_binary_dense: binary fully connected layer of float32 data with packed int32 weights.
//
// Inputs: data float32 (N, ...) flattened to (N, in_units) as FullyConnected does (flatten=True)
// or (..., in_units) applied on the last axis (flatten=False); weight int32
// (num_hidden, ceil(in_units / 32)), the layout of kernels/binary_dense.h; scale float32
// (num_hidden,) only with scaling=True. The op binarizes data itself (bit = x >= 0) and returns
// float32 (N, num_hidden) (or (..., num_hidden)) in the convention of the training layer QDense:
// (dot + K) / 2, dot (offset=False) or dot * scale, K = in_units.
#include <climits>
#include <vector>

#include "kernels/binary_dense.h"
#include "ops/op_util.h"

using mxnet::ext::MXDType;
using mxnet::ext::MXReturnValue;
using mxnet::ext::MXTensor;
using mxnet::ext::OpResource;

namespace {

constexpr const char* kOp = "bmx_binary_dense";
constexpr int64_t kMaxUnits = int64_t{1} << 28;

struct DenseAttrs {
  int64_t num_hidden, in_units;
  bool offset, scaling, flatten;
};

bool parse(const bmx::ops::Attrs& attrs, DenseAttrs* a) {
  using namespace bmx::ops;
  if (!check_attr_names(kOp, attrs,
                        {"num_hidden", "in_units", "offset", "scaling", "flatten"}))
    return false;
  return require_attrs(kOp, attrs, {"num_hidden", "in_units"},
                       "(the packed weight shape is (num_hidden, ceil(in_units / 32)))") &&
         read_int(kOp, attrs, "num_hidden", 1, 1, kMaxUnits, &a->num_hidden) &&
         read_int(kOp, attrs, "in_units", 1, 1, kMaxUnits, &a->in_units) &&
         read_bool(kOp, attrs, "offset", true, &a->offset) &&
         read_bool(kOp, attrs, "scaling", false, &a->scaling) &&
         read_bool(kOp, attrs, "flatten", true, &a->flatten);
}

// Rows and the size of a row of `shape` as the layer reads it.
void rows_and_units(const DenseAttrs& a, const std::vector<int64_t>& shape, int64_t* rows,
                    int64_t* units) {
  const size_t split = a.flatten ? 1 : shape.size() - 1;
  *rows = 1;
  *units = 1;
  for (size_t i = 0; i < shape.size(); ++i) (i < split ? *rows : *units) *= shape[i];
}

MXReturnValue parse_attrs(const bmx::ops::Attrs& attrs, int* num_in, int* num_out) {
  DenseAttrs a;
  if (!parse(attrs, &a)) return mxnet::ext::MX_FAIL;
  *num_in = a.scaling ? 3 : 2;
  *num_out = 1;
  return mxnet::ext::MX_SUCCESS;
}

MXReturnValue infer_type(const bmx::ops::Attrs& attrs, std::vector<int>* in_types,
                         std::vector<int>* out_types) {
  using bmx::ops::assign_or_check_dtype;
  if (!assign_or_check_dtype(kOp, in_types, 0, "data", MXDType::kFloat32) ||
      !assign_or_check_dtype(kOp, in_types, 1, "weight", MXDType::kInt32) ||
      (in_types->size() > 2 &&
       !assign_or_check_dtype(kOp, in_types, 2, "scale", MXDType::kFloat32)))
    return mxnet::ext::MX_FAIL;
  (*out_types)[0] = MXDType::kFloat32;
  return mxnet::ext::MX_SUCCESS;
}

MXReturnValue infer_shape(const bmx::ops::Attrs& attrs, bmx::ops::Shapes* in_shapes,
                          bmx::ops::Shapes* out_shapes) {
  using namespace bmx::ops;
  DenseAttrs a;
  if (!parse(attrs, &a)) return mxnet::ext::MX_FAIL;
  const auto hidden = static_cast<unsigned int>(a.num_hidden);
  if (!assign_or_check_shape(kOp, in_shapes, 1, "weight",
                             {hidden, static_cast<unsigned int>(
                                          bmx::words_for_channels(a.in_units))},
                             "(num_hidden, ceil(in_units / 32)) packed int32 words") ||
      (a.scaling && !assign_or_check_shape(kOp, in_shapes, 2, "scale", {hidden},
                                           "(num_hidden,)")))
    return mxnet::ext::MX_FAIL;
  const auto& s = (*in_shapes)[0];
  if (s.size() < 2) {
    MX_ERROR_MSG << kOp << ": input 'data' must have rank >= 2 (N, features...), got shape "
                 << shape_str(s);
    return mxnet::ext::MX_FAIL;
  }
  for (unsigned int dim : s) {
    if (dim_is_empty_or_unknown(dim)) {
      MX_ERROR_MSG << kOp << ": input 'data' must have a known shape without empty dimensions "
                   << "(batch included), got shape " << shape_str(s);
      return mxnet::ext::MX_FAIL;
    }
  }
  int64_t rows = 0, units = 0;
  rows_and_units(a, std::vector<int64_t>(s.begin(), s.end()), &rows, &units);
  if (units != a.in_units) {
    MX_ERROR_MSG << kOp << ": input 'data' of shape " << shape_str(s) << " has " << units
                 << " features per row (flatten=" << (a.flatten ? "True" : "False")
                 << ") but in_units=" << a.in_units << " (the size the weights were packed for)";
    return mxnet::ext::MX_FAIL;
  }
  if (4.0 * (static_cast<double>(rows) * bmx::words_for_channels(units) + 64) > INT_MAX) {
    MX_ERROR_MSG << kOp << ": input 'data' of shape " << shape_str(s) << " is too large for the "
                 << "packed scratch buffer (at most " << INT_MAX << " bytes); split the batch";
    return mxnet::ext::MX_FAIL;
  }
  std::vector<unsigned int> out(s.begin(), a.flatten ? s.begin() + 1 : s.end() - 1);
  out.push_back(hidden);
  (*out_shapes)[0] = out;
  return mxnet::ext::MX_SUCCESS;
}

// One graph node's dense layer: its attributes, and what it keeps from the weights it validated
// (bmx::ops::ConstantInput) for the next call.
class DenseState : public bmx::ops::OpState {
 public:
  explicit DenseState(const DenseAttrs& a) : a_(a) {}

  // inputs[0]: data [rows][in_units] float32 (any shape whose rows hold in_units values);
  // inputs[1]: weight [num_hidden][words] int32; inputs[2] (scaling=True only): scale
  // [num_hidden] float32; outputs[0]: [rows][num_hidden] float32.
  MXReturnValue Forward(std::vector<MXTensor>* inputs, std::vector<MXTensor>* outputs,
                        const OpResource& res) override {
    bmx::ops::forget_reported_errors();
    MXTensor& x = (*inputs)[0];
    const auto* weights = reinterpret_cast<const uint32_t*>((*inputs)[1].data<int32_t>());
    int64_t rows = 0, units = 0;
    rows_and_units(a_, x.shape, &rows, &units);
    if (!weight_.unchanged((*inputs)[1])) {
      cache_.forget_weights();
      if (!bmx::tail_bits_clear(weights, a_.num_hidden, a_.in_units)) {
        MX_ERROR_MSG << kOp << ": input 'weight' has bits set past in_units=" << a_.in_units
                     << ": it was packed for another input size";
        return mxnet::ext::MX_FAIL;
      }
      weight_.remember((*inputs)[1]);
    }
    uint32_t* scratch = bmx::ops::alloc_scratch(kOp, res, bmx::dense_scratch_words(rows, units),
                                                "the packed input");
    if (scratch == nullptr) return mxnet::ext::MX_FAIL;
    const float* scale = a_.scaling ? (*inputs)[2].data<float>() : nullptr;
    bmx::binary_dense(x.data<float>(), weights, rows, units, a_.num_hidden,
                      bmx::ops::output_mode(a_.scaling, a_.offset), scale, scratch,
                      (*outputs)[0].data<float>(), &cache_);
    return mxnet::ext::MX_SUCCESS;
  }

 private:
  const DenseAttrs a_;
  bmx::ops::ConstantInput weight_;
  bmx::ConvCache cache_;
};

MXReturnValue create_state(const bmx::ops::Attrs& attrs, const mxnet::ext::MXContext& ctx,
                           const bmx::ops::Shapes& in_shapes, const std::vector<int> in_types,
                           mxnet::ext::CustomStatefulOp** state) {
  DenseAttrs a;
  if (!parse(attrs, &a)) return mxnet::ext::MX_FAIL;
  *state = mxnet::ext::CustomStatefulOp::create<DenseState>(a);
  return mxnet::ext::MX_SUCCESS;
}

}  // namespace

REGISTER_OP(bmx_binary_dense)
    .setParseAttrs(parse_attrs)
    .setInferType(infer_type)
    .setInferShape(infer_shape)
    .setCreateOpState(create_state, "cpu");
