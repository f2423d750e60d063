// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors
#pragma once

/// \file detail/flash_kernel.hpp
/// The one attention kernel: fused, tiled, online softmax (flash-style). For a block of queries it
/// streams over blocks of keys, keeping a running row max and row sum, so no n×m matrix exists;
/// key blocks the window hides are never touched.

#include <cmath>
#include <limits>

#include "../parallel.hpp"
#include "../types.hpp"
#include "tile_mask.hpp"

namespace attn::detail {

/// One attention problem over all heads, already validated. Heads are column blocks: q is
/// n × H·d, k is m × Hkv·d, v is m × Hkv·dv, out is n × H·dv; query head h reads kv head
/// h / (H / Hkv).
template <typename Scalar>
struct AttentionProblem {
  ConstMatrixView<Scalar> q;
  ConstMatrixView<Scalar> k;
  ConstMatrixView<Scalar> v;
  MatrixView<Scalar> out;
  Index num_heads;
  Index num_kv_heads;
  Index head_dim;
  Index value_dim;
  Scalar scale;
  Scalar softcap;         // 0: off
  Scalar* lse = nullptr;  // optional n × H log-sum-exp of the logits, row stride lse_stride
  Index lse_stride = 0;
};

/// Tile sizes. A query block's scaled Q (64×d), accumulator (64×dv) and score tile (64×128) stay
/// in L1/L2 while a key block's K and V (128×d, 128×dv: 64 KiB at d = dv = 64, float) stream
/// through L2, for the head dims of transformers (32–256).
inline constexpr Index query_block_rows = 64;
inline constexpr Index key_block_rows = 128;

/// Scratch for one thread: sized once per chunk of work items, reused for every tile.
template <typename Scalar>
struct TileScratch {
  TileScratch(Index head_dim, Index value_dim)
      : q(query_block_rows, head_dim),
        s(query_block_rows, key_block_rows),
        acc(query_block_rows, value_dim),
        row_max(query_block_rows),
        row_sum(query_block_rows) {}
  Matrix<Scalar> q;
  Matrix<Scalar> s;
  Matrix<Scalar> acc;
  Vector<Scalar> row_max;
  Vector<Scalar> row_sum;
};

/// Query block t of `count` in an order where the work of consecutive pairs is equal under a
/// causal mask (0, last, 1, last − 1, ...), so contiguous chunks of items carry equal work.
inline Index balanced_block(Index t, Index count) {
  return t % 2 == 0 ? t / 2 : count - 1 - t / 2;
}

/// Attention for query rows [i0, i0 + rows) of head h.
template <typename Scalar>
void attend_query_block(const AttentionProblem<Scalar>& p, const TileMask<Scalar>& mask,
                        TileScratch<Scalar>& scratch, Index h, Index i0, Index rows) {
  constexpr Scalar minus_infinity = -std::numeric_limits<Scalar>::infinity();
  const Index d = p.head_dim;
  const Index dv = p.value_dim;
  const Index kv_head = h / (p.num_heads / p.num_kv_heads);
  const Index i1 = i0 + rows;
  auto q_block = scratch.q.topRows(rows);
  auto acc = scratch.acc.topRows(rows);
  auto row_max = scratch.row_max.head(rows);
  auto row_sum = scratch.row_sum.head(rows);

  // 1. Scaled queries: the scale is folded into Q once instead of into every score.
  q_block = p.scale * p.q.block(i0, h * d, rows, d);
  acc.setZero();
  row_max.setConstant(minus_infinity);
  row_sum.setZero();

  // 2. Stream over the key blocks the window lets any of these queries see.
  const Index keys_begin = mask.key_begin(i0);
  const Index keys_end = mask.key_end(i1 - 1);
  for (Index j0 = keys_begin; j0 < keys_end; j0 += key_block_rows) {
    const Index cols = std::min(key_block_rows, keys_end - j0);
    const auto k_block = p.k.block(j0, kv_head * d, cols, d);
    const auto v_block = p.v.block(j0, kv_head * dv, cols, dv);
    auto s = scratch.s.topLeftCorner(rows, cols);

    // 2a. Logits of the tile, soft-capped, biased and masked.
    s.noalias() = q_block * k_block.transpose();
    if (p.softcap > 0) {
      s = p.softcap * (s.array() / p.softcap).tanh();
    }
    const bool window_cut = !mask.window_covers(i0, i1, j0, j0 + cols);
    if (window_cut || mask.has_explicit()) mask.apply(s, i0, j0, window_cut);

    // 2b. Online softmax: rescale what was accumulated to the new row max, add this tile.
    for (Index r = 0; r < rows; ++r) {
      const Scalar tile_max = s.row(r).maxCoeff();
      const Scalar new_max = std::max(row_max[r], tile_max);
      if (new_max == minus_infinity) {
        s.row(r).setZero();  // nothing visible yet in this row
        continue;
      }
      const Scalar correction = std::exp(row_max[r] - new_max);
      s.row(r) = (s.row(r).array() - new_max).exp().matrix();
      row_sum[r] = correction * row_sum[r] + s.row(r).sum();
      if (correction != Scalar(1)) acc.row(r) *= correction;
      row_max[r] = new_max;
    }
    acc.noalias() += s * v_block;
  }

  // 3. Normalise once; a row that saw no key is zero with log-sum-exp −∞.
  MatrixView<Scalar> out_all = p.out;  // p is const; the storage it points to is not
  auto out = out_all.block(i0, h * dv, rows, dv);
  for (Index r = 0; r < rows; ++r) {
    if (row_sum[r] > 0) {
      out.row(r) = acc.row(r) / row_sum[r];
    } else {
      out.row(r).setZero();
    }
    if (p.lse != nullptr) {
      p.lse[(i0 + r) * p.lse_stride + h] =
          row_sum[r] > 0 ? row_max[r] + std::log(row_sum[r]) : minus_infinity;
    }
  }
}

/// Runs the whole problem: work items are (head, query block), in balanced order, over the
/// executor's threads.
template <typename Scalar>
void run_attention(const AttentionProblem<Scalar>& p, const Mask& mask, const Executor& executor) {
  const Index n = p.q.rows();
  const Index m = p.k.rows();
  if (n == 0) return;
  const TileMask<Scalar> tile_mask(mask, n, m);
  const Index blocks = (n + query_block_rows - 1) / query_block_rows;
  parallel_for(
      p.num_heads * blocks,
      [&](Index begin, Index end) {
        TileScratch<Scalar> scratch(p.head_dim, p.value_dim);
        for (Index item = begin; item < end; ++item) {
          const Index h = item / blocks;
          const Index block = balanced_block(item % blocks, blocks);
          const Index i0 = block * query_block_rows;
          attend_query_block(p, tile_mask, scratch, h, i0, std::min(query_block_rows, n - i0));
        }
      },
      executor);
}

}  // namespace attn::detail
