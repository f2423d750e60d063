// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors
#pragma once

/// \file mpi/sequence_parallel.hpp
/// attn::mpi::scaled_dot_product_attention: attention over a sequence whose rows are split across
/// the ranks of an MPI communicator, equal to one process's attention over the whole sequence.

#include <mpi.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <cstring>
#include <vector>

#include "../partial_attention.hpp"
#include "../scaled_dot_product.hpp"
#include "detail/collective.hpp"
#include "detail/row_parts.hpp"
#include "layout.hpp"

namespace attn::mpi {

/// How the ranks share the work of a sequence-parallel call (see scaled_dot_product_attention).
enum class Schedule {
  /// Keys and values pass around the ring of ranks, one shard per step, each sent with a
  /// non-blocking send while the rank attends over the shard it holds; the parts merge by
  /// log-sum-exp. Each rank keeps one shard and receives one: memory per rank O((n + m)/R).
  ring,
  /// Every rank gathers all keys and values once (MPI_Allgatherv), then attends its queries over
  /// them in one kernel call per segment: one collective, no merge, memory O(m) per rank. Better
  /// for short sequences or few ranks.
  all_gather,
  /// DeepSpeed-Ulysses: an all-to-all turns sequence shards into head shards (each rank gets
  /// H / R heads of the whole sequence), one kernel call per rank, and a second all-to-all turns
  /// the result back. Needs H divisible by R. Grouped-query K/V: each rank receives the kv heads
  /// its query heads read, so when Hkv < R a kv head goes to several ranks.
  head_scatter,
};

/// Options of a sequence-parallel call beyond the kernel's.
///
/// Example (examples/reference_mpi.cpp, compiled and run as a test):
/// \snippet reference_mpi.cpp sequence_parallel
struct ParallelOptions {
  /// How keys and values reach the ranks that need them (see Schedule).
  Schedule schedule = Schedule::ring;
  /// How the query rows and the key/value rows are spread over the ranks (both the same way).
  Layout layout = Layout::contiguous;
  /// Out, optional: this rank's bytes sent, messages, waiting and compute time (added to).
  Traffic* traffic = nullptr;
};

namespace detail {

/// The fields of the agreement of a sequence-parallel call.
enum Field : std::size_t {
  q_rows,
  q_cols,
  k_rows,
  k_cols,
  v_rows,
  v_cols,
  out_rows,
  out_cols,
  heads,
  kv_heads,
  schedule,
  layout,
  mask_left,
  mask_right,
  mask_key_length,
  mask_explicit,
  scale_bits,
  softcap_bits,
  field_count
};

inline std::int64_t bits_of(double x) {
  std::int64_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  return bits;
}

/// What every rank knows of the call once it has been agreed on.
struct SplitProblem {
  int rank = 0;
  int ranks = 1;
  Index heads = 1, kv_heads = 1, head_dim = 0, value_dim = 0;
  Index queries = 0, keys = 0;              // N and M, the whole sequence's
  std::vector<Index> query_rows, key_rows;  // per rank
  std::vector<std::vector<Segment>> query_segments, key_segments;
  /// The position of query row i of the whole sequence: i + M − N (bottom-right alignment).
  Index query_position(Index row) const { return row + keys - queries; }
};

/// Gathers every rank's shapes and options and checks them the same way on every rank.
template <typename Scalar, typename SM>
SplitProblem agree(MPI_Comm comm, const char* who, Index q_rows_, Index q_cols_, Index k_rows_,
                   Index k_cols_, Index v_rows_, Index v_cols_, Index out_rows_, Index out_cols_,
                   const SM& mask, const AttentionOptions& options,
                   const ParallelOptions& parallel) {
  const Mask& base = mask.base();
  const std::vector<std::int64_t> mine = {q_rows_,
                                          q_cols_,
                                          k_rows_,
                                          k_cols_,
                                          v_rows_,
                                          v_cols_,
                                          out_rows_,
                                          out_cols_,
                                          options.num_heads,
                                          options.kv_heads(),
                                          std::int64_t(parallel.schedule),
                                          std::int64_t(parallel.layout),
                                          base.left(),
                                          base.right(),
                                          base.has_key_length() ? base.visible_keys() : -1,
                                          base.has_explicit() ? 1 : 0,
                                          options.scale ? bits_of(*options.scale) : 0,
                                          bits_of(options.softcap)};
  const Agreement table(comm, who, mine, parallel.traffic);
  const char* names[] = {"q.cols()",
                         "k.cols()",
                         "v.cols()",
                         "out.cols()",
                         "num_heads",
                         "num_kv_heads",
                         "schedule",
                         "layout",
                         "the mask's left reach",
                         "the mask's right reach",
                         "the mask's key_length",
                         "the mask's explicit part",
                         "scale",
                         "softcap"};
  const std::size_t same[] = {q_cols,          k_cols,        v_cols,     out_cols,    heads,
                              kv_heads,        schedule,      layout,     mask_left,   mask_right,
                              mask_key_length, mask_explicit, scale_bits, softcap_bits};
  for (std::size_t f = 0; f < sizeof(same) / sizeof(same[0]); ++f)
    table.require_same(same[f], names[f]);

  SplitProblem p;
  p.rank = comm_rank(comm);
  p.ranks = table.ranks();
  p.query_rows = table.column(q_rows);
  p.key_rows = table.column(k_rows);
  p.queries = table.sum(q_rows);
  p.keys = table.sum(k_rows);
  for (int r = 0; r < p.ranks; ++r) {
    if (table.at(r, v_rows) != table.at(r, k_rows)) {
      table.fail("rank ", r, " has v with ", table.at(r, v_rows), " rows and k with ",
                 table.at(r, k_rows), ", expected v.rows() = k.rows()");
    }
    if (table.at(r, out_rows) != table.at(r, q_rows)) {
      table.fail("rank ", r, " has out with ", table.at(r, out_rows), " rows and q with ",
                 table.at(r, q_rows), ", expected out.rows() = q.rows()");
    }
  }
  p.heads = Index(table.at(0, heads));
  p.kv_heads = Index(table.at(0, kv_heads));
  if (p.heads < 1 || p.kv_heads < 1 || p.heads % p.kv_heads != 0) {
    table.fail("num_heads ", p.heads, " and num_kv_heads ", p.kv_heads,
               ", expected num_kv_heads >= 1 dividing num_heads");
  }
  const Index qc = Index(table.at(0, q_cols)), kc = Index(table.at(0, k_cols));
  const Index vc = Index(table.at(0, v_cols)), oc = Index(table.at(0, out_cols));
  if (qc % p.heads != 0 || kc != p.kv_heads * (qc / p.heads) || vc % p.kv_heads != 0 ||
      oc != p.heads * (vc / p.kv_heads)) {
    table.fail("q has ", qc, " columns, k ", kc, ", v ", vc, " and out ", oc, " for ", p.heads,
               " heads over ", p.kv_heads,
               " kv heads, expected q: heads*d, k: kv_heads*d, v: kv_heads*dv, out: heads*dv");
  }
  p.head_dim = qc / p.heads;
  p.value_dim = vc / p.kv_heads;
  if (table.at(0, mask_explicit) != 0) {
    table.fail(
        "an explicit keep/bias mask describes one shard's rows, expected a structured "
        "mask or mask and score functions of positions (which see the whole sequence's "
        "positions)");
  }
  if (base.has_key_length() && base.visible_keys() > p.keys) {
    table.fail("mask key_length is ", base.visible_keys(), ", expected <= the ", p.keys,
               " keys of the whole sequence");
  }
  if (parallel.layout == Layout::zigzag) {
    for (int r = 0; r < p.ranks; ++r) {
      const Index want_q = shard_rows(Layout::zigzag, p.queries, p.ranks, r);
      const Index want_k = shard_rows(Layout::zigzag, p.keys, p.ranks, r);
      if (p.query_rows[std::size_t(r)] != want_q || p.key_rows[std::size_t(r)] != want_k) {
        table.fail("rank ", r, " holds ", p.query_rows[std::size_t(r)], " query rows and ",
                   p.key_rows[std::size_t(r)], " key rows, expected ", want_q, " and ", want_k,
                   " (the zigzag shard of ", p.queries, " and ", p.keys, " rows over ", p.ranks,
                   " ranks, see shard_segments)");
      }
    }
  }
  if (parallel.schedule == Schedule::head_scatter && p.heads % p.ranks != 0) {
    table.fail("head_scatter needs num_heads divisible by the ", p.ranks,
               " ranks of the communicator, but num_heads is ", p.heads,
               "; use Schedule::ring or Schedule::all_gather");
  }
  // MPI counts are ints: the largest message must fit one.
  const Index widest = std::max(qc, kc + vc);
  for (int r = 0; r < p.ranks; ++r) {
    const Index rows = std::max(p.query_rows[std::size_t(r)], p.key_rows[std::size_t(r)]);
    if (double(rows) * double(widest) * double(p.ranks) > double(INT_MAX)) {
      table.fail("rank ", r, " holds ", rows, " rows of ", widest,
                 " values, beyond what one MPI message counts (INT_MAX elements)");
    }
  }
  if (options.positions) {
    table.fail("options.positions is set, expected it empty: the call places each shard itself");
  }
  // The kernel's own checks of the mask and options, for the whole sequence's shape: the same on
  // every rank (the same types and, as checked above, the same values).
  AttentionOptions whole = options;
  whole.positions = Positions{0, 0, 0};
  attn::detail::check_mask_and_options<Scalar>(who, p.queries, p.keys, p.head_dim, mask, whole);
  p.query_segments = all_segments(parallel.layout, p.query_rows);
  p.key_segments = all_segments(parallel.layout, p.key_rows);
  return p;
}

/// Elements of a buffer for `count`: at least one, so that views into it (even of no rows) never
/// offset a null pointer.
inline std::size_t buffer_size(Index count) {
  return std::size_t(std::max<Index>(count, 1));
}

/// Rows of k and v side by side, [k row | v row], as one contiguous buffer to send.
template <typename Scalar>
void pack_key_values(const ConstMatrixRef<Scalar>& k, const ConstMatrixRef<Scalar>& v,
                     Scalar* buffer) {
  if (k.rows() == 0) return;  // k and v may be null
  const Index width = k.cols() + v.cols();
  MatrixView<Scalar> packed(buffer, k.rows(), width, Eigen::OuterStride<>(width));
  packed.leftCols(k.cols()) = k;
  packed.rightCols(v.cols()) = v;
}

/// Attention of query segment `qs` of this rank over `rows` packed key/value rows at `packed`
/// (standing at key positions from key_position), merged into `parts`.
template <typename Scalar, typename SM>
void attend_part(const SplitProblem& p, const ConstMatrixRef<Scalar>& q, const Segment& qs,
                 const Scalar* packed, Index rows, Index key_width, Index value_width,
                 Index key_position, const SM& mask, AttentionOptions options,
                 RowParts<Scalar>& parts, Matrix<Scalar>& part_out, Matrix<Scalar>& part_lse) {
  const Index width = key_width + value_width;
  const ConstMatrixView<Scalar> k(packed, rows, key_width, Eigen::OuterStride<>(width));
  const ConstMatrixView<Scalar> v(packed + key_width, rows, value_width,
                                  Eigen::OuterStride<>(width));
  options.positions = Positions{p.query_position(qs.position), key_position, 0};
  AttentionExtras<Scalar> extras;
  extras.log_sum_exp = &part_lse;
  part_out.resize(qs.rows, p.heads * p.value_dim);
  scaled_dot_product_attention_into(q.middleRows(qs.local, qs.rows), k, v, part_out, mask, options,
                                    extras);
  parts.merge(qs.local, part_out, part_lse);
}

inline void wait_all(int count, MPI_Request* requests, Traffic* traffic) {
  const Stopwatch clock;
  check_mpi(MPI_Waitall(count, requests, MPI_STATUSES_IGNORE), "MPI_Waitall");
  if (traffic != nullptr) traffic->wait_seconds += clock.seconds();
}

/// The tag of the ring's messages (calls on one communicator are collective and in order, so
/// one tag serves them all).
inline constexpr int ring_tag = 0x4174;

template <typename Scalar, typename SM>
void ring(MPI_Comm comm, const SplitProblem& p, const ConstMatrixRef<Scalar>& q,
          const ConstMatrixRef<Scalar>& k, const ConstMatrixRef<Scalar>& v, MatrixRef<Scalar> out,
          const SM& mask, const AttentionOptions& options, Traffic* traffic) {
  const Index kc = k.cols(), vc = v.cols(), width = kc + vc;
  const Index most = *std::max_element(p.key_rows.begin(), p.key_rows.end());
  std::vector<Scalar> buffers[2] = {std::vector<Scalar>(buffer_size(most * width)),
                                    std::vector<Scalar>(buffer_size(most * width))};
  pack_key_values(k, v, buffers[0].data());
  RowParts<Scalar> parts(q.rows(), p.heads, p.value_dim);
  Matrix<Scalar> part_out, part_lse;
  const int next = (p.rank + 1) % p.ranks, previous = (p.rank + p.ranks - 1) % p.ranks;
  int at_hand = 0;
  for (int step = 0; step < p.ranks; ++step) {
    const int source = (p.rank - step + p.ranks) % p.ranks;  // whose shard is at hand
    MPI_Request requests[2];
    int pending = 0;
    if (step + 1 < p.ranks) {
      // Pass the shard at hand on, and take the one before it, while attending over this one.
      const int incoming = (source + p.ranks - 1) % p.ranks;
      const Index send_count = p.key_rows[std::size_t(source)] * width;
      check_mpi(
          MPI_Irecv(buffers[1 - at_hand].data(), int(p.key_rows[std::size_t(incoming)] * width),
                    datatype<Scalar>(), previous, ring_tag, comm, &requests[pending++]),
          "MPI_Irecv");
      check_mpi(MPI_Isend(buffers[at_hand].data(), int(send_count), datatype<Scalar>(), next,
                          ring_tag, comm, &requests[pending++]),
                "MPI_Isend");
      if (traffic != nullptr) {
        traffic->bytes_sent += double(send_count) * double(sizeof(Scalar));
        traffic->messages += 1;
      }
    }
    const Stopwatch clock;
    for (const Segment& qs : p.query_segments[std::size_t(p.rank)]) {
      for (const Segment& ks : p.key_segments[std::size_t(source)]) {
        if (!may_see(mask.base(), p.query_position(qs.position),
                     p.query_position(qs.position + qs.rows), ks.position, ks.position + ks.rows)) {
          continue;
        }
        attend_part(p, q, qs, buffers[at_hand].data() + ks.local * width, ks.rows, kc, vc,
                    ks.position, mask, options, parts, part_out, part_lse);
      }
    }
    if (traffic != nullptr) traffic->compute_seconds += clock.seconds();
    wait_all(pending, requests, traffic);
    at_hand = 1 - at_hand;
  }
  out = parts.out();
}

template <typename Scalar, typename SM>
void all_gather(MPI_Comm comm, const SplitProblem& p, const ConstMatrixRef<Scalar>& q,
                const ConstMatrixRef<Scalar>& k, const ConstMatrixRef<Scalar>& v,
                MatrixRef<Scalar> out, const SM& mask, AttentionOptions options, Layout layout,
                Traffic* traffic) {
  const Index kc = k.cols(), vc = v.cols(), width = kc + vc;
  std::vector<Scalar> mine(buffer_size(k.rows() * width));
  pack_key_values(k, v, mine.data());
  std::vector<int> counts(static_cast<std::size_t>(p.ranks)), displacements(std::size_t(p.ranks));
  for (int r = 0, offset = 0; r < p.ranks; ++r) {
    counts[std::size_t(r)] = int(p.key_rows[std::size_t(r)] * width);
    displacements[std::size_t(r)] = offset;
    offset += counts[std::size_t(r)];
  }
  std::vector<Scalar> gathered(buffer_size(p.keys * width));
  {
    const Stopwatch clock;
    check_mpi(MPI_Allgatherv(mine.data(), counts[std::size_t(p.rank)], datatype<Scalar>(),
                             gathered.data(), counts.data(), displacements.data(),
                             datatype<Scalar>(), comm),
              "MPI_Allgatherv");
    if (traffic != nullptr) {
      traffic->wait_seconds += clock.seconds();
      traffic->bytes_sent +=
          double(counts[std::size_t(p.rank)]) * double(sizeof(Scalar)) * double(p.ranks - 1);
      traffic->messages += 1;
    }
  }
  const Stopwatch clock;
  if (layout == Layout::zigzag) {
    // Rank order is not position order: put every segment where it stands.
    std::vector<Scalar> ordered(gathered.size());
    for (int r = 0; r < p.ranks; ++r) {
      const Scalar* from = gathered.data() + displacements[std::size_t(r)];
      for (const Segment& s : p.key_segments[std::size_t(r)]) {
        std::copy(from + s.local * width, from + (s.local + s.rows) * width,
                  ordered.data() + s.position * width);
      }
    }
    gathered.swap(ordered);
  }
  const ConstMatrixView<Scalar> all_k(gathered.data(), p.keys, kc, Eigen::OuterStride<>(width));
  const ConstMatrixView<Scalar> all_v(gathered.data() + kc, p.keys, vc,
                                      Eigen::OuterStride<>(width));
  for (const Segment& qs : p.query_segments[std::size_t(p.rank)]) {
    options.positions = Positions{p.query_position(qs.position), 0, 0};
    scaled_dot_product_attention_into(q.middleRows(qs.local, qs.rows), all_k, all_v,
                                      out.middleRows(qs.local, qs.rows), mask, options);
  }
  if (traffic != nullptr) traffic->compute_seconds += clock.seconds();
}

/// The kv heads rank `rank`'s query heads [rank·H/R, (rank + 1)·H/R) read, in the order the
/// kernel's grouping of those heads needs: whole groups (H/R a multiple of the group size G), one
/// kv head (G a multiple of H/R), or else one kv head per query head (a copy each).
inline std::vector<Index> scattered_kv_heads(const SplitProblem& p, int rank) {
  const Index local = p.heads / p.ranks, group = p.heads / p.kv_heads;
  const Index first = rank * local;
  std::vector<Index> heads;
  if (local % group == 0) {
    for (Index g = first / group; g < (first + local) / group; ++g)
      heads.push_back(g);
  } else if (group % local == 0) {
    heads.push_back(first / group);
  } else {
    for (Index h = first; h < first + local; ++h)
      heads.push_back(h / group);
  }
  return heads;
}

inline void all_to_all(MPI_Comm comm, const void* send, const std::vector<int>& send_counts,
                       const std::vector<int>& send_offsets, void* receive,
                       const std::vector<int>& receive_counts,
                       const std::vector<int>& receive_offsets, MPI_Datatype type,
                       std::size_t element_bytes, int rank, Traffic* traffic) {
  const Stopwatch clock;
  check_mpi(MPI_Alltoallv(send, send_counts.data(), send_offsets.data(), type, receive,
                          receive_counts.data(), receive_offsets.data(), type, comm),
            "MPI_Alltoallv");
  if (traffic != nullptr) {
    traffic->wait_seconds += clock.seconds();
    double bytes = 0;
    for (std::size_t r = 0; r < send_counts.size(); ++r)
      bytes += int(r) == rank ? 0.0 : double(send_counts[r]) * double(element_bytes);
    traffic->bytes_sent += bytes;
    traffic->messages += 1;
  }
}

inline std::vector<int> offsets_of(const std::vector<int>& counts) {
  std::vector<int> offsets(counts.size(), 0);
  for (std::size_t r = 1; r < counts.size(); ++r)
    offsets[r] = offsets[r - 1] + counts[r - 1];
  return offsets;
}

template <typename Scalar, typename SM>
void head_scatter(MPI_Comm comm, const SplitProblem& p, const ConstMatrixRef<Scalar>& q,
                  const ConstMatrixRef<Scalar>& k, const ConstMatrixRef<Scalar>& v,
                  MatrixRef<Scalar> out, const SM& mask, AttentionOptions options,
                  Traffic* traffic) {
  const Index local = p.heads / p.ranks, d = p.head_dim, dv = p.value_dim;
  const std::size_t ranks = std::size_t(p.ranks), me = std::size_t(p.rank);
  std::vector<std::vector<Index>> kv_heads(ranks);
  for (std::size_t r = 0; r < ranks; ++r)
    kv_heads[r] = scattered_kv_heads(p, int(r));
  // Message to rank r: my query rows of r's heads, then my key/value rows of the kv heads r
  // reads ([k of each | v of each] per row).
  const auto kv_width = [&](std::size_t r) { return Index(kv_heads[r].size()) * (d + dv); };
  std::vector<int> send_counts(ranks), receive_counts(ranks);
  for (std::size_t r = 0; r < ranks; ++r) {
    send_counts[r] = int(q.rows() * local * d + k.rows() * kv_width(r));
    receive_counts[r] = int(p.query_rows[r] * local * d + p.key_rows[r] * kv_width(me));
  }
  const std::vector<int> send_offsets = offsets_of(send_counts);
  const std::vector<int> receive_offsets = offsets_of(receive_counts);
  std::vector<Scalar> send(buffer_size(send_offsets.back() + send_counts.back()));
  for (std::size_t r = 0; r < ranks; ++r) {
    // (A rank with no rows may hold null matrices: nothing of them is viewed.)
    Scalar* to = send.data() + send_offsets[r];
    if (q.rows() > 0) {
      MatrixView<Scalar>(to, q.rows(), local * d, Eigen::OuterStride<>(local * d)) =
          q.middleCols(Index(r) * local * d, local * d);
    }
    to += q.rows() * local * d;
    const Index width = kv_width(r), heads_r = Index(kv_heads[r].size());
    MatrixView<Scalar> kv(to, k.rows(), width, Eigen::OuterStride<>(width));
    for (Index g = 0; g < heads_r && k.rows() > 0; ++g) {
      kv.middleCols(g * d, d) = k.middleCols(kv_heads[r][std::size_t(g)] * d, d);
      kv.middleCols(heads_r * d + g * dv, dv) = v.middleCols(kv_heads[r][std::size_t(g)] * dv, dv);
    }
  }
  std::vector<Scalar> received(buffer_size(receive_offsets.back() + receive_counts.back()));
  all_to_all(comm, send.data(), send_counts, send_offsets, received.data(), receive_counts,
             receive_offsets, datatype<Scalar>(), sizeof(Scalar), p.rank, traffic);

  Stopwatch clock;
  // My heads over the whole sequence, rows in position order.
  const Index my_kv = Index(kv_heads[me].size()), width = kv_width(me);
  Matrix<Scalar> all_q(p.queries, local * d), all_kv(p.keys, width);
  for (std::size_t r = 0; r < ranks; ++r) {
    const Scalar* from = received.data() + receive_offsets[r];
    const ConstMatrixView<Scalar> rq(from, p.query_rows[r], local * d,
                                     Eigen::OuterStride<>(local * d));
    for (const Segment& s : p.query_segments[r])
      all_q.middleRows(s.position, s.rows) = rq.middleRows(s.local, s.rows);
    const ConstMatrixView<Scalar> rkv(from + p.query_rows[r] * local * d, p.key_rows[r], width,
                                      Eigen::OuterStride<>(width));
    for (const Segment& s : p.key_segments[r])
      all_kv.middleRows(s.position, s.rows) = rkv.middleRows(s.local, s.rows);
  }
  options.num_heads = local;
  options.num_kv_heads = my_kv;
  options.positions = Positions{p.keys - p.queries, 0, Index(me) * local};
  Matrix<Scalar> all_out(p.queries, local * dv);
  scaled_dot_product_attention_into(all_q, all_kv.leftCols(my_kv * d), all_kv.rightCols(my_kv * dv),
                                    all_out, mask, options);
  // Back: to rank r, its rows of my heads.
  for (std::size_t r = 0; r < ranks; ++r) {
    send_counts[r] = int(p.query_rows[r] * local * dv);
    receive_counts[r] = int(q.rows() * local * dv);
  }
  const std::vector<int> back_send_offsets = offsets_of(send_counts);
  const std::vector<int> back_receive_offsets = offsets_of(receive_counts);
  send.resize(buffer_size(back_send_offsets.back() + send_counts.back()));
  for (std::size_t r = 0; r < ranks; ++r) {
    MatrixView<Scalar> to(send.data() + back_send_offsets[r], p.query_rows[r], local * dv,
                          Eigen::OuterStride<>(local * dv));
    for (const Segment& s : p.query_segments[r])
      to.middleRows(s.local, s.rows) = all_out.middleRows(s.position, s.rows);
  }
  if (traffic != nullptr) traffic->compute_seconds += clock.seconds();
  received.resize(buffer_size(back_receive_offsets.back() + receive_counts.back()));
  all_to_all(comm, send.data(), send_counts, back_send_offsets, received.data(), receive_counts,
             back_receive_offsets, datatype<Scalar>(), sizeof(Scalar), p.rank, traffic);
  for (std::size_t r = 0; r < ranks && q.rows() > 0; ++r) {
    out.middleCols(Index(r) * local * dv, local * dv) =
        ConstMatrixView<Scalar>(received.data() + back_receive_offsets[r], q.rows(), local * dv,
                                Eigen::OuterStride<>(local * dv));
  }
}

}  // namespace detail

/// Attention over a sequence split across the ranks of `comm`: each rank passes its rows of the
/// queries and of the keys and values (as `parallel.layout` spreads them) and receives its rows
/// of the result, which equals scaled_dot_product_attention over the whole sequence (the query
/// rows of all ranks in position order, likewise the keys) within the float tolerance. Collective:
/// every rank of comm calls it, with the same options, mask and schedule.
///
/// \param comm     The communicator; its R ranks hold the shards (R = 1 is a single process).
/// \param q        In: this rank's query rows, (n_r, H·d), float or double; a self-attention
///                 passes the same rows' q, k and v, a cross-attention its target rows' q and its
///                 source rows' k and v.
/// \param k,v      In: this rank's key and value rows, (m_r, Hkv·d) and (m_r, Hkv·dv), of q's
///                 scalar type (any Eigen expression; row-major storage is read in place).
/// \param out      Out: (n_r, H·dv).
/// \param mask     Structured masks (causal, window, key_length: all aligned bottom-right over
///                 the whole sequence, N queries and M keys) and score and mask functions, which
///                 see positions and heads of the whole problem; every schedule supports all of
///                 them. Explicit keep/bias matrices and parts tied to one shape (a tree, a
///                 per-head bias matrix, a BlockMap) describe one process's rows and are rejected.
/// \param options  heads, scale, softcap as for the kernel; executor and workspace are this
///                 rank's; positions must be empty (the call sets them per shard).
/// \param parallel schedule, layout, traffic.
///
/// Work per rank: with ring and all_gather, a rank attends its own queries, so under a causal
/// mask a contiguous layout leaves rank 0 little and the last rank most; Layout::zigzag evens
/// it (and ring skips the shards a mask hides from a segment entirely). head_scatter attends the
/// whole sequence for H/R heads on every rank: balanced under any mask.
///
/// Deterministic: for a fixed number of ranks (and shard sizes), the result is bitwise the same
/// run to run and for any executor or thread count: every part is merged in a fixed order (ring:
/// the order the shards arrive, the rank's own first; all_gather and head_scatter: one kernel
/// call, no merge), never by a reduction whose order MPI chooses. Against one process over the
/// whole sequence it agrees within the kernel's tolerance (ring: a merge of R parts, within
/// about 3 times it), not bitwise.
///
/// \throws ShapeError on every rank, with the same message, when the ranks disagree on a shape
///         or option, a shape is wrong on any rank (naming it), the layout's shard sizes do not
///         hold, the schedule cannot use R ranks (head_scatter with H not divisible by R) or the
///         mask cannot be split; every rank checks the same gathered facts before any data is
///         sent, so none is left waiting. out is then untouched. MPI errors follow comm's error
///         handler (with MPI_ERRORS_RETURN, a std::runtime_error naming the call).
template <typename DQ, typename DK, typename DV, typename M = Mask,
          typename = std::enable_if_t<attn::detail::is_mask_argument<M>>>
void scaled_dot_product_attention_into(MPI_Comm comm, const Eigen::MatrixBase<DQ>& q,
                                       const Eigen::MatrixBase<DK>& k,
                                       const Eigen::MatrixBase<DV>& v,
                                       MatrixRef<typename DQ::Scalar> out, const M& mask = M(),
                                       const AttentionOptions& options = {},
                                       const ParallelOptions& parallel = {}) {
  using Scalar = typename DQ::Scalar;
  static_assert(std::is_same_v<Scalar, float> || std::is_same_v<Scalar, double>,
                "attn::mpi::scaled_dot_product_attention: q must be float or double");
  static_assert(
      std::is_same_v<typename DK::Scalar, Scalar> && std::is_same_v<typename DV::Scalar, Scalar>,
      "attn::mpi::scaled_dot_product_attention: k and v must have q's scalar type");
  constexpr const char* who = "attn::mpi::scaled_dot_product_attention";
  const auto& score_mask = attn::detail::as_score_mask(mask);
  const detail::SplitProblem p =
      detail::agree<Scalar>(comm, who, q.rows(), q.cols(), k.rows(), k.cols(), v.rows(), v.cols(),
                            out.rows(), out.cols(), score_mask, options, parallel);
  if (p.queries == 0 || p.keys == 0) {
    out.setZero();  // no key anywhere: zero rows (every rank knows, so none communicates)
    return;
  }
  const ConstMatrixRef<Scalar> q_ref(q), k_ref(k), v_ref(v);
  switch (parallel.schedule) {
    case Schedule::ring:
      detail::ring(comm, p, q_ref, k_ref, v_ref, out, score_mask, options, parallel.traffic);
      break;
    case Schedule::all_gather:
      detail::all_gather(comm, p, q_ref, k_ref, v_ref, out, score_mask, options, parallel.layout,
                         parallel.traffic);
      break;
    case Schedule::head_scatter:
      detail::head_scatter(comm, p, q_ref, k_ref, v_ref, out, score_mask, options,
                           parallel.traffic);
      break;
  }
}

/// As scaled_dot_product_attention_into, returning this rank's (n_r, H·dv) rows.
template <typename DQ, typename DK, typename DV, typename M = Mask,
          typename = std::enable_if_t<attn::detail::is_mask_argument<M>>>
Matrix<typename DQ::Scalar> scaled_dot_product_attention(
    MPI_Comm comm, const Eigen::MatrixBase<DQ>& q, const Eigen::MatrixBase<DK>& k,
    const Eigen::MatrixBase<DV>& v, const M& mask = M(), const AttentionOptions& options = {},
    const ParallelOptions& parallel = {}) {
  const Index heads = options.num_heads, kv_heads = options.kv_heads();
  const Index value_width =
      (heads >= 1 && kv_heads >= 1 && v.cols() % kv_heads == 0) ? heads * (v.cols() / kv_heads) : 0;
  Matrix<typename DQ::Scalar> out(q.rows(), value_width);
  scaled_dot_product_attention_into(comm, q, k, v, out, mask, options, parallel);
  return out;
}

}  // namespace attn::mpi
