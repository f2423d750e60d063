// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors
#pragma once

/// \file detail/tile_mask.hpp
/// A Mask resolved for one (n, m) problem and one precision: answers, per tile of the score
/// matrix, which keys are visible, so the kernel skips hidden tiles and only masks the cut ones.

#include <algorithm>
#include <limits>

#include "../mask.hpp"
#include "float_bits.hpp"

namespace attn::detail {

template <typename Scalar>
class TileMask {
 public:
  /// Resolves `mask` for n queries and m keys. A bias of the other precision is converted here,
  /// once per call; matrices of the right precision are read in place.
  TileMask(const Mask& mask, Index n, Index m)
      : m_keys(m),
        m_visible_keys(mask.has_key_length() ? std::min(mask.visible_keys(), m) : m),
        m_position_offset(m - n),
        m_left(clamp_reach(mask.left(), n, m)),
        m_right(clamp_reach(mask.right(), n, m)) {
    if (mask.has_keep()) {
      m_keep = mask.keep_matrix().data();
      m_keep_stride = mask.keep_matrix().cols();
    }
    if (mask.has_bias()) {
      const Matrix<Scalar>* bias = mask.template bias_matrix<Scalar>();
      if (bias == nullptr) {
        m_converted_bias = mask.template bias_as<Scalar>();
        bias = &m_converted_bias;
      }
      m_bias = bias->data();
      m_bias_stride = bias->cols();
    }
  }
  TileMask(const TileMask&) = delete;
  TileMask& operator=(const TileMask&) = delete;

  /// First key that query i may see under the window (keys before it are hidden).
  Index key_begin(Index i) const {
    if (m_left == Mask::unbounded) return 0;
    return std::clamp<Index>(i + m_position_offset - m_left, 0, m_keys);
  }
  /// One past the last key that query i may see under the window and the key length.
  Index key_end(Index i) const {
    if (m_right == Mask::unbounded) return m_visible_keys;
    return std::clamp<Index>(i + m_position_offset + m_right + 1, 0, m_visible_keys);
  }

  /// True if the window and the key length let every query of [i0, i1) see every key of [j0, j1)
  /// (i1 > i0).
  bool window_covers(Index i0, Index i1, Index j0, Index j1) const {
    return key_begin(i1 - 1) <= j0 && key_end(i0) >= j1;
  }

  /// True if explicit matrices must be applied element by element.
  bool has_explicit() const { return m_keep != nullptr || m_bias != nullptr; }

  /// Applies the mask to the tile s (rows: queries i0.., columns: keys j0..): adds the bias, and
  /// sets hidden logits to −∞. `window_cut` says whether the window (or the key length) cuts
  /// through this tile.
  template <typename Tile>
  void apply(Tile& s, Index i0, Index j0, bool window_cut) const {
    const Scalar hidden = -std::numeric_limits<Scalar>::infinity();
    const Index rows = s.rows();
    const Index cols = s.cols();
    if (m_bias != nullptr) {
      // −∞ hides the key even when its logit is NaN (NaN + −∞ would be NaN), as keep = false does.
      for (Index r = 0; r < rows; ++r) {
        const Scalar* bias_row = m_bias + (i0 + r) * m_bias_stride + j0;
        for (Index c = 0; c < cols; ++c)
          s(r, c) = is_minus_infinity(bias_row[c]) ? hidden : s(r, c) + bias_row[c];
      }
    }
    if (m_keep != nullptr) {
      for (Index r = 0; r < rows; ++r) {
        const bool* keep_row = m_keep + (i0 + r) * m_keep_stride + j0;
        for (Index c = 0; c < cols; ++c) {
          if (!keep_row[c]) s(r, c) = hidden;
        }
      }
    }
    if (window_cut) {
      for (Index r = 0; r < rows; ++r) {
        const Index begin = std::clamp<Index>(key_begin(i0 + r) - j0, 0, cols);
        const Index end = std::clamp<Index>(key_end(i0 + r) - j0, begin, cols);
        for (Index c = 0; c < begin; ++c)
          s(r, c) = hidden;
        for (Index c = end; c < cols; ++c)
          s(r, c) = hidden;
      }
    }
  }

 private:
  // A reach beyond n + m changes nothing; clamping it keeps i + offset ± reach from overflowing.
  static Index clamp_reach(Index reach, Index n, Index m) {
    return reach == Mask::unbounded ? reach : std::min(reach, n + m);
  }

  Index m_keys;
  Index m_visible_keys;     // m, or the key length
  Index m_position_offset;  // p(i) = i + m − n: bottom-right alignment
  Index m_left;
  Index m_right;
  const bool* m_keep = nullptr;
  Index m_keep_stride = 0;
  const Scalar* m_bias = nullptr;
  Index m_bias_stride = 0;
  Matrix<Scalar> m_converted_bias;
};

}  // namespace attn::detail
