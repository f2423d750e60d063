// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors
//
// Pictures for the examples (not part of attn, which draws nothing): an 8-bit RGB image, a colour
// map for heatmaps, labelled heatmaps with a colour scale, and a PNG writer. Pixels are drawn
// here; text and PNG encoding are cairo's (Debian: libcairo2-dev), which the examples' CMake finds
// and announces with ATTN_EXAMPLES_CAIRO. Without cairo every picture function says so on stdout,
// writes nothing and returns false, and the examples run on.
#pragma once

#if defined(ATTN_EXAMPLES_CAIRO)
#include <cairo.h>
#endif

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <vector>

namespace example {

/// One pixel, 0–255 per channel.
struct Rgb {
  std::uint8_t r = 0, g = 0, b = 0;
};

/// An RGB image, rows top to bottom.
class Image {
 public:
  Image(int width, int height, Rgb fill = {})
      : m_width(width), m_height(height), m_pixels(std::size_t(width) * std::size_t(height)) {
    fill_rect(0, 0, width, height, fill);
  }

  int width() const { return m_width; }
  int height() const { return m_height; }
  Rgb get(int x, int y) const { return m_pixels[offset(x, y)]; }
  void set(int x, int y, Rgb c) { m_pixels[offset(x, y)] = c; }

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
    return std::size_t(y) * std::size_t(m_width) + std::size_t(x);
  }

  int m_width, m_height;
  std::vector<Rgb> m_pixels;
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
inline Image upscale(const Image& src, int factor) {
  Image out(src.width() * factor, src.height() * factor);
  for (int y = 0; y < out.height(); ++y)
    for (int x = 0; x < out.width(); ++x)
      out.set(x, y, src.get(x / factor, y / factor));
  return out;
}

/// Text to draw over an image: `text` with its anchor at (x, y), the anchor being the baseline's
/// left end, middle or right end; `vertical` turns it a quarter anticlockwise (read bottom to
/// top), the anchor then being on the text's own baseline.
struct Text {
  enum class Anchor { left, middle, right };
  double x = 0, y = 0;
  std::string text;
  double size = 13;
  Anchor anchor = Anchor::left;
  bool vertical = false;
  Rgb colour = {20, 20, 20};
};

/// Writes `image` with `texts` drawn over it as an 8-bit RGB PNG; false (and a line on stdout)
/// where the examples were built without cairo.
/// \throws std::runtime_error with cairo's message if the file cannot be written.
inline bool write_png(const std::string& path, const Image& image,
                      const std::vector<Text>& texts = {}) {
#if defined(ATTN_EXAMPLES_CAIRO)
  cairo_surface_t* surface =
      cairo_image_surface_create(CAIRO_FORMAT_RGB24, image.width(), image.height());
  cairo_surface_flush(surface);
  unsigned char* data = cairo_image_surface_get_data(surface);
  const int stride = cairo_image_surface_get_stride(surface);
  for (int y = 0; y < image.height(); ++y) {
    auto* row = reinterpret_cast<std::uint32_t*>(data + std::ptrdiff_t(y) * stride);
    for (int x = 0; x < image.width(); ++x) {
      const Rgb c = image.get(x, y);  // RGB24: 0x00RRGGBB in native byte order
      row[x] = (std::uint32_t(c.r) << 16) | (std::uint32_t(c.g) << 8) | std::uint32_t(c.b);
    }
  }
  cairo_surface_mark_dirty(surface);
  cairo_t* cr = cairo_create(surface);
  cairo_select_font_face(cr, "sans-serif", CAIRO_FONT_SLANT_NORMAL, CAIRO_FONT_WEIGHT_NORMAL);
  for (const Text& t : texts) {
    cairo_save(cr);
    cairo_set_source_rgb(cr, t.colour.r / 255.0, t.colour.g / 255.0, t.colour.b / 255.0);
    cairo_set_font_size(cr, t.size);
    cairo_text_extents_t extents;
    cairo_text_extents(cr, t.text.c_str(), &extents);
    const double shift = t.anchor == Text::Anchor::left     ? 0.0
                         : t.anchor == Text::Anchor::middle ? extents.x_advance / 2
                                                            : extents.x_advance;
    cairo_translate(cr, t.x, t.y);
    if (t.vertical) cairo_rotate(cr, -3.14159265358979323846 / 2);
    cairo_move_to(cr, -shift, 0);
    cairo_show_text(cr, t.text.c_str());
    cairo_restore(cr);
  }
  cairo_destroy(cr);
  const cairo_status_t status = cairo_surface_write_to_png(surface, path.c_str());
  cairo_surface_destroy(surface);
  if (status != CAIRO_STATUS_SUCCESS)
    throw std::runtime_error("cannot write " + path + ": " + cairo_status_to_string(status));
  return true;
#else
  (void)image;
  (void)texts;
  std::printf("(built without cairo, so %s is not written)\n", path.c_str());
  return false;
#endif
}

/// What a heatmap's axes show: a title, each row's and each column's label, and what the rows
/// and the columns are.
struct HeatmapLabels {
  std::string title;
  std::string rows_name, columns_name;
  std::vector<std::string> rows, columns;
};

/// Writes a matrix of weights in [0, 1] as a heatmap of cell × cell squares with its labels: the
/// title on top, the columns' labels above the cells and the rows' beside them, the axes' names,
/// and a colour scale from 0 to 1 on the right. Returns what write_png returns.
template <typename Weights>
bool write_heatmap(const std::string& path, const Weights& weights, const HeatmapLabels& labels,
                   int cell = 32) {
  const int rows = int(weights.rows()), cols = int(weights.cols());
  if (int(labels.rows.size()) != rows || int(labels.columns.size()) != cols)
    throw std::invalid_argument("write_heatmap: " + std::to_string(rows) + " x " +
                                std::to_string(cols) + " weights but " +
                                std::to_string(labels.rows.size()) + " row and " +
                                std::to_string(labels.columns.size()) + " column labels");
  std::size_t longest_row = 0, longest_column = 0;
  for (const std::string& label : labels.rows)
    longest_row = std::max(longest_row, label.size());
  for (const std::string& label : labels.columns)
    longest_column = std::max(longest_column, label.size());
  // Margins sized by the labels (about 8 px per character at 13 px).
  const int left = 30 + 8 * int(longest_row) + 10;
  const int top = 34 + 22 + 8 * int(longest_column) + 8;
  const int grid_w = cols * cell + 1, grid_h = rows * cell + 1;
  const int bar_x = left + grid_w + 20, bar_w = 16;
  const int width = std::max(bar_x + bar_w + 40, left + 9 * int(labels.title.size()) + 10);
  const int height = top + grid_h + 20;
  const Rgb paper = {255, 255, 255}, lines = {60, 60, 60};

  Image image(width, height, paper);
  image.fill_rect(left, top, grid_w, grid_h, lines);
  for (int i = 0; i < rows; ++i)
    for (int j = 0; j < cols; ++j)
      image.fill_rect(left + j * cell + 1, top + i * cell + 1, cell - 1, cell - 1,
                      heat(double(weights(i, j))));
  // The colour scale: 1 at the top, 0 at the bottom, as tall as the grid.
  for (int y = 0; y < grid_h; ++y)
    image.fill_rect(bar_x, top + y, bar_w, 1, heat(1.0 - double(y) / std::max(grid_h - 1, 1)));
  image.outline_rect(bar_x - 1, top - 1, bar_w + 2, grid_h + 2, lines);

  using Anchor = Text::Anchor;
  std::vector<Text> texts;
  texts.push_back({double(left), 22, labels.title, 15, Anchor::left});
  texts.push_back({double(left + grid_w / 2), 48, labels.columns_name, 12, Anchor::middle});
  texts.push_back({16, double(top + grid_h / 2), labels.rows_name, 12, Anchor::middle, true});
  for (int j = 0; j < cols; ++j)
    texts.push_back({double(left + j * cell + cell / 2 + 5), double(top - 6),
                     labels.columns[std::size_t(j)], 13, Anchor::left, true});
  for (int i = 0; i < rows; ++i)
    texts.push_back({double(left - 8), double(top + i * cell + cell / 2 + 5),
                     labels.rows[std::size_t(i)], 13, Anchor::right});
  texts.push_back({double(bar_x + bar_w + 4), double(top + 10), "1", 12});
  texts.push_back({double(bar_x + bar_w + 4), double(top + grid_h / 2 + 4), "0.5", 12});
  texts.push_back({double(bar_x + bar_w + 4), double(top + grid_h), "0", 12});
  return write_png(path, image, texts);
}

}  // namespace example
