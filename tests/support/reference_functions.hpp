// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors
#pragma once

/// \file support/reference_functions.hpp
/// The fp64 reference for attention whose logits pass through a score function of positions and
/// whose visibility is a predicate of positions, which is what attn::ScoreMask describes. Written
/// from the documented semantics, sharing nothing with the library (not even its slopes or its
/// tree): explicit loops, one std::function call per (head, query, key), the whole n×m score
/// matrix of a head materialised.
///
/// Positions are those of score_mask.hpp: for n queries over m keys, query row i stands at
/// q = i + m − n and key row j at k = j (bottom-right alignment), so a decoding step (n = 1 over
/// m cached keys) is query m − 1.

#include <attn/types.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <functional>
#include <limits>
#include <stdexcept>
#include <utility>
#include <vector>

#include "reference.hpp"

namespace attn_test {

/// What a ScoreMask does to one logit, as plain functions of positions. Either may be empty: no
/// score function leaves the logit as it is, no visibility sees every key.
struct LayerRule {
  /// (scaled logit, head, q, k) → the new logit; −∞ hides the key.
  std::function<double(double, Index, Index, Index)> score;
  /// (head, q, k) → true where query position q may see key position k.
  std::function<bool(Index, Index, Index)> visible;
};

/// Both rules: visible where both are, score functions applied a's first.
inline LayerRule operator&(const LayerRule& a, const LayerRule& b) {
  LayerRule both;
  if (a.score && b.score) {
    both.score = [a, b](double s, Index h, Index q, Index k) {
      return b.score(a.score(s, h, q, k), h, q, k);
    };
  } else {
    both.score = a.score ? a.score : b.score;
  }
  if (a.visible && b.visible) {
    both.visible = [a, b](Index h, Index q, Index k) {
      return a.visible(h, q, k) && b.visible(h, q, k);
    };
  } else {
    both.visible = a.visible ? a.visible : b.visible;
  }
  return both;
}

/// Every key visible, logits unchanged.
inline LayerRule layer_none() {
  return {};
}

/// Causal: k ≤ q.
inline LayerRule layer_causal() {
  return {{}, [](Index, Index q, Index k) { return k <= q; }};
}

/// A visibility that does not depend on the head.
inline LayerRule layer_visible(std::function<bool(Index, Index)> visible) {
  return {{}, [visible](Index, Index q, Index k) { return visible(q, k); }};
}

/// ALiBi's slopes as Press et al.'s reference implementation (get_slopes) defines them: for a
/// power of two H, slope_h = 2^(−8(h+1)/H); otherwise those of the largest power of two P < H,
/// then slopes 0, 2, 4, … of 2P heads.
inline std::vector<double> layer_alibi_slopes(Index heads) {
  Index power = 1;
  while (2 * power <= heads)
    power *= 2;
  std::vector<double> slopes;
  for (Index h = 0; h < power; ++h)
    slopes.push_back(std::exp2(-8.0 * double(h + 1) / double(power)));
  for (Index h = 0; Index(slopes.size()) < heads; h += 2)
    slopes.push_back(std::exp2(-8.0 * double(h + 1) / double(2 * power)));
  return slopes;
}

/// ALiBi: s + slope_h·(k − q).
inline LayerRule layer_alibi(const std::vector<double>& slopes) {
  return {[slopes](double s, Index h, Index q, Index k) {
            return s + slopes.at(std::size_t(h)) * double(k - q);
          },
          {}};
}

/// StreamingLLM's sinks and window: k ≤ q and (k < count or k ≥ q − window).
inline LayerRule layer_sinks(Index count, Index window) {
  return layer_visible(
      [count, window](Index q, Index k) { return k <= q && (k < count || k >= q - window); });
}

/// Prefix-LM: keys before `prefix` seen by all, the rest causally.
inline LayerRule layer_prefix_lm(Index prefix) {
  return layer_visible([prefix](Index q, Index k) { return k < prefix || k <= q; });
}

/// Documents of the given lengths packed along the positions: q sees k iff both are in the same
/// document (a query at a negative position, or beyond every document, sees nothing).
inline LayerRule layer_documents(const std::vector<Index>& lengths) {
  std::vector<Index> document;  // of each position
  for (std::size_t b = 0; b < lengths.size(); ++b)
    document.insert(document.end(), std::size_t(lengths[b]), Index(b));
  return layer_visible([document](Index q, Index k) {
    const Index size = Index(document.size());
    return q >= 0 && q < size && k >= 0 && k < size &&
           document[std::size_t(q)] == document[std::size_t(k)];
  });
}

/// A tree of draft tokens in the last parents.size() of m positions (speculative decoding):
/// node t stands at position m − T + t, its parent is parents[t] (−1: a root). A node sees every
/// position before the tree, itself and its ancestors (found by walking up the parents); a
/// position before the tree sees causally.
inline LayerRule layer_tree(const std::vector<Index>& parents, Index m) {
  const Index first = m - Index(parents.size());
  return layer_visible([parents, first](Index q, Index k) {
    if (k < first) return k <= q;
    if (q < first) return false;
    for (Index t = q - first; t >= 0; t = parents[std::size_t(t)]) {
      if (t == k - first) return true;
    }
    return false;
  });
}

/// One head: q (n, d), k (m, d), v (m, dv) -> (n, dv), with query row i at position i + m − n
/// and key row j at j (head h is passed to the rule):
///   s(i, j) = rule.score(scale·q_i·k_j, h, q, k), or −∞ where !rule.visible(h, q, k);
///   out(i, :) = Σ_j softmax_j(s(i, :))·v(j, :), a zero row where every s(i, j) is −∞.
inline MatrixD layer_attention_head(const MatrixD& q, const MatrixD& k, const MatrixD& v,
                                    double scale, Index head, const LayerRule& rule) {
  const Index n = q.rows(), m = k.rows();
  constexpr double minus_infinity = -std::numeric_limits<double>::infinity();
  MatrixD out = MatrixD::Zero(n, v.cols());
  std::vector<double> s(static_cast<std::size_t>(m));
  for (Index i = 0; i < n; ++i) {
    const Index position = i + m - n;
    double row_max = minus_infinity;
    for (Index j = 0; j < m; ++j) {
      double logit = minus_infinity;
      if (!rule.visible || rule.visible(head, position, j)) {
        double dot = 0;
        for (Index l = 0; l < q.cols(); ++l)
          dot += q(i, l) * k(j, l);
        logit = scale * dot;
        if (rule.score) logit = rule.score(logit, head, position, j);
      }
      s[std::size_t(j)] = logit;
      row_max = std::max(row_max, logit);
    }
    if (row_max == minus_infinity) continue;  // sees no key: a zero row
    double sum = 0;
    for (Index j = 0; j < m; ++j)
      sum += std::exp(s[std::size_t(j)] - row_max);
    for (Index j = 0; j < m; ++j) {
      const double weight = std::exp(s[std::size_t(j)] - row_max) / sum;
      for (Index c = 0; c < v.cols(); ++c)
        out(i, c) += weight * v(j, c);
    }
  }
  return out;
}

/// Multi-head attention with a rule over column blocks: q (n, H·d), k (m, Hkv·d), v (m, Hkv·dv)
/// -> (n, H·dv); query head h reads kv head h / (H / Hkv); scale 1/√d.
inline MatrixD layer_attention(const MatrixD& q, const MatrixD& k, const MatrixD& v, Index heads,
                               Index kv_heads, const LayerRule& rule) {
  if (heads < 1 || kv_heads < 1 || heads % kv_heads != 0 || q.cols() % heads != 0 ||
      k.cols() != kv_heads * (q.cols() / heads) || v.cols() % kv_heads != 0 ||
      v.rows() != k.rows()) {
    throw std::logic_error("layer_attention: inconsistent shapes (a bug in the test)");
  }
  const Index d = q.cols() / heads, dv = v.cols() / kv_heads, group = heads / kv_heads;
  MatrixD out = MatrixD::Zero(q.rows(), heads * dv);
  if (q.rows() == 0) return out;
  for (Index h = 0; h < heads; ++h) {
    const Index g = h / group;
    const MatrixD k_head = k.rows() == 0 ? MatrixD(0, d) : MatrixD(k.middleCols(g * d, d));
    const MatrixD v_head = v.rows() == 0 ? MatrixD(0, dv) : MatrixD(v.middleCols(g * dv, dv));
    out.middleCols(h * dv, dv) = layer_attention_head(q.middleCols(h * d, d), k_head, v_head,
                                                      1.0 / std::sqrt(double(d)), h, rule);
  }
  return out;
}

/// A multi-head layer whose keys and values are given (already projected, e.g. as a KVCache
/// stores them): Q = target·Wqᵀ + bq, y = concat_h(attention_h)·Woᵀ + bo.
/// target: (n, E), keys and values: (m, Hkv·d) -> (n, E).
template <typename DT, typename Weights>
MatrixD layer_mha_over(const Eigen::MatrixBase<DT>& target, const MatrixD& keys,
                       const MatrixD& values, const Weights& weights, Index heads, Index kv_heads,
                       const LayerRule& rule) {
  const ReferenceWeights w = reference_weights(weights);
  const MatrixD q = reference_linear(target, w.q_weight, w.q_bias);
  return reference_linear(layer_attention(q, keys, values, heads, kv_heads, rule), w.out_weight,
                          w.out_bias);
}

/// The keys and values a layer projects a source (m, S) to: (m, Hkv·d) each.
template <typename DS, typename Weights>
std::pair<MatrixD, MatrixD> layer_keys_values(const Eigen::MatrixBase<DS>& source,
                                              const Weights& weights) {
  const ReferenceWeights w = reference_weights(weights);
  return {reference_linear(source, w.k_weight, w.k_bias),
          reference_linear(source, w.v_weight, w.v_bias)};
}

/// A multi-head layer with a rule: target (n, E) over source (m, S) -> (n, E).
template <typename DT, typename DS, typename Weights>
MatrixD layer_mha(const Eigen::MatrixBase<DT>& target, const Eigen::MatrixBase<DS>& source,
                  const Weights& weights, Index heads, Index kv_heads, const LayerRule& rule) {
  const auto [keys, values] = layer_keys_values(source, weights);
  return layer_mha_over(target, keys, values, weights, heads, kv_heads, rule);
}

}  // namespace attn_test
