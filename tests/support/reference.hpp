// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors
#pragma once

/// \file support/reference.hpp
/// An independent fp64 reference for attention, written for clarity, not speed: explicit loops,
/// the n×m score matrix materialised, every formula spelled out once. It shares nothing with the
/// library but the attn::Matrix alias (and reads weights of any struct with MultiHeadWeights'
/// member names), so a bug in attn cannot hide in it.

#include <attn/types.hpp>

#include <cmath>
#include <cstddef>
#include <functional>
#include <limits>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace attn_test {

using Index = Eigen::Index;
using MatrixD = attn::Matrix<double>;
using MatrixB = attn::Matrix<bool>;
using VectorD = Eigen::Matrix<double, Eigen::Dynamic, 1>;

/// A mask described by its documented formulas, evaluated element by element. For n queries and
/// m keys, query i sits at key position p(i) = i + m − n (bottom-right alignment):
/// - window(left, right): key j is visible iff p(i) − left ≤ j ≤ p(i) + right, a reach of
///   `unbounded` (−1) dropping its side; causal is window(unbounded, 0), i.e. j ≤ p(i);
/// - key_length(count): key j is visible iff j < count;
/// - keep(allowed): key j is visible iff allowed(i, j);
/// - bias(b): b(i, j) is added to the logit.
/// Combining with `&` keeps every part: a key is visible iff every window, key length and keep
/// matrix lets it through, and the biases are summed. (No part is simplified into another, so this
/// does not share the library's reasoning about how windows intersect.)
class ReferenceMask {
 public:
  static constexpr Index unbounded = -1;

  static ReferenceMask none() { return ReferenceMask(); }
  static ReferenceMask causal() { return window(unbounded, 0); }
  static ReferenceMask window(Index left, Index right) {
    ReferenceMask mask;
    mask.m_windows.emplace_back(left, right);
    return mask;
  }
  static ReferenceMask key_length(Index count) {
    ReferenceMask mask;
    mask.m_key_lengths.push_back(count);
    return mask;
  }
  static ReferenceMask keep(MatrixB allowed) {
    ReferenceMask mask;
    mask.m_keeps.push_back(std::move(allowed));
    return mask;
  }
  template <typename Derived>
  static ReferenceMask bias(const Eigen::MatrixBase<Derived>& additive) {
    ReferenceMask mask;
    mask.m_biases.push_back(additive.template cast<double>());
    return mask;
  }

  friend ReferenceMask operator&(ReferenceMask a, const ReferenceMask& b) {
    a.m_windows.insert(a.m_windows.end(), b.m_windows.begin(), b.m_windows.end());
    a.m_key_lengths.insert(a.m_key_lengths.end(), b.m_key_lengths.begin(), b.m_key_lengths.end());
    a.m_keeps.insert(a.m_keeps.end(), b.m_keeps.begin(), b.m_keeps.end());
    a.m_biases.insert(a.m_biases.end(), b.m_biases.begin(), b.m_biases.end());
    return a;
  }

  /// True if the mask holds an n×m matrix (and so describes a single (n, m)).
  bool has_explicit() const { return !m_keeps.empty() || !m_biases.empty(); }

  /// May query i (of n) see key j (of m)?
  bool visible(Index i, Index j, Index n, Index m) const {
    const Index p = i + m - n;
    for (const auto& [left, right] : m_windows) {
      if (left != unbounded && j < p - left) return false;
      if (right != unbounded && j > p + right) return false;
    }
    for (const Index count : m_key_lengths) {
      if (j >= count) return false;
    }
    for (const MatrixB& allowed : m_keeps) {
      check_shape("keep", allowed.rows(), allowed.cols(), n, m);
      if (!allowed(i, j)) return false;
    }
    return true;
  }

  /// The n×m visibility matrix.
  MatrixB allowed(Index n, Index m) const {
    MatrixB result(n, m);
    for (Index i = 0; i < n; ++i) {
      for (Index j = 0; j < m; ++j)
        result(i, j) = visible(i, j, n, m);
    }
    return result;
  }

  /// The n×m sum of the biases, or an empty matrix when there is none.
  MatrixD bias(Index n, Index m) const {
    if (m_biases.empty()) return MatrixD();
    MatrixD sum = MatrixD::Zero(n, m);
    for (const MatrixD& b : m_biases) {
      check_shape("bias", b.rows(), b.cols(), n, m);
      for (Index i = 0; i < n; ++i) {
        for (Index j = 0; j < m; ++j)
          sum(i, j) += b(i, j);
      }
    }
    return sum;
  }

 private:
  static void check_shape(const char* part, Index rows, Index cols, Index n, Index m) {
    if (rows != n || cols != m) {
      throw std::logic_error(std::string("ReferenceMask: ") + part + " matrix is " +
                             std::to_string(rows) + "x" + std::to_string(cols) + ", used for " +
                             std::to_string(n) + "x" + std::to_string(m) + " (a bug in the test)");
    }
  }

  std::vector<std::pair<Index, Index>> m_windows;
  std::vector<Index> m_key_lengths;
  std::vector<MatrixB> m_keeps;
  std::vector<MatrixD> m_biases;
};

/// Attention of ONE head, in double:
///   s(i, j) = scale · Σ_l q(i, l)·k(j, l)
///   s(i, j) = softcap · tanh(s(i, j) / softcap)         if softcap > 0
///   s(i, j) = s(i, j) + bias(i, j)                      if bias is not empty
///   s(i, j) = −∞                                        if !allowed(i, j)
///   out(i, :) = Σ_j softmax_j(s(i, :)) · v(j, :)        (max subtracted first)
/// A row in which no key is visible (every s(i, j) = −∞) is zero.
/// q: (n, d), k: (m, d), v: (m, dv), allowed: (n, m), bias: (n, m) or empty -> (n, dv).
/// Optionally also: log_sum_exp (n) = log Σ_j exp(s(i, j)) (−∞ for a row that sees nothing), and
/// weights (n, m) = softmax_j(s(i, :)) (zero rows for such rows).
template <typename DQ, typename DK, typename DV>
MatrixD reference_attention(const Eigen::MatrixBase<DQ>& q, const Eigen::MatrixBase<DK>& k,
                            const Eigen::MatrixBase<DV>& v, const MatrixB& allowed,
                            const MatrixD& bias, double scale, double softcap = 0,
                            VectorD* log_sum_exp = nullptr, MatrixD* weights = nullptr) {
  const Index n = q.rows(), m = k.rows(), d = q.cols(), dv = v.cols();
  if (k.cols() != d || v.rows() != m || allowed.rows() != n || allowed.cols() != m ||
      (bias.size() != 0 && (bias.rows() != n || bias.cols() != m))) {
    throw std::logic_error("reference_attention: inconsistent shapes (a bug in the test)");
  }
  constexpr double minus_infinity = -std::numeric_limits<double>::infinity();

  // 1. Scores, soft-capped, biased, masked.
  MatrixD s(n, m);
  for (Index i = 0; i < n; ++i) {
    for (Index j = 0; j < m; ++j) {
      if (!allowed(i, j)) {
        s(i, j) = minus_infinity;
        continue;
      }
      double dot = 0;
      for (Index l = 0; l < d; ++l)
        dot += static_cast<double>(q(i, l)) * static_cast<double>(k(j, l));
      double logit = scale * dot;
      if (softcap > 0) logit = softcap * std::tanh(logit / softcap);
      if (bias.size() != 0) logit += bias(i, j);
      s(i, j) = logit;
    }
  }

  // 2. Row-wise softmax with the max subtracted, then the weighted sum of values.
  MatrixD out = MatrixD::Zero(n, dv);
  if (log_sum_exp != nullptr) *log_sum_exp = VectorD::Constant(n, minus_infinity);
  if (weights != nullptr) *weights = MatrixD::Zero(n, m);
  for (Index i = 0; i < n; ++i) {
    double row_max = minus_infinity;
    for (Index j = 0; j < m; ++j)
      row_max = std::max(row_max, s(i, j));
    if (row_max == minus_infinity) continue;  // no visible key: the row stays zero
    double sum = 0;
    for (Index j = 0; j < m; ++j)
      sum += std::exp(s(i, j) - row_max);
    if (log_sum_exp != nullptr) (*log_sum_exp)(i) = row_max + std::log(sum);
    for (Index j = 0; j < m; ++j) {
      const double weight = std::exp(s(i, j) - row_max) / sum;
      if (weights != nullptr) (*weights)(i, j) = weight;
      if (weight == 0) continue;
      for (Index c = 0; c < dv; ++c)
        out(i, c) += weight * static_cast<double>(v(j, c));
    }
  }
  return out;
}

/// Multi-head attention over column blocks: q (n, H·d), k (m, Hkv·d), v (m, Hkv·dv) -> (n, H·dv);
/// query head h reads kv head h / (H / Hkv). scale defaults to 1/√d. Optionally also the
/// log-sum-exps (n, H) and the weights ((H·n), m), head h in rows [h·n, (h + 1)·n).
template <typename DQ, typename DK, typename DV>
MatrixD reference_multi_head(const Eigen::MatrixBase<DQ>& q, const Eigen::MatrixBase<DK>& k,
                             const Eigen::MatrixBase<DV>& v, Index num_heads, Index num_kv_heads,
                             const ReferenceMask& mask = ReferenceMask(),
                             std::optional<double> scale = std::nullopt, double softcap = 0,
                             MatrixD* log_sum_exp = nullptr, MatrixD* weights = nullptr) {
  if (num_heads < 1 || num_kv_heads < 1 || num_heads % num_kv_heads != 0 ||
      q.cols() % num_heads != 0 || v.cols() % num_kv_heads != 0 ||
      k.cols() != num_kv_heads * (q.cols() / num_heads)) {
    throw std::logic_error("reference_multi_head: inconsistent heads (a bug in the test)");
  }
  const Index n = q.rows(), m = k.rows();
  const Index d = q.cols() / num_heads;
  const Index dv = v.cols() / num_kv_heads;
  const Index group = num_heads / num_kv_heads;
  const double head_scale =
      scale ? *scale : (d > 0 ? 1.0 / std::sqrt(static_cast<double>(d)) : 1.0);
  const MatrixB allowed = mask.allowed(n, m);
  const MatrixD bias = mask.bias(n, m);
  MatrixD out(n, num_heads * dv);
  if (log_sum_exp != nullptr) log_sum_exp->resize(n, num_heads);
  if (weights != nullptr) weights->resize(num_heads * n, m);
  for (Index h = 0; h < num_heads; ++h) {
    const Index g = h / group;
    VectorD head_lse;
    MatrixD head_weights;
    // Column blocks of an empty matrix would offset its null data pointer (UB that UBSan
    // reports inside Eigen), so empty inputs pass as fresh empty matrices.
    const auto columns = [](const auto& x, Index first, Index count) {
      return x.rows() == 0 ? MatrixD(0, count)
                           : MatrixD(x.middleCols(first, count).template cast<double>());
    };
    const MatrixD head_out =
        reference_attention(columns(q, h * d, d), columns(k, g * d, d), columns(v, g * dv, dv),
                            allowed, bias, head_scale, softcap, &head_lse, &head_weights);
    if (n > 0) out.middleCols(h * dv, dv) = head_out;
    if (log_sum_exp != nullptr) log_sum_exp->col(h) = head_lse;
    if (weights != nullptr && n > 0) weights->middleRows(h * n, n) = head_weights;
  }
  return out;
}

/// The weights of a multi-head layer in double, PyTorch layout (y = x·Wᵀ + b; empty b: none).
struct ReferenceWeights {
  MatrixD q_weight, k_weight, v_weight, out_weight;
  VectorD q_bias, k_bias, v_bias, out_bias;
};

/// Converts any struct with MultiHeadWeights' members (attn::MultiHeadWeights<float/double>,
/// ReferenceWeights) to double.
template <typename Weights>
ReferenceWeights reference_weights(const Weights& w) {
  ReferenceWeights r;
  r.q_weight = w.q_weight.template cast<double>();
  r.k_weight = w.k_weight.template cast<double>();
  r.v_weight = w.v_weight.template cast<double>();
  r.out_weight = w.out_weight.template cast<double>();
  r.q_bias = w.q_bias.template cast<double>();
  r.k_bias = w.k_bias.template cast<double>();
  r.v_bias = w.v_bias.template cast<double>();
  r.out_bias = w.out_bias.template cast<double>();
  return r;
}

/// y = x·Wᵀ + b with explicit loops; x: (rows, in), W: (out, in), b: (out) or empty.
template <typename DX>
MatrixD reference_linear(const Eigen::MatrixBase<DX>& x, const MatrixD& weight,
                         const VectorD& bias) {
  if (x.cols() != weight.cols() || (bias.size() != 0 && bias.size() != weight.rows())) {
    throw std::logic_error("reference_linear: inconsistent shapes (a bug in the test)");
  }
  MatrixD y(x.rows(), weight.rows());
  for (Index r = 0; r < x.rows(); ++r) {
    for (Index o = 0; o < weight.rows(); ++o) {
      double sum = bias.size() != 0 ? bias(o) : 0.0;
      for (Index c = 0; c < x.cols(); ++c)
        sum += static_cast<double>(x(r, c)) * weight(o, c);
      y(r, o) = sum;
    }
  }
  return y;
}

/// Multi-head attention layer:
///   Q = target·Wqᵀ + bq,  K = source·Wkᵀ + bk,  V = source·Wvᵀ + bv,
///   y = concat_h(attention_h(Q, K, V, mask))·Woᵀ + bo.
/// target: (n, E), source: (m, S) -> (n, E). Self-attention is target = source. scale (default
/// 1/√d) and softcap (0: off) are those of reference_attention.
template <typename DT, typename DS, typename Weights>
MatrixD reference_mha(const Eigen::MatrixBase<DT>& target, const Eigen::MatrixBase<DS>& source,
                      const Weights& weights, Index num_heads, Index num_kv_heads,
                      const ReferenceMask& mask = ReferenceMask(),
                      std::optional<double> scale = std::nullopt, double softcap = 0) {
  const ReferenceWeights w = reference_weights(weights);
  const MatrixD q = reference_linear(target, w.q_weight, w.q_bias);
  const MatrixD k = reference_linear(source, w.k_weight, w.k_bias);
  const MatrixD v = reference_linear(source, w.v_weight, w.v_bias);
  const MatrixD heads =
      reference_multi_head(q, k, v, num_heads, num_kv_heads, mask, scale, softcap);
  return reference_linear(heads, w.out_weight, w.out_bias);
}

/// reference_mha over sequences packed row-wise: target sequence b (target_lengths[b] rows)
/// attends only to source sequence b (source_lengths[b] rows); `mask` is applied per sequence.
template <typename DT, typename DS, typename Weights>
MatrixD reference_mha_packed(const Eigen::MatrixBase<DT>& target,
                             const std::vector<Index>& target_lengths,
                             const Eigen::MatrixBase<DS>& source,
                             const std::vector<Index>& source_lengths, const Weights& weights,
                             Index num_heads, Index num_kv_heads,
                             const ReferenceMask& mask = ReferenceMask()) {
  if (target_lengths.size() != source_lengths.size()) {
    throw std::logic_error("reference_mha_packed: length counts differ (a bug in the test)");
  }
  const Index e = weights.out_weight.rows();
  MatrixD y(target.rows(), e);
  Index t0 = 0, s0 = 0;
  for (std::size_t b = 0; b < target_lengths.size(); ++b) {
    const Index n = target_lengths[b], m = source_lengths[b];
    y.middleRows(t0, n) = reference_mha(target.middleRows(t0, n), source.middleRows(s0, m), weights,
                                        num_heads, num_kv_heads, mask);
    t0 += n;
    s0 += m;
  }
  if (t0 != target.rows() || s0 != source.rows()) {
    throw std::logic_error(
        "reference_mha_packed: lengths do not cover the rows (a bug in the test)");
  }
  return y;
}

// ---------------------------------------------------------------------------------------------
// Programmable masks (attn::ScoreMask): a score and a visibility per head and pair of positions,
// and the built-ins, each written from its definition as a rule on one pair of positions.
// ---------------------------------------------------------------------------------------------

/// The new logit of query position q and key position k in query head h, given the scaled (and
/// soft-capped) logit; −∞ hides the key. An empty function leaves the logit unchanged.
using ReferenceScore = std::function<double(Index head, Index q, Index k, double logit)>;
/// Whether query position q may see key position k in query head h. An empty function lets every
/// key through.
using ReferenceVisible = std::function<bool(Index head, Index q, Index k)>;

/// Multi-head attention under a score function and a visibility rule, in double, one element at a
/// time. For n queries and m keys, query row i stands at position q = i + m − n and key row j at
/// k = j. Query head h reads kv head h / (H / Hkv); for each (h, i, j):
///   hidden                                    if !visible(h, q, k)
///   s = scale · Σ_l q(i, h·d + l)·k(j, g·d + l)
///   s = softcap · tanh(s / softcap)           if softcap > 0
///   s = score(h, q, k, s)                     (−∞: hidden)
///   out(i, h·dv + c) = Σ_j softmax_j(s) · v(j, g·dv + c)   (max subtracted first)
/// A row in which no key is visible is zero, with a log-sum-exp of −∞ and zero weights.
/// q (n, H·d), k (m, Hkv·d), v (m, Hkv·dv) -> (n, H·dv); scale defaults to 1/√d. Optionally also
/// the log-sum-exps (n, H) and the weights ((H·n), m), head h in rows [h·n, (h + 1)·n).
template <typename DQ, typename DK, typename DV>
MatrixD reference_score_mask(const Eigen::MatrixBase<DQ>& q, const Eigen::MatrixBase<DK>& k,
                             const Eigen::MatrixBase<DV>& v, Index num_heads, Index num_kv_heads,
                             const ReferenceScore& score, const ReferenceVisible& visible,
                             std::optional<double> scale = std::nullopt, double softcap = 0,
                             MatrixD* log_sum_exp = nullptr, MatrixD* weights = nullptr) {
  if (num_heads < 1 || num_kv_heads < 1 || num_heads % num_kv_heads != 0 ||
      q.cols() % num_heads != 0 || v.cols() % num_kv_heads != 0 ||
      k.cols() != num_kv_heads * (q.cols() / num_heads) || v.rows() != k.rows()) {
    throw std::logic_error("reference_score_mask: inconsistent shapes (a bug in the test)");
  }
  constexpr double minus_infinity = -std::numeric_limits<double>::infinity();
  const Index n = q.rows(), m = k.rows();
  const Index d = q.cols() / num_heads;
  const Index dv = v.cols() / num_kv_heads;
  const Index group = num_heads / num_kv_heads;
  const double head_scale =
      scale ? *scale : (d > 0 ? 1.0 / std::sqrt(static_cast<double>(d)) : 1.0);
  MatrixD out = MatrixD::Zero(n, num_heads * dv);
  if (log_sum_exp != nullptr) *log_sum_exp = MatrixD::Constant(n, num_heads, minus_infinity);
  if (weights != nullptr) *weights = MatrixD::Zero(num_heads * n, m);
  std::vector<double> s(static_cast<std::size_t>(m));
  for (Index h = 0; h < num_heads; ++h) {
    const Index g = h / group;
    for (Index i = 0; i < n; ++i) {
      const Index position = i + m - n;
      // 1. The row's logits: scaled, soft-capped, scored; hidden keys −∞.
      double row_max = minus_infinity;
      for (Index j = 0; j < m; ++j) {
        double& logit = s[static_cast<std::size_t>(j)];
        if (visible && !visible(h, position, j)) {
          logit = minus_infinity;
          continue;
        }
        double dot = 0;
        for (Index l = 0; l < d; ++l)
          dot += static_cast<double>(q(i, h * d + l)) * static_cast<double>(k(j, g * d + l));
        logit = head_scale * dot;
        if (softcap > 0) logit = softcap * std::tanh(logit / softcap);
        if (score) logit = score(h, position, j, logit);
        row_max = std::max(row_max, logit);
      }
      if (row_max == minus_infinity) continue;  // nothing visible: zeros, lse −∞
      // 2. Softmax with the max subtracted, and the weighted sum of the values.
      double sum = 0;
      for (Index j = 0; j < m; ++j)
        sum += std::exp(s[static_cast<std::size_t>(j)] - row_max);
      if (log_sum_exp != nullptr) (*log_sum_exp)(i, h) = row_max + std::log(sum);
      for (Index j = 0; j < m; ++j) {
        const double weight = std::exp(s[static_cast<std::size_t>(j)] - row_max) / sum;
        if (weights != nullptr) (*weights)(h * n + i, j) = weight;
        if (weight == 0) continue;
        for (Index c = 0; c < dv; ++c)
          out(i, h * dv + c) += weight * static_cast<double>(v(j, g * dv + c));
      }
    }
  }
  return out;
}

/// ALiBi's slopes (Press et al., "Train Short, Test Long", get_slopes): for H a power of two,
/// start = 2^(−2^−(log2 H − 3)) = 2^(−8/H) and slope h = start^(h+1) = 2^(−8(h+1)/H); otherwise the
/// slopes of the closest lower power of two P, then every other slope of 2P heads (its slopes 0,
/// 2, 4, ...) until there are H. Computed here as exact powers of two, 2^(−8(h+1)/P).
inline std::vector<double> reference_alibi_slopes(Index num_heads) {
  Index closest = 1;
  while (closest * 2 <= num_heads)
    closest *= 2;
  std::vector<double> slopes;
  for (Index h = 0; h < closest; ++h)
    slopes.push_back(std::exp2(-8.0 * static_cast<double>(h + 1) / static_cast<double>(closest)));
  // Slope 2j of 2P heads: 2^(−8(2j+1)/(2P)).
  for (Index j = 0; static_cast<Index>(slopes.size()) < num_heads; ++j) {
    slopes.push_back(
        std::exp2(-8.0 * static_cast<double>(2 * j + 1) / static_cast<double>(2 * closest)));
  }
  return slopes;
}

/// ALiBi's bias of query position q and key position k: slope·(k − q) (≤ 0 for the keys a causal
/// query sees).
inline double reference_alibi_bias(double slope, Index q, Index k) {
  return slope * static_cast<double>(k - q);
}

/// T5's bucket of the relative position k − q, as Hugging Face's
/// T5Attention._relative_position_bucket computes it in PyTorch:
///   bidirectional: num_buckets //= 2; bucket = num_buckets if rp > 0 else 0; rp = |rp|
///   else:          bucket = 0; rp = −min(rp, 0)
///   max_exact = num_buckets // 2
///   if rp < max_exact: bucket += rp
///   else: bucket += min(max_exact + long(log(float(rp) / max_exact) / math.log(max_distance /
///                       max_exact) * (num_buckets − max_exact)), num_buckets − 1)
/// The tensor arithmetic is float32 (rp.float(), torch.log, the division by the Python float
/// math.log(...), itself computed in double, and the product), and .to(torch.long) truncates.
inline Index reference_t5_bucket(Index relative_position, bool bidirectional, Index num_buckets,
                                 Index max_distance) {
  Index bucket = 0;
  Index rp = relative_position;
  if (bidirectional) {
    num_buckets = num_buckets / 2;
    if (rp > 0) bucket = num_buckets;
    rp = rp < 0 ? -rp : rp;
  } else {
    rp = -std::min<Index>(rp, 0);
  }
  const Index max_exact = num_buckets / 2;
  if (rp < max_exact) return bucket + rp;
  const float ratio = static_cast<float>(rp) / static_cast<float>(max_exact);
  const float log_ratio = std::log(ratio);  // float32, as torch.log of a float tensor
  const double log_range =
      std::log(static_cast<double>(max_distance) / static_cast<double>(max_exact));
  const float divided = log_ratio / static_cast<float>(log_range);
  const float product = divided * static_cast<float>(num_buckets - max_exact);
  const Index large = max_exact + static_cast<Index>(product);  // truncation, as .to(torch.long)
  return bucket + std::min<Index>(large, num_buckets - 1);
}

/// Documents packed along the positions, lengths[b] each, in order: q sees k iff both positions
/// lie in the same document (a position outside every document sees nothing).
inline bool reference_same_document(const std::vector<Index>& lengths, Index q, Index k) {
  Index start = 0;
  for (const Index length : lengths) {
    const bool has_q = q >= start && q < start + length;
    const bool has_k = k >= start && k < start + length;
    if (has_q || has_k) return has_q && has_k;
    start += length;
  }
  return false;
}

/// Prefix-LM: keys before `prefix` are seen by every query, later keys causally.
inline bool reference_prefix_lm(Index prefix, Index q, Index k) {
  return k < prefix || k <= q;
}

/// A tree of draft tokens in the last parents.size() of m positions: node t stands at position
/// m − T + t and has parent parents[t] (−1: a root). A key before the tree is seen causally (so by
/// every node); a node's query sees, among the nodes, itself and its ancestors, found by walking
/// the parents; a query before the tree sees no node.
inline bool reference_tree(const std::vector<Index>& parents, Index m, Index q, Index k) {
  const Index first = m - static_cast<Index>(parents.size());
  if (k < first) return k <= q;
  if (q < first) return false;
  for (Index node = q - first; node >= 0; node = parents[static_cast<std::size_t>(node)]) {
    if (node == k - first) return true;
  }
  return false;
}

/// Attention sinks with a causal sliding window (StreamingLLM): q sees k iff k ≤ q and either k
/// is one of the first `count` positions or k ≥ q − window.
inline bool reference_sinks(Index count, Index window, Index q, Index k) {
  return k <= q && (k < count || k >= q - window);
}

/// A bias per head for n queries and m keys: (H·n) × m, head h's query row i in row h·n + i, and
/// query position q is row q − (m − n).
inline double reference_head_bias(const MatrixD& bias, Index n, Index m, Index h, Index q,
                                  Index k) {
  return bias(h * n + q - (m - n), k);
}

}  // namespace attn_test
