#include "ops/op_util.h"

#include <atomic>
#include <cerrno>
#include <cmath>
#include <cctype>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <sstream>

using mxnet::ext::MXDType;

namespace {

// lib_api.h keeps the error list private and offers no way to clear it; an explicit template
// instantiation may name a private member (C++ [temp.spec]/6), which gives us a reference.
using ErrorList = std::vector<std::stringstream*>;

template <ErrorList mxnet::ext::MXerrorMsgs::*List>
struct ErrorListAccess {
  friend ErrorList& error_list(mxnet::ext::MXerrorMsgs* errors) { return errors->*List; }
};
template struct ErrorListAccess<&mxnet::ext::MXerrorMsgs::messages>;
ErrorList& error_list(mxnet::ext::MXerrorMsgs* errors);

}  // namespace

namespace bmx {
namespace ops {

namespace {

std::mutex error_mutex;
// steady_clock nanoseconds of the newest failure while the error list holds messages; -1: empty.
std::atomic<int64_t> newest_failure_ns{-1};
// A failure's messages stay this long: MXNet reads them right after the failing callback returns.
constexpr int64_t kReportedAfterNs = 1000000000;

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

}  // namespace

std::stringstream& fresh_error_message(const char* file, int line) {
  std::lock_guard<std::mutex> lock(error_mutex);
  ErrorList& list = error_list(mxnet::ext::MXerrorMsgs::get());
  auto* message = new std::stringstream();
  *message << file << "[" << line << "]: ";
  // The earlier messages were read when their call failed. Their streams are not deleted: a
  // failure in another thread may still be reading them (a few hundred bytes per failure).
  // Replacing the first entry and shrinking never reallocates, so such a reader sees a valid
  // list throughout.
  if (list.empty()) {
    list.push_back(message);
  } else {
    list[0] = message;
    list.resize(1);
  }
  newest_failure_ns.store(now_ns(), std::memory_order_relaxed);
  return *message;
}

void forget_reported_errors() {
  const int64_t newest = newest_failure_ns.load(std::memory_order_relaxed);
  if (newest < 0 || now_ns() - newest < kReportedAfterNs) return;
  std::lock_guard<std::mutex> lock(error_mutex);
  if (newest_failure_ns.load(std::memory_order_relaxed) != newest) return;  // a new failure
  // Streams not deleted, as above; clear() keeps the capacity, so nothing is reallocated.
  error_list(mxnet::ext::MXerrorMsgs::get()).clear();
  newest_failure_ns.store(-1, std::memory_order_relaxed);
}

bool check_attr_names(const char* op, const Attrs& attrs, const std::vector<std::string>& known) {
  // Every callback of the ops parses its attributes first, so it starts here.
  forget_reported_errors();
  for (const auto& kv : attrs) {
    if (is_internal_attr(kv.first)) continue;
    bool found = false;
    for (const auto& k : known) found = found || (k == kv.first);
    if (!found) {
      std::string list;
      for (const auto& k : known) list += (list.empty() ? "" : ", ") + k;
      MX_ERROR_MSG << op << ": unknown attribute '" << kv.first << "'; expected only: "
                   << (list.empty() ? "none" : list);
      return false;
    }
  }
  return true;
}

static bool parse_int(const std::string& text, int64_t* value) {
  std::string t;
  for (char ch : text)
    if (!std::isspace(static_cast<unsigned char>(ch))) t += ch;
  if (t.empty() || t.size() > 18) return false;
  char* end = nullptr;
  long long v = std::strtoll(t.c_str(), &end, 10);
  if (end == nullptr || *end != '\0') return false;
  *value = v;
  return true;
}

bool read_int(const char* op, const Attrs& attrs, const std::string& key, int64_t fallback,
              int64_t lo, int64_t hi, int64_t* value) {
  auto it = attrs.find(key);
  if (it == attrs.end()) {
    *value = fallback;
    return true;
  }
  int64_t v = 0;
  if (!parse_int(it->second, &v) || v < lo || v > hi) {
    MX_ERROR_MSG << op << ": attribute " << key << "='" << it->second
                 << "' must be an integer in [" << lo << ", " << hi << "]";
    return false;
  }
  *value = v;
  return true;
}

bool read_pair(const char* op, const Attrs& attrs, const std::string& key, int64_t fallback,
               int64_t lo, int64_t hi, int64_t* first, int64_t* second) {
  auto it = attrs.find(key);
  if (it == attrs.end()) {
    *first = *second = fallback;
    return true;
  }
  std::string body;
  for (char ch : it->second)
    if (ch != '(' && ch != ')' && ch != '[' && ch != ']') body += ch;
  std::vector<int64_t> values;
  std::stringstream ss(body);
  std::string item;
  bool ok = true;
  while (std::getline(ss, item, ',')) {
    int64_t v = 0;
    bool blank = item.find_first_not_of(" \t") == std::string::npos;
    if (blank && ss.eof() && !values.empty()) break;  // trailing comma, as in "(3,)"
    if (!parse_int(item, &v)) ok = false;
    values.push_back(v);
  }
  if (values.size() == 1) values.push_back(values[0]);
  if (!ok || values.size() != 2 || values[0] < lo || values[0] > hi || values[1] < lo ||
      values[1] > hi) {
    MX_ERROR_MSG << op << ": attribute " << key << "='" << it->second
                 << "' must be one integer or a pair of integers, each in [" << lo << ", " << hi
                 << "]";
    return false;
  }
  *first = values[0];
  *second = values[1];
  return true;
}

bool read_bool(const char* op, const Attrs& attrs, const std::string& key, bool fallback,
               bool* value) {
  auto it = attrs.find(key);
  if (it == attrs.end()) {
    *value = fallback;
    return true;
  }
  const std::string& v = it->second;
  if (v == "True" || v == "true" || v == "1") {
    *value = true;
  } else if (v == "False" || v == "false" || v == "0") {
    *value = false;
  } else {
    MX_ERROR_MSG << op << ": attribute " << key << "='" << v << "' must be True or False";
    return false;
  }
  return true;
}

bool read_eps(const char* op, const Attrs& attrs, const std::string& key, float fallback,
              float* value) {
  auto it = attrs.find(key);
  if (it == attrs.end()) {
    *value = fallback;
    return true;
  }
  char* end = nullptr;
  errno = 0;
  const double eps = std::strtod(it->second.c_str(), &end);
  if (end == it->second.c_str() || *end != '\0' || errno != 0 || !(eps >= 0) ||
      !std::isfinite(eps)) {
    MX_ERROR_MSG << op << ": attribute " << key << "='" << it->second
                 << "' must be a finite number >= 0";
    return false;
  }
  *value = static_cast<float>(eps);
  return true;
}

bool read_unit_sign(const char* op, const Attrs& attrs, const std::string& key, int fallback,
                    int* value) {
  auto it = attrs.find(key);
  if (it == attrs.end()) {
    *value = fallback;
    return true;
  }
  const char* text = it->second.c_str();
  char* end = nullptr;
  const double v = std::strtod(text, &end);
  while (end != nullptr && std::isspace(static_cast<unsigned char>(*end))) ++end;
  if (end == text || end == nullptr || *end != '\0' || (v != 1.0 && v != -1.0)) {
    MX_ERROR_MSG << op << ": attribute " << key << "='" << it->second << "' must be -1 or 1";
    return false;
  }
  *value = v > 0 ? 1 : -1;
  return true;
}

const char* dtype_name(int dtype) {
  switch (dtype) {
    case MXDType::kFloat32: return "float32";
    case MXDType::kFloat64: return "float64";
    case MXDType::kFloat16: return "float16";
    case MXDType::kUint8: return "uint8";
    case MXDType::kInt32: return "int32";
    case MXDType::kInt8: return "int8";
    case MXDType::kInt64: return "int64";
    default: return "unknown";
  }
}

bool check_dtype(const char* op, const std::vector<int>& types, size_t index, const char* name,
                 int expected) {
  if (types[index] != expected) {
    MX_ERROR_MSG << op << ": input '" << name << "' must be " << dtype_name(expected)
                 << ", got " << dtype_name(types[index]);
    return false;
  }
  return true;
}

bool assign_or_check_dtype(const char* op, std::vector<int>* types, size_t index,
                           const char* name, int expected) {
  if ((*types)[index] == -1) (*types)[index] = expected;
  return check_dtype(op, *types, index, name, expected);
}

bool assign_or_check_shape(const char* op, Shapes* shapes, size_t index, const char* name,
                           const std::vector<unsigned int>& expected, const char* formula) {
  std::vector<unsigned int>& shape = (*shapes)[index];
  bool fits = shape.empty() || shape.size() == expected.size();
  for (size_t i = 0; fits && i < shape.size(); ++i) {
    fits = shape[i] == expected[i] || shape[i] == static_cast<unsigned int>(-1);
  }
  if (fits) shape = expected;
  if (shape != expected) {
    MX_ERROR_MSG << op << ": input '" << name << "' must have shape " << shape_str(expected)
                 << " = " << formula << ", got " << shape_str(shape);
    return false;
  }
  return true;
}

std::string shape_str(const std::vector<unsigned int>& shape) {
  std::string s = "(";
  for (size_t i = 0; i < shape.size(); ++i) {
    // An unknown dimension reaches lib_api ops as (unsigned)-1.
    const bool unknown = shape[i] == static_cast<unsigned int>(-1);
    s += (i ? ", " : "") + (unknown ? std::string("?") : std::to_string(shape[i]));
  }
  return s + (shape.size() == 1 ? ",)" : ")");
}

bool check_rank(const char* op, const Shapes& shapes, size_t index, const char* name,
                size_t rank, const char* layout) {
  if (shapes[index].size() != rank) {
    MX_ERROR_MSG << op << ": input '" << name << "' must have rank " << rank << " (" << layout
                 << "), got shape " << shape_str(shapes[index]);
    return false;
  }
  return true;
}

static size_t dtype_bytes(int dtype) {
  switch (dtype) {
    case MXDType::kFloat64:
    case MXDType::kInt64: return 8;
    case MXDType::kFloat32:
    case MXDType::kInt32: return 4;
    case MXDType::kFloat16: return 2;
    default: return 1;
  }
}

bool require_attrs(const char* op, const Attrs& attrs, std::initializer_list<const char*> names,
                   const char* why) {
  for (const char* name : names) {
    if (attrs.count(name) == 0) {
      MX_ERROR_MSG << op << ": attribute " << name << " is required" << (*why ? " " : "") << why;
      return false;
    }
  }
  return true;
}

uint32_t* alloc_scratch(const char* op, const mxnet::ext::OpResource& res, int64_t words,
                        const char* what) {
  // Shape inference rejected inputs whose scratch would not fit an int.
  const int64_t bytes = words * 4;
  auto* scratch = static_cast<uint32_t*>(res.alloc_cpu(static_cast<int>(bytes)));
  if (scratch == nullptr) {
    MX_ERROR_MSG << op << ": could not allocate " << bytes << " bytes of scratch memory for "
                 << what;
  }
  return scratch;
}

mxnet::ext::MXReturnValue OpState::Backward(std::vector<mxnet::ext::MXTensor>* inputs,
                                            std::vector<mxnet::ext::MXTensor>* outputs,
                                            const mxnet::ext::OpResource& res) {
  forget_reported_errors();
  for (auto& grad : *outputs) {
    std::memset(grad.data_ptr, 0, grad.size() * dtype_bytes(grad.dtype));
  }
  return mxnet::ext::MX_SUCCESS;
}

bool ConstantInput::unchanged(const mxnet::ext::MXTensor& t) const {
  return t.data_ptr == data_ && t.verID == version_ &&
         t.size() * static_cast<int64_t>(dtype_bytes(t.dtype)) == bytes_ &&
         fingerprint(t) == fingerprint_;
}

void ConstantInput::remember(const mxnet::ext::MXTensor& t) {
  data_ = t.data_ptr;
  version_ = t.verID;
  bytes_ = t.size() * static_cast<int64_t>(dtype_bytes(t.dtype));
  fingerprint_ = fingerprint(t);
}

uint64_t ConstantInput::fingerprint(const mxnet::ext::MXTensor& t) {
  // Every input the ops remember holds 4-byte values (int32 words, float32).
  const auto* words = static_cast<const uint32_t*>(t.data_ptr);
  const int64_t count = t.size();
  constexpr int64_t kSamples = 64;
  uint64_t hash = 0x9E3779B97F4A7C15ull ^ static_cast<uint64_t>(count);
  for (int64_t i = 0; i < kSamples && i < count; ++i) {
    const int64_t at = count <= kSamples ? i : i * (count - 1) / (kSamples - 1);
    hash = (hash ^ words[at]) * 0x100000001B3ull;
  }
  return hash;
}

bool check_threshold_signs(const char* op, const std::string& name, const float* signs,
                           int64_t count) {
  for (int64_t c = 0; c < count; ++c) {
    if (signs[c] != 1.0f && signs[c] != -1.0f && signs[c] != 0.0f) {
      MX_ERROR_MSG << op << ": input '" << name << "' must hold only +1, -1 or 0 (bit = sign * x "
                   << ">= bias), got " << signs[c] << " at channel " << c;
      return false;
    }
  }
  return true;
}

bool check_known_nchw(const char* op, const Shapes& shapes) {
  if (!check_rank(op, shapes, 0, "data", 4, "N, C, H, W")) return false;
  const auto& s = shapes[0];
  for (unsigned int dim : s) {
    if (dim_is_empty_or_unknown(dim)) {
      MX_ERROR_MSG << op << ": input 'data' must have a known shape without empty dimensions, "
                   << "got shape " << shape_str(s);
      return false;
    }
  }
  return true;
}

bool all_float32(const char* op, const char* const* names, std::vector<int>* in_types,
                 std::vector<int>* out_types) {
  for (size_t i = 0; i < in_types->size(); ++i) {
    if (!assign_or_check_dtype(op, in_types, i, names[i], mxnet::ext::MXDType::kFloat32))
      return false;
  }
  (*out_types)[0] = mxnet::ext::MXDType::kFloat32;
  return true;
}

}  // namespace ops
}  // namespace bmx
