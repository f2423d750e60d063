// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors
#pragma once

/// \file mpi/layout.hpp
/// How a sequence's rows are split across the ranks of a communicator: which positions each rank
/// holds, as segments of its local rows.

#include <algorithm>
#include <vector>

#include "../error.hpp"
#include "../types.hpp"

namespace attn::mpi {

/// How the rows of a sequence (queries, or keys and values) are spread over R ranks.
enum class Layout {
  /// Rank r holds one run of consecutive positions, after those of ranks 0 … r − 1; the runs may
  /// differ in length (each rank passes as many rows as it holds).
  contiguous,
  /// The sequence is cut into 2R chunks as equal as can be (chunk c starts at c·L / 2R) and rank r
  /// holds chunks r and 2R − 1 − r, one after the other: under a causal mask every rank then has
  /// the same work (an early chunk with little to see, and a late one with much), where a
  /// contiguous split gives the last rank R times the first one's.
  zigzag,
};

/// Rows [local, local + rows) of a rank's shard stand at positions [position, position + rows) of
/// the whole sequence.
///
/// Example (examples/reference_mpi.cpp, compiled and run as a test):
/// \snippet reference_mpi.cpp sequence_parallel
struct Segment {
  /// Where the segment starts in the whole sequence.
  Index position = 0;
  /// Where it starts among the rank's own rows.
  Index local = 0;
  /// How many rows it holds.
  Index rows = 0;
};

/// The segments rank `rank` of `ranks` holds of a sequence of `length` rows, for the layout:
/// contiguous splits as evenly as can be (rank r from r·L / R), zigzag as Layout says. What a
/// program uses to pick its rows before a sequence-parallel call.
/// \throws ShapeError if length < 0, ranks < 1 or rank is not in [0, ranks).
inline std::vector<Segment> shard_segments(Layout layout, Index length, int ranks, int rank) {
  if (length < 0 || ranks < 1 || rank < 0 || rank >= ranks) {
    attn::detail::throw_shape_error("attn::mpi::shard_segments: length ", length, ", rank ", rank,
                                    " of ", ranks, ", expected length >= 0 and 0 <= rank < ranks");
  }
  const Index r = rank, count = ranks;
  if (layout == Layout::contiguous) {
    const Index begin = r * length / count, end = (r + 1) * length / count;
    return {Segment{begin, 0, end - begin}};
  }
  const auto chunk_begin = [&](Index c) { return c * length / (2 * count); };
  const Index early = chunk_begin(r), early_rows = chunk_begin(r + 1) - early;
  const Index late = chunk_begin(2 * count - 1 - r), late_rows = chunk_begin(2 * count - r) - late;
  return {Segment{early, 0, early_rows}, Segment{late, early_rows, late_rows}};
}

/// The number of rows shard_segments gives the rank.
inline Index shard_rows(Layout layout, Index length, int ranks, int rank) {
  Index rows = 0;
  for (const Segment& s : shard_segments(layout, length, ranks, rank))
    rows += s.rows;
  return rows;
}

/// This rank's rows of a whole sequence's matrix, placed as `segments` (from shard_segments)
/// say: what a program that holds the whole input passes as its shard.
template <typename Derived>
Matrix<typename Derived::Scalar> shard_of(const Eigen::MatrixBase<Derived>& whole,
                                          const std::vector<Segment>& segments) {
  Index rows = 0;
  for (const Segment& s : segments)
    rows = std::max(rows, s.local + s.rows);
  Matrix<typename Derived::Scalar> part(rows, whole.cols());
  for (const Segment& s : segments) {
    if (s.rows > 0) part.middleRows(s.local, s.rows) = whole.middleRows(s.position, s.rows);
  }
  return part;
}

namespace detail {

/// Every rank's segments, from every rank's row count: contiguous places the counts one after
/// another; zigzag takes them from the total (the counts were checked against it).
inline std::vector<std::vector<Segment>> all_segments(Layout layout,
                                                      const std::vector<Index>& rows) {
  const int ranks = int(rows.size());
  Index total = 0;
  for (const Index r : rows)
    total += r;
  std::vector<std::vector<Segment>> segments(rows.size());
  Index position = 0;
  for (int r = 0; r < ranks; ++r) {
    if (layout == Layout::contiguous) {
      segments[std::size_t(r)] = {Segment{position, 0, rows[std::size_t(r)]}};
      position += rows[std::size_t(r)];
    } else {
      segments[std::size_t(r)] = shard_segments(layout, total, ranks, r);
    }
  }
  return segments;
}

}  // namespace detail
}  // namespace attn::mpi
