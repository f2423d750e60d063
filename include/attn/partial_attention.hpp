// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors
#pragma once

/// \file partial_attention.hpp
/// Attention over part of the keys, and the exact merge of such parts: how a split-key decode
/// combines its threads' results, and how attention over a sequence split across machines (or
/// over a cache and fresh keys) is combined.

#include <vector>

#include "detail/online_softmax.hpp"
#include "error.hpp"
#include "mask.hpp"
#include "scaled_dot_product.hpp"
#include "types.hpp"

namespace attn {

/// Attention over a subset of the keys: the normalised result over that subset and the
/// log-sum-exp of its logits, enough to combine it exactly with results over other subsets.
///
/// Example (examples/reference_kernel.cpp, compiled and run as a test):
/// \snippet reference_kernel.cpp partial_attention
template <typename Scalar_>
struct PartialAttention {
  /// The type of the computations (float or double).
  using Scalar = Scalar_;
  /// n × H·dv: softmax over this part's keys, times their values (zero rows where none visible).
  Matrix<Scalar> out;
  /// n × H: log Σ exp(logit) over this part's visible keys (−∞ where none).
  Matrix<Scalar> log_sum_exp;
};

/// scaled_dot_product_attention over the keys and values given, with the log-sum-exp kept.
/// The mask is relative to these keys (bottom-right aligned over k's rows). q, k and v may be
/// stored as for scaled_dot_product_attention (e.g. one part from a bfloat16 cache, another from
/// float rows); the parts are in the compute type.
/// \throws ShapeError as scaled_dot_product_attention.
template <typename DQ, typename K, typename V, typename M = Mask,
          typename = std::enable_if_t<detail::is_mask_argument<M>>>
PartialAttention<detail::result_t<DQ>> scaled_dot_product_attention_partial(
    const Eigen::MatrixBase<DQ>& q, const K& k, const V& v, const M& mask = M(),
    const AttentionOptions& options = {}) {
  PartialAttention<detail::result_t<DQ>> part;
  AttentionExtras<detail::result_t<DQ>> extras;
  extras.log_sum_exp = &part.log_sum_exp;
  part.out = scaled_dot_product_attention(q, k, v, mask, options, extras);
  return part;
}

/// Merges `part` into `into`, both over the same queries and heads but disjoint key sets: the
/// result is attention over the union, exact up to rounding:
/// lse = log(e^lse_a + e^lse_b), out = e^(lse_a − lse)·out_a + e^(lse_b − lse)·out_b.
/// A part with no visible key (lse = −∞) is the identity.
/// \throws ShapeError if the shapes of the two parts differ; `into` is then untouched.
template <typename Scalar>
void merge_partial_attention(PartialAttention<Scalar>& into, const PartialAttention<Scalar>& part) {
  if (into.out.rows() != part.out.rows() || into.out.cols() != part.out.cols() ||
      into.log_sum_exp.rows() != part.log_sum_exp.rows() ||
      into.log_sum_exp.cols() != part.log_sum_exp.cols()) {
    detail::throw_shape_error("merge_partial_attention: part.out is ",
                              detail::shape_string(part.out), " with log_sum_exp ",
                              detail::shape_string(part.log_sum_exp), ", expected ",
                              detail::shape_string(into.out), " with log_sum_exp ",
                              detail::shape_string(into.log_sum_exp));
  }
  const Index heads = into.log_sum_exp.cols();
  if (heads == 0 || into.out.cols() % heads != 0) {
    detail::throw_shape_error("merge_partial_attention: out is ", detail::shape_string(into.out),
                              ", expected columns a multiple of the ", heads,
                              " heads of log_sum_exp");
  }
  const Index dv = into.out.cols() / heads;
  Matrix<Scalar> both(2, dv);  // the two rows to merge, one after the other
  Scalar lses[2];
  for (Index r = 0; r < into.out.rows(); ++r) {
    for (Index h = 0; h < heads; ++h) {
      both.row(0) = into.out.row(r).segment(h * dv, dv);
      both.row(1) = part.out.row(r).segment(h * dv, dv);
      lses[0] = into.log_sum_exp(r, h);
      lses[1] = part.log_sum_exp(r, h);
      detail::merge_rows(Index(2), both.data(), dv, lses, Index(1), dv,
                         into.out.data() + r * into.out.cols() + h * dv, &into.log_sum_exp(r, h));
    }
  }
}

/// Merges any number of parts (over disjoint key sets), in order.
/// \throws ShapeError if parts is empty or their shapes differ.
template <typename Scalar>
PartialAttention<Scalar> merge_partial_attention(
    const std::vector<PartialAttention<Scalar>>& parts) {
  if (parts.empty()) {
    detail::throw_shape_error("merge_partial_attention: parts is empty, expected at least one");
  }
  PartialAttention<Scalar> merged = parts.front();
  for (std::size_t s = 1; s < parts.size(); ++s)
    merge_partial_attention(merged, parts[s]);
  return merged;
}

}  // namespace attn
