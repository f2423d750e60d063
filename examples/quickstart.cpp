// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors
//
// The example at the top of README.md, kept compiling and running as a smoke test.

#include <attn/attn.hpp>
#include <iostream>

int main() {
  // One head: 4 queries, 6 keys/values of width 8.
  attn::Matrix<float> q = attn::Matrix<float>::Random(4, 8);
  attn::Matrix<float> k = attn::Matrix<float>::Random(6, 8);
  attn::Matrix<float> v = attn::Matrix<float>::Random(6, 8);
  std::cout << attn::scaled_dot_product_attention(q, k, v, attn::Mask::causal()) << "\n";

  // A multi-head layer (model_dim 16, 4 heads) with PyTorch-layout weights.
  attn::MultiHeadConfig cfg{/*model_dim*/ 16, /*num_heads*/ 4};
  attn::MultiHeadWeights<float> w = attn::MultiHeadWeights<float>::from_pytorch(
      attn::Matrix<float>::Random(48, 16), attn::Vector<float>::Zero(48),   // in_proj
      attn::Matrix<float>::Random(16, 16), attn::Vector<float>::Zero(16));  // out_proj
  attn::SelfAttention<float> self_attn(cfg, w);
  attn::Matrix<float> x = attn::Matrix<float>::Random(10, 16);  // 10 tokens
  std::cout << self_attn(x, attn::Mask::causal()).rows() << " x 16\n";
}
