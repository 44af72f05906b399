// Bit packing of activations and weights: the one implementation of bmxnet_ext's bit layout.
//
// Layout: a float tensor in NCHW order becomes N x H x W x words 32-bit words (NHWC order, packed
// along channels per pixel), words = ceil(C / 32). Channel c of a pixel sits in word c / 32 at bit
// c % 32 (LSB first). A bit is 1 iff x >= 0, i.e. sign(x) = +1 (0 and -0 give +1; NaN gives 0,
// i.e. -1, the same as the training-side quantizers). Bits past C in the last word are always 0.
//
// No MXNet types here: these functions serve the MXNet ops and the Cython bindings alike.
#ifndef BMXNET_KERNELS_BITPACK_H_
#define BMXNET_KERNELS_BITPACK_H_

#include <cstdint>

namespace bmx {

constexpr int64_t kWordBits = 32;

inline int64_t words_for_channels(int64_t channels) {
  return (channels + kWordBits - 1) / kWordBits;
}

// x: [n][c][h][w] floats; out: [n][h][w][words_for_channels(c)] words, fully overwritten.
void pack_nchw(const float* x, int64_t n, int64_t c, int64_t h, int64_t w, uint32_t* out);

// in: [n][h][w][words_for_channels(c)] words; out: [n][c][h][w] of +1.0f / -1.0f.
void unpack_to_nchw(const uint32_t* in, int64_t n, int64_t c, int64_t h, int64_t w, float* out);

}  // namespace bmx

#endif  // BMXNET_KERNELS_BITPACK_H_
