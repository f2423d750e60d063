// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors
#pragma once

/// \file detail/kernel_scratch.hpp
/// The scratch one worker of the kernel computes in, carved from one Workspace slot: the
/// prefill's transposed blocks, the decode path's rows, the online softmax's state, and one kv
/// head's K and V packed contiguously when heads share rows.

#include <algorithm>
#include <cstddef>

#include "../types.hpp"
#include "../workspace.hpp"
#include "attention_problem.hpp"
#include "convert.hpp"
#include "packet_math.hpp"
#include "tile_traits.hpp"

namespace attn::detail {

/// When several heads share K's and V's rows, one head's row is a few cache lines a whole row
/// apart (at 8 heads of 64 floats, 256 bytes of every 2 KiB), so a key block of one head touches
/// a new page every other row, which the hardware prefetchers do not follow. The prefill path
/// then prefetches each next key block itself; and when a head has several query blocks, each
/// of which reads all of its K and V, a worker packs them once into contiguous scratch
/// (pack_rows) and every block streams them from there. With a single query block per head the
/// copy would be one more pass over K and V for nothing. K and V stored in 16 or 8 bits are
/// packed (converted to Scalar) whenever a head has several query blocks, so that each value is
/// converted once, not once per query block; with a single query block each key block is
/// converted into L1 scratch as it is reached. Only the prefill path reads packed K/V (the
/// decode path walks whole key rows across the heads, converting in registers), and beyond
/// `max_packed_bytes` per worker the kernel reads (and converts) block by block.
inline constexpr std::size_t max_packed_bytes = std::size_t(64) << 20;

/// `keys_read` is how many key rows all query blocks of one head read together (under the mask's
/// ranges): a head whose key rows are read about once each is not packed, since the copy would
/// be one more pass over all of them. (Strided rows read a few times, as under a sliding window
/// or documents, still gain from the copy: a block of them spans as many pages as rows.)
template <typename Problem>
bool should_pack_heads(const Problem& p, const BlockSizes& blocks, double keys_read) {
  using Scalar = typename Problem::Scalar;
  const Index m = p.k.rows();
  const bool strided =
      !Problem::kv_in_scalar || p.k.outerStride() != p.head_dim || p.v.outerStride() != p.value_dim;
  const bool reused = p.q.rows() > blocks.query_rows && keys_read >= 2.0 * double(m);
  return strided && reused && m > 0 &&
         sizeof(Scalar) * std::size_t(m * (p.head_dim + p.value_dim)) <= max_packed_bytes;
}

/// What one worker's scratch must hold.
struct ScratchShape {
  BlockSizes blocks;
  Index head_dim;
  Index value_dim;
  Index decode_rows;  // rows of decode state: heads × queries when decoding, else one packet
  Index packed_keys;  // rows of packed K and V (0: none)
  Index staged_keys;  // rows of K and V converted from their storage (0: none)
};

/// One worker's scratch, carved from one buffer and reused for every block it computes.
template <typename Scalar>
struct KernelScratch {
  using MatrixMap = Eigen::Map<Matrix<Scalar>, 0, Eigen::OuterStride<>>;
  using VectorMap = Eigen::Map<Vector<Scalar>>;

  /// Scalars a KernelScratch of this shape needs.
  static Index scalars(const ScratchShape& s) {
    const Index stride = s.blocks.block_stride;
    const Index state = std::max(s.blocks.query_rows, s.decode_rows);
    return (s.head_dim + s.blocks.key_rows + s.value_dim) * stride +
           s.decode_rows * (s.head_dim + s.blocks.decode_keys + s.value_dim) + 3 * state +
           s.blocks.query_rows + (s.packed_keys + s.staged_keys) * (s.head_dim + s.value_dim) +
           packed_chunks(s.packed_keys);
  }

  /// Rows packed at a time: the head's rows are packed as key blocks first need them.
  static constexpr Index pack_chunk = 16;
  static Index packed_chunks(Index packed_keys) {
    return (packed_keys + pack_chunk - 1) / pack_chunk;
  }

  /// `memory` holds scalars(shape) values, zeroed when new, so the padding lanes of a block never
  /// read uninitialised memory.
  KernelScratch(Scalar* memory, const ScratchShape& s)
      : blocks(s.blocks),
        q_t(take(memory, s.head_dim, s.blocks.block_stride)),
        s_t(take(memory, s.blocks.key_rows, s.blocks.block_stride)),
        out_t(take(memory, s.value_dim, s.blocks.block_stride)),
        q_rows(take(memory, s.decode_rows, s.head_dim)),
        s_rows(take(memory, s.decode_rows, s.blocks.decode_keys)),
        out_rows(take(memory, s.decode_rows, s.value_dim)),
        row_max(take(memory, std::max(s.blocks.query_rows, s.decode_rows))),
        row_sum(take(memory, row_max.size())),
        rescale(take(memory, row_max.size())),
        column_max(take(memory, s.blocks.query_rows)),
        packed_k(take(memory, s.packed_keys, s.head_dim)),
        packed_v(take(memory, s.packed_keys, s.value_dim)),
        staged_k(take(memory, s.staged_keys, s.head_dim)),
        staged_v(take(memory, s.staged_keys, s.value_dim)),
        packed(take(memory, packed_chunks(s.packed_keys))) {}

  BlockSizes blocks;
  // Prefill blocks: queries along the vector lanes, row stride blocks.block_stride.
  MatrixMap q_t;    // scale·Qᵀ, d × Bq
  MatrixMap s_t;    // logits, then probabilities, Bk × Bq
  MatrixMap out_t;  // unnormalised output, dv × Bq
  // Decode rows: keys along the vector lanes.
  MatrixMap q_rows;    // scale·Q
  MatrixMap s_rows;    // logits, then probabilities
  MatrixMap out_rows;  // unnormalised output
  // The online softmax's state, one entry per query (prefill) or decode row.
  VectorMap row_max;
  VectorMap row_sum;
  VectorMap rescale;
  VectorMap column_max;  // a score tile's max per query, from the register tiles
  // One kv head's K and V, contiguous (empty unless the worker packs heads).
  MatrixMap packed_k;
  MatrixMap packed_v;
  Index packed_head = -1;  // the kv head they hold
  // One key block of one kv head's K and V converted from 16- or 8-bit storage (empty when K and
  // V are stored as Scalar): the register tiles read it from L1.
  MatrixMap staged_k;
  MatrixMap staged_v;
  // Per chunk of pack_chunk rows of packed_k and packed_v, nonzero once they hold packed_head's.
  VectorMap packed;

 private:
  static MatrixMap take(Scalar*& memory, Index rows, Index cols) {
    Scalar* start = memory;
    memory += rows * cols;
    return MatrixMap(start, rows, cols, Eigen::OuterStride<>(cols));
  }
  static VectorMap take(Scalar*& memory, Index count) {
    Scalar* start = memory;
    memory += count;
    return VectorMap(start, count);
  }
};

/// Runs fn(scratch) with scratch from the workspace's slot `slot`, or from memory of its own when
/// the slots are used up.
template <typename Scalar, typename Fn>
void with_scratch(Workspace& workspace, Index slot, const ScratchShape& shape, const Fn& fn) {
  const Index count = KernelScratch<Scalar>::scalars(shape);
  if (slot < Workspace::max_slots) {
    Scalar* memory =
        static_cast<Scalar*>(workspace.slot(slot, sizeof(Scalar) * std::size_t(count)));
    KernelScratch<Scalar> scratch(memory, shape);
    fn(scratch);
  } else {
    Vector<Scalar> memory = Vector<Scalar>::Zero(count);
    KernelScratch<Scalar> scratch(memory.data(), shape);
    fn(scratch);
  }
}

/// Copies `rows` rows of `cols` values, `stride` apart, to contiguous `dst`. The source rows are
/// a few cache lines a whole row apart, which the hardware prefetchers do not follow, so each row
/// is asked for a few rows ahead (a plain copy is bound by memory latency).
template <typename Scalar>
void pack_rows(const Scalar* src, Index stride, Index rows, Index cols, Scalar* dst) {
  constexpr Index ahead = 8;
  for (Index r = 0; r < std::min(ahead, rows); ++r)
    prefetch_block(src + r * stride, stride, 1, cols);
  for (Index r = 0; r < rows; ++r) {
    if (r + ahead < rows) prefetch_block(src + (r + ahead) * stride, stride, 1, cols);
    std::copy_n(src + r * stride, cols, dst + r * cols);
  }
}

/// One kv head's K (m × d) and V (m × dv) as the prefill path reads them: in the caller's
/// storage, or packed contiguously; null when they are converted block by block.
template <typename Scalar>
struct HeadKeyValues {
  const Scalar* k;
  Index k_stride;
  const Scalar* v;
  Index v_stride;
};

/// K and V of kv head `kv_head` for the prefill path: in the scratch's packed buffers when
/// `pack` (filled as key_block first asks for their rows, converted from their storage), read in
/// place, or null when their storage is converted block by block (key_block). Null-safe when
/// there are no keys.
template <typename Problem, typename Scalar = typename Problem::Scalar>
HeadKeyValues<Scalar> head_key_values(const Problem& p, KernelScratch<Scalar>& scratch,
                                      Index kv_head, bool pack) {
  const Index d = p.head_dim, dv = p.value_dim, m = p.k.rows();
  if (m == 0 || (!pack && !Problem::kv_in_scalar)) return {nullptr, 0, nullptr, 0};
  if (!pack) {
    if constexpr (Problem::kv_in_scalar) {
      return {p.k.data() + kv_head * d, p.k.outerStride(), p.v.data() + kv_head * dv,
              p.v.outerStride()};
    }
  }
  if (scratch.packed_head != kv_head) {
    scratch.packed.setZero();
    scratch.packed_head = kv_head;
  }
  return {scratch.packed_k.data(), d, scratch.packed_v.data(), dv};
}

/// Packs rows [j0, j0 + keys) of the scratch's kv head into its packed buffers, the chunks of
/// them not packed yet. Packing as blocks first need them (rather than the whole head at once)
/// keeps the copy next to its first use, in cache, and copies only rows some block reads (a
/// window or documents read a few rows each).
template <typename Problem, typename Scalar = typename Problem::Scalar>
void pack_block(const Problem& p, KernelScratch<Scalar>& scratch, Index j0, Index keys) {
  constexpr Index chunk = KernelScratch<Scalar>::pack_chunk;
  const Index d = p.head_dim, dv = p.value_dim, g = scratch.packed_head;
  const Index end_chunk = (j0 + keys + chunk - 1) / chunk;
  for (Index c = j0 / chunk; c < end_chunk;) {
    if (scratch.packed[c] != 0) {
      ++c;
      continue;
    }
    // A run of chunks not packed yet, in one copy (its prefetches run ahead across chunks).
    Index run = c;
    while (run < end_chunk && scratch.packed[run] == 0)
      scratch.packed[run++] = 1;
    const Index first = c * chunk, rows = std::min(run * chunk, p.k.rows()) - first;
    if constexpr (Problem::kv_in_scalar) {
      pack_rows(p.k.data() + first * p.k.outerStride() + g * d, p.k.outerStride(), rows, d,
                scratch.packed_k.data() + first * d);
      pack_rows(p.v.data() + first * p.v.outerStride() + g * dv, p.v.outerStride(), rows, dv,
                scratch.packed_v.data() + first * dv);
    } else {
      convert_rows(p.k, first, rows, g * d, d, scratch.packed_k.data() + first * d, d);
      convert_rows(p.v, first, rows, g * dv, dv, scratch.packed_v.data() + first * dv, dv);
    }
    c = run;
  }
}

/// Rows [j0, j0 + keys) of kv head `kv_head`'s K and V as the register tiles read them: where
/// `kv` has them (packing them first if they are the scratch's packed buffers), or converted
/// from their storage into the scratch.
template <typename Problem, typename Scalar = typename Problem::Scalar>
HeadKeyValues<Scalar> key_block(const Problem& p, KernelScratch<Scalar>& scratch,
                                const HeadKeyValues<Scalar>& kv, Index kv_head, Index j0,
                                Index keys) {
  if (kv.k != nullptr && kv.k == scratch.packed_k.data()) pack_block(p, scratch, j0, keys);
  if (Problem::kv_in_scalar || kv.k != nullptr) {
    return {kv.k + j0 * kv.k_stride, kv.k_stride, kv.v + j0 * kv.v_stride, kv.v_stride};
  }
  const Index d = p.head_dim, dv = p.value_dim;
  convert_rows(p.k, j0, keys, kv_head * d, d, scratch.staged_k.data(), d);
  convert_rows(p.v, j0, keys, kv_head * dv, dv, scratch.staged_v.data(), dv);
  return {scratch.staged_k.data(), d, scratch.staged_v.data(), dv};
}

}  // namespace attn::detail
