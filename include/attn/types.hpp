// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors
#pragma once

/// \file types.hpp
/// The matrix types every attn interface speaks: row-major, because rows are tokens and a token's
/// features (and a head's slice of them) are contiguous.

// GCC 12 warns that its own AVX-512 intrinsics, inlined through Eigen's GEMM and transposes, use
// an uninitialised value (GCC bug 105593, a false positive). The warning is issued after inlining
// and escapes the system-header rule, so a -Werror build at -march=x86-64-v4 would fail on code
// that is neither attn's nor yours; it is silenced for these headers only, while attn's code and
// yours keep it. (Including Eigen before attn leaves the choice to your own flags.)
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ < 13
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#include <Eigen/Core>
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ < 13
#pragma GCC diagnostic pop
#endif

namespace attn {

/// Signed size type of all shapes (Eigen's).
using Index = Eigen::Index;

/// Dense row-major matrix: rows are tokens, columns are features.
template <typename Scalar>
using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

/// Dense column vector (biases).
template <typename Scalar>
using Vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;

/// Read-only view of row-major storage with unit inner stride and any row stride: a whole matrix,
/// a block of rows, or one head's column block of a multi-head matrix, all without copies.
template <typename Scalar>
using ConstMatrixView = Eigen::Map<const Matrix<Scalar>, Eigen::Unaligned, Eigen::OuterStride<>>;

/// Writable counterpart of ConstMatrixView.
template <typename Scalar>
using MatrixView = Eigen::Map<Matrix<Scalar>, Eigen::Unaligned, Eigen::OuterStride<>>;

/// What public entry points bind their inputs to: any row-major dense storage binds without a copy;
/// other expressions (column-major matrices, products, transposes) are evaluated once into a
/// temporary.
template <typename Scalar>
using ConstMatrixRef = Eigen::Ref<const Matrix<Scalar>, 0, Eigen::OuterStride<>>;

/// Writable output binding: row-major storage with unit inner stride (a matrix or a block of rows
/// or columns of one).
template <typename Scalar>
using MatrixRef = Eigen::Ref<Matrix<Scalar>, 0, Eigen::OuterStride<>>;

namespace detail {

template <typename Scalar>
inline constexpr bool is_supported_scalar =
    std::is_same_v<Scalar, float> || std::is_same_v<Scalar, double>;

/// Columns [first, first + count) of a row-major view, as a view (no copy). An empty matrix may
/// have no storage: its null data pointer is never offset.
template <typename Scalar>
ConstMatrixView<Scalar> column_block(const ConstMatrixRef<Scalar>& m, Index first, Index count) {
  return ConstMatrixView<Scalar>(m.rows() == 0 ? m.data() : m.data() + first, m.rows(), count,
                                 Eigen::OuterStride<>(m.outerStride()));
}

template <typename Scalar>
MatrixView<Scalar> column_block(MatrixRef<Scalar>& m, Index first, Index count) {
  return MatrixView<Scalar>(m.rows() == 0 ? m.data() : m.data() + first, m.rows(), count,
                            Eigen::OuterStride<>(m.outerStride()));
}

}  // namespace detail
}  // namespace attn
