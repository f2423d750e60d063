// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors
#pragma once

/// \file paged_kv_cache.hpp
/// attn::PagedKVCache: one pool of fixed-size pages holding the keys and values of many sequences
/// being decoded, each sequence a table of runs of rows in those pages. Sequences grow without
/// copying what they hold, share pages (a prompt stored once for many sequences), fork, reorder,
/// truncate and evict without copying a page that is not written afterwards.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

#include "detail/stored_matrix.hpp"
#include "error.hpp"
#include "paged_view.hpp"
#include "storage.hpp"
#include "types.hpp"

namespace attn {

/// Names a sequence of a PagedKVCache. A pool numbers its sequences 1, 2, 3, … in the order create
/// and fork make them, and never reuses an id (a dropped sequence's id stays unknown to it): the
/// pools of a model's layers, each created and forked in the same order, give a sequence the same
/// id in every layer.
using SequenceId = std::int64_t;

/// The keys and values of many sequences of one self-attention layer, in one pool of `pages`
/// pages of `page_size` positions each, preallocated: nothing is allocated per token, and a
/// sequence's rows never move once written.
///
/// Each sequence is a table of runs (PageRun): position ranges that lie in one page each. The
/// kernel reads keys(id) and values(id), PagedViews of that table, run by run: no copy into a
/// contiguous buffer. A page is shared by every sequence whose table names it (a reference count
/// per page); a page goes back to the pool when no table names it.
///
/// What copies and what does not:
///  - fork, reorder (beam search), truncate, evict and drop change tables and reference counts
///    only; no row is copied.
///  - append writes new rows into the sequence's last page when the sequence is its only user,
///    else it first copies that page's rows into a new page (copy-on-write; at most one page per
///    append, and only a partly filled one: a full last page is never copied, the rows go to a
///    new page). page_copies() counts these copies.
///
/// Positions: size(id) is the rows a sequence holds, the keys the kernel sees (m); position(id)
/// is how many rows it has been given in all (the absolute position of its next token). They
/// differ after evict, which keeps the first `sinks` and the last `window` rows (StreamingLLM's
/// attention sinks plus a recent window). SelfAttention caches keys after rotary embedding, at
/// their absolute positions, and rotates each new query at position(id): after an eviction the
/// distance from a new query to a window key is still its true distance, and to a sink its true,
/// larger one. (StreamingLLM caches keys before rotation and renumbers positions inside the
/// cache, so the sinks look adjacent to the window; window keys agree either way.) A mask sees
/// the size() rows held, bottom-right aligned as always: causal masking is unaffected, and a
/// score or mask function of key positions sees positions within what is held.
///
/// Page size: a power of two of at least 16. The default, 64, is the decode path's tile, so a tile
/// never ends early at a page boundary; a sequence wastes at most page_size − 1 rows, and a
/// copy-on-write copies at most page_size − 1 rows.
///
/// Errors leave the cache unchanged: CapacityError when the pool has too few free pages,
/// SequenceError for an unknown or dropped id, ShapeError for a bad shape, length or index.
/// Not synchronised: calls that change the cache must not overlap each other or a kernel call
/// reading one of its views; kernel calls reading views may run concurrently.
///
/// Example (examples/reference_layers.cpp, compiled and run as a test):
/// \snippet reference_layers.cpp paged_kv_cache
template <typename Scalar_, typename Storage_ = Scalar_>
class PagedKVCache {
  static_assert(detail::is_supported_scalar<Scalar_>,
                "attn::PagedKVCache: Scalar must be float or double");
  static_assert(detail::is_storage_for<Scalar_, Storage_>,
                "attn::PagedKVCache: Storage must be Scalar, or, for a float cache, "
                "attn::bfloat16, attn::half or attn::qint8");

 public:
  /// The type of the computations (float or double).
  using Scalar = Scalar_;
  /// The type keys and values are kept in.
  using Storage = Storage_;
  /// What a sequence's keys and values are read through.
  using View = PagedView<Storage>;
  /// Rows per page unless the constructor is told otherwise.
  static constexpr Index default_page_size = 64;

  /// \param pages     pages in the pool.
  /// \param key_width Hkv·head_dim, the width of a position's keys (and of its values).
  /// \param head_dim  width of one head (qint8 keeps one scale per head row); 0 means key_width.
  /// \param page_size positions per page: a power of two, at least 16.
  /// \throws ShapeError if pages or key_width is negative, head_dim does not divide key_width,
  ///         or page_size is not a power of two of at least 16.
  PagedKVCache(Index pages, Index key_width, Index head_dim = 0,
               Index page_size = default_page_size) {
    if (pages < 0) detail::throw_shape_error(name, ": pages is ", pages, ", expected >= 0");
    if (key_width < 0)
      detail::throw_shape_error(name, ": key_width is ", key_width, ", expected >= 0");
    if (page_size < 16 || (page_size & (page_size - 1)) != 0) {
      detail::throw_shape_error(name, ": page_size is ", page_size,
                                ", expected a power of two of at least 16");
    }
    if (head_dim == 0) head_dim = std::max<Index>(key_width, 1);
    if (head_dim < 0 || key_width % head_dim != 0) {
      detail::throw_shape_error(name, ": head_dim is ", head_dim,
                                ", expected a positive divisor of key_width ", key_width);
    }
    m_page_size = page_size;
    m_head_dim = head_dim;
    m_keys = detail::StoredMatrix<Scalar, Storage>(pages * page_size, key_width, head_dim);
    m_values = detail::StoredMatrix<Scalar, Storage>(pages * page_size, key_width, head_dim);
    m_references.assign(std::size_t(pages), 0);
    m_free.reserve(std::size_t(pages));
    for (Index page = pages; page-- > 0;)
      m_free.push_back(page);  // taken from the back: page 0 first
  }

  /// Positions per page.
  Index page_size() const { return m_page_size; }
  /// Pages in the pool.
  Index pages() const { return Index(m_references.size()); }
  /// Pages no sequence holds.
  Index free_pages() const { return Index(m_free.size()); }
  /// Pages some sequence holds (each counted once, however many share it).
  Index used_pages() const { return pages() - free_pages(); }
  /// Width of a position's keys and of its values (Hkv·head_dim).
  Index width() const { return m_keys.cols(); }
  /// Width of one head (a qint8 pool's group).
  Index head_dim() const { return m_head_dim; }
  /// Bytes of the pool's storage for keys and values, all pages.
  std::size_t bytes() const { return m_keys.bytes() + m_values.bytes(); }
  /// Bytes of one page (keys and values).
  std::size_t page_bytes() const { return pages() == 0 ? 0 : bytes() / std::size_t(pages()); }
  /// Bytes of the pages in use.
  std::size_t used_bytes() const { return page_bytes() * std::size_t(used_pages()); }
  /// Pages copied so far by copy-on-write (see the class comment).
  std::uint64_t page_copies() const { return m_page_copies; }

  /// How many sequences the cache holds.
  Index sequences() const { return Index(m_sequences.size()); }
  /// Whether `id` names a sequence the cache holds.
  bool contains(SequenceId id) const { return m_sequences.count(id) != 0; }

  /// A new, empty sequence.
  SequenceId create() {
    const SequenceId id = m_next_id;
    m_sequences.emplace(id, Sequence{});
    ++m_next_id;
    return id;
  }

  /// A new sequence holding what `id` holds, sharing its pages (no row is copied; the first append
  /// to either copies a shared, partly filled last page).
  /// \throws SequenceError if id is unknown.
  SequenceId fork(SequenceId id) {
    Sequence copy = sequence("PagedKVCache::fork", id);
    const SequenceId new_id = m_next_id;
    m_sequences.emplace(new_id, std::move(copy));
    ++m_next_id;
    reference(m_sequences.at(new_id).runs, +1);
    return new_id;
  }

  /// Forgets a sequence; pages no other sequence holds return to the pool.
  /// \throws SequenceError if id is unknown.
  void drop(SequenceId id) {
    Sequence& s = sequence("PagedKVCache::drop", id);
    std::vector<PageRun> runs = std::move(s.runs);
    m_sequences.erase(id);
    release(runs);
  }

  /// Rows `id` holds: the keys a kernel call on its views sees.
  /// \throws SequenceError if id is unknown.
  Index size(SequenceId id) const { return sequence("PagedKVCache::size", id).size; }
  /// Rows `id` has been given in all (size() plus what evict removed): the absolute position of
  /// its next row.
  /// \throws SequenceError if id is unknown.
  Index position(SequenceId id) const { return sequence("PagedKVCache::position", id).position; }

  /// The keys of `id`, size(id) × width(), read through its table (valid until the sequence or
  /// its table changes).
  /// \throws SequenceError if id is unknown.
  View keys(SequenceId id) const { return view(m_keys, sequence("PagedKVCache::keys", id)); }
  /// The values of `id`, size(id) × width().
  View values(SequenceId id) const { return view(m_values, sequence("PagedKVCache::values", id)); }

  /// Free pages appending `rows` rows to `id` takes (with the copy of a shared last page).
  /// \throws SequenceError if id is unknown.
  Index pages_needed(SequenceId id, Index rows) const {
    return plan_append(sequence("PagedKVCache::pages_needed", id), rows).pages;
  }

  /// Throws CapacityError, naming `who`, unless `rows` more rows fit `id`; SequenceError if id is
  /// unknown.
  void check_room(const char* who, SequenceId id, Index rows) const {
    const Index needed = plan_append(sequence(who, id), rows).pages;
    if (needed > free_pages()) {
      throw CapacityError(std::string(who) + ": appending " + std::to_string(rows) +
                          " rows to sequence " + std::to_string(id) + " needs " +
                          std::to_string(needed) + " free pages of " + std::to_string(page_size()) +
                          " positions, and the pool has " + std::to_string(free_pages()) + " of " +
                          std::to_string(pages()));
    }
  }

  /// Checks that appending the next lengths[b] rows of k and v (packed row-wise, sequence 0
  /// first) to ids[b], for every b, would succeed together (the pages of all of them fit the
  /// pool), without changing anything: what a batched call checks before its first append.
  /// \throws SequenceError if an id is unknown; ShapeError if ids and lengths differ in count, a
  ///         length is negative, they do not sum to k.rows(), an id appears twice, the shapes
  ///         differ from width() or a value does not fit Storage; CapacityError if the pool has
  ///         too few free pages for all of them. `who` begins every message.
  void check_appends(const char* who, const std::vector<SequenceId>& ids,
                     const std::vector<Index>& lengths, const ConstMatrixRef<Scalar>& k,
                     const ConstMatrixRef<Scalar>& v) const {
    if (k.cols() != width() || v.cols() != width() || v.rows() != k.rows()) {
      detail::throw_shape_error(who, ": k is ", detail::shape_string(k), " and v is ",
                                detail::shape_string(v), ", expected both rows x ", width());
    }
    if (lengths.size() != ids.size()) {
      detail::throw_shape_error(who, ": ", lengths.size(), " lengths and ", ids.size(),
                                " ids, expected one length per sequence");
    }
    Index total = 0;
    for (std::size_t b = 0; b < lengths.size(); ++b) {
      if (lengths[b] < 0)
        detail::throw_shape_error(who, ": lengths[", b, "] is ", lengths[b], ", expected >= 0");
      total += lengths[b];
    }
    if (total != k.rows()) {
      detail::throw_shape_error(who, ": lengths sum to ", total, ", expected the ", k.rows(),
                                " rows of k and v");
    }
    Index needed = 0;
    std::unordered_map<Index, Index> copied_by, own_in_batch;  // per shared last page
    for (std::size_t b = 0; b < ids.size(); ++b) {
      for (std::size_t c = 0; c < b; ++c) {
        if (ids[c] == ids[b]) {
          detail::throw_shape_error(who, ": ids[", c, "] and ids[", b, "] are both sequence ",
                                    ids[b], ", expected distinct ids");
        }
      }
      const Sequence& s = sequence(who, ids[b]);
      const AppendPlan plan = plan_append(s, lengths[b]);
      needed += plan.pages;
      if (plan.copy_last) {
        const Index page = s.runs.back().row / m_page_size;
        ++copied_by[page];
        own_in_batch[page] += own_runs(s, page);
      }
    }
    // A last page that only sequences of this batch name, once each: all but the last of them
    // copy it, and the last then writes in place (after beam search's reorder, several beams share
    // their parent's last page).
    for (const auto& [page, count] : copied_by) {
      if (count > 1 && own_in_batch[page] == count &&
          m_references[std::size_t(page)] == own_in_batch[page]) {
        --needed;
      }
    }
    if (needed > free_pages()) {
      throw CapacityError(std::string(who) + ": appending to " + std::to_string(ids.size()) +
                          " sequences needs " + std::to_string(needed) + " free pages, and the " +
                          "pool has " + std::to_string(free_pages()) + " of " +
                          std::to_string(pages()));
    }
    m_keys.check(who, "k", k);
    m_values.check(who, "v", v);
  }

  /// Appends the keys and values of new positions (rows) to `id`, rounding them to Storage.
  /// \throws SequenceError if id is unknown; CapacityError if the pool has too few free pages;
  ///         ShapeError if the shapes differ from each other or from width(), or if a value does
  ///         not fit Storage (see KVCache::append). The cache is then unchanged.
  template <typename DK, typename DV>
  void append(SequenceId id, const Eigen::MatrixBase<DK>& k, const Eigen::MatrixBase<DV>& v) {
    static_assert(
        std::is_same_v<typename DK::Scalar, Scalar> && std::is_same_v<typename DV::Scalar, Scalar>,
        "attn::PagedKVCache::append: keys and values must have the cache's Scalar");
    Sequence& s = sequence("PagedKVCache::append", id);
    if (k.cols() != width() || v.cols() != width() || v.rows() != k.rows()) {
      detail::throw_shape_error("PagedKVCache::append: k is ", detail::shape_string(k),
                                " and v is ", detail::shape_string(v), ", expected both rows x ",
                                width());
    }
    check_room("PagedKVCache::append", id, k.rows());
    const ConstMatrixRef<Scalar> k_ref(k), v_ref(v);
    m_keys.check("PagedKVCache::append", "k", k_ref);
    m_values.check("PagedKVCache::append", "v", v_ref);
    const AppendPlan plan = plan_append(s, k.rows());
    s.runs.reserve(s.runs.size() + std::size_t(plan.pages));  // the last call that may throw

    const Index n = k.rows(), page = m_page_size;
    if (plan.copy_last) {
      PageRun& last = s.runs.back();
      const Index fresh = take_page();
      m_keys.copy_rows(last.row, fresh * page, last.rows);
      m_values.copy_rows(last.row, fresh * page, last.rows);
      --m_references[std::size_t(last.row / page)];  // shared, so it stays held
      last.row = fresh * page;
      ++m_page_copies;
    }
    Index written = 0;
    if (!s.runs.empty()) {
      PageRun& last = s.runs.back();
      const Index room = room_after(last);
      written = std::min(n, room);
      write(last.row + last.rows, k_ref, v_ref, 0, written);
      last.rows += written;
    }
    while (written < n) {
      const Index rows = std::min(page, n - written);
      const Index fresh = take_page();
      write(fresh * page, k_ref, v_ref, written, rows);
      s.runs.push_back(PageRun{s.size + written, fresh * page, rows});
      written += rows;
    }
    s.size += n;
    s.position += n;
  }

  /// Keeps the first `length` rows of `id` (rejected draft tokens of speculative decoding):
  /// position(id) goes back by as many rows. No row is copied; pages the sequence no longer
  /// needs return to the pool if no other sequence holds them.
  /// \throws SequenceError if id is unknown, ShapeError unless 0 ≤ length ≤ size(id).
  void truncate(SequenceId id, Index length) {
    Sequence& s = sequence("PagedKVCache::truncate", id);
    if (length < 0 || length > s.size) {
      detail::throw_shape_error("PagedKVCache::truncate: length is ", length,
                                ", expected 0 <= length <= size ", s.size, " of sequence ", id);
    }
    std::vector<PageRun> kept = slice(s.runs, 0, length);
    const Index removed = s.size - length;
    replace_runs(s, std::move(kept));
    s.size = length;
    s.position -= removed;
  }

  /// Keeps the first `sinks` and the last `window` rows of `id` and forgets the rows between them
  /// (StreamingLLM's attention sinks and recent window); nothing happens when size(id) ≤
  /// sinks + window. position(id) stays (see the class comment on positions). No row is copied.
  /// \throws SequenceError if id is unknown, ShapeError if sinks or window is negative.
  void evict(SequenceId id, Index sinks, Index window) {
    Sequence& s = sequence("PagedKVCache::evict", id);
    if (sinks < 0 || window < 0) {
      detail::throw_shape_error("PagedKVCache::evict: sinks is ", sinks, " and window is ", window,
                                ", expected both >= 0");
    }
    if (s.size <= sinks + window) return;
    std::vector<PageRun> kept = slice(s.runs, 0, sinks);
    const std::vector<PageRun> recent = slice(s.runs, s.size - window, s.size);
    for (PageRun run : recent) {
      run.position += sinks;  // (slice starts the window at position 0)
      kept.push_back(run);
    }
    replace_runs(s, std::move(kept));
    s.size = sinks + window;
  }

  /// Beam search's reorder: sequence ids[i] becomes a copy of what ids[sources[i]] held before
  /// the call (a beam may be copied to several, or to none). Tables and reference counts only:
  /// no row is copied.
  /// \throws SequenceError if an id is unknown; ShapeError if ids and sources differ in length,
  ///         an id appears twice, or a source is outside [0, ids.size()).
  void reorder(const std::vector<SequenceId>& ids, const std::vector<Index>& sources) {
    if (ids.size() != sources.size()) {
      detail::throw_shape_error("PagedKVCache::reorder: ", ids.size(), " ids and ", sources.size(),
                                " sources, expected as many sources as ids");
    }
    const Index count = Index(ids.size());
    for (Index i = 0; i < count; ++i) {
      sequence("PagedKVCache::reorder", ids[std::size_t(i)]);
      if (sources[std::size_t(i)] < 0 || sources[std::size_t(i)] >= count) {
        detail::throw_shape_error("PagedKVCache::reorder: sources[", i, "] is ",
                                  sources[std::size_t(i)], ", expected an index in [0, ", count,
                                  ")");
      }
      for (Index j = 0; j < i; ++j) {
        if (ids[std::size_t(j)] == ids[std::size_t(i)]) {
          detail::throw_shape_error("PagedKVCache::reorder: ids[", j, "] and ids[", i,
                                    "] are both sequence ", ids[std::size_t(i)],
                                    ", expected distinct ids");
        }
      }
    }
    std::vector<Sequence> before;
    before.reserve(ids.size());
    for (const SequenceId id : ids)
      before.push_back(m_sequences.at(id));
    for (Index i = 0; i < count; ++i)
      reference(before[std::size_t(sources[std::size_t(i)])].runs, +1);
    for (Index i = 0; i < count; ++i) {
      Sequence& s = m_sequences.at(ids[std::size_t(i)]);
      release(s.runs);
      s = before[std::size_t(sources[std::size_t(i)])];
    }
  }

 private:
  struct Sequence {
    std::vector<PageRun> runs;  // in position order, none empty, each inside one page
    Index size = 0;
    Index position = 0;
  };
  struct AppendPlan {
    Index pages;     // free pages taken
    bool copy_last;  // whether the last page is copied first (shared and not full)
  };

  const Sequence& sequence(const char* who, SequenceId id) const {
    const auto found = m_sequences.find(id);
    if (found == m_sequences.end()) {
      throw SequenceError(std::string(who) + ": sequence " + std::to_string(id) +
                          " is not in this PagedKVCache (never created, or dropped)");
    }
    return found->second;
  }
  Sequence& sequence(const char* who, SequenceId id) {
    return const_cast<Sequence&>(std::as_const(*this).sequence(who, id));
  }

  /// Rows free in `run`'s page after the run's last row.
  Index room_after(const PageRun& run) const {
    const Index used = (run.row + run.rows) % m_page_size;  // 0: the run fills its page's end
    return used == 0 ? 0 : m_page_size - used;
  }

  /// Runs of s in `page`; 0 if one of them lies after s's last run there (appending in place
  /// would then overwrite it: never the case for tables this class makes, but cheap to rule out).
  Index own_runs(const Sequence& s, Index page) const {
    const PageRun& last = s.runs.back();
    Index own = 0;
    for (const PageRun& run : s.runs) {
      if (run.row / m_page_size != page) continue;
      if (run.row + run.rows > last.row + last.rows) return 0;
      ++own;
    }
    return own;
  }

  AppendPlan plan_append(const Sequence& s, Index rows) const {
    if (rows <= 0) return {0, false};
    Index room = 0;
    bool copy_last = false;
    if (!s.runs.empty()) {
      const PageRun& last = s.runs.back();
      room = room_after(last);
      // Written in place only when no other table names the page (a sequence may name it twice:
      // its sinks and its window after an eviction).
      const Index page = last.row / m_page_size;
      if (room > 0 && m_references[std::size_t(page)] > own_runs(s, page)) {
        copy_last = true;
        room = m_page_size - last.rows;
      }
    }
    const Index rest = std::max<Index>(0, rows - room);
    return {(copy_last ? 1 : 0) + (rest + m_page_size - 1) / m_page_size, copy_last};
  }

  Index take_page() {
    const Index page = m_free.back();
    m_free.pop_back();
    m_references[std::size_t(page)] = 1;
    return page;
  }

  void write(Index row, const ConstMatrixRef<Scalar>& k, const ConstMatrixRef<Scalar>& v,
             Index first, Index rows) {
    if (rows == 0) return;
    m_keys.assign_rows(row, k.middleRows(first, rows));
    m_values.assign_rows(row, v.middleRows(first, rows));
  }

  /// The runs of positions [begin, end), re-based to start at position 0.
  static std::vector<PageRun> slice(const std::vector<PageRun>& runs, Index begin, Index end) {
    std::vector<PageRun> out;
    for (const PageRun& run : runs) {
      const Index first = std::max(begin, run.position);
      const Index last = std::min(end, run.position + run.rows);
      if (first >= last) continue;
      out.push_back(PageRun{first - begin, run.row + (first - run.position), last - first});
    }
    return out;
  }

  void reference(const std::vector<PageRun>& runs, int delta) {
    for (const PageRun& run : runs)
      m_references[std::size_t(run.row / m_page_size)] += delta;
  }
  /// Drops one reference per run; pages left without one return to the pool.
  void release(const std::vector<PageRun>& runs) {
    for (const PageRun& run : runs) {
      const Index page = run.row / m_page_size;
      if (--m_references[std::size_t(page)] == 0) m_free.push_back(page);
    }
  }
  void replace_runs(Sequence& s, std::vector<PageRun> runs) {
    reference(runs, +1);
    release(s.runs);
    s.runs = std::move(runs);
  }

  View view(const detail::StoredMatrix<Scalar, Storage>& rows, const Sequence& s) const {
    return View(rows.view(rows.rows()), s.runs.data(), Index(s.runs.size()));
  }

  static constexpr const char* name = "PagedKVCache";
  Index m_page_size = default_page_size;
  Index m_head_dim = 1;
  detail::StoredMatrix<Scalar, Storage> m_keys;  // pages·page_size × width; page p: rows p·P…
  detail::StoredMatrix<Scalar, Storage> m_values;
  std::vector<std::int32_t> m_references;  // per page: the runs of all tables that name it
  std::vector<Index> m_free;               // pages no run names
  std::unordered_map<SequenceId, Sequence> m_sequences;
  SequenceId m_next_id = 1;
  std::uint64_t m_page_copies = 0;
};

}  // namespace attn
