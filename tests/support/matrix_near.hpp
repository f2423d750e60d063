// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors
#pragma once

// expect_matrix_near: shapes first, then the worst element with its position.

#include <gtest/gtest.h>

#include <attn/types.hpp>
#include <cmath>
#include <cstring>
#include <limits>
#include <sstream>

#include "float_mode.hpp"

namespace attn_test {

/// Passes if a and b have the same shape and |a − b| ≤ tol · max(1, |b|) everywhere (a mixed
/// absolute/relative bound: attention outputs are convex combinations of values, so O(1) entries
/// dominate). Equal infinities and NaN at the same place count as equal. On failure, reports the
/// worst element, its position, and both values.
template <typename A, typename B>
::testing::AssertionResult matrix_near(const Eigen::MatrixBase<A>& a, const Eigen::MatrixBase<B>& b,
                                       double tol) {
  if (a.rows() != b.rows() || a.cols() != b.cols()) {
    return ::testing::AssertionFailure() << "shapes differ: " << a.rows() << "x" << a.cols()
                                         << " vs expected " << b.rows() << "x" << b.cols();
  }
  double worst = 0;
  Eigen::Index worst_r = -1, worst_c = -1;
  for (Eigen::Index r = 0; r < a.rows(); ++r) {
    for (Eigen::Index c = 0; c < a.cols(); ++c) {
      const double x = static_cast<double>(a(r, c));
      const double y = static_cast<double>(b(r, c));
      if (is_nan_bits(x) && is_nan_bits(y)) continue;
      if (is_infinity_bits(y) && x == y) continue;
      const double err = std::abs(x - y) / std::max(1.0, std::abs(y));
      if (is_nan_bits(err) || err > worst) {
        worst = is_nan_bits(err) ? std::numeric_limits<double>::infinity() : err;
        worst_r = r;
        worst_c = c;
      }
    }
  }
  if (worst <= tol) return ::testing::AssertionSuccess();
  std::ostringstream s;
  s.precision(17);
  s << "worst element (" << worst_r << ", " << worst_c << "): got " << a(worst_r, worst_c)
    << ", expected " << b(worst_r, worst_c) << ", error " << worst << " > tolerance " << tol
    << " (shape " << a.rows() << "x" << a.cols() << ")";
  return ::testing::AssertionFailure() << s.str();
}

/// Same shape and the same bits in every element (NaN or not, −0 ≠ +0): for results documented
/// as bitwise identical, which a tolerance would not check.
template <typename A, typename B>
bool bitwise_equal(const Eigen::MatrixBase<A>& a, const Eigen::MatrixBase<B>& b) {
  if (a.rows() != b.rows() || a.cols() != b.cols()) return false;
  for (Eigen::Index r = 0; r < a.rows(); ++r) {
    for (Eigen::Index c = 0; c < a.cols(); ++c) {
      const auto x = a(r, c), y = b(r, c);
      if (std::memcmp(&x, &y, sizeof(x)) != 0) return false;
    }
  }
  return true;
}

}  // namespace attn_test

#define EXPECT_MATRIX_NEAR(a, b, tol) EXPECT_TRUE(::attn_test::matrix_near((a), (b), (tol)))
