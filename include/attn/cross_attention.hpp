// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors
#pragma once

/// \file cross_attention.hpp
/// attn::CrossAttention: multi-head attention whose queries come from the target (the sequence
/// being produced) and whose keys AND values both come from the source (the context).

#include <cstddef>
#include <type_traits>
#include <utility>
#include <vector>

#include "detail/multi_head_core.hpp"
#include "detail/stored_matrix.hpp"
#include "error.hpp"
#include "mask.hpp"
#include "multi_head.hpp"
#include "parallel.hpp"
#include "scaled_dot_product.hpp"
#include "storage.hpp"
#include "types.hpp"
#include "workspace.hpp"

namespace attn {

template <typename Scalar_>
class CrossAttention;

/// A source projected to keys and values once, to be attended to by many target calls (every
/// step of a decoder). Made by CrossAttention::remember; holds its own copy, so it outlives the
/// source it was made from. Usable only with a functor of the same config. The keys and values
/// are kept in `Storage` (see KVCache: Scalar, or for float also attn::bfloat16, attn::half or
/// attn::qint8), rounded once when remembered.
///
/// Example (examples/reference_layers.cpp, compiled and run as a test):
/// \snippet reference_layers.cpp cross_attention
template <typename Scalar_, typename Storage_ = Scalar_>
class CrossAttentionMemory {
 public:
  /// The type of the layer's computations (float or double).
  using Scalar = Scalar_;
  /// The type keys and values are kept in.
  using Storage = Storage_;
  /// What keys() and values() return.
  using View = StorageView<Storage>;

  /// Source rows (all sequences).
  Index rows() const { return m_keys.rows(); }
  /// Rows of each packed source sequence.
  const std::vector<Index>& lengths() const { return m_lengths; }
  /// Projected keys (m, kv_dim), heads as column blocks.
  View keys() const { return m_keys.view(rows()); }
  /// Projected values (m, kv_dim), heads as column blocks.
  View values() const { return m_values.view(rows()); }
  /// Bytes of storage for the keys and values.
  std::size_t bytes() const { return m_keys.bytes() + m_values.bytes(); }

 private:
  friend class CrossAttention<Scalar>;
  CrossAttentionMemory(detail::StoredMatrix<Scalar, Storage> keys,
                       detail::StoredMatrix<Scalar, Storage> values, std::vector<Index> lengths,
                       std::vector<Index> offsets)
      : m_keys(std::move(keys)),
        m_values(std::move(values)),
        m_lengths(std::move(lengths)),
        m_offsets(std::move(offsets)) {}
  Index kv_dim() const { return m_keys.cols(); }

  detail::StoredMatrix<Scalar, Storage> m_keys;  // (m, kv_dim)
  detail::StoredMatrix<Scalar, Storage> m_values;
  std::vector<Index> m_lengths;
  std::vector<Index> m_offsets;
};

/// Multi-head cross-attention, as torch.nn.MultiheadAttention(target, source, source) with
/// kdim = vdim = source_dim:
/// \f$y = \mathrm{concat}_h\big(\mathrm{softmax}(Q_h K_{g(h)}^\top/\sqrt{d} + \mathrm{mask})V_{g(h)}\big) W_o^\top + b_o\f$
/// with Q = target·Wqᵀ + bq from the target (n × E), and K = source·Wkᵀ + bk and
/// V = source·Wvᵀ + bv both from the source (m × S). The attention itself is
/// scaled_dot_product_attention_into on the projections' head blocks.
///
/// Immutable after construction: one instance may be called from many threads at once.
///
/// Every call has an `attend_into` form that writes into caller storage `out` (n, E) and takes the
/// per-call MultiHeadOptions right after the mask, as scaled_dot_product_attention_into does; the
/// operator() forms return a new matrix and take the options last. With a Workspace in the
/// options, a step over a remembered memory allocates nothing after the first.
///
/// \tparam Scalar_ float or double.
///
/// Example (examples/reference_layers.cpp, compiled and run as a test):
/// \snippet reference_layers.cpp cross_attention
template <typename Scalar_>
class CrossAttention {
  static_assert(detail::is_supported_scalar<Scalar_>,
                "attn::CrossAttention: Scalar must be float or double");

 public:
  /// The type of the computations (float or double).
  using Scalar = Scalar_;
  /// A remembered source with keys and values in Storage.
  template <typename Storage = Scalar>
  using MemoryIn = CrossAttentionMemory<Scalar, Storage>;
  /// A remembered source in Scalar.
  using Memory = MemoryIn<Scalar>;

  /// \param config  model_dim E, num_heads, num_kv_heads, source_dim S (0 means E), bias; no
  ///                rotary (positions of two different sequences have no common origin).
  /// \param weights PyTorch layout (see MultiHeadWeights); copied into the functor.
  /// \param executor where the kernel's work items run unless a call's options name another
  ///                 (empty: default_executor).
  /// \throws ShapeError if the config is inconsistent, asks for rotary embeddings, or a weight
  ///         has the wrong shape.
  CrossAttention(const MultiHeadConfig& config, MultiHeadWeights<Scalar> weights,
                 Executor executor = {})
      : m_core("CrossAttention", checked(config), std::move(weights), std::move(executor)) {}

  /// Projects a source (m, S) to keys and values once, kept in Storage (Scalar by default;
  /// e.g. `cross.remember<attn::bfloat16>(source)` keeps half the bytes).
  /// \throws ShapeError if source.cols() ≠ S, or if a projected key or value does not fit Storage
  ///         (see KVCache::append).
  template <typename Storage = Scalar, typename Derived>
  MemoryIn<Storage> remember(const Eigen::MatrixBase<Derived>& source) const {
    return remember<Storage>(source, std::vector<Index>{source.rows()});
  }

  /// Projects a batch of sources packed row-wise, lengths[b] rows each.
  /// \throws ShapeError if source.cols() ≠ S or the lengths do not sum to source.rows().
  template <typename Storage = Scalar, typename Derived>
  MemoryIn<Storage> remember(const Eigen::MatrixBase<Derived>& source,
                             const std::vector<Index>& lengths) const {
    static_assert(
        std::is_same_v<typename Derived::Scalar, Scalar>,
        "attn::CrossAttention: source must have the functor's Scalar; use .cast<Scalar>()");
    const MultiHeadConfig& cfg = m_core.config();
    if (source.cols() != cfg.source_features()) {
      detail::throw_shape_error(who, ": source is ", detail::shape_string(source),
                                ", expected source.cols() = source_dim ", cfg.source_features());
    }
    std::vector<Index> offsets =
        detail::sequence_offsets(who, "source_lengths", lengths, source.rows());
    const Matrix<Scalar> keys_values = m_core.project_keys_values(source);
    const ConstMatrixRef<Scalar> all(keys_values);
    const Index kv = cfg.kv_dim();
    detail::StoredMatrix<Scalar, Storage> keys(source.rows(), kv, cfg.head_dim());
    detail::StoredMatrix<Scalar, Storage> values(source.rows(), kv, cfg.head_dim());
    keys.check(who, "projected key", detail::column_block(all, 0, kv));
    values.check(who, "projected value", detail::column_block(all, kv, kv));
    keys.assign_rows(0, detail::column_block(all, 0, kv));
    values.assign_rows(0, detail::column_block(all, kv, kv));
    return MemoryIn<Storage>(std::move(keys), std::move(values), lengths, std::move(offsets));
  }

  /// Cross-attention of a target (n, E) over a remembered source, written into out: costs only
  /// the query projection, the kernel and the output projection. With options.workspace and
  /// serial_executor, a call allocates nothing once an earlier call of as many target rows has
  /// sized the workspace.
  /// \param target  In: (n, E), any Eigen expression of Scalar; row-major storage is read in
  ///                place, anything else is evaluated once (into a new matrix).
  /// \param memory  made by remember() of this functor (or one of the same config), of one source.
  /// \param out     Out: (n, E), row-major storage (a matrix, a block of rows or columns).
  /// \param mask    structured or explicit (n × m); causal is bottom-right aligned.
  /// \param options scale, softcap, executor, workspace (see MultiHeadOptions).
  /// \param extras  Out, optional: log-sum-exp (n × H) and attention weights over the source
  ///                (see AttentionExtras), e.g. for an alignment picture.
  /// \throws ShapeError if target.cols() ≠ E, out is not n × E, the memory is of another width or
  ///         holds a batch, the mask is not n × m, or the options' scale or softcap are invalid;
  ///         out is then untouched.
  template <typename DT, typename Storage, typename M = Mask,
            typename = std::enable_if_t<detail::is_mask_argument<M>>>
  void attend_into(const Eigen::MatrixBase<DT>& target, const MemoryIn<Storage>& memory,
                   MatrixRef<Scalar> out, const M& mask = M(), const MultiHeadOptions& options = {},
                   const AttentionExtras<Scalar>& extras = {}) const {
    check_target(target);
    attend(target, detail::SequenceOffsets(target.rows()), memory, out, mask, options, extras);
  }

  /// Cross-attention of a target (n, E) over a source (m, S), written into out (n, E); projects
  /// the source first (see remember).
  template <typename DT, typename DS, typename M = Mask,
            typename = std::enable_if_t<detail::is_mask_argument<M>>>
  void attend_into(const Eigen::MatrixBase<DT>& target, const Eigen::MatrixBase<DS>& source,
                   MatrixRef<Scalar> out, const M& mask = M(), const MultiHeadOptions& options = {},
                   const AttentionExtras<Scalar>& extras = {}) const {
    attend_into(target, remember(source), out, mask, options, extras);
  }

  /// Batched cross-attention over a remembered batch of sources, written into out
  /// (target.rows(), E); see operator()(target, target_lengths, source, source_lengths, mask).
  template <typename DT, typename Storage, typename M = Mask,
            typename = std::enable_if_t<detail::is_mask_argument<M>>>
  void attend_into(const Eigen::MatrixBase<DT>& target, const std::vector<Index>& target_lengths,
                   const MemoryIn<Storage>& memory, MatrixRef<Scalar> out, const M& mask = M(),
                   const MultiHeadOptions& options = {}) const {
    check_target(target);
    const std::vector<Index> offsets =
        detail::sequence_offsets(who, "target_lengths", target_lengths, target.rows());
    attend(target, detail::SequenceOffsets(offsets), memory, out, mask, options, {});
  }

  /// Batched cross-attention written into out (target.rows(), E).
  template <typename DT, typename DS, typename M = Mask,
            typename = std::enable_if_t<detail::is_mask_argument<M>>>
  void attend_into(const Eigen::MatrixBase<DT>& target, const std::vector<Index>& target_lengths,
                   const Eigen::MatrixBase<DS>& source, const std::vector<Index>& source_lengths,
                   MatrixRef<Scalar> out, const M& mask = M(),
                   const MultiHeadOptions& options = {}) const {
    attend_into(target, target_lengths, remember(source, source_lengths), out, mask, options);
  }

  /// Cross-attention of a target (n, E) over a source (m, S).
  /// \param mask structured or explicit (n × m); causal is bottom-right aligned.
  /// \return (n, E).
  /// \throws ShapeError if target.cols() ≠ E, source.cols() ≠ S, the mask is not n × m, or the
  ///         options are invalid.
  template <typename DT, typename DS, typename M = Mask,
            typename = std::enable_if_t<detail::is_mask_argument<M>>>
  Matrix<Scalar> operator()(const Eigen::MatrixBase<DT>& target,
                            const Eigen::MatrixBase<DS>& source, const M& mask = M(),
                            const AttentionExtras<Scalar>& extras = {},
                            const MultiHeadOptions& options = {}) const {
    Matrix<Scalar> y(target.rows(), m_core.config().model_dim);
    attend_into(target, source, y, mask, options, extras);
    return y;
  }

  /// Cross-attention of a target (n, E) over a remembered source; see
  /// attend_into(target, memory, out, mask, options, extras).
  template <typename DT, typename Storage, typename M = Mask,
            typename = std::enable_if_t<detail::is_mask_argument<M>>>
  Matrix<Scalar> operator()(const Eigen::MatrixBase<DT>& target, const MemoryIn<Storage>& memory,
                            const M& mask = M(), const AttentionExtras<Scalar>& extras = {},
                            const MultiHeadOptions& options = {}) const {
    Matrix<Scalar> y(target.rows(), m_core.config().model_dim);
    attend_into(target, memory, y, mask, options, extras);
    return y;
  }

  /// Batched cross-attention: target sequence b (target_lengths[b] rows, packed row-wise) attends
  /// only to source sequence b (source_lengths[b] rows).
  /// \throws ShapeError if the lengths disagree with the rows or with each other in count.
  template <typename DT, typename DS, typename M = Mask,
            typename = std::enable_if_t<detail::is_mask_argument<M>>>
  Matrix<Scalar> operator()(const Eigen::MatrixBase<DT>& target,
                            const std::vector<Index>& target_lengths,
                            const Eigen::MatrixBase<DS>& source,
                            const std::vector<Index>& source_lengths, const M& mask = M(),
                            const MultiHeadOptions& options = {}) const {
    Matrix<Scalar> y(target.rows(), m_core.config().model_dim);
    attend_into(target, target_lengths, source, source_lengths, y, mask, options);
    return y;
  }

  /// Batched cross-attention over a remembered batch of sources.
  template <typename DT, typename Storage, typename M = Mask,
            typename = std::enable_if_t<detail::is_mask_argument<M>>>
  Matrix<Scalar> operator()(const Eigen::MatrixBase<DT>& target,
                            const std::vector<Index>& target_lengths,
                            const MemoryIn<Storage>& memory, const M& mask = M(),
                            const MultiHeadOptions& options = {}) const {
    Matrix<Scalar> y(target.rows(), m_core.config().model_dim);
    attend_into(target, target_lengths, memory, y, mask, options);
    return y;
  }

  /// The layer's shape, as constructed.
  const MultiHeadConfig& config() const { return m_core.config(); }

 private:
  static const MultiHeadConfig& checked(const MultiHeadConfig& config) {
    if (config.rotary) {
      detail::throw_shape_error(
          "CrossAttention: config.rotary is set, expected none: rotary "
          "embeddings encode positions within one sequence (use them in "
          "the decoder's SelfAttention)");
    }
    return config;
  }

  template <typename DT>
  void check_target(const Eigen::MatrixBase<DT>& target) const {
    static_assert(
        std::is_same_v<typename DT::Scalar, Scalar>,
        "attn::CrossAttention: target must have the functor's Scalar; use .cast<Scalar>()");
    if (target.cols() != m_core.config().model_dim) {
      detail::throw_shape_error(who, ": target is ", detail::shape_string(target),
                                ", expected target.cols() = model_dim ", m_core.config().model_dim);
    }
  }

  /// The target's sequences (target already checked) attend over the memory's, into out.
  template <typename DT, typename Storage, typename M = Mask,
            typename = std::enable_if_t<detail::is_mask_argument<M>>>
  void attend(const Eigen::MatrixBase<DT>& target, const detail::SequenceOffsets& queries,
              const MemoryIn<Storage>& memory, MatrixRef<Scalar>& out, const M& mask,
              const MultiHeadOptions& options, const AttentionExtras<Scalar>& extras) const {
    const MultiHeadConfig& cfg = m_core.config();
    if (memory.kv_dim() != cfg.kv_dim()) {
      detail::throw_shape_error(who, ": memory holds keys and values of width ", memory.kv_dim(),
                                ", expected kv_dim ", cfg.kv_dim(),
                                " (a memory of another functor?)");
    }
    if (queries.count() != memory.lengths().size()) {
      detail::throw_shape_error(who, ": target_lengths has ", queries.count(),
                                " sequences, expected the ", memory.lengths().size(),
                                " of source_lengths");
    }
    m_core.check_out(who, "target", out, target.rows());
    const AttentionOptions kernel = m_core.kernel_options(options);
    const detail::SequenceOffsets keys(memory.m_offsets);
    m_core.check_call(who, queries, keys, mask, kernel, extras);
    Matrix<Scalar> own;
    const MatrixView<Scalar> q = detail::MultiHeadCore<Scalar>::scratch(
        kernel.workspace, Workspace::Buffer::projections, target.rows(), cfg.model_dim, own);
    m_core.project_queries(target, q);
    m_core.attend_and_project(detail::column_block(ConstMatrixRef<Scalar>(q), 0, cfg.model_dim),
                              memory.keys(), memory.values(), queries, keys, mask, kernel, extras,
                              out);
  }

  friend struct detail::LayerAccess;  // attn/mpi.hpp's sequence-parallel layers
  static constexpr const char* who = "CrossAttention";
  detail::MultiHeadCore<Scalar> m_core;
};

/// CrossAttention in float.
using CrossAttentionf = CrossAttention<float>;
/// CrossAttention in double.
using CrossAttentiond = CrossAttention<double>;

}  // namespace attn
