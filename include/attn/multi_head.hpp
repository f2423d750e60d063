// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors
#pragma once

/// \file multi_head.hpp
/// Multi-head configuration and weights, in PyTorch nn.MultiheadAttention's layout so weights port
/// unchanged.

#include <optional>
#include <type_traits>
#include <utility>

#include "error.hpp"
#include "parallel.hpp"
#include "rotary.hpp"
#include "types.hpp"
#include "workspace.hpp"

namespace attn {

/// Shape of a multi-head attention layer.
///
/// model_dim E is split into num_heads H heads of head_dim E / H. Keys and values have
/// num_kv_heads Hkv heads of the same head_dim (grouped-query attention when Hkv < H; query head
/// h reads kv head h / (H / Hkv)). source_dim is the feature size of the sequence keys and values
/// are projected from in cross-attention (PyTorch's kdim = vdim).
///
/// Example (examples/reference_layers.cpp, compiled and run as a test):
/// \snippet reference_layers.cpp self_attention
struct MultiHeadConfig {
  /// E: feature size of queries, of the attention output and of the layer's output.
  Index model_dim = 0;
  /// H: query heads; must divide model_dim.
  Index num_heads = 1;
  /// Hkv: key/value heads; 0 means num_heads. Must divide num_heads.
  Index num_kv_heads = 0;
  /// Feature size of the cross-attention source; 0 means model_dim. Self-attention needs E.
  Index source_dim = 0;
  /// Whether the four projections have biases.
  bool bias = true;
  /// Rotary position embeddings of the queries and keys (self-attention only): applied after the
  /// projection, before the kernel and before keys enter a cache, each row at its position in its
  /// sequence (a cache's rows continue from its position()). head_dim 0 means the layer's.
  std::optional<RotaryConfig> rotary = std::nullopt;

  /// Hkv: num_kv_heads, or num_heads where that is 0.
  Index kv_heads() const { return num_kv_heads == 0 ? num_heads : num_kv_heads; }
  /// d = model_dim / num_heads (0 without heads).
  Index head_dim() const { return num_heads > 0 ? model_dim / num_heads : 0; }
  /// Width of the projected keys (and of the values): Hkv · head_dim.
  Index kv_dim() const { return kv_heads() * head_dim(); }
  /// S, the width of the rows keys and values are projected from: source_dim, or model_dim
  /// where that is 0.
  Index source_features() const { return source_dim == 0 ? model_dim : source_dim; }

  /// \throws ShapeError naming `who` and the offending numbers.
  void validate(const char* who) const {
    if (model_dim < 1)
      detail::throw_shape_error(who, ": model_dim is ", model_dim, ", expected >= 1");
    if (num_heads < 1)
      detail::throw_shape_error(who, ": num_heads is ", num_heads, ", expected >= 1");
    if (model_dim % num_heads != 0) {
      detail::throw_shape_error(who, ": model_dim ", model_dim, " is not divisible by num_heads ",
                                num_heads);
    }
    if (kv_heads() < 1 || num_heads % kv_heads() != 0) {
      detail::throw_shape_error(who, ": num_heads ", num_heads,
                                " is not a multiple of num_kv_heads ", kv_heads());
    }
    if (source_dim < 0)
      detail::throw_shape_error(who, ": source_dim is ", source_dim, ", expected >= 0");
    if (rotary) {
      if (rotary->head_dim != 0 && rotary->head_dim != head_dim()) {
        detail::throw_shape_error(who, ": rotary.head_dim is ", rotary->head_dim,
                                  ", expected 0 or the layer's head_dim ", head_dim());
      }
      rotary_config().validate(who);
    }
  }

  /// rotary with head_dim 0 resolved to the layer's. Precondition: rotary is set.
  RotaryConfig rotary_config() const {
    RotaryConfig config = *rotary;
    config.head_dim = head_dim();
    return config;
  }
};

/// Per-call options of SelfAttention and CrossAttention (what MultiHeadConfig fixes at
/// construction, these may change from call to call). The functor turns them into the
/// AttentionOptions of its scaled_dot_product_attention_into call, with its own head counts.
///
/// Example (examples/reference_layers.cpp, compiled and run as a test):
/// \snippet reference_layers.cpp multi_head_options
struct MultiHeadOptions {
  /// Factor on q·k; empty means 1/√head_dim.
  std::optional<double> scale;
  /// Logit soft-capping: logits become softcap·tanh(logits/softcap) before bias and masking;
  /// 0 turns it off.
  double softcap = 0;
  /// Where the kernel's work items run; empty means the executor the functor was constructed with
  /// (and, if that is empty too, default_executor).
  Executor executor;
  /// Scratch kept between calls (not owned); null means scratch allocated per call. With a
  /// workspace and serial_executor, a call that needs no more scratch than an earlier one
  /// performs no heap allocation: every step over a CrossAttentionMemory after the first, and
  /// every decode step over a KVCache after the first (which sizes the scratch for the cache's
  /// capacity, see SelfAttention::attend_into). With thread_executor, likewise once each of its
  /// workers has taken part in a call (see Workspace). A workspace serves one call at a time.
  Workspace* workspace = nullptr;
};

/// Weights of a multi-head attention layer in PyTorch's layout: every projection is a Linear with
/// weight (out_features × in_features) and y = x·Wᵀ + b.
///
/// | member     | shape            | PyTorch                                    |
/// |------------|------------------|--------------------------------------------|
/// | q_weight   | E × E            | in_proj_weight[0:E] or q_proj_weight       |
/// | k_weight   | Hkv·d × S        | in_proj_weight[E:2E] or k_proj_weight      |
/// | v_weight   | Hkv·d × S        | in_proj_weight[2E:3E] or v_proj_weight     |
/// | out_weight | E × E            | out_proj.weight                            |
/// | q/k/v_bias | E, Hkv·d, Hkv·d  | in_proj_bias split in three                |
/// | out_bias   | E                | out_proj.bias                              |
///
/// S is the source dim (E for self-attention). Biases are empty when the layer has none.
/// \tparam Scalar_ float or double.
///
/// Example (examples/reference_layers.cpp, compiled and run as a test):
/// \snippet reference_layers.cpp self_attention
template <typename Scalar_>
struct MultiHeadWeights {
  static_assert(detail::is_supported_scalar<Scalar_>,
                "attn::MultiHeadWeights: Scalar must be float or double");
  /// The type of the computations (float or double).
  using Scalar = Scalar_;

  /// E × E: the query projection.
  Matrix<Scalar> q_weight;
  /// Hkv·d × S: the key projection.
  Matrix<Scalar> k_weight;
  /// Hkv·d × S: the value projection.
  Matrix<Scalar> v_weight;
  /// E × E: the output projection.
  Matrix<Scalar> out_weight;
  /// E, or empty: the query projection's bias.
  Vector<Scalar> q_bias;
  /// Hkv·d, or empty: the key projection's bias.
  Vector<Scalar> k_bias;
  /// Hkv·d, or empty: the value projection's bias.
  Vector<Scalar> v_bias;
  /// E, or empty: the output projection's bias.
  Vector<Scalar> out_bias;

  /// From nn.MultiheadAttention with kdim = vdim = embed_dim: in_proj_weight (E + 2·Hkv·d) × E
  /// (3E × E for PyTorch), in_proj_bias of its row count or empty, out_proj.weight E × E,
  /// out_proj.bias E or empty.
  /// \throws ShapeError if in_proj_weight cannot be split into q, k, v rows.
  template <typename DW, typename DB, typename DO, typename DOB>
  static MultiHeadWeights from_pytorch(const Eigen::MatrixBase<DW>& in_proj_weight,
                                       const Eigen::MatrixBase<DB>& in_proj_bias,
                                       const Eigen::MatrixBase<DO>& out_proj_weight,
                                       const Eigen::MatrixBase<DOB>& out_proj_bias) {
    const Index e = in_proj_weight.cols();
    const Index rows = in_proj_weight.rows();
    if (rows < e || (rows - e) % 2 != 0) {
      detail::throw_shape_error(
          "MultiHeadWeights::from_pytorch: in_proj_weight is ",
          detail::shape_string(in_proj_weight),
          ", expected (E + 2*kv_dim) x E, e.g. 3E x E = ", detail::shape_string(3 * e, e));
    }
    const Index kv = (rows - e) / 2;
    return from_pytorch(in_proj_weight.topRows(e), in_proj_weight.middleRows(e, kv),
                        in_proj_weight.bottomRows(kv), in_proj_bias, out_proj_weight,
                        out_proj_bias);
  }

  /// From nn.MultiheadAttention with kdim/vdim ≠ embed_dim (separate projection weights):
  /// q_proj_weight E × E, k_proj_weight and v_proj_weight Hkv·d × S, in_proj_bias E + 2·Hkv·d or
  /// empty, out_proj.weight E × E, out_proj.bias E or empty.
  /// \throws ShapeError if in_proj_bias's length is neither 0 nor the sum of the weights' rows.
  template <typename DQ, typename DK, typename DV, typename DB, typename DO, typename DOB>
  static MultiHeadWeights from_pytorch(const Eigen::MatrixBase<DQ>& q_proj_weight,
                                       const Eigen::MatrixBase<DK>& k_proj_weight,
                                       const Eigen::MatrixBase<DV>& v_proj_weight,
                                       const Eigen::MatrixBase<DB>& in_proj_bias,
                                       const Eigen::MatrixBase<DO>& out_proj_weight,
                                       const Eigen::MatrixBase<DOB>& out_proj_bias) {
    MultiHeadWeights w;
    w.q_weight = q_proj_weight;
    w.k_weight = k_proj_weight;
    w.v_weight = v_proj_weight;
    w.out_weight = out_proj_weight;
    const Index qr = w.q_weight.rows();
    const Index kr = w.k_weight.rows();
    const Index vr = w.v_weight.rows();
    if (in_proj_bias.size() != 0) {
      if (in_proj_bias.size() != qr + kr + vr) {
        detail::throw_shape_error("MultiHeadWeights::from_pytorch: in_proj_bias has ",
                                  in_proj_bias.size(), " elements, expected 0 or ", qr + kr + vr,
                                  " (q, k and v weight rows)");
      }
      const Vector<Scalar> b = in_proj_bias.reshaped();
      w.q_bias = b.head(qr);
      w.k_bias = b.segment(qr, kr);
      w.v_bias = b.tail(vr);
    }
    if (out_proj_bias.size() != 0) w.out_bias = out_proj_bias.reshaped();
    return w;
  }
};

namespace detail {

/// Checks that w fits cfg; names `who`, the member, and both shapes.
template <typename Scalar>
void validate_weights(const char* who, const MultiHeadConfig& cfg,
                      const MultiHeadWeights<Scalar>& w) {
  const Index e = cfg.model_dim;
  const Index kv = cfg.kv_dim();
  const Index s = cfg.source_features();
  const auto check = [who](const char* name, const Matrix<Scalar>& m, Index rows, Index cols) {
    if (m.rows() != rows || m.cols() != cols) {
      throw_shape_error(who, ": weights.", name, " is ", shape_string(m), ", expected ",
                        shape_string(rows, cols));
    }
  };
  check("q_weight", w.q_weight, e, e);
  check("k_weight", w.k_weight, kv, s);
  check("v_weight", w.v_weight, kv, s);
  check("out_weight", w.out_weight, e, e);
  const auto check_bias = [who, &cfg](const char* name, const Vector<Scalar>& b, Index size) {
    const Index expected = cfg.bias ? size : 0;
    if (b.size() != expected) {
      throw_shape_error(who, ": weights.", name, " has ", b.size(), " elements, expected ",
                        expected, cfg.bias ? "" : " (config.bias is false)");
    }
  };
  check_bias("q_bias", w.q_bias, e);
  check_bias("k_bias", w.k_bias, kv);
  check_bias("v_bias", w.v_bias, kv);
  check_bias("out_bias", w.out_bias, e);
}

}  // namespace detail
}  // namespace attn
