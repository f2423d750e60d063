// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors
#pragma once

/// \file builtin_masks.hpp
/// The score and mask functions models keep asking for, each a ScoreMask made with the same
/// hooks a user has (see score_mask.hpp), with a block predicate so that hidden blocks are
/// never read: ALiBi, T5's bucketed relative bias, a per-head bias, documents, prefix-LM, trees
/// for speculative decoding, attention sinks with a sliding window.
///
/// Positions are absolute and bottom-right aligned (see ScoreMask): query row i of n stands at
/// i + m − n, key row j at j.
///
/// Example (examples/reference_kernel.cpp, compiled and run as a test):
/// \snippet reference_kernel.cpp builtin_masks

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <type_traits>
#include <utility>
#include <vector>

#include "detail/float_bits.hpp"
#include "detail/packed_sequences.hpp"
#include "detail/score_mask_parts.hpp"
#include "error.hpp"
#include "score_mask.hpp"
#include "types.hpp"

namespace attn {

/// T5's bucket of a relative position k − q (as Hugging Face's
/// T5Attention._relative_position_bucket computes it, in float): half the buckets for each
/// direction if bidirectional; exact buckets for distances below half of them, logarithmic
/// buckets up to max_distance, the last bucket beyond.
inline Index relative_position_bucket(Index relative_position, bool bidirectional,
                                      Index num_buckets, Index max_distance) {
  Index bucket = 0;
  if (bidirectional) {
    num_buckets /= 2;
    if (relative_position > 0) bucket += num_buckets;
    relative_position = relative_position < 0 ? -relative_position : relative_position;
  } else {
    relative_position = relative_position < 0 ? -relative_position : 0;
  }
  const Index max_exact = num_buckets / 2;
  if (relative_position < max_exact) return bucket + relative_position;
  const float scaled = std::log(float(relative_position) / float(max_exact)) /
                       float(std::log(double(max_distance) / double(max_exact))) *
                       float(num_buckets - max_exact);
  const Index large = max_exact + Index(scaled);
  return bucket + std::min(large, num_buckets - 1);
}

namespace detail {

/// Visibility of a block of queries [q0, q1) × keys [k0, k1) under causal (k ≤ q).
inline Visibility causal_blocks(Index q0, Index q1, Index k0, Index k1) {
  if (k0 > q1 - 1) return Visibility::none;
  return k1 - 1 <= q0 ? Visibility::all : Visibility::partial;
}

/// ALiBi: s + slope[h]·(k − q), one slope per query head.
struct Alibi {
  static constexpr bool additive = true;  // the backward pass's derivative is 1
  std::shared_ptr<const std::vector<double>> slopes;
  template <typename Scalar>
  EIGEN_ALWAYS_INLINE Scalar operator()(Scalar s, Index h, Index q, Index k) const {
    // In int32: distances fit it, and int32 → float vectorises on every x86 level.
    return s + Scalar((*slopes)[std::size_t(h)]) * Scalar(std::int32_t(k) - std::int32_t(q));
  }
  void check(const char* who, Index, Index, Index heads) const {
    if (Index(slopes->size()) != heads) {
      throw_shape_error(who, ": alibi has ", slopes->size(), " slopes, expected one per head (",
                        heads, ")");
    }
  }
};

/// T5's bucketed relative position bias: s + table(bucket(k − q), h), the buckets computed once
/// per distance a call can see.
template <typename T>
struct RelativePositionBias {
  std::shared_ptr<const Matrix<T>> table;  // num_buckets × heads
  bool bidirectional;
  Index max_distance;

  struct Bound {
    static constexpr bool additive = true;
    std::vector<T> bias;  // head h, distance k − q: bias[h·span + (k − q) + reach]
    Index span;
    Index reach;
    template <typename Scalar>
    EIGEN_ALWAYS_INLINE Scalar operator()(Scalar s, Index h, Index q, Index k) const {
      return s + Scalar(bias[std::size_t(h * span + (k - q) + reach)]);
    }
  };

  void check(const char* who, Index, Index, Index heads) const {
    if (table->cols() != heads) {
      throw_shape_error(who, ": relative_position_bias table is ", shape_string(*table),
                        ", expected num_buckets x ", heads, " (one column per head)");
    }
  }
  Bound bind(Index n, Index m, Index heads) const {
    Bound bound{{}, 2 * (n + m) + 1, n + m};
    bound.bias.resize(std::size_t(heads * bound.span));
    for (Index distance = -bound.reach; distance <= bound.reach; ++distance) {
      const Index bucket =
          relative_position_bucket(distance, bidirectional, table->rows(), max_distance);
      for (Index h = 0; h < heads; ++h)
        bound.bias[std::size_t(h * bound.span + distance + bound.reach)] = (*table)(bucket, h);
    }
    return bound;
  }
};

/// A per-head additive bias, head h's n × m block in rows [h·n, (h+1)·n).
template <typename T>
struct HeadBias {
  static constexpr bool one_sequence = true;
  std::shared_ptr<const Matrix<T>> bias;

  struct Bound {
    static constexpr bool additive = true;
    const Matrix<T>* bias;
    Index n;
    Index first_position;  // m − n: query row i stands at position i + m − n
    template <typename Scalar>
    EIGEN_ALWAYS_INLINE Scalar operator()(Scalar s, Index h, Index q, Index k) const {
      const T b = (*bias)(h * n + q - first_position, k);
      // −∞ hides the key even when its logit is NaN, as Mask::bias does.
      return is_minus_infinity(b) ? -std::numeric_limits<Scalar>::infinity() : s + Scalar(b);
    }
  };

  void check(const char* who, Index n, Index m, Index heads) const {
    if (bias->rows() != heads * n || bias->cols() != m) {
      throw_shape_error(who, ": head_bias is ", shape_string(*bias), ", expected ",
                        shape_string(heads * n, m), " ((num_heads*queries) x keys)");
    }
  }
  Bound bind(Index n, Index m, Index) const { return {bias.get(), n, m - n}; }
};

/// Documents packed along the positions: a query sees only keys of its own document.
struct Documents {
  std::shared_ptr<const RowRuns> runs;

  bool operator()(Index q, Index k) const {
    return q >= 0 && q < runs->rows() && runs->run(q) == runs->run(k);
  }
  Visibility operator()(Index q0, Index q1, Index k0, Index k1) const {
    if (q1 <= 0) return Visibility::none;
    const bool negative = q0 < 0;  // queries before position 0 see nothing: not all visible
    q0 = std::max<Index>(q0, 0);
    const Index first = runs->run(q0), last = runs->run(q1 - 1);
    const Index first_key = runs->run(k0), last_key = runs->run(k1 - 1);
    if (last < first_key || first > last_key) return Visibility::none;
    return first == last && first_key == last_key && !negative ? Visibility::all
                                                               : Visibility::partial;
  }
  KeyRange key_range(Index, Index q0, Index q1) const {
    q0 = std::max<Index>(q0, 0);
    if (q1 <= q0) return {0, 0};
    return {runs->begin(runs->run(q0)), runs->begin(runs->run(q1 - 1) + 1)};
  }
  void check(const char* who, Index, Index m, Index) const {
    if (runs->rows() < m) {
      throw_shape_error(who, ": the documents cover ", runs->rows(),
                        " positions, expected at least the ", m, " keys");
    }
  }
};

/// Prefix-LM: the first `prefix` positions are seen by every query; after them, causal.
struct PrefixLM {
  Index prefix;
  bool operator()(Index q, Index k) const { return k < prefix || k <= q; }
  Visibility operator()(Index q0, Index q1, Index k0, Index k1) const {
    if (k1 <= prefix) return Visibility::all;
    if (k0 >= prefix) return causal_blocks(q0, q1, k0, k1);
    return k1 - 1 <= q0 ? Visibility::all : Visibility::partial;
  }
  KeyRange key_range(Index, Index, Index q1) const { return {0, std::max(prefix, q1)}; }
};

/// A tree of draft tokens in the last positions (speculative decoding): each sees the prefix
/// before the tree, and, in the tree, itself and its ancestors.
struct Tree {
  static constexpr bool one_sequence = true;
  std::shared_ptr<const Matrix<bool>> ancestor;  // (t, u): u is t or an ancestor of t

  struct Bound {
    const Matrix<bool>* ancestor;
    Index first;  // position of node 0: m − tree size
    bool operator()(Index q, Index k) const {
      if (k < first) return k <= q;  // the prefix, causal for queries before the tree
      if (q < first) return false;
      return (*ancestor)(q - first, k - first);
    }
    Visibility operator()(Index q0, Index q1, Index k0, Index k1) const {
      if (k1 <= first) return causal_blocks(q0, q1, k0, k1);
      return k0 > q1 - 1 ? Visibility::none : Visibility::partial;
    }
    KeyRange key_range(Index, Index, Index q1) const { return {0, q1}; }
  };

  void check(const char* who, Index, Index m, Index) const {
    if (ancestor->rows() > m) {
      throw_shape_error(who, ": the tree has ", ancestor->rows(), " nodes, expected at most the ",
                        m, " keys (its nodes are the last keys)");
    }
  }
  Bound bind(Index, Index m, Index) const { return {ancestor.get(), m - ancestor->rows()}; }
};

/// Attention sinks and a causal sliding window: key k is visible from q iff k ≤ q and
/// (k < sinks or k ≥ q − window).
struct Sinks {
  Index sinks;
  Index window;
  bool operator()(Index q, Index k) const { return k <= q && (k < sinks || k >= q - window); }
  Visibility operator()(Index q0, Index q1, Index k0, Index k1) const {
    const Visibility causal = causal_blocks(q0, q1, k0, k1);
    if (causal == Visibility::none) return causal;
    if (k0 >= sinks && k1 - 1 < q0 - window) return Visibility::none;  // between sinks and window
    const bool seen = k1 <= sinks || k0 >= q1 - 1 - window;
    return causal == Visibility::all && seen ? Visibility::all : Visibility::partial;
  }
  KeyRange key_range(Index, Index, Index q1) const { return {0, q1}; }
};

inline Index check_length(const char* who, const char* what, Index value) {
  if (value < 0) throw_shape_error(who, ": ", what, " is ", value, ", expected >= 0");
  return value;
}

}  // namespace detail

/// The standard ALiBi slopes for `num_heads` heads (Press et al., the reference implementation's
/// get_slopes): 2^(−8(h+1)/H) for H a power of two; otherwise those of the next lower power of
/// two, then every other slope of twice as many heads.
/// \throws ShapeError if num_heads < 1.
inline std::vector<double> alibi_slopes(Index num_heads) {
  if (num_heads < 1)
    detail::throw_shape_error("alibi_slopes: num_heads is ", num_heads, ", expected >= 1");
  const auto power_of_two = [](Index heads) {
    const double start = std::pow(2.0, -std::pow(2.0, -(std::log2(double(heads)) - 3)));
    std::vector<double> slopes(static_cast<std::size_t>(heads));
    for (Index h = 0; h < heads; ++h)
      slopes[std::size_t(h)] = start * std::pow(start, double(h));
    return slopes;
  };
  Index lower = 1;
  while (lower * 2 <= num_heads)
    lower *= 2;
  std::vector<double> slopes = power_of_two(lower);
  if (lower != num_heads) {
    const std::vector<double> extra = power_of_two(2 * lower);
    for (Index h = 0; Index(slopes.size()) < num_heads; h += 2)
      slopes.push_back(extra[std::size_t(h)]);
  }
  return slopes;
}

/// ALiBi (Press et al.): logit + slope_h·(k − q) with the standard slopes for num_heads heads.
/// Use it with a causal mask (keys after the query would get a positive bias).
/// \throws ShapeError if num_heads < 1; a call throws unless it has num_heads query heads.
inline ScoreMask<detail::Alibi> alibi(Index num_heads) {
  return score_function(
      detail::Alibi{std::make_shared<const std::vector<double>>(alibi_slopes(num_heads))});
}

/// ALiBi with the user's slopes, one per query head.
inline ScoreMask<detail::Alibi> alibi(std::vector<double> slopes) {
  return score_function(
      detail::Alibi{std::make_shared<const std::vector<double>>(std::move(slopes))});
}

/// T5's relative position bias: logit + table(bucket(k − q), h), with `table` num_buckets ×
/// num_heads (Hugging Face's relative_attention_bias.weight). T5 does not scale its logits: call
/// with options.scale = 1.
/// \throws ShapeError if the table has fewer than 2 buckets or max_distance is not above half of
///         them; a call throws unless the table has one column per query head.
template <typename Derived>
ScoreMask<detail::RelativePositionBias<typename Derived::Scalar>> relative_position_bias(
    const Eigen::MatrixBase<Derived>& table, bool bidirectional = true, Index max_distance = 128) {
  using T = typename Derived::Scalar;
  static_assert(detail::is_supported_scalar<T>,
                "attn::relative_position_bias takes a float or double table");
  const Index half = bidirectional ? table.rows() / 2 : table.rows();
  if (half < 2 || max_distance <= half / 2) {
    detail::throw_shape_error(
        "relative_position_bias: table is ", detail::shape_string(table), " with max_distance ",
        max_distance, ", expected at least 2 buckets per direction and max_distance > ", half / 2);
  }
  return score_function(detail::RelativePositionBias<T>{std::make_shared<const Matrix<T>>(table),
                                                        bidirectional, max_distance});
}

/// A bias per head: (H·n) × m, head h's block in rows [h·n, (h+1)·n), added to the logits;
/// −∞ hides a key. (attn::Mask::bias is one n × m matrix shared by the heads.)
/// \throws ShapeError if an entry is +∞ or NaN, or (double) beyond float's range; a call throws
///         unless the shape is (num_heads·n) × m.
template <typename Derived>
ScoreMask<detail::HeadBias<typename Derived::Scalar>> head_bias(
    const Eigen::MatrixBase<Derived>& bias) {
  using T = typename Derived::Scalar;
  static_assert(detail::is_supported_scalar<T>, "attn::head_bias takes a float or double matrix");
  auto matrix = std::make_shared<const Matrix<T>>(bias);
  for (Index i = 0; i < matrix->rows(); ++i) {
    for (Index j = 0; j < matrix->cols(); ++j) {
      const T b = (*matrix)(i, j);
      if (detail::is_nan(b) || detail::is_plus_infinity(b) ||
          (!detail::is_minus_infinity(b) &&
           double(b) > double(std::numeric_limits<float>::max()))) {
        detail::throw_shape_error("head_bias: bias(", i, ", ", j, ") is ", b,
                                  ", expected a finite float value or -inf (masked)");
      }
    }
  }
  return score_function(detail::HeadBias<T>{std::move(matrix)});
}

/// Documents packed along the positions, lengths[b] positions each: a query sees only keys of
/// its own document. With Mask::causal() it is causal within each document (self-attention
/// over a packed batch). Blocks of other documents are never read.
/// \throws ShapeError if a length is negative; a call throws unless the lengths cover its m
///         keys (their sum may exceed m: a growing KVCache).
inline auto documents(const std::vector<Index>& lengths) {
  std::vector<Index> offsets(lengths.size() + 1, 0);
  for (std::size_t b = 0; b < lengths.size(); ++b)
    offsets[b + 1] = offsets[b] + detail::check_length("documents", "a length", lengths[b]);
  const detail::Documents docs{std::make_shared<const detail::RowRuns>(std::move(offsets))};
  return mask_function(docs, docs);
}

/// Documents given by an id per position (each document's positions contiguous).
/// \throws ShapeError if an id comes back after another document began.
inline auto document_ids(const std::vector<Index>& ids) {
  std::vector<Index> lengths;
  std::vector<Index> seen;
  for (std::size_t p = 0; p < ids.size(); ++p) {
    if (p > 0 && ids[p] == ids[p - 1]) {
      ++lengths.back();
      continue;
    }
    if (std::find(seen.begin(), seen.end(), ids[p]) != seen.end()) {
      detail::throw_shape_error("document_ids: id ", ids[p], " at position ", p,
                                " comes back after another document, expected each document's "
                                "positions contiguous");
    }
    seen.push_back(ids[p]);
    lengths.push_back(1);
  }
  return documents(lengths);
}

/// Prefix-LM: positions before `prefix` are seen by every query (a bidirectional prefix), the
/// rest causally.
/// \throws ShapeError if prefix is negative.
inline auto prefix_lm(Index prefix) {
  const detail::PrefixLM rule{detail::check_length("prefix_lm", "prefix", prefix)};
  return mask_function(rule, rule);
}

/// A tree of draft tokens for speculative decoding, in the last parents.size() positions (the
/// draft chunk appended to a KVCache): node t has parent parents[t] < t, or −1 for a root that
/// follows the prefix. Each node sees the whole prefix, itself and its ancestors; positions
/// before the tree are causal.
/// \throws ShapeError if a parent is not in [−1, t).
inline auto tree(const std::vector<Index>& parents) {
  const Index size = Index(parents.size());
  Matrix<bool> ancestor = Matrix<bool>::Constant(size, size, false);
  for (Index t = 0; t < size; ++t) {
    const Index parent = parents[std::size_t(t)];
    if (parent < -1 || parent >= t) {
      detail::throw_shape_error("tree: parents[", t, "] is ", parent, ", expected -1 or in [0, ", t,
                                ")");
    }
    if (parent >= 0) ancestor.row(t) = ancestor.row(parent);
    ancestor(t, t) = true;
  }
  const detail::Tree rule{std::make_shared<const Matrix<bool>>(std::move(ancestor))};
  return mask_function(rule, rule);
}

/// Attention sinks with a causal sliding window (StreamingLLM): query q sees key k iff k ≤ q and
/// either k < count (the sinks) or k ≥ q − window. Blocks in between are never read, in prefill
/// and when decoding over a KVCache.
/// \throws ShapeError if count or window is negative.
inline auto sinks(Index count, Index window) {
  const detail::Sinks rule{detail::check_length("sinks", "count", count),
                           detail::check_length("sinks", "window", window)};
  return mask_function(rule, rule);
}

}  // namespace attn
