// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors
#pragma once

/// \file detail/tile_mask.hpp
/// A ScoreMask resolved for one (n, m) problem and one precision: answers, per block of the score
/// matrix, whether it is hidden, cut or wholly visible, so the kernel never reads hidden blocks
/// and masks only the cut ones; and applies the score function and the masks to a tile.

#include <algorithm>
#include <limits>
#include <type_traits>
#include <utility>

#include "../mask.hpp"
#include "../score_mask.hpp"
#include "float_bits.hpp"
#include "score_mask_bind.hpp"

namespace attn::detail {

/// The structured part of a Mask (window and key length) as a rule on positions: the same
/// mechanism as a ScoreMask's block predicate, answered from two numbers per query.
struct WindowRule {
  Index left = Mask::unbounded;
  Index right = Mask::unbounded;
  Index visible_keys;  // m, or the key length

  /// Keys [begin, end) visible from every position of [q0, q1) together (q1 > q0).
  KeyRange key_range(Index q0, Index q1) const {
    const Index begin = left == Mask::unbounded ? Index(0) : q0 - left;
    const Index end = right == Mask::unbounded ? visible_keys : q1 - 1 + right + 1;
    return {std::max<Index>(begin, 0), std::min(end, visible_keys)};
  }
  /// First and one-past-last key position p sees.
  Index first_key(Index p) const { return left == Mask::unbounded ? Index(0) : p - left; }
  Index end_key(Index p) const {
    return right == Mask::unbounded ? visible_keys : std::min(p + right + 1, visible_keys);
  }
  /// Positions [begin, end) that see key k.
  std::pair<Index, Index> query_range(Index k) const {
    if (k >= visible_keys) return {0, 0};
    const Index begin =
        right == Mask::unbounded ? std::numeric_limits<Index>::min() / 4 : k - right;
    const Index end =
        left == Mask::unbounded ? std::numeric_limits<Index>::max() / 4 : k + left + 1;
    return {begin, end};
  }
  /// True if every position of [q0, q1) sees every key of [k0, k1).
  bool covers(Index q0, Index q1, Index k0, Index k1) const {
    return first_key(q1 - 1) <= k0 && end_key(q0) >= k1;
  }
};

/// How a block of queries × keys is seen under the base mask and under the functions.
struct BlockClass {
  Visibility base = Visibility::all;
  Visibility rule = Visibility::all;
  Visibility combined() const { return both(base, rule); }
};

template <typename Scalar, typename SM = ScoreMask<>>
class TileMask {
  using Bound = BoundScoreMask<Scalar, SM>;

 public:
  static constexpr bool has_score = SM::has_score;
  static constexpr bool has_mask_function = SM::has_mask_function;
  /// Whether the score function's derivative is 1 (none, or additive), and whether the backward
  /// pass can differentiate it at all.
  static constexpr bool score_additive = Bound::score_additive;
  static constexpr bool score_differentiable = Bound::score_differentiable;

  /// Resolves `mask` for n queries and m keys of `heads` query heads, query row i at position
  /// first_query + i and key row j at first_key + j (bottom-right alignment: m − n and 0), head h
  /// as first_head + h to the functions (0 unless the heads are a part of a larger problem). A bias
  /// of the other precision is converted here, once per call; matrices of the right precision
  /// are read in place. Precondition: check_score_mask passed for this shape.
  TileMask(const SM& mask, Index n, Index m, Index heads, Index first_query, Index first_key,
           Index first_head)
      : m_keys(m),
        m_first_head(first_head),
        m_position_offset(first_query - first_key),
        m_first_key(first_key),
        m_window{clamp_reach(mask.base().left(), n, m, first_query - first_key),
                 clamp_reach(mask.base().right(), n, m, first_query - first_key),
                 mask.base().has_key_length()
                     ? std::clamp<Index>(mask.base().visible_keys() - first_key, 0, m)
                     : m},
        m_rule(mask, n, m, heads) {
    const Mask& base = mask.base();
    if (base.has_keep()) {
      m_keep = base.keep_matrix().data();
      m_keep_stride = base.keep_matrix().cols();
    }
    if (base.has_bias()) {
      const Matrix<Scalar>* bias = base.template bias_matrix<Scalar>();
      if (bias == nullptr) {
        m_converted_bias = base.template bias_as<Scalar>();
        bias = &m_converted_bias;
      }
      m_bias = bias->data();
      m_bias_stride = bias->cols();
    }
  }
  TileMask(const TileMask&) = delete;
  TileMask& operator=(const TileMask&) = delete;

  /// Keys [begin, end) that query rows [i0, i1) of head h may see at most (begin ≤ end).
  std::pair<Index, Index> key_range(Index h, Index i0, Index i1) const {
    const Index q0 = i0 + m_position_offset, q1 = i1 + m_position_offset;
    KeyRange range = m_window.key_range(q0, q1);
    if constexpr (Bound::has_blocks) {
      const KeyRange rule = m_rule.key_range(h + m_first_head, q0 + m_first_key, q1 + m_first_key);
      range = intersect(range, {rule.begin - m_first_key, rule.end - m_first_key});
    }
    const Index begin = std::clamp<Index>(range.begin, 0, m_keys);
    return {begin, std::clamp<Index>(range.end, begin, m_keys)};
  }

  /// Whether query rows [i0, i1) of head h see none, some or all of keys [j0, j1): under the
  /// base mask and under the functions, apart (each masks only the blocks it cuts).
  BlockClass classify(Index h, Index i0, Index i1, Index j0, Index j1) const {
    const Index q0 = i0 + m_position_offset, q1 = i1 + m_position_offset;
    BlockClass c;
    c.base =
        m_window.covers(q0, q1, j0, j1) && !has_explicit() ? Visibility::all : Visibility::partial;
    if (m_window.key_range(q0, q1).end <= j0) c.base = Visibility::none;
    if constexpr (Bound::has_blocks) {
      c.rule = m_rule.classify(h + m_first_head, q0 + m_first_key, q1 + m_first_key,
                               j0 + m_first_key, j1 + m_first_key);
    }
    return c;
  }

  /// True if explicit matrices must be applied element by element.
  bool has_explicit() const { return m_keep != nullptr || m_bias != nullptr; }

  /// Applies the score function and the masks that cut this block (`block`, from classify) to
  /// the tile of logits s of head h, queries from row i0 and keys from j0: element (r, c) at
  /// s[r·query_stride + c·key_stride], one of the strides 1. Hidden logits become −∞. Returns
  /// whether any logit may have become −∞ (then the softmax's max must be found again, and the
  /// values of hidden keys must not reach the output through a zero weight).
  bool apply(Scalar* s, Index query_stride, Index key_stride, Index rows, Index cols, Index h,
             Index i0, Index j0, const BlockClass& block) const {
    const Scalar hidden = -std::numeric_limits<Scalar>::infinity();
    const Index q0 = i0 + m_position_offset;
    bool masked = false;
    if constexpr (has_score) {
      masked = apply_score(s, query_stride, key_stride, rows, cols, h + m_first_head,
                           q0 + m_first_key, j0 + m_first_key);
    }
    if constexpr (has_mask_function) {
      if (block.rule != Visibility::all) {
        const Index q = q0 + m_first_key, k = j0 + m_first_key;  // the functions' positions
        for_each(s, query_stride, key_stride, rows, cols, [&](Scalar& x, Index r, Index c) {
          if (!m_rule.visible(h + m_first_head, q + r, k + c)) x = hidden;
        });
        masked = true;
      }
    }
    if (block.base == Visibility::all) return masked;
    if (m_bias != nullptr) {
      // −∞ (of the bias, or of the score function) hides the key even when the other is NaN
      // (NaN + −∞ would be NaN), as keep = false does.
      for_each(s, query_stride, key_stride, rows, cols, [&](Scalar& x, Index r, Index c) {
        const Scalar b = m_bias[(i0 + r) * m_bias_stride + j0 + c];
        x = is_minus_infinity(b) || is_minus_infinity(x) ? hidden : x + b;
      });
    }
    if (m_keep != nullptr) {
      for_each(s, query_stride, key_stride, rows, cols, [&](Scalar& x, Index r, Index c) {
        if (!m_keep[(i0 + r) * m_keep_stride + j0 + c]) x = hidden;
      });
    }
    if (!m_window.covers(q0, q0 + rows, j0, j0 + cols)) {
      if (query_stride == 1) {
        // Per key, the queries that see it are one range: contiguous stores around it.
        for (Index c = 0; c < cols; ++c) {
          const auto [first, end] = m_window.query_range(j0 + c);
          const Index begin = std::clamp<Index>(first - q0, 0, rows);
          const Index stop = std::clamp<Index>(end - q0, begin, rows);
          Scalar* column = s + c * key_stride;
          std::fill(column, column + begin, hidden);
          std::fill(column + stop, column + rows, hidden);
        }
      } else {
        for (Index r = 0; r < rows; ++r) {
          const Index begin = std::clamp<Index>(m_window.first_key(q0 + r) - j0, 0, cols);
          const Index end = std::clamp<Index>(m_window.end_key(q0 + r) - j0, begin, cols);
          Scalar* row = s + r * query_stride;
          std::fill(row, row + begin, hidden);
          std::fill(row + end, row + cols, hidden);
        }
      }
    }
    return true;
  }

  /// The backward pass's chain factor: out(r, c) = ∂score/∂s at the logit s(r, c) of head h,
  /// query row i0 + r and key row j0 + c (row-major tiles, row strides s_stride and out_stride).
  /// Precondition: score_differentiable.
  void score_derivatives(const Scalar* s, Index s_stride, Scalar* out, Index out_stride, Index rows,
                         Index cols, Index h, Index i0, Index j0) const {
    const Index q0 = i0 + m_position_offset + m_first_key, k0 = j0 + m_first_key;
    for (Index r = 0; r < rows; ++r) {
      for (Index c = 0; c < cols; ++c) {
        out[r * out_stride + c] =
            m_rule.score_derivative(s[r * s_stride + c], h + m_first_head, q0 + r, k0 + c);
      }
    }
  }

 private:
  /// The score function over the tile (positions from q0 and k0), the unit stride innermost, so
  /// that simple functions vectorise: positions advance in a 32-bit counter (a function that
  /// works in int32, as the built-ins do, then needs no 64-bit lanes), and whether a result is −∞
  /// is kept over its bits in one flag per line of the unit stride (a float min would be a
  /// reduction, which does not vectorise, and -ffinite-math-only may fold x == −∞). Returns
  /// whether a result is −∞.
  bool apply_score(Scalar* s, Index query_stride, Index key_stride, Index rows, Index cols, Index h,
                   Index q0, Index k0) const {
    using Bits = FloatBits<Scalar>;
    using Unsigned = typename Bits::Unsigned;
    constexpr Unsigned minus_infinity = Bits::sign | Bits::exponent;
    constexpr int chunk = 64;
    const bool by_keys = query_stride == 1;
    const Index lines = by_keys ? cols : rows, length = by_keys ? rows : cols;
    const Index line_stride = by_keys ? key_stride : query_stride;
    Unsigned any_hidden = 0;
    for (Index first = 0; first < length; first += chunk) {
      const int count = int(std::min<Index>(chunk, length - first));
      Unsigned hidden[chunk] = {};
      for (Index line = 0; line < lines; ++line) {
        Scalar* x = s + line * line_stride + first;
        if (by_keys) {
          const Index k = k0 + line, q = q0 + first;
          for (int r = 0; r < count; ++r) {
            x[r] = m_rule.score(x[r], h, q + r, k);
            hidden[r] |= Bits::of(x[r]) == minus_infinity;
          }
        } else {
          const Index q = q0 + line, k = k0 + first;
          for (int c = 0; c < count; ++c) {
            x[c] = m_rule.score(x[c], h, q, k + c);
            hidden[c] |= Bits::of(x[c]) == minus_infinity;
          }
        }
      }
      for (int i = 0; i < count; ++i)
        any_hidden |= hidden[i];
    }
    return any_hidden != 0;
  }

  /// fn(element, r, c) over the tile, the unit stride innermost (so simple functions vectorise).
  template <typename Fn>
  static EIGEN_ALWAYS_INLINE void for_each(Scalar* s, Index query_stride, Index key_stride,
                                           Index rows, Index cols, const Fn& fn) {
    if (query_stride == 1) {
      for (Index c = 0; c < cols; ++c) {
        Scalar* column = s + c * key_stride;
        for (Index r = 0; r < rows; ++r)
          fn(column[r], r, c);
      }
    } else {
      for (Index r = 0; r < rows; ++r) {
        Scalar* row = s + r * query_stride;
        for (Index c = 0; c < cols; ++c)
          fn(row[c], r, c);
      }
    }
  }

  // A reach beyond every distance between this call's queries and keys changes nothing; clamping
  // it keeps i + offset ± reach from overflowing.
  static Index clamp_reach(Index reach, Index n, Index m, Index offset) {
    const Index span = n + m + (offset < 0 ? -offset : offset);
    return reach == Mask::unbounded ? reach : std::min(reach, span);
  }

  Index m_keys;
  Index m_first_head;       // what the functions add to head indices
  Index m_position_offset;  // a query row's position in key rows: i + first_query − first_key
  Index m_first_key;        // the position of key row 0, what the functions add to key rows
  WindowRule m_window;
  Bound m_rule;
  const bool* m_keep = nullptr;
  Index m_keep_stride = 0;
  const Scalar* m_bias = nullptr;
  Index m_bias_stride = 0;
  Matrix<Scalar> m_converted_bias;
};

}  // namespace attn::detail
