// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors

// scaled_dot_product_attention_partial and merge_partial_attention: attention over any split of
// the keys, merged, equals one pass (output and log-sum-exp), with GQA heads, empty parts and
// parts an explicit mask hides entirely; empty partials are the identity of the merge; a merge of
// mismatched parts throws and leaves its target alone; the log-sum-exp is log Σ exp(logits) of
// the fp64 reference. And the decode path, which splits the keys itself and merges the parts, is
// bitwise independent of the executor and of a reused Workspace.

#include <attn/builtin_masks.hpp>
#include <attn/partial_attention.hpp>
#include <attn/scaled_dot_product.hpp>
#include <attn/workspace.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "support/float_mode.hpp"
#include "support/matrix_near.hpp"
#include "support/random.hpp"
#include "support/reference.hpp"
#include "support/shape_error.hpp"
#include "support/tolerance.hpp"

namespace {

using attn::Index;
using attn::Mask;
using attn_test::bitwise_equal;
using attn_test::MatrixB;
using attn_test::Random;
using attn_test::ReferenceMask;

template <typename Scalar>
class PartialAttentionTest : public ::testing::Test {};
using Scalars = ::testing::Types<float, double>;
TYPED_TEST_SUITE(PartialAttentionTest, Scalars);

// GQA: 4 query heads over 2 kv heads, head_dim 8, value_dim 6 (≠ head_dim, so that a confusion of
// the two shows).
constexpr Index heads = 4, kv_heads = 2, head_dim = 8, value_dim = 6;

attn::AttentionOptions gqa_options() {
  attn::AttentionOptions options;
  options.num_heads = heads;
  options.num_kv_heads = kv_heads;
  return options;
}

template <typename Scalar>
struct Problem {
  attn::Matrix<Scalar> q, k, v;
};

template <typename Scalar>
Problem<Scalar> random_problem(Random& rng, Index n, Index m) {
  return {rng.uniform_matrix<Scalar>(n, heads * head_dim),
          rng.uniform_matrix<Scalar>(m, kv_heads * head_dim),
          rng.uniform_matrix<Scalar>(m, kv_heads * value_dim)};
}

// The key ranges [cuts[s], cuts[s + 1]) of a random split of m keys into 1–6 parts (before the
// empty ones): random cut points, sorted, with an empty part added at a random place.
std::vector<Index> random_cuts(Random& rng, Index m) {
  std::vector<Index> cuts = {0, m};
  const Index inner = rng.integer(0, 5);
  for (Index i = 0; i < inner; ++i)
    cuts.push_back(rng.integer(0, m));
  std::sort(cuts.begin(), cuts.end());
  const auto duplicate = static_cast<std::size_t>(rng.integer(0, Index(cuts.size()) - 1));
  cuts.insert(cuts.begin() + static_cast<std::ptrdiff_t>(duplicate), cuts[duplicate]);
  return cuts;
}

std::string describe(const std::vector<Index>& cuts) {
  std::string s = "cuts {";
  for (std::size_t i = 0; i < cuts.size(); ++i)
    s += (i ? ", " : "") + std::to_string(cuts[i]);
  return s + "}";
}

// The masks of the whole problem, and how each restricts to the keys [a, b) of a part (masks are
// relative to the part's keys, aligned bottom-right over them):
// - none: none;
// - keep: the columns [a, b) of the keep matrix;
// - causal over all m keys: query i sees key j iff j ≤ i + m − n. For the part, with local key
//   j' = j − a over b − a keys, that is j' ≤ i + (b − a) − n + (m − b): a window with no left
//   reach and a right reach of m − b (which also hides late parts from early queries entirely).
enum class MaskKind { none, keep, causal };
const std::vector<MaskKind> mask_kinds = {MaskKind::none, MaskKind::keep, MaskKind::causal};

const char* name(MaskKind kind) {
  return kind == MaskKind::none ? "none" : kind == MaskKind::keep ? "keep" : "causal";
}

Mask whole_mask(MaskKind kind, const MatrixB& keep) {
  if (kind == MaskKind::keep) return Mask::keep(keep);
  if (kind == MaskKind::causal) return Mask::causal();
  return Mask();
}

ReferenceMask reference_mask(MaskKind kind, const MatrixB& keep) {
  if (kind == MaskKind::keep) return ReferenceMask::keep(keep);
  if (kind == MaskKind::causal) return ReferenceMask::causal();
  return ReferenceMask();
}

Mask part_mask(MaskKind kind, const MatrixB& keep, Index m, Index a, Index b) {
  if (kind == MaskKind::keep) return Mask::keep(keep.middleCols(a, b - a));
  if (kind == MaskKind::causal) return Mask::window(Mask::unbounded, m - b);
  return Mask();
}

// Attention over the keys [a, b) with the lse kept.
template <typename Scalar>
attn::PartialAttention<Scalar> part(const Problem<Scalar>& p, MaskKind kind, const MatrixB& keep,
                                    Index a, Index b) {
  return attn::scaled_dot_product_attention_partial(
      p.q, p.k.middleRows(a, b - a), p.v.middleRows(a, b - a),
      part_mask(kind, keep, p.k.rows(), a, b), gqa_options());
}

template <typename Scalar>
::testing::AssertionResult same_partial(const attn::PartialAttention<Scalar>& a,
                                        const attn::PartialAttention<Scalar>& b) {
  if (!bitwise_equal(a.out, b.out)) return ::testing::AssertionFailure() << "out differs";
  if (!bitwise_equal(a.log_sum_exp, b.log_sum_exp)) {
    return ::testing::AssertionFailure() << "log_sum_exp differs";
  }
  return ::testing::AssertionSuccess();
}

// Tolerances. T = attention_tolerance(√d, m) bounds the kernel's error against the exact result
// for entries in [−1, 1] (logits bounded by √d; see tolerance.hpp); it applies to the output and,
// as the logit error plus the rounding of log Σ, to the log-sum-exp. A merged result is a convex
// combination of parts each within T, weighted by exp(lse_s − lse) whose relative error is the
// parts' lse error (≤ T) plus a few u: so it is within 2T + O(u) of the exact result, and within
// 3T of the one pass. For m = 1300, d = 8: T ≈ 2e-5 in float, 4e-14 in double.
template <typename Scalar>
double kernel_tolerance(Index m) {
  return attn_test::attention_tolerance<Scalar>(std::sqrt(double(head_dim)), m);
}

// (n, m): one query (the decode path, whose m = 1300 is split by the kernel itself into two
// 512-key parts and merged), a few queries below the packet width, and blocks of 17 and 70
// queries (the wide path); and no keys at all.
const std::vector<std::pair<Index, Index>> shapes = {
    {1, 1300}, {3, 700}, {17, 200}, {70, 150}, {4, 0}};

TYPED_TEST(PartialAttentionTest, MergeOfAnySplitEqualsOnePass) {
  using Scalar = TypeParam;
  std::uint32_t seed = 10;
  for (const auto& [n, m] : shapes) {
    for (const MaskKind kind : mask_kinds) {
      Random rng(++seed);
      const Problem<Scalar> p = random_problem<Scalar>(rng, n, m);
      MatrixB keep = rng.bernoulli_matrix(n, m, 0.8);
      if (n > 1) keep.row(n - 1).setConstant(false);  // a query that sees no key at all

      attn::Matrix<Scalar> lse;
      attn::AttentionExtras<Scalar> extras;
      extras.log_sum_exp = &lse;
      const attn::Matrix<Scalar> out = attn::scaled_dot_product_attention(
          p.q, p.k, p.v, whole_mask(kind, keep), gqa_options(), extras);
      ASSERT_EQ(lse.rows(), n);
      ASSERT_EQ(lse.cols(), heads);
      const double tol = 3 * kernel_tolerance<Scalar>(m);

      for (int trial = 0; trial < 4; ++trial) {
        const std::vector<Index> cuts = random_cuts(rng, m);
        MatrixB part_keep = keep;
        // Hide one part entirely in the keep case: a part whose every row has lse = −∞.
        const auto hidden = static_cast<std::size_t>(rng.integer(0, Index(cuts.size()) - 2));
        const Index hidden_begin = cuts[hidden], hidden_end = cuts[hidden + 1];
        if (kind == MaskKind::keep) {
          part_keep.middleCols(hidden_begin, hidden_end - hidden_begin).setConstant(false);
        }
        // The one pass for this keep matrix (the same as above unless a part was hidden).
        attn::Matrix<Scalar> one_lse = lse;
        attn::Matrix<Scalar> one_out = out;
        if (kind == MaskKind::keep) {
          attn::AttentionExtras<Scalar> one_extras;
          one_extras.log_sum_exp = &one_lse;
          one_out = attn::scaled_dot_product_attention(p.q, p.k, p.v, Mask::keep(part_keep),
                                                       gqa_options(), one_extras);
        }

        std::vector<attn::PartialAttention<Scalar>> parts;
        for (std::size_t s = 0; s + 1 < cuts.size(); ++s) {
          parts.push_back(part(p, kind, part_keep, cuts[s], cuts[s + 1]));
          ASSERT_EQ(parts.back().out.rows(), n);
          ASSERT_EQ(parts.back().out.cols(), heads * value_dim);
          ASSERT_EQ(parts.back().log_sum_exp.cols(), heads);
        }
        if (kind == MaskKind::keep) {
          const attn::PartialAttention<Scalar>& hidden_part = parts[hidden];
          EXPECT_TRUE(hidden_part.out.isZero(0));
          EXPECT_TRUE(
              (hidden_part.log_sum_exp.array() == -std::numeric_limits<Scalar>::infinity()).all());
        }

        // Pairwise, in order.
        attn::PartialAttention<Scalar> pairwise = parts.front();
        for (std::size_t s = 1; s < parts.size(); ++s)
          attn::merge_partial_attention(pairwise, parts[s]);
        // The vector overload.
        const attn::PartialAttention<Scalar> merged = attn::merge_partial_attention(parts);

        const std::string what = std::string("n=") + std::to_string(n) + " m=" + std::to_string(m) +
                                 " mask=" + name(kind) + " " + describe(cuts) +
                                 " seed=" + std::to_string(seed);
        for (const attn::PartialAttention<Scalar>* result : {&std::as_const(pairwise), &merged}) {
          EXPECT_TRUE(attn_test::matrix_near(result->out, one_out, tol)) << what;
          EXPECT_TRUE(attn_test::matrix_near(result->log_sum_exp, one_lse, tol)) << what;
        }
        // A row that sees nothing anywhere stays zero with lse −∞ (matrix_near lets equal
        // infinities pass, so state it).
        if (kind == MaskKind::keep && n > 1) {
          EXPECT_TRUE(merged.out.row(n - 1).isZero(0)) << what;
          EXPECT_TRUE(
              (merged.log_sum_exp.row(n - 1).array() == -std::numeric_limits<Scalar>::infinity())
                  .all())
              << what;
        }
      }
    }
  }
}

// options.positions places a call in a larger problem: a block of its queries over a part of its
// keys, each at its positions in the whole (query row i at first_query + i, key row j at
// first_key + j), sees what it sees in the whole under structured masks, key_length and score and
// mask functions; the parts of a split merge into the whole's rows. Self (N = M) and cross
// (N ≠ M) shapes, including a part of keys that a block of queries sees none of.
TYPED_TEST(PartialAttentionTest, PositionsPlaceABlockOfTheWholeProblem) {
  using Scalar = TypeParam;
  const auto alibi = attn::score_function([](Scalar s, Index h, Index q, Index k) {
    return s - Scalar(0.125) * Scalar(h + 1) * Scalar(q > k ? q - k : k - q);
  });
  // Keys in every third position hidden from odd queries, stated per block.
  const auto sparse =
      attn::mask_function([](Index q, Index k) { return q % 2 == 0 || k % 3 != 0; },
                          [](Index q0, Index q1, Index k0, Index k1) {
                            return q1 - q0 == 1 && q0 % 2 == 0
                                       ? attn::Visibility::all
                                       : (k1 - k0 == 1 && k0 % 3 != 0 ? attn::Visibility::all
                                                                      : attn::Visibility::partial);
                          });
  std::uint32_t seed = 90;
  for (const auto& shape : std::vector<std::pair<Index, Index>>{{150, 150}, {70, 190}, {3, 260}}) {
    const Index n = shape.first, m = shape.second;  // (lambdas below capture them)
    Random rng(++seed);
    const Problem<Scalar> p = random_problem<Scalar>(rng, n, m);
    const auto check = [&](const auto& mask, const char* mask_name) {
      attn::Matrix<Scalar> lse;
      attn::AttentionExtras<Scalar> extras;
      extras.log_sum_exp = &lse;
      const attn::Matrix<Scalar> whole =
          attn::scaled_dot_product_attention(p.q, p.k, p.v, mask, gqa_options(), extras);
      // The default positions, stated: bitwise the call without them.
      attn::AttentionOptions stated = gqa_options();
      stated.positions = attn::Positions{m - n, 0};
      EXPECT_TRUE(
          bitwise_equal(attn::scaled_dot_product_attention(p.q, p.k, p.v, mask, stated), whole))
          << mask_name;
      const double tol = 3 * kernel_tolerance<Scalar>(m);
      for (int trial = 0; trial < 3; ++trial) {
        const Index i0 = rng.integer(0, n - 1), i1 = rng.integer(i0 + 1, n);
        const std::vector<Index> cuts = random_cuts(rng, m);
        const auto q = p.q.middleRows(i0, i1 - i0);
        std::vector<attn::PartialAttention<Scalar>> parts;
        for (std::size_t s = 0; s + 1 < cuts.size(); ++s) {
          const Index a = cuts[s], b = cuts[s + 1];
          attn::AttentionOptions options = gqa_options();
          options.positions = attn::Positions{i0 + m - n, a};
          parts.push_back(attn::scaled_dot_product_attention_partial(
              q, p.k.middleRows(a, b - a), p.v.middleRows(a, b - a), mask, options));
        }
        const attn::PartialAttention<Scalar> merged = attn::merge_partial_attention(parts);
        const std::string what = std::string(mask_name) + " n=" + std::to_string(n) +
                                 " m=" + std::to_string(m) + " rows [" + std::to_string(i0) + ", " +
                                 std::to_string(i1) + ") " + describe(cuts);
        EXPECT_TRUE(attn_test::matrix_near(merged.out, whole.middleRows(i0, i1 - i0), tol)) << what;
        EXPECT_TRUE(attn_test::matrix_near(merged.log_sum_exp, lse.middleRows(i0, i1 - i0), tol))
            << what;
      }
    };
    // The last two heads (kv head 1) alone, named as heads 2 and 3 to the score function.
    {
      const auto mask = Mask::causal() & alibi;
      const attn::Matrix<Scalar> whole =
          attn::scaled_dot_product_attention(p.q, p.k, p.v, mask, gqa_options());
      attn::AttentionOptions options;
      options.num_heads = 2;
      options.num_kv_heads = 1;
      options.positions = attn::Positions{m - n, 0, 2};
      const attn::Matrix<Scalar> half = attn::scaled_dot_product_attention(
          attn::Matrix<Scalar>(p.q.rightCols(2 * head_dim)), p.k.rightCols(head_dim),
          p.v.rightCols(value_dim), mask, options);
      EXPECT_TRUE(attn_test::matrix_near(half, whole.rightCols(2 * value_dim),
                                         kernel_tolerance<Scalar>(m)));
      options.positions->first_head = 0;  // heads 0 and 1's slopes: another result
      EXPECT_FALSE(attn_test::matrix_near(
          attn::scaled_dot_product_attention(attn::Matrix<Scalar>(p.q.rightCols(2 * head_dim)),
                                             p.k.rightCols(head_dim), p.v.rightCols(value_dim),
                                             mask, options),
          whole.rightCols(2 * value_dim), kernel_tolerance<Scalar>(m)));
    }
    check(Mask(), "none");
    check(Mask::causal(), "causal");
    check(Mask::window(9, 4), "window(9, 4)");
    check(Mask::causal() & Mask::key_length(m - 7), "causal & key_length");
    check(Mask::causal() & alibi, "causal & score function");
    check(Mask::window(40, 40) & sparse, "window & mask function");
  }
}

TYPED_TEST(PartialAttentionTest, PositionsAreRejectedWhereTheyCannotApply) {
  using Scalar = TypeParam;
  Random rng(120);
  const Problem<Scalar> p = random_problem<Scalar>(rng, 5, 9);
  attn::AttentionOptions options = gqa_options();
  options.positions = attn::Positions{20, 4};
  attn::Matrix<Scalar> out = attn::Matrix<Scalar>::Constant(5, heads * value_dim, 7);
  // A tree describes the last keys of one shape: positions would not move it.
  EXPECT_SHAPE_ERROR(
      attn::scaled_dot_product_attention_into(p.q, p.k, p.v, out, attn::tree({-1, 0, 0}), options),
      "options.positions", "tied to one shape");
  EXPECT_TRUE((out.array() == 7).all());
  // A batch's sequences each count positions from their start.
  std::vector<attn::Matrix<Scalar>> ks = {p.k}, vs = {p.v};
  EXPECT_SHAPE_ERROR(
      attn::scaled_dot_product_attention_batch_into(p.q, {5}, ks, vs, out, Mask(), options),
      "options.positions", "batch");
  // key_length may exceed the call's keys: it counts positions.
  options.positions = attn::Positions{0, 0};
  EXPECT_NO_THROW(attn::scaled_dot_product_attention(p.q, p.k, p.v, Mask::key_length(30), options));
}

// The kernel's log-sum-exp is log Σ_j exp(logit(i, j)) of the fp64 reference, per row and head,
// and −∞ for a row that sees nothing; the output matches it too.
TYPED_TEST(PartialAttentionTest, LogSumExpMatchesReference) {
  using Scalar = TypeParam;
  std::uint32_t seed = 40;
  for (const auto& [n, m] : shapes) {
    for (const MaskKind kind : mask_kinds) {
      Random rng(++seed);
      const Problem<Scalar> p = random_problem<Scalar>(rng, n, m);
      MatrixB keep = rng.bernoulli_matrix(n, m, 0.8);
      if (n > 1) keep.row(0).setConstant(false);
      const attn::PartialAttention<Scalar> got = attn::scaled_dot_product_attention_partial(
          p.q, p.k, p.v, whole_mask(kind, keep), gqa_options());

      attn_test::MatrixD expected_lse;
      const attn_test::MatrixD expected_out = attn_test::reference_multi_head(
          p.q, p.k, p.v, heads, kv_heads, reference_mask(kind, keep), std::nullopt, 0,
          &expected_lse);
      const double tol = kernel_tolerance<Scalar>(m);
      const std::string what =
          std::string("n=") + std::to_string(n) + " m=" + std::to_string(m) + " mask=" + name(kind);
      EXPECT_TRUE(attn_test::matrix_near(got.log_sum_exp, expected_lse, tol)) << what;
      EXPECT_TRUE(attn_test::matrix_near(got.out, expected_out, tol)) << what;
      if (m == 0 || (kind == MaskKind::keep && n > 1)) {
        EXPECT_EQ(got.log_sum_exp.row(0).maxCoeff(), -std::numeric_limits<Scalar>::infinity())
            << what;
      }
    }
  }
}

// A part with no visible key (no keys at all, or all hidden) has out = 0 and lse = −∞, and merges
// as the identity on either side: bitwise, since its weight is exactly 0 and the other's is
// exp(0) = 1.
TYPED_TEST(PartialAttentionTest, EmptyPartialsMergeAsIdentity) {
  using Scalar = TypeParam;
  constexpr Scalar minus_infinity = -std::numeric_limits<Scalar>::infinity();
  Random rng(60);
  for (const Index n : {1, 5, 70}) {
    const Problem<Scalar> p = random_problem<Scalar>(rng, n, 90);
    const attn::PartialAttention<Scalar> x =
        attn::scaled_dot_product_attention_partial(p.q, p.k, p.v, Mask(), gqa_options());

    const attn::PartialAttention<Scalar> no_keys = attn::scaled_dot_product_attention_partial(
        p.q, p.k.topRows(0), p.v.topRows(0), Mask(), gqa_options());
    const attn::PartialAttention<Scalar> all_hidden = attn::scaled_dot_product_attention_partial(
        p.q, p.k, p.v, Mask::keep(MatrixB::Constant(n, 90, false)), gqa_options());
    for (const auto* empty : {&no_keys, &all_hidden}) {
      ASSERT_EQ(empty->out.rows(), n);
      ASSERT_EQ(empty->out.cols(), heads * value_dim);
      EXPECT_TRUE(empty->out.isZero(0));
      ASSERT_EQ(empty->log_sum_exp.rows(), n);
      ASSERT_EQ(empty->log_sum_exp.cols(), heads);
      EXPECT_TRUE((empty->log_sum_exp.array() == minus_infinity).all());

      attn::PartialAttention<Scalar> into = x;
      attn::merge_partial_attention(into, *empty);
      EXPECT_TRUE(same_partial(into, x)) << "x merged with empty, n=" << n;

      into = *empty;
      attn::merge_partial_attention(into, x);
      EXPECT_TRUE(same_partial(into, x)) << "empty merged with x, n=" << n;

      EXPECT_TRUE(same_partial(attn::merge_partial_attention(
                                   std::vector<attn::PartialAttention<Scalar>>{*empty, x, *empty}),
                               x))
          << "vector {empty, x, empty}, n=" << n;

      // Empty with empty stays empty.
      into = *empty;
      attn::merge_partial_attention(into, *empty);
      EXPECT_TRUE(into.out.isZero(0));
      EXPECT_TRUE((into.log_sum_exp.array() == minus_infinity).all());
    }
  }
}

// The identity holds for any partial, including one that a NaN input reached (out and lse NaN
// there, as mask.hpp's "NaN makes the rows it reaches NaN" implies): merging it with an empty
// part, on either side, must keep the NaN, not turn the row into one that saw no key.
TYPED_TEST(PartialAttentionTest, NanPartialMergedWithAnEmptyPartialStaysNan) {
  ATTN_TEST_SKIP_UNDER_FINITE_MATH();
  using Scalar = TypeParam;
  const Scalar nan = std::numeric_limits<Scalar>::quiet_NaN();
  Random rng(65);
  const Index n = 3;
  const Problem<Scalar> p = random_problem<Scalar>(rng, n, 40);
  attn::PartialAttention<Scalar> poisoned =
      attn::scaled_dot_product_attention_partial(p.q, p.k, p.v, Mask(), gqa_options());
  // Row 1, head 2 was reached by a NaN.
  poisoned.out.row(1).segment(2 * value_dim, value_dim).setConstant(nan);
  poisoned.log_sum_exp(1, 2) = nan;
  const attn::PartialAttention<Scalar> empty = attn::scaled_dot_product_attention_partial(
      p.q, p.k.topRows(0), p.v.topRows(0), Mask(), gqa_options());

  const auto check = [&](const attn::PartialAttention<Scalar>& merged, const char* order) {
    EXPECT_TRUE(merged.out.row(1).segment(2 * value_dim, value_dim).array().isNaN().all())
        << order << ": out " << merged.out.row(1).segment(2 * value_dim, value_dim)
        << ", expected NaN";
    EXPECT_TRUE(std::isnan(merged.log_sum_exp(1, 2)))
        << order << ": log_sum_exp " << merged.log_sum_exp(1, 2) << ", expected NaN";
    // Everything else is the poisoned partial's, bitwise (NaN aside, as in the identity test).
    attn::PartialAttention<Scalar> a = merged, b = poisoned;
    for (auto* x : {&a, &b}) {
      x->out.row(1).segment(2 * value_dim, value_dim).setZero();
      x->log_sum_exp(1, 2) = 0;
    }
    EXPECT_TRUE(same_partial(a, b)) << order;
  };
  attn::PartialAttention<Scalar> into = poisoned;
  attn::merge_partial_attention(into, empty);
  check(into, "poisoned merged with empty");
  into = empty;
  attn::merge_partial_attention(into, poisoned);
  check(into, "empty merged with poisoned");
  check(attn::merge_partial_attention(
            std::vector<attn::PartialAttention<Scalar>>{empty, poisoned, empty}),
        "vector {empty, poisoned, empty}");
}

TYPED_TEST(PartialAttentionTest, MergeOfDifferentShapesThrowsAndLeavesIntoUntouched) {
  using Scalar = TypeParam;
  Random rng(70);
  const Problem<Scalar> p = random_problem<Scalar>(rng, 3, 40);
  const attn::PartialAttention<Scalar> good =
      attn::scaled_dot_product_attention_partial(p.q, p.k, p.v, Mask(), gqa_options());
  ASSERT_EQ(good.out.rows(), 3);
  ASSERT_EQ(good.out.cols(), 24);
  ASSERT_EQ(good.log_sum_exp.cols(), 4);

  const auto make = [&](Index rows, Index cols, Index lse_rows, Index lse_cols) {
    attn::PartialAttention<Scalar> bad;
    bad.out = rng.uniform_matrix<Scalar>(rows, cols);
    bad.log_sum_exp = rng.uniform_matrix<Scalar>(lse_rows, lse_cols);
    return bad;
  };
  const std::vector<attn::PartialAttention<Scalar>> bad_parts = {
      make(2, 24, 2, 4),  // fewer queries
      make(3, 18, 3, 3),  // fewer heads
      make(3, 30, 3, 4),  // another value_dim
      make(3, 24, 3, 3),  // out matches, log_sum_exp does not
      make(3, 24, 2, 4),
  };
  for (std::size_t i = 0; i < bad_parts.size(); ++i) {
    attn::PartialAttention<Scalar> into = good;
    EXPECT_SHAPE_ERROR(attn::merge_partial_attention(into, bad_parts[i]), "merge_partial_attention")
        << "bad part #" << i;
    EXPECT_TRUE(same_partial(into, good)) << "bad part #" << i;
    EXPECT_SHAPE_ERROR(attn::merge_partial_attention(
                           std::vector<attn::PartialAttention<Scalar>>{good, bad_parts[i]}),
                       "merge_partial_attention")
        << "bad part #" << i;
  }
  // An out whose columns are not a multiple of the heads, on both sides alike.
  attn::PartialAttention<Scalar> odd = make(3, 10, 3, 4);
  const attn::PartialAttention<Scalar> odd_before = odd;
  EXPECT_SHAPE_ERROR(attn::merge_partial_attention(odd, make(3, 10, 3, 4)),
                     "merge_partial_attention", "3x10");
  EXPECT_TRUE(same_partial(odd, odd_before));
  EXPECT_SHAPE_ERROR(attn::merge_partial_attention(std::vector<attn::PartialAttention<Scalar>>{}),
                     "merge_partial_attention", "empty");
}

// The decode path (n below the packet width) splits the keys into 512-key parts and merges them
// in a fixed order; the split depends only on the shape, never on the thread count. The library
// documents the result as bitwise identical for any executor (detail/scheduler.hpp, at
// decode_split_keys), so this checks bitwise equality, not a tolerance: serial, 2 and 3 threads
// (3 does not divide the 9 parts of m = 5000 evenly) and the default executor. n = 3 checks the
// same for a few queries (narrow in float; in double, under SSE, 3 rows take the wide path,
// whose items are independent and so also bitwise stable).
TYPED_TEST(PartialAttentionTest, DecodeIsBitwiseIndependentOfTheExecutor) {
  using Scalar = TypeParam;
  constexpr Index decode_heads = 8, d = 64, m = 5000;
  Random rng(80);
  const attn::Matrix<Scalar> k = rng.uniform_matrix<Scalar>(m, decode_heads * d);
  const attn::Matrix<Scalar> v = rng.uniform_matrix<Scalar>(m, decode_heads * d);
  // A larger problem (head_dim 128, more keys) to run first through a reused Workspace.
  const attn::Matrix<Scalar> big_q = rng.uniform_matrix<Scalar>(1, 2 * decode_heads * d);
  const attn::Matrix<Scalar> big_k = rng.uniform_matrix<Scalar>(m + 600, 2 * decode_heads * d);
  for (const Index n : {1, 3}) {
    const attn::Matrix<Scalar> q = rng.uniform_matrix<Scalar>(n, decode_heads * d);
    for (const Mask& mask : {Mask(), Mask::causal() & Mask::window(3000, 0)}) {
      const auto run = [&](attn::Executor executor, attn::Workspace* workspace) {
        attn::AttentionOptions options;
        options.num_heads = decode_heads;
        options.executor = std::move(executor);
        options.workspace = workspace;
        attn::PartialAttention<Scalar> result;
        attn::AttentionExtras<Scalar> extras;
        extras.log_sum_exp = &result.log_sum_exp;
        result.out = attn::scaled_dot_product_attention(q, k, v, mask, options, extras);
        return result;
      };
      const attn::PartialAttention<Scalar> serial = run(attn::serial_executor, nullptr);
      EXPECT_TRUE(same_partial(run(attn::thread_executor(2), nullptr), serial)) << "n=" << n;
      EXPECT_TRUE(same_partial(run(attn::thread_executor(3), nullptr), serial)) << "n=" << n;
      EXPECT_TRUE(same_partial(run(attn::Executor(), nullptr), serial)) << "n=" << n;

      // A Workspace reused across calls of other shapes (first a larger one, whose stale partials
      // and scratch it keeps) gives the same bits too.
      attn::Workspace workspace;
      attn::AttentionOptions larger;
      larger.num_heads = decode_heads;
      larger.workspace = &workspace;
      attn::scaled_dot_product_attention(big_q, big_k, big_k, Mask(), larger);
      EXPECT_TRUE(same_partial(run(attn::serial_executor, &workspace), serial)) << "n=" << n;
      EXPECT_TRUE(same_partial(run(attn::thread_executor(3), &workspace), serial)) << "n=" << n;
      EXPECT_TRUE(same_partial(run(attn::serial_executor, &workspace), serial)) << "n=" << n;
    }
  }
}

}  // namespace
