// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors
#pragma once

/// \file gradients.hpp
/// attn::scaled_dot_product_attention_backward: the gradients of the kernel's inputs, for
/// training. FlashAttention-2's scheme: the attention probabilities are recomputed tile by tile
/// from the forward's log-sum-exp, so no n×m matrix is ever held.

#include <type_traits>

#include "detail/backward.hpp"
#include "error.hpp"
#include "mask.hpp"
#include "scaled_dot_product.hpp"
#include "types.hpp"

namespace attn {

/// The gradients of a loss with respect to the kernel's q, k and v.
///
/// Example (examples/reference_kernel.cpp, compiled and run as a test):
/// \snippet reference_kernel.cpp gradients
template <typename Scalar>
struct AttentionGradients {
  Matrix<Scalar> dq;  ///< n × H·d
  Matrix<Scalar> dk;  ///< m × Hkv·d
  Matrix<Scalar> dv;  ///< m × Hkv·dv
};

namespace detail {

template <typename Shaped>
void check_backward_shape(const char* who, const char* name, const Shaped& x, Index rows,
                          Index cols) {
  if (x.rows() != rows || x.cols() != cols) {
    throw_shape_error(who, ": ", name, " is ", shape_string(x), ", expected ",
                      shape_string(rows, cols));
  }
}

}  // namespace detail

/// The backward pass of scaled_dot_product_attention: given the forward's q, k, v, mask and
/// options, its output `out` and log-sum-exp `log_sum_exp` (AttentionExtras::log_sum_exp of the
/// same call), and d_out = ∂loss/∂out, writes dq = ∂loss/∂q, dk = ∂loss/∂k, dv = ∂loss/∂v.
///
/// With P = softmax(S) recomputed per tile as exp(S − lse) and D = rowsum(d_out ∘ out):
/// dV = Pᵀ·dO, dS = P ∘ (dO·Vᵀ − D), dQ = scale·dS·K, dK = scale·dSᵀ·Q (times 1 − tanh² of the
/// capped logits with a softcap). Grouped-query heads: dK and dV of a kv head sum over the query
/// heads that read it.
///
/// \param q,k,v       In: as for scaled_dot_product_attention, stored in Scalar (float or double).
/// \param out         In: the forward's output, (n, H·dv).
/// \param log_sum_exp In: the forward's log-sum-exp, (n, H).
/// \param d_out       In: ∂loss/∂out, (n, H·dv).
/// \param dq,dk,dv    Out: (n, H·d), (m, Hkv·d), (m, Hkv·dv), row-major storage.
/// \param mask        The forward's mask: structured masks, key_length, keep and bias matrices
///                    (a bias is a constant: it gets no gradient), mask functions, and score
///                    functions that are differentiable (score_function(fn, derivative),
///                    score_bias, alibi, relative_position_bias, head_bias; compositions by the
///                    chain rule): dS is multiplied by ∂score/∂logit. Their parameters (slopes,
///                    tables, biases) get no gradient. A score function without a derivative is
///                    rejected at compile time.
/// \param options     The forward's heads, scale, softcap and positions; executor.
///
/// Deterministic: the gradients are bitwise the same for any executor and thread count. Work
/// items are (kv head, chunk of keys), the chunks cut by shape only; each item owns its keys' dK
/// and dV and a partial dQ, and the partials are summed in chunk order afterwards — no atomics.
/// The price: a partial dQ (n × H·d) per chunk beyond the first, allocated and summed per call;
/// as many chunks as 16 work items need (kv heads × chunks), at most 8 and 32 MiB of partials.
/// Memory otherwise O((n + m)·H·d): no n×m matrix.
///
/// \throws ShapeError naming the argument and both shapes when a shape disagrees with q, k, v
///         and the options, or the mask or options are invalid (as the forward); the outputs are
///         then untouched.
template <typename DQ, typename DK, typename DV, typename DO, typename DL, typename DD,
          typename M = Mask, typename = std::enable_if_t<detail::is_mask_argument<M>>>
void scaled_dot_product_attention_backward_into(
    const Eigen::MatrixBase<DQ>& q, const Eigen::MatrixBase<DK>& k, const Eigen::MatrixBase<DV>& v,
    const Eigen::MatrixBase<DO>& out, const Eigen::MatrixBase<DL>& log_sum_exp,
    const Eigen::MatrixBase<DD>& d_out, MatrixRef<typename DQ::Scalar> dq,
    MatrixRef<typename DQ::Scalar> dk, MatrixRef<typename DQ::Scalar> dv, const M& mask = M(),
    const AttentionOptions& options = {}) {
  using Scalar = typename DQ::Scalar;
  static_assert(std::is_same_v<Scalar, float> || std::is_same_v<Scalar, double>,
                "attn::scaled_dot_product_attention_backward: q must be float or double");
  static_assert(std::is_same_v<typename DK::Scalar, Scalar> &&
                    std::is_same_v<typename DV::Scalar, Scalar> &&
                    std::is_same_v<typename DO::Scalar, Scalar> &&
                    std::is_same_v<typename DL::Scalar, Scalar> &&
                    std::is_same_v<typename DD::Scalar, Scalar>,
                "attn::scaled_dot_product_attention_backward: every input must have q's scalar "
                "type");
  const auto& score_mask = detail::as_score_mask(mask);
  static_assert(detail::TileMask<Scalar, std::decay_t<decltype(score_mask)>>::score_differentiable,
                "attn::scaled_dot_product_attention_backward: the score function has no "
                "derivative; make it with attn::score_function(fn, derivative) or "
                "attn::score_bias(bias), or use a differentiable built-in (alibi, "
                "relative_position_bias, head_bias)");
  constexpr const char* who = "scaled_dot_product_attention_backward";
  const ConstMatrixRef<Scalar> q_ref(q), k_ref(k), v_ref(v), out_ref(out), lse_ref(log_sum_exp),
      d_out_ref(d_out);
  // The forward's checks of q, k, v, mask and options, with `out` as its output (make_problem
  // takes a writable view, but only checks its shape and keeps it: nothing is written to it).
  MatrixView<Scalar> out_map(const_cast<Scalar*>(out_ref.data()), out_ref.rows(), out_ref.cols(),
                             Eigen::OuterStride<>(out_ref.outerStride()));
  MatrixRef<Scalar> out_view(out_map);
  const auto forward = detail::make_problem<Scalar, Scalar, Scalar, Scalar>(
      who, q_ref,
      ConstMatrixView<Scalar>(k_ref.data(), k_ref.rows(), k_ref.cols(),
                              Eigen::OuterStride<>(k_ref.outerStride())),
      ConstMatrixView<Scalar>(v_ref.data(), v_ref.rows(), v_ref.cols(),
                              Eigen::OuterStride<>(v_ref.outerStride())),
      out_view, score_mask, options);
  const Index n = q.rows(), m = k.rows(), heads = forward.num_heads;
  detail::check_backward_shape(who, "log_sum_exp", lse_ref, n, heads);
  detail::check_backward_shape(who, "d_out", d_out_ref, n, heads * forward.value_dim);
  detail::check_backward_shape(who, "dq", dq, n, q.cols());
  detail::check_backward_shape(who, "dk", dk, m, k.cols());
  detail::check_backward_shape(who, "dv", dv, m, v.cols());
  const auto view = [](const ConstMatrixRef<Scalar>& x) {
    return ConstMatrixView<Scalar>(x.data(), x.rows(), x.cols(),
                                   Eigen::OuterStride<>(x.outerStride()));
  };
  const auto writable = [](MatrixRef<Scalar>& x) {
    return MatrixView<Scalar>(x.data(), x.rows(), x.cols(), Eigen::OuterStride<>(x.outerStride()));
  };
  const detail::BackwardProblem<Scalar> problem{view(q_ref),
                                                view(k_ref),
                                                view(v_ref),
                                                view(out_ref),
                                                view(d_out_ref),
                                                view(lse_ref),
                                                writable(dq),
                                                writable(dk),
                                                writable(dv),
                                                heads,
                                                forward.num_kv_heads,
                                                forward.head_dim,
                                                forward.value_dim,
                                                forward.scale,
                                                forward.softcap,
                                                forward.first_query_position,
                                                forward.first_key_position,
                                                forward.first_head};
  detail::run_backward(problem, score_mask, options.executor);
}

/// As scaled_dot_product_attention_backward_into, returning the three gradients.
template <typename DQ, typename DK, typename DV, typename DO, typename DL, typename DD,
          typename M = Mask, typename = std::enable_if_t<detail::is_mask_argument<M>>>
AttentionGradients<typename DQ::Scalar> scaled_dot_product_attention_backward(
    const Eigen::MatrixBase<DQ>& q, const Eigen::MatrixBase<DK>& k, const Eigen::MatrixBase<DV>& v,
    const Eigen::MatrixBase<DO>& out, const Eigen::MatrixBase<DL>& log_sum_exp,
    const Eigen::MatrixBase<DD>& d_out, const M& mask = M(), const AttentionOptions& options = {}) {
  AttentionGradients<typename DQ::Scalar> grads{Matrix<typename DQ::Scalar>(q.rows(), q.cols()),
                                                Matrix<typename DQ::Scalar>(k.rows(), k.cols()),
                                                Matrix<typename DQ::Scalar>(v.rows(), v.cols())};
  scaled_dot_product_attention_backward_into(q, k, v, out, log_sum_exp, d_out, grads.dq, grads.dk,
                                             grads.dv, mask, options);
  return grads;
}

}  // namespace attn
