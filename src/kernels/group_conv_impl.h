// The rows of a grouped float convolution in MXNet's summation order (group_conv.h), written
// once and compiled by each conv_isa_*.cc for its instruction set: included inside that file's
// target pragma and its own namespace, under the rules of conv_isa_impl.h (no std:: templates; no
// include guard). Not a public header. A file that defines BMX_ISA_HAS_GROUP_CONV_VEC provides
// group_conv_vec<V>(args, ox, count), which computes the 8 * V neighbouring outputs of a row from
// ox on (V = 1: only the first count) exactly as one_output below does, reading up to 8 floats
// past the last input row (group_conv.cc keeps them in its scratch).
//
// __builtin_fmaf is one rounding wherever it runs (an instruction with FMA, libm's fmaf without);
// the library is built with -ffp-contract=off, so a product and a sum written apart stay two
// roundings.

namespace group_impl {

using bmx::GroupConvRowArgs;

// One output of a channel whose weights (in tap order) are w: one chain.
inline float dot_chain(const GroupConvRowArgs& a, const float* in, const float* w) {
  float acc = 0.0f;
  for (int64_t t = 0; t < a.tap_count; ++t) acc = __builtin_fmaf(in[a.taps[t]], w[t], acc);
  return acc;
}

// Even and odd taps summed apart, fused or with the product rounded first, then added.
inline float dot_pair(const GroupConvRowArgs& a, const float* in, const float* w, bool fused) {
  float acc[2] = {0.0f, 0.0f};
  for (int64_t t = 0; t < a.tap_count; ++t) {
    float& sum = acc[t & 1];
    if (fused) {
      sum = __builtin_fmaf(in[a.taps[t]], w[t], sum);
    } else {
      const float product = in[a.taps[t]] * w[t];
      sum = sum + product;
    }
  }
  return acc[0] + acc[1];
}

// Output ox of the row, every channel; `paired` for the pixels of the image's short last block.
inline void one_output(const GroupConvRowArgs& a, int64_t ox, bool paired) {
  const float* in = a.in + ox;
  for (int64_t j = 0; j < a.out_channels; ++j) {
    const float* w = a.weight + j * a.tap_count;
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
  for (; ox + 16 <= a.paired_from; ox += 16) group_conv_vec<2>(a, ox, 8);
  while (ox < a.paired_from) {
    const int count = static_cast<int>(a.paired_from - ox < 8 ? a.paired_from - ox : 8);
    group_conv_vec<1>(a, ox, count);
    ox += count;
  }
#endif
  for (; ox < a.out_w; ++ox) one_output(a, ox, ox >= a.paired_from);
}

}  // namespace group_impl
