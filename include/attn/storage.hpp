// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors
#pragma once

/// \file storage.hpp
/// How keys and values (and queries) may be stored: float or double, the 16-bit types
/// attn::bfloat16 and attn::half, and attn::qint8, 8-bit integers with one float scale per head
/// row. Whatever the storage, the kernel converts tile by tile into float registers and
/// accumulates in float (the max, the sum, the logits and the output): storage width changes the
/// bytes read and the rounding of the inputs, never the precision of the arithmetic.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "detail/float_bits.hpp"
#include "error.hpp"
#include "types.hpp"

namespace attn {

/// bfloat16: float's 8 exponent bits and 7 mantissa bits (relative rounding error ≤ 2⁻⁸), float's
/// range. Eigen's type: converts to and from float, rounding to nearest even.
using bfloat16 = Eigen::bfloat16;

/// IEEE half precision: 5 exponent bits and 10 mantissa bits (relative rounding error ≤ 2⁻¹¹),
/// finite values up to 65 504. Eigen's type (F16C or NEON conversions where compiled in).
using half = Eigen::half;

/// Tag of the 8-bit storage format: int8 values in groups along a row, one float scale per
/// group, symmetric (no zero point) and rounded to nearest:
///
///     scale = max |x_i| / 127 over the group,  q_i = round(x_i / scale) in [−127, 127],
///     x_i ≈ scale · q_i,  |x_i − scale · q_i| ≤ scale / 2 = max |x| / 254.
///
/// A group is one head's row (head_dim values of one position): a logit is then
/// scale_k · (q · k_int8) and a value row adds (p · scale_v) · v_int8, so the scales fold out of
/// both inner loops, which only convert int8 to float and multiply-add. (Groups of 32, as
/// llama.cpp's q8_0, bound the error by the max over 32 values instead of over a head's
/// 64–128, at the cost of a scale multiply per group inside each dot product; at head_dim 64 both
/// spend 1/16 of a byte per value on scales.) A group that is all zeros has scale 0. (The bound
/// is for the exact scale: when max |x| is below 127 times float's smallest normal value,
/// ≈ 1.5e-36, the scale is subnormal and rounded to fewer bits, and below ≈ 9e-44 it is 0.)
/// Memory: 1 byte per value plus 4 bytes per group.
///
/// Example (examples/reference_kernel.cpp, compiled and run as a test):
/// \snippet reference_kernel.cpp quantized
struct qint8 {};

namespace detail {

template <typename Storage>
inline constexpr bool is_reduced_storage =
    std::is_same_v<Storage, bfloat16> || std::is_same_v<Storage, half> ||
    std::is_same_v<Storage, qint8>;

/// Whether Storage may hold keys and values for a computation in Scalar: Scalar itself, or, for
/// float, bfloat16, half and qint8 (reduced storage computes in float).
template <typename Scalar, typename Storage>
inline constexpr bool is_storage_for = std::is_same_v<Storage, Scalar> ||
                                       (std::is_same_v<Scalar, float> &&
                                        is_reduced_storage<Storage>);

/// The type a stored element computes in: float for float and the reduced types, double for
/// double.
template <typename Storage>
using compute_t = std::conditional_t<std::is_same_v<Storage, double>, double, float>;

/// A readable name for messages.
template <typename Storage>
constexpr const char* storage_name() {
  if constexpr (std::is_same_v<Storage, float>) return "float";
  if constexpr (std::is_same_v<Storage, double>) return "double";
  if constexpr (std::is_same_v<Storage, bfloat16>) return "bfloat16";
  if constexpr (std::is_same_v<Storage, half>) return "half";
  if constexpr (std::is_same_v<Storage, qint8>) return "qint8";
  return "?";
}

/// Whether the finite value x stays finite when rounded to Storage (a 16-bit type): half's
/// largest finite value is 65 504, and float values within half an ulp of float's largest round
/// to infinity in bfloat16.
template <typename Storage>
bool fits(float x) {
  return !is_finite(x) || is_finite(static_cast<float>(Storage(x)));
}

}  // namespace detail

/// A read-only view of rows stored as qint8: values (rows × cols int8, row stride outerStride())
/// and one float scale per row and group of group() columns, at
/// scales()[r·scale_stride() + c / group()]. Its accessors mirror Eigen's Map (rows, cols, data,
/// outerStride), so code that walks rows reads either.
///
/// Example (examples/reference_kernel.cpp, compiled and run as a test):
/// \snippet reference_kernel.cpp quantized
class QuantizedView {
 public:
  QuantizedView() = default;
  /// A view of `rows` × `cols` values with row stride `stride`, and their scales, one per
  /// `group` columns, with row stride `scale_stride`. Nothing is copied.
  QuantizedView(const std::int8_t* values, Index rows, Index cols, Index stride,
                const float* scales, Index scale_stride, Index group)
      : m_values(values),
        m_rows(rows),
        m_cols(cols),
        m_stride(stride),
        m_scales(scales),
        m_scale_stride(scale_stride),
        m_group(group) {}

  /// Rows viewed.
  Index rows() const { return m_rows; }
  /// Values per row.
  Index cols() const { return m_cols; }
  /// The first row's values.
  const std::int8_t* data() const { return m_values; }
  /// Values from one row to the next.
  Index outerStride() const { return m_stride; }
  /// The first row's scales.
  const float* scales() const { return m_scales; }
  /// Scales from one row to the next.
  Index scale_stride() const { return m_scale_stride; }
  /// Columns that share a scale.
  Index group() const { return m_group; }

  /// The value element (r, c) stands for: scale · q.
  float operator()(Index r, Index c) const {
    return m_scales[r * m_scale_stride + c / m_group] * float(m_values[r * m_stride + c]);
  }
  /// All of it as floats (rows × cols), e.g. to see what the quantisation did.
  Matrix<float> dequantize() const {
    Matrix<float> x(m_rows, m_cols);
    for (Index r = 0; r < m_rows; ++r) {
      for (Index c = 0; c < m_cols; ++c)
        x(r, c) = (*this)(r, c);
    }
    return x;
  }
  /// Rows [first, first + count), as a view.
  QuantizedView middleRows(Index first, Index count) const {
    if (count == 0) first = 0;  // an empty view may have no storage to offset
    return {m_values + first * m_stride,       count,          m_cols, m_stride,
            m_scales + first * m_scale_stride, m_scale_stride, m_group};
  }

 private:
  const std::int8_t* m_values = nullptr;
  Index m_rows = 0;
  Index m_cols = 0;
  Index m_stride = 0;
  const float* m_scales = nullptr;
  Index m_scale_stride = 0;
  Index m_group = 1;
};

/// Rows of float values quantised to qint8 (see attn::qint8), with storage of their own.
///
/// Example (examples/reference_kernel.cpp, compiled and run as a test):
/// \snippet reference_kernel.cpp quantized
class QuantizedMatrix {
 public:
  QuantizedMatrix() = default;
  /// rows × cols zeros (scales 0) in groups of `group` columns.
  /// \throws ShapeError unless rows, cols ≥ 0, group ≥ 1 and group divides cols.
  QuantizedMatrix(Index rows, Index cols, Index group) {
    if (rows < 0 || cols < 0) {
      detail::throw_shape_error("QuantizedMatrix: shape is ", detail::shape_string(rows, cols),
                                ", expected non-negative");
    }
    if (group < 1 || cols % group != 0) {
      detail::throw_shape_error("QuantizedMatrix: group is ", group,
                                ", expected >= 1 and a divisor of cols ", cols);
    }
    m_values.setZero(rows, cols);
    m_scales.setZero(rows, cols / group);
    m_group = group;
  }

  /// x quantised in groups of `group` columns (each group of a row: scale max|x|/127, values
  /// rounded to nearest).
  /// \throws ShapeError if group does not divide x.cols(), or naming the first element that is
  ///         NaN or infinite (a group holding one has no scale).
  template <typename Derived>
  static QuantizedMatrix quantize(const Eigen::MatrixBase<Derived>& x, Index group) {
    QuantizedMatrix q(x.rows(), x.cols(), group);
    const Matrix<float> values = x.template cast<float>();
    q.check("QuantizedMatrix::quantize", "x", values);
    q.assign_rows(0, values);
    return q;
  }

  /// Rows held.
  Index rows() const { return m_values.rows(); }
  /// Values per row.
  Index cols() const { return m_values.cols(); }
  /// Columns that share a scale.
  Index group() const { return m_group; }
  /// Bytes of storage: one per value and four per group's scale.
  std::size_t bytes() const {
    return std::size_t(m_values.size()) + sizeof(float) * std::size_t(m_scales.size());
  }

  /// The first `count` rows (all by default) as a view.
  QuantizedView view(Index count = -1) const {
    return {m_values.data(), count < 0 ? rows() : count,
            cols(),          cols(),
            m_scales.data(), m_scales.cols(),
            m_group};
  }
  /// Every value times its group's scale, in float.
  Matrix<float> dequantize() const { return view().dequantize(); }

  /// \throws ShapeError naming `who` and `argument` unless every element of x (rows of
  ///         this matrix's width) is finite.
  void check(const char* who, const char* argument, const ConstMatrixRef<float>& x) const {
    for (Index r = 0; r < x.rows(); ++r) {
      for (Index c = 0; c < x.cols(); ++c) {
        if (!detail::is_finite(x(r, c))) {
          detail::throw_shape_error(who, ": ", argument, "(", r, ", ", c, ") is ", x(r, c),
                                    ", which qint8 storage cannot hold (its group of ", m_group,
                                    " values would have no scale)");
        }
      }
    }
  }

  /// Copies rows [from, from + count) to rows [to, to + count), values and scales as they are
  /// (no requantisation). Precondition: both ranges lie in the matrix and do not overlap.
  void copy_rows(Index from, Index to, Index count) {
    m_values.middleRows(to, count) = m_values.middleRows(from, count);
    m_scales.middleRows(to, count) = m_scales.middleRows(from, count);
  }

  /// Quantises x into rows [first, first + x.rows()). Precondition: check(x) passed, the rows fit
  /// and x has cols() columns.
  void assign_rows(Index first, const ConstMatrixRef<float>& x) {
    const Index groups = m_scales.cols();
    for (Index r = 0; r < x.rows(); ++r) {
      for (Index g = 0; g < groups; ++g) {
        const auto group = x.row(r).segment(g * m_group, m_group);
        const float max = group.cwiseAbs().maxCoeff();
        const float scale = max / 127.0f;
        // In double: for a group of tiny values (max below 127 / FLT_MAX ≈ 3.7e-37, subnormals
        // included) 127 / max overflows float, and 0 · ∞ would be NaN, which no int8 holds.
        const double inverse = max > 0 ? 127.0 / double(max) : 0.0;
        m_scales(first + r, g) = scale;
        for (Index c = 0; c < m_group; ++c) {
          // |x·inverse| ≤ 127 up to rounding; the clamp keeps a rounding up at the end in range.
          const double scaled = std::round(double(group(c)) * inverse);
          m_values(first + r, g * m_group + c) =
              static_cast<std::int8_t>(std::clamp(scaled, -127.0, 127.0));
        }
      }
    }
  }

 private:
  Eigen::Matrix<std::int8_t, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> m_values;
  Matrix<float> m_scales;  // rows × cols / group
  Index m_group = 1;
};

/// How a matrix of Storage is read: a row-major view for float, double, bfloat16 and half, a
/// QuantizedView for qint8.
template <typename Storage>
using StorageView =
    std::conditional_t<std::is_same_v<Storage, qint8>, QuantizedView, ConstMatrixView<Storage>>;

}  // namespace attn
