// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors
#pragma once

/// \file detail/decode.hpp
/// The decode path: fewer queries than a packet (a decoding step, or the ragged end of a
/// prefill). Keys go along the rows: each key row is read once, left to right across the heads
/// (contiguous, so the hardware prefetchers stream it), for S = (scale·Q)·Kᵀ and then for
/// O += P·V, with the online softmax along each state row. The path is memory-bound: what counts
/// is reading each K and V row once, in order.

#include <algorithm>
#include <limits>
#include <type_traits>
#include <utility>

#include "../types.hpp"
#include "attention_problem.hpp"
#include "convert.hpp"
#include "kernel_scratch.hpp"
#include "online_softmax.hpp"
#include "register_tile.hpp"
#include "tile_mask.hpp"

namespace attn::detail {

/// The decode state of heads [first_head, first_head + heads), `rows` queries each: state row
/// (h − first_head)·rows + r of the scratch's decode rows belongs to head h, query r.
template <typename Scalar>
struct DecodeState {
  KernelScratch<Scalar>& scratch;
  Index first_head;
  Index heads;
  Index rows;
  Index row(Index h, Index r) const { return (h - first_head) * rows + r; }
  Index count() const { return heads * rows; }
  Index end_head() const { return first_head + heads; }
  OnlineSoftmax<Scalar> softmax() const { return {scratch.row_max.data(), scratch.row_sum.data()}; }
};

/// Start: scaled queries of every head from query row i0, empty accumulators and softmax.
template <typename Problem, typename Scalar = typename Problem::Scalar>
void decode_begin(const Problem& p, const DecodeState<Scalar>& st, Index i0) {
  const Index d = p.head_dim;
  for (Index h = st.first_head; h < st.end_head(); ++h) {
    st.scratch.q_rows.middleRows(st.row(h, 0), st.rows) =
        p.scale * p.q.block(i0, h * d, st.rows, d).template cast<Scalar>();
  }
  st.scratch.out_rows.topRows(st.count()).setZero();
  st.softmax().reset(st.count());
}

/// Where the rows `ahead` past row j of a run are, for prefetching: in the run itself, or in the
/// run that follows it (a paged view's next page); null when they straddle the two or lie beyond.
template <typename Run>
struct RowsAhead {
  const Run& run;
  const Run& next;
  /// The view and row that hold rows [j + ahead, j + ahead + count), or a null view.
  std::pair<const Run*, Index> find(Index j, Index ahead, Index count) const {
    Index r = j + ahead;
    if (r + count <= run.rows()) return {&run, r};
    r -= run.rows();
    if (r >= 0 && r + count <= next.rows()) return {&next, r};
    return {nullptr, 0};
  }
};

/// Asks for the scales of rows [first, first + count) of a qint8 view (nothing for other views).
template <typename View>
EIGEN_ALWAYS_INLINE void prefetch_scales(const View& view, Index first, Index count) {
  if constexpr (is_quantized_view<View>) {
    prefetch_block(view.scales() + first * view.scale_stride(), view.scale_stride(), count,
                   view.cols() / view.group());
  } else {
    (void)view, (void)first, (void)count;
  }
}

/// One tile of keys [j0, j0 + keys) for all the state's heads. K and V rows are read in their
/// storage and converted in registers; a qint8 row's scale multiplies its logit and its weight.
/// `kt` and `vt` are K's and V's rows from j0 as far as they are contiguous (at least `keys`
/// rows), `k_ahead` and `v_ahead` the same runs with the ones after them: the prefetches ask for
/// rows beyond the tile, and across the end of a page.
template <typename Problem, typename TM, typename KeyRun, typename ValueRun,
          typename Scalar = typename Problem::Scalar>
void decode_tile(const Problem& p, const TM& mask, const DecodeState<Scalar>& st, Index i0,
                 Index j0, Index keys, const RowsAhead<KeyRun>& k_ahead,
                 const RowsAhead<ValueRun>& v_ahead) {
  const KeyRun& kt = k_ahead.run;
  const ValueRun& vt = v_ahead.run;
  // Keys that no head's queries see are never read.
  bool any_visible = false;
  for (Index h = st.first_head; h < st.end_head() && !any_visible; ++h)
    any_visible = mask.classify(h, i0, i0 + st.rows, j0, j0 + keys).combined() != Visibility::none;
  if (!any_visible) return;

  using KeyElement = std::remove_const_t<std::remove_pointer_t<decltype(kt.data())>>;
  using ValueElement = std::remove_const_t<std::remove_pointer_t<decltype(vt.data())>>;
  using KeyRow = Eigen::Matrix<KeyElement, 1, Eigen::Dynamic>;
  using ValueRow = Eigen::Matrix<ValueElement, 1, Eigen::Dynamic>;
  constexpr bool scaled_keys = is_quantized_view<KeyRun>;
  constexpr bool scaled_values = is_quantized_view<ValueRun>;
  const Index d = p.head_dim;
  const Index dv = p.value_dim;
  auto& s = st.scratch.s_rows;
  auto& acc = st.scratch.out_rows;
  const auto& q = st.scratch.q_rows;

  // Heads of whole packets take `key_rows` key rows at a time through packet loops: each query
  // row is loaded, and each accumulator row loaded and stored, once for all of them. One row at a
  // time through Eigen's dynamic-size dot and axpy, this step waits on the accumulator's store
  // and reload and falls well short of the memory bandwidth.
  constexpr Index size = PacketTraits<Scalar>::size;
  constexpr int key_rows = 4;
  // Each head's part of the key rows `prefetch_rows` ahead is asked for as the head is reached.
  // The rows are walked a few at a time, each across all heads, so the reads interleave a few
  // streams a whole row apart; the hardware prefetchers, which track streams within a page,
  // restart at every row (a row of 32 heads of 64 values is one to two pages) and leave each
  // load waiting on memory, most of all for the narrow storage types.
  constexpr Index prefetch_rows = 2 * key_rows;
  const bool whole_packets = d % size == 0 && dv % size == 0;
  // Rows of the scratch through pointers: with d = 0 or dv = 0 there is no element (0, 0).
  const auto q_row = [&](Index row) { return q.data() + row * q.outerStride(); };
  const auto s_row = [&](Index row) { return s.data() + row * s.outerStride(); };
  const auto acc_row = [&](Index row) { return acc.data() + row * acc.outerStride(); };

  // 1. Logits, a key row (or key_rows) at a time across the heads.
  Index j_logits = 0;
  if (whole_packets) {
    for (; j_logits + key_rows <= keys; j_logits += key_rows) {
      const KeyElement* k_rows = kt.data() + j_logits * kt.outerStride();
      const auto [ahead, ahead_row] = k_ahead.find(j_logits, prefetch_rows, key_rows);
      const KeyElement* ahead_rows =
          ahead == nullptr ? nullptr : ahead->data() + ahead_row * ahead->outerStride();
      if (ahead != nullptr) prefetch_scales(*ahead, ahead_row, key_rows);
      for (Index h = st.first_head; h < st.end_head(); ++h) {
        const Index g = p.kv_head(h);
        if (ahead != nullptr) prefetch_block(ahead_rows + g * d, ahead->outerStride(), key_rows, d);
        for (Index r = 0; r < st.rows; ++r) {
          const Index row = st.row(h, r);
          Scalar* logits = s_row(row) + j_logits;
          packet_dot_rows<key_rows>(q_row(row), k_rows + g * d, kt.outerStride(), d, logits);
          if constexpr (scaled_keys) {
            for (int i = 0; i < key_rows; ++i)
              logits[i] *= row_scale<Scalar>(kt, j_logits + i, g);
          }
        }
      }
    }
  }
  for (Index j = j_logits; j < keys; ++j) {
    const KeyElement* k_row = kt.data() + j * kt.outerStride();
    for (Index h = st.first_head; h < st.end_head(); ++h) {
      const Index g = p.kv_head(h);
      const KeyElement* k_head = k_row + g * d;
      for (Index r = 0; r < st.rows; ++r) {
        const Index row = st.row(h, r);
        if (whole_packets) {
          packet_dot_rows<1>(q_row(row), k_head, 0, d, s_row(row) + j);
        } else {
          s(row, j) = q.row(row).dot(Eigen::Map<const KeyRow>(k_head, d).template cast<Scalar>());
        }
        if constexpr (scaled_keys) s(row, j) *= row_scale<Scalar>(kt, j, g);
      }
    }
  }
  bool masked = false;
  for (Index h = st.first_head; h < st.end_head(); ++h) {
    const BlockClass block_class = mask.classify(h, i0, i0 + st.rows, j0, j0 + keys);
    Scalar* logits = s_row(st.row(h, 0));
    if (block_class.combined() == Visibility::none) {
      for (Index r = 0; r < st.rows; ++r)
        std::fill_n(logits + r * s.outerStride(), keys, -std::numeric_limits<Scalar>::infinity());
      masked = true;
    } else {
      masked |=
          finish_logits(p, mask, logits, s.outerStride(), 1, st.rows, keys, h, i0, j0, block_class);
    }
  }

  // 2. Online softmax along each state row.
  OnlineSoftmax<Scalar> softmax = st.softmax();
  for (Index row = 0; row < st.count(); ++row) {
    const Scalar c = softmax.step_row(row, s_row(row), keys);
    if (c != Scalar(1)) acc.row(row) *= c;
  }

  // 3. O += P·V, a value row (or key_rows) at a time across the heads.
  const bool careful = values_need_care(masked, vt, 0, keys, 0, vt.cols());
  Index j = 0;
  if (whole_packets && !careful) {
    for (; j + key_rows <= keys; j += key_rows) {
      const ValueElement* v_rows = vt.data() + j * vt.outerStride();
      const auto [ahead, ahead_row] = v_ahead.find(j, prefetch_rows, key_rows);
      const ValueElement* ahead_rows =
          ahead == nullptr ? nullptr : ahead->data() + ahead_row * ahead->outerStride();
      if (ahead != nullptr) prefetch_scales(*ahead, ahead_row, key_rows);
      for (Index h = st.first_head; h < st.end_head(); ++h) {
        const Index g = p.kv_head(h);
        if (ahead != nullptr)
          prefetch_block(ahead_rows + g * dv, ahead->outerStride(), key_rows, dv);
        for (Index r = 0; r < st.rows; ++r) {
          const Index row = st.row(h, r);
          const Scalar* weights = s_row(row) + j;
          Scalar scaled[key_rows];
          if constexpr (scaled_values) {
            for (int i = 0; i < key_rows; ++i)
              scaled[i] = weights[i] * row_scale<Scalar>(vt, j + i, g);
            weights = scaled;
          }
          packet_axpy_rows<key_rows>(weights, v_rows + g * dv, vt.outerStride(), acc_row(row), dv);
        }
      }
    }
  }
  for (; j < keys; ++j) {
    const ValueElement* v_row = vt.data() + j * vt.outerStride();
    for (Index h = st.first_head; h < st.end_head(); ++h) {
      const Index g = p.kv_head(h);
      const ValueElement* v_head = v_row + g * dv;
      for (Index r = 0; r < st.rows; ++r) {
        const Index row = st.row(h, r);
        const Scalar weight = s(row, j) * row_scale<Scalar>(vt, j, g);
        if (careful && weight == 0) continue;
        if (whole_packets) {
          packet_axpy_rows<1>(&weight, v_head, 0, acc_row(row), dv);
        } else {
          acc.row(row) += weight * Eigen::Map<const ValueRow>(v_head, dv).template cast<Scalar>();
        }
      }
    }
  }
}

/// The decode path over keys [keys_begin, keys_end) for the state's heads, query rows from i0;
/// dst(h) is where head h's normalised rows (zero where no key was visible) and log-sum-exps
/// (−∞ there) go.
template <typename Problem, typename TM, typename Destination,
          typename Scalar = typename Problem::Scalar>
void attend_decode(const Problem& p, const TM& mask, const DecodeState<Scalar>& st, Index i0,
                   Index keys_begin, Index keys_end, const Destination& dst) {
  const Index tile = st.scratch.blocks.decode_keys;
  decode_begin(p, st, i0);
  // Tiles end where K's or V's rows stop being contiguous (a page's run ends).
  const auto after = [](const auto& view, Index j0, const auto& run) {
    const Index next = j0 + run.rows();
    return next < view.rows() ? contiguous_rows_from(view, next) : view_rows(run, 0, 0);
  };
  for (Index j0 = keys_begin, keys = 0; j0 < keys_end; j0 += keys) {
    const auto kt = contiguous_rows_from(p.k, j0);
    const auto vt = contiguous_rows_from(p.v, j0);
    keys = std::min({tile, keys_end - j0, kt.rows(), vt.rows()});
    const auto k_next = after(p.k, j0, kt);
    const auto v_next = after(p.v, j0, vt);
    decode_tile(p, mask, st, i0, j0, keys, RowsAhead<std::decay_t<decltype(kt)>>{kt, k_next},
                RowsAhead<std::decay_t<decltype(vt)>>{vt, v_next});
  }
  const OnlineSoftmax<Scalar> softmax = st.softmax();
  for (Index h = st.first_head; h < st.end_head(); ++h) {
    const BlockOutput<Scalar> out = dst(h);
    for (Index r = 0; r < st.rows; ++r) {
      const Index row = st.row(h, r);
      Eigen::Map<Eigen::Matrix<Scalar, 1, Eigen::Dynamic>> out_row(out.out + r * out.out_stride,
                                                                   p.value_dim);
      // One division per row, not per element; exact zeros where nothing was visible.
      if (softmax.saw_keys(row)) {
        out_row = st.scratch.out_rows.row(row) * softmax.inverse_sum(row);
      } else {
        out_row.setZero();
      }
      if (out.lse != nullptr) out.lse[r * out.lse_stride] = softmax.log_sum_exp(row);
    }
  }
}

}  // namespace attn::detail
