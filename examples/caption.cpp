// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors
//
// caption: the cross-attention of an image-captioning model, with weights set by hand. The source
// is a picture cut into patches (as a vision transformer does); the target is three words, "red",
// "green" and "blue"; each word attends over the patches and finds the shape of its colour.
//
//   ./build/default/examples/caption     # writes caption_attention.png in the current directory
//
// It prints, for each word, the patch it attends to most, how much of its attention lands on the
// right shape and what it reads there, writes caption_attention.png (the picture, then one panel
// per word with its attention as a heatmap over the picture) and exits nonzero if a word looks
// anywhere else (ctest runs it as a smoke test).
//
// THE MODEL. Queries come from the target (the words), keys AND values from the source (the
// patches), and the two carry different things:
//  - a patch's features are its mean colour (r, g, b in [0, 1]) and its centre (x, y in [0, 1]);
//  - its key is its colour contrast: how much redder, greener and bluer it is than grey, e.g.
//    redness = r − (g + b)/2. Grey (the background) is 0 on all three.
//  - a word's query asks for one of those: "red" for redness, and so on;
//  - so a word's logit for a patch is `sharpness` × that patch's contrast in the word's colour:
//    the patches of its shape win and the background and the other shapes (negative) fade out;
//  - a patch's value is all of its features, so a word reads back the colour and the position of
//    what it found: "red" ends up knowing where the red thing is.

#include <attn/attn.hpp>

#include "picture.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

namespace {

using Matrix = attn::Matrix<float>;
using attn::Index;

constexpr int image_size = 96;                 // pixels per side
constexpr int patch_size = 8;                  // pixels per patch side
constexpr int grid = image_size / patch_size;  // 12 × 12 patches
constexpr Index patches = Index(grid) * grid;  // 144: the source sequence

// ---------------------------------------------------------------------------------------------
// The picture
// ---------------------------------------------------------------------------------------------
enum class Shape { None, Disc, Square, Triangle };

constexpr example::Rgb background{150, 150, 150};
constexpr example::Rgb red{215, 48, 39};
constexpr example::Rgb green{40, 170, 60};
constexpr example::Rgb blue{49, 104, 206};

// Which shape covers the pixel centred at (x, y): a red disc top left, a green square top right,
// a blue triangle at the bottom.
Shape shape_at(double x, double y) {
  if (std::hypot(x - 27, y - 28) <= 17) return Shape::Disc;
  if (x >= 54 && x < 88 && y >= 10 && y < 44) return Shape::Square;
  // Apex (48, 50), base from (18, 88) to (78, 88): below both slanted edges and above the base.
  if (y < 88 && y - 50 >= (38.0 / 30.0) * std::abs(x - 48)) return Shape::Triangle;
  return Shape::None;
}

example::Rgb colour_of(Shape shape) {
  switch (shape) {
    case Shape::Disc:
      return red;
    case Shape::Square:
      return green;
    case Shape::Triangle:
      return blue;
    case Shape::None:
      break;
  }
  return background;
}

example::Image draw_scene() {
  example::Image image(image_size, image_size);
  for (int y = 0; y < image_size; ++y)
    for (int x = 0; x < image_size; ++x)
      image.set(x, y, colour_of(shape_at(x + 0.5, y + 0.5)));
  return image;
}

// The share of patch p's pixels that belong to `shape`.
double coverage(Index p, Shape shape) {
  const int row = int(p) / grid, col = int(p) % grid;
  int inside = 0;
  for (int y = row * patch_size; y < (row + 1) * patch_size; ++y)
    for (int x = col * patch_size; x < (col + 1) * patch_size; ++x)
      inside += shape_at(x + 0.5, y + 0.5) == shape;
  return double(inside) / (patch_size * patch_size);
}

// ---------------------------------------------------------------------------------------------
// The source: one row per patch, in reading order
// ---------------------------------------------------------------------------------------------
// Source slots: mean colour r, g, b, then the patch centre x, y (as fractions of the image).
constexpr Index source_dim = 5;

Matrix patch_features(const example::Image& image) {
  Matrix features = Matrix::Zero(patches, source_dim);
  for (Index p = 0; p < patches; ++p) {
    const int row = int(p) / grid, col = int(p) % grid;
    for (int y = row * patch_size; y < (row + 1) * patch_size; ++y) {
      for (int x = col * patch_size; x < (col + 1) * patch_size; ++x) {
        const example::Rgb c = image.get(x, y);
        features(p, 0) += float(c.r) / 255;
        features(p, 1) += float(c.g) / 255;
        features(p, 2) += float(c.b) / 255;
      }
    }
    features.row(p).head(3) /= float(patch_size * patch_size);
    features(p, 3) = (float(col) + 0.5f) / grid;
    features(p, 4) = (float(row) + 0.5f) / grid;
  }
  return features;
}

// ---------------------------------------------------------------------------------------------
// The target and the cross-attention
// ---------------------------------------------------------------------------------------------
// Target slots: 0–2 the word (one-hot: red, green, blue); 3–7 what the cross-attention reads back
// (a colour and a position). The one head uses coordinates 0–2 for queries and keys (redness,
// greenness, blueness) and 3–7 for values, with an identity output projection.
constexpr Index model_dim = 8;
const char* const words[] = {"red", "green", "blue"};
constexpr Index word_count = 3;

// A word's logit for a patch is sharpness × the patch's contrast in the word's colour: for the
// red disc (contrast 0.67) that is 10.7, so e^10.7 ≈ 47 000 times the weight of a grey patch.
constexpr float sharpness = 16;

attn::CrossAttention<float> words_over_patches() {
  attn::MultiHeadConfig config{model_dim, /*num_heads*/ 1};
  config.source_dim = source_dim;
  config.bias = false;

  attn::MultiHeadWeights<float> w;
  // attn scales logits by 1/sqrt(head_dim); the gain undoes that.
  const float gain = sharpness * std::sqrt(float(model_dim));
  w.q_weight = Matrix::Zero(model_dim, model_dim);
  for (Index c = 0; c < 3; ++c)
    w.q_weight(c, c) = gain;  // the word for colour c asks for contrast in colour c
  // Keys: contrast of a patch's colour against grey, e.g. redness = r − (g + b)/2.
  w.k_weight = Matrix::Zero(model_dim, source_dim);
  for (Index c = 0; c < 3; ++c)
    for (Index other = 0; other < 3; ++other)
      w.k_weight(c, other) = c == other ? 1.0f : -0.5f;
  // Values: everything the patch has, its colour and its centre.
  w.v_weight = Matrix::Zero(model_dim, source_dim);
  w.v_weight.bottomRows(source_dim) = Matrix::Identity(source_dim, source_dim);
  w.out_weight = Matrix::Identity(model_dim, model_dim);
  return {config, w};
}

// ---------------------------------------------------------------------------------------------
// The picture of where each word looks
// ---------------------------------------------------------------------------------------------
constexpr int zoom = 2, margin = 8, bar = 6;

// The scene dimmed to grey, and over it the word's attention per patch (scaled so that its
// strongest patch is 1) in heatmap colours; the strongest patch outlined in white.
example::Image attention_panel(const example::Image& scene, const Matrix& weights, Index word) {
  const float strongest = weights.row(word).maxCoeff();
  example::Image panel(image_size, image_size);
  for (int y = 0; y < image_size; ++y) {
    for (int x = 0; x < image_size; ++x) {
      const example::Rgb c = scene.get(x, y);
      const auto grey = std::uint8_t((c.r + c.g + c.b) / 3 * 0.45);
      const double a = weights(word, (y / patch_size) * grid + x / patch_size) / strongest;
      panel.set(x, y, example::mix({grey, grey, grey}, example::heat(a), std::sqrt(a)));
    }
  }
  Index best = 0;
  weights.row(word).maxCoeff(&best);
  panel.outline_rect(int(best % grid) * patch_size, int(best / grid) * patch_size, patch_size,
                     patch_size, {255, 255, 255});
  return upscale(panel, zoom);
}

// The scene, then one panel per word with a bar of the word's colour beneath it.
example::Image overview(const example::Image& scene, const Matrix& weights) {
  const int side = image_size * zoom;
  example::Image out(margin + 4 * (side + margin), margin + side + margin / 2 + bar + 28,
                     {32, 32, 32});  // (the bottom 28 px hold the panels' names)
  out.paste(upscale(scene, zoom), margin, margin);
  const example::Rgb word_colours[] = {red, green, blue};
  for (Index word = 0; word < word_count; ++word) {
    const int x0 = margin + int(word + 1) * (side + margin);
    out.paste(attention_panel(scene, weights, word), x0, margin);
    out.fill_rect(x0, margin + side + margin / 2, side, bar, word_colours[word]);
  }
  return out;
}

}  // namespace

int main() {
  try {
    const example::Image scene = draw_scene();
    const Matrix source = patch_features(scene);                    // 144 patches × 5
    const Matrix target = Matrix::Identity(word_count, model_dim);  // "red", "green", "blue"

    Matrix weights;  // 3 words × 144 patches
    attn::AttentionExtras<float> extras;
    extras.weights = &weights;
    extras.average_heads = true;  // one head here, so this is just its weights
    const Matrix read = words_over_patches()(target, source, attn::Mask::none(), extras);  // 3 × 8

    std::printf(
        "attn caption: 3 words cross-attend over %d patches (%d x %d patches of %d x %d px)\n\n",
        int(patches), grid, grid, patch_size, patch_size);
    const Shape shapes[] = {Shape::Disc, Shape::Square, Shape::Triangle};
    const char* const shape_names[] = {"red disc", "green square", "blue triangle"};
    bool ok = true;
    for (Index word = 0; word < word_count; ++word) {
      Index best = 0;
      const float top = weights.row(word).maxCoeff(&best);
      double on_shape = 0;
      for (Index p = 0; p < patches; ++p)
        if (coverage(p, shapes[word]) > 0.5) on_shape += weights(word, p);
      const bool found = coverage(best, shapes[word]) > 0.5 && on_shape > 0.9;
      ok = ok && found;
      std::printf("%-5s  looks most at patch (row %2d, col %2d), weight %.3f: %s the %s\n",
                  words[word], int(best / grid), int(best % grid), double(top),
                  found ? "on" : "NOT on", shape_names[word]);
      std::printf("       attention on the %s: %.1f%%\n", shape_names[word], 100 * on_shape);
      std::printf("       reads colour (%.2f, %.2f, %.2f) at (x %.1f, y %.1f) px\n",
                  double(read(word, 3)), double(read(word, 4)), double(read(word, 5)),
                  double(read(word, 6)) * image_size, double(read(word, 7)) * image_size);
    }

    const char* path = "caption_attention.png";
    const example::Image picture = overview(scene, weights);
    // Each panel named beneath its bar: the picture, then the word whose attention it shows.
    std::vector<example::Text> names;
    const int side = image_size * zoom, label_y = margin + side + margin / 2 + bar + 18;
    for (Index panel = 0; panel <= word_count; ++panel) {
      const std::string name = panel == 0 ? std::string("patches: keys, values")
                                          : "query \"" + std::string(words[panel - 1]) + "\"";
      names.push_back({double(margin + int(panel) * (side + margin) + side / 2),
                       double(label_y),
                       name,
                       12,
                       example::Text::Anchor::middle,
                       false,
                       {230, 230, 230}});
    }
    if (example::write_png(path, picture, names))
      std::printf("\nwrote %s: the picture, then where red, green and blue look\n", path);
    if (!ok) {
      std::printf("FAILED: a word did not find its shape\n");
      return 1;
    }
    std::printf("ok: every word found its shape\n");
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "caption: %s\n", e.what());
    return 1;
  }
}
