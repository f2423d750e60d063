// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors
#pragma once

/// \file detail/multi_head_core.hpp
/// Everything SelfAttention and CrossAttention share: owned weights, input projections as one GEMM
/// over all tokens, the kernel run per packed sequence on strided head views, and the output
/// projection. The two functors differ only in where Q, K and V come from.

#include <utility>
#include <vector>

#include "../error.hpp"
#include "../mask.hpp"
#include "../multi_head.hpp"
#include "../parallel.hpp"
#include "../scaled_dot_product.hpp"
#include "../types.hpp"
#include "scheduler.hpp"

namespace attn::detail {

/// y = x·Wᵀ + b, written into y (any row-major view).
template <typename Scalar, typename Weight, typename Bias, typename Out>
void linear(const ConstMatrixRef<Scalar>& x, const Weight& weight, const Bias& bias, Out&& y) {
  y.noalias() = x * weight.transpose();
  if (bias.size() != 0) y.rowwise() += bias.transpose();
}

/// Validates packed sequence lengths against a row count; returns the first row of each sequence
/// (and the total at the end).
inline std::vector<Index> sequence_offsets(const char* who, const char* argument,
                                           const std::vector<Index>& lengths, Index rows) {
  std::vector<Index> offsets(lengths.size() + 1, 0);
  for (std::size_t b = 0; b < lengths.size(); ++b) {
    if (lengths[b] < 0) {
      throw_shape_error(who, ": ", argument, "[", b, "] is ", lengths[b], ", expected >= 0");
    }
    offsets[b + 1] = offsets[b] + lengths[b];
  }
  if (offsets.back() != rows) {
    throw_shape_error(who, ": ", argument, " sum to ", offsets.back(), ", expected the ", rows,
                      " rows of the packed input");
  }
  return offsets;
}

template <typename Scalar>
class MultiHeadCore {
 public:
  MultiHeadCore(const char* who, const MultiHeadConfig& config, MultiHeadWeights<Scalar> weights,
                Executor executor)
      : m_config(config), m_executor(std::move(executor)) {
    config.validate(who);
    validate_weights(who, config, weights);
    const Index e = config.model_dim;
    const Index kv = config.kv_dim();
    // Self-attention's fused QKV GEMM needs the three weights as one matrix; a source of another
    // width keeps K and V apart from Q.
    const bool packed = config.source_features() == e;
    m_in_weight.resize(packed ? e + 2 * kv : e, e);
    m_in_weight.topRows(e) = weights.q_weight;
    if (packed) {
      m_in_weight.middleRows(e, kv) = weights.k_weight;
      m_in_weight.bottomRows(kv) = weights.v_weight;
    } else {
      m_kv_weight.resize(2 * kv, config.source_features());
      m_kv_weight << weights.k_weight, weights.v_weight;
    }
    if (config.bias) {
      m_in_bias.resize(e + 2 * kv);
      m_in_bias << weights.q_bias, weights.k_bias, weights.v_bias;
    }
    m_out_weight = std::move(weights.out_weight);
    m_out_bias = std::move(weights.out_bias);
  }

  const MultiHeadConfig& config() const { return m_config; }

  /// x (n, E) -> [Q | K | V] (n, E + 2·kv_dim), one GEMM. Precondition: source_dim is E.
  Matrix<Scalar> project_queries_keys_values(const ConstMatrixRef<Scalar>& x) const {
    Matrix<Scalar> qkv(x.rows(), m_in_weight.rows());
    linear(x, m_in_weight, m_in_bias, qkv);
    return qkv;
  }

  /// x (n, E) -> Q (n, E).
  Matrix<Scalar> project_queries(const ConstMatrixRef<Scalar>& x) const {
    const Index e = m_config.model_dim;
    Matrix<Scalar> q(x.rows(), e);
    linear(x, m_in_weight.topRows(e), in_bias_segment(0, e), q);
    return q;
  }

  /// source (m, S) -> [K | V] (m, 2·kv_dim), one GEMM.
  Matrix<Scalar> project_keys_values(const ConstMatrixRef<Scalar>& source) const {
    const Index e = m_config.model_dim;
    const Index kv = m_config.kv_dim();
    Matrix<Scalar> kv_rows(source.rows(), 2 * kv);
    const auto bias = in_bias_segment(e, 2 * kv);
    if (m_kv_weight.size() != 0) {
      linear(source, m_kv_weight, bias, kv_rows);
    } else {
      linear(source, m_in_weight.bottomRows(2 * kv), bias, kv_rows);
    }
    return kv_rows;
  }

  /// Checks that the mask fits the packed sequences: explicit matrices and a key length describe
  /// one sequence (a packed batch carries its sequences' lengths already).
  void check_mask(const char* who, const Mask& mask, const std::vector<Index>& query_lengths,
                  const std::vector<Index>& key_lengths) const {
    if (!mask.has_explicit() && !mask.has_key_length()) return;
    if (query_lengths.size() != 1) {
      throw_shape_error(who, ": ",
                        mask.has_explicit() ? "an explicit keep/bias mask" : "a key-length mask",
                        " describes one sequence, but the batch has ", query_lengths.size(),
                        " sequences; use one call per sequence");
    }
    mask.check_shape(who, query_lengths[0], key_lengths[0]);
  }

  /// Attention of every packed sequence b (queries q_lengths[b], keys kv_lengths[b]) over per-head
  /// views q (n, E), k and v (m, kv_dim), followed by the output projection -> (n, E).
  /// Extras (log-sum-exp, weights) need a single sequence.
  /// Preconditions: lengths validated, of equal count, mask checked.
  Matrix<Scalar> attend_and_project(const char* who, const ConstMatrixView<Scalar>& q,
                                    const ConstMatrixView<Scalar>& k,
                                    const ConstMatrixView<Scalar>& v,
                                    const std::vector<Index>& q_offsets,
                                    const std::vector<Index>& kv_offsets, const Mask& mask,
                                    const AttentionExtras<Scalar>& extras = {}) const {
    ATTN_ASSERT(q_offsets.size() == kv_offsets.size());
    const bool wants_extras = extras.log_sum_exp != nullptr || extras.weights != nullptr;
    if (wants_extras && q_offsets.size() != 2) {
      throw_shape_error(who,
                        ": attention extras (log_sum_exp, weights) describe one sequence, but "
                        "the batch has ",
                        q_offsets.size() - 1, " sequences");
    }
    const Index e = m_config.model_dim;
    Matrix<Scalar> heads(q.rows(), e);
    AttentionOptions options;
    options.num_heads = m_config.num_heads;
    options.num_kv_heads = m_config.kv_heads();
    options.executor = m_executor;
    for (std::size_t b = 0; b + 1 < q_offsets.size(); ++b) {
      const Index q0 = q_offsets[b], rows = q_offsets[b + 1] - q0;
      const Index k0 = kv_offsets[b], keys = kv_offsets[b + 1] - k0;
      const ConstMatrixRef<Scalar> q_b = q.middleRows(q0, rows);
      const ConstMatrixRef<Scalar> k_b = k.middleRows(k0, keys);
      const ConstMatrixRef<Scalar> v_b = v.middleRows(k0, keys);
      MatrixRef<Scalar> out_b = heads.middleRows(q0, rows);
      run_attention(make_problem<Scalar>(who, q_b, k_b, v_b, out_b, mask, options, extras), mask,
                    m_executor);
    }
    if (extras.weights != nullptr && extras.average_heads) {
      average_head_weights(*extras.weights, m_config.num_heads);
    }
    Matrix<Scalar> y(q.rows(), e);
    linear(ConstMatrixRef<Scalar>(heads), m_out_weight, m_out_bias, y);
    return y;
  }

 private:
  Eigen::VectorBlock<const Vector<Scalar>> in_bias_segment(Index start, Index size) const {
    return m_config.bias ? m_in_bias.segment(start, size) : m_in_bias.segment(0, 0);
  }

  MultiHeadConfig m_config;
  Matrix<Scalar> m_in_weight;   // rows [Wq; Wk; Wv] when source_dim = E, else Wq only
  Matrix<Scalar> m_kv_weight;   // rows [Wk; Wv] when source_dim ≠ E, else empty
  Vector<Scalar> m_in_bias;     // [bq; bk; bv], or empty without bias
  Matrix<Scalar> m_out_weight;  // E × E
  Vector<Scalar> m_out_bias;    // E, or empty
  Executor m_executor;
};

}  // namespace attn::detail
