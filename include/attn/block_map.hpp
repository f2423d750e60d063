// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors
#pragma once

/// \file block_map.hpp
/// attn::BlockMap: which blocks of the score matrix a ScoreMask's mask function hides, lets
/// through or cuts, computed once per shape and reused across layers and calls.

#include <algorithm>
#include <cstddef>
#include <memory>
#include <vector>

#include "detail/score_mask_bind.hpp"
#include "detail/score_mask_parts.hpp"
#include "error.hpp"
#include "parallel.hpp"
#include "score_mask.hpp"
#include "types.hpp"

namespace attn {

/// The visibility of every cell of query_cell × key_cell pairs under a ScoreMask's mask
/// function and block predicate (the base attn::Mask is left to the kernel, which answers it
/// from its formulas). The kernel then never reads a key block whose cells are all hidden, and
/// skips per-pair masking where they are all visible.
///
/// Building it asks the block predicate once per cell and, where there is none or it says
/// partial, evaluates the mask function on every pair of the cell to make the cell exact:
/// O(cells) with a good predicate (the built-ins), O(n·m) per plane without one. One plane serves
/// all heads when the mask function and predicate take no head, else one plane per head. Copies
/// share the cells.
///
/// Example (examples/reference_kernel.cpp, compiled and run as a test):
/// \snippet reference_kernel.cpp block_map
class BlockMap {
 public:
  /// A map holds one (n, m): the functors' packed batches refuse it.
  static constexpr bool one_sequence = true;
  /// Queries per cell (one query block of the kernel).
  static constexpr Index query_cell = 64;
  /// Keys per cell.
  static constexpr Index key_cell = 16;

  /// The map of `mask` for n queries, m keys and num_heads query heads.
  /// \param executor runs the rows of cells (empty: default_executor).
  /// \throws ShapeError if n, m are negative or num_heads < 1, or as a call of that shape would
  ///         (a part of the mask tied to another shape).
  template <typename S, typename M, typename B>
  BlockMap(const ScoreMask<S, M, B>& mask, Index n, Index m, Index num_heads = 1,
           const Executor& executor = {}) {
    if (n < 0 || m < 0 || num_heads < 1) {
      detail::throw_shape_error("BlockMap: n is ", n, ", m is ", m, " and num_heads is ", num_heads,
                                ", expected n, m >= 0 and num_heads >= 1");
    }
    detail::check_score_mask(mask, "BlockMap", n, m, num_heads);
    using Blocks = decltype(detail::effective_blocks(mask.mask(), mask.blocks()));
    constexpr bool per_head =
        detail::mask_uses_head<detail::bound_part_t<M>> || detail::bound_part_t<Blocks>::uses_head;
    auto cells = std::make_shared<Cells>();
    cells->n = n;
    cells->m = m;
    cells->heads = num_heads;
    cells->planes = per_head ? num_heads : 1;
    cells->query_cells = (n + query_cell - 1) / query_cell;
    cells->key_cells = (m + key_cell - 1) / key_cell;
    cells->visibility.resize(std::size_t(cells->planes * cells->query_cells * cells->key_cells));
    cells->first.resize(std::size_t(cells->planes * cells->query_cells));
    cells->last.resize(cells->first.size());
    const detail::BoundScoreMask<float, ScoreMask<S, M, B>> rule(mask, n, m, num_heads);
    Cells* const c = cells.get();
    parallel_for(
        c->planes * c->query_cells,
        [&rule, c](Index begin, Index end) {
          for (Index row = begin; row < end; ++row)
            c->fill_row<ScoreMask<S, M, B>::has_mask_function>(rule, row);
        },
        executor);
    m_cells = std::move(cells);
  }

  /// The n the map was built for: calls must have n queries.
  Index queries() const { return m_cells->n; }
  /// The m the map was built for: calls must have m keys.
  Index keys() const { return m_cells->m; }
  /// The query heads the map was built for.
  Index num_heads() const { return m_cells->heads; }
  /// 1 if one plane serves every head, else num_heads().
  Index planes() const { return m_cells->planes; }
  /// Bytes the cells take.
  std::size_t bytes() const {
    return m_cells->visibility.size() * sizeof(Visibility) +
           2 * m_cells->first.size() * sizeof(Index);
  }
  /// Cells of the given visibility, over all planes (to see how sparse a pattern is).
  Index count(Visibility v) const {
    return Index(std::count(m_cells->visibility.begin(), m_cells->visibility.end(), v));
  }

  /// The block predicate: query positions [q0, q1) × keys [k0, k1) of head h, as the kernel asks.
  Visibility operator()(Index h, Index q0, Index q1, Index k0, Index k1) const {
    const Cells& c = *m_cells;
    const Index offset = c.m - c.n;
    const Index r0 = std::max<Index>(q0 - offset, 0) / query_cell;
    const Index r1 = (std::min(q1 - offset, c.n) - 1) / query_cell;
    const Index c0 = std::max<Index>(k0, 0) / key_cell, c1 = (std::min(k1, c.m) - 1) / key_cell;
    bool any_visible = false, all_visible = true;
    for (Index r = r0; r <= r1; ++r) {
      const Visibility* row = c.row(h, r);
      for (Index kc = c0; kc <= c1; ++kc) {
        any_visible = any_visible || row[kc] != Visibility::none;
        all_visible = all_visible && row[kc] == Visibility::all;
      }
    }
    if (!any_visible) return Visibility::none;
    return all_visible ? Visibility::all : Visibility::partial;
  }

  /// Keys [begin, end) that query positions [q0, q1) of head h may see at most.
  detail::KeyRange key_range(Index h, Index q0, Index q1) const {
    const Cells& c = *m_cells;
    const Index offset = c.m - c.n;
    const Index r0 = std::max<Index>(q0 - offset, 0) / query_cell;
    const Index r1 = (std::min(q1 - offset, c.n) - 1) / query_cell;
    Index begin = c.m, end = 0;
    for (Index r = r0; r <= r1; ++r) {
      const std::size_t at = std::size_t(c.plane(h) * c.query_cells + r);
      if (c.first[at] >= c.last[at]) continue;
      begin = std::min(begin, c.first[at]);
      end = std::max(end, c.last[at]);
    }
    return begin < end ? detail::KeyRange{begin, end} : detail::KeyRange{0, 0};
  }

  /// \throws ShapeError naming `who` unless the call is the shape this map was built for.
  void check(const char* who, Index n, Index m, Index heads) const {
    const Cells& c = *m_cells;
    if (n != c.n || m != c.m || (c.planes > 1 && heads != c.heads)) {
      detail::throw_shape_error(who, ": the block map was built for ", c.n, " queries, ", c.m,
                                " keys and ", c.heads, " heads, but the call has ", n, " queries, ",
                                m, " keys and ", heads, " heads");
    }
  }

 private:
  struct Cells {
    Index n = 0, m = 0, heads = 1, planes = 1, query_cells = 0, key_cells = 0;
    std::vector<Visibility> visibility;  // plane, query cell, key cell
    std::vector<Index> first, last;      // per plane and query cell: keys [first, last) not hidden

    Index plane(Index h) const { return planes == 1 ? 0 : h; }
    const Visibility* row(Index h, Index r) const {
      return visibility.data() + (plane(h) * query_cells + r) * key_cells;
    }

    /// Cells of row `row` (plane · query_cells + query cell).
    template <bool has_mask_function, typename Rule>
    void fill_row(const Rule& rule, Index row) {
      const Index h = row / query_cells, i0 = row % query_cells * query_cell;
      const Index i1 = std::min(n, i0 + query_cell);
      const Index q0 = i0 + m - n, q1 = i1 + m - n;
      Visibility* out = visibility.data() + row * key_cells;
      Index begin = m, end = 0;
      for (Index kc = 0; kc < key_cells; ++kc) {
        const Index k0 = kc * key_cell, k1 = std::min(m, k0 + key_cell);
        Visibility v = rule.classify(h, q0, q1, k0, k1);
        if constexpr (has_mask_function) {
          if (v == Visibility::partial) v = evaluate(rule, h, q0, q1, k0, k1);
        }
        out[kc] = v;
        if (v != Visibility::none) {
          begin = std::min(begin, k0);
          end = k1;
        }
      }
      first[std::size_t(row)] = begin;
      last[std::size_t(row)] = end;
    }

    template <typename Rule>
    static Visibility evaluate(const Rule& rule, Index h, Index q0, Index q1, Index k0, Index k1) {
      Index visible = 0;
      for (Index q = q0; q < q1; ++q) {
        for (Index k = k0; k < k1; ++k)
          visible += rule.visible(h, q, k) ? 1 : 0;
      }
      if (visible == 0) return Visibility::none;
      return visible == (q1 - q0) * (k1 - k0) ? Visibility::all : Visibility::partial;
    }
  };

  std::shared_ptr<const Cells> m_cells;
};

}  // namespace attn
