// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors
#pragma once

/// \file support/float_mode.hpp
/// What the tests may expect of NaN under the floating-point flags they were compiled with.
/// .ci/run builds some tests with -ffast-math, whose -ffinite-math-only lets the compiler assume
/// that no value is NaN or infinite: std::isnan(x) may become false and NaN propagation is then
/// outside attn's contract (README, "Compilers, flags and CPUs"). The checks themselves must still
/// see a NaN where one appears, so they look at the bits.

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>

namespace attn_test {

/// x is NaN, by its bits: right under any flags.
inline bool is_nan_bits(double x) {
  std::uint64_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  return (bits & ~(std::uint64_t(1) << 63)) > 0x7ff0000000000000ull;
}

/// x is ±∞, by its bits.
inline bool is_infinity_bits(double x) {
  std::uint64_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  return (bits & ~(std::uint64_t(1) << 63)) == 0x7ff0000000000000ull;
}

}  // namespace attn_test

#if defined(__FINITE_MATH_ONLY__) && __FINITE_MATH_ONLY__
/// Skips a test of NaN inputs in a build that told the compiler there are none.
#define ATTN_TEST_SKIP_UNDER_FINITE_MATH()                                                        \
  GTEST_SKIP() << "built with -ffinite-math-only (-ffast-math): the compiler may assume no NaN, " \
                  "so NaN inputs are outside attn's contract"
#else
#define ATTN_TEST_SKIP_UNDER_FINITE_MATH() static_cast<void>(0)
#endif
