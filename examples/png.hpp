// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors
//
// Pictures for the examples (not part of attn, which draws nothing): an 8-bit RGB image, a colour
// map for heatmaps, nearest-neighbour upscaling, and a PNG writer on libpng's simplified API
// (Debian: libpng-dev; CMake: find_package(PNG) and PNG::PNG).
#pragma once

#include <png.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace example {

/// One pixel, 0–255 per channel.
struct Rgb {
  std::uint8_t r = 0, g = 0, b = 0;
};

/// An RGB image, rows top to bottom, 3 bytes per pixel (libpng's PNG_FORMAT_RGB).
class Image {
 public:
  Image(int width, int height, Rgb fill = {})
      : m_width(width), m_height(height), m_bytes(3 * std::size_t(width) * std::size_t(height)) {
    fill_rect(0, 0, width, height, fill);
  }

  int width() const { return m_width; }
  int height() const { return m_height; }
  const std::uint8_t* bytes() const { return m_bytes.data(); }

  Rgb get(int x, int y) const {
    const std::uint8_t* p = &m_bytes[offset(x, y)];
    return {p[0], p[1], p[2]};
  }
  void set(int x, int y, Rgb c) {
    std::uint8_t* p = &m_bytes[offset(x, y)];
    p[0] = c.r;
    p[1] = c.g;
    p[2] = c.b;
  }

  /// Fills the w × h rectangle at (x0, y0), clipped to the image.
  void fill_rect(int x0, int y0, int w, int h, Rgb c) {
    for (int y = std::max(y0, 0); y < std::min(y0 + h, m_height); ++y)
      for (int x = std::max(x0, 0); x < std::min(x0 + w, m_width); ++x)
        set(x, y, c);
  }

  /// Draws a one-pixel outline of the w × h rectangle at (x0, y0).
  void outline_rect(int x0, int y0, int w, int h, Rgb c) {
    fill_rect(x0, y0, w, 1, c);
    fill_rect(x0, y0 + h - 1, w, 1, c);
    fill_rect(x0, y0, 1, h, c);
    fill_rect(x0 + w - 1, y0, 1, h, c);
  }

  /// Copies `src` with its top-left corner at (x0, y0), clipped to the image.
  void paste(const Image& src, int x0, int y0) {
    for (int y = 0; y < src.height(); ++y)
      for (int x = 0; x < src.width(); ++x)
        if (x0 + x >= 0 && x0 + x < m_width && y0 + y >= 0 && y0 + y < m_height)
          set(x0 + x, y0 + y, src.get(x, y));
  }

 private:
  std::size_t offset(int x, int y) const {
    return 3 * (std::size_t(y) * std::size_t(m_width) + std::size_t(x));
  }

  int m_width, m_height;
  std::vector<std::uint8_t> m_bytes;
};

/// a + t·(b − a), t in [0, 1].
inline Rgb mix(Rgb a, Rgb b, double t) {
  t = std::clamp(t, 0.0, 1.0);
  const auto channel = [t](std::uint8_t x, std::uint8_t y) {
    return std::uint8_t(double(x) + t * (double(y) - double(x)) + 0.5);
  };
  return {channel(a.r, b.r), channel(a.g, b.g), channel(a.b, b.b)};
}

/// A heatmap colour for t in [0, 1] (clamped): near-black, purple, red, orange, pale yellow, as
/// matplotlib's "inferno" (sampled at five points, linear in between).
inline Rgb heat(double t) {
  static const Rgb stops[] = {
      {0, 0, 4}, {87, 16, 110}, {188, 55, 84}, {249, 142, 9}, {252, 255, 164}};
  constexpr int segments = int(sizeof(stops) / sizeof(stops[0])) - 1;
  const double s = std::clamp(t, 0.0, 1.0) * segments;
  const int i = std::min(int(s), segments - 1);
  return mix(stops[i], stops[i + 1], s - i);
}

/// Every pixel becomes a factor × factor block.
/// A matrix of weights in [0, 1] as a grid of cell × cell squares, one per entry, 1 px apart.
template <typename Weights>
Image heatmap(const Weights& weights, int cell) {
  const int rows = int(weights.rows()), cols = int(weights.cols());
  Image image(cols * cell + 1, rows * cell + 1, {40, 40, 40});
  for (int i = 0; i < rows; ++i)
    for (int j = 0; j < cols; ++j)
      image.fill_rect(j * cell + 1, i * cell + 1, cell - 1, cell - 1, heat(double(weights(i, j))));
  return image;
}

inline Image upscale(const Image& src, int factor) {
  Image out(src.width() * factor, src.height() * factor);
  for (int y = 0; y < out.height(); ++y)
    for (int x = 0; x < out.width(); ++x)
      out.set(x, y, src.get(x / factor, y / factor));
  return out;
}

/// Writes `image` as an 8-bit RGB PNG.
/// \throws std::runtime_error with libpng's message if the file cannot be written.
inline void write_png(const std::string& path, const Image& image) {
  png_image info{};  // libpng's simplified API: describe the pixels, it does the rest
  info.version = PNG_IMAGE_VERSION;
  info.width = png_uint_32(image.width());
  info.height = png_uint_32(image.height());
  info.format = PNG_FORMAT_RGB;
  if (png_image_write_to_file(&info, path.c_str(), /*convert_to_8_bit*/ 0, image.bytes(),
                              /*row_stride: packed*/ 0, /*colormap*/ nullptr) == 0) {
    const std::string message = info.message;
    png_image_free(&info);
    throw std::runtime_error("cannot write " + path + ": " + message);
  }
}

}  // namespace example
