// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors
#pragma once

/// \file support/tolerance.hpp
/// Tolerances for comparing attn in Scalar with the fp64 reference, derived from the unit
/// roundoff u = NumTraits<Scalar>::epsilon() and the lengths of the reductions. They are used
/// with attn_test::matrix_near, whose error is |got − expected| / max(1, |expected|).

#include <attn/types.hpp>

#include <algorithm>
#include <cmath>

namespace attn_test {

/// The kernel against reference_attention, for inputs exactly representable in Scalar.
///
/// First-order error model (Higham, "Accuracy and Stability of Numerical Algorithms", ch. 3):
/// - A logit s = scale·q·k is a length-d dot product; its rounding error is a small multiple of
///   u·B, where B ≥ |scale|·Σ_l |q_l|·|k_l| bounds the logits' magnitude (plus |bias| and the
///   rounding of a bias converted to Scalar). With the default scale and entries in [−1, 1],
///   B = √d: this is where the head dim enters.
/// - exp(s − max) turns an absolute logit error δ into a relative weight error δ, and the
///   normalisation adds a few u; a relative weight error ε moves the convex combination
///   Σ_j p_j·v_j by at most 2·ε·max|v|.
/// - The weighted sum over m keys and the row sum are accumulated per key block (at most 128 keys,
///   by register tiles, or in split parts merged by log-sum-exp when decoding) and then across
///   blocks with a rescale each; in the usual random-rounding model the accumulated relative
///   error grows like the depth of the summation, ~log2(m), not like m.
/// So |error| ≲ c·u·(B + log2(m + 1) + 2)·max(1, max|v|). We take c = 8: measured errors are
/// ~1u for B ≈ 8 and ~20u for B = 128, well inside, while any real defect (a wrong mask edge, a
/// missed rescale, a wrong head) is orders of magnitude larger. For double this is ≈ 2e-14 at
/// d = 64, m = 1500.
template <typename Scalar>
double attention_tolerance(double logit_bound, Eigen::Index m, double value_bound = 1.0) {
  const double u = Eigen::NumTraits<Scalar>::epsilon();
  const double depth = std::log2(static_cast<double>(m) + 1.0);
  return 8.0 * u * (logit_bound + depth + 2.0) * std::max(1.0, value_bound);
}

/// A multi-head layer against reference_mha: on top of the kernel's error, the projections are
/// reductions of length E (Q, and the output projection) and S (K, V) of inputs in [−1, 1] and
/// weights in ±1/√fan_in, so their results are O(1). Rounding errors of independent sign make a
/// length-n reduction err by ~√n·u rather than the worst case n·u (Higham & Mary, "A new approach
/// to probabilistic rounding error analysis", SISC 2019); measured errors are ~1u here, so with
/// c = 8 the bound c·u·(√E + √S + √d + log2(m + 1) + 2) keeps a margin of 100–1000× while a defect
/// (a wrong head, bias or weight block) is O(0.01) or more. For double it is ≈ 1e-13.
template <typename Scalar>
double layer_tolerance(Eigen::Index model_dim, Eigen::Index source_dim, Eigen::Index head_dim,
                       Eigen::Index m) {
  const double u = Eigen::NumTraits<Scalar>::epsilon();
  const double depth = std::log2(static_cast<double>(m) + 1.0);
  const auto root = [](Eigen::Index n) { return std::sqrt(static_cast<double>(n)); };
  return 8.0 * u * (root(model_dim) + root(source_dim) + root(head_dim) + depth + 2.0);
}

/// The kernel's backward (dq, dk, dv) against reference_gradients, for entries of q, k, v and dO
/// in [−1, 1]: the backward recomputes P with the forward's error (attention_tolerance T,
/// relative to the O(1) values), then forms dP = dO·Vᵀ (a length-dv sum), dS = P ∘ (dP − D) and
/// products of length m (dQ) or n·H/Hkv (dK, dV) of terms each within a few u of exact, so a
/// gradient entry errs by about T·(√dv + 1)·(the gradient's own scale), and the gradients' entries
/// are O(1) here. A factor 8 keeps a margin while a wrong index (a head, a row, a missing factor)
/// is O(0.1).
template <typename Scalar>
double gradient_tolerance(Eigen::Index head_dim, Eigen::Index value_dim, Eigen::Index length) {
  return 8 * attention_tolerance<Scalar>(std::sqrt(static_cast<double>(head_dim)), length) *
         (std::sqrt(static_cast<double>(value_dim)) + 1);
}

}  // namespace attn_test
