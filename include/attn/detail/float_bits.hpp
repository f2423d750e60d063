// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors
#pragma once

/// \file detail/float_bits.hpp
/// NaN and infinity tests on a value's bits, right under any floating-point flags.
///
/// Users compile attn with their own flags. Under -ffinite-math-only (part of -ffast-math) the
/// compiler may assume that no value is NaN or infinite: it folds std::isnan and std::isinf to
/// false, x == −∞ to false, and drops the unordered case from comparisons. The kernel still meets
/// −∞ at run time (hidden logits, rows with nothing visible) and must still recognise it, and
/// argument checks must still reject NaN. Integer tests on the bits are beyond those assumptions.

#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

namespace attn::detail {

/// The unsigned integer of a floating-point type's width, and its IEEE 754 exponent field.
template <typename Scalar>
struct FloatBits {
  static_assert(std::numeric_limits<Scalar>::is_iec559 &&
                    (sizeof(Scalar) == 4 || sizeof(Scalar) == 8),
                "attn: float and double must be IEEE 754 binary32 and binary64");
  using Unsigned = std::conditional_t<sizeof(Scalar) == 4, std::uint32_t, std::uint64_t>;
  static constexpr Unsigned sign = Unsigned(1) << (8 * sizeof(Scalar) - 1);
  static constexpr Unsigned exponent =
      sizeof(Scalar) == 4 ? Unsigned(0x7f800000u) : Unsigned(0x7ff0000000000000ull);

  static Unsigned of(Scalar x) {
    Unsigned bits;
    std::memcpy(&bits, &x, sizeof bits);
    return bits;
  }
};

/// x is NaN: every exponent bit set and a non-zero mantissa.
template <typename Scalar>
bool is_nan(Scalar x) {
  using B = FloatBits<Scalar>;
  return (B::of(x) & ~B::sign) > B::exponent;
}

/// x is neither NaN nor ±∞: not every exponent bit set.
template <typename Scalar>
bool is_finite(Scalar x) {
  using B = FloatBits<Scalar>;
  return (B::of(x) & B::exponent) != B::exponent;
}

/// x is −∞.
template <typename Scalar>
bool is_minus_infinity(Scalar x) {
  using B = FloatBits<Scalar>;
  return B::of(x) == (B::sign | B::exponent);
}

/// x is +∞.
template <typename Scalar>
bool is_plus_infinity(Scalar x) {
  using B = FloatBits<Scalar>;
  return B::of(x) == B::exponent;
}

/// Whether every element of the rows × cols row-major block at `data` (row stride `stride`) is
/// finite. Eigen's allFinite() tests x − x == x − x, which -ffinite-math-only folds to true.
template <typename Scalar, typename Size>
bool all_finite(const Scalar* data, Size stride, Size rows, Size cols) {
  using B = FloatBits<Scalar>;
  for (Size r = 0; r < rows; ++r) {
    typename B::Unsigned any_all_ones = 0;
    for (Size c = 0; c < cols; ++c)
      any_all_ones |= ((B::of(data[r * stride + c]) & B::exponent) == B::exponent);
    if (any_all_ones != 0) return false;
  }
  return true;
}

}  // namespace attn::detail
