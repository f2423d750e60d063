// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors
#pragma once

/// \file detail/stored_matrix.hpp
/// Rows kept in a storage type, written from Scalar rows (rounded or quantised once, when they
/// are written) and read as a StorageView: what a KVCache and a remembered cross-attention
/// memory hold their keys and values in.

#include <cstddef>
#include <type_traits>

#include "../error.hpp"
#include "../storage.hpp"
#include "../types.hpp"

namespace attn::detail {

/// rows × cols of Storage; for qint8, in groups of `group` columns (a head).
template <typename Scalar, typename Storage>
class StoredMatrix {
  static_assert(is_storage_for<Scalar, Storage>,
                "attn: the storage must be the Scalar itself, or, for float, attn::bfloat16, "
                "attn::half or attn::qint8");

 public:
  StoredMatrix() = default;
  /// Precondition: rows, cols ≥ 0; group ≥ 1 divides cols (used by qint8 only).
  StoredMatrix(Index rows, Index cols, Index group) {
    if constexpr (std::is_same_v<Storage, qint8>) {
      m_data = QuantizedMatrix(rows, cols, group);
    } else {
      (void)group;
      m_data.resize(rows, cols);
    }
  }

  Index rows() const { return m_data.rows(); }
  Index cols() const { return m_data.cols(); }
  /// Bytes of storage (for qint8, values and scales).
  std::size_t bytes() const {
    if constexpr (std::is_same_v<Storage, qint8>) {
      return m_data.bytes();
    } else {
      return sizeof(Storage) * std::size_t(m_data.size());
    }
  }

  /// The first `count` rows.
  StorageView<Storage> view(Index count) const {
    if constexpr (std::is_same_v<Storage, qint8>) {
      return m_data.view(count);
    } else {
      return StorageView<Storage>(m_data.data(), count, cols(), Eigen::OuterStride<>(cols()));
    }
  }

  /// Rows [first, first + count).
  StorageView<Storage> view(Index first, Index count) const {
    if constexpr (std::is_same_v<Storage, qint8>) {
      return m_data.view().middleRows(first, count);
    } else {
      return StorageView<Storage>(count == 0 ? m_data.data() : m_data.data() + first * cols(),
                                  count, cols(), Eigen::OuterStride<>(cols()));
    }
  }

  /// Copies rows [from, from + count) to rows [to, to + count) as stored (no rounding again).
  /// Precondition: both ranges lie in the matrix and do not overlap.
  void copy_rows(Index from, Index to, Index count) {
    if constexpr (std::is_same_v<Storage, qint8>) {
      m_data.copy_rows(from, to, count);
    } else {
      m_data.middleRows(to, count) = m_data.middleRows(from, count);
    }
  }

  /// \throws ShapeError naming `who` and `argument` (and the element) if x holds a value this
  ///         storage cannot hold: a finite value that would round to infinity in a 16-bit type,
  ///         or a NaN or infinity in a qint8 group. NaN and infinities are kept by bfloat16 and
  ///         half (the kernel then treats them as in float).
  void check(const char* who, const char* argument, const ConstMatrixRef<Scalar>& x) const {
    if constexpr (std::is_same_v<Storage, qint8>) {
      m_data.check(who, argument, x);
    } else if constexpr (is_reduced_storage<Storage>) {
      for (Index r = 0; r < x.rows(); ++r) {
        for (Index c = 0; c < x.cols(); ++c) {
          if (!fits<Storage>(x(r, c))) {
            throw_shape_error(who, ": ", argument, "(", r, ", ", c, ") is ", x(r, c),
                              ", beyond the range of ", storage_name<Storage>(),
                              " storage (it would become infinite)");
          }
        }
      }
    } else {
      (void)who, (void)argument, (void)x;
    }
  }

  /// Writes x into rows [first, first + x.rows()), rounding (or quantising) each value once.
  /// Precondition: check(x) passed, the rows fit, and x has cols() columns.
  void assign_rows(Index first, const ConstMatrixRef<Scalar>& x) {
    if constexpr (std::is_same_v<Storage, qint8>) {
      m_data.assign_rows(first, x);
    } else {
      m_data.middleRows(first, x.rows()) = x.template cast<Storage>();
    }
  }

 private:
  std::conditional_t<std::is_same_v<Storage, qint8>, QuantizedMatrix, Matrix<Storage>> m_data;
};

}  // namespace attn::detail
