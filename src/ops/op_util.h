// Shared lib_api glue for the bmx_* ops: attribute parsing and input checks that fail with a
// message (MX_ERROR_MSG + MX_FAIL) instead of crashing. No kernels here.
#ifndef BMXNET_OPS_OP_UTIL_H_
#define BMXNET_OPS_OP_UTIL_H_

#include <atomic>
#include <cstdint>
#include <initializer_list>
#include <sstream>
#include <string>
#include <unordered_map>
#include <vector>

#include "kernels/xnor_popcount.h"
#include "mxnet/lib_api.h"

namespace bmx {
namespace ops {

using Attrs = std::unordered_map<std::string, std::string>;
using Shapes = std::vector<std::vector<unsigned int>>;

// Attributes MXNet itself adds to every node (e.g. __ext_shape__); never user errors.
inline bool is_internal_attr(const std::string& key) {
  return key.size() > 2 && key[0] == '_' && key[1] == '_';
}

// Fails on any attribute not in `known`, naming the op and what it accepts.
bool check_attr_names(const char* op, const Attrs& attrs, const std::vector<std::string>& known);

// Fails unless every attribute in `names` is present; `why` follows the message (e.g. what the
// attributes determine).
bool require_attrs(const char* op, const Attrs& attrs, std::initializer_list<const char*> names,
                   const char* why);

// Reads an integer attribute; `fallback` when absent. False (with a message) when not an integer
// in [lo, hi].
bool read_int(const char* op, const Attrs& attrs, const std::string& key, int64_t fallback,
              int64_t lo, int64_t hi, int64_t* value);

// Reads "(a, b)", "[a,b]" or "a" (broadcast to both) as two integers in [lo, hi].
bool read_pair(const char* op, const Attrs& attrs, const std::string& key, int64_t fallback,
               int64_t lo, int64_t hi, int64_t* first, int64_t* second);

// Reads "True"/"False"/"1"/"0".
bool read_bool(const char* op, const Attrs& attrs, const std::string& key, bool fallback,
               bool* value);

// Reads a BatchNorm epsilon: a finite number >= 0, kept as a float (as oneDNN takes it).
bool read_eps(const char* op, const Attrs& attrs, const std::string& key, float fallback,
              float* value);

// Reads a padding value that must be -1 or +1 ("-1", "1", "-1.0", "+1", ...).
bool read_unit_sign(const char* op, const Attrs& attrs, const std::string& key, int fallback,
                    int* value);

// Checks the dtype of input `index`, naming it and the expected type.
bool check_dtype(const char* op, const std::vector<int>& types, size_t index, const char* name,
                 int expected);

// Checks rank of an input shape.
bool check_rank(const char* op, const Shapes& shapes, size_t index, const char* name,
                size_t rank, const char* layout);

// Type inference: an input of unknown type (-1) gets `expected`; a known one must be it.
bool assign_or_check_dtype(const char* op, std::vector<int>* types, size_t index,
                           const char* name, int expected);

// Shape inference: an input of unknown shape (rank 0) or with unknown dimensions gets
// `expected`, a known one must equal it; `formula` explains the expected shape in the message.
// Beware: MXNet 1.9.1 mis-sizes its shape buffer when an input's shape is wholly unknown
// (ndim -1) and writes past it before calling us, so graphs should declare at least the rank of
// every weight variable (e.g. mx.sym.var("weight", shape=(0, 0, 0, 0), dtype="int32")), as
// Gluon parameters always do.
bool assign_or_check_shape(const char* op, Shapes* shapes, size_t index, const char* name,
                           const std::vector<unsigned int>& expected, const char* formula);

// Shape inference of an NCHW input 'data' (input 0): rank 4 and every dimension known and
// non-empty, else a message.
bool check_known_nchw(const char* op, const Shapes& shapes);

// Type inference of an op whose inputs (named by `names`) and one output are all float32.
bool all_float32(const char* op, const char* const* names, std::vector<int>* in_types,
                 std::vector<int>* out_types);

// MXNet passes an unknown dimension (0 in legacy shapes, e.g. a batch left open in
// infer_shape) as (unsigned)-1 and may pass 0; both mean there is nothing to compute on.
inline bool dim_is_empty_or_unknown(unsigned int dim) {
  return dim == 0 || dim == static_cast<unsigned int>(-1);
}

std::string shape_str(const std::vector<unsigned int>& shape);

const char* dtype_name(int dtype);

// The output convention (kernels/xnor_popcount.h) of a binary layer's scaling and offset
// attributes.
inline bmx::OutputMode output_mode(bool scaling, bool offset) {
  return scaling ? bmx::OutputMode::kScaledDot
                 : offset ? bmx::OutputMode::kAgreements : bmx::OutputMode::kDot;
}

// `words` 32-bit words of scratch memory from MXNet's pool for this call (no allocation once the
// pool has grown to the layer's size); null after a message naming `what` when there is none.
uint32_t* alloc_scratch(const char* op, const mxnet::ext::OpResource& res, int64_t words,
                        const char* what);

// Threshold signs (a BatchNorm folded into the binarization) must each be +1, -1 or 0.
bool check_threshold_signs(const char* op, const std::string& name, const float* signs,
                           int64_t count);

// Starts the message of a new failure, dropping the messages of earlier ones. MXNet 1.9.1 never
// clears an extension's error list and copies (leaking the copies) every message in it on each
// later failure, so the n-th failure would cost O(n) time and memory (3 000 bad calls: 4 GiB).
// Every MX_ERROR_MSG of the ops goes through here (redefined below).
std::stringstream& fresh_error_message(const char* file, int line);

// Empties the error list once the newest failure is a second old (MXNet read its messages right
// after the failing call). MXNet 1.9.1 copies every message in the list, and leaks the copy, on
// every call of every extension operator -- failing or not -- so one bad call would otherwise
// cost every later call ~200 bytes per operator, forever. Called at the start of every callback
// (check_attr_names). A reader in another thread between MXNet's msgSize() and msgGet() at that
// very moment would get an out-of-range error for its call; the window is a few instructions,
// once per failure.
void forget_reported_errors();

// --- stateful operators ------------------------------------------------------------------------
//
// Every bmx_* operator is stateful (lib_api's createOpState): its attributes are parsed once, into
// its state, and the state keeps what the kernels derive from constant inputs (validation, weights
// in the form the tiles read, offsets, per-thread buffers) from one call to the next. MXNet keeps
// one state per graph node in a block hybridized with static_alloc=True; imperative calls and
// blocks hybridized without it get a new state per call (they then compute as a stateless
// operator would).

// Base of the states: the backward of every bmx_* op, and the tensor lists of a call, kept here so
// that the call allocates nothing (stateful_call.cc).
class OpState : public mxnet::ext::CustomStatefulOp {
 public:
  // Zero gradients for all inputs. The ops are inference forms of binary layers (sign has zero
  // derivative almost everywhere); a backward must still exist because MXNet 1.9's CachedOp
  // (every hybridized block, every SymbolBlock) builds the gradient graph of all its operators
  // up front and rejects operators that have none.
  mxnet::ext::MXReturnValue Backward(std::vector<mxnet::ext::MXTensor>* inputs,
                                     std::vector<mxnet::ext::MXTensor>* outputs,
                                     const mxnet::ext::OpResource& res) override;

  std::vector<mxnet::ext::MXTensor> call_inputs, call_outputs;
  std::atomic<bool> in_call{false};  // the lists above are in use
};

// Whether a constant input (packed weights, thresholds) still holds what was validated and
// derived from it. The rule: MXNet gives every NDArray a version that grows with each write to
// it (MXTensor::verID), so the same data pointer and version mean the same contents. A new
// NDArray may take the freed memory of an old one at the same version (a re-initialized
// parameter), so a fingerprint of 64 words spread over the data is compared too. A change is
// seen on the next call: nothing is re-derived while a write to the array is in flight, since MXNet
// orders the write and the reading operator.
class ConstantInput {
 public:
  // True when `t` is the tensor last passed to remember().
  bool unchanged(const mxnet::ext::MXTensor& t) const;
  // Records `t` as validated and derived from.
  void remember(const mxnet::ext::MXTensor& t);

 private:
  static uint64_t fingerprint(const mxnet::ext::MXTensor& t);
  const void* data_ = nullptr;
  size_t version_ = 0;
  int64_t bytes_ = -1;
  uint64_t fingerprint_ = 0;
};

}  // namespace ops
}  // namespace bmx

#undef MX_ERROR_MSG
#define MX_ERROR_MSG ::bmx::ops::fresh_error_message(__FILE__, __LINE__)

#endif  // BMXNET_OPS_OP_UTIL_H_
