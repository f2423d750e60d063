// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors
#pragma once

/// \file detail/multi_head_core.hpp
/// Everything SelfAttention and CrossAttention share: owned weights, input projections as one GEMM
/// over all tokens, the checks of a call, the kernel run per packed sequence on strided head views
/// through scaled_dot_product_attention_into, and the output projection. The two functors differ
/// only in where Q, K and V come from.

#include <array>
#include <cstddef>
#include <functional>
#include <optional>
#include <utility>
#include <vector>

#include "../error.hpp"
#include "../mask.hpp"
#include "../multi_head.hpp"
#include "../parallel.hpp"
#include "../scaled_dot_product.hpp"
#include "../types.hpp"
#include "../workspace.hpp"
#include "packed_sequences.hpp"

namespace attn::detail {

/// y = x·Wᵀ + b, written into y (any row-major view).
///
/// No heap allocation for one row of x: Eigen decides at run time that a product whose
/// destination has one row is a matrix-vector product (GEMV), which reads x's contiguous row and
/// W's rows in place and needs no packing buffers. More rows make it a GEMM, whose packing
/// buffers live on the stack up to EIGEN_STACK_ALLOCATION_LIMIT and on the heap beyond (a prefill
/// of many tokens, not a decode step).
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

/// The rows of sequences packed row-wise: sequence b is rows [begin(b), begin(b) + length(b)).
/// Either one sequence, held inline, or a view of offsets as sequence_offsets returns them (which
/// must outlive it): a single sequence, a decode step's case, needs no vector and so no heap.
class SequenceOffsets {
 public:
  /// One sequence of `rows` rows.
  explicit SequenceOffsets(Index rows) : m_single{0, rows} {}
  /// Sequences [offsets[b], offsets[b + 1]); offsets is not copied. Precondition: not empty.
  explicit SequenceOffsets(const std::vector<Index>& offsets) : m_many(&offsets) {}

  std::size_t count() const { return m_many != nullptr ? m_many->size() - 1 : 1; }
  /// The first row of each sequence and the total, as sequence_offsets returns them.
  std::vector<Index> offsets() const {
    return m_many != nullptr ? *m_many : std::vector<Index>(m_single.begin(), m_single.end());
  }
  Index begin(std::size_t b) const { return m_many != nullptr ? (*m_many)[b] : m_single[b]; }
  Index length(std::size_t b) const { return begin(b + 1) - begin(b); }

 private:
  std::array<Index, 2> m_single{};
  const std::vector<Index>* m_many = nullptr;
};

/// Reaches a functor's MultiHeadCore, for code that runs a layer's steps itself (training.hpp's
/// forward and backward, the sequence-parallel layers of attn/mpi.hpp); a friend of both.
struct LayerAccess {
  template <typename Layer>
  static const auto& core(const Layer& layer) {
    return layer.m_core;
  }
};

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
    if (config.rotary) m_rotary.emplace(config.rotary_config());
  }

  const MultiHeadConfig& config() const { return m_config; }

  /// The options of the kernel call: this layer's heads, the call's scale, softcap and
  /// workspace, and the call's executor or else the layer's. The executor is referred to, not
  /// copied (it must outlive the call, as both candidates do): std::function keeps a
  /// reference_wrapper inline, while copying an executor whose state is larger than its small
  /// buffer or not trivially copyable (a pool held by shared_ptr) would allocate on every call.
  AttentionOptions kernel_options(const MultiHeadOptions& options) const {
    AttentionOptions kernel;
    kernel.num_heads = m_config.num_heads;
    kernel.num_kv_heads = m_config.kv_heads();
    kernel.scale = options.scale;
    kernel.softcap = options.softcap;
    kernel.workspace = options.workspace;
    const Executor& executor = options.executor ? options.executor : m_executor;
    if (executor) kernel.executor = std::cref(executor);
    return kernel;
  }

  /// \throws ShapeError naming `who` unless out is rows × model_dim (`input` names the argument
  ///         whose rows it must match).
  void check_out(const char* who, const char* input, const MatrixRef<Scalar>& out,
                 Index rows) const {
    if (out.rows() != rows || out.cols() != m_config.model_dim) {
      throw_shape_error(who, ": out is ", shape_string(out), ", expected ",
                        shape_string(rows, m_config.model_dim), " (", input,
                        ".rows() x model_dim)");
    }
  }

  /// Every check of a call that the kernel would otherwise make only when it runs, made before
  /// anything is computed or changed (a KVCache appended to): extras, explicit or key-length
  /// masks and mask parts tied to one shape describe one sequence, and each sequence's mask,
  /// scale and softcap are valid. Precondition: queries and keys hold as many sequences.
  template <typename M>
  void check_call(const char* who, const SequenceOffsets& queries, const SequenceOffsets& keys,
                  const M& mask_argument, const AttentionOptions& kernel,
                  const AttentionExtras<Scalar>& extras) const {
    ATTN_ASSERT(queries.count() == keys.count());
    const auto& mask = as_score_mask(mask_argument);
    const std::size_t count = queries.count();
    if (count != 1 && mask.one_sequence()) {
      throw_shape_error(who, ": ",
                        mask.base().has_explicit()     ? "an explicit keep/bias mask"
                        : mask.base().has_key_length() ? "a key-length mask"
                                                       : "a mask function tied to one shape",
                        " describes one sequence, but the batch has ", count,
                        " sequences; use one call per sequence");
    }
    if (count != 1 && (extras.log_sum_exp != nullptr || extras.weights != nullptr)) {
      throw_shape_error(who,
                        ": attention extras (log_sum_exp, weights) describe one sequence, but "
                        "the batch has ",
                        count, " sequences");
    }
    for (std::size_t b = 0; b < count; ++b) {
      check_mask_and_options<Scalar>(who, queries.length(b), keys.length(b), m_config.head_dim(),
                                     mask, kernel);
    }
  }

  /// rows × cols of scratch: the workspace's buffer `key` when there is one (kept for the next
  /// call), else `own`, resized.
  static MatrixView<Scalar> scratch(Workspace* workspace, Workspace::Buffer key, Index rows,
                                    Index cols, Matrix<Scalar>& own) {
    Scalar* data = nullptr;
    if (workspace != nullptr) {
      data =
          static_cast<Scalar*>(workspace->buffer(key, sizeof(Scalar) * std::size_t(rows * cols)));
    } else {
      own.resize(rows, cols);
      data = own.data();
    }
    return MatrixView<Scalar>(data, rows, cols, Eigen::OuterStride<>(cols));
  }

  /// Width of project_queries_keys_values's result: E + 2·kv_dim.
  Index projected_width() const { return m_in_weight.rows(); }

  /// x (n, E) -> [Q | K | V] (n, E + 2·kv_dim) into qkv, one GEMM. Precondition: source_dim is E.
  void project_queries_keys_values(const ConstMatrixRef<Scalar>& x, MatrixView<Scalar> qkv) const {
    linear(x, m_in_weight, m_in_bias, qkv);
  }

  /// Rotates the queries and keys of rows [first_row, first_row + rows) of a fused projection
  /// [Q | K | V] (n, E + 2·kv_dim), row first_row + i at position first_position + i, when the
  /// layer has rotary embeddings (Q and K are adjacent blocks of whole heads: one call, one
  /// cos/sin per row).
  void rotate_queries_keys(MatrixView<Scalar> qkv, Index first_row, Index rows,
                           Index first_position) const {
    if (!m_rotary || rows == 0) return;
    MatrixView<Scalar> block(qkv.data() + first_row * qkv.outerStride(), rows,
                             m_config.model_dim + m_config.kv_dim(),
                             Eigen::OuterStride<>(qkv.outerStride()));
    m_rotary->apply(block, first_position);
  }

  /// x (n, E) -> Q (n, E) into q.
  void project_queries(const ConstMatrixRef<Scalar>& x, MatrixView<Scalar> q) const {
    const Index e = m_config.model_dim;
    linear(x, m_in_weight.topRows(e), in_bias_segment(0, e), q);
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

  /// Attention of every packed sequence b over per-head views q (n, E), k and v (m, kv_dim, in
  /// their storage: views of Scalar, bfloat16 or half, or QuantizedView), in one call of
  /// scaled_dot_product_attention_into (the entry point a user calls; a batch runs as one
  /// problem whose sequences see only themselves), then the output projection into out (n, E).
  /// Precondition: check_call and check_out passed for these arguments.
  template <typename KeyView, typename ValueView, typename M>
  void attend_and_project(const ConstMatrixView<Scalar>& q, const KeyView& k, const ValueView& v,
                          const SequenceOffsets& queries, const SequenceOffsets& keys,
                          const M& mask, const AttentionOptions& kernel,
                          const AttentionExtras<Scalar>& extras, MatrixRef<Scalar> out) const {
    Matrix<Scalar> own;
    // The heads' results need storage of their own: the output projection reads all of them
    // while it writes out.
    MatrixView<Scalar> heads =
        scratch(kernel.workspace, Workspace::Buffer::heads, q.rows(), m_config.model_dim, own);
    if (queries.count() == 1) {
      scaled_dot_product_attention_into(q, k, v, heads, mask, kernel, extras);
    } else {
      const auto& score_mask = as_score_mask(mask);
      const PackedSequences<Scalar, std::decay_t<decltype(score_mask)>> packed(
          score_mask, queries.offsets(), keys.offsets(), m_config.num_heads);
      scaled_dot_product_attention_into(q, k, v, heads, packed.score_mask(), kernel);
    }
    project_output(heads, out);
  }

  /// heads (n, E), the heads' results side by side -> out (n, E): the output projection.
  void project_output(const ConstMatrixRef<Scalar>& heads, MatrixRef<Scalar> out) const {
    linear(heads, m_out_weight, m_out_bias, out);
  }

  /// Attention of sequences of different lengths over key and value views of their own (the
  /// sequences of a PagedKVCache): q packs lengths[b] rows per sequence; one kernel call for the
  /// batch, then each sequence's output projection into its rows of out (per sequence, as its
  /// own call would: one GEMM over all rows would round differently from a sequence's own GEMV).
  /// Precondition: the batch's checks passed.
  template <typename KeyView, typename ValueView, typename M>
  void attend_batch_and_project(const ConstMatrixView<Scalar>& q, const std::vector<Index>& lengths,
                                const std::vector<KeyView>& k, const std::vector<ValueView>& v,
                                const M& mask, const AttentionOptions& kernel,
                                MatrixRef<Scalar> out) const {
    Matrix<Scalar> own;
    MatrixView<Scalar> heads =
        scratch(kernel.workspace, Workspace::Buffer::heads, q.rows(), m_config.model_dim, own);
    scaled_dot_product_attention_batch_into(q, lengths, k, v, heads, mask, kernel);
    const ConstMatrixRef<Scalar> all(heads);
    for (Index b = 0, first = 0; b < Index(lengths.size()); first += lengths[std::size_t(b)], ++b) {
      const Index rows = lengths[std::size_t(b)];
      linear(ConstMatrixRef<Scalar>(all.middleRows(first, rows)), m_out_weight, m_out_bias,
             out.middleRows(first, rows));
    }
  }

  // The weights as the backward pass reads them (PyTorch layout, see MultiHeadWeights).
  /// Wq (E × E).
  auto query_weight() const { return m_in_weight.topRows(m_config.model_dim); }
  /// [Wk; Wv] (2·kv_dim × S).
  auto key_value_weight() const {
    return m_kv_weight.size() != 0 ? m_kv_weight.topRows(m_kv_weight.rows())
                                   : m_in_weight.bottomRows(2 * m_config.kv_dim());
  }
  /// [Wq; Wk; Wv] ((E + 2·kv_dim) × E); precondition: source_dim is E.
  const Matrix<Scalar>& fused_weight() const { return m_in_weight; }
  const Matrix<Scalar>& out_weight() const { return m_out_weight; }
  /// The rotary embedding, or null when the layer has none.
  const Rotary* rotary() const { return m_rotary ? &*m_rotary : nullptr; }

 private:
  Eigen::VectorBlock<const Vector<Scalar>> in_bias_segment(Index start, Index size) const {
    return m_config.bias ? m_in_bias.segment(start, size) : m_in_bias.segment(0, 0);
  }

  MultiHeadConfig m_config;
  std::optional<Rotary> m_rotary;  // set when the config asks for rotary embeddings
  Matrix<Scalar> m_in_weight;      // rows [Wq; Wk; Wv] when source_dim = E, else Wq only
  Matrix<Scalar> m_kv_weight;      // rows [Wk; Wv] when source_dim ≠ E, else empty
  Vector<Scalar> m_in_bias;        // [bq; bk; bv], or empty without bias
  Matrix<Scalar> m_out_weight;     // E × E
  Vector<Scalar> m_out_bias;       // E, or empty
  Executor m_executor;
};

}  // namespace attn::detail
