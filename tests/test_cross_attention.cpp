// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors

// attn::CrossAttention against the fp64 reference_mha (queries from the target, keys and values
// from the source), its relation to SelfAttention, remembered sources, packed batches, concurrent
// calls, and its shape errors.

#include <attn/cross_attention.hpp>
#include <attn/self_attention.hpp>

#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "support/counting_executor.hpp"
#include "support/matrix_near.hpp"
#include "support/random.hpp"
#include "support/reference.hpp"
#include "support/shape_error.hpp"
#include "support/tolerance.hpp"

namespace {

using attn::Index;
using attn::Mask;
using attn::MultiHeadConfig;
using attn_test::bitwise_equal;
using attn_test::counting_executor;
using attn_test::MatrixB;
using attn_test::Random;
using attn_test::ReferenceMask;

MultiHeadConfig config(Index model_dim, Index heads, Index kv_heads, Index source_dim, bool bias) {
  MultiHeadConfig cfg;
  cfg.model_dim = model_dim;
  cfg.num_heads = heads;
  cfg.num_kv_heads = kv_heads;
  cfg.source_dim = source_dim;
  cfg.bias = bias;
  return cfg;
}

std::string describe(const MultiHeadConfig& cfg) {
  return "E=" + std::to_string(cfg.model_dim) + " H=" + std::to_string(cfg.num_heads) +
         " Hkv=" + std::to_string(cfg.kv_heads()) + " S=" + std::to_string(cfg.source_features()) +
         " bias=" + (cfg.bias ? "on" : "off");
}

template <typename Scalar>
double tolerance(const MultiHeadConfig& cfg, Index m) {
  // The bias masks add 2 to the kernel's logit bound; see support/tolerance.hpp.
  return attn_test::layer_tolerance<Scalar>(cfg.model_dim, cfg.source_features(), cfg.head_dim(),
                                            m) +
         attn_test::attention_tolerance<Scalar>(2.0, m);
}

Index sum(const std::vector<Index>& lengths) {
  Index total = 0;
  for (Index length : lengths)
    total += length;
  return total;
}

template <typename Scalar>
class CrossAttentionTest : public ::testing::Test {};
using Scalars = ::testing::Types<float, double>;
TYPED_TEST_SUITE(CrossAttentionTest, Scalars);

// source_dim ≠ E and = E (0), GQA, MQA, bias on and off.
const std::vector<MultiHeadConfig> configs = {
    config(8, 2, 0, 0, true),   config(16, 4, 0, 12, true), config(16, 4, 2, 24, false),
    config(32, 8, 1, 20, true), config(24, 6, 3, 24, true), config(64, 8, 8, 48, false),
    config(20, 5, 5, 7, true)};

TYPED_TEST(CrossAttentionTest, MatchesReference) {
  using Scalar = TypeParam;
  std::uint32_t seed = 100;
  for (const MultiHeadConfig& cfg : configs) {
    for (const auto& [n, m] :
         {std::pair<Index, Index>{1, 1}, {5, 30}, {30, 5}, {70, 130}, {130, 70}}) {
      Random rng(++seed);
      const auto w = attn_test::random_weights<Scalar>(cfg, rng);
      const attn::CrossAttention<Scalar> cross(cfg, w);
      const attn::Matrix<Scalar> target = rng.uniform_matrix<Scalar>(n, cfg.model_dim);
      const attn::Matrix<Scalar> source = rng.uniform_matrix<Scalar>(m, cfg.source_features());
      const MatrixB keep = rng.bernoulli_matrix(n, m, 0.7);
      const attn::Matrix<Scalar> bias = rng.uniform_matrix<Scalar>(n, m, -2, 2);
      const std::vector<std::pair<Mask, ReferenceMask>> masks = {
          {Mask(), ReferenceMask()},
          {Mask::causal(), ReferenceMask::causal()},  // bottom-right: rows see nothing when n > m
          {Mask::window(3, 2), ReferenceMask::window(3, 2)},
          {Mask::keep(keep), ReferenceMask::keep(keep)},
          {Mask::bias(bias), ReferenceMask::bias(bias)}};
      for (std::size_t i = 0; i < masks.size(); ++i) {
        const attn_test::MatrixD expected = attn_test::reference_mha(
            target, source, w, cfg.num_heads, cfg.kv_heads(), masks[i].second);
        EXPECT_TRUE(attn_test::matrix_near(cross(target, source, masks[i].first), expected,
                                           tolerance<Scalar>(cfg, m)))
            << describe(cfg) << " n=" << n << " m=" << m << " mask #" << i << " seed=" << seed;
      }
    }
  }
}

// Cross-attention of x over itself is self-attention of x, with the same weights. The functors
// form Q, K and V with differently shaped GEMMs (one fused [Wq; Wk; Wv] against Wq and [Wk; Wv]),
// so equality is up to rounding, with the layer tolerance.
TYPED_TEST(CrossAttentionTest, SourceEqualToTargetIsSelfAttention) {
  using Scalar = TypeParam;
  std::uint32_t seed = 200;
  for (const MultiHeadConfig& cfg :
       {config(16, 4, 0, 0, true), config(32, 8, 2, 32, false), config(24, 6, 1, 0, true)}) {
    Random rng(++seed);
    const auto w = attn_test::random_weights<Scalar>(cfg, rng);
    const attn::CrossAttention<Scalar> cross(cfg, w);
    const attn::SelfAttention<Scalar> self_attn(cfg, w);
    for (Index length : {1, 9, 130}) {
      const attn::Matrix<Scalar> x = rng.uniform_matrix<Scalar>(length, cfg.model_dim);
      for (const Mask& mask : {Mask(), Mask::causal(), Mask::window(4, 1)}) {
        EXPECT_TRUE(attn_test::matrix_near(cross(x, x, mask), self_attn(x, mask),
                                           tolerance<Scalar>(cfg, length)))
            << describe(cfg) << " L=" << length;
      }
      const std::vector<Index> lengths = {length / 2, 0, length - length / 2};
      EXPECT_TRUE(attn_test::matrix_near(cross(x, lengths, x, lengths, Mask::causal()),
                                         self_attn(x, lengths, Mask::causal()),
                                         tolerance<Scalar>(cfg, length)))
          << describe(cfg) << " packed L=" << length;
    }
  }
}

// remember + call is what the direct call does: bitwise equal.
TYPED_TEST(CrossAttentionTest, RememberedSourceEqualsDirectCall) {
  using Scalar = TypeParam;
  Random rng(300);
  const MultiHeadConfig cfg = config(32, 8, 2, 24, true);
  const auto w = attn_test::random_weights<Scalar>(cfg, rng);
  const attn::CrossAttention<Scalar> cross(cfg, w);
  const attn::Matrix<Scalar> target = rng.uniform_matrix<Scalar>(20, 32);
  const attn::Matrix<Scalar> source = rng.uniform_matrix<Scalar>(50, 24);
  const auto memory = cross.remember(source);
  for (const Mask& mask : {Mask(), Mask::causal(), Mask::keep(rng.bernoulli_matrix(20, 50, 0.6))}) {
    EXPECT_TRUE(
        attn_test::matrix_near(cross(target, memory, mask), cross(target, source, mask), 0.0));
  }
  // Decoder steps: one target row at a time over the same memory.
  for (Index step = 0; step < 3; ++step) {
    EXPECT_TRUE(attn_test::matrix_near(cross(target.middleRows(step, 1), memory),
                                       cross(target.middleRows(step, 1), source), 0.0));
  }
  // Batched memory.
  const std::vector<Index> target_lengths = {8, 12}, source_lengths = {30, 20};
  const auto batch_memory = cross.remember(source, source_lengths);
  EXPECT_TRUE(attn_test::matrix_near(
      cross(target, target_lengths, batch_memory, Mask::causal()),
      cross(target, target_lengths, source, source_lengths, Mask::causal()), 0.0));
}

TYPED_TEST(CrossAttentionTest, MemoryHoldsProjectedKeysAndValues) {
  using Scalar = TypeParam;
  Random rng(310);
  const MultiHeadConfig cfg = config(16, 4, 2, 12, true);
  const auto w = attn_test::random_weights<Scalar>(cfg, rng);
  const attn::CrossAttention<Scalar> cross(cfg, w);
  const std::vector<Index> lengths = {4, 0, 7};
  const auto memory = [&] {
    const attn::Matrix<Scalar> temporary = rng.uniform_matrix<Scalar>(11, 12);
    auto made = cross.remember(temporary, lengths);
    // Keys and values are source·Wᵀ + b.
    const double tol = attn_test::layer_tolerance<Scalar>(0, cfg.source_features(), 0, 1);
    const attn_test::ReferenceWeights r = attn_test::reference_weights(w);
    EXPECT_TRUE(attn_test::matrix_near(
        made.keys(), attn_test::reference_linear(temporary, r.k_weight, r.k_bias), tol));
    EXPECT_TRUE(attn_test::matrix_near(
        made.values(), attn_test::reference_linear(temporary, r.v_weight, r.v_bias), tol));
    return made;
  }();  // the source is gone: the memory holds its own copy
  EXPECT_EQ(memory.rows(), 11);
  EXPECT_EQ(memory.lengths(), lengths);
  EXPECT_EQ(memory.keys().rows(), 11);
  EXPECT_EQ(memory.keys().cols(), cfg.kv_dim());
  EXPECT_EQ(memory.values().cols(), cfg.kv_dim());
  const attn::Matrix<Scalar> y = cross(rng.uniform_matrix<Scalar>(6, 16), {1, 2, 3}, memory);
  EXPECT_EQ(y.rows(), 6);
  EXPECT_TRUE(y.allFinite());
}

// A packed batch equals its pairs run one by one (and the reference), including an empty target
// and an empty source (whose targets see no key: attention zero, output = out_bias).
TYPED_TEST(CrossAttentionTest, PackedBatchEqualsPairsOneByOne) {
  using Scalar = TypeParam;
  std::uint32_t seed = 400;
  for (const MultiHeadConfig& cfg : {config(16, 4, 0, 12, true), config(32, 8, 2, 0, false)}) {
    for (const auto& [target_lengths, source_lengths] :
         {std::pair<std::vector<Index>, std::vector<Index>>{{2, 0, 5, 3}, {4, 3, 0, 6}},
          {{70, 1, 130}, {130, 64, 1}},
          {{6}, {9}}}) {
      Random rng(++seed);
      const auto w = attn_test::random_weights<Scalar>(cfg, rng);
      const attn::CrossAttention<Scalar> cross(cfg, w);
      const attn::Matrix<Scalar> target =
          rng.uniform_matrix<Scalar>(sum(target_lengths), cfg.model_dim);
      const attn::Matrix<Scalar> source =
          rng.uniform_matrix<Scalar>(sum(source_lengths), cfg.source_features());
      for (const auto& [mask, reference] : {std::pair<Mask, ReferenceMask>{Mask(), ReferenceMask()},
                                            {Mask::causal(), ReferenceMask::causal()},
                                            {Mask::window(1, 2), ReferenceMask::window(1, 2)}}) {
        const attn::Matrix<Scalar> batch =
            cross(target, target_lengths, source, source_lengths, mask);
        ASSERT_EQ(batch.rows(), target.rows());
        const double tol = tolerance<Scalar>(cfg, 130);
        Index t0 = 0, s0 = 0;
        for (std::size_t b = 0; b < target_lengths.size(); ++b) {
          const Index n = target_lengths[b], m = source_lengths[b];
          const attn::Matrix<Scalar> one =
              cross(target.middleRows(t0, n), source.middleRows(s0, m), mask);
          EXPECT_TRUE(attn_test::matrix_near(batch.middleRows(t0, n), one, tol))
              << describe(cfg) << " pair " << b;
          t0 += n;
          s0 += m;
        }
        EXPECT_TRUE(attn_test::matrix_near(
            batch,
            attn_test::reference_mha_packed(target, target_lengths, source, source_lengths, w,
                                            cfg.num_heads, cfg.kv_heads(), reference),
            tol))
            << describe(cfg);
      }
    }
  }
}

TYPED_TEST(CrossAttentionTest, EmptySourceGivesTheOutputBias) {
  using Scalar = TypeParam;
  Random rng(450);
  const MultiHeadConfig cfg = config(16, 4, 2, 10, true);
  const auto w = attn_test::random_weights<Scalar>(cfg, rng);
  const attn::CrossAttention<Scalar> cross(cfg, w);
  const attn::Matrix<Scalar> y =
      cross(rng.uniform_matrix<Scalar>(3, 16), attn::Matrix<Scalar>(0, 10));
  const attn::Matrix<Scalar> expected = w.out_bias.transpose().replicate(3, 1);
  EXPECT_TRUE(attn_test::matrix_near(y, expected, 0.0));
}

TYPED_TEST(CrossAttentionTest, ConcurrentCallsEqualSerialCalls) {
  using Scalar = TypeParam;
  Random rng(500);
  const MultiHeadConfig cfg = config(32, 8, 2, 20, true);
  const attn::CrossAttention<Scalar> cross(cfg, attn_test::random_weights<Scalar>(cfg, rng));
  const attn::Matrix<Scalar> source = rng.uniform_matrix<Scalar>(150, 20);
  const auto memory = cross.remember(source);  // shared by all threads
  constexpr int threads = 4;
  std::vector<attn::Matrix<Scalar>> targets;
  for (int t = 0; t < threads; ++t)
    targets.push_back(rng.uniform_matrix<Scalar>(40 + 10 * t, 32));
  const auto call = [&](int t) {
    const auto i = static_cast<std::size_t>(t);
    return t % 2 == 0 ? cross(targets[i], source, Mask::causal())
                      : cross(targets[i], memory, Mask::causal());
  };
  std::vector<attn::Matrix<Scalar>> serial;
  for (int t = 0; t < threads; ++t)
    serial.push_back(call(t));
  std::vector<std::vector<attn::Matrix<Scalar>>> results(threads);
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      for (int repeat = 0; repeat < 5; ++repeat)
        results[static_cast<std::size_t>(t)].push_back(call(t));
    });
  }
  for (auto& thread : pool)
    thread.join();
  for (std::size_t t = 0; t < threads; ++t) {
    for (const auto& result : results[t])
      EXPECT_TRUE(attn_test::matrix_near(result, serial[t], 0.0)) << "thread " << t;
  }
}

TYPED_TEST(CrossAttentionTest, ExecutorGivesBitwiseTheSerialResult) {
  using Scalar = TypeParam;
  Random rng(510);
  const MultiHeadConfig cfg = config(32, 4, 1, 16, true);
  const auto w = attn_test::random_weights<Scalar>(cfg, rng);
  const attn::CrossAttention<Scalar> serial(cfg, w, attn::serial_executor);
  const attn::CrossAttention<Scalar> threaded(cfg, w, attn::thread_executor(2));
  const attn::Matrix<Scalar> target = rng.uniform_matrix<Scalar>(150, 32);
  const attn::Matrix<Scalar> source = rng.uniform_matrix<Scalar>(300, 16);
  EXPECT_TRUE(attn_test::matrix_near(threaded(target, source, Mask::causal()),
                                     serial(target, source, Mask::causal()), 0.0));
}

TYPED_TEST(CrossAttentionTest, ShapeErrorsNameTheArgumentAndShapes) {
  using Scalar = TypeParam;
  using M = attn::Matrix<Scalar>;
  Random rng(600);
  const MultiHeadConfig cfg = config(8, 2, 0, 6, true);
  const attn::CrossAttention<Scalar> cross(cfg, attn_test::random_weights<Scalar>(cfg, rng));
  const M target = M::Ones(5, 8), source = M::Ones(7, 6);

  EXPECT_SHAPE_ERROR(cross(M::Ones(5, 7), source), "CrossAttention", "target is 5x7",
                     "model_dim 8");
  EXPECT_SHAPE_ERROR(cross(target, M::Ones(7, 8)), "CrossAttention", "source is 7x8",
                     "source_dim 6");
  EXPECT_SHAPE_ERROR(cross.remember(M::Ones(7, 5)), "CrossAttention", "source is 7x5",
                     "source_dim 6");
  // Lengths.
  EXPECT_SHAPE_ERROR(cross(target, {2, 3}, source, {3, 3, 1}), "CrossAttention",
                     "target_lengths has 2", "3 of source_lengths");
  EXPECT_SHAPE_ERROR(cross(target, {2, 2}, source, {3, 4}), "target_lengths sum to 4", "5 rows");
  EXPECT_SHAPE_ERROR(cross(target, {2, 3}, source, {3, 3}), "source_lengths sum to 6", "7 rows");
  EXPECT_SHAPE_ERROR(cross(target, {6, -1}, source, {3, 4}), "target_lengths[1] is -1");
  EXPECT_SHAPE_ERROR(cross(target, {2, 3}, source, {-1, 8}), "source_lengths[0] is -1");
  EXPECT_SHAPE_ERROR(cross.remember(source, {3, 3}), "source_lengths sum to 6", "7 rows");
  const auto memory = cross.remember(source, {3, 4});
  EXPECT_SHAPE_ERROR(cross(target, memory), "target_lengths has 1", "2 of source_lengths");
  // Explicit masks describe one pair of sequences.
  EXPECT_SHAPE_ERROR(
      cross(target, {2, 3}, source, {3, 4}, Mask::keep(MatrixB::Constant(5, 7, true))),
      "CrossAttention", "explicit", "2 sequences");
  // Mask shape: n × m.
  EXPECT_SHAPE_ERROR(cross(target, source, Mask::keep(MatrixB::Constant(7, 5, true))),
                     "CrossAttention", "keep", "7x5", "5x7");
  EXPECT_SHAPE_ERROR(cross(target, source, Mask::bias(M::Zero(5, 6))), "bias", "5x6", "5x7");
  EXPECT_SHAPE_ERROR(cross(target, {5}, source, {7}, Mask::bias(attn::Matrix<double>::Zero(5, 8))),
                     "bias", "5x8", "5x7");
  EXPECT_NO_THROW(cross(target, source, Mask::keep(MatrixB::Constant(5, 7, true))));
  // A memory made by a functor of another kv width.
  const MultiHeadConfig other_cfg = config(8, 2, 1, 6, true);
  const attn::CrossAttention<Scalar> other(other_cfg,
                                           attn_test::random_weights<Scalar>(other_cfg, rng));
  EXPECT_SHAPE_ERROR(cross(target, other.remember(source)), "CrossAttention", "memory", "kv_dim 8");
}

// ---------------------------------------------------------------------------------------------
// attend_into and MultiHeadOptions
// ---------------------------------------------------------------------------------------------

// Every attend_into writes exactly what its operator() returns, into a strided block of a wider
// matrix whose other columns stay as they were; with a workspace too.
TYPED_TEST(CrossAttentionTest, AttendIntoEqualsTheReturnedMatrixBitwise) {
  using Scalar = TypeParam;
  using M = attn::Matrix<Scalar>;
  Random rng(610);
  const MultiHeadConfig cfg = config(32, 8, 2, 20, true);
  const attn::CrossAttention<Scalar> cross(cfg, attn_test::random_weights<Scalar>(cfg, rng));
  const M target = rng.uniform_matrix<Scalar>(40, 32);
  const M source = rng.uniform_matrix<Scalar>(70, 20);
  const auto memory = cross.remember(source);
  const std::vector<Index> target_lengths = {15, 0, 25}, source_lengths = {30, 10, 30};
  const auto batch_memory = cross.remember(source, source_lengths);
  attn::Workspace workspace;
  attn::MultiHeadOptions with_workspace;
  with_workspace.workspace = &workspace;
  for (const attn::MultiHeadOptions& options : {attn::MultiHeadOptions(), with_workspace}) {
    // out: columns [3, 35) of a 40 × 40 matrix of sevens.
    M wide = M::Constant(40, 40, Scalar(7));
    const auto out = [&] { return wide.middleCols(3, 32); };
    const auto untouched = [&] {
      return (wide.leftCols(3).array() == Scalar(7)).all() &&
             (wide.rightCols(5).array() == Scalar(7)).all();
    };
    cross.attend_into(target, source, out(), Mask::causal(), options);
    EXPECT_TRUE(bitwise_equal(out(), cross(target, source, Mask::causal())));
    EXPECT_TRUE(untouched());

    wide.setConstant(Scalar(7));
    M lse_into, lse, weights_into, weights;
    cross.attend_into(target, memory, out(), Mask(), options, {&lse_into, &weights_into, false});
    EXPECT_TRUE(bitwise_equal(out(), cross(target, memory, Mask(), {&lse, &weights, false})));
    EXPECT_TRUE(untouched());
    EXPECT_TRUE(bitwise_equal(lse_into, lse));
    EXPECT_TRUE(bitwise_equal(weights_into, weights));

    wide.setConstant(Scalar(7));
    cross.attend_into(target, target_lengths, source, source_lengths, out(), Mask::window(3, 3),
                      options);
    EXPECT_TRUE(bitwise_equal(
        out(), cross(target, target_lengths, source, source_lengths, Mask::window(3, 3))));
    EXPECT_TRUE(untouched());

    wide.setConstant(Scalar(7));
    cross.attend_into(target, target_lengths, batch_memory, out(), Mask(), options);
    EXPECT_TRUE(bitwise_equal(out(), cross(target, target_lengths, batch_memory)));
    EXPECT_TRUE(untouched());

    // Decoding steps, one row each.
    for (Index t = 0; t < 5; ++t) {
      cross.attend_into(target.row(t), memory, wide.block(t, 3, 1, 32), Mask(), options);
      EXPECT_TRUE(bitwise_equal(wide.block(t, 3, 1, 32), cross(target.row(t), memory))) << t;
    }
  }
}

// options.scale and options.softcap act as they do in scaled_dot_product_attention: the layer
// matches the fp64 reference computed with them.
TYPED_TEST(CrossAttentionTest, OptionsScaleAndSoftcapMatchTheReference) {
  using Scalar = TypeParam;
  std::uint32_t seed = 620;
  for (const MultiHeadConfig& cfg : {config(16, 4, 0, 12, true), config(32, 8, 2, 20, false)}) {
    Random rng(++seed);
    const auto w = attn_test::random_weights<Scalar>(cfg, rng);
    const attn::CrossAttention<Scalar> cross(cfg, w);
    const attn::Matrix<Scalar> target = rng.uniform_matrix<Scalar>(30, cfg.model_dim);
    const attn::Matrix<Scalar> source = rng.uniform_matrix<Scalar>(70, cfg.source_features());
    const auto memory = cross.remember(source);
    struct Case {
      std::optional<double> scale;
      double softcap;
    };
    // Logits reach |scale|·d here (projections of order one): at most 3·4 = 12.
    const double tol = attn_test::layer_tolerance<Scalar>(cfg.model_dim, cfg.source_features(),
                                                          cfg.head_dim(), 70) +
                       attn_test::attention_tolerance<Scalar>(12.0, 70);
    for (const Case c : {Case{3.0, 0}, Case{std::nullopt, 0.5}, Case{-2.5, 1.5}}) {
      attn::MultiHeadOptions options;
      options.scale = c.scale;
      options.softcap = c.softcap;
      const attn_test::MatrixD expected =
          attn_test::reference_mha(target, source, w, cfg.num_heads, cfg.kv_heads(),
                                   ReferenceMask::causal(), c.scale, c.softcap);
      EXPECT_TRUE(
          attn_test::matrix_near(cross(target, source, Mask::causal(), {}, options), expected, tol))
          << describe(cfg);
      attn::Matrix<Scalar> y(30, cfg.model_dim);
      cross.attend_into(target, memory, y, Mask::causal(), options);
      EXPECT_TRUE(attn_test::matrix_near(y, expected, tol)) << describe(cfg);
    }
  }
}

// options.executor replaces the functor's executor for one call, bitwise without effect on the
// result; left empty, the functor's own runs the call.
TYPED_TEST(CrossAttentionTest, OptionsExecutorReplacesTheFunctorsForOneCall) {
  using Scalar = TypeParam;
  Random rng(630);
  const MultiHeadConfig cfg = config(32, 4, 1, 16, true);
  int own_calls = 0, option_calls = 0;
  const attn::CrossAttention<Scalar> cross(cfg, attn_test::random_weights<Scalar>(cfg, rng),
                                           counting_executor(own_calls));
  const attn::Matrix<Scalar> target = rng.uniform_matrix<Scalar>(150, 32);
  const auto memory = cross.remember(rng.uniform_matrix<Scalar>(1100, 16));
  attn::MultiHeadOptions threads;
  threads.executor = attn::thread_executor(2);
  attn::MultiHeadOptions counted;
  counted.executor = counting_executor(option_calls);

  const attn::Matrix<Scalar> serial = cross(target, memory, Mask::causal());
  EXPECT_EQ(own_calls, 1);
  EXPECT_TRUE(bitwise_equal(cross(target, memory, Mask::causal(), {}, threads), serial));
  EXPECT_TRUE(bitwise_equal(cross(target, memory, Mask::causal(), {}, counted), serial));
  EXPECT_EQ(own_calls, 1);
  EXPECT_EQ(option_calls, 1);
  // One-row steps over 1100 keys, split into parts.
  attn::Workspace workspace;
  threads.workspace = &workspace;
  attn::Matrix<Scalar> step(1, 32);
  for (Index t = 0; t < 3; ++t) {
    cross.attend_into(target.row(t), memory, step, Mask(), threads);
    EXPECT_TRUE(bitwise_equal(step, cross(target.row(t), memory))) << t;
  }
}

TYPED_TEST(CrossAttentionTest, AttendIntoChecksOutAndOptions) {
  using Scalar = TypeParam;
  using M = attn::Matrix<Scalar>;
  Random rng(640);
  const MultiHeadConfig cfg = config(8, 2, 0, 6, true);
  const attn::CrossAttention<Scalar> cross(cfg, attn_test::random_weights<Scalar>(cfg, rng));
  const M target = M::Ones(5, 8), source = M::Ones(7, 6);
  const auto memory = cross.remember(source);
  M out = M::Constant(6, 8, Scalar(7));
  EXPECT_SHAPE_ERROR(cross.attend_into(target, memory, out), "CrossAttention", "out is 6x8",
                     "expected 5x8");
  EXPECT_SHAPE_ERROR(cross.attend_into(target, source, out.leftCols(7)), "out is 6x7",
                     "expected 5x8");
  EXPECT_SHAPE_ERROR(cross.attend_into(target.row(0), memory, out.topRows(2)), "out is 2x8",
                     "expected 1x8");
  EXPECT_SHAPE_ERROR(cross.attend_into(target, {2, 3}, source, {3, 4}, out), "out is 6x8",
                     "expected 5x8");
  attn::MultiHeadOptions options;
  options.softcap = std::numeric_limits<double>::quiet_NaN();
  EXPECT_SHAPE_ERROR(cross.attend_into(target, memory, out.topRows(5), Mask(), options),
                     "CrossAttention", "softcap is nan");
  options.softcap = 0;
  options.scale = -std::numeric_limits<double>::infinity();
  EXPECT_SHAPE_ERROR(cross(target, memory, Mask(), {}, options), "CrossAttention", "scale is -inf");
  EXPECT_TRUE((out.array() == Scalar(7)).all());
}

}  // namespace
