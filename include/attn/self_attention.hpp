// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors
#pragma once

/// \file self_attention.hpp
/// attn::SelfAttention: multi-head attention whose queries, keys and values all come from one
/// sequence.

#include <string>
#include <type_traits>
#include <vector>

#include "detail/multi_head_core.hpp"
#include "error.hpp"
#include "kv_cache.hpp"
#include "mask.hpp"
#include "multi_head.hpp"
#include "paged_kv_cache.hpp"
#include "parallel.hpp"
#include "scaled_dot_product.hpp"
#include "types.hpp"
#include "workspace.hpp"

namespace attn {

namespace detail {

/// What SelfAttention's incremental forms need of where keys and values go: a KVCache.
template <typename Scalar, typename Storage>
struct ContiguousCache {
  KVCache<Scalar, Storage>& target;
  const KVCache<Scalar, Storage>& cache() const { return target; }
  Index size() const { return target.size(); }
  /// The position of the next row: every row a KVCache was given is still held.
  Index position() const { return target.size(); }
  /// The most keys a call can see (its decode's partial results are sized for them once).
  Index most_keys() const { return target.capacity(); }
  void check_room(const char* who, Index rows) const { target.check_room(who, rows); }
  template <typename K, typename V>
  void append(const K& k, const V& v) {
    target.append(k, v);
  }
  auto keys() const { return target.keys(); }
  auto values() const { return target.values(); }
};

/// … or one sequence of a PagedKVCache.
template <typename Scalar, typename Storage>
struct PagedSequence {
  PagedKVCache<Scalar, Storage>& pool;
  SequenceId id;
  const PagedKVCache<Scalar, Storage>& cache() const { return pool; }
  Index size() const { return pool.size(id); }
  Index position() const { return pool.position(id); }
  Index most_keys() const { return pool.size(id) + pool.free_pages() * pool.page_size(); }
  void check_room(const char* who, Index rows) const { pool.check_room(who, id, rows); }
  template <typename K, typename V>
  void append(const K& k, const V& v) {
    pool.append(id, k, v);
  }
  auto keys() const { return pool.keys(id); }
  auto values() const { return pool.values(id); }
};

}  // namespace detail

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
/// Example (examples/reference_layers.cpp, compiled and run as a test):
/// \snippet reference_layers.cpp self_attention
template <typename Scalar_>
class SelfAttention {
  static_assert(detail::is_supported_scalar<Scalar_>,
                "attn::SelfAttention: Scalar must be float or double");

 public:
  /// The type of the computations (float or double).
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
    detail::ContiguousCache<Scalar, Storage> target{cache};
    attend_appending(x, target, out, mask, options, extras);
  }

  /// Incremental self-attention of one sequence of a PagedKVCache, written into out (n, E): as
  /// attend_into(x, cache, …) above, with the new keys and values appended to sequence `id` of
  /// `pool` (copy-on-write of a shared last page) and the kernel reading its pages in place.
  /// \throws SequenceError if id is unknown, CapacityError if the pool has too few free pages,
  ///         and the ShapeErrors of the KVCache form; on a throw, the pool and out are unchanged.
  template <typename Derived, typename Storage, typename M = Mask,
            typename = std::enable_if_t<detail::is_mask_argument<M>>>
  void attend_into(const Eigen::MatrixBase<Derived>& x, PagedKVCache<Scalar, Storage>& pool,
                   SequenceId id, MatrixRef<Scalar> out, const M& mask = Mask::causal(),
                   const MultiHeadOptions& options = {},
                   const AttentionExtras<Scalar>& extras = {}) const {
    detail::PagedSequence<Scalar, Storage> target{pool, id};
    attend_appending(x, target, out, mask, options, extras);
  }

  /// Batched incremental self-attention: sequences ids[b] of `pool` each advance by lengths[b]
  /// rows (one for a decoding step, a few to verify draft tokens, many for a prompt), all in one
  /// call. x packs the new rows (Σ lengths, E), sequence 0 first; out (Σ lengths, E) receives
  /// theirs. Each sequence's projections, the appends, then one parallel kernel call over
  /// (sequence, key split or query block) for all of them, and each sequence's output projection.
  /// Each sequence's rows are bitwise what attend_into(its rows, pool, id, …) would give, for any
  /// thread count. (For that, the projections run per sequence, as its own call runs them: one
  /// GEMM over all B rows would read the weights once instead of B times, but round differently
  /// from a sequence's own one-row GEMV. A program that prefers the single GEMM projects the rows
  /// itself and calls scaled_dot_product_attention_batch_into, which is bitwise B separate
  /// kernel calls.)
  /// \param mask applied to every sequence, bottom-right aligned within it (structured masks and
  ///             functions of positions; an explicit matrix fits only one shape).
  /// \throws SequenceError if an id is unknown; ShapeError if lengths and ids differ in count, a
  ///         length is negative, the lengths do not sum to x.rows(), an id appears twice, or any
  ///         check of the single-sequence form fails; CapacityError if the pool has too few free
  ///         pages for all of them. Every check is made first: on a throw, the pool and out are
  ///         unchanged.
  template <typename Derived, typename Storage, typename M = Mask,
            typename = std::enable_if_t<detail::is_mask_argument<M>>>
  void attend_batch_into(const Eigen::MatrixBase<Derived>& x, const std::vector<Index>& lengths,
                         PagedKVCache<Scalar, Storage>& pool, const std::vector<SequenceId>& ids,
                         MatrixRef<Scalar> out, const M& mask = Mask::causal(),
                         const MultiHeadOptions& options = {}) const {
    const MultiHeadConfig& cfg = m_core.config();
    check_input(x);
    if (lengths.size() != ids.size()) {
      detail::throw_shape_error(who, ": ", lengths.size(), " lengths and ", ids.size(),
                                " ids, expected one length per sequence");
    }
    check_pool(pool);
    const std::vector<Index> offsets = detail::sequence_offsets(who, "lengths", lengths, x.rows());
    m_core.check_out(who, "x", out, x.rows());
    const AttentionOptions kernel = m_core.kernel_options(options);
    std::vector<Index> key_offsets(ids.size() + 1, 0);
    for (std::size_t b = 0; b < ids.size(); ++b) {
      if (!pool.contains(ids[b])) {
        throw SequenceError(std::string(who) + ": ids[" + std::to_string(b) + "] is sequence " +
                            std::to_string(ids[b]) +
                            ", which the pool does not hold (never created, or dropped)");
      }
      key_offsets[b + 1] = key_offsets[b] + pool.size(ids[b]) + lengths[b];
    }
    m_core.check_call(who, detail::SequenceOffsets(offsets), detail::SequenceOffsets(key_offsets),
                      mask, kernel, {});
    Matrix<Scalar> own;
    const MatrixView<Scalar> qkv = project(x, kernel.workspace, own, &offsets);
    for (std::size_t b = 0; b < ids.size(); ++b) {
      m_core.rotate_queries_keys(qkv, offsets[b], lengths[b], pool.position(ids[b]));
    }
    const ConstMatrixRef<Scalar> all(qkv);
    const Index e = cfg.model_dim, kv = cfg.kv_dim();
    const auto keys = detail::column_block(all, e, kv),
               values = detail::column_block(all, e + kv, kv);
    pool.check_appends(who, ids, lengths, keys, values);
    // Every check has passed: only now may the pool change.
    std::vector<PagedView<Storage>> k_views, v_views;
    k_views.reserve(ids.size());
    v_views.reserve(ids.size());
    for (std::size_t b = 0; b < ids.size(); ++b) {
      pool.append(ids[b], keys.middleRows(offsets[b], lengths[b]),
                  values.middleRows(offsets[b], lengths[b]));
    }
    for (const SequenceId id : ids) {
      k_views.push_back(pool.keys(id));
      v_views.push_back(pool.values(id));
    }
    m_core.attend_batch_and_project(detail::column_block(all, 0, e), lengths, k_views, v_views,
                                    mask, kernel, out);
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

  /// Incremental self-attention of sequence `id` of a PagedKVCache, returning the new rows'
  /// outputs (n, E); see attend_into(x, pool, id, out, mask, options, extras).
  template <typename Derived, typename Storage, typename M = Mask,
            typename = std::enable_if_t<detail::is_mask_argument<M>>>
  Matrix<Scalar> operator()(const Eigen::MatrixBase<Derived>& x,
                            PagedKVCache<Scalar, Storage>& pool, SequenceId id,
                            const M& mask = Mask::causal(),
                            const AttentionExtras<Scalar>& extras = {},
                            const MultiHeadOptions& options = {}) const {
    Matrix<Scalar> y(x.rows(), m_core.config().model_dim);
    attend_into(x, pool, id, y, mask, options, extras);
    return y;
  }

  /// One decoding step of many sequences: row b of x (B × E) is the next token of ids[b]; returns
  /// their outputs (B × E). See attend_batch_into.
  template <typename Derived, typename Storage, typename M = Mask,
            typename = std::enable_if_t<detail::is_mask_argument<M>>>
  Matrix<Scalar> attend_batch(const Eigen::MatrixBase<Derived>& x,
                              PagedKVCache<Scalar, Storage>& pool,
                              const std::vector<SequenceId>& ids, const M& mask = Mask::causal(),
                              const MultiHeadOptions& options = {}) const {
    return attend_batch(x, std::vector<Index>(ids.size(), 1), pool, ids, mask, options);
  }

  /// Sequences ids[b] each advance by lengths[b] rows of x; returns (Σ lengths, E). See
  /// attend_batch_into.
  template <typename Derived, typename Storage, typename M = Mask,
            typename = std::enable_if_t<detail::is_mask_argument<M>>>
  Matrix<Scalar> attend_batch(const Eigen::MatrixBase<Derived>& x,
                              const std::vector<Index>& lengths,
                              PagedKVCache<Scalar, Storage>& pool,
                              const std::vector<SequenceId>& ids, const M& mask = Mask::causal(),
                              const MultiHeadOptions& options = {}) const {
    Matrix<Scalar> y(x.rows(), m_core.config().model_dim);
    attend_batch_into(x, lengths, pool, ids, y, mask, options);
    return y;
  }

  /// An empty pool of this layer's width (num_kv_heads·head_dim): `pages` pages of `page_size`
  /// positions, kept in `Storage` (see PagedKVCache and KVCache).
  template <typename Storage = Scalar>
  PagedKVCache<Scalar, Storage> make_paged_cache(
      Index pages, Index page_size = PagedKVCache<Scalar, Storage>::default_page_size) const {
    return PagedKVCache<Scalar, Storage>(pages, m_core.config().kv_dim(),
                                         m_core.config().head_dim(), page_size);
  }

  /// An empty cache of this layer's width (num_kv_heads·head_dim) for `capacity` positions, kept
  /// in `Storage` (Scalar by default; for a float layer also attn::bfloat16, attn::half or
  /// attn::qint8, see KVCache).
  template <typename Storage = Scalar>
  KVCache<Scalar, Storage> make_cache(Index capacity) const {
    return KVCache<Scalar, Storage>(capacity, m_core.config().kv_dim(), m_core.config().head_dim());
  }

  /// The layer's shape, as constructed.
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

  /// The checks of a cache or pool of another layout: its width, and a qint8 cache's groups.
  template <typename Cache>
  void check_pool(const Cache& cache) const {
    const MultiHeadConfig& cfg = m_core.config();
    if (cache.width() != cfg.kv_dim()) {
      detail::throw_shape_error(who, ": cache width is ", cache.width(),
                                ", expected num_kv_heads*head_dim = ", cfg.kv_dim());
    }
    if constexpr (std::is_same_v<typename Cache::Storage, qint8>) {
      if (cache.head_dim() != cfg.head_dim()) {
        detail::throw_shape_error(who, ": the qint8 cache has groups of ", cache.head_dim(),
                                  ", expected one head's row, head_dim = ", cfg.head_dim(),
                                  " (make it with make_cache or make_paged_cache)");
      }
    }
  }

  /// The incremental forms: x's keys and values appended to `target` (a KVCache, or a sequence of
  /// a pool), then x's rows attend over everything it holds.
  template <typename Derived, typename Target, typename M>
  void attend_appending(const Eigen::MatrixBase<Derived>& x, Target& target, MatrixRef<Scalar>& out,
                        const M& mask, const MultiHeadOptions& options,
                        const AttentionExtras<Scalar>& extras) const {
    const MultiHeadConfig& cfg = m_core.config();
    check_input(x);
    check_pool(target.cache());
    target.check_room(who, x.rows());
    m_core.check_out(who, "x", out, x.rows());
    const AttentionOptions kernel = m_core.kernel_options(options);
    const detail::SequenceOffsets queries(x.rows()), keys(target.size() + x.rows());
    m_core.check_call(who, queries, keys, mask, kernel, extras);
    // Every check has passed: only now may the cache change.
    if (kernel.workspace != nullptr && x.rows() < detail::PacketTraits<Scalar>::size) {
      kernel.workspace->shared(detail::decode_partial_bytes<Scalar>(
          target.most_keys(), cfg.num_heads, x.rows(), cfg.head_dim()));
    }
    Matrix<Scalar> own;
    const MatrixView<Scalar> qkv = project(x, kernel.workspace, own);
    m_core.rotate_queries_keys(qkv, 0, x.rows(), target.position());  // before keys are cached
    const ConstMatrixRef<Scalar> all(qkv);
    const Index e = cfg.model_dim, kv = cfg.kv_dim();
    target.append(detail::column_block(all, e, kv), detail::column_block(all, e + kv, kv));
    m_core.attend_and_project(detail::column_block(all, 0, e), target.keys(), target.values(),
                              queries, keys, mask, kernel, extras, out);
  }

  /// x (n, E) -> [Q | K | V] (n, E + 2·kv_dim) in the workspace's projection buffer, or in `own`;
  /// with `offsets`, each sequence's rows [offsets[b], offsets[b + 1]) as a product of its own, so
  /// that its rows are bitwise what a call for that sequence alone computes (a one-row product is
  /// a GEMV, several rows a GEMM, and they round differently).
  template <typename Derived>
  MatrixView<Scalar> project(const Eigen::MatrixBase<Derived>& x, Workspace* workspace,
                             Matrix<Scalar>& own,
                             const std::vector<Index>* offsets = nullptr) const {
    MatrixView<Scalar> qkv = detail::MultiHeadCore<Scalar>::scratch(
        workspace, Workspace::Buffer::projections, x.rows(), m_core.projected_width(), own);
    if (offsets == nullptr) {
      m_core.project_queries_keys_values(x, qkv);
    } else {
      const ConstMatrixRef<Scalar> rows(x);
      for (std::size_t b = 0; b + 1 < offsets->size(); ++b) {
        const Index first = (*offsets)[b], count = (*offsets)[b + 1] - first;
        m_core.project_queries_keys_values(
            rows.middleRows(first, count),
            MatrixView<Scalar>(qkv.data() + first * qkv.outerStride(), count, qkv.cols(),
                               Eigen::OuterStride<>(qkv.outerStride())));
      }
    }
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
    for (std::size_t b = 0; b < offsets.count(); ++b) {  // each sequence from position 0
      m_core.rotate_queries_keys(qkv, offsets.begin(b), offsets.length(b), 0);
    }
    // Per-head inputs are column blocks of the one projection: views, no copies.
    const ConstMatrixRef<Scalar> all(qkv);
    const Index e = m_core.config().model_dim, kv = m_core.config().kv_dim();
    m_core.attend_and_project(detail::column_block(all, 0, e), detail::column_block(all, e, kv),
                              detail::column_block(all, e + kv, kv), offsets, offsets, mask, kernel,
                              extras, out);
  }

  friend struct detail::LayerAccess;  // attn/mpi.hpp's sequence-parallel layers
  static constexpr const char* who = "SelfAttention";
  detail::MultiHeadCore<Scalar> m_core;
};

/// SelfAttention in float.
using SelfAttentionf = SelfAttention<float>;
/// SelfAttention in double.
using SelfAttentiond = SelfAttention<double>;

}  // namespace attn
