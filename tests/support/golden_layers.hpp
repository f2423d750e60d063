// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors
#pragma once

// A layer's config and weights from a golden file that holds an nn.MultiheadAttention's
// state_dict (tests/reference/generate_golden.py's save_state), through MultiHeadWeights's own
// from_pytorch.

#include <attn/multi_head.hpp>

#include <string>

#include "golden.hpp"

namespace attn_test {

template <typename T>
attn::Vector<T> vector_or_empty(const Golden& g, const std::string& name) {
  return g.has(name) ? g.vector<T>(name) : attn::Vector<T>();
}

/// The weights through MultiHeadWeights::from_pytorch: the packed overload when the file has
/// in_proj_weight, the separate-weights one otherwise.
template <typename T>
attn::MultiHeadWeights<T> weights_from(const Golden& g) {
  const attn::Vector<T> in_bias = vector_or_empty<T>(g, "in_proj_bias");
  const attn::Vector<T> out_bias = vector_or_empty<T>(g, "out_proj.bias");
  if (g.has("in_proj_weight")) {
    return attn::MultiHeadWeights<T>::from_pytorch(g.matrix<T>("in_proj_weight"), in_bias,
                                                   g.matrix<T>("out_proj.weight"), out_bias);
  }
  return attn::MultiHeadWeights<T>::from_pytorch(
      g.matrix<T>("q_proj_weight"), g.matrix<T>("k_proj_weight"), g.matrix<T>("v_proj_weight"),
      in_bias, g.matrix<T>("out_proj.weight"), out_bias);
}

inline attn::MultiHeadConfig config_from(const Golden& g, attn::Index model_dim,
                                         attn::Index source_dim) {
  attn::MultiHeadConfig cfg;
  cfg.model_dim = model_dim;
  cfg.num_heads = g.index("num_heads");
  cfg.num_kv_heads = g.has("num_kv_heads") ? g.index("num_kv_heads") : 0;
  cfg.source_dim = source_dim;
  cfg.bias = g.has("in_proj_bias");
  return cfg;
}

}  // namespace attn_test
