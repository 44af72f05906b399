#include "kernels/bitpack.h"

#include <algorithm>

#include "kernels/conv_isa.h"
#include "kernels/parallel.h"

namespace bmx {

void pack_nchw(const float* x, int64_t n, int64_t c, int64_t h, int64_t w, uint32_t* out) {
  const IsaKernels& isa = active_kernels();
  const int64_t words = words_for_channels(c), pixels = h * w;
  const int threads = threads_for_floats(static_cast<double>(n) * c * pixels, n * words);
  // Channel plane by channel plane, so every load is sequential; word j of a pixel is every
  // words-th word of the output.
  parallel_for(threads, n * words, [&](int64_t item, int) {
    const int64_t b = item / words, j = item % words;
    const int bits = static_cast<int>(std::min(kWordBits, c - j * kWordBits));
    isa.pack_span(x + (b * c + j * kWordBits) * pixels, pixels, 1, bits, nullptr, nullptr,
                  pixels, out + b * pixels * words + j, words);
  });
}

bool tail_bits_clear(const uint32_t* packed, int64_t vectors, int64_t channels) {
  const int64_t words = words_for_channels(channels);
  const uint32_t tail = ~low_bits_mask(channels - (words - 1) * kWordBits);
  uint32_t stray = 0;
  for (int64_t v = 0; v < vectors; ++v) stray |= packed[v * words + words - 1] & tail;
  return stray == 0;
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
