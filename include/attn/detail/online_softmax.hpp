// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors
#pragma once

/// \file detail/online_softmax.hpp
/// The online softmax, written once: the prefill tiles, the decode path and the merge of partial
/// results all run this recurrence (FlashAttention's Softmax state).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "../types.hpp"
#include "float_bits.hpp"
#include "packet_math.hpp"

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wignored-attributes"
#endif

namespace attn::detail {

/// Softmax over rows whose logits arrive a tile at a time, with the weighted sum of values
/// accumulated alongside. Per row it keeps the running max M and the running sum L of
/// exp(logit − M). For a tile with max t:
///
///     M' = max(M, t)                         (a NaN wins: a NaN the row sees makes it NaN)
///     shift = M', or 0 while M' = −∞         (nothing visible yet: exp(−∞ − 0) = 0, not NaN)
///     P = exp(S − shift),  c = exp(M − shift),  L' = c·L + ΣP,  O' = c·O + P·V
///
/// and at the end out = O / L (zero where L = 0, nothing visible) and lse = M + log L (−∞ there).
/// Rows are lanes: a packet of queries in the prefill's transposed tiles, one scalar for a decode
/// row or for a partial result being merged (a part is a "key" whose logit is its log-sum-exp and
/// whose value row is its output).
///
/// The state lives in caller memory (max, sum), one entry per row.
template <typename Scalar>
class OnlineSoftmax {
 public:
  using Packet = typename PacketTraits<Scalar>::Packet;
  static constexpr int packet_size = PacketTraits<Scalar>::size;
  static constexpr Scalar minus_infinity = -std::numeric_limits<Scalar>::infinity();

  OnlineSoftmax(Scalar* max, Scalar* sum) : m_max(max), m_sum(sum) {}

  /// Rows [0, rows) start empty: M = −∞, L = 0.
  void reset(Index rows) {
    std::fill_n(m_max, rows, minus_infinity);
    std::fill_n(m_sum, rows, Scalar(0));
  }

  /// Folds a tile's max t into rows [i, i + lanes) (Lanes: Packet or Scalar); returns the shift
  /// to subtract from their logits and sets `rescale` to c.
  template <typename Lanes>
  EIGEN_ALWAYS_INLINE Lanes fold_max(Index i, const Lanes& tile_max, Lanes& rescale) {
    if constexpr (std::is_same_v<Lanes, Scalar>) {
      const Scalar old_max = m_max[i];
      const Scalar new_max =
          is_nan(old_max) || is_nan(tile_max) ? old_max + tile_max : std::max(old_max, tile_max);
      const Scalar shift = is_minus_infinity(new_max) ? Scalar(0) : new_max;
      rescale = std::exp(old_max - shift);
      m_max[i] = new_max;
      return shift;
    } else {
      const Packet old_max = simd::load<Packet>(m_max + i);
      const Packet new_max = simd::max_nan(old_max, tile_max);
      const Packet zero = simd::broadcast<Packet>(Scalar(0));
      const Packet shift = simd::select(
          simd::equal(new_max, simd::broadcast<Packet>(minus_infinity)), zero, new_max);
      rescale = softmax_exp(simd::sub(old_max, shift));
      simd::store(m_max + i, new_max);
      return shift;
    }
  }

  /// L = c·L + ΣP for rows [i, i + lanes).
  template <typename Lanes>
  EIGEN_ALWAYS_INLINE void add_sum(Index i, const Lanes& rescale, const Lanes& tile_sum) {
    if constexpr (std::is_same_v<Lanes, Scalar>) {
      m_sum[i] = rescale * m_sum[i] + tile_sum;
    } else {
      simd::store(m_sum + i, simd::fmadd(rescale, simd::load<Packet>(m_sum + i), tile_sum));
    }
  }

  /// One step over a transposed tile Sᵀ (keys × queries, row stride `stride`), queries [0,
  /// width) along the lanes (width a multiple of the packet size, at most 64 packets): logits
  /// become probabilities in place, and rescale[q] receives each query's c. `tile_max`, if given,
  /// is each query's max over the tile (the register tiles find it); else it is found here.
  /// Returns a bit per packet of queries (bit i / P for queries i … i + P − 1) set where some c
  /// differs from 1: once the running maxes settle, none does, and those packets of the
  /// accumulator need not be touched (see rescale_columns).
  std::uint64_t step_columns(Scalar* s_t, Index stride, Index keys, Index width,
                             const Scalar* tile_max, Scalar* rescale) {
    const Packet one = simd::broadcast<Packet>(Scalar(1));
    const Packet all_bits = simd::all_ones<Packet>();
    std::uint64_t rescaled = 0;
    for (Index i = 0; i < width; i += packet_size) {
      Packet block_max;
      if (tile_max != nullptr) {
        block_max = simd::load<Packet>(tile_max + i);
      } else {
        // Four chains: one would wait on each max's latency, key after key. A plain max, as the
        // register tiles': it may miss a NaN, which still makes its row NaN through its own
        // exponential whatever the shift.
        Packet chains[4];
        for (Packet& chain : chains)
          chain = simd::broadcast<Packet>(minus_infinity);
        Index j = 0;
        for (; j + 4 <= keys; j += 4) {
          for (Index c = 0; c < 4; ++c)
            chains[c] = simd::max(chains[c], simd::load<Packet>(s_t + (j + c) * stride + i));
        }
        for (; j < keys; ++j)
          chains[0] = simd::max(chains[0], simd::load<Packet>(s_t + j * stride + i));
        block_max = simd::max(simd::max(chains[0], chains[1]), simd::max(chains[2], chains[3]));
      }
      Packet c;
      const Packet shift = fold_max(i, block_max, c);
      Packet sum = simd::broadcast<Packet>(Scalar(0));
      for (Index j = 0; j < keys; ++j) {
        Scalar* s = s_t + j * stride + i;
        const Packet p = softmax_exp(simd::sub(simd::load<Packet>(s), shift));
        simd::store(s, p);
        sum = simd::add(sum, p);
      }
      if (any_lane(simd::and_not(all_bits, simd::equal(c, one))))
        rescaled |= std::uint64_t(1) << (i / packet_size);
      simd::store(rescale + i, c);
      add_sum(i, c, sum);
    }
    return rescaled;
  }

  /// O' = c·O for the transposed accumulator Oᵀ (dv × queries), in the packets of queries that
  /// step_columns flagged.
  static void rescale_columns(Scalar* out_t, Index stride, Index dv, Index width,
                              const Scalar* rescale, std::uint64_t rescaled) {
    for (Index i = 0; i < width; i += packet_size) {
      if ((rescaled >> (i / packet_size) & 1) == 0) continue;
      const Packet c = simd::load<Packet>(rescale + i);
      for (Index e = 0; e < dv; ++e) {
        Scalar* o = out_t + e * stride + i;
        simd::store(o, simd::mul(simd::load<Packet>(o), c));
      }
    }
  }

  /// The end for the transposed accumulator Oᵀ (dv × queries): column q < rows times 1 / L (0 where
  /// nothing was visible), columns [rows, width) zero. `inverse` is scratch for width values.
  void normalize_columns(Scalar* out_t, Index stride, Index dv, Index rows, Index width,
                         Scalar* inverse) const {
    for (Index r = 0; r < width; ++r)
      inverse[r] = r < rows ? inverse_sum(r) : Scalar(0);
    for (Index e = 0; e < dv; ++e) {
      for (Index i = 0; i < width; i += packet_size) {
        Scalar* o = out_t + e * stride + i;
        simd::store(o, simd::mul(simd::load<Packet>(o), simd::load<Packet>(inverse + i)));
      }
    }
  }

  /// One step over row r's logits s[0, keys) (keys along the row): they become probabilities in
  /// place; returns c, by which the caller scales the row's accumulator.
  Scalar step_row(Index r, Scalar* s, Index keys) {
    Packet max_packet = simd::broadcast<Packet>(minus_infinity);
    Index j = 0;
    for (; j + packet_size <= keys; j += packet_size)
      max_packet = simd::max_nan(max_packet, simd::load<Packet>(s + j));
    Scalar tile_max = simd::max_lanes(max_packet);
    for (; j < keys; ++j)
      tile_max = is_nan(s[j]) || is_nan(tile_max) ? s[j] + tile_max : std::max(tile_max, s[j]);
    Scalar c;
    const Scalar shift = fold_max(r, tile_max, c);
    add_sum(r, c, exp_row(s, keys, shift));
    return c;
  }

  /// One step of a merge: row r takes in a part whose log-sum-exp is `lse` (a key whose logit is
  /// lse). Returns c for the accumulator; `weight` receives exp(lse − shift), the part's weight.
  Scalar step_part(Index r, Scalar lse, Scalar& weight) {
    Scalar c;
    const Scalar shift = fold_max(r, lse, c);
    weight = is_minus_infinity(lse) ? Scalar(0) : std::exp(lse - shift);
    add_sum(r, c, weight);
    return c;
  }

  /// 1 / L for row r, or 0 where nothing was visible (L = 0); a NaN L stays NaN.
  Scalar inverse_sum(Index r) const { return m_sum[r] != 0 ? Scalar(1) / m_sum[r] : Scalar(0); }
  /// Whether row r saw any key (its output is then O / L, else exactly zero).
  bool saw_keys(Index r) const { return m_sum[r] != 0; }
  /// lse = M + log L for row r, −∞ where nothing was visible.
  Scalar log_sum_exp(Index r) const {
    return m_sum[r] != 0 ? m_max[r] + std::log(m_sum[r]) : minus_infinity;
  }

 private:
  /// e^(s[j] − shift) in place for j < count, exact zeros below the normal range; returns the
  /// sum.
  static Scalar exp_row(Scalar* s, Index count, Scalar shift) {
    const Packet shift_packet = simd::broadcast<Packet>(shift);
    Packet sum = simd::broadcast<Packet>(Scalar(0));
    Index j = 0;
    for (; j + packet_size <= count; j += packet_size) {
      const Packet e = softmax_exp(simd::sub(simd::load<Packet>(s + j), shift_packet));
      simd::store(s + j, e);
      sum = simd::add(sum, e);
    }
    Scalar total = simd::sum_lanes(sum);
    for (; j < count; ++j) {
      s[j] = std::exp(s[j] - shift);
      total += s[j];
    }
    return total;
  }

  Scalar* m_max;
  Scalar* m_sum;
};

/// Combines partial results over disjoint key sets, in order: given each part's normalised row
/// and log-sum-exp, the row over the union is the online softmax over the parts, each a key whose
/// logit is its log-sum-exp and whose value row is its output. Parts with lse = −∞ (no visible
/// key) contribute nothing; if all are empty the row is zero and lse −∞. Part s's row is at
/// outs + s·out_stride, its lse at lses[s·lse_stride]; out must not overlap them; lse may be null.
template <typename Scalar>
void merge_rows(Index parts, const Scalar* outs, Index out_stride, const Scalar* lses,
                Index lse_stride, Index dv, Scalar* out, Scalar* lse) {
  using Row = Eigen::Matrix<Scalar, 1, Eigen::Dynamic>;
  Scalar max = 0, sum = 0;
  OnlineSoftmax<Scalar> softmax(&max, &sum);
  softmax.reset(1);
  Eigen::Map<Row> row(out, dv);
  row.setZero();
  for (Index s = 0; s < parts; ++s) {
    Scalar weight;
    const Scalar c = softmax.step_part(0, lses[s * lse_stride], weight);
    if (c != Scalar(1)) row *= c;
    if (weight != 0) row += weight * Eigen::Map<const Row>(outs + s * out_stride, dv);
  }
  if (softmax.saw_keys(0)) {
    row *= softmax.inverse_sum(0);
  } else {
    row.setZero();
  }
  if (lse != nullptr) *lse = softmax.log_sum_exp(0);
}

}  // namespace attn::detail

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
