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
#include "scaled_dot_product.hpp"
#include "types.hpp"
#include "workspace.hpp"

namespace attn {

/// Multi-head self-attention, as torch.nn.MultiheadAttention(x, x, x):
/// \f$y = \mathrm{concat}_h\big(\mathrm{softmax}(Q_h K_{g(h)}^\top/\sqrt{d} + \mathrm{mask})V_{g(h)}\big) W_o^\top + b_o\f$
/// with Q = x·Wqᵀ + bq, K = x·Wkᵀ + bk, V = x·Wvᵀ + bv computed in one GEMM, and g(h) the kv head
/// of query head h (grouped-query attention when num_kv_heads < num_heads). The attention itself
/// is scaled_dot_product_attention_into on the projections' head blocks.
///
/// Immutable after construction: one instance may be called from many threads at once.
///
/// Every call has an `attend_into` form that writes into caller storage `out` (n, E) and takes the
/// per-call MultiHeadOptions right after the mask, as scaled_dot_product_attention_into does; the
/// operator() forms return a new matrix and take the options last. With a Workspace in the
/// options, a decode step allocates nothing after the first (see MultiHeadOptions::workspace).
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
/// // Decoding into storage of your own, with scratch kept between steps:
/// attn::KVCache<float> cache = self_attn.make_cache(/*capacity*/ 1024);
/// attn::Workspace workspace;
/// attn::MultiHeadOptions options;
/// options.workspace = &workspace;
/// attn::Matrix<float> step(1, 64);
/// self_attn.attend_into(x.row(0), cache, step, attn::Mask::causal(), options);
/// \endcode
template <typename Scalar_>
class SelfAttention {
  static_assert(detail::is_supported_scalar<Scalar_>,
                "attn::SelfAttention: Scalar must be float or double");

 public:
  using Scalar = Scalar_;

  /// \param config  model_dim E, num_heads, num_kv_heads, bias; source_dim must be 0 or E.
  /// \param weights PyTorch layout (see MultiHeadWeights); copied into the functor.
  /// \param executor where the kernel's work items run unless a call's options name another
  ///                 (empty: default_executor).
  /// \throws ShapeError if the config is inconsistent or a weight has the wrong shape.
  SelfAttention(const MultiHeadConfig& config, MultiHeadWeights<Scalar> weights,
                Executor executor = {})
      : m_core("SelfAttention", checked(config), std::move(weights), std::move(executor)) {}

  /// Self-attention over one sequence, written into out.
  /// \param x       In: (L, E), any Eigen expression of Scalar; row-major storage is read in
  ///                place, anything else is evaluated once (into a new matrix).
  /// \param out     Out: (L, E), row-major storage (a matrix, a block of rows or columns).
  /// \param mask    Structured or explicit (L × L) mask.
  /// \param options scale, softcap, executor, workspace (see MultiHeadOptions).
  /// \param extras  Out, optional: log-sum-exp (L × H) and attention weights (see
  ///                AttentionExtras).
  /// \throws ShapeError if x.cols() ≠ E, out is not L × E, the mask is not L × L, or the options'
  ///         scale or softcap are invalid; out is then untouched.
  template <typename Derived, typename M = Mask,
            typename = std::enable_if_t<detail::is_mask_argument<M>>>
  void attend_into(const Eigen::MatrixBase<Derived>& x, MatrixRef<Scalar> out, const M& mask = M(),
                   const MultiHeadOptions& options = {},
                   const AttentionExtras<Scalar>& extras = {}) const {
    check_input(x);
    attend_packed(x, detail::SequenceOffsets(x.rows()), out, mask, options, extras);
  }

  /// Self-attention over a batch of sequences packed row-wise, written into out (x.rows(), E);
  /// see operator()(x, lengths, mask, options).
  template <typename Derived, typename M = Mask,
            typename = std::enable_if_t<detail::is_mask_argument<M>>>
  void attend_into(const Eigen::MatrixBase<Derived>& x, const std::vector<Index>& lengths,
                   MatrixRef<Scalar> out, const M& mask = M(),
                   const MultiHeadOptions& options = {}) const {
    check_input(x);
    const std::vector<Index> offsets = detail::sequence_offsets(who, "lengths", lengths, x.rows());
    attend_packed(x, detail::SequenceOffsets(offsets), out, mask, options, {});
  }

  /// Incremental self-attention written into out (n, E): appends the keys and values of the new
  /// rows x (n, E) to the cache, then lets the new rows attend over everything cached
  /// (m = cache.size() afterwards). One row per call is a decoding step; many rows are a chunk of
  /// prefill. The default mask is causal, aligned bottom-right, so row i of x sees the m − n
  /// cached positions before the chunk and the chunk's rows up to itself;
  /// `Mask::causal() & Mask::window(w, 0)` reads only the last w + 1 positions.
  ///
  /// With options.workspace and serial_executor, a step allocates nothing once an earlier step has
  /// sized the workspace: the projections, the heads' results and the kernel's scratch all live
  /// in it. (A step over many keys splits them into parts whose number
  /// grows with the cache; the first step sizes the buffer for the parts' results for the
  /// cache's whole capacity.)
  /// \param cache In/out: made by make_cache (or of width num_kv_heads·head_dim), in any storage
  ///              (see KVCache): the new keys and values are rounded to it once, and the kernel
  ///              reads it converting in registers.
  /// \throws CapacityError if the rows do not fit, ShapeError if x, out or the cache have the
  ///         wrong shape, an explicit mask is not n × m, a float call's double bias exceeds float's
  ///         range, the options' scale or softcap are invalid, or a new key or value does not fit
  ///         the cache's storage. Every check is made before the cache is appended to: on a throw,
  ///         the cache and out are unchanged.
  template <typename Derived, typename Storage, typename M = Mask,
            typename = std::enable_if_t<detail::is_mask_argument<M>>>
  void attend_into(const Eigen::MatrixBase<Derived>& x, KVCache<Scalar, Storage>& cache,
                   MatrixRef<Scalar> out, const M& mask = Mask::causal(),
                   const MultiHeadOptions& options = {},
                   const AttentionExtras<Scalar>& extras = {}) const {
    const MultiHeadConfig& cfg = m_core.config();
    check_input(x);
    if (cache.width() != cfg.kv_dim()) {
      detail::throw_shape_error(who, ": cache width is ", cache.width(),
                                ", expected num_kv_heads*head_dim = ", cfg.kv_dim());
    }
    if constexpr (std::is_same_v<Storage, qint8>) {
      if (cache.keys().group() != cfg.head_dim()) {
        detail::throw_shape_error(who, ": the qint8 cache has groups of ", cache.keys().group(),
                                  ", expected one head's row, head_dim = ", cfg.head_dim(),
                                  " (make it with make_cache)");
      }
    }
    cache.check_room(who, x.rows());
    m_core.check_out(who, "x", out, x.rows());
    const AttentionOptions kernel = m_core.kernel_options(options);
    const detail::SequenceOffsets queries(x.rows()), keys(cache.size() + x.rows());
    m_core.check_call(who, queries, keys, mask, kernel, extras);
    // Every check has passed: only now may the cache change.
    if (kernel.workspace != nullptr && x.rows() < detail::PacketTraits<Scalar>::size) {
      kernel.workspace->shared(detail::decode_partial_bytes<Scalar>(cache.capacity(), cfg.num_heads,
                                                                    x.rows(), cfg.head_dim()));
    }
    Matrix<Scalar> own;
    const MatrixView<Scalar> qkv = project(x, kernel.workspace, own);
    const ConstMatrixRef<Scalar> all(qkv);
    const Index e = cfg.model_dim, kv = cfg.kv_dim();
    cache.append(detail::column_block(all, e, kv), detail::column_block(all, e + kv, kv));
    m_core.attend_and_project(detail::column_block(all, 0, e), cache.keys(), cache.values(),
                              queries, keys, mask, kernel, extras, out);
  }

  /// Self-attention over one sequence.
  /// \param x       In: (L, E), any Eigen expression of Scalar.
  /// \param mask    Structured or explicit (L × L) mask.
  /// \param extras  Out, optional: log-sum-exp (L × H) and attention weights (see
  ///                AttentionExtras).
  /// \param options scale, softcap, executor, workspace (see MultiHeadOptions).
  /// \return (L, E).
  /// \throws ShapeError if x.cols() ≠ E, the mask is not L × L, or the options are invalid.
  template <typename Derived, typename M = Mask,
            typename = std::enable_if_t<detail::is_mask_argument<M>>>
  Matrix<Scalar> operator()(const Eigen::MatrixBase<Derived>& x, const M& mask = M(),
                            const AttentionExtras<Scalar>& extras = {},
                            const MultiHeadOptions& options = {}) const {
    Matrix<Scalar> y(x.rows(), m_core.config().model_dim);
    attend_into(x, y, mask, options, extras);
    return y;
  }

  /// Self-attention over a batch of sequences packed row-wise, x = [x_0; x_1; …], with
  /// lengths[b] rows each; no token attends across a sequence boundary and no padding is computed.
  /// \param mask a structured mask, applied to every sequence (explicit matrices only with one
  ///             sequence).
  /// \throws ShapeError if the lengths are negative or do not sum to x.rows().
  template <typename Derived, typename M = Mask,
            typename = std::enable_if_t<detail::is_mask_argument<M>>>
  Matrix<Scalar> operator()(const Eigen::MatrixBase<Derived>& x, const std::vector<Index>& lengths,
                            const M& mask = M(), const MultiHeadOptions& options = {}) const {
    Matrix<Scalar> y(x.rows(), m_core.config().model_dim);
    attend_into(x, lengths, y, mask, options);
    return y;
  }

  /// Incremental self-attention, returning the new rows' outputs (n, E); see
  /// attend_into(x, cache, out, mask, options, extras).
  template <typename Derived, typename Storage, typename M = Mask,
            typename = std::enable_if_t<detail::is_mask_argument<M>>>
  Matrix<Scalar> operator()(const Eigen::MatrixBase<Derived>& x, KVCache<Scalar, Storage>& cache,
                            const M& mask = Mask::causal(),
                            const AttentionExtras<Scalar>& extras = {},
                            const MultiHeadOptions& options = {}) const {
    Matrix<Scalar> y(x.rows(), m_core.config().model_dim);
    attend_into(x, cache, y, mask, options, extras);
    return y;
  }

  /// An empty cache of this layer's width (num_kv_heads·head_dim) for `capacity` positions, kept
  /// in `Storage` (Scalar by default; for a float layer also attn::bfloat16, attn::half or
  /// attn::qint8, see KVCache).
  template <typename Storage = Scalar>
  KVCache<Scalar, Storage> make_cache(Index capacity) const {
    return KVCache<Scalar, Storage>(capacity, m_core.config().kv_dim(), m_core.config().head_dim());
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

  /// x (n, E) -> [Q | K | V] (n, E + 2·kv_dim) in the workspace's projection buffer, or in `own`.
  template <typename Derived>
  MatrixView<Scalar> project(const Eigen::MatrixBase<Derived>& x, Workspace* workspace,
                             Matrix<Scalar>& own) const {
    const MatrixView<Scalar> qkv = detail::MultiHeadCore<Scalar>::scratch(
        workspace, Workspace::Buffer::projections, x.rows(), m_core.projected_width(), own);
    m_core.project_queries_keys_values(x, qkv);
    return qkv;
  }

  /// The sequences of x (already checked against E) attend within themselves, into out.
  template <typename Derived, typename M = Mask,
            typename = std::enable_if_t<detail::is_mask_argument<M>>>
  void attend_packed(const Eigen::MatrixBase<Derived>& x, const detail::SequenceOffsets& offsets,
                     MatrixRef<Scalar>& out, const M& mask, const MultiHeadOptions& options,
                     const AttentionExtras<Scalar>& extras) const {
    m_core.check_out(who, "x", out, x.rows());
    const AttentionOptions kernel = m_core.kernel_options(options);
    m_core.check_call(who, offsets, offsets, mask, kernel, extras);
    Matrix<Scalar> own;
    const MatrixView<Scalar> qkv = project(x, kernel.workspace, own);
    // Per-head inputs are column blocks of the one projection: views, no copies.
    const ConstMatrixRef<Scalar> all(qkv);
    const Index e = m_core.config().model_dim, kv = m_core.config().kv_dim();
    m_core.attend_and_project(detail::column_block(all, 0, e), detail::column_block(all, e, kv),
                              detail::column_block(all, e + kv, kv), offsets, offsets, mask, kernel,
                              extras, out);
  }

  static constexpr const char* who = "SelfAttention";
  detail::MultiHeadCore<Scalar> m_core;
};

using SelfAttentionf = SelfAttention<float>;
using SelfAttentiond = SelfAttention<double>;

}  // namespace attn
