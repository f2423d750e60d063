// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors
#pragma once

/// \file rotary.hpp
/// attn::Rotary: rotary position embeddings (RoPE; Su et al., "RoFormer", 2021), applied in place
/// to projected queries and keys before attention.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <vector>

#include "error.hpp"
#include "types.hpp"

namespace attn {

/// Which two features of a head form a pair that rotates together. Both layouts rotate pair i by
/// the angle p·θ_i; they differ only in where the pair's features sit, so a checkpoint must be
/// run with the layout it was trained with. (Hugging Face's LLaMA conversion script permutes the
/// rows of Meta's Wq and Wk so that half_split on its projections equals interleaved on Meta's.)
enum class RotaryLayout {
  /// Pairs (i, i + r/2) for i < r/2, r the rotary dim: Hugging Face's rotate_half (LLaMA, Mistral,
  /// Qwen, GPT-NeoX, Phi in transformers).
  half_split,
  /// Pairs (2i, 2i + 1): GPT-J's rotate_every_two, and Meta's original LLaMA, which views each
  /// pair as a complex number and multiplies it by e^{i·p·θ_i}.
  interleaved
};

/// Stretching the positions a model was trained on over a longer context.
///
/// Example (examples/reference_layers.cpp, compiled and run as a test):
/// \snippet reference_layers.cpp rotary
struct RotaryScaling {
  /// How positions are stretched.
  enum class Kind {
    /// Angles p·θ_i; factor must be 1.
    none,
    /// Position interpolation (Chen et al., 2023; Hugging Face's rope_type "linear"): positions
    /// are divided by factor, i.e. angles (p / factor)·θ_i.
    linear,
    /// Static NTK-aware scaling (bloc97, 2023): the base becomes
    /// base·factor^(r/(r − 2)), r the rotary dim, so the lowest frequency is stretched by factor
    /// while the highest (θ_0 = 1) is kept. Hugging Face's "dynamic" variant recomputes this base
    /// from each call's sequence length; this one is fixed at construction.
    ntk
  };
  /// The method; none by default.
  Kind kind = Kind::none;
  /// The stretch: finite, > 0, and 1 when kind is none.
  double factor = 1;

  /// Position interpolation by `factor` (see Kind::linear).
  static RotaryScaling linear(double factor) { return {Kind::linear, factor}; }
  /// Static NTK-aware scaling by `factor` (see Kind::ntk).
  static RotaryScaling ntk(double factor) { return {Kind::ntk, factor}; }
};

/// Shape and frequencies of a rotary embedding.
///
/// Example (examples/reference_layers.cpp, compiled and run as a test):
/// \snippet reference_layers.cpp rotary
struct RotaryConfig {
  /// d: features per head; must be >= 1.
  Index head_dim = 0;
  /// r: the first r features of each head rotate, the other d − r pass through unchanged
  /// ("partial rotary", as GPT-NeoX's rotary_pct and Phi's partial_rotary_factor). 0 means
  /// head_dim. Must be even and at most head_dim.
  Index rotary_dim = 0;
  /// The frequencies are θ_i = base^(−2i/r), i < r/2. Must be finite and > 0.
  double base = 10000;
  /// Which pairs of a row rotate together (see RotaryLayout).
  RotaryLayout layout = RotaryLayout::half_split;
  /// Context stretching; none by default.
  RotaryScaling scaling{};

  /// r with 0 resolved: the number of features of a head that rotate.
  Index rotated_dim() const { return rotary_dim == 0 ? head_dim : rotary_dim; }

  /// \throws ShapeError naming `who` and the offending value if head_dim < 1; rotary_dim is
  ///         negative, odd (after 0 is resolved to head_dim) or above head_dim; base is not finite
  ///         and positive; scaling.factor is not finite and positive, or is not 1 with
  ///         Kind::none; Kind::ntk has rotary_dim 2 (its exponent r/(r − 2) needs r > 2) or the
  ///         scaled base overflows.
  void validate(const char* who) const {
    if (head_dim < 1) detail::throw_shape_error(who, ": head_dim is ", head_dim, ", expected >= 1");
    if (rotary_dim < 0 || rotary_dim > head_dim) {
      detail::throw_shape_error(who, ": rotary_dim is ", rotary_dim,
                                ", expected 0 (all of head_dim) or 1 to head_dim ", head_dim);
    }
    if (rotated_dim() % 2 != 0) {
      detail::throw_shape_error(who, ": rotary_dim is ", rotated_dim(),
                                rotary_dim == 0 ? " (head_dim)" : "",
                                ", expected an even number (features rotate in pairs)");
    }
    if (!(std::isfinite(base) && base > 0))
      detail::throw_shape_error(who, ": base is ", base, ", expected finite and > 0");
    const double factor = scaling.factor;
    if (!(std::isfinite(factor) && factor > 0)) {
      detail::throw_shape_error(who, ": scaling.factor is ", factor, ", expected finite and > 0");
    }
    if (scaling.kind == RotaryScaling::Kind::none && factor != 1) {
      detail::throw_shape_error(who, ": scaling.factor is ", factor,
                                " with scaling.kind none, expected 1 (or a kind that uses it)");
    }
    if (scaling.kind == RotaryScaling::Kind::ntk) {
      if (rotated_dim() <= 2) {
        detail::throw_shape_error(who, ": rotary_dim is ", rotated_dim(),
                                  ", expected > 2 for ntk scaling (exponent r/(r - 2))");
      }
      if (!std::isfinite(ntk_base())) {
        detail::throw_shape_error(who, ": ntk scaling of base ", base, " by factor ", factor,
                                  " overflows, expected a finite base*factor^(r/(r - 2))");
      }
    }
  }

  /// The base the frequencies use: base, or for Kind::ntk base·factor^(r/(r − 2)) (meaningful
  /// for a config that validates).
  double scaled_base() const {
    return scaling.kind == RotaryScaling::Kind::ntk ? ntk_base() : base;
  }

 private:
  double ntk_base() const {
    const double r = static_cast<double>(rotated_dim());
    return base * std::pow(scaling.factor, r / (r - 2));
  }
};

/// Rotary position embeddings: rotates each pair of features (x_a, x_b) of every head of a row at
/// position p by the angle p·θ_i,
/// \f$(x_a, x_b) \mapsto (x_a\cos p\theta_i - x_b\sin p\theta_i,\ x_b\cos p\theta_i + x_a\sin p\theta_i)\f$,
/// \f$\theta_i = \mathrm{base}^{-2i/r}\f$, i < r/2 (with the scaling folded into θ or the base),
/// so that the logit q·k of a query at p and a key at p' depends on p − p' only. The pairs are
/// set by the layout; features r to d of a head pass through untouched.
///
/// Applied to the projected queries and keys (never the values), before attention and before the
/// keys enter a cache. Positions may have any sign, and rotations compose: rotating a row to
/// position p and then to δ equals rotating it to p + δ, up to rounding. So apply(x, p) then
/// shift(x, δ) equals apply(x, p + δ), and for a single row apply(x, p) then apply(x, δ) does too.
/// (For several rows, apply(x, δ) moves row i by δ + i, not δ: it is shift that moves every row by
/// the same amount.) That is how a cache re-positions its keys: StreamingLLM, after evicting the
/// middle of a sequence, rotates the keys after the gap back by the number of positions evicted,
/// shift(keys, −evicted), so that positions stay contiguous.
///
/// Accuracy: each angle p·θ_i is computed in double and its cos and sin in double, then rounded to
/// the Scalar the rotation runs in; in float each output of a pair is off the exact rotation by a
/// few units of float's rounding times |x_a| + |x_b|. The angle itself carries a relative error of
/// about 2^−53, i.e. an absolute error of ~|p|·1e−16 (1e−10 at p = 10^6). (Hugging Face computes
/// θ and p·θ in float32, which is less accurate: its results differ from these by its own
/// rounding.)
///
/// Immutable after construction: one instance may be used from many threads at once. apply and
/// shift never allocate: cos and sin are computed into a buffer on the stack, once per row and
/// reused across the row's heads (and, for rotary dims up to 128, across consecutive rows at the
/// same position, so shift computes them once).
///
/// Example (examples/reference_layers.cpp, compiled and run as a test):
/// \snippet reference_layers.cpp rotary
class Rotary {
 public:
  /// \param config head_dim, rotary_dim, base, layout, scaling; copied.
  /// \throws ShapeError if the config is invalid (see RotaryConfig::validate).
  explicit Rotary(const RotaryConfig& config) : m_config(checked(config)) {
    // θ_i = 1 / base^(2i/r), as Hugging Face writes it, in double; linear scaling divides every
    // angle by the factor, so it is folded into θ here rather than applied per position.
    const Index pairs = m_config.rotary_dim / 2;
    const double r = static_cast<double>(m_config.rotary_dim);
    const double base = m_config.scaled_base();
    const double stretch =
        m_config.scaling.kind == RotaryScaling::Kind::linear ? m_config.scaling.factor : 1.0;
    m_inverse_frequencies.resize(static_cast<std::size_t>(pairs));
    for (Index i = 0; i < pairs; ++i) {
      m_inverse_frequencies[static_cast<std::size_t>(i)] =
          1.0 / std::pow(base, static_cast<double>(2 * i) / r) / stretch;
    }
  }

  /// The config, with rotary_dim resolved (never 0).
  const RotaryConfig& config() const { return m_config; }
  /// d: features per head.
  Index head_dim() const { return m_config.head_dim; }
  /// r: features per head that rotate, the first r.
  Index rotary_dim() const { return m_config.rotary_dim; }
  /// θ_i for i < r/2, scaling included: pair i of a row at position p rotates by exactly
  /// double(p)·inverse_frequencies()[i].
  const std::vector<double>& inverse_frequencies() const { return m_inverse_frequencies; }

  /// Rotates, in place, every head of every row of x, row i at position first_position + i.
  /// \param x In/out: (n, heads·head_dim), heads as column blocks; row-major storage with unit
  ///          inner stride (a matrix, a Map, or a block of rows or columns of one, such as the Q
  ///          or K block of a fused projection). Values are not checked: a non-finite feature
  ///          makes its pair non-finite, except at position 0.
  /// \param first_position position of row 0; any sign (negative rotates backwards).
  /// Position 0 is the identity, bit for bit.
  /// \throws ShapeError if x.cols() is not a multiple of head_dim; x is then untouched.
  void apply(MatrixRef<float> x, Index first_position) const {
    rotate("Rotary::apply", x, ConsecutivePositions{first_position});
  }
  /// As apply(MatrixRef<float>, Index), for double.
  void apply(MatrixRef<double> x, Index first_position) const {
    rotate("Rotary::apply", x, ConsecutivePositions{first_position});
  }

  /// Rotates, in place, every head of row i of x to positions[i] (any sign).
  /// A braced list of one position, apply(x, {p}), calls apply(x, first_position = p) instead,
  /// which is the same for one row but is not checked against x.rows().
  /// \throws ShapeError if positions.size() ≠ x.rows() or x.cols() is not a multiple of head_dim;
  ///         x is then untouched.
  void apply(MatrixRef<float> x, const std::vector<Index>& positions) const {
    apply(x, positions.data(), static_cast<Index>(positions.size()));
  }
  /// As apply(MatrixRef<float>, const std::vector<Index>&), for double.
  void apply(MatrixRef<double> x, const std::vector<Index>& positions) const {
    apply(x, positions.data(), static_cast<Index>(positions.size()));
  }

  /// Rotates, in place, row i of x to positions[i], for `count` positions.
  /// \throws ShapeError if count ≠ x.rows(), positions is null while count > 0, or x.cols() is not
  ///         a multiple of head_dim; x is then untouched.
  void apply(MatrixRef<float> x, const Index* positions, Index count) const {
    check_positions(x.rows(), positions, count);
    rotate("Rotary::apply", x, ListedPositions{positions});
  }
  /// As apply(MatrixRef<float>, const Index*, Index), for double.
  void apply(MatrixRef<double> x, const Index* positions, Index count) const {
    check_positions(x.rows(), positions, count);
    rotate("Rotary::apply", x, ListedPositions{positions});
  }

  /// Moves every row of x, in place, by the same `delta` positions (any sign): rows rotated to
  /// positions p_i before are at p_i + delta after, up to rounding. This is apply with every row
  /// at position delta, and computes cos and sin once for all rows when rotary_dim ≤ 128.
  /// \param x In/out: as for apply.
  /// \throws ShapeError if x.cols() is not a multiple of head_dim; x is then untouched.
  void shift(MatrixRef<float> x, Index delta) const {
    rotate("Rotary::shift", x, SamePosition{delta});
  }
  /// As shift(MatrixRef<float>, Index), for double.
  void shift(MatrixRef<double> x, Index delta) const {
    rotate("Rotary::shift", x, SamePosition{delta});
  }

 private:
  static constexpr const char* who = "Rotary";
  // Pairs whose cos and sin one pass computes; a rotary dim of up to 128 (LLaMA's head) is one
  // pass, and the buffers, 2·64 Scalars, fit on any stack.
  static constexpr Index chunk = 64;

  struct ConsecutivePositions {
    Index first;
    Index operator()(Index row) const { return first + row; }
  };
  struct SamePosition {
    Index position;
    Index operator()(Index) const { return position; }
  };
  struct ListedPositions {
    const Index* positions;
    Index operator()(Index row) const { return positions[row]; }
  };

  static RotaryConfig checked(RotaryConfig config) {
    config.validate(who);
    config.rotary_dim = config.rotated_dim();
    return config;
  }

  static void check_positions(Index rows, const Index* positions, Index count) {
    if (count != rows) {
      detail::throw_shape_error(who, "::apply: positions has ", count,
                                " entries, expected one per row of x (", rows, ")");
    }
    if (positions == nullptr && count > 0)
      detail::throw_shape_error(who, "::apply: positions is null, expected ", count, " positions");
  }

  template <typename Scalar, typename PositionOf>
  void rotate(const char* function, MatrixRef<Scalar>& x, const PositionOf& position_of) const {
    // x: (n, heads·d) -> (n, heads·d) in place; row i at position_of(i).
    const Index d = m_config.head_dim;
    if (x.cols() % d != 0) {
      detail::throw_shape_error(function, ": x.cols() is ", x.cols(),
                                ", expected a multiple of head_dim ", d);
    }
    const Index heads = x.cols() / d;
    const Index pairs = m_config.rotary_dim / 2;
    const bool interleaved = m_config.layout == RotaryLayout::interleaved;
    Scalar cos_buffer[chunk];
    Scalar sin_buffer[chunk];
    // With every pair in one chunk, the buffers still hold the previous row's cos and sin when
    // the position repeats (shift, packed sequences, a tree's siblings).
    const bool one_chunk = pairs <= chunk;
    bool buffered = false;
    Index buffered_position = 0;
    for (Index row = 0; row < x.rows() && heads > 0; ++row) {
      const Index position = position_of(row);
      // cos 0 = 1 and sin 0 = 0 would give back x, but for the sign of a zero and for infinities.
      if (position == 0) continue;
      const double p = static_cast<double>(position);
      Scalar* const features = x.data() + row * x.outerStride();
      for (Index first = 0; first < pairs; first += chunk) {
        const Index count = std::min(chunk, pairs - first);
        // 1. cos and sin of this chunk's angles, in double, rounded once to Scalar.
        if (!(one_chunk && buffered && buffered_position == position)) {
          for (Index i = 0; i < count; ++i) {
            const double angle = p * m_inverse_frequencies[static_cast<std::size_t>(first + i)];
            cos_buffer[i] = static_cast<Scalar>(std::cos(angle));
            sin_buffer[i] = static_cast<Scalar>(std::sin(angle));
          }
          buffered = true;
          buffered_position = position;
        }
        // 2. The chunk's pairs of every head: (a, b) -> (a·cos − b·sin, b·cos + a·sin).
        for (Index h = 0; h < heads; ++h) {
          Scalar* const head = features + h * d;
          if (interleaved) {
            rotate_pairs<2>(head + 2 * first, head + 2 * first + 1, count, cos_buffer, sin_buffer);
          } else {
            rotate_pairs<1>(head + first, head + pairs + first, count, cos_buffer, sin_buffer);
          }
        }
      }
    }
  }

  // Pair i is (a[i·stride], b[i·stride]); a stride known at compile time lets the loop vectorise.
  template <Index stride, typename Scalar>
  static void rotate_pairs(Scalar* a, Scalar* b, Index count, const Scalar* c, const Scalar* s) {
    for (Index i = 0; i < count; ++i) {
      const Scalar x = a[i * stride];
      const Scalar y = b[i * stride];
      a[i * stride] = x * c[i] - y * s[i];
      b[i * stride] = y * c[i] + x * s[i];
    }
  }

  RotaryConfig m_config;
  std::vector<double> m_inverse_frequencies;  // θ_i, i < rotary_dim / 2
};

}  // namespace attn
