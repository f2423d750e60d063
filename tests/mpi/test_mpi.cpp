// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors

// attn/mpi.hpp on however many ranks mpiexec started (ctest runs 1, 2, 3 and 4): every schedule
// and layout, self (N = M) and cross (N ≠ M) shapes, GQA and MQA, every structured mask kind and
// score and mask functions, uneven and empty shards, against one process's attention over the
// whole sequence; bitwise determinism run to run and across thread counts; decoding over a
// ShardedKVCache; the SelfAttention (with rotary) and CrossAttention layers; and errors that
// every rank throws alike, after which the communicator still works (no deadlock, no stray
// message).
//
// Every rank builds the same whole problem from a fixed seed and passes its shard.

#include <attn/builtin_masks.hpp>
#include <attn/mpi.hpp>
#include <attn/parallel.hpp>
#include <attn/scaled_dot_product.hpp>
#include <gtest/gtest.h>
#include <mpi.h>

#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "support/matrix_near.hpp"
#include "support/random.hpp"
#include "support/tolerance.hpp"

namespace {

using attn::Index;
using attn::Mask;
using attn::Matrix;
using attn::mpi::Layout;
using attn::mpi::ParallelOptions;
using attn::mpi::Schedule;
using attn::mpi::Segment;

int rank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}
int ranks() {
  int r = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &r);
  return r;
}

const char* name(Schedule s) {
  return s == Schedule::ring ? "ring" : s == Schedule::all_gather ? "all_gather" : "head_scatter";
}
const char* name(Layout l) {
  return l == Layout::contiguous ? "contiguous" : "zigzag";
}

// Whether every rank's flag is true (so that all ranks agree on a test's outcome).
bool on_every_rank(bool mine) {
  int in = mine ? 1 : 0, all = 0;
  MPI_Allreduce(&in, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  return all == 1;
}

// Whether a matrix is bitwise the same on every rank.
template <typename Scalar>
bool same_on_every_rank(const Matrix<Scalar>& m) {
  Matrix<Scalar> first = m;
  MPI_Bcast(first.data(), int(first.size() * Index(sizeof(Scalar))), MPI_BYTE, 0, MPI_COMM_WORLD);
  return on_every_rank(
      std::memcmp(first.data(), m.data(), sizeof(Scalar) * std::size_t(m.size())) == 0);
}

template <typename Scalar>
struct Whole {
  Matrix<Scalar> q, k, v;
};

template <typename Scalar>
Whole<Scalar> whole_problem(std::uint32_t seed, Index n, Index m, Index heads, Index kv_heads,
                            Index d, Index dv) {
  attn_test::Random rng(seed);
  return {rng.uniform_matrix<Scalar>(n, heads * d), rng.uniform_matrix<Scalar>(m, kv_heads * d),
          rng.uniform_matrix<Scalar>(m, kv_heads * dv)};
}

// The segments of this rank under `layout`, or, for `uneven`, contiguous runs of 3·(r + 1) + 5
// rows scaled to the length, with rank 1 holding none.
std::vector<Segment> segments_of(Layout layout, bool uneven, Index length) {
  if (!uneven) return attn::mpi::shard_segments(layout, length, ranks(), rank());
  std::vector<Index> weights(static_cast<std::size_t>(ranks()));
  Index total = 0;
  for (int r = 0; r < ranks(); ++r) {
    weights[std::size_t(r)] = r == 1 ? 0 : 3 * (r + 1) + 5;
    total += weights[std::size_t(r)];
  }
  Index position = 0, rows = 0;
  for (int r = 0; r <= rank(); ++r) {
    rows = r + 1 == ranks() ? length - position : length * weights[std::size_t(r)] / total;
    if (r < rank()) position += rows;
  }
  return {Segment{position, 0, rows}};
}

template <typename Scalar>
class MpiAttentionTest : public ::testing::Test {};
using Scalars = ::testing::Types<float, double>;
TYPED_TEST_SUITE(MpiAttentionTest, Scalars);

// The distributed result against the single-process one, for a mask, every schedule and layout.
template <typename Scalar, typename M>
void expect_matches_one_process(const char* what, Index n, Index m, Index heads, Index kv_heads,
                                const M& mask, bool uneven = false) {
  constexpr Index d = 8, dv = 6;
  const Whole<Scalar> w = whole_problem<Scalar>(7, n, m, heads, kv_heads, d, dv);
  attn::AttentionOptions options;
  options.num_heads = heads;
  options.num_kv_heads = kv_heads;
  const Matrix<Scalar> expected = attn::scaled_dot_product_attention(w.q, w.k, w.v, mask, options);
  // A merge of R parts each within T of the exact result: within 3T of the one pass (see
  // test_partial_attention); one call over other shapes: within 2T.
  const double tol = 3 * attn_test::attention_tolerance<Scalar>(std::sqrt(double(d)), m);
  for (const Layout layout : {Layout::contiguous, Layout::zigzag}) {
    if (uneven && layout == Layout::zigzag) continue;
    const std::vector<Segment> qs = segments_of(layout, uneven, n);
    const std::vector<Segment> ks = segments_of(layout, uneven, m);
    for (const Schedule schedule : {Schedule::ring, Schedule::all_gather, Schedule::head_scatter}) {
      if (schedule == Schedule::head_scatter && heads % ranks() != 0) continue;
      ParallelOptions parallel;
      parallel.schedule = schedule;
      parallel.layout = layout;
      const Matrix<Scalar> out = attn::mpi::scaled_dot_product_attention(
          MPI_COMM_WORLD, attn::mpi::shard_of(w.q, qs), attn::mpi::shard_of(w.k, ks),
          attn::mpi::shard_of(w.v, ks), mask, options, parallel);
      const Matrix<Scalar> want = attn::mpi::shard_of(expected, qs);
      EXPECT_TRUE(on_every_rank(attn_test::matrix_near(out, want, tol)))
          << what << ": " << name(schedule) << ", " << name(layout) << ", n=" << n << " m=" << m
          << " heads " << heads << "/" << kv_heads << (uneven ? ", uneven" : "") << ", rank "
          << rank() << " of " << ranks();
    }
  }
}

TYPED_TEST(MpiAttentionTest, EverySchedulePartitionAndMaskMatchesOneProcess) {
  using Scalar = TypeParam;
  const auto alibi = attn::score_function([](Scalar s, Index h, Index q, Index k) {
    return s - Scalar(0.25) * Scalar(h + 1) * Scalar(q > k ? q - k : k - q);
  });
  const auto sparse =
      attn::mask_function([](Index q, Index k) { return q % 2 == 0 || k % 3 != 0; });
  for (const auto& [n, m] : std::vector<std::pair<Index, Index>>{{97, 97}, {41, 130}}) {
    expect_matches_one_process<Scalar>("no mask", n, m, 4, 2, Mask());
    expect_matches_one_process<Scalar>("causal", n, m, 4, 2, Mask::causal());
    expect_matches_one_process<Scalar>("window(11, 3)", n, m, 4, 2, Mask::window(11, 3));
    expect_matches_one_process<Scalar>("causal & key_length", n, m, 4, 2,
                                       Mask::causal() & Mask::key_length(m - 9));
    expect_matches_one_process<Scalar>("causal & ALiBi", n, m, 4, 2, Mask::causal() & alibi);
    expect_matches_one_process<Scalar>("mask function", n, m, 4, 2, sparse);
  }
}

TYPED_TEST(MpiAttentionTest, GroupedAndMultiQueryHeads) {
  using Scalar = TypeParam;
  // 12 heads over 4 (groups of 3, which 1, 2, 3 or 4 ranks cut into whole groups, one group's
  // part, or mixed), over 1 (MQA: the kv head goes to every rank), and plain multi-head.
  for (const Index kv_heads : {Index(12), Index(4), Index(3), Index(1)}) {
    expect_matches_one_process<Scalar>("causal GQA", 60, 60, 12, kv_heads, Mask::causal());
  }
}

TYPED_TEST(MpiAttentionTest, UnevenAndEmptyShards) {
  using Scalar = TypeParam;
  expect_matches_one_process<Scalar>("uneven, causal", 83, 83, 4, 2, Mask::causal(), true);
  expect_matches_one_process<Scalar>("uneven, cross", 30, 77, 4, 4, Mask(), true);
  expect_matches_one_process<Scalar>("fewer rows than ranks", 2, 3, 4, 2, Mask::causal());
  expect_matches_one_process<Scalar>("no keys", 5, 0, 4, 2, Mask());
}

// For a fixed number of ranks the result is bitwise the same run to run, and for any executor:
// parts merge in a fixed order.
TYPED_TEST(MpiAttentionTest, BitwiseDeterministic) {
  using Scalar = TypeParam;
  const Whole<Scalar> w = whole_problem<Scalar>(11, 300, 300, 4, 2, 16, 16);
  attn::AttentionOptions options;
  options.num_heads = 4;
  options.num_kv_heads = 2;
  for (const Schedule schedule : {Schedule::ring, Schedule::all_gather, Schedule::head_scatter}) {
    if (schedule == Schedule::head_scatter && 4 % ranks() != 0) continue;
    ParallelOptions parallel;
    parallel.schedule = schedule;
    parallel.layout = Layout::zigzag;
    const std::vector<Segment> s = attn::mpi::shard_segments(Layout::zigzag, 300, ranks(), rank());
    const Matrix<Scalar> q = attn::mpi::shard_of(w.q, s), k = attn::mpi::shard_of(w.k, s),
                         v = attn::mpi::shard_of(w.v, s);
    options.executor = attn::serial_executor;
    const Matrix<Scalar> first = attn::mpi::scaled_dot_product_attention(
        MPI_COMM_WORLD, q, k, v, Mask::causal(), options, parallel);
    const Matrix<Scalar> again = attn::mpi::scaled_dot_product_attention(
        MPI_COMM_WORLD, q, k, v, Mask::causal(), options, parallel);
    options.executor = attn::thread_executor(3);
    const Matrix<Scalar> threaded = attn::mpi::scaled_dot_product_attention(
        MPI_COMM_WORLD, q, k, v, Mask::causal(), options, parallel);
    EXPECT_TRUE(on_every_rank(attn_test::bitwise_equal(first, again))) << name(schedule);
    EXPECT_TRUE(on_every_rank(attn_test::bitwise_equal(first, threaded))) << name(schedule);
  }
}

// What the traffic counters say: the ring sends each shard it holds on, R − 1 times.
TYPED_TEST(MpiAttentionTest, TrafficCountsTheBytesSent) {
  using Scalar = TypeParam;
  const Index n = 64, width = 4 * 8 + 4 * 8;
  const Whole<Scalar> w = whole_problem<Scalar>(3, n, n, 4, 4, 8, 8);
  attn::AttentionOptions options;
  options.num_heads = 4;
  attn::mpi::Traffic traffic;
  ParallelOptions parallel;
  parallel.traffic = &traffic;
  const std::vector<Segment> s = attn::mpi::shard_segments(Layout::contiguous, n, ranks(), rank());
  attn::mpi::scaled_dot_product_attention(MPI_COMM_WORLD, attn::mpi::shard_of(w.q, s),
                                          attn::mpi::shard_of(w.k, s), attn::mpi::shard_of(w.v, s),
                                          Mask(), options, parallel);
  // The shards that pass through this rank: its own and those of the R − 2 ranks before it.
  double shard_bytes = 0;
  for (int step = 0; step + 1 < ranks(); ++step) {
    const int source = (rank() - step + ranks()) % ranks();
    shard_bytes += double(attn::mpi::shard_rows(Layout::contiguous, n, ranks(), source) * width *
                          Index(sizeof(Scalar)));
  }
  const double agreement_bytes = 18.0 * 8 * (ranks() - 1);
  EXPECT_EQ(traffic.bytes_sent, shard_bytes + agreement_bytes);
  EXPECT_EQ(traffic.messages, Index(1 + ranks() - 1));
  EXPECT_GE(traffic.wait_seconds, 0.0);
  EXPECT_GT(traffic.compute_seconds, 0.0);
}

// Decoding over a cache split by position: a zigzag prefill, then steps of one and of three rows
// (the blocks of 8 rows go to the rank with the fewest), each against one process over the
// whole cache, bitwise the same on every rank.
TYPED_TEST(MpiAttentionTest, ShardedCacheDecodeMatchesOneProcess) {
  using Scalar = TypeParam;
  constexpr Index heads = 4, kv_heads = 2, d = 8, prefill = 50, steps = 40;
  const Index total = prefill + 2 * steps;
  const Whole<Scalar> w = whole_problem<Scalar>(21, total, total, heads, kv_heads, d, d);
  attn::AttentionOptions options;
  options.num_heads = heads;
  options.num_kv_heads = kv_heads;
  const auto alibi = attn::score_function([](Scalar s, Index h, Index q, Index k) {
    return s - Scalar(0.125) * Scalar(h + 1) * Scalar(q - k);
  });
  attn::mpi::ShardedKVCache<Scalar> cache(MPI_COMM_WORLD, total, kv_heads * d, d, 8);
  const std::vector<Segment> s =
      attn::mpi::shard_segments(Layout::zigzag, prefill, ranks(), rank());
  cache.append_shards(attn::mpi::shard_of(w.k, s), attn::mpi::shard_of(w.v, s), Layout::zigzag);
  ASSERT_EQ(cache.size(), prefill);
  Index position = prefill;
  for (Index step = 0; step < steps; ++step) {
    const Index rows = step % 4 == 3 ? 3 : 1;
    const int root = int(step % ranks());
    const Matrix<Scalar> q = w.q.middleRows(position, rows);
    const Matrix<Scalar> k = w.k.middleRows(position, rows), v = w.v.middleRows(position, rows);
    const bool windowed = step % 2 == 1;
    const auto mask = windowed ? (Mask::causal() & Mask::window(20, 0)) : Mask::causal();
    // Only the root's rows count: the others pass nothing.
    const Matrix<Scalar> got = rank() == root
                                   ? cache.attend(q, k, v, mask & alibi, options, root)
                                   : cache.attend(Matrix<Scalar>(), Matrix<Scalar>(),
                                                  Matrix<Scalar>(), mask & alibi, options, root);
    position += rows;
    ASSERT_EQ(cache.size(), position);
    const Matrix<Scalar> want = attn::scaled_dot_product_attention(
        q, w.k.topRows(position), w.v.topRows(position), mask & alibi, options);
    const double tol = 3 * attn_test::attention_tolerance<Scalar>(std::sqrt(double(d)), position);
    EXPECT_TRUE(on_every_rank(attn_test::matrix_near(got, want, tol))) << "step " << step;
    EXPECT_TRUE(same_on_every_rank(got)) << "step " << step;
  }
  // Every rank's rows are few segments, and the shards stay within a block of each other.
  Index least = total, most = 0;
  for (int r = 0; r < ranks(); ++r) {
    least = std::min(least, cache.rows_of(r));
    most = std::max(most, cache.rows_of(r));
  }
  EXPECT_LE(most - least, 8 + prefill / (2 * ranks()) + 1);
  EXPECT_LE(Index(cache.segments().size()), 2 + (2 * steps) / (8 * ranks()) + 2);
  EXPECT_EQ(cache.local_size(), cache.rows_of(rank()));
}

TYPED_TEST(MpiAttentionTest, LayersMatchOneProcess) {
  using Scalar = TypeParam;
  attn_test::Random rng(31);
  attn::MultiHeadConfig self_config;
  self_config.model_dim = 32;
  self_config.num_heads = 4;
  self_config.num_kv_heads = 2;
  attn::RotaryConfig rotary;
  rotary.head_dim = 8;
  self_config.rotary = rotary;
  const attn::SelfAttention<Scalar> self(self_config,
                                         attn_test::random_weights<Scalar>(self_config, rng));
  attn::MultiHeadConfig cross_config;
  cross_config.model_dim = 32;
  cross_config.num_heads = 4;
  cross_config.source_dim = 20;
  const attn::CrossAttention<Scalar> cross(cross_config,
                                           attn_test::random_weights<Scalar>(cross_config, rng));
  const Matrix<Scalar> x = rng.uniform_matrix<Scalar>(70, 32);
  const Matrix<Scalar> source = rng.uniform_matrix<Scalar>(45, 20);
  const Matrix<Scalar> self_want = self(x, Mask::causal());
  const Matrix<Scalar> cross_want = cross(x, source);
  const double tol = 3 * attn_test::layer_tolerance<Scalar>(32, 32, 8, 70);
  for (const Layout layout : {Layout::contiguous, Layout::zigzag}) {
    for (const Schedule schedule : {Schedule::ring, Schedule::all_gather, Schedule::head_scatter}) {
      if (schedule == Schedule::head_scatter && 4 % ranks() != 0) continue;
      ParallelOptions parallel;
      parallel.schedule = schedule;
      parallel.layout = layout;
      const std::vector<Segment> xs = attn::mpi::shard_segments(layout, 70, ranks(), rank());
      const std::vector<Segment> ss = attn::mpi::shard_segments(layout, 45, ranks(), rank());
      const Matrix<Scalar> self_got = attn::mpi::self_attention(
          MPI_COMM_WORLD, self, attn::mpi::shard_of(x, xs), Mask::causal(), {}, parallel);
      EXPECT_TRUE(
          on_every_rank(attn_test::matrix_near(self_got, attn::mpi::shard_of(self_want, xs), tol)))
          << "self, " << name(schedule) << ", " << name(layout);
      const Matrix<Scalar> cross_got =
          attn::mpi::cross_attention(MPI_COMM_WORLD, cross, attn::mpi::shard_of(x, xs),
                                     attn::mpi::shard_of(source, ss), Mask(), {}, parallel);
      EXPECT_TRUE(on_every_rank(
          attn_test::matrix_near(cross_got, attn::mpi::shard_of(cross_want, xs), tol)))
          << "cross, " << name(schedule) << ", " << name(layout);
    }
  }
}

// A call every rank throws from with the same message, or none does; `fragment` must be in it.
template <typename Call>
void expect_every_rank_throws(const Call& call, const std::string& fragment) {
  std::string message;
  try {
    call();
  } catch (const attn::ShapeError& error) {
    message = error.what();
  }
  EXPECT_TRUE(on_every_rank(!message.empty() && message.find(fragment) != std::string::npos))
      << "rank " << rank() << " got \"" << message << "\", expected \"" << fragment << "\"";
  // The same message everywhere: rank 0's, compared.
  int length = int(message.size());
  MPI_Bcast(&length, 1, MPI_INT, 0, MPI_COMM_WORLD);
  std::string first(std::size_t(length), ' ');
  if (rank() == 0) first = message;
  MPI_Bcast(first.data(), length, MPI_CHAR, 0, MPI_COMM_WORLD);
  EXPECT_TRUE(on_every_rank(first == message)) << message;
}

TEST(MpiErrors, EveryRankThrowsTheSameErrorAndTheCommunicatorStillWorks) {
  using Scalar = float;
  const Whole<Scalar> w = whole_problem<Scalar>(5, 40, 40, 4, 4, 8, 8);
  attn::AttentionOptions options;
  options.num_heads = 4;
  const std::vector<Segment> s = attn::mpi::shard_segments(Layout::contiguous, 40, ranks(), rank());
  const Matrix<Scalar> q = attn::mpi::shard_of(w.q, s), k = attn::mpi::shard_of(w.k, s),
                       v = attn::mpi::shard_of(w.v, s);
  const int last = ranks() - 1;
  for (const Schedule schedule : {Schedule::ring, Schedule::all_gather, Schedule::head_scatter}) {
    ParallelOptions parallel;
    parallel.schedule = schedule;
    // The last rank's keys are one column short.
    const Matrix<Scalar> bad_k = rank() == last ? Matrix<Scalar>(k.leftCols(31)) : k;
    if (ranks() > 1) {
      expect_every_rank_throws(
          [&] {
            attn::mpi::scaled_dot_product_attention(MPI_COMM_WORLD, q, bad_k, v, Mask(), options,
                                                    parallel);
          },
          "k.cols() is 31 on rank " + std::to_string(last));
    } else {
      expect_every_rank_throws(
          [&] {
            attn::mpi::scaled_dot_product_attention(MPI_COMM_WORLD, q, bad_k, v, Mask(), options,
                                                    parallel);
          },
          "expected q: heads*d, k: kv_heads*d");
    }
    // The last rank's values have a row too many.
    const Matrix<Scalar> bad_v =
        rank() == last ? Matrix<Scalar>(Matrix<Scalar>::Zero(v.rows() + 1, v.cols())) : v;
    expect_every_rank_throws(
        [&] {
          attn::mpi::scaled_dot_product_attention(MPI_COMM_WORLD, q, k, bad_v, Mask(), options,
                                                  parallel);
        },
        "rank " + std::to_string(last) + " has v with");
    // Ranks that disagree on the mask.
    if (ranks() > 1) {
      const Mask mask = rank() == last ? Mask::causal() : Mask();
      expect_every_rank_throws(
          [&] {
            attn::mpi::scaled_dot_product_attention(MPI_COMM_WORLD, q, k, v, mask, options,
                                                    parallel);
          },
          "the mask's right reach");
    }
    // An explicit matrix describes one process's rows.
    expect_every_rank_throws(
        [&] {
          attn::mpi::scaled_dot_product_attention(
              MPI_COMM_WORLD, q, k, v, Mask::keep(Matrix<bool>::Constant(q.rows(), k.rows(), true)),
              options, parallel);
        },
        "explicit keep/bias");
    // Zigzag shards of the wrong size (uneven ones, rank 1 holding none).
    if (ranks() > 1) {
      ParallelOptions zigzag = parallel;
      zigzag.layout = Layout::zigzag;
      const std::vector<Segment> c = segments_of(Layout::contiguous, true, 40);
      expect_every_rank_throws(
          [&] {
            attn::mpi::scaled_dot_product_attention(
                MPI_COMM_WORLD, attn::mpi::shard_of(w.q, c), attn::mpi::shard_of(w.k, c),
                attn::mpi::shard_of(w.v, c), Mask(), options, zigzag);
          },
          "zigzag shard");
    }
  }
  // A communicator size head_scatter cannot use: 3 heads over 2 or 4 ranks, 4 heads over 3.
  if (ranks() > 1) {
    const Index heads = ranks() == 3 ? 4 : 3;
    const Whole<Scalar> h = whole_problem<Scalar>(6, 20, 20, heads, heads, 8, 8);
    attn::AttentionOptions head_options;
    head_options.num_heads = heads;
    ParallelOptions parallel;
    parallel.schedule = Schedule::head_scatter;
    const std::vector<Segment> c =
        attn::mpi::shard_segments(Layout::contiguous, 20, ranks(), rank());
    expect_every_rank_throws(
        [&] {
          attn::mpi::scaled_dot_product_attention(
              MPI_COMM_WORLD, attn::mpi::shard_of(h.q, c), attn::mpi::shard_of(h.k, c),
              attn::mpi::shard_of(h.v, c), Mask(), head_options, parallel);
        },
        "head_scatter needs num_heads divisible by the " + std::to_string(ranks()) + " ranks");
  }
  // The same communicator, after all of that: a call that must succeed, and match.
  const Matrix<Scalar> expected =
      attn::scaled_dot_product_attention(w.q, w.k, w.v, Mask::causal(), options);
  const Matrix<Scalar> out =
      attn::mpi::scaled_dot_product_attention(MPI_COMM_WORLD, q, k, v, Mask::causal(), options);
  EXPECT_TRUE(on_every_rank(
      attn_test::matrix_near(out, attn::mpi::shard_of(expected, s),
                             3 * attn_test::attention_tolerance<Scalar>(std::sqrt(8.0), 40))));
}

TEST(MpiErrors, ShardedCacheRejectsBadStepsOnEveryRankAndStaysUnchanged) {
  using Scalar = float;
  attn::mpi::ShardedKVCache<Scalar> cache(MPI_COMM_WORLD, 4, 16, 8, 2);
  attn::AttentionOptions options;
  options.num_heads = 2;
  const Matrix<Scalar> q = Matrix<Scalar>::Ones(1, 16), kv = Matrix<Scalar>::Ones(1, 16);
  // The root's key row is too wide.
  expect_every_rank_throws(
      [&] {
        cache.attend(q, Matrix<Scalar>(Matrix<Scalar>::Ones(1, 17)), kv, Mask::causal(), options);
      },
      "root 0 has q 1x16, k 1x17");
  EXPECT_EQ(cache.size(), 0);
  // Ranks that disagree on the root.
  if (ranks() > 1) {
    expect_every_rank_throws(
        [&] { cache.attend(q, kv, kv, Mask::causal(), options, rank() == 0 ? 0 : 1); }, "root is");
  }
  // Capacity: 4 rows per rank, so 4·R rows fit and the next one does not.
  for (int i = 0; i < 4 * ranks(); ++i)
    cache.attend(q, kv, kv, Mask::causal(), options);
  EXPECT_EQ(cache.size(), 4 * ranks());
  std::string message;
  try {
    cache.attend(q, kv, kv, Mask::causal(), options);
  } catch (const attn::CapacityError& error) {
    message = error.what();
  }
  EXPECT_TRUE(on_every_rank(message.find("beyond the capacity 4") != std::string::npos)) << message;
  EXPECT_EQ(cache.size(), 4 * ranks());
  // A prefill a rank's cache cannot hold: every rank refuses, none changes.
  attn::mpi::ShardedKVCache<Scalar> small(MPI_COMM_WORLD, 3, 16, 8);
  const Matrix<Scalar> rows = Matrix<Scalar>::Ones(rank() == 0 ? 5 : 2, 16);
  expect_every_rank_throws([&] { small.append_shards(rows, rows); },
                           "rank 0 cannot append its 5 rows");
  EXPECT_EQ(small.size(), 0);
  EXPECT_EQ(small.local_size(), 0);
}

}  // namespace
