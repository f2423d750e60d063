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
/// block of its heads passes over it.
struct BackwardBlocks {
  static constexpr Index query_rows = 128;
  static constexpr Index key_rows = 128;
};

/// How many chunks the keys are cut into: enough work items for several threads on few heads,
/// and at most 32 MiB of partial dQ (n × H·d each, beyond the first, which is dQ itself). A
/// function of the shape only.
inline Index backward_chunks(Index n, Index m, Index heads, Index head_dim, Index scalar_bytes) {
  const Index key_blocks = (m + BackwardBlocks::key_rows - 1) / BackwardBlocks::key_rows;
  const double partial_bytes = double(n) * double(heads * head_dim) * double(scalar_bytes);
  const Index by_memory =
      partial_bytes > 0 ? Index(double(Index(32) << 20) / partial_bytes) + 1 : Index(8);
  return std::max<Index>(1, std::min<Index>({Index(8), key_blocks, by_memory}));
}

/// The scratch of one worker: a tile's logits (then P), tanh of the capped logits, dP (then dS),
/// the score function's derivative, and a key block's dK and dV.
template <typename Scalar>
struct BackwardScratch {
  BackwardScratch(Index head_dim, Index value_dim)
      : s(BackwardBlocks::query_rows, BackwardBlocks::key_rows),
        t(BackwardBlocks::query_rows, BackwardBlocks::key_rows),
        dp(BackwardBlocks::query_rows, BackwardBlocks::key_rows),
        u(BackwardBlocks::query_rows, BackwardBlocks::key_rows),
        dk(BackwardBlocks::key_rows, head_dim),
        dv(BackwardBlocks::key_rows, value_dim) {}
  Matrix<Scalar> s, t, dp, u, dk, dv;
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

/// The gradients of the keys [key_begin, key_end) of kv head g over every query of its group's
/// heads: dK and dV of those rows, and the group's heads' part of dQ from these keys, added to
/// dq_part (n × H·d, row stride dq_stride). D (n × H) is rowsum(dO ∘ O).
template <typename Scalar, typename SM>
void backward_keys(const BackwardProblem<Scalar>& p, const TileMask<Scalar, SM>& mask,
                   const Matrix<Scalar>& d_rows, Index g, Index key_begin, Index key_end,
                   Scalar* dq_part, Index dq_stride, BackwardScratch<Scalar>& scratch) {
  const Index n = p.q.rows(), d = p.head_dim, dv = p.value_dim;
  const Index bq_max = BackwardBlocks::query_rows, bk_max = BackwardBlocks::key_rows;
  const Index stride = bk_max;  // of the tiles s, t, dp, u
  // A score function that is not additive multiplies dS by its derivative at the logit.
  constexpr bool chain_score = !TileMask<Scalar, SM>::score_additive;
  Vector<Scalar> d_column(bq_max);
  for (Index j0 = key_begin; j0 < key_end; j0 += bk_max) {
    const Index bk = std::min(bk_max, key_end - j0);
    const auto k_j = p.k.block(j0, g * d, bk, d);
    const auto v_j = p.v.block(j0, g * dv, bk, dv);
    // A key row the mask hides may hold anything: where it is not finite, dQ's product must skip
    // the zeros of dS instead of multiplying through them.
    const bool keys_finite = rows_finite(p.k, j0, bk, g * d, d);
    auto dk_acc = scratch.dk.topRows(bk);
    auto dv_acc = scratch.dv.topRows(bk);
    dk_acc.setZero();
    dv_acc.setZero();
    for (Index h = g * p.group(); h < (g + 1) * p.group(); ++h) {
      for (Index i0 = 0; i0 < n; i0 += bq_max) {
        const Index bq = std::min(bq_max, n - i0);
        const BlockClass visible = mask.classify(h, i0, i0 + bq, j0, j0 + bk);
        if (visible.combined() == Visibility::none) continue;
        const auto q_i = p.q.block(i0, h * d, bq, d);
        const auto do_i = p.d_out.block(i0, h * dv, bq, dv);
        auto s = scratch.s.topLeftCorner(bq, bk);
        auto t = scratch.t.topLeftCorner(bq, bk);
        auto dp = scratch.dp.topLeftCorner(bq, bk);
        auto u = scratch.u.topLeftCorner(bq, bk);
        s.noalias() = q_i * k_j.transpose();
        s *= p.scale;
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
        dv_acc.noalias() += s.transpose() * do_i;
        dp.noalias() = do_i * v_j.transpose();
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
              dp(r, c) = prob == Scalar(0) ? Scalar(0) : ds;
            }
          }
        } else {
          d_column.head(bq) = d_rows.col(h).segment(i0, bq);
          dp.array() = s.array() * (dp.array().colwise() - d_column.head(bq).array());
          if constexpr (chain_score) dp.array() *= u.array();
        }
        if (p.softcap > 0) dp.array() *= Scalar(1) - t.array().square();
        dp *= p.scale;
        dk_acc.noalias() += dp.transpose() * q_i;
        MatrixView<Scalar> dq_i(dq_part + i0 * dq_stride + h * d, bq, d,
                                Eigen::OuterStride<>(dq_stride));
        if (masked && !keys_finite) {
          for (Index r = 0; r < bq; ++r) {
            for (Index c = 0; c < bk; ++c) {
              if (dp(r, c) != Scalar(0)) dq_i.row(r) += dp(r, c) * k_j.row(c);
            }
          }
        } else {
          dq_i.noalias() += dp * k_j;
        }
      }
    }
    MatrixView<Scalar>(p.dk).block(j0, g * d, bk, d) = dk_acc;
    MatrixView<Scalar>(p.dv).block(j0, g * dv, bk, dv) = dv_acc;
  }
}

/// Runs the backward problem over the executor's workers.
template <typename Scalar, typename SM>
void run_backward(const BackwardProblem<Scalar>& p, const SM& score_mask,
                  const Executor& executor) {
  const Index n = p.q.rows(), m = p.k.rows(), heads = p.num_heads, dv = p.value_dim;
  MatrixView<Scalar>(p.dq).setZero();
  if (n == 0 || m == 0) {
    MatrixView<Scalar>(p.dk).setZero();
    MatrixView<Scalar>(p.dv).setZero();
    return;
  }
  const TileMask<Scalar, SM> mask(score_mask, n, m, heads, p.first_query_position,
                                  p.first_key_position, p.first_head);
  // D = rowsum(dO ∘ O) per row and head.
  Matrix<Scalar> d_rows(n, heads);
  for (Index i = 0; i < n; ++i) {
    for (Index h = 0; h < heads; ++h) {
      d_rows(i, h) = p.d_out.row(i).segment(h * dv, dv).dot(p.out.row(i).segment(h * dv, dv));
    }
  }
  const Index chunks = backward_chunks(n, m, heads, p.head_dim, Index(sizeof(Scalar)));
  const Index key_blocks = (m + BackwardBlocks::key_rows - 1) / BackwardBlocks::key_rows;
  const auto chunk_begin = [&](Index c) {
    return std::min(m, (key_blocks * c / chunks) * BackwardBlocks::key_rows);
  };
  // Chunk 0 adds into dQ itself; the others into partials, summed in order afterwards.
  const Index width = heads * p.head_dim;
  Matrix<Scalar> partials = Matrix<Scalar>::Zero((chunks - 1) * n, width);
  const Index items = p.num_kv_heads * chunks;
  parallel_for(
      items,
      [&](Index begin, Index end) {
        BackwardScratch<Scalar> scratch(p.head_dim, dv);
        for (Index item = begin; item < end; ++item) {
          const Index g = item / chunks, c = item % chunks;
          Scalar* dq_part =
              c == 0 ? MatrixView<Scalar>(p.dq).data() : partials.data() + (c - 1) * n * width;
          const Index dq_stride = c == 0 ? p.dq.outerStride() : width;
          backward_keys(p, mask, d_rows, g, chunk_begin(c), chunk_begin(c + 1), dq_part, dq_stride,
                        scratch);
        }
      },
      executor);
  for (Index c = 1; c < chunks; ++c)
    MatrixView<Scalar>(p.dq) += partials.middleRows((c - 1) * n, n);
}

}  // namespace attn::detail
