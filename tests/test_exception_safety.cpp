// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors

// The strong guarantee on bad input: every function that throws attn::ShapeError (or its
// CapacityError) leaves what it would have written exactly as it was: `out`, the extras
// (log-sum-exp, weights), a KV cache, a merge target, the caller's variables; and the functor or
// cache still works afterwards. Outputs are filled with a sentinel first and compared bitwise.

#include <attn/cross_attention.hpp>
#include <attn/kv_cache.hpp>
#include <attn/mask.hpp>
#include <attn/multi_head.hpp>
#include <attn/partial_attention.hpp>
#include <attn/scaled_dot_product.hpp>
#include <attn/self_attention.hpp>
#include <gtest/gtest.h>

#include <functional>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "support/random.hpp"
#include "support/shape_error.hpp"

namespace {

using attn::Index;
using attn::Mask;
using attn_test::Random;

template <typename Scalar>
class ExceptionSafety : public ::testing::Test {};
using Scalars = ::testing::Types<float, double>;
TYPED_TEST_SUITE(ExceptionSafety, Scalars);

/// A matrix of the given shape holding a pattern no attention call produces.
template <typename Scalar>
attn::Matrix<Scalar> sentinel(Index rows, Index cols) {
  attn::Matrix<Scalar> m = attn::Matrix<Scalar>::Constant(rows, cols, Scalar(7.25));
  if (m.size() > 0) m(0, 0) = Scalar(-3.5);
  return m;
}

template <typename A, typename B>
::testing::AssertionResult bitwise_equal(const Eigen::MatrixBase<A>& a,
                                         const Eigen::MatrixBase<B>& b) {
  if (a.rows() != b.rows() || a.cols() != b.cols()) {
    return ::testing::AssertionFailure() << "shape changed: " << a.rows() << "x" << a.cols()
                                         << ", was " << b.rows() << "x" << b.cols();
  }
  for (Index r = 0; r < a.rows(); ++r) {
    for (Index c = 0; c < a.cols(); ++c) {
      if (!(a(r, c) == b(r, c))) {
        return ::testing::AssertionFailure()
               << "(" << r << ", " << c << ") changed: " << a(r, c) << ", was " << b(r, c);
      }
    }
  }
  return ::testing::AssertionSuccess();
}

// ---------------------------------------------------------------------------------------------
// The kernel
// ---------------------------------------------------------------------------------------------

/// A valid problem (n = 10, m = 12, H = 2, Hkv = 1, d = 4, dv = 3) and one way to spoil it.
template <typename Scalar>
struct KernelCase {
  std::string name;
  attn::Matrix<Scalar> q, k, v;
  Index out_rows = 10, out_cols = 6;  // a wrong out shape is an error of the _into form only
  Mask mask;
  attn::AttentionOptions options;
};

template <typename Scalar>
std::vector<KernelCase<Scalar>> bad_kernel_cases() {
  Random rng(801);
  KernelCase<Scalar> valid;
  valid.q = rng.uniform_matrix<Scalar>(10, 8);
  valid.k = rng.uniform_matrix<Scalar>(12, 4);
  valid.v = rng.uniform_matrix<Scalar>(12, 3);
  valid.options.num_heads = 2;
  valid.options.num_kv_heads = 1;
  valid.mask = Mask::causal();
  const double inf = std::numeric_limits<double>::infinity();
  const double nan = std::numeric_limits<double>::quiet_NaN();

  std::vector<KernelCase<Scalar>> cases;
  const auto add = [&](std::string name, const std::function<void(KernelCase<Scalar>&)>& spoil) {
    KernelCase<Scalar> c = valid;
    c.name = std::move(name);
    spoil(c);
    cases.push_back(std::move(c));
  };
  add("num_heads 0", [](auto& c) { c.options.num_heads = 0; });
  add("num_heads -1", [](auto& c) { c.options.num_heads = -1; });
  add("num_kv_heads 3 does not divide 2", [](auto& c) { c.options.num_kv_heads = 3; });
  add("num_kv_heads -1", [](auto& c) { c.options.num_kv_heads = -1; });
  add("q.cols() not a multiple of heads",
      [&](auto& c) { c.q = rng.uniform_matrix<Scalar>(10, 7); });
  add("k.cols() != head_dim", [&](auto& c) { c.k = rng.uniform_matrix<Scalar>(12, 5); });
  add("v.rows() != k.rows()", [&](auto& c) { c.v = rng.uniform_matrix<Scalar>(11, 3); });
  add("v.cols() not a multiple of kv heads", [&](auto& c) {
    c.options.num_kv_heads = 2;
    c.k = rng.uniform_matrix<Scalar>(12, 8);
    c.v = rng.uniform_matrix<Scalar>(12, 5);
  });
  add("out has too few columns", [](auto& c) { c.out_cols = 5; });
  add("out has too many rows", [](auto& c) { c.out_rows = 11; });
  add("keep matrix of the wrong shape",
      [](auto& c) { c.mask = Mask::keep(attn::Matrix<bool>::Constant(10, 11, true)); });
  add("bias matrix of the wrong shape",
      [](auto& c) { c.mask = Mask::causal() & Mask::bias(attn::Matrix<Scalar>::Zero(12, 12)); });
  add("bias of the other precision and the wrong shape", [](auto& c) {
    using Other = std::conditional_t<std::is_same_v<Scalar, float>, double, float>;
    c.mask = Mask::bias(attn::Matrix<Other>::Zero(12, 10));
  });
  add("scale +inf", [&](auto& c) { c.options.scale = inf; });
  add("scale NaN", [&](auto& c) { c.options.scale = nan; });
  add("softcap -1", [](auto& c) { c.options.softcap = -1; });
  add("softcap NaN", [&](auto& c) { c.options.softcap = nan; });
  add("softcap +inf", [&](auto& c) { c.options.softcap = inf; });
  return cases;
}

TYPED_TEST(ExceptionSafety, KernelIntoLeavesOutAndExtrasUntouched) {
  using Scalar = TypeParam;
  for (const KernelCase<Scalar>& c : bad_kernel_cases<Scalar>()) {
    attn::Matrix<Scalar> out = sentinel<Scalar>(c.out_rows, c.out_cols);
    attn::Matrix<Scalar> lse = sentinel<Scalar>(3, 2);
    attn::Matrix<Scalar> weights = sentinel<Scalar>(2, 5);
    const attn::Matrix<Scalar> out_before = out, lse_before = lse, weights_before = weights;
    attn::AttentionExtras<Scalar> extras;
    extras.log_sum_exp = &lse;
    extras.weights = &weights;
    EXPECT_SHAPE_ERROR(
        attn::scaled_dot_product_attention_into(c.q, c.k, c.v, out, c.mask, c.options, extras),
        "scaled_dot_product_attention")
        << c.name;
    EXPECT_TRUE(bitwise_equal(out, out_before)) << c.name << ": out";
    EXPECT_TRUE(bitwise_equal(lse, lse_before)) << c.name << ": log_sum_exp";
    EXPECT_TRUE(bitwise_equal(weights, weights_before)) << c.name << ": weights";

    // Into a block of a larger matrix: nothing around or inside the block is written either.
    attn::Matrix<Scalar> big = sentinel<Scalar>(c.out_rows + 4, c.out_cols + 3);
    const attn::Matrix<Scalar> big_before = big;
    EXPECT_SHAPE_ERROR(
        attn::scaled_dot_product_attention_into(
            c.q, c.k, c.v, big.block(2, 1, c.out_rows, c.out_cols), c.mask, c.options),
        "scaled_dot_product_attention")
        << c.name;
    EXPECT_TRUE(bitwise_equal(big, big_before)) << c.name << ": block of a larger matrix";

    if (c.out_rows != 10 || c.out_cols != 6) continue;
    // By value: the caller's variable keeps its old value.
    attn::Matrix<Scalar> result = sentinel<Scalar>(4, 4);
    EXPECT_SHAPE_ERROR(
        result = attn::scaled_dot_product_attention(c.q, c.k, c.v, c.mask, c.options, extras),
        "scaled_dot_product_attention")
        << c.name;
    EXPECT_TRUE(bitwise_equal(result, sentinel<Scalar>(4, 4))) << c.name << ": by value";
    EXPECT_TRUE(bitwise_equal(lse, lse_before)) << c.name << ": log_sum_exp, by value";
  }
}

// ---------------------------------------------------------------------------------------------
// Masks and weights: a failed construction or combination leaves the variable it was assigned to
// ---------------------------------------------------------------------------------------------

TYPED_TEST(ExceptionSafety, FailedMaskCompositionLeavesTheMaskAsItWas) {
  using Scalar = TypeParam;
  Random rng(802);
  const attn::Matrix<Scalar> q = rng.uniform_matrix<Scalar>(6, 4);
  const attn::Matrix<Scalar> k = rng.uniform_matrix<Scalar>(8, 4);
  const attn::Matrix<Scalar> v = rng.uniform_matrix<Scalar>(8, 2);
  Mask mask = Mask::keep(rng.bernoulli_matrix(6, 8, 0.6)) & Mask::window(3, 1);
  const attn::Matrix<Scalar> before = attn::scaled_dot_product_attention(q, k, v, mask);

  EXPECT_SHAPE_ERROR(mask = mask & Mask::keep(attn::Matrix<bool>::Constant(6, 7, true)), "keep");
  EXPECT_SHAPE_ERROR(mask = Mask::window(-2, 0), "Mask::window");
  attn::Matrix<Scalar> plus_infinity = attn::Matrix<Scalar>::Zero(6, 8);
  plus_infinity(2, 3) = std::numeric_limits<Scalar>::infinity();
  EXPECT_SHAPE_ERROR(mask = mask & Mask::bias(plus_infinity), "Mask::bias");
  EXPECT_EQ(mask.left(), 3);
  EXPECT_EQ(mask.right(), 1);
  EXPECT_FALSE(mask.has_bias());
  EXPECT_TRUE(bitwise_equal(attn::scaled_dot_product_attention(q, k, v, mask), before));
}

TYPED_TEST(ExceptionSafety, FailedWeightConversionLeavesTheWeightsAsTheyWere) {
  using Scalar = TypeParam;
  Random rng(803);
  attn::MultiHeadConfig cfg{/*model_dim*/ 8, /*num_heads*/ 2};
  attn::MultiHeadWeights<Scalar> w = attn_test::random_weights<Scalar>(cfg, rng);
  const attn::Matrix<Scalar> q_before = w.q_weight;
  EXPECT_SHAPE_ERROR(w = attn::MultiHeadWeights<Scalar>::from_pytorch(
                         rng.uniform_matrix<Scalar>(23, 8), attn::Vector<Scalar>::Zero(23),
                         rng.uniform_matrix<Scalar>(8, 8), attn::Vector<Scalar>::Zero(8)),
                     "in_proj_weight");
  EXPECT_SHAPE_ERROR(w = attn::MultiHeadWeights<Scalar>::from_pytorch(
                         rng.uniform_matrix<Scalar>(24, 8), attn::Vector<Scalar>::Zero(20),
                         rng.uniform_matrix<Scalar>(8, 8), attn::Vector<Scalar>::Zero(8)),
                     "in_proj_bias");
  EXPECT_TRUE(bitwise_equal(w.q_weight, q_before));
  EXPECT_EQ(w.k_weight.rows(), 8);
}

// ---------------------------------------------------------------------------------------------
// The functors: a throwing call changes nothing, and the functor still works
// ---------------------------------------------------------------------------------------------

TYPED_TEST(ExceptionSafety, SelfAttentionCallsLeaveTheirOutputsUntouched) {
  using Scalar = TypeParam;
  Random rng(804);
  attn::MultiHeadConfig cfg{/*model_dim*/ 16, /*num_heads*/ 4, /*num_kv_heads*/ 2};
  const attn::SelfAttention<Scalar> layer(cfg, attn_test::random_weights<Scalar>(cfg, rng));
  const attn::Matrix<Scalar> x = rng.uniform_matrix<Scalar>(9, 16);
  const attn::Matrix<Scalar> expected = layer(x, Mask::causal());

  attn::Matrix<Scalar> y = sentinel<Scalar>(2, 2);
  attn::Matrix<Scalar> lse = sentinel<Scalar>(3, 3);
  attn::AttentionExtras<Scalar> extras;
  extras.log_sum_exp = &lse;
  const attn::Matrix<bool> keep_9x8 = attn::Matrix<bool>::Constant(9, 8, true);
  EXPECT_SHAPE_ERROR(y = layer(rng.uniform_matrix<Scalar>(9, 15), Mask(), extras), "x is 9x15");
  EXPECT_SHAPE_ERROR(y = layer(x, Mask::keep(keep_9x8), extras), "keep");
  EXPECT_SHAPE_ERROR(y = layer(x, std::vector<Index>{4, 4}), "lengths");
  EXPECT_SHAPE_ERROR(y = layer(x, std::vector<Index>{10, -1}), "lengths");
  EXPECT_SHAPE_ERROR(y = layer(x, std::vector<Index>{4, 5}, Mask::keep(keep_9x8)), "one sequence");
  EXPECT_TRUE(bitwise_equal(y, sentinel<Scalar>(2, 2)));
  EXPECT_TRUE(bitwise_equal(lse, sentinel<Scalar>(3, 3)));
  EXPECT_TRUE(bitwise_equal(layer(x, Mask::causal()), expected)) << "the functor changed";
}

TYPED_TEST(ExceptionSafety, CrossAttentionCallsLeaveMemoryAndOutputsUntouched) {
  using Scalar = TypeParam;
  Random rng(805);
  attn::MultiHeadConfig cfg{/*model_dim*/ 16, /*num_heads*/ 4};
  cfg.source_dim = 12;
  const attn::CrossAttention<Scalar> cross(cfg, attn_test::random_weights<Scalar>(cfg, rng));
  attn::MultiHeadConfig other_cfg{/*model_dim*/ 16, /*num_heads*/ 4, /*num_kv_heads*/ 2};
  other_cfg.source_dim = 12;
  const attn::CrossAttention<Scalar> other(other_cfg,
                                           attn_test::random_weights<Scalar>(other_cfg, rng));
  const attn::Matrix<Scalar> target = rng.uniform_matrix<Scalar>(5, 16);
  const attn::Matrix<Scalar> source = rng.uniform_matrix<Scalar>(7, 12);
  auto memory = cross.remember(source);
  const attn::Matrix<Scalar> keys = memory.keys(), values = memory.values();
  const attn::Matrix<Scalar> expected = cross(target, memory);

  attn::Matrix<Scalar> y = sentinel<Scalar>(2, 2);
  EXPECT_SHAPE_ERROR(memory = cross.remember(rng.uniform_matrix<Scalar>(7, 11)), "source is 7x11");
  EXPECT_SHAPE_ERROR(memory = cross.remember(source, {3, 3}), "source_lengths");
  EXPECT_SHAPE_ERROR(y = cross(rng.uniform_matrix<Scalar>(5, 15), memory), "target is 5x15");
  EXPECT_SHAPE_ERROR(y = cross(target, other.remember(source)), "memory");
  EXPECT_SHAPE_ERROR(y = cross(target, source, Mask::bias(attn::Matrix<Scalar>::Zero(5, 6))),
                     "bias");
  EXPECT_SHAPE_ERROR(y = cross(target, std::vector<Index>{2, 3}, memory), "target_lengths");
  EXPECT_TRUE(bitwise_equal(y, sentinel<Scalar>(2, 2)));
  EXPECT_TRUE(bitwise_equal(memory.keys(), keys));
  EXPECT_TRUE(bitwise_equal(memory.values(), values));
  EXPECT_TRUE(bitwise_equal(cross(target, memory), expected)) << "the memory or functor changed";
}

// ---------------------------------------------------------------------------------------------
// KV caches
// ---------------------------------------------------------------------------------------------

TYPED_TEST(ExceptionSafety, KVCacheAppendLeavesTheCacheUnchanged) {
  using Scalar = TypeParam;
  Random rng(806);
  attn::KVCache<Scalar> cache(10, 6);
  cache.append(rng.uniform_matrix<Scalar>(7, 6), rng.uniform_matrix<Scalar>(7, 6));
  const attn::Matrix<Scalar> keys = cache.keys(), values = cache.values();

  EXPECT_SHAPE_ERROR(
      cache.append(rng.uniform_matrix<Scalar>(2, 5), rng.uniform_matrix<Scalar>(2, 6)),
      "KVCache::append");
  EXPECT_SHAPE_ERROR(
      cache.append(rng.uniform_matrix<Scalar>(2, 6), rng.uniform_matrix<Scalar>(3, 6)),
      "KVCache::append");
  EXPECT_THROW(cache.append(rng.uniform_matrix<Scalar>(4, 6), rng.uniform_matrix<Scalar>(4, 6)),
               attn::CapacityError);
  EXPECT_EQ(cache.size(), 7);
  EXPECT_TRUE(bitwise_equal(cache.keys(), keys));
  EXPECT_TRUE(bitwise_equal(cache.values(), values));

  // Exactly full still works after the failures.
  cache.append(rng.uniform_matrix<Scalar>(3, 6), rng.uniform_matrix<Scalar>(3, 6));
  EXPECT_EQ(cache.size(), 10);
  EXPECT_TRUE(bitwise_equal(cache.keys().topRows(7), keys));
}

TYPED_TEST(ExceptionSafety, CachedSelfAttentionLeavesTheCacheUnchanged) {
  using Scalar = TypeParam;
  Random rng(807);
  attn::MultiHeadConfig cfg{/*model_dim*/ 16, /*num_heads*/ 4, /*num_kv_heads*/ 2};
  const attn::SelfAttention<Scalar> layer(cfg, attn_test::random_weights<Scalar>(cfg, rng));
  const attn::Matrix<Scalar> x = rng.uniform_matrix<Scalar>(12, 16);
  attn::KVCache<Scalar> cache = layer.make_cache(10);
  (void)layer(x.topRows(6), cache);
  const attn::Matrix<Scalar> keys = cache.keys(), values = cache.values();

  attn::Matrix<Scalar> y = sentinel<Scalar>(2, 2);
  attn::Matrix<Scalar> lse = sentinel<Scalar>(3, 3);
  attn::AttentionExtras<Scalar> extras;
  extras.log_sum_exp = &lse;
  attn::KVCache<Scalar> narrow(10, 4);
  EXPECT_SHAPE_ERROR(y = layer(rng.uniform_matrix<Scalar>(1, 15), cache), "x is 1x15");
  EXPECT_SHAPE_ERROR(y = layer(x.row(6), narrow), "cache width");
  EXPECT_THROW(y = layer(x.middleRows(6, 5), cache, Mask::causal(), extras), attn::CapacityError);
  // An explicit mask must be n × (cached + n) = 1 × 7.
  EXPECT_SHAPE_ERROR(
      y = layer(x.row(6), cache, Mask::keep(attn::Matrix<bool>::Constant(1, 6, true)), extras),
      "keep");
  EXPECT_EQ(cache.size(), 6);
  EXPECT_EQ(narrow.size(), 0);
  EXPECT_TRUE(bitwise_equal(cache.keys(), keys));
  EXPECT_TRUE(bitwise_equal(cache.values(), values));
  EXPECT_TRUE(bitwise_equal(y, sentinel<Scalar>(2, 2)));
  EXPECT_TRUE(bitwise_equal(lse, sentinel<Scalar>(3, 3)));

  // The cache goes on as if nothing had happened: the next step equals a fresh decode's.
  const attn::Matrix<Scalar> step = layer(x.row(6), cache);
  attn::KVCache<Scalar> fresh = layer.make_cache(10);
  (void)layer(x.topRows(6), fresh);
  EXPECT_TRUE(bitwise_equal(step, layer(x.row(6), fresh)));
}

// ---------------------------------------------------------------------------------------------
// Partial attention
// ---------------------------------------------------------------------------------------------

TYPED_TEST(ExceptionSafety, FailedMergeLeavesTheTargetUntouched) {
  using Scalar = TypeParam;
  Random rng(808);
  const attn::Matrix<Scalar> q = rng.uniform_matrix<Scalar>(5, 8);
  const attn::Matrix<Scalar> k = rng.uniform_matrix<Scalar>(9, 8);
  const attn::Matrix<Scalar> v = rng.uniform_matrix<Scalar>(9, 6);
  attn::AttentionOptions options;
  options.num_heads = 2;
  options.num_kv_heads = 2;
  auto into =
      attn::scaled_dot_product_attention_partial(q, k.topRows(4), v.topRows(4), Mask(), options);
  const auto part = attn::scaled_dot_product_attention_partial(q.topRows(4), k.bottomRows(5),
                                                               v.bottomRows(5), Mask(), options);
  const attn::Matrix<Scalar> out_before = into.out, lse_before = into.log_sum_exp;
  EXPECT_SHAPE_ERROR(attn::merge_partial_attention(into, part), "merge_partial_attention");
  EXPECT_TRUE(bitwise_equal(into.out, out_before));
  EXPECT_TRUE(bitwise_equal(into.log_sum_exp, lse_before));
  EXPECT_SHAPE_ERROR(attn::merge_partial_attention(std::vector<attn::PartialAttention<Scalar>>{}),
                     "empty");
}

}  // namespace
