#include "kernels/bitpack.h"

#include <algorithm>
#include <vector>

namespace bmx {

void pack_nchw(const float* x, int64_t n, int64_t c, int64_t h, int64_t w, uint32_t* out) {
  pack_nchw_padded(x, n, c, h, w, 1, 0, 0, false, out);
}

void pack_nchw_padded(const float* x, int64_t n, int64_t c, int64_t h, int64_t w, int64_t groups,
                      int64_t pad_h, int64_t pad_w, bool pad_ones, uint32_t* out) {
  const int64_t group_channels = c / groups;
  const int64_t group_words = words_for_channels(group_channels);
  const int64_t pixel_words = groups * group_words;
  const int64_t padded_h = h + 2 * pad_h;
  const int64_t padded_w = w + 2 * pad_w;

  // The words of one padding pixel: per group, all valid bits (pad_ones) or none.
  std::vector<uint32_t> pad_pixel(pixel_words, 0u);
  if (pad_ones) {
    for (int64_t g = 0; g < groups; ++g) {
      for (int64_t j = 0; j < group_words; ++j) {
        pad_pixel[g * group_words + j] = low_bits_mask(group_channels - j * kWordBits);
      }
    }
  }
  auto fill_pad = [&](uint32_t* dst, int64_t pixels) {
    for (int64_t p = 0; p < pixels; ++p) {
      std::copy(pad_pixel.begin(), pad_pixel.end(), dst + p * pixel_words);
    }
  };

  // One input row at a time: the bits of up to 32 channels are gathered for the whole row in
  // `row_words` (a loop over contiguous floats the compiler vectorizes), then scattered to the
  // row's pixels. Reading channel planes row by row keeps every load sequential.
  std::vector<uint32_t> row_words(static_cast<size_t>(std::max<int64_t>(w, 1)));
  for (int64_t b = 0; b < n; ++b) {
    uint32_t* out_b = out + b * padded_h * padded_w * pixel_words;
    fill_pad(out_b, pad_h * padded_w);
    fill_pad(out_b + (pad_h + h) * padded_w * pixel_words, pad_h * padded_w);
    for (int64_t y = 0; y < h; ++y) {
      uint32_t* out_row = out_b + (y + pad_h) * padded_w * pixel_words;
      fill_pad(out_row, pad_w);
      fill_pad(out_row + (pad_w + w) * pixel_words, pad_w);
      uint32_t* out_pixels = out_row + pad_w * pixel_words;
      for (int64_t g = 0; g < groups; ++g) {
        for (int64_t j = 0; j < group_words; ++j) {
          const int64_t first = g * group_channels + j * kWordBits;
          const int64_t bits = std::min(kWordBits, group_channels - j * kWordBits);
          uint32_t* acc = row_words.data();
          std::fill(acc, acc + w, 0u);
          for (int64_t bit = 0; bit < bits; ++bit) {
            const float* row = x + ((b * c + first + bit) * h + y) * w;
            const uint32_t one = 1u << bit;
            // NaN compares false: bit 0, i.e. -1, as the training quantizers do.
            for (int64_t p = 0; p < w; ++p) acc[p] |= row[p] >= 0.0f ? one : 0u;
          }
          uint32_t* dst = out_pixels + g * group_words + j;
          for (int64_t p = 0; p < w; ++p) dst[p * pixel_words] = acc[p];
        }
      }
    }
  }
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
