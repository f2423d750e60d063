// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors

// CrossAttention with remembered memory as a decoder uses it: the source (an encoder's output, of
// another width than the decoder) is projected once, and each decoding step attends to it with
// one target row; every step equals that row of the direct call over the whole target. And the
// attention weights the functor returns through AttentionExtras (per head, or averaged) are
// softmax rows summing to 1 that match an fp64 softmax of the projected Q·Kᵀ/√d.

#include <attn/cross_attention.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "support/matrix_near.hpp"
#include "support/random.hpp"
#include "support/reference.hpp"
#include "support/tolerance.hpp"

namespace {

using attn::Index;
using attn::Mask;
using attn::MultiHeadConfig;
using attn_test::MatrixD;
using attn_test::Random;

template <typename Scalar>
class CrossAttentionMemoryTest : public ::testing::Test {};
using Scalars = ::testing::Types<float, double>;
TYPED_TEST_SUITE(CrossAttentionMemoryTest, Scalars);

MultiHeadConfig config(Index model_dim, Index heads, Index kv_heads, Index source_dim, bool bias) {
  MultiHeadConfig cfg;
  cfg.model_dim = model_dim;
  cfg.num_heads = heads;
  cfg.num_kv_heads = kv_heads;
  cfg.source_dim = source_dim;
  cfg.bias = bias;
  return cfg;
}

// Encoder–decoder shapes: the decoder's model_dim differs from the encoder's source_dim. GQA with
// biases, and MHA without.
const std::vector<MultiHeadConfig> configs = {config(16, 4, 2, 12, true),
                                              config(24, 3, 0, 40, false)};

// Source lengths: a short sentence, and one long enough that a decoding step (one query row)
// takes the kernel's split-key path (≥ 1024 keys: two 512-key parts, merged).
const std::vector<Index> source_lengths = {9, 1100};
constexpr Index target_length = 12;

std::string describe(const MultiHeadConfig& cfg, Index m) {
  return "E=" + std::to_string(cfg.model_dim) + " S=" + std::to_string(cfg.source_features()) +
         " H=" + std::to_string(cfg.num_heads) + " Hkv=" + std::to_string(cfg.kv_heads()) +
         " m=" + std::to_string(m);
}

// A step against the direct call: the same layer computed in Scalar along two paths (a 1-row
// query projection versus a 12-row one; the narrow decode kernel, split and merged for m = 1100,
// versus the wide block kernel). Each is within layer_tolerance of the exact result (checked here
// against reference_mha too), so they agree to within twice that: ≈ 5e-5 in float and 1e-13 in
// double at m = 1100, far below the O(0.01) of attending to a wrong source row or head.
template <typename Scalar>
double layer_tolerance(const MultiHeadConfig& cfg, Index m) {
  return attn_test::layer_tolerance<Scalar>(cfg.model_dim, cfg.source_features(), cfg.head_dim(),
                                            m);
}

TYPED_TEST(CrossAttentionMemoryTest, EveryDecodingStepEqualsTheDirectCallsRow) {
  using Scalar = TypeParam;
  std::uint32_t seed = 10;
  for (const MultiHeadConfig& cfg : configs) {
    for (const Index m : source_lengths) {
      Random rng(++seed);
      const auto w = attn_test::random_weights<Scalar>(cfg, rng);
      const attn::CrossAttention<Scalar> cross(cfg, w);
      const attn::Matrix<Scalar> source = rng.uniform_matrix<Scalar>(m, cfg.source_features());
      const attn::Matrix<Scalar> target = rng.uniform_matrix<Scalar>(target_length, cfg.model_dim);

      const auto memory = cross.remember(source);
      const attn::Matrix<Scalar> direct = cross(target, source);
      attn::Matrix<Scalar> steps(target_length, cfg.model_dim);
      for (Index t = 0; t < target_length; ++t) {
        const attn::Matrix<Scalar> step = cross(target.row(t), memory);
        ASSERT_EQ(step.rows(), 1);
        ASSERT_EQ(step.cols(), cfg.model_dim);
        steps.row(t) = step;
      }
      const double tol = layer_tolerance<Scalar>(cfg, m);
      // The worst element's row is the step that differs.
      EXPECT_TRUE(attn_test::matrix_near(steps, direct, 2 * tol))
          << describe(cfg, m) << " seed=" << seed;
      // Both against the fp64 reference.
      const MatrixD expected =
          attn_test::reference_mha(target, source, w, cfg.num_heads, cfg.kv_heads());
      EXPECT_TRUE(attn_test::matrix_near(steps, expected, tol))
          << describe(cfg, m) << " seed=" << seed;
      EXPECT_TRUE(attn_test::matrix_near(direct, expected, tol))
          << describe(cfg, m) << " seed=" << seed;
    }
  }
}

// A decoder's loop: the memory is made once from an encoder output that is then gone, and serves
// steps interleaved with other calls of the same functor (another memory, direct calls).
TYPED_TEST(CrossAttentionMemoryTest, MemoryOutlivesItsSourceAcrossInterleavedCalls) {
  using Scalar = TypeParam;
  Random rng(50);
  const MultiHeadConfig cfg = configs.front();
  const attn::CrossAttention<Scalar> cross(cfg, attn_test::random_weights<Scalar>(cfg, rng));
  const attn::Matrix<Scalar> source = rng.uniform_matrix<Scalar>(30, cfg.source_features());
  const attn::Matrix<Scalar> other = rng.uniform_matrix<Scalar>(17, cfg.source_features());
  const attn::Matrix<Scalar> target = rng.uniform_matrix<Scalar>(target_length, cfg.model_dim);
  const auto memory = cross.remember(attn::Matrix<Scalar>(source));  // from a temporary
  const auto other_memory = cross.remember(other);
  const attn::Matrix<Scalar> direct = cross(target, source);
  const double tol = 2 * layer_tolerance<Scalar>(cfg, 30);
  for (Index t = 0; t < target_length; ++t) {
    const attn::Matrix<Scalar> step = cross(target.row(t), memory);
    cross(target.row(t), other_memory);
    cross(target.topRows(t + 1), other);
    EXPECT_TRUE(attn_test::matrix_near(step, direct.row(t), tol)) << "step " << t;
  }
}

// The weights of attention for the given inputs, in fp64: Q = target·Wqᵀ + bq,
// K = source·Wkᵀ + bk, V likewise, then softmax(Q_h·K_g(h)ᵀ/√d) per head, head h in rows
// [h·n, (h + 1)·n); averaged over heads if asked.
template <typename Weights>
MatrixD reference_softmax_weights(const attn::Matrix<typename Weights::Scalar>& target,
                                  const attn::Matrix<typename Weights::Scalar>& source,
                                  const Weights& w, const MultiHeadConfig& cfg, bool average,
                                  double* logit_bound) {
  const attn_test::ReferenceWeights r = attn_test::reference_weights(w);
  const MatrixD q = attn_test::reference_linear(target, r.q_weight, r.q_bias);
  const MatrixD k = attn_test::reference_linear(source, r.k_weight, r.k_bias);
  const MatrixD v = attn_test::reference_linear(source, r.v_weight, r.v_bias);
  MatrixD weights;
  attn_test::reference_multi_head(q, k, v, cfg.num_heads, cfg.kv_heads(),
                                  attn_test::ReferenceMask(), std::nullopt, 0, nullptr, &weights);
  // |logit| ≤ scale·d·max|q|·max|k|: the B of attention_tolerance.
  const double d = static_cast<double>(cfg.head_dim());
  *logit_bound = d / std::sqrt(d) * q.cwiseAbs().maxCoeff() * k.cwiseAbs().maxCoeff();
  if (!average) return weights;
  const Index n = target.rows();
  MatrixD mean = MatrixD::Zero(n, weights.cols());
  for (Index h = 0; h < cfg.num_heads; ++h)
    mean += weights.middleRows(h * n, n);
  return mean / static_cast<double>(cfg.num_heads);
}

// Weights from the functor: the direct call, the memory call over the whole target, and single
// decoding steps; per head and averaged. Tolerances:
// - Row sums: each weight is exp(logit − lse) from the same Scalar logits as the lse, so the sum
//   is 1 up to the kernel's own rounding of the logits, the exps and the lse:
//   attention_tolerance(B, m) with B the logits' bound (weights are ≤ 1, so no value bound).
// - Against the fp64 softmax of the projected Q·Kᵀ/√d: a logit error δ (projections, reductions
//   over E and S, and the kernel) moves exp(logit − lse) by ≲ 2δ relatively (the logit and the
//   lse), which 2·layer_tolerance bounds: ≈ 5e-5 in float and 1e-13 in double at m = 1100. The
//   weights are O(1/m), so they are compared both absolutely and relatively to their own size
//   (an absolute 5e-5 alone would let a 1e-3 weight be 5 % off); a wrong head, key row or scale
//   changes them by O(1) relatively.
TYPED_TEST(CrossAttentionMemoryTest, AttentionWeightsSumToOneAndMatchTheReferenceSoftmax) {
  using Scalar = TypeParam;
  std::uint32_t seed = 60;
  for (const MultiHeadConfig& cfg : configs) {
    for (const Index m : source_lengths) {
      Random rng(++seed);
      const auto w = attn_test::random_weights<Scalar>(cfg, rng);
      const attn::CrossAttention<Scalar> cross(cfg, w);
      const attn::Matrix<Scalar> source = rng.uniform_matrix<Scalar>(m, cfg.source_features());
      const attn::Matrix<Scalar> target = rng.uniform_matrix<Scalar>(target_length, cfg.model_dim);
      const auto memory = cross.remember(source);
      const attn::Matrix<Scalar> plain = cross(target, memory);

      for (const bool average : {false, true}) {
        double logit_bound = 0;
        const MatrixD expected =
            reference_softmax_weights(target, source, w, cfg, average, &logit_bound);
        const double sum_tol = attn_test::attention_tolerance<Scalar>(logit_bound, m);
        const double tol = 2 * layer_tolerance<Scalar>(cfg, m);
        const std::string what = describe(cfg, m) + (average ? " averaged" : " per head") +
                                 " seed=" + std::to_string(seed);

        // Checks weights `got` of the functor against the reference's rows `want` for them.
        const auto check = [&](const attn::Matrix<Scalar>& got, const MatrixD& want,
                               const std::string& call) {
          ASSERT_EQ(got.rows(), want.rows()) << what << " " << call;
          ASSERT_EQ(got.cols(), m) << what << " " << call;
          const Eigen::VectorXd sums = got.template cast<double>().rowwise().sum();
          EXPECT_TRUE(attn_test::matrix_near(sums, Eigen::VectorXd::Ones(sums.size()), sum_tol))
              << what << " " << call << ": rows must sum to 1";
          EXPECT_TRUE(attn_test::matrix_near(got, want, tol)) << what << " " << call;
          // Weights are O(1/m): relative to their own size too, so that small ones count.
          const MatrixD relative =
              (got.template cast<double>() - want).cwiseQuotient(want.cwiseMax(1e-300));
          EXPECT_TRUE(
              attn_test::matrix_near(relative, MatrixD::Zero(want.rows(), want.cols()), 2 * tol))
              << what << " " << call << ": relative error";
        };

        attn::Matrix<Scalar> weights;
        attn::AttentionExtras<Scalar> extras;
        extras.weights = &weights;
        extras.average_heads = average;
        const Index n = target_length;

        const attn::Matrix<Scalar> direct = cross(target, source, Mask(), extras);
        check(weights, expected, "direct call");
        // Asking for the weights does not change the output.
        EXPECT_TRUE(attn_test::matrix_near(direct, plain, 2 * tol)) << what;

        const attn::Matrix<Scalar> with_memory = cross(target, memory, Mask(), extras);
        check(weights, expected, "memory call");
        EXPECT_TRUE(attn_test::matrix_near(with_memory, plain, 2 * tol)) << what;

        for (const Index t : {Index(0), Index(5), n - 1}) {
          const attn::Matrix<Scalar> step = cross(target.row(t), memory, Mask(), extras);
          // The reference rows of query t: row t of each head's block, or of the average.
          MatrixD want(average ? 1 : cfg.num_heads, m);
          if (average) {
            want = expected.row(t);
          } else {
            for (Index h = 0; h < cfg.num_heads; ++h)
              want.row(h) = expected.row(h * n + t);
          }
          check(weights, want, "step " + std::to_string(t));
          EXPECT_TRUE(attn_test::matrix_near(step, plain.row(t), 2 * tol)) << what << " step " << t;
        }
      }
    }
  }
}

}  // namespace
