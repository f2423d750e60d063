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
#include <vector>

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
  Scalar* weights = nullptr;  // optional (H·n) × m attention weights, head h in rows h·n…
  Index weights_stride = 0;
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

/// Where a query block's normalised rows and log-sum-exps go: the problem's output, or one key
/// split's partial result.
template <typename Scalar>
struct BlockOutput {
  Scalar* out;  // row r, value e at out[r·out_stride + e]
  Index out_stride;
  Scalar* lse;  // row r at lse[r·lse_stride], or nullptr
  Index lse_stride;
};

/// A query block of one head with the key range it attends over.
struct QueryBlock {
  Index head;
  Index first_row;
  Index rows;
  Index keys_begin;  // the window's and the key split's range, intersected
  Index keys_end;
};

/// The scratch's per-block geometry: padded width, whether the narrow path serves it.
struct BlockShape {
  bool narrow;
  Index width;
};

template <typename Scalar>
BlockShape block_shape(Index rows) {
  constexpr Index size = PacketTraits<Scalar>::size;
  constexpr Index lanes = PacketTraits<Scalar>::tile_cols;
  // A block narrower than a packet (decoding: one to a few queries) would waste most of a
  // register tile; Eigen's products (GEMV for one query) serve it instead. Otherwise queries are
  // padded to whole register tiles: padding columns hold zero queries, are never masked and never
  // written out.
  const bool narrow = rows < size;
  return {narrow, narrow ? (rows + size - 1) / size * size : (rows + lanes - 1) / lanes * lanes};
}

/// Logits of one tile, Sᵀ (keys × rows) = K_b·(scale·Qᵀ) for keys [j0, j0 + keys), soft-capped,
/// biased and masked; K's rows are broadcast from the caller's storage.
template <typename Scalar>
void score_tile(const AttentionProblem<Scalar>& p, const TileMask<Scalar>& mask,
                TileScratch<Scalar>& scratch, const QueryBlock& b, BlockShape shape, Index j0,
                Index keys) {
  constexpr Index lanes = PacketTraits<Scalar>::tile_cols;
  const Index d = p.head_dim;
  const Index stride = query_block_rows;
  const Index k_stride = p.k.outerStride();
  const Scalar* k = p.k.data() + (b.head / (p.num_heads / p.num_kv_heads)) * d + j0 * k_stride;
  MatrixView<Scalar> s_tile(scratch.s_t.data(), keys, b.rows, Eigen::OuterStride<>(stride));
  if (shape.narrow) {
    s_tile.noalias() = ConstMatrixView<Scalar>(k, keys, d, Eigen::OuterStride<>(k_stride)) *
                       scratch.q_t.leftCols(b.rows);
  } else {
    for (Index i = 0; i < shape.width; i += lanes) {
      register_block<false>(keys, d, k, k_stride, Index(1), scratch.q_t.data() + i, stride,
                            scratch.s_t.data() + i, stride);
    }
  }
  if (p.softcap > 0) {
    s_tile = p.softcap * (s_tile.array() / p.softcap).tanh();
  }
  const Index i1 = b.first_row + b.rows;
  const bool window_cut = !mask.window_covers(b.first_row, i1, j0, j0 + keys);
  if (window_cut || mask.has_explicit()) {
    auto s = s_tile.transpose();  // (query, key) indexing
    mask.apply(s, b.first_row, j0, window_cut);
  }
}

/// Attention for one query block over its key range, queries along the vector lanes; writes
/// normalised rows (zero where no key was visible) and log-sum-exps (−∞ there) to `dst`.
template <typename Scalar>
void attend_query_block(const AttentionProblem<Scalar>& p, const TileMask<Scalar>& mask,
                        TileScratch<Scalar>& scratch, const QueryBlock& b,
                        const BlockOutput<Scalar>& dst) {
  using Packet = typename PacketTraits<Scalar>::Packet;
  constexpr Index lanes = PacketTraits<Scalar>::tile_cols;
  constexpr Scalar minus_infinity = -std::numeric_limits<Scalar>::infinity();
  const Index d = p.head_dim;
  const Index dv = p.value_dim;
  const Index rows = b.rows;
  const BlockShape shape = block_shape<Scalar>(rows);
  const Index width = shape.width;
  const Index stride = query_block_rows;
  Scalar* s_t = scratch.s_t.data();
  Scalar* out_t = scratch.out_t.data();
  const Index v_stride = p.v.outerStride();
  const Scalar* v = p.v.data() + (b.head / (p.num_heads / p.num_kv_heads)) * dv;

  // 1. Scaled, transposed queries: the scale is folded in once instead of into every logit.
  scratch.q_t.leftCols(width).setZero();
  scratch.q_t.leftCols(rows) = p.scale * p.q.block(b.first_row, b.head * d, rows, d).transpose();
  scratch.out_t.leftCols(width).setZero();
  scratch.row_max.head(width).setConstant(minus_infinity);
  scratch.row_sum.head(width).setZero();

  // 2. Stream over the key blocks of the range.
  for (Index j0 = b.keys_begin; j0 < b.keys_end; j0 += key_block_rows) {
    const Index keys = std::min(key_block_rows, b.keys_end - j0);
    score_tile(p, mask, scratch, b, shape, j0, keys);

    // Online softmax down the columns; rescale what Oᵀ holds by each column's correction.
    online_softmax(s_t, stride, keys, width, scratch.row_max.data(), scratch.row_sum.data(),
                   scratch.correction.data());
    for (Index e = 0; e < dv; ++e) {
      for (Index i = 0; i < width; i += PacketTraits<Scalar>::size) {
        Scalar* o = out_t + e * stride + i;
        packet::pstoreu(o, packet::pmul(packet::ploadu<Packet>(o),
                                        packet::ploadu<Packet>(scratch.correction.data() + i)));
      }
    }

    // Oᵀ += V_bᵀ·Pᵀ: V's elements broadcast from the caller's storage.
    if (shape.narrow) {
      scratch.out_t.leftCols(rows).noalias() +=
          ConstMatrixView<Scalar>(v + j0 * v_stride, keys, dv, Eigen::OuterStride<>(v_stride))
              .transpose() *
          MatrixView<Scalar>(s_t, keys, rows, Eigen::OuterStride<>(stride));
    } else {
      for (Index i = 0; i < width; i += lanes) {
        register_block<true>(dv, keys, v + j0 * v_stride, Index(1), v_stride, s_t + i, stride,
                             out_t + i, stride);
      }
    }
  }

  // 3. Normalise once; a row that saw no key is zero with log-sum-exp −∞.
  for (Index r = 0; r < rows; ++r) {
    const Scalar sum = scratch.row_sum[r];
    Eigen::Map<Eigen::Matrix<Scalar, 1, Eigen::Dynamic>> out_row(dst.out + r * dst.out_stride, dv);
    if (sum > 0) {
      out_row = scratch.out_t.col(r).transpose() / sum;
    } else {
      out_row.setZero();
    }
    // Kept for the weights pass even when the caller wants no log-sum-exp.
    scratch.row_max[r] = sum > 0 ? scratch.row_max[r] + std::log(sum) : minus_infinity;
    if (dst.lse != nullptr) dst.lse[r * dst.lse_stride] = scratch.row_max[r];
  }

  // 4. Opt-in: the attention weights exp(logit − lse), recomputed tile by tile (the default path
  //    never pays for them).
  if (p.weights != nullptr) {
    for (Index j0 = b.keys_begin; j0 < b.keys_end; j0 += key_block_rows) {
      const Index keys = std::min(key_block_rows, b.keys_end - j0);
      score_tile(p, mask, scratch, b, shape, j0, keys);
      for (Index r = 0; r < rows; ++r) {
        Scalar* w = p.weights + (b.head * p.q.rows() + b.first_row + r) * p.weights_stride + j0;
        const Scalar lse = scratch.row_max[r];
        for (Index j = 0; j < keys; ++j) {
          w[j] = lse == minus_infinity ? Scalar(0) : std::exp(s_t[j * stride + r] - lse);
        }
      }
    }
  }
}

/// Combines partial results over disjoint key sets: given each part's normalised row and
/// log-sum-exp, the row over the union is Σ exp(lse_s − lse)·out_s with lse = log Σ exp(lse_s).
/// Parts with lse = −∞ (no visible key) contribute nothing; if all are empty the row is zero.
template <typename Scalar>
void merge_rows(Index parts, const Scalar* const* outs, const Scalar* lses, Index dv, Scalar* out,
                Scalar* lse) {
  constexpr Scalar minus_infinity = -std::numeric_limits<Scalar>::infinity();
  Scalar max = minus_infinity;
  for (Index s = 0; s < parts; ++s)
    max = std::max(max, lses[s]);
  Eigen::Map<Eigen::Matrix<Scalar, 1, Eigen::Dynamic>> row(out, dv);
  row.setZero();
  if (max == minus_infinity) {
    if (lse != nullptr) *lse = minus_infinity;
    return;
  }
  Scalar total = 0;
  for (Index s = 0; s < parts; ++s) {
    if (lses[s] == minus_infinity) continue;
    const Scalar weight = std::exp(lses[s] - max);
    total += weight;
    row += weight * Eigen::Map<const Eigen::Matrix<Scalar, 1, Eigen::Dynamic>>(outs[s], dv);
  }
  row /= total;
  if (lse != nullptr) *lse = max + std::log(total);
}

/// Keys per split when few queries meet many keys (decoding): the keys are split so that the
/// work spreads over threads even for one head, each split returns a partial result with its
/// log-sum-exp, and the partials are merged in a fixed order. The split depends only on the
/// shape, never on the thread count, so results are bitwise identical for any executor.
inline constexpr Index decode_split_keys = 1024;

inline Index key_splits(Index n, Index m) {
  if (n >= query_block_rows || m < 2 * decode_split_keys) return 1;
  return (m + decode_split_keys - 1) / decode_split_keys;
}

/// Runs the whole problem: work items are (head, query block) in balanced order, or, when
/// decoding over many keys, (head, query block, key split) followed by a merge; all over the
/// executor's threads.
template <typename Scalar>
void run_attention(const AttentionProblem<Scalar>& p, const Mask& mask, const Executor& executor) {
  const Index n = p.q.rows();
  const Index m = p.k.rows();
  if (n == 0) return;
  const TileMask<Scalar> tile_mask(mask, n, m);
  const Index blocks = (n + query_block_rows - 1) / query_block_rows;
  const Index dv = p.value_dim;
  MatrixView<Scalar> out = p.out;  // p is const; the storage it points to is not
  const auto query_block = [&](Index h, Index block) {
    const Index i0 = block * query_block_rows;
    const Index rows = std::min(query_block_rows, n - i0);
    return QueryBlock{h, i0, rows, tile_mask.key_begin(i0), tile_mask.key_end(i0 + rows - 1)};
  };
  const Index splits = p.weights != nullptr ? 1 : key_splits(n, m);

  if (splits == 1) {
    parallel_for(
        p.num_heads * blocks,
        [&](Index begin, Index end) {
          TileScratch<Scalar> scratch(p.head_dim, p.value_dim);
          for (Index item = begin; item < end; ++item) {
            const QueryBlock b = query_block(item / blocks, balanced_block(item % blocks, blocks));
            const BlockOutput<Scalar> dst{
                out.data() + b.first_row * out.outerStride() + b.head * dv, out.outerStride(),
                p.lse == nullptr ? nullptr : p.lse + b.first_row * p.lse_stride + b.head,
                p.lse_stride};
            attend_query_block(p, tile_mask, scratch, b, dst);
          }
        },
        executor);
    return;
  }

  // Decoding: n < one query block, so blocks = 1. Partials per (head, split): n rows of dv and n
  // log-sum-exps.
  ATTN_ASSERT(blocks == 1);
  Matrix<Scalar> partial_out(p.num_heads * splits * n, dv);
  Matrix<Scalar> partial_lse(p.num_heads * splits, n);
  parallel_for(
      p.num_heads * splits,
      [&](Index begin, Index end) {
        TileScratch<Scalar> scratch(p.head_dim, p.value_dim);
        for (Index item = begin; item < end; ++item) {
          const Index split = item % splits;
          QueryBlock b = query_block(item / splits, 0);
          b.keys_begin = std::max(b.keys_begin, m * split / splits);
          b.keys_end = std::min(b.keys_end, m * (split + 1) / splits);
          const BlockOutput<Scalar> dst{partial_out.data() + item * n * dv, dv,
                                        partial_lse.data() + item * n, 1};
          attend_query_block(p, tile_mask, scratch, b, dst);
        }
      },
      executor);
  std::vector<const Scalar*> outs(static_cast<std::size_t>(splits));
  Vector<Scalar> lses(splits);
  for (Index h = 0; h < p.num_heads; ++h) {
    for (Index r = 0; r < n; ++r) {
      for (Index s = 0; s < splits; ++s) {
        const Index item = h * splits + s;
        outs[static_cast<std::size_t>(s)] = partial_out.data() + (item * n + r) * dv;
        lses[s] = partial_lse(item, r);
      }
      merge_rows(splits, outs.data(), lses.data(), dv, out.data() + r * out.outerStride() + h * dv,
                 p.lse == nullptr ? nullptr : p.lse + r * p.lse_stride + h);
    }
  }
}

}  // namespace attn::detail

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
