// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors
#pragma once

/// \file self_attention.hpp
/// attn::SelfAttention: multi-head attention whose queries, keys and values all come from one
/// sequence.

#include <type_traits>
#include <vector>

#include "detail/multi_head_core.hpp"
#include "error.hpp"
#include "kv_cache.hpp"
#include "mask.hpp"
#include "multi_head.hpp"
#include "parallel.hpp"
#include "types.hpp"

namespace attn {

/// Multi-head self-attention, as torch.nn.MultiheadAttention(x, x, x):
/// \f$y = \mathrm{concat}_h\big(\mathrm{softmax}(Q_h K_{g(h)}^\top/\sqrt{d} + \mathrm{mask})V_{g(h)}\big) W_o^\top + b_o\f$
/// with Q = x·Wqᵀ + bq, K = x·Wkᵀ + bk, V = x·Wvᵀ + bv computed in one GEMM, and g(h) the kv head
/// of query head h (grouped-query attention when num_kv_heads < num_heads).
///
/// Immutable after construction: one instance may be called from many threads at once.
///
/// \tparam Scalar_ float or double.
///
/// \code
/// attn::MultiHeadConfig cfg{/*model_dim*/ 64, /*num_heads*/ 4};
/// auto w = attn::MultiHeadWeights<float>::from_pytorch(in_proj_weight, in_proj_bias,
///                                                       out_proj_weight, out_proj_bias);
/// attn::SelfAttention<float> self_attn(cfg, w);
/// attn::Matrix<float> x = attn::Matrix<float>::Random(10, 64);      // 10 tokens
/// attn::Matrix<float> y = self_attn(x, attn::Mask::causal());       // 10 × 64
/// // Two sequences of 4 and 6 tokens packed row-wise, attending only within themselves:
/// attn::Matrix<float> y2 = self_attn(x, {4, 6}, attn::Mask::causal());
/// \endcode
template <typename Scalar_>
class SelfAttention {
  static_assert(detail::is_supported_scalar<Scalar_>,
                "attn::SelfAttention: Scalar must be float or double");

 public:
  using Scalar = Scalar_;

  /// \param config  model_dim E, num_heads, num_kv_heads, bias; source_dim must be 0 or E.
  /// \param weights PyTorch layout (see MultiHeadWeights); copied into the functor.
  /// \param executor where the kernel's work items run (empty: default_executor).
  /// \throws ShapeError if the config is inconsistent or a weight has the wrong shape.
  SelfAttention(const MultiHeadConfig& config, MultiHeadWeights<Scalar> weights,
                Executor executor = {})
      : m_core("SelfAttention", checked(config), std::move(weights), std::move(executor)) {}

  /// Self-attention over one sequence.
  /// \param x      In: (L, E), any Eigen expression of Scalar.
  /// \param mask   Structured or explicit (L × L) mask.
  /// \param extras Out, optional: log-sum-exp (L × H) and attention weights (see AttentionExtras).
  /// \return (L, E).
  /// \throws ShapeError if x.cols() ≠ E or the mask is not L × L.
  template <typename Derived>
  Matrix<Scalar> operator()(const Eigen::MatrixBase<Derived>& x, const Mask& mask = Mask(),
                            const AttentionExtras<Scalar>& extras = {}) const {
    return attend(x, std::vector<Index>{x.rows()}, mask, extras);
  }

  /// Self-attention over a batch of sequences packed row-wise, x = [x_0; x_1; …], with
  /// lengths[b] rows each; no token attends across a sequence boundary and no padding is computed.
  /// \param mask a structured mask, applied to every sequence (explicit matrices only with one
  ///             sequence).
  /// \throws ShapeError if the lengths are negative or do not sum to x.rows().
  template <typename Derived>
  Matrix<Scalar> operator()(const Eigen::MatrixBase<Derived>& x, const std::vector<Index>& lengths,
                            const Mask& mask = Mask()) const {
    return attend(x, lengths, mask, {});
  }

  /// Incremental self-attention: appends the keys and values of the new rows x (n, E) to the
  /// cache, then lets the new rows attend over everything cached (m = cache.size() afterwards).
  /// One row per call is a decoding step; many rows are a chunk of prefill. The default mask is
  /// causal, aligned bottom-right, so row i of x sees the m − n cached positions before the
  /// chunk and the chunk's rows up to itself; `Mask::causal() & Mask::window(w, 0)` reads only
  /// the last w + 1 positions.
  /// \param cache In/out: made by make_cache (or of width num_kv_heads·head_dim).
  /// \throws CapacityError if the rows do not fit, ShapeError if x or the cache have the wrong
  ///         width or an explicit mask is not n × m; the cache is then unchanged.
  template <typename Derived>
  Matrix<Scalar> operator()(const Eigen::MatrixBase<Derived>& x, KVCache<Scalar>& cache,
                            const Mask& mask = Mask::causal(),
                            const AttentionExtras<Scalar>& extras = {}) const {
    const MultiHeadConfig& cfg = m_core.config();
    check_input(x);
    if (cache.width() != cfg.kv_dim()) {
      detail::throw_shape_error(who, ": cache width is ", cache.width(),
                                ", expected num_kv_heads*head_dim = ", cfg.kv_dim());
    }
    cache.check_room(who, x.rows());
    const std::vector<Index> queries{x.rows()}, keys{cache.size() + x.rows()};
    m_core.check_mask(who, mask, queries, keys);
    const Matrix<Scalar> qkv = m_core.project_queries_keys_values(x);
    const ConstMatrixRef<Scalar> all(qkv);
    const Index e = cfg.model_dim, kv = cfg.kv_dim();
    cache.append(detail::column_block(all, e, kv), detail::column_block(all, e + kv, kv));
    return m_core.attend_and_project(who, detail::column_block(all, 0, e), cache.keys(),
                                     cache.values(), {0, x.rows()}, {0, cache.size()}, mask,
                                     extras);
  }

  /// An empty cache of this layer's width (num_kv_heads·head_dim) for `capacity` positions.
  KVCache<Scalar> make_cache(Index capacity) const {
    return KVCache<Scalar>(capacity, m_core.config().kv_dim());
  }

  const MultiHeadConfig& config() const { return m_core.config(); }

 private:
  static const MultiHeadConfig& checked(const MultiHeadConfig& config) {
    if (config.source_dim != 0 && config.source_dim != config.model_dim) {
      detail::throw_shape_error("SelfAttention: config.source_dim is ", config.source_dim,
                                ", expected 0 or model_dim ", config.model_dim,
                                " (use CrossAttention for a source of another width)");
    }
    return config;
  }

  template <typename Derived>
  void check_input(const Eigen::MatrixBase<Derived>& x) const {
    static_assert(std::is_same_v<typename Derived::Scalar, Scalar>,
                  "attn::SelfAttention: x must have the functor's Scalar; use .cast<Scalar>()");
    if (x.cols() != m_core.config().model_dim) {
      detail::throw_shape_error(who, ": x is ", detail::shape_string(x),
                                ", expected x.cols() = model_dim ", m_core.config().model_dim);
    }
  }

  template <typename Derived>
  Matrix<Scalar> attend(const Eigen::MatrixBase<Derived>& x, const std::vector<Index>& lengths,
                        const Mask& mask, const AttentionExtras<Scalar>& extras) const {
    check_input(x);
    const std::vector<Index> offsets = detail::sequence_offsets(who, "lengths", lengths, x.rows());
    m_core.check_mask(who, mask, lengths, lengths);
    const Matrix<Scalar> qkv = m_core.project_queries_keys_values(x);
    // Per-head inputs are column blocks of the one projection: views, no copies.
    const ConstMatrixRef<Scalar> all(qkv);
    const Index e = m_core.config().model_dim, kv = m_core.config().kv_dim();
    return m_core.attend_and_project(
        who, detail::column_block(all, 0, e), detail::column_block(all, e, kv),
        detail::column_block(all, e + kv, kv), offsets, offsets, mask, extras);
  }

  static constexpr const char* who = "SelfAttention";
  detail::MultiHeadCore<Scalar> m_core;
};

using SelfAttentionf = SelfAttention<float>;
using SelfAttentiond = SelfAttention<double>;

}  // namespace attn
