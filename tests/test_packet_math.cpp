// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors

// The kernel's packet-level building blocks, against the standard library and Eigen: the
// softmax exponential (its own polynomial for float packets) over its whole domain and at its
// edges, lane by lane; the packet transpose used for every query and output block, on ragged
// shapes; the converting loads of 16- and 8-bit storage, for every value; and the four-way sum.

#include <attn/detail/convert.hpp>
#include <attn/detail/packet_math.hpp>
#include <attn/detail/register_tile.hpp>
#include <gtest/gtest.h>

// The headers' internal macros stay inside them: a user's code never sees one.
#if defined(ATTN_UNROLL) || defined(ATTN_DETAIL_UNROLL)
#error "attn's headers leak an internal macro (ATTN_UNROLL / ATTN_DETAIL_UNROLL)"
#endif

#include <cmath>
#include <cstdint>
#include <iterator>
#include <limits>
#include <type_traits>
#include <vector>

#include "support/float_mode.hpp"

// Packet types carry alignment attributes that GCC reports as ignored in template arguments (as
// detail/packet_math.hpp explains).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wignored-attributes"
#endif

namespace {

using attn::Index;
namespace packet = Eigen::internal;

template <typename Scalar>
class PacketMathTest : public ::testing::Test {};
using Scalars = ::testing::Types<float, double>;
TYPED_TEST_SUITE(PacketMathTest, Scalars);

// The ways softmax_exp computes: what this build uses by default, and for float packets the two
// generic ways of rounding n, which a build may otherwise not run: by integer conversion (the
// fallback for compilers without an optimisation barrier) and by the magic number (the default
// except where AVX-512's own instructions replace it).
enum class ExpVariant { by_default, by_conversion, by_magic_number };

// softmax_exp on every lane of a packet filled from `x` (padded with `pad`).
template <typename Scalar>
std::vector<Scalar> softmax_exp_lanes(const std::vector<Scalar>& x,
                                      ExpVariant variant = ExpVariant::by_default, Scalar pad = 0) {
  using Packet = typename attn::detail::PacketTraits<Scalar>::Packet;
  constexpr Index size = attn::detail::PacketTraits<Scalar>::size;
  std::vector<Scalar> in(x), out(x.size() + size);
  in.resize((x.size() + size - 1) / size * size, pad);
  for (std::size_t i = 0; i < in.size(); i += size) {
    const Packet lanes = packet::ploadu<Packet>(in.data() + i);
    Packet result = attn::detail::softmax_exp(lanes);
    if constexpr (std::is_same_v<Scalar, float> &&
                  attn::detail::has_integer_packet<Packet>::value) {
      if (variant == ExpVariant::by_conversion)
        result = attn::detail::softmax_exp_float<Packet, true>(lanes);
      if (variant == ExpVariant::by_magic_number)
        result = attn::detail::softmax_exp_float<Packet, false>(lanes);
    }
    packet::pstoreu(out.data() + i, result);
  }
  out.resize(x.size());
  return out;
}

// The variants softmax_exp has for Scalar: three for float, one for double.
template <typename Scalar>
std::vector<ExpVariant> exp_variants() {
  if (std::is_same_v<Scalar, float>)
    return {ExpVariant::by_default, ExpVariant::by_conversion, ExpVariant::by_magic_number};
  return {ExpVariant::by_default};
}

const char* variant_name(ExpVariant variant) {
  switch (variant) {
    case ExpVariant::by_conversion:
      return "rounding by conversion";
    case ExpVariant::by_magic_number:
      return "rounding by the magic number";
    default:
      return "the build's default";
  }
}

template <typename Scalar>
Scalar log_smallest_normal() {
  return std::log(std::numeric_limits<Scalar>::min());
}

// Over the whole range where the result is normal, the relative error against exp in double or
// long double stays within 2 ulps: float's polynomial is within 2·10⁻⁸ of e^r, its Horner
// evaluation and the final scaling add about one rounding each (measured maximum 1.0 ulp); double
// takes Eigen's pexp. A wrong coefficient, exponent or reduction constant errs by far more.
// Under -fassociative-math (part of -ffast-math) the compiler may merge the two-part reduction
// x − n·ln2_hi − n·ln2_lo into x − n·ln2 rounded once, an error of up to |x| ulps in the result:
// what rounding x itself already costs (e^x's condition number is |x|), and so what the kernel's
// tolerances allow for its logits. Beyond that, the same defects still show.
TYPED_TEST(PacketMathTest, SoftmaxExpIsWithinTwoUlpsOverTheNormalRange) {
  using Scalar = TypeParam;
  // Within 0.01 of the edge the result is either the smallest normals or 0, depending on how the
  // edge rounds (the next test covers what lies beyond it).
  const Scalar low = log_smallest_normal<Scalar>() + Scalar(0.01);
  std::vector<Scalar> x;
  const int steps = 200000;
  for (int i = 0; i <= steps; ++i)
    x.push_back(low * Scalar(i) / Scalar(steps));
  for (Scalar near_zero : {Scalar(-1e-30), Scalar(-0.0)})
    x.push_back(near_zero);
  for (const ExpVariant variant : exp_variants<Scalar>()) {
    SCOPED_TRACE(variant_name(variant));
    const std::vector<Scalar> got = softmax_exp_lanes(x, variant);
    const long double ulp = std::numeric_limits<Scalar>::epsilon();
    long double worst = 0;
    Scalar worst_x = 0;
    for (std::size_t i = 0; i < x.size(); ++i) {
      const long double expected = std::exp(static_cast<long double>(x[i]));
#if defined(__ASSOCIATIVE_MATH__) || defined(__FAST_MATH__)
      const long double allowed = 2.0L + std::fabs(static_cast<long double>(x[i]));
#else
      const long double allowed = 2.0L;
#endif
      const long double error = std::fabs(got[i] / expected - 1) / ulp / allowed;
      if (error > worst) worst = error, worst_x = x[i];
    }
    EXPECT_LE(worst, 1.0L) << "worst relative error " << static_cast<double>(worst)
                           << " of what is allowed at x = " << worst_x;
  }
}

TYPED_TEST(PacketMathTest, SoftmaxExpIsExactAtZeroAndZeroBelowTheNormalRange) {
  using Scalar = TypeParam;
  constexpr Scalar infinity = std::numeric_limits<Scalar>::infinity();
  const Scalar low = log_smallest_normal<Scalar>();
  const std::vector<Scalar> x = {Scalar(0), -infinity, std::nextafter(low, -infinity) - Scalar(1),
                                 Scalar(-1e4), -std::numeric_limits<Scalar>::max()};
  for (const ExpVariant variant : exp_variants<Scalar>()) {
    const std::vector<Scalar> got = softmax_exp_lanes(x, variant);
    EXPECT_EQ(got[0], Scalar(1)) << variant_name(variant);
    for (std::size_t i = 1; i < x.size(); ++i)
      EXPECT_EQ(got[i], Scalar(0)) << "x = " << x[i] << ", " << variant_name(variant);
  }
}

TYPED_TEST(PacketMathTest, SoftmaxExpKeepsNaNToItsOwnLane) {
  ATTN_TEST_SKIP_UNDER_FINITE_MATH();
  using Scalar = TypeParam;
  constexpr Index size = attn::detail::PacketTraits<Scalar>::size;
  const Scalar nan = std::numeric_limits<Scalar>::quiet_NaN();
  std::vector<Scalar> x(2 * size, Scalar(-1));
  x[0] = nan;
  x[size + size / 2] = nan;
  const std::vector<Scalar> got = softmax_exp_lanes(x);
  for (std::size_t i = 0; i < x.size(); ++i) {
    if (std::isnan(x[i])) {
      EXPECT_TRUE(std::isnan(got[i])) << "lane " << i;
    } else {
      EXPECT_NEAR(got[i], std::exp(Scalar(-1)), 2 * std::numeric_limits<Scalar>::epsilon())
          << "lane " << i;
    }
  }
}

// The bit tests the kernel uses where -ffinite-math-only may fold std::isnan and comparisons
// with ±∞ (this file is also built with -ffast-math by .ci/portability), and any_lane on the
// all-ones masks of packet comparisons, which are NaN when read as numbers.
TYPED_TEST(PacketMathTest, BitTestsTellNaNAndInfinitiesUnderAnyFlags) {
  using Scalar = TypeParam;
  using Packet = typename attn::detail::PacketTraits<Scalar>::Packet;
  using limits = std::numeric_limits<Scalar>;
  namespace d = attn::detail;
  const Scalar values[] = {
      limits::quiet_NaN(), -limits::quiet_NaN(), limits::infinity(),   -limits::infinity(),
      limits::max(),       -limits::max(),       limits::denorm_min(), Scalar(0),
      Scalar(-0.0)};
  const bool nan[] = {true, true, false, false, false, false, false, false, false};
  const bool finite[] = {false, false, false, false, true, true, true, true, true};
  for (std::size_t i = 0; i < std::size(values); ++i) {
    const Scalar x = values[i];
    EXPECT_EQ(d::is_nan(x), nan[i]) << "value " << i;
    EXPECT_EQ(d::is_finite(x), finite[i]) << "value " << i;
    EXPECT_EQ(d::is_plus_infinity(x), i == 2) << "value " << i;
    EXPECT_EQ(d::is_minus_infinity(x), i == 3) << "value " << i;
  }
  attn::Matrix<Scalar> block = attn::Matrix<Scalar>::Ones(3, 5);
  EXPECT_TRUE(d::all_finite(block.data(), Index(5), Index(3), Index(4)));
  block(2, 4) = limits::infinity();  // outside the 3 × 4 block that is read
  EXPECT_TRUE(d::all_finite(block.data(), Index(5), Index(3), Index(4)));
  block(1, 2) = -limits::infinity();
  EXPECT_FALSE(d::all_finite(block.data(), Index(5), Index(3), Index(4)));
  block(1, 2) = limits::quiet_NaN();
  EXPECT_FALSE(d::all_finite(block.data(), Index(5), Index(3), Index(4)));

  constexpr Index size = attn::detail::PacketTraits<Scalar>::size;
  std::vector<Scalar> lanes(size, Scalar(1));
  const Packet one = packet::pset1<Packet>(Scalar(1));
  EXPECT_FALSE(d::any_lane(packet::pcmp_lt(packet::ploadu<Packet>(lanes.data()), one)));
  for (Index lane = 0; lane < size; ++lane) {
    std::vector<Scalar> probe(lanes);
    probe[std::size_t(lane)] = Scalar(0.5);
    EXPECT_TRUE(d::any_lane(packet::pcmp_lt(packet::ploadu<Packet>(probe.data()), one)))
        << "lane " << lane;
  }
}

// Every shape around the packet size, both edges ragged or whole, against Eigen's transpose times
// the same scale (one multiplication per element either way, so equal to the bit).
TYPED_TEST(PacketMathTest, TransposeScaledEqualsEigenOnRaggedShapes) {
  using Scalar = TypeParam;
  using Matrix = attn::Matrix<Scalar>;
  constexpr Index size = attn::detail::PacketTraits<Scalar>::size;
  const Scalar scale = Scalar(0.375);
  for (const Index rows : {Index(1), size - 1, size, size + 1, 2 * size + 3, Index(64)}) {
    for (const Index cols : {Index(1), size - 1, size, size + 1, 3 * size + 1, Index(64)}) {
      if (rows == 0 || cols == 0) continue;
      const Matrix src = Matrix::Random(rows, cols + 5);  // a row stride wider than the block
      Matrix dst = Matrix::Constant(cols, rows + 3, Scalar(7));
      attn::detail::transpose_scaled(src.data(), src.outerStride(), rows, cols, scale, dst.data(),
                                     dst.outerStride());
      const Matrix expected = scale * src.leftCols(cols).transpose();
      EXPECT_EQ(dst.leftCols(rows), expected) << rows << " x " << cols;
      EXPECT_TRUE((dst.rightCols(3).array() == Scalar(7)).all())
          << rows << " x " << cols << ": wrote past the block";
    }
  }
}

// load_as converts stored elements in registers: on this build's native path (F16C, AVX-512,
// AVX2, SSE, NEON) or the portable one. Every half, bfloat16 and int8 value (zeros, subnormals,
// normals, infinities, NaN), loaded from aligned and unaligned addresses (offset 0 and 1), must
// come out as the scalar conversion gives it, bit for bit (NaN as NaN).
template <typename Element>
void expect_load_as_converts(const std::vector<Element>& elements) {
  using Packet = typename attn::detail::PacketTraits<float>::Packet;
  constexpr Index size = attn::detail::PacketTraits<float>::size;
  std::vector<Element> in(elements);
  in.resize((in.size() + size - 1) / size * size + 1, elements.front());
  std::vector<float> out(static_cast<std::size_t>(size));
  for (const std::size_t offset : {std::size_t(0), std::size_t(1)}) {
    for (std::size_t i = offset; i + std::size_t(size) <= in.size(); i += std::size_t(size)) {
      packet::pstoreu(out.data(), attn::detail::load_as<Packet>(in.data() + i));
      for (Index lane = 0; lane < size; ++lane) {
        const float expected = attn::detail::to_scalar<float>(in[i + std::size_t(lane)]);
        const float got = out[std::size_t(lane)];
        if (attn::detail::is_nan(expected)) {
          ASSERT_TRUE(attn::detail::is_nan(got)) << "element " << i + std::size_t(lane);
        } else {
          ASSERT_EQ(attn::detail::FloatBits<float>::of(got),
                    attn::detail::FloatBits<float>::of(expected))
              << "element " << i + std::size_t(lane) << ": " << got << " for " << expected << " ("
              << attn::detail::float_conversion_path<Element>() << " path)";
        }
      }
    }
  }
}

TEST(PacketConversion, LoadAsConvertsEveryHalfInt8AndBfloat16Exactly) {
  std::vector<attn::half> halves;
  std::vector<attn::bfloat16> bfloats;
  for (std::uint32_t bits = 0; bits < 65536; ++bits) {
    const std::uint16_t pattern = std::uint16_t(bits);
    halves.push_back(Eigen::half_impl::raw_uint16_to_half(pattern));
    bfloats.push_back(Eigen::bfloat16_impl::raw_uint16_to_bfloat16(pattern));
  }
  std::vector<std::int8_t> bytes;
  for (int b = -128; b < 128; ++b)
    bytes.push_back(std::int8_t(b));
  expect_load_as_converts(halves);
  expect_load_as_converts(bfloats);
  expect_load_as_converts(bytes);
}

// sum_lanes4 reduces four packets at once; on small integers every order of the sums is exact.
TYPED_TEST(PacketMathTest, SumLanesOfFourEqualsFourSums) {
  using Scalar = TypeParam;
  using Packet = typename attn::detail::PacketTraits<Scalar>::Packet;
  constexpr Index size = attn::detail::PacketTraits<Scalar>::size;
  std::vector<Scalar> lanes(std::size_t(4 * size));
  for (std::size_t i = 0; i < lanes.size(); ++i)
    lanes[i] = Scalar(int(i * 7 % 23) - 11);
  Scalar got[4];
  attn::detail::simd::sum_lanes4(packet::ploadu<Packet>(lanes.data()),
                                 packet::ploadu<Packet>(lanes.data() + size),
                                 packet::ploadu<Packet>(lanes.data() + 2 * size),
                                 packet::ploadu<Packet>(lanes.data() + 3 * size), got);
  for (Index r = 0; r < 4; ++r) {
    Scalar expected = 0;
    for (Index lane = 0; lane < size; ++lane)
      expected += lanes[std::size_t(r * size + lane)];
    EXPECT_EQ(got[r], expected) << "packet " << r;
  }
}

}  // namespace
