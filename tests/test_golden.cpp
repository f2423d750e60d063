// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors

// attn against PyTorch: golden outputs computed by tests/reference/generate_golden.py (float64,
// torch.softmax math for the kernel, torch.nn.MultiheadAttention for the functors, torch ops for
// grouped-query attention), read from tests/reference/golden/ without Python.

#include <gtest/gtest.h>

#include <attn/attn.hpp>
#include <string>

#include "support/golden.hpp"
#include "support/matrix_near.hpp"

namespace {

using attn::Index;
using attn::Mask;
using attn::Matrix;
using attn::Vector;
using attn_test::Golden;
using attn_test::load_golden;

// Tolerances.
//
// The golden values are PyTorch's float64 results on inputs and weights that are multiples of
// 1/64 (1/16 for biases), hence exact in float as well as in double: what is measured is the
// rounding of attn's arithmetic, not of its inputs. Every output element ends a chain of
// reductions of total length
//   K = d (the logit's dot product) + m (the softmax's sum and the weighted sum of the values)
//       [+ S (input projection) + E (output projection) for the functors],
// and a K-term sum in precision eps is off by at most about K·eps times the sum of its terms'
// magnitudes (Higham's gamma_K; blocked and pairwise sums do better, so this is a worst case).
// The terms here are O(1): inputs lie in [-1, 1] ([-2, 2] in the soft-cap cases), weights in
// [-1/2, 1/2], logits and biases are a few units, so exp adds a relative error of a few eps and
// projected values stay O(1); matrix_near compares |got − expected| / max(1, |expected|). The
// factor 8 covers magnitudes up to 4 and, for double, that the golden itself carries float64
// rounding of the same size as attn's (two such errors). So:
//   float:  8·K·1.19e-7, e.g. 1.8e-5 for K = 19 and 2.9e-4 for the long case (K = 308);
//   double: 8·K·2.2e-16, e.g. 3.4e-14 for K = 19 and 5.5e-13 for the long case.
// A real disagreement (a mask misaligned by one key, a wrong scale, cap after bias) moves outputs
// by 1e-3 to 1, far above either.
template <typename T>
double tolerance(Index reduction_length) {
  return 8.0 * static_cast<double>(reduction_length) * Eigen::NumTraits<T>::epsilon();
}

template <typename T>
class GoldenTest : public ::testing::Test {};

using Scalars = ::testing::Types<float, double>;
TYPED_TEST_SUITE(GoldenTest, Scalars);

// ---------------------------------------------------------------------------------------------
// Kernel: scaled_dot_product_attention against torch.softmax(q @ k.T * scale + bias) @ v.

/// Runs the kernel on the golden q, k, v (cast to T) with the file's scale, softcap and head counts
/// when present, and compares with the golden entry `output`.
template <typename T>
void expect_kernel_matches(const Golden& g, const std::string& output, const Mask& mask) {
  const Matrix<T> q = g.matrix<T>("q");
  const Matrix<T> k = g.matrix<T>("k");
  const Matrix<T> v = g.matrix<T>("v");
  attn::AttentionOptions options;
  if (g.has("num_heads")) options.num_heads = g.index("num_heads");
  if (g.has("num_kv_heads")) options.num_kv_heads = g.index("num_kv_heads");
  if (g.has("scale")) options.scale = g.scalar<double>("scale");
  if (g.has("softcap")) options.softcap = g.scalar<double>("softcap");
  const Index head_dim = q.cols() / options.num_heads;
  const Matrix<T> out = attn::scaled_dot_product_attention(q, k, v, mask, options);
  EXPECT_MATRIX_NEAR(out, g.matrix<double>(output), tolerance<T>(head_dim + k.rows()))
      << g.path() << ": " << output;
}

TYPED_TEST(GoldenTest, KernelNoMask) {
  expect_kernel_matches<TypeParam>(load_golden("kernel_no_mask"), "out", Mask::none());
}

TYPED_TEST(GoldenTest, KernelCausalFewerQueriesThanKeys) {
  expect_kernel_matches<TypeParam>(load_golden("kernel_causal_n_lt_m"), "out", Mask::causal());
}

TYPED_TEST(GoldenTest, KernelCausalMoreQueriesThanKeys) {
  // The first n − m = 7 queries see no key: their golden rows are zero.
  expect_kernel_matches<TypeParam>(load_golden("kernel_causal_n_gt_m"), "out", Mask::causal());
}

TYPED_TEST(GoldenTest, KernelWindow) {
  const Golden g = load_golden("kernel_window");
  expect_kernel_matches<TypeParam>(g, "out", Mask::window(g.index("left"), g.index("right")));
}

TYPED_TEST(GoldenTest, KernelKeepWithFullyMaskedRow) {
  const Golden g = load_golden("kernel_keep");
  expect_kernel_matches<TypeParam>(g, "out", Mask::keep(g.mask("keep")));
}

TYPED_TEST(GoldenTest, KernelBias) {
  const Golden g = load_golden("kernel_bias");
  expect_kernel_matches<TypeParam>(g, "out", Mask::bias(g.matrix<TypeParam>("bias")));
}

TYPED_TEST(GoldenTest, KernelValueDimDiffersFromHeadDim) {
  expect_kernel_matches<TypeParam>(load_golden("kernel_value_dim"), "out", Mask::none());
}

TYPED_TEST(GoldenTest, KernelCustomScale) {
  expect_kernel_matches<TypeParam>(load_golden("kernel_scale"), "out", Mask::none());
}

TYPED_TEST(GoldenTest, KernelSoftcap) {
  expect_kernel_matches<TypeParam>(load_golden("kernel_softcap"), "out", Mask::none());
}

TYPED_TEST(GoldenTest, KernelSoftcapBeforeBias) {
  const Golden g = load_golden("kernel_softcap_bias");
  expect_kernel_matches<TypeParam>(g, "out", Mask::bias(g.matrix<TypeParam>("bias")));
}

TYPED_TEST(GoldenTest, KernelCausalKeepBiasCombined) {
  // Row 2's bias is −∞ on every key: it sees no key, and its golden row is zero.
  const Golden g = load_golden("kernel_combined");
  const Mask mask =
      Mask::causal() & Mask::keep(g.mask("keep")) & Mask::bias(g.matrix<TypeParam>("bias"));
  expect_kernel_matches<TypeParam>(g, "out", mask);
}

TYPED_TEST(GoldenTest, KernelGroupedQueryHeads) {
  const Golden g = load_golden("kernel_gqa");
  expect_kernel_matches<TypeParam>(g, "out", Mask::none());
  expect_kernel_matches<TypeParam>(g, "out_causal", Mask::causal());
}

TYPED_TEST(GoldenTest, KernelLongSequenceSpansTiles) {
  // 70 queries over 300 keys: two query blocks of the tiled kernel and three key blocks, some
  // skipped entirely by the window.
  const Golden g = load_golden("kernel_long");
  expect_kernel_matches<TypeParam>(g, "out", Mask::none());
  expect_kernel_matches<TypeParam>(g, "out_causal", Mask::causal());
  expect_kernel_matches<TypeParam>(g, "out_window", Mask::window(g.index("left"), 0));
}

// ---------------------------------------------------------------------------------------------
// Functors: SelfAttention and CrossAttention against torch.nn.MultiheadAttention (and torch ops
// for grouped-query attention), with the weights as PyTorch holds them.

template <typename T>
Vector<T> vector_or_empty(const Golden& g, const std::string& name) {
  return g.has(name) ? g.vector<T>(name) : Vector<T>();
}

/// The weights through MultiHeadWeights::from_pytorch: the packed overload when the file has
/// in_proj_weight, the separate-weights one otherwise.
template <typename T>
attn::MultiHeadWeights<T> weights_from(const Golden& g) {
  const Vector<T> in_bias = vector_or_empty<T>(g, "in_proj_bias");
  const Vector<T> out_bias = vector_or_empty<T>(g, "out_proj.bias");
  if (g.has("in_proj_weight")) {
    return attn::MultiHeadWeights<T>::from_pytorch(g.matrix<T>("in_proj_weight"), in_bias,
                                                   g.matrix<T>("out_proj.weight"), out_bias);
  }
  return attn::MultiHeadWeights<T>::from_pytorch(
      g.matrix<T>("q_proj_weight"), g.matrix<T>("k_proj_weight"), g.matrix<T>("v_proj_weight"),
      in_bias, g.matrix<T>("out_proj.weight"), out_bias);
}

attn::MultiHeadConfig config_from(const Golden& g, Index model_dim, Index source_dim) {
  attn::MultiHeadConfig cfg;
  cfg.model_dim = model_dim;
  cfg.num_heads = g.index("num_heads");
  cfg.num_kv_heads = g.has("num_kv_heads") ? g.index("num_kv_heads") : 0;
  cfg.source_dim = source_dim;
  cfg.bias = g.has("in_proj_bias");
  return cfg;
}

/// Reduction length of a functor's output: input projection over S, the kernel over d and m,
/// the output projection over E.
Index functor_reduction(const attn::MultiHeadConfig& cfg, Index keys) {
  return cfg.source_features() + cfg.head_dim() + keys + cfg.model_dim;
}

template <typename T>
void expect_self_attention_matches(const Golden& g) {
  const Matrix<T> x = g.matrix<T>("x");
  const attn::MultiHeadConfig cfg = config_from(g, x.cols(), 0);
  const attn::SelfAttention<T> self_attention(cfg, weights_from<T>(g));
  const double tol = tolerance<T>(functor_reduction(cfg, x.rows()));
  EXPECT_MATRIX_NEAR(self_attention(x), g.matrix<double>("y"), tol) << g.path() << ": y";
  EXPECT_MATRIX_NEAR(self_attention(x, Mask::causal()), g.matrix<double>("y_causal"), tol)
      << g.path() << ": y_causal";
}

TYPED_TEST(GoldenTest, SelfAttentionMatchesMultiheadAttention) {
  expect_self_attention_matches<TypeParam>(load_golden("mha_self"));
}

TYPED_TEST(GoldenTest, SelfAttentionWithoutBiasMatchesMultiheadAttention) {
  expect_self_attention_matches<TypeParam>(load_golden("mha_self_no_bias"));
}

TYPED_TEST(GoldenTest, CrossAttentionWithSourceDimMatchesMultiheadAttention) {
  // kdim = vdim = 12 ≠ E = 16: q_proj_weight, k_proj_weight, v_proj_weight.
  using T = TypeParam;
  const Golden g = load_golden("mha_cross_kdim");
  const Matrix<T> target = g.matrix<T>("target");
  const Matrix<T> source = g.matrix<T>("source");
  const attn::MultiHeadConfig cfg = config_from(g, target.cols(), source.cols());
  const attn::CrossAttention<T> cross(cfg, weights_from<T>(g));
  const double tol = tolerance<T>(functor_reduction(cfg, source.rows()));
  EXPECT_MATRIX_NEAR(cross(target, source), g.matrix<double>("y"), tol);
  EXPECT_MATRIX_NEAR(cross(target, cross.remember(source)), g.matrix<double>("y"), tol);
  // torch was given the bottom-right causal attn_mask explicitly.
  EXPECT_MATRIX_NEAR(cross(target, source, Mask::causal()), g.matrix<double>("y_causal"), tol);
}

TYPED_TEST(GoldenTest, CrossAttentionPackedWeightsMatchesMultiheadAttention) {
  // kdim = vdim = E: in_proj_weight; key_padding_mask becomes a keep mask of identical rows.
  using T = TypeParam;
  const Golden g = load_golden("mha_cross_packed");
  const Matrix<T> target = g.matrix<T>("target");
  const Matrix<T> source = g.matrix<T>("source");
  const attn::MultiHeadConfig cfg = config_from(g, target.cols(), source.cols());
  const attn::CrossAttention<T> cross(cfg, weights_from<T>(g));
  const double tol = tolerance<T>(functor_reduction(cfg, source.rows()));
  EXPECT_MATRIX_NEAR(cross(target, source), g.matrix<double>("y"), tol);

  const Matrix<bool> padding = g.mask("key_padding_mask");  // 1 × m, true = ignored (torch)
  const Matrix<bool> keep = (!padding.array()).matrix().replicate(target.rows(), 1);
  EXPECT_MATRIX_NEAR(cross(target, source, Mask::keep(keep)), g.matrix<double>("y_key_padding"),
                     tol);
}

TYPED_TEST(GoldenTest, GroupedQuerySelfAttention) {
  using T = TypeParam;
  const Golden g = load_golden("gqa_self");
  expect_self_attention_matches<T>(g);

  // The packed overload of from_pytorch splits an (E + 2·kv_dim) × E in_proj_weight the same way.
  const Matrix<T> wq = g.matrix<T>("q_proj_weight");
  const Matrix<T> wk = g.matrix<T>("k_proj_weight");
  const Matrix<T> wv = g.matrix<T>("v_proj_weight");
  Matrix<T> in_proj(wq.rows() + wk.rows() + wv.rows(), wq.cols());
  in_proj << wq, wk, wv;
  const auto packed = attn::MultiHeadWeights<T>::from_pytorch(in_proj, g.vector<T>("in_proj_bias"),
                                                              g.matrix<T>("out_proj.weight"),
                                                              g.vector<T>("out_proj.bias"));
  const Matrix<T> x = g.matrix<T>("x");
  const attn::MultiHeadConfig cfg = config_from(g, x.cols(), 0);
  const attn::SelfAttention<T> self_attention(cfg, packed);
  EXPECT_MATRIX_NEAR(self_attention(x, Mask::causal()), g.matrix<double>("y_causal"),
                     tolerance<T>(functor_reduction(cfg, x.rows())));
}

TYPED_TEST(GoldenTest, GroupedQueryCrossAttention) {
  using T = TypeParam;
  const Golden g = load_golden("gqa_cross");
  const Matrix<T> target = g.matrix<T>("target");
  const Matrix<T> source = g.matrix<T>("source");
  const attn::MultiHeadConfig cfg = config_from(g, target.cols(), source.cols());
  const attn::CrossAttention<T> cross(cfg, weights_from<T>(g));
  EXPECT_MATRIX_NEAR(cross(target, source), g.matrix<double>("y"),
                     tolerance<T>(functor_reduction(cfg, source.rows())));
}

}  // namespace
