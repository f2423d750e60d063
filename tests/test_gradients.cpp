// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors

// scaled_dot_product_attention_backward: dQ, dK and dV against the fp64 reference gradients
// (support/reference_gradients.hpp) for every mask kind, grouped and multi-query heads, dv ≠ d,
// softcap, cross shapes and rows that see nothing; the reference against central finite
// differences of its own forward, and the library's double backward against finite differences
// of the library's forward; bitwise the same for any thread count; hidden NaN values never reach
// a gradient; bad shapes throw and leave the outputs alone.

#include <attn/builtin_masks.hpp>
#include <attn/gradients.hpp>
#include <attn/parallel.hpp>
#include <attn/scaled_dot_product.hpp>
#include <attn/score_mask.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "support/golden.hpp"
#include "support/matrix_near.hpp"
#include "support/random.hpp"
#include "support/reference.hpp"
#include "support/reference_gradients.hpp"
#include "support/shape_error.hpp"
#include "support/tolerance.hpp"

namespace {

using attn::Index;
using attn::Mask;
using attn::Matrix;
using attn_test::MatrixB;
using attn_test::MatrixD;
using attn_test::Random;
using attn_test::ReferenceMask;

template <typename Scalar>
class GradientsTest : public ::testing::Test {};
using Scalars = ::testing::Types<float, double>;
TYPED_TEST_SUITE(GradientsTest, Scalars);

struct Shape {
  Index n, m, heads, kv_heads, d, dv;
};

template <typename Scalar>
struct Inputs {
  Matrix<Scalar> q, k, v, d_out;
};

template <typename Scalar>
Inputs<Scalar> random_inputs(Random& rng, const Shape& s) {
  return {rng.uniform_matrix<Scalar>(s.n, s.heads * s.d),
          rng.uniform_matrix<Scalar>(s.m, s.kv_heads * s.d),
          rng.uniform_matrix<Scalar>(s.m, s.kv_heads * s.dv),
          rng.uniform_matrix<Scalar>(s.n, s.heads * s.dv)};
}

attn::AttentionOptions options_of(const Shape& s, double softcap = 0) {
  attn::AttentionOptions options;
  options.num_heads = s.heads;
  options.num_kv_heads = s.kv_heads;
  options.softcap = softcap;
  return options;
}

// Forward with the log-sum-exp kept, then backward.
template <typename Scalar, typename M>
attn::AttentionGradients<Scalar> library_gradients(const Inputs<Scalar>& in, const M& mask,
                                                   const attn::AttentionOptions& options) {
  Matrix<Scalar> lse;
  attn::AttentionExtras<Scalar> extras;
  extras.log_sum_exp = &lse;
  const Matrix<Scalar> out =
      attn::scaled_dot_product_attention(in.q, in.k, in.v, mask, options, extras);
  return attn::scaled_dot_product_attention_backward(in.q, in.k, in.v, out, lse, in.d_out, mask,
                                                     options);
}

// support/tolerance.hpp's gradient_tolerance for the shape.
template <typename Scalar>
double gradient_tolerance(const Shape& s) {
  return attn_test::gradient_tolerance<Scalar>(s.d, s.dv, std::max(s.n, s.m));
}

template <typename Scalar, typename M>
void expect_matches_reference(const char* what, const Shape& s, const M& mask,
                              const ReferenceMask& reference_mask, double softcap = 0,
                              std::uint32_t seed = 1) {
  Random rng(seed);
  const Inputs<Scalar> in = random_inputs<Scalar>(rng, s);
  const attn::AttentionOptions options = options_of(s, softcap);
  const attn::AttentionGradients<Scalar> got = library_gradients(in, mask, options);
  const attn_test::ReferenceGradients want = attn_test::reference_gradients(
      in.q, in.k, in.v, in.d_out, s.heads, s.kv_heads, reference_mask, std::nullopt, softcap);
  const double tol = gradient_tolerance<Scalar>(s);
  const std::string context = std::string(what) + ": n=" + std::to_string(s.n) +
                              " m=" + std::to_string(s.m) + " heads " + std::to_string(s.heads) +
                              "/" + std::to_string(s.kv_heads) + " d=" + std::to_string(s.d) +
                              " dv=" + std::to_string(s.dv);
  EXPECT_TRUE(attn_test::matrix_near(got.dq, want.dq, tol)) << context << ", dq";
  EXPECT_TRUE(attn_test::matrix_near(got.dk, want.dk, tol)) << context << ", dk";
  EXPECT_TRUE(attn_test::matrix_near(got.dv, want.dv, tol)) << context << ", dv";
}

TYPED_TEST(GradientsTest, EveryMaskKindMatchesTheReference) {
  using Scalar = TypeParam;
  const Shape self{130, 130, 4, 2, 8, 6};
  const Shape cross{37, 150, 4, 4, 16, 16};
  for (const Shape& s : {self, cross}) {
    Random rng(7);
    const MatrixB keep = rng.bernoulli_matrix(s.n, s.m, 0.7);
    const MatrixD bias = rng.uniform_matrix<double>(s.n, s.m, -2, 2);
    expect_matches_reference<Scalar>("none", s, Mask(), ReferenceMask());
    expect_matches_reference<Scalar>("causal", s, Mask::causal(), ReferenceMask::causal());
    expect_matches_reference<Scalar>("window(7, 3)", s, Mask::window(7, 3),
                                     ReferenceMask::window(7, 3));
    expect_matches_reference<Scalar>("causal & key_length", s,
                                     Mask::causal() & Mask::key_length(s.m - 11),
                                     ReferenceMask::causal() & ReferenceMask::key_length(s.m - 11));
    expect_matches_reference<Scalar>("keep", s, Mask::keep(keep), ReferenceMask::keep(keep));
    expect_matches_reference<Scalar>("bias & causal", s, Mask::bias(bias) & Mask::causal(),
                                     ReferenceMask::bias(bias) & ReferenceMask::causal());
    expect_matches_reference<Scalar>("softcap 2 & causal", s, Mask::causal(),
                                     ReferenceMask::causal(), 2.0);
  }
}

TYPED_TEST(GradientsTest, GroupedAndMultiQueryHeadsAndEmptyRows) {
  using Scalar = TypeParam;
  // 8 query heads over 2 and over 1 kv heads: dK and dV sum over each group.
  expect_matches_reference<Scalar>("GQA 8/2", Shape{70, 90, 8, 2, 8, 8}, Mask::causal(),
                                   ReferenceMask::causal());
  expect_matches_reference<Scalar>("MQA 8/1", Shape{70, 90, 8, 1, 8, 12}, Mask(), ReferenceMask());
  // n > m under causal: the first n − m queries see no key; their gradients are zero.
  expect_matches_reference<Scalar>("rows that see nothing", Shape{20, 8, 2, 2, 4, 4},
                                   Mask::causal(), ReferenceMask::causal());
  // One query (a decode step) and one key.
  expect_matches_reference<Scalar>("one query", Shape{1, 300, 2, 1, 16, 16}, Mask(),
                                   ReferenceMask());
  expect_matches_reference<Scalar>("one key", Shape{9, 1, 2, 1, 16, 16}, Mask(), ReferenceMask());
  // Head dims that are no whole number of packets on any instruction set (dQ then goes through
  // padded partials), over several query blocks, key blocks and chunks, each with a remainder.
  expect_matches_reference<Scalar>("odd dims", Shape{131, 300, 3, 1, 5, 7}, Mask::causal(),
                                   ReferenceMask::causal());
}

TYPED_TEST(GradientsTest, MaskFunctionsMatchTheReference) {
  using Scalar = TypeParam;
  const Shape s{96, 96, 2, 2, 8, 8};
  const auto striped =
      attn::mask_function([](Index q, Index k) { return k <= q && (q - k) % 3 != 1; });
  MatrixB keep(s.n, s.m);
  for (Index i = 0; i < s.n; ++i) {
    for (Index j = 0; j < s.m; ++j)
      keep(i, j) = j <= i && (i - j) % 3 != 1;
  }
  expect_matches_reference<Scalar>("mask function", s, striped, ReferenceMask::keep(keep));
}

// dq, dk and dv against central differences of loss(q, k, v) at the inputs, which err by
// O(step²·f''') + O(u/step): about 1e-10 at step 1e-6, so 1e-8 holds them.
template <typename Loss>
void expect_finite_differences(const MatrixD& dq, const MatrixD& dk, const MatrixD& dv,
                               const Inputs<double>& in, const Loss& loss) {
  const double tol = 1e-8;
  EXPECT_TRUE(attn_test::matrix_near(
      dq,
      attn_test::finite_differences(in.q, [&](const MatrixD& x) { return loss(x, in.k, in.v); }),
      tol));
  EXPECT_TRUE(attn_test::matrix_near(
      dk,
      attn_test::finite_differences(in.k, [&](const MatrixD& x) { return loss(in.q, x, in.v); }),
      tol));
  EXPECT_TRUE(attn_test::matrix_near(
      dv,
      attn_test::finite_differences(in.v, [&](const MatrixD& x) { return loss(in.q, in.k, x); }),
      tol));
}

// The reference's gradients are those of its own forward (central differences in double), so the
// comparisons above check the library against derivatives, not against a formula alone.
TEST(GradientsReference, MatchesFiniteDifferencesOfTheReferenceForward) {
  Random rng(11);
  const Shape s{6, 7, 2, 1, 4, 3};
  const Inputs<double> in = random_inputs<double>(rng, s);
  const MatrixD bias = rng.uniform_matrix<double>(s.n, s.m, -1, 1);
  const ReferenceMask mask = ReferenceMask::causal() & ReferenceMask::bias(bias);
  const double softcap = 1.5;
  const auto loss = [&](const MatrixD& q, const MatrixD& k, const MatrixD& v) {
    return (attn_test::reference_multi_head(q, k, v, s.heads, s.kv_heads, mask, std::nullopt,
                                            softcap)
                .array() *
            in.d_out.array())
        .sum();
  };
  const attn_test::ReferenceGradients g = attn_test::reference_gradients(
      in.q, in.k, in.v, in.d_out, s.heads, s.kv_heads, mask, std::nullopt, softcap);
  expect_finite_differences(g.dq, g.dk, g.dv, in, loss);
}

// The library's double backward against central differences of the library's double forward,
// under a window, a keep matrix, GQA and a softcap.
TEST(GradientsLibrary, MatchFiniteDifferencesOfTheLibraryForward) {
  Random rng(12);
  const Shape s{9, 11, 4, 2, 4, 5};
  const Inputs<double> in = random_inputs<double>(rng, s);
  const MatrixB keep = rng.bernoulli_matrix(s.n, s.m, 0.8);
  const Mask mask = Mask::window(5, 2) & Mask::keep(keep);
  const attn::AttentionOptions options = options_of(s, 3.0);
  const auto loss = [&](const MatrixD& q, const MatrixD& k, const MatrixD& v) {
    return (attn::scaled_dot_product_attention(q, k, v, mask, options).array() * in.d_out.array())
        .sum();
  };
  const attn::AttentionGradients<double> g = library_gradients(in, mask, options);
  expect_finite_differences(g.dq, g.dk, g.dv, in, loss);
}

// Score functions: the library's backward (float and double) against central differences of
// reference_score_mask, a forward that knows nothing of attn and applies the score at the
// documented place (after the softcap) and positions (query row i at i + m − n). So the
// derivative the user gave, the chain through a composition and the softcap are all checked
// against derivatives of the function itself. n ≠ m and grouped heads, so positions and heads
// must be the ones the forward used.
struct ScoreCase {
  const char* name;
  attn_test::ReferenceScore reference;
  double softcap;
};

template <typename Scalar, typename M>
void expect_score_gradients(const ScoreCase& c, const M& mask) {
  Random rng(21);
  const Shape s{9, 13, 4, 2, 4, 5};
  const Inputs<double> in = random_inputs<double>(rng, s);
  const auto causal = [](Index, Index q, Index k) { return k <= q; };
  const auto loss = [&](const MatrixD& q, const MatrixD& k, const MatrixD& v) {
    return (attn_test::reference_score_mask(q, k, v, s.heads, s.kv_heads, c.reference, causal,
                                            std::nullopt, c.softcap)
                .array() *
            in.d_out.array())
        .sum();
  };
  const MatrixD dq =
      attn_test::finite_differences(in.q, [&](const MatrixD& x) { return loss(x, in.k, in.v); });
  const MatrixD dk =
      attn_test::finite_differences(in.k, [&](const MatrixD& x) { return loss(in.q, x, in.v); });
  const MatrixD dv =
      attn_test::finite_differences(in.v, [&](const MatrixD& x) { return loss(in.q, in.k, x); });
  const Inputs<Scalar> cast{in.q.cast<Scalar>(), in.k.cast<Scalar>(), in.v.cast<Scalar>(),
                            in.d_out.cast<Scalar>()};
  const attn::AttentionGradients<Scalar> got =
      library_gradients(cast, Mask::causal() & mask, options_of(s, c.softcap));
  // Finite differences err by about 1e-9 here; the library by its own precision's tolerance.
  const double tol = std::max(1e-8, gradient_tolerance<Scalar>(s));
  EXPECT_TRUE(attn_test::matrix_near(got.dq, dq, tol)) << c.name << ", dq";
  EXPECT_TRUE(attn_test::matrix_near(got.dk, dk, tol)) << c.name << ", dk";
  EXPECT_TRUE(attn_test::matrix_near(got.dv, dv, tol)) << c.name << ", dv";
}

TYPED_TEST(GradientsTest, ScoreFunctionsMatchFiniteDifferences) {
  using Scalar = TypeParam;
  const std::vector<double> slopes = attn_test::reference_alibi_slopes(4);
  const auto alibi_reference = [slopes](Index h, Index q, Index k, double x) {
    return x + slopes[std::size_t(h)] * double(k - q);
  };
  expect_score_gradients<Scalar>({"alibi", alibi_reference, 0}, attn::alibi(4));
  expect_score_gradients<Scalar>({"alibi, softcap 2", alibi_reference, 2.0}, attn::alibi(4));

  // An additive bias of the user's: derivative 1 without being told.
  const auto bias = [](Index h, Index q, Index k) {
    return 0.25 * double(h) - 0.1 * double(q % 3 + k % 2);
  };
  expect_score_gradients<Scalar>(
      {"score_bias", [&](Index h, Index q, Index k, double x) { return x + bias(h, q, k); }, 0},
      attn::score_bias(bias));

  // A non-linear score with its derivative: s + a_h·sin(s), the slope varying along the logits.
  const auto wavy = [](auto x, Index h, Index, Index) {
    return x + decltype(x)(0.3 * double(h + 1)) * std::sin(x);
  };
  const auto wavy_derivative = [](auto x, Index h, Index, Index) {
    return decltype(x)(1) + decltype(x)(0.3 * double(h + 1)) * std::cos(x);
  };
  const auto wavy_reference = [](Index h, Index, Index, double x) {
    return x + 0.3 * double(h + 1) * std::sin(x);
  };
  expect_score_gradients<Scalar>({"s + a sin s", wavy_reference, 0},
                                 attn::score_function(wavy, wavy_derivative));
  expect_score_gradients<Scalar>({"s + a sin s, softcap 1.5", wavy_reference, 1.5},
                                 attn::score_function(wavy, wavy_derivative));

  // Composition, applied left to right and differentiated by the chain rule: a temperature per
  // head, then the wave, then ALiBi.
  const auto temperature = [](auto x, Index h, Index, Index) {
    return x * decltype(x)(0.5 + 0.5 * double(h));
  };
  const auto temperature_derivative = [](auto x, Index h, Index, Index) {
    return decltype(x)(0.5 + 0.5 * double(h));
  };
  expect_score_gradients<Scalar>(
      {"temperature, wave, alibi",
       [&](Index h, Index q, Index k, double x) {
         return alibi_reference(h, q, k, wavy_reference(h, q, k, x * (0.5 + 0.5 * double(h))));
       },
       0},
      attn::score_function(temperature, temperature_derivative) &
          attn::score_function(wavy, wavy_derivative) & attn::alibi(4));
}

// A score function without a derivative cannot reach the backward pass (a compile-time error,
// which a test can only state): additive and differentiated ones can.
struct Squared {
  float operator()(float x, Index, Index, Index) const { return x * x; }
};
struct NoBias {
  double operator()(Index, Index, Index) const { return 0.0; }
};
static_assert(!attn::detail::TileMask<float, attn::ScoreMask<Squared>>::score_differentiable);
static_assert(attn::detail::TileMask<float, decltype(attn::alibi(2))>::score_additive);
static_assert(attn::detail::TileMask<float, decltype(attn::alibi(2) &
                                                     attn::score_bias(NoBias{}))>::score_additive);

TYPED_TEST(GradientsTest, BitwiseTheSameForAnyThreadCount) {
  using Scalar = TypeParam;
  Random rng(13);
  const Shape s{300, 700, 4, 2, 32, 32};
  const Inputs<Scalar> in = random_inputs<Scalar>(rng, s);
  attn::AttentionOptions options = options_of(s);
  options.executor = attn::serial_executor;
  const attn::AttentionGradients<Scalar> serial = library_gradients(in, Mask::causal(), options);
  for (const int threads : {2, 3}) {
    options.executor = attn::thread_executor(threads);
    const attn::AttentionGradients<Scalar> threaded =
        library_gradients(in, Mask::causal(), options);
    EXPECT_TRUE(attn_test::bitwise_equal(serial.dq, threaded.dq)) << threads << " threads";
    EXPECT_TRUE(attn_test::bitwise_equal(serial.dk, threaded.dk)) << threads << " threads";
    EXPECT_TRUE(attn_test::bitwise_equal(serial.dv, threaded.dv)) << threads << " threads";
  }
}

// A value row that the mask hides from every query may hold anything: NaN there reaches no
// gradient (its dV row is zero: no query weighs it).
TYPED_TEST(GradientsTest, HiddenNanValuesReachNoGradient) {
  using Scalar = TypeParam;
  Random rng(14);
  const Shape s{40, 50, 2, 2, 8, 8};
  Inputs<Scalar> in = random_inputs<Scalar>(rng, s);
  in.v.row(47).setConstant(std::numeric_limits<Scalar>::quiet_NaN());
  in.k.row(48).setConstant(std::numeric_limits<Scalar>::quiet_NaN());
  const Mask mask = Mask::key_length(45);
  // With a softcap too: tanh of a hidden NaN logit is NaN, and 1 − tanh² must not reach dS.
  for (const double softcap : {0.0, 5.0}) {
    const attn::AttentionGradients<Scalar> g = library_gradients(in, mask, options_of(s, softcap));
    EXPECT_TRUE(g.dq.allFinite()) << "softcap " << softcap;
    EXPECT_TRUE(g.dk.topRows(45).allFinite()) << "softcap " << softcap;
    EXPECT_TRUE(g.dk.bottomRows(5).isZero(0)) << "softcap " << softcap;
    EXPECT_TRUE(g.dv.allFinite()) << "softcap " << softcap;
    EXPECT_TRUE(g.dv.bottomRows(5).isZero(0)) << "softcap " << softcap;
  }
}

// Against torch autograd (tests/reference/generate_golden.py, float64) through its manual
// attention: grouped-query heads under a causal mask; one head with a softcap and a bias.
TYPED_TEST(GradientsTest, MatchTorchAutograd) {
  using Scalar = TypeParam;
  for (const char* name : {"grad_kernel_gqa_causal", "grad_kernel_softcap_bias"}) {
    const attn_test::Golden g = attn_test::load_golden(name);
    const Matrix<Scalar> q = g.matrix<Scalar>("q"), k = g.matrix<Scalar>("k");
    const Matrix<Scalar> v = g.matrix<Scalar>("v"), d_out = g.matrix<Scalar>("d_out");
    attn::AttentionOptions options;
    options.num_heads = g.index("num_heads");
    options.num_kv_heads = g.index("num_kv_heads");
    options.softcap = g.scalar<double>("softcap");
    const Mask mask = g.has("bias") ? Mask::bias(g.matrix<Scalar>("bias")) : Mask::causal();
    const Inputs<Scalar> in{q, k, v, d_out};
    const attn::AttentionGradients<Scalar> got = library_gradients(in, mask, options);
    const Shape s{q.rows(),
                  k.rows(),
                  options.num_heads,
                  options.kv_heads(),
                  q.cols() / options.num_heads,
                  v.cols() / options.kv_heads()};
    // The bias reaches ±2 and the inputs ±1: logits up to about 2 + √d·scale.
    const double tol = 2 * gradient_tolerance<Scalar>(s);
    EXPECT_TRUE(attn_test::matrix_near(got.dq, g.matrix<double>("dq"), tol)) << name;
    EXPECT_TRUE(attn_test::matrix_near(got.dk, g.matrix<double>("dk"), tol)) << name;
    EXPECT_TRUE(attn_test::matrix_near(got.dv, g.matrix<double>("dv"), tol)) << name;
  }
}

TEST(GradientsErrors, BadShapesThrowAndLeaveTheOutputsAlone) {
  Random rng(15);
  const Shape s{10, 12, 2, 1, 4, 4};
  const Inputs<float> in = random_inputs<float>(rng, s);
  const attn::AttentionOptions options = options_of(s);
  Matrix<float> lse;
  attn::AttentionExtras<float> extras;
  extras.log_sum_exp = &lse;
  const Matrix<float> out =
      attn::scaled_dot_product_attention(in.q, in.k, in.v, Mask(), options, extras);
  Matrix<float> dq = Matrix<float>::Constant(10, 8, 7), dk = Matrix<float>::Constant(12, 4, 7),
                dv = Matrix<float>::Constant(12, 4, 7);
  const auto untouched = [&] {
    return (dq.array() == 7).all() && (dk.array() == 7).all() && (dv.array() == 7).all();
  };
  EXPECT_SHAPE_ERROR(attn::scaled_dot_product_attention_backward_into(
                         in.q, in.k, in.v, out, Matrix<float>(lse.leftCols(1)), in.d_out, dq, dk,
                         dv, Mask(), options),
                     "log_sum_exp is 10x1", "expected 10x2");
  EXPECT_SHAPE_ERROR(attn::scaled_dot_product_attention_backward_into(
                         in.q, in.k, in.v, out, lse, Matrix<float>(in.d_out.topRows(9)), dq, dk, dv,
                         Mask(), options),
                     "d_out is 9x8", "expected 10x8");
  EXPECT_SHAPE_ERROR(attn::scaled_dot_product_attention_backward_into(
                         in.q, in.k, in.v, Matrix<float>(out.leftCols(7)), lse, in.d_out, dq, dk,
                         dv, Mask(), options),
                     "out is 10x7");
  Matrix<float> wrong_dk(11, 4);
  EXPECT_SHAPE_ERROR(attn::scaled_dot_product_attention_backward_into(
                         in.q, in.k, in.v, out, lse, in.d_out, dq, wrong_dk, dv, Mask(), options),
                     "dk is 11x4", "expected 12x4");
  EXPECT_SHAPE_ERROR(attn::scaled_dot_product_attention_backward_into(
                         in.q, in.k, in.v, out, lse, in.d_out, dq, dk, dv, Mask::causal(),
                         options_of(Shape{10, 12, 3, 1, 4, 4})),
                     "num_heads");
  EXPECT_TRUE(untouched());
}

}  // namespace
