// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors
#pragma once

/// \file paged_view.hpp
/// attn::PagedView: the keys (or values) of one sequence whose rows lie in pages of a shared pool,
/// as the kernel reads them: through the sequence's table of runs, never gathered into a copy.

#include <algorithm>
#include <type_traits>

#include "storage.hpp"
#include "types.hpp"

namespace attn {

namespace detail {

/// Rows [first, first + count) of a contiguous view (a QuantizedView or a ConstMatrixView), as a
/// view of the same type.
template <typename View>
View view_rows(const View& view, Index first, Index count) {
  if constexpr (std::is_same_v<View, QuantizedView>) {
    return view.middleRows(first, count);
  } else {
    if (count == 0) first = 0;  // an empty view may have no storage to offset
    return View(view.data() + first * view.outerStride(), count, view.cols(),
                Eigen::OuterStride<>(view.outerStride()));
  }
}

}  // namespace detail

/// A run of a sequence's rows that lie one after another in one page of a pool: positions
/// [position, position + rows) of the sequence are rows [row, row + rows) of the pool's storage.
///
/// Example (examples/reference_layers.cpp, compiled and run as a test):
/// \snippet reference_layers.cpp paged_kv_cache
struct PageRun {
  /// The sequence position of the run's first row.
  Index position;
  /// The pool row that holds it.
  Index row;
  /// How many rows the run holds (at least one).
  Index rows;
};

/// Marks a key or value type as paged: the kernel's problem stores PagedView<Storage> for it.
///
/// Example (examples/reference_layers.cpp, compiled and run as a test):
/// \snippet reference_layers.cpp paged_kv_cache
template <typename Storage>
struct Paged {};

/// rows() × cols() of Storage, row j of which is row `runs[r].row + (j − runs[r].position)` of
/// `pool`, for the run r holding position j. Made by PagedKVCache::keys(id) and values(id); any
/// table of runs that covers [0, rows) in order, each run inside `pool`, is valid.
///
/// A view, like ConstMatrixView: it holds pointers to the pool's storage and to the table of
/// runs, and is valid until either changes (an append, fork, reorder, truncate, eviction or drop
/// of that sequence). Pass it to scaled_dot_product_attention as k or v.
///
/// Example (examples/reference_layers.cpp, compiled and run as a test):
/// \snippet reference_layers.cpp paged_kv_cache
template <typename Storage_>
class PagedView {
 public:
  /// The type keys and values are kept in.
  using Storage = Storage_;
  /// One run's rows, as a contiguous view.
  using RunView = StorageView<Storage>;

  PagedView() = default;
  /// \param pool  the pool's storage, all of its rows.
  /// \param runs  `count` runs in position order, the first at position 0, each following the
  ///              last without a gap, none empty.
  PagedView(const RunView& pool, const PageRun* runs, Index count)
      : m_pool(pool), m_runs(runs), m_count(count) {}

  /// The sequence's rows: the end of the last run.
  Index rows() const {
    return m_count == 0 ? 0 : m_runs[m_count - 1].position + m_runs[m_count - 1].rows;
  }
  /// Columns of every row.
  Index cols() const { return m_pool.cols(); }
  /// The row stride within a run.
  Index outerStride() const { return m_pool.outerStride(); }
  /// qint8 only: columns per scale.
  template <typename S = Storage, typename = std::enable_if_t<std::is_same_v<S, qint8>>>
  Index group() const {
    return m_pool.group();
  }
  /// The runs, in position order.
  const PageRun* runs() const { return m_runs; }
  /// How many runs runs() points to.
  Index run_count() const { return m_count; }

  /// Rows [j, end of the run holding j), as one contiguous view. Precondition: 0 ≤ j < rows().
  RunView run_from(Index j) const {
    const PageRun* run =
        std::upper_bound(m_runs, m_runs + m_count, j,
                         [](Index position, const PageRun& r) { return position < r.position; }) -
        1;
    const Index offset = j - run->position;
    return detail::view_rows(m_pool, run->row + offset, run->rows - offset);
  }

 private:
  static RunView empty() {
    if constexpr (std::is_same_v<Storage, qint8>) {
      return RunView();
    } else {
      return RunView(nullptr, 0, 0, Eigen::OuterStride<>(0));
    }
  }

  RunView m_pool = empty();
  const PageRun* m_runs = nullptr;
  Index m_count = 0;
};

namespace detail {

/// How a problem stores a key or value argument: StorageView<Storage>, or PagedView<Storage> for
/// Paged<Storage>.
template <typename S>
struct key_value_view {
  using type = StorageView<S>;
  using stored = S;
};
template <typename S>
struct key_value_view<Paged<S>> {
  using type = PagedView<S>;
  using stored = S;
};
template <typename S>
using key_value_view_t = typename key_value_view<S>::type;
/// The element type rows are kept in: Storage for Storage and for Paged<Storage>.
template <typename S>
using stored_t = typename key_value_view<S>::stored;

template <typename View>
inline constexpr bool is_paged_view = false;
template <typename S>
inline constexpr bool is_paged_view<PagedView<S>> = true;

/// Rows [j, end of the storage holding them contiguously) of a k or v view: to the end of a
/// contiguous view, to the end of j's run of a paged one.
template <typename View>
auto contiguous_rows_from(const View& view, Index j) {
  if constexpr (is_paged_view<View>) {
    return view.run_from(j);
  } else {
    return view_rows(view, j, view.rows() - j);
  }
}

}  // namespace detail

}  // namespace attn
