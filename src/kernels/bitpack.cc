#include "kernels/bitpack.h"

#include <cstring>

namespace bmx {

void pack_nchw(const float* x, int64_t n, int64_t c, int64_t h, int64_t w, uint32_t* out) {
  const int64_t pixels = h * w;
  const int64_t words = words_for_channels(c);
  std::memset(out, 0, sizeof(uint32_t) * n * pixels * words);
  for (int64_t b = 0; b < n; ++b) {
    uint32_t* out_b = out + b * pixels * words;
    for (int64_t ch = 0; ch < c; ++ch) {
      // Read each channel plane contiguously; every pixel's word for this channel gets one bit.
      const float* plane = x + (b * c + ch) * pixels;
      uint32_t* word = out_b + ch / kWordBits;
      const uint32_t bit = 1u << (ch % kWordBits);
      for (int64_t p = 0; p < pixels; ++p) {
        if (plane[p] >= 0.0f) word[p * words] |= bit;
      }
    }
  }
}

void unpack_to_nchw(const uint32_t* in, int64_t n, int64_t c, int64_t h, int64_t w, float* out) {
  const int64_t pixels = h * w;
  const int64_t words = words_for_channels(c);
  for (int64_t b = 0; b < n; ++b) {
    const uint32_t* in_b = in + b * pixels * words;
    for (int64_t ch = 0; ch < c; ++ch) {
      float* plane = out + (b * c + ch) * pixels;
      const uint32_t* word = in_b + ch / kWordBits;
      const uint32_t bit = 1u << (ch % kWordBits);
      for (int64_t p = 0; p < pixels; ++p) {
        plane[p] = (word[p * words] & bit) ? 1.0f : -1.0f;
      }
    }
  }
}

}  // namespace bmx
