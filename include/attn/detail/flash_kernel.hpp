// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors
#pragma once

/// \file detail/flash_kernel.hpp
/// The one attention kernel: fused, tiled, online softmax (flash-style). For a block of queries it
/// streams over blocks of keys, keeping a running max and sum per query, so no n×m matrix exists;
/// key blocks the window hides are never touched.
///
/// A query block works in transposed form, queries along the vector lanes: Qᵀ (d × Bq, scaled),
/// the score tile Sᵀ = K_b·Qᵀ (Bk × Bq), and the accumulator Oᵀ (dv × Bq) += V_bᵀ·Pᵀ. Then both
/// products are register tiles that broadcast one element of K or V straight from the caller's
/// row-major storage (no packing of K or V), the softmax's max and sum run down columns with
/// whole packets (no horizontal reductions), and only Qᵀ, packed once per block, is copied.

#include <algorithm>
#include <cmath>
#include <limits>

#include "../parallel.hpp"
#include "../types.hpp"
#include "packet_math.hpp"
#include "tile_mask.hpp"

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wignored-attributes"
#endif

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

/// Block sizes, for head dims 32–256 on a core with 32 KiB of L1d and ≥ 512 KiB of L2. At
/// d = dv = 64 in float, Qᵀ, Sᵀ and Oᵀ are 16 KiB each and the key block's K and V rows another
/// 16 KiB each: the register tiles read Qᵀ or Pᵀ from L1 and K or V from L1/L2, and K and V stream
/// from L3 only once per query block (Bq/2 FLOP per byte, far below what L3 delivers).
inline constexpr Index query_block_rows = 64;
inline constexpr Index key_block_rows = 64;

/// Scratch for one thread: sized once per chunk of work items, reused for every tile.
template <typename Scalar>
struct TileScratch {
  TileScratch(Index head_dim, Index value_dim)
      // Zeroed so the padding lanes of a narrow block never read uninitialised memory.
      : q_t(Matrix<Scalar>::Zero(head_dim, query_block_rows)),
        s_t(Matrix<Scalar>::Zero(key_block_rows, query_block_rows)),
        out_t(Matrix<Scalar>::Zero(value_dim, query_block_rows)),
        row_max(Vector<Scalar>::Zero(query_block_rows)),
        row_sum(Vector<Scalar>::Zero(query_block_rows)),
        correction(Vector<Scalar>::Zero(query_block_rows)) {}
  Matrix<Scalar> q_t;    // scale·Qᵀ, d × Bq
  Matrix<Scalar> s_t;    // logits, then probabilities, Bk × Bq
  Matrix<Scalar> out_t;  // unnormalised output, dv × Bq
  Vector<Scalar> row_max;
  Vector<Scalar> row_sum;
  Vector<Scalar> correction;
};

/// Query block t of `count` in an order where consecutive pairs carry equal work under a causal
/// mask (0, last, 1, last − 1, ...), so equal contiguous chunks of items carry equal work.
inline Index balanced_block(Index t, Index count) {
  return t % 2 == 0 ? t / 2 : count - 1 - t / 2;
}

/// Online softmax over one score tile, columns [0, width): folds the tile's max into the running
/// max, turns logits into probabilities in place, updates the running sum and returns, per
/// column, the factor by which the accumulator must be rescaled.
template <typename Scalar>
void online_softmax(Scalar* s_t, Index stride, Index keys, Index width, Scalar* row_max,
                    Scalar* row_sum, Scalar* correction) {
  using Packet = typename PacketTraits<Scalar>::Packet;
  constexpr int size = PacketTraits<Scalar>::size;
  const Packet minus_infinity = packet::pset1<Packet>(-std::numeric_limits<Scalar>::infinity());
  const Packet zero = packet::pset1<Packet>(Scalar(0));
  for (Index i = 0; i < width; i += size) {
    Packet tile_max = minus_infinity;
    for (Index j = 0; j < keys; ++j) {
      tile_max = packet::pmax(tile_max, packet::ploadu<Packet>(s_t + j * stride + i));
    }
    const Packet old_max = packet::ploadu<Packet>(row_max + i);
    const Packet new_max = packet::pmax(old_max, tile_max);
    // A column with nothing visible yet subtracts 0 instead of −∞, so its exps are 0, not NaN.
    const Packet shift = packet::pselect(packet::pcmp_eq(new_max, minus_infinity), zero, new_max);
    Packet sum = zero;
    for (Index j = 0; j < keys; ++j) {
      Scalar* s = s_t + j * stride + i;
      const Packet p = softmax_exp(packet::psub(packet::ploadu<Packet>(s), shift));
      packet::pstoreu(s, p);
      sum = packet::padd(sum, p);
    }
    const Packet rescale = softmax_exp(packet::psub(old_max, shift));
    packet::pstoreu(correction + i, rescale);
    packet::pstoreu(row_sum + i, packet::pmadd(rescale, packet::ploadu<Packet>(row_sum + i), sum));
    packet::pstoreu(row_max + i, new_max);
  }
}

/// Attention for query rows [i0, i0 + rows) of head h, queries along the vector lanes.
template <typename Scalar>
void attend_query_block(const AttentionProblem<Scalar>& p, const TileMask<Scalar>& mask,
                        TileScratch<Scalar>& scratch, Index h, Index i0, Index rows) {
  using Packet = typename PacketTraits<Scalar>::Packet;
  constexpr Index lanes = PacketTraits<Scalar>::tile_cols;
  constexpr Scalar minus_infinity = -std::numeric_limits<Scalar>::infinity();
  const Index d = p.head_dim;
  const Index dv = p.value_dim;
  const Index kv_head = h / (p.num_heads / p.num_kv_heads);
  const Index i1 = i0 + rows;
  // A block narrower than a packet (decoding: one to a few queries) would waste most of a
  // register tile; Eigen's products (GEMV for one query) serve it instead. Otherwise queries are
  // padded to whole register tiles: padding columns hold zero queries, are never masked and never
  // written out.
  const bool narrow = rows < PacketTraits<Scalar>::size;
  const Index width = narrow ? (rows + PacketTraits<Scalar>::size - 1) /
                                   PacketTraits<Scalar>::size * PacketTraits<Scalar>::size
                             : (rows + lanes - 1) / lanes * lanes;
  const Index stride = query_block_rows;
  Scalar* q_t = scratch.q_t.data();
  Scalar* s_t = scratch.s_t.data();
  Scalar* out_t = scratch.out_t.data();

  // 1. Scaled, transposed queries: the scale is folded in once instead of into every logit.
  scratch.q_t.leftCols(width).setZero();
  scratch.q_t.leftCols(rows) = p.scale * p.q.block(i0, h * d, rows, d).transpose();
  scratch.out_t.leftCols(width).setZero();
  scratch.row_max.head(width).setConstant(minus_infinity);
  scratch.row_sum.head(width).setZero();

  const Scalar* k = p.k.data() + kv_head * d;
  const Scalar* v = p.v.data() + kv_head * dv;
  const Index k_stride = p.k.outerStride();
  const Index v_stride = p.v.outerStride();

  // 2. Stream over the key blocks the window lets any of these queries see.
  const Index keys_begin = mask.key_begin(i0);
  const Index keys_end = mask.key_end(i1 - 1);
  for (Index j0 = keys_begin; j0 < keys_end; j0 += key_block_rows) {
    const Index keys = std::min(key_block_rows, keys_end - j0);

    // 2a. Sᵀ = K_b·(scale·Qᵀ): K's rows broadcast from the caller's storage.
    MatrixView<Scalar> s_tile(s_t, keys, rows, Eigen::OuterStride<>(stride));
    if (narrow) {
      s_tile.noalias() =
          ConstMatrixView<Scalar>(k + j0 * k_stride, keys, d, Eigen::OuterStride<>(k_stride)) *
          scratch.q_t.leftCols(rows);
    } else {
      for (Index i = 0; i < width; i += lanes) {
        register_block<false>(keys, d, k + j0 * k_stride, k_stride, Index(1), q_t + i, stride,
                              s_t + i, stride);
      }
    }

    // 2b. Soft-cap, bias and mask, only where needed.
    if (p.softcap > 0) {
      s_tile = p.softcap * (s_tile.array() / p.softcap).tanh();
    }
    const bool window_cut = !mask.window_covers(i0, i1, j0, j0 + keys);
    if (window_cut || mask.has_explicit()) {
      auto s = s_tile.transpose();  // (query, key) indexing
      mask.apply(s, i0, j0, window_cut);
    }

    // 2c. Online softmax down the columns; rescale what Oᵀ holds by each column's correction.
    online_softmax(s_t, stride, keys, width, scratch.row_max.data(), scratch.row_sum.data(),
                   scratch.correction.data());
    for (Index e = 0; e < dv; ++e) {
      for (Index i = 0; i < width; i += PacketTraits<Scalar>::size) {
        Scalar* o = out_t + e * stride + i;
        packet::pstoreu(o, packet::pmul(packet::ploadu<Packet>(o),
                                        packet::ploadu<Packet>(scratch.correction.data() + i)));
      }
    }

    // 2d. Oᵀ += V_bᵀ·Pᵀ: V's elements broadcast from the caller's storage.
    if (narrow) {
      scratch.out_t.leftCols(rows).noalias() +=
          ConstMatrixView<Scalar>(v + j0 * v_stride, keys, dv, Eigen::OuterStride<>(v_stride))
              .transpose() *
          s_tile;
    } else {
      for (Index i = 0; i < width; i += lanes) {
        register_block<true>(dv, keys, v + j0 * v_stride, Index(1), v_stride, s_t + i, stride,
                             out_t + i, stride);
      }
    }
  }

  // 3. Normalise once; a row that saw no key is zero with log-sum-exp −∞.
  MatrixView<Scalar> out_all = p.out;  // p is const; the storage it points to is not
  auto out = out_all.block(i0, h * dv, rows, dv);
  for (Index r = 0; r < rows; ++r) {
    const Scalar sum = scratch.row_sum[r];
    if (sum > 0) {
      out.row(r) = scratch.out_t.col(r).transpose() / sum;
    } else {
      out.row(r).setZero();
    }
    if (p.lse != nullptr) {
      p.lse[(i0 + r) * p.lse_stride + h] =
          sum > 0 ? scratch.row_max[r] + std::log(sum) : minus_infinity;
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

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
