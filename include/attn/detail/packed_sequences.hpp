// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors
#pragma once

/// \file detail/packed_sequences.hpp
/// Several sequences packed row-wise in one kernel call: sequence b is query rows
/// [query_begin(b), query_begin(b + 1)) and key rows [key_begin(b), key_begin(b + 1)), and sees
/// only its own keys, through its own mask with positions counted from its own start. This is
/// how the functors run a packed batch: one call, parallel over (head, query block) of every
/// sequence at once, with whole key blocks of other sequences never read.

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "../mask.hpp"
#include "../score_mask.hpp"
#include "../types.hpp"
#include "score_mask_bind.hpp"
#include "score_mask_parts.hpp"
#include "tile_mask.hpp"

namespace attn::detail {

/// Which run of rows each row belongs to, for runs given by their first rows (offsets, the total
/// at the end): O(1) per row, one int32 per row.
class RowRuns {
 public:
  RowRuns() = default;
  explicit RowRuns(std::vector<Index> offsets) : m_offsets(std::move(offsets)) {
    m_run.resize(std::size_t(m_offsets.back()));
    for (std::size_t b = 0; b + 1 < m_offsets.size(); ++b) {
      std::fill(m_run.begin() + m_offsets[b], m_run.begin() + m_offsets[b + 1], std::int32_t(b));
    }
  }
  /// The run holding row r (0 ≤ r < rows()).
  Index run(Index r) const { return m_run[std::size_t(r)]; }
  Index begin(Index b) const { return m_offsets[std::size_t(b)]; }
  Index length(Index b) const { return begin(b + 1) - begin(b); }
  Index rows() const { return m_offsets.back(); }
  Index runs() const { return Index(m_offsets.size()) - 1; }

 private:
  std::vector<Index> m_offsets{0};
  std::vector<std::int32_t> m_run;
};

/// A ScoreMask applied to every sequence of a packed batch; queries of one sequence never see
/// keys of another. Built once per call (it binds the mask), read by the kernel through the
/// ScoreMask that score_mask() returns.
template <typename Scalar, typename SM>
class PackedSequences {
 public:
  /// Precondition: `mask` has no part tied to one sequence (checked by the caller), and each
  /// sequence's shape passed check_mask_and_options.
  PackedSequences(const SM& mask, std::vector<Index> query_offsets, std::vector<Index> key_offsets,
                  Index heads)
      : m_queries(std::move(query_offsets)),
        m_keys(std::move(key_offsets)),
        m_offset(m_keys.rows() - m_queries.rows()),
        m_left(clamp_reach(mask.base().left())),
        m_right(clamp_reach(mask.base().right())),
        m_rule(mask, m_queries.rows(), m_keys.rows(), heads) {}
  PackedSequences(const PackedSequences&) = delete;
  PackedSequences& operator=(const PackedSequences&) = delete;

  /// Query position q (of the whole call) as sequence and position within it.
  struct Local {
    Index sequence;
    Index q;
  };
  Local local_query(Index q) const {
    const Index i = q - m_offset;
    const Index b = m_queries.run(i);
    return {b, i - m_queries.begin(b) + m_keys.length(b) - m_queries.length(b)};
  }

  Scalar score(Scalar s, Index h, Index q, Index k) const {
    const Local l = local_query(q);
    if (m_keys.run(k) != l.sequence) return s;  // hidden by the mask function anyway
    return m_rule.score(s, h, l.q, k - m_keys.begin(l.sequence));
  }

  bool visible(Index h, Index q, Index k) const {
    const Local l = local_query(q);
    if (m_keys.run(k) != l.sequence) return false;
    const Index local_k = k - m_keys.begin(l.sequence);
    const WindowRule window = window_of(l.sequence);
    return local_k >= window.first_key(l.q) && local_k < window.end_key(l.q) &&
           m_rule.visible(h, l.q, local_k);
  }

  Visibility classify(Index h, Index q0, Index q1, Index k0, Index k1) const {
    const Local first = local_query(q0), last = local_query(q1 - 1);
    const Index first_key = m_keys.run(k0), last_key = m_keys.run(k1 - 1);
    if (last.sequence < first_key || first.sequence > last_key) return Visibility::none;
    if (first.sequence != last.sequence || first_key != last_key) return Visibility::partial;
    if (first_key != first.sequence) return Visibility::none;
    const Index b = first.sequence, base = m_keys.begin(b);
    const Index local_k0 = k0 - base, local_k1 = k1 - base;
    const WindowRule window = window_of(b);
    const KeyRange range = window.key_range(first.q, last.q + 1);
    if (range.end <= local_k0 || range.begin >= local_k1) return Visibility::none;
    const Visibility inner = m_rule.classify(h, first.q, last.q + 1, local_k0, local_k1);
    return window.covers(first.q, last.q + 1, local_k0, local_k1)
               ? inner
               : both(inner, Visibility::partial);
  }

  KeyRange key_range(Index h, Index q0, Index q1) const {
    const Local first = local_query(q0), last = local_query(q1 - 1);
    const auto range_of = [&](Index b, Index local_q0, Index local_q1) {
      const KeyRange window = window_of(b).key_range(local_q0, local_q1);
      const KeyRange rule = m_rule.key_range(h, local_q0, local_q1);
      const Index length = m_keys.length(b);
      return KeyRange{std::clamp<Index>(std::max(window.begin, rule.begin), 0, length),
                      std::clamp<Index>(std::min(window.end, rule.end), 0, length)};
    };
    const Index first_end = first.sequence == last.sequence
                                ? last.q + 1
                                : first.q + m_queries.begin(first.sequence + 1) - (q0 - m_offset);
    const KeyRange head = range_of(first.sequence, first.q, first_end);
    const Index last_begin = first.sequence == last.sequence
                                 ? first.q
                                 : m_keys.length(last.sequence) - m_queries.length(last.sequence);
    const KeyRange tail = range_of(last.sequence, last_begin, last.q + 1);
    return {m_keys.begin(first.sequence) + head.begin, m_keys.begin(last.sequence) + tail.end};
  }

  /// What the kernel takes: this object's score, mask function and block predicate, by
  /// reference (it must outlive the call).
  auto score_mask() const {
    struct Score {
      const PackedSequences* p = nullptr;
      Scalar operator()(Scalar s, Index h, Index q, Index k) const { return p->score(s, h, q, k); }
    };
    struct Visible {
      const PackedSequences* p;
      bool operator()(Index h, Index q, Index k) const { return p->visible(h, q, k); }
    };
    struct Blocks {
      const PackedSequences* p;
      Visibility operator()(Index h, Index q0, Index q1, Index k0, Index k1) const {
        return p->classify(h, q0, q1, k0, k1);
      }
      KeyRange key_range(Index h, Index q0, Index q1) const { return p->key_range(h, q0, q1); }
    };
    std::conditional_t<SM::has_score, Score, NoScore> score{};
    if constexpr (SM::has_score) score.p = this;
    return ScoreMask<decltype(score), Visible, BlockPredicate<Blocks>>(
        Mask(), score, Visible{this}, BlockPredicate<Blocks>{Blocks{this}});
  }

 private:
  WindowRule window_of(Index b) const { return {m_left, m_right, m_keys.length(b)}; }
  // A reach beyond all rows changes nothing; clamping it keeps q ± reach from overflowing.
  Index clamp_reach(Index reach) const {
    return reach == Mask::unbounded ? reach : std::min(reach, m_queries.rows() + m_keys.rows());
  }

  RowRuns m_queries;
  RowRuns m_keys;
  Index m_offset;  // query row i of the call stands at position i + m_offset
  Index m_left, m_right;
  BoundScoreMask<Scalar, SM> m_rule;
};

}  // namespace attn::detail
