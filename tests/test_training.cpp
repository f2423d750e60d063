// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors

// attn::forward and attn::backward for SelfAttention and CrossAttention: the forward is the
// layer's own (bitwise); every gradient (inputs, each weight and bias) matches central finite
// differences of the layer in double, with GQA, rotary embeddings, biases or none, a source of
// another width, and causal or windowed masks; float gradients agree with double ones; a tape from
// another layer or a wrong d_out throws.

#include <attn/training.hpp>

#include <cstdint>
#include <functional>
#include <string>
#include <type_traits>
#include <vector>

#include "support/golden.hpp"
#include "support/golden_layers.hpp"
#include "support/matrix_near.hpp"
#include "support/random.hpp"
#include "support/reference_gradients.hpp"
#include "support/shape_error.hpp"

namespace {

using attn::Index;
using attn::Mask;
using attn::Matrix;
using attn_test::MatrixD;
using attn_test::Random;

using Weights = attn::MultiHeadWeights<double>;

// Each weight and bias field of MultiHeadWeights, by name, for finite differences.
struct Field {
  const char* name;
  Matrix<double> Weights::*matrix;
  attn::Vector<double> Weights::*vector;
};
const std::vector<Field> fields = {
    {"q_weight", &Weights::q_weight, nullptr}, {"k_weight", &Weights::k_weight, nullptr},
    {"v_weight", &Weights::v_weight, nullptr}, {"out_weight", &Weights::out_weight, nullptr},
    {"q_bias", nullptr, &Weights::q_bias},     {"k_bias", nullptr, &Weights::k_bias},
    {"v_bias", nullptr, &Weights::v_bias},     {"out_bias", nullptr, &Weights::out_bias}};

// The field as a matrix (a bias as one column), and a copy of w with it replaced.
MatrixD get(const Weights& w, const Field& f) {
  return f.matrix ? MatrixD(w.*f.matrix) : MatrixD((w.*f.vector));
}
Weights with(const Weights& w, const Field& f, const MatrixD& value) {
  Weights copy = w;
  if (f.matrix) {
    copy.*f.matrix = value;
  } else {
    copy.*f.vector = value.col(0);
  }
  return copy;
}

// Central differences are within ~1e-9 of the derivative here (step 1e-6, O(1) values).
constexpr double fd_tolerance = 1e-7;

void expect_weights_match(const Weights& got, const Weights& weights,
                          const std::function<double(const Weights&)>& loss,
                          const std::string& context) {
  for (const Field& f : fields) {
    const MatrixD value = get(weights, f);
    if (value.size() == 0) {
      EXPECT_EQ(get(got, f).size(), 0) << context << ", " << f.name;
      continue;
    }
    const MatrixD numeric = attn_test::finite_differences(
        value, [&](const MatrixD& x) { return loss(with(weights, f, x)); });
    EXPECT_TRUE(attn_test::matrix_near(get(got, f), numeric, fd_tolerance))
        << context << ", " << f.name;
  }
}

struct SelfCase {
  const char* name;
  Index model_dim, heads, kv_heads;
  bool bias, rotary;
  Mask mask;
};

TEST(TrainingSelfAttention, GradientsMatchFiniteDifferences) {
  const std::vector<SelfCase> cases = {
      {"MHA, bias, causal", 8, 2, 2, true, false, Mask::causal()},
      {"GQA, rotary, no bias, window", 12, 3, 1, false, true, Mask::window(2, 1)},
      {"GQA 4/2, rotary, bias, no mask", 16, 4, 2, true, true, Mask()}};
  std::uint32_t seed = 1;
  for (const SelfCase& c : cases) {
    Random rng(seed++);
    attn::MultiHeadConfig config{c.model_dim, c.heads, c.kv_heads};
    config.bias = c.bias;
    if (c.rotary) {
      attn::RotaryConfig rotary;
      rotary.head_dim = c.model_dim / c.heads;
      config.rotary = rotary;
    }
    const Weights weights = attn_test::random_weights<double>(config, rng);
    const MatrixD x = rng.uniform_matrix<double>(6, c.model_dim);
    const MatrixD dy = rng.uniform_matrix<double>(6, c.model_dim);
    const attn::SelfAttention<double> layer(config, weights);

    attn::LayerTape<double> tape;
    const MatrixD y = attn::forward(layer, x, tape, c.mask);
    EXPECT_TRUE(attn_test::bitwise_equal(y, layer(x, c.mask))) << c.name;
    const attn::LayerGradients<double> g = attn::backward(layer, tape, dy, c.mask);

    const auto loss = [&](const Weights& w, const MatrixD& input) {
      return (attn::SelfAttention<double>(config, w)(input, c.mask).array() * dy.array()).sum();
    };
    EXPECT_TRUE(attn_test::matrix_near(
        g.d_input,
        attn_test::finite_differences(x, [&](const MatrixD& in) { return loss(weights, in); }),
        fd_tolerance))
        << c.name << ", d_input";
    EXPECT_EQ(g.d_source.size(), 0);
    expect_weights_match(
        g.weights, weights, [&](const Weights& w) { return loss(w, x); }, c.name);
  }
}

TEST(TrainingCrossAttention, GradientsMatchFiniteDifferences) {
  struct CrossCase {
    const char* name;
    Index model_dim, heads, kv_heads, source_dim;
    bool bias;
    Mask mask;
  };
  const std::vector<CrossCase> cases = {
      {"MHA, bias, source_dim = E", 8, 2, 2, 0, true, Mask()},
      {"GQA, kdim 5, no bias, causal", 12, 3, 1, 5, false, Mask::causal()},
      {"GQA 4/2, kdim 7, bias, key_length", 8, 4, 2, 7, true, Mask::key_length(6)}};
  std::uint32_t seed = 10;
  for (const CrossCase& c : cases) {
    Random rng(seed++);
    attn::MultiHeadConfig config{c.model_dim, c.heads, c.kv_heads, c.source_dim};
    config.bias = c.bias;
    const Weights weights = attn_test::random_weights<double>(config, rng);
    const MatrixD target = rng.uniform_matrix<double>(4, c.model_dim);
    const MatrixD source = rng.uniform_matrix<double>(7, config.source_features());
    const MatrixD dy = rng.uniform_matrix<double>(4, c.model_dim);
    const attn::CrossAttention<double> layer(config, weights);

    attn::LayerTape<double> tape;
    const MatrixD y = attn::forward(layer, target, source, tape, c.mask);
    EXPECT_TRUE(attn_test::bitwise_equal(y, layer(target, source, c.mask))) << c.name;
    const attn::LayerGradients<double> g = attn::backward(layer, tape, dy, c.mask);

    const auto loss = [&](const Weights& w, const MatrixD& t, const MatrixD& s) {
      return (attn::CrossAttention<double>(config, w)(t, s, c.mask).array() * dy.array()).sum();
    };
    EXPECT_TRUE(attn_test::matrix_near(
        g.d_input,
        attn_test::finite_differences(target,
                                      [&](const MatrixD& in) { return loss(weights, in, source); }),
        fd_tolerance))
        << c.name << ", d_input";
    EXPECT_TRUE(attn_test::matrix_near(
        g.d_source,
        attn_test::finite_differences(source,
                                      [&](const MatrixD& in) { return loss(weights, target, in); }),
        fd_tolerance))
        << c.name << ", d_source";
    expect_weights_match(
        g.weights, weights, [&](const Weights& w) { return loss(w, target, source); }, c.name);
  }
}

// Float gradients agree with double ones to float's precision (the layer's entries are O(1)).
TEST(TrainingSelfAttention, FloatGradientsAgreeWithDouble) {
  Random rng(20);
  attn::MultiHeadConfig config{32, 4, 2};
  const Weights weights = attn_test::random_weights<double>(config, rng);
  const MatrixD x = rng.uniform_matrix<double>(50, 32);
  const MatrixD dy = rng.uniform_matrix<double>(50, 32);
  attn::MultiHeadWeights<float> weights_f;
  weights_f.q_weight = weights.q_weight.cast<float>();
  weights_f.k_weight = weights.k_weight.cast<float>();
  weights_f.v_weight = weights.v_weight.cast<float>();
  weights_f.out_weight = weights.out_weight.cast<float>();
  weights_f.q_bias = weights.q_bias.cast<float>();
  weights_f.k_bias = weights.k_bias.cast<float>();
  weights_f.v_bias = weights.v_bias.cast<float>();
  weights_f.out_bias = weights.out_bias.cast<float>();
  const attn::SelfAttention<double> layer(config, weights);
  const attn::SelfAttention<float> layer_f(config, weights_f);
  attn::LayerTape<double> tape;
  attn::LayerTape<float> tape_f;
  attn::forward(layer, x, tape, Mask::causal());
  attn::forward(layer_f, Matrix<float>(x.cast<float>()), tape_f, Mask::causal());
  const auto g = attn::backward(layer, tape, dy, Mask::causal());
  const auto g_f = attn::backward(layer_f, tape_f, Matrix<float>(dy.cast<float>()), Mask::causal());
  // Sums of up to 50 rows of O(1) products: a few hundred float ulps.
  const double tol = 2e-4;
  EXPECT_TRUE(attn_test::matrix_near(g_f.d_input, g.d_input, tol));
  EXPECT_TRUE(attn_test::matrix_near(g_f.weights.q_weight, g.weights.q_weight, tol));
  EXPECT_TRUE(attn_test::matrix_near(g_f.weights.k_weight, g.weights.k_weight, tol));
  EXPECT_TRUE(attn_test::matrix_near(g_f.weights.v_weight, g.weights.v_weight, tol));
  EXPECT_TRUE(attn_test::matrix_near(g_f.weights.out_weight, g.weights.out_weight, tol));
  EXPECT_TRUE(attn_test::matrix_near(g_f.weights.out_bias, g.weights.out_bias, tol));
}

// Against torch autograd through nn.MultiheadAttention (tests/reference/generate_golden.py,
// float64): the inputs' gradients and every parameter's, in PyTorch's names.
template <typename Scalar>
class TrainingGoldenTest : public ::testing::Test {};
using Scalars = ::testing::Types<float, double>;
TYPED_TEST_SUITE(TrainingGoldenTest, Scalars);

template <typename Scalar>
void expect_parameters_match(const attn_test::Golden& g, const attn::LayerGradients<Scalar>& got,
                             double tol) {
  const auto& w = got.weights;
  if (g.has("d_in_proj_weight")) {
    Matrix<Scalar> in_proj(w.q_weight.rows() + w.k_weight.rows() + w.v_weight.rows(),
                           w.q_weight.cols());
    in_proj << w.q_weight, w.k_weight, w.v_weight;
    EXPECT_TRUE(attn_test::matrix_near(in_proj, g.matrix<double>("d_in_proj_weight"), tol));
  } else {
    EXPECT_TRUE(attn_test::matrix_near(w.q_weight, g.matrix<double>("d_q_proj_weight"), tol));
    EXPECT_TRUE(attn_test::matrix_near(w.k_weight, g.matrix<double>("d_k_proj_weight"), tol));
    EXPECT_TRUE(attn_test::matrix_near(w.v_weight, g.matrix<double>("d_v_proj_weight"), tol));
  }
  attn::Vector<Scalar> in_bias(w.q_bias.size() + w.k_bias.size() + w.v_bias.size());
  in_bias << w.q_bias, w.k_bias, w.v_bias;
  EXPECT_TRUE(attn_test::matrix_near(in_bias, g.vector<double>("d_in_proj_bias"), tol));
  EXPECT_TRUE(attn_test::matrix_near(w.out_weight, g.matrix<double>("d_out_proj.weight"), tol));
  EXPECT_TRUE(attn_test::matrix_near(w.out_bias, g.vector<double>("d_out_proj.bias"), tol));
}

// Float: sums over 6–9 rows of products of O(1) values, each within a few ulps: 1e-5 leaves a
// wide margin under an error from a wrong block (O(0.01) and more). Double: 1e-12.
template <typename Scalar>
double golden_tolerance() {
  return std::is_same_v<Scalar, float> ? 1e-5 : 1e-12;
}

TYPED_TEST(TrainingGoldenTest, SelfAttentionMatchesTorchAutograd) {
  using Scalar = TypeParam;
  const attn_test::Golden g = attn_test::load_golden("grad_mha_self_causal");
  const Matrix<Scalar> x = g.matrix<Scalar>("target");
  const attn::SelfAttention<Scalar> layer(attn_test::config_from(g, x.cols(), 0),
                                          attn_test::weights_from<Scalar>(g));
  attn::LayerTape<Scalar> tape;
  attn::forward(layer, x, tape, Mask::causal());
  const auto got = attn::backward(layer, tape, g.matrix<Scalar>("d_out"), Mask::causal());
  EXPECT_TRUE(attn_test::matrix_near(got.d_input, g.matrix<double>("d_target"),
                                     golden_tolerance<Scalar>()));
  expect_parameters_match(g, got, golden_tolerance<Scalar>());
}

TYPED_TEST(TrainingGoldenTest, CrossAttentionMatchesTorchAutograd) {
  using Scalar = TypeParam;
  const attn_test::Golden g = attn_test::load_golden("grad_mha_cross_kdim");
  const Matrix<Scalar> target = g.matrix<Scalar>("target"), source = g.matrix<Scalar>("source");
  const attn::CrossAttention<Scalar> layer(attn_test::config_from(g, target.cols(), source.cols()),
                                           attn_test::weights_from<Scalar>(g));
  attn::LayerTape<Scalar> tape;
  attn::forward(layer, target, source, tape);
  const auto got = attn::backward(layer, tape, g.matrix<Scalar>("d_out"));
  EXPECT_TRUE(attn_test::matrix_near(got.d_input, g.matrix<double>("d_target"),
                                     golden_tolerance<Scalar>()));
  EXPECT_TRUE(attn_test::matrix_near(got.d_source, g.matrix<double>("d_source"),
                                     golden_tolerance<Scalar>()));
  expect_parameters_match(g, got, golden_tolerance<Scalar>());
}

TEST(TrainingErrors, ATapeOfAnotherLayerOrAWrongGradientThrows) {
  Random rng(30);
  attn::MultiHeadConfig config{8, 2};
  attn::MultiHeadConfig cross_config{8, 2, 0, 5};
  const attn::SelfAttention<float> self(config, attn_test::random_weights<float>(config, rng));
  const attn::CrossAttention<float> cross(cross_config,
                                          attn_test::random_weights<float>(cross_config, rng));
  const Matrix<float> x = rng.uniform_matrix<float>(4, 8);
  const Matrix<float> source = rng.uniform_matrix<float>(3, 5);
  attn::LayerTape<float> empty, self_tape, cross_tape;
  attn::forward(self, x, self_tape);
  attn::forward(cross, x, source, cross_tape);
  const Matrix<float> dy = Matrix<float>::Ones(4, 8);
  EXPECT_SHAPE_ERROR(attn::backward(self, empty, dy), "the tape holds no forward");
  EXPECT_SHAPE_ERROR(attn::backward(self, cross_tape, dy), "the tape holds no forward");
  EXPECT_SHAPE_ERROR(attn::backward(cross, self_tape, dy), "the tape holds no forward");
  EXPECT_SHAPE_ERROR(attn::backward(self, self_tape, Matrix<float>(Matrix<float>::Ones(3, 8))),
                     "d_out is 3x8", "expected 4x8");
  EXPECT_SHAPE_ERROR(attn::forward(self, Matrix<float>(Matrix<float>::Ones(4, 7)), self_tape),
                     "x is 4x7");
  // The failed forward left the tape as it was.
  EXPECT_NO_THROW(attn::backward(self, self_tape, dy));
}

}  // namespace
