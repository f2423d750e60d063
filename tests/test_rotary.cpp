// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors

// attn::Rotary (rotary.hpp) against a plain fp64 reference written from the definition (each
// pair a complex number multiplied by e^{i·p·θ}) and against PyTorch goldens (Hugging Face's
// rotate_half, Meta's complex pairs; partial rotary, several heads, linear and NTK scaling, a
// large offset, explicit positions). Invariants: position 0 is the identity, rotations compose
// (negative positions included, as a cache re-positions keys), the pass-through features of a
// partial rotary are untouched bit for bit, pairs keep their norm, heads are independent, the two
// layouts are the same rotation on permuted features, scaling is what it says; column blocks of
// a fused projection; no allocation; every ShapeError.

#include <attn/attn.hpp>
#include <attn/rotary.hpp>

#include <algorithm>
#include <cmath>
#include <complex>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <string>
#include <vector>

#include "support/counting_new.hpp"
#include "support/golden.hpp"
#include "support/matrix_near.hpp"
#include "support/random.hpp"
#include "support/reference.hpp"
#include "support/shape_error.hpp"
#include "support/tolerance.hpp"

namespace {

using attn::Index;
using attn::Matrix;
using attn::Rotary;
using attn::RotaryConfig;
using attn::RotaryLayout;
using attn::RotaryScaling;
using attn_test::bitwise_equal;
using attn_test::Random;
using Kind = attn::RotaryScaling::Kind;

template <typename T>
class RotaryTest : public ::testing::Test {};
using Scalars = ::testing::Types<float, double>;
TYPED_TEST_SUITE(RotaryTest, Scalars);

// Tolerances, for matrix_near (|got − expected| / max(1, |expected|)) with inputs in [−1, 1], so
// that a pair (x_a, x_b) has |x_a| + |x_b| ≤ 2 and every output is at most √2 in magnitude:
// - In Scalar, cos and sin are each rounded once to Scalar (after an error of at most an ulp of
//   double in libm or in torch), then x_a·c − x_b·s takes two products and a difference, each
//   rounded: an error of at most about 2u·(|x_a| + |x_b|) + u·|result| ≤ 6u, u = epsilon().
// - The angle p·θ_i is computed in double by both sides, from θ_i that may differ in their last
//   bit (pow): the angles may differ by ~4·2^−53·|p·θ_i|, which moves an output by up to
//   (|x_a| + |x_b|) times that. With θ_0 = 1 the largest, |p·θ_i| ≤ max|p|.
// So 8u + 8·eps_double·max|p|: for float 9.5e−7 (the angle term matters only past p ~ 10^8), for
// double 1.8e−15 at p = 0 and 1.8e−12 at p = 1000. A wrong pair, frequency or position moves
// outputs by 1e−3 or far more.
template <typename T>
double tolerance(double max_position) {
  const double eps = std::numeric_limits<double>::epsilon();
  return 8.0 * Eigen::NumTraits<T>::epsilon() + 8.0 * eps * std::abs(max_position);
}

double max_abs(const std::vector<Index>& positions) {
  double m = 0;
  for (const Index p : positions)
    m = std::max(m, std::abs(static_cast<double>(p)));
  return m;
}

std::vector<Index> consecutive(Index first, Index count) {
  std::vector<Index> positions;
  for (Index i = 0; i < count; ++i)
    positions.push_back(first + i);
  return positions;
}

RotaryConfig make_config(Index head_dim, Index rotary_dim = 0,
                         RotaryLayout layout = RotaryLayout::half_split, RotaryScaling scaling = {},
                         double base = 10000) {
  RotaryConfig cfg;
  cfg.head_dim = head_dim;
  cfg.rotary_dim = rotary_dim;
  cfg.base = base;
  cfg.layout = layout;
  cfg.scaling = scaling;
  return cfg;
}

std::string describe(const RotaryConfig& cfg) {
  const char* kinds[] = {"none", "linear", "ntk"};
  return "head_dim " + std::to_string(cfg.head_dim) + ", rotary_dim " +
         std::to_string(cfg.rotary_dim) + ", base " + std::to_string(cfg.base) +
         (cfg.layout == RotaryLayout::half_split ? ", half_split" : ", interleaved") +
         ", scaling " + kinds[static_cast<int>(cfg.scaling.kind)] + " " +
         std::to_string(cfg.scaling.factor);
}

// ---------------------------------------------------------------------------------------------
// The fp64 reference, from the definition rather than from rotary.hpp: in each head, pair i is
// the complex number z = x_a + i·x_b (features (i, i + r/2) for half_split, (2i, 2i + 1) for
// interleaved), and a row at position p maps it to z·e^{i·p·θ_i}, θ_i = base^(−2i/r), with
// NTK scaling base·factor^(r/(r − 2)) and linear scaling p / factor in place of p.

Index pair_first(RotaryLayout layout, Index i, Index) {
  return layout == RotaryLayout::half_split ? i : 2 * i;
}
Index pair_second(RotaryLayout layout, Index i, Index r) {
  return layout == RotaryLayout::half_split ? i + r / 2 : 2 * i + 1;
}

Matrix<double> reference_rotary(const Matrix<double>& x, const RotaryConfig& cfg,
                                const std::vector<Index>& positions) {
  const Index d = cfg.head_dim;
  const Index r = cfg.rotary_dim == 0 ? d : cfg.rotary_dim;
  const double base = cfg.scaling.kind == Kind::ntk
                          ? cfg.base * std::pow(cfg.scaling.factor, double(r) / double(r - 2))
                          : cfg.base;
  Matrix<double> out = x;
  for (Index row = 0; row < x.rows(); ++row) {
    double p = double(positions[std::size_t(row)]);
    if (cfg.scaling.kind == Kind::linear) p /= cfg.scaling.factor;
    for (Index h = 0; h < x.cols() / d; ++h) {
      for (Index i = 0; i < r / 2; ++i) {
        const Index a = h * d + pair_first(cfg.layout, i, r);
        const Index b = h * d + pair_second(cfg.layout, i, r);
        const double theta = std::pow(base, -2.0 * double(i) / double(r));
        const std::complex<double> z =
            std::complex<double>(x(row, a), x(row, b)) * std::polar(1.0, p * theta);
        out(row, a) = z.real();
        out(row, b) = z.imag();
      }
    }
  }
  return out;
}

// Moves half_split's pair (i, i + r/2) of every head to interleaved's (2i, 2i + 1).
template <typename T>
Matrix<T> interleave_pairs(const Matrix<T>& x, Index d, Index r) {
  Matrix<T> out = x;
  for (Index h = 0; h < x.cols() / d; ++h) {
    for (Index i = 0; i < r / 2; ++i) {
      out.col(h * d + 2 * i) = x.col(h * d + i);
      out.col(h * d + 2 * i + 1) = x.col(h * d + i + r / 2);
    }
  }
  return out;
}

// Configurations over both layouts: full and partial rotary, each scaling, and rotary dims above
// the 64 pairs whose cos and sin one pass computes (128 + 100 pairs, 100 = 64 + 36).
std::vector<RotaryConfig> configs() {
  std::vector<RotaryConfig> out;
  for (const RotaryLayout layout : {RotaryLayout::half_split, RotaryLayout::interleaved}) {
    out.push_back(make_config(16, 0, layout));
    out.push_back(make_config(64, 32, layout));
    out.push_back(make_config(48, 16, layout));
    out.push_back(make_config(10, 4, layout, {}, 500000));
    out.push_back(make_config(2, 0, layout, {}, 3));
    out.push_back(make_config(32, 0, layout, RotaryScaling::linear(4)));
    out.push_back(make_config(32, 0, layout, RotaryScaling::linear(0.5)));
    out.push_back(make_config(32, 24, layout, RotaryScaling::ntk(8)));
    out.push_back(make_config(256, 0, layout));
    out.push_back(make_config(320, 200, layout, RotaryScaling::ntk(2)));
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Against the fp64 reference

TYPED_TEST(RotaryTest, MatchesReferenceAtConsecutivePositions) {
  using T = TypeParam;
  Random rng(1);
  for (const RotaryConfig& cfg : configs()) {
    const Rotary rope(cfg);
    for (const Index heads : {1, 3}) {
      for (const Index first : {Index(0), Index(1), Index(-37), Index(1000), Index(100000)}) {
        const Matrix<T> x = rng.uniform_matrix<T>(5, heads * cfg.head_dim);
        Matrix<T> y = x;
        rope.apply(y, first);
        const std::vector<Index> positions = consecutive(first, x.rows());
        EXPECT_MATRIX_NEAR(y, reference_rotary(x.template cast<double>(), cfg, positions),
                           tolerance<T>(max_abs(positions)))
            << describe(cfg) << ", heads " << heads << ", first_position " << first;
      }
    }
  }
}

TYPED_TEST(RotaryTest, MatchesReferenceAtExplicitPositions) {
  using T = TypeParam;
  Random rng(2);
  // Repeated, unordered, negative, zero, large.
  const std::vector<Index> positions = {3, 3, -1, 0, 70000, 12, -4096, 1, 0, 524287};
  for (const RotaryConfig& cfg : configs()) {
    const Rotary rope(cfg);
    const Matrix<T> x = rng.uniform_matrix<T>(Index(positions.size()), 2 * cfg.head_dim);
    Matrix<T> y = x;
    rope.apply(y, positions);
    EXPECT_MATRIX_NEAR(y, reference_rotary(x.template cast<double>(), cfg, positions),
                       tolerance<T>(max_abs(positions)))
        << describe(cfg);
    // The pointer form is the same computation.
    Matrix<T> z = x;
    rope.apply(z, positions.data(), Index(positions.size()));
    EXPECT_TRUE(bitwise_equal(z, y)) << describe(cfg);
  }
}

TYPED_TEST(RotaryTest, ConsecutivePositionsEqualTheirList) {
  using T = TypeParam;
  Random rng(3);
  for (const RotaryConfig& cfg : configs()) {
    const Rotary rope(cfg);
    for (const Index first : {Index(-9), Index(0), Index(2047)}) {
      const Matrix<T> x = rng.uniform_matrix<T>(6, 2 * cfg.head_dim);
      Matrix<T> y = x, z = x;
      rope.apply(y, first);
      rope.apply(z, consecutive(first, x.rows()));
      EXPECT_TRUE(bitwise_equal(y, z)) << describe(cfg) << ", first_position " << first;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Against PyTorch (tests/reference/generate_golden.py): inputs on a grid of 1/64, exact in float;
// the outputs are float64 written with repr (every digit of the double), so the file adds no
// rounding of its own and the tolerance is the one against the fp64 reference.

const char* const golden_cases[] = {
    "rotary_llama",        "rotary_llama_offset",         "rotary_meta",   "rotary_meta_offset",
    "rotary_neox_partial", "rotary_gptj_partial",         "rotary_linear", "rotary_ntk",
    "rotary_positions",    "rotary_positions_interleaved"};

TYPED_TEST(RotaryTest, MatchesPyTorchGoldens) {
  using T = TypeParam;
  for (const char* name : golden_cases) {
    const attn_test::Golden g = attn_test::load_golden(name);
    RotaryConfig cfg;
    cfg.head_dim = g.index("head_dim");
    cfg.rotary_dim = g.index("rotary_dim");
    cfg.base = g.scalar<double>("base");
    cfg.layout = g.index("layout") == 0 ? RotaryLayout::half_split : RotaryLayout::interleaved;
    const Kind kinds[] = {Kind::none, Kind::linear, Kind::ntk};
    cfg.scaling.kind = kinds[g.index("scaling")];
    cfg.scaling.factor = g.scalar<double>("factor");
    const Matrix<double> listed = g.matrix<double>("positions");
    std::vector<Index> positions;
    for (Index i = 0; i < listed.cols(); ++i)
      positions.push_back(static_cast<Index>(listed(0, i)));
    const Matrix<T> x = g.matrix<T>("x");
    ASSERT_EQ(x.cols(), g.index("num_heads") * cfg.head_dim) << g.path();
    ASSERT_TRUE(bitwise_equal(x.template cast<double>(), g.matrix<double>("x"))) << g.path();
    const Matrix<double> expected = g.matrix<double>("out");
    const double tol = tolerance<T>(max_abs(positions));

    const Rotary rope(cfg);
    Matrix<T> y = x;
    rope.apply(y, positions);
    EXPECT_MATRIX_NEAR(y, expected, tol) << g.path();
    if (positions == consecutive(positions.front(), Index(positions.size()))) {
      Matrix<T> z = x;
      rope.apply(z, positions.front());
      EXPECT_MATRIX_NEAR(z, expected, tol) << g.path() << ", by first_position";
    }
    // The fp64 reference agrees with torch too (a check of the reference itself).
    EXPECT_MATRIX_NEAR(reference_rotary(g.matrix<double>("x"), cfg, positions), expected,
                       tolerance<double>(max_abs(positions)))
        << g.path() << ", the test's reference";
  }
}

// ---------------------------------------------------------------------------------------------
// Invariants

TYPED_TEST(RotaryTest, PositionZeroIsTheIdentity) {
  using T = TypeParam;
  Random rng(4);
  for (const RotaryConfig& cfg : configs()) {
    const Rotary rope(cfg);
    Matrix<T> x = rng.uniform_matrix<T>(3, 2 * cfg.head_dim);
    // Bit for bit, also for the values a rotation by 0 would change: −0 (−0 − 0·x = +0) and
    // non-finite features (∞·0 = NaN).
    x(0, 0) = T(-0.0);
    x(0, cfg.head_dim / 2) = T(0.5);
    x(1, 0) = std::numeric_limits<T>::infinity();
    x(2, 1) = std::numeric_limits<T>::quiet_NaN();
    Matrix<T> y = x;
    rope.apply(y.topRows(1), 0);
    rope.apply(y.bottomRows(2), std::vector<Index>{0, 0});
    rope.shift(y, 0);
    EXPECT_TRUE(bitwise_equal(y, x)) << describe(cfg);
    // Rows at position 0 among others are untouched too.
    Matrix<T> z = x;
    z.row(1).setConstant(T(0.25));
    const Matrix<T> before = z;
    rope.apply(z, std::vector<Index>{0, 5, 0});
    EXPECT_TRUE(bitwise_equal(z.row(0), before.row(0))) << describe(cfg);
    EXPECT_TRUE(bitwise_equal(z.row(2), before.row(2))) << describe(cfg);
    EXPECT_FALSE(bitwise_equal(z.row(1), before.row(1))) << describe(cfg);
  }
}

// Rotating a row to p and then to δ is rotating it to p + δ: apply(x, p) then shift(x, δ) equals
// apply(x, p + δ); explicit lists add elementwise; one row composes under apply alone. Each side
// is within tolerance of the exact rotation by (p + δ)·θ, and a rotation does not grow the first
// one's error, so 3× the tolerance at the largest position involved.
TYPED_TEST(RotaryTest, RotationsCompose) {
  using T = TypeParam;
  Random rng(5);
  const Index steps[][2] = {{1000, -300}, {5, -5},      {-20, 45},         {0, -7},
                            {-7, 0},      {-100, -900}, {123456, -123000}, {1, 1}};
  for (const RotaryConfig& cfg : configs()) {
    const Rotary rope(cfg);
    for (const auto& step : steps) {
      const Index p = step[0], delta = step[1];
      const Index rows = 4;
      const double largest =
          std::max({std::abs(double(p)), std::abs(double(delta)), std::abs(double(p + delta))}) +
          double(rows);
      const double tol = 3 * tolerance<T>(largest);
      const Matrix<T> x = rng.uniform_matrix<T>(rows, 2 * cfg.head_dim);

      Matrix<T> twice = x, once = x;
      rope.apply(twice, p);
      rope.shift(twice, delta);
      rope.apply(once, p + delta);
      EXPECT_MATRIX_NEAR(twice, once, tol) << describe(cfg) << ", p " << p << ", delta " << delta;

      // shift is apply with every row at delta, bit for bit.
      Matrix<T> shifted = x, listed = x;
      rope.shift(shifted, delta);
      rope.apply(listed, std::vector<Index>(std::size_t(rows), delta));
      EXPECT_TRUE(bitwise_equal(shifted, listed)) << describe(cfg) << ", delta " << delta;

      const std::vector<Index> first = {p, -p, p + 3, 1}, second = {delta, delta, -delta, p};
      std::vector<Index> sum;
      for (std::size_t i = 0; i < first.size(); ++i)
        sum.push_back(first[i] + second[i]);
      Matrix<T> lists = x, summed = x;
      rope.apply(lists, first);
      rope.apply(lists, second);
      rope.apply(summed, sum);
      EXPECT_MATRIX_NEAR(lists, summed,
                         3 * tolerance<T>(std::max(max_abs(first), max_abs(sum)) + max_abs(second)))
          << describe(cfg) << ", lists, p " << p << ", delta " << delta;

      Matrix<T> row = x.topRows(1), row_once = x.topRows(1);
      rope.apply(row, p);
      rope.apply(row, delta);
      rope.apply(row_once, p + delta);
      EXPECT_MATRIX_NEAR(row, row_once, tol)
          << describe(cfg) << ", one row, p " << p << ", delta " << delta;
    }
  }
}

TYPED_TEST(RotaryTest, NegativePositionsUndoPositiveOnes) {
  using T = TypeParam;
  Random rng(6);
  for (const RotaryConfig& cfg : configs()) {
    const Rotary rope(cfg);
    const std::vector<Index> forward = {1, 17, 1000, -3, 65536};
    std::vector<Index> backward;
    for (const Index p : forward)
      backward.push_back(-p);
    const Matrix<T> x = rng.uniform_matrix<T>(Index(forward.size()), 3 * cfg.head_dim);
    Matrix<T> y = x;
    rope.apply(y, forward);
    rope.apply(y, backward);
    EXPECT_MATRIX_NEAR(y, x, 2 * tolerance<T>(max_abs(forward))) << describe(cfg);
  }
}

// StreamingLLM: keys rotated at positions 0..n−1, the middle [s, s + e) evicted, the rest moved
// back by e, equal the keys rotated at their new positions s.. directly.
TYPED_TEST(RotaryTest, EvictingTheMiddleRepositionsKeys) {
  using T = TypeParam;
  Random rng(7);
  const Index n = 40, sinks = 4, evicted = 25, kept = n - sinks - evicted;
  for (const RotaryConfig& cfg : configs()) {
    const Rotary rope(cfg);
    const Matrix<T> keys = rng.uniform_matrix<T>(n, 2 * cfg.head_dim);
    Matrix<T> cache = keys;
    rope.apply(cache, 0);
    Matrix<T> compacted(sinks + kept, keys.cols());
    compacted << cache.topRows(sinks), cache.bottomRows(kept);
    rope.shift(compacted.bottomRows(kept), -evicted);
    Matrix<T> direct = keys.topRows(sinks);
    rope.apply(direct, 0);
    Matrix<T> moved = keys.bottomRows(kept);
    rope.apply(moved, sinks);
    EXPECT_TRUE(bitwise_equal(compacted.topRows(sinks), direct)) << describe(cfg);
    EXPECT_MATRIX_NEAR(compacted.bottomRows(kept), moved, 3 * tolerance<T>(double(n)))
        << describe(cfg);
  }
}

TYPED_TEST(RotaryTest, PartialRotaryPassesTheRestThroughBitForBit) {
  using T = TypeParam;
  Random rng(8);
  for (const RotaryConfig& cfg : configs()) {
    const Rotary rope(cfg);
    const Index d = cfg.head_dim, r = rope.rotary_dim(), heads = 3;
    const Matrix<T> x = rng.uniform_matrix<T>(5, heads * d);
    Matrix<T> y = x;
    rope.apply(y, std::vector<Index>{1, -2, 3000, 4, 77});
    for (Index h = 0; h < heads; ++h) {
      EXPECT_TRUE(bitwise_equal(y.middleCols(h * d + r, d - r), x.middleCols(h * d + r, d - r)))
          << describe(cfg) << ", head " << h;
      EXPECT_FALSE(bitwise_equal(y.middleCols(h * d, r), x.middleCols(h * d, r)))
          << describe(cfg) << ", head " << h;
    }
  }
}

TYPED_TEST(RotaryTest, PairsKeepTheirNorm) {
  using T = TypeParam;
  Random rng(9);
  for (const RotaryConfig& cfg : configs()) {
    const Rotary rope(cfg);
    const Index d = cfg.head_dim, r = rope.rotary_dim();
    const std::vector<Index> positions = {1, 2, -5, 999, 31337};
    const Matrix<T> x = rng.uniform_matrix<T>(Index(positions.size()), 2 * d);
    Matrix<T> y = x;
    rope.apply(y, positions);
    // |z| of each pair, got and expected, as matrices for matrix_near: a rotation in Scalar
    // changes the norm by its rounding only (the angle's error does not change it).
    Matrix<double> got(x.rows(), r), expected(x.rows(), r);  // 2 heads of r/2 pairs
    for (Index row = 0; row < x.rows(); ++row) {
      for (Index h = 0; h < 2; ++h) {
        for (Index i = 0; i < r / 2; ++i) {
          const Index a = h * d + pair_first(cfg.layout, i, r);
          const Index b = h * d + pair_second(cfg.layout, i, r);
          got(row, h * r / 2 + i) = std::hypot(double(y(row, a)), double(y(row, b)));
          expected(row, h * r / 2 + i) = std::hypot(double(x(row, a)), double(x(row, b)));
        }
      }
    }
    EXPECT_MATRIX_NEAR(got, expected, tolerance<T>(0)) << describe(cfg);
  }
}

// Each head is rotated as if it were alone, and with the same bits.
TYPED_TEST(RotaryTest, HeadsAreIndependent) {
  using T = TypeParam;
  Random rng(10);
  for (const RotaryConfig& cfg : configs()) {
    const Rotary rope(cfg);
    const Index d = cfg.head_dim, heads = 4;
    const Matrix<T> x = rng.uniform_matrix<T>(3, heads * d);
    Matrix<T> y = x;
    rope.apply(y, 12);
    for (Index h = 0; h < heads; ++h) {
      Matrix<T> alone = x.middleCols(h * d, d);
      rope.apply(alone, 12);
      EXPECT_TRUE(bitwise_equal(y.middleCols(h * d, d), alone)) << describe(cfg) << ", head " << h;
    }
  }
}

// interleaved on features permuted as Hugging Face's LLaMA conversion permutes Wq and Wk equals
// half_split, permuted: the same rotation of the same pairs, bit for bit.
TYPED_TEST(RotaryTest, LayoutsAreTheSameRotationOnPermutedFeatures) {
  using T = TypeParam;
  Random rng(11);
  for (const RotaryConfig& cfg : configs()) {
    if (cfg.layout != RotaryLayout::half_split) continue;
    RotaryConfig other = cfg;
    other.layout = RotaryLayout::interleaved;
    const Rotary half_split(cfg), interleaved(other);
    const Index d = cfg.head_dim, r = half_split.rotary_dim();
    const Matrix<T> x = rng.uniform_matrix<T>(4, 2 * d);
    Matrix<T> y = x, z = interleave_pairs(x, d, r);
    half_split.apply(y, 1234);
    interleaved.apply(z, 1234);
    EXPECT_TRUE(bitwise_equal(z, interleave_pairs(y, d, r))) << describe(cfg);
  }
}

// Linear scaling by f at position f·q is the unscaled rotation at q; NTK scaling is the unscaled
// rotation with base·f^(r/(r − 2)).
TYPED_TEST(RotaryTest, ScalingStretchesPositionsOrTheBase) {
  using T = TypeParam;
  Random rng(12);
  for (const RotaryLayout layout : {RotaryLayout::half_split, RotaryLayout::interleaved}) {
    const Rotary plain(make_config(32, 16, layout));
    const Rotary linear(make_config(32, 16, layout, RotaryScaling::linear(4)));
    const Matrix<T> x = rng.uniform_matrix<T>(3, 64);
    Matrix<T> y = x, z = x;
    plain.apply(y, std::vector<Index>{250, -3, 1000});
    linear.apply(z, std::vector<Index>{1000, -12, 4000});
    EXPECT_MATRIX_NEAR(z, y, 2 * tolerance<T>(4000));

    const RotaryConfig ntk_cfg = make_config(32, 16, layout, RotaryScaling::ntk(8));
    const double scaled_base = 10000 * std::pow(8.0, 16.0 / 14.0);
    EXPECT_NEAR(ntk_cfg.scaled_base(), scaled_base,
                4 * std::numeric_limits<double>::epsilon() * scaled_base);
    const Rotary ntk(ntk_cfg);
    const Rotary rebased(make_config(32, 16, layout, {}, ntk_cfg.scaled_base()));
    EXPECT_EQ(ntk.inverse_frequencies(), rebased.inverse_frequencies());
    Matrix<T> u = x, v = x;
    ntk.apply(u, 777);
    rebased.apply(v, 777);
    EXPECT_TRUE(bitwise_equal(u, v));
    // θ_i·f^(−2i/(r − 2)): the highest frequency (i = 0) is kept, the lowest (i = r/2 − 1) is
    // divided by the factor, as position interpolation would divide it.
    EXPECT_EQ(ntk.inverse_frequencies().front(), 1.0);
    const double lowest_stretch =
        plain.inverse_frequencies().back() / ntk.inverse_frequencies().back();
    EXPECT_NEAR(lowest_stretch, 8.0, 8 * 8.0 * std::numeric_limits<double>::epsilon());
  }
}

// SelfAttention's use: the Q and K blocks of a fused [Q | K | V] projection rotated in place,
// together or one at a time, and a strided view; the other columns are never written.
TYPED_TEST(RotaryTest, RotatesColumnBlocksOfAFusedProjection) {
  using T = TypeParam;
  Random rng(13);
  const Index d = 16, heads = 4, kv_heads = 2, n = 5;
  const Rotary rope(make_config(d, 8, RotaryLayout::interleaved));
  const Matrix<T> qkv = rng.uniform_matrix<T>(n, (heads + 2 * kv_heads) * d);
  Matrix<T> q = qkv.leftCols(heads * d), k = qkv.middleCols(heads * d, kv_heads * d);
  rope.apply(q, 100);
  rope.apply(k, 100);

  Matrix<T> together = qkv;
  rope.apply(together.leftCols((heads + kv_heads) * d), 100);
  EXPECT_TRUE(bitwise_equal(together.leftCols(heads * d), q));
  EXPECT_TRUE(bitwise_equal(together.middleCols(heads * d, kv_heads * d), k));
  EXPECT_TRUE(bitwise_equal(together.rightCols(kv_heads * d), qkv.rightCols(kv_heads * d)));

  Matrix<T> keys_only = qkv;
  rope.apply(keys_only.middleCols(heads * d, kv_heads * d), 100);
  EXPECT_TRUE(bitwise_equal(keys_only.leftCols(heads * d), qkv.leftCols(heads * d)));
  EXPECT_TRUE(bitwise_equal(keys_only.middleCols(heads * d, kv_heads * d), k));
  EXPECT_TRUE(bitwise_equal(keys_only.rightCols(kv_heads * d), qkv.rightCols(kv_heads * d)));

  // A Map over the same storage with its row stride, and single rows (a decode step).
  Matrix<T> mapped = qkv;
  attn::MatrixView<T> view(mapped.data() + heads * d, n, kv_heads * d,
                           Eigen::OuterStride<>(mapped.cols()));
  rope.apply(view, 100);
  EXPECT_TRUE(bitwise_equal(mapped, keys_only));
  Matrix<T> rows = qkv;
  for (Index i = 0; i < n; ++i)
    rope.apply(rows.row(i).segment(heads * d, kv_heads * d), 100 + i);
  EXPECT_TRUE(bitwise_equal(rows, keys_only));
}

TYPED_TEST(RotaryTest, EmptyInputsAreNoOps) {
  using T = TypeParam;
  const Rotary rope(make_config(8));
  Matrix<T> none(0, 16), no_heads(3, 0);
  rope.apply(none, 5);
  rope.apply(none, std::vector<Index>{});
  rope.apply(none, nullptr, 0);
  rope.apply(no_heads, 5);
  rope.apply(no_heads, std::vector<Index>{1, 2, 3});
  rope.shift(none, 5);
  rope.shift(no_heads, -5);
  EXPECT_EQ(none.rows(), 0);
  EXPECT_EQ(no_heads.cols(), 0);
}

TYPED_TEST(RotaryTest, ApplyAllocatesNothing) {
  using T = TypeParam;
  if (!ATTN_TEST_COUNTS_ALLOCATIONS) GTEST_SKIP() << "allocations are not counted under TSan";
  const Rotary rope(make_config(256, 200, RotaryLayout::half_split, RotaryScaling::ntk(4)));
  Matrix<T> x = Matrix<T>::Random(7, 3 * 256);
  const std::vector<Index> positions = {1, 2, 3, 4, 5, 6, -7};
  const long counted = attn_test::count_allocations([&] {
    rope.apply(x, 1000);
    rope.apply(x.middleCols(256, 512), -3);
    rope.apply(x, positions);
    rope.apply(x, positions.data(), Index(positions.size()));
    rope.shift(x, -1000);
    rope.shift(x.middleCols(0, 256).bottomRows(2), 12);
  });
  EXPECT_EQ(counted, 0);
}

// ---------------------------------------------------------------------------------------------
// Construction and accessors

TEST(Rotary, AccessorsAndInverseFrequencies) {
  const Rotary full(make_config(64));
  EXPECT_EQ(full.head_dim(), 64);
  EXPECT_EQ(full.rotary_dim(), 64);
  EXPECT_EQ(full.config().rotary_dim, 64);  // 0 resolved
  EXPECT_EQ(full.config().base, 10000);
  ASSERT_EQ(full.inverse_frequencies().size(), 32u);
  for (std::size_t i = 0; i < 32; ++i) {
    const double expected = std::pow(10000.0, -2.0 * double(i) / 64.0);
    EXPECT_NEAR(full.inverse_frequencies()[i], expected,
                4 * std::numeric_limits<double>::epsilon() * expected)
        << "i = " << i;
  }
  EXPECT_EQ(full.inverse_frequencies()[0], 1.0);

  const Rotary partial(make_config(48, 16, RotaryLayout::interleaved, RotaryScaling::linear(4)));
  EXPECT_EQ(partial.rotary_dim(), 16);
  EXPECT_EQ(partial.config().layout, RotaryLayout::interleaved);
  EXPECT_EQ(partial.config().scaling.kind, Kind::linear);
  ASSERT_EQ(partial.inverse_frequencies().size(), 8u);
  for (std::size_t i = 0; i < 8; ++i) {
    const double expected = std::pow(10000.0, -2.0 * double(i) / 16.0) / 4;
    EXPECT_NEAR(partial.inverse_frequencies()[i], expected,
                4 * std::numeric_limits<double>::epsilon() * expected)
        << "i = " << i;
  }

  // The aggregate form and the scaling factories.
  const RotaryConfig aggregate{/*head_dim*/ 8, /*rotary_dim*/ 4, /*base*/ 100,
                               RotaryLayout::interleaved, RotaryScaling::ntk(2)};
  EXPECT_EQ(aggregate.rotated_dim(), 4);
  EXPECT_EQ(Rotary(aggregate).inverse_frequencies().size(), 2u);
  EXPECT_EQ(RotaryScaling::linear(3).kind, Kind::linear);
  EXPECT_EQ(RotaryScaling::ntk(3).factor, 3);
  EXPECT_EQ(make_config(6).scaled_base(), 10000);
}

TEST(Rotary, InvalidConfigsThrow) {
  const double inf = std::numeric_limits<double>::infinity();
  const double nan = std::numeric_limits<double>::quiet_NaN();
  EXPECT_SHAPE_ERROR((void)Rotary(make_config(0)), "Rotary", "head_dim is 0", ">= 1");
  EXPECT_SHAPE_ERROR((void)Rotary(make_config(-4)), "head_dim is -4");
  EXPECT_SHAPE_ERROR((void)Rotary(make_config(7)), "rotary_dim is 7", "(head_dim)", "even");
  EXPECT_SHAPE_ERROR((void)Rotary(make_config(8, 3)), "rotary_dim is 3", "even");
  EXPECT_SHAPE_ERROR((void)Rotary(make_config(8, 10)), "rotary_dim is 10", "head_dim 8");
  EXPECT_SHAPE_ERROR((void)Rotary(make_config(8, -2)), "rotary_dim is -2");
  for (const double base : {0.0, -10.0, inf, nan}) {
    EXPECT_SHAPE_ERROR((void)Rotary(make_config(8, 0, RotaryLayout::half_split, {}, base)),
                       "base is", "finite and > 0");
  }
  for (const Kind kind : {Kind::linear, Kind::ntk}) {
    for (const double factor : {0.0, -2.0, inf, nan}) {
      EXPECT_SHAPE_ERROR(
          (void)Rotary(make_config(8, 0, RotaryLayout::half_split, RotaryScaling{kind, factor})),
          "scaling.factor is", "finite and > 0");
    }
  }
  EXPECT_SHAPE_ERROR(
      (void)Rotary(make_config(8, 0, RotaryLayout::half_split, RotaryScaling{Kind::none, 2})),
      "scaling.factor is 2", "kind none", "expected 1");
  EXPECT_SHAPE_ERROR(
      (void)Rotary(make_config(8, 2, RotaryLayout::half_split, RotaryScaling::ntk(2))),
      "rotary_dim is 2", "> 2 for ntk");
  EXPECT_SHAPE_ERROR(
      (void)Rotary(make_config(8, 4, RotaryLayout::half_split, RotaryScaling::ntk(1e300))),
      "ntk scaling", "overflows");
  // The boundaries are valid: rotary_dim = head_dim, 2 without ntk, linear by 1, any base > 0.
  EXPECT_NO_THROW((void)Rotary(make_config(8, 8)));
  EXPECT_NO_THROW((void)Rotary(make_config(8, 2)));
  EXPECT_NO_THROW(
      (void)Rotary(make_config(8, 0, RotaryLayout::half_split, RotaryScaling::linear(1))));
  EXPECT_NO_THROW((void)Rotary(make_config(8, 0, RotaryLayout::half_split, {}, 0.5)));
}

TYPED_TEST(RotaryTest, BadShapesThrowAndLeaveXUntouched) {
  using T = TypeParam;
  const Rotary rope(make_config(8));
  const Matrix<T> x = Matrix<T>::Random(3, 20);
  Matrix<T> y = x;
  EXPECT_SHAPE_ERROR(rope.apply(y, 1), "Rotary::apply", "x.cols() is 20", "multiple of head_dim 8");
  EXPECT_SHAPE_ERROR(rope.apply(y, std::vector<Index>{1, 2, 3}), "x.cols() is 20");
  EXPECT_SHAPE_ERROR(rope.shift(y, -4), "Rotary::shift", "x.cols() is 20",
                     "multiple of head_dim 8");
  Matrix<T> z = x.leftCols(16);
  EXPECT_SHAPE_ERROR(rope.apply(z, std::vector<Index>{1, 2}), "positions has 2 entries",
                     "one per row of x (3)");
  EXPECT_SHAPE_ERROR(rope.apply(z, std::vector<Index>{1, 2, 3, 4}), "positions has 4 entries");
  const Index positions[] = {1, 2, 3};
  EXPECT_SHAPE_ERROR(rope.apply(z, positions, 2), "positions has 2 entries");
  EXPECT_SHAPE_ERROR(rope.apply(z, nullptr, 3), "positions is null");
  EXPECT_TRUE(bitwise_equal(y, x));
  EXPECT_TRUE(bitwise_equal(z, x.leftCols(16)));
}

// ---- SelfAttention with rotary embeddings (MultiHeadConfig::rotary): against the fp64 layer
// with the reference rotation applied to its projected queries and keys, each row at its
// absolute position.

/// The reference layer over `tokens` with Q and K rotated at `positions` (one per token): the
/// outputs of rows `query_rows` (indices into tokens) attending over rows `key_rows` under a
/// causal mask on those lists' order (a query sees the keys listed up to its own token).
attn_test::MatrixD reference_rotary_layer(const attn_test::MatrixD& tokens,
                                          const attn_test::ReferenceWeights& w,
                                          const attn::MultiHeadConfig& cfg,
                                          const std::vector<Index>& positions,
                                          const std::vector<Index>& query_rows,
                                          const std::vector<Index>& key_rows) {
  const RotaryConfig rotary = cfg.rotary_config();
  const Matrix<double> q = reference_rotary(
      attn_test::reference_linear(tokens, w.q_weight, w.q_bias), rotary, positions);
  const Matrix<double> k = reference_rotary(
      attn_test::reference_linear(tokens, w.k_weight, w.k_bias), rotary, positions);
  const Matrix<double> v = attn_test::reference_linear(tokens, w.v_weight, w.v_bias);
  Matrix<double> qs(Index(query_rows.size()), q.cols()), ks(Index(key_rows.size()), k.cols()),
      vs(Index(key_rows.size()), v.cols());
  for (std::size_t i = 0; i < query_rows.size(); ++i)
    qs.row(Index(i)) = q.row(query_rows[i]);
  for (std::size_t j = 0; j < key_rows.size(); ++j) {
    ks.row(Index(j)) = k.row(key_rows[j]);
    vs.row(Index(j)) = v.row(key_rows[j]);
  }
  attn::Matrix<bool> keep(qs.rows(), ks.rows());
  for (Index i = 0; i < qs.rows(); ++i) {
    for (Index j = 0; j < ks.rows(); ++j)
      keep(i, j) = key_rows[std::size_t(j)] <= query_rows[std::size_t(i)];
  }
  const attn_test::MatrixD heads = attn_test::reference_multi_head(
      qs, ks, vs, cfg.num_heads, cfg.kv_heads(), attn_test::ReferenceMask::keep(keep));
  return attn_test::reference_linear(heads, w.out_weight, w.out_bias);
}

template <typename T>
attn::MultiHeadConfig rotary_layer_config(RotaryLayout layout, Index rotary_dim) {
  attn::MultiHeadConfig cfg{/*model_dim*/ 64, /*num_heads*/ 4, /*num_kv_heads*/ 2};
  RotaryConfig rotary;  // head_dim 0: the layer's (16)
  rotary.rotary_dim = rotary_dim;
  rotary.layout = layout;
  rotary.base = 500;  // fast rotations, so that a wrong position shows
  cfg.rotary = rotary;
  return cfg;
}

TYPED_TEST(RotaryTest, SelfAttentionRotatesQueriesAndKeysAtTheirPositions) {
  using T = TypeParam;
  Random rng(3101);
  for (const auto& [layout, rotary_dim] : {std::pair(RotaryLayout::half_split, Index(0)),
                                           std::pair(RotaryLayout::interleaved, Index(8))}) {
    const attn::MultiHeadConfig cfg = rotary_layer_config<T>(layout, rotary_dim);
    const auto w = attn_test::random_weights<T>(cfg, rng);
    const attn::SelfAttention<T> layer(cfg, w);
    const attn_test::ReferenceWeights rw = attn_test::reference_weights(w);
    const Index length = 40;
    const Matrix<T> x = rng.uniform_matrix<T>(length, cfg.model_dim);
    const attn_test::MatrixD xd = x.template cast<double>();
    const std::vector<Index> all = consecutive(0, length);
    const attn_test::MatrixD expected = reference_rotary_layer(xd, rw, cfg, all, all, all);
    const double tol = attn_test::layer_tolerance<T>(cfg.model_dim, cfg.model_dim, 16, length);

    // One causal pass, and the same rows as a prefill chunk then steps through a KVCache and
    // through a page of a PagedKVCache.
    EXPECT_TRUE(attn_test::matrix_near(layer(x, attn::Mask::causal()), expected, tol));
    attn::KVCache<T> cache = layer.make_cache(length);
    attn::PagedKVCache<T> pool = layer.make_paged_cache(4, 16);
    const attn::SequenceId id = pool.create();
    Matrix<T> cached(length, cfg.model_dim), paged(length, cfg.model_dim);
    cached.topRows(25) = layer(x.topRows(25), cache);
    paged.topRows(25) = layer(x.topRows(25), pool, id);
    for (Index i = 25; i < length; ++i) {
      cached.row(i) = layer(x.row(i), cache);
      paged.row(i) = layer(x.row(i), pool, id);
    }
    EXPECT_TRUE(attn_test::matrix_near(cached, expected, tol));
    EXPECT_TRUE(attn_test::matrix_near(paged, expected, tol));

    // Packed sequences each start at position 0: the same as separate calls.
    const Matrix<T> packed = layer(x, std::vector<Index>{15, 25}, attn::Mask::causal());
    EXPECT_TRUE(
        attn_test::matrix_near(packed.topRows(15),
                               reference_rotary_layer(xd.topRows(15), rw, cfg, consecutive(0, 15),
                                                      consecutive(0, 15), consecutive(0, 15)),
                               tol));
    EXPECT_TRUE(attn_test::matrix_near(
        packed.bottomRows(25),
        reference_rotary_layer(xd.bottomRows(25), rw, cfg, consecutive(0, 25), consecutive(0, 25),
                               consecutive(0, 25)),
        tol));
  }
}

// StreamingLLM with a rotary layer: after evict(sinks, window), keys keep the rotation of their
// absolute positions and new queries are rotated at position(id), the absolute position of the
// next token; each step equals the reference over exactly the kept rows.
TYPED_TEST(RotaryTest, EvictionKeepsAbsolutePositions) {
  using T = TypeParam;
  Random rng(3102);
  const attn::MultiHeadConfig cfg = rotary_layer_config<T>(RotaryLayout::half_split, 0);
  const auto w = attn_test::random_weights<T>(cfg, rng);
  const attn::SelfAttention<T> layer(cfg, w);
  const attn_test::ReferenceWeights rw = attn_test::reference_weights(w);
  const Index length = 70, sinks = 4, window = 20;
  const Matrix<T> x = rng.uniform_matrix<T>(length, cfg.model_dim);
  const attn_test::MatrixD xd = x.template cast<double>();
  attn::PagedKVCache<T> pool = layer.make_paged_cache(8, 16);
  const attn::SequenceId id = pool.create();
  layer(x.topRows(50), pool, id);
  pool.evict(id, sinks, window);
  ASSERT_EQ(pool.size(id), sinks + window);
  ASSERT_EQ(pool.position(id), 50);
  std::vector<Index> kept = consecutive(0, sinks);
  for (Index j = 50 - window; j < 50; ++j)
    kept.push_back(j);
  const double tol = attn_test::layer_tolerance<T>(cfg.model_dim, cfg.model_dim, 16, length);
  for (Index i = 50; i < length; ++i) {
    kept.push_back(i);
    const Matrix<T> got = layer(x.row(i), pool, id);
    EXPECT_TRUE(attn_test::matrix_near(
        got, reference_rotary_layer(xd, rw, cfg, consecutive(0, length), {i}, kept), tol))
        << "step at position " << i;
  }
  EXPECT_EQ(pool.position(id), length);
  EXPECT_EQ(pool.size(id), sinks + window + (length - 50));
}

TEST(Rotary, LayersCheckTheirRotaryConfig) {
  Random rng(3103);
  attn::MultiHeadConfig cfg{/*model_dim*/ 32, /*num_heads*/ 2};
  const auto w = attn_test::random_weights<float>(cfg, rng);
  RotaryConfig rotary;
  rotary.head_dim = 8;  // the layer's is 16
  cfg.rotary = rotary;
  EXPECT_SHAPE_ERROR(attn::SelfAttention<float>(cfg, w), "SelfAttention", "rotary.head_dim is 8",
                     "16");
  rotary.head_dim = 0;
  rotary.rotary_dim = 5;
  cfg.rotary = rotary;
  EXPECT_SHAPE_ERROR(attn::SelfAttention<float>(cfg, w), "SelfAttention", "rotary_dim is 5");
  rotary.rotary_dim = 0;
  cfg.rotary = rotary;
  EXPECT_SHAPE_ERROR(attn::CrossAttention<float>(cfg, w), "CrossAttention", "rotary");
  EXPECT_NO_THROW(attn::SelfAttention<float>(cfg, w));
}

}  // namespace
