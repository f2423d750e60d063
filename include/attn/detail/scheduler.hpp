// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors
#pragma once

/// \file detail/scheduler.hpp
/// The kernel's entry: cuts one attention problem into work items, runs them on the executor's
/// workers with scratch from the workspace, and merges split decodes in a fixed order. Prefill
/// items are (head, query block); a decode (all queries in one block narrower than a packet) is
/// split over the keys instead, so that even one head spreads over the workers.

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <memory>
#include <optional>

#include "../mask.hpp"
#include "../parallel.hpp"
#include "../types.hpp"
#include "../workspace.hpp"
#include "attention_problem.hpp"
#include "decode.hpp"
#include "kernel_scratch.hpp"
#include "online_softmax.hpp"
#include "prefill.hpp"
#include "tile_mask.hpp"
#include "tile_traits.hpp"

namespace attn::detail {

/// Keys per split when decoding over many keys: each split returns partial results with their
/// log-sum-exps, merged afterwards in split order. The split depends only on the shape, never on
/// the number of workers, so results are bitwise identical for any executor.
inline constexpr Index decode_split_keys = 512;

/// Bytes of Workspace::shared that a decode of `queries` rows over up to `keys` keys needs for
/// its splits' partial results (0 without splits). A caller that knows the largest key count it
/// will see (a KVCache's capacity) reserves them once, so that the growing cache never makes a
/// later step allocate.
template <typename Scalar>
std::size_t decode_partial_bytes(Index keys, Index heads, Index queries, Index value_dim) {
  const Index splits = std::max<Index>(1, keys / decode_split_keys);
  if (splits == 1) return 0;
  return sizeof(Scalar) * std::size_t(splits * heads * queries * (value_dim + 1));
}

/// Query block t of `count` in an order where consecutive pairs carry equal work under a causal
/// mask (0, last, 1, last − 1, ...).
inline Index balanced_block(Index t, Index count) {
  return t % 2 == 0 ? t / 2 : count - 1 - t / 2;
}

/// One call of the kernel: the problem, its work items and the counters the workers share.
template <typename Problem, typename SM>
class AttentionSchedule {
  using Scalar = typename Problem::Scalar;

 public:
  AttentionSchedule(const Problem& p, const SM& mask, Workspace& workspace)
      : m_p(p),
        m_mask(mask, p.q.rows(), p.k.rows(), p.num_heads, p.first_query_position,
               p.first_key_position, p.first_head),
        m_out(MatrixView<Scalar>(p.out).data()),
        m_workspace(workspace),
        m_blocks(BlockSizes::of<Scalar>(p.head_dim, p.value_dim)),
        m_decoding(p.q.rows() < PacketTraits<Scalar>::size && p.weights == nullptr) {
    const Index n = p.q.rows();
    if (m_decoding) {
      // The keys any head's queries see.
      m_keys_begin = p.k.rows();
      for (Index h = 0; h < p.num_heads; ++h) {
        const auto [begin, end] = m_mask.key_range(h, 0, n);
        if (begin == end) continue;
        m_keys_begin = std::min(m_keys_begin, begin);
        m_keys_end = std::max(m_keys_end, end);
      }
      m_keys_begin = std::min(m_keys_begin, m_keys_end);
      m_items = std::max<Index>(1, (m_keys_end - m_keys_begin) / decode_split_keys);
    } else {
      m_query_blocks = (n + m_blocks.query_rows - 1) / m_blocks.query_rows;
      m_items = p.num_heads * m_query_blocks;
    }
  }
  AttentionSchedule(const AttentionSchedule&) = delete;
  AttentionSchedule& operator=(const AttentionSchedule&) = delete;

  /// Work items: key splits when decoding, else (head, query block) pairs.
  Index items() const { return m_items; }

  /// Bytes of the split decode's partial results (0 without splits), which use_partials must
  /// give before work starts.
  std::size_t partial_bytes() const {
    if (!m_decoding || m_items == 1) return 0;
    return sizeof(Scalar) *
           std::size_t(m_items * m_p.num_heads * m_p.q.rows() * (m_p.value_dim + 1));
  }
  /// Where the partial results go: partial_bytes() of memory that outlives finish().
  void use_partials(void* memory) {
    if (partial_bytes() == 0) return;
    m_partial_out = static_cast<Scalar*>(memory);
    m_partial_lse = m_partial_out + m_items * m_p.num_heads * m_p.q.rows() * m_p.value_dim;
  }

  /// One worker, computing in the workspace's scratch slot `slot`: takes items until none are
  /// left. Several run at once, each with its own slot; which worker computes an item never
  /// changes its result.
  void work(Index slot) {
    if (m_decoding) {
      decode_splits(slot);
    } else {
      query_blocks(slot);
    }
  }

  /// After every worker is done: merges the decode's key splits, in split order.
  void finish() {
    if (!m_decoding || m_items == 1) return;
    const Index n = m_p.q.rows(), dv = m_p.value_dim;
    const Index part_stride = m_p.num_heads * n;  // from split s to s + 1, in rows
    for (Index h = 0; h < m_p.num_heads; ++h) {
      for (Index r = 0; r < n; ++r) {
        const Index first = h * n + r;
        const BlockOutput<Scalar> dst = output(h, r);
        merge_rows(m_items, m_partial_out + first * dv, part_stride * dv, m_partial_lse + first,
                   part_stride, dv, dst.out, dst.lse);
      }
    }
  }

 private:
  BlockOutput<Scalar> output(Index h, Index i0) const {
    const Index stride = m_p.out.outerStride();
    return {m_out + i0 * stride + h * m_p.value_dim, stride,
            m_p.lse == nullptr ? nullptr : m_p.lse + i0 * m_p.lse_stride + h, m_p.lse_stride};
  }

  /// The next `group` items, [first, last), to whichever worker asks first; false when none are
  /// left. Workers take items until there are none rather than a fixed share, so a worker the
  /// machine slows down (another tenant on the core, a lower clock) does less instead of making
  /// the others wait.
  bool take(Index group, Index& first, Index& last) {
    first = m_next_item.fetch_add(group);
    if (first >= m_items) return false;
    last = std::min(m_items, first + group);
    return true;
  }

  /// Key rows all query blocks of head h read together (their key ranges' lengths).
  double keys_read_by_head(Index h) const {
    double keys = 0;
    const Index n = m_p.q.rows(), block_rows = m_blocks.query_rows;
    for (Index i0 = 0; i0 < n; i0 += block_rows) {
      const auto [begin, end] = m_mask.key_range(h, i0, std::min(n, i0 + block_rows));
      keys += double(end - begin);
    }
    return keys;
  }

  Index split_begin(Index s) const {
    return m_keys_begin + (m_keys_end - m_keys_begin) * s / m_items;
  }

  void decode_splits(Index slot) {
    const Index n = m_p.q.rows(), heads = m_p.num_heads;
    Index first = 0, last = 0;
    if (!take(1, first, last)) return;
    const ScratchShape shape{m_blocks, m_p.head_dim, m_p.value_dim, heads * n, 0, 0};
    with_scratch<Scalar>(m_workspace, slot, shape, [&](KernelScratch<Scalar>& scratch) {
      do {
        const Index split = first;
        const DecodeState<Scalar> state{scratch, 0, heads, n};
        attend_decode(m_p, m_mask, state, 0, split_begin(split), split_begin(split + 1),
                      [&](Index h) {
                        if (m_items == 1) return output(h, 0);
                        const Index part = (split * heads + h) * n;
                        return BlockOutput<Scalar>{m_partial_out + part * m_p.value_dim,
                                                   m_p.value_dim, m_partial_lse + part, 1};
                      });
      } while (take(1, first, last));
    });
  }

  /// Items are (head, query block in balanced order), taken four at a time: an even number keeps
  /// the balanced pairs together, and a worker's consecutive takes mostly stay in one head, so
  /// it packs that head's K/V once.
  void query_blocks(Index slot) {
    constexpr Index items_per_take = 4;
    Index first = 0, last = 0;
    if (!take(items_per_take, first, last)) return;
    const bool pack = should_pack_heads(m_p, m_blocks, keys_read_by_head(0));
    const ScratchShape shape{m_blocks,
                             m_p.head_dim,
                             m_p.value_dim,
                             PacketTraits<Scalar>::size,
                             pack ? m_p.k.rows() : 0,
                             Problem::kv_in_scalar ? 0 : m_blocks.key_rows};
    with_scratch<Scalar>(m_workspace, slot, shape, [&](KernelScratch<Scalar>& scratch) {
      const Index n = m_p.q.rows();
      const Index block_rows = m_blocks.query_rows;
      do {
        for (Index item = first; item < last; ++item) {
          const Index i0 = balanced_block(item % m_query_blocks, m_query_blocks) * block_rows;
          const Index rows = std::min(block_rows, n - i0);
          const Index head = item / m_query_blocks;
          const auto [keys_begin, keys_end] = m_mask.key_range(head, i0, i0 + rows);
          const QueryBlock b{head, i0, rows, keys_begin, keys_end};
          attend_query_block(m_p, m_mask, scratch, b,
                             head_key_values(m_p, scratch, m_p.kv_head(b.head), pack),
                             output(b.head, i0));
        }
      } while (take(items_per_take, first, last));
    });
  }

  const Problem& m_p;
  const TileMask<Scalar, SM> m_mask;
  Scalar* m_out;  // the problem's output (p is const; the storage it points to is not)
  Workspace& m_workspace;
  const BlockSizes m_blocks;
  const bool m_decoding;
  Index m_items = 0;
  Index m_query_blocks = 0;
  Index m_keys_begin = 0, m_keys_end = 0;  // decoding: the keys any query sees
  Scalar* m_partial_out = nullptr;         // split s, head h, row r at ((s·H + h)·n + r)·dv
  Scalar* m_partial_lse = nullptr;         // at (s·H + h)·n + r
  std::atomic<Index> m_next_item{0};
};

/// Runs problems over the executor's workers, with scratch from `workspace` (or a workspace of
/// its own): one problem, or a batch of them (sequences of different lengths) as one parallel
/// run. Each call of the executor's work function is one worker with a scratch slot of its own;
/// it works through the problems in order, taking items of each until none are left, so the
/// workers spread over the items of all problems. Each problem's items, and the merge of its
/// splits, are exactly those of a run of it alone: the results are bitwise the same.
template <typename Problem, typename SM>
void run_attention_batch(const Problem* problems, std::size_t count, const SM& mask,
                         const Executor& executor, Workspace* workspace = nullptr) {
  using Schedule = AttentionSchedule<Problem, SM>;
  Workspace own_workspace;
  Workspace& memory = workspace != nullptr ? *workspace : own_workspace;
  // One schedule per problem with queries, in storage that never moves (schedules hold atomics).
  std::size_t active = 0;
  for (std::size_t b = 0; b < count; ++b)
    active += problems[b].q.rows() > 0 ? 1 : 0;
  if (active == 0) return;
  std::optional<Schedule> single;
  std::unique_ptr<std::optional<Schedule>[]> many;
  std::optional<Schedule>* schedules = &single;
  if (active > 1) {
    many.reset(new std::optional<Schedule>[active]);
    schedules = many.get();
  }
  std::size_t bytes = 0;
  Index items = 0;
  for (std::size_t b = 0, a = 0; b < count; ++b) {
    if (problems[b].q.rows() == 0) continue;
    schedules[a].emplace(problems[b], mask, memory);
    bytes += schedules[a]->partial_bytes();
    items += schedules[a]->items();
    ++a;
  }
  // The split decodes' partial results, each schedule's after the one before.
  char* partials = static_cast<char*>(bytes > 0 ? memory.shared(bytes) : nullptr);
  for (std::size_t a = 0; a < active; ++a) {
    schedules[a]->use_partials(partials);
    partials += schedules[a]->partial_bytes();
  }
  struct Workers {
    std::optional<Schedule>* schedules;
    std::size_t count;
    std::atomic<Index> next_slot{0};
  } workers{schedules, active};
  // One pointer, so that the RangeFunction holding the lambda stays within std::function's small
  // buffer (no allocation per call).
  Workers* const w = &workers;
  parallel_for(
      items,
      [w](Index, Index) {
        const Index slot = w->next_slot++;
        for (std::size_t a = 0; a < w->count; ++a)
          (*w->schedules[a]).work(slot);
      },
      executor);
  for (std::size_t a = 0; a < active; ++a)
    schedules[a]->finish();
}

/// Runs the whole problem over the executor's workers, with scratch from `workspace` (or a
/// workspace of its own). Each call of the executor's work function is one worker.
template <typename Problem, typename SM>
void run_attention(const Problem& p, const SM& mask, const Executor& executor,
                   Workspace* workspace = nullptr) {
  run_attention_batch(&p, 1, mask, executor, workspace);
}

}  // namespace attn::detail
