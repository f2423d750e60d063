// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors

// Numerical edge cases of scaled_dot_product_attention, each against a closed form or the
// independent fp64 reference (support/reference.hpp): logits that overflow a naive exp, rows that
// see no key, ±∞ in an additive bias, NaN reaching exactly the rows that can see it, denormal
// inputs, values at the documented range, empty sequences, and agreement with the reference to
// 1e-12 (double) and at 32 768 keys (float).

#include <attn/cross_attention.hpp>
#include <attn/kv_cache.hpp>
#include <attn/mask.hpp>
#include <attn/scaled_dot_product.hpp>
#include <attn/self_attention.hpp>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "support/float_mode.hpp"
#include "support/matrix_near.hpp"
#include "support/random.hpp"
#include "support/reference.hpp"
#include "support/shape_error.hpp"
#include "support/tolerance.hpp"

namespace {

using attn::Index;
using attn::Mask;
using attn_test::MatrixB;
using attn_test::MatrixD;
using attn_test::Random;
using attn_test::ReferenceMask;

template <typename Scalar>
class EdgeCases : public ::testing::Test {};
using Scalars = ::testing::Types<float, double>;
TYPED_TEST_SUITE(EdgeCases, Scalars);

template <typename Scalar>
constexpr Scalar nan_value = std::numeric_limits<Scalar>::quiet_NaN();
template <typename Scalar>
constexpr Scalar infinity = std::numeric_limits<Scalar>::infinity();

/// |scale|·max_ij Σ_l |q_il|·|k_jl|: the bound B on the logits that tolerance.hpp's model needs.
template <typename DQ, typename DK>
double logit_bound(const Eigen::MatrixBase<DQ>& q, const Eigen::MatrixBase<DK>& k, double scale) {
  if (q.size() == 0 || k.size() == 0) return 0;
  const MatrixD products =
      q.template cast<double>().cwiseAbs() * k.template cast<double>().cwiseAbs().transpose();
  return std::abs(scale) * products.maxCoeff();
}

/// Rows of a that contain a NaN, as a list (for messages and exact comparisons).
template <typename Derived>
std::vector<Index> nan_rows(const Eigen::MatrixBase<Derived>& a) {
  std::vector<Index> rows;
  for (Index r = 0; r < a.rows(); ++r) {
    if (a.row(r).hasNaN()) rows.push_back(r);
  }
  return rows;
}

std::string to_string(const std::vector<Index>& rows) {
  std::string s = "{";
  for (std::size_t i = 0; i < rows.size(); ++i)
    s += (i ? ", " : "") + std::to_string(rows[i]);
  return s + "}";
}

// ---------------------------------------------------------------------------------------------
// Logits far beyond exp's range
// ---------------------------------------------------------------------------------------------

// Logits of ±1e4 overflow a naive exp (e^88 already overflows float, e^709 double); the softmax
// must subtract the row max first. The logits here are exact in float (integers times 1), so the
// answer is a closed form: weights ∝ 1, e^−1, e^−2 over the three largest, 0 for the rest.
TYPED_TEST(EdgeCases, LogitsOfTenThousandGiveTheExactSoftmax) {
  using Scalar = TypeParam;
  attn::Matrix<Scalar> q(3, 1), k(4, 1), v(4, 2);
  q << 1, -1, 0.5;
  k << 10000, 9999, 9998, -10000;
  v << 1, 0, 0, 1, 0, 0, 5, 5;
  attn::AttentionOptions options;
  options.scale = 1.0;
  const attn::Matrix<Scalar> out = attn::scaled_dot_product_attention(q, k, v, Mask(), options);

  const double e1 = std::exp(-1.0), e2 = std::exp(-2.0);
  const double e_half = std::exp(-0.5), e_one = std::exp(-1.0);
  MatrixD expected(3, 2);
  expected.row(0) << 1 / (1 + e1 + e2), e1 / (1 + e1 + e2);  // logits 1e4, 9999, 9998, −1e4
  expected.row(1) << 5, 5;                                   // −1e4, −9999, −9998, 1e4
  expected.row(2) << 1 / (1 + e_half + e_one), e_half / (1 + e_half + e_one);  // 5000, 4999.5, …
  ASSERT_TRUE(out.allFinite()) << out;
  // Exact logits: only exp, the sums and the division round, a few u each.
  EXPECT_TRUE(attn_test::matrix_near(out, expected, 16 * Eigen::NumTraits<Scalar>::epsilon()));
}

// Random logits up to |q·k| ≈ 1e4 over several tiles, every mask kind: finite, and the reference's
// answer within the documented tolerance (which grows with the logit bound: an absolute logit
// error of u·1e4 is a relative weight error of u·1e4).
TYPED_TEST(EdgeCases, HugeRandomLogitsMatchTheReference) {
  using Scalar = TypeParam;
  Random rng(501);
  const Index n = 70, m = 150, d = 16;
  const double a = 25;  // Σ over 16 products of |x| ≤ 25: |q·k| ≤ 1e4
  const attn::Matrix<Scalar> q = rng.uniform_matrix<Scalar>(n, d, -a, a);
  const attn::Matrix<Scalar> k = rng.uniform_matrix<Scalar>(m, d, -a, a);
  const attn::Matrix<Scalar> v = rng.uniform_matrix<Scalar>(m, 8);
  attn::AttentionOptions options;
  options.scale = 1.0;
  const double bound = logit_bound(q, k, 1.0);
  ASSERT_GT(bound, 4000);  // the largest |q·k| of this draw is ≈ 4800
  const MatrixB keep = rng.bernoulli_matrix(n, m, 0.7);
  const struct {
    const char* name;
    Mask mask;
    ReferenceMask reference;
  } cases[] = {{"none", Mask(), ReferenceMask()},
               {"causal", Mask::causal(), ReferenceMask::causal()},
               {"window(20, 3)", Mask::window(20, 3), ReferenceMask::window(20, 3)},
               {"keep", Mask::keep(keep), ReferenceMask::keep(keep)}};
  for (const auto& c : cases) {
    const attn::Matrix<Scalar> out = attn::scaled_dot_product_attention(q, k, v, c.mask, options);
    ASSERT_TRUE(out.allFinite()) << c.name;
    const MatrixD expected = attn_test::reference_multi_head(q, k, v, 1, 1, c.reference, 1.0);
    EXPECT_TRUE(
        attn_test::matrix_near(out, expected, attn_test::attention_tolerance<Scalar>(bound, m)))
        << c.name;
  }
}

// Soft-capping tames the same logits to ±30 before the softmax.
TYPED_TEST(EdgeCases, SoftcapOnHugeLogitsMatchesTheReference) {
  using Scalar = TypeParam;
  Random rng(502);
  const Index n = 40, m = 90, d = 16;
  const attn::Matrix<Scalar> q = rng.uniform_matrix<Scalar>(n, d, -25, 25);
  const attn::Matrix<Scalar> k = rng.uniform_matrix<Scalar>(m, d, -25, 25);
  const attn::Matrix<Scalar> v = rng.uniform_matrix<Scalar>(m, 8);
  attn::AttentionOptions options;
  options.scale = 1.0;
  options.softcap = 30;
  const attn::Matrix<Scalar> out =
      attn::scaled_dot_product_attention(q, k, v, Mask::causal(), options);
  ASSERT_TRUE(out.allFinite());
  const MatrixD expected =
      attn_test::reference_multi_head(q, k, v, 1, 1, ReferenceMask::causal(), 1.0, 30.0);
  // tanh is 1-Lipschitz: a logit error δ stays ≤ δ, plus the rounding of softcap·tanh.
  EXPECT_TRUE(attn_test::matrix_near(
      out, expected, attn_test::attention_tolerance<Scalar>(logit_bound(q, k, 1.0) + 30, m)));
}

// ---------------------------------------------------------------------------------------------
// Rows that see no key
// ---------------------------------------------------------------------------------------------

// A row with nothing visible is exactly zero (never NaN, never 0/0), whichever mask hides it, and
// the rows around it are unaffected.
TYPED_TEST(EdgeCases, FullyMaskedRowsAreExactlyZero) {
  using Scalar = TypeParam;
  Random rng(511);
  const Index n = 70, m = 50, d = 8, dv = 5;  // n > m: two query tiles
  const attn::Matrix<Scalar> q = rng.uniform_matrix<Scalar>(n, d);
  const attn::Matrix<Scalar> k = rng.uniform_matrix<Scalar>(m, d);
  const attn::Matrix<Scalar> v = rng.uniform_matrix<Scalar>(m, dv);

  MatrixB keep = rng.bernoulli_matrix(n, m, 0.6);
  keep.row(3).setConstant(false);
  keep.row(66).setConstant(false);
  attn::Matrix<Scalar> bias = rng.uniform_matrix<Scalar>(n, m);
  bias.row(3).setConstant(-infinity<Scalar>);
  bias.row(66).setConstant(-infinity<Scalar>);
  // window(0, 0) shows key p(i) = i + m − n only; keep hides exactly that key on rows 30 and 69.
  MatrixB diagonal_hidden = MatrixB::Constant(n, m, true);
  diagonal_hidden(30, 30 + m - n) = false;
  diagonal_hidden(69, 69 + m - n) = false;

  const struct {
    const char* name;
    Mask mask;
    ReferenceMask reference;
    std::vector<Index> empty_rows;
  } cases[] = {
      {"causal with n > m", Mask::causal(), ReferenceMask::causal(), {0, 5, 19}},
      {"keep", Mask::keep(keep), ReferenceMask::keep(keep), {3, 66}},
      {"bias of -inf", Mask::bias(bias), ReferenceMask::bias(bias), {3, 66}},
      {"window(0, 0) & keep",
       Mask::window(0, 0) & Mask::keep(diagonal_hidden),
       ReferenceMask::window(0, 0) & ReferenceMask::keep(diagonal_hidden),
       {0, 19, 30, 69}},
  };
  for (const auto& c : cases) {
    const attn::Matrix<Scalar> out = attn::scaled_dot_product_attention(q, k, v, c.mask);
    ASSERT_FALSE(out.hasNaN()) << c.name << ": NaN in rows " << to_string(nan_rows(out));
    for (Index r : c.empty_rows) {
      EXPECT_TRUE((out.row(r).array() == Scalar(0)).all())
          << c.name << ", row " << r << ": " << out.row(r);
    }
    const MatrixD expected = attn_test::reference_multi_head(q, k, v, 1, 1, c.reference);
    EXPECT_TRUE(attn_test::matrix_near(
        out, expected,
        attn_test::attention_tolerance<Scalar>(logit_bound(q, k, 1 / std::sqrt(8.0)) + 1, m)))
        << c.name;
  }

  // No keys at all: every row is zero.
  const attn::Matrix<Scalar> none =
      attn::scaled_dot_product_attention(q, k.topRows(0), v.topRows(0));
  EXPECT_EQ(none.rows(), n);
  EXPECT_TRUE((none.array() == Scalar(0)).all());
}

// ---------------------------------------------------------------------------------------------
// ±∞ in an additive bias
// ---------------------------------------------------------------------------------------------

// −∞ in the bias hides a key exactly as keep = false does: the same weights, the same output.
TYPED_TEST(EdgeCases, MinusInfinityBiasIsTheSameAsHiding) {
  using Scalar = TypeParam;
  Random rng(521);
  const Index n = 70, m = 130, d = 16, dv = 8;
  const attn::Matrix<Scalar> q = rng.uniform_matrix<Scalar>(n, d);
  const attn::Matrix<Scalar> k = rng.uniform_matrix<Scalar>(m, d);
  const attn::Matrix<Scalar> v = rng.uniform_matrix<Scalar>(m, dv);
  const MatrixB keep = rng.bernoulli_matrix(n, m, 0.6);
  const attn::Matrix<Scalar> finite = rng.uniform_matrix<Scalar>(n, m, -2, 2);
  attn::Matrix<Scalar> with_minus_infinity = finite;
  for (Index i = 0; i < n; ++i) {
    for (Index j = 0; j < m; ++j) {
      if (!keep(i, j)) with_minus_infinity(i, j) = -infinity<Scalar>;
    }
  }
  const attn::Matrix<Scalar> hidden_by_bias =
      attn::scaled_dot_product_attention(q, k, v, Mask::bias(with_minus_infinity));
  const attn::Matrix<Scalar> hidden_by_keep =
      attn::scaled_dot_product_attention(q, k, v, Mask::keep(keep) & Mask::bias(finite));
  ASSERT_TRUE(hidden_by_bias.allFinite());
  const double tolerance = attn_test::attention_tolerance<Scalar>(4 + 2, m);
  EXPECT_TRUE(attn_test::matrix_near(hidden_by_bias, hidden_by_keep, tolerance));
  const MatrixD expected = attn_test::reference_multi_head(
      q, k, v, 1, 1, ReferenceMask::keep(keep) & ReferenceMask::bias(finite));
  EXPECT_TRUE(attn_test::matrix_near(hidden_by_bias, expected, tolerance));
}

// +∞ is not a logit offset (every other key's weight would be 0/∞ = NaN): Mask::bias rejects it
// in either precision and through every overload; −∞ and large finite values are accepted.
TYPED_TEST(EdgeCases, PlusInfinityBiasIsRejectedByMaskBias) {
  using Scalar = TypeParam;
  attn::Matrix<Scalar> bias = attn::Matrix<Scalar>::Zero(3, 4);
  bias(1, 2) = infinity<Scalar>;
  EXPECT_SHAPE_ERROR(Mask::bias(bias), "Mask::bias");
  EXPECT_SHAPE_ERROR(Mask::bias(attn::Matrix<Scalar>(bias)), "Mask::bias");  // rvalue overload
  EXPECT_SHAPE_ERROR(Mask::bias(bias * Scalar(2)), "Mask::bias");            // an expression
  bias(1, 2) = -infinity<Scalar>;
  bias(0, 0) = std::numeric_limits<Scalar>::max();
  EXPECT_NO_THROW(Mask::bias(bias));
}

// A double bias beyond float's range used in a float call becomes ±∞ when converted: −∞ hides the
// key as documented, but +∞ must not silently change the answer. Either the call rejects it or it
// gives the reference's result: the key with the huge bias takes all the weight.
TEST(EdgeCasesMixedPrecision, DoubleBiasBeyondFloatRangeInAFloatCall) {
  Random rng(522);
  const Index n = 4, m = 6, d = 8;
  const attn::Matrix<float> q = rng.uniform_matrix<float>(n, d);
  const attn::Matrix<float> k = rng.uniform_matrix<float>(m, d);
  const attn::Matrix<float> v = rng.uniform_matrix<float>(m, 2);
  MatrixD bias = MatrixD::Zero(n, m);
  bias(1, 2) = 1e39;   // > FLT_MAX: row 1 must attend to key 2 only
  bias(2, 3) = -1e39;  // < −FLT_MAX: key 3 hidden from row 2
  const MatrixD expected =
      attn_test::reference_multi_head(q, k, v, 1, 1, ReferenceMask::bias(bias));
  ASSERT_TRUE(attn_test::matrix_near(expected.row(1), v.row(2).cast<double>(), 1e-12));
  try {
    const attn::Matrix<float> out = attn::scaled_dot_product_attention(q, k, v, Mask::bias(bias));
    EXPECT_TRUE(attn_test::matrix_near(out, expected, 1e-5))
        << "a double bias of 1e39 in a float call: neither rejected nor honoured";
  } catch (const attn::ShapeError&) {
    SUCCEED() << "rejected, which is fine";
  }
}

// ---------------------------------------------------------------------------------------------
// NaN reaches exactly the rows that can see it
// ---------------------------------------------------------------------------------------------

// The contract (mask.hpp): NaN in an input makes NaN the output rows it reaches, and no others.
// A NaN in query row i reaches row i (of that head); a NaN in key or value row j reaches the rows
// that see key j; a NaN bias entry (i, j) reaches row i if it sees key j. Each case runs on
// n = m = 100 with a causal mask, so the rows that do not see key j include rows in the same
// query and key tiles as the ones that do.

struct NanCase {
  Index row;  // the NaN's row in its matrix
  Index col;  // the NaN's column, or −1 for the whole row
};

template <typename Scalar>
void poison(attn::Matrix<Scalar>& m, NanCase c) {
  if (c.col < 0) {
    m.row(c.row).setConstant(nan_value<Scalar>);
  } else {
    m(c.row, c.col) = nan_value<Scalar>;
  }
}

/// Checks out against the reference run on the clean inputs: `reached(i, col)` says which output
/// entries must be NaN; every other entry must be finite and match the clean reference.
template <typename Scalar, typename Reached>
::testing::AssertionResult nan_exactly_where(const attn::Matrix<Scalar>& out,
                                             const MatrixD& clean_reference, Reached reached,
                                             double tolerance) {
  for (Index i = 0; i < out.rows(); ++i) {
    for (Index c = 0; c < out.cols(); ++c) {
      const bool is_nan = std::isnan(out(i, c));
      if (reached(i, c) && !is_nan) {
        return ::testing::AssertionFailure()
               << "out(" << i << ", " << c << ") = " << out(i, c)
               << " but the NaN reaches it (expected NaN); rows with NaN: "
               << to_string(nan_rows(out));
      }
      if (!reached(i, c) && is_nan) {
        return ::testing::AssertionFailure()
               << "out(" << i << ", " << c
               << ") is NaN but the NaN cannot reach it; rows with NaN: "
               << to_string(nan_rows(out));
      }
      if (!reached(i, c) && std::abs(out(i, c) - clean_reference(i, c)) >
                                tolerance * std::max(1.0, std::abs(clean_reference(i, c)))) {
        return ::testing::AssertionFailure()
               << "out(" << i << ", " << c << ") = " << out(i, c) << ", expected "
               << clean_reference(i, c) << " (the clean reference)";
      }
    }
  }
  return ::testing::AssertionSuccess();
}

template <typename Scalar>
struct NanFixture {
  static constexpr Index n = 100, m = 100, d = 8, dv = 4, heads = 2;
  attn::Matrix<Scalar> q, k, v;
  attn::AttentionOptions options;
  explicit NanFixture(std::uint32_t seed) {
    Random rng(seed);
    q = rng.uniform_matrix<Scalar>(n, heads * d);
    k = rng.uniform_matrix<Scalar>(m, heads * d);
    v = rng.uniform_matrix<Scalar>(m, heads * dv);
    options.num_heads = heads;
  }
  MatrixD clean(const ReferenceMask& mask) const {
    return attn_test::reference_multi_head(q, k, v, heads, heads, mask);
  }
  double tolerance() const {
    return attn_test::attention_tolerance<Scalar>(logit_bound(q, k, 1 / std::sqrt(double(d))), m);
  }
};

TYPED_TEST(EdgeCases, NanInAQueryReachesOnlyItsRowAndHead) {
  ATTN_TEST_SKIP_UNDER_FINITE_MATH();
  using Scalar = TypeParam;
  using F = NanFixture<Scalar>;
  const F f(531);
  const MatrixD clean = f.clean(ReferenceMask::causal());
  // Rows 5 and 66 (two query tiles), one element of head 1 and the whole row.
  for (NanCase c : {NanCase{5, F::d + 3}, NanCase{66, -1}, NanCase{99, 0}}) {
    attn::Matrix<Scalar> q = f.q;
    poison(q, c);
    const attn::Matrix<Scalar> out =
        attn::scaled_dot_product_attention(q, f.k, f.v, Mask::causal(), f.options);
    const auto reached = [&](Index i, Index col) {
      const Index head = col / F::dv;
      return i == c.row && (c.col < 0 || c.col / F::d == head);
    };
    EXPECT_TRUE(nan_exactly_where(out, clean, reached, f.tolerance()))
        << "NaN at q(" << c.row << ", " << c.col << ")";
  }
}

// A row that sees no key is zero even if its query is NaN: the NaN reaches no logit that counts.
TYPED_TEST(EdgeCases, NanInAQueryThatSeesNoKeyGivesZeros) {
  ATTN_TEST_SKIP_UNDER_FINITE_MATH();
  using Scalar = TypeParam;
  Random rng(532);
  const attn::Matrix<Scalar> k = rng.uniform_matrix<Scalar>(50, 8);
  const attn::Matrix<Scalar> v = rng.uniform_matrix<Scalar>(50, 4);
  attn::Matrix<Scalar> q = rng.uniform_matrix<Scalar>(70, 8);  // causal: rows 0..19 see nothing
  q.row(2).setConstant(nan_value<Scalar>);
  const attn::Matrix<Scalar> out = attn::scaled_dot_product_attention(q, k, v, Mask::causal());
  EXPECT_TRUE((out.row(2).array() == Scalar(0)).all()) << out.row(2);
  EXPECT_FALSE(out.hasNaN()) << "rows with NaN: " << to_string(nan_rows(out));
}

TYPED_TEST(EdgeCases, NanInAKeyReachesOnlyTheRowsThatSeeIt) {
  ATTN_TEST_SKIP_UNDER_FINITE_MATH();
  using Scalar = TypeParam;
  using F = NanFixture<Scalar>;
  const F f(533);
  const MatrixD clean = f.clean(ReferenceMask::causal());
  // Key 37: rows 0..36 (same tiles) do not see it under causal; rows 37..99 do.
  for (NanCase c : {NanCase{37, -1}, NanCase{37, 2}, NanCase{70, F::d + 1}}) {
    attn::Matrix<Scalar> k = f.k;
    poison(k, c);
    const attn::Matrix<Scalar> out =
        attn::scaled_dot_product_attention(f.q, k, f.v, Mask::causal(), f.options);
    const auto reached = [&](Index i, Index col) {
      const Index head = col / F::dv;
      return i >= c.row && (c.col < 0 || c.col / F::d == head);
    };
    EXPECT_TRUE(nan_exactly_where(out, clean, reached, f.tolerance()))
        << "NaN at k(" << c.row << ", " << c.col << ")";
  }
}

TYPED_TEST(EdgeCases, NanInAValueReachesOnlyTheRowsThatSeeIt) {
  ATTN_TEST_SKIP_UNDER_FINITE_MATH();
  using Scalar = TypeParam;
  using F = NanFixture<Scalar>;
  const F f(534);
  const MatrixD clean = f.clean(ReferenceMask::causal());
  for (NanCase c : {NanCase{37, -1}, NanCase{37, 2}, NanCase{70, F::dv + 1}}) {
    attn::Matrix<Scalar> v = f.v;
    poison(v, c);
    const attn::Matrix<Scalar> out =
        attn::scaled_dot_product_attention(f.q, f.k, v, Mask::causal(), f.options);
    // A NaN value element (j, c) reaches column c of the rows that see key j.
    const auto reached = [&](Index i, Index col) {
      return i >= c.row && (c.col < 0 || col == c.col);
    };
    EXPECT_TRUE(nan_exactly_where(out, clean, reached, f.tolerance()))
        << "NaN at v(" << c.row << ", " << c.col << ")";
  }
}

// Decoding shape (a few queries over many keys, the kernel's narrow path) with a window that
// hides the NaN key: the NaN must not reach the queries.
TYPED_TEST(EdgeCases, NanInAKeyOrValueOutsideTheWindowDoesNotReachADecodeStep) {
  ATTN_TEST_SKIP_UNDER_FINITE_MATH();
  using Scalar = TypeParam;
  Random rng(535);
  const Index n = 2, m = 3000, d = 16, dv = 8;
  const attn::Matrix<Scalar> q = rng.uniform_matrix<Scalar>(n, d);
  attn::Matrix<Scalar> k = rng.uniform_matrix<Scalar>(m, d);
  attn::Matrix<Scalar> v = rng.uniform_matrix<Scalar>(m, dv);
  const Mask window = Mask::causal() & Mask::window(100, 0);
  const ReferenceMask reference = ReferenceMask::causal() & ReferenceMask::window(100, 0);
  const MatrixD expected = attn_test::reference_multi_head(q, k, v, 1, 1, reference);
  k.row(10).setConstant(nan_value<Scalar>);    // far outside the window
  v.row(2800).setConstant(nan_value<Scalar>);  // just outside (the window starts at 2998 − 100)
  const attn::Matrix<Scalar> out = attn::scaled_dot_product_attention(q, k, v, window);
  ASSERT_FALSE(out.hasNaN()) << out;
  EXPECT_TRUE(attn_test::matrix_near(out, expected, attn_test::attention_tolerance<Scalar>(4, m)));
  // Without the window both rows see both NaNs.
  EXPECT_TRUE(attn::scaled_dot_product_attention(q, k, v, Mask::causal()).array().isNaN().all());
}

TYPED_TEST(EdgeCases, NanInTheBiasReachesOnlyItsRowIfTheKeyIsVisible) {
  ATTN_TEST_SKIP_UNDER_FINITE_MATH();
  using Scalar = TypeParam;
  using F = NanFixture<Scalar>;
  const F f(536);
  attn::Matrix<Scalar> bias = attn::Matrix<Scalar>::Zero(F::n, F::m);
  bias(60, 5) = nan_value<Scalar>;   // key 5 visible to row 60 under causal: row 60 NaN
  bias(10, 50) = nan_value<Scalar>;  // key 50 hidden from row 10: no effect
  const attn::Matrix<Scalar> out = attn::scaled_dot_product_attention(
      f.q, f.k, f.v, Mask::causal() & Mask::bias(bias), f.options);
  const MatrixD clean = f.clean(ReferenceMask::causal());
  EXPECT_TRUE(nan_exactly_where(
      out, clean, [](Index i, Index) { return i == 60; }, f.tolerance()));
}

// −∞ in the bias hides a key (mask.hpp) just as keep = false does, so a NaN in that key's k or v
// row reaches only the rows whose bias for it is finite, and a NaN query whose every key carries
// −∞ gives a zero row. (NaN + −∞ is NaN: the bias must hide the key, not be added to it.)
TYPED_TEST(EdgeCases, NanBehindAMinusInfinityBiasReachesNoRow) {
  ATTN_TEST_SKIP_UNDER_FINITE_MATH();
  using Scalar = TypeParam;
  using F = NanFixture<Scalar>;
  const F f(537);
  attn::Matrix<Scalar> bias = attn::Matrix<Scalar>::Zero(F::n, F::m);
  bias.col(37).head(50).setConstant(-infinity<Scalar>);  // rows 0..49 do not see key 37
  bias.row(3).setConstant(-infinity<Scalar>);            // row 3 sees no key at all
  const MatrixD clean = f.clean(ReferenceMask::bias(bias));
  const auto reached = [](Index i, Index) { return i >= 50; };

  attn::Matrix<Scalar> k = f.k;
  k.row(37).setConstant(nan_value<Scalar>);
  EXPECT_TRUE(nan_exactly_where(
      attn::scaled_dot_product_attention(f.q, k, f.v, Mask::bias(bias), f.options), clean, reached,
      f.tolerance()))
      << "NaN in k(37, :)";

  attn::Matrix<Scalar> v = f.v;
  v.row(37).setConstant(nan_value<Scalar>);
  EXPECT_TRUE(nan_exactly_where(
      attn::scaled_dot_product_attention(f.q, f.k, v, Mask::bias(bias), f.options), clean, reached,
      f.tolerance()))
      << "NaN in v(37, :)";

  attn::Matrix<Scalar> q = f.q;
  q.row(3).setConstant(nan_value<Scalar>);
  EXPECT_TRUE(nan_exactly_where(
      attn::scaled_dot_product_attention(q, f.k, f.v, Mask::bias(bias), f.options), clean,
      [](Index, Index) { return false; }, f.tolerance()))
      << "NaN in q(3, :), whose keys all carry -inf";
}

// ---------------------------------------------------------------------------------------------
// Denormal (subnormal) inputs
// ---------------------------------------------------------------------------------------------

/// |a − b| ≤ tol·scale + slack everywhere, for results whose size is `scale` (tiny for subnormal
/// values, where a relative-to-1 comparison would pass anything).
template <typename Scalar>
::testing::AssertionResult near_at_scale(const attn::Matrix<Scalar>& a, const MatrixD& b,
                                         double scale, double tol, double slack) {
  if (a.rows() != b.rows() || a.cols() != b.cols()) return ::testing::AssertionFailure() << "shape";
  for (Index r = 0; r < a.rows(); ++r) {
    for (Index c = 0; c < a.cols(); ++c) {
      const double err = std::abs(double(a(r, c)) - b(r, c));
      if (!(err <= tol * scale + slack)) {
        return ::testing::AssertionFailure()
               << "(" << r << ", " << c << "): got " << a(r, c) << ", expected " << b(r, c)
               << ", error " << err << " > " << tol * scale + slack;
      }
    }
  }
  return ::testing::AssertionSuccess();
}

TYPED_TEST(EdgeCases, DenormalInputsGiveFiniteCorrectResults) {
  using Scalar = TypeParam;
  Random rng(541);
  const Index n = 70, m = 90, d = 16, dv = 8;
  const double tiny = std::numeric_limits<Scalar>::min();  // smallest normal; below it: subnormal
  const double sub = tiny / 4;
  const double u = Eigen::NumTraits<Scalar>::epsilon();
  const double denorm = std::numeric_limits<Scalar>::denorm_min();
  const attn::Matrix<Scalar> q_sub = rng.uniform_matrix<Scalar>(n, d, -sub, sub);
  const attn::Matrix<Scalar> k_sub = rng.uniform_matrix<Scalar>(m, d, -sub, sub);
  const attn::Matrix<Scalar> v_sub = rng.uniform_matrix<Scalar>(m, dv, -sub, sub);
  const attn::Matrix<Scalar> q = rng.uniform_matrix<Scalar>(n, d);
  const attn::Matrix<Scalar> k = rng.uniform_matrix<Scalar>(m, d);
  const attn::Matrix<Scalar> v = rng.uniform_matrix<Scalar>(m, dv);
  if (q_sub.cwiseAbs().maxCoeff() == Scalar(0)) {
    GTEST_SKIP() << "subnormals are flushed to zero in this process (-ffast-math sets "
                    "flush-to-zero at start-up)";
  }
  ASSERT_EQ(std::fpclassify(q_sub(0, 0)), FP_SUBNORMAL);

  for (const Mask& mask : {Mask(), Mask::causal()}) {
    const ReferenceMask reference = mask.is_none() ? ReferenceMask() : ReferenceMask::causal();
    // Subnormal q and k: the logits underflow to 0, so each row averages its visible values.
    const attn::Matrix<Scalar> averaged = attn::scaled_dot_product_attention(q_sub, k_sub, v, mask);
    ASSERT_TRUE(averaged.allFinite());
    EXPECT_TRUE(attn_test::matrix_near(
        averaged, attn_test::reference_multi_head(q_sub, k_sub, v, 1, 1, reference),
        attn_test::attention_tolerance<Scalar>(1, m)));
    // Subnormal values: the output is subnormal too; each product p·v rounds to a multiple of
    // denorm_min, so allow m of those on top of the relative error.
    const attn::Matrix<Scalar> small = attn::scaled_dot_product_attention(q, k, v_sub, mask);
    ASSERT_TRUE(small.allFinite());
    EXPECT_TRUE(near_at_scale(small, attn_test::reference_multi_head(q, k, v_sub, 1, 1, reference),
                              sub, 64 * u * std::log2(double(m)), double(m) * denorm));
    // Everything subnormal.
    const attn::Matrix<Scalar> all_sub =
        attn::scaled_dot_product_attention(q_sub, k_sub, v_sub, mask);
    ASSERT_TRUE(all_sub.allFinite());
    EXPECT_TRUE(near_at_scale(all_sub,
                              attn_test::reference_multi_head(q_sub, k_sub, v_sub, 1, 1, reference),
                              sub, 64 * u * std::log2(double(m)), double(m) * denorm));
  }
  // A subnormal bias is a zero bias for all practical purposes.
  const attn::Matrix<Scalar> bias = rng.uniform_matrix<Scalar>(n, m, -sub, sub);
  const attn::Matrix<Scalar> biased = attn::scaled_dot_product_attention(q, k, v, Mask::bias(bias));
  EXPECT_TRUE(attn_test::matrix_near(biased, attn_test::reference_multi_head(q, k, v, 1, 1),
                                     attn_test::attention_tolerance<Scalar>(4, m)));
}

// ---------------------------------------------------------------------------------------------
// Large values
// ---------------------------------------------------------------------------------------------

// The output is a convex combination of the values, so it is at most max|v| whatever m is. Values
// of 1e30 (float) or 1e300 (double) over 1000 keys must not overflow an unnormalised sum.
TYPED_TEST(EdgeCases, LargeValuesDoNotOverflow) {
  using Scalar = TypeParam;
  Random rng(551);
  const Index n = 70, m = 1000, d = 8;
  const double big = std::is_same_v<Scalar, float> ? 1e30 : 1e300;
  const attn::Matrix<Scalar> q = rng.uniform_matrix<Scalar>(n, d);
  const attn::Matrix<Scalar> k = rng.uniform_matrix<Scalar>(m, d);
  const attn::Matrix<Scalar> v = rng.uniform_matrix<Scalar>(m, 4, -big, big);
  const attn::Matrix<Scalar> out = attn::scaled_dot_product_attention(q, k, v, Mask::causal());
  ASSERT_TRUE(out.allFinite());
  const MatrixD expected = attn_test::reference_multi_head(q, k, v, 1, 1, ReferenceMask::causal());
  EXPECT_TRUE(near_at_scale(out, expected, big, attn_test::attention_tolerance<Scalar>(4, m), 0));
}

// The documented range (scaled_dot_product.hpp): values are summed before the softmax's division,
// so |v| times the number of visible keys must stay below the largest finite Scalar. At that limit
// (|v|·m = max/2, equal weights) the result, a mean, is finite and right.
TYPED_TEST(EdgeCases, ValuesAtTheDocumentedRangeDoNotOverflow) {
  using Scalar = TypeParam;
  const Index n = 3, m = 1000, d = 8;
  const Scalar big = std::numeric_limits<Scalar>::max() / Scalar(2 * m);
  const attn::Matrix<Scalar> q = attn::Matrix<Scalar>::Zero(n, d);  // equal weights 1/m
  const attn::Matrix<Scalar> k = attn::Matrix<Scalar>::Ones(m, d);
  attn::Matrix<Scalar> v = attn::Matrix<Scalar>::Constant(m, 2, big);
  v.col(1).setConstant(-big);
  const attn::Matrix<Scalar> out = attn::scaled_dot_product_attention(q, k, v);
  ASSERT_TRUE(out.allFinite()) << "mean of values " << big << " over " << m
                               << " keys overflowed: " << out.row(0);
  const double u = Eigen::NumTraits<Scalar>::epsilon();
  for (Index i = 0; i < n; ++i) {
    EXPECT_NEAR(double(out(i, 0)) / double(big), 1.0, double(m) * u) << i;
    EXPECT_NEAR(double(out(i, 1)) / double(big), -1.0, double(m) * u) << i;
  }
}

// ---------------------------------------------------------------------------------------------
// Agreement with the reference
// ---------------------------------------------------------------------------------------------

// The double path agrees with the fp64 reference to 1e-12 over shapes around the tile sizes, long
// key ranges, heads, and every mask kind: a fixed bar, well above the ~1e-15 rounding and far
// below any defect.
TEST(EdgeCasesDouble, AgreesWithTheReferenceToOneInATrillion) {
  Random rng(561);
  struct Shape {
    Index n, m, d, dv, heads, kv_heads;
  };
  const Shape shapes[] = {{1, 1, 1, 1, 1, 1},        {1, 3000, 64, 64, 2, 1},
                          {63, 65, 8, 3, 1, 1},      {64, 64, 64, 64, 1, 1},
                          {65, 129, 16, 8, 4, 2},    {130, 70, 32, 16, 2, 2},
                          {200, 1000, 64, 32, 1, 1}, {3, 2000, 8, 8, 4, 4}};
  for (const Shape& s : shapes) {
    const attn::Matrix<double> q = rng.uniform_matrix<double>(s.n, s.heads * s.d);
    const attn::Matrix<double> k = rng.uniform_matrix<double>(s.m, s.kv_heads * s.d);
    const attn::Matrix<double> v = rng.uniform_matrix<double>(s.m, s.kv_heads * s.dv);
    const MatrixB keep = rng.bernoulli_matrix(s.n, s.m, 0.7);
    const MatrixD bias = rng.uniform_matrix<double>(s.n, s.m, -3, 3);
    const struct {
      const char* name;
      Mask mask;
      ReferenceMask reference;
    } cases[] = {
        {"none", Mask(), ReferenceMask()},
        {"causal", Mask::causal(), ReferenceMask::causal()},
        {"sliding window", Mask::causal() & Mask::window(40, 0),
         ReferenceMask::causal() & ReferenceMask::window(40, 0)},
        {"window(unbounded, 5)", Mask::window(Mask::unbounded, 5), ReferenceMask::window(-1, 5)},
        {"keep & bias", Mask::keep(keep) & Mask::bias(bias),
         ReferenceMask::keep(keep) & ReferenceMask::bias(bias)},
    };
    attn::AttentionOptions options;
    options.num_heads = s.heads;
    options.num_kv_heads = s.kv_heads;
    for (const auto& c : cases) {
      const attn::Matrix<double> out = attn::scaled_dot_product_attention(q, k, v, c.mask, options);
      const MatrixD expected =
          attn_test::reference_multi_head(q, k, v, s.heads, s.kv_heads, c.reference);
      EXPECT_TRUE(attn_test::matrix_near(out, expected, 1e-12))
          << c.name << ", n " << s.n << ", m " << s.m << ", d " << s.d << ", heads " << s.heads
          << "/" << s.kv_heads;
    }
  }
}

// Float at 32 768 keys (one head, d = 64) within the documented tolerance. The queries are the
// last ones of a 32 768-token sequence: with bottom-right alignment, causal attention of these n
// queries over all m keys is exactly the last n rows of the full n = m causal problem, at a cost
// the reference can afford (n·m·d instead of m²·d). Unoptimised builds check fewer rows.
TEST(EdgeCasesFloat, WithinToleranceAt32768Keys) {
#if defined(__OPTIMIZE__)
  const Index n = 64;
#else
  const Index n = 8;
#endif
  const Index m = 32768, d = 64;
  Random rng(571);
  const attn::Matrix<float> q = rng.uniform_matrix<float>(n, d);
  const attn::Matrix<float> k = rng.uniform_matrix<float>(m, d);
  const attn::Matrix<float> v = rng.uniform_matrix<float>(m, d);
  // Entries in [−1, 1] and scale 1/8: logits within ±8 (see tolerance.hpp).
  const double tolerance = attn_test::attention_tolerance<float>(8, m);
  for (const bool causal : {false, true}) {
    const Mask mask = causal ? Mask::causal() : Mask();
    const ReferenceMask reference = causal ? ReferenceMask::causal() : ReferenceMask();
    const attn::Matrix<float> out = attn::scaled_dot_product_attention(q, k, v, mask);
    const MatrixD expected = attn_test::reference_multi_head(q, k, v, 1, 1, reference);
    EXPECT_TRUE(attn_test::matrix_near(out, expected, tolerance)) << (causal ? "causal" : "none");
  }
}

// ---------------------------------------------------------------------------------------------
// Degenerate sizes
// ---------------------------------------------------------------------------------------------

// head_dim 0: every logit is 0 (scale 1 by definition), so each row averages its visible values;
// value_dim 0: an n × 0 result; n = 0: an empty result.
TYPED_TEST(EdgeCases, ZeroHeadDimValueDimAndQueries) {
  using Scalar = TypeParam;
  Random rng(581);
  const Index n = 5, m = 7;
  const attn::Matrix<Scalar> q(n, 0), k(m, 0);
  const attn::Matrix<Scalar> v = rng.uniform_matrix<Scalar>(m, 3);
  const attn::Matrix<Scalar> out = attn::scaled_dot_product_attention(q, k, v, Mask::causal());
  const MatrixD expected = attn_test::reference_multi_head(q, k, v, 1, 1, ReferenceMask::causal());
  EXPECT_TRUE(attn_test::matrix_near(out, expected, attn_test::attention_tolerance<Scalar>(0, m)));

  const attn::Matrix<Scalar> q8 = rng.uniform_matrix<Scalar>(n, 8),
                             k8 = rng.uniform_matrix<Scalar>(m, 8);
  const attn::Matrix<Scalar> narrow = attn::scaled_dot_product_attention(q8, k8, v.leftCols(0));
  EXPECT_EQ(narrow.rows(), n);
  EXPECT_EQ(narrow.cols(), 0);
  const attn::Matrix<Scalar> empty = attn::scaled_dot_product_attention(q8.topRows(0), k8, v);
  EXPECT_EQ(empty.rows(), 0);
  EXPECT_EQ(empty.cols(), 3);
}

// Empty sequences through the functors: zero rows in, zero rows out, and a source of zero rows
// gives every target row the output projection's bias (attention over no key is zero). Under the
// asan preset (UBSan) this also checks that no view of an empty matrix offsets its null pointer.
TYPED_TEST(EdgeCases, EmptySequencesThroughTheFunctors) {
  using Scalar = TypeParam;
  Random rng(582);
  attn::MultiHeadConfig cfg{/*model_dim*/ 16, /*num_heads*/ 4, /*num_kv_heads*/ 2};
  const attn::MultiHeadWeights<Scalar> w = attn_test::random_weights<Scalar>(cfg, rng);
  const attn::SelfAttention<Scalar> self_attn(cfg, w);
  const attn::CrossAttention<Scalar> cross(cfg, w);
  const attn::Matrix<Scalar> none(0, 16);
  const attn::Matrix<Scalar> x = rng.uniform_matrix<Scalar>(5, 16);

  EXPECT_EQ(self_attn(none).rows(), 0);
  EXPECT_EQ(cross(none, x).rows(), 0);
  const attn::Matrix<Scalar> over_nothing = cross(x, none);
  ASSERT_EQ(over_nothing.rows(), 5);
  for (Index r = 0; r < 5; ++r) {
    EXPECT_TRUE((over_nothing.row(r).transpose().array() == w.out_bias.array()).all()) << r;
  }
  // Packed batches with empty sequences.
  const attn::Matrix<Scalar> packed = self_attn(x, std::vector<Index>{0, 5, 0}, Mask::causal());
  EXPECT_TRUE(attn_test::matrix_near(packed, self_attn(x, Mask::causal()), 0.0));
  // A KV cache fed nothing stays empty.
  attn::KVCache<Scalar> cache = self_attn.make_cache(4);
  EXPECT_EQ(self_attn(none, cache).rows(), 0);
  EXPECT_EQ(cache.size(), 0);
}

}  // namespace
