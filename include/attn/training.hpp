// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors
#pragma once

/// \file training.hpp
/// Gradients of the SelfAttention and CrossAttention layers, for training: attn::forward runs a
/// layer and keeps what its backward needs in a LayerTape; attn::backward consumes the tape and
/// the gradient of the loss with respect to the layer's output, and returns the gradients of the
/// inputs and of every weight and bias, in the layer's PyTorch layout (MultiHeadWeights), so that
/// an optimiser updates them field by field.
///
/// Example (examples/reference_layers.cpp, compiled and run as a test):
/// \snippet reference_layers.cpp training

#include <vector>

#include "cross_attention.hpp"
#include "gradients.hpp"
#include "multi_head.hpp"
#include "self_attention.hpp"

namespace attn {

/// What a layer's forward keeps for its backward: the inputs, the projections (after rotary
/// embeddings), the heads' results and their log-sum-exps. About (n + m)·(3·E + 2·kv_dim) values;
/// no n×m matrix.
///
/// Example (examples/reference_layers.cpp, compiled and run as a test):
/// \snippet reference_layers.cpp training
template <typename Scalar>
struct LayerTape {
  Matrix<Scalar> input;   ///< x, or the target
  Matrix<Scalar> source;  ///< a cross-attention's source (empty for self-attention)
  Matrix<Scalar> query;   ///< self-attention: [Q | K | V] (n × (E + 2·kv_dim)); cross: Q (n × E)
  Matrix<Scalar> key_value;    ///< cross-attention: [K | V] (m × 2·kv_dim)
  Matrix<Scalar> heads;        ///< the heads' results before the output projection (n × E)
  Matrix<Scalar> log_sum_exp;  ///< n × H
};

/// The gradients of a loss with respect to a layer's inputs and weights.
///
/// Example (examples/reference_layers.cpp, compiled and run as a test):
/// \snippet reference_layers.cpp training
template <typename Scalar>
struct LayerGradients {
  /// ∂loss/∂ each weight and bias, in the layer's layout (biases empty when it has none).
  MultiHeadWeights<Scalar> weights;
  /// ∂loss/∂x (self-attention) or ∂loss/∂target (cross-attention).
  Matrix<Scalar> d_input;
  /// ∂loss/∂source (cross-attention; empty for self-attention).
  Matrix<Scalar> d_source;
};

namespace detail {

/// dW += dYᵀ·X, db = colsum(dY) for y = x·Wᵀ + b.
template <typename Scalar, typename DY, typename DX>
void linear_gradients(const Eigen::MatrixBase<DY>& dy, const Eigen::MatrixBase<DX>& x, bool bias,
                      Matrix<Scalar>& d_weight, Vector<Scalar>& d_bias) {
  d_weight.noalias() = dy.transpose() * x;
  if (bias) {
    d_bias = dy.colwise().sum().transpose();
  } else {
    d_bias.resize(0);
  }
}

/// Rotates row i of x back from position i (the transpose of the forward's rotation).
template <typename Scalar>
void rotate_back(const Rotary& rotary, MatrixRef<Scalar> x) {
  std::vector<Index> positions(static_cast<std::size_t>(x.rows()));
  for (std::size_t i = 0; i < positions.size(); ++i)
    positions[i] = -Index(i);
  rotary.apply(x, positions);
}

/// The output projection's gradients and ∂loss/∂heads.
template <typename Scalar, typename Core, typename DY>
Matrix<Scalar> output_backward(const Core& core, const LayerTape<Scalar>& tape,
                               const Eigen::MatrixBase<DY>& d_out, LayerGradients<Scalar>& g) {
  linear_gradients<Scalar>(d_out, tape.heads, core.config().bias, g.weights.out_weight,
                           g.weights.out_bias);
  return d_out * core.out_weight();
}

inline void check_tape(const char* who, bool filled, bool self) {
  if (!filled) {
    throw_shape_error(who, ": the tape holds no forward",
                      self ? " of a SelfAttention" : " of a CrossAttention",
                      ", expected the tape attn::forward filled for this layer");
  }
}

}  // namespace detail

/// SelfAttention's forward over one sequence, as layer(x, mask, options) (bitwise), keeping what
/// backward needs in `tape` (replacing what it held).
/// \throws ShapeError as SelfAttention::operator(); the tape is then untouched.
template <typename Scalar, typename Derived, typename M = Mask,
          typename = std::enable_if_t<detail::is_mask_argument<M>>>
Matrix<Scalar> forward(const SelfAttention<Scalar>& layer, const Eigen::MatrixBase<Derived>& x,
                       LayerTape<Scalar>& tape, const M& mask = M(),
                       const MultiHeadOptions& options = {}) {
  const auto& core = detail::LayerAccess::core(layer);
  const MultiHeadConfig& config = core.config();
  constexpr const char* who = "attn::forward(SelfAttention)";
  if (x.cols() != config.model_dim) {
    detail::throw_shape_error(who, ": x is ", detail::shape_string(x),
                              ", expected x.cols() = model_dim ", config.model_dim);
  }
  const AttentionOptions kernel = core.kernel_options(options);
  core.check_call(who, detail::SequenceOffsets(x.rows()), detail::SequenceOffsets(x.rows()), mask,
                  kernel, {});
  const Index e = config.model_dim, kv = config.kv_dim();
  LayerTape<Scalar> t;
  t.input = x;
  t.query.resize(x.rows(), core.projected_width());
  MatrixView<Scalar> qkv(t.query.data(), t.query.rows(), t.query.cols(),
                         Eigen::OuterStride<>(t.query.cols()));
  core.project_queries_keys_values(ConstMatrixRef<Scalar>(t.input), qkv);
  core.rotate_queries_keys(qkv, 0, x.rows(), 0);
  t.heads.resize(x.rows(), e);
  AttentionExtras<Scalar> extras;
  extras.log_sum_exp = &t.log_sum_exp;
  scaled_dot_product_attention_into(t.query.leftCols(e), t.query.middleCols(e, kv),
                                    t.query.rightCols(kv), t.heads, mask, kernel, extras);
  Matrix<Scalar> y(x.rows(), e);
  core.project_output(t.heads, y);
  tape = std::move(t);
  return y;
}

/// The gradients of SelfAttention for a tape from attn::forward over this layer, given
/// d_out = ∂loss/∂y (n × E). `mask` and `options` must be the forward's.
/// \throws ShapeError if d_out is not n × E or the tape is not from this layer's forward.
template <typename Scalar, typename DY, typename M = Mask,
          typename = std::enable_if_t<detail::is_mask_argument<M>>>
LayerGradients<Scalar> backward(const SelfAttention<Scalar>& layer, const LayerTape<Scalar>& tape,
                                const Eigen::MatrixBase<DY>& d_out, const M& mask = M(),
                                const MultiHeadOptions& options = {}) {
  const auto& core = detail::LayerAccess::core(layer);
  const MultiHeadConfig& config = core.config();
  constexpr const char* who = "attn::backward(SelfAttention)";
  const Index e = config.model_dim, kv = config.kv_dim(), n = tape.input.rows();
  detail::check_tape(who,
                     tape.query.cols() == core.projected_width() && tape.query.rows() == n &&
                         tape.source.size() == 0 && tape.input.cols() == e,
                     true);
  if (d_out.rows() != n || d_out.cols() != e) {
    detail::throw_shape_error(who, ": d_out is ", detail::shape_string(d_out), ", expected ",
                              detail::shape_string(n, e), " (the forward's output)");
  }
  LayerGradients<Scalar> g;
  const Matrix<Scalar> d_heads = detail::output_backward(core, tape, d_out, g);
  Matrix<Scalar> d_qkv(n, core.projected_width());
  scaled_dot_product_attention_backward_into(
      tape.query.leftCols(e), tape.query.middleCols(e, kv), tape.query.rightCols(kv), tape.heads,
      tape.log_sum_exp, d_heads, d_qkv.leftCols(e), d_qkv.middleCols(e, kv), d_qkv.rightCols(kv),
      mask, core.kernel_options(options));
  if (const Rotary* rotary = core.rotary())
    detail::rotate_back<Scalar>(*rotary, d_qkv.leftCols(e + kv));
  Matrix<Scalar> d_in_weight;
  Vector<Scalar> d_in_bias;
  detail::linear_gradients<Scalar>(d_qkv, tape.input, config.bias, d_in_weight, d_in_bias);
  g.weights.q_weight = d_in_weight.topRows(e);
  g.weights.k_weight = d_in_weight.middleRows(e, kv);
  g.weights.v_weight = d_in_weight.bottomRows(kv);
  if (config.bias) {
    g.weights.q_bias = d_in_bias.head(e);
    g.weights.k_bias = d_in_bias.segment(e, kv);
    g.weights.v_bias = d_in_bias.tail(kv);
  }
  g.d_input = d_qkv * core.fused_weight();
  return g;
}

/// CrossAttention's forward, as layer(target, source, mask, options) (bitwise), keeping what
/// backward needs in `tape` (replacing what it held).
/// \throws ShapeError as CrossAttention::operator(); the tape is then untouched.
template <typename Scalar, typename DT, typename DS, typename M = Mask,
          typename = std::enable_if_t<detail::is_mask_argument<M>>>
Matrix<Scalar> forward(const CrossAttention<Scalar>& layer, const Eigen::MatrixBase<DT>& target,
                       const Eigen::MatrixBase<DS>& source, LayerTape<Scalar>& tape,
                       const M& mask = M(), const MultiHeadOptions& options = {}) {
  const auto& core = detail::LayerAccess::core(layer);
  const MultiHeadConfig& config = core.config();
  constexpr const char* who = "attn::forward(CrossAttention)";
  if (target.cols() != config.model_dim || source.cols() != config.source_features()) {
    detail::throw_shape_error(who, ": target is ", detail::shape_string(target), " and source ",
                              detail::shape_string(source), ", expected target.cols() = model_dim ",
                              config.model_dim, " and source.cols() = source_dim ",
                              config.source_features());
  }
  const AttentionOptions kernel = core.kernel_options(options);
  core.check_call(who, detail::SequenceOffsets(target.rows()),
                  detail::SequenceOffsets(source.rows()), mask, kernel, {});
  const Index e = config.model_dim, kv = config.kv_dim();
  LayerTape<Scalar> t;
  t.input = target;
  t.source = source;
  t.query.resize(target.rows(), e);
  core.project_queries(
      ConstMatrixRef<Scalar>(t.input),
      MatrixView<Scalar>(t.query.data(), t.query.rows(), e, Eigen::OuterStride<>(e)));
  t.key_value = core.project_keys_values(ConstMatrixRef<Scalar>(t.source));
  t.heads.resize(target.rows(), e);
  AttentionExtras<Scalar> extras;
  extras.log_sum_exp = &t.log_sum_exp;
  scaled_dot_product_attention_into(t.query, t.key_value.leftCols(kv), t.key_value.rightCols(kv),
                                    t.heads, mask, kernel, extras);
  Matrix<Scalar> y(target.rows(), e);
  core.project_output(t.heads, y);
  tape = std::move(t);
  return y;
}

/// The gradients of CrossAttention for a tape from attn::forward over this layer, given
/// d_out = ∂loss/∂y (n × E): of the target, the source, and every weight. `mask` and `options`
/// must be the forward's.
/// \throws ShapeError if d_out is not n × E or the tape is not from this layer's forward.
template <typename Scalar, typename DY, typename M = Mask,
          typename = std::enable_if_t<detail::is_mask_argument<M>>>
LayerGradients<Scalar> backward(const CrossAttention<Scalar>& layer, const LayerTape<Scalar>& tape,
                                const Eigen::MatrixBase<DY>& d_out, const M& mask = M(),
                                const MultiHeadOptions& options = {}) {
  const auto& core = detail::LayerAccess::core(layer);
  const MultiHeadConfig& config = core.config();
  constexpr const char* who = "attn::backward(CrossAttention)";
  const Index e = config.model_dim, kv = config.kv_dim(), n = tape.input.rows();
  const Index m = tape.source.rows();
  detail::check_tape(who,
                     tape.query.cols() == e && tape.query.rows() == n &&
                         tape.key_value.rows() == m && tape.key_value.cols() == 2 * kv &&
                         tape.source.cols() == config.source_features(),
                     false);
  if (d_out.rows() != n || d_out.cols() != e) {
    detail::throw_shape_error(who, ": d_out is ", detail::shape_string(d_out), ", expected ",
                              detail::shape_string(n, e), " (the forward's output)");
  }
  LayerGradients<Scalar> g;
  const Matrix<Scalar> d_heads = detail::output_backward(core, tape, d_out, g);
  Matrix<Scalar> d_q(n, e), d_kv(m, 2 * kv);
  scaled_dot_product_attention_backward_into(
      tape.query, tape.key_value.leftCols(kv), tape.key_value.rightCols(kv), tape.heads,
      tape.log_sum_exp, d_heads, d_q, d_kv.leftCols(kv), d_kv.rightCols(kv), mask,
      core.kernel_options(options));
  detail::linear_gradients<Scalar>(d_q, tape.input, config.bias, g.weights.q_weight,
                                   g.weights.q_bias);
  Matrix<Scalar> d_kv_weight;
  Vector<Scalar> d_kv_bias;
  detail::linear_gradients<Scalar>(d_kv, tape.source, config.bias, d_kv_weight, d_kv_bias);
  g.weights.k_weight = d_kv_weight.topRows(kv);
  g.weights.v_weight = d_kv_weight.bottomRows(kv);
  if (config.bias) {
    g.weights.k_bias = d_kv_bias.head(kv);
    g.weights.v_bias = d_kv_bias.tail(kv);
  }
  g.d_input = d_q * core.query_weight();
  g.d_source = d_kv * core.key_value_weight();
  return g;
}

}  // namespace attn
