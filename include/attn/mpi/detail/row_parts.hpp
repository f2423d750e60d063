// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors
#pragma once

/// \file mpi/detail/row_parts.hpp
/// Partial attention results of a rank's query rows, merged part by part in a fixed order; and the
/// test that tells a pair of query and key segments that a structured mask hides entirely.

#include <algorithm>
#include <limits>

#include "../../detail/online_softmax.hpp"
#include "../../mask.hpp"
#include "../../types.hpp"

namespace attn::mpi::detail {

/// The running result of n query rows over H heads of dv values: normalised rows and their
/// log-sum-exps, into which parts over further keys are merged exactly (see
/// merge_partial_attention). Starts as attention over no key: zero rows, lse −∞.
template <typename Scalar>
class RowParts {
 public:
  RowParts(Index rows, Index heads, Index value_dim)
      : m_out(Matrix<Scalar>::Zero(rows, heads * value_dim)),
        m_lse(Matrix<Scalar>::Constant(rows, heads, -std::numeric_limits<Scalar>::infinity())),
        m_pair(2, value_dim) {}

  /// Merges a part over rows [first, first + part_out.rows()): its output (rows × H·dv) and
  /// log-sum-exp (rows × H).
  void merge(Index first, const Matrix<Scalar>& part_out, const Matrix<Scalar>& part_lse) {
    const Index heads = m_lse.cols(), dv = m_pair.cols();
    Scalar lses[2];
    for (Index r = 0; r < part_out.rows(); ++r) {
      for (Index h = 0; h < heads; ++h) {
        Scalar* row = m_out.data() + (first + r) * m_out.cols() + h * dv;
        m_pair.row(0) = Eigen::Map<const Eigen::Matrix<Scalar, 1, Eigen::Dynamic>>(row, dv);
        m_pair.row(1) = part_out.row(r).segment(h * dv, dv);
        lses[0] = m_lse(first + r, h);
        lses[1] = part_lse(r, h);
        attn::detail::merge_rows(Index(2), m_pair.data(), dv, lses, Index(1), dv, row,
                                 &m_lse(first + r, h));
      }
    }
  }

  const Matrix<Scalar>& out() const { return m_out; }
  const Matrix<Scalar>& log_sum_exp() const { return m_lse; }

 private:
  Matrix<Scalar> m_out;
  Matrix<Scalar> m_lse;
  Matrix<Scalar> m_pair;  // the two rows being merged (merge_rows must not write over its input)
};

/// False if the structured part of `mask` (window, key length) hides keys at positions
/// [k0, k1) from every query at positions [q0, q1): that pair of segments needs no kernel call.
/// True whenever it cannot tell (functions may still hide everything; the kernel then skips the
/// blocks without reading them).
inline bool may_see(const Mask& mask, Index q0, Index q1, Index k0, Index k1) {
  if (q1 <= q0 || k1 <= k0) return false;
  if (mask.has_key_length() && k0 >= mask.visible_keys()) return false;
  if (mask.left() != Mask::unbounded && k1 - 1 < q0 - mask.left()) return false;
  if (mask.right() != Mask::unbounded && k0 > q1 - 1 + mask.right()) return false;
  return true;
}

}  // namespace attn::mpi::detail
