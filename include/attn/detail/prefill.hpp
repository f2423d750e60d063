// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors
#pragma once

/// \file detail/prefill.hpp
/// The prefill path: one block of queries of one head, streamed over blocks of keys with the
/// online softmax, so no n×m matrix exists and key blocks the window hides are never touched.
///
/// A block works in transposed form, queries along the vector lanes: Qᵀ (d × Bq, scaled), the
/// logits Sᵀ = K_b·Qᵀ (Bk × Bq), and the accumulator Oᵀ (dv × Bq) += V_bᵀ·Pᵀ. Both products are
/// then register tiles that broadcast one element of K or V from row-major storage (the caller's,
/// or one head's contiguous copy), the S tiles also yield the softmax's max, and the softmax runs
/// down columns with whole packets (no horizontal reductions). Qᵀ and the output go through
/// packet transposes once per block.

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>

#include "../types.hpp"
#include "attention_problem.hpp"
#include "convert.hpp"
#include "decode.hpp"
#include "kernel_scratch.hpp"
#include "online_softmax.hpp"
#include "packet_math.hpp"
#include "register_tile.hpp"
#include "tile_mask.hpp"

namespace attn::detail {

/// Opt-in: the attention weights exp(logit − lse) of a block, recomputed tile by tile through
/// Eigen's products (the default path never pays for them). `softmax` holds the block's finished
/// state, row r for query first_row + r.
template <typename Problem, typename TM, typename Scalar = typename Problem::Scalar>
void write_weights(const Problem& p, const TM& mask, KernelScratch<Scalar>& scratch,
                   const QueryBlock& b, const OnlineSoftmax<Scalar>& softmax) {
  const Index d = p.head_dim;
  const Index key_rows = scratch.blocks.key_rows;
  const Index g = p.kv_head(b.head);
  scratch.q_t.leftCols(b.rows) =
      p.scale * p.q.block(b.first_row, b.head * d, b.rows, d).transpose().template cast<Scalar>();
  for (Index j0 = b.keys_begin; j0 < b.keys_end; j0 += key_rows) {
    const Index keys = std::min(key_rows, b.keys_end - j0);
    const BlockClass block_class =
        mask.classify(b.head, b.first_row, b.first_row + b.rows, j0, j0 + keys);
    if (block_class.combined() == Visibility::none) continue;  // (the weights are zero already)
    auto s_t = scratch.s_t.topLeftCorner(keys, b.rows);
    const Scalar* k = nullptr;
    Index k_stride = d;
    if constexpr (Problem::kv_in_scalar) {
      k = p.k.data() + j0 * p.k.outerStride() + g * d;
      k_stride = p.k.outerStride();
    } else {
      convert_rows(p.k, j0, keys, g * d, d, scratch.staged_k.data(), d);
      k = scratch.staged_k.data();
    }
    s_t.noalias() = ConstMatrixView<Scalar>(k, keys, d, Eigen::OuterStride<>(k_stride)) *
                    scratch.q_t.leftCols(b.rows);
    finish_logits(p, mask, s_t.data(), 1, s_t.outerStride(), b.rows, keys, b.head, b.first_row, j0,
                  block_class);
    for (Index r = 0; r < b.rows; ++r) {
      Scalar* w = p.weights + (b.head * p.q.rows() + b.first_row + r) * p.weights_stride + j0;
      const Scalar lse = softmax.log_sum_exp(r);
      for (Index j = 0; j < keys; ++j)
        w[j] = is_minus_infinity(lse) ? Scalar(0) : std::exp(s_t(j, r) - lse);
    }
  }
}

/// Attention for one query block over its key range; writes normalised rows (zero where no key
/// was visible) and log-sum-exps (−∞ there) to `dst`.
// q_t: (d, Bq), s_t: (Bk, Bq), out_t: (dv, Bq); K_b: (Bk, d), V_b: (Bk, dv) -> dst: (rows, dv)
template <typename Problem, typename TM, typename Scalar = typename Problem::Scalar>
void attend_query_block(const Problem& p, const TM& mask, KernelScratch<Scalar>& scratch,
                        const QueryBlock& b, const HeadKeyValues<Scalar>& kv,
                        const BlockOutput<Scalar>& dst) {
  constexpr Index size = PacketTraits<Scalar>::size;
  constexpr Index lanes = TileTraits<Scalar>::columns;
  constexpr Scalar minus_infinity = -std::numeric_limits<Scalar>::infinity();
  const Index rows = b.rows;
  OnlineSoftmax<Scalar> softmax(scratch.row_max.data(), scratch.row_sum.data());
  if (rows < size) {
    // A register tile would waste most of its lanes on so few queries.
    attend_decode(p, mask, DecodeState<Scalar>{scratch, b.head, 1, rows}, b.first_row, b.keys_begin,
                  b.keys_end, [&](Index) { return dst; });
    if (p.weights != nullptr) write_weights(p, mask, scratch, b, softmax);
    return;
  }
  const Index d = p.head_dim;
  const Index dv = p.value_dim;
  const Index key_rows = scratch.blocks.key_rows;
  // Queries padded to whole register tiles: padding columns hold zero queries, are never masked
  // and never written out.
  const Index width = (rows + lanes - 1) / lanes * lanes;
  const Index stride = scratch.blocks.block_stride;
  Scalar* q_t = scratch.q_t.data();
  Scalar* s_t = scratch.s_t.data();
  Scalar* out_t = scratch.out_t.data();
  const Index g = p.kv_head(b.head);
  // Where the next key block's rows come from, for the prefetches: K and V as the tiles read
  // them (in place or packed), or their storage when each block is converted first.
  [[maybe_unused]] const bool staged = kv.k == nullptr;
  // (Paged rows are staged or packed by runs and not prefetched: no stride leads to the next.)
  const auto k_source = [&] {
    if constexpr (Problem::kv_in_scalar) {
      return std::pair(kv.k, kv.k_stride);
    } else if constexpr (is_paged_view<decltype(p.k)>) {
      return std::pair(static_cast<const Scalar*>(nullptr), d);
    } else {
      return std::pair(p.k.rows() == 0 ? p.k.data() : p.k.data() + g * d,
                       staged ? p.k.outerStride() : d);  // (packed: contiguous, not prefetched)
    }
  }();
  const auto v_source = [&] {
    if constexpr (Problem::kv_in_scalar) {
      return std::pair(kv.v, kv.v_stride);
    } else if constexpr (is_paged_view<decltype(p.v)>) {
      return std::pair(static_cast<const Scalar*>(nullptr), dv);
    } else {
      return std::pair(p.v.rows() == 0 ? p.v.data() : p.v.data() + g * dv,
                       staged ? p.v.outerStride() : dv);
    }
  }();

  // 1. Scaled, transposed queries: the scale is folded in once instead of into every logit.
  scratch.q_t.leftCols(width).setZero();
  transpose_scaled(p.q.data() + b.first_row * p.q.outerStride() + b.head * d, p.q.outerStride(),
                   rows, d, p.scale, q_t, stride);
  scratch.out_t.leftCols(width).setZero();
  softmax.reset(width);
  // 2. Stream over the key blocks of the range: whole blocks from its first key and up to its
  // last, the remainder second to last. A window's edges (a causal diagonal, the far side of a
  // sliding window) then lie within one block each, not across two.
  const Index blocks = (b.keys_end - b.keys_begin + key_rows - 1) / key_rows;
  const Index remainder = b.keys_end - b.keys_begin - (blocks - 1) * key_rows;
  const auto block_keys = [&](Index kb) { return kb == blocks - 2 ? remainder : key_rows; };
  Index j0 = b.keys_begin;
  for (Index kb = 0; kb < blocks; j0 += block_keys(kb), ++kb) {
    const Index keys = blocks == 1 ? remainder : block_keys(kb);
    const BlockClass block_class =
        mask.classify(b.head, b.first_row, b.first_row + rows, j0, j0 + keys);
    if (block_class.combined() == Visibility::none) continue;  // never read

    // The next key block's K and V rows are asked for while this block computes, a share before
    // each register tile (of all column panels), when they are strided: each row of a head is
    // then a few cache lines a whole row stride apart, which the hardware prefetchers do not
    // follow, so without this every block starts with a wait on L3 or memory. (Contiguous rows
    // they do follow.)
    const Index next_keys = kb + 1 < blocks ? block_keys(kb + 1) : 0;
    const Index panels = width / lanes;
    const auto prefetch_share = [&](const auto* head, Index head_stride, Index cols) {
      return [=](Index t, Index tiles) {
        if (next_keys <= 0 || cols == 0 || head_stride == cols) return;  // (cols = 0: null data)
        const Index first = t * next_keys / tiles, last = (t + 1) * next_keys / tiles;
        prefetch_block(head + (j0 + keys + first) * head_stride, head_stride, last - first, cols);
      };
    };

    // 2a. Logits Sᵀ = K_b·(scale·Qᵀ), soft-capped, biased and masked. The register tiles also
    // find each query's max, which holds unless soft-capping or masking changes the logits.
    Scalar* column_max = scratch.column_max.data();
    scratch.column_max.head(width).setConstant(minus_infinity);
    const HeadKeyValues<Scalar> block = key_block(p, scratch, kv, g, j0, keys);
    const auto prefetch_k = prefetch_share(k_source.first, k_source.second, d);
    for (Index i = 0; i < width; i += lanes) {
      register_block<false>(keys, d, block.k, block.k_stride, Index(1), q_t + i, stride, s_t + i,
                            stride, column_max + i, [&](Index t, Index tiles) {
                              prefetch_k(i / lanes * tiles + t, panels * tiles);
                            });
    }
    const bool masked =
        finish_logits(p, mask, s_t, 1, stride, rows, keys, b.head, b.first_row, j0, block_class);
    const bool max_holds = !masked && !(p.softcap > 0) && !TM::has_score;

    // 2b. Online softmax down the columns; Oᵀ rescaled only in the packets of queries whose max
    // rose (with random logits the max of some query still rises in most key blocks, that of a
    // given packet far less often).
    const std::uint64_t rescaled = softmax.step_columns(
        s_t, stride, keys, width, max_holds ? column_max : nullptr, scratch.rescale.data());
    OnlineSoftmax<Scalar>::rescale_columns(out_t, stride, dv, width, scratch.rescale.data(),
                                           rescaled);

    // 2c. Oᵀ += V_bᵀ·Pᵀ.
    // (Checked on the rows as the tiles read them: packed or staged, they are in cache.)
    if (masked && !all_finite(block.v, block.v_stride, keys, dv)) {
      for (Index j = 0; j < keys; ++j) {
        const Eigen::Map<const Vector<Scalar>> v_row(block.v + j * block.v_stride, dv);
        for (Index r = 0; r < rows; ++r) {
          if (s_t[j * stride + r] != 0) scratch.out_t.col(r) += s_t[j * stride + r] * v_row;
        }
      }
    } else {
      const auto prefetch_v = prefetch_share(v_source.first, v_source.second, dv);
      for (Index i = 0; i < width; i += lanes) {
        register_block<true>(
            dv, keys, block.v, Index(1), block.v_stride, s_t + i, stride, out_t + i, stride,
            static_cast<Scalar*>(nullptr),
            [&](Index t, Index tiles) { prefetch_v(i / lanes * tiles + t, panels * tiles); });
      }
    }
  }

  // 3. Normalise once: Oᵀ's columns by 1 / L (0 where no key was visible: the column holds zeros
  // then; a NaN sum keeps the column NaN), transposed into the destination.
  softmax.normalize_columns(out_t, stride, dv, rows, width, scratch.rescale.data());
  transpose_scaled(out_t, stride, dv, rows, Scalar(1), dst.out, dst.out_stride);
  for (Index r = 0; r < rows; ++r) {
    if (!softmax.saw_keys(r)) {  // exact zeros (0 · a finite −x would give −0)
      Eigen::Map<Eigen::Matrix<Scalar, 1, Eigen::Dynamic>>(dst.out + r * dst.out_stride, dv)
          .setZero();
    }
    if (dst.lse != nullptr) dst.lse[r * dst.lse_stride] = softmax.log_sum_exp(r);
  }
  if (p.weights != nullptr) write_weights(p, mask, scratch, b, softmax);
}

}  // namespace attn::detail
