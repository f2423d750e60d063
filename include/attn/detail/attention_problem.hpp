// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors
#pragma once

/// \file detail/attention_problem.hpp
/// One attention problem as the kernel sees it, already validated: views of Q, K, V and the
/// output with heads as column blocks; the pieces of work it is cut into; and what every path
/// does to a tile of logits before the softmax.

#include <type_traits>

#include "../paged_view.hpp"
#include "../storage.hpp"
#include "../types.hpp"
#include "convert.hpp"
#include "float_bits.hpp"
#include "score_mask_parts.hpp"

namespace attn::detail {

/// One attention problem over all heads. Heads are column blocks: q is n × H·d, k is m × Hkv·d,
/// v is m × Hkv·dv, out is n × H·dv; query head h reads kv head h / (H / Hkv). Q, K and V may be
/// stored in another type than the Scalar everything computes in (see storage.hpp); for qint8,
/// a scale per row and kv head. K and V may lie in pages (Paged<Storage>, read through a
/// PagedView): the paths then read them a run of rows at a time.
template <typename Scalar_, typename QueryStorage = Scalar_, typename KeyStorage = Scalar_,
          typename ValueStorage = Scalar_>
struct AttentionProblem {
  using Scalar = Scalar_;
  /// Whether the register tiles read K and V where they are (possibly packed per head); else each
  /// key block is first converted into scratch.
  static constexpr bool kv_in_scalar =
      std::is_same_v<KeyStorage, Scalar> && std::is_same_v<ValueStorage, Scalar>;

  ConstMatrixView<QueryStorage> q;
  key_value_view_t<KeyStorage> k;  // a PagedView for Paged<…> storage
  key_value_view_t<ValueStorage> v;
  MatrixView<Scalar> out;
  Index num_heads;
  Index num_kv_heads;
  Index head_dim;
  Index value_dim;
  Scalar scale;
  Scalar softcap;         // 0: off
  Scalar* lse = nullptr;  // optional n × H log-sum-exp of the logits, row stride lse_stride
  Index lse_stride = 0;
  Scalar* weights = nullptr;  // optional (H·n) × m attention weights, head h in rows h·n…
  Index weights_stride = 0;
  Index first_query_position = 0;  // query row i at position first_query_position + i
  Index first_key_position = 0;    // key row j at first_key_position + j
  Index first_head = 0;            // head h is first_head + h to score and mask functions

  /// The kv head query head h reads.
  Index kv_head(Index h) const { return h / (num_heads / num_kv_heads); }
};

/// A query block of one head with the key range it attends over.
struct QueryBlock {
  Index head;
  Index first_row;
  Index rows;
  Index keys_begin;  // the window's and the key split's range, intersected
  Index keys_end;
};

/// Where a block's normalised rows and log-sum-exps go: the problem's output, or one key split's
/// partial result.
template <typename Scalar>
struct BlockOutput {
  Scalar* out;  // row r, value e at out[r·out_stride + e]
  Index out_stride;
  Scalar* lse;  // row r at lse[r·lse_stride], or nullptr
  Index lse_stride;
};

/// Soft-caps a tile of logits of head h (queries from row i0, keys from j0; element (r, c) at
/// s[r·query_stride + c·key_stride], one of the strides 1), then applies the score function and
/// the masks that cut the block (see TileMask::apply). Returns whether any logit may have become
/// −∞.
template <typename Problem, typename TM, typename Block, typename Scalar = typename Problem::Scalar>
bool finish_logits(const Problem& p, const TM& mask, Scalar* s, Index query_stride,
                   Index key_stride, Index rows, Index cols, Index h, Index i0, Index j0,
                   const Block& block) {
  if (p.softcap > 0) {
    // The tile as a matrix whose rows are contiguous: keys × queries or queries × keys.
    const bool by_keys = query_stride == 1;
    MatrixView<Scalar> tile(s, by_keys ? cols : rows, by_keys ? rows : cols,
                            Eigen::OuterStride<>(by_keys ? key_stride : query_stride));
    tile = p.softcap * (tile.array() / p.softcap).tanh();
  }
  if (block.combined() == Visibility::all && !TM::has_score) return false;
  return mask.apply(s, query_stride, key_stride, rows, cols, h, i0, j0, block);
}

/// Whether P·V over a masked tile must skip zero weights: only if value rows [first, first + keys)
/// hold a NaN or an infinity in columns [col, col + cols), which 0·x would spread to the queries
/// the mask hides them from.
template <typename View>
bool values_need_care(bool masked, const View& v, Index first, Index keys, Index col, Index cols) {
  return masked && !rows_finite(v, first, keys, col, cols);
}

}  // namespace attn::detail
