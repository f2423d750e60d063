// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors
#pragma once

/// \file detail/backward.hpp
/// The kernel's backward pass, FlashAttention-2's recomputation: the probabilities P are
/// recomputed tile by tile from the forward's log-sum-exp, never stored whole, so memory is
/// O((n + m)·d) per head. Work items are (kv head, chunk of keys); each owns its keys' dK and dV
/// (summed over the query heads of its group) and a partial dQ of its own; the partials are summed
/// in chunk order. Chunks are cut by shape only, never by thread count, and nothing is summed by
/// atomics: the gradients are bitwise the same for any executor.

#include <algorithm>
#include <cmath>

#include "../parallel.hpp"
#include "../types.hpp"
#include "convert.hpp"
#include "float_bits.hpp"
#include "packet_math.hpp"
#include "register_tile.hpp"
#include "tile_mask.hpp"

namespace attn::detail {

/// One backward problem over all heads, validated: heads are column blocks as in
/// AttentionProblem; out, d_out are n × H·dv; lse is n × H.
template <typename Scalar>
struct BackwardProblem {
  ConstMatrixView<Scalar> q, k, v, out, d_out, lse;
  MatrixView<Scalar> dq, dk, dv;
  Index num_heads, num_kv_heads, head_dim, value_dim;
  Scalar scale;
  Scalar softcap;  // 0: off
  Index first_query_position, first_key_position, first_head;

  Index group() const { return num_heads / num_kv_heads; }
};

/// Tile sizes of the backward pass: a key block's dK and dV stay in cache while every query
/// block of its heads passes over it. The key block is a whole number of column panels of the
/// register tile, the query block a whole number of its rows.
template <typename Scalar>
struct BackwardBlocks {
  using Tile = TileTraits<Scalar>;
  static constexpr Index key_rows = 256 / Tile::columns * Tile::columns;
  static constexpr Index query_rows = 128 / Tile::rows * Tile::rows;
  /// Columns rounded up to whole packets: the row length of the padded copies.
  static Index padded(Index cols) {
    return (cols + Tile::packet_size - 1) / Tile::packet_size * Tile::packet_size;
  }
};

/// How many chunks the keys are cut into: enough for 16 work items (kv heads × chunks), so that
/// threads share few heads, and no more: every chunk beyond the first costs a partial dQ (n × H·d,
/// padded to whole packets) that is allocated, zeroed and summed per call, which is memory
/// traffic the threads cannot share. At most 8 chunks and 32 MiB of partials (the first chunk
/// adds into dQ itself when `direct`). A function of the shape only.
inline Index backward_chunks(Index n, Index key_blocks, Index heads, Index kv_heads,
                             Index padded_head_dim, Index scalar_bytes, bool direct) {
  const double partial_bytes = double(n) * double(heads * padded_head_dim) * double(scalar_bytes);
  const Index by_memory = partial_bytes > 0
                              ? Index(double(Index(32) << 20) / partial_bytes) + (direct ? 1 : 0)
                              : Index(8);
  const Index by_items = (16 + kv_heads - 1) / kv_heads;
  return std::max<Index>(1, std::min<Index>({Index(8), key_blocks, by_memory, by_items}));
}

/// The scratch of one worker: a tile's logits (then P), tanh of the capped logits, dP (then dS)
/// and the score function's derivative, each Bq × Bk; a key block's copies, scaled (scale·K)
/// and transposed (scale·Kᵀ, Vᵀ), with zeros in their padding; its dKᵀ and dVᵀ.
template <typename Scalar>
struct BackwardScratch {
  using Blocks = BackwardBlocks<Scalar>;
  BackwardScratch(Index head_dim, Index value_dim)
      : s(Blocks::query_rows, Blocks::key_rows),
        t(Blocks::query_rows, Blocks::key_rows),
        dp(Blocks::query_rows, Blocks::key_rows),
        u(Blocks::query_rows, Blocks::key_rows),
        k(Matrix<Scalar>::Zero(Blocks::key_rows, Blocks::padded(head_dim))),
        k_t(Matrix<Scalar>::Zero(head_dim, Blocks::key_rows)),
        v_t(Matrix<Scalar>::Zero(value_dim, Blocks::key_rows)),
        dk_t(head_dim, Blocks::key_rows),
        dv_t(value_dim, Blocks::key_rows) {}
  Matrix<Scalar> s, t, dp, u, k, k_t, v_t, dk_t, dv_t;
};

/// P = exp(S − lse_r) over a tile of `rows` × `cols` (row stride `stride`), in place; a row whose
/// lse is −∞ (no visible key) and a hidden logit (−∞) give 0, under any flags.
template <typename Scalar>
void tile_probabilities(Scalar* s, Index stride, Index rows, Index cols, const Scalar* lse,
                        Index lse_stride) {
  using Packet = typename PacketTraits<Scalar>::Packet;
  constexpr Index width = PacketTraits<Scalar>::size;
  for (Index r = 0; r < rows; ++r) {
    Scalar* row = s + r * stride;
    const Scalar shift = lse[r * lse_stride];
    if (is_minus_infinity(shift)) {
      std::fill(row, row + cols, Scalar(0));
      continue;
    }
    const Packet shifts = simd::broadcast<Packet>(shift);
    Index c = 0;
    for (; c + width <= cols; c += width)
      simd::store(row + c, softmax_exp(simd::sub(simd::load<Packet>(row + c), shifts)));
    for (; c < cols; ++c)
      row[c] = is_minus_infinity(row[c]) ? Scalar(0) : Scalar(std::exp(row[c] - shift));
  }
}

/// Where an item adds its part of dQ: head h's d columns at data + i·stride + h·head_stride.
template <typename Scalar>
struct DqTarget {
  Scalar* data;
  Index stride, head_stride;
};

/// The gradients of the keys [key_begin, key_end) of kv head g over every query of its group's
/// heads: dK and dV of those rows, and the group's heads' part of dQ from these keys, added to
/// `dq`. D (n × H) is rowsum(dO ∘ O).
///
/// Per tile of Bq queries × Bk keys, five products on the register tile (register_product, every
/// operand read in place or from the key block's copies):
///   S = Q·(scale·K)ᵀ, dP = dO·Vᵀ (queries × keys), dVᵀ += dOᵀ·P, dKᵀ += Qᵀ·dS (columns: keys),
///   dQ += dS·(scale·K) (columns: d),
/// between them P = exp(S − lse) and dS = P ∘ (dP − D) element by element; dK takes its scale
/// when it is stored.
template <typename Scalar, typename SM>
void backward_keys(const BackwardProblem<Scalar>& p, const TileMask<Scalar, SM>& mask,
                   const Matrix<Scalar>& d_rows, Index g, Index key_begin, Index key_end,
                   const DqTarget<Scalar>& dq, BackwardScratch<Scalar>& scratch) {
  using Blocks = BackwardBlocks<Scalar>;
  const Index n = p.q.rows(), d = p.head_dim, dv = p.value_dim;
  const Index stride = Blocks::key_rows;  // of the tiles and the transposed copies
  const Index q_stride = p.q.outerStride(), do_stride = p.d_out.outerStride();
  // A score function that is not additive multiplies dS by its derivative at the logit.
  constexpr bool chain_score = !TileMask<Scalar, SM>::score_additive;
  Vector<Scalar> d_column(Blocks::query_rows);
  for (Index j0 = key_begin; j0 < key_end; j0 += Blocks::key_rows) {
    const Index bk = std::min(Blocks::key_rows, key_end - j0);
    const Index bk_padded = Blocks::padded(bk);
    // The key block's copies; the padding columns of the transposes are zero (rows past bk).
    // (Not for a head dim of 0: a block of an empty matrix would offset a null pointer.)
    if (bk < Blocks::key_rows && d > 0) scratch.k_t.rightCols(Blocks::key_rows - bk).setZero();
    if (bk < Blocks::key_rows && dv > 0) scratch.v_t.rightCols(Blocks::key_rows - bk).setZero();
    const Scalar* k_block = p.k.data() + j0 * p.k.outerStride() + g * d;
    transpose_scaled(k_block, p.k.outerStride(), bk, d, p.scale, scratch.k_t.data(), stride);
    transpose_scaled(p.v.data() + j0 * p.v.outerStride() + g * dv, p.v.outerStride(), bk, dv,
                     Scalar(1), scratch.v_t.data(), stride);
    scratch.k.topLeftCorner(bk, d) = p.scale * p.k.block(j0, g * d, bk, d);
    // A key row the mask hides may hold anything: where it is not finite, dQ's product must skip
    // the zeros of dS instead of multiplying through them.
    const bool keys_finite = rows_finite(p.k, j0, bk, g * d, d);
    scratch.dk_t.setZero();
    scratch.dv_t.setZero();
    for (Index h = g * p.group(); h < (g + 1) * p.group(); ++h) {
      for (Index i0 = 0; i0 < n; i0 += Blocks::query_rows) {
        const Index bq = std::min(Blocks::query_rows, n - i0);
        const BlockClass visible = mask.classify(h, i0, i0 + bq, j0, j0 + bk);
        if (visible.combined() == Visibility::none) continue;
        const Scalar* q_i = p.q.data() + i0 * q_stride + h * d;
        const Scalar* do_i = p.d_out.data() + i0 * do_stride + h * dv;
        auto s = scratch.s.topLeftCorner(bq, bk);
        auto t = scratch.t.topLeftCorner(bq, bk);
        auto dp = scratch.dp.topLeftCorner(bq, bk);
        auto u = scratch.u.topLeftCorner(bq, bk);
        register_product<false>(bq, bk, d, q_i, q_stride, 1, scratch.k_t.data(), stride,
                                scratch.s.data(), stride);
        if (p.softcap > 0) {
          t = (s.array() / p.softcap).tanh();
          s = p.softcap * t;
        }
        if constexpr (chain_score) {
          mask.score_derivatives(scratch.s.data(), stride, scratch.u.data(), stride, bq, bk, h, i0,
                                 j0);
        }
        bool masked = false;
        if (visible.combined() != Visibility::all || TileMask<Scalar, SM>::has_score) {
          masked = mask.apply(scratch.s.data(), stride, 1, bq, bk, h, i0, j0, visible);
        }
        tile_probabilities(scratch.s.data(), stride, bq, bk,
                           p.lse.data() + i0 * p.lse.outerStride() + h, p.lse.outerStride());
        // s now holds P.
        register_product<false>(bq, bk, dv, do_i, do_stride, 1, scratch.v_t.data(), stride,
                                scratch.dp.data(), stride);
        // dS = P ∘ (dP − D). In a tile the mask cut, where P is 0 (hidden) dS is 0 even if dP is
        // not finite: a hidden value row holding NaN must not reach the gradients through a zero
        // weight. (In a wholly visible tile a NaN value is seen, and spreads as in the forward.)
        if (masked) {
          for (Index r = 0; r < bq; ++r) {
            const Scalar d_r = d_rows(i0 + r, h);
            for (Index c = 0; c < bk; ++c) {
              const Scalar prob = s(r, c);
              Scalar ds = prob * (dp(r, c) - d_r);
              if constexpr (chain_score) ds *= u(r, c);
              if (p.softcap > 0) ds *= Scalar(1) - t(r, c) * t(r, c);  // tanh of a NaN key: NaN
              dp(r, c) = prob == Scalar(0) ? Scalar(0) : ds;
            }
          }
        } else {
          d_column.head(bq) = d_rows.col(h).segment(i0, bq);
          dp.array() = s.array() * (dp.array().colwise() - d_column.head(bq).array());
          if constexpr (chain_score) dp.array() *= u.array();
          if (p.softcap > 0) dp.array() *= Scalar(1) - t.array().square();
        }
        // dp now holds dS / scale: the scale is in the copies of K, and dK takes it when stored.
        register_product<true>(dv, bk_padded, bq, do_i, 1, do_stride, scratch.s.data(), stride,
                               scratch.dv_t.data(), stride);
        register_product<true>(d, bk_padded, bq, q_i, 1, q_stride, scratch.dp.data(), stride,
                               scratch.dk_t.data(), stride);
        Scalar* dq_i = dq.data + i0 * dq.stride + h * dq.head_stride;
        if (masked && !keys_finite) {
          MatrixView<Scalar> dq_rows(dq_i, bq, d, Eigen::OuterStride<>(dq.stride));
          for (Index r = 0; r < bq; ++r) {
            for (Index c = 0; c < bk; ++c) {
              if (dp(r, c) != Scalar(0)) dq_rows.row(r) += dp(r, c) * scratch.k.row(c).head(d);
            }
          }
        } else {
          register_product<true>(bq, d, bk, scratch.dp.data(), stride, 1, scratch.k.data(),
                                 scratch.k.cols(), dq_i, dq.stride);
        }
      }
    }
    MatrixView<Scalar>(p.dk).block(j0, g * d, bk, d) =
        p.scale * scratch.dk_t.leftCols(bk).transpose();
    MatrixView<Scalar>(p.dv).block(j0, g * dv, bk, dv) = scratch.dv_t.leftCols(bk).transpose();
  }
}

/// Runs the backward problem over the executor's workers.
template <typename Scalar, typename SM>
void run_backward(const BackwardProblem<Scalar>& p, const SM& score_mask,
                  const Executor& executor) {
  const Index n = p.q.rows(), m = p.k.rows(), heads = p.num_heads, dv = p.value_dim;
  if (n == 0 || m == 0) {
    MatrixView<Scalar>(p.dq).setZero();
    MatrixView<Scalar>(p.dk).setZero();
    MatrixView<Scalar>(p.dv).setZero();
    return;
  }
  const TileMask<Scalar, SM> mask(score_mask, n, m, heads, p.first_query_position,
                                  p.first_key_position, p.first_head);
  // The passes over whole rows (D, and the sum of dQ's parts) run on the workers too, in blocks
  // of rows: each row's result is the same whoever computes it, and serial passes over memory
  // would be what the threads cannot share.
  constexpr Index row_block = 64;
  const auto for_rows = [&](const auto& pass) {
    parallel_for(
        (n + row_block - 1) / row_block,
        [&](Index begin, Index end) { pass(begin * row_block, std::min(n, end * row_block)); },
        executor);
  };
  // D = rowsum(dO ∘ O) per row and head.
  Matrix<Scalar> d_rows(n, heads);
  for_rows([&](Index first, Index last) {
    for (Index i = first; i < last; ++i) {
      for (Index h = 0; h < heads; ++h) {
        d_rows(i, h) = p.d_out.row(i).segment(h * dv, dv).dot(p.out.row(i).segment(h * dv, dv));
      }
    }
  });
  using Blocks = BackwardBlocks<Scalar>;
  const Index key_blocks = (m + Blocks::key_rows - 1) / Blocks::key_rows;
  // dQ's parts are written in whole packets: the first chunk adds into dQ itself when a head's
  // columns are whole packets, every other chunk into a partial (head h at columns h·d_padded),
  // summed in chunk order afterwards. Each item first zeroes its heads' columns of its part.
  const Index d_padded = Blocks::padded(p.head_dim);
  const bool direct = d_padded == p.head_dim;
  const Index chunks = backward_chunks(n, key_blocks, heads, p.num_kv_heads, d_padded,
                                       Index(sizeof(Scalar)), direct);
  const auto chunk_begin = [&](Index c) {
    return std::min(m, (key_blocks * c / chunks) * Blocks::key_rows);
  };
  const Index width = heads * d_padded;
  const Index first_partial = direct ? 1 : 0;
  Matrix<Scalar> partials((chunks - first_partial) * n, width);
  const auto target = [&](Index c) {
    if (c < first_partial)
      return DqTarget<Scalar>{MatrixView<Scalar>(p.dq).data(), p.dq.outerStride(), p.head_dim};
    return DqTarget<Scalar>{partials.data() + (c - first_partial) * n * width, width, d_padded};
  };
  const Index items = p.num_kv_heads * chunks, group = p.group();
  parallel_for(
      items,
      [&](Index begin, Index end) {
        BackwardScratch<Scalar> scratch(p.head_dim, dv);
        for (Index item = begin; item < end; ++item) {
          const Index g = item / chunks, c = item % chunks;
          const DqTarget<Scalar> part = target(c);
          MatrixView<Scalar>(part.data + g * group * part.head_stride, n, group * part.head_stride,
                             Eigen::OuterStride<>(part.stride))
              .setZero();
          backward_keys(p, mask, d_rows, g, chunk_begin(c), chunk_begin(c + 1), part, scratch);
        }
      },
      executor);
  if (chunks == first_partial) return;
  for_rows([&](Index first, Index last) {
    MatrixView<Scalar> dq(p.dq);
    for (Index c = first_partial; c < chunks; ++c) {
      const auto part = partials.middleRows((c - first_partial) * n + first, last - first);
      for (Index h = 0; h < heads; ++h) {
        auto rows = dq.block(first, h * p.head_dim, last - first, p.head_dim);
        if (c == 0) {
          rows = part.middleCols(h * d_padded, p.head_dim);  // (not direct: dQ is the sum)
        } else {
          rows += part.middleCols(h * d_padded, p.head_dim);
        }
      }
    }
  });
}

}  // namespace attn::detail
