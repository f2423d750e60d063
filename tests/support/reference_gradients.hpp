// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors
#pragma once

/// \file support/reference_gradients.hpp
/// An fp64 reference for the gradients of multi-head attention, written for clarity: the n×m
/// probabilities of reference_multi_head, then the chain rule through the softmax spelled out
/// with its own row sums (Σ_j P·dP, not the library's rowsum(dO ∘ O)). And central finite
/// differences of a scalar loss, to check the reference itself.

#include <attn/types.hpp>

#include <cmath>
#include <functional>
#include <optional>

#include "reference.hpp"

namespace attn_test {

struct ReferenceGradients {
  MatrixD dq, dk, dv;
};

/// ∂loss/∂(q, k, v) for loss = Σ d_out ∘ (attention with the given weights), head by head, the
/// weights ((H·n) × m, head h in rows [h·n, (h + 1)·n)) those of a reference forward whose mask
/// and score function leave ∂logit/∂(scale·q·k) at 1 (masks, biases, additive score functions),
/// or 1 − tanh² with a softcap:
///   P = the weights, dV_g += Pᵀ·dO, dP = dO·V_gᵀ, dS(i, j) = P(i, j)·(dP(i, j) − Σ_j' P·dP),
///   times 1 − tanh²(scale·q·k/softcap) with a softcap, dQ = scale·dS·K_g, dK_g += scale·dSᵀ·Q.
template <typename DQ, typename DK, typename DV, typename DO>
ReferenceGradients reference_gradients_of_weights(
    const Eigen::MatrixBase<DQ>& q, const Eigen::MatrixBase<DK>& k, const Eigen::MatrixBase<DV>& v,
    const Eigen::MatrixBase<DO>& d_out, Index num_heads, Index num_kv_heads, const MatrixD& weights,
    std::optional<double> scale = std::nullopt, double softcap = 0) {
  const MatrixD qd = q.template cast<double>(), kd = k.template cast<double>();
  const MatrixD vd = v.template cast<double>(), dod = d_out.template cast<double>();
  const Index n = qd.rows(), m = kd.rows();
  const Index d = qd.cols() / num_heads, dv = vd.cols() / num_kv_heads;
  const Index group = num_heads / num_kv_heads;
  const double head_scale = scale ? *scale : 1.0 / std::sqrt(static_cast<double>(d));
  ReferenceGradients g{MatrixD::Zero(n, qd.cols()), MatrixD::Zero(m, kd.cols()),
                       MatrixD::Zero(m, vd.cols())};
  for (Index h = 0; h < num_heads; ++h) {
    const Index kv = h / group;
    for (Index i = 0; i < n; ++i) {
      // dP(i, j) = dO(i, :)·V(j, :), and the softmax's row sum Σ_j P(i, j)·dP(i, j).
      VectorD dp(m);
      double row_sum = 0;
      for (Index j = 0; j < m; ++j) {
        double dot = 0;
        for (Index e = 0; e < dv; ++e)
          dot += dod(i, h * dv + e) * vd(j, kv * dv + e);
        dp(j) = dot;
        row_sum += weights(h * n + i, j) * dot;
      }
      for (Index j = 0; j < m; ++j) {
        const double p = weights(h * n + i, j);
        if (p == 0) continue;
        for (Index e = 0; e < dv; ++e)
          g.dv(j, kv * dv + e) += p * dod(i, h * dv + e);
        double ds = p * (dp(j) - row_sum);
        if (softcap > 0) {
          double dot = 0;
          for (Index l = 0; l < d; ++l)
            dot += qd(i, h * d + l) * kd(j, kv * d + l);
          const double t = std::tanh(head_scale * dot / softcap);
          ds *= 1 - t * t;
        }
        for (Index l = 0; l < d; ++l) {
          g.dq(i, h * d + l) += head_scale * ds * kd(j, kv * d + l);
          g.dk(j, kv * d + l) += head_scale * ds * qd(i, h * d + l);
        }
      }
    }
  }
  return g;
}

/// ∂loss/∂(q, k, v) for loss = Σ d_out ∘ reference_multi_head(q, k, v, …): the gradients of
/// reference_multi_head's own weights (reference_gradients_of_weights).
template <typename DQ, typename DK, typename DV, typename DO>
ReferenceGradients reference_gradients(
    const Eigen::MatrixBase<DQ>& q, const Eigen::MatrixBase<DK>& k, const Eigen::MatrixBase<DV>& v,
    const Eigen::MatrixBase<DO>& d_out, Index num_heads, Index num_kv_heads,
    const ReferenceMask& mask = ReferenceMask(), std::optional<double> scale = std::nullopt,
    double softcap = 0) {
  MatrixD weights;
  reference_multi_head(q.template cast<double>(), k.template cast<double>(),
                       v.template cast<double>(), num_heads, num_kv_heads, mask, scale, softcap,
                       nullptr, &weights);
  return reference_gradients_of_weights(q, k, v, d_out, num_heads, num_kv_heads, weights, scale,
                                        softcap);
}

/// Central differences (f(x + step·e) − f(x − step·e)) / 2·step of a scalar function of a matrix,
/// for every entry of x.
inline MatrixD finite_differences(const MatrixD& x, const std::function<double(const MatrixD&)>& f,
                                  double step = 1e-6) {
  MatrixD grad(x.rows(), x.cols());
  MatrixD probe = x;
  for (Index i = 0; i < x.rows(); ++i) {
    for (Index j = 0; j < x.cols(); ++j) {
      const double saved = probe(i, j);
      probe(i, j) = saved + step;
      const double up = f(probe);
      probe(i, j) = saved - step;
      const double down = f(probe);
      probe(i, j) = saved;
      grad(i, j) = (up - down) / (2 * step);
    }
  }
  return grad;
}

}  // namespace attn_test
