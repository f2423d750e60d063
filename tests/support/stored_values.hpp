// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors
#pragma once

/// \file support/stored_values.hpp
/// The exact values stored elements stand for, in double, decoded from their bits (bfloat16,
/// half) or from the raw int8 values and scales (qint8), never through attn's own conversions.

#include <attn/storage.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "reference.hpp"

namespace attn_test {

template <typename T>
std::uint16_t bits_of(const T& x) {
  static_assert(sizeof(T) == 2, "a 16-bit type");
  std::uint16_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  return bits;
}

// The value of a bfloat16: the upper 16 bits of a float.
inline double bfloat16_value(std::uint16_t bits) {
  const std::uint32_t word = std::uint32_t(bits) << 16;
  float x;
  std::memcpy(&x, &word, sizeof x);
  return x;
}

// The value of an IEEE half from its fields: sign, 5 exponent bits (bias 15), 10 mantissa bits.
inline double half_value(std::uint16_t bits) {
  const int exponent = (bits >> 10) & 0x1f;
  const int mantissa = bits & 0x3ff;
  double magnitude;
  if (exponent == 0x1f) {
    magnitude = mantissa != 0 ? std::numeric_limits<double>::quiet_NaN()
                              : std::numeric_limits<double>::infinity();
  } else if (exponent == 0) {
    magnitude = std::ldexp(double(mantissa), -24);  // subnormal: mantissa · 2^-24
  } else {
    magnitude = std::ldexp(double(mantissa + 1024), exponent - 25);
  }
  return (bits & 0x8000) != 0 ? -magnitude : magnitude;
}

inline double value_of(float x) {
  return x;
}
inline double value_of(double x) {
  return x;
}
inline double value_of(const attn::bfloat16& x) {
  return bfloat16_value(bits_of(x));
}
inline double value_of(const attn::half& x) {
  return half_value(bits_of(x));
}

// The exact values a matrix of float, double, bfloat16 or half holds.
template <typename Derived>
MatrixD stored_values(const Eigen::MatrixBase<Derived>& x) {
  MatrixD y(x.rows(), x.cols());
  for (Eigen::Index r = 0; r < x.rows(); ++r) {
    for (Eigen::Index c = 0; c < x.cols(); ++c)
      y(r, c) = value_of(x(r, c));
  }
  return y;
}

// The exact values qint8 rows stand for, scale · q in double (a float times an int8 is exact in
// double), from the raw values and scales rather than the view's own operator().
inline MatrixD stored_values(const attn::QuantizedView& x) {
  MatrixD y(x.rows(), x.cols());
  for (Eigen::Index r = 0; r < x.rows(); ++r) {
    for (Eigen::Index c = 0; c < x.cols(); ++c) {
      y(r, c) = double(x.scales()[r * x.scale_stride() + c / x.group()]) *
                double(x.data()[r * x.outerStride() + c]);
    }
  }
  return y;
}
}  // namespace attn_test
