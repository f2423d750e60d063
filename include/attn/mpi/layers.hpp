// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors
#pragma once

/// \file mpi/layers.hpp
/// SelfAttention and CrossAttention layers over a sequence split across the ranks of an MPI
/// communicator: each rank projects its own rows, the attention runs sequence-parallel, and each
/// rank projects its rows of the result.

#include <mpi.h>

#include <cstdint>
#include <vector>

#include "../cross_attention.hpp"
#include "../self_attention.hpp"
#include "sequence_parallel.hpp"

namespace attn::mpi {

namespace detail {

/// Agrees on the layer inputs' shapes before anything is projected (a wrong width on one rank
/// must not leave the others waiting); returns every rank's segments of the rows.
inline std::vector<std::vector<Segment>> agree_inputs(MPI_Comm comm, const char* who,
                                                      const char* input, Index rows, Index cols,
                                                      Index expected_cols, Layout layout,
                                                      Traffic* traffic) {
  const Agreement table(comm, who, {rows, cols}, traffic);
  for (int r = 0; r < table.ranks(); ++r) {
    if (table.at(r, 1) != expected_cols) {
      table.fail("rank ", r, " has ", input, " ", table.at(r, 0), "x", table.at(r, 1),
                 ", expected ", input, ".cols() = ", expected_cols);
    }
  }
  return all_segments(layout, table.column(0));
}

template <typename Scalar>
MatrixView<Scalar> view_of(Matrix<Scalar>& m) {
  return MatrixView<Scalar>(m.data(), m.rows(), m.cols(), Eigen::OuterStride<>(m.cols()));
}

}  // namespace detail

/// SelfAttention over a sequence split across the ranks of comm: each rank passes its rows of x
/// (as parallel.layout spreads them; for zigzag, the rows shard_segments gives it) and receives
/// its rows of layer(x_whole, mask), within the tolerance of attn::mpi::scaled_dot_product_attention.
/// Rotary embeddings rotate each row at its position in the whole sequence. Collective.
/// \throws ShapeError on every rank if a rank's x is not rows × model_dim, or as
///         attn::mpi::scaled_dot_product_attention.
template <typename Scalar, typename Derived, typename M = Mask,
          typename = std::enable_if_t<attn::detail::is_mask_argument<M>>>
Matrix<Scalar> self_attention(MPI_Comm comm, const SelfAttention<Scalar>& layer,
                              const Eigen::MatrixBase<Derived>& x, const M& mask = M(),
                              const MultiHeadOptions& options = {},
                              const ParallelOptions& parallel = {}) {
  const auto& core = attn::detail::LayerAccess::core(layer);
  const MultiHeadConfig& config = core.config();
  const std::vector<std::vector<Segment>> segments =
      detail::agree_inputs(comm, "attn::mpi::self_attention", "x", x.rows(), x.cols(),
                           config.model_dim, parallel.layout, parallel.traffic);
  const Index e = config.model_dim, kv = config.kv_dim();
  Matrix<Scalar> qkv(x.rows(), core.projected_width());
  core.project_queries_keys_values(ConstMatrixRef<Scalar>(x), detail::view_of(qkv));
  for (const Segment& s : segments[std::size_t(detail::comm_rank(comm))])
    core.rotate_queries_keys(detail::view_of(qkv), s.local, s.rows, s.position);
  Matrix<Scalar> heads(x.rows(), e);
  scaled_dot_product_attention_into(comm, qkv.leftCols(e), qkv.middleCols(e, kv), qkv.rightCols(kv),
                                    heads, mask, core.kernel_options(options), parallel);
  Matrix<Scalar> out(x.rows(), e);
  core.project_output(heads, out);
  return out;
}

/// CrossAttention over a target and a source each split across the ranks of comm (both as
/// parallel.layout spreads them): each rank passes its rows of each and receives its rows of
/// layer(target_whole, source_whole, mask). Collective.
/// \throws ShapeError on every rank if a rank's target is not rows × model_dim or its source not
///         rows × source_dim, or as attn::mpi::scaled_dot_product_attention.
template <typename Scalar, typename DT, typename DS, typename M = Mask,
          typename = std::enable_if_t<attn::detail::is_mask_argument<M>>>
Matrix<Scalar> cross_attention(MPI_Comm comm, const CrossAttention<Scalar>& layer,
                               const Eigen::MatrixBase<DT>& target,
                               const Eigen::MatrixBase<DS>& source, const M& mask = M(),
                               const MultiHeadOptions& options = {},
                               const ParallelOptions& parallel = {}) {
  const auto& core = attn::detail::LayerAccess::core(layer);
  const MultiHeadConfig& config = core.config();
  constexpr const char* who = "attn::mpi::cross_attention";
  detail::agree_inputs(comm, who, "target", target.rows(), target.cols(), config.model_dim,
                       parallel.layout, parallel.traffic);
  detail::agree_inputs(comm, who, "source", source.rows(), source.cols(), config.source_features(),
                       parallel.layout, parallel.traffic);
  const Index e = config.model_dim, kv = config.kv_dim();
  Matrix<Scalar> q(target.rows(), e);
  core.project_queries(ConstMatrixRef<Scalar>(target), detail::view_of(q));
  const Matrix<Scalar> key_values = core.project_keys_values(ConstMatrixRef<Scalar>(source));
  Matrix<Scalar> heads(target.rows(), e);
  scaled_dot_product_attention_into(comm, q, key_values.leftCols(kv), key_values.rightCols(kv),
                                    heads, mask, core.kernel_options(options), parallel);
  Matrix<Scalar> out(target.rows(), e);
  core.project_output(heads, out);
  return out;
}

}  // namespace attn::mpi
