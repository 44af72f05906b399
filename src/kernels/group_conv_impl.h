// The rows of a grouped float convolution in MXNet's summation order (group_conv.h), written
// once and compiled by each conv_isa_*.cc for its instruction set: included inside that file's
// target pragma and its own namespace, under the rules of conv_isa_impl.h (no std:: templates; no
// include guard). Not a public header. A file that defines BMX_ISA_HAS_GROUP_CONV_VEC provides
// group_conv_vec<V>(args, ox), which computes the 8 * V neighbouring outputs of a stride-1 row from
// ox on exactly as one_output below does.
//
// __builtin_fmaf is one rounding wherever it runs (an instruction with FMA, libm's fmaf without);
// the library is built with -ffp-contract=off, so a product and a sum written apart stay two
// roundings.

namespace group_impl {

using bmx::GroupConvRowArgs;

// One output: `in` is its tap (channel 0, kernel row 0, column 0) in the padded input; w its
// channel's weights [channel][row][column].
inline float dot_chain(const GroupConvRowArgs& a, const float* in, const float* w) {
  float acc = 0.0f;
  for (int64_t c = 0; c < a.channels; ++c) {
    for (int64_t ky = 0; ky < a.kernel_h; ++ky) {
      const float* row = in + c * a.channel_stride + ky * a.row_stride;
      for (int64_t kx = 0; kx < a.kernel_w; ++kx, ++w) acc = __builtin_fmaf(row[kx], *w, acc);
    }
  }
  return acc;
}

// Even and odd k summed apart, fused or with the product rounded first, then added.
inline float dot_pair(const GroupConvRowArgs& a, const float* in, const float* w, bool fused) {
  float acc[2] = {0.0f, 0.0f};
  int64_t k = 0;
  for (int64_t c = 0; c < a.channels; ++c) {
    for (int64_t ky = 0; ky < a.kernel_h; ++ky) {
      const float* row = in + c * a.channel_stride + ky * a.row_stride;
      for (int64_t kx = 0; kx < a.kernel_w; ++kx, ++w, ++k) {
        float& sum = acc[k & 1];
        if (fused) {
          sum = __builtin_fmaf(row[kx], *w, sum);
        } else {
          const float product = row[kx] * *w;
          sum = sum + product;
        }
      }
    }
  }
  return acc[0] + acc[1];
}

// Output ox of the row, every channel; `paired` for the pixels of the image's short last block.
inline void one_output(const GroupConvRowArgs& a, int64_t ox, bool paired) {
  const float* in = a.in + ox * a.stride_w;
  const int64_t taps = a.channels * a.kernel_h * a.kernel_w;
  for (int64_t j = 0; j < a.out_channels; ++j) {
    const float* w = a.weight + j * taps;
    float value;
    if (j >= a.full_channels) {
      value = dot_pair(a, in, w, false);
    } else {
      value = paired ? dot_pair(a, in, w, true) : dot_chain(a, in, w);
    }
    a.out[j * a.out_channel_stride + ox] = value;
  }
}

inline void group_conv_row(const GroupConvRowArgs& a) {
  int64_t ox = 0;
#ifdef BMX_ISA_HAS_GROUP_CONV_VEC
  if (a.stride_w == 1) {
    for (; ox + 16 <= a.paired_from; ox += 16) group_conv_vec<2>(a, ox);
    for (; ox + 8 <= a.paired_from; ox += 8) group_conv_vec<1>(a, ox);
  }
#endif
  for (; ox < a.out_w; ++ox) one_output(a, ox, ox >= a.paired_from);
}

}  // namespace group_impl
