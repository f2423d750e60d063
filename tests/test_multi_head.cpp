// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors

// attn::MultiHeadConfig and attn::MultiHeadWeights: derived sizes, validation messages, weight
// shape checks (through the functors that perform them), and the PyTorch importers.

#include <attn/cross_attention.hpp>
#include <attn/multi_head.hpp>
#include <attn/self_attention.hpp>

#include "support/matrix_near.hpp"
#include "support/random.hpp"
#include "support/shape_error.hpp"

namespace {

using attn::Index;
using attn::MultiHeadConfig;

MultiHeadConfig config(Index model_dim, Index heads, Index kv_heads = 0, Index source_dim = 0,
                       bool bias = true) {
  MultiHeadConfig cfg;
  cfg.model_dim = model_dim;
  cfg.num_heads = heads;
  cfg.num_kv_heads = kv_heads;
  cfg.source_dim = source_dim;
  cfg.bias = bias;
  return cfg;
}

// ---------------------------------------------------------------------------------------------
// MultiHeadConfig
// ---------------------------------------------------------------------------------------------

TEST(MultiHeadConfig, DerivedSizes) {
  const MultiHeadConfig mha = config(64, 8);
  EXPECT_EQ(mha.kv_heads(), 8);
  EXPECT_EQ(mha.head_dim(), 8);
  EXPECT_EQ(mha.kv_dim(), 64);
  EXPECT_EQ(mha.source_features(), 64);
  EXPECT_TRUE(mha.bias);

  const MultiHeadConfig gqa = config(64, 8, 2, 48);
  EXPECT_EQ(gqa.kv_heads(), 2);
  EXPECT_EQ(gqa.head_dim(), 8);
  EXPECT_EQ(gqa.kv_dim(), 16);
  EXPECT_EQ(gqa.source_features(), 48);

  const MultiHeadConfig mqa = config(32, 4, 1);
  EXPECT_EQ(mqa.kv_dim(), 8);

  EXPECT_EQ(config(32, 0).head_dim(), 0);  // no division by zero before validation
  EXPECT_EQ(MultiHeadConfig{}.num_heads, 1);
  EXPECT_EQ(MultiHeadConfig{}.bias, true);
}

TEST(MultiHeadConfig, ValidateAcceptsConsistentConfigs) {
  for (const MultiHeadConfig& cfg :
       {config(8, 1), config(64, 8), config(64, 8, 2), config(64, 8, 1, 48),
        config(24, 6, 3, 24, false), config(5, 5, 5)}) {
    EXPECT_NO_THROW(cfg.validate("test"));
  }
}

TEST(MultiHeadConfig, ValidateNamesTheCallerAndTheOffendingNumbers) {
  EXPECT_SHAPE_ERROR(config(0, 1).validate("who"), "who", "model_dim is 0");
  EXPECT_SHAPE_ERROR(config(-4, 1).validate("who"), "who", "model_dim is -4");
  EXPECT_SHAPE_ERROR(config(8, 0).validate("who"), "who", "num_heads is 0");
  EXPECT_SHAPE_ERROR(config(8, -2).validate("who"), "who", "num_heads is -2");
  EXPECT_SHAPE_ERROR(config(10, 4).validate("who"), "who", "model_dim 10", "num_heads 4");
  EXPECT_SHAPE_ERROR(config(16, 4, 3).validate("who"), "who", "num_heads 4", "num_kv_heads 3");
  EXPECT_SHAPE_ERROR(config(16, 4, 8).validate("who"), "who", "num_heads 4", "num_kv_heads 8");
  EXPECT_SHAPE_ERROR(config(16, 4, -1).validate("who"), "who", "num_kv_heads -1");
  EXPECT_SHAPE_ERROR(config(16, 4, 0, -1).validate("who"), "who", "source_dim is -1");
}

// The functors validate their config on construction and say who they are.
template <typename Scalar>
class MultiHeadWeightsTest : public ::testing::Test {};
using Scalars = ::testing::Types<float, double>;
TYPED_TEST_SUITE(MultiHeadWeightsTest, Scalars);

TYPED_TEST(MultiHeadWeightsTest, FunctorsRejectInconsistentConfigs) {
  using Scalar = TypeParam;
  const attn::MultiHeadWeights<Scalar> none;
  EXPECT_SHAPE_ERROR(attn::SelfAttention<Scalar>(config(10, 4), none), "SelfAttention",
                     "model_dim 10", "num_heads 4");
  EXPECT_SHAPE_ERROR(attn::CrossAttention<Scalar>(config(10, 4), none), "CrossAttention",
                     "model_dim 10", "num_heads 4");
  EXPECT_SHAPE_ERROR(attn::SelfAttention<Scalar>(config(16, 4, 3), none), "SelfAttention",
                     "num_heads 4", "num_kv_heads 3");
  EXPECT_SHAPE_ERROR(attn::CrossAttention<Scalar>(config(16, 4, 3, 8), none), "CrossAttention",
                     "num_heads 4", "num_kv_heads 3");
  EXPECT_SHAPE_ERROR(attn::SelfAttention<Scalar>(config(0, 1), none), "SelfAttention",
                     "model_dim is 0");
  // Self-attention projects keys and values from x itself: a source_dim other than E is an error.
  EXPECT_SHAPE_ERROR(attn::SelfAttention<Scalar>(config(8, 2, 0, 6), none), "SelfAttention",
                     "source_dim is 6", "model_dim 8");
}

// ---------------------------------------------------------------------------------------------
// Weight shapes, checked by the functors: E = 8, H = 4, Hkv = 2 (kv_dim 4), S = 6.
// ---------------------------------------------------------------------------------------------

TYPED_TEST(MultiHeadWeightsTest, EveryWrongWeightShapeIsNamed) {
  using Scalar = TypeParam;
  using M = attn::Matrix<Scalar>;
  using V = attn::Vector<Scalar>;
  attn_test::Random rng(5);
  const MultiHeadConfig cross_cfg = config(8, 4, 2, 6);
  const MultiHeadConfig self_cfg = config(8, 4, 2);
  const attn::MultiHeadWeights<Scalar> good_cross =
      attn_test::random_weights<Scalar>(cross_cfg, rng);
  const attn::MultiHeadWeights<Scalar> good_self = attn_test::random_weights<Scalar>(self_cfg, rng);
  EXPECT_NO_THROW(attn::CrossAttention<Scalar>(cross_cfg, good_cross));
  EXPECT_NO_THROW(attn::SelfAttention<Scalar>(self_cfg, good_self));

  auto w = good_cross;
  w.q_weight = M::Zero(8, 7);
  EXPECT_SHAPE_ERROR(attn::CrossAttention<Scalar>(cross_cfg, w), "CrossAttention",
                     "weights.q_weight is 8x7", "expected 8x8");
  w = good_cross;
  w.k_weight = M::Zero(8, 6);  // kv_dim is 4, not E
  EXPECT_SHAPE_ERROR(attn::CrossAttention<Scalar>(cross_cfg, w), "weights.k_weight is 8x6",
                     "expected 4x6");
  w = good_cross;
  w.k_weight = M::Zero(4, 8);  // source_dim is 6, not E
  EXPECT_SHAPE_ERROR(attn::CrossAttention<Scalar>(cross_cfg, w), "weights.k_weight is 4x8",
                     "expected 4x6");
  w = good_cross;
  w.v_weight = M::Zero(4, 5);
  EXPECT_SHAPE_ERROR(attn::CrossAttention<Scalar>(cross_cfg, w), "weights.v_weight is 4x5",
                     "expected 4x6");
  w = good_cross;
  w.out_weight = M::Zero(8, 4);
  EXPECT_SHAPE_ERROR(attn::CrossAttention<Scalar>(cross_cfg, w), "weights.out_weight is 8x4",
                     "expected 8x8");

  auto s = good_self;
  s.k_weight = M::Zero(4, 6);
  EXPECT_SHAPE_ERROR(attn::SelfAttention<Scalar>(self_cfg, s), "SelfAttention",
                     "weights.k_weight is 4x6", "expected 4x8");
  s = good_self;
  s.v_weight = M::Zero(8, 8);
  EXPECT_SHAPE_ERROR(attn::SelfAttention<Scalar>(self_cfg, s), "weights.v_weight is 8x8",
                     "expected 4x8");

  // Bias lengths.
  w = good_cross;
  w.q_bias = V::Zero(7);
  EXPECT_SHAPE_ERROR(attn::CrossAttention<Scalar>(cross_cfg, w), "weights.q_bias has 7 elements",
                     "expected 8");
  w = good_cross;
  w.k_bias = V::Zero(8);
  EXPECT_SHAPE_ERROR(attn::CrossAttention<Scalar>(cross_cfg, w), "weights.k_bias has 8 elements",
                     "expected 4");
  w = good_cross;
  w.v_bias = V::Zero(3);
  EXPECT_SHAPE_ERROR(attn::CrossAttention<Scalar>(cross_cfg, w), "weights.v_bias has 3 elements",
                     "expected 4");
  w = good_cross;
  w.out_bias = V();
  EXPECT_SHAPE_ERROR(attn::CrossAttention<Scalar>(cross_cfg, w), "weights.out_bias has 0 elements",
                     "expected 8");

  // Biases present although config.bias is false.
  MultiHeadConfig no_bias = cross_cfg;
  no_bias.bias = false;
  for (int member = 0; member < 4; ++member) {
    auto b = good_cross;
    if (member != 0) b.q_bias = V();
    if (member != 1) b.k_bias = V();
    if (member != 2) b.v_bias = V();
    if (member != 3) b.out_bias = V();
    const char* name = member == 0   ? "weights.q_bias"
                       : member == 1 ? "weights.k_bias"
                       : member == 2 ? "weights.v_bias"
                                     : "weights.out_bias";
    EXPECT_SHAPE_ERROR(attn::CrossAttention<Scalar>(no_bias, b), name, "expected 0",
                       "config.bias is false");
  }
}

// ---------------------------------------------------------------------------------------------
// from_pytorch
// ---------------------------------------------------------------------------------------------

TYPED_TEST(MultiHeadWeightsTest, FromPytorchPackedSplitsRowsInOrder) {
  using Scalar = TypeParam;
  using M = attn::Matrix<Scalar>;
  attn_test::Random rng(7);
  for (const auto& [e, kv] : {std::pair<Index, Index>{8, 8}, {16, 4}}) {  // MHA (3E × E) and GQA
    const M in_proj_weight = rng.uniform_matrix<Scalar>(e + 2 * kv, e);
    const attn::Vector<Scalar> in_proj_bias = rng.uniform_vector<Scalar>(e + 2 * kv);
    const M out_weight = rng.uniform_matrix<Scalar>(e, e);
    const attn::Vector<Scalar> out_bias = rng.uniform_vector<Scalar>(e);
    const auto w = attn::MultiHeadWeights<Scalar>::from_pytorch(in_proj_weight, in_proj_bias,
                                                                out_weight, out_bias);
    EXPECT_TRUE(attn_test::matrix_near(w.q_weight, in_proj_weight.topRows(e), 0.0));
    EXPECT_TRUE(attn_test::matrix_near(w.k_weight, in_proj_weight.middleRows(e, kv), 0.0));
    EXPECT_TRUE(attn_test::matrix_near(w.v_weight, in_proj_weight.bottomRows(kv), 0.0));
    EXPECT_TRUE(attn_test::matrix_near(w.out_weight, out_weight, 0.0));
    EXPECT_TRUE(attn_test::matrix_near(w.q_bias, in_proj_bias.head(e), 0.0));
    EXPECT_TRUE(attn_test::matrix_near(w.k_bias, in_proj_bias.segment(e, kv), 0.0));
    EXPECT_TRUE(attn_test::matrix_near(w.v_bias, in_proj_bias.tail(kv), 0.0));
    EXPECT_TRUE(attn_test::matrix_near(w.out_bias, out_bias, 0.0));

    // A 1-D PyTorch tensor may arrive as a row vector.
    const Eigen::Matrix<Scalar, 1, Eigen::Dynamic> row_bias = in_proj_bias.transpose();
    const auto from_row = attn::MultiHeadWeights<Scalar>::from_pytorch(
        in_proj_weight, row_bias, out_weight, out_bias.transpose());
    EXPECT_TRUE(attn_test::matrix_near(from_row.k_bias, in_proj_bias.segment(e, kv), 0.0));
    EXPECT_TRUE(attn_test::matrix_near(from_row.out_bias, out_bias, 0.0));

    // Without biases.
    const auto no_bias = attn::MultiHeadWeights<Scalar>::from_pytorch(
        in_proj_weight, attn::Vector<Scalar>(), out_weight, attn::Vector<Scalar>());
    EXPECT_EQ(no_bias.q_bias.size(), 0);
    EXPECT_EQ(no_bias.k_bias.size(), 0);
    EXPECT_EQ(no_bias.v_bias.size(), 0);
    EXPECT_EQ(no_bias.out_bias.size(), 0);
    EXPECT_TRUE(attn_test::matrix_near(no_bias.v_weight, in_proj_weight.bottomRows(kv), 0.0));
  }
}

TYPED_TEST(MultiHeadWeightsTest, FromPytorchSeparateKeepsEachWeight) {
  using Scalar = TypeParam;
  using M = attn::Matrix<Scalar>;
  attn_test::Random rng(8);
  const Index e = 16, kv = 8, s = 12;
  const M q = rng.uniform_matrix<Scalar>(e, e);
  const M k = rng.uniform_matrix<Scalar>(kv, s);
  const M v = rng.uniform_matrix<Scalar>(kv, s);
  const M out = rng.uniform_matrix<Scalar>(e, e);
  const attn::Vector<Scalar> in_bias = rng.uniform_vector<Scalar>(e + 2 * kv);
  const attn::Vector<Scalar> out_bias = rng.uniform_vector<Scalar>(e);
  const auto w = attn::MultiHeadWeights<Scalar>::from_pytorch(q, k, v, in_bias, out, out_bias);
  EXPECT_TRUE(attn_test::matrix_near(w.q_weight, q, 0.0));
  EXPECT_TRUE(attn_test::matrix_near(w.k_weight, k, 0.0));
  EXPECT_TRUE(attn_test::matrix_near(w.v_weight, v, 0.0));
  EXPECT_TRUE(attn_test::matrix_near(w.out_weight, out, 0.0));
  EXPECT_TRUE(attn_test::matrix_near(w.q_bias, in_bias.head(e), 0.0));
  EXPECT_TRUE(attn_test::matrix_near(w.k_bias, in_bias.segment(e, kv), 0.0));
  EXPECT_TRUE(attn_test::matrix_near(w.v_bias, in_bias.tail(kv), 0.0));
  EXPECT_TRUE(attn_test::matrix_near(w.out_bias, out_bias, 0.0));

  // Column-major inputs and expressions are copied into the row-major members value by value.
  const Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic> k_col = k;
  const auto from_exprs = attn::MultiHeadWeights<Scalar>::from_pytorch(
      q.transpose().transpose(), k_col, Scalar(2) * v, in_bias, out, out_bias);
  EXPECT_TRUE(attn_test::matrix_near(from_exprs.k_weight, k, 0.0));
  EXPECT_TRUE(attn_test::matrix_near(from_exprs.v_weight, M(Scalar(2) * v), 0.0));
}

TYPED_TEST(MultiHeadWeightsTest, FromPytorchRejectsUnsplittableInputs) {
  using Scalar = TypeParam;
  using M = attn::Matrix<Scalar>;
  using V = attn::Vector<Scalar>;
  // 2E + 1 rows cannot be E + 2·kv_dim; fewer than E rows neither.
  EXPECT_SHAPE_ERROR(
      attn::MultiHeadWeights<Scalar>::from_pytorch(M::Zero(17, 8), V(), M::Zero(8, 8), V()),
      "from_pytorch", "in_proj_weight is 17x8", "24x8");
  EXPECT_SHAPE_ERROR(
      attn::MultiHeadWeights<Scalar>::from_pytorch(M::Zero(6, 8), V(), M::Zero(8, 8), V()),
      "in_proj_weight is 6x8", "24x8");
  // in_proj_bias of neither 0 nor the weights' row count.
  EXPECT_SHAPE_ERROR(
      attn::MultiHeadWeights<Scalar>::from_pytorch(M::Zero(24, 8), V::Zero(23), M::Zero(8, 8), V()),
      "in_proj_bias has 23 elements", "expected 0 or 24");
  EXPECT_SHAPE_ERROR(
      attn::MultiHeadWeights<Scalar>::from_pytorch(M::Zero(8, 8), M::Zero(4, 6), M::Zero(4, 6),
                                                   V::Zero(8), M::Zero(8, 8), V()),
      "in_proj_bias has 8 elements", "expected 0 or 16");
}

// Weights from either importer give a functor identical to one built from the members directly.
TYPED_TEST(MultiHeadWeightsTest, FromPytorchWeightsWorkInTheFunctors) {
  using Scalar = TypeParam;
  using M = attn::Matrix<Scalar>;
  attn_test::Random rng(9);
  const MultiHeadConfig self_cfg = config(16, 4, 2);
  const auto w = attn_test::random_weights<Scalar>(self_cfg, rng);
  M in_proj(16 + 2 * 8, 16);
  in_proj << w.q_weight, w.k_weight, w.v_weight;
  attn::Vector<Scalar> in_bias(16 + 2 * 8);
  in_bias << w.q_bias, w.k_bias, w.v_bias;
  const attn::SelfAttention<Scalar> manual(self_cfg, w);
  const attn::SelfAttention<Scalar> imported(
      self_cfg,
      attn::MultiHeadWeights<Scalar>::from_pytorch(in_proj, in_bias, w.out_weight, w.out_bias));
  const M x = rng.uniform_matrix<Scalar>(11, 16);
  EXPECT_TRUE(attn_test::matrix_near(imported(x, attn::Mask::causal()),
                                     manual(x, attn::Mask::causal()), 0.0));

  const MultiHeadConfig cross_cfg = config(16, 4, 1, 10, true);
  const auto cw = attn_test::random_weights<Scalar>(cross_cfg, rng);
  attn::Vector<Scalar> cross_bias(16 + 2 * 4);
  cross_bias << cw.q_bias, cw.k_bias, cw.v_bias;
  const attn::CrossAttention<Scalar> cross_manual(cross_cfg, cw);
  const attn::CrossAttention<Scalar> cross_imported(
      cross_cfg,
      attn::MultiHeadWeights<Scalar>::from_pytorch(cw.q_weight, cw.k_weight, cw.v_weight,
                                                   cross_bias, cw.out_weight, cw.out_bias));
  const M target = rng.uniform_matrix<Scalar>(5, 16);
  const M source = rng.uniform_matrix<Scalar>(9, 10);
  EXPECT_TRUE(
      attn_test::matrix_near(cross_imported(target, source), cross_manual(target, source), 0.0));
}

}  // namespace
