// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors
#pragma once

/// \file mpi/sharded_kv_cache.hpp
/// attn::mpi::ShardedKVCache: one sequence's keys and values split across the ranks of a
/// communicator by position, and the decode step over it: the query is broadcast, every rank
/// attends over its shard, and the parts merge by log-sum-exp in rank order.

#include <mpi.h>

#include <algorithm>
#include <cstdint>
#include <exception>
#include <string>
#include <vector>

#include "../kv_cache.hpp"
#include "../paged_view.hpp"
#include "../scaled_dot_product.hpp"
#include "detail/collective.hpp"
#include "detail/row_parts.hpp"
#include "layout.hpp"

namespace attn::mpi {

/// The keys and values of one sequence, each position held by one rank of `comm`. A rank's rows
/// are a KVCache of its own (contiguous, preallocated, any Storage) and the positions they stand
/// at, as segments: a sequence-parallel prefill leaves each rank its shard (append_shards), and
/// decoding appends new positions in blocks of `block` rows, each block to the rank holding the
/// fewest rows (the lowest such rank), so that shards stay even and a rank's rows stay few
/// segments.
///
/// Every member that changes the cache, and attend, is collective: every rank calls it in the
/// same order. Every rank knows every rank's row count, so all of them agree on where a new row
/// goes and on whether it fits.
///
/// Example (examples/reference_mpi.cpp, compiled and run as a test):
/// \snippet reference_mpi.cpp sharded_kv_cache
template <typename Scalar_, typename Storage_ = Scalar_>
class ShardedKVCache {
 public:
  /// The type of the computations (float or double).
  using Scalar = Scalar_;
  /// The type keys and values are kept in.
  using Storage = Storage_;
  /// Each rank's own cache of the positions it holds.
  using Cache = KVCache<Scalar, Storage>;

  /// Collective.
  /// \param comm      the communicator (its ranks hold the shards; not duplicated, not owned).
  /// \param capacity  rows each rank can hold.
  /// \param key_width Hkv·head_dim, the width of a position's keys and of its values.
  /// \param head_dim  width of one head; 0 means key_width.
  /// \param block     rows of decoding appends that go to one rank before the next is chosen.
  /// \throws ShapeError on every rank if the arguments are invalid or differ across ranks.
  ShardedKVCache(MPI_Comm comm, Index capacity, Index key_width, Index head_dim = 0,
                 Index block = 64)
      : m_comm(comm),
        m_local(std::max<Index>(capacity, 0), std::max<Index>(key_width, 0),
                head_dim > 0 && key_width > 0 && key_width % head_dim == 0 ? head_dim : 0),
        m_block(block) {
    const detail::Agreement table(comm, "attn::mpi::ShardedKVCache",
                                  {capacity, key_width, head_dim, block}, nullptr);
    table.require_same(0, "capacity");
    table.require_same(1, "key_width");
    table.require_same(2, "head_dim");
    table.require_same(3, "block");
    if (capacity < 0 || key_width < 0 || head_dim < 0 || block < 1 ||
        (head_dim > 0 && key_width % head_dim != 0)) {
      table.fail("capacity ", capacity, ", key_width ", key_width, ", head_dim ", head_dim,
                 ", block ", block,
                 ", expected capacity, key_width >= 0, head_dim 0 or dividing key_width, "
                 "block >= 1");
    }
    m_rank = detail::comm_rank(comm);
    m_rows.assign(std::size_t(table.ranks()), 0);
  }

  /// Positions of the whole sequence.
  Index size() const { return m_size; }
  /// Positions this rank holds.
  Index local_size() const { return m_local.size(); }
  /// Positions rank r holds.
  Index rows_of(int rank) const { return m_rows.at(std::size_t(rank)); }
  /// Rows each rank can hold.
  Index capacity() const { return m_local.capacity(); }
  /// Width of a position's keys and of its values.
  Index width() const { return m_local.width(); }
  /// Where this rank's rows stand: local rows [local, local + rows) at positions
  /// [position, position + rows), in the order they were appended (so by position).
  const std::vector<Segment>& segments() const { return m_segments; }
  /// This rank's keys and values.
  const Cache& local() const { return m_local; }

  /// Collective: appends every rank's rows k and v (rows × width) as spread by `layout` over
  /// positions size() … size() + Σ rows − 1 (for zigzag, the rows shard_segments gives each
  /// rank): what a sequence-parallel prefill's projections leave on each rank.
  /// \throws ShapeError or CapacityError on every rank if a rank's rows do not fit its cache, have
  ///         the wrong width, or do not fit Storage, or the zigzag shard sizes do not hold; no
  ///         rank's cache changes then.
  template <typename DK, typename DV>
  void append_shards(const Eigen::MatrixBase<DK>& k, const Eigen::MatrixBase<DV>& v,
                     Layout layout = Layout::contiguous) {
    constexpr const char* who = "attn::mpi::ShardedKVCache::append_shards";
    // Every check that could fail on one rank only is tried here, and its outcome agreed on.
    std::string problem;
    try {
      Cache trial(k.rows(), width(), m_local.head_dim());
      trial.append(k, v);
      m_local.check_room("the rank's KVCache", k.rows());
    } catch (const std::exception& error) {
      problem = error.what();
    }
    const detail::Agreement table(
        m_comm, who, {k.rows(), problem.empty() ? 0 : 1, std::int64_t(layout), m_size}, nullptr);
    table.require_same(2, "layout");
    table.require_same(3, "size()");
    for (int r = 0; r < table.ranks(); ++r) {
      if (table.at(r, 1) != 0) {
        // The first failing rank's reason, sent to all: the same message everywhere.
        table.fail("rank ", r, " cannot append its ", table.at(r, 0),
                   " rows: ", detail::broadcast_text(m_comm, r, problem));
      }
    }
    const std::vector<Index> rows = table.column(0);
    const std::vector<std::vector<Segment>> all = detail::all_segments(layout, rows);
    if (layout == Layout::zigzag) {
      const Index total = table.sum(0);
      for (int r = 0; r < table.ranks(); ++r) {
        if (rows[std::size_t(r)] != shard_rows(layout, total, table.ranks(), r)) {
          table.fail("rank ", r, " appends ", rows[std::size_t(r)], " rows, expected ",
                     shard_rows(layout, total, table.ranks(), r), " (its zigzag shard of ", total,
                     ")");
        }
      }
    }
    const Index first_local = m_local.size();
    m_local.append(k, v);
    for (const Segment& s : all[std::size_t(m_rank)])
      add_segment(m_size + s.position, first_local + s.local, s.rows);
    for (std::size_t r = 0; r < rows.size(); ++r)
      m_rows[r] += rows[r];
    m_size += table.sum(0);
    m_block_end = m_size;  // decoding chooses a rank for its next block afresh
  }

  /// Collective: a decoding step. The root's q (n × H·d), k and v (n × width), the new positions'
  /// queries, keys and values, are broadcast (other ranks' q, k and v are ignored); each new
  /// position is stored by the rank whose turn it is; every rank attends over its rows, the new
  /// ones included, with the queries at positions size() − n … size() − 1 (after the append); and
  /// the parts are gathered and merged in rank order on every rank. Returns the (n, H·d)
  /// attention output on every rank, bitwise the same on all of them and run to run, and equal to
  /// one process's attention over the whole cache within the kernel's tolerance (a merge of R
  /// parts).
  /// \param mask    structured masks and score and mask functions, at the whole sequence's
  ///                positions (as for attn::mpi::scaled_dot_product_attention; no explicit
  ///                matrices).
  /// \param options heads (num_kv_heads·head_dim must be width()), scale, softcap; this rank's
  ///                executor and workspace.
  /// \throws ShapeError or CapacityError on every rank if the root's shapes are wrong, the
  ///         options or roots differ across ranks, the mask cannot be split, or the rows do not
  ///         fit; no rank's cache changes then.
  template <typename DQ, typename DK, typename DV, typename M = Mask,
            typename = std::enable_if_t<attn::detail::is_mask_argument<M>>>
  Matrix<Scalar> attend(const Eigen::MatrixBase<DQ>& q, const Eigen::MatrixBase<DK>& k,
                        const Eigen::MatrixBase<DV>& v, const M& mask = M(),
                        const AttentionOptions& options = {}, int root = 0,
                        Traffic* traffic = nullptr) {
    static_assert(std::is_same_v<typename DQ::Scalar, Scalar> &&
                      std::is_same_v<typename DK::Scalar, Scalar> &&
                      std::is_same_v<typename DV::Scalar, Scalar>,
                  "attn::mpi::ShardedKVCache::attend: q, k and v must have the cache's Scalar");
    constexpr const char* who = "attn::mpi::ShardedKVCache::attend";
    const auto& score_mask = attn::detail::as_score_mask(mask);
    const Mask& base = score_mask.base();
    const detail::Agreement table(
        m_comm, who,
        {root, q.rows(), q.cols(), k.rows(), k.cols(), v.rows(), v.cols(), options.num_heads,
         options.kv_heads(), m_size, base.left(), base.right(),
         base.has_key_length() ? base.visible_keys() : -1, base.has_explicit() ? 1 : 0,
         options.scale ? detail::bits_of(*options.scale) : 0, detail::bits_of(options.softcap),
         options.positions ? 1 : 0},
        traffic);
    const char* names[] = {"root",
                           "",
                           "",
                           "",
                           "",
                           "",
                           "",
                           "num_heads",
                           "num_kv_heads",
                           "size()",
                           "the mask's left reach",
                           "the mask's right reach",
                           "the mask's key_length",
                           "the mask's explicit part",
                           "scale",
                           "softcap",
                           "options.positions"};
    for (const std::size_t f : {0u, 7u, 8u, 9u, 10u, 11u, 12u, 13u, 14u, 15u, 16u})
      table.require_same(f, names[f]);
    if (root < 0 || root >= table.ranks()) {
      table.fail("root is ", root, ", expected a rank of the ", table.ranks(), " in comm");
    }
    const Index n = Index(table.at(root, 1)), heads = options.num_heads;
    const Index kv_heads = options.kv_heads();
    const Index head_dim = m_local.head_dim();
    if (heads < 1 || kv_heads < 1 || heads % kv_heads != 0 || kv_heads * head_dim != width()) {
      table.fail("num_heads ", heads, " and num_kv_heads ", kv_heads, " with head_dim ", head_dim,
                 ", expected num_kv_heads dividing num_heads and num_kv_heads*head_dim "
                 "= width ",
                 width());
    }
    if (table.at(root, 2) != heads * head_dim || table.at(root, 3) != n ||
        table.at(root, 4) != width() || table.at(root, 5) != n || table.at(root, 6) != width()) {
      table.fail("root ", root, " has q ", table.at(root, 1), "x", table.at(root, 2), ", k ",
                 table.at(root, 3), "x", table.at(root, 4), " and v ", table.at(root, 5), "x",
                 table.at(root, 6), ", expected q n x ", heads * head_dim, " and k, v n x ",
                 width());
    }
    if (table.at(0, 13) != 0) {
      table.fail(
          "an explicit keep/bias mask describes one shard's rows, expected structured "
          "masks or functions of positions");
    }
    if (table.at(0, 16) != 0) {
      table.fail("options.positions is set, expected it empty: the call places each shard");
    }
    AttentionOptions whole = options;
    whole.positions = Positions{0, 0, 0};
    attn::detail::check_mask_and_options<Scalar>(who, n, m_size + n, head_dim, score_mask, whole);
    if (n == 0) return Matrix<Scalar>(0, heads * head_dim);  // every rank knows: nothing to do
    // Who stores each new row, and whether it fits, decided alike on every rank.
    std::vector<int> owners(static_cast<std::size_t>(n));
    std::vector<Index> rows = m_rows;
    Index block_end = m_block_end;
    int owner = m_owner;
    for (Index i = 0; i < n; ++i) {
      if (m_size + i >= block_end) {
        owner = int(std::min_element(rows.begin(), rows.end()) - rows.begin());
        block_end = m_size + i + m_block;
      }
      owners[std::size_t(i)] = owner;
      if (++rows[std::size_t(owner)] > capacity()) {
        throw CapacityError(std::string(who) + ": rank " + std::to_string(owner) + " would hold " +
                            std::to_string(rows[std::size_t(owner)]) +
                            " rows, beyond the capacity " + std::to_string(capacity()) +
                            " of every rank");
      }
    }
    // The root's rows, [q | k | v] per row, to every rank.
    const Index qc = heads * head_dim, width_all = qc + 2 * width();
    Matrix<Scalar> rows_all(n, width_all);
    if (m_rank == root) rows_all << q, k, v;
    {
      const detail::Stopwatch clock;
      detail::check_mpi(MPI_Bcast(rows_all.data(), int(rows_all.size()), detail::datatype<Scalar>(),
                                  root, m_comm),
                        "MPI_Bcast");
      if (traffic != nullptr) {
        traffic->wait_seconds += clock.seconds();
        if (m_rank == root) {
          traffic->bytes_sent +=
              double(rows_all.size() * Index(sizeof(Scalar))) * double(table.ranks() - 1);
        }
        traffic->messages += 1;
      }
    }
    // Storage checks on the broadcast rows: the same data, so the same outcome, on every rank.
    Cache trial(n, width(), head_dim);
    trial.append(rows_all.middleCols(qc, width()), rows_all.rightCols(width()));

    const detail::Stopwatch clock;
    for (Index i = 0; i < n; ++i) {
      if (owners[std::size_t(i)] != m_rank) continue;
      add_segment(m_size + i, m_local.size(), 1);
      m_local.append(rows_all.block(i, qc, 1, width()),
                     rows_all.block(i, qc + width(), 1, width()));
    }
    m_rows = rows;
    m_block_end = block_end;
    m_owner = owner;
    m_size += n;

    // This rank's part over its segments, in position order.
    const Index dv = head_dim;
    detail::RowParts<Scalar> mine(n, heads, dv);
    Matrix<Scalar> part_out, part_lse;
    AttentionExtras<Scalar> extras;
    extras.log_sum_exp = &part_lse;
    AttentionOptions shard = options;
    const ConstMatrixRef<Scalar> queries(rows_all.leftCols(qc));
    for (const Segment& s : m_segments) {
      if (!detail::may_see(base, m_size - n, m_size, s.position, s.position + s.rows)) continue;
      shard.positions = Positions{m_size - n, s.position, 0};
      part_out.resize(n, heads * dv);
      scaled_dot_product_attention_into(queries,
                                        attn::detail::view_rows(m_local.keys(), s.local, s.rows),
                                        attn::detail::view_rows(m_local.values(), s.local, s.rows),
                                        part_out, score_mask, shard, extras);
      mine.merge(0, part_out, part_lse);
    }
    // Every rank's part to every rank, merged in rank order.
    const Index part_width = heads * dv + heads;
    Matrix<Scalar> packed(n, part_width), gathered(n * table.ranks(), part_width);
    packed << mine.out(), mine.log_sum_exp();
    if (traffic != nullptr) traffic->compute_seconds += clock.seconds();
    {
      const detail::Stopwatch wait;
      detail::check_mpi(
          MPI_Allgather(packed.data(), int(packed.size()), detail::datatype<Scalar>(),
                        gathered.data(), int(packed.size()), detail::datatype<Scalar>(), m_comm),
          "MPI_Allgather");
      if (traffic != nullptr) {
        traffic->wait_seconds += wait.seconds();
        traffic->bytes_sent +=
            double(packed.size() * Index(sizeof(Scalar))) * double(table.ranks() - 1);
        traffic->messages += 1;
      }
    }
    detail::RowParts<Scalar> merged(n, heads, dv);
    for (int r = 0; r < table.ranks(); ++r) {
      const auto part = gathered.middleRows(r * n, n);
      merged.merge(0, part.leftCols(heads * dv), part.rightCols(heads));
    }
    return merged.out();
  }

 private:
  void add_segment(Index position, Index local, Index rows) {
    if (rows == 0) return;
    if (!m_segments.empty()) {
      Segment& last = m_segments.back();
      if (last.position + last.rows == position && last.local + last.rows == local) {
        last.rows += rows;
        return;
      }
    }
    m_segments.push_back(Segment{position, local, rows});
  }

  MPI_Comm m_comm;
  Cache m_local;
  Index m_block;
  int m_rank = 0;
  Index m_size = 0;           // positions of the whole sequence
  std::vector<Index> m_rows;  // positions each rank holds
  std::vector<Segment> m_segments;
  Index m_block_end = 0;  // decoding: the current block's owner takes rows up to here
  int m_owner = 0;
};

}  // namespace attn::mpi
