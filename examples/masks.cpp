// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors
//
// masks: what each of attn's masks lets a query see, drawn by attn itself. For every mask it runs
// scaled_dot_product_attention on zero queries and keys, so that every logit is equal and a query
// spreads its weight evenly over the keys it may see, asks for the attention weights
// (AttentionExtras::weights) and prints them as a grid: one line per query, one column per key,
// '#' where the weight is > 0 and '.' where the mask hides the key. ALiBi hides nothing but
// changes the weights: for it the weights themselves are printed, as digits.
//
//   ./build/default/examples/masks     # writes masks.png in the current directory
//
// Positions are aligned bottom-right, as everywhere in attn: with n queries and m keys, query row
// i stands at position q = i + m − n and key j at j. The first grids are n = m = 16 (a prompt);
// the last ones run n = 4 queries over m = 16 keys, a chunk that continues 12 cached keys (a
// decoding step is n = 1): their lines are the last 4 lines of the full grids, which the program
// checks (it exits nonzero otherwise; ctest runs it as a smoke test). masks.png shows every grid
// in the order printed, pale where a key is visible and dark where it is hidden, the ALiBi heads
// in heatmap colours, each named above it; the chunks sit at the bottom of a 16-line frame, where
// they stand.

#include <attn/attn.hpp>

#include "picture.hpp"

#include <algorithm>
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

namespace {

using Matrix = attn::Matrix<float>;
using attn::Index;
using attn::Mask;

// The attention weights of n queries over m keys under `mask`: (heads·n) × m, head h in rows
// [h·n, (h+1)·n). Queries and keys are zero, so every logit is 0 before a score function.
template <typename M>
Matrix weights_of(const M& mask, Index n, Index m, Index heads = 1) {
  attn::AttentionOptions options;
  options.num_heads = heads;
  Matrix weights;
  attn::AttentionExtras<float> extras;
  extras.weights = &weights;
  attn::scaled_dot_product_attention(Matrix::Zero(n, heads), Matrix::Zero(m, heads),
                                     Matrix::Zero(m, heads), mask, options, extras);
  return weights;
}

// One grid: n × m weights; graded ones show how much weight, not just whether any. The label
// names it in the picture.
struct Grid {
  Matrix weights;
  bool graded = false;
  std::string label;
};

// '.' hidden; else '#' or, graded, the weight as a digit: 9 for the row's largest weight.
char cell(const Matrix& weights, Index i, Index k, bool graded) {
  const float w = weights(i, k);
  if (w == 0) return '.';
  return graded ? char('0' + int(9 * w / weights.row(i).maxCoeff() + 0.5f)) : '#';
}

void print_grid(const std::string& title, const Grid& grid) {
  const Index n = grid.weights.rows(), m = grid.weights.cols();
  std::printf("\n%s\n          k = ", title.c_str());
  for (Index k = 0; k < m; ++k)
    std::printf("%d", int(k % 10));
  for (Index i = 0; i < n; ++i) {
    std::printf("\n  q = %2d      ", int(i + m - n));
    for (Index k = 0; k < m; ++k)
      std::putchar(cell(grid.weights, i, k, grid.graded));
  }
  std::printf("\n");
}

// The grids side by side, 8 px per cell, in two rows under a title: the n = m grids, then the
// chunks, each at the bottom of a frame as tall as the keys are many (where its queries stand),
// each named above it. The texts go to `texts`.
example::Image picture(const std::vector<Grid>& top, const std::vector<Grid>& bottom,
                       std::vector<example::Text>& texts) {
  constexpr int px = 8, margin = 12, title = 24, label = 18;
  const auto width = [](const std::vector<Grid>& row) {
    int w = margin;
    for (const Grid& g : row)
      w += int(g.weights.cols()) * px + margin;
    return w;
  };
  const int side = int(top.front().weights.cols()) * px;
  example::Image out(std::max(width(top), width(bottom)), title + 2 * (label + side + margin),
                     {24, 24, 24});
  const example::Rgb pale = {230, 230, 230};
  const auto caption = [&](double x, double y, const std::string& text, double size,
                           example::Text::Anchor anchor) {
    example::Text t;
    t.x = x;
    t.y = y;
    t.text = text;
    t.size = size;
    t.anchor = anchor;
    t.colour = pale;
    texts.push_back(t);
  };
  caption(margin, 17,
          "Which keys (columns) each query (rows) sees: pale visible, dark hidden; ALiBi in heat "
          "colours. Top: n = m = 16. Bottom: n queries over m = 16 keys, at the rows where they "
          "stand.",
          13, example::Text::Anchor::left);
  const auto draw = [&](const std::vector<Grid>& row, int y0) {
    int x0 = margin;
    for (const Grid& g : row) {
      const Index n = g.weights.rows(), m = g.weights.cols();
      caption(x0 + double(m) * px / 2, y0 - 5, g.label, 10.5, example::Text::Anchor::middle);
      out.fill_rect(x0, y0, int(m) * px, int(m) * px, {48, 48, 48});  // positions before q
      const int top_row = y0 + int(m - n) * px;
      for (Index i = 0; i < n; ++i) {
        for (Index k = 0; k < m; ++k) {
          const float w = g.weights(i, k);
          const double t = g.graded ? 0.15 + 0.85 * w / g.weights.row(i).maxCoeff() : 1.0;
          out.fill_rect(x0 + int(k) * px, top_row + int(i) * px, px - 1, px - 1,
                        w == 0 ? example::Rgb{0, 0, 4} : example::heat(t));
        }
      }
      x0 += int(m) * px + margin;
    }
  };
  draw(top, title + label);
  draw(bottom, title + 2 * label + side + margin);
  return out;
}

}  // namespace

int main() {
  try {
    constexpr Index m = 16;
    std::printf(
        "attn masks: which keys (columns) each query (line) sees; '#' visible, '.' hidden\n");
    std::vector<Grid> full, chunks;
    const auto show = [](std::vector<Grid>& grids, const std::string& title,
                         const std::string& label, Matrix weights) {
      grids.push_back({std::move(weights), false, label});
      print_grid(title, grids.back());
    };

    // A user's mask function: causal, every third key back (a dilated pattern).
    const auto dilated =
        attn::mask_function([](Index q, Index k) { return k <= q && (q - k) % 3 == 0; });
    const auto causal = Mask::causal();
    const auto window = Mask::causal() & Mask::window(3, 0);
    const auto documents = Mask::causal() & attn::documents({5, 6, 5});
    const auto tree = attn::tree({-1, 0, 0, 1, 1, 2});
    const auto sinks = attn::sinks(2, 4);

    std::printf("\n=== n = m = %d: a prompt of 16 tokens\n", int(m));
    show(full, "Mask::causal(): each position sees itself and the past", "causal()",
         weights_of(causal, m, m));
    show(full, "Mask::causal() & Mask::window(3, 0): the last 3 keys and itself",
         "causal() & window(3, 0)", weights_of(window, m, m));
    show(full,
         "Mask::causal() & attn::documents({5, 6, 5}): three documents packed, causal in each",
         "causal() & documents", weights_of(documents, m, m));
    show(full, "attn::prefix_lm(6): the first 6 positions seen by all, causal after",
         "prefix_lm(6)", weights_of(attn::prefix_lm(6), m, m));
    show(full,
         "attn::tree({-1, 0, 0, 1, 1, 2}): a tree of 6 draft tokens after 10 positions; each sees\n"
         "the prefix, its ancestors and itself (node 0 at q = 10; 1, 2 under 0; 3, 4 under 1; 5 "
         "under 2)",
         "tree (6 drafts)", weights_of(tree, m, m));
    show(full, "attn::sinks(2, 4): the first 2 keys (sinks), then a window of 4 keys and itself",
         "sinks(2, 4)", weights_of(sinks, m, m));
    show(full, "a user's mask function: k <= q && (q - k) % 3 == 0", "mask_function (dilated)",
         weights_of(dilated, m, m));

    // ALiBi: causal, and a penalty slope_h·(q − k) on the logits; steeper heads look less far.
    constexpr Index heads = 4;
    const std::vector<double> slopes = attn::alibi_slopes(heads);
    const Matrix alibi = weights_of(Mask::causal() & attn::alibi(heads), m, m, heads);
    std::printf(
        "\nMask::causal() & attn::alibi(4): weights of the last query (q = 15) per head,\n"
        "as digits, 9 = its largest weight\n          k = ");
    for (Index k = 0; k < m; ++k)
      std::printf("%d", int(k % 10));
    for (Index h = 0; h < heads; ++h) {
      full.push_back(
          {alibi.middleRows(h * m, m), /*graded*/ true, "ALiBi, head " + std::to_string(h)});
      std::printf("\n  head %d      ", int(h));
      for (Index k = 0; k < m; ++k)
        std::putchar(cell(full.back().weights, m - 1, k, true));
      std::printf("   slope %g", slopes[std::size_t(h)]);
    }
    std::printf("\n");

    // A chunk's lines must be the last lines of the full grid: positions are absolute.
    constexpr Index n = 4;
    bool aligned = true;
    const auto show_chunk = [&](const std::string& title, const std::string& label,
                                const auto& mask, Index queries) {
      show(chunks, title, label, weights_of(mask, queries, m));
      const Matrix last_lines = weights_of(mask, m, m).bottomRows(queries);
      aligned = aligned && ((chunks.back().weights.array() > 0) == (last_lines.array() > 0)).all();
    };
    std::printf("\n=== n = %d queries, m = %d keys: a chunk that continues %d cached keys\n",
                int(n), int(m), int(m - n));
    show_chunk("Mask::causal()", "causal(), n = 4", causal, n);
    show_chunk("Mask::causal() & Mask::window(3, 0)", "window(3, 0), n = 4", window, n);
    show_chunk("Mask::causal() & attn::documents({5, 6, 5})", "documents, n = 4", documents, n);
    show_chunk("attn::sinks(2, 4)", "sinks(2, 4), n = 4", sinks, n);
    show_chunk("attn::tree({-1, 0, 0, 1, 1, 2}) with n = 6: the draft tokens, checked at once",
               "tree, n = 6", tree, 6);

    const char* path = "masks.png";
    std::vector<example::Text> texts;
    const example::Image image = picture(full, chunks, texts);
    if (example::write_png(path, image, texts))
      std::printf("\nwrote %s: the grids above, in the same order\n", path);
    if (!aligned) {
      std::printf("FAILED: a chunk's lines differ from the last lines of its full grid\n");
      return 1;
    }
    std::printf("ok: every chunk's lines are the last lines of its full grid\n");
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "masks: %s\n", e.what());
    return 1;
  }
}
