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
/// products are register tiles that broadcast one element of K or V from row-major storage (the
/// caller's, or one head's contiguous copy when heads share rows), the S tiles also yield the
/// softmax's max, and the softmax's sums run down columns with whole packets (no horizontal
/// reductions). Qᵀ and the output go through packet transposes once per block.
///
/// Decoding (fewer queries than a packet) takes the narrow path instead: keys along the rows, each
/// key row read once across all heads, the keys split into parts for the threads and merged by
/// log-sum-exp.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "../parallel.hpp"
#include "../types.hpp"
#include "../workspace.hpp"
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

/// Keys per tile of the narrow path (blocks of fewer queries than a packet, i.e. decoding). The
/// narrow path is memory-bound; when decoding it walks each tile's key rows for all heads before
/// the next tile (see narrow_tile), so each key row is read whole and in order.
inline constexpr Index narrow_key_block_rows = 64;

/// One key/value head's K (m × d) and V (m × dv) as the wide path reads them: in the caller's
/// storage, or packed contiguously (see should_pack_heads).
template <typename Scalar>
struct HeadKeyValues {
  const Scalar* k;
  Index k_stride;
  const Scalar* v;
  Index v_stride;
};

/// When several heads share K's and V's rows, one head's row is a few cache lines a whole row
/// apart: at 8 heads of 64 floats, 256 bytes of every 2 KiB, so a key block of one head touches a
/// new page every other row, which the hardware prefetchers do not follow. So a thread packs its
/// head's K and V once into contiguous scratch (pack_rows, prefetching ahead), and every query
/// block of the head streams them from there. Measured on a Zen 3 core, 8 heads, d = 64: L = 4096
/// self-attention 25–40 GFLOP/s strided, 45–58 packed; even a single query block per head gains,
/// since the copy's prefetching beats the kernel's (n = 64, m = 4096: 1.5–1.6×). Only the wide
/// path reads packed K/V (decoding walks whole key rows across the heads instead), and beyond
/// `max_packed_bytes` per thread the kernel reads in place.
inline constexpr std::size_t max_packed_bytes = std::size_t(64) << 20;

template <typename Scalar>
bool should_pack_heads(const AttentionProblem<Scalar>& p) {
  const Index m = p.k.rows();
  const bool strided = p.k.outerStride() != p.head_dim || p.v.outerStride() != p.value_dim;
  const bool wide = p.q.rows() >= PacketTraits<Scalar>::size;
  return strided && wide && m > 0 &&
         sizeof(Scalar) * std::size_t(m * (p.head_dim + p.value_dim)) <= max_packed_bytes;
}

/// Scratch for one chunk of work items, carved from one buffer (a Workspace slot) and reused for
/// every tile.
template <typename Scalar>
struct TileScratch {
  using MatrixMap = Eigen::Map<Matrix<Scalar>>;
  using VectorMap = Eigen::Map<Vector<Scalar>>;
  static constexpr Index narrow_rows = PacketTraits<Scalar>::size;
  /// Row stride of the wide blocks (Qᵀ, Sᵀ, Oᵀ): one cache line more than a block's queries. At
  /// 64 floats a row would be 256 bytes, so a register tile's column panel (one line per row)
  /// would fall into a quarter of the L1's sets, the same quarter in all three blocks and in V's
  /// column strips; the extra line spreads each panel over all the sets.
  static constexpr Index block_stride = query_block_rows + 64 / Index(sizeof(Scalar));

  /// Scalars a TileScratch needs; `narrow_heads` heads keep narrow state at once (all heads when
  /// decoding, else 1).
  static Index scalars(Index head_dim, Index value_dim, Index narrow_heads, Index packed_keys) {
    const Index narrow = narrow_heads * narrow_rows;
    const Index stats = std::max(query_block_rows, narrow);
    return (head_dim + key_block_rows + value_dim) * block_stride +
           narrow * (head_dim + narrow_key_block_rows + value_dim) + 2 * stats +
           2 * query_block_rows + packed_keys * (head_dim + value_dim);
  }

  /// `memory` holds scalars(head_dim, value_dim, narrow_heads, packed_keys) values; zeroed when
  /// new, so the padding lanes of a block never read uninitialised memory.
  TileScratch(Scalar* memory, Index head_dim, Index value_dim, Index narrow_heads,
              Index packed_keys)
      : q_t(take(memory, head_dim * block_stride), head_dim, block_stride),
        s_t(take(memory, key_block_rows * block_stride), key_block_rows, block_stride),
        out_t(take(memory, value_dim * block_stride), value_dim, block_stride),
        q_rows(take(memory, narrow_heads * narrow_rows * head_dim), narrow_heads * narrow_rows,
               head_dim),
        s_rows(take(memory, narrow_heads * narrow_rows * narrow_key_block_rows),
               narrow_heads * narrow_rows, narrow_key_block_rows),
        out_rows(take(memory, narrow_heads * narrow_rows * value_dim), narrow_heads * narrow_rows,
                 value_dim),
        row_max(take(memory, std::max(query_block_rows, narrow_heads * narrow_rows)),
                std::max(query_block_rows, narrow_heads * narrow_rows)),
        row_sum(take(memory, row_max.size()), row_max.size()),
        correction(take(memory, query_block_rows), query_block_rows),
        column_max(take(memory, query_block_rows), query_block_rows),
        packed_k(take(memory, packed_keys * head_dim), packed_keys, head_dim),
        packed_v(take(memory, packed_keys * value_dim), packed_keys, value_dim) {}

  // Wide blocks: queries along the vector lanes.
  MatrixMap q_t;    // scale·Qᵀ, d × Bq
  MatrixMap s_t;    // logits, then probabilities, Bk × Bq
  MatrixMap out_t;  // unnormalised output, dv × Bq
  // Narrow blocks: keys along the vector lanes; state row (h − first head)·rows + r.
  MatrixMap q_rows;    // scale·Q
  MatrixMap s_rows;    // logits, then probabilities, per state row
  MatrixMap out_rows;  // unnormalised output
  VectorMap row_max;   // running max, then the log-sum-exp
  VectorMap row_sum;
  VectorMap correction;
  VectorMap column_max;  // a score tile's max per query, from the register tiles
  // One kv head's K and V, contiguous (empty unless the chunk packs heads).
  MatrixMap packed_k;
  MatrixMap packed_v;
  Index packed_head = -1;  // the kv head they hold

 private:
  static Scalar* take(Scalar*& memory, Index count) {
    Scalar* start = memory;
    memory += count;
    return start;
  }
};

/// Runs fn(scratch) for a chunk with scratch from the workspace's slot `slot`, or from memory of
/// its own when the slots are used up.
template <typename Scalar, typename Fn>
void with_scratch(Workspace& workspace, Index slot, Index head_dim, Index value_dim,
                  Index narrow_heads, Index packed_keys, const Fn& fn) {
  const Index count = TileScratch<Scalar>::scalars(head_dim, value_dim, narrow_heads, packed_keys);
  if (slot < Workspace::max_slots) {
    Scalar* memory =
        static_cast<Scalar*>(workspace.slot(slot, sizeof(Scalar) * std::size_t(count)));
    TileScratch<Scalar> scratch(memory, head_dim, value_dim, narrow_heads, packed_keys);
    fn(scratch);
  } else {
    Vector<Scalar> memory = Vector<Scalar>::Zero(count);
    TileScratch<Scalar> scratch(memory.data(), head_dim, value_dim, narrow_heads, packed_keys);
    fn(scratch);
  }
}

/// Copies `rows` rows of `cols` values, `stride` apart, to contiguous `dst`. The source rows are
/// a few cache lines a whole row apart, which the hardware prefetchers do not follow, so each row
/// is asked for a few rows ahead (a plain copy ran at 2 GB/s here, bound by memory latency).
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

/// K and V of kv head `kv_head` for the wide path: packed into the scratch (once per head in a
/// row of work items) when `pack`, else read in place. Null-safe when there are no keys.
template <typename Scalar>
HeadKeyValues<Scalar> head_key_values(const AttentionProblem<Scalar>& p,
                                      TileScratch<Scalar>& scratch, Index kv_head, bool pack) {
  const Index d = p.head_dim, dv = p.value_dim;
  if (p.k.rows() == 0) return {p.k.data(), p.k.outerStride(), p.v.data(), p.v.outerStride()};
  if (!pack) {
    return {p.k.data() + kv_head * d, p.k.outerStride(), p.v.data() + kv_head * dv,
            p.v.outerStride()};
  }
  if (scratch.packed_head != kv_head) {
    pack_rows(p.k.data() + kv_head * d, p.k.outerStride(), p.k.rows(), d, scratch.packed_k.data());
    pack_rows(p.v.data() + kv_head * dv, p.v.outerStride(), p.v.rows(), dv,
              scratch.packed_v.data());
    scratch.packed_head = kv_head;
  }
  return {scratch.packed_k.data(), d, scratch.packed_v.data(), dv};
}

/// Query block t of `count` in an order where consecutive pairs carry equal work under a causal
/// mask (0, last, 1, last − 1, ...), so equal contiguous chunks of items carry equal work.
inline Index balanced_block(Index t, Index count) {
  return t % 2 == 0 ? t / 2 : count - 1 - t / 2;
}

static_assert(query_block_rows <= 64, "online_softmax returns one bit per packet of a block");

/// Online softmax over one score tile, columns [0, width): folds the tile's max (`tile_max` if
/// given, else found here) into the running max, turns logits into probabilities in place,
/// updates the running sum and writes, per column, the factor by which the accumulator must be
/// rescaled. Returns a bit per packet of columns (bit i / P for columns i…i + P − 1) set where a
/// factor differs from 1: once the running maxes have settled, none does, and those packets of the
/// accumulator need not be touched. width ≤ 64·P.
template <typename Scalar>
std::uint64_t online_softmax(Scalar* s_t, Index stride, Index keys, Index width,
                             const Scalar* tile_max, Scalar* row_max, Scalar* row_sum,
                             Scalar* correction) {
  using Packet = typename PacketTraits<Scalar>::Packet;
  constexpr int size = PacketTraits<Scalar>::size;
  const Packet minus_infinity = packet::pset1<Packet>(-std::numeric_limits<Scalar>::infinity());
  const Packet zero = packet::pset1<Packet>(Scalar(0));
  const Packet one = packet::pset1<Packet>(Scalar(1));
  const Packet all_bits = packet::ptrue(zero);
  std::uint64_t rescaled = 0;
  for (Index i = 0; i < width; i += size) {
    Packet block_max = minus_infinity;
    if (tile_max != nullptr) {
      block_max = packet::ploadu<Packet>(tile_max + i);
    } else {
      for (Index j = 0; j < keys; ++j) {
        block_max = packet::pmax<Eigen::PropagateNaN>(block_max,
                                                      packet::ploadu<Packet>(s_t + j * stride + i));
      }
    }
    const Packet old_max = packet::ploadu<Packet>(row_max + i);
    // NaN propagates: a NaN logit the row can see makes the whole row NaN.
    const Packet new_max = packet::pmax<Eigen::PropagateNaN>(old_max, block_max);
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
    if (any_lane(packet::pandnot(all_bits, packet::pcmp_eq(rescale, one))))
      rescaled |= std::uint64_t(1) << (i / size);
    packet::pstoreu(correction + i, rescale);
    packet::pstoreu(row_sum + i, packet::pmadd(rescale, packet::ploadu<Packet>(row_sum + i), sum));
    packet::pstoreu(row_max + i, new_max);
  }
  return rescaled;
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

/// Soft-caps, biases and masks a tile of logits indexed (query, key), for queries from i0 and
/// keys from j0; the masking loops run only on tiles the window cuts or with explicit matrices.
template <typename Scalar, typename Tile>
bool finish_logits(const AttentionProblem<Scalar>& p, const TileMask<Scalar>& mask, Tile&& s,
                   Index i0, Index j0) {
  if (p.softcap > 0) {
    s = p.softcap * (s.array() / p.softcap).tanh();
  }
  const bool window_cut = !mask.window_covers(i0, i0 + s.rows(), j0, j0 + s.cols());
  const bool masked = window_cut || mask.has_explicit();
  if (masked) mask.apply(s, i0, j0, window_cut);
  return masked;
}

/// Whether P·V over a masked tile must skip zero weights: only if the value rows hold a NaN or
/// an infinity, which 0·x would spread to the queries the mask hides them from.
template <typename Scalar>
bool values_need_care(bool masked, const Scalar* v, Index v_stride, Index keys, Index dv) {
  return masked && !all_finite(v, v_stride, keys, dv);
}

/// Turns a block's running maxes into log-sum-exps (−∞ where no key was visible), left in row_max
/// (for the weights pass) and written to dst.lse if wanted.
template <typename Scalar>
void write_log_sum_exps(Scalar* row_max, const Scalar* row_sum, Index rows,
                        const BlockOutput<Scalar>& dst) {
  constexpr Scalar minus_infinity = -std::numeric_limits<Scalar>::infinity();
  for (Index r = 0; r < rows; ++r) {
    row_max[r] = row_sum[r] != 0 ? row_max[r] + std::log(row_sum[r]) : minus_infinity;
    if (dst.lse != nullptr) dst.lse[r * dst.lse_stride] = row_max[r];
  }
}

/// Writes a block's normalised rows (zero where no key was visible) and log-sum-exps (−∞ there),
/// and leaves the log-sum-exp in row_max. acc_row(r) is the unnormalised output row r.
template <typename Scalar, typename AccRow>
void write_rows(Scalar* row_max, const Scalar* row_sum, Index rows, Index dv,
                const BlockOutput<Scalar>& dst, const AccRow& acc_row) {
  for (Index r = 0; r < rows; ++r) {
    const Scalar sum = row_sum[r];
    Eigen::Map<Eigen::Matrix<Scalar, 1, Eigen::Dynamic>> out_row(dst.out + r * dst.out_stride, dv);
    // sum is 0 (nothing visible), positive, or NaN (a NaN reached the row: it stays NaN).
    if (sum != 0) {
      out_row = acc_row(r) * (Scalar(1) / sum);  // one division per row, not per element
    } else {
      out_row.setZero();
    }
  }
  write_log_sum_exps(row_max, row_sum, rows, dst);
}

/// e^(s[j] − shift) in place for j < count, exact zeros below the normal range; returns the sum.
template <typename Scalar>
Scalar exp_row(Scalar* s, Index count, Scalar shift) {
  using Packet = typename PacketTraits<Scalar>::Packet;
  constexpr Index size = PacketTraits<Scalar>::size;
  const Packet shift_packet = packet::pset1<Packet>(shift);
  Packet sum = packet::pset1<Packet>(Scalar(0));
  Index j = 0;
  for (; j + size <= count; j += size) {
    const Packet e = softmax_exp(packet::psub(packet::ploadu<Packet>(s + j), shift_packet));
    packet::pstoreu(s + j, e);
    sum = packet::padd(sum, e);
  }
  Scalar total = packet::predux(sum);
  for (; j < count; ++j) {
    s[j] = std::exp(s[j] - shift);
    total += s[j];
  }
  return total;
}

/// The narrow path's running state for heads [first_head, first_head + heads), `rows` queries
/// each: state row (h − first_head)·rows + r of the narrow scratch belongs to head h, query r.
template <typename Scalar>
struct NarrowState {
  TileScratch<Scalar>& scratch;
  Index first_head;
  Index heads;
  Index rows;
  Index row(Index h, Index r) const { return (h - first_head) * rows + r; }
  Index count() const { return heads * rows; }
};

/// Narrow path, start: scaled queries of every head, empty accumulators.
template <typename Scalar>
void narrow_begin(const AttentionProblem<Scalar>& p, const NarrowState<Scalar>& st, Index i0) {
  const Index d = p.head_dim;
  for (Index h = st.first_head; h < st.first_head + st.heads; ++h) {
    st.scratch.q_rows.middleRows(st.row(h, 0), st.rows) =
        p.scale * p.q.block(i0, h * d, st.rows, d);
  }
  st.scratch.out_rows.topRows(st.count()).setZero();
  st.scratch.row_max.head(st.count()).setConstant(-std::numeric_limits<Scalar>::infinity());
  st.scratch.row_sum.head(st.count()).setZero();
}

/// Narrow path, one tile of keys [j0, j0 + keys) for all the state's heads. Keys go along the
/// rows: each key row is read once, left to right across the heads (contiguous, so the hardware
/// prefetchers stream it), for S = (scale·Q)·Kᵀ and then for O += P·V; the online softmax runs
/// along each state row.
template <typename Scalar>
void narrow_tile(const AttentionProblem<Scalar>& p, const TileMask<Scalar>& mask,
                 const NarrowState<Scalar>& st, Index i0, Index j0, Index keys) {
  using Row = Eigen::Matrix<Scalar, 1, Eigen::Dynamic>;
  const Index d = p.head_dim;
  const Index dv = p.value_dim;
  const Index group = p.num_heads / p.num_kv_heads;
  const Index h1 = st.first_head + st.heads;
  auto& s = st.scratch.s_rows;
  auto& acc = st.scratch.out_rows;
  const auto& q = st.scratch.q_rows;

  // Heads of whole packets take `key_rows` key rows at a time through packet loops: each query
  // row is loaded, and each accumulator row loaded and stored, once for all of them. One row at a
  // time through Eigen's dynamic-size dot and axpy, this step read K and V at 72 % of the stream
  // bandwidth, waiting on the accumulator's store and reload; four at a time, above it.
  constexpr Index size = PacketTraits<Scalar>::size;
  constexpr int key_rows = 4;
  const bool whole_packets = d % size == 0 && dv % size == 0;
  // Rows of the scratch through pointers: with d = 0 or dv = 0 there is no element (0, 0).
  const auto q_row = [&](Index row) { return q.data() + row * q.cols(); };
  const auto acc_row = [&](Index row) { return acc.data() + row * acc.cols(); };

  // 1. Logits, a key row (or key_rows) at a time across the heads.
  Index j_logits = 0;
  if (whole_packets) {
    for (; j_logits + key_rows <= keys; j_logits += key_rows) {
      const Scalar* k_rows = p.k.data() + (j0 + j_logits) * p.k.outerStride();
      for (Index h = st.first_head; h < h1; ++h) {
        for (Index r = 0; r < st.rows; ++r) {
          const Index row = st.row(h, r);
          packet_dot_rows<key_rows>(q_row(row), k_rows + (h / group) * d, p.k.outerStride(), d,
                                    &s(row, j_logits));
        }
      }
    }
  }
  for (Index j = j_logits; j < keys; ++j) {
    const Scalar* k_row = p.k.data() + (j0 + j) * p.k.outerStride();
    for (Index h = st.first_head; h < h1; ++h) {
      const Scalar* k_head = k_row + (h / group) * d;
      for (Index r = 0; r < st.rows; ++r) {
        const Index row = st.row(h, r);
        if (whole_packets) {
          packet_dot_rows<1>(q_row(row), k_head, 0, d, &s(row, j));
        } else {
          s(row, j) = q.row(row).dot(Eigen::Map<const Row>(k_head, d));
        }
      }
    }
  }
  bool masked = false;
  for (Index h = st.first_head; h < h1; ++h) {
    masked = finish_logits(p, mask, s.block(st.row(h, 0), 0, st.rows, keys), i0, j0);
  }

  // 2. Online softmax along each state row.
  for (Index row = 0; row < st.count(); ++row) {
    Scalar& row_max = st.scratch.row_max[row];
    const Scalar tile_max = s.row(row).head(keys).template maxCoeff<Eigen::PropagateNaN>();
    const Scalar new_max =
        is_nan(row_max) || is_nan(tile_max) ? tile_max + row_max : std::max(row_max, tile_max);
    if (is_minus_infinity(new_max)) {
      s.row(row).head(keys).setZero();  // nothing visible yet in this row
      continue;
    }
    const Scalar correction = std::exp(row_max - new_max);
    const Scalar sum = exp_row(s.data() + row * s.cols(), keys, new_max);
    st.scratch.row_sum[row] = correction * st.scratch.row_sum[row] + sum;
    if (correction != Scalar(1)) acc.row(row) *= correction;
    row_max = new_max;
  }

  // 3. O += P·V, a value row (or key_rows) at a time across the heads.
  const bool careful = values_need_care(masked, p.v.data() + j0 * p.v.outerStride(),
                                        p.v.outerStride(), keys, p.v.cols());
  Index j = 0;
  if (whole_packets && !careful) {
    for (; j + key_rows <= keys; j += key_rows) {
      const Scalar* v_rows = p.v.data() + (j0 + j) * p.v.outerStride();
      for (Index h = st.first_head; h < h1; ++h) {
        for (Index r = 0; r < st.rows; ++r) {
          const Index row = st.row(h, r);
          packet_axpy_rows<key_rows>(&s(row, j), v_rows + (h / group) * dv, p.v.outerStride(),
                                     acc_row(row), dv);
        }
      }
    }
  }
  for (; j < keys; ++j) {
    const Scalar* v_row = p.v.data() + (j0 + j) * p.v.outerStride();
    for (Index h = st.first_head; h < h1; ++h) {
      const Scalar* v_head = v_row + (h / group) * dv;
      for (Index r = 0; r < st.rows; ++r) {
        const Index row = st.row(h, r);
        const Scalar weight = s(row, j);
        if (careful && weight == 0) continue;
        if (whole_packets) {
          packet_axpy_rows<1>(&weight, v_head, 0, acc_row(row), dv);
        } else {
          acc.row(row) += weight * Eigen::Map<const Row>(v_head, dv);
        }
      }
    }
  }
}

/// Narrow path over keys [keys_begin, keys_end) for the state's heads, query rows from i0;
/// dst(h) is where head h's normalised rows and log-sum-exps go.
template <typename Scalar, typename Destination>
void attend_narrow(const AttentionProblem<Scalar>& p, const TileMask<Scalar>& mask,
                   const NarrowState<Scalar>& st, Index i0, Index keys_begin, Index keys_end,
                   const Destination& dst) {
  narrow_begin(p, st, i0);
  for (Index j0 = keys_begin; j0 < keys_end; j0 += narrow_key_block_rows) {
    narrow_tile(p, mask, st, i0, j0, std::min(narrow_key_block_rows, keys_end - j0));
  }
  for (Index h = st.first_head; h < st.first_head + st.heads; ++h) {
    const Index first = st.row(h, 0);
    write_rows(st.scratch.row_max.data() + first, st.scratch.row_sum.data() + first, st.rows,
               p.value_dim, dst(h), [&](Index r) { return st.scratch.out_rows.row(first + r); });
  }
}

/// Opt-in: the attention weights exp(logit − lse) of a block, recomputed tile by tile through
/// Eigen's products from scratch.q_t (the default path never pays for them).
/// Precondition: write_rows left the log-sum-exps in scratch.row_max.
template <typename Scalar>
void write_weights(const AttentionProblem<Scalar>& p, const TileMask<Scalar>& mask,
                   TileScratch<Scalar>& scratch, const QueryBlock& b) {
  const Index d = p.head_dim;
  const Index k_stride = p.k.outerStride();
  const Index kv_head = b.head / (p.num_heads / p.num_kv_heads);
  scratch.q_t.leftCols(b.rows) =
      p.scale * p.q.block(b.first_row, b.head * d, b.rows, d).transpose();
  for (Index j0 = b.keys_begin; j0 < b.keys_end; j0 += key_block_rows) {
    const Index keys = std::min(key_block_rows, b.keys_end - j0);
    auto s_t = scratch.s_t.topLeftCorner(keys, b.rows);
    s_t.noalias() = ConstMatrixView<Scalar>(p.k.data() + j0 * k_stride + kv_head * d, keys, d,
                                            Eigen::OuterStride<>(k_stride)) *
                    scratch.q_t.leftCols(b.rows);
    finish_logits(p, mask, s_t.transpose(), b.first_row, j0);
    for (Index r = 0; r < b.rows; ++r) {
      Scalar* w = p.weights + (b.head * p.q.rows() + b.first_row + r) * p.weights_stride + j0;
      const Scalar lse = scratch.row_max[r];
      for (Index j = 0; j < keys; ++j) {
        w[j] = is_minus_infinity(lse) ? Scalar(0) : std::exp(s_t(j, r) - lse);
      }
    }
  }
}

/// Attention for one query block over its key range; writes normalised rows (zero where no key
/// was visible) and log-sum-exps (−∞ there) to `dst`. Wide blocks put queries along the vector
/// lanes: Sᵀ = K_b·(scale·Qᵀ) and Oᵀ += V_bᵀ·Pᵀ as register tiles that broadcast K and V
/// elements from the caller's storage, with the online softmax down the columns.
template <typename Scalar>
void attend_query_block(const AttentionProblem<Scalar>& p, const TileMask<Scalar>& mask,
                        TileScratch<Scalar>& scratch, const QueryBlock& b,
                        const HeadKeyValues<Scalar>& kv, const BlockOutput<Scalar>& dst) {
  using Packet = typename PacketTraits<Scalar>::Packet;
  constexpr Index size = PacketTraits<Scalar>::size;
  constexpr Index lanes = PacketTraits<Scalar>::tile_cols;
  constexpr Scalar minus_infinity = -std::numeric_limits<Scalar>::infinity();
  const Index rows = b.rows;
  if (rows < size) {
    // A register tile would waste most of its lanes on so few queries.
    attend_narrow(p, mask, NarrowState<Scalar>{scratch, b.head, 1, rows}, b.first_row, b.keys_begin,
                  b.keys_end, [&](Index) { return dst; });
    if (p.weights != nullptr) write_weights(p, mask, scratch, b);
    return;
  }
  const Index d = p.head_dim;
  const Index dv = p.value_dim;
  // Queries padded to whole register tiles: padding columns hold zero queries, are never masked
  // and never written out.
  const Index width = (rows + lanes - 1) / lanes * lanes;
  const Index stride = TileScratch<Scalar>::block_stride;
  Scalar* q_t = scratch.q_t.data();
  Scalar* s_t = scratch.s_t.data();
  Scalar* out_t = scratch.out_t.data();
  const Scalar* k = kv.k;
  const Scalar* v = kv.v;
  const Index k_stride = kv.k_stride;
  const Index v_stride = kv.v_stride;

  // 1. Scaled, transposed queries: the scale is folded in once instead of into every logit.
  scratch.q_t.leftCols(width).setZero();
  transpose_scaled(p.q.data() + b.first_row * p.q.outerStride() + b.head * d, p.q.outerStride(),
                   rows, d, p.scale, q_t, stride);
  scratch.out_t.leftCols(width).setZero();
  scratch.row_max.head(width).setConstant(minus_infinity);
  scratch.row_sum.head(width).setZero();

  // 2. Stream over the key blocks of the range.
  for (Index j0 = b.keys_begin; j0 < b.keys_end; j0 += key_block_rows) {
    const Index keys = std::min(key_block_rows, b.keys_end - j0);

    // The next key block's K and V rows are asked for while this block computes, a share per
    // register-tile column: each row of a head is a few cache lines a whole row stride apart,
    // which the hardware prefetchers do not follow, so without this every block starts with a
    // wait on L3 or memory.
    const Index next_keys = std::min(key_block_rows, b.keys_end - j0 - keys);
    const Index groups = width / lanes;
    const auto prefetch_share = [&](const Scalar* head, Index head_stride, Index cols, Index g) {
      if (next_keys <= 0 || cols == 0) return;  // (no columns: the storage may be null)
      const Index first = g * next_keys / groups, last = (g + 1) * next_keys / groups;
      prefetch_block(head + (j0 + keys + first) * head_stride, head_stride, last - first, cols);
    };

    // 2a. Logits Sᵀ = K_b·(scale·Qᵀ), soft-capped, biased and masked. The register tiles also
    // find each query's max, which holds unless soft-capping or masking changes the logits.
    Scalar* column_max = scratch.column_max.data();
    scratch.column_max.head(width).setConstant(minus_infinity);
    for (Index i = 0; i < width; i += lanes) {
      prefetch_share(k, k_stride, d, i / lanes);
      register_block<false>(keys, d, k + j0 * k_stride, k_stride, Index(1), q_t + i, stride,
                            s_t + i, stride, column_max + i);
    }
    const bool masked = finish_logits(
        p, mask, MatrixView<Scalar>(s_t, keys, rows, Eigen::OuterStride<>(stride)).transpose(),
        b.first_row, j0);
    const bool max_holds = !masked && !(p.softcap > 0);

    // 2b. Online softmax down the columns; rescale what Oᵀ holds by each column's correction, in
    // the packets of columns where one differs from 1 (with random logits the running max of some
    // column still rises in most key blocks, that of a given packet far less often).
    const std::uint64_t rescale =
        online_softmax(s_t, stride, keys, width, max_holds ? column_max : nullptr,
                       scratch.row_max.data(), scratch.row_sum.data(), scratch.correction.data());
    for (Index i = 0; i < width; i += size) {
      if ((rescale >> (i / size) & 1) == 0) continue;
      const Packet factor = packet::ploadu<Packet>(scratch.correction.data() + i);
      for (Index e = 0; e < dv; ++e) {
        Scalar* o = out_t + e * stride + i;
        packet::pstoreu(o, packet::pmul(packet::ploadu<Packet>(o), factor));
      }
    }

    // 2c. Oᵀ += V_bᵀ·Pᵀ.
    if (values_need_care(masked, v + j0 * v_stride, v_stride, keys, dv)) {
      for (Index j = 0; j < keys; ++j) {
        const Eigen::Map<const Vector<Scalar>> v_row(v + (j0 + j) * v_stride, dv);
        for (Index r = 0; r < rows; ++r) {
          if (s_t[j * stride + r] != 0) scratch.out_t.col(r) += s_t[j * stride + r] * v_row;
        }
      }
    } else {
      for (Index i = 0; i < width; i += lanes) {
        prefetch_share(v, v_stride, dv, i / lanes);
        register_block<true>(dv, keys, v + j0 * v_stride, Index(1), v_stride, s_t + i, stride,
                             out_t + i, stride);
      }
    }
  }

  // 3. Normalise once: Oᵀ's columns by 1 / sum (0 where no key was visible: the column holds
  // zeros then; a NaN sum keeps the column NaN), then transposed into the destination.
  Scalar* inverse = scratch.correction.data();
  for (Index r = 0; r < width; ++r) {
    const Scalar sum = r < rows ? scratch.row_sum[r] : Scalar(0);
    inverse[r] = sum != 0 ? Scalar(1) / sum : Scalar(0);
  }
  for (Index e = 0; e < dv; ++e) {
    for (Index i = 0; i < width; i += size) {
      Scalar* o = out_t + e * stride + i;
      packet::pstoreu(o,
                      packet::pmul(packet::ploadu<Packet>(o), packet::ploadu<Packet>(inverse + i)));
    }
  }
  transpose_scaled(out_t, stride, dv, rows, Scalar(1), dst.out, dst.out_stride);
  for (Index r = 0; r < rows; ++r) {
    if (scratch.row_sum[r] == 0) {  // exact zeros (0 · a finite −x would give −0)
      Eigen::Map<Eigen::Matrix<Scalar, 1, Eigen::Dynamic>>(dst.out + r * dst.out_stride, dv)
          .setZero();
    }
  }
  write_log_sum_exps(scratch.row_max.data(), scratch.row_sum.data(), rows, dst);
  if (p.weights != nullptr) write_weights(p, mask, scratch, b);
}

/// Combines partial results over disjoint key sets: given each part's normalised row and
/// log-sum-exp, the row over the union is Σ exp(lse_s − lse)·out_s with lse = log Σ exp(lse_s).
/// Parts with lse = −∞ (no visible key) contribute nothing; if all are empty the row is zero.
/// Part s's row is at outs + s·out_stride, its lse at lses[s·lse_stride]; out must not overlap
/// them.
template <typename Scalar>
void merge_rows(Index parts, const Scalar* outs, Index out_stride, const Scalar* lses,
                Index lse_stride, Index dv, Scalar* out, Scalar* lse) {
  using Row = Eigen::Matrix<Scalar, 1, Eigen::Dynamic>;
  constexpr Scalar minus_infinity = -std::numeric_limits<Scalar>::infinity();
  Scalar max = minus_infinity;
  for (Index s = 0; s < parts; ++s) {
    const Scalar part = lses[s * lse_stride];
    max = is_nan(part) || is_nan(max) ? part + max : std::max(max, part);  // NaN stays
  }
  Eigen::Map<Row> row(out, dv);
  row.setZero();
  if (is_minus_infinity(max)) {
    if (lse != nullptr) *lse = minus_infinity;
    return;
  }
  Scalar total = 0;
  for (Index s = 0; s < parts; ++s) {
    if (is_minus_infinity(lses[s * lse_stride])) continue;
    const Scalar weight = std::exp(lses[s * lse_stride] - max);
    total += weight;
    row += weight * Eigen::Map<const Row>(outs + s * out_stride, dv);
  }
  row /= total;
  if (lse != nullptr) *lse = max + std::log(total);
}

/// Keys per split when decoding (all queries in one narrow block) over many keys: the keys are
/// split so that the work spreads over threads even for one head, each split returns partial
/// results with their log-sum-exps, and the partials are merged in a fixed order. The split
/// depends only on the shape, never on the thread count, so results are bitwise identical for
/// any executor.
inline constexpr Index decode_split_keys = 512;

/// Runs the whole problem over the executor's threads, with scratch from `workspace` (or a
/// workspace of its own). Work items are (head, query block), in balanced order; when decoding
/// they are key splits covering all heads, followed by a merge.
template <typename Scalar>
void run_attention(const AttentionProblem<Scalar>& p, const Mask& mask, const Executor& executor,
                   Workspace* workspace = nullptr) {
  const Index n = p.q.rows();
  const Index m = p.k.rows();
  if (n == 0) return;
  Workspace own_workspace;
  Workspace& memory = workspace != nullptr ? *workspace : own_workspace;
  const TileMask<Scalar> tile_mask(mask, n, m);
  const Index dv = p.value_dim;
  const bool decoding = n < PacketTraits<Scalar>::size && p.weights == nullptr;

  // Everything a chunk needs, reached through one pointer so that the RangeFunction holding the
  // chunk lambda stays within std::function's small buffer (no allocation per call).
  struct Call {
    const AttentionProblem<Scalar>& p;
    const TileMask<Scalar>& mask;
    Workspace& memory;
    std::atomic<Index> next_slot{0};
    std::atomic<Index> next_item{0};
    Scalar* out;  // the problem's output, row stride out_stride
    Index out_stride;
    Index keys_begin = 0, keys_end = 0, splits = 1, blocks = 1;
    Scalar* partial_out = nullptr;  // split s, head h, row r at ((s·H + h)·n + r)·dv
    Scalar* partial_lse = nullptr;  // at (s·H + h)·n + r

    BlockOutput<Scalar> output(Index h, Index i0) const {
      return {out + i0 * out_stride + h * p.value_dim, out_stride,
              p.lse == nullptr ? nullptr : p.lse + i0 * p.lse_stride + h, p.lse_stride};
    }
    Index split_begin(Index s) const { return keys_begin + (keys_end - keys_begin) * s / splits; }

    /// The next `group` of `count` work items, [first, last), to whichever chunk asks first;
    /// false when none are left. The executor's chunks stand for its threads, and each takes
    /// items until there are none, so a thread the machine slows down (another tenant on the
    /// core, a lower clock) does less instead of making the others wait (static halves finished
    /// up to 15 % apart here). Which thread computes an item never changes its result.
    bool take(Index count, Index group, Index& first, Index& last) {
      first = next_item.fetch_add(group);
      if (first >= count) return false;
      last = std::min(count, first + group);
      return true;
    }

    void decode() {
      const Index n = p.q.rows(), heads = p.num_heads;
      Index first = 0, last = 0;
      if (!take(splits, 1, first, last)) return;
      with_scratch<Scalar>(
          memory, next_slot++, p.head_dim, p.value_dim, heads, 0, [&](auto& scratch) {
            do {
              const Index split = first;
              const NarrowState<Scalar> state{scratch, 0, heads, n};
              attend_narrow(p, mask, state, 0, split_begin(split), split_begin(split + 1),
                            [&](Index h) {
                              if (splits == 1) return output(h, 0);
                              const Index part = (split * heads + h) * n;
                              return BlockOutput<Scalar>{partial_out + part * p.value_dim,
                                                         p.value_dim, partial_lse + part, 1};
                            });
            } while (take(splits, 1, first, last));
          });
    }

    /// Items are (head, query block in balanced order), taken four at a time: an even number
    /// keeps the balanced pairs together, and a thread's consecutive takes mostly stay in one
    /// head, so it packs that head's K/V once.
    void query_blocks() {
      constexpr Index items_per_take = 4;
      const Index count = p.num_heads * blocks;
      Index first = 0, last = 0;
      if (!take(count, items_per_take, first, last)) return;
      const bool pack = should_pack_heads(p);
      const Index packed_keys = pack ? p.k.rows() : 0;
      with_scratch<Scalar>(
          memory, next_slot++, p.head_dim, p.value_dim, 1, packed_keys, [&](auto& scratch) {
            const Index n = p.q.rows();
            const Index group = p.num_heads / p.num_kv_heads;
            do {
              for (Index item = first; item < last; ++item) {
                const Index i0 = balanced_block(item % blocks, blocks) * query_block_rows;
                const Index rows = std::min(query_block_rows, n - i0);
                const QueryBlock b{item / blocks, i0, rows, mask.key_begin(i0),
                                   mask.key_end(i0 + rows - 1)};
                attend_query_block(p, mask, scratch, b,
                                   head_key_values(p, scratch, b.head / group, pack),
                                   output(b.head, i0));
              }
            } while (take(count, items_per_take, first, last));
          });
    }
  };
  MatrixView<Scalar> out = p.out;  // p is const; the storage it points to is not
  Call call{p, tile_mask, memory, {}, {}, out.data(), out.outerStride()};
  Call* const c = &call;

  if (!decoding) {
    call.blocks = (n + query_block_rows - 1) / query_block_rows;
    // The executor splits the items into chunks, one per thread; each chunk then takes items
    // from the shared counter (Call::take) rather than its own range.
    parallel_for(
        p.num_heads * call.blocks, [c](Index, Index) { c->query_blocks(); }, executor);
    return;
  }
  // Decoding: one narrow block; the visible keys are split, then the partials merged.
  call.keys_begin = tile_mask.key_begin(0);
  call.keys_end = std::max(call.keys_begin, tile_mask.key_end(n - 1));
  call.splits = std::max<Index>(1, (call.keys_end - call.keys_begin) / decode_split_keys);
  if (call.splits > 1) {
    const Index parts = call.splits * p.num_heads * n;
    call.partial_out =
        static_cast<Scalar*>(memory.shared(sizeof(Scalar) * std::size_t(parts * (dv + 1))));
    call.partial_lse = call.partial_out + parts * dv;
  }
  parallel_for(
      call.splits, [c](Index, Index) { c->decode(); }, executor);
  if (call.splits == 1) return;
  const Index part_stride = p.num_heads * n;  // from split s to s + 1, in rows
  for (Index h = 0; h < p.num_heads; ++h) {
    for (Index r = 0; r < n; ++r) {
      const Index first = h * n + r;
      const BlockOutput<Scalar> dst = call.output(h, r);
      merge_rows(call.splits, call.partial_out + first * dv, part_stride * dv,
                 call.partial_lse + first, part_stride, dv, dst.out, dst.lse);
    }
  }
}

}  // namespace attn::detail

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
