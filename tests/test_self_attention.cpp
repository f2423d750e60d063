// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors

// attn::SelfAttention against the fp64 reference_mha (target = source = x), packed batches,
// executors and concurrent calls, and its shape errors.

#include <attn/self_attention.hpp>

#include <cmath>
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

MultiHeadConfig config(Index model_dim, Index heads, Index kv_heads, bool bias) {
  MultiHeadConfig cfg;
  cfg.model_dim = model_dim;
  cfg.num_heads = heads;
  cfg.num_kv_heads = kv_heads;
  cfg.bias = bias;
  return cfg;
}

std::string describe(const MultiHeadConfig& cfg) {
  return "E=" + std::to_string(cfg.model_dim) + " H=" + std::to_string(cfg.num_heads) +
         " Hkv=" + std::to_string(cfg.kv_heads()) + " bias=" + (cfg.bias ? "on" : "off");
}

template <typename Scalar>
class SelfAttentionTest : public ::testing::Test {};
using Scalars = ::testing::Types<float, double>;
TYPED_TEST_SUITE(SelfAttentionTest, Scalars);

// Configurations: one head, MHA, no bias, GQA, MQA, odd head counts, a wide model.
const std::vector<MultiHeadConfig> configs = {config(8, 1, 0, true),   config(16, 4, 0, true),
                                              config(16, 4, 0, false), config(32, 8, 2, true),
                                              config(32, 8, 1, false), config(24, 6, 3, true),
                                              config(64, 8, 8, true),  config(20, 5, 1, true)};

TYPED_TEST(SelfAttentionTest, MatchesReference) {
  using Scalar = TypeParam;
  std::uint32_t seed = 100;
  for (const MultiHeadConfig& cfg : configs) {
    for (Index length : {1, 7, 70, 130}) {
      Random rng(++seed);
      const auto w = attn_test::random_weights<Scalar>(cfg, rng);
      const attn::SelfAttention<Scalar> self_attn(cfg, w);
      const attn::Matrix<Scalar> x = rng.uniform_matrix<Scalar>(length, cfg.model_dim);
      const MatrixB keep = rng.bernoulli_matrix(length, length, 0.7);
      const attn::Matrix<Scalar> bias = rng.uniform_matrix<Scalar>(length, length, -2, 2);
      const std::vector<std::pair<Mask, ReferenceMask>> masks = {
          {Mask(), ReferenceMask()},
          {Mask::causal(), ReferenceMask::causal()},
          {Mask::window(5, 0), ReferenceMask::window(5, 0)},
          {Mask::keep(keep), ReferenceMask::keep(keep)},
          {Mask::bias(bias) & Mask::causal(), ReferenceMask::bias(bias) & ReferenceMask::causal()}};
      // The bias adds 2 to the logit bound, which is ≲ √d here; both are dominated by E.
      const double tol =
          attn_test::layer_tolerance<Scalar>(cfg.model_dim, cfg.model_dim, cfg.head_dim(), length) +
          attn_test::attention_tolerance<Scalar>(2.0, length);
      for (std::size_t i = 0; i < masks.size(); ++i) {
        const attn::Matrix<Scalar> got = self_attn(x, masks[i].first);
        const attn_test::MatrixD expected =
            attn_test::reference_mha(x, x, w, cfg.num_heads, cfg.kv_heads(), masks[i].second);
        EXPECT_TRUE(attn_test::matrix_near(got, expected, tol))
            << describe(cfg) << " L=" << length << " mask #" << i << " seed=" << seed;
      }
    }
  }
}

// A packed batch equals its sequences run one by one and concatenated (and the reference), with
// empty and one-token sequences, structured masks applied per sequence.
TYPED_TEST(SelfAttentionTest, PackedBatchEqualsSequencesOneByOne) {
  using Scalar = TypeParam;
  std::uint32_t seed = 200;
  for (const MultiHeadConfig& cfg : {config(16, 4, 0, true), config(32, 8, 2, false)}) {
    for (const std::vector<Index>& lengths :
         {std::vector<Index>{3, 0, 7, 1}, std::vector<Index>{70, 0, 130, 1, 64},
          std::vector<Index>{5}, std::vector<Index>{0, 4}}) {
      Random rng(++seed);
      const auto w = attn_test::random_weights<Scalar>(cfg, rng);
      const attn::SelfAttention<Scalar> self_attn(cfg, w);
      Index total = 0;
      for (Index length : lengths)
        total += length;
      const attn::Matrix<Scalar> x = rng.uniform_matrix<Scalar>(total, cfg.model_dim);
      for (const auto& [mask, reference] : {std::pair<Mask, ReferenceMask>{Mask(), ReferenceMask()},
                                            {Mask::causal(), ReferenceMask::causal()},
                                            {Mask::window(2, 1), ReferenceMask::window(2, 1)}}) {
        const attn::Matrix<Scalar> batch = self_attn(x, lengths, mask);
        ASSERT_EQ(batch.rows(), total);
        ASSERT_EQ(batch.cols(), cfg.model_dim);
        // One by one: the projections run over fewer rows, so GEMM may round differently.
        const double tol =
            attn_test::layer_tolerance<Scalar>(cfg.model_dim, cfg.model_dim, cfg.head_dim(), 130);
        Index row = 0;
        for (Index length : lengths) {
          const attn::Matrix<Scalar> one = self_attn(x.middleRows(row, length), mask);
          EXPECT_TRUE(attn_test::matrix_near(batch.middleRows(row, length), one, tol))
              << describe(cfg) << " sequence at row " << row << " of length " << length;
          row += length;
        }
        EXPECT_TRUE(attn_test::matrix_near(
            batch,
            attn_test::reference_mha_packed(x, lengths, x, lengths, w, cfg.num_heads,
                                            cfg.kv_heads(), reference),
            tol))
            << describe(cfg);
      }
    }
  }
}

// The functor is immutable: four std::threads calling one instance at once (on different and on
// equal inputs) get exactly what serial calls get.
TYPED_TEST(SelfAttentionTest, ConcurrentCallsEqualSerialCalls) {
  using Scalar = TypeParam;
  Random rng(300);
  const MultiHeadConfig cfg = config(32, 8, 2, true);
  const attn::SelfAttention<Scalar> self_attn(cfg, attn_test::random_weights<Scalar>(cfg, rng));
  constexpr int threads = 4;
  std::vector<attn::Matrix<Scalar>> inputs;
  for (int t = 0; t < threads; ++t)
    inputs.push_back(rng.uniform_matrix<Scalar>(100 + 30 * (t % 2), 32));
  const std::vector<Index> lengths = {40, 60};
  std::vector<attn::Matrix<Scalar>> serial;
  for (int t = 0; t < threads; ++t) {
    serial.push_back(t % 2 == 0
                         ? self_attn(inputs[static_cast<std::size_t>(t)], lengths, Mask::causal())
                         : self_attn(inputs[static_cast<std::size_t>(t)], Mask::causal()));
  }
  std::vector<std::vector<attn::Matrix<Scalar>>> results(threads);
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      const auto i = static_cast<std::size_t>(t);
      for (int repeat = 0; repeat < 5; ++repeat) {
        results[i].push_back(t % 2 == 0 ? self_attn(inputs[i], lengths, Mask::causal())
                                        : self_attn(inputs[i], Mask::causal()));
      }
    });
  }
  for (auto& thread : pool)
    thread.join();
  for (std::size_t t = 0; t < threads; ++t) {
    for (const auto& result : results[t])
      EXPECT_TRUE(attn_test::matrix_near(result, serial[t], 0.0)) << "thread " << t;
  }
}

// The functor's executor only changes where work items run: bitwise equal results.
TYPED_TEST(SelfAttentionTest, ExecutorGivesBitwiseTheSerialResult) {
  using Scalar = TypeParam;
  Random rng(310);
  const MultiHeadConfig cfg = config(32, 4, 2, true);
  const auto w = attn_test::random_weights<Scalar>(cfg, rng);
  const attn::SelfAttention<Scalar> serial(cfg, w, attn::serial_executor);
  const attn::SelfAttention<Scalar> threaded(cfg, w, attn::thread_executor(2));
  const attn::Matrix<Scalar> x = rng.uniform_matrix<Scalar>(200, 32);
  EXPECT_TRUE(attn_test::matrix_near(threaded(x, Mask::causal()), serial(x, Mask::causal()), 0.0));
  EXPECT_TRUE(attn_test::matrix_near(threaded(x, {150, 50}), serial(x, {150, 50}), 0.0));
}

// The functor owns its weights: they may change or die after construction.
TYPED_TEST(SelfAttentionTest, OwnsItsWeights) {
  using Scalar = TypeParam;
  Random rng(320);
  const MultiHeadConfig cfg = config(16, 2, 0, true);
  auto w = attn_test::random_weights<Scalar>(cfg, rng);
  const attn::SelfAttention<Scalar> kept(cfg, w);
  const attn::Matrix<Scalar> x = rng.uniform_matrix<Scalar>(9, 16);
  const attn::Matrix<Scalar> before = kept(x);
  w.q_weight.setZero();
  w.out_bias.setConstant(Scalar(5));
  EXPECT_TRUE(attn_test::matrix_near(kept(x), before, 0.0));
  EXPECT_EQ(kept.config().model_dim, 16);
  EXPECT_EQ(kept.config().num_heads, 2);
}

// Inputs of any layout.
TYPED_TEST(SelfAttentionTest, AcceptsBlocksAndExpressions) {
  using Scalar = TypeParam;
  Random rng(330);
  const MultiHeadConfig cfg = config(16, 4, 2, true);
  const attn::SelfAttention<Scalar> self_attn(cfg, attn_test::random_weights<Scalar>(cfg, rng));
  const attn::Matrix<Scalar> big = rng.uniform_matrix<Scalar>(20, 25);
  const attn::Matrix<Scalar> x = big.block(3, 4, 12, 16);
  const attn::Matrix<Scalar> expected = self_attn(x, Mask::causal());
  EXPECT_TRUE(
      attn_test::matrix_near(self_attn(big.block(3, 4, 12, 16), Mask::causal()), expected, 0.0));
  const Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic> col_major = x;
  EXPECT_TRUE(attn_test::matrix_near(self_attn(col_major, Mask::causal()), expected, 0.0));
  EXPECT_TRUE(attn_test::matrix_near(self_attn(Scalar(1) * x, Mask::causal()), expected, 0.0));
}

TYPED_TEST(SelfAttentionTest, EmptySequence) {
  using Scalar = TypeParam;
  Random rng(340);
  const MultiHeadConfig cfg = config(8, 2, 0, true);
  const attn::SelfAttention<Scalar> self_attn(cfg, attn_test::random_weights<Scalar>(cfg, rng));
  const attn::Matrix<Scalar> y = self_attn(attn::Matrix<Scalar>(0, 8), Mask::causal());
  EXPECT_EQ(y.rows(), 0);
  EXPECT_EQ(y.cols(), 8);
  EXPECT_EQ(self_attn(attn::Matrix<Scalar>(0, 8), std::vector<Index>{0, 0}).rows(), 0);
}

TYPED_TEST(SelfAttentionTest, ShapeErrorsNameTheArgumentAndShapes) {
  using Scalar = TypeParam;
  using M = attn::Matrix<Scalar>;
  Random rng(350);
  const MultiHeadConfig cfg = config(8, 2, 0, true);
  const attn::SelfAttention<Scalar> self_attn(cfg, attn_test::random_weights<Scalar>(cfg, rng));
  const M x = M::Ones(5, 8);
  EXPECT_SHAPE_ERROR(self_attn(M::Ones(5, 7)), "SelfAttention", "x is 5x7", "model_dim 8");
  EXPECT_SHAPE_ERROR(self_attn(M::Ones(5, 7), {2, 3}), "x is 5x7", "model_dim 8");
  // Lengths that do not sum to the rows, negative lengths.
  EXPECT_SHAPE_ERROR(self_attn(x, {2, 2}), "SelfAttention", "lengths sum to 4", "5 rows");
  EXPECT_SHAPE_ERROR(self_attn(x, {2, 2, 2}), "lengths sum to 6", "5 rows");
  EXPECT_SHAPE_ERROR(self_attn(x, {6, -1}), "SelfAttention", "lengths[1] is -1");
  // Explicit masks describe one sequence.
  EXPECT_SHAPE_ERROR(self_attn(x, {2, 3}, Mask::keep(MatrixB::Constant(5, 5, true))),
                     "SelfAttention", "explicit", "2 sequences");
  EXPECT_SHAPE_ERROR(self_attn(x, {2, 3}, Mask::bias(M::Zero(2, 2))), "explicit", "2 sequences");
  // So does a key length (a packed batch carries its sequences' lengths already).
  EXPECT_SHAPE_ERROR(self_attn(x, {2, 3}, Mask::key_length(2)), "key-length", "2 sequences");
  EXPECT_SHAPE_ERROR(self_attn(x, {5}, Mask::key_length(6)), "key_length is 6", "5 keys");
  // Mask shape.
  EXPECT_SHAPE_ERROR(self_attn(x, Mask::keep(MatrixB::Constant(4, 4, true))), "SelfAttention",
                     "keep", "4x4", "5x5");
  EXPECT_SHAPE_ERROR(self_attn(x, Mask::bias(attn::Matrix<double>::Zero(5, 6))), "bias", "5x6",
                     "5x5");
  EXPECT_SHAPE_ERROR(self_attn(x, {5}, Mask::bias(M::Zero(6, 5))), "bias", "6x5", "5x5");
  // One sequence in a list is fine with an explicit mask.
  EXPECT_NO_THROW(self_attn(x, {5}, Mask::keep(MatrixB::Constant(5, 5, true))));
  EXPECT_NO_THROW(self_attn(x, {5}, Mask::key_length(3)));
}

// ---------------------------------------------------------------------------------------------
// attend_into and MultiHeadOptions
// ---------------------------------------------------------------------------------------------

// Every attend_into writes exactly what its operator() returns, into a strided block of a wider
// matrix whose other columns stay as they were; with a workspace too.
TYPED_TEST(SelfAttentionTest, AttendIntoEqualsTheReturnedMatrixBitwise) {
  using Scalar = TypeParam;
  using M = attn::Matrix<Scalar>;
  Random rng(360);
  const MultiHeadConfig cfg = config(32, 8, 2, true);
  const attn::SelfAttention<Scalar> self_attn(cfg, attn_test::random_weights<Scalar>(cfg, rng));
  const M x = rng.uniform_matrix<Scalar>(90, 32);
  const std::vector<Index> lengths = {30, 0, 60};
  attn::Workspace workspace;
  attn::MultiHeadOptions with_workspace;
  with_workspace.workspace = &workspace;
  for (const attn::MultiHeadOptions& options : {attn::MultiHeadOptions(), with_workspace}) {
    // out: columns [3, 35) of a 90 × 40 matrix of sevens.
    M wide = M::Constant(90, 40, Scalar(7));
    const auto untouched = [&](Index rows) {
      return (wide.leftCols(3).array() == Scalar(7)).all() &&
             (wide.rightCols(5).array() == Scalar(7)).all() &&
             (wide.bottomRows(90 - rows).array() == Scalar(7)).all();
    };
    self_attn.attend_into(x, wide.middleCols(3, 32), Mask::causal(), options);
    EXPECT_TRUE(bitwise_equal(wide.middleCols(3, 32), self_attn(x, Mask::causal())));
    EXPECT_TRUE(untouched(90));

    wide.setConstant(Scalar(7));
    self_attn.attend_into(x, lengths, wide.middleCols(3, 32), Mask::window(4, 0), options);
    EXPECT_TRUE(bitwise_equal(wide.middleCols(3, 32), self_attn(x, lengths, Mask::window(4, 0))));
    EXPECT_TRUE(untouched(90));

    // With extras: the same log-sum-exps and weights too.
    M lse_into, lse, weights_into, weights;
    attn::AttentionExtras<Scalar> extras_into{&lse_into, &weights_into, true};
    attn::AttentionExtras<Scalar> extras{&lse, &weights, true};
    wide.setConstant(Scalar(7));
    self_attn.attend_into(x.topRows(20), wide.block(0, 3, 20, 32), Mask(), options, extras_into);
    EXPECT_TRUE(bitwise_equal(wide.block(0, 3, 20, 32), self_attn(x.topRows(20), Mask(), extras)));
    EXPECT_TRUE(untouched(20));
    EXPECT_TRUE(bitwise_equal(lse_into, lse));
    EXPECT_TRUE(bitwise_equal(weights_into, weights));
    EXPECT_EQ(weights.rows(), 20);

    // With a KV cache: prefill, then steps, each into a row of wide.
    attn::KVCache<Scalar> into_cache = self_attn.make_cache(90);
    attn::KVCache<Scalar> cache = self_attn.make_cache(90);
    wide.setConstant(Scalar(7));
    self_attn.attend_into(x.topRows(80), into_cache, wide.block(0, 3, 80, 32), Mask::causal(),
                          options);
    EXPECT_TRUE(bitwise_equal(wide.block(0, 3, 80, 32), self_attn(x.topRows(80), cache)));
    for (Index t = 80; t < 90; ++t) {
      self_attn.attend_into(x.row(t), into_cache, wide.block(t, 3, 1, 32), Mask::causal(), options);
      EXPECT_TRUE(bitwise_equal(wide.block(t, 3, 1, 32), self_attn(x.row(t), cache))) << t;
    }
    EXPECT_TRUE(untouched(90));
    EXPECT_TRUE(bitwise_equal(into_cache.keys(), cache.keys()));
    EXPECT_TRUE(bitwise_equal(into_cache.values(), cache.values()));
  }
}

// options.scale and options.softcap act as they do in scaled_dot_product_attention: the layer
// matches the fp64 reference computed with them; an explicit default scale and softcap 0 are
// bitwise the defaults.
TYPED_TEST(SelfAttentionTest, OptionsScaleAndSoftcapMatchTheReference) {
  using Scalar = TypeParam;
  std::uint32_t seed = 370;
  for (const MultiHeadConfig& cfg : {config(16, 4, 0, true), config(32, 8, 2, false)}) {
    Random rng(++seed);
    const auto w = attn_test::random_weights<Scalar>(cfg, rng);
    const attn::SelfAttention<Scalar> self_attn(cfg, w);
    const Index length = 70;
    const attn::Matrix<Scalar> x = rng.uniform_matrix<Scalar>(length, cfg.model_dim);
    struct Case {
      std::optional<double> scale;
      double softcap;
    };
    // Logits reach |scale|·d here (projections of order one): at most 3·4 = 12.
    const double tol =
        attn_test::layer_tolerance<Scalar>(cfg.model_dim, cfg.model_dim, cfg.head_dim(), length) +
        attn_test::attention_tolerance<Scalar>(12.0, length);
    for (const Case c :
         {Case{3.0, 0}, Case{-0.7, 0}, Case{std::nullopt, 0.5}, Case{2.5, 1.5}, Case{0.0, 0}}) {
      attn::MultiHeadOptions options;
      options.scale = c.scale;
      options.softcap = c.softcap;
      for (const auto& [mask, reference] : {std::pair<Mask, ReferenceMask>{Mask(), ReferenceMask()},
                                            {Mask::causal(), ReferenceMask::causal()}}) {
        const attn::Matrix<Scalar> got = self_attn(x, mask, {}, options);
        EXPECT_TRUE(
            attn_test::matrix_near(got,
                                   attn_test::reference_mha(x, x, w, cfg.num_heads, cfg.kv_heads(),
                                                            reference, c.scale, c.softcap),
                                   tol))
            << describe(cfg) << " scale " << c.scale.value_or(-1) << " softcap " << c.softcap;
        // And the options reach a cached call the same way (causal: the prefill's rows see
        // what the full pass's rows see).
        if (!mask.has_window()) continue;
        attn::KVCache<Scalar> cache = self_attn.make_cache(length);
        attn::Matrix<Scalar> decoded(length, cfg.model_dim);
        decoded.topRows(length - 1) = self_attn(x.topRows(length - 1), cache, mask, {}, options);
        self_attn.attend_into(x.bottomRows(1), cache, decoded.bottomRows(1), mask, options);
        EXPECT_TRUE(attn_test::matrix_near(decoded, got, 2 * tol)) << describe(cfg);
      }
    }
    attn::MultiHeadOptions defaults;
    defaults.scale = 1.0 / std::sqrt(double(cfg.head_dim()));
    defaults.softcap = 0;
    EXPECT_TRUE(
        bitwise_equal(self_attn(x, Mask::causal(), {}, defaults), self_attn(x, Mask::causal())));
  }
}

// options.executor replaces the functor's executor for one call, bitwise without effect on the
// result; left empty, the functor's own runs the call.
TYPED_TEST(SelfAttentionTest, OptionsExecutorReplacesTheFunctorsForOneCall) {
  using Scalar = TypeParam;
  Random rng(380);
  const MultiHeadConfig cfg = config(32, 4, 2, true);
  int own_calls = 0, option_calls = 0;
  const attn::SelfAttention<Scalar> self_attn(cfg, attn_test::random_weights<Scalar>(cfg, rng),
                                              counting_executor(own_calls));
  const attn::Matrix<Scalar> x = rng.uniform_matrix<Scalar>(1200, 32);
  attn::MultiHeadOptions threads;
  threads.executor = attn::thread_executor(2);
  attn::MultiHeadOptions counted;
  counted.executor = counting_executor(option_calls);

  const attn::Matrix<Scalar> serial = self_attn(x.topRows(200), Mask::causal());
  EXPECT_EQ(own_calls, 1);
  EXPECT_TRUE(bitwise_equal(self_attn(x.topRows(200), Mask::causal(), {}, threads), serial));
  EXPECT_TRUE(bitwise_equal(self_attn(x.topRows(200), Mask::causal(), {}, counted), serial));
  EXPECT_EQ(own_calls, 1);
  EXPECT_EQ(option_calls, 1);
  EXPECT_TRUE(bitwise_equal(self_attn(x.topRows(200), {150, 50}, Mask(), threads),
                            self_attn(x.topRows(200), {150, 50})));

  // Decode steps over 1100+ cached keys, split into parts: any thread count, the same bits.
  attn::KVCache<Scalar> serial_cache = self_attn.make_cache(1200);
  attn::KVCache<Scalar> threaded_cache = self_attn.make_cache(1200);
  (void)self_attn(x.topRows(1100), serial_cache);
  (void)self_attn(x.topRows(1100), threaded_cache, Mask::causal(), {}, threads);
  attn::Workspace workspace;
  threads.workspace = &workspace;
  attn::Matrix<Scalar> step(1, 32);
  for (Index t = 1100; t < 1105; ++t) {
    self_attn.attend_into(x.row(t), threaded_cache, step, Mask::causal(), threads);
    EXPECT_TRUE(bitwise_equal(step, self_attn(x.row(t), serial_cache))) << t;
  }
}

TYPED_TEST(SelfAttentionTest, AttendIntoChecksOutAndOptions) {
  using Scalar = TypeParam;
  using M = attn::Matrix<Scalar>;
  Random rng(390);
  const MultiHeadConfig cfg = config(16, 4, 2, true);
  const attn::SelfAttention<Scalar> self_attn(cfg, attn_test::random_weights<Scalar>(cfg, rng));
  const M x = rng.uniform_matrix<Scalar>(5, 16);
  M out = M::Constant(6, 16, Scalar(7));
  EXPECT_SHAPE_ERROR(self_attn.attend_into(x, out), "SelfAttention", "out is 6x16",
                     "expected 5x16");
  EXPECT_SHAPE_ERROR(self_attn.attend_into(x, out.leftCols(15).topRows(5)), "out is 5x15",
                     "expected 5x16");
  EXPECT_SHAPE_ERROR(self_attn.attend_into(x, {2, 3}, out), "out is 6x16", "expected 5x16");
  attn::MultiHeadOptions options;
  options.softcap = -1;
  EXPECT_SHAPE_ERROR(self_attn.attend_into(x, out.topRows(5), Mask(), options), "SelfAttention",
                     "softcap is -1");
  EXPECT_SHAPE_ERROR(self_attn(x, Mask(), {}, options), "SelfAttention", "softcap is -1");
  options.softcap = 0;
  options.scale = std::numeric_limits<double>::infinity();
  EXPECT_SHAPE_ERROR(self_attn(x, {5}, Mask(), options), "SelfAttention", "scale is inf");
  EXPECT_TRUE((out.array() == Scalar(7)).all());
}

}  // namespace
