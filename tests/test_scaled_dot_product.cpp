// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors

// attn::scaled_dot_product_attention against the independent fp64 reference (support/reference.hpp)
// over many seeded shapes, every mask kind, heads, options and memory layouts; plus invariants,
// threading, empty inputs and every shape error of the kernel.

#include <attn/mask.hpp>
#include <attn/parallel.hpp>
#include <attn/scaled_dot_product.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "support/matrix_near.hpp"
#include "support/random.hpp"
#include "support/reference.hpp"
#include "support/shape_error.hpp"
#include "support/tolerance.hpp"

namespace {

using attn::Index;
using attn_test::MatrixB;
using attn_test::MatrixD;
using attn_test::Random;
using attn_test::ReferenceMask;

constexpr double infinity = std::numeric_limits<double>::infinity();

// ---------------------------------------------------------------------------------------------
// Masks, built twice: once as attn::Mask, once as the reference's own description.
// ---------------------------------------------------------------------------------------------

enum class MaskKind {
  None,
  Causal,
  WindowLeft,       // window(left, unbounded)
  WindowRight,      // window(unbounded, right)
  WindowBoth,       // window(left, right)
  CausalAndWindow,  // causal() & window(left, unbounded)
  Keep,             // random, with one row all hidden
  Bias,             // finite
  BiasInfinite,     // some −∞ entries and one row all −∞
  KeepAndCausal,
  BiasAndCausal,
  KeyLength,           // key_length(count), count in [0, m]
  KeyLengthAndWindow,  // key_length(count) & window(left, right)
};

const std::vector<MaskKind> all_mask_kinds = {MaskKind::None,
                                              MaskKind::Causal,
                                              MaskKind::WindowLeft,
                                              MaskKind::WindowRight,
                                              MaskKind::WindowBoth,
                                              MaskKind::CausalAndWindow,
                                              MaskKind::Keep,
                                              MaskKind::Bias,
                                              MaskKind::BiasInfinite,
                                              MaskKind::KeepAndCausal,
                                              MaskKind::BiasAndCausal,
                                              MaskKind::KeyLength,
                                              MaskKind::KeyLengthAndWindow};

const char* name(MaskKind kind) {
  switch (kind) {
    case MaskKind::None:
      return "none";
    case MaskKind::Causal:
      return "causal";
    case MaskKind::WindowLeft:
      return "window(left, unbounded)";
    case MaskKind::WindowRight:
      return "window(unbounded, right)";
    case MaskKind::WindowBoth:
      return "window(left, right)";
    case MaskKind::CausalAndWindow:
      return "causal & window(left, unbounded)";
    case MaskKind::Keep:
      return "keep";
    case MaskKind::Bias:
      return "bias";
    case MaskKind::BiasInfinite:
      return "bias with -inf";
    case MaskKind::KeyLength:
      return "key_length";
    case MaskKind::KeyLengthAndWindow:
      return "key_length & window(left, right)";
    case MaskKind::KeepAndCausal:
      return "keep & causal";
    case MaskKind::BiasAndCausal:
      return "bias & causal";
  }
  return "?";
}

struct MaskPair {
  std::string name;
  attn::Mask mask;
  ReferenceMask reference;
  double bias_bound = 0;  // max |finite bias|, for the tolerance
};

MaskPair both(std::string label, attn::Mask mask, ReferenceMask reference, double bias_bound = 0) {
  return MaskPair{std::move(label), std::move(mask), std::move(reference), bias_bound};
}

/// A random keep matrix with row `hidden_row` (if in range) all false.
MatrixB random_keep(Random& rng, Index n, Index m, double p, Index hidden_row) {
  MatrixB keep = rng.bernoulli_matrix(n, m, p);
  if (hidden_row >= 0 && hidden_row < n) keep.row(hidden_row).setConstant(false);
  return keep;
}

/// A bias in [−2, 2], given to the library in BiasScalar; with `infinities`, ~30% −∞ entries and
/// row `hidden_row` all −∞.
template <typename BiasScalar>
attn::Matrix<BiasScalar> random_bias(Random& rng, Index n, Index m, bool infinities,
                                     Index hidden_row) {
  attn::Matrix<BiasScalar> bias = rng.uniform_matrix<BiasScalar>(n, m, -2, 2);
  if (infinities) {
    for (Index i = 0; i < n; ++i) {
      for (Index j = 0; j < m; ++j) {
        if (rng.bernoulli(0.3) || i == hidden_row)
          bias(i, j) = -std::numeric_limits<BiasScalar>::infinity();
      }
    }
  }
  return bias;
}

/// The mask of `kind` for n queries and m keys, with random reaches and matrices. Bias matrices are
/// in BiasScalar (the call's precision unless a test says otherwise).
template <typename BiasScalar>
MaskPair make_mask(MaskKind kind, Index n, Index m, Random& rng) {
  const Index left = rng.integer(0, std::max<Index>(m / 3, 2));
  const Index right = rng.integer(0, std::max<Index>(m / 4, 2));
  const Index hidden_row = n / 2;
  const std::string label = name(kind);
  switch (kind) {
    case MaskKind::None:
      return both(label, attn::Mask::none(), ReferenceMask::none());
    case MaskKind::Causal:
      return both(label, attn::Mask::causal(), ReferenceMask::causal());
    case MaskKind::WindowLeft:
      return both(label + " left=" + std::to_string(left),
                  attn::Mask::window(left, attn::Mask::unbounded),
                  ReferenceMask::window(left, ReferenceMask::unbounded));
    case MaskKind::WindowRight:
      return both(label + " right=" + std::to_string(right),
                  attn::Mask::window(attn::Mask::unbounded, right),
                  ReferenceMask::window(ReferenceMask::unbounded, right));
    case MaskKind::WindowBoth:
      return both(label + " left=" + std::to_string(left) + " right=" + std::to_string(right),
                  attn::Mask::window(left, right), ReferenceMask::window(left, right));
    case MaskKind::CausalAndWindow:
      return both(label + " left=" + std::to_string(left),
                  attn::Mask::causal() & attn::Mask::window(left, attn::Mask::unbounded),
                  ReferenceMask::causal() & ReferenceMask::window(left, ReferenceMask::unbounded));
    case MaskKind::Keep: {
      const MatrixB keep = random_keep(rng, n, m, 0.7, hidden_row);
      return both(label, attn::Mask::keep(keep), ReferenceMask::keep(keep));
    }
    case MaskKind::Bias: {
      const auto bias = random_bias<BiasScalar>(rng, n, m, false, -1);
      return both(label, attn::Mask::bias(bias), ReferenceMask::bias(bias), 2);
    }
    case MaskKind::BiasInfinite: {
      const auto bias = random_bias<BiasScalar>(rng, n, m, true, hidden_row);
      return both(label, attn::Mask::bias(bias), ReferenceMask::bias(bias), 2);
    }
    case MaskKind::KeepAndCausal: {
      const MatrixB keep = random_keep(rng, n, m, 0.7, hidden_row);
      return both(label, attn::Mask::keep(keep) & attn::Mask::causal(),
                  ReferenceMask::keep(keep) & ReferenceMask::causal());
    }
    case MaskKind::BiasAndCausal: {
      const auto bias = random_bias<BiasScalar>(rng, n, m, false, -1);
      return both(label, attn::Mask::bias(bias) & attn::Mask::causal(),
                  ReferenceMask::bias(bias) & ReferenceMask::causal(), 2);
    }
    case MaskKind::KeyLength: {
      const Index count = rng.integer(0, m);
      return both(label + " count=" + std::to_string(count), attn::Mask::key_length(count),
                  ReferenceMask::key_length(count));
    }
    case MaskKind::KeyLengthAndWindow: {
      const Index count = rng.integer(0, m);
      return both(label + " count=" + std::to_string(count) + " left=" + std::to_string(left) +
                      " right=" + std::to_string(right),
                  attn::Mask::key_length(count) & attn::Mask::window(left, right),
                  ReferenceMask::key_length(count) & ReferenceMask::window(left, right));
    }
  }
  return both("?", attn::Mask(), ReferenceMask());
}

// ---------------------------------------------------------------------------------------------
// One comparison: q (n, H·d), k (m, Hkv·d), v (m, Hkv·dv) uniform in [−1, 1] (q in ±q_range).
// ---------------------------------------------------------------------------------------------

struct Case {
  Index n, m, d, dv;
  Index heads = 1;
  Index kv_heads = 1;
};

std::string describe(const Case& c, const MaskPair& mask, const attn::AttentionOptions& options,
                     std::uint32_t seed) {
  std::string s = "n=" + std::to_string(c.n) + " m=" + std::to_string(c.m) +
                  " d=" + std::to_string(c.d) + " dv=" + std::to_string(c.dv) +
                  " H=" + std::to_string(c.heads) + " Hkv=" + std::to_string(c.kv_heads) +
                  " mask=" + mask.name + " seed=" + std::to_string(seed);
  if (options.scale) s += " scale=" + std::to_string(*options.scale);
  if (options.softcap > 0) s += " softcap=" + std::to_string(options.softcap);
  return s;
}

/// Checks the kernel against reference_multi_head, and that every row in which the mask leaves no
/// key visible is exactly zero (never NaN).
template <typename Scalar>
::testing::AssertionResult check_against_reference(const Case& c, const MaskPair& mask,
                                                   attn::AttentionOptions options,
                                                   std::uint32_t seed, double q_range = 1.0) {
  Random rng(seed);
  const attn::Matrix<Scalar> q = rng.uniform_matrix<Scalar>(c.n, c.heads * c.d, -q_range, q_range);
  const attn::Matrix<Scalar> k = rng.uniform_matrix<Scalar>(c.m, c.kv_heads * c.d);
  const attn::Matrix<Scalar> v = rng.uniform_matrix<Scalar>(c.m, c.kv_heads * c.dv);
  options.num_heads = c.heads;
  options.num_kv_heads = c.kv_heads;
  const attn::Matrix<Scalar> got = attn::scaled_dot_product_attention(q, k, v, mask.mask, options);
  const MatrixD expected = attn_test::reference_multi_head(
      q, k, v, c.heads, c.kv_heads, mask.reference, options.scale, options.softcap);

  const double scale = options.scale ? *options.scale : 1.0 / std::sqrt(static_cast<double>(c.d));
  const double logit_bound = std::abs(scale) * static_cast<double>(c.d) * q_range + mask.bias_bound;
  const double tol = attn_test::attention_tolerance<Scalar>(logit_bound, c.m);
  auto result = attn_test::matrix_near(got, expected, tol);
  if (!result) return result << " [" << describe(c, mask, options, seed) << "]";

  const MatrixB allowed = mask.reference.allowed(c.n, c.m);
  const MatrixD bias = mask.reference.bias(c.n, c.m);
  for (Index i = 0; i < c.n; ++i) {
    bool any_visible = false;
    for (Index j = 0; j < c.m; ++j) {
      any_visible = any_visible || (allowed(i, j) && (bias.size() == 0 || bias(i, j) != -infinity));
    }
    if (!any_visible && !(got.row(i).array() == Scalar(0)).all()) {
      return ::testing::AssertionFailure()
             << "row " << i << " sees no key but is not zero: " << got.row(i) << " ["
             << describe(c, mask, options, seed) << "]";
    }
  }
  return ::testing::AssertionSuccess();
}

/// Bitwise equality (NaN would fail, which is what we want).
template <typename A, typename B>
::testing::AssertionResult bitwise_equal(const Eigen::MatrixBase<A>& a,
                                         const Eigen::MatrixBase<B>& b) {
  return attn_test::matrix_near(a, b, 0.0);
}

template <typename Scalar>
class ScaledDotProduct : public ::testing::Test {};
using Scalars = ::testing::Types<float, double>;
TYPED_TEST_SUITE(ScaledDotProduct, Scalars);

// ---------------------------------------------------------------------------------------------
// Against the reference
// ---------------------------------------------------------------------------------------------

// Hand-picked shapes: n < m, n > m, dv ≠ d, m = 1, n = 1, long m, sizes around the kernel's
// 64-row query blocks and around 64 and 128 keys, primes. (The key blocks' size depends on the head
// dims and the cache sizes; MatchesReferenceAtTileBoundaries straddles the one this build uses.)
const std::vector<Case> hand_picked_shapes = {
    {1, 1, 4, 4},      {1, 7, 8, 8},       {7, 1, 8, 3},       {5, 9, 16, 16},
    {9, 5, 16, 24},    {3, 200, 32, 16},   {200, 3, 32, 16},   {63, 63, 8, 8},
    {64, 64, 64, 64},  {65, 65, 32, 48},   {127, 129, 16, 16}, {128, 128, 8, 8},
    {129, 127, 16, 8}, {257, 257, 32, 32}, {31, 257, 24, 40},  {257, 31, 24, 40},
    {1, 1000, 64, 64}, {70, 1500, 64, 64}, {97, 211, 13, 7},   {101, 103, 5, 11},
    {2, 131, 64, 3},   {131, 2, 64, 3},    {193, 67, 1, 1},    {1, 1, 1, 1}};

TYPED_TEST(ScaledDotProduct, MatchesReferenceOnHandPickedShapes) {
  std::uint32_t seed = 100;
  for (const Case& c : hand_picked_shapes) {
    EXPECT_TRUE(check_against_reference<TypeParam>(c, both("none", attn::Mask(), ReferenceMask()),
                                                   {}, ++seed));
    EXPECT_TRUE(check_against_reference<TypeParam>(
        c, both("causal", attn::Mask::causal(), ReferenceMask::causal()), {}, ++seed));
  }
}

TYPED_TEST(ScaledDotProduct, MatchesReferenceOnRandomShapesAndMasks) {
  for (std::uint32_t seed = 1; seed <= 40; ++seed) {
    Random rng(seed);
    const Case c{rng.integer(1, 300), rng.integer(1, 300), rng.integer(1, 80), rng.integer(1, 80)};
    const MaskKind kind =
        all_mask_kinds[static_cast<std::size_t>(rng.integer(0, Index(all_mask_kinds.size()) - 1))];
    const MaskPair mask = make_mask<TypeParam>(kind, c.n, c.m, rng);
    EXPECT_TRUE(check_against_reference<TypeParam>(c, mask, {}, 1000 + seed));
  }
}

// Every mask kind with n < m, n > m and n = m, so under the bottom-right alignment some rows see
// no key at all (they must be zeros, never NaN).
TYPED_TEST(ScaledDotProduct, MatchesReferenceForEveryMaskKindAndAlignment) {
  const std::vector<Case> shapes = {{37, 300, 16, 8}, {300, 37, 16, 8}, {130, 130, 8, 12},
                                    {1, 129, 16, 16}, {129, 1, 16, 16}, {64, 200, 8, 8},
                                    {200, 64, 8, 8},  {5, 3, 4, 4}};
  std::uint32_t seed = 2000;
  for (const Case& c : shapes) {
    for (MaskKind kind : all_mask_kinds) {
      Random rng(++seed);
      EXPECT_TRUE(check_against_reference<TypeParam>(c, make_mask<TypeParam>(kind, c.n, c.m, rng),
                                                     {}, seed));
    }
  }
}

// Every n and m among 1, 63, 64, 65, 127, 128, 129, 257, a few primes, and one key block of this
// build (its size comes from the head dims and the cache sizes, detail/tile_traits.hpp) minus one,
// exactly, plus one and twice plus one: partial query blocks, partial key blocks and query blocks
// narrower than a SIMD packet at every edge.
TYPED_TEST(ScaledDotProduct, MatchesReferenceAtTileBoundaries) {
  constexpr Index d = 8, dv = 4;
  const attn::detail::BlockSizes blocks = attn::detail::BlockSizes::of<TypeParam>(d, dv);
  ASSERT_EQ(blocks.query_rows, 64) << "the sizes below straddle 64-row query blocks";
  const Index bk = blocks.key_rows;
  const std::vector<Index> sizes = {1,   63, 64,  65,     127, 128,    129,
                                    257, 17, 191, bk - 1, bk,  bk + 1, 2 * bk + 1};
  std::uint32_t seed = 3000;
  for (Index n : sizes) {
    for (Index m : sizes) {
      const Case c{n, m, d, dv};
      EXPECT_TRUE(check_against_reference<TypeParam>(c, both("none", attn::Mask(), ReferenceMask()),
                                                     {}, ++seed));
      EXPECT_TRUE(check_against_reference<TypeParam>(
          c, both("causal", attn::Mask::causal(), ReferenceMask::causal()), {}, ++seed));
      EXPECT_TRUE(check_against_reference<TypeParam>(
          c, both("window(3, 2)", attn::Mask::window(3, 2), ReferenceMask::window(3, 2)), {},
          ++seed));
    }
  }
}

TYPED_TEST(ScaledDotProduct, MatchesReferenceWithLongKeys) {
  const Case c{70, 1500, 64, 64};
  EXPECT_TRUE(
      check_against_reference<TypeParam>(c, both("none", attn::Mask(), ReferenceMask()), {}, 41));
  EXPECT_TRUE(check_against_reference<TypeParam>(
      c, both("causal", attn::Mask::causal(), ReferenceMask::causal()), {}, 42));
  EXPECT_TRUE(check_against_reference<TypeParam>(
      c, both("window(200, 0)", attn::Mask::window(200, 0), ReferenceMask::window(200, 0)), {},
      43));
  EXPECT_TRUE(check_against_reference<TypeParam>(
      Case{70, 1500, 32, 16, 4, 2}, both("causal", attn::Mask::causal(), ReferenceMask::causal()),
      {}, 44));
}

// Masks under which whole key blocks, or whole 64-query blocks, see nothing (key blocks hold at
// most 128 keys, so each of these hides several).
TYPED_TEST(ScaledDotProduct, MatchesReferenceWhenWholeTilesAreHidden) {
  using Scalar = TypeParam;
  std::uint32_t seed = 4000;
  // The window reaches back 20 keys from the last 100: the first key blocks are never visited.
  EXPECT_TRUE(check_against_reference<Scalar>(
      {100, 1000, 16, 8},
      both("window(20, 0)", attn::Mask::window(20, 0), ReferenceMask::window(20, 0)), {}, ++seed));
  // Forward-looking window: the last key tiles are never visited by the first queries.
  EXPECT_TRUE(check_against_reference<Scalar>(
      {600, 600, 8, 8}, both("window(0, 5)", attn::Mask::window(0, 5), ReferenceMask::window(0, 5)),
      {}, ++seed));
  // A diagonal band only.
  EXPECT_TRUE(check_against_reference<Scalar>(
      {300, 300, 8, 8}, both("window(0, 0)", attn::Mask::window(0, 0), ReferenceMask::window(0, 0)),
      {}, ++seed));
  // n > m under causal: queries 0..199 (three whole query blocks and part of a fourth) see nothing.
  EXPECT_TRUE(check_against_reference<Scalar>(
      {300, 100, 16, 8}, both("causal", attn::Mask::causal(), ReferenceMask::causal()), {},
      ++seed));
  // n > m under a right-only window that ends before key 0 for the first rows.
  EXPECT_TRUE(check_against_reference<Scalar>(
      {300, 100, 16, 8},
      both("window(unbounded, 3)", attn::Mask::window(attn::Mask::unbounded, 3),
           ReferenceMask::window(ReferenceMask::unbounded, 3)),
      {}, ++seed));
  // Explicit masks hiding whole key blocks: keep hides keys [128, 384), a bias is −∞ on [0, 256).
  const Index n = 90, m = 500;
  MatrixB keep = MatrixB::Constant(n, m, true);
  keep.middleCols(128, 256).setConstant(false);
  EXPECT_TRUE(check_against_reference<Scalar>(
      {n, m, 16, 8},
      both("keep hiding tiles 1-2", attn::Mask::keep(keep), ReferenceMask::keep(keep)), {},
      ++seed));
  attn::Matrix<Scalar> bias = attn::Matrix<Scalar>::Zero(n, m);
  bias.leftCols(256).setConstant(-std::numeric_limits<Scalar>::infinity());
  EXPECT_TRUE(check_against_reference<Scalar>(
      {n, m, 16, 8},
      both("bias -inf on tiles 0-1", attn::Mask::bias(bias), ReferenceMask::bias(bias)), {},
      ++seed));
  // Every key of every row hidden: all zeros.
  MatrixB none_visible = MatrixB::Constant(n, m, false);
  EXPECT_TRUE(check_against_reference<Scalar>(
      {n, m, 16, 8},
      both("keep all false", attn::Mask::keep(none_visible), ReferenceMask::keep(none_visible)), {},
      ++seed));
}

// Fewer queries than a SIMD packet take the decode path: all heads in one pass, the visible keys
// split into parts of a few hundred keys whose results are merged by log-sum-exp. Key counts
// around multiples of the split size, every mask kind (windows of up to m/3 keys, keep and −∞
// bias matrices hide whole parts), one head, GQA and MQA.
TYPED_TEST(ScaledDotProduct, MatchesReferenceWhenDecoding) {
  using Scalar = TypeParam;
  const std::vector<std::pair<Index, Index>> heads = {{1, 1}, {8, 2}, {4, 1}};
  std::uint32_t seed = 10000;
  for (Index n : {1, 2, 3, 5}) {
    for (Index m : {1, 7, 511, 512, 1023, 1024, 1025, 2049, 3001}) {
      for (MaskKind kind : all_mask_kinds) {
        ++seed;
        const auto& [h, hkv] = heads[seed % heads.size()];
        Random rng(seed);
        EXPECT_TRUE(check_against_reference<Scalar>(Case{n, m, 16, 8, h, hkv},
                                                    make_mask<Scalar>(kind, n, m, rng), {}, seed));
      }
    }
  }
  // Whole parts hidden: a short window at the end of many keys, a keep hiding the first 2000
  // keys, a −∞ bias on keys [512, 1536), and a keep that hides everything.
  const Index n = 2, m = 3001;
  EXPECT_TRUE(check_against_reference<Scalar>(
      {1, 5000, 16, 8, 4, 2},
      both("window(300, 0)", attn::Mask::window(300, 0), ReferenceMask::window(300, 0)), {},
      ++seed));
  MatrixB keep = MatrixB::Constant(n, m, true);
  keep.leftCols(2000).setConstant(false);
  EXPECT_TRUE(check_against_reference<Scalar>(
      {n, m, 16, 8, 2, 1},
      both("keep hiding [0, 2000)", attn::Mask::keep(keep), ReferenceMask::keep(keep)), {},
      ++seed));
  attn::Matrix<Scalar> bias = attn::Matrix<Scalar>::Zero(n, m);
  bias.middleCols(512, 1024).setConstant(-std::numeric_limits<Scalar>::infinity());
  EXPECT_TRUE(check_against_reference<Scalar>(
      {n, m, 16, 8, 2, 2},
      both("bias -inf on [512, 1536)", attn::Mask::bias(bias), ReferenceMask::bias(bias)), {},
      ++seed));
  const MatrixB nothing = MatrixB::Constant(n, m, false);
  EXPECT_TRUE(check_against_reference<Scalar>(
      {n, m, 16, 8, 2, 2},
      both("keep all false", attn::Mask::keep(nothing), ReferenceMask::keep(nothing)), {}, ++seed));
}

TYPED_TEST(ScaledDotProduct, MatchesReferenceWithExplicitScale) {
  std::uint32_t seed = 5000;
  for (double scale : {0.0, 0.05, 1.0, 3.0, -0.5}) {
    attn::AttentionOptions options;
    options.scale = scale;
    for (const Case& c : {Case{50, 130, 16, 8}, Case{130, 50, 16, 8}}) {
      EXPECT_TRUE(check_against_reference<TypeParam>(c, both("none", attn::Mask(), ReferenceMask()),
                                                     options, ++seed));
      EXPECT_TRUE(check_against_reference<TypeParam>(
          c, both("causal", attn::Mask::causal(), ReferenceMask::causal()), options, ++seed));
    }
  }
}

// Soft-capping: softcap·tanh(logit/softcap) on the scaled logits, before the bias and the mask.
// Queries in ±4 make logits up to 4·√d = 16, so small caps really cap.
TYPED_TEST(ScaledDotProduct, MatchesReferenceWithSoftcap) {
  std::uint32_t seed = 6000;
  for (double softcap : {0.5, 5.0, 30.0}) {
    for (std::optional<double> scale : {std::optional<double>(), std::optional<double>(0.7)}) {
      attn::AttentionOptions options;
      options.softcap = softcap;
      options.scale = scale;
      for (MaskKind kind :
           {MaskKind::None, MaskKind::Causal, MaskKind::Bias, MaskKind::BiasInfinite}) {
        const Case c{70, 150, 16, 16};
        Random rng(++seed);
        EXPECT_TRUE(check_against_reference<TypeParam>(c, make_mask<TypeParam>(kind, c.n, c.m, rng),
                                                       options, seed, 4.0));
      }
    }
  }
}

// Heads as column blocks: H = Hkv, grouped-query (8, 2), multi-query (Hkv = 1), odd counts.
TYPED_TEST(ScaledDotProduct, MatchesReferenceWithHeads) {
  const std::vector<std::pair<Index, Index>> heads = {{4, 4}, {8, 2}, {8, 1},
                                                      {3, 3}, {6, 3}, {5, 1}};
  const std::vector<std::pair<Index, Index>> sizes = {{50, 70}, {70, 50}, {130, 257}};
  std::uint32_t seed = 7000;
  for (const auto& [h, hkv] : heads) {
    for (const auto& [n, m] : sizes) {
      for (MaskKind kind :
           {MaskKind::None, MaskKind::Causal, MaskKind::KeepAndCausal, MaskKind::BiasInfinite}) {
        const Case c{n, m, 8, 6, h, hkv};
        Random rng(++seed);
        EXPECT_TRUE(
            check_against_reference<TypeParam>(c, make_mask<TypeParam>(kind, n, m, rng), {}, seed));
      }
    }
  }
}

// Query head h of a grouped-query call is the single-head call of q's block h over kv head
// h / (H / Hkv): the same code on the same strided views, so bitwise equal.
// With several query blocks per head, the multi-head call packs each kv head's strided K and V
// (detail/kernel_scratch.hpp, HeadKeyValues) while the single-head calls read theirs in place: the two
// must agree bit for bit.
TYPED_TEST(ScaledDotProduct, GroupedQueryHeadIsSingleHeadOverItsKvHead) {
  using Scalar = TypeParam;
  Random rng(71);
  const Index n = 150, m = 90, d = 8, dv = 5, h_count = 8, kv_count = 2;
  const attn::Matrix<Scalar> q = rng.uniform_matrix<Scalar>(n, h_count * d);
  const attn::Matrix<Scalar> k = rng.uniform_matrix<Scalar>(m, kv_count * d);
  const attn::Matrix<Scalar> v = rng.uniform_matrix<Scalar>(m, kv_count * dv);
  attn::AttentionOptions options;
  options.num_heads = h_count;
  options.num_kv_heads = kv_count;
  const attn::Matrix<Scalar> all =
      attn::scaled_dot_product_attention(q, k, v, attn::Mask::causal(), options);
  for (Index h = 0; h < h_count; ++h) {
    const Index g = h / (h_count / kv_count);
    const attn::Matrix<Scalar> one =
        attn::scaled_dot_product_attention(q.middleCols(h * d, d), k.middleCols(g * d, d),
                                           v.middleCols(g * dv, dv), attn::Mask::causal());
    EXPECT_TRUE(bitwise_equal(all.middleCols(h * dv, dv), one)) << "head " << h;
  }
}

// A bias in the other precision than the call is converted once; the reference reads the bias as
// given, so the tolerance includes the rounding of |bias| ≤ 2 to Scalar (in the logit bound).
TYPED_TEST(ScaledDotProduct, BiasInTheOtherPrecision) {
  using Scalar = TypeParam;
  using Other = std::conditional_t<std::is_same_v<Scalar, float>, double, float>;
  std::uint32_t seed = 8000;
  for (MaskKind kind : {MaskKind::Bias, MaskKind::BiasInfinite, MaskKind::BiasAndCausal}) {
    for (const Case& c : {Case{40, 170, 16, 8}, Case{170, 40, 16, 8, 4, 2}}) {
      Random rng(++seed);
      EXPECT_TRUE(
          check_against_reference<Scalar>(c, make_mask<Other>(kind, c.n, c.m, rng), {}, seed));
    }
  }
  // And a float bias composed with a double bias.
  Random rng(++seed);
  const Index n = 30, m = 70;
  const attn::Matrix<float> bias_f = rng.uniform_matrix<float>(n, m, -1, 1);
  const attn::Matrix<double> bias_d = rng.uniform_matrix<double>(n, m, -1, 1);
  EXPECT_TRUE(check_against_reference<Scalar>(
      {n, m, 16, 8},
      both("float bias & double bias", attn::Mask::bias(bias_f) & attn::Mask::bias(bias_d),
           ReferenceMask::bias(bias_f) & ReferenceMask::bias(bias_d), 2),
      {}, seed));
}

// ---------------------------------------------------------------------------------------------
// Invariants
// ---------------------------------------------------------------------------------------------

// With v = I (m × m) the output is the attention matrix P itself: each row sums to 1 (or is all
// zero when it sees nothing), hidden positions are exactly 0, visible ones are > 0.
TYPED_TEST(ScaledDotProduct, AttentionWeightsSumToOneAndHiddenKeysGetZero) {
  using Scalar = TypeParam;
  std::uint32_t seed = 9000;
  for (const auto& [n, m] : {std::pair<Index, Index>{20, 150}, {150, 20}, {129, 129}}) {
    for (MaskKind kind : all_mask_kinds) {
      Random rng(++seed);
      const MaskPair mask = make_mask<Scalar>(kind, n, m, rng);
      const attn::Matrix<Scalar> q = rng.uniform_matrix<Scalar>(n, 16);
      const attn::Matrix<Scalar> k = rng.uniform_matrix<Scalar>(m, 16);
      const attn::Matrix<Scalar> p =
          attn::scaled_dot_product_attention(q, k, attn::Matrix<Scalar>::Identity(m, m), mask.mask);
      const MatrixB allowed = mask.reference.allowed(n, m);
      const MatrixD bias = mask.reference.bias(n, m);
      const double tol = attn_test::attention_tolerance<Scalar>(4.0 + mask.bias_bound, m);
      for (Index i = 0; i < n; ++i) {
        bool any_visible = false;
        for (Index j = 0; j < m; ++j) {
          const bool visible = allowed(i, j) && (bias.size() == 0 || bias(i, j) != -infinity);
          any_visible = any_visible || visible;
          if (visible) {
            EXPECT_GT(p(i, j), Scalar(0)) << name(kind) << " (" << i << ", " << j << ")";
          } else {
            EXPECT_EQ(p(i, j), Scalar(0)) << name(kind) << " (" << i << ", " << j << ")";
          }
        }
        const double row_sum = p.row(i).template cast<double>().sum();
        EXPECT_NEAR(row_sum, any_visible ? 1.0 : 0.0, tol)
            << name(kind) << " row " << i << " n=" << n << " m=" << m;
      }
    }
  }
}

// scale = 0: every visible key weighs the same, so each row is the mean of its visible values.
TYPED_TEST(ScaledDotProduct, ZeroScaleAveragesTheVisibleValues) {
  using Scalar = TypeParam;
  Random rng(91);
  const Index n = 10, m = 300, dv = 3;
  const attn::Matrix<Scalar> q = rng.uniform_matrix<Scalar>(n, 8);
  const attn::Matrix<Scalar> k = rng.uniform_matrix<Scalar>(m, 8);
  const attn::Matrix<Scalar> v = rng.uniform_matrix<Scalar>(m, dv);
  attn::AttentionOptions options;
  options.scale = 0.0;
  const attn::Matrix<Scalar> got =
      attn::scaled_dot_product_attention(q, k, v, attn::Mask::window(100, 0), options);
  MatrixD expected(n, dv);
  for (Index i = 0; i < n; ++i) {
    const Index last = i + m - n;  // bottom-right aligned
    expected.row(i) = v.middleRows(last - 100, 101).template cast<double>().colwise().mean();
  }
  EXPECT_MATRIX_NEAR(got, expected, attn_test::attention_tolerance<Scalar>(0.0, m));
}

// A reach larger than any index must behave like Mask::unbounded (the documented contract is
// "reaches are ≥ 0 or unbounded"), also for n > m where positions i + m − n are negative.
TYPED_TEST(ScaledDotProduct, HugeWindowReachEqualsUnbounded) {
  using Scalar = TypeParam;
  const Index huge = std::numeric_limits<Index>::max();
  for (const auto& [n, m] : {std::pair<Index, Index>{30, 200}, {200, 30}}) {
    Random rng(static_cast<std::uint32_t>(n + m));
    const attn::Matrix<Scalar> q = rng.uniform_matrix<Scalar>(n, 8);
    const attn::Matrix<Scalar> k = rng.uniform_matrix<Scalar>(m, 8);
    const attn::Matrix<Scalar> v = rng.uniform_matrix<Scalar>(m, 4);
    const auto run = [&](const attn::Mask& mask) {
      return attn::scaled_dot_product_attention(q, k, v, mask);
    };
    EXPECT_TRUE(bitwise_equal(run(attn::Mask::window(huge, 0)), run(attn::Mask::causal())))
        << "window(max, 0) vs causal, n=" << n << " m=" << m;
    EXPECT_TRUE(bitwise_equal(run(attn::Mask::window(0, huge)),
                              run(attn::Mask::window(0, attn::Mask::unbounded))))
        << "window(0, max) vs window(0, unbounded), n=" << n << " m=" << m;
    EXPECT_TRUE(bitwise_equal(run(attn::Mask::window(huge, huge)), run(attn::Mask::none())))
        << "window(max, max) vs none, n=" << n << " m=" << m;
  }
}

// ---------------------------------------------------------------------------------------------
// Memory layouts: blocks, strided maps, column-major matrices and expressions
// ---------------------------------------------------------------------------------------------

TYPED_TEST(ScaledDotProduct, NonContiguousInputsGiveTheSameResult) {
  using Scalar = TypeParam;
  using ColMajor = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::ColMajor>;
  Random rng(101);
  const Index n = 77, m = 150, d = 24, dv = 12;
  const attn::Matrix<Scalar> q = rng.uniform_matrix<Scalar>(n, d);
  const attn::Matrix<Scalar> k = rng.uniform_matrix<Scalar>(m, d);
  const attn::Matrix<Scalar> v = rng.uniform_matrix<Scalar>(m, dv);
  const attn::Mask mask = attn::Mask::causal();
  const attn::Matrix<Scalar> contiguous = attn::scaled_dot_product_attention(q, k, v, mask);
  EXPECT_MATRIX_NEAR(contiguous,
                     attn_test::reference_multi_head(q, k, v, 1, 1, ReferenceMask::causal()),
                     attn_test::attention_tolerance<Scalar>(std::sqrt(double(d)), m));

  // Blocks of larger matrices (read in place through the row stride), at odd offsets.
  attn::Matrix<Scalar> big_q = rng.uniform_matrix<Scalar>(n + 5, d + 7);
  attn::Matrix<Scalar> big_k = rng.uniform_matrix<Scalar>(m + 3, d + 3);
  attn::Matrix<Scalar> big_v = rng.uniform_matrix<Scalar>(m + 9, dv + 1);
  big_q.block(3, 5, n, d) = q;
  big_k.block(1, 3, m, d) = k;
  big_v.block(9, 1, m, dv) = v;
  const attn::Matrix<Scalar> blocks = attn::scaled_dot_product_attention(
      big_q.block(3, 5, n, d), big_k.block(1, 3, m, d), big_v.block(9, 1, m, dv), mask);
  EXPECT_TRUE(bitwise_equal(blocks, contiguous)) << "blocks of larger matrices";

  // Strided Maps over raw buffers.
  using StridedMap = Eigen::Map<const attn::Matrix<Scalar>, Eigen::Unaligned, Eigen::OuterStride<>>;
  const StridedMap q_map(big_q.data() + 3 * big_q.cols() + 5, n, d,
                         Eigen::OuterStride<>(big_q.cols()));
  const StridedMap k_map(big_k.data() + 1 * big_k.cols() + 3, m, d,
                         Eigen::OuterStride<>(big_k.cols()));
  const StridedMap v_map(big_v.data() + 9 * big_v.cols() + 1, m, dv,
                         Eigen::OuterStride<>(big_v.cols()));
  EXPECT_TRUE(
      bitwise_equal(attn::scaled_dot_product_attention(q_map, k_map, v_map, mask), contiguous))
      << "strided maps";

  // Column-major matrices (evaluated once into row-major storage).
  const ColMajor q_col = q, k_col = k, v_col = v;
  EXPECT_TRUE(
      bitwise_equal(attn::scaled_dot_product_attention(q_col, k_col, v_col, mask), contiguous))
      << "column-major inputs";
  // Transposed expressions of column-major storage.
  const ColMajor k_t = k.transpose();
  EXPECT_TRUE(
      bitwise_equal(attn::scaled_dot_product_attention(q, k_t.transpose(), v, mask), contiguous))
      << "a transposed expression";

  // An arithmetic expression equals its evaluated value.
  const attn::Matrix<Scalar> q2 = Scalar(2) * q;
  EXPECT_TRUE(bitwise_equal(attn::scaled_dot_product_attention(Scalar(2) * q, k, v, mask),
                            attn::scaled_dot_product_attention(q2, k, v, mask)))
      << "the expression 2 * q";
}

TYPED_TEST(ScaledDotProduct, IntoABlockWritesOnlyThatBlock) {
  using Scalar = TypeParam;
  Random rng(111);
  const Index n = 70, m = 90, d = 8, dv = 6;
  const attn::Matrix<Scalar> q = rng.uniform_matrix<Scalar>(n, 2 * d);
  const attn::Matrix<Scalar> k = rng.uniform_matrix<Scalar>(m, d);
  const attn::Matrix<Scalar> v = rng.uniform_matrix<Scalar>(m, dv);
  attn::AttentionOptions options;
  options.num_heads = 2;
  options.num_kv_heads = 1;
  const attn::Matrix<Scalar> expected =
      attn::scaled_dot_product_attention(q, k, v, attn::Mask::causal(), options);

  const Scalar sentinel = Scalar(7.25);
  attn::Matrix<Scalar> big = attn::Matrix<Scalar>::Constant(n + 6, 2 * dv + 5, sentinel);
  attn::scaled_dot_product_attention_into(q, k, v, big.block(4, 3, n, 2 * dv), attn::Mask::causal(),
                                          options);
  EXPECT_TRUE(bitwise_equal(big.block(4, 3, n, 2 * dv), expected));
  attn::Matrix<Scalar> outside = big;
  outside.block(4, 3, n, 2 * dv).setConstant(sentinel);
  EXPECT_TRUE((outside.array() == sentinel).all()) << "wrote outside its block";

  // Into a row block of a matrix of exactly the output's width.
  attn::Matrix<Scalar> rows = attn::Matrix<Scalar>::Constant(n + 2, 2 * dv, sentinel);
  attn::scaled_dot_product_attention_into(q, k, v, rows.middleRows(1, n), attn::Mask::causal(),
                                          options);
  EXPECT_TRUE(bitwise_equal(rows.middleRows(1, n), expected));
  EXPECT_TRUE((rows.row(0).array() == sentinel).all() &&
              (rows.row(n + 1).array() == sentinel).all());
}

// ---------------------------------------------------------------------------------------------
// Threads
// ---------------------------------------------------------------------------------------------

// Work items (head, query tile) are independent and each is computed by the same code whatever
// thread runs it, so any executor must give bitwise the serial result.
// (The decode path splits keys by the shape only, so the same holds for it.)
TYPED_TEST(ScaledDotProduct, ExecutorsAreBitwiseEqualToSerial) {
  using Scalar = TypeParam;
  // Runs every item as a chunk of one, last item first.
  const attn::Executor reversed = [](Index count, const attn::RangeFunction& work) {
    for (Index item = count - 1; item >= 0; --item)
      work(item, item + 1);
  };
  for (const auto& [n, m] : {std::pair<Index, Index>{300, 400}, {1, 5000}, {3, 2500}}) {
    Random rng(static_cast<std::uint32_t>(121 + n));
    const Index d = 16, dv = 8;
    const attn::Matrix<Scalar> q = rng.uniform_matrix<Scalar>(n, 4 * d);
    const attn::Matrix<Scalar> k = rng.uniform_matrix<Scalar>(m, 2 * d);
    const attn::Matrix<Scalar> v = rng.uniform_matrix<Scalar>(m, 2 * dv);
    const MatrixB keep = rng.bernoulli_matrix(n, m, 0.8);
    for (const attn::Mask& mask : {attn::Mask(), attn::Mask::causal(),
                                   attn::Mask::keep(keep) & attn::Mask::window(1500, 10)}) {
      attn::AttentionOptions options;
      options.num_heads = 4;
      options.num_kv_heads = 2;
      options.executor = attn::serial_executor;
      const attn::Matrix<Scalar> serial =
          attn::scaled_dot_product_attention(q, k, v, mask, options);
      const std::string where = " n=" + std::to_string(n) + " m=" + std::to_string(m);
      EXPECT_TRUE(bitwise_equal(attn::scaled_dot_product_attention(q, k, v, mask, options), serial))
          << "serial twice" << where;
      for (int threads : {1, 2, 3}) {
        options.executor = attn::thread_executor(threads);
        EXPECT_TRUE(
            bitwise_equal(attn::scaled_dot_product_attention(q, k, v, mask, options), serial))
            << "thread_executor(" << threads << ")" << where;
      }
      options.executor = reversed;
      EXPECT_TRUE(bitwise_equal(attn::scaled_dot_product_attention(q, k, v, mask, options), serial))
          << "reversed" << where;
      options.executor = {};
      EXPECT_TRUE(bitwise_equal(attn::scaled_dot_product_attention(q, k, v, mask, options), serial))
          << "default" << where;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Extras: log-sum-exp and attention weights
// ---------------------------------------------------------------------------------------------

// The log-sum-exp (n × H) of each row's logits and the weights softmax(logits) ((H·n) × m, or
// n × m averaged over heads) against the reference's, on the tiled and the decode shapes; rows
// that see nothing have lse −∞ and zero weights. Both are computed from logits with the error
// discussed in support/tolerance.hpp, so the same tolerance applies (lse is compared relative to
// max(1, |lse|), weights are ≤ 1).
TYPED_TEST(ScaledDotProduct, ExtrasMatchReference) {
  using Scalar = TypeParam;
  const std::vector<Case> cases = {{40, 170, 16, 8, 4, 2}, {170, 40, 16, 8, 2, 2},
                                   {130, 257, 8, 8, 1, 1}, {1, 3000, 16, 8, 8, 2},
                                   {3, 1100, 16, 8, 2, 1}, {1, 1, 4, 4, 1, 1}};
  std::uint32_t seed = 11000;
  for (const Case& c : cases) {
    for (MaskKind kind :
         {MaskKind::None, MaskKind::Causal, MaskKind::KeepAndCausal, MaskKind::BiasInfinite}) {
      Random rng(++seed);
      const MaskPair mask = make_mask<Scalar>(kind, c.n, c.m, rng);
      const attn::Matrix<Scalar> q = rng.uniform_matrix<Scalar>(c.n, c.heads * c.d);
      const attn::Matrix<Scalar> k = rng.uniform_matrix<Scalar>(c.m, c.kv_heads * c.d);
      const attn::Matrix<Scalar> v = rng.uniform_matrix<Scalar>(c.m, c.kv_heads * c.dv);
      attn::AttentionOptions options;
      options.num_heads = c.heads;
      options.num_kv_heads = c.kv_heads;
      MatrixD expected_lse, expected_weights;
      const MatrixD expected =
          attn_test::reference_multi_head(q, k, v, c.heads, c.kv_heads, mask.reference,
                                          std::nullopt, 0.0, &expected_lse, &expected_weights);
      const double tol =
          attn_test::attention_tolerance<Scalar>(std::sqrt(double(c.d)) + mask.bias_bound, c.m);
      const std::string where = describe(c, mask, options, seed);

      attn::Matrix<Scalar> lse;
      attn::AttentionExtras<Scalar> lse_only;
      lse_only.log_sum_exp = &lse;
      EXPECT_TRUE(attn_test::matrix_near(
          attn::scaled_dot_product_attention(q, k, v, mask.mask, options, lse_only), expected, tol))
          << where;
      EXPECT_TRUE(attn_test::matrix_near(lse, expected_lse, tol)) << "log_sum_exp " << where;

      attn::Matrix<Scalar> weights, lse2;
      attn::AttentionExtras<Scalar> both_extras;
      both_extras.log_sum_exp = &lse2;
      both_extras.weights = &weights;
      EXPECT_TRUE(attn_test::matrix_near(
          attn::scaled_dot_product_attention(q, k, v, mask.mask, options, both_extras), expected,
          tol))
          << where;
      EXPECT_TRUE(attn_test::matrix_near(lse2, expected_lse, tol))
          << "log_sum_exp with weights " << where;
      EXPECT_TRUE(attn_test::matrix_near(weights, expected_weights, tol)) << "weights " << where;

      attn::Matrix<Scalar> averaged;
      attn::AttentionExtras<Scalar> average;
      average.weights = &averaged;
      average.average_heads = true;
      attn::scaled_dot_product_attention(q, k, v, mask.mask, options, average);
      MatrixD expected_average = MatrixD::Zero(c.n, c.m);
      for (Index h = 0; h < c.heads; ++h)
        expected_average += expected_weights.middleRows(h * c.n, c.n);
      expected_average /= static_cast<double>(c.heads);
      EXPECT_TRUE(attn_test::matrix_near(averaged, expected_average, tol))
          << "averaged weights " << where;
    }
  }
}

// Extras are resized only after every check has passed: a failing call leaves them alone.
TYPED_TEST(ScaledDotProduct, ExtrasAreUntouchedOnShapeError) {
  using Scalar = TypeParam;
  using M = attn::Matrix<Scalar>;
  M lse = M::Constant(2, 3, Scalar(4)), weights = M::Constant(3, 2, Scalar(5));
  attn::AttentionExtras<Scalar> extras;
  extras.log_sum_exp = &lse;
  extras.weights = &weights;
  EXPECT_SHAPE_ERROR(attn::scaled_dot_product_attention(M::Ones(5, 8), M::Ones(7, 8), M::Ones(6, 4),
                                                        {}, {}, extras),
                     "v is 6x4", "k is 7x8");
  EXPECT_TRUE(bitwise_equal(lse, M::Constant(2, 3, Scalar(4))));
  EXPECT_TRUE(bitwise_equal(weights, M::Constant(3, 2, Scalar(5))));
}

// ---------------------------------------------------------------------------------------------
// Empty inputs
// ---------------------------------------------------------------------------------------------

TYPED_TEST(ScaledDotProduct, NoQueriesGiveAnEmptyResult) {
  using Scalar = TypeParam;
  Random rng(131);
  const Index m = 20, d = 8, dv = 5;
  const attn::Matrix<Scalar> q(0, 2 * d);
  const attn::Matrix<Scalar> k = rng.uniform_matrix<Scalar>(m, d);
  const attn::Matrix<Scalar> v = rng.uniform_matrix<Scalar>(m, dv);
  attn::AttentionOptions options;
  options.num_heads = 2;
  options.num_kv_heads = 1;
  for (const attn::Mask& mask :
       {attn::Mask(), attn::Mask::causal(), attn::Mask::keep(MatrixB(0, m)),
        attn::Mask::bias(attn::Matrix<Scalar>(0, m))}) {
    const attn::Matrix<Scalar> out = attn::scaled_dot_product_attention(q, k, v, mask, options);
    EXPECT_EQ(out.rows(), 0);
    EXPECT_EQ(out.cols(), 2 * dv);
  }
  EXPECT_EQ(attn::scaled_dot_product_attention(q.leftCols(d), k, v).cols(), dv);
}

TYPED_TEST(ScaledDotProduct, NoKeysGiveZeros) {
  using Scalar = TypeParam;
  Random rng(141);
  const Index n = 70, d = 8, dv = 5;
  const attn::Matrix<Scalar> q = rng.uniform_matrix<Scalar>(n, 2 * d);
  const attn::Matrix<Scalar> k(0, d);
  const attn::Matrix<Scalar> v(0, dv);
  attn::AttentionOptions options;
  options.num_heads = 2;
  options.num_kv_heads = 1;
  for (const attn::Mask& mask :
       {attn::Mask(), attn::Mask::causal(), attn::Mask::window(3, 3),
        attn::Mask::keep(MatrixB(n, 0)), attn::Mask::bias(attn::Matrix<Scalar>(n, 0))}) {
    const attn::Matrix<Scalar> out = attn::scaled_dot_product_attention(q, k, v, mask, options);
    EXPECT_TRUE(bitwise_equal(out, attn::Matrix<Scalar>::Zero(n, 2 * dv)));
  }
  const attn::Matrix<Scalar> none =
      attn::scaled_dot_product_attention(attn::Matrix<Scalar>(0, d), k, v);
  EXPECT_EQ(none.rows(), 0);
  EXPECT_EQ(none.cols(), dv);
}

// ---------------------------------------------------------------------------------------------
// Shape errors: ShapeError (a std::invalid_argument) naming the argument and both shapes
// ---------------------------------------------------------------------------------------------

TYPED_TEST(ScaledDotProduct, ShapeErrorsNameTheArgumentAndBothShapes) {
  using Scalar = TypeParam;
  using M = attn::Matrix<Scalar>;
  const M q = M::Ones(5, 8), k = M::Ones(7, 8), v = M::Ones(7, 4);

  // q.cols() vs k.cols(): the head dims differ.
  EXPECT_SHAPE_ERROR(attn::scaled_dot_product_attention(q, M::Ones(7, 6), M::Ones(7, 6)),
                     "k is 7x6", "q is 5x8");
  // K and V row counts.
  EXPECT_SHAPE_ERROR(attn::scaled_dot_product_attention(q, k, M::Ones(6, 4)), "v is 6x4",
                     "k is 7x8");
  // Heads: q.cols() not a multiple of num_heads, k.cols() not Hkv·d, v.cols() not a multiple of Hkv.
  attn::AttentionOptions heads;
  heads.num_heads = 3;
  EXPECT_SHAPE_ERROR(attn::scaled_dot_product_attention(q, k, v, {}, heads), "q is 5x8",
                     "num_heads 3");
  heads.num_heads = 4;
  heads.num_kv_heads = 2;
  EXPECT_SHAPE_ERROR(attn::scaled_dot_product_attention(q, k, v, {}, heads), "k is 7x8", "q is 5x8",
                     "2*2 = 4");
  EXPECT_SHAPE_ERROR(attn::scaled_dot_product_attention(q, M::Ones(7, 4), M::Ones(7, 5), {}, heads),
                     "v is 7x5", "num_kv_heads 2");
  heads.num_kv_heads = 3;
  EXPECT_SHAPE_ERROR(attn::scaled_dot_product_attention(q, k, v, {}, heads), "num_kv_heads is 3",
                     "num_heads 4");
  heads.num_kv_heads = -1;
  EXPECT_SHAPE_ERROR(attn::scaled_dot_product_attention(q, k, v, {}, heads), "num_kv_heads is -1");
  heads.num_heads = 0;
  heads.num_kv_heads = 0;
  EXPECT_SHAPE_ERROR(attn::scaled_dot_product_attention(q, k, v, {}, heads), "num_heads is 0");

  // The output of the _into overload.
  M out = M::Constant(5, 3, Scalar(9));
  EXPECT_SHAPE_ERROR(attn::scaled_dot_product_attention_into(q, k, v, out), "out is 5x3", "5x4");
  EXPECT_TRUE((out.array() == Scalar(9)).all()) << "out must be untouched after a ShapeError";
  M out_rows = M::Constant(6, 4, Scalar(9));
  EXPECT_SHAPE_ERROR(attn::scaled_dot_product_attention_into(q, k, v, out_rows), "out is 6x4",
                     "5x4");

  // Explicit masks of the wrong shape, and out untouched when the mask is what fails.
  M good_out = M::Constant(5, 4, Scalar(9));
  EXPECT_SHAPE_ERROR(attn::scaled_dot_product_attention_into(
                         q, k, v, good_out, attn::Mask::keep(MatrixB::Constant(4, 7, true))),
                     "scaled_dot_product_attention", "keep", "4x7", "5x7");
  EXPECT_TRUE((good_out.array() == Scalar(9)).all()) << "out must be untouched after a ShapeError";
  EXPECT_SHAPE_ERROR(attn::scaled_dot_product_attention(q, k, v, attn::Mask::bias(M::Zero(5, 6))),
                     "bias", "5x6", "5x7");
  EXPECT_SHAPE_ERROR(
      attn::scaled_dot_product_attention(
          q, k, v, attn::Mask::causal() & attn::Mask::bias(attn::Matrix<double>::Zero(7, 5))),
      "bias", "7x5", "5x7");

  // Options: non-finite scale, negative or non-finite softcap.
  attn::AttentionOptions options;
  options.scale = std::numeric_limits<double>::infinity();
  EXPECT_SHAPE_ERROR(attn::scaled_dot_product_attention(q, k, v, {}, options), "scale");
  options.scale = std::numeric_limits<double>::quiet_NaN();
  EXPECT_SHAPE_ERROR(attn::scaled_dot_product_attention(q, k, v, {}, options), "scale");
  options.scale.reset();
  options.softcap = -1;
  EXPECT_SHAPE_ERROR(attn::scaled_dot_product_attention(q, k, v, {}, options), "softcap is -1");
  options.softcap = std::numeric_limits<double>::infinity();
  EXPECT_SHAPE_ERROR(attn::scaled_dot_product_attention(q, k, v, {}, options), "softcap");
  options.softcap = std::numeric_limits<double>::quiet_NaN();
  EXPECT_SHAPE_ERROR(attn::scaled_dot_product_attention(q, k, v, {}, options), "softcap");
}

}  // namespace
