// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors

// attn::Mask: construction, accessors, composition with &, its errors, and what the kernel makes
// of it (bottom-right alignment, composed masks equal their hand-composed equivalents, a key
// length equals the keys it keeps).

#include <attn/mask.hpp>
#include <attn/scaled_dot_product.hpp>

#include <limits>
#include <utility>

#include "support/matrix_near.hpp"
#include "support/random.hpp"
#include "support/shape_error.hpp"

namespace {

using attn::Index;
using attn::Mask;
using MatrixB = attn::Matrix<bool>;

// ---------------------------------------------------------------------------------------------
// Construction and accessors
// ---------------------------------------------------------------------------------------------

TEST(Mask, DefaultAndNoneHideNothing) {
  for (const Mask& mask : {Mask(), Mask::none(), Mask::window(Mask::unbounded, Mask::unbounded)}) {
    EXPECT_TRUE(mask.is_none());
    EXPECT_FALSE(mask.has_window());
    EXPECT_FALSE(mask.has_keep());
    EXPECT_FALSE(mask.has_bias());
    EXPECT_FALSE(mask.has_explicit());
    EXPECT_EQ(mask.left(), Mask::unbounded);
    EXPECT_EQ(mask.right(), Mask::unbounded);
    EXPECT_EQ(mask.bias_matrix<float>(), nullptr);
    EXPECT_EQ(mask.bias_matrix<double>(), nullptr);
  }
  EXPECT_EQ(Mask::unbounded, -1);
}

TEST(Mask, CausalIsAWindowWithNoRightReach) {
  const Mask causal = Mask::causal();
  EXPECT_FALSE(causal.is_none());
  EXPECT_TRUE(causal.has_window());
  EXPECT_FALSE(causal.has_explicit());
  EXPECT_EQ(causal.left(), Mask::unbounded);
  EXPECT_EQ(causal.right(), 0);
}

TEST(Mask, WindowStoresItsReaches) {
  const Mask both = Mask::window(3, 5);
  EXPECT_EQ(both.left(), 3);
  EXPECT_EQ(both.right(), 5);
  EXPECT_TRUE(both.has_window());
  const Mask left_only = Mask::window(7, Mask::unbounded);
  EXPECT_EQ(left_only.left(), 7);
  EXPECT_EQ(left_only.right(), Mask::unbounded);
  EXPECT_TRUE(left_only.has_window());
  const Mask diagonal = Mask::window(0, 0);
  EXPECT_EQ(diagonal.left(), 0);
  EXPECT_EQ(diagonal.right(), 0);
}

TEST(Mask, WindowRejectsNegativeReachesOtherThanUnbounded) {
  EXPECT_SHAPE_ERROR(Mask::window(-2, 0), "Mask::window", "left is -2");
  EXPECT_SHAPE_ERROR(Mask::window(0, -3), "Mask::window", "right is -3");
  EXPECT_SHAPE_ERROR(Mask::window(Mask::unbounded, -7), "right is -7");
  EXPECT_SHAPE_ERROR(Mask::window(-5, Mask::unbounded), "left is -5");
  EXPECT_SHAPE_ERROR(Mask::window(std::numeric_limits<Index>::min(), 0), "left");
  EXPECT_NO_THROW(Mask::window(0, 0));
  EXPECT_NO_THROW(Mask::window(Mask::unbounded, Mask::unbounded));
}

TEST(Mask, KeyLengthStoresItsCountAndIntersects) {
  EXPECT_EQ(Mask().visible_keys(), Mask::unbounded);
  EXPECT_FALSE(Mask().has_key_length());
  const Mask padded = Mask::key_length(5);
  EXPECT_TRUE(padded.has_key_length());
  EXPECT_FALSE(padded.is_none());
  EXPECT_FALSE(padded.has_window());
  EXPECT_FALSE(padded.has_explicit());
  EXPECT_EQ(padded.visible_keys(), 5);
  EXPECT_EQ((Mask::key_length(5) & Mask::key_length(3)).visible_keys(), 3);
  EXPECT_EQ((Mask::key_length(3) & Mask::key_length(5)).visible_keys(), 3);
  const Mask both = Mask::key_length(9) & Mask::causal();
  EXPECT_EQ(both.visible_keys(), 9);
  EXPECT_EQ(both.right(), 0);
  EXPECT_EQ(Mask::key_length(0).visible_keys(), 0);
  EXPECT_SHAPE_ERROR(Mask::key_length(-1), "Mask::key_length", "count is -1");
}

TEST(Mask, KeepCopiesItsMatrix) {
  MatrixB allowed = MatrixB::Constant(3, 4, true);
  allowed(1, 2) = false;
  const Mask mask = Mask::keep(allowed);
  allowed.setConstant(false);  // the mask holds its own copy
  EXPECT_TRUE(mask.has_keep());
  EXPECT_TRUE(mask.has_explicit());
  EXPECT_FALSE(mask.has_window());
  EXPECT_FALSE(mask.has_bias());
  EXPECT_FALSE(mask.is_none());
  ASSERT_EQ(mask.keep_matrix().rows(), 3);
  ASSERT_EQ(mask.keep_matrix().cols(), 4);
  EXPECT_EQ(mask.keep_matrix().count(), 11);
  EXPECT_FALSE(mask.keep_matrix()(1, 2));

  // From an rvalue (moved) and from an expression of column-major storage.
  MatrixB moved = MatrixB::Constant(2, 5, false);
  moved(1, 4) = true;
  const Mask from_rvalue = Mask::keep(std::move(moved));
  EXPECT_EQ(from_rvalue.keep_matrix().count(), 1);
  EXPECT_TRUE(from_rvalue.keep_matrix()(1, 4));

  Eigen::MatrixXd values(2, 3);
  values << 1, -1, 2, -2, 3, -3;
  const Mask from_expression = Mask::keep((values.array() > 0).matrix());
  MatrixB expected(2, 3);
  expected << true, false, true, false, true, false;
  EXPECT_TRUE((from_expression.keep_matrix().array() == expected.array()).all());
}

TEST(Mask, CopiesShareTheirMatrices) {
  const Mask original =
      Mask::keep(MatrixB::Constant(4, 4, true)) & Mask::bias(attn::Matrix<float>::Ones(4, 4));
  const Mask copy = original;  // NOLINT(performance-unnecessary-copy-initialization)
  EXPECT_EQ(&copy.keep_matrix(), &original.keep_matrix());
  EXPECT_EQ(copy.bias_matrix<float>(), original.bias_matrix<float>());
}

TEST(Mask, BiasKeepsItsPrecision) {
  const attn::Matrix<float> bias_f = attn::Matrix<float>::Constant(2, 3, 0.25f);
  const Mask f = Mask::bias(bias_f);
  EXPECT_TRUE(f.has_bias());
  EXPECT_TRUE(f.has_explicit());
  EXPECT_FALSE(f.has_keep());
  ASSERT_NE(f.bias_matrix<float>(), nullptr);
  EXPECT_EQ(f.bias_matrix<double>(), nullptr);
  EXPECT_TRUE((f.bias_matrix<float>()->array() == 0.25f).all());
  EXPECT_TRUE((f.bias_as<double>().array() == 0.25).all());

  attn::Matrix<double> bias_d(2, 2);
  bias_d << 1.0 / 3, -std::numeric_limits<double>::infinity(), 0, 2;
  const Mask d = Mask::bias(bias_d);
  ASSERT_NE(d.bias_matrix<double>(), nullptr);
  EXPECT_EQ(d.bias_matrix<float>(), nullptr);
  EXPECT_EQ((*d.bias_matrix<double>())(0, 0), 1.0 / 3);
  EXPECT_EQ(d.bias_as<float>()(0, 0), static_cast<float>(1.0 / 3));
  EXPECT_EQ(d.bias_as<float>()(0, 1), -std::numeric_limits<float>::infinity());

  // From an expression of column-major storage: values land at the same (i, j).
  Eigen::MatrixXd col_major(2, 3);
  col_major << 1, 2, 3, 4, 5, 6;
  const Mask from_expression = Mask::bias(2.0 * col_major);
  EXPECT_TRUE(attn_test::matrix_near(*from_expression.bias_matrix<double>(), 2.0 * col_major, 0.0));
}

// −∞ hides a key; +∞ is no logit offset (it would make every other weight 0/∞ = NaN): rejected.
TEST(Mask, BiasRejectsPositiveInfinity) {
  attn::Matrix<float> f = attn::Matrix<float>::Zero(3, 4);
  f(1, 2) = std::numeric_limits<float>::infinity();
  EXPECT_SHAPE_ERROR(Mask::bias(f), "Mask::bias", "bias(1, 2) is +inf");
  EXPECT_SHAPE_ERROR(Mask::bias(attn::Matrix<float>(f)),
                     "bias(1, 2) is +inf");  // the rvalue overload
  attn::Matrix<double> d = attn::Matrix<double>::Zero(2, 2);
  d(0, 1) = std::numeric_limits<double>::infinity();
  EXPECT_SHAPE_ERROR(Mask::bias(d), "bias(0, 1) is +inf");
  d(0, 1) = -std::numeric_limits<double>::infinity();
  EXPECT_NO_THROW(Mask::bias(d));
  // A sum that overflows to +∞ is rejected as well.
  const attn::Matrix<float> big =
      attn::Matrix<float>::Constant(2, 2, std::numeric_limits<float>::max());
  EXPECT_SHAPE_ERROR(Mask::bias(big) & Mask::bias(big), "+inf");
}

// ---------------------------------------------------------------------------------------------
// Composition with &
// ---------------------------------------------------------------------------------------------

TEST(Mask, WindowsIntersect) {
  const auto reaches = [](const Mask& m) { return std::pair<Index, Index>(m.left(), m.right()); };
  using P = std::pair<Index, Index>;
  EXPECT_EQ(reaches(Mask::window(3, Mask::unbounded) & Mask::window(Mask::unbounded, 2)), P(3, 2));
  EXPECT_EQ(reaches(Mask::window(5, 1) & Mask::window(2, 4)), P(2, 1));
  EXPECT_EQ(reaches(Mask::window(2, 4) & Mask::window(5, 1)), P(2, 1));
  EXPECT_EQ(reaches(Mask::causal() & Mask::window(7, Mask::unbounded)), P(7, 0));
  EXPECT_EQ(reaches(Mask::window(7, 3) & Mask::causal()), P(7, 0));
  EXPECT_EQ(reaches(Mask::window(3, 3) & Mask::none()), P(3, 3));
  EXPECT_EQ(reaches(Mask::none() & Mask::window(3, 3)), P(3, 3));
  EXPECT_EQ(reaches(Mask::window(0, 9) & Mask::window(4, 0)), P(0, 0));
  EXPECT_TRUE((Mask::none() & Mask::none()).is_none());
}

TEST(Mask, KeepAndKeepIsElementwiseAnd) {
  attn_test::Random rng(11);
  const MatrixB a = rng.bernoulli_matrix(5, 7, 0.5);
  const MatrixB b = rng.bernoulli_matrix(5, 7, 0.5);
  const Mask both = Mask::keep(a) & Mask::keep(b);
  ASSERT_TRUE(both.has_keep());
  EXPECT_TRUE((both.keep_matrix().array() == (a.array() && b.array())).all());
  // The operands are untouched.
  const Mask mask_a = Mask::keep(a);
  const Mask combined = mask_a & Mask::keep(b);
  EXPECT_TRUE((mask_a.keep_matrix().array() == a.array()).all());
  EXPECT_TRUE((combined.keep_matrix().array() == (a.array() && b.array())).all());
}

TEST(Mask, KeepAndWindowKeepBothParts) {
  const MatrixB a = MatrixB::Constant(3, 3, true);
  for (const Mask& mask : {Mask::keep(a) & Mask::causal(), Mask::causal() & Mask::keep(a)}) {
    EXPECT_TRUE(mask.has_keep());
    EXPECT_TRUE(mask.has_window());
    EXPECT_FALSE(mask.has_bias());
    EXPECT_EQ(mask.right(), 0);
    EXPECT_EQ(mask.left(), Mask::unbounded);
    EXPECT_TRUE((mask.keep_matrix().array() == a.array()).all());
  }
  const Mask with_bias =
      Mask::keep(a) & Mask::bias(attn::Matrix<double>::Ones(3, 3)) & Mask::window(1, 1);
  EXPECT_TRUE(with_bias.has_keep() && with_bias.has_bias() && with_bias.has_window());
}

TEST(Mask, BiasAndBiasSums) {
  attn_test::Random rng(12);
  const attn::Matrix<float> f1 = rng.uniform_matrix<float>(4, 6);
  const attn::Matrix<float> f2 = rng.uniform_matrix<float>(4, 6);
  const attn::Matrix<double> d1 = rng.uniform_matrix<double>(4, 6);
  const attn::Matrix<double> d2 = rng.uniform_matrix<double>(4, 6);

  // float & float stays float.
  const Mask ff = Mask::bias(f1) & Mask::bias(f2);
  ASSERT_NE(ff.bias_matrix<float>(), nullptr);
  EXPECT_EQ(ff.bias_matrix<double>(), nullptr);
  EXPECT_TRUE(attn_test::matrix_near(*ff.bias_matrix<float>(), attn::Matrix<float>(f1 + f2), 0.0));

  // double & double stays double.
  const Mask dd = Mask::bias(d1) & Mask::bias(d2);
  ASSERT_NE(dd.bias_matrix<double>(), nullptr);
  EXPECT_EQ(dd.bias_matrix<float>(), nullptr);
  EXPECT_TRUE(
      attn_test::matrix_near(*dd.bias_matrix<double>(), attn::Matrix<double>(d1 + d2), 0.0));

  // Mixed precisions are summed in double, exactly as double(f) + d, in either order.
  const attn::Matrix<double> mixed_sum = f1.cast<double>() + d1;
  for (const Mask& fd : {Mask::bias(f1) & Mask::bias(d1), Mask::bias(d1) & Mask::bias(f1)}) {
    ASSERT_NE(fd.bias_matrix<double>(), nullptr);
    EXPECT_EQ(fd.bias_matrix<float>(), nullptr);
    EXPECT_TRUE(attn_test::matrix_near(*fd.bias_matrix<double>(), mixed_sum, 0.0));
  }

  // Three terms, and −∞ survives the sum.
  attn::Matrix<float> hidden = attn::Matrix<float>::Zero(4, 6);
  hidden(2, 3) = -std::numeric_limits<float>::infinity();
  const Mask three = Mask::bias(f1) & Mask::bias(d1) & Mask::bias(hidden);
  const attn::Matrix<double> sum3 = three.bias_as<double>();
  EXPECT_EQ(sum3(2, 3), -std::numeric_limits<double>::infinity());
  EXPECT_EQ(sum3(0, 0), mixed_sum(0, 0));

  // A bias composed with a structured mask keeps both.
  const Mask with_causal = Mask::bias(f1) & Mask::causal();
  EXPECT_TRUE(with_causal.has_bias() && with_causal.has_window());
  EXPECT_TRUE(attn_test::matrix_near(*with_causal.bias_matrix<float>(), f1, 0.0));
}

TEST(Mask, ComposingExplicitMatricesOfDifferentShapesThrows) {
  EXPECT_SHAPE_ERROR(
      Mask::keep(MatrixB::Constant(3, 4, true)) & Mask::keep(MatrixB::Constant(4, 3, true)),
      "Mask operator&", "keep", "3x4", "4x3");
  EXPECT_SHAPE_ERROR(
      Mask::bias(attn::Matrix<float>::Zero(2, 5)) & Mask::bias(attn::Matrix<float>::Zero(5, 2)),
      "Mask operator&", "bias", "2x5", "5x2");
  EXPECT_SHAPE_ERROR(
      Mask::bias(attn::Matrix<float>::Zero(2, 5)) & Mask::bias(attn::Matrix<double>::Zero(2, 6)),
      "Mask operator&", "bias", "2x5", "2x6");
  EXPECT_SHAPE_ERROR(
      Mask::bias(attn::Matrix<double>::Zero(7, 1)) & Mask::bias(attn::Matrix<double>::Zero(1, 7)),
      "bias", "7x1", "1x7");
  // A keep and a bias of different shapes are not compared by & (the kernel checks each).
  EXPECT_NO_THROW(Mask::keep(MatrixB::Constant(3, 4, true)) &
                  Mask::bias(attn::Matrix<float>::Zero(4, 3)));
}

TEST(Mask, CheckShapeNamesTheCallerThePartAndBothShapes) {
  const Mask keep = Mask::keep(MatrixB::Constant(4, 7, true));
  EXPECT_NO_THROW(keep.check_shape("caller", 4, 7));
  EXPECT_SHAPE_ERROR(keep.check_shape("caller", 5, 7), "caller", "keep", "4x7", "5x7");
  const Mask bias = Mask::bias(attn::Matrix<double>::Zero(5, 8));
  EXPECT_SHAPE_ERROR(bias.check_shape("caller", 5, 6), "caller", "bias", "5x8", "5x6");
  EXPECT_NO_THROW(Mask::causal().check_shape("caller", 3, 9));  // structured masks fit any shape
}

// ---------------------------------------------------------------------------------------------
// What the kernel makes of masks
// ---------------------------------------------------------------------------------------------

template <typename Scalar>
class MaskInKernel : public ::testing::Test {};
using Scalars = ::testing::Types<float, double>;
TYPED_TEST_SUITE(MaskInKernel, Scalars);

/// The attention matrix P (n × m) under `mask`: the output for v = I.
template <typename Scalar>
attn::Matrix<Scalar> attention_matrix(Index n, Index m, const Mask& mask, std::uint32_t seed) {
  attn_test::Random rng(seed);
  const attn::Matrix<Scalar> q = rng.uniform_matrix<Scalar>(n, 8);
  const attn::Matrix<Scalar> k = rng.uniform_matrix<Scalar>(m, 8);
  return attn::scaled_dot_product_attention(q, k, attn::Matrix<Scalar>::Identity(m, m), mask);
}

// Bottom-right alignment: query i sits at key position i + m − n.
TYPED_TEST(MaskInKernel, CausalIsAlignedBottomRight) {
  using Scalar = TypeParam;
  for (const auto& [n, m] :
       {std::pair<Index, Index>{4, 4}, {3, 10}, {10, 3}, {1, 9}, {70, 200}, {200, 70}}) {
    const attn::Matrix<Scalar> p = attention_matrix<Scalar>(n, m, Mask::causal(), 1);
    for (Index i = 0; i < n; ++i) {
      for (Index j = 0; j < m; ++j) {
        if (j <= i + m - n) {
          EXPECT_GT(p(i, j), Scalar(0)) << "n=" << n << " m=" << m << " (" << i << ", " << j << ")";
        } else {
          EXPECT_EQ(p(i, j), Scalar(0)) << "n=" << n << " m=" << m << " (" << i << ", " << j << ")";
        }
      }
    }
  }
  // A decoder step (n = 1) sees every key.
  const attn::Matrix<Scalar> step = attention_matrix<Scalar>(1, 9, Mask::causal(), 2);
  EXPECT_TRUE(attn_test::matrix_near(step, attention_matrix<Scalar>(1, 9, Mask::none(), 2), 0.0));
}

TYPED_TEST(MaskInKernel, WindowIsAlignedBottomRight) {
  using Scalar = TypeParam;
  for (const auto& [n, m] : {std::pair<Index, Index>{20, 20}, {5, 40}, {40, 5}, {130, 300}}) {
    for (const auto& [left, right] :
         {std::pair<Index, Index>{2, 1}, {0, 0}, {5, Mask::unbounded}, {Mask::unbounded, 3}}) {
      const attn::Matrix<Scalar> p = attention_matrix<Scalar>(n, m, Mask::window(left, right), 3);
      for (Index i = 0; i < n; ++i) {
        const Index position = i + m - n;
        for (Index j = 0; j < m; ++j) {
          const bool visible = (left == Mask::unbounded || j >= position - left) &&
                               (right == Mask::unbounded || j <= position + right);
          EXPECT_EQ(p(i, j) > Scalar(0), visible)
              << "window(" << left << ", " << right << ") n=" << n << " m=" << m << " (" << i
              << ", " << j << ")";
        }
      }
    }
  }
}

// Composition in the kernel equals the hand-composed equivalent, bitwise (the same masked logits).
TYPED_TEST(MaskInKernel, ComposedMasksEqualTheirEquivalents) {
  using Scalar = TypeParam;
  attn_test::Random rng(21);
  const Index n = 90, m = 150;
  const attn::Matrix<Scalar> q = rng.uniform_matrix<Scalar>(n, 16);
  const attn::Matrix<Scalar> k = rng.uniform_matrix<Scalar>(m, 16);
  const attn::Matrix<Scalar> v = rng.uniform_matrix<Scalar>(m, 8);
  const auto run = [&](const Mask& mask) {
    return attn::scaled_dot_product_attention(q, k, v, mask);
  };

  EXPECT_TRUE(attn_test::matrix_near(
      run(Mask::window(30, Mask::unbounded) & Mask::window(Mask::unbounded, 4)),
      run(Mask::window(30, 4)), 0.0));
  EXPECT_TRUE(attn_test::matrix_near(run(Mask::causal() & Mask::window(12, 9)),
                                     run(Mask::window(12, 0)), 0.0));

  const MatrixB a = rng.bernoulli_matrix(n, m, 0.7);
  const MatrixB b = rng.bernoulli_matrix(n, m, 0.7);
  const MatrixB a_and_b = a.array() && b.array();
  EXPECT_TRUE(
      attn_test::matrix_near(run(Mask::keep(a) & Mask::keep(b)), run(Mask::keep(a_and_b)), 0.0));

  // keep & causal equals keep of (a and j ≤ i + m − n), up to rounding: the causal part shortens
  // each query block's key range, and the key blocks are laid out over that range (the last one
  // ends at its end), so the online softmax adds the same terms in other groups.
  MatrixB a_causal = a;
  for (Index i = 0; i < n; ++i) {
    for (Index j = i + m - n + 1; j < m; ++j)
      a_causal(i, j) = false;
  }
  EXPECT_TRUE(attn_test::matrix_near(run(Mask::keep(a) & Mask::causal()), run(Mask::keep(a_causal)),
                                     16 * double(std::numeric_limits<Scalar>::epsilon())));

  // keep equals a bias of 0 / −∞.
  attn::Matrix<Scalar> hide = attn::Matrix<Scalar>::Zero(n, m);
  for (Index i = 0; i < n; ++i) {
    for (Index j = 0; j < m; ++j) {
      if (!a(i, j)) hide(i, j) = -std::numeric_limits<Scalar>::infinity();
    }
  }
  EXPECT_TRUE(attn_test::matrix_near(run(Mask::keep(a)), run(Mask::bias(hide)), 0.0));

  // bias & bias equals the bias of the sum (same precision: the sum is formed the same way).
  const attn::Matrix<Scalar> b1 = rng.uniform_matrix<Scalar>(n, m);
  const attn::Matrix<Scalar> b2 = rng.uniform_matrix<Scalar>(n, m);
  EXPECT_TRUE(attn_test::matrix_near(run(Mask::bias(b1) & Mask::bias(b2)),
                                     run(Mask::bias(attn::Matrix<Scalar>(b1 + b2))), 0.0));
  // A constant bias changes nothing but rounding (softmax is shift invariant).
  EXPECT_TRUE(
      attn_test::matrix_near(run(Mask::bias(attn::Matrix<Scalar>::Constant(n, m, Scalar(0.75)))),
                             run(Mask::none()), 16 * Eigen::NumTraits<Scalar>::epsilon()));
}

// Padding: key_length(count) gives what the first count rows of K and V alone give, whatever the
// padding rows hold (NaN here: a key block wholly beyond count is never read, and a straddling
// block's padding never reaches the output). Wide and narrow query blocks, one head and packed
// multi-head K/V, counts around the 64-key blocks, and a decode step whose keys are split.
TYPED_TEST(MaskInKernel, KeyLengthEqualsTheFirstKeysAlone) {
  using Scalar = TypeParam;
  using M = attn::Matrix<Scalar>;
  attn_test::Random rng(33);
  const Scalar nan = std::numeric_limits<Scalar>::quiet_NaN();
  struct Shape {
    Index n, m, heads;
  };
  for (const Shape& shape : {Shape{70, 200, 1}, Shape{70, 200, 2}, Shape{3, 200, 2},
                             Shape{1, 2100, 2}, Shape{130, 150, 4}}) {
    const Index d = 16;
    const M q = rng.uniform_matrix<Scalar>(shape.n, shape.heads * d);
    const M k = rng.uniform_matrix<Scalar>(shape.m, shape.heads * d);
    const M v = rng.uniform_matrix<Scalar>(shape.m, shape.heads * d);
    attn::AttentionOptions options;
    options.num_heads = shape.heads;
    for (const Index count :
         {Index(0), Index(1), Index(63), Index(64), Index(65), Index(129), shape.m - 1, shape.m}) {
      M k_padded = k, v_padded = v;
      k_padded.bottomRows(shape.m - count).setConstant(nan);
      v_padded.bottomRows(shape.m - count).setConstant(nan);
      const M got = attn::scaled_dot_product_attention(q, k_padded, v_padded,
                                                       Mask::key_length(count), options);
      M expected = M::Zero(shape.n, v.cols());  // no visible key: zeros
      if (count > 0) {
        expected = attn::scaled_dot_product_attention(q, M(k.topRows(count)), M(v.topRows(count)),
                                                      Mask(), options);
      }
      EXPECT_TRUE(got.allFinite()) << "n=" << shape.n << " m=" << shape.m << " count=" << count;
      EXPECT_TRUE(attn_test::matrix_near(got, expected, 4 * Eigen::NumTraits<Scalar>::epsilon()))
          << "n=" << shape.n << " m=" << shape.m << " heads=" << shape.heads << " count=" << count;
    }
  }
}

TYPED_TEST(MaskInKernel, KeyLengthBeyondTheKeysNamesBoth) {
  using M = attn::Matrix<TypeParam>;
  const M q = M::Ones(5, 8), k = M::Ones(7, 8), v = M::Ones(7, 4);
  EXPECT_SHAPE_ERROR(attn::scaled_dot_product_attention(q, k, v, Mask::key_length(8)),
                     "key_length is 8", "7 keys");
  EXPECT_NO_THROW(attn::scaled_dot_product_attention(q, k, v, Mask::key_length(7)));
}

TYPED_TEST(MaskInKernel, ExplicitMaskOfTheWrongShapeNamesBothShapes) {
  using Scalar = TypeParam;
  using M = attn::Matrix<Scalar>;
  const M q = M::Ones(5, 8), k = M::Ones(7, 8), v = M::Ones(7, 4);
  EXPECT_SHAPE_ERROR(
      attn::scaled_dot_product_attention(q, k, v, Mask::keep(MatrixB::Constant(7, 5, true))),
      "keep", "7x5", "5x7");
  EXPECT_SHAPE_ERROR(
      attn::scaled_dot_product_attention(q, k, v, Mask::keep(MatrixB::Constant(5, 8, true))),
      "keep", "5x8", "5x7");
  EXPECT_SHAPE_ERROR(
      attn::scaled_dot_product_attention(q, k, v, Mask::bias(attn::Matrix<float>::Zero(5, 6))),
      "bias", "5x6", "5x7");
  EXPECT_SHAPE_ERROR(
      attn::scaled_dot_product_attention(q, k, v, Mask::bias(attn::Matrix<double>::Zero(6, 7))),
      "bias", "6x7", "5x7");
  // The right-shaped part of a composed mask does not hide the wrong one.
  EXPECT_SHAPE_ERROR(
      attn::scaled_dot_product_attention(
          q, k, v,
          Mask::keep(MatrixB::Constant(5, 7, true)) & Mask::bias(attn::Matrix<float>::Zero(7, 5))),
      "bias", "7x5", "5x7");
}

}  // namespace
